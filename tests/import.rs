//! `memlog import rdb` and `memlog import verify` with real processes: RDB files written by
//! stock Redis (standalone, and the three nodes of a Redis Cluster) loaded into a running memlog
//! cluster and compared key by key (value digest and absolute expiry on the shards' primaries);
//! a truncated file refused with nothing applied; verify finding one changed value, one changed
//! TTL and one extra key.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::cluster::{ClusterOptions, DurableCluster, Snapshot, CLIENT_TIMEOUT};
use common::resp::{Conn, Value};
use common::{memlog_bin, spawn_redis, Proc};
use memlog_proxy::router::key_slot;

const LSN_KEY: &[u8] = b"__memlog:lsn";

/// A command as its arguments.
type Args<'a> = &'a [&'a [u8]];

fn memlog_cluster() -> DurableCluster {
    DurableCluster::start(ClusterOptions { shards: 3, ..ClusterOptions::default() })
}

fn redis_url(addr: SocketAddr) -> String {
    format!("redis://{addr}")
}

fn import(args: &[&str]) -> Output {
    let out = Command::new(memlog_bin()).arg("import").args(args).output().expect("run memlog import");
    eprintln!(
        "memlog import {args:?}: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A source Redis whose values can be digested (DEBUG DIGEST-VALUE).
fn spawn_source(dir: &Path, extra: &[&str]) -> Proc {
    let mut args = vec!["--enable-debug-command", "local"];
    args.extend_from_slice(extra);
    spawn_redis(dir, &args)
}

/// Writes keys of every core type through `send` (which routes each command by its key):
/// strings (plain, integer, large), HyperLogLog, small and large lists, sets, sorted sets and
/// hashes, a stream with a consumer group and a pending entry, and keys with TTLs.
fn populate(prefix: &str, send: &mut dyn FnMut(&[&[u8]])) {
    let big = "v".repeat(200);
    let mut cmd = |line: String| {
        let args: Vec<&[u8]> = line.split(' ').map(str::as_bytes).collect();
        send(&args);
    };
    for i in 0..40 {
        let k = format!("{prefix}{i}");
        cmd(format!("SET str:{k} value-{i}"));
        cmd(format!("SET int:{k} {i}"));
        cmd(format!("SET big:{k} {big}{i}"));
        cmd(format!("PFADD hll:{k} a b c {i}"));
        cmd(format!("RPUSH list:{k} a b {i}"));
        cmd(format!("SADD set:{k} x y {i}"));
        cmd(format!("SADD intset:{k} 1 2 {i}"));
        cmd(format!("ZADD zset:{k} 1 a 2.5 b {i} c"));
        cmd(format!("HSET hash:{k} f1 v1 n {i}"));
        cmd(format!("SET ttl:{k} v PX {}", 600_000 + i * 1000));
        cmd(format!("HSET ttlhash:{k} f v"));
        cmd(format!("PEXPIRE ttlhash:{k} {}", 900_000 + i));
    }
    for i in 0..300 {
        cmd(format!("RPUSH biglist:{prefix} {big}{i}"));
        cmd(format!("ZADD bigzset:{prefix} {i} {big}{i}"));
        cmd(format!("HSET bighash:{prefix} {big}{i} {i}"));
        cmd(format!("SADD bigset:{prefix} {big}{i}"));
    }
    cmd(format!("XADD stream:{prefix} 1-1 f v"));
    cmd(format!("XADD stream:{prefix} 2-1 f v2"));
    cmd(format!("XGROUP CREATE stream:{prefix} grp 0"));
    send(&[
        b"XREADGROUP",
        b"GROUP",
        b"grp",
        b"alice",
        b"COUNT",
        b"1",
        b"STREAMS",
        format!("stream:{prefix}").as_bytes(),
        b">",
    ]);
}

fn ok(conn: &mut Conn, args: &[&[u8]]) {
    let reply = conn.cmd(args).unwrap();
    assert!(!reply.is_error(), "{:?}: {reply:?}", args.iter().map(|a| String::from_utf8_lossy(a)).collect::<Vec<_>>());
}

/// Every key of the given nodes, merged, without memlog's own key.
fn keys_of(nodes: &[SocketAddr]) -> BTreeMap<Vec<u8>, (String, i64)> {
    let mut keys = BTreeMap::new();
    for &node in nodes {
        keys.extend(Snapshot::take(node).keys);
    }
    keys.remove(LSN_KEY);
    keys
}

fn primaries(cluster: &DurableCluster) -> Vec<SocketAddr> {
    (0..cluster.shards()).map(|s| cluster.redis_addr(s)).collect()
}

fn assert_same_keys(source: &[SocketAddr], cluster: &DurableCluster) {
    let want = keys_of(source);
    let got = keys_of(&primaries(cluster));
    assert!(want.len() > 400, "the source holds {} keys", want.len());
    let missing: Vec<_> = want.keys().filter(|k| !got.contains_key(*k)).map(|k| String::from_utf8_lossy(k)).collect();
    assert!(missing.is_empty(), "missing in memlog: {missing:?}");
    let differ: Vec<_> =
        want.iter().filter(|(k, v)| got.get(*k) != Some(v)).map(|(k, _)| String::from_utf8_lossy(k)).collect();
    assert!(differ.is_empty(), "different value or expiry in memlog: {differ:?}");
    assert_eq!(got.len(), want.len(), "extra keys in memlog");
}

fn save(addr: SocketAddr) -> PathBuf {
    let mut conn = Conn::connect(addr, CLIENT_TIMEOUT).unwrap();
    ok(&mut conn, &[b"SAVE"]);
    let Value::Array(Some(dir)) = conn.cmd(&["CONFIG", "GET", "dir"]).unwrap() else { panic!("CONFIG GET dir") };
    PathBuf::from(dir[1].text()).join("dump.rdb")
}

#[test]
fn import_rdb_of_a_standalone_redis_keeps_every_key_and_ttl_and_verify_agrees() {
    let dir = tempfile::tempdir().unwrap();
    let source = spawn_source(dir.path(), &[]);
    let mut conn = Conn::connect(source.addr, CLIENT_TIMEOUT).unwrap();
    populate("k", &mut |args| ok(&mut conn, args));
    // A key that expires before the import: skipped and counted.
    ok(&mut conn, &[b"SET", b"soon-gone", b"v", b"PX", b"300"]);
    let rdb = save(source.addr);
    std::thread::sleep(Duration::from_millis(400));
    let cluster = memlog_cluster();

    let out = import(&["rdb", rdb.to_str().unwrap(), "--to", &redis_url(cluster.proxy_addr()), "--json"]);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(
        (last["phase"].as_str(), last["done"].as_bool(), last["expired_skipped"].as_u64()),
        (Some("restore"), Some(true), Some(1))
    );
    assert_same_keys(&[source.addr], &cluster);

    let out = import(&["verify", &redis_url(source.addr), "--to", &redis_url(cluster.proxy_addr())]);
    assert!(out.status.success(), "verify after a whole import must find no difference");
}

/// Three Redis Cluster nodes, all primaries, slots split by `redis-cli --cluster create`.
fn redis_cluster(dir: &Path) -> Vec<Proc> {
    redis_cluster_with(dir, &[])
}

fn redis_cluster_with(dir: &Path, extra: &[&str]) -> Vec<Proc> {
    redis_cluster_of(dir, extra, false)
}

/// A source Redis that accepts only TLS (`common::redis_tls`: its port is the TLS port, its
/// certificate signed by the nodes' CA), as ElastiCache with in-transit encryption: clients
/// are not asked for a certificate; the cluster bus runs over TLS too, so CLUSTER SLOTS names
/// the TLS ports.
fn spawn_tls_source(dir: &Path, extra: &[&str]) -> Proc {
    let port = common::ports::free_port();
    let node_dir = dir.join(format!("redis-{port}"));
    std::fs::create_dir_all(&node_dir).unwrap();
    let mut cmd = Command::new("redis-server");
    common::redis_tls::node_args(&mut cmd, port);
    cmd.args(["--tls-auth-clients", "no", "--tls-cluster", "yes", "--enable-debug-command", "local"]);
    cmd.args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]);
    cmd.arg("--dir").arg(&node_dir);
    cmd.args(extra);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    common::spawn_listening(&format!("redis-{port}"), cmd, addr, &node_dir.join("redis.log"))
}

/// A connection to a source node: over TLS to one of [`spawn_tls_source`] (trusting the nodes'
/// CA, without a client certificate).
fn source_conn(addr: SocketAddr) -> Conn {
    if common::redis_tls::is_tls_node(addr) {
        let config = common::redis_tls::client_config(&common::redis_tls::files().ca, None);
        common::redis_tls::connect(addr, CLIENT_TIMEOUT, config).unwrap()
    } else {
        Conn::connect(addr, CLIENT_TIMEOUT).unwrap()
    }
}

/// The URL and arguments that reach the source node at `addr` as `user` (rediss:// and the
/// nodes' CA for a TLS-only node).
fn source_url(user: &str, addr: SocketAddr) -> (String, Vec<String>) {
    if common::redis_tls::is_tls_node(addr) {
        let ca = common::redis_tls::files().ca.display().to_string();
        (format!("rediss://{user}@{addr}"), vec!["--source-ca".into(), ca])
    } else {
        (format!("redis://{user}@{addr}"), Vec::new())
    }
}

/// Three Redis Cluster nodes as [`redis_cluster`], accepting only TLS with `tls`.
fn redis_cluster_of(dir: &Path, extra: &[&str], tls: bool) -> Vec<Proc> {
    let nodes: Vec<Proc> = (0..3)
        .map(|_| {
            // The bus port is chosen like every other test port: Redis's default (port + 10000)
            // can land in the ephemeral range, where a client's local port may already hold it.
            let bus = common::ports::free_port().to_string();
            let mut args = vec!["--cluster-enabled", "yes", "--cluster-node-timeout", "5000", "--cluster-port", &bus];
            args.extend_from_slice(extra);
            if tls {
                spawn_tls_source(dir, &args)
            } else {
                spawn_source(dir, &args)
            }
        })
        .collect();
    let addrs: Vec<String> = nodes.iter().map(|n| n.addr.to_string()).collect();
    let mut create = Command::new("redis-cli");
    if tls {
        create.args(["--tls", "--cacert"]).arg(&common::redis_tls::files().ca);
    }
    let status = create
        .args(["--cluster", "create"])
        .args(&addrs)
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "redis-cli --cluster create");
    let deadline = Instant::now() + Duration::from_secs(30);
    for node in &nodes {
        let mut conn = source_conn(node.addr);
        while !conn.cmd(&["CLUSTER", "INFO"]).unwrap().text().contains("cluster_state:ok") {
            assert!(Instant::now() < deadline, "the Redis Cluster did not become ok");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    nodes
}

/// A sender that routes each command to the cluster node owning its key's slot.
fn cluster_sender(nodes: &[Proc]) -> impl FnMut(&[&[u8]]) {
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    cluster_sender_at(&addrs)
}

fn cluster_sender_at(nodes: &[SocketAddr]) -> impl FnMut(&[&[u8]]) {
    let mut conns: Vec<Conn> = nodes.iter().map(|&n| source_conn(n)).collect();
    let mut owner = vec![0usize; 16384];
    for (i, conn) in conns.iter_mut().enumerate() {
        let Value::Array(Some(ranges)) = conn.cmd(&["CLUSTER", "SLOTS"]).unwrap() else { panic!("CLUSTER SLOTS") };
        for range in ranges {
            let Value::Array(Some(r)) = range else { panic!() };
            let (Value::Int(start), Value::Int(end), Value::Array(Some(primary))) = (&r[0], &r[1], &r[2]) else {
                panic!()
            };
            if primary[1] == Value::Int(nodes[i].port() as i64) {
                owner[*start as usize..=*end as usize].fill(i);
            }
        }
    }
    move |args: &[&[u8]]| {
        // XGROUP CREATE and XREADGROUP name their key later; every other command here, first.
        let key = match args[0] {
            b"XGROUP" => args[2],
            b"XREADGROUP" => args[7],
            _ => args[1],
        };
        let node = owner[key_slot(key) as usize];
        ok(&mut conns[node], args);
    }
}

#[test]
fn import_rdb_of_a_redis_cluster_routes_every_key_to_its_shard() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = redis_cluster(dir.path());
    let mut send = cluster_sender(&nodes);
    for prefix in ["a", "b", "c"] {
        populate(prefix, &mut send);
    }
    let files: Vec<PathBuf> = nodes.iter().map(|n| save(n.addr)).collect();
    let cluster = memlog_cluster();
    let mut args = vec!["rdb".to_string()];
    args.extend(files.iter().map(|f| f.display().to_string()));
    args.extend(["--to".into(), redis_url(cluster.proxy_addr())]);
    let out = import(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success());
    let source: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    assert_same_keys(&source, &cluster);
    let out = import(&["verify", &redis_url(nodes[1].addr), "--cluster", "--to", &redis_url(cluster.proxy_addr())]);
    assert!(out.status.success(), "verify of a cluster source after a whole import");
}

#[test]
fn a_truncated_rdb_is_refused_with_its_offset_and_nothing_is_applied() {
    let dir = tempfile::tempdir().unwrap();
    let source = spawn_source(dir.path(), &[]);
    let mut conn = Conn::connect(source.addr, CLIENT_TIMEOUT).unwrap();
    populate("t", &mut |args| ok(&mut conn, args));
    let good = save(source.addr);
    let whole = std::fs::read(&good).unwrap();
    let cut = dir.path().join("cut.rdb");
    std::fs::write(&cut, &whole[..whole.len() * 2 / 3]).unwrap();
    let cluster = memlog_cluster();
    let mut client = cluster.client();
    ok(&mut client, &[b"SET", b"before", b"1"]);
    let lsns = |cluster: &DurableCluster| -> Vec<String> {
        primaries(cluster)
            .into_iter()
            .map(|a| Conn::connect(a, CLIENT_TIMEOUT).unwrap().cmd(&[b"GET", LSN_KEY]).unwrap().text())
            .collect()
    };
    let before = lsns(&cluster);

    // The good file first: it must not be applied either, since the second one is bad.
    let out = import(&["rdb", good.to_str().unwrap(), cut.to_str().unwrap(), "--to", &redis_url(cluster.proxy_addr())]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("RDB refused at byte offset {}", whole.len() * 2 / 3)), "{stderr}");
    assert!(stderr.contains("truncated") && stderr.contains("Nothing was applied"), "{stderr}");
    assert_eq!(client.cmd(&["DBSIZE"]).unwrap(), Value::Int(1));
    assert_eq!(lsns(&cluster), before, "no journal entry was written");
}

#[test]
fn verify_finds_a_changed_value_a_changed_ttl_and_an_extra_key() {
    let dir = tempfile::tempdir().unwrap();
    let source = spawn_source(dir.path(), &[]);
    let mut conn = Conn::connect(source.addr, CLIENT_TIMEOUT).unwrap();
    populate("v", &mut |args| ok(&mut conn, args));
    let rdb = save(source.addr);
    let cluster = memlog_cluster();
    let to = redis_url(cluster.proxy_addr());
    assert!(import(&["rdb", rdb.to_str().unwrap(), "--to", &to]).status.success());
    let verify = || import(&["verify", &redis_url(source.addr), "--to", &to]);
    assert!(verify().status.success());
    let mut client = cluster.client();

    let cases: [(Args, &str, Args); 3] = [
        (&[b"HSET", b"hash:v3", b"f1", b"changed"], "value differs: \"hash:v3\"", &[b"HSET", b"hash:v3", b"f1", b"v1"]),
        (&[b"PEXPIRE", b"ttl:v5", b"3000000"], "ttl differs: \"ttl:v5\"", &[b"PEXPIRE", b"ttl:v5", b"605000"]),
        (&[b"SET", b"only-in-memlog", b"x"], "extra on target: \"only-in-memlog\"", &[b"DEL", b"only-in-memlog"]),
    ];
    for (change, expected, undo) in cases {
        ok(&mut client, change);
        let out = verify();
        assert_eq!(out.status.code(), Some(1), "verify must fail on: {expected}");
        assert!(String::from_utf8_lossy(&out.stdout).contains(expected), "verify must report: {expected}");
        ok(&mut client, undo);
    }
    // With the TTL put back only approximately (within 1 s, as verify allows), all agrees again.
    let src_ttl = Conn::connect(source.addr, CLIENT_TIMEOUT).unwrap().cmd(&["PTTL", "ttl:v5"]).unwrap();
    let Value::Int(ms) = src_ttl else { panic!() };
    ok(&mut client, &[b"PEXPIRE", b"ttl:v5", ms.to_string().as_bytes()]);
    assert!(verify().status.success());
}

/// What ElastiCache allows and refuses: no SYNC, PSYNC or CONFIG; notifications set in the
/// server's configuration (here its command line, as a parameter group would).
const ELASTICACHE_LIKE: &[&str] = &[
    "--rename-command",
    "SYNC",
    "",
    "--rename-command",
    "PSYNC",
    "",
    "--rename-command",
    "CONFIG",
    "",
    "--notify-keyspace-events",
    "KEA",
    "--user",
    "migrator",
    "on",
    ">migrator-secret",
    "~*",
    "&*",
    "+@all",
];

/// A `memlog import live` run, its `--json` lines collected by a thread; killed by pid on drop.
struct LiveImport {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<serde_json::Value>,
    seen: Vec<serde_json::Value>,
}

impl LiveImport {
    fn start(args: &[&str]) -> LiveImport {
        let mut child = Command::new(memlog_bin())
            .args(["import", "live", "--json"])
            .args(args)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("run memlog import live");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                eprintln!("import live: {line}");
                if tx.send(serde_json::from_str(&line).expect("a JSON progress line")).is_err() {
                    break;
                }
            }
        });
        LiveImport { child, lines, seen: Vec::new() }
    }

    /// Waits for a progress line matching `want`; returns it.
    fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        want: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if want(&line) {
                        return line;
                    }
                }
                Err(_) => panic!("import live: no {what} within {timeout:?} (exit: {:?})", self.child.try_wait()),
            }
        }
    }

    /// SIGINT (the cut-over), then its exit status within `timeout`.
    fn interrupt(&mut self, timeout: Duration) -> std::process::ExitStatus {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "import live did not exit within {timeout:?} of SIGINT");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for LiveImport {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes into the source until stopped: overwrites, deletes, keys expiring within a
/// second, TTLs set and removed, hash and list updates. Returns how many commands ran.
fn start_write_load(nodes: Vec<SocketAddr>) -> (Arc<AtomicBool>, std::thread::JoinHandle<u64>) {
    let running = Arc::new(AtomicBool::new(true));
    let flag = running.clone();
    let thread = std::thread::spawn(move || {
        let mut send = cluster_sender_at(&nodes);
        let mut i: u64 = 0;
        while flag.load(Ordering::Relaxed) {
            let n = |m: u64| (i * 7919 % m).to_string();
            let cmds: [Vec<String>; 6] = [
                vec!["SET".into(), format!("load:s{}", n(2000)), format!("v{i}")],
                vec!["DEL".into(), format!("load:s{}", n(1999))],
                vec!["SET".into(), format!("load:e{}", n(300)), "x".into(), "PX".into(), (50 + i % 900).to_string()],
                vec!["SET".into(), format!("load:t{}", n(300)), "y".into(), "EX".into(), (100 + i % 50).to_string()],
                vec!["PERSIST".into(), format!("load:t{}", n(299))],
                vec!["HINCRBY".into(), format!("load:h{}", n(50)), format!("f{}", n(5)), "1".into()],
            ];
            for cmd in &cmds {
                let args: Vec<&[u8]> = cmd.iter().map(|a| a.as_bytes()).collect();
                send(&args);
            }
            let list = format!("list:{}{}", ["a", "b", "c"][(i % 3) as usize], n(40));
            send(&[b"RPUSH", list.as_bytes(), b"more"]);
            send(&[b"LTRIM", list.as_bytes(), b"-5", b"-1"]);
            i += 1;
        }
        i * 8
    });
    (running, thread)
}

/// A live import from the cluster `nodes` (already populated) into a fresh memlog while a write
/// load runs at the source: `under_load` follows the progress lines until the load may stop,
/// `drained` until the cut-over may come; then SIGINT, `last` checks the final line, and verify
/// must find no difference.
fn live_import_under_load(
    dir: &Path,
    nodes: &[Proc],
    under_load: impl FnOnce(&mut LiveImport),
    drained: impl FnOnce(&mut LiveImport),
    last: impl FnOnce(&serde_json::Value),
) {
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    let password = dir.join("source-password");
    std::fs::write(&password, "migrator-secret\n").unwrap();
    let cluster = memlog_cluster();
    let to = redis_url(cluster.proxy_addr());
    let (source_url, tls_args) = source_url("migrator", addrs[1]);
    let mut source_args = vec![source_url.as_str(), "--cluster", "--source-password-file", password.to_str().unwrap()];
    source_args.extend(tls_args.iter().map(String::as_str));

    let (running, load) = start_write_load(addrs.clone());
    let mut args = source_args.to_vec();
    args.extend(["--to", &to]);
    let mut live = LiveImport::start(&args);
    under_load(&mut live);
    running.store(false, Ordering::Relaxed);
    let commands = load.join().unwrap();
    drained(&mut live);
    let status = live.interrupt(Duration::from_secs(60));
    assert!(status.success(), "import live must end cleanly at the cut-over: {status}");
    let final_line = live.wait_for("the final line", Duration::from_secs(5), |l| l["done"] == true);
    last(&final_line);
    eprintln!("load: {commands} commands during the import; {final_line}");

    let mut args = vec!["verify"];
    args.extend(&source_args);
    args.extend(["--to", &to]);
    let out = import(&args);
    let report = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && report.contains(", 0 differences"), "verify after the cut-over: {report}");
}

/// `import live` and `verify` given `redis://` for a source that accepts only TLS: refused at
/// once, saying to use rediss://, with nothing copied.
fn assert_plain_import_refused(dir: &Path, addr: SocketAddr) {
    let password = dir.join("plain-password");
    std::fs::write(&password, "migrator-secret\n").unwrap();
    let cluster = memlog_cluster();
    let to = redis_url(cluster.proxy_addr());
    let source = format!("redis://migrator@{addr}");
    for command in ["live", "verify"] {
        let started = Instant::now();
        let out =
            import(&[command, &source, "--cluster", "--source-password-file", password.to_str().unwrap(), "--to", &to]);
        assert!(!out.status.success(), "import {command} over plain TCP to a TLS-only source must fail");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(&addr.to_string()) && stderr.contains("rediss://"), "{stderr}");
        assert!(started.elapsed() < Duration::from_secs(10), "refused after {:?}", started.elapsed());
    }
    assert_eq!(cluster.client().cmd(&["DBSIZE"]).unwrap(), Value::Int(0), "nothing was copied");
}

/// The ElastiCache-like source runs TLS only (in-transit encryption), reached with rediss://
/// and `--source-ca`, discovery and change feed included.
#[test]
fn import_live_from_an_elasticache_like_cluster_under_load_then_cut_over_verifies_clean() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = redis_cluster_of(dir.path(), ELASTICACHE_LIKE, true);
    let mut probe = source_conn(nodes[0].addr);
    for refused in ["SYNC", "PSYNC", "CONFIG"] {
        assert!(probe.cmd(&[refused, "GET", "x"]).unwrap().is_error(), "{refused} must be refused at the source");
    }
    assert_plain_import_refused(dir.path(), nodes[1].addr);
    let mut send = cluster_sender(&nodes);
    for prefix in ["a", "b", "c"] {
        populate(prefix, &mut send);
    }
    for i in 0..3000 {
        send(&[b"SET", format!("bulk:{i}").as_bytes(), format!("value-{i}").as_bytes()]);
    }
    // --mode auto falls back to notifications: the source refuses PSYNC.
    live_import_under_load(
        dir.path(),
        &nodes,
        |live| {
            let copied = live.wait_for("end of the first pass", Duration::from_secs(120), |l| {
                l["phase"] == "copy" && l["done"] == true
            });
            assert!(copied["keys"].as_u64().unwrap() > 3000, "{copied}");
            // Stay in sync under the load for a while: changes are re-copied.
            live.wait_for("changes re-copied", Duration::from_secs(60), |l| {
                l["phase"] == "sync" && l["recopied"].as_u64() > Some(2000)
            });
        },
        // Drained: nothing left to copy since the load stopped.
        |live| {
            live.wait_for("a drained feed", Duration::from_secs(60), |l| l["phase"] == "sync" && l["lag_keys"] == 0);
        },
        |last| {
            assert_eq!((last["phase"].as_str(), last["lag_keys"].as_u64()), (Some("sync"), Some(0)), "{last}");
            assert!(last["deleted"].as_u64().unwrap() > 0, "deletes and expiries reached memlog: {last}");
        },
    );
}

/// A self-managed Redis Cluster: PSYNC allowed, no notifications configured, an ACL user.
const SELF_MANAGED: &[&str] = &["--user", "migrator", "on", ">migrator-secret", "~*", "&*", "+@all"];

#[test]
fn import_live_by_replication_from_a_cluster_under_load_then_cut_over_verifies_clean() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = redis_cluster_with(dir.path(), SELF_MANAGED);
    let mut send = cluster_sender(&nodes);
    for prefix in ["a", "b", "c"] {
        populate(prefix, &mut send);
    }
    // --mode auto: the source allows PSYNC, so it is followed as a replica (no notifications
    // are configured: the notification mode would refuse this source).
    live_import_under_load(
        dir.path(),
        &nodes,
        |live| {
            let restored = live.wait_for("the RDBs restored", Duration::from_secs(120), |l| {
                l["phase"] == "restore" && l["done"] == true
            });
            assert!(restored["keys"].as_u64().unwrap() > 1000, "{restored}");
            live.wait_for("the stream applied", Duration::from_secs(60), |l| {
                l["phase"] == "sync" && l["keys"].as_u64() > Some(5000)
            });
        },
        // The cut-over itself waits until everything the sources ran before it is applied.
        |_| {},
        |last| assert_eq!((last["phase"].as_str(), last["lag_bytes"].as_u64()), (Some("sync"), Some(0)), "{last}"),
    );
}

#[test]
fn import_live_refuses_a_source_without_notifications_naming_the_parameter() {
    let dir = tempfile::tempdir().unwrap();
    let off = spawn_source(dir.path(), &[]);
    let partial = spawn_source(dir.path(), &["--notify-keyspace-events", "E$x"]);
    let mut conn = Conn::connect(off.addr, CLIENT_TIMEOUT).unwrap();
    ok(&mut conn, &[b"SET", b"k", b"v"]);
    let cluster = memlog_cluster();
    let to = redis_url(cluster.proxy_addr());

    // A stock Redis allows PSYNC: the notification mode is asked for by name.
    let out = import(&["live", "--mode", "notifications", &redis_url(off.addr), "--to", &to]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no keyevent notification at all") && stderr.contains("notify-keyspace-events"),
        "{stderr}"
    );

    let out = import(&["live", "--mode", "notifications", &redis_url(partial.addr), "--to", &to]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("generic, list, set, hash, sorted set, stream") && stderr.contains("lacks glshzt"),
        "{stderr}"
    );

    assert_eq!(cluster.client().cmd(&["DBSIZE"]).unwrap(), Value::Int(0), "nothing was copied");
    let leftover = Conn::connect(partial.addr, CLIENT_TIMEOUT).unwrap().cmd(&["DBSIZE"]).unwrap();
    assert_eq!(leftover, Value::Int(0), "the probe's scratch key is gone");
}

/// A self-managed source that accepts only TLS and asks for a client certificate
/// (`tls-auth-clients yes`) is read with --source-cert/--source-key; without them it is not.
#[test]
fn verify_reads_a_tls_source_that_wants_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let source = spawn_tls_source(dir.path(), &["--tls-auth-clients", "yes"]);
    let tls = common::redis_tls::files();
    let mut conn = common::redis_tls::connect(source.addr, CLIENT_TIMEOUT, common::redis_tls::proxy_client_config())
        .expect("a client with a certificate of the nodes' CA");
    ok(&mut conn, &[b"SET", b"k", b"v"]);
    let cluster = memlog_cluster();
    ok(&mut cluster.client(), &[b"SET", b"k", b"v"]);
    let (url, ca) = (format!("rediss://{}", source.addr), tls.ca.to_str().unwrap());
    let to = redis_url(cluster.proxy_addr());
    let (cert, key) = (tls.proxy_cert.to_str().unwrap(), tls.proxy_key.to_str().unwrap());
    let out = import(&["verify", &url, "--source-ca", ca, "--source-cert", cert, "--source-key", key, "--to", &to]);
    assert!(out.status.success(), "verify with a client certificate");
    let out = import(&["verify", &url, "--source-ca", ca, "--to", &to]);
    assert!(!out.status.success(), "verify without a client certificate must fail");
    assert!(String::from_utf8_lossy(&out.stderr).contains(&source.addr.to_string()));
}

/// A command whose stdout goes away (the script reading its lines exited, as the import bench
/// did when it was killed) stops with an error saying so, exit code 1, not a panic: `println!`
/// panics at EPIPE (Rust ignores SIGPIPE). `verify` (one line per difference), and `import
/// live --json` in both modes (replication: its RDB's `check` phase; notifications: its `copy`
/// progress).
#[test]
fn import_with_its_stdout_closed_stops_with_an_error_not_a_panic() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let source = spawn_source(dir.path(), &["--notify-keyspace-events", "KEA"]);
    let mut conn = Conn::connect(source.addr, CLIENT_TIMEOUT).unwrap();
    populate("p", &mut |args| ok(&mut conn, args));
    let cluster = memlog_cluster();
    let (from, to) = (redis_url(source.addr), redis_url(cluster.proxy_addr()));
    for args in [
        // memlog is empty: a difference per key.
        vec!["verify", &from, "--to", &to],
        vec!["live", "--mode", "replication", &from, "--to", &to, "--json"],
        vec!["live", "--mode", "notifications", &from, "--to", &to, "--json"],
    ] {
        let mut child = Command::new(memlog_bin())
            .arg("import")
            .args(&args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run memlog import");
        // The reader exits at once: the pipe's read end is closed.
        drop(child.stdout.take());
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("memlog import {args:?} still ran a minute after its stdout closed");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut stderr = String::new();
        child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
        eprintln!("memlog import {args:?}: {status}\nstderr:\n{stderr}");
        assert!(!stderr.contains("panicked"), "memlog import {args:?} panicked: {stderr}");
        assert_eq!(status.code(), Some(1), "memlog import {args:?}: {stderr}");
        assert!(stderr.contains("stdout was closed"), "memlog import {args:?}: {stderr}");
    }
}

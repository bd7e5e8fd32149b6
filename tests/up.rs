//! `memlog up` end to end: the real binary starts real Redis shards with replicas and the real
//! proxy, prints its endpoint, serves through it, restarts a child that dies, and leaves no
//! process behind, whether it is stopped with SIGTERM or killed with `kill -9`.

mod common;
mod up_harness;

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::memlog_bin;
use common::resp::{self, Conn};
use serde_json::Value;
use up_harness::{
    alive, cluster_json, node_cli, processes_with_role, recorded_pids, redis_cli, start_up_with, stdout_of, up_log,
    wait_all_gone, wait_until, Ports, Shape, Up,
};

const SHAPE: Shape = Shape { shards: 3, replicas: 1, journal_nodes: 3, snapshot_every: 100_000 };
const SHARDS: usize = SHAPE.shards;
const REPLICAS: usize = SHAPE.replicas;
const JOURNAL_NODES: usize = SHAPE.journal_nodes;

fn ports() -> Ports {
    up_harness::ports(SHAPE)
}

fn up_command(dir: &Path, ports: &Ports) -> Command {
    up_harness::up_command(dir, ports, SHAPE)
}

fn start_up(dir: &Path, ports: &Ports) -> (Up, String) {
    up_harness::start_up(dir, ports, SHAPE)
}

/// Checks the cluster `memlog up` reports is the one it started, and serves through the proxy.
fn check_running_cluster(dir: &Path, ports: &Ports, ready: &str) -> Vec<(String, u32)> {
    assert!(ready.contains(&format!("redis://127.0.0.1:{}", ports.proxy)), "ready line: {ready}");
    assert!(ready.contains(&format!("http://127.0.0.1:{}/metrics", ports.metrics)), "ready line: {ready}");
    let cluster = cluster_json(dir);
    assert_eq!(cluster["state"], "running");
    let pids = recorded_pids(&cluster);
    let count = |role: &str| pids.iter().filter(|(r, _)| r == role).count();
    assert_eq!(
        (count("journal"), count("primary"), count("replica"), count("proxy")),
        (JOURNAL_NODES, SHARDS, SHARDS * REPLICAS, 1),
        "{pids:?}"
    );
    assert!(ready.contains(&format!("journal {JOURNAL_NODES} nodes")), "ready line: {ready}");
    for (role, pid) in &pids {
        assert!(alive(*pid), "{role} pid {pid} from cluster.json is not running");
    }
    let config = std::fs::read_to_string(dir.join("proxy.toml")).unwrap();
    assert!(config.contains(&format!("127.0.0.1:{}", ports.redis_base)), "proxy.toml:\n{config}");
    assert!(config.contains("[journal]"), "proxy.toml:\n{config}");
    assert!(config.contains(&format!("\"127.0.0.1:{}\"", ports.journal_base)), "proxy.toml:\n{config}");
    let metadata = format!("file:{}", dir.canonicalize().unwrap().join("metadata.json").display());
    assert!(config.contains(&metadata), "proxy.toml must name {metadata}:\n{config}");

    // Each replica really replicates its primary (stock replication set up by `up`).
    for process in cluster["processes"].as_array().unwrap().iter().filter(|p| p["role"] == "replica") {
        let port = process["port"].as_u64().unwrap() as u16;
        let info = stdout_of(&node_cli(dir, port, &["INFO", "replication"]));
        assert!(info.contains("role:slave"), "{info}");
        assert!(info.contains(&format!("master_port:{}", process["replica_of"])), "{info}");
    }

    // Writes and reads through the proxy, spread over every shard by their keys.
    for i in 0..30 {
        let key = format!("up-test-{i}");
        let set = redis_cli(ports.proxy, &["SET", &key, &format!("v{i}")]);
        assert_eq!(stdout_of(&set), "OK", "SET via proxy: {set:?}\n{}", up_log(dir));
        assert_eq!(stdout_of(&redis_cli(ports.proxy, &["GET", &key])), format!("v{i}"));
    }
    let mut keys_on_primaries = 0;
    for process in cluster["processes"].as_array().unwrap().iter().filter(|p| p["role"] == "primary") {
        let port = process["port"].as_u64().unwrap() as u16;
        let keys = stdout_of(&node_cli(dir, port, &["--scan", "--pattern", "up-test-*"]));
        let n = keys.lines().count();
        assert!(n > 0, "shard on port {port} got none of 30 keys");
        keys_on_primaries += n;
    }
    assert_eq!(keys_on_primaries, 30);

    // Nothing bypasses the journal: a client at a Redis port without the password is refused,
    // and the password is in two private files, on no command line.
    for process in
        cluster["processes"].as_array().unwrap().iter().filter(|p| p["role"] != "journal" && p["role"] != "proxy")
    {
        let port = process["port"].as_u64().unwrap() as u16;
        let set = redis_cli(port, &["SET", "bypass", "v"]);
        assert!(stdout_of(&set).starts_with("NOAUTH"), "direct SET on {port}: {set:?}");
        assert_eq!(stdout_of(&node_cli(dir, port, &["EXISTS", "bypass"])), "0", "the refused SET wrote on {port}");
    }
    let password = std::fs::read_to_string(dir.join("redis.password")).unwrap().trim().to_string();
    assert!(password.len() >= 32, "a weak password: {} chars", password.len());
    for file in ["redis.password", "redis-auth.conf"] {
        let mode = std::fs::metadata(dir.join(file)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{file} has mode {mode:o}");
    }
    for (role, pid) in &pids {
        assert!(!cmdline(*pid).concat().contains(&password), "the password is on the command line of {role} {pid}");
    }
    assert!(config.contains("[backend]") && config.contains("redis.password"), "proxy.toml:\n{config}");
    assert!(!config.contains(&password), "proxy.toml holds the password:\n{config}");
    pids
}

#[test]
fn up_serves_then_sigterm_stops_every_child() {
    let tmp = tempfile::tempdir().unwrap();
    let ports = ports();
    let (mut up, ready) = start_up(tmp.path(), &ports);
    let pids = check_running_cluster(tmp.path(), &ports, &ready);

    // `memlog status` agrees: healthy, every journal node ok.
    let status = Command::new(memlog_bin()).arg("status").arg("--dir").arg(tmp.path()).output().unwrap();
    let report = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "memlog status: {report}{}", String::from_utf8_lossy(&status.stderr));
    for port in ports.journal_base..ports.journal_base + JOURNAL_NODES as u16 {
        let row = report.lines().find(|l| l.starts_with(&format!("127.0.0.1:{port} "))).unwrap_or_default();
        assert!(row.contains(" ok "), "journal node {port} not ok in:\n{report}");
    }

    // A second `up` on the same --dir is refused while this one runs.
    let second = up_command(tmp.path(), &ports).output().unwrap();
    assert!(!second.status.success());
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains(&format!("another `memlog up` (pid {}) is running", up.child.id())), "{stderr}");

    sigterm_and_check_clean_stop(&mut up, &pids);

    let status = Command::new(memlog_bin()).arg("status").arg("--dir").arg(tmp.path()).output().unwrap();
    assert!(!status.status.success(), "memlog status must fail for a stopped cluster");
}

#[test]
fn every_file_and_dir_up_creates_is_for_its_owner_only() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cluster");
    std::fs::create_dir(&dir).unwrap();
    let ports = ports();
    let (_up, ready) = start_up(&dir, &ports);
    check_running_cluster(&dir, &ports, &ready);
    // A snapshot too, so its dir and RDB are among the files checked.
    let snapshot = redis_cli(ports.proxy, &["MEMLOG", "SNAPSHOT", "0"]);
    assert!(stdout_of(&snapshot).parse::<u64>().is_ok(), "MEMLOG SNAPSHOT 0: {snapshot:?}\n{}", up_log(&dir));

    let mut checked = (0, 0);
    let mut pending = vec![dir.clone()];
    let mut wrong = Vec::new();
    while let Some(path) = pending.pop() {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let mode = meta.permissions().mode() & 0o777;
        if meta.is_dir() {
            checked.0 += 1;
            if mode != 0o700 {
                wrong.push(format!("{} is a dir of mode {mode:o}", path.display()));
            }
            pending.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else if meta.file_type().is_file() && path != dir.join("up.log") {
            // up.log is the test harness's own file (memlog up's stderr), not one up creates.
            checked.1 += 1;
            if mode != 0o600 {
                wrong.push(format!("{} is a file of mode {mode:o}", path.display()));
            }
        } else {
            assert!(!meta.file_type().is_socket(), "a socket in --dir: {}", path.display());
        }
    }
    assert!(wrong.is_empty(), "readable by others:\n{}", wrong.join("\n"));
    let must_exist = ["metadata.json", "cluster.json", "proxy.toml", "cluster-tls/ca.pem", "cluster-tls/proxy.key"];
    for name in must_exist {
        assert!(dir.join(name).is_file(), "{name} is missing");
    }
    let snapshots = std::fs::read_dir(dir.join("snapshots/shard-0")).unwrap().count();
    assert!(snapshots > 0, "the snapshot is not in the snapshot dir");
    println!("{} dirs and {} files checked", checked.0, checked.1);
}

/// `memlog up --redis-tls`: every Redis node takes only TLS with a certificate of the nodes' CA.
/// The cluster serves, the replica syncs over TLS, a snapshot is fetched over TLS and `memlog
/// status` reaches the nodes; a plain client at a Redis port gets nothing and changes nothing.
#[test]
fn up_with_redis_tls_runs_every_redis_node_on_tls_only() {
    const TLS_SHAPE: Shape = Shape { shards: 1, replicas: 1, journal_nodes: 3, snapshot_every: 100_000 };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ports = up_harness::ports(TLS_SHAPE);
    let (_up, _ready) = start_up_with(dir, &ports, TLS_SHAPE, &["--redis-tls"]);
    for i in 0..20 {
        let set = redis_cli(ports.proxy, &["SET", &format!("tls-{i}"), "v"]);
        assert_eq!(stdout_of(&set), "OK", "SET via proxy: {set:?}\n{}", up_log(dir));
    }
    let (primary, replica) = (ports.redis_base, ports.redis_base + 1);
    wait_until(dir, Duration::from_secs(20), "the replica holds the writes, replicated over TLS", || {
        stdout_of(&node_cli(dir, replica, &["EXISTS", "tls-19"])) == "1"
    });
    for port in [primary, replica] {
        let set = redis_cli(port, &["SET", "bypass", "v"]);
        assert!(!stdout_of(&set).contains("OK"), "a plain client at {port} got {set:?}");
        assert_eq!(stdout_of(&node_cli(dir, port, &["EXISTS", "bypass"])), "0", "the plain SET wrote on {port}");
    }
    let snapshot = redis_cli(ports.proxy, &["MEMLOG", "SNAPSHOT", "0"]);
    assert!(stdout_of(&snapshot).parse::<u64>().is_ok(), "MEMLOG SNAPSHOT 0: {snapshot:?}\n{}", up_log(dir));
    let status = Command::new(memlog_bin()).arg("status").arg("--dir").arg(dir).output().unwrap();
    let report = stdout_of(&status);
    for port in [primary, replica] {
        let line = report.lines().find(|l| l.contains(&format!("127.0.0.1:{port} "))).unwrap_or_default();
        assert!(line.trim_end().ends_with("ok"), "memlog status on node {port}: {line:?}\n{report}");
    }
    for file in ["ca.pem", "node.pem", "node.key", "proxy.pem", "proxy.key"] {
        let mode = std::fs::metadata(dir.join("redis-tls").join(file)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "redis-tls/{file} has mode {mode:o}");
    }
}

/// SIGTERM to `memlog up`: it exits successfully, having reaped every child in `pids`, so they
/// are gone now, not eventually.
fn sigterm_and_check_clean_stop(up: &mut Up, pids: &[(String, u32)]) {
    unsafe { libc::kill(up.child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(40);
    let status = loop {
        if let Some(status) = up.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "memlog up did not exit after SIGTERM:\n{}", up_log(&up.dir));
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "memlog up exited with {status}:\n{}", up_log(&up.dir));
    let left: Vec<_> = pids.iter().filter(|(_, pid)| alive(*pid)).collect();
    assert!(left.is_empty(), "still running after a clean stop: {left:?}");
    assert_eq!(cluster_json(&up.dir)["state"], "stopped");
}

/// The record of process `name` in cluster.json.
fn record_of(dir: &Path, name: &str) -> Value {
    let cluster = cluster_json(dir);
    cluster["processes"]
        .as_array()
        .expect("processes array")
        .iter()
        .find(|p| p["name"] == name)
        .expect("recorded")
        .clone()
}

/// Kills `name` (pid from cluster.json) with SIGKILL and waits until cluster.json records a new,
/// live pid for it; returns the old and new pid and how long that took.
fn kill_9_and_wait_for_restart(dir: &Path, name: &str) -> (u32, u32, Duration) {
    let old_pid = record_of(dir, name)["pid"].as_u64().unwrap() as u32;
    let killed = Instant::now();
    unsafe { libc::kill(old_pid as i32, libc::SIGKILL) };
    let mut new_pid = old_pid;
    wait_until(dir, Duration::from_secs(20), &format!("{name} restarted with a new pid in cluster.json"), || {
        new_pid = record_of(dir, name)["pid"].as_u64().unwrap() as u32;
        new_pid != old_pid && alive(new_pid)
    });
    (old_pid, new_pid, killed.elapsed())
}

/// A child's argv, from /proc.
fn cmdline(pid: u32) -> Vec<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    raw.split(|&b| b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned()).collect()
}

/// A child that dies is brought back: `up` keeps running and restarts it on its port with a new
/// pid recorded in cluster.json; a Redis node comes back empty (its old RDB is not loaded) and
/// without `--replicaof`, and the proxy's controller makes it a replica holding the data again;
/// a journal node comes back with its data, the proxy with the same data. SIGTERM then still
/// stops everything, restarted children included.
#[test]
fn a_redis_node_or_journal_node_that_dies_is_restarted_on_its_port() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ports = ports();
    let (mut up, _ready) = start_up(dir, &ports);
    for i in 0..30 {
        assert_eq!(stdout_of(&redis_cli(ports.proxy, &["SET", &format!("sup-{i}"), "v"])), "OK", "{}", up_log(dir));
    }

    // A replica: its full sync left an RDB in its dir, which a replacement must not load.
    let replica = processes_with_role(&cluster_json(dir), "replica").remove(0);
    let name = replica["name"].as_str().unwrap().to_string();
    let port = replica["port"].as_u64().unwrap() as u16;
    let node_dir = dir.canonicalize().unwrap().join(&name);
    assert!(node_dir.join("dump.rdb").exists(), "the replica's full sync should have left dump.rdb");
    let (old_pid, new_pid, recorded_after) = kill_9_and_wait_for_restart(dir, &name);
    let serving_after = recorded_after
        + wait_until(dir, Duration::from_secs(10), "restarted replica answers PING", || {
            stdout_of(&node_cli(dir, port, &["PING"])) == "PONG"
        });
    println!(
        "{name} killed: restarted as pid {new_pid} after {recorded_after:?}, answering PING after {serving_after:?}"
    );
    assert!(up.child.try_wait().unwrap().is_none(), "memlog up must survive a child's death");
    assert_eq!(record_of(dir, &name)["restarts"], 1);
    // redis-server rewrites its title to `redis-server 127.0.0.1:<port>`.
    assert!(cmdline(new_pid).concat().ends_with(&format!(":{port}")), "same port: {:?}", cmdline(new_pid));
    let log = std::fs::read_to_string(node_dir.join("redis.log")).unwrap();
    let banner = format!("--- memlog up: restarting {name} after it exited with signal: 9");
    let (before, after) = log.split_once(&banner).unwrap_or_else(|| panic!("no restart banner in redis.log:\n{log}"));
    assert!(before.contains("MASTER <-> REPLICA sync: Finished with success"), "first instance synced:\n{before}");
    assert!(!after.contains("DB loaded from disk"), "the restarted node must start empty:\n{after}");
    let up_says = up_log(dir);
    assert!(
        up_says.lines().any(|l| l.contains("restarted") && l.contains(&name) && l.contains(&new_pid.to_string())),
        "restart not logged:\n{up_says}"
    );
    assert!(!alive(old_pid));
    assert_eq!(stdout_of(&redis_cli(ports.proxy, &["GET", "sup-0"])), "v", "proxy still serves");

    // The proxy's failover controller attaches it as a replica of its shard's primary, and it
    // holds the shard's data again (its own journal LSN and every key).
    let primary_port = replica["replica_of"].as_u64().unwrap() as u16;
    let holds = |port: u16| {
        let lsn = stdout_of(&node_cli(dir, port, &["GET", "__memlog:lsn"]));
        (lsn, stdout_of(&node_cli(dir, port, &["DBSIZE"])))
    };
    let replica_again = serving_after
        + wait_until(dir, Duration::from_secs(15), "restarted node is a synced replica of its primary again", || {
            let info = stdout_of(&node_cli(dir, port, &["INFO", "replication"]));
            info.contains("role:slave")
                && info.contains(&format!("master_port:{primary_port}"))
                && info.contains("master_link_status:up")
                && holds(port) == holds(primary_port)
        });
    // It became a replica by the controller's REPLICAOF, not by a `--replicaof` of `up`.
    let log = std::fs::read_to_string(node_dir.join("redis.log")).unwrap();
    let after = log.split_once(&banner).unwrap().1;
    assert!(
        after.contains(&format!("REPLICAOF 127.0.0.1:{primary_port} enabled (user request")),
        "the restarted node must be attached by the proxy, not started as a replica:\n{after}"
    );
    let (lsn, keys) = holds(port);
    assert!(lsn.parse::<u64>().unwrap() > 0 && keys.parse::<u64>().unwrap() > 1, "lsn {lsn}, {keys} keys");
    println!("{name} is a replica holding lsn {lsn} ({keys} keys) {replica_again:?} after kill -9");

    // It dies again at once: restarted again (after a longer, still bounded, delay).
    let (_, again_pid, again_after) = kill_9_and_wait_for_restart(dir, &name);
    println!("{name} killed again: restarted as pid {again_pid} after {again_after:?}");
    assert_eq!(record_of(dir, &name)["restarts"], 2);

    // A journal node: restarted on its port with its data dir, so it still holds the shards' streams.
    let journal = processes_with_role(&cluster_json(dir), "journal").remove(0);
    let journal_name = journal["name"].as_str().unwrap().to_string();
    let journal_port = journal["port"].as_u64().unwrap() as u16;
    let (_, journal_pid, journal_after) = kill_9_and_wait_for_restart(dir, &journal_name);
    println!("{journal_name} killed: restarted as pid {journal_pid} after {journal_after:?}");
    wait_until(dir, Duration::from_secs(10), "restarted journal node accepts connections", || {
        std::net::TcpStream::connect(("127.0.0.1", journal_port)).is_ok()
    });
    let status = Command::new(memlog_bin()).args(["status", "--json", "--dir"]).arg(dir).output().unwrap();
    let report: Value = serde_json::from_slice(&status.stdout).expect("status --json prints JSON");
    let node = report["journal"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["addr"] == format!("127.0.0.1:{journal_port}"))
        .unwrap_or_else(|| panic!("{report}"));
    assert_eq!(node["healthy"], true, "{report}");
    let streams = node["streams"].as_object().unwrap();
    assert!(streams.values().any(|s| s["last_lsn"].as_u64().unwrap() > 0), "journal data kept: {report}");
    for i in 0..10 {
        assert_eq!(stdout_of(&redis_cli(ports.proxy, &["SET", &format!("after-{i}"), "v"])), "OK", "{}", up_log(dir));
    }

    // The proxy: restarted with its config, it recovers every shard and serves the same data.
    let (_, proxy_pid, proxy_after) = kill_9_and_wait_for_restart(dir, "proxy");
    let serving_after = proxy_after
        + wait_until(dir, Duration::from_secs(30), "restarted proxy serves the data", || {
            stdout_of(&redis_cli(ports.proxy, &["GET", "sup-29"])) == "v"
        });
    println!("proxy killed: restarted as pid {proxy_pid} after {proxy_after:?}, serving after {serving_after:?}");

    let pids = recorded_pids(&cluster_json(dir));
    sigterm_and_check_clean_stop(&mut up, &pids);
}

#[test]
fn kill_9_of_up_takes_every_child_down() {
    let tmp = tempfile::tempdir().unwrap();
    let ports = ports();
    let (mut up, _ready) = start_up(tmp.path(), &ports);
    let pids = recorded_pids(&cluster_json(tmp.path()));
    assert_eq!(pids.len(), JOURNAL_NODES + SHARDS * (1 + REPLICAS) + 1);
    assert!(pids.iter().all(|(_, pid)| alive(*pid)));

    kill_9_and_wait(&mut up, &pids);
    // A killed multi-threaded process (a journal node) shows as a zombie as soon as its main
    // thread exits, a moment before its last thread closes its sockets: poll, briefly.
    for port in ports.redis_base..ports.journal_base + JOURNAL_NODES as u16 {
        wait_until(tmp.path(), Duration::from_secs(5), &format!("port {port} free after kill -9"), || {
            TcpListener::bind(("127.0.0.1", port)).is_ok()
        });
    }
}

/// SIGKILL of `memlog up`: it gets no chance to stop anything itself; its children die with it.
fn kill_9_and_wait(up: &mut Up, pids: &[(String, u32)]) {
    up.child.kill().unwrap();
    up.child.wait().unwrap();
    wait_all_gone(pids, Duration::from_secs(10));
}

#[test]
fn up_again_after_kill_9_of_everything_brings_back_every_acknowledged_write() {
    const KEYS: usize = 1_000;
    let tmp = tempfile::tempdir().unwrap();
    let ports = ports();
    let (mut up, _ready) = start_up(tmp.path(), &ports);
    let proxy = format!("127.0.0.1:{}", ports.proxy).parse().unwrap();
    write_durable_keys(proxy, KEYS, tmp.path());
    let pids = recorded_pids(&cluster_json(tmp.path()));
    kill_9_and_wait(&mut up, &pids);
    // The stale cluster.json (state running, every pid dead) must not block the re-run.
    assert_eq!(cluster_json(tmp.path())["state"], "running");

    let (_up, ready) = start_up(tmp.path(), &ports);
    assert!(ready.contains("journal 3 nodes"), "{ready}");
    assert_durable_keys(proxy, KEYS, tmp.path());
}

/// `SET durable:<i> value-<i>` for `i < keys`, pipelined through the proxy, each acknowledged.
fn write_durable_keys(proxy: std::net::SocketAddr, keys: usize, dir: &Path) {
    let mut client = Conn::connect(proxy, Duration::from_secs(20)).unwrap();
    for i in 0..keys {
        client.queue(&["SET".to_string(), format!("durable:{i}"), format!("value-{i}")]);
    }
    client.flush().unwrap();
    for (i, reply) in client.read_n(keys).unwrap().into_iter().enumerate() {
        assert_eq!(reply, resp::Value::Simple("OK".into()), "SET durable:{i}\n{}", up_log(dir));
    }
}

/// Every key `write_durable_keys` wrote reads back with its value.
fn assert_durable_keys(proxy: std::net::SocketAddr, keys: usize, dir: &Path) {
    let mut client = Conn::connect(proxy, Duration::from_secs(20)).unwrap();
    for i in 0..keys {
        client.queue(&["GET".to_string(), format!("durable:{i}")]);
    }
    client.flush().unwrap();
    let lost: Vec<String> = client
        .read_n(keys)
        .unwrap()
        .into_iter()
        .enumerate()
        .filter(|(i, got)| got.text() != format!("value-{i}"))
        .map(|(i, got)| format!("durable:{i} = {got:?}"))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {keys} acknowledged writes lost, e.g. {:?}\n{}",
        lost.len(),
        &lost[..lost.len().min(10)],
        up_log(dir)
    );
}

#[test]
fn missing_redis_server_is_a_clear_error_and_starts_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let ports = ports();
    let out = up_command(tmp.path(), &ports).arg("--redis-server").arg("/nonexistent/redis-server").output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("redis-server not found: install it (apt-get install redis-server) or pass --redis-server"),
        "{stderr}"
    );
    assert!(!tmp.path().join("cluster.json").exists(), "nothing may be started");
}

#[test]
fn a_child_that_fails_to_start_is_reported_with_its_log_and_the_others_are_stopped() {
    let tmp = tempfile::tempdir().unwrap();
    let ports = ports();
    // A "redis-server" that starts, complains and exits: up must say so, show the complaint,
    // stop the nodes it already started and exit non-zero.
    let fake = tmp.path().join("broken-redis-server");
    std::fs::write(&fake, "#!/bin/sh\necho \"broken on purpose: $*\"\nexit 3\n").unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = up_command(tmp.path(), &ports).arg("--redis-server").arg(&fake).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("failed to start: exited with"), "{stderr}");
    // Its first argument is the config file with the password, then the flags.
    let config = tmp.path().canonicalize().unwrap().join("redis-auth.conf");
    assert!(stderr.contains(&format!("broken on purpose: {} --port", config.display())), "log tail missing: {stderr}");
    let cluster = cluster_json(tmp.path());
    assert_eq!(cluster["state"], "stopped");
    wait_all_gone(&recorded_pids(&cluster), Duration::from_secs(5));
}

/// `--param` sets the parameter group on every node, replicas included (issue 13), and is kept
/// by the metadata store; a parameter memlog refuses stops `up` before anything starts.
#[test]
fn params_reach_every_node_and_a_refused_one_starts_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let ports = ports();
    let out = up_command(tmp.path(), &ports).args(["--param", "hz=-1"]).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--param: [parameters]: CONFIG SET failed (possibly related to argument 'hz') - argument must be between 0 and 2147483647 inclusive"),
        "{stderr}"
    );
    assert!(!tmp.path().join("cluster.json").exists(), "nothing may be started");

    let params = ["--param", "hash-max-listpack-entries=64", "--param", "maxmemory-policy=volatile-lfu"];
    let (mut up, _ready) = start_up_with(tmp.path(), &ports, SHAPE, &params);
    let nodes = SHAPE.redis_nodes() as u16;
    for port in ports.redis_base..ports.redis_base + nodes {
        wait_until(tmp.path(), Duration::from_secs(10), &format!("node {port} has the parameter group"), || {
            let out = node_cli(tmp.path(), port, &["CONFIG", "GET", "hash-max-listpack-entries"]);
            stdout_of(&out).ends_with("64")
        });
        let policy = node_cli(tmp.path(), port, &["CONFIG", "GET", "maxmemory-policy"]);
        assert!(stdout_of(&policy).ends_with("volatile-lfu"), "node {port}: {}", stdout_of(&policy));
    }
    let metadata: Value = serde_json::from_slice(&std::fs::read(tmp.path().join("metadata.json")).unwrap()).unwrap();
    assert_eq!(metadata["parameters"]["hash-max-listpack-entries"], "64");
    let pids = recorded_pids(&cluster_json(tmp.path()));
    sigterm_and_check_clean_stop(&mut up, &pids);
}

/// `--mode standalone` (issue 13): one shard behind a standalone endpoint; more shards are
/// refused before anything starts.
#[test]
fn up_in_standalone_mode_serves_one_shard_as_a_standalone_redis() {
    const TWO: Shape = Shape { shards: 2, replicas: 0, journal_nodes: 1, snapshot_every: 100_000 };
    let tmp = tempfile::tempdir().unwrap();
    let out = up_harness::up_command(tmp.path(), &up_harness::ports(TWO), TWO)
        .args(["--mode", "standalone"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--mode standalone serves one shard, but --shards 2 asks for more"), "{stderr}");
    assert!(!tmp.path().join("cluster.json").exists(), "nothing may be started");

    const ONE: Shape = Shape { shards: 1, replicas: 1, journal_nodes: 1, snapshot_every: 100_000 };
    let ports = up_harness::ports(ONE);
    let (mut up, ready) = start_up_with(tmp.path(), &ports, ONE, &["--mode", "standalone"]);
    assert!(ready.contains("(standalone, 1 shard × 1 replica, journal 1 node"), "ready line: {ready}");
    let cli = |args: &[&str]| stdout_of(&redis_cli(ports.proxy, args));
    assert!(cli(&["INFO", "server"]).contains("redis_mode:standalone"));
    assert!(cli(&["INFO", "cluster"]).contains("cluster_enabled:0"));
    assert_eq!(cli(&["CLUSTER", "SLOTS"]), "ERR This instance has cluster support disabled");
    assert_eq!(cli(&["MSET", "a", "1", "b", "2"]), "OK");
    assert_eq!(cli(&["MGET", "a", "b"]), "1\n2");
    let pids = recorded_pids(&cluster_json(tmp.path()));
    sigterm_and_check_clean_stop(&mut up, &pids);
}

#[test]
fn up_with_a_user_protects_the_cluster_and_the_operator_commands_log_in() {
    const SMALL: Shape = Shape { shards: 1, replicas: 1, journal_nodes: 1, snapshot_every: 100_000 };
    let tmp = tempfile::tempdir().unwrap();
    let secrets = tempfile::tempdir().unwrap();
    let password_file = secrets.path().join("admin.password");
    std::fs::write(&password_file, "adm1n-pw\n").unwrap();
    let ports = up_harness::ports(SMALL);
    let user_args = ["--user", "admin", "--password-file", password_file.to_str().unwrap()];
    let (mut up, _ready) = start_up_with(tmp.path(), &ports, SMALL, &user_args);

    // `default` is off: nothing is served, nor written, before AUTH.
    assert!(stdout_of(&redis_cli(ports.proxy, &["SET", "k", "v"])).starts_with("NOAUTH"));
    let admin = |args: &[&str]| {
        stdout_of(&redis_cli(
            ports.proxy,
            &[&["--user", "admin", "--pass", "adm1n-pw", "--no-auth-warning"], args].concat(),
        ))
    };
    assert_eq!(admin(&["EXISTS", "k"]), "0", "the refused SET wrote");
    assert_eq!(admin(&["SET", "k", "v"]), "OK");
    assert_eq!(admin(&["GET", "k"]), "v");
    assert!(admin(&["ACL", "LIST"]).contains("user default off"), "{}", admin(&["ACL", "LIST"]));
    let wrong = redis_cli(ports.proxy, &["--user", "admin", "--pass", "nope", "--no-auth-warning", "GET", "k"]);
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("WRONGPASS"), "{wrong:?}");
    assert!(stdout_of(&wrong).starts_with("NOAUTH"), "{wrong:?}");
    let config = std::fs::read_to_string(tmp.path().join("proxy.toml")).unwrap();
    assert!(!config.contains("adm1n-pw"), "proxy.toml holds the password:\n{config}");
    assert!(!cluster_json(tmp.path()).to_string().contains("adm1n-pw"), "cluster.json holds the password");

    // The operator commands log in: with --dir as the user `up` made; with --config from the
    // environment or a file; without credentials they cannot.
    let memlog = |args: &[&str], env: &[(&str, &str)]| {
        let out = Command::new(memlog_bin()).args(args).envs(env.iter().copied()).output().unwrap();
        (
            out.status.success(),
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        )
    };
    let dir = tmp.path().to_str().unwrap();
    let config = tmp.path().join("proxy.toml");
    let config = config.to_str().unwrap();
    let (ok, report) = memlog(&["status", "--dir", dir], &[]);
    assert!(ok, "memlog status --dir: {report}");
    let (ok, report) =
        memlog(&["status", "--config", config], &[("MEMLOG_USER", "admin"), ("MEMLOG_PASSWORD", "adm1n-pw")]);
    assert!(ok, "memlog status --config with MEMLOG_USER/MEMLOG_PASSWORD: {report}");
    let (ok, report) = memlog(
        &["status", "--config", config, "--user", "admin", "--password-file", password_file.to_str().unwrap()],
        &[],
    );
    assert!(ok, "memlog status --config --password-file: {report}");
    let (ok, report) = memlog(&["status", "--config", config], &[]);
    assert!(!ok && report.contains("NOAUTH"), "memlog status without credentials: {report}");
    let pids = recorded_pids(&cluster_json(tmp.path()));
    sigterm_and_check_clean_stop(&mut up, &pids);

    // The store holds the user now: another password is refused before anything starts, the
    // same one starts the cluster again with its data.
    let other = secrets.path().join("other.password");
    std::fs::write(&other, "not-it\n").unwrap();
    let refused = up_harness::up_command(tmp.path(), &ports, SMALL)
        .args(["--user", "admin", "--password-file", other.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && stderr.contains("holds admin without this password"), "{stderr}");
    assert_eq!(cluster_json(tmp.path())["state"], "stopped", "the refused start started something");
    let (mut up, _ready) = start_up_with(tmp.path(), &ports, SMALL, &user_args);
    assert_eq!(admin(&["GET", "k"]), "v");
    assert!(stdout_of(&redis_cli(ports.proxy, &["GET", "k"])).starts_with("NOAUTH"));
    let (ok, report) = memlog(&["failover", "--dir", dir, "--shard", "0"], &[]);
    assert!(ok && report.contains("switched over"), "memlog failover --dir: {report}");
    assert_eq!(admin(&["GET", "k"]), "v", "the write survived the switchover");
    let pids = recorded_pids(&cluster_json(tmp.path()));
    sigterm_and_check_clean_stop(&mut up, &pids);
}

/// `memlog up` started again after a failover: it starts every Redis node in its first role, so
/// the primary the failover recorded comes back as a replica of the old one (and read-only).
/// The proxy makes it the primary again, the old primary follows it, and every acknowledged
/// write is served.
#[test]
fn up_again_after_a_failover_serves_from_the_recorded_primary() {
    const KEYS: usize = 300;
    let tmp = tempfile::tempdir().unwrap();
    let ports = ports();
    let (mut up, _ready) = start_up(tmp.path(), &ports);
    let proxy = format!("127.0.0.1:{}", ports.proxy).parse().unwrap();
    write_durable_keys(proxy, KEYS, tmp.path());
    let dir = tmp.path().to_str().unwrap();
    let out = Command::new(memlog_bin()).args(["failover", "--dir", dir, "--shard", "0"]).output().unwrap();
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && report.contains("switched over"), "memlog failover: {report}");
    let pids = recorded_pids(&cluster_json(tmp.path()));
    sigterm_and_check_clean_stop(&mut up, &pids);

    let (_up, _ready) = start_up(tmp.path(), &ports);
    assert_durable_keys(proxy, KEYS, tmp.path());
    let mut client = Conn::connect(proxy, Duration::from_secs(20)).unwrap();
    assert_eq!(client.cmd(&["SET", "after", "1"]).unwrap(), resp::Value::Simple("OK".into()));
}

//! A durable memlog cluster out of real processes for the end-to-end durability tests: journal
//! nodes, one Redis primary per shard (no persistence of its own), a `file:` metadata store
//! and `memlog proxy` with a `[journal]` table. Every process can be killed with `kill -9` and
//! restarted on its same port (and, for a journal node, its same dir); a restarted Redis node
//! is always empty, so whatever it holds afterwards came from the journal.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use journal_service::node_client::NodeClient;

use super::load::{lost_writes, Load};
use super::resp::{Conn, Value};
use super::{free_port, memlog_bin, spawn_journal_with, spawn_listening, Proc};

/// The shape of a test cluster.
pub struct ClusterOptions {
    pub journal_nodes: usize,
    pub shards: usize,
    /// `[journal] write_wait_ms`: how long a write waits for a lost quorum before `-TRYAGAIN`.
    pub write_wait_ms: u64,
    /// `memlog journal --segment-bytes` (the default when None).
    pub journal_segment_bytes: Option<u64>,
    /// `[snapshot] every_entries`, with the snapshots in `<dir>/snapshots`; no snapshots when None.
    pub snapshot_every: Option<u64>,
    /// Top-level TOML lines added to the proxy's configuration (`auth_timeout_ms = …`,
    /// `[[users]]` tables go last).
    pub proxy_extra: String,
    /// `[journal] metadata`: the metadata store's URL; a `file:` store in the cluster's dir
    /// when None.
    pub metadata: Option<String>,
    /// Redis nodes that accept only TLS, and `[backend] tls` (`super::redis_tls`).
    pub redis_tls: bool,
    /// `[journal] max_write_bytes` (the proxy's default when None).
    pub max_write_bytes: Option<usize>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            journal_nodes: 3,
            shards: 2,
            write_wait_ms: 5_000,
            journal_segment_bytes: None,
            snapshot_every: None,
            proxy_extra: String::new(),
            metadata: None,
            redis_tls: false,
            max_write_bytes: None,
        }
    }
}

/// How long the proxy may take from start to serving (it replays the journal first).
const PROXY_READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Timeout of every client read in the tests.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(20);

pub struct DurableCluster {
    journal: Vec<Option<Proc>>,
    journal_addrs: Vec<SocketAddr>,
    journal_args: Vec<String>,
    redis: Vec<Option<Proc>>,
    redis_addrs: Vec<SocketAddr>,
    redis_tls: bool,
    proxy: Option<Proc>,
    proxy_addr: SocketAddr,
    /// Last, so the processes' logs are still there when they are dropped (and shown if the
    /// test failed).
    pub dir: tempfile::TempDir,
}

impl DurableCluster {
    /// Starts everything and waits until the proxy serves.
    pub fn start(opts: ClusterOptions) -> DurableCluster {
        let mut cluster = DurableCluster::start_without_proxy(opts);
        cluster.start_proxy();
        cluster
    }

    /// Starts the journal nodes and the Redis nodes, and writes the proxy's configuration; the
    /// proxy is started later ([`DurableCluster::start_proxy`]), e.g. in front of data put
    /// into the nodes directly.
    pub fn start_without_proxy(opts: ClusterOptions) -> DurableCluster {
        let dir = tempfile::tempdir().unwrap();
        let journal_args: Vec<String> =
            opts.journal_segment_bytes.iter().flat_map(|b| ["--segment-bytes".to_string(), b.to_string()]).collect();
        let journal: Vec<Option<Proc>> = (0..opts.journal_nodes)
            .map(|i| Some(spawn_journal_with(&journal_dir(dir.path(), i), 0, &journal_args)))
            .collect();
        let journal_addrs = journal.iter().map(|p| p.as_ref().unwrap().addr).collect();
        let redis: Vec<Option<Proc>> =
            (0..opts.shards).map(|_| Some(spawn_redis_node(dir.path(), free_port(), true, opts.redis_tls))).collect();
        let redis_addrs = redis.iter().map(|p| p.as_ref().unwrap().addr).collect();
        let proxy_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let cluster = DurableCluster {
            dir,
            journal,
            journal_addrs,
            journal_args,
            redis,
            redis_addrs,
            redis_tls: opts.redis_tls,
            proxy: None,
            proxy_addr,
        };
        cluster.write_proxy_config(&opts);
        cluster
    }

    pub fn proxy_addr(&self) -> SocketAddr {
        self.proxy_addr
    }

    pub fn redis_addr(&self, shard: usize) -> SocketAddr {
        self.redis_addrs[shard]
    }

    pub fn shards(&self) -> usize {
        self.redis_addrs.len()
    }

    /// A fresh connection to the proxy.
    pub fn client(&self) -> Conn {
        Conn::connect(self.proxy_addr, CLIENT_TIMEOUT).expect("connect to the proxy")
    }

    /// `[[shards]]` with slots split evenly, `[journal]` with every node.
    fn write_proxy_config(&self, opts: &ClusterOptions) {
        let quote = |addrs: &[SocketAddr]| addrs.iter().map(|a| format!("\"{a}\"")).collect::<Vec<_>>().join(", ");
        let mut toml = format!("listen = \"{}\"\n{}\n", self.proxy_addr, opts.proxy_extra);
        toml += &backend_toml(self.dir.path(), opts.redis_tls);
        let metadata = opts
            .metadata
            .clone()
            .unwrap_or_else(|| format!("file:{}", self.dir.path().join("metadata.json").display()));
        toml += &format!(
            "[journal]\nnodes = [{}]\nmetadata = \"{metadata}\"\nwrite_wait_ms = {}\n",
            quote(&self.journal_addrs),
            opts.write_wait_ms
        );
        if let Some(max) = opts.max_write_bytes {
            toml += &format!("max_write_bytes = {max}\n");
        }
        toml += &super::cluster_tls::proxy_toml();
        if let Some(every) = opts.snapshot_every {
            let dir = self.snapshot_dir();
            toml += &format!("[snapshot]\ndir = \"{}\"\nevery_entries = {every}\n", dir.display());
        }
        let shards = self.redis_addrs.len();
        for (i, addr) in self.redis_addrs.iter().enumerate() {
            let (first, last) = (16384 * i / shards, 16384 * (i + 1) / shards - 1);
            toml += &format!("[[shards]]\nslots = \"{first}-{last}\"\nprimary = \"{addr}\"\n");
        }
        std::fs::write(self.config_path(), toml).unwrap();
    }

    /// Where the proxy keeps its snapshots (`snapshot_every`).
    pub fn snapshot_dir(&self) -> PathBuf {
        self.dir.path().join("snapshots")
    }

    /// The journal nodes' addresses.
    pub fn journal_addrs(&self) -> &[SocketAddr] {
        &self.journal_addrs
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("proxy.toml")
    }

    /// The full log of each proxy run, oldest first.
    pub fn proxy_logs(&self) -> Vec<String> {
        (0..).map_while(|run| std::fs::read_to_string(self.dir.path().join(format!("proxy-{run}.log"))).ok()).collect()
    }

    /// The last lines of each proxy run's log, for failure messages.
    pub fn proxy_log(&self) -> String {
        const LINES: usize = 40;
        let mut all = String::new();
        for (run, text) in self.proxy_logs().iter().enumerate() {
            let lines: Vec<&str> = text.lines().collect();
            all += &format!("--- proxy run {run}, last {LINES} lines ---\n");
            all += &lines[lines.len().saturating_sub(LINES)..].join("\n");
            all += "\n";
        }
        all
    }

    /// Starts the proxy (a new log file per run) and waits until it answers PING, which it
    /// does only once every primary has caught up with the journal. Returns the time it took.
    pub fn start_proxy(&mut self) -> Duration {
        assert!(self.proxy.is_none(), "the proxy is running");
        let started = Instant::now();
        let run = (0..).find(|run| !self.dir.path().join(format!("proxy-{run}.log")).exists()).unwrap();
        let mut cmd = Command::new(memlog_bin());
        cmd.arg("proxy").arg("--config").arg(self.config_path());
        let log = self.dir.path().join(format!("proxy-{run}.log"));
        self.proxy = Some(spawn_listening("memlog-proxy", cmd, self.proxy_addr, &log));
        let deadline = started + PROXY_READY_TIMEOUT;
        loop {
            let pong = Conn::connect(self.proxy_addr, Duration::from_secs(2)).and_then(|mut c| c.cmd(&["PING"]));
            // A proxy that requires authentication serves once it answers NOAUTH.
            let serving = match &pong {
                Ok(Value::Simple(s)) => s == "PONG",
                Ok(Value::Error(e)) => e.starts_with("NOAUTH"),
                _ => false,
            };
            if serving {
                return started.elapsed();
            }
            assert!(
                Instant::now() < deadline,
                "proxy not serving after {PROXY_READY_TIMEOUT:?}: {pong:?}\n{}",
                self.proxy_log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What every shard's primary holds now.
    pub fn snapshots(&self) -> Vec<Snapshot> {
        (0..self.shards()).map(|shard| Snapshot::take(self.redis_addr(shard))).collect()
    }

    /// Asserts each primary holds what it held in `expected`, with a per-key diff on failure.
    pub fn assert_same(&self, expected: &[Snapshot], what: &str) {
        for (shard, want) in expected.iter().enumerate() {
            let got = Snapshot::take(self.redis_addr(shard));
            if got.digest != want.digest {
                let diff = got.diff(want);
                panic!(
                    "{what}: shard {shard} digest {} != {} ({} of {} keys differ), e.g.:\n{}\n{}",
                    got.digest,
                    want.digest,
                    diff.len(),
                    want.keys.len(),
                    diff.iter().take(30).cloned().collect::<Vec<_>>().join("\n"),
                    self.proxy_log()
                );
            }
        }
    }

    /// Stops `load` and asserts that every write it saw acknowledged is there (no `INCR` applied
    /// twice), with examples and the proxy's log otherwise.
    pub fn assert_nothing_lost(&self, load: Load) {
        let progress = load.progress.clone();
        let logs = load.stop();
        let lost = lost_writes(self.proxy_addr(), &logs);
        assert!(
            lost.is_empty(),
            "{} problems among {} acknowledged writes, e.g.:\n{}\n{}",
            lost.len(),
            progress.acked.load(std::sync::atomic::Ordering::Relaxed),
            lost.iter().take(20).cloned().collect::<Vec<_>>().join("\n"),
            self.proxy_log()
        );
    }

    /// Entries the proxy's last run says it replayed at start-up (the sum of its `replayed=N`
    /// log fields).
    pub fn entries_replayed(&self) -> u64 {
        let logs = self.proxy_logs();
        logs.last()
            .expect("the proxy ran")
            .split("replayed=")
            .skip(1)
            .filter_map(|rest| rest.split(|c: char| !c.is_ascii_digit()).next()?.parse::<u64>().ok())
            .sum()
    }

    pub fn kill_proxy(&mut self) {
        self.proxy.take().expect("the proxy is running").kill9();
    }

    pub fn kill_redis(&mut self, shard: usize) {
        self.redis[shard].take().expect("the shard's primary is running").kill9();
    }

    /// Starts an EMPTY Redis on the shard primary's port.
    pub fn restart_redis(&mut self, shard: usize) {
        assert!(self.redis[shard].is_none(), "shard {shard}'s primary is running");
        self.redis[shard] =
            Some(spawn_redis_node(self.dir.path(), self.redis_addrs[shard].port(), true, self.redis_tls));
    }

    /// Starts Redis on the shard primary's port from the RDB it last saved (`SAVE`), as a node
    /// with persistence comes back after a crash: holding less than it had.
    pub fn restart_redis_from_its_rdb(&mut self, shard: usize) {
        assert!(self.redis[shard].is_none(), "shard {shard}'s primary is running");
        self.redis[shard] =
            Some(spawn_redis_node(self.dir.path(), self.redis_addrs[shard].port(), false, self.redis_tls));
    }

    pub fn kill_journal(&mut self, node: usize) {
        self.journal[node].take().expect("the journal node is running").kill9();
    }

    /// `kill -9` of every process: the proxy, every Redis node, every journal node.
    pub fn kill_everything(&mut self) {
        self.kill_proxy();
        (0..self.redis.len()).for_each(|shard| self.kill_redis(shard));
        (0..self.journal.len()).for_each(|node| self.kill_journal(node));
    }

    /// Starts everything [`DurableCluster::kill_everything`] killed (the Redis nodes empty) and
    /// waits until the proxy serves.
    pub fn restart_everything(&mut self) {
        (0..self.journal.len()).for_each(|node| self.restart_journal(node));
        (0..self.redis.len()).for_each(|shard| self.restart_redis(shard));
        self.start_proxy();
    }

    /// Restarts a journal node on its dir and port.
    pub fn restart_journal(&mut self, node: usize) {
        assert!(self.journal[node].is_none(), "journal node {node} is running");
        let (dir, port) = (journal_dir(self.dir.path(), node), self.journal_addrs[node].port());
        self.journal[node] = Some(spawn_journal_with(&dir, port, &self.journal_args));
    }
}

/// The first LSN each journal node at `addrs` still stores of `stream`: above 1 once the node
/// gave back the segments below a snapshot.
pub fn journal_first_lsns(addrs: &[SocketAddr], stream: &str) -> Vec<u64> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let mut firsts = Vec::new();
        for addr in addrs {
            let status = NodeClient::new(*addr, super::cluster_tls::proxy_transport())
                .status()
                .await
                .expect("journal node status");
            firsts.push(status.streams[stream].first_lsn);
        }
        firsts
    })
}

fn journal_dir(dir: &Path, node: usize) -> PathBuf {
    dir.join(format!("journal-{node}"))
}

/// The password every Redis node of these clusters wants (`requirepass`). The nodes get no
/// `masterauth`: a replica can sync only once the proxy's node preparation has set it.
pub const REDIS_PASSWORD: &str = "memlog-test-node-password";

/// The proxy's `[backend]` table for nodes that want [`REDIS_PASSWORD`], with the password in a
/// file in `dir`, and the TLS keys for nodes that accept only TLS when `tls`.
pub fn backend_toml(dir: &Path, tls: bool) -> String {
    let path = dir.join("redis.password");
    std::fs::write(&path, REDIS_PASSWORD).unwrap();
    let tls = if tls { super::redis_tls::backend_toml() } else { String::new() };
    format!("[backend]\npassword_file = \"{}\"\n{tls}", path.display())
}

/// A connection straight to a Redis node of these clusters (over TLS with the proxy's
/// certificate to a node that accepts only TLS), authenticated.
pub fn redis_conn(addr: SocketAddr) -> std::io::Result<Conn> {
    let mut conn = if super::redis_tls::is_tls_node(addr) {
        super::redis_tls::connect(addr, CLIENT_TIMEOUT, super::redis_tls::proxy_client_config())?
    } else {
        Conn::connect(addr, CLIENT_TIMEOUT)?
    };
    match conn.cmd(&["AUTH", REDIS_PASSWORD])? {
        Value::Simple(ok) if ok == "OK" => Ok(conn),
        // A node started without a password: the stock source Redis of the import tests.
        Value::Error(e) if e.contains("without any password configured") => Ok(conn),
        other => Err(std::io::Error::other(format!("AUTH on {addr}: {other:?}"))),
    }
}

/// A stock `redis-server` with no persistence on `port`, in `dir/redis-<port>`, that allows
/// `DEBUG` from loopback and wants [`REDIS_PASSWORD`]; an RDB left there is removed, so it always
/// starts empty.
pub fn spawn_redis_at(dir: &Path, port: u16) -> Proc {
    spawn_redis_node(dir, port, true, false)
}

/// [`spawn_redis_at`], which loads the RDB left in its dir unless `wipe`, and accepts only TLS
/// with `tls` (`super::redis_tls`).
pub fn spawn_redis_node(dir: &Path, port: u16, wipe: bool, tls: bool) -> Proc {
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let node_dir = dir.join(format!("redis-{port}"));
    std::fs::create_dir_all(&node_dir).unwrap();
    if wipe {
        let _ = std::fs::remove_file(node_dir.join("dump.rdb"));
    }
    let mut cmd = Command::new("redis-server");
    if tls {
        super::redis_tls::node_args(&mut cmd, port);
    } else {
        cmd.args(["--port", &port.to_string()]);
    }
    cmd.args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]);
    // For DEBUG DIGEST / DIGEST-VALUE, which Redis 7 refuses by default.
    cmd.args(["--enable-debug-command", "local"]);
    cmd.args(["--requirepass", REDIS_PASSWORD]);
    cmd.arg("--dir").arg(&node_dir);
    let log = node_dir.join(format!("redis-{}.log", std::time::SystemTime::UNIX_EPOCH.elapsed().unwrap().as_nanos()));
    spawn_listening(&format!("redis-{port}"), cmd, addr, &log)
}

/// What one Redis node holds: `DEBUG DIGEST` of the whole dataset, and per key its value digest
/// (`DEBUG DIGEST-VALUE`) and absolute expiry (`PEXPIRETIME`), for a readable diff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub digest: String,
    pub keys: BTreeMap<Vec<u8>, (String, i64)>,
}

impl Snapshot {
    /// Takes the snapshot directly on the Redis node (DEBUG is refused through the proxy).
    pub fn take(addr: SocketAddr) -> Snapshot {
        let mut conn = redis_conn(addr).expect("connect to redis");
        let digest = match conn.cmd(&["DEBUG", "DIGEST"]).unwrap() {
            Value::Simple(digest) => digest,
            other => panic!("DEBUG DIGEST on {addr}: {other:?}"),
        };
        let mut names = Vec::new();
        let mut cursor = "0".to_string();
        loop {
            let reply = conn.cmd(&["SCAN", &cursor, "COUNT", "1000"]).unwrap();
            let Value::Array(Some(parts)) = reply else { panic!("SCAN: {reply:?}") };
            cursor = parts[0].text();
            let Value::Array(Some(batch)) = &parts[1] else { panic!("SCAN keys: {parts:?}") };
            names.extend(batch.iter().map(|k| match k {
                Value::Bulk(Some(name)) => name.clone(),
                other => panic!("SCAN key: {other:?}"),
            }));
            if cursor == "0" {
                break;
            }
        }
        let mut keys = BTreeMap::new();
        for chunk in names.chunks(1000) {
            for name in chunk {
                conn.queue(&[b"DEBUG".as_slice(), b"DIGEST-VALUE", name]);
                conn.queue(&[b"PEXPIRETIME".as_slice(), name]);
            }
            conn.flush().unwrap();
            for name in chunk {
                let value = conn.read().unwrap();
                assert!(!value.is_error(), "DEBUG DIGEST-VALUE on {addr}: {value:?}");
                let value = value.text();
                let Value::Int(expiry) = conn.read().unwrap() else { panic!("PEXPIRETIME") };
                keys.insert(name.clone(), (value, expiry));
            }
        }
        Snapshot { digest, keys }
    }

    /// The data keys that differ from `expected`, the node's journal position (`__memlog:lsn`)
    /// aside: a rebuild journals a no-op barrier (and a new epoch may skip LSNs), so a rebuilt
    /// node can hold the same data at a later position.
    pub fn data_diff(&self, expected: &Snapshot) -> Vec<String> {
        let mut diff = self.diff(expected);
        diff.retain(|line| !line.starts_with("__memlog:lsn"));
        diff
    }

    /// The keys that differ from `expected`: missing, extra, or with another value or expiry.
    pub fn diff(&self, expected: &Snapshot) -> Vec<String> {
        let show = |k: &[u8]| String::from_utf8_lossy(k).into_owned();
        let mut out = Vec::new();
        for (key, want) in &expected.keys {
            match self.keys.get(key) {
                None => out.push(format!("lost {}", show(key))),
                Some(got) if got != want => out.push(format!("{}: expected {want:?}, got {got:?}", show(key))),
                Some(_) => {}
            }
        }
        out.extend(self.keys.keys().filter(|k| !expected.keys.contains_key(*k)).map(|k| format!("extra {}", show(k))));
        out
    }
}

//! Fault injection against the failover controller: a durable cluster (3 journal nodes, 2
//! shards of a primary and one replica, `memlog proxy` with default failover settings) under
//! continuous write load from a checker that records every acknowledged write. Each case breaks
//! something for real (`kill -9`, `SIGSTOP`), lets the proxy recover, then checks that every
//! acknowledged write is there (lost = 0) and prints the longest gap between two acknowledged
//! writes. Times are only bounded generously, so a slow machine cannot fail a case.
//!
//! The cases run one at a time (they share 2 cores, and the gaps they print are measurements).

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::cluster::{
    backend_toml, journal_first_lsns, redis_conn, spawn_redis_node, Snapshot, CLIENT_TIMEOUT, REDIS_PASSWORD,
};
use common::load::{lost_writes, Load, Outcome, Progress};
use common::resp::{Conn, Value};
use common::{free_port, memlog_bin, spawn_journal_with, spawn_listening, Proc};
use serde_json::Value as Json;

/// The longest a gap may be for a case to pass: far above the ~1-2 s expected, so only a
/// failover that does not happen fails it.
const GAP_BOUND: Duration = Duration::from_secs(15);
/// How long a recovery step may take before the case fails.
const RECOVERY: Duration = Duration::from_secs(30);
/// `[failover] hold_ms` and `[journal] write_wait_ms` (the defaults, which the cluster runs
/// with): how long a write waits through a fault before it gets `-TRYAGAIN`.
const HOLD: Duration = Duration::from_secs(5);
const SHARDS: usize = 2;
const LOAD_CONNECTIONS: usize = 4;

static SERIAL: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The cluster: node `2s` is shard `s`'s configured primary, node `2s + 1` its replica.
struct FailoverCluster {
    journal: Vec<Option<Proc>>,
    nodes: Vec<Option<Proc>>,
    node_addrs: Vec<SocketAddr>,
    proxy: Option<Proc>,
    proxy_addr: SocketAddr,
    /// Whether the nodes accept only TLS (and the proxy has `[backend] tls`).
    tls: bool,
    /// Last, so the processes' logs are still there when they are dropped (and shown if the
    /// test failed).
    dir: tempfile::TempDir,
}

/// Snapshots for `FailoverCluster::start_with`: often, and on small journal segments, so the
/// journal is truncated within a few seconds of load.
const SNAPSHOT_EVERY: u64 = 100;
const SNAPSHOT_SEGMENT_BYTES: &str = "65536";

impl FailoverCluster {
    fn start() -> FailoverCluster {
        FailoverCluster::start_with(false, false)
    }

    /// With `snapshots`, the proxy snapshots each shard every `SNAPSHOT_EVERY` entries and the
    /// journal is truncated below them; with `tls`, the nodes accept only TLS.
    fn start_with(snapshots: bool, tls: bool) -> FailoverCluster {
        let dir = tempfile::tempdir().unwrap();
        let journal_args: Vec<String> =
            if snapshots { vec!["--segment-bytes".into(), SNAPSHOT_SEGMENT_BYTES.into()] } else { Vec::new() };
        let journal: Vec<Option<Proc>> = (0..3)
            .map(|i| Some(spawn_journal_with(&dir.path().join(format!("journal-{i}")), 0, &journal_args)))
            .collect();
        let mut nodes = Vec::new();
        for _ in 0..SHARDS {
            let primary = spawn_node(dir.path(), free_port(), tls);
            let replica = spawn_node(dir.path(), free_port(), tls);
            nodes.extend([Some(primary), Some(replica)]);
        }
        let node_addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.as_ref().unwrap().addr).collect();
        let proxy_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut cluster = FailoverCluster { dir, journal, nodes, node_addrs, proxy: None, proxy_addr, tls };
        cluster.write_config(snapshots);
        cluster.start_proxy();
        // The proxy makes each replica follow its primary, after preparing it (`masterauth`: the
        // nodes want a password and were started without one to give their primary). Measure
        // failovers, not the replicas' first sync.
        for replica in cluster.node_addrs.iter().skip(1).step_by(2) {
            cluster.wait_until_synced(*replica);
        }
        cluster
    }

    /// Waits until the replica `node` reports its link to its primary up.
    fn wait_until_synced(&self, node: SocketAddr) {
        let deadline = Instant::now() + RECOVERY;
        while !redis_cmd(node, &["INFO", "replication"]).text().contains("master_link_status:up") {
            assert!(Instant::now() < deadline, "replica {node} does not sync: {}", self.proxy_log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn write_config(&self, snapshots: bool) {
        let quote = |addrs: Vec<String>| addrs.iter().map(|a| format!("\"{a}\"")).collect::<Vec<_>>().join(", ");
        let journal = self.journal.iter().map(|j| j.as_ref().unwrap().addr.to_string()).collect();
        let mut toml = format!(
            "listen = \"{}\"\n{}[journal]\nnodes = [{}]\nmetadata = \"file:{}\"\n",
            self.proxy_addr,
            backend_toml(self.dir.path(), self.tls),
            quote(journal),
            self.metadata_path().display()
        );
        toml += &common::cluster_tls::proxy_toml();
        if snapshots {
            let dir = self.dir.path().join("snapshots");
            toml += &format!("[snapshot]\ndir = \"{}\"\nevery_entries = {SNAPSHOT_EVERY}\n", dir.display());
        }
        for shard in 0..SHARDS {
            let (first, last) = (16384 * shard / SHARDS, 16384 * (shard + 1) / SHARDS - 1);
            toml += &format!(
                "[[shards]]\nslots = \"{first}-{last}\"\nprimary = \"{}\"\nreplicas = [\"{}\"]\n",
                self.node_addrs[2 * shard],
                self.node_addrs[2 * shard + 1]
            );
        }
        std::fs::write(self.dir.path().join("proxy.toml"), toml).unwrap();
    }

    fn metadata_path(&self) -> PathBuf {
        self.dir.path().join("metadata.json")
    }

    /// Starts the proxy (a log per run) and waits until it serves.
    fn start_proxy(&mut self) {
        let run = (0..).find(|run| !self.dir.path().join(format!("proxy-{run}.log")).exists()).unwrap();
        let mut cmd = Command::new(memlog_bin());
        cmd.arg("proxy").arg("--config").arg(self.dir.path().join("proxy.toml"));
        let log = self.dir.path().join(format!("proxy-{run}.log"));
        self.proxy = Some(spawn_listening("memlog-proxy", cmd, self.proxy_addr, &log));
        self.wait_until("the proxy serves", || {
            let pong = Conn::connect(self.proxy_addr, Duration::from_secs(2)).and_then(|mut c| c.cmd(&["PING"]));
            matches!(pong, Ok(Value::Simple(s)) if s == "PONG")
        });
    }

    fn proxy_log(&self) -> String {
        let mut all = String::new();
        for run in 0.. {
            let Ok(text) = std::fs::read_to_string(self.dir.path().join(format!("proxy-{run}.log"))) else { break };
            let lines: Vec<&str> = text.lines().collect();
            all += &format!("--- proxy run {run} ---\n{}\n", lines[lines.len().saturating_sub(60)..].join("\n"));
        }
        all
    }

    /// Waits until two snapshots of shard 0 are kept and every journal node truncated its
    /// stream below the older one, so a rebuild cannot come from the journal alone.
    fn wait_until_shard_0_truncated(&self) {
        let shard_dir = self.dir.path().join("snapshots/shard-0");
        let journal: Vec<SocketAddr> = self.journal.iter().map(|j| j.as_ref().unwrap().addr).collect();
        self.wait_until("two snapshots of shard 0 kept and its journal truncated on every node", || {
            std::fs::read_dir(&shard_dir).is_ok_and(|d| d.count() == 2)
                && journal_first_lsns(&journal, "shard-0").iter().all(|&first| first > 1)
        });
    }

    fn wait_until(&self, what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + RECOVERY;
        while !done() {
            assert!(Instant::now() < deadline, "not within {RECOVERY:?}: {what}\n{}", self.proxy_log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `MEMLOG TOPOLOGY`, parsed.
    fn topology(&self) -> Json {
        let mut conn = Conn::connect(self.proxy_addr, CLIENT_TIMEOUT).expect("connect to the proxy");
        match conn.cmd(&["MEMLOG", "TOPOLOGY"]).unwrap() {
            Value::Bulk(Some(json)) => serde_json::from_slice(&json).unwrap(),
            other => panic!("MEMLOG TOPOLOGY answered {other:?}"),
        }
    }

    fn primary(&self, shard: usize) -> SocketAddr {
        self.topology()["shards"][shard]["primary"]["addr"].as_str().unwrap().parse().unwrap()
    }

    fn epoch(&self, shard: usize) -> u64 {
        self.topology()["shards"][shard]["epoch"].as_u64().unwrap()
    }

    /// The other node of `shard` than `node`.
    fn partner(&self, shard: usize, node: SocketAddr) -> SocketAddr {
        let pair = [self.node_addrs[2 * shard], self.node_addrs[2 * shard + 1]];
        *pair.iter().find(|a| **a != node).unwrap()
    }

    fn node_index(&self, addr: SocketAddr) -> usize {
        self.node_addrs.iter().position(|a| *a == addr).unwrap()
    }

    fn kill_node(&mut self, addr: SocketAddr) {
        let i = self.node_index(addr);
        self.nodes[i].take().expect("the node is running").kill9();
    }

    /// Both nodes of a shard lost: `kill -9` of each (one already stopped is only reaped), then
    /// both restarted empty, so the shard can only be rebuilt from the journal.
    fn lose_both_nodes(&mut self, a: SocketAddr, b: SocketAddr) {
        self.kill_node(a);
        self.kill_node(b);
        self.restart_node(a);
        self.restart_node(b);
    }

    /// Starts an EMPTY Redis on the node's port, as `memlog up`'s supervision does.
    fn restart_node(&mut self, addr: SocketAddr) {
        let i = self.node_index(addr);
        assert!(self.nodes[i].is_none(), "{addr} is running");
        self.nodes[i] = Some(spawn_node(self.dir.path(), addr.port(), self.tls));
    }

    fn node(&self, addr: SocketAddr) -> &Proc {
        self.nodes[self.node_index(addr)].as_ref().expect("the node is running")
    }

    /// Waits until the controller has swapped shard `shard`'s primary away from `old`.
    fn wait_for_new_primary(&self, shard: usize, old: SocketAddr) -> SocketAddr {
        self.wait_until(&format!("shard {shard} fails over from {old}"), || self.primary(shard) != old);
        self.primary(shard)
    }

    /// The event kinds recorded in the `file:` metadata store.
    fn event_kinds(&self) -> Vec<String> {
        let doc: Json = serde_json::from_slice(&std::fs::read(self.metadata_path()).unwrap()).unwrap();
        doc["events"].as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap().to_string()).collect()
    }

    fn failovers_completed(&self) -> usize {
        self.event_kinds().iter().filter(|e| *e == "failover_completed").count()
    }

    /// Marks the moment of a fault, just before it is caused.
    fn fault(&self) -> Fault {
        Fault { at: Instant::now(), failovers_completed: self.failovers_completed() }
    }

    /// What writes may be told after a `fault` that the controller repairs with a failover:
    /// none may get `-TRYAGAIN` if it completed (shard released) within `HOLD` of the fault, as
    /// the README promises. Waits for the failover's `failover_completed` event.
    fn refusals_after_failover(&self, fault: Fault) -> Refusals {
        self.wait_until("the failover completes", || self.failovers_completed() > fault.failovers_completed);
        let took = fault.at.elapsed();
        println!("failover completed within {} ms of the fault", took.as_millis());
        if took < HOLD {
            Refusals::None
        } else {
            Refusals::Allowed("the failover took longer than hold_ms")
        }
    }
}

/// An empty Redis node on `port` that syncs a replica through a disk RDB: a diskless sync (the
/// default) waits 5 s for more replicas to share it, and then streams nothing to the replica
/// until its first `REPLCONF ACK`, up to 1 s later, which a switchover would wait for. It answers
/// `-BUSY` after 300 ms of a running script (as `memlog up` configures its nodes), which tells
/// the controller a busy primary from a dead one. With `tls` it accepts only TLS.
fn spawn_node(dir: &std::path::Path, port: u16, tls: bool) -> Proc {
    let node = spawn_redis_node(dir, port, true, tls);
    redis_cmd(node.addr, &["CONFIG", "SET", "repl-diskless-sync", "no"]);
    redis_cmd(node.addr, &["CONFIG", "SET", "busy-reply-threshold", "300"]);
    node
}

/// A hashtag whose slot belongs to `shard` (the config splits the slots evenly).
fn tag_in_shard(shard: usize) -> String {
    let owns = |slot: u16| usize::from(slot) * SHARDS / 16384 == shard;
    (0..).map(|i| format!("t{i}")).find(|tag| owns(memlog_proxy::router::key_slot(tag.as_bytes()))).unwrap()
}

/// One command straight to a Redis node.
fn redis_cmd(addr: SocketAddr, args: &[&str]) -> Value {
    redis_conn(addr).and_then(|mut c| c.cmd(args)).unwrap()
}

/// The `masterauth` a node presents to its primary.
fn masterauth(addr: SocketAddr) -> String {
    match redis_cmd(addr, &["CONFIG", "GET", "masterauth"]) {
        Value::Array(Some(items)) if items.len() == 2 => items[1].text(),
        other => panic!("CONFIG GET masterauth on {addr}: {other:?}"),
    }
}

/// `ROLE` of a node: `("master", None)` or `("slave", Some("host:port"))`.
fn role(addr: SocketAddr) -> (String, Option<String>) {
    match redis_cmd(addr, &["ROLE"]) {
        Value::Array(Some(items)) if items[0].text() == "slave" => {
            ("slave".into(), Some(format!("{}:{}", items[1].text(), items[2].text())))
        }
        Value::Array(Some(items)) => (items[0].text(), None),
        other => panic!("ROLE on {addr}: {other:?}"),
    }
}

/// Measures the longest time without a new acknowledged write, polling the load's counter.
struct GapMeter {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Duration>,
}

impl GapMeter {
    fn start(progress: Arc<Progress>) -> GapMeter {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut last_count, mut last_change, mut longest) = (0, Instant::now(), Duration::ZERO);
            while !flag.load(Ordering::Relaxed) {
                let count = progress.acked.load(Ordering::Relaxed);
                if count != last_count {
                    longest = longest.max(last_change.elapsed());
                    (last_count, last_change) = (count, Instant::now());
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            longest
        });
        GapMeter { stop, thread }
    }

    fn stop(self) -> Duration {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// A client reading every load connection's `counter:c` (connection `c` increments it; they
/// live on both shards) in a loop through the failover: every read must succeed (held, not
/// failed) and no counter may go back (a new primary serves no read before it holds
/// everything the old one served).
struct Reader {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<(u64, Vec<String>)>,
}

impl Reader {
    fn start(addr: SocketAddr) -> Reader {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut conn = Conn::connect(addr, CLIENT_TIMEOUT).expect("connect to the proxy");
            let (mut rounds, mut problems, mut last) = (0u64, Vec::new(), [0i64; LOAD_CONNECTIONS]);
            while !flag.load(Ordering::Relaxed) && problems.len() < 10 {
                for c in 0..LOAD_CONNECTIONS {
                    conn.queue(&["GET".to_string(), format!("counter:{c}")]);
                }
                let replies = conn.flush().and_then(|_| conn.read_n(LOAD_CONNECTIONS));
                let Ok(replies) = replies else {
                    problems.push(format!("connection failed: {replies:?}"));
                    break;
                };
                for (c, reply) in replies.into_iter().enumerate() {
                    let value = match reply {
                        Value::Bulk(None) => 0,
                        Value::Bulk(Some(value)) => String::from_utf8_lossy(&value).parse().unwrap_or(-1),
                        other => {
                            problems.push(format!("GET counter:{c} answered {other:?}"));
                            continue;
                        }
                    };
                    if value < last[c] {
                        problems.push(format!("counter:{c} went back from {} to {value}", last[c]));
                    }
                    last[c] = last[c].max(value);
                }
                rounds += 1;
            }
            (rounds, problems)
        });
        Reader { stop, thread }
    }

    /// Stops reading; panics with what went wrong, if anything.
    fn check(self, case: &str) {
        self.stop.store(true, Ordering::Relaxed);
        let (reads, problems) = self.thread.join().unwrap();
        assert!(problems.is_empty(), "{case}: reads through the failover: {problems:?}");
        assert!(reads > 0, "{case}: no read completed");
    }
}

/// When a fault was caused, and how many failovers had completed before it.
struct Fault {
    at: Instant,
    failovers_completed: usize,
}

/// Single writes that keep arriving through a fault: every 20 ms a new connection sends one
/// `SET arrival:n n`. The load's connections are all stuck behind the fault within moments
/// (each waits for its pipeline's replies), so without these no write would reach the proxy
/// while a shard is held, and a proxy that refused writes during a hold would go unnoticed.
struct Arrivals {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Vec<(u64, std::io::Result<Value>)>>,
}

impl Arrivals {
    fn start(addr: SocketAddr) -> Arrivals {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut writers = Vec::new();
            for n in 0.. {
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                writers.push(std::thread::spawn(move || {
                    let set = ["SET".to_string(), format!("arrival:{n}"), n.to_string()];
                    (n, Conn::connect(addr, CLIENT_TIMEOUT).and_then(|mut conn| conn.cmd(&set)))
                }));
                std::thread::sleep(Duration::from_millis(20));
            }
            writers.into_iter().map(|w| w.join().unwrap()).collect()
        });
        Arrivals { stop, thread }
    }

    /// Stops sending; returns how many were refused with `-TRYAGAIN`, and every problem: an
    /// acknowledged or committed write missing, an error text the proxy is not known to send.
    /// (A write whose connection failed, e.g. while the proxy restarts, counts for nothing.)
    fn finish(self, addr: SocketAddr) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut conn = Conn::connect(addr, CLIENT_TIMEOUT).expect("connect to check");
        let (mut refused, mut problems) = (0, Vec::new());
        for (n, reply) in self.thread.join().unwrap() {
            let must_hold = match reply {
                Ok(Value::Simple(ok)) if ok == "OK" => true,
                Ok(Value::Error(e)) => match Outcome::of_error(&e) {
                    Some(Outcome::Refused) => {
                        refused += 1;
                        false
                    }
                    Some(Outcome::Committed) => true,
                    Some(_) => false,
                    None => {
                        problems.push(format!("SET arrival:{n}: unknown error text {e:?}"));
                        false
                    }
                },
                Ok(other) => {
                    problems.push(format!("SET arrival:{n} answered {other:?}"));
                    false
                }
                Err(_) => false,
            };
            if must_hold {
                let got = conn.cmd(&["GET".to_string(), format!("arrival:{n}")]).unwrap();
                if got.text() != n.to_string() {
                    problems.push(format!("arrival:{n}: acknowledged or committed SET {n}, now {got:?}"));
                }
            }
        }
        (refused, problems)
    }
}

/// Whether a case may answer writes with `-TRYAGAIN`.
enum Refusals {
    /// None: every write waits through the fault.
    None,
    /// Some are allowed, for this reason (the shard could not be served for longer than `HOLD`).
    Allowed(&'static str),
}

/// Load running against the cluster, with the gap meter on.
struct Checked {
    load: Load,
    gaps: GapMeter,
    arrivals: Arrivals,
}

impl Checked {
    fn start(cluster: &FailoverCluster) -> Checked {
        let load = Load::start(cluster.proxy_addr, LOAD_CONNECTIONS);
        assert!(load.wait_for_more_acks(300, RECOVERY), "no load before the fault\n{}", cluster.proxy_log());
        let gaps = GapMeter::start(load.progress.clone());
        Checked { load, gaps, arrivals: Arrivals::start(cluster.proxy_addr) }
    }

    /// Waits for writes to flow again after the fault.
    fn resumes(&self, cluster: &FailoverCluster) {
        assert!(self.load.wait_for_more_acks(300, RECOVERY), "writes did not resume\n{}", cluster.proxy_log());
    }

    /// Stops the load, checks every acknowledged write and the `-TRYAGAIN` replies against
    /// `refusals`, and prints the longest gap.
    fn finish(self, cluster: &FailoverCluster, case: &str, refusals: Refusals) {
        self.resumes(cluster);
        let gap = self.gaps.stop();
        let progress = &self.load.progress;
        let count = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
        let (tryagain, committed, unknown) =
            (count(&progress.tryagain), count(&progress.committed), count(&progress.unknown));
        let logs = self.load.stop();
        let (arrivals_refused, mut lost) = self.arrivals.finish(cluster.proxy_addr);
        let tryagain = tryagain + arrivals_refused;
        let acked: usize = logs.iter().map(|l| l.acked_sets.len()).sum();
        println!(
            "failover gap {case}: {} ms ({acked} acknowledged SETs, {tryagain} TRYAGAIN, {committed} committed \
             unconfirmed, {unknown} unknown outcome; TRYAGAIN {})",
            gap.as_millis(),
            match refusals {
                Refusals::None => "not allowed",
                Refusals::Allowed(why) => why,
            }
        );
        if matches!(refusals, Refusals::None) {
            assert_eq!(tryagain, 0, "{case}: writes were refused with -TRYAGAIN\n{}", cluster.proxy_log());
        }
        lost.extend(lost_writes(cluster.proxy_addr, &logs));
        assert!(
            lost.is_empty(),
            "{case}: {} writes lost or wrong: {:?}\n{}",
            lost.len(),
            &lost[..lost.len().min(20)],
            cluster.proxy_log()
        );
        assert!(gap < GAP_BOUND, "{case}: writes stopped for {gap:?}\n{}", cluster.proxy_log());
    }
}

#[test]
fn kill9_primary() {
    let _one = one_at_a_time();
    kill9_primary_fails_over_to_the_replica(FailoverCluster::start(), "kill9-primary");
}

/// The same with nodes that accept only TLS (`[backend] tls`): the replica synced over TLS
/// (`tls-replication yes`) takes over, and the old primary, back empty, replicates the new one
/// over TLS. Peers without the nodes' CA get nothing from a node; keyspace notifications are
/// relayed over TLS.
#[test]
fn kill9_primary_of_nodes_that_accept_only_tls() {
    let _one = one_at_a_time();
    let cluster = FailoverCluster::start_with(false, true);
    let primary = cluster.primary(0);
    let before = Snapshot::take(primary);
    common::redis_tls::assert_refuses_peers_without_the_ca(primary);
    assert_eq!(Snapshot::take(primary), before, "a refused peer changed the node");
    // Keyspace notifications reach a subscriber through the relay's TLS connection to a node.
    let mut client = Conn::connect(cluster.proxy_addr, CLIENT_TIMEOUT).unwrap();
    assert_eq!(client.cmd(&["CONFIG", "SET", "notify-keyspace-events", "KA"]).unwrap(), Value::Simple("OK".into()));
    let mut subscriber = Conn::connect(cluster.proxy_addr, CLIENT_TIMEOUT).unwrap();
    let confirmed = subscriber.cmd(&["PSUBSCRIBE", "__keyspace@0__:*"]).unwrap();
    assert!(confirmed.text().contains("psubscribe"), "{confirmed:?}");
    assert_eq!(client.cmd(&["SET", "noted", "1"]).unwrap(), Value::Simple("OK".into()));
    let note = subscriber.read().unwrap();
    assert!(note.text().contains("__keyspace@0__:noted") && note.text().contains("set"), "{note:?}");
    kill9_primary_fails_over_to_the_replica(cluster, "kill9-primary-tls");
}

/// `kill -9` of shard 0's primary under the checker's load: its replica takes over within the
/// hold time, nothing acknowledged is lost, and the old primary, restarted empty, becomes a
/// replica of the new one.
fn kill9_primary_fails_over_to_the_replica(mut cluster: FailoverCluster, case: &str) {
    let checked = Checked::start(&cluster);
    let reader = Reader::start(cluster.proxy_addr);
    let old = cluster.primary(0);
    let epoch = cluster.epoch(0);
    let fault = cluster.fault();
    cluster.kill_node(old);
    let new = cluster.wait_for_new_primary(0, old);
    assert_eq!(new, cluster.partner(0, old));
    assert!(cluster.epoch(0) > epoch, "a failover bumps the shard's epoch");
    let refusals = cluster.refusals_after_failover(fault);
    checked.resumes(&cluster);
    reader.check(case);
    checked.finish(&cluster, case, refusals);
    let events = cluster.event_kinds();
    for kind in ["failover_started", "failover_completed", "epoch_bumped"] {
        assert!(events.iter().any(|e| e == kind), "no {kind} event in {events:?}");
    }
    // The old primary comes back empty: it must become a replica of the new one.
    cluster.restart_node(old);
    cluster.wait_until("the restarted old primary replicates the new one", || {
        role(old) == ("slave".into(), Some(new.to_string()))
    });
}

#[test]
fn a_primary_busy_in_a_long_script_is_not_failed_over() {
    let _one = one_at_a_time();
    let cluster = FailoverCluster::start();
    let primary = cluster.primary(0);
    let epoch = cluster.epoch(0);
    // 1.5 s of script on shard 0's primary: longer than detect_ms (1 s), so a controller that
    // took the busy node for a dead one would fail over during it.
    let script = "#!lua flags=no-writes
local function now() local t = redis.call('TIME') return t[1] * 1000000 + t[2] end
local start = now()
while now() - start < 1500000 do end
return 1";
    let mut client = Conn::connect(cluster.proxy_addr, Duration::from_secs(10)).unwrap();
    let started = Instant::now();
    assert_eq!(client.cmd(&["EVAL", script, "0"]).unwrap(), Value::Int(1));
    assert!(started.elapsed() >= Duration::from_millis(1400), "the script did not run for 1.5 s");
    assert_eq!(client.cmd(&["SET", "after-the-script", "1"]).unwrap(), Value::Simple("OK".into()));
    assert_eq!(cluster.primary(0), primary, "a busy primary was replaced");
    assert_eq!(cluster.epoch(0), epoch);
    let events = cluster.event_kinds();
    assert!(!events.iter().any(|e| e == "failover_started"), "a busy primary was failed over: {events:?}");
}

#[test]
fn sigstop_primary_then_resume() {
    let _one = one_at_a_time();
    let cluster = FailoverCluster::start();
    let checked = Checked::start(&cluster);
    let reader = Reader::start(cluster.proxy_addr);
    let old = cluster.primary(0);
    let fault = cluster.fault();
    cluster.node(old).stop();
    let new = cluster.wait_for_new_primary(0, old);
    let refusals = cluster.refusals_after_failover(fault);
    checked.resumes(&cluster);
    reader.check("sigstop-primary");
    cluster.node(old).cont();
    // A gray failure: the frozen primary resumes believing it is the primary; it is demoted.
    cluster.wait_until("the resumed old primary is demoted", || role(old) == ("slave".into(), Some(new.to_string())));
    checked.finish(&cluster, "sigstop-primary", refusals);
    assert!(cluster.event_kinds().iter().any(|e| e == "failover_completed"));
}

/// `kill -9` of shard 0's primary and replica under the checker's load: the shard is held until
/// both come back empty (as supervision restarts them), and is then rebuilt; every acknowledged
/// write is checked.
fn kill9_primary_and_replica_then_restart_both_empty(cluster: &mut FailoverCluster, checked: Checked, case: &str) {
    let primary = cluster.primary(0);
    let replica = cluster.partner(0, primary);
    cluster.kill_node(primary);
    cluster.kill_node(replica);
    // The shard waits: nothing can serve it until a node returns.
    cluster.wait_until("the controller holds shard 0", || cluster.topology()["shards"][0]["held"] == Json::Bool(true));
    assert_eq!(cluster.primary(0), primary, "nothing to fail over to");
    cluster.restart_node(primary);
    cluster.restart_node(replica);
    checked.resumes(cluster);
    cluster.wait_until("the restarted replica replicates the primary again", || {
        role(replica) == ("slave".into(), Some(primary.to_string()))
    });
    // Both came back empty and without `masterauth`; the replica can sync from a primary that
    // wants a password only because the proxy prepared it first, and the rebuilt primary was
    // prepared before it served again.
    cluster.wait_until_synced(replica);
    for node in [primary, replica] {
        assert_eq!(masterauth(node), REDIS_PASSWORD, "{node} was not prepared");
    }
    // The shard cannot be served until the nodes return, which may take longer than hold_ms.
    checked.finish(cluster, case, Refusals::Allowed("every node of the shard was down"));
}

#[test]
fn kill9_primary_and_replica_then_restart_empty() {
    let _one = one_at_a_time();
    let mut cluster = FailoverCluster::start();
    let checked = Checked::start(&cluster);
    kill9_primary_and_replica_then_restart_both_empty(&mut cluster, checked, "kill9-primary-and-replica");
    let events = cluster.event_kinds();
    assert!(events.iter().any(|e| e == "node_rebuilt"), "{events:?}");
    assert!(!events.iter().any(|e| e == "snapshot_restored"), "no snapshot was configured: {events:?}");
}

#[test]
fn kill9_primary_and_replica_after_the_journal_was_truncated_then_restart_empty() {
    let _one = one_at_a_time();
    let mut cluster = FailoverCluster::start_with(true, false);
    let checked = Checked::start(&cluster);
    // Snapshots of shard 0 (from its replica) until every journal node truncated its stream
    // below the older one, so the rebuild cannot come from the journal alone.
    cluster.wait_until_shard_0_truncated();
    kill9_primary_and_replica_then_restart_both_empty(
        &mut cluster,
        checked,
        "kill9-primary-and-replica-after-truncation",
    );
    let events = cluster.event_kinds();
    assert!(events.iter().any(|e| e == "snapshot_taken"), "{events:?}");
    assert!(events.iter().any(|e| e == "snapshot_restored"), "the rebuild did not use a snapshot: {events:?}");
}

#[test]
fn kill9_proxy_after_a_switchover() {
    let _one = one_at_a_time();
    let mut cluster = FailoverCluster::start();
    let checked = Checked::start(&cluster);
    let configured = cluster.primary(0);
    let mut admin = Conn::connect(cluster.proxy_addr, CLIENT_TIMEOUT).unwrap();
    assert_eq!(admin.cmd(&["MEMLOG", "FAILOVER", "0"]).unwrap(), Value::Simple("OK".into()));
    let recorded = cluster.primary(0);
    assert_ne!(recorded, configured);
    let epoch = cluster.epoch(0);
    cluster.proxy.take().unwrap().kill9();
    cluster.start_proxy();
    // The restarted proxy serves from the recorded primary, under a new epoch.
    assert_eq!(cluster.primary(0), recorded);
    assert!(cluster.epoch(0) > epoch);
    checked.finish(&cluster, "kill9-proxy", Refusals::None);
}

#[test]
fn kill9_proxy_and_primary_together() {
    let _one = one_at_a_time();
    let mut cluster = FailoverCluster::start();
    let checked = Checked::start(&cluster);
    let old = cluster.primary(0);
    cluster.proxy.take().unwrap().kill9();
    let fault = cluster.fault();
    cluster.kill_node(old);
    // The restarted proxy finds the recorded primary dead and fails over while it starts.
    cluster.start_proxy();
    assert_eq!(cluster.primary(0), cluster.partner(0, old), "{}", cluster.proxy_log());
    let refusals = cluster.refusals_after_failover(fault);
    checked.finish(&cluster, "kill9-proxy-and-primary", refusals);
}

#[test]
fn kill9_one_journal_node() {
    let _one = one_at_a_time();
    let mut cluster = FailoverCluster::start();
    let checked = Checked::start(&cluster);
    let primary = cluster.primary(0);
    cluster.journal[1].take().unwrap().kill9();
    checked.resumes(&cluster);
    assert_eq!(cluster.primary(0), primary, "a journal fault is no reason to fail over");
    // Two of three journal nodes are a quorum: writes go on.
    checked.finish(&cluster, "kill9-journal-node", Refusals::None);
}

#[test]
fn repeated_switchovers_back_and_forth() {
    let _one = one_at_a_time();
    let cluster = FailoverCluster::start();
    let checked = Checked::start(&cluster);
    let mut admin = Conn::connect(cluster.proxy_addr, CLIENT_TIMEOUT).unwrap();
    // A function library is journaled on every shard: every new primary must serve it.
    let library = "#!lua name=failoverlib\nredis.register_function('bump', function(keys) return redis.call('INCR', keys[1]) end)";
    assert_eq!(admin.cmd(&["FUNCTION", "LOAD", library]).unwrap(), Value::Bulk(Some(b"failoverlib".to_vec())));
    for round in 0..4 {
        let shard = round % SHARDS;
        let old = cluster.primary(shard);
        let to = cluster.partner(shard, old).to_string();
        let reply = admin.cmd(&["MEMLOG", "FAILOVER", &shard.to_string(), "TO", &to]).unwrap();
        assert_eq!(reply, Value::Simple("OK".into()), "round {round}\n{}", cluster.proxy_log());
        assert_eq!(cluster.primary(shard).to_string(), to);
        cluster
            .wait_until("the old primary replicates the new one", || role(old) == ("slave".into(), Some(to.clone())));
        checked.resumes(&cluster);
        // Each round bumps each shard's key once: the function ran once per call, on the primary
        // holding every earlier bump.
        for shard in 0..SHARDS {
            let key = format!("{{{}}}bumped", tag_in_shard(shard));
            let reply = admin.cmd(&["FCALL", "bump", "1", &key]).unwrap();
            assert_eq!(reply, Value::Int(round as i64 + 1), "round {round}, shard {shard}: FCALL");
        }
    }
    let refused = admin.cmd(&["MEMLOG", "FAILOVER", "0", "TO", "127.0.0.1:1"]).unwrap();
    assert!(refused.is_error(), "{refused:?}");
    // A switchover that answered OK completed within hold_ms (it is abandoned otherwise).
    checked.finish(&cluster, "repeated-switchovers", Refusals::None);
}

/// `CONFIG GET name` of one node.
fn node_param(addr: SocketAddr, name: &str) -> String {
    match redis_cmd(addr, &["CONFIG", "GET", name]) {
        Value::Array(Some(items)) if items.len() == 2 => items[1].text(),
        other => panic!("CONFIG GET {name} on {addr}: {other:?}"),
    }
}

/// `HSET key` with 200 fields through the proxy, then `OBJECT ENCODING key`.
fn hash_of_200_fields(proxy: SocketAddr, key: &str) -> String {
    let mut conn = Conn::connect(proxy, CLIENT_TIMEOUT).expect("connect to the proxy");
    let mut args = vec!["HSET".to_string(), key.to_string()];
    args.extend((0..200).flat_map(|i| [format!("f{i}"), "v".to_string()]));
    assert_eq!(conn.cmd(&args).unwrap(), Value::Int(200), "HSET {key}");
    encoding(proxy, key)
}

fn encoding(proxy: SocketAddr, key: &str) -> String {
    let mut conn = Conn::connect(proxy, CLIENT_TIMEOUT).expect("connect to the proxy");
    conn.cmd(&["OBJECT", "ENCODING", key]).unwrap().text()
}

/// A parameter change (issue 13) reaches every node and stays through every fault: `kill -9` of
/// the primary (the promoted replica was prepared with it), a node restarted empty (prepared
/// before it syncs, so even the hashes it loads from its primary's RDB are encoded by it), a
/// freeze that fails over to that node, and a rebuild of the whole shard from the journal.
/// `hash-max-listpack-entries 64` makes a hash of 200 fields a `hashtable`; Redis's default
/// (512) keeps it a `listpack`.
#[test]
fn a_parameter_change_survives_kill9_a_freeze_and_a_rebuild() {
    let _one = one_at_a_time();
    let mut cluster = FailoverCluster::start();
    let tag = tag_in_shard(0);
    let key = |name: &str| format!("{{{tag}}}{name}");
    assert_eq!(hash_of_200_fields(cluster.proxy_addr, &key("before")), "listpack", "Redis's default");
    let mut client = Conn::connect(cluster.proxy_addr, CLIENT_TIMEOUT).unwrap();
    let set = client.cmd(&["CONFIG", "SET", "hash-max-listpack-entries", "64"]).unwrap();
    assert_eq!(set, Value::Simple("OK".into()));
    assert_eq!(hash_of_200_fields(cluster.proxy_addr, &key("h1")), "hashtable");
    let first = cluster.primary(0);
    let replica = cluster.partner(0, first);
    cluster.wait_until("the replica is prepared with the new group", || {
        node_param(replica, "hash-max-listpack-entries") == "64"
    });

    cluster.kill_node(first);
    let promoted = cluster.wait_for_new_primary(0, first);
    assert_eq!(promoted, replica);
    assert_eq!(node_param(promoted, "hash-max-listpack-entries"), "64");
    assert_eq!(hash_of_200_fields(cluster.proxy_addr, &key("h2")), "hashtable", "after kill -9");

    cluster.restart_node(first);
    cluster.wait_until("the node restarted empty replicates the new primary", || {
        role(first) == ("slave".into(), Some(promoted.to_string()))
    });
    cluster.wait_until_synced(first);
    assert_eq!(node_param(first, "hash-max-listpack-entries"), "64", "the node restarted empty was not prepared");
    // An RDB load encodes a hash by the loading node's limit: 200 fields > 64.
    assert_eq!(redis_cmd(first, &["OBJECT", "ENCODING", &key("h2")]).text(), "hashtable");

    cluster.node(promoted).stop();
    let after_freeze = cluster.wait_for_new_primary(0, promoted);
    assert_eq!(after_freeze, first);
    assert_eq!(hash_of_200_fields(cluster.proxy_addr, &key("h3")), "hashtable", "after a freeze");
    for name in ["h1", "h2"] {
        assert_eq!(encoding(cluster.proxy_addr, &key(name)), "hashtable", "{name} on the node restarted empty");
    }
    cluster.node(promoted).cont();
    cluster.wait_until("the resumed node is demoted", || role(promoted) == ("slave".into(), Some(first.to_string())));

    // Both nodes of the shard lost: rebuilt from the journal, prepared first.
    cluster.lose_both_nodes(first, promoted);
    cluster.wait_until("shard 0 serves again", || {
        Conn::connect(cluster.proxy_addr, CLIENT_TIMEOUT)
            .and_then(|mut c| c.cmd(&["HLEN", &key("h3")]))
            .is_ok_and(|v| v == Value::Int(200))
    });
    let primary = cluster.primary(0);
    assert_eq!(node_param(primary, "hash-max-listpack-entries"), "64");
    for name in ["h1", "h2", "h3"] {
        assert_eq!(encoding(cluster.proxy_addr, &key(name)), "hashtable", "{name} after the rebuild");
    }
    // The proxy's own record, kept by the metadata store.
    let doc: Json = serde_json::from_slice(&std::fs::read(cluster.metadata_path()).unwrap()).unwrap();
    assert_eq!(doc["parameters"]["hash-max-listpack-entries"], "64");
}

/// A node rebuilt from a snapshot (the journal below it truncated) gets the parameter group
/// before it loads and replays, so the hash it loads is encoded by the group's limit.
#[test]
fn a_node_rebuilt_from_a_snapshot_has_the_parameter_group() {
    let _one = one_at_a_time();
    let mut cluster = FailoverCluster::start_with(true, false);
    let mut client = Conn::connect(cluster.proxy_addr, CLIENT_TIMEOUT).unwrap();
    let set = client.cmd(&["CONFIG", "SET", "hash-max-listpack-entries", "64"]).unwrap();
    assert_eq!(set, Value::Simple("OK".into()));
    let key = format!("{{{}}}h", tag_in_shard(0));
    assert_eq!(hash_of_200_fields(cluster.proxy_addr, &key), "hashtable");
    let checked = Checked::start(&cluster);
    cluster.wait_until_shard_0_truncated();
    kill9_primary_and_replica_then_restart_both_empty(&mut cluster, checked, "rebuild-from-snapshot-with-parameters");
    assert!(cluster.event_kinds().iter().any(|e| e == "snapshot_restored"), "the rebuild did not use a snapshot");
    let primary = cluster.primary(0);
    for node in [primary, cluster.partner(0, primary)] {
        assert_eq!(node_param(node, "hash-max-listpack-entries"), "64", "{node}");
    }
    assert_eq!(encoding(cluster.proxy_addr, &key), "hashtable");
}

/// A numeric field of a node's `INFO section`.
fn info_field(addr: SocketAddr, section: &str, field: &str) -> u64 {
    let info = redis_cmd(addr, &["INFO", section]).text();
    let prefix = format!("{field}:");
    let value = info.lines().find_map(|l| l.strip_prefix(&prefix));
    value.unwrap_or_else(|| panic!("{field} in {info}")).trim().parse().unwrap()
}

/// Eviction (docs/parameters.md, "Eviction"): with `allkeys-lru` and memlog's `maxmemory`,
/// every write is acknowledged (never `-OOM`) while memlog evicts with journaled `DEL`s; the
/// primary stays near the limit; the replica follows; and a rebuild of the whole shard from the
/// journal ends with exactly the dataset the lost primary held (`DEBUG DIGEST`), since the
/// evictions are in the journal and the nodes evict nothing on their own.
#[test]
fn evictions_are_journaled_and_a_rebuild_holds_exactly_what_the_primary_held() {
    let _one = one_at_a_time();
    let mut cluster = FailoverCluster::start();
    let tag = tag_in_shard(0);
    let primary = cluster.primary(0);
    let replica = cluster.partner(0, primary);
    let limit = info_field(primary, "memory", "used_memory") + 4 * 1024 * 1024;
    let mut client = Conn::connect(cluster.proxy_addr, CLIENT_TIMEOUT).unwrap();
    let limit_text = limit.to_string();
    let set = client.cmd(&["CONFIG", "SET", "maxmemory", &limit_text, "maxmemory-policy", "allkeys-lru"]).unwrap();
    assert_eq!(set, Value::Simple("OK".into()));
    const KEYS: usize = 12_000;
    let value = |i: usize| format!("{i:0>1000}");
    let mut highest = 0;
    for chunk in (0..KEYS).collect::<Vec<_>>().chunks(200) {
        for i in chunk {
            client.queue(&["SET".to_string(), format!("{{{tag}}}k{i}"), value(*i)]);
        }
        client.flush().unwrap();
        let replies = client.read_n(chunk.len()).unwrap_or_else(|e| panic!("{e}\n{}", cluster.proxy_log()));
        for reply in replies {
            assert_eq!(reply, Value::Simple("OK".into()), "a write under allkeys-lru");
        }
        highest = highest.max(info_field(primary, "memory", "used_memory"));
    }
    assert_eq!(info_field(primary, "stats", "evicted_keys"), 0, "the node evicted on its own");
    // What Redis and memlog count against maxmemory: used_memory less the replication buffers.
    let counted =
        |node| info_field(node, "memory", "used_memory") - info_field(node, "memory", "mem_not_counted_for_evict");
    cluster.wait_until("memlog's evictions bring the primary under its limit", || counted(primary) <= limit);
    let stats = client.cmd(&["INFO", "stats"]).unwrap().text();
    let evicted: u64 = stats.lines().find_map(|l| l.strip_prefix("evicted_keys:")).unwrap().trim().parse().unwrap();
    let kept = redis_cmd(primary, &["DBSIZE"]).text().parse::<u64>().unwrap() - 1;
    println!("{KEYS} keys written, {evicted} evicted by memlog, {kept} kept; maxmemory {limit}, highest used_memory seen {highest}");
    assert!(evicted > 0 && kept < KEYS as u64, "nothing was evicted");
    assert_eq!(kept + evicted, KEYS as u64, "every key written is either kept or counted as evicted");
    // No limit from here on, so the evictor stops (the node hovers around the limit, its client
    // buffers coming and going) and the dataset at the kill is the one compared after the rebuild.
    assert_eq!(client.cmd(&["CONFIG", "SET", "maxmemory", "0"]).unwrap(), Value::Simple("OK".into()));
    let mut digest = redis_cmd(primary, &["DEBUG", "DIGEST"]);
    cluster.wait_until("the primary's dataset settles", || {
        std::thread::sleep(Duration::from_millis(500));
        let now = redis_cmd(primary, &["DEBUG", "DIGEST"]);
        std::mem::replace(&mut digest, now.clone()) == now
    });
    let before = Snapshot::take(primary);
    let deadline = Instant::now() + Duration::from_secs(30);
    while redis_cmd(replica, &["DEBUG", "DIGEST"]) != digest {
        if Instant::now() > deadline {
            let diff = Snapshot::take(replica).diff(&before);
            panic!(
                "the replica differs from the primary in {} keys, e.g. {:?}\n{}\n{}",
                diff.len(),
                &diff[..diff.len().min(5)],
                redis_cmd(replica, &["INFO", "replication"]).text(),
                redis_cmd(primary, &["INFO", "replication"]).text()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    cluster.lose_both_nodes(primary, replica);
    cluster.wait_until("shard 0 is rebuilt", || {
        cluster.event_kinds().iter().any(|e| e == "node_rebuilt")
            && !cluster.topology()["shards"][0]["held"].as_bool().unwrap()
    });
    let rebuilt = cluster.primary(0);
    let diff = Snapshot::take(rebuilt).data_diff(&before);
    assert_eq!(diff, Vec::<String>::new(), "the rebuilt primary holds another dataset");
    assert_eq!(node_param(rebuilt, "maxmemory"), "0", "memlog enforces the limit, not the node");
    assert_eq!(info_field(rebuilt, "stats", "evicted_keys"), 0, "the rebuilt node evicted on its own");
}

/// A script that writes and then never returns (issue 11): the primary is busy for ever and
/// every replay of its entry would hang again. The operator finds the entry the shard is stuck
/// on (`MEMLOG ABORT` names it) and aborts it: the primary is stopped, the replica takes over
/// without the entry, the script's client is not told it succeeded, nothing of the script stays,
/// every acknowledged write is there and writes go on. Then both nodes are killed and the shard
/// is rebuilt from the journal: the replay skips the entry instead of hanging, and holds exactly
/// the data of before.
#[test]
fn a_script_that_never_returns_is_aborted_and_the_shard_rebuilt_without_it() {
    let _one = one_at_a_time();
    let mut cluster = FailoverCluster::start();
    let tag = tag_in_shard(0);
    let key = |name: &str| format!("{{{tag}}}{name}");
    let mut client = Conn::connect(cluster.proxy_addr, CLIENT_TIMEOUT).unwrap();
    for i in 0..50 {
        assert_eq!(client.cmd(&["SET", &key(&format!("before{i}")), "v"]).unwrap(), Value::Simple("OK".into()));
    }
    let primary = cluster.primary(0);
    let (proxy, looping_key) = (cluster.proxy_addr, key("loop"));
    let script = std::thread::spawn(move || {
        let mut conn = Conn::connect(proxy, Duration::from_secs(120)).unwrap();
        conn.cmd(&["EVAL", "redis.call('SET', KEYS[1], 'partial') while true do end", "1", &looping_key])
    });
    // The applier gives up on the entry after a backend timeout (5 s) and says which it is.
    let mut stuck_on = None;
    cluster.wait_until("the shard is stuck on the script's entry", || {
        let reply = client.cmd(&["MEMLOG", "ABORT", "0", "0"]).unwrap().text();
        stuck_on = reply
            .strip_prefix("ERR memlog: shard 0 is stuck on entry ")
            .and_then(|r| r.split(',').next()?.parse::<u64>().ok());
        stuck_on.is_some()
    });
    let lsn = stuck_on.unwrap().to_string();
    let aborted = client.cmd(&["MEMLOG", "ABORT", "0", &lsn]).unwrap();
    assert!(
        aborted.text().contains(&format!("entry {lsn} of shard 0 aborted")),
        "{aborted:?}\n{}",
        cluster.proxy_log()
    );
    let heard = script.join().unwrap().unwrap();
    assert!(heard.is_error(), "the aborted script's client heard {heard:?}");
    let promoted = cluster.wait_for_new_primary(0, primary);
    assert_eq!(client.cmd(&["GET", &key("loop")]).unwrap(), Value::Bulk(None), "the script's write stayed");
    assert_eq!(client.cmd(&["SET", &key("after"), "v"]).unwrap(), Value::Simple("OK".into()));
    for i in 0..50 {
        let value = client.cmd(&["GET", &key(&format!("before{i}"))]).unwrap();
        assert_eq!(value, Value::Bulk(Some(b"v".to_vec())), "before{i}");
    }
    let before = Snapshot::take(promoted);

    // Both nodes lost (the stopped one already gone): the shard is rebuilt from the journal.
    cluster.lose_both_nodes(primary, promoted);
    cluster.wait_until("shard 0 is rebuilt from the journal", || {
        Conn::connect(cluster.proxy_addr, CLIENT_TIMEOUT)
            .and_then(|mut c| c.cmd(&["GET", &key("after")]))
            .is_ok_and(|v| v == Value::Bulk(Some(b"v".to_vec())))
    });
    let diff = Snapshot::take(cluster.primary(0)).data_diff(&before);
    assert_eq!(diff, Vec::<String>::new(), "the rebuilt shard holds other data");
}

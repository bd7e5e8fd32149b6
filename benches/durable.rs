//! What durability costs, measured side by side in one run: SET through memlog (the proxy
//! journals every write to 3 journal nodes, ack quorum 2, fsync on, before Redis sees it)
//! against stock Redis with `appendfsync always` and stock Redis with no persistence at all.
//! Then the replay rate: the memlog Redis is killed and replaced by an empty one, and the
//! restarted proxy rebuilds it from the journal. Then the same rebuild after the same writes
//! into two fresh clusters, one keeping the whole journal and one snapshotting (the journal
//! truncated below the snapshots): how long each takes and how much journal each keeps on disk.
//! Then a mixed load (80% GET, 20% SET, 50 clients at pipeline 1, from `support/mixed.rs`, as
//! redis-benchmark cannot mix) against the same three, and SETs at fixed rates (an open loop,
//! from `support/openloop.rs`) against memlog and `appendfsync always`. Last, what TLS costs: durable SET through a cluster with TLS on every hop (clients to the
//! proxy, the proxy to the journal nodes, the proxy to a Redis node that accepts only TLS)
//! against one with TLS on none (journal nodes run `--insecure-no-tls`), interleaved.
//!
//! ```text
//! cargo bench --bench durable                        # ~3 s per measurement
//! MEMLOG_BENCH_QUICK=1 cargo bench --bench durable   # a short smoke run
//! MEMLOG_BENCH_ROUNDS=3 cargo bench --bench durable  # more interleaved rounds (default 2)
//! MEMLOG_BENCH_BASELINE=/path/to/other/memlog cargo bench --bench durable
//! ```
//!
//! With `MEMLOG_BENCH_BASELINE`, a second cluster whose journal nodes and proxy are that other
//! build (an older commit, say) runs the same SETs, interleaved with the others, and the bench
//! prints this build against it: an A/B of two builds' durable path in one run. The mixed load
//! runs against it too.
//!
//! Error replies are never counted as throughput: redis-benchmark 7 exits non-zero on the first
//! one (which fails the bench), and after the runs each memlog Redis must have applied exactly
//! the SETs sent to the proxy. The raw `fdatasync` latency of the bench's directory is printed
//! first, so a run on a filesystem where fsync is free shows.
//!
//! Issue 15's floors and goals are printed with their medians and whether each is met
//! (informational; a shared machine is too noisy to fail on). Next to them: the CPU seconds per
//! million SETs of every process serving each side (memlog: the proxy, the journal nodes and
//! its Redis; the baselines: their redis-server), and the journal nodes' data fsyncs per
//! acknowledged SET, from their metrics, so nobody wins by not syncing; and from the proxy's
//! metrics, how it grouped the SETs into journal entries (`proxy/src/sequencer/gather.rs`).

#[path = "support/fsync.rs"]
mod fsync;
#[path = "support/mixed.rs"]
mod mixed;
#[path = "support/openloop.rs"]
mod openloop;
#[path = "support/resp.rs"]
mod resp;
// This bench starts a whole cluster, not the routing-only proxy of benches/proxy*.rs.
#[allow(dead_code)]
#[path = "support/mod.rs"]
mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use support::{Client, Guard, Measurement, Settings, Target, Workload};

/// Journal nodes, all on the same disk as the Redis AOF they are compared with.
const JOURNAL_NODES: usize = 3;
/// Nodes that must have fsync'd an entry before memlog acknowledges the write.
const ACK_QUORUM: usize = 2;
/// Pipeline depths measured.
const PIPELINES: [u32; 2] = [1, 16];
/// Seconds of load per measurement (a quick run: a tenth of it).
const CELL_SECONDS: f64 = 3.0;
/// Requests per pipelined request of the probe that sizes each measurement.
const PROBE_REQUESTS: u64 = 5_000;
/// The journal nodes' count of data fsyncs (the fsync latency histogram's sample count).
const FSYNC_COUNT_METRIC: &str = "memlog_journal_fsync_duration_seconds_count";
/// redis-server arguments of the durable stock baseline.
const FSYNC_ALWAYS: &[&str] = &["--save", "", "--appendonly", "yes", "--appendfsync", "always"];
/// The proxy's start-up log line that reports the journal replay.
const REPLAY_LOG_LINE: &str = "shard recovered and primary caught up";

/// SETs (pipelined, `-r` keys) written into each cluster of the rebuild comparison.
const REBUILD_SETS: u64 = 1_000_000;
/// `[snapshot] every_entries` of the snapshotting cluster (it keeps one); a tenth in a quick run.
const REBUILD_SNAPSHOT_EVERY: u64 = 200;
/// Its journal nodes' `--segment-bytes`: small enough that truncation gives files back.
const REBUILD_SEGMENT_BYTES: u64 = 1024 * 1024;

const MEMLOG: &str = "memlog";
/// The other build's cluster, with `MEMLOG_BENCH_BASELINE`.
const BASELINE: &str = "baseline";
const FSYNC_ALWAYS_NAME: &str = "redis-fsync-always";
const NO_PERSISTENCE_NAME: &str = "redis-no-persistence";

fn main() -> Result<()> {
    let Settings { quick, rounds } = Settings::from_env()?;
    let dir = tempfile::tempdir()?;
    let raw = fsync::raw_fdatasync(&dir.path().join("raw-fdatasync"), 200);
    println!(
        "raw fdatasync of a {} B append in {}: p50 {:.3} ms, p99 {:.3} ms",
        fsync::RAW_APPEND_BYTES,
        dir.path().display(),
        raw.p50.as_secs_f64() * 1e3,
        raw.p99.as_secs_f64() * 1e3
    );
    let mut memlog = MemlogCluster::start(&dir.path().join("memlog"), None, Hops::Journal)?;
    let baseline = match std::env::var_os("MEMLOG_BENCH_BASELINE") {
        Some(bin) => {
            let bin = PathBuf::from(bin);
            let cluster = MemlogCluster::start_from(&bin, &dir.path().join("baseline"), None, Hops::Journal)?;
            println!("baseline: {} as the journal nodes and proxy of {}", bin.display(), cluster.proxy_addr);
            Some(cluster)
        }
        None => None,
    };
    let fsync_always_addr = support::free_addr();
    let fsync_always = support::start_redis(fsync_always_addr, &dir.path().join("fsync-always"), FSYNC_ALWAYS)?;
    let no_persistence_addr = support::free_addr();
    let no_persistence =
        support::start_redis(no_persistence_addr, &dir.path().join("no-persistence"), support::NO_PERSISTENCE)?;
    println!(
        "memlog proxy {} ({JOURNAL_NODES} journal nodes, ack quorum {ACK_QUORUM}), {FSYNC_ALWAYS_NAME} \
         {fsync_always_addr}, {NO_PERSISTENCE_NAME} {no_persistence_addr}; {rounds} interleaved rounds, quick={quick}",
        memlog.proxy_addr
    );

    let seconds = if quick { CELL_SECONDS / 10.0 } else { CELL_SECONDS };
    let (mut rows, mut baseline_rows) = (Vec::new(), Vec::new());
    // Every SET memlog (and the baseline) acknowledged, all of which the replay must rebuild.
    let (mut memlog_sets, mut baseline_sets) = (0, 0);
    for pipeline in PIPELINES {
        let workload = Workload { test: "set", pipeline };
        let mut targets = Vec::new();
        for (name, addr) in [
            (MEMLOG, memlog.proxy_addr),
            (FSYNC_ALWAYS_NAME, fsync_always_addr),
            (NO_PERSISTENCE_NAME, no_persistence_addr),
        ] {
            let requests = requests_for(addr, &workload, seconds, Client::default())?;
            let client = Client::default();
            targets.push(Target { name, addr, requests, pids: Vec::new(), client });
        }
        targets[0].pids = memlog.pids();
        targets[1].pids = vec![fsync_always.pid()];
        targets[2].pids = vec![no_persistence.pid()];
        if let Some(baseline) = &baseline {
            // As many requests as this build's proxy gets: the same work for both builds.
            let requests = targets[0].requests;
            let (pids, client) = (baseline.pids(), Client::default());
            requests_for(baseline.proxy_addr, &workload, seconds, client)?;
            targets.push(Target { name: BASELINE, addr: baseline.proxy_addr, requests, pids, client });
            baseline_sets += probe_requests(&workload) + rounds as u64 * requests;
        }
        memlog_sets += probe_requests(&workload) + rounds as u64 * targets[0].requests;
        let nodes_before = memlog.nodes()?;
        let grouping_before = memlog.grouping()?;
        let baseline_grouping_before = baseline.as_ref().map(MemlogCluster::grouping).transpose()?;
        let medians = support::interleaved(&workload, &targets, rounds)?;
        let grouping = memlog.grouping()?.since(grouping_before);
        if let (Some(measured), Some(cluster), Some(before)) = (medians.get(3), &baseline, baseline_grouping_before) {
            let baseline_grouping = cluster.grouping()?.since(before);
            baseline_rows.push(BaselineRow {
                pipeline,
                baseline: *measured,
                this: medians[0],
                baseline_grouping,
                grouping,
            });
        }
        let nodes = memlog.nodes()?.since(nodes_before);
        let fsyncs_per_set = nodes.fsyncs / (rounds as u64 * targets[0].requests) as f64;
        rows.push(Row {
            pipeline,
            memlog: medians[0],
            fsync_always: medians[1],
            no_persistence: medians[2],
            fsyncs_per_set,
            nodes,
            grouping,
        });
    }
    memlog.check_applied(memlog_sets)?;
    if let Some(baseline) = &baseline {
        baseline.check_applied(baseline_sets)?;
    }
    let replay = memlog.restart_on_empty_redis()?;
    anyhow::ensure!(replay.entries > 0, "the restarted proxy replayed nothing onto the empty Redis");
    print_table(&rows);
    print_targets(&rows);
    print_baseline(&baseline_rows);
    println!(
        "\nreplay: {} journal entries ({memlog_sets} SETs) onto an empty Redis in {} ms = {:.0} entries/s \
         ({:.0} SETs/s); the restarted proxy answered PING after {} ms",
        replay.entries,
        replay.elapsed_ms,
        replay.entries as f64 * 1000.0 / replay.elapsed_ms.max(1) as f64,
        memlog_sets as f64 * 1000.0 / replay.elapsed_ms.max(1) as f64,
        replay.ready.as_millis()
    );
    let stock = [
        (FSYNC_ALWAYS_NAME, fsync_always_addr, fsync_always.pid()),
        (NO_PERSISTENCE_NAME, no_persistence_addr, no_persistence.pid()),
    ];
    compare_mixed(&memlog, baseline.as_ref(), &stock, seconds, rounds)?;
    compare_open_loop(&memlog, baseline.as_ref(), &stock[..1], seconds, rounds)?;
    drop(memlog);
    drop(baseline);
    compare_rebuilds(dir.path(), quick)?;
    compare_tls(dir.path(), quick, rounds)
}

/// This build against the baseline build (`MEMLOG_BENCH_BASELINE`), with how each grouped its SETs.
fn print_baseline(rows: &[BaselineRow]) {
    if rows.is_empty() {
        return;
    }
    println!("\nthis build / baseline build (medians):");
    for BaselineRow { pipeline, baseline, this, baseline_grouping, grouping } in rows {
        println!(
            "  set -P {pipeline:<2} baseline {:>9.0} ops/s, this {:>9.0} ops/s: {}",
            baseline.ops_per_sec,
            this.ops_per_sec,
            against_baseline(this, baseline)
        );
        println!("           baseline: {baseline_grouping}\n           this:     {grouping}");
    }
}

/// This build's medians against the baseline build's: the throughput ratio, then each latency
/// and the CPU per request as baseline -> this.
fn against_baseline(this: &Measurement, baseline: &Measurement) -> String {
    format!(
        "{:.2}; p50 {:.3} -> {:.3} ms; p99 {:.3} -> {:.3} ms; cpu/req {:.1} -> {:.1} µs",
        this.ops_per_sec / baseline.ops_per_sec,
        baseline.p50_ms,
        this.p50_ms,
        baseline.p99_ms,
        this.p99_ms,
        baseline.cpu_us_per_request,
        this.cpu_us_per_request
    )
}

/// The mixed load against memlog, the baseline build's cluster if there is one, and the stock
/// servers `stock` (name, address, pid), in interleaved rounds; the medians and issue 15's goal
/// for it (memlog at least 0.8× Redis without persistence).
fn compare_mixed(
    memlog: &MemlogCluster,
    baseline: Option<&MemlogCluster>,
    stock: &[(&str, SocketAddr, u32)],
    seconds: f64,
    rounds: usize,
) -> Result<()> {
    let load = mixed::MixedLoad { clients: 50, seconds, keys: 10_000, value_len: 100 };
    let mut targets = vec![(MEMLOG, memlog.proxy_addr, memlog.pids())];
    targets.extend(baseline.map(|b| (BASELINE, b.proxy_addr, b.pids())));
    targets.extend(stock.iter().map(|&(name, addr, pid)| (name, addr, vec![pid])));
    println!(
        "\nmixed load: 80% GET / 20% SET, {} clients at pipeline 1, {} keys of {} B:",
        load.clients, load.keys, load.value_len
    );
    for (_, addr, _) in &targets {
        mixed::populate(*addr, &load)?;
    }
    let runs = support::interleaved_runs(targets.len(), rounds, |index, round| {
        let (name, addr, pids) = &targets[index];
        let run = mixed::run(*addr, &load, pids)?;
        println!("  mixed round {round} {name:<22} {run}");
        Ok(run)
    })?;
    let medians: Vec<Measurement> = runs.iter().map(|r| support::median_of(r)).collect();
    for ((name, _, _), m) in targets.iter().zip(&medians) {
        println!("  median {name:<22} {m}");
    }
    let none = targets.iter().position(|(name, _, _)| *name == NO_PERSISTENCE_NAME).context("no baseline")?;
    let ratio = medians[0].ops_per_sec / medians[none].ops_per_sec;
    println!(
        "  goal  mixed memlog/{NO_PERSISTENCE_NAME} {ratio:.2} (>= 0.8): {}",
        if ratio >= 0.8 { "met" } else { "NOT met" }
    );
    if let Some(baseline) = targets.iter().position(|(name, _, _)| *name == BASELINE) {
        println!("  this build / baseline build: {}", against_baseline(&medians[0], &medians[baseline]));
    }
    Ok(())
}

/// SETs at fixed rates (`support/openloop.rs`) against memlog, the baseline build's cluster if
/// there is one, and the stock servers `stock`, in interleaved rounds.
fn compare_open_loop(
    memlog: &MemlogCluster,
    baseline: Option<&MemlogCluster>,
    stock: &[(&str, SocketAddr, u32)],
    seconds: f64,
    rounds: usize,
) -> Result<()> {
    let mut targets = vec![(MEMLOG, memlog.proxy_addr)];
    targets.extend(baseline.map(|b| (BASELINE, b.proxy_addr)));
    targets.extend(stock.iter().map(|&(name, addr, _)| (name, addr)));
    openloop::compare(&targets, &OPEN_LOOP_RATES, seconds, rounds)
}

/// The rates of the open-loop load, SETs per second: from light to above what memlog makes at
/// pipeline 1 with 50 closed-loop clients on a 2-core machine (about 50,000).
const OPEN_LOOP_RATES: [f64; 4] = [1_000.0, 10_000.0, 30_000.0, 60_000.0];

/// Durable SET with TLS on every hop against TLS on none, interleaved rounds at each pipeline
/// depth; the ratios of the medians.
fn compare_tls(dir: &Path, quick: bool, rounds: usize) -> Result<()> {
    let seconds = if quick { CELL_SECONDS / 10.0 } else { CELL_SECONDS };
    let plain = MemlogCluster::start(&dir.join("tls-none"), None, Hops::None)?;
    let tls = MemlogCluster::start(&dir.join("tls-every"), None, Hops::Every)?;
    println!(
        "
TLS on every hop (clients, journal nodes, Redis) vs on none; {rounds} interleaved rounds:"
    );
    let mut rows = Vec::new();
    // The SETs sent to each, all of which its Redis must have applied.
    let mut sent = [0; 2];
    for pipeline in PIPELINES {
        let workload = Workload { test: "set", pipeline };
        let mut targets = Vec::new();
        for (name, cluster) in [("tls-none", &plain), ("tls-every-hop", &tls)] {
            let client = cluster.client();
            let requests = requests_for(cluster.proxy_addr, &workload, seconds, client)?;
            targets.push(Target { name, addr: cluster.proxy_addr, requests, pids: cluster.pids(), client });
        }
        for (sent, target) in sent.iter_mut().zip(&targets) {
            *sent += probe_requests(&workload) + rounds as u64 * target.requests;
        }
        let medians = support::interleaved(&workload, &targets, rounds)?;
        rows.push((pipeline, medians[0], medians[1]));
    }
    plain.check_applied(sent[0])?;
    tls.check_applied(sent[1])?;
    println!(
        "
{:<8} {:>14} {:>14} {:>9} {:>11} {:>11} {:>11} {:>11}",
        "pipeline", "none ops/s", "every ops/s", "ratio", "none p50", "every p50", "none p99", "every p99"
    );
    for (pipeline, none, every) in rows {
        println!(
            "{pipeline:<8} {:>14.0} {:>14.0} {:>9.2} {:>9.3}ms {:>9.3}ms {:>9.3}ms {:>9.3}ms",
            none.ops_per_sec,
            every.ops_per_sec,
            every.ops_per_sec / none.ops_per_sec,
            none.p50_ms,
            every.p50_ms,
            none.p99_ms,
            every.p99_ms
        );
    }
    Ok(())
}

/// Which hops of a memlog cluster are TLS.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Hops {
    /// The proxy to the journal nodes only (mutual TLS, what every deployment runs).
    Journal,
    /// None: the journal nodes run with `--insecure-no-tls`.
    None,
    /// Every hop: clients to the proxy (`[tls]`), the proxy to the journal nodes, and the proxy
    /// to a Redis node that accepts only TLS (`[backend] tls`).
    Every,
}

/// The certificates of a cluster with TLS on every hop besides the journal's: the clients' CA
/// and the proxy's certificate for them, the Redis node's CA, its certificate and the proxy's.
struct EdgeTls {
    clients_ca: PathBuf,
    proxy_cert: PathBuf,
    proxy_key: PathBuf,
    redis_ca: PathBuf,
    node_cert: PathBuf,
    node_key: PathBuf,
    backend_cert: PathBuf,
    backend_key: PathBuf,
}

impl EdgeTls {
    fn generate(dir: &Path) -> Result<EdgeTls> {
        use journal_service::cluster_ca::ClusterCa;
        std::fs::create_dir_all(dir)?;
        let names = || vec!["127.0.0.1".to_string(), "localhost".to_string()];
        let files = EdgeTls {
            clients_ca: dir.join("clients-ca.pem"),
            proxy_cert: dir.join("proxy.pem"),
            proxy_key: dir.join("proxy.key"),
            redis_ca: dir.join("redis-ca.pem"),
            node_cert: dir.join("node.pem"),
            node_key: dir.join("node.key"),
            backend_cert: dir.join("backend.pem"),
            backend_key: dir.join("backend.key"),
        };
        let clients = ClusterCa::generate_named("bench clients CA")?;
        let redis = ClusterCa::generate_named("bench Redis CA")?;
        let (proxy, node, backend) =
            (clients.issue_for_names(names())?, redis.issue_for_names(names())?, redis.issue_for_names(names())?);
        for (path, text) in [
            (&files.clients_ca, clients.cert_pem()),
            (&files.proxy_cert, proxy.cert),
            (&files.proxy_key, proxy.key),
            (&files.redis_ca, redis.cert_pem()),
            (&files.node_cert, node.cert),
            (&files.node_key, node.key),
            (&files.backend_cert, backend.cert),
            (&files.backend_key, backend.key),
        ] {
            std::fs::write(path, text)?;
        }
        Ok(files)
    }

    /// `redis-server` flags of a node that accepts only TLS on `addr`.
    fn node_args(&self, addr: SocketAddr) -> Vec<String> {
        let path = |p: &PathBuf| p.display().to_string();
        let port = addr.port().to_string();
        [
            ["--port", "0"],
            ["--tls-port", &port],
            ["--tls-cert-file", &path(&self.node_cert)],
            ["--tls-key-file", &path(&self.node_key)],
            ["--tls-ca-cert-file", &path(&self.redis_ca)],
        ]
        .concat()
        .into_iter()
        .map(str::to_string)
        .collect()
    }

    /// `redis-cli` flags that reach such a node as the proxy does.
    fn node_cli_args(&self) -> Vec<String> {
        let path = |p: &PathBuf| p.display().to_string();
        vec![
            "--tls".into(),
            "--cacert".into(),
            path(&self.redis_ca),
            "--cert".into(),
            path(&self.backend_cert),
            "--key".into(),
            path(&self.backend_key),
        ]
    }

    /// The proxy's `[tls]` and `[backend]` tables.
    fn proxy_toml(&self) -> String {
        format!(
            "[tls]
cert = \"{}\"
key = \"{}\"

[backend]
tls = true
ca = \"{}\"
cert = \"{}\"
key = \"{}\"

",
            self.proxy_cert.display(),
            self.proxy_key.display(),
            self.redis_ca.display(),
            self.backend_cert.display(),
            self.backend_key.display()
        )
    }
}

/// The same SETs into a cluster keeping its whole journal and into one snapshotting, then an
/// empty Redis under each: the rebuild time and the journal left on disk, side by side.
fn compare_rebuilds(dir: &Path, quick: bool) -> Result<()> {
    let sets = if quick { REBUILD_SETS / 10 } else { REBUILD_SETS };
    let workload = Workload { test: "set", pipeline: 16 };
    // A tenth of the SETs in a quick run: a tenth of the entries between snapshots too, or the
    // snapshotting cluster may never take one (since gathering, 100,000 SETs at -P 16 make about
    // 200 entries).
    let every_entries = if quick { REBUILD_SNAPSHOT_EVERY / 10 } else { REBUILD_SNAPSHOT_EVERY };
    let snapshots = Snapshots { every_entries, segment_bytes: REBUILD_SEGMENT_BYTES };
    println!(
        "\nrebuild of an empty primary after {sets} + {} SETs (-P 16, {} keys; the snapshot between the two):",
        sets / 10,
        support::KEYSPACE
    );
    let mut ready = Vec::new();
    for (name, snapshots) in [("whole journal", None), ("snapshots", Some(snapshots))] {
        let mut cluster = MemlogCluster::start(&dir.join(name.replace(' ', "-")), snapshots, Hops::Journal)?;
        support::redis_benchmark(cluster.proxy_addr, &workload, sets, Client::default())?;
        if snapshots.is_some() {
            cluster.wait_for_truncation()?;
        }
        // Writes after the snapshot: the tail a rebuild replays on top of it.
        support::redis_benchmark(cluster.proxy_addr, &workload, sets / 10, Client::default())?;
        cluster.check_applied(sets + sets / 10)?;
        let journal_bytes = cluster.journal_bytes()?;
        let replay = cluster.restart_on_empty_redis()?;
        println!(
            "  {name:<14} journal on disk {:>7.1} MiB; {:>6} entries replayed; serving after {:>6} ms",
            journal_bytes as f64 / (1 << 20) as f64,
            replay.entries,
            replay.ready.as_millis()
        );
        ready.push(replay.ready);
    }
    println!(
        "  rebuild time with snapshots / with the whole journal: {:.2}",
        ready[1].as_secs_f64() / ready[0].as_secs_f64()
    );
    Ok(())
}

/// How the snapshotting cluster of the rebuild comparison runs.
#[derive(Clone, Copy)]
struct Snapshots {
    every_entries: u64,
    segment_bytes: u64,
}

/// The medians of the three targets at one pipeline depth.
struct Row {
    pipeline: u32,
    memlog: Measurement,
    fsync_always: Measurement,
    no_persistence: Measurement,
    /// Data fsyncs of all journal nodes per SET memlog acknowledged.
    fsyncs_per_set: f64,
    nodes: NodeTimes,
    /// How the proxy grouped the SETs into journal entries during the rounds.
    grouping: Grouping,
}

/// This build against the baseline build (`MEMLOG_BENCH_BASELINE`) at one pipeline depth.
struct BaselineRow {
    pipeline: u32,
    baseline: Measurement,
    this: Measurement,
    baseline_grouping: Grouping,
    grouping: Grouping,
}

/// The journal nodes' data fsyncs and how long they and the appends took on the nodes (an
/// append from when its node's network thread handed it to the stream's writer thread to when
/// it was fsynced), all nodes together.
#[derive(Clone, Copy, Default)]
struct NodeTimes {
    fsyncs: f64,
    fsync_seconds: f64,
    entries: f64,
    append_seconds: f64,
}

impl NodeTimes {
    /// What was counted between `before` and these counters.
    fn since(self, before: NodeTimes) -> NodeTimes {
        NodeTimes {
            fsyncs: self.fsyncs - before.fsyncs,
            fsync_seconds: self.fsync_seconds - before.fsync_seconds,
            entries: self.entries - before.entries,
            append_seconds: self.append_seconds - before.append_seconds,
        }
    }
}

impl std::fmt::Display for NodeTimes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "on a node, an entry took {:.3} ms from its network thread to fsynced, its fdatasync {:.3} ms (means)",
            self.append_seconds * 1e3 / self.entries.max(1.0),
            self.fsync_seconds * 1e3 / self.fsyncs.max(1.0)
        )
    }
}

/// The proxy's group-commit counters (`memlog_sequencer_*`, every shard together): batches
/// taken (about one journal entry each), the requests in them, the batches that waited for the
/// clients the one before answered, and the waits cut short (`proxy/src/sequencer/gather.rs`).
/// A build without gathering reports no waits.
#[derive(Clone, Copy, Default)]
struct Grouping {
    batches: f64,
    requests: f64,
    waits: f64,
    cut_short: f64,
}

impl Grouping {
    fn from_metrics(text: &str) -> Grouping {
        Grouping {
            batches: metric_total(text, "memlog_sequencer_batch_size_count"),
            requests: metric_total(text, "memlog_sequencer_batch_size_sum"),
            waits: metric_total(text, "memlog_sequencer_gather_wait_seconds_count"),
            cut_short: metric_total(text, "memlog_sequencer_gather_timeouts_total"),
        }
    }

    /// What was counted between `before` and these counters.
    fn since(self, before: Grouping) -> Grouping {
        Grouping {
            batches: self.batches - before.batches,
            requests: self.requests - before.requests,
            waits: self.waits - before.waits,
            cut_short: self.cut_short - before.cut_short,
        }
    }
}

impl std::fmt::Display for Grouping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.1} SETs per batch; {:.0} of {:.0} batches waited for their clients, {:.0} waits cut short",
            self.requests / self.batches.max(1.0),
            self.waits,
            self.batches,
            self.cut_short
        )
    }
}

/// The sum of every series of the Prometheus metric `name` (whatever its labels) in `text`.
fn metric_total(text: &str, name: &str) -> f64 {
    text.lines()
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            (series.split('{').next()? == name).then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// The Prometheus text an endpoint serves at `/metrics`.
fn scrape(addr: &SocketAddr) -> Result<String> {
    let mut stream = TcpStream::connect_timeout(addr, Duration::from_secs(2))?;
    write!(stream, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    Ok(text)
}

/// How many requests give `seconds` of load on `addr`, from a short probe run (which also warms
/// the target up: connections, journal segments, Redis's hash table).
fn requests_for(addr: SocketAddr, workload: &Workload, seconds: f64, client: Client) -> Result<u64> {
    let probe = probe_requests(workload);
    let run = support::redis_benchmark(addr, workload, probe, client)?;
    let requests = (run.ops_per_sec * seconds / 1000.0).round() as u64 * 1000;
    // A whole number of pipelines: redis-benchmark sends `-P` commands per write and checks the
    // count only before each write, so it overshoots to the next multiple (with -P 16, 8 more
    // per run for an odd number of thousands), which the write check would count as applied
    // SETs nobody sent.
    let pipeline = u64::from(workload.pipeline);
    Ok(requests.div_ceil(pipeline).saturating_mul(pipeline).max(probe))
}

/// The size of the probe run that sizes a measurement of `workload`.
fn probe_requests(workload: &Workload) -> u64 {
    PROBE_REQUESTS * u64::from(workload.pipeline)
}

/// The memlog side: journal nodes, a Redis without persistence, and the proxy journaling
/// every write, each process killed by pid when dropped.
struct MemlogCluster {
    /// The `memlog` binary its journal nodes and proxy run.
    bin: PathBuf,
    dir: PathBuf,
    config: PathBuf,
    proxy_addr: SocketAddr,
    redis_addr: SocketAddr,
    journal: Vec<Guard>,
    /// Each journal node's Prometheus endpoint.
    journal_metrics: Vec<SocketAddr>,
    /// The proxy's Prometheus endpoint.
    proxy_metrics: SocketAddr,
    redis: Option<Guard>,
    proxy: Option<Guard>,
    /// Proxy runs so far; each logs to its own file.
    proxy_runs: usize,
    /// The client and Redis certificates with TLS on every hop.
    edge: Option<EdgeTls>,
}

/// What a proxy restart onto an empty Redis reported.
struct Replay {
    entries: u64,
    elapsed_ms: u64,
    /// From starting the proxy to its first PONG.
    ready: Duration,
}

impl MemlogCluster {
    fn start(dir: &Path, snapshots: Option<Snapshots>, hops: Hops) -> Result<MemlogCluster> {
        MemlogCluster::start_from(Path::new(env!("CARGO_BIN_EXE_memlog")), dir, snapshots, hops)
    }

    /// [`MemlogCluster::start`] with the journal nodes and the proxy of the binary `bin`.
    fn start_from(bin: &Path, dir: &Path, snapshots: Option<Snapshots>, hops: Hops) -> Result<MemlogCluster> {
        let mut journal = Vec::new();
        let mut journal_addrs = Vec::new();
        let mut journal_metrics = Vec::new();
        let tls = journal_service::cluster_ca::ClusterCa::generate()?.write(&dir.join("cluster-tls"))?;
        let edge = (hops == Hops::Every).then(|| EdgeTls::generate(&dir.join("edge-tls"))).transpose()?;
        for node in 0..JOURNAL_NODES {
            let addr = support::free_addr();
            let node_dir = dir.join(format!("journal-{node}"));
            std::fs::create_dir_all(&node_dir)?;
            let mut command = support::memlog_from(bin, &["journal", "--listen", &addr.to_string(), "--dir"]);
            command.arg(&node_dir);
            let metrics = support::free_addr();
            command.args(["--metrics-listen", &metrics.to_string()]);
            journal_metrics.push(metrics);
            if hops == Hops::None {
                command.arg("--insecure-no-tls");
            } else {
                command.arg("--cluster-ca").arg(&tls.journal.ca);
                command.arg("--cluster-cert").arg(&tls.journal.cert).arg("--cluster-key").arg(&tls.journal.key);
            }
            if let Some(snapshots) = snapshots {
                command.args(["--segment-bytes", &snapshots.segment_bytes.to_string()]);
            }
            let mut guard = support::spawn_logged(command, &node_dir.join("journal.log"))?;
            support::wait_until(&format!("journal node {addr} listening"), &mut guard, || {
                TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            })?;
            journal.push(guard);
            journal_addrs.push(format!("\"{addr}\""));
        }
        let redis_addr = support::free_addr();
        let redis = match &edge {
            None => support::start_redis(redis_addr, &dir.join("memlog-redis-0"), support::NO_PERSISTENCE)?,
            Some(edge) => start_tls_redis(redis_addr, &dir.join("memlog-redis-0"), edge)?,
        };
        let proxy_addr = support::free_addr();
        let proxy_metrics = support::free_addr();
        let config = dir.join("proxy.toml");
        // One snapshot kept: the journal is truncated at the first one, however short the load.
        let snapshot_table = snapshots.map_or(String::new(), |s| {
            format!(
                "[snapshot]\ndir = \"{}\"\nevery_entries = {}\nkeep = 1\n\n",
                dir.join("snapshots").display(),
                s.every_entries
            )
        });
        let cluster_tls = match hops {
            Hops::None => String::new(),
            Hops::Journal | Hops::Every => format!(
                "[cluster_tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
                tls.proxy.ca.display(),
                tls.proxy.cert.display(),
                tls.proxy.key.display()
            ),
        };
        let edge_tls = edge.as_ref().map_or(String::new(), EdgeTls::proxy_toml);
        std::fs::write(
            &config,
            format!(
                "listen = \"{proxy_addr}\"\nmetrics_listen = \"{proxy_metrics}\"\n\n{edge_tls}[journal]\nnodes = [{}]\nmetadata = \"file:{}\"\n\
                 ack_quorum = {ACK_QUORUM}\n\n{snapshot_table}[[shards]]\nslots = \"0-16383\"\n\
                 primary = \"{redis_addr}\"\n\n{cluster_tls}",
                journal_addrs.join(", "),
                dir.join("metadata.json").display(),
            ),
        )?;
        let mut cluster = MemlogCluster {
            bin: bin.to_path_buf(),
            dir: dir.to_path_buf(),
            config,
            proxy_addr,
            redis_addr,
            journal,
            journal_metrics,
            proxy_metrics,
            redis: Some(redis),
            proxy: None,
            proxy_runs: 0,
            edge,
        };
        cluster.start_proxy()?;
        Ok(cluster)
    }

    /// Waits until a snapshot was taken and every journal node dropped its first segment.
    fn wait_for_truncation(&self) -> Result<()> {
        let shard_dir = self.dir.join("snapshots/shard-0");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let snapshotted = std::fs::read_dir(&shard_dir).is_ok_and(|mut d| d.next().is_some());
            let truncated = (0..JOURNAL_NODES).all(|node| {
                let first = self.dir.join(format!("journal-{node}/streams/shard-0/00000000000000000001.log"));
                !first.exists()
            });
            if snapshotted && truncated {
                return Ok(());
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(self.dir.join(format!("proxy-{}.log", self.proxy_runs - 1)))?;
                let tail: Vec<&str> = log.lines().rev().take(20).collect();
                anyhow::bail!(
                    "no snapshot and truncated journal in {} after 20 s; proxy log ends:\n{}",
                    shard_dir.display(),
                    tail.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Fails unless the Redis behind the proxy applied exactly `sent` client SETs: every SET it
    /// ran, less the one `SET __memlog:lsn` of each journal entry applied (`MULTI … SET
    /// __memlog:lsn N EXEC`, proxy/src/sequencer/applier.rs).
    fn check_applied(&self, sent: u64) -> Result<()> {
        let output = Command::new("redis-cli")
            .args(["-h", &self.redis_addr.ip().to_string(), "-p", &self.redis_addr.port().to_string()])
            .args(self.edge.as_ref().map(EdgeTls::node_cli_args).unwrap_or_default())
            .args(["INFO", "commandstats"])
            .output()
            .context("cannot run redis-cli")?;
        let stats = String::from_utf8_lossy(&output.stdout);
        let calls = |command: &str| -> u64 {
            let prefix = format!("cmdstat_{command}:calls=");
            stats.lines().find_map(|line| line.strip_prefix(&prefix)?.split(',').next()?.parse().ok()).unwrap_or(0)
        };
        let applied = calls("set").saturating_sub(calls("exec"));
        anyhow::ensure!(
            applied == sent,
            "{sent} SETs were sent to memlog but its Redis applied {applied}: some were answered with errors\n{stats}"
        );
        println!("write check: the {sent} SETs sent to memlog are all applied");
        Ok(())
    }

    /// Every process serving memlog's side: proxy, journal nodes, Redis.
    fn pids(&self) -> Vec<u32> {
        let proxy_and_redis = self.proxy.iter().chain(&self.redis);
        self.journal.iter().chain(proxy_and_redis).map(Guard::pid).collect()
    }

    /// Data fsyncs of all journal nodes so far, from their metrics.
    /// The proxy's group-commit counters so far.
    fn grouping(&self) -> Result<Grouping> {
        Ok(Grouping::from_metrics(&scrape(&self.proxy_metrics)?))
    }

    /// The journal nodes' own counters, all nodes together.
    fn nodes(&self) -> Result<NodeTimes> {
        let mut total = NodeTimes::default();
        for addr in &self.journal_metrics {
            let text = scrape(addr)?;
            total.fsyncs += metric_total(&text, FSYNC_COUNT_METRIC);
            total.fsync_seconds += metric_total(&text, "memlog_journal_fsync_duration_seconds_sum");
            total.entries += metric_total(&text, "memlog_journal_append_duration_seconds_count");
            total.append_seconds += metric_total(&text, "memlog_journal_append_duration_seconds_sum");
        }
        Ok(total)
    }

    /// Bytes of journal segments on disk, over all journal nodes.
    fn journal_bytes(&self) -> Result<u64> {
        let mut total = 0;
        for node in 0..JOURNAL_NODES {
            let stream = self.dir.join(format!("journal-{node}/streams/shard-0"));
            for entry in std::fs::read_dir(&stream).with_context(|| format!("reading {}", stream.display()))? {
                total += entry?.metadata()?.len();
            }
        }
        Ok(total)
    }

    /// How redis-benchmark reaches the proxy: over TLS with TLS on every hop.
    fn client(&self) -> Client<'_> {
        Client { login: None, tls_ca: self.edge.as_ref().map(|edge| edge.clients_ca.as_path()) }
    }

    /// Starts the proxy with a fresh log file; returns the log's path.
    fn start_proxy(&mut self) -> Result<PathBuf> {
        let log = self.dir.join(format!("proxy-{}.log", self.proxy_runs));
        self.proxy_runs += 1;
        self.proxy = Some(match &self.edge {
            None => support::start_proxy_from(&self.bin, &self.config, self.proxy_addr, &log)?,
            Some(edge) => {
                let mut command = support::memlog_from(&self.bin, &["proxy", "--config"]);
                command.arg(&self.config);
                let mut proxy = support::spawn_logged(command, &log)?;
                let tls = ["--tls".to_string(), "--cacert".to_string(), edge.clients_ca.display().to_string()];
                support::wait_until(
                    &format!("the proxy {} answering PING over TLS", self.proxy_addr),
                    &mut proxy,
                    || redis_cli_pings(self.proxy_addr, &tls),
                )
                .with_context(|| format!("proxy log:\n{}", std::fs::read_to_string(&log).unwrap_or_default()))?;
                proxy
            }
        });
        Ok(log)
    }

    /// `kill -9` the proxy and its Redis, start an empty Redis on the same port and the proxy
    /// again, which replays the whole journal before it serves.
    fn restart_on_empty_redis(&mut self) -> Result<Replay> {
        anyhow::ensure!(self.edge.is_none(), "a restart onto an empty Redis is measured without TLS to it");
        drop(self.proxy.take());
        drop(self.redis.take());
        let redis_dir = self.dir.join(format!("memlog-redis-{}", self.proxy_runs));
        self.redis = Some(support::start_redis(self.redis_addr, &redis_dir, support::NO_PERSISTENCE)?);
        let started = Instant::now();
        let log = self.start_proxy()?;
        let ready = started.elapsed();
        let text = std::fs::read_to_string(&log)?;
        let line = text
            .lines()
            .find(|line| line.contains(REPLAY_LOG_LINE))
            .with_context(|| format!("no {REPLAY_LOG_LINE:?} in the proxy log:\n{text}"))?;
        let field = |name: &str| -> Result<u64> {
            let value = line
                .split_whitespace()
                .find_map(|word| word.strip_prefix(name)?.strip_prefix('='))
                .with_context(|| format!("no {name}= in {line:?}"))?;
            value.parse().with_context(|| format!("{name}={value:?} is not a number"))
        };
        Ok(Replay { entries: field("replayed")?, elapsed_ms: field("elapsed_ms")?, ready })
    }
}

/// A Redis without persistence on `addr` that accepts only TLS, with `edge`'s certificates.
fn start_tls_redis(addr: SocketAddr, dir: &Path, edge: &EdgeTls) -> Result<Guard> {
    std::fs::create_dir_all(dir)?;
    let mut command = Command::new("redis-server");
    command
        .args(edge.node_args(addr))
        .args(["--bind", "127.0.0.1"])
        .args(support::NO_PERSISTENCE)
        .arg("--dir")
        .arg(dir);
    let mut redis = support::spawn_logged(command, &dir.join("redis.log"))?;
    support::wait_until(&format!("redis {addr} answering PING over TLS"), &mut redis, || {
        redis_cli_pings(addr, &edge.node_cli_args())
    })?;
    Ok(redis)
}

/// Whether `redis-cli <tls> PING` against `addr` answers PONG.
fn redis_cli_pings(addr: SocketAddr, tls: &[String]) -> bool {
    Command::new("redis-cli")
        .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .args(tls)
        .arg("PING")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "PONG")
}

fn print_table(rows: &[Row]) {
    println!();
    println!(
        "{:<22} {:>8} {:>12} {:>10} {:>10} {:>16} {:>20} {:>20} {:>14}",
        "target",
        "pipeline",
        "ops/s",
        "p50",
        "p99",
        "memlog/target",
        "CPU s per 1M SETs",
        "client CPU s per 1M",
        "machine busy"
    );
    for row in rows {
        let baselines = [(FSYNC_ALWAYS_NAME, row.fsync_always), (NO_PERSISTENCE_NAME, row.no_persistence)];
        for (name, m, ratio) in std::iter::once((MEMLOG, row.memlog, String::new()))
            .chain(baselines.map(|(name, m)| (name, m, format!("{:.2}", row.memlog.ops_per_sec / m.ops_per_sec))))
        {
            // CPU µs per request is CPU seconds per million requests.
            println!(
                "{name:<22} {:>8} {:>12.0} {:>8.3}ms {:>8.3}ms {ratio:>16} {:>20.1} {:>20.1} {:>13.0}%",
                row.pipeline,
                m.ops_per_sec,
                m.p50_ms,
                m.p99_ms,
                m.cpu_us_per_request,
                m.client_cpu_us_per_request,
                m.machine_busy * 100.0
            );
        }
        println!(
            "{:<22} {:>8} journal data fsyncs per acknowledged SET (3 nodes together): {:.3}; {}; {}",
            "", row.pipeline, row.fsyncs_per_set, row.nodes, row.grouping
        );
    }
}

/// Issue 15's floors (must be met) and goals, each with its median and verdict.
fn print_targets(rows: &[Row]) {
    let verdict = |met: bool| if met { "met" } else { "NOT met" };
    println!("\nissue 15 targets (medians of interleaved rounds; informational, never a failure):");
    for row in rows {
        let vs_fsync = row.memlog.ops_per_sec / row.fsync_always.ops_per_sec;
        let vs_none = row.memlog.ops_per_sec / row.no_persistence.ops_per_sec;
        let (p50, p99) = (row.memlog.p50_ms, row.memlog.p99_ms);
        let checks: Vec<(&str, String, bool)> = if row.pipeline == 1 {
            vec![
                ("floor", format!("memlog/{FSYNC_ALWAYS_NAME} {vs_fsync:.2} (>= 0.8)"), vs_fsync >= 0.8),
                ("floor", format!("memlog p50 {p50:.3} ms (<= 1.3 ms)"), p50 <= 1.3),
                ("goal", format!("memlog/{FSYNC_ALWAYS_NAME} {vs_fsync:.2} (>= 1.0)"), vs_fsync >= 1.0),
                ("goal", format!("memlog p50 {p50:.3} ms (<= 1 ms)"), p50 <= 1.0),
                ("goal", format!("memlog p99 {p99:.3} ms (<= 3 ms)"), p99 <= 3.0),
            ]
        } else {
            vec![
                ("goal", format!("memlog/{FSYNC_ALWAYS_NAME} {vs_fsync:.2} (>= 1.0)"), vs_fsync >= 1.0),
                ("goal", format!("memlog/{NO_PERSISTENCE_NAME} {vs_none:.2} (>= 0.5)"), vs_none >= 0.5),
            ]
        };
        for (kind, what, met) in checks {
            println!("  {kind:<5} -P {:<2} {what}: {}", row.pipeline, verdict(met));
        }
        let ceiling = support::cpu_ceiling(&row.memlog);
        println!(
            "        -P {:<2} (at its CPU per SET, memlog with every core busy would make {ceiling:.0} ops/s, {:.2}× {FSYNC_ALWAYS_NAME}; its run kept the machine {:.0}% busy)",
            row.pipeline,
            ceiling / row.fsync_always.ops_per_sec,
            row.memlog.machine_busy * 100.0
        );
    }
}

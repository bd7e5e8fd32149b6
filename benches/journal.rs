//! Journal node benchmark: 3 `memlog journal` nodes on the same disk, 1 KiB entries with fsync
//! on, each append sent to all 3 and counted when 2 acknowledged (the quorum writer's fan-out,
//! done here with `NodeClient`), at 1, 16 and 128 concurrent appenders. Prints throughput and
//! latency, and the raw `fdatasync` latency of a 1 KiB write on the same disk, measured in the
//! same run, with the ratio of the two (a timing is not stable on a shared machine; a ratio is).
//!
//! `cargo bench --bench journal` (about a minute). `JOURNAL_BENCH_SECS` sets seconds per level.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/fsync.rs"]
mod fsync;

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use journal_service::{Entry, NodeClient, NodeError};

use fsync::{percentiles, raw_fdatasync, Percentiles};

/// The raw fdatasync baseline appends the same size.
const PAYLOAD_BYTES: usize = fsync::RAW_APPEND_BYTES;
const LEVELS: [usize; 3] = [1, 16, 128];

fn main() {
    let secs: f64 = std::env::var("JOURNAL_BENCH_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(6.0);
    let tmp = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
    let nodes: Vec<common::Proc> =
        (0..3).map(|i| common::spawn_journal(&tmp.path().join(format!("node-{i}")), 0)).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let clients: Vec<NodeClient> =
        nodes.iter().map(|n| NodeClient::new(n.addr, common::cluster_tls::proxy_transport())).collect();
    let mut ratio_at_one = None;
    let mut raw_p50s = Vec::new();
    // entries/s and node CPU µs per entry at the last (largest) level.
    let mut last_level = (0.0, 0.0);
    for appenders in LEVELS {
        // Measured next to each level, so a busy neighbour on the disk shows up in both.
        let raw = raw_fdatasync(&tmp.path().join("raw"), 200);
        raw_p50s.push(raw.p50);
        println!("raw fdatasync of a 1 KiB append: p50 {:.3} ms, p99 {:.3} ms", ms(raw.p50), ms(raw.p99));
        let stream = format!("bench-{appenders}");
        let cpu_before: Vec<Duration> = nodes.iter().map(|n| cpu_time(n.pid())).collect();
        let result = runtime.block_on(run_level(&clients, &stream, appenders, Duration::from_secs_f64(secs)));
        let node_cpu: Duration = nodes.iter().zip(cpu_before).map(|(n, before)| cpu_time(n.pid()) - before).sum();
        let ratio = result.latency.p50.as_secs_f64() / raw.p50.as_secs_f64();
        println!(
            "{appenders:>4} appenders: {:>9.0} entries/s  p50 {:.3} ms  p99 {:.3} ms  ({} entries, p50/raw-fdatasync {ratio:.2})",
            result.entries as f64 / result.elapsed.as_secs_f64(),
            ms(result.latency.p50),
            ms(result.latency.p99),
            result.entries,
        );
        println!(
            "      node CPU {:.1} us per quorum-acked entry (all 3 nodes), {:.0}% of one core per node",
            node_cpu.as_secs_f64() * 1e6 / result.entries as f64,
            node_cpu.as_secs_f64() * 100.0 / 3.0 / result.elapsed.as_secs_f64(),
        );
        ratio_at_one.get_or_insert(ratio);
        last_level = (
            result.entries as f64 / result.elapsed.as_secs_f64(),
            node_cpu.as_secs_f64() * 1e6 / result.entries as f64,
        );
    }
    let (rate, cpu_per_entry) = last_level;
    let ratio = ratio_at_one.unwrap();
    let verdict = |met: bool| if met { "met" } else { "NOT met" };
    println!("issue 15 goals (informational, never a failure):");
    println!("  goal 128 appenders {rate:.0} entries/s (>= 100000): {}", verdict(rate >= 100_000.0));
    println!("  goal node CPU {cpu_per_entry:.1} us per entry, 3 nodes (<= 5): {}", verdict(cpu_per_entry <= 5.0));
    println!("  goal p50 at 1 appender / raw fdatasync p50 {ratio:.2} (<= 1.5): {}", verdict(ratio <= 1.5));
    let raw_p50 = percentiles(raw_p50s).p50;
    println!("Little's law bound at 128 appenders, one fdatasync each: {:.0} entries/s", 128.0 / raw_p50.as_secs_f64());
}

/// User plus system CPU time a process has used, from `/proc/<pid>/stat`.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_secs_f64(ticks as f64 / hz as f64)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

struct LevelResult {
    entries: u64,
    elapsed: Duration,
    latency: Percentiles,
}

/// `appenders` tasks append to `stream` on all nodes for `duration`; an append counts once 2 of 3 acked.
async fn run_level(clients: &[NodeClient], stream: &str, appenders: usize, duration: Duration) -> LevelResult {
    let next_lsn = Arc::new(Mutex::new(1u64));
    let payload = Bytes::from(vec![b'x'; PAYLOAD_BYTES]);
    let started = Instant::now();
    let deadline = started + duration;
    let tasks: Vec<_> = (0..appenders)
        .map(|_| {
            let (clients, next_lsn, payload, stream) =
                (clients.to_vec(), next_lsn.clone(), payload.clone(), stream.to_string());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while Instant::now() < deadline {
                    let sent = Instant::now();
                    // Queue on all nodes under the lock, so every node sees the LSNs in order.
                    let appends = {
                        let mut next = next_lsn.lock().unwrap();
                        let entry =
                            Entry { epoch: 1, lsn: *next, timestamp_ms: 0, commit_lsn: 0, payload: payload.clone() };
                        *next += 1;
                        clients.iter().map(|c| c.append(&stream, entry.clone())).collect::<Vec<_>>()
                    };
                    if let Err(e) = first_two_of(appends).await {
                        panic!("append failed on a quorum: {e}");
                    }
                    latencies.push(sent.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.unwrap());
    }
    let elapsed = started.elapsed();
    LevelResult { entries: latencies.len() as u64, elapsed, latency: percentiles(latencies) }
}

type Append = Pin<Box<dyn Future<Output = Result<(), NodeError>> + Send>>;

/// Resolves when 2 of the appends succeeded (or 2 failed); the third keeps going on its node.
async fn first_two_of(
    appends: Vec<impl Future<Output = Result<(), NodeError>> + Send + 'static>,
) -> Result<(), NodeError> {
    let mut pending: Vec<Option<Append>> = appends.into_iter().map(|f| Some(Box::pin(f) as Append)).collect();
    let (mut acked, mut failed) = (0, Vec::new());
    std::future::poll_fn(|cx| {
        for slot in pending.iter_mut() {
            if let Some(f) = slot {
                if let Poll::Ready(result) = f.as_mut().poll(cx) {
                    *slot = None;
                    match result {
                        Ok(()) => acked += 1,
                        Err(e) => failed.push(e),
                    }
                }
            }
        }
        if acked >= 2 {
            Poll::Ready(Ok(()))
        } else if failed.len() >= 2 {
            Poll::Ready(Err(failed[0].clone()))
        } else {
            Poll::Pending
        }
    })
    .await
}

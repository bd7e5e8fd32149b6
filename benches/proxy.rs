//! The proxy's cost, measured side by side: `redis-benchmark` against one stock `redis-server`
//! directly and through `memlog proxy` in front of that SAME server, alternating, in one run.
//! A timing on a shared machine is noise; the ratio proxy/direct of interleaved runs is not.
//!
//! ```text
//! cargo bench --bench proxy                        # ~4 s per measurement
//! MEMLOG_BENCH_QUICK=1 cargo bench --bench proxy   # a short smoke run
//! MEMLOG_BENCH_ROUNDS=3 cargo bench --bench proxy  # more interleaved rounds (default 2)
//! ```
//!
//! Target: GET at pipeline 1 keeps a ratio of at least 0.8.

#[path = "support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::path::Path;

use anyhow::Result;

use support::{Guard, Measurement, Settings, Target, Workload};

/// The GET ratio at pipeline 1 the proxy must keep.
const TARGET_GET_RATIO: f64 = 0.8;

fn main() -> Result<()> {
    let Settings { quick, rounds } = Settings::from_env()?;
    let dir = tempfile::tempdir()?;
    let redis_addr = support::free_addr();
    let _redis = support::start_redis(redis_addr, dir.path(), support::NO_PERSISTENCE)?;
    let (proxy_addr, _proxy) = start_proxy(dir.path(), redis_addr)?;
    println!("redis-server {redis_addr}, memlog proxy {proxy_addr}; {rounds} interleaved rounds, quick={quick}");

    let scale = if quick { 10 } else { 1 };
    let workloads = [
        (Workload { test: "set", pipeline: 1 }, 250_000 / scale),
        (Workload { test: "get", pipeline: 1 }, 250_000 / scale),
        (Workload { test: "set", pipeline: 16 }, 1_500_000 / scale),
        (Workload { test: "get", pipeline: 16 }, 1_500_000 / scale),
    ];
    let mut rows = Vec::new();
    for (workload, requests) in &workloads {
        let targets = [
            Target { name: "direct", addr: redis_addr, requests: *requests },
            Target { name: "proxy", addr: proxy_addr, requests: *requests },
        ];
        let medians = support::interleaved(workload, &targets, rounds)?;
        rows.push((workload, medians[0], medians[1]));
    }
    print_table(&rows);
    Ok(())
}

/// `memlog proxy` (the binary cargo built for this bench) in front of `redis`, routing only.
fn start_proxy(dir: &Path, redis: SocketAddr) -> Result<(SocketAddr, Guard)> {
    let addr = support::free_addr();
    let config = dir.join("proxy.toml");
    std::fs::write(
        &config,
        format!("listen = \"{addr}\"\n\n[[shards]]\nslots = \"0-16383\"\nprimary = \"{redis}\"\n"),
    )?;
    let guard = support::start_proxy(&config, addr, &dir.join("proxy.log"))?;
    Ok((addr, guard))
}

fn print_table(rows: &[(&Workload, Measurement, Measurement)]) {
    println!();
    println!(
        "{:<5} {:>8} {:>14} {:>14} {:>7} {:>11} {:>11} {:>11} {:>11}",
        "test",
        "pipeline",
        "direct ops/s",
        "proxy ops/s",
        "ratio",
        "direct p50",
        "proxy p50",
        "direct p99",
        "proxy p99"
    );
    for (workload, direct, proxy) in rows {
        println!(
            "{:<5} {:>8} {:>14.0} {:>14.0} {:>7.2} {:>9.3}ms {:>9.3}ms {:>9.3}ms {:>9.3}ms",
            workload.test.to_uppercase(),
            workload.pipeline,
            direct.ops_per_sec,
            proxy.ops_per_sec,
            proxy.ops_per_sec / direct.ops_per_sec,
            direct.p50_ms,
            proxy.p50_ms,
            direct.p99_ms,
            proxy.p99_ms,
        );
    }
    if let Some((_, direct, proxy)) = rows.iter().find(|(w, _, _)| w.test == "get" && w.pipeline == 1) {
        let ratio = proxy.ops_per_sec / direct.ops_per_sec;
        let verdict = if ratio >= TARGET_GET_RATIO { "meets" } else { "MISSES" };
        println!("\nGET pipeline 1: ratio {ratio:.2} {verdict} the target of {TARGET_GET_RATIO}");
    }
}

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

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Clients redis-benchmark keeps open (`-c`).
const CLIENTS: u32 = 50;
/// Value size in bytes (`-d`).
const VALUE_SIZE: u32 = 100;
/// Distinct keys (`-r`), so GETs hit the keys the SET runs wrote.
const KEYSPACE: u32 = 100_000;
/// The GET ratio at pipeline 1 the proxy must keep.
const TARGET_GET_RATIO: f64 = 0.8;

/// One cell of the matrix: a redis-benchmark test at a pipeline depth, with enough requests
/// for a few seconds of load.
struct Workload {
    test: &'static str,
    pipeline: u32,
    requests: u64,
}

/// What redis-benchmark's `--csv` line reports for one run.
#[derive(Clone, Copy, Debug)]
struct Measurement {
    ops_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// A child process killed (by pid) and reaped when dropped, so a failed bench leaves nothing behind.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() -> Result<()> {
    let quick = std::env::var_os("MEMLOG_BENCH_QUICK").is_some_and(|v| v != "0");
    let rounds: usize = match std::env::var("MEMLOG_BENCH_ROUNDS") {
        Ok(v) => v.parse().context("MEMLOG_BENCH_ROUNDS must be a positive number")?,
        Err(_) => 2,
    };
    let dir = tempfile::tempdir()?;
    let (redis_addr, _redis) = start_redis(dir.path())?;
    let (proxy_addr, _proxy) = start_proxy(dir.path(), redis_addr)?;
    println!("redis-server {redis_addr}, memlog proxy {proxy_addr}; {rounds} interleaved rounds, quick={quick}");

    let scale = if quick { 10 } else { 1 };
    let workloads = [
        Workload { test: "set", pipeline: 1, requests: 250_000 / scale },
        Workload { test: "get", pipeline: 1, requests: 250_000 / scale },
        Workload { test: "set", pipeline: 16, requests: 1_500_000 / scale },
        Workload { test: "get", pipeline: 16, requests: 1_500_000 / scale },
    ];
    let mut rows = Vec::new();
    let sides = [("direct", redis_addr), ("proxy", proxy_addr)];
    for workload in &workloads {
        let mut runs: [Vec<Measurement>; 2] = [Vec::new(), Vec::new()];
        for round in 0..rounds {
            // Alternate which side goes first, so a drift in machine load hits both alike.
            let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
            for side in order {
                let (name, addr) = sides[side];
                let run = redis_benchmark(addr, workload)?;
                println!(
                    "  {} -P {:<2} round {round} {name:<6} {:>9.0} ops/s  p50 {:.3}ms  p99 {:.3}ms",
                    workload.test, workload.pipeline, run.ops_per_sec, run.p50_ms, run.p99_ms
                );
                runs[side].push(run);
            }
        }
        rows.push((workload, median_of(&runs[0]), median_of(&runs[1])));
    }
    print_table(&rows);
    Ok(())
}

/// A free loopback address, chosen by the OS.
fn free_addr() -> Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// A stock redis-server without persistence.
fn start_redis(dir: &Path) -> Result<(SocketAddr, Guard)> {
    let addr = free_addr()?;
    let child = Command::new("redis-server")
        .args(["--port", &addr.port().to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start redis-server")?;
    let guard = Guard(child);
    wait_for_pong(addr)?;
    Ok((addr, guard))
}

/// `memlog proxy` (the binary cargo built for this bench) in front of `redis`.
fn start_proxy(dir: &Path, redis: SocketAddr) -> Result<(SocketAddr, Guard)> {
    let addr = free_addr()?;
    let config = dir.join("proxy.toml");
    std::fs::write(
        &config,
        format!("listen = \"{addr}\"\n\n[[shards]]\nslots = \"0-16383\"\nprimary = \"{redis}\"\n"),
    )?;
    let log = std::fs::File::create(dir.join("proxy.log"))?;
    let mut command = Command::new(env!("CARGO_BIN_EXE_memlog"));
    command.arg("proxy").arg("--config").arg(&config);
    // The proxy reads every MEMLOG_… variable as a config key; ours (MEMLOG_BENCH_…) are not.
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("MEMLOG_") {
            command.env_remove(name);
        }
    }
    let child = command
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .spawn()
        .context("cannot start memlog proxy")?;
    let guard = Guard(child);
    wait_for_pong(addr).with_context(|| {
        format!("proxy log:\n{}", std::fs::read_to_string(dir.join("proxy.log")).unwrap_or_default())
    })?;
    Ok((addr, guard))
}

/// Polls PING until the server at `addr` answers `+PONG`.
fn wait_for_pong(addr: SocketAddr) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if ping(addr).unwrap_or(false) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("{addr} did not answer PING within 20 s")
}

fn ping(addr: SocketAddr) -> std::io::Result<bool> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(200))?;
    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    stream.write_all(b"PING\r\n")?;
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply)?;
    Ok(&reply == b"+PONG\r\n")
}

/// One redis-benchmark run against `addr`.
fn redis_benchmark(addr: SocketAddr, workload: &Workload) -> Result<Measurement> {
    let output = Command::new("redis-benchmark")
        .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string()])
        .args(["-t", workload.test, "-c", &CLIENTS.to_string(), "-P", &workload.pipeline.to_string()])
        .args(["-d", &VALUE_SIZE.to_string(), "-r", &KEYSPACE.to_string(), "-n", &workload.requests.to_string()])
        .args(["--csv", "--precision", "3"])
        .stdin(Stdio::null())
        .output()
        .context("cannot run redis-benchmark")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!("redis-benchmark failed: {}{}", stdout, String::from_utf8_lossy(&output.stderr));
    }
    parse_csv(&stdout).with_context(|| format!("unexpected redis-benchmark output:\n{stdout}"))
}

/// Reads the data line of redis-benchmark 7's `--csv` output, by column name:
/// `"test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms",…`
fn parse_csv(text: &str) -> Result<Measurement> {
    let mut lines = text.lines().filter(|line| line.starts_with('"'));
    let header: Vec<&str> = fields(lines.next().context("no CSV header")?);
    let values: Vec<&str> = fields(lines.next().context("no CSV data line")?);
    let column = |name: &str| -> Result<f64> {
        let index = header.iter().position(|h| *h == name).with_context(|| format!("no column {name}"))?;
        let value = values.get(index).with_context(|| format!("no value for {name}"))?;
        value.parse::<f64>().with_context(|| format!("{name} = {value:?} is not a number"))
    };
    Ok(Measurement {
        ops_per_sec: column("rps")?,
        p50_ms: column("p50_latency_ms")?,
        p99_ms: column("p99_latency_ms")?,
    })
}

fn fields(line: &str) -> Vec<&str> {
    line.split(',').map(|field| field.trim().trim_matches('"')).collect()
}

/// The median of each metric on its own (with 2 rounds: their mean).
fn median_of(runs: &[Measurement]) -> Measurement {
    let median = |pick: fn(&Measurement) -> f64| {
        let mut values: Vec<f64> = runs.iter().map(pick).collect();
        values.sort_by(f64::total_cmp);
        let mid = values.len() / 2;
        if values.len() % 2 == 0 {
            (values[mid - 1] + values[mid]) / 2.0
        } else {
            values[mid]
        }
    };
    Measurement { ops_per_sec: median(|m| m.ops_per_sec), p50_ms: median(|m| m.p50_ms), p99_ms: median(|m| m.p99_ms) }
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

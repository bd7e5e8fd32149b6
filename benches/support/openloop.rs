//! An open-loop load: SETs sent at a fixed rate, spread over a few connections, each
//! connection's requests pipelined without waiting for replies, as an application's connection
//! pool sends its callers' writes. A closed-loop client (redis-benchmark, `mixed.rs`) sends its
//! next request only after a reply, so a server that slows down also slows the load, and the
//! latencies it reports leave out the queueing a fixed load would meet. Here each request is
//! timed from when it was due, not from when it was sent: a target that falls behind, or a load
//! generator that does, shows in the latencies ("coordinated omission").

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::resp::{encode, ReplyReader};
use crate::support::{interleaved_runs, quantile_ms, KeyPicker};

/// Connections of the load, and the size of each SET's value.
const CONNECTIONS: usize = 8;
const VALUE_LEN: usize = 100;

/// Runs the load at each of `rates` (SETs per second) against each of `targets` (name,
/// address) for `seconds`, in `rounds` interleaved rounds; prints each run and the medians.
pub fn compare(targets: &[(&str, SocketAddr)], rates: &[f64], seconds: f64, rounds: usize) -> Result<()> {
    println!(
        "\nopen loop: SETs of {VALUE_LEN} B at fixed rates over {CONNECTIONS} connections, each connection \
         pipelining, each SET timed from when it was due:"
    );
    for &rate in rates {
        let load = OpenLoad { rate, connections: CONNECTIONS, seconds, keys: 100_000, value_len: VALUE_LEN };
        let runs = interleaved_runs(targets.len(), rounds, |index, round| {
            let (name, addr) = targets[index];
            let run = run(addr, &load)?;
            println!("  {rate:>6.0}/s round {round} {name:<22} {run}");
            Ok(run)
        })?;
        for ((name, _), runs) in targets.iter().zip(&runs) {
            println!("  {rate:>6.0}/s median  {name:<22} {}", median(runs));
        }
    }
    Ok(())
}

/// One open-loop load.
#[derive(Clone, Copy)]
pub struct OpenLoad {
    /// SETs per second, all connections together.
    pub rate: f64,
    pub connections: usize,
    pub seconds: f64,
    /// Keys `open:0` … `open:<keys-1>`, each request's chosen at random.
    pub keys: u64,
    pub value_len: usize,
}

/// What one run measured.
#[derive(Clone, Copy, Debug)]
pub struct OpenRun {
    /// Replies per second over the run, from the first request due to the last reply.
    pub achieved: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    /// How late the load generator itself sent, at the 99th percentile: the floor under every
    /// latency it reports (its thread's sleep overshoots).
    pub late_p99_ms: f64,
}

impl std::fmt::Display for OpenRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:>8.0} SETs/s  p50 {:.3}ms  p99 {:.3}ms  p99.9 {:.3}ms  (sent late by up to {:.3}ms at p99)",
            self.achieved, self.p50_ms, self.p99_ms, self.p999_ms, self.late_p99_ms
        )
    }
}

/// Runs `load` against `addr`.
pub fn run(addr: SocketAddr, load: &OpenLoad) -> Result<OpenRun> {
    let mut writers = Vec::new();
    let mut readers = Vec::new();
    for _ in 0..load.connections {
        let conn = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
        conn.set_nodelay(true)?;
        conn.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut read_half = conn.try_clone()?;
        // When each request of this connection was due, in order: its replies come in order.
        let (due_tx, due_rx) = mpsc::channel::<Instant>();
        writers.push((conn, due_tx));
        readers.push(std::thread::spawn(move || -> Result<Vec<Duration>> {
            let mut replies = ReplyReader::default();
            let mut latencies = Vec::new();
            while let Ok(due) = due_rx.recv() {
                replies.next(&mut read_half)?;
                latencies.push(due.elapsed());
            }
            Ok(latencies)
        }));
    }
    let interval = Duration::from_secs_f64(1.0 / load.rate);
    let total = (load.rate * load.seconds) as u32;
    let value = vec![b'v'; load.value_len];
    let mut late = Vec::with_capacity(total as usize);
    let mut keys = KeyPicker::new(0);
    let mut out = Vec::new();
    let start = Instant::now() + Duration::from_millis(10);
    for i in 0..total {
        let due = start + interval * i;
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        out.clear();
        encode(&mut out, &[b"SET", format!("open:{}", keys.next(load.keys)).as_bytes(), &value]);
        let (conn, due_tx) = &mut writers[i as usize % load.connections];
        due_tx.send(due).context("a reply reader stopped")?;
        late.push(due.elapsed());
        conn.write_all(&out)?;
    }
    // Closing the schedule lets each reader stop after the replies it still expects.
    let conns: Vec<TcpStream> = writers.into_iter().map(|(conn, _)| conn).collect();
    let mut latencies = Vec::with_capacity(total as usize);
    for reader in readers {
        latencies.extend(reader.join().map_err(|_| anyhow::anyhow!("a reply reader panicked"))??);
    }
    let elapsed = start.elapsed().as_secs_f64();
    drop(conns);
    anyhow::ensure!(latencies.len() == total as usize, "{} replies to {total} SETs", latencies.len());
    latencies.sort_unstable();
    late.sort_unstable();
    Ok(OpenRun {
        achieved: total as f64 / elapsed,
        p50_ms: quantile_ms(&latencies, 0.5),
        p99_ms: quantile_ms(&latencies, 0.99),
        p999_ms: quantile_ms(&latencies, 0.999),
        late_p99_ms: quantile_ms(&late, 0.99),
    })
}

/// Each figure's median over `runs`.
pub fn median(runs: &[OpenRun]) -> OpenRun {
    let of = |field: fn(&OpenRun) -> f64| crate::support::median(runs.iter().map(field).collect());
    OpenRun {
        achieved: of(|r| r.achieved),
        p50_ms: of(|r| r.p50_ms),
        p99_ms: of(|r| r.p99_ms),
        p999_ms: of(|r| r.p999_ms),
        late_p99_ms: of(|r| r.late_p99_ms),
    }
}

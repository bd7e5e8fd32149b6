//! A mixed load redis-benchmark cannot make: clients at pipeline 1 each sending GET and SET in a
//! fixed 80/20 proportion (every fifth request a SET) over a fixed key space, the same against
//! every target. Blocking sockets, one thread per client, each request timed from its write to
//! the end of its reply. An error reply fails the run: errors are never throughput.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::resp::{encode, ReplyReader};
use crate::support::{cpu_seconds, quantile_ms, rusage_seconds, KeyPicker, MachineCpu, Measurement};

/// One mixed load.
#[derive(Clone, Copy)]
pub struct MixedLoad {
    pub clients: usize,
    pub seconds: f64,
    /// Keys `mixed:0` … `mixed:<keys-1>`, written once before the run so GETs find values.
    pub keys: u64,
    pub value_len: usize,
}

/// Every `SET_EVERY`th request of a client is a SET: 20% writes.
const SET_EVERY: u64 = 5;

/// Writes every key once (pipelined), so the load's GETs read values.
pub fn populate(addr: SocketAddr, load: &MixedLoad) -> Result<()> {
    let mut conn = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    let value = vec![b'v'; load.value_len];
    let mut reader = ReplyReader::default();
    for chunk in (0..load.keys).collect::<Vec<_>>().chunks(1000) {
        let mut out = Vec::new();
        for &key in chunk {
            encode(&mut out, &[b"SET", format!("mixed:{key}").as_bytes(), &value]);
        }
        conn.write_all(&out)?;
        for _ in chunk {
            reader.next(&mut conn)?;
        }
    }
    Ok(())
}

/// Runs `load` against `addr`; CPU time is charged to `pids`.
pub fn run(addr: SocketAddr, load: &MixedLoad, pids: &[u32]) -> Result<Measurement> {
    let (cpu_before, client_before, machine_before) =
        (cpu_seconds(pids)?, rusage_seconds(libc::RUSAGE_SELF), MachineCpu::now()?);
    let deadline = Instant::now() + Duration::from_secs_f64(load.seconds);
    let started = Instant::now();
    let clients: Vec<_> = (0..load.clients)
        .map(|client| {
            let load = *load;
            std::thread::spawn(move || one_client(addr, &load, client as u64, deadline))
        })
        .collect();
    let mut latencies = Vec::new();
    for client in clients {
        latencies.extend(client.join().map_err(|_| anyhow::anyhow!("a load client panicked"))??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let requests = latencies.len() as f64;
    latencies.sort_unstable();
    Ok(Measurement {
        ops_per_sec: requests / elapsed,
        p50_ms: quantile_ms(&latencies, 0.5),
        p99_ms: quantile_ms(&latencies, 0.99),
        cpu_us_per_request: (cpu_seconds(pids)? - cpu_before) * 1e6 / requests.max(1.0),
        client_cpu_us_per_request: (rusage_seconds(libc::RUSAGE_SELF) - client_before) * 1e6 / requests.max(1.0),
        machine_busy: MachineCpu::now()?.busy_since(&machine_before),
    })
}

/// One client's requests until `deadline`, with each one's latency.
fn one_client(addr: SocketAddr, load: &MixedLoad, client: u64, deadline: Instant) -> Result<Vec<Duration>> {
    let mut conn = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    conn.set_nodelay(true)?;
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    let value = vec![b'v'; load.value_len];
    let mut reader = ReplyReader::default();
    let mut latencies = Vec::new();
    let mut keys = KeyPicker::new(client + 1);
    let mut out = Vec::new();
    for request in 0.. {
        if Instant::now() >= deadline {
            break;
        }
        let key = format!("mixed:{}", keys.next(load.keys));
        out.clear();
        if request % SET_EVERY == 0 {
            encode(&mut out, &[b"SET", key.as_bytes(), &value]);
        } else {
            encode(&mut out, &[b"GET", key.as_bytes()]);
        }
        let sent = Instant::now();
        conn.write_all(&out)?;
        reader.next(&mut conn)?;
        latencies.push(sent.elapsed());
    }
    Ok(latencies)
}

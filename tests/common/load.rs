//! A write load through the proxy that remembers exactly which writes were acknowledged, so a
//! test can kill things under it and then check that no acknowledged write was lost.
//!
//! Each connection `c` pipelines 1..8 commands at a time, alternating `SET key:c:i i` and
//! `INCR counter:c`. A connection that breaks is reopened (its in-flight writes are of unknown
//! outcome: they may or may not be applied). Error replies are counted by kind.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::cluster::CLIENT_TIMEOUT;
use super::resp::{Conn, Value};

/// Counters shared with the running load, for a test to poll.
#[derive(Default)]
pub struct Progress {
    /// Writes acknowledged with a success reply.
    pub acked: AtomicU64,
    /// `-TRYAGAIN …` replies: the write was not applied.
    pub tryagain: AtomicU64,
    /// Error replies saying the write may or may not be (or will later be) applied.
    pub unknown: AtomicU64,
    /// Connections that broke (proxy killed, …).
    pub broken: AtomicU64,
}

/// What one connection did.
#[derive(Debug, Default)]
pub struct ConnLog {
    /// `i` of every acknowledged `SET key:c:i i`.
    pub acked_sets: Vec<u64>,
    /// Highest reply of an acknowledged `INCR counter:c` (0 if none).
    pub counter_max: i64,
    /// `INCR counter:c` sent, acknowledged or not: the counter can never exceed it.
    pub incrs_sent: i64,
    /// Error replies other than `TRYAGAIN` and unknown-outcome ones.
    pub unexpected: Vec<String>,
}

pub struct Load {
    stop: Arc<AtomicBool>,
    pub progress: Arc<Progress>,
    threads: Vec<JoinHandle<ConnLog>>,
}

impl Load {
    pub fn start(addr: SocketAddr, connections: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let progress = Arc::new(Progress::default());
        let threads = (0..connections)
            .map(|c| {
                let (stop, progress) = (stop.clone(), progress.clone());
                std::thread::spawn(move || run_connection(addr, c, &stop, &progress))
            })
            .collect();
        Load { stop, progress, threads }
    }

    pub fn acked(&self) -> u64 {
        self.progress.acked.load(Ordering::Relaxed)
    }

    /// Waits until `more` writes beyond now are acknowledged; false if not within `timeout`.
    pub fn wait_for_more_acks(&self, more: u64, timeout: Duration) -> bool {
        let target = self.acked() + more;
        let deadline = std::time::Instant::now() + timeout;
        while self.acked() < target {
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }

    pub fn stop(self) -> Vec<ConnLog> {
        self.stop.store(true, Ordering::Relaxed);
        self.threads.into_iter().map(|t| t.join().expect("load thread panicked")).collect()
    }
}

/// One connection's loop until `stop`.
fn run_connection(addr: SocketAddr, c: usize, stop: &AtomicBool, progress: &Progress) -> ConnLog {
    let mut log = ConnLog::default();
    let mut conn: Option<Conn> = None;
    let mut next: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        let Some(live) = conn.as_mut() else {
            match Conn::connect(addr, CLIENT_TIMEOUT) {
                Ok(fresh) => conn = Some(fresh),
                // The proxy is down: back off a little before the next attempt.
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
            continue;
        };
        let depth = 1 + (next % 8) as usize;
        let mut sent = Vec::with_capacity(depth);
        for _ in 0..depth {
            next += 1;
            if next % 2 == 0 {
                live.queue(&["SET".to_string(), format!("key:{c}:{next}"), next.to_string()]);
            } else {
                live.queue(&["INCR".to_string(), format!("counter:{c}")]);
                log.incrs_sent += 1;
            }
            sent.push(next);
        }
        let replies = live.flush().and_then(|_| live.read_n(depth));
        let Ok(replies) = replies else {
            progress.broken.fetch_add(1, Ordering::Relaxed);
            conn = None;
            continue;
        };
        for (i, reply) in sent.into_iter().zip(replies) {
            match reply {
                Value::Simple(ok) if ok == "OK" && i % 2 == 0 => log.acked_sets.push(i),
                Value::Int(n) if i % 2 == 1 => log.counter_max = log.counter_max.max(n),
                Value::Error(e) if e.starts_with("TRYAGAIN") => {
                    progress.tryagain.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                Value::Error(e) if outcome_unconfirmed(&e) => {
                    progress.unknown.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                other => {
                    log.unexpected.push(format!("command {i}: {other:?}"));
                    continue;
                }
            }
            progress.acked.fetch_add(1, Ordering::Relaxed);
        }
    }
    log
}

/// An error reply for a write that was not acknowledged but may be applied: its outcome is
/// unknown, or it is committed in the journal and will be applied from there.
fn outcome_unconfirmed(error: &str) -> bool {
    error.contains("unknown") || error.contains("will be applied from the journal")
}

/// Every acknowledged write that the cluster behind `addr` does not hold, and every value
/// that no write could have produced. Empty when nothing was lost.
pub fn lost_writes(addr: SocketAddr, logs: &[ConnLog]) -> Vec<String> {
    let mut conn = Conn::connect(addr, CLIENT_TIMEOUT).expect("connect to check");
    let mut lost = Vec::new();
    for (c, log) in logs.iter().enumerate() {
        lost.extend(log.unexpected.iter().map(|e| format!("connection {c}: unexpected reply {e}")));
        for chunk in log.acked_sets.chunks(1000) {
            for i in chunk {
                conn.queue(&["GET".to_string(), format!("key:{c}:{i}")]);
            }
            conn.flush().unwrap();
            for (i, got) in chunk.iter().zip(conn.read_n(chunk.len()).unwrap()) {
                if got.text() != i.to_string() {
                    lost.push(format!("key:{c}:{i}: acknowledged SET {i}, now {got:?}"));
                }
            }
        }
        let counter = conn.cmd(&["GET".to_string(), format!("counter:{c}")]).unwrap();
        let value: i64 = match &counter {
            Value::Bulk(None) => 0,
            other => other.text().parse().unwrap_or(-1),
        };
        if value < log.counter_max || value > log.incrs_sent {
            lost.push(format!(
                "counter:{c} = {counter:?}: an INCR was acknowledged with {} and {} were sent",
                log.counter_max, log.incrs_sent
            ));
        }
    }
    lost
}

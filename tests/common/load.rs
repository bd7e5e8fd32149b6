//! A write load through the proxy that remembers exactly what happened to each write, so a
//! test can kill things under it and then check that no write the proxy vouched for was lost.
//!
//! Each connection `c` pipelines 1..8 commands at a time, alternating `SET key:c:i i` and
//! `INCR counter:c`. A connection that breaks is reopened (its in-flight writes are of unknown
//! outcome: they may or may not be applied). Every error reply must be one the proxy is known
//! to send for a write (see [`Outcome::of_error`]); any other is a failure.

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
    /// Error replies saying the write is committed in the journal: it is (or will be) applied.
    pub committed: AtomicU64,
    /// Error replies saying the write may or may not be applied.
    pub unknown: AtomicU64,
    /// Connections that broke (proxy killed, …).
    pub broken: AtomicU64,
}

/// What the proxy's reply says about one write.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// Success: applied.
    Acked,
    /// `-TRYAGAIN`: not applied.
    Refused,
    /// Committed in the journal but not confirmed by Redis: applied, or applied later from the
    /// journal — it must be there after recovery.
    Committed,
    /// The write may or may not be applied.
    Unknown,
}

/// The error replies the proxy sends for a journaled write, as `(start, end)` of the text,
/// around the parts that vary (proxy/src/sequencer/{journaler,applier}.rs, backend.rs,
/// session.rs).
const KNOWN_ERRORS: &[(&str, &str, Outcome)] = &[
    ("TRYAGAIN memlog: the journal has no quorum", "; the write was not applied", Outcome::Refused),
    (
        "TRYAGAIN memlog: shard ",
        " cannot apply writes right now (its Redis primary is unavailable); the write was not applied",
        Outcome::Refused,
    ),
    (
        "TRYAGAIN memlog: could not read the data this write depends on (",
        "); the write was not applied",
        Outcome::Refused,
    ),
    ("TRYAGAIN memlog: shard ", " is failing over", Outcome::Refused),
    (
        "ERR memlog: the write is committed in the journal but Redis cannot apply it yet (",
        "); it will be applied from the journal",
        Outcome::Committed,
    ),
    (
        "ERR memlog: the write is committed in the journal and was applied, but Redis's reply was lost (",
        "); its result is unknown",
        Outcome::Committed,
    ),
    (
        "ERR memlog: the journal append's outcome is unknown (",
        "); the write may or may not be applied",
        Outcome::Unknown,
    ),
    ("ERR memlog: the request was dropped; its outcome is unknown", "", Outcome::Unknown),
];

impl Outcome {
    /// What an error reply says, or None for a text the proxy is not known to send.
    pub fn of_error(error: &str) -> Option<&'static Outcome> {
        KNOWN_ERRORS
            .iter()
            .find(|(start, end, _)| {
                error.len() >= start.len() + end.len() && error.starts_with(start) && error.ends_with(end)
            })
            .map(|(_, _, outcome)| outcome)
    }
}

/// What one connection did.
#[derive(Debug, Default)]
pub struct ConnLog {
    /// `i` of every acknowledged `SET key:c:i i`.
    pub acked_sets: Vec<u64>,
    /// `i` of every `SET key:c:i i` the proxy said is committed in the journal.
    pub committed_sets: Vec<u64>,
    /// Highest reply of an acknowledged `INCR counter:c` (0 if none).
    pub counter_max: i64,
    /// `INCR counter:c` applied for certain: acknowledged or committed in the journal.
    pub incrs_applied: i64,
    /// `INCR counter:c` of unknown outcome (error reply saying so, or in flight on a connection
    /// that broke): each may or may not be applied. Refused ones are in neither count.
    pub incrs_unknown: i64,
    /// Replies no correct proxy sends: unknown error texts, an acknowledged INCR not above the
    /// previous one.
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
            if is_set(next) {
                live.queue(&["SET".to_string(), format!("key:{c}:{next}"), next.to_string()]);
            } else {
                live.queue(&["INCR".to_string(), format!("counter:{c}")]);
            }
            sent.push(next);
        }
        let replies = live.flush().and_then(|_| live.read_n(depth));
        let Ok(replies) = replies else {
            progress.broken.fetch_add(1, Ordering::Relaxed);
            log.incrs_unknown += sent.iter().filter(|i| !is_set(**i)).count() as i64;
            conn = None;
            continue;
        };
        for (i, reply) in sent.into_iter().zip(replies) {
            let (outcome, incr_reply) = match reply {
                Value::Simple(ok) if ok == "OK" && is_set(i) => (&Outcome::Acked, None),
                Value::Int(n) if !is_set(i) => (&Outcome::Acked, Some(n)),
                Value::Error(e) => match Outcome::of_error(&e) {
                    Some(outcome) => (outcome, None),
                    None => {
                        log.unexpected.push(format!("command {i}: unknown error text {e:?}"));
                        continue;
                    }
                },
                other => {
                    log.unexpected.push(format!("command {i}: {other:?}"));
                    continue;
                }
            };
            let counter = match outcome {
                Outcome::Acked => &progress.acked,
                Outcome::Refused => &progress.tryagain,
                Outcome::Committed => &progress.committed,
                Outcome::Unknown => &progress.unknown,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            if let Some(n) = incr_reply {
                // Each INCR of this counter is sent after the previous one's reply or pipelined
                // behind it: applied once each, their replies only go up.
                if n <= log.counter_max {
                    log.unexpected
                        .push(format!("command {i}: INCR counter:{c} answered {n} after {}", log.counter_max));
                }
                log.counter_max = log.counter_max.max(n);
            }
            match (outcome, is_set(i)) {
                (Outcome::Acked, true) => log.acked_sets.push(i),
                (Outcome::Committed, true) => log.committed_sets.push(i),
                (Outcome::Acked | Outcome::Committed, false) => log.incrs_applied += 1,
                (Outcome::Unknown, false) => log.incrs_unknown += 1,
                (Outcome::Refused, _) | (Outcome::Unknown, true) => {}
            }
        }
    }
    log
}

/// Command `i` of a connection is `SET key:c:i i` when `i` is even, else `INCR counter:c`.
fn is_set(i: u64) -> bool {
    i % 2 == 0
}

/// Every acknowledged or committed write that the cluster behind `addr` does not hold, every
/// counter that no sequence of applied INCRs could have produced, and every reply no correct
/// proxy sends. Empty when nothing was lost.
pub fn lost_writes(addr: SocketAddr, logs: &[ConnLog]) -> Vec<String> {
    let mut conn = Conn::connect(addr, CLIENT_TIMEOUT).expect("connect to check");
    let mut lost = Vec::new();
    for (c, log) in logs.iter().enumerate() {
        lost.extend(log.unexpected.iter().map(|e| format!("connection {c}: unexpected reply {e}")));
        for (how, sets) in [("acknowledged", &log.acked_sets), ("committed", &log.committed_sets)] {
            for chunk in sets.chunks(1000) {
                for i in chunk {
                    conn.queue(&["GET".to_string(), format!("key:{c}:{i}")]);
                }
                conn.flush().unwrap();
                for (i, got) in chunk.iter().zip(conn.read_n(chunk.len()).unwrap()) {
                    if got.text() != i.to_string() {
                        lost.push(format!("key:{c}:{i}: {how} SET {i}, now {got:?}"));
                    }
                }
            }
        }
        let counter = conn.cmd(&["GET".to_string(), format!("counter:{c}")]).unwrap();
        let value: i64 = match &counter {
            Value::Bulk(None) => 0,
            other => other.text().parse().unwrap_or(-1),
        };
        let (least, most) = (log.counter_max.max(log.incrs_applied), log.incrs_applied + log.incrs_unknown);
        if value < least || value > most {
            lost.push(format!(
                "counter:{c} = {counter:?}, outside [{least}, {most}]: {} INCRs acknowledged or committed (highest \
                 reply {}), {} of unknown outcome",
                log.incrs_applied, log.counter_max, log.incrs_unknown
            ));
        }
    }
    lost
}

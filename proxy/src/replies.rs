//! What the dispatcher hands the session's writer for each command: a reply that may not be known
//! yet (`Pending`), in its queue entry (`Outgoing`), and the per-shard lanes that keep one
//! client's reads and writes to a shard in order.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::{oneshot, Notify};

use crate::backend::ReplyResult;
use crate::resp::error_reply;
use crate::table::CommandInfo;

/// A reply that may not be known yet.
pub(crate) enum Pending {
    Ready(Bytes),
    Backend {
        rx: oneshot::Receiver<ReplyResult>,
        _lane: Option<LaneGuard>,
    },
    /// Parts of a command split across shards, merged once all arrived.
    Merge {
        parts: Vec<Pending>,
        merge: Box<dyn FnOnce(Vec<Bytes>) -> Bytes + Send>,
    },
    /// Work the writer runs when the reply is due, i.e. after every earlier command of this
    /// client has completed.
    Deferred(Pin<Box<dyn Future<Output = Bytes> + Send>>),
    /// Like `Deferred`, but instant and changing nothing the reader consults, so the reader
    /// goes on dispatching meanwhile (PUBLISH: ordered after the client's earlier writes
    /// without stalling its pipeline).
    Due(Box<dyn FnOnce() -> Bytes + Send>),
}

impl Pending {
    pub(crate) fn error(msg: &str) -> Pending {
        Pending::Ready(error_reply(msg))
    }

    /// Waits for the reply. Plain replies resolve without boxing; only merged and deferred
    /// ones (rare, and recursive) go through a boxed future.
    pub(crate) async fn resolve(self) -> Bytes {
        match self {
            Pending::Ready(bytes) => bytes,
            Pending::Backend { rx, _lane } => backend_reply(rx.await),
            Pending::Due(work) => work(),
            other => other.resolve_boxed().await,
        }
    }

    fn resolve_boxed(self) -> Pin<Box<dyn Future<Output = Bytes> + Send>> {
        Box::pin(async move {
            match self {
                Pending::Merge { parts, merge, .. } => {
                    // Every part is awaited before any answer, an error included: the client
                    // hears of a command split over shards only once every shard has done its
                    // part (a FLUSHALL refused by one shard has still flushed the others).
                    let mut replies = Vec::with_capacity(parts.len());
                    for part in parts {
                        replies.push(part.resolve_boxed().await);
                    }
                    match replies.iter().position(|reply| matches!(reply.first(), Some(b'-') | Some(b'!'))) {
                        Some(error) => replies.swap_remove(error),
                        None => merge(replies),
                    }
                }
                Pending::Deferred(work) => work.await,
                Pending::Due(work) => work(),
                Pending::Ready(bytes) => bytes,
                Pending::Backend { rx, _lane } => backend_reply(rx.await),
            }
        })
    }
}

pub(crate) fn backend_reply(received: Result<ReplyResult, oneshot::error::RecvError>) -> Bytes {
    match received {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(e)) => error_reply(&format!("ERR memlog: {e}")),
        Err(_) => error_reply("ERR memlog: the request was dropped; its outcome is unknown"),
    }
}

/// One entry of the writer's queue.
pub(crate) struct Outgoing {
    pub pending: Pending,
    pub command: Option<Arc<CommandInfo>>,
    pub started: Instant,
    /// Close the connection after this reply (QUIT, protocol errors).
    pub close: bool,
    /// The reader waits until this reply was handed over before it dispatches the client's
    /// next command: for commands whose work runs in the writer (`Pending::Deferred`).
    pub barrier: bool,
    /// Refused before it ran (INFO's `rejected_calls`).
    pub rejected: bool,
    /// `CLIENT REPLY OFF|SKIP`: the reply is awaited and counted but not sent.
    pub silent: bool,
    /// The request's bytes, for the slow log: parsed into arguments again only for a slow
    /// command, so the fast path keeps no second argument list (at pipeline 16 the copy's
    /// allocation and reference counts were ~5% of the proxy's CPU).
    pub raw: Bytes,
}

impl Outgoing {
    pub(crate) fn new(pending: Pending, command: Option<Arc<CommandInfo>>, started: Instant) -> Outgoing {
        Outgoing {
            pending,
            command,
            started,
            close: false,
            barrier: false,
            rejected: false,
            silent: false,
            raw: Bytes::new(),
        }
    }
}

/// Which connection a command of this client went out on, per shard. A client's commands to
/// one shard stay in order only if a read does not overtake an earlier write on another
/// connection, nor a write an earlier read: the counters say what is still in flight where.
pub(crate) struct Lanes {
    apply: Vec<AtomicU32>,
    read: Vec<AtomicU32>,
    idle: Notify,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lane {
    Apply,
    Read,
}

impl Lanes {
    pub(crate) fn new(shards: usize) -> Lanes {
        Lanes {
            apply: (0..shards).map(|_| AtomicU32::new(0)).collect(),
            read: (0..shards).map(|_| AtomicU32::new(0)).collect(),
            idle: Notify::new(),
        }
    }

    pub(crate) fn in_flight(&self, shard: usize, lane: Lane) -> u32 {
        self.counter(shard, lane).load(Ordering::Acquire)
    }

    fn counter(&self, shard: usize, lane: Lane) -> &AtomicU32 {
        match lane {
            Lane::Apply => &self.apply[shard],
            Lane::Read => &self.read[shard],
        }
    }

    /// Waits until this client has no read in flight to `shard`.
    pub(crate) async fn wait_reads_done(&self, shard: usize) {
        loop {
            let idle = self.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.in_flight(shard, Lane::Read) == 0 {
                return;
            }
            idle.await;
        }
    }

    pub(crate) fn enter(self: &Arc<Self>, shard: usize, lane: Lane) -> LaneGuard {
        self.counter(shard, lane).fetch_add(1, Ordering::AcqRel);
        LaneGuard { lanes: self.clone(), shard, lane }
    }
}

/// Marks one command in flight on a lane until its reply has been taken by the writer.
pub(crate) struct LaneGuard {
    lanes: Arc<Lanes>,
    shard: usize,
    lane: Lane,
}

impl Drop for LaneGuard {
    fn drop(&mut self) {
        if self.lanes.counter(self.shard, self.lane).fetch_sub(1, Ordering::AcqRel) == 1 {
            self.lanes.idle.notify_waiters();
        }
    }
}

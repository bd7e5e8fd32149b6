//! A client session: a reader that parses requests and dispatches each as soon as it arrives,
//! and a writer that hands replies back in request order, flushing once per batch of ready
//! replies. The two halves run concurrently, so a client that pipelines without reading
//! replies is still served as Redis serves it.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::sync::CancellationToken;

use crate::backend::ReplyResult;
use crate::commands::table::CommandInfo;
use crate::dispatch::Dispatcher;
use crate::resp::{error_reply, Limits, Proto, RequestParser};
use crate::state::{ClientHandle, Proxy};

/// Replies awaited by the writer beyond which the reader stops reading, so one client cannot
/// make the proxy hold unbounded work.
const MAX_PENDING: usize = 64 * 1024;
/// While draining, a connection that sends nothing for this long is closed.
const DRAIN_IDLE: std::time::Duration = std::time::Duration::from_millis(100);
/// Output buffered before the writer writes it out even if more replies are ready.
const FLUSH_AT: usize = 64 * 1024;

/// A reply that may not be known yet.
pub enum Pending {
    Ready(Bytes),
    Backend {
        rx: oneshot::Receiver<ReplyResult>,
        _lane: Option<LaneGuard>,
    },
    /// Parts of a command split across shards, merged once all arrived.
    Merge {
        parts: Vec<Pending>,
        merge: Box<dyn FnOnce(Vec<Bytes>) -> Bytes + Send>,
        proto: Proto,
    },
    /// Work the writer runs when the reply is due, i.e. after every earlier command of this
    /// client has completed.
    Deferred(Pin<Box<dyn Future<Output = Bytes> + Send>>),
}

impl Pending {
    pub fn error(msg: &str) -> Pending {
        Pending::Ready(error_reply(msg))
    }

    /// Waits for the reply. Plain replies resolve without boxing; only merged and deferred
    /// ones (rare, and recursive) go through a boxed future.
    async fn resolve(self) -> Bytes {
        match self {
            Pending::Ready(bytes) => bytes,
            Pending::Backend { rx, _lane } => backend_reply(rx.await),
            other => other.resolve_boxed().await,
        }
    }

    fn resolve_boxed(self) -> Pin<Box<dyn Future<Output = Bytes> + Send>> {
        Box::pin(async move {
            match self {
                Pending::Merge { parts, merge, .. } => {
                    let mut replies = Vec::with_capacity(parts.len());
                    for part in parts {
                        let reply = part.resolve_boxed().await;
                        if matches!(reply.first(), Some(b'-') | Some(b'!')) {
                            return reply;
                        }
                        replies.push(reply);
                    }
                    merge(replies)
                }
                Pending::Deferred(work) => work.await,
                Pending::Ready(bytes) => bytes,
                Pending::Backend { rx, _lane } => backend_reply(rx.await),
            }
        })
    }
}

fn backend_reply(received: Result<ReplyResult, oneshot::error::RecvError>) -> Bytes {
    match received {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(e)) => error_reply(&format!("ERR memlog: {e}")),
        Err(_) => error_reply("ERR memlog: the request was dropped; its outcome is unknown"),
    }
}

/// One entry of the writer's queue.
pub struct Outgoing {
    pub pending: Pending,
    pub command: Option<Arc<CommandInfo>>,
    pub started: Instant,
    /// Close the connection after this reply (QUIT, protocol errors).
    pub close: bool,
    /// The reader waits until this reply was handed over before it dispatches the client's
    /// next command: for commands whose work runs in the writer (`Pending::Deferred`).
    pub barrier: bool,
}

impl Outgoing {
    pub fn new(pending: Pending, command: Option<Arc<CommandInfo>>, started: Instant) -> Outgoing {
        Outgoing { pending, command, started, close: false, barrier: false }
    }
}

/// Which connection a command of this client went out on, per shard. A client's commands to
/// one shard stay in order only if a read does not overtake an earlier write on another
/// connection, nor a write an earlier read: the counters say what is still in flight where.
pub struct Lanes {
    apply: Vec<AtomicU32>,
    read: Vec<AtomicU32>,
    idle: Notify,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    Apply,
    Read,
}

impl Lanes {
    pub fn new(shards: usize) -> Lanes {
        Lanes {
            apply: (0..shards).map(|_| AtomicU32::new(0)).collect(),
            read: (0..shards).map(|_| AtomicU32::new(0)).collect(),
            idle: Notify::new(),
        }
    }

    pub fn in_flight(&self, shard: usize, lane: Lane) -> u32 {
        self.counter(shard, lane).load(Ordering::Acquire)
    }

    fn counter(&self, shard: usize, lane: Lane) -> &AtomicU32 {
        match lane {
            Lane::Apply => &self.apply[shard],
            Lane::Read => &self.read[shard],
        }
    }

    /// Waits until this client has no read in flight to `shard`.
    pub async fn wait_reads_done(&self, shard: usize) {
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

    pub fn enter(self: &Arc<Self>, shard: usize, lane: Lane) -> LaneGuard {
        self.counter(shard, lane).fetch_add(1, Ordering::AcqRel);
        LaneGuard { lanes: self.clone(), shard, lane }
    }
}

/// Marks one command in flight on a lane until its reply has been taken by the writer.
pub struct LaneGuard {
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

/// A reply in the writer's queue, with the permit that bounds the queue and, for a barrier,
/// the signal that releases the reader.
type Queued = (Outgoing, tokio::sync::OwnedSemaphorePermit, Option<oneshot::Sender<()>>);

/// Serves one client connection until it closes, is killed, or the proxy drains.
pub async fn run<R, W>(proxy: Arc<Proxy>, client: Arc<ClientHandle>, reader: R, writer: W, drain: CancellationToken)
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (tx, rx) = mpsc::unbounded_channel();
    let pending = Arc::new(tokio::sync::Semaphore::new(MAX_PENDING));
    let writer_task = tokio::spawn(write_replies(proxy.clone(), client.clone(), writer, rx, pending.clone()));
    read_requests(proxy, client.clone(), reader, tx, pending, drain).await;
    let _ = writer_task.await;
}

async fn read_requests<R: AsyncRead + Unpin>(
    proxy: Arc<Proxy>,
    client: Arc<ClientHandle>,
    mut reader: R,
    tx: mpsc::UnboundedSender<Queued>,
    pending: Arc<tokio::sync::Semaphore>,
    drain: CancellationToken,
) {
    let limits = Limits { max_bulk_len: proxy.cfg.proto_max_bulk_len, max_args: proxy.cfg.max_multibulk_len };
    let mut dispatcher = Dispatcher::new(proxy.clone(), client.clone());
    let mut parser = RequestParser::default();
    let mut buf = BytesMut::with_capacity(16 * 1024);
    loop {
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(16 * 1024);
        }
        let read = tokio::select! {
            _ = client.kill.cancelled() => return,
            read = reader.read_buf(&mut buf) => read,
            // Draining: serve what the client already sent, and stop once it pauses.
            _ = drain.cancelled() => match tokio::time::timeout(DRAIN_IDLE, reader.read_buf(&mut buf)).await {
                Ok(read) => read,
                Err(_) => return,
            },
        };
        match read {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        loop {
            let outgoing = match parser.next(&mut buf, limits) {
                Ok(Some(request)) => dispatcher.dispatch(request).await,
                Ok(None) => break,
                Err(e) => {
                    Outgoing { close: true, ..Outgoing::new(Pending::error(&format!("ERR {e}")), None, Instant::now()) }
                }
            };
            let close = outgoing.close;
            let (done_tx, done_rx) = if outgoing.barrier { Some(oneshot::channel()).unzip() } else { (None, None) };
            let Ok(permit) = pending.clone().acquire_owned().await else { return };
            if tx.send((outgoing, permit, done_tx)).is_err() {
                return;
            }
            if close {
                return;
            }
            if let Some(done) = done_rx {
                let _ = done.await;
            }
        }
    }
}

async fn write_replies<W: AsyncWrite + Unpin>(
    proxy: Arc<Proxy>,
    client: Arc<ClientHandle>,
    mut writer: W,
    mut rx: mpsc::UnboundedReceiver<Queued>,
    _pending: Arc<tokio::sync::Semaphore>,
) {
    let mut out = BytesMut::with_capacity(16 * 1024);
    let limit = proxy.cfg.client_output_buffer_limit;
    loop {
        let (item, permit, done) = match rx.try_recv() {
            Ok(item) => item,
            Err(mpsc::error::TryRecvError::Empty) => {
                if !out.is_empty() && writer.write_all(&out).await.is_err() {
                    return;
                }
                out.clear();
                if writer.flush().await.is_err() {
                    return;
                }
                tokio::select! {
                    item = rx.recv() => match item {
                        Some(item) => item,
                        None => break,
                    },
                    _ = client.kill.cancelled() => return,
                }
            }
            Err(mpsc::error::TryRecvError::Disconnected) => break,
        };
        let Outgoing { pending, command, started, close, .. } = item;
        let reply = pending.resolve().await;
        drop(permit);
        if let Some(cmd) = &command {
            let is_error = matches!(reply.first(), Some(b'-') | Some(b'!'));
            if is_error { &cmd.metrics.err } else { &cmd.metrics.ok }.increment(1);
            cmd.metrics.latency.record(started.elapsed().as_secs_f64());
        }
        if limit > 0 && out.len() + reply.len() > limit {
            tracing::warn!(client = client.id, addr = %client.addr, "client output buffer limit ({limit} bytes) reached; closing the connection");
            client.kill.cancel();
            return;
        }
        out.extend_from_slice(&reply);
        if let Some(done) = done {
            let _ = done.send(());
        }
        if close {
            break;
        }
        if out.len() >= FLUSH_AT {
            if writer.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
    }
    if !out.is_empty() {
        let _ = writer.write_all(&out).await;
    }
    let _ = writer.flush().await;
    let _ = writer.shutdown().await;
}

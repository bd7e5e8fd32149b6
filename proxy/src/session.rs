//! A client session: a reader that parses requests and dispatches each as soon as it arrives,
//! and a writer that hands replies back in request order, flushing once per batch of ready
//! replies. The two halves run concurrently, so a client that pipelines without reading
//! replies is still served as Redis serves it.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::sync::CancellationToken;

use crate::backend::ReplyResult;
use crate::commands::pubsub::ClientPubSub;
use crate::commands::table::CommandInfo;
use crate::dispatch::Dispatcher;
use crate::pubsub::Subscriber;
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
    /// Like `Deferred`, but instant and changing nothing the reader consults, so the reader
    /// goes on dispatching meanwhile (PUBLISH: ordered after the client's earlier writes
    /// without stalling its pipeline).
    Due(Box<dyn FnOnce() -> Bytes + Send>),
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
            Pending::Due(work) => work(),
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
                Pending::Due(work) => work(),
                Pending::Ready(bytes) => bytes,
                Pending::Backend { rx, _lane } => backend_reply(rx.await),
            }
        })
    }
}

pub fn backend_reply(received: Result<ReplyResult, oneshot::error::RecvError>) -> Bytes {
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

/// Pub/sub frames a client may have queued when it sets no `client_output_buffer_limit`:
/// Redis's default hard limit for pub/sub clients (`client-output-buffer-limit pubsub 32mb`).
const DEFAULT_PUSH_LIMIT: usize = 32 * 1024 * 1024;

/// Where pub/sub frames (messages and subscription confirmations) for one client go: the
/// session's writer writes them between replies. Bounded in bytes like Redis's pub/sub output
/// buffer limit: a subscriber too slow to keep up is disconnected rather than buffered without
/// end.
#[derive(Clone)]
pub struct PushSender {
    tx: mpsc::UnboundedSender<Bytes>,
    queued: Arc<AtomicUsize>,
    limit: usize,
    client: Arc<ClientHandle>,
}

impl PushSender {
    /// Queues `frame` for the client, unless the client is gone or this frame takes it over its
    /// limit: it is then disconnected, as Redis closes a pub/sub client over its hard limit.
    pub fn push(&self, frame: Bytes) {
        if self.client.kill.is_cancelled() {
            return;
        }
        let queued = self.queued.fetch_add(frame.len(), Ordering::AcqRel) + frame.len();
        if queued > self.limit {
            tracing::warn!(
                client = self.client.id,
                addr = %self.client.addr,
                "pub/sub output buffer limit ({} bytes) reached; closing the connection",
                self.limit
            );
            self.client.kill.cancel();
            return;
        }
        // The writer is gone only when the session ends; the frame has nobody to go to.
        let _ = self.tx.send(frame);
    }

    /// The client the frames go to (its id, and its protocol, which frames are encoded in).
    pub fn client(&self) -> &Arc<ClientHandle> {
        &self.client
    }
}

/// The writer's side of a client's `PushSender`.
struct PushReceiver {
    rx: mpsc::UnboundedReceiver<Bytes>,
    queued: Arc<AtomicUsize>,
}

impl PushReceiver {
    fn taken(&self, frame: Bytes) -> Bytes {
        self.queued.fetch_sub(frame.len(), Ordering::AcqRel);
        frame
    }

    fn try_recv(&mut self) -> Option<Bytes> {
        self.rx.try_recv().ok().map(|frame| self.taken(frame))
    }

    async fn recv(&mut self) -> Option<Bytes> {
        let frame = self.rx.recv().await?;
        Some(self.taken(frame))
    }
}

fn push_channel(proxy: &Proxy, client: &Arc<ClientHandle>) -> (PushSender, PushReceiver) {
    let (tx, rx) = mpsc::unbounded_channel();
    let queued = Arc::new(AtomicUsize::new(0));
    let limit = match proxy.cfg.client_output_buffer_limit {
        0 => DEFAULT_PUSH_LIMIT,
        limit => limit,
    };
    (PushSender { tx, queued: queued.clone(), limit, client: client.clone() }, PushReceiver { rx, queued })
}

/// Serves one client connection until it closes, is killed, or the proxy drains.
pub async fn run<R, W>(proxy: Arc<Proxy>, client: Arc<ClientHandle>, reader: R, writer: W, drain: CancellationToken)
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (tx, rx) = mpsc::unbounded_channel();
    let pending = Arc::new(tokio::sync::Semaphore::new(MAX_PENDING));
    let (push_tx, push_rx) = push_channel(&proxy, &client);
    let subscriber = Arc::new(Subscriber::new(push_tx));
    // Cancelled when the client closed its connection.
    let gone = CancellationToken::new();
    let writer_task =
        tokio::spawn(write_replies(proxy.clone(), client.clone(), writer, rx, push_rx, gone.clone(), pending.clone()));
    let mut dispatcher = Dispatcher::new(proxy.clone(), client.clone());
    dispatcher.pubsub = ClientPubSub::new(subscriber.clone());
    read_requests(dispatcher, reader, tx, pending, drain, gone).await;
    let _ = writer_task.await;
    // Nothing of this client runs any more: its subscriptions and MONITOR can go.
    proxy.pubsub.remove_client(&subscriber);
    proxy.monitors.remove(client.id);
}

async fn read_requests<R: AsyncRead + Unpin>(
    mut dispatcher: Dispatcher,
    mut reader: R,
    tx: mpsc::UnboundedSender<Queued>,
    pending: Arc<tokio::sync::Semaphore>,
    drain: CancellationToken,
    gone: CancellationToken,
) {
    let client = dispatcher.client.clone();
    let cfg = &dispatcher.proxy.cfg;
    let limits = Limits { max_bulk_len: cfg.proto_max_bulk_len, max_args: cfg.max_multibulk_len };
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
            Ok(0) | Err(_) => {
                gone.cancel();
                return;
            }
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
            if let Some(mut done) = done_rx {
                // Keep reading meanwhile (without dispatching), so a client that disconnects
                // while blocked is noticed (`gone`) and stops waiting.
                loop {
                    buf.reserve(4096);
                    tokio::select! {
                        _ = &mut done => break,
                        read = reader.read_buf(&mut buf) => match read {
                            Ok(0) | Err(_) => {
                                gone.cancel();
                                return;
                            }
                            Ok(_) => {}
                        },
                    }
                }
            }
        }
    }
}

/// The bytes waiting to go to the client, written out in batches. Every write gives way to
/// `CLIENT KILL` (and the pub/sub output limit), so a client that stopped reading cannot pin
/// its session.
struct Output<W> {
    writer: W,
    out: BytesMut,
    client: Arc<ClientHandle>,
}

impl<W: AsyncWrite + Unpin> Output<W> {
    /// Writes what is buffered; false if the connection failed or the client was killed.
    async fn write_out(&mut self) -> bool {
        if self.out.is_empty() {
            return true;
        }
        let written = tokio::select! {
            written = self.writer.write_all(&self.out) => written.is_ok(),
            _ = self.client.kill.cancelled() => false,
        };
        self.out.clear();
        written
    }

    /// Buffers `frame`, writing the buffer out once it is large.
    async fn append(&mut self, frame: &[u8]) -> bool {
        self.out.extend_from_slice(frame);
        self.out.len() < FLUSH_AT || self.write_out().await
    }

    async fn flush(&mut self) -> bool {
        if !self.write_out().await {
            return false;
        }
        tokio::select! {
            flushed = self.writer.flush() => flushed.is_ok(),
            _ = self.client.kill.cancelled() => false,
        }
    }
}

/// What the writer handles next.
enum Next {
    Reply(Queued),
    Push(Bytes),
}

async fn write_replies<W: AsyncWrite + Unpin>(
    proxy: Arc<Proxy>,
    client: Arc<ClientHandle>,
    writer: W,
    mut rx: mpsc::UnboundedReceiver<Queued>,
    mut pushes: PushReceiver,
    gone: CancellationToken,
    _pending: Arc<tokio::sync::Semaphore>,
) {
    let mut output = Output { writer, out: BytesMut::with_capacity(16 * 1024), client: client.clone() };
    let limit = proxy.cfg.client_output_buffer_limit;
    loop {
        let next = match rx.try_recv() {
            Ok(item) => Next::Reply(item),
            Err(mpsc::error::TryRecvError::Empty) => match pushes.try_recv() {
                Some(frame) => Next::Push(frame),
                None => {
                    if !output.flush().await {
                        return;
                    }
                    tokio::select! {
                        item = rx.recv() => match item {
                            Some(item) => Next::Reply(item),
                            None => break,
                        },
                        Some(frame) = pushes.recv() => Next::Push(frame),
                        _ = client.kill.cancelled() => return,
                    }
                }
            },
            Err(mpsc::error::TryRecvError::Disconnected) => break,
        };
        let (item, permit, done) = match next {
            Next::Push(frame) => {
                if !output.append(&frame).await {
                    return;
                }
                continue;
            }
            Next::Reply(item) => item,
        };
        let Outgoing { pending, command, started, close, .. } = item;
        let blocking = command.as_ref().is_some_and(|c| c.flags.blocking);
        let reply = tokio::select! {
            reply = pending.resolve() => reply,
            _ = client.kill.cancelled() => return,
            // A blocked client that went away waits for nothing: dropping its pending reply
            // ends the wait, as Redis unblocks a client it frees. Replies of other commands are
            // still written, for a client that only shut down its sending side.
            _ = gone.cancelled(), if blocking => return,
        };
        drop(permit);
        if let Some(cmd) = &command {
            let is_error = matches!(reply.first(), Some(b'-') | Some(b'!'));
            if is_error { &cmd.metrics.err } else { &cmd.metrics.ok }.increment(1);
            cmd.metrics.latency.record(started.elapsed().as_secs_f64());
        }
        // Pub/sub frames queued before this reply was ready go first: a message published
        // before an UNSUBSCRIBE took effect precedes its confirmation, as in Redis.
        while let Some(frame) = pushes.try_recv() {
            if !output.append(&frame).await {
                return;
            }
        }
        if limit > 0 && output.out.len() + reply.len() > limit {
            tracing::warn!(client = client.id, addr = %client.addr, "client output buffer limit ({limit} bytes) reached; closing the connection");
            client.kill.cancel();
            return;
        }
        if !output.append(&reply).await {
            return;
        }
        if let Some(done) = done {
            let _ = done.send(());
        }
        if close {
            break;
        }
    }
    let _ = output.flush().await;
    let _ = output.writer.shutdown().await;
}

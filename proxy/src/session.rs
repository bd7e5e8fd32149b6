//! A client session: a reader that parses requests and dispatches each as soon as it arrives,
//! and a writer that hands replies back in request order, flushing once per batch of ready
//! replies and before it waits for one that is not ready, so no reply waits for a later one.
//! The two halves run concurrently, so a client that pipelines without reading replies is still
//! served as Redis serves it.

use std::collections::VecDeque;
use std::sync::Arc;
use std::task::Poll;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::clients::{poll_once, push_channel, ClientHandle, PushReceiver};
use crate::context::{ClientCtx, ClientPubSub};
use crate::proxy::Proxy;
use crate::pubsub::Subscriber;
use crate::replies::{Outgoing, Pending};
use crate::resp::{Limits, ProtocolError, Request, RequestParser};
use crate::stats::Reply;

/// Replies awaited by the writer beyond which the reader stops reading, so one client cannot
/// make the proxy hold unbounded work.
const MAX_PENDING: usize = 64 * 1024;
/// While draining, a connection that sends nothing for this long is closed.
const DRAIN_IDLE: std::time::Duration = std::time::Duration::from_millis(100);
/// Output buffered before the writer writes it out even if more replies are ready.
const FLUSH_AT: usize = 64 * 1024;
/// What a client that has not authenticated may send, as Redis 7.0 limits it
/// (`processMultibulkBuffer`): 10 arguments, bulk strings of 16 KiB.
const UNAUTHENTICATED: Limits = Limits { max_bulk_len: 16 * 1024, max_args: 10 };

/// A reply in the writer's queue, with the permit that bounds the queue and, for a barrier,
/// the signal that releases the reader.
type QueuedReply = (Outgoing, tokio::sync::OwnedSemaphorePermit, Option<oneshot::Sender<()>>);

/// Serves one client connection until it closes, is killed, or the proxy drains.
pub(crate) async fn run<R, W>(
    proxy: Arc<Proxy>,
    client: Arc<ClientHandle>,
    reader: R,
    writer: W,
    certificate_user: Option<String>,
    drain: CancellationToken,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (tx, rx) = mpsc::unbounded_channel();
    let pending = Arc::new(tokio::sync::Semaphore::new(MAX_PENDING));
    let (push_tx, push_rx) = push_channel(proxy.cfg.client_output_buffer_limit, &client);
    let subscriber = Arc::new(Subscriber::new(push_tx));
    proxy.tracker.connected(subscriber.clone());
    // Cancelled when the client closed its connection.
    let gone = CancellationToken::new();
    let writer_task =
        tokio::spawn(write_replies(proxy.clone(), client.clone(), writer, rx, push_rx, gone.clone(), pending.clone()));
    let mut ctx = ClientCtx::new(proxy.clone(), client.clone());
    ctx.pubsub = ClientPubSub::new(subscriber.clone());
    ctx.certificate_user = certificate_user;
    read_requests(ctx, reader, tx, pending, drain, gone).await;
    let _ = writer_task.await;
    // Nothing of this client runs any more: its subscriptions and MONITOR can go.
    proxy.pubsub.remove_client(&subscriber);
    proxy.tracker.disconnected(client.id);
    proxy.monitors.remove(client.id);
}

async fn read_requests<R: AsyncRead + Unpin>(
    mut ctx: ClientCtx,
    mut reader: R,
    tx: mpsc::UnboundedSender<QueuedReply>,
    pending: Arc<tokio::sync::Semaphore>,
    drain: CancellationToken,
    gone: CancellationToken,
) {
    let client = ctx.client.clone();
    let cfg = &ctx.proxy.cfg;
    let params = ctx.proxy.parameters.live.clone();
    let (default_bulk_len, max_args) = (cfg.proto_max_bulk_len, cfg.max_multibulk_len);
    let mut parser = RequestParser::default();
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let auth_timeout = std::time::Duration::from_millis(cfg.auth_timeout_ms);
    let auth_deadline = tokio::time::Instant::from_std(client.connected_at) + auth_timeout;
    // A client certificate that names a user logs the connection in before it sends anything;
    // one naming no enabled user gets an error and is closed, as a failed AUTH would leave it
    // with nothing to do.
    if let Err(message) = crate::commands::connection::certificate_login(&mut ctx) {
        let refused = Outgoing { close: true, ..Outgoing::new(Pending::error(&message), None, Instant::now()) };
        if let Ok(permit) = pending.clone().acquire_owned().await {
            let _ = tx.send((refused, permit, None));
        }
        return;
    }
    loop {
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(16 * 1024);
        }
        // `timeout` (the parameter group's, enforced here and not on the nodes): an idle client
        // is closed, unless it listens for pushes (pub/sub, MONITOR), as Redis exempts them.
        let idle_limit =
            params.client_timeout().filter(|_| !ctx.pubsub.subscribed() && !ctx.proxy.monitors.has(client.id));
        // Biased: a client killed (CLIENT KILL, ACL LOAD) while its next command was arriving
        // is closed without running it, as Redis frees a client marked close-asap first.
        let read = tokio::select! {
            biased;
            _ = client.kill.cancelled() => return,
            _ = tokio::time::sleep(idle_limit.unwrap_or_default()), if idle_limit.is_some() => {
                // Waiting for a reply (a write held by a failover, say) is not idleness.
                if pending.available_permits() < MAX_PENDING {
                    continue;
                }
                tracing::debug!(client = client.id, addr = %client.addr, "idle longer than timeout; closing");
                gone.cancel();
                return;
            }
            // A connection that never authenticates cannot hold a client slot for ever.
            _ = tokio::time::sleep_until(auth_deadline), if !ctx.authenticated && !auth_timeout.is_zero() => {
                tracing::debug!(client = client.id, addr = %client.addr, "not authenticated in time; closing");
                return;
            }
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
            Ok(read) => ctx.proxy.stats.count_read(read),
        }
        let limits = Limits { max_bulk_len: params.max_bulk_len(default_bulk_len), max_args };
        loop {
            if client.kill.is_cancelled() {
                return;
            }
            let authenticated = ctx.authenticated;
            let parsed = parser.next(&mut buf, if authenticated { limits } else { UNAUTHENTICATED });
            if !matches!(parsed, Ok(None)) {
                // Counted before it runs: an invalidation queued while it runs waits for its reply.
                client.dispatched.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            }
            let outgoing = match parsed {
                Ok(Some(request)) => crate::dispatch::dispatch(&mut ctx, request).await,
                Ok(None) => break,
                Err(e) => {
                    let message = match e {
                        ProtocolError::MultibulkLength if !authenticated => {
                            "ERR Protocol error: unauthenticated multibulk length".to_string()
                        }
                        ProtocolError::BulkLength if !authenticated => {
                            "ERR Protocol error: unauthenticated bulk length".to_string()
                        }
                        e => format!("ERR {e}"),
                    };
                    Outgoing { close: true, ..Outgoing::new(Pending::error(&message), None, Instant::now()) }
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
    proxy: Arc<Proxy>,
}

impl<W: AsyncWrite + Unpin> Output<W> {
    /// Writes what is buffered; false if the connection failed or the client was killed.
    async fn write_out(&mut self) -> bool {
        if self.out.is_empty() {
            return true;
        }
        let Output { writer, out, client, .. } = self;
        let written = matches!(client.kill.unless_killed(writer.write_all(out)).await, Some(Ok(())));
        self.proxy.stats.count_write(self.out.len());
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
        matches!(self.client.kill.unless_killed(self.writer.flush()).await, Some(Ok(())))
    }
}

/// What the writer handles next.
enum Next {
    Reply(QueuedReply),
    Push((Bytes, u64)),
}

/// Pushed frames that wait for the replies of commands sent before they were queued
/// ([`crate::clients::PushSender::push_after_dispatched`]), in the order they came.
#[derive(Default)]
struct HeldPushes {
    frames: VecDeque<(Bytes, u64)>,
    /// Replies handed over so far (the writer's count of the reader's `dispatched`).
    answered: u64,
}

impl HeldPushes {
    /// `frame` if it may be written now; otherwise it is held (and so is everything after a
    /// held frame, to keep the order).
    fn admit(&mut self, (frame, after): (Bytes, u64)) -> Option<Bytes> {
        if self.frames.is_empty() && after <= self.answered {
            return Some(frame);
        }
        self.frames.push_back((frame, after));
        None
    }

    /// One more reply was handed over: the frames it held back that may go now.
    fn answered_one(&mut self) -> Vec<Bytes> {
        self.answered += 1;
        let mut ready = Vec::new();
        while self.frames.front().is_some_and(|(_, after)| *after <= self.answered) {
            ready.extend(self.frames.pop_front().map(|(frame, _)| frame));
        }
        ready
    }
}

async fn write_replies<W: AsyncWrite + Unpin>(
    proxy: Arc<Proxy>,
    client: Arc<ClientHandle>,
    writer: W,
    mut rx: mpsc::UnboundedReceiver<QueuedReply>,
    mut pushes: PushReceiver,
    gone: CancellationToken,
    _pending: Arc<tokio::sync::Semaphore>,
) {
    let mut output =
        Output { writer, out: BytesMut::with_capacity(16 * 1024), client: client.clone(), proxy: proxy.clone() };
    let limit = proxy.cfg.client_output_buffer_limit;
    let mut held = HeldPushes::default();
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
                if let Some(frame) = held.admit(frame) {
                    if !output.append(&frame).await {
                        return;
                    }
                }
                continue;
            }
            Next::Reply(item) => item,
        };
        let Outgoing { pending, command, started, close, rejected, silent, raw, .. } = item;
        let blocking = command.as_ref().is_some_and(|c| c.flags.blocking);
        let mut resolving = std::pin::pin!(async {
            tokio::select! {
                biased;
                reply = pending.resolve() => Some(reply),
                // A blocked client that went away waits for nothing: dropping its pending reply
                // ends the wait, as Redis unblocks a client it frees. Replies of other commands
                // are still written, for a client that only shut down its sending side.
                _ = gone.cancelled(), if blocking => None,
            }
        });
        // Checked before resolving: a killed client's deferred work (a PUBLISH, say) never runs.
        if client.kill.is_cancelled() {
            return;
        }
        let resolved = match poll_once(resolving.as_mut()).await {
            Poll::Ready(reply) => Some(reply),
            Poll::Pending => {
                // Not there yet: the replies already buffered go out first. A client that keeps
                // a pipeline full would otherwise hear nothing until the buffer filled
                // (`FLUSH_AT`): 13,000 `+OK`s, seconds at a few thousand writes per second.
                if !output.flush().await {
                    return;
                }
                client.kill.race(resolving).await
            }
        };
        let Some(Some(reply)) = resolved else { return };
        drop(permit);
        let elapsed = started.elapsed();
        if let Some(cmd) = &command {
            let is_error = matches!(reply.first(), Some(b'-') | Some(b'!'));
            if is_error { &cmd.metrics.err } else { &cmd.metrics.ok }.increment(1);
            cmd.metrics.latency.record(elapsed.as_secs_f64());
        }
        let counted =
            Reply { command: command.as_deref().map(|c| (&c.stats, c.kind())), rejected, elapsed, bytes: &reply };
        proxy.stats.count_reply(counted, || {
            let args = Request::reparse(&raw).map(|request| request.args).unwrap_or_default();
            (args, client.addr.to_string(), client.name.lock().unwrap().clone().unwrap_or_default())
        });
        // Pub/sub frames queued before this reply was ready go first: a message published
        // before an UNSUBSCRIBE took effect precedes its confirmation, as in Redis.
        while let Some(frame) = pushes.try_recv() {
            if let Some(frame) = held.admit(frame) {
                if !output.append(&frame).await {
                    return;
                }
            }
        }
        if !silent && limit > 0 && output.out.len() + reply.len() > limit {
            tracing::warn!(client = client.id, addr = %client.addr, "client output buffer limit ({limit} bytes) reached; closing the connection");
            client.kill.cancel();
            return;
        }
        if !silent && !output.append(&reply).await {
            return;
        }
        for frame in held.answered_one() {
            if !output.append(&frame).await {
                return;
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(text: &'static str) -> Bytes {
        Bytes::from_static(text.as_bytes())
    }

    #[test]
    fn a_push_waits_for_the_replies_sent_before_it_and_keeps_its_order() {
        let mut held = HeldPushes::default();
        assert_eq!(held.admit((frame("pubsub"), 0)), Some(frame("pubsub")), "unstamped: at once");
        // Queued while commands 1 and 2 were in flight.
        assert_eq!(held.admit((frame("a"), 2)), None);
        // Free to go on its own, but behind a held frame.
        assert_eq!(held.admit((frame("b"), 0)), None);
        assert!(held.answered_one().is_empty(), "reply 1 written: `a` still waits for reply 2");
        assert_eq!(held.answered_one(), vec![frame("a"), frame("b")]);
        assert_eq!(held.admit((frame("c"), 2)), Some(frame("c")), "its replies are out");
        assert_eq!(held.admit((frame("d"), 3)), None);
        assert_eq!(held.answered_one(), vec![frame("d")]);
    }
}

//! The journal node server (`memlog journal`): accepts pipelined connections and drives the
//! storage engine. One task reads a connection's requests in order and queues each on the
//! storage at once (so appends from one connection keep their order); replies go back through
//! one writer task per connection, tagged with their request id. An append's reply is queued by
//! the stream's writer thread itself, the moment the append is durable: no task in between.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::AbortHandle;

use crate::cluster_tls::{self, Reloaded, Role, ServerTls, TlsError};
use crate::error::NodeError;
use crate::protocol::{self, Request, Response};
use crate::storage::{Storage, StorageOptions};

/// What `memlog journal` is started with.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// Directory holding this node's segments and fencing state.
    pub dir: PathBuf,
    /// Address the node listens on.
    pub listen: SocketAddr,
    /// Where to serve Prometheus metrics, if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// Size at which a stream's segment file is closed and the next one begun.
    pub segment_bytes: u64,
    /// Most streams the node holds; a request creating one more is refused.
    pub max_streams: usize,
    /// Mutual TLS (the cluster identity), or none with `--insecure-no-tls`.
    pub security: Security,
    pub limits: NodeLimits,
}

/// Who may talk to the node.
#[derive(Clone)]
pub enum Security {
    /// Mutual TLS: only cluster members get a request read; the role decides what they may do.
    Tls(Arc<ServerTls>),
    /// Anyone who connects may do anything (`--insecure-no-tls`, logged loudly at start).
    InsecureNoTls,
}

impl Security {
    /// Re-reads the certificate files, if the node has any.
    fn reload(&self) -> Result<Reloaded, TlsError> {
        match self {
            Security::Tls(tls) => tls.reload().map(|()| Reloaded::Certificates),
            Security::InsecureNoTls => Ok(Reloaded::NothingConfigured),
        }
    }
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Security::Tls(_) => "Tls",
            Security::InsecureNoTls => "InsecureNoTls",
        })
    }
}

/// What one node spends on its peers, so no peer's bytes or connections grow it without bound.
#[derive(Debug, Clone, Copy)]
pub struct NodeLimits {
    /// Authenticated connections served at once; one more is closed at once.
    pub max_connections: usize,
    /// Connections still in their TLS handshake at once; one more is closed at once, so
    /// peers without a certificate can never take the slots of members.
    pub max_handshakes: usize,
    /// A handshake not finished by then is cut.
    pub handshake_timeout: Duration,
    /// A connection with nothing received, nothing in flight and no subscription for this
    /// long is closed (its client reconnects on its next call).
    pub idle_timeout: Duration,
    /// Requests of one connection being served at once; past it the node stops reading the
    /// connection until one finishes (backpressure on the peer, no queue).
    pub max_in_flight: usize,
}

impl Default for NodeLimits {
    fn default() -> Self {
        NodeLimits {
            max_connections: 1024,
            max_handshakes: 256,
            handshake_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(600),
            max_in_flight: 1024,
        }
    }
}

/// Largest payload total a read or a subscription batch gathers, so a reply stays under the frame cap.
const MAX_READ_BYTES: usize = 16 * 1024 * 1024;

/// Payload bytes a subscription reads per step.
const SUBSCRIPTION_CHUNK_BYTES: usize = 1024 * 1024;

/// Replies queued per connection before request handlers wait for the socket.
const REPLY_QUEUE: usize = 4096;

/// After a failed accept (e.g. out of file descriptors), wait this long instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Opens the storage (refusing to start on corruption) and serves until `shutdown` resolves.
pub async fn run(opts: NodeOptions, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    if let Some(addr) = opts.metrics_listen {
        // Buckets, not summaries, so dashboards can aggregate percentiles across nodes.
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Suffix("_seconds".into()),
                crate::LATENCY_BUCKETS,
            )?
            .with_http_listener(addr)
            .install()
            .with_context(|| format!("serving metrics on {addr}"))?;
    }
    let options = StorageOptions {
        segment_bytes: opts.segment_bytes,
        max_streams: opts.max_streams,
        ..StorageOptions::default()
    };
    // Fault injection exists only in test builds (docs/cluster-tls.md, "Failpoints").
    #[cfg(feature = "failpoints")]
    let options = options.with_failpoint_from_env().map_err(anyhow::Error::msg)?;
    if options.fail_fsync_after.is_some() {
        tracing::warn!(?options, "fault injection is on");
    }
    let security = opts.security.clone();
    cluster_tls::reload_on_sighup(move || security.reload())?;
    match &opts.security {
        Security::Tls(_) => {}
        Security::InsecureNoTls => tracing::warn!(
            listen = %opts.listen,
            "INSECURE: --insecure-no-tls: anyone who reaches this port can read, append, fence and truncate every stream"
        ),
    }
    raise_open_files_limit();
    let dir = opts.dir.clone();
    let storage = tokio::task::spawn_blocking(move || Storage::open(&dir, options))
        .await?
        .with_context(|| format!("opening journal directory {}", opts.dir.display()))?;
    let listener = TcpListener::bind(opts.listen).await.with_context(|| format!("listening on {}", opts.listen))?;
    tracing::info!(listen = %opts.listen, dir = %opts.dir.display(), security = ?opts.security, "journal node serving");
    serve(listener, Arc::new(storage), opts.security, opts.limits, shutdown).await
}

/// Each connection takes a file descriptor: raise the soft limit to the hard one, so the
/// connection limits, not the descriptor limit, decide what is refused.
fn raise_open_files_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read/write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// Accepts connections on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    storage: Arc<Storage>,
    security: Security,
    limits: NodeLimits,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    tokio::pin!(shutdown);
    let handshakes = Arc::new(Semaphore::new(limits.max_handshakes));
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        tokio::select! {
            _ = &mut shutdown => {
                tracing::info!("journal node shutting down");
                return Ok(());
            }
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) => {
                    let Ok(handshake) = Arc::clone(&handshakes).try_acquire_owned() else {
                        metrics::counter!(REFUSED_CONNECTIONS, "reason" => "handshakes").increment(1);
                        continue;
                    };
                    let _ = socket.set_nodelay(true);
                    let (storage, security, connections) = (Arc::clone(&storage), security.clone(), Arc::clone(&connections));
                    tokio::spawn(async move {
                        let Some((stream, role)) = admit(socket, peer, &security, limits.handshake_timeout).await else { return };
                        drop(handshake);
                        let Ok(slot) = connections.try_acquire_owned() else {
                            metrics::counter!(REFUSED_CONNECTIONS, "reason" => "connections").increment(1);
                            tracing::warn!(%peer, max = limits.max_connections, "connection refused: too many connections");
                            return;
                        };
                        serve_connection(stream, peer, role, storage, limits, slot).await;
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
        }
    }
}

/// Connections closed before a request was read, by reason.
pub const REFUSED_CONNECTIONS: &str = "memlog_journal_refused_connections_total";

/// A byte stream to a peer, plain or TLS.
trait PeerStream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> PeerStream for T {}

/// Runs the TLS handshake (the client's certificate checked by the cluster CA and its role);
/// `None` if the peer is not a member. Nothing is read from a peer before this succeeds.
async fn admit(
    socket: TcpStream,
    peer: SocketAddr,
    security: &Security,
    timeout: Duration,
) -> Option<(Box<dyn PeerStream>, Role)> {
    let tls = match security {
        Security::InsecureNoTls => return Some((Box::new(socket), Role::Proxy)),
        Security::Tls(tls) => tls,
    };
    let refused = |reason: String| {
        metrics::counter!(REFUSED_CONNECTIONS, "reason" => "handshake").increment(1);
        tracing::debug!(%peer, %reason, "TLS handshake refused");
        None
    };
    match tokio::time::timeout(timeout, tls.acceptor().accept(cluster_tls::buffered(socket))).await {
        Err(_) => refused("timed out".into()),
        Ok(Err(e)) => refused(e.to_string()),
        Ok(Ok(stream)) => {
            let role = stream.get_ref().1.peer_certificates().and_then(|chain| chain.first()).and_then(Role::of);
            match role {
                Some(role) => Some((Box::new(stream), role)),
                None => refused("no role in the client certificate".into()),
            }
        }
    }
}

/// Serves one connection until the peer closes it, sends a bad frame or stays idle.
async fn serve_connection(
    stream: Box<dyn PeerStream>,
    peer: SocketAddr,
    role: Role,
    storage: Arc<Storage>,
    limits: NodeLimits,
    _slot: OwnedSemaphorePermit,
) {
    let (reader, writer) = tokio::io::split(stream);
    let (replies, queue) = mpsc::channel(REPLY_QUEUE);
    let (acks, ack_queue) = mpsc::unbounded_channel();
    let writer = tokio::spawn(write_replies(writer, queue, ack_queue));
    let mut connection = Connection {
        storage,
        role,
        replies,
        acks,
        subscriptions: HashMap::new(),
        in_flight: Arc::new(Semaphore::new(limits.max_in_flight)),
        max_in_flight: limits.max_in_flight,
    };
    match connection.read_requests(reader, limits.idle_timeout).await {
        Ok(()) => tracing::debug!(%peer, "connection ended by the peer"),
        Err(reason) => tracing::warn!(%peer, %reason, "closing connection"),
    }
    connection.subscriptions.values().for_each(AbortHandle::abort);
    drop(connection);
    // The writer ends once every in-flight request has replied.
    let _ = writer.await;
}

/// The state of one connection's request loop.
struct Connection {
    storage: Arc<Storage>,
    /// What the peer's certificate allows it.
    role: Role,
    replies: mpsc::Sender<Bytes>,
    /// Append replies, queued by the streams' writer threads. Unbounded, as a thread cannot wait
    /// on a slow peer, but each holds an in-flight permit until it is written: at most
    /// `max_in_flight` of them.
    acks: mpsc::UnboundedSender<Ack>,
    subscriptions: HashMap<u64, AbortHandle>,
    /// One permit per request being served.
    in_flight: Arc<Semaphore>,
    max_in_flight: usize,
}

impl Connection {
    /// Reads and dispatches requests; `Err` (after replying) when a frame is bad.
    async fn read_requests(
        &mut self,
        mut reader: impl AsyncRead + Unpin,
        idle_timeout: Duration,
    ) -> Result<(), String> {
        let mut buf = BytesMut::with_capacity(64 * 1024);
        loop {
            loop {
                let frame = match protocol::split_frame(&mut buf) {
                    Ok(Some(frame)) => frame,
                    Ok(None) => break,
                    Err(error) => return Err(self.refuse(error).await),
                };
                let id = frame.request_id;
                match protocol::decode_request(frame) {
                    Ok(request) => self.authorize_and_dispatch(id, request).await,
                    Err(error) => return Err(self.refuse(error).await),
                }
            }
            match tokio::time::timeout(idle_timeout, reader.read_buf(&mut buf)).await {
                Ok(Ok(0)) => return Ok(()),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(format!("read: {e}")),
                Err(_) if self.is_idle() => return Err(format!("idle for {idle_timeout:?}")),
                Err(_) => {}
            }
        }
    }

    /// Replies to a bad frame with an error; nothing of it was acted on. Returns the reason to close.
    async fn refuse(&self, error: protocol::FrameError) -> String {
        let reply = Response::Error(NodeError::Protocol(error.to_string()));
        let _ = self.replies.send(encode(error.request_id(), &reply)).await;
        format!("bad frame: {error}")
    }

    /// Nothing in flight and no subscription.
    fn is_idle(&self) -> bool {
        self.subscriptions.values().all(AbortHandle::is_finished)
            && self.in_flight.available_permits() == self.max_in_flight
    }

    /// Refuses what the peer's role does not allow (only a proxy changes streams), else serves it.
    async fn authorize_and_dispatch(&mut self, id: u64, request: Request) {
        let changes_a_stream = matches!(
            request,
            Request::Append { .. }
                | Request::Fence { .. }
                | Request::TruncateAfter { .. }
                | Request::TruncateBelow { .. }
        );
        if changes_a_stream && self.role != Role::Proxy {
            let error = NodeError::Protocol(format!(
                "permission denied: a {:?} certificate may not change a stream",
                self.role
            ));
            let _ = self.replies.send(encode(id, &Response::Error(error))).await;
            return;
        }
        self.dispatch(id, request).await
    }

    async fn dispatch(&mut self, id: u64, request: Request) {
        match request {
            Request::Append { stream, entry } => {
                let Ok(permit) = Arc::clone(&self.in_flight).acquire_owned().await else { return };
                let acks = self.acks.clone();
                let done = move |outcome: Result<(), NodeError>| {
                    let response = outcome.map_or_else(Response::Error, |()| Response::Done);
                    let _ = acks.send(Ack { frame: encode(id, &response), _permit: permit });
                };
                self.storage.append_then(&stream, entry, Box::new(done));
            }
            Request::Fence { stream, epoch } => {
                self.reply_later(id, self.storage.fence(&stream, epoch), Response::Tail).await
            }
            Request::TruncateAfter { stream, epoch, lsn } => {
                self.reply_later(id, self.storage.truncate_after(&stream, epoch, lsn), |()| Response::Done).await
            }
            Request::TruncateBelow { stream, epoch, lsn } => {
                self.reply_later(id, self.storage.truncate_below(&stream, epoch, lsn), |()| Response::Done).await
            }
            Request::Read { stream, from_lsn, to_lsn, max_bytes } => {
                let storage = Arc::clone(&self.storage);
                let max_bytes = usize::try_from(max_bytes).unwrap_or(usize::MAX).min(MAX_READ_BYTES);
                let read = async move {
                    tokio::task::spawn_blocking(move || storage.read(&stream, from_lsn, to_lsn, max_bytes))
                        .await
                        .map_err(|e| NodeError::Storage(format!("read task failed: {e}")))?
                };
                self.reply_later(id, read, Response::Entries).await
            }
            Request::Subscribe { stream, from_lsn } => match self.storage.watch(&stream) {
                Ok(progress) => {
                    let _ = self.replies.send(encode(id, &Response::Done)).await;
                    let task =
                        subscription(Arc::clone(&self.storage), stream, from_lsn, progress, id, self.replies.clone());
                    self.subscriptions.insert(id, tokio::spawn(task).abort_handle());
                }
                Err(error) => {
                    let _ = self.replies.send(encode(id, &Response::Error(error))).await;
                }
            },
            Request::Unsubscribe { subscription_id } => {
                if let Some(task) = self.subscriptions.remove(&subscription_id) {
                    task.abort();
                }
            }
            Request::Status => {
                let _ = self.replies.send(encode(id, &Response::Status(self.storage.status()))).await;
            }
        }
    }

    /// Replies to `id` when `operation` (already queued on the storage) finishes. Waits first
    /// for a free in-flight slot, so a peer that pipelines without bound is stopped being read.
    async fn reply_later<T>(
        &self,
        id: u64,
        operation: impl Future<Output = Result<T, NodeError>> + Send + 'static,
        to_response: impl FnOnce(T) -> Response + Send + 'static,
    ) {
        let replies = self.replies.clone();
        let Ok(permit) = Arc::clone(&self.in_flight).acquire_owned().await else { return };
        tokio::spawn(async move {
            let response = match operation.await {
                Ok(value) => to_response(value),
                Err(error) => Response::Error(error),
            };
            let _ = replies.send(encode(id, &response)).await;
            drop(permit);
        });
    }
}

/// Pushes the stream's durable entries from `from_lsn` on, then each new one, until the
/// connection goes away; ends with an error reply if the tail it pushed is truncated.
async fn subscription(
    storage: Arc<Storage>,
    stream: String,
    from_lsn: u64,
    mut progress: tokio::sync::watch::Receiver<crate::storage::Progress>,
    id: u64,
    replies: mpsc::Sender<Bytes>,
) {
    let mut next = from_lsn.max(1);
    let truncations = progress.borrow().truncations;
    loop {
        let now = *progress.borrow_and_update();
        if now.truncations != truncations {
            let error = NodeError::Protocol(format!(
                "stream {stream} was truncated after lsn {}; subscribe again",
                now.last_lsn
            ));
            let _ = replies.send(encode(id, &Response::Error(error))).await;
            return;
        }
        if next <= now.last_lsn {
            let (storage, name) = (Arc::clone(&storage), stream.clone());
            let read =
                tokio::task::spawn_blocking(move || storage.read(&name, next, now.last_lsn, SUBSCRIPTION_CHUNK_BYTES))
                    .await
                    .unwrap_or_else(|e| Err(NodeError::Storage(format!("read task failed: {e}"))));
            match read {
                Ok(entries) => {
                    for entry in entries {
                        next = entry.lsn + 1;
                        if replies.send(encode(id, &Response::Pushed(entry))).await.is_err() {
                            return;
                        }
                    }
                }
                Err(error) => {
                    let _ = replies.send(encode(id, &Response::Error(error))).await;
                    return;
                }
            }
            continue;
        }
        if progress.changed().await.is_err() {
            return;
        }
    }
}

fn encode(id: u64, response: &Response) -> Bytes {
    let mut out = BytesMut::new();
    protocol::encode_response(id, response, &mut out);
    out.freeze()
}

/// An append's reply, with the in-flight permit it frees once written.
struct Ack {
    frame: Bytes,
    _permit: OwnedSemaphorePermit,
}

/// Writes reply frames, coalescing whatever is queued into one write, until both queues end.
async fn write_replies(
    mut writer: impl AsyncWrite + Unpin,
    mut replies: mpsc::Receiver<Bytes>,
    mut acks: mpsc::UnboundedReceiver<Ack>,
) {
    let mut batch = BytesMut::with_capacity(64 * 1024);
    // Append replies in `batch`, whose in-flight permits are freed once it is written.
    let mut written_acks = Vec::new();
    let (mut replies_open, mut acks_open) = (true, true);
    while replies_open || acks_open {
        let mut take_ack = |ack: Ack| {
            let frame = ack.frame.clone();
            written_acks.push(ack);
            frame
        };
        let first = tokio::select! {
            frame = replies.recv(), if replies_open => frame.or_else(|| { replies_open = false; None }),
            ack = acks.recv(), if acks_open => ack.map(&mut take_ack).or_else(|| { acks_open = false; None }),
        };
        let Some(first) = first else { continue };
        protocol::coalesce(&mut batch, &first, || {
            acks.try_recv().ok().map(&mut take_ack).or_else(|| replies.try_recv().ok())
        });
        // A TLS stream may keep the last records of a write until it is flushed (tokio-rustls
        // does when the socket would block mid-write), and the peer waits for them.
        if writer.write_all(&batch).await.is_err() || writer.flush().await.is_err() {
            return;
        }
        batch.clear();
        written_acks.clear();
    }
    let _ = writer.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_io::{delivers, HeldUntilFlush};

    /// As the client's requests (see `node_client`): a reply is flushed once written, so a TLS
    /// stream cannot keep its last records until the next reply.
    #[tokio::test]
    async fn a_reply_reaches_the_peer_without_waiting_for_the_next_one() {
        let stream = HeldUntilFlush::default();
        let delivered = Arc::clone(&stream.delivered);
        let (replies, queue) = mpsc::channel(1);
        let (acks, ack_queue) = mpsc::unbounded_channel();
        let writer = tokio::spawn(write_replies(stream, queue, ack_queue));
        replies.send(Bytes::from_static(b"4 MiB of entries")).await.expect("writer running");
        assert!(delivers(&delivered, b"4 MiB of entries").await, "the reply stayed in the stream's buffer");
        drop((replies, acks));
        writer.await.expect("writer task");
    }
}

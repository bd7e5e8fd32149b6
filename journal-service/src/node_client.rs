//! A client for one journal node: one pipelined connection (mutual TLS unless the transport
//! is plain, see `cluster_tls`), shared by every clone.
//!
//! Calls are queued on the connection when they are made (not when their future is first
//! polled), so calls made in order from one task reach the node in that order — a writer can
//! pipeline `append(n)`, `append(n+1)` and join them. A dead connection fails every in-flight
//! call with `Unreachable`; the next call opens a new one, so a restarted node is usable again.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, Notify};

use crate::cluster_tls::{self, ClientTls, Transport};
use crate::entry::{Entry, NodeStatus, StreamTail};
use crate::error::NodeError;
use crate::protocol::{self, Request, Response};

/// How long a call waits for its reply unless the client was built with another timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The slowest transfer a call's deadline allows for, on top of the timeout: an entry of many
/// megabytes gets the time to cross a busy link and be fsynced (64 MiB: 8 s more).
pub const SLOWEST_BYTES_PER_SEC: f64 = 8.0 * 1024.0 * 1024.0;

/// The time `len` bytes may take at [`SLOWEST_BYTES_PER_SEC`].
pub fn transfer_allowance(len: usize) -> Duration {
    Duration::from_secs_f64(len as f64 / SLOWEST_BYTES_PER_SEC)
}

/// How many pushed entries a subscription buffers before the connection waits for its reader.
const SUBSCRIPTION_BUFFER: usize = 1024;

/// A cheap-to-clone handle on one pipelined connection to a journal node.
#[derive(Clone)]
pub struct NodeClient {
    inner: Arc<Inner>,
}

struct Inner {
    addr: SocketAddr,
    transport: Transport,
    timeout: Duration,
    next_id: AtomicU64,
    /// Entry bytes of the appends sent and not answered yet. They cross the connection and are
    /// fsynced before any append sent after them, so each call's deadline allows for them too.
    queued_bytes: AtomicUsize,
    connection: Mutex<Option<Arc<Connection>>>,
}

/// One TCP connection: the frames to send and the calls awaiting replies.
struct Connection {
    outgoing: mpsc::UnboundedSender<Bytes>,
    calls: Mutex<CallTable>,
    /// Notified when the last client clone drops, so the driver task and socket go away.
    closed: Notify,
}

struct CallTable {
    /// Set once the connection has failed; no call may register after that.
    dead: bool,
    waiters: HashMap<u64, Waiter>,
}

/// Who gets the replies tagged with one request id.
enum Waiter {
    Call(oneshot::Sender<Result<Response, NodeError>>),
    Subscription { established: Option<oneshot::Sender<Result<Response, NodeError>>>, entries: EntrySender },
}

type EntrySender = mpsc::Sender<Result<Entry, NodeError>>;

impl NodeClient {
    /// A client for the node at `addr`, reached over `transport`; connects on first use.
    pub fn new(addr: SocketAddr, transport: Transport) -> NodeClient {
        NodeClient::with_timeout(addr, transport, DEFAULT_TIMEOUT)
    }

    /// Like `new`, with the time a call (or a connect) may take before it fails with `Timeout`.
    pub fn with_timeout(addr: SocketAddr, transport: Transport, timeout: Duration) -> NodeClient {
        let connection = Mutex::new(None);
        NodeClient {
            inner: Arc::new(Inner {
                addr,
                transport,
                timeout,
                next_id: AtomicU64::new(1),
                queued_bytes: AtomicUsize::new(0),
                connection,
            }),
        }
    }

    /// The node's address.
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// Appends `entry` to `stream`; resolves `Ok` only once the node has fsync'd it.
    pub fn append(&self, stream: &str, entry: Entry) -> impl Future<Output = Result<(), NodeError>> + Send + 'static {
        let call = self.call(Request::Append { stream: stream.to_string(), entry });
        async move { expect_done(call.await?) }
    }

    /// Raises the stream's fenced epoch to `epoch` (never lowers it), durably, and returns the node's tail.
    /// Fails with `Fenced` if the node is already fenced above `epoch`.
    pub fn fence(
        &self,
        stream: &str,
        epoch: u64,
    ) -> impl Future<Output = Result<StreamTail, NodeError>> + Send + 'static {
        let call = self.call(Request::Fence { stream: stream.to_string(), epoch });
        async move {
            match call.await? {
                Response::Tail(tail) => Ok(tail),
                other => Err(unexpected(other)),
            }
        }
    }

    /// Durable entries with `from_lsn <= lsn <= to_lsn`, stopping once `max_bytes` of payload is
    /// gathered (at least one entry if any). Fails if `from_lsn` was truncated away.
    pub fn read(
        &self,
        stream: &str,
        from_lsn: u64,
        to_lsn: u64,
        max_bytes: usize,
    ) -> impl Future<Output = Result<Vec<Entry>, NodeError>> + Send + 'static {
        let call =
            self.call(Request::Read { stream: stream.to_string(), from_lsn, to_lsn, max_bytes: max_bytes as u64 });
        async move {
            match call.await? {
                Response::Entries(entries) => Ok(entries),
                other => Err(unexpected(other)),
            }
        }
    }

    /// Drops the entries after `lsn` (recovery of an unacknowledged tail); durable before `Ok`.
    /// Refused with `Fenced` if `epoch` is below the node's fenced epoch; raises it otherwise.
    pub fn truncate_after(
        &self,
        stream: &str,
        epoch: u64,
        lsn: u64,
    ) -> impl Future<Output = Result<(), NodeError>> + Send + 'static {
        let call = self.call(Request::TruncateAfter { stream: stream.to_string(), epoch, lsn });
        async move { expect_done(call.await?) }
    }

    /// Lets the node drop whole segments holding only entries below `lsn` (after a snapshot).
    /// On a stream holding nothing at or above `lsn`, the stream restarts empty at `lsn`.
    /// Refused with `Fenced` if `epoch` is below the node's fenced epoch (which it leaves alone).
    pub fn truncate_below(
        &self,
        stream: &str,
        epoch: u64,
        lsn: u64,
    ) -> impl Future<Output = Result<(), NodeError>> + Send + 'static {
        let call = self.call(Request::TruncateBelow { stream: stream.to_string(), epoch, lsn });
        async move { expect_done(call.await?) }
    }

    /// Streams the durable entries from `from_lsn` on, then each new one as it becomes durable.
    /// The channel ends (after an `Err` item when possible) if the connection or subscription fails.
    /// A slow reader holds back every reply on this connection: give long-lived subscriptions
    /// their own `NodeClient::new`. The subscription ends when the last clone of the client drops.
    pub async fn subscribe(
        &self,
        stream: &str,
        from_lsn: u64,
    ) -> Result<mpsc::Receiver<Result<Entry, NodeError>>, NodeError> {
        let (entries, receiver) = mpsc::channel(SUBSCRIPTION_BUFFER);
        let (established, reply) = oneshot::channel();
        let request = Request::Subscribe { stream: stream.to_string(), from_lsn };
        let id = self.start(&request, Waiter::Subscription { established: Some(established), entries })?;
        expect_done(self.wait(id, reply, self.inner.timeout).await?)?;
        Ok(receiver)
    }

    /// Every stream the node holds, with its tail.
    pub fn status(&self) -> impl Future<Output = Result<NodeStatus, NodeError>> + Send + 'static {
        let call = self.call(Request::Status);
        async move {
            match call.await? {
                Response::Status(status) => Ok(status),
                other => Err(unexpected(other)),
            }
        }
    }

    /// Queues `request` now and returns the future of its reply (`Error` replies become `Err`).
    fn call(&self, request: Request) -> impl Future<Output = Result<Response, NodeError>> + Send + 'static {
        let payload = match &request {
            Request::Append { entry, .. } => entry.payload.len(),
            _ => 0,
        };
        let queued = Queued::add(self.clone(), payload);
        let deadline = self.inner.timeout + transfer_allowance(queued.ahead_and_own);
        let (sender, reply) = oneshot::channel();
        let started = self.start(&request, Waiter::Call(sender));
        async move { queued.client.wait(started?, reply, deadline).await }
    }

    /// Registers the waiter and queues the frame on a live connection (opening one if needed).
    fn start(&self, request: &Request, waiter: Waiter) -> Result<u64, NodeError> {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let mut frame = BytesMut::new();
        protocol::encode_request(id, request, &mut frame);
        let mut slot = self.inner.connection.lock().expect("connection lock");
        loop {
            let connection = slot
                .get_or_insert_with(|| Connection::open(self.inner.addr, &self.inner.transport, self.inner.timeout))
                .clone();
            let mut calls = connection.calls.lock().expect("call table lock");
            if calls.dead {
                drop(calls);
                *slot = None;
                continue;
            }
            calls.waiters.insert(id, waiter);
            // A send error means the writer just died; the connection's failure path fails this call.
            let _ = connection.outgoing.send(frame.freeze());
            return Ok(id);
        }
    }

    /// Waits for the first reply to `id`, up to `deadline`.
    async fn wait(
        &self,
        id: u64,
        reply: oneshot::Receiver<Result<Response, NodeError>>,
        deadline: Duration,
    ) -> Result<Response, NodeError> {
        match tokio::time::timeout(deadline, reply).await {
            Ok(Ok(Ok(Response::Error(error)))) => Err(error),
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(NodeError::Unreachable(format!("{}: connection closed", self.inner.addr))),
            Err(_) => {
                self.forget(id);
                Err(NodeError::Timeout)
            }
        }
    }

    /// Drops the waiter of a call that timed out, so a late reply is ignored.
    fn forget(&self, id: u64) {
        if let Some(connection) = self.inner.connection.lock().expect("connection lock").as_ref() {
            connection.calls.lock().expect("call table lock").waiters.remove(&id);
        }
    }
}

/// One call's client, with the call's entry bytes counted in [`Inner::queued_bytes`] until the
/// call ends however it ends.
struct Queued {
    client: NodeClient,
    bytes: usize,
    /// The bytes queued when the call was sent, its own included.
    ahead_and_own: usize,
}

impl Queued {
    fn add(client: NodeClient, bytes: usize) -> Queued {
        let ahead_and_own = client.inner.queued_bytes.fetch_add(bytes, Ordering::AcqRel) + bytes;
        Queued { client, bytes, ahead_and_own }
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        self.client.inner.queued_bytes.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(connection) = self.connection.get_mut().ok().and_then(|slot| slot.take()) {
            connection.closed.notify_one();
        }
    }
}

fn expect_done(response: Response) -> Result<(), NodeError> {
    match response {
        Response::Done => Ok(()),
        other => Err(unexpected(other)),
    }
}

fn unexpected(response: Response) -> NodeError {
    NodeError::Protocol(format!("unexpected reply {response:?}"))
}

impl Connection {
    /// A connection whose driver task connects in the background; frames queue until it is up.
    fn open(addr: SocketAddr, transport: &Transport, timeout: Duration) -> Arc<Connection> {
        let (outgoing, frames) = mpsc::unbounded_channel();
        let connection = Arc::new(Connection {
            outgoing,
            calls: Mutex::new(CallTable { dead: false, waiters: HashMap::new() }),
            closed: Notify::new(),
        });
        tokio::spawn(Arc::clone(&connection).drive(addr, transport.clone(), timeout, frames));
        connection
    }

    async fn drive(
        self: Arc<Self>,
        addr: SocketAddr,
        transport: Transport,
        timeout: Duration,
        frames: mpsc::UnboundedReceiver<Bytes>,
    ) {
        let reason = match tokio::time::timeout(timeout, connect(addr, &transport)).await {
            Err(_) => format!("{addr}: connect timed out"),
            Ok(Err(e)) => format!("{addr}: connect: {e}"),
            Ok(Ok(stream)) => {
                let (reader, mut writer) = tokio::io::split(stream);
                let (reason, dropped) = tokio::select! {
                    reason = write_frames(&mut writer, frames) => (reason, false),
                    reason = self.read_replies(reader) => (reason, false),
                    _ = self.closed.notified() => ("client dropped".to_string(), true),
                };
                if dropped {
                    // An orderly close (TLS close_notify, then FIN): the node sees the end of a
                    // conversation, not a truncated stream.
                    let _ = tokio::time::timeout(timeout, writer.shutdown()).await;
                }
                format!("{addr}: {reason}")
            }
        };
        self.fail_all(reason);
    }

    /// Routes each reply to its waiter until the connection fails; returns why it did.
    async fn read_replies(&self, mut reader: impl AsyncRead + Unpin) -> String {
        let mut buf = BytesMut::with_capacity(64 * 1024);
        loop {
            loop {
                let frame = match protocol::split_frame(&mut buf) {
                    Ok(Some(frame)) => frame,
                    Ok(None) => break,
                    Err(e) => return format!("bad reply frame: {e}"),
                };
                let id = frame.request_id;
                match protocol::decode_response(frame) {
                    Ok(response) => self.deliver(id, response).await,
                    Err(e) => return format!("bad reply: {e}"),
                }
            }
            match reader.read_buf(&mut buf).await {
                Ok(0) => return "connection closed by node".to_string(),
                Ok(_) => {}
                Err(e) => return format!("read: {e}"),
            }
        }
    }

    async fn deliver(&self, id: u64, response: Response) {
        let entries = {
            let mut calls = self.calls.lock().expect("call table lock");
            let Some(waiter) = calls.waiters.get_mut(&id) else { return };
            match waiter {
                Waiter::Call(_) => {
                    if let Some(Waiter::Call(sender)) = calls.waiters.remove(&id) {
                        let _ = sender.send(Ok(response));
                    }
                    return;
                }
                Waiter::Subscription { established, entries } => {
                    if let Some(sender) = established.take() {
                        let failed = matches!(response, Response::Error(_));
                        let _ = sender.send(Ok(response));
                        if failed {
                            calls.waiters.remove(&id);
                        }
                        return;
                    }
                    entries.clone()
                }
            }
        };
        let item = match response {
            Response::Pushed(entry) => Ok(entry),
            Response::Error(error) => Err(error),
            other => Err(unexpected(other)),
        };
        let ended = item.is_err();
        if entries.send(item).await.is_err() || ended {
            self.calls.lock().expect("call table lock").waiters.remove(&id);
            if !ended {
                let mut frame = BytesMut::new();
                protocol::encode_request(id, &Request::Unsubscribe { subscription_id: id }, &mut frame);
                let _ = self.outgoing.send(frame.freeze());
            }
        }
    }

    /// Marks the connection dead and fails every waiter with `Unreachable`.
    fn fail_all(&self, reason: String) {
        let waiters = {
            let mut calls = self.calls.lock().expect("call table lock");
            calls.dead = true;
            std::mem::take(&mut calls.waiters)
        };
        tracing::debug!(%reason, "journal node connection failed");
        for waiter in waiters.into_values() {
            let error = NodeError::Unreachable(reason.clone());
            match waiter {
                Waiter::Call(sender) | Waiter::Subscription { established: Some(sender), .. } => {
                    let _ = sender.send(Err(error));
                }
                Waiter::Subscription { established: None, entries } => {
                    let _ = entries.try_send(Err(error));
                }
            }
        }
    }
}

/// A byte stream to a node, plain or TLS.
trait NodeStream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> NodeStream for T {}

/// Opens a TCP connection to `addr` and, with TLS, completes the handshake (the node's
/// certificate must be the cluster CA's and carry the journal role).
async fn connect(addr: SocketAddr, transport: &Transport) -> std::io::Result<Box<dyn NodeStream>> {
    let stream = TcpStream::connect(addr).await?;
    let _ = stream.set_nodelay(true);
    match transport {
        Transport::Plain => Ok(Box::new(stream)),
        Transport::Tls(tls) => {
            Ok(Box::new(tls.connector().connect(ClientTls::node_name(), cluster_tls::buffered(stream)).await?))
        }
    }
}

/// Writes queued frames, coalescing whatever is queued into one write; returns why it stopped.
async fn write_frames(writer: &mut (impl AsyncWrite + Unpin), mut frames: mpsc::UnboundedReceiver<Bytes>) -> String {
    let mut batch = BytesMut::with_capacity(64 * 1024);
    while let Some(frame) = frames.recv().await {
        crate::protocol::coalesce(&mut batch, &frame, || frames.try_recv().ok());
        // Flushed: a TLS stream may keep the last records of a write until then (tokio-rustls
        // does when the socket would block mid-write), and the node would never see the request.
        if let Err(e) = writer.write_all(&batch).await {
            return format!("write: {e}");
        }
        if let Err(e) = writer.flush().await {
            return format!("write: {e}");
        }
        batch.clear();
    }
    "client dropped".to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_io::{delivers, HeldUntilFlush};

    /// The replay stall of 2026-12-05: over TLS, a request's last records stayed in the stream
    /// until the next request was written, and a read waited out its 10 s timeout.
    #[tokio::test]
    async fn a_request_reaches_the_node_without_waiting_for_the_next_one() {
        let mut stream = HeldUntilFlush::default();
        let delivered = Arc::clone(&stream.delivered);
        let (frames, queue) = mpsc::unbounded_channel();
        let writer = tokio::spawn(async move { write_frames(&mut stream, queue).await });
        frames.send(Bytes::from_static(b"a read request")).expect("writer running");
        assert!(delivers(&delivered, b"a read request").await, "the request stayed in the stream's buffer");
        drop(frames);
        assert_eq!(writer.await.expect("writer task"), "client dropped");
    }
}

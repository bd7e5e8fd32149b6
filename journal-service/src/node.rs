//! The journal node server (`memlog journal`): accepts pipelined connections and drives the
//! storage engine. One task reads a connection's requests in order and queues each on the
//! storage at once (so appends from one connection keep their order); replies go back through
//! one writer task per connection, tagged with their request id.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

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
}

/// Largest payload total a read or a subscription batch gathers, so a reply stays under the frame cap.
const MAX_READ_BYTES: usize = 16 * 1024 * 1024;

/// Payload bytes a subscription reads per step.
const SUBSCRIPTION_CHUNK_BYTES: usize = 1024 * 1024;

/// Replies queued per connection before request handlers wait for the socket.
const REPLY_QUEUE: usize = 4096;

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
    let options = StorageOptions { segment_bytes: opts.segment_bytes, ..StorageOptions::default() }
        .with_failpoint_from_env()
        .map_err(anyhow::Error::msg)?;
    if options.fail_fsync_after.is_some() {
        tracing::warn!(?options, "fault injection is on");
    }
    let dir = opts.dir.clone();
    let storage = tokio::task::spawn_blocking(move || Storage::open(&dir, options))
        .await?
        .with_context(|| format!("opening journal directory {}", opts.dir.display()))?;
    let listener = TcpListener::bind(opts.listen).await.with_context(|| format!("listening on {}", opts.listen))?;
    tracing::info!(listen = %opts.listen, dir = %opts.dir.display(), "journal node serving");
    serve(listener, Arc::new(storage), shutdown).await
}

/// Accepts connections on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    storage: Arc<Storage>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => {
                tracing::info!("journal node shutting down");
                return Ok(());
            }
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) => {
                    let _ = socket.set_nodelay(true);
                    tokio::spawn(serve_connection(socket, peer, Arc::clone(&storage)));
                }
                Err(e) => tracing::warn!(error = %e, "accept failed"),
            },
        }
    }
}

/// Serves one connection until the peer closes it or sends a bad frame.
async fn serve_connection(socket: TcpStream, peer: SocketAddr, storage: Arc<Storage>) {
    let (reader, writer) = socket.into_split();
    let (replies, queue) = mpsc::channel(REPLY_QUEUE);
    let writer = tokio::spawn(write_replies(writer, queue));
    let mut connection = Connection { storage, replies, subscriptions: HashMap::new() };
    if let Err(reason) = connection.read_requests(reader).await {
        tracing::warn!(%peer, %reason, "closing connection");
    }
    connection.subscriptions.values().for_each(AbortHandle::abort);
    drop(connection);
    // The writer ends once every in-flight request has replied.
    let _ = writer.await;
}

/// The state of one connection's request loop.
struct Connection {
    storage: Arc<Storage>,
    replies: mpsc::Sender<Bytes>,
    subscriptions: HashMap<u64, AbortHandle>,
}

impl Connection {
    /// Reads and dispatches requests; `Err` (after replying) when a frame is bad.
    async fn read_requests(&mut self, mut reader: OwnedReadHalf) -> Result<(), String> {
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
                    Ok(request) => self.dispatch(id, request).await,
                    Err(error) => return Err(self.refuse(error).await),
                }
            }
            match reader.read_buf(&mut buf).await {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(format!("read: {e}")),
            }
        }
    }

    /// Replies to a bad frame with an error; nothing of it was acted on. Returns the reason to close.
    async fn refuse(&self, error: protocol::FrameError) -> String {
        let reply = Response::Error(NodeError::Protocol(error.to_string()));
        let _ = self.replies.send(encode(error.request_id(), &reply)).await;
        format!("bad frame: {error}")
    }

    async fn dispatch(&mut self, id: u64, request: Request) {
        match request {
            Request::Append { stream, entry } => {
                self.reply_later(id, self.storage.append(&stream, entry), |()| Response::Done)
            }
            Request::Fence { stream, epoch } => {
                self.reply_later(id, self.storage.fence(&stream, epoch), Response::Tail)
            }
            Request::TruncateAfter { stream, epoch, lsn } => {
                self.reply_later(id, self.storage.truncate_after(&stream, epoch, lsn), |()| Response::Done)
            }
            Request::TruncateBelow { stream, lsn } => {
                self.reply_later(id, self.storage.truncate_below(&stream, lsn), |()| Response::Done)
            }
            Request::Read { stream, from_lsn, to_lsn, max_bytes } => {
                let storage = Arc::clone(&self.storage);
                let max_bytes = (max_bytes as usize).min(MAX_READ_BYTES);
                let read = async move {
                    tokio::task::spawn_blocking(move || storage.read(&stream, from_lsn, to_lsn, max_bytes))
                        .await
                        .map_err(|e| NodeError::Storage(format!("read task failed: {e}")))?
                };
                self.reply_later(id, read, Response::Entries)
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

    /// Replies to `id` when `operation` (already queued on the storage) finishes.
    fn reply_later<T>(
        &self,
        id: u64,
        operation: impl Future<Output = Result<T, NodeError>> + Send + 'static,
        to_response: impl FnOnce(T) -> Response + Send + 'static,
    ) {
        let replies = self.replies.clone();
        tokio::spawn(async move {
            let response = match operation.await {
                Ok(value) => to_response(value),
                Err(error) => Response::Error(error),
            };
            let _ = replies.send(encode(id, &response)).await;
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

/// Writes reply frames, coalescing whatever is queued into one write.
async fn write_replies(mut writer: OwnedWriteHalf, mut queue: mpsc::Receiver<Bytes>) {
    let mut batch = BytesMut::with_capacity(64 * 1024);
    while let Some(frame) = queue.recv().await {
        protocol::coalesce(&mut batch, &frame, || queue.try_recv().ok());
        if writer.write_all(&batch).await.is_err() {
            return;
        }
        batch.clear();
    }
    let _ = writer.shutdown().await;
}

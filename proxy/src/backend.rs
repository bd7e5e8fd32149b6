//! Connections to Redis nodes. One `BackendConn` is one TCP connection shared by many client
//! sessions: requests are pipelined onto it and replies matched back in order, so a few
//! connections per node carry any number of clients. A connection reconnects with backoff; a
//! lost connection fails what was in flight (its outcome unknown), and while a node is
//! unreachable requests fail at once rather than hang.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use crate::resp::{encode_command, Proto};

/// Why a backend request produced no reply.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BackendError {
    #[error("Redis node {addr} is unreachable ({reason})")]
    Unreachable { addr: String, reason: String },
    #[error("connection to Redis node {addr} was lost; the command's outcome is unknown")]
    Lost { addr: String },
    #[error("Redis node {addr} did not answer within {ms} ms; the command's outcome is unknown")]
    Timeout { addr: String, ms: u64 },
    #[error("Redis node {addr} sent a reply that is not valid RESP")]
    BadReply { addr: String },
}

pub type ReplyResult = Result<Bytes, BackendError>;
pub type ReplySender = oneshot::Sender<ReplyResult>;

/// Timeouts of a backend connection.
#[derive(Debug, Clone, Copy)]
pub struct BackendOptions {
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
}

enum Op {
    Send(Bytes, ReplySender),
    /// Several commands in one buffer; all `count` replies come back together.
    Batch(Bytes, usize, BatchSender),
    /// Fires once every reply to requests sent before it has arrived.
    Barrier(oneshot::Sender<()>),
}

pub type BatchResult = Result<Vec<Bytes>, BackendError>;
pub type BatchSender = oneshot::Sender<BatchResult>;

enum Waiter {
    Reply(ReplySender, Instant),
    Batch { replies: Vec<Bytes>, count: usize, reply: BatchSender, sent: Instant },
    Barrier(oneshot::Sender<()>),
}

/// A handle to one pipelined connection; clones share the connection.
#[derive(Clone)]
pub struct BackendConn {
    ops: mpsc::UnboundedSender<Op>,
    addr: Arc<str>,
}

impl BackendConn {
    /// Starts the connection's task; it connects in the background and lives as long as a handle.
    pub fn spawn(addr: &str, proto: Proto, opts: BackendOptions) -> BackendConn {
        let (ops, rx) = mpsc::unbounded_channel();
        let addr: Arc<str> = addr.into();
        tokio::spawn(drive(addr.clone(), proto, opts, rx));
        BackendConn { ops, addr }
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Queues `request` (raw RESP bytes); its reply (or error) is sent to `reply`.
    pub fn send_to(&self, request: Bytes, reply: ReplySender) {
        if let Err(mpsc::error::SendError(Op::Send(_, reply))) = self.ops.send(Op::Send(request, reply)) {
            let _ = reply.send(Err(BackendError::Lost { addr: self.addr.to_string() }));
        }
    }

    pub fn send(&self, request: Bytes) -> oneshot::Receiver<ReplyResult> {
        let (tx, rx) = oneshot::channel();
        self.send_to(request, tx);
        rx
    }

    /// Sends `count` commands encoded back to back in `requests` and waits for all their replies.
    pub async fn call_batch(&self, requests: Bytes, count: usize) -> BatchResult {
        let (tx, rx) = oneshot::channel();
        if let Err(mpsc::error::SendError(Op::Batch(_, _, reply))) = self.ops.send(Op::Batch(requests, count, tx)) {
            let _ = reply.send(Err(BackendError::Lost { addr: self.addr.to_string() }));
        }
        rx.await.unwrap_or_else(|_| Err(BackendError::Lost { addr: self.addr.to_string() }))
    }

    /// Sends `args` as one command and waits for its reply.
    pub async fn call<A: AsRef<[u8]>>(&self, args: &[A]) -> ReplyResult {
        let rx = self.send(encode_command(args));
        rx.await.unwrap_or_else(|_| Err(BackendError::Lost { addr: self.addr.to_string() }))
    }

    /// Resolves once every reply to requests queued before it has arrived (or failed).
    pub fn barrier(&self) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        let _ = self.ops.send(Op::Barrier(tx));
        rx
    }
}

/// The connection's life: connect, serve until the connection breaks, back off, repeat.
async fn drive(addr: Arc<str>, proto: Proto, opts: BackendOptions, mut ops: mpsc::UnboundedReceiver<Op>) {
    let mut backoff = Duration::from_millis(10);
    loop {
        match connect(&addr, proto, opts).await {
            Ok(stream) => {
                backoff = Duration::from_millis(10);
                tracing::debug!(node = %addr, "connected to Redis node");
                if serve(&addr, stream, opts, &mut ops).await.is_none() {
                    return;
                }
                metrics::counter!("memlog_backend_errors_total", "node" => addr.to_string()).increment(1);
                tracing::warn!(node = %addr, "connection to Redis node lost; reconnecting");
            }
            Err(reason) => {
                metrics::counter!("memlog_backend_errors_total", "node" => addr.to_string()).increment(1);
                tracing::debug!(node = %addr, %reason, "cannot connect to Redis node");
                // Until the next attempt, requests fail at once: a client is better served by a
                // clear error than by a hang.
                let retry_at = tokio::time::sleep(backoff);
                tokio::pin!(retry_at);
                loop {
                    tokio::select! {
                        _ = &mut retry_at => break,
                        op = ops.recv() => match op {
                            None => return,
                            Some(Op::Send(_, reply)) => {
                                let _ = reply.send(Err(BackendError::Unreachable { addr: addr.to_string(), reason: reason.clone() }));
                            }
                            Some(Op::Batch(_, _, reply)) => {
                                let _ = reply.send(Err(BackendError::Unreachable { addr: addr.to_string(), reason: reason.clone() }));
                            }
                            Some(Op::Barrier(done)) => {
                                let _ = done.send(());
                            }
                        }
                    }
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

async fn connect(addr: &str, proto: Proto, opts: BackendOptions) -> Result<TcpStream, String> {
    let mut stream = tokio::time::timeout(opts.connect_timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| format!("connect timed out after {:?}", opts.connect_timeout))?
        .map_err(|e| e.to_string())?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    if proto == Proto::Resp3 {
        stream.write_all(&encode_command(&["HELLO", "3"])).await.map_err(|e| e.to_string())?;
        let mut buf = BytesMut::with_capacity(1024);
        let hello = loop {
            if let Some(len) = frame_len(&buf).map_err(|_| "bad HELLO 3 reply".to_string())? {
                break buf.split_to(len);
            }
            let read = tokio::time::timeout(opts.connect_timeout, stream.read_buf(&mut buf))
                .await
                .map_err(|_| "HELLO 3 timed out".to_string())?
                .map_err(|e| e.to_string())?;
            if read == 0 {
                return Err("closed during HELLO 3".into());
            }
        };
        if hello.first() == Some(&b'-') {
            return Err(format!("HELLO 3 refused: {}", String::from_utf8_lossy(&hello).trim()));
        }
    }
    Ok(stream)
}

/// Pipelines requests onto `stream` until it breaks; `None` once every handle is gone.
async fn serve(
    addr: &str,
    stream: TcpStream,
    opts: BackendOptions,
    ops: &mut mpsc::UnboundedReceiver<Op>,
) -> Option<()> {
    let (mut rd, mut wr) = stream.into_split();
    let inflight: Mutex<VecDeque<Waiter>> = Mutex::new(VecDeque::new());

    let writer = async {
        let mut out = BytesMut::with_capacity(16 * 1024);
        loop {
            let first = ops.recv().await?;
            out.clear();
            let mut waiters = Vec::new();
            let mut next = Some(first);
            while let Some(op) = next {
                match op {
                    Op::Send(bytes, reply) => {
                        out.extend_from_slice(&bytes);
                        waiters.push(Waiter::Reply(reply, Instant::now()));
                    }
                    Op::Batch(bytes, count, reply) => {
                        out.extend_from_slice(&bytes);
                        let replies = Vec::with_capacity(count);
                        waiters.push(Waiter::Batch { replies, count, reply, sent: Instant::now() });
                    }
                    Op::Barrier(done) => waiters.push(Waiter::Barrier(done)),
                }
                next = if out.len() < 256 * 1024 { ops.try_recv().ok() } else { None };
            }
            {
                let mut queue = inflight.lock().unwrap();
                for waiter in waiters {
                    match waiter {
                        Waiter::Barrier(done) if queue.is_empty() => {
                            let _ = done.send(());
                        }
                        waiter => queue.push_back(waiter),
                    }
                }
            }
            if !out.is_empty() && wr.write_all(&out).await.is_err() {
                return Some(());
            }
        }
    };

    let reader = async {
        let mut buf = BytesMut::with_capacity(64 * 1024);
        let mut scanner = FrameScanner::default();
        loop {
            if buf.capacity() - buf.len() < 16 * 1024 {
                buf.reserve(64 * 1024);
            }
            match tokio::time::timeout(opts.request_timeout, rd.read_buf(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return ReaderEnd::Lost,
                Ok(Ok(_)) => {}
                Err(_) => {
                    let queue = inflight.lock().unwrap();
                    if let Some(Waiter::Reply(_, sent) | Waiter::Batch { sent, .. }) = queue.front() {
                        if sent.elapsed() >= opts.request_timeout {
                            return ReaderEnd::TimedOut;
                        }
                    }
                    continue;
                }
            }
            let mut queue = inflight.lock().unwrap();
            loop {
                let len = match scanner.scan(&buf) {
                    Ok(Some(len)) => len,
                    Ok(None) => break,
                    Err(BadFrame) => return ReaderEnd::BadReply,
                };
                let frame = buf.split_to(len).freeze();
                match queue.front_mut() {
                    Some(Waiter::Batch { replies, count, .. }) => {
                        replies.push(frame);
                        if replies.len() == *count {
                            if let Some(Waiter::Batch { replies, reply, .. }) = queue.pop_front() {
                                let _ = reply.send(Ok(replies));
                            }
                        }
                    }
                    Some(Waiter::Reply(..)) => {
                        if let Some(Waiter::Reply(reply, _)) = queue.pop_front() {
                            let _ = reply.send(Ok(frame));
                        }
                    }
                    // A reply nobody asked for: the stream is out of step, so drop it.
                    _ => return ReaderEnd::BadReply,
                }
                while let Some(Waiter::Barrier(_)) = queue.front() {
                    if let Some(Waiter::Barrier(done)) = queue.pop_front() {
                        let _ = done.send(());
                    }
                }
            }
        }
    };

    let end = tokio::select! {
        done = writer => match done {
            None => return None,
            Some(()) => ReaderEnd::Lost,
        },
        end = reader => end,
    };
    let error = match end {
        ReaderEnd::Lost => BackendError::Lost { addr: addr.to_string() },
        ReaderEnd::TimedOut => {
            BackendError::Timeout { addr: addr.to_string(), ms: opts.request_timeout.as_millis() as u64 }
        }
        ReaderEnd::BadReply => BackendError::BadReply { addr: addr.to_string() },
    };
    for waiter in inflight.into_inner().unwrap() {
        match waiter {
            Waiter::Reply(reply, _) => {
                let _ = reply.send(Err(error.clone()));
            }
            Waiter::Batch { reply, .. } => {
                let _ = reply.send(Err(error.clone()));
            }
            Waiter::Barrier(done) => {
                let _ = done.send(());
            }
        }
    }
    Some(())
}

enum ReaderEnd {
    Lost,
    TimedOut,
    BadReply,
}

/// A reply that does not parse as RESP: the connection is out of step and must be dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadFrame;

/// Finds where a reply frame ends, for RESP2 and RESP3 alike (RESP3's grammar contains RESP2's
/// replies, `$-1` and `*-1` included), without allocating. It resumes where the last call
/// stopped, so a large reply arriving over many reads is scanned once.
#[derive(Debug, Default)]
pub struct FrameScanner {
    /// Offset of the first item not yet consumed.
    pos: usize,
    /// Items (frames inside aggregates) still to read; 0 = not started.
    pending: u64,
}

impl FrameScanner {
    /// Length of the first complete frame in `buf`, which must start with the same bytes as on
    /// the previous call; after `Some`, the scanner is reset for the next frame.
    pub fn scan(&mut self, buf: &[u8]) -> Result<Option<usize>, BadFrame> {
        if self.pending == 0 {
            if buf.is_empty() {
                return Ok(None);
            }
            *self = FrameScanner { pos: 0, pending: 1 };
        }
        while self.pending > 0 {
            let pos = self.pos;
            let Some(&kind) = buf.get(pos) else { return Ok(None) };
            let Some(line_end) = crate::resp::find_crlf(buf, pos + 1) else { return Ok(None) };
            let line = &buf[pos + 1..line_end];
            let mut next = line_end + 2;
            let count = |line: &[u8]| crate::resp::parse_int(line).ok_or(BadFrame);
            let more = match kind {
                b'+' | b'-' | b':' | b'_' | b'#' | b',' | b'(' => 0,
                b'$' | b'!' | b'=' => match count(line)? {
                    -1 if kind == b'$' => 0,
                    len if len >= 0 => {
                        let end = next + len as usize;
                        if buf.len() < end + 2 {
                            return Ok(None);
                        }
                        if &buf[end..end + 2] != b"\r\n" {
                            return Err(BadFrame);
                        }
                        next = end + 2;
                        0
                    }
                    _ => return Err(BadFrame),
                },
                b'*' | b'~' | b'>' | b'%' | b'|' => match count(line)? {
                    -1 if kind == b'*' => 0,
                    n if n >= 0 => match kind {
                        b'%' => 2 * n as u64,
                        // An attribute map comes before the reply it annotates.
                        b'|' => 2 * n as u64 + 1,
                        _ => n as u64,
                    },
                    _ => return Err(BadFrame),
                },
                _ => return Err(BadFrame),
            };
            self.pos = next;
            self.pending = self.pending - 1 + more;
        }
        let len = self.pos;
        *self = FrameScanner::default();
        Ok(Some(len))
    }
}

/// Length of the first complete reply frame in `buf`, if it holds one.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, BadFrame> {
    FrameScanner::default().scan(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_each_protocol() {
        assert_eq!(frame_len(b"$-1\r\n"), Ok(Some(5)));
        assert_eq!(frame_len(b"*-1\r\n"), Ok(Some(5)));
        assert_eq!(frame_len(b"*2\r\n$1\r\na\r\n:1\r\n+OK"), Ok(Some(15)));
        assert_eq!(frame_len(b"*2\r\n$1\r\na\r\n"), Ok(None));
        assert_eq!(frame_len(b"%1\r\n+a\r\n,1.5\r\n"), Ok(Some(14)));
        assert_eq!(frame_len(b"_\r\n"), Ok(Some(3)));
        assert_eq!(frame_len(b"-ERR x\r\n"), Ok(Some(8)));
        assert_eq!(frame_len(b"?\r\n"), Err(BadFrame));
        // A set holding a map, as COMMAND INFO answers in RESP3.
        assert_eq!(frame_len(b"~1\r\n%1\r\n$1\r\na\r\n~0\r\n:1"), Ok(Some(19)));
        assert_eq!(frame_len(b"|1\r\n+k\r\n+v\r\n:5\r\n"), Ok(Some(16)));
    }

    #[test]
    fn scanning_resumes_across_reads() {
        let frame = b"*3\r\n$5\r\nhello\r\n:1\r\n%1\r\n+a\r\n+b\r\n";
        for cut in 1..frame.len() {
            let mut scanner = FrameScanner::default();
            assert_eq!(scanner.scan(&frame[..cut]), Ok(None), "cut at {cut}");
            assert_eq!(scanner.scan(frame), Ok(Some(frame.len())));
        }
    }
}

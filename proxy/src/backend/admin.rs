//! The one client for conversations with a node outside the pipelined data path: a fresh
//! connection's set-up (`AUTH`, `HELLO 3`, `GET __memlog:lsn`), snapshot control (`CONFIG SET`,
//! `REPLICAOF`, `INFO` while a node loads), the keyspace relay (which ends up subscribed), and
//! the `memlog` CLI's probes. One request at a time; each reply is one whole RESP frame
//! (`resp::frame_len`), never larger than a bound, so a hostile or broken peer costs at most
//! that much memory. Connections are opened through [`NodeAccess`], like every other
//! connection to a node, so none of them can skip TLS or `AUTH`.
//!
//! The replication-protocol paths of snapshots (`SYNC`, serving a full sync) are not RESP
//! request/reply and keep their own code (`snapshot::rdb`).

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{BackendAuth, NodeAccess, NodeStream};
use crate::resp::{encode_command, frame_len};

/// The largest reply an admin connection takes by default: far above any `INFO` or keyspace
/// notification a node sends to memlog, far below what would hurt the proxy.
const DEFAULT_MAX_REPLY: usize = 64 * 1024 * 1024;

/// Why an admin conversation with a node failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    /// Connecting, the TLS handshake or `AUTH` failed.
    #[error("{addr} is unreachable ({reason})")]
    Unreachable { addr: String, reason: String },
    /// The connection broke or the peer closed it.
    #[error("connection to {addr} was lost")]
    Lost { addr: String },
    /// No whole reply within the connection's timeout.
    #[error("{addr} did not answer within {timeout:?}")]
    Timeout { addr: String, timeout: Duration },
    /// Not RESP, or a reply over the connection's bound.
    #[error("{addr} sent a malformed or oversized reply")]
    BadReply { addr: String },
    /// The node answered with an error reply (its text, without the `-`).
    #[error("{addr} refused: {message}")]
    Refused { addr: String, message: String },
}

/// One request/reply connection to a node (or to the proxy, for the CLI).
pub struct AdminConn<S = NodeStream> {
    addr: String,
    stream: S,
    /// Bytes read and not yet returned as a frame.
    buf: BytesMut,
    timeout: Duration,
    max_reply: usize,
}

impl AdminConn<NodeStream> {
    /// A connection to the node at `addr`, opened as `access` says (TLS when configured) and
    /// authenticated with its credentials; each step within `timeout`.
    pub async fn connect(addr: &str, timeout: Duration, access: &NodeAccess) -> Result<Self, AdminError> {
        let stream = access
            .open(addr, timeout)
            .await
            .map_err(|reason| AdminError::Unreachable { addr: addr.to_string(), reason })?;
        let mut conn = AdminConn::over(addr, stream, timeout);
        conn.authenticate(access.auth.as_deref()).await?;
        Ok(conn)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AdminConn<S> {
    /// An admin connection on a stream already open; `addr` names the peer in errors.
    pub fn over(addr: &str, stream: S, timeout: Duration) -> Self {
        AdminConn { addr: addr.to_string(), stream, buf: BytesMut::new(), timeout, max_reply: DEFAULT_MAX_REPLY }
    }

    /// The same connection, taking replies of at most `max_reply` bytes.
    pub fn with_max_reply(self, max_reply: usize) -> Self {
        AdminConn { max_reply, ..self }
    }

    /// The stream back, once the set-up conversation is over (nothing may be left unread).
    pub fn into_stream(self) -> S {
        debug_assert!(self.buf.is_empty(), "an admin connection handed on with unread bytes");
        self.stream
    }

    /// `AUTH [user] password` when there are credentials. The password is never part of an error.
    pub async fn authenticate(&mut self, auth: Option<&BackendAuth>) -> Result<(), AdminError> {
        match auth {
            Some(auth) => self.call_raw(&auth.auth_command()).await.map(drop),
            None => Ok(()),
        }
    }

    /// Sends one command and returns its reply frame; an error reply is `Refused`.
    pub async fn call<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Result<Bytes, AdminError> {
        self.call_raw(&encode_command(args)).await
    }

    /// Sends one command already encoded as RESP and returns its reply, as [`AdminConn::call`].
    pub async fn call_raw(&mut self, request: &[u8]) -> Result<Bytes, AdminError> {
        self.send_raw(request).await?;
        self.reply().await
    }

    /// Sends bytes already encoded as RESP (one command or a pipeline), flushed: a TLS stream
    /// (tokio-rustls) whose socket would block mid-write keeps the last records of the write
    /// until the next write or a flush, and the node would wait for them.
    pub async fn send_raw(&mut self, request: &[u8]) -> Result<(), AdminError> {
        let sent = async {
            self.stream.write_all(request).await?;
            self.stream.flush().await
        };
        match tokio::time::timeout(self.timeout, sent).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(self.lost()),
            Err(_) => Err(self.timed_out()),
        }
    }

    /// The next reply, within the timeout; an error reply is `Refused`.
    pub async fn reply(&mut self) -> Result<Bytes, AdminError> {
        let frame = match tokio::time::timeout(self.timeout, self.read_frame()).await {
            Ok(frame) => frame?,
            Err(_) => return Err(self.timed_out()),
        };
        match frame.strip_prefix(b"-") {
            Some(message) => Err(AdminError::Refused {
                addr: self.addr.clone(),
                message: String::from_utf8_lossy(message).trim_end().to_string(),
            }),
            None => Ok(frame),
        }
    }

    /// The next whole frame, however long it takes (a subscribed connection waits for pushes).
    /// Cancel-safe: bytes read stay buffered for the next call.
    pub async fn read_frame(&mut self) -> Result<Bytes, AdminError> {
        loop {
            match frame_len(&self.buf) {
                Ok(Some(len)) if len <= self.max_reply => return Ok(self.buf.split_to(len).freeze()),
                Ok(None) if self.buf.len() <= self.max_reply => {}
                Ok(_) | Err(_) => return Err(AdminError::BadReply { addr: self.addr.clone() }),
            }
            if self.buf.capacity() - self.buf.len() < 4096 {
                self.buf.reserve(16 * 1024);
            }
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return Err(self.lost()),
                Ok(_) => {}
            }
        }
    }

    fn lost(&self) -> AdminError {
        AdminError::Lost { addr: self.addr.clone() }
    }

    fn timed_out(&self) -> AdminError {
        AdminError::Timeout { addr: self.addr.clone(), timeout: self.timeout }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt};

    use super::*;

    const T: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn a_call_returns_the_reply_frame_and_an_error_reply_is_refused() {
        let (ours, mut node) = duplex(1024);
        let mut conn = AdminConn::over("node", ours, T);
        node.write_all(b"$5\r\nhello\r\n-ERR no such thing\r\n").await.unwrap();
        assert_eq!(&conn.call(&["GET", "k"]).await.unwrap()[..], b"$5\r\nhello\r\n");
        assert_eq!(
            conn.call(&["NOPE"]).await,
            Err(AdminError::Refused { addr: "node".into(), message: "ERR no such thing".into() })
        );
        let mut sent = vec![0; 64];
        let n = node.read(&mut sent).await.unwrap();
        assert_eq!(&sent[..n], b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*1\r\n$4\r\nNOPE\r\n");
    }

    #[tokio::test]
    async fn a_reply_split_across_reads_is_joined_and_the_next_one_stays_buffered() {
        let (ours, mut node) = duplex(1024);
        let mut conn = AdminConn::over("node", ours, T);
        let reading = tokio::spawn(async move {
            let first = conn.read_frame().await.unwrap();
            let second = conn.read_frame().await.unwrap();
            (first, second)
        });
        node.write_all(b"*2\r\n$3\r\nab").await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        node.write_all(b"c\r\n:7\r\n+OK\r\n").await.unwrap();
        let (first, second) = reading.await.unwrap();
        assert_eq!((&first[..], &second[..]), (&b"*2\r\n$3\r\nabc\r\n:7\r\n"[..], &b"+OK\r\n"[..]));
    }

    #[tokio::test]
    async fn an_oversized_or_malformed_reply_is_refused_without_waiting_for_it() {
        let (ours, mut node) = duplex(1 << 16);
        let mut conn = AdminConn::over("node", ours, T).with_max_reply(100);
        // Declares 1 MiB; refused once more than the bound is buffered, not after 1 MiB.
        node.write_all(b"$1048576\r\n").await.unwrap();
        node.write_all(&[b'x'; 200]).await.unwrap();
        assert_eq!(conn.read_frame().await, Err(AdminError::BadReply { addr: "node".into() }));
        let (ours, mut node) = duplex(1024);
        let mut conn = AdminConn::over("node", ours, T);
        node.write_all(b"?what\r\n").await.unwrap();
        assert_eq!(conn.read_frame().await, Err(AdminError::BadReply { addr: "node".into() }));
    }

    /// A stream that, like TLS whose socket would block mid-write, passes written bytes on only
    /// when flushed.
    struct HeldUntilFlush {
        inner: tokio::io::DuplexStream,
        held: Vec<u8>,
    }

    impl AsyncRead for HeldUntilFlush {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for HeldUntilFlush {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            self.held.extend_from_slice(buf);
            std::task::Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            let this = &mut *self;
            while !this.held.is_empty() {
                let n = std::task::ready!(std::pin::Pin::new(&mut this.inner).poll_write(cx, &this.held))?;
                this.held.drain(..n);
            }
            std::pin::Pin::new(&mut this.inner).poll_flush(cx)
        }

        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            self.poll_flush(cx)
        }
    }

    #[tokio::test]
    async fn a_request_is_flushed_so_a_stream_that_holds_writes_still_delivers_it() {
        let (ours, mut node) = duplex(1024);
        let mut conn = AdminConn::over("node", HeldUntilFlush { inner: ours, held: Vec::new() }, T);
        let answering = tokio::spawn(async move {
            let mut request = vec![0; 14];
            node.read_exact(&mut request).await.unwrap();
            node.write_all(b"+PONG\r\n").await.unwrap();
            request
        });
        assert_eq!(&conn.call(&["PING"]).await.unwrap()[..], b"+PONG\r\n");
        assert_eq!(answering.await.unwrap(), b"*1\r\n$4\r\nPING\r\n");
    }

    #[tokio::test]
    async fn silence_is_a_timeout_and_a_close_is_lost() {
        let (ours, node) = duplex(1024);
        let mut conn = AdminConn::over("node", ours, Duration::from_millis(50));
        assert_eq!(
            conn.call(&["PING"]).await,
            Err(AdminError::Timeout { addr: "node".into(), timeout: Duration::from_millis(50) })
        );
        drop(node);
        assert_eq!(conn.read_frame().await, Err(AdminError::Lost { addr: "node".into() }));
    }
}

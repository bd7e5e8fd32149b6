//! A pipelining RESP2 connection for `memlog import`: commands are queued, flushed together,
//! and their replies read in order, which is what makes bulk `RESTORE`, `DUMP` and `SCAN`
//! fast. The same connection speaks TLS (`rediss://`) and authenticates (`AUTH user password`).
//! Replies are decoded by redis-protocol; a reply over [`MAX_REPLY`] bytes is refused.

use std::time::Duration;

use bytes::BytesMut;
use redis_protocol::resp2::types::BytesFrame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::endpoint::Endpoint;
use crate::tls_client::Stream;

/// Largest reply accepted: a DUMP of Redis's largest string (512 MiB) and its framing.
const MAX_REPLY: usize = 600 << 20;
/// How long one reply (or the connect) may take before the peer is considered stuck.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("{addr}: {source}")]
    Io { addr: String, source: std::io::Error },
    #[error("{addr}: no reply within {REPLY_TIMEOUT:?}")]
    Timeout { addr: String },
    #[error("{addr}: connection closed")]
    Closed { addr: String },
    #[error("{addr}: malformed reply: {reason}")]
    Malformed { addr: String, reason: String },
    #[error(
        "{addr} closed the connection at the first command, without a reply: if it accepts only TLS, give a \
         rediss:// URL and the CA that signed its certificate"
    )]
    ClosedAtFirstCommand { addr: String },
    #[error("{addr}: {what} refused: {message}")]
    Refused { addr: String, what: String, message: String },
}

pub struct Conn {
    stream: Box<dyn Stream>,
    addr: String,
    inbuf: BytesMut,
    outbuf: BytesMut,
}

impl Conn {
    /// Connects, with TLS if the endpoint says so, and authenticates (or PINGs: a first reply
    /// proves the connection usable).
    pub async fn connect(endpoint: &Endpoint) -> Result<Conn, ConnError> {
        let addr = endpoint.addr();
        let io = |source| ConnError::Io { addr: addr.clone(), source };
        let tcp = tokio::time::timeout(REPLY_TIMEOUT, TcpStream::connect((endpoint.host.as_str(), endpoint.port)))
            .await
            .map_err(|_| ConnError::Timeout { addr: addr.clone() })?
            .map_err(io)?;
        tcp.set_nodelay(true).map_err(io)?;
        let stream: Box<dyn Stream> = match &endpoint.tls {
            None => Box::new(tcp),
            Some(config) => {
                let name = endpoint.server_name().ok_or_else(|| ConnError::Malformed {
                    addr: addr.clone(),
                    reason: "host is not a valid TLS server name".into(),
                })?;
                let connector = tokio_rustls::TlsConnector::from(config.clone());
                Box::new(connector.connect(name, tcp).await.map_err(io)?)
            }
        };
        let mut conn = Conn { stream, addr, inbuf: BytesMut::new(), outbuf: BytesMut::new() };
        let first = match &endpoint.password {
            Some(password) => {
                let user = endpoint.user.as_deref().unwrap_or("default");
                conn.call(&[b"AUTH", user.as_bytes(), password.as_bytes()]).await
            }
            None => conn.call(&[b"PING"]).await,
        };
        match first {
            // A server that accepts only TLS takes a plain command for a failed handshake and
            // closes the connection without a reply.
            Err(ConnError::Closed { addr } | ConnError::Io { addr, .. }) if endpoint.tls.is_none() => {
                Err(ConnError::ClosedAtFirstCommand { addr })
            }
            Err(e) => Err(e),
            Ok(_) => Ok(conn),
        }
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Queues a command; nothing is sent before [`Conn::flush`] or a reply is awaited.
    pub fn queue(&mut self, args: &[&[u8]]) {
        self.outbuf.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
        for arg in args {
            self.outbuf.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            self.outbuf.extend_from_slice(arg);
            self.outbuf.extend_from_slice(b"\r\n");
        }
    }

    pub async fn flush(&mut self) -> Result<(), ConnError> {
        if !self.outbuf.is_empty() {
            let out = self.outbuf.split();
            self.stream.write_all(&out).await.map_err(|source| ConnError::Io { addr: self.addr.clone(), source })?;
        }
        Ok(())
    }

    /// The next reply (an error reply is returned as a frame, for the caller to judge).
    pub async fn reply(&mut self) -> Result<BytesFrame, ConnError> {
        self.flush().await?;
        tokio::time::timeout(REPLY_TIMEOUT, self.read_frame())
            .await
            .map_err(|_| ConnError::Timeout { addr: self.addr.clone() })?
    }

    /// The next frame a subscribed connection pushes, however long it takes to come: on such a
    /// connection silence is normal (no writes at the source), so [`REPLY_TIMEOUT`] does not apply.
    pub async fn pushed(&mut self) -> Result<BytesFrame, ConnError> {
        self.flush().await?;
        self.read_frame().await
    }

    async fn read_frame(&mut self) -> Result<BytesFrame, ConnError> {
        Ok(self.read_sized_frame().await?.0)
    }

    /// The next frame and how many bytes of the stream it took (a replica's offset counts them).
    pub async fn read_sized_frame(&mut self) -> Result<(BytesFrame, usize), ConnError> {
        loop {
            match redis_protocol::resp2::decode::decode_bytes_mut(&mut self.inbuf) {
                Ok(Some((frame, len, _))) => return Ok((frame, len)),
                Ok(None) => {}
                Err(e) => return Err(ConnError::Malformed { addr: self.addr.clone(), reason: e.to_string() }),
            }
            if self.inbuf.len() > MAX_REPLY {
                return Err(ConnError::Malformed { addr: self.addr.clone(), reason: "reply too large".into() });
            }
            self.fill().await?;
        }
    }

    /// Reads more of the stream into the input buffer.
    async fn fill(&mut self) -> Result<(), ConnError> {
        self.inbuf.reserve(64 * 1024);
        let n = self
            .stream
            .read_buf(&mut self.inbuf)
            .await
            .map_err(|source| ConnError::Io { addr: self.addr.clone(), source })?;
        if n == 0 {
            return Err(ConnError::Closed { addr: self.addr.clone() });
        }
        Ok(())
    }

    /// The next line, without its CRLF, skipping the empty lines a primary sends to keep a
    /// replica's link alive while it prepares the RDB (the `+FULLRESYNC` and `$<len>` headers).
    pub async fn read_line(&mut self) -> Result<Vec<u8>, ConnError> {
        loop {
            while self.inbuf.first() == Some(&b'\n') {
                let _ = self.inbuf.split_to(1);
            }
            if let Some(end) = self.inbuf.iter().position(|&b| b == b'\n') {
                let line = self.inbuf.split_to(end + 1);
                return Ok(line.strip_suffix(b"\r\n").unwrap_or(&line[..end]).to_vec());
            }
            if self.inbuf.len() > 4096 {
                return Err(ConnError::Malformed {
                    addr: self.addr.clone(),
                    reason: "a header line over 4 KiB".into(),
                });
            }
            self.flush().await?;
            tokio::time::timeout(REPLY_TIMEOUT, self.fill())
                .await
                .map_err(|_| ConnError::Timeout { addr: self.addr.clone() })??;
        }
    }

    /// Up to `max` bytes of the stream: what was already received, else the next read (a
    /// payload, such as the RDB, streamed out of the connection).
    pub async fn read_some(&mut self, max: usize) -> Result<BytesMut, ConnError> {
        if self.inbuf.is_empty() {
            tokio::time::timeout(REPLY_TIMEOUT, self.fill())
                .await
                .map_err(|_| ConnError::Timeout { addr: self.addr.clone() })??;
        }
        let n = self.inbuf.len().min(max);
        Ok(self.inbuf.split_to(n))
    }

    /// Sends one command and returns its reply; an error reply is an error.
    pub async fn call(&mut self, args: &[&[u8]]) -> Result<BytesFrame, ConnError> {
        self.queue(args);
        let reply = self.reply().await?;
        self.refused_if_error(args[0], reply)
    }

    /// Turns an error reply to `command` into [`ConnError::Refused`].
    pub fn refused_if_error(&self, command: &[u8], reply: BytesFrame) -> Result<BytesFrame, ConnError> {
        match reply {
            BytesFrame::Error(message) => Err(ConnError::Refused {
                addr: self.addr.clone(),
                what: String::from_utf8_lossy(command).into_owned(),
                message: message.to_string(),
            }),
            other => Ok(other),
        }
    }
}

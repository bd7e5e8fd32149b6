//! How every connection to a Redis node is opened — the data path, apply connections, health
//! checks, node preparation, snapshots, the keyspace relay, and the `memlog` CLI's probes: TCP,
//! then TLS when `[backend] tls` is set (here), then `AUTH` with the `[backend]` credentials
//! (`admin::AdminConn`, which every connection's set-up speaks). One place, so no connection to
//! a node can skip either.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::tls::{BackendTls, BackendTlsError};
use super::{AuthConfigError, BackendAuth};
use crate::config::BackendConfig;

/// What the proxy presents to the nodes: TLS (when configured) and credentials (when set).
#[derive(Debug, Clone, Default)]
pub struct NodeAccess {
    pub auth: Option<Arc<BackendAuth>>,
    pub tls: Option<Arc<BackendTls>>,
}

/// Why `[backend]` cannot be put in use.
#[derive(Debug, thiserror::Error)]
pub enum BackendConfigError {
    #[error(transparent)]
    Auth(#[from] AuthConfigError),
    #[error(transparent)]
    Tls(#[from] BackendTlsError),
}

/// A connection to a node, plain or TLS.
#[derive(Debug)]
pub enum NodeStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl NodeAccess {
    /// `[backend]`'s credentials and TLS settings, read and checked.
    pub fn from_config(cfg: &BackendConfig) -> Result<NodeAccess, BackendConfigError> {
        Ok(NodeAccess { auth: BackendAuth::from_config(cfg)?, tls: BackendTls::from_config(cfg)? })
    }

    /// A connection to the node at `addr` (`host:port`), TLS set up, not authenticated yet;
    /// connecting and the TLS handshake each within `timeout`.
    pub async fn open(&self, addr: &str, timeout: Duration) -> Result<NodeStream, String> {
        let tcp = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| format!("connect timed out after {timeout:?}"))?
            .map_err(|e| e.to_string())?;
        tcp.set_nodelay(true).map_err(|e| e.to_string())?;
        let Some(tls) = &self.tls else { return Ok(NodeStream::Plain(tcp)) };
        let name = tls.name_for(addr)?;
        match tokio::time::timeout(timeout, tls.connector().connect(name, tcp)).await {
            Ok(Ok(stream)) => Ok(NodeStream::Tls(Box::new(stream))),
            Ok(Err(e)) => Err(format!("TLS handshake failed: {e}")),
            Err(_) => Err(format!("TLS handshake timed out after {timeout:?}")),
        }
    }
}

impl AsyncRead for NodeStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            NodeStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            NodeStream::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for NodeStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            NodeStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            NodeStream::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            NodeStream::Plain(s) => Pin::new(s).poll_flush(cx),
            NodeStream::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            NodeStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            NodeStream::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            NodeStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            NodeStream::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            NodeStream::Plain(s) => s.is_write_vectored(),
            NodeStream::Tls(s) => s.is_write_vectored(),
        }
    }
}

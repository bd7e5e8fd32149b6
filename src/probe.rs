//! Health checks and admin calls (`PING`, `INFO replication`, `GET __memlog:lsn`, `AUTH` then
//! `MEMLOG …` on one connection) over the proxy's one admin client (`memlog_proxy::AdminConn`,
//! which reaches a node as the proxy does: TLS, `AUTH`), and a plain TCP connect for journal
//! nodes. A malformed or oversized reply is an error, never a panic.

use std::net::SocketAddr;
use std::time::Duration;

use memlog_proxy::resp::{bulk_payload, line_payload};
use memlog_proxy::{AdminConn, AdminError, BackendAuth, NodeAccess};
use tokio::net::TcpStream;

use crate::tls_client::Stream;

/// Largest reply a probe accepts; `INFO replication` is a few hundred bytes.
const MAX_REPLY: usize = 1 << 20;

/// The reply kinds a probe understands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Simple(String),
    Error(String),
    Integer(i64),
    Bulk(Option<Vec<u8>>),
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    #[error("connection closed before a full reply")]
    Closed,
    #[error("malformed reply: {0}")]
    Malformed(&'static str),
    #[error("error reply: {0}")]
    Refused(String),
    #[error("{0}")]
    Unreachable(String),
}

/// The key in which every Redis node of a memlog cluster holds the journal LSN it is at.
const LSN_KEY: &str = "__memlog:lsn";

/// A Redis node's replication role, as it reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeRole {
    Master,
    /// A replica of `primary` (`host:port`); `linked` once its link to it is up.
    Replica {
        primary: String,
        linked: bool,
    },
}

/// What a Redis node says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeReport {
    pub role: NodeRole,
    /// The journal prefix it holds (`__memlog:lsn`; 0 when it holds none).
    pub lsn: u64,
}

/// Asks the Redis node at `addr` for its role (`INFO replication`, which carries `ROLE`'s answer
/// as text) and its `__memlog:lsn`, on one connection reaching it as `access` says (TLS, `AUTH`).
pub async fn redis_node(addr: &str, timeout: Duration, access: &NodeAccess) -> Result<NodeReport, ProbeError> {
    let mut session = Session::to_redis_node(addr, timeout, access).await?;
    let role = match session.call(&["INFO", "replication"]).await? {
        Reply::Bulk(Some(info)) => parse_role(&String::from_utf8_lossy(&info))?,
        Reply::Error(message) => return Err(ProbeError::Refused(message)),
        _ => return Err(ProbeError::Malformed("INFO is not a bulk string")),
    };
    let lsn = match session.call(&["GET", LSN_KEY]).await? {
        Reply::Bulk(None) => 0,
        Reply::Bulk(Some(n)) => std::str::from_utf8(&n)
            .ok()
            .and_then(|n| n.parse().ok())
            .ok_or(ProbeError::Malformed("__memlog:lsn is not a number"))?,
        Reply::Error(message) => return Err(ProbeError::Refused(message)),
        _ => return Err(ProbeError::Malformed("GET is not a bulk string")),
    };
    Ok(NodeReport { role, lsn })
}

/// The role in the text of `INFO replication`.
fn parse_role(info: &str) -> Result<NodeRole, ProbeError> {
    let field = |name: &str| {
        info.lines().find_map(|line| line.trim().strip_prefix(name).and_then(|rest| rest.strip_prefix(':')))
    };
    match field("role") {
        Some("master") => Ok(NodeRole::Master),
        Some("slave") => {
            let host = field("master_host").ok_or(ProbeError::Malformed("replica without master_host"))?;
            let port = field("master_port").ok_or(ProbeError::Malformed("replica without master_port"))?;
            let primary = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
            Ok(NodeRole::Replica { primary, linked: field("master_link_status") == Some("up") })
        }
        _ => Err(ProbeError::Malformed("INFO replication without a known role")),
    }
}

/// One connection for several commands in a row (e.g. `AUTH` before an admin command).
pub struct Session {
    conn: AdminConn<Box<dyn Stream>>,
}

impl Session {
    /// Connects to `addr` (`host:port`) within `timeout`.
    pub async fn connect(addr: &str, timeout: Duration) -> Result<Session, ProbeError> {
        Ok(Session::over(addr, Box::new(tcp_connect(addr, timeout).await?), timeout))
    }

    /// A session with the Redis node at `addr`, opened as the proxy opens its own (TLS when
    /// `access` has it) and authenticated with `access`'s credentials.
    pub async fn to_redis_node(addr: &str, timeout: Duration, access: &NodeAccess) -> Result<Session, ProbeError> {
        let stream = access.open(addr, timeout).await.map_err(ProbeError::Unreachable)?;
        let mut session = Session::over(addr, Box::new(stream), timeout);
        session.auth(access.auth.as_deref()).await?;
        Ok(session)
    }

    /// A session on a connection already made (e.g. TLS over TCP) to `addr`.
    pub fn over(addr: &str, stream: Box<dyn Stream>, timeout: Duration) -> Session {
        Session { conn: AdminConn::over(addr, stream, timeout).with_max_reply(MAX_REPLY) }
    }

    /// `AUTH [user] password` when credentials are given; an error reply is `Refused`. The
    /// password is never part of an error.
    pub async fn auth(&mut self, auth: Option<&BackendAuth>) -> Result<(), ProbeError> {
        Ok(self.conn.authenticate(auth).await?)
    }

    /// Sends one command and reads its reply (an error reply is `Reply::Error`), within the
    /// session's timeout.
    pub async fn call(&mut self, args: &[&str]) -> Result<Reply, ProbeError> {
        match self.conn.call(args).await {
            Ok(frame) => Reply::from_frame(&frame),
            Err(AdminError::Refused { message, .. }) => Ok(Reply::Error(message)),
            Err(e) => Err(e.into()),
        }
    }
}

impl Reply {
    /// The reply a whole RESP frame carries; arrays and RESP3 types are not probe replies.
    fn from_frame(frame: &[u8]) -> Result<Reply, ProbeError> {
        let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
        match frame.first() {
            Some(b'+') => {
                line_payload(frame).map(|s| Reply::Simple(text(s))).ok_or(ProbeError::Malformed("bad status"))
            }
            Some(b':') => line_payload(frame)
                .and_then(|n| std::str::from_utf8(n).ok()?.parse().ok())
                .map(Reply::Integer)
                .ok_or(ProbeError::Malformed("bad number")),
            Some(b'$') if frame.starts_with(b"$-1\r\n") => Ok(Reply::Bulk(None)),
            Some(b'$') => bulk_payload(frame)
                .map(|b| Reply::Bulk(Some(b.to_vec())))
                .ok_or(ProbeError::Malformed("bad bulk string")),
            _ => Err(ProbeError::Malformed("unsupported reply type")),
        }
    }
}

impl From<AdminError> for ProbeError {
    fn from(error: AdminError) -> Self {
        match error {
            AdminError::Unreachable { reason, .. } => ProbeError::Unreachable(reason),
            AdminError::Lost { .. } => ProbeError::Closed,
            AdminError::Timeout { timeout, .. } => ProbeError::Timeout(timeout),
            AdminError::BadReply { .. } => ProbeError::Malformed("not RESP, or too large"),
            AdminError::Refused { message, .. } => ProbeError::Refused(message),
        }
    }
}

/// A TCP connection to `addr` (an address, or `host:port` to resolve) within `timeout`.
pub async fn tcp_connect(addr: impl tokio::net::ToSocketAddrs, timeout: Duration) -> Result<TcpStream, ProbeError> {
    Ok(tokio::time::timeout(timeout, TcpStream::connect(addr)).await.map_err(|_| ProbeError::Timeout(timeout))??)
}

/// True if something accepts a TCP connection on `addr` (a journal node, which does not speak RESP).
pub async fn accepts(addr: SocketAddr, timeout: Duration) -> bool {
    matches!(tokio::time::timeout(timeout, TcpStream::connect(addr)).await, Ok(Ok(_)))
}

/// Sends one command to `addr` on a fresh connection made as `access` says (TLS, `AUTH`).
async fn command(addr: SocketAddr, access: &NodeAccess, args: &[&str], timeout: Duration) -> Result<Reply, ProbeError> {
    Session::to_redis_node(&addr.to_string(), timeout, access).await?.call(args).await
}

/// True if `addr` answers `PING` with `PONG` (reached as `access` says).
pub async fn pings(addr: SocketAddr, timeout: Duration, access: &NodeAccess) -> bool {
    matches!(command(addr, access, &["PING"], timeout).await, Ok(Reply::Simple(s)) if s == "PONG")
}

/// True if the replica at `addr` reports an established link to its primary.
pub async fn replica_linked(addr: SocketAddr, timeout: Duration, access: &NodeAccess) -> bool {
    match command(addr, access, &["INFO", "replication"], timeout).await {
        Ok(Reply::Bulk(Some(info))) => {
            String::from_utf8_lossy(&info).lines().any(|line| line.trim() == "master_link_status:up")
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_each_reply_kind_from_a_whole_frame() {
        assert_eq!(Reply::from_frame(b"+PONG\r\n").unwrap(), Reply::Simple("PONG".into()));
        assert_eq!(Reply::from_frame(b":42\r\n").unwrap(), Reply::Integer(42));
        assert_eq!(Reply::from_frame(b"$-1\r\n").unwrap(), Reply::Bulk(None));
        assert_eq!(Reply::from_frame(b"$5\r\nhello\r\n").unwrap(), Reply::Bulk(Some(b"hello".to_vec())));
    }

    #[test]
    fn refuses_what_a_probe_does_not_understand_without_panicking() {
        assert!(Reply::from_frame(b"").is_err());
        assert!(Reply::from_frame(b":x\r\n").is_err());
        assert!(Reply::from_frame(b"$5\r\nab").is_err());
        assert!(Reply::from_frame(b"*1\r\n:1\r\n").is_err());
    }

    #[test]
    fn reads_the_role_from_info_replication() {
        assert_eq!(parse_role("# Replication\r\nrole:master\r\nconnected_slaves:1\r\n").unwrap(), NodeRole::Master);
        let info = "role:slave\r\nmaster_host:127.0.0.1\r\nmaster_port:7000\r\nmaster_link_status:down\r\n";
        assert_eq!(parse_role(info).unwrap(), NodeRole::Replica { primary: "127.0.0.1:7000".into(), linked: false });
        assert!(parse_role("role:slave\r\n").is_err());
        assert!(parse_role("nothing").is_err());
    }
}

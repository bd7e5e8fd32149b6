//! Health checks and admin calls: a minimal RESP client (`PING`, `INFO replication`,
//! `GET __memlog:lsn`, `AUTH` then `MEMLOG …` on one connection), just enough to tell whether a
//! Redis node or the proxy serves without pulling a full client into the binary, and a plain TCP
//! connect for journal nodes.
//! Replies are parsed defensively: a malformed or oversized reply is an error, never a panic.

use std::net::SocketAddr;
use std::time::Duration;

use memlog_proxy::{BackendAuth, NodeAccess};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
    stream: Box<dyn Stream>,
    /// Bytes read but not yet parsed.
    buf: Vec<u8>,
    /// How long each call (and the connect) may take.
    timeout: Duration,
}

impl Session {
    /// Connects to `addr` (an address, or `host:port` to resolve) within `timeout`.
    pub async fn connect(addr: impl tokio::net::ToSocketAddrs, timeout: Duration) -> Result<Session, ProbeError> {
        Ok(Session::over(Box::new(tcp_connect(addr, timeout).await?), timeout))
    }

    /// A session with the Redis node at `addr`, opened as the proxy opens its own (TLS when
    /// `access` has it) and authenticated with `access`'s credentials.
    pub async fn to_redis_node(addr: &str, timeout: Duration, access: &NodeAccess) -> Result<Session, ProbeError> {
        let stream = access.open(addr, timeout).await.map_err(ProbeError::Unreachable)?;
        let mut session = Session::over(Box::new(stream), timeout);
        session.auth(access.auth.as_deref()).await?;
        Ok(session)
    }

    /// A session on a connection already made (e.g. TLS over TCP).
    pub fn over(stream: Box<dyn Stream>, timeout: Duration) -> Session {
        Session { stream, buf: Vec::new(), timeout }
    }

    /// `AUTH [user] password` when credentials are given; an error reply is `Refused`. The
    /// password is never part of an error.
    pub async fn auth(&mut self, auth: Option<&BackendAuth>) -> Result<(), ProbeError> {
        let args = match auth {
            None => return Ok(()),
            Some(BackendAuth { user: Some(user), password }) => vec!["AUTH", user, password],
            Some(BackendAuth { user: None, password }) => vec!["AUTH", password],
        };
        match self.call(&args).await? {
            Reply::Simple(_) => Ok(()),
            Reply::Error(message) => Err(ProbeError::Refused(message)),
            _ => Err(ProbeError::Malformed("AUTH answered neither OK nor an error")),
        }
    }

    /// Sends one command and reads its reply, within the session's timeout.
    pub async fn call(&mut self, args: &[&str]) -> Result<Reply, ProbeError> {
        let timeout = self.timeout;
        tokio::time::timeout(timeout, async {
            self.stream.write_all(&encode(args)).await?;
            loop {
                if let Some((reply, used)) = parse(&self.buf)? {
                    self.buf.drain(..used);
                    return Ok(reply);
                }
                if self.buf.len() > MAX_REPLY {
                    return Err(ProbeError::Malformed("reply too large"));
                }
                if self.stream.read_buf(&mut self.buf).await? == 0 {
                    return Err(ProbeError::Closed);
                }
            }
        })
        .await
        .map_err(|_| ProbeError::Timeout(timeout))?
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

/// Encodes a command as a RESP array of bulk strings.
fn encode(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Parses one reply from the start of `buf`, with the bytes it took; `None` while it is incomplete.
fn parse(buf: &[u8]) -> Result<Option<(Reply, usize)>, ProbeError> {
    let Some(line_end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let Some((&kind, line)) = buf[..line_end].split_first() else {
        return Err(ProbeError::Malformed("empty line"));
    };
    let text = || String::from_utf8_lossy(line).into_owned();
    let after_line = line_end + 2;
    let number = || -> Result<i64, ProbeError> {
        std::str::from_utf8(line).ok().and_then(|s| s.parse().ok()).ok_or(ProbeError::Malformed("bad number"))
    };
    match kind {
        b'+' => Ok(Some((Reply::Simple(text()), after_line))),
        b'-' => Ok(Some((Reply::Error(text()), after_line))),
        b':' => Ok(Some((Reply::Integer(number()?), after_line))),
        b'$' => {
            let len = number()?;
            if len < 0 {
                return Ok(Some((Reply::Bulk(None), after_line)));
            }
            let len = usize::try_from(len).map_err(|_| ProbeError::Malformed("bad length"))?;
            if len > MAX_REPLY {
                return Err(ProbeError::Malformed("bulk string too large"));
            }
            let start = after_line;
            let end = start + len;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err(ProbeError::Malformed("bulk string not terminated"));
            }
            Ok(Some((Reply::Bulk(Some(buf[start..end].to_vec())), end + 2)))
        }
        _ => Err(ProbeError::Malformed("unsupported reply type")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_reply_kind_and_waits_for_complete_bulk() {
        assert_eq!(parse(b"+PONG\r\n").unwrap(), Some((Reply::Simple("PONG".into()), 7)));
        assert_eq!(parse(b"-ERR no\r\n").unwrap(), Some((Reply::Error("ERR no".into()), 9)));
        assert_eq!(parse(b":42\r\n").unwrap(), Some((Reply::Integer(42), 5)));
        assert_eq!(parse(b"$-1\r\n").unwrap(), Some((Reply::Bulk(None), 5)));
        assert_eq!(parse(b"$5\r\nhel").unwrap(), None);
        assert_eq!(parse(b"$5\r\nhello\r\n+OK\r\n").unwrap(), Some((Reply::Bulk(Some(b"hello".to_vec())), 11)));
        assert_eq!(parse(b"+PON").unwrap(), None);
    }

    #[test]
    fn refuses_malformed_replies_without_panicking() {
        assert!(parse(b"\r\n").is_err());
        assert!(parse(b"$x\r\n").is_err());
        assert!(parse(b"$99999999999999999999\r\n").is_err());
        assert!(parse(b"$2\r\nabXY").is_err());
        assert!(parse(b"*1\r\n").is_err());
    }

    #[test]
    fn reads_the_role_from_info_replication() {
        assert_eq!(parse_role("# Replication\r\nrole:master\r\nconnected_slaves:1\r\n").unwrap(), NodeRole::Master);
        let info = "role:slave\r\nmaster_host:127.0.0.1\r\nmaster_port:7000\r\nmaster_link_status:down\r\n";
        assert_eq!(parse_role(info).unwrap(), NodeRole::Replica { primary: "127.0.0.1:7000".into(), linked: false });
        assert!(parse_role("role:slave\r\n").is_err());
        assert!(parse_role("nothing").is_err());
    }

    #[test]
    fn encodes_commands_as_bulk_arrays() {
        assert_eq!(encode(&["INFO", "replication"]), b"*2\r\n$4\r\nINFO\r\n$11\r\nreplication\r\n".to_vec());
    }
}

//! Health checks: a minimal RESP client (`PING`, `INFO replication`), just enough to tell
//! whether a Redis node or the proxy serves without pulling a full client into the binary, and
//! a plain TCP connect for journal nodes.
//! Replies are parsed defensively: a malformed or oversized reply is an error, never a panic.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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
}

/// Sends one command to `addr` on a fresh connection and returns its reply.
pub async fn command(addr: SocketAddr, args: &[&str], timeout: Duration) -> Result<Reply, ProbeError> {
    tokio::time::timeout(timeout, async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.write_all(&encode(args)).await?;
        let mut buf = Vec::new();
        loop {
            if let Some(reply) = parse(&buf)? {
                return Ok(reply);
            }
            if buf.len() > MAX_REPLY {
                return Err(ProbeError::Malformed("reply too large"));
            }
            if stream.read_buf(&mut buf).await? == 0 {
                return Err(ProbeError::Closed);
            }
        }
    })
    .await
    .map_err(|_| ProbeError::Timeout(timeout))?
}

/// True if something accepts a TCP connection on `addr` (a journal node, which does not speak RESP).
pub async fn accepts(addr: SocketAddr, timeout: Duration) -> bool {
    matches!(tokio::time::timeout(timeout, TcpStream::connect(addr)).await, Ok(Ok(_)))
}

/// True if `addr` answers `PING` with `PONG`.
pub async fn pings(addr: SocketAddr, timeout: Duration) -> bool {
    matches!(command(addr, &["PING"], timeout).await, Ok(Reply::Simple(s)) if s == "PONG")
}

/// True if the replica at `addr` reports an established link to its primary.
pub async fn replica_linked(addr: SocketAddr, timeout: Duration) -> bool {
    match command(addr, &["INFO", "replication"], timeout).await {
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

/// Parses one reply from the start of `buf`; `None` while it is incomplete.
fn parse(buf: &[u8]) -> Result<Option<Reply>, ProbeError> {
    let Some(line_end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let Some((&kind, line)) = buf[..line_end].split_first() else {
        return Err(ProbeError::Malformed("empty line"));
    };
    let text = || String::from_utf8_lossy(line).into_owned();
    let number = || -> Result<i64, ProbeError> {
        std::str::from_utf8(line).ok().and_then(|s| s.parse().ok()).ok_or(ProbeError::Malformed("bad number"))
    };
    match kind {
        b'+' => Ok(Some(Reply::Simple(text()))),
        b'-' => Ok(Some(Reply::Error(text()))),
        b':' => Ok(Some(Reply::Integer(number()?))),
        b'$' => {
            let len = number()?;
            if len < 0 {
                return Ok(Some(Reply::Bulk(None)));
            }
            let len = usize::try_from(len).map_err(|_| ProbeError::Malformed("bad length"))?;
            if len > MAX_REPLY {
                return Err(ProbeError::Malformed("bulk string too large"));
            }
            let start = line_end + 2;
            let end = start + len;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err(ProbeError::Malformed("bulk string not terminated"));
            }
            Ok(Some(Reply::Bulk(Some(buf[start..end].to_vec()))))
        }
        _ => Err(ProbeError::Malformed("unsupported reply type")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_reply_kind_and_waits_for_complete_bulk() {
        assert_eq!(parse(b"+PONG\r\n").unwrap(), Some(Reply::Simple("PONG".into())));
        assert_eq!(parse(b"-ERR no\r\n").unwrap(), Some(Reply::Error("ERR no".into())));
        assert_eq!(parse(b":42\r\n").unwrap(), Some(Reply::Integer(42)));
        assert_eq!(parse(b"$-1\r\n").unwrap(), Some(Reply::Bulk(None)));
        assert_eq!(parse(b"$5\r\nhel").unwrap(), None);
        assert_eq!(parse(b"$5\r\nhello\r\n").unwrap(), Some(Reply::Bulk(Some(b"hello".to_vec()))));
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
    fn encodes_commands_as_bulk_arrays() {
        assert_eq!(encode(&["INFO", "replication"]), b"*2\r\n$4\r\nINFO\r\n$11\r\nreplication\r\n".to_vec());
    }
}

//! A fresh connection's set-up (after `link` opened it): `AUTH` or `HELLO 3`, and reading the
//! node's `__memlog:lsn`.

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{BackendAuth, BackendOptions, NodeStream};
use crate::resp::{encode_command, frame_len, Proto};

/// `GET __memlog:lsn` on a fresh connection (RESP2 or RESP3): 0 when the key is missing.
pub(super) async fn node_lsn(stream: &mut NodeStream, opts: &BackendOptions) -> Result<u64, String> {
    let get = encode_command(&[&b"GET"[..], crate::keys::LSN_KEY]);
    let reply = exchange(stream, &get, "GET __memlog:lsn", opts.request_timeout).await?;
    crate::keys::parse_lsn(&reply).ok_or_else(|| match reply.first() {
        Some(b'$') => format!("bad __memlog:lsn {:?}", String::from_utf8_lossy(&reply)),
        _ => format!("GET __memlog:lsn answered {}", String::from_utf8_lossy(&reply).trim()),
    })
}

/// Sends `request` on a fresh connection and reads its one reply frame, within `timeout` per read.
async fn exchange(stream: &mut NodeStream, request: &[u8], what: &str, timeout: Duration) -> Result<BytesMut, String> {
    stream.write_all(request).await.map_err(|e| e.to_string())?;
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        if let Some(len) = frame_len(&buf).map_err(|_| format!("bad {what} reply"))? {
            return Ok(buf.split_to(len));
        }
        let read = tokio::time::timeout(timeout, stream.read_buf(&mut buf))
            .await
            .map_err(|_| format!("{what} timed out"))?
            .map_err(|e| e.to_string())?;
        if read == 0 {
            return Err(format!("closed during {what}"));
        }
    }
}

/// A connection to `addr` (TLS when configured) that spoke `HELLO 3` or authenticated, as
/// `proto` and the credentials ask.
pub(super) async fn connect(addr: &str, proto: Proto, opts: &BackendOptions) -> Result<NodeStream, String> {
    let mut stream = opts.access.open(addr, opts.connect_timeout).await?;
    match (proto, opts.access.auth.as_deref()) {
        (Proto::Resp3, Some(auth)) => {
            handshake(&mut stream, &auth.hello3_command(), "HELLO 3 AUTH", opts.connect_timeout).await?
        }
        (Proto::Resp3, None) => {
            handshake(&mut stream, &encode_command(&["HELLO", "3"]), "HELLO 3", opts.connect_timeout).await?
        }
        (Proto::Resp2, auth) => authenticate(&mut stream, auth, opts.connect_timeout).await?,
    }
    Ok(stream)
}

/// Sends `AUTH` on a fresh connection when there are credentials; an error reply (`-WRONGPASS`)
/// is the error. The password is never part of an error.
pub(super) async fn authenticate(
    stream: &mut NodeStream,
    auth: Option<&BackendAuth>,
    timeout: Duration,
) -> Result<(), String> {
    match auth {
        Some(auth) => handshake(stream, &auth.auth_command(), "AUTH", timeout).await,
        None => Ok(()),
    }
}

/// Sends one connection-set-up command and reads its one reply, which must not be an error.
async fn handshake(stream: &mut NodeStream, command: &[u8], what: &str, timeout: Duration) -> Result<(), String> {
    let reply = exchange(stream, command, what, timeout).await?;
    if reply.first() == Some(&b'-') {
        return Err(format!("{what} refused: {}", String::from_utf8_lossy(&reply).trim()));
    }
    Ok(())
}

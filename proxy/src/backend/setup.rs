//! A fresh connection's set-up (after `link` opened it): `AUTH` or `HELLO 3`, and reading the
//! node's `__memlog:lsn`.

use super::{AdminConn, BackendOptions, NodeStream};
use crate::resp::{encode_command, Proto};

/// `GET __memlog:lsn` on a fresh connection (RESP2 or RESP3): 0 when the key is missing.
pub(super) async fn node_lsn(
    stream: NodeStream,
    addr: &str,
    opts: &BackendOptions,
) -> Result<(NodeStream, u64), String> {
    let mut conn = AdminConn::over(addr, stream, opts.request_timeout);
    let get = encode_command(&[&b"GET"[..], crate::keys::LSN_KEY]);
    let reply = conn.call_raw(&get).await.map_err(|e| format!("GET __memlog:lsn: {e}"))?;
    let lsn = crate::keys::parse_lsn(&reply).ok_or_else(|| match reply.first() {
        Some(b'$') => format!("bad __memlog:lsn {:?}", String::from_utf8_lossy(&reply)),
        _ => format!("GET __memlog:lsn answered {}", String::from_utf8_lossy(&reply).trim()),
    })?;
    Ok((conn.into_stream(), lsn))
}

/// A connection to `addr` (TLS when configured) that spoke `HELLO 3` or authenticated, as
/// `proto` and the credentials ask.
pub(super) async fn connect(addr: &str, proto: Proto, opts: &BackendOptions) -> Result<NodeStream, String> {
    let stream = opts.access.open(addr, opts.connect_timeout).await?;
    let mut conn = AdminConn::over(addr, stream, opts.connect_timeout);
    let set_up = match (proto, opts.access.auth.as_deref()) {
        (Proto::Resp3, Some(auth)) => conn.call_raw(&auth.hello3_command()).await.map(drop),
        (Proto::Resp3, None) => conn.call(&["HELLO", "3"]).await.map(drop),
        (Proto::Resp2, auth) => conn.authenticate(auth).await,
    };
    // The password is never part of these errors: `AdminError` carries only the node's reply.
    set_up.map_err(|e| e.to_string())?;
    Ok(conn.into_stream())
}

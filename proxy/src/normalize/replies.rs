//! Reading the RESP2 replies of probes, and building the RESP2 replies a client gets instead
//! of the journaled command's own.

use bytes::Bytes;

pub use crate::resp::bulk_bytes as bulk;
use crate::resp::{array_items, reply, Proto};

/// The text of a status reply (`+list`).
pub(super) fn status(frame: &[u8]) -> Option<&[u8]> {
    frame.strip_prefix(b"+")?.strip_suffix(b"\r\n")
}

/// The value of an integer reply.
pub fn integer(frame: &[u8]) -> Option<i64> {
    crate::resp::parse_int(frame.strip_prefix(b":")?.strip_suffix(b"\r\n")?)
}

/// The elements of an array reply; `None` for a nil array or anything else.
pub(super) fn array(frame: &Bytes) -> Option<Vec<Bytes>> {
    if frame.starts_with(b"*-1") {
        return None;
    }
    array_items(frame)
}

pub(super) fn is_error(frame: &[u8]) -> bool {
    frame.first() == Some(&b'-')
}

/// An array reply of already encoded elements.
pub(super) fn array_of(items: &[&[u8]]) -> Bytes {
    reply(Proto::Resp2, |w| {
        w.array(items.len());
        for item in items {
            w.raw(item);
        }
    })
}

pub(super) fn bulk_of(data: &[u8]) -> Bytes {
    reply(Proto::Resp2, |w| {
        w.bulk(data);
    })
}

/// The RESP2 nil array: a blocking pop's timeout reply.
pub const NIL_ARRAY: &[u8] = b"*-1\r\n";

pub(super) const WRONGTYPE: &str = "WRONGTYPE Operation against a key holding the wrong kind of value";

pub(super) fn error_of(msg: &str) -> Bytes {
    crate::resp::error_reply(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_frames() {
        assert_eq!(bulk(&Bytes::from_static(b"$3\r\nabc\r\n")).as_deref(), Some(&b"abc"[..]));
        assert_eq!(bulk(&Bytes::from_static(b"$0\r\n\r\n")).as_deref(), Some(&b""[..]));
        assert_eq!(bulk(&Bytes::from_static(b"$-1\r\n")), None);
        assert_eq!(bulk(&Bytes::from_static(b"$5\r\nabc\r\n")), None);
        assert_eq!(status(b"+list\r\n"), Some(&b"list"[..]));
        assert_eq!(integer(b":-3\r\n"), Some(-3));
        let items = array(&Bytes::from_static(b"*2\r\n$1\r\na\r\n*1\r\n:1\r\n")).unwrap();
        assert_eq!(items, vec![Bytes::from_static(b"$1\r\na\r\n"), Bytes::from_static(b"*1\r\n:1\r\n")]);
        assert_eq!(array(&Bytes::from_static(b"*-1\r\n")), None);
        assert_eq!(array(&Bytes::from_static(b"-ERR x\r\n")), None);
        assert_eq!(&array_of(&[b"$1\r\nk\r\n", b":1\r\n"])[..], b"*2\r\n$1\r\nk\r\n:1\r\n");
    }
}

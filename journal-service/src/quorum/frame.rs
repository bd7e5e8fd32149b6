//! The header the quorum client puts in front of every payload it stores: which writer created
//! the entry (its origin epoch, kept when the entry is copied during recovery or catch-up) and
//! whether it is data or a recovery barrier. Readers strip it.

use bytes::{BufMut, Bytes, BytesMut};

/// First byte of every framed payload, so foreign data is recognised rather than misread.
const MAGIC: u8 = 0xA7;
/// Version of the header layout.
const VERSION: u8 = 1;
/// Magic, version, kind, origin epoch (u64, big-endian).
pub const HEADER_LEN: usize = 11;

/// What an entry is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A batch of the client's payload.
    Data = 0,
    /// The empty entry a new writer commits at the end of recovery; readers skip it.
    Barrier = 1,
}

/// A decoded payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Framed {
    pub kind: Kind,
    pub origin_epoch: u64,
    pub body: Bytes,
}

/// Why a stored payload is not one of ours.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("payload is not a memlog quorum frame: {0}")]
pub struct FrameError(&'static str);

/// Prepends the header to `body`.
pub fn encode(kind: Kind, origin_epoch: u64, body: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(HEADER_LEN + body.len());
    out.put_u8(MAGIC);
    out.put_u8(VERSION);
    out.put_u8(kind as u8);
    out.put_u64(origin_epoch);
    out.put_slice(body);
    out.freeze()
}

/// Splits a stored payload into header and body (zero-copy).
pub fn decode(payload: &Bytes) -> Result<Framed, FrameError> {
    if payload.len() < HEADER_LEN {
        return Err(FrameError("shorter than the header"));
    }
    if payload[0] != MAGIC {
        return Err(FrameError("bad magic byte"));
    }
    if payload[1] != VERSION {
        return Err(FrameError("unknown header version"));
    }
    let kind = match payload[2] {
        0 => Kind::Data,
        1 => Kind::Barrier,
        _ => return Err(FrameError("unknown entry kind")),
    };
    let mut origin = [0u8; 8];
    origin.copy_from_slice(&payload[3..HEADER_LEN]);
    Ok(Framed { kind, origin_epoch: u64::from_be_bytes(origin), body: payload.slice(HEADER_LEN..) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_foreign_bytes() {
        let framed = encode(Kind::Data, 42, b"*1\r\n$4\r\nPING\r\n");
        let decoded = decode(&framed).unwrap();
        assert_eq!((decoded.kind, decoded.origin_epoch), (Kind::Data, 42));
        assert_eq!(&decoded.body[..], b"*1\r\n$4\r\nPING\r\n");
        assert_eq!(decode(&encode(Kind::Barrier, 7, b"")).unwrap().kind, Kind::Barrier);
        assert!(decode(&Bytes::from_static(b"*1\r\n$4\r\nPING\r\n")).is_err());
        assert!(decode(&Bytes::from_static(b"")).is_err());
        let mut bad_kind = framed.to_vec();
        bad_kind[2] = 9;
        assert!(decode(&Bytes::from(bad_kind)).is_err());
    }
}

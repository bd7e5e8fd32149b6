//! The on-disk record of one entry, pure encode/decode.
//!
//! `[u32 len][u32 crc32c][u64 epoch][u64 lsn][u64 timestamp_ms][u64 commit_lsn][payload]`,
//! little-endian. `len` counts the bytes after the crc; the crc covers the `len` field and every
//! byte after the crc, so a damaged length is caught like damaged data.

use bytes::Bytes;

use crate::entry::Entry;

/// Bytes before the payload.
pub const HEADER_LEN: usize = 40;

/// Bytes of the fields after the crc and before the payload.
const FIXED_BODY_LEN: usize = 32;

/// The largest payload a record may hold.
pub const MAX_PAYLOAD_LEN: usize = 64 * 1024 * 1024;

/// Why bytes are not a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordError {
    /// The bytes end before the record does (a torn write, or more bytes needed).
    Incomplete,
    /// The length is impossible or the checksum does not match.
    Corrupt(&'static str),
}

/// A decoded record borrowing its payload from the buffer it was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordView<'a> {
    pub epoch: u64,
    pub lsn: u64,
    pub timestamp_ms: u64,
    pub commit_lsn: u64,
    pub payload: &'a [u8],
}

impl RecordView<'_> {
    /// An owned entry (copies the payload).
    pub fn to_entry(&self) -> Entry {
        Entry {
            epoch: self.epoch,
            lsn: self.lsn,
            timestamp_ms: self.timestamp_ms,
            commit_lsn: self.commit_lsn,
            payload: Bytes::copy_from_slice(self.payload),
        }
    }
}

/// The encoded size of `entry`.
pub fn encoded_len(entry: &Entry) -> usize {
    HEADER_LEN + entry.payload.len()
}

/// Appends the record of `entry` to `out`. Panics if the payload exceeds `MAX_PAYLOAD_LEN`
/// (callers check; the wire frame cap keeps it so).
pub fn encode(entry: &Entry, out: &mut Vec<u8>) {
    assert!(entry.payload.len() <= MAX_PAYLOAD_LEN, "payload over MAX_PAYLOAD_LEN");
    let start = out.len();
    let len = u32::try_from(FIXED_BODY_LEN + entry.payload.len()).expect("checked against MAX_PAYLOAD_LEN above");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    for v in [entry.epoch, entry.lsn, entry.timestamp_ms, entry.commit_lsn] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(&entry.payload);
    let crc = checksum(&out[start..start + 4], &out[start + 8..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Decodes the record at the start of `buf`, returning it and its encoded size.
pub fn decode(buf: &[u8]) -> Result<(RecordView<'_>, usize), RecordError> {
    if buf.len() < 8 {
        return Err(RecordError::Incomplete);
    }
    let len = u32::from_le_bytes(buf[0..4].try_into().expect("4 bytes")) as usize;
    if !(FIXED_BODY_LEN..=FIXED_BODY_LEN + MAX_PAYLOAD_LEN).contains(&len) {
        return Err(RecordError::Corrupt("impossible record length"));
    }
    let total = 8 + len;
    if buf.len() < total {
        return Err(RecordError::Incomplete);
    }
    let stored_crc = u32::from_le_bytes(buf[4..8].try_into().expect("4 bytes"));
    if checksum(&buf[0..4], &buf[8..total]) != stored_crc {
        return Err(RecordError::Corrupt("checksum mismatch"));
    }
    let field = |i: usize| u64::from_le_bytes(buf[8 + 8 * i..16 + 8 * i].try_into().expect("8 bytes"));
    let view = RecordView {
        epoch: field(0),
        lsn: field(1),
        timestamp_ms: field(2),
        commit_lsn: field(3),
        payload: &buf[HEADER_LEN..total],
    };
    Ok((view, total))
}

fn checksum(len_field: &[u8], rest: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(len_field), rest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry_strategy() -> impl Strategy<Value = Entry> {
        (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>(), proptest::collection::vec(any::<u8>(), 0..300))
            .prop_map(|(epoch, lsn, timestamp_ms, commit_lsn, payload)| Entry {
                epoch,
                lsn,
                timestamp_ms,
                commit_lsn,
                payload: payload.into(),
            })
    }

    proptest! {
        #[test]
        fn roundtrip(entry in entry_strategy(), trailing in proptest::collection::vec(any::<u8>(), 0..50)) {
            let mut buf = Vec::new();
            encode(&entry, &mut buf);
            prop_assert_eq!(buf.len(), encoded_len(&entry));
            buf.extend_from_slice(&trailing);
            let (view, size) = decode(&buf).unwrap();
            prop_assert_eq!(size, encoded_len(&entry));
            prop_assert_eq!(view.to_entry(), entry);
        }

        #[test]
        fn any_flipped_byte_is_detected(entry in entry_strategy(), at in any::<prop::sample::Index>(), flip in 1u8..=255) {
            let mut buf = Vec::new();
            encode(&entry, &mut buf);
            let at = at.index(buf.len());
            buf[at] ^= flip;
            prop_assert!(decode(&buf).is_err());
        }

        #[test]
        fn any_truncation_is_incomplete(entry in entry_strategy(), cut in any::<prop::sample::Index>()) {
            let mut buf = Vec::new();
            encode(&entry, &mut buf);
            let cut = cut.index(buf.len());
            prop_assert_eq!(decode(&buf[..cut]), Err(RecordError::Incomplete));
        }
    }

    #[test]
    fn zeroed_bytes_are_not_a_record() {
        assert_eq!(decode(&[0u8; 64]), Err(RecordError::Corrupt("impossible record length")));
    }
}

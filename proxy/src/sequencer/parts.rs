//! A write larger than one journal entry holds (a 100 MiB `SET`; Redis takes values up to
//! `proto-max-bulk-len`, 512 MiB) is journaled as consecutive entries, its *parts*, and
//! committed and applied as one: the journaler appends every part at once (the writer assigns
//! them consecutive LSNs, in order), the client hears once the last part committed and Redis
//! applied the whole write, and `__memlog:lsn` only ever names a last part.
//!
//! Each part's payload is a header — `__MEMLOG_PART <index> <count>` as one RESP command — then
//! its share of the write's bytes. Replay puts the parts back together ([`Assembler`]). Parts
//! not followed by the rest of their write (the proxy stopped between two appends: the write
//! was never acknowledged) are dropped: an entry that is not the next part ends them.

use bytes::{Bytes, BytesMut};

use crate::resp::encode_command;

/// The header command's name.
const PART: &[u8] = b"__MEMLOG_PART";

/// The most bytes of the write one part carries: an entry holds 64 MiB, less room for the header.
pub(super) const PART_BYTES: usize = super::MAX_WRITE_BYTES;

/// `payload` as the payloads of its parts; itself when one entry holds it.
pub(super) fn split(payload: Bytes) -> Vec<Bytes> {
    if payload.len() <= PART_BYTES {
        return vec![payload];
    }
    let count = payload.len().div_ceil(PART_BYTES);
    (0..count)
        .map(|index| {
            let chunk = payload.slice(index * PART_BYTES..payload.len().min((index + 1) * PART_BYTES));
            let header = encode_command(&[PART, index.to_string().as_bytes(), count.to_string().as_bytes()]);
            let mut part = BytesMut::with_capacity(header.len() + chunk.len());
            part.extend_from_slice(&header);
            part.extend_from_slice(&chunk);
            part.freeze()
        })
        .collect()
}

/// A part's index and count, and where its share of the write starts; `None` for a whole entry.
fn parse_header(payload: &[u8]) -> Option<(usize, usize, usize)> {
    let rest = payload.strip_prefix(b"*3\r\n$13\r\n__MEMLOG_PART\r\n")?;
    let (index, rest) = bulk_number(rest)?;
    let (count, rest) = bulk_number(rest)?;
    Some((index, count, payload.len() - rest.len()))
}

/// `$<len>\r\n<digits>\r\n` at the start of `bytes`: the number and what follows it.
fn bulk_number(bytes: &[u8]) -> Option<(usize, &[u8])> {
    let rest = bytes.strip_prefix(b"$")?;
    let end = rest.iter().position(|&b| b == b'\r')?;
    let len: usize = std::str::from_utf8(&rest[..end]).ok()?.parse().ok()?;
    let digits = rest.get(end + 2..end + 2 + len)?;
    let number = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some((number, rest.get(end + 4 + len..)?))
}

/// What an entry gives replay.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Piece {
    /// A whole write (or batch of writes): apply it, at this entry's LSN.
    Whole(Bytes),
    /// A part of a write whose other parts come next: apply nothing yet.
    Pending,
}

/// Puts parts back together during a replay.
#[derive(Default)]
pub(super) struct Assembler {
    parts: Vec<Bytes>,
    count: usize,
}

impl Assembler {
    /// The entry at `lsn` (its payload).
    pub(super) fn push(&mut self, lsn: u64, payload: &Bytes) -> Piece {
        let Some((index, count, start)) = parse_header(payload) else {
            self.drop_orphans(lsn);
            return Piece::Whole(payload.clone());
        };
        if index != self.parts.len() || (index > 0 && count != self.count) {
            self.drop_orphans(lsn);
            if index != 0 {
                tracing::warn!(lsn, index, count, "a part of a write without its first part: dropped");
                return Piece::Pending;
            }
        }
        self.count = count;
        self.parts.push(payload.slice(start..));
        if self.parts.len() < count {
            return Piece::Pending;
        }
        let parts = std::mem::take(&mut self.parts);
        let mut whole = BytesMut::with_capacity(parts.iter().map(Bytes::len).sum());
        parts.iter().for_each(|part| whole.extend_from_slice(part));
        Piece::Whole(whole.freeze())
    }

    /// True when no write's parts are waiting for the rest.
    pub(super) fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    /// An entry that is not the next part ends the parts gathered so far: their write was never
    /// completed (nor acknowledged).
    pub(super) fn drop_orphans(&mut self, lsn: u64) {
        if !self.parts.is_empty() {
            tracing::warn!(lsn, parts = self.parts.len(), of = self.count, "parts of an unfinished write dropped");
            self.parts.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(text: &str) -> Bytes {
        Bytes::copy_from_slice(text.as_bytes())
    }

    #[test]
    fn a_large_payload_is_split_and_put_back_together() {
        let payload: Bytes = (0..PART_BYTES * 2 + 10).map(|i| (i % 251) as u8).collect::<Vec<_>>().into();
        let parts = split(payload.clone());
        assert_eq!(parts.len(), 3);
        assert!(parts.iter().all(|p| p.len() <= journal_service::quorum::MAX_ENTRY_BODY));
        let mut assembler = Assembler::default();
        assert_eq!(assembler.push(1, &parts[0]), Piece::Pending);
        assert_eq!(assembler.push(2, &parts[1]), Piece::Pending);
        assert_eq!(assembler.push(3, &parts[2]), Piece::Whole(payload));
        // A payload one entry holds stays as it is.
        assert_eq!(split(entry("*1\r\n$4\r\nPING\r\n")), [entry("*1\r\n$4\r\nPING\r\n")]);
        assert_eq!(assembler.push(4, &entry("*1\r\n$4\r\nPING\r\n")), Piece::Whole(entry("*1\r\n$4\r\nPING\r\n")));
    }

    #[test]
    fn parts_of_an_unfinished_write_are_dropped() {
        let part = |index: usize, count: usize, text: &str| {
            let header = encode_command(&[PART, index.to_string().as_bytes(), count.to_string().as_bytes()]);
            Bytes::from([&header[..], text.as_bytes()].concat())
        };
        let mut assembler = Assembler::default();
        // Two parts of three, then an ordinary entry: the parts were never completed.
        assert_eq!(assembler.push(1, &part(0, 3, "a")), Piece::Pending);
        assert_eq!(assembler.push(2, &part(1, 3, "b")), Piece::Pending);
        assert_eq!(assembler.push(3, &entry("next")), Piece::Whole(entry("next")));
        // A first part, then another write's first part: the second one stands.
        assert_eq!(assembler.push(4, &part(0, 2, "x")), Piece::Pending);
        assert_eq!(assembler.push(5, &part(0, 2, "y")), Piece::Pending);
        assert_eq!(assembler.push(6, &part(1, 2, "z")), Piece::Whole(entry("yz")));
        // A part without its first part is dropped.
        assert_eq!(assembler.push(7, &part(1, 2, "q")), Piece::Pending);
        assert_eq!(assembler.push(8, &entry("after")), Piece::Whole(entry("after")));
    }
}

//! One segment file of a stream: `<first_lsn:020>.log`, records back to back, with an in-memory
//! index of where each record starts. Scanning verifies every record on start-up.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::entry::Entry;
use crate::record::{self, RecordError};

use super::OpenError;

/// A segment as the stream knows it: only records that are durable and verified.
#[derive(Debug)]
pub struct Segment {
    pub path: PathBuf,
    pub first_lsn: u64,
    /// Byte offset of each record; the record at index `i` has LSN `first_lsn + i`.
    pub offsets: Vec<u64>,
    /// Bytes of durable records (where the next record goes).
    pub len: u64,
    /// The file's zero-filled, durable length past `len`, made ready for appends (see
    /// `Writer::persist`); equal to `len` when nothing is prepared.
    pub prepared: u64,
    /// Opened read/write; shared with readers so a segment deleted meanwhile stays readable.
    pub file: Arc<File>,
}

/// What a scan learned about the records of a segment.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ScanSummary {
    pub last_epoch: Option<u64>,
    pub max_epoch: u64,
    pub max_commit_lsn: u64,
}

/// The file name of the segment starting at `first_lsn`.
pub fn file_name(first_lsn: u64) -> String {
    format!("{first_lsn:020}.log")
}

/// The first LSN encoded in a segment file name, or `None` if it is not a segment.
pub fn parse_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".log")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

impl Segment {
    /// Creates an empty segment file (the caller fsyncs the directory).
    pub fn create(dir: &Path, first_lsn: u64) -> std::io::Result<Segment> {
        let path = dir.join(file_name(first_lsn));
        let file = crate::private_fs::open_options().read(true).write(true).create_new(true).open(&path)?;
        Ok(Segment { path, first_lsn, offsets: Vec::new(), len: 0, prepared: 0, file: Arc::new(file) })
    }

    /// The LSN after the last record (equal to `first_lsn` when empty).
    pub fn next_lsn(&self) -> u64 {
        self.first_lsn + self.offsets.len() as u64
    }

    /// Opens and verifies a segment. Zeros after the last record are space prepared for appends
    /// and kept. In the last segment of a stream a torn tail — a bad or partial record with
    /// nothing valid after it — is cut off (with a warning); any other damage is an error naming
    /// the file and offset.
    pub fn open(path: &Path, first_lsn: u64, is_last: bool) -> Result<(Segment, ScanSummary), OpenError> {
        let io_err = |source| OpenError::Io { path: path.to_path_buf(), source };
        let file = OpenOptions::new().read(true).write(true).open(path).map_err(io_err)?;
        let data = fs::read(path).map_err(io_err)?;
        let mut segment = Segment {
            path: path.to_path_buf(),
            first_lsn,
            offsets: Vec::new(),
            len: 0,
            prepared: 0,
            file: Arc::new(file),
        };
        let mut summary = ScanSummary::default();
        let mut offset = 0usize;
        while offset < data.len() {
            let corrupt =
                |reason: String| OpenError::Corrupt { path: path.to_path_buf(), offset: offset as u64, reason };
            match record::decode(&data[offset..]) {
                Ok((view, size)) => {
                    let expected = segment.next_lsn();
                    if view.lsn != expected {
                        return Err(corrupt(format!("record has lsn {} where {expected} was expected", view.lsn)));
                    }
                    segment.offsets.push(offset as u64);
                    summary.last_epoch = Some(view.epoch);
                    summary.max_epoch = summary.max_epoch.max(view.epoch);
                    summary.max_commit_lsn = summary.max_commit_lsn.max(view.commit_lsn);
                    offset += size;
                }
                Err(_) if data[offset..].iter().all(|&b| b == 0) => {
                    // A zero-length record is impossible (`record::decode`), so zeros are never
                    // a record: this is prepared space (or an append that never reached the disk).
                    segment.prepared = data.len() as u64;
                    break;
                }
                Err(error) => {
                    let what = match error {
                        RecordError::Incomplete => "incomplete record",
                        RecordError::Corrupt(why) => why,
                    };
                    if !is_last {
                        return Err(corrupt(format!("{what} in a segment that is not the last")));
                    }
                    if let Some(valid_at) = next_valid_record(&data, offset + 1) {
                        return Err(corrupt(format!("{what}, followed by a valid record at offset {valid_at}")));
                    }
                    tracing::warn!(
                        file = %path.display(), offset, dropped_bytes = data.len() - offset, reason = what,
                        "cutting a torn tail (an unacknowledged partial write)"
                    );
                    segment.file.set_len(offset as u64).map_err(io_err)?;
                    segment.file.sync_all().map_err(io_err)?;
                    break;
                }
            }
        }
        segment.len = offset as u64;
        segment.prepared = segment.prepared.max(segment.len);
        Ok((segment, summary))
    }

    /// Reads and verifies the records with LSNs `from..=to` (which must be in this segment) into `out`,
    /// as long as their payloads fit in `budget` bytes — but always one record if `out` is empty.
    /// Returns the payload bytes read; stops early when the budget is spent.
    pub fn read(&self, from: u64, to: u64, budget: usize, out: &mut Vec<Entry>) -> Result<usize, String> {
        let first = index(from - self.first_lsn);
        let last = index(to - self.first_lsn);
        let end_of = |i: usize| self.offsets.get(i + 1).copied().unwrap_or(self.len);
        let mut count = 0;
        let mut payload_bytes = 0usize;
        while first + count <= last {
            let i = first + count;
            let size = index(end_of(i) - self.offsets[i]) - record::HEADER_LEN;
            if (count > 0 || !out.is_empty()) && payload_bytes + size > budget {
                break;
            }
            payload_bytes += size;
            count += 1;
        }
        if count == 0 {
            return Ok(0);
        }
        let start = self.offsets[first];
        let mut buf = vec![0u8; index(end_of(first + count - 1) - start)];
        self.file
            .read_exact_at(&mut buf, start)
            .map_err(|e| format!("{}: read at {start}: {e}", self.path.display()))?;
        let mut at = 0;
        for i in 0..count {
            let (view, size) = record::decode(&buf[at..]).map_err(|e| {
                format!("{}: record at offset {} unreadable: {e:?}", self.path.display(), start + at as u64)
            })?;
            debug_assert_eq!(view.lsn, from + i as u64);
            out.push(view.to_entry());
            at += size;
        }
        Ok(payload_bytes)
    }
}

/// The offset of the first valid record at or after `from`, if any.
fn next_valid_record(data: &[u8], from: usize) -> Option<usize> {
    (from..data.len()).find(|&at| record::decode(&data[at..]).is_ok())
}

/// A position within a segment (a record index or a byte count) as an index into memory. A
/// segment's records and bytes are held in memory (`offsets`) and read into one buffer, so they
/// fit a `usize`; on the 64-bit targets memlog runs on, so does every u64.
pub(crate) fn index(n: u64) -> usize {
    usize::try_from(n).expect("a segment position fits in memory")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_roundtrip() {
        assert_eq!(file_name(42), "00000000000000000042.log");
        assert_eq!(parse_file_name(&file_name(42)), Some(42));
        assert_eq!(parse_file_name("epoch"), None);
        assert_eq!(parse_file_name("42.log"), None);
    }
}

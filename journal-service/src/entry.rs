//! The journal's data model, shared by the node, its client and the quorum writer.

use std::collections::BTreeMap;

use bytes::Bytes;

/// Names one stream of entries; there is one stream per shard, e.g. `"shard-0"`.
pub type StreamId = String;

/// The longest stream name a node accepts (names become directory names).
pub const MAX_STREAM_NAME_LEN: usize = 64;

/// One journal entry. LSNs start at 1 and are contiguous within a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The epoch of the writer that appended it; nodes refuse appends below their fenced epoch.
    pub epoch: u64,
    /// Position in the stream.
    pub lsn: u64,
    /// Wall-clock time of the write, for point-in-time restore.
    pub timestamp_ms: u64,
    /// The writer's last committed LSN when it sent this entry, so readers know what is safe.
    pub commit_lsn: u64,
    /// Opaque bytes (normalized RESP of a batch).
    pub payload: Bytes,
}

/// What a node holds for one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamTail {
    /// The highest epoch this node has been fenced at (or seen in an append).
    pub fenced_epoch: u64,
    /// The first LSN still stored (after `truncate_below`); `last_lsn + 1` when nothing is stored.
    pub first_lsn: u64,
    /// The last durable LSN; 0 for a stream that never held an entry.
    pub last_lsn: u64,
    /// Epoch of the entry at `last_lsn` (0 when unknown: empty stream).
    pub last_epoch: u64,
    /// The highest `commit_lsn` carried by the stored entries.
    pub commit_lsn: u64,
}

/// A node's view of all its streams.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeStatus {
    pub streams: BTreeMap<String, StreamTail>,
}

/// Checks a stream name: ASCII alphanumerics, `-` and `_`, 1 to 64 bytes (it becomes a directory name).
pub fn validate_stream_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_STREAM_NAME_LEN {
        return Err(format!("stream name must be 1..={MAX_STREAM_NAME_LEN} bytes"));
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return Err(format!("stream name {name:?} may only hold ASCII letters, digits, '-' and '_'"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names_are_validated() {
        assert!(validate_stream_name("shard-0").is_ok());
        assert!(validate_stream_name("a_B-9").is_ok());
        assert!(validate_stream_name("").is_err());
        assert!(validate_stream_name("../etc").is_err());
        assert!(validate_stream_name("a/b").is_err());
        assert!(validate_stream_name(&"x".repeat(65)).is_err());
        assert!(validate_stream_name(&"x".repeat(64)).is_ok());
    }
}

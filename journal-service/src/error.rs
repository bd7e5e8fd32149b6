//! The errors a journal node operation can end with, on the node and at its client.

/// Why a journal node operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    /// An append or truncate carried an epoch below the node's fenced epoch for the stream.
    #[error("stream {stream}: fenced at epoch {fenced_epoch}")]
    Fenced { stream: String, fenced_epoch: u64 },
    /// An append was not at `last_lsn + 1`.
    #[error("stream {stream}: out of order append, expected lsn {expected_lsn}")]
    OutOfOrder { stream: String, expected_lsn: u64 },
    /// The node could not persist (disk full, fsync failed, stream poisoned by an earlier failure).
    #[error("storage: {0}")]
    Storage(String),
    /// The node could not be reached; the outcome of in-flight operations is unknown.
    #[error("node unreachable: {0}")]
    Unreachable(String),
    /// A malformed request or reply, or a request the node cannot serve as asked.
    #[error("protocol: {0}")]
    Protocol(String),
    /// No reply in time; the outcome is unknown.
    #[error("timed out")]
    Timeout,
}

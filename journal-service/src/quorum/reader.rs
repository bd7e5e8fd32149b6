//! Reading committed entries back (replay onto Redis, tests, restore), from any live node.

use std::net::SocketAddr;

use bytes::Bytes;

use super::frame::{self, Kind};
use super::writer::read_range;
use crate::cluster_tls::Transport;
use crate::entry::StreamTail;
use crate::error::NodeError;
use crate::node_client::NodeClient;

/// A committed entry as the writer's caller appended it (header stripped, barriers skipped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommittedEntry {
    pub lsn: u64,
    pub timestamp_ms: u64,
    pub payload: Bytes,
}

/// Why a read failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReadError {
    /// No reachable node holds the requested range.
    #[error("no journal node can serve lsn {from}..={to}: {errors:?}")]
    Unavailable { from: u64, to: u64, errors: Vec<(SocketAddr, NodeError)> },
    /// Every node that holds the stream dropped `from` (a snapshot replaced it, see
    /// `truncate_below`): the reader must start from a snapshot at or above `first - 1`.
    #[error("lsn {from} was truncated away on every journal node (the first stored is {first})")]
    Truncated { from: u64, first: u64 },
    /// A stored payload is not a quorum frame.
    #[error("lsn {lsn} is not a memlog entry: {reason}")]
    Corrupt { lsn: u64, reason: String },
}

/// Reads one stream's committed entries.
pub struct Reader {
    stream: String,
    nodes: Vec<NodeClient>,
}

impl Reader {
    pub fn new(stream: &str, nodes: &[SocketAddr], transport: &Transport) -> Reader {
        let nodes = nodes.iter().map(|a| NodeClient::new(*a, transport.clone())).collect();
        Reader { stream: stream.to_string(), nodes }
    }

    /// The highest commit point any reachable node has seen (it trails the writer's by the
    /// entries in flight; a writer's own `commit_lsn()` is fresher).
    pub async fn commit_point(&self) -> Result<u64, ReadError> {
        let (tails, errors) = self.tails().await;
        if tails.is_empty() && !errors.is_empty() {
            return Err(ReadError::Unavailable { from: 0, to: 0, errors });
        }
        Ok(tails.iter().map(|(_, t)| t.commit_lsn).max().unwrap_or(0))
    }

    /// The committed entries with `from_lsn <= lsn <= to_lsn`; `to_lsn` must be a commit point
    /// (from `commit_point` or from the writer). Reads from a node whose own commit point covers
    /// the range, else from the node last written by the newest writer.
    pub async fn read(&self, from_lsn: u64, to_lsn: u64) -> Result<Vec<CommittedEntry>, ReadError> {
        if from_lsn > to_lsn {
            return Ok(Vec::new());
        }
        let (tails, mut errors) = self.tails().await;
        let mut candidates: Vec<(usize, StreamTail)> =
            tails.into_iter().filter(|(_, t)| t.last_lsn >= to_lsn).collect();
        let first = candidates.iter().map(|(_, t)| t.first_lsn).min();
        if let Some(first) = first.filter(|&first| first > from_lsn) {
            return Err(ReadError::Truncated { from: from_lsn, first });
        }
        candidates.sort_by_key(|(_, t)| std::cmp::Reverse((t.commit_lsn >= to_lsn, t.last_epoch)));
        for (node, _) in candidates {
            match read_range(&self.nodes[node], &self.stream, from_lsn, to_lsn).await {
                Ok(entries) => return unframe(entries),
                Err(e) => errors.push((self.nodes[node].addr(), e)),
            }
        }
        Err(ReadError::Unavailable { from: from_lsn, to: to_lsn, errors })
    }

    /// This stream's tail on every node that answers.
    async fn tails(&self) -> (Vec<(usize, StreamTail)>, Vec<(SocketAddr, NodeError)>) {
        let calls: Vec<_> = self.nodes.iter().map(|n| n.status()).collect();
        let (mut tails, mut errors) = (Vec::new(), Vec::new());
        for (node, call) in calls.into_iter().enumerate() {
            match call.await {
                Ok(status) => {
                    if let Some(tail) = status.streams.get(&self.stream) {
                        tails.push((node, tail.clone()));
                    }
                }
                Err(e) => errors.push((self.nodes[node].addr(), e)),
            }
        }
        (tails, errors)
    }
}

fn unframe(entries: Vec<crate::entry::Entry>) -> Result<Vec<CommittedEntry>, ReadError> {
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        let framed =
            frame::decode(&entry.payload).map_err(|e| ReadError::Corrupt { lsn: entry.lsn, reason: e.to_string() })?;
        if framed.kind == Kind::Data {
            out.push(CommittedEntry { lsn: entry.lsn, timestamp_ms: entry.timestamp_ms, payload: framed.body });
        }
    }
    Ok(out)
}

//! What the applier drives, as traits: the shard's primary and the committed journal. The
//! proxy uses the real ones ([`ApplyConns`] over backend connections, the quorum [`Reader`]);
//! the applier's tests use scripted fakes, so every retry and unknown-outcome path can be run
//! directly, without a Redis or journal nodes.

use std::future::Future;

use bytes::Bytes;
use journal_service::quorum::{CommittedEntry, ReadError, Reader};

use super::ApplyConns;
use crate::backend::{BatchResult, ReplySender};
use crate::resp::Proto;

/// The shard's primary, as the applier sees it: one ordered connection per protocol.
pub(super) trait Primary: Send + 'static {
    /// Sends `requests` (`count` commands) in order and answers their replies; a connection
    /// that was not checked since it opened refuses with `BackendError::Unverified`.
    fn call_batch(&mut self, proto: Proto, requests: Bytes, count: usize) -> impl Future<Output = BatchResult> + Send;

    /// Sends one command whose reply goes straight to `reply` (routing only, nothing journaled).
    fn forward(&mut self, proto: Proto, command: Bytes, reply: ReplySender) -> impl Future<Output = ()> + Send;

    /// The node's address, to load a snapshot onto it.
    fn addr(&self) -> String;
}

/// The committed part of the shard's journal stream.
pub(super) trait CommittedJournal: Send + Sync + 'static {
    /// The committed entries `from..=to` (fewer if some are barriers without payload).
    fn read(&self, from: u64, to: u64) -> impl Future<Output = Result<Vec<CommittedEntry>, ReadError>> + Send;
}

impl Primary for ApplyConns {
    async fn call_batch(&mut self, proto: Proto, requests: Bytes, count: usize) -> BatchResult {
        self.conn(proto).await.call_batch(requests, count).await
    }

    async fn forward(&mut self, proto: Proto, command: Bytes, reply: ReplySender) {
        self.conn(proto).await.send_to(command, reply);
    }

    fn addr(&self) -> String {
        self.primary.addr().to_string()
    }
}

impl CommittedJournal for Reader {
    async fn read(&self, from: u64, to: u64) -> Result<Vec<CommittedEntry>, ReadError> {
        Reader::read(self, from, to).await
    }
}

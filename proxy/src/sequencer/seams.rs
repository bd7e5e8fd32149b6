//! What the journaler and the applier drive, as traits: the shard's journal stream and its
//! writer, the shard's primary, the committed journal. The proxy uses the real ones (the
//! quorum writer and reader, [`ApplyConns`] over backend connections); the tests of
//! `journaler.rs` and `applier.rs` use scripted fakes, so every retry and unknown-outcome path
//! can be run directly, without a Redis or journal nodes.

use std::future::Future;

use bytes::Bytes;
use journal_service::quorum::{self, CommittedEntry, QuorumWriter, ReadError, Reader, WriteError};

use super::{AppendFuture, ApplyConns, JournalSetup};
use crate::backend::{BackendConn, BatchResult, ReplyResult, ReplySender};
use crate::keys::LSN_KEY;
use crate::resp::Proto;

/// The shard's primary, as the applier sees it: one ordered connection per protocol.
pub(super) trait Primary: Send + 'static {
    /// Sends `requests` (`count` commands) in order and answers their replies; a connection
    /// that was not checked since it opened refuses with `BackendError::Unverified`.
    fn call_batch(&mut self, proto: Proto, requests: Bytes, count: usize) -> impl Future<Output = BatchResult> + Send;

    /// Asks the node which journal prefix it holds (`GET __memlog:lsn`). This is the check that
    /// unlocks a connection's batches, so it is sent on its own, never inside a batch.
    fn lsn_check(&mut self) -> impl Future<Output = ReplyResult> + Send;

    /// Sends one command whose reply goes straight to `reply` (routing only, nothing journaled).
    fn forward(&mut self, proto: Proto, command: Bytes, reply: ReplySender) -> impl Future<Output = ()> + Send;

    /// The node's address, to load a snapshot onto it.
    fn addr(&self) -> String;

    /// Stops the node at once, discarding what it holds (`SHUTDOWN NOSAVE NOW`): the one way
    /// to interrupt a script that wrote and never returns (`abort.rs`). Returns once it is gone.
    fn shut_down(&mut self) -> impl Future<Output = Result<(), String>> + Send;

    /// The journal prefix another node of the shard holds (`GET __memlog:lsn` there).
    fn lsn_of(&self, node: &str) -> impl Future<Output = Result<u64, String>> + Send;
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

    async fn lsn_check(&mut self) -> ReplyResult {
        self.conn(Proto::Resp2).await.call(&[&b"GET"[..], LSN_KEY]).await
    }

    async fn forward(&mut self, proto: Proto, command: Bytes, reply: ReplySender) {
        self.conn(proto).await.send_to(command, reply);
    }

    fn addr(&self) -> String {
        self.primary.addr().to_string()
    }

    async fn shut_down(&mut self) -> Result<(), String> {
        let addr = self.addr();
        let conn = BackendConn::spawn(&addr, Proto::Resp2, self.opts.clone());
        // Redis closes the connection without a reply once it stops; a reply is a refusal.
        if let Ok(reply) = conn.call(&["SHUTDOWN", "NOSAVE", "NOW"]).await {
            return Err(String::from_utf8_lossy(&reply).trim().to_string());
        }
        let gone_by = tokio::time::Instant::now() + SHUTDOWN_WAIT;
        while BackendConn::spawn(&addr, Proto::Resp2, self.opts.clone()).call(&["PING"]).await.is_ok() {
            if tokio::time::Instant::now() > gone_by {
                return Err(format!("{addr} still answers {SHUTDOWN_WAIT:?} after SHUTDOWN"));
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        Ok(())
    }

    async fn lsn_of(&self, node: &str) -> Result<u64, String> {
        let conn = BackendConn::spawn(node, Proto::Resp2, self.opts.clone());
        let reply = conn.call(&[&b"GET"[..], LSN_KEY]).await.map_err(|e| e.to_string())?;
        crate::keys::parse_lsn(&reply).ok_or_else(|| String::from_utf8_lossy(&reply).trim().to_string())
    }
}

/// How long a stopped primary may take to close its port.
const SHUTDOWN_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

impl CommittedJournal for Reader {
    async fn read(&self, from: u64, to: u64) -> Result<Vec<CommittedEntry>, ReadError> {
        Reader::read(self, from, to).await
    }
}

/// The shard's journal stream, as the journaler writes it.
pub(super) trait JournalStream: Send + Sync + 'static {
    type Writer: StreamWriter;

    /// Claims the stream's next epoch and recovers it: the writer that continues it.
    fn recover(&self) -> impl Future<Output = Result<Self::Writer, WriteError>> + Send;
}

/// The one writer of a stream (invariant I4), between its recovery and its first failure.
pub(super) trait StreamWriter: Send + Sync + 'static {
    /// Sends `payload` as the next entry; the future resolves once the ack quorum holds it.
    fn append(&self, payload: Bytes) -> AppendFuture;
    /// Everything up to here is committed.
    fn commit_lsn(&self) -> u64;
    fn epoch(&self) -> u64;
    /// How many journal nodes are in sync and receiving appends (`WAIT`'s answer).
    fn live_nodes(&self) -> usize;
}

/// A shard's stream on the journal nodes, written through the quorum writer.
pub(super) struct QuorumStream {
    pub(super) shard: usize,
    pub(super) name: String,
    pub(super) setup: JournalSetup,
}

impl JournalStream for QuorumStream {
    type Writer = QuorumWriter;

    fn recover(&self) -> impl Future<Output = Result<QuorumWriter, WriteError>> + Send {
        let setup = &self.setup;
        quorum::recover(
            &setup.meta,
            crate::router::shard_id(self.shard),
            &self.name,
            &setup.nodes,
            setup.quorum.clone(),
            &setup.writer_id,
        )
    }
}

impl StreamWriter for QuorumWriter {
    fn append(&self, payload: Bytes) -> AppendFuture {
        Box::pin(QuorumWriter::append(self, payload))
    }

    fn commit_lsn(&self) -> u64 {
        QuorumWriter::commit_lsn(self)
    }

    fn epoch(&self) -> u64 {
        QuorumWriter::epoch(self)
    }

    fn live_nodes(&self) -> usize {
        QuorumWriter::live_nodes(self).iter().filter(|live| **live).count()
    }
}

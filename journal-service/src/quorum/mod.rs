//! The quorum client of the journal: one writer per shard stream that replicates every entry to
//! all journal nodes and commits on an ack quorum, the recovery a new writer runs before it
//! appends, and a reader of committed entries.
//!
//! # Protocol
//!
//! A stream is replicated on `write_quorum` nodes (W, all of them written); an entry is
//! committed once `ack_quorum` (A) nodes have fsync'd it *and* every lower LSN is committed.
//! The writer owns an epoch `f`, taken by compare-and-set in the metadata store; nodes refuse
//! appends and truncations below the highest epoch they were fenced at.
//!
//! Every payload the writer stores starts with a small header ([`frame`]) holding the entry's
//! **origin epoch** — the epoch of the writer that first created that entry. The node's
//! `Entry::epoch` is the epoch of the writer that *copied* it there (it must be at least the
//! node's fence), so a re-replicated entry keeps its origin while being restamped. Origins play
//! the role of Raft's log terms; stamps play the role of Raft's `currentTerm` check.
//!
//! Recovery by a new writer (see [`recovery`]):
//! 1. claim epoch `f = e + 1` in the metadata store (compare-and-set: one winner per epoch);
//! 2. fence every node it can reach at `f`; it needs at least `F = W - A + 1` of them
//!    (see [`core::fence_quorum`]);
//! 3. among the fenced nodes pick the **source**: the node whose last entry has the highest
//!    `(origin epoch, lsn)`; its log up to its last LSN `T` becomes the writer's log;
//! 4. bring each other node in line: keep its longest prefix whose origins agree with the
//!    source, `truncate_after` the rest, and copy the source's entries after it (stamped `f`);
//! 5. append a **barrier** entry of origin `f` at `T + 1` and wait until it is committed:
//!    that commits everything up to `T + 1`. Only then does the writer accept appends.
//!
//! So recovery needs `max(W - A + 1, A)` reachable nodes (2 of 3 for 3/2, 3 of 5 for 5/3).
//! Readers skip barriers: LSNs of data entries are increasing but not always contiguous.
//!
//! Entries recovered from older epochs are never committed by counting their copies, only by a
//! later entry of the writer's own origin ([`core::CommitTracker`]): counting copies of an old
//! entry is unsafe (Raft's "figure 8"): a node may hold a *different* entry of a higher origin at
//! that LSN, written by a writer that did not see the old one, and a later recovery could choose
//! it. Choosing per LSN the entry of the highest epoch, without that rule, loses acknowledged
//! entries in exactly that schedule; so does choosing by the *stamp* epoch, because a restamped
//! copy can sit on a node whose log is shorter than the writer's.
//!
//! # Why no acknowledged entry is lost
//!
//! Write `L_f` for writer `f`'s log (source log up to `T`, then its own entries).
//! * **Unique origin.** Writer `f` creates the entry of origin `f` at each LSN at most once, so
//!   two entries with the same `(origin, lsn)` are the same entry.
//! * **Log matching.** Writer `f` sends LSN `n` to a node only after checking (step 4, or the
//!   catch-up of a node that comes back) that the node's log agrees with `L_f` below `n`, and
//!   only while the node stays fenced at `f` (a newer writer's fence makes the node refuse).
//!   So if two nodes hold the same `(origin, lsn)`, their logs agree up to that LSN.
//! * **Intersection.** An acknowledged entry `n` of writer `e` sits on `A` nodes, and its own
//!   barrier-or-later entry `m >= n` of origin `e` sits on those same `A` nodes. A later writer
//!   `f` fences `F = W - A + 1` nodes; `F + A > W`, so at least one fenced node `X` holds it —
//!   and it held it *before* it was fenced at `f`, since after that it refuses `e`'s appends.
//!   The same count means that once `F` nodes are fenced at `f`, at most `A - 1` nodes still
//!   accept `e`, so `e` can never again commit anything.
//! * **Completeness** (induction over epochs, as Raft's leader completeness): every writer
//!   `g` with `e < g < f` adopted a log containing `n`; so any node whose last entry has an
//!   origin `> e` holds a prefix of such a log that reaches at least `m` (its entries of origin
//!   `> e` come after `m`: a writer's own entries start after its recovered tail), and a node
//!   whose last origin is `e` and whose last LSN is `>= m` agrees with `L_e` up to `m`. The
//!   source has `(origin, lsn) >= X`'s `(e or more, >= m)`, so by log matching its log contains
//!   `n` with the acknowledged payload. Step 4 only truncates where a node disagrees with the
//!   source, which is never at or below `n` on a node holding `n`; a truncated-but-unfilled
//!   node (a writer that died mid-recovery) holds a prefix of a log that contains `n`.
//! * **Epochs never go back**: the metadata store's compare-and-set only moves an epoch forward,
//!   and a node's fenced epoch only rises.
//!
//! The `stateright` model in `tests/quorum_model.rs` checks these claims with the functions of
//! [`core`] on 3 nodes and 3 successive writers, with message loss, delay and crashes, and shows
//! that choosing the source by stamp epoch instead loses an acknowledged entry.

pub mod core;
pub mod frame;
pub mod reader;
pub mod recovery;
pub mod writer;

use std::net::SocketAddr;
use std::time::Duration;

use crate::cluster_tls::Transport;
use crate::error::NodeError;
use crate::meta::MetaError;

pub use reader::{CommittedEntry, ReadError, Reader};
pub use recovery::recover;
pub use writer::QuorumWriter;

/// How a stream is replicated and how long the writer waits.
#[derive(Debug, Clone)]
pub struct QuorumConfig {
    /// W: the number of nodes every entry is written to (the node list must have exactly W).
    pub write_quorum: usize,
    /// A: the number of nodes that must have fsync'd an entry before it is committed.
    pub ack_quorum: usize,
    /// How long an append may wait to be committed before the writer gives up on the stream.
    pub append_timeout: Duration,
    /// Timeout of each call to a node (fence, read, truncate, append).
    pub node_timeout: Duration,
    /// Committed entries kept in memory to bring a returning node up to date without reading.
    pub window_entries: usize,
    /// How the nodes are reached (mutual TLS in any real deployment).
    pub transport: Transport,
}

impl Default for QuorumConfig {
    fn default() -> Self {
        QuorumConfig {
            write_quorum: 3,
            ack_quorum: 2,
            append_timeout: Duration::from_secs(5),
            node_timeout: Duration::from_secs(2),
            window_entries: 4096,
            transport: Transport::Plain,
        }
    }
}

impl QuorumConfig {
    /// Checks that the quorums make sense for `nodes` journal nodes.
    pub fn validate(&self, nodes: usize) -> Result<(), WriteError> {
        let ok = self.write_quorum == nodes
            && self.ack_quorum >= 1
            && self.ack_quorum <= self.write_quorum
            && self.write_quorum <= 64;
        if ok {
            Ok(())
        } else {
            Err(WriteError::Config(format!(
                "need 1 <= ack_quorum ({}) <= write_quorum ({}) == number of nodes ({nodes}) <= 64",
                self.ack_quorum, self.write_quorum
            )))
        }
    }
}

/// The largest body one entry carries: a node's record payload limit less the quorum frame's
/// header. A larger append is refused before anything is sent (the writer keeps going).
pub const MAX_ENTRY_BODY: usize = crate::record::MAX_PAYLOAD_LEN - frame::HEADER_LEN;

/// Why an append or a recovery failed. Nothing that ends in an error was acknowledged.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    /// Fewer than `needed` nodes took the entry (or answered the fence) in time. If `acked > 0`
    /// copies exist, and the next writer's recovery may still commit the entry.
    #[error("no quorum: {acked} of {needed} needed nodes acknowledged ({})", describe(errors))]
    NoQuorum { acked: usize, needed: usize, errors: Vec<(SocketAddr, NodeError)> },
    /// A newer writer (epoch `epoch`) has taken the stream: this writer must stop for good.
    /// Entries that were in flight are decided by that writer's recovery.
    #[error("fenced: a newer writer holds epoch {epoch}")]
    Fenced { epoch: u64 },
    /// The entry was sent but the writer stopped before it was committed (an earlier entry
    /// failed, or the writer was shut down): it may or may not survive the next recovery.
    #[error("outcome unknown for lsn {lsn}: {reason}")]
    OutcomeUnknown { lsn: u64, reason: String },
    /// The writer had already stopped; this entry was never sent.
    #[error("writer stopped: {reason}")]
    Stopped { reason: String },
    /// No journal node could be reached.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// A node holds data this client cannot interpret.
    #[error("journal data error: {0}")]
    Corrupt(String),
    /// The metadata store refused or failed the epoch claim.
    #[error("metadata store: {0}")]
    Meta(String),
    /// The configuration does not fit the node list.
    #[error("bad quorum configuration: {0}")]
    Config(String),
    /// The body is larger than an entry holds ([`MAX_ENTRY_BODY`]); nothing was sent.
    #[error("an entry of {len} bytes is larger than the {max} bytes an entry holds")]
    TooLarge { len: usize, max: usize },
}

impl From<MetaError> for WriteError {
    fn from(e: MetaError) -> Self {
        WriteError::Meta(e.to_string())
    }
}

fn describe(errors: &[(SocketAddr, NodeError)]) -> String {
    if errors.is_empty() {
        return "no node errors".to_string();
    }
    errors.iter().map(|(addr, e)| format!("{addr}: {e}")).collect::<Vec<_>>().join("; ")
}

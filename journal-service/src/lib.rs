//! memlog's journal: the per-shard, quorum-replicated, fenced, fsync'd log that makes a write
//! durable before Redis sees it, plus the metadata store that holds epochs and topology.

pub mod node;

//! memlog's journal: the per-shard, quorum-replicated, fenced, fsync'd log that makes a write
//! durable before Redis sees it, plus the metadata store that holds epochs and topology.

pub mod entry;
pub mod error;
pub mod node;
pub mod node_client;
pub mod protocol;
pub mod record;
pub mod storage;

pub use entry::{Entry, NodeStatus, StreamId, StreamTail};
pub use error::NodeError;
pub use node_client::NodeClient;
pub mod meta;
pub mod quorum;

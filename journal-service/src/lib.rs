//! memlog's journal: the per-shard, quorum-replicated, fenced, fsync'd log that makes a write
//! durable before Redis sees it, plus the metadata store that holds epochs and topology.
//!
//! No length or offset is narrowed by an `as` cast (which would wrap silently and write a frame
//! or record that lies about its size): conversions go through `try_from`, with the bound that
//! makes them hold named where they cannot fail (tests' fixtures aside).
#![cfg_attr(not(test), deny(clippy::cast_possible_truncation))]

pub mod cluster_ca;
pub mod cluster_tls;
pub mod entry;
pub mod error;
pub mod node;
pub mod node_client;
pub mod private_fs;
pub mod protocol;
pub mod record;
pub mod sighup;
pub mod storage;
#[cfg(test)]
mod test_io;

pub use entry::{Entry, NodeStatus, StreamId, StreamTail};
pub use error::NodeError;
pub use node_client::NodeClient;
pub mod meta;
pub mod quorum;

/// Latency histogram buckets (seconds), 50 µs to 2.5 s, shared by every memlog process so
/// dashboards can aggregate across them.
pub const LATENCY_BUCKETS: &[f64] =
    &[0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

//! Snapshots of a shard, so the journal does not grow without bound and a node that lost
//! everything is rebuilt from the newest snapshot plus the journal's tail, not from the whole
//! journal.
//!
//! A snapshot is an RDB of one of the shard's Redis nodes, fetched and loaded over Redis's own
//! replication protocol (`rdb`), so it needs nothing but stock Redis reachable over the network.
//! The files are kept in a directory and listed in the metadata store's catalog; the journal is
//! truncated below the oldest snapshot kept (`shard`). A shard whose primary held data before
//! memlog fronted it starts from a baseline snapshot at LSN 0 (`adopt`).

pub(crate) mod adopt;
pub(crate) mod rdb;
mod shard;

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

pub(crate) use shard::ShardSnapshots;

use crate::config::{Mode, SnapshotConfig};

/// The `[snapshot]` configuration, resolved.
#[derive(Debug, Clone)]
pub(crate) struct SnapshotSettings {
    pub dir: PathBuf,
    pub every_entries: u64,
    pub keep: usize,
    pub serve_ip: IpAddr,
    pub timeout: Duration,
    /// Clients reach database 0 only (cluster mode): a node's keys elsewhere are kept in its
    /// snapshots but make it no holder of the shard's data. A standalone endpoint serves them all.
    pub database_0_only: bool,
}

impl SnapshotSettings {
    pub(crate) fn new(cfg: &SnapshotConfig, mode: Mode) -> Self {
        SnapshotSettings {
            dir: PathBuf::from(&cfg.dir),
            every_entries: cfg.every_entries,
            keep: cfg.keep,
            serve_ip: cfg.serve_ip,
            timeout: Duration::from_millis(cfg.timeout_ms),
            database_0_only: mode == Mode::Cluster,
        }
    }
}

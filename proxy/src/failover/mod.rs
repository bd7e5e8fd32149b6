//! The failover controller: in the proxy that owns a shard, it health-checks every Redis node
//! of the shard and keeps one primary serving (DESIGN.md, "Failover").
//!
//! - [`core`]: the decisions, pure (health-check results in, commands out), unit-tested;
//! - [`shell`]: the I/O — health checks (`PING`, `ROLE`, `GET __memlog:lsn`) on the controller's
//!   own connections, `REPLICAOF`, holding and retargeting the shard's connections, the
//!   catch-up barrier through the sequencer, metrics and events;
//! - [`record`]: the shard topology in the metadata store (read at start, written on each change);
//! - [`ShardStatus`]: what `MEMLOG TOPOLOGY` reports.

pub mod core;
pub mod record;
pub mod shell;

use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::oneshot;

use crate::config::FailoverConfig;

/// The controller's timings.
#[derive(Debug, Clone, Copy)]
pub struct FailoverSettings {
    /// A primary silent this long is replaced.
    pub detect: Duration,
    /// How often every node is checked.
    pub check_interval: Duration,
    /// How long one check may take.
    pub check_timeout: Duration,
    /// How long requests wait for a held shard before `-TRYAGAIN`.
    pub hold: Duration,
}

impl From<&FailoverConfig> for FailoverSettings {
    fn from(cfg: &FailoverConfig) -> Self {
        FailoverSettings {
            detect: Duration::from_millis(cfg.detect_ms),
            check_interval: Duration::from_millis(cfg.check_interval_ms.max(1)),
            check_timeout: Duration::from_millis(cfg.check_timeout_ms.max(1)),
            hold: Duration::from_millis(cfg.hold_ms),
        }
    }
}

/// `MEMLOG FAILOVER`: a graceful switchover of one shard, answered when done.
pub struct SwitchoverRequest {
    pub to: Option<String>,
    pub done: oneshot::Sender<Result<String, String>>,
}

/// One node in `MEMLOG TOPOLOGY`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeStatus {
    pub addr: String,
    /// Its `__memlog:lsn` at the last check it answered; unknown before.
    pub lsn: Option<u64>,
    /// Whether it answered the last check.
    pub up: bool,
}

/// One shard in `MEMLOG TOPOLOGY`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShardView {
    pub id: usize,
    pub slots: String,
    /// The topology version in the metadata store when this shard last changed (start-up,
    /// failover); counted from the start without a metadata store.
    pub epoch: u64,
    /// Reads and writes are held: the shard is failing over, or waits for a node to return.
    pub held: bool,
    pub primary: NodeStatus,
    pub replicas: Vec<NodeStatus>,
}

/// The live view of a shard, kept by its controller.
pub struct ShardStatus(Mutex<ShardView>);

impl ShardStatus {
    pub fn new(view: ShardView) -> ShardStatus {
        ShardStatus(Mutex::new(view))
    }

    pub fn view(&self) -> ShardView {
        self.0.lock().unwrap().clone()
    }

    pub fn update(&self, change: impl FnOnce(&mut ShardView)) {
        change(&mut self.0.lock().unwrap());
    }

    /// The replicas' addresses joined by `sep` (INFO's memlog section).
    pub fn join(&self, sep: &str) -> String {
        self.0.lock().unwrap().replicas.iter().map(|r| r.addr.as_str()).collect::<Vec<_>>().join(sep)
    }
}

/// `MEMLOG TOPOLOGY`'s JSON: `{"shards":[…]}`.
pub fn topology_json(shards: &[ShardView]) -> String {
    #[derive(Serialize)]
    struct Topology<'a> {
        shards: &'a [ShardView],
    }
    serde_json::to_string(&Topology { shards }).unwrap_or_default()
}

/// `"0-5460,6000-6100"`
pub fn slots_text(ranges: &[(u16, u16)]) -> String {
    ranges.iter().map(|(lo, hi)| format!("{lo}-{hi}")).collect::<Vec<_>>().join(",")
}

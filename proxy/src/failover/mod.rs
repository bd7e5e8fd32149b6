//! The failover controller: in the proxy that owns a shard, it health-checks every Redis node
//! of the shard and keeps one primary serving (docs/architecture.md, "Failure handling").
//!
//! - [`core`]: the decisions, pure (health-check results in, commands out), unit-tested;
//! - [`shell`]: the I/O — health checks (`PING`, `ROLE`, `GET __memlog:lsn`) on the controller's
//!   own connections, `REPLICAOF`, holding and retargeting the shard's connections, the
//!   catch-up barrier through the sequencer, metrics and events;
//! - [`record`]: the shard topology in the metadata store (read at start, written on each change);
//!
//! What `MEMLOG TOPOLOGY` reports (`ShardStatus`) is plain data in [`crate::status`].

pub(crate) mod core;
pub(crate) mod record;
pub(crate) mod shell;

use std::time::Duration;

use tokio::sync::oneshot;

use crate::config::FailoverConfig;

/// The controller's timings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FailoverSettings {
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
pub(crate) struct SwitchoverRequest {
    pub to: Option<String>,
    pub done: oneshot::Sender<Result<String, String>>,
}

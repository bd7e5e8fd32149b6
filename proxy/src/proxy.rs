//! The proxy's shared state: configuration, slot map, command table, shards and the registry
//! of connected clients. Built once by `startup`, then shared by every session.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use dashmap::DashMap;
use journal_service::meta::MetaStore;

use crate::clients::ClientHandle;
use crate::config::ProxyConfig;
use crate::resp::{Proto, Request};
use crate::router::SlotMap;
use crate::sequencer::{SequencerOp, SequencerRequest};
use crate::shard::Shard;
use crate::table::{CommandInfo, CommandTable};

pub(crate) struct Proxy {
    pub cfg: ProxyConfig,
    pub slots: SlotMap,
    pub table: CommandTable,
    pub shards: Vec<Shard>,
    pub clients: DashMap<u64, Arc<ClientHandle>>,
    pub next_client_id: AtomicU64,
    /// What INFO, SLOWLOG and LATENCY report about the proxy's own work.
    pub stats: crate::stats::ServerStats,
    /// `run_id` of INFO: 40 random hex digits, new at every start, as Redis's.
    pub run_id: String,
    /// `CLIENT PAUSE`: held commands wait here.
    pub pause: crate::clients::ClientPause,
    pub started: Instant,
    /// The Redis version of the backends, reported by HELLO and INFO.
    pub redis_version: String,
    /// This proxy's cluster node ID (40 hex digits), stable for its announce address.
    pub node_id: String,
    pub announce_host: String,
    pub announce_port: u16,
    /// Timeouts and credentials of connections to the Redis nodes.
    pub backend: crate::backend::BackendOptions,
    /// Pub/sub: subscriptions, delivery, the shards' keyspace notifications.
    pub pubsub: Arc<crate::pubsub::Hub>,
    /// Client-side caching: the tracking table and the delivery of invalidations.
    pub tracker: Arc<crate::pubsub::tracking::Tracker>,
    /// Scripts loaded through this proxy (EVALSHA is journaled as EVAL with their body).
    pub scripts: Arc<crate::scripts::ScriptCache>,
    /// Clients in MONITOR mode.
    pub monitors: crate::monitor::Monitors,
    /// ACL: the command catalog, the users every request is checked against, `ACL LOG`.
    pub(crate) access: crate::access::Access,
    /// The parameter group (`CONFIG SET`, `[parameters]`).
    pub(crate) parameters: Parameters,
}

/// The parameter group in force, where it is kept, and the one change at a time.
pub(crate) struct Parameters {
    /// What node preparation applies and the proxy enforces.
    pub(crate) live: Arc<crate::params::LiveGroup>,
    /// The metadata store keeping the group (none without a `[journal]`).
    pub(crate) store: Option<Arc<MetaStore>>,
    /// Held by a change from its journaling to its recording, so every shard's stream and the
    /// store see changes in the same order.
    pub(crate) changes: tokio::sync::Mutex<()>,
    /// The node preparation that applies the group (to the replicas, once a change is in).
    pub(crate) prepare: Arc<crate::prepare::NodePreparation>,
}

impl Proxy {
    /// Puts `group` in force: the live group (node preparation, the proxy's own `timeout` and
    /// `proto-max-bulk-len`) and the thresholds of SLOWLOG and LATENCY, which report what the
    /// proxy measures (the nodes get the same values with the rest of the group).
    pub(crate) fn put_parameters_in_force(&self, group: crate::params::Group) {
        use std::sync::atomic::Ordering::Relaxed;
        let number = |name: &str| group.get(name).and_then(|v| v.parse::<i64>().ok());
        if let Some(usec) = number("slowlog-log-slower-than") {
            self.stats.slowlog.log_slower_than.store(usec, Relaxed);
        }
        if let Some(len) = number("slowlog-max-len") {
            self.stats.slowlog.max_len.store(len.max(0) as u64, Relaxed);
        }
        if let Some(ms) = number("latency-monitor-threshold") {
            self.stats.latency.threshold_ms.store(ms.max(0) as u64, Relaxed);
        }
        self.parameters.live.replace(group);
        let max_keys = self.parameters.live.tracking_max_keys();
        self.tracker.set_max_keys(usize::try_from(max_keys).unwrap_or(usize::MAX));
        // In force for the next write; each shard's evictor reads its primary's memory at once.
        let (limit, eviction) = self.parameters.live.memory_limit();
        self.shards.iter().for_each(|shard| shard.memory.set_limit(limit, eviction));
    }
}

/// Waits until every write queued on any shard before this call was applied: a read queued
/// behind them through each sequencer is answered only then. False if a shard refused the read
/// (it is not applying: its writes wait, or were refused). A shard refused at start-up applies
/// nothing, ever: it is not waited for.
pub(crate) async fn after_queued_writes(shards: &[Shard]) -> bool {
    let mut waiting = Vec::with_capacity(shards.len());
    for shard in shards.iter().filter(|shard| shard.refusal().is_none()) {
        let (reply, applied) = tokio::sync::oneshot::channel();
        let op = SequencerOp::Read(Request::from_args(&[&b"PING"[..]]));
        shard.sequencer.submit(SequencerRequest { proto: Proto::Resp2, db: 0, client: 0, op, reply }).await;
        waiting.push(applied);
    }
    let mut all = true;
    for applied in waiting {
        all &= matches!(applied.await, Ok(Ok(reply)) if !reply.starts_with(b"-"));
    }
    all
}

/// Journals `request` (a `CONFIG SET`) on every shard's stream through its sequencer, after
/// every write already queued there, and returns each shard's reply in shard order. `command`
/// is CONFIG SET's table entry, which names no key, so no WATCH is touched (`None`: every
/// key counts as touched).
pub(crate) async fn journal_on_every_shard(
    shards: &[Shard],
    request: &Request,
    command: Option<Arc<CommandInfo>>,
) -> Vec<Result<Bytes, String>> {
    let mut waiting = Vec::with_capacity(shards.len());
    for shard in shards {
        let (reply, applied) = tokio::sync::oneshot::channel();
        let op = SequencerOp::Write { request: request.clone(), command: command.clone() };
        shard.sequencer.submit(SequencerRequest { proto: Proto::Resp2, db: 0, client: 0, op, reply }).await;
        waiting.push(applied);
    }
    let mut replies = Vec::with_capacity(waiting.len());
    for applied in waiting {
        replies.push(match applied.await {
            Ok(Ok(reply)) if reply.starts_with(b"-") => {
                Err(String::from_utf8_lossy(&reply[1..]).trim_end().to_string())
            }
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(e)) => Err(format!("ERR memlog: {e}")),
            Err(_) => Err("ERR memlog: the shard dropped the request".to_string()),
        });
    }
    replies
}

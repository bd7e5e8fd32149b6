//! The proxy's shared state: configuration, slot map, command table, shards and the registry
//! of connected clients. Built once by `startup`, then shared by every session.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

use dashmap::DashMap;

use crate::clients::ClientHandle;
use crate::config::ProxyConfig;
use crate::router::SlotMap;
use crate::shard::Shard;
use crate::table::CommandTable;

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
    /// Scripts loaded through this proxy (EVALSHA is journaled as EVAL with their body).
    pub scripts: Arc<crate::scripts::ScriptCache>,
    /// Clients in MONITOR mode.
    pub monitors: crate::monitor::Monitors,
    /// ACL: the command catalog, the users every request is checked against, `ACL LOG`.
    pub(crate) access: crate::access::Access,
}

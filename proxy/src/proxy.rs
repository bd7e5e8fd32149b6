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

/// Counters INFO reports.
#[derive(Default)]
pub(crate) struct Stats {
    pub commands: AtomicU64,
    pub connections: AtomicU64,
    pub rejected_connections: AtomicU64,
}

pub(crate) struct Proxy {
    pub cfg: ProxyConfig,
    pub slots: SlotMap,
    pub table: CommandTable,
    pub shards: Vec<Shard>,
    pub clients: DashMap<u64, Arc<ClientHandle>>,
    pub next_client_id: AtomicU64,
    pub stats: Stats,
    pub started: Instant,
    /// The Redis version of the backends, reported by HELLO and INFO.
    pub redis_version: String,
    /// This proxy's cluster node ID (40 hex digits), stable for its announce address.
    pub node_id: String,
    pub announce_host: String,
    pub announce_port: u16,
    /// Pub/sub: subscriptions, delivery, the shards' keyspace notifications.
    pub pubsub: Arc<crate::pubsub::Hub>,
    /// Scripts loaded through this proxy (EVALSHA is journaled as EVAL with their body).
    pub scripts: Arc<crate::scripts::ScriptCache>,
    /// Clients in MONITOR mode.
    pub monitors: crate::monitor::Monitors,
}

impl Proxy {
    /// True when `name`/`password` are a configured user (or no users are configured).
    pub(crate) fn check_user(&self, name: &str, password: &[u8]) -> bool {
        self.cfg.users.iter().any(|u| u.name == name && u.password.as_bytes() == password)
    }

    pub(crate) fn auth_required(&self) -> bool {
        !self.cfg.users.is_empty()
    }
}

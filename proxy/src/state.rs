//! The proxy's shared state: configuration, slot map, command table, shards (their sequencer
//! and read pools) and the registry of connected clients.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwapOption;
use dashmap::DashMap;
use tokio_util::sync::CancellationToken;

use journal_service::meta::ShardTopology;
use tokio::sync::{mpsc, watch};

use crate::backend::{BackendConn, BackendOptions, NodeTarget, Role};
use crate::commands::table::{CommandInfo, CommandTable};
use crate::config::ProxyConfig;
use crate::failover::shell::{Controller, ControllerSetup};
use crate::failover::{self, FailoverSettings, NodeStatus, ShardStatus, ShardView, SwitchoverRequest};
use crate::resp::Proto;
use crate::router::SlotMap;
use crate::sequencer::{JournalSetup, Sequencer};
use crate::snapshot::{ShardSnapshots, SnapshotSettings};

/// The key in which each Redis node records the journal prefix it holds; clients never see it.
pub const LSN_KEY: &[u8] = b"__memlog:lsn";
/// Keys memlog uses inside Redis (the LSN, the scratch key of dry-run probes); clients cannot
/// name them.
pub const RESERVED_PREFIX: &[u8] = b"__memlog:";

/// One shard: its sequencer, its read pools and its failover controller. Every connection of
/// the shard follows `primary`, which the controller moves when it fails over.
pub struct Shard {
    pub id: usize,
    /// The node every connection of the shard follows: the current primary.
    pub target: Arc<NodeTarget>,
    /// The nodes as the failover controller last saw them (`MEMLOG TOPOLOGY`).
    pub status: Arc<ShardStatus>,
    pub sequencer: Sequencer,
    /// `MEMLOG FAILOVER` requests to the shard's controller.
    pub switchover: mpsc::UnboundedSender<SwitchoverRequest>,
    /// The shard's snapshots, when `[snapshot]` is configured.
    pub snapshots: Option<Arc<ShardSnapshots>>,
    reads2: Vec<BackendConn>,
    reads3: OnceLock<Vec<BackendConn>>,
    opts: BackendOptions,
}

/// What a shard starts from.
struct ShardStart {
    id: usize,
    slots: Vec<(u16, u16)>,
    /// The primary to start with (the recorded one after a failover).
    primary: String,
    /// Every configured node, primary first.
    nodes: Vec<String>,
    /// The shard's epoch at start (the topology version recorded at start-up).
    epoch: u64,
}

impl Shard {
    async fn start(
        start: ShardStart,
        connections: usize,
        opts: BackendOptions,
        journal: Option<JournalSetup>,
        settings: FailoverSettings,
    ) -> anyhow::Result<Shard> {
        let ShardStart { id, slots, primary, nodes, epoch } = start;
        let target = NodeTarget::new(id, &primary, settings.hold);
        let meta = journal.as_ref().map(|j| j.meta.clone());
        // Unknown until the controller's first health check.
        let node = |addr: &str| NodeStatus { addr: addr.to_string(), lsn: None, up: false };
        let status = Arc::new(ShardStatus::new(ShardView {
            id,
            slots: failover::slots_text(&slots),
            epoch,
            held: false,
            primary: node(&primary),
            replicas: nodes.iter().filter(|n| **n != primary).map(|n| node(n)).collect(),
        }));
        metrics::gauge!("memlog_shard_epoch", "shard" => id.to_string()).set(epoch as f64);
        // The controller watches the nodes while the sequencer recovers and catches the primary
        // up, so a primary found dead at start-up is failed over instead of waited for.
        let (started, sequencer) = watch::channel(None);
        let switchover = Controller::spawn(ControllerSetup {
            shard: id,
            slots,
            nodes,
            target: target.clone(),
            sequencer,
            meta,
            status: status.clone(),
            settings,
        });
        let snapshots = journal.as_ref().and_then(|setup| {
            let settings = setup.snapshots.clone()?;
            let journal = (setup.nodes.clone(), setup.quorum.transport.clone());
            Some(Arc::new(ShardSnapshots::new(id, settings, setup.meta.clone(), journal, opts)))
        });
        let sequencer = Sequencer::start(id, target.clone(), opts, journal, snapshots.clone()).await?;
        started.send_replace(Some(sequencer.clone()));
        if let Some(snapshots) = &snapshots {
            snapshots.clone().spawn_scheduler(status.clone(), target.clone());
        }
        Ok(Shard {
            id,
            reads2: (0..connections)
                .map(|_| BackendConn::follow(target.clone(), Role::Read, Proto::Resp2, opts))
                .collect(),
            target,
            status,
            sequencer,
            switchover,
            snapshots,
            reads3: OnceLock::new(),
            opts,
        })
    }

    /// The read connection a client uses: always the same one for a client, so its reads of
    /// this shard stay in order among themselves.
    pub fn read_conn(&self, proto: Proto, client_id: u64) -> &BackendConn {
        let pool = match proto {
            Proto::Resp2 => &self.reads2,
            Proto::Resp3 => self.reads3.get_or_init(|| {
                (0..self.reads2.len())
                    .map(|_| BackendConn::follow(self.target.clone(), Role::Read, Proto::Resp3, self.opts))
                    .collect()
            }),
        };
        &pool[(client_id % pool.len() as u64) as usize]
    }

    /// The shard's primary now (it moves when the controller fails over).
    pub fn current_primary(&self) -> String {
        self.target.addr().to_string()
    }

    /// The shard's other nodes now.
    pub fn current_replicas(&self) -> Vec<String> {
        let primary = self.target.addr();
        let view = self.status.view();
        std::iter::once(view.primary).chain(view.replicas).map(|n| n.addr).filter(|a| *a != *primary).collect()
    }
}

/// What the proxy knows about one client connection (`CLIENT LIST`, `CLIENT KILL`).
pub struct ClientHandle {
    pub id: u64,
    pub addr: SocketAddr,
    pub local_addr: SocketAddr,
    pub connected_at: Instant,
    /// Milliseconds since `connected_at` of the last command, for `idle=`.
    pub last_command_ms: AtomicU64,
    pub last_command: ArcSwapOption<CommandInfo>,
    pub name: Mutex<Option<String>>,
    pub user: Mutex<String>,
    pub lib_name: Mutex<Option<String>>,
    pub lib_version: Mutex<Option<String>>,
    pub proto: AtomicU8,
    /// Cancelled by `CLIENT KILL`: the session stops at once.
    pub kill: CancellationToken,
    /// True while the client waits in a blocking command (`flags=b`).
    pub blocked: AtomicBool,
    /// Commands queued since MULTI (`multi=`), -1 outside a transaction.
    pub multi: AtomicI64,
}

impl ClientHandle {
    pub fn new(id: u64, addr: SocketAddr, local_addr: SocketAddr, user: &str) -> ClientHandle {
        ClientHandle {
            id,
            addr,
            local_addr,
            connected_at: Instant::now(),
            last_command_ms: AtomicU64::new(0),
            last_command: ArcSwapOption::empty(),
            name: Mutex::new(None),
            user: Mutex::new(user.to_string()),
            lib_name: Mutex::new(None),
            lib_version: Mutex::new(None),
            proto: AtomicU8::new(2),
            kill: CancellationToken::new(),
            blocked: AtomicBool::new(false),
            multi: AtomicI64::new(-1),
        }
    }
}

impl ClientHandle {
    pub fn proto(&self) -> Proto {
        if self.proto.load(Ordering::Relaxed) == 3 {
            Proto::Resp3
        } else {
            Proto::Resp2
        }
    }

    /// One `CLIENT LIST` / `CLIENT INFO` line, in Redis's format; `subscriptions` are the
    /// client's pub/sub counts (the hub keeps them).
    pub fn info_line(&self, subscriptions: &crate::pubsub::SubscriptionCounts) -> String {
        let now = Instant::now();
        let subscribed = subscriptions.channels + subscriptions.patterns + subscriptions.shard_channels > 0;
        let queued = self.multi.load(Ordering::Relaxed);
        let flags = match (self.blocked.load(Ordering::Relaxed), subscribed, queued >= 0) {
            (true, _, _) => "b",
            (_, true, _) => "P",
            (_, _, true) => "x",
            _ => "N",
        };
        format!(
            "id={} addr={} laddr={} fd=0 name={} age={} idle={} flags={} db=0 sub={} psub={} ssub={} multi={} qbuf=0 qbuf-free=0 argv-mem=0 multi-mem=0 rbs=0 rbp=0 obl=0 oll=0 omem=0 tot-mem=0 events=r cmd={} user={} redir=-1 resp={} lib-name={} lib-ver={}",
            self.id,
            self.addr,
            self.local_addr,
            self.name.lock().unwrap().as_deref().unwrap_or(""),
            now.duration_since(self.connected_at).as_secs(),
            now.duration_since(self.connected_at).as_secs().saturating_sub(self.last_command_ms.load(Ordering::Relaxed) / 1000),
            flags,
            subscriptions.channels,
            subscriptions.patterns,
            subscriptions.shard_channels,
            queued,
            self.last_command.load().as_ref().map(|c| c.name.as_str()).unwrap_or("NULL"),
            self.user.lock().unwrap(),
            if self.proto() == Proto::Resp3 { 3 } else { 2 },
            self.lib_name.lock().unwrap().as_deref().unwrap_or(""),
            self.lib_version.lock().unwrap().as_deref().unwrap_or(""),
        )
    }
}

/// Counters INFO reports.
#[derive(Default)]
pub struct Stats {
    pub commands: AtomicU64,
    pub connections: AtomicU64,
    pub rejected_connections: AtomicU64,
}

pub struct Proxy {
    pub cfg: ProxyConfig,
    pub slots: SlotMap,
    pub table: CommandTable,
    pub shards: Vec<Shard>,
    pub clients: DashMap<u64, Arc<ClientHandle>>,
    pub next_client_id: AtomicU64,
    pub stats: Stats,
    pub started: Instant,
    pub started_wall: SystemTime,
    /// The Redis version of the backends, reported by HELLO and INFO.
    pub redis_version: String,
    /// This proxy's cluster node ID (40 hex digits), stable for its announce address.
    pub node_id: String,
    pub announce_host: String,
    pub announce_port: u16,
    /// Pub/sub: subscriptions, delivery, the shards' keyspace notifications.
    pub pubsub: crate::pubsub::Hub,
    /// Scripts loaded through this proxy (EVALSHA is journaled as EVAL with their body).
    pub scripts: Arc<crate::commands::scripting::ScriptCache>,
    /// Clients in MONITOR mode.
    pub monitors: crate::monitor::Monitors,
}

impl Proxy {
    /// Connects to the shards and loads the command table from the first shard's primary.
    pub async fn start(cfg: ProxyConfig) -> anyhow::Result<Proxy> {
        let slots = SlotMap::from_config(&cfg.shards)?;
        let opts = BackendOptions {
            connect_timeout: Duration::from_millis(cfg.connect_timeout_ms),
            request_timeout: Duration::from_millis(cfg.backend_timeout_ms),
        };
        let connections = cfg.backend_connections.max(1);
        let journal = match &cfg.journal {
            Some(journal) => Some(journal_setup(journal, &cfg, &cfg.listen).await?),
            None => {
                tracing::warn!("no [journal] configured: writes are routed to Redis but NOT durable");
                None
            }
        };
        let plan = shard_starts(&cfg, &slots, journal.as_ref()).await?;
        let (table, redis_version) = load_command_table(&plan[0], opts).await?;
        let settings = FailoverSettings::from(&cfg.failover);
        // Shards recover and catch up in parallel; the proxy serves once all are ready.
        let starts = plan.into_iter().map(|start| {
            let journal = journal.clone();
            tokio::spawn(async move { Shard::start(start, connections, opts, journal, settings).await })
        });
        let mut shards = Vec::with_capacity(cfg.shards.len());
        for start in starts.collect::<Vec<_>>() {
            shards.push(start.await??);
        }
        let announce = cfg.announce.clone().unwrap_or_else(|| cfg.listen.clone());
        let (announce_host, announce_port) = match announce.rsplit_once(':') {
            Some((host, port)) => (host.trim_matches(['[', ']']).to_string(), port.parse()?),
            None => anyhow::bail!("announce/listen address {announce:?} has no port"),
        };
        let host =
            if announce_host == "0.0.0.0" || announce_host == "::" { "127.0.0.1".to_string() } else { announce_host };
        let node_id = node_id_for(&format!("{host}:{announce_port}"));
        Ok(Proxy {
            cfg,
            slots,
            table,
            shards,
            clients: DashMap::new(),
            next_client_id: AtomicU64::new(1),
            stats: Stats::default(),
            started: Instant::now(),
            started_wall: SystemTime::now(),
            redis_version,
            node_id,
            announce_host: host,
            announce_port,
            pubsub: crate::pubsub::Hub::default(),
            scripts: Default::default(),
            monitors: Default::default(),
        })
    }

    /// True when `name`/`password` are a configured user (or no users are configured).
    pub fn check_user(&self, name: &str, password: &[u8]) -> bool {
        self.cfg.users.iter().any(|u| u.name == name && u.password.as_bytes() == password)
    }

    pub fn auth_required(&self) -> bool {
        !self.cfg.users.is_empty()
    }
}

/// Each shard's starting primary and epoch. With a metadata store, the recorded topology's
/// primary wins (it moved if a failover happened), and the topology is recorded again: a new
/// version, the shards' new epoch.
async fn shard_starts(
    cfg: &ProxyConfig,
    slots: &SlotMap,
    journal: Option<&JournalSetup>,
) -> anyhow::Result<Vec<ShardStart>> {
    let recorded = match journal {
        Some(journal) => journal.meta.get_topology().await.map_err(|e| anyhow::anyhow!("metadata store: {e}"))?,
        None => None,
    };
    let mut starts: Vec<ShardStart> = cfg
        .shards
        .iter()
        .enumerate()
        .map(|(id, shard)| {
            let primary = failover::record::starting_primary(
                shard,
                failover::record::recorded_shard(recorded.as_ref().map(|(_, t)| t), id),
            );
            let nodes = std::iter::once(&shard.primary).chain(&shard.replicas).cloned().collect();
            ShardStart { id, slots: slots.ranges(id).to_vec(), primary, nodes, epoch: 0 }
        })
        .collect();
    if let Some(journal) = journal {
        let entries: Vec<ShardTopology> = starts
            .iter()
            .map(|s| ShardTopology {
                id: s.id as u32,
                slots: s.slots.clone(),
                primary: s.primary.clone(),
                replicas: s.nodes.iter().filter(|n| **n != s.primary).cloned().collect(),
            })
            .collect();
        let epoch = failover::record::record(&journal.meta, &entries)
            .await
            .map_err(|e| anyhow::anyhow!("cannot record the topology in the metadata store: {e}"))?;
        for start in &mut starts {
            start.epoch = epoch;
            if start.primary != cfg.shards[start.id].primary {
                tracing::info!(shard = start.id, primary = %start.primary, "using the primary recorded by a failover");
            }
        }
        let body = serde_json::json!({"epoch": epoch, "reason": "proxy start"});
        if let Err(e) = journal.meta.append_event("epoch_bumped", &body).await {
            tracing::warn!("cannot record the start-up event: {e}");
        }
    }
    Ok(starts)
}

/// Resolves the journal nodes, opens the metadata store and sets the quorum.
async fn journal_setup(
    cfg: &crate::config::JournalConfig,
    proxy: &ProxyConfig,
    listen: &str,
) -> anyhow::Result<JournalSetup> {
    use journal_service::cluster_tls::{reload_on_sighup, Role, Transport};
    let transport = Transport::from_files(proxy.cluster_tls.as_ref(), Role::Proxy)
        .map_err(|e| anyhow::anyhow!("[cluster_tls]: {e}"))?;
    match &transport {
        Transport::Plain => tracing::warn!("no [cluster_tls]: journal nodes are reached without TLS"),
        Transport::Tls(_) => {
            let reloadable = transport.clone();
            reload_on_sighup(move || reloadable.reload())?;
        }
    }
    let mut nodes = Vec::with_capacity(cfg.nodes.len());
    for node in &cfg.nodes {
        let addr = tokio::net::lookup_host(node)
            .await
            .map_err(|e| anyhow::anyhow!("journal node {node:?}: {e}"))?
            .next()
            .ok_or_else(|| anyhow::anyhow!("journal node {node:?} has no address"))?;
        nodes.push(addr);
    }
    let quorum = journal_service::quorum::QuorumConfig {
        write_quorum: nodes.len(),
        ack_quorum: cfg.ack_quorum(),
        append_timeout: Duration::from_millis(cfg.append_timeout_ms),
        transport,
        ..Default::default()
    };
    quorum.validate(nodes.len()).map_err(|e| anyhow::anyhow!("[journal]: {e}"))?;
    let meta = journal_service::meta::MetaStore::open(&cfg.metadata)
        .await
        .map_err(|e| anyhow::anyhow!("metadata store {}: {e}", journal_service::meta::redact_url(&cfg.metadata)))?;
    let meta = Arc::new(meta);
    let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
    Ok(JournalSetup {
        nodes,
        meta,
        quorum,
        writer_id: format!("{host}:{}:{listen}", std::process::id()),
        write_wait: Duration::from_millis(cfg.write_wait_ms),
        snapshots: proxy.snapshot.as_ref().map(|s| Arc::new(SnapshotSettings::from(s))),
    })
}

/// Asks shard 0 for its command table — its primary first, then any other node, since every
/// node of a shard has the same commands — retrying while none is up yet (a sidecar may start
/// before its Redis).
async fn load_command_table(shard0: &ShardStart, opts: BackendOptions) -> anyhow::Result<(CommandTable, String)> {
    let others = shard0.nodes.iter().filter(|n| **n != shard0.primary);
    let nodes: Vec<BackendConn> = std::iter::once(&shard0.primary)
        .chain(others)
        .map(|addr| BackendConn::spawn(addr, Proto::Resp2, opts))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    for turn in 0.. {
        let admin = &nodes[turn % nodes.len()];
        match admin.call(&["COMMAND"]).await {
            Ok(raw) => {
                let frame = decode_resp2(&raw)?;
                let mut table = CommandTable::from_command_reply(&frame)?;
                crate::commands::add_local_commands(&mut table);
                let info = admin.call(&["INFO", "server"]).await.map_err(|e| anyhow::anyhow!("{e}"))?;
                let info = String::from_utf8_lossy(&info).into_owned();
                let version =
                    info.lines().find_map(|l| l.strip_prefix("redis_version:")).unwrap_or("unknown").trim().to_string();
                return Ok((table, version));
            }
            Err(e) if Instant::now() < deadline => {
                tracing::info!("waiting for Redis node {} to load the command table: {e}", admin.addr());
                tokio::time::sleep(Duration::from_millis(200 / nodes.len() as u64)).await;
            }
            Err(e) => anyhow::bail!("cannot load the command table from {}: {e}", admin.addr()),
        }
    }
    anyhow::bail!("no Redis node of shard 0 answered")
}

pub fn decode_resp2(raw: &bytes::Bytes) -> anyhow::Result<redis_protocol::resp2::types::BytesFrame> {
    match redis_protocol::resp2::decode::decode_bytes(raw) {
        Ok(Some((frame, _))) => Ok(frame),
        _ => anyhow::bail!("unparsable reply from Redis"),
    }
}

/// A 40-hex-digit ID derived from the address, so a restarted proxy keeps its cluster ID.
fn node_id_for(addr: &str) -> String {
    let mut id = String::with_capacity(40);
    let mut seed = crc32c::crc32c(addr.as_bytes());
    while id.len() < 40 {
        seed = crc32c::crc32c_append(seed, addr.as_bytes());
        id.push_str(&format!("{seed:08x}"));
    }
    id.truncate(40);
    id
}

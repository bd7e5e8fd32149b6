//! Start-up: the journal set-up, each shard's starting primary and epoch, the shards started
//! in parallel, the command table loaded from the backends, and the ACL catalog and users
//! (`access`) from the same `COMMAND` reply.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use journal_service::cluster_tls::{reload_on_sighup, Role, Transport};
use journal_service::meta::ShardTopology;
use journal_service::sighup::{self, Reloaded};
use redis_protocol::resp2::types::BytesFrame;

use crate::access::Access;
use crate::backend::{BackendConn, BackendOptions, NodeAccess};
use crate::config::ProxyConfig;
use crate::eviction::{Deletes, Evictor};
use crate::failover::{self, FailoverSettings};
use crate::params::{check_group, Group, LiveGroup};
use crate::prepare::NodePreparation;
use crate::proxy::{journal_on_every_shard, Parameters, Proxy};
use crate::pubsub::ShardNodes;
use crate::resp::{decode_resp2, Proto};
use crate::router::SlotMap;
use crate::sequencer::JournalSetup;
use crate::shard::{Shard, ShardStart};
use crate::snapshot::SnapshotSettings;
use crate::table::CommandTable;

/// Connects to the shards and loads the command table from the first shard's primary.
pub(crate) async fn start(cfg: ProxyConfig) -> anyhow::Result<Proxy> {
    let slots = cfg.slot_map()?;
    let opts = BackendOptions {
        connect_timeout: Duration::from_millis(cfg.connect_timeout_ms),
        request_timeout: Duration::from_millis(cfg.backend_timeout_ms),
        access: NodeAccess::from_config(&cfg.backend)?,
    };
    let connections = cfg.backend_connections.max(1);
    // The proxy's identity for the journal nodes; SIGHUP re-reads it (docs/cluster-tls.md).
    let transport = Transport::from_files(cfg.cluster_tls.as_ref(), Role::Proxy)
        .map_err(|e| anyhow::anyhow!("[cluster_tls]: {e}"))?;
    let reloadable = transport.clone();
    reload_on_sighup(move || reloadable.reload())?;
    // The nodes' CA and the proxy's certificate for them (`[backend] tls`): SIGHUP re-reads them too.
    if let Some(tls) = opts.access.tls.clone() {
        sighup::reload_on_sighup("backend TLS certificates", move || tls.reload().map(|()| Reloaded::Certificates))?;
    }
    let journal = match &cfg.journal {
        Some(journal) => Some(journal_setup(&cfg, journal, transport).await?),
        None => {
            tracing::warn!("no [journal] configured: writes are routed to Redis but NOT durable");
            None
        }
    };
    let group = starting_group(&cfg, journal.as_ref()).await?;
    let live = LiveGroup::new(group);
    let prepare = NodePreparation::new(opts.clone(), live.clone());
    let plan = shard_starts(&cfg, &slots, journal.as_ref()).await?;
    let (table, commands, redis_version) = load_command_table(&plan[0], &opts).await?;
    let access = Access::start(&commands, &cfg.users, journal.as_ref().map(|j| j.meta.clone())).await?;
    let settings = FailoverSettings::from(&cfg.failover);
    // Shards recover and catch up in parallel; the proxy serves once all are ready.
    let starts = plan.into_iter().map(|start| {
        let (journal, opts, prepare) = (journal.clone(), opts.clone(), prepare.clone());
        tokio::spawn(async move { Shard::start(start, connections, opts, prepare, journal, settings).await })
    });
    let mut shards = Vec::with_capacity(cfg.shards.len());
    for start in starts.collect::<Vec<_>>() {
        shards.push(start.await??);
    }
    journal_starting_group(&shards, &live).await?;
    let announce = cfg.announce.clone().unwrap_or_else(|| cfg.listen.clone());
    let (announce_host, announce_port) = match announce.rsplit_once(':') {
        Some((host, port)) => (host.trim_matches(['[', ']']).to_string(), port.parse()?),
        None => anyhow::bail!("announce/listen address {announce:?} has no port"),
    };
    let host =
        if announce_host == "0.0.0.0" || announce_host == "::" { "127.0.0.1".to_string() } else { announce_host };
    let node_id = node_id_for(&format!("{host}:{announce_port}"));
    let pubsub = Arc::new(crate::pubsub::Hub::new(
        shards.iter().map(|s| ShardNodes::new(s.target.clone())).collect(),
        Duration::from_millis(cfg.backend_timeout_ms),
        opts.access.clone(),
    ));
    let proxy = Proxy {
        cfg,
        slots,
        table,
        shards,
        clients: DashMap::new(),
        next_client_id: AtomicU64::new(1),
        stats: Default::default(),
        run_id: crate::backend::random_secret()[..40].to_string(),
        pause: Default::default(),
        started: Instant::now(),
        redis_version,
        node_id,
        announce_host: host,
        announce_port,
        pubsub,
        tracker: Default::default(),
        backend: opts,
        scripts: Default::default(),
        monitors: Default::default(),
        access,
        parameters: Parameters { live, store: journal.map(|j| j.meta), changes: Default::default(), prepare },
    };
    proxy.put_parameters_in_force((*proxy.parameters.live.get()).clone());
    let del =
        proxy.table.get("del").cloned().ok_or_else(|| anyhow::anyhow!("the backend's COMMAND table has no DEL"))?;
    // A refused shard's node is left as it is: no evictor deletes from it.
    for shard in proxy.shards.iter().filter(|shard| shard.refusal().is_none()) {
        let (target, sequencer, memory) = (shard.target.clone(), shard.sequencer.clone(), shard.memory.clone());
        let live = proxy.parameters.live.clone();
        let databases = if proxy.cfg.mode == crate::config::Mode::Standalone { crate::databases::COUNT } else { 1 };
        let deletes = Deletes { sequencer, del: del.clone(), tracker: proxy.tracker.clone(), databases };
        Evictor::spawn(shard.id, target, proxy.backend.clone(), deletes, memory, live);
    }
    Ok(proxy)
}

/// The parameter group to start with: the metadata store's, with `[parameters]` applied over
/// it (the configuration names what the operator wants now), checked with `CONFIG SET`'s
/// table and recorded (docs/parameters.md).
async fn starting_group(cfg: &ProxyConfig, journal: Option<&JournalSetup>) -> anyhow::Result<Group> {
    let rules = cfg.param_rules();
    let stored = match journal {
        Some(journal) => journal.meta.get_parameters().await.map_err(|e| anyhow::anyhow!("metadata store: {e}"))?,
        None => Default::default(),
    };
    let mut group = check_group(&stored, rules).map_err(|e| {
        anyhow::anyhow!("the metadata store's parameter group: {}", e.to_string().trim_start_matches("ERR "))
    })?;
    let configured = check_group(&cfg.parameter_entries(), rules)
        .map_err(|e| anyhow::anyhow!("[parameters]: {}", e.to_string().trim_start_matches("ERR ")))?;
    group.extend(configured);
    if let Some(journal) = journal.filter(|_| group != stored) {
        journal.meta.put_parameters(&group).await.map_err(|e| anyhow::anyhow!("metadata store: {e}"))?;
    }
    Ok(group)
}

/// Journals the whole group on every shard once the shards serve, so each stream's history
/// holds the group in force from here on, whatever happened to earlier changes (a change whose
/// recording was cut short by a crash is settled here: the store's group is the one in force).
async fn journal_starting_group(shards: &[Shard], live: &LiveGroup) -> anyhow::Result<()> {
    let Some(args) = live.node_command() else { return Ok(()) };
    let request = crate::resp::Request::from_args(&args);
    for (shard, reply) in shards.iter().zip(journal_on_every_shard(shards, &request, None).await) {
        // A refused shard takes the group when it next starts and serves.
        if let (Err(e), None) = (reply, shard.refusal()) {
            anyhow::bail!("shard {} refused the parameter group ({}): {e}", shard.id, args[2..].join(" "));
        }
    }
    Ok(())
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
                id: crate::router::shard_id(s.id),
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
    proxy: &ProxyConfig,
    cfg: &crate::config::JournalConfig,
    transport: Transport,
) -> anyhow::Result<JournalSetup> {
    if let Transport::Plain = transport {
        tracing::warn!("no [cluster_tls]: journal nodes are reached without TLS");
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
        writer_id: format!("{host}:{}:{}", std::process::id(), proxy.listen),
        write_wait: Duration::from_millis(cfg.write_wait_ms),
        max_write_bytes: cfg.max_write_bytes,
        snapshots: proxy.snapshot.as_ref().map(|s| Arc::new(SnapshotSettings::new(s, proxy.mode))),
    })
}

/// Asks shard 0 for its command table — its primary first, then any other node, since every
/// node of a shard has the same commands — retrying while none is up yet (a sidecar may start
/// before its Redis).
async fn load_command_table(
    shard0: &ShardStart,
    opts: &BackendOptions,
) -> anyhow::Result<(CommandTable, memlog_acl::Value, String)> {
    let others = shard0.nodes.iter().filter(|n| **n != shard0.primary);
    let nodes: Vec<BackendConn> = std::iter::once(&shard0.primary)
        .chain(others)
        .map(|addr| BackendConn::spawn(addr, Proto::Resp2, opts.clone()))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    for turn in 0.. {
        let admin = &nodes[turn % nodes.len()];
        match admin.call(&["COMMAND"]).await {
            Ok(raw) => {
                let frame = decode_resp2(&raw)?;
                let mut table = CommandTable::from_command_reply(&frame)?;
                crate::table::add_local_commands(&mut table);
                let info = admin.call(&["INFO", "server"]).await.map_err(|e| anyhow::anyhow!("{e}"))?;
                let info = String::from_utf8_lossy(&info).into_owned();
                let version =
                    info.lines().find_map(|l| l.strip_prefix("redis_version:")).unwrap_or("unknown").trim().to_string();
                return Ok((table, acl_value(&frame), version));
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

/// A RESP2 frame as the ACL crate reads replies.
fn acl_value(frame: &BytesFrame) -> memlog_acl::Value {
    use memlog_acl::Value;
    match frame {
        BytesFrame::BulkString(b) => Value::Bulk(b.to_vec()),
        BytesFrame::SimpleString(s) => Value::Simple(String::from_utf8_lossy(s).into_owned()),
        BytesFrame::Error(e) => Value::Error(e.to_string()),
        BytesFrame::Integer(i) => Value::Integer(*i),
        BytesFrame::Null => Value::Null,
        BytesFrame::Array(items) => Value::Array(items.iter().map(acl_value).collect()),
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

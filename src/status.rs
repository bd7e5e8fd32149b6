//! `memlog status`: one look at a running cluster — which node of each shard is primary, the
//! journal LSN every Redis node holds and how far each replica lags, the shard epochs, and the
//! health of every journal node — as a table for people or as JSON for scripts.
//!
//! Which node is primary comes from the proxy (`MEMLOG TOPOLOGY`, its failover controller's
//! view) when it answers; otherwise from the topology recorded in the metadata store, else the
//! proxy's configuration, corrected by what the nodes themselves report (`INFO replication`).
//! LSNs always come from the Redis nodes directly (`GET __memlog:lsn`), journal health from each
//! journal node's status call.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use journal_service::cluster_tls::{Role, Transport};
use journal_service::meta::{EventRecord, MetaError, MetaStore};
use journal_service::{NodeClient, StreamTail};
use memlog_proxy::config::ShardConfig;
use memlog_proxy::NodeAccess;
use serde::Serialize;
use tokio::task::JoinSet;

use crate::admin_client::{self, ProxyTopology};
use crate::admin_tls::TlsArgs;
use crate::cluster_file::{pid_alive, ClusterState};
use crate::deployment::{AuthArgs, Deployment};
use crate::probe::{self, NodeReport, NodeRole, Reply};

/// How long each process may take to answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the metadata store may take to open and answer (a Postgres connect included).
const META_TIMEOUT: Duration = Duration::from_secs(3);

/// Flags of `memlog status`.
#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// The `--dir` that `memlog up` was started with: its cluster.json (processes and pids) and
    /// proxy.toml (shards, journal nodes, metadata store) say what to check.
    #[arg(long, default_value = "./memlog-data", conflicts_with = "config")]
    pub dir: PathBuf,
    /// A deployed cluster instead: its proxy's TOML configuration (the proxy's address, users,
    /// shards, journal nodes and metadata store).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print JSON instead of a table: `shards` (each with `id`, `slots`, `epoch`, `primary`,
    /// `replicas`, a node being `{addr, pid, lsn}`, `snapshot` and `adoption`) and `journal`
    /// (`{addr, healthy, streams}`);
    /// `pid` is null for processes `memlog up` did not start, `lsn` null for a node that does
    /// not answer. Printed even when the exit status says the cluster is not healthy.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub auth: AuthArgs,
    #[command(flatten)]
    pub tls: TlsArgs,
}

/// Where the shard layout (which node is primary) came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `MEMLOG TOPOLOGY` from the proxy.
    Proxy,
    /// The topology recorded in the metadata store; the reason the proxy could not say.
    MetadataStore { proxy_error: String },
    /// The proxy's configuration; the reasons neither the proxy nor the store could say.
    Config { proxy_error: String, meta_error: String },
}

/// The whole status; serializes to the `--json` shape.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub shards: Vec<ShardReport>,
    pub journal: Vec<JournalReport>,
    #[serde(skip)]
    pub source: Source,
    /// The proxy's answer to `PING` (after `AUTH`), or why there was none.
    #[serde(skip)]
    pub proxy: Result<(), String>,
}

/// One shard: its slots, epoch and nodes.
#[derive(Debug, Clone, Serialize)]
pub struct ShardReport {
    pub id: u32,
    pub slots: String,
    /// The shard's epoch as the failover controller counts it: the metadata store's topology
    /// version when the shard last changed (proxy start, failover); `None` when none is recorded.
    pub epoch: Option<u64>,
    pub primary: NodeStatus,
    pub replicas: Vec<NodeStatus>,
    /// The newest snapshot in the metadata store's catalog; `None` without one (or without a
    /// metadata store that answers).
    pub snapshot: Option<SnapshotReport>,
    /// The shard's adoption of the data its primary held before memlog fronted it (the
    /// metadata store's latest `adoption_*` event); `None` when it never adopted any.
    pub adoption: Option<AdoptionReport>,
    /// Why the proxy does not serve the shard (its primary's data refused at start-up,
    /// docs/adoption.md), as the proxy says; absent while it serves.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

/// A shard's adoption (docs/adoption.md), as its events in the metadata store tell it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AdoptionReport {
    /// False while the baseline snapshot is being taken (the shard is not served yet).
    pub done: bool,
    pub node: String,
    pub keys: u64,
    /// Keys in other shards' slots: kept in the node and the baseline, not served by this shard.
    pub other_shards_keys: u64,
}

impl AdoptionReport {
    /// The latest `adoption_started` / `adoption_completed` event of `shard`.
    fn from_events(events: &[EventRecord], shard: u32) -> Option<AdoptionReport> {
        let event = events.iter().rfind(|e| {
            (e.kind == "adoption_started" || e.kind == "adoption_completed")
                && e.body.get("shard").and_then(|s| s.as_u64()) == Some(shard.into())
        })?;
        let number = |field: &str| event.body.get(field).and_then(|v| v.as_u64()).unwrap_or(0);
        Some(AdoptionReport {
            done: event.kind == "adoption_completed",
            node: event.body.get("node").and_then(|n| n.as_str()).unwrap_or_default().to_string(),
            keys: number("keys"),
            other_shards_keys: number("other_shards_keys"),
        })
    }

    fn line(&self, shard: u32) -> String {
        let others = match self.other_shards_keys {
            0 => String::new(),
            n => format!("; {n} of them in other shards' slots: kept, not served by this shard"),
        };
        if self.done {
            format!(
                "shard {shard} adopted {} keys from {} (its baseline snapshot, lsn 0){others}",
                self.keys, self.node
            )
        } else {
            format!(
                "shard {shard} ADOPTING {} keys from {}: not served until its baseline snapshot is taken (progress in the proxy's log){others}",
                self.keys, self.node
            )
        }
    }
}

/// A shard's newest snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotReport {
    /// It holds at least the journal's first `lsn` entries.
    pub lsn: u64,
    pub location: String,
    pub timestamp_ms: u64,
}

/// One Redis node of a shard.
#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    pub addr: String,
    /// Set for nodes `memlog up` started.
    pub pid: Option<u32>,
    /// `__memlog:lsn` as the node reports it; `None` if it does not answer.
    pub lsn: Option<u64>,
    /// What the node reported about itself, or why it did not.
    #[serde(skip)]
    pub reported: Result<NodeRole, String>,
}

/// One journal node.
#[derive(Debug, Clone, Serialize)]
pub struct JournalReport {
    pub addr: String,
    pub healthy: bool,
    pub streams: BTreeMap<String, StreamReport>,
    #[serde(skip)]
    pub pid: Option<u32>,
    /// Why it is not healthy.
    #[serde(skip)]
    pub error: Option<String>,
}

/// One shard stream on a journal node (see [`StreamTail`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StreamReport {
    pub fenced_epoch: u64,
    pub first_lsn: u64,
    pub last_lsn: u64,
    pub last_epoch: u64,
    pub commit_lsn: u64,
}

impl From<StreamTail> for StreamReport {
    fn from(t: StreamTail) -> Self {
        StreamReport {
            fenced_epoch: t.fenced_epoch,
            first_lsn: t.first_lsn,
            last_lsn: t.last_lsn,
            last_epoch: t.last_epoch,
            commit_lsn: t.commit_lsn,
        }
    }
}

/// Prints the status; fails (after printing) unless every part of the cluster is healthy.
pub async fn run(args: StatusArgs) -> anyhow::Result<()> {
    let deployment = match &args.config {
        Some(config) => Deployment::from_config(config, &args.tls)?,
        None => Deployment::from_dir(&args.dir, &args.tls)?,
    }
    .with_credentials(args.auth.credentials()?);
    let report = gather(&deployment).await;
    let mut problems = report.problems();
    if let Some(cluster) = &deployment.cluster {
        let up_alive = pid_alive(cluster.up_pid);
        if !args.json {
            println!(
                "cluster {} in {}: {}, memlog up pid {} {}",
                cluster.url,
                args.dir.display(),
                format!("{:?}", cluster.state).to_lowercase(),
                cluster.up_pid,
                if up_alive { "alive" } else { "gone" }
            );
        }
        if cluster.state != ClusterState::Running || !up_alive {
            problems.insert(0, format!("memlog up is not running ({:?})", cluster.state));
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table(&deployment));
    }
    anyhow::ensure!(problems.is_empty(), "the cluster is not healthy: {}", problems.join("; "));
    Ok(())
}

/// Asks the proxy, the metadata store, every Redis node and every journal node.
pub async fn gather(deployment: &Deployment) -> Report {
    let (proxy, proxy_topology) = ask_proxy(deployment).await;
    let mut refusals: BTreeMap<u32, String> = match &proxy_topology {
        Ok(topology) => topology.shards.iter().filter_map(|s| Some((s.id, s.refused.clone()?))).collect(),
        Err(_) => BTreeMap::new(),
    };
    let (layout, source) = match proxy_topology {
        Ok(topology) => (layout_from_proxy(topology), Source::Proxy),
        Err(proxy_error) => match layout_from_metadata(deployment).await {
            Ok(layout) => (layout, Source::MetadataStore { proxy_error }),
            Err(meta_error) => (layout_from_config(deployment), Source::Config { proxy_error, meta_error }),
        },
    };
    let mut nodes = probe_redis_nodes(layout.iter().flat_map(|s| s.nodes()), &deployment.backend).await;
    let (mut snapshots, events) = newest_snapshots_and_events(deployment, layout.iter().map(|s| s.id)).await;
    let shards = layout
        .into_iter()
        .map(|shard| {
            let shard = if source == Source::Proxy { shard } else { shard.corrected_by_roles(&nodes) };
            let snapshot = snapshots.remove(&shard.id);
            let adoption = AdoptionReport::from_events(&events, shard.id);
            let refused = refusals.remove(&shard.id);
            ShardReport { snapshot, adoption, refused, ..shard.report(deployment, &mut nodes) }
        })
        .collect();
    let journal = probe_journal(deployment).await;
    Report { shards, journal, source, proxy }
}

/// One shard's layout before its nodes are asked.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Layout {
    id: u32,
    slots: String,
    epoch: Option<u64>,
    primary: String,
    replicas: Vec<String>,
}

impl Layout {
    fn nodes(&self) -> impl Iterator<Item = String> + '_ {
        std::iter::once(self.primary.clone()).chain(self.replicas.iter().cloned())
    }

    /// Without the proxy's word, the recorded primary may be stale (a failover the record
    /// missed): if it does not report itself master but exactly one other node does, that one is.
    fn corrected_by_roles(mut self, reports: &BTreeMap<String, Result<NodeReport, String>>) -> Layout {
        let is_master = |addr: &String| matches!(reports.get(addr), Some(Ok(r)) if r.role == NodeRole::Master);
        if is_master(&self.primary) {
            return self;
        }
        let masters: Vec<usize> = (0..self.replicas.len()).filter(|&i| is_master(&self.replicas[i])).collect();
        if let [index] = masters[..] {
            std::mem::swap(&mut self.primary, &mut self.replicas[index]);
        }
        self
    }

    fn report(
        self,
        deployment: &Deployment,
        reports: &mut BTreeMap<String, Result<NodeReport, String>>,
    ) -> ShardReport {
        let mut node = |addr: String| {
            let reported = reports.remove(&addr).unwrap_or_else(|| Err("not asked".into()));
            NodeStatus {
                pid: deployment.pid_of(&addr),
                lsn: reported.as_ref().ok().map(|r| r.lsn),
                reported: reported.map(|r| r.role),
                addr,
            }
        };
        ShardReport {
            id: self.id,
            slots: self.slots,
            epoch: self.epoch,
            primary: node(self.primary),
            replicas: self.replicas.into_iter().map(node).collect(),
            snapshot: None,
            adoption: None,
            refused: None,
        }
    }
}

/// `PING` (after `AUTH`) and `MEMLOG TOPOLOGY` on one session with the proxy.
async fn ask_proxy(deployment: &Deployment) -> (Result<(), String>, Result<ProxyTopology, String>) {
    let mut session = match deployment.admin_session(PROBE_TIMEOUT).await {
        Ok(session) => session,
        Err(err) => return (Err(err.to_string()), Err(err.to_string())),
    };
    let ping = match session.call(&["PING"]).await {
        Ok(Reply::Simple(pong)) if pong == "PONG" => Ok(()),
        Ok(other) => Err(format!("PING answered {other:?}")),
        Err(err) => Err(err.to_string()),
    };
    let topology = admin_client::topology(&mut session).await.map_err(|e| e.to_string());
    (ping, topology)
}

fn layout_from_proxy(topology: ProxyTopology) -> Vec<Layout> {
    topology
        .shards
        .into_iter()
        .map(|s| Layout {
            id: s.id,
            slots: s.slots,
            epoch: Some(s.epoch),
            primary: s.primary.addr,
            replicas: s.replicas.into_iter().map(|r| r.addr).collect(),
        })
        .collect()
}

/// The topology recorded in the metadata store, with each shard's epoch from the event log.
async fn layout_from_metadata(deployment: &Deployment) -> Result<Vec<Layout>, String> {
    let url = deployment.config.as_ref().and_then(|c| c.journal.as_ref()).map(|j| j.metadata.clone());
    let url = url.ok_or("no metadata store configured")?;
    let read = async {
        let store = MetaStore::open(&url).await?;
        let Some((version, topology)) = store.get_topology().await? else { return Ok(None) };
        let events = all_events(&store).await?;
        let layout = topology
            .shards
            .into_iter()
            .map(|shard| Layout {
                id: shard.id,
                slots: slot_ranges(&shard.slots),
                epoch: Some(shard_epoch(&events, shard.id).unwrap_or(version)),
                primary: shard.primary,
                replicas: shard.replicas,
            })
            .collect();
        Ok::<_, MetaError>(Some(layout))
    };
    match tokio::time::timeout(META_TIMEOUT, read).await {
        Err(_) => Err(format!("no answer within {META_TIMEOUT:?}")),
        Ok(Err(err)) => Err(err.to_string()),
        Ok(Ok(None)) => Err("no topology recorded".into()),
        Ok(Ok(Some(layout))) => Ok(layout),
    }
}

/// Each shard's newest snapshot in the metadata store's catalog, and the store's event log
/// (none when they cannot be read: the topology source already says why).
async fn newest_snapshots_and_events(
    deployment: &Deployment,
    shards: impl Iterator<Item = u32>,
) -> (BTreeMap<u32, SnapshotReport>, Vec<EventRecord>) {
    let Some(url) = deployment.config.as_ref().and_then(|c| c.journal.as_ref()).map(|j| j.metadata.clone()) else {
        return Default::default();
    };
    let shards: Vec<u32> = shards.collect();
    let read = async {
        let store = MetaStore::open(&url).await?;
        let mut newest = BTreeMap::new();
        for shard in shards {
            if let Some(s) = store.list_snapshots(shard).await?.pop() {
                newest.insert(shard, SnapshotReport { lsn: s.lsn, location: s.location, timestamp_ms: s.timestamp_ms });
            }
        }
        Ok::<_, MetaError>((newest, all_events(&store).await?))
    };
    match tokio::time::timeout(META_TIMEOUT, read).await {
        Ok(Ok(read)) => read,
        _ => Default::default(),
    }
}

/// Every event in the metadata store's log, oldest first.
async fn all_events(store: &MetaStore) -> Result<Vec<EventRecord>, MetaError> {
    const PAGE: usize = 1000;
    let mut events: Vec<EventRecord> = Vec::new();
    loop {
        let since = events.last().map_or(0, |e| e.id);
        let page = store.list_events(since, PAGE).await?;
        let done = page.len() < PAGE;
        events.extend(page);
        if done {
            return Ok(events);
        }
    }
}

/// A shard's epoch as the failover controller counts it (and `MEMLOG TOPOLOGY` reports it):
/// the topology version of the last `epoch_bumped` event for this shard or for every shard
/// (a proxy start names none).
fn shard_epoch(events: &[EventRecord], shard: u32) -> Option<u64> {
    events
        .iter()
        .filter(|e| e.kind == "epoch_bumped")
        .filter(|e| e.body.get("shard").is_none_or(|s| s.as_u64() == Some(shard.into())))
        .filter_map(|e| e.body.get("epoch")?.as_u64())
        .next_back()
}

/// The shards as configured; no epoch (nothing recorded one).
fn layout_from_config(deployment: &Deployment) -> Vec<Layout> {
    let Some(config) = &deployment.config else { return Vec::new() };
    let shard = |(id, shard): (usize, &ShardConfig)| Layout {
        // Shown only; a config cannot hold 2^32 shards (the slot map caps them far below).
        id: u32::try_from(id).unwrap_or(u32::MAX),
        slots: shard.slots.clone(),
        epoch: None,
        primary: shard.primary.clone(),
        replicas: shard.replicas.clone(),
    };
    config.shards.iter().enumerate().map(shard).collect()
}

/// `[(0, 99), (200, 200)]` → `"0-99,200"`, the config's notation.
fn slot_ranges(ranges: &[(u16, u16)]) -> String {
    let range = |&(first, last): &(u16, u16)| if first == last { first.to_string() } else { format!("{first}-{last}") };
    ranges.iter().map(range).collect::<Vec<_>>().join(",")
}

/// Asks every node at once for its role and LSN.
async fn probe_redis_nodes(
    addrs: impl Iterator<Item = String>,
    access: &NodeAccess,
) -> BTreeMap<String, Result<NodeReport, String>> {
    let mut asks = JoinSet::new();
    for addr in addrs {
        let access = access.clone();
        asks.spawn(async move {
            let report = probe::redis_node(&addr, PROBE_TIMEOUT, &access).await.map_err(|e| e.to_string());
            (addr, report)
        });
    }
    let mut reports = BTreeMap::new();
    while let Some(joined) = asks.join_next().await {
        if let Ok((addr, report)) = joined {
            reports.insert(addr, report);
        }
    }
    reports
}

/// Asks every configured journal node for its status, at once.
async fn probe_journal(deployment: &Deployment) -> Vec<JournalReport> {
    let addrs = deployment.config.iter().flat_map(|c| c.journal.iter()).flat_map(|j| j.nodes.clone());
    // The nodes only answer cluster members: ask with the proxy's identity.
    let files = deployment.config.as_ref().and_then(|c| c.cluster_tls.as_ref());
    let transport = Transport::from_files(files, Role::Proxy).map_err(|e| format!("[cluster_tls]: {e}"));
    let mut asks = JoinSet::new();
    for (index, addr) in addrs.enumerate() {
        let transport = transport.clone();
        asks.spawn(async move {
            let status = match transport {
                Ok(transport) => journal_status(&addr, transport).await,
                Err(e) => Err(e),
            };
            (index, addr, status)
        });
    }
    let mut reports = Vec::new();
    while let Some(joined) = asks.join_next().await {
        if let Ok((index, addr, status)) = joined {
            let pid = deployment.pid_of(&addr);
            let report = match status {
                Ok(status) => JournalReport {
                    addr,
                    healthy: true,
                    streams: status.streams.into_iter().map(|(name, tail)| (name, tail.into())).collect(),
                    pid,
                    error: None,
                },
                Err(error) => JournalReport { addr, healthy: false, streams: BTreeMap::new(), pid, error: Some(error) },
            };
            reports.push((index, report));
        }
    }
    reports.sort_by_key(|(index, _)| *index);
    reports.into_iter().map(|(_, report)| report).collect()
}

/// A journal node's status call, its address resolved first.
async fn journal_status(addr: &str, transport: Transport) -> Result<journal_service::NodeStatus, String> {
    let resolved = tokio::net::lookup_host(addr).await.map_err(|e| e.to_string())?;
    let socket = resolved.into_iter().next().ok_or("resolves to no address")?;
    NodeClient::with_timeout(socket, transport, PROBE_TIMEOUT).status().await.map_err(|e| e.to_string())
}

impl ShardReport {
    /// How far `replica` is behind the primary in journal entries, when both answered.
    pub fn lag(&self, replica: &NodeStatus) -> Option<u64> {
        Some(self.primary.lsn?.saturating_sub(replica.lsn?))
    }

    /// What is wrong with a node of this shard, `None` if nothing: a primary must report itself
    /// master; a replica must replicate this shard's primary over a live link.
    fn node_problem(&self, node: &NodeStatus, is_primary: bool) -> Option<String> {
        match (&node.reported, is_primary) {
            (Err(error), _) => Some(format!("DOWN ({error})")),
            (Ok(NodeRole::Master), true) => None,
            (Ok(NodeRole::Replica { primary, .. }), true) => Some(format!("NOT PRIMARY: replica of {primary}")),
            (Ok(NodeRole::Master), false) => Some("NOT REPLICATING: reports master".into()),
            (Ok(NodeRole::Replica { primary, linked }), false) => {
                if *primary != self.primary.addr {
                    Some(format!("REPLICA OF {primary}, not of the primary"))
                } else if !linked {
                    Some("LINK DOWN".into())
                } else {
                    None
                }
            }
        }
    }
}

impl Report {
    /// Everything that is not as it should be, one phrase each.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Err(error) = &self.proxy {
            problems.push(format!("proxy: {error}"));
        }
        for shard in &self.shards {
            let nodes = std::iter::once((&shard.primary, true)).chain(shard.replicas.iter().map(|r| (r, false)));
            for (node, is_primary) in nodes {
                if let Some(problem) = shard.node_problem(node, is_primary) {
                    problems.push(format!("shard {} node {}: {problem}", shard.id, node.addr));
                }
            }
            if shard.adoption.as_ref().is_some_and(|a| !a.done) {
                problems.push(format!("shard {} is adopting its primary's data (not served yet)", shard.id));
            }
            if shard.refused.is_some() {
                problems.push(format!("shard {} is REFUSED: the proxy does not serve it", shard.id));
            }
        }
        for node in self.journal.iter().filter(|j| !j.healthy) {
            problems.push(format!("journal node {}: {}", node.addr, node.error.as_deref().unwrap_or("unhealthy")));
        }
        problems
    }

    /// The report as text: proxy, then one row per Redis node, then one per journal node.
    pub fn table(&self, deployment: &Deployment) -> String {
        let dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
        let mut out = String::new();
        let proxy_pid = deployment.pid_of(&deployment.proxy).map(|p| format!(" pid {p}")).unwrap_or_default();
        let proxy_health = match &self.proxy {
            Ok(()) => "ok".to_string(),
            Err(error) => format!("NOT ANSWERING ({error})"),
        };
        out += &format!("proxy {}{proxy_pid}: {proxy_health}\n", deployment.proxy);
        out += &match &self.source {
            Source::Proxy => "topology: from the proxy (MEMLOG TOPOLOGY)\n".to_string(),
            Source::MetadataStore { proxy_error } => {
                format!("topology: from the metadata store, primaries checked with the nodes (proxy: {proxy_error})\n")
            }
            Source::Config { proxy_error, meta_error } => format!(
                "topology: from the proxy config, primaries checked with the nodes (proxy: {proxy_error}; metadata store: {meta_error})\n"
            ),
        };
        out += &format!(
            "\n{:<6} {:<12} {:<6} {:<8} {:<22} {:<8} {:<10} {:<8} {}\n",
            "SHARD", "SLOTS", "EPOCH", "ROLE", "ADDR", "PID", "LSN", "LAG", "STATE"
        );
        for shard in &self.shards {
            let nodes = std::iter::once((&shard.primary, true)).chain(shard.replicas.iter().map(|r| (r, false)));
            for (node, is_primary) in nodes {
                let (role, lag) =
                    if is_primary { ("primary", None) } else { ("replica", shard.lag(node).map(|l| l.to_string())) };
                out += &format!(
                    "{:<6} {:<12} {:<6} {:<8} {:<22} {:<8} {:<10} {:<8} {}\n",
                    shard.id,
                    shard.slots,
                    dash(shard.epoch.map(|e| e.to_string())),
                    role,
                    node.addr,
                    dash(node.pid.map(|p| p.to_string())),
                    dash(node.lsn.map(|l| l.to_string())),
                    dash(lag),
                    shard.node_problem(node, is_primary).unwrap_or_else(|| "ok".into()),
                );
            }
        }
        if self.journal.is_empty() {
            out += "\nno journal: writes are not durable\n";
            return out;
        }
        for shard in &self.shards {
            if let Some(snapshot) = &shard.snapshot {
                let age = std::time::SystemTime::UNIX_EPOCH
                    .elapsed()
                    .map_or(0, |now| u64::try_from(now.as_millis()).unwrap_or(u64::MAX));
                let age_s = age.saturating_sub(snapshot.timestamp_ms) / 1000;
                out += &format!(
                    "\nshard {} newest snapshot: lsn {}, {age_s} s old, {}",
                    shard.id, snapshot.lsn, snapshot.location
                );
            }
        }
        for shard in &self.shards {
            if let Some(adoption) = &shard.adoption {
                out += &format!("\n{}", adoption.line(shard.id));
            }
            if let Some(refused) = &shard.refused {
                out += &format!("\nshard {} REFUSED, not served: {refused}", shard.id);
            }
        }
        if self.shards.iter().any(|s| s.snapshot.is_some() || s.adoption.is_some() || s.refused.is_some()) {
            out += "\n";
        }
        out += &format!(
            "\n{:<22} {:<8} {:<8} STREAMS (first lsn / last lsn / commit lsn / epoch)\n",
            "JOURNAL NODE", "PID", "HEALTH"
        );
        for node in &self.journal {
            let streams = match &node.error {
                Some(error) => error.clone(),
                None => node
                    .streams
                    .iter()
                    .map(|(name, s)| {
                        format!("{name} {}/{}/{}/{}", s.first_lsn, s.last_lsn, s.commit_lsn, s.fenced_epoch)
                    })
                    .collect::<Vec<_>>()
                    .join("  "),
            };
            out += &format!(
                "{:<22} {:<8} {:<8} {streams}\n",
                node.addr,
                dash(node.pid.map(|p| p.to_string())),
                if node.healthy { "ok" } else { "DOWN" },
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica_of(primary: &str) -> NodeReport {
        NodeReport { role: NodeRole::Replica { primary: primary.into(), linked: true }, lsn: 5 }
    }

    fn layout() -> Layout {
        Layout {
            id: 0,
            slots: "0-16383".into(),
            epoch: Some(2),
            primary: "127.0.0.1:7000".into(),
            replicas: vec!["127.0.0.1:7001".into(), "127.0.0.1:7002".into()],
        }
    }

    #[test]
    fn a_shard_epoch_is_its_last_bump_or_the_last_bump_of_all_shards() {
        let event = |id: u64, kind: &str, body: serde_json::Value| EventRecord { id, kind: kind.into(), body };
        let events = vec![
            event(1, "epoch_bumped", serde_json::json!({"epoch": 1, "reason": "proxy start"})),
            event(2, "failover_started", serde_json::json!({"shard": 1})),
            event(3, "epoch_bumped", serde_json::json!({"epoch": 2, "shard": 1})),
            event(4, "epoch_bumped", serde_json::json!({"epoch": 3, "shard": 0})),
        ];
        assert_eq!(shard_epoch(&events, 0), Some(3));
        assert_eq!(shard_epoch(&events, 1), Some(2));
        assert_eq!(shard_epoch(&events, 2), Some(1));
        assert_eq!(shard_epoch(&events[1..2], 0), None);
    }

    #[test]
    fn a_shards_adoption_is_its_latest_adoption_event() {
        let event = |id: u64, kind: &str, body: serde_json::Value| EventRecord { id, kind: kind.into(), body };
        let started = serde_json::json!({"shard": 1, "node": "n:1", "keys": 19771, "other_shards_keys": 3});
        let mut events =
            vec![event(1, "epoch_bumped", serde_json::json!({"epoch": 1})), event(2, "adoption_started", started)];
        let adopting = AdoptionReport::from_events(&events, 1).unwrap();
        assert!(!adopting.done && adopting.keys == 19771 && adopting.other_shards_keys == 3);
        assert!(
            adopting.line(1).starts_with("shard 1 ADOPTING 19771 keys from n:1: not served"),
            "{}",
            adopting.line(1)
        );
        assert_eq!(AdoptionReport::from_events(&events, 0), None);
        events.push(event(3, "adoption_completed", serde_json::json!({"shard": 1, "node": "n:1", "keys": 19771})));
        let adopted = AdoptionReport::from_events(&events, 1).unwrap();
        assert_eq!(adopted.line(1), "shard 1 adopted 19771 keys from n:1 (its baseline snapshot, lsn 0)");
    }

    #[test]
    fn slot_ranges_use_the_config_notation() {
        assert_eq!(slot_ranges(&[(0, 99), (200, 200), (300, 16383)]), "0-99,200,300-16383");
        assert_eq!(slot_ranges(&[]), "");
    }

    #[test]
    fn a_stale_recorded_primary_is_corrected_only_by_a_single_reporting_master() {
        let master = NodeReport { role: NodeRole::Master, lsn: 9 };
        let mut reports = BTreeMap::new();
        reports.insert("127.0.0.1:7000".to_string(), Err("connection refused".to_string()));
        reports.insert("127.0.0.1:7001".to_string(), Ok(replica_of("127.0.0.1:7002")));
        reports.insert("127.0.0.1:7002".to_string(), Ok(master.clone()));
        let corrected = layout().corrected_by_roles(&reports);
        assert_eq!(corrected.primary, "127.0.0.1:7002");
        assert_eq!(corrected.replicas, vec!["127.0.0.1:7001".to_string(), "127.0.0.1:7000".to_string()]);
        // Two nodes claim to be master (one restarted empty, say): the record stands.
        reports.insert("127.0.0.1:7001".to_string(), Ok(master.clone()));
        assert_eq!(layout().corrected_by_roles(&reports), layout());
        // The recorded primary says master: it stands whatever the others say.
        reports.insert("127.0.0.1:7000".to_string(), Ok(master));
        assert_eq!(layout().corrected_by_roles(&reports), layout());
    }

    #[test]
    fn lag_and_problems_follow_what_the_nodes_report() {
        let deployment = Deployment::from_proxy("127.0.0.1:6380");
        let mut reports = BTreeMap::new();
        reports.insert("127.0.0.1:7000".to_string(), Ok(NodeReport { role: NodeRole::Master, lsn: 42 }));
        reports.insert("127.0.0.1:7001".to_string(), Ok(NodeReport { lsn: 40, ..replica_of("127.0.0.1:7000") }));
        reports.insert("127.0.0.1:7002".to_string(), Ok(NodeReport { role: NodeRole::Master, lsn: 0 }));
        let shard = layout().report(&deployment, &mut reports);
        assert_eq!(shard.lag(&shard.replicas[0]), Some(2));
        assert_eq!(shard.lag(&shard.replicas[1]), Some(42));
        assert_eq!(shard.node_problem(&shard.primary, true), None);
        assert_eq!(shard.node_problem(&shard.replicas[0], false), None);
        assert_eq!(shard.node_problem(&shard.replicas[1], false).unwrap(), "NOT REPLICATING: reports master");
        let report = Report {
            shards: vec![shard],
            journal: vec![],
            source: Source::Proxy,
            proxy: Err("connection refused".into()),
        };
        assert_eq!(report.problems().len(), 2, "{:?}", report.problems());
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"shards":[{"id":0,"slots":"0-16383","epoch":2,
                "primary":{"addr":"127.0.0.1:7000","pid":null,"lsn":42},
                "replicas":[{"addr":"127.0.0.1:7001","pid":null,"lsn":40},{"addr":"127.0.0.1:7002","pid":null,"lsn":0}],
                "snapshot":null,"adoption":null}],
                "journal":[]})
        );
        let table = report.table(&deployment);
        assert!(table.contains("NOT REPLICATING"), "{table}");
    }
}

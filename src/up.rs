//! `memlog up`: a whole local cluster on loopback in one command. It starts J journal nodes,
//! N Redis shards (a primary plus R replicas each, stock `redis-server` without persistence of
//! its own, stock replication) and the proxy in front of them, all as its own children, prints
//! the endpoint once the proxy serves, and stops everything on Ctrl-C or SIGTERM.
//!
//! Start-up runs in stages: journal nodes, Redis nodes, then the proxy; each stage's children
//! are started together and must all be ready before the next stage starts.
//!
//! Once running, it supervises its children (see [`crate::supervisor`]): one that dies is
//! started again on its port, a Redis node empty and without `--replicaof` (the proxy's failover
//! controller attaches it), and `cluster.json` is updated with its new pid.
//!
//! The journal is the only durable state: Redis nodes always start empty, and the proxy replays
//! the journal onto each primary before it serves. So `memlog up` run again on the same `--dir`
//! (after a clean stop or after everything was killed) brings back every acknowledged write, as
//! long as the journal nodes come back on the same ports, which this module makes sure of.

use std::future::Future;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use journal_service::cluster_ca::{self, ClusterCa, ClusterFiles};
use journal_service::cluster_tls::TlsFiles;
use journal_service::private_fs;
use memlog_proxy::config::{BackendConfig, JournalConfig, Mode, ParamValue, ProxyConfig, ShardConfig, SnapshotConfig};
use memlog_proxy::router::SlotMap;
use memlog_proxy::{BackendAuth, NodeAccess};

use crate::children::{ChildSpec, Children};
use crate::cluster_file::{up_alive, ClusterFile, ClusterState, ProcessRecord, Role};
use crate::local_user::{LocalUser, LocalUserError};
use crate::probe;
use crate::redis_auth;
use crate::redis_tls::{self, RedisTlsFiles};
use crate::supervisor::{empty_redis_dir, Prepare, RestartPlan, Restarted, Supervisor};

/// Flags of `memlog up`.
#[derive(Debug, Clone, Args)]
pub struct UpArgs {
    /// Directory for the cluster's files: `journal-<port>/` (each journal node's data and log),
    /// `metadata.json` (the journal's metadata store), `redis-<port>/` (each Redis node's dir and
    /// log), `proxy.toml` (the generated proxy config), `proxy.log` and `cluster.json` (what was
    /// started, with pids). Run `memlog up` again on the same dir to get the data back.
    #[arg(long, default_value = "./memlog-data")]
    pub dir: PathBuf,
    /// Port of the proxy, the endpoint clients connect to.
    #[arg(long, default_value_t = 6380)]
    pub port: u16,
    /// What the endpoint presents itself as: `cluster` (a Redis Cluster of --shards shards) or
    /// `standalone` (a standalone Redis in front of one shard: `redis_mode:standalone`,
    /// `CLUSTER` commands refused as a Redis without cluster support refuses them; databases
    /// 0–15 with `SELECT`, `MOVE`, `SWAPDB`).
    #[arg(long, default_value = "cluster", value_parser = parse_mode)]
    pub mode: Mode,
    /// Number of Redis shards; the 16384 slots are split evenly between them. Default: 3, and
    /// 1 with `--mode standalone`, which serves one shard only.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub shards: Option<u16>,
    /// Replicas per shard (stock Redis replication of the shard's primary).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(0..=100))]
    pub replicas: u16,
    /// Port of the proxy's Prometheus endpoint (`/metrics`).
    #[arg(long, default_value_t = 9121, conflicts_with = "no_metrics")]
    pub metrics_port: u16,
    /// Do not serve metrics.
    #[arg(long)]
    pub no_metrics: bool,
    /// First Redis port; nodes get consecutive ports: shard 0's primary, its replicas, shard 1's primary, …
    #[arg(long, default_value_t = 7000)]
    pub redis_base_port: u16,
    /// The `redis-server` executable: a path, or a name looked up in PATH.
    #[arg(long, default_value = "redis-server")]
    pub redis_server: PathBuf,
    /// Journal nodes every write is made durable on (a majority must acknowledge it). 0 runs
    /// without a journal: the proxy then only routes, and writes are NOT durable.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(0..=15))]
    pub journal_nodes: u16,
    /// First journal port; nodes get consecutive ports. A `--dir` that already holds a journal
    /// keeps the ports recorded in its cluster.json, whatever this says.
    #[arg(long, default_value_t = 7400)]
    pub journal_base_port: u16,
    /// Snapshot a shard (an RDB in DIR/snapshots) each time it has this many journal entries
    /// beyond its newest snapshot; the journal is then truncated below the older of the two
    /// kept. 0 turns snapshots off: the journal keeps every entry. Ignored without a journal.
    #[arg(long, default_value_t = 100_000)]
    pub snapshot_every: u64,
    /// A Redis parameter of the cluster's parameter group, e.g. `--param hash-max-listpack-entries=64
    /// --param maxmemory-policy=allkeys-lru` (repeatable). Checked like `CONFIG SET` (the same
    /// allowlist and errors), applied over the group kept from earlier runs, set on every node
    /// and journaled (docs/parameters.md).
    #[arg(long = "param", value_name = "NAME=VALUE", value_parser = parse_param)]
    pub params: Vec<(String, String)>,
    /// Protect the cluster: turn the `default` user off and create this user with every
    /// permission (`on ~* &* +@all`), its password the first line of --password-file. Without
    /// it `default` needs no password, as on a fresh Redis (the proxy listens on loopback only).
    #[arg(long, value_name = "NAME", requires = "password_file")]
    pub user: Option<String>,
    /// The file whose first line is --user's password (kept in the proxy's configuration only
    /// as its SHA-256 hash).
    #[arg(long, value_name = "FILE", requires = "user")]
    pub password_file: Option<PathBuf>,
    /// Run the Redis nodes with TLS only (`--port 0`, `--tls-port`, client certificates,
    /// `--tls-replication yes`) and have the proxy reach them over TLS (`[backend] tls`). A CA
    /// of the nodes and the certificates are generated anew on every start into DIR/redis-tls/.
    #[arg(long)]
    pub redis_tls: bool,
}

impl UpArgs {
    /// The shards to run (see `--shards`).
    fn shard_count(&self) -> u16 {
        self.shards.unwrap_or(match self.mode {
            Mode::Cluster => 3,
            Mode::Standalone => 1,
        })
    }

    /// Refuses flags that contradict each other before anything is started.
    fn check(&self) -> Result<(), UpError> {
        match (self.mode, self.shards) {
            (Mode::Standalone, Some(shards)) if shards != 1 => Err(UpError::StandaloneShards(shards)),
            _ => Ok(()),
        }
    }
}

/// `--mode`.
fn parse_mode(text: &str) -> Result<Mode, String> {
    text.parse()
}

/// `NAME=VALUE` of `--param`.
fn parse_param(text: &str) -> Result<(String, String), String> {
    let (name, value) = text.split_once('=').ok_or_else(|| format!("{text:?} is not NAME=VALUE"))?;
    Ok((name.trim().to_string(), value.to_string()))
}

/// Why `memlog up` could not start the cluster.
#[derive(Debug, thiserror::Error)]
pub enum UpError {
    #[error(
        "redis-server not found: install it (apt-get install redis-server) or pass --redis-server (looked for {0:?})"
    )]
    RedisServerNotFound(PathBuf),
    #[error("port {port} ({what}) is already in use: stop what uses it or pick other ports (--port, --metrics-port, --redis-base-port, --journal-base-port)")]
    PortInUse { port: u16, what: String },
    #[error("--param: {0}")]
    Param(String),
    #[error(
        "--mode standalone serves one shard, but --shards {0} asks for more: drop --shards, or use --mode cluster"
    )]
    StandaloneShards(u16),
    #[error("port {port} is wanted twice, for {first} and for {second}: pick distinct ports")]
    PortConflict { port: u16, first: String, second: String },
    #[error("{flag} {base} leaves no room for {count} consecutive ports")]
    PortRangeOverflow { flag: &'static str, base: u16, count: usize },
    #[error(
        "{dir} holds the journal of a cluster with {had}, but this run asks for {wants}: \
         run with the same shape or use a fresh --dir"
    )]
    ShapeChanged { dir: PathBuf, had: String, wants: String },
    #[error("another `memlog up` (pid {pid}) is running with --dir {dir}")]
    AlreadyRunning { pid: u32, dir: PathBuf },
    #[error("{name} failed to start: {reason}\n--- last lines of {log} ---\n{tail}")]
    ChildFailed { name: String, reason: String, log: PathBuf, tail: String },
    #[error("interrupted while starting; every child was stopped")]
    Interrupted,
    #[error(transparent)]
    User(#[from] LocalUserError),
    #[error("the proxy's [backend]: {0}")]
    Backend(#[from] memlog_proxy::BackendConfigError),
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
}

/// How long each kind of child may take to become ready.
const REDIS_READY_TIMEOUT: Duration = Duration::from_secs(15);
const REPLICA_LINK_TIMEOUT: Duration = Duration::from_secs(30);
const JOURNAL_READY_TIMEOUT: Duration = Duration::from_secs(15);
/// The proxy replays the journal onto every primary before it serves, which takes a while
/// for a long journal.
const PROXY_READY_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a child may take to exit after SIGTERM before it gets SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// What makes a child ready.
#[derive(Debug, Clone, Copy)]
enum Readiness {
    /// Accepts TCP connections (a journal node: it does not speak RESP).
    AcceptsTcp,
    /// Answers `PING` with `PONG`.
    Pings,
    /// Answers `PING` and reports `master_link_status:up`.
    ReplicaLinked,
}

/// One child to start: how, what it is, where it listens and when it counts as ready.
struct NodePlan {
    spec: ChildSpec,
    /// How to bring it back if it dies while the cluster runs.
    restart: RestartPlan,
    role: Role,
    port: u16,
    ready: Readiness,
    /// How long it may take to become ready before start-up fails.
    ready_within: Duration,
    /// How its readiness probe reaches it: a Redis node's TLS and generated password, the
    /// proxy's user.
    access: NodeAccess,
}

impl NodePlan {
    fn addr(&self) -> SocketAddr {
        loopback(self.port)
    }
}

/// Starts the cluster, serves until `shutdown` resolves, then stops every child.
pub async fn run(args: UpArgs, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    tokio::pin!(shutdown);
    // Everything this cluster writes (journal, metadata, snapshots, keys, logs, the Redis nodes'
    // files) is for its owner only, as the systemd units' UMask=0077 does in a deployment.
    // SAFETY: umask only sets the process's (and its future children's) file creation mask.
    unsafe { libc::umask(0o077) };
    args.check()?;
    let redis_server =
        find_executable(&args.redis_server).ok_or(UpError::RedisServerNotFound(args.redis_server.clone()))?;
    let user = match (&args.user, &args.password_file) {
        (Some(name), Some(file)) => Some(LocalUser::read(name, file)?),
        _ => None,
    };
    let (dir, previous) = prepare_dir(&args.dir)?;
    let metrics_port = (!args.no_metrics).then_some(args.metrics_port);
    let journal_ports = journal_ports(&args, &dir, previous.as_ref())?;
    let identity = (!journal_ports.is_empty()).then(|| cluster_identity(&dir)).transpose()?;
    let journal_stage = plan_journal(&journal_ports, &dir, identity.as_ref().map(|files| &files.journal))?;
    let redis_tls = args.redis_tls.then(|| redis_tls::generate(&dir)).transpose().map_err(|e| {
        io_error(format!("cannot create the Redis certificates in {}", dir.display()), std::io::Error::other(e))
    })?;
    let backend = backend_config(&dir, redis_tls.as_ref());
    let redis_stage = plan_redis(&args, &redis_server, &dir, &backend, redis_tls.as_ref())?;
    check_ports_free(&args, metrics_port, journal_stage.iter().chain(&redis_stage))?;
    let mut proxy_config = proxy_config(&args, metrics_port, &journal_stage, &redis_stage, &dir, backend);
    proxy_config.validate().map_err(|e| UpError::Param(e.to_string()))?;
    proxy_config.cluster_tls = identity.map(|files| files.proxy);
    if let Some(user) = &user {
        if let Some(journal) = &proxy_config.journal {
            user.check_store(&journal.metadata).await?;
        }
        proxy_config.users = vec![user.config()];
    }
    let mut proxy_plan = plan_proxy(&args, &dir, &proxy_config)?;
    // Its readiness probe logs in as the user, like any client.
    proxy_plan.access.auth =
        user.as_ref().map(|u| Arc::new(BackendAuth { user: Some(u.name.clone()), password: u.password.clone() }));
    let proxy_stage = vec![proxy_plan];
    if journal_stage.is_empty() {
        tracing::warn!("--journal-nodes 0: no journal, writes are NOT durable and lost when Redis restarts");
    }

    let url = format!("redis://{}", loopback(args.port));
    let metrics_url = metrics_port.map(|port| format!("http://{}/metrics", loopback(port)));
    let mut record = ClusterFile {
        state: ClusterState::Starting,
        up_pid: std::process::id(),
        url: url.clone(),
        metrics_url: metrics_url.clone(),
        processes: Vec::new(),
        // A later run without --user keeps the users the store holds, so their record stays.
        admin: user.as_ref().map(LocalUser::record).or_else(|| previous.as_ref().and_then(|p| p.admin.clone())),
    };
    let mut children = Children::new();
    let restart_plans: Vec<RestartPlan> =
        journal_stage.iter().chain(&redis_stage).chain(&proxy_stage).map(|node| node.restart.clone()).collect();
    for stage in [journal_stage, redis_stage, proxy_stage] {
        let started = tokio::select! {
            started = start_stage(&mut children, &stage, &mut record, &dir) => started,
            _ = &mut shutdown => Err(UpError::Interrupted),
        };
        if let Err(err) = started {
            children.stop_all(STOP_GRACE).await;
            record.state = ClusterState::Stopped;
            // The start-up error is the one to report; a failure to record the stop is secondary.
            let _ = save(&record, &dir);
            return Err(err.into());
        }
    }
    record.state = ClusterState::Running;
    save(&record, &dir)?;
    // Nobody may be reading stdout any more (a closed pipe); the cluster serves regardless.
    let shape = Shape {
        mode: args.mode,
        shards: args.shard_count(),
        replicas: args.replicas,
        journal_nodes: journal_ports.len(),
    };
    let _ = writeln!(std::io::stdout(), "{}", ready_line(&url, &shape, metrics_url.as_deref()));
    tracing::info!(dir = %dir.display(), "cluster running; Ctrl-C or SIGTERM stops it");

    let mut supervisor = Supervisor::new(restart_plans, Instant::now());
    loop {
        let next_restart = supervisor.next_due();
        tokio::select! {
            exit = children.next_exit() => {
                if let Some(delay) = supervisor.child_exited(&exit, &children, Instant::now()) {
                    tracing::error!(child = %exit.name, pid = exit.pid, status = %exit.status, "child exited; restarting it in {delay:?}");
                }
            }
            _ = sleep_until(next_restart), if next_restart.is_some() => {
                for outcome in supervisor.restart_due(&mut children, Instant::now()) {
                    match outcome {
                        Ok(restarted) => record_restart(&mut record, &restarted, &dir),
                        Err(err) => tracing::error!("{err}"),
                    }
                }
            }
            _ = &mut shutdown => break,
        }
    }
    tracing::info!("stopping every child");
    children.stop_all(STOP_GRACE).await;
    record.state = ClusterState::Stopped;
    save(&record, &dir)?;
    tracing::info!("memlog up stopped");
    Ok(())
}

/// Sleeps until `at` (pends forever for `None`, which `select!` never polls: its branch is off).
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Logs a restart and records the new pid in cluster.json; a failure to write the file is
/// logged, not fatal: the cluster itself is fine.
fn record_restart(record: &mut ClusterFile, restarted: &Restarted, dir: &Path) {
    tracing::warn!(child = %restarted.name, pid = restarted.pid, after = %restarted.after, "restarted");
    if let Some(process) = record.processes.iter_mut().find(|p| p.name == restarted.name) {
        process.pid = restarted.pid;
        process.restarts += 1;
    }
    if let Err(err) = save(record, dir) {
        tracing::error!("{err}");
    }
}

/// What the ready line describes.
struct Shape {
    mode: Mode,
    shards: u16,
    replicas: u16,
    journal_nodes: usize,
}

/// The one line scripts and people wait for, e.g. `memlog ready: redis://127.0.0.1:6380
/// (3 shards × 1 replica, journal 3 nodes, metrics http://127.0.0.1:9121/metrics)`; a
/// standalone endpoint says so first (`(standalone, 1 shard × 1 replica, …)`).
fn ready_line(url: &str, shape: &Shape, metrics_url: Option<&str>) -> String {
    let plural = |n: usize, word: &str| if n == 1 { format!("{n} {word}") } else { format!("{n} {word}s") };
    let journal = match shape.journal_nodes {
        0 => "no journal, writes not durable".to_string(),
        n => format!("journal {}", plural(n, "node")),
    };
    let metrics = match metrics_url {
        Some(m) => format!("metrics {m}"),
        None => "metrics off".to_string(),
    };
    let mode = match shape.mode {
        Mode::Cluster => "",
        Mode::Standalone => "standalone, ",
    };
    format!(
        "memlog ready: {url} ({mode}{} × {}, {journal}, {metrics})",
        plural(shape.shards.into(), "shard"),
        plural(shape.replicas.into(), "replica")
    )
}

/// Creates `dir` and refuses it if another live `memlog up` owns it. Returns the cluster.json
/// of an earlier run in it, if any (a stale one, from a run that was killed, does not block).
fn prepare_dir(dir: &Path) -> Result<(PathBuf, Option<ClusterFile>), UpError> {
    private_fs::create_dir_all(dir).map_err(|e| io_error(format!("cannot create {}", dir.display()), e))?;
    // A dir made by an older memlog, or by hand, is tightened too.
    private_fs::restrict_dir(dir).map_err(|e| io_error(format!("cannot restrict {}", dir.display()), e))?;
    let dir = dir.canonicalize().map_err(|e| io_error(format!("cannot resolve {}", dir.display()), e))?;
    let previous = ClusterFile::read(&dir).ok();
    if let Some(previous) = &previous {
        if previous.state != ClusterState::Stopped && previous.up_pid != std::process::id() && up_alive(previous.up_pid)
        {
            return Err(UpError::AlreadyRunning { pid: previous.up_pid, dir });
        }
    }
    Ok((dir, previous))
}

/// The journal nodes' ports: those of the journal already in `dir` if there is one (its data
/// is in `journal-<port>/`, and its streams are per shard, so the shape must not change),
/// else consecutive ports from `--journal-base-port`.
fn journal_ports(args: &UpArgs, dir: &Path, previous: Option<&ClusterFile>) -> Result<Vec<u16>, UpError> {
    let count = args.journal_nodes as usize;
    let recorded = previous.map(ClusterFile::journal_ports).unwrap_or_default();
    if recorded.is_empty() {
        return (0..count)
            .map(|i| {
                u16::try_from(args.journal_base_port as usize + i).map_err(|_| UpError::PortRangeOverflow {
                    flag: "--journal-base-port",
                    base: args.journal_base_port,
                    count,
                })
            })
            .collect();
    }
    let previous = previous.expect("ports were recorded");
    let changed = |had: String, wants: String| UpError::ShapeChanged { dir: dir.to_path_buf(), had, wants };
    if recorded.len() != count {
        return Err(changed(format!("{} journal nodes", recorded.len()), format!("--journal-nodes {count}")));
    }
    // No primary recorded: that run failed before its Redis stage, so nothing was ever journaled.
    let shards = args.shard_count();
    if previous.shard_count() != 0 && previous.shard_count() != shards as usize {
        return Err(changed(format!("{} shards", previous.shard_count()), format!("--shards {shards}")));
    }
    tracing::info!(ports = ?recorded, "reusing the journal recorded in cluster.json");
    Ok(recorded)
}

/// The cluster CA's certificate and the journal nodes' and proxy's identities in
/// `DIR/cluster-tls/`: those of an earlier run if all are there, else new ones (the CA key is
/// never written: a new node identity means a new CA, and every member gets it on start).
fn cluster_identity(dir: &Path) -> Result<ClusterFiles, UpError> {
    let tls_dir = dir.join("cluster-tls");
    let existing = ClusterFiles::in_dir(&tls_dir);
    if existing.complete() {
        return Ok(existing);
    }
    tracing::info!(dir = %tls_dir.display(), "generating the cluster CA and certificates");
    let generated = ClusterCa::generate().map_err(cluster_ca::WriteError::from).and_then(|ca| ca.write(&tls_dir));
    generated.map_err(|e| {
        io_error(format!("cannot create the cluster certificates in {}", tls_dir.display()), std::io::Error::other(e))
    })
}

/// One `memlog journal` node per port, each with its data and log in `DIR/journal-<port>/`,
/// and the cluster identity `tls` (none only without a journal).
fn plan_journal(ports: &[u16], dir: &Path, tls: Option<&TlsFiles>) -> Result<Vec<NodePlan>, UpError> {
    let exe = memlog_executable()?;
    ports
        .iter()
        .map(|&port| {
            let name = format!("journal-{port}");
            let node_dir = dir.join(&name);
            private_fs::create_dir_all(&node_dir)
                .map_err(|e| io_error(format!("cannot create {}", node_dir.display()), e))?;
            let mut args: Vec<std::ffi::OsString> = vec![
                "journal".into(),
                "--dir".into(),
                node_dir.clone().into(),
                "--listen".into(),
                loopback(port).to_string().into(),
            ];
            if let Some(tls) = tls {
                for (flag, path) in
                    [("--cluster-ca", &tls.ca), ("--cluster-cert", &tls.cert), ("--cluster-key", &tls.key)]
                {
                    args.extend([flag.into(), path.into()]);
                }
            }
            let spec = ChildSpec { name, program: exe.clone(), args, log: node_dir.join("journal.log") };
            Ok(NodePlan {
                restart: RestartPlan { spec: spec.clone(), prepare: Prepare::Nothing },
                spec,
                role: Role::Journal,
                port,
                ready: Readiness::AcceptsTcp,
                ready_within: JOURNAL_READY_TIMEOUT,
                access: NodeAccess::default(),
            })
        })
        .collect()
}

/// The proxy's `[backend]`: the password file `plan_redis` writes, and TLS with `--redis-tls`.
fn backend_config(dir: &Path, tls: Option<&RedisTlsFiles>) -> BackendConfig {
    let mut backend = BackendConfig {
        password_file: Some(redis_auth::password_file(dir).display().to_string()),
        ..BackendConfig::default()
    };
    if let Some(tls) = tls {
        tls.configure(&mut backend);
    }
    backend
}

/// The Redis nodes: shard by shard, the primary then its replicas, on consecutive ports, all
/// with one password generated for this start (see `redis_auth`), TLS only with `tls`. Their
/// readiness probes reach them as the proxy will, through `backend`.
fn plan_redis(
    args: &UpArgs,
    redis_server: &Path,
    dir: &Path,
    backend: &BackendConfig,
    tls: Option<&RedisTlsFiles>,
) -> Result<Vec<NodePlan>, UpError> {
    let password = redis_auth::generate(dir)
        .map_err(|e| io_error(format!("cannot write the Redis password into {}", dir.display()), e))?;
    let access = NodeAccess::from_config(backend)?;
    let per_shard = 1 + args.replicas as usize;
    let count = args.shard_count() as usize * per_shard;
    let port_at = |i: usize| -> Result<u16, UpError> {
        u16::try_from(args.redis_base_port as usize + i).map_err(|_| UpError::PortRangeOverflow {
            flag: "--redis-base-port",
            base: args.redis_base_port,
            count,
        })
    };
    let slots = SlotMap::even_ranges(args.shard_count() as usize);
    let mut nodes = Vec::with_capacity(count);
    for (shard, slots) in slots.into_iter().enumerate() {
        let primary = port_at(shard * per_shard)?;
        let files = NodeFiles { dir, config: &password.config_file, access: &access, tls };
        nodes.push(redis_node(redis_server, &files, primary, None, Role::Primary { shard, slots })?);
        for r in 1..per_shard {
            let port = port_at(shard * per_shard + r)?;
            nodes.push(redis_node(
                redis_server,
                &files,
                port,
                Some(primary),
                Role::Replica { shard, replica_of: primary },
            )?);
        }
    }
    Ok(nodes)
}

/// One stock `redis-server`: loopback only, no persistence of its own, in the foreground, and
/// empty: whatever its dir holds from an earlier run (a replica keeps the RDB of its last full
/// sync) is removed, so every byte it serves comes from the journal replay or its primary.
/// A replica replicates its primary from the first start; a restart (of any node) is empty and
/// unattached, for the proxy's controller to attach to whichever node is primary by then.
/// Its password comes from the config file named first, not from the command line.
fn redis_node(
    redis_server: &Path,
    files: &NodeFiles<'_>,
    port: u16,
    replica_of: Option<u16>,
    role: Role,
) -> Result<NodePlan, UpError> {
    let name = format!("redis-{port}");
    let node_dir = files.dir.join(&name);
    let log = node_dir.join("redis.log");
    empty_redis_dir(&node_dir, &log).map_err(|e| io_error(format!("cannot empty {}", node_dir.display()), e))?;
    let listen = match files.tls {
        Some(tls) => tls.node_args(port),
        None => vec!["--port".into(), port.to_string().into()],
    };
    let mut args: Vec<std::ffi::OsString> = vec![files.config.into()];
    args.extend(listen);
    let settings: Vec<std::ffi::OsString> = vec![
        "--bind".into(),
        "127.0.0.1".into(),
        "--save".into(),
        "".into(),
        "--appendonly".into(),
        "no".into(),
        "--daemonize".into(),
        "no".into(),
        // Full syncs through an RDB file: after a diskless sync Redis 7 streams nothing to the
        // replica until its first REPLCONF ACK (up to 1 s), which would stall a switchover.
        "--repl-diskless-sync".into(),
        "no".into(),
        // Answer -BUSY after 300 ms of a running script, well within the proxy's detect_ms:
        // the failover controller then tells a busy primary from a dead one.
        "--busy-reply-threshold".into(),
        "300".into(),
        "--dir".into(),
        node_dir.clone().into(),
    ];
    args.extend(settings);
    let unattached = ChildSpec { name, program: redis_server.to_path_buf(), args, log };
    let restart = RestartPlan { spec: unattached.clone(), prepare: Prepare::EmptyRedisDir(node_dir) };
    let (spec, ready, ready_within) = match replica_of {
        Some(primary) => {
            let mut spec = unattached;
            spec.args.extend(["--replicaof".into(), "127.0.0.1".into(), primary.to_string().into()]);
            (spec, Readiness::ReplicaLinked, REDIS_READY_TIMEOUT + REPLICA_LINK_TIMEOUT)
        }
        None => (unattached, Readiness::Pings, REDIS_READY_TIMEOUT),
    };
    Ok(NodePlan { spec, restart, role, port, ready, ready_within, access: files.access.clone() })
}

/// What every Redis node of the cluster shares: the cluster's dir, the config file with the
/// password, how readiness probes reach it, and its TLS files.
struct NodeFiles<'a> {
    dir: &'a Path,
    config: &'a Path,
    access: &'a NodeAccess,
    tls: Option<&'a RedisTlsFiles>,
}

/// The proxy's configuration: the journal (if any), every shard with its nodes, slots split evenly.
fn proxy_config(
    args: &UpArgs,
    metrics_port: Option<u16>,
    journal: &[NodePlan],
    redis: &[NodePlan],
    dir: &Path,
    backend: BackendConfig,
) -> ProxyConfig {
    let mut shards: Vec<ShardConfig> = Vec::new();
    for node in redis {
        match &node.role {
            Role::Primary { slots, .. } => shards.push(ShardConfig {
                slots: slots.clone(),
                primary: node.addr().to_string(),
                replicas: Vec::new(),
            }),
            Role::Replica { shard, .. } => shards[*shard].replicas.push(node.addr().to_string()),
            Role::Journal | Role::Proxy => {}
        }
    }
    let journal = (!journal.is_empty()).then(|| {
        JournalConfig::new(
            journal.iter().map(|node| node.addr().to_string()).collect(),
            format!("file:{}", dir.join("metadata.json").display()),
        )
    });
    let snapshot = (journal.is_some() && args.snapshot_every > 0).then(|| SnapshotConfig {
        every_entries: args.snapshot_every,
        ..SnapshotConfig::new(dir.join("snapshots").display().to_string())
    });
    ProxyConfig {
        listen: loopback(args.port).to_string(),
        mode: args.mode,
        metrics_listen: metrics_port.map(|p| loopback(p).to_string()),
        journal,
        snapshot,
        shards,
        backend,
        parameters: args.params.iter().map(|(name, value)| (name.clone(), ParamValue::Text(value.clone()))).collect(),
        ..ProxyConfig::default()
    }
}

/// Writes `proxy.toml` and plans `memlog proxy --config DIR/proxy.toml` as a child.
fn plan_proxy(args: &UpArgs, dir: &Path, config: &ProxyConfig) -> Result<NodePlan, UpError> {
    let path = dir.join("proxy.toml");
    let toml = toml::to_string(config)
        .map_err(|e| io_error("cannot encode the proxy config".into(), std::io::Error::other(e)))?;
    let text = format!("# Generated by `memlog up`; rewritten on every start.\n{toml}");
    private_fs::write(&path, text).map_err(|e| io_error(format!("cannot write {}", path.display()), e))?;
    let spec = ChildSpec {
        name: "proxy".into(),
        program: memlog_executable()?,
        args: vec!["proxy".into(), "--config".into(), path.into()],
        log: dir.join("proxy.log"),
    };
    Ok(NodePlan {
        restart: RestartPlan { spec: spec.clone(), prepare: Prepare::Nothing },
        spec,
        role: Role::Proxy,
        port: args.port,
        ready: Readiness::Pings,
        ready_within: PROXY_READY_TIMEOUT,
        access: NodeAccess::default(),
    })
}

/// This very binary, which runs the proxy and the journal nodes as `memlog proxy` / `memlog journal`.
fn memlog_executable() -> Result<PathBuf, UpError> {
    std::env::current_exe().map_err(|e| io_error("cannot find the memlog executable".into(), e))
}

/// Refuses to start anything if the cluster wants a port twice or a port it needs is taken.
fn check_ports_free<'a>(
    args: &UpArgs,
    metrics_port: Option<u16>,
    nodes: impl Iterator<Item = &'a NodePlan>,
) -> Result<(), UpError> {
    let mut wanted: Vec<(u16, String)> = vec![(args.port, "proxy".into())];
    wanted.extend(metrics_port.map(|p| (p, "metrics".into())));
    wanted.extend(nodes.map(|n| (n.port, n.spec.name.clone())));
    let mut owners = std::collections::HashMap::new();
    for (port, what) in &wanted {
        if let Some(first) = owners.insert(*port, what) {
            return Err(UpError::PortConflict { port: *port, first: first.clone(), second: what.clone() });
        }
    }
    for (port, what) in wanted {
        if TcpListener::bind(loopback(port)).is_err() {
            return Err(UpError::PortInUse { port, what });
        }
    }
    Ok(())
}

/// Starts every node of a stage, then waits for each to be ready, recording each in cluster.json.
async fn start_stage(
    children: &mut Children,
    stage: &[NodePlan],
    record: &mut ClusterFile,
    dir: &Path,
) -> Result<(), UpError> {
    for node in stage {
        let child = children.spawn(&node.spec).map_err(|e| UpError::ChildFailed {
            name: node.spec.name.clone(),
            reason: format!("cannot execute {}: {e}", node.spec.program.display()),
            log: node.spec.log.clone(),
            tail: String::new(),
        })?;
        tracing::info!(child = %node.spec.name, pid = child.pid, port = node.port, "started");
        record.processes.push(ProcessRecord {
            name: node.spec.name.clone(),
            role: node.role.clone(),
            port: node.port,
            pid: child.pid,
            log: node.spec.log.clone(),
            restarts: 0,
        });
    }
    save(record, dir)?;
    for node in stage {
        wait_ready(children, node).await?;
    }
    Ok(())
}

/// Polls `node` until it is ready; fails early if it exits, with its log's tail.
async fn wait_ready(children: &Children, node: &NodePlan) -> Result<(), UpError> {
    let child = children.get(&node.spec.name).expect("started before waited on");
    let fail = |reason: String| UpError::ChildFailed {
        name: node.spec.name.clone(),
        reason,
        log: child.log.clone(),
        tail: child.log_tail(20),
    };
    let what = match node.ready {
        Readiness::AcceptsTcp => "accept connections",
        Readiness::Pings => "answer PING",
        Readiness::ReplicaLinked => "report master_link_status:up",
    };
    let timeout = node.ready_within;
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.exit_status() {
            return Err(fail(format!("exited with {status}")));
        }
        let ready = match node.ready {
            Readiness::AcceptsTcp => probe::accepts(node.addr(), PROBE_TIMEOUT).await,
            Readiness::Pings => probe::pings(node.addr(), PROBE_TIMEOUT, &node.access).await,
            Readiness::ReplicaLinked => probe::replica_linked(node.addr(), PROBE_TIMEOUT, &node.access).await,
        };
        if ready {
            tracing::info!(child = %node.spec.name, "ready");
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(fail(format!("did not {what} on {} within {timeout:?}", node.addr())));
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Resolves `program` like a shell does: a path with a `/` as is, a bare name through PATH.
fn find_executable(program: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable =
        |p: &Path| p.metadata().map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false);
    if program.components().count() > 1 || program.is_absolute() {
        return executable(program).then(|| program.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(program)).find(|candidate| executable(candidate))
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
}

/// Writes `cluster.json`, so readers always see the current state.
fn save(record: &ClusterFile, dir: &Path) -> Result<(), UpError> {
    record.write(dir).map_err(|e| io_error(format!("cannot write {}", ClusterFile::path(dir).display()), e))
}

fn io_error(context: String, source: std::io::Error) -> UpError {
    UpError::Io { context, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(shards: u16, replicas: u16) -> UpArgs {
        UpArgs {
            dir: PathBuf::from("unused"),
            port: 6380,
            mode: Mode::Cluster,
            shards: Some(shards),
            replicas,
            metrics_port: 9121,
            no_metrics: false,
            redis_base_port: 7000,
            redis_server: PathBuf::from("redis-server"),
            journal_nodes: 3,
            journal_base_port: 7400,
            snapshot_every: 100_000,
            params: Vec::new(),
            user: None,
            password_file: None,
            redis_tls: false,
        }
    }

    #[test]
    fn with_redis_tls_every_node_listens_on_tls_only_and_the_proxy_reaches_it_over_tls() {
        let dir = tempfile::tempdir().unwrap();
        let tls = redis_tls::generate(dir.path()).unwrap();
        let backend = backend_config(dir.path(), Some(&tls));
        let nodes =
            plan_redis(&args(1, 1), Path::new("/usr/bin/redis-server"), dir.path(), &backend, Some(&tls)).unwrap();
        for node in &nodes {
            let args: Vec<String> = node.spec.args.iter().map(|a| a.to_string_lossy().into_owned()).collect();
            let flag = |name: &str| args.iter().position(|a| a == name).map(|i| args[i + 1].as_str());
            assert_eq!(flag("--port"), Some("0"), "{args:?}");
            assert_eq!(flag("--tls-port"), Some(node.port.to_string().as_str()));
            assert_eq!(flag("--tls-replication"), Some("yes"));
            assert!(node.access.tls.is_some() && node.access.auth.is_some());
            let restart: Vec<String> =
                node.restart.spec.args.iter().map(|a| a.to_string_lossy().into_owned()).collect();
            assert!(restart.windows(2).any(|w| w == ["--port", "0"]), "a restarted node is TLS-only too: {restart:?}");
        }
        let cfg = proxy_config(&args(1, 1), None, &[], &nodes, dir.path(), backend);
        assert!(cfg.backend.tls);
        assert_eq!(cfg.backend.ca, Some(tls.ca.display().to_string()));
        assert_eq!(cfg.backend.cert, Some(tls.proxy_cert.display().to_string()));
    }

    /// `plan_redis` of nodes without TLS, as `memlog up` without `--redis-tls` plans them.
    fn plan_plain_redis(args: &UpArgs, dir: &Path) -> Result<Vec<NodePlan>, UpError> {
        plan_redis(args, Path::new("/usr/bin/redis-server"), dir, &backend_config(dir, None), None)
    }

    fn recorded(name: &str, role: Role, port: u16) -> ProcessRecord {
        ProcessRecord { name: name.into(), role, port, pid: 1, log: PathBuf::from("x.log"), restarts: 0 }
    }

    /// A cluster.json of an earlier run with journal nodes on `journal` and `shards` primaries.
    fn previous_run(journal: &[u16], shards: u16) -> ClusterFile {
        let mut processes: Vec<ProcessRecord> =
            journal.iter().map(|&p| recorded(&format!("journal-{p}"), Role::Journal, p)).collect();
        processes.extend(
            (0..shards).map(|i| recorded("redis", Role::Primary { shard: i.into(), slots: String::new() }, 7000 + i)),
        );
        ClusterFile {
            state: ClusterState::Running,
            up_pid: 1,
            url: String::new(),
            metrics_url: None,
            processes,
            admin: None,
        }
    }

    #[test]
    fn plans_consecutive_ports_primary_first_and_a_config_covering_every_slot() {
        let dir = tempfile::tempdir().unwrap();
        let nodes = plan_plain_redis(&args(3, 2), dir.path()).unwrap();
        let ports: Vec<u16> = nodes.iter().map(|n| n.port).collect();
        assert_eq!(ports, (7000..7009).collect::<Vec<_>>());
        assert!(matches!(nodes[3].role, Role::Primary { shard: 1, .. }));
        assert_eq!(nodes[5].role, Role::Replica { shard: 1, replica_of: 7003 });
        let identity = cluster_identity(dir.path()).unwrap();
        let journal = plan_journal(&[7400, 7401, 7402], dir.path(), Some(&identity.journal)).unwrap();
        let args_of_first: Vec<String> = journal[0].spec.args.iter().map(|a| a.to_string_lossy().into()).collect();
        let key = identity.journal.key.display().to_string();
        assert!(args_of_first.windows(2).any(|w| w[0] == "--cluster-key" && w[1] == key), "{args_of_first:?}");
        assert_eq!(cluster_identity(dir.path()).unwrap(), identity, "a second run reuses the identity");
        let cfg = proxy_config(&args(3, 2), Some(9121), &journal, &nodes, dir.path(), backend_config(dir.path(), None));
        assert_eq!(cfg.shards.len(), 3);
        assert_eq!(cfg.shards[2].primary, "127.0.0.1:7006");
        assert_eq!(cfg.shards[2].replicas, vec!["127.0.0.1:7007", "127.0.0.1:7008"]);
        assert_eq!(cfg.metrics_listen.as_deref(), Some("127.0.0.1:9121"));
        // Every node reads its password from the private config file, none from its arguments.
        let password_file = dir.path().join("redis.password");
        let password = std::fs::read_to_string(&password_file).unwrap().trim().to_string();
        assert_eq!(cfg.backend.password_file.as_deref(), Some(&*password_file.to_string_lossy()));
        for node in &nodes {
            assert_eq!(node.spec.args[0], dir.path().join("redis-auth.conf").into_os_string());
            assert_eq!(node.restart.spec.args[0], node.spec.args[0]);
            assert!(!node.spec.args.iter().any(|a| a.to_string_lossy().contains(&password)), "{:?}", node.spec.args);
        }
        let journal_cfg = cfg.journal.as_ref().expect("a [journal] table");
        assert_eq!(journal_cfg.nodes, vec!["127.0.0.1:7400", "127.0.0.1:7401", "127.0.0.1:7402"]);
        assert_eq!(journal_cfg.metadata, format!("file:{}", dir.path().join("metadata.json").display()));
        assert_eq!(journal_cfg.ack_quorum(), 2);
        let snapshot = cfg.snapshot.as_ref().expect("a [snapshot] table");
        assert_eq!(
            (snapshot.dir.as_str(), snapshot.every_entries),
            (&*dir.path().join("snapshots").to_string_lossy(), 100_000)
        );
        cfg.validate().unwrap();
    }

    #[test]
    fn journal_nodes_get_their_own_dirs_and_no_journal_means_no_table() {
        let dir = tempfile::tempdir().unwrap();
        let journal = plan_journal(&[7400, 7401], dir.path(), None).unwrap();
        assert!(dir.path().join("journal-7401").is_dir());
        assert_eq!(journal[1].spec.log, dir.path().join("journal-7401/journal.log"));
        assert_eq!(journal[1].role, Role::Journal);
        let nodes = plan_plain_redis(&args(1, 0), dir.path()).unwrap();
        let unjournaled = proxy_config(&args(1, 0), None, &[], &nodes, dir.path(), backend_config(dir.path(), None));
        assert!(unjournaled.journal.is_none());
        assert!(unjournaled.snapshot.is_none(), "snapshots replace a journal prefix: none without a journal");
    }

    #[test]
    fn a_rerun_keeps_the_recorded_journal_ports_and_refuses_a_new_shape() {
        let dir = tempfile::tempdir().unwrap();
        let fresh = journal_ports(&args(3, 1), dir.path(), None).unwrap();
        assert_eq!(fresh, vec![7400, 7401, 7402]);
        let previous = previous_run(&[9000, 9001, 9005], 3);
        let mut moved = args(3, 1);
        moved.journal_base_port = 8000;
        assert_eq!(journal_ports(&moved, dir.path(), Some(&previous)).unwrap(), vec![9000, 9001, 9005]);
        let mut fewer = args(3, 1);
        fewer.journal_nodes = 1;
        let err = journal_ports(&fewer, dir.path(), Some(&previous)).unwrap_err();
        assert!(err.to_string().contains("3 journal nodes, but this run asks for --journal-nodes 1"), "{err}");
        let err = journal_ports(&args(2, 1), dir.path(), Some(&previous)).unwrap_err();
        assert!(err.to_string().contains("3 shards, but this run asks for --shards 2"), "{err}");
        // A run that failed before its Redis stage journaled nothing: any shard count will do.
        assert_eq!(
            journal_ports(&args(2, 1), dir.path(), Some(&previous_run(&[9000, 9001, 9005], 0))).unwrap().len(),
            3
        );
        // A run without a journal recorded none: the flags decide.
        assert_eq!(journal_ports(&moved, dir.path(), Some(&previous_run(&[], 3))).unwrap(), vec![8000, 8001, 8002]);
    }

    #[test]
    fn a_replica_replicates_from_its_first_start_but_every_restart_is_empty_and_unattached() {
        let dir = tempfile::tempdir().unwrap();
        let nodes = plan_plain_redis(&args(1, 1), dir.path()).unwrap();
        let has_replicaof = |spec: &ChildSpec| spec.args.iter().any(|a| a == "--replicaof");
        assert!(!has_replicaof(&nodes[0].spec));
        assert!(has_replicaof(&nodes[1].spec));
        for node in &nodes {
            assert!(!has_replicaof(&node.restart.spec), "{:?}", node.restart.spec.args);
            assert_eq!(node.restart.spec.name, node.spec.name);
            assert_eq!(node.restart.prepare, Prepare::EmptyRedisDir(dir.path().join(&node.spec.name)));
        }
        let journal = plan_journal(&[7400], dir.path(), None).unwrap();
        assert_eq!(journal[0].restart.prepare, Prepare::Nothing, "a journal node keeps its data");
        assert_eq!(journal[0].restart.spec.args, journal[0].spec.args);
    }

    #[test]
    fn redis_nodes_start_without_an_old_rdb() {
        let dir = tempfile::tempdir().unwrap();
        let node_dir = dir.path().join("redis-7000");
        std::fs::create_dir_all(&node_dir).unwrap();
        std::fs::write(node_dir.join("dump.rdb"), b"stale").unwrap();
        std::fs::write(node_dir.join("redis.log"), b"old log").unwrap();
        plan_plain_redis(&args(1, 0), dir.path()).unwrap();
        assert!(!node_dir.join("dump.rdb").exists());
        assert!(node_dir.join("redis.log").exists());
    }

    #[test]
    fn generated_config_reads_back_identically() {
        let dir = tempfile::tempdir().unwrap();
        let nodes = plan_plain_redis(&args(2, 1), dir.path()).unwrap();
        let journal = plan_journal(&[7400, 7401, 7402], dir.path(), None).unwrap();
        let cfg = proxy_config(&args(2, 1), None, &journal, &nodes, dir.path(), backend_config(dir.path(), None));
        plan_proxy(&args(2, 1), dir.path(), &cfg).unwrap();
        let loaded = ProxyConfig::load(Some(&dir.path().join("proxy.toml"))).unwrap();
        // `config_file` is where it was read from, not a configuration key.
        assert_eq!(ProxyConfig { config_file: None, ..loaded }, cfg);
    }

    #[test]
    fn refuses_a_port_range_past_65535() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = args(3, 1);
        a.redis_base_port = 65533;
        let err = plan_plain_redis(&a, dir.path()).err().unwrap();
        assert!(matches!(err, UpError::PortRangeOverflow { base: 65533, count: 6, .. }), "{err}");
        assert!(err.to_string().starts_with("--redis-base-port 65533"), "{err}");
        let mut a = args(3, 1);
        a.journal_base_port = 65534;
        let err = journal_ports(&a, dir.path(), None).err().unwrap();
        assert_eq!(err.to_string(), "--journal-base-port 65534 leaves no room for 3 consecutive ports");
    }

    #[test]
    fn refuses_a_port_wanted_twice() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = args(2, 1);
        a.port = 7002;
        let nodes = plan_plain_redis(&a, dir.path()).unwrap();
        let err = check_ports_free(&a, None, nodes.iter()).err().unwrap();
        assert!(
            matches!(&err, UpError::PortConflict { port: 7002, first, second } if first == "proxy" && second == "redis-7002"),
            "{err}"
        );
    }

    #[test]
    fn ready_line_names_endpoint_shape_and_metrics() {
        let shape = Shape { mode: Mode::Cluster, shards: 3, replicas: 1, journal_nodes: 3 };
        assert_eq!(
            ready_line("redis://127.0.0.1:6380", &shape, Some("http://127.0.0.1:9121/metrics")),
            "memlog ready: redis://127.0.0.1:6380 (3 shards × 1 replica, journal 3 nodes, metrics http://127.0.0.1:9121/metrics)"
        );
        let shape = Shape { mode: Mode::Cluster, shards: 1, replicas: 0, journal_nodes: 0 };
        assert_eq!(
            ready_line("redis://x", &shape, None),
            "memlog ready: redis://x (1 shard × 0 replicas, no journal, writes not durable, metrics off)"
        );
        let shape = Shape { mode: Mode::Standalone, shards: 1, replicas: 1, journal_nodes: 3 };
        assert_eq!(
            ready_line("redis://x", &shape, None),
            "memlog ready: redis://x (standalone, 1 shard × 1 replica, journal 3 nodes, metrics off)"
        );
    }

    #[test]
    fn standalone_mode_runs_one_shard_and_refuses_more() {
        let parse = |flags: &[&str]| {
            #[derive(clap::Parser)]
            struct Cli {
                #[command(flatten)]
                up: UpArgs,
            }
            <Cli as clap::Parser>::try_parse_from(std::iter::once("up").chain(flags.iter().copied())).map(|c| c.up)
        };
        let cluster = parse(&[]).unwrap();
        assert_eq!((cluster.mode, cluster.shard_count()), (Mode::Cluster, 3));
        let standalone = parse(&["--mode", "standalone"]).unwrap();
        assert_eq!((standalone.mode, standalone.shard_count()), (Mode::Standalone, 1));
        assert!(
            standalone.check().is_ok() && parse(&["--mode", "standalone", "--shards", "1"]).unwrap().check().is_ok()
        );
        let refused = parse(&["--mode", "standalone", "--shards", "2"]).unwrap().check().unwrap_err().to_string();
        assert!(refused.contains("--mode standalone serves one shard, but --shards 2"), "{refused}");
        assert!(parse(&["--mode", "sentinel"]).is_err());

        let dir = tempfile::tempdir().unwrap();
        let nodes = plan_plain_redis(&standalone, dir.path()).unwrap();
        let cfg = proxy_config(&standalone, None, &[], &nodes, dir.path(), backend_config(dir.path(), None));
        assert_eq!((cfg.mode, cfg.shards.len()), (Mode::Standalone, 1));
        cfg.validate().unwrap();
    }

    #[test]
    fn finds_executables_by_name_or_path() {
        assert!(find_executable(Path::new("sh")).is_some());
        assert!(find_executable(Path::new("/bin/sh")).is_some());
        assert!(find_executable(Path::new("/nonexistent/redis-server")).is_none());
        assert!(find_executable(Path::new("surely-no-such-program-memlog")).is_none());
    }
}

//! `memlog up`: a whole local cluster on loopback in one command. It starts N Redis shards
//! (a primary plus R replicas each, stock `redis-server` without persistence of its own, stock
//! replication) and the proxy in front of them, all as its own children, prints the endpoint
//! once the proxy serves, and stops everything on Ctrl-C or SIGTERM.
//!
//! Start-up runs in stages (today: Redis nodes, then the proxy); each stage's children are
//! started together and must all be ready before the next stage starts. Journal nodes will be
//! one more stage before the Redis nodes.

use std::future::Future;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Args;
use memlog_proxy::config::{ProxyConfig, ShardConfig};
use memlog_proxy::router::SlotMap;

use crate::children::{ChildSpec, Children};
use crate::cluster_file::{pid_alive, ClusterFile, ClusterState, ProcessRecord, Role};
use crate::probe;

/// Flags of `memlog up`.
#[derive(Debug, Clone, Args)]
pub struct UpArgs {
    /// Directory for the cluster's files: `redis-<port>/` (each node's dir and log), `proxy.toml`
    /// (the generated proxy config), `proxy.log` and `cluster.json` (what was started, with pids).
    #[arg(long, default_value = "./memlog-data")]
    pub dir: PathBuf,
    /// Port of the proxy, the endpoint clients connect to.
    #[arg(long, default_value_t = 6380)]
    pub port: u16,
    /// Number of Redis shards; the 16384 slots are split evenly between them.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub shards: u16,
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
}

/// Why `memlog up` could not start the cluster.
#[derive(Debug, thiserror::Error)]
pub enum UpError {
    #[error(
        "redis-server not found: install it (apt-get install redis-server) or pass --redis-server (looked for {0:?})"
    )]
    RedisServerNotFound(PathBuf),
    #[error("port {port} ({what}) is already in use: stop what uses it or pick other ports (--port, --metrics-port, --redis-base-port)")]
    PortInUse { port: u16, what: String },
    #[error("port {port} is wanted twice, for {first} and for {second}: pick distinct ports")]
    PortConflict { port: u16, first: String, second: String },
    #[error("--redis-base-port {base} leaves no room for {count} consecutive Redis ports")]
    PortRangeOverflow { base: u16, count: usize },
    #[error("another `memlog up` (pid {pid}) is running with --dir {dir}")]
    AlreadyRunning { pid: u32, dir: PathBuf },
    #[error("{name} failed to start: {reason}\n--- last lines of {log} ---\n{tail}")]
    ChildFailed { name: String, reason: String, log: PathBuf, tail: String },
    #[error("interrupted while starting; every child was stopped")]
    Interrupted,
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
}

/// How long each kind of child may take to become ready.
const REDIS_READY_TIMEOUT: Duration = Duration::from_secs(15);
const REPLICA_LINK_TIMEOUT: Duration = Duration::from_secs(30);
const PROXY_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a child may take to exit after SIGTERM before it gets SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// What makes a child ready.
#[derive(Debug, Clone, Copy)]
enum Readiness {
    /// Answers `PING` with `PONG`.
    Pings,
    /// Answers `PING` and reports `master_link_status:up`.
    ReplicaLinked,
}

/// One child to start: how, what it is, where it listens and when it counts as ready.
struct NodePlan {
    spec: ChildSpec,
    role: Role,
    port: u16,
    ready: Readiness,
    /// How long it may take to become ready before start-up fails.
    ready_within: Duration,
}

impl NodePlan {
    fn addr(&self) -> SocketAddr {
        loopback(self.port)
    }
}

/// Starts the cluster, serves until `shutdown` resolves, then stops every child.
pub async fn run(args: UpArgs, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    tokio::pin!(shutdown);
    let redis_server =
        find_executable(&args.redis_server).ok_or(UpError::RedisServerNotFound(args.redis_server.clone()))?;
    let dir = prepare_dir(&args.dir)?;
    let metrics_port = (!args.no_metrics).then_some(args.metrics_port);
    let redis_stage = plan_redis(&args, &redis_server, &dir)?;
    check_ports_free(&args, metrics_port, &redis_stage)?;
    let proxy_config = proxy_config(&args, metrics_port, &redis_stage);
    let proxy_stage = vec![plan_proxy(&args, &dir, &proxy_config)?];

    let url = format!("redis://{}", loopback(args.port));
    let metrics_url = metrics_port.map(|port| format!("http://{}/metrics", loopback(port)));
    let mut record = ClusterFile {
        state: ClusterState::Starting,
        up_pid: std::process::id(),
        url: url.clone(),
        metrics_url: metrics_url.clone(),
        processes: Vec::new(),
    };
    let mut children = Children::new();
    for stage in [redis_stage, proxy_stage] {
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
    let _ = writeln!(std::io::stdout(), "{}", ready_line(&url, args.shards, args.replicas, metrics_url.as_deref()));
    tracing::info!(dir = %dir.display(), "cluster running; Ctrl-C or SIGTERM stops it");

    loop {
        tokio::select! {
            exit = children.next_exit() => tracing::error!(
                child = %exit.name,
                status = %exit.status,
                "child exited; memlog up does not restart children yet (supervision is a later issue), the cluster runs degraded"
            ),
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

/// The one line scripts and people wait for, e.g.
/// `memlog ready: redis://127.0.0.1:6380 (3 shards × 1 replica, metrics http://127.0.0.1:9121/metrics)`.
fn ready_line(url: &str, shards: u16, replicas: u16, metrics_url: Option<&str>) -> String {
    let plural = |n: u16, word: &str| if n == 1 { format!("{n} {word}") } else { format!("{n} {word}s") };
    let metrics = match metrics_url {
        Some(m) => format!("metrics {m}"),
        None => "metrics off".to_string(),
    };
    format!("memlog ready: {url} ({} × {}, {metrics})", plural(shards, "shard"), plural(replicas, "replica"))
}

/// Creates `dir` and refuses it if another live `memlog up` owns it.
fn prepare_dir(dir: &Path) -> Result<PathBuf, UpError> {
    std::fs::create_dir_all(dir).map_err(|e| io_error(format!("cannot create {}", dir.display()), e))?;
    let dir = dir.canonicalize().map_err(|e| io_error(format!("cannot resolve {}", dir.display()), e))?;
    if let Ok(previous) = ClusterFile::read(&dir) {
        if previous.state != ClusterState::Stopped
            && previous.up_pid != std::process::id()
            && pid_alive(previous.up_pid)
        {
            return Err(UpError::AlreadyRunning { pid: previous.up_pid, dir });
        }
    }
    Ok(dir)
}

/// The Redis nodes: shard by shard, the primary then its replicas, on consecutive ports.
fn plan_redis(args: &UpArgs, redis_server: &Path, dir: &Path) -> Result<Vec<NodePlan>, UpError> {
    let per_shard = 1 + args.replicas as usize;
    let count = args.shards as usize * per_shard;
    let port_at = |i: usize| -> Result<u16, UpError> {
        u16::try_from(args.redis_base_port as usize + i)
            .map_err(|_| UpError::PortRangeOverflow { base: args.redis_base_port, count })
    };
    let slots = SlotMap::even_ranges(args.shards as usize);
    let mut nodes = Vec::with_capacity(count);
    for (shard, slots) in slots.into_iter().enumerate() {
        let primary = port_at(shard * per_shard)?;
        nodes.push(redis_node(redis_server, dir, primary, None, Role::Primary { shard, slots })?);
        for r in 1..per_shard {
            let port = port_at(shard * per_shard + r)?;
            nodes.push(redis_node(
                redis_server,
                dir,
                port,
                Some(primary),
                Role::Replica { shard, replica_of: primary },
            )?);
        }
    }
    Ok(nodes)
}

/// One stock `redis-server`: loopback only, no persistence of its own, in the foreground.
fn redis_node(
    redis_server: &Path,
    dir: &Path,
    port: u16,
    replica_of: Option<u16>,
    role: Role,
) -> Result<NodePlan, UpError> {
    let name = format!("redis-{port}");
    let node_dir = dir.join(&name);
    std::fs::create_dir_all(&node_dir).map_err(|e| io_error(format!("cannot create {}", node_dir.display()), e))?;
    let mut args: Vec<std::ffi::OsString> = vec![
        "--port".into(),
        port.to_string().into(),
        "--bind".into(),
        "127.0.0.1".into(),
        "--save".into(),
        "".into(),
        "--appendonly".into(),
        "no".into(),
        "--daemonize".into(),
        "no".into(),
        // Serve a replica's full sync at once instead of waiting 5 s for more replicas to join.
        "--repl-diskless-sync-delay".into(),
        "0".into(),
        "--dir".into(),
        node_dir.clone().into(),
    ];
    if let Some(primary) = replica_of {
        args.extend(["--replicaof".into(), "127.0.0.1".into(), primary.to_string().into()]);
    }
    let (ready, ready_within) = match replica_of {
        Some(_) => (Readiness::ReplicaLinked, REDIS_READY_TIMEOUT + REPLICA_LINK_TIMEOUT),
        None => (Readiness::Pings, REDIS_READY_TIMEOUT),
    };
    let spec = ChildSpec { name, program: redis_server.to_path_buf(), args, log: node_dir.join("redis.log") };
    Ok(NodePlan { spec, role, port, ready, ready_within })
}

/// The proxy's configuration: every shard with its nodes, slots split evenly.
fn proxy_config(args: &UpArgs, metrics_port: Option<u16>, redis: &[NodePlan]) -> ProxyConfig {
    let mut shards: Vec<ShardConfig> = Vec::new();
    for node in redis {
        match &node.role {
            Role::Primary { slots, .. } => shards.push(ShardConfig {
                slots: slots.clone(),
                primary: node.addr().to_string(),
                replicas: Vec::new(),
            }),
            Role::Replica { shard, .. } => shards[*shard].replicas.push(node.addr().to_string()),
            Role::Proxy => {}
        }
    }
    ProxyConfig {
        listen: loopback(args.port).to_string(),
        metrics_listen: metrics_port.map(|p| loopback(p).to_string()),
        shards,
        ..ProxyConfig::default()
    }
}

/// Writes `proxy.toml` and plans `memlog proxy --config DIR/proxy.toml` as a child.
fn plan_proxy(args: &UpArgs, dir: &Path, config: &ProxyConfig) -> Result<NodePlan, UpError> {
    let path = dir.join("proxy.toml");
    let toml = toml::to_string(config)
        .map_err(|e| io_error("cannot encode the proxy config".into(), std::io::Error::other(e)))?;
    let text = format!("# Generated by `memlog up`; rewritten on every start.\n{toml}");
    std::fs::write(&path, text).map_err(|e| io_error(format!("cannot write {}", path.display()), e))?;
    let exe = std::env::current_exe().map_err(|e| io_error("cannot find the memlog executable".into(), e))?;
    let spec = ChildSpec {
        name: "proxy".into(),
        program: exe,
        args: vec!["proxy".into(), "--config".into(), path.into()],
        log: dir.join("proxy.log"),
    };
    Ok(NodePlan {
        spec,
        role: Role::Proxy,
        port: args.port,
        ready: Readiness::Pings,
        ready_within: PROXY_READY_TIMEOUT,
    })
}

/// Refuses to start anything if the cluster wants a port twice or a port it needs is taken.
fn check_ports_free(args: &UpArgs, metrics_port: Option<u16>, redis: &[NodePlan]) -> Result<(), UpError> {
    let mut wanted: Vec<(u16, String)> = vec![(args.port, "proxy".into())];
    wanted.extend(metrics_port.map(|p| (p, "metrics".into())));
    wanted.extend(redis.iter().map(|n| (n.port, n.spec.name.clone())));
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
            Readiness::Pings => probe::pings(node.addr(), PROBE_TIMEOUT).await,
            Readiness::ReplicaLinked => probe::replica_linked(node.addr(), PROBE_TIMEOUT).await,
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
            shards,
            replicas,
            metrics_port: 9121,
            no_metrics: false,
            redis_base_port: 7000,
            redis_server: PathBuf::from("redis-server"),
        }
    }

    #[test]
    fn plans_consecutive_ports_primary_first_and_a_config_covering_every_slot() {
        let dir = tempfile::tempdir().unwrap();
        let nodes = plan_redis(&args(3, 2), Path::new("/usr/bin/redis-server"), dir.path()).unwrap();
        let ports: Vec<u16> = nodes.iter().map(|n| n.port).collect();
        assert_eq!(ports, (7000..7009).collect::<Vec<_>>());
        assert!(matches!(nodes[3].role, Role::Primary { shard: 1, .. }));
        assert_eq!(nodes[5].role, Role::Replica { shard: 1, replica_of: 7003 });
        let cfg = proxy_config(&args(3, 2), Some(9121), &nodes);
        assert_eq!(cfg.shards.len(), 3);
        assert_eq!(cfg.shards[2].primary, "127.0.0.1:7006");
        assert_eq!(cfg.shards[2].replicas, vec!["127.0.0.1:7007", "127.0.0.1:7008"]);
        assert_eq!(cfg.metrics_listen.as_deref(), Some("127.0.0.1:9121"));
        cfg.validate().unwrap();
    }

    #[test]
    fn generated_config_reads_back_identically() {
        let dir = tempfile::tempdir().unwrap();
        let nodes = plan_redis(&args(2, 1), Path::new("/usr/bin/redis-server"), dir.path()).unwrap();
        let cfg = proxy_config(&args(2, 1), None, &nodes);
        plan_proxy(&args(2, 1), dir.path(), &cfg).unwrap();
        let loaded = ProxyConfig::load(Some(&dir.path().join("proxy.toml"))).unwrap();
        assert_eq!(loaded, cfg);
    }

    #[test]
    fn refuses_a_port_range_past_65535() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = args(3, 1);
        a.redis_base_port = 65533;
        let err = plan_redis(&a, Path::new("/usr/bin/redis-server"), dir.path()).err().unwrap();
        assert!(matches!(err, UpError::PortRangeOverflow { base: 65533, count: 6 }), "{err}");
    }

    #[test]
    fn refuses_a_port_wanted_twice() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = args(2, 1);
        a.port = 7002;
        let nodes = plan_redis(&a, Path::new("/usr/bin/redis-server"), dir.path()).unwrap();
        let err = check_ports_free(&a, None, &nodes).err().unwrap();
        assert!(
            matches!(&err, UpError::PortConflict { port: 7002, first, second } if first == "proxy" && second == "redis-7002"),
            "{err}"
        );
    }

    #[test]
    fn ready_line_names_endpoint_shape_and_metrics() {
        assert_eq!(
            ready_line("redis://127.0.0.1:6380", 3, 1, Some("http://127.0.0.1:9121/metrics")),
            "memlog ready: redis://127.0.0.1:6380 (3 shards × 1 replica, metrics http://127.0.0.1:9121/metrics)"
        );
        assert_eq!(ready_line("redis://x", 1, 0, None), "memlog ready: redis://x (1 shard × 0 replicas, metrics off)");
    }

    #[test]
    fn finds_executables_by_name_or_path() {
        assert!(find_executable(Path::new("sh")).is_some());
        assert!(find_executable(Path::new("/bin/sh")).is_some());
        assert!(find_executable(Path::new("/nonexistent/redis-server")).is_none());
        assert!(find_executable(Path::new("surely-no-such-program-memlog")).is_none());
    }
}

//! `memlog`: the one binary. `memlog proxy` serves clients, `memlog journal` runs a journal
//! node, `memlog up` starts (and supervises) a whole local cluster on loopback, `memlog status`
//! shows a cluster's roles, LSNs, epochs and journal health, `memlog failover` switches a shard
//! over to a replica.
//!
//! No length, count or time is narrowed by an `as` cast, which would wrap silently: conversions
//! go through `try_from` and say what happens past the range (tests' fixtures aside).
#![cfg_attr(not(test), deny(clippy::cast_possible_truncation))]

mod admin_client;
mod admin_tls;
mod children;
mod cluster_file;
mod deployment;
mod failover_cmd;
mod import;
mod journal_args;
mod local_user;
mod probe;
mod redis_auth;
mod redis_tls;
mod signals;
mod status;
mod supervisor;
mod tls_client;
mod up;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use signals::shutdown_signal;

/// jemalloc, the allocator Redis ships with. The proxy allocates and frees small buffers for
/// every request, and glibc's malloc took about 11% of its CPU at `-P 16` (`_int_malloc`,
/// `unlink_chunk`, `malloc_consolidate`); with jemalloc the proxy's CPU per request there is
/// 12–14% lower (README "Benchmarks", session 13). Its background thread (Cargo feature
/// `background_threads`, as Redis's `jemalloc-bg-thread yes`) returns freed memory to the OS;
/// done inline by the threads that free, it lengthened the latency tail (p99 at 30,000 SETs/s
/// 3.7 ms instead of 2.7).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(name = "memlog", version, about = "A Redis-protocol durability layer in front of stock Redis")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy in front of existing Redis nodes, as described by a TOML file.
    Proxy {
        /// The proxy's TOML configuration; every key can also be set by a MEMLOG_… variable.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Run one journal node.
    Journal {
        /// Directory for this node's log segments and fencing state.
        #[arg(long)]
        dir: PathBuf,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:7400")]
        listen: SocketAddr,
        /// Serve Prometheus metrics (text format) on this address.
        #[arg(long)]
        metrics_listen: Option<SocketAddr>,
        /// Size at which a stream's log file is closed and a new one begun. Truncation below a
        /// snapshot deletes whole files, so this is also how finely disk space is given back.
        #[arg(long, default_value_t = journal_service::storage::DEFAULT_SEGMENT_BYTES, value_parser = clap::value_parser!(u64).range(4096..))]
        segment_bytes: u64,
        /// Threads serving the network (each stream also has its own writer thread). One is
        /// fastest while a node serves one proxy: every extra thread adds wake-ups per append
        /// (README "Benchmarks"); raise it for a node serving many busy streams over TLS.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
        threads: u16,
        #[command(flatten)]
        security: journal_args::SecurityArgs,
        #[command(flatten)]
        limits: journal_args::LimitArgs,
    },
    /// Start a local cluster on loopback (journal nodes, Redis shards with replicas, and the proxy)
    /// and print its endpoint; a process that dies is restarted (a Redis node empty, for the
    /// proxy to attach as a replica); Ctrl-C or SIGTERM stops every process it started.
    Up(up::UpArgs),
    /// Show a cluster: each shard's primary and replicas with their journal LSNs and lag, the
    /// shard epochs, and every journal node's health; exits non-zero unless all is healthy.
    Status(status::StatusArgs),
    /// Switch a shard's primary over to a replica, gracefully and without losing a write (the
    /// proxy pauses the shard, catches the replica up from the journal, then switches).
    Failover(failover_cmd::FailoverArgs),
    /// Bring existing data into a running memlog cluster from RDB files, and verify that a source
    /// Redis and memlog hold the same data.
    Import(import::ImportArgs),
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MEMLOG_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    // The proxy's configuration and the journal node's flags say how many threads they use.
    let proxy_config = match &cli.command {
        Command::Proxy { config } => {
            let cfg = memlog_proxy::config::ProxyConfig::load(config.as_deref())?;
            runtime.worker_threads(cfg.threads());
            Some(cfg)
        }
        Command::Journal { threads, .. } => {
            runtime.worker_threads(usize::from(*threads));
            None
        }
        _ => None,
    };
    let runtime = runtime.build()?;
    // Everything runs inside block_on on this (main) thread, which `memlog up` relies on:
    // the children it forks here die with it (PR_SET_PDEATHSIG follows the forking thread).
    runtime.block_on(async move {
        match cli.command {
            Command::Proxy { .. } => {
                let cfg = proxy_config.expect("loaded above");
                memlog_proxy::serve(cfg, shutdown_signal()).await
            }
            Command::Journal { dir, listen, metrics_listen, segment_bytes, threads: _, security, limits } => {
                let opts = journal_service::node::NodeOptions {
                    dir,
                    listen,
                    metrics_listen,
                    segment_bytes,
                    max_streams: limits.max_streams,
                    security: security.into_security()?,
                    limits: limits.node_limits(),
                };
                journal_service::node::run(opts, shutdown_signal()).await
            }
            Command::Up(args) => up::run(args, shutdown_signal()).await,
            Command::Status(args) => status::run(args).await,
            Command::Failover(args) => failover_cmd::run(args).await,
            Command::Import(args) => import::run(args).await,
        }
    })
}

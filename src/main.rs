//! `memlog`: the one binary. `memlog proxy` serves clients, `memlog journal` runs a journal
//! node, `memlog up` starts a whole local cluster on loopback.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

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
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MEMLOG_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Proxy { config } => {
                let cfg = memlog_proxy::config::ProxyConfig::load(config.as_deref())?;
                memlog_proxy::serve(cfg, shutdown_signal()).await
            }
            Command::Journal { dir, listen } => {
                let opts = journal_service::node::NodeOptions { dir, listen };
                journal_service::node::run(opts, shutdown_signal()).await
            }
        }
    })
}

/// Resolves on SIGTERM or Ctrl-C, so every server drains gracefully on either.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

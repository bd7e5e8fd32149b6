//! The command-line flags of `memlog journal` for its cluster identity and its limits.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use journal_service::cluster_tls::{ServerTls, TlsFiles};
use journal_service::node::{NodeLimits, Security};

/// Mutual TLS with the cluster (docs/cluster-tls.md); all three files, or `--insecure-no-tls`.
#[derive(clap::Args)]
pub struct SecurityArgs {
    /// The cluster CA certificate (PEM) every peer's certificate must be signed by.
    #[arg(long, env = "MEMLOG_CLUSTER_CA", requires_all = ["cluster_cert", "cluster_key"])]
    cluster_ca: Option<PathBuf>,
    /// This node's certificate (PEM), carrying the journal role.
    #[arg(long, env = "MEMLOG_CLUSTER_CERT", requires_all = ["cluster_ca", "cluster_key"])]
    cluster_cert: Option<PathBuf>,
    /// This node's private key (PEM).
    #[arg(long, env = "MEMLOG_CLUSTER_KEY", requires_all = ["cluster_ca", "cluster_cert"])]
    cluster_key: Option<PathBuf>,
    /// Serve plain TCP to anyone who connects: they can read, append, fence and truncate every
    /// stream. Only for a throwaway node on a trusted machine.
    #[arg(long, conflicts_with_all = ["cluster_ca", "cluster_cert", "cluster_key"])]
    insecure_no_tls: bool,
}

impl SecurityArgs {
    pub fn into_security(self) -> anyhow::Result<Security> {
        match (self.cluster_ca, self.cluster_cert, self.cluster_key) {
            (Some(ca), Some(cert), Some(key)) => {
                let tls = ServerTls::load(TlsFiles { ca, cert, key })?;
                Ok(Security::Tls(Arc::new(tls)))
            }
            _ if self.insecure_no_tls => Ok(Security::InsecureNoTls),
            _ => anyhow::bail!(
                "a journal node needs its cluster identity: --cluster-ca, --cluster-cert and --cluster-key \
                 (memlog up generates them), or --insecure-no-tls to serve anyone without authentication"
            ),
        }
    }
}

/// What one node spends on its peers.
#[derive(clap::Args)]
pub struct LimitArgs {
    /// Authenticated connections served at once.
    #[arg(long, default_value_t = NodeLimits::default().max_connections)]
    max_connections: usize,
    /// Connections in their TLS handshake at once (peers not yet authenticated).
    #[arg(long, default_value_t = NodeLimits::default().max_handshakes)]
    max_handshakes: usize,
    /// Seconds a TLS handshake may take.
    #[arg(long, default_value_t = NodeLimits::default().handshake_timeout.as_secs())]
    handshake_timeout_secs: u64,
    /// Seconds after which a connection with nothing in flight and nothing received is closed.
    #[arg(long, default_value_t = NodeLimits::default().idle_timeout.as_secs())]
    idle_timeout_secs: u64,
    /// Requests of one connection served at once; past it the connection is not read.
    #[arg(long, default_value_t = NodeLimits::default().max_in_flight, value_parser = at_least_one)]
    max_in_flight: usize,
    /// Streams the node holds at most (memlog uses one per shard).
    #[arg(long, default_value_t = journal_service::storage::DEFAULT_MAX_STREAMS)]
    pub max_streams: usize,
}

impl LimitArgs {
    pub fn node_limits(&self) -> NodeLimits {
        NodeLimits {
            max_connections: self.max_connections,
            max_handshakes: self.max_handshakes,
            handshake_timeout: Duration::from_secs(self.handshake_timeout_secs),
            idle_timeout: Duration::from_secs(self.idle_timeout_secs),
            max_in_flight: self.max_in_flight,
        }
    }
}

fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) | Err(_) => Err(format!("{text:?} is not a number of at least 1")),
        Ok(n) => Ok(n),
    }
}

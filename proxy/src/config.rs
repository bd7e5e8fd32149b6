//! The proxy's configuration: one TOML file, every key overridable by a `MEMLOG_…`
//! environment variable (`MEMLOG_LISTEN`, `MEMLOG_CLUSTER_COMPAT`, `MEMLOG_TLS__CERT`: nested
//! keys are joined with `__`). Unknown keys are refused with their name, because a misspelt
//! durability setting that is silently ignored is worse than a refusal to start.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// `MEMLOG_…` variables that are not proxy configuration keys.
const NOT_CONFIG_VARS: &[&str] = &["MEMLOG_LOG", "MEMLOG_FAILPOINT", "MEMLOG_BIN"];

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// Address clients connect to.
    pub listen: String,
    /// Address advertised to cluster-aware clients (`CLUSTER SLOTS`, `NODES`, …); defaults to `listen`.
    pub announce: Option<String>,
    /// Prometheus endpoint (`/metrics`); none when unset.
    pub metrics_listen: Option<String>,
    /// Enforce Redis Cluster's rule exactly: every key of a multi-key command in one slot.
    /// When false, keys only need to share a shard (and MGET/DEL/EXISTS/UNLINK/TOUCH may span shards).
    pub cluster_compat: bool,
    /// Most client connections served at once; the next one gets `-ERR max number of clients reached`.
    pub maxclients: usize,
    /// Largest bulk string a client may send (Redis's `proto-max-bulk-len`).
    pub proto_max_bulk_len: usize,
    /// Most arguments in one request (Redis allows 1024*1024).
    pub max_multibulk_len: usize,
    /// Most reply bytes buffered for one client before it is disconnected (0 = no limit).
    pub client_output_buffer_limit: usize,
    /// Pipelined connections the proxy keeps to each Redis node for reads.
    pub backend_connections: usize,
    /// A backend request that takes longer than this fails with an error (milliseconds).
    pub backend_timeout_ms: u64,
    /// How long to wait for a TCP connect to a Redis node (milliseconds).
    pub connect_timeout_ms: u64,
    /// On SIGTERM, how long in-flight requests may take to finish before connections are cut.
    pub shutdown_grace_ms: u64,
    /// TLS for client connections; plain TCP when absent.
    pub tls: Option<TlsConfig>,
    /// ACL users; when empty, the `default` user needs no password.
    pub users: Vec<UserConfig>,
    /// The shards: which slots each owns and its Redis nodes.
    pub shards: Vec<ShardConfig>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert: String,
    /// PEM private key.
    pub key: String,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub name: String,
    pub password: String,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ShardConfig {
    /// Slot ranges owned by this shard, e.g. `"0-5460"` or `"0-99,200-5460"`.
    pub slots: String,
    /// `host:port` of the shard's primary.
    pub primary: String,
    /// `host:port` of each replica.
    #[serde(default)]
    pub replicas: Vec<String>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            listen: "127.0.0.1:6380".into(),
            announce: None,
            metrics_listen: None,
            cluster_compat: false,
            maxclients: 10_000,
            proto_max_bulk_len: 512 * 1024 * 1024,
            max_multibulk_len: 1024 * 1024,
            client_output_buffer_limit: 0,
            backend_connections: 2,
            backend_timeout_ms: 5_000,
            connect_timeout_ms: 1_000,
            shutdown_grace_ms: 5_000,
            tls: None,
            users: Vec::new(),
            shards: Vec::new(),
        }
    }
}

impl ProxyConfig {
    /// Reads `path` (TOML) if given, then applies `MEMLOG_…` environment overrides.
    pub fn load(path: Option<&Path>) -> anyhow::Result<ProxyConfig> {
        let mut builder = config::Config::builder();
        if let Some(path) = path {
            builder = builder.add_source(config::File::from(path).format(config::FileFormat::Toml));
        }
        // Variables read elsewhere (the log filter, test failpoints) are not configuration keys.
        let env: std::collections::HashMap<String, String> =
            std::env::vars().filter(|(name, _)| !NOT_CONFIG_VARS.contains(&name.as_str())).collect();
        builder = builder.add_source(
            config::Environment::with_prefix("MEMLOG")
                .prefix_separator("_")
                .separator("__")
                .try_parsing(true)
                .source(Some(env)),
        );
        let cfg: ProxyConfig = builder.build()?.try_deserialize()?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks what serde cannot: the shards cover every slot exactly once.
    pub fn validate(&self) -> anyhow::Result<()> {
        crate::router::SlotMap::from_config(&self.shards).map(|_| ())
    }
}

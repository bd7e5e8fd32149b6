//! The proxy's configuration: one TOML file, every key overridable by a `MEMLOG_…`
//! environment variable (`MEMLOG_LISTEN`, `MEMLOG_CLUSTER_COMPAT`, `MEMLOG_TLS__CERT`: nested
//! keys are joined with `__`). Unknown keys are refused with their name, because a misspelt
//! durability setting that is silently ignored is worse than a refusal to start.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// The top-level keys: only `MEMLOG_<KEY>` variables naming one of them are configuration, so
/// other `MEMLOG_…` variables (the log filter, test settings) are left alone.
const KEYS: &[&str] = &[
    "listen",
    "announce",
    "metrics_listen",
    "mode",
    "cluster_compat",
    "maxclients",
    "proto_max_bulk_len",
    "max_multibulk_len",
    "client_output_buffer_limit",
    "worker_threads",
    "backend_connections",
    "backend_timeout_ms",
    "connect_timeout_ms",
    "shutdown_grace_ms",
    "auth_timeout_ms",
    "tls",
    "backend",
    "cluster_tls",
    "users",
    "journal",
    "failover",
    "snapshot",
    "parameters",
    "shards",
];

fn is_config_var(name: &str) -> bool {
    let Some(key) = name.strip_prefix("MEMLOG_") else { return false };
    let top = key.split("__").next().unwrap_or_default().to_ascii_lowercase();
    KEYS.contains(&top.as_str())
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// Address clients connect to.
    pub listen: String,
    /// Address advertised to cluster-aware clients (`CLUSTER SLOTS`, `NODES`, …); defaults to `listen`.
    pub announce: Option<String>,
    /// Prometheus endpoint (`/metrics`); none when unset.
    pub metrics_listen: Option<String>,
    /// What the endpoint presents itself as: a Redis Cluster (the default) or a standalone Redis
    /// (one shard; `redis_mode:standalone`, `CLUSTER` refused as a non-cluster Redis does).
    pub mode: Mode,
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
    /// Worker threads of the proxy. Default: half the cores (at least one), leaving the rest to
    /// the Redis nodes and journal nodes that usually share the machine; on 2 cores one thread
    /// is faster than two, which would mostly hand work between each other.
    pub worker_threads: Option<usize>,
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
    /// The proxy's cluster identity for the journal nodes (mutual TLS, docs/cluster-tls.md);
    /// plain TCP when absent, which only a node run with `--insecure-no-tls` accepts.
    pub cluster_tls: Option<journal_service::cluster_tls::TlsFiles>,
    /// A connection that has not authenticated this long after it connected is closed, when
    /// authentication is required (0: never), so idle sockets cannot fill `maxclients`.
    pub auth_timeout_ms: u64,
    /// How the proxy authenticates to its Redis nodes.
    pub backend: BackendConfig,
    /// ACL users, seeding the metadata store when it holds none (after that the store is the
    /// truth); when empty, the `default` user needs no password.
    pub users: Vec<UserConfig>,
    /// The journal every write goes through before Redis sees it. Without it the proxy only
    /// routes: writes are not durable (it says so at start-up).
    pub journal: Option<JournalConfig>,
    /// The failover controller: health checks of every Redis node and how long a shard may be
    /// held while its primary is replaced.
    pub failover: FailoverConfig,
    /// Snapshots of each shard, so the journal can be truncated below them and a node that lost
    /// everything is rebuilt from a snapshot plus the journal's tail. Off when absent: the
    /// journal then keeps every entry.
    pub snapshot: Option<SnapshotConfig>,
    /// The parameter group set at start (`hash-max-listpack-entries = 64`, `maxmemory-policy =
    /// "allkeys-lru"`, …): checked like `CONFIG SET`, applied over the group the metadata store
    /// holds, journaled on every shard (docs/parameters.md).
    pub parameters: std::collections::BTreeMap<String, ParamValue>,
    /// The shards: which slots each owns and its Redis nodes.
    pub shards: Vec<ShardConfig>,
    /// The file this configuration was read from (INFO's `config_file`); not a key of it.
    #[serde(skip)]
    pub config_file: Option<std::path::PathBuf>,
}

/// What the endpoint presents itself as (`mode`).
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// A Redis Cluster of the configured shards: `redis_mode:cluster`, `CLUSTER SLOTS` and the
    /// rest answered with the proxy as every slot's endpoint, `SELECT` of database 0 only.
    #[default]
    Cluster,
    /// A standalone Redis (what ElastiCache calls cluster mode disabled) in front of one shard:
    /// `redis_mode:standalone`, `cluster_enabled:0`, and `CLUSTER`, `READONLY`, `READWRITE`,
    /// `ASKING` refused as a Redis without cluster support refuses them, so clients and
    /// frameworks that look for a cluster do not switch to cluster behaviour.
    Standalone,
}

impl Mode {
    /// INFO's `redis_mode`.
    pub fn redis_mode(self) -> &'static str {
        match self {
            Mode::Cluster => "cluster",
            Mode::Standalone => "standalone",
        }
    }
}

impl std::str::FromStr for Mode {
    type Err = String;

    /// The spelling of the `mode` key (`memlog up --mode`).
    fn from_str(text: &str) -> Result<Mode, String> {
        match text {
            "cluster" => Ok(Mode::Cluster),
            "standalone" => Ok(Mode::Standalone),
            _ => Err(format!("{text:?} is not a mode: say \"cluster\" or \"standalone\"")),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JournalConfig {
    /// `host:port` of every journal node; each shard's stream is written to all of them.
    pub nodes: Vec<String>,
    /// The metadata store holding shard epochs: `file:PATH` or `postgres://…`.
    pub metadata: String,
    /// Nodes that must have fsync'd an entry before a write is acknowledged (default: a majority).
    #[serde(default)]
    pub ack_quorum: Option<usize>,
    /// How long an append may take to reach the ack quorum (milliseconds).
    #[serde(default = "default_append_timeout_ms")]
    pub append_timeout_ms: u64,
    /// How long a write waits for the journal to regain its quorum before it fails with
    /// `-TRYAGAIN` (milliseconds).
    #[serde(default = "default_write_wait_ms")]
    pub write_wait_ms: u64,
    /// The largest write, or transaction's writes, memlog journals (bytes); a larger one gets
    /// an error and nothing is applied. One over 63 MiB is journaled as several entries.
    #[serde(default = "default_max_write_bytes")]
    pub max_write_bytes: usize,
}

/// Redis's own ceiling for what one client may send before a command runs
/// (`client-query-buffer-limit`, 1 GiB by default).
fn default_max_write_bytes() -> usize {
    1 << 30
}

fn default_append_timeout_ms() -> u64 {
    2_000
}

fn default_write_wait_ms() -> u64 {
    5_000
}

impl JournalConfig {
    /// The journal on `nodes` with its epochs in `metadata`, every other setting at its default.
    pub fn new(nodes: Vec<String>, metadata: String) -> JournalConfig {
        JournalConfig {
            nodes,
            metadata,
            ack_quorum: None,
            append_timeout_ms: default_append_timeout_ms(),
            write_wait_ms: default_write_wait_ms(),
            max_write_bytes: default_max_write_bytes(),
        }
    }

    pub fn ack_quorum(&self) -> usize {
        self.ack_quorum.unwrap_or(self.nodes.len() / 2 + 1)
    }
}

/// A `[parameters]` value as TOML writes it: `64`, `"allkeys-lru"`, `true` (Redis's `yes`).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(untagged)]
pub enum ParamValue {
    Bool(bool),
    Int(i64),
    Text(String),
}

impl ParamValue {
    /// The value as `CONFIG SET` takes it.
    pub fn redis_text(&self) -> String {
        match self {
            ParamValue::Bool(true) => "yes".into(),
            ParamValue::Bool(false) => "no".into(),
            ParamValue::Int(n) => n.to_string(),
            ParamValue::Text(text) => text.clone(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FailoverConfig {
    /// A primary that has not answered a health check for this long is replaced by its best
    /// replica (milliseconds).
    pub detect_ms: u64,
    /// How often the controller checks every Redis node (`PING`, `ROLE`, `GET __memlog:lsn`).
    pub check_interval_ms: u64,
    /// How long one health check may take before it counts as unanswered (milliseconds).
    pub check_timeout_ms: u64,
    /// While a shard fails over (or its primary is unreachable), requests wait this long, then
    /// fail with `-TRYAGAIN` (milliseconds).
    pub hold_ms: u64,
}

impl Default for FailoverConfig {
    fn default() -> Self {
        FailoverConfig { detect_ms: 1_000, check_interval_ms: 100, check_timeout_ms: 250, hold_ms: 5_000 }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SnapshotConfig {
    /// Where snapshot files (one RDB each, under `shard-N/`) are kept; it must survive the loss
    /// of any Redis node, so not a Redis node's own directory.
    pub dir: String,
    /// A shard is snapshotted once its Redis nodes hold this many journal entries beyond its
    /// newest snapshot.
    #[serde(default = "default_every_entries")]
    pub every_entries: u64,
    /// Snapshots kept per shard (at least 1). The journal is truncated below the oldest one
    /// kept, so a damaged newest snapshot still leaves an older one plus the journal.
    #[serde(default = "default_keep")]
    pub keep: usize,
    /// The address Redis nodes reach this proxy at when a snapshot is loaded into one (it is
    /// served to them over Redis replication, on a free port).
    #[serde(default = "default_serve_ip")]
    pub serve_ip: std::net::IpAddr,
    /// How long fetching or loading a snapshot may go without progress (milliseconds).
    #[serde(default = "default_snapshot_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_every_entries() -> u64 {
    100_000
}

fn default_keep() -> usize {
    2
}

fn default_serve_ip() -> std::net::IpAddr {
    std::net::Ipv4Addr::LOCALHOST.into()
}

fn default_snapshot_timeout_ms() -> u64 {
    60_000
}

impl SnapshotConfig {
    /// Snapshots in `dir`, every other setting at its default.
    pub fn new(dir: String) -> SnapshotConfig {
        SnapshotConfig {
            dir,
            every_entries: default_every_entries(),
            keep: default_keep(),
            serve_ip: default_serve_ip(),
            timeout_ms: default_snapshot_timeout_ms(),
        }
    }
}

/// `[tls]`: TLS for client connections (README, "Security"). All files are read again on
/// SIGHUP; connections made afterwards use them, open ones keep theirs.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert: String,
    /// PEM private key.
    pub key: String,
    /// PEM certificates of the CA(s) that sign client certificates: a CA of its own, not the
    /// cluster CA of `[cluster_tls]`, so a client certificate is never a cluster identity.
    #[serde(default)]
    pub client_ca: Option<String>,
    /// Whether clients present a certificate (Redis's `tls-auth-clients`).
    #[serde(default)]
    pub client_auth: ClientAuth,
    /// Which name of a client certificate is a memlog user, so the connection starts
    /// authenticated as that user; unset: a certificate only admits the connection, which
    /// then authenticates with `AUTH` as any other.
    #[serde(default)]
    pub cert_user: Option<CertUser>,
}

/// Whether clients present a certificate, signed by `client_ca`.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// No certificate is asked for.
    #[default]
    None,
    /// A certificate is asked for; a client without one is served, one with a certificate
    /// `client_ca` did not sign is refused.
    Optional,
    /// A client without a certificate of `client_ca` fails the handshake.
    Required,
}

/// The name of a client certificate that names its user.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CertUser {
    /// The subject's common name (exactly one CN).
    Cn,
    /// The subjectAltName DNS name (exactly one).
    San,
}

impl TlsConfig {
    /// The settings agree: a client CA exactly when certificates are asked for, and a user
    /// mapping only then.
    pub fn validate(&self) -> anyhow::Result<()> {
        match (self.client_auth, &self.client_ca) {
            (ClientAuth::None, Some(_)) => {
                anyhow::bail!("[tls] client_ca is set but client_auth is \"none\": say \"optional\" or \"required\"")
            }
            (ClientAuth::Optional | ClientAuth::Required, None) => {
                anyhow::bail!("[tls] client_auth asks for client certificates: client_ca must name their CA")
            }
            _ => {}
        }
        anyhow::ensure!(
            self.cert_user.is_none() || self.client_auth != ClientAuth::None,
            "[tls] cert_user needs client certificates: set client_auth and client_ca"
        );
        Ok(())
    }
}

/// How the proxy reaches every Redis node, on every connection (data path, health checks,
/// replication set-up, snapshots, keyspace relays): the credentials it presents, and TLS. The
/// password is read from `password_file`, else from the `MEMLOG_BACKEND_PASSWORD` environment
/// variable; it has no key of its own, so it never sits in a configuration file or on a command
/// line.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct BackendConfig {
    /// The Redis ACL user (Redis's `default` user, i.e. `requirepass`, when unset). It needs the
    /// rights memlog uses: the commands clients send, `CONFIG`, `REPLICAOF`, `SYNC`, `INFO`.
    pub user: Option<String>,
    /// A file whose first line is the password (mode 0600).
    pub password_file: Option<String>,
    /// Connect to the nodes over TLS only (nodes run with `tls-port`; `port 0` to refuse
    /// plain TCP). Needs `ca`.
    pub tls: bool,
    /// PEM file of the CA that signs the nodes' certificates (with `tls`).
    pub ca: Option<String>,
    /// PEM certificate chain the proxy presents to the nodes (nodes run with
    /// `tls-auth-clients yes` want one) and on the snapshot-serving port, where a node loading a
    /// snapshot checks it against its `tls-ca-cert-file`: snapshot loads over TLS need it.
    pub cert: Option<String>,
    /// PEM private key of `cert`.
    pub key: Option<String>,
    /// The name every node's certificate must carry; unset: the host of each node's address
    /// (an IP address or a DNS name).
    pub server_name: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub name: String,
    /// Shorthand for `rules = "on >PASSWORD ~* &* +@all"`.
    #[serde(default)]
    pub password: Option<String>,
    /// Redis 7.0 ACL rules, as `ACL SETUSER` takes them (separated by spaces).
    #[serde(default)]
    pub rules: Option<String>,
}

impl UserConfig {
    /// A user allowed everything, with one password.
    pub fn with_password(name: &str, password: &str) -> UserConfig {
        UserConfig { name: name.into(), password: Some(password.into()), rules: None }
    }

    /// The user's rules: `rules`, or what `password` stands for; an error when both or neither
    /// is given.
    pub fn rules(&self) -> Result<Vec<String>, String> {
        match (&self.password, &self.rules) {
            (Some(password), None) => {
                Ok(["on".to_string(), format!(">{password}"), "~*".into(), "&*".into(), "+@all".into()].into())
            }
            (None, Some(rules)) => Ok(rules.split_whitespace().map(str::to_string).collect()),
            _ => Err(format!("[[users]] {:?}: give either `password` or `rules`", self.name)),
        }
    }
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
            mode: Mode::Cluster,
            cluster_compat: false,
            maxclients: 10_000,
            proto_max_bulk_len: 512 * 1024 * 1024,
            max_multibulk_len: 1024 * 1024,
            client_output_buffer_limit: 0,
            worker_threads: None,
            backend_connections: 2,
            backend_timeout_ms: 5_000,
            connect_timeout_ms: 1_000,
            shutdown_grace_ms: 5_000,
            auth_timeout_ms: 10_000,
            tls: None,
            backend: BackendConfig::default(),
            cluster_tls: None,
            users: Vec::new(),
            journal: None,
            failover: FailoverConfig::default(),
            snapshot: None,
            parameters: Default::default(),
            shards: Vec::new(),
            config_file: None,
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
        let env: std::collections::HashMap<String, String> =
            std::env::vars().filter(|(name, _)| is_config_var(name)).collect();
        builder = builder.add_source(
            config::Environment::with_prefix("MEMLOG")
                .prefix_separator("_")
                .separator("__")
                .try_parsing(true)
                .source(Some(env)),
        );
        let mut cfg: ProxyConfig = builder.build()?.try_deserialize()?;
        cfg.validate()?;
        cfg.config_file = path.map(|p| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf()));
        Ok(cfg)
    }

    /// The worker threads to run with (see `worker_threads`).
    pub fn threads(&self) -> usize {
        self.worker_threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() / 2)).max(1)
    }

    /// `[parameters]` as `CONFIG SET` takes them.
    pub fn parameter_entries(&self) -> std::collections::BTreeMap<String, String> {
        self.parameters.iter().map(|(name, value)| (name.clone(), value.redis_text())).collect()
    }

    /// What memlog's own parameter rules depend on.
    pub(crate) fn param_rules(&self) -> crate::params::Rules {
        crate::params::Rules { detect_ms: self.failover.detect_ms }
    }

    /// The slot map the `[[shards]]` describe.
    pub fn slot_map(&self) -> anyhow::Result<crate::router::SlotMap> {
        let lists: Vec<&str> = self.shards.iter().map(|s| s.slots.as_str()).collect();
        crate::router::SlotMap::from_slot_lists(&lists)
    }

    /// Checks what serde cannot: the shards cover every slot exactly once; snapshots replace
    /// a prefix of the journal, so they need one; a standalone endpoint fronts one shard.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.mode == Mode::Standalone {
            // A standalone Redis has one keyspace: several shards would need keys routed by slot
            // and multi-key commands refused across shards, which such a Redis never does.
            anyhow::ensure!(
                self.shards.len() == 1,
                "mode = \"standalone\" serves one shard (owning every slot), but the configuration has {} [[shards]]: keep one, or use mode = \"cluster\"",
                self.shards.len()
            );
            anyhow::ensure!(
                !self.cluster_compat,
                "cluster_compat enforces Redis Cluster's one-slot rule, which a standalone Redis does not have: drop it, or use mode = \"cluster\""
            );
        }
        if let Some(tls) = &self.tls {
            tls.validate()?;
        }
        crate::params::check_group(&self.parameter_entries(), self.param_rules())
            .map_err(|e| anyhow::anyhow!("[parameters]: {}", e.to_string().trim_start_matches("ERR ")))?;
        if let Some(snapshot) = &self.snapshot {
            anyhow::ensure!(
                self.journal.is_some(),
                "[snapshot] needs a [journal]: a snapshot replaces a journal prefix"
            );
            anyhow::ensure!(snapshot.keep >= 1, "[snapshot] keep must be at least 1");
            anyhow::ensure!(snapshot.every_entries >= 1, "[snapshot] every_entries must be at least 1");
        }
        self.slot_map().map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_is_overridable_and_no_other() {
        let full = toml::to_string(&ProxyConfig {
            announce: Some("a:1".into()),
            worker_threads: Some(1),
            metrics_listen: Some("m:1".into()),
            tls: Some(TlsConfig { cert: "c".into(), key: "k".into(), ..TlsConfig::default() }),
            journal: Some(JournalConfig {
                nodes: vec![],
                metadata: "file:x".into(),
                ack_quorum: Some(1),
                append_timeout_ms: 1,
                write_wait_ms: 1,
                max_write_bytes: 1,
            }),
            snapshot: Some(SnapshotConfig::new("d".into())),
            cluster_tls: Some(journal_service::cluster_tls::TlsFiles {
                ca: "a".into(),
                cert: "c".into(),
                key: "k".into(),
            }),
            ..ProxyConfig::default()
        })
        .unwrap();
        let table: toml::Table = full.parse().unwrap();
        let mut keys: Vec<&str> = table.keys().map(String::as_str).collect();
        keys.sort_unstable();
        let mut listed = KEYS.to_vec();
        listed.retain(|k| table.contains_key(*k) || matches!(*k, "users" | "shards"));
        assert_eq!(listed.len(), KEYS.len(), "KEYS names a key ProxyConfig lacks");
        assert!(keys.iter().all(|k| KEYS.contains(k)), "ProxyConfig key missing from KEYS: {keys:?}");
        assert!(is_config_var("MEMLOG_TLS__CERT") && is_config_var("MEMLOG_LISTEN"));
        assert!(!is_config_var("MEMLOG_LOG") && !is_config_var("MEMLOG_TEST_TARGET"));
    }

    #[test]
    fn failover_keys_have_defaults_and_unknown_ones_are_refused() {
        let shards = "[[shards]]\nslots = \"0-16383\"\nprimary = \"127.0.0.1:6379\"\n";
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memlog.toml");
        std::fs::write(&path, format!("[failover]\ndetect_ms = 300\n{shards}")).unwrap();
        let cfg = ProxyConfig::load(Some(&path)).unwrap();
        assert_eq!(cfg.failover, FailoverConfig { detect_ms: 300, ..FailoverConfig::default() });
        std::fs::write(&path, format!("[failover]\ndetect = 300\n{shards}")).unwrap();
        let refused = ProxyConfig::load(Some(&path)).unwrap_err().to_string();
        assert!(refused.contains("detect"), "{refused}");
    }

    #[test]
    fn client_certificate_settings_must_agree() {
        let shards = "[[shards]]\nslots = \"0-16383\"\nprimary = \"127.0.0.1:6379\"\n";
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memlog.toml");
        let load = |tls: &str| {
            std::fs::write(&path, format!("[tls]\ncert = \"c\"\nkey = \"k\"\n{tls}\n{shards}")).unwrap();
            ProxyConfig::load(Some(&path)).map_err(|e| e.to_string())
        };
        let tls = load("client_ca = \"ca\"\nclient_auth = \"required\"\ncert_user = \"san\"").unwrap().tls.unwrap();
        assert_eq!((tls.client_auth, tls.cert_user), (ClientAuth::Required, Some(CertUser::San)));
        assert_eq!(load("").unwrap().tls.unwrap().client_auth, ClientAuth::None);
        for (tls, error) in [
            ("client_ca = \"ca\"", "client_auth is \"none\""),
            ("client_auth = \"optional\"", "client_ca must name"),
            ("cert_user = \"cn\"", "cert_user needs client certificates"),
            ("client_ca = \"ca\"\nclient_auth = \"sometimes\"", "sometimes"),
        ] {
            let refused = load(tls).unwrap_err();
            assert!(refused.contains(error), "{tls}: {refused}");
        }
    }

    #[test]
    fn parameters_are_checked_like_config_set() {
        let shards = "[[shards]]\nslots = \"0-16383\"\nprimary = \"127.0.0.1:6379\"\n";
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memlog.toml");
        let table =
            "[parameters]\nhash-max-listpack-entries = 64\nactivedefrag = false\nmaxmemory-policy = \"allkeys-lru\"\n";
        std::fs::write(&path, format!("{table}{shards}")).unwrap();
        let entries = ProxyConfig::load(Some(&path)).unwrap().parameter_entries();
        let expected =
            [("activedefrag", "no"), ("hash-max-listpack-entries", "64"), ("maxmemory-policy", "allkeys-lru")];
        assert_eq!(entries.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect::<Vec<_>>(), expected);
        for (entry, error) in [
            ("hz = -1", "argument must be between 0 and 2147483647 inclusive"),
            ("save = \"\"", "'save' cannot be changed through memlog"),
            ("nosuch = 1", "Unknown option or number of arguments for CONFIG SET - 'nosuch'"),
            // [failover] detect_ms defaults to 1000.
            ("busy-reply-threshold = 600", "between 1 and 500 ms"),
        ] {
            std::fs::write(&path, format!("[parameters]\n{entry}\n{shards}")).unwrap();
            let refused = ProxyConfig::load(Some(&path)).unwrap_err().to_string();
            assert!(refused.starts_with("[parameters]: ") && refused.contains(error), "{entry}: {refused}");
        }
    }

    #[test]
    fn standalone_mode_fronts_one_shard_without_the_cluster_slot_rule() {
        let shard =
            |slots: &str, port: u16| format!("[[shards]]\nslots = \"{slots}\"\nprimary = \"127.0.0.1:{port}\"\n");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memlog.toml");
        let load = |text: String| {
            std::fs::write(&path, text).unwrap();
            ProxyConfig::load(Some(&path)).map_err(|e| e.to_string())
        };
        assert_eq!(load(shard("0-16383", 1)).unwrap().mode, Mode::Cluster);
        assert_eq!(load(format!("mode = \"standalone\"\n{}", shard("0-16383", 1))).unwrap().mode, Mode::Standalone);
        let two = format!("{}{}", shard("0-8191", 1), shard("8192-16383", 2));
        assert_eq!(load(format!("mode = \"cluster\"\n{two}")).unwrap().shards.len(), 2);
        let refused = load(format!("mode = \"standalone\"\n{two}")).unwrap_err();
        assert!(refused.contains("serves one shard") && refused.contains("has 2 [[shards]]"), "{refused}");
        let refused =
            load(format!("mode = \"standalone\"\ncluster_compat = true\n{}", shard("0-16383", 1))).unwrap_err();
        assert!(refused.contains("cluster_compat"), "{refused}");
        let refused = load(format!("mode = \"sentinel\"\n{}", shard("0-16383", 1))).unwrap_err();
        assert!(refused.contains("sentinel"), "{refused}");
        assert_eq!("standalone".parse::<Mode>(), Ok(Mode::Standalone));
        assert!("Standalone".parse::<Mode>().is_err());
    }
}

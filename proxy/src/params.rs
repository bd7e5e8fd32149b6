//! The parameter group: which Redis parameters an application may change through memlog, how a
//! value is checked (Redis 7.0's parsers and bounds, so errors are Redis's own texts), where a
//! parameter takes effect (the nodes, the proxy, or both), and the group in force. Pure: no
//! I/O. `commands::config` journals a change, `prepare` applies the group to every node, and
//! the session reads what the proxy enforces itself (docs/parameters.md).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

/// Where a parameter takes effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// Set on every Redis node (journaled, applied by node preparation).
    Nodes,
    /// Enforced by the proxy only (`timeout`: on the nodes it would close the proxy's own idle
    /// connections).
    Proxy,
    /// Enforced by the proxy and set on the nodes (`proto-max-bulk-len`: a node must take
    /// every bulk the proxy lets through).
    Both,
}

/// How a value is parsed, as Redis 7.0's `config.c` parses it.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// `yes` / `no`, any case.
    Bool,
    /// An integer as `string2ll` reads it, within the bounds.
    Int { min: i64, max: i64 },
    /// A memory value (`memtoull`: digits and an optional unit b, k, kb, m, mb, g, gb), within
    /// the bounds; `unsigned` for `maxmemory`, whose bounds are those of an unsigned long long.
    Memory { min: i64, unsigned: bool },
    /// One of the names, any case.
    Enum(&'static [&'static str]),
    /// `notify-keyspace-events` flags.
    KeyspaceEvents,
    /// `latency-tracking-info-percentiles`: space-separated doubles in [0, 100].
    Percentiles,
    /// `busy-reply-threshold` / `lua-time-limit`: an integer ≥ 0 for Redis, then memlog's rule
    /// (at least 1, at most half the failover detection time).
    BusyThreshold,
}

#[derive(Clone, Copy)]
struct Spec {
    name: &'static str,
    /// The name the group records it under (an alias records under the current name).
    canonical: &'static str,
    kind: Kind,
    scope: Scope,
}

const I32_MAX: i64 = i32::MAX as i64;
const I32_MIN: i64 = i32::MIN as i64;

const fn node(name: &'static str, kind: Kind) -> Spec {
    Spec { name, canonical: name, kind, scope: Scope::Nodes }
}

const fn alias(name: &'static str, canonical: &'static str, kind: Kind) -> Spec {
    Spec { name, canonical, kind, scope: Scope::Nodes }
}

const fn int(min: i64, max: i64) -> Kind {
    Kind::Int { min, max }
}

const MEMORY: Kind = Kind::Memory { min: 0, unsigned: false };
const COUNT: Kind = int(0, i64::MAX);
const POLICIES: &[&str] = &[
    "volatile-lru",
    "volatile-lfu",
    "volatile-random",
    "volatile-ttl",
    "allkeys-lru",
    "allkeys-lfu",
    "allkeys-random",
    "noeviction",
];

/// The allowlist: every parameter an application may set, with Redis 7.0's parser and bounds
/// (checked against a stock redis-server by `tests/config.rs`).
const ALLOWED: &[Spec] = &[
    // Data-structure encodings.
    node("hash-max-listpack-entries", COUNT),
    alias("hash-max-ziplist-entries", "hash-max-listpack-entries", COUNT),
    node("hash-max-listpack-value", MEMORY),
    alias("hash-max-ziplist-value", "hash-max-listpack-value", MEMORY),
    node("list-max-listpack-size", int(I32_MIN, I32_MAX)),
    alias("list-max-ziplist-size", "list-max-listpack-size", int(I32_MIN, I32_MAX)),
    node("list-compress-depth", int(0, I32_MAX)),
    node("set-max-intset-entries", COUNT),
    node("zset-max-listpack-entries", COUNT),
    alias("zset-max-ziplist-entries", "zset-max-listpack-entries", COUNT),
    node("zset-max-listpack-value", MEMORY),
    alias("zset-max-ziplist-value", "zset-max-listpack-value", MEMORY),
    node("stream-node-max-bytes", MEMORY),
    node("stream-node-max-entries", COUNT),
    node("hll-sparse-max-bytes", MEMORY),
    // Memory and eviction.
    // memlog enforces `maxmemory` itself and the nodes run without one (docs/parameters.md,
    // "Eviction"); the policy also reaches the nodes, whose LFU counters follow it.
    Spec {
        name: "maxmemory",
        canonical: "maxmemory",
        kind: Kind::Memory { min: 0, unsigned: true },
        scope: Scope::Proxy,
    },
    node("maxmemory-policy", Kind::Enum(POLICIES)),
    node("maxmemory-samples", int(1, I32_MAX)),
    node("maxmemory-eviction-tenacity", int(0, 100)),
    node("lfu-log-factor", int(0, I32_MAX)),
    node("lfu-decay-time", int(0, I32_MAX)),
    // Keyspace notifications (the proxy's relay delivers them to subscribers).
    node("notify-keyspace-events", Kind::KeyspaceEvents),
    // Diagnostics.
    node("slowlog-log-slower-than", int(-1, i64::MAX)),
    node("slowlog-max-len", COUNT),
    node("latency-monitor-threshold", COUNT),
    node("latency-tracking", Kind::Bool),
    node("latency-tracking-info-percentiles", Kind::Percentiles),
    // Background work.
    node("hz", int(0, I32_MAX)),
    node("dynamic-hz", Kind::Bool),
    node("active-expire-effort", int(1, 10)),
    node("activerehashing", Kind::Bool),
    node("activedefrag", Kind::Bool),
    node("active-defrag-cycle-min", int(1, 99)),
    node("active-defrag-cycle-max", int(1, 99)),
    node("active-defrag-ignore-bytes", Kind::Memory { min: 1, unsigned: false }),
    node("active-defrag-max-scan-fields", int(1, i64::MAX)),
    node("active-defrag-threshold-lower", int(0, 1000)),
    node("active-defrag-threshold-upper", int(0, 1000)),
    node("lazyfree-lazy-eviction", Kind::Bool),
    node("lazyfree-lazy-expire", Kind::Bool),
    node("lazyfree-lazy-server-del", Kind::Bool),
    node("lazyfree-lazy-user-del", Kind::Bool),
    node("lazyfree-lazy-user-flush", Kind::Bool),
    // Scripts: bounded by the failover detection time (see `Kind::BusyThreshold`).
    node("busy-reply-threshold", Kind::BusyThreshold),
    alias("lua-time-limit", "busy-reply-threshold", Kind::BusyThreshold),
    // Limits the proxy enforces itself.
    Spec {
        name: "proto-max-bulk-len",
        canonical: "proto-max-bulk-len",
        kind: Kind::Memory { min: 1024 * 1024, unsigned: false },
        scope: Scope::Both,
    },
    Spec { name: "timeout", canonical: "timeout", kind: int(0, I32_MAX), scope: Scope::Proxy },
    // The proxy is the endpoint clients track keys at: the table is the proxy's (`tracking`).
    Spec { name: "tracking-table-max-keys", canonical: "tracking-table-max-keys", kind: COUNT, scope: Scope::Proxy },
];

/// Parameters Redis 7.0 refuses to change at run time: refused with its own error.
const IMMUTABLE: &[&str] = &[
    "aclfile",
    "always-show-logo",
    "aof_rewrite_cpulist",
    "appenddirname",
    "appendfilename",
    "bgsave_cpulist",
    "bio_cpulist",
    "cluster-config-file",
    "cluster-enabled",
    "cluster-port",
    "daemonize",
    "databases",
    "disable-thp",
    "enable-debug-command",
    "enable-module-command",
    "enable-protected-configs",
    "io-threads",
    "io-threads-do-reads",
    "logfile",
    "pidfile",
    "rdbchecksum",
    "replicaof",
    "server_cpulist",
    "set-proc-title",
    "slaveof",
    "socket-mark-id",
    "supervised",
    "syslog-enabled",
    "syslog-facility",
    "syslog-ident",
    "tcp-backlog",
    "unixsocket",
    "unixsocketperm",
];

const PERSISTENCE: &str = "persistence is memlog's journal and snapshots";
const REPLICATION: &str = "memlog manages replication and failover";
const TOPOLOGY: &str = "memlog manages the cluster topology";
const SECURITY: &str = "memlog keeps the users and credentials (ACL SETUSER)";
const NODE_CLIENTS: &str = "the nodes' clients are memlog's own connections";
const PROCESS: &str = "memlog runs the Redis nodes";

/// Parameters Redis can change but memlog owns, each with the reason it gives.
const OWNED: &[(&str, &str)] = &[
    ("save", PERSISTENCE),
    ("appendonly", PERSISTENCE),
    ("appendfsync", PERSISTENCE),
    ("dir", PERSISTENCE),
    ("dbfilename", PERSISTENCE),
    ("aof-disable-auto-gc", PERSISTENCE),
    ("aof-load-truncated", PERSISTENCE),
    ("aof-rewrite-incremental-fsync", PERSISTENCE),
    ("aof-timestamp-enabled", PERSISTENCE),
    ("aof-use-rdb-preamble", PERSISTENCE),
    ("auto-aof-rewrite-min-size", PERSISTENCE),
    ("auto-aof-rewrite-percentage", PERSISTENCE),
    ("no-appendfsync-on-rewrite", PERSISTENCE),
    ("rdb-del-sync-files", PERSISTENCE),
    ("rdb-save-incremental-fsync", PERSISTENCE),
    ("rdbcompression", PERSISTENCE),
    ("stop-writes-on-bgsave-error", PERSISTENCE),
    ("masterauth", REPLICATION),
    ("masteruser", REPLICATION),
    ("min-replicas-max-lag", REPLICATION),
    ("min-replicas-to-write", REPLICATION),
    ("min-slaves-max-lag", REPLICATION),
    ("min-slaves-to-write", REPLICATION),
    ("repl-backlog-size", REPLICATION),
    ("repl-backlog-ttl", REPLICATION),
    ("repl-disable-tcp-nodelay", REPLICATION),
    ("repl-diskless-load", REPLICATION),
    ("repl-diskless-sync", REPLICATION),
    ("repl-diskless-sync-delay", REPLICATION),
    ("repl-diskless-sync-max-replicas", REPLICATION),
    ("repl-ping-replica-period", REPLICATION),
    ("repl-ping-slave-period", REPLICATION),
    ("repl-timeout", REPLICATION),
    ("replica-announce-ip", REPLICATION),
    ("replica-announce-port", REPLICATION),
    ("replica-announced", REPLICATION),
    ("replica-ignore-disk-write-errors", REPLICATION),
    ("replica-ignore-maxmemory", REPLICATION),
    ("replica-lazy-flush", REPLICATION),
    ("replica-priority", REPLICATION),
    ("replica-read-only", REPLICATION),
    ("replica-serve-stale-data", REPLICATION),
    ("slave-announce-ip", REPLICATION),
    ("slave-announce-port", REPLICATION),
    ("slave-ignore-maxmemory", REPLICATION),
    ("slave-lazy-flush", REPLICATION),
    ("slave-priority", REPLICATION),
    ("slave-read-only", REPLICATION),
    ("slave-serve-stale-data", REPLICATION),
    ("propagation-error-behavior", REPLICATION),
    ("cluster-allow-pubsubshard-when-down", TOPOLOGY),
    ("cluster-allow-reads-when-down", TOPOLOGY),
    ("cluster-allow-replica-migration", TOPOLOGY),
    ("cluster-announce-bus-port", TOPOLOGY),
    ("cluster-announce-hostname", TOPOLOGY),
    ("cluster-announce-ip", TOPOLOGY),
    ("cluster-announce-port", TOPOLOGY),
    ("cluster-announce-tls-port", TOPOLOGY),
    ("cluster-link-sendbuf-limit", TOPOLOGY),
    ("cluster-migration-barrier", TOPOLOGY),
    ("cluster-node-timeout", TOPOLOGY),
    ("cluster-preferred-endpoint-type", TOPOLOGY),
    ("cluster-replica-no-failover", TOPOLOGY),
    ("cluster-replica-validity-factor", TOPOLOGY),
    ("cluster-require-full-coverage", TOPOLOGY),
    ("cluster-slave-no-failover", TOPOLOGY),
    ("cluster-slave-validity-factor", TOPOLOGY),
    ("requirepass", SECURITY),
    ("acl-pubsub-default", SECURITY),
    ("acllog-max-len", SECURITY),
    ("protected-mode", SECURITY),
    ("sanitize-dump-payload", SECURITY),
    ("tls-auth-clients", SECURITY),
    ("tls-ca-cert-dir", SECURITY),
    ("tls-ca-cert-file", SECURITY),
    ("tls-cert-file", SECURITY),
    ("tls-ciphers", SECURITY),
    ("tls-ciphersuites", SECURITY),
    ("tls-client-cert-file", SECURITY),
    ("tls-client-key-file", SECURITY),
    ("tls-client-key-file-pass", SECURITY),
    ("tls-cluster", SECURITY),
    ("tls-dh-params-file", SECURITY),
    ("tls-key-file", SECURITY),
    ("tls-key-file-pass", SECURITY),
    ("tls-port", SECURITY),
    ("tls-prefer-server-ciphers", SECURITY),
    ("tls-protocols", SECURITY),
    ("tls-replication", SECURITY),
    ("tls-session-cache-size", SECURITY),
    ("tls-session-cache-timeout", SECURITY),
    ("tls-session-caching", SECURITY),
    ("maxclients", NODE_CLIENTS),
    ("maxmemory-clients", NODE_CLIENTS),
    ("client-output-buffer-limit", NODE_CLIENTS),
    ("client-query-buffer-limit", NODE_CLIENTS),
    ("port", PROCESS),
    ("bind", PROCESS),
    ("bind-source-addr", PROCESS),
    ("tcp-keepalive", PROCESS),
    ("loglevel", PROCESS),
    ("crash-log-enabled", PROCESS),
    ("crash-memcheck-enabled", PROCESS),
    ("jemalloc-bg-thread", PROCESS),
    ("ignore-warnings", PROCESS),
    ("oom-score-adj", PROCESS),
    ("oom-score-adj-values", PROCESS),
    ("proc-title-template", PROCESS),
    ("shutdown-on-sigint", PROCESS),
    ("shutdown-on-sigterm", PROCESS),
    ("shutdown-timeout", PROCESS),
];

/// Parameters whose value the proxy reports as empty in `CONFIG GET`: the nodes' credentials.
pub(crate) const HIDDEN: &[&str] =
    &["requirepass", "masterauth", "masteruser", "tls-key-file-pass", "tls-client-key-file-pass"];

/// Why a `CONFIG SET` (or a `[parameters]` entry) is refused; `Display` is the Redis error text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ParamError {
    #[error("ERR wrong number of arguments for 'config|set' command")]
    Arity,
    #[error("ERR syntax error")]
    Syntax,
    #[error("ERR Unknown option or number of arguments for CONFIG SET - '{0}'")]
    Unknown(String),
    #[error("ERR CONFIG SET failed (possibly related to argument '{name}') - {reason}")]
    Refused { name: String, reason: String },
}

fn refused(name: &str, reason: impl Into<String>) -> ParamError {
    ParamError::Refused { name: name.to_string(), reason: reason.into() }
}

/// What memlog's own rules need to know.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rules {
    /// The failover detection time: a node busy longer is failed over.
    pub(crate) detect_ms: u64,
}

impl Rules {
    /// The largest `busy-reply-threshold` memlog accepts: half the detection time, so a node
    /// running a long script starts answering `-BUSY` (which the controller recognizes) while
    /// at least half the detection window is left.
    pub(crate) fn busy_limit_ms(&self) -> i64 {
        i64::try_from(self.detect_ms / 2).unwrap_or(i64::MAX)
    }
}

/// One accepted `name value` pair: the name as Redis spells it, the value as given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Setting {
    pub(crate) name: &'static str,
    pub(crate) canonical: &'static str,
    pub(crate) value: String,
    pub(crate) scope: Scope,
}

fn spec(name: &str) -> Option<&'static Spec> {
    ALLOWED.iter().find(|s| s.name.eq_ignore_ascii_case(name))
}

/// Checks the `name value …` pairs of a `CONFIG SET` as Redis 7.0 does — names first (unknown,
/// immutable, memlog's, duplicate), in order, then values, in order — and returns them, or the
/// first error. `args` are the command's arguments after `CONFIG SET`.
pub(crate) fn check_set(args: &[&[u8]], rules: Rules) -> Result<Vec<Setting>, ParamError> {
    if args.len() < 2 {
        return Err(ParamError::Arity);
    }
    if args.len() % 2 != 0 {
        return Err(ParamError::Syntax);
    }
    let mut specs: Vec<(&'static Spec, &[u8])> = Vec::with_capacity(args.len() / 2);
    for pair in args.chunks(2) {
        let name = String::from_utf8_lossy(pair[0]).into_owned();
        let lower = name.to_ascii_lowercase();
        let Some(found) = spec(&lower) else {
            return Err(refusal(&name, &lower));
        };
        if specs.iter().any(|(s, _)| s.name == found.name) {
            return Err(refused(&name, "duplicate parameter"));
        }
        specs.push((found, pair[1]));
    }
    specs
        .into_iter()
        .map(|(spec, value)| {
            let value = std::str::from_utf8(value).map_err(|_| refused(spec.name, value_error(spec.kind)))?;
            check_value(spec, value, rules)?;
            Ok(Setting { name: spec.name, canonical: spec.canonical, value: value.to_string(), scope: spec.scope })
        })
        .collect()
}

/// The error for a name that is not on the allowlist: Redis's for an unknown or immutable
/// parameter, memlog's (naming it and why) for one memlog owns.
fn refusal(name: &str, lower: &str) -> ParamError {
    if IMMUTABLE.contains(&lower) {
        return refused(name, "can't set immutable config");
    }
    match OWNED.iter().find(|(owned, _)| *owned == lower) {
        Some((_, why)) => refused(name, format!("memlog: '{lower}' cannot be changed through memlog: {why}")),
        None => ParamError::Unknown(name.to_string()),
    }
}

/// What Redis says about a value that does not parse at all.
fn value_error(kind: Kind) -> String {
    match kind {
        Kind::Bool => "argument must be 'yes' or 'no'".into(),
        Kind::Int { .. } | Kind::BusyThreshold => "argument couldn't be parsed into an integer".into(),
        Kind::Memory { .. } => "argument must be a memory value".into(),
        Kind::Enum(names) => format!("argument(s) must be one of the following: {}", names.join(", ")),
        Kind::KeyspaceEvents => "Invalid event class character. Use 'Ag$lshzxeKEtmdn'.".into(),
        Kind::Percentiles => "Invalid latency-tracking-info-percentiles parameters".into(),
    }
}

fn out_of_range(min: impl std::fmt::Display, max: impl std::fmt::Display) -> String {
    format!("argument must be between {min} and {max} inclusive")
}

/// The longest value memlog keeps: every allowed parameter's meaningful values are far shorter,
/// and the group is stored whole in the metadata store and sent to every node.
const MAX_VALUE_LEN: usize = 4096;

fn check_value(spec: &Spec, value: &str, rules: Rules) -> Result<(), ParamError> {
    let bad = |reason: String| Err(refused(spec.name, reason));
    if value.len() > MAX_VALUE_LEN {
        return bad(format!("memlog: a value longer than {MAX_VALUE_LEN} bytes is not kept"));
    }
    match spec.kind {
        Kind::Bool if value.eq_ignore_ascii_case("yes") || value.eq_ignore_ascii_case("no") => Ok(()),
        Kind::Enum(names) if names.iter().any(|n| n.eq_ignore_ascii_case(value)) => Ok(()),
        Kind::Bool | Kind::Enum(_) => bad(value_error(spec.kind)),
        Kind::Int { min, max } => match redis_int(value) {
            None => bad(value_error(spec.kind)),
            Some(n) if n < min || n > max => bad(out_of_range(min, max)),
            Some(_) => Ok(()),
        },
        Kind::BusyThreshold => match redis_int(value) {
            None => bad(value_error(spec.kind)),
            Some(n) if n < 0 => bad(out_of_range(0, i64::MAX)),
            Some(n) if n < 1 || n > rules.busy_limit_ms() => bad(format!(
                "memlog: must be between 1 and {} ms, half the failover detection time (failover.detect_ms = {}): \
                 a node running a script longer than that without answering -BUSY would be failed over",
                rules.busy_limit_ms(),
                rules.detect_ms
            )),
            Some(_) => Ok(()),
        },
        Kind::Memory { min, unsigned } => match memory_value(value) {
            None => bad(value_error(spec.kind)),
            Some(_) if unsigned => Ok(()),
            // Redis reads the unsigned result as a long long before the bounds check.
            Some(n) if (n as i64) < min => bad(out_of_range(min, i64::MAX)),
            Some(_) => Ok(()),
        },
        Kind::KeyspaceEvents if value.bytes().all(|c| b"Ag$lshzxeKEtmdn".contains(&c)) => Ok(()),
        Kind::KeyspaceEvents => bad(value_error(spec.kind)),
        Kind::Percentiles => check_percentiles(value).map_err(|reason| refused(spec.name, reason)),
    }
}

/// An integer as Redis's `string2ll` reads it: optional `-`, digits, no leading zero (but
/// `0`), no `-0`, no `+`, no spaces, within i64.
fn redis_int(text: &str) -> Option<i64> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    if digits.starts_with('0') && (digits.len() > 1 || text.starts_with('-')) {
        return None;
    }
    text.parse().ok()
}

/// A memory value as Redis 7.0's `memtoull` reads it: leading digits (none reads as 0),
/// saturating at u64::MAX as `strtoull` does, times the unit, wrapping as C does.
fn memory_value(text: &str) -> Option<u64> {
    let split = text.bytes().position(|c| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let multiplier: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" => 1000,
        "kb" => 1024,
        "m" => 1000 * 1000,
        "mb" => 1024 * 1024,
        "g" => 1000 * 1000 * 1000,
        "gb" => 1024 * 1024 * 1024,
        _ => return None,
    };
    let number = if digits.is_empty() { 0 } else { digits.parse::<u64>().unwrap_or(u64::MAX) };
    Some(number.wrapping_mul(multiplier))
}

/// `latency-tracking-info-percentiles`: empty, or doubles separated by single spaces.
fn check_percentiles(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Ok(());
    }
    for token in value.split(' ') {
        let lower = token.to_ascii_lowercase();
        let number: f64 = match lower.trim_start_matches(['+', '-']) {
            "inf" | "infinity" => f64::INFINITY,
            "nan" => return Err(value_error(Kind::Percentiles)),
            _ => token.parse().map_err(|_| value_error(Kind::Percentiles))?,
        };
        if !(0.0..=100.0).contains(&number) {
            return Err("latency-tracking-info-percentiles parameters should sit between [0.0,100.0]".into());
        }
    }
    Ok(())
}

/// The group in force: each parameter set through memlog (by its current name) and its value,
/// as given.
pub(crate) type Group = BTreeMap<String, String>;

/// Checks a whole group (`[parameters]`, `memlog up --param`, the metadata store) with the
/// same table as `CONFIG SET`; returns it keyed by current names.
pub(crate) fn check_group(entries: &BTreeMap<String, String>, rules: Rules) -> Result<Group, ParamError> {
    let mut group = Group::new();
    for (name, value) in entries {
        let settings = check_set(&[name.as_bytes(), value.as_bytes()], rules)?;
        for s in settings {
            group.insert(s.canonical.to_string(), s.value);
        }
    }
    Ok(group)
}

/// The scope of a parameter of the group (by its current name).
pub(crate) fn scope_of(canonical: &str) -> Option<Scope> {
    spec(canonical).map(|s| s.scope)
}

/// What a shard over memlog's `maxmemory` does (Redis's `maxmemory-policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Eviction {
    /// `noeviction`: commands that may add data are refused with `-OOM`.
    Refuse,
    /// Evict keys — only those with an expiry (`volatile-*`) or any (`allkeys-*`) — chosen by `rank`.
    Evict { volatile_only: bool, rank: Rank },
}

/// Which of the sampled keys goes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rank {
    /// The longest idle (`OBJECT IDLETIME`).
    Lru,
    /// The least frequently used (`OBJECT FREQ`).
    Lfu,
    /// The nearest expiry (`PTTL`).
    Ttl,
    /// Any.
    Random,
}

/// The group as it is shared: the proxy reads it, node preparation applies it, a change
/// replaces it and bumps the generation (so every node is prepared again).
#[derive(Debug, Default)]
pub(crate) struct LiveGroup {
    group: ArcSwap<Group>,
    generation: AtomicU64,
}

impl LiveGroup {
    pub(crate) fn new(group: Group) -> Arc<LiveGroup> {
        Arc::new(LiveGroup { group: ArcSwap::from_pointee(group), generation: AtomicU64::new(1) })
    }

    pub(crate) fn get(&self) -> Arc<Group> {
        self.group.load_full()
    }

    pub(crate) fn replace(&self, group: Group) {
        self.group.store(Arc::new(group));
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Changes with every replacement.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// `CONFIG SET` arguments for a node: every parameter of the group the nodes take, or
    /// `None` when there is none.
    pub(crate) fn node_command(&self) -> Option<Vec<String>> {
        let group = self.get();
        let mut args = vec!["CONFIG".to_string(), "SET".to_string()];
        for (name, value) in group.iter() {
            if scope_of(name).is_some_and(|scope| scope != Scope::Proxy) {
                args.push(name.clone());
                args.push(value.clone());
            }
        }
        (args.len() > 2).then_some(args)
    }

    /// The proxy's `timeout`: idle clients are closed after it (`None`: never).
    pub(crate) fn client_timeout(&self) -> Option<std::time::Duration> {
        let seconds: u64 = self.get().get("timeout")?.parse().ok()?;
        (seconds > 0).then(|| std::time::Duration::from_secs(seconds))
    }

    /// memlog's `maxmemory` for each shard (0: no limit) and what its evictor does at the limit.
    pub(crate) fn memory_limit(&self) -> (u64, Eviction) {
        let group = self.get();
        let limit = group.get("maxmemory").and_then(|v| memory_value(v)).unwrap_or(0);
        let policy = group.get("maxmemory-policy").map_or("noeviction", String::as_str).to_ascii_lowercase();
        let Some((keys, rank)) = policy.split_once('-') else { return (limit, Eviction::Refuse) };
        let rank = match rank {
            "lru" => Rank::Lru,
            "lfu" => Rank::Lfu,
            "ttl" => Rank::Ttl,
            "random" => Rank::Random,
            _ => return (limit, Eviction::Refuse),
        };
        (limit, Eviction::Evict { volatile_only: keys == "volatile", rank })
    }

    /// The proxy's `tracking-table-max-keys` (0: no limit; Redis's default is 1,000,000).
    pub(crate) fn tracking_max_keys(&self) -> u64 {
        self.get().get("tracking-table-max-keys").and_then(|v| v.parse().ok()).unwrap_or(1_000_000)
    }

    /// The proxy's `proto-max-bulk-len`, or `default` when the group does not set it.
    pub(crate) fn max_bulk_len(&self, default: usize) -> usize {
        let group = self.get();
        let Some(value) = group.get("proto-max-bulk-len") else { return default };
        memory_value(value).and_then(|n| usize::try_from(n).ok()).unwrap_or(default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: Rules = Rules { detect_ms: 1000 };

    fn set(args: &[&str]) -> Result<Vec<Setting>, String> {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        check_set(&args, RULES).map_err(|e| e.to_string())
    }

    #[test]
    fn names_are_checked_before_values_in_order() {
        assert_eq!(set(&["hz"]).unwrap_err(), "ERR wrong number of arguments for 'config|set' command");
        assert_eq!(set(&["hz", "10", "foo"]).unwrap_err(), "ERR syntax error");
        assert_eq!(
            set(&["hz", "abc", "foo", "1"]).unwrap_err(),
            "ERR Unknown option or number of arguments for CONFIG SET - 'foo'"
        );
        assert_eq!(
            set(&["hz", "abc", "daemonize", "yes"]).unwrap_err(),
            "ERR CONFIG SET failed (possibly related to argument 'daemonize') - can't set immutable config"
        );
        assert_eq!(
            set(&["hz", "10", "HZ", "11"]).unwrap_err(),
            "ERR CONFIG SET failed (possibly related to argument 'HZ') - duplicate parameter"
        );
        assert!(set(&["save", ""]).unwrap_err().contains("'save' cannot be changed through memlog"));
        assert!(set(&["lua-time-limit", "10", "busy-reply-threshold", "11"]).is_ok());
    }

    #[test]
    fn values_parse_as_redis_does() {
        for ok in ["0", "100", "1kb", "1K", "", "kb", "01", "18446744073709551616", "17179869184gb"] {
            assert!(set(&["maxmemory", ok]).is_ok(), "{ok}");
        }
        for bad in [" 1", "+1", "1 kb", "1.0", "0x10", "-1"] {
            assert!(set(&["maxmemory", bad]).unwrap_err().ends_with("argument must be a memory value"), "{bad}");
        }
        assert!(set(&["stream-node-max-bytes", "18446744073709551615"])
            .unwrap_err()
            .ends_with("argument must be between 0 and 9223372036854775807 inclusive"));
        for bad in ["", " 1", "-0", "1 ", "00", "+1", "10.5"] {
            assert!(set(&["hz", bad]).unwrap_err().ends_with("couldn't be parsed into an integer"), "{bad}");
        }
        assert!(set(&["hz", "-1"]).unwrap_err().ends_with("between 0 and 2147483647 inclusive"));
        assert!(set(&["list-max-listpack-size", "-6"]).is_ok());
        assert!(set(&["dynamic-hz", "YES"]).is_ok());
        assert!(set(&["dynamic-hz", "1"]).unwrap_err().ends_with("argument must be 'yes' or 'no'"));
        assert!(set(&["maxmemory-policy", "ALLKEYS-LRU"]).is_ok());
        assert!(set(&["maxmemory-policy", "allkeys-random"]).is_ok());
        assert!(set(&["maxmemory-policy", "lru"]).unwrap_err().ends_with("allkeys-random, noeviction"));
        assert!(set(&["notify-keyspace-events", "KEA"]).is_ok());
        assert!(set(&["notify-keyspace-events", "kea"]).unwrap_err().ends_with("Use 'Ag$lshzxeKEtmdn'."));
        for ok in ["", "50 99", "100", "99.99999", "1e2"] {
            assert!(set(&["latency-tracking-info-percentiles", ok]).is_ok(), "{ok}");
        }
        for bad in [" ", "50,99", "50  99", "abc", "nan"] {
            assert!(
                set(&["latency-tracking-info-percentiles", bad])
                    .unwrap_err()
                    .ends_with("Invalid latency-tracking-info-percentiles parameters"),
                "{bad}"
            );
        }
        assert!(set(&["latency-tracking-info-percentiles", "inf"]).unwrap_err().ends_with("[0.0,100.0]"));
        let long = "A".repeat(MAX_VALUE_LEN + 1);
        assert!(set(&["notify-keyspace-events", &long]).unwrap_err().contains("longer than 4096 bytes"));
    }

    #[test]
    fn the_memory_limit_and_policy_come_from_the_group() {
        let live = |pairs: &[(&str, &str)]| {
            let entries = pairs.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
            LiveGroup::new(check_group(&entries, RULES).unwrap()).memory_limit()
        };
        assert_eq!(live(&[("maxmemory", "2mb")]), (2 * 1024 * 1024, Eviction::Refuse));
        let lru = Eviction::Evict { volatile_only: false, rank: Rank::Lru };
        assert_eq!(live(&[("maxmemory", "1k"), ("maxmemory-policy", "ALLKEYS-LRU")]), (1000, lru));
        let ttl = Eviction::Evict { volatile_only: true, rank: Rank::Ttl };
        assert_eq!(live(&[("maxmemory", "1gb"), ("maxmemory-policy", "volatile-ttl")]), (1 << 30, ttl));
        let random = Eviction::Evict { volatile_only: false, rank: Rank::Random };
        assert_eq!(live(&[("maxmemory-policy", "allkeys-random")]), (0, random));
    }

    #[test]
    fn busy_threshold_stays_below_half_the_detection_time() {
        assert!(set(&["busy-reply-threshold", "500"]).is_ok());
        assert!(set(&["busy-reply-threshold", "501"]).unwrap_err().contains("between 1 and 500 ms"));
        assert!(set(&["lua-time-limit", "0"]).unwrap_err().contains("between 1 and 500 ms"));
        assert!(set(&["busy-reply-threshold", "-1"])
            .unwrap_err()
            .ends_with("between 0 and 9223372036854775807 inclusive"));
    }

    #[test]
    fn groups_record_current_names_and_node_commands_leave_out_proxy_parameters() {
        let entries = BTreeMap::from([
            ("hash-max-ziplist-entries".to_string(), "64".to_string()),
            ("timeout".to_string(), "5".to_string()),
        ]);
        let group = check_group(&entries, RULES).unwrap();
        assert_eq!(group.get("hash-max-listpack-entries").map(String::as_str), Some("64"));
        let live = LiveGroup::new(group);
        assert_eq!(live.node_command().unwrap(), ["CONFIG", "SET", "hash-max-listpack-entries", "64"]);
        assert_eq!(live.client_timeout(), Some(std::time::Duration::from_secs(5)));
        assert_eq!(live.memory_limit(), (0, Eviction::Refuse));
        let before = live.generation();
        live.replace(Group::new());
        assert!(live.generation() > before && live.node_command().is_none());
    }
}

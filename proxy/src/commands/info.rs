//! INFO, with every section and field of Redis 7.0's (`genRedisInfoString`) in its order, and
//! values that describe the endpoint as a whole:
//! - `server`, `clients`, `cpu`, `commandstats`, `errorstats`, `latencystats`: the proxy's own
//!   (its process, port, run id, client table, and what it counted where replies are handed
//!   to clients);
//! - `memory`: the shards' primaries summed, ratios and human forms recomputed from the sums;
//! - `stats`: the proxy's counters for what it serves (connections, commands, traffic, errors,
//!   pub/sub), the primaries' sums for what the nodes do (hits, misses, expiries, evictions);
//! - `persistence`: the journal (`aof_enabled` when every write is journaled) and the
//!   snapshots (`rdb_*`); fork and copy-on-write figures are 0, as memlog forks nothing;
//! - `replication`: the endpoint is a primary; its replicas are the shards' replicas that
//!   answer, their offsets the journal positions they applied;
//! - `keyspace`: `db0` (a standalone endpoint: every non-empty `dbN`) summed over the primaries,
//!   without memlog's own key.
//!
//! `INFO memlog` adds the proxy's own section (version, shards), which no default set includes.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::Ordering;

use bytes::Bytes;
use redis_protocol::resp2::types::BytesFrame;

use super::keyspace::{call, deferred, integer};
use crate::backend::BackendConn;
use crate::config::Mode;
use crate::context::ClientCtx;
use crate::keys::LSN_KEY;
use crate::proxy::Proxy;
use crate::replies::Pending;
use crate::resp::{reply, Proto, Request};
use crate::stats::unix_seconds;

/// Redis's default sections (`genInfoSectionDict`).
const DEFAULT_SECTIONS: &[&str] = &[
    "server",
    "clients",
    "memory",
    "persistence",
    "stats",
    "replication",
    "cpu",
    "module_list",
    "errorstats",
    "cluster",
    "keyspace",
];
/// The sections read from the primaries.
const NODE_SECTIONS: &[&str] = &["server", "memory", "stats", "keyspace"];
/// `latency-tracking-info-percentiles`' default.
const PERCENTILES: &[f64] = &[50.0, 99.0, 99.9];

pub(crate) fn run(d: &mut ClientCtx, request: &Request) -> Pending {
    let proto = d.proto();
    let proxy = d.proxy.clone();
    // A refused shard's node is not read (its section `memlog` says why it does not serve).
    let serving = proxy.shards.iter().filter(|s| s.refusal().is_none());
    let conns: Vec<BackendConn> = serving.map(|s| s.read_conn(Proto::Resp2, d.client.id).clone()).collect();
    let selection = Selection::parse(&request.args[1..]);
    deferred(async move {
        let nodes = if NODE_SECTIONS.iter().any(|s| selection.wants(s)) { node_info(&conns).await? } else { vec![] };
        let text = render(&proxy, &selection, &nodes);
        Ok(reply(proto, |w| {
            w.verbatim(&text);
        }))
    })
}

/// Which sections a request asks for.
struct Selection {
    sections: BTreeSet<String>,
    all: bool,
}

impl Selection {
    fn parse(args: &[Bytes]) -> Selection {
        let mut sections = BTreeSet::new();
        let mut all = false;
        if args.is_empty() {
            sections.extend(DEFAULT_SECTIONS.iter().map(|s| s.to_string()));
        }
        for arg in args {
            let arg = String::from_utf8_lossy(arg).to_ascii_lowercase();
            match arg.as_str() {
                "default" => sections.extend(DEFAULT_SECTIONS.iter().map(|s| s.to_string())),
                // memlog loads no modules, so `everything` adds nothing to `all`.
                "all" | "everything" => all = true,
                _ => {
                    sections.insert(arg);
                }
            }
        }
        Selection { sections, all }
    }

    fn wants(&self, section: &str) -> bool {
        (self.all && section != "memlog") || self.sections.contains(section)
    }
}

/// One node's INFO, by section name (lower case), each a list of fields in order.
type NodeInfo = HashMap<String, Vec<(String, String)>>;

async fn node_info(conns: &[BackendConn]) -> Result<Vec<(NodeInfo, i64)>, String> {
    let mut nodes = Vec::with_capacity(conns.len());
    for conn in conns {
        let mut args: Vec<&[u8]> = vec![b"INFO"];
        args.extend(NODE_SECTIONS.iter().map(|s| s.as_bytes()));
        let (info, internal) = tokio::join!(call(conn, &args), call(conn, &[b"EXISTS", LSN_KEY]));
        let BytesFrame::BulkString(text) = info? else { return Err("ERR memlog: unexpected INFO reply".into()) };
        nodes.push((parse_info(&String::from_utf8_lossy(&text)), integer(&internal?)?));
    }
    Ok(nodes)
}

fn parse_info(text: &str) -> NodeInfo {
    let mut info = NodeInfo::new();
    let mut section = String::new();
    for line in text.lines() {
        if let Some(name) = line.strip_prefix("# ") {
            section = name.trim().to_ascii_lowercase();
            info.entry(section.clone()).or_default();
        } else if let Some((field, value)) = line.split_once(':') {
            info.entry(section.clone()).or_default().push((field.to_string(), value.trim_end().to_string()));
        }
    }
    info
}

/// A section's text under construction.
#[derive(Default)]
struct Section(String);

impl Section {
    fn field(&mut self, name: &str, value: impl std::fmt::Display) -> &mut Self {
        self.0.push_str(&format!("{name}:{value}\r\n"));
        self
    }
}

fn render(proxy: &Proxy, selection: &Selection, nodes: &[(NodeInfo, i64)]) -> String {
    type Render = fn(&Proxy, &[(NodeInfo, i64)], &mut Section);
    let sections: [(&str, &str, Render); 14] = [
        ("server", "Server", server),
        ("clients", "Clients", clients),
        ("memory", "Memory", memory),
        ("persistence", "Persistence", persistence),
        ("stats", "Stats", stats),
        ("replication", "Replication", replication),
        ("cpu", "CPU", cpu),
        ("module_list", "Modules", |_, _, _| {}),
        ("commandstats", "Commandstats", commandstats),
        ("errorstats", "Errorstats", errorstats),
        ("latencystats", "Latencystats", latencystats),
        ("cluster", "Cluster", |proxy, _, s| {
            s.field("cluster_enabled", u8::from(proxy.cfg.mode == Mode::Cluster));
        }),
        ("keyspace", "Keyspace", keyspace),
        ("memlog", "Memlog", memlog),
    ];
    let mut parts = Vec::new();
    for (name, title, render) in sections {
        let wanted = selection.wants(name) || (name == "module_list" && selection.wants("modules"));
        if wanted {
            let mut section = Section(format!("# {title}\r\n"));
            render(proxy, nodes, &mut section);
            parts.push(section.0);
        }
    }
    parts.join("\r\n")
}

/// The fields of `section` as the first primary lists them, each combined over all primaries:
/// `proxy_value` gives the proxy's own value for a field it answers itself; otherwise integers
/// are summed, percentages averaged, other text taken from the first primary, and `*_human`
/// and ratio fields recomputed from the combined values.
fn combined(
    nodes: &[(NodeInfo, i64)],
    section: &str,
    proxy_value: impl Fn(&str) -> Option<String>,
) -> Vec<(String, String)> {
    let lists: Vec<&Vec<(String, String)>> = nodes.iter().filter_map(|(info, _)| info.get(section)).collect();
    let Some(first) = lists.first() else { return vec![] };
    let mut out: Vec<(String, String)> = Vec::with_capacity(first.len());
    for (name, first_value) in first.iter() {
        let values: Vec<&str> =
            lists.iter().filter_map(|l| l.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())).collect();
        let value = if let Some(value) = proxy_value(name) {
            value
        } else if let Some(ints) = values.iter().map(|v| integer_text(v)).collect::<Option<Vec<_>>>() {
            ints.iter().sum::<i64>().to_string()
        } else if let Some(floats) =
            values.iter().map(|v| v.contains('.').then(|| v.parse::<f64>().ok()).flatten()).collect::<Option<Vec<_>>>()
        {
            let sum: f64 = floats.iter().sum();
            format!("{:.2}", if name.contains("perc") { sum / floats.len() as f64 } else { sum })
        } else {
            first_value.clone()
        };
        out.push((name.clone(), value));
    }
    out
}

/// A number written as Redis writes one (`0`, `-1`, `1234`), not text of digits such as
/// `redis_git_sha1:00000000`.
fn integer_text(value: &str) -> Option<i64> {
    value.parse::<i64>().ok().filter(|n| n.to_string() == value)
}

fn get(fields: &[(String, String)], name: &str) -> f64 {
    fields.iter().find(|(n, _)| n == name).and_then(|(_, v)| v.parse().ok()).unwrap_or(0.0)
}

fn ratio(numerator: f64, denominator: f64) -> f64 {
    if denominator > 0.0 {
        numerator / denominator
    } else {
        0.0
    }
}

/// Redis's `bytesToHuman`.
fn human(bytes: f64) -> String {
    const UNITS: [(&str, f64); 5] = [
        ("P", 1024.0 * 1024.0 * 1024.0 * 1024.0 * 1024.0),
        ("T", 1024.0 * 1024.0 * 1024.0 * 1024.0),
        ("G", 1024.0 * 1024.0 * 1024.0),
        ("M", 1024.0 * 1024.0),
        ("K", 1024.0),
    ];
    if bytes < 1024.0 {
        return format!("{}B", crate::units::whole(bytes));
    }
    for (unit, size) in UNITS {
        if bytes >= size && bytes < size * 1024.0 {
            return format!("{:.2}{unit}", bytes / size);
        }
    }
    format!("{}B", crate::units::whole(bytes))
}

fn server(proxy: &Proxy, nodes: &[(NodeInfo, i64)], s: &mut Section) {
    let uptime = proxy.started.elapsed().as_secs();
    let now_us = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_micros());
    let read = |path: &str| std::fs::read_to_string(path).map(|s| s.trim().to_string()).ok();
    let os = format!(
        "{} {} {}",
        read("/proc/sys/kernel/ostype").unwrap_or_else(|| std::env::consts::OS.to_string()),
        read("/proc/sys/kernel/osrelease").unwrap_or_default(),
        std::env::consts::ARCH
    );
    let executable = std::env::current_exe().map(|p| p.display().to_string()).unwrap_or_default();
    let config_file = proxy.cfg.config_file.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
    let own = |name: &str| -> Option<String> {
        Some(match name {
            "redis_version" => proxy.redis_version.clone(),
            "redis_mode" => proxy.cfg.mode.redis_mode().into(),
            "os" => os.clone(),
            "arch_bits" => usize::BITS.to_string(),
            "process_id" => std::process::id().to_string(),
            "process_supervised" => "no".into(),
            "run_id" => proxy.run_id.clone(),
            "tcp_port" => proxy.announce_port.to_string(),
            "server_time_usec" => now_us.to_string(),
            "uptime_in_seconds" => uptime.to_string(),
            "uptime_in_days" => (uptime / 86400).to_string(),
            "executable" => executable.clone(),
            "config_file" => config_file.clone(),
            "io_threads_active" => "0".into(),
            // The nodes' own build, clock and event loop: the first primary's.
            _ => return None,
        })
    };
    let first_only: Vec<(NodeInfo, i64)> = nodes.iter().take(1).cloned().collect();
    for (name, value) in combined(&first_only, "server", own) {
        // Only while the node shuts down; the endpoint does not.
        if name != "shutdown_in_milliseconds" {
            s.field(&name, value);
        }
    }
}

fn clients(proxy: &Proxy, _: &[(NodeInfo, i64)], s: &mut Section) {
    let blocked = proxy.clients.iter().filter(|c| c.blocked.load(Ordering::Relaxed)).count();
    s.field("connected_clients", proxy.clients.len())
        .field("cluster_connections", 0)
        .field("maxclients", proxy.cfg.maxclients)
        .field("client_recent_max_input_buffer", 0)
        .field("client_recent_max_output_buffer", 0)
        .field("blocked_clients", blocked)
        .field("tracking_clients", proxy.tracker.totals().0)
        .field("clients_in_timeout_table", 0);
}

fn memory(proxy: &Proxy, nodes: &[(NodeInfo, i64)], s: &mut Section) {
    let mut fields = combined(nodes, "memory", |_| None);
    // `total_system_memory` is each machine's: the largest, not a sum.
    let system = nodes
        .iter()
        .filter_map(|(info, _)| info.get("memory"))
        .map(|f| get(f, "total_system_memory"))
        .fold(0.0, f64::max);
    let snapshot = fields.clone();
    let v = |name: &str| get(&snapshot, name);
    for (name, value) in fields.iter_mut() {
        let recomputed = match name.as_str() {
            "total_system_memory" => format!("{}", crate::units::whole(system)),
            // memlog's limit, which applies to each shard's primary (the nodes run without one).
            "maxmemory" => proxy.parameters.live.memory_limit().0.to_string(),
            "maxmemory_human" => human(proxy.parameters.live.memory_limit().0 as f64),
            "total_system_memory_human" => human(system),
            "used_memory_peak_perc" => format!("{:.2}%", ratio(v("used_memory") * 100.0, v("used_memory_peak"))),
            "used_memory_dataset_perc" => {
                format!("{:.2}%", ratio(v("used_memory_dataset") * 100.0, v("used_memory") - v("used_memory_startup")))
            }
            "allocator_frag_ratio" => format!("{:.2}", ratio(v("allocator_active"), v("allocator_allocated"))),
            "allocator_rss_ratio" => format!("{:.2}", ratio(v("allocator_resident"), v("allocator_active"))),
            "rss_overhead_ratio" => format!("{:.2}", ratio(v("used_memory_rss"), v("allocator_resident"))),
            "mem_fragmentation_ratio" => format!("{:.2}", ratio(v("used_memory_rss"), v("used_memory"))),
            // Scripts and functions are loaded on every node: one node's count is the cluster's.
            "number_of_cached_scripts" | "number_of_functions" | "number_of_libraries" => {
                let first = nodes.first().and_then(|(info, _)| info.get("memory"));
                format!("{}", crate::units::whole(first.map_or(0.0, |f| get(f, name))))
            }
            human_field if human_field.ends_with("_human") => human(v(human_field.trim_end_matches("_human"))),
            _ => continue,
        };
        *value = recomputed;
    }
    for (name, value) in fields {
        s.field(&name, value);
    }
}

/// Whether every write goes through the journal (the endpoint's append-only file).
fn journaled(proxy: &Proxy) -> bool {
    proxy.cfg.journal.is_some()
}

fn persistence(proxy: &Proxy, _: &[(NodeInfo, i64)], s: &mut Section) {
    let snapshots: Vec<_> = proxy.shards.iter().filter_map(|shard| shard.snapshots.clone()).collect();
    let activity = |f: &dyn Fn(&crate::snapshot::ShardSnapshots) -> u64| snapshots.iter().map(|s| f(s)).max();
    let running_since = activity(&|s| s.activity.running_since_unix_s.load(Ordering::Relaxed)).unwrap_or(0);
    let last_save = activity(&|s| s.activity.last_unix_s.load(Ordering::Relaxed)).filter(|t| *t > 0);
    let started_unix = unix_seconds().saturating_sub(proxy.started.elapsed().as_secs());
    let failed = snapshots.iter().any(|s| s.activity.last_failed.load(Ordering::Relaxed));
    let last_duration =
        snapshots.iter().map(|s| s.activity.last_duration_s.load(Ordering::Relaxed)).max().unwrap_or(-1);
    let saves: u64 = snapshots.iter().map(|s| s.activity.saves.load(Ordering::Relaxed)).sum();
    // Journal entries applied beyond the newest snapshot of each shard.
    let changes: u64 = proxy
        .shards
        .iter()
        .map(|shard| {
            let applied = shard.status.view().primary.lsn.unwrap_or(0);
            let snapshot = shard.snapshots.as_ref().map_or(0, |s| s.activity.last_lsn.load(Ordering::Relaxed));
            applied.saturating_sub(snapshot)
        })
        .sum();
    let ok = |failed: bool| if failed { "err" } else { "ok" };
    s.field("loading", 0)
        .field("async_loading", 0)
        .field("current_cow_peak", 0)
        .field("current_cow_size", 0)
        .field("current_cow_size_age", 0)
        .field("current_fork_perc", "0.00")
        .field("current_save_keys_processed", 0)
        .field("current_save_keys_total", 0)
        .field("rdb_changes_since_last_save", changes)
        .field("rdb_bgsave_in_progress", u8::from(running_since > 0))
        .field("rdb_last_save_time", last_save.unwrap_or(started_unix))
        .field("rdb_last_bgsave_status", ok(failed))
        .field("rdb_last_bgsave_time_sec", last_duration)
        .field(
            "rdb_current_bgsave_time_sec",
            if running_since > 0 { unix_seconds().saturating_sub(running_since) as i64 } else { -1 },
        )
        .field("rdb_saves", saves)
        .field("rdb_last_cow_size", 0)
        .field("rdb_last_load_keys_expired", 0)
        .field("rdb_last_load_keys_loaded", 0)
        .field("aof_enabled", u8::from(journaled(proxy)))
        .field("aof_rewrite_in_progress", 0)
        .field("aof_rewrite_scheduled", 0)
        .field("aof_last_rewrite_time_sec", -1)
        .field("aof_current_rewrite_time_sec", -1)
        .field("aof_last_bgrewrite_status", "ok")
        .field("aof_rewrites", 0)
        .field("aof_rewrites_consecutive_failures", 0)
        .field("aof_last_write_status", "ok")
        .field("aof_last_cow_size", 0)
        .field("module_fork_in_progress", 0)
        .field("module_fork_last_cow_size", 0);
    if journaled(proxy) {
        // The journal's size is the journal nodes' business; the proxy buffers nothing unsent.
        s.field("aof_current_size", 0)
            .field("aof_base_size", 0)
            .field("aof_pending_rewrite", 0)
            .field("aof_buffer_length", 0)
            .field("aof_pending_bio_fsync", 0)
            .field("aof_delayed_fsync", 0);
    }
}

fn stats(proxy: &Proxy, nodes: &[(NodeInfo, i64)], s: &mut Section) {
    let st = &proxy.stats;
    let rates = st.rates();
    let load = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed).to_string();
    let repl = |name: &str| -> u64 {
        nodes.iter().filter_map(|(info, _)| info.get("stats")).map(|f| crate::units::whole(get(f, name))).sum()
    };
    let own = |name: &str| -> Option<String> {
        Some(match name {
            "total_connections_received" => load(&st.connections),
            "total_commands_processed" => load(&st.commands),
            "instantaneous_ops_per_sec" => rates.ops_per_sec.to_string(),
            "total_net_input_bytes" => {
                (st.net_input_bytes.load(Ordering::Relaxed) + repl("total_net_repl_input_bytes")).to_string()
            }
            "total_net_output_bytes" => {
                (st.net_output_bytes.load(Ordering::Relaxed) + repl("total_net_repl_output_bytes")).to_string()
            }
            "instantaneous_input_kbps" => format!("{:.2}", rates.input_kbps),
            "instantaneous_output_kbps" => format!("{:.2}", rates.output_kbps),
            "rejected_connections" => load(&st.rejected_connections),
            "evicted_clients" => "0".into(),
            // memlog evicts (journaled DELs); the nodes run without a limit.
            "evicted_keys" => proxy.shards.iter().map(|s| s.memory.evicted_keys()).sum::<u64>().to_string(),
            "pubsub_channels" => proxy.pubsub.active_channels(false, None).len().to_string(),
            "pubsub_patterns" => proxy.pubsub.pattern_count().to_string(),
            "pubsubshard_channels" => proxy.pubsub.active_channels(true, None).len().to_string(),
            "latest_fork_usec" => {
                let latest = nodes.iter().filter_map(|(info, _)| info.get("stats"));
                (latest.map(|f| crate::units::whole(get(f, "latest_fork_usec"))).max().unwrap_or(0)).to_string()
            }
            "migrate_cached_sockets" => "0".into(),
            // The proxy is the endpoint: its tracking table is the one clients use.
            "tracking_total_keys" => proxy.tracker.totals().1.to_string(),
            "tracking_total_items" => proxy.tracker.totals().2.to_string(),
            "tracking_total_prefixes" => proxy.tracker.totals().3.to_string(),
            "unexpected_error_replies" | "io_threaded_reads_processed" | "io_threaded_writes_processed" => "0".into(),
            "reply_buffer_shrinks" | "reply_buffer_expands" => "0".into(),
            "total_error_replies" => load(&st.error_replies),
            "total_reads_processed" => load(&st.reads_processed),
            "total_writes_processed" => load(&st.writes_processed),
            _ => return None,
        })
    };
    for (name, value) in combined(nodes, "stats", own) {
        s.field(&name, value);
    }
}

fn replication(proxy: &Proxy, _: &[(NodeInfo, i64)], s: &mut Section) {
    let views: Vec<_> = proxy.shards.iter().map(|shard| shard.status.view()).collect();
    let replicas: Vec<_> = views.iter().flat_map(|v| v.replicas.iter()).filter(|r| r.up).collect();
    s.field("role", "master").field("connected_slaves", replicas.len());
    for (i, replica) in replicas.iter().enumerate() {
        let (ip, port) = replica.addr.rsplit_once(':').unwrap_or((replica.addr.as_str(), "0"));
        s.field(
            &format!("slave{i}"),
            format!("ip={ip},port={port},state=online,offset={},lag=0", replica.lsn.unwrap_or(0)),
        );
    }
    let offset: u64 = views.iter().map(|v| v.primary.lsn.unwrap_or(0)).sum();
    s.field("master_failover_state", if views.iter().any(|v| v.held) { "failover-in-progress" } else { "no-failover" })
        .field("master_replid", &proxy.run_id)
        .field("master_replid2", "0".repeat(40))
        .field("master_repl_offset", offset)
        .field("second_repl_offset", -1)
        .field("repl_backlog_active", u8::from(journaled(proxy)))
        .field("repl_backlog_size", 0)
        .field("repl_backlog_first_byte_offset", 0)
        .field("repl_backlog_histlen", 0);
}

/// CPU seconds from `/proc/<…>/stat` (fields 14-17: user, system, children's user and system,
/// in clock ticks of 1/100 s, Linux's `USER_HZ`).
fn cpu_ticks(path: &str) -> [u64; 4] {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    // The command name (field 2) may hold spaces; the fields after its ')' are plain.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<u64> = after.split_whitespace().map(|f| f.parse().unwrap_or(0)).collect();
    // After ')': state is field 3, so field n is at index n - 3.
    let field = |n: usize| fields.get(n - 3).copied().unwrap_or(0);
    [field(14), field(15), field(16), field(17)]
}

fn cpu(_: &Proxy, _: &[(NodeInfo, i64)], s: &mut Section) {
    let seconds = |ticks: u64| format!("{}.{:06}", ticks / 100, (ticks % 100) * 10_000);
    let [user, sys, children_user, children_sys] = cpu_ticks("/proc/self/stat");
    let [thread_user, thread_sys, _, _] = cpu_ticks("/proc/thread-self/stat");
    s.field("used_cpu_sys", seconds(sys))
        .field("used_cpu_user", seconds(user))
        .field("used_cpu_sys_children", seconds(children_sys))
        .field("used_cpu_user_children", seconds(children_user))
        .field("used_cpu_sys_main_thread", seconds(thread_sys))
        .field("used_cpu_user_main_thread", seconds(thread_user));
}

/// Redis's `getSafeInfoString`: no field name may break INFO's format.
fn safe(name: &str) -> String {
    name.replace(['#', ':', '\n', '\r'], "_")
}

fn commandstats(proxy: &Proxy, _: &[(NodeInfo, i64)], s: &mut Section) {
    for command in proxy.table.all() {
        let stats = &command.stats;
        let (calls, usec) = (stats.calls.load(Ordering::Relaxed), stats.usec.load(Ordering::Relaxed));
        let (rejected, failed) =
            (stats.rejected_calls.load(Ordering::Relaxed), stats.failed_calls.load(Ordering::Relaxed));
        if calls + rejected + failed == 0 {
            continue;
        }
        let per_call = if calls == 0 { 0.0 } else { usec as f64 / calls as f64 };
        s.field(
            &format!("cmdstat_{}", safe(&command.name)),
            format!(
                "calls={calls},usec={usec},usec_per_call={per_call:.2},rejected_calls={rejected},failed_calls={failed}"
            ),
        );
    }
}

fn errorstats(proxy: &Proxy, _: &[(NodeInfo, i64)], s: &mut Section) {
    for (prefix, count) in proxy.stats.errors() {
        s.field(&format!("errorstat_{}", safe(&prefix)), format!("count={count}"));
    }
}

fn latencystats(proxy: &Proxy, _: &[(NodeInfo, i64)], s: &mut Section) {
    for command in proxy.table.all() {
        let Some(histogram) = command.stats.histogram() else { continue };
        let values: Vec<String> = PERCENTILES
            .iter()
            .map(|p| format!("p{p}={:.3}", histogram.value_at_percentile(*p) as f64 / 1000.0))
            .collect();
        s.field(&format!("latency_percentiles_usec_{}", safe(&command.name)), values.join(","));
    }
}

fn keyspace(proxy: &Proxy, nodes: &[(NodeInfo, i64)], s: &mut Section) {
    // A Redis Cluster has database 0 only; a standalone Redis lists each non-empty database.
    let databases = if proxy.cfg.mode == Mode::Standalone { crate::databases::COUNT } else { 1 };
    for (name, value) in keyspace_lines(databases, nodes) {
        s.field(&name, value);
    }
}

/// `dbN:keys=…,expires=…,avg_ttl=…` of the first `databases` databases, summed over the
/// primaries, without memlog's own key (in database 0); empty databases are left out, as Redis
/// leaves them out.
fn keyspace_lines(databases: u8, nodes: &[(NodeInfo, i64)]) -> Vec<(String, String)> {
    let mut lines = Vec::new();
    for db in 0..databases {
        let name = format!("db{db}");
        let (mut keys, mut expires, mut ttl_weighted) = (0i64, 0i64, 0i64);
        for (info, internal) in nodes {
            let Some(line) = info.get("keyspace").and_then(|f| f.iter().find(|(n, _)| *n == name)) else { continue };
            let field = |field: &str| -> i64 {
                line.1
                    .split(',')
                    .find_map(|kv| kv.strip_prefix(field).and_then(|v| v.strip_prefix('=')))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0)
            };
            let shard_expires = field("expires");
            keys += field("keys") - if db == 0 { *internal } else { 0 };
            expires += shard_expires;
            ttl_weighted += field("avg_ttl") * shard_expires;
        }
        if keys > 0 || expires > 0 {
            let avg_ttl = if expires > 0 { ttl_weighted / expires } else { 0 };
            lines.push((name, format!("keys={keys},expires={expires},avg_ttl={avg_ttl}")));
        }
    }
    lines
}

fn memlog(proxy: &Proxy, _: &[(NodeInfo, i64)], s: &mut Section) {
    s.field("memlog_version", env!("CARGO_PKG_VERSION")).field("shards", proxy.shards.len());
    for (i, shard) in proxy.shards.iter().enumerate() {
        let slots: Vec<String> = proxy.slots.ranges(i).iter().map(|(lo, hi)| format!("{lo}-{hi}")).collect();
        s.field(
            &format!("shard{i}"),
            format!(
                "slots={},primary={},replicas={}",
                slots.join(" "),
                shard.current_primary(),
                shard.current_replicas().join(" ")
            ),
        );
        if let Some(refusal) = shard.refusal() {
            s.field(&format!("shard{i}_refused"), refusal);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(text: &str) -> (NodeInfo, i64) {
        (parse_info(text), 0)
    }

    #[test]
    fn sections_are_selected_as_redis_selects_them() {
        let args = |a: &[&str]| a.iter().map(|s| Bytes::copy_from_slice(s.as_bytes())).collect::<Vec<_>>();
        let default = Selection::parse(&[]);
        assert!(default.wants("server") && default.wants("errorstats") && !default.wants("commandstats"));
        let all = Selection::parse(&args(&["ALL"]));
        assert!(all.wants("commandstats") && all.wants("latencystats") && !all.wants("memlog"));
        let some = Selection::parse(&args(&["Memory", "keyspace"]));
        assert!(some.wants("memory") && some.wants("keyspace") && !some.wants("server"));
        assert!(Selection::parse(&args(&["memlog"])).wants("memlog"));
    }

    #[test]
    fn node_fields_are_summed_averaged_or_taken_from_the_first() {
        let a = node(
            "# Memory\r\nused_memory:100\r\nmaxmemory_policy:noeviction\r\nexpired_stale_perc:10.00\r\nrate:1.50\r\nsha:00000000\r\n",
        );
        let b = node(
            "# Memory\r\nused_memory:50\r\nmaxmemory_policy:allkeys-lru\r\nexpired_stale_perc:20.00\r\nrate:2.00\r\nsha:00000000\r\n",
        );
        let fields = combined(&[a, b], "memory", |name| (name == "rate").then(|| "own".to_string()));
        assert_eq!(
            fields,
            vec![
                ("used_memory".to_string(), "150".to_string()),
                ("maxmemory_policy".to_string(), "noeviction".to_string()),
                ("expired_stale_perc".to_string(), "15.00".to_string()),
                ("rate".to_string(), "own".to_string()),
                ("sha".to_string(), "00000000".to_string()),
            ]
        );
    }

    #[test]
    fn keyspace_lists_every_non_empty_database_without_memlogs_key() {
        let (mut a, b) = (
            node("# Keyspace\r\ndb0:keys=3,expires=1,avg_ttl=100\r\ndb3:keys=2,expires=0,avg_ttl=0\r\n"),
            node("# Keyspace\r\ndb0:keys=1,expires=1,avg_ttl=300\r\ndb15:keys=4,expires=2,avg_ttl=10\r\n"),
        );
        a.1 = 1;
        let line = |name: &str, value: &str| (name.to_string(), value.to_string());
        assert_eq!(
            keyspace_lines(16, &[a.clone(), b.clone()]),
            [
                line("db0", "keys=3,expires=2,avg_ttl=200"),
                line("db3", "keys=2,expires=0,avg_ttl=0"),
                line("db15", "keys=4,expires=2,avg_ttl=10"),
            ]
        );
        assert_eq!(keyspace_lines(1, &[a.clone(), b]), [line("db0", "keys=3,expires=2,avg_ttl=200")]);
        a.0 = parse_info("# Keyspace\r\ndb0:keys=1,expires=0,avg_ttl=0\r\n");
        assert_eq!(keyspace_lines(16, &[a]), [], "memlog's key alone is an empty keyspace");
    }

    #[test]
    fn human_sizes_as_redis_prints_them() {
        assert_eq!(human(1000.0), "1000B");
        assert_eq!(human(965_688.0), "943.05K");
        assert_eq!(human(12_140_544.0), "11.58M");
        assert_eq!(human(25_276_194_816.0), "23.54G");
    }

    #[test]
    fn cpu_ticks_skip_a_command_name_with_spaces() {
        let path = std::env::temp_dir().join(format!("memlog-stat-{}", std::process::id()));
        std::fs::write(&path, "12 (a b) S 1 2 3 4 5 6 7 8 9 10 250 30 7 9 20 0").unwrap();
        assert_eq!(cpu_ticks(path.to_str().unwrap()), [250, 30, 7, 9]);
        let _ = std::fs::remove_file(path);
    }
}

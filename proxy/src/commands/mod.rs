//! Commands: the proxy's own handling of the commands it must answer differently from a single
//! Redis, one file per command family. Each handler gets the client's
//! [`ClientCtx`](crate::context::ClientCtx) and the routing functions on it.

pub(crate) mod acl;
pub(crate) mod admin;
pub(crate) mod client;
pub(crate) mod cluster;
pub(crate) mod config;
pub(crate) mod connection;
pub(crate) mod diagnostics;
pub(crate) mod info;
pub(crate) mod keyspace;
pub(crate) mod pubsub;
pub(crate) mod replication;
pub(crate) mod scripting;
pub(crate) mod tracking;
pub(crate) mod transaction;

use std::sync::Arc;

use crate::config::Mode;
use crate::context::ClientCtx;
use crate::replies::Pending;
use crate::resp::Request;
use crate::table::CommandInfo;

/// What the proxy does with a command.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum CommandRoute {
    /// Redis executes it; the proxy routes it by its keys.
    Forward,
    /// The proxy answers it itself.
    Local,
    /// Never allowed through memlog, as on MemoryDB: it would break what memlog manages.
    Refused(&'static str),
    /// Redis semantics the proxy does not provide yet (transactions, blocking, pub/sub, scripts).
    NotYet,
    /// Answered with this error, which stock Redis gives in the endpoint's mode (e.g. `CLUSTER`
    /// on a Redis without cluster support): an error of the command, not a refusal of it.
    Fails(&'static str),
}

const MANAGED_NODES: &str = "memlog manages the Redis nodes";
const MANAGED_TOPOLOGY: &str = "memlog manages the cluster topology";

/// What Redis 7.0 started without `cluster-enabled` answers to `CLUSTER …`, `READONLY`,
/// `READWRITE` and `ASKING` (after the arity and subcommand checks).
const CLUSTER_DISABLED: &str = "ERR This instance has cluster support disabled";

pub(crate) fn route(info: &CommandInfo, mode: Mode) -> CommandRoute {
    let name = info.name.as_str();
    if mode == Mode::Standalone {
        if let Some(route) = standalone_route(name) {
            return route;
        }
    }
    match name {
        "ping" | "echo" | "quit" | "reset" | "select" | "hello" | "auth" | "readonly" | "readwrite" | "asking"
        | "time" | "role" | "dbsize" | "keys" | "scan" | "randomkey" | "flushall" | "flushdb" | "info" => {
            CommandRoute::Local
        }
        "client|id"
        | "client|setname"
        | "client|getname"
        | "client|info"
        | "client|list"
        | "client|kill"
        | "client|setinfo"
        | "client|help"
        | "client|unblock"
        | "client|reply"
        | "client|pause"
        | "client|unpause"
        | "client|no-evict"
        | "client|tracking"
        | "client|trackinginfo"
        | "client|getredir"
        | "client|caching" => CommandRoute::Local,
        n if n.starts_with("client|") => CommandRoute::NotYet,
        "cluster|slots"
        | "cluster|shards"
        | "cluster|nodes"
        | "cluster|info"
        | "cluster|keyslot"
        | "cluster|myid"
        | "cluster|countkeysinslot"
        | "cluster|getkeysinslot"
        | "cluster|help" => CommandRoute::Local,
        n if n.starts_with("cluster|") => CommandRoute::Refused(MANAGED_TOPOLOGY),
        "config|set" | "config|get" | "config|rewrite" | "config|help" | "config|resetstat" => CommandRoute::Local,
        n if n.starts_with("slowlog|") || n.starts_with("latency|") => CommandRoute::Local,
        "debug" | "shutdown" | "replicaof" | "slaveof" | "sync" | "psync" | "save" | "bgsave" | "bgrewriteaof"
        | "failover" | "pfdebug" | "pfselftest" => CommandRoute::Refused(MANAGED_NODES),
        n if n.starts_with("module") => CommandRoute::Refused(MANAGED_NODES),
        "migrate" | "swapdb" | "move" => CommandRoute::Refused(MANAGED_TOPOLOGY),
        "multi" | "exec" | "discard" | "watch" | "unwatch" => CommandRoute::Local,
        "subscribe" | "psubscribe" | "ssubscribe" | "unsubscribe" | "punsubscribe" | "sunsubscribe" | "publish"
        | "spublish" => CommandRoute::Local,
        n if n.starts_with("pubsub|") => CommandRoute::Local,
        "eval" | "evalsha" | "eval_ro" | "evalsha_ro" | "fcall" | "fcall_ro" => CommandRoute::Local,
        n if n.starts_with("script|") || n.starts_with("function|") => CommandRoute::Local,
        "memlog" => CommandRoute::Local,
        "wait" => CommandRoute::Local,
        "monitor" => CommandRoute::Local,
        "acl|genpass" => CommandRoute::Forward,
        n if n.starts_with("acl|") => CommandRoute::Local,
        // Blocking commands are parked in the shard's sequencer (see `dispatch`).
        _ if info.flags.pubsub => CommandRoute::NotYet,
        _ => CommandRoute::Forward,
    }
}

/// Where a standalone endpoint differs from the cluster one.
fn standalone_route(name: &str) -> Option<CommandRoute> {
    match name {
        n if n.starts_with("cluster|") => Some(CommandRoute::Fails(CLUSTER_DISABLED)),
        "readonly" | "readwrite" | "asking" => Some(CommandRoute::Fails(CLUSTER_DISABLED)),
        // Databases 0–15: moving keys between them is a write like any other (`databases`).
        "move" | "swapdb" => Some(CommandRoute::Forward),
        _ => None,
    }
}

/// Commands a client may send before it authenticated, as Redis allows.
pub(crate) fn allowed_before_auth(name: &str) -> bool {
    matches!(name, "auth" | "hello" | "quit" | "reset")
}

/// Runs a command the proxy answers itself.
pub(crate) async fn run_local(d: &mut ClientCtx, request: &Request, info: &Arc<CommandInfo>) -> Pending {
    let name = info.name.as_str();
    if let Some(sub) = name.strip_prefix("client|") {
        return client::run(d, sub, request);
    }
    if let Some(sub) = name.strip_prefix("cluster|") {
        return cluster::run(d, sub, request);
    }
    if let Some(sub) = name.strip_prefix("acl|") {
        return acl::run(d, sub, &request.args).await;
    }
    if let Some(sub) = name.strip_prefix("slowlog|") {
        return diagnostics::slowlog(d, sub, request);
    }
    if let Some(sub) = name.strip_prefix("latency|") {
        return diagnostics::latency(d, sub, request);
    }
    if name.starts_with("pubsub|") {
        return pubsub::run(d, name, request).await;
    }
    if name.starts_with("script|") || name.starts_with("function|") {
        return scripting::run(d, name, request, info).await;
    }
    match name {
        "multi" | "exec" | "discard" | "watch" | "unwatch" => transaction::run(d, name, request).await,
        "wait" => replication::wait(d, request).await,
        "subscribe" | "psubscribe" | "ssubscribe" | "unsubscribe" | "punsubscribe" | "sunsubscribe" | "publish"
        | "spublish" => pubsub::run(d, name, request).await,
        "config|set" | "config|get" | "config|rewrite" | "config|help" => config::run(d, &name[7..], request).await,
        "eval" | "evalsha" | "eval_ro" | "evalsha_ro" | "fcall" | "fcall_ro" => {
            scripting::run(d, name, request, info).await
        }
        "memlog" => admin::run(d, request).await,
        "monitor" => match d.pubsub.push() {
            Some(push) => {
                d.proxy.monitors.add(push);
                Pending::Ready(bytes::Bytes::from_static(b"+OK\r\n"))
            }
            None => Pending::error("ERR memlog: MONITOR needs a client connection"),
        },
        "info" => info::run(d, request),
        "config|resetstat" => diagnostics::resetstat(d),
        "dbsize" | "keys" | "scan" | "randomkey" | "flushall" | "flushdb" => keyspace::run(d, name, request).await,
        _ => connection::run(d, name, request),
    }
}

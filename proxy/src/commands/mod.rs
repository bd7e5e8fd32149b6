//! Commands: the table loaded from Redis, and the proxy's own handling of the commands it must
//! answer differently from a single Redis, one file per command family.

pub mod client;
pub mod cluster;
pub mod connection;
pub mod keyspace;
pub mod table;

use std::sync::Arc;

use crate::dispatch::Dispatcher;
use crate::resp::Request;
use crate::session::Pending;
use table::{CommandInfo, CommandTable};

/// What the proxy does with a command.
#[derive(Debug, PartialEq, Eq)]
pub enum Overlay {
    /// Redis executes it; the proxy routes it by its keys.
    Forward,
    /// The proxy answers it itself.
    Local,
    /// Never allowed through memlog, as on MemoryDB: it would break what memlog manages.
    Refused(&'static str),
    /// Redis semantics the proxy does not provide yet (transactions, blocking, pub/sub, scripts).
    NotYet,
}

const MANAGED_NODES: &str = "memlog manages the Redis nodes";
const MANAGED_TOPOLOGY: &str = "memlog manages the cluster topology";

pub fn overlay(info: &CommandInfo, request: &Request) -> Overlay {
    let name = info.name.as_str();
    match name {
        "ping" | "echo" | "quit" | "reset" | "select" | "hello" | "auth" | "readonly" | "readwrite" | "asking"
        | "time" | "role" | "dbsize" | "keys" | "scan" | "randomkey" | "flushall" | "flushdb" | "info" => {
            Overlay::Local
        }
        "client|id" | "client|setname" | "client|getname" | "client|info" | "client|list" | "client|kill"
        | "client|setinfo" | "client|help" => Overlay::Local,
        "client|pause" | "client|unpause" | "client|no-evict" => Overlay::Refused(MANAGED_NODES),
        n if n.starts_with("client|") => Overlay::NotYet,
        "cluster|slots"
        | "cluster|shards"
        | "cluster|nodes"
        | "cluster|info"
        | "cluster|keyslot"
        | "cluster|myid"
        | "cluster|countkeysinslot"
        | "cluster|getkeysinslot"
        | "cluster|help" => Overlay::Local,
        n if n.starts_with("cluster|") => Overlay::Refused(MANAGED_TOPOLOGY),
        "config|set" | "config|rewrite" | "config|resetstat" => Overlay::Refused(MANAGED_NODES),
        "debug" | "shutdown" | "replicaof" | "slaveof" | "sync" | "psync" | "save" | "bgsave" | "bgrewriteaof"
        | "failover" | "pfdebug" | "pfselftest" => Overlay::Refused(MANAGED_NODES),
        n if n.starts_with("module") => Overlay::Refused(MANAGED_NODES),
        "migrate" | "swapdb" | "move" => Overlay::Refused(MANAGED_TOPOLOGY),
        "multi" | "exec" | "discard" | "watch" | "unwatch" | "wait" | "monitor" | "eval" | "evalsha" | "eval_ro"
        | "evalsha_ro" | "fcall" | "fcall_ro" => Overlay::NotYet,
        n if n.starts_with("script|") || n.starts_with("function|") || n.starts_with("acl|") => Overlay::NotYet,
        // XREAD/XREADGROUP block only with BLOCK; without it they are plain reads.
        "xread" | "xreadgroup" => {
            if request.args.iter().any(|a| a.eq_ignore_ascii_case(b"block")) {
                Overlay::NotYet
            } else {
                Overlay::Forward
            }
        }
        "publish"
        | "pubsub|channels"
        | "pubsub|numsub"
        | "pubsub|numpat"
        | "pubsub|shardchannels"
        | "pubsub|shardnumsub"
        | "spublish" => Overlay::Forward,
        _ if info.flags.blocking || info.flags.pubsub => Overlay::NotYet,
        _ => Overlay::Forward,
    }
}

/// Commands a client may send before it authenticated, as Redis allows.
pub fn allowed_before_auth(name: &str) -> bool {
    matches!(name, "auth" | "hello" | "quit" | "reset")
}

/// Commands the proxy serves that the backend's table may lack (newer than its Redis).
pub fn add_local_commands(table: &mut CommandTable) {
    table.insert_local(CommandInfo::local("client|setinfo", 4));
}

/// Runs a command the proxy answers itself.
pub async fn run_local(d: &mut Dispatcher, request: &Request, info: &Arc<CommandInfo>) -> Pending {
    let name = info.name.as_str();
    if let Some(sub) = name.strip_prefix("client|") {
        return client::run(d, sub, request);
    }
    if let Some(sub) = name.strip_prefix("cluster|") {
        return cluster::run(d, sub, request);
    }
    match name {
        "dbsize" | "keys" | "scan" | "randomkey" | "flushall" | "flushdb" | "info" => {
            keyspace::run(d, name, request).await
        }
        _ => connection::run(d, name, request),
    }
}

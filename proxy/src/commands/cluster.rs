//! The Redis Cluster dialect, so cluster-aware clients work: the proxy presents itself as the
//! one node that serves every slot, and routes each key to its shard behind that endpoint.

use crate::context::ClientCtx;
use crate::replies::Pending;
use crate::resp::{parse_int, reply, Proto, ReplyWriter, Request};
use crate::router::{key_slot, SLOTS};

pub(crate) fn run(d: &mut ClientCtx, sub: &str, request: &Request) -> Pending {
    let args = &request.args;
    let proto = d.proto();
    let proxy = &d.proxy;
    let (host, port, id) = (proxy.announce_host.clone(), proxy.announce_port as i64, proxy.node_id.clone());
    let shard_ranges: Vec<Vec<(u16, u16)>> =
        (0..proxy.slots.shard_count()).map(|s| proxy.slots.ranges(s).to_vec()).collect();
    match sub {
        "slots" => Pending::Ready(reply(proto, |w| {
            let ranges: Vec<_> = shard_ranges.iter().flatten().collect();
            w.array(ranges.len());
            for (lo, hi) in ranges {
                w.array(3).int(*lo as i64).int(*hi as i64);
                node_entry(w, &host, port, &id);
            }
        })),
        "shards" => Pending::Ready(reply(proto, |w| {
            w.array(shard_ranges.len());
            for ranges in &shard_ranges {
                w.map(2);
                w.bulk(b"slots").array(ranges.len() * 2);
                for (lo, hi) in ranges {
                    w.int(*lo as i64).int(*hi as i64);
                }
                w.bulk(b"nodes").array(1).map(7);
                w.bulk(b"id").bulk(id.as_bytes());
                w.bulk(b"port").int(port);
                w.bulk(b"ip").bulk(host.as_bytes());
                w.bulk(b"endpoint").bulk(host.as_bytes());
                w.bulk(b"role").bulk(b"master");
                w.bulk(b"replication-offset").int(0);
                w.bulk(b"health").bulk(b"online");
            }
        })),
        "nodes" => {
            let mut all: Vec<(u16, u16)> = shard_ranges.iter().flatten().copied().collect();
            all.sort_unstable();
            let slots: Vec<String> = merge_adjacent(&all)
                .iter()
                .map(|(lo, hi)| if lo == hi { lo.to_string() } else { format!("{lo}-{hi}") })
                .collect();
            let line =
                format!("{id} {host}:{port}@{} myself,master - 0 0 1 connected {}\n", port + 10000, slots.join(" "));
            Pending::Ready(reply(proto, |w| {
                w.verbatim(&line);
            }))
        }
        "info" => {
            let text = format!(
                "cluster_enabled:1\r\ncluster_state:ok\r\ncluster_slots_assigned:{SLOTS}\r\ncluster_slots_ok:{SLOTS}\r\n\
                 cluster_slots_pfail:0\r\ncluster_slots_fail:0\r\ncluster_known_nodes:1\r\ncluster_size:1\r\n\
                 cluster_current_epoch:1\r\ncluster_my_epoch:1\r\ncluster_stats_messages_sent:0\r\n\
                 cluster_stats_messages_received:0\r\ntotal_cluster_links_buffer_limit_exceeded:0\r\n"
            );
            Pending::Ready(reply(proto, |w| {
                w.verbatim(&text);
            }))
        }
        "keyslot" => Pending::Ready(reply(proto, |w| {
            w.int(key_slot(&args[2]) as i64);
        })),
        "myid" => Pending::Ready(reply(proto, |w| {
            w.bulk(id.as_bytes());
        })),
        "countkeysinslot" | "getkeysinslot" => {
            let Some(slot) =
                parse_int(&args[2]).and_then(|s| u16::try_from(s).ok()).filter(|s| usize::from(*s) < SLOTS)
            else {
                return Pending::error("ERR Invalid slot");
            };
            let limit = match sub {
                "getkeysinslot" => match parse_int(&args[3]).and_then(|n| usize::try_from(n).ok()) {
                    Some(n) => Some(n),
                    None => return Pending::error("ERR Invalid number of keys"),
                },
                _ => None,
            };
            keys_in_slot(d, slot, limit, proto)
        }
        "help" => Pending::Ready(reply(proto, |w| {
            let lines = [
                "CLUSTER <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
                "SLOTS, SHARDS, NODES, INFO, MYID, KEYSLOT <key>, COUNTKEYSINSLOT <slot>, GETKEYSINSLOT <slot> <count>",
                "memlog serves every slot from this endpoint; topology changes are made with memlog, not CLUSTER.",
            ];
            w.array(lines.len());
            for line in lines {
                w.simple(line);
            }
        })),
        _ => Pending::error(&format!("ERR unknown subcommand '{sub}'. Try CLUSTER HELP.")),
    }
}

fn node_entry(w: &mut ReplyWriter, host: &str, port: i64, id: &str) {
    w.array(4).bulk(host.as_bytes()).int(port).bulk(id.as_bytes()).map(0);
}

fn merge_adjacent(ranges: &[(u16, u16)]) -> Vec<(u16, u16)> {
    let mut out: Vec<(u16, u16)> = Vec::new();
    for &(lo, hi) in ranges {
        match out.last_mut() {
            Some(last) if last.1 + 1 == lo => last.1 = hi,
            _ => out.push((lo, hi)),
        }
    }
    out
}

/// COUNTKEYSINSLOT / GETKEYSINSLOT. The shards are plain Redis (not cluster mode), which keeps
/// no per-slot index, so this scans the owning shard: O(keys in the shard), unlike Redis
/// Cluster's O(1).
fn keys_in_slot(d: &ClientCtx, slot: u16, limit: Option<usize>, proto: Proto) -> Pending {
    let shard = d.proxy.slots.shard_of_slot(slot);
    let conn = d.proxy.shards[shard].read_conn(Proto::Resp2, d.client.id).clone();
    Pending::Deferred(Box::pin(async move {
        let mut found = Vec::new();
        let scan = crate::commands::keyspace::scan_keys(&conn, |key| {
            if key_slot(key) == slot && limit.is_none_or(|l| found.len() < l) {
                found.push(key.clone());
            }
        })
        .await;
        if let Err(e) = scan {
            return crate::resp::error_reply(&format!("ERR memlog: {e}"));
        }
        reply(proto, |w| match limit {
            None => {
                w.int(found.len() as i64);
            }
            Some(_) => {
                w.array(found.len());
                for key in &found {
                    w.bulk(key);
                }
            }
        })
    }))
}

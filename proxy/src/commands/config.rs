//! CONFIG SET, GET, REWRITE and HELP: the parameter group (docs/parameters.md).
//!
//! - `CONFIG SET name value …` is checked against the allowlist (`params`) with Redis 7.0's
//!   errors, then — one change at a time — journaled on every shard's stream (as `FUNCTION
//!   LOAD` is), so replay applies it at the same point in history and a failover's catch-up
//!   brings it to the new primary; then recorded in the metadata store. It is made the group
//!   in force first, which makes every controller prepare its replicas again (Redis does not
//!   replicate `CONFIG SET`). `timeout` and `maxmemory` are the proxy's alone and are not
//!   journaled (evictions are: see `eviction`).
//! - `CONFIG GET` is answered by shard 0's primary, with the proxy's own values for what the
//!   proxy enforces and the nodes' credentials blanked.
//! - `CONFIG REWRITE` answers OK: the group is already durable.

use std::sync::Arc;

use bytes::Bytes;

use crate::context::ClientCtx;
use crate::params::{check_set, Scope, HIDDEN};
use crate::proxy::{journal_on_every_shard, Proxy};
use crate::replies::Pending;
use crate::resp::{bulk_payload, error_reply, frame_len, reply, Proto, Request};
use crate::table::CommandInfo;

/// Runs `CONFIG <sub>` (`sub` as the command table spells it: `set`, `get`, …).
pub(crate) async fn run(d: &mut ClientCtx, sub: &str, request: &Request) -> Pending {
    match sub {
        "set" => {
            let (proxy, proto, command) = (d.proxy.clone(), d.proto(), d.command.clone());
            let request = request.clone();
            Pending::Deferred(Box::pin(async move { set(&proxy, proto, &request, command).await }))
        }
        "get" => get(d, request).await,
        "rewrite" => Pending::Ready(reply(d.proto(), |w| {
            w.simple("OK");
        })),
        // Redis's own help text.
        _ => d.send_to_shard(0, request.clone(), false).await,
    }
}

async fn set(proxy: &Proxy, proto: Proto, request: &Request, command: Option<Arc<CommandInfo>>) -> Bytes {
    let args: Vec<&[u8]> = request.args[2..].iter().map(|a| &a[..]).collect();
    let settings = match check_set(&args, proxy.cfg.param_rules()) {
        Ok(settings) => settings,
        Err(e) => return error_reply(&e.to_string()),
    };
    let parameters = &proxy.parameters;
    let _one_change_at_a_time = parameters.changes.lock().await;
    let before = parameters.live.get();
    let mut group = (*before).clone();
    for s in &settings {
        group.insert(s.canonical.to_string(), s.value.clone());
    }
    // In force before it is journaled, so a node prepared meanwhile (a reconnect, a promotion)
    // gets it; the controllers bring every replica to it (Redis does not replicate CONFIG SET),
    // while each primary takes it from its journal below.
    proxy.put_parameters_in_force(group.clone());
    let mut node_args = vec![Bytes::from_static(b"CONFIG"), Bytes::from_static(b"SET")];
    for s in settings.iter().filter(|s| s.scope != Scope::Proxy) {
        node_args.push(Bytes::from_static(s.name.as_bytes()));
        node_args.push(Bytes::from(s.value.clone()));
    }
    let mut partial = None;
    if node_args.len() > 2 {
        let replies = journal_on_every_shard(&proxy.shards, &Request::from_args(&node_args), command).await;
        let applied = replies.iter().filter(|r| r.is_ok()).count();
        let first_error = replies.into_iter().find_map(Result::err);
        match first_error {
            // Refused everywhere (the same Redis refuses the same change): nothing changed.
            Some(e) if applied == 0 => {
                proxy.put_parameters_in_force((*before).clone());
                return error_reply(&e);
            }
            Some(e) => partial = Some(format!("applied on {applied} of {} shards ({e})", proxy.shards.len())),
            None => {}
        }
    }
    let recorded = match &parameters.store {
        Some(store) => store.put_parameters(&group).await.map_err(|e| e.to_string()),
        None => Ok(()),
    };
    if node_args.len() > 2 {
        prepare_replicas(proxy).await;
    }
    match (partial, recorded) {
        (None, Ok(())) => reply(proto, |w| {
            w.simple("OK");
        }),
        (Some(partial), _) => error_reply(&format!(
            "ERR memlog: CONFIG SET {partial}; it is the group in force now: replicas get it now, the other \
             shards' primaries when they are next prepared (a restart or failover) or at the proxy's next start"
        )),
        (None, Err(e)) => error_reply(&format!(
            "ERR memlog: CONFIG SET is applied but the metadata store did not record it ({e}); a restarted proxy \
             would not know it"
        )),
    }
}

/// Prepares every shard's replicas with the group now, so the reply comes once they have it
/// (a replica that does not answer within `REPLICA_WAIT` gets it from its controller's next
/// check, which sees the group changed).
async fn prepare_replicas(proxy: &Proxy) {
    let mut preparing = tokio::task::JoinSet::new();
    for replica in proxy.shards.iter().flat_map(|shard| shard.current_replicas()) {
        let prepare = proxy.parameters.prepare.clone();
        preparing.spawn(async move {
            if let Err(e) = prepare.prepare_at(&replica).await {
                tracing::warn!(node = %replica, "replica not prepared with the new parameter group yet: {e}");
            }
        });
    }
    let _ = tokio::time::timeout(REPLICA_WAIT, preparing.join_all()).await;
}

/// How long a `CONFIG SET` waits for the replicas before it answers.
const REPLICA_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// `CONFIG GET pattern…` from shard 0's primary, with the proxy's values put in.
async fn get(d: &mut ClientCtx, request: &Request) -> Pending {
    let (proxy, proto) = (d.proxy.clone(), d.proto());
    let from_node = d.send_to_shard(0, request.clone(), false).await;
    Pending::Merge {
        parts: vec![from_node],
        merge: Box::new(move |mut replies| {
            let node_reply = replies.pop().unwrap_or_else(|| error_reply("ERR memlog: no reply from the shard"));
            with_proxy_values(&proxy, proto, &node_reply).unwrap_or(node_reply)
        }),
    }
}

/// The node's `CONFIG GET` reply (a RESP2 array of name/value pairs or a RESP3 map) with the
/// proxy's values for `timeout`, `proto-max-bulk-len`, `maxmemory` and `tracking-table-max-keys` and the credentials blanked; `None`
/// when it is not such a reply (an error passes through).
fn with_proxy_values(proxy: &Proxy, proto: Proto, node_reply: &[u8]) -> Option<Bytes> {
    let header_end = node_reply.windows(2).position(|w| w == b"\r\n")?;
    let count: usize = std::str::from_utf8(&node_reply[1..header_end]).ok()?.parse().ok()?;
    let items = match node_reply.first()? {
        b'*' => count,
        b'%' => count * 2,
        _ => return None,
    };
    let mut rest = &node_reply[header_end + 2..];
    let mut values = Vec::with_capacity(items);
    for _ in 0..items {
        let len = frame_len(rest).ok()??;
        values.push(bulk_payload(&rest[..len])?.to_vec());
        rest = &rest[len..];
    }
    let live = &proxy.parameters.live;
    Some(reply(proto, |w| {
        w.map(items / 2);
        for pair in values.chunks(2) {
            let name = String::from_utf8_lossy(&pair[0]);
            let value = match name.as_ref() {
                "timeout" => live.client_timeout().map_or(0, |t| t.as_secs()).to_string().into_bytes(),
                "proto-max-bulk-len" => live.max_bulk_len(proxy.cfg.proto_max_bulk_len).to_string().into_bytes(),
                "maxmemory" => live.memory_limit().0.to_string().into_bytes(),
                "tracking-table-max-keys" => live.tracking_max_keys().to_string().into_bytes(),
                hidden if HIDDEN.contains(&hidden) => Vec::new(),
                _ => pair[1].clone(),
            };
            w.bulk(&pair[0]).bulk(&value);
        }
    }))
}

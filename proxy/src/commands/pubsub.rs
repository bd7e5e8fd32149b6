//! Pub/sub commands: SUBSCRIBE and friends, PUBLISH, SPUBLISH, PUBSUB introspection, RESP2
//! subscriber mode. The state and delivery live in the hub (`crate::pubsub`);
//! `notify-keyspace-events` is a parameter of the group (`commands::config`).
//!
//! (Un)subscriptions and publications run when their reply is due (`Pending::Deferred`,
//! `Pending::Due`), i.e. after every earlier command of the client completed: a subscription's
//! confirmation never overtakes an earlier reply, and a message published after a write is
//! published after the write was applied, so a subscriber that reads the key sees the write.

use std::sync::Arc;

use bytes::Bytes;

use crate::context::ClientCtx;
use crate::pubsub::{Kind, Subscriber};
use crate::replies::Pending;
use crate::resp::{reply, Proto, Request};
use crate::router::key_slot;
use crate::table::CommandInfo;

/// RESP2 clients with a subscription may only run these (Redis's `processCommand`).
const ALLOWED_IN_SUBSCRIBER_MODE: &[&str] =
    &["ping", "subscribe", "ssubscribe", "unsubscribe", "sunsubscribe", "psubscribe", "punsubscribe", "quit", "reset"];

/// Runs a pub/sub command.
pub(crate) async fn run(d: &mut ClientCtx, name: &str, request: &Request) -> Pending {
    let args = &request.args;
    match name {
        "subscribe" => subscribe(d, Kind::Channel, request),
        "psubscribe" => subscribe(d, Kind::Pattern, request),
        "ssubscribe" => subscribe(d, Kind::ShardChannel, request),
        "unsubscribe" => unsubscribe(d, Kind::Channel, request),
        "punsubscribe" => unsubscribe(d, Kind::Pattern, request),
        "sunsubscribe" => unsubscribe(d, Kind::ShardChannel, request),
        "publish" => publish(d, request, false),
        "spublish" => publish(d, request, true),
        "pubsub|channels" | "pubsub|shardchannels" if args.len() > 3 => syntax_error(request),
        "pubsub|channels" => channels(d, false, args.get(2)),
        "pubsub|shardchannels" => channels(d, true, args.get(2)),
        "pubsub|numsub" => numsub(d, false, &args[2..]),
        "pubsub|shardnumsub" => numsub(d, true, &args[2..]),
        "pubsub|numpat" => {
            let patterns = d.proxy.pubsub.pattern_count() as i64;
            Pending::Ready(reply(d.proto(), |w| {
                w.int(patterns);
            }))
        }
        // Redis's own help text, from a shard.
        "pubsub|help" => d.send_to_shard(0, request.clone(), false).await,
        _ => Pending::error(&format!("ERR memlog: no pub/sub handler for '{name}'")),
    }
}

/// Redis's refusal of `info` while a RESP2 client is in subscriber mode, if it applies.
pub(crate) fn subscriber_mode_refusal(d: &ClientCtx, info: &Arc<CommandInfo>) -> Option<String> {
    if !d.pubsub.in_subscriber_mode(d.proto()) || ALLOWED_IN_SUBSCRIBER_MODE.contains(&info.name.as_str()) {
        return None;
    }
    Some(format!(
        "ERR Can't execute '{}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context",
        info.name
    ))
}

/// PING in subscriber mode: `["pong", <message or "">]`, as Redis answers.
pub(crate) fn subscriber_ping(request: &Request) -> Pending {
    let message = request.args.get(1).map_or(&b""[..], |m| &m[..]);
    Pending::Ready(reply(Proto::Resp2, |w| {
        w.array(2).bulk(b"pong").bulk(message);
    }))
}

/// RESET: the client leaves every channel, silently, as Redis's RESET does.
pub(crate) fn reset(d: &ClientCtx) {
    if let Some(subscriber) = &d.pubsub.subscriber {
        d.proxy.pubsub.remove_client(subscriber);
    }
}

fn no_subscriber() -> Pending {
    Pending::error("ERR memlog: pub/sub is not available on this connection")
}

/// Sharded channels are keys: one command's must share a slot, as in Redis Cluster.
fn cross_slot(channels: &[Bytes]) -> bool {
    channels.split_first().is_some_and(|(first, rest)| rest.iter().any(|c| key_slot(c) != key_slot(first)))
}

/// The subscriber and the names of a (P|S)SUBSCRIBE or (P|S)UNSUBSCRIBE, or its refusal.
fn subscription_args(d: &ClientCtx, kind: Kind, request: &Request) -> Result<(Arc<Subscriber>, Vec<Bytes>), Pending> {
    let Some(subscriber) = d.pubsub.subscriber.clone() else { return Err(no_subscriber()) };
    let names = request.args[1..].to_vec();
    if kind == Kind::ShardChannel && cross_slot(&names) {
        return Err(Pending::error("CROSSSLOT Keys in request don't hash to the same slot"));
    }
    Ok((subscriber, names))
}

fn subscribe(d: &ClientCtx, kind: Kind, request: &Request) -> Pending {
    let (subscriber, names) = match subscription_args(d, kind, request) {
        Ok(args) => args,
        Err(refusal) => return refusal,
    };
    let proxy = d.proxy.clone();
    Pending::Deferred(Box::pin(async move {
        if let Some(relay_ready) = proxy.pubsub.subscribe(&subscriber, kind, &names) {
            relay_ready.await;
        }
        // The confirmations went out as pushes, in order with the messages that follow.
        Bytes::new()
    }))
}

fn unsubscribe(d: &ClientCtx, kind: Kind, request: &Request) -> Pending {
    let (subscriber, names) = match subscription_args(d, kind, request) {
        Ok(args) => args,
        Err(refusal) => return refusal,
    };
    let proxy = d.proxy.clone();
    Pending::Deferred(Box::pin(async move {
        proxy.pubsub.unsubscribe(&subscriber, kind, &names);
        Bytes::new()
    }))
}

fn publish(d: &ClientCtx, request: &Request, sharded: bool) -> Pending {
    let (proxy, proto) = (d.proxy.clone(), d.proto());
    let (channel, message) = (request.args[1].clone(), request.args[2].clone());
    Pending::Due(Box::new(move || {
        let receivers = proxy.pubsub.publish(&channel, &message, sharded) as i64;
        reply(proto, |w| {
            w.int(receivers);
        })
    }))
}

fn channels(d: &ClientCtx, sharded: bool, pattern: Option<&Bytes>) -> Pending {
    let names = d.proxy.pubsub.active_channels(sharded, pattern.map(|p| &p[..]));
    Pending::Ready(reply(d.proto(), |w| {
        w.array(names.len());
        for name in &names {
            w.bulk(name);
        }
    }))
}

fn numsub(d: &ClientCtx, sharded: bool, channels: &[Bytes]) -> Pending {
    let counts = d.proxy.pubsub.subscriber_counts(sharded, channels);
    Pending::Ready(reply(d.proto(), |w| {
        // An array of pairs in both protocols, as Redis 7.0 answers.
        w.array(channels.len() * 2);
        for (channel, count) in channels.iter().zip(counts) {
            w.bulk(channel).int(count as i64);
        }
    }))
}

/// Redis's `addReplySubcommandSyntaxError`.
fn syntax_error(request: &Request) -> Pending {
    let sub = String::from_utf8_lossy(&request.args[1][..request.args[1].len().min(128)]).into_owned();
    let command = String::from_utf8_lossy(&request.args[0]).to_uppercase();
    Pending::error(&format!("ERR unknown subcommand or wrong number of arguments for '{sub}'. Try {command} HELP."))
}

//! Client-side caching at the proxy: `CLIENT TRACKING`, `CACHING`, `GETREDIR`, `TRACKINGINFO`
//! (Redis 7.0's replies and errors, `src/networking.c`), and what every command does to the
//! tracking table: a tracking client's read remembers its keys before the read is sent, and a
//! write's keys are invalidated once its reply arrives, i.e. once the shard applied it
//! (docs/architecture.md, invariant I2), whichever client wrote. The table and the delivery are
//! `crate::tracking` and `crate::pubsub::tracking`.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::oneshot;

use crate::context::ClientCtx;
use crate::pubsub::tracking::Change;
use crate::replies::Pending;
use crate::resp::{reply, Proto, Request};
use crate::table::CommandInfo;

/// `CLIENT TRACKING|CACHING|GETREDIR|TRACKINGINFO`.
pub(crate) fn run(d: &mut ClientCtx, sub: &str, request: &Request) -> Pending {
    let args = &request.args;
    let (id, proto, tracker) = (d.client.id, d.proto(), d.proxy.tracker.clone());
    match sub {
        "tracking" => {
            let options = match crate::tracking::parse(args, |id| tracker.is_connected(id)) {
                Ok(options) => options,
                Err(e) => return Pending::error(&e),
            };
            let Some(options) = options else {
                tracker.disable(id);
                return ok(proto);
            };
            match tracker.enable(id, options) {
                // Writes queued before the first client tracked are not invalidated by anyone:
                // the reply waits until they are applied, so what this client reads next
                // already holds them.
                Ok(true) => {
                    let proxy = d.proxy.clone();
                    Pending::Deferred(Box::pin(async move {
                        // A shard that is not applying refuses the wait after `write_wait_ms`:
                        // its writes wait too, or were refused.
                        crate::proxy::after_queued_writes(&proxy.shards).await;
                        ok_bytes(proto)
                    }))
                }
                Ok(false) => ok(proto),
                Err(e) => Pending::error(&e),
            }
        }
        "caching" => {
            let yes = if args[2].eq_ignore_ascii_case(b"yes") {
                true
            } else if args[2].eq_ignore_ascii_case(b"no") {
                false
            } else if !tracker.is_tracking(id) {
                // Redis checks tracking first, then the argument.
                return Pending::error("ERR CLIENT CACHING can be called only when the client is in tracking mode with OPTIN or OPTOUT mode enabled");
            } else {
                return Pending::error("ERR syntax error");
            };
            match tracker.caching(id, yes) {
                Ok(()) => ok(proto),
                Err(e) => Pending::error(&e),
            }
        }
        "getredir" => {
            let redirect = tracker.redirect(id);
            Pending::Ready(reply(proto, |w| {
                w.int(redirect);
            }))
        }
        _ => {
            let (flags, redirect, prefixes) = tracker.info(id);
            Pending::Ready(reply(proto, |w| {
                w.map(3).bulk(b"flags").set(flags.len());
                for flag in flags {
                    w.bulk(flag.as_bytes());
                }
                w.bulk(b"redirect").int(redirect).bulk(b"prefixes").array(prefixes.len());
                for prefix in &prefixes {
                    w.bulk(prefix);
                }
            }))
        }
    }
}

fn ok_bytes(proto: Proto) -> Bytes {
    reply(proto, |w| {
        w.simple("OK");
    })
}

fn ok(proto: Proto) -> Pending {
    Pending::Ready(ok_bytes(proto))
}

/// What one command means for the tracking table, found before it runs.
#[derive(Default)]
pub(crate) struct Tracked {
    /// Keys a tracking client's read is served.
    reads: Vec<Bytes>,
    /// What the command changes once applied.
    change: Option<Change>,
    /// Some client tracked when the command was looked at.
    in_use: bool,
}

impl Tracked {
    /// The keys `request` reads (for a tracking client) and writes, when some client of the
    /// proxy tracks; called for a command that passed its checks and is about to run (not one
    /// queued in MULTI: EXEC stands for its commands).
    pub(crate) async fn of(d: &ClientCtx, request: &Request, info: &CommandInfo) -> Tracked {
        let tracker = &d.proxy.tracker;
        if !tracker.in_use() {
            return Tracked::default();
        }
        let mut tracked = Tracked { in_use: true, ..Tracked::default() };
        let writer = Some(d.client.id);
        let name = info.name.as_str();
        if matches!(name, "flushall" | "flushdb") {
            tracked.change = Some(Change::All);
            return tracked;
        }
        let tracking = tracker.is_tracking(d.client.id);
        let mut written = Vec::new();
        if name == "exec" {
            for queued in d.multi.iter().flat_map(|m| &m.queued) {
                let keys = d.key_positions(&queued.request, &queued.command).await.unwrap_or_default();
                let keys = keys.into_iter().map(|k| queued.request.args[k].clone());
                if queued.write {
                    written.extend(keys);
                } else if tracking && queued.command.flags.readonly {
                    tracked.reads.extend(keys);
                }
            }
        } else {
            let script = matches!(name, "eval" | "evalsha" | "eval_ro" | "evalsha_ro" | "fcall" | "fcall_ro");
            // A script that reads remembers all its declared keys, as Redis does.
            let reads = tracking && (info.flags.readonly || script) && !info.flags.pubsub;
            let writes = info.flags.write || matches!(name, "eval" | "evalsha" | "fcall");
            if !reads && !writes {
                return tracked;
            }
            let keys = d.key_positions(request, info).await.unwrap_or_default();
            let keys: Vec<Bytes> = keys.into_iter().map(|k| request.args[k].clone()).collect();
            if reads {
                tracked.reads.clone_from(&keys);
            }
            if writes {
                written = keys;
            }
        }
        if !written.is_empty() {
            tracked.change = Some(Change::Keys { writer, keys: written });
        }
        tracked
    }

    /// Before the command is sent: its reads are remembered, so a write applied from now on is
    /// told to the client (the client's writer puts that push after this command's reply).
    pub(crate) fn remember(&self, d: &ClientCtx) {
        if self.reads.is_empty() {
            return;
        }
        let new = d.proxy.tracker.remember(d.client.id, &self.reads);
        if !new.is_empty() {
            look_up_expiries(d, new);
        }
    }

    /// The command's reply, which tells the clients holding its keys once it arrives (the write
    /// is then applied) and before the writing client hears it. Done in a task of its own, so
    /// they are told even if the writing client's session ends first.
    ///
    /// A write looked at before the first client tracked and sent after (so perhaps queued
    /// behind the barrier that client's `CLIENT TRACKING ON` waits for) has no keys found: it
    /// tells every tracking client with a null, once, when it is applied.
    pub(crate) fn invalidate_when_applied(self, d: &ClientCtx, info: &CommandInfo, pending: Pending) -> Pending {
        let may_write = info.flags.write || matches!(info.name.as_str(), "exec" | "eval" | "evalsha" | "fcall");
        let change = match self.change {
            Some(change) => change,
            None if !self.in_use && may_write && d.proxy.tracker.in_use() => Change::All,
            None => return pending,
        };
        let (tracker, proxy) = (d.proxy.tracker.clone(), d.proxy.clone());
        match pending {
            // The client's next command waits for this one (a blocking pop): keep it so.
            Pending::Deferred(work) => Pending::Deferred(Box::pin(async move {
                let reply = work.await;
                tracker.changed(change);
                reply
            })),
            Pending::Backend { rx, _lane } => {
                Pending::Backend { rx: told_when_answered(Pending::Backend { rx, _lane: None }, proxy, change), _lane }
            }
            other => Pending::Backend { rx: told_when_answered(other, proxy, change), _lane: None },
        }
    }
}

/// The reply the applier gives a write it could not apply within `write_wait_ms`
/// (`sequencer/applier.rs`): committed, and applied later from the journal.
const APPLIED_LATER: &[u8] = b"-ERR memlog: the write is committed in the journal but Redis cannot apply it yet";

/// Resolves `pending` in a task, tells the change, then hands the reply on.
fn told_when_answered(
    pending: Pending,
    proxy: Arc<crate::proxy::Proxy>,
    change: Change,
) -> oneshot::Receiver<crate::backend::ReplyResult> {
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        let reply = pending.resolve().await;
        let later = reply.starts_with(APPLIED_LATER);
        // Told whatever the reply: an error may leave the outcome unknown (applied after all).
        let again = later.then(|| change.clone());
        proxy.tracker.changed(change);
        let _ = tx.send(Ok(reply));
        // Answered before it was applied (its primary is lost or failing over): a client told
        // now may read the old value again before the write lands, so it is told once more when
        // every write queued on the shards so far — this one included — was applied.
        if let Some(change) = again {
            let mut pause = std::time::Duration::from_millis(100);
            while !crate::proxy::after_queued_writes(&proxy.shards).await {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_secs(1));
            }
            proxy.tracker.changed(change);
        }
    });
    rx
}

/// Looks up the expire time of keys new to the tracking table (`PEXPIRETIME`, on the shard's
/// primary, after the read that remembered them, in the reader's database), so they are
/// invalidated when they expire.
fn look_up_expiries(d: &ClientCtx, keys: Vec<(Bytes, u64)>) {
    let (proxy, client, db) = (d.proxy.clone(), d.client.id, d.client.db());
    tokio::spawn(async move {
        for (key, generation) in keys {
            let shard = proxy.slots.shard_of_key(&key);
            let conn = proxy.shards[shard].read_conn(Proto::Resp2, client);
            match conn.call_in_db(db, crate::resp::encode_command(&[&b"PEXPIRETIME"[..], &key])).await {
                Ok(reply) => {
                    let at = reply.strip_prefix(b":").and_then(|r| crate::resp::parse_int(r.strip_suffix(b"\r\n")?));
                    // -1: no expiry; -2: no key (a write creating it will invalidate it).
                    if let Some(at) = at.filter(|at| *at > 0) {
                        proxy.tracker.expires_at(key, generation, at as u64);
                    }
                }
                // Unknown: the client is told now rather than left holding a key that may expire.
                Err(_) => proxy.tracker.changed(Change::Keys { writer: None, keys: vec![key] }),
            }
        }
    });
}

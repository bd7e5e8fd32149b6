//! Transactions: MULTI, EXEC, DISCARD, WATCH, UNWATCH.
//!
//! The proxy queues a transaction's commands itself (answering `+QUEUED`), checking each as
//! Redis does at queue time; a refused command makes EXEC answer `-EXECABORT`. All keys of a
//! transaction must live on one shard (one slot in cluster-compatible mode), else the command
//! is refused with `-CROSSSLOT`, as a Redis Cluster refuses it. EXEC hands the whole transaction
//! to the shard's sequencer, which journals and applies it as one unit. WATCH registers the keys
//! in the sequencer of their shard, which sees every write (see `sequencer::watch`).

use std::sync::Arc;

use bytes::Bytes;
use memlog_acl::{DenialReason, LogContext};

use crate::commands::{route, CommandRoute};
use crate::config::Mode;
use crate::context::ClientCtx;
use crate::context::{Multi, Watching};
use crate::keys::RESERVED_PREFIX;
use crate::replies::Pending;
use crate::resp::Request;
use crate::routing::Placement;
use crate::sequencer::{QueuedCommand, SequencerOp, Transaction, Watch, OOM};
use crate::table::CommandInfo;

const CROSSSLOT: &str = "CROSSSLOT Keys in request don't hash to the same slot";

pub(crate) async fn run(d: &mut ClientCtx, name: &str, request: &Request) -> Pending {
    let reply = run_command(d, name, request).await;
    show_in_client_list(d);
    reply
}

async fn run_command(d: &mut ClientCtx, name: &str, request: &Request) -> Pending {
    match name {
        "multi" if d.multi.is_some() => Pending::error("ERR MULTI calls can not be nested"),
        "multi" => {
            let (acl_generation, db) = (d.proxy.access.generation(), d.client.db());
            d.multi = Some(Multi { acl_generation, db, ..Multi::default() });
            ok()
        }
        "discard" => match d.multi.take() {
            None => Pending::error("ERR DISCARD without MULTI"),
            Some(_) => {
                unwatch(d);
                ok()
            }
        },
        "exec" => exec(d).await,
        "watch" if d.multi.is_some() => Pending::error("ERR WATCH inside MULTI is not allowed"),
        "watch" => watch(d, request).await,
        "unwatch" => {
            unwatch(d);
            ok()
        }
        _ => Pending::error(&format!("ERR memlog: no transaction handler for '{name}'")),
    }
}

/// Commands queued while in MULTI (the others run at once, as in Redis).
pub(crate) fn is_queued(name: &str) -> bool {
    !matches!(name, "exec" | "discard" | "multi" | "watch" | "quit" | "reset")
}

/// A command was refused while queuing: the transaction will abort at EXEC.
pub(crate) fn fail_queueing(d: &mut ClientCtx) {
    if let Some(multi) = &mut d.multi {
        multi.failed = true;
    }
}

/// RESET and disconnects: leave MULTI, forget the watch.
pub(crate) fn reset(d: &mut ClientCtx) {
    d.multi = None;
    unwatch(d);
    show_in_client_list(d);
}

/// `multi=` in CLIENT LIST: the commands queued, -1 outside MULTI.
fn show_in_client_list(d: &ClientCtx) {
    d.client.show_queued(d.multi.as_ref().map(|m| m.queued.len()));
}

/// Checks a command as Redis does when queuing it, then queues it.
pub(crate) async fn queue(d: &mut ClientCtx, request: &Request, info: &Arc<CommandInfo>) -> Pending {
    match queue_check(d, request, info).await {
        Ok((shard, queued)) => {
            let multi = d.multi.as_mut().expect("queue is only called in MULTI");
            // A transaction larger than memlog journals is refused here, and nothing more of it
            // is kept (EXEC answers EXECABORT), so a client cannot make the proxy hold an
            // unbounded queue.
            let max = d.proxy.cfg.journal.as_ref().map_or(usize::MAX, |j| j.max_write_bytes);
            if multi.queued_bytes + request.raw.len() > max {
                multi.failed = true;
                multi.queued = Vec::new();
                multi.queued_bytes = 0;
                return Pending::error(&format!(
                    "ERR memlog: a transaction holds at most {max} bytes of commands (max_write_bytes)"
                ));
            }
            // Over `maxmemory` Redis refuses every command queued (queuing takes memory too).
            let memory_shard = multi.shard.or(shard);
            if memory_shard.is_some_and(|s| d.proxy.shards[s].memory.refuses_growth()) {
                fail_queueing(d);
                return Pending::error(OOM);
            }
            let multi = d.multi.as_mut().expect("queue is only called in MULTI");
            if !multi.failed {
                multi.shard = multi.shard.or(shard);
                multi.queued_bytes += request.raw.len();
                multi.queued.push(queued);
            }
            show_in_client_list(d);
            Pending::Ready(Bytes::from_static(b"+QUEUED\r\n"))
        }
        Err(msg) => {
            fail_queueing(d);
            Pending::error(&msg)
        }
    }
}

/// The shard the command's keys live on (None: no keys) and the command as it will run, or why
/// it cannot be queued.
async fn queue_check(
    d: &mut ClientCtx,
    request: &Request,
    info: &Arc<CommandInfo>,
) -> Result<(Option<usize>, QueuedCommand), String> {
    if crate::table::is_script_call(&info.name) {
        // Scripts are checked and put in their journaled form (EVALSHA → EVAL) now.
        let call =
            crate::commands::scripting::prepare_call(&d.proxy.scripts, &info.name, request).map_err(|reply| {
                String::from_utf8_lossy(reply.strip_prefix(b"-").unwrap_or(&reply)).trim_end().to_string()
            })?;
        let (request, _) = crate::commands::scripting::as_caller(d, call.request);
        let db = d.multi.as_ref().map_or(0, |m| m.db);
        let queued = QueuedCommand { request, command: info.clone(), write: call.write, db, answer: None };
        let shard = call.slot.map(|slot| d.proxy.slots.shard_of_slot(slot));
        return same_shard(d, shard, None).map(|shard| (shard, queued));
    }
    if info.name == "select" && d.proxy.cfg.mode == Mode::Standalone {
        return Ok((None, queue_select(d, request, info)));
    }
    if route(info, d.proxy.cfg.mode) != CommandRoute::Forward && !shard_answers_in_multi(&info.name) {
        return Err(format!("ERR memlog: '{}' cannot be used inside MULTI", crate::table::display_name(&info.name)));
    }
    let keys = d.key_positions(request, info).await.unwrap_or_default();
    if keys.iter().any(|&k| request.args[k].starts_with(RESERVED_PREFIX)) {
        return Err("ERR memlog: keys starting with '__memlog:' are reserved for memlog".into());
    }
    let db = d.multi.as_ref().map_or(0, |m| m.db);
    let queued =
        QueuedCommand { request: request.clone(), command: info.clone(), write: info.flags.write, db, answer: None };
    let shard = match d.placement(request, &keys) {
        Placement::Keyless => return Ok((None, queued)),
        Placement::Spans => return Err(CROSSSLOT.into()),
        Placement::Shard(shard) => shard,
    };
    same_shard(d, Some(shard), Some(&request.args[keys[0]])).map(|shard| (shard, queued))
}

/// `SELECT` inside MULTI (standalone mode): the commands queued after it run in the database it
/// selects; it is answered at EXEC as Redis answers it then (`OK`, or the error of a bad index,
/// which selects nothing).
fn queue_select(d: &mut ClientCtx, request: &Request, info: &Arc<CommandInfo>) -> QueuedCommand {
    let multi = d.multi.as_mut().expect("queue is only called in MULTI");
    let answer = match super::connection::select(d.proxy.cfg.mode, &request.args[1]) {
        Ok(db) => {
            multi.db = db;
            Bytes::from_static(b"+OK\r\n")
        }
        Err(error) => crate::resp::error_reply(error),
    };
    QueuedCommand { request: request.clone(), command: info.clone(), write: false, db: multi.db, answer: Some(answer) }
}

/// Checks that a command on `shard` (whose first key is `key`) joins the transaction's shard
/// (and slot, in cluster-compatible mode).
fn same_shard(d: &mut ClientCtx, shard: Option<usize>, key: Option<&Bytes>) -> Result<Option<usize>, String> {
    let cluster_compat = d.proxy.cfg.cluster_compat;
    let multi = d.multi.as_mut().expect("queue is only called in MULTI");
    let Some(shard) = shard else { return Ok(None) };
    if multi.shard.is_some_and(|s| s != shard) {
        return Err(CROSSSLOT.into());
    }
    if let (true, Some(key)) = (cluster_compat, key) {
        match &multi.slot_key {
            Some(first) if crate::router::key_slot(first) != crate::router::key_slot(key) => {
                return Err(CROSSSLOT.into())
            }
            Some(_) => {}
            None => multi.slot_key = Some(key.clone()),
        }
    }
    Ok(Some(shard))
}

/// Commands the proxy answers itself outside MULTI, but which the shard's Redis answers the
/// same way inside the transaction (applications put a `PING` in a pipeline as a marker).
fn shard_answers_in_multi(name: &str) -> bool {
    matches!(name, "ping" | "echo" | "time")
}

async fn exec(d: &mut ClientCtx) -> Pending {
    let Some(multi) = d.multi.take() else { return Pending::error("ERR EXEC without MULTI") };
    if multi.failed {
        unwatch(d);
        return Pending::error("EXECABORT Transaction discarded because of previous errors.");
    }
    let (queued, denied) = recheck_permissions(d, multi.queued, multi.acl_generation);
    if queued.is_empty() && !denied.is_empty() {
        unwatch(d);
        return Pending::Ready(splice_denials(Bytes::from_static(b"*0\r\n"), &denied));
    }
    let watching = d.watching.take();
    let shard = match (&watching, multi.shard) {
        (Some(w), Some(shard)) if w.shard != shard => {
            d.watching = watching;
            unwatch(d);
            return Pending::error(CROSSSLOT);
        }
        (Some(w), _) => w.shard,
        (None, shard) => shard.unwrap_or(0),
    };
    // A SELECT queued in the transaction leaves the client in the database it selected.
    let selected = queued.last().map(|q| q.db).filter(|&db| db != d.client.db());
    let transaction = Transaction { commands: queued, watch: watching.map(|w| w.watch) };
    let reply = d.submit_to_sequencer(shard, SequencerOp::Transaction(transaction)).await;
    let reply = match selected {
        Some(db) => select_once_run(d, reply, db),
        None => reply,
    };
    if denied.is_empty() {
        return reply;
    }
    Pending::Merge {
        parts: vec![reply],
        merge: Box::new(move |mut replies| splice_denials(replies.remove(0), &denied)),
    }
}

/// EXEC's `reply`, which moves the client to database `db` once the transaction ran (not when a
/// WATCH aborted it). The reply is a barrier: the client's next command is dispatched after it,
/// in the right database.
fn select_once_run(d: &mut ClientCtx, reply: Pending, db: u8) -> Pending {
    // Even when client-side caching wraps the reply (then it is no `Deferred` any more).
    d.blocks = true;
    let client = d.client.clone();
    Pending::Deferred(Box::pin(async move {
        let reply = reply.resolve().await;
        if reply.starts_with(b"*") && !reply.starts_with(b"*-1") {
            client.set_db(db);
        }
        reply
    }))
}

/// As Redis 7.0's EXEC: when the ACL rules changed since MULTI, each queued command is checked
/// again; those now denied do not run and answer `-NOPERM` in their place of EXEC's array.
/// Returns the commands that run and the denied ones' positions and errors.
fn recheck_permissions(
    d: &ClientCtx,
    commands: Vec<QueuedCommand>,
    generation: u64,
) -> (Vec<QueuedCommand>, Vec<(usize, Bytes)>) {
    let access = &d.proxy.access;
    if access.generation() == generation {
        return (commands, Vec::new());
    }
    let user = d.client.user.lock().unwrap().clone();
    let (mut queued, mut denied) = (Vec::new(), Vec::new());
    for (at, command) in commands.into_iter().enumerate() {
        match access.check(user.as_bytes(), &command.request.args) {
            Ok(()) => queued.push(command),
            Err(denial) => {
                access.log_denial(&denial, LogContext::Multi, user.as_bytes(), &d.client_info());
                let reason = match denial.reason {
                    DenialReason::Command => "no permission to execute the command or subcommand",
                    DenialReason::Key => "no permission to touch the specified keys",
                    DenialReason::Channel => "no permission to access one of the channels used as arguments",
                };
                denied.push((at, crate::resp::error_reply(&format!("{EXEC_NOPERM}{reason}"))));
            }
        }
    }
    (queued, denied)
}

const EXEC_NOPERM: &str = "NOPERM ACLs rules changed between the moment the transaction was accumulated and the EXEC \
                           call. This command is no longer allowed for the following reason: ";

/// EXEC's reply with each denied command's error put back in its place (a null reply, from a
/// WATCH that failed, stays as it is).
fn splice_denials(reply: Bytes, denied: &[(usize, Bytes)]) -> Bytes {
    if reply.starts_with(b"*-1") || reply.starts_with(b"_") {
        return reply;
    }
    let Some(mut items) = crate::resp::array_items(&reply) else { return reply };
    for (at, error) in denied {
        items.insert((*at).min(items.len()), error.clone());
    }
    let mut out = bytes::BytesMut::from(format!("*{}\r\n", items.len()).as_bytes());
    for item in items {
        out.extend_from_slice(&item);
    }
    out.freeze()
}

async fn watch(d: &mut ClientCtx, request: &Request) -> Pending {
    let keys: Vec<usize> = (1..request.args.len()).collect();
    if keys.iter().any(|&k| request.args[k].starts_with(RESERVED_PREFIX)) {
        return Pending::error("ERR memlog: keys starting with '__memlog:' are reserved for memlog");
    }
    let Placement::Shard(shard) = d.placement(request, &keys) else { return Pending::error(CROSSSLOT) };
    let watch = match &d.watching {
        Some(w) if w.shard != shard => return Pending::error(CROSSSLOT),
        Some(w) => w.watch.clone(),
        None => {
            let watch = Arc::new(Watch::default());
            d.watching = Some(Watching { shard, watch: watch.clone() });
            watch
        }
    };
    let keys = keys.into_iter().map(|k| request.args[k].clone()).collect();
    d.submit_to_sequencer(shard, SequencerOp::Watch { watch, keys }).await
}

/// Forgets the client's watch (its shard's sequencer drops the registrations).
pub(crate) fn unwatch(d: &mut ClientCtx) {
    d.unwatch();
}

fn ok() -> Pending {
    Pending::Ready(Bytes::from_static(b"+OK\r\n"))
}

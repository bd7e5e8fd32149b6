//! Turns each parsed request into a pending reply: looks the command up, checks arity,
//! authentication and the user's ACL permissions (before anything is queued, journaled or
//! forwarded), then either answers it in the proxy (`commands`), refuses it, or routes it by
//! its keys' slots (`routing`): writes through the shard's sequencer, reads to the shard's read
//! connection (or behind the same client's pending writes on the apply connection), multi-key
//! commands that span shards split and merged in order.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use memlog_acl::LogContext;

use crate::commands::tracking::Tracked;
use crate::commands::{self, CommandRoute};
use crate::context::ClientCtx;
use crate::keys::RESERVED_PREFIX;
use crate::replies::{Outgoing, Pending};
use crate::resp::Request;
use crate::routing::{blocking_timeout, Placement, SplitMerge};
use crate::table::{display_name, CommandInfo};

pub(crate) async fn dispatch(ctx: &mut ClientCtx, request: Request) -> Outgoing {
    let started = Instant::now();
    ctx.proxy.stats.commands.fetch_add(1, Ordering::Relaxed);
    let since_connect = started.saturating_duration_since(ctx.client.connected_at);
    ctx.client.last_command_ms.store(crate::units::millis(since_connect), Ordering::Relaxed);
    // `CLIENT REPLY SKIP` silences the command after it (and `OFF` every one, until `ON`).
    let skipped = std::mem::replace(&mut ctx.skip_next_reply, false);
    let info = match lookup(ctx, &request) {
        Ok(info) => info,
        Err(msg) => {
            commands::transaction::fail_queueing(ctx);
            let silent = skipped || ctx.replies_off;
            return Outgoing { silent, ..Outgoing::new(Pending::error(&msg), None, started) };
        }
    };
    // Stored only when it changes: an `ArcSwap` store waits out every reader's debt (5% of the
    // proxy's CPU at pipeline 16 when stored per request), a load is nearly free.
    let unchanged = ctx.client.last_command.load().as_ref().is_some_and(|last| Arc::ptr_eq(last, &info));
    if !unchanged {
        ctx.client.last_command.store(Some(info.clone()));
    }
    ctx.command = Some(info.clone());
    // Kept for the slow log; the request itself goes on to its shard without a copy.
    let raw = request.raw.clone();
    let (pending, rejected) = match refusal(ctx, &request, &info) {
        Some(refusal) => (refusal, true),
        None => {
            commands::client::hold_while_paused(ctx, &info).await;
            // A command queued in MULTI does nothing yet: EXEC stands for it.
            let queued = ctx.multi.is_some() && commands::transaction::is_queued(&info.name);
            let tracked = if queued { None } else { Some(Tracked::of(ctx, &request, &info).await) };
            if let Some(tracked) = &tracked {
                tracked.remember(ctx);
            }
            let (pending, refused) = run(ctx, request, &info).await;
            // `CLIENT CACHING` holds for the next command (or the transaction) only.
            if ctx.proxy.tracker.in_use() {
                let keep = info.name.starts_with("client|") || ctx.multi.is_some();
                ctx.proxy.tracker.command_done(ctx.client.id, keep);
            }
            match tracked {
                Some(tracked) => (tracked.invalidate_when_applied(ctx, &info, pending), refused),
                None => (pending, refused),
            }
        }
    };
    let barrier = matches!(pending, Pending::Deferred(_)) || std::mem::take(&mut ctx.blocks);
    let close = info.name == "quit" || std::mem::take(&mut ctx.close_after_reply);
    let silent = skipped || ctx.replies_off;
    Outgoing { close, barrier, rejected, silent, raw, ..Outgoing::new(pending, Some(info), started) }
}

/// The error of a command refused before it runs (arity, authentication, ACL, subscriber
/// mode), as Redis's `rejectCommand`: a refused EXEC discards the transaction and answers
/// `-EXECABORT Transaction discarded because of: <error>` (`execCommandAbort`), in MULTI or not.
fn refusal(ctx: &mut ClientCtx, request: &Request, info: &Arc<CommandInfo>) -> Option<Pending> {
    let refusal = if !info.arity_ok(request.args.len()) {
        format!("ERR wrong number of arguments for '{}' command", info.name)
    } else if !ctx.authenticated && !commands::allowed_before_auth(&info.name) {
        "NOAUTH Authentication required.".to_string()
    } else if let Some(denied) = acl_denial(ctx, request) {
        denied
    } else {
        commands::pubsub::subscriber_mode_refusal(ctx, info)?
    };
    if info.name == "exec" {
        commands::transaction::reset(ctx);
        return Some(Pending::error(&format!("EXECABORT Transaction discarded because of: {refusal}")));
    }
    commands::transaction::fail_queueing(ctx);
    Some(Pending::error(&refusal))
}

/// Queues, runs, forwards or refuses a command that passed the checks; true if refused.
async fn run(ctx: &mut ClientCtx, request: Request, info: &Arc<CommandInfo>) -> (Pending, bool) {
    if ctx.multi.is_some() && commands::transaction::is_queued(&info.name) {
        ctx.proxy.monitors.feed(ctx.client.db(), ctx.client.addr, &request, info);
        return (commands::transaction::queue(ctx, &request, info).await, false);
    }
    let route = commands::route(info, ctx.proxy.cfg.mode);
    if matches!(route, CommandRoute::Forward | CommandRoute::Local | CommandRoute::Fails(_)) {
        ctx.proxy.monitors.feed(ctx.client.db(), ctx.client.addr, &request, info);
    }
    match route {
        CommandRoute::Forward => (forward(ctx, request, info).await, false),
        CommandRoute::Local => (commands::run_local(ctx, &request, info).await, false),
        CommandRoute::Refused(why) => {
            (Pending::error(&format!("ERR memlog: '{}' is not allowed: {why}", display_name(&info.name))), true)
        }
        CommandRoute::Fails(error) => (Pending::error(error), false),
        CommandRoute::NotYet => (
            Pending::error(&format!(
                "ERR memlog: '{}' is not supported by this version of memlog yet",
                display_name(&info.name)
            )),
            true,
        ),
    }
}

/// The `NOPERM` error when the client's user may not run this request (logged to `ACL LOG`).
/// An unauthenticated client only gets here with commands every user may run.
fn acl_denial(ctx: &ClientCtx, request: &Request) -> Option<String> {
    if !ctx.authenticated {
        return None;
    }
    let (denial, user) = {
        let user = ctx.client.user.lock().unwrap();
        let denial = ctx.proxy.access.check(user.as_bytes(), &request.args).err()?;
        (denial, user.clone())
    };
    let context = if ctx.multi.is_some() { LogContext::Multi } else { LogContext::Toplevel };
    ctx.proxy.access.log_denial(&denial, context, user.as_bytes(), &ctx.client_info());
    Some(denial.error_reply())
}

/// Finds the command (or container subcommand) in the table, or Redis's error text.
fn lookup(ctx: &ClientCtx, request: &Request) -> Result<Arc<CommandInfo>, String> {
    let mut name_buf = [0u8; 32];
    let Some(info) = request.name_in(&mut name_buf).and_then(|name| ctx.proxy.table.get(name)) else {
        let mut msg = format!("ERR unknown command '{}', with args beginning with: ", truncate(&request.args[0]));
        for arg in &request.args[1..] {
            msg.push_str(&format!("'{}' ", truncate(arg)));
        }
        return Err(msg);
    };
    // A container called alone (`COMMAND`) is the container itself; its arity decides.
    let Some(sub) = request.args.get(1).filter(|_| !info.subcommands.is_empty()) else {
        return Ok(info.clone());
    };
    let name = &info.name;
    let sub = String::from_utf8_lossy(sub).to_ascii_lowercase();
    info.subcommands.get(&sub).cloned().ok_or_else(|| {
        format!("ERR unknown subcommand '{}'. Try {} HELP.", truncate(&request.args[1]), name.to_uppercase())
    })
}

/// Routes a command Redis itself executes, by the slots of its keys.
async fn forward(ctx: &mut ClientCtx, request: Request, info: &Arc<CommandInfo>) -> Pending {
    if copies_to_another_database(ctx, &request, info) {
        return Pending::error("ERR Copying to another database is not allowed in cluster mode");
    }
    // Malformed arguments the keys depend on (no keys found): Redis answers with its own error.
    let keys = ctx.key_positions(&request, info).await.unwrap_or_default();
    if keys.iter().any(|&k| request.args[k].starts_with(RESERVED_PREFIX)) {
        return Pending::error("ERR memlog: keys starting with '__memlog:' are reserved for memlog");
    }
    match ctx.placement(&request, &keys) {
        Placement::Keyless => return ctx.send_to_shard(0, request, info.flags.write).await,
        Placement::Shard(shard) if blocking_timeout(info, &request).is_some() => {
            return ctx.block(shard, &request, info, &keys).await;
        }
        Placement::Shard(shard) => return ctx.send_to_shard(shard, request, info.flags.write).await,
        Placement::Spans => (),
    };
    let cluster_compat = ctx.proxy.cfg.cluster_compat;
    let merge = match info.name.as_str() {
        "mget" => Some(SplitMerge::Values),
        "del" | "unlink" | "exists" | "touch" => Some(SplitMerge::Count),
        _ => None,
    };
    match merge {
        Some(merge) if !cluster_compat => ctx.split(&request, &keys, merge, info.flags.write).await,
        _ => Pending::error("CROSSSLOT Keys in request don't hash to the same slot"),
    }
}

/// `COPY … DB n` with `n` another database, in cluster mode: Redis Cluster refuses it
/// (`copyCommand`, Redis 7.0), and so must the proxy, whose nodes are not cluster nodes and would
/// write a database the endpoint never serves. Bad indexes go on to the node, which answers them
/// as Redis does.
fn copies_to_another_database(ctx: &ClientCtx, request: &Request, info: &CommandInfo) -> bool {
    ctx.proxy.cfg.mode == crate::config::Mode::Cluster
        && info.name == "copy"
        && crate::databases::written_elsewhere("copy", &request.args)
            .is_some_and(|(db, _)| (1..crate::databases::COUNT).contains(&db))
}

fn truncate(arg: &[u8]) -> String {
    String::from_utf8_lossy(&arg[..arg.len().min(128)]).into_owned()
}

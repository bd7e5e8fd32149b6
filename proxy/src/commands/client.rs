//! `CLIENT …` for the proxy's own clients: the proxy is the server they are connected to, so
//! IDs, names and `CLIENT LIST`/`KILL` are about proxy connections, not backend ones.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;

use crate::clients::{ClientHandle, PauseMode};
use crate::commands::connection::valid_client_name;
use crate::context::ClientCtx;
use crate::replies::Pending;
use crate::resp::{reply, Request};
use crate::table::CommandInfo;

pub(crate) fn run(d: &mut ClientCtx, sub: &str, request: &Request) -> Pending {
    let args = &request.args;
    let proto = d.proto();
    match sub {
        "id" => Pending::Ready(reply(proto, |w| {
            w.int(d.client.id as i64);
        })),
        "setname" => {
            if !valid_client_name(&args[2]) {
                return Pending::error("ERR Client names cannot contain spaces, newlines or special characters.");
            }
            let name = (!args[2].is_empty()).then(|| String::from_utf8_lossy(&args[2]).into_owned());
            *d.client.name.lock().unwrap() = name;
            ok(d)
        }
        "getname" => {
            let name = d.client.name.lock().unwrap().clone();
            Pending::Ready(reply(proto, |w| {
                match &name {
                    Some(name) => w.bulk(name.as_bytes()),
                    None => w.null(),
                };
            }))
        }
        "setinfo" => {
            let value = String::from_utf8_lossy(&args[3]).into_owned();
            if args[2].eq_ignore_ascii_case(b"lib-name") {
                *d.client.lib_name.lock().unwrap() = Some(value);
            } else if args[2].eq_ignore_ascii_case(b"lib-ver") {
                *d.client.lib_version.lock().unwrap() = Some(value);
            } else {
                return Pending::error(&format!("ERR Unrecognized option '{}'", String::from_utf8_lossy(&args[2])));
            }
            ok(d)
        }
        "info" => {
            let line = format!("{}\n", d.client.info_line(&d.proxy.pubsub.client_counts(d.client.id)));
            Pending::Ready(reply(proto, |w| {
                w.verbatim(&line);
            }))
        }
        "list" => list(d, request),
        "kill" => kill(d, request),
        "unblock" => unblock(d, request),
        "reply" => reply_mode(d, &args[2]),
        "no-evict" => match on_off(&args[2]) {
            Some(on) => {
                d.client.no_evict.store(on, Ordering::Relaxed);
                ok(d)
            }
            None => Pending::error("ERR syntax error"),
        },
        "pause" => pause(d, request),
        "tracking" | "caching" | "getredir" | "trackinginfo" => super::tracking::run(d, sub, request),
        "unpause" => {
            d.proxy.pause.unpause();
            ok(d)
        }
        "help" => Pending::Ready(reply(proto, |w| {
            let lines = [
                "CLIENT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
                "CACHING (YES|NO)",
                "    Enable/disable tracking of the keys for next command in OPTIN/OPTOUT modes.",
                "GETREDIR", "    Return the client ID we are redirecting to when tracking is enabled.",
                "ID", "    Return the ID of the current connection.",
                "GETNAME", "    Return the name of the current connection.",
                "SETNAME <name>", "    Assign the name <name> to the current connection.",
                "SETINFO <LIB-NAME|LIB-VER> <value>", "    Record the client library's name or version.",
                "INFO", "    Return information about the current client connection.",
                "LIST [TYPE normal] [ID <id> ...]", "    Return information about client connections.",
                "KILL <ip:port> | KILL <option> <value> [<option> <value> ...]",
                "    Kill connections. Options: ID <id>, ADDR <ip:port>, LADDR <ip:port>, USER <user>, SKIPME <yes|no>.",
                "NO-EVICT (ON|OFF)", "    Protect the current client connection from eviction (recorded: memlog evicts no client).",
                "PAUSE <timeout> [WRITE|ALL]",
                "    Suspend all, or just write, clients for <timeout> milliseconds.",
                "REPLY (ON|OFF|SKIP)", "    Control the replies sent to the current connection.",
                "TRACKING (ON|OFF) [REDIRECT <id>] [BCAST] [PREFIX <prefix> [...]]",
                "         [OPTIN] [OPTOUT] [NOLOOP]",
                "    Control server assisted client side caching.",
                "TRACKINGINFO", "    Report tracking status for the current connection.",
                "UNBLOCK <clientid> [TIMEOUT|ERROR]", "    Unblock the specified blocked client.",
                "UNPAUSE", "    Stop the current client pause, resuming traffic.",
            ];
            w.array(lines.len());
            for line in lines {
                w.simple(line);
            }
        })),
        _ => Pending::error(&format!("ERR unknown subcommand '{sub}'. Try CLIENT HELP.")),
    }
}

fn ok(d: &ClientCtx) -> Pending {
    Pending::Ready(reply(d.proto(), |w| {
        w.simple("OK");
    }))
}

fn sorted_clients(d: &ClientCtx) -> Vec<Arc<ClientHandle>> {
    let mut clients: Vec<_> = d.proxy.clients.iter().map(|c| c.value().clone()).collect();
    clients.sort_by_key(|c| c.id);
    clients
}

/// `CLIENT LIST [TYPE normal|master|replica|pubsub] [ID id …]`
fn list(d: &ClientCtx, request: &Request) -> Pending {
    let args = &request.args;
    let mut ids: Option<Vec<u64>> = None;
    let mut only_normal = true;
    let mut i = 2;
    while i < args.len() {
        if args[i].eq_ignore_ascii_case(b"type") && i + 1 < args.len() {
            match String::from_utf8_lossy(&args[i + 1]).to_ascii_lowercase().as_str() {
                "normal" => only_normal = true,
                "master" | "replica" | "slave" | "pubsub" => only_normal = false,
                other => return Pending::error(&format!("ERR Unknown client type '{other}'")),
            }
            i += 2;
        } else if args[i].eq_ignore_ascii_case(b"id") && i + 1 < args.len() {
            let mut list = Vec::new();
            for id in &args[i + 1..] {
                match crate::resp::parse_int(id).filter(|n| *n > 0) {
                    Some(id) => list.push(id as u64),
                    None => return Pending::error("ERR Invalid client ID"),
                }
            }
            ids = Some(list);
            i = args.len();
        } else {
            return Pending::error("ERR syntax error");
        }
    }
    let mut text = String::new();
    for client in sorted_clients(d) {
        if !only_normal || ids.as_ref().is_some_and(|ids| !ids.contains(&client.id)) {
            continue;
        }
        text.push_str(&client.info_line(&d.proxy.pubsub.client_counts(client.id)));
        text.push('\n');
    }
    Pending::Ready(reply(d.proto(), |w| {
        w.verbatim(&text);
    }))
}

/// One condition of `CLIENT KILL`'s filter form.
type ClientFilter = Box<dyn Fn(&ClientHandle) -> bool>;

/// `CLIENT KILL ip:port` or `CLIENT KILL <filter> <value> …`
fn kill(d: &mut ClientCtx, request: &Request) -> Pending {
    let args = &request.args;
    if args.len() == 3 {
        // The old form may kill the caller itself: it then gets its reply first, as in Redis.
        let addr = String::from_utf8_lossy(&args[2]);
        let target = sorted_clients(d).into_iter().find(|c| c.addr.to_string() == addr);
        return match target {
            Some(client) => {
                kill_client(d, &client);
                ok(d)
            }
            None => Pending::error("ERR No such client"),
        };
    }
    if args.len() % 2 != 0 {
        return Pending::error("ERR syntax error");
    }
    let mut filters: Vec<ClientFilter> = Vec::new();
    let mut skip_me = true;
    for pair in args[2..].chunks(2) {
        let value = String::from_utf8_lossy(&pair[1]).into_owned();
        match String::from_utf8_lossy(&pair[0]).to_ascii_lowercase().as_str() {
            "id" => match value.parse::<u64>() {
                Ok(id) if id > 0 => filters.push(Box::new(move |c| c.id == id)),
                _ => return Pending::error("ERR client-id should be greater than 0"),
            },
            "addr" => filters.push(Box::new(move |c| c.addr.to_string() == value)),
            "laddr" => filters.push(Box::new(move |c| c.local_addr.to_string() == value)),
            "user" => {
                if d.proxy.access.users().get(value.as_bytes()).is_none() {
                    return Pending::error(&format!("ERR No such user '{value}'"));
                }
                filters.push(Box::new(move |c| *c.user.lock().unwrap() == value))
            }
            "type" => match value.to_ascii_lowercase().as_str() {
                "normal" => {}
                "master" | "replica" | "slave" | "pubsub" => filters.push(Box::new(|_| false)),
                _ => return Pending::error(&format!("ERR Unknown client type '{value}'")),
            },
            "skipme" => match value.to_ascii_lowercase().as_str() {
                "yes" => skip_me = true,
                "no" => skip_me = false,
                _ => return Pending::error("ERR syntax error"),
            },
            _ => return Pending::error("ERR syntax error"),
        }
    }
    let mut killed = 0;
    for client in sorted_clients(d) {
        if skip_me && client.id == d.client.id {
            continue;
        }
        if filters.iter().all(|f| f(&client)) {
            kill_client(d, &client);
            killed += 1;
        }
    }
    Pending::Ready(reply(d.proto(), |w| {
        w.int(killed);
    }))
}

/// Closes `client` at once, or the caller itself once its reply is written.
fn kill_client(d: &mut ClientCtx, client: &ClientHandle) {
    if client.id == d.client.id {
        d.close_after_reply = true;
    } else {
        client.kill.cancel();
    }
}

/// `CLIENT UNBLOCK id [TIMEOUT|ERROR]`: answers a client blocked in the proxy now.
fn unblock(d: &ClientCtx, request: &Request) -> Pending {
    let args = &request.args;
    let Some(id) = crate::resp::parse_int(&args[2]) else {
        return Pending::error("ERR value is not an integer or out of range");
    };
    let error = match args.get(3) {
        None => false,
        Some(reason) if reason.eq_ignore_ascii_case(b"timeout") => false,
        Some(reason) if reason.eq_ignore_ascii_case(b"error") => true,
        Some(_) => return Pending::error("ERR CLIENT UNBLOCK reason should be TIMEOUT or ERROR"),
    };
    let unblocked = u64::try_from(id)
        .is_ok_and(|id| d.proxy.shards.iter().any(|s| crate::sequencer::unblock(&s.sequencer.blocked, id, error)));
    Pending::Ready(reply(d.proto(), |w| {
        w.int(unblocked as i64);
    }))
}

fn on_off(arg: &[u8]) -> Option<bool> {
    if arg.eq_ignore_ascii_case(b"on") {
        Some(true)
    } else if arg.eq_ignore_ascii_case(b"off") {
        Some(false)
    } else {
        None
    }
}

/// `CLIENT REPLY ON|OFF|SKIP`, as Redis 7.0: `ON` answers `+OK`; `OFF` and `SKIP` answer
/// nothing (the dispatcher silences the replies), and `SKIP` does nothing while replies are off.
fn reply_mode(d: &mut ClientCtx, mode: &Bytes) -> Pending {
    if mode.eq_ignore_ascii_case(b"skip") {
        d.skip_next_reply = !d.replies_off;
        return Pending::Ready(Bytes::new());
    }
    match on_off(mode) {
        Some(true) => {
            d.replies_off = false;
            d.skip_next_reply = false;
            ok(d)
        }
        Some(false) => {
            d.replies_off = true;
            Pending::Ready(Bytes::new())
        }
        None => Pending::error("ERR syntax error"),
    }
}

/// `CLIENT PAUSE timeout [WRITE|ALL]`: held by the proxy, for every client of it (see
/// [`hold_while_paused`]).
fn pause(d: &ClientCtx, request: &Request) -> Pending {
    let args = &request.args;
    let mode = match args.get(3) {
        None => PauseMode::All,
        Some(mode) if mode.eq_ignore_ascii_case(b"write") => PauseMode::Write,
        Some(mode) if mode.eq_ignore_ascii_case(b"all") => PauseMode::All,
        Some(_) => return Pending::error("ERR CLIENT PAUSE mode must be WRITE or ALL"),
    };
    if args.len() > 4 {
        return Pending::error("ERR syntax error");
    }
    let Some(timeout_ms) = crate::resp::parse_int(&args[2]) else {
        return Pending::error("ERR timeout is not an integer or out of range");
    };
    if timeout_ms < 0 {
        return Pending::error("ERR timeout is negative");
    }
    // A timeout past what an `Instant` holds pauses for ~30 years, as good as for ever.
    let now = tokio::time::Instant::now();
    let until = now
        .checked_add(std::time::Duration::from_millis(timeout_ms as u64))
        .unwrap_or_else(|| now + std::time::Duration::from_secs(30 * 365 * 86_400));
    d.proxy.pause.pause(mode, until);
    ok(d)
}

/// Commands Redis 7.0 holds during `CLIENT PAUSE WRITE`: writes, and the commands flagged
/// `may-replicate` (EVAL, EVALSHA, FCALL, PUBLISH, SPUBLISH, PFCOUNT), also when queued in
/// MULTI and at EXEC of a transaction holding one.
fn may_write(d: &ClientCtx, info: &CommandInfo) -> bool {
    let may = |info: &CommandInfo| {
        info.flags.write
            || matches!(info.name.as_str(), "eval" | "evalsha" | "fcall" | "publish" | "spublish" | "pfcount")
    };
    may(info) || (info.name == "exec" && d.multi.as_ref().is_some_and(|m| m.queued.iter().any(|q| may(&q.command))))
}

/// Waits while `CLIENT PAUSE` holds this command (every command under `ALL`, the writing ones
/// under `WRITE`), as Redis 7.0 postpones the client in `processCommand`: the client shows
/// `flags=b` meanwhile, and the command runs once the pause ends, times out or is lifted.
pub(crate) async fn hold_while_paused(d: &ClientCtx, info: &CommandInfo) {
    if d.proxy.pause.current().is_none() {
        return;
    }
    let writes = may_write(d, info);
    d.client.blocked.store(true, Ordering::Relaxed);
    tokio::select! {
        _ = d.proxy.pause.wait_while(|mode| mode == PauseMode::All || writes) => {}
        _ = d.client.kill.cancelled() => {}
    }
    d.client.blocked.store(false, Ordering::Relaxed);
}

//! Scripts and functions: EVAL*, FCALL*, SCRIPT, FUNCTION, with Redis 7.0's semantics.
//!
//! - EVAL/EVALSHA/FCALL are writes: they go through the shard's sequencer and are journaled as
//!   calls (EVALSHA as EVAL with the body from the proxy's [`crate::scripts`], so neither the journal nor
//!   the client depends on a node's script cache). EVAL_RO/EVALSHA_RO/FCALL_RO and scripts whose
//!   shebang says `#!lua flags=no-writes` are reads (Redis refuses their writes).
//! - They are routed by their keys (`numkeys`), which must share one slot (`-CROSSSLOT` else);
//!   a call without keys runs on shard 0.
//! - A script that writes must be deterministic, since replay runs the call again: see
//!   [`crate::scripts::body`] for what is refused, and [`crate::scripts::pin`] for how scripts that read TIME or set relative
//!   TTLs are journaled with their time pinned.
//! - FUNCTION LOAD/DELETE/FLUSH/RESTORE are journaled on every shard (so a shard rebuilt from
//!   its journal, and its replicas, have the libraries); the reply comes once all shards
//!   answered, the first error if any. FUNCTION LIST/DUMP/STATS come from shard 0.
//! - SCRIPT LOAD compiles on shard 0 and caches the body; SCRIPT EXISTS answers from the cache;
//!   SCRIPT FLUSH empties it and every node's. SCRIPT/FUNCTION KILL kill only scripts that are
//!   not journaled: a journaled script killed before it wrote would still run whole on replay.

use std::sync::Arc;

use bytes::Bytes;

use crate::backend::BackendConn;
use crate::context::ClientCtx;
use crate::keys::RESERVED_PREFIX;
use crate::proxy::Proxy;
use crate::replies::Pending;
use crate::resp::{error_reply, Proto, Request};
use crate::router::key_slot;
use crate::table::CommandInfo;

use crate::scripts::body::{self, declared_read_only};
use crate::scripts::{Journaled, ScriptCache};

const NOSCRIPT: &str = "NOSCRIPT No matching script. Please use EVAL.";

/// Runs a script or function call, or a SCRIPT or FUNCTION subcommand (`name` as the command
/// table spells it: `evalsha`, `script|load`, …).
pub(crate) async fn run(d: &mut ClientCtx, name: &str, request: &Request, _info: &Arc<CommandInfo>) -> Pending {
    match name {
        "eval" | "evalsha" | "eval_ro" | "evalsha_ro" | "fcall" | "fcall_ro" => call(d, name, request).await,
        "script|load" => script_load(d, request).await,
        "script|exists" => script_exists(d, request),
        "script|flush" => script_flush(d, request).await,
        "script|kill" | "function|kill" => kill(d, request),
        "script|debug" => Pending::error(
            "ERR memlog: 'SCRIPT DEBUG' is not allowed: the Lua debugger needs a connection of its own to one Redis node",
        ),
        "function|load" | "function|delete" | "function|flush" | "function|restore" => {
            function_write(d, name, request).await
        }
        "script|help" | "function|list" | "function|dump" | "function|stats" | "function|help" => {
            d.send_to_shard(0, request.clone(), false).await
        }
        _ => Pending::error(&format!(
            "ERR memlog: '{}' is not supported by this version of memlog yet",
            crate::table::display_name(name)
        )),
    }
}

/// A script or function call, ready to route.
pub(crate) struct Call {
    /// What is sent (and, for a write, journaled): EVALSHA turned into EVAL.
    pub request: Request,
    /// Journaled through the sequencer, or a read.
    pub write: bool,
    /// The one slot of its keys; `None` when it names no key (it runs on shard 0).
    pub slot: Option<u16>,
}

/// The form of a script or function call (`name` = `eval`, `evalsha`, `eval_ro`,
/// `evalsha_ro`, `fcall`, `fcall_ro`) that is journaled and applied, after Redis's argument
/// checks and memlog's (one slot, determinism), or the client's error reply. Public so that
/// transactions can queue calls inside MULTI in the same form.
pub(crate) fn prepare_call(scripts: &ScriptCache, name: &str, request: &Request) -> Result<Call, Bytes> {
    let args = &request.args;
    let by_sha = name.starts_with("evalsha");
    let is_eval = name.starts_with("eval");
    let read_only_command = name.ends_with("_ro");
    if by_sha && args.get(1).is_none_or(|sha| sha.len() != 40) {
        return Err(error_reply(NOSCRIPT));
    }
    let numkeys = match numkeys(args) {
        Ok(n) => n,
        // FCALL looks the function up before it reads numkeys: shard 0 answers the right error,
        // and runs nothing, so it is not a write.
        Err(_) if !is_eval => return Ok(Call { request: request.clone(), write: false, slot: None }),
        Err(msg) => return Err(error_reply(&msg)),
    };
    let keys = &args[3..3 + numkeys];
    if keys.iter().any(|k| k.starts_with(RESERVED_PREFIX)) {
        return Err(error_reply("ERR memlog: keys starting with '__memlog:' are reserved for memlog"));
    }
    let slot = keys.first().map(|k| key_slot(k));
    if keys.iter().any(|k| Some(key_slot(k)) != slot) {
        return Err(error_reply("CROSSSLOT Keys in request don't hash to the same slot"));
    }
    if !is_eval {
        return Ok(Call { request: request.clone(), write: !read_only_command, slot });
    }
    let script = if by_sha {
        scripts.get(&args[1]).ok_or_else(|| error_reply(NOSCRIPT))?
    } else {
        scripts.load(args[1].clone())
    };
    let write = !read_only_command && !declared_read_only(&script.body);
    let journaled =
        if write { script.journaled.map_err(|why| error_reply(&why.reply_text()))? } else { Journaled::AsIs };
    let request = match journaled {
        Journaled::AsIs if !by_sha => request.clone(),
        Journaled::AsIs => eval_with(&args[0], script.body, &args[2..], None),
        Journaled::PinnedTime(pinned) => eval_with(&args[0], pinned, &args[2..], Some(crate::units::unix_ms())),
    };
    Ok(Call { request, write, slot })
}

/// `EVAL body numkeys key… arg… [now]` (`EVAL_RO` for a read-only `command`).
fn eval_with(command: &[u8], body: Bytes, rest: &[Bytes], now_ms: Option<u64>) -> Request {
    let read_only = command.len() > 3 && command[command.len() - 3..].eq_ignore_ascii_case(b"_ro");
    let mut args = Vec::with_capacity(rest.len() + 3);
    args.push(Bytes::from_static(if read_only { b"EVAL_RO" } else { b"EVAL" }));
    args.push(body);
    args.extend(rest.iter().cloned());
    args.extend(now_ms.map(|now| Bytes::from(now.to_string())));
    Request::from_args(&args)
}

/// `numkeys` of `EVAL script numkeys key… arg…` / `FCALL f numkeys …`, checked as EVAL does.
fn numkeys(args: &[Bytes]) -> Result<usize, String> {
    let Some(n) = args.get(2).and_then(|n| redis_int(n)) else {
        return Err("ERR value is not an integer or out of range".into());
    };
    let Ok(n) = usize::try_from(n) else {
        return Err("ERR Number of keys can't be negative".into());
    };
    // `args` holds the command, the script and `numkeys` (read above).
    if n > args.len() - 3 {
        return Err("ERR Number of keys can't be greater than number of args".into());
    }
    Ok(n)
}

/// An integer as Redis's `string2ll` reads it: optional `-`, no `+`, no leading zeros.
fn redis_int(text: &[u8]) -> Option<i64> {
    let digits = text.strip_prefix(b"-").unwrap_or(text);
    if digits.is_empty() || (digits.len() > 1 && digits[0] == b'0') || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    crate::resp::parse_int(text)
}

/// `call` as it runs on the node: for a caller who may not do everything, with the caller's
/// rules (Redis checks each `redis.call` against the calling user; the node knows only memlog's
/// own user, so the rules travel with the call: `crate::sequencer::run_as`). True when wrapped.
pub(crate) fn as_caller(d: &ClientCtx, call: Request) -> (Request, bool) {
    let rules = d.proxy.access.script_rules(d.client.user.lock().unwrap().as_bytes());
    match rules {
        Some(rules) => (crate::sequencer::run_as(call, &rules), true),
        None => (call, false),
    }
}

async fn call(d: &mut ClientCtx, name: &str, request: &Request) -> Pending {
    let call = match prepare_call(&d.proxy.scripts, name, request) {
        Ok(call) => call,
        Err(reply) => return Pending::Ready(reply),
    };
    let shard = call.slot.map_or(0, |slot| d.proxy.slots.shard_of_slot(slot));
    let (request, restricted) = as_caller(d, call.request);
    if !call.write && restricted {
        // Only the applier can switch users on the node: a restricted read goes its way.
        return d.submit_to_sequencer(shard, crate::sequencer::SequencerOp::Read(request)).await;
    }
    if !call.write {
        return d.send_to_shard(shard, request, false).await;
    }
    let in_flight = d.proxy.scripts.journaled_started(shard);
    let pending = d.send_to_shard(shard, request, true).await;
    // The guard lives until the reply is handed back (the merge runs, or is dropped on an error).
    Pending::Merge {
        parts: vec![pending],
        merge: Box::new(move |mut replies| {
            drop(in_flight);
            replies.pop().unwrap_or_else(|| error_reply("ERR memlog: no reply from the shard"))
        }),
    }
}

/// `SCRIPT LOAD body`: compiled by shard 0's primary (its errors are Redis's), then cached.
async fn script_load(d: &mut ClientCtx, request: &Request) -> Pending {
    let (body, scripts) = (request.args[2].clone(), d.proxy.scripts.clone());
    let loaded = d.send_to_shard(0, request.clone(), false).await;
    Pending::Merge {
        parts: vec![loaded],
        merge: Box::new(move |mut replies| {
            scripts.load(body);
            replies.pop().unwrap_or_else(|| error_reply("ERR memlog: no reply from the shard"))
        }),
    }
}

fn script_exists(d: &ClientCtx, request: &Request) -> Pending {
    let shas = &request.args[2..];
    Pending::Ready(crate::resp::reply(d.proto(), |w| {
        w.array(shas.len());
        for sha in shas {
            w.int(i64::from(d.proxy.scripts.get(sha).is_some()));
        }
    }))
}

/// `SCRIPT FLUSH [ASYNC|SYNC]`: the proxy's cache and every node's.
async fn script_flush(d: &mut ClientCtx, request: &Request) -> Pending {
    let mode_ok = match request.args.len() {
        2 => true,
        3 => request.args[2].eq_ignore_ascii_case(b"async") || request.args[2].eq_ignore_ascii_case(b"sync"),
        _ => false,
    };
    if !mode_ok {
        return Pending::error("ERR SCRIPT FLUSH only support SYNC|ASYNC option");
    }
    d.proxy.scripts.clear();
    every_shard(d, request, false).await
}

/// FUNCTION LOAD/DELETE/FLUSH/RESTORE, journaled on every shard.
async fn function_write(d: &mut ClientCtx, name: &str, request: &Request) -> Pending {
    if name == "function|load" {
        if let Some(code) = request.args.last() {
            if let Err(why) = body::check_library(code) {
                return Pending::Ready(error_reply(&why.reply_text().replace("this script", "this library")));
            }
        }
    }
    every_shard(d, request, true).await
}

/// Sends `request` to every shard; the reply is the first error, else shard 0's reply.
async fn every_shard(d: &mut ClientCtx, request: &Request, write: bool) -> Pending {
    let mut parts = Vec::with_capacity(d.proxy.shards.len());
    for shard in 0..d.proxy.shards.len() {
        parts.push(d.send_to_shard(shard, request.clone(), write).await);
    }
    Pending::Merge { parts, merge: Box::new(crate::routing::first_error_else_first) }
}

/// SCRIPT KILL / FUNCTION KILL, run when the reply is due, on a connection of its own to each
/// primary (the script's own connection is busy with it).
fn kill(d: &ClientCtx, request: &Request) -> Pending {
    let proxy = d.proxy.clone();
    let command = request.raw.clone();
    Pending::Deferred(Box::pin(async move { kill_unjournaled(&proxy, command).await }))
}

/// Kills the running script of each shard that has no journaled script in flight. `+OK` if one
/// was killed; `-UNKILLABLE` if a shard was skipped; else the nodes' `-NOTBUSY`. Known window: a
/// journaled script submitted after the check, or replayed by a catch-up, could start before the
/// KILL reaches the node and be killed.
async fn kill_unjournaled(proxy: &Proxy, command: Bytes) -> Bytes {
    let mut skipped = false;
    let mut sent = Vec::new();
    for shard in &proxy.shards {
        if proxy.scripts.journaled_in_flight(shard.id) {
            skipped = true;
            continue;
        }
        let conn = BackendConn::spawn(&shard.current_primary(), Proto::Resp2, proxy.backend.clone());
        sent.push((conn.send(command.clone()), conn));
    }
    let mut first = None;
    for (reply, _conn) in sent {
        let reply = match reply.await {
            Ok(Ok(reply)) => reply,
            Ok(Err(e)) => error_reply(&format!("ERR memlog: {e}")),
            Err(_) => error_reply("ERR memlog: the request was dropped"),
        };
        if &reply[..] == b"+OK\r\n" {
            return reply;
        }
        first.get_or_insert(reply);
    }
    if skipped {
        return error_reply(
            "UNKILLABLE memlog: the running script may be a journaled write; it must run to completion, \
             since replay from the journal runs it whole",
        );
    }
    first.unwrap_or_else(|| error_reply("NOTBUSY No scripts in execution right now."))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scripts::body::sha1_hex;
    use crate::scripts::pin;
    use crate::units::unix_ms as now_ms;

    fn request(args: &[&str]) -> Request {
        Request::from_args(args)
    }

    fn err(result: Result<Call, Bytes>) -> String {
        match result {
            Err(reply) => String::from_utf8_lossy(&reply).trim_end().to_string(),
            Ok(call) => panic!("accepted: {:?}", call.request.args),
        }
    }

    #[test]
    fn argument_errors_are_redis_texts() {
        let scripts = ScriptCache::default();
        let eval = |args: &[&str]| err(prepare_call(&scripts, &args[0].to_ascii_lowercase(), &request(args)));
        assert_eq!(eval(&["EVAL", "return 1", "x"]), "-ERR value is not an integer or out of range");
        assert_eq!(eval(&["EVAL", "return 1", "+1", "k"]), "-ERR value is not an integer or out of range");
        assert_eq!(eval(&["EVAL", "return 1", "-1"]), "-ERR Number of keys can't be negative");
        assert_eq!(eval(&["EVAL", "return 1", "2", "a"]), "-ERR Number of keys can't be greater than number of args");
        assert_eq!(eval(&["EVALSHA", "abc", "x"]), format!("-{NOSCRIPT}"));
        assert_eq!(eval(&["EVALSHA", &"0".repeat(40), "x"]), "-ERR value is not an integer or out of range");
        assert_eq!(eval(&["EVALSHA", &"0".repeat(40), "0"]), format!("-{NOSCRIPT}"));
        assert_eq!(
            eval(&["EVAL", "return 1", "2", "{a}1", "{b}1"]),
            "-CROSSSLOT Keys in request don't hash to the same slot"
        );
        assert!(eval(&["EVAL", "return redis.call('SPOP', KEYS[1])", "1", "k"]).contains("calls SPOP"));
        assert!(eval(&["EVAL", "return 1", "1", "__memlog:lsn"]).contains("reserved"));
    }

    #[test]
    fn evalsha_becomes_eval_with_the_body() {
        let scripts = ScriptCache::default();
        let body = "return {KEYS[1], ARGV[1]} -- evalsha_becomes_eval_with_the_body";
        let loaded = prepare_call(&scripts, "eval", &request(&["EVAL", body, "1", "{t}k", "v"])).unwrap();
        assert!(loaded.write);
        let sha = sha1_hex(body.as_bytes()).to_uppercase();
        let call = prepare_call(&scripts, "evalsha", &request(&["EVALSHA", &sha, "1", "{t}k", "v"])).unwrap();
        assert!(call.write);
        assert_eq!(call.request.args, request(&["EVAL", body, "1", "{t}k", "v"]).args);
        assert_eq!(call.slot, Some(key_slot(b"{t}k")));
        let ro = prepare_call(&scripts, "evalsha_ro", &request(&["EVALSHA_RO", &sha, "0"])).unwrap();
        assert!(!ro.write);
        assert_eq!(ro.request.args[0], "EVAL_RO");
    }

    #[test]
    fn time_is_pinned_for_writes_only() {
        let scripts = ScriptCache::default();
        let body = "redis.call('SET', KEYS[1], 'v', 'EX', 10) return redis.call('TIME')";
        let before = now_ms();
        let call = prepare_call(&scripts, "eval", &request(&["EVAL", body, "1", "k", "a"])).unwrap();
        let args = &call.request.args;
        assert_eq!(
            (args.len(), &args[0][..], &args[2][..], &args[3][..], &args[4][..]),
            (6, &b"EVAL"[..], &b"1"[..], &b"k"[..], &b"a"[..])
        );
        assert_eq!(args[1], pin::pinned_body(body.as_bytes()));
        let pinned: u64 = std::str::from_utf8(&args[5]).unwrap().parse().unwrap();
        assert!(pinned >= before && pinned <= now_ms());
        let sha = sha1_hex(body.as_bytes());
        let by_sha = prepare_call(&scripts, "evalsha", &request(&["EVALSHA", &sha, "1", "k", "a"])).unwrap();
        assert_eq!((&by_sha.request.args[..5], by_sha.request.args.len()), (&args[..5], 6));
        let read = prepare_call(&scripts, "evalsha_ro", &request(&["EVALSHA_RO", &sha, "1", "k", "a"])).unwrap();
        assert_eq!(read.request.args, request(&["EVAL_RO", body, "1", "k", "a"]).args);
    }

    #[test]
    fn reads_are_not_journaled_and_may_be_nondeterministic() {
        let scripts = ScriptCache::default();
        let time = "#!lua flags=no-writes\nreturn redis.call('TIME')";
        assert!(!prepare_call(&scripts, "eval", &request(&["EVAL", time, "0"])).unwrap().write);
        assert!(
            !prepare_call(&scripts, "eval_ro", &request(&["EVAL_RO", "return redis.call('TIME')", "0"])).unwrap().write
        );
        assert!(prepare_call(&scripts, "fcall", &request(&["FCALL", "f", "0"])).unwrap().write);
        assert!(!prepare_call(&scripts, "fcall_ro", &request(&["FCALL_RO", "f", "0"])).unwrap().write);
        // A bad numkeys runs nothing; shard 0 answers the error Redis gives in its order.
        assert!(!prepare_call(&scripts, "fcall", &request(&["FCALL", "f", "x"])).unwrap().write);
        assert!(!prepare_call(&scripts, "fcall", &request(&["FCALL", "f", "2", "k"])).unwrap().write);
    }
}

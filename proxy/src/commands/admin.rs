//! `MEMLOG …`: memlog's own administration commands, served by the proxy (and, like every
//! command, only to an authenticated client when users are configured):
//! - `MEMLOG TOPOLOGY`: the shards, their primary and replicas with LSNs, liveness and epochs,
//!   as a JSON bulk string (read by `memlog status` and `memlog failover`);
//! - `MEMLOG FAILOVER <shard> [TO <host:port>]`: a graceful, zero-loss switchover; `+OK` once done;
//! - `MEMLOG SNAPSHOT <shard>`: a snapshot now (before maintenance, say), the journal truncated
//!   below the oldest kept; answers the LSN the snapshot holds at least;
//! - `MEMLOG ABORT <shard> <lsn>`: aborts the committed entry the shard's applier is stuck on
//!   (a script that never returns), stopping its primary (`sequencer/abort.rs`).

use tokio::sync::oneshot;

use crate::context::ClientCtx;
use crate::failover::SwitchoverRequest;
use crate::replies::Pending;
use crate::resp::{error_reply, reply, Request};
use crate::shard::Shard;
use crate::status::topology_json;

const USAGE: &str = "ERR memlog: usage: MEMLOG TOPOLOGY | MEMLOG FAILOVER <shard> [TO <host:port>] | \
                     MEMLOG SNAPSHOT <shard> | MEMLOG ABORT <shard> <lsn>";

pub(crate) async fn run(d: &mut ClientCtx, request: &Request) -> Pending {
    let args = &request.args;
    let sub = String::from_utf8_lossy(&args[1]).to_ascii_lowercase();
    match (sub.as_str(), args.len()) {
        ("topology", 2) => {
            let views: Vec<_> = d.proxy.shards.iter().map(|s| s.status.view()).collect();
            let json = topology_json(&views);
            Pending::Ready(reply(d.proto(), |w| {
                w.bulk(json.as_bytes());
            }))
        }
        ("failover", 3 | 5) => failover(d, request),
        ("snapshot", 3) => snapshot(d, request),
        ("abort", 4) => abort(d, request),
        _ => Pending::error(USAGE),
    }
}

/// The shard named by the command's third argument.
fn named_shard<'a>(d: &'a ClientCtx, request: &Request) -> Result<&'a Shard, Pending> {
    let arg = &request.args[2];
    let shard = std::str::from_utf8(arg).ok().and_then(|s| s.parse::<usize>().ok());
    let shard = shard
        .and_then(|s| d.proxy.shards.get(s))
        .ok_or_else(|| Pending::error(&format!("ERR memlog: no shard {}", String::from_utf8_lossy(arg))))?;
    // A refused shard's node stays as the operator found it: no snapshot, abort or failover.
    match shard.refusal_reply() {
        Some(refusal) => Err(Pending::Ready(refusal)),
        None => Ok(shard),
    }
}

/// `MEMLOG SNAPSHOT <shard>`
fn snapshot(d: &ClientCtx, request: &Request) -> Pending {
    let shard = match named_shard(d, request) {
        Ok(shard) => shard,
        Err(error) => return error,
    };
    let Some(snapshots) = shard.snapshots.clone() else {
        return Pending::error("ERR memlog: snapshots are not configured (no [snapshot] table)");
    };
    let (status, target, proto) = (shard.status.clone(), shard.target.clone(), d.proto());
    Pending::Deferred(Box::pin(async move {
        match snapshots.take_now(&status, &target).await {
            Ok(record) => reply(proto, |w| {
                w.int(record.lsn as i64);
            }),
            Err(e) => error_reply(&format!("ERR memlog: snapshot failed: {e}")),
        }
    }))
}

/// `MEMLOG ABORT <shard> <lsn>`
fn abort(d: &ClientCtx, request: &Request) -> Pending {
    let shard = match named_shard(d, request) {
        Ok(shard) => shard,
        Err(error) => return error,
    };
    let Some(lsn) = std::str::from_utf8(&request.args[3]).ok().and_then(|s| s.parse::<u64>().ok()) else {
        return Pending::error("ERR memlog: the entry to abort is a journal LSN (a positive integer)");
    };
    let (sequencer, others, proto) = (shard.sequencer.clone(), shard.current_replicas(), d.proto());
    Pending::Deferred(Box::pin(async move {
        match sequencer.abort_stuck_entry(lsn, others).await {
            Ok(done) => reply(proto, |w| {
                w.bulk(done.as_bytes());
            }),
            Err(e) => error_reply(&e),
        }
    }))
}

/// `MEMLOG FAILOVER <shard> [TO <host:port>]`
fn failover(d: &ClientCtx, request: &Request) -> Pending {
    let args = &request.args;
    let shard = match named_shard(d, request) {
        Ok(shard) => shard,
        Err(error) => return error,
    };
    let to = match args.get(3) {
        None => None,
        Some(kw) if kw.eq_ignore_ascii_case(b"to") => Some(String::from_utf8_lossy(&args[4]).into_owned()),
        Some(_) => return Pending::error(USAGE),
    };
    let (done, outcome) = oneshot::channel();
    if shard.switchover.send(SwitchoverRequest { to, done }).is_err() {
        return Pending::error("ERR memlog: the shard's failover controller is not running");
    }
    let proto = d.proto();
    Pending::Deferred(Box::pin(async move {
        match outcome.await {
            Ok(Ok(_)) => reply(proto, |w| {
                w.simple("OK");
            }),
            Ok(Err(message)) => error_reply(&message),
            Err(_) => error_reply("ERR memlog: the failover controller stopped"),
        }
    }))
}

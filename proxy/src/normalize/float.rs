//! INCRBYFLOAT / HINCRBYFLOAT: the result is long-double arithmetic formatted by Redis, so the
//! sequencer lets Redis compute it on a scratch copy and journals the value, as Redis
//! propagates these commands (`SET k v KEEPTTL`, `HSET k f v`).
//!
//! The probe is one MULTI/EXEC block: `DEL scratch`, `COPY k scratch`, the increment on
//! scratch, `DEL scratch`. It is atomic (nothing runs between reading the value and computing
//! on it), leaves the dataset as it was, and reproduces every outcome of the real command:
//! a missing key (COPY copies nothing, the increment starts from 0), a wrong type (COPY copies
//! it, the increment answers WRONGTYPE), a value that is not a float, a NaN/Inf result. A Lua
//! script would do the same but adds script-cache and `lua-time-limit` concerns for no gain.
//! The replicas of the primary see the block too (net effect nothing).

use bytes::Bytes;

use super::args::word;
use super::replies::bulk;
use super::{dry_run, dry_run_reply, scratch_key, unresolved, Plan, Resolved};

/// INCRBYFLOAT k x → SET k <result> KEEPTTL; the client gets the result.
pub(super) fn incrbyfloat(args: &[Bytes]) -> Plan {
    let key = args[1].clone();
    let probe = dry_run(&key, vec![word("INCRBYFLOAT"), scratch_key(), args[2].clone()]);
    Plan::probe(probe, move |replies| resolve(replies, |value| vec![word("SET"), key, value, word("KEEPTTL")]))
}

/// HINCRBYFLOAT k f x → HSET k f <result>; the client gets the result.
pub(super) fn hincrbyfloat(args: &[Bytes]) -> Plan {
    let (key, field) = (args[1].clone(), args[2].clone());
    let probe = dry_run(&key, vec![word("HINCRBYFLOAT"), scratch_key(), field.clone(), args[3].clone()]);
    Plan::probe(probe, move |replies| resolve(replies, |value| vec![word("HSET"), key, field, value]))
}

/// The value the dry run computed becomes the journaled command; an error answers the client
/// and changes nothing.
fn resolve(replies: &[Bytes], command: impl FnOnce(Bytes) -> Vec<Bytes>) -> Resolved {
    let Some(result) = dry_run_reply(replies) else { return unresolved(replies) };
    match bulk(&result) {
        Some(value) => Resolved { commands: vec![command(value)], reply: Some(result) },
        None => Resolved { commands: Vec::new(), reply: Some(result) },
    }
}

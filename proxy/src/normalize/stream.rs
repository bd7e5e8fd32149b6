//! Streams: `XADD … *` gets the ID Redis would assign, XCLAIM/XAUTOCLAIM become the XCLAIM
//! forms Redis propagates (`streamPropagateXCLAIM`: min-idle 0, an absolute TIME), which do
//! not depend on the clock when replayed.

use std::collections::HashSet;

use bytes::Bytes;

use super::args::{int, is, number, word, StreamId};
use super::replies::{array, bulk, integer, is_error};
use super::{dry_run, dry_run_reply, scratch_key, unresolved, Plan, Resolved};

/// Where XADD's ID argument is, walking the options as `streamParseAddOrTrimArgsOrReply`
/// does, if it is `*`. An explicit ID (also `<ms>-*`, which depends only on the stream) and
/// any error Redis finds while parsing keep the command deterministic as sent.
fn auto_id_position(args: &[Bytes]) -> Option<usize> {
    let mut i = 2;
    while i < args.len() {
        let more = args.len() - 1 - i;
        let opt = &args[i];
        if opt.first() == Some(&b'*') && (opt.len() == 1 || opt[1] == 0) {
            return Some(i);
        } else if (is(opt, "MAXLEN") || is(opt, "MINID")) && more > 0 {
            let next = &args[i + 1];
            if more >= 2 && (is(next, "~") || is(next, "=")) {
                i += 1;
            }
            i += 1;
        } else if is(opt, "LIMIT") && more > 0 {
            i += 1;
        } else if !is(opt, "NOMKSTREAM") {
            return None;
        }
        i += 1;
    }
    None
}

/// XADD k [opts] * f v… → XADD k [opts] <id> f v…, with the ID `streamNextID` gives: the
/// batch time if it is past the stream's last generated ID (XINFO STREAM's, which XDEL does
/// not lower), else that ID plus one. Approximate trimming (`~`) stays as sent: see the module
/// documentation of `normalize`.
pub(super) fn xadd(args: &[Bytes], now_ms: u64) -> Plan {
    let Some(id_at) = auto_id_position(args) else { return Plan::AsIs };
    let original = args.to_vec();
    Plan::probe(vec![vec![word("XINFO"), word("STREAM"), args[1].clone()]], move |replies| {
        // No stream (or the wrong type: the XADD itself then answers WRONGTYPE): from 0-0.
        let last = last_generated_id(&replies[0]).unwrap_or(StreamId { ms: 0, seq: 0 });
        let id = if now_ms > last.ms { Some(StreamId { ms: now_ms, seq: 0 }) } else { last.next() };
        let mut command = original;
        // An exhausted stream keeps `*`: Redis refuses it before choosing an ID, deterministically.
        if let Some(id) = id {
            command[id_at] = id.to_arg();
        }
        Resolved { commands: vec![command], reply: None }
    })
}

fn last_generated_id(info: &Bytes) -> Option<StreamId> {
    let fields = array(info)?;
    let at = fields.chunks(2).position(|pair| bulk(&pair[0]).as_deref() == Some(b"last-generated-id"))?;
    StreamId::parse_strict(&bulk(fields.get(at * 2 + 1)?)?)
}

/// XCLAIM as parsed by `xclaimCommand`.
struct Claim {
    min_idle: i64,
    /// Arguments 5.. that parse as IDs.
    ids: Vec<(StreamId, Bytes)>,
    delivery_time: Option<i64>,
    retry_count: Option<Bytes>,
    force: bool,
    justid: bool,
    last_id: Option<Bytes>,
}

fn parse_claim(args: &[Bytes], now: i64) -> Option<Claim> {
    let min_idle = int(&args[4])?.max(0);
    let mut j = 5;
    let mut ids = Vec::new();
    while let Some(id) = args.get(j).and_then(|a| StreamId::parse_strict(a)) {
        ids.push((id, args[j].clone()));
        j += 1;
    }
    let mut claim =
        Claim { min_idle, ids, delivery_time: None, retry_count: None, force: false, justid: false, last_id: None };
    while j < args.len() {
        let opt = &args[j];
        let next = args.get(j + 1);
        if is(opt, "FORCE") {
            claim.force = true;
        } else if is(opt, "JUSTID") {
            claim.justid = true;
        } else if is(opt, "IDLE") && next.is_some() {
            claim.delivery_time = Some(now.wrapping_sub(int(next?)?));
            j += 1;
        } else if is(opt, "TIME") && next.is_some() {
            claim.delivery_time = Some(int(next?)?);
            j += 1;
        } else if is(opt, "RETRYCOUNT") && next.is_some() {
            int(next?)?;
            claim.retry_count = next.cloned();
            j += 1;
        } else if is(opt, "LASTID") && next.is_some() {
            StreamId::parse_strict(next?)?;
            claim.last_id = next.cloned();
            j += 1;
        } else {
            return None;
        }
        j += 1;
    }
    Some(claim)
}

/// The XCLAIM Redis propagates for claiming `ids` at `time`: min-idle 0, so the choice does not
/// depend on the clock at replay.
fn claim_command(args: &[Bytes], ids: impl IntoIterator<Item = Bytes>, time: i64, claim: &Claim) -> Vec<Bytes> {
    let mut out = vec![word("XCLAIM"), args[1].clone(), args[2].clone(), args[3].clone(), word("0")];
    out.extend(ids);
    out.extend([word("TIME"), number(time)]);
    if let Some(count) = &claim.retry_count {
        out.extend([word("RETRYCOUNT"), count.clone()]);
    }
    if claim.force {
        out.push(word("FORCE"));
    }
    if claim.justid {
        out.push(word("JUSTID"));
    }
    if let Some(id) = &claim.last_id {
        out.extend([word("LASTID"), id.clone()]);
    }
    out
}

/// XCLAIM k g c min-idle ids… [IDLE ms|TIME ms] [RETRYCOUNT n] [FORCE] [JUSTID] [LASTID id]
/// → the same with min-idle 0 and TIME <abs> (IDLE, a missing time, and a time Redis would
/// clamp all become the clamped absolute time). With min-idle > 0 the sequencer first asks
/// `XPENDING k g id id 1` for each ID and drops the IDs that are not idle long enough yet
/// (and, as Redis does, repeats of an ID already claimed in this command).
pub(super) fn xclaim(args: &[Bytes], now: i64) -> Plan {
    let Some(claim) = parse_claim(args, now) else { return Plan::AsIs };
    // xclaimCommand: "if the delivery time is bogus (< 0 or in the future), use now".
    let time = claim.delivery_time.filter(|t| (0..=now).contains(t)).unwrap_or(now);
    let mut seen = HashSet::new();
    let distinct: Vec<(StreamId, Bytes)> = claim.ids.iter().filter(|(id, _)| seen.insert(*id)).cloned().collect();
    if claim.min_idle == 0 || distinct.is_empty() {
        return Plan::Rewrite(claim_command(args, claim.ids.iter().map(|(_, raw)| raw.clone()), time, &claim));
    }
    let probe = distinct
        .iter()
        .map(|(_, raw)| vec![word("XPENDING"), args[1].clone(), args[2].clone(), raw.clone(), raw.clone(), word("1")])
        .collect();
    let original = args.to_vec();
    Plan::probe(probe, move |replies| {
        if replies.iter().any(|r| is_error(r)) {
            // No such key or group, or the wrong type: XCLAIM fails the same way, changing nothing.
            return Resolved { commands: vec![original], reply: None };
        }
        let mut claimable = Vec::new();
        for ((_, raw), reply) in distinct.iter().zip(replies) {
            let idle =
                array(reply).and_then(|entries| entries.first().and_then(array)).and_then(|e| integer(e.get(2)?));
            // Not pending: nothing to compare (FORCE may create it, a deleted entry is dropped).
            if idle.is_none_or(|idle| idle >= claim.min_idle) {
                claimable.push(raw.clone());
            }
        }
        Resolved { commands: vec![claim_command(&original, claimable, time, &claim)], reply: None }
    })
}

/// XAUTOCLAIM k g c min-idle start [COUNT n] [JUSTID] → the XCLAIM of what it claims and of
/// the deleted entries it drops from the PEL, at TIME now. Which entries it takes depends on
/// the clock and on the PEL's order and attempt budget, so the probe runs the command itself on
/// a scratch copy of the stream (COPY keeps the groups and their PELs): its reply is the
/// client's, and its IDs are what the journaled XCLAIM names. Cost: COPY is O(stream size).
pub(super) fn xautoclaim(args: &[Bytes], now: i64) -> Plan {
    let mut on_scratch = args.to_vec();
    on_scratch[1] = scratch_key();
    let probe = dry_run(&args[1], on_scratch);
    let original = args.to_vec();
    Plan::probe(probe, move |replies| {
        let Some(result) = dry_run_reply(replies) else { return unresolved(replies) };
        let Some(parts) = array(&result).filter(|p| p.len() == 3) else {
            // An error (syntax, wrong type, no group): the original fails the same way without
            // changing anything, and names the client's key in its message.
            return Resolved { commands: vec![original], reply: None };
        };
        let justid = original[6..].iter().any(|a| is(a, "JUSTID"));
        let claimed = array(&parts[1]).unwrap_or_default();
        let claimed_ids = claimed.iter().filter_map(|c| if justid { bulk(c) } else { bulk(array(c)?.first()?) });
        let deleted = array(&parts[2]).unwrap_or_default();
        let ids: Vec<Bytes> = claimed_ids.chain(deleted.iter().filter_map(bulk)).collect();
        let commands = if ids.is_empty() {
            Vec::new()
        } else {
            let claim = Claim {
                min_idle: 0,
                ids: Vec::new(),
                delivery_time: None,
                retry_count: None,
                force: false,
                justid,
                last_id: None,
            };
            vec![claim_command(&original, ids, now, &claim)]
        };
        Resolved { commands, reply: Some(result) }
    })
}

//! XREADGROUP `>`: which entries it delivers, the group's last-delivered-id, its entries-read
//! and the consumers all follow from the state, so replaying the call reproduces them; only the
//! delivery time of each new PEL entry comes from the clock. Redis propagates one XCLAIM per
//! entry instead (`streamPropagateXCLAIM`), whose LASTID does not carry entries-read; memlog
//! journals the call itself (without BLOCK) followed by `XCLAIM k g c 0 <ids> TIME now JUSTID`,
//! which pins the delivery times and changes nothing else.
//!
//! The probe learns the IDs without reading as the group: a read-only script per stream returns
//! the entries after the group's last-delivered-id (XINFO GROUPS, then XRANGE), which is what
//! `>` serves; the client's reply is built from them. History reads (an explicit ID), NOACK
//! (no PEL entries), a stream named twice, and anything Redis refuses stay as sent: see the
//! module documentation of `normalize` for what that leaves to the replaying clock.

use bytes::Bytes;

use super::args::{int, is, number, word};
use super::replies::{array, array_of, bulk, bulk_of, NIL_ARRAY};
use super::{Plan, Resolved};

/// Entries `>` would serve from stream KEYS[1] to group ARGV[1], at most ARGV[2] (0: all);
/// nil if there is no such group.
const UNREAD_ENTRIES: &str = r"
for _, group in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local info = {}
  for i = 1, #group, 2 do info[group[i]] = group[i + 1] end
  if info['name'] == ARGV[1] then
    local range = {'XRANGE', KEYS[1], '(' .. info['last-delivered-id'], '+'}
    if ARGV[2] ~= '0' then
      table.insert(range, 'COUNT')
      table.insert(range, ARGV[2])
    end
    return redis.call(unpack(range))
  end
end
return false
";

/// A new-entries read as `xreadCommand` parses it.
struct GroupRead {
    /// The command without its BLOCK option: the sequencer hands it on once data is there.
    without_block: Vec<Bytes>,
    group: Bytes,
    consumer: Bytes,
    count: i64,
    keys: Vec<Bytes>,
}

fn parse(args: &[Bytes]) -> Option<GroupRead> {
    let (mut group, mut count, mut noack) = (None, 0, false);
    let mut without_block = vec![args[0].clone()];
    let mut i = 1;
    loop {
        let opt = args.get(i)?; // no STREAMS: Redis's syntax error
        let more = args.len() - 1 - i;
        let width = if is(opt, "BLOCK") && more > 0 {
            int(&args[i + 1]).filter(|ms| *ms >= 0)?;
            2
        } else if is(opt, "COUNT") && more > 0 {
            count = int(&args[i + 1])?.max(0);
            2
        } else if is(opt, "STREAMS") && more > 0 {
            break;
        } else if is(opt, "GROUP") && more >= 2 {
            group = Some((args[i + 1].clone(), args[i + 2].clone()));
            3
        } else if is(opt, "NOACK") {
            noack = true;
            1
        } else {
            return None;
        };
        if !is(opt, "BLOCK") {
            without_block.extend_from_slice(&args[i..i + width]);
        }
        i += width;
    }
    without_block.extend_from_slice(&args[i..]);
    let streams = &args[i + 1..];
    let (group, consumer) = group?;
    if noack || streams.len() % 2 != 0 {
        return None;
    }
    let (keys, ids) = streams.split_at(streams.len() / 2);
    let distinct = keys.iter().enumerate().all(|(n, k)| !keys[..n].contains(k));
    if !distinct || !ids.iter().all(|id| id.as_ref() == b">") {
        return None;
    }
    Some(GroupRead { without_block, group, consumer, count, keys: keys.to_vec() })
}

/// XREADGROUP GROUP g c [COUNT n] [BLOCK ms] STREAMS k… >… → the same without BLOCK, then
/// `XCLAIM k g c 0 <delivered ids> TIME now JUSTID` per stream that delivers; the client gets
/// the entries (RESP2 array of `[key, entries]`; RESP3 clients expect a map) or, if no stream
/// has new entries, the nil array (what a BLOCK timeout answers) and nothing is journaled. A
/// probe error (no such key or group, wrong type) journals the command as sent: Redis refuses
/// it the same way, changing nothing.
pub(super) fn xreadgroup(args: &[Bytes], now: i64) -> Plan {
    let Some(read) = parse(args) else { return Plan::AsIs };
    let count = number(read.count);
    let probe = read
        .keys
        .iter()
        .map(|key| {
            let (script, group) = (Bytes::from_static(UNREAD_ENTRIES.as_bytes()), read.group.clone());
            vec![word("EVAL_RO"), script, word("1"), key.clone(), group, count.clone()]
        })
        .collect();
    let original = args.to_vec();
    Plan::probe(probe, move |replies| {
        let mut served = Vec::new();
        let mut commands = vec![read.without_block];
        for (key, reply) in read.keys.iter().zip(replies) {
            let Some(entries) = array(reply) else {
                return Resolved { commands: vec![original], reply: None };
            };
            let ids: Vec<Bytes> = entries.iter().filter_map(|e| bulk(array(e)?.first()?)).collect();
            if ids.is_empty() {
                continue;
            }
            served.push(array_of(&[&bulk_of(key), reply]));
            let mut claim = vec![word("XCLAIM"), key.clone(), read.group.clone(), read.consumer.clone(), word("0")];
            claim.extend(ids);
            claim.extend([word("TIME"), number(now), word("JUSTID")]);
            commands.push(claim);
        }
        if served.is_empty() {
            return Resolved { commands: Vec::new(), reply: Some(Bytes::from_static(NIL_ARRAY)) };
        }
        let reply = array_of(&served.iter().map(|s| s.as_ref()).collect::<Vec<_>>());
        Resolved { commands, reply: Some(reply) }
    })
}

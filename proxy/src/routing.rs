//! Where a client's command goes: the shard(s) its keys live on, and on which connection, so
//! that the client's commands to one shard take effect in the order it sent them. Writes go
//! through the shard's sequencer, reads to the shard's read connection (or behind the client's
//! pending writes), blocking commands are parked in the sequencer, multi-key commands that span
//! shards are split and merged.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use tokio::sync::oneshot;

use crate::context::ClientCtx;
use crate::replies::{Lane, Pending};
use crate::resp::{encode_command, Proto, Request};
use crate::router::key_slot;
use crate::sequencer::{Blocked, SequencerOp, SequencerRequest};
use crate::table::CommandInfo;

/// Multi-key commands that may span shards: run per shard and merged, as a Redis Cluster client
/// library would do it, but atomically per shard.
#[derive(Clone, Copy)]
pub(crate) enum SplitMerge {
    /// MGET: values back in key order.
    Values,
    /// DEL, UNLINK, EXISTS, TOUCH: the sum of the per-shard counts.
    Count,
}

/// Where a command's keys live.
pub(crate) enum Placement {
    /// No keys.
    Keyless,
    /// One shard (one slot, in cluster-compatible mode).
    Shard(usize),
    /// Several shards (or slots, in cluster-compatible mode).
    Spans,
}

impl ClientCtx {
    /// Where the keys at `keys` live.
    pub(crate) fn placement(&self, request: &Request, keys: &[usize]) -> Placement {
        let Some(&first) = keys.first() else { return Placement::Keyless };
        // One shard and no cluster client to answer CROSSSLOT to (a sidecar, a standalone
        // endpoint): every key is on shard 0, no need to hash them (~3% of the proxy's CPU at
        // pipeline 16).
        if self.proxy.slots.shard_count() == 1 && !self.proxy.cfg.cluster_compat {
            return Placement::Shard(0);
        }
        let first_slot = key_slot(&request.args[first]);
        let shard = self.proxy.slots.shard_of_slot(first_slot);
        let mut spans_slots = false;
        let mut spans_shards = false;
        for &k in &keys[1..] {
            let slot = key_slot(&request.args[k]);
            spans_slots |= slot != first_slot;
            spans_shards |= self.proxy.slots.shard_of_slot(slot) != shard;
        }
        if spans_shards || self.proxy.cfg.cluster_compat && spans_slots {
            Placement::Spans
        } else {
            Placement::Shard(shard)
        }
    }

    /// Parks a blocking command in the shard's sequencer: served when a write gives it data.
    pub(crate) async fn block(
        &mut self,
        shard: usize,
        request: &Request,
        info: &Arc<CommandInfo>,
        keys: &[usize],
    ) -> Pending {
        if self.lanes.in_flight(shard, Lane::Read) > 0 {
            self.lanes.wait_reads_done(shard).await;
        }
        let timeout = blocking_timeout(info, request).flatten();
        let keys = keys.iter().map(|&k| request.args[k].clone()).collect();
        let (tx, rx) = oneshot::channel();
        let deadline = timeout.map(|t| Instant::now() + t);
        let blocked = Blocked::new(self.client.clone(), self.proto(), request.clone(), keys, deadline, tx);
        self.blocks = true;
        // Known to CLIENT UNBLOCK from now on, before the sequencer first tries it.
        self.proxy.shards[shard].sequencer.blocked.insert(self.client.id, blocked.clone());
        let write = SequencerRequest {
            proto: self.proto(),
            db: self.client.db(),
            client: self.client.id,
            op: SequencerOp::Block(blocked),
            reply: dropped(),
        };
        self.proxy.shards[shard].sequencer.submit(write).await;
        let (client, lane) = (self.client.clone(), self.lanes.enter(shard, Lane::Apply));
        Pending::Deferred(Box::pin(async move {
            let reply = crate::replies::backend_reply(rx.await);
            client.blocked.store(false, Ordering::Relaxed);
            drop(lane);
            reply
        }))
    }

    pub(crate) async fn key_positions(&self, request: &Request, info: &CommandInfo) -> Option<Vec<usize>> {
        if !info.needs_getkeys {
            return info.key_positions(&request.args);
        }
        // Key specs cannot find every key of this command (e.g. SORT … STORE): ask Redis.
        let mut args: Vec<&[u8]> = vec![b"COMMAND", b"GETKEYS"];
        args.extend(request.args.iter().map(|a| &a[..]));
        let reply = self.proxy.shards[0].read_conn(Proto::Resp2, self.client.id).call(&args).await.ok()?;
        let keys = crate::resp::decode_resp2(&reply).ok()?;
        let redis_protocol::resp2::types::BytesFrame::Array(keys) = keys else { return None };
        // GETKEYS names the keys; map each back to its first unused position.
        let mut used = vec![false; request.args.len()];
        let mut positions = Vec::with_capacity(keys.len());
        for key in keys {
            let redis_protocol::resp2::types::BytesFrame::BulkString(key) = key else { continue };
            if let Some(pos) = (1..request.args.len()).find(|&i| !used[i] && request.args[i] == key) {
                used[pos] = true;
                positions.push(pos);
            }
        }
        Some(positions)
    }

    /// Sends one request to `shard`, keeping this client's commands to the shard in order: a
    /// write waits for the client's reads in flight there; a read issued while the client's
    /// writes are in flight rides the apply connection behind them.
    pub(crate) async fn send_to_shard(&mut self, shard: usize, request: Request, write: bool) -> Pending {
        let lane = if write || self.lanes.in_flight(shard, Lane::Apply) > 0 { Lane::Apply } else { Lane::Read };
        if lane == Lane::Apply && self.lanes.in_flight(shard, Lane::Read) > 0 {
            self.lanes.wait_reads_done(shard).await;
        }
        if lane == Lane::Apply {
            let op = if write {
                SequencerOp::Write { request, command: self.command.clone() }
            } else {
                SequencerOp::Read(request)
            };
            return self.submit_to_sequencer(shard, op).await;
        }
        let guard = self.lanes.enter(shard, lane);
        let (tx, rx) = oneshot::channel();
        let conn = self.proxy.shards[shard].read_conn(self.proto(), self.client.id);
        conn.send_when_room_in_db(self.client.db(), request.raw, tx).await;
        Pending::Backend { rx, _lane: Some(guard) }
    }

    /// Hands `op` to the shard's sequencer, after this client's reads in flight there — and,
    /// for what may add data, once the shard's evictor has made room (`ShardMemory::room`).
    pub(crate) async fn submit_to_sequencer(&mut self, shard: usize, op: SequencerOp) -> Pending {
        if self.lanes.in_flight(shard, Lane::Read) > 0 {
            self.lanes.wait_reads_done(shard).await;
        }
        if op.may_add_data() {
            self.proxy.shards[shard].memory.room().await;
        }
        let guard = self.lanes.enter(shard, Lane::Apply);
        let (tx, rx) = oneshot::channel();
        self.proxy.shards[shard]
            .sequencer
            .submit(SequencerRequest {
                proto: self.proto(),
                db: self.client.db(),
                client: self.client.id,
                op,
                reply: tx,
            })
            .await;
        Pending::Backend { rx, _lane: Some(guard) }
    }

    /// Runs a splittable multi-key command on each shard its keys live in, then merges.
    pub(crate) async fn split(&mut self, request: &Request, keys: &[usize], merge: SplitMerge, write: bool) -> Pending {
        let mut shard_keys: Vec<(usize, Vec<Bytes>)> = Vec::new();
        // For each key, in request order: (part, index within the part).
        let mut placement = Vec::with_capacity(keys.len());
        for &k in keys {
            let key = &request.args[k];
            let shard = self.proxy.slots.shard_of_key(key);
            let part = match shard_keys.iter().position(|(s, _)| *s == shard) {
                Some(part) => part,
                None => {
                    shard_keys.push((shard, Vec::new()));
                    shard_keys.len() - 1
                }
            };
            placement.push((part, shard_keys[part].1.len()));
            shard_keys[part].1.push(key.clone());
        }
        let mut parts = Vec::with_capacity(shard_keys.len());
        for (shard, part_keys) in shard_keys {
            let mut args = Vec::with_capacity(part_keys.len() + 1);
            args.push(request.args[0].clone());
            args.extend(part_keys);
            parts.push(self.send_to_shard(shard, Request { raw: encode_command(&args), args }, write).await);
        }
        let proto = self.proto();
        let merge: Box<dyn FnOnce(Vec<Bytes>) -> Bytes + Send> = match merge {
            SplitMerge::Count => Box::new(move |replies| merge_counts(proto, &replies)),
            SplitMerge::Values => Box::new(move |replies| merge_values(proto, &replies, &placement)),
        };
        Pending::Merge { parts, merge }
    }
}

/// The reply of a command sent to every shard: the first error (a shard that refused it, e.g. a
/// shard refused at start-up), else shard 0's reply.
pub(crate) fn first_error_else_first(replies: Vec<Bytes>) -> Bytes {
    let error = replies.iter().position(|reply| reply.starts_with(b"-"));
    replies.into_iter().nth(error.unwrap_or(0)).unwrap_or_else(|| crate::resp::error_reply("ERR memlog: no shards"))
}

/// Sums integer replies (`:n`).
pub(crate) fn merge_counts(proto: Proto, replies: &[Bytes]) -> Bytes {
    let mut total = 0i64;
    for reply in replies {
        match reply.strip_prefix(b":").and_then(|r| crate::resp::parse_int(r.strip_suffix(b"\r\n").unwrap_or(r))) {
            Some(n) => total += n,
            None => return crate::resp::error_reply("ERR memlog: unexpected reply from a shard while merging counts"),
        }
    }
    crate::resp::reply(proto, |w| {
        w.int(total);
    })
}

/// Reassembles per-shard arrays into one array in the original key order.
fn merge_values(proto: Proto, replies: &[Bytes], placement: &[(usize, usize)]) -> Bytes {
    let mut parts = Vec::with_capacity(replies.len());
    for reply in replies {
        match crate::resp::array_items(reply) {
            Some(items) => parts.push(items),
            None => return crate::resp::error_reply("ERR memlog: unexpected reply from a shard while merging values"),
        }
    }
    let mut out = BytesMut::new();
    let mut w = crate::resp::ReplyWriter::new(proto);
    w.array(placement.len());
    out.extend_from_slice(&w.finish());
    for &(part, index) in placement {
        match parts[part].get(index) {
            Some(item) => out.extend_from_slice(item),
            None => return crate::resp::error_reply("ERR memlog: a shard returned too few values"),
        }
    }
    out.freeze()
}

/// A reply sender whose reply nobody awaits.
fn dropped() -> crate::backend::ReplySender {
    oneshot::channel().0
}

/// For a command that blocks as sent: `Some(None)` blocks forever, `Some(Some(t))` for `t`;
/// None for commands that do not block (or whose timeout Redis refuses: it answers the error).
pub(crate) fn blocking_timeout(info: &CommandInfo, request: &Request) -> Option<Option<std::time::Duration>> {
    let args = &request.args;
    let seconds = |arg: &Bytes| {
        let ms = crate::normalize::timeout_ms(arg)?;
        Some((ms > 0).then(|| std::time::Duration::from_millis(ms)))
    };
    match info.name.as_str() {
        "blpop" | "brpop" | "bzpopmin" | "bzpopmax" | "brpoplpush" | "blmove" => seconds(args.last()?),
        "blmpop" | "bzmpop" => seconds(args.get(1)?),
        "xread" | "xreadgroup" => {
            let at = args.iter().position(|a| a.eq_ignore_ascii_case(b"block"))?;
            let ms: i64 = std::str::from_utf8(args.get(at + 1)?).ok()?.parse().ok()?;
            match ms {
                0 => Some(None),
                ms if ms > 0 => Some(Some(std::time::Duration::from_millis(ms as u64))),
                _ => None,
            }
        }
        _ => None,
    }
}

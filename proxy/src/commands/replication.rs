//! `WAIT`, answered for memlog: writes are replicated to the journal, not to Redis replicas.

use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::oneshot;

use crate::context::ClientCtx;
use crate::replies::Pending;
use crate::resp::{parse_int, Request};
use crate::sequencer::{Sequencer, SequencerOp, SequencerRequest};

/// How often WAIT looks again while fewer journal nodes than asked hold the journal.
const RECHECK: Duration = Duration::from_millis(50);

/// `WAIT numreplicas timeout`: the number of journal nodes that hold the journal (the least
/// over the shards), counted once the client's earlier commands have been answered — an
/// acknowledged write is already on the journal's ack quorum. As Redis does, WAIT returns
/// as soon as `numreplicas` is reached, else when `timeout` ms have passed (0: never).
pub(crate) async fn wait(d: &mut ClientCtx, request: &Request) -> Pending {
    let (Some(wanted), Some(timeout)) = (parse_int(&request.args[1]), parse_int(&request.args[2])) else {
        return Pending::error("ERR value is not an integer or out of range");
    };
    if timeout < 0 {
        return Pending::error("ERR timeout is negative");
    }
    let deadline = (timeout > 0).then(|| Instant::now() + Duration::from_millis(timeout as u64));
    // A shard refused at start-up journals nothing, so it holds none of the client's writes.
    let serving = d.proxy.shards.iter().filter(|s| s.refusal().is_none());
    let sequencers: Vec<Sequencer> = serving.map(|s| s.sequencer.clone()).collect();
    let proto = d.proto();
    Pending::Deferred(Box::pin(async move {
        loop {
            // No shard serving: none holds a write of the client's.
            let mut least = if sequencers.is_empty() { 0 } else { i64::MAX };
            for sequencer in &sequencers {
                let (reply, count) = oneshot::channel();
                sequencer.submit(SequencerRequest { proto, db: 0, client: 0, op: SequencerOp::Wait, reply }).await;
                let count = match count.await {
                    Ok(Ok(frame)) => frame.strip_prefix(b":").and_then(|n| parse_int(n.strip_suffix(b"\r\n")?)),
                    _ => None,
                };
                least = least.min(count.unwrap_or(0));
            }
            let now = Instant::now();
            if least >= wanted || deadline.is_some_and(|d| now >= d) {
                return Bytes::from(format!(":{least}\r\n"));
            }
            let pause = deadline.map_or(RECHECK, |d| RECHECK.min(d - now));
            tokio::time::sleep(pause).await;
        }
    }))
}

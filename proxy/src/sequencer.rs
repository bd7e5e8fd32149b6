//! The shard sequencer: the one place a shard's writes pass through. Writes queued while the
//! previous batch is being handed on form the next batch (group commit), and every batch goes
//! out, in arrival order, on the shard's ordered apply connection; replies come back on each
//! write's own channel, in that order. The durable-writes issue adds the journal append here,
//! between taking a batch and applying it: this is the seam it plugs into.

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::backend::{BackendConn, BackendError, BackendOptions, ReplySender};
use crate::resp::Proto;

/// Most writes taken into one batch.
const MAX_BATCH: usize = 4096;

/// A write (or a read riding behind its client's writes) waiting for its shard's order.
pub struct Write {
    pub proto: Proto,
    pub request: Bytes,
    pub reply: ReplySender,
}

/// Handle to a shard's sequencer task.
#[derive(Clone)]
pub struct Sequencer {
    queue: mpsc::UnboundedSender<Write>,
    primary: String,
}

impl Sequencer {
    pub fn spawn(shard: usize, primary: &str, opts: BackendOptions) -> Sequencer {
        let (queue, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(shard, primary.to_string(), opts, rx));
        Sequencer { queue, primary: primary.to_string() }
    }

    pub fn submit(&self, write: Write) {
        if let Err(mpsc::error::SendError(write)) = self.queue.send(write) {
            let _ = write.reply.send(Err(BackendError::Lost { addr: self.primary.clone() }));
        }
    }
}

async fn run(shard: usize, primary: String, opts: BackendOptions, mut queue: mpsc::UnboundedReceiver<Write>) {
    // One apply connection per protocol, since a reply's shape depends on the protocol the
    // connection speaks; the RESP3 one opens only when a RESP3 client first writes.
    let apply2 = BackendConn::spawn(&primary, Proto::Resp2, opts);
    let mut apply3: Option<BackendConn> = None;
    let mut last_proto = Proto::Resp2;
    let batch_size = metrics::histogram!("memlog_sequencer_batch_size", "shard" => shard.to_string());
    let mut batch = Vec::with_capacity(64);
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        batch_size.record(batch.len() as f64);
        for write in batch.drain(..) {
            if write.proto != last_proto {
                // Switching connections: let everything sent on the other one be applied
                // first, so Redis applies writes in exactly the sequencer's order.
                let previous = if last_proto == Proto::Resp2 { Some(&apply2) } else { apply3.as_ref() };
                if let Some(conn) = previous {
                    let _ = conn.barrier().await;
                }
                last_proto = write.proto;
            }
            let conn = match write.proto {
                Proto::Resp2 => &apply2,
                Proto::Resp3 => apply3.get_or_insert_with(|| BackendConn::spawn(&primary, Proto::Resp3, opts)),
            };
            conn.send_to(write.request, write.reply);
        }
    }
}

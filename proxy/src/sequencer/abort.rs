//! `MEMLOG ABORT <shard> <lsn>`: the way out of a committed entry Redis never finishes — a
//! script that writes and then never returns holds the primary busy for ever (no command but
//! `SHUTDOWN NOSAVE` interrupts it once it wrote), and every replay of the entry would hang the
//! same way, so without this the shard could never be rebuilt.
//!
//! The applier does the abort itself, between two attempts at the entry it is stuck on, so no
//! apply races with it: it stops the primary with `SHUTDOWN NOSAVE NOW` (what the entry did
//! there is lost with it), then asks every other node of the shard which journal prefix it
//! holds. If one holds the entry, Redis finished it after all (and replicated it) and nothing is
//! aborted. Otherwise the abort is recorded in the metadata store before anything else, and from
//! then on no replay or catch-up applies the entry (it only moves `__memlog:lsn` past it): the
//! node that replaces the stopped primary, and every node rebuilt later, hold the same data.
//! Clients of the aborted entry are told so (including those told after `write_wait` that their
//! write was committed and would be applied: an abort is the operator breaking that promise).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use journal_service::meta::MetaStore;
use tokio::sync::{mpsc, oneshot};

/// How long `MEMLOG ABORT` waits for the applier: it may be waiting out one attempt first.
const ABORT_WAIT: Duration = Duration::from_secs(30);

/// An operator's request to abort the entry the applier is stuck on.
pub(crate) struct AbortRequest {
    pub lsn: u64,
    /// The shard's other nodes: one holding the entry means it completed.
    pub others: Vec<String>,
    pub done: oneshot::Sender<Result<String, String>>,
}

/// The applier's side: the entries no replay applies, where an abort is recorded, and the
/// requests waiting for it.
pub(super) struct Aborts {
    pub(super) entries: BTreeSet<u64>,
    pub(super) meta: Option<Arc<MetaStore>>,
    pub(super) requests: mpsc::UnboundedReceiver<AbortRequest>,
}

impl Aborts {
    pub(super) fn new(
        meta: Option<Arc<MetaStore>>,
        entries: BTreeSet<u64>,
    ) -> (Aborts, mpsc::UnboundedSender<AbortRequest>) {
        let (tx, requests) = mpsc::unbounded_channel();
        (Aborts { entries, meta, requests }, tx)
    }
}

/// Hands `request` to the applier once the shard is stuck on exactly that entry.
pub(super) async fn request(
    shard: usize,
    stuck_on: Option<u64>,
    requests: &mpsc::UnboundedSender<AbortRequest>,
    lsn: u64,
    others: Vec<String>,
) -> Result<String, String> {
    match stuck_on {
        None => return Err(format!("ERR memlog: shard {shard} is applying its entries: there is nothing to abort")),
        Some(stuck) if stuck != lsn => {
            return Err(format!("ERR memlog: shard {shard} is stuck on entry {stuck}, not {lsn}: nothing aborted"))
        }
        Some(_) => {}
    }
    let (done, outcome) = oneshot::channel();
    requests
        .send(AbortRequest { lsn, others, done })
        .map_err(|_| format!("ERR memlog: shard {shard}'s applier stopped"))?;
    match tokio::time::timeout(ABORT_WAIT, outcome).await {
        Ok(Ok(outcome)) => outcome.map_err(|e| format!("ERR memlog: {e}")),
        Ok(Err(_)) => Err(format!("ERR memlog: shard {shard}'s applier stopped")),
        Err(_) => Err(format!("ERR memlog: shard {shard}'s applier did not take the abort within {ABORT_WAIT:?}")),
    }
}

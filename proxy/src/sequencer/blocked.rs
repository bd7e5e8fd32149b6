//! Blocking commands (BLPOP, BLMOVE, XREAD … BLOCK, …), parked in the proxy.
//!
//! A blocking command never blocks a Redis connection: the sequencer tries it, in order with
//! the shard's writes, in its non-blocking form; if there is nothing to serve it is parked
//! here under its keys. A write that touches a parked key wakes its clients in the order they
//! blocked (first blocked, first served, as Redis serves them), and each is tried again right
//! behind that write. Pops therefore go through the journal like any write. A timer answers
//! the timeout reply; `CLIENT UNBLOCK` answers it (or an error) at once. A client is parked under
//! its keys' names in its database (`databases::registered_key`) and tried in that database.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use dashmap::DashMap;

use crate::backend::ReplySender;
use crate::clients::ClientHandle;
use crate::resp::{error_reply, Proto, Request};

/// A client blocked on one command.
pub(crate) struct Blocked {
    /// The client; `flags=b` in CLIENT LIST once it is parked.
    pub client: Arc<ClientHandle>,
    pub proto: Proto,
    /// The command as it is tried (XREAD's `$` IDs resolved at the first try).
    pub request: Mutex<Request>,
    /// Keys whose writes may serve it.
    pub keys: Vec<Bytes>,
    /// The client's database (when it blocked), where it is tried.
    pub db: u8,
    /// `keys` as the registry knows them (`databases::registered_key`).
    registered: Vec<Bytes>,
    pub deadline: Option<Instant>,
    reply: Mutex<Option<ReplySender>>,
    /// Position in the order clients blocked; set when first parked.
    seq: Mutex<Option<u64>>,
    /// Set once its timeout timer runs.
    timer_armed: std::sync::atomic::AtomicBool,
}

impl Blocked {
    pub(crate) fn new(
        client: Arc<ClientHandle>,
        proto: Proto,
        request: Request,
        keys: Vec<Bytes>,
        deadline: Option<Instant>,
        reply: ReplySender,
    ) -> Arc<Blocked> {
        // The client's next command waits for this one's reply: its database stays this one.
        let db = client.db();
        Arc::new(Blocked {
            client,
            proto,
            request: Mutex::new(request),
            registered: keys.iter().map(|key| crate::databases::registered_key(db, key)).collect(),
            keys,
            db,
            deadline,
            reply: Mutex::new(Some(reply)),
            seq: Mutex::new(None),
            timer_armed: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Takes the client's reply sender to serve it; None once answered (timeout, unblock) or
    /// when the client is gone.
    pub(crate) fn take_reply(&self) -> Option<ReplySender> {
        self.reply.lock().unwrap().take().filter(|r| !r.is_closed())
    }

    /// Gives the reply sender back after a try found nothing to serve.
    pub(crate) fn put_back(&self, reply: ReplySender) {
        *self.reply.lock().unwrap() = Some(reply);
    }

    /// Not answered yet, and its client still awaits the reply.
    pub(crate) fn is_waiting(&self) -> bool {
        self.reply.lock().unwrap().as_ref().is_some_and(|r| !r.is_closed())
    }

    fn seq(&self) -> u64 {
        self.seq.lock().unwrap().unwrap_or(u64::MAX)
    }

    /// What Redis answers when the command times out: the null array (RESP3's null), for
    /// every blocking command, BLMOVE and BRPOPLPUSH included.
    pub(crate) fn timeout_reply(&self) -> Bytes {
        match self.proto {
            Proto::Resp3 => Bytes::from_static(b"_\r\n"),
            Proto::Resp2 => Bytes::from_static(b"*-1\r\n"),
        }
    }
}

/// Blocked clients of every shard by client ID, for `CLIENT UNBLOCK` and timeouts.
pub(crate) type BlockedClients = Arc<DashMap<u64, Arc<Blocked>>>;

/// Answers a blocked client now, as a timeout (`error: false`) or with `-UNBLOCKED`; false if
/// it was not blocked (or is being served right now).
pub(crate) fn unblock(clients: &BlockedClients, client: u64, error: bool) -> bool {
    let Some(blocked) = clients.get(&client).map(|b| b.clone()) else { return false };
    let Some(reply) = blocked.take_reply() else { return false };
    clients.remove_if(&client, |_, b| Arc::ptr_eq(b, &blocked));
    let answer =
        if error { error_reply("UNBLOCKED client unblocked via CLIENT UNBLOCK") } else { blocked.timeout_reply() };
    let _ = reply.send(Ok(answer));
    true
}

/// Starts the timer that answers the timeout reply at the command's deadline (once).
pub(super) fn arm_timeout(clients: &BlockedClients, blocked: &Arc<Blocked>) {
    let Some(deadline) = blocked.deadline else { return };
    if blocked.timer_armed.swap(true, std::sync::atomic::Ordering::AcqRel) {
        return;
    }
    let (clients, blocked) = (clients.clone(), blocked.clone());
    tokio::spawn(async move {
        tokio::time::sleep_until(deadline.into()).await;
        clients.remove_if(&blocked.client.id, |_, b| Arc::ptr_eq(b, &blocked));
        if let Some(reply) = blocked.take_reply() {
            let _ = reply.send(Ok(blocked.timeout_reply()));
        }
    });
}

/// The shard's parked clients by key, owned by its sequencer.
#[derive(Default)]
pub(super) struct BlockedRegistry {
    by_key: HashMap<Bytes, Vec<Arc<Blocked>>>,
    next_seq: u64,
}

impl BlockedRegistry {
    pub(super) fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// Parks `blocked` under its keys, keeping each key's clients in the order they blocked.
    pub(super) fn park(&mut self, blocked: &Arc<Blocked>) {
        blocked.client.blocked.store(true, std::sync::atomic::Ordering::Relaxed);
        {
            let mut seq = blocked.seq.lock().unwrap();
            if seq.is_none() {
                *seq = Some(self.next_seq);
                self.next_seq += 1;
            }
        }
        let seq = blocked.seq();
        for key in &blocked.registered {
            let waiting = self.by_key.entry(key.clone()).or_default();
            if waiting.iter().any(|b| Arc::ptr_eq(b, blocked)) {
                continue;
            }
            let at = waiting.partition_point(|b| b.seq() < seq);
            waiting.insert(at, blocked.clone());
        }
    }

    /// Unparks the clients waiting on any of `keys` (as registered: `databases::registered_key`;
    /// None: every client), in the order they blocked; answered or disconnected clients are
    /// dropped.
    pub(super) fn wake(&mut self, keys: Option<&[Bytes]>) -> Vec<Arc<Blocked>> {
        let mut woken: Vec<Arc<Blocked>> = match keys {
            None => self.by_key.drain().flat_map(|(_, waiting)| waiting).collect(),
            Some(keys) => keys.iter().filter_map(|k| self.by_key.remove(k)).flatten().collect(),
        };
        woken.sort_by_key(|b| b.seq());
        woken.dedup_by(|a, b| Arc::ptr_eq(a, b));
        for blocked in &woken {
            for key in &blocked.registered {
                if let Some(waiting) = self.by_key.get_mut(key) {
                    waiting.retain(|b| !Arc::ptr_eq(b, blocked));
                    if waiting.is_empty() {
                        self.by_key.remove(key);
                    }
                }
            }
        }
        woken.retain(|b| b.is_waiting());
        woken
    }

    /// Drops clients that were answered (timeout, unblock) or disconnected while parked.
    pub(super) fn sweep(&mut self) {
        self.by_key.retain(|_, waiting| {
            waiting.retain(|b| b.is_waiting());
            !waiting.is_empty()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::oneshot;

    fn blocked(client: u64, keys: &[&str]) -> (Arc<Blocked>, oneshot::Receiver<crate::backend::ReplyResult>) {
        let (tx, rx) = oneshot::channel();
        let addr = "127.0.0.1:1".parse().unwrap();
        let client = Arc::new(ClientHandle::new(client, addr, addr, "default"));
        let args: Vec<Bytes> = vec![Bytes::from_static(b"BLPOP")];
        let request = Request { raw: Bytes::new(), args };
        let keys = keys.iter().map(|k| Bytes::copy_from_slice(k.as_bytes())).collect();
        (Blocked::new(client, Proto::Resp2, request, keys, None, tx), rx)
    }

    #[test]
    fn wakes_in_the_order_clients_blocked_even_when_re_parked() {
        let mut registry = BlockedRegistry::default();
        let (first, _r1) = blocked(1, &["a", "b"]);
        let (second, _r2) = blocked(2, &["a"]);
        registry.park(&first);
        registry.park(&second);
        let woken = registry.wake(Some(&[Bytes::from_static(b"a")]));
        assert_eq!(woken.iter().map(|b| b.client.id).collect::<Vec<_>>(), vec![1, 2]);
        assert!(registry.is_empty(), "a woken client leaves all its keys");
        registry.park(&second);
        registry.park(&first);
        let woken = registry.wake(None);
        assert_eq!(woken.iter().map(|b| b.client.id).collect::<Vec<_>>(), vec![1, 2]);
    }

    #[test]
    fn answered_and_disconnected_clients_are_not_woken() {
        let mut registry = BlockedRegistry::default();
        let (gone, rx) = blocked(1, &["a"]);
        let (unblocked, _r) = blocked(2, &["a"]);
        registry.park(&gone);
        registry.park(&unblocked);
        drop(rx);
        let clients: BlockedClients = Default::default();
        clients.insert(2, unblocked.clone());
        assert!(unblock(&clients, 2, true));
        assert!(!unblock(&clients, 2, true));
        assert!(registry.wake(Some(&[Bytes::from_static(b"a")])).is_empty());
    }
}

//! Delivery of client-side caching invalidations: the proxy's tracking table
//! ([`crate::tracking::Table`]) decides who is told what; this sends it, as Redis 7.0's
//! `sendTrackingMessage` does — a RESP3 `invalidate` push to the tracking client, or to its
//! `REDIRECT` client: a push if that one speaks RESP3, else a `message` on
//! `__redis__:invalidate` if it is subscribed to anything (RESP2 redirection); nothing to a
//! RESP2 client without redirection. A redirect client that is gone marks the tracking client
//! `broken_redirect` and tells it (RESP3) with `tracking-redir-broken`.
//!
//! It also expires tracked keys: the proxy learns a tracked key's expire time when the key is
//! first remembered (`PEXPIRETIME`, looked up by the caller) and invalidates it at that time,
//! as Redis invalidates a key it expires. Every other change of a key goes through the proxy.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use bytes::Bytes;
use tokio::sync::Notify;

use super::{frame, Item, Subscriber};
use crate::resp::{Proto, ReplyWriter};
use crate::tracking::{Delivery, Message, Options, Table};

/// The channel RESP2 redirect clients receive invalidations on.
const INVALIDATE_CHANNEL: &[u8] = b"__redis__:invalidate";

/// The proxy's client-side caching state (one per proxy).
#[derive(Default)]
pub(crate) struct Tracker {
    table: Mutex<Table>,
    /// Every connected client, by id: where its invalidations (and those redirected to it) go.
    sessions: Mutex<HashMap<u64, Arc<Subscriber>>>,
    /// Set once a client of this proxy first enabled tracking: from then on every write's keys
    /// are invalidated once it is applied (before, nobody could hold a key).
    in_use: AtomicBool,
    /// Wakes the expiry task when an earlier expiry was scheduled.
    expiry_scheduled: Notify,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What a write changed.
#[derive(Clone)]
pub(crate) enum Change {
    /// These keys (by the client `writer`, if a client made it).
    Keys { writer: Option<u64>, keys: Vec<Bytes> },
    /// Every key (FLUSHALL, FLUSHDB).
    All,
}

impl Tracker {
    /// A client connected: it may track, and be the redirect client of others.
    pub(crate) fn connected(&self, subscriber: Arc<Subscriber>) {
        lock(&self.sessions).insert(subscriber.push().client().id, subscriber);
    }

    /// A client is gone: it stops tracking (its redirecting clients notice at their next
    /// invalidation).
    pub(crate) fn disconnected(&self, id: u64) {
        lock(&self.sessions).remove(&id);
        lock(&self.table).disable(id);
    }

    /// True once some client of this proxy has enabled tracking.
    pub(crate) fn in_use(&self) -> bool {
        self.in_use.load(Ordering::SeqCst)
    }

    pub(crate) fn is_connected(&self, id: u64) -> bool {
        lock(&self.sessions).contains_key(&id)
    }

    /// `CLIENT TRACKING ON …`; true if this is the first time a client of this proxy tracks
    /// (the caller then waits for the writes queued before, which nobody invalidates).
    pub(crate) fn enable(self: &Arc<Self>, id: u64, options: Options) -> Result<bool, String> {
        let mut table = lock(&self.table);
        table.enable(id, options)?;
        self.show(&table, id);
        drop(table);
        let first = !self.in_use.swap(true, Ordering::SeqCst);
        if first {
            tokio::spawn(expire_keys(Arc::downgrade(self)));
        }
        Ok(first)
    }

    /// `CLIENT TRACKING OFF`.
    pub(crate) fn disable(&self, id: u64) {
        let mut table = lock(&self.table);
        table.disable(id);
        self.show(&table, id);
    }

    pub(crate) fn is_tracking(&self, id: u64) -> bool {
        lock(&self.table).is_tracking(id)
    }

    pub(crate) fn caching(&self, id: u64, yes: bool) -> Result<(), String> {
        lock(&self.table).caching(id, yes)
    }

    /// After each command of a tracking client (`keep`: a CLIENT command, or in MULTI).
    pub(crate) fn command_done(&self, id: u64, keep: bool) {
        lock(&self.table).command_done(id, keep);
    }

    pub(crate) fn redirect(&self, id: u64) -> i64 {
        lock(&self.table).redirect(id)
    }

    pub(crate) fn info(&self, id: u64) -> (Vec<&'static str>, i64, Vec<Bytes>) {
        lock(&self.table).info(id)
    }

    /// `(tracking_clients, tracking_total_keys, tracking_total_items, tracking_total_prefixes)`.
    pub(crate) fn totals(&self) -> (usize, usize, usize, usize) {
        let table = lock(&self.table);
        let (keys, items, prefixes) = table.totals();
        (table.clients(), keys, items, prefixes)
    }

    /// `tracking-table-max-keys` changed (0: no limit); the table is brought under it now.
    pub(crate) fn set_max_keys(&self, max_keys: usize) {
        let mut table = lock(&self.table);
        table.set_max_keys(max_keys);
        let deliveries = table.limit();
        self.deliver(&mut table, deliveries);
    }

    /// A read of client `id` is about to be served `keys`: they are remembered (so a change
    /// after this point is told), and the table kept under its limit. Returns the keys new to
    /// the table, whose expire time the caller looks up ([`Tracker::expires_at`]).
    pub(crate) fn remember(&self, id: u64, keys: &[Bytes]) -> Vec<(Bytes, u64)> {
        let mut table = lock(&self.table);
        let new = table.remember(id, keys);
        let deliveries = table.limit();
        self.deliver(&mut table, deliveries);
        new
    }

    /// `key`'s entry `generation` expires at `at_ms` (Unix ms; the key's `PEXPIRETIME`). Redis
    /// takes a key as expired once its clock is past that millisecond, so the clients are told
    /// a millisecond later: a read they send on being told then finds the key gone.
    pub(crate) fn expires_at(&self, key: Bytes, generation: u64, at_ms: u64) {
        let at_ms = at_ms + 1;
        let mut table = lock(&self.table);
        let earlier = table.next_expiry().is_none_or(|next| at_ms < next);
        table.schedule_expiry(key, generation, at_ms);
        if earlier {
            self.expiry_scheduled.notify_one();
        }
    }

    /// A write was applied: its clients are told.
    pub(crate) fn changed(&self, change: Change) {
        let mut table = lock(&self.table);
        let deliveries = match change {
            Change::Keys { writer, keys } => table.invalidate(writer, &keys),
            Change::All => table.flush(),
        };
        self.deliver(&mut table, deliveries);
    }

    /// Sends each delivery (under the table's lock, so a client sees invalidations in the
    /// order the table made them).
    fn deliver(&self, table: &mut Table, deliveries: Vec<Delivery>) {
        if deliveries.is_empty() {
            return;
        }
        let sessions = lock(&self.sessions);
        for Delivery { client, redirect, message } in deliveries {
            let Some(tracking) = sessions.get(&client) else { continue };
            if redirect == 0 {
                if tracking.proto() == Proto::Resp3 {
                    tracking.push().push_after_dispatched(invalidation(Proto::Resp3, &message, false));
                }
                continue;
            }
            match sessions.get(&redirect) {
                Some(target) if target.proto() == Proto::Resp3 => {
                    target.push().push(invalidation(Proto::Resp3, &message, false));
                }
                Some(target) if target.subscribed() => target.push().push(invalidation(Proto::Resp2, &message, true)),
                Some(_) => {}
                None => {
                    table.redirect_broken(client);
                    *tracking.push().client().tracking.lock().unwrap_or_else(PoisonError::into_inner) =
                        table.shown(client);
                    if tracking.proto() == Proto::Resp3 {
                        let broken = [Item::Bulk(b"tracking-redir-broken"), Item::Int(redirect as i64)];
                        tracking.push().push_after_dispatched(frame(Proto::Resp3, &broken));
                    }
                }
            }
        }
    }

    /// Keeps `CLIENT LIST`'s view of client `id` current.
    fn show(&self, table: &Table, id: u64) {
        if let Some(session) = lock(&self.sessions).get(&id) {
            *session.push().client().tracking.lock().unwrap_or_else(PoisonError::into_inner) = table.shown(id);
        }
    }
}

/// An invalidation frame: `invalidate` and the keys (or a null: every key) as a RESP3 push, or
/// as a RESP2 pub/sub `message` on `__redis__:invalidate`.
fn invalidation(proto: Proto, message: &Message, as_pubsub_message: bool) -> Bytes {
    let mut w = ReplyWriter::new(proto);
    if as_pubsub_message {
        w.array(3).bulk(b"message").bulk(INVALIDATE_CHANNEL);
    } else {
        w.raw(b">2\r\n").bulk(b"invalidate");
    }
    match message {
        Message::Flush => w.null(),
        Message::Keys(keys) => {
            w.array(keys.len());
            for key in keys {
                w.bulk(key);
            }
            &mut w
        }
    };
    w.finish()
}

fn now_unix_ms() -> u64 {
    crate::units::unix_ms()
}

/// Invalidates tracked keys as their expire times come, for as long as the proxy lives.
async fn expire_keys(tracker: Weak<Tracker>) {
    loop {
        let Some(tracker) = tracker.upgrade() else { return };
        let scheduled = tracker.expiry_scheduled.notified();
        tokio::pin!(scheduled);
        scheduled.as_mut().enable();
        let next = {
            let mut table = lock(&tracker.table);
            let deliveries = table.expire_due(now_unix_ms());
            tracker.deliver(&mut table, deliveries);
            table.next_expiry()
        };
        // At most a second at a time: the task holds the tracker meanwhile, and ends once the
        // proxy dropped it.
        let wait = next.map_or(1_000, |at| at.saturating_sub(now_unix_ms()).min(1_000));
        tokio::select! {
            _ = scheduled => {}
            _ = tokio::time::sleep(std::time::Duration::from_millis(wait)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_match_redis() {
        let keys = Message::Keys(vec![Bytes::from_static(b"k")]);
        assert_eq!(&invalidation(Proto::Resp3, &keys, false)[..], b">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n");
        assert_eq!(&invalidation(Proto::Resp3, &Message::Flush, false)[..], b">2\r\n$10\r\ninvalidate\r\n_\r\n");
        assert_eq!(
            &invalidation(Proto::Resp2, &keys, true)[..],
            b"*3\r\n$7\r\nmessage\r\n$20\r\n__redis__:invalidate\r\n*1\r\n$1\r\nk\r\n"
        );
        assert_eq!(
            &invalidation(Proto::Resp2, &Message::Flush, true)[..],
            b"*3\r\n$7\r\nmessage\r\n$20\r\n__redis__:invalidate\r\n$-1\r\n"
        );
    }
}

//! WATCH: optimistic locking, checked where every write of the shard passes, in sequencer order.
//!
//! A client's [`Watch`] is registered under each key it watches when its WATCH reaches the
//! sequencer, i.e. after every write the client could have seen. Any later write that touches
//! one of those keys (or cannot say which keys it touches, or flushes the database) marks the
//! watch dirty; EXEC of a dirty watch answers nil and journals nothing, as Redis does. Keys
//! that had a TTL when watched record their absolute expiry: EXEC after it also aborts, as
//! Redis 7 aborts when a watched key expired. A key is registered by its name in the client's
//! database (`databases::registered_key`), so watches are per database as in Redis.
//!
//! Conservative cases (EXEC may abort where Redis would not): a write that failed in Redis
//! (e.g. WRONGTYPE) still marks its keys; a write whose keys the command table cannot locate
//! marks every watch of the shard; past [`MAX_WATCHED_KEYS`] registrations per shard, new
//! watches are marked by any write to the shard. That bounds the memory WATCH uses.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;
use tokio::sync::oneshot;

/// Key registrations kept per shard before watches fall back to "any write".
pub(super) const MAX_WATCHED_KEYS: usize = 1 << 20;

/// One client's watched keys on one shard.
#[derive(Default)]
pub(crate) struct Watch {
    dirty: AtomicBool,
    state: Mutex<WatchState>,
}

#[derive(Default)]
struct WatchState {
    keys: Vec<Bytes>,
    /// Absolute expiry (Unix ms) of watched keys that had a TTL when watched.
    expiries: Vec<i64>,
    /// Expiries still being read from Redis (one receiver per WATCH command).
    pending: Vec<oneshot::Receiver<Vec<i64>>>,
}

impl Watch {
    pub(crate) fn is_dirty(&self) -> bool {
        self.dirty.load(Ordering::Acquire)
    }

    fn mark(&self) {
        self.dirty.store(true, Ordering::Release);
    }

    /// Records that the expiries of a WATCH's keys arrive on `expiries`.
    pub(crate) fn expect_expiries(&self, expiries: oneshot::Receiver<Vec<i64>>) {
        self.state.lock().unwrap().pending.push(expiries);
    }

    /// True while expiries of a WATCH are still being read from Redis.
    pub(crate) fn has_pending_expiries(&self) -> bool {
        !self.state.lock().unwrap().pending.is_empty()
    }

    /// True once a watched key's recorded expiry is at or before `now_ms`. Waits for expiries
    /// still being read (the caller has sent them to Redis before).
    pub(crate) async fn expired(&self, now_ms: i64) -> bool {
        let pending = std::mem::take(&mut self.state.lock().unwrap().pending);
        let mut arrived = Vec::new();
        for expiries in pending {
            // A lost reply (Redis unreachable) is treated as expired: abort rather than guess.
            match expiries.await {
                Ok(expiries) => arrived.extend(expiries),
                Err(_) => arrived.push(0),
            }
        }
        let mut state = self.state.lock().unwrap();
        state.expiries.extend(arrived);
        state.expiries.iter().any(|&at| at <= now_ms)
    }

    fn keys(&self) -> Vec<Bytes> {
        self.state.lock().unwrap().keys.clone()
    }
}

/// The shard's watched keys, owned by its sequencer.
#[derive(Default)]
pub(super) struct WatchRegistry {
    by_key: HashMap<Bytes, Vec<Weak<Watch>>>,
    /// Watches marked by any write to the shard (registered past the cap).
    any_write: Vec<Weak<Watch>>,
    registrations: usize,
}

impl WatchRegistry {
    pub(super) fn is_empty(&self) -> bool {
        self.by_key.is_empty() && self.any_write.is_empty()
    }

    pub(super) fn add(&mut self, watch: &Arc<Watch>, keys: Vec<Bytes>) {
        for key in &keys {
            if self.registrations >= MAX_WATCHED_KEYS {
                self.any_write.push(Arc::downgrade(watch));
                break;
            }
            let watchers = self.by_key.entry(key.clone()).or_default();
            if !watchers.iter().any(|w| w.as_ptr() == Arc::as_ptr(watch)) {
                watchers.push(Arc::downgrade(watch));
                self.registrations += 1;
            }
        }
        watch.state.lock().unwrap().keys.extend(keys);
    }

    /// Forgets a watch (UNWATCH, EXEC, DISCARD, disconnect).
    pub(super) fn remove(&mut self, watch: &Arc<Watch>) {
        for key in watch.keys() {
            if let Some(watchers) = self.by_key.get_mut(&key) {
                let before = watchers.len();
                watchers.retain(|w| w.as_ptr() != Arc::as_ptr(watch) && w.strong_count() > 0);
                self.registrations -= before - watchers.len();
                if watchers.is_empty() {
                    self.by_key.remove(&key);
                }
            }
        }
        self.any_write.retain(|w| w.as_ptr() != Arc::as_ptr(watch) && w.strong_count() > 0);
    }

    /// A write touched `key`.
    pub(super) fn touch(&mut self, key: &[u8]) {
        if let Some(watchers) = self.by_key.remove(key) {
            self.registrations -= watchers.len();
            watchers.iter().filter_map(Weak::upgrade).for_each(|w| w.mark());
        }
        self.touch_any_write();
    }

    /// A write touched keys it cannot name, or flushed the database.
    pub(super) fn touch_all(&mut self) {
        for (_, watchers) in self.by_key.drain() {
            watchers.iter().filter_map(Weak::upgrade).for_each(|w| w.mark());
        }
        self.registrations = 0;
        self.touch_any_write();
    }

    fn touch_any_write(&mut self) {
        for watch in self.any_write.drain(..) {
            if let Some(watch) = watch.upgrade() {
                watch.mark();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: &str) -> Bytes {
        Bytes::copy_from_slice(k.as_bytes())
    }

    #[test]
    fn a_write_to_a_watched_key_marks_only_its_watchers() {
        let mut registry = WatchRegistry::default();
        let (a, b) = (Arc::new(Watch::default()), Arc::new(Watch::default()));
        registry.add(&a, vec![key("x")]);
        registry.add(&b, vec![key("y")]);
        registry.touch(b"x");
        assert!(a.is_dirty());
        assert!(!b.is_dirty());
        registry.touch_all();
        assert!(b.is_dirty());
        assert!(registry.is_empty());
    }

    #[test]
    fn removed_and_dropped_watches_are_forgotten() {
        let mut registry = WatchRegistry::default();
        let a = Arc::new(Watch::default());
        registry.add(&a, vec![key("x"), key("x"), key("y")]);
        assert_eq!(registry.registrations, 2);
        registry.remove(&a);
        assert!(registry.is_empty());
        assert_eq!(registry.registrations, 0);
        registry.touch(b"x");
        assert!(!a.is_dirty());
    }

    #[tokio::test]
    async fn an_expiry_at_or_before_now_counts_as_a_change() {
        let watch = Watch::default();
        let (tx, rx) = oneshot::channel();
        watch.expect_expiries(rx);
        tx.send(vec![1_000]).unwrap();
        assert!(!watch.expired(999).await);
        assert!(watch.expired(1_000).await);
    }
}

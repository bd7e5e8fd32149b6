//! A shard's memory as memlog's `maxmemory` sees it (docs/parameters.md, "Eviction").
//!
//! memlog enforces `maxmemory` itself and runs the nodes without one: a Redis at its limit
//! would refuse (`-OOM`) or evict on its own what the journal already committed, and a replay
//! elsewhere would then build a different dataset. Here the journaler refuses what Redis would
//! refuse before anything is journaled, and the evictor's choices are journaled `DEL`s, so every
//! node and every replay hold the same keys.
//!
//! The estimate is the primary's `used_memory` (less what Redis does not count towards its
//! limit) at the last reading, plus the bytes journaled since: a write burst between two
//! readings counts at once, and a `DEL`'s bytes count as growth until the next reading.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use std::time::Duration;

use tokio::sync::Notify;

use crate::params::Eviction;

#[derive(Debug, Default)]
pub(crate) struct ShardMemory {
    /// Bytes the primary used at the last reading.
    used: AtomicU64,
    /// Bytes journaled since that reading.
    written: AtomicU64,
    /// memlog's `maxmemory` (0: none), as the evictor last read it from the group.
    limit: AtomicU64,
    /// The policy lets writes that add data proceed at the limit (keys are evicted for them).
    evicts: AtomicBool,
    /// The last eviction round found nothing its policy may take.
    exhausted: AtomicBool,
    /// Keys evicted (`evicted_keys`), since the proxy started or `CONFIG RESETSTAT`.
    evicted: AtomicU64,
    /// Wakes the evictor when the limit changes, so a new limit is read against at once.
    pub(crate) limit_changed: Notify,
    /// Wakes the writers waiting in [`ShardMemory::room`] after each reading and eviction.
    room_made: Notify,
}

/// How far past the limit writes may go before they wait for the evictor: a sixteenth of the
/// limit, at least [`MIN_HEADROOM`].
const HEADROOM_SHARE: u64 = 16;
const MIN_HEADROOM: u64 = 1024 * 1024;
/// Longest a write waits for room: an evictor that cannot keep up (its primary unreachable)
/// must not stop the shard's writes.
const MOST_ROOM_WAIT: Duration = Duration::from_secs(1);

impl ShardMemory {
    pub(crate) fn set_limit(&self, limit: u64, eviction: Eviction) {
        let before = self.limit.swap(limit, Relaxed);
        self.evicts.store(eviction != Eviction::Refuse, Relaxed);
        if before != limit {
            self.limit_changed.notify_one();
        }
    }

    pub(crate) fn limit(&self) -> u64 {
        self.limit.load(Relaxed)
    }

    /// A new reading of the primary's memory; what was journaled before it is counted in it.
    pub(crate) fn record_reading(&self, used: u64) {
        self.used.store(used, Relaxed);
        self.written.store(0, Relaxed);
        self.room_made.notify_waiters();
    }

    /// An entry of `bytes` was journaled.
    pub(crate) fn add_written(&self, bytes: usize) {
        self.written.fetch_add(bytes as u64, Relaxed);
    }

    /// Keys were evicted, freeing about `bytes` (`MEMORY USAGE`), until the next reading says.
    pub(crate) fn evicted(&self, keys: u64, bytes: u64) {
        self.evicted.fetch_add(keys, Relaxed);
        let _ = self.used.fetch_update(Relaxed, Relaxed, |used| Some(used.saturating_sub(bytes)));
        self.room_made.notify_waiters();
    }

    pub(crate) fn set_exhausted(&self, exhausted: bool) {
        self.exhausted.store(exhausted, Relaxed);
    }

    /// The estimated use: the last reading plus what was journaled since.
    pub(crate) fn estimate(&self) -> u64 {
        self.used.load(Relaxed).saturating_add(self.written.load(Relaxed))
    }

    pub(crate) fn over_limit(&self) -> bool {
        let limit = self.limit();
        limit > 0 && self.estimate() > limit
    }

    /// Whether a command that may add data is refused with `-OOM` now: over the limit, and
    /// either the policy is `noeviction` or it has nothing left to evict (as Redis answers when
    /// `performEvictions` fails).
    pub(crate) fn refuses_growth(&self) -> bool {
        self.over_limit() && (!self.evicts.load(Relaxed) || self.exhausted.load(Relaxed))
    }

    /// Under an evicting policy the evictor works beside the writes; once they outrun it by
    /// the headroom, a write that may add data waits here (at most [`MOST_ROOM_WAIT`]) until the
    /// evictor catches up, so a burst cannot take the primary far past its limit.
    pub(crate) async fn room(&self) {
        let deadline = tokio::time::Instant::now() + MOST_ROOM_WAIT;
        while self.far_over() {
            let made = self.room_made.notified();
            tokio::pin!(made);
            made.as_mut().enable();
            if !self.far_over() || tokio::time::timeout_at(deadline, made).await.is_err() {
                return;
            }
        }
    }

    fn far_over(&self) -> bool {
        let limit = self.limit();
        let headroom = (limit / HEADROOM_SHARE).max(MIN_HEADROOM);
        let evicting = self.evicts.load(Relaxed) && !self.exhausted.load(Relaxed);
        limit > 0 && evicting && self.estimate() > limit.saturating_add(headroom)
    }

    pub(crate) fn evicted_keys(&self) -> u64 {
        self.evicted.load(Relaxed)
    }

    pub(crate) fn reset_stats(&self) {
        self.evicted.store(0, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::Rank;

    #[test]
    fn refuses_growth_over_the_limit_unless_the_policy_can_still_evict() {
        let memory = ShardMemory::default();
        memory.record_reading(900);
        memory.add_written(200);
        assert!(!memory.refuses_growth(), "no limit");
        memory.set_limit(1000, Eviction::Refuse);
        assert_eq!(memory.estimate(), 1100);
        assert!(memory.refuses_growth(), "noeviction over the limit");
        memory.record_reading(950);
        assert!(!memory.refuses_growth(), "a reading replaces what was written before it");
        memory.add_written(51);
        memory.set_limit(1000, Eviction::Evict { volatile_only: true, rank: Rank::Ttl });
        assert!(memory.over_limit() && !memory.refuses_growth(), "the evictor makes room");
        memory.set_exhausted(true);
        assert!(memory.refuses_growth(), "nothing left to evict");
        memory.evicted(3, 2000);
        assert_eq!((memory.estimate(), memory.evicted_keys()), (51, 3));
        assert!(!memory.refuses_growth());
    }

    #[tokio::test(start_paused = true)]
    async fn writes_far_past_the_limit_wait_for_the_evictor_but_not_for_ever() {
        let memory = std::sync::Arc::new(ShardMemory::default());
        memory.set_limit(16 * MIN_HEADROOM, Eviction::Evict { volatile_only: false, rank: Rank::Lru });
        memory.record_reading(17 * MIN_HEADROOM);
        let started = tokio::time::Instant::now();
        memory.room().await;
        assert_eq!(started.elapsed(), Duration::ZERO, "within the headroom: no wait");
        memory.add_written(1);
        let waiting = tokio::spawn({
            let memory = memory.clone();
            async move { memory.room().await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiting.is_finished(), "past the headroom: the write waits");
        memory.evicted(10, MIN_HEADROOM);
        waiting.await.unwrap();
        memory.record_reading(100 * MIN_HEADROOM);
        let started = tokio::time::Instant::now();
        memory.room().await;
        assert_eq!(started.elapsed(), MOST_ROOM_WAIT, "an evictor that cannot keep up holds writes at most this long");
        memory.set_exhausted(true);
        let started = tokio::time::Instant::now();
        memory.room().await;
        assert_eq!(started.elapsed(), Duration::ZERO, "nothing to evict: refused at once, not held");
    }
}

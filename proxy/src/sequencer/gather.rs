//! Gathering the writes of clients that take turns into one journal entry.
//!
//! With one append in flight (`APPENDS_IN_FLIGHT`), clients that each wait for their reply
//! before writing again split into two groups that take turns: while one group's entry is
//! appended, the other's is applied and answered, and its clients' next writes arrive just after
//! the next append has started. Each entry then carries half of the clients and each write waits
//! about two appends (README "Benchmarks", 2026-12-06: entries of about 13 and 35 SETs
//! alternating at `-c 50`). Redis with `appendfsync always` answers every client of an
//! event-loop turn right after one fsync, so its clients stay in one group.
//!
//! So once an append may start, the journaler waits a little for the writers of the entry just
//! committed: their replies are on the way, and a client that waits for its reply comes back
//! within the time it takes to apply the entry and answer it. It waits until as many writes
//! are queued as the last batch took plus those queued when the append could start, or until
//! [`GATHER_WAIT`]. A wait that times out says the clients are not taking turns (they left, or
//! they do not wait for replies): the next batches are then taken without waiting, twice as many
//! after each further timeout, up to [`MOST_SKIPPED`], so such a load pays the wait on few of
//! its writes.
//!
//! Nor does it wait when applying the last batch took [`GATHER_WAIT`] or longer: its writers
//! cannot be back before their entry is applied, and while the journaler waits for them the
//! journal is idle. Then the next entry is better appended at once, while the last is applied
//! (`-P 16`, 800 writes per entry: applying one took 3.3 ms and appending it 1.9 ms, and
//! waiting for its writers cost a tenth of the throughput).

use std::time::Duration;

use tokio::sync::mpsc;

use super::{SequencerRequest, MAX_BATCH};

/// The longest a batch waits for writers expected back. tokio's timer counts whole
/// milliseconds, so any shorter wait would last a millisecond too.
pub(super) const GATHER_WAIT: Duration = Duration::from_millis(1);
/// Most batches taken without waiting after waits that timed out.
pub(super) const MOST_SKIPPED: u32 = 64;

/// What the last batch showed about the shard's clients.
pub(super) struct Gathering {
    /// Only appends are worth waiting for: without a journal, batches go out as queued.
    journaled: bool,
    /// Writes the last batch took: their clients are expected back.
    last_taken: usize,
    /// Batches still to take without waiting.
    skip: u32,
    /// How many batches the last timeout skipped (0: the last wait was not cut short).
    backoff: u32,
    waits: metrics::Histogram,
    timeouts: metrics::Counter,
}

/// How a batch was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Taken {
    /// What was queued, without waiting.
    AsQueued,
    /// Every write expected arrived.
    Gathered,
    /// The wait ended before they did.
    TimedOut,
}

impl Gathering {
    pub(super) fn new(shard: usize, journaled: bool) -> Gathering {
        let shard = shard.to_string();
        Gathering {
            journaled,
            last_taken: 0,
            skip: 0,
            backoff: 0,
            waits: metrics::histogram!("memlog_sequencer_gather_wait_seconds", "shard" => shard.clone()),
            timeouts: metrics::counter!("memlog_sequencer_gather_timeouts_total", "shard" => shard),
        }
    }

    /// How many writes the next batch waits for, with `queued` waiting as an append may start
    /// and the last batch applied in `last_apply`; None to take what is queued.
    pub(super) fn expected(&mut self, queued: usize, last_apply: Duration) -> Option<usize> {
        if !self.journaled || last_apply >= GATHER_WAIT {
            return None;
        }
        if self.skip > 0 {
            self.skip -= 1;
            return None;
        }
        Some((self.last_taken + queued).min(MAX_BATCH))
    }

    /// Records the batch taken: `count` writes, and how.
    pub(super) fn taken(&mut self, count: usize, how: Taken) {
        self.last_taken = count;
        match how {
            Taken::AsQueued => {}
            Taken::Gathered => self.backoff = 0,
            Taken::TimedOut => {
                self.backoff = (self.backoff * 2).clamp(1, MOST_SKIPPED);
                self.skip = self.backoff;
            }
        }
    }

    /// Takes the next batch from `queue` into `batch` once an append may start: waits for the
    /// first write, then for the writers expected back. False once the queue is closed and empty.
    pub(super) async fn take(
        &mut self,
        queue: &mut mpsc::Receiver<SequencerRequest>,
        batch: &mut Vec<SequencerRequest>,
        last_apply: Duration,
    ) -> bool {
        let expected = self.expected(queue.len(), last_apply);
        if queue.recv_many(batch, MAX_BATCH).await == 0 {
            return false;
        }
        let Some(expected) = expected.filter(|&n| batch.len() < n) else {
            let how = if expected.is_some() { Taken::Gathered } else { Taken::AsQueued };
            self.taken(batch.len(), how);
            return true;
        };
        let started = tokio::time::Instant::now();
        let deadline = started + GATHER_WAIT;
        let mut how = Taken::Gathered;
        while batch.len() < expected {
            let more = tokio::time::timeout_at(deadline, queue.recv_many(batch, expected - batch.len())).await;
            if !matches!(more, Ok(n) if n > 0) {
                how = Taken::TimedOut;
                self.timeouts.increment(1);
                break;
            }
        }
        self.waits.record(started.elapsed().as_secs_f64());
        self.taken(batch.len(), how);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An apply well within a wait.
    const FAST: Duration = Duration::from_micros(300);

    #[test]
    fn the_writers_of_the_last_batch_are_expected_back_with_those_queued() {
        let mut gathering = Gathering::new(0, true);
        assert_eq!(gathering.expected(0, FAST), Some(0), "nothing known: take the first write");
        gathering.taken(25, Taken::AsQueued);
        assert_eq!(gathering.expected(25, FAST), Some(50));
        gathering.taken(50, Taken::Gathered);
        assert_eq!(gathering.expected(0, FAST), Some(50));
        gathering.taken(MAX_BATCH, Taken::Gathered);
        assert_eq!(gathering.expected(10, FAST), Some(MAX_BATCH), "never more than a batch");
    }

    #[test]
    fn no_wait_when_applying_the_last_batch_took_as_long_as_a_wait() {
        let mut gathering = Gathering::new(0, true);
        gathering.taken(50, Taken::Gathered);
        assert_eq!(gathering.expected(0, GATHER_WAIT), None);
        assert_eq!(gathering.expected(0, FAST), Some(50));
    }

    #[test]
    fn nothing_waits_without_a_journal() {
        let mut gathering = Gathering::new(0, false);
        gathering.taken(50, Taken::Gathered);
        assert_eq!(gathering.expected(10, FAST), None);
    }

    #[test]
    fn after_a_timeout_batches_are_taken_without_waiting_twice_as_many_each_time() {
        let mut gathering = Gathering::new(0, true);
        let mut skipped_after = Vec::new();
        for _ in 0..9 {
            gathering.taken(10, Taken::TimedOut);
            let mut skipped = 0;
            while gathering.expected(5, FAST).is_none() {
                skipped += 1;
            }
            skipped_after.push(skipped);
        }
        assert_eq!(skipped_after, [1, 2, 4, 8, 16, 32, 64, 64, 64]);
        gathering.taken(10, Taken::Gathered);
        gathering.taken(10, Taken::TimedOut);
        assert_eq!(gathering.expected(5, FAST), None, "a gathered batch starts the backoff over");
        assert_eq!(gathering.expected(5, FAST), Some(15));
    }
}

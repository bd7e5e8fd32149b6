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
//! So once an append may start, the journaler waits a little for the clients the entry just
//! committed answers: their replies are on the way, and a client that waits for its reply comes
//! back within the time it takes to apply the entry and answer it. The batch waits until each of
//! those clients has sent something again, or [`GATHER_WAIT`]. A client that already has a
//! request queued (one that pipelines, or shares its connection among many callers) is not
//! waited for: its next writes come whether or not it hears back. A wait that times out says the
//! clients are not taking turns (they left, or their next request is a read): the next batches
//! are then taken without waiting, twice as many after each further timeout, up to
//! [`MOST_SKIPPED`], so such a load pays the wait on few of its writes.
//!
//! Nor does it wait when applying the last batch took [`GATHER_WAIT`] or longer: its writers
//! cannot be back before their entry is applied, and while the journaler waits for them the
//! journal is idle. Then the next entry is better appended at once, while the last is applied
//! (`-P 16`, 800 writes per entry: applying one took 3.3 ms and appending it 1.9 ms, and
//! waiting for its writers cost a tenth of the throughput).
//!
//! A wait that brings every client back but takes half a millisecond or more without doubling
//! the batch backs off like a timeout ([`judged`]): the clients came back, but too late and too
//! few for the wait to pay.

use std::collections::HashSet;
use std::time::Duration;

use tokio::sync::mpsc;

use super::{SequencerRequest, MAX_BATCH};

/// The longest a batch waits for the clients expected back. tokio's timer counts whole
/// milliseconds, so any shorter wait would last a millisecond too.
pub(super) const GATHER_WAIT: Duration = Duration::from_millis(1);
/// A wait at least this long that did not double its batch backs off like one cut short
/// ([`judged`]).
const SLOW_RETURN: Duration = Duration::from_micros(500);
/// Most batches taken without waiting after waits that timed out. A load whose clients never
/// come back (SETs at a fixed rate over a few connections) still waits once this many batches
/// have gone: at 64, 1.7% of its batches waited out the timer and its p99 at 1,000 SETs/s was
/// 2.9 ms; at 1,024 it is 1.9 ms (README "Benchmarks", session 12). Loads whose clients do come
/// back reset the backoff on their next gathered batch, so they never reach it.
pub(super) const MOST_SKIPPED: u32 = 1024;

/// What the last batch showed about the shard's clients.
pub(super) struct Gathering {
    /// Only appends are worth waiting for: without a journal, batches go out as queued.
    journaled: bool,
    /// The clients the last batch answers: expected back.
    last_clients: HashSet<u64>,
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
    /// Every client expected came back (or the batch is full).
    Gathered,
    /// The wait ended before they did.
    TimedOut,
    /// They came back, but late, and brought few writes (see [`judged`]).
    Slow,
}

/// How a wait of `waited` that brought every client expected back is judged, `before` writes in
/// the batch when it began and `after` at its end. A long wait that did not double the batch
/// is `Slow`, and backs off like a timeout: at `-P 16`, where the entry just committed takes
/// about a millisecond to apply, the waits lasted 1.0 ms on average, a third of them timed out,
/// and entries held 388–456 writes with them against about 335 without; judging them so made
/// about 5% more SETs/s (README "Benchmarks", session 14). A long wait that multiplies
/// the batch pays: the mixed load's clients read a few times between writes, and waiting 0.75 ms
/// for them makes entries of 50 writes instead of 9.
fn judged(waited: Duration, before: usize, after: usize) -> Taken {
    if waited >= SLOW_RETURN && after < 2 * before {
        Taken::Slow
    } else {
        Taken::Gathered
    }
}

impl Gathering {
    pub(super) fn new(shard: usize, journaled: bool) -> Gathering {
        let shard = shard.to_string();
        Gathering {
            journaled,
            last_clients: HashSet::new(),
            skip: 0,
            backoff: 0,
            waits: metrics::histogram!("memlog_sequencer_gather_wait_seconds", "shard" => shard.clone()),
            timeouts: metrics::counter!("memlog_sequencer_gather_timeouts_total", "shard" => shard),
        }
    }

    /// Whether the next batch waits for the last one's clients, that batch applied in `last_apply`.
    pub(super) fn waits(&mut self, last_apply: Duration) -> bool {
        if !self.journaled || last_apply >= GATHER_WAIT || self.last_clients.is_empty() {
            return false;
        }
        if self.skip > 0 {
            self.skip -= 1;
            return false;
        }
        true
    }

    /// Records the batch taken: whose requests it holds, and how it was taken.
    pub(super) fn taken(&mut self, batch: &[SequencerRequest], how: Taken) {
        self.last_clients.clear();
        self.last_clients.extend(batch.iter().filter_map(SequencerRequest::answered_client));
        match how {
            Taken::AsQueued => {}
            Taken::Gathered => self.backoff = 0,
            Taken::TimedOut | Taken::Slow => {
                self.backoff = (self.backoff * 2).clamp(1, MOST_SKIPPED);
                self.skip = self.backoff;
            }
        }
    }

    /// Takes the next batch from `queue` into `batch` once an append may start: waits for the
    /// first request, then for the clients expected back. False once the queue is closed and
    /// empty.
    pub(super) async fn take(
        &mut self,
        queue: &mut mpsc::Receiver<SequencerRequest>,
        batch: &mut Vec<SequencerRequest>,
        last_apply: Duration,
    ) -> bool {
        let wait = self.waits(last_apply);
        if queue.recv_many(batch, MAX_BATCH).await == 0 {
            return false;
        }
        if !wait {
            self.taken(batch, Taken::AsQueued);
            return true;
        }
        let mut missing = std::mem::take(&mut self.last_clients);
        let back = |missing: &mut HashSet<u64>, arrived: &[SequencerRequest]| {
            for request in arrived {
                missing.remove(&request.client);
            }
        };
        back(&mut missing, batch);
        let mut how = Taken::Gathered;
        let before = batch.len();
        if !missing.is_empty() {
            let started = tokio::time::Instant::now();
            let deadline = started + GATHER_WAIT;
            while !missing.is_empty() && batch.len() < MAX_BATCH {
                let seen = batch.len();
                let more = tokio::time::timeout_at(deadline, queue.recv_many(batch, MAX_BATCH - seen)).await;
                if !matches!(more, Ok(n) if n > 0) {
                    how = Taken::TimedOut;
                    self.timeouts.increment(1);
                    break;
                }
                back(&mut missing, &batch[seen..]);
            }
            let waited = started.elapsed();
            self.waits.record(waited.as_secs_f64());
            if how == Taken::Gathered {
                how = judged(waited, before, batch.len());
            }
        }
        // Handed back so `taken` refills it: the set's allocation serves every batch.
        self.last_clients = missing;
        self.taken(batch, how);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An apply well within a wait.
    const FAST: Duration = Duration::from_micros(300);

    fn write_of(client: u64) -> SequencerRequest {
        let request = crate::resp::Request::from_args(&["SET", "k", "v"]);
        let op = super::super::SequencerOp::Write { request, command: None };
        let reply = tokio::sync::oneshot::channel().0;
        SequencerRequest { proto: crate::resp::Proto::Resp2, db: 0, client, op, reply }
    }

    #[test]
    fn a_batch_waits_only_for_clients_of_the_last_one_with_a_fast_apply() {
        let mut gathering = Gathering::new(0, true);
        assert!(!gathering.waits(FAST), "nobody to wait for yet");
        gathering.taken(&[write_of(1), write_of(2)], Taken::AsQueued);
        assert!(gathering.waits(FAST));
        assert!(!gathering.waits(GATHER_WAIT), "its writers are not back before a long apply ends");
        gathering.taken(&[write_of(0)], Taken::Gathered);
        assert!(!gathering.waits(FAST), "the proxy's own requests are not waited for");
    }

    #[test]
    fn a_long_wait_that_did_not_double_the_batch_is_slow() {
        let long = SLOW_RETURN;
        assert_eq!(judged(long, 335, 420), Taken::Slow);
        assert_eq!(judged(long, 9, 50), Taken::Gathered, "it multiplied the batch");
        assert_eq!(judged(long - Duration::from_micros(1), 337, 420), Taken::Gathered, "not long");
        let mut gathering = Gathering::new(0, true);
        gathering.taken(&[write_of(1)], Taken::Slow);
        assert!(!gathering.waits(FAST), "backs off like a timeout");
        assert!(gathering.waits(FAST));
    }

    #[test]
    fn nothing_waits_without_a_journal() {
        let mut gathering = Gathering::new(0, false);
        gathering.taken(&[write_of(1)], Taken::Gathered);
        assert!(!gathering.waits(FAST));
    }

    #[test]
    fn after_a_timeout_batches_are_taken_without_waiting_twice_as_many_each_time() {
        let mut gathering = Gathering::new(0, true);
        let mut skipped_after = Vec::new();
        for _ in 0..13 {
            gathering.taken(&[write_of(1)], Taken::TimedOut);
            let mut skipped = 0;
            while !gathering.waits(FAST) {
                skipped += 1;
            }
            skipped_after.push(skipped);
        }
        assert_eq!(skipped_after, [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 1024, 1024]);
        gathering.taken(&[write_of(1)], Taken::Gathered);
        gathering.taken(&[write_of(1)], Taken::TimedOut);
        assert!(!gathering.waits(FAST), "a gathered batch starts the backoff over");
        assert!(gathering.waits(FAST));
    }
}

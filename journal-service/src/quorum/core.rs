//! The decisions of the quorum protocol as pure functions and state, without I/O: how many
//! nodes recovery must fence, when an LSN is committed, which node's log recovery adopts, and
//! how much of a node's log agrees with the writer's. The writer and recovery are thin shells
//! that feed these with node replies and carry out what they decide.

use std::collections::BTreeMap;

/// How many nodes a new writer must fence before it may trust what it reads.
///
/// An acknowledged entry is on at least `ack_quorum` of the `write_quorum` nodes, so a fenced
/// set of `write_quorum - ack_quorum + 1` nodes always includes one of them (`F + A > W`). The
/// same size stops the old writer: at most `A - 1` nodes remain that accept its epoch.
pub fn fence_quorum(write_quorum: usize, ack_quorum: usize) -> usize {
    write_quorum - ack_quorum + 1
}

/// Tracks acknowledgements per LSN and advances the commit point in LSN order.
///
/// Entries below `own_from` were recovered from older writers: counting their copies could
/// commit an entry a later recovery does not choose, so they are committed only together with
/// the first entry of this writer's own origin (the recovery barrier at `own_from`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CommitTracker {
    ack_quorum: usize,
    commit_lsn: u64,
    own_from: u64,
    /// Bitmask of the nodes that fsync'd each tracked LSN (committed ones until forgotten).
    acks: BTreeMap<u64, u64>,
}

impl CommitTracker {
    /// Starts with `commit_lsn` committed; this writer's own entries begin at `own_from`.
    pub fn new(ack_quorum: usize, commit_lsn: u64, own_from: u64) -> CommitTracker {
        CommitTracker { ack_quorum, commit_lsn, own_from, acks: BTreeMap::new() }
    }

    /// The highest LSN such that it and every LSN below it are committed.
    pub fn commit_lsn(&self) -> u64 {
        self.commit_lsn
    }

    /// Starts tracking one of this writer's own entries (call in LSN order, from `own_from`).
    pub fn track(&mut self, lsn: u64) {
        debug_assert!(lsn >= self.own_from);
        self.acks.insert(lsn, 0);
    }

    /// Records that `node` fsync'd `lsn`; returns the new commit point if it moved.
    pub fn record_ack(&mut self, lsn: u64, node: usize) -> Option<u64> {
        let mask = self.acks.get_mut(&lsn)?;
        *mask |= 1 << node;
        let before = self.commit_lsn;
        let mut next = (self.commit_lsn + 1).max(self.own_from);
        while self.acks.get(&next).is_some_and(|m| m.count_ones() as usize >= self.ack_quorum) {
            self.commit_lsn = next;
            next += 1;
        }
        (self.commit_lsn > before).then_some(self.commit_lsn)
    }

    /// How many nodes acknowledged `lsn` (0 if untracked).
    pub fn ack_count(&self, lsn: u64) -> usize {
        self.acks.get(&lsn).map_or(0, |m| m.count_ones() as usize)
    }

    /// Whether `node` acknowledged `lsn`.
    pub fn acked_by(&self, lsn: u64, node: usize) -> bool {
        self.acks.get(&lsn).is_some_and(|m| m & (1 << node) != 0)
    }

    /// Stops tracking committed LSNs up to `lsn` (their acks no longer matter).
    pub fn forget_through(&mut self, lsn: u64) {
        let keep = self.acks.split_off(&(lsn.min(self.commit_lsn) + 1));
        self.acks = keep;
    }
}

/// The end of one fenced node's log, as recovery sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogEnd {
    pub last_lsn: u64,
    /// Origin epoch of the entry at `last_lsn` (0 for an empty log).
    pub last_origin: u64,
}

/// The node whose log recovery adopts: the highest `(origin of the last entry, last LSN)`, as
/// Raft compares logs. `None` when no node is given.
pub fn choose_source(ends: &[LogEnd]) -> Option<usize> {
    ends.iter()
        .enumerate()
        .max_by_key(|(i, end)| (end.last_origin, end.last_lsn, std::cmp::Reverse(*i)))
        .map(|(i, _)| i)
}

/// How far a node's log agrees with the writer's: both slices hold `(lsn, origin)` for LSNs
/// `base + 1, base + 2, …` (either may be shorter); returns the last LSN up to which they agree.
/// Entries up to `base` are known to agree (they are committed on the node).
pub fn agreement_point(base: u64, node: &[(u64, u64)], ours: &[(u64, u64)]) -> u64 {
    let agreeing =
        node.iter().zip(ours).enumerate().take_while(|(i, (n, o))| n == o && n.0 == base + 1 + *i as u64).count();
    base + agreeing as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fence_quorum_intersects_every_ack_quorum() {
        assert_eq!(fence_quorum(3, 2), 2);
        assert_eq!(fence_quorum(5, 3), 3);
        assert_eq!(fence_quorum(3, 3), 1);
        assert_eq!(fence_quorum(3, 1), 3);
        for w in 1..=7 {
            for a in 1..=w {
                assert!(fence_quorum(w, a) + a > w, "fenced set meets every ack quorum ({w}/{a})");
            }
        }
    }

    #[test]
    fn commits_in_lsn_order_only() {
        let mut t = CommitTracker::new(2, 0, 1);
        for lsn in 1..=3 {
            t.track(lsn);
        }
        assert_eq!(t.record_ack(2, 0), None);
        assert_eq!(t.record_ack(2, 1), None, "2 has a quorum but 1 is not committed");
        assert_eq!(t.record_ack(3, 2), None);
        assert_eq!(t.record_ack(1, 2), None);
        assert_eq!(t.record_ack(1, 2), None, "a repeated ack from one node counts once");
        assert_eq!(t.commit_lsn(), 0);
        assert_eq!(t.record_ack(1, 1), Some(2), "1 and then 2 commit together");
        assert_eq!(t.record_ack(3, 0), Some(3));
        assert_eq!(t.record_ack(9, 0), None, "untracked LSNs are ignored");
    }

    #[test]
    fn five_three_needs_three_acks() {
        let mut t = CommitTracker::new(3, 10, 11);
        t.track(11);
        assert_eq!(t.record_ack(11, 4), None);
        assert_eq!(t.record_ack(11, 0), None);
        assert_eq!(t.ack_count(11), 2);
        assert_eq!(t.record_ack(11, 2), Some(11));
        assert!(t.acked_by(11, 2) && !t.acked_by(11, 1));
    }

    #[test]
    fn recovered_entries_commit_only_with_the_barrier() {
        // Recovered log ends at 7, last known commit 4; the barrier is 8.
        let mut t = CommitTracker::new(2, 4, 8);
        t.track(8);
        t.track(9);
        assert_eq!(t.record_ack(5, 0), None, "copies of recovered entries are not counted");
        assert_eq!(t.record_ack(9, 0), None);
        assert_eq!(t.record_ack(9, 1), None, "9 waits for the barrier");
        assert_eq!(t.record_ack(8, 1), None);
        assert_eq!(t.record_ack(8, 2), Some(9), "the barrier commits 5..=8, then 9 follows");
    }

    #[test]
    fn forget_keeps_uncommitted() {
        let mut t = CommitTracker::new(1, 0, 1);
        t.track(1);
        t.track(2);
        t.record_ack(1, 0);
        t.forget_through(2);
        assert_eq!(t.ack_count(1), 0);
        assert_eq!(t.record_ack(2, 0), Some(2), "2 was not committed, so it was kept");
    }

    #[test]
    fn source_is_highest_last_origin_then_longest() {
        let end = |last_lsn, last_origin| LogEnd { last_lsn, last_origin };
        assert_eq!(choose_source(&[]), None);
        assert_eq!(choose_source(&[end(10, 1), end(8, 2), end(9, 2)]), Some(2));
        assert_eq!(choose_source(&[end(0, 0), end(0, 0)]), Some(0));
        // Figure-8 shape: a long log of an old origin loses to a shorter one of a newer origin.
        assert_eq!(choose_source(&[end(12, 1), end(11, 3)]), Some(1));
    }

    #[test]
    fn agreement_stops_at_the_first_different_origin() {
        let ours = [(5, 2), (6, 2), (7, 3)];
        assert_eq!(agreement_point(4, &[(5, 2), (6, 2), (7, 3)], &ours), 7);
        assert_eq!(agreement_point(4, &[(5, 2), (6, 1), (7, 3)], &ours), 5, "6 diverges, so 7 cannot be trusted");
        assert_eq!(agreement_point(4, &[(5, 2)], &ours), 5, "a shorter node agrees up to its end");
        assert_eq!(agreement_point(4, &[(5, 2), (6, 2), (7, 3), (8, 3)], &ours), 7, "beyond our log is not agreement");
        assert_eq!(agreement_point(4, &[], &ours), 4);
        assert_eq!(agreement_point(4, &[(6, 2)], &[(6, 2)]), 4, "a gap is not agreement");
    }
}

//! A `stateright` model of the journal's quorum protocol — quorum writes, fencing, recovery and
//! catch-up — checked exhaustively on 3 nodes (write quorum 3, ack quorum 2) and up to 3
//! successive writers. It drives the real decision functions of `quorum::core` (fence quorum,
//! choice of the recovery source, log agreement, commit tracking).
//!
//! Faults: every message may stay undelivered forever (loss) or be delivered late, after newer
//! writers acted (delay, reordering); any process may stop taking steps at any point (crash —
//! a node's state is what it fsync'd, so a crashed node loses nothing it acknowledged); a
//! writer may give up on a node and resync it. Safety properties only concern reachable
//! states, so "stops forever" covers crashes and loss without extra actions.
//!
//! Properties: no acknowledged entry is lost (every later writer's adopted log holds it, at its
//! LSN), acknowledged entries never conflict, and epochs never go back (fences only rise; a
//! node's log never holds an entry stamped below an earlier one). A variant that picks the
//! recovery source by the *stamp* epoch instead of the origin epoch must fail — the checker
//! finds the lost entry — which shows the model can catch the bug the origin epoch prevents.

use std::collections::BTreeSet;
use std::time::Instant;

use journal_service::quorum::core::{agreement_point, choose_source, fence_quorum, CommitTracker, LogEnd};
use stateright::{Checker, HasDiscoveries, Model, Property};

const NODES: usize = 3;
const WRITE_QUORUM: usize = 3;
const ACK_QUORUM: usize = 2;

/// `(origin epoch, id)`: id 0 is a writer's recovery barrier, 1.. its data entries.
type Item = (u8, u8);

/// How recovery picks the log to adopt.
#[derive(Clone, Copy, Debug, PartialEq)]
enum SourceRule {
    /// What the client does: highest origin epoch of the last entry, then longest.
    LastOrigin,
    /// The tempting mistake: highest stamp (the epoch that copied the entry), then longest.
    LastStamp,
}

#[derive(Clone)]
struct QuorumModel {
    /// Data entries each successive writer may append (its length is the number of writers).
    appends: Vec<u8>,
    rule: SourceRule,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct NodeState {
    fenced: u8,
    /// `(stamp, item)` per LSN (LSN = index + 1).
    log: Vec<(u8, Item)>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Phase {
    Fencing,
    Active,
    Stopped,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct WriterState {
    epoch: u8,
    phase: Phase,
    /// What fence returned from each node (during recovery).
    views: Vec<Option<Vec<(u8, Item)>>>,
    log: Vec<Item>,
    tracker: Option<CommitTracker>,
    live: Vec<bool>,
    /// Per node, the appends sent and not yet delivered, oldest first.
    queues: Vec<Vec<Msg>>,
    appended: u8,
}

/// An append on its way to a node, on the writer's connection to it (FIFO, as TCP is). Its
/// reply reaches the writer at once or never: a late ack is as good as a timely one, since it
/// only says the entry was durable on the node before any newer fence (after which the node
/// refuses the writer's epoch).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Msg {
    lsn: u8,
    item: Item,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct State {
    meta_epoch: u8,
    nodes: Vec<NodeState>,
    writers: Vec<WriterState>,
    /// `(lsn, item, epoch of the writer that acknowledged it)`; a barrier counts as the
    /// acknowledgement of the recovery that wrote it.
    acked: BTreeSet<(u8, Item, u8)>,
}

#[derive(Clone, Debug, PartialEq)]
enum Action {
    /// A new writer wins the next epoch by compare-and-set.
    StartWriter,
    /// Fence a node at the writer's epoch and read its log (one request and its reply).
    Fence(usize, usize),
    /// With a fence quorum answered: adopt the source's log and send the barrier to the source.
    Adopt(usize),
    ClientAppend(usize),
    /// Catch-up of a node that is not live: fence it and read its log, truncate where it
    /// disagrees, send what it lacks, mark it live. One step: between the read and the truncate
    /// only a newer writer can change the node, and it fences it first, which makes the
    /// truncate fail; our own appends to it were dropped with the failed connection.
    Sync(usize, usize),
    /// The connection to a node fails: what was in flight is lost and the writer resyncs it.
    Lose(usize, usize),
    /// The node takes the oldest append in flight from the writer.
    Deliver(usize, usize),
}

fn origins(log: &[Item]) -> Vec<(u64, u64)> {
    log.iter().enumerate().map(|(i, (origin, _))| (i as u64 + 1, u64::from(*origin))).collect()
}

fn items(log: &[(u8, Item)]) -> Vec<Item> {
    log.iter().map(|(_, item)| *item).collect()
}

impl QuorumModel {
    fn send_append(state: &mut State, w: usize, node: usize, lsn: usize, item: Item) {
        state.writers[w].queues[node].push(Msg { lsn: lsn as u8, item });
    }

    /// Records `node`'s ack of `lsn` at writer `w`; newly committed data entries are acknowledged.
    fn ack(state: &mut State, w: usize, node: usize, lsn: usize) {
        let writer = &mut state.writers[w];
        let Some(tracker) = writer.tracker.as_mut() else { return };
        let before = tracker.commit_lsn() as usize;
        if let Some(commit) = tracker.record_ack(lsn as u64, node) {
            for l in before + 1..=commit as usize {
                let item = writer.log[l - 1];
                if item.0 == writer.epoch {
                    state.acked.insert((l as u8, item, writer.epoch));
                }
            }
        }
    }
}

impl Model for QuorumModel {
    type State = State;
    type Action = Action;

    /// The first writer has fenced the empty nodes and sent its barrier to all of them (its
    /// recovery of an empty stream has nothing to choose; starting here keeps the space small).
    fn init_states(&self) -> Vec<State> {
        let mut tracker = CommitTracker::new(ACK_QUORUM, 0, 1);
        tracker.track(1);
        let first = WriterState {
            epoch: 1,
            phase: Phase::Active,
            views: vec![None; NODES],
            log: vec![(1, 0)],
            tracker: Some(tracker),
            live: vec![true; NODES],
            queues: vec![vec![Msg { lsn: 1, item: (1, 0) }]; NODES],
            appended: 0,
        };
        vec![State {
            meta_epoch: 1,
            nodes: vec![NodeState { fenced: 1, log: Vec::new() }; NODES],
            writers: vec![first],
            acked: BTreeSet::new(),
        }]
    }

    fn actions(&self, state: &State, actions: &mut Vec<Action>) {
        if state.writers.len() < self.appends.len() {
            actions.push(Action::StartWriter);
        }
        for (w, writer) in state.writers.iter().enumerate() {
            match writer.phase {
                Phase::Stopped => {}
                Phase::Fencing => {
                    for n in 0..NODES {
                        if writer.views[n].is_none() {
                            actions.push(Action::Fence(w, n));
                        }
                    }
                    if writer.views.iter().flatten().count() >= fence_quorum(WRITE_QUORUM, ACK_QUORUM) {
                        actions.push(Action::Adopt(w));
                    }
                }
                // The last writer's adoption is what the checks look at; it need not go on.
                Phase::Active if w + 1 == self.appends.len() => {}
                Phase::Active => {
                    if writer.appended < self.appends[w] {
                        actions.push(Action::ClientAppend(w));
                    }
                    for n in 0..NODES {
                        if writer.live[n] {
                            if !writer.queues[n].is_empty() {
                                actions.push(Action::Lose(w, n));
                            }
                        } else {
                            actions.push(Action::Sync(w, n));
                        }
                    }
                }
            }
        }
        for (w, writer) in state.writers.iter().enumerate() {
            for n in 0..NODES {
                if !writer.queues[n].is_empty() {
                    actions.push(Action::Deliver(w, n));
                }
            }
        }
    }

    fn next_state(&self, last: &State, action: Action) -> Option<State> {
        let mut state = last.clone();
        match action {
            Action::StartWriter => {
                state.meta_epoch += 1;
                state.writers.push(WriterState {
                    epoch: state.meta_epoch,
                    phase: Phase::Fencing,
                    views: vec![None; NODES],
                    log: Vec::new(),
                    tracker: None,
                    live: vec![false; NODES],
                    queues: vec![Vec::new(); NODES],
                    appended: 0,
                });
            }
            Action::Fence(w, n) => {
                let epoch = state.writers[w].epoch;
                let node = &mut state.nodes[n];
                if node.fenced > epoch {
                    state.writers[w].phase = Phase::Stopped;
                } else {
                    node.fenced = epoch;
                    state.writers[w].views[n] = Some(node.log.clone());
                }
            }
            Action::Adopt(w) => {
                let writer = &mut state.writers[w];
                let fenced: Vec<(usize, &Vec<(u8, Item)>)> =
                    writer.views.iter().enumerate().filter_map(|(n, v)| v.as_ref().map(|v| (n, v))).collect();
                let ends: Vec<LogEnd> = fenced
                    .iter()
                    .map(|(_, log)| LogEnd {
                        last_lsn: log.len() as u64,
                        last_origin: log.last().map_or(0, |(stamp, (origin, _))| {
                            u64::from(if self.rule == SourceRule::LastOrigin { *origin } else { *stamp })
                        }),
                    })
                    .collect();
                let (source, source_log) = fenced[choose_source(&ends)?];
                writer.log = items(source_log);
                let tail = writer.log.len();
                let mut tracker = CommitTracker::new(ACK_QUORUM, tail as u64, tail as u64 + 1);
                tracker.track(tail as u64 + 1);
                writer.tracker = Some(tracker);
                writer.log.push((writer.epoch, 0));
                writer.live = (0..NODES).map(|n| n == source).collect();
                writer.views = vec![None; NODES];
                writer.phase = Phase::Active;
                let item = (writer.epoch, 0);
                Self::send_append(&mut state, w, source, tail + 1, item);
            }
            Action::ClientAppend(w) => {
                let writer = &mut state.writers[w];
                writer.appended += 1;
                let item = (writer.epoch, writer.appended);
                writer.log.push(item);
                let lsn = writer.log.len();
                writer.tracker.as_mut()?.track(lsn as u64);
                let live = writer.live.clone();
                for n in (0..NODES).filter(|&n| live[n]) {
                    Self::send_append(&mut state, w, n, lsn, item);
                }
            }
            Action::Sync(w, n) => {
                let writer = &mut state.writers[w];
                let node = &mut state.nodes[n];
                if node.fenced > writer.epoch {
                    writer.phase = Phase::Stopped;
                    return Some(state);
                }
                node.fenced = writer.epoch;
                let agreed = agreement_point(0, &origins(&items(&node.log)), &origins(&writer.log)) as usize;
                node.log.truncate(agreed);
                writer.live[n] = true;
                let log = writer.log.clone();
                for lsn in 1..=agreed {
                    Self::ack(&mut state, w, n, lsn);
                }
                for (i, item) in log.iter().enumerate().skip(agreed) {
                    Self::send_append(&mut state, w, n, i + 1, *item);
                }
            }
            Action::Lose(w, n) => {
                state.writers[w].live[n] = false;
                state.writers[w].queues[n].clear();
            }
            Action::Deliver(w, n) => {
                let msg = state.writers[w].queues[n].remove(0);
                let stamp = state.writers[w].epoch;
                let target = &mut state.nodes[n];
                if stamp >= target.fenced && msg.lsn as usize == target.log.len() + 1 {
                    target.log.push((stamp, msg.item));
                    target.fenced = stamp;
                    Self::ack(&mut state, w, n, msg.lsn as usize);
                }
            }
        }
        Some(state)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always("no acknowledged entry is lost", |_, state: &State| {
                state.acked.iter().all(|(lsn, item, acked_by)| {
                    state
                        .writers
                        .iter()
                        .filter(|w| w.epoch > *acked_by && w.tracker.is_some())
                        .all(|w| w.log.get(*lsn as usize - 1) == Some(item))
                })
            }),
            Property::always("acknowledged entries never conflict", |_, state: &State| {
                state.acked.iter().all(|(lsn, item, _)| state.acked.iter().all(|(l, i, _)| l != lsn || i == item))
            }),
            Property::always("epochs never go back", |_, state: &State| {
                state.nodes.iter().all(|node| {
                    node.fenced <= state.meta_epoch
                        && node.log.windows(2).all(|w| w[0].0 <= w[1].0)
                        && node.log.last().is_none_or(|(stamp, _)| *stamp <= node.fenced)
                })
            }),
            Property::sometimes("a second writer recovers and commits", |_, state: &State| {
                state.acked.iter().any(|(_, _, by)| *by >= 2)
            }),
        ]
    }
}

/// Three writers: the first appends one entry, the second and third recover (the third's
/// adoption is what "lost" is judged by). Every schedule up to `depth` steps, or all of them;
/// with `stop_at_first_failure`, the search ends at the first counterexample.
fn check(rule: SourceRule, depth: Option<usize>, stop_at_first_failure: bool) -> impl Checker<QuorumModel> {
    let mut builder = QuorumModel { appends: vec![1, 0, 0], rule }.checker().threads(2);
    if let Some(depth) = depth {
        builder = builder.target_max_depth(depth);
    }
    if stop_at_first_failure {
        builder = builder.finish_when(HasDiscoveries::AnyFailures);
    }
    let started = Instant::now();
    let checker = builder.spawn_bfs().join();
    eprintln!("{rule:?}, depth {depth:?}: {} unique states in {:?}", checker.unique_state_count(), started.elapsed());
    checker
}

/// The bound `cargo test` checks: every state reachable in up to `CI_DEPTH - 2` steps (stateright
/// counts the initial state as depth 1 and does not check states at the target depth itself):
/// about 2M states, ~30 s of CPU with this package built at opt-level 3 (Cargo.toml). The
/// wrong rule's shortest counterexample is 15 steps, so the smallest bound that catches it is
/// 17; 18 leaves a step of margin, and the test below shows that this bound does catch it.
const CI_DEPTH: usize = 18;

#[test]
fn bounded_schedules_lose_no_acknowledged_entry() {
    check(SourceRule::LastOrigin, Some(CI_DEPTH), false).assert_properties();
}

/// The same bound with the source chosen by stamp epoch: the checker must find a schedule that
/// loses an acknowledged entry — the evidence that the bounded check above can catch this bug.
#[test]
fn choosing_the_source_by_stamp_epoch_loses_entries_within_the_bound() {
    let checker = check(SourceRule::LastStamp, Some(CI_DEPTH), true);
    let path = checker.assert_any_discovery("no acknowledged entry is lost");
    let actions = path.into_actions();
    eprintln!("counterexample, as expected ({} steps):\n{actions:#?}", actions.len());
}

/// The whole state space (~4.6M states), too long for every CI run: `scripts/model-check` runs
/// it in a release build (`cargo test --release -p journal-service --test quorum_model -- --ignored`).
#[test]
#[ignore = "exhaustive; scripts/model-check runs it in a release build"]
fn all_schedules_lose_no_acknowledged_entry() {
    check(SourceRule::LastOrigin, None, false).assert_properties();
}

//! The quorum writer of one stream: assigns LSNs in call order, sends each entry to every
//! in-sync node at once (pipelined: many entries in flight), commits on the ack quorum in LSN
//! order, and brings a node that fell behind (dead, slow, restarted) back in sync in the
//! background while the others keep committing.
//!
//! Each node's link is `Live` (appends go to it directly, in LSN order on its one connection) or
//! `Syncing` (its worker fences it at our epoch, finds where its log stops agreeing with ours,
//! truncates the rest, and copies the missing entries from the in-memory window or from a node
//! known to hold them, until it reaches the head and turns `Live` again).

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::{oneshot, Notify};

use super::core::{agreement_point, CommitTracker};
use super::frame::{self, Kind};
use super::{QuorumConfig, WriteError};
use crate::entry::{Entry, StreamTail};
use crate::error::NodeError;
use crate::node_client::NodeClient;

/// Most entries a catch-up sends before it looks at the head again.
const CATCH_UP_BATCH: usize = 256;
/// Payload bytes asked for per read while catching up or comparing logs.
const READ_BYTES: usize = 4 << 20;
/// First and longest pause between attempts to bring a failing node back.
const RETRY_MIN: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(1);

/// The writer of one stream at one epoch. Dropping it stops its background catch-up work;
/// appends already sent still complete.
pub struct QuorumWriter {
    shared: Arc<Shared>,
}

/// How each node is being written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Link {
    /// In sync: every new entry is sent to it as it is appended.
    Live,
    /// Behind or failed: its worker is bringing it up to date.
    Syncing,
}

/// Why the writer stopped for good.
#[derive(Debug, Clone)]
enum Stop {
    Fenced(u64),
    GaveUp(String),
}

/// An entry handed to the nodes: its LSN, its outcome to come, and the bytes of every entry not
/// committed yet, itself included.
struct Submitted {
    lsn: u64,
    done: oneshot::Receiver<Result<u64, WriteError>>,
    queued_bytes: usize,
}

/// One appended entry the writer still remembers.
struct Slot {
    entry: Entry,
    waiter: Option<oneshot::Sender<Result<u64, WriteError>>>,
    errors: Vec<(SocketAddr, NodeError)>,
}

/// Everything the writer's tasks change, under one lock (held briefly, never across an await).
struct State {
    next_lsn: u64,
    tracker: CommitTracker,
    /// Entries by LSN, contiguous up to `next_lsn - 1`; committed ones are trimmed from the front.
    window: BTreeMap<u64, Slot>,
    links: Vec<Link>,
    /// Per node, the highest LSN up to which its log is known to agree with ours.
    matched: Vec<u64>,
    last_error: Vec<Option<NodeError>>,
    stop: Option<Stop>,
}

pub(crate) struct Shared {
    stream: String,
    epoch: u64,
    cfg: QuorumConfig,
    nodes: Vec<NodeClient>,
    state: Mutex<State>,
    /// Wakes a node's worker when its link turns `Syncing` or the writer closes.
    wake: Vec<Notify>,
    closed: AtomicBool,
}

/// What ends one catch-up attempt.
enum SyncError {
    Fenced(u64),
    Node(NodeError),
}

impl From<NodeError> for SyncError {
    fn from(e: NodeError) -> Self {
        match e {
            NodeError::Fenced { fenced_epoch, .. } => SyncError::Fenced(fenced_epoch),
            other => SyncError::Node(other),
        }
    }
}

/// Where recovery leaves the stream when it hands it to a writer.
pub(crate) struct Start {
    /// The adopted log ends here; the writer's first entry (the barrier) is `tail + 1`.
    pub tail: u64,
    /// Highest commit point any fenced node had seen.
    pub commit_lsn: u64,
    /// The node whose log was adopted (it agrees with ours up to `tail`).
    pub source: usize,
}

impl QuorumWriter {
    /// A writer at `epoch` over `nodes` (already fenced as recovery requires), starting from `start`.
    pub(crate) fn start(stream: &str, epoch: u64, cfg: QuorumConfig, nodes: Vec<NodeClient>, start: Start) -> Self {
        let n = nodes.len();
        let mut links = vec![Link::Syncing; n];
        let mut matched = vec![0; n];
        links[start.source] = Link::Live;
        matched[start.source] = start.tail;
        let state = State {
            next_lsn: start.tail + 1,
            tracker: CommitTracker::new(cfg.ack_quorum, start.commit_lsn, start.tail + 1),
            window: BTreeMap::new(),
            links,
            matched,
            last_error: vec![None; n],
            stop: None,
        };
        let shared = Arc::new(Shared {
            stream: stream.to_string(),
            epoch,
            cfg,
            nodes,
            state: Mutex::new(state),
            wake: (0..n).map(|_| Notify::new()).collect(),
            closed: AtomicBool::new(false),
        });
        for node in 0..n {
            tokio::spawn(sync_worker(shared.clone(), node));
        }
        QuorumWriter { shared }
    }

    /// Appends `payload`. The LSN is assigned now, in call order, so the caller may issue the
    /// next append before this one resolves; resolves with the LSN once it and every earlier
    /// entry are on `ack_quorum` nodes' disks.
    pub fn append(&self, payload: Bytes) -> impl Future<Output = Result<u64, WriteError>> + Send + 'static {
        self.shared.append(Kind::Data, &payload)
    }

    /// The epoch this writer holds.
    pub fn epoch(&self) -> u64 {
        self.shared.epoch
    }

    /// Everything up to here is committed.
    pub fn commit_lsn(&self) -> u64 {
        self.shared.lock().tracker.commit_lsn()
    }

    /// The LSN the next append gets.
    pub fn next_lsn(&self) -> u64 {
        self.shared.lock().next_lsn
    }

    /// Per node (in the order given), whether it is in sync and receiving appends directly.
    pub fn live_nodes(&self) -> Vec<bool> {
        self.shared.lock().links.iter().map(|l| *l == Link::Live).collect()
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }
}

impl Drop for QuorumWriter {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        self.shared.wake.iter().for_each(Notify::notify_one);
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Assigns the next LSN, sends the entry to every live node, and returns its completion.
    pub(crate) fn append(
        self: &Arc<Self>,
        kind: Kind,
        body: &[u8],
    ) -> impl Future<Output = Result<u64, WriteError>> + Send + 'static {
        let started = Instant::now();
        let submitted = self.submit(kind, body);
        let shared = self.clone();
        async move {
            let result = match submitted {
                Ok(Submitted { lsn, done, queued_bytes }) => {
                    // A large entry gets the time to reach the nodes and be fsynced there, and so
                    // does one queued behind large ones: each node takes a stream's entries in
                    // order (the parts of a write over one entry are appended back to back).
                    let deadline = shared.cfg.append_timeout + crate::node_client::transfer_allowance(queued_bytes);
                    shared.await_commit(lsn, done, deadline).await
                }
                Err(e) => Err(e),
            };
            match &result {
                Ok(_) => metrics::histogram!("memlog_journal_quorum_append_duration_seconds")
                    .record(started.elapsed().as_secs_f64()),
                Err(_) => metrics::counter!("memlog_journal_quorum_failed_appends_total").increment(1),
            }
            result
        }
    }

    fn submit(self: &Arc<Self>, kind: Kind, body: &[u8]) -> Result<Submitted, WriteError> {
        if body.len() > super::MAX_ENTRY_BODY {
            return Err(WriteError::TooLarge { len: body.len(), max: super::MAX_ENTRY_BODY });
        }
        let mut st = self.lock();
        if let Some(stop) = &st.stop {
            return Err(WriteError::Stopped { reason: describe_stop(stop) });
        }
        let lsn = st.next_lsn;
        st.next_lsn += 1;
        let entry = Entry {
            epoch: self.epoch,
            lsn,
            timestamp_ms: now_ms(),
            commit_lsn: st.tracker.commit_lsn(),
            payload: frame::encode(kind, self.epoch, body),
        };
        st.tracker.track(lsn);
        let (waiter, done) = oneshot::channel();
        for node in 0..self.nodes.len() {
            if st.links[node] == Link::Live {
                self.send_live(node, entry.clone());
            }
        }
        st.window.insert(lsn, Slot { entry, waiter: Some(waiter), errors: Vec::new() });
        let uncommitted = st.window.range(st.tracker.commit_lsn() + 1..);
        let queued_bytes = uncommitted.map(|(_, slot)| slot.entry.payload.len()).sum();
        Ok(Submitted { lsn, done, queued_bytes })
    }

    /// Queues `entry` on `node`'s connection now (keeping LSN order) and reports the outcome.
    fn send_live(self: &Arc<Self>, node: usize, entry: Entry) {
        let lsn = entry.lsn;
        let call = self.nodes[node].append(&self.stream, entry);
        let shared = self.clone();
        tokio::spawn(async move {
            let result = call.await;
            shared.on_live_result(node, lsn, result);
        });
    }

    fn on_live_result(&self, node: usize, lsn: u64, result: Result<(), NodeError>) {
        let mut st = self.lock();
        match result {
            Ok(()) => self.on_ack(&mut st, node, lsn),
            Err(NodeError::Fenced { fenced_epoch, .. }) => self.stop(&mut st, Stop::Fenced(fenced_epoch)),
            Err(error) => {
                tracing::debug!(stream = %self.stream, node = %self.nodes[node].addr(), lsn, %error, "append failed");
                if let Some(slot) = st.window.get_mut(&lsn) {
                    slot.errors.push((self.nodes[node].addr(), error.clone()));
                }
                st.last_error[node] = Some(error);
                if st.links[node] == Link::Live {
                    st.links[node] = Link::Syncing;
                    self.wake[node].notify_one();
                }
            }
        }
    }

    /// `node` holds our entry `lsn` (and agrees with our log below it).
    fn on_ack(&self, st: &mut State, node: usize, lsn: u64) {
        st.matched[node] = st.matched[node].max(lsn);
        let before = st.tracker.commit_lsn();
        if let Some(commit) = st.tracker.record_ack(lsn, node) {
            for (lsn, slot) in st.window.range_mut(before + 1..=commit) {
                if let Some(waiter) = slot.waiter.take() {
                    let _ = waiter.send(Ok(*lsn));
                }
            }
        }
        self.trim_window(st);
    }

    /// Forgets committed entries that every node holds, and the oldest committed ones beyond
    /// the configured window (a node needing those is caught up by reading them).
    fn trim_window(&self, st: &mut State) {
        let commit = st.tracker.commit_lsn();
        let everyone = st.matched.iter().copied().min().unwrap_or(0);
        let mut forgotten = None;
        while let Some((&lsn, _)) = st.window.first_key_value() {
            if lsn > commit || (lsn > everyone && st.window.len() <= self.cfg.window_entries) {
                break;
            }
            st.window.pop_first();
            forgotten = Some(lsn);
        }
        if let Some(lsn) = forgotten {
            st.tracker.forget_through(lsn);
        }
    }

    /// Stops the writer for good and fails every waiting append.
    fn stop(&self, st: &mut State, stop: Stop) {
        if st.stop.is_some() {
            return;
        }
        tracing::warn!(stream = %self.stream, epoch = self.epoch, reason = %describe_stop(&stop), "quorum writer stopped");
        for (lsn, slot) in st.window.iter_mut() {
            if let Some(waiter) = slot.waiter.take() {
                let error = match &stop {
                    Stop::Fenced(epoch) => WriteError::Fenced { epoch: *epoch },
                    Stop::GaveUp(reason) => WriteError::OutcomeUnknown { lsn: *lsn, reason: reason.clone() },
                };
                let _ = waiter.send(Err(error));
            }
        }
        st.stop = Some(stop);
        self.wake.iter().for_each(Notify::notify_one);
    }

    async fn await_commit(
        &self,
        lsn: u64,
        done: oneshot::Receiver<Result<u64, WriteError>>,
        deadline: Duration,
    ) -> Result<u64, WriteError> {
        match tokio::time::timeout(deadline, done).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(WriteError::OutcomeUnknown { lsn, reason: "the writer went away".into() }),
            Err(_) => self.give_up(lsn),
        }
    }

    /// `lsn` was not committed in time: report why, and stop (later LSNs cannot commit before it).
    fn give_up(&self, lsn: u64) -> Result<u64, WriteError> {
        let mut st = self.lock();
        if st.tracker.commit_lsn() >= lsn {
            return Ok(lsn);
        }
        let acked = st.tracker.ack_count(lsn);
        let needed = self.cfg.ack_quorum;
        let mut errors = Vec::new();
        if let Some(slot) = st.window.get_mut(&lsn) {
            slot.waiter = None;
            errors = slot.errors.clone();
        }
        for node in 0..self.nodes.len() {
            let addr = self.nodes[node].addr();
            if !st.tracker.acked_by(lsn, node) && !errors.iter().any(|(a, _)| *a == addr) {
                errors.push((addr, st.last_error[node].clone().unwrap_or(NodeError::Timeout)));
            }
        }
        let reason = format!("lsn {lsn} was not committed within {:?}", self.cfg.append_timeout);
        self.stop(&mut st, Stop::GaveUp(reason.clone()));
        if acked >= needed {
            Err(WriteError::OutcomeUnknown { lsn, reason: format!("{reason}: an earlier entry was not committed") })
        } else {
            Err(WriteError::NoQuorum { acked, needed, errors })
        }
    }

    fn should_exit(&self) -> bool {
        self.closed.load(Ordering::SeqCst) || self.lock().stop.is_some()
    }

    /// One attempt to bring `node` in line with our log and make it live.
    async fn sync_node(self: &Arc<Self>, node: usize) -> Result<(), SyncError> {
        let client = &self.nodes[node];
        let tail = client.fence(&self.stream, self.epoch).await?;
        let agreed = match self.given_up_below(node, &tail).await {
            Some(first) => {
                // The entries the node lacks or cannot prove against ours were truncated away on
                // every other node (a snapshot holds them): its copy restarts where theirs begin.
                let base = proven_prefix(&tail);
                if tail.last_lsn > base {
                    client.truncate_after(&self.stream, self.epoch, base).await?;
                }
                client.truncate_below(&self.stream, self.epoch, first).await?;
                first - 1
            }
            None => {
                let agreed = self.agreement(node, &tail).await?;
                if tail.last_lsn > agreed {
                    client.truncate_after(&self.stream, self.epoch, agreed).await?;
                }
                agreed
            }
        };
        {
            let mut st = self.lock();
            st.matched[node] = agreed;
            let tracked: Vec<u64> = st.window.range(..=agreed).map(|(lsn, _)| *lsn).collect();
            for lsn in tracked {
                self.on_ack(&mut st, node, lsn);
            }
        }
        let mut sent = agreed;
        loop {
            let batch = match self.next_batch(node, sent) {
                Batch::Done => return Ok(()),
                Batch::Entries(entries) => entries,
                Batch::Read { from, to } => self.read_ours(from, to, node).await?,
            };
            let calls: Vec<_> = batch.into_iter().map(|e| (e.lsn, client.append(&self.stream, e))).collect();
            for (lsn, call) in calls {
                call.await?;
                self.on_ack(&mut self.lock(), node, lsn);
                sent = lsn;
            }
        }
    }

    /// What to send next to a catching-up `node` that holds our log up to `sent`.
    fn next_batch(&self, node: usize, sent: u64) -> Batch {
        let mut st = self.lock();
        if st.stop.is_some() || sent + 1 >= st.next_lsn {
            if st.stop.is_none() {
                st.links[node] = Link::Live;
                st.last_error[node] = None;
                tracing::info!(stream = %self.stream, node = %self.nodes[node].addr(), lsn = sent, "journal node in sync");
            }
            return Batch::Done;
        }
        match st.window.first_key_value() {
            Some((&first, _)) if first <= sent + 1 => {
                let commit = st.tracker.commit_lsn();
                Batch::Entries(
                    st.window
                        .range(sent + 1..)
                        .take(CATCH_UP_BATCH)
                        .map(|(_, slot)| Entry { commit_lsn: slot.entry.commit_lsn.max(commit), ..slot.entry.clone() })
                        .collect(),
                )
            }
            Some((&first, _)) => Batch::Read { from: sent + 1, to: first - 1 },
            None => Batch::Read { from: sent + 1, to: st.next_lsn - 1 },
        }
    }

    /// Our log's entries `from..=to` (restamped with our epoch and commit point), read from the
    /// window or from a node known to agree with us that far (never from `except`).
    async fn read_ours(&self, from: u64, to: u64, except: usize) -> Result<Vec<Entry>, SyncError> {
        let (commit, window, reference) = {
            let st = self.lock();
            let window: Vec<Entry> = st.window.range(from..=to).map(|(_, s)| s.entry.clone()).collect();
            let reference = (0..self.nodes.len())
                .filter(|&r| r != except && st.matched[r] >= to)
                .max_by_key(|&r| (st.links[r] == Link::Live, st.matched[r]));
            (st.tracker.commit_lsn(), window, reference)
        };
        if window.first().is_some_and(|e| e.lsn == from) && window.len() as u64 == to - from + 1 {
            return Ok(window);
        }
        let reference = reference.ok_or_else(|| {
            SyncError::Node(NodeError::Unreachable(format!("no node known to hold lsn {from}..={to} of our log")))
        })?;
        let entries = read_range(&self.nodes[reference], &self.stream, from, to).await?;
        Ok(entries
            .into_iter()
            .map(|e| Entry { epoch: self.epoch, commit_lsn: commit.max(e.commit_lsn), ..e })
            .collect())
    }

    /// Where the other nodes' copies begin, when every one that answers dropped entries (all
    /// committed) right after what `node` (described by `tail`) is known to share with us;
    /// None when one still holds them.
    async fn given_up_below(&self, node: usize, tail: &StreamTail) -> Option<u64> {
        let others: Vec<_> = (0..self.nodes.len()).filter(|&n| n != node).collect();
        let calls: Vec<_> = others.iter().map(|&n| self.nodes[n].status()).collect();
        let mut firsts = Vec::new();
        for call in calls {
            if let Ok(status) = call.await {
                firsts.push(status.streams.get(&self.stream).map_or(1, |tail| tail.first_lsn));
            }
        }
        let first = firsts.into_iter().min()?;
        let committed = self.lock().tracker.commit_lsn();
        (first > proven_prefix(tail) + 1 && first - 1 <= committed).then_some(first)
    }

    /// The last LSN up to which `node`'s log (described by `tail`) agrees with ours.
    async fn agreement(&self, node: usize, tail: &StreamTail) -> Result<u64, SyncError> {
        let our_last = self.lock().next_lsn - 1;
        let top = tail.last_lsn.min(our_last);
        let base = proven_prefix(tail).min(top);
        if base == top {
            return Ok(top);
        }
        let theirs = read_range(&self.nodes[node], &self.stream, base + 1, top).await?;
        let ours = self.read_ours(base + 1, top, node).await?;
        Ok(agreement_point(base, &origins(&theirs), &origins(&ours)))
    }
}

/// The entries a node's log (described by `tail`) holds that are known to be in ours without
/// comparing: those up to its own commit point, which are committed.
fn proven_prefix(tail: &StreamTail) -> u64 {
    tail.commit_lsn.max(tail.first_lsn.saturating_sub(1))
}

enum Batch {
    /// The node reached the head and is live.
    Done,
    Entries(Vec<Entry>),
    /// The window no longer holds these; read them from a node that does.
    Read {
        from: u64,
        to: u64,
    },
}

/// Keeps one node in sync for the writer's lifetime: waits until its link drops to `Syncing`,
/// then retries catch-up with backoff until it is live again.
async fn sync_worker(shared: Arc<Shared>, node: usize) {
    let mut pause = RETRY_MIN;
    loop {
        loop {
            if shared.should_exit() {
                return;
            }
            if shared.lock().links[node] == Link::Syncing {
                break;
            }
            shared.wake[node].notified().await;
        }
        match shared.sync_node(node).await {
            Ok(()) => pause = RETRY_MIN,
            Err(SyncError::Fenced(epoch)) => {
                let mut st = shared.lock();
                shared.stop(&mut st, Stop::Fenced(epoch));
                return;
            }
            Err(SyncError::Node(error)) => {
                tracing::debug!(stream = %shared.stream, node = %shared.nodes[node].addr(), %error, "catch-up failed");
                shared.lock().last_error[node] = Some(error);
                let _ = tokio::time::timeout(pause, shared.wake[node].notified()).await;
                pause = (pause * 2).min(RETRY_MAX);
            }
        }
    }
}

/// Reads `from..=to` from one node, page by page; fails if the node does not hold all of it.
pub(crate) async fn read_range(client: &NodeClient, stream: &str, from: u64, to: u64) -> Result<Vec<Entry>, NodeError> {
    let mut entries = Vec::new();
    let mut next = from;
    while next <= to {
        let page = client.read(stream, next, to, READ_BYTES).await?;
        let Some(last) = page.last() else {
            return Err(NodeError::Protocol(format!("{} holds no lsn {next} of {stream}", client.addr())));
        };
        if page.first().map(|e| e.lsn) != Some(next) || last.lsn < next {
            return Err(NodeError::Protocol(format!("{} answered a read from {next} out of order", client.addr())));
        }
        next = last.lsn + 1;
        entries.extend(page);
    }
    Ok(entries)
}

/// `(lsn, origin epoch)` of each entry; an entry that is not ours gets origin 0, which no
/// writer has, so it never counts as agreeing.
fn origins(entries: &[Entry]) -> Vec<(u64, u64)> {
    entries.iter().map(|e| (e.lsn, frame::decode(&e.payload).map_or(0, |f| f.origin_epoch))).collect()
}

fn describe_stop(stop: &Stop) -> String {
    match stop {
        Stop::Fenced(epoch) => format!("fenced by a newer writer at epoch {epoch}"),
        Stop::GaveUp(reason) => reason.clone(),
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

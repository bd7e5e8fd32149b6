//! The shard sequencer: the one place a shard's writes pass through.
//!
//! Writes queued while the previous batch was being handed on form the next batch (group
//! commit). With a journal configured, each batch is normalized into deterministic commands
//! ([`crate::normalize`]), appended to the shard's journal stream (several appends in flight),
//! and once committed on the ack quorum applied on the shard's one ordered apply connection as
//! `MULTI <commands> SET __memlog:lsn <lsn> EXEC`; each client gets its reply from the EXEC array.
//! That is the contract of DESIGN.md:
//! - I1: Redis never holds what the journal has not committed (apply strictly after commit);
//! - I2: a write's reply is sent only once it is committed and applied;
//! - I3: before the first write, and after Redis lost a batch or came back empty, the primary is
//!   caught up: the entries `(its __memlog:lsn, commit point]` are replayed onto it;
//! - I4: the stream has one writer, fenced by the epoch it claimed in the metadata store.
//!
//! Two tasks share the work: the *journaler* normalizes and appends, the *applier* awaits each
//! append in order and applies it. A write whose outcome Redis chooses (SPOP, INCRBYFLOAT,
//! XADD *) stops the journaler until the applier has applied everything before it, so the
//! probe sees exactly the state the write will meet.
//!
//! Without a journal the proxy only routes: batches go to the apply connection in order.

mod blocked;
mod watch;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use journal_service::meta::MetaStore;
use journal_service::quorum::{self, QuorumConfig, QuorumWriter, Reader, WriteError};
use tokio::sync::{mpsc, oneshot, Notify, OwnedSemaphorePermit, Semaphore};

use crate::backend::{BackendConn, BackendError, BackendOptions, ReplySender};
use crate::commands::table::CommandInfo;
use crate::normalize::{self, Plan, Resolved};
use crate::resp::{encode_command, error_reply, Proto, Request, RequestParser};
use crate::state::LSN_KEY;
use blocked::{arm_timeout, BlockedRegistry};
pub use blocked::{forget, unblock, Blocked, BlockedClients};
pub use watch::Watch;
use watch::WatchRegistry;

/// Most writes taken into one batch.
const MAX_BATCH: usize = 4096;
/// Journal appends in flight per shard. Capping them makes writes that arrive meanwhile wait
/// in the queue and go out as one larger entry (group commit): a journal entry costs the nodes
/// far more than its bytes, so fewer, fuller entries carry more writes per second.
const APPENDS_IN_FLIGHT: usize = 2;
/// How long parked clients wait before they are tried again when the primary could not be read.
const PARKED_RETRY: Duration = Duration::from_millis(100);
/// Most entries replayed per read from the journal.
const REPLAY_CHUNK: u64 = 2048;

/// Work waiting for its shard's order, from one client.
pub struct Write {
    pub proto: Proto,
    pub op: Op,
    /// Where the reply goes (an UNWATCH's is dropped: the proxy answers it itself).
    pub reply: ReplySender,
}

impl Write {
    /// Answers `reply` without doing anything (a blocked client hears it on its own sender).
    fn refuse(self, reply: Bytes) {
        match self.op {
            Op::Unwatch(_) => {}
            Op::Block(blocked) => {
                if let Some(sender) = blocked.take_reply() {
                    let _ = sender.send(Ok(reply));
                }
            }
            _ => {
                let _ = self.reply.send(Ok(reply));
            }
        }
    }
}

/// What the sequencer does, in order with the shard's other writes.
pub enum Op {
    /// A write: normalized, journaled and applied. `command` locates the keys it touches, for
    /// WATCH and blocked clients; `None` counts as touching every key.
    Write { request: Request, command: Option<Arc<CommandInfo>> },
    /// A read riding behind the client's writes: applied in order, never journaled.
    Read(Request),
    /// MULTI … EXEC: journaled and applied as one unit; the reply is the array of its replies.
    Transaction(Transaction),
    /// WATCH: from here on, a write to one of `keys` makes the watch's EXEC fail.
    Watch { watch: Arc<Watch>, keys: Vec<Bytes> },
    /// UNWATCH (or DISCARD, RESET, a disconnect): forget the watch.
    Unwatch(Arc<Watch>),
    /// A blocking command: served now if it can be, else parked until a write serves it.
    Block(Arc<Blocked>),
    /// WAIT: how many journal nodes hold the journal.
    Wait,
    /// Try every parked client again (after the primary could not be read).
    RetryParked,
}

/// The commands of a MULTI, checked when queued.
pub struct Transaction {
    pub commands: Vec<Queued>,
    pub watch: Option<Arc<Watch>>,
}

/// One command of a transaction.
pub struct Queued {
    pub request: Request,
    pub command: Arc<CommandInfo>,
    /// Journaled (a write), or only applied in order (a read).
    pub write: bool,
}

/// What the sequencer needs to journal a shard.
#[derive(Clone)]
pub struct JournalSetup {
    pub nodes: Vec<SocketAddr>,
    pub meta: Arc<MetaStore>,
    pub quorum: QuorumConfig,
    pub writer_id: String,
    pub write_wait: Duration,
}

/// Handle to a shard's sequencer.
#[derive(Clone)]
pub struct Sequencer {
    queue: mpsc::UnboundedSender<Write>,
    primary: String,
    /// This shard's blocked clients, for `CLIENT UNBLOCK`.
    pub blocked: BlockedClients,
}

impl Sequencer {
    /// Starts the sequencer; with a journal, returns once the stream is recovered and the
    /// primary caught up, so nothing is served from a primary that misses committed writes.
    pub async fn start(
        shard: usize,
        primary: Arc<crate::backend::NodeTarget>,
        opts: BackendOptions,
        journal: Option<JournalSetup>,
    ) -> anyhow::Result<Sequencer> {
        let (queue, rx) = mpsc::unbounded_channel();
        let apply = ApplyConns::new(primary.clone(), opts);
        let health = Arc::new(ApplyHealth::default());
        let reply_wait = journal.as_ref().map_or(Duration::ZERO, |setup| setup.write_wait);
        let mut applier = Applier { shard, apply, reader: None, applied: 0, health: health.clone(), reply_wait };
        let journal = match journal {
            None => None,
            Some(setup) => {
                let stream = format!("shard-{shard}");
                applier.reader = Some(Arc::new(Reader::new(&stream, &setup.nodes)));
                let writer = recover_until_done(shard, &stream, &setup).await;
                let started = Instant::now();
                let replayed = applier.catch_up(writer.commit_lsn()).await;
                tracing::info!(
                    shard,
                    epoch = writer.epoch(),
                    lsn = writer.commit_lsn(),
                    replayed,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "shard recovered and primary caught up"
                );
                Some(Journal { stream, setup, writer })
            }
        };
        let (to_applier, applier_rx) = mpsc::unbounded_channel();
        let failed = Arc::new(AtomicBool::new(false));
        tokio::spawn(applier.run(applier_rx, failed.clone()));
        let blocked = BlockedClients::default();
        let journaler = Journaler {
            shard,
            journal,
            to_applier,
            failed,
            appends: Arc::new(Semaphore::new(APPENDS_IN_FLIGHT)),
            health,
            watches: WatchRegistry::default(),
            parked: BlockedRegistry::default(),
            blocked: blocked.clone(),
            queue: queue.downgrade(),
            retry_scheduled: false,
        };
        tokio::spawn(journaler.run(rx));
        Ok(Sequencer { queue, primary: primary.addr().to_string(), blocked })
    }

    pub fn submit(&self, write: Write) {
        if let Err(mpsc::error::SendError(write)) = self.queue.send(write) {
            let _ = write.reply.send(Err(BackendError::Lost { addr: self.primary.clone() }));
        }
    }
}

/// The apply connections of a shard's primary: one per protocol, since a reply's shape depends
/// on the protocol the connection speaks; the RESP3 one opens when a RESP3 client first writes.
/// Both follow the shard's current primary (the failover controller moves it), as apply
/// connections: a batch is only sent once the node's `__memlog:lsn` was read since they
/// (re)connected, so a new or restarted primary is caught up before anything is applied on it.
struct ApplyConns {
    primary: Arc<crate::backend::NodeTarget>,
    opts: BackendOptions,
    resp2: BackendConn,
    resp3: Option<BackendConn>,
    last: Proto,
}

impl ApplyConns {
    fn new(primary: Arc<crate::backend::NodeTarget>, opts: BackendOptions) -> ApplyConns {
        let resp2 = BackendConn::follow(primary.clone(), crate::backend::Role::Apply, Proto::Resp2, opts);
        ApplyConns { primary, opts, resp2, resp3: None, last: Proto::Resp2 }
    }

    /// The connection for `proto`. Switching connections first lets everything sent on the
    /// other one be applied, so Redis applies writes in exactly the sequencer's order.
    async fn conn(&mut self, proto: Proto) -> &BackendConn {
        if proto != self.last {
            let previous = if self.last == Proto::Resp2 { Some(&self.resp2) } else { self.resp3.as_ref() };
            if let Some(conn) = previous {
                let _ = conn.barrier().await;
            }
            self.last = proto;
        }
        match proto {
            Proto::Resp2 => &self.resp2,
            Proto::Resp3 => {
                let (primary, opts) = (&self.primary, self.opts);
                self.resp3.get_or_insert_with(|| {
                    BackendConn::follow(primary.clone(), crate::backend::Role::Apply, Proto::Resp3, opts)
                })
            }
        }
    }
}

/// Claims the shard's next epoch and recovers its stream, retrying until the journal and the
/// metadata store answer: a shard is not served before its journal is recovered.
async fn recover_until_done(shard: usize, stream: &str, setup: &JournalSetup) -> QuorumWriter {
    let mut pause = Duration::from_millis(100);
    loop {
        match quorum::recover(&setup.meta, shard as u32, stream, &setup.nodes, setup.quorum.clone(), &setup.writer_id)
            .await
        {
            Ok(writer) => return writer,
            Err(e) => {
                tracing::warn!(shard, "journal recovery failed, retrying: {e}");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

/// One command of a batch: what is journaled and applied, and where its reply goes.
struct Item {
    /// The command as applied (and journaled, unless it is a read riding behind writes).
    command: Bytes,
    reply: ReplySender,
    /// The client's reply when it is not Redis's reply to `command` (a probed write).
    reply_override: Option<Bytes>,
    /// Apply, but send the reply elsewhere (the non-final commands of a probed write).
    silent: bool,
}

enum ToApplier {
    /// Apply `items` once `append` commits (no append: only reads riding behind writes).
    Batch { append: Option<(AppendFuture, OwnedSemaphorePermit)>, proto: Proto, items: Vec<Item> },
    /// Run `commands` on the primary once everything before is applied; answer their replies.
    Probe { commands: Vec<Vec<Bytes>>, done: oneshot::Sender<Result<Vec<Bytes>, BackendError>> },
    /// Replay the journal onto the primary up to `lsn`, then answer.
    CatchUp { lsn: u64, done: oneshot::Sender<()> },
}

type AppendFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Result<u64, WriteError>> + Send>>;

/// The shard's journal, when one is configured.
struct Journal {
    stream: String,
    setup: JournalSetup,
    writer: QuorumWriter,
}

/// Whether the applier is applying; while it is not (Redis lost, a failover), new writes wait.
#[derive(Default)]
struct ApplyHealth {
    failing: AtomicBool,
    recovered: Notify,
}

impl ApplyHealth {
    fn set_failing(&self, failing: bool) {
        if self.failing.swap(failing, Ordering::AcqRel) && !failing {
            self.recovered.notify_waiters();
        }
    }

    fn is_failing(&self) -> bool {
        self.failing.load(Ordering::Acquire)
    }
}

/// The keys a write touches, as far as WATCH and blocked clients need to know.
enum Touched {
    /// Nobody watches or blocks on this shard: not worth locating keys.
    Unobserved,
    Keys(Vec<Bytes>),
    /// Unknown keys, or the whole database (FLUSHALL).
    Everything,
}

/// A transaction's command, normalized before any of the transaction is put in the segment.
enum Prepared {
    Resolved(Resolved),
    Rewritten(Vec<Bytes>),
    AsSent,
}

/// What became of a command handed to [`Journaler::journal_command`].
enum Journaled {
    /// In the segment, to be journaled and applied.
    Pushed,
    /// Answered without journaling anything.
    Answered,
    /// A blocking command with nothing to serve: its reply sender, to park it.
    NothingToServe(ReplySender),
}

/// Orders a shard's writes: normalizes and appends them to the journal (when configured), and
/// keeps WATCHes and blocked clients, which every write must be checked against.
struct Journaler {
    shard: usize,
    /// None: the proxy only routes, nothing is journaled.
    journal: Option<Journal>,
    to_applier: mpsc::UnboundedSender<ToApplier>,
    /// Set by the applier when an append failed: the writer has stopped and must be replaced.
    failed: Arc<AtomicBool>,
    /// One permit per append in flight; the applier returns it once the append is decided.
    appends: Arc<Semaphore>,
    health: Arc<ApplyHealth>,
    watches: WatchRegistry,
    parked: BlockedRegistry,
    blocked: BlockedClients,
    /// This sequencer's own queue, to retry parked clients later.
    queue: mpsc::WeakUnboundedSender<Write>,
    retry_scheduled: bool,
}

impl Journaler {
    async fn run(mut self, mut queue: mpsc::UnboundedReceiver<Write>) {
        let batch_size = metrics::histogram!("memlog_sequencer_batch_size", "shard" => self.shard.to_string());
        let mut batch = Vec::with_capacity(64);
        let mut swept = Instant::now();
        loop {
            // Take the next batch only once an append may start, so what arrives meanwhile joins it.
            drop(self.appends.acquire().await);
            if queue.recv_many(&mut batch, MAX_BATCH).await == 0 {
                return;
            }
            batch_size.record(batch.len() as f64);
            if self.failed.load(Ordering::Acquire) {
                self.replace_writer(&mut queue, &mut batch).await;
            }
            if self.health.is_failing() {
                self.wait_for_applier(&mut queue, &mut batch).await;
            }
            let now = now_ms();
            let mut segment = Segment::default();
            for write in batch.drain(..) {
                self.sequence(&mut segment, write, now).await;
            }
            self.flush(&mut segment).await;
            if swept.elapsed() >= Duration::from_secs(1) {
                self.parked.sweep();
                swept = Instant::now();
            }
        }
    }

    async fn sequence(&mut self, segment: &mut Segment, write: Write, now: u64) {
        let Write { proto, op, reply } = write;
        if segment.proto != Some(proto) && !segment.items.is_empty() {
            self.flush(segment).await;
        }
        segment.proto = Some(proto);
        match op {
            Op::Read(request) => segment.push(request.raw, false, reply, None, false),
            Op::Write { request, command } => {
                let touched = self.touched(&request, command.as_deref());
                let plan = if self.journal.is_some() { normalize::plan(&request.args, now) } else { Plan::AsIs };
                self.journal_command(segment, proto, request, plan, reply, false).await;
                self.after_write(segment, touched, now).await;
            }
            Op::Transaction(transaction) => self.transaction(segment, proto, transaction, reply, now).await,
            Op::Watch { watch, keys } => self.watch(segment, watch, keys, reply),
            Op::Unwatch(watch) => self.watches.remove(&watch),
            Op::Block(blocked) => {
                let touched = self.try_blocked(segment, &blocked, now).await;
                self.after_write(segment, touched, now).await;
            }
            Op::RetryParked => {
                self.retry_scheduled = false;
                let parked = self.parked.wake(None);
                self.serve(segment, parked, now).await;
            }
            Op::Wait => {
                let live = self.journal.as_ref().map_or(0, |j| j.writer.live_nodes().iter().filter(|l| **l).count());
                let _ = reply.send(Ok(Bytes::from(format!(":{live}\r\n"))));
            }
        }
    }

    /// Locates the keys a write touches, if anyone watches or blocks on this shard.
    fn touched(&self, request: &Request, command: Option<&CommandInfo>) -> Touched {
        if self.watches.is_empty() && self.parked.is_empty() {
            return Touched::Unobserved;
        }
        let Some(command) = command else { return Touched::Everything };
        if command.needs_getkeys || matches!(command.name.as_str(), "flushall" | "flushdb") {
            return Touched::Everything;
        }
        match command.key_positions(&request.args) {
            Some(positions) => Touched::Keys(positions.into_iter().map(|p| request.args[p].clone()).collect()),
            None => Touched::Everything,
        }
    }

    /// Marks the watches of what a write touched and serves the clients blocked on it, in the
    /// order they blocked, each tried right behind the write (and behind each other).
    async fn after_write(&mut self, segment: &mut Segment, touched: Touched, now: u64) {
        let woken = self.observe(&touched);
        self.serve(segment, woken, now).await;
    }

    /// Marks the watches of what a write touched; returns the clients parked on it.
    fn observe(&mut self, touched: &Touched) -> Vec<Arc<Blocked>> {
        match touched {
            Touched::Unobserved => Vec::new(),
            Touched::Keys(keys) => {
                keys.iter().for_each(|k| self.watches.touch(k));
                self.parked.wake(Some(keys))
            }
            Touched::Everything => {
                self.watches.touch_all();
                self.parked.wake(None)
            }
        }
    }

    /// Tries `woken` clients in order; what serving one writes may wake more.
    async fn serve(&mut self, segment: &mut Segment, woken: Vec<Arc<Blocked>>, now: u64) {
        let mut woken = std::collections::VecDeque::from(woken);
        while let Some(blocked) = woken.pop_front() {
            let touched = self.try_blocked(segment, &blocked, now).await;
            woken.extend(self.observe(&touched));
        }
    }

    /// Puts one command into the segment, normalized by `plan`. A blocking command that finds
    /// nothing to serve (`park_on_nil`) gets its reply sender back instead of the nil reply.
    async fn journal_command(
        &mut self,
        segment: &mut Segment,
        proto: Proto,
        request: Request,
        plan: Plan,
        reply: ReplySender,
        park_on_nil: bool,
    ) -> Journaled {
        let resolved = match plan {
            Plan::AsIs => {
                segment.push(request.raw, true, reply, None, false);
                return Journaled::Pushed;
            }
            Plan::Rewrite(command) => {
                segment.push(encode_command(&command), true, reply, None, false);
                return Journaled::Pushed;
            }
            Plan::Probe { probe, resolve } => match self.probe(segment, probe).await {
                Ok(replies) => resolve(&replies),
                Err(e) => return self.probe_failed(reply, e, park_on_nil),
            },
        };
        let command = &request.args[0];
        if resolved.commands.is_empty() {
            let answer = resolved.reply.unwrap_or_else(|| error_reply("ERR memlog: empty resolution"));
            if park_on_nil && answer == normalize::NIL_ARRAY {
                return Journaled::NothingToServe(reply);
            }
            let _ = reply.send(Ok(convert_reply(proto, command, answer)));
            return Journaled::Answered;
        }
        self.push_resolved(segment, proto, command, resolved, reply);
        Journaled::Pushed
    }

    /// A probe could not read the primary (it is down or being replaced). Nothing was journaled:
    /// a write fails with `-TRYAGAIN`; a blocked client stays parked and every parked client
    /// is tried again shortly.
    fn probe_failed(&mut self, reply: ReplySender, e: BackendError, park: bool) -> Journaled {
        if park {
            self.retry_parked_later();
            return Journaled::NothingToServe(reply);
        }
        let msg =
            format!("TRYAGAIN memlog: could not read the data this write depends on ({e}); the write was not applied");
        let _ = reply.send(Ok(error_reply(&msg)));
        Journaled::Answered
    }

    /// Queues an [`Op::RetryParked`] after a pause (one at a time).
    fn retry_parked_later(&mut self) {
        if self.retry_scheduled {
            return;
        }
        self.retry_scheduled = true;
        let queue = self.queue.clone();
        tokio::spawn(async move {
            tokio::time::sleep(PARKED_RETRY).await;
            if let Some(queue) = queue.upgrade() {
                let reply = oneshot::channel().0;
                let _ = queue.send(Write { proto: Proto::Resp2, op: Op::RetryParked, reply });
            }
        });
    }

    /// Runs read-only `commands` on the primary once everything before them is applied.
    async fn probe(&mut self, segment: &mut Segment, commands: Vec<Vec<Bytes>>) -> Result<Vec<Bytes>, BackendError> {
        self.flush(segment).await;
        let (done, replies) = oneshot::channel();
        let _ = self.to_applier.send(ToApplier::Probe { commands, done });
        replies.await.unwrap_or_else(|_| Err(BackendError::Lost { addr: "the shard's applier".into() }))
    }

    /// Pushes a probed write's commands; the client's reply rides on the last one.
    fn push_resolved(
        &mut self,
        segment: &mut Segment,
        proto: Proto,
        command: &[u8],
        resolved: Resolved,
        reply: ReplySender,
    ) {
        let last = resolved.commands.len() - 1;
        let reply_override = resolved.reply.map(|r| convert_reply(proto, command, r));
        let mut reply = Some(reply);
        for (i, command) in resolved.commands.iter().enumerate() {
            let (tx, _) = oneshot::channel();
            let target = if i == last { reply.take().unwrap_or(tx) } else { tx };
            segment.push(encode_command(command), true, target, reply_override.clone(), i != last);
        }
    }

    /// Registers a WATCH and reads its keys' expiries behind every earlier write.
    fn watch(&mut self, segment: &mut Segment, watch: Arc<Watch>, keys: Vec<Bytes>, reply: ReplySender) {
        let mut expiry_replies = Vec::with_capacity(keys.len());
        for key in &keys {
            let (tx, rx) = oneshot::channel();
            segment.push(encode_command(&[&b"PEXPIRETIME"[..], key]), false, tx, None, false);
            expiry_replies.push(rx);
        }
        self.watches.add(&watch, keys);
        let (expiries, arrive) = oneshot::channel();
        watch.expect_expiries(arrive);
        tokio::spawn(async move {
            let mut at = Vec::new();
            for reply in expiry_replies {
                match reply.await {
                    Ok(Ok(frame)) => match normalize::integer_reply(&frame) {
                        Some(ms) if ms >= 0 => at.push(ms),
                        Some(_) => {}
                        // Not an expiry time: count the key as expired, so EXEC aborts rather than guesses.
                        None => at.push(0),
                    },
                    _ => at.push(0),
                }
            }
            let _ = expiries.send(at);
            let _ = reply.send(Ok(Bytes::from_static(b"+OK\r\n")));
        });
    }

    /// EXEC: unless the watch saw a change, journals and applies the queued commands as one
    /// unit (one entry, one MULTI on Redis), and answers the array of their replies.
    async fn transaction(
        &mut self,
        segment: &mut Segment,
        proto: Proto,
        transaction: Transaction,
        reply: ReplySender,
        now: u64,
    ) {
        let Transaction { commands, watch } = transaction;
        if let Some(watch) = watch {
            self.watches.remove(&watch);
            if watch.has_pending_expiries() {
                self.flush(segment).await;
            }
            if watch.is_dirty() || watch.expired(now as i64).await {
                let nil = if proto == Proto::Resp3 { &b"_\r\n"[..] } else { &b"*-1\r\n"[..] };
                let _ = reply.send(Ok(Bytes::from_static(nil)));
                return;
            }
        }
        let mut touched = Vec::new();
        let mut everything = false;
        for Queued { request, command, .. } in &commands {
            match self.touched(request, Some(command)) {
                Touched::Keys(keys) => touched.extend(keys),
                Touched::Everything => everything = true,
                Touched::Unobserved => {}
            }
        }
        if self.journal.is_none() {
            // Only routing: Redis runs the transaction itself, on the apply connection.
            let (silent, _) = oneshot::channel();
            segment.push(Bytes::from_static(b"*1\r\n$5\r\nMULTI\r\n"), false, silent, None, true);
            for queued in commands {
                let (silent, _) = oneshot::channel();
                segment.push(queued.request.raw, false, silent, None, true);
            }
            segment.push(Bytes::from_static(b"*1\r\n$4\r\nEXEC\r\n"), false, reply, None, false);
        } else {
            self.journal_transaction(segment, proto, commands, reply, now).await;
        }
        let touched = if everything { Touched::Everything } else { Touched::Keys(touched) };
        self.after_write(segment, touched, now).await;
    }

    /// Resolves every command of a transaction first (probes see the state before it), then
    /// puts them all in the segment, which is not flushed in between: one journal entry.
    async fn journal_transaction(
        &mut self,
        segment: &mut Segment,
        proto: Proto,
        commands: Vec<Queued>,
        reply: ReplySender,
        now: u64,
    ) {
        let mut written: Vec<Bytes> = Vec::new();
        let mut plans = Vec::with_capacity(commands.len());
        for Queued { request, command, write } in &commands {
            let keys: Vec<Bytes> = command
                .key_positions(&request.args)
                .unwrap_or_default()
                .into_iter()
                .map(|p| request.args[p].clone())
                .collect();
            let plan = if *write || command.flags.blocking { normalize::plan(&request.args, now) } else { Plan::AsIs };
            let plan = match plan {
                Plan::Probe { .. } if keys.iter().any(|k| written.contains(k)) => {
                    let msg = format!(
                        "EXECABORT Transaction discarded: memlog cannot journal '{}' after a write to the same key in one transaction (its outcome depends on the data); run it outside the MULTI",
                        crate::dispatch::display_name(&command.name)
                    );
                    let _ = reply.send(Ok(error_reply(&msg)));
                    return;
                }
                Plan::Probe { probe, resolve } => match self.probe(segment, probe).await {
                    Ok(replies) => Prepared::Resolved(resolve(&replies)),
                    Err(e) => {
                        self.probe_failed(reply, e, false);
                        return;
                    }
                },
                Plan::Rewrite(rewritten) => Prepared::Rewritten(rewritten),
                Plan::AsIs => Prepared::AsSent,
            };
            if *write {
                written.extend(keys);
            }
            plans.push(plan);
        }
        let mut replies = Vec::with_capacity(commands.len());
        for (Queued { request, write, .. }, plan) in commands.into_iter().zip(plans) {
            let (tx, rx) = oneshot::channel();
            replies.push(rx);
            match plan {
                Prepared::Resolved(resolved) if resolved.commands.is_empty() => {
                    let answer = resolved.reply.unwrap_or_else(|| error_reply("ERR memlog: empty resolution"));
                    let _ = tx.send(Ok(convert_reply(proto, &request.args[0], answer)));
                }
                Prepared::Resolved(resolved) => self.push_resolved(segment, proto, &request.args[0], resolved, tx),
                Prepared::Rewritten(rewritten) => segment.push(encode_command(&rewritten), true, tx, None, false),
                Prepared::AsSent => segment.push(request.raw, write, tx, None, false),
            }
        }
        tokio::spawn(async move {
            let mut array = BytesMut::from(format!("*{}\r\n", replies.len()).as_bytes());
            for rx in replies {
                match rx.await {
                    Ok(Ok(frame)) => array.extend_from_slice(&frame),
                    Ok(Err(e)) => {
                        let _ = reply.send(Err(e));
                        return;
                    }
                    Err(_) => {
                        let _ = reply.send(Ok(error_reply("ERR memlog: the transaction's outcome is unknown")));
                        return;
                    }
                }
            }
            let _ = reply.send(Ok(array.freeze()));
        });
    }

    /// Tries a blocked client: serves it if there is data for it, else parks it (or answers the
    /// timeout reply once its deadline passed). Returns what serving it wrote.
    async fn try_blocked(&mut self, segment: &mut Segment, blocked: &Arc<Blocked>, now: u64) -> Touched {
        let Some(reply) = blocked.take_reply() else {
            self.blocked.remove_if(&blocked.client.id, |_, b| Arc::ptr_eq(b, blocked));
            return Touched::Unobserved;
        };
        let proto = blocked.proto;
        if segment.proto != Some(proto) && !segment.items.is_empty() {
            self.flush(segment).await;
        }
        segment.proto = Some(proto);
        let request = blocked.request.lock().unwrap().clone();
        let name = request.args[0].to_ascii_lowercase();
        let outcome = match name.as_slice() {
            b"xread" => self.try_xread(segment, blocked, request, reply).await,
            b"blmove" | b"brpoplpush" | b"blmpop" | b"bzmpop" => {
                // Served once a source has data; BLMOVE's destination does not count.
                let sources = if matches!(name.as_slice(), b"blmove" | b"brpoplpush") {
                    &request.args[1..2]
                } else {
                    &blocked.keys[..]
                };
                let mut exists = vec![Bytes::from_static(b"EXISTS")];
                exists.extend(sources.iter().cloned());
                match self.probe(segment, vec![exists]).await {
                    Ok(replies) if replies.first().and_then(|r| normalize::integer_reply(r)) == Some(0) => {
                        Journaled::NothingToServe(reply)
                    }
                    Ok(_) => {
                        let plan = normalize::plan(&request.args, now);
                        self.journal_command(segment, proto, request, plan, reply, true).await
                    }
                    Err(e) => self.probe_failed(reply, e, true),
                }
            }
            _ => {
                let plan = normalize::plan(&request.args, now);
                self.journal_command(segment, proto, request, plan, reply, true).await
            }
        };
        match outcome {
            Journaled::NothingToServe(reply) => {
                if blocked.deadline.is_some_and(|d| d <= Instant::now()) {
                    self.blocked.remove_if(&blocked.client.id, |_, b| Arc::ptr_eq(b, blocked));
                    let _ = reply.send(Ok(blocked.timeout_reply()));
                    return Touched::Unobserved;
                }
                blocked.put_back(reply);
                self.parked.park(blocked);
                arm_timeout(&self.blocked, blocked);
                Touched::Unobserved
            }
            Journaled::Answered => {
                self.blocked.remove_if(&blocked.client.id, |_, b| Arc::ptr_eq(b, blocked));
                Touched::Unobserved
            }
            Journaled::Pushed => {
                self.blocked.remove_if(&blocked.client.id, |_, b| Arc::ptr_eq(b, blocked));
                // BLMOVE/BRPOPLPUSH push to their destination: it may serve others.
                let mut keys = blocked.keys.clone();
                if matches!(name.as_slice(), b"blmove" | b"brpoplpush") {
                    keys.extend(blocked.request.lock().unwrap().args.get(2).cloned());
                }
                if self.watches.is_empty() && self.parked.is_empty() {
                    Touched::Unobserved
                } else {
                    Touched::Keys(keys)
                }
            }
        }
    }

    /// XREAD … BLOCK: a read. The first try pins `$` to each stream's last entry, so only
    /// entries added after the client blocked serve it.
    async fn try_xread(
        &mut self,
        segment: &mut Segment,
        blocked: &Arc<Blocked>,
        request: Request,
        reply: ReplySender,
    ) -> Journaled {
        let Some(streams) = request.args.iter().position(|a| a.eq_ignore_ascii_case(b"streams")) else {
            segment.push(request.raw, false, reply, None, false);
            return Journaled::Pushed;
        };
        let count = (request.args.len() - streams - 1) / 2;
        let mut args: Vec<Bytes> = Vec::with_capacity(request.args.len());
        let mut skip_next = false;
        for (i, arg) in request.args.iter().enumerate() {
            if skip_next {
                skip_next = false;
                continue;
            }
            if i < streams && arg.eq_ignore_ascii_case(b"block") {
                skip_next = true;
                continue;
            }
            args.push(arg.clone());
        }
        let ids_at = args.len() - count;
        let dollars: Vec<usize> = (ids_at..args.len()).filter(|&i| &args[i][..] == b"$").collect();
        if !dollars.is_empty() {
            let last_entries = dollars
                .iter()
                .map(|&i| {
                    let key = args[i - count].clone();
                    vec![Bytes::from_static(b"XREVRANGE"), key, Bytes::from_static(b"+"), Bytes::from_static(b"-")]
                        .into_iter()
                        .chain([Bytes::from_static(b"COUNT"), Bytes::from_static(b"1")])
                        .collect()
                })
                .collect();
            match self.probe(segment, last_entries).await {
                Ok(replies) => {
                    for (&i, reply) in dollars.iter().zip(&replies) {
                        if let Some(id) = last_entry_id(reply) {
                            args[i] = id;
                        }
                    }
                    // Keep the pinned IDs (with BLOCK) for later tries.
                    let mut pinned = blocked.request.lock().unwrap();
                    let mut with_block = pinned.args.clone();
                    let offset = with_block.len() - count;
                    with_block[offset..].clone_from_slice(&args[ids_at..]);
                    *pinned = Request { raw: encode_command(&with_block), args: with_block };
                }
                Err(e) => return self.probe_failed(reply, e, true),
            }
        }
        match self.probe(segment, vec![args]).await {
            Ok(replies) => match replies.into_iter().next() {
                Some(frame) if &frame[..] == normalize::NIL_ARRAY => Journaled::NothingToServe(reply),
                Some(frame) => {
                    let _ = reply.send(Ok(convert_reply(blocked.proto, b"xread", frame)));
                    Journaled::Answered
                }
                None => Journaled::NothingToServe(reply),
            },
            Err(e) => self.probe_failed(reply, e, true),
        }
    }

    /// Appends the segment's journaled commands as one entry and hands it to the applier.
    async fn flush(&mut self, segment: &mut Segment) {
        if segment.items.is_empty() {
            return;
        }
        let items = std::mem::take(&mut segment.items);
        let payload = std::mem::take(&mut segment.payload).freeze();
        let append = match &self.journal {
            Some(journal) if !payload.is_empty() => {
                let permit = self.appends.clone().acquire_owned().await.expect("the semaphore is never closed");
                let append: AppendFuture = Box::pin(journal.writer.append(payload));
                Some((append, permit))
            }
            _ => None,
        };
        let proto = segment.proto.unwrap_or(Proto::Resp2);
        let _ = self.to_applier.send(ToApplier::Batch { append, proto, items });
    }

    /// Redis is not applying (its primary is lost or being replaced): hold new writes until
    /// the applier recovers — up to `write_wait`, then they fail with `-TRYAGAIN`, nothing applied.
    async fn wait_for_applier(&mut self, queue: &mut mpsc::UnboundedReceiver<Write>, batch: &mut Vec<Write>) {
        let write_wait = self.journal.as_ref().map_or(Duration::ZERO, |j| j.setup.write_wait);
        let waiting_since = Instant::now();
        while self.health.is_failing() {
            let recovered = self.health.recovered.notified();
            tokio::pin!(recovered);
            recovered.as_mut().enable();
            if !self.health.is_failing() {
                return;
            }
            let _ = tokio::time::timeout(Duration::from_millis(50), recovered).await;
            if waiting_since.elapsed() >= write_wait {
                while let Ok(write) = queue.try_recv() {
                    batch.push(write);
                }
                let refusal = error_reply(&format!(
                    "TRYAGAIN memlog: shard {} cannot apply writes right now (its Redis primary is unavailable); the write was not applied",
                    self.shard
                ));
                batch.drain(..).for_each(|write| write.refuse(refusal.clone()));
            }
        }
    }

    /// The writer stopped (lost quorum, fenced): recover the stream under a new epoch and catch
    /// the primary up, while the writes waiting here wait — up to `write_wait`, then they fail
    /// with `-TRYAGAIN`, nothing applied.
    async fn replace_writer(&mut self, queue: &mut mpsc::UnboundedReceiver<Write>, batch: &mut Vec<Write>) {
        let Some(journal) = &self.journal else { return };
        let (setup, stream) = (journal.setup.clone(), journal.stream.clone());
        let waiting_since = Instant::now();
        let mut pause = Duration::from_millis(50);
        loop {
            let recovery = quorum::recover(
                &setup.meta,
                self.shard as u32,
                &stream,
                &setup.nodes,
                setup.quorum.clone(),
                &setup.writer_id,
            );
            match tokio::time::timeout(Duration::from_secs(5), recovery).await {
                Ok(Ok(writer)) => {
                    let (done, caught_up) = oneshot::channel();
                    let _ = self.to_applier.send(ToApplier::CatchUp { lsn: writer.commit_lsn(), done });
                    let _ = caught_up.await;
                    tracing::info!(
                        shard = self.shard,
                        epoch = writer.epoch(),
                        "journal writer replaced; writes resume"
                    );
                    if let Some(journal) = &mut self.journal {
                        journal.writer = writer;
                    }
                    self.failed.store(false, Ordering::Release);
                    return;
                }
                Ok(Err(e)) => tracing::warn!(shard = self.shard, "journal recovery failed, retrying: {e}"),
                Err(_) => tracing::warn!(shard = self.shard, "journal recovery timed out, retrying"),
            }
            if waiting_since.elapsed() >= setup.write_wait {
                // Fail what waited too long; keep what arrives meanwhile for the next attempt.
                while let Ok(write) = queue.try_recv() {
                    batch.push(write);
                }
                let refusal = error_reply("TRYAGAIN memlog: the journal has no quorum; the write was not applied");
                batch.drain(..).for_each(|write| write.refuse(refusal.clone()));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }
}

/// Commands of one protocol gathered into one journal entry.
#[derive(Default)]
struct Segment {
    proto: Option<Proto>,
    payload: BytesMut,
    items: Vec<Item>,
}

impl Segment {
    fn push(
        &mut self,
        command: Bytes,
        journaled: bool,
        reply: ReplySender,
        reply_override: Option<Bytes>,
        silent: bool,
    ) {
        if journaled {
            self.payload.extend_from_slice(&command);
        }
        self.items.push(Item { command, reply, reply_override, silent });
    }
}

/// Reply overrides are RESP2; a RESP3 client gets RESP3's null for RESP2's nil, SPOP's
/// members as the set and XREADGROUP's streams as the map Redis answers with. (The other
/// overrides come from blocking pops, which the proxy does not accept yet.)
fn convert_reply(proto: Proto, command: &[u8], reply: Bytes) -> Bytes {
    match (proto, &reply[..]) {
        (Proto::Resp2, _) => reply,
        (Proto::Resp3, b"$-1\r\n" | b"*-1\r\n") => Bytes::from_static(b"_\r\n"),
        (Proto::Resp3, [b'*', ..])
            if command.eq_ignore_ascii_case(b"bzpopmin") || command.eq_ignore_ascii_case(b"bzpopmax") =>
        {
            // [key, member, score]: RESP3 sends the score as a double.
            let Some(items) = crate::resp::array_items(&reply) else { return reply };
            let Some(score) = items.get(2).and_then(normalize::bulk_reply) else { return reply };
            let mut out = BytesMut::from(&b"*3\r\n"[..]);
            items[..2].iter().for_each(|item| out.extend_from_slice(item));
            out.extend_from_slice(b",");
            out.extend_from_slice(&score);
            out.extend_from_slice(b"\r\n");
            out.freeze()
        }
        (Proto::Resp3, [b'*', ..]) if command.eq_ignore_ascii_case(b"spop") => {
            let mut set = BytesMut::from(&reply[..]);
            set[0] = b'~';
            set.freeze()
        }
        (Proto::Resp3, [b'*', ..])
            if command.eq_ignore_ascii_case(b"xreadgroup") || command.eq_ignore_ascii_case(b"xread") =>
        {
            // [[stream, entries], …] → {stream: entries, …}
            let Some(streams) = crate::resp::array_items(&reply) else { return reply };
            let mut map = BytesMut::from(format!("%{}\r\n", streams.len()).as_bytes());
            for stream in &streams {
                match crate::resp::array_items(stream) {
                    Some(pair) if pair.len() == 2 => pair.iter().for_each(|part| map.extend_from_slice(part)),
                    _ => return reply,
                }
            }
            map.freeze()
        }
        _ => reply,
    }
}

/// Applies committed entries to the primary, in LSN order.
struct Applier {
    shard: usize,
    apply: ApplyConns,
    /// Reads committed entries to catch the primary up; None when only routing.
    reader: Option<Arc<Reader>>,
    /// The journal prefix the primary holds, as far as this applier knows.
    applied: u64,
    health: Arc<ApplyHealth>,
    /// How long clients wait for a committed batch Redis cannot apply before they are told it
    /// is committed and will be applied later.
    reply_wait: Duration,
}

impl Applier {
    async fn run(mut self, mut inbox: mpsc::UnboundedReceiver<ToApplier>, failed: Arc<AtomicBool>) {
        while let Some(message) = inbox.recv().await {
            match message {
                ToApplier::Batch { append, proto, items } => {
                    let lsn = match append {
                        None => None,
                        Some((append, _permit)) => match append.await {
                            Ok(lsn) => Some(lsn),
                            Err(e) => {
                                failed.store(true, Ordering::Release);
                                let reply = append_error_reply(&e);
                                for item in items {
                                    let _ = item.reply.send(Ok(reply.clone()));
                                }
                                continue;
                            }
                        },
                    };
                    self.apply_batch(lsn, proto, items).await;
                }
                ToApplier::Probe { commands, done } => {
                    let mut requests = BytesMut::new();
                    for command in &commands {
                        requests.extend_from_slice(&encode_command(command));
                    }
                    let requests = requests.freeze();
                    let mut replies =
                        self.apply.conn(Proto::Resp2).await.call_batch(requests.clone(), commands.len()).await;
                    if matches!(replies, Err(BackendError::Unverified { .. })) {
                        // A new primary: catch it up to what was applied, then read it.
                        let applied = self.applied;
                        self.catch_up(applied).await;
                        replies = self.apply.conn(Proto::Resp2).await.call_batch(requests, commands.len()).await;
                    }
                    let _ = done.send(replies);
                }
                ToApplier::CatchUp { lsn, done } => {
                    self.catch_up(lsn).await;
                    let _ = done.send(());
                }
            }
        }
    }

    /// `MULTI <items> [SET __memlog:lsn <lsn>] EXEC`, then each item's reply from the EXEC array.
    async fn apply_batch(&mut self, lsn: Option<u64>, proto: Proto, items: Vec<Item>) {
        let Some(lsn) = lsn else {
            if self.reader.is_some() {
                return self.apply_reads(proto, items).await;
            }
            // Only routing: each command in order on the apply connection.
            let conn = self.apply.conn(proto).await;
            for item in items {
                conn.send_to(item.command, item.reply);
            }
            return;
        };
        let mut request = BytesMut::with_capacity(64 + items.iter().map(|i| i.command.len()).sum::<usize>());
        request.extend_from_slice(b"*1\r\n$5\r\nMULTI\r\n");
        for item in &items {
            request.extend_from_slice(&item.command);
        }
        request.extend_from_slice(&set_lsn(lsn));
        request.extend_from_slice(b"*1\r\n$4\r\nEXEC\r\n");
        let (request, count) = (request.freeze(), items.len() + 3);
        let mut pause = Duration::from_millis(20);
        let started = Instant::now();
        let mut items = items;
        loop {
            let result = self.apply.conn(proto).await.call_batch(request.clone(), count).await;
            let exec = result.as_ref().ok().and_then(|replies| replies.last()).and_then(crate::resp::array_items);
            if let Some(replies) = exec.filter(|replies| replies.len() == items.len() + 1) {
                self.applied = lsn;
                self.health.set_failing(false);
                for (item, reply) in items.into_iter().zip(replies) {
                    if !item.silent {
                        let _ = item.reply.send(Ok(item.reply_override.unwrap_or(reply)));
                    }
                }
                return;
            }
            // Redis did not confirm the batch (connection lost, primary restarted or replaced,
            // EXEC aborted). It is committed in the journal: hold new writes, bring the primary
            // to the entry before it, and apply it again, so its clients get their real replies
            // after a pause rather than errors.
            self.health.set_failing(true);
            let reason = match &result {
                Err(e) => e.to_string(),
                Ok(replies) => {
                    format!("EXEC answered {}", String::from_utf8_lossy(replies.last().map_or(&b""[..], |r| r)).trim())
                }
            };
            // A new connection (e.g. to a new primary) is not a failure: check and catch up at once.
            if !matches!(result, Err(BackendError::Unverified { .. })) {
                tracing::warn!(shard = self.shard, lsn, "applying a committed batch failed ({reason}); retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(500));
            }
            if started.elapsed() >= self.reply_wait {
                // Waited long enough: say what is known, and keep trying to apply it.
                let reply = error_reply(&format!(
                    "ERR memlog: the write is committed in the journal but Redis cannot apply it yet ({reason}); it will be applied from the journal"
                ));
                for item in items.iter_mut().filter(|item| !item.silent) {
                    let _ = std::mem::replace(&mut item.reply, oneshot::channel().0).send(Ok(reply.clone()));
                    item.silent = true;
                }
            }
            match self.held_lsn().await {
                Ok(held) if held >= lsn => {
                    // Applied, but its replies were lost with the connection.
                    self.catch_up(lsn).await;
                    self.health.set_failing(false);
                    let reply = error_reply(&format!(
                        "ERR memlog: the write is committed in the journal and was applied, but Redis's reply was lost ({reason}); its result is unknown"
                    ));
                    for item in items {
                        let _ = item.reply.send(Ok(reply.clone()));
                    }
                    return;
                }
                Ok(_) => {
                    self.catch_up(lsn - 1).await;
                }
                Err(e) => tracing::debug!(shard = self.shard, "the primary is not answering yet: {e}"),
            }
        }
    }

    /// Reads riding behind writes (nothing to journal), in order on the apply connection — as a
    /// batch, which the connection refuses until the primary behind it was checked, so a read
    /// never reaches a new primary before it is caught up.
    async fn apply_reads(&mut self, proto: Proto, items: Vec<Item>) {
        let mut request = BytesMut::with_capacity(items.iter().map(|i| i.command.len()).sum::<usize>());
        items.iter().for_each(|item| request.extend_from_slice(&item.command));
        let request = request.freeze();
        loop {
            match self.apply.conn(proto).await.call_batch(request.clone(), items.len()).await {
                Err(BackendError::Unverified { .. }) => {
                    let applied = self.applied;
                    self.catch_up(applied).await;
                }
                Ok(replies) => {
                    for (item, reply) in items.into_iter().zip(replies) {
                        let _ = item.reply.send(Ok(item.reply_override.unwrap_or(reply)));
                    }
                    return;
                }
                Err(e) => {
                    let reply = error_reply(&format!("ERR memlog: {e}"));
                    for item in items {
                        let _ = item.reply.send(Ok(reply.clone()));
                    }
                    return;
                }
            }
        }
    }

    /// The journal prefix the primary holds (`GET __memlog:lsn`; 0 when it holds nothing).
    async fn held_lsn(&mut self) -> anyhow::Result<u64> {
        let conn = self.apply.conn(Proto::Resp2).await.clone();
        let held = conn.call(&[&b"GET"[..], LSN_KEY]).await?;
        Ok(match crate::state::decode_resp2(&held)? {
            redis_protocol::resp2::types::BytesFrame::BulkString(n) => std::str::from_utf8(&n)?.parse::<u64>()?,
            _ => 0,
        })
    }

    /// Replays the committed entries the primary misses, `(its __memlog:lsn, lsn]`, retrying
    /// until it succeeds; returns how many entries were replayed.
    async fn catch_up(&mut self, lsn: u64) -> u64 {
        let mut pause = Duration::from_millis(50);
        loop {
            match self.try_catch_up(lsn).await {
                Ok(replayed) => {
                    self.applied = lsn;
                    return replayed;
                }
                Err(e) => {
                    tracing::warn!(shard = self.shard, "catching the primary up failed, retrying: {e}");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    async fn try_catch_up(&mut self, lsn: u64) -> anyhow::Result<u64> {
        // Asking the LSN also marks the connection checked, with or without a journal.
        let mut from = self.held_lsn().await?;
        let Some(reader) = self.reader.clone() else { return Ok(0) };
        let conn = self.apply.conn(Proto::Resp2).await.clone();
        if from > lsn {
            anyhow::bail!(
                "the primary holds lsn {from}, beyond the journal's commit point {lsn}: it was written by someone else"
            );
        }
        let mut replayed = 0;
        while from < lsn {
            let to = lsn.min(from + REPLAY_CHUNK);
            let entries = reader.read(from + 1, to).await?;
            let mut pipeline = BytesMut::new();
            let mut count = 0;
            let mut last = from;
            for entry in &entries {
                let commands = split_commands(&entry.payload)?;
                pipeline.extend_from_slice(b"*1\r\n$5\r\nMULTI\r\n");
                for command in &commands {
                    pipeline.extend_from_slice(command);
                }
                pipeline.extend_from_slice(&set_lsn(entry.lsn));
                pipeline.extend_from_slice(b"*1\r\n$4\r\nEXEC\r\n");
                count += commands.len() + 3;
                last = entry.lsn;
            }
            if count > 0 {
                let replies = conn.call_batch(pipeline.freeze(), count).await?;
                if let Some(bad) = replies.iter().find(|r| r.starts_with(b"-EXECABORT")) {
                    anyhow::bail!("replay aborted: {}", String::from_utf8_lossy(bad).trim());
                }
            }
            replayed += entries.len() as u64;
            // Barrier entries carry no payload and are skipped by the reader: advance past them.
            from = to.max(last);
        }
        if replayed > 0 {
            metrics::counter!("memlog_replayed_entries_total", "shard" => self.shard.to_string()).increment(replayed);
        }
        Ok(replayed)
    }
}

/// The ID of the one entry an `XREVRANGE key + - COUNT 1` returned; `0-0` for an empty or
/// missing stream (every entry is newer); None for an error (the XREAD then answers it).
fn last_entry_id(reply: &Bytes) -> Option<Bytes> {
    let entries = crate::resp::array_items(reply)?;
    let Some(entry) = entries.first() else { return Some(Bytes::from_static(b"0-0")) };
    let id = crate::resp::array_items(entry)?.into_iter().next()?;
    normalize::bulk_reply(&id)
}

/// `SET __memlog:lsn <lsn>`
fn set_lsn(lsn: u64) -> Bytes {
    encode_command(&[&b"SET"[..], LSN_KEY, lsn.to_string().as_bytes()])
}

/// The RESP commands of a journal entry's payload.
fn split_commands(payload: &Bytes) -> anyhow::Result<Vec<Bytes>> {
    let mut buf = BytesMut::from(&payload[..]);
    let mut parser = RequestParser::default();
    // The proxy checked each command's limits before journaling it.
    let limits = crate::resp::Limits { max_bulk_len: 1 << 40, max_args: 1 << 40 };
    let mut commands = Vec::new();
    while let Some(request) = parser.next(&mut buf, limits)? {
        commands.push(request.raw);
    }
    anyhow::ensure!(buf.is_empty(), "a journal entry ends in an incomplete command");
    Ok(commands)
}

/// What a client hears when its write's append failed.
fn append_error_reply(e: &WriteError) -> Bytes {
    match e {
        WriteError::Stopped { .. } | WriteError::NoQuorum { acked: 0, .. } | WriteError::Unreachable(_) => {
            error_reply(&format!("TRYAGAIN memlog: the journal has no quorum ({e}); the write was not applied"))
        }
        _ => error_reply(&format!(
            "ERR memlog: the journal append's outcome is unknown ({e}); the write may or may not be applied"
        )),
    }
}

//! The shard sequencer: the one place a shard's writes pass through.
//!
//! Writes queued while the previous batch was being handed on form the next batch (group
//! commit), joined by the writers of the entry just committed as they come back (`gather.rs`).
//! With a journal configured, each batch is normalized into deterministic commands
//! ([`crate::normalize`]), appended to the shard's journal stream (one append in flight, see
//! `APPENDS_IN_FLIGHT`), and once committed on the ack quorum applied on the shard's one ordered
//! apply connection as
//! `MULTI <commands> SET __memlog:lsn <lsn> EXEC`; each client gets its reply from the EXEC array.
//! That is the contract of docs/architecture.md ("Invariants"):
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

mod abort;
mod applier;
mod blocked;
#[cfg(test)]
mod fakes;
mod gather;
mod journaler;
mod parts;
mod run_as;
mod seams;
mod watch;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use journal_service::meta::MetaStore;
use journal_service::quorum::{QuorumConfig, QuorumWriter, Reader, WriteError};
use tokio::sync::{mpsc, oneshot, Notify, OwnedSemaphorePermit, Semaphore};

use crate::backend::{BackendConn, BackendError, BackendOptions, ReplySender};
use crate::keys::LSN_KEY;
use crate::normalize::{self, Plan, Resolved};
use crate::resp::{encode_command, error_reply, Proto, Request, RequestParser};
use crate::snapshot::{adopt, ShardSnapshots};
use crate::stats::ShardMemory;
use crate::table::CommandInfo;
use abort::{AbortRequest, Aborts};
use applier::Applier;
use blocked::BlockedRegistry;
pub(crate) use blocked::{unblock, Blocked, BlockedClients};
use journaler::{Journal, Journaler};
pub(crate) use run_as::run_as;
use seams::{JournalStream, Primary, QuorumStream};
pub(crate) use watch::Watch;
use watch::WatchRegistry;

/// Most writes taken into one batch.
const MAX_BATCH: usize = 4096;
/// The largest write (or transaction) memlog journals, and the size at which a batch's entry is
/// closed: what an entry holds (`MAX_ENTRY_BODY`, 64 MiB less a header) less 1 MiB of room for
/// normalization's rewrites and the pops of blocked clients served by the same batch.
pub(crate) const MAX_WRITE_BYTES: usize = journal_service::quorum::MAX_ENTRY_BODY - 1024 * 1024;
/// Requests a shard's queue holds. Beyond it, sessions wait to queue (and stop reading their
/// clients), so a hold — a failover, a lost quorum — pushes back on clients instead of growing
/// the proxy's memory; two batches' worth keeps the journaler fed.
const QUEUE_CAPACITY: usize = 2 * MAX_BATCH;
/// Batches handed to the applier and not yet applied. The appends among them are capped by
/// `APPENDS_IN_FLIGHT` already; this bounds the batches of reads riding behind writes too.
const APPLIER_CAPACITY: usize = 16;
/// Journal appends in flight per shard. Capping them makes writes that arrive meanwhile wait
/// in the queue and go out as one larger entry (group commit): a journal entry costs the nodes
/// and the proxy far more than its bytes, so fewer, fuller entries carry more writes per second.
/// One, as Redis's `appendfsync always` has one fsync per event-loop turn: each node writes a
/// stream's entries one after the other anyway, so a second append in flight only split the
/// writes into twice the entries (README "Benchmarks": 28 SETs per entry instead of 14 at
/// `-c 50`, and a quarter less CPU per SET).
const APPENDS_IN_FLIGHT: usize = 1;
/// How long parked clients wait before they are tried again when the primary could not be read.
const PARKED_RETRY: Duration = Duration::from_millis(100);
/// Most entries replayed per read from the journal.
const REPLAY_CHUNK: u64 = 2048;
/// The key the entry journaled right after an adoption deletes (a no-op that sets the LSN).
const ADOPTION_MARK_KEY: &[u8] = b"__memlog:adopted";

/// Redis 7.0's `-OOM` (`shared.oomerr`): what may add data, over memlog's `maxmemory`.
pub(crate) const OOM: &str = "OOM command not allowed when used memory > 'maxmemory'.";

/// Work waiting for its shard's order, from one client.
pub(crate) struct SequencerRequest {
    pub proto: Proto,
    /// The client's database (`databases`): what it writes and reads runs there. 0 for the
    /// proxy's own requests, and always in cluster mode.
    pub db: u8,
    /// The client it comes from (`ClientHandle::id`, from 1 on); 0 for the proxy's own requests.
    pub client: u64,
    pub op: SequencerOp,
    /// Where the reply goes (an UNWATCH's is dropped: the proxy answers it itself).
    pub reply: ReplySender,
}

impl SequencerOp {
    /// A write or transaction with a command Redis refuses at its memory limit.
    pub(crate) fn may_add_data(&self) -> bool {
        match self {
            SequencerOp::Write { command: Some(command), .. } => command.may_add_data(),
            SequencerOp::Transaction(t) => t.commands.iter().any(|q| q.command.may_add_data()),
            _ => false,
        }
    }
}

impl SequencerRequest {
    /// The client whose request the apply of its batch answers, so that it may write again
    /// right after (`gather.rs`): not the proxy's own, nor a client parked on a blocking command.
    fn answered_client(&self) -> Option<u64> {
        match self.op {
            SequencerOp::Write { .. } | SequencerOp::Transaction(_) | SequencerOp::Read(_) if self.client != 0 => {
                Some(self.client)
            }
            _ => None,
        }
    }

    /// The bytes this request adds to a journal entry, before normalization (0: nothing).
    fn journaled_len(&self) -> usize {
        match &self.op {
            SequencerOp::Write { request, .. } => request.raw.len(),
            SequencerOp::Transaction(transaction) => {
                transaction.commands.iter().filter(|c| c.write).map(|c| c.request.raw.len()).sum()
            }
            _ => 0,
        }
    }

    /// Answers `reply` without doing anything (a blocked client hears it on its own sender).
    fn refuse(self, reply: Bytes) {
        match self.op {
            SequencerOp::Unwatch(_) => {}
            SequencerOp::Block(blocked) => {
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
pub(crate) enum SequencerOp {
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
pub(crate) struct Transaction {
    pub commands: Vec<QueuedCommand>,
    pub watch: Option<Arc<Watch>>,
}

/// One command of a transaction.
pub(crate) struct QueuedCommand {
    pub request: Request,
    pub command: Arc<CommandInfo>,
    /// Journaled (a write), or only applied in order (a read).
    pub write: bool,
    /// The database it runs in: the client's, or the one a `SELECT` queued before it selects.
    pub db: u8,
    /// Answered by the proxy at EXEC, not sent (a `SELECT`, whose effect is `db`).
    pub answer: Option<Bytes>,
}

/// What the sequencer needs to journal a shard.
#[derive(Clone)]
pub(crate) struct JournalSetup {
    pub nodes: Vec<SocketAddr>,
    pub meta: Arc<MetaStore>,
    pub quorum: QuorumConfig,
    pub writer_id: String,
    pub write_wait: Duration,
    /// The largest write (or transaction's writes) journaled; larger ones are refused.
    pub max_write_bytes: usize,
    /// Snapshots of the shards, when configured.
    pub snapshots: Option<Arc<crate::snapshot::SnapshotSettings>>,
}

/// Handle to a shard's sequencer.
#[derive(Clone)]
pub(crate) struct Sequencer {
    shard: usize,
    queue: mpsc::Sender<SequencerRequest>,
    health: Arc<ApplyHealth>,
    aborts: mpsc::UnboundedSender<AbortRequest>,
    /// The node the shard's connections follow (named in errors; it moves on failover).
    primary: Arc<crate::backend::NodeTarget>,
    /// This shard's blocked clients, for `CLIENT UNBLOCK`.
    pub blocked: BlockedClients,
    /// Why the shard does not serve (adoption refused its primary's data), and the error reply
    /// every request gets instead of being journaled or applied. `None` while it serves.
    refusal: Option<(Arc<str>, Bytes)>,
}

impl Sequencer {
    /// Starts the sequencer; with a journal, returns once the stream is recovered and the
    /// primary caught up, so nothing is served from a primary that misses committed writes.
    /// A primary holding data the journal does not hold is adopted first, or the shard is
    /// refused ([`adopt::settle`]): then the sequencer answers every request with the refusal
    /// ([`Sequencer::refusing`]) and the other shards serve. `slots` are the shard's, to report
    /// keys of other shards' slots.
    pub(crate) async fn start(
        shard: usize,
        primary: Arc<crate::backend::NodeTarget>,
        opts: BackendOptions,
        journal: Option<JournalSetup>,
        snapshots: Option<Arc<ShardSnapshots>>,
        slots: &[(u16, u16)],
        memory: Arc<ShardMemory>,
    ) -> anyhow::Result<Sequencer> {
        let (queue, rx) = mpsc::channel(QUEUE_CAPACITY);
        let apply = ApplyConns::new(primary.clone(), opts.clone());
        let health = Arc::new(ApplyHealth { published_to: Some(primary.clone()), ..ApplyHealth::default() });
        let reply_wait = journal.as_ref().map_or(Duration::ZERO, |setup| setup.write_wait);
        let meta = journal.as_ref().map(|setup| setup.meta.clone());
        let aborted = match &meta {
            Some(meta) => aborted_entries(meta, shard).await,
            None => Default::default(),
        };
        let (aborts, abort_requests) = Aborts::new(meta, aborted);
        let mut applier = Applier {
            shard,
            run_as: run_as::RunAs::new(opts.access.auth.as_deref()),
            apply,
            reader: None,
            snapshots,
            applied: 0,
            health: health.clone(),
            reply_wait,
            aborts,
        };
        let mut needs_adoption_mark = false;
        let journal = match journal {
            None => None,
            Some(setup) => {
                let stream = QuorumStream { shard, name: format!("shard-{shard}"), setup };
                let setup = &stream.setup;
                applier.reader = Some(Arc::new(Reader::new(&stream.name, &setup.nodes, &setup.quorum.transport)));
                let (write_wait, max_write_bytes) = (setup.write_wait, setup.max_write_bytes);
                let writer = recover_until_done(&stream).await;
                let reader = applier.reader.as_deref().expect("set above");
                let snapshots = applier.snapshots.as_deref();
                needs_adoption_mark =
                    match adopt::settle(shard, &primary, &opts, writer.commit_lsn(), reader, snapshots, slots).await {
                        Ok(needs_mark) => needs_mark,
                        Err(refused) if refused.refuses_the_shard() => {
                            tracing::error!(
                                shard,
                                node = %primary.addr(),
                                "{refused}. Until then every command routed to this shard is answered with this \
                                 error; the other shards serve"
                            );
                            return Ok(Sequencer::refusing(shard, primary, &refused.to_string()));
                        }
                        Err(failed) => return Err(failed.into()),
                    };
                let started = Instant::now();
                let replayed = applier.catch_up(writer.commit_lsn()).await;
                // What the primary holds now (the last entry with a payload: barriers set no
                // LSN) is what every read connection waits for from here on.
                if let Some(held) =
                    applier.apply.lsn_check().await.ok().and_then(|reply| crate::keys::parse_lsn(&reply))
                {
                    health.primary_holds(held);
                }
                tracing::info!(
                    shard,
                    epoch = writer.epoch(),
                    lsn = writer.commit_lsn(),
                    replayed,
                    elapsed_ms = crate::units::millis(started.elapsed()),
                    "shard recovered and primary caught up"
                );
                Some(Journal { stream, write_wait, max_write_bytes, writer })
            }
        };
        let (to_applier, applier_rx) = mpsc::channel(APPLIER_CAPACITY);
        let failed = Arc::new(AtomicBool::new(false));
        tokio::spawn(applier.run(applier_rx, failed.clone()));
        let blocked = BlockedClients::default();
        let journaler = Journaler {
            shard,
            journal,
            to_applier,
            failed,
            appends: Arc::new(Semaphore::new(APPENDS_IN_FLIGHT)),
            health: health.clone(),
            watches: WatchRegistry::default(),
            parked: BlockedRegistry::default(),
            blocked: blocked.clone(),
            queue: queue.downgrade(),
            retry_scheduled: false,
            memory,
        };
        tokio::spawn(journaler.run(rx));
        let sequencer = Sequencer { shard, queue, health, aborts: abort_requests, primary, blocked, refusal: None };
        if needs_adoption_mark {
            sequencer.journal_adoption_mark().await?;
        }
        Ok(sequencer)
    }

    /// The sequencer of a refused shard: every request is answered `-CLUSTERDOWN memlog:
    /// <refusal>` (a Redis Cluster client's word for a slot nobody serves), nothing is journaled
    /// or sent to the node.
    fn refusing(shard: usize, primary: Arc<crate::backend::NodeTarget>, refusal: &str) -> Sequencer {
        let reply = error_reply(&format!("CLUSTERDOWN memlog: {refusal}"));
        let refusal = Some((Arc::from(refusal), reply.clone()));
        let (queue, mut requests) = mpsc::channel::<SequencerRequest>(QUEUE_CAPACITY);
        let blocked = BlockedClients::default();
        let registry = blocked.clone();
        tokio::spawn(async move {
            while let Some(request) = requests.recv().await {
                if let SequencerOp::Block(parked) = &request.op {
                    registry.remove_if(&parked.client.id, |_, b| Arc::ptr_eq(b, parked));
                }
                request.refuse(reply.clone());
            }
        });
        let (aborts, _) = mpsc::unbounded_channel();
        Sequencer { shard, queue, health: Arc::default(), aborts, primary, blocked, refusal }
    }

    /// Why the shard does not serve (`None` while it serves).
    pub(crate) fn refusal(&self) -> Option<&str> {
        self.refusal.as_ref().map(|(why, _)| &**why)
    }

    /// The error reply of a shard that does not serve.
    pub(crate) fn refusal_reply(&self) -> Option<Bytes> {
        self.refusal.as_ref().map(|(_, reply)| reply.clone())
    }

    /// Journals and applies a no-op as the first entry after an adoption, so the primary holds
    /// an LSN: a node that comes back empty is then found behind the shard (and rebuilt from the
    /// baseline and the journal) instead of being taken for the empty journal's state.
    async fn journal_adoption_mark(&self) -> anyhow::Result<()> {
        let (reply, applied) = oneshot::channel();
        let request = Request::from_args(&[&b"DEL"[..], ADOPTION_MARK_KEY]);
        let op = SequencerOp::Write { request, command: None };
        self.submit(SequencerRequest { proto: Proto::Resp2, db: 0, client: 0, op, reply }).await;
        match applied.await {
            Ok(Ok(reply)) if reply.starts_with(b":") => Ok(()),
            Ok(Ok(reply)) => anyhow::bail!("the adoption mark was refused: {}", String::from_utf8_lossy(&reply).trim()),
            Ok(Err(e)) => anyhow::bail!("the adoption mark was not applied: {e}"),
            Err(_) => anyhow::bail!("the adoption mark was dropped"),
        }
    }

    /// `MEMLOG ABORT`: aborts entry `lsn`, which the applier must be stuck on (`abort.rs`);
    /// `others` are the shard's nodes besides its primary.
    pub(crate) async fn abort_stuck_entry(&self, lsn: u64, others: Vec<String>) -> Result<String, String> {
        let stuck_on = match self.health.stuck_on.load(Ordering::Acquire) {
            0 => None,
            stuck => Some(stuck),
        };
        abort::request(self.shard, stuck_on, &self.aborts, lsn, others).await
    }

    /// Queues `write` once the shard's queue has room (see `QUEUE_CAPACITY`).
    pub(crate) async fn submit(&self, write: SequencerRequest) {
        if let Err(mpsc::error::SendError(write)) = self.queue.send(write).await {
            let _ = write.reply.send(Err(BackendError::Lost { addr: self.primary.addr().to_string() }));
        }
    }

    /// Queues `write` without waiting, for what cannot wait (a disconnecting client's UNWATCH);
    /// false if the queue is full or closed.
    pub(crate) fn try_submit(&self, write: SequencerRequest) -> bool {
        self.queue.try_send(write).is_ok()
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
        let resp2 = BackendConn::follow(primary.clone(), crate::backend::Role::Apply, Proto::Resp2, opts.clone());
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
                let (primary, opts) = (&self.primary, self.opts.clone());
                self.resp3.get_or_insert_with(|| {
                    BackendConn::follow(primary.clone(), crate::backend::Role::Apply, Proto::Resp3, opts)
                })
            }
        }
    }
}

/// The shard's aborted entries, retrying until the metadata store answers: replaying one of
/// them would hang (or diverge) like the first time.
async fn aborted_entries(meta: &MetaStore, shard: usize) -> std::collections::BTreeSet<u64> {
    let mut pause = Duration::from_millis(50);
    loop {
        match meta.aborted_entries(crate::router::shard_id(shard)).await {
            Ok(entries) => return entries,
            Err(e) => {
                tracing::warn!(shard, "reading the aborted entries failed, retrying: {e}");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// Claims the shard's next epoch and recovers its stream, retrying until the journal and the
/// metadata store answer: a shard is not served before its journal is recovered.
async fn recover_until_done(stream: &QuorumStream) -> QuorumWriter {
    let mut pause = Duration::from_millis(100);
    loop {
        match stream.recover().await {
            Ok(writer) => return writer,
            Err(e) => {
                tracing::warn!(shard = stream.shard, "journal recovery failed, retrying: {e}");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
        }
    }
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
    /// Run `commands` on the primary, in database `db`, once everything before is applied;
    /// answer their replies.
    Probe { commands: Vec<Vec<Bytes>>, db: u8, done: oneshot::Sender<Result<Vec<Bytes>, BackendError>> },
    /// Replay the journal onto the primary up to `lsn`, then answer.
    CatchUp { lsn: u64, done: oneshot::Sender<()> },
}

type AppendFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Result<u64, WriteError>> + Send>>;

/// Whether the applier is applying; while it is not (Redis lost, a failover), new writes wait.
#[derive(Default)]
struct ApplyHealth {
    failing: AtomicBool,
    recovered: Notify,
    /// The entry the applier keeps failing to apply (0: none), for `MEMLOG ABORT`.
    stuck_on: std::sync::atomic::AtomicU64,
    /// The shard's target, where the journal prefix the primary holds is published for the read
    /// connections (none in the sequencer's unit tests).
    published_to: Option<Arc<crate::backend::NodeTarget>>,
    /// How long applying the last journaled batch took, in microseconds (`gather.rs`).
    last_apply_micros: std::sync::atomic::AtomicU64,
}

impl ApplyHealth {
    /// The primary holds the journal prefix up to `lsn` (an entry applied, or the start-up
    /// catch-up done). Published before any client hears of it, so a read connection that
    /// (re)connects from then on waits until its node holds at least every acknowledged write
    /// (invariant I3 for reads), and the controller rebuilds a primary found behind it.
    fn primary_holds(&self, lsn: u64) {
        if let Some(target) = &self.published_to {
            target.primary_holds(lsn);
        }
    }

    /// Applying a journaled batch took `took`.
    fn applied_in(&self, took: Duration) {
        self.last_apply_micros.store(took.as_micros().try_into().unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// How long applying the last journaled batch took.
    fn last_apply(&self) -> Duration {
        Duration::from_micros(self.last_apply_micros.load(Ordering::Relaxed))
    }

    fn set_failing(&self, failing: bool) {
        if self.failing.swap(failing, Ordering::AcqRel) && !failing {
            self.recovered.notify_waiters();
        }
    }

    fn is_failing(&self) -> bool {
        self.failing.load(Ordering::Acquire)
    }
}

//! The journaler: takes a shard's writes in order, normalizes them, appends them to the journal
//! (grouped into entries, one append in flight) and hands each entry to the applier. Every
//! write passes here, so WATCHes and parked blocking commands are checked here too.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::blocked::{arm_timeout, BlockedRegistry};
use super::gather::Gathering;
use super::seams::{JournalStream, QuorumStream, StreamWriter};
use super::watch::WatchRegistry;
use super::*;

/// The shard's journal, when one is configured.
pub(super) struct Journal<S: JournalStream> {
    pub(super) stream: S,
    /// How long writes wait for a quorum (or for the primary) before they fail with `-TRYAGAIN`.
    pub(super) write_wait: Duration,
    /// The largest write journaled (`[journal] max_write_bytes`).
    pub(super) max_write_bytes: usize,
    pub(super) writer: S::Writer,
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
pub(super) struct Journaler<S: JournalStream = QuorumStream> {
    pub(super) shard: usize,
    /// None: the proxy only routes, nothing is journaled.
    pub(super) journal: Option<Journal<S>>,
    pub(super) to_applier: mpsc::Sender<ToApplier>,
    /// Set by the applier when an append failed: the writer has stopped and must be replaced.
    pub(super) failed: Arc<AtomicBool>,
    /// One permit per append in flight; the applier returns it once the append is decided.
    pub(super) appends: Arc<Semaphore>,
    pub(super) health: Arc<ApplyHealth>,
    pub(super) watches: WatchRegistry,
    pub(super) parked: BlockedRegistry,
    pub(super) blocked: BlockedClients,
    /// This sequencer's own queue, to retry parked clients later.
    pub(super) queue: mpsc::WeakSender<SequencerRequest>,
    pub(super) retry_scheduled: bool,
    /// The shard's memory against memlog's `maxmemory`: over it, what may add data is refused.
    pub(super) memory: Arc<ShardMemory>,
}

impl<S: JournalStream> Journaler<S> {
    pub(super) async fn run(mut self, mut queue: mpsc::Receiver<SequencerRequest>) {
        let batch_size = metrics::histogram!("memlog_sequencer_batch_size", "shard" => self.shard.to_string());
        let mut batch = Vec::with_capacity(64);
        let mut swept = Instant::now();
        let mut gathering = Gathering::new(self.shard, self.journal.is_some());
        loop {
            // Take the next batch only once an append may start, so what arrives meanwhile joins
            // it, and the writers of the entry just committed are given a moment to come back.
            drop(self.appends.acquire().await);
            if !gathering.take(&mut queue, &mut batch, self.health.last_apply()).await {
                return;
            }
            batch_size.record(batch.len() as f64);
            if self.failed.load(Ordering::Acquire) {
                self.replace_writer(&mut queue, &mut batch).await;
            }
            if self.health.is_failing() {
                self.wait_for_applier(&mut queue, &mut batch).await;
            }
            // The wall clock: relative times (TTLs, a script's TIME) are anchored to it.
            let now = crate::units::unix_ms();
            let mut segment = EntryBuilder::default();
            for write in batch.drain(..) {
                self.sequence(&mut segment, write, now).await;
            }
            self.flush(&mut segment).await;
            if swept.elapsed() >= Duration::from_secs(1) {
                self.parked.sweep();
                self.blocked.retain(|_, blocked| blocked.is_waiting());
                swept = Instant::now();
            }
        }
    }

    async fn sequence(&mut self, segment: &mut EntryBuilder, write: SequencerRequest, now: u64) {
        let len = write.journaled_len();
        if let Some(max) = self.journal.as_ref().map(|j| j.max_write_bytes).filter(|&max| len > max) {
            let refusal = match &write.op {
                SequencerOp::Transaction(_) => format!(
                    "EXECABORT Transaction discarded: memlog journals at most {max} bytes of writes per transaction (max_write_bytes); this one has {len}"
                ),
                _ => format!("ERR memlog: the write is {len} bytes; memlog journals writes of at most {max} bytes (max_write_bytes); it was not applied"),
            };
            return write.refuse(error_reply(&refusal));
        }
        if let Some(refusal) = self.out_of_memory(&write.op) {
            return write.refuse(error_reply(refusal));
        }
        // Close the entry before it would outgrow what one entry holds.
        if segment.payload.len() + len > MAX_WRITE_BYTES {
            self.flush(segment).await;
        }
        let SequencerRequest { proto, db, op, reply, .. } = write;
        segment.db = db;
        if segment.proto != Some(proto) && !segment.items.is_empty() {
            self.flush(segment).await;
        }
        segment.proto = Some(proto);
        match op {
            SequencerOp::Read(request) => segment.push(request.raw, false, reply, None, false),
            SequencerOp::Write { request, command } => {
                let touched = self.touched(db, &request, command.as_deref());
                let plan = if self.journal.is_some() { normalize::plan(&request.args, now) } else { Plan::AsIs };
                self.journal_command(segment, proto, request, plan, reply, false).await;
                self.after_write(segment, touched, now).await;
            }
            SequencerOp::Transaction(transaction) => self.transaction(segment, proto, transaction, reply, now).await,
            SequencerOp::Watch { watch, keys } => self.watch(segment, watch, keys, reply),
            SequencerOp::Unwatch(watch) => self.watches.remove(&watch),
            SequencerOp::Block(blocked) => {
                let touched = self.try_blocked(segment, &blocked, now).await;
                self.after_write(segment, touched, now).await;
            }
            SequencerOp::RetryParked => {
                self.retry_scheduled = false;
                let parked = self.parked.wake(None);
                self.serve(segment, parked, now).await;
            }
            SequencerOp::Wait => {
                let live = self.journal.as_ref().map_or(0, |j| j.writer.live_nodes());
                let _ = reply.send(Ok(Bytes::from(format!(":{live}\r\n"))));
            }
        }
    }

    /// Redis's answer to a command that may add data while the shard is over `maxmemory` with
    /// nothing to evict (docs/parameters.md, "Eviction"), decided before anything is journaled.
    fn out_of_memory(&self, op: &SequencerOp) -> Option<&'static str> {
        if !op.may_add_data() || !self.memory.refuses_growth() {
            return None;
        }
        Some(if matches!(op, SequencerOp::Transaction(_)) { EXECABORT_OOM } else { OOM })
    }

    /// Locates the keys a write in database `db` touches, as the watch and blocked-client
    /// registries know them (`databases::registered_key`), if anyone watches or blocks on this
    /// shard. `MOVE` and `COPY … DB` touch a key in the other database too; emptying or swapping
    /// databases touches everything.
    fn touched(&self, db: u8, request: &Request, command: Option<&CommandInfo>) -> Touched {
        if self.watches.is_empty() && self.parked.is_empty() {
            return Touched::Unobserved;
        }
        let Some(command) = command else { return Touched::Everything };
        if command.needs_getkeys || matches!(command.name.as_str(), "flushall" | "flushdb" | "swapdb") {
            return Touched::Everything;
        }
        let Some(positions) = command.key_positions(&request.args) else { return Touched::Everything };
        let mut keys: Vec<Bytes> =
            positions.into_iter().map(|p| crate::databases::registered_key(db, &request.args[p])).collect();
        if let Some((target, key)) = crate::databases::written_elsewhere(&command.name, &request.args) {
            keys.push(crate::databases::registered_key(target, key));
        }
        Touched::Keys(keys)
    }

    /// Marks the watches of what a write touched and serves the clients blocked on it, in the
    /// order they blocked, each tried right behind the write (and behind each other).
    async fn after_write(&mut self, segment: &mut EntryBuilder, touched: Touched, now: u64) {
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
    async fn serve(&mut self, segment: &mut EntryBuilder, woken: Vec<Arc<Blocked>>, now: u64) {
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
        segment: &mut EntryBuilder,
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

    /// Queues an [`SequencerOp::RetryParked`] after a pause (one at a time).
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
                let _ = queue
                    .send(SequencerRequest {
                        proto: Proto::Resp2,
                        db: 0,
                        client: 0,
                        op: SequencerOp::RetryParked,
                        reply,
                    })
                    .await;
            }
        });
    }

    /// Runs read-only `commands` on the primary once everything before them is applied.
    async fn probe(
        &mut self,
        segment: &mut EntryBuilder,
        commands: Vec<Vec<Bytes>>,
    ) -> Result<Vec<Bytes>, BackendError> {
        self.flush(segment).await;
        let (done, replies) = oneshot::channel();
        let _ = self.to_applier.send(ToApplier::Probe { commands, db: segment.db, done }).await;
        replies.await.unwrap_or_else(|_| Err(BackendError::Lost { addr: "the shard's applier".into() }))
    }

    /// Pushes a probed write's commands; the client's reply rides on the last one.
    fn push_resolved(
        &mut self,
        segment: &mut EntryBuilder,
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
    fn watch(&mut self, segment: &mut EntryBuilder, watch: Arc<Watch>, keys: Vec<Bytes>, reply: ReplySender) {
        let mut expiry_replies = Vec::with_capacity(keys.len());
        for key in &keys {
            let (tx, rx) = oneshot::channel();
            segment.push(encode_command(&[&b"PEXPIRETIME"[..], key]), false, tx, None, false);
            expiry_replies.push(rx);
        }
        // Watched in the client's database (its PEXPIRETIMEs above run there too).
        self.watches.add(&watch, keys.iter().map(|key| crate::databases::registered_key(segment.db, key)).collect());
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
        segment: &mut EntryBuilder,
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
        for QueuedCommand { request, command, db, .. } in &commands {
            match self.touched(*db, request, Some(command)) {
                Touched::Keys(keys) => touched.extend(keys),
                Touched::Everything => everything = true,
                Touched::Unobserved => {}
            }
        }
        if self.journal.is_none() {
            // Only routing: Redis runs the transaction itself, on the apply connection, in the
            // client's database (selected before it: inside, SELECT would be queued), its own
            // SELECTs included; the connection goes back to database 0 after it.
            let db = std::mem::take(&mut segment.db);
            let selects = commands.iter().any(|queued| queued.answer.is_some());
            let silent = || oneshot::channel().0;
            if db != 0 {
                segment.push(crate::databases::select(db), false, silent(), None, true);
            }
            segment.push(Bytes::from_static(b"*1\r\n$5\r\nMULTI\r\n"), false, silent(), None, true);
            for queued in commands {
                segment.push(queued.request.raw, false, silent(), None, true);
            }
            segment.push(Bytes::from_static(b"*1\r\n$4\r\nEXEC\r\n"), false, reply, None, false);
            if db != 0 || selects {
                segment.push(Bytes::from_static(crate::databases::SELECT_0), false, silent(), None, true);
            }
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
        segment: &mut EntryBuilder,
        proto: Proto,
        commands: Vec<QueuedCommand>,
        reply: ReplySender,
        now: u64,
    ) {
        // Keys written so far (while `earlier` holds writes, all in the current database).
        let mut written: Vec<Bytes> = Vec::new();
        // The earlier writes as they will be journaled, for a probe that must see them
        // (`normalize::after_earlier_writes`); `None` once one may touch keys it does not name,
        // or once a queued SELECT moved to another database (the probe replays the earlier
        // writes in its own database).
        let mut earlier: Option<Vec<Vec<Bytes>>> = Some(Vec::new());
        let mut plans = Vec::with_capacity(commands.len());
        for QueuedCommand { request, command, write, db, answer } in &commands {
            let previous = std::mem::replace(&mut segment.db, *db);
            if let Some(answer) = answer {
                if *db != previous && earlier.as_ref().is_some_and(|e| !e.is_empty()) {
                    earlier = None;
                }
                plans.push(Prepared::Resolved(Resolved { commands: Vec::new(), reply: Some(answer.clone()) }));
                continue;
            }
            let positions = command.key_positions(&request.args);
            let keys: Vec<Bytes> =
                positions.clone().unwrap_or_default().into_iter().map(|p| request.args[p].clone()).collect();
            let plan = if *write || command.flags.blocking { normalize::plan(&request.args, now) } else { Plan::AsIs };
            let plan = match plan {
                Plan::Probe { probe, resolve } if keys.iter().any(|k| written.contains(k)) => match &earlier {
                    Some(earlier) => normalize::after_earlier_writes(earlier, &written, probe, resolve),
                    None => {
                        let msg = format!(
                            "EXECABORT Transaction discarded: memlog cannot journal '{}' after a script, or a command without named keys, wrote in the same transaction, or after writes and a SELECT of another database (its outcome depends on the data); run it outside the MULTI",
                            crate::table::display_name(&command.name)
                        );
                        let _ = reply.send(Ok(error_reply(&msg)));
                        return;
                    }
                },
                plan => plan,
            };
            let plan = match plan {
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
                // A script may write keys it does not declare: the probe could not put them back.
                let names_its_keys = positions.is_some() && !crate::table::is_script_call(&command.name);
                match (&mut earlier, &plan) {
                    (Some(_), _) if !names_its_keys => earlier = None,
                    (Some(earlier), Prepared::Resolved(resolved)) => earlier.extend(resolved.commands.iter().cloned()),
                    (Some(earlier), Prepared::Rewritten(rewritten)) => earlier.push(rewritten.clone()),
                    (Some(earlier), Prepared::AsSent) => earlier.push(request.args.clone()),
                    (None, _) => {}
                }
                for key in keys {
                    if !written.contains(&key) {
                        written.push(key);
                    }
                }
            }
            plans.push(plan);
        }
        let mut replies = Vec::with_capacity(commands.len());
        for (QueuedCommand { request, write, db, .. }, plan) in commands.into_iter().zip(plans) {
            segment.db = db;
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
    async fn try_blocked(&mut self, segment: &mut EntryBuilder, blocked: &Arc<Blocked>, now: u64) -> Touched {
        let Some(reply) = blocked.take_reply() else {
            self.blocked.remove_if(&blocked.client.id, |_, b| Arc::ptr_eq(b, blocked));
            return Touched::Unobserved;
        };
        let proto = blocked.proto;
        // Tried in the database it blocked in (whatever the write that woke it wrote in).
        segment.db = blocked.db;
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
                    Touched::Keys(keys.iter().map(|key| crate::databases::registered_key(blocked.db, key)).collect())
                }
            }
        }
    }

    /// XREAD … BLOCK: a read. The first try pins `$` to each stream's last entry, so only
    /// entries added after the client blocked serve it.
    async fn try_xread(
        &mut self,
        segment: &mut EntryBuilder,
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
    async fn flush(&mut self, segment: &mut EntryBuilder) {
        if segment.items.is_empty() {
            return;
        }
        let items = std::mem::take(&mut segment.items);
        let payload = std::mem::take(&mut segment.payload).freeze();
        self.memory.add_written(payload.len());
        let append = match &self.journal {
            Some(journal) if !payload.is_empty() => {
                let permit = self.appends.clone().acquire_owned().await.expect("the semaphore is never closed");
                // A write larger than an entry: its parts are appended together, in order, and
                // the batch commits with the last one (`parts.rs`).
                let mut appends: Vec<AppendFuture> =
                    super::parts::split(payload).into_iter().map(|part| journal.writer.append(part)).collect();
                let append = if appends.len() == 1 {
                    appends.remove(0)
                } else {
                    Box::pin(async move {
                        let mut last = 0;
                        for append in appends {
                            last = append.await?;
                        }
                        Ok(last)
                    })
                };
                Some((append, permit))
            }
            _ => None,
        };
        let proto = segment.proto.unwrap_or(Proto::Resp2);
        let _ = self.to_applier.send(ToApplier::Batch { append, proto, items }).await;
    }

    /// Redis is not applying (its primary is lost or being replaced): hold new writes until
    /// the applier recovers — up to `write_wait`, then they fail with `-TRYAGAIN`, nothing applied.
    async fn wait_for_applier(
        &mut self,
        queue: &mut mpsc::Receiver<SequencerRequest>,
        batch: &mut Vec<SequencerRequest>,
    ) {
        let write_wait = self.journal.as_ref().map_or(Duration::ZERO, |j| j.write_wait);
        let waiting_since = tokio::time::Instant::now();
        while self.health.is_failing() {
            let recovered = self.health.recovered.notified();
            tokio::pin!(recovered);
            recovered.as_mut().enable();
            if !self.health.is_failing() {
                return;
            }
            let _ = tokio::time::timeout(Duration::from_millis(50), recovered).await;
            // Recovered meanwhile: what arrived during the wait is served, not refused.
            if waiting_since.elapsed() >= write_wait && self.health.is_failing() {
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
    async fn replace_writer(
        &mut self,
        queue: &mut mpsc::Receiver<SequencerRequest>,
        batch: &mut Vec<SequencerRequest>,
    ) {
        let Some(journal) = &self.journal else { return };
        let write_wait = journal.write_wait;
        let waiting_since = tokio::time::Instant::now();
        let mut pause = Duration::from_millis(50);
        loop {
            let Some(journal) = &self.journal else { return };
            match tokio::time::timeout(Duration::from_secs(5), journal.stream.recover()).await {
                Ok(Ok(writer)) => {
                    let (done, caught_up) = oneshot::channel();
                    let _ = self.to_applier.send(ToApplier::CatchUp { lsn: writer.commit_lsn(), done }).await;
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
            if waiting_since.elapsed() >= write_wait {
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

/// Redis 7.0's EXEC of a transaction with such a command once memory ran out after it was queued.
const EXECABORT_OOM: &str =
    "EXECABORT Transaction discarded because of: OOM command not allowed when used memory > 'maxmemory'.";

/// Commands of one protocol gathered into one journal entry.
#[derive(Default)]
struct EntryBuilder {
    proto: Option<Proto>,
    /// The database of the request being sequenced: what it pushes is put in that database's
    /// journaled form (`databases`).
    db: u8,
    payload: BytesMut,
    items: Vec<Item>,
}

impl EntryBuilder {
    fn push(
        &mut self,
        command: Bytes,
        journaled: bool,
        reply: ReplySender,
        reply_override: Option<Bytes>,
        silent: bool,
    ) {
        let command = crate::databases::in_db(&command, self.db);
        if journaled {
            self.payload.extend_from_slice(&command);
        }
        self.items.push(Item { command, reply, reply_override, silent });
    }
}

/// Reply overrides (and probe replies) are RESP2; a RESP3 client gets RESP3's null for RESP2's
/// nil, SPOP's members as the set, XREAD's and XREADGROUP's streams as the map Redis answers
/// with, and BZPOPMIN/BZPOPMAX's score as a double.
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

/// The ID of the one entry an `XREVRANGE key + - COUNT 1` returned; `0-0` for an empty or
/// missing stream (every entry is newer); None for an error (the XREAD then answers it).
fn last_entry_id(reply: &Bytes) -> Option<Bytes> {
    let entries = crate::resp::array_items(reply)?;
    let Some(entry) = entries.first() else { return Some(Bytes::from_static(b"0-0")) };
    let id = crate::resp::array_items(entry)?.into_iter().next()?;
    normalize::bulk_reply(&id)
}

#[cfg(test)]
mod tests;

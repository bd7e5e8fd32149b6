//! The applier: awaits each committed entry in order and applies it to the shard's primary as
//! `MULTI … SET __memlog:lsn N EXEC`, answering each client from the EXEC array; catches the
//! primary up from the journal when it misses entries (start-up, restart, failover).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use journal_service::quorum::{ReadError, Reader, WriteError};
use tokio::sync::{mpsc, oneshot};

use super::abort::Aborts;
use super::parts::{Assembler, Piece};
use super::run_as::{own_replies, RunAs};
use super::seams::{CommittedJournal, Primary};
use super::*;

/// Applies committed entries to the primary, in LSN order.
pub(super) struct Applier<P = ApplyConns, J = Reader> {
    pub(super) shard: usize,
    /// Sends scripts of restricted callers as their caller (`run_as.rs`).
    pub(super) run_as: RunAs,
    pub(super) apply: P,
    /// Reads committed entries to catch the primary up; None when only routing.
    pub(super) reader: Option<Arc<J>>,
    /// Where the prefix the journal gave up is, for a primary that misses part of it.
    pub(super) snapshots: Option<Arc<ShardSnapshots>>,
    /// The journal prefix the primary holds, as far as this applier knows.
    pub(super) applied: u64,
    pub(super) health: Arc<ApplyHealth>,
    /// How long clients wait for a committed batch Redis cannot apply before they are told it
    /// is committed and will be applied later.
    pub(super) reply_wait: Duration,
    /// Entries no replay applies, and the operator's requests to add one (`abort.rs`).
    pub(super) aborts: Aborts,
}

impl<P: Primary, J: CommittedJournal> Applier<P, J> {
    pub(super) async fn run(mut self, mut inbox: mpsc::Receiver<ToApplier>, failed: Arc<AtomicBool>) {
        let applies = metrics::histogram!("memlog_sequencer_apply_seconds", "shard" => self.shard.to_string());
        while let Some(message) = inbox.recv().await {
            match message {
                ToApplier::Batch { append, proto, items } => {
                    let lsn = match append {
                        None => None,
                        Some((append, _permit)) => match append.await {
                            Ok(lsn) => Some(lsn),
                            Err(e) => {
                                // Too large: refused before anything was sent; the writer goes on.
                                if !matches!(e, WriteError::TooLarge { .. }) {
                                    failed.store(true, Ordering::Release);
                                }
                                let reply = append_error_reply(&e);
                                for item in items {
                                    let _ = item.reply.send(Ok(reply.clone()));
                                }
                                continue;
                            }
                        },
                    };
                    let started = std::time::Instant::now();
                    self.apply_batch(lsn, proto, items).await;
                    if lsn.is_some() {
                        let took = started.elapsed();
                        self.health.applied_in(took);
                        applies.record(took.as_secs_f64());
                    }
                }
                ToApplier::Probe { commands, db, done } => {
                    // In another database, the whole probe runs there: it may be a MULTI (a dry
                    // run), inside which a SELECT would only be queued.
                    let mut requests = BytesMut::new();
                    for command in &commands {
                        requests.extend_from_slice(&encode_command(command));
                    }
                    let (requests, added) = crate::databases::batch_in(db, requests.freeze());
                    let count = commands.len() + added;
                    let mut replies = self.apply.call_batch(Proto::Resp2, requests.clone(), count).await;
                    if matches!(replies, Err(BackendError::Unverified { .. })) {
                        // A new primary: catch it up to what was applied, then read it.
                        let applied = self.applied;
                        self.catch_up(applied).await;
                        replies = self.apply.call_batch(Proto::Resp2, requests, count).await;
                    }
                    let _ = done.send(replies.map(|replies| crate::databases::batch_replies(db, replies)));
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
            // A script run as its caller, or a command of another database, is several
            // commands: sent as a batch.
            if items.iter().any(|item| RunAs::expands(&item.command)) {
                return self.apply_reads(proto, items).await;
            }
            // Only routing: each command in order on the apply connection.
            for item in items {
                self.apply.forward(proto, item.command, item.reply).await;
            }
            return;
        };
        let mut request = BytesMut::with_capacity(64 + items.iter().map(|i| i.command.len()).sum::<usize>());
        request.extend_from_slice(b"*1\r\n$5\r\nMULTI\r\n");
        let sent = self.run_as.append_all(items.iter().map(|item| &item.command), &mut request);
        let queued: usize = sent.iter().map(|s| s.count).sum();
        request.extend_from_slice(&set_lsn(lsn));
        request.extend_from_slice(b"*1\r\n$4\r\nEXEC\r\n");
        let (request, count) = (request.freeze(), queued + 3);
        let mut pause = Duration::from_millis(20);
        // tokio's clock (the same as std's outside tests): the unit tests run this wait in paused time.
        let started = tokio::time::Instant::now();
        let mut items = items;
        loop {
            if self.aborts.entries.contains(&lsn) {
                return self.skip_aborted(lsn, items).await;
            }
            let result = self.apply.call_batch(proto, request.clone(), count).await;
            let exec = result.as_ref().ok().and_then(|replies| replies.last()).and_then(crate::resp::array_items);
            if let Some(mut replies) = exec.filter(|replies| replies.len() == queued + 1) {
                self.applied = lsn;
                self.health.primary_holds(lsn);
                self.recovered();
                replies.truncate(queued);
                for (item, reply) in items.into_iter().zip(own_replies(&sent, replies)) {
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
            self.health.stuck_on.store(lsn, Ordering::Release);
            self.serve_abort_requests(lsn).await;
            if self.aborts.entries.contains(&lsn) {
                continue;
            }
            let reason = match &result {
                Err(e) => e.to_string(),
                Ok(replies) => {
                    format!("EXEC answered {}", String::from_utf8_lossy(replies.last().map_or(&b""[..], |r| r)).trim())
                }
            };
            // A new connection (e.g. to a new primary) is not a failure: check and catch up at once.
            if !matches!(result, Err(BackendError::Unverified { .. })) {
                tracing::warn!(
                    shard = self.shard,
                    lsn,
                    "applying a committed batch failed ({reason}); retrying (if a script on the primary never \
                     returns: MEMLOG ABORT {} {lsn})",
                    self.shard
                );
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
                    self.recovered();
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
                Err(e) => {
                    // Not answering (or not with an LSN): wait before asking again, however the
                    // batch failed, so a node that keeps refusing is not asked in a tight loop.
                    tracing::debug!(shard = self.shard, "the primary is not answering yet: {e}");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(500));
                }
            }
        }
    }

    /// The batch is applying again (or was settled): new writes go on, and an abort asked for
    /// meanwhile finds nothing stuck.
    fn recovered(&mut self) {
        self.health.set_failing(false);
        self.health.stuck_on.store(0, Ordering::Release);
        while let Ok(request) = self.aborts.requests.try_recv() {
            let _ = request.done.send(Err(format!("entry {} is not stuck any more: nothing aborted", request.lsn)));
        }
    }

    /// An aborted entry (`abort.rs`): its clients are told, and the primary only moves past it.
    async fn skip_aborted(&mut self, lsn: u64, items: Vec<Item>) {
        let reply = error_reply(&format!(
            "ERR memlog: this write was aborted by an operator (MEMLOG ABORT {} {lsn}, entry {lsn} held a script that \
             did not return); it was not applied",
            self.shard
        ));
        for item in items.into_iter().filter(|item| !item.silent) {
            let _ = item.reply.send(Ok(reply.clone()));
        }
        self.catch_up(lsn).await;
        self.recovered();
    }

    /// Serves the operator's abort requests while stuck on `lsn`.
    async fn serve_abort_requests(&mut self, lsn: u64) {
        while let Ok(request) = self.aborts.requests.try_recv() {
            let outcome = if request.lsn == lsn {
                self.abort(lsn, &request.others).await
            } else {
                Err(format!("shard {} is stuck on entry {lsn}, not {}: nothing aborted", self.shard, request.lsn))
            };
            match &outcome {
                Ok(done) => tracing::warn!(shard = self.shard, lsn, "{done}"),
                Err(e) => tracing::warn!(shard = self.shard, lsn, "MEMLOG ABORT refused: {e}"),
            }
            let _ = request.done.send(outcome);
        }
    }

    /// Stops the primary, checks that no other node finished the entry, and records the abort
    /// (`abort.rs`).
    async fn abort(&mut self, lsn: u64, others: &[String]) -> Result<String, String> {
        let meta = self.aborts.meta.clone().ok_or("no metadata store to record the abort in")?;
        self.apply.shut_down().await.map_err(|e| format!("the primary could not be stopped: {e}"))?;
        for node in others {
            match self.apply.lsn_of(node).await {
                Ok(held) if held >= lsn => {
                    return Err(format!(
                        "entry {lsn} completed after all (node {node} holds lsn {held}); the primary was stopped \
                         and is replaced, nothing aborted"
                    ))
                }
                Ok(_) => {}
                Err(e) => {
                    return Err(format!(
                        "node {node} does not say which entries it holds ({e}), so whether entry {lsn} completed \
                         there is unknown; the primary was stopped, nothing aborted (try again once it answers)"
                    ))
                }
            }
        }
        meta.abort_entry(crate::router::shard_id(self.shard), lsn)
            .await
            .map_err(|e| format!("the metadata store did not record the abort: {e}"))?;
        self.aborts.entries.insert(lsn);
        Ok(format!(
            "entry {lsn} of shard {} aborted: its primary was stopped and is replaced or rebuilt without it",
            self.shard
        ))
    }

    /// Reads riding behind writes (nothing to journal), in order on the apply connection — as a
    /// batch, which the connection refuses until the primary behind it was checked, so a read
    /// never reaches a new primary before it is caught up.
    async fn apply_reads(&mut self, proto: Proto, items: Vec<Item>) {
        let mut request = BytesMut::with_capacity(items.iter().map(|i| i.command.len()).sum::<usize>());
        let sent = self.run_as.append_all(items.iter().map(|item| &item.command), &mut request);
        let (request, count) = (request.freeze(), sent.iter().map(|s| s.count).sum());
        loop {
            match self.apply.call_batch(proto, request.clone(), count).await {
                Err(BackendError::Unverified { .. }) => {
                    let applied = self.applied;
                    self.catch_up(applied).await;
                }
                Ok(replies) => {
                    for (item, reply) in items.into_iter().zip(own_replies(&sent, replies)) {
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

    /// The journal prefix the primary holds (`GET __memlog:lsn`; 0 when it holds nothing). An
    /// error reply (`-LOADING`, `-NOAUTH` …) is an error, not 0: taken as 0 it would send the
    /// applier to catch up a primary that may already hold the batch.
    async fn held_lsn(&mut self) -> anyhow::Result<u64> {
        let held = self.apply.lsn_check().await?;
        crate::keys::parse_lsn(&held).ok_or_else(|| {
            anyhow::anyhow!("the primary answered GET __memlog:lsn with {}", String::from_utf8_lossy(&held).trim())
        })
    }

    /// Replays the committed entries the primary misses, `(its __memlog:lsn, lsn]`, retrying
    /// until it succeeds; returns how many entries were replayed.
    pub(super) async fn catch_up(&mut self, lsn: u64) -> u64 {
        let mut pause = Duration::from_millis(50);
        loop {
            match self.try_catch_up(lsn).await {
                Ok((replayed, held)) => {
                    self.applied = held;
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

    /// Returns how many entries were replayed and the LSN the primary then holds: `lsn`, or
    /// the entry before a write whose parts end at `lsn` unfinished (`parts.rs`).
    async fn try_catch_up(&mut self, lsn: u64) -> anyhow::Result<(u64, u64)> {
        // Asking the LSN also marks the connection checked, with or without a journal.
        let mut from = self.held_lsn().await?;
        let Some(reader) = self.reader.clone() else { return Ok((0, lsn)) };
        if from > lsn {
            anyhow::bail!(
                "the primary holds lsn {from}, beyond the journal's commit point {lsn}: it was written by someone else"
            );
        }
        // A node holding nothing is loaded from the newest snapshot first: an adopted shard's
        // data from before its first entry is in snapshots only.
        if let Some(snapshots) = self.snapshots.as_ref().filter(|_| from == 0) {
            if snapshots.restore_if_empty(&self.apply.addr()).await? {
                from = self.held_lsn().await?;
            }
        }
        let mut replayed = 0;
        let mut parts = Assembler::default();
        let mut held = from;
        while from < lsn {
            let to = lsn.min(from + REPLAY_CHUNK);
            let entries = match reader.read(from + 1, to).await {
                Err(ReadError::Truncated { first, .. }) => {
                    // A snapshot replaced this part of the journal: load it, then go on from
                    // what it holds.
                    let snapshots = self.snapshots.as_ref().ok_or_else(|| {
                        anyhow::anyhow!("the journal starts at lsn {first}, the primary holds {from}, and no [snapshot] is configured")
                    })?;
                    let restored = snapshots.restore(&self.apply.addr()).await?;
                    anyhow::ensure!(
                        restored + 1 >= first,
                        "the newest snapshot holds lsn {restored}, but the journal starts at {first}"
                    );
                    from = self.held_lsn().await?;
                    held = from;
                    parts = Assembler::default();
                    continue;
                }
                read => read?,
            };
            let mut pipeline = BytesMut::new();
            let mut count = 0;
            let mut last = from;
            for entry in &entries {
                last = entry.lsn;
                // An aborted entry (a whole write, or its last part) only moves the node's
                // position past it.
                let commands = if self.aborts.entries.contains(&entry.lsn) {
                    parts.drop_orphans(entry.lsn);
                    Vec::new()
                } else {
                    match parts.push(entry.lsn, &entry.payload) {
                        Piece::Pending => continue,
                        Piece::Whole(payload) => split_commands(&payload)?,
                    }
                };
                held = entry.lsn;
                pipeline.extend_from_slice(b"*1\r\n$5\r\nMULTI\r\n");
                let sent = self.run_as.append_all(&commands, &mut pipeline);
                pipeline.extend_from_slice(&set_lsn(entry.lsn));
                pipeline.extend_from_slice(b"*1\r\n$4\r\nEXEC\r\n");
                count += sent.iter().map(|s| s.count).sum::<usize>() + 3;
                if pipeline.len() >= REPLAY_PIPELINE_BYTES {
                    self.replay(std::mem::take(&mut pipeline).freeze(), std::mem::take(&mut count)).await?;
                }
            }
            if count > 0 {
                self.replay(pipeline.freeze(), count).await?;
            }
            replayed += entries.len() as u64;
            // Barrier entries carry no payload and are skipped by the reader: advance past them.
            from = to.max(last);
        }
        if replayed > 0 {
            metrics::counter!("memlog_replayed_entries_total", "shard" => self.shard.to_string()).increment(replayed);
        }
        // Without parts pending, everything up to `lsn` is held (barriers carry no LSN of their own).
        Ok((replayed, if parts.is_empty() { lsn } else { held }))
    }

    /// Sends one replay pipeline of `count` commands (whole entries); fails if an entry aborted.
    async fn replay(&mut self, pipeline: Bytes, count: usize) -> anyhow::Result<()> {
        let replies = self.apply.call_batch(Proto::Resp2, pipeline, count).await?;
        if let Some(bad) = replies.iter().find(|r| r.starts_with(b"-EXECABORT")) {
            anyhow::bail!("replay aborted: {}", String::from_utf8_lossy(bad).trim());
        }
        Ok(())
    }
}

/// The size at which a replay pipeline is sent before more entries are added to it. A chunk of
/// `REPLAY_CHUNK` large entries in one pipeline was hundreds of MiB in the proxy's memory and
/// one call that could outlast the backend timeout (and then be retried from the node's LSN).
const REPLAY_PIPELINE_BYTES: usize = 4 * 1024 * 1024;

/// `SET __memlog:lsn <lsn>`
fn set_lsn(lsn: u64) -> Bytes {
    encode_command(&[&b"SET"[..], LSN_KEY, lsn.to_string().as_bytes()])
}

/// The RESP commands of a journal entry's payload.
fn split_commands(payload: &Bytes) -> anyhow::Result<Vec<Bytes>> {
    let mut buf = BytesMut::from(&payload[..]);
    let mut parser = RequestParser::default();
    // The proxy checked each command's limits before journaling it.
    let mut commands = Vec::new();
    while let Some(request) = parser.next(&mut buf, crate::resp::NO_LIMITS)? {
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
        WriteError::TooLarge { .. } => error_reply(&format!("ERR memlog: {e}; the write was not applied")),
        _ => error_reply(&format!(
            "ERR memlog: the journal append's outcome is unknown ({e}); the write may or may not be applied"
        )),
    }
}

#[cfg(test)]
mod tests;

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

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use journal_service::meta::MetaStore;
use journal_service::quorum::{self, QuorumConfig, QuorumWriter, Reader, WriteError};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use crate::backend::{BackendConn, BackendError, BackendOptions, ReplySender};
use crate::normalize::{self, Plan};
use crate::resp::{encode_command, error_reply, Proto, Request, RequestParser};
use crate::state::LSN_KEY;

/// Most writes taken into one batch.
const MAX_BATCH: usize = 4096;
/// Journal appends in flight per shard. Capping them makes writes that arrive meanwhile wait
/// in the queue and go out as one larger entry (group commit): a journal entry costs the nodes
/// far more than its bytes, so fewer, fuller entries carry more writes per second.
const APPENDS_IN_FLIGHT: usize = 2;
/// Most entries replayed per read from the journal.
const REPLAY_CHUNK: u64 = 2048;

/// A write (or a read riding behind its client's writes) waiting for its shard's order.
pub struct Write {
    pub proto: Proto,
    pub request: Request,
    /// False for a read riding behind the client's writes: applied in order, never journaled.
    pub journal: bool,
    pub reply: ReplySender,
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
}

impl Sequencer {
    /// Starts the sequencer; with a journal, returns once the stream is recovered and the
    /// primary caught up, so nothing is served from a primary that misses committed writes.
    pub async fn start(
        shard: usize,
        primary: &str,
        opts: BackendOptions,
        journal: Option<JournalSetup>,
    ) -> anyhow::Result<Sequencer> {
        let (queue, rx) = mpsc::unbounded_channel();
        let apply = ApplyConns::new(primary, opts);
        match journal {
            None => {
                tokio::spawn(route_only(shard, apply, rx));
            }
            Some(setup) => {
                let stream = format!("shard-{shard}");
                let reader = Reader::new(&stream, &setup.nodes);
                let mut applier = Applier { shard, apply, reader, applied: 0 };
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
                let (to_applier, applier_rx) = mpsc::unbounded_channel();
                let failed = Arc::new(AtomicBool::new(false));
                tokio::spawn(applier.run(applier_rx, failed.clone()));
                let appends = Arc::new(Semaphore::new(APPENDS_IN_FLIGHT));
                let journaler = Journaler { shard, stream, setup, writer, to_applier, failed, appends };
                tokio::spawn(journaler.run(rx));
            }
        }
        Ok(Sequencer { queue, primary: primary.to_string() })
    }

    pub fn submit(&self, write: Write) {
        if let Err(mpsc::error::SendError(write)) = self.queue.send(write) {
            let _ = write.reply.send(Err(BackendError::Lost { addr: self.primary.clone() }));
        }
    }
}

/// The apply connections of a shard's primary: one per protocol, since a reply's shape depends
/// on the protocol the connection speaks; the RESP3 one opens when a RESP3 client first writes.
struct ApplyConns {
    primary: String,
    opts: BackendOptions,
    resp2: BackendConn,
    resp3: Option<BackendConn>,
    last: Proto,
}

impl ApplyConns {
    fn new(primary: &str, opts: BackendOptions) -> ApplyConns {
        let resp2 = BackendConn::spawn(primary, Proto::Resp2, opts);
        ApplyConns { primary: primary.to_string(), opts, resp2, resp3: None, last: Proto::Resp2 }
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
                self.resp3.get_or_insert_with(|| BackendConn::spawn(primary, Proto::Resp3, opts))
            }
        }
    }
}

/// Without a journal: forward each batch, in order, on the apply connection.
async fn route_only(shard: usize, mut apply: ApplyConns, mut queue: mpsc::UnboundedReceiver<Write>) {
    let batch_size = metrics::histogram!("memlog_sequencer_batch_size", "shard" => shard.to_string());
    let mut batch = Vec::with_capacity(64);
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        batch_size.record(batch.len() as f64);
        for write in batch.drain(..) {
            apply.conn(write.proto).await.send_to(write.request.raw, write.reply);
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

/// Normalizes batches and appends them to the journal.
struct Journaler {
    shard: usize,
    stream: String,
    setup: JournalSetup,
    writer: QuorumWriter,
    to_applier: mpsc::UnboundedSender<ToApplier>,
    /// Set by the applier when an append failed: the writer has stopped and must be replaced.
    failed: Arc<AtomicBool>,
    /// One permit per append in flight; the applier returns it once the append is decided.
    appends: Arc<Semaphore>,
}

impl Journaler {
    async fn run(mut self, mut queue: mpsc::UnboundedReceiver<Write>) {
        let batch_size = metrics::histogram!("memlog_sequencer_batch_size", "shard" => self.shard.to_string());
        let mut batch = Vec::with_capacity(64);
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
            let now = now_ms();
            let mut segment = Segment::default();
            for write in batch.drain(..) {
                if segment.proto != Some(write.proto) && !segment.items.is_empty() {
                    self.flush(&mut segment).await;
                }
                segment.proto = Some(write.proto);
                if !write.journal {
                    segment.push(write.request.raw, false, write.reply, None, false);
                    continue;
                }
                match normalize::plan(&write.request.args, now) {
                    Plan::AsIs => segment.push(write.request.raw, true, write.reply, None, false),
                    Plan::Rewrite(command) => segment.push(encode_command(&command), true, write.reply, None, false),
                    Plan::Probe { probe, resolve } => {
                        self.flush(&mut segment).await;
                        let (done, replies) = oneshot::channel();
                        let _ = self.to_applier.send(ToApplier::Probe { commands: probe, done });
                        let replies = match replies.await {
                            Ok(Ok(replies)) => replies,
                            Ok(Err(e)) => {
                                let _ = write.reply.send(Err(e));
                                continue;
                            }
                            Err(_) => return,
                        };
                        let resolved = resolve(&replies);
                        let command = &write.request.args[0];
                        if resolved.commands.is_empty() {
                            let reply = resolved.reply.unwrap_or_else(|| error_reply("ERR memlog: empty resolution"));
                            let _ = write.reply.send(Ok(convert_reply(write.proto, command, reply)));
                            continue;
                        }
                        let last = resolved.commands.len() - 1;
                        let reply_override = resolved.reply.map(|r| convert_reply(write.proto, command, r));
                        let mut reply = Some(write.reply);
                        for (i, command) in resolved.commands.iter().enumerate() {
                            let (tx, _) = oneshot::channel();
                            let target = if i == last { reply.take().unwrap_or(tx) } else { tx };
                            segment.push(encode_command(command), true, target, reply_override.clone(), i != last);
                        }
                        self.flush(&mut segment).await;
                    }
                }
            }
            self.flush(&mut segment).await;
        }
    }

    /// Appends the segment's journaled commands as one entry and hands it to the applier.
    async fn flush(&mut self, segment: &mut Segment) {
        if segment.items.is_empty() {
            return;
        }
        let items = std::mem::take(&mut segment.items);
        let append = if segment.payload.is_empty() {
            None
        } else {
            let permit = self.appends.clone().acquire_owned().await.expect("the semaphore is never closed");
            let payload = std::mem::take(&mut segment.payload).freeze();
            let append: AppendFuture = Box::pin(self.writer.append(payload));
            Some((append, permit))
        };
        let proto = segment.proto.unwrap_or(Proto::Resp2);
        let _ = self.to_applier.send(ToApplier::Batch { append, proto, items });
    }

    /// The writer stopped (lost quorum, fenced): recover the stream under a new epoch and catch
    /// the primary up, while the writes waiting here wait — up to `write_wait`, then they fail
    /// with `-TRYAGAIN`, nothing applied.
    async fn replace_writer(&mut self, queue: &mut mpsc::UnboundedReceiver<Write>, batch: &mut Vec<Write>) {
        let waiting_since = Instant::now();
        let mut pause = Duration::from_millis(50);
        loop {
            let recovery = quorum::recover(
                &self.setup.meta,
                self.shard as u32,
                &self.stream,
                &self.setup.nodes,
                self.setup.quorum.clone(),
                &self.setup.writer_id,
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
                    self.writer = writer;
                    self.failed.store(false, Ordering::Release);
                    return;
                }
                Ok(Err(e)) => tracing::warn!(shard = self.shard, "journal recovery failed, retrying: {e}"),
                Err(_) => tracing::warn!(shard = self.shard, "journal recovery timed out, retrying"),
            }
            if waiting_since.elapsed() >= self.setup.write_wait {
                // Fail what waited too long; keep what arrives meanwhile for the next attempt.
                while let Ok(write) = queue.try_recv() {
                    batch.push(write);
                }
                for write in batch.drain(..) {
                    let _ = write
                        .reply
                        .send(Ok(error_reply("TRYAGAIN memlog: the journal has no quorum; the write was not applied")));
                }
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
        (Proto::Resp3, [b'*', ..]) if command.eq_ignore_ascii_case(b"spop") => {
            let mut set = BytesMut::from(&reply[..]);
            set[0] = b'~';
            set.freeze()
        }
        (Proto::Resp3, [b'*', ..]) if command.eq_ignore_ascii_case(b"xreadgroup") => {
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
    reader: Reader,
    /// The journal prefix the primary holds, as far as this applier knows.
    applied: u64,
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
                    let replies =
                        self.apply.conn(Proto::Resp2).await.call_batch(requests.freeze(), commands.len()).await;
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
            // Only reads riding behind writes: in order on the apply connection, nothing to journal.
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
        let count = items.len() + 3;
        let result = self.apply.conn(proto).await.call_batch(request.freeze(), count).await;
        let exec = result.as_ref().ok().and_then(|replies| replies.last()).and_then(crate::resp::array_items);
        match exec {
            Some(replies) if replies.len() == items.len() + 1 => {
                self.applied = lsn;
                for (item, reply) in items.into_iter().zip(replies) {
                    if item.silent {
                        continue;
                    }
                    let _ = item.reply.send(Ok(item.reply_override.unwrap_or(reply)));
                }
            }
            _ => {
                // Redis did not confirm the batch (connection lost, node restarted, EXEC aborted):
                // its outcome is unknown to the clients, and the primary must be caught up from
                // the journal, where the batch is committed, before anything else is applied.
                let reason = match &result {
                    Err(e) => e.to_string(),
                    Ok(replies) => format!(
                        "EXEC answered {}",
                        String::from_utf8_lossy(replies.last().map_or(&b""[..], |r| r)).trim()
                    ),
                };
                tracing::warn!(
                    shard = self.shard,
                    lsn,
                    "applying a committed batch failed ({reason}); catching up from the journal"
                );
                let reply = error_reply(&format!(
                    "ERR memlog: the write is committed in the journal but Redis did not confirm it ({reason}); it will be applied from the journal"
                ));
                for item in items {
                    let _ = item.reply.send(Ok(reply.clone()));
                }
                self.catch_up(lsn).await;
            }
        }
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
        let conn = self.apply.conn(Proto::Resp2).await.clone();
        let held = conn.call(&[&b"GET"[..], LSN_KEY]).await?;
        let mut from = match crate::state::decode_resp2(&held)? {
            redis_protocol::resp2::types::BytesFrame::BulkString(n) => std::str::from_utf8(&n)?.parse::<u64>()?,
            _ => 0,
        };
        if from > lsn {
            anyhow::bail!(
                "the primary holds lsn {from}, beyond the journal's commit point {lsn}: it was written by someone else"
            );
        }
        let mut replayed = 0;
        while from < lsn {
            let to = lsn.min(from + REPLAY_CHUNK);
            let entries = self.reader.read(from + 1, to).await?;
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

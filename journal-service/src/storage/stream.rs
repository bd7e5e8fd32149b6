//! One stream on disk: its segments and fencing state, and the writer thread that owns every
//! change to them. The writer drains all queued appends, writes them with one `write`, makes
//! them durable with one `fdatasync` (group commit), and only then acknowledges them.

use std::fs;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::{mpsc, oneshot, watch};

use crate::entry::{Entry, StreamTail};
use crate::error::NodeError;
use crate::record;

use super::segment::{self, Segment};
use super::{epoch, fsync_dir, metrics_names as m, Failpoint, OpenError};

/// The highest LSN a stream may be moved to, far from overflow in any LSN arithmetic.
const MAX_LSN: u64 = 1 << 62;

/// Stop gathering a group-commit batch at this many bytes; the rest goes in the next one.
const MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;

/// When a batch leaves less than this prepared past its end, it prepares more (`Writer::persist`).
const PREPARE_LOW_WATER: u64 = 128 * 1024;
/// How far past its end a batch that prepares zero-fills the active segment.
const PREPARE_BYTES: usize = 256 * 1024;
/// What prepared space is filled with.
static ZEROS: [u8; PREPARE_BYTES] = [0; PREPARE_BYTES];

/// What subscribers watch: the last durable LSN, and how many truncations have rewritten the tail
/// (a subscriber that may have seen a dropped entry must start over).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub last_lsn: u64,
    pub truncations: u64,
}

/// A stream's durable state, shared by the writer (the only mutator) and readers.
pub struct StreamState {
    /// Oldest first; never empty, the last one is where appends go.
    pub segments: Vec<Segment>,
    pub fenced_epoch: u64,
    pub last_epoch: u64,
    pub commit_lsn: u64,
    /// Why the stream refuses changes until restart (a write or fsync failed).
    pub poisoned: Option<String>,
}

impl StreamState {
    pub fn first_lsn(&self) -> u64 {
        self.segments[0].first_lsn
    }

    pub fn last_lsn(&self) -> u64 {
        self.segments.last().expect("a stream has a segment").next_lsn() - 1
    }

    pub fn tail(&self) -> StreamTail {
        StreamTail {
            fenced_epoch: self.fenced_epoch,
            first_lsn: self.first_lsn(),
            last_lsn: self.last_lsn(),
            last_epoch: self.last_epoch,
            commit_lsn: self.commit_lsn,
        }
    }

    /// Durable entries `from..=to`, at most `max_bytes` of payload (at least one entry if any).
    pub fn read(&self, stream: &str, from: u64, to: u64, max_bytes: usize) -> Result<Vec<Entry>, NodeError> {
        let from = from.max(1);
        let to = to.min(self.last_lsn());
        let mut out = Vec::new();
        if from > to {
            return Ok(out);
        }
        if from < self.first_lsn() {
            return Err(NodeError::Protocol(format!(
                "stream {stream}: lsn {from} was truncated away, the first stored is {}",
                self.first_lsn()
            )));
        }
        let mut budget = max_bytes;
        for seg in self.segments.iter().filter(|s| s.next_lsn() > from && s.first_lsn <= to) {
            let start = from.max(seg.first_lsn);
            let end = to.min(seg.next_lsn() - 1);
            let before = out.len();
            let used = seg.read(start, end, budget, &mut out).map_err(NodeError::Storage)?;
            budget = budget.saturating_sub(used);
            if out.len() - before < segment::index(end - start + 1) {
                break;
            }
        }
        Ok(out)
    }
}

/// A request to the writer thread.
pub enum Command {
    /// Appends are gathered into group-commit batches.
    Append(Pending),
    /// Anything else runs alone, after the appends queued before it.
    Control(Control),
}

/// A change to a stream other than an append.
pub enum Control {
    Fence { epoch: u64, reply: oneshot::Sender<Result<StreamTail, NodeError>> },
    TruncateAfter { epoch: u64, lsn: u64, reply: oneshot::Sender<Result<(), NodeError>> },
    TruncateBelow { epoch: u64, lsn: u64, reply: oneshot::Sender<Result<(), NodeError>> },
}

/// A loaded stream: shared state, the writer's queue, and the progress subscribers watch.
pub struct Stream {
    pub state: Arc<Mutex<StreamState>>,
    pub commands: mpsc::UnboundedSender<Command>,
    pub progress: watch::Receiver<Progress>,
    /// Joined on drop: the writer may still be preparing space in a segment, which must end
    /// before anyone opens the directory again.
    writer: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Stream {
    fn drop(&mut self) {
        // Closing the queue ends the writer once it finishes what it is doing.
        drop(std::mem::replace(&mut self.commands, mpsc::unbounded_channel().0));
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

impl Stream {
    /// Loads (or, with `create`, creates) the stream in `dir` and starts its writer thread.
    pub fn open(
        name: &str,
        dir: &Path,
        segment_bytes: u64,
        failpoint: Arc<Failpoint>,
        create: bool,
    ) -> Result<Stream, OpenError> {
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| OpenError::Io { path, source }
        };
        if create {
            crate::private_fs::create_dir(dir).map_err(io_err(dir))?;
            fsync_dir(dir.parent().expect("stream dir has a parent")).map_err(io_err(dir))?;
        }
        let persisted_epoch = epoch::load(dir)?;
        let mut state = load_segments(dir)?;
        state.fenced_epoch = state.fenced_epoch.max(persisted_epoch);
        let (progress_tx, progress) = watch::channel(Progress { last_lsn: state.last_lsn(), truncations: 0 });
        let state = Arc::new(Mutex::new(state));
        let (commands, queue) = mpsc::unbounded_channel();
        let writer = Writer {
            name: name.to_string(),
            dir: dir.to_path_buf(),
            state: Arc::clone(&state),
            progress: progress_tx,
            segment_bytes,
            failpoint,
            persisted_epoch,
        };
        let writer = std::thread::Builder::new()
            .name(format!("journal-{name}"))
            .spawn(move || writer.run(queue))
            .map_err(io_err(dir))?;
        Ok(Stream { state, commands, progress, writer: Some(writer) })
    }

    pub fn lock(&self) -> MutexGuard<'_, StreamState> {
        self.state.lock().expect("stream state lock")
    }
}

/// Opens every segment of the stream in `dir`, checking they join up; creates the first if none.
fn load_segments(dir: &Path) -> Result<StreamState, OpenError> {
    let io_err = |source| OpenError::Io { path: dir.to_path_buf(), source };
    let mut firsts = Vec::new();
    for item in fs::read_dir(dir).map_err(io_err)? {
        let name = item.map_err(io_err)?.file_name();
        if let Some(first_lsn) = name.to_str().and_then(segment::parse_file_name) {
            firsts.push(first_lsn);
        }
    }
    firsts.sort_unstable();
    let mut state = StreamState { segments: Vec::new(), fenced_epoch: 0, last_epoch: 0, commit_lsn: 0, poisoned: None };
    if firsts.is_empty() {
        state.segments.push(Segment::create(dir, 1).map_err(io_err)?);
        fsync_dir(dir).map_err(io_err)?;
        return Ok(state);
    }
    for (i, &first_lsn) in firsts.iter().enumerate() {
        let path = dir.join(segment::file_name(first_lsn));
        let (seg, summary) = Segment::open(&path, first_lsn, i + 1 == firsts.len())?;
        if let Some(prev) = state.segments.last() {
            if prev.next_lsn() != first_lsn {
                if i + 1 == firsts.len() && seg.offsets.is_empty() && prev.next_lsn() < first_lsn {
                    finish_truncate_below(dir, &mut state.segments, first_lsn)?;
                } else {
                    return Err(OpenError::Corrupt {
                        path,
                        offset: 0,
                        reason: format!(
                            "segment starts at lsn {first_lsn}, the previous one ends at {}",
                            prev.next_lsn() - 1
                        ),
                    });
                }
            }
        }
        if let Some(last_epoch) = summary.last_epoch {
            state.last_epoch = last_epoch;
        }
        state.fenced_epoch = state.fenced_epoch.max(summary.max_epoch);
        state.commit_lsn = state.commit_lsn.max(summary.max_commit_lsn);
        state.segments.push(seg);
    }
    Ok(state)
}

/// A crash interrupted a `truncate_below` that restarted the stream empty at `new_first`: the
/// older segments are all below it, so finish deleting them.
fn finish_truncate_below(dir: &Path, older: &mut Vec<Segment>, new_first: u64) -> Result<(), OpenError> {
    tracing::warn!(dir = %dir.display(), new_first, "finishing an interrupted truncate_below");
    for seg in older.drain(..) {
        fs::remove_file(&seg.path).map_err(|source| OpenError::Io { path: seg.path.clone(), source })?;
    }
    fsync_dir(dir).map_err(|source| OpenError::Io { path: dir.to_path_buf(), source })
}

/// Told how an append ended: `Ok` once it is durable. Called on the stream's writer thread, so
/// the server can queue the reply to its peer from there, without a task in between; it must
/// not block.
pub type AppendDone = Box<dyn FnOnce(Result<(), NodeError>) + Send>;

/// An append waiting for its group-commit batch.
pub struct Pending {
    pub entry: Entry,
    pub enqueued: Instant,
    pub done: AppendDone,
}

/// An append accepted into the batch being written.
struct Accepted {
    offset_in_batch: usize,
    epoch: u64,
    commit_lsn: u64,
    enqueued: Instant,
    done: AppendDone,
}

/// The one thread that changes a stream.
struct Writer {
    name: String,
    dir: PathBuf,
    state: Arc<Mutex<StreamState>>,
    progress: watch::Sender<Progress>,
    segment_bytes: u64,
    failpoint: Arc<Failpoint>,
    /// The epoch in the epoch file.
    persisted_epoch: u64,
}

impl Writer {
    fn run(mut self, mut queue: mpsc::UnboundedReceiver<Command>) {
        let mut batch = Vec::new();
        while let Some(first) = queue.blocking_recv() {
            let mut next = Some(first);
            let mut batch_bytes = 0;
            while let Some(command) = next.take() {
                match command {
                    Command::Append(pending) => {
                        batch_bytes += record::encoded_len(&pending.entry);
                        batch.push(pending);
                    }
                    Command::Control(control) => {
                        self.append_batch(&mut batch);
                        self.execute(control);
                    }
                }
                if batch_bytes < MAX_BATCH_BYTES {
                    next = queue.try_recv().ok();
                }
            }
            self.append_batch(&mut batch);
        }
    }

    fn lock(&self) -> MutexGuard<'_, StreamState> {
        self.state.lock().expect("stream state lock")
    }

    /// Checks, writes, fsyncs and then acknowledges a batch of appends.
    fn append_batch(&mut self, batch: &mut Vec<Pending>) {
        if batch.is_empty() {
            return;
        }
        let (mut next_lsn, mut fenced, poisoned) = {
            let state = self.lock();
            (state.last_lsn() + 1, state.fenced_epoch, state.poisoned.clone())
        };
        let mut bytes = Vec::with_capacity(batch.iter().map(|p| record::encoded_len(&p.entry)).sum());
        let mut accepted = Vec::with_capacity(batch.len());
        for Pending { entry, enqueued, done } in batch.drain(..) {
            let refusal = if let Some(reason) = &poisoned {
                Some(self.poisoned_error(reason))
            } else if entry.epoch < fenced {
                Some(NodeError::Fenced { stream: self.name.clone(), fenced_epoch: fenced })
            } else if entry.lsn != next_lsn {
                Some(NodeError::OutOfOrder { stream: self.name.clone(), expected_lsn: next_lsn })
            } else if entry.payload.len() > record::MAX_PAYLOAD_LEN {
                Some(NodeError::Protocol(format!("payload of {} bytes is too large", entry.payload.len())))
            } else {
                None
            };
            if let Some(error) = refusal {
                count_refusal(&error);
                done(Err(error));
                continue;
            }
            accepted.push(Accepted {
                offset_in_batch: bytes.len(),
                epoch: entry.epoch,
                commit_lsn: entry.commit_lsn,
                enqueued,
                done,
            });
            record::encode(&entry, &mut bytes);
            next_lsn += 1;
            fenced = fenced.max(entry.epoch);
        }
        if accepted.is_empty() {
            return;
        }
        match self.persist(&bytes, fenced) {
            Ok(base) => {
                let last_lsn = {
                    let mut state = self.lock();
                    let seg = state.segments.last_mut().expect("a stream has a segment");
                    seg.offsets.extend(accepted.iter().map(|a| base + a.offset_in_batch as u64));
                    seg.len = base + bytes.len() as u64;
                    seg.prepared = seg.prepared.max(seg.len);
                    let last = accepted.last().expect("accepted is not empty");
                    state.last_epoch = last.epoch;
                    state.commit_lsn = accepted.iter().fold(state.commit_lsn, |c, a| c.max(a.commit_lsn));
                    state.fenced_epoch = fenced;
                    state.last_lsn()
                };
                self.progress.send_modify(|p| p.last_lsn = last_lsn);
                metrics::counter!(m::BYTES_WRITTEN).increment(bytes.len() as u64);
                metrics::counter!(m::ENTRIES_WRITTEN).increment(accepted.len() as u64);
                for a in accepted {
                    metrics::histogram!(m::APPEND_DURATION).record(a.enqueued.elapsed().as_secs_f64());
                    (a.done)(Ok(()));
                }
            }
            Err(e) => {
                let reason = format!("stream {}: write or fsync failed: {e}", self.name);
                tracing::error!(%reason, "poisoning stream: it refuses appends until restart");
                self.lock().poisoned = Some(reason.clone());
                metrics::counter!(m::FAILED_APPENDS).increment(accepted.len() as u64);
                for a in accepted {
                    (a.done)(Err(NodeError::Storage(reason.clone())));
                }
            }
        }
    }

    /// Writes `bytes` at the end of the active segment (rolling first if it is full), fsyncs them,
    /// and persists a raised fenced epoch; returns the offset they were written at.
    ///
    /// A batch that leaves little space prepared past its end also zero-fills the next
    /// `PREPARE_BYTES`, made durable by the same `fdatasync`. An append into prepared space
    /// changes neither the file's size nor its blocks, so its `fdatasync` flushes the data alone;
    /// an append that grows the file also makes the filesystem commit its metadata (ext4: 0.68 ->
    /// 0.38 ms per 3.6 KiB append with three nodes on one disk, README "Benchmarks"). Preparing
    /// with the batch's own sync, rather than with a write and a sync of its own after it, keeps
    /// the next batch from waiting behind a megabyte of zeros (README "Benchmarks", session 10).
    /// Failing to prepare (a full disk) only costs that speed: appends grow the file instead.
    fn persist(&mut self, bytes: &[u8], fenced: u64) -> io::Result<u64> {
        let (full, next_lsn) = {
            let state = self.lock();
            let seg = state.segments.last().expect("a stream has a segment");
            (seg.len >= self.segment_bytes && !seg.offsets.is_empty(), seg.next_lsn())
        };
        if full {
            // The full segment's prepared zeros go first: a segment before the last one ends at
            // its last record.
            self.trim_prepared()?;
            let seg = Segment::create(&self.dir, next_lsn)?;
            fsync_dir(&self.dir)?;
            self.lock().segments.push(seg);
        }
        let (file, base, prepared) = {
            let state = self.lock();
            let seg = state.segments.last().expect("a stream has a segment");
            (Arc::clone(&seg.file), seg.len, seg.prepared)
        };
        file.write_all_at(bytes, base)?;
        let end = base + bytes.len() as u64;
        let mut prepare_to = None;
        let (from, to) = (prepared.max(end), (end + PREPARE_BYTES as u64).min(self.segment_bytes));
        if prepared < end + PREPARE_LOW_WATER && from < to {
            match file.write_all_at(&ZEROS[..segment::index(to - from)], from) {
                Ok(()) => prepare_to = Some(to),
                Err(e) => tracing::warn!(stream = %self.name, error = %e, "could not prepare journal space ahead"),
            }
        }
        let started = Instant::now();
        self.failpoint.before_fsync()?;
        file.sync_data()?;
        metrics::histogram!(m::FSYNC_DURATION).record(started.elapsed().as_secs_f64());
        if let Some(to) = prepare_to {
            // Only this thread changes segments, so the active one is still the same.
            self.lock().segments.last_mut().expect("a stream has a segment").prepared = to;
        }
        self.raise_persisted_epoch(fenced)?;
        Ok(base)
    }

    /// Cuts the active segment's file back to its records, durably.
    fn trim_prepared(&mut self) -> io::Result<()> {
        let mut state = self.lock();
        let seg = state.segments.last_mut().expect("a stream has a segment");
        if seg.prepared > seg.len {
            seg.file.set_len(seg.len)?;
            seg.file.sync_all()?;
            seg.prepared = seg.len;
        }
        Ok(())
    }

    fn raise_persisted_epoch(&mut self, epoch: u64) -> io::Result<()> {
        if epoch > self.persisted_epoch {
            epoch::store(&self.dir, epoch)?;
            self.persisted_epoch = epoch;
        }
        Ok(())
    }

    fn poisoned_error(&self, reason: &str) -> NodeError {
        NodeError::Storage(format!("{reason}; the stream refuses changes until the node restarts"))
    }

    fn execute(&mut self, control: Control) {
        match control {
            Control::Fence { epoch, reply } => {
                let _ = reply.send(self.fence(epoch));
            }
            Control::TruncateAfter { epoch, lsn, reply } => {
                let _ = reply.send(self.truncate_after(epoch, lsn));
            }
            Control::TruncateBelow { epoch, lsn, reply } => {
                let _ = reply.send(self.truncate_below(epoch, lsn));
            }
        }
    }

    /// Checks `epoch` against the fenced epoch and durably raises it to `epoch`.
    fn admit_epoch(&mut self, epoch: u64) -> Result<(), NodeError> {
        self.check_epoch(epoch)?;
        self.raise_persisted_epoch(epoch).map_err(|e| NodeError::Storage(format!("writing the epoch file: {e}")))?;
        let mut state = self.lock();
        state.fenced_epoch = state.fenced_epoch.max(epoch);
        Ok(())
    }

    fn fence(&mut self, epoch: u64) -> Result<StreamTail, NodeError> {
        self.admit_epoch(epoch)?;
        Ok(self.lock().tail())
    }

    fn check_not_poisoned(&self) -> Result<(), NodeError> {
        match &self.lock().poisoned {
            Some(reason) => Err(self.poisoned_error(reason)),
            None => Ok(()),
        }
    }

    /// Poisons the stream after a failed change whose on-disk result is unknown.
    fn poison(&self, what: &str, e: io::Error) -> NodeError {
        let reason = format!("stream {}: {what} failed: {e}", self.name);
        tracing::error!(%reason, "poisoning stream: it refuses changes until restart");
        self.lock().poisoned = Some(reason.clone());
        NodeError::Storage(reason)
    }

    fn truncate_after(&mut self, epoch: u64, lsn: u64) -> Result<(), NodeError> {
        self.check_not_poisoned()?;
        self.admit_epoch(epoch)?;
        let mut state = self.lock();
        if lsn >= state.last_lsn() {
            return Ok(());
        }
        if lsn + 1 < state.first_lsn() {
            return Err(NodeError::Protocol(format!(
                "stream {}: cannot truncate after {lsn}, entries before {} were already truncated away",
                self.name,
                state.first_lsn()
            )));
        }
        let keep = state.segments.iter().rposition(|s| s.first_lsn <= lsn + 1).expect("the first segment qualifies");
        // Newest first, so a crash leaves a contiguous prefix of the log.
        let result = (|| {
            for seg in state.segments[keep + 1..].iter().rev() {
                fs::remove_file(&seg.path)?;
            }
            let seg = &state.segments[keep];
            let new_len = seg.offsets[segment::index(lsn + 1 - seg.first_lsn)];
            seg.file.set_len(new_len)?;
            seg.file.sync_all()?;
            fsync_dir(&self.dir)?;
            Ok(new_len)
        })();
        let new_len = match result {
            Ok(len) => len,
            Err(e) => {
                drop(state);
                return Err(self.poison("truncate_after", e));
            }
        };
        state.segments.truncate(keep + 1);
        let seg = state.segments.last_mut().expect("kept a segment");
        seg.offsets.truncate(segment::index(lsn + 1 - seg.first_lsn));
        seg.len = new_len;
        seg.prepared = new_len;
        let last = if lsn >= state.first_lsn() { state.read(&self.name, lsn, lsn, 0)? } else { Vec::new() };
        (state.last_epoch, state.commit_lsn) = last.first().map_or((0, 0), |e| (e.epoch, e.commit_lsn));
        drop(state);
        self.progress.send_modify(|p| {
            p.last_lsn = lsn;
            p.truncations += 1;
        });
        Ok(())
    }

    /// A refusal if `epoch` is below the fenced epoch (a stale writer's request).
    fn check_epoch(&self, epoch: u64) -> Result<(), NodeError> {
        let fenced = self.lock().fenced_epoch;
        if epoch < fenced {
            metrics::counter!(m::FENCED_APPENDS).increment(1);
            return Err(NodeError::Fenced { stream: self.name.clone(), fenced_epoch: fenced });
        }
        Ok(())
    }

    fn truncate_below(&mut self, epoch: u64, lsn: u64) -> Result<(), NodeError> {
        self.check_not_poisoned()?;
        self.check_epoch(epoch)?;
        if lsn > MAX_LSN {
            return Err(NodeError::Protocol(format!("lsn {lsn} is beyond the largest allowed, {MAX_LSN}")));
        }
        let mut state = self.lock();
        if lsn <= state.first_lsn() {
            return Ok(());
        }
        let active_first = state.segments.last().expect("a stream has a segment").first_lsn;
        let restart_empty = lsn > state.last_lsn() && lsn > active_first;
        let result = (|| {
            if restart_empty {
                // Everything stored is below `lsn`: the stream restarts empty there. The new segment
                // is made durable first; a crash before the old ones are gone is finished on load.
                let seg = Segment::create(&self.dir, lsn)?;
                fsync_dir(&self.dir)?;
                let old = std::mem::replace(&mut state.segments, vec![seg]);
                for seg in &old {
                    fs::remove_file(&seg.path)?;
                }
            } else {
                // Oldest first, dropping segments whose successor starts at or below `lsn`.
                let drop_count = state.segments.windows(2).take_while(|w| w[1].first_lsn <= lsn).count();
                for seg in state.segments.drain(..drop_count) {
                    fs::remove_file(&seg.path)?;
                }
            }
            fsync_dir(&self.dir)
        })();
        drop(state);
        result.map_err(|e| self.poison("truncate_below", e))
    }
}

/// Counts an append refused before it reached the disk.
fn count_refusal(error: &NodeError) {
    match error {
        NodeError::Fenced { .. } => metrics::counter!(m::FENCED_APPENDS).increment(1),
        _ => metrics::counter!(m::FAILED_APPENDS).increment(1),
    }
}

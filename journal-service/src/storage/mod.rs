//! The journal node's storage engine: per-stream segmented, checksummed, fsync'd logs with
//! durable fencing state. No networking here; the server in `node.rs` drives it.

mod epoch;
mod segment;
mod stream;

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::future::Future;
use std::io;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{oneshot, watch};

use crate::entry::{validate_stream_name, Entry, NodeStatus, StreamTail};
use crate::error::NodeError;

pub use stream::{AppendDone, Progress};
use stream::{Command, Control, Pending, Stream};

/// The metric names the storage engine reports under.
pub mod metrics_names {
    pub const APPEND_DURATION: &str = "memlog_journal_append_duration_seconds";
    pub const FSYNC_DURATION: &str = "memlog_journal_fsync_duration_seconds";
    pub const BYTES_WRITTEN: &str = "memlog_journal_bytes_written_total";
    pub const ENTRIES_WRITTEN: &str = "memlog_journal_entries_written_total";
    pub const FENCED_APPENDS: &str = "memlog_journal_fenced_appends_total";
    pub const FAILED_APPENDS: &str = "memlog_journal_failed_appends_total";
}

/// The environment variable holding a failpoint, read once when the node starts:
/// `fsync` (every data fsync fails) or `fsync-after=N` (the first N succeed, then all fail).
/// Read only in builds with the `failpoints` cargo feature.
pub const FAILPOINT_ENV: &str = "MEMLOG_FAILPOINT";

/// Default size at which a stream starts a new segment.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

/// Tuning and fault injection for a `Storage`.
#[derive(Debug, Clone)]
pub struct StorageOptions {
    /// A segment that reached this size gets no more records; the next batch starts a new one.
    pub segment_bytes: u64,
    /// Fault injection: data fsyncs after this many successful ones fail.
    pub fail_fsync_after: Option<u64>,
    /// Most streams held; creating one more is refused, so peers cannot fill the disk with
    /// directories and the node with writer threads.
    pub max_streams: usize,
}

/// Default of `StorageOptions::max_streams` (memlog uses one stream per shard).
pub const DEFAULT_MAX_STREAMS: usize = 4096;

impl Default for StorageOptions {
    fn default() -> Self {
        StorageOptions {
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            fail_fsync_after: None,
            max_streams: DEFAULT_MAX_STREAMS,
        }
    }
}

impl StorageOptions {
    /// Reads the `MEMLOG_FAILPOINT` variable into `fail_fsync_after`.
    #[cfg(feature = "failpoints")]
    pub fn with_failpoint_from_env(mut self) -> Result<Self, String> {
        let Ok(value) = std::env::var(FAILPOINT_ENV) else { return Ok(self) };
        self.fail_fsync_after = Some(match value.as_str() {
            "fsync" => 0,
            other => other
                .strip_prefix("fsync-after=")
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| format!("{FAILPOINT_ENV}={other:?}: expected `fsync` or `fsync-after=N`"))?,
        });
        Ok(self)
    }
}

/// Injected fsync failures, shared by every stream of a storage; also counts data fsyncs.
#[derive(Debug)]
pub struct Failpoint {
    fail_after: Option<u64>,
    syncs: AtomicU64,
}

impl Failpoint {
    /// Called before each data fsync; fails once the configured number of fsyncs were let through.
    fn before_fsync(&self) -> io::Result<()> {
        let attempt = self.syncs.fetch_add(1, Ordering::Relaxed);
        match self.fail_after {
            Some(limit) if attempt >= limit => {
                Err(io::Error::other(format!("injected fsync failure ({FAILPOINT_ENV})")))
            }
            _ => Ok(()),
        }
    }
}

/// Why a storage directory cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("corrupt journal: {path} at offset {offset}: {reason}")]
    Corrupt { path: PathBuf, offset: u64, reason: String },
    #[error("{0} is in use by another journal node")]
    Locked(PathBuf),
}

/// The streams of one node directory, `DIR/streams/<stream>/`.
pub struct Storage {
    streams_dir: PathBuf,
    options: StorageOptions,
    failpoint: Arc<Failpoint>,
    streams: Mutex<HashMap<String, Arc<Stream>>>,
    /// Holds an exclusive `flock` on `DIR/lock` so two nodes never share a directory.
    _lock: File,
}

impl Storage {
    /// Opens `dir`, verifying every record of every stream (see `Segment::open` for torn tails).
    pub fn open(dir: &Path, options: StorageOptions) -> Result<Storage, OpenError> {
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| OpenError::Io { path, source }
        };
        let streams_dir = dir.join("streams");
        crate::private_fs::create_dir_all(&streams_dir).map_err(io_err(&streams_dir))?;
        crate::private_fs::restrict_dir(dir).map_err(io_err(dir))?;
        let lock_path = dir.join("lock");
        let lock = crate::private_fs::create(&lock_path).map_err(io_err(&lock_path))?;
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(OpenError::Locked(dir.to_path_buf()));
        }
        let failpoint = Arc::new(Failpoint { fail_after: options.fail_fsync_after, syncs: AtomicU64::new(0) });
        let mut streams = HashMap::new();
        for item in fs::read_dir(&streams_dir).map_err(io_err(&streams_dir))? {
            let item = item.map_err(io_err(&streams_dir))?;
            let Some(name) = item.file_name().to_str().map(str::to_string) else { continue };
            if validate_stream_name(&name).is_err() || !item.path().is_dir() {
                tracing::warn!(path = %item.path().display(), "ignoring a file that is not a stream");
                continue;
            }
            let stream = Stream::open(&name, &item.path(), options.segment_bytes, Arc::clone(&failpoint), false)?;
            streams.insert(name, Arc::new(stream));
        }
        tracing::info!(dir = %dir.display(), streams = streams.len(), "journal storage opened");
        Ok(Storage { streams_dir, options, failpoint, streams: Mutex::new(streams), _lock: lock })
    }

    /// The stream named `name`, created (durably) if `create` and it does not exist yet.
    fn stream(&self, name: &str, create: bool) -> Result<Option<Arc<Stream>>, NodeError> {
        validate_stream_name(name).map_err(NodeError::Protocol)?;
        let mut streams = self.streams.lock().expect("streams lock");
        if let Some(stream) = streams.get(name) {
            return Ok(Some(Arc::clone(stream)));
        }
        if !create {
            return Ok(None);
        }
        if streams.len() >= self.options.max_streams {
            return Err(NodeError::Protocol(format!(
                "cannot create stream {name}: the node holds its maximum of {} streams",
                self.options.max_streams
            )));
        }
        let dir = self.streams_dir.join(name);
        let stream = Stream::open(name, &dir, self.options.segment_bytes, Arc::clone(&self.failpoint), true)
            .map_err(|e| NodeError::Storage(format!("creating stream {name}: {e}")))?;
        let stream = Arc::new(stream);
        streams.insert(name.to_string(), Arc::clone(&stream));
        Ok(Some(stream))
    }

    /// Queues `command` (built around its reply sender) on the stream's writer, now.
    fn submit<T: Send + 'static>(
        &self,
        name: &str,
        command: impl FnOnce(oneshot::Sender<Result<T, NodeError>>) -> Command,
    ) -> impl Future<Output = Result<T, NodeError>> + Send + 'static {
        let (reply, result) = oneshot::channel();
        let queued = self.stream(name, true).and_then(|stream| {
            let stream = stream.expect("created on demand");
            stream.commands.send(command(reply)).map_err(|_| writer_stopped())
        });
        async move {
            queued?;
            result.await.map_err(|_| writer_stopped())?
        }
    }

    /// Appends `entry`; resolves once it is durable. Queued when called, so calls made in order
    /// are applied in order.
    pub fn append(&self, stream: &str, entry: Entry) -> impl Future<Output = Result<(), NodeError>> + Send + 'static {
        let (reply, result) = oneshot::channel();
        self.append_then(
            stream,
            entry,
            Box::new(move |outcome| {
                let _ = reply.send(outcome);
            }),
        );
        async move { result.await.map_err(|_| writer_stopped())? }
    }

    /// Appends `entry` and calls `done` (on the stream's writer thread) once it is durable or
    /// refused. Queued when called, so calls made in order are applied in order.
    pub fn append_then(&self, stream: &str, entry: Entry, done: AppendDone) {
        let enqueued = Instant::now();
        match self.stream(stream, true) {
            Ok(stream) => {
                let stream = stream.expect("created on demand");
                if let Err(unsent) = stream.commands.send(Command::Append(Pending { entry, enqueued, done })) {
                    if let Command::Append(pending) = unsent.0 {
                        (pending.done)(Err(writer_stopped()));
                    }
                }
            }
            Err(error) => done(Err(error)),
        }
    }

    /// Durably raises the fenced epoch to `epoch` (refused if it is already higher); returns the tail.
    pub fn fence(
        &self,
        stream: &str,
        epoch: u64,
    ) -> impl Future<Output = Result<StreamTail, NodeError>> + Send + 'static {
        self.submit(stream, move |reply| Command::Control(Control::Fence { epoch, reply }))
    }

    /// Durably drops the entries after `lsn`, if `epoch` is not below the fenced epoch.
    pub fn truncate_after(
        &self,
        stream: &str,
        epoch: u64,
        lsn: u64,
    ) -> impl Future<Output = Result<(), NodeError>> + Send + 'static {
        self.submit(stream, move |reply| Command::Control(Control::TruncateAfter { epoch, lsn, reply }))
    }

    /// Drops whole segments below `lsn`, if `epoch` is not below the fenced epoch (it does not
    /// raise it); a stream holding nothing at or above `lsn` restarts empty there.
    pub fn truncate_below(
        &self,
        stream: &str,
        epoch: u64,
        lsn: u64,
    ) -> impl Future<Output = Result<(), NodeError>> + Send + 'static {
        self.submit(stream, move |reply| Command::Control(Control::TruncateBelow { epoch, lsn, reply }))
    }

    /// Durable entries `from..=to`, up to `max_bytes` of payload (at least one if any). Blocking I/O.
    pub fn read(&self, stream: &str, from: u64, to: u64, max_bytes: usize) -> Result<Vec<Entry>, NodeError> {
        match self.stream(stream, false)? {
            Some(s) => s.lock().read(stream, from, to, max_bytes),
            None => Ok(Vec::new()),
        }
    }

    /// A watch of the stream's durable progress, for subscriptions (creates the stream).
    pub fn watch(&self, stream: &str) -> Result<watch::Receiver<Progress>, NodeError> {
        let stream = self.stream(stream, true)?.expect("created on demand");
        Ok(stream.progress.clone())
    }

    /// How many data fsyncs were attempted since open (group commit makes this far below the appends).
    pub fn data_syncs(&self) -> u64 {
        self.failpoint.syncs.load(Ordering::Relaxed)
    }

    /// The tail of every stream.
    pub fn status(&self) -> NodeStatus {
        let streams = self.streams.lock().expect("streams lock");
        NodeStatus {
            streams: streams.iter().map(|(name, s)| (name.clone(), s.lock().tail())).collect::<BTreeMap<_, _>>(),
        }
    }
}

fn writer_stopped() -> NodeError {
    NodeError::Storage("stream writer stopped".into())
}

/// Makes a directory's entries (created, renamed, removed files) durable.
fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests;

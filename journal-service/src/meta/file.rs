//! `file:PATH`: the metadata store as one JSON document, for a single machine.
//!
//! Every operation takes an exclusive `flock` on `PATH.lock`, re-reads the document, and — if it
//! changes anything — writes `PATH.tmp`, fsyncs it, renames it over `PATH` and fsyncs the
//! directory. So several processes (or several handles in one process) can share the file: each
//! compare-and-set sees the latest committed document, and a crash leaves either the old or the
//! new document, never a torn one. The blocking file work runs on tokio's blocking pool.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{ErrorKind, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{EventRecord, MetaError, ShardEpoch, SnapshotRecord, Topology};

/// The whole stored state.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    #[serde(default)]
    epochs: BTreeMap<u32, ShardEpoch>,
    #[serde(default)]
    topology: Option<VersionedTopology>,
    #[serde(default)]
    users: BTreeMap<String, serde_json::Value>,
    #[serde(default)]
    parameters: BTreeMap<String, String>,
    #[serde(default)]
    snapshots: Vec<SnapshotRecord>,
    /// Per shard, the committed entries no replay applies (`MetaStore::abort_entry`).
    #[serde(default)]
    aborted: BTreeMap<u32, BTreeSet<u64>>,
    #[serde(default)]
    events: Vec<EventRecord>,
    /// The id the next event gets minus one; kept apart from `events` so ids are never reused.
    #[serde(default)]
    last_event_id: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct VersionedTopology {
    version: u64,
    topology: Topology,
}

/// What an operation did to the document: only a changed document is written back.
enum Outcome<T> {
    Unchanged(T),
    Changed(T),
}

/// A handle on a `file:` store. Cheap to open; holds no lock between operations.
#[derive(Debug, Clone)]
pub struct FileStore {
    path: PathBuf,
}

impl FileStore {
    /// Opens (without creating yet) the document at `path`; its directory must exist.
    pub fn open(path: impl Into<PathBuf>) -> Result<FileStore, MetaError> {
        let path = path.into();
        let dir = parent_dir(&path);
        if !dir.is_dir() {
            return Err(MetaError::Io(std::io::Error::new(
                ErrorKind::NotFound,
                format!("directory of {} does not exist", path.display()),
            )));
        }
        Ok(FileStore { path })
    }

    /// Runs `op` on the current document under the lock, writing it back if `op` changed it.
    async fn transact<T: Send + 'static>(
        &self,
        op: impl FnOnce(&mut Document) -> Result<Outcome<T>, MetaError> + Send + 'static,
    ) -> Result<T, MetaError> {
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let _lock = FileLock::acquire(&lock_path(&path))?;
            let mut doc = read_document(&path)?;
            match op(&mut doc)? {
                Outcome::Unchanged(value) => Ok(value),
                Outcome::Changed(value) => {
                    write_document(&path, &doc)?;
                    Ok(value)
                }
            }
        })
        .await
        .map_err(|e| MetaError::Io(std::io::Error::other(format!("metadata task failed: {e}"))))?
    }

    pub async fn claim_epoch(&self, shard: u32, expected: u64, writer: &str) -> Result<u64, MetaError> {
        let writer = writer.to_string();
        self.transact(move |doc| {
            let current = doc.epochs.get(&shard).map_or(0, |e| e.epoch);
            if current != expected {
                return Err(MetaError::Conflict { current });
            }
            let epoch = expected + 1;
            doc.epochs.insert(shard, ShardEpoch { epoch, writer: Some(writer) });
            Ok(Outcome::Changed(epoch))
        })
        .await
    }

    pub async fn epoch(&self, shard: u32) -> Result<ShardEpoch, MetaError> {
        self.transact(move |doc| {
            Ok(Outcome::Unchanged(doc.epochs.get(&shard).cloned().unwrap_or(ShardEpoch { epoch: 0, writer: None })))
        })
        .await
    }

    pub async fn get_topology(&self) -> Result<Option<(u64, Topology)>, MetaError> {
        self.transact(|doc| Ok(Outcome::Unchanged(doc.topology.as_ref().map(|t| (t.version, t.topology.clone())))))
            .await
    }

    pub async fn put_topology(&self, expected_version: u64, topology: &Topology) -> Result<u64, MetaError> {
        let topology = topology.clone();
        self.transact(move |doc| {
            let current = doc.topology.as_ref().map_or(0, |t| t.version);
            if current != expected_version {
                return Err(MetaError::Conflict { current });
            }
            let version = current + 1;
            doc.topology = Some(VersionedTopology { version, topology });
            Ok(Outcome::Changed(version))
        })
        .await
    }

    pub async fn put_user(&self, name: &str, user: &serde_json::Value) -> Result<(), MetaError> {
        let (name, user) = (name.to_string(), user.clone());
        self.transact(move |doc| {
            doc.users.insert(name, user);
            Ok(Outcome::Changed(()))
        })
        .await
    }

    pub async fn get_user(&self, name: &str) -> Result<Option<serde_json::Value>, MetaError> {
        let name = name.to_string();
        self.transact(move |doc| Ok(Outcome::Unchanged(doc.users.get(&name).cloned()))).await
    }

    pub async fn list_users(&self) -> Result<Vec<(String, serde_json::Value)>, MetaError> {
        self.transact(|doc| Ok(Outcome::Unchanged(doc.users.iter().map(|(k, v)| (k.clone(), v.clone())).collect())))
            .await
    }

    pub async fn delete_user(&self, name: &str) -> Result<bool, MetaError> {
        let name = name.to_string();
        self.transact(move |doc| {
            Ok(match doc.users.remove(&name) {
                Some(_) => Outcome::Changed(true),
                None => Outcome::Unchanged(false),
            })
        })
        .await
    }

    pub async fn get_parameters(&self) -> Result<BTreeMap<String, String>, MetaError> {
        self.transact(|doc| Ok(Outcome::Unchanged(doc.parameters.clone()))).await
    }

    pub async fn put_parameters(&self, parameters: &BTreeMap<String, String>) -> Result<(), MetaError> {
        let parameters = parameters.clone();
        self.transact(move |doc| {
            doc.parameters = parameters;
            Ok(Outcome::Changed(()))
        })
        .await
    }

    pub async fn add_snapshot(&self, snapshot: &SnapshotRecord) -> Result<(), MetaError> {
        let snapshot = snapshot.clone();
        self.transact(move |doc| {
            doc.snapshots.retain(|s| (s.shard, s.lsn) != (snapshot.shard, snapshot.lsn));
            doc.snapshots.push(snapshot);
            doc.snapshots.sort_by_key(|s| (s.shard, s.lsn));
            Ok(Outcome::Changed(()))
        })
        .await
    }

    pub async fn list_snapshots(&self, shard: u32) -> Result<Vec<SnapshotRecord>, MetaError> {
        self.transact(move |doc| {
            Ok(Outcome::Unchanged(doc.snapshots.iter().filter(|s| s.shard == shard).cloned().collect()))
        })
        .await
    }

    pub async fn remove_snapshot(&self, shard: u32, lsn: u64) -> Result<bool, MetaError> {
        self.transact(move |doc| {
            let before = doc.snapshots.len();
            doc.snapshots.retain(|s| (s.shard, s.lsn) != (shard, lsn));
            Ok(if doc.snapshots.len() < before { Outcome::Changed(true) } else { Outcome::Unchanged(false) })
        })
        .await
    }

    pub async fn abort_entry(&self, shard: u32, lsn: u64) -> Result<(), MetaError> {
        self.transact(move |doc| {
            Ok(if doc.aborted.entry(shard).or_default().insert(lsn) {
                Outcome::Changed(())
            } else {
                Outcome::Unchanged(())
            })
        })
        .await
    }

    pub async fn aborted_entries(&self, shard: u32) -> Result<BTreeSet<u64>, MetaError> {
        self.transact(move |doc| Ok(Outcome::Unchanged(doc.aborted.get(&shard).cloned().unwrap_or_default()))).await
    }

    pub async fn append_event(&self, kind: &str, body: &serde_json::Value) -> Result<u64, MetaError> {
        let (kind, body) = (kind.to_string(), body.clone());
        self.transact(move |doc| {
            doc.last_event_id += 1;
            let id = doc.last_event_id;
            doc.events.push(EventRecord { id, kind, body });
            Ok(Outcome::Changed(id))
        })
        .await
    }

    pub async fn list_events(&self, since_id: u64, limit: usize) -> Result<Vec<EventRecord>, MetaError> {
        self.transact(move |doc| {
            Ok(Outcome::Unchanged(doc.events.iter().filter(|e| e.id > since_id).take(limit).cloned().collect()))
        })
        .await
    }
}

/// An exclusive `flock` on the lock file, released when dropped (closing the file releases it).
struct FileLock {
    _file: File,
}

impl FileLock {
    fn acquire(path: &Path) -> Result<FileLock, MetaError> {
        let file = crate::private_fs::open_options().create(true).truncate(false).write(true).open(path)?;
        loop {
            // SAFETY: flock on a descriptor we own; it blocks until the lock is ours.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
            if rc == 0 {
                return Ok(FileLock { _file: file });
            }
            let err = std::io::Error::last_os_error();
            if err.kind() != ErrorKind::Interrupted {
                return Err(err.into());
            }
        }
    }
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

fn lock_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// The stored document, or an empty one if the file does not exist yet.
fn read_document(path: &Path) -> Result<Document, MetaError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| MetaError::Corrupt(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(Document::default()),
        Err(e) => Err(e.into()),
    }
}

/// Replaces the document atomically and durably: temp file, fsync, rename, fsync of the directory.
fn write_document(path: &Path, doc: &Document) -> Result<(), MetaError> {
    let bytes = serde_json::to_vec_pretty(doc).map_err(|e| MetaError::Corrupt(e.to_string()))?;
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    let mut file = crate::private_fs::create(&tmp)?;
    file.write_all(&bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    File::open(parent_dir(path))?.sync_all()?;
    Ok(())
}

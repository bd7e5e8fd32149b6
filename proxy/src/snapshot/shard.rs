//! One shard's snapshots: taking them from a replica, keeping the newest few, truncating the
//! journal below them, and loading one into a node that misses what the journal gave up.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use journal_service::cluster_tls::Transport;
use journal_service::meta::{MetaStore, SnapshotRecord};
use journal_service::node_client::NodeClient;
use serde_json::json;
use tokio::sync::Mutex;

use super::{rdb, SnapshotSettings};
use crate::backend::{BackendConn, NodeTarget};
use crate::keys::LSN_KEY;
use crate::prepare::NodePreparation;
use crate::resp::Proto;
use crate::status::ShardStatus;

/// How often the scheduler looks at how far the shard's nodes got beyond the newest snapshot.
const SCHEDULE_EVERY: Duration = Duration::from_secs(1);
/// After a failed snapshot, how long the scheduler waits before the next try.
const RETRY_AFTER: Duration = Duration::from_secs(10);
/// How long the metadata store and the source's `GET __memlog:lsn` may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How often an adoption logs how far its fetch got.
const ADOPTION_PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// A shard's snapshots. The files live in `<dir>/shard-N/`, named by the LSN they hold at
/// least; the catalog is the metadata store's. One operation at a time, so a restore never
/// reads a file that a newer snapshot is pruning.
pub(crate) struct ShardSnapshots {
    shard: usize,
    dir: PathBuf,
    settings: Arc<SnapshotSettings>,
    meta: Arc<MetaStore>,
    journal: Vec<SocketAddr>,
    /// The node preparation, run on a node after a snapshot was loaded into it (and whose
    /// connection options every connection here uses).
    prepare: Arc<NodePreparation>,
    transport: Transport,
    busy: Mutex<()>,
    /// What INFO persistence reports about this shard's snapshots.
    pub(crate) activity: SnapshotActivity,
}

/// The snapshots taken since the proxy started, as INFO persistence reports them (`rdb_*`).
#[derive(Default)]
pub(crate) struct SnapshotActivity {
    pub(crate) saves: AtomicU64,
    /// The newest snapshot's LSN and unix time (0: none taken since start).
    pub(crate) last_lsn: AtomicU64,
    pub(crate) last_unix_s: AtomicU64,
    /// How long the last one took, in seconds (-1: none yet).
    pub(crate) last_duration_s: AtomicI64,
    pub(crate) last_failed: AtomicBool,
    /// Unix time the running snapshot started (0: none running).
    pub(crate) running_since_unix_s: AtomicU64,
}

impl ShardSnapshots {
    pub(crate) fn new(
        shard: usize,
        settings: Arc<SnapshotSettings>,
        meta: Arc<MetaStore>,
        (journal, transport): (Vec<SocketAddr>, Transport),
        prepare: Arc<NodePreparation>,
    ) -> ShardSnapshots {
        let dir = settings.dir.join(format!("shard-{shard}"));
        let activity = SnapshotActivity { last_duration_s: AtomicI64::new(-1), ..Default::default() };
        ShardSnapshots { shard, dir, settings, meta, journal, transport, prepare, busy: Mutex::new(()), activity }
    }

    /// The catalog's snapshots of this shard, oldest first.
    async fn catalog(&self) -> anyhow::Result<Vec<SnapshotRecord>> {
        let listed =
            tokio::time::timeout(CALL_TIMEOUT, self.meta.list_snapshots(crate::router::shard_id(self.shard))).await;
        Ok(listed.map_err(|_| anyhow::anyhow!("the metadata store did not answer"))??)
    }

    /// The LSN of the newest snapshot (0 without one).
    async fn newest_lsn(&self) -> anyhow::Result<u64> {
        Ok(self.catalog().await?.last().map_or(0, |s| s.lsn))
    }

    /// Takes a snapshot from `source` (a node of the shard), keeps the newest `keep`, and
    /// truncates the journal below the oldest one kept.
    ///
    /// The snapshot's LSN is `source`'s `__memlog:lsn` read just before the RDB is made: the
    /// RDB holds at least that prefix (a node's LSN only grows, and it is written in the same
    /// `MULTI` as the entry's commands). A restore reads the exact LSN back from the node.
    async fn take(&self, source: &str) -> anyhow::Result<SnapshotRecord> {
        let started = Instant::now();
        self.activity.running_since_unix_s.store(unix_now_s(), Ordering::Relaxed);
        let taken = self.take_unrecorded(source).await;
        let activity = &self.activity;
        activity.running_since_unix_s.store(0, Ordering::Relaxed);
        activity.last_duration_s.store(started.elapsed().as_secs() as i64, Ordering::Relaxed);
        activity.last_failed.store(taken.is_err(), Ordering::Relaxed);
        if let Ok(record) = &taken {
            activity.saves.fetch_add(1, Ordering::Relaxed);
            activity.last_lsn.store(record.lsn, Ordering::Relaxed);
            activity.last_unix_s.store(record.timestamp_ms / 1000, Ordering::Relaxed);
        }
        taken
    }

    async fn take_unrecorded(&self, source: &str) -> anyhow::Result<SnapshotRecord> {
        let _one_at_a_time = self.busy.lock().await;
        let started = Instant::now();
        let lsn = self.lsn_of(source).await?;
        anyhow::ensure!(lsn > 0, "{source} holds no journal entry yet");
        let (record, bytes) = self.fetch_and_record(source, lsn).await?;
        let elapsed = started.elapsed();
        let shard = self.shard.to_string();
        metrics::counter!("memlog_snapshots_total", "shard" => shard.clone()).increment(1);
        metrics::histogram!("memlog_snapshot_duration_seconds", "shard" => shard.clone()).record(elapsed.as_secs_f64());
        metrics::gauge!("memlog_snapshot_lsn", "shard" => shard).set(lsn as f64);
        tracing::info!(
            shard = self.shard,
            lsn,
            bytes,
            source,
            elapsed_ms = crate::units::millis(elapsed),
            "snapshot taken"
        );
        let body = json!({"shard": self.shard, "lsn": lsn, "bytes": bytes, "source": source,
                          "duration_ms": crate::units::millis(elapsed)});
        self.event("snapshot_taken", body).await;
        self.prune_and_truncate().await?;
        Ok(record)
    }

    /// Fetches `source`'s RDB (which holds the journal up to `lsn`) into the shard's directory
    /// and records it in the catalog; returns the record and the file's size.
    async fn fetch_and_record(&self, source: &str, lsn: u64) -> anyhow::Result<(SnapshotRecord, u64)> {
        let dir = self.dir.clone();
        blocking(move || std::fs::create_dir_all(dir)).await?;
        let path = self.dir.join(format!("{lsn:020}.rdb"));
        let partial = self.dir.join(format!(".{lsn:020}.rdb.partial"));
        let bytes = self.fetch_durably(source, &partial, &path).await?;
        let record = SnapshotRecord {
            shard: crate::router::shard_id(self.shard),
            lsn,
            location: path.display().to_string(),
            timestamp_ms: crate::units::unix_ms(),
        };
        tokio::time::timeout(CALL_TIMEOUT, self.meta.add_snapshot(&record))
            .await
            .map_err(|_| anyhow::anyhow!("the metadata store did not answer"))??;
        Ok((record, bytes))
    }

    /// True when the catalog holds this shard's baseline: the snapshot at LSN 0 taken when the
    /// shard adopted the data its primary held (`adopt`).
    pub(crate) async fn has_baseline(&self) -> anyhow::Result<bool> {
        Ok(self.catalog().await?.first().is_some_and(|s| s.lsn == 0))
    }

    /// Adopts the data `node` holds (`keys` keys, `other_shards_keys` of them in other shards'
    /// slots, no journal entry): fetches its RDB as the baseline snapshot at LSN 0, verified and
    /// recorded before the shard serves (so before its first write is journaled), logging the
    /// progress of a large dataset. `memlog status` reads the two events.
    /// True when clients reach database 0 only (cluster mode).
    pub(crate) fn serves_database_0_only(&self) -> bool {
        self.settings.database_0_only
    }

    pub(crate) async fn adopt(&self, node: &str, keys: u64, other_shards_keys: u64) -> anyhow::Result<()> {
        let _one_at_a_time = self.busy.lock().await;
        let started = Instant::now();
        let body = json!({"shard": self.shard, "node": node, "keys": keys, "other_shards_keys": other_shards_keys});
        self.event("adoption_started", body).await;
        let partial = self.dir.join(format!(".{:020}.rdb.partial", 0));
        let progress = tokio::spawn(log_progress(self.shard, node.to_string(), keys, partial));
        let fetched = self.fetch_and_record(node, 0).await;
        progress.abort();
        let (record, bytes) = fetched?;
        let elapsed_ms = crate::units::millis(started.elapsed());
        tracing::info!(
            shard = self.shard,
            node,
            keys,
            bytes,
            location = %record.location,
            elapsed_ms,
            "adopted: the primary's data is now the shard's baseline snapshot (lsn 0); the shard serves"
        );
        let body = json!({"shard": self.shard, "node": node, "keys": keys, "other_shards_keys": other_shards_keys,
                          "bytes": bytes, "location": record.location, "duration_ms": elapsed_ms});
        self.event("adoption_completed", body).await;
        Ok(())
    }

    /// Loads the newest snapshot into `node` when it holds nothing at all and there is one: an
    /// adopted shard's data from before its first entry is in snapshots only (and the journal's
    /// first segment may outlive the baseline's pruning, so a replay from the start would find
    /// it and miss that data); for any shard it leaves less to replay. False when the node holds
    /// something or there is no snapshot.
    pub(crate) async fn restore_if_empty(&self, node: &str) -> anyhow::Result<bool> {
        if self.catalog().await?.is_empty() {
            return Ok(false);
        }
        let conn = BackendConn::spawn(node, Proto::Resp2, self.prepare.opts().clone());
        let reply = tokio::time::timeout(CALL_TIMEOUT, conn.call(&["INFO", "keyspace"]))
            .await
            .map_err(|_| anyhow::anyhow!("{node} did not answer INFO keyspace"))??;
        let Some((keys, other_db_keys)) = super::adopt::keyspace_keys(&reply) else { return Ok(false) };
        let served = if self.settings.database_0_only { keys - other_db_keys } else { keys };
        if served > 0 {
            return Ok(false);
        }
        // Empty where memlog serves (database 0, in cluster mode). Keys in other databases do
        // not make it the holder of the shard's data: an adopted shard's data would then never
        // come back (the baseline holds it, the journal does not). The snapshot replaces them:
        // said, not silent.
        if other_db_keys > 0 {
            tracing::warn!(
                shard = self.shard,
                node,
                keys = other_db_keys,
                "the node holds keys only in databases other than 0, which memlog does not serve: loading the newest snapshot replaces them"
            );
        }
        tracing::info!(shard = self.shard, node, "the node is empty: loading the newest snapshot before the replay");
        self.restore(node).await?;
        Ok(true)
    }

    /// Fetches the RDB into `partial`, makes it durable and only then gives it its name.
    async fn fetch_durably(&self, source: &str, partial: &Path, path: &Path) -> anyhow::Result<u64> {
        let mut file = tokio::fs::File::create(partial).await?;
        let fetched = rdb::fetch(source, &mut file, self.settings.timeout, self.prepare.access()).await;
        let bytes = match fetched {
            Ok(bytes) => bytes,
            Err(e) => {
                drop(file);
                let partial = partial.to_path_buf();
                let _ = blocking(move || std::fs::remove_file(partial)).await;
                return Err(anyhow::anyhow!("fetching an RDB from {source}: {e}"));
            }
        };
        file.sync_all().await?;
        drop(file);
        // What is on disk, not only what arrived, is what the journal will be truncated for.
        let written = partial.to_path_buf();
        tokio::task::spawn_blocking(move || rdb::verify(&written))
            .await?
            .map_err(|e| anyhow::anyhow!("the snapshot written to {} does not check: {e}", partial.display()))?;
        let (partial, path, dir) = (partial.to_path_buf(), path.to_path_buf(), self.dir.clone());
        blocking(move || {
            std::fs::rename(partial, path)?;
            std::fs::File::open(dir)?.sync_all()
        })
        .await?;
        Ok(bytes)
    }

    /// Forgets the snapshots beyond the newest `keep` (catalog first, then the file), then gives
    /// the journal back everything the oldest one kept holds.
    async fn prune_and_truncate(&self) -> anyhow::Result<()> {
        let catalog = self.catalog().await?;
        let excess = catalog.len().saturating_sub(self.settings.keep);
        for old in &catalog[..excess] {
            self.meta.remove_snapshot(old.shard, old.lsn).await?;
            let location = PathBuf::from(&old.location);
            if let Err(e) = blocking(move || std::fs::remove_file(location)).await {
                tracing::warn!(shard = self.shard, location = %old.location, "cannot delete an old snapshot: {e}");
            }
        }
        self.delete_strays(&catalog[excess..]).await;
        let Some(oldest) = catalog.get(excess) else { return Ok(()) };
        let stream = format!("shard-{}", self.shard);
        let below = oldest.lsn + 1;
        // Nodes refuse a truncation below their fenced epoch: the shard's current one.
        let epoch = self.meta.epoch(crate::router::shard_id(self.shard)).await?.epoch;
        let client = |node: &SocketAddr| NodeClient::new(*node, self.transport.clone());
        let calls: Vec<_> =
            self.journal.iter().map(|node| client(node).truncate_below(&stream, epoch, below)).collect();
        for (node, call) in self.journal.iter().zip(calls) {
            // A node that misses this gives the space back at the next snapshot.
            if let Err(e) = call.await {
                tracing::warn!(shard = self.shard, %node, below, "cannot truncate the journal: {e}");
            }
        }
        Ok(())
    }

    /// Deletes files in the shard's directory that no kept snapshot names: a partial fetch or a
    /// pruned snapshot whose deletion a crash interrupted. Only called while holding `busy`,
    /// so no fetch is writing a partial file.
    async fn delete_strays(&self, kept: &[SnapshotRecord]) {
        let (dir, shard) = (self.dir.clone(), self.shard);
        let kept: Vec<String> = kept.iter().map(|s| s.location.clone()).collect();
        let _ = tokio::task::spawn_blocking(move || {
            let Ok(entries) = std::fs::read_dir(&dir) else { return };
            for path in entries.filter_map(|e| e.ok().map(|e| e.path())) {
                let named = path.display().to_string();
                if !kept.contains(&named) {
                    tracing::info!(shard, file = %named, "deleting a stray snapshot file");
                    if let Err(e) = std::fs::remove_file(&path) {
                        tracing::warn!(shard, file = %named, "cannot delete a stray snapshot file: {e}");
                    }
                }
            }
        })
        .await;
    }

    /// Loads the newest usable snapshot into `node`, replacing what it holds, and returns the
    /// LSN the node then holds. A snapshot whose file is missing or damaged is skipped for the
    /// next older one: the journal was only truncated below the oldest kept.
    pub(crate) async fn restore(&self, node: &str) -> anyhow::Result<u64> {
        let _one_at_a_time = self.busy.lock().await;
        let mut problems = Vec::new();
        for snapshot in self.catalog().await?.iter().rev() {
            let started = Instant::now();
            let path = PathBuf::from(&snapshot.location);
            let loaded = load_then_prepare(&self.prepare, node, &path, &self.settings).await?;
            if let Err(e) = loaded {
                tracing::error!(shard = self.shard, node, location = %snapshot.location, "cannot restore this snapshot, trying an older one: {e}");
                problems.push(format!("{}: {e}", snapshot.location));
                continue;
            }
            let lsn = self.lsn_of(node).await?;
            let elapsed = started.elapsed();
            metrics::counter!("memlog_snapshot_restores_total", "shard" => self.shard.to_string()).increment(1);
            tracing::info!(
                shard = self.shard,
                node,
                lsn,
                elapsed_ms = crate::units::millis(elapsed),
                "snapshot restored"
            );
            let body = json!({"shard": self.shard, "node": node, "lsn": lsn, "location": snapshot.location,
                              "duration_ms": crate::units::millis(elapsed)});
            self.event("snapshot_restored", body).await;
            return Ok(lsn);
        }
        anyhow::bail!("no snapshot of shard {} could be restored: {problems:?}", self.shard)
    }

    /// `node`'s `__memlog:lsn`.
    async fn lsn_of(&self, node: &str) -> anyhow::Result<u64> {
        let conn = BackendConn::spawn(node, Proto::Resp2, self.prepare.opts().clone());
        let reply = tokio::time::timeout(CALL_TIMEOUT, conn.call(&[&b"GET"[..], LSN_KEY]))
            .await
            .map_err(|_| anyhow::anyhow!("{node} did not answer GET __memlog:lsn"))??;
        crate::keys::parse_lsn(&reply).ok_or_else(|| {
            anyhow::anyhow!("{node} answered GET __memlog:lsn with {:?}", String::from_utf8_lossy(&reply))
        })
    }

    async fn event(&self, kind: &str, body: serde_json::Value) {
        match tokio::time::timeout(CALL_TIMEOUT, self.meta.append_event(kind, &body)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(shard = self.shard, kind, "cannot record the event: {e}"),
            Err(_) => tracing::warn!(shard = self.shard, kind, "recording the event timed out"),
        }
    }

    /// Takes a snapshot now, from the node the scheduler would pick (`MEMLOG SNAPSHOT`).
    pub(crate) async fn take_now(&self, status: &ShardStatus, target: &NodeTarget) -> anyhow::Result<SnapshotRecord> {
        let (source, _) =
            snapshot_source(status, &target.addr()).ok_or_else(|| anyhow::anyhow!("no node of the shard answers"))?;
        self.take(&source).await
    }

    /// Snapshots the shard whenever its best node holds `every_entries` beyond the newest
    /// snapshot: from the replica holding the most (so the primary does not fork), else the
    /// primary itself.
    pub(crate) fn spawn_scheduler(self: Arc<Self>, status: Arc<ShardStatus>, target: Arc<NodeTarget>) {
        // Exported from the start, so a dashboard or an alert sees 0 rather than nothing.
        let shard = self.shard.to_string();
        for counter in ["memlog_snapshots_total", "memlog_snapshot_failures_total", "memlog_snapshot_restores_total"] {
            metrics::counter!(counter, "shard" => shard.clone()).increment(0);
        }
        tokio::spawn(async move {
            let mut newest = None;
            loop {
                tokio::time::sleep(SCHEDULE_EVERY).await;
                let newest_lsn = match newest {
                    Some(lsn) => lsn,
                    None => match self.newest_lsn().await {
                        Ok(lsn) => *newest.insert(lsn),
                        Err(e) => {
                            tracing::warn!(shard = self.shard, "cannot read the snapshot catalog: {e}");
                            continue;
                        }
                    },
                };
                let Some((source, lsn)) = snapshot_source(&status, &target.addr()) else { continue };
                if lsn < newest_lsn.saturating_add(self.settings.every_entries) {
                    continue;
                }
                match self.take(&source).await {
                    Ok(record) => newest = Some(record.lsn),
                    Err(e) => {
                        metrics::counter!("memlog_snapshot_failures_total", "shard" => self.shard.to_string())
                            .increment(1);
                        tracing::warn!(shard = self.shard, source, "snapshot failed, retrying later: {e}");
                        tokio::time::sleep(RETRY_AFTER).await;
                    }
                }
            }
        });
    }
}

/// The node to snapshot and the LSN it last reported: the answering replica holding the most,
/// else the primary when it answers.
fn snapshot_source(status: &ShardStatus, primary: &str) -> Option<(String, u64)> {
    let view = status.view();
    let answering = |n: &crate::status::NodeStatus| n.up.then_some(n.lsn).flatten().map(|lsn| (n.addr.clone(), lsn));
    let nodes = std::iter::once(&view.primary).chain(&view.replicas);
    let replica = nodes.clone().filter(|n| n.addr != primary).filter_map(answering).max_by_key(|(_, lsn)| *lsn);
    replica.or_else(|| nodes.filter(|n| n.addr == primary).find_map(answering))
}

/// Logs every few seconds how much of the adopted node's RDB has arrived (the partial file's size).
async fn log_progress(shard: usize, node: String, keys: u64, partial: PathBuf) {
    let started = Instant::now();
    loop {
        tokio::time::sleep(ADOPTION_PROGRESS_EVERY).await;
        let bytes = tokio::fs::metadata(&partial).await.map_or(0, |m| m.len());
        let mib_s = bytes as f64 / (1 << 20) as f64 / started.elapsed().as_secs_f64().max(0.001);
        tracing::info!(
            shard,
            node = %node,
            keys,
            fetched_bytes = bytes,
            mib_s = format!("{mib_s:.1}"),
            elapsed_s = started.elapsed().as_secs(),
            "adopting: fetching the primary's RDB"
        );
    }
}

/// Runs a blocking filesystem call on tokio's blocking pool, so a slow disk stalls this snapshot
/// and not the runtime's workers (which serve every client).
async fn blocking<T: Send + 'static>(call: impl FnOnce() -> std::io::Result<T> + Send + 'static) -> std::io::Result<T> {
    tokio::task::spawn_blocking(call).await.map_err(std::io::Error::other)?
}

fn unix_now_s() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Loads the RDB at `path` into `node` while holding the node against concurrent preparation
/// (the failover controller prepares a node it sees restart, which would replace the load's
/// one-time credential and lock the node out of the serving port), then prepares the node:
/// the load left it with its one-time credential, also when it failed. The outer error is the
/// preparation's: the node must then not replay or serve.
async fn load_then_prepare(
    prepare: &Arc<NodePreparation>,
    node: &str,
    path: &Path,
    settings: &SnapshotSettings,
) -> Result<Result<(), rdb::RdbError>, crate::prepare::PrepareError> {
    let loaded = {
        let _held = prepare.hold_for_load(node).await;
        // `load` checks the file before the node sees any of it.
        rdb::load(node, path, settings.serve_ip, settings.timeout, prepare.access()).await
    };
    prepare.prepare_at(node).await?;
    Ok(loaded)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{BackendAuth, BackendOptions, NodeAccess};
    use crate::params::{Group, LiveGroup};
    use crate::snapshot::rdb::tests::{dataset, fetch_to, Node, T};

    /// One command on `node` over an authenticated connection: the raw reply.
    async fn call(prepare: &NodePreparation, node: &str, args: &[&str]) -> Vec<u8> {
        BackendConn::spawn(node, Proto::Resp2, prepare.opts().clone()).call(args).await.unwrap().to_vec()
    }

    /// The failover controller prepares a node it sees (re)appear, and may see it while a
    /// snapshot is being loaded into it: the load must still get through (the one-time
    /// credential stays) and the node end up prepared.
    #[tokio::test]
    async fn a_node_prepared_again_and_again_during_its_load_still_loads() {
        let source = Node::start(&[]);
        source.pipeline(&dataset("src", 5_000)).await;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snapshot.rdb");
        fetch_to(&source, &path).await.unwrap();
        let digest = source.cmd(&["DEBUG", "DIGEST"]).await;

        let target = Node::start(&["--requirepass", "node-password"]);
        let auth = BackendAuth { user: None, password: "node-password".into() };
        let access = NodeAccess { auth: Some(Arc::new(auth)), tls: None };
        let opts = BackendOptions { connect_timeout: T, request_timeout: T, access };
        let prepare = NodePreparation::new(opts, LiveGroup::new(Group::new()));
        let settings = SnapshotSettings {
            dir: dir.path().to_path_buf(),
            every_entries: 1,
            keep: 1,
            serve_ip: "127.0.0.1".parse().unwrap(),
            timeout: T,
            database_0_only: true,
        };
        let (node, load_prepare) = (target.addr(), prepare.clone());
        let load = tokio::spawn(async move { load_then_prepare(&load_prepare, &node, &path, &settings).await });
        // As fast as one connection goes, so a preparation lands between the load's one-time
        // credential and the node's handshake.
        let conn = BackendConn::spawn(&target.addr(), Proto::Resp2, prepare.opts().clone());
        let mut prepared_meanwhile = 0;
        while !load.is_finished() {
            prepare.prepare(&target.addr(), &conn).await.unwrap();
            prepared_meanwhile += 1;
        }
        load.await.unwrap().expect("prepared after the load").expect("the load got through");
        assert!(prepared_meanwhile > 0);
        let digest_after = call(&prepare, &target.addr(), &["DEBUG", "DIGEST"]).await;
        assert_eq!(digest_after, format!("+{digest}\r\n").into_bytes());
        let masterauth = call(&prepare, &target.addr(), &["CONFIG", "GET", "masterauth"]).await;
        assert!(masterauth.ends_with(b"node-password\r\n"), "{}", String::from_utf8_lossy(&masterauth));
    }
}

//! `memlog import rdb FILE… --to URL`: two passes over the files. The first reads every file
//! whole and checks it (structure, CRC-64, RDB version, database 0 only) with nothing sent;
//! only if all pass does the second send each key as `RESTORE key <expiry> payload REPLACE
//! ABSTTL`, spread over connections by hash slot (a key's commands stay on one connection, in
//! file order) and pipelined in batches.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use memlog_proxy::router::key_slot;
use memlog_rdb::{Checksum, Item, RdbReader};
use tokio::sync::mpsc;

use super::conn::Conn;
use super::endpoint::Endpoint;
use super::progress::{Progress, Total};
use super::{show, TargetArgs};

#[derive(clap::Args)]
pub struct RdbArgs {
    /// RDB files (dump.rdb, or the .rdb files of an ElastiCache backup: one per shard).
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    #[command(flatten)]
    target: TargetArgs,
    /// Connections to the proxy; keys are spread over them by hash slot.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    connections: u16,
    /// RESTOREs sent together on one connection before their replies are read.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pipeline: u32,
    /// Progress as JSON lines on stdout (for scripts) instead of a progress bar.
    #[arg(long)]
    json: bool,
}

/// What the check of one file found.
struct FileCheck {
    keys: u64,
    functions: u64,
    checksum: Checksum,
}

/// One key to restore: name, absolute expiry in ms (0 = none), payload.
type Restore = (Vec<u8>, i64, Vec<u8>);

pub async fn run(args: RdbArgs) -> anyhow::Result<()> {
    let target = args.target.endpoint()?;
    import_files(&args.files, &target, args.connections, args.pipeline as usize, args.json).await
}

/// Checks `files` whole, then restores every key into `target` over `connections` connections,
/// `pipeline` RESTOREs at a time (also the first step of `import live`'s replication mode).
pub(super) async fn import_files(
    files: &[PathBuf],
    target: &Endpoint,
    connections: u16,
    pipeline: usize,
    json: bool,
) -> anyhow::Result<()> {
    let total_bytes: u64 = files.iter().map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0)).sum();
    let checked = files.to_vec();
    let checks = tokio::task::spawn_blocking(move || check_all(&checked, total_bytes, json)).await??;
    let keys: u64 = checks.iter().map(|c| c.keys).sum();
    let functions: u64 = checks.iter().map(|c| c.functions).sum();
    for (file, check) in files.iter().zip(&checks) {
        if check.checksum == Checksum::Absent {
            tracing::warn!(
                "{}: no CRC-64 trailer (written with rdbchecksum no): checked by structure only",
                file.display()
            );
        }
    }
    if functions > 0 {
        tracing::warn!("{functions} function libraries in the files are not imported: load them with FUNCTION RESTORE");
    }

    // Every connection is opened (and authenticated) before the first key is sent.
    let mut conns = Vec::new();
    for _ in 0..connections {
        conns.push(Conn::connect(target).await?);
    }
    let restored = Arc::new(AtomicU64::new(0));
    let mut senders = Vec::new();
    let mut workers = Vec::new();
    for conn in conns {
        let (tx, rx) = mpsc::channel::<Vec<Restore>>(4);
        senders.push(tx);
        workers.push(tokio::spawn(restore_batches(conn, rx, restored.clone())));
    }
    let files = files.to_vec();
    let counted = restored.clone();
    let reading =
        tokio::task::spawn_blocking(move || send_all(&files, senders, pipeline, total_bytes, keys, json, &counted));
    let mut worker_error = None;
    for worker in workers {
        if let Err(e) = worker.await? {
            worker_error.get_or_insert(e);
        }
    }
    let expired = reading.await?;
    if let Some(e) = worker_error {
        anyhow::bail!(
            "import stopped: {e:#} ({} keys were restored before the error)",
            restored.load(Ordering::Relaxed)
        );
    }
    let expired = expired?;
    let restored = restored.load(Ordering::Relaxed);
    if restored + expired != keys {
        anyhow::bail!("{keys} keys were read but {restored} restored and {expired} skipped as expired");
    }
    Ok(())
}

/// The first pass: every file read whole and checked; the first problem refuses the import.
fn check_all(files: &[PathBuf], total_bytes: u64, json: bool) -> anyhow::Result<Vec<FileCheck>> {
    let mut progress = Progress::new("check", Some(Total::Bytes(total_bytes)), json);
    let mut done_bytes = 0;
    let mut keys = 0;
    let mut checks = Vec::new();
    for file in files {
        let mut reader = open(file)?;
        let mut check = FileCheck { keys: 0, functions: 0, checksum: Checksum::Absent };
        while let Some(item) = reader.next_item().map_err(|e| refused(file, e))? {
            match item {
                Item::Key(key) if key.db != 0 => anyhow::bail!(
                    "{}: key {} is in database {}; memlog serves database 0 only (as Redis Cluster does). \
                     Nothing was applied",
                    file.display(),
                    show(&key.key),
                    key.db
                ),
                Item::Key(_) => {
                    check.keys += 1;
                    keys += 1;
                    if keys % 4096 == 0 {
                        progress.update(keys, done_bytes + reader.offset(), &[])?;
                    }
                }
                Item::Function { .. } => check.functions += 1,
                Item::Aux { .. } => {}
            }
        }
        check.checksum = reader.checksum().expect("set at the end of the file");
        done_bytes += reader.offset();
        checks.push(check);
    }
    progress.finish(keys, done_bytes, &[])?;
    Ok(checks)
}

fn open(file: &Path) -> anyhow::Result<RdbReader<BufReader<File>>> {
    let handle = File::open(file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    RdbReader::new(BufReader::with_capacity(1 << 20, handle)).map_err(|e| refused(file, e))
}

fn refused(file: &Path, e: memlog_rdb::RdbError) -> anyhow::Error {
    anyhow::anyhow!("{}: {e}. Nothing was applied", file.display())
}

/// The second pass: every key not yet expired to the worker of its slot; returns how many were
/// skipped as expired.
fn send_all(
    files: &[PathBuf],
    senders: Vec<mpsc::Sender<Vec<Restore>>>,
    pipeline: usize,
    total_bytes: u64,
    total_keys: u64,
    json: bool,
    restored: &AtomicU64,
) -> anyhow::Result<u64> {
    let mut progress = Progress::new("restore", Some(Total::Bytes(total_bytes)), json);
    let mut batches: Vec<Vec<Restore>> = senders.iter().map(|_| Vec::with_capacity(pipeline)).collect();
    let mut expired = 0;
    let mut read = 0;
    let mut done_bytes = 0;
    for file in files {
        // The check pass read this very file whole; a failure now means it changed since.
        let mut reader = open(file)?;
        while let Some(item) =
            reader.next_item().map_err(|e| anyhow::anyhow!("{}: changed during the import: {e}", file.display()))?
        {
            let Item::Key(key) = item else { continue };
            read += 1;
            let expire_at = key.expire_at_ms.unwrap_or(0);
            if key.expire_at_ms.is_some() && expire_at <= now_ms() {
                expired += 1;
                continue;
            }
            let worker = key_slot(&key.key) as usize % senders.len();
            batches[worker].push((key.key, expire_at, key.payload));
            if batches[worker].len() >= pipeline {
                let batch = std::mem::replace(&mut batches[worker], Vec::with_capacity(pipeline));
                if senders[worker].blocking_send(batch).is_err() {
                    return Ok(expired); // The worker failed; run() reports its error.
                }
                progress.update(
                    restored.load(Ordering::Relaxed),
                    done_bytes + reader.offset(),
                    &[("expired_skipped", expired)],
                )?;
            }
        }
        done_bytes += reader.offset();
    }
    if read != total_keys {
        anyhow::bail!("the files changed during the import: {total_keys} keys at the check, {read} now");
    }
    for (sender, batch) in senders.iter().zip(batches) {
        if !batch.is_empty() && sender.blocking_send(batch).is_err() {
            return Ok(expired);
        }
    }
    drop(senders);
    progress.finish(total_keys - expired, done_bytes, &[("expired_skipped", expired)])?;
    Ok(expired)
}

/// One connection's worker: each batch pipelined, every reply checked.
async fn restore_batches(
    mut conn: Conn,
    mut batches: mpsc::Receiver<Vec<Restore>>,
    restored: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    while let Some(batch) = batches.recv().await {
        for (key, expire_at, payload) in &batch {
            let expire_at = expire_at.to_string();
            if expire_at == "0" {
                conn.queue(&[b"RESTORE", key, b"0", payload, b"REPLACE"]);
            } else {
                conn.queue(&[b"RESTORE", key, expire_at.as_bytes(), payload, b"REPLACE", b"ABSTTL"]);
            }
        }
        conn.flush().await?;
        for (key, _, _) in &batch {
            let reply = conn.reply().await?;
            conn.refused_if_error(b"RESTORE", reply).map_err(|e| anyhow::anyhow!("key {}: {e}", show(key)))?;
        }
        restored.fetch_add(batch.len() as u64, Ordering::Relaxed);
    }
    Ok(())
}

pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)).unwrap_or(0)
}

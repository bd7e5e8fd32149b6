//! `memlog import live` in its exact mode, for a source that allows `PSYNC` (a self-managed
//! Redis): memlog follows each source primary as a replica would. `PSYNC ? -1` gets a full
//! resync — the RDB, written to a temp file, checked whole (CRC-64) and restored key by key as
//! `import rdb` does — then the primary's replication stream: every write the primary ran
//! since the RDB, in its order, as Redis propagates them (absolute expiries, scripts as their
//! effects, expired and evicted keys as `DEL`), sent to memlog on one connection in the same
//! order. Nothing is missed or guessed, unlike the notification mode (`live.rs`), which re-reads
//! the keys a notification names.
//!
//! The link is kept as Redis keeps a replica's: `REPLCONF ACK <offset>` once a second (a primary
//! drops a psync replica silent for `repl-timeout`) and on `REPLCONF GETACK`. While the RDB is
//! restored, the stream is read on and queued (at most [`QUEUED`] commands; beyond that the
//! reading waits, and the primary buffers up to its `client-output-buffer-limit replica`).
//! On SIGINT/SIGTERM (the cut-over) each primary's `master_repl_offset` is read and the import
//! ends once memlog applied the stream up to it.
//!
//! Refused with a clear error: a write to a database other than 0, and a command memlog refuses
//! (e.g. a `RENAME` across hash slots from a non-cluster source: `--mode notifications` copies
//! such keys value by value).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use redis_protocol::resp2::types::BytesFrame;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use super::conn::{Conn, ConnError};
use super::endpoint::Endpoint;
use super::progress::Progress;

/// Commands of the stream read ahead of memlog per source primary.
const QUEUED: usize = 100_000;
/// Commands sent to memlog together before their replies are read.
const PIPELINE: usize = 512;
/// How often the replica acknowledges its offset, as Redis's replicas do.
const ACK_EVERY: Duration = Duration::from_secs(1);
/// How often progress is reported.
const TICK: Duration = Duration::from_millis(250);
/// Length of the end mark of a diskless (`$EOF:<mark>`) RDB transfer.
const EOF_MARK_LEN: usize = 40;

/// Why the source cannot be followed by replication: the caller may fall back.
#[derive(Debug, thiserror::Error)]
#[error("{addr}: PSYNC refused: {message}")]
pub struct PsyncRefused {
    addr: String,
    message: String,
}

/// One source primary's replication link once its full resync arrived.
pub struct Link {
    conn: Conn,
    /// The stream offset of the next byte (the primary's offset at the resync, plus what came).
    offset: u64,
    rdb: PathBuf,
}

/// What the appliers have done, for progress and the cut-over.
#[derive(Default)]
struct Counters {
    commands: AtomicU64,
    bytes: AtomicU64,
}

/// A full resync from every primary of `sources` (their RDBs in temp files): `PsyncRefused`
/// (inside the error) if one refuses `PSYNC`, before anything is written to memlog.
pub async fn resync_all(sources: &[Endpoint]) -> anyhow::Result<Vec<Link>> {
    let mut links: Vec<Link> = Vec::new();
    for (index, source) in sources.iter().enumerate() {
        match resync(source, index).await {
            Ok(link) => links.push(link),
            Err(e) => {
                for link in &links {
                    let _ = std::fs::remove_file(&link.rdb);
                }
                return Err(e);
            }
        }
    }
    Ok(links)
}

/// Restores the RDBs of `links` into `target`, then applies their streams until `stop` (the
/// cut-over) and the offset each of `sources` had then.
pub async fn follow(
    links: Vec<Link>,
    sources: &[Endpoint],
    target: &Endpoint,
    json: bool,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let rdbs: Vec<PathBuf> = links.iter().map(|l| l.rdb.clone()).collect();
    let (stop_tx, stopped) = watch::channel(None::<Vec<u64>>);
    let counters = Arc::new(Counters::default());
    let mut readers = JoinSet::new();
    let mut queues = Vec::new();
    let (mut received, mut applied) = (Vec::new(), Vec::new());
    for link in links {
        let (tx, rx) = mpsc::channel(QUEUED);
        received.push(Arc::new(AtomicU64::new(link.offset)));
        applied.push(Arc::new(AtomicU64::new(link.offset)));
        readers.spawn(read_stream(link.conn, link.offset, tx, received[received.len() - 1].clone()));
        queues.push(rx);
    }
    let restored = super::rdb::import_files(&rdbs, target, 8, 256, json).await;
    for rdb in &rdbs {
        let _ = std::fs::remove_file(rdb);
    }
    restored?;

    let mut appliers = JoinSet::new();
    for (index, (rx, done)) in queues.into_iter().zip(&applied).enumerate() {
        let conn = Conn::connect(target).await?;
        appliers.spawn(apply_stream(conn, rx, done.clone(), counters.clone(), stopped.clone(), index));
    }
    let mut progress = Progress::new("sync", None, json);
    let mut tick = tokio::time::interval(TICK);
    let mut stop = std::pin::pin!(stop);
    let mut stopping = false;
    loop {
        tokio::select! {
            _ = &mut stop, if !stopping => {
                stopping = true;
                let mut ends = Vec::new();
                for source in sources {
                    ends.push(master_offset(source).await?);
                }
                let _ = stop_tx.send(Some(ends));
            }
            read = readers.join_next(), if !readers.is_empty() => {
                if let Some(read) = read {
                    read??;
                }
            }
            done = appliers.join_next() => match done {
                Some(result) => result??,
                None => break,
            },
            _ = tick.tick() => progress.update(
                counters.commands.load(Ordering::Relaxed),
                counters.bytes.load(Ordering::Relaxed),
                &[("lag_bytes", lag(&received, &applied))],
            )?,
        }
    }
    // What the streams carried after the cut-over's offsets (the primaries' pings) is not lag.
    let ends: Vec<Arc<AtomicU64>> =
        stopped.borrow().iter().flatten().map(|&end| Arc::new(AtomicU64::new(end))).collect();
    progress.finish(
        counters.commands.load(Ordering::Relaxed),
        counters.bytes.load(Ordering::Relaxed),
        &[("lag_bytes", lag(&ends, &applied))],
    )
}

/// Bytes of the streams up to `until` (each stream's offset) not yet applied.
fn lag(until: &[Arc<AtomicU64>], applied: &[Arc<AtomicU64>]) -> u64 {
    until.iter().zip(applied).map(|(r, a)| r.load(Ordering::Relaxed).saturating_sub(a.load(Ordering::Relaxed))).sum()
}

/// `PSYNC ? -1` on `source`: its full resync's RDB in a temp file, and the link after it.
async fn resync(source: &Endpoint, index: usize) -> anyhow::Result<Link> {
    let mut conn = Conn::connect(source).await?;
    let addr = conn.addr().to_string();
    // capa eof: a diskless primary may send the RDB with an end mark; psync2: its replid form.
    conn.queue(&[b"REPLCONF", b"capa", b"eof", b"capa", b"psync2"]);
    if let BytesFrame::Error(message) = conn.reply().await? {
        return Err(PsyncRefused { addr, message: format!("REPLCONF: {message}") }.into());
    }
    conn.queue(&[b"PSYNC", b"?", b"-1"]);
    let line = conn.read_line().await?;
    let line = String::from_utf8_lossy(&line).into_owned();
    let Some(resync) = line.strip_prefix("+FULLRESYNC ") else {
        let message = line.strip_prefix('-').unwrap_or(&line).to_string();
        return Err(PsyncRefused { addr, message }.into());
    };
    let offset: u64 = resync
        .split(' ')
        .nth(1)
        .and_then(|o| o.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("{addr}: a FULLRESYNC without an offset: {line}"))?;
    let rdb = std::env::temp_dir().join(format!("memlog-import-{}-{index}.rdb", std::process::id()));
    let bytes = receive_rdb(&mut conn, &rdb).await.inspect_err(|_| {
        let _ = std::fs::remove_file(&rdb);
    })?;
    tracing::info!(source = %addr, offset, bytes, "full resync received");
    // A diskless primary starts the stream once the replica acknowledged the RDB.
    conn.queue(&[b"REPLCONF", b"ACK", offset.to_string().as_bytes()]);
    conn.flush().await?;
    Ok(Link { conn, offset, rdb })
}

/// The RDB after `+FULLRESYNC` (`$<len>` then that many bytes, or `$EOF:<mark>` then the
/// bytes up to the mark), written to `path`; returns its length.
async fn receive_rdb(conn: &mut Conn, path: &std::path::Path) -> anyhow::Result<u64> {
    let addr = conn.addr().to_string();
    let header = conn.read_line().await?;
    let header = String::from_utf8_lossy(&header).into_owned();
    let mut file = tokio::fs::File::create(path).await?;
    let written = if let Some(mark) = header.strip_prefix("$EOF:") {
        let mark = mark.as_bytes().to_vec();
        anyhow::ensure!(mark.len() == EOF_MARK_LEN, "{addr}: an RDB end mark of {} bytes: {header}", mark.len());
        // The mark ends the payload; nothing follows it until the ACK. Written with a lag of
        // the mark's length, so the mark itself never reaches the file.
        let mut held = Vec::new();
        let mut written = 0u64;
        loop {
            let chunk = conn.read_some(1 << 20).await?;
            held.extend_from_slice(&chunk);
            if held.ends_with(&mark) {
                held.truncate(held.len() - EOF_MARK_LEN);
                file.write_all(&held).await?;
                break written + held.len() as u64;
            }
            if held.len() > EOF_MARK_LEN {
                let out = held.len() - EOF_MARK_LEN;
                file.write_all(&held[..out]).await?;
                written += out as u64;
                held.drain(..out);
            }
        }
    } else {
        let len: u64 = header
            .strip_prefix('$')
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("{addr}: expected the RDB's length, got {header:?}"))?;
        let mut left = len;
        while left > 0 {
            let chunk = conn.read_some(usize::try_from(left.min(1 << 20)).unwrap_or(1 << 20)).await?;
            file.write_all(&chunk).await?;
            left -= chunk.len() as u64;
        }
        len
    };
    file.sync_all().await?;
    Ok(written)
}

/// A command of the stream and the offset just after it.
type Streamed = (Vec<Bytes>, u64);

/// Reads the stream into `queue`, acknowledging the offset once a second and when asked.
async fn read_stream(
    mut conn: Conn,
    mut offset: u64,
    queue: mpsc::Sender<Streamed>,
    received: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    let mut ack = tokio::time::interval(ACK_EVERY);
    loop {
        let frame = tokio::select! {
            frame = conn.read_sized_frame() => frame,
            _ = ack.tick() => {
                conn.queue(&[b"REPLCONF", b"ACK", offset.to_string().as_bytes()]);
                conn.flush().await?;
                continue;
            }
        };
        let (frame, len) = match frame {
            Ok(read) => read,
            // The appliers are gone (the import ended): so is the need for the stream.
            Err(ConnError::Closed { .. }) if queue.is_closed() => return Ok(()),
            Err(e) => return Err(anyhow::anyhow!("the replication link broke: {e}")),
        };
        offset += len as u64;
        received.store(offset, Ordering::Relaxed);
        let BytesFrame::Array(items) = frame else {
            anyhow::bail!("{}: the replication stream sent {frame:?}, not a command", conn.addr());
        };
        let args: Vec<Bytes> = items
            .into_iter()
            .map(|item| match item {
                BytesFrame::BulkString(b) | BytesFrame::SimpleString(b) => Ok(b),
                other => Err(anyhow::anyhow!("a command argument {other:?}")),
            })
            .collect::<anyhow::Result<_>>()?;
        if args.len() >= 2 && args[0].eq_ignore_ascii_case(b"REPLCONF") && args[1].eq_ignore_ascii_case(b"GETACK") {
            conn.queue(&[b"REPLCONF", b"ACK", offset.to_string().as_bytes()]);
            conn.flush().await?;
        }
        if queue.send((args, offset)).await.is_err() {
            return Ok(());
        }
    }
}

/// Sends one primary's stream to memlog in order, pipelined; every reply is checked. Ends once
/// the cut-over's offset of this primary (`stopped[index]`) is applied.
async fn apply_stream(
    mut conn: Conn,
    mut queue: mpsc::Receiver<Streamed>,
    applied: Arc<AtomicU64>,
    counters: Arc<Counters>,
    mut stopped: watch::Receiver<Option<Vec<u64>>>,
    index: usize,
) -> anyhow::Result<()> {
    let mut batch = Vec::with_capacity(PIPELINE);
    let mut db = 0u64;
    loop {
        let end = stopped.borrow().as_ref().map(|ends| ends[index]);
        if end.is_some_and(|end| applied.load(Ordering::Relaxed) >= end) {
            return Ok(());
        }
        tokio::select! {
            n = queue.recv_many(&mut batch, PIPELINE) => if n == 0 {
                anyhow::bail!("the replication link ended before the cut-over");
            },
            _ = stopped.changed() => continue,
        }
        let mut sent = Vec::with_capacity(batch.len());
        let mut last_offset = applied.load(Ordering::Relaxed);
        for (args, offset) in batch.drain(..) {
            last_offset = offset;
            let name = args[0].to_ascii_uppercase();
            match name.as_slice() {
                // The link's own traffic, and transaction brackets: the commands inside are sent
                // one by one (they may span hash slots, which a memlog transaction may not).
                b"PING" | b"REPLCONF" | b"MULTI" | b"EXEC" => continue,
                b"SELECT" => {
                    db = std::str::from_utf8(args.get(1).map_or(&b""[..], |a| a))
                        .ok()
                        .and_then(|d| d.parse().ok())
                        .unwrap_or(u64::MAX);
                    continue;
                }
                _ => {}
            }
            if db != 0 {
                anyhow::bail!(
                    "the source wrote to database {db} ({}); memlog serves database 0 only",
                    String::from_utf8_lossy(&args[0])
                );
            }
            let refs: Vec<&[u8]> = args.iter().map(|a| &a[..]).collect();
            conn.queue(&refs);
            sent.push(args);
        }
        conn.flush().await?;
        for args in &sent {
            let reply = conn.reply().await?;
            if let BytesFrame::Error(message) = reply {
                let shown: Vec<String> =
                    args.iter().take(4).map(|a| format!("{:?}", String::from_utf8_lossy(a))).collect();
                anyhow::bail!(
                    "memlog refused a write of the source's stream ({}): {message}; --mode notifications copies keys value by value instead",
                    shown.join(" ")
                );
            }
            counters.bytes.fetch_add(args.iter().map(|a| a.len() as u64).sum(), Ordering::Relaxed);
        }
        counters.commands.fetch_add(sent.len() as u64, Ordering::Relaxed);
        applied.store(last_offset, Ordering::Relaxed);
    }
}

/// The primary's `master_repl_offset` now: everything it ran before, the stream reaches by then.
async fn master_offset(source: &Endpoint) -> anyhow::Result<u64> {
    let mut conn = Conn::connect(source).await?;
    let BytesFrame::BulkString(info) = conn.call(&[b"INFO", b"replication"]).await? else {
        anyhow::bail!("{}: INFO replication is not a bulk string", conn.addr());
    };
    String::from_utf8_lossy(&info)
        .lines()
        .find_map(|l| l.strip_prefix("master_repl_offset:"))
        .and_then(|o| o.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("{}: INFO replication has no master_repl_offset", conn.addr()))
}

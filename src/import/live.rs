//! `memlog import live SOURCE_URL --to URL`: copies a running Redis (or ElastiCache) into
//! memlog while it keeps taking writes, with only the commands ElastiCache allows: no SYNC,
//! PSYNC or CONFIG. Per source primary, a [`Feed`] subscribes to keyevent notifications first
//! (and probes that every needed class is on), then a reader SCANs the node and sends each
//! key's `DUMP` and `PTTL` to a writer that `RESTORE`s it into memlog. Between SCAN pages, and
//! after the pass for as long as the import runs, the reader re-reads the keys the feed marked
//! changed: a key gone from the source is deleted in memlog. One reader and one writer per node,
//! in order, so a key's later read always lands after its earlier one: memlog converges to the
//! source's latest state. On SIGINT/SIGTERM (the cut-over) the feed catches up with the source,
//! every pending key is copied, and the import exits 0.
//!
//! Where the source allows PSYNC, the default (`--mode auto`) follows it as a replica
//! instead (`replication.rs`).

use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use redis_protocol::resp2::types::BytesFrame;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use super::conn::Conn;
use super::feed::{Feed, PROBE_PREFIX};
use super::progress::{Progress, Total};
use super::rdb::now_ms;
use super::replication;
use super::source::{scan_page, Nodes};
use super::{show, SourceArgs, TargetArgs};

/// Keys per SCAN page, and at most this many changed keys re-read between two pages.
const BATCH: usize = 500;
/// How often an idle import checks that its feeds still follow the source.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// How often progress is reported.
const TICK: Duration = Duration::from_millis(250);

/// How a live import follows the source.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Replication where the source allows PSYNC, else keyspace notifications.
    Auto,
    /// As a replica (PSYNC): the source's RDB, then every write it runs, in its order.
    Replication,
    /// SCAN/DUMP/PTTL plus keyspace notifications: needs no SYNC, PSYNC or CONFIG (ElastiCache).
    Notifications,
}

#[derive(clap::Args)]
pub struct LiveArgs {
    #[command(flatten)]
    source: SourceArgs,
    #[command(flatten)]
    target: TargetArgs,
    /// How the source is followed.
    #[arg(long, value_enum, default_value_t = Mode::Auto)]
    mode: Mode,
    /// Progress as JSON lines on stdout (for scripts) instead of progress bars.
    #[arg(long)]
    json: bool,
}

/// A key read from the source: its absolute expiry in Unix ms (0 = none) and payload, or gone.
type KeyState = (Bytes, Option<(i64, Bytes)>);

/// Where a batch comes from: the pass (the last batch of a node's pass says so) or the feed.
#[derive(Clone, Copy, PartialEq)]
enum Origin {
    Pass,
    LastOfPass,
    Change,
}

#[derive(Default)]
struct Counters {
    pass_keys: AtomicU64,
    pass_bytes: AtomicU64,
    recopied: AtomicU64,
    deleted: AtomicU64,
    nodes_passed: AtomicUsize,
}

pub async fn run(args: LiveArgs, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let seed = args.source.endpoint()?;
    let source = if args.source.cluster { Nodes::cluster(seed).await? } else { Nodes::single(seed) };
    let target = args.target.endpoint()?;
    if args.mode != Mode::Notifications {
        match replication::resync_all(&source.endpoints).await {
            Ok(links) => return replication::follow(links, &source.endpoints, &target, args.json, shutdown).await,
            Err(e) if args.mode == Mode::Auto && e.downcast_ref::<replication::PsyncRefused>().is_some() => {
                tracing::warn!("{e:#}: following the source by keyspace notifications instead");
            }
            Err(e) => return Err(e),
        }
    }
    // Every node subscribed and probed before anything is written to memlog.
    let mut readers = Vec::new();
    let mut total_keys = 0;
    for (index, endpoint) in source.endpoints.iter().enumerate() {
        let mut conn = Conn::connect(endpoint).await?;
        refuse_newer_rdb(&mut conn).await?;
        let feed = Feed::subscribe(endpoint).await?;
        feed.probe(&mut conn, &scratch_key(&source, index)).await?;
        total_keys += match conn.call(&[b"DBSIZE"]).await? {
            BytesFrame::Integer(n) => n.max(0) as u64,
            other => anyhow::bail!("{}: DBSIZE: {other:?}", conn.addr()),
        };
        readers.push((conn, feed));
    }
    let mut writers = Vec::new();
    for _ in &readers {
        writers.push(Conn::connect(&target).await?);
    }

    let counters = Arc::new(Counters::default());
    let (stop_tx, stop) = watch::channel(false);
    let mut lags = Vec::new();
    let mut workers = JoinSet::new();
    for ((conn, feed), writer) in readers.into_iter().zip(writers) {
        let feed = Arc::new(feed);
        lags.push(feed.clone());
        let (tx, rx) = mpsc::channel(4);
        let reader = read_node(conn, feed, tx, stop.clone());
        let writer = write_node(writer, rx, counters.clone());
        workers.spawn(async move { tokio::try_join!(reader, writer).map(|_| ()) });
    }

    let nodes = source.endpoints.len();
    let mut progress = Progress::new("copy", Some(Total::Keys(total_keys)), args.json);
    let mut syncing = false;
    let mut stopping = false;
    let mut shutdown = std::pin::pin!(shutdown);
    let mut tick = tokio::time::interval(TICK);
    loop {
        tokio::select! {
            _ = &mut shutdown, if !stopping => {
                stopping = true;
                let _ = stop_tx.send(true);
            }
            done = workers.join_next() => match done {
                Some(result) => result??,
                None => break,
            },
            _ = tick.tick() => {
                let (lag_keys, lag_ms) = lag(&lags);
                let extra = report_extra(&counters, lag_keys, lag_ms);
                if !syncing && counters.nodes_passed.load(Ordering::Relaxed) == nodes {
                    syncing = true;
                    let (keys, bytes) = pass_totals(&counters);
                    progress.finish(keys, bytes, &extra)?;
                    progress = Progress::new("sync", None, args.json);
                }
                let recopied = counters.recopied.load(Ordering::Relaxed);
                if syncing {
                    progress.update(recopied, 0, &extra)?;
                } else {
                    let (keys, bytes) = pass_totals(&counters);
                    progress.update(keys, bytes, &extra)?;
                }
            }
        }
    }
    // Every worker ended without error: only a stop after the pass does that, drained.
    let (lag_keys, lag_ms) = lag(&lags);
    let extra = report_extra(&counters, lag_keys, lag_ms);
    if !syncing {
        let (keys, bytes) = pass_totals(&counters);
        progress.finish(keys, bytes, &extra)?;
        progress = Progress::new("sync", None, args.json);
    }
    progress.finish(counters.recopied.load(Ordering::Relaxed), 0, &extra)
}

fn pass_totals(counters: &Counters) -> (u64, u64) {
    (counters.pass_keys.load(Ordering::Relaxed), counters.pass_bytes.load(Ordering::Relaxed))
}

fn report_extra(counters: &Counters, lag_keys: u64, lag_ms: u64) -> [(&'static str, u64); 4] {
    [
        ("recopied", counters.recopied.load(Ordering::Relaxed)),
        ("deleted", counters.deleted.load(Ordering::Relaxed)),
        ("lag_keys", lag_keys),
        ("lag_ms", lag_ms),
    ]
}

/// Keys changed at the sources and not yet re-read, and the age of the oldest such change.
fn lag(feeds: &[Arc<Feed>]) -> (u64, u64) {
    let mut keys = 0;
    let mut oldest = Duration::ZERO;
    for feed in feeds {
        let (n, age) = feed.lag();
        keys += n as u64;
        oldest = oldest.max(age);
    }
    (keys, u64::try_from(oldest.as_millis()).unwrap_or(u64::MAX))
}

/// Redis 7.2+ (and Valkey) write DUMP payloads of RDB version 11, which the Redis 7.0 behind
/// memlog refuses: say so before anything is copied (docs: README.md, "Importing data").
async fn refuse_newer_rdb(conn: &mut Conn) -> anyhow::Result<()> {
    let BytesFrame::BulkString(info) = conn.call(&[b"INFO", b"server"]).await? else {
        anyhow::bail!("{}: INFO server is not a bulk string", conn.addr());
    };
    let info = String::from_utf8_lossy(&info);
    let version = info.lines().find_map(|l| l.strip_prefix("redis_version:")).unwrap_or("").trim();
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if (major, minor) >= (7, 2) {
        anyhow::bail!(
            "{} runs Redis {version}: its DUMP payloads (RDB version 11) are refused by the Redis 7.0 behind memlog; \
             live import needs a source on Redis 7.0 or older",
            conn.addr()
        );
    }
    Ok(())
}

/// A scratch key that hashes to node `index` (any key for a single node).
fn scratch_key(source: &Nodes, index: usize) -> Vec<u8> {
    let key = |n: u32| [PROBE_PREFIX, format!("{{{n}}}").as_bytes()].concat();
    (0..).map(key).find(|k| source.node_of(k) == index).expect("every node owns a slot")
}

/// One source node's reader: the SCAN pass with changed keys re-read between pages, then the
/// changed keys as they come, until stopped.
async fn read_node(
    mut conn: Conn,
    feed: Arc<Feed>,
    tx: mpsc::Sender<(Origin, Vec<KeyState>)>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let send = |batch| async { tx.send(batch).await.map_err(|_| anyhow::anyhow!("the connection to memlog ended")) };
    let mut cursor = Bytes::from_static(b"0");
    loop {
        if *stop.borrow() {
            anyhow::bail!(
                "{}: stopped before the first pass was complete: memlog holds part of the source only",
                conn.addr()
            );
        }
        let reply = conn.call(&[b"SCAN", &cursor, b"COUNT", BATCH.to_string().as_bytes()]).await?;
        let (next, keys) = scan_page(conn.addr(), reply)?;
        let keys: Vec<Bytes> = keys.into_iter().filter(|k| !k.starts_with(PROBE_PREFIX)).collect();
        let states = read_keys(&mut conn, &keys).await?;
        let last = &next[..] == b"0";
        send((if last { Origin::LastOfPass } else { Origin::Pass }, states)).await?;
        let changed = feed.take(BATCH)?;
        if !changed.is_empty() {
            send((Origin::Change, read_keys(&mut conn, &changed).await?)).await?;
        }
        if last {
            break;
        }
        cursor = next;
    }
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    loop {
        let changed = feed.take(BATCH)?;
        if !changed.is_empty() {
            send((Origin::Change, read_keys(&mut conn, &changed).await?)).await?;
            continue;
        }
        tokio::select! {
            _ = feed.changed() => {}
            _ = heartbeat.tick() => feed.catch_up(&mut conn).await?,
            _ = stop.changed() => {
                // Cut-over: everything the source ran before now is in the feed; copy it all.
                feed.catch_up(&mut conn).await?;
                loop {
                    let changed = feed.take(BATCH)?;
                    if changed.is_empty() {
                        feed.close();
                        return Ok(());
                    }
                    send((Origin::Change, read_keys(&mut conn, &changed).await?)).await?;
                }
            }
        }
    }
}

/// Each key's DUMP and PTTL, pipelined. The TTL is made absolute at the moment its reply is
/// read, so the time until the writer's RESTORE (seconds, for a busy memlog) does not lengthen
/// it: a relative TTL restored later expires that much later than on the source.
async fn read_keys(conn: &mut Conn, keys: &[Bytes]) -> anyhow::Result<Vec<KeyState>> {
    for key in keys {
        conn.queue(&[b"DUMP", key]);
        conn.queue(&[b"PTTL", key]);
    }
    let mut states = Vec::with_capacity(keys.len());
    for key in keys {
        let dump = conn.reply().await?;
        let dump = conn.refused_if_error(b"DUMP", dump).map_err(|e| anyhow::anyhow!("key {}: {e}", show(key)))?;
        let ttl = conn.reply().await?;
        let state = match (dump, ttl) {
            (BytesFrame::BulkString(payload), BytesFrame::Integer(ttl)) if ttl != -2 => {
                // PTTL -1: no expiry (RESTORE's 0).
                Some((if ttl == -1 { 0 } else { now_ms() + ttl }, payload))
            }
            (BytesFrame::Null | BytesFrame::BulkString(_), BytesFrame::Integer(_)) => None,
            (dump, ttl) => anyhow::bail!("{}: key {}: DUMP {dump:?}, PTTL {ttl:?}", conn.addr(), show(key)),
        };
        states.push((key.clone(), state));
    }
    Ok(states)
}

/// One source node's writer: each batch RESTOREd (or DELeted) in memlog, in the order read.
async fn write_node(
    mut conn: Conn,
    mut batches: mpsc::Receiver<(Origin, Vec<KeyState>)>,
    counters: Arc<Counters>,
) -> anyhow::Result<()> {
    while let Some((origin, batch)) = batches.recv().await {
        for (key, state) in &batch {
            match state {
                Some((expire_at, payload)) => {
                    // An expiry already past: RESTORE … ABSTTL creates nothing, as the key is gone.
                    conn.queue(&[b"RESTORE", key, expire_at.to_string().as_bytes(), payload, b"REPLACE", b"ABSTTL"]);
                }
                None => conn.queue(&[b"DEL", key]),
            }
        }
        conn.flush().await?;
        for (key, _) in &batch {
            let reply = conn.reply().await?;
            conn.refused_if_error(b"RESTORE", reply).map_err(|e| anyhow::anyhow!("key {}: {e}", show(key)))?;
        }
        let bytes: u64 = batch.iter().filter_map(|(_, s)| s.as_ref()).map(|(_, p)| p.len() as u64).sum();
        let deleted = batch.iter().filter(|(_, s)| s.is_none()).count() as u64;
        counters.deleted.fetch_add(deleted, Ordering::Relaxed);
        if origin == Origin::Change {
            counters.recopied.fetch_add(batch.len() as u64, Ordering::Relaxed);
        } else {
            counters.pass_keys.fetch_add(batch.len() as u64 - deleted, Ordering::Relaxed);
            counters.pass_bytes.fetch_add(bytes, Ordering::Relaxed);
        }
        if origin == Origin::LastOfPass {
            counters.nodes_passed.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(())
}

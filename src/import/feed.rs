//! Change capture on one source node without SYNC, PSYNC or CONFIG: a connection subscribed to
//! keyevent notifications (`__keyevent@0__:*`, which names the key in the message, so any key
//! bytes pass) collecting the keys changed since they were last copied, deduplicated, in the
//! order of their first change. A barrier (a PUBLISH on our own channel, delivered after every
//! notification of the writes the node ran before it) tells when the feed has caught up with
//! the node. The probe writes one command of each event class on a scratch key and reports the
//! classes whose notification never came: CONFIG GET may be refused (ElastiCache), this is not.

use std::collections::{BTreeSet, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use redis_protocol::resp2::types::BytesFrame;
use tokio::sync::{watch, Notify};

use super::conn::{Conn, REPLY_TIMEOUT};
use super::endpoint::Endpoint;

const EVENTS: &[u8] = b"__keyevent@0__:";
const PATTERN: &[u8] = b"__keyevent@0__:*";
/// Keys under this prefix are the probe's scratch keys: never copied.
pub const PROBE_PREFIX: &[u8] = b"__memlog:probe:";

/// The notification classes a live import needs (`notify-keyspace-events`), each with the
/// command the probe runs and the event that command must raise. Evictions (`e`) cannot be
/// provoked by a probe; `A` includes them, and the README says to set it.
const CLASSES: &[(char, &str, &str)] = &[
    ('$', "string", "set"),
    ('g', "generic", "del"),
    ('l', "list", "rpush"),
    ('s', "set", "sadd"),
    ('h', "hash", "hset"),
    ('z', "sorted set", "zadd"),
    ('t', "stream", "xadd"),
    ('x', "expired", "expired"),
];

#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error(
        "{addr} publishes no keyevent notification at all: set the parameter notify-keyspace-events to \"KEA\" \
         (ElastiCache: in a custom parameter group; self-managed Redis: in redis.conf). A live import cannot see \
         changes without it"
    )]
    Off { addr: String },
    #[error(
        "{addr} publishes no notification for {missing}: set the parameter notify-keyspace-events to \"KEA\" \
         (its value now lacks {letters}; ElastiCache: in a custom parameter group). Changes of those kinds would \
         be missed"
    )]
    Missing { addr: String, missing: String, letters: String },
    #[error("{addr}: lost the change feed ({reason}); changes since then may be missed: start the import again")]
    Lost { addr: String, reason: String },
    #[error("{addr}: the change feed did not catch up within {REPLY_TIMEOUT:?} (barrier {barrier} not seen)")]
    Behind { addr: String, barrier: u64 },
}

/// Keys changed at the source and not yet copied since.
#[derive(Default)]
struct Pending {
    order: VecDeque<(Bytes, Instant)>,
    keys: HashSet<Bytes>,
    /// Events seen on probe keys (the probe's evidence).
    probe_events: BTreeSet<String>,
    /// Why the subscription ended, once it has.
    lost: Option<String>,
}

pub struct Feed {
    addr: String,
    pending: Arc<Mutex<Pending>>,
    changed: Arc<Notify>,
    barrier_seen: watch::Receiver<u64>,
    barrier_channel: Bytes,
    next_barrier: AtomicU64,
    subscriber: tokio::task::JoinHandle<()>,
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.subscriber.abort();
    }
}

impl Feed {
    /// Subscribes to the node's keyevent notifications; every change after this returns is seen.
    pub async fn subscribe(endpoint: &Endpoint) -> anyhow::Result<Feed> {
        let mut conn = Conn::connect(endpoint).await?;
        let addr = conn.addr().to_string();
        let barrier_channel = Bytes::from(format!("__memlog:import:barrier:{}:{}", std::process::id(), addr));
        conn.queue(&[b"PSUBSCRIBE", PATTERN]);
        conn.queue(&[b"SUBSCRIBE", &barrier_channel]);
        for command in ["PSUBSCRIBE", "SUBSCRIBE"] {
            match conn.reply().await? {
                BytesFrame::Array(_) => {}
                other => {
                    conn.refused_if_error(command.as_bytes(), other)?;
                    anyhow::bail!("{addr}: unexpected reply to {command}");
                }
            }
        }
        let pending = Arc::new(Mutex::new(Pending::default()));
        let changed = Arc::new(Notify::new());
        let (seen_tx, barrier_seen) = watch::channel(0);
        let subscriber = tokio::spawn(listen(conn, pending.clone(), changed.clone(), seen_tx, barrier_channel.clone()));
        Ok(Feed { addr, pending, changed, barrier_seen, barrier_channel, next_barrier: AtomicU64::new(1), subscriber })
    }

    fn pending(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Returns once the feed holds every change the node made before this call: a PUBLISH on
    /// `conn` (the same node) is delivered after all earlier notifications.
    pub async fn catch_up(&self, conn: &mut Conn) -> anyhow::Result<()> {
        let barrier = self.next_barrier.fetch_add(1, Ordering::Relaxed);
        conn.call(&[b"PUBLISH", &self.barrier_channel, barrier.to_string().as_bytes()]).await?;
        let behind = || FeedError::Behind { addr: self.addr.clone(), barrier };
        let mut seen = self.barrier_seen.clone();
        tokio::time::timeout(REPLY_TIMEOUT, seen.wait_for(|&n| n >= barrier))
            .await
            .map_err(|_| behind())?
            .map_err(|_| self.lost())?;
        Ok(())
    }

    /// Writes one command of each needed class on `scratch` (a key of this node), then deletes
    /// it; fails naming the classes whose notification did not come.
    pub async fn probe(&self, conn: &mut Conn, scratch: &[u8]) -> anyhow::Result<()> {
        let commands: [&[&[u8]]; 13] = [
            &[b"SET", scratch, b"v"],
            &[b"DEL", scratch],
            &[b"RPUSH", scratch, b"v"],
            &[b"DEL", scratch],
            &[b"SADD", scratch, b"v"],
            &[b"DEL", scratch],
            &[b"HSET", scratch, b"f", b"v"],
            &[b"DEL", scratch],
            &[b"ZADD", scratch, b"1", b"v"],
            &[b"DEL", scratch],
            &[b"XADD", scratch, b"*", b"f", b"v"],
            &[b"DEL", scratch],
            &[b"SET", scratch, b"v", b"PX", b"1"],
        ];
        for command in commands {
            conn.call(command).await?;
        }
        // Reading the key after its 1 ms expiry deletes it and raises "expired".
        tokio::time::sleep(Duration::from_millis(5)).await;
        conn.call(&[b"GET", scratch]).await?;
        conn.call(&[b"DEL", scratch]).await?;
        self.catch_up(conn).await?;
        let seen = std::mem::take(&mut self.pending().probe_events);
        if seen.is_empty() {
            return Err(FeedError::Off { addr: self.addr.clone() }.into());
        }
        let missing: Vec<_> = CLASSES.iter().filter(|(_, _, event)| !seen.contains(*event)).collect();
        if !missing.is_empty() {
            return Err(FeedError::Missing {
                addr: self.addr.clone(),
                missing: missing.iter().map(|(_, name, _)| *name).collect::<Vec<_>>().join(", "),
                letters: missing.iter().map(|(letter, _, _)| *letter).collect(),
            }
            .into());
        }
        Ok(())
    }

    /// Up to `max` changed keys, oldest change first; each is removed, so a change after this
    /// call marks it again.
    pub fn take(&self, max: usize) -> anyhow::Result<Vec<Bytes>> {
        let mut pending = self.pending();
        if let Some(reason) = &pending.lost {
            return Err(FeedError::Lost { addr: self.addr.clone(), reason: reason.clone() }.into());
        }
        let n = max.min(pending.order.len());
        let keys: Vec<Bytes> = pending.order.drain(..n).map(|(key, _)| key).collect();
        for key in &keys {
            pending.keys.remove(key);
        }
        Ok(keys)
    }

    /// Stops collecting changes: at the cut-over, once everything before it was copied. What the
    /// source does after it (its own expiries: memlog holds the same expiry times) is not lag.
    pub fn close(&self) {
        self.subscriber.abort();
    }

    /// Keys waiting to be copied, and how long the oldest of them has waited.
    pub fn lag(&self) -> (usize, Duration) {
        let pending = self.pending();
        (pending.order.len(), pending.order.front().map_or(Duration::ZERO, |(_, at)| at.elapsed()))
    }

    /// Resolves when a key is marked changed (at once if one was since the last call).
    pub async fn changed(&self) {
        self.changed.notified().await
    }

    fn lost(&self) -> FeedError {
        let reason = self.pending().lost.clone().unwrap_or_else(|| "the subscriber stopped".into());
        FeedError::Lost { addr: self.addr.clone(), reason }
    }
}

/// The subscribed connection's reader: runs until the connection fails.
async fn listen(
    mut conn: Conn,
    pending: Arc<Mutex<Pending>>,
    changed: Arc<Notify>,
    barrier_seen: watch::Sender<u64>,
    barrier_channel: Bytes,
) {
    let reason = loop {
        let frame = match conn.pushed().await {
            Ok(frame) => frame,
            Err(e) => break e.to_string(),
        };
        let BytesFrame::Array(parts) = frame else { break format!("unexpected frame {frame:?}") };
        let text: Vec<&[u8]> = parts
            .iter()
            .map(|p| match p {
                BytesFrame::BulkString(b) => &b[..],
                _ => &[][..],
            })
            .collect();
        match text[..] {
            [b"pmessage", _, channel, key] => {
                let event = channel.strip_prefix(EVENTS).unwrap_or(channel);
                let mut pending = pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                if key.starts_with(PROBE_PREFIX) {
                    pending.probe_events.insert(String::from_utf8_lossy(event).into_owned());
                    continue;
                }
                let key = Bytes::copy_from_slice(key);
                if pending.keys.insert(key.clone()) {
                    pending.order.push_back((key, Instant::now()));
                }
                drop(pending);
                changed.notify_one();
            }
            [b"message", channel, n] if channel == &barrier_channel[..] => {
                if let Some(n) = std::str::from_utf8(n).ok().and_then(|n| n.parse().ok()) {
                    barrier_seen.send_replace(n);
                }
            }
            _ => {}
        }
    };
    pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).lost = Some(reason);
    changed.notify_one();
    // Dropping `barrier_seen` wakes a catch_up waiting on it, which then reports the loss.
}

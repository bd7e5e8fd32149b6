//! Keyspace notifications from the shards. While some subscription can receive them, one
//! dedicated connection per shard follows the shard's current primary with `PSUBSCRIBE
//! __key*__:*` and feeds every notification into the hub, which delivers it to whoever matches
//! locally, exactly once per subscription. A dropped connection is re-established (to the new
//! primary after a failover, noticed on reconnect or within `PRIMARY_CHECK`). Which events a
//! node publishes is its `notify-keyspace-events` parameter, part of the parameter group that
//! node preparation gives every node before it serves (`crate::prepare`). Notifications
//! published while a shard is not followed are lost, as they would be for a client of it.

use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{Hub, RelayReady};
use crate::backend::{AdminConn, AdminError};
use crate::resp::{array_items, bulk_bytes};

/// The one pattern the relay subscribes to on each shard: both notification families.
const RELAY_PATTERN: &[u8] = b"__key*__:*";
/// How often the relay checks whether its shard's primary changed.
const PRIMARY_CHECK: Duration = Duration::from_secs(1);
const MIN_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// `(channel, message)` of a `pmessage` frame.
fn pmessage(frame: &Bytes) -> Option<(Bytes, Bytes)> {
    let items = array_items(frame)?;
    let [kind, _pattern, channel, message] = items.as_slice() else { return None };
    if bulk_bytes(kind)?.as_ref() != b"pmessage" {
        return None;
    }
    Some((bulk_bytes(channel)?, bulk_bytes(message)?))
}

/// The running relay; dropping it stops following the shards.
pub(super) struct Relay {
    stop: CancellationToken,
    /// How many shards are followed right now.
    following: watch::Receiver<usize>,
    shards: usize,
}

impl Relay {
    pub(super) fn start(hub: Weak<Hub>, shards: usize) -> Relay {
        let stop = CancellationToken::new();
        let (tx, following) = watch::channel(0);
        let tx = Arc::new(tx);
        for shard in 0..shards {
            tokio::spawn(follow_shard(hub.clone(), shard, tx.clone(), stop.clone()));
        }
        Relay { stop, following, shards }
    }

    /// Resolves once every shard is followed, or after `timeout` (a shard that is down must
    /// not block SUBSCRIBE for good; its notifications resume when it is back).
    pub(super) fn ready(&self, timeout: Duration) -> RelayReady {
        let mut following = self.following.clone();
        let shards = self.shards;
        Box::pin(async move {
            let _ = tokio::time::timeout(timeout, following.wait_for(|&n| n >= shards)).await;
        })
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Counts a followed shard for as long as it lives.
struct Following(Arc<watch::Sender<usize>>);

impl Following {
    fn new(count: &Arc<watch::Sender<usize>>) -> Following {
        count.send_modify(|n| *n += 1);
        Following(count.clone())
    }
}

impl Drop for Following {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

/// Why one connection to a shard ended without an error.
enum Ended {
    ProxyGone,
    PrimaryChanged,
}

async fn follow_shard(hub: Weak<Hub>, shard: usize, count: Arc<watch::Sender<usize>>, stop: CancellationToken) {
    let mut backoff = MIN_BACKOFF;
    loop {
        let ended = tokio::select! {
            _ = stop.cancelled() => return,
            ended = follow_primary(&hub, shard, &count) => ended,
        };
        match ended {
            Ok(Ended::ProxyGone) => return,
            Ok(Ended::PrimaryChanged) => {
                backoff = MIN_BACKOFF;
                continue;
            }
            Err(e) => tracing::warn!(shard, "keyspace notification relay: {e}; reconnecting"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Follows `shard`'s current primary until the connection fails or the primary changes.
async fn follow_primary(hub: &Weak<Hub>, shard: usize, count: &Arc<watch::Sender<usize>>) -> Result<Ended, AdminError> {
    let Some((addr, timeout, access)) =
        hub.upgrade().map(|hub| (hub.shards[shard].primary(), hub.timeout, hub.access.clone()))
    else {
        return Ok(Ended::ProxyGone);
    };
    let mut conn = AdminConn::connect(&addr, timeout, &access).await?;
    let confirmation = conn.call(&[b"PSUBSCRIBE", RELAY_PATTERN]).await?;
    if array_items(&confirmation).is_none_or(|items| items.len() != 3) {
        return Err(AdminError::BadReply { addr });
    }
    let _following = Following::new(count);
    let mut check = tokio::time::interval(PRIMARY_CHECK);
    loop {
        tokio::select! {
            frame = conn.read_frame() => {
                let frame = frame?;
                let Some(hub) = hub.upgrade() else { return Ok(Ended::ProxyGone) };
                if let Some((channel, message)) = pmessage(&frame) {
                    hub.deliver_notification(&channel, &message);
                }
            }
            _ = check.tick() => {
                let Some(hub) = hub.upgrade() else { return Ok(Ended::ProxyGone) };
                if hub.shards[shard].primary() != addr {
                    tracing::info!(shard, old = %addr, "shard primary changed; following the new one");
                    return Ok(Ended::PrimaryChanged);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pmessages() {
        let frame = Bytes::from_static(
            b"*4\r\n$8\r\npmessage\r\n$10\r\n__key*__:*\r\n$16\r\n__keyspace@0__:k\r\n$3\r\nset\r\n",
        );
        let (channel, message) = pmessage(&frame).unwrap();
        assert_eq!((&channel[..], &message[..]), (&b"__keyspace@0__:k"[..], &b"set"[..]));
        assert!(pmessage(&Bytes::from_static(b"*3\r\n$10\r\npsubscribe\r\n$1\r\np\r\n:1\r\n")).is_none());
        assert!(pmessage(&Bytes::from_static(b"+OK\r\n")).is_none());
    }
}

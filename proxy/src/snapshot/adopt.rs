//! Adoption: memlog started in front of a Redis that already holds data (a sidecar on an
//! existing node). That data is in no journal entry, so the first rebuild of the node would lose
//! it; before the shard serves, it is made durable as a *baseline snapshot* at LSN 0 — the
//! node's RDB, fetched and verified as every snapshot is, recorded in the catalog — so a rebuild
//! loads the baseline and replays the journal on top (docs/adoption.md).
//!
//! What the journal cannot explain is refused rather than guessed at: a primary holding keys
//! without `__memlog:lsn` while the journal already holds writes, or one holding a prefix beyond
//! the journal's commit point. Keys that belong to other shards' slots are reported: they stay in
//! the node (and the baseline) but no client reaches them through this shard.

use std::time::Duration;

use journal_service::quorum::{ReadError, Reader};

use super::ShardSnapshots;
use crate::backend::{BackendConn, BackendOptions, NodeTarget};
use crate::keys::{parse_lsn, LSN_KEY};
use crate::resp::{array_items, bulk_payload, Proto};

/// How often a primary that does not answer yet is asked again.
const NODE_RETRY: Duration = Duration::from_millis(500);
/// Journal entries read at once while looking for a write.
const READ_CHUNK: u64 = 2048;
/// Keys of other shards named in the log, at most.
const EXAMPLES: usize = 10;

/// The way out named by every refusal.
const WAY_OUT: &str =
    "to keep the node's data, adopt it anew: start memlog on a new, empty journal and metadata store \
     (the journal's writes the node lacks are then lost); to keep the journal's data, discard the node's data \
     (FLUSHALL on the node, or start it empty) and memlog rebuilds it from the journal";

/// Why a shard is not served.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AdoptionError {
    #[error("shard {shard}: its primary {node} holds {keys} keys but no __memlog:lsn, while the shard's journal already holds writes: the journal does not explain that data, so the shard is refused; {WAY_OUT}")]
    Unexplained { shard: usize, node: String, keys: u64 },
    #[error("shard {shard}: its primary {node} holds the journal up to lsn {held}, beyond the journal's commit point {commit}: it was written through another journal, so the shard is refused; {WAY_OUT}")]
    Ahead { shard: usize, node: String, held: u64, commit: u64 },
    #[error("shard {shard}: its primary {node} holds {keys} keys that no journal holds; adopting them takes a baseline snapshot, and no [snapshot] table is configured: add one (`[snapshot]` with `dir = \"…\"`, a directory that outlives the Redis nodes) and start again")]
    NoSnapshotTable { shard: usize, node: String, keys: u64 },
    #[error("shard {shard}: {reason}")]
    Failed { shard: usize, reason: String },
}

impl AdoptionError {
    /// A verdict on the node's data (the shard is refused, the others serve), rather than a
    /// failure to reach a verdict or to adopt (which stops the start).
    pub(crate) fn refuses_the_shard(&self) -> bool {
        !matches!(self, AdoptionError::Failed { .. })
    }
}

/// What the primary holds, as far as adoption cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Holdings {
    /// Its `__memlog:lsn` (0: none).
    lsn: u64,
    /// Keys in every database (`INFO keyspace`): the baseline holds them all.
    keys: u64,
    /// Of them, keys in databases other than 0, which memlog serves in standalone mode only
    /// (in cluster mode `SELECT` is refused as by Redis Cluster).
    other_db_keys: u64,
}

/// What start-up must do about the data a shard's primary holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Nothing the journal does not explain: catch up and serve.
    Serve,
    /// Journal empty, node full: take the baseline first.
    Adopt,
    /// The node holds the baseline taken at an earlier start.
    AlreadyAdopted,
}

/// The decision, without I/O: `journal_has_writes` and `has_baseline` are only asked when the
/// node holds keys without an LSN.
fn verdict(
    shard: usize,
    node: &str,
    held: Holdings,
    commit: u64,
    journal_has_writes: bool,
    has_baseline: bool,
) -> Result<Verdict, AdoptionError> {
    if held.lsn > commit {
        return Err(AdoptionError::Ahead { shard, node: node.to_string(), held: held.lsn, commit });
    }
    if held.lsn > 0 || held.keys == 0 {
        return Ok(Verdict::Serve);
    }
    if journal_has_writes {
        return Err(AdoptionError::Unexplained { shard, node: node.to_string(), keys: held.keys });
    }
    Ok(if has_baseline { Verdict::AlreadyAdopted } else { Verdict::Adopt })
}

/// Checks what shard `shard`'s primary (`target`: it moves if the failover controller replaces
/// a primary found dead) holds against the journal (committed up to `commit`), and adopts its
/// data when the journal holds no write yet. Returns once the shard may be caught up and served
/// — true when the shard holds adopted data and no journal write yet (adopted now, or at a start
/// that ended before its first write), so its first entry must be journaled before it serves;
/// an error refuses the shard.
pub(crate) async fn settle(
    shard: usize,
    target: &NodeTarget,
    opts: &BackendOptions,
    commit: u64,
    journal: &Reader,
    snapshots: Option<&ShardSnapshots>,
    slots: &[(u16, u16)],
) -> Result<bool, AdoptionError> {
    let failed = |reason: String| AdoptionError::Failed { shard, reason };
    let (node, conn, held) = holdings(shard, target, opts).await;
    let node = node.as_str();
    let unexplained = held.lsn == 0 && held.keys > 0;
    let journal_has_writes = unexplained && has_writes(journal, commit).await.map_err(failed)?;
    let has_baseline = match snapshots {
        Some(snapshots) if unexplained => snapshots.has_baseline().await.map_err(|e| failed(e.to_string()))?,
        _ => false,
    };
    match verdict(shard, node, held, commit, journal_has_writes, has_baseline)? {
        Verdict::Serve => Ok(false),
        Verdict::AlreadyAdopted => {
            tracing::info!(shard, node, keys = held.keys, "the primary holds the data adopted at an earlier start");
            Ok(true)
        }
        Verdict::Adopt => {
            let Some(snapshots) = snapshots else {
                return Err(AdoptionError::NoSnapshotTable { shard, node: node.to_string(), keys: held.keys });
            };
            tracing::warn!(
                shard,
                node,
                keys = held.keys,
                "the primary holds data no journal holds: adopting it (a baseline snapshot at lsn 0) before the shard serves"
            );
            if held.other_db_keys > 0 && snapshots.serves_database_0_only() {
                tracing::warn!(
                    shard,
                    node,
                    keys = held.other_db_keys,
                    "the primary holds keys in databases other than 0: they are kept in the baseline but not served (memlog serves database 0 only, as Redis Cluster)"
                );
            }
            let others = if slots.iter().any(|&(lo, hi)| lo == 0 && usize::from(hi) == crate::router::SLOTS - 1) {
                0
            } else {
                report_other_shards_keys(shard, node, &conn, slots).await.map_err(failed)?
            };
            let adopted = snapshots.adopt(node, held.keys, others).await;
            adopted.map_err(|e| failed(format!("adopting {node}'s data failed: {e}")))?;
            Ok(true)
        }
    }
}

/// The primary's address, a connection to it, its `GET __memlog:lsn` and its keys (`INFO
/// keyspace`): asked again (of wherever the target then points) until it answers, as the
/// start-up catch-up waits for a primary that is not up yet or still loading its dataset.
async fn holdings(shard: usize, target: &NodeTarget, opts: &BackendOptions) -> (String, BackendConn, Holdings) {
    let mut attempt = 0u64;
    loop {
        let node = target.addr().to_string();
        let conn = BackendConn::spawn(&node, Proto::Resp2, opts.clone());
        let asked = async {
            let lsn = conn.call(&[&b"GET"[..], LSN_KEY]).await.map_err(|e| e.to_string())?;
            let lsn = parse_lsn(&lsn).ok_or_else(|| answer("GET __memlog:lsn", &lsn))?;
            let info = conn.call(&["INFO", "keyspace"]).await.map_err(|e| e.to_string())?;
            let (keys, other_db_keys) = keyspace_keys(&info).ok_or_else(|| answer("INFO keyspace", &info))?;
            Ok::<_, String>(Holdings { lsn, keys, other_db_keys })
        };
        match asked.await {
            Ok(held) => return (node, conn, held),
            Err(e) => {
                if attempt % 10 == 0 {
                    tracing::info!(shard, node, "waiting for the primary to say what it holds: {e}");
                }
                attempt += 1;
                tokio::time::sleep(NODE_RETRY).await;
            }
        }
    }
}

fn answer(what: &str, reply: &[u8]) -> String {
    format!("{what} answered {}", String::from_utf8_lossy(reply).trim())
}

/// The keys of every database and of those other than 0, from `INFO keyspace`'s bulk reply
/// (`db0:keys=12,expires=1,avg_ttl=0` lines; none when the node holds nothing).
pub(super) fn keyspace_keys(reply: &[u8]) -> Option<(u64, u64)> {
    let text = std::str::from_utf8(bulk_payload(reply)?).ok()?;
    let (mut all, mut others) = (0, 0);
    for line in text.lines().filter(|l| l.starts_with("db")) {
        let (db, fields) = line.split_once(':')?;
        let keys: u64 = fields.split(',').find_map(|f| f.strip_prefix("keys="))?.parse().ok()?;
        all += keys;
        if db != "db0" {
            others += keys;
        }
    }
    Some((all, others))
}

/// True when the journal holds an entry with a payload (a write) up to `commit`. Recoveries
/// append barriers, which carry none; a journal truncated below a snapshot held writes.
async fn has_writes(journal: &Reader, commit: u64) -> Result<bool, String> {
    let mut from = 1;
    while from <= commit {
        let to = commit.min(from + READ_CHUNK - 1);
        match journal.read(from, to).await {
            Ok(entries) if !entries.is_empty() => return Ok(true),
            Ok(_) => from = to + 1,
            Err(ReadError::Truncated { .. }) => return Ok(true),
            Err(e) => return Err(format!("cannot read the journal to see whether it holds writes: {e}")),
        }
    }
    Ok(false)
}

/// Logs the keys on `node` whose slots another shard owns and returns how many there are (the
/// adoption's events record the count, `memlog status` shows it): they stay in the node and the
/// baseline, but clients reach their slots through the shard owning them.
async fn report_other_shards_keys(
    shard: usize,
    node: &str,
    conn: &BackendConn,
    slots: &[(u16, u16)],
) -> Result<u64, String> {
    let owns = |key: &[u8]| {
        let slot = crate::router::key_slot(key);
        slots.iter().any(|&(lo, hi)| (lo..=hi).contains(&slot))
    };
    let (mut cursor, mut others, mut examples) = (b"0".to_vec(), 0u64, Vec::new());
    loop {
        let reply = conn.call(&[&b"SCAN"[..], &cursor, b"COUNT", b"1000"]).await.map_err(|e| e.to_string())?;
        let parts = array_items(&reply).ok_or_else(|| answer("SCAN", &reply))?;
        let next = parts.first().and_then(|c| bulk_payload(c)).ok_or_else(|| answer("SCAN", &reply))?.to_vec();
        let keys = parts.get(1).and_then(array_items).ok_or_else(|| answer("SCAN", &reply))?;
        for key in keys.iter().filter_map(|k| bulk_payload(k)).filter(|k| !owns(k) && *k != LSN_KEY) {
            others += 1;
            if examples.len() < EXAMPLES {
                examples.push(String::from_utf8_lossy(key).into_owned());
            }
        }
        if next == b"0" {
            break;
        }
        cursor = next;
    }
    if others > 0 {
        tracing::warn!(
            shard,
            node,
            keys = others,
            ?examples,
            "the primary holds keys whose slots other shards own: they are kept (in the node and the baseline) but not served through this shard; move them (MIGRATE, or memlog import) to reach them"
        );
    }
    Ok(others)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(lsn: u64, keys: u64) -> Holdings {
        Holdings { lsn, keys, other_db_keys: 0 }
    }

    #[test]
    fn only_an_empty_journal_adopts_and_only_once() {
        assert_eq!(verdict(0, "n", held(0, 10), 1, false, false).unwrap(), Verdict::Adopt);
        assert_eq!(verdict(0, "n", held(0, 10), 3, false, true).unwrap(), Verdict::AlreadyAdopted);
        assert_eq!(verdict(0, "n", held(0, 0), 5, true, true).unwrap(), Verdict::Serve, "an empty node is rebuilt");
        assert_eq!(verdict(0, "n", held(4, 10), 5, true, false).unwrap(), Verdict::Serve, "a node behind catches up");
    }

    #[test]
    fn data_the_journal_does_not_explain_is_refused_naming_the_shard_and_the_way_out() {
        let unexplained = verdict(2, "10.0.0.1:6379", held(0, 10), 9, true, false).unwrap_err().to_string();
        assert!(unexplained.starts_with("shard 2: its primary 10.0.0.1:6379 holds 10 keys"), "{unexplained}");
        assert!(unexplained.contains("adopt it anew") && unexplained.contains("discard the node's data"));
        let ahead = verdict(1, "n", held(12, 10), 9, true, false).unwrap_err().to_string();
        assert!(ahead.contains("lsn 12, beyond the journal's commit point 9") && ahead.contains("adopt it anew"));
    }

    #[test]
    fn keys_are_counted_in_every_database() {
        let info = "# Keyspace\r\ndb0:keys=19771,expires=3,avg_ttl=0\r\ndb5:keys=2,expires=0,avg_ttl=0\r\n";
        let reply = format!("${}\r\n{info}\r\n", info.len());
        assert_eq!(keyspace_keys(reply.as_bytes()), Some((19773, 2)));
        assert_eq!(keyspace_keys(b"$12\r\n# Keyspace\r\n\r\n"), Some((0, 0)));
        // Keys only in database 3: all of them in other databases.
        let info = "# Keyspace\r\ndb3:keys=4,expires=0,avg_ttl=0\r\n";
        let reply = format!("${}\r\n{info}\r\n", info.len());
        assert_eq!(keyspace_keys(reply.as_bytes()), Some((4, 4)));
        assert_eq!(keyspace_keys(b"-LOADING Redis is loading\r\n"), None);
    }
}

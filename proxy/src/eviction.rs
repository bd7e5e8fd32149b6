//! The evictor: memlog's `maxmemory` (docs/parameters.md, "Eviction").
//!
//! The nodes run without a `maxmemory`: a Redis at its limit would evict on its own, unseen by
//! the journal, and a node rebuilt from the journal would hold keys the old primary no longer
//! had (or, under `noeviction`, refuse a committed entry with `-OOM` and stop the shard). So
//! each shard's evictor reads its primary's memory every [`READ_EVERY`] into the shard's
//! [`ShardMemory`], and over the limit under an evicting policy it does what Redis's
//! `performEvictions` does — samples `maxmemory-samples` keys, ranks them by the policy — and
//! evicts the first with a `DEL` that goes through the shard's sequencer like any write:
//! journaled, applied, replicated, and replayed by every rebuild. Under `noeviction`, or with
//! nothing left to evict, the journaler refuses what may add data with Redis's `-OOM`.
//!
//! It is not Redis's eviction to the byte: the limit is checked against a reading at most
//! [`READ_EVERY`] old plus what was journaled since, eviction runs beside the writes instead of
//! before each one (a burst can pass the limit by what arrives while the evictor works), and a
//! key written between its sampling and its `DEL` is evicted all the same. A standalone
//! endpoint's databases are evicted from in turn, a round each (Redis samples them all at once).

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::oneshot;

use crate::backend::{BackendConn, BackendOptions, NodeTarget, Role};
use crate::keys::RESERVED_PREFIX;
use crate::normalize::integer_reply as integer;
use crate::params::{Eviction, LiveGroup, Rank};
use crate::pubsub::tracking::{Change, Tracker};
use crate::resp::{array_items, bulk_bytes, encode_command, info_field, Proto, Request};
use crate::sequencer::{Sequencer, SequencerOp, SequencerRequest};
use crate::stats::ShardMemory;
use crate::table::CommandInfo;

/// How often the primary's memory is read while a limit is set. Redis checks before every
/// command; this bounds how stale the reading the journaler compares against can be.
const READ_EVERY: Duration = Duration::from_millis(100);
/// How often the group is looked at while no limit is set.
const IDLE_EVERY: Duration = Duration::from_secs(1);
/// Most `DEL`s between two readings, so an estimate that is off is corrected soon.
const ROUNDS: usize = 8;
/// Most keys one `DEL` evicts.
const MOST_PER_DEL: usize = 64;
/// Most keys sampled for one `DEL`.
const MOST_SAMPLED: usize = 1024;
/// Redis's default `maxmemory-samples`.
const DEFAULT_SAMPLES: usize = 5;
/// Keys one `SCAN` step asks for when looking for keys with an expiry.
const SCAN_COUNT: &str = "128";

/// Where an evictor's `DEL`s go: the shard's sequencer (with `DEL`'s table entry), then the
/// clients tracking the keys.
pub(crate) struct Deletes {
    pub(crate) sequencer: Sequencer,
    pub(crate) del: Arc<CommandInfo>,
    pub(crate) tracker: Arc<Tracker>,
    /// The databases keys are evicted from: 1 (cluster mode), or 16 (standalone).
    pub(crate) databases: u8,
}

/// One shard's evictor.
pub(crate) struct Evictor {
    shard: usize,
    /// Follows the shard's primary (held, like client reads, while a failover moves it).
    conn: BackendConn,
    target: Arc<NodeTarget>,
    sequencer: Sequencer,
    memory: Arc<ShardMemory>,
    params: Arc<LiveGroup>,
    /// `DEL`'s table entry: an eviction touches WATCHed keys, as Redis's does.
    del: Arc<CommandInfo>,
    /// Where the search for keys with an expiry goes on (`volatile-*`).
    cursor: Bytes,
    /// An evicted key is invalidated for the clients tracking it, as Redis's eviction does.
    tracker: Arc<Tracker>,
    /// The database this round evicts from (`databases`: the next round takes the next one).
    db: u8,
    databases: u8,
}

/// Why an eviction round stopped early.
#[derive(Debug, thiserror::Error)]
enum EvictError {
    #[error("the primary answered {0}")]
    Node(String),
    #[error("the eviction's DEL was refused: {0}")]
    Refused(String),
}

impl Evictor {
    pub(crate) fn spawn(
        shard: usize,
        target: Arc<NodeTarget>,
        opts: BackendOptions,
        deletes: Deletes,
        memory: Arc<ShardMemory>,
        params: Arc<LiveGroup>,
    ) {
        let Deletes { sequencer, del, tracker, databases } = deletes;
        let conn = BackendConn::follow(target.clone(), Role::Read, Proto::Resp2, opts);
        let cursor = Bytes::from_static(b"0");
        let evictor =
            Evictor { shard, conn, target, sequencer, memory, params, del, cursor, tracker, db: 0, databases };
        tokio::spawn(evictor.run());
    }

    async fn run(mut self) {
        loop {
            let (limit, eviction) = self.params.memory_limit();
            self.memory.set_limit(limit, eviction);
            if limit == 0 {
                self.memory.set_exhausted(false);
                let _ = tokio::time::timeout(IDLE_EVERY, self.memory.limit_changed.notified()).await;
                continue;
            }
            match self.used_memory().await {
                Ok(used) => self.memory.record_reading(used),
                Err(e) => {
                    tracing::debug!(shard = self.shard, "reading the primary's memory failed: {e}");
                    tokio::time::sleep(READ_EVERY).await;
                    continue;
                }
            }
            // Not while the primary is replaced or rebuilt: a replay's pipelines fill its client
            // buffers for a moment, which are not data to make room for.
            let settled = !self.target.is_held();
            if let (true, true, Eviction::Evict { volatile_only, rank }) = (settled, self.memory.over_limit(), eviction)
            {
                match self.evict(volatile_only, rank).await {
                    // Read the memory again at once: evictions go on until under the limit.
                    Ok(evicted) if evicted > 0 => continue,
                    Ok(_) => {}
                    Err(e) => tracing::warn!(shard = self.shard, "eviction stopped: {e}"),
                }
            }
            tokio::time::sleep(READ_EVERY).await;
        }
    }

    /// What Redis counts against `maxmemory`: `used_memory` less the replication and AOF
    /// buffers (`mem_not_counted_for_evict`), as its `getMaxmemoryState` does.
    async fn used_memory(&self) -> Result<u64, EvictError> {
        let reply = self.call(&["INFO", "memory"]).await?;
        let info = bulk_bytes(&reply).ok_or_else(|| EvictError::Node(shown(&reply)))?;
        let info = String::from_utf8_lossy(&info);
        let field = |name: &str| info_field(&info, name).and_then(|v| v.parse::<u64>().ok());
        let used = field("used_memory").ok_or_else(|| EvictError::Node("INFO memory without used_memory".into()))?;
        Ok(used.saturating_sub(field("mem_not_counted_for_evict").unwrap_or(0)))
    }

    /// Evicts until the estimate is under the limit (at most [`ROUNDS`] `DEL`s); marks the shard
    /// exhausted when the policy finds nothing to take. Returns how many keys went.
    ///
    /// Each round samples `maxmemory-samples` keys per key it may evict, ranks them all, and
    /// evicts the best ones until what they use covers the excess, in one `DEL` (one journal
    /// entry): a `DEL` per key would wait for a journal commit per key, far slower than writes
    /// arrive.
    async fn evict(&mut self, volatile_only: bool, rank: Rank) -> Result<u64, EvictError> {
        let samples: usize =
            self.params.get().get("maxmemory-samples").and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_SAMPLES);
        let wanted = samples.saturating_mul(MOST_PER_DEL).min(MOST_SAMPLED);
        let mut evicted = 0u64;
        for _ in 0..ROUNDS {
            let excess = self.memory.estimate().saturating_sub(self.memory.limit());
            if excess == 0 {
                break;
            }
            let mut candidates = Vec::new();
            // The first database (from this round's on) that has keys the policy may take.
            for _ in 0..self.databases {
                candidates =
                    if volatile_only { self.volatile_keys(wanted).await? } else { self.any_keys(wanted).await? };
                if !candidates.is_empty() {
                    break;
                }
                self.next_database();
            }
            candidates.sort();
            candidates.dedup();
            self.memory.set_exhausted(candidates.is_empty());
            let ranked = self.ranked(candidates, rank).await?;
            let chosen: Vec<Bytes> = ranked.into_iter().take(MOST_PER_DEL).collect();
            let usage =
                chosen.iter().map(|key| vec![Bytes::from_static(b"MEMORY"), Bytes::from_static(b"USAGE"), key.clone()]);
            let sizes = self.batch(&usage.collect::<Vec<_>>()).await?;
            let (mut victims, mut freed) = (Vec::new(), 0u64);
            for (key, size) in chosen.into_iter().zip(sizes) {
                victims.push(key);
                freed += integer(&size).unwrap_or(0).max(0) as u64;
                if freed >= excess {
                    break;
                }
            }
            if victims.is_empty() {
                break;
            }
            let keys = victims.len();
            let deleted = self.delete(victims).await?;
            tracing::debug!(shard = self.shard, db = self.db, excess, keys, deleted, freed, "evicted");
            self.memory.evicted(deleted, freed);
            evicted += deleted;
            self.next_database();
        }
        if evicted > 0 {
            metrics::counter!("memlog_evicted_keys_total", "shard" => self.shard.to_string()).increment(evicted);
        }
        Ok(evicted)
    }

    /// Moves the next round to the next database (a new search for keys with an expiry there).
    fn next_database(&mut self) {
        if self.databases > 1 {
            self.db = (self.db + 1) % self.databases;
            self.cursor = Bytes::from_static(b"0");
        }
    }

    /// `samples` random keys (`RANDOMKEY`), memlog's own left out.
    async fn any_keys(&self, samples: usize) -> Result<Vec<Bytes>, EvictError> {
        let replies = self.batch(&vec![vec![Bytes::from_static(b"RANDOMKEY")]; samples]).await?;
        Ok(replies.iter().filter_map(bulk_bytes).filter(|k| !k.starts_with(RESERVED_PREFIX)).collect())
    }

    /// Up to `samples` keys with an expiry, found by `SCAN` from where the last search stopped;
    /// none when a whole pass over the keyspace finds none.
    async fn volatile_keys(&mut self, samples: usize) -> Result<Vec<Bytes>, EvictError> {
        let mut found = Vec::new();
        let mut passed_start = false;
        while found.len() < samples {
            let reply = self.call(&[&b"SCAN"[..], &self.cursor, b"COUNT", SCAN_COUNT.as_bytes()]).await?;
            let items =
                array_items(&reply).filter(|items| items.len() == 2).ok_or_else(|| EvictError::Node(shown(&reply)))?;
            self.cursor = bulk_bytes(&items[0]).ok_or_else(|| EvictError::Node(shown(&reply)))?;
            let keys: Vec<Bytes> = array_items(&items[1])
                .unwrap_or_default()
                .iter()
                .filter_map(bulk_bytes)
                .filter(|k| !k.starts_with(RESERVED_PREFIX))
                .collect();
            let ttls = self
                .batch(&keys.iter().map(|k| vec![Bytes::from_static(b"PTTL"), k.clone()]).collect::<Vec<_>>())
                .await?;
            found.extend(
                keys.into_iter().zip(ttls).filter(|(_, ttl)| integer(ttl).is_some_and(|t| t >= 0)).map(|(k, _)| k),
            );
            if &self.cursor[..] == b"0" {
                if passed_start {
                    break;
                }
                passed_start = true;
            }
        }
        found.truncate(samples);
        Ok(found)
    }

    /// The candidates in the order the policy evicts them: the longest idle, the least used,
    /// the nearest expiry, or as sampled. Keys gone meanwhile (an error, or no expiry) drop out.
    async fn ranked(&self, candidates: Vec<Bytes>, rank: Rank) -> Result<Vec<Bytes>, EvictError> {
        let (query, highest_first): (&[&'static [u8]], bool) = match rank {
            Rank::Random => return Ok(candidates),
            Rank::Lru => (&[b"OBJECT", b"IDLETIME"], true),
            Rank::Lfu => (&[b"OBJECT", b"FREQ"], false),
            Rank::Ttl => (&[b"PTTL"], false),
        };
        let commands: Vec<Vec<Bytes>> = candidates
            .iter()
            .map(|key| query.iter().map(|a| Bytes::from_static(a)).chain([key.clone()]).collect())
            .collect();
        let scores = self.batch(&commands).await?;
        let mut ranked: Vec<(Bytes, i64)> = candidates
            .into_iter()
            .zip(scores)
            .filter_map(|(key, score)| Some((key, integer(&score)?)))
            .filter(|(_, score)| rank != Rank::Ttl || *score >= 0)
            .collect();
        ranked.sort_by_key(|(_, score)| if highest_first { -*score } else { *score });
        Ok(ranked.into_iter().map(|(key, _)| key).collect())
    }

    /// `DEL key…` through the sequencer; how many keys went.
    async fn delete(&self, keys: Vec<Bytes>) -> Result<u64, EvictError> {
        let mut args = vec![Bytes::from_static(b"DEL")];
        args.extend(keys.iter().cloned());
        let request = Request::from_args(&args);
        let (reply, answer) = oneshot::channel();
        let op = SequencerOp::Write { request, command: Some(self.del.clone()) };
        self.sequencer.submit(SequencerRequest { proto: Proto::Resp2, db: self.db, client: 0, op, reply }).await;
        let answer = answer.await;
        // Told whatever the answer: an outcome that is unknown may have evicted them.
        self.tracker.changed(Change::Keys { writer: None, keys });
        match answer {
            Ok(Ok(reply)) => match integer(&reply) {
                Some(n) => Ok(n.max(0) as u64),
                None => Err(EvictError::Refused(shown(&reply))),
            },
            Ok(Err(e)) => Err(EvictError::Refused(e.to_string())),
            Err(_) => Err(EvictError::Refused("the sequencer stopped".into())),
        }
    }

    /// One command, in this round's database.
    async fn call<A: AsRef<[u8]>>(&self, args: &[A]) -> Result<Bytes, EvictError> {
        match self.conn.call_in_db(self.db, encode_command(args)).await {
            Ok(reply) if reply.starts_with(b"-") => Err(EvictError::Node(shown(&reply))),
            Ok(reply) => Ok(reply),
            Err(e) => Err(EvictError::Node(e.to_string())),
        }
    }

    /// Several commands in one round trip, in this round's database (selected around them, so
    /// the connection is back in database 0 after); each reply, errors included.
    async fn batch(&self, commands: &[Vec<Bytes>]) -> Result<Vec<Bytes>, EvictError> {
        if commands.is_empty() {
            return Ok(Vec::new());
        }
        let mut requests = BytesMut::new();
        commands.iter().for_each(|args| requests.extend_from_slice(&encode_command(args)));
        let (batch, added) = crate::databases::batch_in(self.db, requests.freeze());
        let replies = self.conn.call_batch(batch, commands.len() + added).await;
        Ok(crate::databases::batch_replies(self.db, replies.map_err(|e| EvictError::Node(e.to_string()))?))
    }
}

fn shown(reply: &[u8]) -> String {
    String::from_utf8_lossy(&reply[..reply.len().min(120)]).trim_end().to_string()
}

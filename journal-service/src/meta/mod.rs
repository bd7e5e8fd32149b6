//! The metadata store: the small, strongly consistent state of a memlog cluster — shard epochs
//! and their writers, the topology, ACL users, the snapshot catalog and an event log.
//!
//! Every change that two parties may race on is a compare-and-set (`claim_epoch`,
//! `put_topology`), so exactly one of them wins and the loser learns the current value.
//! Two backends share one API and one conformance suite (`tests/meta_conformance.rs`):
//! - `postgres://…` ([`postgres::PostgresStore`]) for deployments that already run an HA Postgres;
//! - `file:PATH` ([`file::FileStore`]) for one machine (`memlog up`, tests), safe across processes.
//!
//! The store is an enum rather than a trait object: both backends are known, and async methods
//! on an enum need neither boxing nor `async_trait`.

pub mod file;
pub mod postgres;
pub mod postgres_tls;

use serde::{Deserialize, Serialize};

/// Why a metadata operation failed.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// A compare-and-set lost: the stored value is not the expected one.
    #[error("compare-and-set conflict: the current value is {current}")]
    Conflict { current: u64 },
    /// The URL names no backend this build knows (`postgres://…` or `file:PATH`).
    /// Holds the URL with its password masked ([`redact_url`]).
    #[error("unsupported metadata store URL {0} (expected postgres://… or file:PATH)")]
    BadUrl(String),
    /// The file backend could not read, lock or replace its document.
    #[error("metadata file error: {0}")]
    Io(#[from] std::io::Error),
    /// The stored document or a stored JSON value does not parse.
    #[error("corrupt metadata: {0}")]
    Corrupt(String),
    /// The Postgres backend failed (connection, SQL, migration).
    #[error("postgres error: {}", with_causes(.0))]
    Postgres(#[from] tokio_postgres::Error),
    /// The Postgres URL's TLS settings cannot be used (`sslmode`, `sslrootcert`).
    #[error("postgres TLS: {0}")]
    PostgresTls(#[from] postgres_tls::PostgresTlsError),
    /// No pooled Postgres connection within the timeout (the server is unreachable or busy).
    #[error("postgres connection pool: {0}")]
    Pool(String),
    /// A number does not fit the backend's column type (Postgres has signed 64-bit integers).
    #[error("value out of range: {0}")]
    OutOfRange(String),
}

/// `error` and its sources: tokio-postgres' own message ("error performing TLS handshake")
/// leaves the reason (e.g. which certificate check failed) to the source.
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The epoch of a shard's journal stream and the writer that claimed it (`None` before the first claim).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardEpoch {
    pub epoch: u64,
    pub writer: Option<String>,
}

/// Which Redis nodes serve which slots. Stored whole, as JSON, under a version number.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topology {
    pub shards: Vec<ShardTopology>,
}

/// One shard of the topology: its slot ranges and Redis nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardTopology {
    pub id: u32,
    /// Inclusive slot ranges `(first, last)`.
    pub slots: Vec<(u16, u16)>,
    /// `host:port` of the primary.
    pub primary: String,
    /// `host:port` of each replica.
    pub replicas: Vec<String>,
}

/// A snapshot (RDB of a shard at an LSN) recorded in the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    pub shard: u32,
    pub lsn: u64,
    pub location: String,
    pub timestamp_ms: u64,
}

/// One entry of the event log (failovers, epoch changes, restores…), for operators.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    /// Increasing, starting at 1; `list_events(since_id)` returns ids above `since_id`.
    pub id: u64,
    pub kind: String,
    pub body: serde_json::Value,
}

/// A metadata store, opened from its URL.
pub enum MetaStore {
    File(file::FileStore),
    Postgres(postgres::PostgresStore),
}

/// Calls the same method on whichever backend `self` is.
macro_rules! dispatch {
    ($self:ident . $method:ident ( $($arg:expr),* )) => {
        match $self {
            MetaStore::File(store) => store.$method($($arg),*).await,
            MetaStore::Postgres(store) => store.$method($($arg),*).await,
        }
    };
}

/// `url` with any password masked, for logs and errors: the `user:password@` part of a URL
/// and a `password=` query parameter.
pub fn redact_url(url: &str) -> String {
    let mut out = url.to_string();
    if let Some(scheme_end) = out.find("://") {
        let authority_start = scheme_end + 3;
        let authority_end = out[authority_start..].find(['/', '?']).map_or(out.len(), |i| authority_start + i);
        if let Some(at) = out[authority_start..authority_end].rfind('@') {
            let userinfo = authority_start..authority_start + at;
            if let Some(colon) = out[userinfo.clone()].find(':') {
                out.replace_range(userinfo.start + colon + 1..userinfo.end, "***");
            }
        }
    }
    if let Some(query_start) = out.find('?') {
        let (head, query) = out.split_at(query_start + 1);
        let masked: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
                _ => pair.to_string(),
            })
            .collect();
        out = format!("{head}{}", masked.join("&"));
    }
    out
}

impl MetaStore {
    /// Opens `postgres://…` / `postgresql://…` (creating or migrating the schema) or `file:PATH`.
    pub async fn open(url: &str) -> Result<MetaStore, MetaError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(MetaStore::Postgres(postgres::PostgresStore::connect(url).await?))
        } else if let Some(path) = url.strip_prefix("file:") {
            if path.is_empty() {
                return Err(MetaError::BadUrl(redact_url(url)));
            }
            Ok(MetaStore::File(file::FileStore::open(path)?))
        } else {
            Err(MetaError::BadUrl(redact_url(url)))
        }
    }

    /// Moves `shard` from epoch `expected` to `expected + 1`, owned by `writer`; returns the new
    /// epoch, or `Conflict { current }` if someone else moved it first.
    pub async fn claim_epoch(&self, shard: u32, expected: u64, writer: &str) -> Result<u64, MetaError> {
        dispatch!(self.claim_epoch(shard, expected, writer))
    }

    /// The current epoch of `shard` (0 and no writer before the first claim).
    pub async fn epoch(&self, shard: u32) -> Result<ShardEpoch, MetaError> {
        dispatch!(self.epoch(shard))
    }

    /// The topology and its version, if one was ever stored.
    pub async fn get_topology(&self) -> Result<Option<(u64, Topology)>, MetaError> {
        dispatch!(self.get_topology())
    }

    /// Replaces the topology if its version is still `expected_version` (0 = none stored yet);
    /// returns the new version, or `Conflict { current }`.
    pub async fn put_topology(&self, expected_version: u64, topology: &Topology) -> Result<u64, MetaError> {
        dispatch!(self.put_topology(expected_version, topology))
    }

    /// Creates or replaces the user `name` (its ACL rules and password hashes, as JSON).
    pub async fn put_user(&self, name: &str, user: &serde_json::Value) -> Result<(), MetaError> {
        dispatch!(self.put_user(name, user))
    }

    /// The user `name`, if it exists.
    pub async fn get_user(&self, name: &str) -> Result<Option<serde_json::Value>, MetaError> {
        dispatch!(self.get_user(name))
    }

    /// Every user, sorted by name.
    pub async fn list_users(&self) -> Result<Vec<(String, serde_json::Value)>, MetaError> {
        dispatch!(self.list_users())
    }

    /// Deletes the user `name`; returns whether it existed.
    pub async fn delete_user(&self, name: &str) -> Result<bool, MetaError> {
        dispatch!(self.delete_user(name))
    }

    /// The parameter group in force (name -> value; empty when none was ever set).
    pub async fn get_parameters(&self) -> Result<std::collections::BTreeMap<String, String>, MetaError> {
        dispatch!(self.get_parameters())
    }

    /// Replaces the parameter group.
    pub async fn put_parameters(
        &self,
        parameters: &std::collections::BTreeMap<String, String>,
    ) -> Result<(), MetaError> {
        dispatch!(self.put_parameters(parameters))
    }

    /// Records a snapshot of `shard` at `lsn` (recording the same shard and LSN again replaces it).
    pub async fn add_snapshot(&self, snapshot: &SnapshotRecord) -> Result<(), MetaError> {
        dispatch!(self.add_snapshot(snapshot))
    }

    /// The snapshots of `shard`, by increasing LSN.
    pub async fn list_snapshots(&self, shard: u32) -> Result<Vec<SnapshotRecord>, MetaError> {
        dispatch!(self.list_snapshots(shard))
    }

    /// Forgets the snapshot of `shard` at `lsn` (its file was deleted); returns whether it was recorded.
    pub async fn remove_snapshot(&self, shard: u32, lsn: u64) -> Result<bool, MetaError> {
        dispatch!(self.remove_snapshot(shard, lsn))
    }

    /// Records that the committed entry `lsn` of `shard` is not applied by any replay (an
    /// operator's `MEMLOG ABORT` of an entry Redis never finished, e.g. a script that never
    /// returns). Recording the same entry again changes nothing.
    pub async fn abort_entry(&self, shard: u32, lsn: u64) -> Result<(), MetaError> {
        dispatch!(self.abort_entry(shard, lsn))
    }

    /// The aborted entries of `shard`.
    pub async fn aborted_entries(&self, shard: u32) -> Result<std::collections::BTreeSet<u64>, MetaError> {
        dispatch!(self.aborted_entries(shard))
    }

    /// Appends an event; returns its id.
    pub async fn append_event(&self, kind: &str, body: &serde_json::Value) -> Result<u64, MetaError> {
        dispatch!(self.append_event(kind, body))
    }

    /// Up to `limit` events with an id above `since_id`, oldest first.
    pub async fn list_events(&self, since_id: u64, limit: usize) -> Result<Vec<EventRecord>, MetaError> {
        dispatch!(self.list_events(since_id, limit))
    }
}

#[cfg(test)]
mod redaction_tests {
    use super::redact_url;

    #[test]
    fn passwords_never_survive_redaction() {
        assert_eq!(
            redact_url("postgres://memlog:s3cr%40t@db:5432/m?sslmode=require"),
            "postgres://memlog:***@db:5432/m?sslmode=require"
        );
        assert_eq!(
            redact_url("postgresql://u@db/m?password=hunter2&sslmode=verify-full"),
            "postgresql://u@db/m?password=***&sslmode=verify-full"
        );
        assert_eq!(redact_url("file:/var/lib/memlog/metadata.json"), "file:/var/lib/memlog/metadata.json");
        let error = super::MetaError::BadUrl(redact_url("mysql://root:topsecret@h/x"));
        assert!(!format!("{error} {error:?}").contains("topsecret"));
    }
}

//! `postgres://…`: the metadata store in PostgreSQL, for deployments that already run an HA
//! Postgres. memlog creates and migrates its own schema: `memlog_schema_version` records the
//! migrations applied, and [`MIGRATIONS`] are applied in order under a transaction-scoped
//! advisory lock, so several processes starting at once migrate exactly once.
//!
//! Compare-and-set is one statement — `INSERT … ON CONFLICT DO NOTHING RETURNING` when nothing is
//! expected to exist yet, `UPDATE … WHERE <expected> RETURNING` otherwise — atomic per row. JSON values travel as text cast to `jsonb`.
//!
//! Connections are TLS as the URL's `sslmode` says (`postgres_tls`) and come from a pool: each
//! call takes one for its statement, so calls do not queue behind each other, a dead
//! connection is replaced, and while Postgres is unreachable a call fails after
//! [`CONNECT_TIMEOUT`] instead of holding anything else up.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::Client;

use super::postgres_tls::Connection;
use super::{EventRecord, MetaError, ShardEpoch, SnapshotRecord, Topology};

/// Most connections one process holds to the store. Its calls are few and short (epoch claims,
/// topology, the snapshot catalog, events), but shards start and fail over in parallel.
const POOL_SIZE: usize = 8;

/// How long opening a connection (TCP, TLS, authentication) or waiting for a free one may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The schema, one migration per step, in order. Never edit a shipped step: append a new one.
const MIGRATIONS: &[&str] = &[
    // 1: the initial schema.
    "CREATE TABLE memlog_shard_epochs (
         shard BIGINT PRIMARY KEY,
         epoch BIGINT NOT NULL,
         writer TEXT NOT NULL
     );
     CREATE TABLE memlog_topology (
         id INT PRIMARY KEY CHECK (id = 1),
         version BIGINT NOT NULL,
         doc JSONB NOT NULL
     );
     CREATE TABLE memlog_users (
         name TEXT PRIMARY KEY,
         doc JSONB NOT NULL
     );
     CREATE TABLE memlog_snapshots (
         shard BIGINT NOT NULL,
         lsn BIGINT NOT NULL,
         location TEXT NOT NULL,
         timestamp_ms BIGINT NOT NULL,
         PRIMARY KEY (shard, lsn)
     );
     CREATE TABLE memlog_events (
         id BIGSERIAL PRIMARY KEY,
         kind TEXT NOT NULL,
         body JSONB NOT NULL,
         recorded_at TIMESTAMPTZ NOT NULL DEFAULT now()
     );",
    // 2: the parameter group (one document: name -> value).
    "CREATE TABLE memlog_parameters (
         id INT PRIMARY KEY CHECK (id = 1),
         doc JSONB NOT NULL
     );",
    // 3: committed entries no replay applies (`MEMLOG ABORT`).
    "CREATE TABLE memlog_aborted_entries (
         shard BIGINT NOT NULL,
         lsn BIGINT NOT NULL,
         PRIMARY KEY (shard, lsn)
     );",
];

/// Key of the advisory lock that serializes migrations ("memlog" in ASCII).
const MIGRATION_LOCK_KEY: i64 = 0x6d65_6d6c_6f67;

/// The Postgres metadata store: a pool of connections to it.
pub struct PostgresStore {
    pool: Pool,
}

impl PostgresStore {
    /// Connects and brings the schema up to date.
    pub async fn connect(url: &str) -> Result<PostgresStore, MetaError> {
        let Connection { mut config, tls, .. } = Connection::from_url(url)?;
        config.connect_timeout(CONNECT_TIMEOUT);
        // Fast recycling: a connection whose socket closed is dropped; a live one is reused
        // without a test query.
        let manager = Manager::from_config(config, tls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(CONNECT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| MetaError::Pool(e.to_string()))?;
        let store = PostgresStore { pool };
        let mut client = store.client().await?;
        migrate(&mut client).await?;
        drop(client);
        Ok(store)
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, MetaError> {
        self.pool.get().await.map_err(|e| match e {
            deadpool_postgres::PoolError::Backend(e) => MetaError::Postgres(e),
            other => MetaError::Pool(other.to_string()),
        })
    }

    /// Runs `op` on a pooled connection.
    async fn with_client<T>(&self, op: impl AsyncFnOnce(&Client) -> Result<T, MetaError>) -> Result<T, MetaError> {
        let client = self.client().await?;
        op(&client).await
    }

    pub async fn claim_epoch(&self, shard: u32, expected: u64, writer: &str) -> Result<u64, MetaError> {
        let next = to_i64(expected.checked_add(1).ok_or_else(|| MetaError::OutOfRange("epoch".into()))?)?;
        let expected = to_i64(expected)?;
        let shard = i64::from(shard);
        self.with_client(async |c| {
            // Epoch 0 means "never claimed": only then may the row be created.
            let row = if expected == 0 {
                c.query_opt(
                    "INSERT INTO memlog_shard_epochs (shard, epoch, writer) VALUES ($1, $2, $3)
                     ON CONFLICT (shard) DO NOTHING RETURNING epoch",
                    &[&shard, &next, &writer],
                )
                .await?
            } else {
                c.query_opt(
                    "UPDATE memlog_shard_epochs SET epoch = $2, writer = $3 WHERE shard = $1 AND epoch = $4
                     RETURNING epoch",
                    &[&shard, &next, &writer, &expected],
                )
                .await?
            };
            match row {
                Some(row) => to_u64(row.get::<_, i64>(0)),
                None => {
                    let current =
                        c.query_opt("SELECT epoch FROM memlog_shard_epochs WHERE shard = $1", &[&shard]).await?;
                    Err(MetaError::Conflict { current: current.map_or(Ok(0), |r| to_u64(r.get(0)))? })
                }
            }
        })
        .await
    }

    pub async fn epoch(&self, shard: u32) -> Result<ShardEpoch, MetaError> {
        let shard = i64::from(shard);
        self.with_client(async |c| {
            let row = c.query_opt("SELECT epoch, writer FROM memlog_shard_epochs WHERE shard = $1", &[&shard]).await?;
            Ok(match row {
                Some(row) => ShardEpoch { epoch: to_u64(row.get(0))?, writer: Some(row.get(1)) },
                None => ShardEpoch { epoch: 0, writer: None },
            })
        })
        .await
    }

    pub async fn get_topology(&self) -> Result<Option<(u64, Topology)>, MetaError> {
        self.with_client(async |c| {
            let row = c.query_opt("SELECT version, doc::text FROM memlog_topology WHERE id = 1", &[]).await?;
            row.map(|row| Ok((to_u64(row.get(0))?, parse_json(row.get(1))?))).transpose()
        })
        .await
    }

    pub async fn put_topology(&self, expected_version: u64, topology: &Topology) -> Result<u64, MetaError> {
        let doc = serde_json::to_string(topology).map_err(|e| MetaError::Corrupt(e.to_string()))?;
        let expected = to_i64(expected_version)?;
        self.with_client(async |c| {
            // Version 0 means "none stored": only then may the row be created.
            let row = if expected == 0 {
                c.query_opt(
                    "INSERT INTO memlog_topology (id, version, doc) VALUES (1, 1, $1::text::jsonb)
                     ON CONFLICT (id) DO NOTHING RETURNING version",
                    &[&doc],
                )
                .await?
            } else {
                c.query_opt(
                    "UPDATE memlog_topology SET version = version + 1, doc = $1::text::jsonb
                     WHERE id = 1 AND version = $2 RETURNING version",
                    &[&doc, &expected],
                )
                .await?
            };
            match row {
                Some(row) => to_u64(row.get(0)),
                _ => {
                    let current = c.query_opt("SELECT version FROM memlog_topology WHERE id = 1", &[]).await?;
                    Err(MetaError::Conflict { current: current.map_or(Ok(0), |r| to_u64(r.get(0)))? })
                }
            }
        })
        .await
    }

    pub async fn put_user(&self, name: &str, user: &serde_json::Value) -> Result<(), MetaError> {
        let doc = user.to_string();
        self.with_client(async |c| {
            c.execute(
                "INSERT INTO memlog_users (name, doc) VALUES ($1, $2::text::jsonb)
                 ON CONFLICT (name) DO UPDATE SET doc = EXCLUDED.doc",
                &[&name, &doc],
            )
            .await?;
            Ok(())
        })
        .await
    }

    pub async fn get_user(&self, name: &str) -> Result<Option<serde_json::Value>, MetaError> {
        self.with_client(async |c| {
            let row = c.query_opt("SELECT doc::text FROM memlog_users WHERE name = $1", &[&name]).await?;
            row.map(|row| parse_json(row.get(0))).transpose()
        })
        .await
    }

    pub async fn list_users(&self) -> Result<Vec<(String, serde_json::Value)>, MetaError> {
        self.with_client(async |c| {
            let rows = c.query("SELECT name, doc::text FROM memlog_users ORDER BY name COLLATE \"C\"", &[]).await?;
            rows.iter().map(|row| Ok((row.get(0), parse_json(row.get(1))?))).collect()
        })
        .await
    }

    pub async fn delete_user(&self, name: &str) -> Result<bool, MetaError> {
        self.with_client(async |c| Ok(c.execute("DELETE FROM memlog_users WHERE name = $1", &[&name]).await? > 0)).await
    }

    pub async fn get_parameters(&self) -> Result<BTreeMap<String, String>, MetaError> {
        self.with_client(async |c| {
            let row = c.query_opt("SELECT doc::text FROM memlog_parameters WHERE id = 1", &[]).await?;
            Ok(row.map(|row| parse_json(row.get(0))).transpose()?.unwrap_or_default())
        })
        .await
    }

    pub async fn put_parameters(&self, parameters: &BTreeMap<String, String>) -> Result<(), MetaError> {
        let doc = serde_json::to_string(parameters).map_err(|e| MetaError::Corrupt(e.to_string()))?;
        self.with_client(async |c| {
            c.execute(
                "INSERT INTO memlog_parameters (id, doc) VALUES (1, $1::text::jsonb)
                 ON CONFLICT (id) DO UPDATE SET doc = EXCLUDED.doc",
                &[&doc],
            )
            .await?;
            Ok(())
        })
        .await
    }

    pub async fn add_snapshot(&self, snapshot: &SnapshotRecord) -> Result<(), MetaError> {
        let (shard, lsn, ts) = (i64::from(snapshot.shard), to_i64(snapshot.lsn)?, to_i64(snapshot.timestamp_ms)?);
        self.with_client(async |c| {
            c.execute(
                "INSERT INTO memlog_snapshots (shard, lsn, location, timestamp_ms) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (shard, lsn) DO UPDATE SET location = EXCLUDED.location, timestamp_ms = EXCLUDED.timestamp_ms",
                &[&shard, &lsn, &snapshot.location, &ts],
            )
            .await?;
            Ok(())
        })
        .await
    }

    pub async fn remove_snapshot(&self, shard: u32, lsn: u64) -> Result<bool, MetaError> {
        let (shard, lsn) = (i64::from(shard), to_i64(lsn)?);
        self.with_client(async |c| {
            Ok(c.execute("DELETE FROM memlog_snapshots WHERE shard = $1 AND lsn = $2", &[&shard, &lsn]).await? > 0)
        })
        .await
    }

    pub async fn abort_entry(&self, shard: u32, lsn: u64) -> Result<(), MetaError> {
        let (shard, lsn) = (i64::from(shard), to_i64(lsn)?);
        self.with_client(async |c| {
            c.execute(
                "INSERT INTO memlog_aborted_entries (shard, lsn) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[&shard, &lsn],
            )
            .await?;
            Ok(())
        })
        .await
    }

    pub async fn aborted_entries(&self, shard: u32) -> Result<BTreeSet<u64>, MetaError> {
        let shard = i64::from(shard);
        self.with_client(async |c| {
            let rows = c.query("SELECT lsn FROM memlog_aborted_entries WHERE shard = $1", &[&shard]).await?;
            rows.iter().map(|row| to_u64(row.get(0))).collect()
        })
        .await
    }

    pub async fn list_snapshots(&self, shard: u32) -> Result<Vec<SnapshotRecord>, MetaError> {
        let shard_key = i64::from(shard);
        self.with_client(async |c| {
            let rows = c
                .query(
                    "SELECT lsn, location, timestamp_ms FROM memlog_snapshots WHERE shard = $1 ORDER BY lsn",
                    &[&shard_key],
                )
                .await?;
            rows.iter()
                .map(|row| {
                    Ok(SnapshotRecord {
                        shard,
                        lsn: to_u64(row.get(0))?,
                        location: row.get(1),
                        timestamp_ms: to_u64(row.get(2))?,
                    })
                })
                .collect()
        })
        .await
    }

    pub async fn append_event(&self, kind: &str, body: &serde_json::Value) -> Result<u64, MetaError> {
        let body = body.to_string();
        self.with_client(async |c| {
            let row = c
                .query_one(
                    "INSERT INTO memlog_events (kind, body) VALUES ($1, $2::text::jsonb) RETURNING id",
                    &[&kind, &body],
                )
                .await?;
            to_u64(row.get(0))
        })
        .await
    }

    pub async fn list_events(&self, since_id: u64, limit: usize) -> Result<Vec<EventRecord>, MetaError> {
        let since = to_i64(since_id)?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with_client(async |c| {
            let rows = c
                .query(
                    "SELECT id, kind, body::text FROM memlog_events WHERE id > $1 ORDER BY id LIMIT $2",
                    &[&since, &limit],
                )
                .await?;
            rows.iter()
                .map(|row| Ok(EventRecord { id: to_u64(row.get(0))?, kind: row.get(1), body: parse_json(row.get(2))? }))
                .collect()
        })
        .await
    }
}

/// Applies every migration newer than the recorded schema version, each with its version row,
/// in one transaction holding the migration lock.
async fn migrate(client: &mut deadpool_postgres::Object) -> Result<(), MetaError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK_KEY]).await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS memlog_schema_version (
             version INT PRIMARY KEY,
             applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
         )",
    )
    .await?;
    let current: i32 = tx.query_one("SELECT COALESCE(MAX(version), 0) FROM memlog_schema_version", &[]).await?.get(0);
    for (index, sql) in MIGRATIONS.iter().enumerate() {
        let version = i32::try_from(index + 1).map_err(|_| MetaError::OutOfRange("migration".into()))?;
        if version > current {
            tx.batch_execute(sql).await?;
            tx.execute("INSERT INTO memlog_schema_version (version) VALUES ($1)", &[&version]).await?;
        }
    }
    tx.commit().await?;
    Ok(())
}

fn to_i64(value: u64) -> Result<i64, MetaError> {
    i64::try_from(value).map_err(|_| MetaError::OutOfRange(format!("{value} exceeds a Postgres BIGINT")))
}

fn to_u64(value: i64) -> Result<u64, MetaError> {
    u64::try_from(value).map_err(|_| MetaError::Corrupt(format!("negative value {value} in the metadata store")))
}

fn parse_json<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, MetaError> {
    serde_json::from_str(text).map_err(|e| MetaError::Corrupt(e.to_string()))
}

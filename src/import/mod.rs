//! `memlog import`: bring existing data into a running memlog cluster, through its proxy (so
//! every key is journaled like any other write): from RDB files (`rdb`), and a check that a
//! source and memlog hold the same data (`verify`), and from a running source kept in sync
//! until the cut-over (`live`). README.md, "Importing data", has the cut-over step by step.

mod conn;
mod endpoint;
mod feed;
mod live;
mod progress;
mod rdb;
mod replication;
mod source;
mod verify;

use std::path::{Path, PathBuf};

use crate::tls_client::Identity;
use endpoint::{Endpoint, Flags};

#[derive(clap::Args)]
pub struct ImportArgs {
    #[command(subcommand)]
    command: ImportCommand,
}

#[derive(clap::Subcommand)]
enum ImportCommand {
    /// Load RDB files (RDB version ≤ 10: Redis ≤ 7.0, ElastiCache ≤ 7.0 backups) into memlog:
    /// every key through `RESTORE … ABSTTL REPLACE`, keeping its TTL; keys already expired are
    /// skipped and counted. Every file is read and checked whole (structure, CRC-64) before the
    /// first key is sent: a bad or truncated file is refused with its byte offset and nothing
    /// is applied. Give all of a cluster's files (one per shard) in one run.
    Rdb(rdb::RdbArgs),
    /// Compare a source with memlog: key sets, values (by type: strings, lists, sets, sorted sets,
    /// hashes, streams with their consumer groups) and TTLs (within 1 s). Prints every difference;
    /// exits 0 only when there is none.
    Verify(verify::VerifyArgs),
    /// Copy a running Redis or ElastiCache (≤ 7.0) into memlog while it keeps taking writes, and
    /// keep memlog in sync until SIGINT/SIGTERM (the cut-over). Where the source allows PSYNC
    /// (a self-managed Redis), as a replica: its RDB, then every write it runs, in order (exact).
    /// Otherwise (ElastiCache) it needs no SYNC, PSYNC or CONFIG: SCAN/DUMP/PTTL per source
    /// primary, plus the changes seen through keyspace notifications (the source's
    /// notify-keyspace-events must include E and A, e.g. "KEA"; checked at the start by a probe
    /// write on a scratch key). --mode chooses.
    Live(live::LiveArgs),
}

pub async fn run(args: ImportArgs) -> anyhow::Result<()> {
    match args.command {
        // Only a live import outlives its work; rdb and verify end on SIGINT as any command does.
        ImportCommand::Live(args) => live::run(args, crate::signals::shutdown_signal()).await,
        ImportCommand::Rdb(args) => rdb::run(args).await,
        ImportCommand::Verify(args) => verify::run(args).await,
    }
}

/// Where the data goes: the memlog proxy.
#[derive(clap::Args, Clone)]
pub struct TargetArgs {
    /// The memlog proxy: redis://[user@]host:port or rediss://[user@]host:port. The password
    /// comes from --password-file or the MEMLOG_PASSWORD environment variable, never the URL.
    #[arg(long = "to", value_name = "URL")]
    to: String,
    /// File holding the password of the --to user (one line).
    #[arg(long, value_name = "FILE")]
    password_file: Option<PathBuf>,
    /// CA certificate(s) (PEM) that signed the proxy's TLS certificate, for rediss://.
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Client certificate (PEM) presented to a proxy that asks for one (`[tls] client_auth`).
    #[arg(long, value_name = "FILE", requires = "key")]
    cert: Option<PathBuf>,
    /// Private key (PEM) of --cert.
    #[arg(long, value_name = "FILE", requires = "cert")]
    key: Option<PathBuf>,
}

impl TargetArgs {
    fn endpoint(&self) -> anyhow::Result<Endpoint> {
        let flags =
            Flags { password_file: "--password-file", password_env: "MEMLOG_PASSWORD", ca: "--ca", cert: "--cert" };
        let env = std::env::var("MEMLOG_PASSWORD").ok();
        let identity = identity(self.cert.as_deref(), self.key.as_deref());
        Ok(Endpoint::parse(&self.to, self.password_file.as_deref(), env, self.ca.as_deref(), identity, &flags)?)
    }
}

/// Where the data comes from: a running Redis or ElastiCache.
#[derive(clap::Args, Clone)]
pub struct SourceArgs {
    /// The source: redis://[user@]host:port or rediss://[user@]host:port (any node of a cluster
    /// with --cluster). The password comes from --source-password-file or the
    /// MEMLOG_SOURCE_PASSWORD environment variable, never the URL.
    #[arg(value_name = "SOURCE_URL")]
    source: String,
    /// The source is a Redis Cluster (ElastiCache "cluster mode enabled"): its primaries are
    /// found with CLUSTER SLOTS and each is read.
    #[arg(long)]
    cluster: bool,
    /// File holding the password of the source user (one line).
    #[arg(long, value_name = "FILE")]
    source_password_file: Option<PathBuf>,
    /// CA certificate(s) (PEM) that signed the source's TLS certificate, for rediss://.
    #[arg(long, value_name = "FILE")]
    source_ca: Option<PathBuf>,
    /// Client certificate (PEM) presented to a source that asks for one (a self-managed Redis
    /// with `tls-auth-clients yes`; ElastiCache asks for none).
    #[arg(long, value_name = "FILE", requires = "source_key")]
    source_cert: Option<PathBuf>,
    /// Private key (PEM) of --source-cert.
    #[arg(long, value_name = "FILE", requires = "source_cert")]
    source_key: Option<PathBuf>,
}

impl SourceArgs {
    fn endpoint(&self) -> anyhow::Result<Endpoint> {
        let flags = Flags {
            password_file: "--source-password-file",
            password_env: "MEMLOG_SOURCE_PASSWORD",
            ca: "--source-ca",
            cert: "--source-cert",
        };
        let env = std::env::var("MEMLOG_SOURCE_PASSWORD").ok();
        let (password_file, ca) = (self.source_password_file.as_deref(), self.source_ca.as_deref());
        let identity = identity(self.source_cert.as_deref(), self.source_key.as_deref());
        Ok(Endpoint::parse(&self.source, password_file, env, ca, identity, &flags)?)
    }
}

/// A client certificate and its key, when both are given (clap requires one with the other).
fn identity<'a>(cert: Option<&'a Path>, key: Option<&'a Path>) -> Option<Identity<'a>> {
    Some(Identity { cert: cert?, key: key? })
}

/// A key as a person reads it: quoted, with non-printable bytes escaped.
fn show(key: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(key))
}

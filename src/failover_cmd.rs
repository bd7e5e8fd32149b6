//! `memlog failover`: a graceful, zero-loss manual switchover of one shard, like Redis
//! `FAILOVER`. The proxy that owns the shard does the work (pause the shard, catch the target
//! up with the journal, switch, resume); this command asks it to, and shows the shard before
//! and after, and how long the switchover took.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{ArgGroup, Args};

use crate::admin_client::{self, ProxyShard};
use crate::admin_tls::TlsArgs;
use crate::deployment::{AuthArgs, Deployment};

/// Flags of `memlog failover`.
#[derive(Debug, Clone, Args)]
#[command(group(ArgGroup::new("target").required(true).args(["dir", "config", "proxy"])))]
pub struct FailoverArgs {
    /// The shard to switch over (its id, as `memlog status` shows it).
    #[arg(long)]
    pub shard: u32,
    /// The replica (`host:port`) to promote; default: the proxy picks the replica with the
    /// highest journal LSN.
    #[arg(long, value_name = "ADDR")]
    pub to: Option<String>,
    /// The cluster that `memlog up --dir DIR` runs (its proxy from DIR/proxy.toml).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// A deployed cluster: its proxy's TOML configuration (address and users).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The proxy's address (`host:port`), when there is no config at hand.
    #[arg(long, value_name = "HOST:PORT")]
    pub proxy: Option<String>,
    /// How long to wait for the proxy to report the switchover done, in seconds.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub timeout: u64,
    #[command(flatten)]
    pub auth: AuthArgs,
    #[command(flatten)]
    pub tls: TlsArgs,
}

/// Why the switchover did not happen.
#[derive(Debug, thiserror::Error)]
pub enum FailoverError {
    #[error("the proxy knows no shard {shard} (it has {known})")]
    NoSuchShard { shard: u32, known: String },
    #[error("failover of shard {shard} failed after {elapsed:?}: {source}")]
    Failed { shard: u32, elapsed: Duration, source: admin_client::AdminError },
}

/// Asks the proxy for the switchover and prints the shard before and after it.
pub async fn run(args: FailoverArgs) -> anyhow::Result<()> {
    let deployment = match (&args.dir, &args.config, &args.proxy) {
        (Some(dir), _, _) => Deployment::from_dir(dir, &args.tls)?,
        (_, Some(config), _) => Deployment::from_config(config, &args.tls)?,
        (_, _, Some(proxy)) => Deployment::from_proxy(proxy).with_tls(&args.tls)?,
        (None, None, None) => anyhow::bail!("one of --dir, --config or --proxy is required"),
    }
    .with_credentials(args.auth.credentials()?);
    let timeout = Duration::from_secs(args.timeout);
    let mut session = deployment.admin_session(timeout).await?;

    let before = admin_client::topology(&mut session).await;
    match &before {
        Ok(topology) => {
            let shard = find_shard(&topology.shards, args.shard)?;
            println!("before: {}", shard.describe());
        }
        Err(err) => println!("before: topology unknown ({err})"),
    }
    let target = args.to.as_deref().map(|to| format!(" to {to}")).unwrap_or_default();
    println!("failing over shard {}{target} via the proxy at {}…", args.shard, deployment.proxy);
    let started = Instant::now();
    admin_client::failover(&mut session, args.shard, args.to.as_deref())
        .await
        .map_err(|source| FailoverError::Failed { shard: args.shard, elapsed: started.elapsed(), source })?;
    let elapsed = started.elapsed();
    match admin_client::topology(&mut session).await {
        Ok(topology) => println!("after:  {}", find_shard(&topology.shards, args.shard)?.describe()),
        Err(err) => println!("after:  topology unknown ({err})"),
    }
    println!("switched over in {} ms", elapsed.as_millis());
    Ok(())
}

fn find_shard(shards: &[ProxyShard], id: u32) -> Result<&ProxyShard, FailoverError> {
    shards.iter().find(|s| s.id == id).ok_or_else(|| FailoverError::NoSuchShard {
        shard: id,
        known: match shards.len() {
            0 => "none".into(),
            _ => shards.iter().map(|s| s.id.to_string()).collect::<Vec<_>>().join(", "),
        },
    })
}

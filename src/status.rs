//! `memlog status`: reads the `cluster.json` that `memlog up` wrote and checks each process it
//! records (is the pid alive, does the port answer PING — or, for a journal node, accept a
//! connection), so one command tells whether a local cluster is healthy.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::cluster_file::{pid_alive, ClusterFile, ClusterState, Role};
use crate::probe;

/// How long a process may take to answer its health check.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Flags of `memlog status`.
#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// The `--dir` that `memlog up` was started with.
    #[arg(long, default_value = "./memlog-data")]
    pub dir: PathBuf,
}

/// Prints one line per process; fails unless the cluster runs and every process answers.
pub async fn run(args: StatusArgs) -> anyhow::Result<()> {
    let cluster = ClusterFile::read(&args.dir)?;
    let up_alive = pid_alive(cluster.up_pid);
    println!(
        "cluster {}: {:?}, memlog up pid {} {}",
        cluster.url,
        cluster.state,
        cluster.up_pid,
        if up_alive { "alive" } else { "gone" }
    );
    let mut healthy = cluster.state == ClusterState::Running && up_alive;
    for process in &cluster.processes {
        let alive = pid_alive(process.pid);
        let addr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, process.port));
        let answers = alive
            && match process.role {
                Role::Journal => probe::accepts(addr, PROBE_TIMEOUT).await,
                _ => probe::pings(addr, PROBE_TIMEOUT).await,
            };
        healthy &= answers;
        let role = match &process.role {
            Role::Primary { shard, slots } => format!("primary of shard {shard} (slots {slots})"),
            Role::Replica { shard, replica_of } => format!("replica of shard {shard} (of :{replica_of})"),
            Role::Journal => "journal node".to_string(),
            Role::Proxy => "proxy".to_string(),
        };
        let health = match (alive, answers) {
            (false, _) => "DEAD",
            (true, false) => "NOT ANSWERING",
            (true, true) => "ok",
        };
        println!("  {:<12} {:<40} port {:<5} pid {:<8} {health}", process.name, role, process.port, process.pid);
    }
    anyhow::ensure!(healthy, "the cluster in {} is not healthy", args.dir.display());
    Ok(())
}

//! The journal node server (`memlog journal`).

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;

/// What `memlog journal` is started with.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// Directory holding this node's segments and fencing state.
    pub dir: PathBuf,
    /// Address the node listens on.
    pub listen: SocketAddr,
}

/// Serves until `shutdown` resolves.
pub async fn run(opts: NodeOptions, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let _ = (opts, shutdown);
    anyhow::bail!("the journal node is not built yet")
}

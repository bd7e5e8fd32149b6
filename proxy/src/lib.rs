//! memlog's client endpoint: RESP codec, sessions, slot router, shard sequencers and backend
//! pools, in front of stock Redis shards.

pub mod config;
pub mod router;

use std::future::Future;

/// Runs the proxy until `shutdown` resolves, then drains.
pub async fn serve(cfg: config::ProxyConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let _ = (cfg, shutdown);
    anyhow::bail!("the proxy is not built yet")
}

//! memlog's client endpoint: RESP codec, sessions, slot router, shard sequencers and backend
//! pools, in front of stock Redis shards.

pub mod backend;
pub mod commands;
pub mod config;
pub mod dispatch;
pub mod resp;
pub mod router;
pub mod sequencer;
pub mod server;
pub mod session;
pub mod state;

use std::future::Future;
use std::sync::Arc;

/// Runs the proxy until `shutdown` resolves, then drains.
pub async fn serve(cfg: config::ProxyConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    if let Some(addr) = &cfg.metrics_listen {
        let addr: std::net::SocketAddr = addr.parse().map_err(|e| anyhow::anyhow!("metrics_listen {addr:?}: {e}"))?;
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(addr)
            .install()
            .map_err(|e| anyhow::anyhow!("cannot serve metrics on {addr}: {e}"))?;
    }
    let listener = tokio::net::TcpListener::bind(&cfg.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", cfg.listen))?;
    let proxy = Arc::new(state::Proxy::start(cfg).await?);
    tracing::info!(
        listen = %proxy.cfg.listen,
        shards = proxy.shards.len(),
        commands = proxy.table.len(),
        redis_version = %proxy.redis_version,
        "memlog proxy serving"
    );
    server::accept_loop(proxy, listener, shutdown).await
}

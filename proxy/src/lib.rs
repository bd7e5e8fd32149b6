//! memlog's client endpoint: RESP codec, sessions, slot router, shard sequencers and backend
//! pools, in front of stock Redis shards.

#![deny(unsafe_code)]
#![warn(unreachable_pub)]
// No length, count or time is narrowed by an `as` cast, which would wrap silently: conversions
// go through `try_from` and say what happens past the target's range — saturation where a value
// is only reported, an error where a peer's bytes could cause it (tests' fixtures aside).
#![cfg_attr(not(test), deny(clippy::cast_possible_truncation))]

// Each module belongs to a layer and uses only its own layer and those below it: the order is
// declared in tests/layers.rs (which checks it) and described in docs/architecture.md.
mod access;
mod backend;
mod client_tls;
mod clients;
mod commands;
pub mod config;
mod context;
mod databases;
mod dispatch;
mod eviction;
mod failover;
mod keys;
mod monitor;
pub mod normalize;
mod params;
mod prepare;
mod proxy;
mod pubsub;
mod replies;
pub mod resp;
pub mod router;
mod routing;
mod scripts;
mod sequencer;
mod server;
mod session;
mod shard;
mod snapshot;
mod startup;
mod stats;
mod status;
mod table;
mod tracking;
mod units;

/// What the `memlog` binary needs to reach Redis nodes the way the proxy does (`memlog up`, `memlog status`).
pub use backend::{
    random_secret, AdminConn, AdminError, AuthConfigError, BackendAuth, BackendConfigError, BackendTls,
    BackendTlsError, NodeAccess, NodeStream,
};

use std::future::Future;
use std::sync::Arc;

const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0];

/// Runs the proxy until `shutdown` resolves, then drains.
pub async fn serve(cfg: config::ProxyConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    if let Some(addr) = &cfg.metrics_listen {
        let addr: std::net::SocketAddr = addr.parse().map_err(|e| anyhow::anyhow!("metrics_listen {addr:?}: {e}"))?;
        use metrics_exporter_prometheus::Matcher;
        metrics_exporter_prometheus::PrometheusBuilder::new()
            // Buckets, not summaries, so Grafana can aggregate percentiles across proxies.
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), journal_service::LATENCY_BUCKETS)?
            .set_buckets_for_metric(Matcher::Full("memlog_sequencer_batch_size".into()), BATCH_BUCKETS)?
            .with_http_listener(addr)
            .install()
            .map_err(|e| anyhow::anyhow!("cannot serve metrics on {addr}: {e}"))?;
    }
    let listener = tokio::net::TcpListener::bind(&cfg.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", cfg.listen))?;
    // Start-up waits for the journal and replays it; a SIGTERM meanwhile stops it cleanly.
    tokio::pin!(shutdown);
    let proxy = tokio::select! {
        proxy = startup::start(cfg) => Arc::new(proxy?),
        _ = &mut shutdown => {
            tracing::info!("stopped before serving");
            return Ok(());
        }
    };
    tracing::info!(
        listen = %proxy.cfg.listen,
        shards = proxy.shards.len(),
        commands = proxy.table.len(),
        redis_version = %proxy.redis_version,
        "memlog proxy serving"
    );
    server::accept_loop(proxy, listener, shutdown).await
}

//! The listener: accepts client connections (plain TCP or TLS), enforces `maxclients`, runs a
//! session per connection, and on shutdown stops accepting, lets sessions finish what they
//! already read, and cuts what is left after the grace period.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::client_tls::{reload_on_sighup, ClientTls};
use crate::clients::ClientHandle;
use crate::proxy::Proxy;

pub(crate) async fn accept_loop(
    proxy: Arc<Proxy>,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let tls = match &proxy.cfg.tls {
        Some(cfg) => {
            let tls = Arc::new(ClientTls::load(cfg).map_err(|e| anyhow::anyhow!("[tls]: {e}"))?);
            reload_on_sighup(tls.clone())?;
            Some(tls)
        }
        None => None,
    };
    let drain = CancellationToken::new();
    let mut sessions = JoinSet::new();
    let connected = metrics::gauge!("memlog_connected_clients");
    let accepted = metrics::counter!("memlog_connections_total");
    let rejected = metrics::counter!("memlog_rejected_connections_total");
    tokio::spawn(sample_rates(Arc::downgrade(&proxy)));
    tokio::pin!(shutdown);
    loop {
        let (stream, addr) = tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = sessions.join_next(), if !sessions.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        proxy.stats.connections.fetch_add(1, Ordering::Relaxed);
        accepted.increment(1);
        if proxy.clients.len() >= proxy.cfg.maxclients {
            proxy.stats.rejected_connections.fetch_add(1, Ordering::Relaxed);
            rejected.increment(1);
            tokio::spawn(refuse(stream));
            continue;
        }
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr().unwrap_or(addr);
        let id = proxy.next_client_id.fetch_add(1, Ordering::Relaxed);
        // Every connection starts as `default`, authenticated or not, as in Redis (`createClient`):
        // CLIENT LIST shows `user=default` before AUTH.
        let fd = std::os::fd::AsRawFd::as_raw_fd(&stream) as i64;
        let client = Arc::new(ClientHandle::new(id, addr, local, "default").with_fd(fd));
        proxy.clients.insert(id, client.clone());
        connected.set(proxy.clients.len() as f64);
        let (proxy, drain, tls, connected) = (proxy.clone(), drain.clone(), tls.clone(), connected.clone());
        sessions.spawn(async move {
            serve_connection(proxy.clone(), client, stream, addr, tls, drain).await;
            proxy.clients.remove(&id);
            connected.set(proxy.clients.len() as f64);
        });
    }
    drop(listener);
    tracing::info!(clients = sessions.len(), "draining: finishing requests already received");
    drain.cancel();
    let grace = Duration::from_millis(proxy.cfg.shutdown_grace_ms);
    if tokio::time::timeout(grace, async { while sessions.join_next().await.is_some() {} }).await.is_err() {
        tracing::warn!(clients = sessions.len(), "grace period over; closing remaining connections");
        sessions.abort_all();
    }
    Ok(())
}

async fn serve_connection(
    proxy: Arc<Proxy>,
    client: Arc<ClientHandle>,
    stream: TcpStream,
    addr: SocketAddr,
    tls: Option<Arc<ClientTls>>,
    drain: CancellationToken,
) {
    match tls {
        None => {
            let (reader, writer) = stream.into_split();
            crate::session::run(proxy, client, reader, writer, None, drain).await;
        }
        Some(tls) => match tokio::time::timeout(Duration::from_secs(10), tls.acceptor().accept(stream)).await {
            Ok(Ok(mut tls_stream)) => {
                let certificate_user = match tls.certificate_user(tls_stream.get_ref().1.peer_certificates()) {
                    Ok(user) => user,
                    Err(e) => {
                        tracing::warn!(%addr, "client certificate refused: {e}");
                        let _ = tls_stream.write_all(format!("-ERR memlog: {e}\r\n").as_bytes()).await;
                        let _ = tls_stream.shutdown().await;
                        return;
                    }
                };
                let (reader, writer) = tokio::io::split(tls_stream);
                crate::session::run(proxy, client, reader, writer, certificate_user, drain).await;
            }
            Ok(Err(e)) => tracing::debug!(%addr, "TLS handshake failed: {e}"),
            Err(_) => tracing::debug!(%addr, "TLS handshake timed out"),
        },
    }
}

/// Samples INFO's per-second rates every 100 ms, as Redis's `serverCron` does, for as long as
/// the proxy lives.
async fn sample_rates(proxy: std::sync::Weak<Proxy>) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(proxy) = proxy.upgrade() else { return };
        proxy.stats.sample_rates(crate::units::millis(proxy.started.elapsed()) + 1);
    }
}

async fn refuse(mut stream: TcpStream) {
    let _ = stream.write_all(b"-ERR max number of clients reached\r\n").await;
    let _ = stream.shutdown().await;
}

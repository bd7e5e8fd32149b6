//! The node client against an in-process node server over mutual TLS: every operation,
//! pipelining, subscriptions, unreachable nodes and timeouts; who may do what by role; limits.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use journal_service::cluster_ca::{ClusterCa, ClusterFiles};
use journal_service::cluster_tls::{Role, ServerTls, Transport};
use journal_service::node::{serve, NodeLimits, Security};
use journal_service::storage::{Storage, StorageOptions};
use journal_service::{Entry, NodeClient, NodeError, StreamTail};
use tokio::net::TcpListener;

const S: &str = "shard-0";

fn entry(epoch: u64, lsn: u64) -> Entry {
    Entry { epoch, lsn, timestamp_ms: lsn * 10, commit_lsn: lsn - 1, payload: Bytes::from(format!("payload {lsn}")) }
}

/// A cluster identity in `<dir>/tls`: the node's security and a proxy's transport.
fn identity(dir: &std::path::Path) -> (ClusterFiles, Security, Transport) {
    let files = ClusterCa::generate().unwrap().write(&dir.join("tls")).unwrap();
    let security = Security::Tls(Arc::new(ServerTls::load(files.journal.clone()).unwrap()));
    let proxy = Transport::from_files(Some(&files.proxy), Role::Proxy).unwrap();
    (files, security, proxy)
}

/// A node serving `dir/data` over mutual TLS on a free port, until the test's runtime ends;
/// returns its address and a proxy's transport.
async fn start_node(dir: &std::path::Path) -> (SocketAddr, Transport) {
    start_node_with(dir, NodeLimits::default()).await
}

async fn start_node_with(dir: &std::path::Path, limits: NodeLimits) -> (SocketAddr, Transport) {
    let (_, security, proxy) = identity(dir);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let options = StorageOptions { segment_bytes: 4096, ..Default::default() };
    let storage = Arc::new(Storage::open(&dir.join("data"), options).unwrap());
    tokio::spawn(serve(listener, storage, security, limits, std::future::pending()));
    (addr, proxy)
}

fn client((addr, transport): &(SocketAddr, Transport)) -> NodeClient {
    NodeClient::new(*addr, transport.clone())
}

#[tokio::test]
async fn every_operation_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let client = client(&start_node(dir.path()).await);
    let tail = client.fence(S, 1).await.unwrap();
    assert_eq!(tail, StreamTail { fenced_epoch: 1, first_lsn: 1, last_lsn: 0, last_epoch: 0, commit_lsn: 0 });
    for lsn in 1..=20 {
        client.append(S, entry(1, lsn)).await.unwrap();
    }
    assert_eq!(client.read(S, 5, 7, usize::MAX).await.unwrap(), vec![entry(1, 5), entry(1, 6), entry(1, 7)]);
    assert_eq!(client.read(S, 5, 20, 1).await.unwrap().len(), 1);
    assert_eq!(
        client.append(S, entry(1, 5)).await.unwrap_err(),
        NodeError::OutOfOrder { stream: S.into(), expected_lsn: 21 }
    );
    assert_eq!(client.fence(S, 3).await.unwrap().last_lsn, 20);
    assert_eq!(
        client.append(S, entry(2, 21)).await.unwrap_err(),
        NodeError::Fenced { stream: S.into(), fenced_epoch: 3 }
    );
    assert_eq!(
        client.truncate_after(S, 2, 10).await.unwrap_err(),
        NodeError::Fenced { stream: S.into(), fenced_epoch: 3 }
    );
    client.truncate_after(S, 3, 10).await.unwrap();
    assert_eq!(
        client.truncate_below(S, 2, 8).await.unwrap_err(),
        NodeError::Fenced { stream: S.into(), fenced_epoch: 3 }
    );
    client.truncate_below(S, 3, 8).await.unwrap();
    let status = client.status().await.unwrap();
    let tail = &status.streams[S];
    assert_eq!((tail.fenced_epoch, tail.last_lsn, tail.last_epoch, tail.commit_lsn), (3, 10, 1, 9));
    assert!(tail.first_lsn <= 8);
    assert!(matches!(client.append("bad/name", entry(3, 1)).await, Err(NodeError::Protocol(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_made_in_order_from_one_task_are_applied_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let client = client(&start_node(dir.path()).await);
    let pending: Vec<_> = (1..=2000).map(|lsn| client.append(S, entry(1, lsn))).collect();
    for (lsn, p) in (1u64..).zip(pending) {
        p.await.unwrap_or_else(|e| panic!("append {lsn}: {e}"));
    }
    let read = client.read(S, 1, 2000, usize::MAX).await.unwrap();
    assert_eq!(read.len(), 2000);
    assert!(read.iter().zip(1..).all(|(e, lsn)| *e == entry(1, lsn)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clones_pipeline_many_streams_on_one_connection() {
    let dir = tempfile::tempdir().unwrap();
    let client = client(&start_node(dir.path()).await);
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                let stream = format!("shard-{i}");
                for lsn in 1..=50 {
                    client.append(&stream, entry(1, lsn)).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let status = client.status().await.unwrap();
    assert_eq!(status.streams.len(), 8);
    assert!(status.streams.values().all(|t| t.last_lsn == 50));
}

#[tokio::test]
async fn subscriptions_get_existing_then_new_entries() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path()).await;
    let writer = client(&node);
    for lsn in 1..=5 {
        writer.append(S, entry(1, lsn)).await.unwrap();
    }
    let reader = client(&node);
    let mut entries = reader.subscribe(S, 3).await.unwrap();
    for lsn in 6..=8 {
        writer.append(S, entry(1, lsn)).await.unwrap();
    }
    for lsn in 3..=8 {
        let got = tokio::time::timeout(Duration::from_secs(5), entries.recv()).await.unwrap().unwrap().unwrap();
        assert_eq!(got, entry(1, lsn));
    }
    // A truncation of what it may have seen ends the subscription with an error.
    writer.truncate_after(S, 2, 6).await.unwrap();
    let end = tokio::time::timeout(Duration::from_secs(5), entries.recv()).await.unwrap().unwrap();
    assert!(matches!(end, Err(NodeError::Protocol(m)) if m.contains("truncated")));
    // Other calls on the subscriber's connection still work.
    assert_eq!(reader.status().await.unwrap().streams[S].last_lsn, 6);
}

#[tokio::test]
async fn an_unreachable_node_fails_fast_and_a_started_one_is_used_next_time() {
    let dir = tempfile::tempdir().unwrap();
    let port = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap().port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (_, security, proxy) = identity(dir.path());
    let client = NodeClient::new(addr, proxy);
    assert!(matches!(client.append(S, entry(1, 1)).await, Err(NodeError::Unreachable(_))));
    let listener = TcpListener::bind(addr).await.unwrap();
    let storage = Arc::new(Storage::open(&dir.path().join("data"), StorageOptions::default()).unwrap());
    tokio::spawn(serve(listener, storage, security, NodeLimits::default(), std::future::pending()));
    client.append(S, entry(1, 1)).await.unwrap();
}

#[tokio::test]
async fn a_silent_node_times_out() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _hold = tokio::spawn(async move {
        let (_socket, _) = listener.accept().await.unwrap();
        std::future::pending::<()>().await
    });
    let client = NodeClient::with_timeout(addr, Transport::Plain, Duration::from_millis(300));
    assert_eq!(client.status().await.unwrap_err(), NodeError::Timeout);
}

#[tokio::test]
async fn only_a_proxy_certificate_changes_a_stream_and_others_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (files, security, proxy) = identity(dir.path());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let storage = Arc::new(Storage::open(&dir.path().join("data"), StorageOptions::default()).unwrap());
    tokio::spawn(serve(listener, storage, security, NodeLimits::default(), std::future::pending()));
    let owner = NodeClient::new(addr, proxy);
    owner.fence(S, 1).await.unwrap();
    for lsn in 1..=3 {
        owner.append(S, entry(1, lsn)).await.unwrap();
    }
    let before = owner.status().await.unwrap();

    // A journal node's certificate may read, never change.
    let journal = NodeClient::new(addr, Transport::from_files(Some(&files.journal), Role::Journal).unwrap());
    assert_eq!(journal.read(S, 1, 3, usize::MAX).await.unwrap().len(), 3);
    for refused in [
        journal.append(S, entry(9, 4)).await.unwrap_err(),
        journal.fence(S, 9).await.map(|_| ()).unwrap_err(),
        journal.truncate_after(S, 9, 0).await.unwrap_err(),
        journal.truncate_below(S, 9, 3).await.unwrap_err(),
    ] {
        assert!(matches!(&refused, NodeError::Protocol(m) if m.contains("permission denied")), "{refused}");
    }
    // No certificate, or one of another CA: the handshake fails, nothing is read.
    let stranger = tempfile::tempdir().unwrap();
    let (_, _, other_ca) = identity(stranger.path());
    for transport in [Transport::Plain, other_ca] {
        let peer = NodeClient::with_timeout(addr, transport, Duration::from_secs(2));
        assert!(matches!(peer.truncate_below(S, u64::MAX, 1 << 61).await, Err(NodeError::Unreachable(_))));
        assert!(matches!(peer.fence(S, u64::MAX).await, Err(NodeError::Unreachable(_))));
    }
    assert_eq!(owner.status().await.unwrap(), before);
}

#[tokio::test]
async fn a_certificate_of_the_cluster_ca_without_a_role_is_refused_in_the_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ClusterCa::generate().unwrap();
    let files = ca.write(&dir.path().join("tls")).unwrap();
    let roleless = ca.issue_for_names(vec!["somebody.example".into()]).unwrap();
    std::fs::write(&files.proxy.cert, roleless.cert).unwrap();
    std::fs::write(&files.proxy.key, roleless.key).unwrap();
    // The client side refuses to use it at all...
    assert!(Transport::from_files(Some(&files.proxy), Role::Proxy).is_err());
    // ...and the node refuses it when presented (a client built without that check).
    let security = Security::Tls(Arc::new(ServerTls::load(files.journal.clone()).unwrap()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let storage = Arc::new(Storage::open(&dir.path().join("data"), StorageOptions::default()).unwrap());
    tokio::spawn(serve(listener, storage, security, NodeLimits::default(), std::future::pending()));
    let config = rustls_client_config(&files.proxy);
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls_pki_types::ServerName::try_from(Role::Journal.dns_name()).unwrap();
    let refused = async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tls = connector.connect(name, tcp).await?;
        // TLS 1.3: the client finishes first; the node's refusal arrives on the first read.
        tls.write_all(&[0; 16]).await?;
        let mut byte = [0u8; 1];
        match tls.read(&mut byte).await? {
            0 => Err(std::io::Error::other("closed")),
            _ => Ok(()),
        }
    };
    assert!(refused.await.is_err(), "a roleless certificate got an answer");
}

/// A rustls client config from identity files, without memlog's role check on its own certificate.
fn rustls_client_config(files: &journal_service::cluster_tls::TlsFiles) -> rustls::ClientConfig {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(&files.ca).unwrap()).unwrap();
    let chain = vec![CertificateDer::from_pem_file(&files.cert).unwrap()];
    let key = PrivateKeyDer::from_pem_file(&files.key).unwrap();
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_are_bounded_and_all_answered() {
    let dir = tempfile::tempdir().unwrap();
    let limits = NodeLimits { max_in_flight: 4, ..NodeLimits::default() };
    let client = client(&start_node_with(dir.path(), limits).await);
    let pending: Vec<_> = (1..=500).map(|lsn| client.append(S, entry(1, lsn))).collect();
    for (lsn, p) in (1u64..).zip(pending) {
        p.await.unwrap_or_else(|e| panic!("append {lsn}: {e}"));
    }
    assert_eq!(client.status().await.unwrap().streams[S].last_lsn, 500);
}

#[tokio::test]
async fn an_idle_connection_is_closed_and_the_client_reconnects() {
    use tokio::io::AsyncReadExt;
    let dir = tempfile::tempdir().unwrap();
    let (files, security, proxy) = identity(dir.path());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let storage = Arc::new(Storage::open(&dir.path().join("data"), StorageOptions::default()).unwrap());
    let limits = NodeLimits { idle_timeout: Duration::from_millis(300), ..NodeLimits::default() };
    tokio::spawn(serve(listener, storage, security, limits, std::future::pending()));
    // An authenticated peer that sends nothing is cut after the idle timeout.
    let connector = tokio_rustls::TlsConnector::from(Arc::new(rustls_client_config(&files.proxy)));
    let name = rustls_pki_types::ServerName::try_from(Role::Journal.dns_name()).unwrap();
    let mut silent = connector.connect(name, tokio::net::TcpStream::connect(addr).await.unwrap()).await.unwrap();
    let started = std::time::Instant::now();
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut byte)).await.unwrap();
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(started.elapsed() >= Duration::from_millis(250), "closed after {:?}", started.elapsed());
    // A client whose connection was closed that way opens a new one on its next call.
    let client = NodeClient::new(addr, proxy);
    client.append(S, entry(1, 1)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    client.append(S, entry(1, 2)).await.unwrap();
}

#[tokio::test]
async fn connections_past_the_limit_are_closed_and_members_still_get_in_after() {
    let dir = tempfile::tempdir().unwrap();
    let limits =
        NodeLimits { max_handshakes: 2, handshake_timeout: Duration::from_millis(300), ..NodeLimits::default() };
    let node = start_node_with(dir.path(), limits).await;
    // Two silent peers take both handshake slots; a third connection is closed at once.
    let _silent: Vec<_> = futures_join(node.0, 2).await;
    let mut third = tokio::net::TcpStream::connect(node.0).await.unwrap();
    let mut byte = [0u8; 1];
    use tokio::io::AsyncReadExt;
    let closed = tokio::time::timeout(Duration::from_secs(2), third.read(&mut byte)).await.unwrap();
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
    // Once the silent ones time out, a member is served.
    tokio::time::sleep(Duration::from_millis(500)).await;
    client(&node).append(S, entry(1, 1)).await.unwrap();
}

async fn futures_join(addr: SocketAddr, n: usize) -> Vec<tokio::net::TcpStream> {
    let mut held = Vec::new();
    for _ in 0..n {
        held.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    // Let the node accept them before anything else connects.
    tokio::time::sleep(Duration::from_millis(100)).await;
    held
}

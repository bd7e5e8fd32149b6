//! The node client against an in-process node server: every operation, pipelining, subscriptions,
//! unreachable nodes and timeouts.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use journal_service::node::serve;
use journal_service::storage::{Storage, StorageOptions};
use journal_service::{Entry, NodeClient, NodeError, StreamTail};
use tokio::net::TcpListener;

const S: &str = "shard-0";

fn entry(epoch: u64, lsn: u64) -> Entry {
    Entry { epoch, lsn, timestamp_ms: lsn * 10, commit_lsn: lsn - 1, payload: Bytes::from(format!("payload {lsn}")) }
}

/// A node serving `dir` on a free port, until the test's runtime ends.
async fn start_node(dir: &std::path::Path) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let storage = Arc::new(Storage::open(dir, StorageOptions { segment_bytes: 4096, ..Default::default() }).unwrap());
    tokio::spawn(serve(listener, storage, std::future::pending()));
    addr
}

#[tokio::test]
async fn every_operation_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let client = NodeClient::new(start_node(dir.path()).await);
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
    client.truncate_below(S, 8).await.unwrap();
    let status = client.status().await.unwrap();
    let tail = &status.streams[S];
    assert_eq!((tail.fenced_epoch, tail.last_lsn, tail.last_epoch, tail.commit_lsn), (3, 10, 1, 9));
    assert!(tail.first_lsn <= 8);
    assert!(matches!(client.append("bad/name", entry(3, 1)).await, Err(NodeError::Protocol(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_made_in_order_from_one_task_are_applied_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let client = NodeClient::new(start_node(dir.path()).await);
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
    let client = NodeClient::new(start_node(dir.path()).await);
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
    let addr = start_node(dir.path()).await;
    let writer = NodeClient::new(addr);
    for lsn in 1..=5 {
        writer.append(S, entry(1, lsn)).await.unwrap();
    }
    let reader = NodeClient::new(addr);
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
    let client = NodeClient::new(addr);
    assert!(matches!(client.append(S, entry(1, 1)).await, Err(NodeError::Unreachable(_))));
    let listener = TcpListener::bind(addr).await.unwrap();
    let storage = Arc::new(Storage::open(dir.path(), StorageOptions::default()).unwrap());
    tokio::spawn(serve(listener, storage, std::future::pending()));
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
    let client = NodeClient::with_timeout(addr, Duration::from_millis(300));
    assert_eq!(client.status().await.unwrap_err(), NodeError::Timeout);
}

//! Hostile peers against real journal nodes (`memlog journal` with the cluster identity): raw
//! frames that read, append, fence and truncate, sent without a certificate, with a
//! certificate of another CA, and as a proxy holding a stale epoch, are refused and change
//! nothing; 10,000 idle connections do not keep the proxy from recovering and writing; a node
//! refuses to start without its identity unless told `--insecure-no-tls`.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::cluster::{ClusterOptions, DurableCluster};
use common::cluster_tls::{proxy_transport, raw_connect};
use common::load::Load;
use journal_service::cluster_ca::ClusterCa;
use journal_service::protocol::{self, Request, Response};
use journal_service::{Entry, NodeClient, NodeError, StreamTail};

const STREAM: &str = "shard-0";
/// The epoch the legitimate writer holds.
const EPOCH: u64 = 5;

fn entry(epoch: u64, lsn: u64) -> Entry {
    Entry { epoch, lsn, timestamp_ms: 1_700_000_000_000 + lsn, commit_lsn: lsn - 1, payload: Bytes::from("forged") }
}

/// The frames of every kind of request a hostile peer would send, at `epoch`: a read of the
/// whole stream, an append at the next LSN, a fence (the maximum epoch when `epoch` is),
/// truncations above and below.
fn hostile_frames(epoch: u64, next_lsn: u64) -> BytesMut {
    let requests = [
        Request::Read { stream: STREAM.into(), from_lsn: 1, to_lsn: u64::MAX, max_bytes: 1 << 20 },
        Request::Append { stream: STREAM.into(), entry: entry(epoch, next_lsn) },
        Request::Fence { stream: STREAM.into(), epoch },
        Request::TruncateAfter { stream: STREAM.into(), epoch, lsn: 0 },
        Request::TruncateBelow { stream: STREAM.into(), epoch, lsn: 1 << 61 },
    ];
    let mut bytes = BytesMut::new();
    for (id, request) in (1..).zip(&requests) {
        protocol::encode_request(id, request, &mut bytes);
    }
    bytes
}

/// A node with a stream written at `EPOCH` by a proxy; returns the node and the stream's tail.
async fn node_with_a_stream(dir: &std::path::Path) -> (common::Proc, NodeClient, StreamTail) {
    let node = common::spawn_journal(dir, 0);
    let owner = NodeClient::new(node.addr, proxy_transport());
    owner.fence(STREAM, EPOCH).await.unwrap();
    for lsn in 1..=20 {
        owner.append(STREAM, entry(EPOCH, lsn)).await.unwrap();
    }
    let tail = owner.status().await.unwrap().streams[STREAM].clone();
    assert_eq!((tail.first_lsn, tail.last_lsn, tail.fenced_epoch), (1, 20, EPOCH));
    (node, owner, tail)
}

/// Reads whatever the node sends back until it closes (or 5 s pass).
fn drain(socket: &mut impl Read) -> std::io::Result<Vec<u8>> {
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match socket.read(&mut chunk) {
            Ok(0) => return Ok(received),
            Ok(n) => received.extend_from_slice(&chunk[..n]),
            Err(e) if received.is_empty() => return Err(e),
            Err(_) => return Ok(received),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_without_a_certificate_gets_no_reply_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (node, owner, before) = node_with_a_stream(&tmp.path().join("node")).await;
    // The frames of the attack: a fence at 2^64-1 and a truncation below 2^61, with
    // a read, an append and a truncate_after, straight onto the TCP port.
    let mut socket = TcpStream::connect(node.addr).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    socket.write_all(&hostile_frames(u64::MAX, 21)).unwrap();
    let answer = drain(&mut socket).unwrap_or_default();
    let mut frames = BytesMut::from(&answer[..]);
    assert!(
        !matches!(protocol::split_frame(&mut frames), Ok(Some(_))),
        "the node answered a peer without a certificate with a frame: {answer:?}"
    );
    assert_eq!(owner.status().await.unwrap().streams[STREAM], before, "the stream changed");
    assert_eq!(
        owner.read(STREAM, 1, 20, usize::MAX).await.unwrap(),
        (1..=20).map(|l| entry(EPOCH, l)).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_of_another_ca_is_refused_in_the_handshake_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (node, owner, before) = node_with_a_stream(&tmp.path().join("node")).await;
    // A proxy certificate, only not of this cluster's CA (the client trusts this node's CA,
    // so only the node's check of the client can refuse).
    let other = ClusterCa::generate().unwrap().write(&tmp.path().join("other-ca")).unwrap();
    let mut impostor = other.proxy.clone();
    impostor.ca = common::cluster_tls::files().proxy.ca.clone();
    let mut socket = raw_connect(node.addr, &impostor).unwrap();
    let sent = socket.write_all(&hostile_frames(u64::MAX, 21)).and_then(|()| socket.flush());
    let answer = sent.and_then(|()| drain(&mut socket));
    assert!(
        answer.as_ref().map_or(true, |bytes| bytes.is_empty()),
        "the node answered a certificate of another CA: {answer:?}"
    );
    assert_eq!(owner.status().await.unwrap().streams[STREAM], before, "the stream changed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_with_a_stale_epoch_can_read_but_not_append_fence_or_truncate() {
    let tmp = tempfile::tempdir().unwrap();
    let (node, owner, before) = node_with_a_stream(&tmp.path().join("node")).await;
    let mut socket = raw_connect(node.addr, &common::cluster_tls::files().proxy).unwrap();
    socket.write_all(&hostile_frames(EPOCH - 1, 21)).unwrap();
    socket.flush().unwrap();
    // Five replies, in any order; then close our side so the node ends the connection.
    let mut replies = Vec::new();
    let mut buf = BytesMut::new();
    while replies.len() < 5 {
        let mut chunk = [0u8; 65536];
        let n = socket.read(&mut chunk).expect("the node replies");
        assert!(n > 0, "the node closed after {} replies", replies.len());
        buf.extend_from_slice(&chunk[..n]);
        while let Some(frame) = protocol::split_frame(&mut buf).unwrap() {
            replies.push((frame.request_id, protocol::decode_response(frame).unwrap()));
        }
    }
    replies.sort_by_key(|(id, _)| *id);
    assert!(matches!(&replies[0], (1, Response::Entries(entries)) if entries.len() == 20), "{:?}", replies[0]);
    for (id, reply) in &replies[1..] {
        assert!(
            matches!(reply, Response::Error(NodeError::Fenced { fenced_epoch: EPOCH, .. })),
            "request {id} at a stale epoch: {reply:?}"
        );
    }
    assert_eq!(owner.status().await.unwrap().streams[STREAM], before, "the stream changed");
}

#[test]
fn a_node_without_its_identity_refuses_to_start_unless_told_insecure_and_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", common::free_port());
    let output = Command::new(common::memlog_bin())
        .args(["journal", "--listen", &listen, "--dir"])
        .arg(tmp.path().join("node"))
        .output()
        .unwrap();
    assert!(!output.status.success(), "a journal node started without TLS");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--cluster-ca") && stderr.contains("--insecure-no-tls"), "{stderr}");

    let port = common::free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut cmd = Command::new(common::memlog_bin());
    cmd.args(["journal", "--insecure-no-tls", "--listen", &addr.to_string(), "--dir"]).arg(tmp.path().join("node"));
    let log = tmp.path().join("insecure.log");
    let node = common::spawn_listening("insecure-journal", cmd, addr, &log);
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("INSECURE"), "{logged}");
    drop(node);
}

/// Opens `count` TCP connections to `addr` that never send a byte, raising this process's
/// descriptor limit first if it is too low to hold them.
fn idle_connections(addr: SocketAddr, count: usize) -> Vec<TcpStream> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read/write the struct passed.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        let wanted = (count as u64 + 1024).min(limit.rlim_max);
        if limit.rlim_cur < wanted {
            limit.rlim_cur = wanted;
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
        }
    }
    assert!(limit.rlim_cur as usize > count, "the descriptor limit {} cannot hold {count} connections", limit.rlim_cur);
    (0..count).map(|_| TcpStream::connect(addr).expect("an idle connection")).collect()
}

#[test]
fn ten_thousand_idle_connections_do_not_stop_recovery_or_appends() {
    let mut cluster = DurableCluster::start(ClusterOptions::default());
    let load = Load::start(cluster.proxy_addr(), 4);
    assert!(load.wait_for_more_acks(2_000, Duration::from_secs(30)), "no load before\n{}", cluster.proxy_log());
    // Node 0 is needed for a quorum from now on: node 2 is down.
    cluster.kill_journal(2);
    let flooded = cluster.journal_addrs()[0];
    let held = idle_connections(flooded, 10_000);
    cluster.kill_proxy();
    let took = cluster.start_proxy();
    println!("10,000 idle connections held on {flooded}; the proxy recovered in {took:?}");
    assert!(
        load.wait_for_more_acks(2_000, Duration::from_secs(30)),
        "no appends after the proxy restarted beside 10,000 idle connections\n{}",
        cluster.proxy_log()
    );
    drop(held);
    cluster.assert_nothing_lost(load);
}

//! The journal's quorum client against real `memlog journal` processes: node deaths (kill -9),
//! frozen nodes (SIGSTOP), lost quorum, stale writers, and a writer that dies mid-stream. In
//! every case each acknowledged entry must be read back intact by a `Reader`.

mod common;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::cluster_tls::proxy_transport;
use common::{spawn_journal_with, Proc};
use journal_service::meta::MetaStore;
use journal_service::quorum::{recover, QuorumConfig, QuorumWriter, Reader, WriteError};
use journal_service::NodeClient;

const STREAM: &str = "shard-0";
const SHARD: u32 = 0;

/// Three journal nodes, each restartable on its own directory and port, plus a `file:` metadata store.
struct Cluster {
    nodes: Vec<Option<Proc>>,
    addrs: Vec<SocketAddr>,
    /// More `memlog journal` arguments, for every start and restart.
    args: Vec<String>,
    meta: MetaStore,
    /// Last, so the nodes' logs are still there when they are dropped (and shown if the test
    /// failed).
    dir: tempfile::TempDir,
}

impl Cluster {
    async fn start(n: usize) -> Cluster {
        Cluster::start_with(n, &[]).await
    }

    async fn start_with(n: usize, args: &[&str]) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let mut nodes = Vec::new();
        let mut addrs = Vec::new();
        for i in 0..n {
            let proc = spawn_journal_with(&dir.path().join(format!("node-{i}")), 0, &args);
            addrs.push(proc.addr);
            nodes.push(Some(proc));
        }
        let meta = MetaStore::open(&format!("file:{}", dir.path().join("meta.json").display())).await.unwrap();
        Cluster { dir, nodes, addrs, args, meta }
    }

    fn node_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("node-{i}"))
    }

    fn kill9(&mut self, i: usize) {
        let mut proc = self.nodes[i].take().expect("node is running");
        proc.kill9();
    }

    fn restart(&mut self, i: usize) {
        assert!(self.nodes[i].is_none(), "node {i} is still running");
        self.nodes[i] = Some(spawn_journal_with(&self.node_dir(i), self.addrs[i].port(), &self.args));
    }

    fn node(&self, i: usize) -> &Proc {
        self.nodes[i].as_ref().expect("node is running")
    }

    async fn writer(&self, id: &str) -> QuorumWriter {
        self.writer_with(id, config()).await
    }

    async fn writer_with(&self, id: &str, cfg: QuorumConfig) -> QuorumWriter {
        recover(&self.meta, SHARD, STREAM, &self.addrs, cfg, id).await.unwrap_or_else(|e| panic!("recover: {e}"))
    }
}

fn config() -> QuorumConfig {
    QuorumConfig {
        append_timeout: Duration::from_secs(3),
        node_timeout: Duration::from_millis(800),
        transport: proxy_transport(),
        ..QuorumConfig::default()
    }
}

fn payload(tag: &str, i: usize) -> Bytes {
    Bytes::from(format!(
        "*3\r\n$3\r\nSET\r\n$8\r\nkey-{i:04}\r\n${}\r\n{tag}-{i}\r\n",
        tag.len() + 1 + i.to_string().len()
    ))
}

/// Issues `count` appends back to back (pipelined), then waits for all of them.
async fn append_many(
    writer: &QuorumWriter,
    tag: &str,
    range: std::ops::Range<usize>,
) -> Vec<(Bytes, Result<u64, WriteError>)> {
    let pending: Vec<_> = range.map(|i| (payload(tag, i), writer.append(payload(tag, i)))).collect();
    let mut results = Vec::new();
    for (payload, fut) in pending {
        results.push((payload, fut.await));
    }
    results
}

/// The acknowledged `(lsn, payload)` pairs; panics on any failure.
fn all_acked(results: Vec<(Bytes, Result<u64, WriteError>)>) -> Vec<(u64, Bytes)> {
    results.into_iter().map(|(p, r)| (r.unwrap_or_else(|e| panic!("append failed: {e}")), p)).collect()
}

/// Every acknowledged entry is read back intact, at its LSN, from `nodes`; LSNs are distinct
/// and increase with the order of acknowledgement.
async fn assert_read_back(nodes: &[SocketAddr], commit_lsn: u64, acked: &[(u64, Bytes)]) {
    assert_read_back_from(nodes, 1, commit_lsn, acked).await;
}

/// `assert_read_back` of what the nodes keep from `from` on (`acked` from there too).
async fn assert_read_back_from(nodes: &[SocketAddr], from: u64, commit_lsn: u64, acked: &[(u64, Bytes)]) {
    assert!(acked.windows(2).all(|w| w[0].0 < w[1].0), "acknowledged LSNs increase");
    let read = Reader::new(STREAM, nodes, &proxy_transport())
        .read(from, commit_lsn)
        .await
        .unwrap_or_else(|e| panic!("read: {e}"));
    let by_lsn: std::collections::HashMap<u64, &Bytes> = read.iter().map(|e| (e.lsn, &e.payload)).collect();
    for (lsn, payload) in acked {
        assert_eq!(by_lsn.get(lsn), Some(&payload), "acknowledged lsn {lsn} is read back intact");
    }
}

/// Polls `cond` every 20 ms until it holds, or panics after `timeout`.
async fn eventually<F, Fut>(what: &str, timeout: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `addr`'s last LSN for the stream (0 if it holds none or does not answer).
async fn node_last_lsn(addr: SocketAddr) -> u64 {
    match NodeClient::new(addr, proxy_transport()).status().await {
        Ok(status) => status.streams.get(STREAM).map_or(0, |t| t.last_lsn),
        Err(_) => 0,
    }
}

/// `addr`'s first stored LSN of the stream.
async fn node_first_lsn(addr: SocketAddr) -> u64 {
    NodeClient::new(addr, proxy_transport()).status().await.expect("node status").streams[STREAM].first_lsn
}

/// Waits until `node` is live again and holds the writer's whole log.
async fn wait_caught_up(writer: &QuorumWriter, addr: SocketAddr, node: usize) {
    let head = writer.next_lsn() - 1;
    eventually("the returning node to catch up", Duration::from_secs(20), || async {
        writer.live_nodes()[node] && node_last_lsn(addr).await >= head
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_down_keeps_committing_and_is_brought_up_to_date() {
    let mut cluster = Cluster::start(3).await;
    let writer = cluster.writer("writer-a").await;
    let mut acked = all_acked(append_many(&writer, "a", 0..20).await);

    cluster.kill9(2);
    acked.extend(all_acked(append_many(&writer, "a", 20..80).await));
    assert!(!writer.live_nodes()[2], "the dead node is not counted as in sync");

    cluster.restart(2);
    acked.extend(all_acked(append_many(&writer, "a", 80..90).await));
    wait_caught_up(&writer, cluster.addrs[2], 2).await;
    acked.extend(all_acked(append_many(&writer, "a", 90..100).await));

    // The returned node alone now serves every acknowledged entry.
    assert_read_back(&cluster.addrs[2..3], writer.commit_lsn(), &acked).await;
    assert_read_back(&cluster.addrs, writer.commit_lsn(), &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_node_does_not_stop_commits_and_rejoins() {
    let cluster = Cluster::start(3).await;
    let writer = cluster.writer("writer-a").await;
    let mut acked = all_acked(append_many(&writer, "a", 0..10).await);

    cluster.node(1).stop();
    let started = Instant::now();
    acked.extend(all_acked(append_many(&writer, "a", 10..60).await));
    assert!(started.elapsed() < config().append_timeout, "commits did not wait for the frozen node");

    cluster.node(1).cont();
    wait_caught_up(&writer, cluster.addrs[1], 1).await;
    acked.extend(all_acked(append_many(&writer, "a", 60..70).await));
    assert_read_back(&cluster.addrs[1..2], writer.commit_lsn(), &acked).await;
}

/// An entry sent right behind a large one gets the large one's time too: a node takes a
/// stream's entries in order, so the small one cannot commit before the large one is across and
/// fsynced (the parts of a write over one entry are appended back to back). Two nodes frozen for
/// longer than the append timeout but less than the large entry's transfer allowance: both
/// entries commit. Before, the small one's own deadline (timeout + its few bytes) ran out while
/// it waited behind the large one, and the writer stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_queued_behind_a_large_one_gets_the_time_the_large_one_gets() {
    let cluster = Cluster::start(3).await;
    let cfg = QuorumConfig { append_timeout: Duration::from_millis(500), ..config() };
    let writer = cluster.writer_with("writer-a", cfg).await;
    // 16 MiB: 2 s of transfer allowance on top of each timeout (`node_client::transfer_allowance`).
    let large = Bytes::from(vec![b'x'; 16 << 20]);
    cluster.node(1).stop();
    cluster.node(2).stop();
    // Awaited from the start, as the proxy's applier awaits its appends.
    let large = tokio::spawn(writer.append(large));
    let small = tokio::spawn(writer.append(payload("behind", 0)));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    cluster.node(1).cont();
    cluster.node(2).cont();
    let (large, small) = (large.await.unwrap(), small.await.unwrap());
    let (large, small) = (large.expect("the large entry commits"), small.expect("the small one behind it commits"));
    assert_eq!(small, large + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_down_fails_with_no_quorum_and_acknowledges_nothing() {
    let mut cluster = Cluster::start(3).await;
    let writer = cluster.writer("writer-a").await;
    let acked = all_acked(append_many(&writer, "a", 0..10).await);

    cluster.kill9(1);
    cluster.kill9(2);
    let results = append_many(&writer, "a", 10..15).await;
    match &results[0].1 {
        Err(WriteError::NoQuorum { acked, needed, errors }) => {
            assert!(*acked < 2, "acked {acked}");
            assert_eq!(*needed, 2);
            assert!(errors.iter().any(|(a, _)| *a == cluster.addrs[1]), "the error names the dead nodes: {errors:?}");
            assert!(errors.iter().any(|(a, _)| *a == cluster.addrs[2]), "the error names the dead nodes: {errors:?}");
        }
        other => panic!("expected NoQuorum, got {other:?}"),
    }
    for (_, result) in &results {
        assert!(result.is_err(), "nothing is acknowledged without a quorum: {result:?}");
    }
    assert!(matches!(writer.append(payload("a", 99)).await, Err(WriteError::Stopped { .. })));
    drop(writer);

    // Back to a quorum: a new writer recovers, and every acknowledged entry is there.
    cluster.restart(1);
    cluster.restart(2);
    let successor = cluster.writer("writer-b").await;
    assert_eq!(successor.epoch(), 2);
    assert_read_back(&cluster.addrs, successor.commit_lsn(), &acked).await;
    let read = Reader::new(STREAM, &cluster.addrs, &proxy_transport()).read(1, successor.commit_lsn()).await.unwrap();
    for entry in &read {
        let known = (0..15).any(|i| payload("a", i) == entry.payload);
        assert!(known, "lsn {} holds a payload nobody appended", entry.lsn);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_writer_is_fenced_after_a_new_writer_recovers() {
    let cluster = Cluster::start(3).await;
    let old = cluster.writer("writer-a").await;
    let mut acked = all_acked(append_many(&old, "a", 0..10).await);

    let new = cluster.writer("writer-b").await;
    assert_eq!((old.epoch(), new.epoch()), (1, 2));
    match old.append(payload("stale", 0)).await {
        Err(WriteError::Fenced { epoch }) => assert_eq!(epoch, 2),
        other => panic!("a stale writer's append must fail with Fenced, got {other:?}"),
    }
    assert!(old.append(payload("stale", 1)).await.is_err(), "it stays stopped");

    acked.extend(all_acked(append_many(&new, "b", 0..10).await));
    assert_read_back(&cluster.addrs, new.commit_lsn(), &acked).await;
    let read = Reader::new(STREAM, &cluster.addrs, &proxy_transport()).read(1, new.commit_lsn()).await.unwrap();
    assert!(
        read.iter().all(|e| !String::from_utf8_lossy(&e.payload).contains("stale")),
        "the stale writer never extended the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_a_node_during_appends_then_restart_it() {
    let mut cluster = Cluster::start(3).await;
    let writer = std::sync::Arc::new(cluster.writer("writer-a").await);
    let appender = {
        let writer = writer.clone();
        tokio::spawn(async move {
            let mut acked = Vec::new();
            for round in 0..40 {
                acked.extend(all_acked(append_many(&writer, "k", round * 10..round * 10 + 10).await));
            }
            acked
        })
    };
    eventually("appends to start", Duration::from_secs(10), || async { writer.commit_lsn() > 60 }).await;
    cluster.kill9(0);
    let at_kill = writer.commit_lsn();
    eventually("commits to continue without node 0", Duration::from_secs(10), || async {
        writer.commit_lsn() > at_kill + 50
    })
    .await;
    cluster.restart(0);
    let acked = appender.await.unwrap();
    assert_eq!(acked.len(), 400);
    wait_caught_up(&writer, cluster.addrs[0], 0).await;
    assert_read_back(&cluster.addrs[0..1], writer.commit_lsn(), &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_dropped_mid_stream_is_recovered_by_the_next() {
    let mut cluster = Cluster::start(3).await;
    let writer = cluster.writer("writer-a").await;
    let acked = all_acked(append_many(&writer, "a", 0..50).await);
    // Appends in flight when the writer goes away: their outcome is the next writer's call.
    let in_flight: Vec<_> = (50..80).map(|i| writer.append(payload("a", i))).collect();
    drop(in_flight);
    drop(writer);

    // The next writer recovers with one node down, as after a crash that took a node with it.
    cluster.kill9(1);
    let next = cluster.writer("writer-b").await;
    let read = Reader::new(STREAM, &cluster.addrs, &proxy_transport()).read(1, next.commit_lsn()).await.unwrap();
    assert_read_back(&cluster.addrs, next.commit_lsn(), &acked).await;
    // Whatever of the in-flight appends survived is a gap-free continuation, in order.
    let survived: Vec<Bytes> = read.iter().map(|e| e.payload.clone()).skip(50).collect();
    let expected: Vec<Bytes> = (50..50 + survived.len()).map(|i| payload("a", i)).collect();
    assert_eq!(survived, expected, "recovered in-flight entries are a prefix of what was sent");

    let more = all_acked(append_many(&next, "b", 0..20).await);
    cluster.restart(1);
    wait_caught_up(&next, cluster.addrs[1], 1).await;
    let all: Vec<(u64, Bytes)> = acked.into_iter().chain(more).collect();
    assert_read_back(&cluster.addrs[1..2], next.commit_lsn(), &all).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_with_ack_quorum_three_survive_two_failures_but_not_three() {
    let mut cluster = Cluster::start(5).await;
    let cfg = QuorumConfig { write_quorum: 5, ack_quorum: 3, ..config() };
    let writer = cluster.writer_with("writer-a", cfg.clone()).await;
    let mut acked = all_acked(append_many(&writer, "a", 0..10).await);
    cluster.kill9(0);
    cluster.kill9(3);
    acked.extend(all_acked(append_many(&writer, "a", 10..30).await));
    drop(writer);

    // Recovery with two of five down fences 3 (= 5 - 3 + 1) nodes and commits its barrier on 3.
    let next = cluster.writer_with("writer-b", cfg.clone()).await;
    acked.extend(all_acked(append_many(&next, "b", 0..10).await));
    assert_read_back(&cluster.addrs, next.commit_lsn(), &acked).await;

    cluster.kill9(4);
    match next.append(payload("b", 10)).await {
        Err(WriteError::NoQuorum { acked, needed: 3, .. }) => assert!(acked <= 2),
        other => panic!("with 2 of 5 nodes left an append must fail with NoQuorum, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_missed_what_the_others_truncated_restarts_where_they_begin_and_counts_again() {
    // Small segments, so truncation drops files after a few dozen entries.
    let mut cluster = Cluster::start_with(3, &["--segment-bytes", "4096"]).await;
    let writer = cluster.writer("writer-a").await;
    let mut acked = all_acked(append_many(&writer, "a", 0..20).await);
    cluster.kill9(2);
    // One append at a time: appends in flight together may reach a node as one group, which it
    // writes without rolling its segment, and then there would be nothing whole to truncate.
    for i in 20..400 {
        let lsn = writer.append(payload("a", i)).await;
        acked.extend(all_acked(vec![(payload("a", i), lsn)]));
    }

    // A snapshot now holds the committed prefix: the live nodes give it up.
    let below = writer.commit_lsn() - 10;
    for addr in &cluster.addrs[..2] {
        NodeClient::new(*addr, proxy_transport()).truncate_below(STREAM, writer.epoch(), below).await.unwrap();
    }
    let first = node_first_lsn(cluster.addrs[0]).await.min(node_first_lsn(cluster.addrs[1]).await);
    assert!(first > 21, "the live nodes dropped what node 2 lacks (they start at {first})");

    cluster.restart(2);
    acked.extend(all_acked(append_many(&writer, "a", 400..410).await));
    wait_caught_up(&writer, cluster.addrs[2], 2).await;
    assert_eq!(node_first_lsn(cluster.addrs[2]).await, first, "node 2 restarts where the others begin");

    // It counts toward the quorum again: with node 0 gone, appends still commit.
    cluster.kill9(0);
    acked.extend(all_acked(append_many(&writer, "a", 410..420).await));
    let kept: Vec<(u64, Bytes)> = acked.into_iter().filter(|(lsn, _)| *lsn >= first).collect();
    assert_read_back_from(&cluster.addrs[2..3], first, writer.commit_lsn(), &kept).await;
    assert_read_back_from(&cluster.addrs[1..3], first, writer.commit_lsn(), &kept).await;
}

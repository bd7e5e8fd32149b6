//! Snapshots: the proxy snapshots a shard every `every_entries` journal entries and the journal
//! nodes give back the segments below the older snapshot kept; a primary that then loses
//! everything is rebuilt from the newest snapshot plus the journal's tail — under load, and
//! from the older snapshot when the newest is damaged — with every acknowledged write kept.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::cluster::{journal_first_lsns, ClusterOptions, DurableCluster};
use common::load::{lost_writes, Load};
use common::resp::Value;

/// Small journal segments, so truncation frees files within a short test.
const SEGMENT_BYTES: u64 = 64 * 1024;
const SNAPSHOT_EVERY: u64 = 1_500;
const CONNECTIONS: usize = 4;

/// One shard snapshotted every `SNAPSHOT_EVERY` entries; its node accepts only TLS with `tls`.
fn snapshotting_cluster(tls: bool) -> DurableCluster {
    DurableCluster::start(ClusterOptions {
        shards: 1,
        journal_segment_bytes: Some(SEGMENT_BYTES),
        snapshot_every: Some(SNAPSHOT_EVERY),
        redis_tls: tls,
        ..Default::default()
    })
}

/// Shard 0's snapshot files, oldest first, with the LSN in their name.
fn snapshot_files(cluster: &DurableCluster) -> Vec<(u64, PathBuf)> {
    let Ok(dir) = std::fs::read_dir(cluster.snapshot_dir().join("shard-0")) else { return Vec::new() };
    let mut files: Vec<(u64, PathBuf)> = dir
        .filter_map(|e| {
            let path = e.ok()?.path();
            let lsn = path.file_name()?.to_str()?.strip_suffix(".rdb")?.parse().ok()?;
            Some((lsn, path))
        })
        .collect();
    files.sort();
    files
}

/// Waits (the load running) until shard 0 has two snapshots and every journal node dropped the
/// segments below the older one; returns the snapshot LSNs.
fn wait_for_truncation(cluster: &DurableCluster, load: &Load) -> Vec<u64> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let files = snapshot_files(cluster);
        let firsts = journal_first_lsns(cluster.journal_addrs(), "shard-0");
        if files.len() == 2 && firsts.iter().all(|&first| first > 1) {
            let lsns: Vec<u64> = files.iter().map(|(lsn, _)| *lsn).collect();
            println!("snapshots at {lsns:?}, journal starts at {firsts:?}, {} writes acknowledged", load.acked());
            assert!(
                firsts.iter().all(|&first| first <= lsns[0] + 1),
                "the journal keeps what the older snapshot lacks"
            );
            return lsns;
        }
        assert!(
            Instant::now() < deadline,
            "no two snapshots and a truncated journal: files {files:?}, journal starts {firsts:?}\n{}",
            cluster.proxy_log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Writes keys of every type, some expiring, so the snapshot carries more than strings.
fn write_varied_keys(cluster: &DurableCluster) {
    let mut client = cluster.client();
    for i in 0..300 {
        let i = i.to_string();
        for command in [
            vec!["HSET", "hash:{v}", &i, &i],
            vec!["ZADD", "zset:{v}", &i, &i],
            vec!["RPUSH", "list:{v}", &i],
            vec!["SADD", "set:{v}", &i],
            vec!["XADD", "stream:{v}", "*", "field", &i],
            vec!["SET", &format!("expiring:{i}"), &i, "EX", "3600"],
        ] {
            let reply = client.cmd(&command).unwrap();
            assert!(!reply.is_error(), "{command:?}: {reply:?}");
        }
    }
}

#[test]
fn a_primary_killed_after_truncation_is_rebuilt_from_a_snapshot_under_load() {
    rebuilt_from_a_snapshot_under_load(snapshotting_cluster(false));
}

/// The same with a node that accepts only TLS (`[backend] tls`): the snapshots are fetched
/// (`SYNC`) and loaded over TLS — the node, run with `tls-replication yes`, reaches the proxy's
/// snapshot-serving port over TLS — and the journal replayed over TLS.
#[test]
fn a_primary_that_accepts_only_tls_is_rebuilt_from_a_snapshot_over_tls_under_load() {
    let cluster = snapshotting_cluster(true);
    let before = cluster.snapshots();
    common::redis_tls::assert_refuses_peers_without_the_ca(cluster.redis_addr(0));
    assert_eq!(cluster.snapshots(), before, "a refused peer changed the node");
    rebuilt_from_a_snapshot_under_load(cluster);
}

/// Varied keys and a write load until the journal is truncated below two snapshots; then the
/// primary is killed (`kill -9`) and restarted empty: it is rebuilt from the newest snapshot and
/// the journal's tail while writes go on, and no acknowledged write is lost.
fn rebuilt_from_a_snapshot_under_load(mut cluster: DurableCluster) {
    // What a crash mid-fetch leaves behind: pruning deletes it.
    let shard_dir = cluster.snapshot_dir().join("shard-0");
    std::fs::create_dir_all(&shard_dir).unwrap();
    std::fs::write(shard_dir.join(".00000000000000000007.rdb.partial"), b"REDIS0011").unwrap();
    write_varied_keys(&cluster);
    let load = Load::start(cluster.proxy_addr(), CONNECTIONS);
    wait_for_truncation(&cluster, &load);
    let left: Vec<_> = std::fs::read_dir(&shard_dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left.len(), 2, "only the two kept snapshots are left: {left:?}");

    cluster.kill_redis(0);
    cluster.restart_redis(0);
    let killed_at = load.acked();
    assert!(
        load.wait_for_more_acks(3_000, Duration::from_secs(60)),
        "writes did not resume after the primary was rebuilt\n{}",
        cluster.proxy_log()
    );
    println!("primary killed after {killed_at} acknowledged writes; {} now", load.acked());
    assert!(
        cluster.proxy_logs().iter().any(|log| log.contains("snapshot restored")),
        "the rebuild did not use a snapshot\n{}",
        cluster.proxy_log()
    );
    cluster.assert_nothing_lost(load);
    let mut client = cluster.client();
    assert_eq!(client.cmd(&["HLEN", "hash:{v}"]).unwrap(), Value::Int(300));
    assert_eq!(client.cmd(&["XLEN", "stream:{v}"]).unwrap(), Value::Int(300));
    let ttl = client.cmd(&["TTL", "expiring:7"]).unwrap();
    assert!(matches!(ttl, Value::Int(t) if t > 3_000), "the expiry survived the snapshot: {ttl:?}");
}

#[test]
fn a_damaged_newest_snapshot_falls_back_to_the_older_one_and_the_rebuild_is_identical() {
    let mut cluster = snapshotting_cluster(false);
    write_varied_keys(&cluster);
    let load = Load::start(cluster.proxy_addr(), CONNECTIONS);
    wait_for_truncation(&cluster, &load);
    let logs = load.stop();
    let before = cluster.snapshots();

    cluster.kill_proxy();
    cluster.kill_redis(0);
    cluster.restart_redis(0);
    let (newest_lsn, newest) = snapshot_files(&cluster).pop().unwrap();
    let mut bytes = std::fs::read(&newest).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    std::fs::write(&newest, &bytes).unwrap();

    let took = cluster.start_proxy();
    let log = cluster.proxy_logs().pop().unwrap();
    println!(
        "rebuilt in {took:?} after damaging the snapshot at lsn {newest_lsn}; {} entries replayed",
        cluster.entries_replayed()
    );
    assert!(log.contains("trying an older one"), "the damaged snapshot was not noticed\n{log}");
    assert!(log.contains("snapshot restored"), "no snapshot was restored\n{log}");
    cluster.assert_same(&before, "after a rebuild from the older snapshot and the journal");
    assert!(lost_writes(cluster.proxy_addr(), &logs).is_empty());
}

#[test]
fn memlog_snapshot_takes_one_now_and_answers_its_lsn() {
    // The scheduler would wait for a million entries: only the command takes this snapshot.
    let cluster =
        DurableCluster::start(ClusterOptions { shards: 1, snapshot_every: Some(1_000_000), ..Default::default() });
    let mut client = cluster.client();
    for i in 0..50 {
        assert_eq!(client.cmd(&["SET", &format!("k{i}"), "v"]).unwrap(), Value::Simple("OK".into()));
    }
    let Value::Int(lsn) = client.cmd(&["MEMLOG", "SNAPSHOT", "0"]).unwrap() else { panic!("MEMLOG SNAPSHOT 0") };
    assert!(lsn >= 50, "the snapshot holds every acknowledged write: lsn {lsn}");
    assert_eq!(snapshot_files(&cluster).into_iter().map(|(l, _)| l as i64).collect::<Vec<_>>(), vec![lsn]);
    let unknown = client.cmd(&["MEMLOG", "SNAPSHOT", "7"]).unwrap();
    assert!(unknown.is_error() && unknown.text().contains("no shard 7"), "{unknown:?}");

    let unconfigured = DurableCluster::start(ClusterOptions { shards: 1, ..Default::default() });
    let refused = unconfigured.client().cmd(&["MEMLOG", "SNAPSHOT", "0"]).unwrap();
    assert!(refused.is_error() && refused.text().contains("[snapshot]"), "{refused:?}");
}

//! Crashes under load: `kill -9` of the proxy, and of a shard's primary (restarted empty), in
//! the middle of a pipelined write load. Every write the load saw acknowledged must be there
//! afterwards; a write whose reply never arrived may or may not be.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{redis_conn, ClusterOptions, DurableCluster};
use common::load::Load;
use common::resp::Value;

const CONNECTIONS: usize = 6;
/// Acknowledged writes before the crash: about 2 s of load on 2 cores (a debug build), measured
/// as progress rather than wall time.
const LOAD_BEFORE_CRASH: u64 = 10_000;

/// Lets the load run until it has `acks` more acknowledged writes (fails if it stalls).
fn run_load_for(load: &Load, acks: u64, cluster: &DurableCluster, what: &str) {
    assert!(
        load.wait_for_more_acks(acks, Duration::from_secs(20)),
        "{what}: the load got stuck at {} acknowledged writes\n{}",
        load.acked(),
        cluster.proxy_log()
    );
}

#[test]
fn kill_9_of_the_proxy_mid_load_loses_no_acknowledged_write() {
    let mut cluster = DurableCluster::start(ClusterOptions::default());
    let load = Load::start(cluster.proxy_addr(), CONNECTIONS);
    run_load_for(&load, LOAD_BEFORE_CRASH, &cluster, "before the crash");
    cluster.kill_proxy();
    let acked_at_crash = load.acked();
    let took = cluster.start_proxy();
    println!("proxy killed after {acked_at_crash} acknowledged writes; back in {took:?}");
    run_load_for(&load, 2_000, &cluster, "after the proxy restarted");
    assert!(load.progress.broken.load(std::sync::atomic::Ordering::Relaxed) > 0, "the crash broke no connection");
    cluster.assert_nothing_lost(load);
}

#[test]
fn a_primary_killed_mid_load_is_rebuilt_empty_from_the_journal() {
    let mut cluster = DurableCluster::start(ClusterOptions::default());
    let load = Load::start(cluster.proxy_addr(), CONNECTIONS);
    run_load_for(&load, LOAD_BEFORE_CRASH, &cluster, "before the crash");
    cluster.kill_redis(0);
    cluster.restart_redis(0);
    println!("shard 0's primary killed after {} acknowledged writes and restarted empty", load.acked());
    // Writes to shard 0 fail or wait until the proxy has rebuilt it; the load then goes on.
    run_load_for(&load, 5_000, &cluster, "after the primary restarted");
    cluster.assert_nothing_lost(load);
}

/// Issue 14: a `[journal]` and no `[failover]` table, as in a hand-written sidecar config. The
/// writes go out in one pipeline and the primary is killed the moment the last is acknowledged;
/// restarted empty on its port, it is read again and again from the moment it answers. No read
/// may find an acknowledged write missing.
#[test]
fn a_primary_restarted_empty_without_failover_table_never_serves_a_missing_write() {
    let mut cluster = DurableCluster::start(ClusterOptions { shards: 1, ..ClusterOptions::default() });
    write_acknowledged(&cluster, 0..2_000);
    cluster.kill_redis(0);
    cluster.restart_redis(0);
    read_back_again_and_again(&cluster, 0..2_000);
}

/// The same with a primary that comes back from an older RDB of its own (a node with
/// persistence): it holds part of the journal, more than any health check may have seen it
/// hold, less than was acknowledged. Reads must wait for the entries it misses, whatever the
/// health checks saw: a reconnecting read connection compares the node with every applied
/// entry, and the controller rebuilds a primary found behind them. Three rounds, each with the
/// kill a few milliseconds after the last acknowledgement.
#[test]
fn a_primary_restarted_from_an_old_rdb_without_failover_table_never_serves_a_missing_write() {
    const ROUND: usize = 2_000;
    let mut cluster = DurableCluster::start(ClusterOptions { shards: 1, ..ClusterOptions::default() });
    for round in 0..3 {
        write_acknowledged(&cluster, round * ROUND..(round + 1) * ROUND);
        let mut node = redis_conn(cluster.redis_addr(0)).unwrap();
        assert_eq!(node.cmd(&["SAVE"]).unwrap(), Value::Simple("OK".into()));
        write_acknowledged(&cluster, (round + 1) * ROUND..(round + 1) * ROUND + 200);
        cluster.kill_redis(0);
        cluster.restart_redis_from_its_rdb(0);
        read_back_again_and_again(&cluster, 0..(round + 1) * ROUND + 200);
    }
}

fn sidecar_key(i: usize) -> String {
    format!("sidecar:{i}")
}

/// `SET sidecar:<i> v<i>` for every `i` in one pipeline; every reply must be `+OK`.
fn write_acknowledged(cluster: &DurableCluster, keys: std::ops::Range<usize>) {
    let mut client = cluster.client();
    for i in keys.clone() {
        client.queue(&["SET", &sidecar_key(i), &format!("v{i}")]);
    }
    client.flush().unwrap();
    for reply in client.read_n(keys.len()).unwrap() {
        assert_eq!(reply, Value::Simple("OK".into()), "{}", cluster.proxy_log());
    }
}

/// Reads every key of `keys` in rounds for four seconds: each must read as its value or as an
/// error (the shard not ready), never as missing; at least one round must be complete.
fn read_back_again_and_again(cluster: &DurableCluster, keys: std::ops::Range<usize>) {
    let (started, mut rounds, mut complete_rounds, mut refusals) = (Instant::now(), 0, 0, 0);
    let mut reader = cluster.client();
    while started.elapsed() < Duration::from_secs(4) {
        for i in keys.clone() {
            reader.queue(&["GET", &sidecar_key(i)]);
        }
        reader.flush().unwrap();
        let replies = reader.read_n(keys.len()).unwrap();
        for (i, reply) in keys.clone().zip(&replies) {
            match reply {
                Value::Bulk(Some(value)) => assert_eq!(value, format!("v{i}").as_bytes()),
                // The shard may say it is not ready (TRYAGAIN, unreachable): never that the key is gone.
                Value::Error(_) => refusals += 1,
                other => panic!(
                    "round {rounds}, {:?} after the restart: {} read as {other:?}\n{}",
                    started.elapsed(),
                    sidecar_key(i),
                    cluster.proxy_log()
                ),
            }
        }
        complete_rounds += usize::from(replies.iter().all(|r| !r.is_error()));
        rounds += 1;
    }
    println!(
        "{rounds} rounds of {} reads after the restart, {complete_rounds} complete, {refusals} refused",
        keys.len()
    );
    assert!(complete_rounds > 0, "the rebuilt primary never served every key\n{}", cluster.proxy_log());
}

/// Issue 11: a write larger than one journal entry holds (64 MiB) is journaled as several
/// entries that commit and apply as one; the primary killed and rebuilt from the journal holds
/// it whole (the refusal past `max_write_bytes` is in the journaler's unit tests).
#[test]
fn a_write_over_one_journal_entry_is_journaled_in_parts_and_rebuilt_whole() {
    let mut cluster = DurableCluster::start(ClusterOptions { shards: 1, ..Default::default() });
    let mut client = cluster.client();
    let value: Vec<u8> = (0..70usize << 20).map(|i| b'a' + (i % 26) as u8).collect();
    assert_eq!(client.cmd(&[&b"SET"[..], b"big", &value]).unwrap(), Value::Simple("OK".into()));
    assert_eq!(client.cmd(&["SET", "after", "1"]).unwrap(), Value::Simple("OK".into()));
    cluster.kill_redis(0);
    cluster.restart_redis(0);
    let started = Instant::now();
    loop {
        if matches!(cluster.client().cmd(&["GET", "after"]), Ok(Value::Bulk(Some(v))) if v == b"1") {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "not rebuilt\n{}", cluster.proxy_log());
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut client = cluster.client();
    assert_eq!(client.cmd(&["STRLEN", "big"]).unwrap(), Value::Int(70 << 20));
    let Value::Bulk(Some(back)) = client.cmd(&["GET", "big"]).unwrap() else { panic!("GET big") };
    assert!(back == value, "the rebuilt value differs");
}

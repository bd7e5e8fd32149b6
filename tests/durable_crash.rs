//! Crashes under load: `kill -9` of the proxy, and of a shard's primary (restarted empty), in
//! the middle of a pipelined write load. Every write the load saw acknowledged must be there
//! afterwards; a write whose reply never arrived may or may not be.

mod common;

use std::time::Duration;

use common::cluster::{ClusterOptions, DurableCluster};
use common::load::Load;

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

//! `memlog status` against a real `memlog up`: the `--json` shape, pids that are the real
//! children, LSNs that follow the writes made through the proxy, replicas that catch up, journal
//! streams that hold what the primaries hold, `--config` for a deployed cluster, and a frozen
//! journal node reported unhealthy.

mod common;
mod up_harness;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::memlog_bin;
use serde_json::Value;
use up_harness::{
    alive, cluster_json, node_cli, processes_with_role, redis_cli, start_up, stdout_of, up_log, wait_until, Shape,
};

/// Snapshots every 50 entries: the 200 writes below make one on each shard.
const SHAPE: Shape = Shape { shards: 2, replicas: 1, journal_nodes: 3, snapshot_every: 50 };

fn status(args: &[&str], dir: &Path) -> Output {
    Command::new(memlog_bin()).arg("status").args(args).arg(dir).output().expect("run memlog status")
}

/// `memlog status --json --dir DIR`, parsed; the exit status says whether all is healthy.
fn status_json(dir: &Path) -> (bool, Value) {
    let out = status(&["--json", "--dir"], dir);
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("not JSON ({e}):\n{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    });
    (out.status.success(), report)
}

fn keys(value: &Value) -> BTreeSet<&str> {
    value.as_object().unwrap_or_else(|| panic!("not an object: {value}")).keys().map(String::as_str).collect()
}

fn set_of<'a>(names: &[&'a str]) -> BTreeSet<&'a str> {
    names.iter().copied().collect()
}

/// The `{addr, pid, lsn}` of one node: exactly those keys, the pid the one cluster.json records
/// for its port (and alive), or null when `pids` is false; returns its lsn.
fn check_node(node: &Value, cluster: &Value, pids: bool) -> u64 {
    assert_eq!(keys(node), set_of(&["addr", "pid", "lsn"]), "{node}");
    let addr = node["addr"].as_str().unwrap();
    let port: u64 = addr.strip_prefix("127.0.0.1:").expect("loopback").parse().unwrap();
    let record = cluster["processes"].as_array().unwrap().iter().find(|p| p["port"] == port).expect("recorded");
    if pids {
        assert_eq!(node["pid"], record["pid"], "{node} vs {record}");
        assert!(alive(node["pid"].as_u64().unwrap() as u32));
    } else {
        assert!(node["pid"].is_null(), "{node}");
    }
    node["lsn"].as_u64().unwrap_or_else(|| panic!("a running node has an lsn: {node}"))
}

/// Checks the whole report's shape against the cluster `memlog up` recorded; returns each
/// shard's (primary lsn, replica lsns).
fn check_report(report: &Value, cluster: &Value, pids: bool) -> Vec<(u64, Vec<u64>)> {
    assert_eq!(keys(report), set_of(&["shards", "journal"]), "{report}");
    let shards = report["shards"].as_array().unwrap();
    assert_eq!(shards.len(), SHAPE.shards, "{report}");
    let primaries = processes_with_role(cluster, "primary");
    let mut lsns = Vec::new();
    for (i, shard) in shards.iter().enumerate() {
        let shape = ["id", "slots", "epoch", "primary", "replicas", "snapshot", "adoption"];
        assert_eq!(keys(shard), set_of(&shape), "{shard}");
        assert!(shard["adoption"].is_null(), "memlog up's empty nodes need no adoption: {shard}");
        assert_eq!(shard["id"], i as u64);
        assert_eq!(shard["slots"], primaries[i]["slots"], "{shard}");
        assert!(shard["epoch"].as_u64().unwrap() >= 1, "the proxy recorded the shard: {shard}");
        let primary = check_node(&shard["primary"], cluster, pids);
        let replicas = shard["replicas"].as_array().unwrap();
        assert_eq!(replicas.len(), SHAPE.replicas, "{shard}");
        lsns.push((primary, replicas.iter().map(|r| check_node(r, cluster, pids)).collect()));
    }
    let journal = report["journal"].as_array().unwrap();
    let journal_records = processes_with_role(cluster, "journal");
    assert_eq!(journal.len(), journal_records.len(), "{report}");
    for (node, record) in journal.iter().zip(&journal_records) {
        assert_eq!(keys(node), set_of(&["addr", "healthy", "streams"]), "{node}");
        assert_eq!(node["addr"], format!("127.0.0.1:{}", record["port"]));
        assert_eq!(node["healthy"], true, "{node}");
        let streams = node["streams"].as_object().unwrap();
        for stream in streams.values() {
            assert_eq!(keys(stream), set_of(&["fenced_epoch", "first_lsn", "last_lsn", "last_epoch", "commit_lsn"]));
        }
    }
    lsns
}

/// The highest `last_lsn` any journal node holds for `stream`.
fn journal_last_lsn(report: &Value, stream: &str) -> u64 {
    report["journal"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|j| j["streams"][stream]["last_lsn"].as_u64())
        .max()
        .unwrap_or(0)
}

#[test]
fn status_json_has_the_documented_shape_real_pids_and_lsns_that_follow_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ports = up_harness::ports(SHAPE);
    let (_up, _ready) = start_up(dir, &ports, SHAPE);
    let cluster = cluster_json(dir);

    let (healthy, report) = status_json(dir);
    assert!(healthy, "a freshly started cluster is healthy: {report}\n{}", up_log(dir));
    let before = check_report(&report, &cluster, true);
    for (shard, primary) in report["shards"].as_array().unwrap().iter().zip(processes_with_role(&cluster, "primary")) {
        assert_eq!(shard["primary"]["addr"], format!("127.0.0.1:{}", primary["port"]), "{shard}");
    }

    // Writes through the proxy, on every shard: each primary's lsn grows at once (the proxy
    // applies a write before it acknowledges it), each replica follows, the journal holds it.
    for i in 0..200 {
        let set = redis_cli(ports.proxy, &["SET", &format!("status-{i}"), "v"]);
        assert_eq!(stdout_of(&set), "OK", "{}", up_log(dir));
    }
    let (_, report) = status_json(dir);
    let after = check_report(&report, &cluster, true);
    for (shard, ((primary_before, _), (primary_after, _))) in before.iter().zip(&after).enumerate() {
        assert!(primary_after > primary_before, "shard {shard} lsn {primary_before} -> {primary_after}: {report}");
        let journaled = journal_last_lsn(&report, &format!("shard-{shard}"));
        assert!(journaled >= *primary_after, "shard {shard}: journal at {journaled}, primary at {primary_after}");
    }
    let caught_up = wait_until(dir, Duration::from_secs(10), "replicas reach their primary's lsn", || {
        let (_, report) = status_json(dir);
        check_report(&report, &cluster, true).iter().all(|(primary, replicas)| replicas.iter().all(|r| r == primary))
    });
    println!("lsns before {before:?}, after {after:?}; replicas caught up within {caught_up:?}");
    let snapshotted = wait_until(dir, Duration::from_secs(10), "a snapshot of every shard", || {
        let (_, report) = status_json(dir);
        report["shards"].as_array().unwrap().iter().all(|s| s["snapshot"]["lsn"].as_u64().is_some_and(|lsn| lsn >= 50))
    });
    let (_, report) = status_json(dir);
    for shard in report["shards"].as_array().unwrap() {
        let location = shard["snapshot"]["location"].as_str().unwrap();
        assert!(std::path::Path::new(location).is_file(), "the snapshot file is there: {shard}");
        assert!(location.starts_with(&dir.join("snapshots").display().to_string()), "{location}");
    }
    println!("every shard snapshotted within {snapshotted:?}");

    // The table says the same for people.
    let table = status(&["--dir"], dir);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(table.status.success(), "{text}");
    let primary_row = text
        .lines()
        .find(|l| l.contains(&format!("127.0.0.1:{} ", ports.redis_base)))
        .unwrap_or_else(|| panic!("no row for the first primary:\n{text}"));
    assert!(primary_row.contains("primary") && primary_row.contains(&after[0].0.to_string()), "{text}");
    assert!(text.contains("topology: from"), "{text}");
    assert!(text.contains("shard 1 newest snapshot: lsn "), "{text}");

    // A deployed cluster, by its proxy's config: the same layout, no pids (nothing started them).
    let out = status(&["--json", "--config"], &dir.join("proxy.toml"));
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert!(out.status.success(), "{report}");
    check_report(&report, &cluster, false);
}

#[test]
fn a_frozen_journal_node_is_reported_unhealthy_and_status_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ports = up_harness::ports(SHAPE);
    let (_up, _ready) = start_up(dir, &ports, SHAPE);
    let journal = processes_with_role(&cluster_json(dir), "journal").remove(1);
    let pid = journal["pid"].as_u64().unwrap() as i32;
    let addr = format!("127.0.0.1:{}", journal["port"]);

    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let (healthy, report) = status_json(dir);
    let table = status(&["--dir"], dir);
    unsafe { libc::kill(pid, libc::SIGCONT) };
    assert!(!healthy, "status must fail while a journal node does not answer: {report}");
    let node = report["journal"].as_array().unwrap().iter().find(|j| j["addr"] == addr).expect("listed");
    assert_eq!(node["healthy"], false, "{report}");
    let others = report["journal"].as_array().unwrap().iter().filter(|j| j["addr"] != addr);
    assert!(others.clone().count() == 2 && others.into_iter().all(|j| j["healthy"] == true), "{report}");
    let stderr = String::from_utf8_lossy(&table.stderr);
    assert!(stderr.contains(&format!("journal node {addr}")), "{stderr}");

    let (healthy, report) = status_json(dir);
    assert!(healthy, "healthy again after SIGCONT: {report}");
}

/// `memlog failover` with its `--dir` and `--proxy` forms; output `switched over in N ms`.
fn failover(args: &[&str]) -> Output {
    Command::new(memlog_bin()).arg("failover").args(args).output().expect("run memlog failover")
}

/// The `N` of `switched over in N ms`.
fn switchover_ms(out: &Output) -> u64 {
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find_map(|l| l.strip_prefix("switched over in ")).unwrap_or_else(|| panic!("{text}"));
    line.trim_end_matches(" ms").parse().unwrap()
}

#[test]
fn failover_switches_a_shard_and_status_follows_even_with_the_proxy_frozen() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ports = up_harness::ports(SHAPE);
    let (_up, _ready) = start_up(dir, &ports, SHAPE);
    let cluster = cluster_json(dir);
    for i in 0..50 {
        assert_eq!(stdout_of(&redis_cli(ports.proxy, &["SET", &format!("fo-{i}"), "v"])), "OK", "{}", up_log(dir));
    }
    let (_, report) = status_json(dir);
    let epoch_before = report["shards"][0]["epoch"].as_u64().unwrap();
    let old_primary = report["shards"][0]["primary"]["addr"].as_str().unwrap().to_string();
    let replica = report["shards"][0]["replicas"][0]["addr"].as_str().unwrap().to_string();

    let dir_arg = dir.to_str().unwrap();
    let out = failover(&["--shard", "0", "--dir", dir_arg]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}\n{}", String::from_utf8_lossy(&out.stderr), up_log(dir));
    assert!(
        text.contains(&format!("before: shard 0 (slots 0-8191) epoch {epoch_before}: primary {old_primary} ")),
        "{text}"
    );
    assert!(text.contains(&format!(": primary {replica} ")) && text.contains("after:"), "{text}");
    let first_ms = switchover_ms(&out);
    let port_of = |addr: &str| addr.rsplit_once(':').unwrap().1.parse::<u16>().unwrap();
    assert_eq!(stdout_of(&node_cli(dir, port_of(&replica), &["ROLE"])).lines().next(), Some("master"));
    wait_until(dir, Duration::from_secs(10), "the old primary replicates the new one", || {
        stdout_of(&node_cli(dir, port_of(&old_primary), &["ROLE"])).lines().next() == Some("slave")
    });

    // status agrees: the new primary with its real pid, a higher epoch, nothing lost.
    let (healthy, report) = status_json(dir);
    assert!(healthy, "{report}");
    let shard = &report["shards"][0];
    assert_eq!(shard["primary"]["addr"], replica, "{report}");
    assert!(shard["epoch"].as_u64().unwrap() > epoch_before, "{report}");
    assert_eq!(shard["replicas"][0]["addr"], old_primary, "{report}");
    check_node(&shard["primary"], &cluster, true);
    for i in 0..50 {
        assert_eq!(stdout_of(&redis_cli(ports.proxy, &["GET", &format!("fo-{i}")])), "v", "fo-{i} lost");
    }

    // Refusals are errors with the reason, and change nothing.
    let out = failover(&["--shard", "9", "--dir", dir_arg]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("the proxy knows no shard 9 (it has 0, 1)"));
    let out = failover(&["--shard", "0", "--to", "127.0.0.1:1", "--dir", dir_arg]);
    assert!(!out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(String::from_utf8_lossy(&out.stderr).contains("failover of shard 0 failed"));

    // Back again, by the proxy's address alone.
    let proxy = format!("127.0.0.1:{}", ports.proxy);
    let out = failover(&["--shard", "0", "--to", &old_primary, "--proxy", &proxy]);
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("switchovers took {first_ms} ms and {} ms", switchover_ms(&out));

    // Shard 1 over to its replica, then the proxy freezes: status still finds each shard's
    // primary (from the metadata store, checked against what the nodes report) and says the
    // proxy is not answering.
    let out = failover(&["--shard", "1", "--proxy", &proxy]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (_, report) = status_json(dir);
    let shard1_primary = report["shards"][1]["primary"]["addr"].clone();
    let epochs: Vec<Value> = report["shards"].as_array().unwrap().iter().map(|s| s["epoch"].clone()).collect();
    assert_ne!(shard1_primary, format!("127.0.0.1:{}", processes_with_role(&cluster, "primary")[1]["port"]));
    let proxy_pid = processes_with_role(&cluster, "proxy")[0]["pid"].as_u64().unwrap() as i32;
    unsafe { libc::kill(proxy_pid, libc::SIGSTOP) };
    let (healthy, report) = status_json(dir);
    let table = status(&["--dir"], dir);
    unsafe { libc::kill(proxy_pid, libc::SIGCONT) };
    assert!(!healthy, "a frozen proxy is not healthy: {report}");
    check_report(&report, &cluster, true);
    assert_eq!(report["shards"][0]["primary"]["addr"], old_primary, "{report}");
    assert_eq!(report["shards"][1]["primary"]["addr"], shard1_primary, "{report}");
    let frozen_epochs: Vec<Value> = report["shards"].as_array().unwrap().iter().map(|s| s["epoch"].clone()).collect();
    assert_eq!(frozen_epochs, epochs, "the metadata store's epochs are the proxy's");
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains("NOT ANSWERING") && text.contains("topology: from the metadata store"), "{text}");
}

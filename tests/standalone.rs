//! The standalone endpoint (issue 13, `mode = "standalone"`): the same commands sent to a stock
//! `redis-server` 7.0, which runs without cluster support, and to memlog in standalone mode
//! get the same replies; memlog in cluster mode (the default) stays a cluster. `memlog up
//! --mode standalone` is tested in `up.rs`.

mod common;

use common::cluster::{ClusterOptions, DurableCluster};
use common::pair::{cmd, connect, Pair};
use common::resp::{Conn, Value};

/// What `INFO section` says of `name`.
fn info_field(conn: &mut Conn, section: &str, name: &str) -> String {
    let text = cmd(conn, &["INFO", section]).text();
    let prefix = format!("{name}:");
    let value = text.lines().find_map(|line| line.strip_prefix(&prefix));
    value.unwrap_or_else(|| panic!("no {name} in INFO {section}:\n{text}")).to_string()
}

/// What `HELLO 3` says of `name` (the connection is back on RESP2 afterwards).
fn hello_field(conn: &mut Conn, name: &str) -> String {
    let Value::Array(Some(pairs)) = cmd(conn, &["HELLO", "3"]) else { panic!("HELLO 3 is not a map") };
    let value = pairs.chunks(2).find(|pair| pair[0].text() == name).map(|pair| pair[1].text());
    assert!(!cmd(conn, &["HELLO", "2"]).is_error());
    value.unwrap_or_else(|| panic!("HELLO 3 has no {name}"))
}

/// Commands whose replies depend on whether Redis runs with cluster support, and plain ones
/// that must work as on any Redis (keys in several slots together, with no `CROSSSLOT`).
const REQUESTS: &[&[&str]] = &[
    &["CLUSTER", "INFO"],
    &["CLUSTER", "HELP"],
    &["CLUSTER", "KEYSLOT", "a"],
    &["CLUSTER", "SLOTS"],
    &["CLUSTER", "SHARDS"],
    &["CLUSTER", "NODES"],
    &["CLUSTER", "MYID"],
    &["CLUSTER", "COUNTKEYSINSLOT", "1"],
    &["CLUSTER", "GETKEYSINSLOT", "1", "1"],
    &["CLUSTER", "FAILOVER"],
    &["CLUSTER", "ADDSLOTS", "1"],
    &["CLUSTER", "RESET"],
    &["CLUSTER", "KEYSLOT"],
    &["CLUSTER", "NOSUCH"],
    &["READONLY"],
    &["READWRITE"],
    &["ASKING"],
    &["SELECT", "0"],
    &["SELECT", "16"],
    &["SELECT", "-1"],
    &["SELECT", "x"],
    &["SELECT", "01"],
    &["SELECT", "+0"],
    &["SELECT", "4294967296"],
    &["SELECT", ""],
    &["MSET", "a", "1", "b", "2", "c", "3"],
    &["MGET", "a", "b", "c"],
    &["RENAME", "a", "d"],
    &["SUNIONSTORE", "s", "nosuch1", "nosuch2"],
];

#[test]
fn a_standalone_endpoint_answers_as_a_stock_redis_without_cluster_support() {
    let pair = Pair::standalone();
    pair.same("standalone requests", |addr| {
        let mut conn = connect(addr);
        REQUESTS.iter().map(|request| cmd(&mut conn, request)).collect()
    });
    let [stock, memlog] = pair.addrs().map(|addr| {
        let mut conn = connect(addr);
        [
            info_field(&mut conn, "server", "redis_mode"),
            info_field(&mut conn, "cluster", "cluster_enabled"),
            hello_field(&mut conn, "mode"),
        ]
    });
    assert_eq!(memlog, stock);
    assert_eq!(stock, ["standalone", "0", "standalone"]);
}

/// Databases other than 0 are not built yet: a standalone endpoint says so instead of
/// pretending, and the client stays in database 0.
#[test]
fn a_standalone_endpoint_refuses_the_databases_it_does_not_serve_yet() {
    let pair = Pair::standalone();
    let mut conn = connect(pair.memlog.proxy_addr());
    assert_eq!(cmd(&mut conn, &["SET", "k", "v"]), Value::Simple("OK".into()));
    for request in [&["SELECT", "1"][..], &["SELECT", "15"], &["MOVE", "k", "1"], &["SWAPDB", "0", "1"]] {
        let reply = cmd(&mut conn, request).text();
        assert!(
            reply.starts_with("ERR memlog: ") && reply.contains("not supported by this version of memlog yet"),
            "{request:?}: {reply}"
        );
    }
    assert_eq!(cmd(&mut conn, &["GET", "k"]), Value::Bulk(Some(b"v".to_vec())));
    assert!(cmd(&mut conn, &["CLIENT", "INFO"]).text().contains(" db=0 "));
}

#[test]
fn a_cluster_endpoint_stays_a_cluster() {
    let cluster = DurableCluster::start(ClusterOptions { journal_nodes: 1, shards: 1, ..Default::default() });
    let mut conn = cluster.client();
    assert_eq!(info_field(&mut conn, "server", "redis_mode"), "cluster");
    assert_eq!(info_field(&mut conn, "cluster", "cluster_enabled"), "1");
    assert_eq!(cmd(&mut conn, &["CLUSTER", "KEYSLOT", "a"]), Value::Int(15495));
    assert_eq!(cmd(&mut conn, &["READONLY"]), Value::Simple("OK".into()));
    for index in ["1", "16"] {
        assert_eq!(
            cmd(&mut conn, &["SELECT", index]),
            Value::Error("ERR SELECT is not allowed in cluster mode".into())
        );
    }
    assert_eq!(
        cmd(&mut conn, &["MOVE", "k", "1"]),
        Value::Error("ERR memlog: 'MOVE' is not allowed: memlog manages the cluster topology".into())
    );
}

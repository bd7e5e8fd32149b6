//! Parameter groups (issue 13): `CONFIG SET`/`GET` of every parameter of the allowlist sent to
//! a stock `redis-server` 7.0 and through memlog, replies compared; every other parameter Redis
//! knows is refused naming it; what the proxy enforces itself (`timeout`,
//! `proto-max-bulk-len`); a change reaches every node and is journaled; a peer without the
//! rights cannot change anything. Failover, rebuild and eviction cases are in `failover.rs`.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use common::cluster::{redis_conn, ClusterOptions, DurableCluster, Snapshot, CLIENT_TIMEOUT};
use common::pair::{cmd, connect, Pair};
use common::resp::{Conn, Value};

/// The allowlist as the README documents it: every parameter an application may set.
const ALLOWED: &[&str] = &[
    "hash-max-listpack-entries",
    "hash-max-ziplist-entries",
    "hash-max-listpack-value",
    "hash-max-ziplist-value",
    "list-max-listpack-size",
    "list-max-ziplist-size",
    "list-compress-depth",
    "set-max-intset-entries",
    "zset-max-listpack-entries",
    "zset-max-ziplist-entries",
    "zset-max-listpack-value",
    "zset-max-ziplist-value",
    "stream-node-max-bytes",
    "stream-node-max-entries",
    "hll-sparse-max-bytes",
    "maxmemory",
    "maxmemory-policy",
    "maxmemory-samples",
    "maxmemory-eviction-tenacity",
    "lfu-log-factor",
    "lfu-decay-time",
    "notify-keyspace-events",
    "slowlog-log-slower-than",
    "slowlog-max-len",
    "latency-monitor-threshold",
    "latency-tracking",
    "latency-tracking-info-percentiles",
    "hz",
    "dynamic-hz",
    "active-expire-effort",
    "activerehashing",
    "activedefrag",
    "active-defrag-cycle-min",
    "active-defrag-cycle-max",
    "active-defrag-ignore-bytes",
    "active-defrag-max-scan-fields",
    "active-defrag-threshold-lower",
    "active-defrag-threshold-upper",
    "lazyfree-lazy-eviction",
    "lazyfree-lazy-expire",
    "lazyfree-lazy-server-del",
    "lazyfree-lazy-user-del",
    "lazyfree-lazy-user-flush",
    "busy-reply-threshold",
    "lua-time-limit",
    "proto-max-bulk-len",
    "timeout",
    "tracking-table-max-keys",
];

/// Values every allowlisted parameter is tried with: valid for some, each kind of refusal for
/// others (not a number, negative, a memory unit, empty, out of range, a word).
const VALUES: &[&str] = &[
    "abc",
    "-1",
    "1kb",
    "",
    "0",
    "7",
    "100",
    "yes",
    "NO",
    "allkeys-LRU",
    "KEA",
    "50 99.9",
    "18446744073709551615",
    "2mb",
];

fn ok() -> Value {
    Value::Simple("OK".into())
}

/// `CONFIG GET name` as (name, value) pairs.
fn config_get(conn: &mut Conn, patterns: &[&str]) -> Vec<(String, String)> {
    let Value::Array(Some(items)) = cmd(conn, &[&["CONFIG", "GET"][..], patterns].concat()) else {
        panic!("CONFIG GET {patterns:?} is not an array")
    };
    let mut pairs: Vec<(String, String)> = items.chunks(2).map(|p| (p[0].text(), p[1].text())).collect();
    // Redis answers from a hash table: its order is not part of the reply's meaning.
    pairs.sort();
    pairs
}

#[test]
fn every_allowlisted_parameter_answers_as_stock_redis() {
    let pair = Pair::start();
    let (mut redis, mut memlog) = (connect(pair.redis.addr), pair.memlog.client());
    let mut compared = 0;
    for name in ALLOWED {
        // memlog's own rule for these is tested below; maxmemory of a few bytes would refuse
        // the journal's own writes (and every other), so it gets values in the gigabytes.
        let values: &[&str] = match *name {
            "busy-reply-threshold" | "lua-time-limit" => &["abc", "-1", "100", "1kb"],
            // Far above what the test stores: nothing is refused or evicted by it.
            "maxmemory" => &["abc", "-1", "5gb", "0"],
            _ => VALUES,
        };
        for value in values {
            let expected = cmd(&mut redis, &["CONFIG", "SET", name, value]);
            let got = cmd(&mut memlog, &["CONFIG", "SET", name, value]);
            assert_eq!(got, expected, "CONFIG SET {name} {value:?}");
            if got == ok() {
                assert_eq!(config_get(&mut memlog, &[name]), config_get(&mut redis, &[name]), "CONFIG GET {name}");
            }
            compared += 1;
        }
        // Back to a value the rest of the test lives with.
        if *name == "timeout" {
            for conn in [&mut redis, &mut memlog] {
                assert_eq!(cmd(conn, &["CONFIG", "SET", "timeout", "0"]), ok());
            }
        }
    }
    println!("{compared} CONFIG SET replies compared");
    // Several pairs, patterns, case: the same replies and the same effect.
    for args in [
        &["CONFIG", "SET", "hz", "20", "maxmemory-policy", "nosuch"][..],
        &["CONFIG", "SET", "hz", "21", "HZ", "22"],
        &["CONFIG", "SET", "hz", "23", "nosuch", "1"],
        &["CONFIG", "SET", "hz", "24", "daemonize", "no"],
        &["CONFIG", "SET", "hz"],
        &["CONFIG", "SET", "hz", "25", "dynamic-hz"],
        &["CONFIG", "SET", "HZ", "26", "Maxmemory-Policy", "volatile-lfu", "lua-time-limit", "200"],
        &["CONFIG", "GET"],
    ] {
        assert_eq!(cmd(&mut memlog, args), cmd(&mut redis, args), "{args:?}");
    }
    for patterns in [&["hz"][..], &["*max-*-entries*"], &["hz", "maxmemory-policy", "HZ", "nosuch"], &["lazyfree-*"]] {
        assert_eq!(config_get(&mut memlog, patterns), config_get(&mut redis, patterns), "CONFIG GET {patterns:?}");
    }
    assert_eq!(cmd(&mut memlog, &["CONFIG", "REWRITE"]), ok());
}

#[test]
fn every_other_parameter_is_refused_naming_it() {
    let pair = Pair::start();
    let (mut redis, mut memlog) = (connect(pair.redis.addr), pair.memlog.client());
    let Value::Array(Some(all)) = cmd(&mut redis, &["CONFIG", "GET", "*"]) else { panic!("CONFIG GET *") };
    let mut refused = 0;
    for p in all.chunks(2) {
        let (name, value) = (p[0].text(), p[1].text());
        if ALLOWED.contains(&name.as_str()) {
            continue;
        }
        let got = cmd(&mut memlog, &["CONFIG", "SET", &name, &value]);
        let stock = cmd(&mut redis, &["CONFIG", "SET", &name, &value]);
        let Value::Error(message) = &got else { panic!("CONFIG SET {name} {value:?} was accepted: {got:?}") };
        let prefix = format!("ERR CONFIG SET failed (possibly related to argument '{name}') - ");
        assert!(message.starts_with(&prefix), "{name}: {message}");
        if message.ends_with("can't set immutable config") {
            assert_eq!(got, stock, "{name}: Redis's own refusal");
        } else {
            assert!(message.contains(&format!("memlog: '{name}' cannot be changed through memlog: ")), "{message}");
        }
        refused += 1;
    }
    println!("{refused} parameters refused");
    assert!(refused > 100, "only {refused} parameters were tried");
    assert_eq!(
        cmd(&mut memlog, &["CONFIG", "SET", "nosuch", "1"]),
        Value::Error("ERR Unknown option or number of arguments for CONFIG SET - 'nosuch'".into())
    );
    // The nodes' credentials never show.
    assert_eq!(
        config_get(&mut memlog, &["requirepass", "masterauth"]),
        [("masterauth".to_string(), String::new()), ("requirepass".to_string(), String::new())]
    );
}

#[test]
fn memlogs_own_rules_are_stated_in_the_error() {
    let pair = Pair::start();
    let mut memlog = pair.memlog.client();
    // [failover] detect_ms defaults to 1000 ms.
    assert_eq!(cmd(&mut memlog, &["CONFIG", "SET", "busy-reply-threshold", "500"]), ok());
    for (name, value) in [("busy-reply-threshold", "501"), ("lua-time-limit", "5000"), ("busy-reply-threshold", "0")] {
        let reply = cmd(&mut memlog, &["CONFIG", "SET", name, value]);
        assert!(reply.text().contains("must be between 1 and 500 ms, half the failover detection time"), "{reply:?}");
    }
    assert_eq!(config_get(&mut memlog, &["busy-reply-threshold"]), [("busy-reply-threshold".into(), "500".into())]);
    // memlog enforces maxmemory itself: CONFIG GET answers memlog's limit, the node keeps none.
    assert_eq!(cmd(&mut memlog, &["CONFIG", "SET", "maxmemory", "1gb", "maxmemory-policy", "allkeys-random"]), ok());
    assert_eq!(config_get(&mut memlog, &["maxmemory"]), [("maxmemory".into(), (1u64 << 30).to_string())]);
    let mut node = redis_conn(pair.memlog.redis_addr(0)).unwrap();
    assert_eq!(config_get(&mut node, &["maxmemory"]), [("maxmemory".into(), "0".into())]);
    assert_eq!(config_get(&mut node, &["maxmemory-policy"]), [("maxmemory-policy".into(), "allkeys-random".into())]);
}

/// `CONFIG GET name` asked of a Redis node directly.
fn node_value(addr: SocketAddr, name: &str) -> String {
    let mut node = redis_conn(addr).unwrap();
    config_get(&mut node, &[name]).pop().map(|(_, v)| v).unwrap_or_default()
}

#[test]
fn a_change_is_journaled_recorded_and_survives_a_rebuild_and_a_proxy_restart() {
    let mut cluster = DurableCluster::start(ClusterOptions { journal_nodes: 3, shards: 2, ..Default::default() });
    let mut client = cluster.client();
    assert_eq!(cmd(&mut client, &["CONFIG", "SET", "hash-max-listpack-entries", "64", "timeout", "0"]), ok());
    for shard in 0..2 {
        assert_eq!(node_value(cluster.redis_addr(shard), "hash-max-listpack-entries"), "64", "shard {shard}");
        // `timeout` is the proxy's: on a node it would close the proxy's idle connections.
        assert_eq!(node_value(cluster.redis_addr(shard), "timeout"), "0", "shard {shard}");
    }
    let fields: Vec<String> = (0..200).flat_map(|i| [format!("f{i}"), "v".to_string()]).collect();
    let hset = |key: &str| [&["HSET".to_string(), key.to_string()][..], &fields].concat();
    let hset_big = hset("big");
    assert_eq!(client.cmd(&hset_big).unwrap(), Value::Int(200));
    assert_eq!(cmd(&mut client, &["OBJECT", "ENCODING", "big"]).text(), "hashtable");
    let metadata: serde_json::Value =
        serde_json::from_slice(&std::fs::read(cluster.dir.path().join("metadata.json")).unwrap()).unwrap();
    assert_eq!(metadata["parameters"]["hash-max-listpack-entries"], "64", "{metadata}");
    assert_eq!(metadata["parameters"]["timeout"], "0", "{metadata}");

    // Every node restarted empty, then the proxy after a kill -9: the group comes back from the
    // metadata store (node preparation) and the journal (replay).
    cluster.kill_proxy();
    let shard = (0..2).find(|s| cluster.redis_addr(*s) == route_of(&cluster, "big")).unwrap();
    cluster.kill_redis(shard);
    cluster.restart_redis(shard);
    assert_eq!(
        node_value(cluster.redis_addr(shard), "hash-max-listpack-entries"),
        "512",
        "a restarted node starts stock"
    );
    cluster.start_proxy();
    let mut client = cluster.client();
    assert_eq!(cmd(&mut client, &["HLEN", "big"]), Value::Int(200));
    assert_eq!(cmd(&mut client, &["OBJECT", "ENCODING", "big"]).text(), "hashtable");
    assert_eq!(node_value(cluster.redis_addr(shard), "hash-max-listpack-entries"), "64");
    assert_eq!(
        config_get(&mut client, &["hash-max-listpack-entries"]),
        [("hash-max-listpack-entries".into(), "64".into())]
    );
}

/// The node `key` lives on: the cluster splits the slots evenly between its shards.
fn route_of(cluster: &DurableCluster, key: &str) -> SocketAddr {
    let slot = memlog_proxy::router::key_slot(key.as_bytes());
    let shards = cluster.shards();
    (0..shards).map(|s| cluster.redis_addr(s)).nth(usize::from(slot) * shards / 16384).unwrap()
}

#[test]
fn the_proxy_enforces_timeout_and_proto_max_bulk_len_itself() {
    let pair = Pair::start();
    let mut admin = pair.memlog.client();
    assert_eq!(cmd(&mut admin, &["CONFIG", "SET", "timeout", "1"]), ok());
    assert_eq!(config_get(&mut admin, &["timeout"]), [("timeout".into(), "1".into())]);
    let mut idle = pair.memlog.client();
    let mut subscriber = pair.memlog.client();
    assert_eq!(cmd(&mut idle, &["PING"]), Value::Simple("PONG".into()));
    cmd(&mut subscriber, &["SUBSCRIBE", "news"]);
    std::thread::sleep(Duration::from_millis(2500));
    assert!(idle.cmd(&["PING"]).is_err(), "an idle client outlived timeout 1");
    // A subscriber is exempt, as in Redis: it still gets messages.
    let mut publisher = pair.memlog.client();
    assert_eq!(cmd(&mut publisher, &["PUBLISH", "news", "hi"]), Value::Int(1));
    assert_eq!(subscriber.read().unwrap().text(), "[\"message\", \"news\", \"hi\"]");
    assert_eq!(cmd(&mut publisher, &["CONFIG", "SET", "timeout", "0"]), ok());

    // proto-max-bulk-len: a bulk above it is a protocol error on both, and closes the connection.
    let big = "x".repeat(1024 * 1024 + 1);
    for addr in [pair.redis.addr, pair.memlog.proxy_addr()] {
        let mut conn = connect(addr);
        assert_eq!(cmd(&mut conn, &["CONFIG", "SET", "proto-max-bulk-len", "1mb"]), ok(), "{addr}");
        // Only the header: the server answers it at once, and closing while a megabyte is still
        // arriving would reset the connection before the reply is read.
        let mut raw = std::net::TcpStream::connect(addr).unwrap();
        raw.set_read_timeout(Some(CLIENT_TIMEOUT)).unwrap();
        raw.write_all(format!("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n${}\r\n", big.len()).as_bytes()).unwrap();
        let mut reply = String::new();
        raw.read_to_string(&mut reply).unwrap();
        assert_eq!(
            reply, "-ERR Protocol error: invalid bulk length\r\n",
            "{addr}: the reply, then the connection closes"
        );
        let mut conn = connect(addr);
        assert_eq!(cmd(&mut conn, &["SET", "k", &big[1..]]), ok(), "{addr}: a bulk of exactly 1mb");
    }
}

#[test]
fn a_client_without_the_right_cannot_change_parameters() {
    let cluster = DurableCluster::start(ClusterOptions {
        journal_nodes: 1,
        shards: 1,
        proxy_extra: "[[users]]\nname = \"default\"\nrules = \"on nopass +@all -@admin ~* &*\"\n\
                      [[users]]\nname = \"ops\"\nrules = \"on >ops-secret +@all ~* &*\"\n"
            .into(),
        ..Default::default()
    });
    let lsn_before = node_value_lsn(cluster.redis_addr(0));
    let mut app = cluster.client();
    let reply = cmd(&mut app, &["CONFIG", "SET", "maxmemory-policy", "allkeys-lru"]);
    assert!(reply.text().starts_with("NOPERM"), "{reply:?}");
    assert_eq!(node_value(cluster.redis_addr(0), "maxmemory-policy"), "noeviction");
    assert_eq!(node_value_lsn(cluster.redis_addr(0)), lsn_before, "a refused CONFIG SET was journaled");
    let mut ops = cluster.client();
    assert_eq!(cmd(&mut ops, &["AUTH", "ops", "ops-secret"]), ok());
    assert_eq!(cmd(&mut ops, &["CONFIG", "SET", "maxmemory-policy", "allkeys-lru"]), ok());
    assert_eq!(node_value(cluster.redis_addr(0), "maxmemory-policy"), "allkeys-lru");
    assert!(node_value_lsn(cluster.redis_addr(0)) > lsn_before, "the change was not journaled");
}

/// The journal prefix a node holds (`__memlog:lsn`; 0 before the first write).
fn node_value_lsn(addr: SocketAddr) -> u64 {
    let mut node = redis_conn(addr).unwrap();
    match cmd(&mut node, &["GET", "__memlog:lsn"]) {
        Value::Bulk(Some(n)) => String::from_utf8(n).unwrap().parse().unwrap(),
        Value::Bulk(None) => 0,
        other => panic!("__memlog:lsn: {other:?}"),
    }
}

/// `used_memory` of a Redis node, as its `INFO memory` says.
fn used_memory(conn: &mut Conn) -> u64 {
    let info = cmd(conn, &["INFO", "memory"]).text();
    let field = info.lines().find_map(|l| l.strip_prefix("used_memory:")).expect("used_memory in INFO memory");
    field.trim().parse().unwrap()
}

/// memlog's `maxmemory` under `noeviction` answers as a stock Redis at its limit does
/// (docs/parameters.md, "Eviction"): what adds data gets `-OOM`, reads and `DEL` go on, `MULTI`
/// refuses what it queues and `EXEC` aborts, `volatile-lru` with no key that has an expiry
/// refuses too, and once `DEL`s free memory writes are taken again (every refused write is a
/// 100 kB one: on the stock server the request's own buffer is what keeps it over). Nothing refused is
/// journaled, and the node itself never runs out (it has no limit: memlog refuses first). Then
/// the primary is killed with `kill -9` and restarted empty: the rebuild from the journal holds
/// exactly what it held (`DEBUG DIGEST`), none of the refused writes.
#[test]
fn over_maxmemory_writes_are_refused_as_stock_redis_refuses_them() {
    let mut pair = Pair::start();
    let node = pair.memlog.redis_addr(0);
    let value = "v".repeat(100_000);
    let scenario = |addr: SocketAddr, node: SocketAddr, lsn: &dyn Fn() -> String| -> Vec<Value> {
        let mut client = connect(addr);
        let used = used_memory(&mut redis_conn(node).unwrap());
        let limit = (used + 2 * 1024 * 1024).to_string();
        assert_eq!(cmd(&mut client, &["CONFIG", "SET", "maxmemory", &limit, "maxmemory-policy", "noeviction"]), ok());
        let mut written = 0;
        let first_refusal = loop {
            let reply = cmd(&mut client, &["SET", &format!("big:{written}"), &value]);
            if reply != ok() {
                break reply;
            }
            written += 1;
            assert!(written < 200, "{written} writes of 100 kB under a 2 MB margin were all taken");
        };
        assert!(written >= 10, "refused after {written} writes of 100 kB under a 2 MB margin");
        let journaled = lsn();
        let mut replies = vec![
            first_refusal,
            cmd(&mut client, &["SET", "another", &value]),
            cmd(&mut client, &["STRLEN", "big:0"]),
            cmd(&mut client, &["MULTI"]),
            cmd(&mut client, &["SET", "in-multi", &value]),
            cmd(&mut client, &["EXEC"]),
        ];
        assert_eq!(lsn(), journaled, "a refused write was journaled");
        // Journaled itself (the policy reaches the nodes).
        assert_eq!(cmd(&mut client, &["CONFIG", "SET", "maxmemory-policy", "volatile-lru"]), ok());
        let journaled = lsn();
        // memlog's evictor finds there is nothing to evict at its next reading (every 100 ms);
        // until then writes are taken, as under a policy that can still evict.
        std::thread::sleep(Duration::from_millis(500));
        replies.push(cmd(&mut client, &["SET", "volatile", &value]));
        assert_eq!(lsn(), journaled, "a refused write was journaled");
        for i in 0..written {
            assert_eq!(cmd(&mut client, &["DEL", &format!("big:{i}")]), Value::Int(1), "DEL under maxmemory");
        }
        // memlog sees the memory freed at its next reading of the node (every 100 ms).
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while cmd(&mut client, &["SET", "after", "1"]) != ok() {
            assert!(std::time::Instant::now() < deadline, "writes still refused after the DELs");
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(cmd(&mut client, &["CONFIG", "SET", "maxmemory", "0"]), ok());
        replies
    };
    let expected = scenario(pair.redis.addr, pair.redis.addr, &|| String::new());
    let lsn = || cmd(&mut redis_conn(node).unwrap(), &["GET", "__memlog:lsn"]).text();
    let got = scenario(pair.memlog.proxy_addr(), node, &lsn);
    assert_eq!(expected[0].text(), "OOM command not allowed when used memory > 'maxmemory'.");
    for (i, (e, g)) in expected.iter().zip(&got).enumerate() {
        assert_eq!(g, e, "reply {i}");
    }
    assert_eq!(got.len(), expected.len());
    assert_eq!(config_get(&mut redis_conn(node).unwrap(), &["maxmemory"]), [("maxmemory".into(), "0".into())]);

    let before = Snapshot::take(node);
    pair.memlog.kill_redis(0);
    pair.memlog.restart_redis(0);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while Conn::connect(pair.memlog.proxy_addr(), CLIENT_TIMEOUT).and_then(|mut c| c.cmd(&["GET", "after"])).ok()
        != Some(Value::Bulk(Some(b"1".to_vec())))
    {
        assert!(std::time::Instant::now() < deadline, "the shard was not rebuilt\n{}", pair.memlog.proxy_log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let diff = Snapshot::take(node).data_diff(&before);
    assert_eq!(diff, Vec::<String>::new(), "the primary rebuilt after kill -9 holds other data");
    for key in ["another", "in-multi", "volatile"] {
        assert_eq!(cmd(&mut pair.memlog.client(), &["EXISTS", key]), Value::Int(0), "{key}: a refused write came back");
    }
}

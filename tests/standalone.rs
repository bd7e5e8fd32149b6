//! The standalone endpoint (issue 13, `mode = "standalone"`): the same commands sent to a stock
//! `redis-server` 7.0, which runs without cluster support, and to memlog in standalone mode
//! get the same replies; memlog in cluster mode (the default) stays a cluster. `memlog up
//! --mode standalone` is tested in `up.rs`.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::cluster::{redis_conn, ClusterOptions, DurableCluster};
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
    let pair = Pair::standalone(None);
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

/// Sorts an array reply (KEYS and a whole SCAN come back in the order of Redis's hash table,
/// which memlog's own key in database 0 changes).
fn sorted(reply: Value) -> Value {
    match reply {
        Value::Array(Some(mut items)) => {
            items.sort_by_key(Value::text);
            Value::Array(Some(items))
        }
        other => other,
    }
}

/// Every key of the connection's database, by SCAN, sorted.
fn scan_all(conn: &mut Conn) -> Value {
    let mut keys = Vec::new();
    let mut cursor = "0".to_string();
    loop {
        let Value::Array(Some(page)) = cmd(conn, &["SCAN", &cursor, "COUNT", "3"]) else { panic!("SCAN") };
        cursor = page[0].text();
        let Value::Array(Some(batch)) = &page[1] else { panic!("SCAN keys") };
        keys.extend(batch.iter().cloned());
        if cursor == "0" {
            return sorted(Value::Array(Some(keys)));
        }
    }
}

/// Per database: DBSIZE, sorted KEYS, every key by SCAN, and RANDOMKEY when it holds one key.
fn databases(conn: &mut Conn, out: &mut Vec<Value>) {
    for db in 0..16 {
        out.push(cmd(conn, &["SELECT", &db.to_string()]));
        let size = cmd(conn, &["DBSIZE"]);
        if size == Value::Int(1) {
            out.push(cmd(conn, &["RANDOMKEY"]));
        }
        out.push(size);
        out.push(sorted(cmd(conn, &["KEYS", "*"])));
        out.push(scan_all(conn));
    }
    out.push(cmd(conn, &["SELECT", "0"]));
}

/// `db=` of `CLIENT INFO`.
fn client_db(conn: &mut Conn) -> Value {
    let info = cmd(conn, &["CLIENT", "INFO"]).text();
    Value::Simple(info.split(' ').find(|field| field.starts_with("db=")).expect("db= in CLIENT INFO").to_string())
}

/// The `dbN:keys=…,expires=…` lines of `INFO keyspace` (without `avg_ttl`, an estimate Redis
/// samples as it expires keys).
fn keyspace(conn: &mut Conn) -> Value {
    let text = cmd(conn, &["INFO", "keyspace"]).text();
    let lines = text.lines().filter(|l| l.starts_with("db"));
    Value::Array(Some(lines.map(|l| Value::Simple(l.split(",avg_ttl").next().unwrap().into())).collect()))
}

/// A script that writes its key and reads it back.
const SET_AND_GET: &str = "redis.call('SET', KEYS[1], ARGV[1]) return redis.call('GET', KEYS[1])";

/// Sends each request on client `a` or `b` as it names, in order; returns the replies.
fn on_two(a: &mut Conn, b: &mut Conn, requests: &[(char, &[&str])]) -> Vec<Value> {
    requests.iter().map(|(client, args)| cmd(if *client == 'a' { &mut *a } else { &mut *b }, args)).collect()
}

/// Databases 0–15 as on a stock Redis: SELECT, writes and reads per database (a second client
/// in another database at the same time: the proxy's shared connections must not carry one
/// client's database to the other), DBSIZE, KEYS, SCAN, RANDOMKEY, FLUSHDB, MOVE and SWAPDB
/// with their error cases, a transaction, a script and probed writes in a database other than 0,
/// RESET, `CLIENT INFO`'s `db=` and `INFO keyspace`.
#[test]
fn databases_answer_as_on_a_stock_redis() {
    let pair = Pair::standalone(None);
    pair.same("databases", |addr| {
        let (mut a, mut b) = (connect(addr), connect(addr));
        let mut out = on_two(
            &mut a,
            &mut b,
            &[
                ('a', &["SET", "k", "in 0"]),
                ('a', &["SELECT", "3"]),
                ('a', &["GET", "k"]),
                ('a', &["SET", "k", "in 3"]),
                ('b', &["GET", "k"]),
                ('a', &["GET", "k"]),
                ('b', &["SELECT", "15"]),
                ('b', &["SET", "k", "in 15"]),
                ('a', &["GET", "k"]),
                ('b', &["GET", "k"]),
                ('a', &["RPUSH", "list", "x", "y"]),
                ('a', &["LRANGE", "list", "0", "-1"]),
                // Written as a probe's outcome (INCRBYFLOAT, SPOP) or rewritten (a relative TTL).
                ('a', &["INCRBYFLOAT", "f", "1.5"]),
                ('a', &["INCRBYFLOAT", "f", "0.25"]),
                ('a', &["SADD", "set", "only"]),
                ('a', &["SPOP", "set"]),
                ('a', &["SET", "ttl", "v", "EX", "1000"]),
                ('a', &["TTL", "ttl"]),
                ('a', &["MULTI"]),
                ('a', &["INCR", "n"]),
                ('a', &["INCRBYFLOAT", "n", "0.5"]),
                ('a', &["GET", "k"]),
                ('a', &["EXEC"]),
                ('a', &["EVAL", SET_AND_GET, "1", "script", "ran in 3"]),
                ('a', &["EVAL_RO", "return redis.call('GET', KEYS[1])", "1", "script"]),
                // MOVE: to a database without the key, onto a key that exists, a missing key, errors.
                ('a', &["MOVE", "list", "4"]),
                ('a', &["SET", "clash", "3"]),
                ('b', &["SET", "clash", "15"]),
                ('a', &["MOVE", "clash", "15"]),
                ('a', &["MOVE", "nosuch", "4"]),
                ('a', &["MOVE", "k", "3"]),
                ('a', &["MOVE", "k", "16"]),
                ('a', &["MOVE", "k", "-1"]),
                ('a', &["MOVE", "k", "x"]),
                ('a', &["MOVE", "k", "01"]),
                ('a', &["MOVE", "k"]),
                ('a', &["SELECT", "4"]),
                ('a', &["LRANGE", "list", "0", "-1"]),
                // FLUSHDB empties the selected database only.
                ('a', &["SET", "gone", "1"]),
                ('a', &["FLUSHDB"]),
                ('a', &["DBSIZE"]),
                // SWAPDB: two other databases, database 0 with another (memlog's key stays in 0), errors.
                ('a', &["SWAPDB", "3", "5"]),
                ('a', &["SWAPDB", "0", "5"]),
                ('a', &["SWAPDB", "7", "0"]),
                ('a', &["SWAPDB", "0", "0"]),
                ('a', &["SWAPDB", "0", "16"]),
                ('a', &["SWAPDB", "x", "1"]),
                ('a', &["SWAPDB", "1", "x"]),
                ('a', &["SWAPDB", "-1", "1"]),
                ('a', &["SWAPDB", "1"]),
                ('a', &["SELECT", "0"]),
                ('a', &["SET", "after", "swap"]),
                ('a', &["FLUSHDB", "ASYNC"]),
                ('a', &["SET", "k", "0 again"]),
                ('b', &["SELECT", "3"]),
                ('b', &["SET", "k", "3 again"]),
            ],
        );
        databases(&mut a, &mut out);
        out.push(keyspace(&mut a));
        out.push(client_db(&mut b));
        out.push(cmd(&mut b, &["RESET"]));
        out.push(client_db(&mut b));
        out.push(cmd(&mut b, &["GET", "k"]));
        out
    });
}

/// Waits until a client of `conn`'s server is blocked (`flags=b` in `CLIENT LIST`), so what is
/// sent next is a write that wakes it, not one it finds on arrival. The deadline only keeps a
/// client that never blocks from hanging the test.
fn until_blocked(conn: &mut Conn) {
    let started = Instant::now();
    while !cmd(conn, &["CLIENT", "LIST"]).text().contains(" flags=b ") {
        assert!(started.elapsed() < Duration::from_secs(30), "no client blocked");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// WATCH and blocked clients per database, as on a stock Redis: a write to the same name in
/// another database neither aborts a transaction nor serves a blocked client; one in the
/// client's database, a MOVE or COPY … DB into it or a SWAPDB does.
#[test]
fn watches_and_blocked_clients_are_per_database() {
    let pair = Pair::standalone(None);
    pair.same("watch and block per database", |addr| {
        let (mut a, mut b) = (connect(addr), connect(addr));
        let mut out = on_two(
            &mut a,
            &mut b,
            &[
                ('a', &["SELECT", "3"][..]),
                ('a', &["SET", "w", "1"]),
                ('a', &["WATCH", "w"]),
                ('b', &["SET", "w", "in 0"]),
                ('a', &["MULTI"]),
                ('a', &["INCR", "w"]),
                ('a', &["EXEC"]),
                ('a', &["WATCH", "w"]),
                ('b', &["SELECT", "3"]),
                ('b', &["SET", "w", "10"]),
                ('a', &["MULTI"]),
                ('a', &["INCR", "w"]),
                ('a', &["EXEC"]),
                ('b', &["MOVE", "w", "4"]),
                ('a', &["WATCH", "w"]),
                ('b', &["SELECT", "4"]),
                ('b', &["MOVE", "w", "3"]),
                ('a', &["MULTI"]),
                ('a', &["GET", "w"]),
                ('a', &["EXEC"]),
                ('a', &["WATCH", "w"]),
                ('b', &["SWAPDB", "3", "6"]),
                ('a', &["MULTI"]),
                ('a', &["GET", "w"]),
                ('a', &["EXEC"]),
                ('b', &["SELECT", "0"]),
                // COPY … DB writes its destination in the database it names.
                ('a', &["WATCH", "c"]),
                ('b', &["SET", "src", "v"]),
                ('b', &["COPY", "src", "c", "DB", "3"]),
                ('a', &["MULTI"]),
                ('a', &["GET", "c"]),
                ('a', &["EXEC"]),
            ],
        );
        // A pop blocked in database 3 is served by a push there, not by one to database 0.
        a.queue(&["BLPOP", "q", "0"]);
        a.flush().unwrap();
        until_blocked(&mut b);
        out.push(cmd(&mut b, &["RPUSH", "q", "zero"]));
        out.push(cmd(&mut b, &["SELECT", "3"]));
        out.push(cmd(&mut b, &["RPUSH", "q", "three"]));
        out.push(a.read().unwrap());
        out.push(cmd(&mut b, &["SELECT", "0"]));
        out.push(cmd(&mut b, &["LRANGE", "q", "0", "-1"]));
        // XREAD … BLOCK in database 5, with `$`: an entry added to the same name elsewhere is
        // not for it.
        out.push(cmd(&mut a, &["SELECT", "5"]));
        out.push(cmd(&mut a, &["XADD", "s", "1-1", "f", "v"]));
        a.queue(&["XREAD", "BLOCK", "0", "STREAMS", "s", "$"]);
        a.flush().unwrap();
        until_blocked(&mut b);
        out.push(cmd(&mut b, &["XADD", "s", "5-5", "f", "in 0"]));
        out.push(cmd(&mut b, &["SELECT", "5"]));
        out.push(cmd(&mut b, &["XADD", "s", "2-2", "f", "in 5"]));
        out.push(a.read().unwrap());
        out
    });
}

/// `SELECT` inside `MULTI`, as on a stock Redis: the commands queued after it run in the
/// database it selects, a bad index is an error in EXEC's array that selects nothing, the
/// client stays in the database selected last once EXEC ran, and in its own when a WATCH
/// aborted the transaction or it was discarded.
#[test]
fn select_inside_multi_answers_as_on_a_stock_redis() {
    let pair = Pair::standalone(None);
    pair.same("SELECT inside MULTI", |addr| {
        let (mut a, mut b) = (connect(addr), connect(addr));
        let mut out = on_two(
            &mut a,
            &mut b,
            &[
                ('a', &["MULTI"][..]),
                ('a', &["SET", "k", "in 0"]),
                ('a', &["SELECT", "4"]),
                ('a', &["SET", "k", "in 4"]),
                ('a', &["INCRBYFLOAT", "f", "2.5"]),
                ('a', &["SELECT", "99"]),
                ('a', &["SELECT", "x"]),
                ('a', &["GET", "k"]),
                ('a', &["SELECT", "6"]),
                ('a', &["RPUSH", "l", "x"]),
                ('a', &["EXEC"]),
                ('a', &["GET", "k"]),
                ('a', &["LRANGE", "l", "0", "-1"]),
                ('a', &["SELECT", "4"]),
                ('a', &["GET", "k"]),
                ('a', &["GET", "f"]),
                ('a', &["SELECT", "0"]),
                ('a', &["GET", "k"]),
                // Aborted by WATCH: nothing runs, the client stays in database 0.
                ('a', &["WATCH", "k"]),
                ('b', &["SET", "k", "changed"]),
                ('a', &["MULTI"]),
                ('a', &["SELECT", "7"]),
                ('a', &["SET", "k", "in 7"]),
                ('a', &["EXEC"]),
                ('a', &["GET", "k"]),
                ('a', &["MULTI"]),
                ('a', &["SELECT", "7"]),
                ('a', &["DISCARD"]),
                ('a', &["GET", "k"]),
                ('b', &["SELECT", "7"]),
                ('b', &["DBSIZE"]),
            ],
        );
        out.push(client_db(&mut a));
        out
    });
}

/// What databases do not support, the endpoint refuses, naming it, rather than doing it in the
/// wrong database: a script or function that calls SWAPDB, and in a transaction a write memlog
/// resolves on the primary after writes in another database.
#[test]
fn what_databases_do_not_support_is_refused() {
    let pair = Pair::standalone(None);
    let mut conn = connect(pair.memlog.proxy_addr());
    // A script's SWAPDB would carry memlog's key out of database 0 unseen by the applier.
    let reply = cmd(&mut conn, &["EVAL", "return redis.call('SWAPDB', 0, 1)", "0"]).text();
    assert!(reply.starts_with("ERR memlog: this script calls SWAPDB"), "{reply}");
    // A write whose outcome memlog works out on the primary, after writes in another database
    // of the same transaction: the dry run would replay those writes in the wrong database.
    for request in [&["MULTI"][..], &["SET", "f", "1"], &["SELECT", "2"], &["INCRBYFLOAT", "f", "1"]] {
        assert!(!cmd(&mut conn, request).is_error(), "{request:?}");
    }
    let reply = cmd(&mut conn, &["EXEC"]).text();
    assert!(reply.starts_with("EXECABORT") && reply.contains("'INCRBYFLOAT'") && reply.contains("SELECT"), "{reply}");
    assert_eq!(cmd(&mut conn, &["GET", "f"]), Value::Bulk(None), "nothing ran");
}

/// Writes in several databases, with SELECT, MOVE, SWAPDB (with database 0, which holds
/// memlog's own key, and without), FLUSHDB, transactions (one with SELECTs) and a script; sent
/// alike to a stock Redis and to memlog, in two parts (a snapshot may be taken in between).
const WRITES_IN_SEVERAL_DATABASES: [&[&[&str]]; 2] = [
    &[
        &["SET", "a", "0"],
        &["SET", "shared", "s0"],
        &["HSET", "h0", "f", "v"],
        &["SELECT", "1"],
        &["SET", "a", "1"],
        &["RPUSH", "l", "x", "y", "z"],
        &["INCRBYFLOAT", "f", "1.5"],
        &["SET", "t", "v", "EX", "100000"],
        &["SADD", "s", "only"],
        &["SELECT", "2"],
        &["SET", "b", "2"],
        &["ZADD", "z", "1", "m"],
        &["MOVE", "b", "3"],
        &["MOVE", "b", "3"],
        &["SELECT", "0"],
        &["MOVE", "shared", "5"],
        &["SWAPDB", "0", "1"],
        &["SWAPDB", "2", "4"],
        &["SELECT", "6"],
        &["SET", "gone", "1"],
        &["FLUSHDB"],
    ],
    &[
        &["SELECT", "7"],
        &["MULTI"],
        &["SET", "n", "1"],
        &["INCR", "n"],
        &["LPUSH", "q", "a"],
        &["EXEC"],
        &["SELECT", "8"],
        &["EVAL", "return redis.call('SET', KEYS[1], ARGV[1])", "1", "script", "in 8"],
        &["SELECT", "9"],
        &["SET", "k", "9"],
        &["SWAPDB", "9", "0"],
        &["MULTI"],
        &["SELECT", "10"],
        &["SET", "m", "1"],
        &["SELECT", "11"],
        &["INCRBYFLOAT", "g", "1.5"],
        &["EXEC"],
        &["SET", "in 11", "yes"],
        &["SELECT", "0"],
        &["SET", "after", "1"],
    ],
];

/// Sends part `part` of `WRITES_IN_SEVERAL_DATABASES` on a new connection; returns the replies.
fn writes_in_several_databases(addr: SocketAddr, part: usize) -> Vec<Value> {
    let mut conn = connect(addr);
    WRITES_IN_SEVERAL_DATABASES[part].iter().map(|request| cmd(&mut conn, request)).collect()
}

/// What a Redis node holds, per database: each key's serialized value (`DUMP`; the stock server
/// refuses DEBUG) and absolute expiry, read on the node itself. memlog's own key is left out
/// where it belongs, in database 0, so it shows if it is anywhere else.
fn node_databases(addr: SocketAddr) -> BTreeMap<(u8, String), (Vec<u8>, i64)> {
    let mut conn = redis_conn(addr).expect("connect to the node");
    let mut held = BTreeMap::new();
    for db in 0..16u8 {
        assert_eq!(cmd(&mut conn, &["SELECT", &db.to_string()]), Value::Simple("OK".into()));
        let Value::Array(Some(keys)) = cmd(&mut conn, &["KEYS", "*"]) else { panic!("KEYS") };
        for key in keys.iter().map(Value::text).filter(|key| db != 0 || key != "__memlog:lsn") {
            let Value::Bulk(Some(value)) = cmd(&mut conn, &["DUMP", &key]) else { panic!("DUMP {key}") };
            let Value::Int(expiry) = cmd(&mut conn, &["PEXPIRETIME", &key]) else { panic!("PEXPIRETIME") };
            held.insert((db, key), (value, expiry));
        }
    }
    held
}

/// Whether each key has an expiry: the absolute times of two servers written a moment apart
/// differ.
fn without_expiry_times(held: &BTreeMap<(u8, String), (Vec<u8>, i64)>) -> BTreeMap<(u8, String), (Vec<u8>, bool)> {
    held.iter().map(|(key, (value, expiry))| (key.clone(), (value.clone(), *expiry > 0))).collect()
}

/// What memlog's node and the stock Redis hold once both got every write; checks they agree.
fn both_hold_the_same(pair: &Pair) -> BTreeMap<(u8, String), (Vec<u8>, i64)> {
    let stock = node_databases(pair.redis.addr);
    let held = node_databases(pair.memlog.redis_addr(0));
    assert_eq!(without_expiry_times(&held), without_expiry_times(&stock), "memlog's node before the crash");
    assert!(stock.keys().any(|(db, _)| *db == 9) && stock.len() > 10, "the scenario wrote several databases");
    held
}

/// `kill -9` of the primary and a restart empty; returns once the proxy serves again (a read
/// waits for the rebuild, or fails while the node is down). The deadline only keeps a broken
/// rebuild from hanging the test.
fn crash_and_rebuild(pair: &mut Pair) {
    pair.memlog.kill_redis(0);
    pair.memlog.restart_redis(0);
    let started = Instant::now();
    while cmd(&mut connect(pair.memlog.proxy_addr()), &["GET", "after"]) != Value::Bulk(Some(b"1".to_vec())) {
        assert!(started.elapsed() < Duration::from_secs(60), "the primary was not rebuilt");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(pair.memlog.proxy_log().contains("primary rebuilt from the journal"), "the node was rebuilt");
}

/// Every database survives the primary's `kill -9` and a restart empty: the node rebuilt from
/// the journal holds, database by database, exactly what it held before, which is what a stock
/// Redis given the same commands holds; memlog's own key is in database 0 only.
#[test]
fn every_database_is_rebuilt_from_the_journal() {
    let mut pair = Pair::standalone(None);
    for part in 0..2 {
        pair.same("writes in several databases", |addr| writes_in_several_databases(addr, part));
    }
    let before = both_hold_the_same(&pair);
    crash_and_rebuild(&mut pair);
    assert_eq!(node_databases(pair.memlog.redis_addr(0)), before, "the rebuilt node");
}

/// The same from a snapshot (an RDB holds every database) taken halfway, and the journal's
/// tail after it: an empty node is loaded from the snapshot, then replayed.
#[test]
fn every_database_is_rebuilt_from_a_snapshot_and_the_journal() {
    // The scheduler would wait for a million entries: only MEMLOG SNAPSHOT takes one.
    let mut pair = Pair::standalone(Some(1_000_000));
    pair.same("writes in several databases", |addr| writes_in_several_databases(addr, 0));
    let snapshot = cmd(&mut connect(pair.memlog.proxy_addr()), &["MEMLOG", "SNAPSHOT", "0"]);
    assert!(matches!(snapshot, Value::Int(lsn) if lsn > 0), "{snapshot:?}");
    pair.same("writes in several databases", |addr| writes_in_several_databases(addr, 1));
    let before = both_hold_the_same(&pair);
    crash_and_rebuild(&mut pair);
    assert!(pair.memlog.proxy_log().contains("loading the newest snapshot before the replay"), "loaded the snapshot");
    assert_eq!(node_databases(pair.memlog.redis_addr(0)), before, "the rebuilt node");
}

/// memlog's evictor (`maxmemory` with an evicting policy, docs/parameters.md) takes keys from
/// every database: an endpoint filled in database 3 only acknowledges every write (no `-OOM`,
/// which a search of database 0 alone, holding nothing to evict, would end in) and evicts keys
/// of database 3.
#[test]
fn evictions_reach_every_database() {
    let pair = Pair::standalone(None);
    let used: u64 =
        info_field(&mut redis_conn(pair.memlog.redis_addr(0)).unwrap(), "memory", "used_memory").parse().unwrap();
    let limit = (used + 2 * 1024 * 1024).to_string();
    let mut client = connect(pair.memlog.proxy_addr());
    let set = cmd(&mut client, &["CONFIG", "SET", "maxmemory", &limit, "maxmemory-policy", "allkeys-random"]);
    assert_eq!(set, Value::Simple("OK".into()));
    assert_eq!(cmd(&mut client, &["SELECT", "3"]), Value::Simple("OK".into()));
    const KEYS: usize = 6_000;
    for chunk in (0..KEYS).collect::<Vec<_>>().chunks(200) {
        for i in chunk {
            client.queue(&["SET".to_string(), format!("k{i}"), format!("{i:0>1000}")]);
        }
        client.flush().unwrap();
        for reply in client.read_n(chunk.len()).unwrap() {
            assert_eq!(reply, Value::Simple("OK".into()), "a write under allkeys-random");
        }
    }
    let Value::Int(kept) = cmd(&mut client, &["DBSIZE"]) else { panic!("DBSIZE") };
    assert!((kept as usize) < KEYS, "keys of database 3 were evicted: {kept} of {KEYS} kept");
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
    // As Redis Cluster answers COPY into another database; database 0 and bad indexes as Redis.
    assert_eq!(cmd(&mut conn, &["SET", "{c}src", "v"]), Value::Simple("OK".into()));
    assert_eq!(
        cmd(&mut conn, &["COPY", "{c}src", "{c}dst", "DB", "1"]),
        Value::Error("ERR Copying to another database is not allowed in cluster mode".into())
    );
    assert_eq!(cmd(&mut conn, &["COPY", "{c}src", "{c}dst", "DB", "0"]), Value::Int(1));
    assert_eq!(
        cmd(&mut conn, &["COPY", "{c}src", "{c}dst", "DB", "99"]),
        Value::Error("ERR DB index is out of range".into())
    );
}

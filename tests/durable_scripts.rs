//! Scripts and functions are durable: EVAL, EVALSHA and FCALL are journaled as calls (EVALSHA as
//! EVAL with its body) and FUNCTION LOAD/DELETE/RESTORE on every shard's stream, so a cluster whose
//! Redis nodes and proxy are all killed with `kill -9` and whose Redis nodes come back EMPTY is
//! rebuilt from the journal alone with the same data (`DEBUG DIGEST`, and each key's absolute
//! expiry: scripts that set relative TTLs or read TIME are journaled with their time pinned) and
//! the same libraries.
//! And a Redis node restarted empty under a running proxy still serves EVALSHA: the proxy sends
//! the body, never the node's script cache.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::cluster::{redis_conn, ClusterOptions, DurableCluster, Snapshot};
use common::resp::{Conn, Value};

/// Calls per connection; two connections interleave theirs.
const CALLS: usize = 1_500;
const CONNECTIONS: usize = 2;
const PIPELINE: usize = 100;
/// Hash tags: each call writes several keys of one tag (one slot), tags spread over the shards.
const TAGS: usize = 40;

/// Moves ARGV[1] units from KEYS[1] to KEYS[2] (hashes of one slot), logs it in KEYS[3] and
/// bumps a counter key the script names itself (same tag).
const TRANSFER: &str = "\
local amount = tonumber(ARGV[1])
redis.call('HINCRBY', KEYS[1], 'balance', -amount)
redis.call('HINCRBY', KEYS[2], 'balance', amount)
redis.call('RPUSH', KEYS[3], ARGV[2])
redis.call('LTRIM', KEYS[3], -20, -1)
redis.call('INCR', KEYS[1] .. ':transfers')
return redis.call('HGET', KEYS[2], 'balance')";

/// Relative TTLs and the clock: journaled with the time pinned, so replay sets the same
/// absolute expiries (the snapshot compares each key's PEXPIRETIME) and the same values.
const CLOCKED: &str = "\
redis.call('SET', KEYS[1], ARGV[1], 'EX', 100000)
redis.call('HSET', KEYS[2], 'seen', redis.call('TIME')[1], ARGV[1], redis.call('TIME')[2])
redis.call('PEXPIRE', KEYS[2], 200000000)
return redis.call('PTTL', KEYS[1])";

/// Writes, then fails half-way: Redis keeps the first write, and replay must too.
const HALF_DONE: &str = "redis.call('SADD', KEYS[1], ARGV[1]) return redis.call('INCR', KEYS[2])";

const LIBRARY: &str = "#!lua name=scores
redis.register_function('score', function(keys, args)
  redis.call('ZINCRBY', keys[1], args[2], args[1])
  return redis.call('ZSCORE', keys[1], args[1])
end)
redis.register_function{function_name='top', flags={'no-writes'}, callback=function(keys)
  return redis.call('ZRANGE', keys[1], 0, 2, 'REV')
end}";

const LIBRARY_LATE: &str = "#!lua name=stamps
redis.register_function('stamp', function(keys, args)
  return redis.call('HSET', keys[1], args[1], args[2])
end)";

/// A library loaded, then deleted: replay must delete it again.
const LIBRARY_GONE: &str = "#!lua name=gone
redis.register_function('gone', function() return 1 end)";

/// xorshift64*, fixed seeds: the same workload every run.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

fn s(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|p| p.to_string()).collect()
}

/// One call of the workload and whether Redis answers it with an error (HALF_DONE does).
fn random_call(rng: &mut Rng, transfer_sha: &str, late_library: bool) -> (Vec<String>, bool) {
    let tag = rng.below(TAGS as u64);
    let key = |name: &str| format!("{{t{tag}}}:{name}");
    // Never 0: Lua formats -0 as "-0", which HINCRBY refuses.
    let n = (1 + rng.below(1000)).to_string();
    match rng.below(if late_library { 8 } else { 7 }) {
        0 => (s(&["EVAL", TRANSFER, "3", &key("a"), &key("b"), &key("log"), &n, &format!("a->b {n}")]), false),
        1 => (s(&["EVALSHA", transfer_sha, "3", &key("b"), &key("a"), &key("log"), &n, &format!("b->a {n}")]), false),
        2 => (s(&["FCALL", "score", "1", &key("z"), &format!("m{}", rng.below(8)), &n]), false),
        3 => (s(&["EVAL", HALF_DONE, "2", &key("set"), &key("text"), &n]), true),
        4 => (s(&["SET", &key("text"), &format!("not a number {n}")]), false),
        5 => (s(&["FCALL_RO", "top", "1", &key("z")]), false),
        6 => (s(&["EVAL", CLOCKED, "2", &key("ttl"), &key("clock"), &n]), false),
        _ => (s(&["FCALL", "stamp", "1", &key("stamps"), &format!("f{}", rng.below(5)), &n]), false),
    }
}

fn run_workload(client: &mut Conn, mut rng: Rng, transfer_sha: &str, late_library: bool) {
    let mut sent = 0;
    while sent < CALLS {
        let batch: Vec<(Vec<String>, bool)> =
            (0..PIPELINE.min(CALLS - sent)).map(|_| random_call(&mut rng, transfer_sha, late_library)).collect();
        for (command, _) in &batch {
            client.queue(command);
        }
        client.flush().unwrap();
        for (command, may_fail) in &batch {
            let reply = client.read().unwrap();
            // HALF_DONE fails on a text value (WRONGTYPE/not an integer), succeeds otherwise.
            assert!(*may_fail || !reply.is_error(), "{:?}: {reply:?}", &command[..2]);
        }
        sent += batch.len();
    }
}

fn ok(reply: Value) {
    assert!(matches!(&reply, Value::Simple(s) if s == "OK"), "{reply:?}");
}

/// The libraries a Redis node holds, as sorted (name, code) pairs read on the node itself.
fn libraries(addr: SocketAddr) -> Vec<(String, String)> {
    let mut conn = redis_conn(addr).unwrap();
    let Value::Array(Some(libs)) = conn.cmd(&["FUNCTION", "LIST", "WITHCODE"]).unwrap() else {
        panic!("FUNCTION LIST on {addr}")
    };
    let mut found: Vec<(String, String)> = libs
        .iter()
        .map(|lib| {
            let Value::Array(Some(fields)) = lib else { panic!("library entry {lib:?}") };
            let field = |name: &str| {
                let at = fields.iter().position(|f| f.text() == name).unwrap_or_else(|| panic!("no {name}"));
                fields[at + 1].text()
            };
            (field("library_name"), field("library_code"))
        })
        .collect();
    found.sort();
    found
}

/// Data and libraries of every primary.
fn state(cluster: &DurableCluster) -> Vec<(Snapshot, Vec<(String, String)>)> {
    (0..cluster.shards())
        .map(|shard| (Snapshot::take(cluster.redis_addr(shard)), libraries(cluster.redis_addr(shard))))
        .collect()
}

fn assert_same_state(cluster: &DurableCluster, before: &[(Snapshot, Vec<(String, String)>)], what: &str) {
    for (shard, (want, want_libs)) in before.iter().enumerate() {
        let got = Snapshot::take(cluster.redis_addr(shard));
        // The digest, and each key's value digest and absolute expiry.
        assert!(
            got == *want,
            "{what}: shard {shard} digest {} != {}; differences: {:?}\n{}",
            got.digest,
            want.digest,
            got.diff(want).iter().take(20).collect::<Vec<_>>(),
            cluster.proxy_log()
        );
        assert_eq!(&libraries(cluster.redis_addr(shard)), want_libs, "{what}: shard {shard}'s libraries");
    }
}

#[test]
fn scripts_and_functions_rebuild_identically_from_the_journal() {
    let mut cluster = DurableCluster::start(ClusterOptions { journal_nodes: 3, shards: 2, ..Default::default() });
    let mut client = cluster.client();
    let transfer_sha = client.cmd(&["SCRIPT", "LOAD", TRANSFER]).unwrap().text();
    assert_eq!(transfer_sha.len(), 40, "{transfer_sha}");
    assert_eq!(client.cmd(&["FUNCTION", "LOAD", LIBRARY]).unwrap().text(), "scores");
    assert_eq!(client.cmd(&["FUNCTION", "LOAD", LIBRARY_GONE]).unwrap().text(), "gone");
    for tag in 0..TAGS {
        assert_eq!(client.cmd(&["HSET", &format!("{{t{tag}}}:a"), "balance", "10000"]).unwrap(), Value::Int(1));
    }

    let started = Instant::now();
    let run = |late_library: bool, seed: u64| {
        std::thread::scope(|scope| {
            for c in 0..CONNECTIONS {
                let mut conn = cluster.client();
                let sha = transfer_sha.clone();
                scope.spawn(move || run_workload(&mut conn, Rng(seed + c as u64), &sha, late_library));
            }
        })
    };
    run(false, 0x5c21_7700);
    // Libraries change between calls: replay must apply them at the same place.
    assert_eq!(client.cmd(&["FUNCTION", "LOAD", LIBRARY_LATE]).unwrap().text(), "stamps");
    ok(client.cmd(&["FUNCTION", "DELETE", "gone"]).unwrap());
    let Value::Bulk(Some(dump)) = client.cmd(&["FUNCTION", "DUMP"]).unwrap() else { panic!("FUNCTION DUMP") };
    ok(client.cmd(&[&b"FUNCTION"[..], b"RESTORE", &dump, b"REPLACE"]).unwrap());
    run(true, 0x5c21_7800);
    println!("{} script and function calls in {:?}", 2 * CALLS * CONNECTIONS, started.elapsed());

    let before = state(&cluster);
    for (shard, (snapshot, libs)) in before.iter().enumerate() {
        assert!(snapshot.keys.len() > 40, "shard {shard} got only {} keys", snapshot.keys.len());
        let names: Vec<&str> = libs.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names, ["scores", "stamps"], "shard {shard}");
    }
    let transfers: i64 = (0..TAGS)
        .map(|tag| client.cmd(&["GET", &format!("{{t{tag}}}:a:transfers")]).unwrap().text().parse::<i64>().unwrap_or(0))
        .sum();
    assert!(transfers > 100, "only {transfers} transfers ran");

    cluster.kill_proxy();
    for shard in 0..cluster.shards() {
        cluster.kill_redis(shard);
        cluster.restart_redis(shard);
        assert!(libraries(cluster.redis_addr(shard)).is_empty(), "a restarted Redis must be empty");
    }
    cluster.start_proxy();
    assert_same_state(&cluster, &before, "after a rebuild of every primary from the journal");

    // The proxy's script cache, like Redis's, lives as long as the process: load again.
    let mut client = cluster.client();
    assert!(client.cmd(&["EVALSHA", &transfer_sha, "0"]).unwrap().text().starts_with("NOSCRIPT"));
    assert_eq!(client.cmd(&["SCRIPT", "LOAD", TRANSFER]).unwrap().text(), transfer_sha);
    let reply = client.cmd(&["EVALSHA", &transfer_sha, "3", "{t1}:a", "{t1}:b", "{t1}:log", "1", "after"]).unwrap();
    assert!(!reply.is_error(), "{reply:?}");
    assert_eq!(client.cmd(&["FCALL", "stamp", "1", "{t1}:stamps", "after", "1"]).unwrap(), Value::Int(1));
}

#[test]
fn evalsha_still_works_after_the_redis_nodes_restarted_empty() {
    let mut cluster = DurableCluster::start(ClusterOptions { journal_nodes: 3, shards: 2, ..Default::default() });
    let mut client = cluster.client();
    let sha = client.cmd(&["SCRIPT", "LOAD", TRANSFER]).unwrap().text();
    let keys: Vec<[String; 3]> = (0..4).map(|tag| ["a", "b", "log"].map(|k| format!("{{t{tag}}}:{k}"))).collect();
    for [a, b, log] in &keys {
        let reply = client.cmd(&["EVALSHA", &sha, "3", a, b, log, "5", "before"]).unwrap();
        assert_eq!(reply.text(), "5");
    }

    for shard in 0..cluster.shards() {
        cluster.kill_redis(shard);
        cluster.restart_redis(shard);
    }
    // The proxy catches a restarted primary up from the journal when a write finds it changed;
    // until then a write may answer that its outcome is unknown (it is journaled, and replayed).
    let deadline = Instant::now() + Duration::from_secs(30);
    for shard in 0..cluster.shards() {
        let probe = (0..).map(|i| format!("probe:{i}")).find(|k| shard_of(k, cluster.shards()) == shard).unwrap();
        while client.cmd(&["SET", &probe, "1"]).unwrap() != Value::Simple("OK".into()) {
            assert!(Instant::now() < deadline, "shard {shard} never served writes again\n{}", cluster.proxy_log());
            std::thread::sleep(Duration::from_millis(50));
        }
        // Replay ran the journaled EVAL with its body, which cached the script on the node…
        let mut node = redis_conn(cluster.redis_addr(shard)).unwrap();
        let replayed_here = (0..keys.len()).any(|tag| shard_of(&format!("t{tag}"), cluster.shards()) == shard);
        let exists = node.cmd(&["SCRIPT", "EXISTS", &sha]).unwrap();
        assert_eq!(exists, Value::Array(Some(vec![Value::Int(i64::from(replayed_here))])), "shard {shard}");
        // …and a node that lost its script cache (a replica promoted, a restart) is fine too.
        ok(node.cmd(&["SCRIPT", "FLUSH"]).unwrap());
    }
    for [a, b, log] in &keys {
        let reply = client.cmd(&["EVALSHA", &sha, "3", a, b, log, "5", "after"]).unwrap();
        assert_eq!(reply.text(), "10", "the journal rebuilt the balance, and EVALSHA ran the body");
        let log_entries = client.cmd(&["LRANGE", log, "0", "-1"]).unwrap();
        assert_eq!(log_entries.text(), format!("{:?}", ["before", "after"]));
    }
}

/// The shard of `key` (no hash tag; for `{tag}:…` pass `tag`) when the slots are split evenly
/// over `shards`, as `DurableCluster` does.
fn shard_of(key: &str, shards: usize) -> usize {
    let slot = crc16(key.as_bytes()) as usize % 16384;
    (0..shards).find(|&i| slot < 16384 * (i + 1) / shards).unwrap()
}

/// CRC16-XMODEM, Redis Cluster's key hash (keys here have no hash tag).
fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    crc
}

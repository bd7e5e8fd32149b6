//! Rebuild from the journal alone: 100,000 mixed writes through the proxy, then `kill -9` of
//! every Redis node and the proxy; the Redis nodes come back EMPTY and the proxy replays the
//! journal onto them before it serves. Each primary must then hold exactly what it held before
//! (`DEBUG DIGEST`), which also checks that journal entries are deterministic: SPOP, XADD *,
//! INCRBYFLOAT, relative TTLs and consumer groups replayed later give the same dataset, and
//! that the interleaving of several connections' writes is the one the journal recorded.

mod common;

use common::cluster::{ClusterOptions, DurableCluster, Snapshot};
use common::resp::{Conn, Value};

const COMMANDS: usize = 100_000;
/// Connections sending the workload at once (each its own share, in its own order).
const CONNECTIONS: usize = 4;
const PIPELINE: usize = 500;
const KEYS_PER_TYPE: u64 = 200;
const STREAMS: u64 = 20;
/// TTLs far longer than the test, so nothing expires between the snapshot and the check.
const TTL_S: u64 = 1_000_000;

/// xorshift64*: a fixed seed makes the workload the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One random write of a random type; stream ids read by XREADGROUP earlier get acknowledged.
/// A transaction on one slot, sometimes guarded by WATCH (which other connections' writes may
/// abort: an aborted EXEC must leave no trace in the journal either). Includes commands the
/// sequencer resolves by probing (SPOP, INCRBYFLOAT) and a blocking pop, which in MULTI never blocks,
/// each also after a write to its key in the same transaction.
fn random_transaction(rng: &mut Rng) -> Vec<Vec<String>> {
    let k = rng.below(KEYS_PER_TYPE / 4);
    let v = rng.below(1_000_000).to_string();
    let s = |parts: &[&str]| parts.iter().map(|p| p.to_string()).collect::<Vec<_>>();
    let mut commands = Vec::new();
    if rng.below(2) == 0 {
        commands.push(s(&["WATCH", &format!("{{tx:{k}}}n")]));
    }
    commands.push(s(&["MULTI"]));
    commands.push(s(&["INCR", &format!("{{tx:{k}}}n")]));
    commands.push(s(&["BLPOP", &format!("{{tx:{k}}}l"), "1"]));
    commands.push(s(&["RPUSH", &format!("{{tx:{k}}}l"), &v]));
    commands.push(s(&["SPOP", &format!("{{tx:{k}}}set")]));
    commands.push(s(&["SADD", &format!("{{tx:{k}}}set"), &v]));
    commands.push(s(&["INCRBYFLOAT", &format!("{{tx:{k}}}f"), "0.5"]));
    commands.push(s(&["EXPIRE", &format!("{{tx:{k}}}n"), &TTL_S.to_string()]));
    // Probed again after the writes above to the same keys: resolved against the state those
    // writes leave (`normalize::after_earlier_writes`), and journaled as that outcome.
    commands.push(s(&["SPOP", &format!("{{tx:{k}}}set")]));
    commands.push(s(&["INCRBYFLOAT", &format!("{{tx:{k}}}f"), "0.25"]));
    commands.push(s(&["BLPOP", &format!("{{tx:{k}}}l"), "1"]));
    commands.push(s(&["EXEC"]));
    commands
}

fn random_command(rng: &mut Rng, to_ack: &mut Vec<(String, String)>) -> Vec<Vec<String>> {
    let k = rng.below(KEYS_PER_TYPE);
    let v = rng.below(1_000_000).to_string();
    let m = format!("m{}", rng.below(50));
    let s = |parts: &[&str]| vec![parts.iter().map(|p| p.to_string()).collect::<Vec<_>>()];
    match rng.below(35) {
        34 => random_transaction(rng),
        0 => s(&["SET", &format!("s:{k}"), &v]),
        1 => s(&["SET", &format!("s:{k}"), &v, "EX", &TTL_S.to_string()]),
        2 => s(&["SET", &format!("s:{k}"), &v, "PX", &(TTL_S * 1000).to_string()]),
        3 => s(&["INCR", &format!("n:{k}")]),
        4 => s(&["INCRBYFLOAT", &format!("f:{k}"), "1.25"]),
        5 => s(&["APPEND", &format!("a:{k}"), &v]),
        6 => s(&["LPUSH", &format!("l:{k}"), &v]),
        7 => s(&["RPUSH", &format!("l:{k}"), &v, &m]),
        8 => s(&["LPOP", &format!("l:{k}")]),
        9 => s(&["LTRIM", &format!("l:{k}"), "0", "30"]),
        10 => s(&["HSET", &format!("h:{k}"), &m, &v]),
        11 => s(&["HINCRBY", &format!("h:{k}"), "count", "3"]),
        12 => s(&["HINCRBYFLOAT", &format!("h:{k}"), "float", "0.1"]),
        13 => s(&["HDEL", &format!("h:{k}"), &m]),
        14 => s(&["SADD", &format!("set:{k}"), &m, &v]),
        15 => s(&["SPOP", &format!("set:{k}")]),
        16 => s(&["SPOP", &format!("set:{k}"), "2"]),
        17 => s(&["SREM", &format!("set:{k}"), &m]),
        18 => s(&["ZADD", &format!("z:{k}"), &rng.below(1000).to_string(), &m]),
        19 => s(&["ZINCRBY", &format!("z:{k}"), "1.5", &m]),
        20 => s(&["ZREM", &format!("z:{k}"), &m]),
        21 | 22 => s(&["XADD", &format!("x:{}", k % STREAMS), "*", "field", &v]),
        23 => s(&["XREADGROUP", "GROUP", "g", "c1", "COUNT", "3", "STREAMS", &format!("x:{}", k % STREAMS), ">"]),
        24 => match to_ack.pop() {
            Some((stream, id)) => s(&["XACK", &stream, "g", &id]),
            None => s(&["XADD", &format!("x:{}", k % STREAMS), "*", "field", &v]),
        },
        25 => s(&["PFADD", &format!("hll:{k}"), &v]),
        26 => s(&["SETBIT", &format!("b:{k}"), &rng.below(10_000).to_string(), "1"]),
        27 => s(&["SET", &format!("e:{k}"), &v]),
        28 => s(&["EXPIRE", &format!("e:{k}"), &TTL_S.to_string()]),
        29 => s(&["PEXPIRE", &format!("s:{k}"), &(TTL_S * 1000).to_string()]),
        30 => s(&["DEL", &format!("s:{k}")]),
        31 => s(&["DEL", &format!("l:{k}")]),
        32 => s(&["GETDEL", &format!("e:{k}")]),
        _ => s(&["HSET", &format!("h:{k}"), "f", &v, "g", &m]),
    }
}

/// The stream ids an XREADGROUP reply delivered: `[[stream, [[id, fields], …]], …]`.
fn delivered_ids(reply: &Value) -> Vec<(String, String)> {
    let Value::Array(Some(streams)) = reply else { return Vec::new() };
    let mut ids = Vec::new();
    for stream in streams {
        let Value::Array(Some(parts)) = stream else { continue };
        let (Some(name), Some(Value::Array(Some(entries)))) = (parts.first(), parts.get(1)) else { continue };
        for entry in entries {
            if let Value::Array(Some(fields)) = entry {
                ids.extend(fields.first().map(|id| (name.text(), id.text())));
            }
        }
    }
    ids
}

/// Sends `COMMANDS` commands from `rng`, pipelined on one connection; fails on any error reply
/// (every command is valid). Returns how many transactions executed (the others were aborted by
/// their WATCH).
fn run_workload(client: &mut Conn, mut rng: Rng) -> usize {
    let mut to_ack = Vec::new();
    let mut sent = 0;
    let mut executed = 0;
    while sent < COMMANDS / CONNECTIONS {
        let batch: Vec<Vec<String>> = (0..PIPELINE.min(COMMANDS / CONNECTIONS - sent))
            .flat_map(|_| random_command(&mut rng, &mut to_ack))
            .collect();
        for command in &batch {
            client.queue(command);
        }
        client.flush().unwrap();
        for command in &batch {
            let reply = client.read().unwrap_or_else(|e| panic!("{command:?} after {sent} commands: {e}"));
            assert!(!reply.is_error(), "{command:?} after {sent} commands: {reply:?}");
            if command[0] == "XREADGROUP" {
                to_ack.extend(delivered_ids(&reply));
            }
            if command[0] == "EXEC"
                && matches!(&reply, Value::Array(Some(replies)) if replies.iter().all(|r| !r.is_error()))
            {
                executed += 1;
            }
        }
        sent += batch.len();
    }
    executed
}

/// The consumer group every stream is read through.
fn create_groups(client: &mut Conn) {
    for stream in 0..STREAMS {
        let reply = client.cmd(&["XGROUP", "CREATE", &format!("x:{stream}"), "g", "$", "MKSTREAM"]).unwrap();
        assert_eq!(reply, Value::Simple("OK".into()));
    }
}

#[test]
fn every_primary_is_rebuilt_identically_from_the_journal_alone() {
    let mut cluster = DurableCluster::start(ClusterOptions { journal_nodes: 3, shards: 3, ..Default::default() });
    create_groups(&mut cluster.client());
    let started = std::time::Instant::now();
    let transactions: usize = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..CONNECTIONS)
            .map(|c| {
                let mut client = cluster.client();
                scope.spawn(move || run_workload(&mut client, Rng(0x6d65_6d6c_6f67 + c as u64)))
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).sum()
    });
    let took = started.elapsed();
    println!(
        "{COMMANDS} commands in {took:?} ({:.0}/s), {transactions} transactions executed",
        COMMANDS as f64 / took.as_secs_f64()
    );
    assert!(transactions > 100, "only {transactions} transactions executed");
    let before = cluster.snapshots();
    let keys: usize = before.iter().map(|s| s.keys.len()).sum();
    assert!(keys > 1_000, "the workload left only {keys} keys");
    assert!(before.iter().all(|s| s.keys.len() > 100), "a shard got almost nothing");

    cluster.kill_proxy();
    for shard in 0..cluster.shards() {
        cluster.kill_redis(shard);
        cluster.restart_redis(shard);
    }
    assert_eq!(Snapshot::take(cluster.redis_addr(0)).keys.len(), 0, "a restarted Redis must be empty");
    let replay = cluster.start_proxy();
    let entries = cluster.entries_replayed();
    println!(
        "proxy restarted on empty primaries and served after {replay:?}: {entries} journal entries replayed ({:.0} entries/s)",
        entries as f64 / replay.as_secs_f64()
    );
    cluster.assert_same(&before, "after a rebuild of every primary");

    // Determinism: a second replay of the same journal, into another fresh Redis, agrees.
    cluster.kill_proxy();
    cluster.kill_redis(1);
    cluster.restart_redis(1);
    let replay = cluster.start_proxy();
    println!("shard 1 replayed again into a fresh Redis in {replay:?}");
    cluster.assert_same(&before, "after a second replay of shard 1");

    // And it still serves writes after all that.
    let mut client = cluster.client();
    assert_eq!(client.cmd(&["SET", "after-rebuild", "1"]).unwrap(), Value::Simple("OK".into()));
}

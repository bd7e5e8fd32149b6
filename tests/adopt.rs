//! Adoption (issue 14) with real processes: memlog started in front of a stock Redis that
//! already holds data (with `requirepass`, the proxy's password from `[backend] password_file`)
//! makes that data durable as a baseline snapshot before it serves, so the node wiped and
//! restarted empty gets every key back; data the journal does not explain is refused.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{redis_conn, ClusterOptions, DurableCluster, Snapshot};
use common::resp::{Conn, Value};

const LSN_KEY: &[u8] = b"__memlog:lsn";
/// Keys the adopted node holds (one of them the stream).
const KEYS: usize = 200_000;

/// One shard, snapshots in the cluster's dir, never taken by the scheduler during the test.
fn options() -> ClusterOptions {
    ClusterOptions { shards: 1, snapshot_every: Some(1_000_000), ..ClusterOptions::default() }
}

/// Sends `commands` pipelined in chunks; every reply must be a non-error.
fn pipeline(conn: &mut Conn, commands: impl Iterator<Item = Vec<String>>) {
    let mut pending = 0;
    let drain = |conn: &mut Conn, pending: &mut usize| {
        conn.flush().unwrap();
        for reply in conn.read_n(*pending).unwrap() {
            assert!(!reply.is_error(), "{reply:?}");
        }
        *pending = 0;
    };
    for command in commands {
        conn.queue(&command);
        pending += 1;
        if pending == 5_000 {
            drain(conn, &mut pending);
        }
    }
    drain(conn, &mut pending);
}

/// Fills the node at `conn` with [`KEYS`] keys of every core type, some with TTLs: strings
/// (plain, integer-encoded, 1 KiB), lists, hashes, sets (int and plain), sorted sets,
/// HyperLogLogs, and one stream with a consumer group and a pending entry.
fn populate(conn: &mut Conn) {
    let big = "x".repeat(1024);
    let commands = (0..KEYS - 1).map(move |i| {
        let args: Vec<String> = match i % 10 {
            0 | 1 => vec!["SET".into(), format!("str:{i}"), format!("value-{i}")],
            2 => vec!["SET".into(), format!("int:{i}"), i.to_string()],
            3 => vec!["SET".into(), format!("big:{i}"), format!("{big}{i}")],
            4 => vec!["RPUSH".into(), format!("list:{i}"), "a".into(), "b".into(), i.to_string()],
            5 => vec!["HSET".into(), format!("hash:{i}"), "f".into(), "v".into(), "n".into(), i.to_string()],
            6 if i % 20 == 6 => vec!["SADD".into(), format!("intset:{i}"), "1".into(), "2".into(), i.to_string()],
            6 => vec!["SADD".into(), format!("set:{i}"), "x".into(), "y".into(), format!("m{i}")],
            7 => vec!["ZADD".into(), format!("zset:{i}"), "1".into(), "a".into(), "2.5".into(), format!("m{i}")],
            8 => vec!["PFADD".into(), format!("hll:{i}"), "a".into(), "b".into(), i.to_string()],
            // Strings with a TTL far beyond the test (an hour and more).
            _ => vec!["SET".into(), format!("ttl:{i}"), "v".into(), "PX".into(), (3_600_000 + i * 7).to_string()],
        };
        args
    });
    pipeline(conn, commands);
    // TTLs on other types too.
    pipeline(conn, (0..KEYS / 10).map(|j| vec!["PEXPIRE".into(), format!("hash:{}", j * 10 + 5), "7200000".into()]));
    let stream: [&[&str]; 4] = [
        &["XADD", "stream", "1-1", "f", "v"],
        &["XADD", "stream", "2-1", "f", "v2"],
        &["XGROUP", "CREATE", "stream", "grp", "0"],
        &["XREADGROUP", "GROUP", "grp", "alice", "COUNT", "1", "STREAMS", "stream", ">"],
    ];
    pipeline(conn, stream.iter().map(|c| c.iter().map(|a| a.to_string()).collect()));
}

/// The node's keys without memlog's own, for comparison: value digests exactly, expiries
/// (absolute, in ms) within a second.
fn assert_same_data(got: &Snapshot, want: &Snapshot, what: &str, log: &str) {
    let (mut got, mut want) = (got.keys.clone(), want.keys.clone());
    for keys in [&mut got, &mut want] {
        keys.retain(|k, _| !k.starts_with(b"__memlog:"));
    }
    let mut problems = Vec::new();
    for (key, (digest, expiry)) in &want {
        let name = String::from_utf8_lossy(key);
        match got.get(key) {
            None => problems.push(format!("lost {name}")),
            Some((d, _)) if d != digest => problems.push(format!("{name}: value digest {d} != {digest}")),
            Some((_, e)) if (e - expiry).abs() > 1_000 => problems.push(format!("{name}: expiry {e} != {expiry}")),
            Some(_) => {}
        }
    }
    problems
        .extend(got.keys().filter(|k| !want.contains_key(*k)).map(|k| format!("extra {}", String::from_utf8_lossy(k))));
    assert!(
        problems.is_empty(),
        "{what}: {} of {} keys differ, e.g.:\n{}\n{log}",
        problems.len(),
        want.len(),
        problems.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
    );
}

/// What `memlog status --config` prints about the cluster.
fn memlog_status(cluster: &DurableCluster) -> String {
    let status = std::process::Command::new(common::memlog_bin())
        .args(["status", "--config"])
        .arg(cluster.dir.path().join("proxy.toml"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&status.stdout).into_owned()
}

/// Reads `key` through the proxy until it reads as `value` (the shard rebuilt), up to a minute.
fn wait_until_reads(cluster: &DurableCluster, key: &str, value: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut client = cluster.client();
    loop {
        let reply = client.cmd(&["GET", key]).unwrap();
        match &reply {
            Value::Bulk(Some(v)) if v == value.as_bytes() => return,
            // Before the rebuild, a read waits or is refused: it never finds the key missing.
            Value::Bulk(None) => panic!("{key} read as missing while the node was rebuilt\n{}", cluster.proxy_log()),
            _ => {}
        }
        assert!(Instant::now() < deadline, "{key} never read back: {reply:?}\n{}", cluster.proxy_log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_redis_with_200k_keys_of_every_type_is_adopted_and_survives_being_wiped() {
    let mut cluster = DurableCluster::start_without_proxy(options());
    let node = cluster.redis_addr(0);
    let loaded = Instant::now();
    populate(&mut redis_conn(node).unwrap());
    let before = Snapshot::take(node);
    assert_eq!(before.keys.len(), KEYS, "the node holds every key");
    println!("{KEYS} keys loaded and digested in {:?}", loaded.elapsed());

    let took = cluster.start_proxy();
    let log = cluster.proxy_log();
    println!("proxy serving after {took:?} (adoption included)");
    assert!(log.contains("adopting it (a baseline snapshot at lsn 0)"), "{log}");
    assert!(log.contains("adopted: the primary's data is now the shard's baseline snapshot"), "{log}");
    let baseline = cluster.snapshot_dir().join("shard-0").join(format!("{:020}.rdb", 0));
    assert!(baseline.exists(), "no baseline snapshot at {}", baseline.display());
    assert_same_data(&Snapshot::take(node), &before, "after adoption", &log);
    let status = memlog_status(&cluster);
    let adopted = format!("shard 0 adopted {KEYS} keys from {node} (its baseline snapshot, lsn 0)");
    assert!(status.contains(&adopted), "memlog status:\n{status}");

    // Writes after the adoption: journaled on top of the baseline.
    let mut client = cluster.client();
    for (args, want) in [
        (&["SET", "str:0", "changed"][..], Value::Simple("OK".into())),
        (&["DEL", "list:4"][..], Value::Int(1)),
        (&["SET", "after:adoption", "yes"][..], Value::Simple("OK".into())),
        (&["HSET", "hash:5", "g", "w"][..], Value::Int(1)),
    ] {
        assert_eq!(client.cmd(args).unwrap(), want, "{args:?}");
    }
    let expected = Snapshot::take(node);
    // A restarted proxy finds the node holding an LSN: nothing to adopt again.
    cluster.kill_proxy();
    cluster.start_proxy();
    let restarted = cluster.proxy_logs().pop().unwrap();
    assert!(!restarted.contains("adopting"), "adopted again after a restart:\n{restarted}");

    // A new process without any file (`restart_redis` removes the RDB, and the node saves
    // none): empty until the proxy rebuilds it, which may already be under way when it is asked.
    let run_id = |conn: &mut Conn| {
        conn.cmd(&["INFO", "server"]).unwrap().text().lines().find(|l| l.starts_with("run_id:")).map(str::to_string)
    };
    let old_run = run_id(&mut redis_conn(node).unwrap());
    cluster.kill_redis(0);
    cluster.restart_redis(0);
    assert_ne!(run_id(&mut redis_conn(node).unwrap()), old_run, "the node restarted");
    let rebuilt = Instant::now();
    wait_until_reads(&cluster, "after:adoption", "yes");
    wait_until_reads(&cluster, "str:1", "value-1");
    println!("node rebuilt from the baseline and the journal in {:?}", rebuilt.elapsed());
    let after = Snapshot::take(node);
    assert_same_data(&after, &expected, "after the wipe", &cluster.proxy_log());
    assert!(after.keys.contains_key(LSN_KEY), "the rebuilt node holds its LSN");
}

/// The reply to `command` through the proxy must be the refusal of shard 0 containing `reason`.
fn assert_refused(client: &mut Conn, command: &[&str], reason: &str) {
    match client.cmd(command).unwrap() {
        Value::Error(e) => {
            assert!(e.starts_with("CLUSTERDOWN memlog: shard 0: ") && e.contains(reason), "{command:?}: {e}");
            assert!(e.contains("adopt it anew") && e.contains("discard the node's data"), "{command:?}: {e}");
        }
        other => panic!("{command:?} on the refused shard answered {other:?}"),
    }
}

/// Two shards: shard 0's node is replaced by one holding data the journal does not explain;
/// that shard is refused (every command routed to it answered with the reason and the ways
/// out, its node and journal left as they were) while shard 1 serves reads and writes. Shard 0
/// owns slots 0-8191: `{b}` hashes to slot 3300, `{a}` to 15495 (shard 1).
#[test]
fn keys_without_an_lsn_on_a_journaled_shard_or_a_node_ahead_of_the_journal_are_refused() {
    let mut cluster = DurableCluster::start(ClusterOptions { shards: 2, ..options() });
    let mut client = cluster.client();
    for key in ["{b}journaled", "{a}journaled"] {
        assert_eq!(client.cmd(&["SET", key, "1"]).unwrap(), Value::Simple("OK".into()));
    }
    cluster.kill_proxy();
    // The node is replaced by one holding other data, without memlog's LSN.
    cluster.kill_redis(0);
    cluster.restart_redis(0);
    let node = cluster.redis_addr(0);
    let mut direct = redis_conn(node).unwrap();
    for i in 0..50 {
        assert_eq!(direct.cmd(&["SET", &format!("foreign:{i}"), "x"]).unwrap(), Value::Simple("OK".into()));
    }
    let before = Snapshot::take(node);
    cluster.start_proxy();
    let log = cluster.proxy_log();
    let refusal = format!("shard 0: its primary {node} holds 50 keys but no __memlog:lsn");
    assert!(log.contains(&refusal), "{log}");
    assert!(log.contains("adopt it anew") && log.contains("discard the node's data"), "{log}");
    let mut client = cluster.client();
    for command in
        [&["GET", "{b}journaled"][..], &["SET", "{b}refused-write", "x"], &["DEL", "{b}journaled"], &["DBSIZE"]]
    {
        assert_refused(&mut client, command, &refusal);
    }
    assert_eq!(client.cmd(&["MULTI"]).unwrap(), Value::Simple("OK".into()));
    assert_eq!(client.cmd(&["SET", "{b}in-a-transaction", "x"]).unwrap(), Value::Simple("QUEUED".into()));
    assert_refused(&mut client, &["EXEC"], &refusal);
    assert_refused(&mut client, &["MEMLOG", "SNAPSHOT", "0"], &refusal);
    // The other shard serves.
    assert_eq!(client.cmd(&["GET", "{a}journaled"]).unwrap(), Value::Bulk(Some(b"1".to_vec())));
    assert_eq!(client.cmd(&["SET", "{a}new", "v"]).unwrap(), Value::Simple("OK".into()));
    assert_eq!(client.cmd(&["GET", "{a}new"]).unwrap(), Value::Bulk(Some(b"v".to_vec())));
    // INFO and `memlog status` say so.
    let info = client.cmd(&["INFO", "memlog"]).unwrap().text();
    assert!(info.contains(&format!("shard0_refused:{refusal}")) && !info.contains("shard1_refused"), "{info}");
    let keyspace = client.cmd(&["INFO", "keyspace"]).unwrap();
    assert!(!keyspace.is_error() && keyspace.text().contains("db0:keys=2,"), "{keyspace:?}");
    let status = memlog_status(&cluster);
    assert!(status.contains(&format!("shard 0 REFUSED, not served: {refusal}")), "memlog status:\n{status}");
    // Past the failover controller's checks, the refused node is as it was.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(Snapshot::take(node), before, "the refused node was left as it was");

    // A node claiming more of the journal than was ever committed.
    cluster.kill_proxy();
    assert_eq!(direct.cmd(&["SET", "__memlog:lsn", "999999"]).unwrap(), Value::Simple("OK".into()));
    cluster.start_proxy();
    let mut client = cluster.client();
    assert_refused(
        &mut client,
        &["GET", "{b}journaled"],
        "holds the journal up to lsn 999999, beyond the journal's commit point",
    );
    assert_eq!(client.cmd(&["GET", "{a}new"]).unwrap(), Value::Bulk(Some(b"v".to_vec())));
    // WAIT counts the serving shards (the refused one holds no write), FLUSHALL answers the
    // refusal (the serving shard is flushed).
    assert!(matches!(client.cmd(&["WAIT", "1", "2000"]).unwrap(), Value::Int(n) if n >= 1));
    assert_refused(&mut client, &["FLUSHALL"], "beyond the journal's commit point");
    assert_eq!(client.cmd(&["GET", "{a}new"]).unwrap(), Value::Bulk(None));

    // Discarding the node's data is the way out: the proxy then rebuilds it from the journal,
    // which holds no write made while the shard was refused.
    cluster.kill_proxy();
    assert_eq!(direct.cmd(&["FLUSHALL"]).unwrap(), Value::Simple("OK".into()));
    cluster.start_proxy();
    let mut client = cluster.client();
    assert_eq!(client.cmd(&["GET", "{b}journaled"]).unwrap(), Value::Bulk(Some(b"1".to_vec())));
    for key in ["{b}refused-write", "{b}in-a-transaction"] {
        assert_eq!(client.cmd(&["GET", key]).unwrap(), Value::Bulk(None), "{key} was journaled");
    }
}

#[test]
fn adoption_without_a_snapshot_table_is_refused_naming_the_table() {
    let mut cluster = DurableCluster::start_without_proxy(ClusterOptions { shards: 1, ..ClusterOptions::default() });
    let node = cluster.redis_addr(0);
    let mut direct = redis_conn(node).unwrap();
    assert_eq!(direct.cmd(&["SET", "existing", "1"]).unwrap(), Value::Simple("OK".into()));
    cluster.start_proxy();
    let log = cluster.proxy_log();
    let refusal = format!("shard 0: its primary {node} holds 1 keys that no journal holds");
    assert!(log.contains(&refusal), "{log}");
    assert!(log.contains("no [snapshot] table is configured: add one"), "{log}");
    match cluster.client().cmd(&["GET", "existing"]).unwrap() {
        Value::Error(e) => assert!(e.starts_with("CLUSTERDOWN memlog: ") && e.contains(&refusal), "{e}"),
        other => panic!("GET on the refused shard answered {other:?}"),
    }
}

#[test]
fn keys_of_other_shards_slots_on_an_adopted_node_are_reported_and_kept() {
    let mut cluster = DurableCluster::start_without_proxy(ClusterOptions { shards: 2, ..options() });
    let node = cluster.redis_addr(0);
    let mut direct = redis_conn(node).unwrap();
    // Shard 0 owns slots 0-8191: `{a}` hashes to slot 15495 (shard 1's), `{b}` to 3300 (its own).
    for i in 0..30 {
        assert_eq!(direct.cmd(&["SET", &format!("{{a}}:{i}"), "elsewhere"]).unwrap(), Value::Simple("OK".into()));
        assert_eq!(direct.cmd(&["SET", &format!("{{b}}:{i}"), "here"]).unwrap(), Value::Simple("OK".into()));
    }
    // And one in a database memlog does not serve (SELECT is refused, as in Redis Cluster).
    for (command, reply) in
        [(&["SELECT", "1"][..], "OK"), (&["SET", "{b}:db1", "kept"][..], "OK"), (&["SELECT", "0"][..], "OK")]
    {
        assert_eq!(direct.cmd(command).unwrap(), Value::Simple(reply.into()));
    }
    cluster.start_proxy();
    let log = cluster.proxy_log();
    assert!(log.contains("the primary holds keys whose slots other shards own"), "{log}");
    assert!(log.contains("keys=30"), "{log}");
    assert!(log.contains("the primary holds keys in databases other than 0"), "{log}");
    let status = memlog_status(&cluster);
    let line = format!(
        "shard 0 adopted 61 keys from {node} (its baseline snapshot, lsn 0); 30 of them in other shards' slots"
    );
    assert!(status.contains(&line), "memlog status:\n{status}");
    // Kept on the node, not served through shard 0: the proxy routes `{a}` to shard 1.
    assert_eq!(direct.cmd(&["GET", "{a}:0"]).unwrap(), Value::Bulk(Some(b"elsewhere".to_vec())));
    let mut client = cluster.client();
    assert_eq!(client.cmd(&["GET", "{a}:0"]).unwrap(), Value::Bulk(None));
    assert_eq!(client.cmd(&["GET", "{b}:0"]).unwrap(), Value::Bulk(Some(b"here".to_vec())));
    // Both kinds are in the baseline: a wiped node gets them back.
    cluster.kill_redis(0);
    cluster.restart_redis(0);
    wait_until_reads(&cluster, "{b}:1", "here");
    let mut direct = redis_conn(node).unwrap();
    assert_eq!(direct.cmd(&["GET", "{a}:0"]).unwrap(), Value::Bulk(Some(b"elsewhere".to_vec())));
    assert_eq!(direct.cmd(&["SELECT", "1"]).unwrap(), Value::Simple("OK".into()));
    assert_eq!(direct.cmd(&["GET", "{b}:db1"]).unwrap(), Value::Bulk(Some(b"kept".to_vec())));
}

/// An adopted shard's primary that comes back holding keys only in a database memlog does not
/// serve (here one in database 3, with no `__memlog:lsn`) gets the adopted data back: the
/// baseline snapshot is loaded (over that key, with a warning), then the journal replayed.
/// Taking such a node for the holder of the shard's data (counting every database as
/// non-empty) loses the adopted keys: the journal never held them.
#[test]
fn an_adopted_node_back_with_keys_only_in_another_database_gets_its_baseline_back() {
    let mut cluster = DurableCluster::start_without_proxy(options());
    let node = cluster.redis_addr(0);
    let mut direct = redis_conn(node).unwrap();
    for i in 0..10 {
        assert_eq!(direct.cmd(&["SET", &format!("adopted{i}"), "a"]).unwrap(), Value::Simple("OK".into()));
    }
    cluster.start_proxy();
    let mut client = cluster.client();
    assert_eq!(client.cmd(&["SET", "journaled", "j"]).unwrap(), Value::Simple("OK".into()));
    // An RDB holding one key, in database 3, becomes the node's file.
    let other = tempfile::tempdir().unwrap();
    let stock = common::spawn_redis(other.path(), &[]);
    let mut conn = Conn::connect(stock.addr, Duration::from_secs(5)).unwrap();
    for command in [&["SELECT", "3"][..], &["SET", "only-in-db3", "x"], &["SAVE"]] {
        assert_eq!(conn.cmd(command).unwrap(), Value::Simple("OK".into()));
    }
    cluster.kill_redis(0);
    let rdb = |dir: &std::path::Path, port: u16| dir.join(format!("redis-{port}")).join("dump.rdb");
    std::fs::copy(rdb(other.path(), stock.addr.port()), rdb(cluster.dir.path(), node.port())).unwrap();
    cluster.restart_redis_from_its_rdb(0);
    wait_until_reads(&cluster, "journaled", "j");
    let warning = "the node holds keys only in databases other than 0, which memlog does not serve";
    assert!(cluster.proxy_log().contains(warning), "{}", cluster.proxy_log());
    for i in 0..10 {
        let reply = client.cmd(&["GET", &format!("adopted{i}")]).unwrap();
        assert_eq!(reply, Value::Bulk(Some(b"a".to_vec())), "adopted{i}\n{}", cluster.proxy_log());
    }
}

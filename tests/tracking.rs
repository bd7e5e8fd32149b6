//! Client-side caching (`CLIENT TRACKING`, issue 13) done by the proxy, against a stock
//! `redis-server` 7.0 started by the test and through memlog, with the same traffic and the
//! replies and invalidation frames compared: a RESP3 push for a key another client wrote, a
//! RESP2 client redirected to a `__redis__:invalidate` subscriber, BCAST with prefixes, OPTIN
//! with `CACHING yes`, NOLOOP, an invalidation caused by an expiry, FLUSHALL's null, GETREDIR,
//! TRACKINGINFO and CLIENT LIST's fields, and the errors. Client ids differ between the two
//! servers, so replies name them as `ID`.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::pair::{cmd, connect, Pair};
use common::resp::{Conn, Value};

/// A connection that speaks RESP3 (HELLO's reply, which names the server, is not compared).
fn resp3(addr: SocketAddr) -> Conn {
    let mut conn = connect(addr);
    assert!(!cmd(&mut conn, &["HELLO", "3"]).is_error());
    conn
}

fn client_id(conn: &mut Conn) -> i64 {
    match cmd(conn, &["CLIENT", "ID"]) {
        Value::Int(id) => id,
        other => panic!("CLIENT ID: {other:?}"),
    }
}

/// The next frame: an invalidation the test waits for (a missing one fails it after the client's
/// read timeout).
fn read(conn: &mut Conn) -> Value {
    conn.read().expect("an invalidation, within the read timeout")
}

/// `value` with the client id `id` written as `ID` (in integers and in text).
fn naming(value: Value, id: i64) -> Value {
    match value {
        Value::Int(n) if n == id => Value::Simple("ID".into()),
        Value::Bulk(Some(text)) => {
            let text = String::from_utf8_lossy(&text).replace(&format!("={id} "), "=ID ");
            Value::Bulk(Some(text.into_bytes()))
        }
        Value::Array(Some(items)) => Value::Array(Some(items.into_iter().map(|v| naming(v, id)).collect())),
        Value::Push(items) => Value::Push(items.into_iter().map(|v| naming(v, id)).collect()),
        other => other,
    }
}

/// The `flags=` and `redir=` fields of a CLIENT INFO line.
fn tracking_fields(info: &Value, id: i64) -> Value {
    let text = info.text();
    let fields: Vec<&str> =
        text.split_whitespace().filter(|f| f.starts_with("flags=") || f.starts_with("redir=")).collect();
    Value::Simple(fields.join(" ").replace(&format!("redir={id}"), "redir=ID"))
}

fn pause() {
    std::thread::sleep(Duration::from_millis(300));
}

#[test]
fn client_side_caching_answers_as_stock_redis() {
    let pair = Pair::start();

    pair.same("a RESP3 push when another client writes a key the client read", |addr| {
        let (mut a, mut b) = (resp3(addr), connect(addr));
        let mut out = vec![cmd(&mut a, &["CLIENT", "TRACKING", "ON"]), cmd(&mut a, &["GET", "k1"])];
        out.push(cmd(&mut b, &["SET", "k1", "v"]));
        out.push(read(&mut a));
        out.push(cmd(&mut a, &["PING"]));
        // Not read again: a second write tells nothing.
        out.push(cmd(&mut b, &["SET", "k1", "w"]));
        out.push(cmd(&mut a, &["PING"]));
        // Read again, then written by the client itself: the push follows its own reply.
        out.push(cmd(&mut a, &["MGET", "k1", "k2"]));
        out.push(cmd(&mut a, &["SET", "k1", "mine"]));
        out.push(read(&mut a));
        out.push(cmd(&mut b, &["SET", "k2", "x"]));
        out.push(read(&mut a));
        // A transaction's writes tell too, and a key read inside one is remembered.
        out.push(cmd(&mut a, &["MULTI"]));
        out.push(cmd(&mut a, &["GET", "k1"]));
        out.push(cmd(&mut a, &["EXEC"]));
        out.push(cmd(&mut b, &["MULTI"]));
        out.push(cmd(&mut b, &["INCR", "n"]));
        out.push(cmd(&mut b, &["APPEND", "k1", "+"]));
        out.push(cmd(&mut b, &["EXEC"]));
        out.push(read(&mut a));
        // A script that writes tells its declared keys; one that reads remembers them.
        out.push(cmd(&mut a, &["GET", "k1"]));
        out.push(cmd(&mut b, &["EVAL", "return redis.call('SET', KEYS[1], 'script')", "1", "k1"]));
        out.push(read(&mut a));
        out.push(cmd(&mut a, &["EVAL_RO", "return redis.call('GET', KEYS[1])", "1", "k1"]));
        out.push(cmd(&mut b, &["SET", "k1", "after"]));
        out.push(read(&mut a));
        out.push(cmd(&mut a, &["CLIENT", "TRACKING", "OFF"]));
        out.push(cmd(&mut a, &["GET", "k1"]));
        out.push(cmd(&mut b, &["SET", "k1", "v"]));
        out.push(cmd(&mut a, &["PING"]));
        out
    });

    pair.same("RESP2 redirection to a __redis__:invalidate subscriber", |addr| {
        let (mut r, mut t, mut w) = (connect(addr), connect(addr), connect(addr));
        let id = client_id(&mut r);
        let redirect = id.to_string();
        let mut out = vec![cmd(&mut r, &["SUBSCRIBE", "__redis__:invalidate"])];
        out.push(cmd(&mut t, &["CLIENT", "TRACKING", "ON", "REDIRECT", &redirect]));
        out.push(cmd(&mut t, &["GET", "r1"]));
        out.push(cmd(&mut w, &["SET", "r1", "1"]));
        out.push(read(&mut r));
        out.push(cmd(&mut t, &["CLIENT", "GETREDIR"]));
        out.push(cmd(&mut t, &["CLIENT", "TRACKINGINFO"]));
        out.push(tracking_fields(&cmd(&mut t, &["CLIENT", "INFO"]), id));
        out.push(cmd(&mut w, &["FLUSHALL"]));
        out.push(read(&mut r));
        // The redirect client goes: the next invalidation marks the redirection broken.
        drop(r);
        pause();
        out.push(cmd(&mut t, &["GET", "r1"]));
        out.push(cmd(&mut w, &["SET", "r1", "2"]));
        out.push(cmd(&mut t, &["CLIENT", "TRACKINGINFO"]));
        out.push(tracking_fields(&cmd(&mut t, &["CLIENT", "INFO"]), id));
        out.into_iter().map(|v| naming(v, id)).collect()
    });

    pair.same("BCAST with prefixes, and NOLOOP", |addr| {
        let (mut a, mut b) = (resp3(addr), connect(addr));
        let mut out = vec![cmd(&mut a, &["CLIENT", "TRACKING", "ON", "BCAST", "PREFIX", "user:", "PREFIX", "obj:"])];
        out.push(cmd(&mut b, &["MSET", "user:1", "a", "other", "b", "obj:2", "c", "user:0", "d"]));
        out.push(read(&mut a));
        out.push(read(&mut a));
        out.push(cmd(&mut b, &["SET", "other", "x"]));
        out.push(cmd(&mut a, &["PING"]));
        // Its own writes too, unless NOLOOP.
        out.push(cmd(&mut a, &["SET", "user:9", "mine"]));
        out.push(read(&mut a));
        out.push(cmd(&mut a, &["CLIENT", "TRACKING", "ON", "BCAST", "NOLOOP"]));
        out.push(cmd(&mut a, &["CLIENT", "TRACKINGINFO"]));
        out.push(cmd(&mut a, &["SET", "user:9", "again"]));
        out.push(cmd(&mut a, &["PING"]));
        out.push(tracking_fields(&cmd(&mut a, &["CLIENT", "INFO"]), -1));
        let mut c = resp3(addr);
        out.push(cmd(&mut c, &["CLIENT", "TRACKING", "ON", "NOLOOP"]));
        out.push(cmd(&mut c, &["GET", "own"]));
        out.push(cmd(&mut c, &["SET", "own", "1"]));
        out.push(cmd(&mut c, &["PING"]));
        out
    });

    pair.same("OPTIN: only a read after CACHING yes is remembered", |addr| {
        let (mut a, mut b) = (resp3(addr), connect(addr));
        let mut out = vec![cmd(&mut a, &["CLIENT", "TRACKING", "ON", "OPTIN"])];
        out.push(cmd(&mut a, &["GET", "o1"]));
        out.push(cmd(&mut a, &["CLIENT", "CACHING", "YES"]));
        out.push(cmd(&mut a, &["CLIENT", "TRACKINGINFO"]));
        out.push(cmd(&mut a, &["GET", "o2"]));
        out.push(cmd(&mut a, &["GET", "o3"]));
        out.push(cmd(&mut b, &["MSET", "o1", "1", "o2", "2", "o3", "3"]));
        out.push(read(&mut a));
        out.push(cmd(&mut a, &["PING"]));
        out.push(cmd(&mut a, &["CLIENT", "CACHING", "NO"]));
        out.push(cmd(&mut a, &["CLIENT", "TRACKING", "ON", "OPTOUT"]));
        out
    });

    pair.same("an expiry invalidates", |addr| {
        let (mut a, mut b) = (resp3(addr), connect(addr));
        let mut out = vec![cmd(&mut a, &["CLIENT", "TRACKING", "ON"])];
        out.push(cmd(&mut b, &["SET", "e1", "v", "PX", "300"]));
        out.push(cmd(&mut b, &["SET", "e2", "v"]));
        out.push(cmd(&mut b, &["PEXPIRE", "e2", "700"]));
        out.push(cmd(&mut a, &["MGET", "e1", "e2"]));
        // Told when each key expires, in that order.
        out.push(read(&mut a));
        out.push(read(&mut a));
        out.push(cmd(&mut a, &["MGET", "e1", "e2"]));
        out
    });

    pair.same("an eviction invalidates", |addr| {
        let (mut a, mut b) = (resp3(addr), connect(addr));
        let used: u64 = {
            let info = cmd(&mut b, &["INFO", "memory"]).text();
            let line = info.lines().find(|l| l.starts_with("used_memory:")).expect("used_memory");
            line["used_memory:".len()..].trim().parse().unwrap()
        };
        let limit = (used + 2 * 1024 * 1024).to_string();
        let mut out = vec![cmd(&mut a, &["CLIENT", "TRACKING", "ON"])];
        out.push(cmd(&mut b, &["SET", "evictme", "v"]));
        out.push(cmd(&mut a, &["GET", "evictme"]));
        out.push(cmd(&mut b, &["CONFIG", "SET", "maxmemory-policy", "allkeys-random"]));
        out.push(cmd(&mut b, &["CONFIG", "SET", "maxmemory", &limit]));
        let filler = "x".repeat(10_000);
        let mut evicted = false;
        for i in 0..5_000 {
            assert_eq!(cmd(&mut b, &["SET", &format!("filler:{i}"), &filler]), Value::Simple("OK".into()));
            if i % 50 == 49 && cmd(&mut b, &["EXISTS", "evictme"]) == Value::Int(0) {
                evicted = true;
                break;
            }
        }
        assert!(evicted, "{addr}: the tracked key was never evicted");
        out.push(read(&mut a));
        drop(a);
        out.push(cmd(&mut b, &["CONFIG", "SET", "maxmemory", "0"]));
        out.push(cmd(&mut b, &["CONFIG", "SET", "maxmemory-policy", "noeviction"]));
        out.push(cmd(&mut b, &["FLUSHALL"]));
        out
    });

    pair.same("FLUSHALL tells every tracking client with a null", |addr| {
        let (mut a, mut c, mut b) = (resp3(addr), resp3(addr), connect(addr));
        let mut out = vec![cmd(&mut a, &["CLIENT", "TRACKING", "ON"]), cmd(&mut a, &["GET", "f"])];
        out.push(cmd(&mut c, &["CLIENT", "TRACKING", "ON", "BCAST"]));
        out.push(cmd(&mut b, &["FLUSHALL"]));
        out.push(read(&mut a));
        out.push(read(&mut c));
        out.push(cmd(&mut b, &["SET", "f", "1"]));
        out.push(read(&mut c));
        out.push(cmd(&mut a, &["PING"]));
        out
    });

    pair.same("over tracking-table-max-keys, a key is dropped from the table and its client told", |addr| {
        // The clients of the scenarios before are gone (their tracking ends with them).
        pause();
        let (mut a, mut b) = (resp3(addr), connect(addr));
        let mut out = vec![cmd(&mut a, &["CLIENT", "TRACKING", "ON"])];
        // Emptied first: clients of the scenarios before left keys in the table.
        out.push(cmd(&mut b, &["FLUSHALL"]));
        out.push(read(&mut a));
        out.push(cmd(&mut b, &["CONFIG", "SET", "tracking-table-max-keys", "2"]));
        out.push(cmd(&mut b, &["CONFIG", "GET", "tracking-table-max-keys"]));
        for key in ["m1", "m2", "m3"] {
            out.push(cmd(&mut a, &["GET", key]));
        }
        // Which key goes is chosen at random (Redis walks its table randomly).
        let dropped = match read(&mut a) {
            Value::Push(items) if items.len() == 2 => match &items[1] {
                Value::Array(Some(keys)) if keys.len() == 1 && keys[0].text().starts_with('m') => "one of m1..m3",
                other => panic!("dropped keys: {other:?}"),
            },
            other => panic!("not an invalidation: {other:?}"),
        };
        out.push(Value::Simple(dropped.into()));
        out.push(cmd(&mut a, &["PING"]));
        // INFO counts the table: one tracking client, two keys left, no prefix.
        let info = cmd(&mut b, &["INFO", "everything"]).text();
        let fields = ["tracking_clients", "tracking_total_keys", "tracking_total_items", "tracking_total_prefixes"];
        for field in fields {
            let line = info.lines().find(|l| l.starts_with(&format!("{field}:"))).unwrap_or_else(|| panic!("{field}"));
            out.push(Value::Simple(line.to_string()));
        }
        out.push(cmd(&mut b, &["CONFIG", "SET", "tracking-table-max-keys", "1000000"]));
        out
    });

    pair.same("errors and replies of CLIENT TRACKING, CACHING, GETREDIR, TRACKINGINFO", |addr| {
        let mut a = connect(addr);
        let id = client_id(&mut a).to_string();
        let mut out = Vec::new();
        for args in [
            &["CLIENT", "GETREDIR"][..],
            &["CLIENT", "TRACKINGINFO"],
            &["CLIENT", "CACHING", "YES"],
            &["CLIENT", "CACHING", "maybe"],
            &["CLIENT", "TRACKING", "maybe"],
            &["CLIENT", "TRACKING", "ON", "REDIRECT", "999999"],
            &["CLIENT", "TRACKING", "OFF", "REDIRECT", "999999"],
            &["CLIENT", "TRACKING", "ON", "REDIRECT", "x"],
            &["CLIENT", "TRACKING", "ON", "REDIRECT", &id, "REDIRECT", &id],
            &["CLIENT", "TRACKING", "ON", "PREFIX", "a"],
            &["CLIENT", "TRACKING", "ON", "BCAST", "PREFIX", "a", "PREFIX", "ab"],
            &["CLIENT", "TRACKING", "ON", "BCAST", "OPTIN"],
            &["CLIENT", "TRACKING", "ON", "OPTIN", "OPTOUT"],
            &["CLIENT", "TRACKING", "ON", "NOSUCH"],
            &["CLIENT", "TRACKING", "ON", "PREFIX"],
            &["CLIENT", "TRACKING", "ON", "BCAST", "PREFIX", "ab"],
            &["CLIENT", "TRACKING", "ON", "BCAST", "PREFIX", "abc"],
            &["CLIENT", "TRACKING", "ON", "BCAST", "PREFIX", "x", "PREFIX", "y"],
            &["CLIENT", "TRACKINGINFO"],
            &["CLIENT", "TRACKING", "ON"],
            &["CLIENT", "CACHING", "YES"],
            &["CLIENT", "TRACKING", "OFF"],
            &["CLIENT", "TRACKING", "ON", "OPTIN"],
            &["CLIENT", "CACHING", "NO"],
            &["CLIENT", "CACHING", "maybe"],
            &["CLIENT", "TRACKING", "ON", "OPTOUT"],
            &["CLIENT", "TRACKING", "ON", "REDIRECT", &id],
            &["CLIENT", "GETREDIR"],
            &["CLIENT", "TRACKING", "OFF"],
            &["CLIENT", "GETREDIR"],
        ] {
            out.push(cmd(&mut a, args));
        }
        out.push(tracking_fields(&cmd(&mut a, &["CLIENT", "INFO"]), -1));
        let id: i64 = id.parse().unwrap();
        out.into_iter().map(|v| naming(v, id)).collect()
    });
}

/// A write answered before it was applied (its shard's only Redis node is down past
/// `write_wait_ms`: "committed … it will be applied from the journal") is told twice: when the
/// client hears it, and again once the node is back and the write applied, since a tracking
/// client told the first time may have read the old value again in between.
#[test]
fn a_write_applied_after_its_reply_is_told_again_once_applied() {
    use common::cluster::{ClusterOptions, DurableCluster};
    let mut cluster =
        DurableCluster::start(ClusterOptions { journal_nodes: 1, shards: 1, write_wait_ms: 300, ..Default::default() });
    let addr = cluster.proxy_addr();
    let (mut a, mut b) = (resp3(addr), connect(addr));
    assert_eq!(cmd(&mut a, &["CLIENT", "TRACKING", "ON"]), Value::Simple("OK".into()));
    assert_eq!(cmd(&mut b, &["SET", "k", "old"]), Value::Simple("OK".into()));
    assert_eq!(cmd(&mut a, &["GET", "k"]), Value::Bulk(Some(b"old".to_vec())));
    cluster.kill_redis(0);
    let reply = cmd(&mut b, &["SET", "k", "new"]);
    assert!(reply.text().contains("it will be applied from the journal"), "{reply:?}");
    let invalidation = Value::Push(vec![
        Value::Bulk(Some(b"invalidate".to_vec())),
        Value::Array(Some(vec![Value::Bulk(Some(b"k".to_vec()))])),
    ]);
    assert_eq!(read(&mut a), invalidation, "told when the writer heard");
    // Read again before the write is applied (the read waits for the node): remembered again.
    a.queue(&["GET", "k"]);
    a.flush().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    cluster.restart_redis(0);
    assert_eq!(read(&mut a), Value::Bulk(Some(b"new".to_vec())));
    assert_eq!(read(&mut a), invalidation, "told again once applied");
    assert_eq!(cmd(&mut a, &["PING"]), Value::Simple("PONG".into()));
}

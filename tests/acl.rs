//! ACL users enforced by the proxy (issue 12): the same scenarios run against a stock
//! `redis-server` 7.0 and through memlog, and the replies must be the same. The test client
//! speaks RESP2, whose encoding of a value is unique, so equal parsed replies are equal bytes.
//! Fields that differ by nature (`age-seconds`, `client-info` of `ACL LOG`) are masked.
//! Then what only memlog has: a denied write is never journaled, users made at run time
//! survive `kill -9` of the proxy, and the limits on unauthenticated connections.

mod common;
// The throwaway PostgreSQL of the metadata-store tests (not every helper of it is used here).
#[allow(dead_code)]
#[path = "../journal-service/tests/support/postgres.rs"]
mod postgres;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::cluster::{ClusterOptions, DurableCluster};
use common::pair::{cmd, connect, Pair};
use common::resp::{Conn, Value};
use common::spawn_redis;

/// A connection authenticated as `user`.
fn login(addr: SocketAddr, user: &str, password: &str) -> Conn {
    let mut conn = connect(addr);
    assert_eq!(cmd(&mut conn, &["AUTH", user, password]), Value::Simple("OK".into()), "AUTH {user}");
    conn
}

/// `ACL LOG` with each entry's `age-seconds` and `client-info` masked.
fn acl_log(conn: &mut Conn) -> Value {
    let Value::Array(Some(entries)) = cmd(conn, &["ACL", "LOG", "20"]) else { panic!("ACL LOG is not an array") };
    let masked = entries
        .into_iter()
        .map(|entry| {
            let Value::Array(Some(mut fields)) = entry else { panic!("an ACL LOG entry is not an array") };
            for pair in fields.chunks_mut(2) {
                if matches!(&pair[0], Value::Bulk(Some(k)) if k == b"age-seconds" || k == b"client-info") {
                    pair[1] = Value::Simple("(masked)".into());
                }
            }
            Value::Array(Some(fields))
        })
        .collect();
    Value::Array(Some(masked))
}

/// Whether the server closed `conn`: the next command gets no reply.
fn closed(conn: &mut Conn) -> bool {
    conn.cmd(&["PING"]).is_err()
}

#[test]
fn rules_denials_and_the_acl_log_match_redis() {
    let pair = Pair::start();
    pair.same("rules and denials", |addr| {
        let mut admin = connect(addr);
        let mut out = Vec::new();
        let mut admin_cmd = |args: &[&str]| out.push(cmd(&mut admin, args));
        admin_cmd(&["ACL", "SETUSER", "app", "on", ">secret", "~app:*", "&app:*", "+@all", "-@dangerous"]);
        admin_cmd(&["ACL", "SETUSER", "ro", "on", ">pw", "%R~r:*", "resetchannels", "+@read", "+@connection"]);
        admin_cmd(&["ACL", "SETUSER", "ro", "(~w:* +set)", "(%W~x:* +@write -del)"]);
        admin_cmd(&["ACL", "SETUSER", "sub", "on", "nopass", "+config|get", "+@pubsub", "&news.*"]);
        admin_cmd(&["ACL", "SETUSER", "bad", "on", "+nosuchcommand"]);
        admin_cmd(&["ACL", "SETUSER", "bad", "(~a"]);
        admin_cmd(&["ACL", "SETUSER", "bad", "%X~a*"]);
        for user in ["app", "ro", "sub", "bad", "default"] {
            admin_cmd(&["ACL", "GETUSER", user]);
        }
        admin_cmd(&["ACL", "LIST"]);
        admin_cmd(&["ACL", "USERS"]);
        admin_cmd(&["ACL", "CAT"]);
        admin_cmd(&["ACL", "CAT", "nosuch"]);
        for dryrun in [
            &["app", "GET", "other"][..],
            &["app", "SET", "app:1", "v"],
            &["app", "FLUSHALL"],
            &["app", "PUBLISH", "news", "m"],
            &["ro", "SET", "r:1", "v"],
            &["ro", "SET", "w:1", "v"],
            &["ro", "GET", "w:1"],
            &["ro", "SET", "x:1", "v"],
            &["ro", "DEL", "x:1"],
            &["sub", "CONFIG", "SET", "a", "b"],
            &["sub", "SELECT", "1"],
            &["nosuchuser", "GET", "a"],
            &["app", "NOSUCHCMD"],
            &["app", "GET"],
        ] {
            admin_cmd(&[&["ACL", "DRYRUN"][..], dryrun].concat());
        }
        admin_cmd(&["ACL", "LOG", "RESET"]);
        // Redis lists a category in its command table's hash order, which differs from one
        // process to the next (a random hash seed): compared as a set.
        let Value::Array(Some(mut geo)) = cmd(&mut admin, &["ACL", "CAT", "geo"]) else { panic!("ACL CAT geo") };
        geo.sort_by_key(Value::text);
        out.push(Value::Array(Some(geo)));

        let mut anon = connect(addr);
        out.push(cmd(&mut anon, &["AUTH", "app", "wrong"]));
        out.push(cmd(&mut anon, &["AUTH", "nosuchuser", "x"]));
        out.push(cmd(&mut anon, &["HELLO", "2", "AUTH", "ro", "nope"]));
        let mut app = login(addr, "app", "secret");
        for args in [
            &["ACL", "WHOAMI"][..],
            &["SET", "app:1", "v"],
            &["GET", "app:1"],
            &["GET", "other"],
            &["MSET", "app:2", "x", "other", "y"],
            &["FLUSHALL"],
            &["CONFIG", "GET", "maxmemory"],
            &["MONITOR"],
            &["CLIENT", "KILL", "ID", "999999"],
            &["KEYS", "*"],
            &["SHUTDOWN"],
            &["PUBLISH", "news", "m"],
            &["PUBLISH", "app:news", "m"],
            &["SPUBLISH", "news", "m"],
            &["EVAL", "return 1", "1", "other"],
            &["EVAL", "return 1", "1", "app:1"],
            &["FCALL", "nosuchfn", "1", "other"],
            &["MULTI"],
            &["SET", "app:3", "v"],
            &["GET", "other"],
            &["EXEC"],
            &["EXISTS", "app:3"],
        ] {
            out.push(cmd(&mut app, args));
        }
        let mut ro = login(addr, "ro", "pw");
        for args in [
            &["GET", "r:1"][..],
            &["SET", "r:1", "v"],
            &["SET", "w:1", "v"],
            &["GET", "w:1"],
            &["SET", "x:1", "v"],
            &["DEL", "x:1"],
            &["SUBSCRIBE", "news"],
        ] {
            out.push(cmd(&mut ro, args));
        }
        let mut sub = login(addr, "sub", "any");
        for args in [&["CONFIG", "SET", "a", "b"][..], &["SELECT", "1"], &["SELECT", "0"], &["PSUBSCRIBE", "news.1"]] {
            out.push(cmd(&mut sub, args));
        }
        out.push(cmd(&mut sub, &["PSUBSCRIBE", "news.*"]));
        out.push(acl_log(&mut connect(addr)));
        out
    });
}

#[test]
fn exec_after_a_rule_change_and_closing_connections_match_redis() {
    let pair = Pair::start();
    pair.same("EXEC after a rule change", |addr| {
        let mut admin = connect(addr);
        let mut out = vec![cmd(&mut admin, &["ACL", "SETUSER", "t", "on", ">p", "~*", "&*", "+@all"])];
        cmd(&mut admin, &["ACL", "LOG", "RESET"]);
        let mut t = login(addr, "t", "p");
        // (memlog refuses PUBLISH inside MULTI, so the channel case of EXEC is not compared.)
        for args in [&["MULTI"][..], &["SET", "a", "1"], &["GET", "a"], &["INCR", "n"], &["GET", "n"]] {
            out.push(cmd(&mut t, args));
        }
        out.push(cmd(&mut admin, &["ACL", "SETUSER", "t", "resetchannels", "-set", "resetkeys", "%R~*"]));
        out.push(cmd(&mut t, &["EXEC"]));
        out.push(cmd(&mut admin, &["EXISTS", "a"]));
        // A denied EXEC answers EXECABORT and discards the transaction, in MULTI or not (Redis's
        // rejectCommand → execCommandAbort): the second MULTI is not "nested".
        out.push(cmd(&mut admin, &["ACL", "SETUSER", "t", "-exec"]));
        for args in [&["EXEC"][..], &["MULTI"], &["GET", "a"], &["EXEC"], &["MULTI"], &["DISCARD"]] {
            out.push(cmd(&mut t, args));
        }
        out.push(acl_log(&mut admin));
        out
    });
    pair.same("DELUSER and channel revocation close connections", |addr| {
        let mut admin = connect(addr);
        let mut out = vec![];
        for user in ["gone", "kept", "listener"] {
            out.push(cmd(&mut admin, &["ACL", "SETUSER", user, "on", ">p", "~*", "&chan*", "+@all"]));
        }
        let mut gone = login(addr, "gone", "p");
        let mut kept = login(addr, "kept", "p");
        let mut listener = login(addr, "listener", "p");
        let mut other_listener = login(addr, "listener", "p");
        out.push(cmd(&mut listener, &["SUBSCRIBE", "chan1"]));
        out.push(cmd(&mut admin, &["ACL", "DELUSER", "gone", "nosuchuser"]));
        out.push(cmd(&mut admin, &["ACL", "DELUSER", "default"]));
        // Taking `&chan*` away closes the listener that is subscribed, not the other one.
        out.push(cmd(&mut admin, &["ACL", "SETUSER", "listener", "resetchannels", "&other"]));
        out.push(Value::Simple(format!(
            "closed: gone={} kept={} subscriber={} other={}",
            closed(&mut gone),
            closed(&mut kept),
            wait_closed(&mut listener),
            closed(&mut other_listener)
        )));
        // A user deleting itself gets its reply, then the connection closes.
        let mut own = login(addr, "kept", "p");
        out.push(cmd(&mut own, &["ACL", "DELUSER", "kept"]));
        out.push(Value::Simple(format!("own connection closed: {}", wait_closed(&mut own))));
        out
    });
}

/// A subscriber's connection gets no reply to PING once closed (pushes may come first).
fn wait_closed(conn: &mut Conn) -> bool {
    conn.queue(&["PING"]);
    if conn.flush().is_err() {
        return true;
    }
    loop {
        match conn.read() {
            Err(_) => return true,
            Ok(Value::Array(Some(items))) if items.first().is_some_and(|i| i.text() == "pong") => return false,
            Ok(_) => continue,
        }
    }
}

/// `GET __memlog:lsn` on the shard's Redis: the last journal entry applied there.
fn applied_lsn(cluster: &DurableCluster) -> String {
    cmd(&mut common::cluster::redis_conn(cluster.redis_addr(0)).unwrap(), &["GET", "__memlog:lsn"]).text()
}

#[test]
fn denied_requests_are_never_journaled_and_memlog_commands_need_admin() {
    let cluster = DurableCluster::start(ClusterOptions { journal_nodes: 1, shards: 1, ..Default::default() });
    let addr = cluster.proxy_addr();
    let mut admin = connect(addr);
    cmd(&mut admin, &["ACL", "SETUSER", "app", "on", ">s", "~app:*", "&*", "+@all", "-@dangerous"]);
    let mut app = login(addr, "app", "s");
    assert_eq!(cmd(&mut app, &["SET", "app:1", "v"]), Value::Simple("OK".into()));
    let before = applied_lsn(&cluster);
    let keys = "NOPERM this user has no permissions to access one of the keys used as arguments";
    assert_eq!(cmd(&mut app, &["SET", "other", "v"]), Value::Error(keys.into()));
    assert_eq!(cmd(&mut app, &["EVAL", "redis.call('SET', KEYS[1], 'v')", "1", "other"]), Value::Error(keys.into()));
    assert_eq!(cmd(&mut app, &["MULTI"]), Value::Simple("OK".into()));
    assert_eq!(cmd(&mut app, &["SET", "other", "v"]), Value::Error(keys.into()));
    assert!(cmd(&mut app, &["EXEC"]).text().starts_with("EXECABORT"));
    assert_eq!(
        cmd(&mut app, &["FLUSHALL"]),
        Value::Error("NOPERM this user has no permissions to run the 'flushall' command".into())
    );
    assert_eq!(
        cmd(&mut app, &["MEMLOG", "TOPOLOGY"]),
        Value::Error("NOPERM this user has no permissions to run the 'memlog|topology' command".into())
    );
    // Stopping a primary (MEMLOG ABORT) is as much an admin's as the rest.
    assert_eq!(
        cmd(&mut app, &["MEMLOG", "ABORT", "0", "1"]),
        Value::Error("NOPERM this user has no permissions to run the 'memlog|abort' command".into())
    );
    assert_eq!(applied_lsn(&cluster), before, "a denied request reached the journal");
    assert_eq!(
        cmd(&mut common::cluster::redis_conn(cluster.redis_addr(0)).unwrap(), &["EXISTS", "other", "app:1"]),
        Value::Int(1)
    );
    assert!(cmd(&mut admin, &["ACL", "CAT", "dangerous"]).text().contains("memlog"));
    assert_eq!(cmd(&mut app, &["SET", "app:2", "v"]), Value::Simple("OK".into()));
    assert_ne!(applied_lsn(&cluster), before, "an allowed write is journaled (the check above can fail)");
}

/// Users made and removed with `ACL SETUSER`/`DELUSER` are exactly what a cluster whose every
/// process was killed with `kill -9` and restarted (its Redis nodes empty) enforces.
fn users_made_at_run_time_survive_kill_9_of_everything(metadata: Option<String>) -> DurableCluster {
    let opts = ClusterOptions { journal_nodes: 1, shards: 1, metadata, ..Default::default() };
    let mut cluster = DurableCluster::start(opts);
    let addr = cluster.proxy_addr();
    let mut admin = connect(addr);
    cmd(&mut admin, &["ACL", "SETUSER", "svc", "on", ">pw1", ">pw2", "%R~r:*", "&ch", "+@read", "(~w:* +set)"]);
    cmd(&mut admin, &["ACL", "SETUSER", "temp", "on", ">x"]);
    cmd(&mut admin, &["ACL", "DELUSER", "temp"]);
    // `default` itself changed at run time: the restarted cluster wants its password.
    cmd(&mut admin, &["ACL", "SETUSER", "default", "resetpass", ">adminpw"]);
    let described = cmd(&mut admin, &["ACL", "GETUSER", "svc"]);
    let list = cmd(&mut admin, &["ACL", "LIST"]);
    assert!(list.text().contains("user svc on"), "{}", list.text());
    cluster.kill_everything();
    cluster.restart_everything();
    assert!(cmd(&mut connect(addr), &["GET", "k"]).text().starts_with("NOAUTH"), "default lost its password");
    let mut admin = login(addr, "default", "adminpw");
    assert_eq!(cmd(&mut admin, &["ACL", "GETUSER", "svc"]), described);
    assert_eq!(cmd(&mut admin, &["ACL", "LIST"]), list);
    let mut svc = login(addr, "svc", "pw2");
    assert_eq!(cmd(&mut svc, &["SET", "w:1", "v"]), Value::Simple("OK".into()));
    assert!(cmd(&mut svc, &["SET", "r:1", "v"]).text().starts_with("NOPERM"));
    assert!(cmd(&mut connect(addr), &["AUTH", "temp", "x"]).text().starts_with("WRONGPASS"));
    cluster
}

#[test]
fn users_made_at_run_time_survive_kill_9_of_everything_on_a_file_store() {
    let cluster = users_made_at_run_time_survive_kill_9_of_everything(None);
    assert!(cluster.dir.path().join("metadata.json").exists());
}

#[test]
fn users_made_at_run_time_survive_kill_9_of_everything_on_postgres() {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let Some(postgres) = runtime.block_on(postgres::Postgres::start()) else { return };
    let url = runtime.block_on(postgres.create_database("memlog_users"));
    let cluster = users_made_at_run_time_survive_kill_9_of_everything(Some(url));
    // The users came back from Postgres: there is no file store next to the cluster.
    assert!(!cluster.dir.path().join("metadata.json").exists());
    drop(cluster);
    drop(postgres);
}

/// Writes raw bytes on a fresh connection and returns what comes back before the server closes
/// it (or `None` if it stays open for a while).
fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> Option<Vec<u8>> {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    stream.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Some(out),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => return None,
        }
    }
}

#[test]
fn unauthenticated_connections_are_limited_as_redis_limits_them() {
    let dir = tempfile::tempdir().unwrap();
    let redis = spawn_redis(dir.path(), &["--requirepass", "pw"]);
    let users = "auth_timeout_ms = 1000\n[[users]]\nname = \"default\"\npassword = \"pw\"\n";
    let cluster = DurableCluster::start(ClusterOptions {
        journal_nodes: 1,
        shards: 1,
        proxy_extra: users.into(),
        ..Default::default()
    });
    for (what, bytes) in [
        ("11 arguments", &b"*11\r\n"[..]),
        ("a 16385-byte bulk string", b"*2\r\n$16385\r\n"),
        ("a command", b"GET a\r\n"),
    ] {
        let expected = raw_exchange(redis.addr, bytes);
        let got = raw_exchange(cluster.proxy_addr(), bytes);
        assert_eq!(got, expected, "{what}: redis {expected:?}, memlog {got:?}");
    }
    assert_eq!(
        raw_exchange(redis.addr, b"*11\r\n").unwrap(),
        b"-ERR Protocol error: unauthenticated multibulk length\r\n"
    );
    // 10 arguments and 16 KiB are still allowed, and the limits end with AUTH.
    let mut conn = connect(cluster.proxy_addr());
    let big = "x".repeat(16 * 1024);
    assert!(cmd(&mut conn, &["ECHO", &big]).text().starts_with("NOAUTH"));
    assert_eq!(cmd(&mut conn, &["AUTH", "pw"]), Value::Simple("OK".into()));
    let many: Vec<String> = (0..20).map(|i| format!("k{i}")).collect();
    let args: Vec<&str> = std::iter::once("EXISTS").chain(many.iter().map(String::as_str)).collect();
    assert_eq!(cmd(&mut conn, &args), Value::Int(0));
    // A connection that never authenticates is closed after auth_timeout_ms; one that did is not.
    let started = Instant::now();
    let mut idle = connect(cluster.proxy_addr());
    std::thread::sleep(Duration::from_millis(1500));
    assert!(closed(&mut idle), "an unauthenticated connection outlived auth_timeout_ms");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(cmd(&mut conn, &["PING"]), Value::Simple("PONG".into()));
}

/// The `user=` field of every `CLIENT LIST` line, sorted.
fn client_list_users(conn: &mut Conn) -> Value {
    let list = cmd(conn, &["CLIENT", "LIST"]).text();
    let mut users: Vec<String> = list
        .lines()
        .filter_map(|line| line.split(' ').find_map(|field| field.strip_prefix("user=")))
        .map(str::to_string)
        .collect();
    users.sort();
    Value::Simple(format!("users: {}", users.join(",")))
}

#[test]
fn acl_load_and_client_list_users_match_redis() {
    let acl_dir = tempfile::tempdir().unwrap();
    let acl_file = acl_dir.path().join("users.acl");
    std::fs::write(&acl_file, "").unwrap();
    let pair = Pair::start_with(&["--aclfile", acl_file.to_str().unwrap()]);
    pair.same("ACL LOAD closes the connections of every user but default", |addr| {
        let mut admin = connect(addr);
        let mut out = vec![];
        for user in ["a", "b"] {
            out.push(cmd(&mut admin, &["ACL", "SETUSER", user, "on", ">p", "~*", "&*", "+@all"]));
        }
        out.push(cmd(&mut admin, &["ACL", "SAVE"]));
        let mut a = login(addr, "a", "p");
        let mut b = login(addr, "b", "p");
        let mut as_default = connect(addr);
        out.push(cmd(&mut as_default, &["PING"]));
        out.push(client_list_users(&mut admin));
        // Unchanged users are reloaded too, and their connections closed; default's stay.
        out.push(cmd(&mut admin, &["ACL", "LOAD"]));
        out.push(Value::Simple(format!(
            "closed: a={} b={} default={} admin={}",
            closed(&mut a),
            closed(&mut b),
            closed(&mut as_default),
            closed(&mut admin)
        )));
        // A user running ACL LOAD gets its reply, then its connection closes.
        let mut own = login(addr, "a", "p");
        out.push(cmd(&mut own, &["ACL", "LOAD"]));
        out.push(Value::Simple(format!("own connection closed: {}", wait_closed(&mut own))));
        out.push(cmd(&mut connect(addr), &["ACL", "USERS"]));
        out
    });
    pair.same("CLIENT LIST names default before AUTH", |addr| {
        let mut admin = connect(addr);
        let mut out = vec![cmd(&mut admin, &["ACL", "SETUSER", "default", ">pw"])];
        let mut anonymous = connect(addr);
        out.push(cmd(&mut anonymous, &["PING"]));
        let mut app = connect(addr);
        out.push(cmd(&mut app, &["AUTH", "b", "p"]));
        out.push(client_list_users(&mut admin));
        out.push(cmd(&mut admin, &["ACL", "SETUSER", "default", "nopass"]));
        out
    });
}

/// The data a caller's scripts may and may not have written, read as the default user.
fn script_targets(addr: SocketAddr) -> Value {
    let keys = ["app:1", "other:1", "other:3", "app:4", "other:4", "app:5", "other:5", "other:9"];
    cmd(&mut connect(addr), &[&["MGET"][..], &keys].concat())
}

/// Redis checks every `redis.call` of a script or function against the user who called it;
/// memlog runs the call on the node as a user with the caller's rules. And the rules travel in
/// the journal: a node rebuilt from it denies the same calls again.
#[test]
fn scripts_and_functions_run_with_their_callers_permissions_and_a_rebuild_keeps_the_outcome() {
    let mut pair = Pair::start();
    let library = "#!lua name=lib\nredis.register_function('setkey', function(keys, args) return redis.call('SET', args[1], 'f') end)";
    pair.same("scripts run as their caller", |addr| {
        let mut admin = connect(addr);
        let mut out = vec![
            cmd(&mut admin, &["ACL", "SETUSER", "app", "on", ">s", "~app:*", "&*", "+@all", "-@dangerous"]),
            cmd(&mut admin, &["ACL", "SETUSER", "reader", "on", ">r", "%R~*", "+@read", "+@scripting"]),
            cmd(&mut admin, &["FUNCTION", "LOAD", library]),
            cmd(&mut admin, &["SET", "other:3", "x"]),
        ];
        let mut app = login(addr, "app", "s");
        for args in [
            &["EVAL", "return redis.call('SET', KEYS[1], 'v')", "1", "app:1"][..],
            &["EVAL", "return redis.call('SET', 'other:1', 'v')", "0"],
            &["EVAL", "return redis.pcall('GET', 'other:2')", "0"],
            &["EVAL", "return redis.acl_check_cmd('SET', 'other:1', 'v')", "0"],
            &["EVAL", "return redis.acl_check_cmd('SET', 'app:1', 'v')", "0"],
            &["EVAL", "return redis.call('FLUSHALL')", "0"],
            &["EVAL_RO", "return redis.call('GET', 'other:3')", "0"],
            &["FCALL", "setkey", "0", "other:4"],
            &["FCALL", "setkey", "0", "app:4"],
            &["MULTI"],
            &["EVAL", "return redis.call('SET', 'other:5', 'v')", "0"],
            &["EVAL", "return redis.call('SET', KEYS[1], 'v')", "1", "app:5"],
            &["EXEC"],
        ] {
            out.push(cmd(&mut app, args));
        }
        // The journal's own forms are no commands a client can send.
        out.push(cmd(&mut app, &["__MEMLOG_RUN_AS", "0", "EVAL", "return redis.call('SET', 'other:9', 'v')", "0"]));
        out.push(cmd(&mut app, &["__MEMLOG_PART", "0", "1", "SET other:9 v"]));
        out.push(cmd(&mut app, &["__MEMLOG_IN_DB", "3", "SET", "other:9", "v"]));
        // Read-only rights: reading anything works, writing through a script does not.
        let mut reader = login(addr, "reader", "r");
        out.push(cmd(&mut reader, &["EVAL_RO", "return redis.call('GET', 'other:3')", "0"]));
        out.push(cmd(&mut reader, &["EVAL", "return redis.call('SET', 'app:1', 'w')", "0"]));
        out.push(script_targets(addr));
        out
    });
    let before = script_targets(pair.memlog.proxy_addr());
    // The denied calls are in the journal too: replayed onto an empty node, they are denied again.
    pair.memlog.kill_redis(0);
    pair.memlog.restart_redis(0);
    let started = Instant::now();
    loop {
        let mut conn = connect(pair.memlog.proxy_addr());
        // Served again (a read waits for the rebuild, or fails while the node is down).
        if matches!(conn.cmd(&["GET", "app:1"]), Ok(Value::Bulk(_))) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "the primary was not rebuilt");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(script_targets(pair.memlog.proxy_addr()), before, "the rebuilt node differs");
}

//! A stock `redis-server` for the parity tests and the benchmark: on a free loopback port below
//! the ephemeral range (the workspace's port rule), in its own temp dir, killed by pid on drop.
//! The RESP client and the port rule are the workspace's own (`tests/common`).
#![allow(dead_code)]

pub mod generators;
#[path = "../../../tests/common/ports.rs"]
pub mod ports;
#[path = "../../../tests/common/resp.rs"]
pub mod resp;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use memlog_acl::{Catalog, Value};

pub struct Redis {
    child: Child,
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Redis {
    pub fn start() -> Redis {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = ports::free_port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let log = dir.path().join("redis.log");
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .arg("--logfile")
            .arg(&log)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server 7.0 is installed");
        let mut redis = Redis { child, addr, dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(mut conn) = resp::Conn::connect(addr, Duration::from_secs(5)) {
                if conn.cmd(&["PING"]).is_ok_and(|r| r.text() == "PONG") {
                    return redis;
                }
            }
            if let Ok(Some(status)) = redis.child.try_wait() {
                panic!("redis-server exited ({status}): {}", std::fs::read_to_string(&log).unwrap_or_default());
            }
            assert!(Instant::now() < deadline, "redis-server did not answer on {addr}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn conn(&self) -> resp::Conn {
        resp::Conn::connect(self.addr, Duration::from_secs(10)).expect("connect to redis-server")
    }

    /// The catalog of this Redis's `COMMAND` reply, once its command tables have settled.
    ///
    /// Redis lists commands and subcommands (and describes users' command rules) in the
    /// iteration order of its hash tables. A table still being rehashed moves a bucket at each
    /// lookup, so that order changes until the rehash ends. A fresh server can have tables
    /// mid-rehash, so every table is looked up a few hundred times first (`COMMAND INFO a|b`
    /// looks up the container's table), as a long-running server's would have been.
    pub fn catalog(&self) -> Catalog {
        let mut conn = self.conn();
        let first = Catalog::from_command_reply(&to_acl_value(conn.cmd(&["COMMAND"]).expect("COMMAND"))).unwrap();
        let subcommands: Vec<&str> = first.iter().filter(|c| c.parent.is_some()).map(|c| c.name.as_str()).collect();
        for _ in 0..16 {
            for name in &subcommands {
                conn.queue(&["COMMAND", "INFO", name]);
            }
            conn.flush().unwrap();
            conn.read_n(subcommands.len()).expect("COMMAND INFO");
        }
        let reply = conn.cmd(&["COMMAND"]).expect("COMMAND");
        Catalog::from_command_reply(&to_acl_value(reply)).expect("COMMAND reply parses")
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A reply of the test client as the crate's value.
pub fn to_acl_value(value: resp::Value) -> Value {
    match value {
        resp::Value::Simple(s) => Value::Simple(s),
        resp::Value::Error(e) => Value::Error(e),
        resp::Value::Int(i) => Value::Integer(i),
        resp::Value::Bulk(Some(b)) => Value::Bulk(b),
        resp::Value::Bulk(None) | resp::Value::Array(None) => Value::Null,
        resp::Value::Array(Some(items)) => Value::Array(items.into_iter().map(to_acl_value).collect()),
        // These tests speak RESP2, which has no pushes.
        resp::Value::Push(items) => panic!("a RESP3 push in a RESP2 test: {items:?}"),
    }
}

/// The crate's value as Redis 7.0 sends it to a RESP2 client (maps flattened, sets as arrays).
pub fn to_resp2(value: &Value) -> resp::Value {
    match value {
        Value::Bulk(b) => resp::Value::Bulk(Some(b.clone())),
        Value::Simple(s) => resp::Value::Simple(s.clone()),
        Value::Error(e) => resp::Value::Error(e.clone()),
        Value::Integer(i) => resp::Value::Int(*i),
        Value::Double(d) => resp::Value::Bulk(Some(d.to_string().into_bytes())),
        Value::Null => resp::Value::Bulk(None),
        Value::Array(items) | Value::Set(items) => resp::Value::Array(Some(items.iter().map(to_resp2).collect())),
        Value::Map(pairs) => {
            resp::Value::Array(Some(pairs.iter().flat_map(|(k, v)| [to_resp2(k), to_resp2(v)]).collect()))
        }
    }
}

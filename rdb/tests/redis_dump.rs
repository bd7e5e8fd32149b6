//! The reader against files written by a real Redis 7.0: every key of every core type and
//! encoding comes out with the very payload `DUMP` gives for it, and the expiry `PEXPIRETIME`
//! gives. Redis is reached over a unix socket in a temporary directory (no TCP port).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use memlog_rdb::{Checksum, Item, RdbReader};

struct Redis {
    child: Child,
    conn: BufReader<UnixStream>,
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug, PartialEq)]
enum Reply {
    Status(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Vec<Reply>),
}

impl Redis {
    fn start(dir: &Path) -> Redis {
        let socket = dir.join("redis.sock");
        let child = Command::new("redis-server")
            .args(["--port", "0", "--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--unixsocket")
            .arg(&socket)
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server must be installed");
        let deadline = Instant::now() + Duration::from_secs(10);
        let stream = loop {
            match UnixStream::connect(&socket) {
                Ok(s) => break s,
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => panic!("redis-server did not start: {e}"),
            }
        };
        Redis { child, conn: BufReader::new(stream) }
    }

    fn call(&mut self, args: &[&[u8]]) -> Reply {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
        self.conn.get_mut().write_all(&out).unwrap();
        self.read()
    }

    fn cmd(&mut self, line: &str) -> Reply {
        let args: Vec<&[u8]> = line.split(' ').map(str::as_bytes).collect();
        self.call(&args)
    }

    fn read(&mut self) -> Reply {
        let mut line = String::new();
        self.conn.read_line(&mut line).unwrap();
        let (kind, rest) = line.trim_end().split_at(1);
        match kind {
            "+" => Reply::Status(rest.into()),
            "-" => panic!("redis error: {rest}"),
            ":" => Reply::Int(rest.parse().unwrap()),
            "$" => {
                let n: i64 = rest.parse().unwrap();
                if n < 0 {
                    return Reply::Bulk(None);
                }
                let mut buf = vec![0; n as usize + 2];
                self.conn.read_exact(&mut buf).unwrap();
                buf.truncate(n as usize);
                Reply::Bulk(Some(buf))
            }
            "*" => Reply::Array((0..rest.parse::<i64>().unwrap().max(0)).map(|_| self.read()).collect()),
            _ => panic!("unexpected reply {line:?}"),
        }
    }
}

/// Keys of every type in every encoding Redis 7.0 writes.
fn populate(redis: &mut Redis) {
    let long = "x".repeat(300);
    for line in [
        "SET str:plain hello",
        "SET str:int 12345",
        "SET str:neg -7",
        &format!("SET str:lzf {long}"),
        &format!("SET key:{long} long-and-compressible-key"),
        "SET 300 int-encoded-key",
        "PFADD hll a b c d e f g",
        "RPUSH list:small a b 1 2",
        "SADD set:intset 1 2 3 400000",
        "SADD set:small a b c",
        "ZADD zset:small 1 a 2.5 b -3 c",
        "HSET hash:small f1 v1 f2 2",
        "XADD stream 1-1 f v",
        "XADD stream 2-1 f v2 g w",
        "XGROUP CREATE stream grp 0",
        "XREADGROUP GROUP grp alice COUNT 1 STREAMS stream >",
        "XGROUP CREATE stream idle $",
        "SET ttl:s v EX 1000",
        "SET ttl:ms v PX 500000",
    ] {
        redis.cmd(line);
    }
    for i in 0..600 {
        let (i, member) = (i.to_string(), format!("member-{i}-{long}"));
        redis.call(&[b"RPUSH", b"list:big", member.as_bytes()]);
        redis.call(&[b"SADD", b"set:big", member.as_bytes()]);
        redis.call(&[b"ZADD", b"zset:big", i.as_bytes(), member.as_bytes()]);
        redis.call(&[b"HSET", b"hash:big", member.as_bytes(), i.as_bytes()]);
        redis.call(&[b"XADD", b"stream:big", b"*", b"n", i.as_bytes()]);
    }
    redis.cmd("PEXPIRE hash:big 900000");
    redis.cmd("SELECT 3");
    redis.cmd("SET other-db yes");
    redis.cmd("SELECT 0");
}

#[test]
fn every_key_of_a_redis_save_matches_dump_and_pexpiretime() {
    let dir = tempfile::tempdir().unwrap();
    let mut redis = Redis::start(dir.path());
    populate(&mut redis);
    assert_eq!(redis.cmd("SAVE"), Reply::Status("OK".into()));
    let file = std::fs::File::open(dir.path().join("dump.rdb")).unwrap();
    let mut reader = RdbReader::new(std::io::BufReader::new(file)).unwrap();
    assert_eq!(reader.version(), 10);
    let mut seen = 0;
    for item in reader.by_ref() {
        let Item::Key(key) = item.unwrap() else { continue };
        redis.cmd(&format!("SELECT {}", key.db));
        assert_eq!(
            redis.call(&[b"DUMP", &key.key]),
            Reply::Bulk(Some(key.payload.clone())),
            "payload of {}",
            String::from_utf8_lossy(&key.key)
        );
        let expected = match redis.call(&[b"PEXPIRETIME", &key.key]) {
            Reply::Int(-1) => None,
            Reply::Int(at) => Some(at),
            other => panic!("PEXPIRETIME: {other:?}"),
        };
        assert_eq!(key.expire_at_ms, expected, "expiry of {}", String::from_utf8_lossy(&key.key));
        seen += 1;
    }
    assert_eq!(reader.checksum(), Some(Checksum::Verified));
    redis.cmd("SELECT 0");
    let Reply::Int(db0) = redis.cmd("DBSIZE") else { panic!() };
    assert_eq!(seen, db0 + 1, "every key of db 0, and the one of db 3");
}

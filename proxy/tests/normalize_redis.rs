//! The normalization table against real redis-server 7.0: a long mixed sequence of writes is
//! run the way the sequencer runs it (plan, probe, resolve, journal, apply) on `live`; the
//! journal is replayed later onto `replay`, which must end with the same dataset (digest, every
//! key's type and absolute expiry, every stream's groups and PELs) and answer every journaled
//! command exactly as `live` did. A third, stock Redis given the same starting state before
//! each step runs the client's original command: the client must see the same reply.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use memlog_proxy::normalize::{plan, Plan, Resolved};
use memlog_proxy::resp::frame_len;

/// A redis-server on a free loopback port in its own temp dir, killed by pid when dropped.
struct Redis {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Redis {
    fn start() -> Redis {
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--enable-debug-command", "yes"])
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        let redis = Redis { child, port, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut conn) = TcpStream::connect(("127.0.0.1", port)).map(Conn::new) {
                if conn.call_str("PING").raw == b"+PONG\r\n" {
                    return redis;
                }
            }
            assert!(Instant::now() < deadline, "redis-server on port {port} did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn connect(&self) -> Conn {
        Conn::new(TcpStream::connect(("127.0.0.1", self.port)).unwrap())
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A RESP2 reply: its exact bytes and its parsed value.
#[derive(Debug, Clone)]
struct Reply {
    raw: Vec<u8>,
    value: Value,
}

#[derive(Debug, Clone, PartialEq)]
enum Value {
    Status(Vec<u8>),
    Error(Vec<u8>),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Value>>),
}

/// A blocking RESP2 connection.
struct Conn {
    reader: BufReader<TcpStream>,
}

impl Conn {
    fn new(stream: TcpStream) -> Conn {
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Conn { reader: BufReader::new(stream) }
    }

    fn call(&mut self, args: &[Bytes]) -> Reply {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            out.extend_from_slice(arg);
            out.extend_from_slice(b"\r\n");
        }
        self.reader.get_mut().write_all(&out).unwrap();
        self.read_reply()
    }

    fn call_str(&mut self, command: &str) -> Reply {
        self.call(&words(command))
    }

    /// Reads one whole reply frame and parses it.
    fn read_reply(&mut self) -> Reply {
        let mut raw = Vec::new();
        loop {
            if let Some(len) = frame_len(&raw).expect("a well-formed reply") {
                assert_eq!(len, raw.len(), "one reply at a time");
                let value = parse_value(&mut &raw[..]);
                return Reply { raw, value };
            }
            let chunk = self.reader.fill_buf().unwrap();
            assert!(!chunk.is_empty(), "redis closed the connection");
            // Take at most the rest of this frame: replies never overlap, one call at a time.
            let n = chunk.len();
            raw.extend_from_slice(chunk);
            self.reader.consume(n);
        }
    }
}

fn words(command: &str) -> Vec<Bytes> {
    command.split(' ').map(|w| Bytes::copy_from_slice(w.as_bytes())).collect()
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

/// How a client reply is compared with stock Redis's.
#[derive(Clone, Copy, PartialEq)]
enum Compare {
    /// Deterministic: byte for byte.
    Exact,
    /// Redis's choice (SPOP's members, XADD *'s time-based ID): the same kind of reply, with as
    /// many elements.
    Shape,
}

/// The kind of a reply and the length of an array, enough to compare random choices.
fn shape(value: &Value) -> String {
    match value {
        Value::Array(Some(items)) => format!("array[{}]", items.len()),
        Value::Bulk(Some(_)) => "bulk".into(),
        other => format!("{other:?}"),
    }
}

/// Makes `stock` hold exactly what `live` holds (values and absolute expiries).
fn copy_dataset(live: &mut Conn, stock: &mut Conn) {
    stock.call_str("FLUSHALL");
    let Value::Array(Some(keys)) = live.call_str("KEYS *").value else { panic!("KEYS") };
    for key in keys {
        let Value::Bulk(Some(key)) = key else { panic!("key") };
        let key = Bytes::from(key);
        let Value::Bulk(Some(payload)) = live.call(&[Bytes::from("DUMP"), key.clone()]).value else { continue };
        let Value::Int(expiry) = live.call(&[Bytes::from("PEXPIRETIME"), key.clone()]).value else {
            panic!("PEXPIRETIME")
        };
        let mut restore =
            vec![Bytes::from("RESTORE"), key, Bytes::from(expiry.max(0).to_string()), Bytes::from(payload)];
        if expiry > 0 {
            restore.push(Bytes::from("ABSTTL"));
        }
        assert_eq!(stock.call(&restore).raw, b"+OK\r\n");
    }
}

/// What the sequencer does with one client command: returns the client's reply and appends
/// what it journals (with live's reply to each journaled command).
fn sequence(live: &mut Conn, prober: &mut Conn, args: &[Bytes], journal: &mut Vec<(Vec<Bytes>, Reply)>) -> Reply {
    let mut apply = |command: Vec<Bytes>, journal: &mut Vec<(Vec<Bytes>, Reply)>| {
        let reply = live.call(&command);
        journal.push((command, reply.clone()));
        reply
    };
    match plan(args, now_ms()) {
        Plan::AsIs => apply(args.to_vec(), journal),
        Plan::Rewrite(command) => apply(command, journal),
        Plan::Probe { probe, resolve } => {
            let replies: Vec<Bytes> = probe.iter().map(|p| Bytes::from(prober.call(p).raw)).collect();
            let Resolved { commands, reply } = resolve(&replies);
            assert!(reply.is_some() || commands.len() == 1, "a resolution without an override applies one command");
            let mut last = None;
            for command in commands {
                last = Some(apply(command, journal));
            }
            match reply {
                Some(raw) => Reply { value: parse_value(&mut &raw[..]), raw: raw.to_vec() },
                None => last.unwrap(),
            }
        }
    }
}

/// Parses one RESP2 frame held in memory.
fn parse_value(input: &mut &[u8]) -> Value {
    let end = input.windows(2).position(|w| w == b"\r\n").unwrap();
    let (kind, body) = (input[0], input[1..end].to_vec());
    *input = &input[end + 2..];
    let number = || String::from_utf8(body.clone()).unwrap().parse::<i64>().unwrap();
    match kind {
        b'+' => Value::Status(body),
        b'-' => Value::Error(body),
        b':' => Value::Int(number()),
        b'$' if number() < 0 => Value::Bulk(None),
        b'$' => {
            let len = number() as usize;
            let data = input[..len].to_vec();
            *input = &input[len + 2..];
            Value::Bulk(Some(data))
        }
        b'*' if number() < 0 => Value::Array(None),
        b'*' => Value::Array(Some((0..number()).map(|_| parse_value(input)).collect())),
        other => panic!("unexpected RESP2 type byte {other}"),
    }
}

/// XINFO STREAM FULL without the consumers' seen-time (the clock of whoever last touched them,
/// which Redis itself does not propagate) and, for `delivery_times: false`, without delivery
/// times (the documented gap of XREADGROUP history reads, which the script runs on `gap` only).
fn stream_state(conn: &mut Conn, key: &[u8], delivery_times: bool) -> Value {
    fn scrub(value: &mut Value, delivery_times: bool) {
        if let Value::Array(Some(items)) = value {
            for i in 0..items.len() {
                if items[i] == Value::Bulk(Some(b"seen-time".to_vec())) {
                    if let Some(next) = items.get_mut(i + 1) {
                        *next = Value::Int(0);
                    }
                }
            }
            // A PEL entry: [id, (consumer,) delivery-time, delivery-count].
            let is_pel_entry = matches!(items.first(), Some(Value::Bulk(Some(id))) if id.contains(&b'-'))
                && items.len() >= 3
                && items.iter().skip(1).filter(|v| matches!(v, Value::Int(_))).count() == 2;
            if is_pel_entry && !delivery_times {
                let at = items.len() - 2;
                items[at] = Value::Int(0);
            }
            for item in items.iter_mut() {
                scrub(item, delivery_times);
            }
        }
    }
    let mut value = conn
        .call(&[Bytes::from("XINFO"), Bytes::from("STREAM"), Bytes::copy_from_slice(key), Bytes::from("FULL")])
        .value;
    scrub(&mut value, delivery_times);
    value
}

/// The client commands: every family of the table, ordinary writes, and error cases.
fn script(payload: &[u8]) -> Vec<(Vec<Bytes>, Compare)> {
    let now = now_ms();
    let s = now / 1000;
    let hour_ago = now - 3_600_000;
    let text = format!(
        "SET s1 hello
SET s1 v EX 100
SET s2 v PX 200000 NX
SET s2 v2 XX GET EX 300
SET s3 v EXAT {exat}
SET s3 w PXAT {pxat} GET
SET s1 v EX 0
SET s1 v EX -5
SET s1 v EX abc
SET s1 v EX 10 KEEPTTL
SET s1 v EX abc EX 150
SET s1 v KEEPTTL
SET s1 v EX 9223372036854776
SETEX s4 100 v
SETEX s4 0 v
SETEX s4 x v
PSETEX s5 100000 v
GETEX s4 EX 200
GETEX s4 PX 0
GETEX missing EX 0
GETEX s4 PERSIST
GETEX s5 EXAT {getex_at}
GETEX s5 EX 100 PERSIST
EXPIRE s1 100
EXPIRE s1 50 GT
EXPIRE s1 500 GT
EXPIRE s1 10 NX
PEXPIRE s2 400000 XX
PEXPIRE s2 1 LT GT
EXPIREAT s3 {expireat}
EXPIRE s5 abc
EXPIRE s5 1 BOGUS
EXPIRE s5 9223372036854775
SET tmp x
EXPIRE tmp -1
EXISTS tmp
EXPIRE missing 100
PEXPIREAT s2 {pexpireat}
RESTORE r1 100000 {{payload}}
RESTORE r1 100000 {{payload}}
RESTORE r1 200000 {{payload}} REPLACE
RESTORE r2 0 {{payload}}
RESTORE r3 {restore_at} {{payload}} ABSTTL
RESTORE r4 -5 {{payload}}
RESTORE r4 100000 {{payload}} IDLETIME 10
RESTORE r5 100000 {{payload}} FREQ 300
INCRBYFLOAT f1 1.5
INCRBYFLOAT f1 0.1
SET f2 abc
INCRBYFLOAT f2 1
INCRBYFLOAT f1 x
SET f3 10 EX 1000
INCRBYFLOAT f3 2.5
INCRBYFLOAT f4 1e308
INCRBYFLOAT f4 1e308
LPUSH lf x
INCRBYFLOAT lf 1
HSET h a 1 s x
HINCRBYFLOAT h a 0.25
HINCRBYFLOAT h new 3
HINCRBYFLOAT h s 1
HINCRBYFLOAT s1 a 1
INCR counter
INCRBY counter 41
APPEND s1 -more
SADD set1 a b c d e f 1 2 3
SPOP set1 ~shape
SPOP set1 3 ~shape
SPOP set1 0
SPOP set1 -1
SPOP set1 x
SPOP set1 100 ~shape
SPOP set1
SPOP s1
SADD iset 1 2 3 4 5
SPOP iset 2 ~shape
SPOP iset ~shape
XADD x2 * a 1 ~shape
XADD x2 * b 2 ~shape
XADD x2 MAXLEN ~ 1 * c 3 ~shape
XADD x2 NOMKSTREAM * d 4 ~shape
XADD nox NOMKSTREAM * a 1
XADD x1 99999999999999-* a 1
XADD x1 * b 2
XADD x1 * c 3
XDEL x1 99999999999999-2
XADD x1 * d 4
XADD x1 MAXLEN = 2 * e 5
XADD x1 MINID ~ 99999999999999-3 LIMIT 10 * f 6
XTRIM x1 MAXLEN ~ 1
XTRIM x1 MAXLEN 2
XADD x1 MAXLEN abc * a 1
XADD x1 1-1 a 1
XADD s1 * a 1
XADD g1 1-1 a 1
XADD g1 2-1 b 2
XADD g1 3-1 c 3
XADD g1 4-1 d 4
XADD g1 5-1 e 5
XGROUP CREATE g1 grp 0
XCLAIM g1 grp alice 0 1-1 2-1 TIME {hour_ago} FORCE JUSTID
XCLAIM g1 grp bob 0 3-1 FORCE RETRYCOUNT 2
XCLAIM g1 grp carol 60000 1-1 3-1 1-1
XCLAIM g1 grp dave 0 2-1 IDLE 7200000 JUSTID
XCLAIM g1 grp dave 0 2-1 TIME 99999999999999
XCLAIM g1 grp dave 0 2-1 IDLE 7200000 BOGUS
XCLAIM g1 nogroup dave 10 2-1
XCLAIM g1 grp erin 0 5-1 FORCE IDLE 9000000 LASTID 5-1
XAUTOCLAIM g1 grp frank 5000000 0-0 COUNT 10
XCLAIM g1 grp bob 0 4-1 FORCE
XDEL g1 4-1
XAUTOCLAIM g1 grp gina 0 0 COUNT 2
XAUTOCLAIM g1 grp gina 0 0 JUSTID
XAUTOCLAIM g1 nogroup x 0 0
XAUTOCLAIM g1 grp x 0 0 COUNT 0
XAUTOCLAIM s1 grp x 0 0
XADD gap 1-1 a 1
XADD gap 2-1 b 2
XGROUP CREATE gap grp 0
XREADGROUP GROUP grp c1 COUNT 1 STREAMS gap >
XADD rg 1-1 a 1
XADD rg 2-1 b 2
XADD rg 3-1 c 3
XGROUP CREATE rg grp 0
XREADGROUP GROUP grp c1 COUNT 2 BLOCK 100 STREAMS gap rg > >
XREADGROUP GROUP grp c2 STREAMS rg >
XREADGROUP GROUP grp c2 STREAMS rg >
XREADGROUP GROUP grp c3 NOACK STREAMS rg >
XADD rg 4-1 d 4
XADD rg 5-1 e 5
XREADGROUP GROUP grp c3 NOACK COUNT 1 STREAMS rg >
XDEL rg 5-1
XREADGROUP GROUP grp c4 STREAMS rg >
XADD rg 6-1 f 6
XREADGROUP GROUP grp c4 BLOCK 0 STREAMS rg >
XREADGROUP GROUP nogrp c1 STREAMS rg >
XREADGROUP GROUP grp c1 STREAMS missing >
XREADGROUP GROUP grp c1 STREAMS s1 >
XREADGROUP GROUP grp c1 STREAMS rg $
XREADGROUP GROUP grp c1 STREAMS gap 0
RPUSH l1 a b c d e
BLPOP nol l1 0.1
BRPOP l1 0
BLPOP s1 l1 1
BLPOP nol1 nol2 0.05
BRPOPLPUSH l1 l2 0
BLMOVE l2 l1 LEFT RIGHT 0
BLMPOP 0.1 2 nol l1 LEFT COUNT 2
BLPOP l1 -1
BLPOP l1 abc
ZADD z1 1 a 2 b 3 c 4.5 d
BZPOPMIN z1 0
BZPOPMAX nz z1 0
BZPOPMIN l1 z1 0
BZMPOP 0 1 z1 MAX
ZADD z2 1.5 x
BZPOPMIN z2 0
BZPOPMIN z2 0.05
EVAL return(redis.call('SET',KEYS[1],ARGV[1])) 1 ev val
SET ttlkeep v EX 500
SET ttlkeep w KEEPTTL
GETDEL f2
GETSET counter 7
PERSIST s4
DEL lf",
        exat = s + 500,
        pxat = now + 600_000,
        getex_at = s + 1000,
        expireat = s + 900,
        pexpireat = now + 700_000,
        restore_at = now + 800_000,
    );
    text.lines()
        .map(|line| {
            let (line, compare) = match line.strip_suffix(" ~shape") {
                Some(line) => (line, Compare::Shape),
                None => (line, Compare::Exact),
            };
            let args = line
                .split(' ')
                .map(|w| {
                    if w == "{payload}" {
                        Bytes::copy_from_slice(payload)
                    } else {
                        Bytes::copy_from_slice(w.as_bytes())
                    }
                })
                .collect();
            (args, compare)
        })
        .collect()
}

/// Named observations of a dataset.
type Fingerprint = Vec<(String, Value)>;

/// Everything replay must rebuild: the digest, and what the digest leaves out — each key's
/// type and absolute expiry, each stream's groups, consumers and PELs.
fn fingerprint(conn: &mut Conn) -> Fingerprint {
    let digest = conn.call_str("DEBUG DIGEST").value;
    assert!(matches!(digest, Value::Status(_)), "DEBUG DIGEST answers a digest: {digest:?}");
    let mut out = vec![("DEBUG DIGEST".to_string(), digest)];
    let Value::Array(Some(keys)) = conn.call_str("KEYS *").value else { panic!("KEYS") };
    let mut keys: Vec<Vec<u8>> =
        keys.into_iter().map(|k| if let Value::Bulk(Some(k)) = k { k } else { panic!("key") }).collect();
    keys.sort();
    for key in keys {
        let name = String::from_utf8_lossy(&key).into_owned();
        for probe in ["TYPE", "PEXPIRETIME"] {
            out.push((format!("{probe} {name}"), conn.call(&[Bytes::from(probe), Bytes::from(key.clone())]).value));
        }
        if conn.call(&[Bytes::from("TYPE"), Bytes::from(key.clone())]).raw == b"+stream\r\n" {
            out.push((format!("XINFO STREAM {name} FULL"), stream_state(conn, &key, key != b"gap")));
        }
    }
    out
}

/// Commands that may block: the journal holds one only where Redis refuses it at once (a bad
/// timeout); anything else could stall the apply connection.
const BLOCKING: [&str; 8] = ["BLPOP", "BRPOP", "BRPOPLPUSH", "BLMOVE", "BLMPOP", "BZPOPMIN", "BZPOPMAX", "BZMPOP"];

fn shown(args: &[Bytes]) -> String {
    args.iter().map(|a| String::from_utf8_lossy(a).into_owned()).collect::<Vec<_>>().join(" ")
}

#[test]
fn journaled_writes_replay_to_the_same_state_and_answer_like_redis() {
    let (live_server, replay_server, stock_server) = (Redis::start(), Redis::start(), Redis::start());
    let (mut live, mut prober, mut stock) = (live_server.connect(), live_server.connect(), stock_server.connect());

    stock.call_str("RPUSH template a b c");
    let Value::Bulk(Some(payload)) = stock.call_str("DUMP template").value else { panic!("DUMP") };

    let mut journal: Vec<(Vec<Bytes>, Reply)> = Vec::new();
    // After each client command: how much of the journal it covers and what live held then.
    let mut checkpoints: Vec<(usize, String, Fingerprint)> = Vec::new();
    let mut rewritten = 0;
    for (args, compare) in script(&payload) {
        copy_dataset(&mut live, &mut stock);
        let expected = stock.call(&args);
        let before = journal.len();
        let got = sequence(&mut live, &mut prober, &args, &mut journal);
        if journal.len() != before + 1 || journal.last().is_some_and(|(c, _)| c != &args) {
            rewritten += 1;
        }
        match compare {
            Compare::Exact => assert_eq!(
                String::from_utf8_lossy(&got.raw),
                String::from_utf8_lossy(&expected.raw),
                "client reply to `{}`",
                shown(&args)
            ),
            Compare::Shape => {
                assert_eq!(shape(&got.value), shape(&expected.value), "reply shape of `{}`", shown(&args))
            }
        }
        checkpoints.push((journal.len(), shown(&args), fingerprint(&mut live)));
    }
    assert!(rewritten >= 60, "most of the script exercises the table ({rewritten} rewritten)");
    assert_eq!(live.call_str("EXISTS __memlog:scratch").raw, b":0\r\n", "probes leave no scratch key");
    for (command, reply) in &journal {
        let name = String::from_utf8_lossy(&command[0]).to_ascii_uppercase();
        let refused = matches!(reply.value, Value::Error(_));
        let may_block = BLOCKING.contains(&name.as_str())
            || (name.starts_with("XREAD") && command.iter().any(|a| a.eq_ignore_ascii_case(b"BLOCK")));
        assert!(!may_block || refused, "journaled a blocking command: `{}`", shown(command));
    }
    let Value::Array(Some(keys)) = live.call_str("KEYS *").value else { panic!("KEYS") };
    assert!(keys.len() > 20, "the script leaves a varied dataset ({} keys)", keys.len());

    // Later, relative times would land elsewhere: the journal must not contain any.
    std::thread::sleep(Duration::from_millis(1500));
    let mut replay = replay_server.connect();
    let mut replayed = 0;
    for (upto, client_command, live_state) in checkpoints {
        for (command, live_reply) in &journal[replayed..upto] {
            let reply = replay.call(command);
            assert_eq!(
                String::from_utf8_lossy(&reply.raw),
                String::from_utf8_lossy(&live_reply.raw),
                "replayed `{}` answers as it did live",
                shown(command)
            );
        }
        replayed = upto;
        assert_eq!(fingerprint(&mut replay), live_state, "state after replaying `{client_command}`");
    }
}

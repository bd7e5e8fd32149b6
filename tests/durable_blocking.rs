//! Blocking pops across crashes: a BLPOP parked in the proxy when the proxy is killed (`kill -9`)
//! and re-issued after the restart, a BLPOP parked while the shard's primary is killed and
//! restarted EMPTY (so the proxy rebuilds it from the journal), and consumers popping a queue
//! through two such rebuilds. Every element must be popped exactly once and none left behind,
//! both through the proxy and on the rebuilt Redis itself: a pop that was served but not
//! journaled comes back on replay, and a pop journaled but never handed to a client is lost.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::cluster::{redis_conn, ClusterOptions, DurableCluster, CLIENT_TIMEOUT};
use common::resp::{Conn, Value};

/// The list every test pops from.
const QUEUE: &str = "jobs";
/// BLPOP timeout of a parked client (seconds): far longer than a wake-up or a rebuild takes,
/// shorter than the client's read timeout, so a proxy that never wakes it fails the test.
const PARKED_TIMEOUT_S: &str = "15";
/// How long a test waits for a condition it polls.
const POLL_TIMEOUT: Duration = Duration::from_secs(30);

/// One shard is enough: the queue lives on it, and it is the one whose primary is killed.
fn one_shard_cluster() -> DurableCluster {
    DurableCluster::start(ClusterOptions { shards: 1, ..ClusterOptions::default() })
}

/// `+OK`.
fn ok() -> Value {
    Value::Simple("OK".into())
}

/// A bulk-string reply holding `text`.
fn bulk(text: &str) -> Value {
    Value::Bulk(Some(text.as_bytes().to_vec()))
}

/// BLPOP's reply when it pops `element` from QUEUE.
fn popped(element: &str) -> Value {
    Value::Array(Some(vec![bulk(QUEUE), bulk(element)]))
}

/// The proxy's id of the client on `conn` (`CLIENT ID`), as CLIENT LIST filters want it.
fn client_id(conn: &mut Conn) -> String {
    match conn.cmd(&["CLIENT", "ID"]).expect("CLIENT ID") {
        Value::Int(id) => id.to_string(),
        other => panic!("CLIENT ID answered {other:?}"),
    }
}

/// Sends `BLPOP QUEUE timeout` on a fresh connection and waits until the proxy shows the client
/// blocked in it, as Redis does: `flags=b` and `cmd=blpop` in CLIENT LIST. Returns the connection.
fn park_blpop(cluster: &DurableCluster) -> Conn {
    let mut conn = cluster.client();
    let id = client_id(&mut conn);
    conn.queue(&["BLPOP", QUEUE, PARKED_TIMEOUT_S]);
    conn.flush().expect("send BLPOP");
    let mut observer = cluster.client();
    let deadline = Instant::now() + POLL_TIMEOUT;
    loop {
        let line = observer.cmd(&["CLIENT", "LIST", "ID", &id]).expect("CLIENT LIST").text();
        let field = |name: &str| line.split_whitespace().find_map(|field| field.strip_prefix(name)).unwrap_or("");
        if field("flags=").contains('b') && field("cmd=") == "blpop" {
            return conn;
        }
        assert!(Instant::now() < deadline, "client {id} never reported blocked: {line:?}\n{}", cluster.proxy_log());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `command` through the proxy, retried while it answers `-TRYAGAIN` (the write was not
/// applied: the shard is being rebuilt); any other reply is returned.
fn until_not_tryagain(cluster: &DurableCluster, command: &[&str]) -> Value {
    let deadline = Instant::now() + POLL_TIMEOUT;
    let mut conn = cluster.client();
    loop {
        let reply = conn.cmd(command).expect("the proxy answers");
        if !matches!(&reply, Value::Error(e) if e.starts_with("TRYAGAIN")) {
            return reply;
        }
        assert!(Instant::now() < deadline, "{command:?} still refused: {reply:?}\n{}", cluster.proxy_log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The length of QUEUE on the shard's Redis itself, bypassing the proxy.
fn queue_length_on_redis(cluster: &DurableCluster) -> Value {
    let mut redis = redis_conn(cluster.redis_addr(0)).expect("connect to redis");
    redis.cmd(&["LLEN", QUEUE]).expect("LLEN on redis")
}

/// Kills the proxy and the primary, restarts the primary EMPTY and then the proxy, which
/// replays the journal onto it before serving: what the shard holds afterwards is what the
/// journal says.
fn rebuild_everything_from_the_journal(cluster: &mut DurableCluster) {
    cluster.kill_proxy();
    cluster.kill_redis(0);
    cluster.restart_redis(0);
    cluster.start_proxy();
}

/// A reply already known is written before the client's next one is waited for: a client that
/// pipelines a SET and a BLPOP that parks hears the SET's `+OK` at once, as from Redis, not
/// when the pop ends (the session held it in its buffer behind the pop until session 12).
#[test]
fn a_reply_ahead_of_a_parked_blpop_is_written_at_once() {
    let cluster = one_shard_cluster();
    let mut conn = cluster.client();
    conn.queue(&["SET", "ahead", "1"]);
    conn.queue(&["BLPOP", QUEUE, PARKED_TIMEOUT_S]);
    conn.flush().unwrap();
    let sent = Instant::now();
    assert_eq!(conn.read().unwrap(), ok());
    let waited = sent.elapsed();
    assert!(waited < Duration::from_secs(5), "the SET's reply came after {waited:?}, with the BLPOP's");
    let mut pusher = cluster.client();
    assert_eq!(pusher.cmd(&["RPUSH", QUEUE, "behind"]).unwrap(), Value::Int(1));
    assert_eq!(conn.read().unwrap(), popped("behind"));
}

#[test]
fn a_blpop_cut_by_a_proxy_kill_and_reissued_after_restart_pops_the_new_element_once() {
    let mut cluster = one_shard_cluster();
    let mut setup = cluster.client();
    assert_eq!(setup.cmd(&["SET", "marker", "journaled"]).unwrap(), ok());
    drop(setup);

    let mut cut = park_blpop(&cluster);
    cluster.kill_proxy();
    let reply = cut.read();
    assert!(reply.is_err(), "a client parked in a killed proxy got {reply:?}");
    cluster.start_proxy();

    let mut reissued = park_blpop(&cluster);
    let mut pusher = cluster.client();
    assert_eq!(pusher.cmd(&["RPUSH", QUEUE, "after-restart"]).unwrap(), Value::Int(1));
    assert_eq!(reissued.read().unwrap(), popped("after-restart"), "{}", cluster.proxy_log());
    assert_eq!(pusher.cmd(&["LLEN", QUEUE]).unwrap(), Value::Int(0));
    assert_eq!(reissued.cmd(&["BLPOP", QUEUE, "0.5"]).unwrap(), Value::Array(None), "popped twice");
    drop((reissued, pusher));

    // The pop is in the journal: a shard rebuilt from it alone holds no element.
    rebuild_everything_from_the_journal(&mut cluster);
    let mut check = cluster.client();
    assert_eq!(check.cmd(&["GET", "marker"]).unwrap(), bulk("journaled"), "the rebuild replayed nothing");
    assert_eq!(check.cmd(&["LLEN", QUEUE]).unwrap(), Value::Int(0), "the pop was not journaled");
    assert_eq!(queue_length_on_redis(&cluster), Value::Int(0));
}

#[test]
fn a_blpop_parked_while_the_primary_is_rebuilt_from_the_journal_gets_the_element_once() {
    let mut cluster = one_shard_cluster();
    let mut setup = cluster.client();
    assert_eq!(setup.cmd(&["SET", "marker", "journaled"]).unwrap(), ok());
    assert_eq!(setup.cmd(&["RPUSH", QUEUE, "earlier"]).unwrap(), Value::Int(1));
    assert_eq!(setup.cmd(&["BLPOP", QUEUE, "1"]).unwrap(), popped("earlier"));
    drop(setup);

    let mut parked = park_blpop(&cluster);
    cluster.kill_redis(0);
    cluster.restart_redis(0);
    assert_eq!(until_not_tryagain(&cluster, &["RPUSH", QUEUE, "during-rebuild"]), Value::Int(1));
    assert_eq!(parked.read().unwrap(), popped("during-rebuild"), "{}", cluster.proxy_log());

    let mut check = cluster.client();
    assert_eq!(check.cmd(&["GET", "marker"]).unwrap(), bulk("journaled"), "the primary was not rebuilt");
    assert_eq!(check.cmd(&["LLEN", QUEUE]).unwrap(), Value::Int(0));
    assert_eq!(queue_length_on_redis(&cluster), Value::Int(0));
    rebuild_everything_from_the_journal(&mut cluster);
    assert_eq!(queue_length_on_redis(&cluster), Value::Int(0), "an element came back from the journal");
}

/// Elements the producer pushes; consumers pop them concurrently.
const ELEMENTS: u64 = 600;
const CONSUMERS: usize = 3;

/// What the producer pushed: acknowledged elements, and those whose outcome it cannot know
/// (an error other than `-TRYAGAIN`, or a broken connection): they may or may not be in the list.
#[derive(Default)]
struct Pushed {
    acked: BTreeSet<u64>,
    unknown: BTreeSet<u64>,
}

/// A new connection to the proxy, or None after a short back-off if it refuses one.
fn reconnect(addr: SocketAddr) -> Option<Conn> {
    let conn = Conn::connect(addr, CLIENT_TIMEOUT).ok();
    if conn.is_none() {
        std::thread::sleep(Duration::from_millis(20));
    }
    conn
}

/// Pushes `e0 … e{ELEMENTS-1}` one RPUSH at a time, retrying an element refused with
/// `-TRYAGAIN` (not applied), counting acknowledgements in `progress`.
fn produce(addr: SocketAddr, progress: Arc<AtomicU64>) -> Pushed {
    let mut pushed = Pushed::default();
    let mut conn: Option<Conn> = None;
    let mut element = 0;
    while element < ELEMENTS {
        let Some(live) = conn.as_mut() else {
            conn = reconnect(addr);
            continue;
        };
        match live.cmd(&["RPUSH", QUEUE, &format!("e{element}")]) {
            Ok(Value::Int(_)) => {
                pushed.acked.insert(element);
                progress.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Value::Error(e)) if e.starts_with("TRYAGAIN") => {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            Ok(_) => {
                pushed.unknown.insert(element);
            }
            Err(_) => {
                pushed.unknown.insert(element);
                conn = None;
            }
        }
        element += 1;
    }
    pushed
}

/// What one consumer saw besides the elements it popped.
#[derive(Debug, Default)]
struct ConsumerLog {
    /// Replies that are neither an element, nil nor `-TRYAGAIN`: a parked BLPOP must get its
    /// element or its timeout, whatever happens to the Redis node behind the proxy.
    errors: Vec<String>,
    tryagain: u64,
    broken_connections: u64,
}

/// Pops with `BLPOP QUEUE 1` until `stop`, adding every element it gets to `popped`.
fn consume(addr: SocketAddr, stop: Arc<AtomicBool>, popped: Arc<Mutex<Vec<u64>>>) -> ConsumerLog {
    let mut log = ConsumerLog::default();
    let mut conn: Option<Conn> = None;
    while !stop.load(Ordering::Relaxed) {
        let Some(live) = conn.as_mut() else {
            conn = reconnect(addr);
            continue;
        };
        match live.cmd(&["BLPOP", QUEUE, "1"]) {
            Ok(Value::Array(None)) => {}
            Ok(Value::Array(Some(items))) if items.len() == 2 => {
                match items[1].text().strip_prefix('e').and_then(|n| n.parse().ok()) {
                    Some(element) => popped.lock().unwrap().push(element),
                    None => log.errors.push(format!("popped something never pushed: {items:?}")),
                }
            }
            // Not applied: the shard is being rebuilt; the element stays for a later pop.
            Ok(Value::Error(e)) if e.starts_with("TRYAGAIN") => log.tryagain += 1,
            Ok(other) => log.errors.push(format!("{other:?}")),
            Err(_) => {
                log.broken_connections += 1;
                conn = None;
            }
        }
    }
    log
}

/// Polls `condition` until it holds (true) or POLL_TIMEOUT passes (false).
fn poll(mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + POLL_TIMEOUT;
    while !condition() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

#[test]
fn blpop_consumers_across_two_primary_rebuilds_pop_every_element_exactly_once() {
    let mut cluster = one_shard_cluster();
    let addr = cluster.proxy_addr();
    let stop = Arc::new(AtomicBool::new(false));
    let popped = Arc::new(Mutex::new(Vec::new()));
    let consumers: Vec<JoinHandle<ConsumerLog>> = (0..CONSUMERS)
        .map(|_| {
            let (stop, popped) = (stop.clone(), popped.clone());
            std::thread::spawn(move || consume(addr, stop, popped))
        })
        .collect();
    let acked = Arc::new(AtomicU64::new(0));
    let producer = {
        let acked = acked.clone();
        std::thread::spawn(move || produce(addr, acked))
    };

    for (round, after) in [(1, ELEMENTS / 4), (2, ELEMENTS / 2)] {
        let pushing = poll(|| acked.load(Ordering::Relaxed) >= after);
        assert!(pushing, "the producer got stuck at {} pushes\n{}", acked.load(Ordering::Relaxed), cluster.proxy_log());
        cluster.kill_redis(0);
        cluster.restart_redis(0);
        println!("crash {round}: primary killed after {after} pushes, {} pops", popped.lock().unwrap().len());
    }
    let pushed = producer.join().expect("producer panicked");
    let mut check = cluster.client();
    // Done once every acknowledged element is popped and nothing is left; otherwise the
    // accounting below says what went missing.
    poll(|| {
        let seen: BTreeSet<u64> = popped.lock().unwrap().iter().copied().collect();
        pushed.acked.is_subset(&seen) && check.cmd(&["LLEN", QUEUE]).map(|n| n == Value::Int(0)).unwrap_or(false)
    });
    stop.store(true, Ordering::Relaxed);
    let logs: Vec<ConsumerLog> = consumers.into_iter().map(|c| c.join().expect("consumer panicked")).collect();

    let popped = popped.lock().unwrap().clone();
    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    for element in &popped {
        if !seen.insert(*element) {
            problems.push(format!("e{element} popped twice"));
        }
        if !pushed.acked.contains(element) && !pushed.unknown.contains(element) {
            problems.push(format!("e{element} popped but never pushed"));
        }
    }
    problems.extend(pushed.acked.difference(&seen).map(|element| format!("e{element} acknowledged, never popped")));
    problems.extend(logs.iter().flat_map(|log| log.errors.iter().map(|e| format!("a BLPOP answered {e}"))));
    let left = queue_length_on_redis(&cluster);
    if left != Value::Int(0) {
        problems.push(format!("LLEN {QUEUE} on the rebuilt primary: {left:?}"));
    }
    let broken: u64 = logs.iter().map(|log| log.broken_connections).sum();
    let tryagain: u64 = logs.iter().map(|log| log.tryagain).sum();
    println!(
        "{} pushes acknowledged, {} of unknown outcome, {} pops, {tryagain} BLPOPs refused with TRYAGAIN, \
         {broken} consumer connections broken",
        pushed.acked.len(),
        pushed.unknown.len(),
        popped.len()
    );
    assert!(
        problems.is_empty(),
        "{} problems:\n{}\n{}",
        problems.len(),
        problems.iter().take(30).cloned().collect::<Vec<_>>().join("\n"),
        cluster.proxy_log()
    );
    // Nothing else may vanish: a rebuild from the journal alone gives the same empty queue.
    rebuild_everything_from_the_journal(&mut cluster);
    assert_eq!(queue_length_on_redis(&cluster), Value::Int(0), "elements came back from the journal");
}

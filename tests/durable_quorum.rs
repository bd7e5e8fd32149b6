//! The journal's quorum seen from a client of the proxy: with 3 journal nodes, losing one changes
//! nothing; losing two stops writes (they wait, then fail with `-TRYAGAIN`) while reads go on;
//! when the nodes come back, writes resume by themselves, and no acknowledged write is lost.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::cluster::{ClusterOptions, DurableCluster};
use common::load::{lost_writes, Load};
use common::resp::Value;

/// Writes wait this long for a lost quorum before `-TRYAGAIN`: short, to keep the test quick.
const WRITE_WAIT_MS: u64 = 1_000;

#[test]
fn writes_survive_one_lost_node_stop_without_a_quorum_and_resume_after() {
    let mut cluster = DurableCluster::start(ClusterOptions { write_wait_ms: WRITE_WAIT_MS, ..Default::default() });
    let mut reader = cluster.client();
    assert_eq!(reader.cmd(&["SET", "before-the-faults", "still-here"]).unwrap(), Value::Simple("OK".into()));
    let load = Load::start(cluster.proxy_addr(), 4);
    assert!(load.wait_for_more_acks(2_000, Duration::from_secs(20)), "no load\n{}", cluster.proxy_log());

    // One node of three gone: the ack quorum (2) still holds, writes keep being acknowledged.
    cluster.kill_journal(0);
    assert!(
        load.wait_for_more_acks(2_000, Duration::from_secs(10)),
        "writes stopped with one journal node down (at {} acks)\n{}",
        load.acked(),
        cluster.proxy_log()
    );
    assert_eq!(load.progress.tryagain.load(Ordering::Relaxed), 0, "TRYAGAIN with a quorum up");

    // Two of three gone: no quorum. Writes wait, then fail with TRYAGAIN; reads still work.
    cluster.kill_journal(1);
    let deadline = Instant::now() + Duration::from_secs(5 + 2 * WRITE_WAIT_MS / 1000);
    while load.progress.tryagain.load(Ordering::Relaxed) == 0 {
        assert!(Instant::now() < deadline, "no TRYAGAIN without a journal quorum\n{}", cluster.proxy_log());
        std::thread::sleep(Duration::from_millis(20));
    }
    let acked_at_first_refusal = load.acked();
    let mut writer = cluster.client();
    let refused = writer.cmd(&["SET", "during-the-outage", "x"]).unwrap();
    assert!(matches!(&refused, Value::Error(e) if e.starts_with("TRYAGAIN")), "write without quorum: {refused:?}");
    let read = reader.cmd(&["GET", "before-the-faults"]).unwrap();
    assert_eq!(read, Value::Bulk(Some(b"still-here".to_vec())), "reads must go on without a journal quorum");
    // Nothing is acknowledged without a quorum: every write committed before the second node
    // died was answered long before the first TRYAGAIN (which takes write_wait_ms).
    assert_eq!(load.acked(), acked_at_first_refusal, "writes acknowledged without a journal quorum");

    // Both back: writes resume by themselves within a few seconds.
    cluster.restart_journal(0);
    cluster.restart_journal(1);
    let resumed_in = Instant::now();
    let deadline = resumed_in + Duration::from_secs(15);
    loop {
        match writer.cmd(&["SET", "after-the-outage", "y"]) {
            Ok(Value::Simple(ok)) if ok == "OK" => break,
            Ok(Value::Error(e)) if e.starts_with("TRYAGAIN") => {}
            other => panic!(
                "write {:?} after the journal came back: {other:?}\n{}",
                resumed_in.elapsed(),
                cluster.proxy_log()
            ),
        }
        assert!(Instant::now() < deadline, "writes did not resume\n{}", cluster.proxy_log());
    }
    println!("writes resumed {:?} after both journal nodes restarted", resumed_in.elapsed());
    assert!(
        load.wait_for_more_acks(2_000, Duration::from_secs(15)),
        "the load did not resume\n{}",
        cluster.proxy_log()
    );

    let progress = load.progress.clone();
    let logs = load.stop();
    println!(
        "acknowledged {}, TRYAGAIN {}, unknown outcome {}",
        progress.acked.load(Ordering::Relaxed),
        progress.tryagain.load(Ordering::Relaxed),
        progress.unknown.load(Ordering::Relaxed)
    );
    let mut lost = lost_writes(cluster.proxy_addr(), &logs);
    if reader.cmd(&["GET", "after-the-outage"]).unwrap() != Value::Bulk(Some(b"y".to_vec())) {
        lost.push("after-the-outage".into());
    }
    assert!(
        lost.is_empty(),
        "{} lost, e.g.:\n{}\n{}",
        lost.len(),
        lost[..lost.len().min(20)].join("\n"),
        cluster.proxy_log()
    );
}

/// `[journal] max_write_bytes` of the size tests: three 16 MiB writes fit, a fourth does not.
const MAX_WRITE: usize = 56 * 1024 * 1024;

/// A write larger than `[journal] max_write_bytes` is refused with a clear error before anything
/// is journaled; the writer is not stopped, and writes around it are applied (writes over one
/// entry but under the limit are journaled in parts: `tests/durable_crash.rs`).
#[test]
fn a_write_larger_than_max_write_bytes_is_refused_and_the_shard_goes_on() {
    let cluster = DurableCluster::start(ClusterOptions { max_write_bytes: Some(MAX_WRITE), ..Default::default() });
    let mut client = cluster.client();
    assert_eq!(client.cmd(&["SET", "before", "1"]).unwrap(), Value::Simple("OK".into()));
    let huge = vec![b'x'; MAX_WRITE + 1];
    let refused = client.cmd(&[b"SET".as_slice(), b"huge", &huge]).unwrap();
    assert!(
        matches!(&refused, Value::Error(e) if e.starts_with("ERR memlog: the write is") && e.contains("(max_write_bytes)")),
        "{refused:?}"
    );
    // Two writes of 40 MiB at once go into two entries, both applied.
    let big = vec![b'y'; 40 * 1024 * 1024];
    let mut second = cluster.client();
    client.queue(&[b"SET".as_slice(), b"big-1", &big]);
    second.queue(&[b"SET".as_slice(), b"big-2", &big]);
    client.flush().unwrap();
    second.flush().unwrap();
    assert_eq!(client.read().unwrap(), Value::Simple("OK".into()));
    assert_eq!(second.read().unwrap(), Value::Simple("OK".into()));
    assert_eq!(client.cmd(&["SET", "after", "2"]).unwrap(), Value::Simple("OK".into()));
    assert_eq!(client.cmd(&["EXISTS", "huge"]).unwrap(), Value::Int(0));
    assert_eq!(client.cmd(&["STRLEN", "big-2"]).unwrap(), Value::Int(40 * 1024 * 1024));
    assert_eq!(
        client.cmd(&["MGET", "before", "after"]).unwrap(),
        Value::Array(Some(vec![Value::Bulk(Some(b"1".to_vec())), Value::Bulk(Some(b"2".to_vec())),]))
    );
}

/// Queuing more than `[journal] max_write_bytes` in a transaction is refused at once (not at
/// EXEC, after the proxy held it all), EXEC answers EXECABORT, and nothing of it is applied.
#[test]
fn a_transaction_larger_than_max_write_bytes_is_refused_while_queuing() {
    let cluster = DurableCluster::start(ClusterOptions { max_write_bytes: Some(MAX_WRITE), ..Default::default() });
    let mut client = cluster.client();
    assert_eq!(client.cmd(&["MULTI"]).unwrap(), Value::Simple("OK".into()));
    let value = vec![b'z'; 16 * 1024 * 1024];
    let mut replies = Vec::new();
    for i in 0..5 {
        replies.push(client.cmd(&[b"SET".as_slice(), format!("{{t}}k{i}").as_bytes(), &value]).unwrap());
    }
    assert_eq!(
        replies[..3],
        [Value::Simple("QUEUED".into()), Value::Simple("QUEUED".into()), Value::Simple("QUEUED".into())]
    );
    assert!(
        matches!(&replies[3], Value::Error(e) if e.starts_with("ERR memlog: a transaction holds at most")),
        "{:?}",
        replies[3]
    );
    let exec = client.cmd(&["EXEC"]).unwrap();
    assert!(matches!(&exec, Value::Error(e) if e.starts_with("EXECABORT")), "{exec:?}");
    assert_eq!(client.cmd(&["EXISTS", "{t}k0"]).unwrap(), Value::Int(0));
    assert_eq!(client.cmd(&["SET", "{t}after", "1"]).unwrap(), Value::Simple("OK".into()));
}

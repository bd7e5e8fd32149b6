//! The journaler driven directly: a fake journal stream (recoveries and appends fail as a test
//! scripts them) in front of the real applier and a fake primary. Each test checks what clients
//! hear, what the journal holds and what the primary applied.

use std::sync::Mutex;

use super::super::fakes::{reply, set, FakeJournal, FakePrimary, FakeRedis, FakeStream, StreamScript};
use super::super::gather::GATHER_WAIT;
use super::*;
use crate::backend::ReplyResult;
use crate::resp::Request;

const WRITE_WAIT: Duration = Duration::from_secs(2);
/// The rig's `max_write_bytes`: two entries' worth.
const MAX_JOURNALED: usize = 2 * MAX_WRITE_BYTES;

/// A shard's journaler and applier over fakes, started on an empty journal and primary.
struct Rig {
    queue: mpsc::Sender<SequencerRequest>,
    stream: FakeStream,
    redis: Arc<Mutex<FakeRedis>>,
    health: Arc<ApplyHealth>,
    failed: Arc<AtomicBool>,
    memory: Arc<ShardMemory>,
    /// The journaler and its queue's receiver, until `run` starts it (tests may queue first).
    idle: Option<(Journaler<FakeStream>, mpsc::Receiver<SequencerRequest>)>,
}

impl Rig {
    async fn new(script: StreamScript) -> Rig {
        let stream = FakeStream { journal: FakeJournal::default(), script: Arc::new(Mutex::new(script)) };
        let writer = stream.recover().await.expect("the first recovery succeeds");
        let redis = Arc::new(Mutex::new(FakeRedis::default()));
        let health = Arc::new(ApplyHealth::default());
        let applier = Applier {
            run_as: crate::sequencer::run_as::RunAs::new(None),
            shard: 0,
            apply: FakePrimary(redis.clone()),
            reader: Some(Arc::new(stream.journal.clone())),
            snapshots: None,
            applied: 0,
            health: health.clone(),
            reply_wait: WRITE_WAIT,
            aborts: Aborts::new(None, Default::default()).0,
        };
        let (to_applier, applier_rx) = mpsc::channel(APPLIER_CAPACITY);
        let failed = Arc::new(AtomicBool::new(false));
        tokio::spawn(applier.run(applier_rx, failed.clone()));
        let (queue, rx) = mpsc::channel(QUEUE_CAPACITY);
        let memory = Arc::new(ShardMemory::default());
        let journaler = Journaler {
            shard: 0,
            journal: Some(Journal {
                stream: stream.clone(),
                write_wait: WRITE_WAIT,
                max_write_bytes: MAX_JOURNALED,
                writer,
            }),
            to_applier,
            failed: failed.clone(),
            appends: Arc::new(Semaphore::new(APPENDS_IN_FLIGHT)),
            health: health.clone(),
            watches: WatchRegistry::default(),
            parked: BlockedRegistry::default(),
            blocked: BlockedClients::default(),
            queue: queue.downgrade(),
            retry_scheduled: false,
            memory: memory.clone(),
        };
        Rig { queue, stream, redis, health, failed, memory, idle: Some((journaler, rx)) }
    }

    fn run(&mut self) {
        let (journaler, rx) = self.idle.take().expect("started once");
        tokio::spawn(journaler.run(rx));
    }

    /// Queues `SET <tag> v`; returns where its reply arrives.
    fn write(&self, tag: &str) -> oneshot::Receiver<ReplyResult> {
        self.write_as(tag, None)
    }

    /// Queues `SET <tag> v` from client `client`.
    fn write_by(&self, client: u64, tag: &str) -> oneshot::Receiver<ReplyResult> {
        let op = SequencerOp::Write { request: Request::from_args(&["SET", tag, "v"]), command: None };
        self.submit_from(client, 0, op)
    }

    /// Queues `SET <tag> v` with `command`'s table entry (its flags).
    fn write_as(&self, tag: &str, command: Option<Arc<CommandInfo>>) -> oneshot::Receiver<ReplyResult> {
        let request = Request::from_args(&["SET", tag, "v"]);
        self.submit(SequencerOp::Write { request, command })
    }

    fn submit(&self, op: SequencerOp) -> oneshot::Receiver<ReplyResult> {
        self.submit_in(0, op)
    }

    /// Queues `op` of a client in database `db`.
    fn submit_in(&self, db: u8, op: SequencerOp) -> oneshot::Receiver<ReplyResult> {
        self.submit_from(0, db, op)
    }

    /// Queues `op` of client `client` (0: the proxy's own) in database `db`.
    fn submit_from(&self, client: u64, db: u8, op: SequencerOp) -> oneshot::Receiver<ReplyResult> {
        let (reply, rx) = oneshot::channel();
        self.queue
            .try_send(SequencerRequest { proto: Proto::Resp2, db, client, op, reply })
            .expect("room in the queue");
        rx
    }

    fn applied(&self) -> Vec<String> {
        self.redis.lock().unwrap().applied.clone()
    }

    fn script(&self) -> std::sync::MutexGuard<'_, StreamScript> {
        self.stream.script.lock().unwrap()
    }
}

fn ok(tag: &str) -> String {
    format!("${}\r\n{tag}\r\n", tag.len())
}

#[tokio::test(start_paused = true)]
async fn writes_queued_together_are_one_journal_entry_applied_once() {
    let mut rig = Rig::new(StreamScript::default()).await;
    let replies: Vec<_> = ["a", "b", "c"].iter().map(|tag| rig.write(tag)).collect();
    rig.run();
    for (rx, tag) in replies.into_iter().zip(["a", "b", "c"]) {
        assert_eq!(reply(rx).await, ok(tag));
    }
    let entry: Vec<u8> = ["a", "b", "c"].iter().flat_map(|tag| set(tag).to_vec()).collect();
    assert_eq!(rig.stream.journal.payloads(), [Bytes::from(entry)], "one entry: the three SETs in order");
    assert_eq!(rig.applied(), ["a", "b", "c"]);
}

/// A write in another database is journaled with it and applied in it (`SELECT n`, the write,
/// `SELECT 0`: the fake primary answers each command with its first argument), its client
/// hearing its own reply; database 0's writes stay as they were. A transaction's SELECT is
/// answered by the proxy and moves the commands after it.
#[tokio::test(start_paused = true)]
async fn writes_are_journaled_and_applied_in_their_database() {
    let mut rig = Rig::new(StreamScript::default()).await;
    let in_0 = rig.write("a");
    let in_3 = rig.submit_in(3, SequencerOp::Write { request: Request::from_args(&["SET", "b", "v"]), command: None });
    let queued = |args: &[&str], db: u8, answer: Option<&'static [u8]>| QueuedCommand {
        request: Request::from_args(args),
        command: command(&args[0].to_ascii_lowercase(), false),
        write: answer.is_none(),
        db,
        answer: answer.map(Bytes::from_static),
    };
    let commands = vec![
        queued(&["SET", "c", "v"], 0, None),
        queued(&["SELECT", "5"], 5, Some(b"+OK\r\n")),
        queued(&["SET", "d", "v"], 5, None),
    ];
    let exec = rig.submit(SequencerOp::Transaction(Transaction { commands, watch: None }));
    rig.run();
    assert_eq!(reply(in_0).await, ok("a"));
    assert_eq!(reply(in_3).await, ok("b"));
    assert_eq!(reply(exec).await, format!("*3\r\n{}+OK\r\n{}", ok("c"), ok("d")));
    let in_db = |db: u8, tag: &str| crate::databases::in_db(&set(tag), db);
    let entry = [set("a"), in_db(3, "b"), set("c"), in_db(5, "d")].concat();
    assert_eq!(rig.stream.journal.payloads(), [Bytes::from(entry)]);
    assert_eq!(rig.applied(), ["a", "3", "b", "0", "c", "5", "d", "0"]);
}

/// A table entry named `name`, with Redis's `denyoom` flag or without.
fn command(name: &str, denyoom: bool) -> Arc<CommandInfo> {
    let mut info = CommandInfo::local(name, -2);
    info.flags.denyoom = denyoom;
    Arc::new(info)
}

#[tokio::test(start_paused = true)]
async fn over_maxmemory_what_may_add_data_is_refused_before_the_journal_and_the_rest_goes_on() {
    let mut rig = Rig::new(StreamScript::default()).await;
    rig.memory.set_limit(1000, crate::params::Eviction::Refuse);
    rig.memory.record_reading(1001);
    rig.run();
    let oom = "-OOM command not allowed when used memory > 'maxmemory'.\r\n";
    assert_eq!(reply(rig.write_as("grows", Some(command("set", true)))).await, oom);
    assert_eq!(reply(rig.write_as("script", Some(command("fcall", false)))).await, oom);
    let request = Request::from_args(&["SET", "in-multi", "v"]);
    let queued = QueuedCommand { request, command: command("set", true), write: true, db: 0, answer: None };
    let exec = rig.submit(SequencerOp::Transaction(Transaction { commands: vec![queued], watch: None }));
    assert_eq!(
        reply(exec).await,
        "-EXECABORT Transaction discarded because of: OOM command not allowed when used memory > 'maxmemory'.\r\n"
    );
    // Without `denyoom` (DEL, UNLINK, EXPIRE …) a write frees memory, as on Redis.
    assert_eq!(reply(rig.write_as("frees", Some(command("del", false)))).await, ok("frees"));
    rig.memory.record_reading(500);
    assert_eq!(reply(rig.write_as("fits", Some(command("set", true)))).await, ok("fits"));
    assert_eq!(rig.stream.journal.payloads(), [set("frees"), set("fits")], "nothing refused was journaled");
    assert_eq!(rig.applied(), ["frees", "fits"]);
}

#[tokio::test(start_paused = true)]
async fn appends_in_flight_are_capped_and_what_waits_meanwhile_goes_out_together() {
    let (rig, gate) = gated_rig().await;
    let mut replies = Vec::new();
    for i in 0..10 {
        replies.push(rig.write(&format!("k{i}")));
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(rig.script().in_flight, APPENDS_IN_FLIGHT, "the rest wait in the queue");
    gate.add_permits(1000);
    for (i, rx) in replies.into_iter().enumerate() {
        assert_eq!(reply(rx).await, ok(&format!("k{i}")));
    }
    assert_eq!(rig.script().most_in_flight, APPENDS_IN_FLIGHT);
    assert_eq!(
        rig.stream.journal.payloads().len(),
        APPENDS_IN_FLIGHT + 1,
        "the writes that waited went out as one entry"
    );
    assert_eq!(rig.applied(), (0..10).map(|i| format!("k{i}")).collect::<Vec<_>>());
}

/// A running rig whose appends each wait for a permit of the returned gate.
async fn gated_rig() -> (Rig, Arc<Semaphore>) {
    let gate = Arc::new(Semaphore::new(0));
    let mut rig = Rig::new(StreamScript { gate: Some(gate.clone()), ..StreamScript::default() }).await;
    rig.run();
    (rig, gate)
}

/// Two clients that each write again as soon as they hear their reply: `a1` goes out alone and
/// `b1` arrives while it is appended. Without gathering, `b1` would go out alone as soon as
/// `a1` committed, `a2` would wait for it, and the two would take turns for good (`gather.rs`).
#[tokio::test(start_paused = true)]
async fn clients_taking_turns_are_gathered_into_one_entry() {
    let (a, b) = (1, 2);
    let (rig, gate) = gated_rig().await;
    let a1 = rig.write_by(a, "a1");
    tokio::task::yield_now().await;
    assert_eq!(rig.script().in_flight, 1, "a1 is being appended");
    let b1 = rig.write_by(b, "b1");
    gate.add_permits(1);
    assert_eq!(reply(a1).await, ok("a1"));
    let a2 = rig.write_by(a, "a2");
    gate.add_permits(1000);
    assert_eq!(reply(b1).await, ok("b1"));
    assert_eq!(reply(a2).await, ok("a2"));
    let together: Vec<u8> = [set("b1"), set("a2")].concat();
    assert_eq!(rig.stream.journal.payloads(), [set("a1"), Bytes::from(together)]);
    assert_eq!(rig.applied(), ["a1", "b1", "a2"]);
}

/// A client expected back that does not come: the waiting writes go out after `GATHER_WAIT`,
/// and the next batch is taken at once.
#[tokio::test(start_paused = true)]
async fn a_client_that_does_not_come_back_holds_the_next_entry_for_gather_wait_at_most() {
    let (a, b) = (1, 2);
    let (rig, gate) = gated_rig().await;
    let a1 = rig.write_by(a, "a1");
    tokio::task::yield_now().await;
    let b1 = rig.write_by(b, "b1");
    gate.add_permits(1000);
    assert_eq!(reply(a1).await, ok("a1"));
    let waiting = tokio::time::Instant::now();
    assert_eq!(reply(b1).await, ok("b1"));
    let waited = waiting.elapsed();
    assert!(waited >= GATHER_WAIT && waited < 2 * GATHER_WAIT, "b1 waited {waited:?} for a2");
    let next = tokio::time::Instant::now();
    assert_eq!(reply(rig.write_by(b, "b2")).await, ok("b2"));
    assert_eq!(next.elapsed(), Duration::ZERO, "after a timeout, the next batch does not wait");
    assert_eq!(rig.stream.journal.payloads(), [set("a1"), set("b1"), set("b2")]);
}

/// A client whose next write was queued before its last was answered (it pipelines, or many
/// callers share its connection) is not waited for: its writes come whether or not it hears back.
#[tokio::test(start_paused = true)]
async fn a_client_with_a_write_already_queued_is_not_waited_for() {
    let c = 3;
    let (rig, gate) = gated_rig().await;
    let c1 = rig.write_by(c, "c1");
    tokio::task::yield_now().await;
    let c2 = rig.write_by(c, "c2");
    gate.add_permits(1000);
    assert_eq!(reply(c1).await, ok("c1"));
    let waiting = tokio::time::Instant::now();
    assert_eq!(reply(c2).await, ok("c2"));
    assert_eq!(waiting.elapsed(), Duration::ZERO, "c2 went out without waiting");
    assert_eq!(rig.stream.journal.payloads(), [set("c1"), set("c2")]);
}

#[tokio::test(start_paused = true)]
async fn a_failed_writer_is_replaced_under_a_new_epoch_and_writes_resume() {
    let mut rig = Rig::new(StreamScript { failing_appends: 1, ..StreamScript::default() }).await;
    rig.run();
    let refused = reply(rig.write("lost")).await;
    assert!(refused.starts_with("-TRYAGAIN memlog: the journal has no quorum"), "{refused}");
    assert!(rig.failed.load(Ordering::Acquire));
    // Recovery fails twice (no quorum), then succeeds: the write waits meanwhile, well within
    // write_wait, and is then journaled by the new writer.
    rig.script().failing_recoveries = 2;
    assert_eq!(reply(rig.write("a")).await, ok("a"));
    assert!(!rig.failed.load(Ordering::Acquire));
    assert_eq!(rig.script().epochs, [2], "written by the writer of the second epoch");
    assert_eq!(rig.applied(), ["a"], "the refused write was never applied");
}

#[tokio::test(start_paused = true)]
async fn writes_waiting_longer_than_write_wait_for_a_quorum_fail_and_nothing_is_journaled() {
    let mut rig = Rig::new(StreamScript { failing_appends: 1, ..StreamScript::default() }).await;
    rig.run();
    let _ = reply(rig.write("lost")).await;
    rig.script().failing_recoveries = u32::MAX;
    let started = tokio::time::Instant::now();
    let refused = reply(rig.write("a")).await;
    assert!(refused.starts_with("-TRYAGAIN memlog: the journal has no quorum"), "{refused}");
    assert!(started.elapsed() >= WRITE_WAIT, "refused only after write_wait ({:?})", started.elapsed());
    assert!(rig.stream.journal.payloads().is_empty());
    assert!(rig.applied().is_empty());
    // The quorum returns: the next write goes through.
    rig.script().failing_recoveries = 0;
    assert_eq!(reply(rig.write("b")).await, ok("b"));
    assert_eq!(rig.applied(), ["b"]);
}

#[tokio::test(start_paused = true)]
async fn writes_are_held_while_the_primary_cannot_apply_and_fail_after_write_wait() {
    let mut rig = Rig::new(StreamScript::default()).await;
    rig.run();
    // A hold shorter than write_wait: the write waits, then goes through.
    rig.health.set_failing(true);
    let held = rig.write("a");
    tokio::time::sleep(WRITE_WAIT / 2).await;
    assert!(rig.stream.journal.payloads().is_empty(), "nothing journaled while held");
    rig.health.set_failing(false);
    assert_eq!(reply(held).await, ok("a"));
    // A longer one: refused once write_wait passed, nothing journaled or applied.
    rig.health.set_failing(true);
    let started = tokio::time::Instant::now();
    let refused = reply(rig.write("b")).await;
    assert!(refused.starts_with("-TRYAGAIN memlog: shard 0 cannot apply writes right now"), "{refused}");
    assert!(started.elapsed() >= WRITE_WAIT);
    // Past write_wait, writes arriving during the same hold are refused at once.
    let started = tokio::time::Instant::now();
    let refused = reply(rig.write("c")).await;
    assert!(refused.starts_with("-TRYAGAIN"), "{refused}");
    assert!(started.elapsed() < Duration::from_millis(100), "{:?}", started.elapsed());
    assert_eq!(rig.stream.journal.payloads().len(), 1);
    assert_eq!(rig.applied(), ["a"]);
}

#[tokio::test(start_paused = true)]
async fn a_held_shard_pushes_back_once_its_queue_is_full() {
    let mut rig = Rig::new(StreamScript::default()).await;
    rig.run();
    rig.health.set_failing(true);
    let first = rig.write("first");
    tokio::time::sleep(Duration::from_millis(10)).await;
    // The journaler holds `first` in its batch; the queue takes QUEUE_CAPACITY more, then
    // refuses: a session waits there (and stops reading its client) instead of the proxy
    // buffering without bound.
    let mut queued = Vec::new();
    for i in 0..QUEUE_CAPACITY {
        queued.push(rig.write(&format!("k{i}")));
    }
    let (sender, _rx) = oneshot::channel();
    let op = SequencerOp::Write { request: Request::from_args(&["SET", "one-too-many", "v"]), command: None };
    let refused = rig.queue.try_send(SequencerRequest { proto: Proto::Resp2, db: 0, client: 0, op, reply: sender });
    assert!(refused.is_err(), "the queue is bounded");
    // write_wait passes: everything held is refused, nothing journaled, and the queue has room again.
    assert!(reply(first).await.starts_with("-TRYAGAIN"));
    for rx in queued {
        assert!(reply(rx).await.starts_with("-TRYAGAIN"));
    }
    assert!(rig.stream.journal.payloads().is_empty());
    rig.health.set_failing(false);
    assert_eq!(reply(rig.write("after")).await, ok("after"));
}

/// Queues `SET <tag> <len bytes>`.
fn big_write(rig: &Rig, tag: &str, len: usize) -> oneshot::Receiver<ReplyResult> {
    let (reply, rx) = oneshot::channel();
    let request = Request::from_args(&[b"SET".as_slice(), tag.as_bytes(), &vec![b'x'; len]]);
    let op = SequencerOp::Write { request, command: None };
    rig.queue
        .try_send(SequencerRequest { proto: Proto::Resp2, db: 0, client: 0, op, reply })
        .expect("room in the queue");
    rx
}

/// An applier over `journal` and an empty primary, for replays.
fn replayer(journal: &FakeJournal) -> (Applier<FakePrimary, FakeJournal>, Arc<Mutex<FakeRedis>>) {
    let redis = Arc::new(Mutex::new(FakeRedis::default()));
    let applier = Applier {
        run_as: crate::sequencer::run_as::RunAs::new(None),
        shard: 0,
        apply: FakePrimary(redis.clone()),
        reader: Some(Arc::new(journal.clone())),
        snapshots: None,
        applied: 0,
        health: Arc::new(ApplyHealth::default()),
        reply_wait: WRITE_WAIT,
        aborts: Aborts::new(None, Default::default()).0,
    };
    (applier, redis)
}

#[tokio::test(start_paused = true)]
async fn a_write_larger_than_an_entry_is_journaled_in_parts_and_replayed_whole() {
    let mut rig = Rig::new(StreamScript::default()).await;
    let big = big_write(&rig, "big", MAX_WRITE_BYTES + 1);
    let after = rig.write("after");
    let too_big = big_write(&rig, "too-big", MAX_JOURNALED);
    let last = rig.write("last");
    rig.run();
    assert_eq!(reply(big).await, ok("big"));
    assert_eq!(reply(after).await, ok("after"));
    let refused = reply(too_big).await;
    assert!(refused.starts_with("-ERR memlog: the write is"), "{}", &refused[..refused.len().min(200)]);
    assert_eq!(reply(last).await, ok("last"));
    assert!(!rig.failed.load(Ordering::Acquire), "the writer was not stopped");
    let payloads = rig.stream.journal.payloads();
    assert_eq!(payloads.len(), 3, "the big write in two parts, then one entry for the small ones");
    assert!(payloads.iter().all(|p| p.len() <= journal_service::quorum::MAX_ENTRY_BODY));
    assert_eq!(rig.applied(), ["big", "after", "last"]);
    // From the journal alone, onto an empty primary: the parts make the one write again.
    let (mut applier, redis) = replayer(&rig.stream.journal);
    applier.catch_up(3).await;
    assert_eq!(redis.lock().unwrap().applied, ["big", "after", "last"]);
    assert_eq!(applier.applied, 3);
}

#[tokio::test(start_paused = true)]
async fn parts_of_a_write_never_finished_are_not_replayed() {
    // The proxy stopped between the parts of a write: the first one committed, then the next
    // proxy's writes. The unfinished write was never acknowledged and must not appear.
    let payload = Request::from_args(&[b"SET".as_slice(), b"unfinished", &vec![b'x'; MAX_WRITE_BYTES + 1]]).raw;
    let first_part = crate::sequencer::parts::split(payload).remove(0);
    let journal = FakeJournal::default();
    for (lsn, payload) in [(1, set("j1")), (2, first_part), (3, set("j3"))] {
        journal.0.lock().unwrap().push(journal_service::quorum::CommittedEntry { lsn, timestamp_ms: 0, payload });
    }
    let (mut applier, redis) = replayer(&journal);
    applier.catch_up(3).await;
    assert_eq!(redis.lock().unwrap().applied, ["j1", "j3"]);
    // Caught up to the unfinished part only, the primary holds the entry before it.
    let (mut applier, redis) = replayer(&journal);
    applier.catch_up(2).await;
    assert_eq!(redis.lock().unwrap().applied, ["j1"]);
    assert_eq!(applier.applied, 1);
}

#[tokio::test(start_paused = true)]
async fn writes_that_together_outgrow_an_entry_go_into_two() {
    let mut rig = Rig::new(StreamScript::default()).await;
    let half = MAX_WRITE_BYTES / 2 + 1;
    let (first, second) = (big_write(&rig, "first", half), big_write(&rig, "second", half));
    rig.run();
    assert_eq!(reply(first).await, ok("first"));
    assert_eq!(reply(second).await, ok("second"));
    let sizes: Vec<usize> = rig.stream.journal.payloads().iter().map(Bytes::len).collect();
    assert_eq!(sizes.len(), 2, "two entries: {sizes:?}");
    assert!(sizes.iter().all(|&len| len <= MAX_WRITE_BYTES), "{sizes:?}");
    assert_eq!(rig.applied(), ["first", "second"]);
}

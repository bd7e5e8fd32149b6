//! The applier's retry and unknown-outcome paths, driven directly against a scripted primary
//! and an in-memory journal (the seams of `sequencer/seams.rs`). Each test checks what a client
//! hears and what the primary ends up holding: every committed batch applied exactly once, in
//! LSN order.

use std::sync::Mutex;

use tokio::sync::oneshot::error::TryRecvError;

use super::super::fakes::{reply, set, FakeJournal, FakePrimary, FakeRedis, Fault};
use super::*;
use crate::backend::ReplyResult;

/// An applier over a fake primary and a journal holding entries `1..=journaled`, each one SET
/// tagged `j<lsn>`; the primary holds the first `held` of them.
struct Rig {
    inbox: mpsc::Sender<ToApplier>,
    redis: Arc<Mutex<FakeRedis>>,
    failed: Arc<AtomicBool>,
    health: Arc<ApplyHealth>,
    permits: Arc<Semaphore>,
}

const REPLY_WAIT: Duration = Duration::from_secs(2);

impl Rig {
    fn start(journaled: u64, held: u64) -> Rig {
        Rig::start_with_aborted(journaled, held, &[])
    }

    /// As `start`, with the entries `aborted` recorded as aborted (`MEMLOG ABORT`).
    fn start_with_aborted(journaled: u64, held: u64, aborted: &[u64]) -> Rig {
        let redis =
            FakeRedis { lsn: held, applied: (1..=held).map(|lsn| format!("j{lsn}")).collect(), ..FakeRedis::default() };
        let redis = Arc::new(Mutex::new(redis));
        let health = Arc::new(ApplyHealth::default());
        let applier = Applier {
            shard: 0,
            run_as: crate::sequencer::run_as::RunAs::new(None),
            apply: FakePrimary(redis.clone()),
            reader: Some(Arc::new(FakeJournal::with_entries(journaled))),
            snapshots: None,
            applied: held,
            health: health.clone(),
            reply_wait: REPLY_WAIT,
            aborts: Aborts::new(None, aborted.iter().copied().collect()).0,
        };
        let (inbox, rx) = mpsc::channel(APPLIER_CAPACITY);
        let failed = Arc::new(AtomicBool::new(false));
        tokio::spawn(applier.run(rx, failed.clone()));
        Rig { inbox, redis, failed, health, permits: Arc::new(Semaphore::new(16)) }
    }

    fn fail_next(&self, faults: &[Fault]) {
        self.redis.lock().unwrap().faults.extend(faults.iter().cloned());
    }

    /// Hands the applier a batch of SETs tagged `tags`, committed (or not) as `append` says;
    /// returns each client's reply receiver.
    async fn batch(&self, append: Result<u64, WriteError>, tags: &[&str]) -> Vec<oneshot::Receiver<ReplyResult>> {
        let permit = self.permits.clone().acquire_owned().await.unwrap();
        let mut receivers = Vec::new();
        let items = tags
            .iter()
            .map(|tag| {
                let (reply, rx) = oneshot::channel();
                receivers.push(rx);
                Item { command: set(tag), reply, reply_override: None, silent: false }
            })
            .collect();
        let append: AppendFuture = Box::pin(async move { append });
        self.inbox.send(ToApplier::Batch { append: Some((append, permit)), proto: Proto::Resp2, items }).await.unwrap();
        receivers
    }

    fn applied(&self) -> (u64, Vec<String>) {
        let redis = self.redis.lock().unwrap();
        (redis.lsn, redis.applied.clone())
    }
}

fn tags(range: std::ops::RangeInclusive<u64>, extra: &[&str]) -> Vec<String> {
    range.map(|lsn| format!("j{lsn}")).chain(extra.iter().map(|t| t.to_string())).collect()
}

#[tokio::test(start_paused = true)]
async fn committed_batches_are_applied_in_order_and_each_client_gets_its_own_reply() {
    let rig = Rig::start(2, 2);
    let first = rig.batch(Ok(3), &["a", "b"]).await;
    let second = rig.batch(Ok(4), &["c"]).await;
    let mut heard = Vec::new();
    for rx in first.into_iter().chain(second) {
        heard.push(reply(rx).await);
    }
    assert_eq!(heard, ["$1\r\na\r\n", "$1\r\nb\r\n", "$1\r\nc\r\n"]);
    assert_eq!(rig.applied(), (4, tags(1..=2, &["a", "b", "c"])));
    assert!(!rig.health.is_failing());
}

#[tokio::test(start_paused = true)]
async fn a_batch_redis_never_received_is_applied_once_after_the_connection_returns() {
    let rig = Rig::start(1, 1);
    rig.fail_next(&[Fault::Unreachable, Fault::Unreachable]);
    let replies = rig.batch(Ok(2), &["a"]).await;
    for rx in replies {
        assert_eq!(reply(rx).await, "$1\r\na\r\n", "the client hears Redis's real reply after the pause");
    }
    assert_eq!(rig.applied(), (2, tags(1..=1, &["a"])));
}

#[tokio::test(start_paused = true)]
async fn a_batch_applied_whose_replies_were_lost_is_not_applied_again() {
    let rig = Rig::start(1, 1);
    rig.fail_next(&[Fault::LostAfterApply]);
    let replies = rig.batch(Ok(2), &["a", "b"]).await;
    for rx in replies {
        let heard = reply(rx).await;
        assert!(heard.contains("was applied, but Redis's reply was lost"), "{heard}");
    }
    let next = rig.batch(Ok(3), &["c"]).await;
    for rx in next {
        assert_eq!(reply(rx).await, "$1\r\nc\r\n");
    }
    assert_eq!(rig.applied(), (3, tags(1..=1, &["a", "b", "c"])), "a and b applied exactly once");
}

#[tokio::test(start_paused = true)]
async fn an_error_answer_to_the_lsn_check_is_not_taken_for_an_empty_primary() {
    // The batch was applied, its replies lost, and the node then answers the check with an
    // error for a while. Read as LSN 0 this sent the applier to catch up to the entry before the
    // batch, which a primary holding the batch can never satisfy: the shard stopped for good.
    let rig = Rig::start(1, 1);
    rig.fail_next(&[
        Fault::LostAfterApply,
        Fault::CheckAnswers("LOADING Redis is loading the dataset in memory"),
        Fault::CheckAnswers("LOADING Redis is loading the dataset in memory"),
    ]);
    let replies = rig.batch(Ok(2), &["a"]).await;
    let heard = reply(replies.into_iter().next().unwrap()).await;
    assert!(heard.contains("was applied, but Redis's reply was lost"), "{heard}");
    assert_eq!(rig.applied(), (2, tags(1..=1, &["a"])));
    let calls = rig.redis.lock().unwrap().calls;
    assert!(calls < 20, "a refusing node is asked again after a pause, not in a tight loop ({calls} calls)");
}

#[tokio::test(start_paused = true)]
async fn a_primary_restarted_empty_is_rebuilt_from_the_journal_before_the_batch() {
    let rig = Rig::start(3, 3);
    rig.fail_next(&[Fault::RestartedEmpty]);
    let replies = rig.batch(Ok(4), &["a"]).await;
    for rx in replies {
        assert_eq!(reply(rx).await, "$1\r\na\r\n");
    }
    assert_eq!(rig.applied(), (4, tags(1..=3, &["a"])), "entries 1-3 replayed, then the batch, once each");
}

#[tokio::test(start_paused = true)]
async fn clients_waiting_past_reply_wait_hear_committed_and_the_batch_is_applied_later() {
    let rig = Rig::start(1, 1);
    // Unreachable for longer than REPLY_WAIT (back-off grows to 500 ms).
    rig.fail_next(&vec![Fault::Unreachable; 12]);
    let mut replies = rig.batch(Ok(2), &["a"]).await;
    let heard = reply(replies.remove(0)).await;
    assert!(
        heard.starts_with("-ERR memlog: the write is committed in the journal but Redis cannot apply it yet"),
        "{heard}"
    );
    assert!(rig.health.is_failing(), "new writes are held while the primary cannot apply");
    // The applier keeps trying: once the node answers, the committed batch is applied.
    let later = rig.batch(Ok(3), &["b"]).await;
    for rx in later {
        assert_eq!(reply(rx).await, "$1\r\nb\r\n");
    }
    assert_eq!(rig.applied(), (3, tags(1..=1, &["a", "b"])));
    assert!(!rig.health.is_failing());
}

#[tokio::test(start_paused = true)]
async fn a_failed_append_is_never_applied_and_stops_the_writer() {
    let rig = Rig::start(1, 1);
    let no_quorum = WriteError::NoQuorum { acked: 0, needed: 2, errors: Vec::new() };
    let mut replies = rig.batch(Err(no_quorum), &["a"]).await;
    let heard = reply(replies.remove(0)).await;
    assert!(heard.starts_with("-TRYAGAIN memlog: the journal has no quorum"), "{heard}");
    let unknown = WriteError::OutcomeUnknown { lsn: 2, reason: "node lost".into() };
    let mut replies = rig.batch(Err(unknown), &["b"]).await;
    let heard = reply(replies.remove(0)).await;
    assert!(heard.starts_with("-ERR memlog: the journal append's outcome is unknown"), "{heard}");
    assert!(rig.failed.load(Ordering::Acquire), "the journaler must replace the writer");
    assert_eq!(rig.applied(), (1, tags(1..=1, &[])), "nothing of a failed append reaches Redis");
}

#[tokio::test(start_paused = true)]
async fn a_batch_waits_for_its_append_and_nothing_is_answered_before_commit() {
    let rig = Rig::start(0, 0);
    let (commit, committed) = oneshot::channel::<u64>();
    let permit = rig.permits.clone().acquire_owned().await.unwrap();
    let (reply_tx, mut reply_rx) = oneshot::channel();
    let append: AppendFuture = Box::pin(async move { Ok(committed.await.expect("committed")) });
    let item = Item { command: set("a"), reply: reply_tx, reply_override: None, silent: false };
    rig.inbox
        .send(ToApplier::Batch { append: Some((append, permit)), proto: Proto::Resp2, items: vec![item] })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(matches!(reply_rx.try_recv(), Err(TryRecvError::Empty)), "I2: no reply before the commit");
    assert_eq!(rig.applied(), (0, Vec::new()), "I1: Redis holds nothing the journal has not committed");
    commit.send(1).unwrap();
    assert_eq!(reply(reply_rx).await, "$1\r\na\r\n");
    assert_eq!(rig.applied(), (1, vec!["a".to_string()]));
}

#[tokio::test(start_paused = true)]
async fn aborted_entries_are_never_applied_and_their_clients_are_told() {
    let rig = Rig::start_with_aborted(4, 1, &[2, 4]);
    let (done, caught_up) = oneshot::channel();
    rig.inbox.send(ToApplier::CatchUp { lsn: 3, done }).await.unwrap();
    caught_up.await.unwrap();
    assert_eq!(rig.applied(), (3, tags(1..=1, &["j3"])), "entry 2 skipped, the node's position moved past it");
    let replies = rig.batch(Ok(4), &["a", "b"]).await;
    for rx in replies {
        let heard = reply(rx).await;
        assert!(heard.starts_with("-ERR memlog: this write was aborted by an operator (MEMLOG ABORT 0 4"), "{heard}");
    }
    // Clients are told first; the applier's next message waits for the node to move past it.
    let (done, caught_up) = oneshot::channel();
    rig.inbox.send(ToApplier::CatchUp { lsn: 4, done }).await.unwrap();
    caught_up.await.unwrap();
    assert_eq!(rig.applied(), (4, tags(1..=1, &["j3"])), "the aborted batch was not applied");
    assert!(!rig.health.is_failing());
}

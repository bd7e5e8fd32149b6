//! Scripted stand-ins for what the journaler and the applier drive (`seams.rs`): a Redis
//! primary reduced to MULTI/EXEC and `__memlog:lsn`, and an in-memory journal stream whose
//! writer commits (or fails) as a test says.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use journal_service::quorum::{CommittedEntry, ReadError, WriteError};

use super::seams::{CommittedJournal, JournalStream, Primary, StreamWriter};
use super::AppendFuture;
use crate::backend::{BackendError, BatchResult, ReplyResult, ReplySender};
use crate::resp::{encode_command, Proto, RequestParser};

/// How the fake primary fails the next batch sent to it.
#[derive(Debug, Clone)]
pub(super) enum Fault {
    /// The connection fails before Redis reads the batch: nothing applied.
    Unreachable,
    /// Redis applies the batch, then the connection drops before the replies arrive.
    LostAfterApply,
    /// Redis restarted empty: everything it held is gone, and so is the connection.
    RestartedEmpty,
    /// The next `GET __memlog:lsn` is answered with this error (a node still loading…).
    CheckAnswers(&'static str),
}

/// A Redis primary as the applier sees it, reduced to what it does with the applier's batches:
/// MULTI/EXEC, `__memlog:lsn`, and the unchecked state of a connection that just (re)opened.
#[derive(Default)]
pub(super) struct FakeRedis {
    pub(super) lsn: u64,
    /// Client commands applied, each as its first argument, in order.
    pub(super) applied: Vec<String>,
    pub(super) faults: VecDeque<Fault>,
    /// The connection was checked (its `GET __memlog:lsn` answered) since it (re)opened.
    pub(super) checked: bool,
    /// Batches sent to it, checks included.
    pub(super) calls: usize,
}

impl FakeRedis {
    /// Runs a batch; `is_check`: it is the LSN check, which (as on a real apply connection)
    /// is recognized only when sent on its own, not inside a batch.
    pub(super) fn call(&mut self, requests: &Bytes, count: usize, is_check: bool) -> BatchResult {
        self.calls += 1;
        let addr = || "fake:6379".to_string();
        let commands = parse(requests);
        assert_eq!(commands.len(), count, "the applier counts the commands it sends");
        if is_check {
            if let Some(Fault::CheckAnswers(error)) = self.faults.front() {
                let reply = Bytes::from(format!("-{error}\r\n"));
                self.faults.pop_front();
                return Ok(vec![reply]);
            }
            self.checked = true;
            let lsn = self.lsn.to_string();
            return Ok(vec![if self.lsn == 0 {
                Bytes::from_static(b"$-1\r\n")
            } else {
                Bytes::from(format!("${}\r\n{lsn}\r\n", lsn.len()))
            }]);
        }
        match self.faults.front() {
            Some(Fault::Unreachable) => {
                self.faults.pop_front();
                self.checked = false;
                return Err(BackendError::Unreachable { addr: addr(), reason: "refused".into() });
            }
            Some(Fault::RestartedEmpty) => {
                self.faults.pop_front();
                *self =
                    FakeRedis { faults: std::mem::take(&mut self.faults), calls: self.calls, ..FakeRedis::default() };
                return Err(BackendError::Lost { addr: addr() });
            }
            _ => {}
        }
        if !self.checked {
            return Err(BackendError::Unverified { addr: addr() });
        }
        let replies = self.execute(commands);
        if let Some(Fault::LostAfterApply) = self.faults.front() {
            self.faults.pop_front();
            self.checked = false;
            return Err(BackendError::Lost { addr: addr() });
        }
        Ok(replies)
    }

    /// Runs commands as Redis would: a MULTI block applies at EXEC, each command answering
    /// its first argument (so a test sees whose reply reached whom).
    fn execute(&mut self, commands: Vec<Vec<String>>) -> Vec<Bytes> {
        let mut replies = Vec::new();
        let mut queued: Option<Vec<Vec<String>>> = None;
        for command in commands {
            match (command[0].as_str(), &mut queued) {
                ("MULTI", None) => {
                    queued = Some(Vec::new());
                    replies.push(Bytes::from_static(b"+OK\r\n"));
                }
                ("EXEC", Some(_)) => {
                    let block = queued.take().unwrap_or_default();
                    let mut exec = format!("*{}\r\n", block.len()).into_bytes();
                    for command in block {
                        exec.extend_from_slice(&self.run(&command));
                    }
                    replies.push(Bytes::from(exec));
                }
                (_, Some(block)) => {
                    block.push(command);
                    replies.push(Bytes::from_static(b"+QUEUED\r\n"));
                }
                (_, None) => replies.push(self.run(&command)),
            }
        }
        replies
    }

    fn run(&mut self, command: &[String]) -> Bytes {
        if command.len() == 3 && command[0] == "SET" && command[1] == "__memlog:lsn" {
            self.lsn = command[2].parse().expect("an LSN");
            return Bytes::from_static(b"+OK\r\n");
        }
        let tag = command.get(1).cloned().unwrap_or_default();
        self.applied.push(tag.clone());
        Bytes::from(format!("${}\r\n{tag}\r\n", tag.len()))
    }
}

fn parse(requests: &Bytes) -> Vec<Vec<String>> {
    let mut buf = BytesMut::from(&requests[..]);
    let mut parser = RequestParser::default();
    let limits = crate::resp::Limits { max_bulk_len: 1 << 27, max_args: 1 << 10 };
    let mut commands = Vec::new();
    while let Some(request) = parser.next(&mut buf, limits).expect("the applier sends valid RESP") {
        commands.push(request.args.iter().map(|a| String::from_utf8_lossy(a).into_owned()).collect());
    }
    commands
}

pub(super) struct FakePrimary(pub(super) Arc<Mutex<FakeRedis>>);

impl Primary for FakePrimary {
    async fn call_batch(&mut self, _proto: Proto, requests: Bytes, count: usize) -> BatchResult {
        // Yield like a network round trip, so other tasks (and paused time) move on.
        tokio::task::yield_now().await;
        self.0.lock().unwrap().call(&requests, count, false)
    }

    async fn lsn_check(&mut self) -> ReplyResult {
        tokio::task::yield_now().await;
        let check = encode_command(&["GET", "__memlog:lsn"]);
        self.0.lock().unwrap().call(&check, 1, true).map(|mut replies| replies.remove(0))
    }

    async fn forward(&mut self, proto: Proto, command: Bytes, reply: ReplySender) {
        let _ = reply.send(self.call_batch(proto, command, 1).await.map(|mut r| r.remove(0)));
    }

    fn addr(&self) -> String {
        "fake:6379".into()
    }

    async fn shut_down(&mut self) -> Result<(), String> {
        Err("the fake primary is never shut down".into())
    }

    async fn lsn_of(&self, node: &str) -> Result<u64, String> {
        Err(format!("the fake shard has no node {node}"))
    }
}

/// The committed entries of a stream, shared by its fake writer and its readers.
#[derive(Clone, Default)]
pub(super) struct FakeJournal(pub(super) Arc<Mutex<Vec<CommittedEntry>>>);

impl FakeJournal {
    /// A journal holding entries `1..=count`, each one `SET j<lsn> v`.
    pub(super) fn with_entries(count: u64) -> FakeJournal {
        let entries = (1..=count).map(|lsn| CommittedEntry { lsn, timestamp_ms: 0, payload: set(&format!("j{lsn}")) });
        FakeJournal(Arc::new(Mutex::new(entries.collect())))
    }

    pub(super) fn payloads(&self) -> Vec<Bytes> {
        self.0.lock().unwrap().iter().map(|e| e.payload.clone()).collect()
    }
}

impl CommittedJournal for FakeJournal {
    async fn read(&self, from: u64, to: u64) -> Result<Vec<CommittedEntry>, ReadError> {
        Ok(self.0.lock().unwrap().iter().filter(|e| (from..=to).contains(&e.lsn)).cloned().collect())
    }
}

/// What the fake stream does next.
#[derive(Default)]
pub(super) struct StreamScript {
    /// Recoveries that fail (no quorum) before one succeeds; `u32::MAX`: never succeeds.
    pub(super) failing_recoveries: u32,
    /// Appends that fail (no node took them): the writer stops, as the quorum writer does.
    pub(super) failing_appends: u32,
    /// Held appends wait for a permit before they commit.
    pub(super) gate: Option<Arc<tokio::sync::Semaphore>>,
    pub(super) in_flight: usize,
    pub(super) most_in_flight: usize,
    /// The epoch each committed entry was written under.
    pub(super) epochs: Vec<u64>,
    pub(super) epoch: u64,
}

/// A journal stream in memory: recoveries claim epochs, appends commit into a [`FakeJournal`].
#[derive(Clone, Default)]
pub(super) struct FakeStream {
    pub(super) journal: FakeJournal,
    pub(super) script: Arc<Mutex<StreamScript>>,
}

pub(super) struct FakeWriter {
    stream: FakeStream,
    epoch: u64,
    stopped: Arc<std::sync::atomic::AtomicBool>,
}

impl JournalStream for FakeStream {
    type Writer = FakeWriter;

    async fn recover(&self) -> Result<FakeWriter, WriteError> {
        tokio::task::yield_now().await;
        let mut script = self.script.lock().unwrap();
        if script.failing_recoveries > 0 {
            if script.failing_recoveries != u32::MAX {
                script.failing_recoveries -= 1;
            }
            return Err(WriteError::NoQuorum { acked: 0, needed: 2, errors: Vec::new() });
        }
        script.epoch += 1;
        Ok(FakeWriter { stream: self.clone(), epoch: script.epoch, stopped: Default::default() })
    }
}

impl StreamWriter for FakeWriter {
    fn append(&self, payload: Bytes) -> AppendFuture {
        use std::sync::atomic::Ordering;
        let (stream, epoch) = (self.stream.clone(), self.epoch);
        // Sent at once, as the quorum writer sends an entry when it is appended, not when its
        // future is first polled.
        let max = journal_service::quorum::MAX_ENTRY_BODY;
        if payload.len() > max {
            return Box::pin(async move { Err(WriteError::TooLarge { len: payload.len(), max }) });
        }
        let gate = {
            let mut script = stream.script.lock().unwrap();
            if self.stopped.load(Ordering::Acquire) {
                let stopped = WriteError::Stopped { reason: "an earlier append failed".into() };
                return Box::pin(async move { Err(stopped) });
            }
            if script.failing_appends > 0 {
                script.failing_appends -= 1;
                self.stopped.store(true, Ordering::Release);
                return Box::pin(async move { Err(WriteError::NoQuorum { acked: 0, needed: 2, errors: Vec::new() }) });
            }
            script.in_flight += 1;
            script.most_in_flight = script.most_in_flight.max(script.in_flight);
            script.gate.clone()
        };
        Box::pin(async move {
            if let Some(gate) = gate {
                gate.acquire().await.expect("the gate stays open").forget();
            }
            let mut script = stream.script.lock().unwrap();
            script.in_flight -= 1;
            script.epochs.push(epoch);
            let mut entries = stream.journal.0.lock().unwrap();
            let lsn = entries.len() as u64 + 1;
            entries.push(CommittedEntry { lsn, timestamp_ms: 0, payload });
            Ok(lsn)
        })
    }

    fn commit_lsn(&self) -> u64 {
        self.stream.journal.0.lock().unwrap().len() as u64
    }

    fn epoch(&self) -> u64 {
        self.epoch
    }

    fn live_nodes(&self) -> usize {
        3
    }
}

pub(super) fn set(tag: &str) -> Bytes {
    encode_command(&["SET", tag, "v"])
}

/// A client's reply, within a minute of (paused) time: a stuck journaler or applier fails the
/// test instead of hanging it.
pub(super) async fn reply(rx: tokio::sync::oneshot::Receiver<crate::backend::ReplyResult>) -> String {
    let reply = tokio::time::timeout(std::time::Duration::from_secs(60), rx)
        .await
        .expect("an answer within a minute")
        .expect("every client is answered")
        .expect("a reply, not a connection error");
    String::from_utf8_lossy(&reply).into_owned()
}

//! One pipelined connection to a Redis node, shared by many sessions, and its task.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};

use super::setup::{connect, node_lsn};
use super::target::{NodeTarget, Role, TargetState};
use super::{BackendError, BackendOptions, BatchResult, BatchSender, NodeStream, ReplyResult, ReplySender};
use crate::resp::{encode_command, error_reply, BadFrame, FrameScanner, Proto};

enum ConnOp {
    Send(Bytes, ReplyTo),
    /// Several commands in one buffer; all `count` replies come back together.
    Batch(Bytes, usize, BatchSender),
    /// Fires once every reply to requests sent before it has arrived.
    Barrier(oneshot::Sender<()>),
}

/// An op waiting for a usable connection, and when it gives up.
struct WaitingOp {
    op: ConnOp,
    deadline: Instant,
}

enum Waiter {
    /// A reply awaited; the request and its deadline are kept when it may be sent again.
    Reply(ReplyTo, Instant, Option<(Bytes, Instant)>),
    /// The reply to `GET __memlog:lsn` on an apply connection: once it reads as an LSN, the
    /// node's journal prefix is known and batches may go out on this connection.
    LsnCheck(ReplyTo, Instant),
    Batch {
        replies: Vec<Bytes>,
        count: usize,
        reply: BatchSender,
        sent: Instant,
    },
    Barrier(oneshot::Sender<()>),
}

/// Where one request's reply goes, with the room the request takes in its connection's queue
/// (see [`BackendConn::send_when_room`]), freed once the reply is handed on.
struct ReplyTo {
    sender: ReplySender,
    _room: Option<OwnedSemaphorePermit>,
}

impl ReplyTo {
    fn send(self, reply: ReplyResult) -> Result<(), ReplyResult> {
        self.sender.send(reply)
    }
}

/// Client requests one connection holds, waiting or sent and not yet answered, before clients'
/// sessions wait to queue more (and stop reading their clients). Each client's own pipeline is
/// bounded too (the session's pending replies), but many clients share a connection; this bound
/// is the connection's, so a node that stops answering, or a hold during a failover, costs at
/// most this many requests per connection.
const QUEUE_LIMIT: usize = 16 * 1024;

/// A handle to one pipelined connection; clones share the connection.
#[derive(Clone)]
pub(crate) struct BackendConn {
    ops: mpsc::UnboundedSender<ConnOp>,
    target: Arc<NodeTarget>,
    /// Connections opened so far: a change means the node may have restarted since.
    connects: Arc<AtomicU64>,
    /// Room for client requests (`QUEUE_LIMIT`).
    room: Arc<Semaphore>,
}

impl BackendConn {
    /// A connection to the fixed node `addr`.
    pub(crate) fn spawn(addr: &str, proto: Proto, opts: BackendOptions) -> BackendConn {
        BackendConn::follow(NodeTarget::fixed(addr), Role::Direct, proto, opts)
    }

    /// A connection that follows `target` wherever the failover controller points it.
    pub(crate) fn follow(target: Arc<NodeTarget>, role: Role, proto: Proto, opts: BackendOptions) -> BackendConn {
        BackendConn::follow_with_room(target, role, proto, opts, QUEUE_LIMIT)
    }

    fn follow_with_room(
        target: Arc<NodeTarget>,
        role: Role,
        proto: Proto,
        opts: BackendOptions,
        queue_limit: usize,
    ) -> BackendConn {
        let (ops, rx) = mpsc::unbounded_channel();
        let connects = Arc::new(AtomicU64::new(0));
        let conn =
            Conn { target: target.clone(), role, proto, opts, waiting: VecDeque::new(), connects: connects.clone() };
        tokio::spawn(conn.drive(rx));
        BackendConn { ops, target, connects, room: Arc::new(Semaphore::new(queue_limit)) }
    }

    /// A connection that reaches no node: every request is answered `reply` (an error reply),
    /// as a refused shard's reads are.
    pub(crate) fn answering(addr: &str, reply: Bytes) -> BackendConn {
        let (ops, mut rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(op) = rx.recv().await {
                match op {
                    ConnOp::Send(_, to) => drop(to.send(Ok(reply.clone()))),
                    ConnOp::Batch(_, count, to) => drop(to.send(Ok(vec![reply.clone(); count]))),
                    ConnOp::Barrier(done) => drop(done.send(())),
                }
            }
        });
        let room = Arc::new(Semaphore::new(QUEUE_LIMIT));
        BackendConn { ops, target: NodeTarget::fixed(addr), connects: Arc::new(AtomicU64::new(0)), room }
    }

    /// How many times the connection was opened (each reconnect counts): whoever configured the
    /// node over it compares this to see whether it talks to the same node process still.
    pub(crate) fn connects(&self) -> u64 {
        self.connects.load(Ordering::Acquire)
    }

    /// The node this connection points at now.
    pub(crate) fn addr(&self) -> Arc<String> {
        self.target.addr()
    }

    fn lost(&self) -> BackendError {
        BackendError::Lost { addr: self.target.addr().to_string() }
    }

    /// Queues `request` (raw RESP bytes); its reply (or error) is sent to `reply`. For the
    /// proxy's own requests, one at a time per caller; a client's go through `send_when_room`.
    pub(crate) fn send_to(&self, request: Bytes, reply: ReplySender) {
        self.queue(request, ReplyTo { sender: reply, _room: None });
    }

    /// A client's request: queued once the connection has room for it (`QUEUE_LIMIT`), which
    /// it takes until its reply arrives.
    pub(crate) async fn send_when_room(&self, request: Bytes, reply: ReplySender) {
        let Ok(room) = Arc::clone(&self.room).acquire_owned().await else { return };
        self.queue(request, ReplyTo { sender: reply, _room: Some(room) });
    }

    fn queue(&self, request: Bytes, reply: ReplyTo) {
        if let Err(mpsc::error::SendError(ConnOp::Send(_, reply))) = self.ops.send(ConnOp::Send(request, reply)) {
            let _ = reply.send(Err(self.lost()));
        }
    }

    pub(crate) fn send(&self, request: Bytes) -> oneshot::Receiver<ReplyResult> {
        let (tx, rx) = oneshot::channel();
        self.send_to(request, tx);
        rx
    }

    /// Sends `count` commands encoded back to back in `requests` and waits for all their replies.
    pub(crate) async fn call_batch(&self, requests: Bytes, count: usize) -> BatchResult {
        let (tx, rx) = oneshot::channel();
        if let Err(mpsc::error::SendError(ConnOp::Batch(_, _, reply))) =
            self.ops.send(ConnOp::Batch(requests, count, tx))
        {
            let _ = reply.send(Err(self.lost()));
        }
        rx.await.unwrap_or_else(|_| Err(self.lost()))
    }

    /// Sends `args` as one command and waits for its reply.
    pub(crate) async fn call<A: AsRef<[u8]>>(&self, args: &[A]) -> ReplyResult {
        let rx = self.send(encode_command(args));
        rx.await.unwrap_or_else(|_| Err(self.lost()))
    }

    /// A client's request in database `db`, as `send_when_room`: run in the database
    /// (`databases::batch_in`: the connection is back in database 0 right after it), holding its
    /// room until the reply arrives. Database 0 is a plain `send_when_room`.
    pub(crate) async fn send_when_room_in_db(&self, db: u8, request: Bytes, reply: ReplySender) {
        if db == 0 {
            return self.send_when_room(request, reply).await;
        }
        let Ok(room) = Arc::clone(&self.room).acquire_owned().await else { return };
        let conn = self.clone();
        tokio::spawn(async move {
            let _ = reply.send(conn.call_in_db(db, request).await);
            drop(room);
        });
    }

    /// Runs `request` in database `db` and waits for its reply.
    pub(crate) async fn call_in_db(&self, db: u8, request: Bytes) -> ReplyResult {
        if db == 0 {
            return self.send(request).await.unwrap_or_else(|_| Err(self.lost()));
        }
        let (batch, added) = crate::databases::batch_in(db, request);
        let replies = self.call_batch(batch, 1 + added).await?;
        Ok(crate::databases::batch_replies(db, replies).pop().unwrap_or_default())
    }

    /// Resolves once every reply to requests queued before it has arrived (or failed).
    pub(crate) fn barrier(&self) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        let _ = self.ops.send(ConnOp::Barrier(tx));
        rx
    }
}

/// What woke a connection that is waiting to send.
enum Wake {
    /// Every handle is gone: the connection ends.
    Closed,
    /// The target moved or a hold changed.
    Target,
    /// The caller's timer fired.
    Timer,
    /// An op arrived or one expired: nothing changed for the caller.
    Ops,
}

/// The connection task's state.
struct Conn {
    target: Arc<NodeTarget>,
    role: Role,
    proto: Proto,
    opts: BackendOptions,
    /// Ops waiting for a connection the role may send on, oldest first.
    waiting: VecDeque<WaitingOp>,
    connects: Arc<AtomicU64>,
}

impl Conn {
    /// The connection's life: wait while held, connect, serve until the connection breaks or
    /// the target moves, back off while the node is unreachable, repeat.
    async fn drive(mut self, mut ops: mpsc::UnboundedReceiver<ConnOp>) {
        let mut state = self.target.state.subscribe();
        let mut backoff = Duration::from_millis(10);
        let mut last_error = String::new();
        loop {
            if self.target.current().held(self.role) {
                if let Wake::Closed = self.park(&mut ops, &mut state, None, &last_error).await {
                    return;
                }
                continue;
            }
            let generation = self.target.current().generation;
            let addr = self.target.addr();
            match self.open(&addr).await {
                Ok(stream) if self.target.current().generation == generation => {
                    backoff = Duration::from_millis(10);
                    self.connects.fetch_add(1, Ordering::AcqRel);
                    if self.role == Role::Apply {
                        self.target.apply_checked.store(false, Ordering::Release);
                    }
                    tracing::debug!(node = %addr, "connected to Redis node");
                    if self.serve(&addr, generation, stream, &mut ops, &mut state).await.is_none() {
                        return;
                    }
                    if self.target.current().generation == generation {
                        metrics::counter!("memlog_backend_errors_total", "node" => addr.to_string()).increment(1);
                        tracing::warn!(node = %addr, "connection to Redis node lost; reconnecting");
                    }
                }
                // Retargeted while connecting: connect to the new node instead.
                Ok(_) => {}
                Err(Unusable::CatchingUp(reason)) => {
                    // The applier is filling the node from the journal: look again soon.
                    tracing::debug!(node = %addr, %reason, "Redis node not caught up yet");
                    last_error = reason;
                    if self.pause(&mut ops, &mut state, Duration::from_millis(10), &last_error).await.is_none() {
                        return;
                    }
                }
                Err(Unusable::Unreachable(reason)) => {
                    metrics::counter!("memlog_backend_errors_total", "node" => addr.to_string()).increment(1);
                    tracing::debug!(node = %addr, %reason, "cannot connect to Redis node");
                    last_error = reason;
                    match self.pause(&mut ops, &mut state, backoff, &last_error).await {
                        None => return,
                        // A failover moved or released the target: try it at once.
                        Some(Wake::Target) => backoff = Duration::from_millis(5),
                        Some(_) => backoff = (backoff * 2).min(Duration::from_secs(1)),
                    }
                }
            }
        }
    }

    /// Connects to `addr`. A read connection then checks that the node holds at least the
    /// journal prefix the primary was last seen with: a primary that restarted empty, or a new
    /// one, serves no read before the applier has caught it up.
    async fn open(&self, addr: &str) -> Result<NodeStream, Unusable> {
        let stream = connect(addr, self.proto, &self.opts).await.map_err(Unusable::Unreachable)?;
        let floor = self.target.lsn_floor.load(Ordering::Acquire);
        if self.role == Role::Read && floor > 0 {
            let (stream, held) = node_lsn(stream, addr, &self.opts).await.map_err(Unusable::Unreachable)?;
            if held < floor {
                return Err(Unusable::CatchingUp(format!("it holds lsn {held}, the shard is at {floor}")));
            }
            return Ok(stream);
        }
        Ok(stream)
    }

    /// Waits `delay` before the next connection attempt, or less if the target changes
    /// (`Some(Wake::Target)`); meanwhile ops wait and expire. `None` once every handle is gone.
    async fn pause(
        &mut self,
        ops: &mut mpsc::UnboundedReceiver<ConnOp>,
        state: &mut watch::Receiver<TargetState>,
        delay: Duration,
        reason: &str,
    ) -> Option<Wake> {
        self.expire(Instant::now(), reason);
        let retry_at = tokio::time::sleep(delay);
        tokio::pin!(retry_at);
        loop {
            match self.park(ops, state, Some(retry_at.as_mut()), reason).await {
                Wake::Closed => return None,
                Wake::Ops => {}
                woke => return Some(woke),
            }
        }
    }

    /// Waits for one thing to happen while nothing can be sent: an op arrives (it waits, up to
    /// the hold time), a waiting op expires, the target changes, or `timer` fires.
    async fn park(
        &mut self,
        ops: &mut mpsc::UnboundedReceiver<ConnOp>,
        state: &mut watch::Receiver<TargetState>,
        timer: Option<std::pin::Pin<&mut tokio::time::Sleep>>,
        reason: &str,
    ) -> Wake {
        let next_expiry = self.waiting.front().map(|q| q.deadline);
        let expiry = async {
            match next_expiry {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        let timer = async {
            match timer {
                Some(timer) => timer.await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = state.changed() => match changed {
                Ok(()) => Wake::Target,
                Err(_) => Wake::Closed,
            },
            op = ops.recv() => match op {
                None => Wake::Closed,
                Some(op) => {
                    self.wait(op);
                    self.expire(Instant::now(), reason);
                    Wake::Ops
                }
            },
            _ = expiry => {
                self.expire(Instant::now(), reason);
                Wake::Ops
            }
            _ = timer => Wake::Timer,
        }
    }

    /// Queues `op` until it can be sent, for at most the hold time.
    fn wait(&mut self, op: ConnOp) {
        self.waiting.push_back(WaitingOp { op, deadline: Instant::now() + self.target.hold_for });
    }

    fn take_waiting(&mut self) -> Option<ConnOp> {
        self.waiting.pop_front().map(|queued| queued.op)
    }

    /// Fails the waiting ops whose hold time is over: `-TRYAGAIN` while the shard is failing
    /// over, "unreachable" otherwise. (Deadlines grow along the queue, except for reads put
    /// back after their connection dropped, which go first.)
    fn expire(&mut self, now: Instant, reason: &str) {
        while self.waiting.front().is_some_and(|q| q.deadline <= now) {
            let Some(op) = self.take_waiting() else { break };
            let held = self.target.is_held();
            let error = || {
                if held {
                    BackendError::FailingOver { shard: self.target.shard }
                } else {
                    BackendError::Unreachable { addr: self.target.addr().to_string(), reason: reason.to_string() }
                }
            };
            match op {
                // A client's request gets the Redis-style error a client library understands.
                ConnOp::Send(_, reply) if held => {
                    let msg = format!("TRYAGAIN memlog: shard {} is failing over", self.target.shard);
                    let _ = reply.send(Ok(error_reply(&msg)));
                }
                ConnOp::Send(_, reply) => {
                    let _ = reply.send(Err(error()));
                }
                ConnOp::Batch(_, _, reply) => {
                    let _ = reply.send(Err(error()));
                }
                ConnOp::Barrier(done) => {
                    let _ = done.send(());
                }
            }
        }
    }

    /// Pipelines requests onto `stream` until it breaks or the target moves; `None` once every
    /// handle is gone.
    async fn serve(
        &mut self,
        addr: &str,
        generation: u64,
        stream: NodeStream,
        ops: &mut mpsc::UnboundedReceiver<ConnOp>,
        state: &mut watch::Receiver<TargetState>,
    ) -> Option<()> {
        let (mut rd, mut wr) = tokio::io::split(stream);
        let inflight: Mutex<VecDeque<Waiter>> = Mutex::new(VecDeque::new());
        let request_timeout = self.opts.request_timeout;
        let (role, target) = (self.role, self.target.clone());
        let hold_for = target.hold_for;
        let lsn_check = encode_command(&[&b"GET"[..], crate::keys::LSN_KEY]);

        let writer = async {
            let mut out = BytesMut::with_capacity(16 * 1024);
            loop {
                let now = target.current();
                if now.generation != generation {
                    return Some(());
                }
                if now.held(role) {
                    if let Wake::Closed = self.park(ops, state, None, "held").await {
                        return None;
                    }
                    continue;
                }
                let first = match self.take_waiting() {
                    Some(op) => op,
                    // A hold or retarget that came with a request is seen first: the request then waits.
                    None => tokio::select! {
                        biased;
                        changed = state.changed() => {
                            if changed.is_err() {
                                return None;
                            }
                            continue;
                        }
                        op = ops.recv() => op?,
                    },
                };
                out.clear();
                let mut waiters = Vec::new();
                // One clock read for the whole batch, which goes out in one write: at pipeline
                // 16 a read per op was most of the proxy's `clock_gettime` time.
                let sent = Instant::now();
                let mut next = Some(first);
                while let Some(op) = next {
                    match op {
                        ConnOp::Send(bytes, reply) if role == Role::Apply && bytes == lsn_check => {
                            out.extend_from_slice(&bytes);
                            waiters.push(Waiter::LsnCheck(reply, sent));
                        }
                        ConnOp::Send(bytes, reply) => {
                            out.extend_from_slice(&bytes);
                            let retry = (role == Role::Read).then(|| (bytes, sent + hold_for));
                            waiters.push(Waiter::Reply(reply, sent, retry));
                        }
                        ConnOp::Batch(_, _, reply)
                            if role == Role::Apply && !target.apply_checked.load(Ordering::Acquire) =>
                        {
                            let _ = reply.send(Err(BackendError::Unverified { addr: addr.to_string() }));
                        }
                        ConnOp::Batch(bytes, count, reply) => {
                            if role == Role::Apply {
                                target.applies_in_flight.fetch_add(1, Ordering::AcqRel);
                            }
                            out.extend_from_slice(&bytes);
                            let replies = Vec::with_capacity(count);
                            waiters.push(Waiter::Batch { replies, count, reply, sent });
                        }
                        ConnOp::Barrier(done) => waiters.push(Waiter::Barrier(done)),
                    }
                    next =
                        if out.len() < 256 * 1024 { self.take_waiting().or_else(|| ops.try_recv().ok()) } else { None };
                }
                {
                    let mut queue = inflight.lock().unwrap();
                    for waiter in waiters {
                        match waiter {
                            Waiter::Barrier(done) if queue.is_empty() => {
                                let _ = done.send(());
                            }
                            waiter => queue.push_back(waiter),
                        }
                    }
                }
                // Flushed, or a TLS stream may keep the batch's last records until the next one
                // (`admin::AdminConn::send_raw`).
                if !out.is_empty() && (wr.write_all(&out).await.is_err() || wr.flush().await.is_err()) {
                    return Some(());
                }
            }
        };

        let reader = async {
            let mut buf = BytesMut::with_capacity(64 * 1024);
            let mut scanner = FrameScanner::default();
            loop {
                if buf.capacity() - buf.len() < 16 * 1024 {
                    buf.reserve(64 * 1024);
                }
                match tokio::time::timeout(request_timeout, rd.read_buf(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => return ReaderEnd::Lost,
                    Ok(Ok(_)) => {}
                    Err(_) => {
                        let queue = inflight.lock().unwrap();
                        if let Some(
                            Waiter::Reply(_, sent, _) | Waiter::LsnCheck(_, sent) | Waiter::Batch { sent, .. },
                        ) = queue.front()
                        {
                            if sent.elapsed() >= request_timeout {
                                return ReaderEnd::TimedOut;
                            }
                        }
                        continue;
                    }
                }
                let mut queue = inflight.lock().unwrap();
                loop {
                    let len = match scanner.scan(&buf) {
                        Ok(Some(len)) => len,
                        Ok(None) => break,
                        Err(BadFrame) => return ReaderEnd::BadReply,
                    };
                    let frame = buf.split_to(len).freeze();
                    match queue.front_mut() {
                        Some(Waiter::Batch { replies, count, .. }) => {
                            replies.push(frame);
                            if replies.len() == *count {
                                if let Some(Waiter::Batch { replies, reply, .. }) = queue.pop_front() {
                                    target.batch_answered(role);
                                    let _ = reply.send(Ok(replies));
                                }
                            }
                        }
                        Some(Waiter::Reply(..)) => {
                            if let Some(Waiter::Reply(reply, _, _)) = queue.pop_front() {
                                let _ = reply.send(Ok(frame));
                            }
                        }
                        Some(Waiter::LsnCheck(..)) => {
                            if let Some(Waiter::LsnCheck(reply, _)) = queue.pop_front() {
                                // Set before the reply is handed back, so the applier that
                                // asked may send its batches as soon as it has the answer.
                                if crate::keys::parse_lsn(&frame).is_some() {
                                    target.apply_checked.store(true, Ordering::Release);
                                }
                                let _ = reply.send(Ok(frame));
                            }
                        }
                        // A reply nobody asked for: the stream is out of step, so drop it.
                        _ => return ReaderEnd::BadReply,
                    }
                    while let Some(Waiter::Barrier(_)) = queue.front() {
                        if let Some(Waiter::Barrier(done)) = queue.pop_front() {
                            let _ = done.send(());
                        }
                    }
                }
            }
        };

        let end = tokio::select! {
            done = writer => match done {
                None => return None,
                Some(()) => ReaderEnd::Lost,
            },
            end = reader => end,
        };
        let error = match end {
            ReaderEnd::Lost => BackendError::Lost { addr: addr.to_string() },
            ReaderEnd::TimedOut => {
                BackendError::Timeout { addr: addr.to_string(), ms: crate::units::millis(request_timeout) }
            }
            ReaderEnd::BadReply => BackendError::BadReply { addr: addr.to_string() },
        };
        let retry_reads = matches!(end, ReaderEnd::Lost);
        let mut resend = Vec::new();
        for waiter in inflight.into_inner().unwrap() {
            match waiter {
                // A read lost with its connection goes again on the next one (first in line).
                Waiter::Reply(reply, _, Some((request, deadline))) if retry_reads && Instant::now() < deadline => {
                    resend.push(WaitingOp { op: ConnOp::Send(request, reply), deadline });
                }
                Waiter::Reply(reply, ..) | Waiter::LsnCheck(reply, _) => {
                    let _ = reply.send(Err(error.clone()));
                }
                Waiter::Batch { reply, .. } => {
                    self.target.batch_answered(self.role);
                    let _ = reply.send(Err(error.clone()));
                }
                Waiter::Barrier(done) => {
                    let _ = done.send(());
                }
            }
        }
        for queued in resend.into_iter().rev() {
            self.waiting.push_front(queued);
        }
        Some(())
    }
}

/// Why a connection cannot be used yet.
enum Unusable {
    Unreachable(String),
    /// Connected, but the node holds less than the shard: wait for the applier.
    CatchingUp(String),
}

enum ReaderEnd {
    Lost,
    TimedOut,
    BadReply,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::NodeAccess;
    use crate::resp::{Limits, RequestParser};
    use tokio::net::TcpListener;

    const OPTS: BackendOptions = BackendOptions {
        connect_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(2),
        access: NodeAccess { auth: None, tls: None },
    };

    /// A node that stops answering (or a hold) costs at most the connection's queue limit of
    /// client requests: the next client waits for room instead of queuing without bound.
    #[tokio::test]
    async fn a_connection_takes_client_requests_only_while_it_has_room() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        // A node that reads every request but answers one only when told to.
        let (answer, mut answers) = mpsc::unbounded_channel::<()>();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            loop {
                tokio::select! {
                    read = socket.read(&mut buf) => if read.map_or(true, |n| n == 0) { return },
                    told = answers.recv() => {
                        if told.is_none() || socket.write_all(b"+OK\r\n").await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        let conn = BackendConn::follow_with_room(NodeTarget::fixed(&addr), Role::Direct, Proto::Resp2, OPTS, 2);
        let mut first_two = Vec::new();
        for _ in 0..2 {
            let (tx, rx) = oneshot::channel();
            conn.send_when_room(encode_command(&["PING"]), tx).await;
            first_two.push(rx);
        }
        let (tx, third) = oneshot::channel();
        let queuing = tokio::spawn({
            let conn = conn.clone();
            async move { conn.send_when_room(encode_command(&["PING"]), tx).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!queuing.is_finished(), "a third request was queued on a connection with room for two");
        answer.send(()).unwrap();
        assert_eq!(&first_two.remove(0).await.unwrap().unwrap()[..], b"+OK\r\n");
        tokio::time::timeout(Duration::from_secs(5), queuing).await.expect("room freed by the reply").unwrap();
        answer.send(()).unwrap();
        answer.send(()).unwrap();
        assert_eq!(&third.await.unwrap().unwrap()[..], b"+OK\r\n");
    }

    /// A stand-in Redis node: answers `GET` with nil and anything else with `+<its address>`,
    /// so a test sees which node served a request.
    async fn fake_node() -> String {
        fake_node_answering_get("$-1\r\n").await
    }

    /// A stand-in node that answers every `GET` with `get_reply`.
    async fn fake_node_answering_get(get_reply: &'static str) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let name = addr.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let name = name.clone();
                tokio::spawn(async move {
                    let (mut buf, mut parser) = (BytesMut::new(), RequestParser::default());
                    let limits = Limits { max_bulk_len: 1 << 20, max_args: 1 << 10 };
                    while socket.read_buf(&mut buf).await.is_ok_and(|n| n > 0) {
                        while let Ok(Some(request)) = parser.next(&mut buf, limits) {
                            let reply = if &request.args[0][..] == b"GET" {
                                get_reply.to_string()
                            } else {
                                format!("+{name}\r\n")
                            };
                            if socket.write_all(reply.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        addr
    }

    fn served_by(reply: &ReplyResult) -> String {
        String::from_utf8_lossy(reply.as_ref().unwrap()).trim().trim_start_matches('+').to_string()
    }

    #[tokio::test]
    async fn held_requests_wait_and_go_to_the_new_target() {
        let (a, b) = (fake_node().await, fake_node().await);
        let target = NodeTarget::new(0, &a, Duration::from_secs(5));
        let conn = BackendConn::follow(target.clone(), Role::Read, Proto::Resp2, OPTS.clone());
        assert_eq!(served_by(&conn.call(&["PING"]).await), a);
        target.hold();
        let mut waiting = conn.send(encode_command(&["PING"]));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(waiting.try_recv().is_err(), "a held request waits");
        target.retarget(&b);
        target.release();
        assert_eq!(served_by(&waiting.await.unwrap()), b);
    }

    #[tokio::test]
    async fn a_request_held_longer_than_the_hold_time_gets_tryagain() {
        let a = fake_node().await;
        let target = NodeTarget::new(3, &a, Duration::from_millis(100));
        let conn = BackendConn::follow(target.clone(), Role::Read, Proto::Resp2, OPTS.clone());
        target.hold();
        let reply = conn.call(&["PING"]).await.unwrap();
        assert_eq!(&reply[..], b"-TRYAGAIN memlog: shard 3 is failing over\r\n");
    }

    #[tokio::test]
    async fn requests_to_an_unreachable_node_wait_for_a_retarget() {
        let dead = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap().to_string();
        let a = fake_node().await;
        let target = NodeTarget::new(0, &dead, Duration::from_secs(5));
        let conn = BackendConn::follow(target.clone(), Role::Read, Proto::Resp2, OPTS.clone());
        let waiting = conn.send(encode_command(&["PING"]));
        tokio::time::sleep(Duration::from_millis(50)).await;
        target.retarget(&a);
        assert_eq!(served_by(&waiting.await.unwrap()), a);
        // A fixed connection keeps failing at once.
        let direct = BackendConn::spawn(&dead, Proto::Resp2, OPTS.clone());
        assert!(matches!(direct.call(&["PING"]).await, Err(BackendError::Unreachable { .. })));
    }

    #[tokio::test]
    async fn apply_batches_are_refused_until_the_node_lsn_is_read_after_each_connect() {
        let (a, b) = (fake_node().await, fake_node().await);
        let target = NodeTarget::new(0, &a, Duration::from_secs(5));
        let conn = BackendConn::follow(target.clone(), Role::Apply, Proto::Resp2, OPTS.clone());
        let batch = || conn.call_batch(encode_command(&["SET", "k", "v"]), 1);
        assert!(matches!(batch().await, Err(BackendError::Unverified { .. })));
        assert_eq!(&conn.call(&[&b"GET"[..], crate::keys::LSN_KEY]).await.unwrap()[..], b"$-1\r\n");
        assert!(batch().await.is_ok());
        target.retarget(&b);
        assert!(matches!(batch().await, Err(BackendError::Unverified { .. })), "a new node is checked again");
        assert_eq!(target.applies_in_flight(), 0);
    }

    #[tokio::test]
    async fn an_lsn_check_unlocks_batches_only_when_its_reply_is_an_lsn() {
        let loading = fake_node_answering_get("-LOADING Redis is loading the dataset in memory\r\n").await;
        let target = NodeTarget::new(0, &loading, Duration::from_secs(5));
        let conn = BackendConn::follow(target.clone(), Role::Apply, Proto::Resp2, OPTS);
        let batch = || conn.call_batch(encode_command(&["SET", "k", "v"]), 1);
        let check = conn.call(&[&b"GET"[..], crate::keys::LSN_KEY]).await.unwrap();
        assert!(check.starts_with(b"-LOADING"));
        assert!(
            matches!(batch().await, Err(BackendError::Unverified { .. })),
            "a check answered with an error proves nothing about the node"
        );
        let answering = fake_node().await;
        target.retarget(&answering);
        assert_eq!(&conn.call(&[&b"GET"[..], crate::keys::LSN_KEY]).await.unwrap()[..], b"$-1\r\n");
        assert!(batch().await.is_ok());
    }

    #[test]
    fn scanning_resumes_across_reads() {
        let frame = b"*3\r\n$5\r\nhello\r\n:1\r\n%1\r\n+a\r\n+b\r\n";
        for cut in 1..frame.len() {
            let mut scanner = FrameScanner::default();
            assert_eq!(scanner.scan(&frame[..cut]), Ok(None), "cut at {cut}");
            assert_eq!(scanner.scan(frame), Ok(Some(frame.len())));
        }
    }
}

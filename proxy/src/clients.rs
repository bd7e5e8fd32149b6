//! The registry's view of each connected client: what `CLIENT LIST`/`CLIENT KILL` need
//! (`ClientHandle`), and the queue through which pub/sub frames and MONITOR lines reach it
//! (`PushSender`).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Instant;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use crate::resp::Proto;
use crate::table::CommandInfo;

/// What the proxy knows about one client connection (`CLIENT LIST`, `CLIENT KILL`).
pub(crate) struct ClientHandle {
    pub id: u64,
    pub addr: SocketAddr,
    pub local_addr: SocketAddr,
    pub connected_at: Instant,
    /// Milliseconds since `connected_at` of the last command, for `idle=`.
    pub last_command_ms: AtomicU64,
    pub last_command: ArcSwapOption<CommandInfo>,
    pub name: Mutex<Option<String>>,
    pub user: Mutex<String>,
    pub lib_name: Mutex<Option<String>>,
    pub lib_version: Mutex<Option<String>>,
    proto: AtomicU8,
    /// The database the client selected (`SELECT`; always 0 in cluster mode), for `db=` and for
    /// where its commands run.
    db: AtomicU8,
    /// Set by `CLIENT KILL`: the session stops at once.
    pub kill: Kill,
    /// True while the client waits in a blocking command or a `CLIENT PAUSE` (`flags=b`).
    pub blocked: AtomicBool,
    /// `CLIENT NO-EVICT ON` (`flags=e`). The proxy evicts no client for memory, so it is only
    /// recorded, as on a Redis without `maxmemory-clients`.
    pub no_evict: AtomicBool,
    /// The connection's socket descriptor (`fd=`).
    pub fd: i64,
    /// `multi=` of CLIENT LIST: commands queued since MULTI, -1 outside a transaction. A copy, for
    /// other clients' CLIENT LIST, of what the session's `ClientCtx` holds; written only through
    /// [`ClientHandle::show_queued`].
    multi: AtomicI64,
    /// Commands the session's reader has handed to its writer so far: a frame queued with
    /// [`PushSender::push_after_dispatched`] is written after all of them were answered.
    pub dispatched: AtomicU64,
    /// What `CLIENT LIST` shows of its tracking (`flags=t/R/B`, `redir=`); the tracking table
    /// (`pubsub::tracking`) keeps it current.
    pub tracking: Mutex<crate::tracking::Shown>,
}

/// The end of one client's session, decided elsewhere (`CLIENT KILL`, `ACL LOAD`, an output
/// limit). Its session checks it before every command and races it against every write and
/// every reply it waits for. A `CancellationToken` alone takes a lock on each check and two on
/// each wait; at pipeline 1 those were 4–6% of the proxy's CPU per request (`perf`, README
/// "Benchmarks", session 12). So the check reads a flag, and work that is done at once (a write
/// into a socket with room, a reply that has arrived) does not set up a wait.
#[derive(Default)]
pub(crate) struct Kill {
    killed: AtomicBool,
    token: CancellationToken,
}

impl Kill {
    pub(crate) fn cancel(&self) {
        self.killed.store(true, Ordering::Release);
        self.token.cancel();
    }

    pub(crate) fn is_cancelled(&self) -> bool {
        self.killed.load(Ordering::Acquire)
    }

    pub(crate) fn cancelled(&self) -> WaitForCancellationFuture<'_> {
        self.token.cancelled()
    }

    /// What `work` gives, or `None` if the client is killed first (and then `work` is dropped).
    pub(crate) async fn unless_killed<F: Future>(&self, work: F) -> Option<F::Output> {
        if self.is_cancelled() {
            return None;
        }
        let mut work = std::pin::pin!(work);
        match poll_once(work.as_mut()).await {
            Poll::Ready(done) => Some(done),
            Poll::Pending => self.race(work).await,
        }
    }

    /// Waits for `work` or the kill, whichever comes first (the kill, when both are ready).
    pub(crate) async fn race<F: Future>(&self, work: F) -> Option<F::Output> {
        tokio::select! {
            biased;
            _ = self.cancelled() => None,
            done = work => Some(done),
        }
    }
}

/// Polls `work` once: its output if it is done at once, `Pending` (with the task's waker
/// registered) if not.
pub(crate) async fn poll_once<F: Future>(mut work: std::pin::Pin<&mut F>) -> Poll<F::Output> {
    std::future::poll_fn(|cx| Poll::Ready(work.as_mut().poll(cx))).await
}

impl ClientHandle {
    pub(crate) fn new(id: u64, addr: SocketAddr, local_addr: SocketAddr, user: &str) -> ClientHandle {
        ClientHandle {
            id,
            no_evict: AtomicBool::new(false),
            fd: -1,
            addr,
            local_addr,
            connected_at: Instant::now(),
            last_command_ms: AtomicU64::new(0),
            last_command: ArcSwapOption::empty(),
            name: Mutex::new(None),
            user: Mutex::new(user.to_string()),
            lib_name: Mutex::new(None),
            lib_version: Mutex::new(None),
            proto: AtomicU8::new(2),
            db: AtomicU8::new(0),
            kill: Kill::default(),
            blocked: AtomicBool::new(false),
            multi: AtomicI64::new(-1),
            dispatched: AtomicU64::new(0),
            tracking: Mutex::new(Default::default()),
        }
    }
}

impl ClientHandle {
    /// The handle of a connection whose socket is `fd`.
    pub(crate) fn with_fd(self, fd: i64) -> ClientHandle {
        ClientHandle { fd, ..self }
    }

    pub(crate) fn proto(&self) -> Proto {
        if self.proto.load(Ordering::Relaxed) == 3 {
            Proto::Resp3
        } else {
            Proto::Resp2
        }
    }

    /// Publishes how many commands the client has queued in MULTI (None: not in MULTI).
    pub(crate) fn show_queued(&self, queued: Option<usize>) {
        self.multi.store(queued.map_or(-1, |n| n as i64), Ordering::Relaxed);
    }

    /// The database the client's commands run in.
    pub(crate) fn db(&self) -> u8 {
        self.db.load(Ordering::Relaxed)
    }

    pub(crate) fn set_db(&self, db: u8) {
        self.db.store(db, Ordering::Relaxed);
    }

    pub(crate) fn set_proto(&self, proto: Proto) {
        self.proto.store(if proto == Proto::Resp3 { 3 } else { 2 }, Ordering::Relaxed);
    }

    /// One `CLIENT LIST` / `CLIENT INFO` line, with Redis 7.0's fields in its order
    /// (`catClientInfoString`); `subscriptions` are the client's pub/sub counts (the hub keeps
    /// them).
    pub(crate) fn info_line(&self, subscriptions: &SubscriptionCounts) -> String {
        let now = Instant::now();
        let subscribed = subscriptions.channels + subscriptions.patterns + subscriptions.shard_channels > 0;
        let queued = self.multi.load(Ordering::Relaxed);
        let tracking = *self.tracking.lock().unwrap();
        let mut flags = String::new();
        for (set, flag) in [
            (subscribed, 'P'),
            (queued >= 0, 'x'),
            (self.blocked.load(Ordering::Relaxed), 'b'),
            (tracking.on, 't'),
            (tracking.broken_redirect, 'R'),
            (tracking.bcast, 'B'),
            (self.no_evict.load(Ordering::Relaxed), 'e'),
        ] {
            if set {
                flags.push(flag);
            }
        }
        if flags.is_empty() {
            flags.push('N');
        }
        let age = now.duration_since(self.connected_at).as_secs();
        format!(
            "id={} addr={} laddr={} fd={} name={} age={} idle={} flags={} db={} sub={} psub={} ssub={} multi={} qbuf=0 qbuf-free=0 argv-mem=0 multi-mem=0 rbs=0 rbp=0 obl=0 oll=0 omem=0 tot-mem=0 events=r cmd={} user={} redir={} resp={}",
            self.id,
            self.addr,
            self.local_addr,
            self.fd,
            self.name.lock().unwrap().as_deref().unwrap_or(""),
            age,
            age.saturating_sub(self.last_command_ms.load(Ordering::Relaxed) / 1000),
            flags,
            self.db(),
            subscriptions.channels,
            subscriptions.patterns,
            subscriptions.shard_channels,
            queued,
            self.last_command.load().as_ref().map(|c| c.name.as_str()).unwrap_or("NULL"),
            self.user.lock().unwrap(),
            if tracking.on { tracking.redirect as i64 } else { -1 },
            if self.proto() == Proto::Resp3 { 3 } else { 2 },
        )
    }
}

/// `CLIENT PAUSE` as Redis 7.0 keeps it (`pauseClients`): the most restrictive mode asked for
/// and the latest end, until it ends or `CLIENT UNPAUSE`. Read on every command: the mode is
/// an atomic, the end behind a lock taken only while a pause is on.
#[derive(Default)]
pub(crate) struct ClientPause {
    /// 0: off; otherwise a `PauseMode`.
    mode: AtomicU8,
    until: Mutex<Option<tokio::time::Instant>>,
    changed: tokio::sync::Notify,
}

/// What a pause holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum PauseMode {
    /// Commands that may write or propagate (Redis's `write` and `may-replicate`).
    Write = 1,
    /// Every command.
    All = 2,
}

impl ClientPause {
    /// Pauses until `until` (or later, if a pause already lasts longer), in `mode` or a more
    /// restrictive one already on.
    pub(crate) fn pause(&self, mode: PauseMode, until: tokio::time::Instant) {
        let mut end = self.until.lock().unwrap();
        let current = self.current_locked(&mut end);
        *end = Some(end.map_or(until, |end| end.max(until)));
        self.mode.store(current.map_or(mode, |m| m.max(mode)) as u8, Ordering::Release);
        drop(end);
        self.changed.notify_waiters();
    }

    pub(crate) fn unpause(&self) {
        *self.until.lock().unwrap() = None;
        self.mode.store(0, Ordering::Release);
        self.changed.notify_waiters();
    }

    /// The pause on now, if any (one that ended is cleared here).
    pub(crate) fn current(&self) -> Option<(PauseMode, tokio::time::Instant)> {
        if self.mode.load(Ordering::Acquire) == 0 {
            return None;
        }
        let mut end = self.until.lock().unwrap();
        let mode = self.current_locked(&mut end)?;
        Some((mode, (*end)?))
    }

    fn current_locked(&self, end: &mut Option<tokio::time::Instant>) -> Option<PauseMode> {
        let mode = match self.mode.load(Ordering::Acquire) {
            1 => PauseMode::Write,
            2 => PauseMode::All,
            _ => return None,
        };
        if end.is_none_or(|end| end <= tokio::time::Instant::now()) {
            *end = None;
            self.mode.store(0, Ordering::Release);
            return None;
        }
        Some(mode)
    }

    /// Waits while a pause holds a command of this kind (`holds` says which modes do).
    pub(crate) async fn wait_while(&self, holds: impl Fn(PauseMode) -> bool) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            match self.current() {
                Some((mode, until)) if holds(mode) => {
                    tokio::select! {
                        _ = changed => {}
                        _ = tokio::time::sleep_until(until) => {}
                    }
                }
                _ => return,
            }
        }
    }
}

/// A client's subscription counts, as `CLIENT LIST` shows them (`sub=`, `psub=`, `ssub=`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct SubscriptionCounts {
    pub channels: usize,
    pub patterns: usize,
    pub shard_channels: usize,
}

/// Pub/sub frames a client may have queued when it sets no `client_output_buffer_limit`:
/// Redis's default hard limit for pub/sub clients (`client-output-buffer-limit pubsub 32mb`).
const DEFAULT_PUSH_LIMIT: usize = 32 * 1024 * 1024;

/// Where pub/sub frames (messages and subscription confirmations) for one client go: the
/// session's writer writes them between replies. Bounded in bytes like Redis's pub/sub output
/// buffer limit: a subscriber too slow to keep up is disconnected rather than buffered without
/// end.
#[derive(Clone)]
pub(crate) struct PushSender {
    tx: mpsc::UnboundedSender<(Bytes, u64)>,
    queued: Arc<AtomicUsize>,
    limit: usize,
    client: Arc<ClientHandle>,
}

impl PushSender {
    /// Queues `frame` for the client, unless the client is gone or this frame takes it over its
    /// limit: it is then disconnected, as Redis closes a pub/sub client over its hard limit.
    pub(crate) fn push(&self, frame: Bytes) {
        self.push_stamped(frame, 0);
    }

    /// Queues `frame` to be written only after the replies of every command the client sent so
    /// far: an invalidation must not overtake the reply of a read that may have read the value
    /// it invalidates, or the client would cache that value after being told to drop it.
    pub(crate) fn push_after_dispatched(&self, frame: Bytes) {
        self.push_stamped(frame, self.client.dispatched.load(Ordering::Acquire));
    }

    fn push_stamped(&self, frame: Bytes, after: u64) {
        if self.client.kill.is_cancelled() {
            return;
        }
        let queued = self.queued.fetch_add(frame.len(), Ordering::AcqRel) + frame.len();
        if queued > self.limit {
            tracing::warn!(
                client = self.client.id,
                addr = %self.client.addr,
                "pub/sub output buffer limit ({} bytes) reached; closing the connection",
                self.limit
            );
            self.client.kill.cancel();
            return;
        }
        // The writer is gone only when the session ends; the frame has nobody to go to.
        let _ = self.tx.send((frame, after));
    }

    /// The client the frames go to (its id, and its protocol, which frames are encoded in).
    pub(crate) fn client(&self) -> &Arc<ClientHandle> {
        &self.client
    }
}

/// The writer's side of a client's `PushSender`.
/// Each frame comes with the number of the client's commands whose replies must be written
/// before it (0: none).
pub(crate) struct PushReceiver {
    rx: mpsc::UnboundedReceiver<(Bytes, u64)>,
    queued: Arc<AtomicUsize>,
}

impl PushReceiver {
    fn taken(&self, (frame, after): (Bytes, u64)) -> (Bytes, u64) {
        self.queued.fetch_sub(frame.len(), Ordering::AcqRel);
        (frame, after)
    }

    pub(crate) fn try_recv(&mut self) -> Option<(Bytes, u64)> {
        self.rx.try_recv().ok().map(|frame| self.taken(frame))
    }

    pub(crate) async fn recv(&mut self) -> Option<(Bytes, u64)> {
        let frame = self.rx.recv().await?;
        Some(self.taken(frame))
    }
}

/// A client's push queue, bounded by `client_output_buffer_limit` bytes (0: Redis's default).
pub(crate) fn push_channel(
    client_output_buffer_limit: usize,
    client: &Arc<ClientHandle>,
) -> (PushSender, PushReceiver) {
    let (tx, rx) = mpsc::unbounded_channel();
    let queued = Arc::new(AtomicUsize::new(0));
    let limit = match client_output_buffer_limit {
        0 => DEFAULT_PUSH_LIMIT,
        limit => limit,
    };
    (PushSender { tx, queued: queued.clone(), limit, client: client.clone() }, PushReceiver { rx, queued })
}

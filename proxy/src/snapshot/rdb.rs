//! Getting a point-in-time RDB out of a Redis node and loading one into a node, over the
//! replication protocol alone.
//!
//! A snapshot needs nothing but stock Redis reachable over the network: no access to the node's
//! disk, no `redis-cli`, no module. [`fetch`] asks the node for a full synchronisation (`SYNC`),
//! as a replica would, and keeps the RDB it sends. [`load`] plays the primary: it points the
//! node at a listener of its own with `REPLICAOF`, hands it the file as the full-sync payload,
//! and once the node has loaded it, detaches it with `REPLICAOF NO ONE`. That listener serves
//! only the node being loaded: the node is given a one-time credential (`masteruser`/
//! `masterauth`) first, and a peer that does not present it gets nothing. Under `[backend] tls`
//! every connection to the node is TLS (`crate::backend::NodeAccess`) and so is the listener,
//! with the proxy's `[backend] cert`: a node run with `tls-replication yes` reaches its primary
//! over TLS and checks its certificate; a node's own certificate, if it presents one, must be
//! signed by `[backend] ca`. Every RDB is checked ([`verify`]: magic, version, CRC-64 trailer)
//! before it is trusted or sent, because a node that loads a corrupt RDB from its primary exits.

use std::future::Future;
use std::io::{Read, Seek, SeekFrom};
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use tokio::task::JoinSet;

use crate::backend::{random_secret, AdminConn, AdminError, NodeAccess, NodeStream};
use crate::resp::{bulk_payload, encode_command, info_field, line_payload, parse_int, Limits, RequestParser};

/// `REDIS` + a 4-digit version: how every RDB starts.
const HEADER_LEN: usize = 9;
const MAGIC: &[u8] = b"REDIS";
/// The CRC-64 trailer, written from RDB version 5 on.
const CHECKSUM_LEN: usize = 8;
const FIRST_CHECKSUMMED_VERSION: u32 = 5;
/// The opcode that ends an RDB's contents (before the checksum, if any).
const EOF_OPCODE: u8 = 0xFF;
/// Length of the random mark that ends a diskless (`$EOF:<mark>`) payload.
const EOF_MARK_LEN: usize = 40;
/// Longest reply line accepted, so garbage from the peer cannot grow memory.
const MAX_LINE: u64 = 64 * 1024;
/// Largest reply accepted on the control connection (`INFO` is a few KiB).
const MAX_CONTROL_REPLY: usize = 16 << 20;
/// How much of a file or stream is handled at once.
const CHUNK: usize = 64 * 1024;
/// How often `load` asks the node whether it has loaded the RDB.
const POLL_EVERY: Duration = Duration::from_millis(20);
/// What the replica side of `load` may send during its handshake: a few short commands.
const HANDSHAKE_LIMITS: Limits = Limits { max_bulk_len: 64 * 1024, max_args: 64 };
/// The `masteruser` the node being loaded presents to the serving listener.
const LOAD_USER: &str = "memlog-snapshot-load";
/// Handshakes the serving listener runs at once; peers beyond it are closed at once.
const MAX_HANDSHAKES: usize = 8;

/// Why fetching, checking or loading an RDB failed, typed so the caller can tell a node that is
/// unreachable or slow from one that refused, and both from a bad file.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RdbError {
    /// Connecting, reading or writing failed, or the peer closed the connection early.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// Nothing happened for the whole timeout while waiting for the step named.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    /// The node answered with an error (`-NOAUTH …`) or with something else than expected.
    #[error("redis: {0}")]
    Redis(String),
    /// The RDB's bytes are not a whole, intact RDB.
    #[error("corrupt RDB: {reason}")]
    Corrupt { reason: String },
    /// Connecting to the node (TCP, TLS or `AUTH`) failed.
    #[error("cannot reach the node: {0}")]
    Unreachable(String),
    /// `[backend] tls` without a proxy certificate: a node run with `tls-replication yes`
    /// would find no certificate at the serving port, so no load is tried.
    #[error(
        "a snapshot load over TLS needs [backend] cert and key: the node connects to the \
         snapshot-serving port as a replica to its primary and checks its certificate"
    )]
    NoServingCertificate,
}

/// A connection the serving listener accepted, plain or TLS.
trait PeerStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> PeerStream for T {}

/// Fetches a point-in-time RDB from the Redis node at `addr` (`host:port`) with the replication
/// handshake, writing its bytes to `out`; returns the number of bytes written. The bytes are
/// checked (magic, CRC64 trailer) as they stream.
///
/// `timeout` bounds every wait for the node (connecting, and each read), not the whole transfer:
/// an RDB of gigabytes takes long, and a node busy writing it sends a newline every second, so
/// only a node that went silent for `timeout` fails the fetch. Works against a replica as well
/// as a primary (it serves its own data set, as to a chained replica). After the RDB the node
/// would stream its replication feed: the connection is closed instead. `out` may hold a partial
/// RDB when an error returns.
pub(crate) async fn fetch(
    addr: &str,
    out: &mut (impl AsyncWrite + Unpin),
    timeout: Duration,
    access: &NodeAccess,
) -> Result<u64, RdbError> {
    let started = Instant::now();
    let mut conn = connect(addr, timeout, access).await?;
    // Plain SYNC, without `REPLCONF capa eof`, so the node sends a sized, disk-based payload.
    within(timeout, "the node to take SYNC", send_all(conn.get_mut(), &encode_command(&["SYNC"]))).await?;
    let payload = loop {
        // Lone newlines keep the link alive while the node writes its RDB.
        let line = read_line(&mut conn, timeout, "the node to start sending its RDB").await?;
        if !line.is_empty() {
            break payload_kind(&line)?;
        }
    };
    let mut sink = CheckedSink { out, check: RdbCheck::default(), written: 0 };
    match payload {
        Payload::Length(len) => copy_sized(&mut conn, &mut sink, len, timeout).await?,
        Payload::EndMark(mark) => copy_until_mark(&mut conn, &mut sink, &mark, timeout).await?,
    }
    sink.check.finish()?;
    sink.out.flush().await?;
    tracing::info!(addr, bytes = sink.written, elapsed_ms = crate::units::millis(started.elapsed()), "fetched an RDB");
    Ok(sink.written)
}

/// Checks an RDB file: the `REDIS` magic + 4-digit version, and the CRC64 trailer Redis writes
/// (RDB version >= 5, `rdbchecksum yes`; a zero checksum means checksums were disabled: accept).
///
/// Reads the file once in fixed-size chunks (constant memory), so a snapshot is never trusted or
/// sent to a node before it is known whole. Blocking: call it from `spawn_blocking` in async code.
pub(crate) fn verify(path: &Path) -> Result<(), RdbError> {
    let bytes = check_stream(&mut std::fs::File::open(path)?)?;
    tracing::debug!(path = %path.display(), bytes, "RDB verified");
    Ok(())
}

/// Loads the RDB at `path` into the Redis node at `addr`, replacing everything it holds: serves
/// the file as a replication primary on `serve_ip` (a free port), points the node at it with
/// `REPLICAOF`, waits until the node has loaded it (`master_link_status:up`), then
/// `REPLICAOF NO ONE` so the node is a primary holding exactly the RDB's data.
///
/// The file is verified first (a node exits when the RDB its primary sends is corrupt), and then
/// streamed from the same open handle. `timeout` bounds each wait: connecting, each reply, the
/// node connecting back, each write of the file, and the node's loading of it (extended while the
/// node reports loading progress). Once `REPLICAOF` was sent (and not refused), every failure
/// sends `REPLICAOF NO ONE` (best effort) before returning, so the node does not keep retrying a
/// dead address; it may then have lost its old data, as a replica flushes before it loads. The
/// node needs room in its `dir` for the RDB: it receives the payload into a temp file.
///
/// Before `REPLICAOF`, the node's `masteruser`/`masterauth` are set to a one-time credential,
/// which the listener requires before it sends anything; they stay set afterwards, for the
/// caller's node preparation to replace (`crate::prepare`).
pub(crate) async fn load(
    addr: &str,
    path: &Path,
    serve_ip: IpAddr,
    timeout: Duration,
    access: &NodeAccess,
) -> Result<(), RdbError> {
    let started = Instant::now();
    let acceptor = match &access.tls {
        Some(tls) => Some(tls.serving_acceptor().ok_or(RdbError::NoServingCertificate)?),
        None => None,
    };
    let (file, len) = open_verified(path).await?;
    let listener = TcpListener::bind((serve_ip, 0)).await?;
    let port = listener.local_addr()?.port();
    let mut control = AdminConn::connect(addr, timeout, access).await?.with_max_reply(MAX_CONTROL_REPLY);
    let secret = random_secret();
    let one_time = ["CONFIG", "SET", "masteruser", LOAD_USER, "masterauth", &secret];
    if let Err(e) = expect_ok(&mut control, &one_time).await {
        return Err(match e {
            RdbError::Redis(refused) => RdbError::Redis(format!("setting the one-time credential refused: {refused}")),
            other => other,
        });
    }
    let result = match expect_ok(&mut control, &["REPLICAOF", &serve_ip.to_string(), &port.to_string()]).await {
        // The node refused: it still follows whatever it followed, leave it be.
        Err(RdbError::Redis(refused)) => return Err(RdbError::Redis(format!("REPLICAOF refused: {refused}"))),
        Err(e) => Err(e),
        Ok(()) => serve_rdb(&mut control, Serving { listener, acceptor }, file, len, timeout, secret).await,
    };
    match result {
        Ok(()) => {
            tracing::info!(addr, bytes = len, elapsed_ms = crate::units::millis(started.elapsed()), "loaded an RDB");
            Ok(())
        }
        Err(e) => {
            tracing::warn!(addr, error = %e, "loading an RDB failed; detaching the node");
            detach(addr, timeout, access).await;
            Err(e)
        }
    }
}

/// The listener a node being loaded connects to, and its TLS side under `[backend] tls`.
struct Serving {
    listener: TcpListener,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
}

/// Everything `load` does once the node was told to follow `listener`: answer its handshake,
/// send the file, wait until it has loaded it, and make it a primary again.
async fn serve_rdb(
    control: &mut AdminConn,
    Serving { listener, acceptor }: Serving,
    file: tokio::fs::File,
    len: u64,
    timeout: Duration,
    secret: String,
) -> Result<(), RdbError> {
    let port = listener.local_addr()?.port();
    let (mut replica, request) = within(timeout, "the node to connect for the RDB", async {
        // Every peer gets a handshake of its own, so one that connects first and stalls does not
        // keep the node out; only one presenting the one-time credential is served.
        let secret = std::sync::Arc::new(secret);
        let mut handshakes = JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let (tcp, from) = accepted?;
                    if handshakes.len() >= MAX_HANDSHAKES {
                        tracing::warn!(%from, "too many peers at the snapshot-serving port; closed");
                        continue;
                    }
                    let (secret, acceptor) = (secret.clone(), acceptor.clone());
                    handshakes.spawn(async move {
                        let handshake = async {
                            let mut peer = accept(tcp, acceptor, timeout).await?;
                            let request = replica_handshake(&mut peer, &secret, timeout).await?;
                            Ok::<_, RdbError>((peer, request))
                        };
                        (from, handshake.await)
                    });
                }
                Some(Ok((from, handshake))) = handshakes.join_next(), if !handshakes.is_empty() => match handshake {
                    Ok((peer, request)) => {
                        tracing::debug!(%from, "node connected for the RDB");
                        return Ok((peer, request));
                    }
                    Err(e) => tracing::warn!(%from, "refused a peer at the snapshot-serving port: {e}"),
                },
            }
        }
    })
    .await?;
    // Until the load is over, whoever else connects is closed at once.
    let refuse_others = async {
        loop {
            if let Ok((_, from)) = listener.accept().await {
                tracing::warn!(%from, "refused a peer at the snapshot-serving port during a load");
            }
        }
    };
    tokio::select! {
        sent = send_and_wait(control, &mut replica, request, file, len, port, timeout) => sent,
        never = refuse_others => never,
    }
}

/// Sends the RDB to the node that authenticated, waits until it has loaded it, and makes it a
/// primary again.
async fn send_and_wait(
    control: &mut AdminConn,
    replica: &mut Box<dyn PeerStream>,
    request: SyncRequest,
    mut file: tokio::fs::File,
    len: u64,
    port: u16,
    timeout: Duration,
) -> Result<(), RdbError> {
    let mut preamble = Vec::new();
    if request == SyncRequest::Psync {
        preamble.extend_from_slice(format!("+FULLRESYNC {} 0\r\n", random_replid()).as_bytes());
    }
    preamble.extend_from_slice(format!("${len}\r\n").as_bytes());
    within(timeout, "the node to take the RDB", replica.write_all(&preamble)).await?;
    // Written on with the payload; flushed once it is all written.
    let mut buf = vec![0; CHUNK];
    let mut left = len;
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = file.read(&mut buf[..want]).await?;
        if n == 0 {
            return Err(closed_early("the RDB file shrank while it was sent"));
        }
        within(timeout, "the node to take the RDB", replica.write_all(&buf[..n])).await?;
        left -= n as u64;
    }
    within(timeout, "the node to take the RDB", replica.flush()).await?;
    wait_until_loaded(control, replica, port, timeout).await?;
    expect_ok(control, &["REPLICAOF", "NO", "ONE"]).await
}

/// What the replica asked for at the end of its handshake.
#[derive(Debug, PartialEq, Eq)]
enum SyncRequest {
    /// `PSYNC <replid> <offset>`: answered `+FULLRESYNC` before the payload.
    Psync,
    /// Old-style `SYNC`: the payload comes without a preamble.
    Sync,
}

/// Answers the replica's handshake as a Redis primary with a password would, up to its
/// `PSYNC`/`SYNC`. Before `AUTH <LOAD_USER> <secret>` the peer gets `-NOAUTH` to a `PING`
/// (which a replica accepts and goes on to authenticate) and nothing else: anything other than
/// `PING` or the right `AUTH` ends the connection.
async fn replica_handshake(
    replica: &mut (impl AsyncRead + AsyncWrite + Unpin),
    secret: &str,
    timeout: Duration,
) -> Result<SyncRequest, RdbError> {
    let mut buf = BytesMut::with_capacity(4096);
    let mut parser = RequestParser::default();
    let mut authenticated = false;
    let refused = |what: &str| RdbError::Redis(format!("a peer {what} before it authenticated; closed"));
    loop {
        while let Some(request) = parser
            .next(&mut buf, HANDSHAKE_LIMITS)
            .map_err(|e| RdbError::Redis(format!("bad request from the node: {e}")))?
        {
            let mut name = [0; 32];
            let answer: &[u8] = match request.name_in(&mut name) {
                Some("ping") if !authenticated => b"-NOAUTH Authentication required.\r\n",
                Some("auth") if !authenticated => {
                    let matches = match &request.args[1..] {
                        [user, password] => {
                            same_secret(user, LOAD_USER.as_bytes()) & same_secret(password, secret.as_bytes())
                        }
                        _ => false,
                    };
                    if !matches {
                        return Err(refused("presented a wrong credential"));
                    }
                    authenticated = true;
                    b"+OK\r\n"
                }
                _ if !authenticated => return Err(refused("sent another command")),
                Some("psync") => return Ok(SyncRequest::Psync),
                Some("sync") => return Ok(SyncRequest::Sync),
                Some("ping") => b"+PONG\r\n",
                // Every capability or port announcement is welcome.
                Some("replconf") => b"+OK\r\n",
                _ => b"-ERR unknown command\r\n",
            };
            within(timeout, "the node to read the handshake", send_all(replica, answer)).await?;
        }
        if within(timeout, "the node's replication handshake", replica.read_buf(&mut buf)).await? == 0 {
            return Err(closed_early("the node closed the replication link during its handshake"));
        }
    }
}

/// Compares a presented secret with the expected one in time that depends on their lengths only.
fn same_secret(presented: &[u8], expected: &[u8]) -> bool {
    presented.len() == expected.len() && presented.iter().zip(expected).fold(0u8, |diff, (a, b)| diff | (a ^ b)) == 0
}

/// Waits until the node reports its link to us up, which it does once the RDB is loaded,
/// meanwhile discarding what it sends on the replication link (`REPLCONF ACK`s).
async fn wait_until_loaded(
    control: &mut AdminConn,
    replica: &mut Box<dyn PeerStream>,
    port: u16,
    timeout: Duration,
) -> Result<(), RdbError> {
    let port = port.to_string();
    let mut deadline = Instant::now() + timeout;
    let mut progress = None;
    let mut scratch = [0; 1024];
    let mut poll = tokio::time::interval(POLL_EVERY);
    loop {
        tokio::select! {
            read = replica.read(&mut scratch) => {
                if read? == 0 {
                    return Err(closed_early("the node dropped the replication link before it loaded the RDB"));
                }
            }
            _ = poll.tick() => {
                let info = info(control).await?;
                if info_field(&info, "master_link_status") == Some("up") && info_field(&info, "master_port") == Some(&port) {
                    return Ok(());
                }
                // A big RDB takes long to load; the node is not stuck while it makes progress.
                let loaded = info_field(&info, "loading_loaded_bytes").map(str::to_owned);
                if loaded.is_some() && loaded != progress {
                    progress = loaded;
                    deadline = Instant::now() + timeout;
                }
                if Instant::now() >= deadline {
                    return Err(RdbError::Timeout("the node to load the RDB"));
                }
            }
        }
    }
}

/// Best effort after a failed load: make the node a primary again rather than leave it
/// retrying a listener that is gone. A fresh connection, as the old one may be mid-reply.
async fn detach(addr: &str, timeout: Duration, access: &NodeAccess) {
    let detached =
        async { expect_ok(&mut AdminConn::connect(addr, timeout, access).await?, &["REPLICAOF", "NO", "ONE"]).await };
    if let Err(e) = detached.await {
        tracing::warn!(addr, error = %e, "could not send REPLICAOF NO ONE after a failed RDB load");
    }
}

/// Opens the file and verifies it through the handle that will stream it, so what is sent is
/// what was checked even if the path is replaced meanwhile; returns the handle and its length.
async fn open_verified(path: &Path) -> Result<(tokio::fs::File, u64), RdbError> {
    let path = path.to_owned();
    let verified = tokio::task::spawn_blocking(move || -> Result<_, RdbError> {
        let mut file = std::fs::File::open(&path)?;
        let len = check_stream(&mut file)?;
        file.seek(SeekFrom::Start(0))?;
        Ok((file, len))
    });
    let (file, len) = verified.await.map_err(|e| RdbError::Io(std::io::Error::other(e)))??;
    Ok((tokio::fs::File::from_std(file), len))
}

/// A replication id for the `+FULLRESYNC` answer: 40 hex characters, fresh for every load.
fn random_replid() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut id = String::with_capacity(48);
    while id.len() < 40 {
        // Every `RandomState` gets fresh random keys, so what it hashes comes out random.
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(id.len() as u64);
        id.push_str(&format!("{:016x}", hasher.finish()));
    }
    id.truncate(40);
    id
}

/// How the node frames the RDB it sends after `SYNC`.
enum Payload {
    /// `$<len>\r\n` then exactly `len` bytes (disk-based sync).
    Length(u64),
    /// `$EOF:<mark>\r\n`, the bytes, then the same mark (diskless sync).
    EndMark([u8; EOF_MARK_LEN]),
}

/// Reads the payload header line (without its `\r\n`).
fn payload_kind(line: &[u8]) -> Result<Payload, RdbError> {
    match line.split_first() {
        Some((b'-', error)) => Err(RdbError::Redis(String::from_utf8_lossy(error).into_owned())),
        Some((b'$', spec)) => match spec.strip_prefix(b"EOF:") {
            Some(mark) => mark
                .try_into()
                .map(Payload::EndMark)
                .map_err(|_| RdbError::Redis(format!("bad end-of-RDB mark in {}", shown(line)))),
            None => parse_int(spec)
                .and_then(|len| u64::try_from(len).ok())
                .map(Payload::Length)
                .ok_or_else(|| RdbError::Redis(format!("bad RDB length in {}", shown(line)))),
        },
        _ => Err(RdbError::Redis(format!("unexpected answer to SYNC: {}", shown(line)))),
    }
}

/// Where fetched bytes go: checked, then written, then counted.
struct CheckedSink<'a, W> {
    out: &'a mut W,
    check: RdbCheck,
    written: u64,
}

impl<W: AsyncWrite + Unpin> CheckedSink<'_, W> {
    async fn put(&mut self, bytes: &[u8]) -> Result<(), RdbError> {
        self.check.update(bytes)?;
        self.out.write_all(bytes).await?;
        self.written += bytes.len() as u64;
        Ok(())
    }
}

/// Copies a sized payload: exactly `len` bytes.
async fn copy_sized<R: AsyncBufRead + Unpin, W: AsyncWrite + Unpin>(
    conn: &mut R,
    sink: &mut CheckedSink<'_, W>,
    len: u64,
    timeout: Duration,
) -> Result<(), RdbError> {
    let mut left = len;
    while left > 0 {
        let chunk = within(timeout, "more of the RDB", conn.fill_buf()).await?;
        if chunk.is_empty() {
            return Err(closed_early("the node closed the connection in the middle of the RDB"));
        }
        let take = chunk.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        sink.put(&chunk[..take]).await?;
        conn.consume(take);
        left -= take as u64;
    }
    Ok(())
}

/// Copies a diskless payload up to its end mark. The last `EOF_MARK_LEN - 1` bytes are held back
/// until more arrive, as they may be the start of the mark; what follows the mark (the
/// replication feed) is dropped.
async fn copy_until_mark<R: AsyncBufRead + Unpin, W: AsyncWrite + Unpin>(
    conn: &mut R,
    sink: &mut CheckedSink<'_, W>,
    mark: &[u8; EOF_MARK_LEN],
    timeout: Duration,
) -> Result<(), RdbError> {
    let mut pending = Vec::with_capacity(CHUNK + EOF_MARK_LEN);
    loop {
        let chunk = within(timeout, "more of the RDB", conn.fill_buf()).await?;
        if chunk.is_empty() {
            return Err(closed_early("the node closed the connection before the end of the RDB"));
        }
        pending.extend_from_slice(chunk);
        let n = chunk.len();
        conn.consume(n);
        if let Some(end) = pending.windows(EOF_MARK_LEN).position(|w| w == mark) {
            return sink.put(&pending[..end]).await;
        }
        let ready = pending.len().saturating_sub(EOF_MARK_LEN - 1);
        sink.put(&pending[..ready]).await?;
        pending.drain(..ready);
    }
}

/// Reads a whole RDB through the checker; returns its length.
fn check_stream(reader: &mut impl Read) -> Result<u64, RdbError> {
    let mut check = RdbCheck::default();
    let mut buf = vec![0; CHUNK];
    let mut len = 0;
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                check.update(&buf[..n])?;
                len += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    check.finish()?;
    Ok(len)
}

/// Checks an RDB as its bytes pass, in constant memory: the header as soon as it is in, and at
/// the end the EOF opcode and the CRC-64 of everything before the trailer. The last 8 bytes seen
/// are held back from the sum, since they may be the trailer.
#[derive(Default)]
struct RdbCheck {
    header: [u8; HEADER_LEN],
    version: Option<u32>,
    seen: u64,
    crc: u64,
    tail: [u8; CHECKSUM_LEN],
    tail_len: usize,
    last_summed: Option<u8>,
}

impl RdbCheck {
    fn update(&mut self, data: &[u8]) -> Result<(), RdbError> {
        if self.version.is_none() {
            // Below HEADER_LEN until the version is read.
            let at = usize::try_from(self.seen).unwrap_or(HEADER_LEN);
            let n = (HEADER_LEN - at).min(data.len());
            self.header[at..at + n].copy_from_slice(&data[..n]);
            if at + n == HEADER_LEN {
                self.version = Some(parse_header(&self.header)?);
            }
        }
        self.seen += data.len() as u64;
        if data.len() >= CHECKSUM_LEN {
            let (body, tail) = data.split_at(data.len() - CHECKSUM_LEN);
            let held = self.tail;
            self.sum(&held[..self.tail_len]);
            self.sum(body);
            self.tail.copy_from_slice(tail);
            self.tail_len = CHECKSUM_LEN;
        } else {
            let mut joined = [0; 2 * CHECKSUM_LEN];
            joined[..self.tail_len].copy_from_slice(&self.tail[..self.tail_len]);
            joined[self.tail_len..self.tail_len + data.len()].copy_from_slice(data);
            let total = self.tail_len + data.len();
            let keep = total.min(CHECKSUM_LEN);
            self.sum(&joined[..total - keep]);
            self.tail[..keep].copy_from_slice(&joined[total - keep..total]);
            self.tail_len = keep;
        }
        Ok(())
    }

    fn sum(&mut self, bytes: &[u8]) {
        if let Some(&last) = bytes.last() {
            self.crc = crc64(self.crc, bytes);
            self.last_summed = Some(last);
        }
    }

    fn finish(self) -> Result<(), RdbError> {
        let Some(version) = self.version else {
            return Err(corrupt(format!("{} bytes, shorter than an RDB header", self.seen)));
        };
        if version < FIRST_CHECKSUMMED_VERSION {
            // No trailer to check: the contents must at least end with the EOF opcode.
            return match self.tail[..self.tail_len].last() {
                Some(&EOF_OPCODE) if self.seen > HEADER_LEN as u64 => Ok(()),
                _ => Err(corrupt("no EOF opcode at the end (truncated?)".into())),
            };
        }
        if self.seen < (HEADER_LEN + 1 + CHECKSUM_LEN) as u64 {
            return Err(corrupt(format!("{} bytes, too short for an RDB", self.seen)));
        }
        if self.last_summed != Some(EOF_OPCODE) {
            return Err(corrupt("no EOF opcode before the checksum (truncated?)".into()));
        }
        let stored = u64::from_le_bytes(self.tail);
        if stored != 0 && stored != self.crc {
            return Err(corrupt(format!("checksum {stored:016x} in the trailer, {:016x} computed", self.crc)));
        }
        Ok(())
    }
}

/// Checks `REDIS` + a 4-digit version; returns the version.
fn parse_header(header: &[u8; HEADER_LEN]) -> Result<u32, RdbError> {
    let (magic, digits) = header.split_at(MAGIC.len());
    if magic != MAGIC {
        return Err(corrupt(format!("no REDIS magic: starts with {}", shown(header))));
    }
    match std::str::from_utf8(digits).ok().filter(|d| d.bytes().all(|b| b.is_ascii_digit())) {
        Some(version) => Ok(version.parse().unwrap_or(0)),
        None => Err(corrupt(format!("bad version in header {}", shown(header)))),
    }
}

fn corrupt(reason: String) -> RdbError {
    RdbError::Corrupt { reason }
}

/// The peer went away before it should have.
fn closed_early(what: &str) -> RdbError {
    RdbError::Io(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, what.to_string()))
}

/// CRC-64/Jones as Redis computes it (`crc64.c`): reflected, polynomial 0xad93d23594c935a9
/// (0x95ac9329ac4bc9b5 bit-reversed), initial value 0, no final xor. Slicing-by-8 (eight bytes
/// per step, as Redis's `crcspeed`), so checking keeps up with a fast network and disk.
fn crc64(mut crc: u64, bytes: &[u8]) -> u64 {
    let mut words = bytes.chunks_exact(8);
    for word in &mut words {
        let x = crc ^ u64::from_le_bytes(word.try_into().expect("chunks of 8"));
        crc = (0..8).fold(0, |acc, k| acc ^ CRC64_TABLES[7 - k][((x >> (8 * k)) & 0xff) as usize]);
    }
    for &b in words.remainder() {
        crc = CRC64_TABLES[0][((crc ^ u64::from(b)) & 0xff) as usize] ^ (crc >> 8);
    }
    crc
}

/// `[0]` is the classic byte table; `[k]` advances a byte's CRC through `k` more zero bytes.
const CRC64_TABLES: [[u64; 256]; 8] = crc64_tables();

const fn crc64_tables() -> [[u64; 256]; 8] {
    const REFLECTED_POLY: u64 = 0x95ac_9329_ac4b_c9b5;
    let mut tables = [[0; 256]; 8];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u64;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ REFLECTED_POLY } else { crc >> 1 };
            bit += 1;
        }
        tables[0][i] = crc;
        i += 1;
    }
    let mut k = 1;
    while k < 8 {
        let mut i = 0;
        while i < 256 {
            let prev = tables[k - 1][i];
            tables[k][i] = (prev >> 8) ^ tables[0][(prev & 0xff) as usize];
            i += 1;
        }
        k += 1;
    }
    tables
}

/// Runs one network step, failing with `Timeout(waiting_for)` if it does not finish in time.
async fn within<T>(
    timeout: Duration,
    waiting_for: &'static str,
    step: impl Future<Output = std::io::Result<T>>,
) -> Result<T, RdbError> {
    match tokio::time::timeout(timeout, step).await {
        Ok(done) => Ok(done?),
        Err(_) => Err(RdbError::Timeout(waiting_for)),
    }
}

/// An authenticated connection for `SYNC`, whose reply is the replication stream.
async fn connect(addr: &str, timeout: Duration, access: &NodeAccess) -> Result<BufReader<NodeStream>, RdbError> {
    let stream = AdminConn::connect(addr, timeout, access).await?.into_stream();
    Ok(BufReader::with_capacity(CHUNK, stream))
}

/// A peer the serving listener accepted, after the TLS handshake when `acceptor` is set (the
/// node's certificate, if it presents one, checked against `[backend] ca`).
async fn accept(
    tcp: TcpStream,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    timeout: Duration,
) -> Result<Box<dyn PeerStream>, RdbError> {
    tcp.set_nodelay(true)?;
    Ok(match acceptor {
        Some(acceptor) => Box::new(within(timeout, "the node's TLS handshake", acceptor.accept(tcp)).await?),
        None => Box::new(tcp),
    })
}

/// Writes `bytes` and flushes them: over TLS the last records of a write may otherwise stay in
/// the stream until the next write, while the peer waits for them (`backend::admin`).
async fn send_all(stream: &mut (impl AsyncWrite + Unpin), bytes: &[u8]) -> std::io::Result<()> {
    stream.write_all(bytes).await?;
    stream.flush().await
}

/// Reads one line, without its `\n` or `\r\n`; bounded in length.
async fn read_line(
    conn: &mut BufReader<NodeStream>,
    timeout: Duration,
    waiting_for: &'static str,
) -> Result<Vec<u8>, RdbError> {
    let mut line = Vec::new();
    within(timeout, waiting_for, (&mut *conn).take(MAX_LINE).read_until(b'\n', &mut line)).await?;
    if line.pop() != Some(b'\n') {
        return Err(if line.is_empty() {
            closed_early("the node closed the connection")
        } else {
            RdbError::Redis(format!("unterminated or overlong reply line: {}", shown(&line)))
        });
    }
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    Ok(line)
}

/// A short, printable rendering of bytes from the network for an error message.
fn shown(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(120)]);
    format!("{text:?}")
}

/// Sends `args`, which the node must answer `+OK…` (`REPLICAOF` may say `+OK Already
/// connected to specified master`).
async fn expect_ok(control: &mut AdminConn, args: &[&str]) -> Result<(), RdbError> {
    let reply = control.call(args).await?;
    match line_payload(&reply) {
        Some(status) if status.starts_with(b"OK") => Ok(()),
        _ => Err(RdbError::Redis(format!("{} answered {}", args.join(" "), shown(&reply)))),
    }
}

/// The node's `INFO`, as text.
async fn info(control: &mut AdminConn) -> Result<String, RdbError> {
    let reply = control.call(&["INFO"]).await?;
    match bulk_payload(&reply) {
        Some(info) => Ok(String::from_utf8_lossy(info).into_owned()),
        None => Err(RdbError::Redis(format!("INFO answered {}", shown(&reply)))),
    }
}

impl From<AdminError> for RdbError {
    fn from(error: AdminError) -> Self {
        match error {
            AdminError::Refused { message, .. } => RdbError::Redis(message),
            AdminError::Timeout { .. } => RdbError::Timeout("the node's reply"),
            AdminError::Unreachable { reason, .. } => RdbError::Unreachable(reason),
            AdminError::Lost { .. } => closed_early("the node closed the connection"),
            bad @ AdminError::BadReply { .. } => RdbError::Redis(bad.to_string()),
        }
    }
}

#[cfg(test)]
#[path = "../../../tests/common/ports.rs"]
#[allow(unreachable_pub)] // shared with the integration tests, where its items are used across files
mod ports;

#[cfg(test)]
pub(super) mod tests {
    use std::process::{Child, Command, Stdio};

    use super::*;
    use crate::backend::BackendAuth;

    pub(in crate::snapshot) const T: Duration = Duration::from_secs(10);

    /// A status, integer or bulk reply as text.
    fn reply_text(reply: &[u8]) -> String {
        let text = line_payload(reply).or_else(|| bulk_payload(reply)).unwrap_or_default();
        String::from_utf8_lossy(text).into_owned()
    }

    /// A `redis-server` on a free loopback port in its own temp dir, killed by pid on drop.
    pub(in crate::snapshot) struct Node {
        child: Child,
        port: u16,
        dir: tempfile::TempDir,
    }

    impl Node {
        pub(in crate::snapshot) fn start(extra: &[&str]) -> Node {
            let dir = tempfile::tempdir().unwrap();
            let port = ports::free_port();
            let log = std::fs::File::create(dir.path().join("redis.log")).unwrap();
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .args(["--enable-debug-command", "yes"])
                .arg("--dir")
                .arg(dir.path())
                .args(extra)
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .stdin(Stdio::null())
                .spawn()
                .unwrap();
            let mut node = Node { child, port, dir };
            let started = Instant::now();
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                if node.child.try_wait().unwrap().is_some() || started.elapsed() > T {
                    panic!("redis on {port} did not start: {}", node.log());
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            node
        }

        pub(in crate::snapshot) fn addr(&self) -> String {
            format!("127.0.0.1:{}", self.port)
        }

        fn log(&self) -> String {
            std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
        }

        async fn control(&self) -> AdminConn {
            AdminConn::connect(&self.addr(), T, &NodeAccess::default()).await.unwrap()
        }

        /// A status, integer or bulk reply as text.
        pub(in crate::snapshot) async fn cmd(&self, args: &[&str]) -> String {
            match self.control().await.call(args).await {
                Ok(reply) => reply_text(&reply),
                Err(e) => panic!("{args:?} on {}: {e}", self.port),
            }
        }

        async fn int(&self, args: &[&str]) -> i64 {
            self.cmd(args).await.parse().unwrap()
        }

        async fn info(&self, name: &str) -> Option<String> {
            let info = info(&mut self.control().await).await.unwrap();
            info_field(&info, name).map(str::to_owned)
        }

        /// Sends `commands` in one pipeline and checks none failed.
        pub(in crate::snapshot) async fn pipeline(&self, commands: &[Vec<String>]) {
            let mut control = self.control().await;
            let batch: Vec<u8> = commands.iter().flat_map(|c| encode_command(c).to_vec()).collect();
            control.send_raw(&batch).await.unwrap();
            for command in commands {
                if let Err(e) = control.reply().await {
                    panic!("{command:?}: {e}");
                }
            }
        }
    }

    impl Drop for Node {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// `keys` keys of every common type under `prefix`, some with expiries, and one value big
    /// enough to span many reads.
    pub(in crate::snapshot) fn dataset(prefix: &str, keys: usize) -> Vec<Vec<String>> {
        let mut commands: Vec<Vec<String>> = (0..keys)
            .map(|i| {
                let words = match i % 7 {
                    0 => format!("SET {prefix}:str:{i} value-{i}"),
                    1 => format!("SET {prefix}:ttl:{i} value-{i} PX 3600000"),
                    2 => format!("HSET {prefix}:hash:{i} f1 {i} f2 two"),
                    3 => format!("RPUSH {prefix}:list:{i} a b {i}"),
                    4 => format!("SADD {prefix}:set:{i} a b {i}"),
                    5 => format!("ZADD {prefix}:zset:{i} 1 a 2 b {i} c"),
                    _ => format!("XADD {prefix}:stream:{i} * f {i}"),
                };
                words.split(' ').map(str::to_owned).collect()
            })
            .collect();
        commands.extend(
            (0..keys)
                .step_by(70)
                .map(|i| ["EXPIRE".to_string(), format!("{prefix}:hash:{}", i + 2), "7200".to_string()].to_vec()),
        );
        commands.push(["SET".to_string(), format!("{prefix}:blob"), "x".repeat(300_000)].to_vec());
        commands
    }

    pub(in crate::snapshot) async fn fetch_to(node: &Node, path: &Path) -> Result<u64, RdbError> {
        let mut file = tokio::fs::File::create(path).await.unwrap();
        fetch(&node.addr(), &mut file, T, &NodeAccess::default()).await
    }

    async fn wait_for(node: &Node, name: &str, value: &str) {
        let started = Instant::now();
        while node.info(name).await.as_deref() != Some(value) {
            assert!(started.elapsed() < T, "{name} never became {value} on {}: {}", node.port, node.log());
            tokio::time::sleep(POLL_EVERY).await;
        }
    }

    fn assert_corrupt(result: Result<(), RdbError>, what: &str) {
        match result {
            Err(RdbError::Corrupt { reason }) => eprintln!("{what}: rejected ({reason})"),
            other => panic!("{what}: expected Corrupt, got {other:?}"),
        }
    }

    /// An RDB of `contents` with a correct or given trailer, as Redis would write it.
    fn synthetic_rdb(version: &str, contents: &[u8]) -> Vec<u8> {
        let mut rdb = format!("REDIS{version}").into_bytes();
        rdb.extend_from_slice(contents);
        rdb.push(EOF_OPCODE);
        let crc = crc64(0, &rdb);
        rdb.extend_from_slice(&crc.to_le_bytes());
        rdb
    }

    #[test]
    fn crc64_matches_the_redis_check_value() {
        assert_eq!(crc64(0, b"123456789"), 0xe9c6d914c4b8d9ca);
        // Split anywhere, the running CRC is the same; byte by byte is the plain table algorithm.
        assert_eq!(crc64(crc64(0, b"1234"), b"56789"), 0xe9c6d914c4b8d9ca);
        let data: Vec<u8> = (0..1000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        let bytewise = data.iter().fold(0, |crc, &b| crc64(crc, &[b]));
        for len in [0, 1, 7, 8, 9, 15, 16, 17, 999, 1000] {
            let bytewise = data[..len].iter().fold(0, |crc, &b| crc64(crc, &[b]));
            assert_eq!(crc64(0, &data[..len]), bytewise, "length {len}");
        }
        assert_eq!(crc64(crc64(0, &data[..333]), &data[333..]), bytewise);
    }

    #[test]
    fn the_checker_gives_the_same_verdict_whatever_the_chunking() {
        let good = synthetic_rdb("0010", &(0..=255u8).cycle().take(5000).collect::<Vec<_>>());
        let mut flipped = good.clone();
        flipped[2500] ^= 0x20;
        let mut no_checksum = good.clone();
        let at = no_checksum.len() - CHECKSUM_LEN;
        no_checksum[at..].fill(0);
        for chunk in [1, 3, 7, 8, 9, 17, 4096, good.len()] {
            let check = |bytes: &[u8]| {
                let mut check = RdbCheck::default();
                bytes.chunks(chunk).try_for_each(|c| check.update(c))?;
                check.finish()
            };
            check(&good).unwrap_or_else(|e| panic!("chunks of {chunk}: {e}"));
            check(&no_checksum).unwrap_or_else(|e| panic!("chunks of {chunk}, checksum 0: {e}"));
            assert_corrupt(check(&flipped), "flipped byte");
            assert_corrupt(check(&good[..good.len() - 1]), "one byte short");
            assert_corrupt(check(&good[..4]), "shorter than the header");
            assert_corrupt(check(b"REDIX0010\xff\0\0\0\0\0\0\0\0"), "bad magic");
            assert_corrupt(check(b"REDIS00a0\xff\0\0\0\0\0\0\0\0"), "bad version");
        }
        assert_corrupt(RdbCheck::default().finish(), "empty");
    }

    #[tokio::test]
    async fn fetch_then_load_replaces_a_nodes_data_with_the_snapshot() {
        let source = Node::start(&[]);
        source.pipeline(&dataset("src", 10_000)).await;
        let target = Node::start(&[]);
        target.pipeline(&dataset("old", 500)).await;
        target.cmd(&["SET", "src:str:0", "not the snapshot's"]).await;
        let source_digest = source.cmd(&["DEBUG", "DIGEST"]).await;
        assert_ne!(target.cmd(&["DEBUG", "DIGEST"]).await, source_digest);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snapshot.rdb");
        let started = Instant::now();
        let bytes = fetch_to(&source, &path).await.unwrap();
        let fetched_in = started.elapsed();
        assert_eq!(bytes, std::fs::metadata(&path).unwrap().len());
        verify(&path).unwrap();

        let started = Instant::now();
        load(&target.addr(), &path, "127.0.0.1".parse().unwrap(), T, &NodeAccess::default()).await.unwrap();
        let loaded_in = started.elapsed();
        eprintln!("10k keys: {bytes} bytes of RDB, fetch {fetched_in:?}, load {loaded_in:?}");

        assert_eq!(target.cmd(&["DEBUG", "DIGEST"]).await, source_digest);
        assert_eq!(target.int(&["DBSIZE"]).await, source.int(&["DBSIZE"]).await);
        assert_eq!(target.int(&["EXISTS", "old:str:0"]).await, 0);
        assert_eq!(target.cmd(&["GET", "src:str:0"]).await, "value-0");
        let ttl = target.int(&["TTL", "src:ttl:1"]).await;
        assert!((3500..=3600).contains(&ttl), "TTL after load: {ttl}");
        assert_eq!(target.info("role").await.as_deref(), Some("master"));
        // A primary again: it takes writes.
        target.cmd(&["SET", "after", "load"]).await;
    }

    #[tokio::test]
    async fn fetch_from_a_replica_holds_the_primarys_data() {
        // No 5 s wait before the replica's own (diskless) initial sync.
        let primary = Node::start(&["--repl-diskless-sync-delay", "0"]);
        primary.pipeline(&dataset("p", 2_000)).await;
        let replica = Node::start(&["--replicaof", "127.0.0.1", &primary.port.to_string()]);
        wait_for(&replica, "master_link_status", "up").await;
        let digest = primary.cmd(&["DEBUG", "DIGEST"]).await;
        let started = Instant::now();
        while replica.cmd(&["DEBUG", "DIGEST"]).await != digest {
            assert!(started.elapsed() < T, "the replica never caught up");
            tokio::time::sleep(POLL_EVERY).await;
        }

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("from-replica.rdb");
        fetch_to(&replica, &path).await.unwrap();
        verify(&path).unwrap();
        // The replica kept following its primary while it served the snapshot.
        assert_eq!(replica.info("master_link_status").await.as_deref(), Some("up"));

        let target = Node::start(&[]);
        load(&target.addr(), &path, "127.0.0.1".parse().unwrap(), T, &NodeAccess::default()).await.unwrap();
        assert_eq!(target.cmd(&["DEBUG", "DIGEST"]).await, digest);
    }

    #[tokio::test]
    async fn verify_rejects_a_flipped_byte_and_a_truncated_file() {
        let source = Node::start(&[]);
        source.cmd(&["DEBUG", "POPULATE", "2000"]).await;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("good.rdb");
        fetch_to(&source, &path).await.unwrap();
        verify(&path).unwrap();
        let good = std::fs::read(&path).unwrap();

        let write = |name: &str, bytes: &[u8]| {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            path
        };
        let mut flipped = good.clone();
        flipped[good.len() / 2] ^= 1;
        assert_corrupt(verify(&write("flipped.rdb", &flipped)), "flipped byte");
        assert_corrupt(verify(&write("half.rdb", &good[..good.len() / 2])), "half the file");
        assert_corrupt(verify(&write("short.rdb", &good[..good.len() - 1])), "one byte short");
        assert_corrupt(verify(&write("empty.rdb", b"")), "empty file");
        assert!(matches!(verify(&dir.path().join("missing.rdb")), Err(RdbError::Io(_))));
    }

    #[tokio::test]
    async fn loading_a_corrupt_file_leaves_the_node_a_primary_with_its_data() {
        let source = Node::start(&[]);
        source.cmd(&["DEBUG", "POPULATE", "1000"]).await;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snapshot.rdb");
        fetch_to(&source, &path).await.unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();

        let target = Node::start(&[]);
        target.pipeline(&dataset("old", 300)).await;
        let digest = target.cmd(&["DEBUG", "DIGEST"]).await;
        let loaded = load(&target.addr(), &path, "127.0.0.1".parse().unwrap(), T, &NodeAccess::default()).await;
        assert_corrupt(loaded, "load of a corrupt file");
        assert_eq!(target.info("role").await.as_deref(), Some("master"));
        assert_eq!(target.cmd(&["DEBUG", "DIGEST"]).await, digest);
    }

    #[tokio::test]
    async fn a_load_the_node_fails_leaves_it_a_primary() {
        // Checksummed correctly, but from a format this Redis cannot read: the node takes the
        // whole transfer, flushes, fails to load it and drops the link.
        let path = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(path.path(), synthetic_rdb("0099", b"")).unwrap();
        verify(path.path()).unwrap();
        let target = Node::start(&[]);
        target.cmd(&["SET", "k", "v"]).await;

        let started = Instant::now();
        let loaded = load(&target.addr(), path.path(), "127.0.0.1".parse().unwrap(), T, &NodeAccess::default()).await;
        let error = loaded.expect_err("a failed load returned Ok");
        eprintln!("failed load: {error}");
        assert!(target.log().contains("Can't handle RDB format version 99"), "{}", target.log());
        assert!(started.elapsed() < T, "it took the whole timeout: {:?}", started.elapsed());
        assert_eq!(target.info("role").await.as_deref(), Some("master"), "{}", target.log());
        assert_eq!(target.cmd(&["PING"]).await, "PONG");
        eprintln!("keys left after the failed load: {}", target.int(&["DBSIZE"]).await);
    }

    #[tokio::test]
    async fn fetch_from_a_node_that_wants_a_password_is_a_redis_error() {
        let node = Node::start(&["--requirepass", "x"]);
        let mut out = Vec::new();
        let started = Instant::now();
        match fetch(&node.addr(), &mut out, T, &NodeAccess::default()).await {
            Err(RdbError::Redis(reply)) => assert!(reply.starts_with("NOAUTH"), "{reply}"),
            other => panic!("expected a NOAUTH error, got {other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(out.is_empty());
        let path = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(path.path(), synthetic_rdb("0010", b"")).unwrap();
        match load(&node.addr(), path.path(), "127.0.0.1".parse().unwrap(), T, &NodeAccess::default()).await {
            Err(RdbError::Redis(reply)) => assert!(reply.contains("NOAUTH"), "{reply}"),
            other => panic!("expected a NOAUTH error, got {other:?}"),
        }
    }

    /// Runs the primary side of the handshake (one-time secret `s3cret`) against `sent`;
    /// returns its verdict and answers.
    async fn handshake_with(sent: &[u8]) -> (Result<SyncRequest, RdbError>, Vec<u8>) {
        let listener = TcpListener::bind(("127.0.0.1", ports::free_port())).await.unwrap();
        let mut replica_side = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (mut primary_side, _) = listener.accept().await.unwrap();
        replica_side.write_all(sent).await.unwrap();
        replica_side.shutdown().await.unwrap();
        let verdict = replica_handshake(&mut primary_side, "s3cret", T).await;
        drop(primary_side);
        let mut answers = Vec::new();
        replica_side.read_to_end(&mut answers).await.unwrap();
        (verdict, answers)
    }

    #[tokio::test]
    async fn the_primary_side_answers_only_a_replica_with_the_one_time_credential() {
        let noauth = b"-NOAUTH Authentication required.\r\n";
        let sent = b"*1\r\n$4\r\nPING\r\n*3\r\n$4\r\nAUTH\r\n$20\r\nmemlog-snapshot-load\r\n$6\r\ns3cret\r\n\
            *5\r\n$8\r\nREPLCONF\r\n$4\r\ncapa\r\n$3\r\neof\r\n$4\r\ncapa\r\n$6\r\npsync2\r\n\
            *1\r\n$4\r\nPING\r\n*1\r\n$3\r\nFOO\r\n*3\r\n$5\r\nPSYNC\r\n$1\r\n?\r\n$2\r\n-1\r\n";
        let (verdict, answers) = handshake_with(sent).await;
        assert_eq!(verdict.unwrap(), SyncRequest::Psync);
        assert_eq!(answers, [&noauth[..], b"+OK\r\n+OK\r\n+PONG\r\n-ERR unknown command\r\n"].concat());

        let (verdict, answers) = handshake_with(b"AUTH memlog-snapshot-load s3cret\r\nSYNC\r\n").await;
        assert_eq!(verdict.unwrap(), SyncRequest::Sync);
        assert_eq!(answers, b"+OK\r\n");

        // Without the credential a peer gets nothing but -NOAUTH to a PING, and is closed.
        for refused in [
            &b"PING\r\nPSYNC ? -1\r\n"[..],
            b"SYNC\r\n",
            b"REPLCONF capa eof\r\nSYNC\r\n",
            b"PING\r\nAUTH memlog-snapshot-load s3creT\r\nSYNC\r\n",
            b"AUTH s3cret\r\nSYNC\r\n",
            b"AUTH default s3cret\r\nSYNC\r\n",
        ] {
            let (verdict, answers) = handshake_with(refused).await;
            assert!(matches!(verdict, Err(RdbError::Redis(_))), "{verdict:?}");
            assert!(answers.is_empty() || answers == noauth, "{:?} got {:?}", shown(refused), shown(&answers));
        }

        let (verdict, _) = handshake_with(b"*1\r\n$4\r\nPING\r\n*x\r\n").await;
        assert!(matches!(verdict, Err(RdbError::Redis(_))), "{verdict:?}");
        let (verdict, _) = handshake_with(b"*1\r\n$4\r\nPI").await;
        assert!(matches!(verdict, Err(RdbError::Io(_))), "{verdict:?}");
    }

    /// Connects to the snapshot-serving port, tries a replica's handshake with a guessed
    /// credential, and returns what it got; `None` if it could not connect.
    async fn probe_serving_port(port: u16) -> Option<Vec<u8>> {
        let mut probe = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        let guess = b"PING\r\nAUTH memlog-snapshot-load guess\r\nREPLCONF capa eof\r\nPSYNC ? -1\r\nSYNC\r\n";
        let _ = probe.write_all(guess).await;
        let mut got = Vec::new();
        let _ = tokio::time::timeout(T, probe.read_to_end(&mut got)).await.expect("the probe was closed");
        Some(got)
    }

    #[tokio::test]
    async fn a_probe_of_the_serving_port_during_a_load_gets_nothing_and_the_load_succeeds() {
        let auth = Some(std::sync::Arc::new(BackendAuth { user: None, password: "node-password".into() }));
        let access = NodeAccess { auth, tls: None };
        let source = Node::start(&[]);
        source.pipeline(&dataset("src", 20_000)).await;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snapshot.rdb");
        fetch_to(&source, &path).await.unwrap();
        let digest = source.cmd(&["DEBUG", "DIGEST"]).await;

        // The node wants a password; the proxy has it, the probe does not.
        let target = Node::start(&["--requirepass", "node-password"]);
        let addr = target.addr();
        let load_access = access.clone();
        let load = tokio::spawn(async move { load(&addr, &path, "127.0.0.1".parse().unwrap(), T, &load_access).await });
        let mut control = AdminConn::connect(&target.addr(), T, &access).await.unwrap();
        let started = Instant::now();
        let port = loop {
            let info = info(&mut control).await.unwrap();
            if let Some(port) = info_field(&info, "master_port") {
                break port.parse::<u16>().unwrap();
            }
            assert!(started.elapsed() < T && !load.is_finished(), "the node never got REPLICAOF");
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        // A silent peer holds a connection open meanwhile: it must not keep the node out.
        let silent = TcpStream::connect(("127.0.0.1", port)).await;
        let probed = probe_serving_port(port).await;
        load.await.unwrap().expect("the load succeeded despite the probes");
        let got = probed.expect("the probe reached the serving port while the load ran");
        assert!(got.is_empty() || got == b"-NOAUTH Authentication required.\r\n", "the probe got {:?}", shown(&got));
        drop(silent);
        let digest_after = reply_text(&control.call(&["DEBUG", "DIGEST"]).await.unwrap());
        assert_eq!(digest_after, digest);
        assert_eq!(info_field(&info(&mut control).await.unwrap(), "role"), Some("master"));
    }

    /// The serving port's TLS side as `load` runs it under `[backend] tls`: a peer in plain TCP
    /// and a TLS peer presenting a certificate of another CA get no session, so nothing they send
    /// is read; a TLS peer without a certificate (a node with none configured) is read, and still
    /// needs the one-time credential.
    #[tokio::test]
    async fn under_tls_the_serving_port_refuses_plain_peers_and_other_cas_and_still_wants_the_credential() {
        use crate::backend::BackendTls;
        use crate::config::BackendConfig;
        use journal_service::cluster_ca::ClusterCa;

        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: String| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            Some(path.display().to_string())
        };
        let names = || vec!["127.0.0.1".to_string()];
        let (nodes_ca, other_ca) =
            (ClusterCa::generate_named("nodes").unwrap(), ClusterCa::generate_named("other").unwrap());
        let (proxy, stranger) =
            (nodes_ca.issue_for_names(names()).unwrap(), other_ca.issue_for_names(names()).unwrap());
        let ca = write("ca.pem", nodes_ca.cert_pem());
        let tls = |cert, key| {
            let cfg = BackendConfig { tls: true, ca: ca.clone(), cert, key, ..BackendConfig::default() };
            BackendTls::from_config(&cfg).unwrap().unwrap()
        };
        let serving = tls(write("proxy.pem", proxy.cert), write("proxy.key", proxy.key));
        let acceptor = serving.serving_acceptor().unwrap();
        let anonymous = tls(None, None);
        let strange = tls(write("stranger.pem", stranger.cert), write("stranger.key", stranger.key));
        let listener = TcpListener::bind(("127.0.0.1", ports::free_port())).await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();

        let (listener, acceptor) = (&listener, &acceptor);
        let serve_one = || async move {
            let (tcp, _) = listener.accept().await?;
            let mut peer = accept(tcp, Some(acceptor.clone()), T).await?;
            replica_handshake(&mut peer, "s3cret", T).await
        };
        let sync = b"AUTH memlog-snapshot-load s3cret\r\nSYNC\r\n";
        // What a peer gets back for `sent`, and its TLS error if the session never came up.
        let talk = |via: Option<&BackendTls>, sent: &'static [u8]| {
            let via = via.map(|tls| (tls.connector(), tls.name_for(&addr).unwrap()));
            let addr = addr.clone();
            async move {
                let tcp = TcpStream::connect(&addr).await.unwrap();
                let mut got = Vec::new();
                match via {
                    None => {
                        let mut tcp = tcp;
                        tcp.write_all(sent).await.unwrap();
                        let _ = tcp.read_to_end(&mut got).await;
                    }
                    Some((connector, name)) => {
                        if let Ok(mut tls) = connector.connect(name, tcp).await {
                            let _ = tls.write_all(sent).await;
                            let _ = tls.read_to_end(&mut got).await;
                        }
                    }
                }
                got
            }
        };

        let (served, got) = tokio::join!(serve_one(), talk(None, sync));
        assert!(matches!(served, Err(RdbError::Io(_))), "a plain peer: {served:?}");
        assert!(!got.windows(3).any(|w| w == b"+OK"), "a plain peer got {:?}", shown(&got));
        let (served, got) = tokio::join!(serve_one(), talk(Some(&strange), sync));
        assert!(matches!(served, Err(RdbError::Io(_))), "another CA's certificate: {served:?}");
        assert!(got.is_empty(), "a peer with another CA's certificate got {:?}", shown(&got));
        let (served, got) =
            tokio::join!(serve_one(), talk(Some(&anonymous), b"AUTH memlog-snapshot-load guess\r\nSYNC\r\n"));
        assert!(matches!(served, Err(RdbError::Redis(_))), "a wrong credential over TLS: {served:?}");
        assert!(got.is_empty(), "a wrong credential over TLS got {:?}", shown(&got));
        let (served, got) = tokio::join!(serve_one(), talk(Some(&anonymous), sync));
        assert_eq!(served.unwrap(), SyncRequest::Sync);
        assert_eq!(got, b"+OK\r\n");
    }

    /// A fake node on a free port that answers `SYNC` with `pieces`, written one by one, then
    /// holds the connection open (as a node streaming its feed would) or closes it.
    async fn fake_node(pieces: Vec<Vec<u8>>, hold_open: bool) -> (String, tokio::task::JoinHandle<()>) {
        let addr = format!("127.0.0.1:{}", ports::free_port());
        let listener = TcpListener::bind(&addr).await.unwrap();
        let serve = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut request = [0; 14];
            conn.read_exact(&mut request).await.unwrap();
            assert_eq!(&request, b"*1\r\n$4\r\nSYNC\r\n");
            for piece in pieces {
                if conn.write_all(&piece).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            if hold_open {
                let _ = conn.read(&mut [0; 1]).await;
            }
        });
        (addr, serve)
    }

    #[tokio::test]
    async fn fetch_reads_the_diskless_end_mark_form() {
        let rdb = synthetic_rdb("0010", &b"diskless payload ".repeat(10_000));
        let mark = [b'a'; EOF_MARK_LEN - 1].iter().chain(b"z").copied().collect::<Vec<_>>();
        let mut stream = b"$EOF:".to_vec();
        stream.extend_from_slice(&mark);
        stream.extend_from_slice(b"\r\n");
        stream.extend_from_slice(&rdb);
        stream.extend_from_slice(&mark);
        stream.extend_from_slice(b"*1\r\n$4\r\nPING\r\n");
        // Keep-alives first; then cuts that split the mark and the RDB at awkward places.
        let mark_at = stream.len() - mark.len() - 14;
        let mut pieces = vec![b"\n".to_vec(), b"\n".to_vec()];
        let mut cut = 0;
        for next in [3, 50, 1000, mark_at - 20, mark_at + 5, mark_at + 39, stream.len()] {
            pieces.push(stream[cut..next].to_vec());
            cut = next;
        }
        let (addr, serve) = fake_node(pieces, true).await;
        let mut out = Vec::new();
        let bytes = fetch(&addr, &mut out, T, &NodeAccess::default()).await.unwrap();
        assert_eq!(bytes, rdb.len() as u64);
        assert!(out == rdb, "the fetched bytes differ from the RDB sent");
        serve.abort();
    }

    #[tokio::test]
    async fn fetch_rejects_a_sized_payload_that_is_corrupt_or_cut_short() {
        let mut rdb = synthetic_rdb("0010", &b"payload ".repeat(1000));
        let middle = rdb.len() / 2;
        rdb[middle] ^= 1;
        let mut corrupt = format!("${}\r\n", rdb.len()).into_bytes();
        corrupt.extend_from_slice(&rdb);
        let (addr, serve) = fake_node(vec![corrupt], true).await;
        assert!(matches!(
            fetch(&addr, &mut Vec::new(), T, &NodeAccess::default()).await,
            Err(RdbError::Corrupt { .. })
        ));
        serve.abort();

        let mut short = format!("${}\r\n", rdb.len() + 100).into_bytes();
        short.extend_from_slice(&rdb);
        let (addr, serve) = fake_node(vec![short], false).await;
        match fetch(&addr, &mut Vec::new(), T, &NodeAccess::default()).await {
            Err(RdbError::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof),
            other => panic!("expected an I/O error, got {other:?}"),
        }
        serve.await.unwrap();
    }

    #[tokio::test]
    async fn fetch_from_a_silent_node_times_out() {
        let (addr, serve) = fake_node(Vec::new(), true).await;
        let started = Instant::now();
        let fetched = fetch(&addr, &mut Vec::new(), Duration::from_millis(300), &NodeAccess::default()).await;
        assert!(matches!(fetched, Err(RdbError::Timeout(_))), "{fetched:?}");
        assert!(started.elapsed() < Duration::from_secs(2));
        serve.abort();
    }
}

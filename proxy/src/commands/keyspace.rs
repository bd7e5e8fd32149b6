//! Whole-keyspace commands answered as one Redis would, over every shard: DBSIZE, KEYS, SCAN
//! (a cursor that encodes the shard), RANDOMKEY and FLUSHALL/FLUSHDB (through the sequencers),
//! each in the client's database. The internal key `__memlog:lsn` never shows. The read-only ones run when their reply
//! is due (`Pending::Deferred`), so they see every earlier write of the same client.

use bytes::Bytes;
use redis_protocol::resp2::types::BytesFrame;

use crate::backend::BackendConn;
use crate::context::ClientCtx;
use crate::keys::LSN_KEY;
use crate::replies::Pending;
use crate::resp::decode_resp2;
use crate::resp::{encode_command, reply, Proto, Request};

pub(crate) async fn run(d: &mut ClientCtx, name: &str, request: &Request) -> Pending {
    let proto = d.proto();
    let proxy = d.proxy.clone();
    let conns: Vec<Db> = proxy
        .shards
        .iter()
        .map(|s| Db { conn: s.read_conn(Proto::Resp2, d.client.id).clone(), db: d.client.db() })
        .collect();
    let args: Vec<Bytes> = request.args.clone();
    match name {
        "flushall" | "flushdb" => {
            let mut parts = Vec::with_capacity(proxy.shards.len());
            for shard in 0..proxy.shards.len() {
                parts.push(d.send_to_shard(shard, request.clone(), true).await);
            }
            Pending::Merge { parts, merge: Box::new(crate::routing::first_error_else_first) }
        }
        "dbsize" => deferred(async move {
            let total = user_key_counts(&conns).await?.iter().sum::<i64>();
            Ok(reply(proto, |w| {
                w.int(total);
            }))
        }),
        "keys" => deferred(async move {
            let mut keys = Vec::new();
            for conn in &conns {
                for key in bulk_array(&conn.call(&[&b"KEYS"[..], &args[1]]).await?)? {
                    if key[..] != *LSN_KEY {
                        keys.push(key);
                    }
                }
            }
            Ok(reply(proto, |w| {
                w.array(keys.len());
                for key in &keys {
                    w.bulk(key);
                }
            }))
        }),
        "scan" => {
            let Some(cursor) = std::str::from_utf8(&args[1]).ok().and_then(|c| c.parse::<u128>().ok()) else {
                return Pending::error("ERR invalid cursor");
            };
            deferred(async move { scan(&conns, cursor, &args[2..], proto).await })
        }
        "randomkey" => deferred(async move { random_key(&conns, proto).await }),
        _ => Pending::error(&format!("ERR memlog: no keyspace handler for '{name}'")),
    }
}

pub(super) fn deferred(work: impl std::future::Future<Output = Result<Bytes, String>> + Send + 'static) -> Pending {
    Pending::Deferred(Box::pin(async move {
        match work.await {
            Ok(reply) => reply,
            Err(e) => crate::resp::error_reply(&e),
        }
    }))
}

/// Sends one command; a Redis error reply comes back as `Err` with Redis's own text.
pub(super) async fn call(conn: &BackendConn, args: &[&[u8]]) -> Result<BytesFrame, String> {
    Db { conn: conn.clone(), db: 0 }.call(args).await
}

/// A shard's read connection, used in one database.
struct Db {
    conn: BackendConn,
    db: u8,
}

impl Db {
    /// Sends one command in the database; a Redis error reply comes back as `Err` with Redis's
    /// own text.
    async fn call(&self, args: &[&[u8]]) -> Result<BytesFrame, String> {
        let raw = self.conn.call_in_db(self.db, encode_command(args)).await.map_err(|e| format!("ERR memlog: {e}"))?;
        match decode_resp2(&raw).map_err(|e| format!("ERR memlog: {e}"))? {
            BytesFrame::Error(msg) => Err(msg.to_string()),
            frame => Ok(frame),
        }
    }
}

fn bulk_array(frame: &BytesFrame) -> Result<Vec<Bytes>, String> {
    match frame {
        BytesFrame::Array(items) => Ok(items
            .iter()
            .filter_map(|i| match i {
                BytesFrame::BulkString(b) => Some(b.clone()),
                _ => None,
            })
            .collect()),
        _ => Err("ERR memlog: unexpected reply from a shard".into()),
    }
}

pub(super) fn integer(frame: &BytesFrame) -> Result<i64, String> {
    match frame {
        BytesFrame::Integer(n) => Ok(*n),
        _ => Err("ERR memlog: unexpected reply from a shard".into()),
    }
}

/// Each shard's number of keys, not counting `__memlog:lsn`.
async fn user_key_counts(conns: &[Db]) -> Result<Vec<i64>, String> {
    let mut counts = Vec::with_capacity(conns.len());
    for conn in conns {
        let (size, internal) = tokio::join!(conn.call(&[b"DBSIZE"]), conn.call(&[b"EXISTS", LSN_KEY]));
        counts.push(integer(&size?)? - integer(&internal?)?);
    }
    Ok(counts)
}

/// Visits every key of one shard (except `__memlog:lsn`) with SCAN.
pub(crate) async fn scan_keys(conn: &BackendConn, mut visit: impl FnMut(&Bytes)) -> Result<(), String> {
    let mut cursor = Bytes::from_static(b"0");
    loop {
        let page = call(conn, &[b"SCAN", &cursor, b"COUNT", b"1000"]).await?;
        let BytesFrame::Array(page) = page else { return Err("ERR memlog: bad SCAN reply".into()) };
        let [BytesFrame::BulkString(next), keys] = &page[..] else { return Err("ERR memlog: bad SCAN reply".into()) };
        for key in bulk_array(keys)? {
            if key[..] != *LSN_KEY {
                visit(&key);
            }
        }
        if &next[..] == b"0" {
            return Ok(());
        }
        cursor = next.clone();
    }
}

/// SCAN over all shards. The client's cursor is `backend_cursor * shards + shard`: 0 starts at
/// shard 0, and a shard's end moves on to the next shard with a backend cursor of 0.
async fn scan(conns: &[Db], cursor: u128, options: &[Bytes], proto: Proto) -> Result<Bytes, String> {
    let shards = conns.len() as u128;
    let shard = (cursor % shards) as usize;
    let backend_cursor = (cursor / shards).to_string();
    let mut args: Vec<&[u8]> = vec![b"SCAN", backend_cursor.as_bytes()];
    args.extend(options.iter().map(|o| &o[..]));
    let page = conns[shard].call(&args).await?;
    let BytesFrame::Array(page) = page else { return Err("ERR memlog: bad SCAN reply".into()) };
    let [BytesFrame::BulkString(next), keys] = &page[..] else { return Err("ERR memlog: bad SCAN reply".into()) };
    let next: u128 =
        std::str::from_utf8(next).ok().and_then(|n| n.parse().ok()).ok_or("ERR memlog: bad SCAN cursor")?;
    let next = if next != 0 {
        next * shards + shard as u128
    } else if shard + 1 < conns.len() {
        shard as u128 + 1
    } else {
        0
    };
    let keys: Vec<Bytes> = bulk_array(keys)?.into_iter().filter(|k| k[..] != *LSN_KEY).collect();
    Ok(reply(proto, |w| {
        w.array(2).bulk(next.to_string().as_bytes()).array(keys.len());
        for key in &keys {
            w.bulk(key);
        }
    }))
}

/// A random key: shards are tried from a random one on, so every non-empty shard can answer.
async fn random_key(conns: &[Db], proto: Proto) -> Result<Bytes, String> {
    let start = (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().subsec_nanos()
        as usize)
        % conns.len();
    for i in 0..conns.len() {
        let conn = &conns[(start + i) % conns.len()];
        // Redis may pick the internal key; a few more draws find a user key if there is one.
        for _ in 0..16 {
            match conn.call(&[b"RANDOMKEY"]).await? {
                BytesFrame::BulkString(key) if key[..] != *LSN_KEY => {
                    return Ok(reply(proto, |w| {
                        w.bulk(&key);
                    }))
                }
                BytesFrame::BulkString(_) => continue,
                _ => break,
            }
        }
    }
    Ok(reply(proto, |w| {
        w.null();
    }))
}

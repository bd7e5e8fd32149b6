//! `memlog import verify SOURCE_URL --to URL`: the key sets of both sides (SCAN), then for each
//! key its type, value and TTL. Values are compared by content, not by DUMP bytes (the same
//! value can be encoded differently on each side): sets and hashes as sorted members, streams
//! as their entries plus each consumer group's state and pending summary.

use std::collections::HashSet;

use bytes::Bytes;
use redis_protocol::resp2::types::BytesFrame;

use super::conn::Conn;
use super::progress::print_line;
use super::rdb::now_ms;
use super::source::{scan_all, Nodes};
use super::{show, SourceArgs, TargetArgs};

/// TTLs further apart than this are a difference.
const TTL_TOLERANCE_MS: i64 = 1000;
/// Keys fetched together (pipelined) from each side.
const BATCH: usize = 200;

#[derive(clap::Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    source: SourceArgs,
    #[command(flatten)]
    target: TargetArgs,
    /// Check N randomly chosen source keys (RANDOMKEY) instead of every key; the key counts
    /// (DBSIZE) are still compared.
    #[arg(long, value_name = "N")]
    sample: Option<u64>,
}

/// A key's state on one side: type, expiry, value by content.
#[derive(Debug, PartialEq)]
struct KeyState {
    kind: String,
    expiry: Expiry,
    value: Vec<BytesFrame>,
}

/// A key's expiry as one side reported it. A TTL is turned into an absolute time (Unix ms) as
/// its reply arrives, so that the seconds between reading the source and reading memlog (many,
/// on a loaded machine or over a slow link) do not show up as a TTL difference.
#[derive(Debug, PartialEq, Clone, Copy)]
enum Expiry {
    Missing,
    Never,
    At(i64),
}

impl Expiry {
    /// From a `PTTL` reply (-2 missing, -1 no expiry) read at `now_ms`.
    fn from_pttl(pttl: i64, now_ms: i64) -> Expiry {
        match pttl {
            -2 => Expiry::Missing,
            ttl if ttl < 0 => Expiry::Never,
            ttl => Expiry::At(now_ms + ttl),
        }
    }
}

pub async fn run(args: VerifyArgs) -> anyhow::Result<()> {
    let source_endpoint = args.source.endpoint()?;
    let source =
        if args.source.cluster { Nodes::cluster(source_endpoint).await? } else { Nodes::single(source_endpoint) };
    let mut source_conns = source.connect_all().await?;
    let mut target = Conn::connect(&args.target.endpoint()?).await?;
    let mut differences = 0u64;
    let mut report = |line: String| {
        differences += 1;
        print_line(line)
    };

    let keys: Vec<Bytes> = match args.sample {
        None => {
            let mut source_keys = HashSet::new();
            for conn in &mut source_conns {
                source_keys.extend(scan_all(conn).await?);
            }
            let target_keys: HashSet<Bytes> = scan_all(&mut target).await?.into_iter().collect();
            for key in target_keys.difference(&source_keys) {
                report(format!("extra on target: {}", show(key)))?;
            }
            source_keys.into_iter().collect()
        }
        Some(n) => {
            let mut source_size = 0;
            for conn in &mut source_conns {
                source_size += integer(conn.call(&[b"DBSIZE"]).await?)?;
            }
            let target_size = integer(target.call(&[b"DBSIZE"]).await?)?;
            if source_size != target_size {
                report(format!("key count differs: source {source_size}, target {target_size}"))?;
            }
            let mut sample = HashSet::new();
            for i in 0..n {
                let conn = &mut source_conns[usize::try_from(i).unwrap_or(usize::MAX) % source.endpoints.len()];
                if let BytesFrame::BulkString(key) = conn.call(&[b"RANDOMKEY"]).await? {
                    sample.insert(key);
                }
            }
            sample.into_iter().collect()
        }
    };

    let mut checked = 0;
    for batch in keys.chunks(BATCH) {
        let mut on_source: Vec<Option<KeyState>> = batch.iter().map(|_| None).collect();
        for (node, conn) in source_conns.iter_mut().enumerate() {
            let mine: Vec<usize> = (0..batch.len()).filter(|&i| source.node_of(&batch[i]) == node).collect();
            let node_keys: Vec<Bytes> = mine.iter().map(|&i| batch[i].clone()).collect();
            for (i, state) in mine.into_iter().zip(states(conn, &node_keys).await?) {
                on_source[i] = Some(state);
            }
        }
        let on_source = on_source.into_iter().map(|s| s.expect("every key has a node"));
        let on_target = states(&mut target, batch).await?;
        for ((key, src), tgt) in batch.iter().zip(on_source).zip(on_target) {
            checked += 1;
            let now = now_ms();
            match (src.expiry, tgt.expiry) {
                (Expiry::Missing, Expiry::Missing) => {} // Gone from the source (expired or deleted) and from memlog.
                // Expiring within the tolerance: gone on one side a moment before the other.
                (Expiry::Missing, Expiry::At(at)) | (Expiry::At(at), Expiry::Missing)
                    if at - now <= TTL_TOLERANCE_MS => {}
                (Expiry::Missing, _) => report(format!("extra on target: {} (gone from the source)", show(key)))?,
                (_, Expiry::Missing) => report(format!("missing on target: {}", show(key)))?,
                _ if src.kind != tgt.kind => {
                    report(format!("type differs: {}: source {}, target {}", show(key), src.kind, tgt.kind))?
                }
                _ if src.value != tgt.value => report(format!("value differs: {} ({})", show(key), src.kind))?,
                (Expiry::At(a), Expiry::At(b)) if (a - b).abs() <= TTL_TOLERANCE_MS => {}
                (a, b) if a != b => report(format!(
                    "ttl differs: {}: source {}, target {}",
                    show(key),
                    expiry_text(a, now),
                    expiry_text(b, now)
                ))?,
                _ => {}
            }
        }
    }
    eprintln!("verify: {checked} keys checked, {differences} differences");
    if differences > 0 {
        std::process::exit(1);
    }
    Ok(())
}

fn expiry_text(expiry: Expiry, now_ms: i64) -> String {
    match expiry {
        Expiry::Missing => "missing".into(),
        Expiry::Never => "none".into(),
        Expiry::At(at) => format!("{} ms", at - now_ms),
    }
}

fn integer(frame: BytesFrame) -> anyhow::Result<i64> {
    match frame {
        BytesFrame::Integer(n) => Ok(n),
        other => anyhow::bail!("expected an integer reply, got {other:?}"),
    }
}

/// The state of each of `keys` on one node: TYPE and PTTL for all (pipelined), then the value
/// commands of each type (pipelined).
async fn states(conn: &mut Conn, keys: &[Bytes]) -> anyhow::Result<Vec<KeyState>> {
    for key in keys {
        conn.queue(&[b"TYPE", key]);
        conn.queue(&[b"PTTL", key]);
    }
    let mut heads = Vec::with_capacity(keys.len());
    for _ in keys {
        let kind = match conn.reply().await? {
            BytesFrame::SimpleString(kind) => String::from_utf8_lossy(&kind).into_owned(),
            other => anyhow::bail!("{}: TYPE: {other:?}", conn.addr()),
        };
        let pttl = integer(conn.reply().await?)?;
        heads.push((kind, Expiry::from_pttl(pttl, now_ms())));
    }
    // Streams: their consumer groups' names first, to ask each group's pending summary.
    let mut groups = Vec::with_capacity(keys.len());
    for (key, (kind, _)) in keys.iter().zip(&heads) {
        groups.push(if kind == "stream" {
            group_names(&conn.call(&[b"XINFO", b"GROUPS", key]).await?)
        } else {
            Vec::new()
        });
    }
    let mut counts = Vec::with_capacity(keys.len());
    for ((key, (kind, _)), groups) in keys.iter().zip(&heads).zip(&groups) {
        counts.push(queue_value(conn, kind, key, groups)?);
    }
    let mut out = Vec::with_capacity(keys.len());
    for ((kind, expiry), count) in heads.into_iter().zip(counts) {
        let mut value = Vec::with_capacity(count);
        for _ in 0..count {
            let reply = conn.reply().await?;
            value.push(canonical(&kind, conn.refused_if_error(b"read", reply)?));
        }
        out.push(KeyState { kind, expiry, value });
    }
    Ok(out)
}

/// Queues the commands that read a value of type `kind`; returns how many replies they give.
fn queue_value(conn: &mut Conn, kind: &str, key: &[u8], groups: &[Bytes]) -> anyhow::Result<usize> {
    Ok(match kind {
        "none" => 0,
        "string" => {
            conn.queue(&[b"GET", key]);
            1
        }
        "list" => {
            conn.queue(&[b"LRANGE", key, b"0", b"-1"]);
            1
        }
        "set" => {
            conn.queue(&[b"SMEMBERS", key]);
            1
        }
        "zset" => {
            conn.queue(&[b"ZRANGE", key, b"0", b"-1", b"WITHSCORES"]);
            1
        }
        "hash" => {
            conn.queue(&[b"HGETALL", key]);
            1
        }
        "stream" => {
            conn.queue(&[b"XRANGE", key, b"-", b"+"]);
            conn.queue(&[b"XINFO", b"GROUPS", key]);
            for name in groups {
                conn.queue(&[b"XPENDING", key, name]);
            }
            2 + groups.len()
        }
        other => anyhow::bail!("{}: key {} has type {other}, which verify cannot compare", conn.addr(), show(key)),
    })
}

fn group_names(groups: &BytesFrame) -> Vec<Bytes> {
    let BytesFrame::Array(groups) = groups else { return Vec::new() };
    groups
        .iter()
        .filter_map(|g| match g {
            BytesFrame::Array(fields) => fields.chunks(2).find_map(|kv| match kv {
                [BytesFrame::BulkString(k), BytesFrame::BulkString(v)] if &k[..] == b"name" => Some(v.clone()),
                _ => None,
            }),
            _ => None,
        })
        .collect()
}

/// A reply in a form that does not depend on the encoding: unordered collections sorted.
fn canonical(kind: &str, reply: BytesFrame) -> BytesFrame {
    match (kind, reply) {
        ("set", BytesFrame::Array(mut members)) => {
            members.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
            BytesFrame::Array(members)
        }
        ("hash", BytesFrame::Array(fields)) => {
            let mut pairs: Vec<Vec<BytesFrame>> = fields.chunks(2).map(<[BytesFrame]>::to_vec).collect();
            pairs.sort_by(|a, b| format!("{:?}", a[0]).cmp(&format!("{:?}", b[0])));
            BytesFrame::Array(pairs.into_iter().flatten().collect())
        }
        (_, reply) => reply,
    }
}

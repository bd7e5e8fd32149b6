//! The normalization table: every write rewritten into a form whose replay rebuilds the same
//! state, as Redis 7.0 rewrites commands before it propagates them to replicas and the AOF
//! (`rewriteClientCommandVector`, `alsoPropagate` in t_string.c, expire.c, t_set.c, t_hash.c,
//! t_stream.c, t_list.c, t_zset.c, cluster.c). Pure: [`plan`] looks only at the arguments and
//! the batch time; what depends on Redis's state is asked of Redis through a [`Plan::Probe`].
//!
//! The default is [`Plan::AsIs`]; the table lists the exceptions. A rewrite is made only where
//! Redis would accept the original: an argument Redis refuses (a bad number, an overflow, a
//! syntax error) keeps the command as sent, so Redis answers its own error, and replaying that
//! error changes nothing. Times are anchored to `now_ms`, the batch's timestamp.
//!
//! | command | journaled as | client reply |
//! |---|---|---|
//! | `EXPIRE k s [NX\|XX\|GT\|LT]`, `PEXPIRE k ms …`, `EXPIREAT k s …` | `PEXPIREAT k <abs ms> …` (negative/past kept: Redis deletes the key, replay too) | PEXPIREAT's (same) |
//! | `PEXPIREAT` | as sent | |
//! | `SET k v … EX s\|PX ms\|EXAT s …` (NX/XX/GET kept; several EX: last wins, as Redis) | `SET k v … PXAT <abs ms>` | SET's (same) |
//! | `SET … PXAT`, `SET … KEEPTTL`, `SET` without expiry, `SETNX`, `GETSET`, `GETDEL`, `PERSIST` | as sent (deterministic) | |
//! | `SETEX k s v`, `PSETEX k ms v` | `SET k v PXAT <abs ms>` | `+OK` (same) |
//! | `GETEX k EX\|PX\|EXAT t` | `GETEX k PXAT <abs ms>` | same |
//! | `GETEX k [PERSIST\|PXAT ms]` | as sent | |
//! | `RESTORE k ttl v [REPLACE] [IDLETIME s\|FREQ f]` with ttl > 0, no ABSTTL | `RESTORE k <abs ms> v … ABSTTL` | same |
//! | `RESTORE` with ttl 0 or ABSTTL; `RESTORE-ASKING` like RESTORE | as sent / same rewrite | |
//! | `SPOP k` | probe `SRANDMEMBER k` → `SREM k m` (nothing if nil/error) | **override**: the member (bulk), nil or the error |
//! | `SPOP k n` (n > 0) | probe `SRANDMEMBER k n` → `SREM k m…` (nothing if empty) | **override**: the members (RESP2 `*`; RESP3 clients expect a set `~`) |
//! | `SPOP k 0`, `SPOP k -1`, `SPOP k x y` | as sent (no effect / Redis's error) | |
//! | `INCRBYFLOAT k x` | probe: scratch dry run → `SET k <result> KEEPTTL`; error → nothing | **override**: the result (bulk) or the error |
//! | `HINCRBYFLOAT k f x` | probe: scratch dry run → `HSET k f <result>`; error → nothing | **override**: the result (bulk) or the error |
//! | `XADD k [MAXLEN\|MINID [=\|~] t [LIMIT n]] [NOMKSTREAM] * f v…` | probe `XINFO STREAM k` → the same with the ID Redis would assign | XADD's (same) |
//! | `XADD … <ms>-<seq>`, `XADD … <ms>-*` | as sent (depends only on the stream) | |
//! | `XADD`/`XTRIM` with `~` | `~` kept (see below) | |
//! | `XCLAIM k g c min-idle ids… [IDLE\|TIME] [RETRYCOUNT] [FORCE] [JUSTID] [LASTID]` | `XCLAIM k g c 0 ids… TIME <abs> …`; min-idle > 0: probe `XPENDING k g id id 1` per ID, IDs not idle enough dropped | XCLAIM's (same) |
//! | `XAUTOCLAIM k g c min-idle start [COUNT n] [JUSTID]` | probe: XAUTOCLAIM on a scratch copy → `XCLAIM k g c 0 <claimed and deleted IDs> TIME now [JUSTID]` (nothing if none) | **override**: the dry run's reply (RESP2) |
//! | `BLPOP`/`BRPOP k… t` | probe `TYPE`+`LINDEX` per key → `LPOP`/`RPOP` of the first existing key | **override**: `[key, element]`, WRONGTYPE, or nil array if no key has data |
//! | `BZPOPMIN`/`BZPOPMAX k… t` | probe `TYPE`+`ZRANGE … WITHSCORES` per key → `ZPOPMIN`/`ZPOPMAX k` | **override**: `[key, member, score]` (RESP3: the score is a double), WRONGTYPE, or nil array |
//! | `BRPOPLPUSH s d t`, `BLMOVE s d from to t`, `BLMPOP t …`, `BZMPOP t …` | `RPOPLPUSH s d`, `LMOVE s d from to`, `LMPOP …`, `ZMPOP …` | same (were the source empty, RPOPLPUSH/LMOVE would say `$-1` where a timeout says `*-1`) |
//! | `XREADGROUP GROUP g c [COUNT n] [BLOCK ms] STREAMS k… >…` | probe: read-only script per stream (entries after the group's last-delivered-id) → the call without BLOCK, then `XCLAIM k g c 0 <ids> TIME now JUSTID` per stream served; nothing if no stream has new entries | **override**: `[[key, entries]…]` (RESP3: a map) or nil array |
//! | `XREADGROUP` with an explicit ID (history), NOACK, a stream named twice | as sent: **known gap**, below | |
//! | `EVAL`, `FCALL` | as sent: scripts must be deterministic (below); EVAL of a script naming TIME or a relative TTL: wrapped with its time pinned (below) | same |
//! | `EVALSHA sha …` | `EVAL <body> …`, rewritten by the proxy (`commands::scripting`) from its script cache before the sequencer, so replay never depends on a node's script cache | same |
//! | `EVAL_RO`, `EVALSHA_RO`, `FCALL_RO`, `EVAL` of a `#!lua flags=no-writes` script | reads: never journaled | |
//! | `FUNCTION LOAD\|DELETE\|FLUSH\|RESTORE` | as sent, on every shard's stream | |
//! | everything else | as sent | |
//!
//! Checked and deterministic as sent: `SRANDMEMBER`, `ZRANDMEMBER`, `HRANDFIELD`, `RANDOMKEY`,
//! `TTL`/`PTTL`/`EXPIRETIME`/`PEXPIRETIME`, `OBJECT FREQ`/`IDLETIME` (reads); `SORT … STORE`
//! (Redis forces ALPHA order for a set when storing); `SINTERSTORE`/`SUNIONSTORE`/
//! `SDIFFSTORE`, `ZINCRBY`/`ZADD INCR` (IEEE doubles, Redis propagates them as sent), `INCR*`
//! on integers, `HINCRBY`, `COPY`/`RENAME`/`MOVE` (absolute expiries move with the key),
//! `XGROUP CREATE … $`, `XSETID`, `XACK`, `XDEL`, `PFADD`/`PFCOUNT`/`PFMERGE`, `TOUCH` (LRU
//! only). `MIGRATE` is refused by the proxy.
//!
//! A resolution with no command or with several (XREADGROUP) always carries an override, so the
//! sequencer never has to choose which reply is the client's.
//!
//! **Overrides** (`Resolved::reply`) are RESP2; the lead converts them for RESP3 clients: every
//! nil (`$-1`/`*-1` → `_`: SPOP on a missing key, a pop or XREADGROUP finding no data), SPOP
//! with a count (array → set `~`), BZPOPMIN/BZPOPMAX (score bulk → double `,`), XREADGROUP
//! (array of `[key, entries]` → map of key → entries). Bulk strings, plain arrays (BLPOP/BRPOP,
//! XAUTOCLAIM) and errors are the same in both.
//!
//! **Scratch key**: INCRBYFLOAT, HINCRBYFLOAT and XAUTOCLAIM probe with
//! `MULTI; DEL __memlog:scratch; COPY k __memlog:scratch; <command on the scratch>;
//! DEL __memlog:scratch; EXEC` — atomic, and it leaves the dataset as it was. The proxy must keep
//! clients away from `__memlog:` keys. For XAUTOCLAIM the COPY is O(stream size).
//!
//! **Approximate trimming** (`MAXLEN ~`, `MINID ~`, with or without `LIMIT`) is kept. Redis
//! rewrites it to the exact threshold after trimming, but the threshold is only known after the
//! trim runs, and finding it without mutating would need a copy of the stream per XADD.
//! Replay is still deterministic: `~` removes whole radix-tree nodes only, and the node layout
//! is a function of the history of the stream and of `stream-node-max-bytes`,
//! `stream-node-max-entries` (which also sets the default LIMIT, 100 × entries) and the Redis
//! version's listpack encoding; RDB snapshots keep the layout. Replay therefore needs the same
//! Redis version and those two settings (the sequencer should check them).
//!
//! **XREADGROUP gap**: new-entry reads are pinned as above (the delivery time of each new PEL
//! entry is the one thing the call does not determine). History reads (an explicit ID) re-deliver
//! from the consumer's PEL and set each entry's delivery time from the applying Redis's clock, and
//! a stream named twice in one call would need the probe to account for the first read: these
//! stay as sent, so after a rebuild those delivery times are later than they were. NOACK reads
//! create no PEL entries and are exact as sent. Consumers' seen-time always comes from the
//! applying clock (as on Redis's own replicas). `DEBUG DIGEST` covers stream entries only, not
//! groups or PELs, and no expiry times (only whether a key has one): snapshot verification will
//! not see such differences.
//!
//! **Scripts** (EVAL/FCALL) are journaled as calls: Redis 7 replicates their effects, memlog
//! replays the call, so a script that reads the clock or a random choice (TIME, SPOP,
//! SRANDMEMBER, relative EXPIRE inside the script) rebuilds different state. Scripts must be
//! deterministic. The proxy refuses writing scripts (and libraries) whose source visibly calls
//! RANDOMKEY, SPOP, SRANDMEMBER, HRANDFIELD or ZRANDMEMBER, or uses `redis.set_repl`
//! (`commands::scripting::body`). A script whose source names TIME or a relative TTL (`EXPIRE`,
//! `PEXPIRE`, `SETEX`, `PSETEX`, `GETEX`, `EX`, `PX`) is journaled wrapped in a prelude that
//! answers TIME from the dispatch time passed as an extra ARGV and turns its relative TTLs into
//! absolute ones (`commands::scripting::pin`); libraries cannot be wrapped, so a library naming
//! TIME is refused. Not seen: relative TTLs whose command or option comes from ARGV, relative
//! TTLs set by functions (replay anchors them to its own clock, so such keys expire later after
//! a rebuild), the iteration order of KEYS/SCAN/SMEMBERS/HGETALL feeding writes, command names
//! built at run time.
//!
//! **Clock**: rewritten times are `now_ms`-based; `now_ms` must not run ahead of the primary's
//! clock, since Redis clamps an XCLAIM TIME in its future to its own now (live) but not later
//! (replay). An absolute expiry that has passed by replay time makes its key absent to the
//! replayed commands (SET NX, INCR …) unless replay runs where Redis does not expire keys itself
//! (AOF loading, a replica fed through its master link); the rewrite cannot remove that.

mod args;
mod blocking;
mod float;
mod prefix;
mod replies;
mod spop;
mod stream;
mod ttl;
mod xreadgroup;

use bytes::Bytes;

/// The integers of Redis's commands, for the proxy's own commands that read one as Redis does.
pub(crate) use args::int as string2ll;
pub use args::timeout_ms;
use args::word;
use blocking::Pop;
pub use prefix::after_earlier_writes;
pub use replies::{bulk as bulk_reply, integer as integer_reply, NIL_ARRAY};

/// What the sequencer must do with a write before journaling it.
pub enum Plan {
    /// Deterministic as sent: journal and apply the client's raw bytes unchanged.
    AsIs,
    /// Journal and apply this command instead; Redis's reply to it is the client's reply
    /// (e.g. `EXPIRE k 10` -> `PEXPIREAT k <abs ms>`; SETEX -> `SET .. PXAT`; reply shapes are identical).
    Rewrite(Vec<Bytes>),
    /// The outcome depends on state Redis holds (SPOP's choice, INCRBYFLOAT's result, XADD *'s ID):
    /// the sequencer waits until every earlier write of the shard is applied, runs `probe` on the
    /// primary (commands that do not change the dataset's net state — read-only commands, or a
    /// MULTI/EXEC block on a scratch key that it deletes again), then calls `resolve` with the
    /// replies (raw RESP2 bytes, one per probe command, in order).
    Probe { probe: Vec<Vec<Bytes>>, resolve: Resolver },
}

/// Turns a probe's replies into what to journal (`Box<dyn FnOnce(&[Bytes]) -> Resolved + Send>`).
pub type Resolver = Box<dyn FnOnce(&[Bytes]) -> Resolved + Send>;

/// What a probed write turns into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// Commands to journal and apply, in order (empty: nothing changes, e.g. SPOP on a missing key).
    pub commands: Vec<Vec<Bytes>>,
    /// The client's reply in RESP2 if it differs from what applying `commands` returns
    /// (e.g. SPOP journaled as SREM must still answer the popped members; an error found by the
    /// probe, e.g. INCRBYFLOAT on a non-number, answers that error and journals nothing).
    pub reply: Option<Bytes>,
}

impl std::fmt::Debug for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Plan::AsIs => f.write_str("AsIs"),
            Plan::Rewrite(cmd) => f.debug_tuple("Rewrite").field(cmd).finish(),
            Plan::Probe { probe, .. } => f.debug_struct("Probe").field("probe", probe).finish_non_exhaustive(),
        }
    }
}

impl Plan {
    /// A probe whose resolver may index one reply per probe command: a short reply list (a
    /// sequencer bug) answers an error instead of panicking.
    fn probe(probe: Vec<Vec<Bytes>>, resolve: impl FnOnce(&[Bytes]) -> Resolved + Send + 'static) -> Plan {
        let expected = probe.len();
        let resolve = move |replies: &[Bytes]| {
            if replies.len() < expected {
                return unresolved(replies);
            }
            resolve(replies)
        };
        Plan::Probe { probe, resolve: Box::new(resolve) }
    }
}

/// `args` = the client's command (name first, any case), already checked for arity; `now_ms` = the
/// batch's timestamp (Unix ms) that relative times are anchored to.
pub fn plan(args: &[Bytes], now_ms: u64) -> Plan {
    let Some(name) = args.first() else { return Plan::AsIs };
    if name.len() > 16 {
        return Plan::AsIs;
    }
    let now = i64::try_from(now_ms).unwrap_or(i64::MAX);
    let name = name.to_ascii_uppercase();
    // Arity is the caller's check; these guards only keep a short command from panicking.
    let at_least = |n: usize| args.len() >= n;
    let exactly = |n: usize| args.len() == n;
    match name.as_slice() {
        b"EXPIRE" if at_least(3) => ttl::expire(args, now, true, true),
        b"PEXPIRE" if at_least(3) => ttl::expire(args, now, false, true),
        b"EXPIREAT" if at_least(3) => ttl::expire(args, now, true, false),
        b"SET" if at_least(3) => ttl::set(args, now),
        b"SETEX" if exactly(4) => ttl::setex(args, now, true),
        b"PSETEX" if exactly(4) => ttl::setex(args, now, false),
        b"GETEX" if at_least(2) => ttl::getex(args, now),
        b"RESTORE" | b"RESTORE-ASKING" if at_least(4) => ttl::restore(args, now),
        b"SPOP" if at_least(2) => spop::spop(args),
        b"INCRBYFLOAT" if exactly(3) => float::incrbyfloat(args),
        b"HINCRBYFLOAT" if exactly(4) => float::hincrbyfloat(args),
        b"XADD" if at_least(5) => stream::xadd(args, now_ms),
        b"XCLAIM" if at_least(6) => stream::xclaim(args, now),
        b"XAUTOCLAIM" if at_least(6) => stream::xautoclaim(args, now),
        b"XREADGROUP" if at_least(7) => xreadgroup::xreadgroup(args, now),
        b"BLPOP" if at_least(3) => blocking::pop(args, Pop::ListLeft),
        b"BRPOP" if at_least(3) => blocking::pop(args, Pop::ListRight),
        b"BZPOPMIN" if at_least(3) => blocking::pop(args, Pop::ZsetMin),
        b"BZPOPMAX" if at_least(3) => blocking::pop(args, Pop::ZsetMax),
        b"BRPOPLPUSH" if exactly(4) => blocking::twin(args, "RPOPLPUSH", false),
        b"BLMOVE" if exactly(6) => blocking::twin(args, "LMOVE", false),
        b"BLMPOP" if at_least(5) => blocking::twin(args, "LMPOP", true),
        b"BZMPOP" if at_least(5) => blocking::twin(args, "ZMPOP", true),
        _ => Plan::AsIs,
    }
}

/// The key dry runs compute on (hidden from clients by the proxy, like `__memlog:lsn`).
const SCRATCH_KEY: &str = "__memlog:scratch";

fn scratch_key() -> Bytes {
    word(SCRATCH_KEY)
}

/// A probe that runs `command` (which names the scratch key) on a copy of `key`, atomically,
/// leaving the dataset as it was.
fn dry_run(key: &Bytes, command: Vec<Bytes>) -> Vec<Vec<Bytes>> {
    vec![
        vec![word("MULTI")],
        vec![word("DEL"), scratch_key()],
        vec![word("COPY"), key.clone(), scratch_key()],
        command,
        vec![word("DEL"), scratch_key()],
        vec![word("EXEC")],
    ]
}

/// The reply of the dry run's command, from EXEC's array.
fn dry_run_reply(replies: &[Bytes]) -> Option<Bytes> {
    replies::array(replies.last()?)?.get(2).cloned()
}

/// A probe answered something no Redis answers: journal nothing and report the first error the
/// probe met (e.g. EXECABORT, OOM), or say the outcome could not be determined.
fn unresolved(replies: &[Bytes]) -> Resolved {
    let reply = replies.iter().find(|r| replies::is_error(r)).cloned().unwrap_or_else(|| {
        replies::error_of("ERR memlog could not determine the outcome of this command; it was not applied")
    });
    Resolved { commands: Vec::new(), reply: Some(reply) }
}

#[cfg(test)]
mod tests;

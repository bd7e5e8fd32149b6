//! Every rewrite of the table, pure: plans, probes, and resolutions of canned probe replies.

use bytes::Bytes;

use super::{plan, Plan, Resolved};

const NOW: u64 = 1_700_000_000_000;

fn cmd(text: &str) -> Vec<Bytes> {
    text.split(' ').map(|a| Bytes::copy_from_slice(a.as_bytes())).collect()
}

fn text(args: &[Bytes]) -> String {
    args.iter().map(|a| String::from_utf8_lossy(a).into_owned()).collect::<Vec<_>>().join(" ")
}

fn rewritten(command: &str) -> String {
    match plan(&cmd(command), NOW) {
        Plan::Rewrite(args) => text(&args),
        other => panic!("{command}: expected a rewrite, got {other:?}"),
    }
}

fn assert_as_is(command: &str) {
    match plan(&cmd(command), NOW) {
        Plan::AsIs => {}
        other => panic!("{command}: expected AsIs, got {other:?}"),
    }
}

/// The probe's commands and the resolution of `replies`.
fn probed(command: &str, replies: &[&[u8]]) -> (Vec<String>, Vec<String>, Option<String>) {
    match plan(&cmd(command), NOW) {
        Plan::Probe { probe, resolve } => {
            let replies: Vec<Bytes> = replies.iter().map(|r| Bytes::copy_from_slice(r)).collect();
            let Resolved { commands, reply } = resolve(&replies);
            (
                probe.iter().map(|p| text(p)).collect(),
                commands.iter().map(|c| text(c)).collect(),
                reply.map(|r| String::from_utf8_lossy(&r).into_owned()),
            )
        }
        other => panic!("{command}: expected a probe, got {other:?}"),
    }
}

fn at(offset_ms: i64) -> String {
    (NOW as i64 + offset_ms).to_string()
}

#[test]
fn expire_family_becomes_pexpireat() {
    assert_eq!(rewritten("EXPIRE k 10"), format!("PEXPIREAT k {}", at(10_000)));
    assert_eq!(rewritten("expire k 10 NX"), format!("PEXPIREAT k {} NX", at(10_000)));
    assert_eq!(rewritten("EXPIRE k -5"), format!("PEXPIREAT k {}", at(-5_000)));
    assert_eq!(rewritten("PEXPIRE k 100 GT"), format!("PEXPIREAT k {} GT", at(100)));
    assert_eq!(rewritten("EXPIREAT k 100 LT"), "PEXPIREAT k 100000 LT");
    // An unknown option is still Redis's error after the rewrite.
    assert_eq!(rewritten("EXPIRE k 10 BOGUS"), format!("PEXPIREAT k {} BOGUS", at(10_000)));
    assert_as_is("PEXPIREAT k 100");
    for bad in
        ["EXPIRE k abc", "EXPIRE k 1.5", "EXPIRE k 010", "EXPIRE k 9223372036854776", "EXPIRE k -9223372036854776"]
    {
        assert_as_is(bad);
    }
    // In range for the multiplication, overflowing once now is added.
    assert_as_is("EXPIRE k 9223372036854775");
    assert_as_is("PEXPIRE k 9223372036854775807");
    assert_eq!(rewritten("EXPIREAT k 9223372036854775"), "PEXPIREAT k 9223372036854775000");
}

#[test]
fn set_expiry_becomes_pxat() {
    assert_eq!(rewritten("SET k v EX 10"), format!("SET k v PXAT {}", at(10_000)));
    assert_eq!(rewritten("set k v nx GET px 5"), format!("set k v nx GET PXAT {}", at(5)));
    assert_eq!(rewritten("SET k v XX EXAT 100"), "SET k v XX PXAT 100000");
    // Several EX are accepted; the last wins, and only it is validated.
    assert_eq!(rewritten("SET k v EX abc EX 20"), format!("SET k v PXAT {}", at(20_000)));
    assert_eq!(rewritten("SET k v EX 1 GET EX 2"), format!("SET k v GET PXAT {}", at(2_000)));
    assert_as_is("SET k v PXAT 5");
    assert_as_is("SET k v");
    assert_as_is("SET k v GET");
    assert_as_is("SET k v KEEPTTL");
    for bad in [
        "SET k v EX 0",
        "SET k v EX -1",
        "SET k v PX 0",
        "SET k v EXAT 0",
        "SET k v EX abc",
        "SET k v EX 10 EX abc",
        "SET k v EX",
        "SET k v KEEPTTL EX 10",
        "SET k v EX 10 KEEPTTL",
        "SET k v EX 10 PX 10",
        "SET k v NX XX EX 1",
        "SET k v PERSIST",
        "SET k v EX 9223372036854776",
        "SET k v PX 9223372036854775807",
        "SET k v BOGUS EX 1",
    ] {
        assert_as_is(bad);
    }
}

#[test]
fn setex_and_psetex_become_set_pxat() {
    assert_eq!(rewritten("SETEX k 10 v"), format!("SET k v PXAT {}", at(10_000)));
    assert_eq!(rewritten("psetex k 10 v"), format!("SET k v PXAT {}", at(10)));
    for bad in ["SETEX k 0 v", "SETEX k -1 v", "SETEX k x v", "PSETEX k 0 v", "SETEX k 9223372036854776 v"] {
        assert_as_is(bad);
    }
}

#[test]
fn getex_expiry_becomes_pxat() {
    assert_eq!(rewritten("GETEX k EX 10"), format!("GETEX k PXAT {}", at(10_000)));
    assert_eq!(rewritten("GETEX k PX 10"), format!("GETEX k PXAT {}", at(10)));
    assert_eq!(rewritten("GETEX k EXAT 7"), "GETEX k PXAT 7000");
    for same in [
        "GETEX k",
        "GETEX k PERSIST",
        "GETEX k PXAT 5",
        "GETEX k EX 0",
        "GETEX k NX",
        "GETEX k PERSIST EX 1",
        "GETEX k EX",
    ] {
        assert_as_is(same);
    }
}

#[test]
fn restore_ttl_becomes_absttl() {
    assert_eq!(rewritten("RESTORE k 100 payload"), format!("RESTORE k {} payload ABSTTL", at(100)));
    assert_eq!(
        rewritten("RESTORE k 100 payload REPLACE IDLETIME 5"),
        format!("RESTORE k {} payload REPLACE IDLETIME 5 ABSTTL", at(100))
    );
    for same in [
        "RESTORE k 0 payload",
        "RESTORE k 100 payload ABSTTL",
        "RESTORE k 100 payload absttl REPLACE",
        "RESTORE k -1 payload",
        "RESTORE k x payload",
        "RESTORE k 100 payload FREQ 300",
        "RESTORE k 100 payload IDLETIME -1",
        "RESTORE k 100 payload FREQ 1 IDLETIME 1",
        "RESTORE k 100 payload BOGUS",
    ] {
        assert_as_is(same);
    }
}

#[test]
fn spop_becomes_srem_of_the_chosen_members() {
    let (probe, commands, reply) = probed("SPOP k", &[b"$1\r\na\r\n"]);
    assert_eq!(probe, ["SRANDMEMBER k"]);
    assert_eq!(commands, ["SREM k a"]);
    assert_eq!(reply.as_deref(), Some("$1\r\na\r\n"));

    let (_, commands, reply) = probed("SPOP k", &[b"$-1\r\n"]);
    assert!(commands.is_empty());
    assert_eq!(reply.as_deref(), Some("$-1\r\n"));

    let wrongtype = b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n";
    let (_, commands, reply) = probed("SPOP k", &[wrongtype]);
    assert!(commands.is_empty());
    assert_eq!(reply.as_deref().map(str::as_bytes), Some(&wrongtype[..]));

    let (probe, commands, reply) = probed("SPOP k 2", &[b"*2\r\n$1\r\na\r\n$2\r\nbc\r\n"]);
    assert_eq!(probe, ["SRANDMEMBER k 2"]);
    assert_eq!(commands, ["SREM k a bc"]);
    assert_eq!(reply.as_deref(), Some("*2\r\n$1\r\na\r\n$2\r\nbc\r\n"));

    let (_, commands, reply) = probed("SPOP k 5", &[b"*0\r\n"]);
    assert!(commands.is_empty());
    assert_eq!(reply.as_deref(), Some("*0\r\n"));

    for same in ["SPOP k 0", "SPOP k -1", "SPOP k x", "SPOP k 1 2"] {
        assert_as_is(same);
    }
}

const DRY_RUN_PREFIX: [&str; 3] = ["MULTI", "DEL __memlog:scratch", "COPY k __memlog:scratch"];
const DRY_RUN_SUFFIX: [&str; 2] = ["DEL __memlog:scratch", "EXEC"];

fn dry_run_probe(command: &str) -> Vec<String> {
    DRY_RUN_PREFIX.iter().copied().chain([command]).chain(DRY_RUN_SUFFIX).map(String::from).collect()
}

#[test]
fn incrbyfloat_journals_the_computed_value() {
    let queued: &[u8] = b"+QUEUED\r\n";
    let exec_ok = b"*4\r\n:0\r\n:1\r\n$4\r\n10.5\r\n:1\r\n";
    let (probe, commands, reply) = probed("INCRBYFLOAT k 0.5", &[b"+OK\r\n", queued, queued, queued, queued, exec_ok]);
    assert_eq!(probe, dry_run_probe("INCRBYFLOAT __memlog:scratch 0.5"));
    assert_eq!(commands, ["SET k 10.5 KEEPTTL"]);
    assert_eq!(reply.as_deref(), Some("$4\r\n10.5\r\n"));

    let exec_err = b"*4\r\n:0\r\n:1\r\n-ERR value is not a valid float\r\n:1\r\n";
    let (_, commands, reply) = probed("INCRBYFLOAT k x", &[b"+OK\r\n", queued, queued, queued, queued, exec_err]);
    assert!(commands.is_empty());
    assert_eq!(reply.as_deref(), Some("-ERR value is not a valid float\r\n"));

    let (probe, commands, reply) = probed("HINCRBYFLOAT k f 2", &[b"+OK\r\n", queued, queued, queued, queued, exec_ok]);
    assert_eq!(probe, dry_run_probe("HINCRBYFLOAT __memlog:scratch f 2"));
    assert_eq!(commands, ["HSET k f 10.5"]);
    assert_eq!(reply.as_deref(), Some("$4\r\n10.5\r\n"));

    // EXEC aborted (e.g. OOM while queueing): that error, nothing journaled.
    let oom: &[u8] = b"-OOM command not allowed when used memory > 'maxmemory'.\r\n";
    let abort: &[u8] = b"-EXECABORT Transaction discarded because of previous errors.\r\n";
    let (_, commands, reply) = probed("INCRBYFLOAT k 1", &[b"+OK\r\n", oom, queued, queued, queued, abort]);
    assert!(commands.is_empty());
    assert_eq!(reply.as_deref().map(str::as_bytes), Some(oom));
}

fn xinfo_with_last_id(id: &str) -> Vec<u8> {
    format!("*6\r\n$6\r\nlength\r\n:2\r\n$17\r\nlast-generated-id\r\n${}\r\n{id}\r\n$6\r\ngroups\r\n:0\r\n", id.len())
        .into_bytes()
}

#[test]
fn xadd_auto_id_gets_the_id_redis_assigns() {
    let (probe, commands, reply) = probed("XADD s * f v", &[b"-ERR no such key\r\n"]);
    assert_eq!(probe, ["XINFO STREAM s"]);
    assert_eq!(commands, [format!("XADD s {NOW}-0 f v")]);
    assert_eq!(reply, None);

    let older = xinfo_with_last_id(&format!("{}-7", NOW - 1));
    let (_, commands, _) = probed("XADD s * f v", &[&older]);
    assert_eq!(commands, [format!("XADD s {NOW}-0 f v")]);

    let same_ms = xinfo_with_last_id(&format!("{NOW}-7"));
    let (_, commands, _) = probed("XADD s MAXLEN ~ 100 * f v", &[&same_ms]);
    assert_eq!(commands, [format!("XADD s MAXLEN ~ 100 {NOW}-8 f v")]);

    let future = xinfo_with_last_id(&format!("{}-18446744073709551615", NOW + 5));
    let (_, commands, _) = probed("XADD s NOMKSTREAM MINID = 5 LIMIT 10 * f v", &[&future]);
    assert_eq!(commands, [format!("XADD s NOMKSTREAM MINID = 5 LIMIT 10 {}-0 f v", NOW + 6)]);

    let (_, commands, _) = probed("xadd s maxlen 10 * * v", &[b"-ERR no such key\r\n"]);
    assert_eq!(commands, [format!("xadd s maxlen 10 {NOW}-0 * v")]);

    let exhausted = xinfo_with_last_id("18446744073709551615-18446744073709551615");
    let (_, commands, _) = probed("XADD s * f v", &[&exhausted]);
    assert_eq!(commands, ["XADD s * f v"]);

    for same in
        ["XADD s 5-* f v", "XADD s 5-1 f v", "XADD s MAXLEN 10 5 f v", "XADD s BOGUS * f v", "XTRIM s MAXLEN ~ 10"]
    {
        assert_as_is(same);
    }
}

#[test]
fn xclaim_gets_min_idle_zero_and_an_absolute_time() {
    assert_eq!(rewritten("XCLAIM s g c 0 1-0 2"), format!("XCLAIM s g c 0 1-0 2 TIME {NOW}"));
    assert_eq!(rewritten("XCLAIM s g c -5 1-0 IDLE 1000"), format!("XCLAIM s g c 0 1-0 TIME {}", at(-1000)));
    assert_eq!(rewritten("XCLAIM s g c 0 1-0 TIME 5"), "XCLAIM s g c 0 1-0 TIME 5");
    // Redis clamps a time in the future or before 1970 to now.
    assert_eq!(rewritten("XCLAIM s g c 0 1-0 TIME 99999999999999"), format!("XCLAIM s g c 0 1-0 TIME {NOW}"));
    assert_eq!(rewritten("XCLAIM s g c 0 1-0 IDLE -10"), format!("XCLAIM s g c 0 1-0 TIME {NOW}"));
    assert_eq!(rewritten("XCLAIM s g c 0 1-0 TIME -3"), format!("XCLAIM s g c 0 1-0 TIME {NOW}"));
    assert_eq!(
        rewritten("XCLAIM s g c 0 1-0 1-0 justid RETRYCOUNT 3 FORCE LASTID 9-0"),
        format!("XCLAIM s g c 0 1-0 1-0 TIME {NOW} RETRYCOUNT 3 FORCE JUSTID LASTID 9-0")
    );
    assert_eq!(rewritten("XCLAIM s g c 100 FORCE"), format!("XCLAIM s g c 0 TIME {NOW} FORCE"));
    for same in [
        "XCLAIM s g c x 1-0",
        "XCLAIM s g c 0 1-0 BOGUS",
        "XCLAIM s g c 0 1-0 IDLE x",
        "XCLAIM s g c 0 1-0 RETRYCOUNT x",
        "XCLAIM s g c 0 1-0 LASTID +",
        "XCLAIM s g c 0 1-0 TIME",
    ] {
        assert_as_is(same);
    }

    let pending = |idle: i64| format!("*1\r\n*4\r\n$3\r\n1-0\r\n$1\r\nx\r\n:{idle}\r\n:1\r\n").into_bytes();
    let young = pending(50);
    let old = pending(500);
    let (probe, commands, reply) = probed("XCLAIM s g c 100 1-0 2-0 1-0 3-0", &[&young, &old, b"*0\r\n"]);
    assert_eq!(probe, ["XPENDING s g 1-0 1-0 1", "XPENDING s g 2-0 2-0 1", "XPENDING s g 3-0 3-0 1"]);
    assert_eq!(commands, [format!("XCLAIM s g c 0 2-0 3-0 TIME {NOW}")]);
    assert_eq!(reply, None);

    // A claimed ID repeated is taken once when min-idle > 0 (the repeat is no longer idle).
    let (_, commands, _) = probed("XCLAIM s g c 100 1-0 1-0", &[&old]);
    assert_eq!(commands, [format!("XCLAIM s g c 0 1-0 TIME {NOW}")]);

    let nogroup = b"-NOGROUP No such key 's' or consumer group 'g'\r\n";
    let (_, commands, reply) = probed("XCLAIM s g c 100 1-0", &[nogroup]);
    assert_eq!(commands, ["XCLAIM s g c 100 1-0"]);
    assert_eq!(reply, None);
}

#[test]
fn xautoclaim_journals_the_xclaim_of_a_dry_run() {
    let queued: &[u8] = b"+QUEUED\r\n";
    let claimed = b"*3\r\n$3\r\n5-0\r\n*1\r\n*2\r\n$3\r\n1-0\r\n*2\r\n$1\r\nf\r\n$1\r\nv\r\n*1\r\n$3\r\n3-0\r\n";
    let exec = [&b"*4\r\n:0\r\n:1\r\n"[..], claimed, b":1\r\n"].concat();
    let (probe, commands, reply) =
        probed("XAUTOCLAIM k g c 100 0 COUNT 2", &[b"+OK\r\n", queued, queued, queued, queued, &exec]);
    assert_eq!(probe, dry_run_probe("XAUTOCLAIM __memlog:scratch g c 100 0 COUNT 2"));
    assert_eq!(commands, [format!("XCLAIM k g c 0 1-0 3-0 TIME {NOW}")]);
    assert_eq!(reply.as_deref().map(str::as_bytes), Some(&claimed[..]));

    let justid = b"*3\r\n$3\r\n0-0\r\n*2\r\n$3\r\n1-0\r\n$3\r\n2-0\r\n*0\r\n";
    let exec = [&b"*4\r\n:0\r\n:1\r\n"[..], justid, b":1\r\n"].concat();
    let (_, commands, _) = probed("XAUTOCLAIM k g c 0 0 JUSTID", &[b"+OK\r\n", queued, queued, queued, queued, &exec]);
    assert_eq!(commands, [format!("XCLAIM k g c 0 1-0 2-0 TIME {NOW} JUSTID")]);

    let nothing = b"*3\r\n$3\r\n0-0\r\n*0\r\n*0\r\n";
    let exec = [&b"*4\r\n:0\r\n:1\r\n"[..], nothing, b":1\r\n"].concat();
    let (_, commands, reply) = probed("XAUTOCLAIM k g c 0 0", &[b"+OK\r\n", queued, queued, queued, queued, &exec]);
    assert!(commands.is_empty());
    assert_eq!(reply.as_deref().map(str::as_bytes), Some(&nothing[..]));

    let exec = b"*4\r\n:0\r\n:0\r\n-NOGROUP No such key '__memlog:scratch' or consumer group 'g'\r\n:0\r\n";
    let (_, commands, reply) = probed("XAUTOCLAIM k g c 0 0", &[b"+OK\r\n", queued, queued, queued, queued, exec]);
    assert_eq!(commands, ["XAUTOCLAIM k g c 0 0"]);
    assert_eq!(reply, None);
}

#[test]
fn xreadgroup_new_entries_get_their_delivery_time_pinned() {
    let entries =
        b"*2\r\n*2\r\n$3\r\n1-0\r\n*2\r\n$1\r\nf\r\n$1\r\nv\r\n*2\r\n$3\r\n2-0\r\n*2\r\n$1\r\nf\r\n$1\r\nw\r\n";
    let (probe, commands, reply) =
        probed("XREADGROUP GROUP g c COUNT 2 BLOCK 100 STREAMS a b > >", &[b"*0\r\n", entries]);
    assert_eq!(probe.len(), 2);
    assert!(probe[0].starts_with("EVAL_RO ") && probe[0].ends_with(" 1 a g 2"), "{}", probe[0]);
    assert!(probe[1].ends_with(" 1 b g 2"));
    assert_eq!(
        commands,
        [
            "XREADGROUP GROUP g c COUNT 2 STREAMS a b > >".to_string(),
            format!("XCLAIM b g c 0 1-0 2-0 TIME {NOW} JUSTID")
        ]
    );
    let expected = [&b"*1\r\n*2\r\n$1\r\nb\r\n"[..], entries].concat();
    assert_eq!(reply.as_deref().map(str::as_bytes), Some(&expected[..]));

    // Nothing new anywhere: the timeout's nil array, nothing journaled.
    let (_, commands, reply) = probed("xreadgroup group g c streams a >", &[b"*0\r\n"]);
    assert!(commands.is_empty());
    assert_eq!(reply.as_deref(), Some("*-1\r\n"));

    // No such group (the script answers nil) or key (an error): Redis's own error, as sent.
    for failed in [&b"$-1\r\n"[..], b"-ERR no such key\r\n"] {
        let (_, commands, reply) = probed("XREADGROUP GROUP g c STREAMS a >", &[failed]);
        assert_eq!(commands, ["XREADGROUP GROUP g c STREAMS a >"]);
        assert_eq!(reply, None);
    }

    for same in [
        "XREADGROUP GROUP g c STREAMS a 0",
        "XREADGROUP GROUP g c NOACK STREAMS a >",
        "XREADGROUP GROUP g c STREAMS a a > >",
        "XREADGROUP GROUP g c STREAMS a b >",
        "XREADGROUP GROUP g c BLOCK -1 STREAMS a >",
        "XREADGROUP GROUP g c COUNT x STREAMS a >",
        "XREADGROUP COUNT 1 STREAMS a >",
        "XREADGROUP GROUP g c BOGUS STREAMS a >",
    ] {
        assert_as_is(same);
    }
}

#[test]
fn blocking_pops_become_pops_of_the_first_key_with_data() {
    let (probe, commands, reply) = probed("BLPOP a b 0", &[b"+none\r\n", b"$-1\r\n", b"+list\r\n", b"$1\r\nx\r\n"]);
    assert_eq!(probe, ["TYPE a", "LINDEX a 0", "TYPE b", "LINDEX b 0"]);
    assert_eq!(commands, ["LPOP b"]);
    assert_eq!(reply.as_deref(), Some("*2\r\n$1\r\nb\r\n$1\r\nx\r\n"));

    let (probe, commands, _) = probed("BRPOP a 1.5", &[b"+list\r\n", b"$1\r\ny\r\n"]);
    assert_eq!(probe, ["TYPE a", "LINDEX a -1"]);
    assert_eq!(commands, ["RPOP a"]);

    let (_, commands, reply) =
        probed("BLPOP a b 0", &[b"+string\r\n", b"-WRONGTYPE x\r\n", b"+list\r\n", b"$1\r\nx\r\n"]);
    assert!(commands.is_empty());
    assert!(reply.unwrap().starts_with("-WRONGTYPE"));

    let (_, commands, reply) = probed("BLPOP a 0", &[b"+none\r\n", b"$-1\r\n"]);
    assert!(commands.is_empty());
    assert_eq!(reply.as_deref(), Some("*-1\r\n"));

    let (probe, commands, reply) = probed("BZPOPMAX z 0", &[b"+zset\r\n", b"*2\r\n$1\r\nm\r\n$3\r\n2.5\r\n"]);
    assert_eq!(probe, ["TYPE z", "ZRANGE z -1 -1 WITHSCORES"]);
    assert_eq!(commands, ["ZPOPMAX z"]);
    assert_eq!(reply.as_deref(), Some("*3\r\n$1\r\nz\r\n$1\r\nm\r\n$3\r\n2.5\r\n"));
    let (probe, commands, _) = probed("bzpopmin z 0", &[b"+zset\r\n", b"*2\r\n$1\r\nm\r\n$1\r\n1\r\n"]);
    assert_eq!(probe, ["TYPE z", "ZRANGE z 0 0 WITHSCORES"]);
    assert_eq!(commands, ["ZPOPMIN z"]);

    assert_eq!(rewritten("BRPOPLPUSH a b 0"), "RPOPLPUSH a b");
    assert_eq!(rewritten("BLMOVE a b LEFT RIGHT 1.5"), "LMOVE a b LEFT RIGHT");
    assert_eq!(rewritten("BLMPOP 0 2 a b LEFT COUNT 2"), "LMPOP 2 a b LEFT COUNT 2");
    assert_eq!(rewritten("BZMPOP 0.1 1 z MIN"), "ZMPOP 1 z MIN");
    for same in ["BLPOP a -1", "BLPOP a x", "BRPOPLPUSH a b -1", "BLMOVE a b LEFT RIGHT nan", "BLMPOP -1 1 a LEFT"] {
        assert_as_is(same);
    }
}

#[test]
fn everything_else_is_as_is() {
    for same in [
        "GET k",
        "SETNX k v",
        "GETSET k v",
        "GETDEL k",
        "PERSIST k",
        "SRANDMEMBER k 3",
        "RANDOMKEY",
        "EVAL return 1 0",
        "FCALL f 0",
        "XREADGROUP GROUP g c STREAMS s 0",
        "INCRBY k 1",
        "ZINCRBY z 1.5 m",
        "SORT s BY nosort STORE d",
        "A-COMMAND-NAME-LONGER-THAN-ANY",
    ] {
        assert_as_is(same);
    }
    assert!(matches!(plan(&[], NOW), Plan::AsIs));
    // Too few arguments never panics (the caller checks arity; this is only a guard).
    for short in ["EXPIRE k", "SETEX k 1", "BLPOP 0", "XCLAIM s g c 0", "INCRBYFLOAT k"] {
        assert_as_is(short);
    }
}

#[test]
fn a_short_reply_list_is_an_error_not_a_panic() {
    let (_, commands, reply) = probed("BLPOP a b 0", &[b"+none\r\n"]);
    assert!(commands.is_empty());
    assert!(reply.unwrap().starts_with("-ERR memlog"));
}

mod never_panics {
    use bytes::Bytes;
    use proptest::prelude::*;

    use super::super::{plan, Plan};

    const NAMES: &[&str] = &[
        "EXPIRE",
        "PEXPIRE",
        "EXPIREAT",
        "SET",
        "SETEX",
        "PSETEX",
        "GETEX",
        "RESTORE",
        "SPOP",
        "INCRBYFLOAT",
        "HINCRBYFLOAT",
        "XADD",
        "XCLAIM",
        "XAUTOCLAIM",
        "BLPOP",
        "BRPOP",
        "BZPOPMIN",
        "BZPOPMAX",
        "BRPOPLPUSH",
        "BLMOVE",
        "BLMPOP",
        "BZMPOP",
        "GET",
    ];
    const TOKENS: &[&str] = &[
        "EX",
        "PX",
        "EXAT",
        "PXAT",
        "NX",
        "XX",
        "GET",
        "KEEPTTL",
        "PERSIST",
        "ABSTTL",
        "IDLETIME",
        "FREQ",
        "*",
        "~",
        "=",
        "MAXLEN",
        "MINID",
        "LIMIT",
        "NOMKSTREAM",
        "IDLE",
        "TIME",
        "RETRYCOUNT",
        "FORCE",
        "JUSTID",
        "LASTID",
        "COUNT",
        "0",
        "1",
        "-1",
        "10",
        "1-0",
        "5-*",
        "9223372036854775807",
        "-9223372036854775808",
        "1.5",
        "k",
    ];
    const FRAMES: &[&[u8]] = &[
        b"+OK\r\n",
        b"+none\r\n",
        b"+list\r\n",
        b"+zset\r\n",
        b"$-1\r\n",
        b"*-1\r\n",
        b"*0\r\n",
        b":5\r\n",
        b"$3\r\nabc\r\n",
        b"-ERR x\r\n",
        b"*2\r\n$1\r\na\r\n$1\r\nb\r\n",
        b"*4\r\n:0\r\n:1\r\n$1\r\n1\r\n:1\r\n",
        b"*1\r\n*4\r\n$3\r\n1-0\r\n$1\r\nc\r\n:9\r\n:1\r\n",
        b"*3\r\n$3\r\n0-0\r\n*0\r\n*0\r\n",
        b"*5\r\n",
        b"$10\r\nab",
    ];

    fn arg() -> impl Strategy<Value = Bytes> {
        prop_oneof![
            prop::sample::select(TOKENS).prop_map(|t| Bytes::from_static(t.as_bytes())),
            prop::collection::vec(any::<u8>(), 0..24).prop_map(Bytes::from),
        ]
    }

    fn frame() -> impl Strategy<Value = Bytes> {
        prop_oneof![
            prop::sample::select(FRAMES).prop_map(Bytes::from_static),
            prop::collection::vec(any::<u8>(), 0..32).prop_map(Bytes::from),
        ]
    }

    proptest! {
        /// Any arguments, then any probe replies (short, malformed, unexpected): no panic, and a
        /// resolution without an override is exactly one command.
        #[test]
        fn on_any_command_or_probe_reply(
            name in prop::sample::select(NAMES),
            args in prop::collection::vec(arg(), 0..10),
            replies in prop::collection::vec(frame(), 0..14),
            now in any::<u64>(),
        ) {
            let command: Vec<Bytes> = std::iter::once(Bytes::from_static(name.as_bytes())).chain(args).collect();
            if let Plan::Probe { resolve, .. } = plan(&command, now) {
                let resolved = resolve(&replies);
                // The sequencer never has to choose which command's reply is the client's.
                prop_assert!(resolved.reply.is_some() || resolved.commands.len() == 1);
            }
        }
    }
}

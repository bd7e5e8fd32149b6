//! Relative times become absolute Unix milliseconds anchored to the batch's timestamp, as Redis
//! propagates them (`expireGenericCommand`, `setGenericCommand`, `getexCommand`,
//! `restoreCommand`). Validation mirrors Redis's exactly: an argument Redis refuses keeps the
//! command as sent, so Redis answers its own error (and replay repeats that harmless error).

use bytes::Bytes;

use super::args::{int, is, number, word};
use super::Plan;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Unit {
    Seconds,
    Millis,
}

/// How a command states an expiry: after `now` (EX/PX, EXPIRE/PEXPIRE) or at a Unix time.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum When {
    Relative(Unit),
    Absolute(Unit),
}

/// `getExpireMillisecondsOrReply`: the absolute expiry of a SET/GETEX/SETEX/PSETEX argument,
/// `None` where Redis answers "invalid expire time".
fn string_expiry(when: When, arg: &[u8], now: i64) -> Option<i64> {
    let value = int(arg)?;
    let unit = match when {
        When::Relative(unit) | When::Absolute(unit) => unit,
    };
    if value <= 0 || (unit == Unit::Seconds && value > i64::MAX / 1000) {
        return None;
    }
    let ms = if unit == Unit::Seconds { value * 1000 } else { value };
    let ms = if matches!(when, When::Relative(_)) { ms.checked_add(now)? } else { ms };
    (ms > 0).then_some(ms)
}

/// The expiry options of SET (`for_set`) or GETEX, as `parseExtendedStringArgumentsOrReply`
/// reads them; `None` on a syntax error.
struct StringOptions {
    /// The last expiry given and the index of its value.
    expiry: Option<(When, usize)>,
    /// Indices of every expiry option and value (several EX are accepted; the last wins).
    expiry_args: Vec<usize>,
}

fn string_options(args: &[Bytes], for_set: bool) -> Option<StringOptions> {
    let (mut nx, mut xx, mut keepttl, mut persist) = (false, false, false, false);
    let (mut ex, mut px, mut exat, mut pxat) = (false, false, false, false);
    let mut out = StringOptions { expiry: None, expiry_args: Vec::new() };
    let mut j = if for_set { 3 } else { 2 };
    while j < args.len() {
        let opt = &args[j];
        let has_next = j + 1 < args.len();
        let no_expiry = !ex && !px && !exat && !pxat;
        if for_set && is(opt, "NX") && !xx {
            nx = true;
        } else if for_set && is(opt, "XX") && !nx {
            xx = true;
        } else if for_set && is(opt, "GET") {
        } else if for_set && is(opt, "KEEPTTL") && !persist && no_expiry {
            keepttl = true;
        } else if !for_set && is(opt, "PERSIST") && no_expiry && !keepttl {
            persist = true;
        } else {
            let free = !keepttl && !persist && has_next;
            let when = if is(opt, "EX") && free && !exat && !px && !pxat {
                ex = true;
                When::Relative(Unit::Seconds)
            } else if is(opt, "PX") && free && !ex && !exat && !pxat {
                px = true;
                When::Relative(Unit::Millis)
            } else if is(opt, "EXAT") && free && !ex && !px && !pxat {
                exat = true;
                When::Absolute(Unit::Seconds)
            } else if is(opt, "PXAT") && free && !ex && !exat && !px {
                pxat = true;
                When::Absolute(Unit::Millis)
            } else {
                return None;
            };
            out.expiry = Some((when, j + 1));
            out.expiry_args.extend([j, j + 1]);
            j += 1;
        }
        j += 1;
    }
    Some(out)
}

/// SET k v [NX|XX] [GET] [EX|PX|EXAT s] → SET k v [NX|XX] [GET] PXAT ms.
pub(super) fn set(args: &[Bytes], now: i64) -> Plan {
    let Some(opts) = string_options(args, true) else { return Plan::AsIs };
    let Some((when, at)) = opts.expiry else { return Plan::AsIs };
    if when == When::Absolute(Unit::Millis) {
        return Plan::AsIs;
    }
    let Some(ms) = string_expiry(when, &args[at], now) else { return Plan::AsIs };
    let mut out: Vec<Bytes> =
        args.iter().enumerate().filter(|(i, _)| !opts.expiry_args.contains(i)).map(|(_, a)| a.clone()).collect();
    out.extend([word("PXAT"), number(ms)]);
    Plan::Rewrite(out)
}

/// SETEX k s v / PSETEX k ms v → SET k v PXAT ms.
pub(super) fn setex(args: &[Bytes], now: i64, seconds: bool) -> Plan {
    let unit = if seconds { Unit::Seconds } else { Unit::Millis };
    match string_expiry(When::Relative(unit), &args[2], now) {
        Some(ms) => Plan::Rewrite(vec![word("SET"), args[1].clone(), args[3].clone(), word("PXAT"), number(ms)]),
        None => Plan::AsIs,
    }
}

/// GETEX k EX|PX|EXAT t → GETEX k PXAT ms (PERSIST and plain GETEX are deterministic).
pub(super) fn getex(args: &[Bytes], now: i64) -> Plan {
    let Some(opts) = string_options(args, false) else { return Plan::AsIs };
    match opts.expiry {
        Some((when, at)) if when != When::Absolute(Unit::Millis) => match string_expiry(when, &args[at], now) {
            Some(ms) => Plan::Rewrite(vec![args[0].clone(), args[1].clone(), word("PXAT"), number(ms)]),
            None => Plan::AsIs,
        },
        _ => Plan::AsIs,
    }
}

/// EXPIRE/PEXPIRE/EXPIREAT k t [NX|XX|GT|LT] → PEXPIREAT k ms [same flags]. A negative or past
/// time is kept (Redis then deletes the key, and so does replay).
pub(super) fn expire(args: &[Bytes], now: i64, seconds: bool, relative: bool) -> Plan {
    let Some(mut when) = int(&args[2]) else { return Plan::AsIs };
    if seconds {
        if !(i64::MIN / 1000..=i64::MAX / 1000).contains(&when) {
            return Plan::AsIs;
        }
        when *= 1000;
    }
    let base = if relative { now } else { 0 };
    if when > i64::MAX - base {
        return Plan::AsIs;
    }
    when += base;
    if !seconds && !relative {
        return Plan::AsIs;
    }
    let mut out = vec![word("PEXPIREAT"), args[1].clone(), number(when)];
    out.extend_from_slice(&args[3..]);
    Plan::Rewrite(out)
}

/// RESTORE k ttl payload [opts] with ttl > 0 and no ABSTTL → RESTORE k now+ttl payload [opts]
/// ABSTTL. IDLETIME/FREQ are eviction hints (not in the dataset, not in its digest): as sent.
pub(super) fn restore(args: &[Bytes], now: i64) -> Plan {
    let (mut absttl, mut idletime, mut freq) = (false, false, false);
    let mut j = 4;
    while j < args.len() {
        let opt = &args[j];
        let has_next = j + 1 < args.len();
        if is(opt, "REPLACE") {
        } else if is(opt, "ABSTTL") {
            absttl = true;
        } else if is(opt, "IDLETIME") && has_next && !freq {
            match int(&args[j + 1]) {
                Some(v) if v >= 0 => idletime = true,
                _ => return Plan::AsIs,
            }
            j += 1;
        } else if is(opt, "FREQ") && has_next && !idletime {
            match int(&args[j + 1]) {
                Some(v) if (0..=255).contains(&v) => freq = true,
                _ => return Plan::AsIs,
            }
            j += 1;
        } else {
            return Plan::AsIs;
        }
        j += 1;
    }
    match int(&args[2]) {
        Some(ttl) if ttl > 0 && !absttl => match ttl.checked_add(now) {
            Some(at) => {
                let mut out = args.to_vec();
                out[2] = number(at);
                out.push(word("ABSTTL"));
                Plan::Rewrite(out)
            }
            None => Plan::AsIs,
        },
        _ => Plan::AsIs,
    }
}

//! The keys and channels a request names, with their access flags, found as Redis 7.0 finds
//! them for ACL checks: key specs first (`getKeysUsingKeySpecs`), and for the commands whose
//! specs are incomplete, variable, or fail on these arguments, the command's own key finder
//! (Redis's `getkeys_proc`s, which `COMMAND` does not show, so they are known here by name).
//! Channels come from Redis's fixed table of Pub/Sub commands.

use crate::catalog::{BeginSearch, Command, FindKeys, KeyFlags};

/// A key argument: its position in the request (0 is the command name) and its access flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyRef {
    pub pos: usize,
    pub flags: KeyFlags,
}

/// Redis's own key finders for commands whose key specs do not always suffice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeysFallback {
    /// `genericGetKeys`: a key count, the keys after it, and maybe a destination key first.
    Counted {
        store: usize,
        count: usize,
        first: usize,
    },
    Sort,
    SortRo,
    Migrate,
    Georadius,
    Xread,
    Set,
    Bitfield,
}

pub(crate) fn fallback_for(name: &str) -> Option<KeysFallback> {
    use KeysFallback::*;
    Some(match name {
        "sintercard" | "zunion" | "zinter" | "zdiff" | "zintercard" | "lmpop" | "zmpop" => {
            Counted { store: 0, count: 1, first: 2 }
        }
        "zunionstore" | "zinterstore" | "zdiffstore" => Counted { store: 1, count: 2, first: 3 },
        "eval" | "evalsha" | "eval_ro" | "evalsha_ro" | "fcall" | "fcall_ro" | "blmpop" | "bzmpop" => {
            Counted { store: 0, count: 2, first: 3 }
        }
        "sort" => Sort,
        "sort_ro" => SortRo,
        "migrate" => Migrate,
        "georadius" | "georadiusbymember" => Georadius,
        "xread" | "xreadgroup" => Xread,
        "set" => Set,
        "bitfield" => Bitfield,
        _ => return None,
    })
}

/// Which arguments of a Pub/Sub command are channels, and how ACL rules see them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ChannelSpec {
    /// Only publishing and subscribing are checked; unsubscribing never is.
    pub checked: bool,
    /// `PSUBSCRIBE` names patterns, matched literally against the user's channel rules.
    pub pattern: bool,
    /// `PUBLISH` names one channel; the others name every argument from the first.
    pub single: bool,
}

pub(crate) fn channel_spec_for(name: &str) -> Option<ChannelSpec> {
    let (checked, pattern, single) = match name {
        "subscribe" | "ssubscribe" => (true, false, false),
        "psubscribe" => (true, true, false),
        "unsubscribe" | "sunsubscribe" => (false, false, false),
        "punsubscribe" => (false, true, false),
        "publish" | "spublish" => (true, false, true),
        _ => return None,
    };
    Some(ChannelSpec { checked, pattern, single })
}

/// A channel argument the ACL checks: its position and whether it is a pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelRef {
    pub pos: usize,
    pub pattern: bool,
}

/// The channels of a request that ACL rules apply to (none for other commands).
pub fn checked_channels(command: &Command, argc: usize) -> Vec<ChannelRef> {
    match command.channels {
        Some(spec) if spec.checked => {
            let stop = if spec.single { 2.min(argc) } else { argc };
            (1..stop).map(|pos| ChannelRef { pos, pattern: spec.pattern }).collect()
        }
        _ => Vec::new(),
    }
}

/// The keys of a request with their flags (Redis's `getKeysFromCommandWithSpecs`).
pub fn command_keys<A: AsRef<[u8]>>(command: &Command, args: &[A]) -> Vec<KeyRef> {
    let has_key_spec = command.key_specs.iter().any(|s| !s.flags.contains(KeyFlags::NOT_KEY));
    let variable = command.key_specs.iter().any(|s| s.flags.contains(KeyFlags::VARIABLE_FLAGS));
    if has_key_spec && !variable {
        if let Some(keys) = keys_from_specs(command, args) {
            return keys;
        }
    }
    match command.keys_fallback {
        Some(fallback) => keys_from_fallback(fallback, args),
        None => Vec::new(),
    }
}

/// Keys by the specs, or `None` where a spec is unknown, incomplete or does not fit the
/// arguments (then Redis asks the command's own key finder).
fn keys_from_specs<A: AsRef<[u8]>>(command: &Command, args: &[A]) -> Option<Vec<KeyRef>> {
    let argc = args.len() as i64;
    let mut keys = Vec::new();
    for spec in command.key_specs.iter().filter(|s| !s.flags.contains(KeyFlags::NOT_KEY)) {
        let mut first = match &spec.begin_search {
            BeginSearch::Index(pos) => *pos,
            BeginSearch::Keyword { keyword, start_from } => match find_keyword(args, keyword, *start_from) {
                Some(pos) => pos + 1,
                None => continue,
            },
            BeginSearch::Unknown => return None,
        };
        let (last, step) = match spec.find_keys {
            FindKeys::Range { last_key, key_step, limit } => {
                let last = if last_key >= 0 {
                    first + last_key
                } else if limit == 0 {
                    argc + last_key
                } else {
                    first + ((argc - first) / limit + last_key)
                };
                (last, key_step)
            }
            FindKeys::KeyNum { key_num_idx, first_key, key_step } => {
                let count_arg = usize::try_from(first + key_num_idx).ok().and_then(|i| args.get(i))?;
                let count = parse_strict_i64(count_arg.as_ref()).filter(|n| *n >= 0)?;
                first += first_key;
                (first + count - 1, key_step)
            }
            FindKeys::Unknown => return None,
        };
        if last >= argc || last < first || first >= argc || step <= 0 {
            return None;
        }
        let mut pos = first;
        while pos <= last {
            keys.push(KeyRef { pos: usize::try_from(pos).ok()?, flags: spec.flags });
            pos += step;
        }
        if spec.flags.contains(KeyFlags::INCOMPLETE) {
            return None;
        }
    }
    Some(keys)
}

/// Where a spec's keyword is: searched from `start_from` towards the end (or, when negative,
/// from that far from the end towards the start), the last (first) argument left out as Redis
/// leaves it out.
fn find_keyword<A: AsRef<[u8]>>(args: &[A], keyword: &[u8], start_from: i64) -> Option<i64> {
    let argc = args.len() as i64;
    let (start, end) = if start_from > 0 { (start_from, argc - 1) } else { (argc + start_from, 1) };
    let mut i = start;
    while i != end {
        if i >= argc || i < 1 {
            return None;
        }
        // 1 <= i < argc here.
        if usize::try_from(i)
            .ok()
            .and_then(|i| args.get(i))
            .is_some_and(|arg| arg.as_ref().eq_ignore_ascii_case(keyword))
        {
            return Some(i);
        }
        i += if start <= end { 1 } else { -1 };
    }
    None
}

fn keys_from_fallback<A: AsRef<[u8]>>(fallback: KeysFallback, args: &[A]) -> Vec<KeyRef> {
    let arg = |i: usize| args.get(i).map(|a| a.as_ref()).unwrap_or(b"");
    let key = |pos: usize, flags: KeyFlags| KeyRef { pos, flags };
    let argc = args.len();
    match fallback {
        KeysFallback::Counted { store, count, first } => {
            let num = c_atoi(arg(count));
            let Some(num) = usize::try_from(num).ok().filter(|n| (1..=argc.saturating_sub(first)).contains(n)) else {
                return Vec::new();
            };
            let mut keys: Vec<KeyRef> = (0..num).map(|i| key(first + i, KeyFlags::NONE)).collect();
            if store > 0 {
                keys.push(key(store, KeyFlags::NONE));
            }
            keys
        }
        KeysFallback::SortRo => vec![key(1, KeyFlags::RO | KeyFlags::ACCESS)],
        KeysFallback::Sort => {
            let mut store = None;
            let mut i = 2;
            while i < argc {
                let a = arg(i);
                if a.eq_ignore_ascii_case(b"limit") {
                    i += 2;
                } else if a.eq_ignore_ascii_case(b"get") || a.eq_ignore_ascii_case(b"by") {
                    i += 1;
                } else if a.eq_ignore_ascii_case(b"store") && i + 1 < argc {
                    store = Some(i + 1);
                }
                i += 1;
            }
            let mut keys = vec![key(1, KeyFlags::RO | KeyFlags::ACCESS)];
            keys.extend(store.map(|pos| key(pos, KeyFlags::OW | KeyFlags::UPDATE)));
            keys
        }
        KeysFallback::Migrate => {
            let (mut first, mut num) = (3, 1);
            if argc > 6 {
                let mut i = 6;
                while i < argc {
                    let a = arg(i);
                    if a.eq_ignore_ascii_case(b"keys") {
                        if arg(3).is_empty() {
                            first = i + 1;
                            num = argc - first;
                        } else {
                            num = 0;
                        }
                        break;
                    }
                    if a.eq_ignore_ascii_case(b"auth") {
                        i += 1;
                    } else if a.eq_ignore_ascii_case(b"auth2") {
                        i += 2;
                    }
                    i += 1;
                }
            }
            (first..first + num).map(|pos| key(pos, KeyFlags::RW | KeyFlags::ACCESS | KeyFlags::DELETE)).collect()
        }
        KeysFallback::Georadius => {
            let mut stored = None;
            let mut i = 5;
            while i < argc {
                let a = arg(i);
                if (a.eq_ignore_ascii_case(b"store") || a.eq_ignore_ascii_case(b"storedist")) && i + 1 < argc {
                    stored = Some(i + 1);
                    i += 1;
                }
                i += 1;
            }
            let mut keys = vec![key(1, KeyFlags::NONE)];
            keys.extend(stored.map(|pos| key(pos, KeyFlags::NONE)));
            keys
        }
        KeysFallback::Xread => {
            let mut streams = None;
            let mut i = 1;
            while i < argc {
                let a = arg(i);
                if a.eq_ignore_ascii_case(b"block") || a.eq_ignore_ascii_case(b"count") {
                    i += 1;
                } else if a.eq_ignore_ascii_case(b"group") {
                    i += 2;
                } else if a.eq_ignore_ascii_case(b"noack") {
                } else if a.eq_ignore_ascii_case(b"streams") {
                    streams = Some(i);
                    break;
                } else {
                    break;
                }
                i += 1;
            }
            let Some(streams) = streams else { return Vec::new() };
            let num = argc - streams - 1;
            if num == 0 || num % 2 != 0 {
                return Vec::new();
            }
            (streams + 1..streams + 1 + num / 2).map(|pos| key(pos, KeyFlags::NONE)).collect()
        }
        KeysFallback::Set => {
            let get = (3..argc).any(|i| arg(i).eq_ignore_ascii_case(b"get"));
            let flags =
                if get { KeyFlags::RW | KeyFlags::ACCESS | KeyFlags::UPDATE } else { KeyFlags::OW | KeyFlags::UPDATE };
            vec![key(1, flags)]
        }
        KeysFallback::Bitfield => {
            let mut readonly = true;
            let mut i = 2;
            while i < argc {
                let remaining = argc - i - 1;
                let a = arg(i);
                if a.eq_ignore_ascii_case(b"get") && remaining >= 2 {
                    i += 2;
                } else if (a.eq_ignore_ascii_case(b"set") || a.eq_ignore_ascii_case(b"incrby")) && remaining >= 3 {
                    readonly = false;
                    break;
                } else if a.eq_ignore_ascii_case(b"overflow") && remaining >= 1 {
                    i += 1;
                } else {
                    readonly = false;
                    break;
                }
                i += 1;
            }
            let flags = if readonly {
                KeyFlags::RO | KeyFlags::ACCESS
            } else {
                KeyFlags::RW | KeyFlags::ACCESS | KeyFlags::UPDATE
            };
            vec![key(1, flags)]
        }
    }
}

/// Redis's `string2ll`: an optional `-`, digits without leading zeros, no overflow.
pub(crate) fn parse_strict_i64(s: &[u8]) -> Option<i64> {
    let (negative, digits) = match s {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, s),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) || (digits[0] == b'0' && s.len() > 1) {
        return None;
    }
    let magnitude: i128 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    i64::try_from(if negative { -magnitude } else { magnitude }).ok()
}

/// C's `atoi` as glibc runs it: leading blanks, a sign, then digits up to the first other
/// byte; out-of-range values wrap as `(int)strtol(...)` does.
fn c_atoi(s: &[u8]) -> i64 {
    let mut i = 0;
    while i < s.len() && matches!(s[i], b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c) {
        i += 1;
    }
    let negative = match s.get(i) {
        Some(b'-') => {
            i += 1;
            true
        }
        Some(b'+') => {
            i += 1;
            false
        }
        _ => false,
    };
    let mut value: i64 = 0;
    let mut saturated = false;
    while let Some(d) = s.get(i).filter(|d| d.is_ascii_digit()) {
        match value.checked_mul(10).and_then(|v| v.checked_add(i64::from(d - b'0'))) {
            Some(v) => value = v,
            None => saturated = true,
        }
        i += 1;
    }
    let long = match (saturated, negative) {
        (true, false) => i64::MAX,
        (true, true) => i64::MIN,
        (false, true) => -value,
        (false, false) => value,
    };
    // `(int)` of a long keeps its low 32 bits (two's complement, as gcc does).
    let [a, b, c, d, ..] = long.to_le_bytes();
    i64::from(i32::from_le_bytes([a, b, c, d]))
}

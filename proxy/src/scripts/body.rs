//! What the proxy can learn from a script's source without running it: its SHA1 (the name
//! Redis gives it), whether its shebang declares it read-only, and whether it visibly does
//! something replay from the journal cannot reproduce.
//!
//! memlog journals a script as its call (`EVAL body …`, `FCALL f …`) and replays that call,
//! where Redis 7 replicates the script's effects. Replay rebuilds the same state only if the
//! script is deterministic. The scan below refuses what is visible in the source: a quoted
//! command name whose result is a random choice (`'RANDOMKEY'`, `'SPOP'`, `'SRANDMEMBER'`,
//! `'HRANDFIELD'`, `'ZRANDMEMBER'`), `redis.set_repl` (effects the replicas would not get but
//! replay would), and keys memlog reserves (`__memlog:`). A script that visibly reads the clock
//! or sets a relative TTL (`'TIME'`, `'EXPIRE'`, `'PEXPIRE'`, `'SETEX'`, `'PSETEX'`, `'GETEX'`,
//! `'EX'`, `'PX'`) is journaled with its time pinned ([`super::pin`]). A name built at run time
//! (`'TI'..'ME'`, a command or option passed in ARGV) is not seen; `math.random` is deterministic
//! (Redis reseeds it before every script).

/// Commands whose result, inside a script, is a random choice.
const NONDETERMINISTIC: &[&str] = &["RANDOMKEY", "SPOP", "SRANDMEMBER", "HRANDFIELD", "ZRANDMEMBER"];
/// Commands and options whose effect depends on the clock: the script's time is pinned.
const TIME_DEPENDENT: &[&str] = &["TIME", "EXPIRE", "PEXPIRE", "SETEX", "PSETEX", "GETEX", "EX", "PX"];

/// How a writing script is journaled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Form {
    /// Its call as sent.
    AsIs,
    /// Wrapped so that TIME and relative TTLs use the time the proxy passes with the call.
    PinnedTime,
}

/// Why a script cannot be journaled as its call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Unjournalable {
    #[error("calls {0}, whose result would differ when the journal is replayed")]
    Nondeterministic(&'static str),
    #[error("uses redis.set_repl: replay from the journal would apply the effects it hides from replicas")]
    SetRepl,
    #[error("names a key starting with '__memlog:', which memlog reserves")]
    ReservedKey,
    #[error("calls SWAPDB, which would carry memlog's own key (the node's journal position) out of database 0")]
    SwapsDatabases,
}

impl Unjournalable {
    /// The client's error line.
    pub(crate) fn reply_text(&self) -> String {
        format!(
            "ERR memlog: this script {self}. memlog journals scripts as calls and replays them, so a script that \
             writes must be deterministic (pass times and random choices as arguments)"
        )
    }
}

/// The lower-case hex SHA1 of `body`, the name under which Redis caches a script.
pub(crate) fn sha1_hex(body: &[u8]) -> String {
    sha1_smol::Sha1::from(body).digest().to_string()
}

/// True when the body starts with a `#!lua` shebang whose flags include `no-writes`. Anything
/// else (no shebang, another engine, a malformed one) counts as a script that may write, so it
/// goes through the journal; Redis answers the shebang's errors.
pub(crate) fn declared_read_only(body: &[u8]) -> bool {
    let Some(line) = body.strip_prefix(b"#!") else { return false };
    let line = &line[..line.iter().position(|&b| b == b'\n').unwrap_or(line.len())];
    let mut parts = line.split(|&b| b == b' ').filter(|p| !p.is_empty());
    if parts.next() != Some(&b"lua"[..]) {
        return false;
    }
    parts
        .filter_map(|part| part.strip_prefix(b"flags="))
        .any(|flags| flags.split(|&b| b == b',').any(|flag| flag == b"no-writes"))
}

/// How a script's call can be journaled so that replay reproduces it, or why it cannot.
pub(crate) fn journal_form(body: &[u8]) -> Result<Form, Unjournalable> {
    let mut form = Form::AsIs;
    scan(body, |literal| {
        if TIME_DEPENDENT.iter().any(|n| literal.eq_ignore_ascii_case(n.as_bytes())) {
            form = Form::PinnedTime;
        }
        Ok(())
    })?;
    Ok(form)
}

/// Checks a function library: FCALL is journaled as sent (a library's time cannot be pinned),
/// so `'TIME'` is refused too. Relative TTLs set by functions stay anchored to the replay's
/// clock (a documented gap: refusing them would refuse most libraries).
pub(crate) fn check_library(code: &[u8]) -> Result<(), Unjournalable> {
    scan(code, |literal| {
        if literal.eq_ignore_ascii_case(b"TIME") {
            return Err(Unjournalable::Nondeterministic("TIME"));
        }
        Ok(())
    })
}

/// Refuses what no script may do, and shows every quoted literal outside comments to `literal`.
fn scan(body: &[u8], mut literal: impl FnMut(&[u8]) -> Result<(), Unjournalable>) -> Result<(), Unjournalable> {
    if body.windows(9).any(|w| w == b"__memlog:") {
        return Err(Unjournalable::ReservedKey);
    }
    let mut i = 0;
    while i < body.len() {
        let rest = &body[i..];
        if rest.starts_with(b"--") {
            i += 2 + match long_bracket_len(&rest[2..]) {
                Some(len) => len,
                None => rest[2..].iter().position(|&b| b == b'\n').unwrap_or(rest.len() - 2),
            };
        } else if let Some(len) = long_bracket_len(rest) {
            i += len;
        } else if rest[0] == b'\'' || rest[0] == b'"' {
            let (text, len) = quoted(rest);
            if let Some(name) = NONDETERMINISTIC.iter().find(|n| text.eq_ignore_ascii_case(n.as_bytes())) {
                return Err(Unjournalable::Nondeterministic(name));
            }
            // The applier puts `__memlog:lsn` back after a SWAPDB it sees (`databases`), not
            // after one a script makes.
            if text.eq_ignore_ascii_case(b"SWAPDB") {
                return Err(Unjournalable::SwapsDatabases);
            }
            literal(&text)?;
            i += len;
        } else if rest[0].is_ascii_alphabetic() || rest[0] == b'_' {
            let len = rest.iter().position(|&b| !(b.is_ascii_alphanumeric() || b == b'_')).unwrap_or(rest.len());
            if &rest[..len] == b"set_repl" {
                return Err(Unjournalable::SetRepl);
            }
            i += len;
        } else {
            i += 1;
        }
    }
    Ok(())
}

/// The length of a Lua long bracket (`[[…]]`, `[==[…]==]`) starting at `text`, to its end.
fn long_bracket_len(text: &[u8]) -> Option<usize> {
    let level = text.strip_prefix(b"[")?.iter().take_while(|&&b| b == b'=').count();
    if text.get(level + 1) != Some(&b'[') {
        return None;
    }
    let mut close = Vec::with_capacity(level + 2);
    close.push(b']');
    close.extend(std::iter::repeat_n(b'=', level));
    close.push(b']');
    let body = &text[level + 2..];
    let end = body.windows(close.len()).position(|w| w == close.as_slice()).map_or(body.len(), |p| p + close.len());
    Some(level + 2 + end)
}

/// A quoted literal at `text` (which starts with its quote): its content with escapes taken
/// literally (`\x` → `x`), and the length consumed.
fn quoted(text: &[u8]) -> (Vec<u8>, usize) {
    let quote = text[0];
    let mut content = Vec::new();
    let mut i = 1;
    while i < text.len() {
        match text[i] {
            b if b == quote => return (content, i + 1),
            b'\n' => return (content, i),
            b'\\' if i + 1 < text.len() => {
                content.push(text[i + 1]);
                i += 2;
            }
            b => {
                content.push(b);
                i += 1;
            }
        }
    }
    (content, i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha1_is_redis_script_name() {
        assert_eq!(sha1_hex(b"return 1"), "e0e1f9fabfc9d4800c877a703b823ac0578ff8db");
    }

    #[test]
    fn read_only_shebang() {
        assert!(declared_read_only(b"#!lua flags=no-writes\nreturn 1"));
        assert!(declared_read_only(b"#!lua name=x flags=allow-oom,no-writes\nreturn 1"));
        assert!(!declared_read_only(b"#!lua\nreturn 1"));
        assert!(!declared_read_only(b"#!lua flags=allow-oom\nreturn 1"));
        assert!(!declared_read_only(b"#!python flags=no-writes\nreturn 1"));
        assert!(!declared_read_only(b"return 1 -- #!lua flags=no-writes"));
        assert!(!declared_read_only(b"#!lua\nflags=no-writes"));
    }

    #[test]
    fn nondeterminism_is_found_in_calls_not_in_comments_or_keys() {
        let refused = |body: &str| journal_form(body.as_bytes()).err();
        assert_eq!(refused("return redis.call('RANDOMKEY')"), Some(Unjournalable::Nondeterministic("RANDOMKEY")));
        assert_eq!(
            refused("return redis.call(\"srandmember\", KEYS[1])"),
            Some(Unjournalable::Nondeterministic("SRANDMEMBER"))
        );
        assert_eq!(refused("redis.set_repl(redis.REPL_NONE)"), Some(Unjournalable::SetRepl));
        assert_eq!(refused("return redis.call('GET', '__memlog:lsn')"), Some(Unjournalable::ReservedKey));
        assert_eq!(refused("return redis.call('swapdb', 0, 1)"), Some(Unjournalable::SwapsDatabases));
        assert_eq!(refused("-- 'TIME' is passed as ARGV[1]\nreturn redis.call('SET', KEYS[1], ARGV[1])"), None);
        assert_eq!(refused("--[[ redis.call('TIME') ]] return 1"), None);
        assert_eq!(refused("local s = [[ 'SPOP' ]] return s"), None);
        assert_eq!(refused("return redis.call('SET', 'timer', 'it''s')"), None);
        assert_eq!(refused("local x = 'unterminated"), None);
        assert_eq!(refused("local set_replica = 1 return 'a\\'SPOP'"), None);
    }

    #[test]
    fn libraries_may_set_ttls_but_not_read_the_clock() {
        assert_eq!(check_library(b"redis.call('SET', KEYS[1], 1, 'EX', 5)"), Ok(()));
        assert_eq!(check_library(b"return redis.call('time')"), Err(Unjournalable::Nondeterministic("TIME")));
        assert_eq!(check_library(b"return redis.call('SPOP', 'k')"), Err(Unjournalable::Nondeterministic("SPOP")));
    }

    #[test]
    fn clock_and_relative_ttls_pin_the_time() {
        let form = |body: &str| journal_form(body.as_bytes()).unwrap();
        assert_eq!(form("return redis.call('TIME')"), Form::PinnedTime);
        assert_eq!(form("redis.call('SET', KEYS[1], 1, 'ex', 10)"), Form::PinnedTime);
        assert_eq!(form("redis.call(\"expire\", KEYS[1], 10)"), Form::PinnedTime);
        assert_eq!(form("redis.call('SET', KEYS[1], 1) return redis.call('PEXPIREAT', KEYS[1], 1)"), Form::AsIs);
        assert_eq!(form("-- 'TIME'\nreturn redis.call('INCR', KEYS[1])"), Form::AsIs);
    }

    #[test]
    fn any_bytes_are_scanned_without_panicking() {
        for body in [&b"'"[..], b"\"\\", b"[", b"[=", b"[==[", b"--[", b"--", b"\xff\xfe'TIME"] {
            let _ = journal_form(body);
            let _ = declared_read_only(body);
        }
    }
}

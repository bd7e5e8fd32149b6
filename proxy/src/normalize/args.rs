//! Parsing of client arguments exactly as Redis 7.0 parses them, so a rewrite is only made
//! where Redis would accept the original (and an argument Redis refuses stays as sent, for
//! Redis to answer its own error).

use bytes::Bytes;

/// The argument as C code sees it: Redis compares options with `strcasecmp` on the raw
/// buffer, which stops at the first NUL byte.
fn c_str(arg: &[u8]) -> &[u8] {
    arg.iter().position(|&b| b == 0).map_or(arg, |nul| &arg[..nul])
}

/// `strcasecmp(arg, word) == 0`, Redis's option test.
pub(super) fn is(arg: &[u8], word: &str) -> bool {
    c_str(arg).eq_ignore_ascii_case(word.as_bytes())
}

/// Redis's `string2ll`: the strict integer syntax of `getLongLongFromObject` (no sign but
/// `-`, no leading zeros, no spaces, fits in an i64).
pub(crate) fn int(arg: &[u8]) -> Option<i64> {
    // LONG_STR_SIZE: longer strings are refused before parsing.
    if arg.is_empty() || arg.len() >= 21 {
        return None;
    }
    if arg == b"0" {
        return Some(0);
    }
    let (negative, digits) = match arg.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, arg),
    };
    if !matches!(digits.first(), Some(b'1'..=b'9')) || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let magnitude = digits.iter().try_fold(0u64, |acc, &d| acc.checked_mul(10)?.checked_add(u64::from(d - b'0')))?;
    if negative {
        0i64.checked_sub_unsigned(magnitude)
    } else {
        i64::try_from(magnitude).ok()
    }
}

/// Redis's `string2ull` (a stream ID part): `string2ll` if non-negative, else `strtoull`
/// over decimal digits (values above `i64::MAX`).
fn uint(part: &[u8]) -> Option<u64> {
    if let Some(v) = int(part) {
        return u64::try_from(v).ok();
    }
    // strtoull also takes leading spaces and a sign; Redis's stream IDs never need them, and an
    // ID this function refuses only keeps a command as sent, which stays correct.
    if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(part).ok()?.parse().ok()
}

/// A stream ID `ms-seq` (a missing seq is 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct StreamId {
    pub ms: u64,
    pub seq: u64,
}

impl StreamId {
    /// `streamParseStrictIDOrReply` without the `<ms>-*` form: `-` and `+` are refused.
    pub(super) fn parse_strict(arg: &[u8]) -> Option<StreamId> {
        let text = c_str(arg);
        if arg.len() > 127 || text == b"-" || text == b"+" {
            return None;
        }
        match text.iter().position(|&b| b == b'-') {
            Some(dash) => Some(StreamId { ms: uint(&text[..dash])?, seq: uint(&text[dash + 1..])? }),
            None => Some(StreamId { ms: uint(text)?, seq: 0 }),
        }
    }

    /// The ID Redis assigns after `self`, the stream's last ID (`streamIncrID`); `None` once
    /// the stream has used the last possible ID.
    pub(super) fn next(self) -> Option<StreamId> {
        match (self.ms, self.seq) {
            (u64::MAX, u64::MAX) => None,
            (ms, u64::MAX) => Some(StreamId { ms: ms + 1, seq: 0 }),
            (ms, seq) => Some(StreamId { ms, seq: seq + 1 }),
        }
    }

    pub(super) fn to_arg(self) -> Bytes {
        Bytes::from(format!("{}-{}", self.ms, self.seq))
    }
}

/// Whether a blocking command's timeout (seconds, a float) is one Redis accepts.
pub(super) fn valid_timeout(arg: &[u8]) -> bool {
    timeout_ms(arg).is_some()
}

/// A blocking command's timeout (seconds, a float) in milliseconds, as Redis reads it
/// (`getTimeoutFromObjectOrReply`: a finite float whose `ceil(t * 1000)` is not negative; 0
/// blocks forever); None when Redis refuses it. Forms Rust does not parse (hex floats) count
/// as refused: the command then stays as sent.
pub fn timeout_ms(arg: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(arg).ok()?;
    if text.starts_with(|c: char| c.is_ascii_whitespace()) {
        return None;
    }
    let t = text.parse::<f64>().ok().filter(|t| t.is_finite())?;
    let ms = (t * 1000.0).ceil();
    (ms >= 0.0 && ms < i64::MAX as f64).then_some(crate::units::whole(ms))
}

/// A constant argument.
pub(super) fn word(s: &'static str) -> Bytes {
    Bytes::from_static(s.as_bytes())
}

/// A decimal argument.
pub(super) fn number(n: impl std::fmt::Display) -> Bytes {
    Bytes::from(n.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_follow_string2ll() {
        assert_eq!(int(b"0"), Some(0));
        assert_eq!(int(b"10"), Some(10));
        assert_eq!(int(b"-10"), Some(-10));
        assert_eq!(int(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(int(b"-9223372036854775808"), Some(i64::MIN));
        for bad in [&b""[..], b"-", b"-0", b"010", b"+1", b" 1", b"1 ", b"1.0", b"9223372036854775808", b"1e3"] {
            assert_eq!(int(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn options_compare_like_strcasecmp() {
        assert!(is(b"nx", "NX"));
        assert!(is(b"Nx\0junk", "NX"));
        assert!(!is(b"NXX", "NX"));
    }

    #[test]
    fn stream_ids() {
        assert_eq!(StreamId::parse_strict(b"5-3"), Some(StreamId { ms: 5, seq: 3 }));
        assert_eq!(StreamId::parse_strict(b"5"), Some(StreamId { ms: 5, seq: 0 }));
        assert_eq!(
            StreamId::parse_strict(b"18446744073709551615-18446744073709551615"),
            Some(StreamId { ms: u64::MAX, seq: u64::MAX })
        );
        for bad in [&b"-"[..], b"+", b"x-1", b"1-", b"1-x", b"-1", b"1-2-3"] {
            assert_eq!(StreamId::parse_strict(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
        assert_eq!(StreamId { ms: 1, seq: 2 }.next(), Some(StreamId { ms: 1, seq: 3 }));
        assert_eq!(StreamId { ms: 1, seq: u64::MAX }.next(), Some(StreamId { ms: 2, seq: 0 }));
        assert_eq!(StreamId { ms: u64::MAX, seq: u64::MAX }.next(), None);
    }

    #[test]
    fn timeouts() {
        for ok in ["0", "1", "0.5", "1e3", "-0", "-0.0001"] {
            assert!(valid_timeout(ok.as_bytes()), "{ok}");
        }
        for bad in ["-1", "abc", "nan", "inf", " 1", "", "1e400"] {
            assert!(!valid_timeout(bad.as_bytes()), "{bad}");
        }
    }
}

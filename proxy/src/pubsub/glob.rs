//! Redis's glob matching (`stringmatchlen` with `nocase = 0`), so PSUBSCRIBE patterns and
//! `PUBSUB CHANNELS <pattern>` select exactly the channels Redis would, quirks included:
//! an unterminated `[` class ends at the pattern's end, ranges may run backwards, bytes
//! compare as C's signed `char` in ranges, and a failed `*` stops longer tries early. Like
//! newer Redis versions (7.0 has no such bound), a pattern nesting more than `MAX_NESTING`
//! stars matches nothing, so no pattern can exhaust the stack.

/// Deepest `*` recursion tried, as in Redis's `stringmatchlen_impl`.
const MAX_NESTING: usize = 1000;

/// True when `string` matches the glob `pattern`.
pub(crate) fn matches(pattern: &[u8], string: &[u8]) -> bool {
    let mut skip_longer = false;
    match_from(pattern, string, &mut skip_longer, 0)
}

/// How a `[…]` class starting right after its `[` judged byte `c`: whether it matched, and
/// the index (in the class text) of its closing `]`, or the class text's length if the
/// pattern ended first.
fn class(class_text: &[u8], c: u8) -> (bool, usize) {
    let (negate, mut i) = if class_text.first() == Some(&b'^') { (true, 1) } else { (false, 0) };
    let mut matched = false;
    loop {
        let rest = &class_text[i..];
        match rest {
            [] => break,
            [b'\\', escaped, ..] => {
                matched |= *escaped == c;
                i += 2;
            }
            [b']', ..] => break,
            [start, b'-', end, ..] => {
                // C compares `char`s, which are signed on the platforms Redis runs on.
                let (mut lo, mut hi) = (*start as i8 as i32, *end as i8 as i32);
                if lo > hi {
                    std::mem::swap(&mut lo, &mut hi);
                }
                let c = c as i8 as i32;
                matched |= lo <= c && c <= hi;
                i += 3;
            }
            [literal, ..] => {
                matched |= *literal == c;
                i += 1;
            }
        }
    }
    (matched != negate, i)
}

fn match_from(mut p: &[u8], mut s: &[u8], skip_longer: &mut bool, nesting: usize) -> bool {
    if nesting > MAX_NESTING {
        return false;
    }
    while !p.is_empty() && !s.is_empty() {
        match p[0] {
            b'*' => {
                while p.len() > 1 && p[1] == b'*' {
                    p = &p[1..];
                }
                if p.len() == 1 {
                    return true;
                }
                while !s.is_empty() {
                    if match_from(&p[1..], s, skip_longer, nesting + 1) {
                        return true;
                    }
                    if *skip_longer {
                        return false;
                    }
                    s = &s[1..];
                }
                // Nothing after this `*` matches anywhere in the rest of the string, so no
                // longer match of an earlier `*` can succeed either.
                *skip_longer = true;
                return false;
            }
            b'?' => s = &s[1..],
            b'[' => {
                let (matched, close) = class(&p[1..], s[0]);
                if !matched {
                    return false;
                }
                s = &s[1..];
                // Onto the `]` (the last byte when unterminated); the common step passes it.
                p = &p[(1 + close).min(p.len() - 1)..];
            }
            b'\\' if p.len() >= 2 => {
                p = &p[1..];
                if p[0] != s[0] {
                    return false;
                }
                s = &s[1..];
            }
            literal => {
                if literal != s[0] {
                    return false;
                }
                s = &s[1..];
            }
        }
        p = &p[1..];
        if s.is_empty() {
            while p.first() == Some(&b'*') {
                p = &p[1..];
            }
            break;
        }
    }
    p.is_empty() && s.is_empty()
}

/// True when some channel starting with `prefix` could match `pattern`, i.e. the pattern can
/// consume all of `prefix`. Conservative (whatever pattern is left is assumed to match some
/// suffix), which at worst relays events nobody receives.
pub(crate) fn may_match_prefix(pattern: &[u8], prefix: &[u8]) -> bool {
    if prefix.is_empty() {
        return true;
    }
    let Some(&first) = pattern.first() else { return false };
    match first {
        // It can absorb the rest of the prefix.
        b'*' => true,
        b'?' => may_match_prefix(&pattern[1..], &prefix[1..]),
        b'[' => {
            let (matched, close) = class(&pattern[1..], prefix[0]);
            matched && may_match_prefix(pattern.get(close + 2..).unwrap_or(&[]), &prefix[1..])
        }
        b'\\' if pattern.len() >= 2 => pattern[1] == prefix[0] && may_match_prefix(&pattern[2..], &prefix[1..]),
        literal => literal == prefix[0] && may_match_prefix(&pattern[1..], &prefix[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_as_redis() {
        let yes: &[(&str, &str)] = &[
            ("*", "anything"),
            ("h?llo", "hello"),
            ("h*llo", "hllo"),
            ("h**llo", "heeello"),
            ("h[ae]llo", "hallo"),
            ("h[^e]llo", "hxllo"),
            ("h[b-a]llo", "hallo"),
            ("h[\\]]llo", "h]llo"),
            ("h\\*llo", "h*llo"),
            ("h[ae", "ha"),
            // A range ending in `]` keeps the class open to the pattern's end.
            ("h[a-]llo", "ha"),
            ("a*b*c", "axxbyyc"),
            ("\\", "\\"),
        ];
        for (pattern, string) in yes {
            assert!(matches(pattern.as_bytes(), string.as_bytes()), "{pattern} should match {string}");
        }
        let no: &[(&str, &str)] = &[
            ("h?llo", "hllo"),
            ("h[ae]llo", "hillo"),
            ("h[^e]llo", "hello"),
            ("h[a-]llo", "hallo"),
            ("h\\*llo", "hello"),
            ("a*b", "a"),
            ("abc", "ab"),
            ("ab", "abc"),
            ("", "a"),
            // As in Redis, a pattern never matches the empty string, not even `*`.
            ("*", ""),
        ];
        for (pattern, string) in no {
            assert!(!matches(pattern.as_bytes(), string.as_bytes()), "{pattern} should not match {string}");
        }
    }

    #[test]
    fn ranges_compare_signed_bytes_as_c_does() {
        // 0xff is -1 as a C char: the range runs from -1 to 'a' and leaves out 'b'.
        assert!(!matches(b"[a-\xff]", b"b"));
        assert!(matches(b"[a-\xff]", b"\xff"));
        assert!(matches(b"[a-\xff]", b"A"));
    }

    #[test]
    fn many_stars_stay_fast_and_shallow() {
        let pattern = "a*".repeat(30) + "b";
        let string = "a".repeat(60);
        assert!(!matches(pattern.as_bytes(), string.as_bytes()));
        // Far more stars than the nesting bound: no match, and no stack overflow.
        let deep = "*a".repeat(100_000);
        assert!(!matches(deep.as_bytes(), "a".repeat(100_001).as_bytes()));
        assert!(matches("*a".repeat(500).as_bytes(), "a".repeat(500).as_bytes()));
    }
}

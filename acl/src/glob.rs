//! Redis's glob matching (`stringmatchlen`, case-sensitive), as ACL key and channel patterns use
//! it. Ported rule for rule, quirks included: a `*` does not match an empty string when it is the
//! whole pattern (`*` against an empty key is no match in Redis 7.0), an unclosed `[` class ends
//! at the pattern's end, and `\` escapes the next byte.

/// Whether `string` matches `pattern`.
pub fn matches(pattern: &[u8], string: &[u8]) -> bool {
    let mut skip_longer = false;
    match_from(pattern, string, &mut skip_longer)
}

fn match_from(pattern: &[u8], string: &[u8], skip_longer: &mut bool) -> bool {
    // Reads past the end see the NUL that ends an sds string in Redis.
    let at = |p: usize| pattern.get(p).copied().unwrap_or(0);
    let (mut p, mut s) = (0usize, 0usize);
    while p < pattern.len() && s < string.len() {
        match pattern[p] {
            b'*' => {
                while p < pattern.len() && at(p + 1) == b'*' {
                    p += 1;
                }
                if pattern.len() - p == 1 {
                    return true;
                }
                while s < string.len() {
                    if match_from(&pattern[p + 1..], &string[s..], skip_longer) {
                        return true;
                    }
                    if *skip_longer {
                        return false;
                    }
                    s += 1;
                }
                *skip_longer = true;
                return false;
            }
            b'?' => s += 1,
            b'[' => {
                p += 1;
                let negate = at(p) == b'^';
                if negate {
                    p += 1;
                }
                let c = string[s];
                let mut matched = false;
                loop {
                    if at(p) == b'\\' && pattern.len().saturating_sub(p) >= 2 {
                        p += 1;
                        matched |= pattern[p] == c;
                    } else if at(p) == b']' {
                        break;
                    } else if p >= pattern.len() {
                        p -= 1;
                        break;
                    } else if pattern.len() - p >= 3 && pattern[p + 1] == b'-' {
                        // Redis compares the bytes as (signed) chars.
                        let (mut start, mut end) = (pattern[p] as i8, pattern[p + 2] as i8);
                        if start > end {
                            std::mem::swap(&mut start, &mut end);
                        }
                        p += 2;
                        matched |= (start..=end).contains(&(c as i8));
                    } else {
                        matched |= pattern[p] == c;
                    }
                    p += 1;
                }
                if negate {
                    matched = !matched;
                }
                if !matched {
                    return false;
                }
                s += 1;
            }
            b'\\' => {
                if pattern.len() - p >= 2 {
                    p += 1;
                }
                if pattern[p] != string[s] {
                    return false;
                }
                s += 1;
            }
            literal => {
                if literal != string[s] {
                    return false;
                }
                s += 1;
            }
        }
        p += 1;
        if s == string.len() {
            while at(p) == b'*' {
                p += 1;
            }
            break;
        }
    }
    p == pattern.len() && s == string.len()
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn globs_as_redis() {
        assert!(matches(b"foo*", b"foobar"));
        assert!(matches(b"*", b"x"));
        assert!(!matches(b"*", b""), "Redis 7.0: a lone * needs one byte");
        assert!(matches(b"", b""));
        assert!(matches(b"h?llo", b"hello"));
        assert!(matches(b"h[ae]llo", b"hallo"));
        assert!(!matches(b"h[^e]llo", b"hello"));
        assert!(matches(b"h[a-b]llo", b"hbllo"));
        assert!(matches(b"h[b-a]llo", b"hbllo"));
        assert!(matches(b"a\\*b", b"a*b"));
        assert!(!matches(b"a\\*b", b"axb"));
        assert!(matches(b"a*b*c", b"axxbyyc"));
        assert!(!matches(b"a*b*c", b"axxbyy"));
    }
}

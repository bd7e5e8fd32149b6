//! Where a reply frame ends: the scanner the backend connections and the small admin clients use
//! to cut replies out of a byte stream without parsing them.

use super::{find_crlf, parse_int};

/// A reply that does not parse as RESP: the connection is out of step and must be dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadFrame;

/// Finds where a reply frame ends, for RESP2 and RESP3 alike (RESP3's grammar contains RESP2's
/// replies, `$-1` and `*-1` included), without allocating. It resumes where the last call
/// stopped, so a large reply arriving over many reads is scanned once.
#[derive(Debug, Default)]
pub struct FrameScanner {
    /// Offset of the first item not yet consumed.
    pos: usize,
    /// Items (frames inside aggregates) still to read; 0 = not started.
    pending: u64,
}

impl FrameScanner {
    /// Length of the first complete frame in `buf`, which must start with the same bytes as on
    /// the previous call; after `Some`, the scanner is reset for the next frame.
    pub fn scan(&mut self, buf: &[u8]) -> Result<Option<usize>, BadFrame> {
        if self.pending == 0 {
            if buf.is_empty() {
                return Ok(None);
            }
            *self = FrameScanner { pos: 0, pending: 1 };
        }
        while self.pending > 0 {
            let pos = self.pos;
            let Some(&kind) = buf.get(pos) else { return Ok(None) };
            let Some(line_end) = find_crlf(buf, pos + 1) else { return Ok(None) };
            let line = &buf[pos + 1..line_end];
            let mut next = line_end + 2;
            let count = |line: &[u8]| parse_int(line).ok_or(BadFrame);
            let more = match kind {
                b'+' | b'-' | b':' | b'_' | b'#' | b',' | b'(' => 0,
                b'$' | b'!' | b'=' => match count(line)? {
                    -1 if kind == b'$' => 0,
                    len if len >= 0 => {
                        let end = usize::try_from(len).ok().and_then(|len| next.checked_add(len)).ok_or(BadFrame)?;
                        if buf.len() < end + 2 {
                            return Ok(None);
                        }
                        if &buf[end..end + 2] != b"\r\n" {
                            return Err(BadFrame);
                        }
                        next = end + 2;
                        0
                    }
                    _ => return Err(BadFrame),
                },
                b'*' | b'~' | b'>' | b'%' | b'|' => match count(line)? {
                    -1 if kind == b'*' => 0,
                    n if n >= 0 => match kind {
                        b'%' => 2 * n as u64,
                        // An attribute map comes before the reply it annotates.
                        b'|' => 2 * n as u64 + 1,
                        _ => n as u64,
                    },
                    _ => return Err(BadFrame),
                },
                _ => return Err(BadFrame),
            };
            self.pos = next;
            self.pending = self.pending - 1 + more;
        }
        let len = self.pos;
        *self = FrameScanner::default();
        Ok(Some(len))
    }
}

/// Length of the first complete reply frame in `buf`, if it holds one.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, BadFrame> {
    FrameScanner::default().scan(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_each_protocol() {
        assert_eq!(frame_len(b"$-1\r\n"), Ok(Some(5)));
        assert_eq!(frame_len(b"*-1\r\n"), Ok(Some(5)));
        assert_eq!(frame_len(b"*2\r\n$1\r\na\r\n:1\r\n+OK"), Ok(Some(15)));
        assert_eq!(frame_len(b"*2\r\n$1\r\na\r\n"), Ok(None));
        assert_eq!(frame_len(b"%1\r\n+a\r\n,1.5\r\n"), Ok(Some(14)));
        assert_eq!(frame_len(b"_\r\n"), Ok(Some(3)));
        assert_eq!(frame_len(b"-ERR x\r\n"), Ok(Some(8)));
        assert_eq!(frame_len(b"?\r\n"), Err(BadFrame));
        // A set holding a map, as COMMAND INFO answers in RESP3.
        assert_eq!(frame_len(b"~1\r\n%1\r\n$1\r\na\r\n~0\r\n:1"), Ok(Some(19)));
        assert_eq!(frame_len(b"|1\r\n+k\r\n+v\r\n:5\r\n"), Ok(Some(16)));
    }
}

//! The little of RESP the bench's own load generators speak: commands out, one status, nil or
//! bulk reply at a time in (what GET and SET answer). Anything else, an error reply included,
//! fails the run: errors are never throughput.

use std::io::Read;

use anyhow::{bail, Context, Result};

/// Appends `args` to `out` as one command.
pub fn encode(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

/// Reads one reply at a time.
#[derive(Default)]
pub struct ReplyReader {
    buf: Vec<u8>,
}

impl ReplyReader {
    pub fn next(&mut self, conn: &mut impl Read) -> Result<()> {
        loop {
            if let Some(len) = self.whole_reply()? {
                self.buf.drain(..len);
                return Ok(());
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = conn.read(&mut chunk).context("reading a reply")?;
            if n == 0 {
                bail!("the server closed the connection");
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The length of the first reply in the buffer, once it is all there.
    fn whole_reply(&self) -> Result<Option<usize>> {
        let Some(line_end) = self.buf.windows(2).position(|w| w == b"\r\n") else { return Ok(None) };
        let line = &self.buf[..line_end];
        match line.first() {
            Some(b'+') => Ok(Some(line_end + 2)),
            Some(b'$') if line == b"$-1" => Ok(Some(line_end + 2)),
            Some(b'$') => {
                let len: usize = std::str::from_utf8(&line[1..])?.parse()?;
                let total = line_end + 2 + len + 2;
                Ok((self.buf.len() >= total).then_some(total))
            }
            _ => bail!("unexpected reply {:?}", String::from_utf8_lossy(line)),
        }
    }
}

//! The bytes of an RDB as the parser consumes them: buffered, counted (every error names the
//! offset it happened at), checksummed as they go (for the CRC-64 trailer), and optionally
//! captured (the bytes of one value, which become a DUMP payload as they are).

use std::io::{ErrorKind, Read};

use crate::crc64::crc64;
use crate::{RdbError, Reason};

const BUFFER: usize = 64 * 1024;

pub(crate) struct Source<R> {
    inner: R,
    buf: Box<[u8]>,
    pos: usize,
    end: usize,
    /// Bytes consumed so far: the offset of the next byte.
    offset: u64,
    crc: u64,
    /// While set, every consumed byte is also appended here.
    capture: Option<Vec<u8>>,
}

impl<R: Read> Source<R> {
    pub(crate) fn new(inner: R) -> Source<R> {
        Source { inner, buf: vec![0; BUFFER].into_boxed_slice(), pos: 0, end: 0, offset: 0, crc: 0, capture: None }
    }

    pub(crate) fn offset(&self) -> u64 {
        self.offset
    }

    /// The CRC-64 of every byte consumed so far.
    pub(crate) fn crc(&self) -> u64 {
        self.crc
    }

    pub(crate) fn error(&self, reason: Reason) -> RdbError {
        RdbError { offset: self.offset, reason }
    }

    /// Refills the buffer; false at the end of the input.
    fn fill(&mut self) -> Result<bool, RdbError> {
        loop {
            match self.inner.read(&mut self.buf) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    self.pos = 0;
                    self.end = n;
                    return Ok(true);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.error(Reason::Io(e.to_string()))),
            }
        }
    }

    /// Consumes `n` bytes, handing each piece to `sink` (which may be a no-op).
    fn consume(&mut self, mut n: u64, what: &'static str, mut sink: impl FnMut(&[u8])) -> Result<(), RdbError> {
        while n > 0 {
            if self.pos == self.end && !self.fill()? {
                return Err(self.error(Reason::Truncated(what)));
            }
            let take = (self.end - self.pos).min(usize::try_from(n).unwrap_or(usize::MAX));
            let piece = &self.buf[self.pos..self.pos + take];
            self.crc = crc64(self.crc, piece);
            if let Some(capture) = self.capture.as_mut() {
                capture.extend_from_slice(piece);
            }
            sink(piece);
            self.pos += take;
            self.offset += take as u64;
            n -= take as u64;
        }
        Ok(())
    }

    /// Skips `n` bytes (still checksummed and captured).
    pub(crate) fn skip(&mut self, n: u64, what: &'static str) -> Result<(), RdbError> {
        self.consume(n, what, |_| {})
    }

    /// Reads `n` bytes into a new vector, which grows only as the bytes arrive (a bogus length
    /// in a truncated file cannot make it allocate more than the file holds).
    pub(crate) fn read_vec(&mut self, n: u64, what: &'static str) -> Result<Vec<u8>, RdbError> {
        let mut out = Vec::with_capacity(usize::try_from(n).unwrap_or(0).min(BUFFER));
        self.consume(n, what, |piece| out.extend_from_slice(piece))?;
        Ok(out)
    }

    pub(crate) fn read_array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], RdbError> {
        let mut out = [0u8; N];
        let mut at = 0;
        self.consume(N as u64, what, |piece| {
            out[at..at + piece.len()].copy_from_slice(piece);
            at += piece.len();
        })?;
        Ok(out)
    }

    pub(crate) fn read_u8(&mut self, what: &'static str) -> Result<u8, RdbError> {
        Ok(self.read_array::<1>(what)?[0])
    }

    /// True once the input has no byte left.
    pub(crate) fn at_end(&mut self) -> Result<bool, RdbError> {
        Ok(self.pos == self.end && !self.fill()?)
    }

    pub(crate) fn start_capture(&mut self) {
        self.capture = Some(Vec::new());
    }

    pub(crate) fn take_capture(&mut self) -> Vec<u8> {
        self.capture.take().unwrap_or_default()
    }
}

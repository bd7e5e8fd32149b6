//! The client-side RESP codec. A request keeps the exact bytes the client sent (`raw`), so a
//! command the proxy does not rewrite is forwarded to Redis without re-encoding; its arguments
//! are zero-copy slices of those bytes. Parsing is resumable, so a huge request arriving in
//! many reads is scanned once, and limits are checked before anything is buffered.

// Lengths here come from peers' bytes: a narrowing `as` would wrap a huge one into a small
// one, so conversions go through `try_from` (a length that does not fit is a protocol error).
#![deny(clippy::cast_possible_truncation)]

mod frame;
pub use frame::{frame_len, BadFrame, FrameScanner};

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Longest inline command Redis accepts (`PROTO_INLINE_MAX_SIZE`).
const INLINE_MAX: usize = 64 * 1024;

/// One client command: its raw RESP bytes and its arguments (the command name first).
#[derive(Debug, Clone)]
pub struct Request {
    pub raw: Bytes,
    pub args: Vec<Bytes>,
}

impl Request {
    /// Builds a request the proxy itself sends (a rewritten or split command).
    pub fn from_args<A: AsRef<[u8]>>(args: &[A]) -> Request {
        let args: Vec<Bytes> = args.iter().map(|a| Bytes::copy_from_slice(a.as_ref())).collect();
        Request { raw: encode_command(&args), args }
    }

    /// Parses one request's bytes again, e.g. `raw` of a request parsed before; `None` if they do
    /// not start with a complete request.
    pub fn reparse(raw: &[u8]) -> Option<Request> {
        RequestParser::default().next(&mut BytesMut::from(raw), NO_LIMITS).ok().flatten()
    }

    /// Lower-cases the command name into `buf` without allocating; `None` if it is too long or
    /// not UTF-8 (no such command exists).
    pub fn name_in<'b>(&self, buf: &'b mut [u8; 32]) -> Option<&'b str> {
        let name = &self.args[0];
        let out = buf.get_mut(..name.len())?;
        for (o, &b) in out.iter_mut().zip(name.iter()) {
            *o = b.to_ascii_lowercase();
        }
        std::str::from_utf8(out).ok()
    }
}

/// Encodes `args` as a RESP array of bulk strings.
pub fn encode_command<A: AsRef<[u8]>>(args: &[A]) -> Bytes {
    let mut out = BytesMut::with_capacity(16 + args.iter().map(|a| a.as_ref().len() + 16).sum::<usize>());
    out.put_u8(b'*');
    put_decimal(&mut out, args.len() as i64);
    for arg in args {
        let arg = arg.as_ref();
        out.put_u8(b'$');
        put_decimal(&mut out, arg.len() as i64);
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out.freeze()
}

fn put_decimal(out: &mut BytesMut, n: i64) {
    let buf = itoa_buf(n);
    out.extend_from_slice(buf.digits());
    out.extend_from_slice(b"\r\n");
}

struct Decimal {
    buf: [u8; 24],
    start: usize,
}

impl Decimal {
    fn digits(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

fn itoa_buf(n: i64) -> Decimal {
    let mut buf = [0u8; 24];
    let mut pos = buf.len();
    let negative = n < 0;
    let mut v = n.unsigned_abs();
    loop {
        pos -= 1;
        buf[pos] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    if negative {
        pos -= 1;
        buf[pos] = b'-';
    }
    Decimal { buf, start: pos }
}

/// A client's protocol mistake. Redis answers it with `-ERR Protocol error: …` and closes the
/// connection, since the stream can no longer be framed; the proxy does the same.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("Protocol error: invalid multibulk length")]
    MultibulkLength,
    #[error("Protocol error: invalid bulk length")]
    BulkLength,
    #[error("Protocol error: expected '$', got '{0}'")]
    ExpectedBulk(char),
    #[error("Protocol error: too big inline request")]
    InlineTooBig,
    #[error("Protocol error: unbalanced quotes in request")]
    UnbalancedQuotes,
    #[error("Protocol error: invalid bulk terminator")]
    BulkTerminator,
}

/// Limits a client's request must respect.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_bulk_len: usize,
    pub max_args: usize,
}

/// For bytes parsed again that already passed a client's limits once (a journaled command, a
/// request kept for the slow log).
pub const NO_LIMITS: Limits = Limits { max_bulk_len: 1 << 40, max_args: 1 << 40 };

/// Where a partly received multibulk request stands, so the next read resumes there.
#[derive(Debug, Default)]
struct Partial {
    argc: usize,
    /// Byte ranges of the arguments parsed so far, relative to the buffer start.
    args: Vec<(usize, usize)>,
    /// Where parsing resumes.
    pos: usize,
}

/// Incremental request parser over a connection's read buffer.
#[derive(Debug, Default)]
pub struct RequestParser {
    partial: Option<Partial>,
    /// Bytes the buffer must hold before parsing is worth retrying.
    need: usize,
}

impl RequestParser {
    /// Takes the next complete request out of `buf`, if there is one. Empty requests (`*0`,
    /// blank inline lines) are consumed and skipped, as Redis does.
    pub fn next(&mut self, buf: &mut BytesMut, limits: Limits) -> Result<Option<Request>, ProtocolError> {
        loop {
            if buf.is_empty() || buf.len() < self.need {
                return Ok(None);
            }
            let parsed =
                if self.partial.is_some() || buf[0] == b'*' { self.multibulk(buf, limits)? } else { inline(buf)? };
            match parsed {
                Parsed::Incomplete(need) => {
                    self.need = need;
                    if need > buf.capacity() {
                        buf.reserve(need - buf.len());
                    }
                    return Ok(None);
                }
                Parsed::Skip(len) => {
                    self.need = 0;
                    buf.advance(len);
                }
                Parsed::Done(req) => {
                    self.need = 0;
                    return Ok(Some(req));
                }
            }
        }
    }

    fn multibulk(&mut self, buf: &mut BytesMut, limits: Limits) -> Result<Parsed, ProtocolError> {
        let mut state = match self.partial.take() {
            Some(state) => state,
            None => {
                let Some(line_end) = find_crlf(buf, 1) else {
                    if buf.len() > INLINE_MAX {
                        return Err(ProtocolError::MultibulkLength);
                    }
                    return Ok(Parsed::Incomplete(buf.len() + 1));
                };
                let argc = parse_int(&buf[1..line_end]).ok_or(ProtocolError::MultibulkLength)?;
                if argc > limits.max_args as i64 {
                    return Err(ProtocolError::MultibulkLength);
                }
                if argc <= 0 {
                    return Ok(Parsed::Skip(line_end + 2));
                }
                let argc = usize::try_from(argc).map_err(|_| ProtocolError::MultibulkLength)?;
                Partial { argc, args: Vec::with_capacity(argc.min(1024)), pos: line_end + 2 }
            }
        };
        while state.args.len() < state.argc {
            let pos = state.pos;
            if pos >= buf.len() {
                let need = pos + 1;
                self.partial = Some(state);
                return Ok(Parsed::Incomplete(need));
            }
            if buf[pos] != b'$' {
                return Err(ProtocolError::ExpectedBulk(buf[pos] as char));
            }
            let Some(line_end) = find_crlf(buf, pos + 1) else {
                if buf.len() - pos > 32 {
                    return Err(ProtocolError::BulkLength);
                }
                let need = buf.len() + 1;
                self.partial = Some(state);
                return Ok(Parsed::Incomplete(need));
            };
            let len = parse_int(&buf[pos + 1..line_end]).ok_or(ProtocolError::BulkLength)?;
            let len = usize::try_from(len).map_err(|_| ProtocolError::BulkLength)?;
            if len > limits.max_bulk_len {
                return Err(ProtocolError::BulkLength);
            }
            let start = line_end + 2;
            let end = start + len;
            if buf.len() < end + 2 {
                let need = end + 2;
                self.partial = Some(state);
                return Ok(Parsed::Incomplete(need));
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err(ProtocolError::BulkTerminator);
            }
            state.args.push((start, end));
            state.pos = end + 2;
        }
        let raw = buf.split_to(state.pos).freeze();
        let args = state.args.iter().map(|&(s, e)| raw.slice(s..e)).collect();
        Ok(Parsed::Done(Request { raw, args }))
    }
}

enum Parsed {
    Incomplete(usize),
    Skip(usize),
    Done(Request),
}

/// An inline command (`PING\r\n`, as typed into telnet): split like Redis's `sdssplitargs`,
/// then re-encoded as RESP so the backend sees a normal request.
fn inline(buf: &mut BytesMut) -> Result<Parsed, ProtocolError> {
    let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
        if buf.len() > INLINE_MAX {
            return Err(ProtocolError::InlineTooBig);
        }
        return Ok(Parsed::Incomplete(buf.len() + 1));
    };
    if nl > INLINE_MAX {
        return Err(ProtocolError::InlineTooBig);
    }
    let line_end = if nl > 0 && buf[nl - 1] == b'\r' { nl - 1 } else { nl };
    let args = split_inline(&buf[..line_end])?;
    buf.advance(nl + 1);
    if args.is_empty() {
        return Ok(Parsed::Skip(0));
    }
    Ok(Parsed::Done(Request::from_args(&args)))
}

/// Splits an inline line into arguments, honouring "double" (with \xHH and \n escapes) and
/// 'single' quotes.
fn split_inline(line: &[u8]) -> Result<Vec<Vec<u8>>, ProtocolError> {
    let mut args = Vec::new();
    let mut i = 0;
    while i < line.len() {
        while i < line.len() && line[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= line.len() {
            break;
        }
        let mut arg = Vec::new();
        match line[i] {
            b'"' => {
                i += 1;
                loop {
                    match line.get(i) {
                        None => return Err(ProtocolError::UnbalancedQuotes),
                        Some(b'\\') if i + 3 < line.len() && line[i + 1] == b'x' => {
                            let hex = std::str::from_utf8(&line[i + 2..i + 4]).ok();
                            match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                                Some(byte) => {
                                    arg.push(byte);
                                    i += 4;
                                }
                                None => {
                                    arg.push(b'\\');
                                    i += 1;
                                }
                            }
                        }
                        Some(b'\\') if i + 1 < line.len() => {
                            arg.push(match line[i + 1] {
                                b'n' => b'\n',
                                b'r' => b'\r',
                                b't' => b'\t',
                                b'b' => 8,
                                b'a' => 7,
                                other => other,
                            });
                            i += 2;
                        }
                        Some(b'"') => {
                            i = after_closing_quote(line, i)?;
                            break;
                        }
                        Some(&b) => {
                            arg.push(b);
                            i += 1;
                        }
                    }
                }
            }
            b'\'' => {
                i += 1;
                loop {
                    match line.get(i) {
                        None => return Err(ProtocolError::UnbalancedQuotes),
                        Some(b'\\') if line.get(i + 1) == Some(&b'\'') => {
                            arg.push(b'\'');
                            i += 2;
                        }
                        Some(b'\'') => {
                            i = after_closing_quote(line, i)?;
                            break;
                        }
                        Some(&b) => {
                            arg.push(b);
                            i += 1;
                        }
                    }
                }
            }
            _ => {
                while i < line.len() && !line[i].is_ascii_whitespace() {
                    arg.push(line[i]);
                    i += 1;
                }
            }
        }
        args.push(arg);
    }
    Ok(args)
}

/// Where parsing resumes after the closing quote at `quote`: a quoted argument must end at a
/// space or the end of the line, as in Redis's `sdssplitargs`.
fn after_closing_quote(line: &[u8], quote: usize) -> Result<usize, ProtocolError> {
    let next = quote + 1;
    match line.get(next) {
        Some(b) if !b.is_ascii_whitespace() => Err(ProtocolError::UnbalancedQuotes),
        _ => Ok(next),
    }
}

pub fn find_crlf(buf: &[u8], from: usize) -> Option<usize> {
    buf.get(from..)?.windows(2).position(|w| w == b"\r\n").map(|p| p + from)
}

/// Parses a RESP length: an optionally signed decimal that fits in an i64.
pub fn parse_int(digits: &[u8]) -> Option<i64> {
    if digits.is_empty() || digits.len() > 20 {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// RESP protocol version a client speaks (`HELLO 2|3`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proto {
    Resp2,
    Resp3,
}

/// Builds replies the proxy answers itself, in the client's protocol version.
pub struct ReplyWriter {
    pub proto: Proto,
    pub out: BytesMut,
}

impl ReplyWriter {
    pub fn new(proto: Proto) -> ReplyWriter {
        ReplyWriter { proto, out: BytesMut::with_capacity(64) }
    }

    pub fn finish(self) -> Bytes {
        self.out.freeze()
    }

    pub fn simple(&mut self, s: &str) -> &mut Self {
        self.out.put_u8(b'+');
        self.out.extend_from_slice(s.as_bytes());
        self.out.extend_from_slice(b"\r\n");
        self
    }

    /// An error line; `msg` starts with its code (`ERR …`, `CROSSSLOT …`).
    pub fn error(&mut self, msg: &str) -> &mut Self {
        self.out.put_u8(b'-');
        // A newline inside an error would break the stream's framing.
        for &b in msg.as_bytes() {
            self.out.put_u8(if b == b'\r' || b == b'\n' { b' ' } else { b });
        }
        self.out.extend_from_slice(b"\r\n");
        self
    }

    pub fn int(&mut self, n: i64) -> &mut Self {
        self.out.put_u8(b':');
        put_decimal(&mut self.out, n);
        self
    }

    pub fn bulk(&mut self, data: &[u8]) -> &mut Self {
        self.out.put_u8(b'$');
        put_decimal(&mut self.out, data.len() as i64);
        self.out.extend_from_slice(data);
        self.out.extend_from_slice(b"\r\n");
        self
    }

    /// Text such as INFO's: a verbatim string in RESP3, a bulk string in RESP2.
    pub fn verbatim(&mut self, text: &str) -> &mut Self {
        match self.proto {
            Proto::Resp2 => self.bulk(text.as_bytes()),
            Proto::Resp3 => {
                self.out.put_u8(b'=');
                put_decimal(&mut self.out, text.len() as i64 + 4);
                self.out.extend_from_slice(b"txt:");
                self.out.extend_from_slice(text.as_bytes());
                self.out.extend_from_slice(b"\r\n");
                self
            }
        }
    }

    pub fn null(&mut self) -> &mut Self {
        self.out.extend_from_slice(match self.proto {
            Proto::Resp2 => b"$-1\r\n",
            Proto::Resp3 => b"_\r\n",
        });
        self
    }

    pub fn array(&mut self, len: usize) -> &mut Self {
        self.out.put_u8(b'*');
        put_decimal(&mut self.out, len as i64);
        self
    }

    /// A map header: `%n` in RESP3, an array of 2n flattened items in RESP2.
    pub fn map(&mut self, pairs: usize) -> &mut Self {
        match self.proto {
            Proto::Resp2 => self.array(pairs * 2),
            Proto::Resp3 => {
                self.out.put_u8(b'%');
                put_decimal(&mut self.out, pairs as i64);
                self
            }
        }
    }

    /// A set header: `~n` in RESP3, an array in RESP2.
    pub fn set(&mut self, len: usize) -> &mut Self {
        match self.proto {
            Proto::Resp2 => self.array(len),
            Proto::Resp3 => {
                self.out.put_u8(b'~');
                put_decimal(&mut self.out, len as i64);
                self
            }
        }
    }

    /// A double: `,x` in RESP3, a bulk string in RESP2, written as C's `%.17g` (Redis 7.0).
    pub fn double(&mut self, x: f64) -> &mut Self {
        let text = format_g17(x);
        match self.proto {
            Proto::Resp2 => self.bulk(text.as_bytes()),
            Proto::Resp3 => {
                self.out.put_u8(b',');
                self.out.extend_from_slice(text.as_bytes());
                self.out.extend_from_slice(b"\r\n");
                self
            }
        }
    }

    /// Appends an already encoded frame.
    pub fn raw(&mut self, frame: &[u8]) -> &mut Self {
        self.out.extend_from_slice(frame);
        self
    }
}

/// `x` as C's `printf("%.17g")`: 17 significant digits, trailing zeros dropped, exponent form
/// below 1e-4 and from 1e17.
pub fn format_g17(x: f64) -> String {
    if !x.is_finite() {
        return if x.is_nan() {
            "nan".into()
        } else if x > 0.0 {
            "inf".into()
        } else {
            "-inf".into()
        };
    }
    let scientific = format!("{x:.16e}");
    let (mantissa, exponent) = scientific.split_once('e').expect("exponent form");
    let exponent: i32 = exponent.parse().expect("an integer exponent");
    let trim =
        |s: &str| if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.').to_string() } else { s.into() };
    if !(-4..17).contains(&exponent) {
        let sign = if exponent < 0 { '-' } else { '+' };
        return format!("{}e{sign}{:02}", trim(mantissa), exponent.abs());
    }
    trim(&format!("{x:.*}", (16 - exponent) as usize))
}

/// Shorthand for a one-frame reply.
pub fn reply(proto: Proto, build: impl FnOnce(&mut ReplyWriter)) -> Bytes {
    let mut w = ReplyWriter::new(proto);
    build(&mut w);
    w.finish()
}

pub fn error_reply(msg: &str) -> Bytes {
    reply(Proto::Resp2, |w| {
        w.error(msg);
    })
}

/// The payload of a bulk string reply (`$n\r\n…\r\n`); `None` for nil or anything else.
pub fn bulk_payload(frame: &[u8]) -> Option<&[u8]> {
    let rest = frame.strip_prefix(b"$")?;
    let header = find_crlf(rest, 0)?;
    let len = usize::try_from(parse_int(&rest[..header])?).ok()?;
    let start = header + 2;
    (rest.len() >= start + len + 2).then(|| &rest[start..start + len])
}

/// [`bulk_payload`] as a slice sharing `frame`'s buffer.
pub fn bulk_bytes(frame: &Bytes) -> Option<Bytes> {
    let len = bulk_payload(frame)?.len();
    let start = find_crlf(frame, 1)? + 2;
    Some(frame.slice(start..start + len))
}

/// Decodes a whole RESP2 reply into a frame tree, for the few places that walk nested replies.
pub fn decode_resp2(raw: &Bytes) -> anyhow::Result<redis_protocol::resp2::types::BytesFrame> {
    match redis_protocol::resp2::decode::decode_bytes(raw) {
        Ok(Some((frame, _))) => Ok(frame),
        _ => anyhow::bail!("unparsable reply from Redis"),
    }
}

/// The text of a status or integer reply (`+OK\r\n`, `:42\r\n`); `None` for anything else.
pub fn line_payload(frame: &[u8]) -> Option<&[u8]> {
    let rest = frame.strip_prefix(b"+").or_else(|| frame.strip_prefix(b":"))?;
    rest.strip_suffix(b"\r\n")
}

/// The value of `name` in an `INFO` reply's text.
pub fn info_field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(':')).map(str::trim_end)
}

/// The raw bytes of each element of an array reply (`*n` or RESP3 `~n`/`%n` flattened), or
/// `None` if `reply` is not an array.
pub fn array_items(reply: &Bytes) -> Option<Vec<Bytes>> {
    let header_end = find_crlf(reply, 1)?;
    let count = match reply.first()? {
        b'*' | b'~' | b'>' => parse_int(&reply[1..header_end])?,
        b'%' => parse_int(&reply[1..header_end])? * 2,
        _ => return None,
    };
    // Every item takes at least three bytes of the reply: a count beyond that is not believed.
    let mut items = Vec::with_capacity(usize::try_from(count).unwrap_or(0).min(reply.len() / 3));
    let mut pos = header_end + 2;
    for _ in 0..count.max(0) {
        let len = frame_len(&reply[pos..]).ok()??;
        items.push(reply.slice(pos..pos + len));
        pos += len;
    }
    Some(items)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIMITS: Limits = Limits { max_bulk_len: 1024, max_args: 16 };

    fn parse_all(input: &[u8]) -> Result<Vec<Vec<Vec<u8>>>, ProtocolError> {
        let mut buf = BytesMut::from(input);
        let mut parser = RequestParser::default();
        let mut out = Vec::new();
        while let Some(req) = parser.next(&mut buf, LIMITS)? {
            out.push(req.args.iter().map(|a| a.to_vec()).collect());
        }
        Ok(out)
    }

    #[test]
    fn an_array_count_larger_than_the_reply_allocates_nothing_for_it() {
        // Taken at its word, the count asked for 2^63 slots: a capacity-overflow panic.
        assert_eq!(array_items(&Bytes::from_static(b"*9223372036854775807\r\n:1\r\n")), None);
        let two = array_items(&Bytes::from_static(b"*2\r\n:1\r\n$1\r\na\r\n")).unwrap();
        assert_eq!(two, [Bytes::from_static(b":1\r\n"), Bytes::from_static(b"$1\r\na\r\n")]);
    }

    #[test]
    fn doubles_are_formatted_as_c_g17() {
        assert_eq!(format_g17(0.405), "0.40500000000000003");
        assert_eq!(format_g17(1.0), "1");
        assert_eq!(format_g17(0.0), "0");
        assert_eq!(format_g17(12.5), "12.5");
        assert_eq!(format_g17(1e-5), "1.0000000000000001e-05");
        assert_eq!(format_g17(1e20), "1e+20");
    }

    #[test]
    fn multibulk_and_inline() {
        let got = parse_all(b"*2\r\n$3\r\nGET\r\n$1\r\na\r\nPING\r\nSET k \"a b\\x41\" 'c d'\r\n\r\n*0\r\n").unwrap();
        assert_eq!(
            got,
            vec![
                vec![b"GET".to_vec(), b"a".to_vec()],
                vec![b"PING".to_vec()],
                vec![b"SET".to_vec(), b"k".to_vec(), b"a bA".to_vec(), b"c d".to_vec()],
            ]
        );
    }

    #[test]
    fn raw_bytes_are_kept() {
        let input = b"*1\r\n$4\r\nPING\r\n";
        let mut buf = BytesMut::from(&input[..]);
        let req = RequestParser::default().next(&mut buf, LIMITS).unwrap().unwrap();
        assert_eq!(&req.raw[..], &input[..]);
        assert!(buf.is_empty());
    }

    #[test]
    fn protocol_errors() {
        assert_eq!(parse_all(b"*abc\r\n"), Err(ProtocolError::MultibulkLength));
        assert_eq!(parse_all(b"*1\r\n$-5\r\n"), Err(ProtocolError::BulkLength));
        assert_eq!(parse_all(b"*1\r\n$2000\r\n"), Err(ProtocolError::BulkLength));
        assert_eq!(parse_all(b"*17\r\n"), Err(ProtocolError::MultibulkLength));
        assert_eq!(parse_all(b"*1\r\n+PING\r\n"), Err(ProtocolError::ExpectedBulk('+')));
        assert_eq!(parse_all(b"*1\r\n$4\r\nPINGxx"), Err(ProtocolError::BulkTerminator));
        assert_eq!(parse_all(b"SET \"a\r\n"), Err(ProtocolError::UnbalancedQuotes));
        assert_eq!(parse_all(b"SET \"a\"b\r\n"), Err(ProtocolError::UnbalancedQuotes));
        assert_eq!(parse_all(b"SET 'a'b\r\n"), Err(ProtocolError::UnbalancedQuotes));
    }

    proptest! {
        /// However a valid request stream is cut into reads, the same requests come out.
        #[test]
        fn any_split_parses_the_same(cmds in prop::collection::vec(prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 1..5), 1..8), cut in 1usize..64) {
            let mut stream = Vec::new();
            for cmd in &cmds {
                stream.extend_from_slice(&encode_command(cmd));
            }
            let mut parser = RequestParser::default();
            let mut buf = BytesMut::new();
            let mut out = Vec::new();
            for chunk in stream.chunks(cut) {
                buf.extend_from_slice(chunk);
                while let Some(req) = parser.next(&mut buf, LIMITS).unwrap() {
                    out.push(req.args.iter().map(|a| a.to_vec()).collect::<Vec<_>>());
                }
            }
            prop_assert_eq!(out, cmds);
        }

        /// Arbitrary bytes never panic the parser.
        #[test]
        fn garbage_never_panics(input in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse_all(&input);
        }
    }
}

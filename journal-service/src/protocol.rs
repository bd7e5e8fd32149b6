//! The journal node's wire protocol: length-prefixed binary frames on TCP, pure encode/decode.
//!
//! Request frame: `[u32 len][u64 request_id][u8 op][body]`; reply frame:
//! `[u32 len][u64 request_id][u8 status][body]`, little-endian, `len` counting the bytes after
//! itself. Requests are pipelined: replies carry the request id and may come back in any order.
//! A subscription gets one `Done` reply and then a `Pushed` reply per entry, all with its id.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::entry::{Entry, NodeStatus, StreamTail};
use crate::error::NodeError;

/// Largest frame either side accepts (a 64 MiB payload plus headers); larger is refused before allocating.
pub const MAX_FRAME_LEN: usize = 64 * 1024 * 1024 + 4096;

/// Bytes of `request_id` and op/status after the length prefix.
const FRAME_HEADER_LEN: usize = 9;

/// A client's request to a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Append {
        stream: String,
        entry: Entry,
    },
    Fence {
        stream: String,
        epoch: u64,
    },
    Read {
        stream: String,
        from_lsn: u64,
        to_lsn: u64,
        max_bytes: u64,
    },
    TruncateAfter {
        stream: String,
        epoch: u64,
        lsn: u64,
    },
    /// Refused below the node's fenced epoch, like every request that changes a stream.
    TruncateBelow {
        stream: String,
        epoch: u64,
        lsn: u64,
    },
    Subscribe {
        stream: String,
        from_lsn: u64,
    },
    /// Ends the subscription started by the request `subscription_id` on this connection.
    Unsubscribe {
        subscription_id: u64,
    },
    Status,
}

/// A node's reply; self-describing, so it decodes without knowing the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    Done,
    Tail(StreamTail),
    Entries(Vec<Entry>),
    Status(NodeStatus),
    /// One entry of a subscription.
    Pushed(Entry),
    Error(NodeError),
}

/// One frame cut from the byte stream, not yet decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame {
    pub request_id: u64,
    pub tag: u8,
    pub body: Bytes,
}

/// A frame that cannot be decoded; the connection it came on is closed after replying.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame length {0} outside 9..={MAX_FRAME_LEN}")]
    BadLength(usize),
    #[error("request {request_id}: {reason}")]
    BadBody { request_id: u64, reason: String },
}

impl FrameError {
    /// The request id to tag the error reply with (0 when the frame was too broken to read one).
    pub fn request_id(&self) -> u64 {
        match self {
            FrameError::BadLength(_) => 0,
            FrameError::BadBody { request_id, .. } => *request_id,
        }
    }
}

mod op {
    pub const APPEND: u8 = 1;
    pub const FENCE: u8 = 2;
    pub const READ: u8 = 3;
    pub const TRUNCATE_AFTER: u8 = 4;
    pub const TRUNCATE_BELOW: u8 = 5;
    pub const SUBSCRIBE: u8 = 6;
    pub const UNSUBSCRIBE: u8 = 7;
    pub const STATUS: u8 = 8;
}

mod status {
    pub const DONE: u8 = 0;
    pub const TAIL: u8 = 1;
    pub const ENTRIES: u8 = 2;
    pub const STATUS: u8 = 3;
    pub const PUSHED: u8 = 4;
    pub const ERROR: u8 = 5;
}

mod error_kind {
    pub const FENCED: u8 = 1;
    pub const OUT_OF_ORDER: u8 = 2;
    pub const STORAGE: u8 = 3;
    pub const UNREACHABLE: u8 = 4;
    pub const PROTOCOL: u8 = 5;
    pub const TIMEOUT: u8 = 6;
}

/// Cuts the next complete frame off the front of `buf`; `Ok(None)` when more bytes are needed.
/// The length is checked before anything is allocated for the body.
pub fn split_frame(buf: &mut BytesMut) -> Result<Option<RawFrame>, FrameError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_le_bytes(buf[..4].try_into().expect("4 bytes")) as usize;
    if !(FRAME_HEADER_LEN..=MAX_FRAME_LEN).contains(&len) {
        return Err(FrameError::BadLength(len));
    }
    if buf.len() < 4 + len {
        buf.reserve(4 + len - buf.len());
        return Ok(None);
    }
    let mut frame = buf.split_to(4 + len).freeze();
    frame.advance(4);
    let request_id = frame.get_u64_le();
    let tag = frame.get_u8();
    Ok(Some(RawFrame { request_id, tag, body: frame }))
}

/// Appends a request frame to `out`.
pub fn encode_request(request_id: u64, request: &Request, out: &mut BytesMut) {
    let (tag, start) = begin_frame(request_id, out);
    match request {
        Request::Append { stream, entry } => {
            put_str(out, stream);
            put_entry(out, entry);
        }
        Request::Fence { stream, epoch } => {
            put_str(out, stream);
            out.put_u64_le(*epoch);
        }
        Request::Read { stream, from_lsn, to_lsn, max_bytes } => {
            put_str(out, stream);
            out.put_u64_le(*from_lsn);
            out.put_u64_le(*to_lsn);
            out.put_u64_le(*max_bytes);
        }
        Request::TruncateAfter { stream, epoch, lsn } => {
            put_str(out, stream);
            out.put_u64_le(*epoch);
            out.put_u64_le(*lsn);
        }
        Request::TruncateBelow { stream, epoch, lsn } => {
            put_str(out, stream);
            out.put_u64_le(*epoch);
            out.put_u64_le(*lsn);
        }
        Request::Subscribe { stream, from_lsn } => {
            put_str(out, stream);
            out.put_u64_le(*from_lsn);
        }
        Request::Unsubscribe { subscription_id } => out.put_u64_le(*subscription_id),
        Request::Status => {}
    }
    let op = match request {
        Request::Append { .. } => op::APPEND,
        Request::Fence { .. } => op::FENCE,
        Request::Read { .. } => op::READ,
        Request::TruncateAfter { .. } => op::TRUNCATE_AFTER,
        Request::TruncateBelow { .. } => op::TRUNCATE_BELOW,
        Request::Subscribe { .. } => op::SUBSCRIBE,
        Request::Unsubscribe { .. } => op::UNSUBSCRIBE,
        Request::Status => op::STATUS,
    };
    finish_frame(out, start, tag, op);
}

/// Decodes a request frame's body; any malformed or trailing byte is an error.
pub fn decode_request(frame: RawFrame) -> Result<Request, FrameError> {
    let request_id = frame.request_id;
    let mut body = Reader { body: frame.body, request_id };
    let request = match frame.tag {
        op::APPEND => Request::Append { stream: body.string()?, entry: body.entry()? },
        op::FENCE => Request::Fence { stream: body.string()?, epoch: body.u64()? },
        op::READ => {
            Request::Read { stream: body.string()?, from_lsn: body.u64()?, to_lsn: body.u64()?, max_bytes: body.u64()? }
        }
        op::TRUNCATE_AFTER => Request::TruncateAfter { stream: body.string()?, epoch: body.u64()?, lsn: body.u64()? },
        op::TRUNCATE_BELOW => Request::TruncateBelow { stream: body.string()?, epoch: body.u64()?, lsn: body.u64()? },
        op::SUBSCRIBE => Request::Subscribe { stream: body.string()?, from_lsn: body.u64()? },
        op::UNSUBSCRIBE => Request::Unsubscribe { subscription_id: body.u64()? },
        op::STATUS => Request::Status,
        other => return Err(FrameError::BadBody { request_id, reason: format!("unknown op {other}") }),
    };
    body.finish()?;
    Ok(request)
}

/// Appends a reply frame to `out`.
pub fn encode_response(request_id: u64, response: &Response, out: &mut BytesMut) {
    let (tag, start) = begin_frame(request_id, out);
    let status = match response {
        Response::Done => status::DONE,
        Response::Tail(tail) => {
            put_tail(out, tail);
            status::TAIL
        }
        Response::Entries(entries) => {
            out.put_u32_le(len_u32(entries.len()));
            entries.iter().for_each(|e| put_entry(out, e));
            status::ENTRIES
        }
        Response::Status(node) => {
            out.put_u32_le(len_u32(node.streams.len()));
            for (name, tail) in &node.streams {
                put_str(out, name);
                put_tail(out, tail);
            }
            status::STATUS
        }
        Response::Pushed(entry) => {
            put_entry(out, entry);
            status::PUSHED
        }
        Response::Error(error) => {
            put_error(out, error);
            status::ERROR
        }
    };
    finish_frame(out, start, tag, status);
}

/// Decodes a reply frame's body.
pub fn decode_response(frame: RawFrame) -> Result<Response, FrameError> {
    let mut body = Reader { body: frame.body, request_id: frame.request_id };
    let response = match frame.tag {
        status::DONE => Response::Done,
        status::TAIL => Response::Tail(body.tail()?),
        status::ENTRIES => {
            let count = body.u32()? as usize;
            // Each entry needs at least its fixed fields, so a lying count cannot make us allocate much.
            let mut entries = Vec::with_capacity(count.min(body.body.len() / ENTRY_FIXED_LEN));
            for _ in 0..count {
                entries.push(body.entry()?);
            }
            Response::Entries(entries)
        }
        status::STATUS => {
            let count = body.u32()?;
            let mut node = NodeStatus::default();
            for _ in 0..count {
                let name = body.string()?;
                node.streams.insert(name, body.tail()?);
            }
            Response::Status(node)
        }
        status::PUSHED => Response::Pushed(body.entry()?),
        status::ERROR => Response::Error(body.error()?),
        other => return Err(body.fail(format!("unknown reply status {other}"))),
    };
    body.finish()?;
    Ok(response)
}

/// Fixed-size part of an encoded entry: four u64 and the payload length.
const ENTRY_FIXED_LEN: usize = 36;

fn begin_frame(request_id: u64, out: &mut BytesMut) -> (usize, usize) {
    let start = out.len();
    out.put_u32_le(0);
    out.put_u64_le(request_id);
    let tag = out.len();
    out.put_u8(0);
    (tag, start)
}

fn finish_frame(out: &mut BytesMut, start: usize, tag_at: usize, tag: u8) {
    out[tag_at] = tag;
    let len = len_u32(out.len() - start - 4);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
}

/// A length field. Every frame is at most `MAX_FRAME_LEN` (64 MiB and a little), which the
/// senders keep to (the quorum writer refuses larger entries, reads stop at `MAX_READ_BYTES`), so
/// every part of one fits in a u32; one that does not is a bug here, and stops rather than wraps.
fn len_u32(len: usize) -> u32 {
    u32::try_from(len).expect("a frame part is shorter than MAX_FRAME_LEN")
}

fn put_str(out: &mut BytesMut, s: &str) {
    out.put_u32_le(len_u32(s.len()));
    out.put_slice(s.as_bytes());
}

fn put_entry(out: &mut BytesMut, e: &Entry) {
    out.put_u64_le(e.epoch);
    out.put_u64_le(e.lsn);
    out.put_u64_le(e.timestamp_ms);
    out.put_u64_le(e.commit_lsn);
    out.put_u32_le(len_u32(e.payload.len()));
    out.put_slice(&e.payload);
}

fn put_tail(out: &mut BytesMut, t: &StreamTail) {
    for v in [t.fenced_epoch, t.first_lsn, t.last_lsn, t.last_epoch, t.commit_lsn] {
        out.put_u64_le(v);
    }
}

fn put_error(out: &mut BytesMut, error: &NodeError) {
    match error {
        NodeError::Fenced { stream, fenced_epoch } => {
            out.put_u8(error_kind::FENCED);
            put_str(out, stream);
            out.put_u64_le(*fenced_epoch);
        }
        NodeError::OutOfOrder { stream, expected_lsn } => {
            out.put_u8(error_kind::OUT_OF_ORDER);
            put_str(out, stream);
            out.put_u64_le(*expected_lsn);
        }
        NodeError::Storage(msg) => {
            out.put_u8(error_kind::STORAGE);
            put_str(out, msg);
        }
        NodeError::Unreachable(msg) => {
            out.put_u8(error_kind::UNREACHABLE);
            put_str(out, msg);
        }
        NodeError::Protocol(msg) => {
            out.put_u8(error_kind::PROTOCOL);
            put_str(out, msg);
        }
        NodeError::Timeout => out.put_u8(error_kind::TIMEOUT),
    }
}

/// Checked reads from a frame body: running short is an error, never a panic.
struct Reader {
    body: Bytes,
    request_id: u64,
}

impl Reader {
    fn fail(&self, reason: String) -> FrameError {
        FrameError::BadBody { request_id: self.request_id, reason }
    }

    fn need(&self, n: usize) -> Result<(), FrameError> {
        if self.body.remaining() < n {
            return Err(self.fail(format!("body too short: need {n} more bytes, have {}", self.body.remaining())));
        }
        Ok(())
    }

    fn u8(&mut self) -> Result<u8, FrameError> {
        self.need(1)?;
        Ok(self.body.get_u8())
    }

    fn u32(&mut self) -> Result<u32, FrameError> {
        self.need(4)?;
        Ok(self.body.get_u32_le())
    }

    fn u64(&mut self) -> Result<u64, FrameError> {
        self.need(8)?;
        Ok(self.body.get_u64_le())
    }

    fn bytes(&mut self) -> Result<Bytes, FrameError> {
        let len = self.u32()? as usize;
        self.need(len)?;
        Ok(self.body.split_to(len))
    }

    fn string(&mut self) -> Result<String, FrameError> {
        let raw = self.bytes()?;
        String::from_utf8(raw.to_vec()).map_err(|_| self.fail("string is not UTF-8".into()))
    }

    fn entry(&mut self) -> Result<Entry, FrameError> {
        Ok(Entry {
            epoch: self.u64()?,
            lsn: self.u64()?,
            timestamp_ms: self.u64()?,
            commit_lsn: self.u64()?,
            payload: self.bytes()?,
        })
    }

    fn tail(&mut self) -> Result<StreamTail, FrameError> {
        Ok(StreamTail {
            fenced_epoch: self.u64()?,
            first_lsn: self.u64()?,
            last_lsn: self.u64()?,
            last_epoch: self.u64()?,
            commit_lsn: self.u64()?,
        })
    }

    fn error(&mut self) -> Result<NodeError, FrameError> {
        Ok(match self.u8()? {
            error_kind::FENCED => NodeError::Fenced { stream: self.string()?, fenced_epoch: self.u64()? },
            error_kind::OUT_OF_ORDER => NodeError::OutOfOrder { stream: self.string()?, expected_lsn: self.u64()? },
            error_kind::STORAGE => NodeError::Storage(self.string()?),
            error_kind::UNREACHABLE => NodeError::Unreachable(self.string()?),
            error_kind::PROTOCOL => NodeError::Protocol(self.string()?),
            error_kind::TIMEOUT => NodeError::Timeout,
            other => return Err(self.fail(format!("unknown error kind {other}"))),
        })
    }

    fn finish(&self) -> Result<(), FrameError> {
        if self.body.has_remaining() {
            return Err(self.fail(format!("{} trailing bytes", self.body.remaining())));
        }
        Ok(())
    }
}

/// Most bytes gathered into one socket write.
const COALESCE_LIMIT: usize = 1024 * 1024;

/// Appends `first` and then whatever `next` has ready to `batch`, up to about 1 MiB, so the
/// client's requests and the server's replies each go out in as few writes as possible.
pub fn coalesce(batch: &mut BytesMut, first: &[u8], mut next: impl FnMut() -> Option<Bytes>) {
    batch.extend_from_slice(first);
    while batch.len() < COALESCE_LIMIT {
        match next() {
            Some(frame) => batch.extend_from_slice(&frame),
            None => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(lsn: u64) -> Entry {
        Entry { epoch: 3, lsn, timestamp_ms: 99, commit_lsn: lsn - 1, payload: Bytes::from(vec![lsn as u8; 10]) }
    }

    fn tail() -> StreamTail {
        StreamTail { fenced_epoch: 4, first_lsn: 2, last_lsn: 9, last_epoch: 3, commit_lsn: 8 }
    }

    fn requests() -> Vec<Request> {
        let stream = "shard-0".to_string();
        vec![
            Request::Append { stream: stream.clone(), entry: entry(5) },
            Request::Fence { stream: stream.clone(), epoch: 7 },
            Request::Read { stream: stream.clone(), from_lsn: 1, to_lsn: 9, max_bytes: 1 << 20 },
            Request::TruncateAfter { stream: stream.clone(), epoch: 7, lsn: 4 },
            Request::TruncateBelow { stream: stream.clone(), epoch: 2, lsn: 3 },
            Request::Subscribe { stream, from_lsn: 2 },
            Request::Unsubscribe { subscription_id: 12 },
            Request::Status,
        ]
    }

    fn responses() -> Vec<Response> {
        let mut status = NodeStatus::default();
        status.streams.insert("a".into(), tail());
        status.streams.insert("b".into(), tail());
        vec![
            Response::Done,
            Response::Tail(tail()),
            Response::Entries(vec![]),
            Response::Entries(vec![entry(1), entry(2)]),
            Response::Status(status),
            Response::Pushed(entry(3)),
            Response::Error(NodeError::Fenced { stream: "s".into(), fenced_epoch: 2 }),
            Response::Error(NodeError::OutOfOrder { stream: "s".into(), expected_lsn: 2 }),
            Response::Error(NodeError::Storage("disk full".into())),
            Response::Error(NodeError::Unreachable("x".into())),
            Response::Error(NodeError::Protocol("bad".into())),
            Response::Error(NodeError::Timeout),
        ]
    }

    #[test]
    fn requests_roundtrip_back_to_back() {
        let mut buf = BytesMut::new();
        for (id, request) in requests().iter().enumerate() {
            encode_request(id as u64, request, &mut buf);
        }
        for (id, request) in requests().into_iter().enumerate() {
            let frame = split_frame(&mut buf).unwrap().unwrap();
            assert_eq!(frame.request_id, id as u64);
            assert_eq!(decode_request(frame).unwrap(), request);
        }
        assert_eq!(split_frame(&mut buf).unwrap(), None);
    }

    #[test]
    fn responses_roundtrip() {
        for (id, response) in responses().into_iter().enumerate() {
            let mut buf = BytesMut::new();
            encode_response(id as u64 + 100, &response, &mut buf);
            let frame = split_frame(&mut buf).unwrap().unwrap();
            assert_eq!(frame.request_id, id as u64 + 100);
            assert_eq!(decode_response(frame).unwrap(), response);
        }
    }

    #[test]
    fn partial_frames_wait_for_more_bytes() {
        let mut whole = BytesMut::new();
        encode_request(1, &requests()[0], &mut whole);
        for cut in 0..whole.len() {
            let mut part = BytesMut::from(&whole[..cut]);
            assert_eq!(split_frame(&mut part).unwrap(), None, "cut at {cut}");
        }
    }

    #[test]
    fn oversized_and_undersized_lengths_are_refused_before_allocating() {
        let mut buf = BytesMut::from(&u32::MAX.to_le_bytes()[..]);
        assert_eq!(split_frame(&mut buf), Err(FrameError::BadLength(u32::MAX as usize)));
        assert!(buf.capacity() < 1024);
        let mut buf = BytesMut::from(&3u32.to_le_bytes()[..]);
        assert_eq!(split_frame(&mut buf), Err(FrameError::BadLength(3)));
    }

    #[test]
    fn malformed_bodies_are_errors_tagged_with_the_request_id() {
        let frame = |tag: u8, body: &[u8]| RawFrame { request_id: 42, tag, body: Bytes::copy_from_slice(body) };
        for bad in [frame(200, &[]), frame(op::FENCE, &[1, 0, 0, 0]), frame(op::STATUS, &[0])] {
            let err = decode_request(bad).unwrap_err();
            assert_eq!(err.request_id(), 42, "{err}");
        }
        // A stream name claiming 4 GiB must not be trusted.
        let err = decode_request(frame(op::FENCE, &[0xff, 0xff, 0xff, 0xff, b'a'])).unwrap_err();
        assert!(matches!(err, FrameError::BadBody { .. }));
        // Invalid UTF-8 in a name.
        assert!(decode_request(frame(op::TRUNCATE_BELOW, &[&[1, 0, 0, 0, 0xff][..], &[0; 16]].concat())).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(frame)) = split_frame(&mut buf) {
                let _ = decode_request(frame.clone());
                let _ = decode_response(frame);
            }
        }

        #[test]
        fn arbitrary_bodies_never_panic(tag in any::<u8>(), body in proptest::collection::vec(any::<u8>(), 0..200)) {
            let frame = RawFrame { request_id: 1, tag, body: Bytes::from(body) };
            let _ = decode_request(frame.clone());
            let _ = decode_response(frame);
        }
    }
}

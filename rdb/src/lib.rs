//! A streaming reader of Redis RDB files, for importing them through `RESTORE`.
//!
//! [`RdbReader`] walks an RDB from any [`std::io::Read`] (no other I/O) and yields each key with
//! its database, its absolute expiry and its value as a DUMP/RESTORE payload: the value's type
//! byte and encoded bytes exactly as the file holds them, the file's RDB version (2 bytes, little
//! endian) and the CRC-64 of all that (8 bytes, little endian), as Redis's `DUMP` builds it
//! (`createDumpPayload` in src/cluster.c). It understands every opcode and every core value
//! encoding of RDB versions up to 10 (Redis 7.0), enough to know each value's exact extent; it
//! does not rebuild values. The file's CRC-64 trailer is checked at the end.
//!
//! Refused, each with the byte offset and the reason: a file that is not an RDB, an RDB version
//! newer than 10 (Redis 7.2+ and Valkey: a Redis 7.0 node refuses their payloads), values of
//! module types and module AUX data, the pre-release 7.0 function format, a truncated file, an
//! unknown opcode or type, a checksum mismatch, bytes after the trailer.

mod crc64;
mod lzf;
mod source;

use std::io::Read;

pub use crc64::crc64;
use source::Source;

/// The newest RDB version Redis 7.0 (the Redis memlog fronts) loads, and accepts in `RESTORE`.
pub const MAX_RDB_VERSION: u16 = 10;
/// From this version on an RDB ends with a CRC-64 of everything before it.
const FIRST_CHECKSUMMED_VERSION: u16 = 5;

// Opcodes (src/rdb.h).
const OPCODE_FUNCTION2: u8 = 245;
const OPCODE_FUNCTION_PRE_GA: u8 = 246;
const OPCODE_MODULE_AUX: u8 = 247;
const OPCODE_IDLE: u8 = 248;
const OPCODE_FREQ: u8 = 249;
const OPCODE_AUX: u8 = 250;
const OPCODE_RESIZEDB: u8 = 251;
const OPCODE_EXPIRETIME_MS: u8 = 252;
const OPCODE_EXPIRETIME: u8 = 253;
const OPCODE_SELECTDB: u8 = 254;
const OPCODE_EOF: u8 = 255;

// Value types (src/rdb.h).
const TYPE_STRING: u8 = 0;
const TYPE_LIST: u8 = 1;
const TYPE_SET: u8 = 2;
const TYPE_ZSET: u8 = 3;
const TYPE_HASH: u8 = 4;
const TYPE_ZSET_2: u8 = 5;
const TYPE_MODULE: u8 = 6;
const TYPE_MODULE_2: u8 = 7;
const TYPE_HASH_ZIPMAP: u8 = 9;
const TYPE_LIST_ZIPLIST: u8 = 10;
const TYPE_SET_INTSET: u8 = 11;
const TYPE_ZSET_ZIPLIST: u8 = 12;
const TYPE_HASH_ZIPLIST: u8 = 13;
const TYPE_LIST_QUICKLIST: u8 = 14;
const TYPE_STREAM_LISTPACKS: u8 = 15;
const TYPE_HASH_LISTPACK: u8 = 16;
const TYPE_ZSET_LISTPACK: u8 = 17;
const TYPE_LIST_QUICKLIST_2: u8 = 18;
const TYPE_STREAM_LISTPACKS_2: u8 = 19;

// String encodings (the low 6 bits of a length byte whose top bits are 11).
const ENC_INT8: u8 = 0;
const ENC_INT16: u8 = 1;
const ENC_INT32: u8 = 2;
const ENC_LZF: u8 = 3;

/// Why an RDB was refused, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("RDB refused at byte offset {offset}: {reason}")]
pub struct RdbError {
    /// Offset in the file of the byte (or the start of the field) found wrong.
    pub offset: u64,
    pub reason: Reason,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Reason {
    #[error("not an RDB file: it does not start with REDIS and a 4-digit version")]
    NotRdb,
    #[error(
        "RDB version {0} is newer than the RDB version 10 that Redis 7.0 (which memlog fronts) loads: the file \
         comes from Redis 7.2 or newer, or Valkey, and Redis 7.0 refuses its DUMP payloads. Way out: copy the \
         running source with `memlog import live`, or export the data from a Redis 7.0 or older"
    )]
    TooNew(u16),
    #[error(
        "this is a Valkey RDB ({0}), newer than the RDB version 10 that Redis 7.0 (which memlog fronts) loads. \
         Way out: copy the running source with `memlog import live`"
    )]
    Valkey(String),
    #[error("the file ends in the middle of {0} (truncated)")]
    Truncated(&'static str),
    #[error("read error: {0}")]
    Io(String),
    #[error("unknown opcode or value type {0}")]
    UnknownType(u8),
    #[error("a value of module type {0}: module types cannot be imported (memlog's Redis loads no modules)")]
    ModuleValue(String),
    #[error("AUX data of module {0}: module data cannot be imported (memlog's Redis loads no modules)")]
    ModuleAux(String),
    #[error("functions in the pre-release Redis 7.0 format (opcode 246), which Redis 7.0 itself refuses")]
    PreReleaseFunctions,
    #[error("CRC-64 mismatch: the trailer says {stored:016x}, the contents give {computed:016x}")]
    Checksum { stored: u64, computed: u64 },
    #[error("{0}")]
    Corrupt(&'static str),
    #[error("bytes after the end of the RDB (its checksum trailer)")]
    TrailingData,
}

/// One thing an RDB holds, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Key(Key),
    /// An AUX field (`redis-ver`, `ctime`, …): metadata about the file.
    Aux {
        name: Vec<u8>,
        value: Vec<u8>,
    },
    /// A function library's code (`FUNCTION LOAD` source), not a key.
    Function {
        code: Vec<u8>,
    },
}

/// One key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    pub db: u64,
    pub key: Vec<u8>,
    /// When the key expires, in Unix milliseconds; `None` for a key without TTL.
    pub expire_at_ms: Option<i64>,
    /// The value as `RESTORE` takes it.
    pub payload: Vec<u8>,
}

impl Key {
    /// The value's RDB type byte (the first byte of the payload).
    pub fn rdb_type(&self) -> u8 {
        self.payload[0]
    }
}

/// Whether the file's contents were checked against a CRC-64 trailer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checksum {
    Verified,
    /// The file has no checksum: an RDB version before 5, or written with `rdbchecksum no`
    /// (a trailer of zeros).
    Absent,
}

/// A length field, or the marker of a specially encoded string.
enum Length {
    Plain(u64),
    Encoded(u8),
}

/// The streaming reader: call [`RdbReader::next_item`] until it returns `None`.
pub struct RdbReader<R> {
    src: Source<R>,
    version: u16,
    db: u64,
    expire_at_ms: Option<i64>,
    checksum: Option<Checksum>,
}

impl<R: Read> RdbReader<R> {
    /// Reads and checks the header.
    pub fn new(input: R) -> Result<RdbReader<R>, RdbError> {
        let mut src = Source::new(input);
        let header = src.read_array::<9>("the header").map_err(|e| match e.reason {
            Reason::Truncated(_) => RdbError { offset: 0, reason: Reason::NotRdb },
            _ => e,
        })?;
        if header.starts_with(b"VALKEY") {
            let magic = String::from_utf8_lossy(&header).into_owned();
            return Err(RdbError { offset: 0, reason: Reason::Valkey(magic) });
        }
        let version = (&header[..5] == b"REDIS")
            .then(|| std::str::from_utf8(&header[5..]).ok()?.parse::<u16>().ok())
            .flatten()
            .filter(|_| header[5..].iter().all(u8::is_ascii_digit))
            .ok_or(RdbError { offset: 0, reason: Reason::NotRdb })?;
        if version == 0 {
            return Err(RdbError { offset: 5, reason: Reason::NotRdb });
        }
        if version > MAX_RDB_VERSION {
            return Err(RdbError { offset: 5, reason: Reason::TooNew(version) });
        }
        Ok(RdbReader { src, version, db: 0, expire_at_ms: None, checksum: None })
    }

    /// The file's RDB version.
    pub fn version(&self) -> u16 {
        self.version
    }

    /// Bytes consumed so far.
    pub fn offset(&self) -> u64 {
        self.src.offset()
    }

    /// Set once the whole file has been read: whether a checksum was verified.
    pub fn checksum(&self) -> Option<Checksum> {
        self.checksum
    }

    /// The next item, or `None` after the end of the file (whose trailer has then been checked).
    pub fn next_item(&mut self) -> Result<Option<Item>, RdbError> {
        if self.checksum.is_some() {
            return Ok(None);
        }
        loop {
            let at = self.src.offset();
            let opcode = self.src.read_u8("an opcode")?;
            match opcode {
                OPCODE_EOF => {
                    self.finish()?;
                    return Ok(None);
                }
                OPCODE_SELECTDB => self.db = self.read_plain_len("a database number")?,
                OPCODE_RESIZEDB => {
                    self.read_plain_len("a RESIZEDB size")?;
                    self.read_plain_len("a RESIZEDB size")?;
                }
                OPCODE_EXPIRETIME_MS => {
                    self.expire_at_ms = Some(i64::from_le_bytes(self.src.read_array("an expire time")?));
                }
                OPCODE_EXPIRETIME => {
                    let seconds = i32::from_le_bytes(self.src.read_array("an expire time")?);
                    self.expire_at_ms = Some(i64::from(seconds) * 1000);
                }
                // LRU/LFU hints: they do not travel with the payload.
                OPCODE_FREQ => {
                    self.src.read_u8("a FREQ byte")?;
                }
                OPCODE_IDLE => {
                    self.read_plain_len("an IDLE time")?;
                }
                OPCODE_AUX => {
                    let name = self.read_string("an AUX name")?;
                    let value = self.read_string("an AUX value")?;
                    return Ok(Some(Item::Aux { name, value }));
                }
                OPCODE_FUNCTION2 => {
                    let code = self.read_string("a function library")?;
                    return Ok(Some(Item::Function { code }));
                }
                OPCODE_FUNCTION_PRE_GA => return Err(RdbError { offset: at, reason: Reason::PreReleaseFunctions }),
                OPCODE_MODULE_AUX => {
                    let module = module_name(self.read_plain_len("a module id")?);
                    return Err(RdbError { offset: at, reason: Reason::ModuleAux(module) });
                }
                value_type => return self.read_key(at, value_type).map(|key| Some(Item::Key(key))),
            }
        }
    }

    /// The key and value after a value-type byte at `at`.
    fn read_key(&mut self, at: u64, value_type: u8) -> Result<Key, RdbError> {
        if !is_value_type(value_type) {
            return Err(RdbError { offset: at, reason: Reason::UnknownType(value_type) });
        }
        let key = self.read_string("a key")?;
        self.src.start_capture();
        let skipped = self.skip_value(value_type);
        let value = self.src.take_capture();
        skipped?;
        let mut payload = Vec::with_capacity(1 + value.len() + 10);
        payload.push(value_type);
        payload.extend_from_slice(&value);
        payload.extend_from_slice(&self.version.to_le_bytes());
        let crc = crc64(0, &payload);
        payload.extend_from_slice(&crc.to_le_bytes());
        Ok(Key { db: self.db, key, expire_at_ms: self.expire_at_ms.take(), payload })
    }

    /// Checks the trailer after the EOF opcode.
    fn finish(&mut self) -> Result<(), RdbError> {
        let checksum = if self.version >= FIRST_CHECKSUMMED_VERSION {
            let computed = self.src.crc();
            let at = self.src.offset();
            let stored = u64::from_le_bytes(self.src.read_array("the checksum trailer")?);
            if stored == 0 {
                Checksum::Absent
            } else if stored != computed {
                return Err(RdbError { offset: at, reason: Reason::Checksum { stored, computed } });
            } else {
                Checksum::Verified
            }
        } else {
            Checksum::Absent
        };
        if !self.src.at_end()? {
            return Err(self.src.error(Reason::TrailingData));
        }
        self.checksum = Some(checksum);
        Ok(())
    }

    fn read_len(&mut self, what: &'static str) -> Result<Length, RdbError> {
        let first = self.src.read_u8(what)?;
        Ok(match first >> 6 {
            0 => Length::Plain(u64::from(first & 0x3f)),
            1 => Length::Plain((u64::from(first & 0x3f) << 8) | u64::from(self.src.read_u8(what)?)),
            2 => match first {
                0x80 => Length::Plain(u64::from(u32::from_be_bytes(self.src.read_array(what)?))),
                0x81 => Length::Plain(u64::from_be_bytes(self.src.read_array(what)?)),
                _ => return Err(self.src.error(Reason::Corrupt("unknown length encoding"))),
            },
            _ => Length::Encoded(first & 0x3f),
        })
    }

    fn read_plain_len(&mut self, what: &'static str) -> Result<u64, RdbError> {
        match self.read_len(what)? {
            Length::Plain(n) => Ok(n),
            Length::Encoded(_) => Err(self.src.error(Reason::Corrupt("an encoded string where a length belongs"))),
        }
    }

    /// Reads a string as text (a key, an AUX field), decoding integer and LZF encodings.
    fn read_string(&mut self, what: &'static str) -> Result<Vec<u8>, RdbError> {
        match self.read_len(what)? {
            Length::Plain(n) => self.src.read_vec(n, what),
            Length::Encoded(ENC_INT8) => Ok((self.src.read_u8(what)? as i8).to_string().into_bytes()),
            Length::Encoded(ENC_INT16) => Ok(i16::from_le_bytes(self.src.read_array(what)?).to_string().into_bytes()),
            Length::Encoded(ENC_INT32) => Ok(i32::from_le_bytes(self.src.read_array(what)?).to_string().into_bytes()),
            Length::Encoded(ENC_LZF) => {
                let compressed_len = self.read_plain_len(what)?;
                let len = self.read_plain_len(what)?;
                let at = self.src.offset();
                let compressed = self.src.read_vec(compressed_len, what)?;
                let len = usize::try_from(len).map_err(|_| self.src.error(Reason::Corrupt("LZF length too large")))?;
                lzf::decompress(&compressed, len)
                    .map_err(|reason| RdbError { offset: at, reason: Reason::Corrupt(reason) })
            }
            Length::Encoded(_) => Err(self.src.error(Reason::Corrupt("unknown string encoding"))),
        }
    }

    /// Skips a string in any encoding.
    fn skip_string(&mut self, what: &'static str) -> Result<(), RdbError> {
        match self.read_len(what)? {
            Length::Plain(n) => self.src.skip(n, what),
            Length::Encoded(ENC_INT8) => self.src.skip(1, what),
            Length::Encoded(ENC_INT16) => self.src.skip(2, what),
            Length::Encoded(ENC_INT32) => self.src.skip(4, what),
            Length::Encoded(ENC_LZF) => {
                let compressed_len = self.read_plain_len(what)?;
                self.read_plain_len(what)?;
                self.src.skip(compressed_len, what)
            }
            Length::Encoded(_) => Err(self.src.error(Reason::Corrupt("unknown string encoding"))),
        }
    }

    /// Skips a value of `value_type` (src/rdb.c, `rdbLoadObject`).
    fn skip_value(&mut self, value_type: u8) -> Result<(), RdbError> {
        match value_type {
            TYPE_STRING | TYPE_HASH_ZIPMAP | TYPE_LIST_ZIPLIST | TYPE_SET_INTSET | TYPE_ZSET_ZIPLIST
            | TYPE_HASH_ZIPLIST | TYPE_HASH_LISTPACK | TYPE_ZSET_LISTPACK => self.skip_string("a value"),
            TYPE_LIST | TYPE_SET | TYPE_LIST_QUICKLIST => {
                for _ in 0..self.read_plain_len("an element count")? {
                    self.skip_string("an element")?;
                }
                Ok(())
            }
            TYPE_LIST_QUICKLIST_2 => {
                for _ in 0..self.read_plain_len("a quicklist node count")? {
                    self.read_plain_len("a quicklist container kind")?;
                    self.skip_string("a quicklist node")?;
                }
                Ok(())
            }
            TYPE_HASH => {
                for _ in 0..self.read_plain_len("a hash size")? {
                    self.skip_string("a hash field")?;
                    self.skip_string("a hash value")?;
                }
                Ok(())
            }
            TYPE_ZSET => {
                for _ in 0..self.read_plain_len("a sorted set size")? {
                    self.skip_string("a sorted set member")?;
                    // A score as text: a length byte, or 253/254/255 for NaN/+inf/-inf.
                    let len = self.src.read_u8("a score")?;
                    if len < 253 {
                        self.src.skip(u64::from(len), "a score")?;
                    }
                }
                Ok(())
            }
            TYPE_ZSET_2 => {
                for _ in 0..self.read_plain_len("a sorted set size")? {
                    self.skip_string("a sorted set member")?;
                    self.src.skip(8, "a score")?;
                }
                Ok(())
            }
            TYPE_STREAM_LISTPACKS | TYPE_STREAM_LISTPACKS_2 => self.skip_stream(value_type == TYPE_STREAM_LISTPACKS_2),
            TYPE_MODULE | TYPE_MODULE_2 => {
                let module = module_name(self.read_plain_len("a module id")?);
                Err(self.src.error(Reason::ModuleValue(module)))
            }
            other => Err(self.src.error(Reason::UnknownType(other))),
        }
    }

    /// A stream: its listpacks, metadata and consumer groups with their pending entries.
    fn skip_stream(&mut self, v2: bool) -> Result<(), RdbError> {
        for _ in 0..self.read_plain_len("a stream listpack count")? {
            self.skip_string("a stream node key")?;
            self.skip_string("a stream listpack")?;
        }
        // Length, last id (ms, seq); v2 adds first id, max deleted id, entries added.
        let metadata = if v2 { 8 } else { 3 };
        for _ in 0..metadata {
            self.read_plain_len("stream metadata")?;
        }
        for _ in 0..self.read_plain_len("a consumer group count")? {
            self.skip_string("a consumer group name")?;
            self.read_plain_len("a consumer group last id")?;
            self.read_plain_len("a consumer group last id")?;
            if v2 {
                self.read_plain_len("a consumer group entries-read")?;
            }
            for _ in 0..self.read_plain_len("a pending entries count")? {
                // Raw 128-bit id, delivery time (8 bytes), delivery count.
                self.src.skip(16 + 8, "a pending entry")?;
                self.read_plain_len("a delivery count")?;
            }
            for _ in 0..self.read_plain_len("a consumer count")? {
                self.skip_string("a consumer name")?;
                self.src.skip(8, "a consumer seen time")?;
                let pending = self.read_plain_len("a consumer pending count")?;
                for _ in 0..pending {
                    self.src.skip(16, "a consumer pending id")?;
                }
            }
        }
        Ok(())
    }
}

impl<R: Read> Iterator for RdbReader<R> {
    type Item = Result<Item, RdbError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_item().transpose()
    }
}

fn is_value_type(t: u8) -> bool {
    t <= TYPE_MODULE_2 || (TYPE_HASH_ZIPMAP..=TYPE_STREAM_LISTPACKS_2).contains(&t)
}

/// A module's 9-character type name from its 64-bit id (`moduleTypeNameByID` in src/module.c).
fn module_name(id: u64) -> String {
    const CHARSET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut bits = id >> 10;
    let mut name = [0u8; 9];
    for slot in name.iter_mut().rev() {
        *slot = CHARSET[(bits & 63) as usize];
        bits >>= 6;
    }
    String::from_utf8_lossy(&name).into_owned()
}

/// Splits a DUMP payload into its RDB type byte, value bytes and RDB version, checking its
/// CRC-64; `None` if it is not a well-formed payload.
pub fn split_payload(payload: &[u8]) -> Option<(u8, &[u8], u16)> {
    let body_len = payload.len().checked_sub(8)?;
    let (body, crc) = payload.split_at(body_len);
    if body.len() < 3 || crc64(0, body).to_le_bytes() != crc {
        return None;
    }
    let version = u16::from_le_bytes([body[body.len() - 2], body[body.len() - 1]]);
    Some((body[0], &body[1..body.len() - 2], version))
}

#[cfg(test)]
mod tests;

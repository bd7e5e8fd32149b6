//! Pinned time for scripts that read the clock or set relative TTLs.
//!
//! A script is journaled as its call and replayed later, so `TIME`, `EXPIRE k 10` or
//! `SET k v EX 10` inside it would take the replay's clock. The proxy journals such a script
//! wrapped in a prelude that shadows `redis` with a table whose `call`/`pcall` answer `TIME`
//! from the time passed as one extra, last ARGV (removed before the user's code runs), and turn
//! relative TTLs into absolute ones from it, as the sequencer does for plain commands:
//! `EXPIRE`/`PEXPIRE` → `PEXPIREAT`, `SETEX`/`PSETEX` → `SET … PXAT`, `SET`/`GETEX … EX|PX` →
//! `PXAT`. Arguments Redis would refuse (not an integer, not positive where Redis wants it,
//! conflicting options, out of range) are passed unchanged, so Redis answers its own error.
//!
//! The prelude is one line, put before the user's first line (after a shebang line), so errors
//! the user's code raises keep their line numbers. Differences from Redis, for these scripts
//! only: error messages name the wrapped script's SHA1, not the user's, and an error raised by
//! `redis.call` itself says `@user_script:1` (Redis's error handler names the Lua function that
//! called the C function, here the prelude's wrapper). The body does not change per call, so
//! Redis caches one extra script per user script.

use bytes::{Bytes, BytesMut};

/// Lua, on one line (the `\` continuations join lines with a space).
const PRELUDE: &str = "local __memlog_redis, __memlog_now = redis, tonumber(table.remove(ARGV)) \
local function __memlog_int(v, limit) v = tostring(v) \
 if string.match(v, '^%-?%d+$') then local n = tonumber(v) if math.abs(n) <= limit then return n end end end \
local function __memlog_at(v, scale, positive) local n = __memlog_int(v, 1e15 / scale) \
 if n and (n > 0 or not positive) then return string.format('%d', __memlog_now + n * scale) end end \
local function __memlog_pin(...) local a, n = {...}, select('#', ...) \
 local c = type(a[1]) == 'string' and string.upper(a[1]) or '' \
 if (c == 'EXPIRE' or c == 'PEXPIRE') and n >= 3 then \
  local at = __memlog_at(a[3], c == 'EXPIRE' and 1000 or 1, false) if at then a[1], a[3] = 'PEXPIREAT', at end \
 elseif (c == 'SETEX' or c == 'PSETEX') and n == 4 then \
  local at = __memlog_at(a[3], c == 'SETEX' and 1000 or 1, true) if at then return 'SET', a[2], a[4], 'PXAT', at end \
 elseif (c == 'SET' and n >= 5) or (c == 'GETEX' and n == 4) then \
  local ttl, count, i = nil, 0, c == 'SET' and 4 or 3 \
  while i <= n do local o = type(a[i]) == 'string' and string.upper(a[i]) or '' \
   if o == 'EX' or o == 'PX' or o == 'EXAT' or o == 'PXAT' then count, ttl, i = count + 1, i, i + 2 \
   else if o == 'KEEPTTL' or o == 'PERSIST' then count = count + 1 end i = i + 1 end end \
  local o = ttl and string.upper(a[ttl]) \
  if count == 1 and (o == 'EX' or o == 'PX') then \
   local at = __memlog_at(a[ttl + 1], o == 'EX' and 1000 or 1, true) if at then a[ttl], a[ttl + 1] = 'PXAT', at end end \
 end return unpack(a, 1, n) end \
local function __memlog_time(c, n) if n == 1 and type(c) == 'string' and string.upper(c) == 'TIME' then \
 return {string.format('%d', math.floor(__memlog_now / 1000)), string.format('%d', (__memlog_now % 1000) * 1000)} end end \
local redis = setmetatable({ \
 call = function(...) return __memlog_time(..., select('#', ...)) or __memlog_redis.call(__memlog_pin(...)) end, \
 pcall = function(...) return __memlog_time(..., select('#', ...)) or __memlog_redis.pcall(__memlog_pin(...)) end, \
}, {__index = __memlog_redis}) ";

/// `body` with the prelude on its first line of code (after a `#!` shebang line).
pub(crate) fn pinned_body(body: &[u8]) -> Bytes {
    let split =
        if body.starts_with(b"#!") { body.iter().position(|&b| b == b'\n').map_or(body.len(), |nl| nl + 1) } else { 0 };
    let mut out = BytesMut::with_capacity(body.len() + PRELUDE.len() + 1);
    out.extend_from_slice(&body[..split]);
    if split == body.len() && split > 0 && !body.ends_with(b"\n") {
        out.extend_from_slice(b"\n");
    }
    out.extend_from_slice(PRELUDE.as_bytes());
    out.extend_from_slice(&body[split..]);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prelude_is_one_line_before_the_first_line_of_code() {
        assert!(!PRELUDE.contains('\n'));
        let plain = pinned_body(b"return 1\nreturn 2");
        assert!(plain.starts_with(PRELUDE.as_bytes()) && plain.ends_with(b"return 1\nreturn 2"));
        let shebang = pinned_body(b"#!lua\nreturn 1");
        assert_eq!(&shebang[..6], b"#!lua\n");
        assert_eq!(&shebang[6..], format!("{PRELUDE}return 1").as_bytes());
        assert_eq!(pinned_body(b"#!lua").iter().filter(|&&b| b == b'\n').count(), 1);
    }
}

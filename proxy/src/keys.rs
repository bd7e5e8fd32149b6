//! The keys memlog keeps inside Redis, and the one reader of the journal position a node holds.

use crate::resp::bulk_payload;

/// The key in which each Redis node records the journal prefix it holds; clients never see it.
pub(crate) const LSN_KEY: &[u8] = b"__memlog:lsn";
/// Keys memlog uses inside Redis (the LSN, the scratch key of dry-run probes); clients cannot
/// name them.
pub(crate) const RESERVED_PREFIX: &[u8] = b"__memlog:";

/// The reply to `GET __memlog:lsn` (RESP2 or RESP3): the number, or 0 when the key is missing
/// (the node holds nothing of the journal); `None` for anything else.
pub(crate) fn parse_lsn(reply: &[u8]) -> Option<u64> {
    if reply == b"$-1\r\n" || reply == b"_\r\n" {
        return Some(0);
    }
    std::str::from_utf8(bulk_payload(reply)?).ok()?.parse().ok()
}

/// The node user that scripts of restricted callers run as (`sequencer::run_as`); node
/// preparation creates it disabled.
pub(crate) const SCRIPT_CALLER_USER: &str = "__memlog_script_caller";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_replies() {
        assert_eq!(parse_lsn(b"$-1\r\n"), Some(0));
        assert_eq!(parse_lsn(b"_\r\n"), Some(0));
        assert_eq!(parse_lsn(b"$2\r\n42\r\n"), Some(42));
        assert_eq!(parse_lsn(b"$2\r\nx2\r\n"), None);
        assert_eq!(parse_lsn(b"-ERR no\r\n"), None);
        assert_eq!(parse_lsn(b"$5\r\n42\r\n"), None);
    }
}

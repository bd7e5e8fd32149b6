//! The proxy's slow log: commands whose reply took at least `slowlog-log-slower-than`
//! microseconds from dispatch to reply, newest first, at most `slowlog-max-len` of them, each
//! shortened as Redis 7.0 shortens them (`slowlog.c`: 32 arguments, 128 bytes each).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;

use bytes::Bytes;

/// Redis's `SLOWLOG_ENTRY_MAX_ARGC` and `SLOWLOG_ENTRY_MAX_STRING`.
const MAX_ARGS: usize = 32;
const MAX_STRING: usize = 128;

/// One logged command.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SlowEntry {
    pub id: u64,
    /// Unix time in seconds when it was logged.
    pub time: u64,
    pub duration_usec: u64,
    pub args: Vec<Bytes>,
    pub client_addr: String,
    pub client_name: String,
}

/// The slow log and its two settings, which `CONFIG SET` changes (plain atomics, read on every
/// command without a lock).
pub(crate) struct SlowLog {
    /// `slowlog-log-slower-than` in microseconds; negative disables the log.
    pub log_slower_than: AtomicI64,
    /// `slowlog-max-len`.
    pub max_len: AtomicU64,
    next_id: AtomicU64,
    entries: Mutex<VecDeque<SlowEntry>>,
}

impl Default for SlowLog {
    fn default() -> Self {
        SlowLog {
            log_slower_than: AtomicI64::new(10_000),
            max_len: AtomicU64::new(128),
            next_id: AtomicU64::new(0),
            entries: Mutex::new(VecDeque::new()),
        }
    }
}

impl SlowLog {
    /// True if a command that took `duration_usec` goes into the log (checked before the
    /// arguments are copied).
    pub(crate) fn wants(&self, duration_usec: u64) -> bool {
        let threshold = self.log_slower_than.load(Ordering::Relaxed);
        threshold >= 0 && duration_usec >= threshold as u64 && self.max_len.load(Ordering::Relaxed) > 0
    }

    pub(crate) fn push(&self, duration_usec: u64, args: &[Bytes], client_addr: String, client_name: String) {
        let entry = SlowEntry {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            time: unix_seconds(),
            duration_usec,
            args: shorten(args),
            client_addr,
            client_name,
        };
        let max_len = usize::try_from(self.max_len.load(Ordering::Relaxed)).unwrap_or(usize::MAX);
        let mut entries = self.entries.lock().unwrap();
        entries.push_front(entry);
        entries.truncate(max_len);
    }

    /// The newest `count` entries (all of them for `None`).
    pub(crate) fn newest(&self, count: Option<usize>) -> Vec<SlowEntry> {
        let entries = self.entries.lock().unwrap();
        entries.iter().take(count.unwrap_or(usize::MAX)).cloned().collect()
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.lock().unwrap().len()
    }

    pub(crate) fn reset(&self) {
        self.entries.lock().unwrap().clear();
    }
}

fn shorten(args: &[Bytes]) -> Vec<Bytes> {
    let kept = if args.len() > MAX_ARGS { MAX_ARGS - 1 } else { args.len() };
    let mut out: Vec<Bytes> = args[..kept]
        .iter()
        .map(|arg| {
            if arg.len() > MAX_STRING {
                let mut text = arg[..MAX_STRING].to_vec();
                text.extend_from_slice(format!("... ({} more bytes)", arg.len() - MAX_STRING).as_bytes());
                Bytes::from(text)
            } else {
                arg.clone()
            }
        })
        .collect();
    if args.len() > MAX_ARGS {
        out.push(Bytes::from(format!("... ({} more arguments)", args.len() - kept)));
    }
    out
}

pub(crate) fn unix_seconds() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_shortened_bounded_and_newest_first() {
        let log = SlowLog::default();
        assert!(log.wants(10_000) && !log.wants(9_999));
        log.max_len.store(2, Ordering::Relaxed);
        let many: Vec<Bytes> = (0..40).map(|i| Bytes::from(format!("a{i}"))).collect();
        log.push(5, &many, "1.2.3.4:5".into(), "".into());
        log.push(6, &[Bytes::from(vec![b'x'; 200])], "1.2.3.4:5".into(), "n".into());
        log.push(7, &[Bytes::from_static(b"ping")], "1.2.3.4:5".into(), "".into());
        let entries = log.newest(None);
        assert_eq!(entries.iter().map(|e| e.id).collect::<Vec<_>>(), vec![2, 1]);
        assert_eq!(&entries[1].args[0][128..], b"... (72 more bytes)");
        log.max_len.store(5, Ordering::Relaxed);
        log.reset();
        log.push(5, &many, "a".into(), "".into());
        let entry = &log.newest(Some(1))[0];
        assert_eq!(entry.args.len(), 32);
        assert_eq!(&entry.args[31][..], b"... (9 more arguments)");
        log.log_slower_than.store(-1, Ordering::Relaxed);
        assert!(!log.wants(u64::MAX));
    }
}

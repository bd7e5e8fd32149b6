//! The `ACL LOG` ring, as Redis 7.0 keeps it: newest first, at most `acllog-max-len` entries,
//! and a new event that matches one of the 10 newest entries (same reason, context, object and
//! user, within 60 s of it) bumps that entry's count and moves it to the front instead.
//! Times are passed in (milliseconds), so the ring does no I/O and tests need no clock.

use std::collections::VecDeque;

use crate::check::{Denial, DenialReason};
use crate::value::Value;

/// Redis 7.0's default `acllog-max-len`.
pub const DEFAULT_MAX_LEN: usize = 128;
const GROUPING_WINDOW_MS: u64 = 60_000;
const GROUPING_SCAN: usize = 10;

/// What was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogReason {
    Command,
    Key,
    Channel,
    Auth,
}

impl LogReason {
    pub fn name(self) -> &'static str {
        match self {
            LogReason::Command => "command",
            LogReason::Key => "key",
            LogReason::Channel => "channel",
            LogReason::Auth => "auth",
        }
    }
}

impl From<DenialReason> for LogReason {
    fn from(reason: DenialReason) -> LogReason {
        match reason {
            DenialReason::Command => LogReason::Command,
            DenialReason::Key => LogReason::Key,
            DenialReason::Channel => LogReason::Channel,
        }
    }
}

/// Where the refused command was run from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogContext {
    Toplevel,
    Multi,
    Lua,
    Module,
}

impl LogContext {
    pub fn name(self) -> &'static str {
        match self {
            LogContext::Toplevel => "toplevel",
            LogContext::Multi => "multi",
            LogContext::Lua => "lua",
            LogContext::Module => "module",
        }
    }
}

/// One event to log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEvent {
    pub reason: LogReason,
    pub context: LogContext,
    /// The command's full name, the key or channel, or for `auth` the command (`AUTH`/`HELLO`).
    pub object: Vec<u8>,
    pub username: Vec<u8>,
    /// The client's `CLIENT LIST` line.
    pub client_info: Vec<u8>,
}

impl LogEvent {
    /// The event of a denied request.
    pub fn denied(denial: &Denial, context: LogContext, username: &[u8], client_info: &[u8]) -> LogEvent {
        LogEvent {
            reason: denial.reason.into(),
            context,
            object: denial.object.clone(),
            username: username.to_vec(),
            client_info: client_info.to_vec(),
        }
    }
}

/// An entry of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    pub count: u64,
    pub event: LogEvent,
    /// When it last happened, in milliseconds.
    pub last_ms: u64,
}

impl LogEntry {
    fn groups_with(&self, event: &LogEvent, now_ms: u64) -> bool {
        self.event.reason == event.reason
            && self.event.context == event.context
            && self.last_ms.abs_diff(now_ms) <= GROUPING_WINDOW_MS
            && self.event.object == event.object
            && self.event.username == event.username
    }

    /// The entry as `ACL LOG` shows it (Redis 7.0's 7 fields).
    pub fn reply(&self, now_ms: u64) -> Value {
        let field = |name: &str| Value::bulk(name);
        Value::Map(vec![
            (field("count"), Value::Integer(self.count as i64)),
            (field("reason"), Value::bulk(self.event.reason.name())),
            (field("context"), Value::bulk(self.event.context.name())),
            (field("object"), Value::Bulk(self.event.object.clone())),
            (field("username"), Value::Bulk(self.event.username.clone())),
            (field("age-seconds"), Value::Double(now_ms.saturating_sub(self.last_ms) as f64 / 1000.0)),
            (field("client-info"), Value::Bulk(self.event.client_info.clone())),
        ])
    }
}

/// The ring of entries, newest first.
#[derive(Debug, Clone)]
pub struct AclLog {
    entries: VecDeque<LogEntry>,
    max_len: usize,
}

impl Default for AclLog {
    fn default() -> AclLog {
        AclLog::new(DEFAULT_MAX_LEN)
    }
}

impl AclLog {
    pub fn new(max_len: usize) -> AclLog {
        AclLog { entries: VecDeque::new(), max_len }
    }

    /// Changes `acllog-max-len`; as in Redis, the log is trimmed at the next new entry.
    pub fn set_max_len(&mut self, max_len: usize) {
        self.max_len = max_len;
    }

    pub fn add(&mut self, event: LogEvent, now_ms: u64) {
        let scan = self.entries.len().min(GROUPING_SCAN);
        if let Some(at) = (0..scan).find(|i| self.entries[*i].groups_with(&event, now_ms)) {
            let mut entry = self.entries.remove(at).expect("index is in range");
            entry.count += 1;
            entry.last_ms = now_ms;
            entry.event.client_info = event.client_info;
            self.entries.push_front(entry);
            return;
        }
        self.entries.push_front(LogEntry { count: 1, event, last_ms: now_ms });
        self.entries.truncate(self.max_len);
    }

    /// `ACL LOG RESET`.
    pub fn reset(&mut self) {
        self.entries.clear();
    }

    pub fn entries(&self) -> impl Iterator<Item = &LogEntry> {
        self.entries.iter()
    }

    /// `ACL LOG [count]` (10 when no count; a negative count shows none).
    pub fn reply(&self, count: Option<i64>, now_ms: u64) -> Value {
        let count = usize::try_from(count.unwrap_or(10).max(0)).unwrap_or(usize::MAX);
        Value::Array(self.entries.iter().take(count).map(|e| e.reply(now_ms)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(object: &str, user: &str) -> LogEvent {
        LogEvent {
            reason: LogReason::Key,
            context: LogContext::Toplevel,
            object: object.into(),
            username: user.into(),
            client_info: b"id=1".to_vec(),
        }
    }

    #[test]
    fn repeats_within_a_minute_are_grouped_and_moved_to_the_front() {
        let mut log = AclLog::default();
        log.add(event("k1", "u"), 1_000);
        log.add(event("k2", "u"), 2_000);
        log.add(event("k1", "u"), 61_000);
        let entries: Vec<_> = log.entries().map(|e| (e.event.object.clone(), e.count)).collect();
        assert_eq!(entries, [(b"k1".to_vec(), 2), (b"k2".to_vec(), 1)]);
        log.add(event("k1", "u"), 121_001);
        assert_eq!(log.entries().count(), 3, "more than 60 s after the last one: a new entry");
        log.add(event("k1", "other"), 121_002);
        assert_eq!(log.entries().count(), 4);
    }

    #[test]
    fn only_the_ten_newest_are_searched_and_the_ring_is_bounded() {
        let mut log = AclLog::new(12);
        log.add(event("old", "u"), 0);
        for i in 0..10 {
            log.add(event(&format!("k{i}"), "u"), 1);
        }
        log.add(event("old", "u"), 2);
        assert_eq!(log.entries().filter(|e| e.event.object == b"old").count(), 2);
        for i in 0..20 {
            log.add(event(&format!("n{i}"), "u"), 3);
        }
        assert_eq!(log.entries().count(), 12);
        assert_eq!(log.entries().next().unwrap().event.object, b"n19");
        let reply = log.reply(Some(2), 1_003);
        assert_eq!(reply.as_list().unwrap().len(), 2);
        assert_eq!(reply.as_list().unwrap()[0].field("age-seconds"), Some(&Value::Double(1.0)));
        log.reset();
        assert_eq!(log.reply(None, 0), Value::Array(vec![]));
    }
}

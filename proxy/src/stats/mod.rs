//! The proxy's own statistics, counted where replies are handed to the client and read by
//! `INFO`, `SLOWLOG`, `LATENCY` and reset by `CONFIG RESETSTAT`: per-command calls, time,
//! rejections and failures with a latency histogram (`commandstats`, `latencystats`), errors by
//! their prefix (`errorstats`), connection and traffic counters, the per-second rates Redis
//! samples every 100 ms, the slow log and the latency monitor. Only atomics on the hot path;
//! the locks are taken for an error reply, a slow command or a reader.

mod histogram;
mod latency;
mod memory;
mod slowlog;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;

pub(crate) use histogram::LatencyHistogram;
pub(crate) use latency::{graph as latency_graph, EventSeries, LatencyMonitor, Sample as LatencySample};
pub(crate) use memory::ShardMemory;
pub(crate) use slowlog::{unix_seconds, SlowLog};

/// Distinct error prefixes `errorstats` keeps; later new ones are not added (Redis 7.2's
/// guard against a script making up error codes without end).
const MAX_ERROR_KINDS: usize = 128;
/// Redis's `STATS_METRIC_SAMPLES`: the per-second rates average this many 100 ms samples.
const RATE_SAMPLES: usize = 16;

/// One command's counters (`cmdstat_<name>` and `latency_percentiles_usec_<name>`).
#[derive(Default)]
pub(crate) struct CommandStats {
    pub calls: AtomicU64,
    pub usec: AtomicU64,
    pub rejected_calls: AtomicU64,
    pub failed_calls: AtomicU64,
    /// Made on the first call, as Redis makes a command's histogram.
    histogram: OnceLock<LatencyHistogram>,
}

impl CommandStats {
    pub(crate) fn histogram(&self) -> Option<&LatencyHistogram> {
        self.histogram.get().filter(|h| h.total() > 0)
    }

    pub(crate) fn reset(&self) {
        for counter in [&self.calls, &self.usec, &self.rejected_calls, &self.failed_calls] {
            counter.store(0, Ordering::Relaxed);
        }
        if let Some(histogram) = self.histogram.get() {
            histogram.reset();
        }
    }
}

/// What the writer knows about one reply it hands to the client.
pub(crate) struct Reply<'a> {
    /// The command's counters and flags; None for an unknown command or a protocol error.
    pub command: Option<(&'a CommandStats, CommandKind)>,
    /// Refused before it ran (arity, authentication, ACL, refused by memlog): Redis's
    /// `rejected_calls`, not a call.
    pub rejected: bool,
    pub elapsed: Duration,
    pub bytes: &'a [u8],
}

/// A command's flags that decide where its time is recorded.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CommandKind {
    /// Redis's `fast` flag: the latency monitor's `fast-command` event rather than `command`.
    pub fast: bool,
    /// Blocking commands wait for data, not for work: their time is not a latency.
    pub blocking: bool,
    /// Redis's `skip_slowlog` flag (EXEC, AUTH, …).
    pub skip_slowlog: bool,
}

/// The rates of `instantaneous_ops_per_sec`, `instantaneous_input_kbps`, … .
#[derive(Default)]
struct Rates {
    last_ms: u64,
    last: [u64; 3],
    samples: [[u64; RATE_SAMPLES]; 3],
    next: usize,
}

#[derive(Default)]
pub(crate) struct ServerStats {
    pub connections: AtomicU64,
    pub commands: AtomicU64,
    pub rejected_connections: AtomicU64,
    pub net_input_bytes: AtomicU64,
    pub net_output_bytes: AtomicU64,
    /// Reads from and writes to client sockets (`total_reads_processed`, `…writes…`).
    pub reads_processed: AtomicU64,
    pub writes_processed: AtomicU64,
    pub error_replies: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
    rates: Mutex<Rates>,
    pub slowlog: SlowLog,
    pub latency: LatencyMonitor,
}

/// The per-second rates, as INFO reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct InstantRates {
    pub ops_per_sec: u64,
    pub input_kbps: f64,
    pub output_kbps: f64,
}

impl ServerStats {
    /// Counts one reply handed to the client. `slow_entry` gives the command's arguments and
    /// client (address, name), asked for only if the command goes into the slow log.
    pub(crate) fn count_reply(&self, reply: Reply<'_>, slow_entry: impl FnOnce() -> (Vec<Bytes>, String, String)) {
        let is_error = matches!(reply.bytes.first(), Some(b'-') | Some(b'!'));
        if is_error {
            self.count_error(reply.bytes);
        }
        let Some((stats, kind)) = reply.command else { return };
        if reply.rejected {
            stats.rejected_calls.fetch_add(1, Ordering::Relaxed);
            return;
        }
        stats.calls.fetch_add(1, Ordering::Relaxed);
        if is_error {
            stats.failed_calls.fetch_add(1, Ordering::Relaxed);
        }
        if kind.blocking {
            return;
        }
        let nanos = u64::try_from(reply.elapsed.as_nanos()).unwrap_or(u64::MAX);
        let usec = nanos / 1000;
        stats.usec.fetch_add(usec, Ordering::Relaxed);
        stats.histogram.get_or_init(LatencyHistogram::default).record(nanos);
        self.latency.add_if_needed(if kind.fast { "fast-command" } else { "command" }, usec / 1000);
        if !kind.skip_slowlog && self.slowlog.wants(usec) {
            let (args, addr, name) = slow_entry();
            self.slowlog.push(usec, &args, addr, name);
        }
    }

    /// One read of `bytes` from a client socket.
    pub(crate) fn count_read(&self, bytes: usize) {
        self.reads_processed.fetch_add(1, Ordering::Relaxed);
        self.net_input_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// One write of `bytes` to a client socket.
    pub(crate) fn count_write(&self, bytes: usize) {
        self.writes_processed.fetch_add(1, Ordering::Relaxed);
        self.net_output_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    fn count_error(&self, reply: &[u8]) {
        self.error_replies.fetch_add(1, Ordering::Relaxed);
        let prefix = error_prefix(reply);
        let mut errors = self.errors.lock().unwrap();
        if let Some(count) = errors.get_mut(prefix.as_str()) {
            *count += 1;
        } else if errors.len() < MAX_ERROR_KINDS {
            errors.insert(prefix, 1);
        }
    }

    /// Error prefixes and their counts, in byte order (as Redis's radix tree lists them).
    pub(crate) fn errors(&self) -> Vec<(String, u64)> {
        self.errors.lock().unwrap().iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    /// Takes one 100 ms sample of the rates (called by a timer, as Redis's `serverCron`).
    pub(crate) fn sample_rates(&self, now_ms: u64) {
        let readings = [
            self.commands.load(Ordering::Relaxed),
            self.net_input_bytes.load(Ordering::Relaxed),
            self.net_output_bytes.load(Ordering::Relaxed),
        ];
        let mut rates = self.rates.lock().unwrap();
        let elapsed = now_ms.saturating_sub(rates.last_ms);
        if rates.last_ms != 0 && elapsed > 0 {
            let next = rates.next;
            for (i, reading) in readings.iter().enumerate() {
                rates.samples[i][next] = reading.saturating_sub(rates.last[i]) * 1000 / elapsed;
            }
            rates.next = (next + 1) % RATE_SAMPLES;
        }
        rates.last_ms = now_ms;
        rates.last = readings;
    }

    pub(crate) fn rates(&self) -> InstantRates {
        let rates = self.rates.lock().unwrap();
        let average = |i: usize| rates.samples[i].iter().sum::<u64>() / RATE_SAMPLES as u64;
        InstantRates {
            ops_per_sec: average(0),
            input_kbps: average(1) as f64 / 1024.0,
            output_kbps: average(2) as f64 / 1024.0,
        }
    }

    /// `CONFIG RESETSTAT`: the counters Redis's `resetServerStats` and `resetErrorTableStats`
    /// clear (the slow log and the latency monitor are not among them).
    pub(crate) fn reset(&self) {
        for counter in [
            &self.connections,
            &self.commands,
            &self.rejected_connections,
            &self.net_input_bytes,
            &self.net_output_bytes,
            &self.reads_processed,
            &self.writes_processed,
            &self.error_replies,
        ] {
            counter.store(0, Ordering::Relaxed);
        }
        self.errors.lock().unwrap().clear();
        *self.rates.lock().unwrap() = Rates::default();
    }
}

/// The error code of an error reply: its first word (`ERR`, `WRONGTYPE`, `NOAUTH`).
fn error_prefix(reply: &[u8]) -> String {
    let text = match reply.first() {
        // A RESP3 blob error: `!<len>\r\n<code> <message>\r\n`.
        Some(b'!') => reply.iter().position(|&b| b == b'\n').map_or(&reply[..0], |at| &reply[at + 1..]),
        _ => &reply[1.min(reply.len())..],
    };
    let end = text.iter().position(|&b| b == b' ' || b == b'\r' || b == b'\n').unwrap_or(text.len());
    String::from_utf8_lossy(&text[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply<'a>(stats: &'a CommandStats, rejected: bool, bytes: &'a [u8], usec: u64) -> Reply<'a> {
        Reply { command: Some((stats, CommandKind::default())), rejected, elapsed: Duration::from_micros(usec), bytes }
    }

    #[test]
    fn calls_failures_rejections_and_errors_are_counted() {
        let server = ServerStats::default();
        let get = CommandStats::default();
        let nothing = || -> (Vec<Bytes>, String, String) { unreachable!("not slow") };
        server.count_reply(reply(&get, false, b"$1\r\nv\r\n", 5), nothing);
        server.count_reply(reply(&get, false, b"-WRONGTYPE Operation against a key\r\n", 7), nothing);
        server.count_reply(reply(&get, true, b"-NOPERM no\r\n", 1), nothing);
        server.count_reply(
            Reply { command: None, rejected: false, elapsed: Duration::ZERO, bytes: b"-ERR unknown\r\n" },
            nothing,
        );
        assert_eq!(get.calls.load(Ordering::Relaxed), 2);
        assert_eq!(get.failed_calls.load(Ordering::Relaxed), 1);
        assert_eq!(get.rejected_calls.load(Ordering::Relaxed), 1);
        assert_eq!(get.usec.load(Ordering::Relaxed), 12);
        assert_eq!(get.histogram().unwrap().total(), 2);
        assert_eq!(server.error_replies.load(Ordering::Relaxed), 3);
        assert_eq!(
            server.errors(),
            vec![("ERR".to_string(), 1), ("NOPERM".to_string(), 1), ("WRONGTYPE".to_string(), 1)]
        );
        assert_eq!(error_prefix(b"!21\r\nSYNTAX invalid syntax\r\n"), "SYNTAX");
        server.reset();
        get.reset();
        assert!(server.errors().is_empty() && get.histogram().is_none());
    }

    #[test]
    fn error_kinds_are_bounded() {
        let server = ServerStats::default();
        for i in 0..1000 {
            server.count_error(format!("-E{i} made up\r\n").as_bytes());
        }
        assert_eq!(server.errors().len(), MAX_ERROR_KINDS);
        assert_eq!(server.error_replies.load(Ordering::Relaxed), 1000);
    }

    #[test]
    fn slow_commands_go_to_the_slow_log() {
        let server = ServerStats::default();
        let cmd = CommandStats::default();
        server.slowlog.log_slower_than.store(100, Ordering::Relaxed);
        let args = vec![Bytes::from_static(b"DEBUG"), Bytes::from_static(b"SLEEP")];
        server.count_reply(reply(&cmd, false, b"+OK\r\n", 150), || (args, "127.0.0.1:1".into(), "me".into()));
        server.count_reply(reply(&cmd, false, b"+OK\r\n", 50), || unreachable!());
        let entries = server.slowlog.newest(None);
        assert_eq!(entries.len(), 1);
        assert_eq!((entries[0].duration_usec, entries[0].client_name.as_str()), (150, "me"));
    }

    #[test]
    fn rates_average_the_samples() {
        let server = ServerStats::default();
        server.sample_rates(1000);
        server.commands.store(1600, Ordering::Relaxed);
        server.sample_rates(1100);
        // One sample of 16000/s among 16.
        assert_eq!(server.rates().ops_per_sec, 1000);
    }
}

//! The proxy's latency monitor (`LATENCY LATEST/HISTORY/RESET/DOCTOR`), as Redis 7.0's
//! `latency.c` keeps it: per event, the last 160 samples of at most one per second (the worst
//! one of that second) and the all-time maximum, recorded only when
//! `latency-monitor-threshold` (milliseconds, 0 = off) is reached. The proxy's events are
//! `command` and `fast-command`, its own time from dispatch to reply.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use super::slowlog::unix_seconds;

/// Redis's `LATENCY_TS_LEN`.
const SAMPLES: usize = 160;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Sample {
    /// Unix time in seconds.
    pub time: u64,
    pub latency_ms: u64,
}

/// One event's samples.
#[derive(Debug, Clone, Default)]
pub(crate) struct EventSeries {
    pub samples: VecDeque<Sample>,
    pub max_ms: u64,
}

#[derive(Default)]
pub(crate) struct LatencyMonitor {
    /// `latency-monitor-threshold` in milliseconds; 0 turns the monitor off.
    pub threshold_ms: AtomicU64,
    events: Mutex<BTreeMap<&'static str, EventSeries>>,
}

impl LatencyMonitor {
    /// Records `latency_ms` for `event` if the threshold is set and reached.
    pub(crate) fn add_if_needed(&self, event: &'static str, latency_ms: u64) {
        let threshold = self.threshold_ms.load(Ordering::Relaxed);
        if threshold == 0 || latency_ms < threshold {
            return;
        }
        let time = unix_seconds();
        let mut events = self.events.lock().unwrap();
        let series = events.entry(event).or_default();
        series.max_ms = series.max_ms.max(latency_ms);
        match series.samples.back_mut() {
            Some(last) if last.time == time => last.latency_ms = last.latency_ms.max(latency_ms),
            _ => {
                series.samples.push_back(Sample { time, latency_ms });
                if series.samples.len() > SAMPLES {
                    series.samples.pop_front();
                }
            }
        }
    }

    /// Every event with samples, by name.
    pub(crate) fn events(&self) -> BTreeMap<&'static str, EventSeries> {
        self.events.lock().unwrap().clone()
    }

    /// Forgets the named events (all for an empty list); how many there were.
    pub(crate) fn reset(&self, names: &[String]) -> usize {
        let mut events = self.events.lock().unwrap();
        if names.is_empty() {
            let count = events.len();
            events.clear();
            return count;
        }
        names.iter().filter(|name| events.remove(name.as_str()).is_some()).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_only_over_the_threshold_one_per_second() {
        let monitor = LatencyMonitor::default();
        monitor.add_if_needed("command", 500);
        assert!(monitor.events().is_empty(), "threshold 0 is off");
        monitor.threshold_ms.store(10, Ordering::Relaxed);
        monitor.add_if_needed("command", 9);
        monitor.add_if_needed("command", 12);
        monitor.add_if_needed("command", 30);
        monitor.add_if_needed("fast-command", 10);
        let events = monitor.events();
        let command = &events["command"];
        assert!(command.samples.len() <= 2 && command.max_ms == 30);
        assert_eq!(command.samples.back().unwrap().latency_ms, 30);
        assert_eq!(monitor.reset(&["nope".into(), "command".into()]), 1);
        assert_eq!(monitor.reset(&[]), 1);
    }
}

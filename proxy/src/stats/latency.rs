//! The proxy's latency monitor (`LATENCY LATEST/HISTORY/RESET/DOCTOR/GRAPH`), as Redis 7.0's
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

/// Redis's `LATENCY_GRAPH_COLS`: samples per block of the graph.
const GRAPH_COLUMNS: usize = 80;
/// Rows of the sparkline itself (Redis renders 4, filled).
const GRAPH_ROWS: usize = 4;
/// The characters of one row, lowest level first, and what fills a column below its top.
const GRAPH_LEVELS: &[u8; 3] = b"_o#";
const GRAPH_FILL: u8 = b'|';

/// `LATENCY GRAPH <event>`'s text, laid out as Redis 7.0 lays it out (`latency.c`,
/// `latencyCommandGenSparkeline`; `sparkline.c`): a header with the high, low and all-time
/// high, a rule, then blocks of up to 80 samples, oldest first, each a 4-row filled sparkline
/// scaled between the lowest and highest sample, with each sample's age (`12s`, `3m`, `2h`,
/// `1d`) written downwards under it. `now` is the Unix time in seconds.
pub(crate) fn graph(event: &str, series: &EventSeries, now: u64) -> String {
    let values: Vec<u64> = series.samples.iter().map(|s| s.latency_ms).collect();
    let (low, high) = (values.iter().copied().min().unwrap_or(0), values.iter().copied().max().unwrap_or(0));
    let mut out = format!("{event} - high {high} ms, low {low} ms (all time high {} ms)\n", series.max_ms);
    out.push_str(&"-".repeat(GRAPH_COLUMNS));
    out.push('\n');
    let labels: Vec<String> = series.samples.iter().map(|s| age_label(now.saturating_sub(s.time))).collect();
    let levels = GRAPH_ROWS * GRAPH_LEVELS.len();
    // Redis scales as `(int)(relval * steps) / relmax`, truncating twice; the same in integers
    // (latencies are whole milliseconds).
    let span = (high - low).max(1);
    let scale = u64::try_from(levels).unwrap_or(u64::MAX);
    let steps: Vec<usize> = values
        .iter()
        .map(|v| usize::try_from((v - low).saturating_mul(scale) / span).unwrap_or(levels).min(levels - 1))
        .collect();
    for (block, start) in (0..values.len()).step_by(GRAPH_COLUMNS).enumerate() {
        if block > 0 {
            out.push('\n');
        }
        let end = (start + GRAPH_COLUMNS).min(values.len());
        for row in 0..GRAPH_ROWS {
            // The level a column must reach to show in this row, counted from the bottom row.
            let floor = (GRAPH_ROWS - row - 1) * GRAPH_LEVELS.len();
            let line: Vec<u8> = steps[start..end]
                .iter()
                .map(|&step| match step.checked_sub(floor) {
                    Some(level) if level < GRAPH_LEVELS.len() => GRAPH_LEVELS[level],
                    Some(_) => GRAPH_FILL,
                    None => b' ',
                })
                .collect();
            push_line(&mut out, &line);
        }
        // One blank line, then the labels, one character per line.
        push_line(&mut out, &vec![b' '; end - start]);
        for depth in 0.. {
            let line: Vec<u8> =
                labels[start..end].iter().map(|label| label.as_bytes().get(depth).copied().unwrap_or(b' ')).collect();
            if labels[start..end].iter().all(|label| label.len() <= depth) {
                break;
            }
            push_line(&mut out, &line);
        }
    }
    out
}

fn push_line(out: &mut String, line: &[u8]) {
    out.push_str(&String::from_utf8_lossy(line));
    out.push('\n');
}

/// How long ago, as Redis labels a graph's samples.
fn age_label(seconds: u64) -> String {
    match seconds {
        0..60 => format!("{seconds}s"),
        60..3600 => format!("{}m", seconds / 60),
        3600..86400 => format!("{}h", seconds / 3600),
        _ => format!("{}d", seconds / 86400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_graph_is_laid_out_as_redis_lays_it_out() {
        let now = 1_000_000;
        let samples = [(now - 130, 10), (now - 65, 40), (now - 5, 25), (now, 100)];
        let series = EventSeries {
            samples: samples.iter().map(|&(time, latency_ms)| Sample { time, latency_ms }).collect(),
            max_ms: 250,
        };
        // Levels 0..12 between 10 and 100: 10 -> 0, 40 -> 360/90 = 4, 25 -> 180/90 = 2,
        // 100 -> 11 (12 clamped). Rows from the top cover levels 9-11, 6-8, 3-5, 0-2.
        let graph = graph("command", &series, now);
        let lines: Vec<&str> = graph.lines().collect();
        assert_eq!(lines[0], "command - high 100 ms, low 10 ms (all time high 250 ms)");
        assert_eq!(lines[1], "-".repeat(80));
        assert_eq!(&lines[2..], ["   #", "   |", " o |", "_|#|", "    ", "2150", "mmss"]);
    }

    #[test]
    fn labels_say_how_long_ago() {
        assert_eq!(
            [0, 59, 60, 3599, 3600, 86399, 86400].map(age_label),
            ["0s", "59s", "1m", "59m", "1h", "23h", "1d"].map(String::from)
        );
    }

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

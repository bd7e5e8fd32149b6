//! A latency histogram cheap enough to record every command into: fixed log-linear buckets of
//! atomics (no lock, no allocation after creation), within about 3% of the value recorded, like
//! the HDR histogram with two significant digits that Redis 7.0 keeps per command
//! (`latency-tracking`).

use std::sync::atomic::{AtomicU64, Ordering};

/// Values below this are their own bucket.
const EXACT: usize = 64;
/// Sub-buckets per power of two above `EXACT` (5 bits after the leading one).
const SUB_BITS: u32 = 5;
const SUBS: usize = 1 << SUB_BITS;
/// The largest power of two kept apart; larger values fall in its buckets (2^40 ns: 18 minutes).
const TOP_EXPONENT: u32 = 40;
const BUCKETS: usize = EXACT + (TOP_EXPONENT as usize - 6) * SUBS;

/// Counts of recorded nanosecond values.
pub(crate) struct LatencyHistogram {
    buckets: Box<[AtomicU64]>,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram { buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect() }
    }
}

fn bucket_of(value: u64) -> usize {
    let (exact, subs) = (EXACT as u64, SUBS as u64);
    let bucket = if value < exact {
        value
    } else {
        let exponent = (63 - value.leading_zeros()).min(TOP_EXPONENT - 1);
        let value = value.min((1u64 << TOP_EXPONENT) - 1);
        let sub = (value >> (exponent - SUB_BITS)) & (subs - 1);
        exact + u64::from(exponent - 6) * subs + sub
    };
    // Below BUCKETS, as the exponent is capped: it fits.
    usize::try_from(bucket).unwrap_or(BUCKETS - 1)
}

/// The largest value that falls in `bucket` (HDR's "highest equivalent value").
fn highest_in(bucket: usize) -> u64 {
    if bucket < EXACT {
        return bucket as u64;
    }
    // Below TOP_EXPONENT for every bucket there is.
    let exponent = u32::try_from((bucket - EXACT) / SUBS + 6).unwrap_or(TOP_EXPONENT - 1);
    let sub = ((bucket - EXACT) % SUBS) as u64;
    let width = 1u64 << (exponent - SUB_BITS);
    (1u64 << exponent) + sub * width + width - 1
}

impl LatencyHistogram {
    pub(crate) fn record(&self, nanos: u64) {
        self.buckets[bucket_of(nanos)].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn total(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    /// The value below which `percentile` % of the recorded values fall (HDR's
    /// `hdr_value_at_percentile`: the highest value of the bucket that reaches that count).
    pub(crate) fn value_at_percentile(&self, percentile: f64) -> u64 {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        let wanted = crate::units::whole((((percentile / 100.0) * total as f64) + 0.5).max(1.0));
        let mut seen = 0;
        for (bucket, count) in counts.iter().enumerate() {
            seen += count;
            if seen >= wanted {
                return highest_in(bucket);
            }
        }
        0
    }

    /// Cumulative counts at 1024 ns, 2048 ns, … (`LATENCY HISTOGRAM`'s steps, HDR's log
    /// iterator from 1024 with base 2), as (microseconds, count) where the count grew.
    pub(crate) fn cumulative_usec(&self) -> Vec<(u64, u64)> {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        let mut steps = Vec::new();
        let (mut bucket, mut seen, mut previous) = (0, 0, 0);
        let mut limit = 1024u64;
        while seen < total {
            while bucket < counts.len() && highest_in(bucket) < limit {
                seen += counts[bucket];
                bucket += 1;
            }
            if seen > previous {
                steps.push((limit / 1000, seen));
                previous = seen;
            }
            limit *= 2;
        }
        steps
    }

    pub(crate) fn reset(&self) {
        for bucket in self.buckets.iter() {
            bucket.store(0, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_hold_values_within_three_percent() {
        for value in [0u64, 1, 63, 64, 65, 100, 1000, 14_015, 999_999, 123_456_789, 1 << 39] {
            let high = highest_in(bucket_of(value));
            assert!(high >= value, "{value} -> {high}");
            assert!((high - value) as f64 <= value as f64 * 0.032, "{value} -> {high}");
        }
        for bucket in 1..BUCKETS {
            assert!(highest_in(bucket) > highest_in(bucket - 1), "bucket {bucket}");
            assert_eq!(bucket_of(highest_in(bucket)), bucket);
        }
    }

    #[test]
    fn percentiles_and_cumulative_steps() {
        let h = LatencyHistogram::default();
        for us in 1..=100u64 {
            h.record(us * 1000);
        }
        assert_eq!(h.total(), 100);
        let p50 = h.value_at_percentile(50.0);
        assert!((49_000..=51_700).contains(&p50), "{p50}");
        let p99 = h.value_at_percentile(99.0);
        assert!((98_000..=102_000).contains(&p99), "{p99}");
        let steps = h.cumulative_usec();
        assert_eq!(steps.last().unwrap().1, 100);
        assert!(steps.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 < w[1].1), "{steps:?}");
        h.reset();
        assert_eq!(h.total(), 0);
        assert!(h.cumulative_usec().is_empty());
    }
}

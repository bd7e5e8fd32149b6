//! The units the proxy reports in — durations and wall-clock times as whole milliseconds, measured
//! or parsed floats as whole numbers — reached without a narrowing `as` cast that could wrap
//! silently (the crate denies them, lib.rs): each conversion says what it does past the range.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `d` in whole milliseconds, `u64::MAX` past it (584 million years: never in practice).
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Milliseconds since the Unix epoch; 0 for a clock set before it.
pub(crate) fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, millis)
}

/// `value` as a whole number: the fraction dropped, a negative value or NaN as 0, past
/// `u64::MAX` as `u64::MAX`. That is what Rust's float-to-integer `as` does (it saturates, it
/// never wraps); it is named here because the lint cannot tell it from a narrowing integer cast.
#[allow(clippy::cast_possible_truncation)]
pub(crate) fn whole(value: f64) -> u64 {
    value as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_saturate_instead_of_wrapping() {
        assert_eq!(millis(Duration::from_millis(1234)), 1234);
        assert_eq!(millis(Duration::MAX), u64::MAX);
        assert_eq!(whole(2.9), 2);
        assert_eq!(whole(-3.0), 0);
        assert_eq!(whole(f64::NAN), 0);
        assert_eq!(whole(1e30), u64::MAX);
    }
}

//! Durations as the milliseconds Redis and fred take, converted in one place.

use std::time::{Duration, Instant};

/// About a century: the longest span [`after`] adds to an instant.
const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// `from + d` for a deadline or an expiry: `d` beyond a century counts as a century ("never"
/// in practice), where `Instant + Duration` would panic on a span the clock cannot hold
/// (`Duration::MAX` as "for ever"). Should even that not fit, `from` itself: a deadline that
/// is already due errs on the safe side.
pub(crate) fn after(from: Instant, d: Duration) -> Instant {
    from.checked_add(d.min(CENTURY)).unwrap_or(from)
}

/// Whole milliseconds of `d`, saturating at `i64::MAX` (the largest `PX` Redis accepts).
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).map_or(i64::MAX as u64, |m| m.min(i64::MAX as u64))
}

/// Milliseconds for an expiry (`PX`, `PEXPIRE`, a script's TTL argument): at least 1, since
/// Redis refuses a zero expiry and a sub-millisecond one must not become "never"; at most a
/// century, as `after` counts locally, since Redis refuses an expiry that overflows its
/// clock (`Duration::MAX` as "for ever" would be an error there).
pub fn ttl_millis(d: Duration) -> u64 {
    millis(d.min(CENTURY)).max(1)
}

/// [`ttl_millis`] as a script argument: an integer, sent as its digits without a `String`
/// formatted per call.
pub fn ttl_arg(d: Duration) -> fred::types::Value {
    // At most `i64::MAX` (see `millis`): the cast is exact.
    fred::types::Value::Integer(ttl_millis(d) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn millis_saturate_and_ttls_are_at_least_one() {
        assert_eq!(millis(Duration::from_micros(1500)), 1);
        assert_eq!(millis(Duration::MAX), i64::MAX as u64);
        assert_eq!(ttl_millis(Duration::ZERO), 1);
        assert_eq!(ttl_millis(Duration::from_micros(10)), 1);
        assert_eq!(ttl_millis(Duration::from_secs(2)), 2000);
        assert_eq!(ttl_millis(Duration::MAX), millis(CENTURY));
    }

    #[test]
    fn a_span_too_long_for_the_clock_is_a_century() {
        let now = Instant::now();
        assert_eq!(
            after(now, Duration::from_secs(5)),
            now + Duration::from_secs(5)
        );
        assert_eq!(after(now, Duration::MAX), now + CENTURY);
        assert_eq!(after(now, Duration::ZERO), now);
    }
}

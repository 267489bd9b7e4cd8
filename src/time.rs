//! Durations as the milliseconds Redis and fred take, converted in one place.

use std::time::Duration;

/// Whole milliseconds of `d`, saturating at `i64::MAX` (the largest `PX` Redis accepts).
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).map_or(i64::MAX as u64, |m| m.min(i64::MAX as u64))
}

/// Milliseconds for an expiry (`PX`, `PEXPIRE`, a script's TTL argument): at least 1, since
/// Redis refuses a zero expiry and a sub-millisecond one must not become "never".
pub fn ttl_millis(d: Duration) -> u64 {
    millis(d).max(1)
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
    }
}

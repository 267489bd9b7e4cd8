//! The local clock, injectable: every local time read of the breakers and rate limiters goes
//! through a [`Clock`], so a test can give one replica a skewed clock and check that it decides
//! exactly as the others.
//!
//! Decisions never depend on this clock's reading of the time of day: the scripts read Redis
//! `TIME`, and only *durations* measured on the server (a `retry_at` minus the server's `now`
//! in the same reply) are carried over to the local monotonic clock. The wall clock is used
//! for one thing only: stamping transitions the local fallback made (the fleet's transitions
//! carry the server's time).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// A source of local time.
pub trait Clock: Send + Sync + fmt::Debug {
    /// A monotonic reading, for measuring durations on this process.
    fn now(&self) -> Instant;
    /// The time of day, as this host believes it.
    fn wall(&self) -> SystemTime;
}

/// The host's clocks (`Instant::now`, `SystemTime::now`).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
    fn wall(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// The host's clocks shifted by fixed offsets: a host whose time of day is wrong (`wall_ahead`
/// may be negative: behind) and whose monotonic origin differs (`monotonic_ahead`). For tests
/// and drills.
#[derive(Debug, Clone, Copy)]
pub struct SkewedClock {
    /// How far ahead of the true time of day this host's wall clock is (negative: behind).
    pub wall_ahead: SignedDuration,
    /// How far ahead this host's monotonic clock reads.
    pub monotonic_ahead: Duration,
}

/// A duration with a sign, for clock offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignedDuration {
    /// Ahead by this much.
    Ahead(Duration),
    /// Behind by this much.
    Behind(Duration),
}

impl Clock for SkewedClock {
    fn now(&self) -> Instant {
        let now = Instant::now();
        now.checked_add(self.monotonic_ahead).unwrap_or(now)
    }
    fn wall(&self) -> SystemTime {
        let now = SystemTime::now();
        match self.wall_ahead {
            SignedDuration::Ahead(d) => now.checked_add(d),
            SignedDuration::Behind(d) => now.checked_sub(d),
        }
        .unwrap_or(now)
    }
}

/// A shared clock, as the configuration carries it (the system clock unless a test injects
/// another with [`crate::Config::with_clock`]).
#[derive(Clone)]
pub struct SharedClock(pub Arc<dyn Clock>);

impl Default for SharedClock {
    fn default() -> Self {
        SharedClock(Arc::new(SystemClock))
    }
}

impl fmt::Debug for SharedClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::ops::Deref for SharedClock {
    type Target = dyn Clock;
    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}

/// A server time in milliseconds since the Unix epoch, as a `SystemTime`.
pub fn from_unix_ms(ms: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skewed_clock_shifts_both_readings() {
        let c = SkewedClock {
            wall_ahead: SignedDuration::Behind(Duration::from_secs(3600)),
            monotonic_ahead: Duration::from_secs(7200),
        };
        let wall = SystemTime::now();
        let skewed = c.wall();
        let behind = wall.duration_since(skewed).unwrap();
        assert!(behind >= Duration::from_secs(3599) && behind <= Duration::from_secs(3601));
        let mono = Instant::now();
        assert!(c.now().duration_since(mono) >= Duration::from_secs(7199));
        assert_eq!(
            from_unix_ms(1_000),
            SystemTime::UNIX_EPOCH + Duration::from_secs(1)
        );
    }
}

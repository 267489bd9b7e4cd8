//! Deadlines checked or set on hot paths, so cheap, and never early or late: the L1's entry
//! deadlines (checked on every hit) and the deadlines of reads in flight (set on every read,
//! see `read_watch.rs`).
//!
//! Every L1 hit asks whether its entry is past its deadline. A precise monotonic clock read
//! costs 20–45 ns on a virtual machine (reading the TSC is itself slow there), about as much
//! as the rest of the hit. On Linux the kernel also keeps a coarse monotonic clock
//! (`CLOCK_MONOTONIC_COARSE`): the same time base as the precise one, updated once per kernel
//! tick, read from the vDSO in under 10 ns, never ahead of the precise clock and, normally, at
//! most one tick behind it. A check reads the coarse clock first and decides alone when the
//! deadline is more than two ticks away (the margin covers a tick that is itself late); only
//! an entry within two ticks of its deadline pays for a precise read, so an entry is never
//! served past its deadline. A coarse clock coarser than 10 ms (a kernel with a slow tick),
//! or none (other systems), leaves every check to the precise clock.
//!
//! Deadlines are nanoseconds of that monotonic clock, so they compare as plain integers.

use std::sync::OnceLock;
use std::time::Duration;

/// A point in time, in nanoseconds of the monotonic clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Deadline(u64);

impl Deadline {
    /// `ttl` from now (precise), saturating far in the future.
    pub(crate) fn after(ttl: Duration) -> Self {
        let ttl = u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX);
        // Unreadable (never seen on Linux): already passed, so the entry is never served.
        Deadline(precise_nanos().map_or(0, |now| now.saturating_add(ttl)))
    }

    /// At least `ttl` from now, read from the coarse clock where it is usable (the precise
    /// one otherwise): never earlier than [`Deadline::after`], at most two coarse ticks
    /// later, and about a third of the cost to take on a virtual machine.
    pub(crate) fn at_least_after(ttl: Duration) -> Self {
        if let (Some(margin), Some(coarse)) = (coarse_margin(), coarse_nanos()) {
            // The coarse clock is at most one tick behind the precise one (normally): half
            // the margin brings it level, the other half covers a late tick.
            let ttl = u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX);
            return Deadline(coarse.saturating_add(margin).saturating_add(ttl));
        }
        Self::after(ttl)
    }

    /// `d` after this point, saturating far in the future.
    pub(crate) fn plus(self, d: Duration) -> Self {
        Deadline(
            self.0
                .saturating_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
        )
    }

    /// Nanoseconds of the monotonic clock, for keeping a deadline in an atomic.
    pub(crate) fn as_nanos(self) -> u64 {
        self.0
    }

    /// The precise time now, for comparing many deadlines against one reading (a sweep).
    pub(crate) fn now() -> Self {
        // Unreadable: every deadline counts as passed.
        Deadline(precise_nanos().unwrap_or(u64::MAX))
    }

    /// Whether this deadline is past: decided by the coarse clock when it is far enough
    /// away, by the precise clock otherwise.
    pub(crate) fn has_passed(self) -> bool {
        if let (Some(margin), Some(coarse)) = (coarse_margin(), coarse_nanos()) {
            if coarse.saturating_add(margin) < self.0 {
                return false;
            }
        }
        precise_nanos().is_none_or(|now| now >= self.0)
    }
}

/// Twice the coarse clock's resolution, if it has a usable one (at most 10 ms).
fn coarse_margin() -> Option<u64> {
    static MARGIN: OnceLock<Option<u64>> = OnceLock::new();
    *MARGIN.get_or_init(|| {
        let resolution = coarse_resolution()?;
        (resolution > 0 && resolution <= 10_000_000).then_some(2 * resolution)
    })
}

#[cfg(target_os = "linux")]
fn read(clock: libc::clockid_t) -> Option<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the call writes only into it.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    (rc == 0).then(|| nanos(&ts))
}

#[cfg(target_os = "linux")]
fn nanos(ts: &libc::timespec) -> u64 {
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

#[cfg(target_os = "linux")]
fn coarse_resolution() -> Option<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: as in `read`.
    let rc = unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    // Only if the coarse clock can be read too (a kernel without it fails here).
    (rc == 0 && read(libc::CLOCK_MONOTONIC_COARSE).is_some()).then(|| nanos(&ts))
}

/// The precise clock; `None` if it cannot be read (not seen on Linux; the L1 then misses
/// rather than serving entries forever).
#[cfg(target_os = "linux")]
fn precise_nanos() -> Option<u64> {
    read(libc::CLOCK_MONOTONIC)
}

/// The coarse clock; `None` if it cannot be read (the precise clock decides then).
#[cfg(target_os = "linux")]
fn coarse_nanos() -> Option<u64> {
    read(libc::CLOCK_MONOTONIC_COARSE)
}

#[cfg(not(target_os = "linux"))]
fn coarse_resolution() -> Option<u64> {
    None
}

/// Nanoseconds since the first call, from the TSC clock where it is reliable (quanta).
#[cfg(not(target_os = "linux"))]
fn precise_nanos() -> Option<u64> {
    static ORIGIN: OnceLock<quanta::Instant> = OnceLock::new();
    let origin = *ORIGIN.get_or_init(quanta::Instant::now);
    Some(
        u64::try_from(quanta::Instant::now().duration_since(origin).as_nanos()).unwrap_or(u64::MAX),
    )
}

#[cfg(not(target_os = "linux"))]
fn coarse_nanos() -> Option<u64> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deadline_is_never_reported_as_not_passed_once_the_precise_clock_reaches_it() {
        // Deadlines at every distance around the coarse margin, checked as the clock
        // passes them: the first precise reading at or past the deadline must see it passed,
        // the coarse clock lagging behind notwithstanding.
        for ttl_us in [0u64, 50, 900, 3_000, 7_000, 9_000, 12_000] {
            let deadline = Deadline::after(Duration::from_micros(ttl_us));
            let give_up = std::time::Instant::now() + Duration::from_secs(2);
            while precise_nanos().expect("readable") < deadline.0 {
                assert!(std::time::Instant::now() < give_up, "the clock stalled");
                std::hint::spin_loop();
            }
            assert!(deadline.has_passed(), "{ttl_us} µs deadline reported live");
        }
    }

    #[test]
    fn a_coarse_deadline_is_never_earlier_and_at_most_the_margin_later() {
        for ttl in [
            Duration::ZERO,
            Duration::from_micros(300),
            Duration::from_millis(5),
            Duration::from_secs(1),
        ] {
            for _ in 0..10_000 {
                let earliest = Deadline::after(ttl);
                let coarse = Deadline::at_least_after(ttl);
                let latest = Deadline::after(ttl);
                assert!(
                    coarse >= earliest,
                    "{ttl:?}: {coarse:?} before {earliest:?}"
                );
                let margin = coarse_margin().unwrap_or(0);
                assert!(
                    coarse.0 <= latest.0 + margin,
                    "{ttl:?}: {coarse:?} more than {margin} ns after {latest:?}"
                );
            }
        }
    }

    #[test]
    fn a_deadline_ahead_is_not_passed() {
        // Far enough ahead that no stall of a loaded machine reaches them.
        for ttl in [
            Duration::from_secs(60),
            Duration::from_secs(3600),
            Duration::MAX,
        ] {
            assert!(!Deadline::after(ttl).has_passed(), "{ttl:?}");
        }
        assert!(Deadline::after(Duration::MAX) > Deadline::now());
    }

    #[test]
    fn the_coarse_clock_is_never_ahead_of_the_precise_one() {
        if coarse_margin().is_none() {
            // No coarse clock on this system: every check reads the precise clock.
            return;
        }
        for _ in 0..100_000 {
            let coarse = coarse_nanos().expect("readable");
            let precise = precise_nanos().expect("readable");
            assert!(
                coarse <= precise,
                "coarse clock ahead: {coarse} > {precise}"
            );
        }
    }
}

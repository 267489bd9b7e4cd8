//! Lease renewal in batches: what the lease heartbeater runs on every tick.
//!
//! Each tick takes every lease due before the next tick (so no renewal is ever late, only up
//! to a tick early: ticks are not aligned with acquires), groups them by lock resource, and
//! renews each group with one pipeline of `SET … IFEQ` where the server has it, else one
//! batched script call per slot group (`Lock::extend_many`); the calls of one tick go out
//! together, so one tick costs one round trip. A confirmed renewal
//! moves the lease's local deadline forward; a renewal that finds another owner fires the
//! guard's lost signal at once; a failed call changes nothing (the guard's own deadline task
//! fires if no renewal is confirmed in time).

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::lease::{HeldLease, LeaseRegistry, LostReason};
use super::{Lease, Lock};

/// Counts of the renewals; they live with the registry, so they survive the restarts of
/// whatever drives the ticks.
#[derive(Debug, Default)]
pub(crate) struct RenewalCounts {
    ticks: AtomicU64,
    calls: AtomicU64,
    renewed: AtomicU64,
    lost: AtomicU64,
    failed_calls: AtomicU64,
    in_flight: AtomicBool,
    /// Set by a fault drill: the next tick's renewals panic.
    panic_next: AtomicBool,
}

/// A copy of the renewal statistics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct HeartbeatStats {
    /// Ticks that renewed something.
    pub ticks: u64,
    /// Batched renewal calls sent: per lock resource and tick, one pipeline of native
    /// renewals, or one script call per slot group.
    pub calls: u64,
    /// Leases renewed.
    pub renewed: u64,
    /// Leases found lost by a renewal.
    pub lost: u64,
    /// Renewal calls that failed (Redis unreachable, timeout).
    pub failed_calls: u64,
    /// Leases held now.
    pub held: usize,
}

impl LeaseRegistry {
    /// The tick that renews every lease of `locks` in time: the shortest renewal period.
    pub fn tick_period<'a>(locks: impl IntoIterator<Item = &'a Lock>) -> Duration {
        locks
            .into_iter()
            .map(|l| l.config().extend_period())
            .min()
            .unwrap_or(Duration::from_secs(10))
    }

    /// Forget a renewal that was in flight when its driver died: its task still finishes, and
    /// the next tick must not be skipped for ever.
    pub fn reset_in_flight(&self) {
        self.counts.in_flight.store(false, Ordering::Release);
    }

    /// Make the next tick's renewals panic (fault drills and tests): the tick after must
    /// renew as usual.
    #[doc(hidden)]
    pub fn panic_next_renewal(&self) {
        self.counts.panic_next.store(true, Ordering::Release);
    }

    /// One tick of a `tick`-long period: the renewals due now, as one future to run on a
    /// task (`None` when nothing is due, the previous tick's renewals are still in flight,
    /// or renewals are stalled).
    pub fn renew_due(self: &Arc<Self>, tick: Duration) -> Option<impl Future<Output = ()>> {
        let c = &self.counts;
        if self.stalled.load(Ordering::Acquire) {
            return None;
        }
        // Due before the next tick: left for it, a renewal would go out after its time,
        // possibly after the deadline when `extend_every` is close to `lease − drift_margin`.
        let horizon = Instant::now() + tick;
        let mut due: HashMap<String, Vec<Arc<HeldLease>>> = HashMap::new();
        for entry in self.held.iter() {
            let held = entry.value();
            if held.check_deadline() {
                continue;
            }
            let next = held.next_renewal();
            if next <= horizon {
                due.entry(held.lock.name().to_string())
                    .or_default()
                    .push(held.clone());
            }
        }
        if due.is_empty() || c.in_flight.swap(true, Ordering::AcqRel) {
            return None;
        }
        // Cleared however the renewals end: a task that panicked or was dropped must not
        // leave every later tick skipped (every lease would then be lost).
        let in_flight = InFlight(self.clone());
        // The tick and its calls are counted together, when the tick is decided: a reader
        // of the stats never sees a tick whose calls its task has not counted yet.
        let calls: usize = due
            .values()
            .map(|leases| {
                let held: Vec<&Lease> = leases.iter().map(|h| &h.lease).collect();
                leases[0].lock.redis_groups(&held)
            })
            .sum();
        c.ticks.fetch_add(1, Ordering::Relaxed);
        c.calls.fetch_add(calls as u64, Ordering::Relaxed);
        let registry = self.clone();
        Some(async move {
            let _in_flight = in_flight;
            let c = &registry.counts;
            if c.panic_next.swap(false, Ordering::AcqRel) {
                panic!("fault injection: lease renewals panic");
            }
            let batches = due.into_values().map(|leases| async move {
                let lock = leases[0].lock.clone();
                let held: Vec<&Lease> = leases.iter().map(|h| &h.lease).collect();
                let sent = Instant::now();
                match lock.extend_many(&held).await {
                    Ok(flags) => {
                        for (held, ok) in leases.iter().zip(flags) {
                            if ok {
                                held.confirmed(sent);
                                c.renewed.fetch_add(1, Ordering::Relaxed);
                            } else {
                                if held.lose(LostReason::Stolen) {
                                    c.lost.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                    }
                    Err(e) => {
                        c.failed_calls.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(lock = lock.name(), error = %e, "lease renewal failed");
                    }
                }
            });
            futures::future::join_all(batches).await;
        })
    }

    /// A copy of the renewal statistics.
    pub fn stats(&self) -> HeartbeatStats {
        let c = &self.counts;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        HeartbeatStats {
            ticks: l(&c.ticks),
            calls: l(&c.calls),
            renewed: l(&c.renewed),
            lost: l(&c.lost),
            failed_calls: l(&c.failed_calls),
            held: self.held.len(),
        }
    }
}

/// The renewals of one tick, in flight until dropped.
struct InFlight(Arc<LeaseRegistry>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.counts.in_flight.store(false, Ordering::Release);
    }
}

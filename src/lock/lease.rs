//! Held leases: [`LockGuard`] holds one, [`LeaseRegistry`] knows them all.
//!
//! A guard carries the fencing token and a **lost signal** ([`LostSignal`]) that fires
//! - as soon as a renewal finds another owner (or no owner) on the lock, and
//! - in any case at the guard's local deadline (acquire start + lease − drift margin, moved
//!   forward only by renewals the server confirmed), whether Redis is reachable or not.
//!
//! The deadline is kept by a small task per guard that sleeps until it, so the signal does not
//! depend on the renewal loop (which may be stalled, restarting or cut off from Redis). The
//! registry is renewed in batches ([`super::renewal`]); it belongs to the runtime, so it
//! survives the restarts of whatever drives the renewals.
//!
//! Dropping a guard without [`LockGuard::release`] deregisters it and releases the lock in the
//! background (best effort, never blocking the drop).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tokio::sync::watch;

use super::{Lease, Lock};
use crate::error::Result;
use crate::task::AbortOnDrop;

/// tokio's timers fire up to a millisecond late: the deadline task wakes this much early.
const TIMER_SLACK: Duration = Duration::from_millis(2);

/// Why a lease was lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LostReason {
    /// A renewal found the lock held by another owner, or not held at all.
    Stolen,
    /// The local deadline passed without a renewal the server confirmed.
    DeadlinePassed,
}

impl LostReason {
    /// The reason in snake case (`stolen`, `deadline_passed`), as metrics label it.
    pub fn as_str(self) -> &'static str {
        match self {
            LostReason::Stolen => "stolen",
            LostReason::DeadlinePassed => "deadline_passed",
        }
    }
}

/// One held lease, shared by its guard, its deadline task and the heartbeater.
#[derive(Debug)]
pub(crate) struct HeldLease {
    pub(crate) lock: Lock,
    pub(crate) lease: Lease,
    state: Mutex<LeaseState>,
    /// The runtime the lease was acquired on: its deadline task and a dropped guard's
    /// background release run there, also when the guard is used from a thread of its own.
    runtime: Option<tokio::runtime::Handle>,
}

/// What moves while a lease is held, under one lock.
#[derive(Debug)]
struct LeaseState {
    /// The local deadline; only ever moved forward.
    deadline: Instant,
    /// When the heartbeater should renew next.
    next_renewal: Instant,
    /// Why the lease was lost, once it was.
    lost: Option<LostReason>,
    /// Released or dropped: a renewal answered after that is no loss.
    ended: bool,
    /// The lost signal's channel, made for the first subscriber: most holders never ask for
    /// it, and a channel costs an allocation and, when dropped, a wake-up of each of its
    /// eight waiter lists.
    signal: Option<watch::Sender<Option<LostReason>>>,
}

impl HeldLease {
    fn state(&self) -> std::sync::MutexGuard<'_, LeaseState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn deadline(&self) -> Instant {
        self.state().deadline
    }

    /// When the heartbeater should renew next.
    pub(crate) fn next_renewal(&self) -> Instant {
        self.state().next_renewal
    }

    /// A renewal sent at `sent` was confirmed.
    pub(crate) fn confirmed(&self, sent: Instant) {
        let mut state = self.state();
        // A confirmation that arrives after the deadline passed does not resurrect the lease:
        // the holder has already been told it is lost.
        if state.lost.is_none() {
            state.deadline = state.deadline.max(self.lock.deadline_from(sent));
        }
        state.next_renewal = sent + self.lock.config().extend_period();
    }

    /// The guard was released or dropped.
    fn end(&self) {
        self.state().ended = true;
    }

    /// Fire the lost signal (once, and never after the guard was released or dropped: a
    /// renewal in flight at the release finds the key gone). Whether it fired now.
    pub(crate) fn lose(&self, why: LostReason) -> bool {
        let mut state = self.state();
        if state.lost.is_some() || state.ended {
            return false;
        }
        state.lost = Some(why);
        // Subscribers are woken after the lock is let go (a subscriber taken meanwhile
        // shares this channel and sees the value sent).
        let signal = state.signal.clone();
        drop(state);
        if let Some(signal) = signal {
            signal.send_replace(Some(why));
        }
        #[cfg(feature = "metrics")]
        metrics::counter!(
            crate::telemetry::names::LEASES_LOST,
            "supervisor" => self.lock.telemetry.supervisor().to_string(),
            "name" => self.lock.telemetry.name().to_string(),
            "reason" => why.as_str(),
        )
        .increment(1);
        true
    }

    /// A receiver of the lost signal, holding the current state.
    fn subscribe(&self) -> watch::Receiver<Option<LostReason>> {
        let mut state = self.state();
        let lost = state.lost;
        state
            .signal
            .get_or_insert_with(|| watch::channel(lost).0)
            .subscribe()
    }

    /// Whether the lease is lost; fires the signal first if the deadline has passed.
    pub(crate) fn check_deadline(&self) -> bool {
        let deadline = {
            let state = self.state();
            if state.lost.is_some() {
                return true;
            }
            state.deadline
        };
        if Instant::now() + TIMER_SLACK >= deadline {
            self.lose(LostReason::DeadlinePassed);
            return true;
        }
        false
    }
}

/// Every lease held through one runtime's locks, by registration id, with the counts of
/// their renewals.
#[derive(Debug, Default)]
pub struct LeaseRegistry {
    pub(crate) held: DashMap<u64, Arc<HeldLease>, foldhash::fast::RandomState>,
    next_id: AtomicU64,
    pub(crate) counts: super::renewal::RenewalCounts,
    /// Renewals suspended (a drill of lost leases); see [`LeaseRegistry::stall`].
    pub(crate) stalled: AtomicBool,
}

impl LeaseRegistry {
    /// Leases held now.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Stop (`true`) or resume (`false`) every renewal: freezes every holder, for drills of
    /// lost leases.
    #[doc(hidden)]
    pub fn stall(&self, stalled: bool) {
        self.stalled.store(stalled, Ordering::Release);
    }
}

/// A future-friendly view of a guard's lost signal. Cheap to clone.
#[derive(Debug, Clone)]
pub struct LostSignal(watch::Receiver<Option<LostReason>>);

impl LostSignal {
    /// Wait until the lease is lost; returns why.
    pub async fn wait(&mut self) -> LostReason {
        match self.0.wait_for(|v| v.is_some()).await {
            Ok(v) => v.unwrap_or(LostReason::DeadlinePassed),
            // The sender lives as long as the lease record; gone means the guard is gone.
            Err(_) => LostReason::DeadlinePassed,
        }
    }

    /// Whether it has fired, and why.
    pub fn get(&self) -> Option<LostReason> {
        *self.0.borrow()
    }
}

/// A held lock. See the module docs for the lost signal and drop behaviour.
#[derive(Debug)]
#[must_use = "dropping the guard releases the lock at once"]
pub struct LockGuard {
    id: u64,
    held: Arc<HeldLease>,
    deadline_task: OnceLock<AbortOnDrop>,
    released: bool,
}

impl LockGuard {
    pub(crate) fn new(lock: Lock, lease: Lease) -> Self {
        let state = LeaseState {
            deadline: lock.deadline_from(lease.started),
            next_renewal: lease.started + lock.config().extend_period(),
            lost: None,
            ended: false,
            signal: None,
        };
        let held = Arc::new(HeldLease {
            lock,
            lease,
            state: Mutex::new(state),
            runtime: tokio::runtime::Handle::try_current().ok(),
        });
        let leases = &held.lock.leases;
        let id = leases.next_id.fetch_add(1, Ordering::Relaxed);
        leases.held.insert(id, held.clone());
        LockGuard {
            id,
            held,
            deadline_task: OnceLock::new(),
            released: false,
        }
    }

    /// Start the task that fires the lost signal at the deadline (once, on first demand:
    /// holders that never ask for the signal do not pay for a task and a timer).
    fn watch_deadline(&self) {
        // A guard is made by an acquire, on a runtime; without one the signal still fires
        // when a renewal finds another owner, and `is_lost` still checks the deadline.
        let Some(runtime) = &self.held.runtime else {
            return;
        };
        self.deadline_task.get_or_init(|| {
            let watched = self.held.clone();
            AbortOnDrop(runtime.spawn(async move {
                // Sleep to the deadline; renewals move it, so look again on waking. Wake early
                // by the timer's resolution, so the signal is never later than the deadline.
                loop {
                    if watched.check_deadline() {
                        return;
                    }
                    tokio::time::sleep_until((watched.deadline() - TIMER_SLACK).into()).await;
                }
            }))
        });
    }

    /// The fencing token. Send it with every write to the resource the lock protects; the
    /// resource keeps the highest token it has seen and refuses lower ones.
    pub fn token(&self) -> u64 {
        self.held.lease.token
    }

    /// The owner string of this acquisition.
    pub fn owner(&self) -> &str {
        &self.held.lease.owner
    }

    /// The local deadline: act on the protected resource only before it.
    pub fn deadline(&self) -> Instant {
        self.held.deadline()
    }

    /// The lost signal. It fires at the latest at the local deadline (its timer starts with
    /// the first call), and at once when a renewal finds another owner.
    pub fn lost(&self) -> LostSignal {
        self.watch_deadline();
        LostSignal(self.held.subscribe())
    }

    /// Whether the lease is lost (signalled, or past its local deadline).
    pub fn is_lost(&self) -> bool {
        self.held.check_deadline()
    }

    /// Renew now (besides the heartbeater). `Ok(false)` and the lost signal when another owner
    /// holds the lock; `Ok(false)` without a call once the lease is lost (a lost lease stays
    /// lost, even if its key is still on the server); an error leaves the lease as it was
    /// (the deadline still applies).
    pub async fn extend(&self) -> Result<bool> {
        if self.held.check_deadline() {
            return Ok(false);
        }
        let sent = Instant::now();
        let ok = self.held.lock.extend_one(&self.held.lease).await?;
        if ok {
            self.held.confirmed(sent);
        } else {
            self.held.lose(LostReason::Stolen);
        }
        Ok(ok)
    }

    /// Release the lock; whether this acquisition still held it. If this future is dropped
    /// before it ends, the release goes on in the background as for a dropped guard.
    pub async fn release(mut self) -> Result<bool> {
        self.held.lock.leases.held.remove(&self.id);
        self.held.end();
        let released = self.held.lock.release(&self.held.lease).await;
        self.released = true;
        released
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if self.released {
            // `release` deregistered it already.
            return;
        }
        self.held.lock.leases.held.remove(&self.id);
        self.held.end();
        // Best effort, never blocking: release in the background if a runtime is at hand.
        let runtime = tokio::runtime::Handle::try_current()
            .ok()
            .or_else(|| self.held.runtime.clone());
        if let Some(rt) = runtime {
            let held = self.held.clone();
            rt.spawn(async move {
                if let Err(e) = held.lock.release(&held.lease).await {
                    tracing::debug!(error = %e, "release of a dropped lock guard failed");
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lock::LockId;

    /// A renewal in flight when its guard is released finds the key gone (the release got
    /// there first): that answer is no loss, neither signalled nor counted.
    #[tokio::test]
    async fn a_renewal_answered_after_the_release_is_no_loss() {
        let config =
            crate::Config::from_toml_str("mode = \"embedded\"\n[locks.jobs]").expect("config");
        let rt = crate::runtime::Runtime::build(config).expect("runtime");
        let jobs = rt.locks.get("jobs").expect("jobs");
        let guard = jobs.try_acquire(&LockId::new("j")).await.unwrap().unwrap();
        let held = guard.held.clone();
        let signal = guard.lost();
        assert!(guard.release().await.unwrap());
        // What the renewal task does with a "not renewed" answer.
        assert!(!held.lose(LostReason::Stolen));
        assert_eq!(signal.get(), None);

        // A guard still held is lost by the same answer, once.
        let guard = jobs.try_acquire(&LockId::new("k")).await.unwrap().unwrap();
        let signal = guard.lost();
        assert!(guard.held.lose(LostReason::Stolen));
        assert!(!guard.held.lose(LostReason::Stolen));
        assert_eq!(signal.get(), Some(LostReason::Stolen));
    }
}

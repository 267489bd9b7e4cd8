//! The heartbeater (`<prefix>.heartbeat`): renews every lease this supervisor holds.
//!
//! It ticks at the shortest renewal period among the configured locks. On each tick it takes
//! every lease due within half a tick, groups them by lock resource, and renews each group
//! with one batched script call per slot group ([`Lock::extend_many`]); the calls of one tick
//! go out together, on a tracked task, so the actor never awaits Redis in its handler and one
//! tick costs one round trip. A confirmed renewal moves the lease's local deadline forward; a
//! renewal that finds another owner fires the guard's lost signal at once; a failed call
//! changes nothing (the guard's own deadline task fires if no renewal is confirmed in time).
//!
//! The leases live in [`Shared`]: a restarted heartbeater picks them all up again.
//!
//! [`Lock::extend_many`]: forze_redis::lock::Lock::extend_many

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::lock::{HeldLease, LostReason};
use crate::pool::AbortOnDrop;
use crate::shared::Shared;

/// Messages of the heartbeater.
#[derive(Debug)]
pub enum HeartbeatMsg {
    /// Renew what is due (the actor's own timer).
    Tick,
    /// Report statistics.
    Stats(RpcReplyPort<HeartbeatStats>),
    /// Stop renewing (`true`) or resume (`false`): a test hook that freezes every holder of
    /// this supervisor without stopping anything else.
    #[cfg(feature = "fault-injection")]
    Stall(bool),
    /// Make this actor panic, to drill supervision.
    #[cfg(feature = "fault-injection")]
    Panic,
}

/// Counters of the heartbeater; they survive its restarts.
#[derive(Debug, Default)]
pub(crate) struct HeartbeatCounters {
    ticks: AtomicU64,
    calls: AtomicU64,
    renewed: AtomicU64,
    lost: AtomicU64,
    failed_calls: AtomicU64,
    pub(crate) stalled: AtomicBool,
    in_flight: AtomicBool,
}

/// A copy of the heartbeater's statistics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeartbeatStats {
    /// Ticks that renewed something.
    pub ticks: u64,
    /// Batched renewal calls sent (one per lock resource and slot group per tick).
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

/// The heartbeater actor.
#[derive(Debug)]
pub struct Heartbeater;

/// State of one incarnation.
#[derive(Debug)]
pub struct HeartbeatState {
    shared: Arc<Shared>,
    tick: Duration,
    _timer: AbortOnDrop,
}

impl Actor for Heartbeater {
    type Msg = HeartbeatMsg;
    type State = HeartbeatState;
    type Arguments = Arc<Shared>;

    async fn pre_start(
        &self,
        myself: ActorRef<HeartbeatMsg>,
        shared: Arc<Shared>,
    ) -> Result<HeartbeatState, ActorProcessingErr> {
        let tick = shared
            .locks
            .values()
            .map(|l| l.config().extend_period())
            .min()
            .unwrap_or(Duration::from_secs(10));
        // A renewal may have been in flight when the last incarnation died; its task still
        // finishes, and the flag is reset so the next tick is not skipped for ever.
        shared.heartbeat.in_flight.store(false, Ordering::Release);
        let timer = AbortOnDrop(myself.send_interval(tick, || HeartbeatMsg::Tick));
        Ok(HeartbeatState {
            shared,
            tick,
            _timer: timer,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<HeartbeatMsg>,
        msg: HeartbeatMsg,
        state: &mut HeartbeatState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            HeartbeatMsg::Tick => tick(&state.shared, state.tick),
            HeartbeatMsg::Stats(reply) => {
                let c = &state.shared.heartbeat;
                let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
                let _ = reply.send(HeartbeatStats {
                    ticks: l(&c.ticks),
                    calls: l(&c.calls),
                    renewed: l(&c.renewed),
                    lost: l(&c.lost),
                    failed_calls: l(&c.failed_calls),
                    held: state.shared.leases.held.len(),
                });
            }
            #[cfg(feature = "fault-injection")]
            HeartbeatMsg::Stall(on) => state.shared.heartbeat.stalled.store(on, Ordering::Release),
            #[cfg(feature = "fault-injection")]
            HeartbeatMsg::Panic => panic!("fault injection: heartbeater panic"),
        }
        Ok(())
    }
}

/// Start one tick's renewals on a tracked task (skipped while the previous tick's are still
/// in flight, or while stalled by the test hook).
fn tick(shared: &Arc<Shared>, tick: Duration) {
    let c = &shared.heartbeat;
    if c.stalled.load(Ordering::Acquire) || shared.check_open("lock.extend").is_err() {
        return;
    }
    let horizon = Instant::now() + tick / 2;
    let mut due: HashMap<String, Vec<Arc<HeldLease>>> = HashMap::new();
    for entry in shared.leases.held.iter() {
        let held = entry.value();
        if held.check_deadline() {
            continue;
        }
        let next = *held.next_renewal.lock().unwrap_or_else(|p| p.into_inner());
        if next <= horizon {
            due.entry(held.lock.name().to_string())
                .or_default()
                .push(held.clone());
        }
    }
    if due.is_empty() || c.in_flight.swap(true, Ordering::AcqRel) {
        return;
    }
    c.ticks.fetch_add(1, Ordering::Relaxed);
    let shared2 = shared.clone();
    shared.tasks.spawn(async move {
        let c = &shared2.heartbeat;
        let batches = due.into_values().map(|leases| async move {
            let lock = leases[0].lock.clone();
            let pairs: Vec<(&str, &str)> = leases
                .iter()
                .map(|h| (h.lease.key.as_str(), h.lease.owner.as_str()))
                .collect();
            let sent = Instant::now();
            let calls = lock.redis_groups(&pairs);
            c.calls.fetch_add(calls as u64, Ordering::Relaxed);
            match lock.extend_many(&pairs).await {
                Ok(flags) => {
                    for (held, ok) in leases.iter().zip(flags) {
                        if ok {
                            held.confirmed(sent);
                            c.renewed.fetch_add(1, Ordering::Relaxed);
                        } else {
                            held.lose(LostReason::Stolen);
                            c.lost.fetch_add(1, Ordering::Relaxed);
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
        c.in_flight.store(false, Ordering::Release);
    });
}

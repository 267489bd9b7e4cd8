//! Gauges and running totals published from [`ForzeStats`] every second, through the
//! `metrics` facade: the state that no single operation reports (L1 size, pool and tracking
//! health, leases held, breaker phases, restarts). Started only when the core records metrics
//! (its `metrics` feature), which this crate's `metrics` feature turns on.

use std::time::Duration;

use forze_redis::connection::HealthState;
use forze_redis::telemetry::names;
use metrics::{counter, gauge};

use crate::handle::{ForzeHandle, ForzeStats};

/// How often the gauges are refreshed.
const PERIOD: Duration = Duration::from_secs(1);

/// Publish until the handle's runtime shuts down.
pub(crate) fn spawn_publisher(handle: ForzeHandle) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            // Shut down, or the supervisor is gone without a shutdown (killed, or failed past
            // its restart intensity): nothing left to publish.
            let gone = matches!(
                handle.supervisor().get_status(),
                ractor::ActorStatus::Stopping | ractor::ActorStatus::Stopped
            );
            // Operations are observed off the recorder and reach it here (a last time too
            // when the runtime is gone, so its final second is not lost).
            handle.publish_metrics();
            if handle.is_shut_down() || gone {
                return;
            }
            // A stats call that times out (an actor restarting) skips one refresh.
            if let Ok(stats) = handle.stats().await {
                publish(handle.names().prefix(), &stats);
            }
        }
    });
}

/// Set every gauge and running total from `stats`, labelled with the supervisor's name
/// prefix `sup`.
pub(crate) fn publish(sup: &str, stats: &ForzeStats) {
    let sup = sup.to_string();
    for state in HealthState::ALL {
        let on = stats.health.state == state;
        gauge!(names::HEALTH, "supervisor" => sup.clone(), "state" => state.as_str())
            .set(f64::from(u8::from(on)));
    }
    gauge!(names::POOL_CONNECTIONS, "supervisor" => sup.clone(), "state" => "connected")
        .set(stats.health.connected as f64);
    gauge!(names::POOL_CONNECTIONS, "supervisor" => sup.clone(), "state" => "total")
        .set(stats.health.total as f64);
    counter!(names::ACTOR_RESTARTS, "supervisor" => sup.clone())
        .absolute(stats.supervisor.restarts);
    if let Some(t) = &stats.tracking {
        gauge!(names::TRACKING_ACTIVE, "supervisor" => sup.clone())
            .set(f64::from(u8::from(t.confirmed)));
        counter!(names::TRACKING_LOSSES, "supervisor" => sup.clone()).absolute(t.losses);
    }
    if let Some(h) = &stats.heartbeat {
        gauge!(names::LEASES_HELD, "supervisor" => sup.clone()).set(h.held as f64);
    }
    for (name, c) in &stats.caches {
        let Some(l1) = &c.l1 else { continue };
        gauge!(names::L1_ENTRIES, "supervisor" => sup.clone(), "name" => name.clone())
            .set(l1.entries as f64);
        gauge!(names::L1_BYTES, "supervisor" => sup.clone(), "name" => name.clone())
            .set(l1.bytes as f64);
        gauge!(names::L1_STALE_ENTRIES, "supervisor" => sup.clone(), "name" => name.clone())
            .set(l1.stale_entries as f64);
        counter!(names::L1_EVICTIONS, "supervisor" => sup.clone(), "name" => name.clone(), "cause" => "expired")
            .absolute(l1.evictions_expired);
        counter!(names::L1_EVICTIONS, "supervisor" => sup.clone(), "name" => name.clone(), "cause" => "size")
            .absolute(l1.evictions_size);
        counter!(names::L1_EVICTIONS, "supervisor" => sup.clone(), "name" => name.clone(), "cause" => "invalidation")
            .absolute(l1.invalidations);
        for (reason, n) in &l1.flushes {
            counter!(names::L1_FLUSHES, "supervisor" => sup.clone(), "name" => name.clone(), "reason" => *reason).absolute(*n);
        }
    }
    for (name, b) in &stats.breakers {
        for (phase, n) in &b.routes_by_phase {
            gauge!(names::BREAKER_ROUTES, "supervisor" => sup.clone(), "name" => name.clone(), "phase" => *phase).set(*n as f64);
        }
    }
}

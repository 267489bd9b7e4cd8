//! The tracking session: what keeps every L1 and every cached breaker phase coherent.
//!
//! | module | what lives there |
//! |---|---|
//! | [`connection`] | one RESP3 connection with `CLIENT TRACKING … BCAST`, its pushes and pings |
//! | [`topology`] | the primaries to track behind a URL (single, cluster, sentinel), polled for changes |
//!
//! [`Tracked`] is the set of things a session keeps fresh: the L1 of every cache namespace
//! that has one (and is not routed) and every breaker policy's cached phases; it also wakes
//! the waiters of locks with `wake_waiters` when their lock keys change. Trust in them is
//! a value, [`Trust`]: it exists only while every primary that may hold their keys is tracked
//! on a confirmed connection, and dropping it (a lost connection, a topology change, the
//! subscriber stopping or failing) empties every L1 untrusted and puts the breakers back on
//! their short cache TTL. Nothing can be trusted without one, and nothing outlives it.

pub mod connection;
pub mod topology;

use std::sync::{Arc, Mutex};

use crate::breaker::Breaker;
use crate::cache::l1::FlushReason;
use crate::cache::Cache;
use crate::lock::Lock;
use connection::deoverlap;

/// Every cache L1 and breaker policy one tracking session keeps coherent, each with the key
/// prefix it owns. Cheap to clone (handles only).
#[derive(Debug, Clone, Default)]
pub struct Tracked {
    caches: Vec<(String, Cache)>,
    breakers: Vec<(String, Breaker)>,
    /// Locks whose waiters are woken by the pushes of their keys (`wake_waiters`).
    locks: Vec<(String, Lock)>,
    /// Which confirmation the current trust belongs to, shared by every session of one
    /// runtime: a dying session's trust, dropped late (an aborted task is dropped only when
    /// tokio next polls it), must not untrust what a newer session confirmed. Held while
    /// confirming and while a trust ends, so the two never interleave.
    generation: Arc<Mutex<u64>>,
}

impl Tracked {
    /// A session's set: `caches` (each with an L1), `breakers`, `locks` whose waiters it
    /// wakes, and the generation counter shared by every session of one runtime.
    pub fn new<'a>(
        caches: impl IntoIterator<Item = &'a Cache>,
        breakers: impl IntoIterator<Item = &'a Breaker>,
        locks: impl IntoIterator<Item = &'a Lock>,
        generation: Arc<Mutex<u64>>,
    ) -> Self {
        Tracked {
            caches: caches
                .into_iter()
                .map(|c| (c.tracking_prefix(), c.clone()))
                .collect(),
            breakers: breakers
                .into_iter()
                .map(|b| (b.tracking_prefix(), b.clone()))
                .collect(),
            locks: locks
                .into_iter()
                .map(|l| (l.tracking_prefix(), l.clone()))
                .collect(),
            generation,
        }
    }

    /// The prefixes to ask the server to broadcast, none covering another.
    pub fn prefixes(&self) -> Vec<String> {
        let all: Vec<String> = self
            .caches
            .iter()
            .map(|(p, _)| p.clone())
            .chain(self.breakers.iter().map(|(p, _)| p.clone()))
            .chain(self.locks.iter().map(|(p, _)| p.clone()))
            .collect();
        deoverlap(&all)
    }

    /// Trust everything: every primary is tracked on a confirmed connection. Hold the value
    /// for as long as that stays true.
    pub fn confirm(&self) -> Trust {
        let mut current = self.generation.lock().unwrap_or_else(|p| p.into_inner());
        *current += 1;
        for (_, cache) in &self.caches {
            cache.l1_confirm();
        }
        for (_, b) in &self.breakers {
            b.set_tracked(true);
        }
        Trust {
            tracked: self.clone(),
            generation: *current,
            reason: Some(FlushReason::SubscriberRestart),
        }
    }

    /// Nothing is tracked (no trust exists): empty every L1 untrusted and put the breakers
    /// back on their untracked cache TTL. Idempotent.
    pub fn lose(&self, reason: FlushReason) {
        for (_, cache) in &self.caches {
            cache.l1_flush(reason, false);
        }
        for (_, b) in &self.breakers {
            b.set_tracked(false);
        }
        // Pushes may have been missed: let every waiter look again (then poll).
        for (_, l) in &self.locks {
            l.wake_all_waiters();
        }
    }

    /// Before the first session: the L1s are new, empty and untrusted already (no flush to
    /// count); only the breakers are put on their untracked cache TTL.
    pub fn start_untrusted(&self) {
        for (_, b) in &self.breakers {
            b.set_tracked(false);
        }
    }

    /// An invalidation push for `redis_key`: evict it from the one cache or breaker policy
    /// that owns its prefix. Keys of nothing tracked are ignored.
    pub fn invalidate(&self, redis_key: &str) {
        if let Some((_, cache)) = self
            .caches
            .iter()
            .find(|(p, _)| redis_key.starts_with(p.as_str()))
        {
            cache.apply_invalidation(redis_key);
        } else if let Some((_, b)) = self
            .breakers
            .iter()
            .find(|(p, _)| redis_key.starts_with(p.as_str()))
        {
            b.apply_invalidation(redis_key);
        } else if let Some((_, l)) = self
            .locks
            .iter()
            .find(|(p, _)| redis_key.starts_with(p.as_str()))
        {
            l.wake_waiters(redis_key);
        }
    }

    /// The server flushed its data (the null push): every cached value and phase is gone.
    /// Tracking itself is intact, so the L1s stay trusted; fills in flight are refused.
    pub fn server_flushed(&self) {
        for (_, b) in &self.breakers {
            b.flush_cache();
        }
        for (_, cache) in &self.caches {
            cache.l1_flush(FlushReason::ServerFlush, true);
        }
        for (_, l) in &self.locks {
            l.wake_all_waiters();
        }
    }
}

/// Trust in every tracked L1 and breaker phase, held while the session is confirmed.
/// Dropping it empties every L1 untrusted; [`Trust::end`] says why.
#[derive(Debug)]
#[must_use = "dropping the trust flushes every L1 at once"]
pub struct Trust {
    tracked: Tracked,
    generation: u64,
    reason: Option<FlushReason>,
}

impl Trust {
    /// The session ended for `reason`: flush with it.
    pub fn end(mut self, reason: FlushReason) {
        self.reason = Some(reason);
    }
}

impl Drop for Trust {
    fn drop(&mut self) {
        let Some(reason) = self.reason.take() else {
            return;
        };
        let current = self
            .tracked
            .generation
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // A newer session has confirmed since: what it trusts is not this trust's to end.
        if *current == self.generation {
            self.tracked.lose(reason);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::runtime::Runtime;

    fn runtime() -> Runtime {
        let config = Config::from_toml_str(
            "[redis]\nurl = \"redis://127.0.0.1:1\"\n[caches.docs]\nl1 = { ttl = \"10s\", max_entries = 10 }\n[caches.plain]\n[breakers.api]",
        )
        .expect("config");
        Runtime::build(config).expect("runtime")
    }

    #[test]
    fn tracked_holds_l1_caches_and_breakers_only() {
        let rt = runtime();
        let tracked = rt.tracked();
        assert_eq!(tracked.caches.len(), 1);
        assert_eq!(tracked.breakers.len(), 1);
        assert_eq!(tracked.prefixes().len(), 2);
    }

    #[tokio::test]
    async fn dropping_the_trust_untrusts_every_l1() {
        let rt = runtime();
        let tracked = rt.tracked();
        let docs = rt.caches.get("docs").expect("docs");
        assert!(!docs.l1_is_trusted());
        let trust = tracked.confirm();
        assert!(docs.l1_is_trusted());
        drop(trust);
        assert!(!docs.l1_is_trusted());
        let trust = tracked.confirm();
        trust.end(FlushReason::TrackingLost);
        assert!(!docs.l1_is_trusted());
        let flushes = docs.stats().l1.expect("l1").flushes;
        assert_eq!(
            flushes.get("tracking_lost").copied(),
            Some(1),
            "{flushes:?}"
        );
    }
}

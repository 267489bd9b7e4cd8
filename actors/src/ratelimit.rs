//! Rate-limit handles: [`RateLimitHandle`] decides on the caller's task (one script call, or
//! the local fallback bucket that lives in [`Shared`]). See [`forze_redis::ratelimit`].

use std::sync::Arc;
use std::time::Duration;

use forze_redis::ratelimit::{Decision, RateLimitStats, RateLimiter};
use forze_redis::Result;

use crate::shared::Shared;

/// A rate-limit policy, used from any task. Cheap to clone.
#[derive(Debug, Clone)]
pub struct RateLimitHandle {
    pub(crate) shared: Arc<Shared>,
    pub(crate) limiter: Arc<RateLimiter>,
}

impl RateLimitHandle {
    /// The policy name.
    pub fn name(&self) -> &str {
        self.limiter.name()
    }

    /// Take `n` permits for `route` if available. Never a Redis error (the local fallback
    /// decides then); `Validation` for `n` of 0 or above the capacity.
    pub async fn try_acquire(&self, route: &str, n: u32) -> Result<Decision> {
        self.shared.check_open("ratelimit.try_acquire")?;
        self.limiter.try_acquire(route, n).await
    }

    /// Take `n` permits, waiting up to `max_wait`; `Throttled` when it cannot be done in time.
    pub async fn acquire(&self, route: &str, n: u32, max_wait: Duration) -> Result<Decision> {
        self.shared.check_open("ratelimit.acquire")?;
        self.limiter.acquire(route, n, max_wait).await
    }

    /// Statistics, read without a mailbox.
    pub fn stats_now(&self) -> RateLimitStats {
        self.limiter.stats()
    }
}

/// A circuit-breaker policy, used from any task. Cheap to clone. See
/// [`forze_redis::breaker`].
#[derive(Debug, Clone)]
pub struct BreakerHandle {
    pub(crate) shared: Arc<Shared>,
    pub(crate) breakers: Arc<forze_redis::breaker::Breakers>,
}

impl BreakerHandle {
    /// The policy name.
    pub fn name(&self) -> &str {
        self.breakers.name()
    }

    /// Whether a call on `route` may go ahead (never a Redis error).
    pub async fn admit(&self, route: &str) -> Result<forze_redis::breaker::Admission> {
        self.shared.check_open("breaker.admit")?;
        self.breakers.admit(route).await
    }

    /// Record the outcome of an admitted call.
    pub async fn record(&self, route: &str, ok: bool) -> Result<forze_redis::breaker::Phase> {
        self.shared.check_open("breaker.record")?;
        self.breakers.record(route, ok).await
    }

    /// Admit, run, record.
    pub async fn call<T, E, F>(
        &self,
        route: &str,
        call: F,
    ) -> std::result::Result<T, forze_redis::breaker::CallError<E>>
    where
        F: std::future::Future<Output = std::result::Result<T, E>>,
    {
        self.shared
            .check_open("breaker.call")
            .map_err(forze_redis::breaker::CallError::Breaker)?;
        self.breakers.call(route, call).await
    }

    /// Open `route` fleet-wide until reset.
    pub async fn force_open(&self, route: &str) -> Result<()> {
        self.breakers.force_open(route).await
    }

    /// Hold `route` closed fleet-wide until reset.
    pub async fn force_close(&self, route: &str) -> Result<()> {
        self.breakers.force_close(route).await
    }

    /// Clear forcing and counts, fleet-wide.
    pub async fn reset(&self, route: &str) -> Result<()> {
        self.breakers.reset(route).await
    }

    /// Every transition from now on.
    pub fn transitions(
        &self,
    ) -> tokio::sync::broadcast::Receiver<forze_redis::breaker::Transition> {
        self.breakers.transitions()
    }

    /// Statistics, read without a mailbox.
    pub fn stats_now(&self) -> forze_redis::breaker::BreakerStats {
        self.breakers.stats()
    }
}

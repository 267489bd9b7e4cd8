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

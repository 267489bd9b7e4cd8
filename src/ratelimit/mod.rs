//! Fleet-wide rate limits: a token bucket per (policy, route), decided by one script on the
//! server clock, with a process-local fallback.
//!
//! - The bucket starts full (`burst`, default `permits`) and refills at `permits / per`.
//! - [`RateLimiter::try_acquire`] answers allowed, permits left and how long until `n` permits
//!   would be there, in one round trip, never with a Redis error: on any Redis failure the
//!   replica decides alone with a local bucket of `fallback_share × permits` (counted, traced),
//!   and goes back to Redis on the next call by itself.
//! - **No double budget on the way back.** What the local bucket granted during an outage is
//!   charged to the shared bucket with the first call that reaches Redis again (capped at the
//!   capacity), so a replica cannot spend a full local bucket and then a full shared one in
//!   the same refill period.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use fred::types::Value;

use crate::clock::SharedClock;
use crate::coalesce::{Coalescer, SendBatch, Waiter};
use crate::config::RateLimitConfig;
use crate::connection::RedisConnection;
use crate::error::{Access, Error, Result};
use crate::gate::Gate;
use crate::keys::KeySpace;
use crate::pooled::pooled_with;
use crate::scripts::{RATELIMIT_ACQUIRE, RATELIMIT_ACQUIRE_MANY};
use crate::striped::StripedCounter;

pub use crate::decided_by::DecidedBy;

/// One rate-limit decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether the permits were granted.
    pub allowed: bool,
    /// Whole permits left in the bucket after this decision.
    pub remaining: u64,
    /// When denied: how long until the bucket holds the permits asked for.
    pub retry_after: Duration,
    /// Where it was decided.
    pub decided_by: DecidedBy,
}

#[derive(Debug, Clone, Copy)]
struct LocalBucket {
    tokens: f64,
    updated: Instant,
}

/// Counters of one policy.
#[derive(Debug, Default)]
struct Counters {
    /// Bumped by every decision: per thread (see [`StripedCounter`]).
    decisions: StripedCounter,
    denied: AtomicU64,
    fallbacks: AtomicU64,
}

/// A copy of one policy's statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct RateLimitStats {
    /// Decisions made.
    pub decisions: u64,
    /// Decisions that denied.
    pub denied: u64,
    /// Decisions made by the fallback bucket.
    pub fallbacks: u64,
}

/// One rate-limit policy.
#[derive(Debug, Clone)]
pub struct RateLimiter(Arc<RateLimiterState>);

#[doc(hidden)]
impl std::ops::Deref for RateLimiter {
    type Target = RateLimiterState;
    fn deref(&self) -> &RateLimiterState {
        &self.0
    }
}

/// What every clone of one [`RateLimiter`] shares.
#[doc(hidden)]
#[derive(Debug)]
pub struct RateLimiterState {
    /// Spans and metrics of every operation.
    pub(crate) telemetry: crate::telemetry::Telemetry,
    gate: Gate,
    name: String,
    space: KeySpace,
    config: RateLimitConfig,
    conn: Option<Arc<RedisConnection>>,
    clock: SharedClock,
    /// Local buckets by route: embedded mode's only state, the fallback in Redis mode. In
    /// Shared state, so they survive actor restarts.
    local: DashMap<String, LocalBucket>,
    /// Sweeps out local buckets idle long enough to be full again (as good as absent).
    local_sweeper: crate::sweep::Sweeper,
    /// Permits granted by the fallback per route, not yet charged to the shared bucket.
    owed: DashMap<String, Owed>,
    /// Sweeps out debts older than [`RateLimiterState::debt_lifetime`].
    owed_sweeper: crate::sweep::Sweeper,
    /// How long a debt counts: the shared bucket's time to live, long enough for it to refill
    /// completely, so a bucket left alone that long is full whatever was spent before.
    debt_lifetime: Duration,
    counters: Counters,
    /// The script's fixed arguments (rate per ms, capacity, ttl), formatted once and shared
    /// by every call.
    fixed_args: [Value; 3],
    /// Set for `coalesce = true` on Redis: concurrent decisions of one route share a call.
    coalescer: Option<Arc<Coalescer<u32, Decision>>>,
}

impl RateLimiter {
    /// A policy on Redis (`conn` is `Some`) or on local state.
    pub(crate) fn new(
        name: impl Into<String>,
        space: KeySpace,
        config: &RateLimitConfig,
        conn: Option<Arc<RedisConnection>>,
        clock: SharedClock,
        gate: Gate,
        telemetry: crate::telemetry::Telemetry,
    ) -> Self {
        let cap = config.capacity();
        let rate = config.rate_per_ms();
        // Long enough for an idle bucket to refill completely: expiry is a full bucket.
        let ttl_ms = ((f64::from(cap) / rate) * 2.0).ceil().max(1000.0) as u64;
        let coalescer = (config.coalesce && conn.is_some())
            .then(|| Arc::new(Coalescer::new("ratelimit.try_acquire")));
        RateLimiter(Arc::new(RateLimiterState {
            telemetry,
            gate,
            // The rate as exact integers: a decimal would round slow limits (1 per day) away.
            fixed_args: [
                Value::from(format!(
                    "{}/{}",
                    config.permits,
                    crate::time::ttl_millis(config.per)
                )),
                Value::from(cap.to_string()),
                Value::from(ttl_ms.to_string()),
            ],
            name: name.into(),
            space,
            config: config.clone(),
            conn,
            clock,
            local: DashMap::new(),
            local_sweeper: Default::default(),
            owed: DashMap::new(),
            owed_sweeper: Default::default(),
            debt_lifetime: Duration::from_millis(ttl_ms),
            counters: Counters::default(),
            coalescer,
        }))
    }

    /// The policy name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The configuration.
    pub fn config(&self) -> &RateLimitConfig {
        &self.config
    }

    /// A copy of the statistics.
    pub fn stats(&self) -> RateLimitStats {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RateLimitStats {
            decisions: self.counters.decisions.get(),
            denied: l(&self.counters.denied),
            fallbacks: l(&self.counters.fallbacks),
        }
    }

    fn key(&self, route: &str) -> Result<String> {
        let route = if route.is_empty() { "-" } else { route };
        Ok(self.space.key(None, &[route])?.into_string())
    }

    /// Take `n` permits for `route` if the bucket has them. Never a Redis error: only
    /// `Validation` for `n == 0` or `n` above the capacity (it could never be granted).
    pub async fn try_acquire(&self, route: &str, n: u32) -> Result<Decision> {
        self.gate.check("ratelimit.try_acquire")?;
        self.decide(route, n).await
    }

    /// [`RateLimiter::try_acquire`] past the gate (`acquire` checks it once for its wait).
    async fn decide(&self, route: &str, n: u32) -> Result<Decision> {
        let op = async {
            if n == 0 || n > self.config.capacity() {
                return Err(Error::validation(
                    "n",
                    format!(
                        "must be between 1 and the capacity ({})",
                        self.config.capacity()
                    ),
                ));
            }
            let key = self.key(route)?;
            self.counters.decisions.add(1);
            let decision = match &self.conn {
                None => self.local_decide(&key, n, 1.0, DecidedBy::Local),
                Some(conn) => match pooled_with(|| self.shared_decide(conn, &key, n)).await {
                    Ok(d) => d,
                    Err(e) => {
                        self.counters.fallbacks.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(policy = %self.name, error = %e, "rate limit decided locally");
                        let d = self.local_decide(
                            &key,
                            n,
                            self.config.fallback_share,
                            DecidedBy::Fallback,
                        );
                        if d.allowed {
                            self.owe(&key, f64::from(n), self.clock.now());
                        }
                        d
                    }
                },
            };
            if !decision.allowed {
                self.counters.denied.fetch_add(1, Ordering::Relaxed);
            }
            Ok(decision)
        };
        self.telemetry
            .observe("ratelimit.decide", op, |d| {
                match (d.allowed, d.decided_by) {
                    (true, DecidedBy::Fallback) => "fallback_allowed",
                    (false, DecidedBy::Fallback) => "fallback_denied",
                    (true, _) => "allowed",
                    (false, _) => "denied",
                }
            })
            .await
    }

    /// Take `n` permits, waiting up to `max_wait` for the bucket to refill (sleeping the
    /// `retry_after` it reports). `Throttled` with the remaining wait when it cannot be done
    /// in time.
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// use forze_redis_actors::{Config, DecidedBy, ErrorKind, Forze};
    ///
    /// let config = Config::from_toml_str(r#"mode = "embedded"
    ///     [rate_limits.api]
    ///     permits = 2
    ///     per = "1s"
    /// "#)?;
    /// let (forze, _join) = Forze::spawn(config).await?;
    /// let api = forze.rate_limit("api")?;
    ///
    /// // The bucket starts full: both permits at once, without waiting.
    /// let d = api.acquire("GET /users", 2, Duration::ZERO).await?;
    /// assert!(d.allowed && d.decided_by == DecidedBy::Local);
    /// // The next permit refills in 500 ms: a 10 ms wait is not enough...
    /// let err = api.acquire("GET /users", 1, Duration::from_millis(10)).await.unwrap_err();
    /// assert_eq!(err.kind(), ErrorKind::Throttled);
    /// // ...a wait of up to a second is.
    /// assert!(api.acquire("GET /users", 1, Duration::from_secs(1)).await?.allowed);
    ///
    /// forze.shutdown().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn acquire(&self, route: &str, n: u32, max_wait: Duration) -> Result<Decision> {
        self.gate.check("ratelimit.acquire")?;
        // A wait too long to represent is "no deadline".
        let deadline = self.clock.now().checked_add(max_wait);
        loop {
            let d = self.decide(route, n).await?;
            if d.allowed {
                return Ok(d);
            }
            let ready = self.clock.now().checked_add(d.retry_after);
            let too_late = match (ready, deadline) {
                (None, _) => true,
                (Some(r), Some(dl)) => r > dl,
                (Some(_), None) => false,
            };
            if too_late {
                return Err(Error::Throttled {
                    retry_after: d.retry_after,
                });
            }
            tokio::time::sleep(d.retry_after.max(Duration::from_millis(1))).await;
        }
    }

    /// The decision of the shared bucket: alone, or with the requests of the same route in
    /// flight at the same time when coalescing.
    async fn shared_decide(&self, conn: &RedisConnection, key: &str, n: u32) -> Result<Decision> {
        match &self.coalescer {
            Some(c) => {
                c.run(self, key, n, || self.redis_decide(conn, key, n))
                    .await
            }
            None => self.redis_decide(conn, key, n).await,
        }
    }

    async fn redis_decide(&self, conn: &RedisConnection, key: &str, n: u32) -> Result<Decision> {
        let owed = OwedCharge {
            limiter: self,
            key,
            owed: self.take_owed(key),
        };
        let reply: Result<Vec<i64>> = conn
            .eval(
                "ratelimit.try_acquire",
                Access::Write,
                &RATELIMIT_ACQUIRE,
                &[key],
                &[
                    self.fixed_args[0].clone(),
                    self.fixed_args[1].clone(),
                    Value::Integer(n.into()),
                    self.fixed_args[2].clone(),
                    owed_arg(owed.owed),
                ],
            )
            .await;
        // Charged only by a call that answered; an error or a dropped call owes it again.
        let reply = reply?;
        owed.charged();
        decision_of(&reply).ok_or_else(unexpected_reply)
    }

    /// The local spend of an outage, charged once with the first call that gets through
    /// (capped at the capacity); nothing once the debt has outlived
    /// [`RateLimiterState::debt_lifetime`].
    fn take_owed(&self, key: &str) -> Option<Owed> {
        let cap = f64::from(self.config.capacity());
        let (_, owed) = self.owed.remove(key)?;
        self.debt_is_live(&owed, self.clock.now()).then(|| Owed {
            permits: owed.permits.min(cap),
            last: owed.last,
        })
    }

    fn debt_is_live(&self, owed: &Owed, now: Instant) -> bool {
        now.saturating_duration_since(owed.last) < self.debt_lifetime
    }

    /// Owe `permits` for `key`, the last of them granted at `at`. Debts past their lifetime
    /// are swept out first, so the routes that never reach Redis again leave memory.
    fn owe(&self, key: &str, permits: f64, at: Instant) {
        let now = self.clock.now();
        self.owed_sweeper
            .sweep(&self.owed, |_, o| self.debt_is_live(o, now));
        let mut owed = self.owed.entry(key.to_string()).or_insert(Owed {
            permits: 0.0,
            last: at,
        });
        if !self.debt_is_live(&owed, now) {
            owed.permits = 0.0;
        }
        owed.permits += permits;
        owed.last = owed.last.max(at);
    }

    /// `owed` was not charged by a call that answered: owe it again, to be charged with the
    /// next call. A call that failed after it ran (its outcome unknown) or was dropped after
    /// it was sent may then charge twice; the way back never grants twice.
    fn owe_again(&self, key: &str, owed: Owed) {
        self.owe(key, owed.permits, owed.last);
    }

    fn local_decide(&self, key: &str, n: u32, share: f64, decided_by: DecidedBy) -> Decision {
        let cap = f64::from(self.config.capacity()) * share;
        let rate = self.config.rate_per_ms() * share;
        let now = self.clock.now();
        // Idle this long, a bucket has refilled: dropping it changes nothing.
        let refill = Duration::from_secs_f64(cap / rate / 1000.0);
        self.local_sweeper.sweep(&self.local, |_, b| {
            now.saturating_duration_since(b.updated) < refill
        });
        let mut b = self.local.entry(key.to_string()).or_insert(LocalBucket {
            tokens: cap,
            updated: now,
        });
        let elapsed = now.saturating_duration_since(b.updated).as_secs_f64() * 1000.0;
        b.tokens = (b.tokens + elapsed * rate).min(cap);
        b.updated = now;
        let n = f64::from(n);
        if b.tokens >= n {
            b.tokens -= n;
            Decision {
                allowed: true,
                remaining: b.tokens.floor() as u64,
                retry_after: Duration::ZERO,
                decided_by,
            }
        } else {
            let wait_ms = if n > cap {
                f64::MAX
            } else {
                ((n - b.tokens) / rate).ceil()
            };
            Decision {
                allowed: false,
                remaining: b.tokens.floor() as u64,
                retry_after: Duration::from_millis(wait_ms.min(u64::MAX as f64) as u64),
                decided_by,
            }
        }
    }
}

/// The outage spend taken off the books for one call: back on them when it is dropped
/// without [`OwedCharge::charged`] (the call failed, or was itself dropped, before it could
/// be known to have charged it).
struct OwedCharge<'a> {
    limiter: &'a RateLimiter,
    key: &'a str,
    owed: Option<Owed>,
}

impl OwedCharge<'_> {
    /// The call answered: the script charged it.
    fn charged(mut self) {
        self.owed = None;
    }
}

impl Drop for OwedCharge<'_> {
    fn drop(&mut self) {
        if let Some(owed) = self.owed.take() {
            self.limiter.owe_again(self.key, owed);
        }
    }
}

/// What one route's fallback granted while Redis was unreachable, not yet charged.
#[derive(Debug, Clone, Copy)]
struct Owed {
    permits: f64,
    /// When the last of them was granted: the debt counts for
    /// [`RateLimiterState::debt_lifetime`] after it.
    last: Instant,
}

fn owed_arg(owed: Option<Owed>) -> Value {
    let owed = owed.map_or(0.0, |o| o.permits);
    if owed > 0.0 {
        Value::from(format!("{owed:.3}"))
    } else {
        Value::Integer(0)
    }
}

/// One decision of the scripts' reply: allowed, tokens left, retry after in ms.
fn decision_of(reply: &[i64]) -> Option<Decision> {
    let &[allowed, remaining, retry] = reply else {
        return None;
    };
    Some(Decision {
        allowed: allowed == 1,
        remaining: remaining.max(0) as u64,
        retry_after: Duration::from_millis(retry.max(0) as u64),
        decided_by: DecidedBy::Redis,
    })
}

fn unexpected_reply() -> Error {
    Error::internal("ratelimit.try_acquire", "unexpected script reply")
}

/// Concurrent decisions of one route, decided by one call of `ratelimit_acquire_many`, each
/// in arrival order.
impl SendBatch<u32, Decision> for RateLimiter {
    async fn send_batch(&self, key: &str, batch: Vec<Waiter<u32, Decision>>) {
        let Some(conn) = &self.conn else {
            for w in batch {
                w.answer(Err(Error::unavailable("ratelimit.try_acquire")));
            }
            return;
        };
        let owed = OwedCharge {
            limiter: self,
            key,
            owed: self.take_owed(key),
        };
        let mut args = Vec::with_capacity(4 + batch.len());
        args.extend([
            self.fixed_args[0].clone(),
            self.fixed_args[1].clone(),
            self.fixed_args[2].clone(),
            owed_arg(owed.owed),
        ]);
        args.extend(batch.iter().map(|w| Value::Integer(w.item.into())));
        let reply: Result<Vec<i64>> = conn
            .eval(
                "ratelimit.try_acquire",
                Access::Write,
                &RATELIMIT_ACQUIRE_MANY,
                &[key],
                &args,
            )
            .await;
        if reply.is_ok() {
            owed.charged();
        }
        match reply {
            Ok(reply) if reply.len() == 3 * batch.len() => {
                for (w, d) in batch.into_iter().zip(reply.chunks_exact(3)) {
                    w.answer(decision_of(d).ok_or_else(unexpected_reply));
                }
            }
            Ok(_) => {
                for w in batch {
                    w.answer(Err(unexpected_reply()));
                }
            }
            Err(e) => {
                for w in batch {
                    w.answer(Err(e.clone()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use crate::clock::Clock;
    use crate::sweep::MIN_SWEEP;

    /// Buckets of routes no longer used leave memory once they would be full again.
    #[tokio::test]
    async fn idle_local_buckets_do_not_stay_in_memory() {
        let config = crate::Config::from_toml_str(
            "mode = \"embedded\"\n[rate_limits.api]\npermits = 1000\nper = \"1ms\"",
        )
        .expect("config");
        let rt = crate::runtime::Runtime::build(config).expect("runtime");
        let api = rt.rate_limits.get("api").expect("api");
        for round in 0..10 {
            for i in 0..1000 {
                assert!(
                    api.try_acquire(&format!("r{round}-{i}"), 1)
                        .await
                        .unwrap()
                        .allowed
                );
            }
            // A full refill takes 1 ms.
            tokio::time::sleep(std::time::Duration::from_millis(3)).await;
        }
        assert!(api.local.len() <= 2 * MIN_SWEEP, "{}", api.local.len());
    }

    /// A monotonic clock that moves only when told to.
    #[derive(Debug, Clone)]
    struct ManualClock(Arc<std::sync::Mutex<Instant>>);

    impl crate::clock::Clock for ManualClock {
        fn now(&self) -> Instant {
            *self.0.lock().unwrap()
        }
        fn wall(&self) -> std::time::SystemTime {
            std::time::SystemTime::now()
        }
    }

    /// An outage's debt is charged on the way back while the shared bucket could still hold
    /// the permits it stands for; past the bucket's refill time it is worth nothing, is not
    /// charged, and leaves memory even for routes that never reach Redis again.
    #[tokio::test]
    async fn outage_debt_lasts_one_refill_time_and_is_swept() {
        let clock = ManualClock(Arc::new(std::sync::Mutex::new(Instant::now())));
        let config = crate::Config::from_toml_str(
            "mode = \"embedded\"\n[rate_limits.api]\npermits = 10\nper = \"1s\"",
        )
        .expect("config")
        .with_clock(clock.clone());
        let rt = crate::runtime::Runtime::build(config).expect("runtime");
        let api = rt.rate_limits.get("api").expect("api");
        let lifetime = api.debt_lifetime;
        assert_eq!(
            lifetime,
            Duration::from_secs(2),
            "twice the refill time of 10 per second"
        );
        let advance = |by: Duration| *clock.0.lock().unwrap() += by;

        // Charged while young, capped at the capacity, and taken once.
        api.owe("a", 4.0, clock.now());
        api.owe("a", 9.0, clock.now());
        assert_eq!(api.take_owed("a").map(|o| o.permits), Some(10.0));
        assert!(api.take_owed("a").is_none());

        // A debt's age counts from its last permit.
        api.owe("b", 3.0, clock.now());
        advance(lifetime / 2);
        api.owe("b", 1.0, clock.now());
        advance(lifetime * 3 / 4);
        assert_eq!(api.take_owed("b").map(|o| o.permits), Some(4.0));

        // Old debt is not charged, nor added to a new one.
        api.owe("c", 5.0, clock.now());
        advance(lifetime);
        assert!(api.take_owed("c").is_none());
        api.owe("d", 5.0, clock.now());
        advance(lifetime);
        api.owe("d", 1.0, clock.now());
        assert_eq!(api.take_owed("d").map(|o| o.permits), Some(1.0));

        // Routes that never come back are swept as the map grows.
        for round in 0..10 {
            for i in 0..MIN_SWEEP {
                api.owe(&format!("r{round}-{i}"), 1.0, clock.now());
            }
            advance(lifetime);
        }
        assert!(api.owed.len() <= 2 * MIN_SWEEP, "{}", api.owed.len());
    }
}

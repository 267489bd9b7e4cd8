//! The settings of each resource kind (`[counters.<name>]`, `[caches.<name>]`, …) and the one
//! rule every kind shares: a valid name, a namespace no other resource of its kind uses, and
//! its own checks ([`ResourceConfig`]).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// What every resource kind's settings tell the shared validation and key layout.
pub trait ResourceConfig {
    /// The table of the configuration file (`counters`, `caches`, …).
    const SECTION: &'static str;
    /// The namespace set in the file, if any (the resource name is the default).
    fn namespace_setting(&self) -> Option<&str>;
    /// This kind's own checks; `field("ttl")` names `<section>.<name>.ttl` in errors.
    fn check(&self, field: &dyn Fn(&str) -> String) -> Result<()>;
}

/// What a resource does while Redis is unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Fallback {
    /// Return `Unavailable` (default).
    #[default]
    Unavailable,
    /// Serve from process-local state. For counters this gives up fleet-wide uniqueness while
    /// Redis is down.
    Local,
}

/// One counter resource.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CounterConfig {
    /// Key namespace; defaults to the resource name.
    pub namespace: Option<String>,
    /// Require a tenant on every operation and isolate tenants' counters (default false).
    pub tenant_aware: bool,
    /// Behaviour while Redis is unreachable (default `unavailable`).
    pub fallback: Fallback,
    /// Send each tenant's counters to the endpoint `[routing.tenants]` gives it (tenants not
    /// listed stay on `[redis]`). Implies a tenant on every operation (default false).
    pub routed: bool,
    /// Coalesce concurrent increments of one counter into one `INCRBY` whose result range is
    /// handed out in arrival order (default true): each caller still gets a distinct value,
    /// one a sequential order would give, and a hot counter costs one round trip per batch.
    pub coalesce: bool,
}

impl Default for CounterConfig {
    fn default() -> Self {
        CounterConfig {
            namespace: None,
            tenant_aware: false,
            fallback: Fallback::default(),
            routed: false,
            coalesce: true,
        }
    }
}

/// One cache namespace.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Key namespace; defaults to the resource name.
    pub namespace: Option<String>,
    /// Require a tenant on every operation and isolate tenants' entries (default false).
    pub tenant_aware: bool,
    /// Time to live of an entry when the call gives none (default 300 s).
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// Sliding expiration: each read from Redis extends the entry's TTL to at least this
    /// (`PEXPIRE … GT`, never shortens). Off by default.
    #[serde(with = "humantime_serde")]
    pub sliding_ttl: Option<Duration>,
    /// The in-process L1, kept coherent by client-side caching. Off by default.
    pub l1: Option<L1Config>,
    /// Send each tenant's entries to the endpoint `[routing.tenants]` gives it (tenants not
    /// listed stay on `[redis]`). Implies a tenant on every operation; the L1 of a routed
    /// namespace is not tracked and lives by its TTL only (default false).
    pub routed: bool,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            namespace: None,
            tenant_aware: false,
            ttl: Duration::from_secs(300),
            sliding_ttl: None,
            l1: None,
            routed: false,
        }
    }
}

/// One circuit-breaker policy: a breaker per route, shared by the fleet.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Key namespace; defaults to the policy name.
    pub namespace: Option<String>,
    /// Failure ratio in the window that opens the breaker (default 0.5), in (0, 1].
    pub failure_ratio: f64,
    /// Tumbling window of the counts (default 10 s).
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Calls in the window before the ratio counts (default 10).
    pub min_calls: u32,
    /// How long it stays open before a trial call (default 30 s).
    #[serde(with = "humantime_serde")]
    pub break_duration: Duration,
    /// Trial calls admitted while half-open, fleet-wide (default 1).
    pub half_open_max_calls: u32,
    /// How long a replica serves a closed state from memory without asking Redis
    /// (default 250 ms): the staleness bound of a trip for a replica that keeps admitting.
    #[serde(with = "humantime_serde")]
    pub closed_cache_ttl: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            namespace: None,
            failure_ratio: 0.5,
            window: Duration::from_secs(10),
            min_calls: 10,
            break_duration: Duration::from_secs(30),
            half_open_max_calls: 1,
            closed_cache_ttl: Duration::from_millis(250),
        }
    }
}

/// One rate-limit policy: a token bucket per route, shared by the fleet.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Key namespace; defaults to the policy name.
    pub namespace: Option<String>,
    /// Permits per `per` (default 100).
    pub permits: u32,
    /// The period of `permits` (default 1 s).
    #[serde(with = "humantime_serde")]
    pub per: Duration,
    /// Bucket capacity: the most permits granted at once after idling (default `permits`).
    pub burst: Option<u32>,
    /// While Redis is unreachable each replica decides alone with a local bucket of
    /// `fallback_share × permits` per `per` (default 1.0, as forze: the fleet may then grant
    /// up to replicas × permits; set 1/replicas to keep the fleet's rate).
    pub fallback_share: f64,
    /// Decide concurrent requests on one route together (default true): those that arrive
    /// while a decision of the route is in flight are decided by one script call, each in
    /// arrival order, on one reading of the server clock.
    pub coalesce: bool,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            namespace: None,
            permits: 100,
            per: Duration::from_secs(1),
            burst: None,
            fallback_share: 1.0,
            coalesce: true,
        }
    }
}

impl RateLimitConfig {
    /// The bucket capacity.
    pub fn capacity(&self) -> u32 {
        self.burst.unwrap_or(self.permits)
    }

    /// Refill rate in permits per millisecond.
    pub fn rate_per_ms(&self) -> f64 {
        f64::from(self.permits) / (self.per.as_secs_f64() * 1000.0)
    }
}

/// One search-result snapshot resource.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SnapshotConfig {
    /// Key namespace; defaults to the resource name.
    pub namespace: Option<String>,
    /// Require a tenant on every operation and isolate tenants' runs (default false).
    pub tenant_aware: bool,
    /// Life of a run, counted from its `begin` (or `put`), for all its keys at once
    /// (default 5 min).
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// Most ids one run may hold (default 50 000).
    pub max_ids: u64,
    /// Push a run's expiry to at least now + this on every page read, like a search engine's
    /// point-in-time keep-alive. Off by default.
    #[serde(with = "humantime_serde")]
    pub keep_alive: Option<Duration>,
    /// Ids per append when `put` writes a run (default 5 000).
    pub chunk_size: usize,
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        SnapshotConfig {
            namespace: None,
            tenant_aware: false,
            ttl: Duration::from_secs(300),
            max_ids: 50_000,
            keep_alive: None,
            chunk_size: 5_000,
        }
    }
}

/// One idempotency record resource.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdempotencyConfig {
    /// Key namespace; defaults to the resource name.
    pub namespace: Option<String>,
    /// Require a tenant on every operation and isolate tenants' records (default false).
    pub tenant_aware: bool,
    /// How long a claim that was neither committed nor failed blocks its key before another
    /// attempt may take it over (default 5 min).
    #[serde(with = "humantime_serde")]
    pub pending_lease: Duration,
    /// How long a record is kept, counted from the claim and again from the commit
    /// (default 24 h).
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// How often `begin_wait` looks again at a pending claim (default 50 ms).
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
}

impl Default for IdempotencyConfig {
    fn default() -> Self {
        IdempotencyConfig {
            namespace: None,
            tenant_aware: false,
            pending_lease: Duration::from_secs(300),
            retention: Duration::from_secs(24 * 3600),
            poll_interval: Duration::from_millis(50),
        }
    }
}

/// One distributed lock resource.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LockConfig {
    /// Key namespace; defaults to the resource name.
    pub namespace: Option<String>,
    /// Require a tenant on every operation and isolate tenants' locks (default false).
    pub tenant_aware: bool,
    /// Lease of an acquisition (default 30 s).
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// How often the heartbeater renews a held lease (default a third of the lease).
    #[serde(with = "humantime_serde")]
    pub extend_every: Option<Duration>,
    /// Taken off the lease for the holder's local deadline, for clock drift and the time an
    /// acquire or extend reply spends in flight (default a tenth of the lease).
    #[serde(with = "humantime_serde")]
    pub drift_margin: Option<Duration>,
    /// Shortest pause between attempts of `acquire` (default 20 ms); doubles up to
    /// `retry_max`; each pause is jittered to 50–100 % of its value.
    #[serde(with = "humantime_serde")]
    pub retry_min: Duration,
    /// Longest pause between attempts of `acquire` (default 200 ms).
    #[serde(with = "humantime_serde")]
    pub retry_max: Duration,
    /// Let a lock's fence key (the last token handed out) expire this long after the lease of
    /// its last acquisition ends (default: never). Tokens stay strictly increasing across the
    /// expiry (the next token is at least the server clock in microseconds, which has moved on
    /// by at least this much) unless the server clock steps back by more than this. At least
    /// 1 s. Without it, one fence key per lock name ever used stays in Redis.
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub fence_idle: Option<Duration>,
    /// Wake waiters of `acquire` by the invalidation push of the lock key (through the
    /// tracking session) instead of only polling: a released lock is handed over in about
    /// one round trip. Polling with backoff stays as the fallback while tracking is down.
    /// Costs one push per change of a lock key (acquire, renewal, release) to every replica
    /// (default false).
    pub wake_waiters: bool,
}

impl Default for LockConfig {
    fn default() -> Self {
        LockConfig {
            namespace: None,
            tenant_aware: false,
            lease: Duration::from_secs(30),
            extend_every: None,
            drift_margin: None,
            retry_min: Duration::from_millis(20),
            retry_max: Duration::from_millis(200),
            fence_idle: None,
            wake_waiters: false,
        }
    }
}

impl LockConfig {
    /// The fence key's time to live: the lease plus `fence_idle`, when set.
    pub fn fence_ttl(&self) -> Option<Duration> {
        self.fence_idle.map(|idle| self.lease.saturating_add(idle))
    }

    /// The renewal period: `extend_every`, or a third of the lease.
    pub fn extend_period(&self) -> Duration {
        self.extend_every.unwrap_or(self.lease / 3)
    }

    /// The drift margin: `drift_margin`, or a tenth of the lease.
    pub fn drift(&self) -> Duration {
        self.drift_margin.unwrap_or(self.lease / 10)
    }
}

/// The in-process L1 of a cache namespace.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct L1Config {
    /// Most entries held (default 10 000).
    pub max_entries: usize,
    /// Most bytes held, keys and values and 64 bytes per entry (default 64 MiB).
    pub max_bytes: usize,
    /// Longest life of an entry (default 30 s); must be below the cache's `ttl`. An entry also
    /// never outlives the Redis key it was read from. This is the staleness backstop.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// Serve stale while Redis is unreachable (default: off). When tracking is lost, the L1's
    /// entries are kept aside instead of dropped, and `Cache::get_with_freshness` answers
    /// with one of them, marked stale, when the read cannot reach Redis, for at most this
    /// long after the loss. Never served as fresh: they are dropped when tracking is
    /// confirmed again.
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub serve_stale_for: Option<Duration>,
    /// Coalesce concurrent misses of one key (default true): callers that miss a key while
    /// a read of it is in flight, with nothing invalidating the key since it was sent, wait
    /// for that read instead of sending their own. Their answer is as current as an L1 fill
    /// of the same read.
    pub coalesce_misses: bool,
}

impl Default for L1Config {
    fn default() -> Self {
        L1Config {
            max_entries: 10_000,
            max_bytes: 64 << 20,
            ttl: Duration::from_secs(30),
            serve_stale_for: None,
            coalesce_misses: true,
        }
    }
}

impl ResourceConfig for CounterConfig {
    const SECTION: &'static str = "counters";
    fn namespace_setting(&self) -> Option<&str> {
        self.namespace.as_deref()
    }
    fn check(&self, _field: &dyn Fn(&str) -> String) -> Result<()> {
        Ok(())
    }
}

impl ResourceConfig for CacheConfig {
    const SECTION: &'static str = "caches";
    fn namespace_setting(&self) -> Option<&str> {
        self.namespace.as_deref()
    }
    fn check(&self, field: &dyn Fn(&str) -> String) -> Result<()> {
        if self.ttl < Duration::from_millis(1) {
            return Err(Error::config(field("ttl"), "must be at least 1ms"));
        }
        if self
            .sliding_ttl
            .is_some_and(|s| s.is_zero() || s > self.ttl)
        {
            return Err(Error::config(
                field("sliding_ttl"),
                "must be greater than zero and not above ttl",
            ));
        }
        if let Some(l1) = &self.l1 {
            if l1.ttl.is_zero() || l1.ttl >= self.ttl {
                return Err(Error::config(
                    field("l1.ttl"),
                    "must be greater than zero and strictly below the cache ttl",
                ));
            }
            if l1.max_entries == 0 || l1.max_bytes == 0 {
                return Err(Error::config(
                    field("l1"),
                    "max_entries and max_bytes must be greater than zero",
                ));
            }
            if l1.serve_stale_for.is_some() && self.routed {
                // A routed L1 is never tracked, so no loss of tracking ever keeps it aside.
                return Err(Error::config(
                    field("l1.serve_stale_for"),
                    "has no effect on a routed cache (its L1 is not tracked); remove it",
                ));
            }
            if l1.serve_stale_for.is_some_and(|d| d.is_zero()) {
                return Err(Error::config(
                    field("l1.serve_stale_for"),
                    "must be greater than zero (leave it out to never serve stale)",
                ));
            }
        }
        Ok(())
    }
}

impl ResourceConfig for BreakerConfig {
    const SECTION: &'static str = "breakers";
    fn namespace_setting(&self) -> Option<&str> {
        self.namespace.as_deref()
    }
    fn check(&self, field: &dyn Fn(&str) -> String) -> Result<()> {
        if !(self.failure_ratio > 0.0 && self.failure_ratio <= 1.0) {
            return Err(Error::config(field("failure_ratio"), "must be in (0, 1]"));
        }
        const DAY: Duration = Duration::from_secs(24 * 3600);
        for (f, d) in [
            ("window", self.window),
            ("break_duration", self.break_duration),
            (
                "closed_cache_ttl",
                self.closed_cache_ttl.max(Duration::from_millis(1)),
            ),
        ] {
            if d < Duration::from_millis(1) || d > DAY {
                return Err(Error::config(field(f), "must be between 1ms and 24h"));
            }
        }
        if self.min_calls == 0 || self.half_open_max_calls == 0 {
            return Err(Error::config(
                field("min_calls"),
                "min_calls and half_open_max_calls must be at least 1",
            ));
        }
        Ok(())
    }
}

impl ResourceConfig for RateLimitConfig {
    const SECTION: &'static str = "rate_limits";
    fn namespace_setting(&self) -> Option<&str> {
        self.namespace.as_deref()
    }
    fn check(&self, field: &dyn Fn(&str) -> String) -> Result<()> {
        if self.permits == 0 {
            return Err(Error::config(field("permits"), "must be at least 1"));
        }
        if self.per < Duration::from_millis(1) || self.per > Duration::from_secs(366 * 24 * 3600) {
            return Err(Error::config(
                field("per"),
                "must be between 1ms and 366 days",
            ));
        }
        if !self.per.subsec_nanos().is_multiple_of(1_000_000) {
            // The script takes the rate as permits per whole milliseconds: a fraction would
            // be cut off there, and the fleet would grant more than the local bucket.
            return Err(Error::config(
                field("per"),
                "must be a whole number of milliseconds",
            ));
        }
        if self.burst == Some(0) {
            return Err(Error::config(field("burst"), "must be at least 1"));
        }
        if !(self.fallback_share > 0.0 && self.fallback_share <= 1.0) {
            return Err(Error::config(field("fallback_share"), "must be in (0, 1]"));
        }
        Ok(())
    }
}

impl ResourceConfig for SnapshotConfig {
    const SECTION: &'static str = "snapshots";
    fn namespace_setting(&self) -> Option<&str> {
        self.namespace.as_deref()
    }
    fn check(&self, field: &dyn Fn(&str) -> String) -> Result<()> {
        if self.ttl < Duration::from_millis(10) {
            return Err(Error::config(field("ttl"), "must be at least 10ms"));
        }
        if self.max_ids == 0 {
            return Err(Error::config(field("max_ids"), "must be greater than zero"));
        }
        if self.chunk_size == 0 || self.chunk_size > 7_000 {
            return Err(Error::config(
                field("chunk_size"),
                "must be between 1 and 7000",
            ));
        }
        if self.keep_alive.is_some_and(|k| k.is_zero()) {
            return Err(Error::config(
                field("keep_alive"),
                "must be greater than zero",
            ));
        }
        Ok(())
    }
}

impl ResourceConfig for IdempotencyConfig {
    const SECTION: &'static str = "idempotency";
    fn namespace_setting(&self) -> Option<&str> {
        self.namespace.as_deref()
    }
    fn check(&self, field: &dyn Fn(&str) -> String) -> Result<()> {
        if self.pending_lease < Duration::from_millis(10) {
            return Err(Error::config(
                field("pending_lease"),
                "must be at least 10ms",
            ));
        }
        if self.retention < self.pending_lease {
            return Err(Error::config(
                field("retention"),
                "must not be below pending_lease",
            ));
        }
        if self.poll_interval.is_zero() {
            return Err(Error::config(
                field("poll_interval"),
                "must be greater than zero",
            ));
        }
        Ok(())
    }
}

impl ResourceConfig for LockConfig {
    const SECTION: &'static str = "locks";
    fn namespace_setting(&self) -> Option<&str> {
        self.namespace.as_deref()
    }
    fn check(&self, field: &dyn Fn(&str) -> String) -> Result<()> {
        if self.lease < Duration::from_millis(10) {
            return Err(Error::config(field("lease"), "must be at least 10ms"));
        }
        if self.drift() >= self.lease {
            return Err(Error::config(
                field("drift_margin"),
                "must be below the lease",
            ));
        }
        if self.extend_period().is_zero() || self.extend_period() >= self.lease - self.drift() {
            return Err(Error::config(
                field("extend_every"),
                "must be greater than zero and below the lease minus the drift margin",
            ));
        }
        if self.retry_min.is_zero() || self.retry_max < self.retry_min {
            return Err(Error::config(
                field("retry_min"),
                "must be greater than zero and not above retry_max",
            ));
        }
        if self
            .fence_idle
            .is_some_and(|idle| idle < Duration::from_secs(1))
        {
            // Shorter, and a server clock stepping back by that little would break the
            // ordering of tokens across an expiry.
            return Err(Error::config(field("fence_idle"), "must be at least 1s"));
        }
        Ok(())
    }
}

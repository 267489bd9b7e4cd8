//! The configuration tree.
//!
//! One serde tree ([`Config`]) read from TOML (or any serde format), durations written as
//! humantime strings (`"250ms"`, `"30s"`, `"24h"`). Every field has a documented default, so an
//! empty document is a valid configuration: embedded local mode with no resources.
//! [`Config::validate`] checks everything at start and names the offending field in the error
//! (`counters.orders.namespace`). The Redis URL is a [`RedisUrl`], whose `Debug` and `Display`
//! never show the password.
//!
//! ```
//! let cfg = forze_redis::Config::from_toml_str(r#"
//!     [redis]
//!     url = "redis://:s3cret@127.0.0.1:7000"
//!     command_timeout = "500ms"
//!
//!     [counters.orders]
//!     fallback = "local"
//! "#).unwrap();
//! assert!(!format!("{cfg:?}").contains("s3cret"));
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::error::{Error, Result};
use crate::keys::{KeyPrefix, Namespace};
use crate::tls::TlsConfig;

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Redis connection. Absent: embedded local mode, every contract on process-local state.
    pub redis: Option<RedisConfig>,
    /// First segment of every Redis key (default `forze`), so deployments can share a server.
    pub key_prefix: String,
    /// Restart and shutdown policy of the actor tree.
    pub supervision: SupervisionConfig,
    /// Counter resources by name.
    pub counters: BTreeMap<String, CounterConfig>,
    /// Cache namespaces by name.
    pub caches: BTreeMap<String, CacheConfig>,
    /// Distributed lock resources by name.
    pub locks: BTreeMap<String, LockConfig>,
    /// Idempotency record resources by name.
    pub idempotency: BTreeMap<String, IdempotencyConfig>,
    /// Search-result snapshot resources by name.
    pub snapshots: BTreeMap<String, SnapshotConfig>,
    /// Rate-limit policies by name.
    pub rate_limits: BTreeMap<String, RateLimitConfig>,
    /// Circuit-breaker policies by name.
    pub breakers: BTreeMap<String, BreakerConfig>,
    /// Tenant-routed endpoints, for resources with `routed = true`.
    pub routing: RoutingConfig,
    /// The local clock breakers and rate limiters read (the system clock; not configurable
    /// from a file). Tests inject a skewed one with [`Config::with_clock`].
    #[serde(skip)]
    pub clock: crate::clock::SharedClock,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            redis: None,
            key_prefix: "forze".into(),
            supervision: SupervisionConfig::default(),
            counters: BTreeMap::new(),
            caches: BTreeMap::new(),
            locks: BTreeMap::new(),
            idempotency: BTreeMap::new(),
            snapshots: BTreeMap::new(),
            rate_limits: BTreeMap::new(),
            breakers: BTreeMap::new(),
            routing: RoutingConfig::default(),
            clock: Default::default(),
        }
    }
}

/// Tenant routing (`[routing]`): which tenants live on their own endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// Endpoint pools kept open at most; the least recently used is closed beyond it
    /// (default 16).
    pub max_pools: usize,
    /// Tenant → endpoint: a URL (any `redis.url` form), or a table `{ url = "…", tls = {…} }`
    /// for an endpoint whose TLS settings differ from `[redis.tls]`. Tenants with the same
    /// endpoint share a pool. Connection settings other than the URL and TLS come from
    /// `[redis]` (or its defaults); an endpoint without its own `tls` uses `[redis.tls]`.
    pub tenants: BTreeMap<String, RouteEndpoint>,
}

/// Where a routed tenant's data lives: a URL and, where they differ from `[redis.tls]`, its
/// own TLS settings.
#[derive(Debug, Clone)]
pub struct RouteEndpoint {
    /// The endpoint's URL.
    pub url: RedisUrl,
    /// TLS settings of this endpoint; `None` uses `[redis.tls]`.
    pub tls: Option<TlsConfig>,
}

impl RouteEndpoint {
    /// Whether `other` is the same endpoint: same URL (credentials included) and same TLS
    /// settings. Same endpoints share a pool.
    pub fn same_as(&self, other: &RouteEndpoint) -> bool {
        self.url.expose() == other.url.expose() && self.tls == other.tls
    }

    /// The connection settings of this endpoint: `template` with its URL and TLS.
    pub fn redis_config(&self, template: &RedisConfig) -> RedisConfig {
        let mut cfg = template.clone();
        cfg.url = self.url.clone();
        if self.tls.is_some() {
            cfg.tls = self.tls.clone();
        }
        cfg
    }
}

impl From<RedisUrl> for RouteEndpoint {
    fn from(url: RedisUrl) -> Self {
        RouteEndpoint { url, tls: None }
    }
}

impl<'de> Deserialize<'de> for RouteEndpoint {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Table {
            url: RedisUrl,
            #[serde(default)]
            tls: Option<TlsConfig>,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Url(RedisUrl),
            Table(Table),
        }
        Ok(match Form::deserialize(d)? {
            Form::Url(url) => RouteEndpoint { url, tls: None },
            Form::Table(t) => RouteEndpoint {
                url: t.url,
                tls: t.tls,
            },
        })
    }
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            max_pools: 16,
            tenants: BTreeMap::new(),
        }
    }
}

/// The Redis connection (section 6 of the spec).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://`, `rediss://`, `redis-cluster://`, `redis-sentinel://`, `redis+unix://` (and
    /// the `valkey…` spellings). Required.
    pub url: RedisUrl,
    /// Connections in the pool (default 4).
    #[serde(default = "defaults::pool_size")]
    pub pool_size: usize,
    /// Time allowed to open one connection (default 2 s).
    #[serde(default = "defaults::connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Per-command time limit (default 1 s). A write that exceeds it is `OutcomeUnknown`.
    #[serde(default = "defaults::command_timeout", with = "humantime_serde")]
    pub command_timeout: Duration,
    /// A connection with a request unanswered this long is closed and reconnected
    /// (default 2 s). This is what detects a black-holed peer.
    #[serde(default = "defaults::unresponsive_timeout", with = "humantime_serde")]
    pub unresponsive_timeout: Duration,
    /// How often the pool actor probes connection health with `PING` (default 500 ms).
    #[serde(default = "defaults::health_interval", with = "humantime_serde")]
    pub health_interval: Duration,
    /// Reconnect backoff.
    #[serde(default)]
    pub reconnect: ReconnectConfig,
    /// TCP keepalive idle time (default 30 s); `"0s"` disables it.
    #[serde(default = "defaults::tcp_keepalive", with = "humantime_serde")]
    pub tcp_keepalive: Duration,
    /// Linux `TCP_USER_TIMEOUT` (default 10 s); `"0s"` disables it.
    #[serde(default = "defaults::tcp_user_timeout", with = "humantime_serde")]
    pub tcp_user_timeout: Duration,
    /// Set `TCP_NODELAY` (default `false`, fred's default). fred already batches queued
    /// commands into one flush; leaving Nagle on lets the kernel coalesce the flushes of many
    /// concurrent callers too (about 20 % more throughput at 64 callers on loopback), at the
    /// cost of up to one round trip of added latency for a write sent while another is
    /// unacknowledged. Set `true` for latency-sensitive, low-concurrency services.
    #[serde(default)]
    pub tcp_nodelay: bool,
    /// `CLIENT SETNAME` of every connection (default `forze`).
    #[serde(default = "defaults::client_name")]
    pub client_name: String,
    /// `[redis.tls]`: TLS settings. A `rediss://`/`valkeys://` URL turns TLS on with the
    /// defaults (platform roots, TLS 1.2 or later); this table turns it on for any TCP URL and
    /// sets the CA bundle, the client certificate for mutual TLS, a server-name override and
    /// the minimum version. See `docs/operations.md`.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
}

/// Reconnect backoff of the connection pool: exponential, jittered, forever by default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReconnectConfig {
    /// First delay (default 100 ms).
    #[serde(with = "humantime_serde")]
    pub min_delay: Duration,
    /// Largest delay (default 5 s).
    #[serde(with = "humantime_serde")]
    pub max_delay: Duration,
    /// Random jitter added to each delay (default 50 ms).
    #[serde(with = "humantime_serde")]
    pub jitter: Duration,
    /// Attempts in one run of fred's reconnect loop; 0 = unbounded (default 0). When a run
    /// gives up, the connection task is started again after the backoff (see
    /// `RedisConnection::connect_in_background`): the pool itself never gives up, it only
    /// pauses, since a service that outlives a Redis outage must find Redis again.
    pub max_attempts: u32,
}

impl Default for ReconnectConfig {
    fn default() -> Self {
        ReconnectConfig {
            min_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
            jitter: Duration::from_millis(50),
            max_attempts: 0,
        }
    }
}

/// Restart and shutdown policy of the actor tree (section 2 of the spec).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SupervisionConfig {
    /// Prefix of every registered actor name (default `forze`: `forze.supervisor`,
    /// `forze.pool`…). Give each supervisor in one process its own.
    pub name_prefix: String,
    /// First restart delay of a failed child (default 100 ms), doubled per recent restart.
    #[serde(with = "humantime_serde")]
    pub restart_backoff_min: Duration,
    /// Largest restart delay (default 5 s).
    #[serde(with = "humantime_serde")]
    pub restart_backoff_max: Duration,
    /// Restarts allowed within `restart_window` before the supervisor fails to its parent
    /// (default 10).
    pub max_restarts: u32,
    /// The window of the restart intensity limit (default 60 s).
    #[serde(with = "humantime_serde")]
    pub restart_window: Duration,
    /// Time limit of a request that needs an actor's mailbox (default 5 s).
    #[serde(with = "humantime_serde")]
    pub call_timeout: Duration,
    /// Time allowed for the graceful shutdown of each stage (default 10 s).
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
}

impl Default for SupervisionConfig {
    fn default() -> Self {
        SupervisionConfig {
            name_prefix: "forze".into(),
            restart_backoff_min: Duration::from_millis(100),
            restart_backoff_max: Duration::from_secs(5),
            max_restarts: 10,
            restart_window: Duration::from_secs(60),
            call_timeout: Duration::from_secs(5),
            shutdown_timeout: Duration::from_secs(10),
        }
    }
}

/// What a resource does while Redis is unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
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
#[derive(Debug, Clone, Deserialize, Default)]
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
}

/// One cache namespace.
#[derive(Debug, Clone, Deserialize)]
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
#[derive(Debug, Clone, Deserialize)]
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
#[derive(Debug, Clone, Deserialize)]
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
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            namespace: None,
            permits: 100,
            per: Duration::from_secs(1),
            burst: None,
            fallback_share: 1.0,
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
#[derive(Debug, Clone, Deserialize)]
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
#[derive(Debug, Clone, Deserialize)]
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
#[derive(Debug, Clone, Deserialize)]
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
    /// `retry_max`, with full jitter.
    #[serde(with = "humantime_serde")]
    pub retry_min: Duration,
    /// Longest pause between attempts of `acquire` (default 200 ms).
    #[serde(with = "humantime_serde")]
    pub retry_max: Duration,
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
        }
    }
}

impl LockConfig {
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
#[derive(Debug, Clone, Deserialize)]
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
}

impl Default for L1Config {
    fn default() -> Self {
        L1Config {
            max_entries: 10_000,
            max_bytes: 64 << 20,
            ttl: Duration::from_secs(30),
        }
    }
}

mod defaults {
    use std::time::Duration;
    pub fn pool_size() -> usize {
        4
    }
    pub fn connect_timeout() -> Duration {
        Duration::from_secs(2)
    }
    pub fn command_timeout() -> Duration {
        Duration::from_secs(1)
    }
    pub fn unresponsive_timeout() -> Duration {
        Duration::from_secs(2)
    }
    pub fn health_interval() -> Duration {
        Duration::from_millis(500)
    }
    pub fn tcp_keepalive() -> Duration {
        Duration::from_secs(30)
    }
    pub fn tcp_user_timeout() -> Duration {
        Duration::from_secs(10)
    }
    pub fn client_name() -> String {
        "forze".into()
    }
}

impl RedisConfig {
    /// A configuration for `url` with every other field at its default.
    pub fn new(url: impl Into<String>) -> Self {
        RedisConfig {
            url: RedisUrl::new(url),
            pool_size: defaults::pool_size(),
            connect_timeout: defaults::connect_timeout(),
            command_timeout: defaults::command_timeout(),
            unresponsive_timeout: defaults::unresponsive_timeout(),
            health_interval: defaults::health_interval(),
            reconnect: ReconnectConfig::default(),
            tcp_keepalive: defaults::tcp_keepalive(),
            tcp_user_timeout: defaults::tcp_user_timeout(),
            tcp_nodelay: false,
            client_name: defaults::client_name(),
            tls: None,
        }
    }

    /// Whether connections are encrypted: the URL's scheme says so, or `[redis.tls]` is set.
    pub fn uses_tls(&self) -> bool {
        self.url.has_tls_scheme() || self.tls.is_some()
    }

    /// The TLS settings in force: `[redis.tls]`, or the defaults for a TLS URL without it.
    pub fn tls_settings(&self) -> Option<TlsConfig> {
        match &self.tls {
            Some(t) => Some(t.clone()),
            None if self.url.has_tls_scheme() => Some(TlsConfig::default()),
            None => None,
        }
    }

    /// Validate the URL and the TLS settings of one endpoint (`field` names its table).
    pub(crate) fn validate_endpoint(&self, field: &str) -> Result<()> {
        let fred = self.url.to_fred_config()?;
        if self.uses_tls() {
            if matches!(fred.server, fred::types::config::ServerConfig::Unix { .. }) {
                return Err(Error::config(
                    field,
                    "TLS is not available over a unix socket; use a TCP URL",
                ));
            }
            if let Some(t) = &self.tls {
                t.validate(&format!("{field}.tls"))?;
                // fred verifies the primary that sentinels name by its announced address and
                // offers no name mapping for it: a name override could never be honoured.
                if t.server_name.is_some()
                    && matches!(
                        fred.server,
                        fred::types::config::ServerConfig::Sentinel { .. }
                    )
                {
                    return Err(Error::config(
                        format!("{field}.tls.server_name"),
                        "not supported behind Sentinel: the primary is verified by the address \
                         the sentinels announce, so its certificate must carry that address",
                    ));
                }
            }
        }
        crate::tls::refuse_unsupported(self.uses_tls(), crate::tls::TLS_SUPPORTED, field)
    }

    fn validate(&self) -> Result<()> {
        self.validate_endpoint("redis")?;
        if self.pool_size == 0 || self.pool_size > 256 {
            return Err(Error::config(
                "redis.pool_size",
                "must be between 1 and 256",
            ));
        }
        for (field, d) in [
            ("redis.connect_timeout", self.connect_timeout),
            ("redis.command_timeout", self.command_timeout),
            ("redis.unresponsive_timeout", self.unresponsive_timeout),
            ("redis.health_interval", self.health_interval),
            ("redis.reconnect.min_delay", self.reconnect.min_delay),
        ] {
            if d.is_zero() {
                return Err(Error::config(field, "must be greater than zero"));
            }
        }
        if self.reconnect.max_delay < self.reconnect.min_delay {
            return Err(Error::config(
                "redis.reconnect.max_delay",
                "must not be below redis.reconnect.min_delay",
            ));
        }
        if self.client_name.is_empty()
            || !self
                .client_name
                .chars()
                .all(|c| c.is_ascii_graphic() && c != ' ')
        {
            return Err(Error::config(
                "redis.client_name",
                "must be non-empty printable ASCII without spaces",
            ));
        }
        Ok(())
    }
}

impl Config {
    /// This configuration with another local clock for breakers and rate limiters (tests and
    /// drills: a replica whose clock is skewed).
    pub fn with_clock(mut self, clock: impl crate::clock::Clock + 'static) -> Self {
        self.clock = crate::clock::SharedClock(std::sync::Arc::new(clock));
        self
    }

    /// Parse and validate a TOML document. Errors name the offending field.
    pub fn from_toml_str(text: &str) -> Result<Self> {
        let de = toml::Deserializer::parse(text)
            .map_err(|e| Error::config("<document>", e.message().to_string()))?;
        let cfg: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            Error::config(path, e.into_inner().message().to_string())
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Read, parse and validate a TOML file.
    pub fn from_toml_file(path: impl AsRef<std::path::Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::config("<file>", format!("cannot read {}: {e}", path.display())))?;
        Self::from_toml_str(&text)
    }

    /// Check every field; the error names the first offending one.
    pub fn validate(&self) -> Result<()> {
        if let Some(redis) = &self.redis {
            redis.validate()?;
        }
        self.key_prefix()?;
        validate_name_prefix(&self.supervision.name_prefix)?;
        let s = &self.supervision;
        if s.restart_backoff_max < s.restart_backoff_min {
            return Err(Error::config(
                "supervision.restart_backoff_max",
                "must not be below supervision.restart_backoff_min",
            ));
        }
        if s.restart_window.is_zero() {
            return Err(Error::config(
                "supervision.restart_window",
                "must be greater than zero",
            ));
        }
        for (field, value) in [
            ("supervision.restart_backoff_min", s.restart_backoff_min),
            ("supervision.shutdown_timeout", s.shutdown_timeout),
        ] {
            if value.is_zero() {
                return Err(Error::config(field, "must be greater than zero"));
            }
        }
        if s.call_timeout.is_zero() {
            return Err(Error::config(
                "supervision.call_timeout",
                "must be greater than zero",
            ));
        }
        if self.routing.max_pools == 0 {
            return Err(Error::config("routing.max_pools", "must be at least 1"));
        }
        let template = self
            .redis
            .clone()
            .unwrap_or_else(|| RedisConfig::new("redis://127.0.0.1:6379"));
        for (tenant, endpoint) in &self.routing.tenants {
            crate::keys::TenantId::new(tenant.as_str())
                .map_err(|_| Error::config("routing.tenants", "a tenant name is not valid"))?;
            endpoint
                .redis_config(&template)
                .validate_endpoint(&format!("routing.tenants.{tenant}"))
                .map_err(|e| match e {
                    // The URL parser names `redis.url`: name the tenant's entry instead.
                    Error::Config { field, message } if field == "redis.url" => Error::config(
                        format!("routing.tenants.{tenant}"),
                        format!("the URL of tenant `{tenant}` is not valid: {message}"),
                    ),
                    other => other,
                })?;
        }
        let mut seen: BTreeMap<String, String> = BTreeMap::new();
        for (name, counter) in &self.counters {
            validate_resource_name(&format!("counters.{name}"), name)?;
            let ns = self.counter_namespace(name, counter)?;
            if let Some(other) = seen.insert(ns.as_str().to_string(), name.clone()) {
                return Err(Error::config(
                    format!("counters.{name}.namespace"),
                    format!("namespace `{ns}` is already used by counters.{other}"),
                ));
            }
        }
        let mut seen: BTreeMap<String, String> = BTreeMap::new();
        for (name, cache) in &self.caches {
            let field = |f: &str| format!("caches.{name}.{f}");
            validate_resource_name(&format!("caches.{name}"), name)?;
            let ns = self.cache_namespace(name, cache)?;
            if let Some(other) = seen.insert(ns.as_str().to_string(), name.clone()) {
                return Err(Error::config(
                    field("namespace"),
                    format!("namespace `{ns}` is already used by caches.{other}"),
                ));
            }
            if cache.ttl < Duration::from_millis(1) {
                return Err(Error::config(field("ttl"), "must be at least 1ms"));
            }
            if cache
                .sliding_ttl
                .is_some_and(|s| s.is_zero() || s > cache.ttl)
            {
                return Err(Error::config(
                    field("sliding_ttl"),
                    "must be greater than zero and not above ttl",
                ));
            }
            if let Some(l1) = &cache.l1 {
                if l1.ttl.is_zero() || l1.ttl >= cache.ttl {
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
            }
        }
        let mut seen: BTreeMap<String, String> = BTreeMap::new();
        for (name, c) in &self.breakers {
            let field = |f: &str| format!("breakers.{name}.{f}");
            validate_resource_name(&format!("breakers.{name}"), name)?;
            let ns = self.breaker_namespace(name, c)?;
            if let Some(other) = seen.insert(ns.as_str().to_string(), name.clone()) {
                return Err(Error::config(
                    field("namespace"),
                    format!("namespace `{ns}` is already used by breakers.{other}"),
                ));
            }
            if !(c.failure_ratio > 0.0 && c.failure_ratio <= 1.0) {
                return Err(Error::config(field("failure_ratio"), "must be in (0, 1]"));
            }
            const DAY: Duration = Duration::from_secs(24 * 3600);
            for (f, d) in [
                ("window", c.window),
                ("break_duration", c.break_duration),
                (
                    "closed_cache_ttl",
                    c.closed_cache_ttl.max(Duration::from_millis(1)),
                ),
            ] {
                if d < Duration::from_millis(1) || d > DAY {
                    return Err(Error::config(field(f), "must be between 1ms and 24h"));
                }
            }
            if c.min_calls == 0 || c.half_open_max_calls == 0 {
                return Err(Error::config(
                    field("min_calls"),
                    "min_calls and half_open_max_calls must be at least 1",
                ));
            }
        }
        let mut seen: BTreeMap<String, String> = BTreeMap::new();
        for (name, c) in &self.rate_limits {
            let field = |f: &str| format!("rate_limits.{name}.{f}");
            validate_resource_name(&format!("rate_limits.{name}"), name)?;
            let ns = self.rate_limit_namespace(name, c)?;
            if let Some(other) = seen.insert(ns.as_str().to_string(), name.clone()) {
                return Err(Error::config(
                    field("namespace"),
                    format!("namespace `{ns}` is already used by rate_limits.{other}"),
                ));
            }
            if c.permits == 0 {
                return Err(Error::config(field("permits"), "must be at least 1"));
            }
            if c.per < Duration::from_millis(1) || c.per > Duration::from_secs(366 * 24 * 3600) {
                return Err(Error::config(
                    field("per"),
                    "must be between 1ms and 366 days",
                ));
            }
            if c.burst == Some(0) {
                return Err(Error::config(field("burst"), "must be at least 1"));
            }
            if !(c.fallback_share > 0.0 && c.fallback_share <= 1.0) {
                return Err(Error::config(field("fallback_share"), "must be in (0, 1]"));
            }
        }
        let mut seen: BTreeMap<String, String> = BTreeMap::new();
        for (name, c) in &self.snapshots {
            let field = |f: &str| format!("snapshots.{name}.{f}");
            validate_resource_name(&format!("snapshots.{name}"), name)?;
            let ns = self.snapshot_namespace(name, c)?;
            if let Some(other) = seen.insert(ns.as_str().to_string(), name.clone()) {
                return Err(Error::config(
                    field("namespace"),
                    format!("namespace `{ns}` is already used by snapshots.{other}"),
                ));
            }
            if c.ttl < Duration::from_millis(10) {
                return Err(Error::config(field("ttl"), "must be at least 10ms"));
            }
            if c.max_ids == 0 {
                return Err(Error::config(field("max_ids"), "must be greater than zero"));
            }
            if c.chunk_size == 0 || c.chunk_size > 7_000 {
                return Err(Error::config(
                    field("chunk_size"),
                    "must be between 1 and 7000",
                ));
            }
            if c.keep_alive.is_some_and(|k| k.is_zero()) {
                return Err(Error::config(
                    field("keep_alive"),
                    "must be greater than zero",
                ));
            }
        }
        let mut seen: BTreeMap<String, String> = BTreeMap::new();
        for (name, c) in &self.idempotency {
            let field = |f: &str| format!("idempotency.{name}.{f}");
            validate_resource_name(&format!("idempotency.{name}"), name)?;
            let ns = self.idempotency_namespace(name, c)?;
            if let Some(other) = seen.insert(ns.as_str().to_string(), name.clone()) {
                return Err(Error::config(
                    field("namespace"),
                    format!("namespace `{ns}` is already used by idempotency.{other}"),
                ));
            }
            if c.pending_lease < Duration::from_millis(10) {
                return Err(Error::config(
                    field("pending_lease"),
                    "must be at least 10ms",
                ));
            }
            if c.retention < c.pending_lease {
                return Err(Error::config(
                    field("retention"),
                    "must not be below pending_lease",
                ));
            }
            if c.poll_interval.is_zero() {
                return Err(Error::config(
                    field("poll_interval"),
                    "must be greater than zero",
                ));
            }
        }
        let mut seen: BTreeMap<String, String> = BTreeMap::new();
        for (name, lock) in &self.locks {
            let field = |f: &str| format!("locks.{name}.{f}");
            validate_resource_name(&format!("locks.{name}"), name)?;
            let ns = self.lock_namespace(name, lock)?;
            if let Some(other) = seen.insert(ns.as_str().to_string(), name.clone()) {
                return Err(Error::config(
                    field("namespace"),
                    format!("namespace `{ns}` is already used by locks.{other}"),
                ));
            }
            if lock.lease < Duration::from_millis(10) {
                return Err(Error::config(field("lease"), "must be at least 10ms"));
            }
            if lock.drift() >= lock.lease {
                return Err(Error::config(
                    field("drift_margin"),
                    "must be below the lease",
                ));
            }
            if lock.extend_period().is_zero() || lock.extend_period() >= lock.lease - lock.drift() {
                return Err(Error::config(
                    field("extend_every"),
                    "must be greater than zero and below the lease minus the drift margin",
                ));
            }
            if lock.retry_min.is_zero() || lock.retry_max < lock.retry_min {
                return Err(Error::config(
                    field("retry_min"),
                    "must be greater than zero and not above retry_max",
                ));
            }
        }
        Ok(())
    }

    /// The validated namespace of breaker policy `name`.
    pub fn breaker_namespace(&self, name: &str, c: &BreakerConfig) -> Result<Namespace> {
        Namespace::parse(
            &format!("breakers.{name}.namespace"),
            c.namespace.as_deref().unwrap_or(name),
        )
    }

    /// The validated namespace of rate-limit policy `name`.
    pub fn rate_limit_namespace(&self, name: &str, c: &RateLimitConfig) -> Result<Namespace> {
        Namespace::parse(
            &format!("rate_limits.{name}.namespace"),
            c.namespace.as_deref().unwrap_or(name),
        )
    }

    /// The validated namespace of snapshot resource `name`.
    pub fn snapshot_namespace(&self, name: &str, c: &SnapshotConfig) -> Result<Namespace> {
        Namespace::parse(
            &format!("snapshots.{name}.namespace"),
            c.namespace.as_deref().unwrap_or(name),
        )
    }

    /// The validated namespace of idempotency resource `name`.
    pub fn idempotency_namespace(&self, name: &str, c: &IdempotencyConfig) -> Result<Namespace> {
        Namespace::parse(
            &format!("idempotency.{name}.namespace"),
            c.namespace.as_deref().unwrap_or(name),
        )
    }

    /// The validated namespace of lock `name`.
    pub fn lock_namespace(&self, name: &str, lock: &LockConfig) -> Result<Namespace> {
        Namespace::parse(
            &format!("locks.{name}.namespace"),
            lock.namespace.as_deref().unwrap_or(name),
        )
    }

    /// The validated namespace of cache `name`.
    pub fn cache_namespace(&self, name: &str, cache: &CacheConfig) -> Result<Namespace> {
        Namespace::parse(
            &format!("caches.{name}.namespace"),
            cache.namespace.as_deref().unwrap_or(name),
        )
    }

    /// The validated key prefix.
    pub fn key_prefix(&self) -> Result<KeyPrefix> {
        KeyPrefix::parse("key_prefix", &self.key_prefix)
    }

    /// The validated namespace of counter `name`.
    pub fn counter_namespace(&self, name: &str, counter: &CounterConfig) -> Result<Namespace> {
        Namespace::parse(
            &format!("counters.{name}.namespace"),
            counter.namespace.as_deref().unwrap_or(name),
        )
    }
}

fn validate_resource_name(field: &str, name: &str) -> Result<()> {
    // Resource names become actor names and default namespaces: same charset as namespaces.
    Namespace::parse(field, name).map(|_| ())
}

fn validate_name_prefix(prefix: &str) -> Result<()> {
    KeyPrefix::parse("supervision.name_prefix", prefix).map(|_| ())
}

/// The URL schemes fred understands.
const SCHEMES: &[&str] = &[
    "redis",
    "rediss",
    "valkey",
    "valkeys",
    "redis-cluster",
    "rediss-cluster",
    "valkey-cluster",
    "valkeys-cluster",
    "redis-sentinel",
    "rediss-sentinel",
    "valkey-sentinel",
    "valkeys-sentinel",
    "redis+unix",
    "valkey+unix",
];

/// A Redis URL whose password never shows in `Debug` or `Display`.
#[derive(Clone)]
pub struct RedisUrl(String);

impl RedisUrl {
    /// Wrap a URL.
    pub fn new(url: impl Into<String>) -> Self {
        RedisUrl(url.into())
    }

    /// The URL as written, password included: for keying pools only, never for output.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with any password replaced by `***`.
    pub fn redacted(&self) -> String {
        redact_url(&self.0)
    }

    /// Whether the scheme asks for TLS (`rediss`, `valkeys` and their cluster and sentinel
    /// forms).
    pub fn has_tls_scheme(&self) -> bool {
        let scheme = self.0.split_once("://").map(|(s, _)| s).unwrap_or("");
        scheme.starts_with("rediss") || scheme.starts_with("valkeys")
    }

    /// The fred configuration for this URL's servers and credentials, **without TLS**: the
    /// TLS settings are applied by `connection` from `[redis.tls]` and the scheme, so this is
    /// never used alone to open a connection. RESP2: see `connection`. Errors never contain
    /// the URL.
    pub(crate) fn to_fred_config(&self) -> Result<fred::types::config::Config> {
        let (scheme, rest) = self.0.split_once("://").unwrap_or(("", ""));
        if !SCHEMES.contains(&scheme) {
            return Err(Error::config(
                "redis.url",
                format!(
                    "unsupported scheme `{scheme}`; expected one of {}",
                    SCHEMES.join(", ")
                ),
            ));
        }
        // fred would build its own TLS connector from a TLS scheme (or, without a TLS feature,
        // warn and connect in clear): parse the plain form and let `connection` decide.
        let plain = scheme
            .replacen("rediss", "redis", 1)
            .replacen("valkeys", "valkey", 1);
        let mut cfg =
            fred::types::config::Config::from_url(&format!("{plain}://{rest}")).map_err(|e| {
                // fred's message may quote the URL: report only the error kind and the
                // redacted URL.
                Error::config(
                    "redis.url",
                    format!("cannot parse {} ({:?})", self.redacted(), e.kind()),
                )
            })?;
        // The pool never needs pushes (the tracking subscriber owns its own RESP3
        // connection), and RESP2 replies are cheaper for fred to parse.
        cfg.version = fred::types::RespVersion::RESP2;
        Ok(cfg)
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedisUrl({})", self.redacted())
    }
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl<'de> Deserialize<'de> for RedisUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        Ok(RedisUrl(String::deserialize(d)?))
    }
}

/// Replace the password of `scheme://user:password@host…` and of query parameters whose
/// name contains `password` with `***`.
fn redact_url(url: &str) -> String {
    let mut out = url.to_string();
    if let Some(scheme_end) = out.find("://") {
        let auth_start = scheme_end + 3;
        // The last `@` ends the credentials even when an unescaped password holds `/`, `?`,
        // `#` or `@`. An `@` further on (in the query) only makes us hide more, never less.
        if let Some(at) = out[auth_start..].rfind('@') {
            let at = auth_start + at;
            if let Some(colon) = out[auth_start..at].find(':') {
                out.replace_range(auth_start + colon + 1..at, "***");
            } else if at > auth_start {
                // `redis://secret@host` is a password without a user.
                out.replace_range(auth_start..at, "***");
            }
        }
    }
    if let Some(q) = out.find('?') {
        let (head, query) = out.split_at(q + 1);
        // Everything after a password parameter is hidden too: an unescaped `&` in the
        // password would otherwise leak its tail as another "parameter".
        let mut hiding = false;
        let redacted: Vec<String> = query
            .split('&')
            .map(|kv| match kv.split_once('=') {
                _ if hiding => "***".to_string(),
                Some((k, _)) if k.to_ascii_lowercase().contains("password") => {
                    hiding = true;
                    format!("{k}=***")
                }
                _ => kv.to_string(),
            })
            .collect();
        out = format!("{head}{}", redacted.join("&"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_document_is_embedded_mode_with_defaults() {
        let cfg = Config::from_toml_str("").unwrap();
        assert!(cfg.redis.is_none());
        assert_eq!(cfg.key_prefix, "forze");
        assert_eq!(cfg.supervision.max_restarts, 10);
        assert_eq!(
            cfg.supervision.restart_backoff_min,
            Duration::from_millis(100)
        );
    }

    #[test]
    fn durations_are_humantime_strings() {
        let cfg = Config::from_toml_str(
            "[redis]\nurl = \"redis://127.0.0.1:7000\"\ncommand_timeout = \"250ms\"\n[supervision]\nrestart_window = \"2m\"",
        )
        .unwrap();
        let r = cfg.redis.unwrap();
        assert_eq!(r.command_timeout, Duration::from_millis(250));
        assert_eq!(r.pool_size, 4);
        assert_eq!(cfg.supervision.restart_window, Duration::from_secs(120));
    }

    #[test]
    fn errors_name_the_offending_field() {
        let cases = [
            (
                "[redis]\nurl = \"redis://h:1\"\ncommand_timeout = \"soon\"",
                "redis.command_timeout",
            ),
            (
                "[redis]\nurl = \"redis://h:1\"\npool_size = 0",
                "redis.pool_size",
            ),
            ("[redis]\nurl = \"nope://h\"", "redis.url"),
            (
                "[counters.orders]\nnamespace = \"a:b\"",
                "counters.orders.namespace",
            ),
            (
                "[counters.orders]\nfallback = \"maybe\"",
                "counters.orders.fallback",
            ),
            ("[counters.orders]\nbogus = 1", "counters.orders"),
            ("key_prefix = \"a{b\"", "key_prefix"),
            (
                "[counters.a]\nnamespace = \"x\"\n[counters.b]\nnamespace = \"x\"",
                "counters.b.namespace",
            ),
            (
                "[supervision]\nname_prefix = \"\"",
                "supervision.name_prefix",
            ),
        ];
        for (doc, field) in cases {
            let err = Config::from_toml_str(doc).unwrap_err();
            assert!(
                err.to_string().contains(field),
                "error for {doc:?} should name {field}: {err}"
            );
        }
    }

    #[test]
    fn passwords_never_show() {
        for url in [
            "redis://user:hunter2@host:6380/0",
            "redis://:hunter2@host:6380",
            "rediss://hunter2@host",
            "redis-sentinel://h:26379?sentinelServiceName=m&sentinelPassword=hunter2",
            // Unescaped separators inside the password.
            "redis://user:hun/ter2@host:6380/0",
            "redis://:hun?ter2@host",
            "redis://:hu@nter2@host:1/0",
            "redis://:hunter2#x@host",
            "redis-sentinel://h?sentinelPassword=hun&ter2&x=1",
        ] {
            let u = RedisUrl::new(url);
            for shown in [format!("{u:?}"), u.to_string()] {
                for secret in ["hunter2", "hun", "ter2", "nter2"] {
                    assert!(
                        !shown.contains(secret),
                        "{shown} shows part of the password"
                    );
                }
            }
        }
        let bad = Config::from_toml_str("[redis]\nurl = \"bogus://:hunter2@h\"").unwrap_err();
        assert!(!bad.to_string().contains("hunter2"), "{bad}");
        assert!(!format!("{bad:?}").contains("hunter2"), "{bad:?}");
    }

    #[test]
    fn example_file_parses() {
        let text = include_str!("../examples/forze.toml");
        Config::from_toml_str(text).unwrap();
    }

    #[test]
    fn tls_is_accepted_only_by_a_build_that_can_honour_it() {
        for text in [
            "[redis]\nurl = \"rediss://:hunter2@127.0.0.1:7000\"",
            "[redis]\nurl = \"valkeys-cluster://127.0.0.1:7000\"",
            "[redis]\nurl = \"redis://127.0.0.1:7000\"\n[redis.tls]\nmin_version = \"1.3\"",
        ] {
            let r = Config::from_toml_str(text);
            if crate::tls::TLS_SUPPORTED {
                assert!(r.unwrap().redis.unwrap().uses_tls(), "{text}");
            } else {
                let e = r.unwrap_err();
                assert_eq!(e.kind(), crate::ErrorKind::Config, "{text}");
                assert!(e.to_string().contains("`tls` cargo feature"), "{e}");
                assert!(!e.to_string().contains("hunter2"), "{e}");
            }
        }
        let plain = Config::from_toml_str("[redis]\nurl = \"redis://127.0.0.1:7000\"").unwrap();
        assert!(!plain.redis.unwrap().uses_tls());
    }

    #[test]
    fn tls_settings_are_checked() {
        for (text, field) in [
            (
                "[redis]\nurl = \"redis+unix:///tmp/r.sock\"\n[redis.tls]\n",
                "redis",
            ),
            (
                "[redis]\nurl = \"rediss://h:1\"\n[redis.tls]\nmin_version = \"1.1\"",
                "redis.tls.min_version",
            ),
            (
                "[redis]\nurl = \"rediss://h:1\"\n[redis.tls]\nkey_file = \"/k.pem\"",
                "redis.tls.cert_file",
            ),
            (
                "[redis]\nurl = \"rediss://h:1\"\n[redis.tls]\nserver_name = \"a b\"",
                "redis.tls.server_name",
            ),
            (
                "[redis]\nurl = \"rediss://h:1\"\n[redis.tls]\nverify = false",
                "redis.tls",
            ),
            (
                "[redis]\nurl = \"rediss-sentinel://h:1?sentinelServiceName=s\"\n\
                 [redis.tls]\nserver_name = \"redis.internal\"",
                "redis.tls.server_name",
            ),
        ] {
            let e = Config::from_toml_str(text).unwrap_err();
            assert!(e.to_string().contains(field), "{text}: {e}");
        }
    }

    #[test]
    fn a_routed_endpoint_may_carry_its_own_tls_table() {
        let c = Config::from_toml_str(
            "[routing.tenants]\nacme = \"redis://h:1\"\n\
             beta = { url = \"rediss://:pw@h:2\", tls = { server_name = \"redis.beta\" } }",
        );
        if !crate::tls::TLS_SUPPORTED {
            assert!(c.is_err());
            return;
        }
        let c = c.unwrap();
        let beta = &c.routing.tenants["beta"];
        assert_eq!(
            beta.tls.as_ref().unwrap().server_name.as_deref(),
            Some("redis.beta")
        );
        assert!(!beta.same_as(&c.routing.tenants["acme"]));
        assert!(c.routing.tenants["acme"].tls.is_none());
    }
}

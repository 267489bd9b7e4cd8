//! State that outlives actor incarnations.
//!
//! The supervisor builds one [`Shared`] before it spawns anything and hands it to every child
//! incarnation and every handle. A restarted child therefore resumes: the connection pool, the
//! published health, the local fallback values and the counters' statistics are all here, not
//! in the actor that failed.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use forze_redis::breaker::Breakers;
use forze_redis::cache::redis::RedisCacheStore;
use forze_redis::cache::topology::TrackingSource;
use forze_redis::cache::Cache;
use forze_redis::config::RedisConfig;
use forze_redis::connection::{Health, RedisConnection};
use forze_redis::counter::{local_store, Counter, RedisCounterStore};
use forze_redis::idempotency::local::LocalIdempotencyStore;
use forze_redis::idempotency::redis::RedisIdempotencyStore;
use forze_redis::idempotency::Idempotency;
use forze_redis::keys::{KeySpace, ResourceKind};
use forze_redis::lock::local::LocalLockStore;
use forze_redis::lock::redis::RedisLockStore;
use forze_redis::lock::Lock;
use forze_redis::ratelimit::RateLimiter;
use forze_redis::routing::Router;
use forze_redis::snapshot::local::LocalSnapshotStore;
use forze_redis::snapshot::redis::RedisSnapshotStore;
use forze_redis::snapshot::Snapshots;
use forze_redis::{Config, Error, Result};
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use crate::names::ActorNames;

/// Everything one supervisor's actors and handles share. Opaque outside this crate: it is
/// only named as the spawn argument of the actors.
#[derive(Debug)]
pub struct Shared {
    pub(crate) config: Config,
    pub(crate) names: ActorNames,
    /// `None` in embedded local mode.
    pub(crate) connection: Option<Arc<RedisConnection>>,
    /// Connection health, published by the pool actor.
    pub(crate) health: watch::Sender<Health>,
    pub(crate) counters: BTreeMap<String, Arc<Counter>>,
    pub(crate) caches: BTreeMap<String, Arc<Cache>>,
    /// Where the tracking subscriber connects; `None` when no cache has an L1 (or embedded).
    pub(crate) tracking: Option<TrackingSource>,
    /// Tenant routing, when a resource is routed.
    pub(crate) router: Option<Arc<Router>>,
    pub(crate) tracking_stats: crate::tracking::TrackingCounters,
    pub(crate) locks: BTreeMap<String, Arc<Lock>>,
    pub(crate) idempotency: BTreeMap<String, Arc<Idempotency>>,
    pub(crate) snapshots: BTreeMap<String, Arc<Snapshots>>,
    pub(crate) rate_limits: BTreeMap<String, Arc<RateLimiter>>,
    pub(crate) breakers: BTreeMap<String, Arc<Breakers>>,
    /// Every lease held through this supervisor's guards.
    pub(crate) leases: crate::lock::LeaseRegistry,
    pub(crate) heartbeat: crate::heartbeat::HeartbeatCounters,
    /// Tasks spawned on behalf of callers (message requests); waited for at shutdown.
    pub(crate) tasks: TaskTracker,
    /// Set when shutdown begins: new requests are refused with `Unavailable`.
    pub(crate) shutting_down: AtomicBool,
    pub(crate) pool_stats: PoolCounters,
}

/// Connection events counted by the pool actor; they survive its restarts.
#[derive(Debug, Default)]
pub(crate) struct PoolCounters {
    pub(crate) reconnects: AtomicU64,
    pub(crate) connection_errors: AtomicU64,
    pub(crate) probes: AtomicU64,
    pub(crate) probe_failures: AtomicU64,
    pub(crate) state_changes: AtomicU64,
}

impl Shared {
    /// Validate `config` and build the shared state. Connects nothing yet.
    pub(crate) fn build(config: Config) -> Result<Arc<Self>> {
        config.validate()?;
        let names = ActorNames::new(config.supervision.name_prefix.clone());
        let connection = match &config.redis {
            Some(redis) => Some(Arc::new(RedisConnection::build(redis)?)),
            None => None,
        };
        let initial = match &connection {
            Some(c) => c.health(),
            None => Health::embedded(),
        };
        let prefix = config.key_prefix()?;
        let routed =
            config.counters.values().any(|c| c.routed) || config.caches.values().any(|c| c.routed);
        // Endpoint pools take every setting but the URL from `[redis]` (or its defaults).
        let router = routed.then(|| {
            let template = config
                .redis
                .clone()
                .unwrap_or_else(|| RedisConfig::new("redis://127.0.0.1"));
            Arc::new(Router::new(&config.routing, template))
        });
        let local = local_store();
        let mut counters = BTreeMap::new();
        for (name, cfg) in &config.counters {
            let space = KeySpace::new(
                prefix.clone(),
                ResourceKind::Counter,
                config.counter_namespace(name, cfg)?,
            );
            let redis = connection.clone().map(RedisCounterStore::new);
            let mut counter = Counter::new(name.clone(), space, cfg, redis, local.clone());
            if let (true, Some(router)) = (cfg.routed, &router) {
                counter = counter.with_router(router.clone());
            }
            counters.insert(name.clone(), Arc::new(counter));
        }
        let mut caches = BTreeMap::new();
        for (name, cfg) in &config.caches {
            let space = KeySpace::new(
                prefix.clone(),
                ResourceKind::Cache,
                config.cache_namespace(name, cfg)?,
            );
            let redis = connection.clone().map(RedisCacheStore::new);
            let mut cache = Cache::new(name.clone(), space, cfg, redis);
            if let (true, Some(router)) = (cfg.routed, &router) {
                cache = cache.with_router(router.clone());
            }
            caches.insert(name.clone(), Arc::new(cache));
        }
        let local_locks = LocalLockStore::new();
        let mut locks = BTreeMap::new();
        for (name, cfg) in &config.locks {
            let space = KeySpace::new(
                prefix.clone(),
                ResourceKind::Lock,
                config.lock_namespace(name, cfg)?,
            );
            let redis = connection.clone().map(RedisLockStore::new);
            locks.insert(
                name.clone(),
                Arc::new(Lock::new(
                    name.clone(),
                    space,
                    cfg,
                    redis,
                    local_locks.clone(),
                )),
            );
        }
        let local_idem = LocalIdempotencyStore::new();
        let mut idempotency = BTreeMap::new();
        for (name, cfg) in &config.idempotency {
            let space = KeySpace::new(
                prefix.clone(),
                ResourceKind::Idempotency,
                config.idempotency_namespace(name, cfg)?,
            );
            let redis = connection.clone().map(RedisIdempotencyStore::new);
            idempotency.insert(
                name.clone(),
                Arc::new(Idempotency::new(
                    name.clone(),
                    space,
                    cfg,
                    redis,
                    local_idem.clone(),
                )),
            );
        }
        let local_snaps = LocalSnapshotStore::new();
        let mut snapshots = BTreeMap::new();
        for (name, cfg) in &config.snapshots {
            let space = KeySpace::new(
                prefix.clone(),
                ResourceKind::Snapshot,
                config.snapshot_namespace(name, cfg)?,
            );
            let redis = connection.clone().map(RedisSnapshotStore::new);
            snapshots.insert(
                name.clone(),
                Arc::new(Snapshots::new(
                    name.clone(),
                    space,
                    cfg,
                    redis,
                    local_snaps.clone(),
                )),
            );
        }
        let mut rate_limits = BTreeMap::new();
        for (name, cfg) in &config.rate_limits {
            let space = KeySpace::new(
                prefix.clone(),
                ResourceKind::RateLimit,
                config.rate_limit_namespace(name, cfg)?,
            );
            rate_limits.insert(
                name.clone(),
                Arc::new(RateLimiter::new(
                    name.clone(),
                    space,
                    cfg,
                    connection.clone(),
                    config.clock.clone(),
                )),
            );
        }
        let mut breakers = BTreeMap::new();
        for (name, cfg) in &config.breakers {
            let space = KeySpace::new(
                prefix.clone(),
                ResourceKind::Breaker,
                config.breaker_namespace(name, cfg)?,
            );
            breakers.insert(
                name.clone(),
                Arc::new(Breakers::new(
                    name.clone(),
                    space,
                    cfg,
                    connection.clone(),
                    config.clock.clone(),
                )),
            );
        }
        // A routed cache's L1 lives by its TTL: nothing to track for it.
        let needs_l1_tracking = caches.values().any(|c| c.l1().is_some() && !c.is_routed());
        let tracking = match &config.redis {
            // Cache L1s and breakers' cached phases are both kept fresh by the subscriber.
            Some(redis) if needs_l1_tracking || !breakers.is_empty() => {
                let conn = connection.as_ref().ok_or_else(|| {
                    Error::internal("tracking", "a Redis deployment without a pool")
                })?;
                match TrackingSource::new(redis, conn) {
                    Ok(t) => Some(t),
                    // An L1 cannot run untracked; breakers can (their cache TTL bounds it).
                    Err(e) if needs_l1_tracking => return Err(e),
                    Err(e) => {
                        tracing::warn!(error = %e, "breaker phases cached by TTL only");
                        None
                    }
                }
            }
            _ => None,
        };
        Ok(Arc::new(Shared {
            router,
            breakers,
            rate_limits,
            snapshots,
            idempotency,
            locks,
            leases: Default::default(),
            heartbeat: Default::default(),
            caches,
            tracking,
            tracking_stats: Default::default(),
            names,
            connection,
            health: watch::Sender::new(initial),
            counters,
            tasks: TaskTracker::new(),
            shutting_down: AtomicBool::new(false),
            pool_stats: PoolCounters::default(),
            config,
        }))
    }

    /// `Unavailable` once shutdown has begun.
    pub(crate) fn check_open(&self, op: &'static str) -> Result<()> {
        if self.shutting_down.load(Ordering::Acquire) {
            Err(Error::unavailable(op))
        } else {
            Ok(())
        }
    }
}

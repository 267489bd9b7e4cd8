//! The runtime: every resource of one [`Config`], built once, and the state their background
//! loops share.
//!
//! `table` holds the resources of one kind, looked up by name. The shutdown gate every
//! handle checks is [`crate::gate`].
//!
//! The actor crate builds one [`Runtime`] per supervisor and hosts its loops (connection
//! health, lease renewal, the tracking subscriber); every handle a user holds is a clone of a
//! resource in here, so a restarted actor resumes with the same state.

pub mod table;

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::watch;

use crate::breaker::Breaker;
use crate::cache::redis::RedisCacheStore;
use crate::cache::Cache;
use crate::config::{Config, RedisConfig};
use crate::connection::{Health, RedisConnection};
use crate::counter::{local_store, Counter, RedisCounterStore};
use crate::error::{Error, Result};
use crate::gate::Gate;
use crate::idempotency::local::LocalIdempotencyStore;
use crate::idempotency::redis::RedisIdempotencyStore;
use crate::idempotency::Idempotency;
use crate::keys::{KeyPrefix, KeySpace, Namespace, ResourceKind};
use crate::lock::lease::LeaseRegistry;
use crate::lock::local::LocalLockStore;
use crate::lock::redis::RedisLockStore;
use crate::lock::Lock;
use crate::ratelimit::RateLimiter;
use crate::routing::Router;
use crate::snapshot::local::LocalSnapshotStore;
use crate::snapshot::redis::RedisSnapshotStore;
use crate::snapshot::Snapshots;
use crate::telemetry::Telemetry;
use crate::tracking::topology::TrackingSource;
use crate::tracking::Tracked;
pub use table::Resources;

/// Every resource of one configuration and the state shared by their background loops.
#[derive(Debug)]
pub struct Runtime {
    /// The validated configuration.
    pub config: Config,
    /// The pool; `None` in embedded local mode.
    pub connection: Option<Arc<RedisConnection>>,
    /// Connection health, published by whoever probes the pool.
    pub health: watch::Sender<Health>,
    /// Closed when shutdown begins.
    pub gate: Gate,
    /// Counters by name.
    pub counters: Resources<Counter>,
    /// Cache namespaces by name.
    pub caches: Resources<Cache>,
    /// Lock resources by name.
    pub locks: Resources<Lock>,
    /// Idempotency resources by name.
    pub idempotency: Resources<Idempotency>,
    /// Snapshot resources by name.
    pub snapshots: Resources<Snapshots>,
    /// Rate-limit policies by name.
    pub rate_limits: Resources<RateLimiter>,
    /// Circuit-breaker policies by name.
    pub breakers: Resources<Breaker>,
    /// Every lease held through this runtime's locks, renewed in batches.
    pub leases: Arc<LeaseRegistry>,
    /// Where the tracking subscriber connects; `None` when nothing is tracked (no L1 and no
    /// breaker, or embedded mode).
    pub tracking: Option<TrackingSource>,
    /// Tenant routing, when a resource is routed.
    pub router: Option<Arc<Router>>,
    /// The confirmation the tracking session's current trust belongs to (see
    /// [`crate::tracking::Trust`]); shared by the sessions of every subscriber incarnation.
    pub trust_generation: Arc<std::sync::Mutex<u64>>,
}

impl Runtime {
    /// What this runtime's tracking session keeps coherent: the L1 of every cache that has
    /// one and is not routed (a routed L1 lives by its TTL), and every breaker policy.
    pub fn tracked(&self) -> Tracked {
        Tracked::new(
            self.caches
                .values()
                .filter(|c| c.has_l1() && !c.is_routed()),
            self.breakers.values(),
            self.locks.values().filter(|l| l.wakes_waiters()),
            self.trust_generation.clone(),
        )
    }
}

impl Runtime {
    /// Every resource's telemetry, with its kind and name.
    pub fn telemetries(&self) -> impl Iterator<Item = (&'static str, &str, &Telemetry)> {
        fn of<'a, T: Clone>(
            kind: &'static str,
            table: &'a Resources<T>,
            t: impl Fn(&T) -> &Telemetry + 'a,
        ) -> impl Iterator<Item = (&'static str, &'a str, &'a Telemetry)> + 'a {
            table.iter().map(move |(n, r)| (kind, n.as_str(), t(r)))
        }
        of("counter", &self.counters, |r| &r.telemetry)
            .chain(of("cache", &self.caches, |r| &r.telemetry))
            .chain(of("lock", &self.locks, |r| &r.telemetry))
            .chain(of("idempotency", &self.idempotency, |r| &r.telemetry))
            .chain(of("snapshot", &self.snapshots, |r| &r.telemetry))
            .chain(of("rate_limit", &self.rate_limits, |r| &r.telemetry))
            .chain(of("breaker", &self.breakers, |r| &r.telemetry))
    }
}

/// Build the table of one resource kind: the loop every kind shares (namespace, key space,
/// construction), written once.
fn table<C, T: Clone>(
    config: &Config,
    prefix: &KeyPrefix,
    (op, what, kind): (&'static str, &'static str, ResourceKind),
    configs: &BTreeMap<String, C>,
    namespace: impl Fn(&Config, &str, &C) -> Result<Namespace>,
    mut make: impl FnMut(String, KeySpace, &C, Telemetry) -> T,
) -> Result<Resources<T>> {
    let mut by_name = BTreeMap::new();
    let url = config.redis.as_ref().map(|r| &r.url);
    for (name, cfg) in configs {
        let ns = namespace(config, name, cfg)?;
        let telemetry = Telemetry::new(&config.supervision.name_prefix, op, name, ns.as_str(), url);
        let space = KeySpace::new(prefix.clone(), kind, ns);
        by_name.insert(name.clone(), make(name.clone(), space, cfg, telemetry));
    }
    Ok(Resources::new(op, what, by_name))
}

impl Runtime {
    /// Validate `config` and build every resource. Connects nothing yet.
    pub fn build(config: Config) -> Result<Self> {
        config.validate()?;
        crate::telemetry::describe();
        let connection = match &config.redis {
            Some(redis) => Some(Arc::new(RedisConnection::build(redis)?)),
            None => None,
        };
        let initial = match &connection {
            Some(c) => c.health(),
            None => Health::embedded(),
        };
        let prefix = config.key_prefix()?;
        let gate = Gate::default();
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
        let conn = &connection;
        let route = |routed: bool| router.clone().filter(|_| routed);

        let local = local_store();
        let counters = table(
            &config,
            &prefix,
            ("counter", "counter", ResourceKind::Counter),
            &config.counters,
            Config::namespace,
            |name, space, cfg, telemetry| {
                let redis = conn.clone().map(RedisCounterStore::new);
                let router = route(cfg.routed);
                Counter::new(
                    name,
                    space,
                    cfg,
                    redis,
                    local.clone(),
                    router,
                    gate.clone(),
                    telemetry,
                )
            },
        )?;
        let caches = table(
            &config,
            &prefix,
            ("cache", "cache", ResourceKind::Cache),
            &config.caches,
            Config::namespace,
            |name, space, cfg, telemetry| {
                let redis = conn.clone().map(RedisCacheStore::new);
                Cache::new(
                    name,
                    space,
                    cfg,
                    redis,
                    route(cfg.routed),
                    gate.clone(),
                    telemetry,
                )
            },
        )?;
        let leases = Arc::new(LeaseRegistry::default());
        let local_locks = LocalLockStore::new();
        let locks = table(
            &config,
            &prefix,
            ("lock", "lock", ResourceKind::Lock),
            &config.locks,
            Config::namespace,
            |name, space, cfg, telemetry| {
                let redis = conn.clone().map(RedisLockStore::new);
                let local = local_locks.clone();
                Lock::new(
                    name,
                    space,
                    cfg,
                    redis,
                    local,
                    leases.clone(),
                    gate.clone(),
                    telemetry,
                )
            },
        )?;
        let local_idem = LocalIdempotencyStore::new();
        let idempotency = table(
            &config,
            &prefix,
            (
                "idempotency",
                "idempotency resource",
                ResourceKind::Idempotency,
            ),
            &config.idempotency,
            Config::namespace,
            |name, space, cfg, telemetry| {
                let redis = conn.clone().map(RedisIdempotencyStore::new);
                let local = local_idem.clone();
                Idempotency::new(name, space, cfg, redis, local, gate.clone(), telemetry)
            },
        )?;
        let local_snaps = LocalSnapshotStore::new();
        let snapshots = table(
            &config,
            &prefix,
            ("snapshot", "snapshot resource", ResourceKind::Snapshot),
            &config.snapshots,
            Config::namespace,
            |name, space, cfg, telemetry| {
                let redis = conn.clone().map(RedisSnapshotStore::new);
                let local = local_snaps.clone();
                Snapshots::new(name, space, cfg, redis, local, gate.clone(), telemetry)
            },
        )?;
        let clock = &config.clock;
        let rate_limits = table(
            &config,
            &prefix,
            ("rate_limit", "rate-limit policy", ResourceKind::RateLimit),
            &config.rate_limits,
            Config::namespace,
            |name, space, cfg, telemetry| {
                RateLimiter::new(
                    name,
                    space,
                    cfg,
                    conn.clone(),
                    clock.clone(),
                    gate.clone(),
                    telemetry,
                )
            },
        )?;
        let breakers = table(
            &config,
            &prefix,
            ("breaker", "breaker policy", ResourceKind::Breaker),
            &config.breakers,
            Config::namespace,
            |name, space, cfg, telemetry| {
                Breaker::new(
                    name,
                    space,
                    cfg,
                    conn.clone(),
                    clock.clone(),
                    gate.clone(),
                    telemetry,
                )
            },
        )?;
        // A routed cache's L1 lives by its TTL: nothing to track for it.
        let needs_l1_tracking = caches.values().any(|c| c.has_l1() && !c.is_routed());
        let wakes_waiters = locks.values().any(Lock::wakes_waiters);
        let tracking = match (&config.redis, &connection) {
            // Cache L1s and breakers' cached phases are both kept fresh by the subscriber,
            // which also wakes lock waiters.
            (Some(redis), Some(conn))
                if needs_l1_tracking || !breakers.is_empty() || wakes_waiters =>
            {
                match TrackingSource::new(redis, conn) {
                    Ok(t) => Some(t),
                    // An L1 cannot run untracked; breakers can (their cache TTL bounds it).
                    Err(e) if needs_l1_tracking => return Err(e),
                    Err(e) => {
                        tracing::warn!(error = %e, "breaker phases cached by TTL only; lock waiters poll");
                        None
                    }
                }
            }
            (Some(_), None) => {
                return Err(Error::internal(
                    "tracking",
                    "a Redis deployment without a pool",
                ))
            }
            _ => None,
        };
        Ok(Runtime {
            connection,
            health: watch::Sender::new(initial),
            gate,
            counters,
            caches,
            locks,
            idempotency,
            snapshots,
            rate_limits,
            breakers,
            leases,
            tracking,
            router,
            trust_generation: Default::default(),
            config,
        })
    }
}

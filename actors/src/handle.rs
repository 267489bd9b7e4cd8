//! [`Forze`]: spawning a supervisor; [`ForzeHandle`]: using it from any task.

use std::sync::Arc;

use forze_redis::{
    Breaker, BreakerStats, Cache, CacheStats, Config, Counter, CounterStats, Error, Health,
    HeartbeatStats, Idempotency, Lock, OperationCount, RateLimitStats, RateLimiter, RedisUrl,
    Result, RouteEndpoint, RouterStats, Snapshots, TenantId,
};
use ractor::{Actor, ActorCell, ActorRef, RpcReplyPort};
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::call::call_named;
use crate::pool::{PoolMsg, PoolStats};
use crate::resilience::{ResilienceMsg, ResilienceStats};
use crate::shared::Shared;
use crate::supervisor::{ForzeSupervisor, SupervisorMsg, SupervisorStats};
use crate::tracking::TrackingStats;

/// Entry point: spawn a forze-redis supervisor.
#[derive(Debug)]
pub struct Forze;

impl Forze {
    /// Validate `config` and spawn an unlinked supervisor named `<prefix>.supervisor`.
    /// Returns at once, also while Redis is down (it connects in the background).
    pub async fn spawn(config: Config) -> Result<(ForzeHandle, JoinHandle<()>)> {
        Self::spawn_inner(config, None).await
    }

    /// Like [`Forze::spawn`], linked to `parent`: the parent receives the supervisor's
    /// supervision events, including its failure when the restart intensity is exceeded.
    pub async fn spawn_linked(
        config: Config,
        parent: ActorCell,
    ) -> Result<(ForzeHandle, JoinHandle<()>)> {
        Self::spawn_inner(config, Some(parent)).await
    }

    async fn spawn_inner(
        config: Config,
        parent: Option<ActorCell>,
    ) -> Result<(ForzeHandle, JoinHandle<()>)> {
        let shared = Shared::build(config)?;
        let name = Some(shared.names.supervisor());
        let spawned = match parent {
            None => Actor::spawn(name, ForzeSupervisor, shared.clone()).await,
            Some(p) => Actor::spawn_linked(name, ForzeSupervisor, shared.clone(), p).await,
        };
        let (supervisor, join) = spawned.map_err(|e| Error::internal("spawn", e.to_string()))?;
        let handle = ForzeHandle { shared, supervisor };
        if forze_redis::telemetry::METRICS_ENABLED {
            crate::gauges::spawn_publisher(handle.clone());
        }
        Ok((handle, join))
    }
}

/// The handle to one supervisor and its resources. Cheap to clone and `Send + Sync`.
#[derive(Debug, Clone)]
pub struct ForzeHandle {
    shared: Arc<Shared>,
    supervisor: ActorRef<SupervisorMsg>,
}

/// Everything one supervisor and its resources report, from one call
/// ([`ForzeHandle::stats`]). Serializable, for a status endpoint or a log line.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct ForzeStats {
    /// Connection health.
    pub health: Health,
    /// The supervisor's restart statistics.
    pub supervisor: SupervisorStats,
    /// The pool actor's statistics; `None` in embedded mode.
    pub pool: Option<PoolStats>,
    /// The tracking subscriber's statistics, when there is one.
    pub tracking: Option<TrackingStats>,
    /// Lease renewals and leases held; `None` when no lock is configured.
    pub heartbeat: Option<HeartbeatStats>,
    /// Tenant routing; `None` when no resource is routed.
    pub router: Option<RouterStats>,
    /// Each counter resource's statistics, by name.
    pub counters: Vec<(String, CounterStats)>,
    /// Each cache namespace's statistics (its L1's included), by name.
    pub caches: Vec<(String, CacheStats)>,
    /// Each breaker policy's statistics, by name.
    pub breakers: Vec<(String, BreakerStats)>,
    /// Each rate-limit policy's statistics, by name.
    pub rate_limits: Vec<(String, RateLimitStats)>,
    /// Every resource's operations by outcome (counters, caches, locks, idempotency,
    /// snapshots, rate limits, breakers).
    pub operations: Vec<ResourceOperations>,
}

/// One resource's operations by outcome.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct ResourceOperations {
    /// The resource kind (`cache`, `lock`…).
    pub resource: &'static str,
    /// The resource name.
    pub name: String,
    /// Each (operation, outcome) seen, with its count.
    pub operations: Vec<OperationCount>,
}

impl ForzeHandle {
    /// The counter resource `name`, or a `Validation` error naming the unknown resource.
    pub fn counter(&self, name: &str) -> Result<Counter> {
        self.shared.counters.get(name)
    }

    /// The cache namespace `name`, or a `Validation` error naming the unknown resource.
    pub fn cache(&self, name: &str) -> Result<Cache> {
        self.shared.caches.get(name)
    }

    /// The lock resource `name`, or a `Validation` error naming the unknown resource.
    pub fn lock(&self, name: &str) -> Result<Lock> {
        self.shared.locks.get(name)
    }

    /// The idempotency resource `name`, or a `Validation` error naming the unknown resource.
    pub fn idempotency(&self, name: &str) -> Result<Idempotency> {
        self.shared.idempotency.get(name)
    }

    /// The snapshot resource `name`, or a `Validation` error naming the unknown resource.
    pub fn snapshot(&self, name: &str) -> Result<Snapshots> {
        self.shared.snapshots.get(name)
    }

    /// The rate-limit policy `name`, or a `Validation` error naming the unknown policy.
    pub fn rate_limit(&self, name: &str) -> Result<RateLimiter> {
        self.shared.rate_limits.get(name)
    }

    /// The circuit-breaker policy `name`, or a `Validation` error naming the unknown policy.
    pub fn breaker(&self, name: &str) -> Result<Breaker> {
        self.shared.breakers.get(name)
    }

    /// Statistics of every breaker and rate-limit policy, from the resilience actor; `None`
    /// when no policy is configured.
    pub async fn resilience_stats(&self) -> Result<Option<ResilienceStats>> {
        if self.shared.breakers.is_empty() && self.shared.rate_limits.is_empty() {
            return Ok(None);
        }
        self.ask(self.shared.names.resilience(), ResilienceMsg::Stats)
            .await
            .map(Some)
    }

    /// The heartbeater's statistics; `None` when no lock is configured.
    pub async fn heartbeat_stats(&self) -> Result<Option<HeartbeatStats>> {
        if self.shared.locks.is_empty() {
            return Ok(None);
        }
        self.ask(self.shared.names.heartbeat(), crate::HeartbeatMsg::Stats)
            .await
            .map(Some)
    }

    /// Stop (`true`) or resume (`false`) lease renewals: freezes every lock holder of this
    /// supervisor, for drills of lost leases.
    #[cfg(feature = "fault-injection")]
    pub fn stall_heartbeats(&self, stalled: bool) {
        self.shared.leases.stall(stalled);
    }

    /// The configured cache names.
    pub fn cache_names(&self) -> Vec<String> {
        self.shared.caches.names()
    }

    /// Hand the metrics recorder every resource's operation counts and kept latencies
    /// (operations are observed off the recorder, per thread; see the core's telemetry).
    pub(crate) fn publish_metrics(&self) {
        for (_, _, telemetry) in self.shared.telemetries() {
            telemetry.publish();
        }
    }

    /// The tracking subscriber's statistics; `None` when there is none (embedded mode, or no
    /// cache with an L1).
    /// Read from the counters the subscriber keeps in the shared state: no mailbox, so a
    /// health endpoint never waits on a busy or restarting subscriber.
    pub async fn tracking_stats(&self) -> Result<Option<TrackingStats>> {
        if self.shared.tracking.is_none() {
            return Ok(None);
        }
        let prefixes = self.shared.tracked().prefixes();
        Ok(Some(TrackingStats::read(&self.shared, prefixes)))
    }

    /// The configured counter names.
    pub fn counter_names(&self) -> Vec<String> {
        self.shared.counters.names()
    }

    /// Route `tenant` to the endpoint `url` from now on (`None`: back to `[redis]`), for
    /// every routed resource. The pool no route uses any more is closed after a grace of one
    /// command timeout: give a tenant a URL with new credentials to rotate them. A tenant whose
    /// route has TLS settings of its own keeps them (a credential rotation never drops its
    /// encryption); use [`ForzeHandle::set_route_endpoint`] to change them.
    /// `Config` error when no resource is routed, the URL is not valid, or the tenant's route
    /// is encrypted and `url` would connect in plaintext (a TLS scheme dropped by mistake);
    /// [`ForzeHandle::set_route_endpoint`] makes such a change deliberately.
    pub fn set_route(&self, tenant: &TenantId, url: Option<&str>) -> Result<()> {
        let router = self.router()?;
        let current = router.route(tenant);
        let Some(url) = url else {
            return router.set_route(tenant, None);
        };
        let endpoint = RouteEndpoint {
            url: RedisUrl::new(url),
            tls: current.as_ref().and_then(|e| e.tls.clone()),
        };
        if router.encrypts(current.as_ref()) && !router.encrypts(Some(&endpoint)) {
            return Err(Error::config(
                format!("routing.tenants.{}", tenant.as_str()),
                "the route is encrypted and this URL would connect in plaintext: give a TLS \
                 URL (rediss://, valkeys://), or change the TLS settings with set_route_endpoint",
            ));
        }
        router.set_route(tenant, Some(endpoint))
    }

    /// Route `tenant` to `endpoint` (its URL and its own TLS settings; `None`: back to
    /// `[redis]`), as [`ForzeHandle::set_route`] does.
    pub fn set_route_endpoint(
        &self,
        tenant: &TenantId,
        endpoint: Option<RouteEndpoint>,
    ) -> Result<()> {
        self.router()?.set_route(tenant, endpoint)
    }

    fn router(&self) -> Result<&forze_redis::routing::Router> {
        self.shared
            .router
            .as_deref()
            .ok_or_else(|| Error::config("routing", "no resource has `routed = true`"))
    }

    /// The router's statistics; `None` when no resource is routed.
    pub fn router_stats(&self) -> Option<RouterStats> {
        self.shared.router.as_ref().map(|r| r.stats())
    }

    /// Whether this supervisor talks to Redis (`false`: embedded local mode).
    pub fn is_redis(&self) -> bool {
        self.shared.connection.is_some()
    }

    /// The current connection health, read without a mailbox.
    pub fn health(&self) -> Health {
        *self.shared.health.borrow()
    }

    /// A receiver of every health change.
    pub fn health_watch(&self) -> watch::Receiver<Health> {
        self.shared.health.subscribe()
    }

    /// The supervisor's actor reference, for linking and messages.
    pub fn supervisor(&self) -> &ActorRef<SupervisorMsg> {
        &self.supervisor
    }

    /// The registered actor names of this supervisor.
    pub fn names(&self) -> &crate::ActorNames {
        &self.shared.names
    }

    /// The statistics of every actor and resource. Resources are read directly; the
    /// supervisor, the pool actor and the tracking subscriber are asked (within
    /// `call_timeout` each).
    pub async fn stats(&self) -> Result<ForzeStats> {
        let shared = &self.shared;
        let names = &shared.names;
        let supervisor = self.ask(names.supervisor(), SupervisorMsg::Stats).await?;
        let pool = match shared.connection {
            Some(_) => Some(self.ask(names.pool(), PoolMsg::Stats).await?),
            None => None,
        };
        fn by_name<T: Clone, S>(
            resources: &forze_redis::runtime::Resources<T>,
            stats: impl Fn(&T) -> S,
        ) -> Vec<(String, S)> {
            resources
                .iter()
                .map(|(name, r)| (name.clone(), stats(r)))
                .collect()
        }
        let operations = shared
            .telemetries()
            .map(|(resource, name, t)| ResourceOperations {
                resource,
                name: name.to_string(),
                operations: t.operations(),
            })
            .collect();
        Ok(ForzeStats {
            health: self.health(),
            supervisor,
            pool,
            tracking: self.tracking_stats().await?,
            heartbeat: (!shared.locks.is_empty()).then(|| shared.leases.stats()),
            router: self.router_stats(),
            counters: by_name(&shared.counters, Counter::stats),
            caches: by_name(&shared.caches, Cache::stats),
            breakers: by_name(&shared.breakers, Breaker::stats),
            rate_limits: by_name(&shared.rate_limits, RateLimiter::stats),
            operations,
        })
    }

    /// Shut the tree down gracefully and wait for it (idempotent): callers refused first,
    /// resource actors stopped, in-flight requests drained (and cancelled past
    /// `shutdown_timeout`), pool actor stopped, connections closed last. `Timeout` if the tree
    /// has not stopped within 3 × `shutdown_timeout` + 1 s.
    pub async fn shutdown(&self) -> Result<()> {
        // The tree's three stages, and a second for the actors' own messages between them.
        let timeout =
            self.shared.config.supervision.shutdown_timeout * 3 + std::time::Duration::from_secs(1);
        let stopped = self
            .supervisor
            .stop_and_wait(Some("shutdown".into()), Some(timeout))
            .await;
        // Operations that ended while the tree drained reach the recorder too.
        if forze_redis::telemetry::METRICS_ENABLED {
            self.publish_metrics();
        }
        match stopped {
            // Already stopped (shut down before, or failed): nothing left to do.
            Ok(()) | Err(ractor::RactorErr::Messaging(_)) => Ok(()),
            Err(ractor::RactorErr::Timeout) => Err(Error::Timeout {
                op: "shutdown".into(),
                after: timeout,
            }),
            Err(e) => Err(Error::internal("shutdown", e.to_string())),
        }
    }

    /// Whether shutdown has begun (every operation is refused from then on).
    pub fn is_shut_down(&self) -> bool {
        self.shared.gate.is_closed()
    }

    /// Tasks still running on behalf of message requests (0 after shutdown).
    pub fn tasks_in_flight(&self) -> usize {
        self.shared.tasks.len()
    }

    /// Make a child panic (fault drills and tests). `Ok(false)` when that child is not running.
    #[cfg(feature = "fault-injection")]
    pub async fn inject_panic(&self, child: crate::ChildKind) -> Result<bool> {
        self.ask(self.shared.names.supervisor(), |reply| {
            SupervisorMsg::PanicChild(child.clone(), reply)
        })
        .await
    }

    /// Make the lease renewals of the next heartbeat tick panic (fault drills and tests):
    /// the ticks after renew as usual.
    #[cfg(feature = "fault-injection")]
    pub fn inject_renewal_panic(&self) {
        self.shared.leases.panic_next_renewal();
    }

    /// Make one tracking reader (the task that reads one primary's tracking connection)
    /// panic at its next tick (fault drills and tests): the session must count it a loss.
    #[cfg(feature = "fault-injection")]
    pub fn inject_tracking_reader_panic(&self) {
        self.shared
            .tracking_stats
            .panic_a_reader
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Ask the actor registered as `name`, within `call_timeout` (across its restarts).
    async fn ask<M, T>(&self, name: String, build: impl Fn(RpcReplyPort<T>) -> M) -> Result<T>
    where
        M: ractor::Message,
        T: Send + 'static,
    {
        call_named(&name, self.shared.config.supervision.call_timeout, build).await
    }
}

//! Atomic counters.
//!
//! - The same operations are written twice, side by side: on Redis ([`RedisCounterStore`],
//!   fleet-wide) and on process-local state ([`LocalCounterStore`], this process only). Both
//!   pass the same conformance battery.
//! - [`Counter`] is one configured counter resource: it validates input before any I/O,
//!   enforces tenancy, applies the configured [`Fallback`], counts and traces every operation.
//!
//! Guarantees: an untouched counter reads 0; `incr(0)` creates it at 0; every increment is
//! atomic, so concurrent allocations (including [`Counter::incr_batch`] ranges) are distinct;
//! results that would leave the `i64` range are refused with the value unchanged
//! ([`ConflictReason::OutOfRange`]); increments are sent once, so a lost reply is
//! `OutcomeUnknown`, never a silent second increment.
//!
//! Degraded mode: `Unavailable` while Redis is unreachable, unless the resource is configured
//! `fallback = "local"`, in which case the process-local store serves it (and fleet-wide
//! uniqueness is given up until Redis returns; the local values are not merged back).

mod coalesce;
mod local;
mod redis;

use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub use local::LocalCounterStore;
pub use redis::RedisCounterStore;

use crate::config::{CounterConfig, Fallback};
use crate::error::{ConflictReason, Error, ErrorKind, Result};
use crate::gate::Gate;
use crate::keys::{key_tenant, KeySpace, TenantId};
use crate::routing::{destination, Destination, Router};
use crate::striped::StripedCounter;

/// Which counter of a resource: an optional tenant and an optional suffix.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct CounterId {
    /// The tenant; required by tenant-aware resources, ignored by the others.
    pub tenant: Option<TenantId>,
    /// A sub-counter (`orders:eu`), or `None` for the resource's main counter.
    pub suffix: Option<String>,
}

impl CounterId {
    /// The main counter, no tenant.
    pub fn main() -> Self {
        Self::default()
    }

    /// A suffixed counter, no tenant.
    pub fn suffix(suffix: impl Into<String>) -> Self {
        CounterId {
            tenant: None,
            suffix: Some(suffix.into()),
        }
    }

    /// The same counter for `tenant`.
    pub fn for_tenant(mut self, tenant: TenantId) -> Self {
        self.tenant = Some(tenant);
        self
    }
}

/// One entry of [`Counter::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CounterEntry {
    /// The suffix, `None` for the main counter.
    pub suffix: Option<String>,
    /// The value.
    pub value: i64,
}

/// The store one operation runs on: Redis (the resource's pool or a routed endpoint's) or
/// process-local state (embedded mode, or the configured fallback).
#[derive(Clone, Copy)]
enum Store<'a> {
    Redis(&'a RedisCounterStore),
    Local(&'a LocalCounterStore),
}

/// Operation counts of one counter resource, live.
#[derive(Debug, Default)]
struct Counts {
    /// Bumped by every call: per thread (see [`StripedCounter`]).
    ops: StripedCounter,
    errors: AtomicU64,
    fallbacks: AtomicU64,
}

/// A copy of one counter resource's statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct CounterStats {
    /// Operations attempted.
    pub ops: u64,
    /// Operations that returned an error.
    pub errors: u64,
    /// Operations served by the local fallback because Redis was unavailable.
    pub fallbacks: u64,
}

impl Counts {
    fn snapshot(&self) -> CounterStats {
        CounterStats {
            ops: self.ops.get(),
            errors: self.errors.load(Ordering::Relaxed),
            fallbacks: self.fallbacks.load(Ordering::Relaxed),
        }
    }
}

/// One configured counter resource: the handle users call from any task. Cheap to clone.
///
/// Concurrent increments from any number of tasks and replicas are atomic and distinct,
/// [`incr_batch`](Self::incr_batch) ranges included. After shutdown has begun every
/// operation returns `Unavailable`.
#[derive(Debug, Clone)]
pub struct Counter(Arc<CounterState>);

#[doc(hidden)]
impl std::ops::Deref for Counter {
    type Target = CounterState;
    fn deref(&self) -> &CounterState {
        &self.0
    }
}

/// What every clone of one [`Counter`] shares.
#[doc(hidden)]
#[derive(Debug)]
pub struct CounterState {
    /// Spans and metrics of every operation.
    pub(crate) telemetry: crate::telemetry::Telemetry,
    gate: Gate,
    name: String,
    space: KeySpace,
    tenant_aware: bool,
    fallback: Fallback,
    redis: Option<RedisCounterStore>,
    /// Set for `routed = true`: each tenant's counters go to its endpoint.
    router: Option<Arc<Router>>,
    local: LocalCounterStore,
    /// Set for `coalesce = true`: concurrent increments of one key share one `INCRBY`.
    coalescer: Option<Arc<coalesce::Coalescer>>,
    stats: Counts,
}

impl Counter {
    /// A counter resource. `redis` is `None` in embedded local mode; `local` is the
    /// process-local store, shared by the runtime so that it survives actor restarts;
    /// `router` is set for `routed = true` (each tenant's counters go to its endpoint).
    // Called from one place, the runtime's table, with every part of the resource.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        name: impl Into<String>,
        space: KeySpace,
        config: &CounterConfig,
        redis: Option<RedisCounterStore>,
        local: LocalCounterStore,
        router: Option<Arc<Router>>,
        gate: Gate,
        telemetry: crate::telemetry::Telemetry,
    ) -> Self {
        Counter(Arc::new(CounterState {
            telemetry,
            gate,
            name: name.into(),
            space,
            // Routing is by tenant: a routed resource needs one on every call.
            tenant_aware: config.tenant_aware || config.routed,
            fallback: config.fallback,
            redis,
            router,
            local,
            coalescer: config.coalesce.then(|| Arc::new(coalesce::coalescer())),
            stats: Counts::default(),
        }))
    }

    /// The resource name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether every call needs a tenant (`tenant_aware` or `routed`); a resource that is not
    /// tenant-aware refuses one.
    pub fn is_tenant_aware(&self) -> bool {
        self.tenant_aware
    }

    /// The operation counts.
    pub fn stats(&self) -> CounterStats {
        self.stats.snapshot()
    }

    /// Add `by` (may be 0 or negative) and return the new value.
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use forze_redis_actors::{Config, CounterId, Forze};
    ///
    /// let config = Config::from_toml_str(r#"mode = "embedded"
    ///     [counters.orders]
    /// "#)?;
    /// let (forze, _join) = Forze::spawn(config).await?;
    /// let orders = forze.counter("orders")?;
    ///
    /// // An untouched counter reads 0; each increment returns the new value.
    /// let eu = CounterId::suffix("eu");
    /// assert_eq!(orders.incr(&eu, 1).await?, 1);
    /// assert_eq!(orders.incr(&eu, 1).await?, 2);
    /// // Other suffixes are other counters.
    /// assert_eq!(orders.incr(&CounterId::suffix("us"), 5).await?, 5);
    ///
    /// forze.shutdown().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn incr(&self, id: &CounterId, by: i64) -> Result<i64> {
        match self
            .run(id.tenant.as_ref(), self.key(id), Op::Incr(by))
            .await?
        {
            Out::Value(v) => Ok(v),
            _ => Err(unexpected("incr")),
        }
    }

    /// Subtract `by` and return the new value.
    pub async fn decr(&self, id: &CounterId, by: i64) -> Result<i64> {
        match self
            .run(id.tenant.as_ref(), self.key(id), Op::Decr(by))
            .await?
        {
            Out::Value(v) => Ok(v),
            _ => Err(unexpected("decr")),
        }
    }

    /// Allocate `size` consecutive values in one atomic step; returns them ascending.
    /// `size` must be at least 1 (checked before any I/O).
    pub async fn incr_batch(&self, id: &CounterId, size: i64) -> Result<RangeInclusive<i64>> {
        let key = if size < 1 {
            Err(Error::validation("size", "batch size must be at least 1"))
        } else {
            self.key(id)
        };
        match self.run(id.tenant.as_ref(), key, Op::Batch(size)).await? {
            // last - size + 1 cannot overflow: the value before was last - size >= i64::MIN.
            Out::Value(last) => Ok((last - size + 1)..=last),
            _ => Err(unexpected("incr_batch")),
        }
    }

    /// The value; 0 when never touched.
    pub async fn get(&self, id: &CounterId) -> Result<i64> {
        match self.run(id.tenant.as_ref(), self.key(id), Op::Get).await? {
            Out::Value(v) => Ok(v),
            _ => Err(unexpected("get")),
        }
    }

    /// Set the value; returns it. Values outside `i64` (`u64::MAX`, an `i128`…) are refused
    /// with a `Validation` error before anything is sent.
    pub async fn reset<V>(&self, id: &CounterId, value: V) -> Result<i64>
    where
        V: TryInto<i64> + std::fmt::Display + Copy,
    {
        let value = checked_value(value)?;
        match self
            .run(id.tenant.as_ref(), self.key(id), Op::Reset(value))
            .await?
        {
            Out::Value(v) => Ok(v),
            _ => Err(unexpected("reset")),
        }
    }

    /// Every counter of this resource for `tenant`, by suffix (`None` first). Exact: the
    /// namespace `orders` never lists `orders_archive`. Counters deleted meanwhile are skipped.
    pub async fn list(&self, tenant: Option<&TenantId>) -> Result<Vec<CounterEntry>> {
        let base = self.tenant(tenant).map(|t| self.space.tenant_base(t));
        let rows = match self.run(tenant, base, Op::List).await? {
            Out::Rows(rows) => rows,
            _ => return Err(unexpected("list")),
        };
        let mut out: Vec<CounterEntry> = rows
            .into_iter()
            .filter_map(|(parts, value)| match parts.as_slice() {
                [] => Some(CounterEntry {
                    suffix: None,
                    value,
                }),
                [suffix] => Some(CounterEntry {
                    suffix: Some(suffix.clone()),
                    value,
                }),
                _ => None,
            })
            .collect();
        out.sort_by(|a, b| a.suffix.cmp(&b.suffix));
        Ok(out)
    }

    fn tenant<'a>(&self, tenant: Option<&'a TenantId>) -> Result<Option<&'a TenantId>> {
        key_tenant(&self.name, self.tenant_aware, tenant)
    }

    fn key(&self, id: &CounterId) -> Result<String> {
        let tenant = self.tenant(id.tenant.as_ref())?;
        let key = match id.suffix.as_deref() {
            None => self.space.key(tenant, &[]),
            Some("") => Err(Error::validation("suffix", "must not be empty")),
            Some(s) => self.space.key(tenant, &[s]),
        }?;
        Ok(key.into_string())
    }

    /// Run `op` on `target` (a key, or the tenant base for `list`) against Redis, or local
    /// state in embedded mode, falling back to local state when configured and Redis is
    /// unavailable; count and trace it. A `target` error (validation) is returned before I/O.
    async fn run(&self, tenant: Option<&TenantId>, target: Result<String>, op: Op) -> Result<Out> {
        self.gate.check(op.gate_name())?;
        let operation = op.gate_name();
        let span = self.telemetry.span(operation);
        let started = self.telemetry.start();
        // Built where it is awaited: a future bound to a variable first is held twice.
        let (result, served) = crate::telemetry::in_span(&span, async {
            self.stats.ops.add(1);
            let routed = match (&target, &self.router) {
                (Ok(_), Some(router)) => {
                    match Box::pin(destination(Some(router), &self.name, tenant)).await {
                        Ok(Destination::Endpoint(conn)) => Ok(Some(RedisCounterStore::new(conn))),
                        Ok(Destination::Default) => Ok(None),
                        Err(e) => Err(e),
                    }
                }
                _ => Ok(None),
            };
            let (routing_failed, endpoint) = match routed {
                Err(e) => (Some(e), None),
                Ok(endpoint) => (None, endpoint),
            };
            let redis = endpoint.as_ref().or(self.redis.as_ref());
            let (result, served) = match (&target, redis, routing_failed) {
                (Err(e), _, _) => (Err(e.clone()), "none"),
                // The tenant's endpoint could not be reached: nothing was sent, so the local
                // fallback applies as for any Unavailable.
                (Ok(t), _, Some(e)) if self.should_fall_back(&e) => {
                    self.stats.fallbacks.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(error = %e, "routed endpoint unavailable: serving from local state");
                    (
                        exec(Store::Local(&self.local), t, op, None).await,
                        "fallback",
                    )
                }
                (Ok(_), _, Some(e)) => (Err(e), "none"),
                (Ok(t), None, None) => {
                    (exec(Store::Local(&self.local), t, op, None).await, "local")
                }
                (Ok(t), Some(redis), None) => {
                    match exec(Store::Redis(redis), t, op, self.coalescer.as_ref()).await {
                        Err(e) if self.should_fall_back(&e) => {
                            self.stats.fallbacks.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(error = %e, "redis unavailable: serving from local state");
                            (
                                exec(Store::Local(&self.local), t, op, None).await,
                                "fallback",
                            )
                        }
                        other => (other, "redis"),
                    }
                }
            };
            (result, served)
        })
        .await;
        span.record("forze.served", served);
        if result.is_err() {
            self.stats.errors.fetch_add(1, Ordering::Relaxed);
        }
        let ok = if served == "fallback" {
            "fallback"
        } else {
            "ok"
        };
        self.telemetry.end(&span, operation, started, &result, ok);
        result
    }

    fn should_fall_back(&self, e: &Error) -> bool {
        // Only errors that prove the operation did not run; never OutcomeUnknown.
        self.fallback == Fallback::Local && e.kind() == ErrorKind::Unavailable
    }
}

/// One counter operation, so [`Counter::run`] can send it to either store.
#[derive(Debug, Clone, Copy)]
enum Op {
    Incr(i64),
    Decr(i64),
    Batch(i64),
    Get,
    Reset(i64),
    List,
}

impl Op {
    fn gate_name(self) -> &'static str {
        match self {
            Op::Incr(_) => "counter.incr",
            Op::Decr(_) => "counter.decr",
            Op::Batch(_) => "counter.incr_batch",
            Op::Get => "counter.get",
            Op::Reset(_) => "counter.reset",
            Op::List => "counter.list",
        }
    }
}

enum Out {
    Value(i64),
    Rows(Vec<(Vec<String>, i64)>),
}

/// Run `op` on `store`. The Redis store puts each driver command future on the heap where it
/// is made (in a pooled block): fred's are about 8 KiB, and inline they would make every
/// future above them as large, copied at each await layer on every call. `list`, a scan of
/// many commands and rarely called, is boxed whole here.
/// Increments on Redis go through `coalescer` when one is given.
async fn exec(
    store: Store<'_>,
    target: &str,
    op: Op,
    coalescer: Option<&Arc<coalesce::Coalescer>>,
) -> Result<Out> {
    let r = match store {
        Store::Local(l) => {
            return Ok(match op {
                Op::Incr(by) | Op::Batch(by) => Out::Value(l.incr(target, by)?),
                Op::Decr(by) => Out::Value(l.decr(target, by)?),
                Op::Get => Out::Value(l.get(target)),
                Op::Reset(v) => {
                    l.set(target, v);
                    Out::Value(v)
                }
                Op::List => Out::Rows(l.list(target)),
            })
        }
        Store::Redis(r) => r,
    };
    Ok(match (op, coalescer) {
        (Op::Incr(by) | Op::Batch(by), Some(c)) => Out::Value(
            c.run(r, target, i128::from(by), || r.incr(target, by))
                .await?,
        ),
        // DECRBY i64::MIN is refused by the server; it never joins a batch.
        (Op::Decr(by), Some(c)) if by != i64::MIN => Out::Value(
            c.run(r, target, -i128::from(by), || r.decr(target, by))
                .await?,
        ),
        (Op::Incr(by) | Op::Batch(by), None) => Out::Value(r.incr(target, by).await?),
        (Op::Decr(by), _) => Out::Value(r.decr(target, by).await?),
        (Op::Get, _) => Out::Value(r.get(target).await?),
        (Op::Reset(v), _) => {
            r.set(target, v).await?;
            Out::Value(v)
        }
        (Op::List, _) => Out::Rows(Box::pin(r.list(target)).await?),
    })
}

fn unexpected(op: &'static str) -> Error {
    Error::internal(op, "mismatched counter result")
}

/// Range-check a value for [`Counter::reset`] before any I/O: anything outside `i64` is a
/// `Validation` error naming `value`.
pub fn checked_value<V>(value: V) -> Result<i64>
where
    V: TryInto<i64> + std::fmt::Display + Copy,
{
    value.try_into().map_err(|_| {
        Error::validation(
            "value",
            format!(
                "{value} is outside the counter range [{}, {}]",
                i64::MIN,
                i64::MAX
            ),
        )
    })
}

/// The refusal every store returns when a result would leave the `i64` range.
pub(crate) fn out_of_range(op: &'static str) -> Error {
    Error::Conflict {
        op: op.into(),
        reason: ConflictReason::OutOfRange,
    }
}

/// Build the shared local store.
pub fn local_store() -> LocalCounterStore {
    LocalCounterStore::new(Arc::default())
}

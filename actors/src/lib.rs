//! # forze-redis-actors
//!
//! Fast, ephemeral, coordination-oriented state on Redis or Valkey for fleets of tokio
//! services, run as a supervised tree of ractor actors. This is the crate applications add;
//! every name they need is at its root (or in [`prelude`]).
//!
//! | you want to… | use |
//! |---|---|
//! | start it | [`Forze::spawn`] (or [`Forze::spawn_linked`] under your own actor) with a [`Config`] |
//! | use it from any task | [`ForzeHandle`]: `cache`, `counter`, `lock`, `idempotency`, `snapshot`, `rate_limit`, `breaker` |
//! | cache values, coherent across replicas | [`Cache`] with [`CacheKey`] |
//! | count, allocate ids | [`Counter`] with [`CounterId`] |
//! | hold a fenced lock | [`Lock`] with [`LockId`], held as a [`LockGuard`] |
//! | run a request once | [`Idempotency`] with [`IdemRequest`] |
//! | page a search result stably | [`Snapshots`] with [`RunId`] |
//! | limit a rate, break a circuit, fleet-wide | [`RateLimiter`], [`Breaker`] |
//! | talk to it from another actor | the message enums ([`CounterMsg`], [`CacheMsg`], …) at [`ActorNames`] |
//! | watch it | [`ForzeHandle::stats`], [`ForzeHandle::health`], the `*Stats` types |
//! | handle failures | [`Error`], [`ErrorKind`] (see `docs/errors.md`) |
//!
//! Every resource is one cheap-`Clone` handle: operations run on the caller's task (an L1
//! hit is a map lookup; a remote call goes through a clone of the connection pool), never
//! behind an actor's mailbox. The actors host what runs in the background (connection
//! health, the tracking session, lease renewal, sweeps), restart it when it fails, and serve
//! the same operations as typed messages on tracked tasks.
//!
//! ```no_run
//! use forze_redis_actors::{Config, CounterId, CounterMsg, Forze};
//! use ractor::{call_t, ActorRef};
//!
//! # async fn demo() -> forze_redis_actors::Result<()> {
//! // Embedded mode (process-local state) is chosen explicitly: a configuration that names
//! // neither a server nor `mode = "embedded"` is refused.
//! let config = Config::from_toml_str("mode = \"embedded\"\n[counters.orders]")?;
//! let (forze, _join) = Forze::spawn(config).await?;
//!
//! // From any task, through the handle:
//! let orders = forze.counter("orders")?;
//! let n = orders.incr(&CounterId::main(), 1).await?;
//!
//! // From another actor, by message:
//! let actor = ActorRef::<CounterMsg>::where_is("forze.counter.orders".to_string()).unwrap();
//! let answer: forze_redis_actors::Result<i64> =
//!     call_t!(actor, |reply| CounterMsg::Incr { id: CounterId::main(), by: 1, reply }, 1000)
//!         .expect("counter actor answered");
//! let m = answer?;
//! assert_eq!(m, n + 1);
//! forze.shutdown().await?;
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod cache;
mod call;
mod counter;
mod gauges;
mod handle;
mod heartbeat;
mod idempotency;
mod names;
mod pool;
mod reply;
mod resilience;
mod restart;
mod shared;
mod snapshot;
mod supervisor;
mod tracking;

// Spawning and the handle.
pub use handle::{Forze, ForzeHandle, ForzeStats, ResourceOperations};

// The resources (one cheap-`Clone` handle per contract), their ids, guards and results.
pub use forze_redis::idempotency::payload_hash;
pub use forze_redis::Cache;
pub use forze_redis::{
    Admission, Begin, Breaker, CacheKey, CacheRead, CallError, Claim, Counter, CounterEntry,
    CounterId, DecidedBy, Decision, Freshness, IdemRequest, Idempotency, Lock, LockGuard, LockId,
    LostReason, LostSignal, Phase, RateLimiter, RunError, RunId, SnapshotMeta, SnapshotWriter,
    Snapshots, TenantId, Transition,
};

// Configuration, errors, health.
pub use forze_redis::{
    Clock, Config, ConflictReason, ConnectFailure, Error, ErrorKind, Health, HealthState, Mode,
    RedisUrl, Result, RouteEndpoint, TlsConfig, ENV_PREFIX,
};

/// `tower` layers: a fleet-wide rate limit and circuit breaker in front of any
/// `tower::Service` (the `tower` feature).
#[cfg(feature = "tower")]
pub mod layers {
    pub use forze_redis::layers::{
        BreakerLayer, Guarded, RateLimitLayer, RateLimited, Refusal, ResponseClassifier,
    };
}

// Statistics.
pub use forze_redis::{
    BreakerStats, CacheStats, CounterStats, HeartbeatStats, OperationCount, RateLimitStats,
    RouterStats,
};
pub use pool::PoolStats;
pub use resilience::ResilienceStats;
pub use supervisor::SupervisorStats;
pub use tracking::TrackingStats;

// Messages, for callers that are actors, and the names the actors are registered under.
pub use cache::CacheMsg;
pub use counter::CounterMsg;
pub use heartbeat::HeartbeatMsg;
pub use idempotency::IdempotencyMsg;
pub use names::ActorNames;
pub use pool::PoolMsg;
pub use resilience::ResilienceMsg;
pub use snapshot::SnapshotMsg;
pub use supervisor::{ChildKind, SupervisorMsg};
pub use tracking::TrackingMsg;

/// The names most programs use: `use forze_redis_actors::prelude::*;`.
pub mod prelude {
    pub use crate::{
        Breaker, Cache, CacheKey, Config, Counter, CounterId, Error, ErrorKind, Forze, ForzeHandle,
        IdemRequest, Idempotency, Lock, LockGuard, LockId, RateLimiter, Result, RunId, Snapshots,
        TenantId,
    };
}

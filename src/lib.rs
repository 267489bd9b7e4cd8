//! # forze-redis (core)
//!
//! The runtime of forze-redis: configuration, the key layout, errors, the connection, the
//! tracking session, and one handle type per contract with its Redis and process-local
//! implementations side by side. No actors: the supervised tree that hosts these loops is the
//! `forze-redis-actors` crate, the one applications add; it re-exports everything below that
//! users name.
//!
//! | module | what lives there |
//! |---|---|
//! | [`config`] | the serde configuration tree, defaults, validation, secret redaction |
//! | [`keys`] | the key layout: escaping, tenants, hash tags, namespace prefixes |
//! | [`error`] | the error type, its kinds, classification of driver errors |
//! | [`runtime`] | every resource built from a `Config`, lookups by name |
//! | [`gate`], [`task`] | the shutdown gate every handle checks; a task aborted with its owner |
//! | [`connection`] | the fred pool with safe settings, command options, script execution, health |
//! | [`tracking`] | the tracking session: RESP3 connections, topology, trust in the L1s |
//! | [`tls`] | `[redis.tls]` and the rustls client every connection shares |
//! | [`connect_failure`] | why connections fail (certificate refused, not TLS, auth…) |
//! | [`scripts`] | the Lua scripts (`.lua` files beside the module) |
//! | [`counter`] | atomic counters |
//! | [`cache`] | caches: codec, L1, Redis and local stores, single-flight loads |
//! | [`lock`] | fenced distributed locks, guards, lease renewal |
//! | [`idempotency`] | idempotency records: claim, commit, fail, replay, `run` |
//! | [`snapshot`] | search-result snapshots: runs written in order, paged in one round trip |
//! | [`ratelimit`] | fleet-wide token buckets on the server clock, with a local fallback |
//! | [`breaker`] | fleet-wide circuit breakers on the server clock, local cache and fallback |
//! | [`routing`] | tenant routing: the route table, one pool per endpoint, LRU-bounded |
//! | [`clock`] | the injectable local clock breakers and rate limiters read |
//! | `layers` | `tower` layers: rate limit and circuit breaker (the `tower` feature) |
//! | [`telemetry`] | spans (OpenTelemetry database conventions) and metrics of every operation |
//!
//! The modules are shared with the actor crate, the tests and the benchmarks, and hidden from
//! the documentation: the names at this crate's root are the supported surface.

#![warn(missing_docs)]

#[doc(hidden)]
pub mod breaker;
// Shared by counters and rate limits; not part of any surface.
#[doc(hidden)]
pub mod cache;
#[doc(hidden)]
pub mod clock;
mod coalesce;
#[doc(hidden)]
pub mod config;
#[doc(hidden)]
pub mod connect_failure;
#[doc(hidden)]
pub mod connection;
#[doc(hidden)]
pub mod counter;
mod deadline;
#[doc(hidden)]
pub mod decided_by;
#[doc(hidden)]
pub mod error;
#[doc(hidden)]
pub mod gate;
#[doc(hidden)]
pub mod idempotency;
#[doc(hidden)]
pub mod keys;
#[cfg(feature = "tower")]
#[doc(hidden)]
pub mod layers;
#[doc(hidden)]
pub mod lock;
mod pooled;
#[doc(hidden)]
pub mod ratelimit;
mod read_watch;
#[doc(hidden)]
pub mod routing;
#[doc(hidden)]
pub mod runtime;
#[doc(hidden)]
pub mod scripts;
#[doc(hidden)]
pub mod snapshot;
mod striped;
mod sweep;
#[doc(hidden)]
pub mod task;
#[doc(hidden)]
pub mod telemetry;
#[doc(hidden)]
pub mod time;
#[doc(hidden)]
pub mod tls;
#[doc(hidden)]
pub mod tracking;
mod unresponsive;

pub use breaker::{Admission, Breaker, BreakerStats, CallError, Phase, Transition};
pub use cache::{Cache, CacheKey, CacheRead, CacheStats, Freshness};
pub use clock::Clock;
pub use config::{Config, Mode, RedisUrl, RouteEndpoint, ENV_PREFIX};
pub use connect_failure::ConnectFailure;
pub use connection::{Health, HealthState};
pub use counter::{Counter, CounterEntry, CounterId, CounterStats};
pub use decided_by::DecidedBy;
pub use error::{ConflictReason, Error, ErrorKind, Result};
pub use idempotency::{Begin, Claim, IdemRequest, Idempotency, RunError};
pub use keys::TenantId;
pub use lock::renewal::HeartbeatStats;
pub use lock::{Lock, LockGuard, LockId, LostReason, LostSignal};
pub use ratelimit::{Decision, RateLimitStats, RateLimiter};
pub use routing::RouterStats;
pub use snapshot::{RunId, SnapshotMeta, SnapshotWriter, Snapshots};
pub use telemetry::OperationCount;
pub use tls::TlsConfig;

//! # forze-redis (core)
//!
//! Fast, ephemeral, coordination-oriented state on Redis or Valkey for fleets of tokio services.
//! This crate holds everything that is not an actor; the supervised actor tree that users spawn
//! lives in the `forze-redis-actors` crate, which builds on this one.
//!
//! | module | what lives there |
//! |---|---|
//! | [`config`] | the serde configuration tree, defaults, validation, secret redaction |
//! | [`keys`] | the key layout: escaping, tenants, hash tags, namespace prefixes |
//! | [`error`] | the error type, its kinds, classification of driver errors |
//! | [`connection`] | the fred pool with safe settings, command options, script execution, health |
//! | [`tls`] | `[redis.tls]` and the rustls client every connection shares; refusal of TLS a build cannot honour |
//! | [`connect_failure`] | why connections fail (certificate refused, not TLS, auth…), carried by `Unavailable` |
//! | [`scripts`] | the Lua scripts (`.lua` files beside the module) |
//! | [`counter`] | atomic counters: contract, Redis store, local store, the resource wrapper |
//! | [`cache`] | caches: contract, codec, L1, Redis and local stores, the tracking connection |
//! | [`lock`] | fenced distributed locks: contract, scripts' callers, local store |
//! | [`idempotency`] | idempotency records: claim, commit, fail, replay, the `run` wrapper |
//! | [`snapshot`] | search-result snapshots: runs written in order, paged in one round trip |
//! | [`ratelimit`] | fleet-wide token buckets on the server clock, with a local fallback |
//! | [`breaker`] | fleet-wide circuit breakers on the server clock, local cache and fallback |
//! | [`routing`] | tenant routing: the route table, one pool per endpoint, LRU-bounded |
//! | [`clock`] | the injectable local clock breakers and rate limiters read |
//!
//! Each contract module holds its contract, its Redis implementation and its process-local
//! implementation side by side. Nothing here awaits an actor's mailbox: handles in the actor
//! crate call these types directly on the caller's task.

pub mod breaker;
pub mod cache;
pub mod clock;
pub mod config;
pub mod connect_failure;
pub mod connection;
pub mod counter;
pub mod error;
pub mod idempotency;
pub mod keys;
pub mod lock;
pub mod ratelimit;
pub mod routing;
pub mod scripts;
pub mod snapshot;
pub mod tls;

pub use config::Config;
pub use error::{ConflictReason, Error, ErrorKind, Result};

//! # forze-redis-actors
//!
//! The supervised ractor actor tree of forze-redis. Spawn a supervisor with [`Forze::spawn`]
//! (or [`Forze::spawn_linked`] under your own actor), then use its resources through a
//! [`ForzeHandle`] from any task, or send typed messages to its children by name.
//!
//! | module | what lives there |
//! |---|---|
//! | [`supervisor`] | the root actor: children, one-for-one restarts, ordered shutdown |
//! | [`pool`] | the pool actor: connection lifecycle and published health |
//! | [`counter`] | counter actors, [`CounterMsg`], [`CounterHandle`] |
//! | [`restart`] | backoff and restart intensity arithmetic |
//! | [`names`] | registered actor names with a configurable prefix |
//!
//! Hot paths never queue behind an actor: handles call the core crate's resources on the
//! caller's task with a clone of the connection pool. Actors own lifecycle, health,
//! supervision and statistics, and answer message requests by spawning the work on a tracked
//! task rather than awaiting Redis in `handle`.
//!
//! ```no_run
//! use forze_redis::{counter::CounterId, Config};
//! use forze_redis_actors::{CounterMsg, Forze};
//! use ractor::{call_t, ActorRef};
//!
//! # async fn demo() -> forze_redis::Result<()> {
//! let config = Config::from_toml_str("[counters.orders]")?;   // no [redis]: embedded mode
//! let (forze, _join) = Forze::spawn(config).await?;
//!
//! // From any task, through the handle:
//! let orders = forze.counter("orders")?;
//! let n = orders.incr(&CounterId::main(), 1).await?;
//!
//! // From another actor, by message:
//! let actor = ActorRef::<CounterMsg>::where_is("forze.counter.orders".to_string()).unwrap();
//! let answer: forze_redis::Result<i64> =
//!     call_t!(actor, |reply| CounterMsg::Incr { id: CounterId::main(), by: 1, reply }, 1000)
//!         .expect("counter actor answered");
//! let m = answer?;
//! assert_eq!(m, n + 1);
//! forze.shutdown().await?;
//! # Ok(()) }
//! ```

pub mod cache;
mod call;
pub mod counter;
mod handle;
pub mod heartbeat;
pub mod idempotency;
pub mod lock;
pub mod names;
pub mod pool;
pub mod ratelimit;
pub mod resilience;
pub mod restart;
mod shared;
pub mod snapshot;
pub mod supervisor;
pub mod tracking;

pub use cache::{CacheActor, CacheHandle, CacheMsg};
pub use counter::{CounterActor, CounterHandle, CounterMsg};
pub use handle::{Forze, ForzeHandle, ForzeStats};
pub use heartbeat::{HeartbeatMsg, HeartbeatStats, Heartbeater};
pub use idempotency::{IdempotencyActor, IdempotencyHandle, IdempotencyMsg};
pub use lock::{LockGuard, LockHandle, LostReason, LostSignal};
pub use names::ActorNames;
pub use pool::{PoolActor, PoolMsg, PoolStats};
pub use ratelimit::{BreakerHandle, RateLimitHandle};
pub use resilience::{ResilienceActor, ResilienceMsg, ResilienceStats};
pub use shared::Shared;
pub use snapshot::{SnapshotActor, SnapshotHandle, SnapshotMsg};
pub use supervisor::{ChildKind, ForzeSupervisor, SupervisorMsg, SupervisorStats};
pub use tracking::{TrackingMsg, TrackingStats, TrackingSubscriber};

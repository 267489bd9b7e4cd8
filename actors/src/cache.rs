//! Cache actors (`<prefix>.cache.<name>`), their messages and [`CacheHandle`].
//!
//! The actor owns the lifecycle of its namespace's L1 (a periodic sweep of expired entries,
//! manual flushes) and answers `Stats`. Data never waits on it:
//! - [`CacheHandle`] reads the L1 directly and goes to Redis on the caller's task;
//! - [`CacheMsg`] requests (for actor callers) run on tracked tasks that reply on the port.
//!
//! The L1 and the counters live in [`Shared`], so a restarted cache actor resumes with them.
//! Its restart needs no flush: coherence is the tracking subscriber's job, and it never stops.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use forze_redis::cache::l1::FlushReason;
use forze_redis::cache::{Cache, CacheKey, CacheStats};
use forze_redis::Result;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::call::call_named;
use crate::pool::AbortOnDrop;
use crate::shared::Shared;

/// How often the actor removes expired L1 entries.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Requests to a cache actor. Values travel as bytes (exactly as stored with `set_bytes`).
#[derive(Debug)]
pub enum CacheMsg {
    /// Read a key's bytes.
    Get {
        /// The key.
        key: CacheKey,
        /// The bytes, or `None` on a miss.
        reply: RpcReplyPort<Result<Option<Bytes>>>,
    },
    /// Store bytes under a key.
    Set {
        /// The key.
        key: CacheKey,
        /// The bytes.
        value: Bytes,
        /// Time to live; the namespace default when `None`.
        ttl: Option<Duration>,
        /// Done.
        reply: RpcReplyPort<Result<()>>,
    },
    /// Remove a key.
    Delete {
        /// The key.
        key: CacheKey,
        /// `DEL` (true) or `UNLINK` (false).
        hard: bool,
        /// Whether it existed.
        reply: RpcReplyPort<Result<bool>>,
    },
    /// Empty this namespace's L1 (operators; the tracking subscriber flushes by itself).
    FlushL1,
    /// Remove expired L1 entries (the actor's own timer).
    Sweep,
    /// Report statistics.
    Stats(RpcReplyPort<CacheStats>),
    /// Make this actor panic, to drill supervision.
    #[cfg(feature = "fault-injection")]
    Panic,
}

/// The cache actor of one namespace.
#[derive(Debug)]
pub struct CacheActor;

/// Arguments of a cache actor incarnation.
#[derive(Debug, Clone)]
pub struct CacheActorArgs {
    pub(crate) shared: Arc<Shared>,
    pub(crate) cache: Arc<Cache>,
}

/// State of one incarnation.
#[derive(Debug)]
pub struct CacheState {
    args: CacheActorArgs,
    _sweeper: Option<AbortOnDrop>,
}

impl Actor for CacheActor {
    type Msg = CacheMsg;
    type State = CacheState;
    type Arguments = CacheActorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<CacheMsg>,
        args: CacheActorArgs,
    ) -> Result<CacheState, ActorProcessingErr> {
        let sweeper = args
            .cache
            .l1()
            .map(|_| AbortOnDrop(myself.send_interval(SWEEP_EVERY, || CacheMsg::Sweep)));
        Ok(CacheState {
            args,
            _sweeper: sweeper,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<CacheMsg>,
        msg: CacheMsg,
        state: &mut CacheState,
    ) -> Result<(), ActorProcessingErr> {
        let cache = state.args.cache.clone();
        let shared = &state.args.shared;
        macro_rules! spawn_reply {
            ($op:literal, $reply:ident, $fut:expr) => {{
                match shared.check_open($op) {
                    Err(e) => {
                        let _ = $reply.send(Err(e));
                    }
                    Ok(()) => {
                        shared.tasks.spawn(async move {
                            let _ = $reply.send($fut.await);
                        });
                    }
                }
            }};
        }
        match msg {
            CacheMsg::Get { key, reply } => {
                spawn_reply!(
                    "cache.get",
                    reply,
                    async move { cache.get_bytes(&key).await }
                )
            }
            CacheMsg::Set {
                key,
                value,
                ttl,
                reply,
            } => spawn_reply!("cache.set", reply, async move {
                cache.set_bytes(&key, &value, ttl).await
            }),
            CacheMsg::Delete { key, hard, reply } => {
                spawn_reply!("cache.delete", reply, async move {
                    cache.delete(&key, hard).await
                })
            }
            CacheMsg::FlushL1 => {
                if let Some(l1) = cache.l1() {
                    l1.flush(FlushReason::Manual, true);
                }
            }
            CacheMsg::Sweep => {
                if let Some(l1) = cache.l1() {
                    l1.sweep();
                }
            }
            CacheMsg::Stats(reply) => {
                let _ = reply.send(cache.stats());
            }
            #[cfg(feature = "fault-injection")]
            CacheMsg::Panic => panic!("fault injection: cache actor panic"),
        }
        Ok(())
    }
}

/// A cache namespace, used from any task. Cheap to clone.
///
/// Every method runs on the caller's task: an L1 hit is a map lookup, a miss goes to Redis
/// through a clone of the pool. Nothing waits on an actor's mailbox. See
/// [`forze_redis::cache`] for the contract, and `docs/cache.md` for the guarantees.
#[derive(Debug, Clone)]
pub struct CacheHandle {
    pub(crate) shared: Arc<Shared>,
    pub(crate) cache: Arc<Cache>,
}

impl CacheHandle {
    /// The resource name.
    pub fn name(&self) -> &str {
        self.cache.name()
    }

    /// The registered name of this namespace's actor, for sending [`CacheMsg`]s.
    pub fn actor_name(&self) -> String {
        self.shared.names.cache(self.cache.name())
    }

    /// The value of `key`, or `None` (missing, expired, corrupt, or Redis unreachable).
    pub async fn get<T: DeserializeOwned>(&self, key: &CacheKey) -> Result<Option<T>> {
        self.shared.check_open("cache.get")?;
        self.cache.get(key).await
    }

    /// The bytes of `key` exactly as stored.
    pub async fn get_bytes(&self, key: &CacheKey) -> Result<Option<Bytes>> {
        self.shared.check_open("cache.get")?;
        self.cache.get_bytes(key).await
    }

    /// The version and value of a versioned entry.
    pub async fn get_versioned<T: DeserializeOwned>(
        &self,
        key: &CacheKey,
    ) -> Result<Option<(u64, T)>> {
        self.shared.check_open("cache.get")?;
        self.cache.get_versioned(key).await
    }

    /// The values of `keys` in input order.
    pub async fn get_many<T: DeserializeOwned>(&self, keys: &[CacheKey]) -> Result<Vec<Option<T>>> {
        self.shared.check_open("cache.get_many")?;
        self.cache.get_many(keys).await
    }

    /// Whether `key` holds an entry.
    pub async fn exists(&self, key: &CacheKey) -> Result<bool> {
        self.shared.check_open("cache.exists")?;
        self.cache.exists(key).await
    }

    /// Store a serde value.
    pub async fn set<T: Serialize + ?Sized>(
        &self,
        key: &CacheKey,
        value: &T,
        ttl: Option<Duration>,
    ) -> Result<()> {
        self.shared.check_open("cache.set")?;
        self.cache.set(key, value, ttl).await
    }

    /// Store raw bytes.
    pub async fn set_bytes(
        &self,
        key: &CacheKey,
        bytes: &[u8],
        ttl: Option<Duration>,
    ) -> Result<()> {
        self.shared.check_open("cache.set")?;
        self.cache.set_bytes(key, bytes, ttl).await
    }

    /// Store several serde values in one round trip.
    pub async fn set_many<T: Serialize>(
        &self,
        entries: &[(CacheKey, T)],
        ttl: Option<Duration>,
    ) -> Result<()> {
        self.shared.check_open("cache.set_many")?;
        self.cache.set_many(entries, ttl).await
    }

    /// Store `version` of `key` unless a newer one is stored; whether it was written.
    pub async fn set_versioned<T: Serialize + ?Sized>(
        &self,
        key: &CacheKey,
        version: u64,
        value: &T,
        ttl: Option<Duration>,
    ) -> Result<bool> {
        self.shared.check_open("cache.set_versioned")?;
        self.cache.set_versioned(key, version, value, ttl).await
    }

    /// [`CacheHandle::set_versioned`] for several keys.
    pub async fn set_many_versioned<T: Serialize>(
        &self,
        entries: &[(CacheKey, u64, T)],
        ttl: Option<Duration>,
    ) -> Result<Vec<bool>> {
        self.shared.check_open("cache.set_many_versioned")?;
        self.cache.set_many_versioned(entries, ttl).await
    }

    /// Remove `key`; whether it existed.
    pub async fn delete(&self, key: &CacheKey, hard: bool) -> Result<bool> {
        self.shared.check_open("cache.delete")?;
        self.cache.delete(key, hard).await
    }

    /// Remove `keys`; how many existed.
    pub async fn delete_many(&self, keys: &[CacheKey], hard: bool) -> Result<u64> {
        self.shared.check_open("cache.delete")?;
        self.cache.delete_many(keys, hard).await
    }

    /// The value of `key`, loading it once per process on a miss.
    pub async fn get_or_load<T, F, Fut, E>(
        &self,
        key: &CacheKey,
        ttl: Option<Duration>,
        loader: F,
    ) -> Result<T>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, E>>,
        E: std::fmt::Display,
    {
        self.shared.check_open("cache.get_or_load")?;
        self.cache.get_or_load(key, ttl, loader).await
    }

    /// The namespace's L1, for diagnostics and benchmarks (`None` without one).
    pub fn l1(&self) -> Option<&Arc<forze_redis::cache::l1::L1>> {
        self.cache.l1()
    }

    /// Statistics, read without a mailbox.
    pub fn stats_now(&self) -> CacheStats {
        self.cache.stats()
    }

    /// Statistics as the cache actor reports them.
    pub async fn stats(&self) -> Result<CacheStats> {
        call_named(
            &self.actor_name(),
            self.shared.config.supervision.call_timeout,
            CacheMsg::Stats,
        )
        .await
    }
}

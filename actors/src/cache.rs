//! Cache actors (`<prefix>.cache.<name>`) and their messages.
//!
//! The actor owns the lifecycle of its namespace's L1 (a periodic sweep of expired entries,
//! manual flushes) and answers `Stats`. Data never waits on it:
//! - [`Cache`] reads the L1 directly and goes to Redis on the caller's task;
//! - [`CacheMsg`] requests (for actor callers) run on tracked tasks ([`reply_later`]).
//!
//! The L1 and the counters live in the runtime, so a restarted cache actor resumes with them.
//! Its restart needs no flush: coherence is the tracking subscriber's job, and it never stops.

use std::time::Duration;

use bytes::Bytes;
use forze_redis::task::AbortOnDrop;
use forze_redis::{Cache, CacheKey, CacheStats, Result};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::reply::reply_later;
use crate::shared::ResourceArgs;

/// How often the actor removes expired L1 entries.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Requests to a cache actor. Values travel as bytes (exactly as stored with `set_bytes`).
#[derive(Debug)]
#[non_exhaustive]
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
    /// Remove a key with `DEL`.
    Delete {
        /// The key.
        key: CacheKey,
        /// Whether it existed.
        reply: RpcReplyPort<Result<bool>>,
    },
    /// Remove a key with `UNLINK` (memory reclaimed in the background).
    Unlink {
        /// The key.
        key: CacheKey,
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

/// State of one incarnation.
#[derive(Debug)]
pub struct CacheState {
    args: ResourceArgs<Cache>,
    _sweeper: Option<AbortOnDrop>,
}

impl Actor for CacheActor {
    type Msg = CacheMsg;
    type State = CacheState;
    type Arguments = ResourceArgs<Cache>;

    async fn pre_start(
        &self,
        myself: ActorRef<CacheMsg>,
        args: ResourceArgs<Cache>,
    ) -> Result<CacheState, ActorProcessingErr> {
        let sweeper = args
            .resource
            .has_l1()
            .then(|| AbortOnDrop(myself.send_interval(SWEEP_EVERY, || CacheMsg::Sweep)));
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
        let cache = state.args.resource.clone();
        let shared = &state.args.shared;
        match msg {
            CacheMsg::Get { key, reply } => {
                reply_later(shared, reply, async move { cache.get_bytes(&key).await })
            }
            CacheMsg::Set {
                key,
                value,
                ttl,
                reply,
            } => reply_later(shared, reply, async move {
                cache.set_bytes(&key, &value, ttl).await
            }),
            CacheMsg::Delete { key, reply } => {
                reply_later(shared, reply, async move { cache.delete(&key).await })
            }
            CacheMsg::Unlink { key, reply } => {
                reply_later(shared, reply, async move { cache.unlink(&key).await })
            }
            CacheMsg::FlushL1 => cache.flush_l1(),
            CacheMsg::Sweep => cache.sweep_l1(),
            CacheMsg::Stats(reply) => {
                let _ = reply.send(cache.stats());
            }
            #[cfg(feature = "fault-injection")]
            CacheMsg::Panic => panic!("fault injection: cache actor panic"),
        }
        Ok(())
    }
}

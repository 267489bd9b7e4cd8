//! Counter actors (`<prefix>.counter.<name>`), their messages and [`CounterHandle`].
//!
//! Two ways in, one implementation:
//! - [`CounterHandle`] methods run on the caller's task straight against the shared
//!   [`Counter`] (Redis through a clone of the pool, or local state): no mailbox on the hot path.
//! - [`CounterMsg`] requests, for callers that are actors and prefer messages: the counter actor
//!   never awaits Redis in its `handle`; it spawns the operation on a tracked task that replies
//!   on the request's [`RpcReplyPort`]. A request in flight when the actor fails still gets its
//!   reply, because the task does not belong to the actor.

use std::ops::RangeInclusive;
use std::sync::Arc;

use forze_redis::counter::{checked_value, Counter, CounterEntry, CounterId, CounterStatsSnapshot};
use forze_redis::keys::TenantId;
use forze_redis::Result;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::call::call_named;
use crate::shared::Shared;

/// Requests to a counter actor. Every request carries its reply port.
#[derive(Debug)]
pub enum CounterMsg {
    /// Add `by`; replies with the new value.
    Incr {
        /// Which counter.
        id: CounterId,
        /// The amount (may be 0 or negative).
        by: i64,
        /// The new value.
        reply: RpcReplyPort<Result<i64>>,
    },
    /// Subtract `by`; replies with the new value.
    Decr {
        /// Which counter.
        id: CounterId,
        /// The amount.
        by: i64,
        /// The new value.
        reply: RpcReplyPort<Result<i64>>,
    },
    /// Allocate `size` consecutive values; replies with them ascending.
    IncrBatch {
        /// Which counter.
        id: CounterId,
        /// How many values (at least 1).
        size: i64,
        /// The allocated range.
        reply: RpcReplyPort<Result<RangeInclusive<i64>>>,
    },
    /// Read the value (0 when never touched).
    Get {
        /// Which counter.
        id: CounterId,
        /// The value.
        reply: RpcReplyPort<Result<i64>>,
    },
    /// Set the value; replies with it.
    Reset {
        /// Which counter.
        id: CounterId,
        /// The new value.
        value: i64,
        /// The new value.
        reply: RpcReplyPort<Result<i64>>,
    },
    /// List the counters of a tenant (or the tenant-less ones).
    List {
        /// The tenant.
        tenant: Option<TenantId>,
        /// The counters by suffix.
        reply: RpcReplyPort<Result<Vec<CounterEntry>>>,
    },
    /// Report statistics.
    Stats(RpcReplyPort<CounterStatsSnapshot>),
    /// Make this actor panic, to drill supervision.
    #[cfg(feature = "fault-injection")]
    Panic,
}

/// The counter actor of one counter resource.
#[derive(Debug)]
pub struct CounterActor;

/// Arguments (and state) of a counter actor incarnation.
#[derive(Debug, Clone)]
pub struct CounterActorArgs {
    pub(crate) shared: Arc<Shared>,
    pub(crate) counter: Arc<Counter>,
}

impl Actor for CounterActor {
    type Msg = CounterMsg;
    type State = CounterActorArgs;
    type Arguments = CounterActorArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<CounterMsg>,
        args: CounterActorArgs,
    ) -> Result<CounterActorArgs, ActorProcessingErr> {
        Ok(args)
    }

    async fn handle(
        &self,
        _myself: ActorRef<CounterMsg>,
        msg: CounterMsg,
        state: &mut CounterActorArgs,
    ) -> Result<(), ActorProcessingErr> {
        let counter = state.counter.clone();
        let shared = &state.shared;
        // Each arm replies from a tracked task: the actor never awaits Redis.
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
            CounterMsg::Incr { id, by, reply } => {
                spawn_reply!(
                    "counter.incr",
                    reply,
                    async move { counter.incr(&id, by).await }
                )
            }
            CounterMsg::Decr { id, by, reply } => {
                spawn_reply!(
                    "counter.decr",
                    reply,
                    async move { counter.decr(&id, by).await }
                )
            }
            CounterMsg::IncrBatch { id, size, reply } => {
                spawn_reply!("counter.incr_batch", reply, async move {
                    counter.incr_batch(&id, size).await
                })
            }
            CounterMsg::Get { id, reply } => {
                spawn_reply!("counter.get", reply, async move { counter.get(&id).await })
            }
            CounterMsg::Reset { id, value, reply } => {
                spawn_reply!("counter.reset", reply, async move {
                    counter.reset(&id, value).await
                })
            }
            CounterMsg::List { tenant, reply } => spawn_reply!("counter.list", reply, async move {
                counter.list(tenant.as_ref()).await
            }),
            CounterMsg::Stats(reply) => {
                let _ = reply.send(state.counter.stats());
            }
            #[cfg(feature = "fault-injection")]
            CounterMsg::Panic => panic!("fault injection: counter actor panic"),
        }
        Ok(())
    }
}

/// A counter resource, used from any task. Cheap to clone.
///
/// Data operations run on the caller's task (no actor mailbox); they are refused with
/// `Unavailable` once the supervisor shuts down. Concurrency: every operation is one atomic
/// step on Redis (or under the entry lock of the local map), so concurrent callers on any
/// replica never get the same value from [`incr`](Self::incr) or overlapping
/// [`incr_batch`](Self::incr_batch) ranges.
#[derive(Debug, Clone)]
pub struct CounterHandle {
    pub(crate) shared: Arc<Shared>,
    pub(crate) counter: Arc<Counter>,
}

impl CounterHandle {
    /// The resource name.
    pub fn name(&self) -> &str {
        self.counter.name()
    }

    /// The registered name of this resource's actor, for sending [`CounterMsg`]s.
    pub fn actor_name(&self) -> String {
        self.shared.names.counter(self.counter.name())
    }

    /// Add `by` (0 reads and creates the counter at 0; negative subtracts); the new value.
    pub async fn incr(&self, id: &CounterId, by: i64) -> Result<i64> {
        self.shared.check_open("counter.incr")?;
        self.counter.incr(id, by).await
    }

    /// Subtract `by`; the new value.
    pub async fn decr(&self, id: &CounterId, by: i64) -> Result<i64> {
        self.shared.check_open("counter.decr")?;
        self.counter.decr(id, by).await
    }

    /// Allocate `size` (≥ 1) consecutive values atomically; ascending.
    pub async fn incr_batch(&self, id: &CounterId, size: i64) -> Result<RangeInclusive<i64>> {
        self.shared.check_open("counter.incr_batch")?;
        self.counter.incr_batch(id, size).await
    }

    /// The value; 0 when never touched.
    pub async fn get(&self, id: &CounterId) -> Result<i64> {
        self.shared.check_open("counter.get")?;
        self.counter.get(id).await
    }

    /// Set the value; returns it. Values outside `i64` (`u64::MAX`, an `i128`…) are refused
    /// with a `Validation` error before anything is sent.
    pub async fn reset<V>(&self, id: &CounterId, value: V) -> Result<i64>
    where
        V: TryInto<i64> + std::fmt::Display + Copy,
    {
        let value = checked_value(value)?;
        self.shared.check_open("counter.reset")?;
        self.counter.reset(id, value).await
    }

    /// The counters of `tenant` by suffix; exact-prefix (`orders` never lists `orders_archive`).
    pub async fn list(&self, tenant: Option<&TenantId>) -> Result<Vec<CounterEntry>> {
        self.shared.check_open("counter.list")?;
        self.counter.list(tenant).await
    }

    /// Statistics, read without a mailbox.
    pub fn stats_now(&self) -> CounterStatsSnapshot {
        self.counter.stats()
    }

    /// Statistics as the counter actor reports them (through its mailbox, re-resolving the
    /// actor by name if it is being restarted).
    pub async fn stats(&self) -> Result<CounterStatsSnapshot> {
        call_named(
            &self.actor_name(),
            self.shared.config.supervision.call_timeout,
            CounterMsg::Stats,
        )
        .await
    }
}

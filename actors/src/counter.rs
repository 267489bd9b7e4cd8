//! Counter actors (`<prefix>.counter.<name>`) and their messages.
//!
//! Two ways in, one implementation:
//! - [`Counter`] methods run on the caller's task (Redis through a clone of the pool, or local
//!   state): no mailbox on the hot path.
//! - [`CounterMsg`] requests, for callers that are actors and prefer messages: the actor serves
//!   each by calling the same [`Counter`] on a tracked task ([`reply_later`]).

use std::ops::RangeInclusive;

use forze_redis::{Counter, CounterEntry, CounterId, CounterStats, Result, TenantId};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::reply::reply_later;
use crate::shared::ResourceArgs;

/// Requests to a counter actor. Every request carries its reply port.
#[derive(Debug)]
#[non_exhaustive]
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
    Stats(RpcReplyPort<CounterStats>),
    /// Make this actor panic, to drill supervision.
    #[cfg(feature = "fault-injection")]
    Panic,
}

/// The counter actor of one counter resource.
#[derive(Debug)]
pub struct CounterActor;

impl Actor for CounterActor {
    type Msg = CounterMsg;
    type State = ResourceArgs<Counter>;
    type Arguments = ResourceArgs<Counter>;

    async fn pre_start(
        &self,
        _myself: ActorRef<CounterMsg>,
        args: ResourceArgs<Counter>,
    ) -> Result<ResourceArgs<Counter>, ActorProcessingErr> {
        Ok(args)
    }

    async fn handle(
        &self,
        _myself: ActorRef<CounterMsg>,
        msg: CounterMsg,
        state: &mut ResourceArgs<Counter>,
    ) -> Result<(), ActorProcessingErr> {
        let counter = state.resource.clone();
        let shared = &state.shared;
        match msg {
            CounterMsg::Incr { id, by, reply } => {
                reply_later(shared, reply, async move { counter.incr(&id, by).await })
            }
            CounterMsg::Decr { id, by, reply } => {
                reply_later(shared, reply, async move { counter.decr(&id, by).await })
            }
            CounterMsg::IncrBatch { id, size, reply } => {
                reply_later(
                    shared,
                    reply,
                    async move { counter.incr_batch(&id, size).await },
                )
            }
            CounterMsg::Get { id, reply } => {
                reply_later(shared, reply, async move { counter.get(&id).await })
            }
            CounterMsg::Reset { id, value, reply } => {
                reply_later(
                    shared,
                    reply,
                    async move { counter.reset(&id, value).await },
                )
            }
            CounterMsg::List { tenant, reply } => {
                reply_later(
                    shared,
                    reply,
                    async move { counter.list(tenant.as_ref()).await },
                )
            }
            CounterMsg::Stats(reply) => {
                let _ = reply.send(state.resource.stats());
            }
            #[cfg(feature = "fault-injection")]
            CounterMsg::Panic => panic!("fault injection: counter actor panic"),
        }
        Ok(())
    }
}

//! Idempotency actors (`<prefix>.idempotency.<name>`) and their messages: a message front
//! door, for callers that are actors, to the same records [`Idempotency`] serves on the
//! caller's task.

use std::sync::Arc;

use forze_redis::{Begin, Claim, IdemRequest, Idempotency, Result};
use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::reply::reply_later;
use crate::shared::{ResourceArgs, Shared};

/// Requests to an idempotency actor (`<prefix>.idempotency.<name>`), for callers that are
/// actors. Each is served on a tracked task that replies on the port; the actor never awaits
/// Redis.
#[derive(Debug)]
#[non_exhaustive]
pub enum IdempotencyMsg {
    /// [`Idempotency::begin`].
    Begin {
        /// The request.
        req: IdemRequest,
        /// The claim or the replayed result.
        reply: ractor::RpcReplyPort<Result<Begin>>,
    },
    /// [`Idempotency::commit`].
    Commit {
        /// The claim.
        claim: Claim,
        /// The result bytes.
        result: bytes::Bytes,
        /// Done.
        reply: ractor::RpcReplyPort<Result<()>>,
    },
    /// [`Idempotency::fail`].
    Fail {
        /// The claim.
        claim: Claim,
        /// Whether it was the caller's.
        reply: ractor::RpcReplyPort<Result<bool>>,
    },
    /// Make this actor panic, to drill supervision.
    #[cfg(feature = "fault-injection")]
    Panic,
}

/// The actor of one idempotency resource.
#[derive(Debug)]
pub struct IdempotencyActor;

impl Actor for IdempotencyActor {
    type Msg = IdempotencyMsg;
    type State = ResourceArgs<Idempotency>;
    type Arguments = ResourceArgs<Idempotency>;

    async fn pre_start(
        &self,
        _myself: ActorRef<IdempotencyMsg>,
        args: ResourceArgs<Idempotency>,
    ) -> std::result::Result<ResourceArgs<Idempotency>, ActorProcessingErr> {
        Ok(args)
    }

    async fn handle(
        &self,
        _myself: ActorRef<IdempotencyMsg>,
        msg: IdempotencyMsg,
        state: &mut ResourceArgs<Idempotency>,
    ) -> std::result::Result<(), ActorProcessingErr> {
        let idem = state.resource.clone();
        let shared: &Arc<Shared> = &state.shared;
        match msg {
            IdempotencyMsg::Begin { req, reply } => {
                shared.tasks.spawn(async move {
                    let begun = idem.begin(&req).await;
                    if let Err(ractor::MessagingErr::SendErr(Ok(Begin::Proceed(claim)))) =
                        reply.send(begun)
                    {
                        // The caller gave up (its call timed out) before it learnt of the
                        // claim: nobody runs the operation, so a retry may claim at once
                        // rather than wait for the lease.
                        if let Err(e) = idem.fail(&claim).await {
                            tracing::debug!(error = %e, "release of an undelivered claim failed");
                        }
                    }
                });
            }
            IdempotencyMsg::Commit {
                claim,
                result,
                reply,
            } => reply_later(
                shared,
                reply,
                async move { idem.commit(&claim, &result).await },
            ),
            IdempotencyMsg::Fail { claim, reply } => {
                reply_later(shared, reply, async move { idem.fail(&claim).await })
            }
            #[cfg(feature = "fault-injection")]
            IdempotencyMsg::Panic => panic!("fault injection: idempotency actor panic"),
        }
        Ok(())
    }
}

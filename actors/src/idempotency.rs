//! Idempotency handles: [`IdempotencyHandle`] runs on the caller's task (the records live in
//! Redis, or in the shared local store in embedded mode; no actor holds them).
//!
//! See [`forze_redis::idempotency`] for the contract and `docs/idempotency.md` for the
//! guarantees.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use forze_redis::idempotency::{Begin, Claim, IdemRequest, Idempotency, RunError};
use forze_redis::Result;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::shared::Shared;

/// An idempotency resource, used from any task. Cheap to clone.
#[derive(Debug, Clone)]
pub struct IdempotencyHandle {
    pub(crate) shared: Arc<Shared>,
    pub(crate) idem: Arc<Idempotency>,
}

impl IdempotencyHandle {
    /// The resource name.
    pub fn name(&self) -> &str {
        self.idem.name()
    }

    /// The registered name of this resource's actor, for sending [`IdempotencyMsg`]s.
    pub fn actor_name(&self) -> String {
        self.shared.names.idempotency(self.idem.name())
    }

    /// Claim or replay; `Conflict(InProgress)` at once for a live duplicate.
    pub async fn begin(&self, req: &IdemRequest) -> Result<Begin> {
        self.shared.check_open("idempotency.begin")?;
        self.idem.begin(req).await
    }

    /// Claim or replay, waiting up to `max_wait` for a live duplicate to finish.
    pub async fn begin_wait(&self, req: &IdemRequest, max_wait: Duration) -> Result<Begin> {
        self.shared.check_open("idempotency.begin")?;
        self.idem.begin_wait(req, max_wait).await
    }

    /// Store the claim's result; `Conflict(NotOwner)` if the claim is not the caller's.
    pub async fn commit(&self, claim: &Claim, result: &[u8]) -> Result<()> {
        self.shared.check_open("idempotency.commit")?;
        self.idem.commit(claim, result).await
    }

    /// Release the claim so a retry can run; whether it was the caller's.
    pub async fn fail(&self, claim: &Claim) -> Result<bool> {
        self.shared.check_open("idempotency.fail")?;
        self.idem.fail(claim).await
    }

    /// Run `operation` idempotently (begin, run, commit or fail, or replay).
    pub async fn run<T, E, F, Fut>(
        &self,
        req: &IdemRequest,
        operation: F,
    ) -> std::result::Result<T, RunError<E>>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> Fut,
        Fut: Future<Output = std::result::Result<T, E>>,
    {
        self.shared
            .check_open("idempotency.run")
            .map_err(RunError::Idempotency)?;
        self.idem.run(req, operation).await
    }
}

/// Requests to an idempotency actor (`<prefix>.idempotency.<name>`), for callers that are
/// actors. Each is served on a tracked task that replies on the port; the actor never awaits
/// Redis.
#[derive(Debug)]
pub enum IdempotencyMsg {
    /// [`IdempotencyHandle::begin`].
    Begin {
        /// The request.
        req: IdemRequest,
        /// The claim or the replayed result.
        reply: ractor::RpcReplyPort<Result<Begin>>,
    },
    /// [`IdempotencyHandle::commit`].
    Commit {
        /// The claim.
        claim: Claim,
        /// The result bytes.
        result: bytes::Bytes,
        /// Done.
        reply: ractor::RpcReplyPort<Result<()>>,
    },
    /// [`IdempotencyHandle::fail`].
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

/// The actor of one idempotency resource: a message front door to the same records.
#[derive(Debug)]
pub struct IdempotencyActor;

impl ractor::Actor for IdempotencyActor {
    type Msg = IdempotencyMsg;
    type State = IdempotencyHandle;
    type Arguments = IdempotencyHandle;

    async fn pre_start(
        &self,
        _myself: ractor::ActorRef<IdempotencyMsg>,
        handle: IdempotencyHandle,
    ) -> std::result::Result<IdempotencyHandle, ractor::ActorProcessingErr> {
        Ok(handle)
    }

    async fn handle(
        &self,
        _myself: ractor::ActorRef<IdempotencyMsg>,
        msg: IdempotencyMsg,
        h: &mut IdempotencyHandle,
    ) -> std::result::Result<(), ractor::ActorProcessingErr> {
        let handle = h.clone();
        let tasks = &h.shared.tasks;
        match msg {
            IdempotencyMsg::Begin { req, reply } => {
                tasks.spawn(async move {
                    let _ = reply.send(handle.begin(&req).await);
                });
            }
            IdempotencyMsg::Commit {
                claim,
                result,
                reply,
            } => {
                tasks.spawn(async move {
                    let _ = reply.send(handle.commit(&claim, &result).await);
                });
            }
            IdempotencyMsg::Fail { claim, reply } => {
                tasks.spawn(async move {
                    let _ = reply.send(handle.fail(&claim).await);
                });
            }
            #[cfg(feature = "fault-injection")]
            IdempotencyMsg::Panic => panic!("fault injection: idempotency actor panic"),
        }
        Ok(())
    }
}

//! Calls to actors by registered name, with a time limit, re-resolving the name while the
//! actor is being restarted. Used by handles for requests that need an actor's mailbox (stats,
//! fault injection); data paths never come here.

use std::time::{Duration, Instant};

use forze_redis::{Error, Result};
use ractor::rpc::CallResult;
use ractor::{ActorRef, Message, RpcReplyPort};

/// How long to wait before looking the name up again while the actor is absent.
const RESOLVE_RETRY: Duration = Duration::from_millis(10);

/// Call the actor registered as `name`, retrying the lookup while it is absent or dying, until
/// `timeout`. The request must be idempotent: it may be sent again to the next incarnation.
pub(crate) async fn call_named<M, T>(
    name: &str,
    timeout: Duration,
    build: impl Fn(RpcReplyPort<T>) -> M,
) -> Result<T>
where
    M: Message,
    T: Send + 'static,
{
    let deadline = Instant::now() + timeout;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(Error::Timeout {
                op: format!("call {name}").into(),
                after: timeout,
            });
        }
        if let Some(actor) = ActorRef::<M>::where_is(name) {
            match actor.call(&build, Some(remaining)).await {
                Ok(CallResult::Success(v)) => return Ok(v),
                Ok(CallResult::Timeout) => {
                    return Err(Error::Timeout {
                        op: format!("call {name}").into(),
                        after: timeout,
                    })
                }
                // The actor died with our request, or before taking it: try its successor.
                Ok(CallResult::SenderError) | Err(_) => {}
            }
        }
        tokio::time::sleep(RESOLVE_RETRY.min(remaining)).await;
    }
}

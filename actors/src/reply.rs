//! How every actor serves a request message: on a tracked task, never in its `handle`.

use std::future::Future;

use ractor::RpcReplyPort;

use crate::shared::Shared;

/// Run `work` on a task of `shared`'s tracker and send its result on `reply`. The actor's
/// `handle` returns at once (it never awaits Redis), and a request in flight when the actor
/// fails still gets its answer, because the task does not belong to the actor. Shutdown
/// waits for these tasks; operations that start after it began are refused by the
/// resources' own shutdown gate.
pub(crate) fn reply_later<T, F>(shared: &Shared, reply: RpcReplyPort<T>, work: F)
where
    T: Send + 'static,
    F: Future<Output = T> + Send + 'static,
{
    shared.tasks.spawn(async move {
        let _ = reply.send(work.await);
    });
}

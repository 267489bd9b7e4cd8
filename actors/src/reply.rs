//! How every actor serves a request message: on a tracked task, never in its `handle`; and
//! the set of those tasks, which shutdown drains and then cancels.

use std::future::Future;

use ractor::RpcReplyPort;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::shared::Shared;

/// The tasks spawned on behalf of callers (message requests, lease renewals).
#[derive(Debug, Default)]
pub(crate) struct RequestTasks {
    tracker: TaskTracker,
    cancel: CancellationToken,
}

impl RequestTasks {
    /// Run `work` as one of these tasks; it is dropped, unfinished, by [`RequestTasks::cancel`].
    pub(crate) fn spawn(&self, work: impl Future<Output = ()> + Send + 'static) {
        let cancel = self.cancel.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                biased;
                () = cancel.cancelled() => {}
                () = work => {}
            }
        });
    }

    /// Tasks still running.
    pub(crate) fn len(&self) -> usize {
        self.tracker.len()
    }

    /// Wait until every task has ended, for at most `timeout`; then cancel those left, and
    /// wait for them to end (at their next poll). `false` when some had to be cancelled.
    pub(crate) async fn drain(&self, timeout: std::time::Duration) -> bool {
        self.tracker.close();
        if tokio::time::timeout(timeout, self.tracker.wait())
            .await
            .is_ok()
        {
            return true;
        }
        self.cancel.cancel();
        self.tracker.wait().await;
        false
    }
}

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

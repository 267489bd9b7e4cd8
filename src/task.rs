//! Spawned tasks that live exactly as long as their owner, and the thread that hosts the
//! latency-critical ones.

use std::future::Future;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Aborts its task when dropped: timers, deadline watchers and listeners owned by an actor
/// incarnation or a guard stop with it instead of outliving it.
#[derive(Debug)]
pub struct AbortOnDrop(pub JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A thread of its own running a single-threaded tokio runtime, for work whose latency must
/// not depend on how busy the application's runtime is.
///
/// Sockets opened by a task spawned here register with this thread's reactor, so when one
/// becomes readable the kernel wakes this thread directly: no application task queued ahead
/// of the reader, and no parked worker of the shared runtime to wake first (on a 2-core
/// machine, waking one cost the invalidation reader most of its p99).
///
/// Dropping it stops the thread without waiting for it: the runtime, and every task still
/// spawned on it, is dropped on its own thread.
#[derive(Debug)]
pub struct DedicatedThread {
    handle: tokio::runtime::Handle,
    _stop: oneshot::Sender<()>,
}

impl DedicatedThread {
    /// Start a thread named `name` with its runtime (timers and I/O enabled). The runtime is
    /// built, run and dropped on that thread only (a runtime dropped in async code panics).
    pub async fn start(name: &str) -> std::io::Result<Self> {
        let (ready, handle) = oneshot::channel::<std::io::Result<tokio::runtime::Handle>>();
        let (stop, stopped) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = ready.send(Err(e));
                        return;
                    }
                };
                if ready.send(Ok(runtime.handle().clone())).is_err() {
                    return;
                }
                // Spawned tasks run while this blocks; it returns when the owner is dropped.
                runtime.block_on(async {
                    let _ = stopped.await;
                });
            })?;
        let handle = handle.await.map_err(|_| {
            std::io::Error::other("the dedicated thread ended before its runtime was ready")
        })??;
        Ok(DedicatedThread {
            handle,
            _stop: stop,
        })
    }

    /// Spawn `task` on this thread; aborted when the returned guard drops.
    pub fn spawn<F>(&self, task: F) -> AbortOnDrop
    where
        F: Future<Output = ()> + Send + 'static,
    {
        AbortOnDrop(self.handle.spawn(task))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_tasks_on_its_own_thread_and_stops_when_dropped() {
        let thread = DedicatedThread::start("forze-test-io")
            .await
            .expect("thread");
        let (tx, rx) = oneshot::channel();
        let _task = thread.spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            let _ = tx.send(std::thread::current().name().map(str::to_string));
        });
        assert_eq!(rx.await.expect("ran"), Some("forze-test-io".to_string()));

        // A task still pending when the owner drops is dropped with the runtime.
        let (tx, rx) = oneshot::channel::<()>();
        let forever = thread.spawn(async move {
            let _keep = tx;
            std::future::pending::<()>().await;
        });
        std::mem::forget(forever); // not aborted: only the thread's end can drop it
        drop(thread);
        tokio::time::timeout(std::time::Duration::from_secs(5), rx)
            .await
            .expect("the runtime's tasks are dropped when the thread stops")
            .expect_err("dropped, never sent");
    }
}

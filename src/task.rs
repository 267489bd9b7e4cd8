//! A spawned task that lives exactly as long as its owner.

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

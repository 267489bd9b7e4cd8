//! Coalescing of concurrent requests on one key into batches: the machinery counters and
//! rate limits share (each supplies how a batch is sent and answered).
//!
//! The first request on a key goes at once through its caller's own path, exactly as without
//! coalescing, and so does the next one that finds it in flight: that one opens a queue (see
//! below why). Requests on the same key that arrive while the opener is in flight queue behind
//! it; when it completes, the queue is handed to a spawned task that sends it as one batch (so
//! no caller's cancellation can strand the others), then the queue that built up meanwhile,
//! until a queue is found empty. A hot key then costs one round trip per batch instead of one
//! per request.
//!
//! A key nobody else is using costs two atomic operations and no map access: every request
//! counts itself in a fixed table of in-flight counts indexed by the key's hash, and one that
//! finds its count at zero (no request on any key of that hash in flight) goes at once
//! without entering the map. Only a request that finds its count busy takes the map path, and
//! becomes the one in flight there if the map holds nothing for its key: on a key just
//! turning hot, one more request goes alone before the queue forms. A hash shared by two keys
//! only sends both to the map path; the map is exact.
//!
//! - A caller that gave up (its future dropped) before its batch is sent is left out of it.
//! - If the task that sends batches dies (a runtime shutting down, a panic), the callers of
//!   the batch it was sending get `OutcomeUnknown` (their requests may have been applied),
//!   those still queued get `Unavailable` (theirs were not sent), and the key is freed.
//! - The queue waits on its opener's own request: an opener that keeps its future without
//!   polling it (rather than dropping it) holds the others back until it does.
//! - A queue belongs to one destination (a routed tenant's endpoint): a request for the same
//!   key bound elsewhere (its route changed meanwhile) never joins it and goes alone.

use std::future::Future;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use tokio::sync::oneshot;

use crate::error::{Error, Result};

/// One queued request and where its answer goes.
pub(crate) struct Waiter<I, O> {
    /// What the caller asked.
    pub(crate) item: I,
    reply: oneshot::Sender<Result<O>>,
}

impl<I, O> Waiter<I, O> {
    /// Give the caller its answer (dropped if it gave up meanwhile).
    pub(crate) fn answer(self, result: Result<O>) {
        let _ = self.reply.send(result);
    }
}

/// How one kind of request is sent as a batch. Every waiter must be answered.
pub(crate) trait SendBatch<I, O>: Clone + Send + Sync + 'static {
    /// Send `batch` (arrival order) for `key` and answer each waiter.
    fn send_batch(&self, key: &str, batch: Vec<Waiter<I, O>>) -> impl Future<Output = ()> + Send;

    /// Where this sender's batches go; requests join only a queue of the same destination.
    fn destination(&self) -> usize {
        0
    }
}

/// The requests queued behind one key's request in flight, all bound for `destination`.
struct Queue<I, O> {
    destination: usize,
    waiters: Vec<Waiter<I, O>>,
}

/// Slots of the in-flight count table (a power of two): 16 KiB per coalescer, so that keys
/// in use at once rarely share a slot.
const BUSY_SLOTS: usize = 4096;

/// The keys with a request in flight on the map path, each with the requests queued behind
/// it, and the in-flight count of every request by key hash.
pub(crate) struct Coalescer<I, O> {
    /// The operation named by errors that are the coalescer's own.
    op: &'static str,
    /// A key is present exactly while one request or batch of it sent from the map path is
    /// in flight.
    in_flight: DashMap<String, Queue<I, O>, foldhash::fast::RandomState>,
    /// Requests in flight (or queued) by key hash, map path or not.
    busy: Box<[AtomicU32]>,
    hasher: foldhash::fast::RandomState,
}

impl<I, O> std::fmt::Debug for Coalescer<I, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coalescer")
            .field("op", &self.op)
            .field("keys_in_flight", &self.in_flight.len())
            .finish()
    }
}

impl<I: Send + Sync + 'static, O: Send + 'static> Coalescer<I, O> {
    /// A coalescer whose own errors name `op`.
    pub(crate) fn new(op: &'static str) -> Self {
        Coalescer {
            op,
            in_flight: DashMap::default(),
            busy: (0..BUSY_SLOTS).map(|_| AtomicU32::new(0)).collect(),
            hasher: foldhash::fast::RandomState::default(),
        }
    }

    /// `item` on `key`: at once through the future `alone` makes when nothing is in flight
    /// for the key, else queued into the next batch that `sender` sends. (`alone` is made
    /// only when it runs: a driver's command future is several KiB, not worth building for a
    /// queued request or moving through this one.)
    pub(crate) async fn run<S, F>(
        self: &Arc<Self>,
        sender: &S,
        key: &str,
        item: I,
        alone: impl FnOnce() -> F,
    ) -> Result<O>
    where
        S: SendBatch<I, O>,
        F: Future<Output = Result<O>>,
    {
        let busy = Busy::enter(&self.busy[self.hasher.hash_one(key) as usize % BUSY_SLOTS]);
        if busy.was_idle {
            // Nothing in flight on any key of this hash: nothing to join or to be joined by
            // (a request arriving meanwhile finds the count busy and takes the map path).
            return alone().await;
        }
        let destination = sender.destination();
        let queued = match self.in_flight.get_mut(key) {
            Some(mut queue) => Joined::new(&mut queue, destination, item),
            None => match self.in_flight.entry(key.to_owned()) {
                dashmap::Entry::Occupied(mut queue) => {
                    Joined::new(queue.get_mut(), destination, item)
                }
                dashmap::Entry::Vacant(slot) => {
                    slot.insert(Queue {
                        destination,
                        waiters: Vec::new(),
                    });
                    Joined::Opened
                }
            },
        };
        let reply = match queued {
            Joined::Queued(reply) => Some(reply),
            Joined::Elsewhere => return alone().await,
            Joined::Opened => None,
        };
        if let Some(reply) = reply {
            return reply.await.unwrap_or_else(|_| {
                Err(Error::OutcomeUnknown {
                    op: self.op.into(),
                    source: None,
                })
            });
        }
        // This caller's turn: whatever happens to its future, the queue is handed on.
        let _turn = Turn {
            coalescer: self,
            sender,
            key,
        };
        alone().await
    }

    /// The queue behind `key`'s finished turn, or `None` (the key then leaves the map, so
    /// the next request goes at once).
    fn next_batch(&self, key: &str) -> Option<Vec<Waiter<I, O>>> {
        loop {
            if self
                .in_flight
                .remove_if(key, |_, q| q.waiters.is_empty())
                .is_some()
            {
                return None;
            }
            let batch = std::mem::take(&mut self.in_flight.get_mut(key)?.waiters);
            if !batch.is_empty() {
                return Some(batch);
            }
        }
    }

    /// Send batches for `key` until its queue is found empty. The key's guard is made
    /// before the future is: dropped even unpolled, it frees the key.
    fn serve<S: SendBatch<I, O>>(
        self: Arc<Self>,
        sender: S,
        key: String,
        first: Vec<Waiter<I, O>>,
    ) -> impl Future<Output = ()> + Send {
        let mut serving = Serving {
            coalescer: self,
            key,
            unsent: first,
            finished: false,
        };
        async move {
            let mut batch = std::mem::take(&mut serving.unsent);
            loop {
                batch.retain(|w| !w.reply.is_closed());
                if !batch.is_empty() {
                    sender.send_batch(&serving.key, batch).await;
                }
                match serving.coalescer.next_batch(&serving.key) {
                    Some(next) => batch = next,
                    None => break,
                }
            }
            serving.finish();
        }
    }

    /// Answer every request still queued for `key` with `Unavailable` and free the key.
    fn abandon(&self, key: &str) {
        while let Some(batch) = self.next_batch(key) {
            for w in batch {
                w.answer(Err(Error::unavailable(self.op)));
            }
        }
    }
}

/// A batch task's hold on its key: if the task ends any other way than by finding the queue
/// empty (dropped unpolled by a runtime shutting down, or a panic), nobody is left waiting.
struct Serving<I: Send + Sync + 'static, O: Send + 'static> {
    coalescer: Arc<Coalescer<I, O>>,
    key: String,
    /// The first batch until the task takes it: a task dropped unpolled sent none of it.
    unsent: Vec<Waiter<I, O>>,
    finished: bool,
}

impl<I: Send + Sync + 'static, O: Send + 'static> Serving<I, O> {
    /// The queue was found empty and the key left the map: nothing to clean up.
    fn finish(&mut self) {
        self.finished = true;
    }
}

impl<I: Send + Sync + 'static, O: Send + 'static> Drop for Serving<I, O> {
    fn drop(&mut self) {
        for w in self.unsent.drain(..) {
            w.answer(Err(Error::unavailable(self.coalescer.op)));
        }
        if !self.finished {
            self.coalescer.abandon(&self.key);
        }
    }
}

/// One request counted in its key hash's in-flight slot, until it ends or is cancelled.
struct Busy<'a> {
    slot: &'a AtomicU32,
    /// The count was zero before this request.
    was_idle: bool,
}

impl<'a> Busy<'a> {
    fn enter(slot: &'a AtomicU32) -> Self {
        let was_idle = slot.fetch_add(1, Ordering::AcqRel) == 0;
        Busy { slot, was_idle }
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.slot.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What a request found on the map path.
enum Joined<O> {
    /// A queue of its destination: its answer comes from a batch.
    Queued(oneshot::Receiver<Result<O>>),
    /// A queue bound elsewhere: it goes alone.
    Elsewhere,
    /// Nothing: it opened the queue and goes now.
    Opened,
}

impl<O> Joined<O> {
    fn new<I>(queue: &mut Queue<I, O>, destination: usize, item: I) -> Self {
        if queue.destination != destination {
            return Joined::Elsewhere;
        }
        let (reply, receiver) = oneshot::channel();
        queue.waiters.push(Waiter { item, reply });
        Joined::Queued(receiver)
    }
}

/// The caller whose request is in flight for `key`. Dropped when it completes (or is
/// cancelled), it hands the queue to a batch task.
struct Turn<'a, I: Send + Sync + 'static, O: Send + 'static, S: SendBatch<I, O>> {
    coalescer: &'a Arc<Coalescer<I, O>>,
    sender: &'a S,
    key: &'a str,
}

impl<I: Send + Sync + 'static, O: Send + 'static, S: SendBatch<I, O>> Drop for Turn<'_, I, O, S> {
    fn drop(&mut self) {
        let Some(batch) = self.coalescer.next_batch(self.key) else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(self.coalescer.clone().serve(
                self.sender.clone(),
                self.key.to_owned(),
                batch,
            ));
            return;
        }
        // No runtime left to send them: nothing was sent.
        for w in batch {
            w.answer(Err(Error::unavailable(self.coalescer.op)));
        }
        self.coalescer.abandon(self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    /// Answers each request with its own item.
    #[derive(Clone)]
    struct Echo;

    impl SendBatch<u32, u32> for Echo {
        async fn send_batch(&self, _key: &str, batch: Vec<Waiter<u32, u32>>) {
            for w in batch {
                let item = w.item;
                w.answer(Ok(item));
            }
        }
    }

    fn waiter(item: u32) -> (Waiter<u32, u32>, oneshot::Receiver<Result<u32>>) {
        let (reply, receiver) = oneshot::channel();
        (Waiter { item, reply }, receiver)
    }

    /// A batch task dropped before it ran (a runtime shutting down drops the tasks it has not
    /// polled) sent nothing: its first batch is `Unavailable`, not `OutcomeUnknown`.
    #[tokio::test]
    async fn a_batch_task_dropped_unpolled_answers_unavailable() {
        let coalescer = Arc::new(Coalescer::<u32, u32>::new("test.op"));
        let (w, answer) = waiter(7);
        drop(coalescer.clone().serve(Echo, "k".into(), vec![w]));
        let e = answer.await.expect("answered").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
        // Run, the same batch is sent.
        let (w, answer) = waiter(7);
        coalescer.serve(Echo, "k".into(), vec![w]).await;
        assert_eq!(answer.await.expect("answered").unwrap(), 7);
    }
}

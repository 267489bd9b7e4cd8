//! Coalescing of concurrent requests on one key into batches: the machinery counters and
//! rate limits share (each supplies how a batch is sent and answered).
//!
//! The first request on a key goes at once through its caller's own path, exactly as without
//! coalescing. Requests on the same key that arrive while it is in flight queue behind it;
//! when it completes, the queue is handed to a spawned task that sends it as one batch (so
//! no caller's cancellation can strand the others), then the queue that built up meanwhile,
//! until a queue is found empty. A hot key then costs one round trip per batch instead of one
//! per request; a key nobody else is using costs one map insert and one removal.
//!
//! - A caller that gave up (its future dropped) before its batch is sent is left out of it.
//! - If the task that sends batches dies (a runtime shutting down, a panic), the callers of
//!   the batch it was sending get `OutcomeUnknown` (their requests may have been applied),
//!   those still queued get `Unavailable` (theirs were not sent), and the key is freed.
//! - The queue waits on the first caller's own request: a caller that keeps its future
//!   without polling it (rather than dropping it) holds the others back until it does.

use std::future::Future;
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
}

/// The keys with a request in flight, each with the requests queued behind it. A key is
/// present exactly while one request or batch of it is in flight.
pub(crate) struct Coalescer<I, O> {
    /// The operation named by errors that are the coalescer's own.
    op: &'static str,
    in_flight: DashMap<String, Vec<Waiter<I, O>>, foldhash::fast::RandomState>,
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
        }
    }

    /// `item` on `key`: at once through `alone` when nothing is in flight for the key, else
    /// queued into the next batch that `sender` sends.
    pub(crate) async fn run<S, F>(
        self: &Arc<Self>,
        sender: &S,
        key: &str,
        item: I,
        alone: F,
    ) -> Result<O>
    where
        S: SendBatch<I, O>,
        F: Future<Output = Result<O>>,
    {
        let queued = match self.in_flight.get_mut(key) {
            Some(mut queue) => Some(enqueue(&mut queue, item)),
            None => match self.in_flight.entry(key.to_owned()) {
                dashmap::Entry::Occupied(mut queue) => Some(enqueue(queue.get_mut(), item)),
                dashmap::Entry::Vacant(slot) => {
                    slot.insert(Vec::new());
                    None
                }
            },
        };
        if let Some(reply) = queued {
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
        alone.await
    }

    /// The queue behind `key`'s finished turn, or `None` (the key then leaves the map, so
    /// the next request goes at once).
    fn next_batch(&self, key: &str) -> Option<Vec<Waiter<I, O>>> {
        loop {
            if self.in_flight.remove_if(key, |_, q| q.is_empty()).is_some() {
                return None;
            }
            let batch = std::mem::take(&mut *self.in_flight.get_mut(key)?);
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
            finished: false,
        };
        async move {
            let mut batch = first;
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
        if !self.finished {
            self.coalescer.abandon(&self.key);
        }
    }
}

fn enqueue<I, O>(queue: &mut Vec<Waiter<I, O>>, item: I) -> oneshot::Receiver<Result<O>> {
    let (reply, receiver) = oneshot::channel();
    queue.push(Waiter { item, reply });
    receiver
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

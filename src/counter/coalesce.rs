//! Coalescing of concurrent increments of one counter key (`coalesce = true`, the default).
//!
//! The first increment of a key goes to Redis at once, exactly as without coalescing. The
//! increments of the same key that arrive while one is in flight queue behind it; when it
//! completes, the queue is sent as one `INCRBY` of its sum, by a spawned task (so no caller's
//! cancellation can strand the others), and the reply is handed out as a sequential order
//! would have given it: with deltas `d1..dn` in arrival order and reply `r`, the i-th caller
//! gets `r - (d1+…+dn) + (d1+…+di)`. Every caller still gets a distinct value, batch ranges
//! still never overlap, and each value is one some sequential order of the same increments
//! would have returned. A hot key then costs one round trip per batch instead of one per call.
//!
//! What stays exact:
//! - Only deltas of one sign share an `INCRBY` (zero joins either), so every intermediate
//!   value lies between the value before and the value after: when the sum is refused for
//!   leaving the `i64` range, each increment of the batch is sent on its own instead and
//!   gets the answer it would have had alone (some succeed, the rest are refused).
//! - A caller that gave up (its future dropped) before its batch is sent is left out of it.
//! - A batch that fails gives every caller in it the same error: `Unavailable` when nothing
//!   was sent (each caller may then fall back), `OutcomeUnknown` when the reply was lost.
//!
//! The cost on a key nobody else is incrementing: one map insert and one removal.

use std::sync::Arc;

use dashmap::DashMap;
use tokio::sync::oneshot;

use super::redis::RedisCounterStore;
use crate::error::{ConflictReason, Error, Result};

/// One queued increment and where its value goes.
struct Waiter {
    delta: i128,
    reply: oneshot::Sender<Result<i64>>,
}

/// The keys with an increment in flight, each with the increments queued behind it. A key is
/// present exactly while one increment or batch of it is in flight.
#[derive(Default)]
pub(crate) struct Coalescer {
    in_flight: DashMap<String, Vec<Waiter>, foldhash::fast::RandomState>,
}

impl std::fmt::Debug for Coalescer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coalescer")
            .field("keys_in_flight", &self.in_flight.len())
            .finish()
    }
}

impl Coalescer {
    /// Add `delta` to `key`: at once through `alone` when nothing is in flight for the key,
    /// else queued into the next batch.
    pub(crate) async fn add<F>(
        self: &Arc<Self>,
        store: &RedisCounterStore,
        key: &str,
        delta: i128,
        alone: F,
    ) -> Result<i64>
    where
        F: std::future::Future<Output = Result<i64>>,
    {
        let queued = match self.in_flight.get_mut(key) {
            Some(mut queue) => Some(self.enqueue(&mut queue, delta)),
            None => match self.in_flight.entry(key.to_owned()) {
                dashmap::Entry::Occupied(mut queue) => Some(self.enqueue(queue.get_mut(), delta)),
                dashmap::Entry::Vacant(slot) => {
                    slot.insert(Vec::new());
                    None
                }
            },
        };
        if let Some(reply) = queued {
            // The sender is dropped unanswered only if the batch task died mid-flight (a
            // runtime shutting down): the increment may have been applied.
            return reply.await.unwrap_or_else(|_| {
                Err(Error::OutcomeUnknown {
                    op: "counter.incr".into(),
                    source: None,
                })
            });
        }
        // This caller's turn: whatever happens to its future, the queue is handed on.
        let _turn = Turn {
            coalescer: self,
            store,
            key,
        };
        alone.await
    }

    fn enqueue(&self, queue: &mut Vec<Waiter>, delta: i128) -> oneshot::Receiver<Result<i64>> {
        let (reply, receiver) = oneshot::channel();
        queue.push(Waiter { delta, reply });
        receiver
    }

    /// The queue behind `key`'s finished turn, or `None` (the key then leaves the map, so
    /// the next increment goes at once).
    fn next_batch(&self, key: &str) -> Option<Vec<Waiter>> {
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

    /// Send batches for `key` until its queue is found empty.
    async fn serve(self: Arc<Self>, store: RedisCounterStore, key: String, first: Vec<Waiter>) {
        let mut batch = first;
        loop {
            batch.retain(|w| !w.reply.is_closed());
            let mut waiters = batch.into_iter().peekable();
            while waiters.peek().is_some() {
                // The longest run of one sign (zero joins either), in arrival order.
                let mut group = Vec::new();
                let mut sign = 0;
                while let Some(w) = waiters.next_if(|w| sign * w.delta.signum() >= 0) {
                    if sign == 0 {
                        sign = w.delta.signum();
                    }
                    group.push(w);
                }
                send_group(&store, &key, group).await;
            }
            match self.next_batch(&key) {
                Some(next) => batch = next,
                None => return,
            }
        }
    }
}

/// One sign's increments as one `INCRBY`; on a range refusal each on its own.
async fn send_group(store: &RedisCounterStore, key: &str, group: Vec<Waiter>) {
    let sum: i128 = group.iter().map(|w| w.delta).sum();
    let result = match i64::try_from(sum) {
        Ok(sum) => store.incr(key, sum).await,
        Err(_) => Err(super::out_of_range("counter.incr")),
    };
    match result {
        Ok(after) => {
            let mut value = i128::from(after) - sum;
            for w in group {
                value += w.delta;
                // Between the value before and after the batch, so within i64.
                let _ = w.reply.send(Ok(value as i64));
            }
        }
        Err(Error::Conflict {
            reason: ConflictReason::OutOfRange,
            ..
        }) if group.len() > 1 => {
            for w in group {
                // Each delta came from one i64 argument, so it fits on its own.
                let alone = match i64::try_from(w.delta) {
                    Ok(delta) => store.incr(key, delta).await,
                    Err(_) => Err(super::out_of_range("counter.incr")),
                };
                let _ = w.reply.send(alone);
            }
        }
        Err(e) => {
            for w in group {
                let _ = w.reply.send(Err(e.clone()));
            }
        }
    }
}

/// The caller whose increment is in flight for `key`. Dropped when it completes (or is
/// cancelled), it hands the queue to a batch task.
struct Turn<'a> {
    coalescer: &'a Arc<Coalescer>,
    store: &'a RedisCounterStore,
    key: &'a str,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let Some(batch) = self.coalescer.next_batch(self.key) else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(self.coalescer.clone().serve(
                    self.store.clone(),
                    self.key.to_owned(),
                    batch,
                ));
            }
            // No runtime left to send them: nothing was sent.
            Err(_) => {
                let mut batch = batch;
                loop {
                    for w in batch {
                        let _ = w.reply.send(Err(Error::unavailable("counter.incr")));
                    }
                    match self.coalescer.next_batch(self.key) {
                        Some(next) => batch = next,
                        None => break,
                    }
                }
            }
        }
    }
}

//! Coalesced increments of one counter key (`coalesce = true`, the default): how a batch of
//! increments is sent and answered. The queueing is in `src/coalesce.rs`, shared with rate limits.
//!
//! A batch is sent as one `INCRBY` of its sum, and the reply is handed out as a sequential
//! order would have given it: with deltas `d1..dn` in arrival order and reply `r`, the i-th
//! caller gets `r - (d1+…+dn) + (d1+…+di)`. Every caller still gets a distinct value, batch
//! ranges still never overlap, and each value is one some sequential order of the same
//! increments would have returned.
//!
//! What stays exact:
//! - Only deltas of one sign share an `INCRBY` (zero joins either), so every intermediate
//!   value lies between the value before and the value after: when the sum is refused for
//!   leaving the `i64` range, each increment of the batch is sent on its own instead and
//!   gets the answer it would have had alone (some succeed, the rest are refused).
//! - A batch that fails gives every caller in it the same error: `Unavailable` when nothing
//!   was sent (each caller may then fall back), `OutcomeUnknown` when the reply was lost.

use super::redis::RedisCounterStore;
use crate::coalesce::{SendBatch, Waiter};
use crate::error::{ConflictReason, Error};

/// The coalescer of one counter resource: deltas in, new values out.
pub(crate) type Coalescer = crate::coalesce::Coalescer<i128, i64>;

/// A new coalescer for a counter resource.
pub(crate) fn coalescer() -> Coalescer {
    Coalescer::new("counter.incr")
}

impl SendBatch<i128, i64> for RedisCounterStore {
    /// The connection: a routed tenant's requests join only batches for its endpoint.
    fn destination(&self) -> usize {
        self.connection_id()
    }

    async fn send_batch(&self, key: &str, batch: Vec<Waiter<i128, i64>>) {
        let mut waiters = batch.into_iter().peekable();
        while waiters.peek().is_some() {
            // The longest run of one sign (zero joins either), in arrival order.
            let mut group = Vec::new();
            let mut sign = 0;
            while let Some(w) = waiters.next_if(|w| sign * w.item.signum() >= 0) {
                if sign == 0 {
                    sign = w.item.signum();
                }
                group.push(w);
            }
            send_group(self, key, group).await;
        }
    }
}

/// One sign's increments as one `INCRBY`; on a range refusal each on its own.
async fn send_group(store: &RedisCounterStore, key: &str, group: Vec<Waiter<i128, i64>>) {
    let sum: i128 = group.iter().map(|w| w.item).sum();
    let result = match i64::try_from(sum) {
        Ok(sum) => store.incr(key, sum).await,
        Err(_) => Err(super::out_of_range("counter.incr")),
    };
    match result {
        Ok(after) => {
            let mut value = i128::from(after) - sum;
            for w in group {
                value += w.item;
                // Between the value before and after the batch, so within i64.
                w.answer(Ok(value as i64));
            }
        }
        Err(Error::Conflict {
            reason: ConflictReason::OutOfRange,
            ..
        }) if group.len() > 1 => {
            for w in group {
                // Each delta came from one i64 argument, so it fits on its own.
                let alone = match i64::try_from(w.item) {
                    Ok(delta) => store.incr(key, delta).await,
                    Err(_) => Err(super::out_of_range("counter.incr")),
                };
                w.answer(alone);
            }
        }
        Err(e) => {
            for w in group {
                w.answer(Err(e.clone()));
            }
        }
    }
}

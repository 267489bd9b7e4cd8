//! Embedded mode's idempotency records: the same state machine in process memory.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;

use super::BeginReply;
use crate::sweep::Sweeper;
use crate::time::after;

#[derive(Debug, Clone)]
enum State {
    Pending { lease_end: Instant },
    Done { result: Bytes },
}

#[derive(Debug, Clone)]
struct Record {
    payload_hash: String,
    owner: String,
    state: State,
    expires: Instant,
}

/// In-process idempotency records, shared by every actor incarnation.
#[derive(Debug, Clone, Default)]
pub struct LocalIdempotencyStore {
    records: Arc<DashMap<String, Record>>,
    /// Sweeps out expired records (on Redis they expire after their retention).
    sweeper: Arc<Sweeper>,
}

impl LocalIdempotencyStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// See `idem_begin.lua`.
    pub fn begin(
        &self,
        key: &str,
        payload_hash: &str,
        owner: &str,
        lease: Duration,
        retention: Duration,
    ) -> BeginReply {
        let now = Instant::now();
        self.sweeper.sweep(&self.records, |_, r| r.expires > now);
        let claim = || Record {
            payload_hash: payload_hash.to_string(),
            owner: owner.to_string(),
            state: State::Pending {
                lease_end: after(now, lease),
            },
            expires: after(now, retention),
        };
        let mut entry = self.records.entry(key.to_string()).or_insert_with(claim);
        let rec = entry.value_mut();
        if rec.expires <= now {
            *rec = claim();
            return BeginReply::Proceed;
        }
        if rec.payload_hash != payload_hash {
            return BeginReply::Mismatch;
        }
        match &rec.state {
            State::Done { result } => BeginReply::Replay(result.clone()),
            State::Pending { .. } if rec.owner == owner => BeginReply::Proceed,
            State::Pending { lease_end } if *lease_end <= now => {
                *rec = claim();
                BeginReply::TakeOver
            }
            State::Pending { lease_end } => BeginReply::Busy(*lease_end - now),
        }
    }

    /// See `idem_commit.lua`.
    pub fn commit(&self, key: &str, owner: &str, result: &[u8], retention: Duration) -> bool {
        let now = Instant::now();
        match self.records.get_mut(key) {
            Some(mut rec) if rec.owner == owner && rec.expires > now => {
                if matches!(rec.state, State::Pending { .. }) {
                    rec.state = State::Done {
                        result: Bytes::copy_from_slice(result),
                    };
                    rec.expires = after(now, retention);
                }
                true
            }
            _ => false,
        }
    }

    /// See `idem_fail.lua`.
    pub fn fail(&self, key: &str, owner: &str) -> bool {
        let now = Instant::now();
        self.records
            .remove_if(key, |_, r| {
                r.owner == owner && r.expires > now && matches!(r.state, State::Pending { .. })
            })
            .is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sweep::MIN_SWEEP;

    #[test]
    fn expired_records_do_not_stay_in_memory() {
        let store = LocalIdempotencyStore::new();
        let short = Duration::from_millis(1);
        for round in 0..10 {
            for i in 0..1000 {
                let key = format!("k{round}-{i}");
                store.begin(&key, "ph", "o", short, short);
                // Committed or expired already (1 ms): either way gone soon.
                store.commit(&key, "o", b"r", short);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        assert!(
            store.records.len() <= 2 * MIN_SWEEP,
            "{}",
            store.records.len()
        );
        // A huge retention is "for ever", not a panic.
        store.begin("kept", "ph", "o", Duration::from_secs(60), Duration::MAX);
        assert!(store.commit("kept", "o", b"r", Duration::MAX));
        for i in 0..3 * MIN_SWEEP {
            store.begin(&format!("x{i}"), "ph", "o", short, short);
        }
        assert!(matches!(
            store.begin("kept", "ph", "p", short, short),
            BeginReply::Replay(_)
        ));
    }
}

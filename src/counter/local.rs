//! The process-local counter store: embedded mode and the `fallback = "local"` degraded mode.

use std::sync::Arc;

use dashmap::DashMap;

use super::out_of_range;
use crate::error::Result;
use crate::keys::parts_after_base;

/// Counters in a `DashMap` keyed by the same key strings Redis would hold, so one store serves
/// every counter resource of a supervisor. Cloning shares the map; the supervisor keeps one
/// for its lifetime so values survive actor restarts.
#[derive(Debug, Clone)]
pub struct LocalCounterStore {
    values: Arc<DashMap<String, i64>>,
}

impl LocalCounterStore {
    /// A store over `values`.
    pub fn new(values: Arc<DashMap<String, i64>>) -> Self {
        LocalCounterStore { values }
    }

    /// Apply `f` to the value atomically (the entry is locked while `f` runs); refuse when `f`
    /// returns `None`, leaving the value as it was.
    fn update(
        &self,
        op: &'static str,
        key: &str,
        f: impl FnOnce(i64) -> Option<i64>,
    ) -> Result<i64> {
        // A refused change of a counter never set leaves it absent, as Redis does.
        match self.values.entry(key.to_string()) {
            dashmap::Entry::Occupied(mut entry) => {
                let v = f(*entry.get()).ok_or_else(|| out_of_range(op))?;
                entry.insert(v);
                Ok(v)
            }
            dashmap::Entry::Vacant(entry) => {
                let v = f(0).ok_or_else(|| out_of_range(op))?;
                entry.insert(v);
                Ok(v)
            }
        }
    }
}

/// The counter operations on process-local state: the same contract as on Redis, for this
/// process only.
impl LocalCounterStore {
    pub(crate) fn incr(&self, key: &str, by: i64) -> Result<i64> {
        self.update("counter.incr", key, |v| v.checked_add(by))
    }

    pub(crate) fn decr(&self, key: &str, by: i64) -> Result<i64> {
        // Like DECRBY: a decrement of i64::MIN is refused whatever the value.
        self.update("counter.decr", key, |v| {
            by.checked_neg().and_then(|n| v.checked_add(n))
        })
    }

    pub(crate) fn get(&self, key: &str) -> i64 {
        self.values.get(key).map(|v| *v).unwrap_or(0)
    }

    pub(crate) fn set(&self, key: &str, value: i64) {
        self.values.insert(key.to_string(), value);
    }

    pub(crate) fn list(&self, base: &str) -> Vec<(Vec<String>, i64)> {
        let mut rows: Vec<(String, Vec<String>, i64)> = self
            .values
            .iter()
            .filter_map(|e| {
                parts_after_base(base, e.key()).map(|parts| (e.key().clone(), parts, *e.value()))
            })
            .collect();
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        rows.into_iter().map(|(_, p, v)| (p, v)).collect()
    }
}

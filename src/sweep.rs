//! Expired entries of the embedded stores, swept out as a store grows.
//!
//! On Redis a record with a TTL disappears by itself; in process memory an entry nobody reads
//! again would stay for the life of the process. A store sweeps its map when it has doubled
//! since the last sweep: each insert pays amortised O(1), and the map holds at most twice its
//! live entries (or [`MIN_SWEEP`]).

use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicUsize, Ordering};

use dashmap::DashMap;

/// A map is never swept below this size.
pub(crate) const MIN_SWEEP: usize = 1024;

/// When the next sweep of one map is due.
#[derive(Debug, Default)]
pub(crate) struct Sweeper {
    sweep_at: AtomicUsize,
}

impl Sweeper {
    /// Keep only the entries for which `live` holds, if `map` has grown enough since the
    /// last sweep. Call it before an insert.
    pub(crate) fn sweep<K, V, S>(
        &self,
        map: &DashMap<K, V, S>,
        live: impl FnMut(&K, &mut V) -> bool,
    ) where
        K: Eq + Hash,
        S: BuildHasher + Clone,
    {
        if map.len() < self.sweep_at.load(Ordering::Relaxed).max(MIN_SWEEP) {
            return;
        }
        map.retain(live);
        self.sweep_at
            .store((2 * map.len()).max(MIN_SWEEP), Ordering::Relaxed);
    }
}

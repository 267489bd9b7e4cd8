//! Embedded mode's snapshots: the same contract in process memory.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;

use super::{AppendReply, RunKeys, SnapshotMeta};
use crate::sweep::Sweeper;
use crate::time::after;

#[derive(Debug, Clone)]
struct Run {
    fingerprint: String,
    writer: String,
    ids: Vec<String>,
    next: u64,
    complete: bool,
    expires: Instant,
    max: u64,
    last_chunk: Option<(Vec<String>, bool)>,
}

/// In-process snapshot runs, shared by every actor incarnation.
#[derive(Debug, Clone, Default)]
pub struct LocalSnapshotStore {
    runs: Arc<DashMap<String, Run>>,
    /// Sweeps out expired runs (on Redis their keys expire).
    sweeper: Arc<Sweeper>,
}

impl LocalSnapshotStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn live(&self, key: &str) -> Option<dashmap::mapref::one::RefMut<'_, String, Run>> {
        let now = Instant::now();
        self.runs.remove_if(key, |_, r| r.expires <= now);
        self.runs.get_mut(key)
    }

    /// See `snap_begin.lua`.
    pub fn begin(&self, keys: &RunKeys, fp: &str, writer: &str, ttl: Duration, max: u64) {
        let now = Instant::now();
        self.sweeper.sweep(&self.runs, |_, r| r.expires > now);
        self.runs.insert(
            keys.meta.clone(),
            Run {
                fingerprint: fp.to_string(),
                writer: writer.to_string(),
                ids: Vec::new(),
                next: 0,
                complete: false,
                expires: after(now, ttl),
                max,
                last_chunk: None,
            },
        );
    }

    /// See `snap_append.lua`.
    pub fn append(
        &self,
        keys: &RunKeys,
        writer: &str,
        index: u64,
        ids: &[String],
        last: bool,
    ) -> AppendReply {
        let Some(mut run) = self.live(&keys.meta) else {
            return AppendReply::Missing;
        };
        if run.writer != writer {
            return AppendReply::Concurrent;
        }
        if index + 1 == run.next && run.last_chunk.as_ref() == Some(&(ids.to_vec(), last)) {
            return AppendReply::Ok(run.ids.len() as u64);
        }
        if run.complete {
            return AppendReply::Complete;
        }
        if index != run.next {
            return AppendReply::OutOfOrder(run.next);
        }
        if run.ids.len() as u64 + ids.len() as u64 > run.max {
            return AppendReply::TooMany(run.max);
        }
        run.ids.extend_from_slice(ids);
        run.next += 1;
        run.complete = last;
        run.last_chunk = Some((ids.to_vec(), last));
        AppendReply::Ok(run.ids.len() as u64)
    }

    /// See `snap_page.lua`.
    pub fn page(
        &self,
        keys: &RunKeys,
        offset: u64,
        limit: u64,
        expected: Option<&str>,
        keep: Duration,
    ) -> Option<Vec<String>> {
        let mut run = self.live(&keys.meta)?;
        if !run.complete || expected.is_some_and(|fp| fp != run.fingerprint) {
            return None;
        }
        if !keep.is_zero() {
            run.expires = run.expires.max(after(Instant::now(), keep));
        }
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(run.ids.len());
        let end = start
            .saturating_add(usize::try_from(limit).unwrap_or(usize::MAX))
            .min(run.ids.len());
        Some(run.ids[start..end].to_vec())
    }

    /// The run's metadata.
    pub fn meta(&self, keys: &RunKeys) -> Option<SnapshotMeta> {
        let run = self.live(&keys.meta)?;
        Some(SnapshotMeta {
            fingerprint: run.fingerprint.clone(),
            total: run.ids.len() as u64,
            complete: run.complete,
            expires_in: Some(run.expires.saturating_duration_since(Instant::now())),
        })
    }

    /// Delete the run.
    pub fn delete(&self, keys: &RunKeys) -> bool {
        let live = self.live(&keys.meta).is_some();
        self.runs.remove(&keys.meta);
        live
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sweep::MIN_SWEEP;

    fn keys(id: &str) -> RunKeys {
        RunKeys {
            meta: format!("m:{id}"),
            ids: format!("m:{id}:ids"),
        }
    }

    #[test]
    fn expired_runs_do_not_stay_in_memory() {
        let store = LocalSnapshotStore::new();
        let short = Duration::from_millis(1);
        for round in 0..10 {
            for i in 0..1000 {
                store.begin(&keys(&format!("r{round}-{i}")), "fp", "w", short, 10);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        assert!(store.runs.len() <= 2 * MIN_SWEEP, "{}", store.runs.len());
        store.begin(&keys("kept"), "fp", "w", Duration::from_secs(60), 10);
        for i in 0..3 * MIN_SWEEP {
            store.begin(&keys(&format!("x{i}")), "fp", "w", short, 10);
        }
        assert!(store.runs.contains_key("m:kept"));
    }
}

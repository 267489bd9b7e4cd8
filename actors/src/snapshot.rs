//! Snapshot handles: [`SnapshotHandle`] runs on the caller's task (runs live in Redis, or in
//! the shared local store in embedded mode). See [`forze_redis::snapshot`] and
//! `docs/snapshots.md`.

use std::sync::Arc;

use forze_redis::snapshot::{RunId, SnapshotMeta, SnapshotWriter, Snapshots};
use forze_redis::Result;

use crate::shared::Shared;

/// A snapshot resource, used from any task. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SnapshotHandle {
    pub(crate) shared: Arc<Shared>,
    pub(crate) snaps: Arc<Snapshots>,
}

impl SnapshotHandle {
    /// The resource name.
    pub fn name(&self) -> &str {
        self.snaps.name()
    }

    /// Write a whole run (readable once complete).
    pub async fn put(&self, run: &RunId, fingerprint: &str, ids: &[String]) -> Result<()> {
        self.shared.check_open("snapshot.put")?;
        self.snaps.put(run, fingerprint, ids).await
    }

    /// Open a run for streaming writes.
    pub async fn begin(&self, run: &RunId, fingerprint: &str) -> Result<SnapshotWriter> {
        self.shared.check_open("snapshot.begin")?;
        self.snaps.begin(run, fingerprint).await
    }

    /// Append the writer's next chunk (`last` completes the run).
    pub async fn append(
        &self,
        writer: &mut SnapshotWriter,
        ids: &[String],
        last: bool,
    ) -> Result<u64> {
        self.shared.check_open("snapshot.append")?;
        self.snaps.append(writer, ids, last).await
    }

    /// Complete a run without more ids.
    pub async fn finish(&self, writer: &mut SnapshotWriter) -> Result<u64> {
        self.append(writer, &[], true).await
    }

    /// One page of a complete run, in one round trip (`None`: missing, incomplete, expired or
    /// another fingerprint; `Some([])` past the end).
    pub async fn page(
        &self,
        run: &RunId,
        offset: u64,
        limit: u64,
        expected_fingerprint: Option<&str>,
    ) -> Result<Option<Vec<String>>> {
        self.shared.check_open("snapshot.page")?;
        self.snaps
            .page(run, offset, limit, expected_fingerprint)
            .await
    }

    /// The run's metadata.
    pub async fn meta(&self, run: &RunId) -> Result<Option<SnapshotMeta>> {
        self.shared.check_open("snapshot.meta")?;
        self.snaps.meta(run).await
    }

    /// Delete the run; whether it existed.
    pub async fn delete(&self, run: &RunId) -> Result<bool> {
        self.shared.check_open("snapshot.delete")?;
        self.snaps.delete(run).await
    }
}

//! Search-result snapshots: an ordered list of opaque ids for one search run, so later pages
//! come without re-running the search.
//!
//! One run is two keys in one hash slot: a meta hash (`<prefix>:snap:{<ns>:<tenant>:<run>}`)
//! and its id list (the `:ids` sibling). Both carry the same absolute expiry (`PEXPIREAT`), set
//! at `begin` and re-applied by every append, so a run expires whole: no early chunk can
//! vanish before the rest (forze's chunk keys could). A page is one script call: the meta check
//! (complete, fingerprint) and `LRANGE` together, with the optional keep-alive.
//!
//! Writing streams through a [`SnapshotWriter`]: chunks must come in order from the writer
//! that began the run; a second `begin` of the same run, a chunk out of order, or more than
//! `max_ids` ids are refused with a clear error, never silently merged.

pub mod local;
pub mod redis;

use std::sync::Arc;
use std::time::Duration;

use crate::config::SnapshotConfig;
use crate::error::{ConflictReason, Error, Result};
use crate::gate::Gate;
use crate::keys::{key_tenant, KeySpace, TenantId};
use crate::lock::new_owner;
use crate::pooled::pooled_with;
use local::LocalSnapshotStore;
use redis::RedisSnapshotStore;

/// What an append answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppendReply {
    /// Appended; the run now holds this many ids.
    Ok(u64),
    /// No such run (never begun, expired or deleted).
    Missing,
    /// The run is complete.
    Complete,
    /// Another writer began the run since.
    Concurrent,
    /// The chunk came out of order; the run expects this index.
    OutOfOrder(u64),
    /// The run would exceed this many ids.
    TooMany(u64),
}

/// A run's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotMeta {
    /// The fingerprint given at `begin`.
    pub fingerprint: String,
    /// Ids stored so far.
    pub total: u64,
    /// Whether the last chunk was appended (only complete runs are readable).
    pub complete: bool,
    /// Time left before the run expires.
    pub expires_in: Option<Duration>,
}

/// A run being written: append its chunks in order, the last one with `last = true`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotWriter {
    run: RunKeys,
    writer: String,
    next: u64,
}

/// The two keys of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunKeys {
    /// The meta hash.
    pub meta: String,
    /// The id list.
    pub ids: String,
}

/// One run's identity: its id, and the tenant for tenant-aware resources.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RunId {
    tenant: Option<TenantId>,
    id: String,
}

impl RunId {
    /// A run without tenant.
    pub fn new(id: impl Into<String>) -> Self {
        RunId {
            tenant: None,
            id: id.into(),
        }
    }

    /// The same run for `tenant`.
    pub fn for_tenant(mut self, tenant: TenantId) -> Self {
        self.tenant = Some(tenant);
        self
    }
}

#[derive(Debug)]
enum Store {
    Redis(RedisSnapshotStore),
    Local(LocalSnapshotStore),
}

/// One configured snapshot resource.
#[derive(Debug, Clone)]
pub struct Snapshots(Arc<SnapshotsState>);

#[doc(hidden)]
impl std::ops::Deref for Snapshots {
    type Target = SnapshotsState;
    fn deref(&self) -> &SnapshotsState {
        &self.0
    }
}

/// What every clone of one [`Snapshots`] shares.
#[doc(hidden)]
#[derive(Debug)]
pub struct SnapshotsState {
    /// Spans and metrics of every operation.
    pub(crate) telemetry: crate::telemetry::Telemetry,
    gate: Gate,
    name: String,
    space: KeySpace,
    tenant_aware: bool,
    config: SnapshotConfig,
    store: Store,
}

impl Snapshots {
    /// A resource on Redis (`redis` is `Some`) or on local state (embedded mode).
    pub(crate) fn new(
        name: impl Into<String>,
        space: KeySpace,
        config: &SnapshotConfig,
        redis: Option<RedisSnapshotStore>,
        local: LocalSnapshotStore,
        gate: Gate,
        telemetry: crate::telemetry::Telemetry,
    ) -> Self {
        Snapshots(Arc::new(SnapshotsState {
            telemetry,
            gate,
            name: name.into(),
            space,
            tenant_aware: config.tenant_aware,
            config: config.clone(),
            store: match redis {
                Some(r) => Store::Redis(r),
                None => Store::Local(local),
            },
        }))
    }

    /// The resource name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The keys of `run`.
    pub(crate) fn keys(&self, run: &RunId) -> Result<RunKeys> {
        if run.id.is_empty() {
            return Err(Error::validation("run_id", "must not be empty"));
        }
        let tenant = key_tenant(&self.name, self.tenant_aware, run.tenant.as_ref())?;
        let meta = self.space.key(tenant, &[&run.id])?;
        Ok(RunKeys {
            ids: meta.sibling("ids").into_string(),
            meta: meta.into_string(),
        })
    }

    /// Open `run` for writing (replacing any run with that id; a writer of the replaced run
    /// then gets `Conflict(NotOwner)` on its next append).
    pub async fn begin(&self, run: &RunId, fingerprint: &str) -> Result<SnapshotWriter> {
        self.gate.check("snapshot.begin")?;
        self.open_run(run, fingerprint).await
    }

    /// [`Snapshots::begin`] past the gate (`put` checks it once for the whole run).
    async fn open_run(&self, run: &RunId, fingerprint: &str) -> Result<SnapshotWriter> {
        let op = async {
            let keys = self.keys(run)?;
            let writer = new_owner();
            let (ttl, max) = (self.config.ttl, self.config.max_ids);
            match &self.store {
                Store::Redis(r) => {
                    pooled_with(|| r.begin(&keys, fingerprint, &writer, ttl, max)).await?
                }
                Store::Local(l) => l.begin(&keys, fingerprint, &writer, ttl, max),
            }
            Ok(SnapshotWriter {
                run: keys,
                writer,
                next: 0,
            })
        };
        self.telemetry.observe("snapshot.begin", op, |_| "ok").await
    }

    /// Append the writer's next chunk; `last` completes the run. Errors: `Validation` when
    /// the run would exceed `max_ids`, or no longer exists (never begun, expired, deleted);
    /// `Conflict(NotOwner)` when another writer began the run since; `Conflict(OutOfOrder)`
    /// for a chunk out of order or after the run completed. Returns the run's id count.
    pub async fn append(&self, w: &mut SnapshotWriter, ids: &[String], last: bool) -> Result<u64> {
        self.gate.check("snapshot.append")?;
        self.write_chunk(w, ids, last).await
    }

    /// [`Snapshots::append`] past the gate: a `put` that began before shutdown completes its
    /// run instead of leaving it incomplete.
    async fn write_chunk(&self, w: &mut SnapshotWriter, ids: &[String], last: bool) -> Result<u64> {
        let op = async {
            const OP: &str = "snapshot.append";
            let reply = match &self.store {
                Store::Redis(r) => {
                    pooled_with(|| r.append(&w.run, &w.writer, w.next, ids, last)).await?
                }
                Store::Local(l) => l.append(&w.run, &w.writer, w.next, ids, last),
            };
            match reply {
                AppendReply::Ok(total) => {
                    w.next += 1;
                    Ok(total)
                }
                AppendReply::TooMany(max) => Err(Error::validation(
                    "ids",
                    format!("the run would exceed max_ids ({max})"),
                )),
                AppendReply::Concurrent => Err(Error::Conflict {
                    op: OP.into(),
                    reason: ConflictReason::NotOwner,
                }),
                AppendReply::OutOfOrder(_) | AppendReply::Complete => Err(Error::Conflict {
                    op: OP.into(),
                    reason: ConflictReason::OutOfOrder,
                }),
                AppendReply::Missing => Err(Error::validation(
                    "run_id",
                    "the run does not exist (never begun, expired or deleted)",
                )),
            }
        };
        self.telemetry
            .observe("snapshot.append", op, |_| "ok")
            .await
    }

    /// Complete a run without more ids.
    pub async fn finish(&self, writer: &mut SnapshotWriter) -> Result<u64> {
        self.append(writer, &[], true).await
    }

    /// Write a whole run: begin, then the ids in chunks of `chunk_size`. Readers see it only
    /// once complete. Refused before any write when `ids` exceeds `max_ids`.
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use forze_redis_actors::{Config, Forze, RunId};
    ///
    /// let config = Config::from_toml_str(r#"mode = "embedded"
    ///     [snapshots.search]
    ///     ttl = "5m"
    /// "#)?;
    /// let (forze, _join) = Forze::spawn(config).await?;
    /// let search = forze.snapshot("search")?;
    /// let run = RunId::new("query-7f3a");
    ///
    /// let ids: Vec<String> = (1..=25).map(|i| format!("doc-{i}")).collect();
    /// search.put(&run, "sha256:query", &ids).await?;
    /// // Read it back page by page, checking the fingerprint.
    /// let page = search.page(&run, 10, 10, Some("sha256:query")).await?;
    /// assert_eq!(page, Some(ids[10..20].to_vec()));
    /// assert_eq!(search.page(&run, 30, 10, None).await?, Some(vec![])); // past the end
    /// assert_eq!(search.page(&run, 0, 10, Some("sha256:other")).await?, None);
    ///
    /// forze.shutdown().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn put(&self, run: &RunId, fingerprint: &str, ids: &[String]) -> Result<()> {
        self.gate.check("snapshot.put")?;
        if ids.len() as u64 > self.config.max_ids {
            return Err(Error::validation(
                "ids",
                format!("{} ids exceed max_ids ({})", ids.len(), self.config.max_ids),
            ));
        }
        let mut w = self.open_run(run, fingerprint).await?;
        let chunks: Vec<&[String]> = ids.chunks(self.config.chunk_size).collect();
        if chunks.is_empty() {
            self.write_chunk(&mut w, &[], true).await?;
        }
        for (i, chunk) in chunks.iter().enumerate() {
            self.write_chunk(&mut w, chunk, i + 1 == chunks.len())
                .await?;
        }
        Ok(())
    }

    /// Ids `offset..offset + limit` of a complete run, in one round trip. `None` when the run
    /// is missing, incomplete, expired, or has another fingerprint than `expected` (when
    /// given); `Some([])` past the end. With `keep_alive` configured, the read extends the run.
    pub async fn page(
        &self,
        run: &RunId,
        offset: u64,
        limit: u64,
        expected: Option<&str>,
    ) -> Result<Option<Vec<String>>> {
        self.gate.check("snapshot.page")?;
        let op = async {
            if limit == 0 {
                return Err(Error::validation("limit", "must be at least 1"));
            }
            let keys = self.keys(run)?;
            let keep = self.config.keep_alive.unwrap_or(Duration::ZERO);
            match &self.store {
                Store::Redis(r) => {
                    pooled_with(|| r.page(&keys, offset, limit, expected, keep)).await
                }
                Store::Local(l) => Ok(l.page(&keys, offset, limit, expected, keep)),
            }
        };
        self.telemetry
            .observe("snapshot.page", op, |p| {
                if p.is_some() {
                    "hit"
                } else {
                    "miss"
                }
            })
            .await
    }

    /// The run's metadata, or `None`.
    pub async fn meta(&self, run: &RunId) -> Result<Option<SnapshotMeta>> {
        self.gate.check("snapshot.meta")?;
        let op = async {
            let keys = self.keys(run)?;
            match &self.store {
                Store::Redis(r) => pooled_with(|| r.meta(&keys)).await,
                Store::Local(l) => Ok(l.meta(&keys)),
            }
        };
        self.telemetry
            .observe("snapshot.meta", op, |m| {
                if m.is_some() {
                    "hit"
                } else {
                    "miss"
                }
            })
            .await
    }

    /// Delete the run (both keys); whether it existed.
    pub async fn delete(&self, run: &RunId) -> Result<bool> {
        self.gate.check("snapshot.delete")?;
        let op = async {
            let keys = self.keys(run)?;
            match &self.store {
                Store::Redis(r) => pooled_with(|| r.delete(&keys)).await,
                Store::Local(l) => Ok(l.delete(&keys)),
            }
        };
        self.telemetry
            .observe(
                "snapshot.delete",
                op,
                |&d| if d { "deleted" } else { "absent" },
            )
            .await
    }
}

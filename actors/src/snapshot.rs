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

    /// The registered name of this resource's actor, for sending [`SnapshotMsg`]s.
    pub fn actor_name(&self) -> String {
        self.shared.names.snapshots(self.snaps.name())
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

/// Requests to a snapshot actor (`<prefix>.snapshots.<name>`), for callers that are actors.
/// Each is served on a tracked task that replies on the port; the actor never awaits Redis.
#[derive(Debug)]
pub enum SnapshotMsg {
    /// [`SnapshotHandle::put`].
    Put {
        /// The run.
        run: RunId,
        /// Its fingerprint.
        fingerprint: String,
        /// The ids, in order.
        ids: Vec<String>,
        /// Done.
        reply: ractor::RpcReplyPort<Result<()>>,
    },
    /// [`SnapshotHandle::page`].
    Page {
        /// The run.
        run: RunId,
        /// First id.
        offset: u64,
        /// Most ids.
        limit: u64,
        /// The fingerprint the reader expects, if any.
        expected_fingerprint: Option<String>,
        /// The page.
        reply: ractor::RpcReplyPort<Result<Option<Vec<String>>>>,
    },
    /// [`SnapshotHandle::delete`].
    Delete {
        /// The run.
        run: RunId,
        /// Whether it existed.
        reply: ractor::RpcReplyPort<Result<bool>>,
    },
    /// Make this actor panic, to drill supervision.
    #[cfg(feature = "fault-injection")]
    Panic,
}

/// The actor of one snapshot resource: a message front door to the same runs.
#[derive(Debug)]
pub struct SnapshotActor;

impl ractor::Actor for SnapshotActor {
    type Msg = SnapshotMsg;
    type State = SnapshotHandle;
    type Arguments = SnapshotHandle;

    async fn pre_start(
        &self,
        _myself: ractor::ActorRef<SnapshotMsg>,
        handle: SnapshotHandle,
    ) -> std::result::Result<SnapshotHandle, ractor::ActorProcessingErr> {
        Ok(handle)
    }

    async fn handle(
        &self,
        _myself: ractor::ActorRef<SnapshotMsg>,
        msg: SnapshotMsg,
        h: &mut SnapshotHandle,
    ) -> std::result::Result<(), ractor::ActorProcessingErr> {
        let handle = h.clone();
        let tasks = &h.shared.tasks;
        match msg {
            SnapshotMsg::Put {
                run,
                fingerprint,
                ids,
                reply,
            } => {
                tasks.spawn(async move {
                    let _ = reply.send(handle.put(&run, &fingerprint, &ids).await);
                });
            }
            SnapshotMsg::Page {
                run,
                offset,
                limit,
                expected_fingerprint,
                reply,
            } => {
                tasks.spawn(async move {
                    let page = handle
                        .page(&run, offset, limit, expected_fingerprint.as_deref())
                        .await;
                    let _ = reply.send(page);
                });
            }
            SnapshotMsg::Delete { run, reply } => {
                tasks.spawn(async move {
                    let _ = reply.send(handle.delete(&run).await);
                });
            }
            #[cfg(feature = "fault-injection")]
            SnapshotMsg::Panic => panic!("fault injection: snapshot actor panic"),
        }
        Ok(())
    }
}

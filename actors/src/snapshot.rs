//! Snapshot actors (`<prefix>.snapshots.<name>`) and their messages: a message front door,
//! for callers that are actors, to the same runs [`Snapshots`] serves on the caller's task.

use std::sync::Arc;

use forze_redis::{Result, RunId, Snapshots};
use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::reply::reply_later;
use crate::shared::{ResourceArgs, Shared};

/// Requests to a snapshot actor (`<prefix>.snapshots.<name>`), for callers that are actors.
/// Each is served on a tracked task that replies on the port; the actor never awaits Redis.
#[derive(Debug)]
#[non_exhaustive]
pub enum SnapshotMsg {
    /// [`Snapshots::put`].
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
    /// [`Snapshots::page`].
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
    /// [`Snapshots::delete`].
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

/// The actor of one snapshot resource.
#[derive(Debug)]
pub struct SnapshotActor;

impl Actor for SnapshotActor {
    type Msg = SnapshotMsg;
    type State = ResourceArgs<Snapshots>;
    type Arguments = ResourceArgs<Snapshots>;

    async fn pre_start(
        &self,
        _myself: ActorRef<SnapshotMsg>,
        args: ResourceArgs<Snapshots>,
    ) -> std::result::Result<ResourceArgs<Snapshots>, ActorProcessingErr> {
        Ok(args)
    }

    async fn handle(
        &self,
        _myself: ActorRef<SnapshotMsg>,
        msg: SnapshotMsg,
        state: &mut ResourceArgs<Snapshots>,
    ) -> std::result::Result<(), ActorProcessingErr> {
        let snaps = state.resource.clone();
        let shared: &Arc<Shared> = &state.shared;
        match msg {
            SnapshotMsg::Put {
                run,
                fingerprint,
                ids,
                reply,
            } => reply_later(shared, reply, async move {
                snaps.put(&run, &fingerprint, &ids).await
            }),
            SnapshotMsg::Page {
                run,
                offset,
                limit,
                expected_fingerprint,
                reply,
            } => reply_later(shared, reply, async move {
                snaps
                    .page(&run, offset, limit, expected_fingerprint.as_deref())
                    .await
            }),
            SnapshotMsg::Delete { run, reply } => {
                reply_later(shared, reply, async move { snaps.delete(&run).await })
            }
            #[cfg(feature = "fault-injection")]
            SnapshotMsg::Panic => panic!("fault injection: snapshot actor panic"),
        }
        Ok(())
    }
}

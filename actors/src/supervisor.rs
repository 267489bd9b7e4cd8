//! The supervisor (`<prefix>.supervisor`): the root of one forze-redis actor tree.
//!
//! ```text
//! <prefix>.supervisor            ForzeSupervisor (this file)
//! ├── <prefix>.pool              PoolActor: connection lifecycle and health (Redis mode only)
//! ├── <prefix>.counter.<name>    CounterActor, one per configured counter
//! ├── <prefix>.cache.<name>      CacheActor, one per cache namespace
//! ├── <prefix>.tracking          TrackingSubscriber (Redis mode, when a cache has an L1)
//! ├── <prefix>.heartbeat         Heartbeater (when a lock is configured)
//! ├── <prefix>.idempotency.<name> IdempotencyActor, a message front door per resource
//! ├── <prefix>.snapshots.<name>  SnapshotActor, a message front door per resource
//! └── <prefix>.resilience        ResilienceActor: breaker and rate-limit housekeeping, stats
//! ```
//!
//! - One-for-one restarts: a failed (or unexpectedly stopped) child is restarted alone after a
//!   jittered exponential backoff; more than `max_restarts` within `restart_window` and the
//!   supervisor shuts its tree down and fails to its own parent ([`RestartPolicy`]).
//! - Children are rebuilt from [`Shared`], so a restart resumes instead of starting over.
//! - Graceful shutdown (stop the supervisor, or [`ForzeHandle::shutdown`]) refuses new
//!   requests first, then stops the per-resource actors, waits for in-flight request tasks,
//!   stops the pool actor, and closes the connections last.
//!
//! [`ForzeHandle::shutdown`]: crate::ForzeHandle::shutdown

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use ractor::{
    Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent,
};

use crate::cache::CacheActor;
use crate::counter::CounterActor;
use crate::pool::PoolActor;
use crate::restart::{RestartDecision, RestartPolicy};
use crate::shared::{ResourceArgs, Shared};
use crate::tracking::TrackingSubscriber;

/// A child of the supervisor, by role.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ChildKind {
    /// The pool actor.
    Pool,
    /// The counter actor of the named resource.
    Counter(String),
    /// The cache actor of the named namespace.
    Cache(String),
    /// The tracking subscriber.
    Tracking,
    /// The lease heartbeater.
    Heartbeat,
    /// The idempotency actor of the named resource.
    Idempotency(String),
    /// The snapshot actor of the named resource.
    Snapshots(String),
    /// The resilience actor (breakers and rate limits).
    Resilience,
}

/// Messages of the supervisor.
#[derive(Debug)]
pub enum SupervisorMsg {
    /// Report the restart statistics.
    Stats(RpcReplyPort<SupervisorStats>),
    /// Restart a child (sent by the supervisor to itself after the backoff).
    Respawn(ChildKind),
    /// Make a child panic, to drill supervision. Replies whether the child was running.
    #[cfg(feature = "fault-injection")]
    PanicChild(ChildKind, RpcReplyPort<bool>),
}

/// Restart statistics of a supervisor.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct SupervisorStats {
    /// Restarts performed since start.
    pub restarts: u64,
    /// Children running now.
    pub children_running: usize,
    /// Children waiting for their restart.
    pub children_restarting: usize,
}

/// The supervisor actor.
#[derive(Debug)]
pub struct ForzeSupervisor;

/// State of the supervisor.
#[derive(Debug)]
pub struct SupervisorState {
    shared: Arc<Shared>,
    children: HashMap<ActorId, (ChildKind, ActorCell)>,
    restarting: usize,
    policy: RestartPolicy,
}

impl ForzeSupervisor {
    async fn spawn_child(
        myself: &ActorRef<SupervisorMsg>,
        state: &mut SupervisorState,
        kind: ChildKind,
    ) -> Result<(), ActorProcessingErr> {
        let shared = state.shared.clone();
        let cell = match &kind {
            ChildKind::Pool => {
                let (r, _) = Actor::spawn_linked(
                    Some(shared.names.pool()),
                    PoolActor,
                    shared.clone(),
                    myself.get_cell(),
                )
                .await?;
                r.get_cell()
            }
            ChildKind::Counter(name) => {
                let counter = shared.counters.get(name)?;
                let (r, _) = Actor::spawn_linked(
                    Some(shared.names.counter(name)),
                    CounterActor,
                    ResourceArgs {
                        shared: shared.clone(),
                        resource: counter,
                    },
                    myself.get_cell(),
                )
                .await?;
                r.get_cell()
            }
            ChildKind::Cache(name) => {
                let cache = shared.caches.get(name)?;
                let (r, _) = Actor::spawn_linked(
                    Some(shared.names.cache(name)),
                    CacheActor,
                    ResourceArgs {
                        shared: shared.clone(),
                        resource: cache,
                    },
                    myself.get_cell(),
                )
                .await?;
                r.get_cell()
            }
            ChildKind::Idempotency(name) => {
                let resource = shared.idempotency.get(name)?;
                let (r, _) = Actor::spawn_linked(
                    Some(shared.names.idempotency(name)),
                    crate::idempotency::IdempotencyActor,
                    ResourceArgs {
                        shared: shared.clone(),
                        resource,
                    },
                    myself.get_cell(),
                )
                .await?;
                r.get_cell()
            }
            ChildKind::Snapshots(name) => {
                let resource = shared.snapshots.get(name)?;
                let (r, _) = Actor::spawn_linked(
                    Some(shared.names.snapshots(name)),
                    crate::snapshot::SnapshotActor,
                    ResourceArgs {
                        shared: shared.clone(),
                        resource,
                    },
                    myself.get_cell(),
                )
                .await?;
                r.get_cell()
            }
            ChildKind::Resilience => {
                let (r, _) = Actor::spawn_linked(
                    Some(shared.names.resilience()),
                    crate::resilience::ResilienceActor,
                    shared.clone(),
                    myself.get_cell(),
                )
                .await?;
                r.get_cell()
            }
            ChildKind::Heartbeat => {
                let (r, _) = Actor::spawn_linked(
                    Some(shared.names.heartbeat()),
                    crate::heartbeat::Heartbeater,
                    shared.clone(),
                    myself.get_cell(),
                )
                .await?;
                r.get_cell()
            }
            ChildKind::Tracking => {
                let (r, _) = Actor::spawn_linked(
                    Some(shared.names.tracking()),
                    TrackingSubscriber,
                    shared.clone(),
                    myself.get_cell(),
                )
                .await?;
                r.get_cell()
            }
        };
        state.children.insert(cell.get_id(), (kind, cell));
        Ok(())
    }

    /// Stop the tree in order: refuse callers, stop resource actors, drain request tasks,
    /// stop the pool actor, close the connections.
    /// Start every child the configuration asks for, in order.
    async fn spawn_children(
        myself: &ActorRef<SupervisorMsg>,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        if state.shared.connection.is_some() {
            Self::spawn_child(myself, state, ChildKind::Pool).await?;
        }
        let names: Vec<String> = state.shared.counters.names();
        for name in names {
            Self::spawn_child(myself, state, ChildKind::Counter(name)).await?;
        }
        let caches: Vec<String> = state.shared.caches.names();
        for name in caches {
            Self::spawn_child(myself, state, ChildKind::Cache(name)).await?;
        }
        if state.shared.tracking.is_some() {
            Self::spawn_child(myself, state, ChildKind::Tracking).await?;
        }
        if !state.shared.locks.is_empty() {
            Self::spawn_child(myself, state, ChildKind::Heartbeat).await?;
        }
        let idem: Vec<String> = state.shared.idempotency.names();
        for name in idem {
            Self::spawn_child(myself, state, ChildKind::Idempotency(name)).await?;
        }
        let snaps: Vec<String> = state.shared.snapshots.names();
        for name in snaps {
            Self::spawn_child(myself, state, ChildKind::Snapshots(name)).await?;
        }
        if !state.shared.breakers.is_empty() || !state.shared.rate_limits.is_empty() {
            Self::spawn_child(myself, state, ChildKind::Resilience).await?;
        }
        Ok(())
    }

    async fn shut_down_tree(state: &mut SupervisorState) {
        let shared = &state.shared;
        shared.gate.close();
        let timeout = shared.config.supervision.shutdown_timeout;
        let (pool, resources): (Vec<_>, Vec<_>) = state
            .children
            .drain()
            .map(|(_, child)| child)
            .partition(|(kind, _)| *kind == ChildKind::Pool);
        // Three stages of at most `timeout` each: the resource actors (together), the request
        // tasks, then the pool and the connections.
        let stops = resources.into_iter().map(|(kind, cell)| async move {
            if cell
                .stop_and_wait(Some("shutdown".into()), Some(timeout))
                .await
                .is_err()
            {
                tracing::warn!(?kind, "child did not stop in time; killing it");
                cell.kill();
            }
        });
        futures::future::join_all(stops).await;
        if !shared.tasks.drain(timeout).await {
            tracing::warn!("request tasks still running at shutdown were cancelled");
        }
        let close = async {
            for (_, cell) in pool {
                if cell
                    .stop_and_wait(Some("shutdown".into()), Some(timeout))
                    .await
                    .is_err()
                {
                    cell.kill();
                }
            }
            let quit = async {
                if let Some(conn) = &shared.connection {
                    conn.quit(timeout).await;
                }
            };
            let close_routes = async {
                if let Some(router) = &shared.router {
                    router.close_all(timeout).await;
                }
            };
            tokio::join!(quit, close_routes);
        };
        if tokio::time::timeout(timeout, close).await.is_err() {
            tracing::warn!("connections did not close in time");
        }
        tracing::info!(prefix = shared.names.prefix(), "forze supervisor shut down");
    }
}

impl Actor for ForzeSupervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = Arc<Shared>;

    async fn pre_start(
        &self,
        myself: ActorRef<SupervisorMsg>,
        shared: Arc<Shared>,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        if let Some(conn) = &shared.connection {
            // Never waits for Redis: callers are served (or refused) while it comes up.
            conn.connect_in_background();
        }
        let mut state = SupervisorState {
            policy: RestartPolicy::new(&shared.config.supervision),
            shared,
            children: HashMap::new(),
            restarting: 0,
        };
        if let Err(e) = Self::spawn_children(&myself, &mut state).await {
            // ractor runs no `post_stop` after a failed `pre_start`: stop what did start
            // (children, the connections coming up in the background) before failing.
            Self::shut_down_tree(&mut state).await;
            return Err(e);
        }
        tracing::info!(
            prefix = state.shared.names.prefix(),
            mode = if state.shared.connection.is_some() {
                "redis"
            } else {
                "embedded"
            },
            "forze supervisor started"
        );
        Ok(state)
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<SupervisorMsg>,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        Self::shut_down_tree(state).await;
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<SupervisorMsg>,
        msg: SupervisorMsg,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::Stats(reply) => {
                let _ = reply.send(SupervisorStats {
                    restarts: state.policy.total(),
                    children_running: state.children.len(),
                    children_restarting: state.restarting,
                });
            }
            SupervisorMsg::Respawn(kind) => {
                state.restarting = state.restarting.saturating_sub(1);
                if state.shared.gate.is_closed() {
                    return Ok(());
                }
                // Anyone may send Respawn: never start a second incarnation of a running child.
                if state.children.values().any(|(k, _)| *k == kind) {
                    tracing::debug!(?kind, "respawn ignored: the child is running");
                    return Ok(());
                }
                if let Err(e) = Self::spawn_child(&myself, state, kind.clone()).await {
                    tracing::error!(?kind, error = %e, "restart failed");
                    return self
                        .on_child_down(&myself, state, kind, e.to_string())
                        .await;
                }
                tracing::info!(?kind, "child restarted");
            }
            #[cfg(feature = "fault-injection")]
            SupervisorMsg::PanicChild(kind, reply) => {
                let target = state.children.values().find(|(k, _)| *k == kind);
                let found = target.is_some();
                if let Some((_, cell)) = target {
                    match &kind {
                        ChildKind::Pool => {
                            let _ = ActorRef::<crate::pool::PoolMsg>::from(cell.clone())
                                .cast(crate::pool::PoolMsg::Panic);
                        }
                        ChildKind::Counter(_) => {
                            let _ = ActorRef::<crate::counter::CounterMsg>::from(cell.clone())
                                .cast(crate::counter::CounterMsg::Panic);
                        }
                        ChildKind::Cache(_) => {
                            let _ = ActorRef::<crate::cache::CacheMsg>::from(cell.clone())
                                .cast(crate::cache::CacheMsg::Panic);
                        }
                        ChildKind::Tracking => {
                            let _ = ActorRef::<crate::tracking::TrackingMsg>::from(cell.clone())
                                .cast(crate::tracking::TrackingMsg::Panic);
                        }
                        ChildKind::Heartbeat => {
                            let _ = ActorRef::<crate::heartbeat::HeartbeatMsg>::from(cell.clone())
                                .cast(crate::heartbeat::HeartbeatMsg::Panic);
                        }
                        ChildKind::Idempotency(_) => {
                            let _ =
                                ActorRef::<crate::idempotency::IdempotencyMsg>::from(cell.clone())
                                    .cast(crate::idempotency::IdempotencyMsg::Panic);
                        }
                        ChildKind::Resilience => {
                            let _ =
                                ActorRef::<crate::resilience::ResilienceMsg>::from(cell.clone())
                                    .cast(crate::resilience::ResilienceMsg::Panic);
                        }
                        ChildKind::Snapshots(_) => {
                            let _ = ActorRef::<crate::snapshot::SnapshotMsg>::from(cell.clone())
                                .cast(crate::snapshot::SnapshotMsg::Panic);
                        }
                    }
                }
                let _ = reply.send(found);
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<SupervisorMsg>,
        event: SupervisionEvent,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        // Never fall back to ractor's default, which stops the supervisor on any child exit.
        let (cell, why) = match event {
            SupervisionEvent::ActorFailed(cell, err) => (cell, format!("failed: {err}")),
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                (cell, format!("stopped: {}", reason.unwrap_or_default()))
            }
            _ => return Ok(()),
        };
        let Some((kind, _)) = state.children.remove(&cell.get_id()) else {
            return Ok(());
        };
        if state.shared.gate.is_closed() {
            return Ok(());
        }
        self.on_child_down(&myself, state, kind, why).await
    }
}

impl ForzeSupervisor {
    async fn on_child_down(
        &self,
        myself: &ActorRef<SupervisorMsg>,
        state: &mut SupervisorState,
        kind: ChildKind,
        why: String,
    ) -> Result<(), ActorProcessingErr> {
        let child = format!("{kind:?}");
        match state.policy.on_failure(&child, Instant::now()) {
            RestartDecision::RestartAfter(delay) => {
                tracing::warn!(child, why, ?delay, "child down; restarting");
                state.restarting += 1;
                myself.send_after(delay, move || SupervisorMsg::Respawn(kind));
                Ok(())
            }
            RestartDecision::Escalate => {
                tracing::error!(child, why, "restart intensity exceeded; supervisor fails");
                Self::shut_down_tree(state).await;
                Err(format!("restart intensity exceeded ({child} {why})").into())
            }
        }
    }
}

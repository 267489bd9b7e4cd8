//! The pool actor (`<prefix>.pool`): owns the connection pool's lifecycle and publishes its
//! health.
//!
//! It never sits on a request path: callers use clones of the pool directly. What it does:
//! - listens to every client's reconnect and error events (fred's receivers, consumed here so
//!   a lagging channel is noticed instead of ending a listener silently);
//! - probes every client with the `server_time` script (`TIME`) bounded by the command timeout, every
//!   `health_interval`, so a black-holed connection shows as down at once, and is found by
//!   the pool's unresponsive check even while no caller uses it;
//! - publishes [`Health`] (up / degraded / down, with since-when) on a watch channel that the
//!   other actors and the handles read, and logs every change;
//! - names each connection (`CLIENT SETNAME`) when it (re)connects.
//!
//! Its state lives in [`Shared`], so a restarted pool actor resumes where the failed one was.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use forze_redis::connection::{Health, HealthState, RedisConnection};
use forze_redis::error::Access;
use forze_redis::task::AbortOnDrop;
use fred::interfaces::{ClientInterface, ClientLike, EventInterface};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::broadcast::error::RecvError;

use crate::shared::Shared;

/// Messages of the pool actor.
#[derive(Debug)]
pub enum PoolMsg {
    /// Report statistics.
    Stats(RpcReplyPort<PoolStats>),
    /// Probe every connection now (also sent by the actor's own timer).
    Probe,
    /// A client (by index) reconnected. Sent by the actor's event listeners.
    Reconnected(usize),
    /// A client (by index) reported a connection error. Sent by the event listeners.
    ConnectionError(usize),
    /// Make this actor panic, to drill supervision.
    #[cfg(feature = "fault-injection")]
    Panic,
}

/// Statistics of the pool actor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct PoolStats {
    /// The published health.
    pub health: Health,
    /// Reconnections seen (including first connects).
    pub reconnects: u64,
    /// Connection errors seen.
    pub connection_errors: u64,
    /// Probes run.
    pub probes: u64,
    /// Probes in which at least one connection failed.
    pub probe_failures: u64,
    /// Health state changes.
    pub state_changes: u64,
    /// Scripts re-sent after `NOSCRIPT`.
    pub script_reloads: u64,
    /// fred connection tasks that ended on their own and were started again (see
    /// `RedisConnection::connect_in_background`).
    pub task_restarts: u64,
    /// Reads the pool's read watch ended at the command timeout (those fred's own timer
    /// ended are not counted: every read takes it for a while after a timeout).
    pub read_watch_timeouts: u64,
    /// Clients of the `[redis]` pool checked after a command timed out (a `PING` on each of
    /// their connections).
    pub unresponsive_checks: u64,
    /// Reconnects of `[redis]` pool clients requested because a `PING` of such a check went
    /// unanswered for `unresponsive_timeout` (a black-holed connection); on a cluster,
    /// slot-map refreshes requested because the silent primary's slots had moved.
    pub unresponsive_reconnects: u64,
}

/// The pool actor.
#[derive(Debug)]
pub struct PoolActor;

/// State of one pool actor incarnation.
#[derive(Debug)]
pub struct PoolState {
    shared: Arc<Shared>,
    conn: Arc<RedisConnection>,
    _listeners: Vec<AbortOnDrop>,
    next_probe: Option<AbortOnDrop>,
}

impl Actor for PoolActor {
    type Msg = PoolMsg;
    type State = PoolState;
    type Arguments = Arc<Shared>;

    async fn pre_start(
        &self,
        myself: ActorRef<PoolMsg>,
        shared: Arc<Shared>,
    ) -> Result<PoolState, ActorProcessingErr> {
        let conn = shared
            .connection
            .clone()
            .ok_or("the pool actor needs a Redis connection")?;
        let mut listeners = Vec::new();
        for (index, client) in conn.pool().clients().iter().enumerate() {
            let mut reconnects = client.reconnect_rx();
            let me = myself.clone();
            listeners.push(AbortOnDrop(tokio::spawn(async move {
                loop {
                    match reconnects.recv().await {
                        Ok(_) => {
                            let _ = me.cast(PoolMsg::Reconnected(index));
                        }
                        // Missed events: treat as a reconnect, which re-checks everything.
                        Err(RecvError::Lagged(_)) => {
                            let _ = me.cast(PoolMsg::Reconnected(index));
                        }
                        Err(RecvError::Closed) => break,
                    }
                }
            })));
            let mut errors = client.error_rx();
            let me = myself.clone();
            listeners.push(AbortOnDrop(tokio::spawn(async move {
                // Lagged counts as an error too: something was missed.
                while let Ok(_) | Err(RecvError::Lagged(_)) = errors.recv().await {
                    let _ = me.cast(PoolMsg::ConnectionError(index));
                }
            })));
        }
        Ok(PoolState {
            shared,
            conn,
            _listeners: listeners,
            next_probe: None,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<PoolMsg>,
        state: &mut PoolState,
    ) -> Result<(), ActorProcessingErr> {
        // A new incarnation names every connection already up, then probes at once.
        for client in state.conn.pool().clients() {
            if client.is_connected() {
                set_name(&state.shared, client).await;
            }
        }
        myself.cast(PoolMsg::Probe)?;
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<PoolMsg>,
        msg: PoolMsg,
        state: &mut PoolState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            PoolMsg::Stats(reply) => {
                let _ = reply.send(stats(&state.shared, &state.conn));
            }
            PoolMsg::Probe => {
                probe(state).await;
                let interval = state
                    .shared
                    .config
                    .redis
                    .as_ref()
                    .map(|r| r.health_interval)
                    .unwrap_or_default();
                // Re-armed after each probe (not a fixed interval) so a slow probe never
                // queues a burst of ticks.
                let me = myself.clone();
                state.next_probe = Some(AbortOnDrop(tokio::spawn(async move {
                    tokio::time::sleep(interval).await;
                    let _ = me.cast(PoolMsg::Probe);
                })));
            }
            PoolMsg::Reconnected(index) => {
                state
                    .shared
                    .pool_stats
                    .reconnects
                    .fetch_add(1, Ordering::Relaxed);
                tracing::info!(client = index, "redis connection up");
                if let Some(client) = state.conn.pool().clients().get(index) {
                    connected_soon(&state.shared, client).await;
                    set_name(&state.shared, client).await;
                }
                probe(state).await;
            }
            PoolMsg::ConnectionError(index) => {
                state
                    .shared
                    .pool_stats
                    .connection_errors
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(client = index, "redis connection error");
                probe(state).await;
            }
            #[cfg(feature = "fault-injection")]
            PoolMsg::Panic => panic!("fault injection: pool actor panic"),
        }
        Ok(())
    }
}

/// Wait (at most the connect timeout) until `client` counts as connected. fred announces a
/// reconnect before it marks the client connected (it first re-sends what was in flight), so
/// a probe run at once could count the client down and leave that published until the next
/// probe.
async fn connected_soon(shared: &Shared, client: &fred::clients::Client) {
    let within = shared
        .config
        .redis
        .as_ref()
        .map_or(Duration::ZERO, |r| r.connect_timeout);
    let deadline = tokio::time::Instant::now() + within;
    while !client.is_connected() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn set_name(shared: &Shared, client: &fred::clients::Client) {
    let Some(redis) = &shared.config.redis else {
        return;
    };
    let opts = shared
        .connection
        .as_ref()
        .map(|c| c.options(Access::Read).clone())
        .unwrap_or_default();
    if let Err(e) = client
        .with_options(&opts)
        .client_setname(redis.client_name.as_str())
        .await
    {
        tracing::debug!(error = %e, "CLIENT SETNAME failed");
    }
}

/// Probe every connected client (bounded by the command timeout) and publish the health.
async fn probe(state: &mut PoolState) {
    let shared = &state.shared;
    shared.pool_stats.probes.fetch_add(1, Ordering::Relaxed);
    let probe = state.conn.probe().await;
    if probe.healthy < probe.total {
        shared
            .pool_stats
            .probe_failures
            .fetch_add(1, Ordering::Relaxed);
    }
    publish(shared, probe.state(), probe.healthy, probe.total);
}

fn publish(shared: &Shared, new: HealthState, connected: usize, total: usize) {
    if Health::publish(&shared.health, new, connected, total) {
        shared
            .pool_stats
            .state_changes
            .fetch_add(1, Ordering::Relaxed);
    }
}

fn stats(shared: &Shared, conn: &RedisConnection) -> PoolStats {
    let c = &shared.pool_stats;
    PoolStats {
        health: *shared.health.borrow(),
        reconnects: c.reconnects.load(Ordering::Relaxed),
        connection_errors: c.connection_errors.load(Ordering::Relaxed),
        probes: c.probes.load(Ordering::Relaxed),
        probe_failures: c.probe_failures.load(Ordering::Relaxed),
        state_changes: c.state_changes.load(Ordering::Relaxed),
        script_reloads: conn.script_reloads(),
        task_restarts: conn.task_restarts(),
        read_watch_timeouts: conn.watched_read_timeouts(),
        unresponsive_checks: conn.unresponsive_checks(),
        unresponsive_reconnects: conn.unresponsive_reconnects(),
    }
}

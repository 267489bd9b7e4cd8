//! The heartbeater (`<prefix>.heartbeat`): drives the renewal of every lease this supervisor
//! holds.
//!
//! It ticks at the shortest renewal period among the configured locks and, on each tick,
//! starts the renewals that are due ([`LeaseRegistry::renew_due`]: one batched script call per
//! lock resource and slot group) on a tracked task, so the actor never awaits Redis in its
//! handler. The leases and the renewal counts live in the runtime's registry: a restarted
//! heartbeater picks them all up again.

use std::sync::Arc;
use std::time::Duration;

use forze_redis::lock::LeaseRegistry;
use forze_redis::task::AbortOnDrop;
use forze_redis::HeartbeatStats;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::shared::Shared;

/// Messages of the heartbeater.
#[derive(Debug)]
#[non_exhaustive]
pub enum HeartbeatMsg {
    /// Renew what is due (the actor's own timer).
    Tick,
    /// Report statistics.
    Stats(RpcReplyPort<HeartbeatStats>),
    /// Stop renewing (`true`) or resume (`false`): a test hook that freezes every holder of
    /// this supervisor without stopping anything else.
    #[cfg(feature = "fault-injection")]
    Stall(bool),
    /// Make this actor panic, to drill supervision.
    #[cfg(feature = "fault-injection")]
    Panic,
}

/// The heartbeater actor.
#[derive(Debug)]
pub struct Heartbeater;

/// State of one incarnation.
#[derive(Debug)]
pub struct HeartbeatState {
    shared: Arc<Shared>,
    tick: Duration,
    _timer: AbortOnDrop,
}

impl Actor for Heartbeater {
    type Msg = HeartbeatMsg;
    type State = HeartbeatState;
    type Arguments = Arc<Shared>;

    async fn pre_start(
        &self,
        myself: ActorRef<HeartbeatMsg>,
        shared: Arc<Shared>,
    ) -> Result<HeartbeatState, ActorProcessingErr> {
        let tick = LeaseRegistry::tick_period(shared.locks.values());
        shared.leases.reset_in_flight();
        let timer = AbortOnDrop(myself.send_interval(tick, || HeartbeatMsg::Tick));
        Ok(HeartbeatState {
            shared,
            tick,
            _timer: timer,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<HeartbeatMsg>,
        msg: HeartbeatMsg,
        state: &mut HeartbeatState,
    ) -> Result<(), ActorProcessingErr> {
        let shared = &state.shared;
        match msg {
            HeartbeatMsg::Tick => {
                if shared.gate.is_closed() {
                    return Ok(());
                }
                if let Some(renewals) = shared.leases.renew_due(state.tick) {
                    shared.tasks.spawn(renewals);
                }
            }
            HeartbeatMsg::Stats(reply) => {
                let _ = reply.send(shared.leases.stats());
            }
            #[cfg(feature = "fault-injection")]
            HeartbeatMsg::Stall(on) => shared.leases.stall(on),
            #[cfg(feature = "fault-injection")]
            HeartbeatMsg::Panic => panic!("fault injection: heartbeater panic"),
        }
        Ok(())
    }
}

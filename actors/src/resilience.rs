//! The resilience actor (`<prefix>.resilience`): housekeeping and statistics for the breaker
//! and rate-limit policies.
//!
//! Decisions never pass through it: handles decide on the caller's task (one script call, a
//! cached phase, or the local fallback, all in [`Shared`]). So while it restarts, every
//! decision goes on exactly as before. It sweeps expired cached breaker phases every second,
//! so routes that stopped being used do not hold memory, and answers `Stats`.

use std::sync::Arc;
use std::time::Duration;

use forze_redis::breaker::BreakerStats;
use forze_redis::ratelimit::RateLimitStats;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::shared::Shared;
use forze_redis::task::AbortOnDrop;

/// Messages of the resilience actor.
#[derive(Debug)]
pub enum ResilienceMsg {
    /// Sweep expired cached phases (the actor's own timer).
    Sweep,
    /// Report statistics.
    Stats(RpcReplyPort<ResilienceStats>),
    /// Make this actor panic, to drill supervision.
    #[cfg(feature = "fault-injection")]
    Panic,
}

/// Statistics of every breaker and rate-limit policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct ResilienceStats {
    /// Breaker by policy name.
    pub breakers: Vec<(String, BreakerStats)>,
    /// Rate limits by policy name.
    pub rate_limits: Vec<(String, RateLimitStats)>,
}

/// The resilience actor.
#[derive(Debug)]
pub struct ResilienceActor;

/// State of one incarnation.
#[derive(Debug)]
pub struct ResilienceState {
    shared: Arc<Shared>,
    _timer: AbortOnDrop,
}

impl Actor for ResilienceActor {
    type Msg = ResilienceMsg;
    type State = ResilienceState;
    type Arguments = Arc<Shared>;

    async fn pre_start(
        &self,
        myself: ActorRef<ResilienceMsg>,
        shared: Arc<Shared>,
    ) -> Result<ResilienceState, ActorProcessingErr> {
        let timer =
            AbortOnDrop(myself.send_interval(Duration::from_secs(1), || ResilienceMsg::Sweep));
        Ok(ResilienceState {
            shared,
            _timer: timer,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<ResilienceMsg>,
        msg: ResilienceMsg,
        state: &mut ResilienceState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ResilienceMsg::Sweep => {
                for b in state.shared.breakers.values() {
                    b.sweep();
                }
            }
            ResilienceMsg::Stats(reply) => {
                let _ = reply.send(ResilienceStats {
                    breakers: state
                        .shared
                        .breakers
                        .iter()
                        .map(|(n, b)| (n.clone(), b.stats()))
                        .collect(),
                    rate_limits: state
                        .shared
                        .rate_limits
                        .iter()
                        .map(|(n, r)| (n.clone(), r.stats()))
                        .collect(),
                });
            }
            #[cfg(feature = "fault-injection")]
            ResilienceMsg::Panic => panic!("fault injection: resilience actor panic"),
        }
        Ok(())
    }
}

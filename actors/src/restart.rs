//! The restart policy of the supervisor: one-for-one, jittered exponential backoff per child,
//! and a restart intensity limit over all children.
//!
//! Kept apart from the actor so the arithmetic is tested without timers.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use forze_redis::config::SupervisionConfig;

/// What to do after a child failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartDecision {
    /// Restart the child after this delay.
    RestartAfter(Duration),
    /// Too many restarts within the window: the supervisor must fail to its parent.
    Escalate,
}

/// Restart bookkeeping of one supervisor.
#[derive(Debug)]
pub struct RestartPolicy {
    min: Duration,
    max: Duration,
    max_restarts: u32,
    window: Duration,
    recent: VecDeque<Instant>,
    per_child: HashMap<String, VecDeque<Instant>>,
    total: u64,
}

impl RestartPolicy {
    /// A policy from the configuration.
    pub fn new(cfg: &SupervisionConfig) -> Self {
        RestartPolicy {
            min: cfg.restart_backoff_min,
            max: cfg.restart_backoff_max,
            max_restarts: cfg.max_restarts,
            window: cfg.restart_window,
            recent: VecDeque::new(),
            per_child: HashMap::new(),
            total: 0,
        }
    }

    /// Record a failure of `child` at `now` and decide. The delay doubles with each recent
    /// failure of the same child (from `min`, capped at `max`), then gets up to half of itself
    /// added at random (`[delay, 1.5 × delay]`): never sooner than `min`, and replicas that
    /// fail together do not restart in lockstep.
    pub fn on_failure(&mut self, child: &str, now: Instant) -> RestartDecision {
        let window = self.window;
        let expired = |q: &mut VecDeque<Instant>| {
            while q.front().is_some_and(|t| now.duration_since(*t) >= window) {
                q.pop_front();
            }
        };
        expired(&mut self.recent);
        if self.recent.len() >= self.max_restarts as usize {
            return RestartDecision::Escalate;
        }
        self.recent.push_back(now);
        self.total += 1;
        let history = self.per_child.entry(child.to_string()).or_default();
        expired(history);
        history.push_back(now);
        let exponent = (history.len() as u32).saturating_sub(1).min(20);
        let delay = self.min.saturating_mul(1u32 << exponent).min(self.max);
        let jitter = rand::random_range(1.0..=1.5);
        RestartDecision::RestartAfter(delay.mul_f64(jitter))
    }

    /// Restarts performed since the supervisor started.
    pub fn total(&self) -> u64 {
        self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(max_restarts: u32) -> RestartPolicy {
        RestartPolicy::new(&SupervisionConfig {
            max_restarts,
            ..SupervisionConfig::default()
        })
    }

    #[test]
    fn backoff_doubles_per_child_within_jitter_and_caps() {
        let mut p = policy(100);
        let now = Instant::now();
        let mut expected = Duration::from_millis(100);
        for _ in 0..10 {
            match p.on_failure("pool", now) {
                RestartDecision::RestartAfter(d) => {
                    assert!(
                        d >= expected && d <= expected * 3 / 2,
                        "{d:?} vs {expected:?}"
                    );
                }
                RestartDecision::Escalate => panic!("escalated too early"),
            }
            expected = (expected * 2).min(Duration::from_secs(5));
        }
        // Another child starts from the minimum again.
        assert!(matches!(
            p.on_failure("counter", now),
            RestartDecision::RestartAfter(d) if d <= Duration::from_millis(150)
        ));
    }

    #[test]
    fn intensity_limit_escalates_and_the_window_forgets() {
        let mut p = policy(3);
        let t0 = Instant::now();
        for i in 0..3 {
            assert!(matches!(
                p.on_failure(&format!("c{i}"), t0),
                RestartDecision::RestartAfter(_)
            ));
        }
        assert_eq!(p.on_failure("c9", t0), RestartDecision::Escalate);
        let later = t0 + Duration::from_secs(61);
        assert!(matches!(
            p.on_failure("c9", later),
            RestartDecision::RestartAfter(_)
        ));
        assert_eq!(p.total(), 4);
    }
}

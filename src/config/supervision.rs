//! `[supervision]`: restarts and shutdown of the actor tree.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Restart and shutdown policy of the actor tree.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SupervisionConfig {
    /// Prefix of every registered actor name (default `forze`: `forze.supervisor`,
    /// `forze.pool`…). Give each supervisor in one process its own.
    pub name_prefix: String,
    /// First restart delay of a failed child (default 100 ms), doubled per recent restart.
    #[serde(with = "humantime_serde")]
    pub restart_backoff_min: Duration,
    /// Largest restart delay (default 5 s).
    #[serde(with = "humantime_serde")]
    pub restart_backoff_max: Duration,
    /// Restarts allowed within `restart_window` before the supervisor fails to its parent
    /// (default 10).
    pub max_restarts: u32,
    /// The window of the restart intensity limit (default 60 s).
    #[serde(with = "humantime_serde")]
    pub restart_window: Duration,
    /// Time limit of a request that needs an actor's mailbox (default 5 s).
    #[serde(with = "humantime_serde")]
    pub call_timeout: Duration,
    /// Time allowed for each of the graceful shutdown's three stages (default 10 s): the
    /// resource actors, the request tasks (cancelled past it), the pool and connections.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
}

impl Default for SupervisionConfig {
    fn default() -> Self {
        SupervisionConfig {
            name_prefix: "forze".into(),
            restart_backoff_min: Duration::from_millis(100),
            restart_backoff_max: Duration::from_secs(5),
            max_restarts: 10,
            restart_window: Duration::from_secs(60),
            call_timeout: Duration::from_secs(5),
            shutdown_timeout: Duration::from_secs(10),
        }
    }
}

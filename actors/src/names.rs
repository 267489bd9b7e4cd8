//! Registered actor names. Every name carries the configured prefix, so several supervisors
//! can live in one process (`replica1.pool`, `replica2.pool`).

/// The names of one supervisor's actors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActorNames {
    prefix: String,
}

impl ActorNames {
    /// Names under `prefix` (validated by the configuration).
    pub(crate) fn new(prefix: impl Into<String>) -> Self {
        ActorNames {
            prefix: prefix.into(),
        }
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `<prefix>.supervisor`
    pub fn supervisor(&self) -> String {
        format!("{}.supervisor", self.prefix)
    }

    /// `<prefix>.pool`
    pub fn pool(&self) -> String {
        format!("{}.pool", self.prefix)
    }

    /// `<prefix>.counter.<name>`
    pub fn counter(&self, name: &str) -> String {
        format!("{}.counter.{name}", self.prefix)
    }

    /// `<prefix>.cache.<name>`
    pub fn cache(&self, name: &str) -> String {
        format!("{}.cache.{name}", self.prefix)
    }

    /// `<prefix>.tracking`
    pub fn tracking(&self) -> String {
        format!("{}.tracking", self.prefix)
    }

    /// `<prefix>.heartbeat`
    pub fn heartbeat(&self) -> String {
        format!("{}.heartbeat", self.prefix)
    }

    /// `<prefix>.idempotency.<name>`
    pub fn idempotency(&self, name: &str) -> String {
        format!("{}.idempotency.{name}", self.prefix)
    }

    /// `<prefix>.snapshots.<name>`
    pub fn snapshots(&self, name: &str) -> String {
        format!("{}.snapshots.{name}", self.prefix)
    }

    /// `<prefix>.resilience`
    pub fn resilience(&self) -> String {
        format!("{}.resilience", self.prefix)
    }
}

//! Where a breaker admission or a rate-limit decision was made.

use serde::Serialize;

/// Where a decision was made: on the server, from this replica's cache of a recent server
/// answer, or on local state. Rate limiters never answer from a cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum DecidedBy {
    /// The script on Redis (one round trip), on the server's clock.
    Redis,
    /// This replica's memory of a recent Redis answer (no round trip; breakers only).
    Cache,
    /// This replica's fallback state, because Redis could not be reached.
    Fallback,
    /// Embedded mode's local state.
    Local,
}

//! The one error type of forze-redis and the classification of driver errors.
//!
//! - [`Error`] is what every operation returns. Match on [`Error::kind`] (an [`ErrorKind`]) for
//!   control flow; the variants carry the details.
//! - [`DriverError`] wraps an error from fred together with its [`DriverErrorClass`]. The class
//!   is decided once, in [`DriverErrorClass::of`], from fred's `ErrorKind` and, for error replies
//!   from the server, from the RESP error code (the upper-case first word the protocol defines
//!   for machine consumption: `WRONGTYPE`, `NOSCRIPT`, `BUSY`, `READONLY`, `LOADING`…). Nothing
//!   downstream looks at message text.
//! - Whether a driver failure means "did not run" ([`ErrorKind::Unavailable`]) or "may have run"
//!   ([`ErrorKind::OutcomeUnknown`]) depends on whether the command was a write: see
//!   [`Error::from_driver`].

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

pub use crate::connect_failure::ConnectFailure;

fn cause_suffix(cause: &Option<ConnectFailure>) -> String {
    match cause {
        Some(c) => format!(" ({c})"),
        None => String::new(),
    }
}

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The machine-readable kind of an [`Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Redis could not be reached; the operation did not run.
    Unavailable,
    /// A write whose reply was lost: it may or may not have been applied.
    OutcomeUnknown,
    /// A read (or a call to an actor) did not complete in time.
    Timeout,
    /// The operation conflicts with the stored state; see [`ConflictReason`].
    Conflict,
    /// The input is invalid; nothing was sent.
    Validation,
    /// Refused by a rate limit; retry after the given delay.
    Throttled,
    /// A lock lease was lost.
    LockLost,
    /// A stored value could not be decoded, or a value could not be encoded.
    Codec,
    /// The configuration is invalid.
    Config,
    /// A tenant-aware resource was used without a tenant.
    TenantRequired,
    /// A circuit breaker refused the call; retry after the given delay.
    CircuitOpen,
    /// A cache loader (`get_or_load`) failed; its message is carried.
    Loader,
    /// A bug or an unexpected reply; not retryable.
    Internal,
}

impl ErrorKind {
    /// The kind in snake case (`outcome_unknown`): the `error.type` of spans and the outcome
    /// label of metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::OutcomeUnknown => "outcome_unknown",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Validation => "validation",
            ErrorKind::Throttled => "throttled",
            ErrorKind::LockLost => "lock_lost",
            ErrorKind::Codec => "codec",
            ErrorKind::Config => "config",
            ErrorKind::TenantRequired => "tenant_required",
            ErrorKind::CircuitOpen => "circuit_open",
            ErrorKind::Loader => "loader",
            ErrorKind::Internal => "internal",
        }
    }
}

/// Why an operation conflicted with the stored state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ConflictReason {
    /// The result would leave the `i64` range (or the stored value is not an integer);
    /// the stored value is unchanged.
    OutOfRange,
    /// A concurrent duplicate of the same request is in progress.
    InProgress,
    /// The same key was used with a different payload.
    PayloadMismatch,
    /// A step of a sequence came out of order, or after the sequence was complete (for
    /// instance a snapshot chunk); nothing was written.
    OutOfOrder,
    /// The caller does not own the record or lease it tried to change.
    NotOwner,
}

impl fmt::Display for ConflictReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConflictReason::OutOfRange => "value out of the i64 range; unchanged",
            ConflictReason::InProgress => "a duplicate request is in progress",
            ConflictReason::PayloadMismatch => "the key was used with a different payload",
            ConflictReason::NotOwner => "not the owner",
            ConflictReason::OutOfOrder => "out of order, or after the sequence was complete",
        })
    }
}

/// Every error forze-redis returns.
///
/// Secrets never appear here: connection URLs are not part of any variant, and driver errors
/// carry only what fred reports about a connection or what the server replied.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Redis could not be reached (or refused to serve: loading, read-only replica, cluster
    /// down); the operation did not run. Safe to retry.
    #[error(
        "redis unavailable during {op}: the operation did not run{}",
        cause_suffix(cause)
    )]
    Unavailable {
        /// The operation, e.g. `counter.incr`.
        op: Cow<'static, str>,
        /// The driver failure, when there was one.
        #[source]
        source: Option<DriverError>,
        /// Why connections cannot be opened, when that is known (a TLS certificate the server
        /// presented was refused, the server refused our credentials…).
        cause: Option<ConnectFailure>,
    },
    /// A write was sent but its reply was lost: it may have been applied. Not blindly retryable.
    #[error("outcome of {op} unknown: the reply was lost, the write may have been applied")]
    OutcomeUnknown {
        /// The operation.
        op: Cow<'static, str>,
        /// The driver failure.
        #[source]
        source: Option<DriverError>,
    },
    /// A read or an actor call did not complete within `after`.
    #[error("{op} timed out after {}", humantime::format_duration(*after))]
    Timeout {
        /// The operation.
        op: Cow<'static, str>,
        /// The time limit that was exceeded.
        after: Duration,
    },
    /// The stored state refuses the operation.
    #[error("conflict in {op}: {reason}")]
    Conflict {
        /// The operation.
        op: Cow<'static, str>,
        /// Why.
        reason: ConflictReason,
    },
    /// Invalid input; nothing was sent.
    #[error("invalid {field}: {message}")]
    Validation {
        /// The offending field or argument.
        field: Cow<'static, str>,
        /// What is wrong with it.
        message: String,
    },
    /// Refused by a rate limit.
    #[error("throttled; retry after {}", humantime::format_duration(*retry_after))]
    Throttled {
        /// How long to wait before trying again.
        retry_after: Duration,
    },
    /// A lock lease was lost.
    #[error("lock lease lost: {message}")]
    LockLost {
        /// What happened.
        message: String,
    },
    /// A value could not be encoded or decoded.
    #[error("codec error: {message}")]
    Codec {
        /// What failed.
        message: String,
    },
    /// Invalid configuration.
    #[error("invalid configuration at `{field}`: {message}")]
    Config {
        /// Dotted path of the offending field, e.g. `counters.orders.namespace`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// A tenant-aware resource got no tenant.
    #[error("resource `{resource}` is tenant-aware and needs a tenant")]
    TenantRequired {
        /// The resource name.
        resource: String,
    },
    /// A circuit breaker is open (or half-open with its trials taken): the call was not made.
    #[error("circuit open; retry after {retry_after:?}")]
    CircuitOpen {
        /// How long until a trial call may be admitted (0 when unknown).
        retry_after: Duration,
    },
    /// The loader of `get_or_load` failed. Every caller waiting on that load gets this, with
    /// the loader's own error shared among them ([`Error::loader_error`]).
    #[error("cache loader failed: {message}")]
    Loader {
        /// The loader's error, as it displays.
        message: String,
        /// The loader's error itself.
        error: LoaderError,
    },
    /// A bug or an unexpected reply.
    #[error("internal error in {op}: {message}")]
    Internal {
        /// The operation.
        op: Cow<'static, str>,
        /// What happened.
        message: String,
        /// The driver failure, when there was one.
        #[source]
        source: Option<DriverError>,
    },
}

/// Whether a command changes state. Decides how an ambiguous driver failure is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// The command only reads: a lost reply means it did not complete (`Unavailable`/`Timeout`).
    Read,
    /// The command writes: a lost reply after sending means `OutcomeUnknown`. Sent once: fred
    /// never sends it again, not after a lost connection and not after a cluster redirection.
    Write,
    /// The command writes, and running it twice leaves the same state as running it once
    /// (a plain `SET`, `DEL`, a replay-safe script). Classified like [`Access::Write`], but
    /// fred may send it a second time: after a `MOVED`/`ASK` redirection (on a cluster whose
    /// slots moved) or after a lost connection.
    IdempotentWrite,
}

impl Error {
    /// The machine-readable kind.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Unavailable { .. } => ErrorKind::Unavailable,
            Error::OutcomeUnknown { .. } => ErrorKind::OutcomeUnknown,
            Error::Timeout { .. } => ErrorKind::Timeout,
            Error::Conflict { .. } => ErrorKind::Conflict,
            Error::Validation { .. } => ErrorKind::Validation,
            Error::Throttled { .. } => ErrorKind::Throttled,
            Error::LockLost { .. } => ErrorKind::LockLost,
            Error::Codec { .. } => ErrorKind::Codec,
            Error::Config { .. } => ErrorKind::Config,
            Error::TenantRequired { .. } => ErrorKind::TenantRequired,
            Error::CircuitOpen { .. } => ErrorKind::CircuitOpen,
            Error::Loader { .. } => ErrorKind::Loader,
            Error::Internal { .. } => ErrorKind::Internal,
        }
    }

    /// How long to wait before trying again, when the refusal says (`Throttled`,
    /// `CircuitOpen`); `None` for every other error.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Throttled { retry_after } | Error::CircuitOpen { retry_after } => {
                Some(*retry_after)
            }
            _ => None,
        }
    }

    /// The loader's own error, when this is a `Loader` error and the loader failed with an
    /// `E` (every caller that waited on the load gets the same one, shared).
    pub fn loader_error<E: std::any::Any>(&self) -> Option<&E> {
        match self {
            Error::Loader { error, .. } => error.downcast_ref(),
            _ => None,
        }
    }

    /// Whether retrying the same call later can succeed and is safe.
    ///
    /// `OutcomeUnknown` is *not* retryable: the write may have been applied, and only the caller
    /// knows whether applying it twice is acceptable.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Unavailable { .. }
            | Error::Timeout { .. }
            | Error::Throttled { .. }
            | Error::CircuitOpen { .. } => true,
            Error::Conflict { reason, .. } => *reason == ConflictReason::InProgress,
            _ => false,
        }
    }

    /// The conflict reason, when this is a conflict.
    pub fn conflict_reason(&self) -> Option<ConflictReason> {
        match self {
            Error::Conflict { reason, .. } => Some(*reason),
            _ => None,
        }
    }

    /// The driver error class, when a driver failure caused this error.
    #[doc(hidden)]
    pub fn driver_class(&self) -> Option<DriverErrorClass> {
        match self {
            Error::Unavailable { source, .. }
            | Error::OutcomeUnknown { source, .. }
            | Error::Internal { source, .. } => source.as_ref().map(DriverError::class),
            _ => None,
        }
    }

    /// Why connections cannot be opened, when this error is `Unavailable` for that reason.
    pub fn connect_failure(&self) -> Option<ConnectFailure> {
        match self {
            Error::Unavailable { cause, .. } => *cause,
            _ => None,
        }
    }

    /// `Unavailable` because no connection is up, with the reason connections fail when one
    /// is known. Nothing was sent.
    #[doc(hidden)]
    pub fn unavailable_because(
        op: impl Into<Cow<'static, str>>,
        cause: Option<ConnectFailure>,
    ) -> Self {
        Error::Unavailable {
            op: op.into(),
            source: None,
            cause,
        }
    }

    /// `Unavailable` without a driver error: the call was refused before anything was sent.
    #[doc(hidden)]
    pub fn unavailable(op: impl Into<Cow<'static, str>>) -> Self {
        Error::Unavailable {
            op: op.into(),
            cause: None,
            source: None,
        }
    }

    /// A validation error naming the offending field.
    #[doc(hidden)]
    pub fn validation(field: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        Error::Validation {
            field: field.into(),
            message: message.into(),
        }
    }

    /// A configuration error naming the offending field.
    #[doc(hidden)]
    pub fn config(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Config {
            field: field.into(),
            message: message.into(),
        }
    }

    /// An internal error without a driver cause.
    #[doc(hidden)]
    pub fn internal(op: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        Error::Internal {
            op: op.into(),
            message: message.into(),
            source: None,
        }
    }

    /// Map a driver failure of `op` to the error callers see.
    ///
    /// A write that failed after it may have reached the server (connection lost, canceled,
    /// timed out) is `OutcomeUnknown`; the same failure on a read is `Unavailable` or `Timeout`.
    /// Replies that prove the command did not run (`LOADING`, `READONLY`, `BUSY`, `CLUSTERDOWN`,
    /// auth failures, backpressure) are `Unavailable` for both.
    #[doc(hidden)]
    pub fn from_driver(
        op: impl Into<Cow<'static, str>>,
        access: Access,
        timeout: Duration,
        err: fred::error::Error,
    ) -> Self {
        let op = op.into();
        let driver = DriverError::new(err);
        use DriverErrorClass as C;
        match (driver.class(), access) {
            // A command with a second attempt may have been written by the first one before
            // the connection was lost; its retry finding no connection proves nothing.
            (C::NotSent, Access::IdempotentWrite) => Error::OutcomeUnknown {
                op,
                source: Some(driver),
            },
            (C::Connection | C::Canceled | C::Timeout, Access::Write | Access::IdempotentWrite) => {
                Error::OutcomeUnknown {
                    op,
                    source: Some(driver),
                }
            }
            (C::Timeout, Access::Read) => Error::Timeout { op, after: timeout },
            (
                C::Connection
                | C::Canceled
                | C::Loading
                | C::ReadOnly
                | C::Busy
                | C::ClusterDown
                | C::Refused
                | C::Auth
                | C::Redirect
                | C::Backpressure
                | C::NotSent,
                _,
            ) => Error::Unavailable {
                op,
                source: Some(driver),
                cause: None,
            },
            (class, _) => Error::Internal {
                op,
                message: format!("unexpected {class} from redis"),
                source: Some(driver),
            },
        }
    }
}

/// What fred 10.1 says when its router finds no connection for a command it is about to write
/// (`router/commands.rs`). For a command with one attempt that is its only send; a command with
/// a second attempt may have been written once before (see [`Error::from_driver`]).
const NOT_ROUTED: &str = "Failed to route command.";

/// A fred error whose wording decides its class: the `ErrorKind` and the start of the message.
#[doc(hidden)]
pub struct DriverMessage {
    /// The fred `ErrorKind`s it comes with (by name).
    pub kinds: &'static [&'static str],
    /// The message, or its start.
    pub text: &'static str,
}

/// Every fred message the classification reads, so that a test can check that the fred in
/// the lock file still says each of them (a driver update that rewords one is caught).
#[doc(hidden)]
pub const DRIVER_MESSAGES: [DriverMessage; 5] = [
    DriverMessage {
        kinds: &["Unknown", "Routing"],
        text: NOT_ROUTED,
    },
    DriverMessage {
        kinds: &["Canceled"],
        text: NOT_SENT_CANCELED[0],
    },
    DriverMessage {
        kinds: &["Canceled"],
        text: NOT_SENT_CANCELED[1],
    },
    DriverMessage {
        kinds: &["Routing"],
        text: TOO_MANY_REDIRECTIONS,
    },
    DriverMessage {
        kinds: &["Unknown"],
        text: TOO_MANY_WRITE_ATTEMPTS,
    },
];

/// fred stopped following `MOVED`/`ASK` before sending again.
const TOO_MANY_REDIRECTIONS: &str = "Too many redirections";

/// fred wanted to send a command again and its attempt budget forbade it.
const TOO_MANY_WRITE_ATTEMPTS: &str = "Too many failed write attempts";

/// What fred reports when a command's reply channel is dropped unanswered: tokio's oneshot
/// `RecvError`, turned into an `Unknown` error by its text (pinned by a test below).
const REPLY_DROPPED: &str = "channel closed";

/// What fred 10.1 says when it refuses a command before sending it: the fail-fast check found
/// the client disconnected (`interfaces.rs`), or reconnection gave up (`router/utils.rs`).
/// Pinned by the tests below, `tests/outcomes.rs` and `tests/driver_messages.rs`: a driver
/// update that words them differently fails them.
const NOT_SENT_CANCELED: [&str; 2] = [
    "Connection closed unexpectedly.",
    "Max reconnection attempts reached.",
];

/// What kind of failure a driver error is. Decided once, in [`DriverErrorClass::of`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DriverErrorClass {
    /// The connection failed or closed.
    Connection,
    /// The command was never written: the driver found no connection to send it on, or
    /// refused it before sending because the client was not connected. It did not run.
    NotSent,
    /// The command was canceled (its reply will never come; it may have been written).
    Canceled,
    /// The command timed out.
    Timeout,
    /// `WRONGTYPE`: the key holds another type.
    WrongType,
    /// `BUSY`: a script is running too long.
    Busy,
    /// `NOSCRIPT`: the script cache does not hold the script.
    NoScript,
    /// `READONLY`: the node is a replica.
    ReadOnly,
    /// `LOADING`: the server is loading its dataset.
    Loading,
    /// `NOAUTH`/`WRONGPASS`/`NOPERM`: authentication or permission failure.
    Auth,
    /// `MOVED`/`ASK`: a cluster redirection that was not followed.
    Redirect,
    /// `CLUSTERDOWN`, `MASTERDOWN`, `TRYAGAIN`: the cluster cannot serve the slot now.
    ClusterDown,
    /// `OOM`, `NOREPLICAS`, `MISCONF`: the server refused the write before running it.
    Refused,
    /// The client's command buffer is full.
    Backpressure,
    /// Any other error reply from the server (`ERR …`).
    ServerError,
    /// The reply could not be parsed or converted.
    Protocol,
    /// A client configuration error.
    Config,
    /// Anything else.
    Other,
}

impl fmt::Display for DriverErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl DriverErrorClass {
    /// Classify a fred error.
    ///
    /// Client-side failures are classified by fred's `ErrorKind`. Error replies from the server
    /// reach fred as `Unknown`/`InvalidArgument`/`InvalidCommand`/`Auth`/`Cluster` kinds; for
    /// those the RESP error code (the first word of the reply, which the protocol defines as the
    /// machine-readable error type) decides. This is the only place that reads it.
    pub fn of(err: &fred::error::Error) -> Self {
        use fred::error::ErrorKind as K;
        match err.kind() {
            K::IO => DriverErrorClass::Connection,
            // Said before the command was written (this time): the router found no connection
            // for it, the fail-fast check saw the client disconnected, or reconnection gave up.
            K::Unknown | K::Routing if err.details() == NOT_ROUTED => DriverErrorClass::NotSent,
            K::Canceled if NOT_SENT_CANCELED.contains(&err.details()) => DriverErrorClass::NotSent,
            K::Canceled => DriverErrorClass::Canceled,
            K::Timeout => DriverErrorClass::Timeout,
            K::Backpressure => DriverErrorClass::Backpressure,
            K::Protocol | K::Parse | K::NotFound => DriverErrorClass::Protocol,
            K::Config | K::Url => DriverErrorClass::Config,
            // fred stopped following MOVED/ASK before sending again: the command did not run.
            K::Routing if err.details().starts_with(TOO_MANY_REDIRECTIONS) => {
                DriverErrorClass::Redirect
            }
            K::Routing | K::Sentinel => DriverErrorClass::Connection,
            // fred wanted to send the command again and the attempt budget forbade it: after a
            // lost connection (it may have run) or a cluster redirection (it did not). Only
            // the first can be assumed.
            K::Unknown if err.details().starts_with(TOO_MANY_WRITE_ATTEMPTS) => {
                DriverErrorClass::Connection
            }
            // The command's reply channel was dropped unanswered: fred's connection task ended
            // (and threw its in-flight commands away). Sent or not, nobody knows.
            K::Unknown if err.details() == REPLY_DROPPED => DriverErrorClass::Canceled,
            K::Auth | K::Cluster | K::Unknown | K::InvalidArgument | K::InvalidCommand => {
                Self::of_reply_code(err.details().split_whitespace().next().unwrap_or(""))
                    .unwrap_or(match err.kind() {
                        K::Auth => DriverErrorClass::Auth,
                        K::Cluster => DriverErrorClass::ClusterDown,
                        _ => DriverErrorClass::Other,
                    })
            }
            #[allow(unreachable_patterns)]
            _ => DriverErrorClass::Other,
        }
    }

    /// Classify a RESP error code (`WRONGTYPE`, `NOSCRIPT`…); `None` when `code` is not an
    /// error code (the protocol's codes are upper-case words).
    pub fn of_reply_code(code: &str) -> Option<Self> {
        Some(match code {
            "WRONGTYPE" => DriverErrorClass::WrongType,
            "NOSCRIPT" => DriverErrorClass::NoScript,
            "READONLY" => DriverErrorClass::ReadOnly,
            "LOADING" => DriverErrorClass::Loading,
            "NOAUTH" | "WRONGPASS" | "NOPERM" => DriverErrorClass::Auth,
            "MOVED" | "ASK" => DriverErrorClass::Redirect,
            // TRYAGAIN: a multi-key command during resharding; it did not run, retry later.
            "CLUSTERDOWN" | "MASTERDOWN" | "TRYAGAIN" => DriverErrorClass::ClusterDown,
            "OOM" | "NOREPLICAS" | "MISCONF" => DriverErrorClass::Refused,
            "BUSY" => DriverErrorClass::Busy,
            // BUSYKEY, BUSYGROUP and the rest are answers about the data, not server state.
            _ => DriverErrorClass::ServerError,
        })
        .filter(|_| is_reply_code(code))
    }
}

fn is_reply_code(code: &str) -> bool {
    !code.is_empty() && code.bytes().all(|b| b.is_ascii_uppercase() || b == b'_')
}

/// The error a `get_or_load` loader returned, shared by every caller that waited on that
/// load (as `Arc<E>` would be). Read it with [`Error::loader_error`].
#[derive(Clone)]
pub struct LoaderError(std::sync::Arc<dyn std::any::Any + Send + Sync>);

impl LoaderError {
    /// Wrap a loader's error.
    pub fn new<E: std::any::Any + Send + Sync>(error: E) -> Self {
        LoaderError(std::sync::Arc::new(error))
    }

    /// The error, if it is an `E`.
    pub fn downcast_ref<E: std::any::Any>(&self) -> Option<&E> {
        self.0.downcast_ref()
    }
}

impl fmt::Debug for LoaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LoaderError(..)")
    }
}

/// A fred error with its class, kept as the `source` of an [`Error`].
#[derive(Debug, Clone)]
pub struct DriverError {
    class: DriverErrorClass,
    inner: fred::error::Error,
}

impl DriverError {
    /// Classify and wrap a fred error.
    #[doc(hidden)]
    pub fn new(inner: fred::error::Error) -> Self {
        DriverError {
            class: DriverErrorClass::of(&inner),
            inner,
        }
    }

    /// The class.
    pub fn class(&self) -> DriverErrorClass {
        self.class
    }
}

impl fmt::Display for DriverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.class, self.inner)
    }
}

impl std::error::Error for DriverError {}

#[cfg(test)]
mod tests {
    use super::*;
    use fred::error::{Error as FredError, ErrorKind as K};

    fn class(kind: K, details: &str) -> DriverErrorClass {
        DriverErrorClass::of(&FredError::new(kind, details.to_string()))
    }

    #[test]
    fn commands_the_driver_never_wrote_are_unavailable_even_for_writes() {
        for (kind, report) in [
            (K::Unknown, "Failed to route command."),
            (K::Routing, "Failed to route command."),
            (K::Canceled, "Connection closed unexpectedly."),
            (K::Canceled, "Max reconnection attempts reached."),
        ] {
            assert_eq!(
                class(kind.clone(), report),
                DriverErrorClass::NotSent,
                "{report}"
            );
            for access in [Access::Read, Access::Write] {
                let e = Error::from_driver(
                    "op",
                    access,
                    Duration::from_secs(1),
                    FredError::new(kind.clone(), report.to_string()),
                );
                assert_eq!(e.kind(), ErrorKind::Unavailable, "{report} {access:?}");
            }
        }
        // The retry of a command with two attempts may follow a first send that ran.
        let retried = Error::from_driver(
            "op",
            Access::IdempotentWrite,
            Duration::from_secs(1),
            FredError::new(K::Unknown, "Failed to route command."),
        );
        assert_eq!(retried.kind(), ErrorKind::OutcomeUnknown);
        // Only the driver's own report, under its own kind, means "not sent".
        assert_ne!(
            class(K::Canceled, "Failed to route command."),
            DriverErrorClass::NotSent
        );
        assert_ne!(
            class(K::Unknown, "Connection closed unexpectedly."),
            DriverErrorClass::NotSent
        );
        // Written, then the connection closed: the write may have run.
        let lost = Error::from_driver(
            "op",
            Access::Write,
            Duration::from_secs(1),
            FredError::new(K::IO, "Connection closed."),
        );
        assert_eq!(lost.kind(), ErrorKind::OutcomeUnknown);
        assert_eq!(class(K::Canceled, "Canceled."), DriverErrorClass::Canceled);
    }

    #[test]
    fn server_replies_are_classified_by_their_resp_error_code() {
        assert_eq!(
            class(K::Unknown, "NOSCRIPT No matching script."),
            DriverErrorClass::NoScript
        );
        assert_eq!(
            class(K::InvalidArgument, "WRONGTYPE Operation against a key"),
            DriverErrorClass::WrongType
        );
        assert_eq!(
            class(K::Unknown, "BUSY Redis is busy"),
            DriverErrorClass::Busy
        );
        assert_eq!(
            class(K::Unknown, "READONLY You can't"),
            DriverErrorClass::ReadOnly
        );
        assert_eq!(
            class(K::Unknown, "LOADING Redis is"),
            DriverErrorClass::Loading
        );
        assert_eq!(class(K::Auth, "WRONGPASS invalid"), DriverErrorClass::Auth);
        assert_eq!(
            class(K::Unknown, "ERR increment or decrement would overflow"),
            DriverErrorClass::ServerError
        );
        // BUSY is the long-running-script state; BUSYKEY/BUSYGROUP are answers about data.
        assert_eq!(
            class(K::Unknown, "BUSYKEY Target key name already exists."),
            DriverErrorClass::ServerError
        );
        assert_eq!(
            class(K::Unknown, "BUSYGROUP Consumer Group name already exists"),
            DriverErrorClass::ServerError
        );
        for refused in [
            "OOM command not allowed",
            "NOREPLICAS Not enough good replicas",
            "MISCONF Redis is configured",
        ] {
            assert_eq!(
                class(K::Unknown, refused),
                DriverErrorClass::Refused,
                "{refused}"
            );
        }
        assert_eq!(
            class(
                K::Unknown,
                "TRYAGAIN Multiple keys request during rehashing"
            ),
            DriverErrorClass::ClusterDown
        );
        // A driver message that is not an error code stays unclassified.
        assert_eq!(
            class(K::Unknown, "Unresponsive connection."),
            DriverErrorClass::Other
        );
        // A message that merely mentions a code is not that code.
        assert_eq!(
            class(K::Unknown, "ERR no such key named WRONGTYPE"),
            DriverErrorClass::ServerError
        );
    }

    #[test]
    fn client_side_failures_are_classified_by_kind() {
        assert_eq!(
            class(K::IO, "Connection closed."),
            DriverErrorClass::Connection
        );
        assert_eq!(class(K::Timeout, "whatever"), DriverErrorClass::Timeout);
        assert_eq!(class(K::Canceled, "x"), DriverErrorClass::Canceled);
    }

    /// A command fred threw away with its connection task (its reply channel dropped) may
    /// have run: `OutcomeUnknown` on a write, `Unavailable` on a read, never `Internal`.
    #[tokio::test]
    async fn a_reply_channel_dropped_unanswered_is_a_lost_connection() {
        // Made the way fred makes it: from the receiver of a dropped sender.
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        drop(tx);
        let dropped = FredError::from(rx.await.unwrap_err());
        assert_eq!(dropped.details(), REPLY_DROPPED);
        let t = Duration::from_millis(5);
        assert_eq!(
            Error::from_driver("x", Access::Write, t, dropped.clone()).kind(),
            ErrorKind::OutcomeUnknown
        );
        assert_eq!(
            Error::from_driver("x", Access::Read, t, dropped).kind(),
            ErrorKind::Unavailable
        );
    }

    #[test]
    fn lost_reply_on_a_write_is_outcome_unknown_and_on_a_read_unavailable() {
        let lost = || FredError::new(K::IO, "Connection closed.");
        let t = Duration::from_millis(5);
        assert_eq!(
            Error::from_driver("x", Access::Write, t, lost()).kind(),
            ErrorKind::OutcomeUnknown
        );
        assert_eq!(
            Error::from_driver("x", Access::Read, t, lost()).kind(),
            ErrorKind::Unavailable
        );
        let timeout = || FredError::new(K::Timeout, "Request timed out.");
        assert_eq!(
            Error::from_driver("x", Access::Read, t, timeout()).kind(),
            ErrorKind::Timeout
        );
        assert_eq!(
            Error::from_driver("x", Access::Write, t, timeout()).kind(),
            ErrorKind::OutcomeUnknown
        );
        // Refusals prove the command did not run: Unavailable, never OutcomeUnknown.
        for refused in [
            "LOADING loading",
            "OOM command not allowed",
            "TRYAGAIN later",
        ] {
            let e = FredError::new(K::Unknown, refused);
            assert_eq!(
                Error::from_driver("x", Access::Write, t, e).kind(),
                ErrorKind::Unavailable,
                "{refused}"
            );
        }
    }

    #[test]
    fn retry_after_is_given_only_by_refusals_that_say_it() {
        let d = Duration::from_millis(250);
        assert_eq!(Error::Throttled { retry_after: d }.retry_after(), Some(d));
        assert_eq!(Error::CircuitOpen { retry_after: d }.retry_after(), Some(d));
        assert_eq!(Error::unavailable("x").retry_after(), None);
        assert_eq!(Error::validation("f", "bad").retry_after(), None);
    }

    #[test]
    fn retryability() {
        assert!(Error::unavailable("x").is_retryable());
        assert!(!Error::OutcomeUnknown {
            op: "x".into(),
            source: None
        }
        .is_retryable());
        assert!(!Error::validation("f", "bad").is_retryable());
    }
}

//! What one supervisor's actors share: the core [`Runtime`] (every resource, the pool, the
//! lease registry, the shutdown gate) and the few things only the actor tree needs.
//!
//! The supervisor builds one [`Shared`] before it spawns anything and hands it to every child
//! incarnation and to the [`ForzeHandle`](crate::ForzeHandle). A restarted child therefore
//! resumes: the state lives here, not in the actor that failed.

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;

use forze_redis::runtime::Runtime;
use forze_redis::{Config, Result};

use crate::names::ActorNames;
use crate::reply::RequestTasks;

/// The runtime of one supervisor and what its actors add to it.
#[derive(Debug)]
pub struct Shared {
    pub(crate) runtime: Runtime,
    pub(crate) names: ActorNames,
    /// Tasks spawned on behalf of callers (message requests, lease renewals); drained at
    /// shutdown.
    pub(crate) tasks: RequestTasks,
    pub(crate) pool_stats: PoolCounters,
    pub(crate) tracking_stats: TrackingCounters,
}

impl std::ops::Deref for Shared {
    type Target = Runtime;
    fn deref(&self) -> &Runtime {
        &self.runtime
    }
}

/// Connection events counted by the pool actor; they survive its restarts.
#[derive(Debug, Default)]
pub(crate) struct PoolCounters {
    pub(crate) reconnects: AtomicU64,
    pub(crate) connection_errors: AtomicU64,
    pub(crate) probes: AtomicU64,
    pub(crate) probe_failures: AtomicU64,
    pub(crate) state_changes: AtomicU64,
}

/// Events of the tracking subscriber, counted across its restarts.
#[derive(Debug, Default)]
pub(crate) struct TrackingCounters {
    pub(crate) confirmations: AtomicU64,
    pub(crate) losses: AtomicU64,
    pub(crate) connect_failures: AtomicU64,
    pub(crate) invalidated_keys: AtomicU64,
    pub(crate) server_flushes: AtomicU64,
    pub(crate) topology_changes: AtomicU64,
    pub(crate) primaries: AtomicU64,
    pub(crate) confirmed: AtomicBool,
    /// Set by the first incarnation.
    pub(crate) started: AtomicBool,
    /// Fault drills: the next tracking reader to tick panics.
    #[cfg(feature = "fault-injection")]
    pub(crate) panic_a_reader: AtomicBool,
}

impl Shared {
    /// Validate `config` and build the runtime. Connects nothing yet.
    pub(crate) fn build(config: Config) -> Result<Arc<Self>> {
        let names = ActorNames::new(config.supervision.name_prefix.clone());
        Ok(Arc::new(Shared {
            runtime: Runtime::build(config)?,
            names,
            tasks: RequestTasks::default(),
            pool_stats: PoolCounters::default(),
            tracking_stats: Default::default(),
        }))
    }
}

/// The arguments (and state) of an actor that hosts one resource: the supervisor's shared
/// state and the resource's handle.
#[derive(Debug, Clone)]
pub struct ResourceArgs<T> {
    pub(crate) shared: Arc<Shared>,
    pub(crate) resource: T,
}

//! Black-holed connections found and replaced.
//!
//! A connection can stay up while nothing comes back on it (a peer gone without a reset, a
//! middlebox dropping the flow): every command on it would time out until the kernel gives
//! up. fred has a detector of its own, but it costs every connection task a tokio timer
//! built and dropped on each turn (5–10 % of the pool's throughput at 64 callers,
//! `benches/settings.rs`), and it measures from the connection's latest write, so under
//! steady traffic it never fires. It is off; this is its replacement.
//!
//! Any command that times out (a read, a write, a health probe) makes the pool's clients
//! suspect: each connection of each connected client is sent a `PING` bounded by
//! `unresponsive_timeout`, and a client with a `PING` unanswered that long is reconnected
//! (`force_reconnection`). A healthy connection answers at once; a check of a client runs at
//! most once at a time, and a client stays checked until its forced reconnect is done, so
//! timeouts meanwhile queue no second one. Nothing here runs on a call's path: a call that
//! timed out only spawns the checks. The `[redis]` pool's idle connections are covered by the
//! health probe, which times out like any command.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fred::clients::Client;
use fred::interfaces::{ClientLike, ClusterInterface};
use fred::types::config::{Options, Server};

/// Checks the pool's clients after a timeout and reconnects the unresponsive ones.
#[derive(Debug)]
pub(crate) struct UnresponsiveCheck {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    clients: Vec<Client>,
    /// One flag per client: a check of it (or its forced reconnect) is running.
    checking: Box<[AtomicBool]>,
    /// How long a `PING` may go unanswered.
    timeout: Duration,
    /// The pool's `quit` flag: no reconnect is forced once it is set.
    quitting: Arc<Mutex<bool>>,
    checks: AtomicU64,
    reconnects: AtomicU64,
}

impl UnresponsiveCheck {
    /// A check of `clients`, whose `PING`s may go unanswered for `timeout`; nothing is
    /// reconnected once `quitting` holds `true`.
    pub(crate) fn new(clients: &[Client], timeout: Duration, quitting: Arc<Mutex<bool>>) -> Self {
        UnresponsiveCheck {
            shared: Arc::new(Shared {
                clients: clients.to_vec(),
                checking: clients.iter().map(|_| AtomicBool::new(false)).collect(),
                timeout,
                quitting,
                checks: AtomicU64::new(0),
                reconnects: AtomicU64::new(0),
            }),
        }
    }

    /// A command timed out: check every connected client not already being checked, in the
    /// background. Does nothing outside a tokio runtime.
    pub(crate) fn suspect(&self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        for (index, client) in self.shared.clients.iter().enumerate() {
            if !client.is_connected() || self.shared.checking[index].swap(true, Ordering::AcqRel) {
                continue;
            }
            self.shared.checks.fetch_add(1, Ordering::Relaxed);
            // Made before the task, so the flag is cleared however the task ends, even if the
            // runtime drops it before its first poll.
            let running = Running {
                shared: self.shared.clone(),
                index,
            };
            runtime.spawn(async move {
                running.shared.check(running.index).await;
                drop(running);
            });
        }
    }

    /// Clients checked after a timeout.
    pub(crate) fn checks(&self) -> u64 {
        self.shared.checks.load(Ordering::Relaxed)
    }

    /// Reconnects requested because a `PING` went unanswered for the timeout.
    pub(crate) fn reconnects(&self) -> u64 {
        self.shared.reconnects.load(Ordering::Relaxed)
    }
}

/// Clears a client's "being checked" flag when dropped.
struct Running {
    shared: Arc<Shared>,
    index: usize,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shared.checking[self.index].store(false, Ordering::Release);
    }
}

impl Shared {
    async fn check(&self, index: usize) {
        let client = &self.clients[index];
        let Some(server) = self.unanswered(client).await else {
            return;
        };
        if *self.quitting.lock().unwrap_or_else(|p| p.into_inner()) {
            return;
        }
        self.reconnects.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            client = index,
            server = server.as_ref().map(ToString::to_string),
            timeout = ?self.timeout,
            "redis connection unresponsive; reconnecting"
        );
        // Awaited to the end (fred answers once the client is connected again, or fails
        // when its connection task ends): the client stays checked meanwhile, so no second
        // forced reconnect is queued behind this one to cut the new connection.
        if let Err(e) = client.force_reconnection().await {
            tracing::debug!(error = %e, "forced reconnect failed");
        }
    }

    /// The first of `client`'s connections whose `PING` went unanswered for the timeout
    /// (`Some(None)`: the client's only connection).
    async fn unanswered(&self, client: &Client) -> Option<Option<Server>> {
        let targets = ping_targets(client);
        let pings = targets.iter().map(|server| {
            let options = Options {
                timeout: Some(self.timeout),
                max_attempts: Some(1),
                fail_fast: true,
                cluster_node: server.clone(),
                ..Default::default()
            };
            let client = client.with_options(&options);
            async move { client.ping::<fred::types::Value>(None).await }
        });
        let results = futures::future::join_all(pings).await;
        targets
            .into_iter()
            .zip(results)
            .find(|(_, r)| matches!(r, Err(e) if *e.kind() == fred::error::ErrorKind::Timeout))
            .map(|(server, _)| server)
    }
}

/// Where to send the `PING`s: off a cluster, the client's one connection (`None`: no
/// routing); on a cluster, each primary it routes to. The cluster's list comes from the
/// cached slot map, not fred's list of open connections, which leaves out a connection whose
/// `CLIENT ID` was refused (an ACL user without it, a renamed command).
fn ping_targets(client: &Client) -> Vec<Option<Server>> {
    if !client.is_clustered() {
        return vec![None];
    }
    let mut nodes = client
        .cached_cluster_state()
        .map(|state| state.unique_primary_nodes())
        .unwrap_or_default();
    if nodes.is_empty() {
        nodes = client.active_connections();
    }
    if nodes.is_empty() {
        return vec![None];
    }
    nodes.into_iter().map(Some).collect()
}

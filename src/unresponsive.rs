//! Black-holed connections found and replaced.
//!
//! A connection can stay up while nothing comes back on it (a peer gone without a reset, a
//! middlebox dropping the flow): every command on it would time out until the kernel gives
//! up. fred has a detector of its own, but it costs every connection task a tokio timer
//! registered and dropped on each turn (about 5–8 % of the pool's throughput at 64 callers,
//! measured in `docs/performance.md`), and it measures from the connection's latest write,
//! so under steady traffic it never fires. It is off; this is its replacement.
//!
//! Any command that times out (a read, a write, a health probe) makes the pool's clients
//! suspect: each connection of each connected client is sent a `PING` bounded by
//! `unresponsive_timeout`, and a client with a `PING` unanswered that long is reconnected
//! (`force_reconnection`). A healthy connection answers at once; a check of a client runs at
//! most once at a time. Nothing here runs on a call's path: a call that timed out only spawns
//! the checks. Idle connections are covered by the health probe, which times out like any
//! command on a black-holed connection.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fred::clients::Client;
use fred::interfaces::ClientLike;
use fred::types::config::Options;

/// Checks the pool's clients after a timeout and reconnects the unresponsive ones.
#[derive(Debug)]
pub(crate) struct UnresponsiveCheck {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    clients: Vec<Client>,
    /// One flag per client: a check of it is running.
    checking: Box<[AtomicBool]>,
    /// How long a `PING` may go unanswered, and how long a reconnect may take to be handed to
    /// the connection task.
    timeout: Duration,
    reconnect_timeout: Duration,
    reconnects: AtomicU64,
}

impl UnresponsiveCheck {
    /// A check of `clients`, whose `PING`s may go unanswered for `timeout`.
    pub(crate) fn new(clients: &[Client], timeout: Duration, reconnect_timeout: Duration) -> Self {
        UnresponsiveCheck {
            shared: Arc::new(Shared {
                clients: clients.to_vec(),
                checking: clients.iter().map(|_| AtomicBool::new(false)).collect(),
                timeout,
                reconnect_timeout,
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
            let shared = self.shared.clone();
            runtime.spawn(async move {
                // Cleared however the check ends (also if the runtime drops it).
                let _running = Running(&shared.checking[index]);
                shared.check(index).await;
            });
        }
    }

    /// Clients reconnected because a `PING` went unanswered for the timeout.
    pub(crate) fn reconnects(&self) -> u64 {
        self.shared.reconnects.load(Ordering::Relaxed)
    }
}

/// Clears a client's "being checked" flag when dropped.
struct Running<'a>(&'a AtomicBool);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl Shared {
    async fn check(&self, index: usize) {
        let client = &self.clients[index];
        let Some(server) = self.unanswered(client).await else {
            return;
        };
        self.reconnects.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            client = index,
            %server,
            timeout = ?self.timeout,
            "redis connection unresponsive; reconnecting"
        );
        // Bounded: the request goes through the connection task, which may be busy.
        match tokio::time::timeout(self.reconnect_timeout, client.force_reconnection()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "forced reconnect failed"),
            Err(_) => tracing::debug!("forced reconnect not done in time"),
        }
    }

    /// The first of `client`'s connections whose `PING` went unanswered for the timeout.
    async fn unanswered(&self, client: &Client) -> Option<fred::types::config::Server> {
        let clustered = client.is_clustered();
        let servers = client.active_connections();
        let pings = servers.iter().map(|server| {
            let options = Options {
                timeout: Some(self.timeout),
                max_attempts: Some(1),
                fail_fast: true,
                cluster_node: clustered.then(|| server.clone()),
                ..Default::default()
            };
            let client = client.with_options(&options);
            async move { client.ping::<fred::types::Value>(None).await }
        });
        let results = futures::future::join_all(pings).await;
        servers
            .into_iter()
            .zip(results)
            .find(|(_, r)| matches!(r, Err(e) if *e.kind() == fred::error::ErrorKind::Timeout))
            .map(|(server, _)| server)
    }
}

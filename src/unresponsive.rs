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
//!
//! A reconnect does not always cure: new connections to a frozen process or a busy server open
//! (the kernel completes the handshake) and stay as silent as the old ones. Each such client
//! would be reconnected again once per `command_timeout + unresponsive_timeout`, and on a
//! cluster a reconnect re-opens every node's connection, so a single silent node would keep
//! interrupting the healthy ones. After a forced reconnect a client is not checked again for a
//! pause, `unresponsive_timeout` at first, doubled after each further forced reconnect, up to
//! [`MAX_PAUSE`]; the pauses start over once the client has gone a whole longest pause without
//! one.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fred::clients::Client;
use fred::interfaces::{ClientLike, ClusterInterface};
use fred::types::config::{Options, Server};

/// The longest pause between two forced reconnects of one client (or `unresponsive_timeout`,
/// if longer).
pub(crate) const MAX_PAUSE: Duration = Duration::from_secs(30);

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
    /// One per client: when it may be checked again after a forced reconnect.
    pauses: Box<[Mutex<Pause>]>,
    /// The longest pause.
    max_pause: Duration,
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
                pauses: clients.iter().map(|_| Mutex::default()).collect(),
                max_pause: MAX_PAUSE.max(timeout),
                timeout,
                quitting,
                checks: AtomicU64::new(0),
                reconnects: AtomicU64::new(0),
            }),
        }
    }

    /// A command timed out: check every connected client not already being checked nor
    /// pausing after a forced reconnect, in the background. Does nothing outside a tokio
    /// runtime.
    pub(crate) fn suspect(&self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let now = Instant::now();
        for (index, client) in self.shared.clients.iter().enumerate() {
            if !client.is_connected()
                || self.shared.pause(index).pausing(now)
                || self.shared.checking[index].swap(true, Ordering::AcqRel)
            {
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
    fn pause(&self, index: usize) -> std::sync::MutexGuard<'_, Pause> {
        self.pauses[index].lock().unwrap_or_else(|p| p.into_inner())
    }

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
        // The pause counts from the end of the reconnect, however long it took.
        self.pause(index)
            .after_reconnect(Instant::now(), self.timeout, self.max_pause);
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

/// When a client may be checked again after its latest forced reconnect.
#[derive(Debug, Default)]
struct Pause {
    /// The end of the current pause (`None`: never reconnected by the check).
    until: Option<Instant>,
    /// The current pause's length.
    length: Duration,
}

impl Pause {
    fn pausing(&self, now: Instant) -> bool {
        self.until.is_some_and(|until| now < until)
    }

    /// A forced reconnect ended at `now`: the first pause is `first`; one that follows the
    /// previous pause by less than `max` is twice that pause (at most `max`).
    fn after_reconnect(&mut self, now: Instant, first: Duration, max: Duration) {
        let in_a_row = self
            .until
            .is_some_and(|until| now.saturating_duration_since(until) < max);
        self.length = if in_a_row {
            self.length.saturating_mul(2).min(max)
        } else {
            first.min(max)
        };
        self.until = Some(now + self.length);
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

#[cfg(test)]
mod tests {
    use super::*;

    const FIRST: Duration = Duration::from_secs(2);
    const MAX: Duration = Duration::from_secs(30);

    #[test]
    fn pauses_double_while_reconnects_come_in_a_row_and_start_over_after_a_quiet_spell() {
        let start = Instant::now();
        let mut pause = Pause::default();
        assert!(!pause.pausing(start), "never reconnected: no pause");

        pause.after_reconnect(start, FIRST, MAX);
        assert!(pause.pausing(start + FIRST - Duration::from_millis(1)));
        assert!(!pause.pausing(start + FIRST));

        // Each reconnect right after the previous pause ended doubles the pause, up to MAX.
        let mut now = start;
        let mut lengths = Vec::new();
        for _ in 0..6 {
            now = pause.until.unwrap() + Duration::from_millis(100);
            pause.after_reconnect(now, FIRST, MAX);
            lengths.push(pause.length.as_secs());
        }
        assert_eq!(lengths, [4, 8, 16, 30, 30, 30]);

        // A whole longest pause without a forced reconnect: the next pause is the first again.
        let later = pause.until.unwrap() + MAX;
        assert!(!pause.pausing(later));
        pause.after_reconnect(later, FIRST, MAX);
        assert_eq!(pause.length, FIRST);
        assert!(now < later);
    }

    #[test]
    fn a_first_pause_longer_than_the_longest_is_cut_to_it() {
        let now = Instant::now();
        let mut pause = Pause::default();
        pause.after_reconnect(now, Duration::from_secs(60), MAX);
        assert_eq!(pause.until, Some(now + MAX));
    }
}

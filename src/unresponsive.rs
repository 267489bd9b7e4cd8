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
//! A cluster client is not reconnected. fred's reconnect of a cluster client only refreshes
//! its slot map: it keeps every connection that has not failed, the silent one included, and
//! marks the whole client as connecting meanwhile. Any refresh of fred 10.1 also blocks the
//! client's command loop while it opens a connection to the first node in address order
//! (to read `CLUSTER SLOTS`), up to `connect_timeout` for each silent node it tries first:
//! every call on every node waits. What a refresh can cure on a cluster is a silent primary
//! whose slots moved: failed over to its replica, whose slots then route to the new primary
//! (fred closes the old connection). So the check asks the nodes that answered for their
//! `CLUSTER SLOTS` and refreshes fred's map only when one of them gives a slot the cached map
//! gives the silent primary to another node (another id or address); while the silent primary
//! still owns its slots there is nothing to re-route, and a dead flow is ended by the kernel
//! (`TCP_USER_TIMEOUT`: unacknowledged data), after which fred re-opens it (with
//! `tcp_user_timeout = "0s"`, only when the kernel's retransmissions give up, many minutes
//! later).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fred::clients::Client;
use fred::interfaces::{ClientLike, ClusterInterface};
use fred::types::cluster::{ClusterRouting, SlotRange};
use fred::types::config::{Options, Server};
use fred::types::Value;

/// Checks the pool's clients after a timeout and reconnects the unresponsive ones.
#[derive(Debug)]
pub(crate) struct UnresponsiveCheck {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    clients: Vec<Client>,
    /// One flag per client: a check of it (or its forced reconnect or slot-map refresh) is
    /// running.
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

    /// Reconnects requested because a `PING` went unanswered for the timeout (on a cluster,
    /// slot-map refreshes: a silent node's slots had moved).
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
        let pinged = self.ping(client).await;
        let Some(silent) = pinged.silent else {
            return;
        };
        let quitting = || *self.quitting.lock().unwrap_or_else(|p| p.into_inner());
        if quitting() {
            return;
        }
        let clustered = client.is_clustered();
        let Some(silent) = silent else {
            if clustered {
                // No slot map to route the PINGs by: nothing to compare either.
                tracing::warn!(
                    client = index,
                    "redis cluster client unresponsive; no slot map"
                );
                return;
            }
            self.reconnects.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                client = index,
                timeout = ?self.timeout,
                "redis connection unresponsive; reconnecting"
            );
            // Awaited to the end (fred answers once the client is connected again, or fails
            // when its connection task ends): the client stays checked meanwhile, so no second
            // forced reconnect is queued behind this one to cut the new connection.
            if let Err(e) = client.force_reconnection().await {
                tracing::debug!(error = %e, "forced reconnect failed");
            }
            return;
        };
        // A cluster node: a refresh helps only if its slots moved (see the module's docs).
        let moved = self.slots_moved(client, &silent, &pinged.answering).await;
        if quitting() {
            return;
        }
        match moved {
            Moved::Unknown => tracing::warn!(
                client = index,
                server = %silent,
                timeout = ?self.timeout,
                "redis cluster node unresponsive; no other node told where its slots are"
            ),
            Moved::No => tracing::warn!(
                client = index,
                server = %silent,
                timeout = ?self.timeout,
                "redis cluster node unresponsive; it still owns its slots"
            ),
            Moved::Yes => {
                self.reconnects.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    client = index,
                    server = %silent,
                    "redis cluster node unresponsive and its slots moved; refreshing the slot map"
                );
                // fred retries a refresh that fails (a new owner it cannot reach) with the
                // reconnect policy, for ever by default: the client is released for later
                // checks after a while, though fred's refresh goes on.
                let wait = self.timeout.saturating_mul(10);
                match tokio::time::timeout(wait, client.sync_cluster()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::debug!(error = %e, "slot map refresh failed"),
                    Err(_) => tracing::warn!(
                        client = index,
                        after = ?wait,
                        "redis cluster slot map refresh still running"
                    ),
                }
            }
        }
    }

    /// Options for one of the check's commands: one attempt, bounded by the timeout, sent to
    /// `node` (a cluster node; `None`: unrouted).
    fn options(&self, node: Option<Server>) -> Options {
        Options {
            timeout: Some(self.timeout),
            max_attempts: Some(1),
            fail_fast: true,
            cluster_node: node,
            ..Default::default()
        }
    }

    /// `PING` each of `client`'s connections.
    async fn ping(&self, client: &Client) -> Pinged {
        let targets = ping_targets(client);
        let pings = targets.iter().map(|server| {
            let client = client.with_options(&self.options(server.clone()));
            async move { client.ping::<Value>(None).await }
        });
        let results = futures::future::join_all(pings).await;
        let mut pinged = Pinged::default();
        for (server, result) in targets.into_iter().zip(results) {
            match result {
                Err(e) if *e.kind() == fred::error::ErrorKind::Timeout => {
                    pinged.silent.get_or_insert(server);
                }
                Ok(_) => pinged.answering.extend(server),
                Err(_) => {}
            }
        }
        pinged
    }

    /// Whether a slot that `client`'s map gives to `silent` has another owner in the
    /// `CLUSTER SLOTS` of any of the `answering` nodes (asked together: one whose view is
    /// behind must not hide a failover).
    async fn slots_moved(&self, client: &Client, silent: &Server, answering: &[Server]) -> Moved {
        let Some(cached) = client.cached_cluster_state() else {
            return Moved::Yes;
        };
        let held: Vec<&SlotRange> = cached
            .slots()
            .iter()
            .filter(|r| same_address(&r.primary, silent))
            .collect();
        let asks = answering.iter().map(|node| {
            let asked = client.with_options(&self.options(Some(node.clone())));
            async move {
                let reply = asked.cluster_slots::<Value>().await.ok()?;
                ClusterRouting::from_cluster_slots(reply, node.host.clone()).ok()
            }
        });
        let views = futures::future::join_all(asks).await;
        let mut moved = Moved::Unknown;
        for view in views.iter().flatten() {
            if held.iter().any(|r| moved_away(r, view.slots())) {
                return Moved::Yes;
            }
            moved = Moved::No;
        }
        moved
    }
}

/// What the nodes that answered say of a silent primary's slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Moved {
    /// One of them gives one of its slots to another node.
    Yes,
    /// Every one that answered gives it all of them.
    No,
    /// None answered `CLUSTER SLOTS`.
    Unknown,
}

/// Whether `fresh` gives any slot of `held` to another node (another id or address).
fn moved_away(held: &SlotRange, fresh: &[SlotRange]) -> bool {
    fresh
        .iter()
        .filter(|r| r.start <= held.end && held.start <= r.end)
        .any(|r| r.id != held.id || !same_address(&r.primary, &held.primary))
}

/// The same host and port (the TLS name left out: fred may set it on its own map only).
fn same_address(a: &Server, b: &Server) -> bool {
    a.host == b.host && a.port == b.port
}

/// What the `PING`s of one check found.
#[derive(Debug, Default)]
struct Pinged {
    /// The first connection that left its `PING` unanswered for the timeout (`Some(None)`:
    /// the client's only connection, off a cluster).
    silent: Option<Option<Server>>,
    /// The cluster nodes that answered their `PING`.
    answering: Vec<Server>,
}

/// Where to send the `PING`s: off a cluster, the client's one connection (`None`: no
/// routing); on a cluster, each primary it routes to. The cluster's list comes from the
/// cached slot map, not fred's list of open connections, which leaves out a connection whose
/// `CLIENT ID` was refused (an ACL user without it, a renamed command).
pub(crate) fn ping_targets(client: &Client) -> Vec<Option<Server>> {
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

    fn range(start: u16, end: u16, id: &str, port: u16) -> SlotRange {
        SlotRange {
            start,
            end,
            primary: Server::new("127.0.0.1", port),
            id: id.into(),
        }
    }

    #[test]
    fn a_silent_primarys_slots_count_as_moved_only_when_another_node_owns_one() {
        let held = range(0, 5460, "a", 7000);
        let same = [range(0, 5460, "a", 7000), range(5461, 16383, "b", 7001)];
        assert!(!moved_away(&held, &same), "unchanged");
        let split = [range(0, 100, "a", 7000), range(101, 5460, "a", 7000)];
        assert!(
            !moved_away(&held, &split),
            "split the same way or not, still its"
        );
        let elsewhere = [range(0, 5460, "a", 7000), range(5461, 16383, "c", 7002)];
        assert!(
            !moved_away(&held, &elsewhere),
            "other slots changing is not ours"
        );
        let one_slot = [range(0, 99, "a", 7000), range(100, 100, "b", 7001)];
        assert!(
            moved_away(&held, &one_slot),
            "one slot given to another node"
        );
        let failed_over = [range(0, 5460, "r", 7003)];
        assert!(moved_away(&held, &failed_over), "its replica promoted");
        let new_address = [range(0, 5460, "a", 7100)];
        assert!(
            moved_away(&held, &new_address),
            "the same node at another address"
        );
    }
}

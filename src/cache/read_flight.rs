//! Coalescing of concurrent L1 misses of one key (`[caches.<name>.l1] coalesce_misses`, on by
//! default).
//!
//! The first caller to miss a key reads it from Redis as usual and publishes what it read;
//! callers that miss the same key while that read is in flight wait for it instead of
//! sending their own. A caller joins only if nothing invalidated the key since the read was
//! sent (the same ticket the L1 fill presents), so a joined answer is exactly as current as
//! an L1 fill of that read would be: after a write of this process, a push for the key, a
//! flush or a loss of tracking, a new caller reads on its own. Without a trusted L1 (before
//! tracking is confirmed, or with no L1 at all) nobody joins: there is then no way to know
//! that the read in flight is still current, and a joined answer could predate the caller.
//!
//! The first caller's cancellation strands nobody: its waiters see the read abandoned and
//! read on their own.

use dashmap::DashMap;
use tokio::sync::watch;

use super::codec::Entry;
use super::l1::{FillTicket, L1};
use crate::error::Result;

/// What one read gave: the entry (if found) and its outcome (`hit`, `miss`, `bypassed`).
pub(crate) type SharedRead = Result<(Option<Entry>, &'static str)>;

/// One read in flight: the ticket taken before it was sent, and where its answer appears.
struct Flight {
    ticket: FillTicket,
    done: watch::Receiver<Option<SharedRead>>,
}

/// The single-key reads in flight of one namespace, by L1 key.
#[derive(Default)]
pub(crate) struct ReadFlights {
    flights: DashMap<String, Flight, foldhash::fast::RandomState>,
}

impl std::fmt::Debug for ReadFlights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadFlights")
            .field("in_flight", &self.flights.len())
            .finish()
    }
}

/// A caller's part in the read of one key.
pub(crate) enum Role<'a> {
    /// Reads and publishes through the guard.
    Leader(LeaderGuard<'a>),
    /// Waits for the leader's read.
    Follower(watch::Receiver<Option<SharedRead>>),
    /// Reads on its own: the L1 is untrusted.
    Alone,
}

impl ReadFlights {
    /// This caller's role for `l1_key`: a follower of a current read in flight, else the
    /// leader of a new one (replacing a flight an invalidation made stale, so the reads
    /// after it coalesce again at once), or alone while the L1 is untrusted.
    pub(crate) fn join<'a>(&'a self, l1: &L1, l1_key: &str) -> Role<'a> {
        if let Some(flight) = self.flights.get(l1_key) {
            if l1.ticket_is_current(&flight.ticket) {
                return Role::Follower(flight.done.clone());
            }
        }
        // Taken before the read is sent, like the fill's own ticket.
        let Some(ticket) = l1.ticket(l1_key) else {
            return Role::Alone;
        };
        let (publish, done) = watch::channel(None);
        let flight = Flight {
            ticket,
            done: done.clone(),
        };
        match self.flights.entry(l1_key.to_owned()) {
            dashmap::Entry::Occupied(mut current) => {
                if l1.ticket_is_current(&current.get().ticket) {
                    return Role::Follower(current.get().done.clone());
                }
                // Its leader's guard removes only its own flight, never this one.
                current.insert(flight);
            }
            dashmap::Entry::Vacant(slot) => {
                slot.insert(flight);
            }
        }
        Role::Leader(LeaderGuard {
            flights: self,
            key: l1_key.to_owned(),
            publish,
            done,
        })
    }
}

/// What a follower waits for: the leader's answer, or `None` if the leader gave up.
pub(crate) async fn wait(mut done: watch::Receiver<Option<SharedRead>>) -> Option<SharedRead> {
    match done.wait_for(Option::is_some).await {
        Ok(read) => read.clone(),
        Err(_) => None,
    }
}

/// The leader's hold on its flight: publishes the answer, and leaves the table however the
/// read ends.
pub(crate) struct LeaderGuard<'a> {
    flights: &'a ReadFlights,
    key: String,
    publish: watch::Sender<Option<SharedRead>>,
    done: watch::Receiver<Option<SharedRead>>,
}

impl LeaderGuard<'_> {
    /// Hand `read` to every follower.
    pub(crate) fn publish(&self, read: &SharedRead) {
        self.publish.send_replace(Some(read.clone()));
    }
}

impl Drop for LeaderGuard<'_> {
    fn drop(&mut self) {
        // Only this flight's entry: a later flight of the same key is not ours to remove.
        self.flights
            .flights
            .remove_if(&self.key, |_, f| f.done.same_channel(&self.done));
    }
}

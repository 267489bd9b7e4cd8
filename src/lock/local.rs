//! Embedded mode's locks: the same contract within one process. Tokens follow the same rule
//! as on Redis, `max(last + 1, wall clock in µs)`, with the process's clock.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;

use super::Attempt;
use crate::sweep::Sweeper;
use crate::time::after;

#[derive(Debug, Clone)]
struct Held {
    owner: String,
    token: u64,
    expires: Instant,
}

/// In-process locks, shared by every incarnation of the actors.
#[derive(Debug, Clone, Default)]
pub struct LocalLockStore {
    held: Arc<DashMap<String, Held>>,
    fences: Arc<DashMap<String, u64>>,
    /// Sweeps out expired leases (a lease nobody releases expires, as its key does on Redis,
    /// and must not stay in memory).
    sweeper: Arc<Sweeper>,
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

impl LocalLockStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Take `key` for `owner` if free (or already `owner`'s).
    pub fn acquire(&self, key: &str, owner: &str, lease: Duration) -> Attempt {
        let now = Instant::now();
        self.sweeper.sweep(&self.held, |_, h| h.expires > now);
        let mut entry = self.held.entry(key.to_string()).or_insert(Held {
            owner: String::new(),
            token: 0,
            expires: now,
        });
        if entry.expires > now {
            return if entry.owner == owner {
                Attempt::Taken(entry.token)
            } else {
                Attempt::Held(Some(entry.expires - now))
            };
        }
        let mut fence = self.fences.entry(key.to_string()).or_insert(0);
        let token = (*fence + 1).max(now_micros());
        *fence = token;
        *entry = Held {
            owner: owner.to_string(),
            token,
            expires: after(now, lease),
        };
        Attempt::Taken(token)
    }

    /// Release `key` if `owner` holds it.
    pub fn release(&self, key: &str, owner: &str) -> bool {
        let now = Instant::now();
        self.held
            .remove_if(key, |_, h| h.owner == owner && h.expires > now)
            .is_some()
    }

    /// Renew `key` if `owner` holds it.
    pub fn extend(&self, key: &str, owner: &str, lease: Duration) -> bool {
        let now = Instant::now();
        match self.held.get_mut(key) {
            Some(mut h) if h.owner == owner && h.expires > now => {
                h.expires = after(now, lease);
                true
            }
            _ => false,
        }
    }

    /// The holder of `key` and its token.
    pub fn holder(&self, key: &str) -> Option<(String, u64)> {
        let now = Instant::now();
        self.held
            .get(key)
            .filter(|h| h.expires > now)
            .map(|h| (h.owner.clone(), h.token))
    }

    /// The remaining lease of `key`.
    pub fn ttl(&self, key: &str) -> Option<Duration> {
        let now = Instant::now();
        self.held
            .get(key)
            .filter(|h| h.expires > now)
            .map(|h| h.expires - now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sweep::MIN_SWEEP;

    #[test]
    fn leases_nobody_releases_do_not_stay_in_memory() {
        let store = LocalLockStore::new();
        for round in 0..20 {
            for i in 0..1000 {
                let key = format!("k{round}-{i}");
                assert!(matches!(
                    store.acquire(&key, "o", Duration::from_millis(1)),
                    Attempt::Taken(_)
                ));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        // 20 000 leases taken, each expired within a round: at most the live ones since the
        // last sweep are left, never all of them.
        assert!(store.held.len() <= 2 * MIN_SWEEP, "{}", store.held.len());
        // A live lease survives a sweep.
        assert!(matches!(
            store.acquire("kept", "o", Duration::from_secs(60)),
            Attempt::Taken(_)
        ));
        for i in 0..3 * MIN_SWEEP {
            store.acquire(&format!("x{i}"), "o", Duration::from_millis(1));
        }
        assert_eq!(store.holder("kept").map(|(o, _)| o).as_deref(), Some("o"));
    }
}

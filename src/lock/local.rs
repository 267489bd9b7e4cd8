//! Embedded mode's locks: the same contract within one process. Tokens follow the same rule
//! as on Redis, `max(last + 1, wall clock in µs)`, with the process's clock.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;

use super::Attempt;

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
            expires: now + lease,
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
                h.expires = now + lease;
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

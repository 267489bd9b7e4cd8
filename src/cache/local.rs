//! The process-local cache store: embedded mode's backend, with the same contract as Redis
//! (deadlines, sliding that only extends, versioned writes that never go back).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;

use super::codec;
use super::one_or_many::OneOrMany;
use super::redis::{Read, WriteMode};
use crate::time::after;

#[derive(Debug, Clone)]
struct Stored {
    bytes: Bytes,
    deadline: Instant,
}

/// Cache entries in process memory, shared by every incarnation of the cache actor.
#[derive(Debug, Clone, Default)]
pub struct LocalCacheStore {
    map: Arc<DashMap<String, Stored>>,
}

impl LocalCacheStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Read `keys`; see [`RedisCacheStore::read`](super::redis::RedisCacheStore::read).
    pub fn read(&self, keys: &[&str], slide: Option<Duration>) -> OneOrMany<Read> {
        let now = Instant::now();
        keys.iter()
            .map(|key| {
                let mut read = Read::default();
                let expired = match self.map.get_mut(*key) {
                    Some(mut s) if s.deadline > now => {
                        if let Some(slide) = slide {
                            s.deadline = s.deadline.max(after(now, slide));
                        }
                        read.stored = Some(s.bytes.clone());
                        read.pttl = Some(s.deadline - now);
                        false
                    }
                    Some(_) => true,
                    None => false,
                };
                if expired {
                    self.map.remove_if(*key, |_, s| s.deadline <= now);
                }
                read
            })
            .collect()
    }

    /// Write each entry with `ttl`.
    pub fn write(&self, entries: &[(&str, Bytes)], ttl: Duration, mode: WriteMode) {
        let now = Instant::now();
        let deadline = after(now, ttl);
        for (key, bytes) in entries {
            let stored = Stored {
                bytes: bytes.clone(),
                deadline,
            };
            match self.map.entry(key.to_string()) {
                dashmap::Entry::Occupied(o)
                    if mode == WriteMode::IfAbsent && o.get().deadline > now => {}
                dashmap::Entry::Occupied(mut o) => {
                    o.insert(stored);
                }
                dashmap::Entry::Vacant(v) => {
                    v.insert(stored);
                }
            }
        }
    }

    /// Write a versioned entry unless a newer version is stored.
    pub fn write_versioned(&self, key: &str, stored: Bytes, version: u64, ttl: Duration) -> bool {
        let now = Instant::now();
        let mut entry = self.map.entry(key.to_string()).or_insert(Stored {
            bytes: Bytes::new(),
            deadline: now,
        });
        let current = (entry.deadline > now)
            .then(|| codec::decode(entry.bytes.clone()).and_then(|e| e.version))
            .flatten();
        if current.is_some_and(|c| c > version) {
            return false;
        }
        *entry = Stored {
            bytes: stored,
            deadline: after(now, ttl),
        };
        true
    }

    /// Remove `keys`; how many existed.
    pub fn remove(&self, keys: &[&str]) -> u64 {
        let now = Instant::now();
        keys.iter()
            .filter(|k| self.map.remove(**k).is_some_and(|(_, s)| s.deadline > now))
            .count() as u64
    }

    /// Whether `key` exists.
    pub fn exists(&self, key: &str) -> bool {
        let now = Instant::now();
        self.map.get(key).is_some_and(|s| s.deadline > now)
    }
}

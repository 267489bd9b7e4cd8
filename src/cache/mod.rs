//! Caches: one [`Cache`] per configured namespace, on Redis (with an optional in-process L1
//! kept coherent by client-side caching) or on process-local state in embedded mode.
//!
//! | module | what lives there |
//! |---|---|
//! | [`codec`] | the stored form: marker, flags, version, payload in one string |
//! | [`l1`] | the in-process L1: bounds, deadlines, race-safe fills, trust |
//! | `deadline` | the L1's entry deadlines, checked on every hit by a coarse clock first |
//! | [`redis`] | the Redis store: pipelined reads and writes, the versioned-write script |
//! | [`local`] | the process-local store for embedded mode |
//!
//! # Contract
//! - Values are serde values (JSON) or raw bytes that round-trip exactly.
//! - `get` misses cleanly on a missing, expired or corrupt entry (corrupt ones are counted);
//!   a batch never fails because of one corrupt entry.
//! - Reads fail open: while Redis is unreachable they miss (counted as `bypassed`). Writes
//!   return `Unavailable` (or `OutcomeUnknown` when the reply was lost).
//! - A versioned entry is one string: readers never see a torn version, and a versioned write
//!   never replaces a newer version (it reports `false` instead).
//! - Read-your-own-writes: a write or delete evicts the key from this process's L1 before
//!   and after it is sent, so the next read on this replica goes to Redis.
//! - `get_or_load` runs the loader once per key per process at a time; concurrent callers
//!   wait for that load and share its result.

pub mod codec;
pub mod l1;
pub mod local;
mod one_or_many;
mod read_flight;
pub mod redis;

use std::cell::RefCell;
use std::future::Future;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::watch;

use crate::config::CacheConfig;
use crate::error::{Error, ErrorKind, LoaderError, Result};
use crate::gate::Gate;
use crate::keys::{key_tenant, push_escaped, unescape_part, KeySpace, TenantId};
use crate::pooled::pooled_with;
use crate::routing::{destination, Destination, Router};
use crate::striped::StripedCounter;
use codec::Entry;
use l1::{FlushReason, L1Stats, L1};
use local::LocalCacheStore;
use one_or_many::OneOrMany;
use redis::{RedisCacheStore, WriteMode};

/// The key of one cache entry: the caller's key and, for tenant-aware namespaces, the tenant.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    tenant: Option<TenantId>,
    key: String,
}

impl CacheKey {
    /// A key without tenant.
    pub fn new(key: impl Into<String>) -> Self {
        CacheKey {
            tenant: None,
            key: key.into(),
        }
    }

    /// The same key for `tenant`.
    pub fn for_tenant(mut self, tenant: TenantId) -> Self {
        self.tenant = Some(tenant);
        self
    }

    /// The caller's key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The tenant, if any.
    pub fn tenant(&self) -> Option<&TenantId> {
        self.tenant.as_ref()
    }
}

impl From<&str> for CacheKey {
    fn from(key: &str) -> Self {
        CacheKey::new(key)
    }
}

impl From<String> for CacheKey {
    fn from(key: String) -> Self {
        CacheKey::new(key)
    }
}

#[derive(Debug, Default)]
struct Counters {
    /// Keys read from the store (L1 hits are counted by the L1). This and the next two are
    /// bumped by every remote read: per thread (see [`StripedCounter`]).
    remote_reads: StripedCounter,
    hits: StripedCounter,
    misses: StripedCounter,
    corrupt: AtomicU64,
    bypassed: AtomicU64,
    writes: AtomicU64,
    errors: AtomicU64,
    loads: AtomicU64,
    load_waits: AtomicU64,
    coalesced: AtomicU64,
}

/// A copy of one namespace's statistics.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct CacheStats {
    /// Keys read (a batch counts each key).
    pub reads: u64,
    /// Keys found, in the L1 or in Redis.
    pub hits: u64,
    /// Keys not found (missing, expired, corrupt or bypassed).
    pub misses: u64,
    /// Stored values that did not decode; read as misses.
    pub corrupt: u64,
    /// Reads that missed because Redis could not be reached (fail-open).
    pub bypassed: u64,
    /// Keys written or deleted.
    pub writes: u64,
    /// Operations that returned an error.
    pub errors: u64,
    /// Loader runs of `get_or_load`.
    pub loads: u64,
    /// `get_or_load` callers that waited for another caller's load.
    pub load_waits: u64,
    /// Reads answered by another caller's read of the same key in flight
    /// (`coalesce_misses`); counted in `reads`, and in `hits` or `misses`.
    pub reads_coalesced: u64,
    /// The L1's statistics; `None` when the namespace has no L1.
    pub l1: Option<L1Stats>,
    /// How the L1 is kept coherent: `"tracking"`, or `"none"` without an L1.
    pub coherence: &'static str,
}

enum Store {
    Redis(RedisCacheStore),
    Local(LocalCacheStore),
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Store::Redis(_) => "Redis",
            Store::Local(_) => "Local",
        })
    }
}

type LoadResult = Option<std::result::Result<Bytes, Error>>;

/// How fresh an answer of [`Cache::get_with_freshness`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Freshness {
    /// From the L1 while tracking keeps it coherent, or from Redis.
    Fresh,
    /// Kept aside when tracking was lost, served because Redis cannot be reached now. `age`
    /// is how long ago coherence was lost: the value may have changed since.
    Stale {
        /// Time since the loss of tracking.
        age: Duration,
    },
}

/// A value and its freshness.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheRead<T> {
    /// The value.
    pub value: T,
    /// Whether it is known current.
    pub freshness: Freshness,
}

impl<T> CacheRead<T> {
    fn fresh(value: T) -> Self {
        CacheRead {
            value,
            freshness: Freshness::Fresh,
        }
    }

    /// Whether the value is known current.
    pub fn is_fresh(&self) -> bool {
        self.freshness == Freshness::Fresh
    }
}

/// One cache namespace: the handle users call from any task. Cheap to clone (every clone
/// shares the same L1, statistics and single-flight table); see the module docs for the
/// contract and `docs/cache.md` for the guarantees.
///
/// Every method runs on the caller's task: an L1 hit is a map lookup, a miss goes to Redis
/// through a clone of the pool. Nothing waits on an actor's mailbox. After shutdown has begun
/// every operation returns `Unavailable`.
#[derive(Debug, Clone)]
pub struct Cache(Arc<CacheState>);

#[doc(hidden)]
impl std::ops::Deref for Cache {
    type Target = CacheState;
    fn deref(&self) -> &CacheState {
        &self.0
    }
}

/// What every clone of one [`Cache`] shares.
#[doc(hidden)]
#[derive(Debug)]
pub struct CacheState {
    /// Spans and metrics of every operation.
    pub(crate) telemetry: crate::telemetry::Telemetry,
    /// Reads served by the L1 (operation `cache.read`, outcome `l1_hit`): registered once,
    /// counted without a span or a timer.
    l1_hits: crate::telemetry::OutcomeCounter,
    /// Stale answers of `get_with_freshness` (operation `cache.read`, outcome `stale`).
    stale_served: crate::telemetry::OutcomeCounter,
    gate: Gate,
    name: String,
    space: KeySpace,
    tenant_aware: bool,
    ttl: Duration,
    sliding_ttl: Option<Duration>,
    store: Store,
    l1: Option<Arc<L1>>,
    /// Set for `routed = true`: each tenant's entries go to its endpoint.
    router: Option<Arc<Router>>,
    counters: Counters,
    inflight: DashMap<String, watch::Receiver<LoadResult>>,
    /// Writes and deletes through this handle, counted per stripe of keys: a `get_or_load`
    /// that sees its key's stripe move while it loads does not store its (older) value.
    written: Box<[AtomicU64]>,
    written_hasher: foldhash::fast::RandomState,
    /// Set with an L1 and `coalesce_misses`: single-key reads in flight, which concurrent
    /// misses of the same key join.
    read_flights: Option<read_flight::ReadFlights>,
    /// Reads answered by joining another caller's read (operation `cache.read`, outcome
    /// `coalesced`).
    coalesced: crate::telemetry::OutcomeCounter,
}

/// A read that missed the L1: where its answer goes in the output, and its keys.
struct Pending {
    index: usize,
    redis_key: String,
    /// `None` without an L1.
    l1_key: Option<String>,
}

/// The store one operation uses: the namespace's own, or a routed endpoint's.
enum StoreRef<'a> {
    Own(&'a Store),
    Routed(Store),
}

impl std::ops::Deref for StoreRef<'_> {
    type Target = Store;
    fn deref(&self) -> &Store {
        match self {
            StoreRef::Own(s) => s,
            StoreRef::Routed(s) => s,
        }
    }
}

thread_local! {
    /// Reused key buffer for tenant-aware L1 lookups: a hit allocates nothing.
    static L1_KEY_BUF: RefCell<String> = const { RefCell::new(String::new()) };
}

/// `f` of the L1 key of the caller's `key` under `tenant`: the key itself without a tenant
/// (nothing built), else the escaped tenant, `:` and the key, built in a reused buffer. The
/// one place the L1 key layout is written.
fn with_l1_key<R>(tenant: Option<&TenantId>, key: &str, f: impl FnOnce(&str) -> R) -> R {
    let Some(tenant) = tenant else { return f(key) };
    L1_KEY_BUF.with(|buf| {
        // A re-entrant call (none today) gets a buffer of its own instead of a panic.
        let Ok(mut buf) = buf.try_borrow_mut() else {
            return f(&l1_key_owned(tenant, key));
        };
        buf.clear();
        push_l1_key(&mut buf, tenant, key);
        f(&buf)
    })
}

fn l1_key_owned(tenant: &TenantId, key: &str) -> String {
    let mut k = String::with_capacity(tenant.as_str().len() + 1 + key.len());
    push_l1_key(&mut k, tenant, key);
    k
}

fn push_l1_key(out: &mut String, tenant: &TenantId, key: &str) {
    push_escaped(out, tenant.as_str());
    out.push(':');
    out.push_str(key);
}

impl Cache {
    /// A cache namespace on Redis (`redis` is `Some`) or on local state. The L1 exists only
    /// on Redis and only when configured; it starts untrusted until the tracking session
    /// confirms it. A routed namespace (`router` is `Some`) is tenant-aware, and its L1, if
    /// any, is not tracked (a routed endpoint has no tracking session): it is trusted from the
    /// start and lives by its TTL only.
    pub(crate) fn new(
        name: impl Into<String>,
        space: KeySpace,
        config: &CacheConfig,
        redis: Option<RedisCacheStore>,
        router: Option<Arc<Router>>,
        gate: Gate,
        telemetry: crate::telemetry::Telemetry,
    ) -> Self {
        let l1 = match (&redis, &config.l1) {
            (Some(_), Some(l1)) => Some(Arc::new(
                L1::new(l1.ttl, l1.max_entries, l1.max_bytes).serving_stale_for(l1.serve_stale_for),
            )),
            _ => None,
        };
        if let (Some(l1), Some(_)) = (&l1, &router) {
            l1.confirm();
        }
        Cache(Arc::new(CacheState {
            l1_hits: telemetry.counter("cache.read", "l1_hit"),
            stale_served: telemetry.counter("cache.read", "stale"),
            coalesced: telemetry.counter("cache.read", "coalesced"),
            telemetry,
            gate,
            name: name.into(),
            space,
            tenant_aware: config.tenant_aware || router.is_some(),
            ttl: config.ttl,
            sliding_ttl: config.sliding_ttl,
            store: match redis {
                Some(r) => Store::Redis(r),
                None => Store::Local(LocalCacheStore::new()),
            },
            read_flights: (l1.is_some() && config.l1.as_ref().is_some_and(|c| c.coalesce_misses))
                .then(Default::default),
            l1,
            router,
            counters: Counters::default(),
            inflight: DashMap::new(),
            written: (0..WRITTEN_STRIPES).map(|_| AtomicU64::new(0)).collect(),
            written_hasher: Default::default(),
        }))
    }

    /// Whether this namespace is routed by tenant (its L1, if any, is TTL-only).
    pub(crate) fn is_routed(&self) -> bool {
        self.router.is_some()
    }

    /// [`Cache::store_for`], without entering it when the namespace is not routed (the
    /// common case, on every remote read).
    async fn store_for_keys(&self, rkeys: &[&str]) -> Result<StoreRef<'_>> {
        if self.router.is_none() {
            return Ok(StoreRef::Own(&self.store));
        }
        pooled_with(|| self.store_for(rkeys)).await
    }

    /// The store for an operation on `rkeys` (Redis keys of this namespace). Routed: the
    /// endpoint of their tenant; a batch whose tenants live on different endpoints is
    /// refused (`Validation`).
    async fn store_for(&self, rkeys: &[&str]) -> Result<StoreRef<'_>> {
        let Some(router) = &self.router else {
            return Ok(StoreRef::Own(&self.store));
        };
        let mut chosen: Option<Destination> = None;
        let mut seen: Vec<TenantId> = Vec::new();
        for k in rkeys {
            let tenant = self.space.tenant_of_key(k).ok_or_else(|| {
                Error::internal("cache", "a key without tenant in a routed cache")
            })?;
            if seen.contains(&tenant) {
                continue;
            }
            let d = destination(Some(router), &self.name, Some(&tenant)).await?;
            let same = match (&chosen, &d) {
                (None, _) => true,
                (Some(Destination::Default), Destination::Default) => true,
                (Some(Destination::Endpoint(a)), Destination::Endpoint(b)) => Arc::ptr_eq(a, b),
                _ => false,
            };
            if !same {
                return Err(Error::validation(
                    "keys",
                    "one batch of a routed cache must not span tenants on different endpoints",
                ));
            }
            chosen = Some(d);
            seen.push(tenant);
        }
        Ok(match chosen {
            Some(Destination::Endpoint(conn)) => {
                StoreRef::Routed(Store::Redis(RedisCacheStore::new(conn)))
            }
            _ => StoreRef::Own(&self.store),
        })
    }

    /// The resource name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether every call needs a tenant (`tenant_aware` or `routed`); a namespace that is
    /// not tenant-aware refuses one.
    pub fn is_tenant_aware(&self) -> bool {
        self.tenant_aware
    }

    /// The L1, when the namespace has one: read-only diagnostics for benchmarks (its
    /// trust and contents change only through the tracking session).
    #[doc(hidden)]
    pub fn l1(&self) -> Option<&L1> {
        self.l1.as_deref()
    }

    /// Whether the namespace has an L1.
    pub fn has_l1(&self) -> bool {
        self.l1.is_some()
    }

    /// Empty this process's L1 of the namespace (an operator's action; the tracking session
    /// flushes by itself whenever coherence is at risk). Trust is kept.
    pub fn flush_l1(&self) {
        self.l1_flush(FlushReason::Manual, true);
    }

    /// Remove expired L1 entries (the cache actor's timer).
    #[doc(hidden)]
    pub fn sweep_l1(&self) {
        if let Some(l1) = &self.l1 {
            l1.sweep();
        }
    }

    pub(crate) fn l1_flush(&self, reason: FlushReason, trusted: bool) {
        if let Some(l1) = &self.l1 {
            l1.flush(reason, trusted);
        }
    }

    pub(crate) fn l1_confirm(&self) {
        if let Some(l1) = &self.l1 {
            l1.confirm();
        }
    }

    #[cfg(test)]
    pub(crate) fn l1_is_trusted(&self) -> bool {
        self.l1.as_ref().is_some_and(|l1| l1.is_trusted())
    }

    /// The prefix every key of this namespace starts with: what the tracking subscriber asks
    /// the server to broadcast invalidations for.
    pub(crate) fn tracking_prefix(&self) -> String {
        self.space.namespace_prefix()
    }

    /// A copy of the statistics.
    pub fn stats(&self) -> CacheStats {
        let c = &self.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let l1 = self.l1.as_ref().map(|x| L1Stats {
            hits: self.l1_hits.get(),
            ..x.stats()
        });
        let l1_hits = l1.as_ref().map_or(0, |s| s.hits);
        CacheStats {
            reads: c.remote_reads.get() + l1_hits + l(&c.coalesced),
            hits: c.hits.get() + l1_hits,
            misses: c.misses.get(),
            corrupt: l(&c.corrupt),
            bypassed: l(&c.bypassed),
            writes: l(&c.writes),
            errors: l(&c.errors),
            loads: l(&c.loads),
            load_waits: l(&c.load_waits),
            reads_coalesced: l(&c.coalesced),
            l1,
            coherence: if self.l1.is_some() && self.router.is_some() {
                "ttl"
            } else if self.l1.is_some() {
                "tracking"
            } else {
                "none"
            },
        }
    }

    fn tenant<'a>(&self, key: &'a CacheKey) -> Result<Option<&'a TenantId>> {
        if key.key.is_empty() {
            return Err(Error::validation("key", "must not be empty"));
        }
        key_tenant(&self.name, self.tenant_aware, key.tenant.as_ref())
    }

    fn redis_key(&self, key: &CacheKey) -> Result<String> {
        let tenant = self.tenant(key)?;
        Ok(self.space.key(tenant, &[&key.key])?.into_string())
    }

    /// Look `key` up in the L1. The L1 is keyed by the logical key (the caller's key, after
    /// the escaped tenant and a `:` in tenant-aware namespaces), so a tenant-less lookup
    /// builds nothing and hashes only the caller's key.
    fn l1_lookup(&self, key: &CacheKey) -> Result<Option<Entry>> {
        let Some(l1) = &self.l1 else { return Ok(None) };
        let found = with_l1_key(self.tenant(key)?, &key.key, |k| l1.get(k));
        if found.is_some() {
            self.l1_hits.increment();
        }
        Ok(found)
    }

    /// What a read of `key` that missed the L1 needs: its Redis key and, with an L1, its L1
    /// key, both built from the caller's key (never one parsed back from the other).
    fn pending(&self, index: usize, key: &CacheKey) -> Result<Pending> {
        let tenant = self.tenant(key)?;
        let redis_key = self.space.key(tenant, &[&key.key])?.into_string();
        let l1_key = self
            .l1
            .as_ref()
            .map(|_| with_l1_key(tenant, &key.key, str::to_owned));
        Ok(Pending {
            index,
            redis_key,
            l1_key,
        })
    }

    /// The L1 key of a Redis key of this namespace (what an invalidation push names), as
    /// `push_l1_key` lays it out; `None` for any other key.
    pub(crate) fn l1_key_from_redis(&self, redis_key: &str) -> Option<String> {
        let rest = redis_key.strip_prefix(self.space.namespace_prefix_str())?;
        let rest = rest.strip_suffix('}')?;
        if self.tenant_aware {
            let (tenant, key) = rest.strip_prefix("t=")?.split_once(':')?;
            Some(format!("{tenant}:{}", unescape_part(key)?))
        } else {
            unescape_part(rest.strip_prefix("_:")?)
        }
    }

    /// Apply an invalidation push for `redis_key` (the tracking subscriber calls this).
    /// Keys of other namespaces are ignored.
    pub(crate) fn apply_invalidation(&self, redis_key: &str) {
        if let (Some(l1), Some(k)) = (&self.l1, self.l1_key_from_redis(redis_key)) {
            l1.invalidate(&k);
        }
    }

    /// Count an error (its kind reaches the span and metrics through the telemetry).
    fn fail<T>(&self, e: Error) -> Result<T> {
        self.counters.errors.fetch_add(1, Ordering::Relaxed);
        Err(e)
    }

    /// Read the stored entry of one key, going through the L1. The hit path allocates
    /// nothing and touches one shared counter.
    async fn read_one(&self, op: &'static str, key: &CacheKey) -> Result<Option<Entry>> {
        if let Some(entry) = self.l1_lookup(key)? {
            cooperate().await;
            return Ok(Some(entry));
        }
        pooled_with(|| self.read_remote_one(op, key)).await
    }

    /// Read one key from the store (the L1 missed). Callers on the hit path put it on the heap
    /// (`pooled_with`): the miss path's future is hundreds of bytes, and inline it would make
    /// theirs as large, moved by their caller on every hit too.
    async fn read_remote_one(&self, op: &'static str, key: &CacheKey) -> Result<Option<Entry>> {
        Ok(self.read_remote_outcome(op, key).await?.0)
    }

    /// [`Cache::read_remote_one`] with the read's outcome (`bypassed`: Redis was unreachable).
    async fn read_remote_outcome(
        &self,
        op: &'static str,
        key: &CacheKey,
    ) -> Result<(Option<Entry>, &'static str)> {
        let pending = self.pending(0, key)?;
        let role = match (&self.read_flights, &self.l1, &pending.l1_key) {
            (Some(flights), Some(l1), Some(l1_key)) => flights.join(l1, l1_key),
            _ => read_flight::Role::Alone,
        };
        let leader = match role {
            read_flight::Role::Follower(done) => {
                if let Some(read) = read_flight::wait(done).await {
                    self.count_coalesced(&read);
                    return read;
                }
                // The leader gave up: read on our own.
                None
            }
            read_flight::Role::Leader(guard) => Some(guard),
            read_flight::Role::Alone => None,
        };
        let mut out = [None];
        let read = pooled_with(|| self.fetch(op, &mut out, std::slice::from_ref(&pending)))
            .await
            .map(|outcome| (out[0].take(), outcome));
        if let Some(guard) = leader {
            guard.publish(&read);
        }
        read
    }

    /// Count a read answered by another caller's read, as [`Cache::fetch`] counts its own.
    fn count_coalesced(&self, read: &read_flight::SharedRead) {
        self.counters.coalesced.fetch_add(1, Ordering::Relaxed);
        self.coalesced.increment();
        match read {
            Ok((Some(_), _)) => self.counters.hits.add(1),
            Ok((None, outcome)) => {
                if *outcome == "bypassed" {
                    self.counters.bypassed.fetch_add(1, Ordering::Relaxed);
                }
                self.counters.misses.add(1)
            }
            Err(_) => {
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Read stored entries for `keys`, going through the L1; in input order.
    async fn read_stored(
        &self,
        op: &'static str,
        keys: &[&CacheKey],
    ) -> Result<Vec<Option<Entry>>> {
        let mut out: Vec<Option<Entry>> = vec![None; keys.len()];
        let mut pending: Vec<Pending> = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            match self.l1_lookup(key)? {
                Some(entry) => out[i] = Some(entry),
                None => pending.push(self.pending(i, key)?),
            }
        }
        if pending.is_empty() {
            cooperate().await;
        } else {
            self.fetch(op, &mut out, &pending).await?;
        }
        Ok(out)
    }

    fn decode_counted(&self, stored: Bytes) -> Option<Entry> {
        let entry = codec::decode(stored);
        if entry.is_none() {
            self.counters.corrupt.fetch_add(1, Ordering::Relaxed);
            self.counters.misses.add(1);
        }
        entry
    }

    /// Read `pending` (index into `out`, Redis key) from the store in one round trip, fill
    /// the L1 with what raced nothing, and put the decoded entries into `out`.
    async fn fetch(
        &self,
        op: &'static str,
        out: &mut [Option<Entry>],
        pending: &[Pending],
    ) -> Result<&'static str> {
        self.counters.remote_reads.add(pending.len() as u64);
        let read = async {
            // Tickets are taken before the read is sent: a fill happens only if no
            // invalidation of its key arrived since (the L1's race rule).
            // One key (most reads) collects on the stack: nothing here allocates.
            let mut tickets: OneOrMany<_> = pending
                .iter()
                .map(|p| {
                    let (l1, l1_key) = (self.l1.as_ref()?, p.l1_key.as_deref()?);
                    Some((l1.ticket(l1_key)?, l1_key))
                })
                .collect();
            let names: OneOrMany<&str> = pending.iter().map(|p| p.redis_key.as_str()).collect();
            let reads = match self.store_for_keys(&names).await.as_deref() {
                Ok(Store::Redis(r)) => {
                    r.read(op, &names, self.l1.is_some(), self.sliding_ttl)
                        .await
                }
                Ok(Store::Local(l)) => Ok(l.read(&names, self.sliding_ttl)),
                Err(e) => Err(e.clone()),
            };
            let mut reads = match reads {
                Ok(r) => r,
                // Fail open: an unreachable Redis is a miss, never an error, for reads.
                Err(e) if matches!(e.kind(), ErrorKind::Unavailable | ErrorKind::Timeout) => {
                    tracing::debug!(error = %e, "cache read bypassed");
                    let n = pending.len() as u64;
                    self.counters.bypassed.fetch_add(n, Ordering::Relaxed);
                    self.counters.misses.add(n);
                    return Ok("bypassed");
                }
                Err(e) => return self.fail(e),
            };
            let mut found = 0;
            for ((p, ticket), read) in pending.iter().zip(tickets.iter_mut()).zip(reads.iter_mut())
            {
                let (Some(stored), pttl) = (read.stored.take(), read.pttl) else {
                    self.counters.misses.add(1);
                    continue;
                };
                // Only what decodes is worth keeping in the L1.
                let Some(entry) = self.decode_counted(stored) else {
                    continue;
                };
                if let (Some(l1), Some((ticket, l1_key))) = (&self.l1, ticket.take()) {
                    l1.fill(ticket, l1_key, entry.clone(), pttl);
                }
                self.counters.hits.add(1);
                out[p.index] = Some(entry);
                found += 1;
            }
            Ok(match found {
                0 => "miss",
                n if n == pending.len() => "hit",
                _ => "partial",
            })
        };
        // The outcome of the remote read: `hit`, `miss`, `partial` (a batch), `bypassed`.
        self.telemetry.observe(op, read, |&o| o).await
    }

    fn decode_or_count<T: DeserializeOwned>(&self, entry: Option<Entry>) -> Option<T> {
        let entry = entry?;
        let value = codec::decode_value(&entry);
        if value.is_none() {
            // Stored fine but not as this type: a corrupt miss as far as the caller goes.
            self.counters.corrupt.fetch_add(1, Ordering::Relaxed);
        }
        value
    }

    /// The value of `key`, or `None` (missing, expired, corrupt, or Redis unreachable).
    pub async fn get<T: DeserializeOwned>(&self, key: &CacheKey) -> Result<Option<T>> {
        self.gate.check("cache.get")?;
        let entry = self.read_one("cache.get", key).await?;
        Ok(self.decode_or_count(entry))
    }

    /// The value of `key` with its freshness: [`Freshness::Fresh`] from the L1 or Redis, or,
    /// in a namespace with `[caches.<name>.l1] serve_stale_for`, [`Freshness::Stale`] when
    /// Redis cannot be reached and the L1 kept the entry aside at the loss of tracking (for at
    /// most `serve_stale_for` after it). `None` as for [`Cache::get`]. A stale answer is never
    /// given once tracking is confirmed again, nor for a key this process wrote since.
    pub async fn get_with_freshness<T: DeserializeOwned>(
        &self,
        key: &CacheKey,
    ) -> Result<Option<CacheRead<T>>> {
        self.gate.check("cache.get")?;
        if let Some(entry) = self.l1_lookup(key)? {
            return Ok(self.decode_or_count(Some(entry)).map(CacheRead::fresh));
        }
        let (entry, outcome) = self.read_remote_outcome("cache.get", key).await?;
        if outcome != "bypassed" {
            return Ok(self.decode_or_count(entry).map(CacheRead::fresh));
        }
        let Some((entry, age)) = self.l1_stale_lookup(key)? else {
            return Ok(None);
        };
        self.stale_served.increment();
        Ok(self.decode_or_count(Some(entry)).map(|value| CacheRead {
            value,
            freshness: Freshness::Stale { age },
        }))
    }

    /// The kept-aside entry of `key`, if the L1 serves stale and still holds one.
    fn l1_stale_lookup(&self, key: &CacheKey) -> Result<Option<(Entry, Duration)>> {
        let Some(l1) = &self.l1 else { return Ok(None) };
        Ok(with_l1_key(self.tenant(key)?, &key.key, |k| {
            l1.get_stale(k)
        }))
    }

    /// The stored bytes of `key` exactly as written with [`Cache::set_bytes`] (or the JSON of
    /// a serde value).
    pub async fn get_bytes(&self, key: &CacheKey) -> Result<Option<Bytes>> {
        self.gate.check("cache.get")?;
        // The hit path is written out here so that no inner future is built for it.
        if let Some(entry) = self.l1_lookup(key)? {
            cooperate().await;
            return Ok(Some(entry.payload));
        }
        Ok(pooled_with(|| self.read_remote_one("cache.get", key))
            .await?
            .map(|e| e.payload))
    }

    /// The version and value of a versioned entry; `None` also for an unversioned one.
    pub async fn get_versioned<T: DeserializeOwned>(
        &self,
        key: &CacheKey,
    ) -> Result<Option<(u64, T)>> {
        self.gate.check("cache.get")?;
        let entry = self.read_one("cache.get", key).await?;
        let version = entry.as_ref().and_then(|e| e.version);
        Ok(version.zip(self.decode_or_count(entry)))
    }

    /// The values of `keys` in input order, in one round trip for those not in the L1.
    pub async fn get_many<T: DeserializeOwned>(&self, keys: &[CacheKey]) -> Result<Vec<Option<T>>> {
        self.gate.check("cache.get_many")?;
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let refs: Vec<&CacheKey> = keys.iter().collect();
        let entries = self.read_stored("cache.get_many", &refs).await?;
        Ok(entries
            .into_iter()
            .map(|e| self.decode_or_count(e))
            .collect())
    }

    /// Whether `key` holds an entry (fails open to `false`).
    pub async fn exists(&self, key: &CacheKey) -> Result<bool> {
        self.gate.check("cache.exists")?;
        if self.l1_lookup(key)?.is_some() {
            return Ok(true);
        }
        let rkey = self.redis_key(key)?;
        let check = async {
            let found = match self.store_for_keys(&[rkey.as_str()]).await.as_deref() {
                Ok(Store::Redis(r)) => pooled_with(|| r.exists("cache.exists", &rkey)).await,
                Ok(Store::Local(l)) => Ok(l.exists(&rkey)),
                Err(e) => Err(e.clone()),
            };
            match found {
                Ok(true) => Ok("hit"),
                Ok(false) => Ok("miss"),
                Err(e) if matches!(e.kind(), ErrorKind::Unavailable | ErrorKind::Timeout) => {
                    self.counters.bypassed.fetch_add(1, Ordering::Relaxed);
                    Ok("bypassed")
                }
                Err(e) => self.fail(e),
            }
        };
        let outcome = self
            .telemetry
            .observe("cache.exists", check, |&o| o)
            .await?;
        Ok(outcome == "hit")
    }

    /// Evict the keys (Redis keys) from this process's L1.
    fn evict_local(&self, keys: &[String]) {
        for k in keys {
            self.written[self.written_stripe(k)].fetch_add(1, Ordering::AcqRel);
            self.apply_invalidation(k);
        }
    }

    /// The stripe of [`CacheState::written`] that counts the writes of `redis_key`.
    fn written_stripe(&self, redis_key: &str) -> usize {
        (self.written_hasher.hash_one(redis_key) as usize) % WRITTEN_STRIPES
    }

    async fn write_stored(
        &self,
        op: &'static str,
        entries: Vec<(String, Bytes)>,
        ttl: Option<Duration>,
        mode: WriteMode,
    ) -> Result<()> {
        let ttl = ttl.unwrap_or(self.ttl);
        if ttl.is_zero() {
            return Err(Error::validation("ttl", "must be greater than zero"));
        }
        if entries.is_empty() {
            return Ok(());
        }
        let keys: Vec<String> = entries.iter().map(|(k, _)| k.clone()).collect();
        let write = async {
            self.counters
                .writes
                .fetch_add(entries.len() as u64, Ordering::Relaxed);
            // Before: fills in flight are refused. After: read-your-own-writes on this replica.
            self.evict_local(&keys);
            let refs: Vec<(&str, Bytes)> = entries
                .iter()
                .map(|(k, b)| (k.as_str(), b.clone()))
                .collect();
            let names: Vec<&str> = keys.iter().map(String::as_str).collect();
            let result = match self.store_for_keys(&names).await.as_deref() {
                Ok(Store::Redis(r)) => pooled_with(|| r.write(op, &refs, ttl, mode)).await,
                Ok(Store::Local(l)) => {
                    l.write(&refs, ttl, mode);
                    Ok(())
                }
                Err(e) => Err(e.clone()),
            };
            self.evict_local(&keys);
            match result {
                Ok(()) => Ok(()),
                Err(e) => self.fail(e),
            }
        };
        self.telemetry.observe(op, write, |_| "ok").await
    }

    /// Store one entry in its stored form (`set` and `set_bytes` differ only in encoding).
    async fn write_one(&self, key: &CacheKey, stored: Bytes, ttl: Option<Duration>) -> Result<()> {
        let entries = vec![(self.redis_key(key)?, stored)];
        self.write_stored("cache.set", entries, ttl, WriteMode::Always)
            .await
    }

    /// Store a serde value under `key` for `ttl` (the namespace default when `None`).
    pub async fn set<T: Serialize + ?Sized>(
        &self,
        key: &CacheKey,
        value: &T,
        ttl: Option<Duration>,
    ) -> Result<()> {
        self.gate.check("cache.set")?;
        let stored = codec::encode_json(None, value)?;
        self.write_one(key, stored, ttl).await
    }

    /// Store raw bytes under `key`; [`Cache::get_bytes`] returns them exactly.
    pub async fn set_bytes(
        &self,
        key: &CacheKey,
        bytes: &[u8],
        ttl: Option<Duration>,
    ) -> Result<()> {
        self.gate.check("cache.set")?;
        let stored = codec::encode_raw(None, bytes);
        self.write_one(key, stored, ttl).await
    }

    /// Store several serde values in one round trip.
    pub async fn set_many<T: Serialize>(
        &self,
        entries: &[(CacheKey, T)],
        ttl: Option<Duration>,
    ) -> Result<()> {
        self.gate.check("cache.set_many")?;
        let mut stored = Vec::with_capacity(entries.len());
        for (key, value) in entries {
            stored.push((self.redis_key(key)?, codec::encode_json(None, value)?));
        }
        self.write_stored("cache.set_many", stored, ttl, WriteMode::Always)
            .await
    }

    /// Store `value` as `version` of `key`, unless a newer version is stored. Returns whether
    /// it was written. Version and value are one string: no reader ever sees them torn.
    pub async fn set_versioned<T: Serialize + ?Sized>(
        &self,
        key: &CacheKey,
        version: u64,
        value: &T,
        ttl: Option<Duration>,
    ) -> Result<bool> {
        self.gate.check("cache.set_versioned")?;
        let stored = codec::encode_json(Some(version), value)?;
        let rkey = self.redis_key(key)?;
        let write = self.write_versioned("cache.set_versioned", rkey, version, stored, ttl);
        self.telemetry
            .observe("cache.set_versioned", write, |&w| {
                if w {
                    "written"
                } else {
                    "stale"
                }
            })
            .await
    }

    async fn write_versioned(
        &self,
        op: &'static str,
        rkey: String,
        version: u64,
        stored: Bytes,
        ttl: Option<Duration>,
    ) -> Result<bool> {
        let ttl = ttl.unwrap_or(self.ttl);
        if ttl.is_zero() {
            return Err(Error::validation("ttl", "must be greater than zero"));
        }
        self.counters.writes.fetch_add(1, Ordering::Relaxed);
        let keys = [rkey];
        self.evict_local(&keys);
        let result = match self.store_for_keys(&[keys[0].as_str()]).await.as_deref() {
            Ok(Store::Redis(r)) => {
                let version = codec::format_version(version);
                pooled_with(|| r.write_versioned(op, &keys[0], stored, &version, ttl)).await
            }
            Ok(Store::Local(l)) => Ok(l.write_versioned(&keys[0], stored, version, ttl)),
            Err(e) => Err(e.clone()),
        };
        self.evict_local(&keys);
        result.or_else(|e| self.fail(e))
    }

    /// [`Cache::set_versioned`] for several keys, sent together; whether each was written.
    pub async fn set_many_versioned<T: Serialize>(
        &self,
        entries: &[(CacheKey, u64, T)],
        ttl: Option<Duration>,
    ) -> Result<Vec<bool>> {
        self.gate.check("cache.set_many_versioned")?;
        let mut prepared = Vec::with_capacity(entries.len());
        for (key, version, value) in entries {
            prepared.push((
                self.redis_key(key)?,
                *version,
                codec::encode_json(Some(*version), value)?,
            ));
        }
        // Concurrent calls share the connection's pipeline: one round trip in practice.
        let writes = prepared.into_iter().map(|(k, v, s)| {
            pooled_with(|| self.write_versioned("cache.set_many_versioned", k, v, s, ttl))
        });
        let all = async {
            futures::future::join_all(writes)
                .await
                .into_iter()
                .collect::<Result<Vec<bool>>>()
        };
        self.telemetry
            .observe("cache.set_many_versioned", all, |_| "ok")
            .await
    }

    /// Remove `key` with `DEL` (its memory is reclaimed before the reply). Returns whether
    /// it existed.
    pub async fn delete(&self, key: &CacheKey) -> Result<bool> {
        self.gate.check("cache.delete")?;
        Ok(self
            .remove("cache.delete", std::slice::from_ref(key), true)
            .await?
            > 0)
    }

    /// Remove `key` with `UNLINK` (its memory is reclaimed in the background: cheaper for
    /// large values). Returns whether it existed.
    pub async fn unlink(&self, key: &CacheKey) -> Result<bool> {
        self.gate.check("cache.unlink")?;
        Ok(self
            .remove("cache.unlink", std::slice::from_ref(key), false)
            .await?
            > 0)
    }

    /// Remove `keys` with `DEL` in one round trip; how many existed.
    pub async fn delete_many(&self, keys: &[CacheKey]) -> Result<u64> {
        self.gate.check("cache.delete")?;
        self.remove("cache.delete", keys, true).await
    }

    /// Remove `keys` with `UNLINK` in one round trip; how many existed.
    pub async fn unlink_many(&self, keys: &[CacheKey]) -> Result<u64> {
        self.gate.check("cache.unlink")?;
        self.remove("cache.unlink", keys, false).await
    }

    async fn remove(&self, op: &'static str, keys: &[CacheKey], hard: bool) -> Result<u64> {
        if keys.is_empty() {
            return Ok(0);
        }
        let rkeys = keys
            .iter()
            .map(|k| self.redis_key(k))
            .collect::<Result<Vec<_>>>()?;
        let remove = async {
            self.counters
                .writes
                .fetch_add(rkeys.len() as u64, Ordering::Relaxed);
            self.evict_local(&rkeys);
            let refs: Vec<&str> = rkeys.iter().map(String::as_str).collect();
            let result = match self.store_for_keys(&refs).await.as_deref() {
                Ok(Store::Redis(r)) => pooled_with(|| r.remove(op, &refs, hard)).await,
                Ok(Store::Local(l)) => Ok(l.remove(&refs)),
                Err(e) => Err(e.clone()),
            };
            self.evict_local(&rkeys);
            result.or_else(|e| self.fail(e))
        };
        self.telemetry.observe(op, remove, |_| "ok").await
    }

    /// The value of `key`; on a miss, run `loader` once in this process (concurrent callers
    /// for the same key wait for it and share its result), store the value with `ttl` and
    /// return it. A loader error reaches every waiting caller as [`Error::Loader`], carrying
    /// the loader's own error shared among them (read it with [`Error::loader_error`], as
    /// `Arc<E>` from moka's `try_get_with`). A failure to store the loaded value is logged and
    /// counted, not returned: the caller has it.
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use forze_redis_actors::{CacheKey, Config, Forze};
    ///
    /// let config = Config::from_toml_str(r#"mode = "embedded"
    ///     [caches.users]
    ///     ttl = "60s"
    /// "#)?;
    /// let (forze, _join) = Forze::spawn(config).await?;
    /// let users = forze.cache("users")?;
    /// let key = CacheKey::new("user:42");
    ///
    /// // A miss: the loader runs and its value is stored.
    /// let name: String = users
    ///     .get_or_load(&key, None, || async { Ok::<_, std::io::Error>("Ada".to_string()) })
    ///     .await?;
    /// // A hit: the stored value comes back, the loader does not run.
    /// let again: String = users
    ///     .get_or_load(&key, None, || async { Err::<String, _>("loader must not run") })
    ///     .await?;
    /// assert_eq!(name, "Ada");
    /// assert_eq!(again, "Ada");
    /// assert_eq!(users.stats().loads, 1);
    ///
    /// forze.shutdown().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn get_or_load<T, F, Fut, E>(
        &self,
        key: &CacheKey,
        ttl: Option<Duration>,
        loader: F,
    ) -> Result<T>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> Fut,
        Fut: Future<Output = std::result::Result<T, E>>,
        E: std::fmt::Display + Send + Sync + 'static,
    {
        self.gate.check("cache.get_or_load")?;
        let mut loader = Some(loader);
        // A leader that is cancelled wakes its followers empty-handed; they then retry, one
        // of them leading. Bounded: every round either returns or sees a cancelled leader.
        for _ in 0..16 {
            // Past the gate (checked once above): a load that began before shutdown finishes.
            let entry = self.read_one("cache.get", key).await?;
            if let Some(v) = self.decode_or_count::<T>(entry) {
                return Ok(v);
            }
            let rkey = self.redis_key(key)?;
            let (tx, mut rx) = match self.inflight.entry(rkey.clone()) {
                dashmap::Entry::Occupied(o) => (None, o.get().clone()),
                dashmap::Entry::Vacant(v) => {
                    let (tx, rx) = watch::channel(None);
                    v.insert(rx.clone());
                    (Some(tx), rx)
                }
            };
            let Some(tx) = tx else {
                self.counters.load_waits.fetch_add(1, Ordering::Relaxed);
                let shared = match rx.wait_for(|r| r.is_some()).await {
                    Ok(r) => r.clone(),
                    Err(_) => None, // the leader was dropped before it finished
                };
                match shared {
                    Some(Ok(bytes)) => {
                        if let Ok(v) = serde_json::from_slice(&bytes) {
                            return Ok(v);
                        }
                        return Err(Error::Codec {
                            message: "the loaded value does not decode as the requested type"
                                .into(),
                        });
                    }
                    Some(Err(e)) => return Err(e),
                    None => continue,
                }
            };
            // Leader: the guard removes the in-flight entry however this ends.
            let _guard = InflightGuard {
                map: &self.inflight,
                key: rkey,
            };
            let Some(load) = loader.take() else {
                return Err(Error::internal("cache.get_or_load", "loader already used"));
            };
            self.counters.loads.fetch_add(1, Ordering::Relaxed);
            let stripe = self.written_stripe(&_guard.key);
            let written_before = self.written[stripe].load(Ordering::Acquire);
            match load().await {
                Ok(value) => {
                    let bytes =
                        serde_json::to_vec(&value)
                            .map(Bytes::from)
                            .map_err(|e| Error::Codec {
                                message: format!("cannot encode the loaded value: {e}"),
                            })?;
                    let _ = tx.send(Some(Ok(bytes)));
                    // Stored only if nothing was written meanwhile: not by this handle (a
                    // write or delete here since the load began: the loaded value may be
                    // older), and not by anyone (`SET … NX`: a stored value is newer).
                    let write = async {
                        if self.written[stripe].load(Ordering::Acquire) != written_before {
                            tracing::debug!(resource = %self.name, "key written during its load; the loaded value is not stored");
                            return Ok(());
                        }
                        let stored = codec::encode_json(None, &value)?;
                        let entries = vec![(self.redis_key(key)?, stored)];
                        self.write_stored("cache.set", entries, ttl, WriteMode::IfAbsent)
                            .await
                    };
                    if let Err(e) = write.await {
                        tracing::warn!(resource = %self.name, error = %e, "loaded value not cached");
                    }
                    return Ok(value);
                }
                Err(e) => {
                    let err = Error::Loader {
                        message: e.to_string(),
                        error: LoaderError::new(e),
                    };
                    let _ = tx.send(Some(Err(err.clone())));
                    return Err(err);
                }
            }
        }
        Err(Error::internal(
            "cache.get_or_load",
            "the load was cancelled too many times",
        ))
    }
}

thread_local! {
    static HITS_SINCE_YIELD_POINT: std::cell::Cell<u8> = const { std::cell::Cell::new(0) };
}

/// Served without I/O: take part in tokio's cooperative budget every 16th time, so a loop of
/// L1 hits still yields to the other tasks of its worker thread (after at most 16 × the
/// task budget hits) without paying for the budget check on every hit.
async fn cooperate() {
    let due = HITS_SINCE_YIELD_POINT.with(|n| {
        let v = n.get().wrapping_add(1) & 15;
        n.set(v);
        v == 0
    });
    if due {
        tokio::task::consume_budget().await;
    }
}

/// Stripes of [`CacheState::written`].
const WRITTEN_STRIPES: usize = 64;

struct InflightGuard<'a> {
    map: &'a DashMap<String, watch::Receiver<LoadResult>>,
    key: String,
}

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        self.map.remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{L1Config, RedisConfig};
    use crate::connection::RedisConnection;
    use crate::keys::{KeyPrefix, Namespace, ResourceKind};

    fn cache(tenant_aware: bool) -> Cache {
        let conn =
            Arc::new(RedisConnection::build(&RedisConfig::new("redis://127.0.0.1:1")).unwrap());
        let space = KeySpace::new(
            KeyPrefix::default(),
            ResourceKind::Cache,
            Namespace::parse("ns", "docs").unwrap(),
        );
        let config = CacheConfig {
            tenant_aware,
            l1: Some(L1Config::default()),
            ..CacheConfig::default()
        };
        Cache::new(
            "docs",
            space,
            &config,
            Some(RedisCacheStore::new(conn)),
            None,
            Gate::default(),
            crate::telemetry::Telemetry::new("test", "cache", "docs", "docs", None),
        )
    }

    #[test]
    fn an_invalidation_reaches_the_l1_entry_its_lookup_uses() {
        for tenant_aware in [false, true] {
            let c = cache(tenant_aware);
            let l1 = c.l1().unwrap();
            l1.confirm();
            for raw in ["plain", "a:{b}%c", "t=x:y", "_:z}"] {
                let mut key = CacheKey::new(raw);
                if tenant_aware {
                    key = key.for_tenant(TenantId::new("t:1{}").unwrap());
                }
                let redis_key = c.redis_key(&key).unwrap();
                let l1_key = c.l1_key_from_redis(&redis_key).unwrap();
                // A read that misses fills the key the push names.
                let pending = c.pending(0, &key).unwrap();
                assert_eq!(pending.redis_key, redis_key, "{raw}");
                assert_eq!(pending.l1_key.as_deref(), Some(l1_key.as_str()), "{raw}");
                let entry = codec::decode(codec::encode_raw(None, b"v")).unwrap();
                let ticket = l1.ticket(&l1_key).unwrap();
                assert!(l1.fill(ticket, &l1_key, entry, None));
                assert!(
                    c.l1_lookup(&key).unwrap().is_some(),
                    "{raw}: lookup finds the fill"
                );
                c.apply_invalidation(&redis_key);
                assert!(
                    c.l1_lookup(&key).unwrap().is_none(),
                    "{raw}: invalidation evicts it"
                );
            }
            // Keys of other namespaces or kinds map to nothing.
            assert_eq!(c.l1_key_from_redis("forze:cache:{other:_:plain}"), None);
            assert_eq!(c.l1_key_from_redis("forze:lock:{docs:_:plain}"), None);
        }
    }
}

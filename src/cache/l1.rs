//! The in-process L1 of one cache namespace: a `DashMap` of stored entries keyed by their
//! logical key, bounded by entries and bytes, each entry with its own deadline.
//!
//! # Eviction: S3-FIFO
//!
//! Which entry leaves when a bound is reached is decided by S3-FIFO (Yang et al., SOSP 2023):
//! a new entry enters a small FIFO (a tenth of `max_entries`); one that was read at least
//! twice while there moves to the main FIFO when it reaches the front, the others leave and
//! are remembered in a ghost FIFO of key hashes, from which a returning key enters the main
//! FIFO directly. The main FIFO gives each entry read since its last pass another pass (its
//! frequency, capped at 3, goes down by one). A hit only bumps a per-entry counter (no lock,
//! no queue operation, and no write at all once the counter is at 3); inserting and evicting
//! are O(1) amortised under one mutex taken on the fill path only. Entries removed by an
//! invalidation leave a tombstone in their FIFO, skipped when reached and trimmed when the
//! FIFOs grow past twice the bound. Expired entries are removed when reached, when read,
//! and by the periodic sweep. Evictions are counted by cause (`expired`, `size`).
//!
//! # Keys
//!
//! Keys are `SmolStr`: up to 23 bytes are held inline in the map slot (and in the FIFO
//! position), longer ones once on the heap and shared. A lookup compares the probed slot's
//! key without following a pointer, one cache miss fewer per lookup on a large L1 (a
//! `Arc<str>` key made that lookup read a line elsewhere in memory before it knew it hit).
//!
//! # Race-safe fills (the epoch technique)
//!
//! A read that misses takes a [`FillTicket`] *before* it sends `GET`: the epoch of the key's
//! stripe, the namespace's global epoch, and whether tracking is confirmed. An invalidation
//! bumps the key's stripe epoch and then removes the key; a flush bumps the global epoch and
//! then clears the map. `L1::fill` re-checks the ticket under the map's shard lock and inserts
//! only if nothing moved, so a reply that raced an invalidation (arriving before or after it)
//! or a flush is never inserted. Stripes (4096 per namespace) keep one hot key's invalidations
//! from refusing every other key's fills.
//!
//! # Trust
//!
//! The L1 is *untrusted* until the tracking subscriber confirms `CLIENT TRACKING` on a live
//! connection, and again from the moment that connection is lost. Untrusted: no fills, and
//! the flush that made it untrusted emptied it, so no hit can be served from before.
//!
//! # Stale while down
//!
//! With `serve_stale_for`, the flush of a loss moves the entries aside (`L1::stale`)
//! instead of dropping them. They are never hits: only a caller that asks for freshness
//! (`L1::get_stale`) gets one, marked stale, for at most `serve_stale_for` after the loss.
//! An invalidation (a local write) removes its key from them too; a server flush or a manual
//! flush drops them, and so does the next confirmation of tracking, before any fill.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;
use smol_str::SmolStr;

use super::codec::Entry;
use crate::deadline::Deadline;

const STRIPES: usize = 4096;

/// Bookkeeping bytes charged per entry on top of key and value.
const ENTRY_OVERHEAD: usize = 64;

/// Why an L1 was flushed; counted per reason in the stats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FlushReason {
    /// The tracking connection was lost (closed, killed, timed out, or refused on connect).
    TrackingLost,
    /// The server flushed its data (`FLUSHALL`/`FLUSHDB` null invalidation).
    ServerFlush,
    /// The tracking subscriber stopped or restarted.
    SubscriberRestart,
    /// The primaries behind the URL changed (a slot migrated, a failover): keys may live on
    /// a node this process was not tracking.
    TopologyChanged,
    /// Asked for by an operator or a test.
    Manual,
}

impl FlushReason {
    /// A short label for stats and traces.
    pub fn label(self) -> &'static str {
        match self {
            FlushReason::TrackingLost => "tracking_lost",
            FlushReason::ServerFlush => "server_flush",
            FlushReason::SubscriberRestart => "subscriber_restart",
            FlushReason::TopologyChanged => "topology_changed",
            FlushReason::Manual => "manual",
        }
    }
}

#[derive(Debug)]
struct Slot {
    entry: Entry,
    deadline: Deadline,
    charge: usize,
    /// Which insertion this is: a FIFO position naming another id is a tombstone.
    id: u64,
    /// Reads since insertion or the last pass through the main FIFO, capped at 3.
    freq: AtomicU8,
}

/// The highest frequency counted: S3-FIFO needs no more to order its passes.
const MAX_FREQ: u8 = 3;

/// One position in a FIFO: the key and the id of the insertion it stands for.
type Position = (SmolStr, u64);

/// The S3-FIFO queues of one L1 (see the module docs).
#[derive(Debug, Default)]
struct Fifos {
    small: VecDeque<Position>,
    main: VecDeque<Position>,
    /// Hashes of keys evicted from the small FIFO, oldest first, with the id of their
    /// insertion (so a hash ghosted twice is forgotten only with its later entry).
    ghost: VecDeque<(u64, u64)>,
    ghost_index: HashMap<u64, u64, foldhash::fast::RandomState>,
}

impl Fifos {
    /// Where a new entry goes: main if its key was evicted from small recently.
    fn admit(&mut self, position: Position, hash: u64) {
        if self.ghost_index.remove(&hash).is_some() {
            self.main.push_back(position);
        } else {
            self.small.push_back(position);
        }
    }

    fn remember(&mut self, hash: u64, id: u64, capacity: usize) {
        self.ghost.push_back((hash, id));
        self.ghost_index.insert(hash, id);
        while self.ghost.len() > capacity {
            let Some((old, old_id)) = self.ghost.pop_front() else {
                break;
            };
            if self.ghost_index.get(&old) == Some(&old_id) {
                self.ghost_index.remove(&old);
            }
        }
    }

    fn len(&self) -> usize {
        self.small.len() + self.main.len()
    }

    fn clear(&mut self) {
        *self = Fifos::default();
    }
}

/// What eviction found at the front of a FIFO.
enum Fate {
    /// A tombstone: the entry was invalidated, replaced or already removed.
    Gone,
    Expired,
    /// Read since its last pass: it goes round again (to main).
    Again,
    Evict,
}

/// Taken before a read is sent; presented to the L1's `fill` with the reply.
#[derive(Debug, Clone, Copy)]
pub struct FillTicket {
    stripe: usize,
    stripe_epoch: u64,
    global_epoch: u64,
    /// When the ticket was taken, before the read was sent: the key's PTTL, measured by the
    /// server later, is counted from here.
    taken: Deadline,
}

/// Counters of one L1.
#[derive(Debug, Default)]
pub struct L1Counters {
    fills: AtomicU64,
    fills_refused: AtomicU64,
    invalidations: AtomicU64,
    /// Entries removed past their deadline.
    expired: AtomicU64,
    /// Entries removed by the eviction order to stay within the bounds.
    evicted_for_size: AtomicU64,
    flushes: Mutex<BTreeMap<FlushReason, u64>>,
}

/// A copy of an L1's statistics.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct L1Stats {
    /// Reads served from the L1 (counted by the cache that owns it).
    pub hits: u64,
    /// Entries inserted after a read.
    pub fills: u64,
    /// Fills refused because the key was invalidated (or the L1 flushed or untrusted) while
    /// the read was in flight.
    pub fills_refused: u64,
    /// Keys evicted by invalidation pushes or local writes.
    pub invalidations: u64,
    /// Entries removed to stay within the bounds, or expired: the sum of the two below.
    pub evictions: u64,
    /// Entries removed past their deadline (when reached by a read, the eviction order or
    /// the periodic sweep).
    pub evictions_expired: u64,
    /// Entries removed by the eviction order (S3-FIFO) to stay within `max_entries` and
    /// `max_bytes`.
    pub evictions_size: u64,
    /// Flushes by reason.
    pub flushes: BTreeMap<&'static str, u64>,
    /// Entries now.
    pub entries: usize,
    /// Bytes charged now (keys, values and per-entry overhead).
    pub bytes: usize,
    /// Whether tracking is confirmed and fills are allowed.
    pub trusted: bool,
    /// Entries kept aside by the last loss of tracking, servable as stale (0 without
    /// `serve_stale_for`, and once tracking is confirmed again).
    pub stale_entries: usize,
}

/// The L1 of one namespace.
#[derive(Debug)]
pub struct L1 {
    /// foldhash with a per-process random seed: several times faster than SipHash on short
    /// keys, and still seeded so callers cannot aim collisions at one shard.
    map: DashMap<SmolStr, Slot, foldhash::fast::RandomState>,
    /// The eviction order; taken on the fill path only, never by a hit.
    fifos: Mutex<Fifos>,
    /// Ids of insertions.
    next_id: AtomicU64,
    stripes: Box<[AtomicU64]>,
    hasher: foldhash::fast::RandomState,
    global: AtomicU64,
    trusted: AtomicBool,
    ttl: Duration,
    max_entries: usize,
    max_bytes: usize,
    /// Bytes charged. Signed: an invalidation can subtract an entry's charge before the fill
    /// that inserted it has added it, so the count may dip below zero for a moment. It is
    /// read clamped at zero; every charge added is subtracted exactly once.
    bytes: AtomicI64,
    counters: L1Counters,
    created: Instant,
    /// Nanoseconds after `created` of the last invalidation, plus one (0: never).
    last_invalidation: AtomicU64,
    /// How long entries set aside by a loss may be served stale (`None`: they are dropped).
    serve_stale_for: Option<Duration>,
    /// The entries set aside by the last loss, while within `serve_stale_for` of it.
    stale: Mutex<Option<StaleSet>>,
}

/// Entries kept aside since a loss of tracking.
#[derive(Debug)]
struct StaleSet {
    since: Instant,
    entries: std::collections::HashMap<String, Entry, foldhash::fast::RandomState>,
}

impl L1 {
    /// An empty, untrusted L1.
    pub fn new(ttl: Duration, max_entries: usize, max_bytes: usize) -> Self {
        L1 {
            map: DashMap::with_hasher(foldhash::fast::RandomState::default()),
            fifos: Mutex::default(),
            next_id: AtomicU64::new(0),
            stripes: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
            hasher: foldhash::fast::RandomState::default(),
            global: AtomicU64::new(0),
            trusted: AtomicBool::new(false),
            ttl,
            max_entries,
            max_bytes,
            bytes: AtomicI64::new(0),
            counters: L1Counters::default(),
            created: Instant::now(),
            last_invalidation: AtomicU64::new(0),
            serve_stale_for: None,
            stale: Mutex::new(None),
        }
    }

    /// An L1 outside any cache namespace, trusted from the start (nothing keeps it coherent):
    /// for benchmarks of the eviction order and lookups.
    #[doc(hidden)]
    pub fn standalone(max_entries: usize, max_bytes: usize) -> Self {
        let l1 = L1::new(Duration::from_secs(24 * 3600), max_entries, max_bytes);
        l1.confirm();
        l1
    }

    /// Insert `entry` for `key` as a read that just missed would: a [`L1::standalone`]
    /// benchmark's fill. Returns whether it was inserted.
    #[doc(hidden)]
    pub fn fill_now(&self, key: &str, entry: Entry) -> bool {
        match self.ticket(key) {
            Some(ticket) => self.fill(ticket, key, entry, None),
            None => false,
        }
    }

    /// This L1, keeping its entries aside at a loss of tracking and serving them stale for at
    /// most `max` after it (`None`: never).
    pub fn serving_stale_for(mut self, max: Option<Duration>) -> Self {
        self.serve_stale_for = max;
        self
    }

    /// A kept-aside entry for `key` and how long ago coherence was lost, while within
    /// `serve_stale_for` of the loss. Only for callers that asked to be told of staleness.
    pub(crate) fn get_stale(&self, key: &str) -> Option<(Entry, Duration)> {
        let max = self.serve_stale_for?;
        let mut stale = self.stale.lock().unwrap_or_else(|p| p.into_inner());
        let set = stale.as_ref()?;
        let age = set.since.elapsed();
        if age > max {
            // Past the bound: nothing of it will ever be served again.
            *stale = None;
            return None;
        }
        set.entries.get(key).map(|e| (e.clone(), age))
    }

    /// Entries kept aside since the last loss (0 when not serving stale).
    pub fn stale_entries(&self) -> usize {
        let stale = self.stale.lock().unwrap_or_else(|p| p.into_inner());
        stale.as_ref().map_or(0, |s| s.entries.len())
    }

    fn drop_stale(&self) {
        if self.serve_stale_for.is_some() {
            *self.stale.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
    }

    /// The per-entry time to live (before capping by the key's server PTTL).
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn stripe(&self, key: &str) -> usize {
        (self.hasher.hash_one(key) as usize) & (STRIPES - 1)
    }

    /// The entry for `key` if present and not past its deadline (already decoded: a hit
    /// does no parsing).
    pub fn get(&self, key: &str) -> Option<Entry> {
        // Err: present but expired, removed below. The clock is read and a write lock
        // taken only for a key that is present: a plain miss costs one lookup.
        let found = self.map.get(key).map(|slot| {
            if slot.deadline.has_passed() {
                return Err(());
            }
            // A plain load and store: a lost bump under a race costs nothing, and a hot
            // entry stops writing its cache line once at the cap.
            let freq = slot.freq.load(Ordering::Relaxed);
            if freq < MAX_FREQ {
                slot.freq.store(freq + 1, Ordering::Relaxed);
            }
            Ok(slot.entry.clone())
        });
        match found {
            // Not counted here: the cache counts its hits once, in its telemetry (one atomic
            // add per hit instead of two), and fills `L1Stats::hits` from that count.
            Some(Ok(entry)) => Some(entry),
            Some(Err(())) => {
                self.remove_expired(key);
                None
            }
            None => None,
        }
    }

    fn remove_expired(&self, key: &str) {
        // Checked again under the shard lock: a fill may have replaced the expired entry.
        if let Some((_, slot)) = self.map.remove_if(key, |_, s| s.deadline.has_passed()) {
            self.bytes.fetch_sub(slot.charge as i64, Ordering::Relaxed);
            self.counters.expired.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A ticket for a read of `key` about to be sent; `None` while untrusted (no fill then).
    pub(crate) fn ticket(&self, key: &str) -> Option<FillTicket> {
        // Epochs first, trust last: a loss that happens in between is caught by the epoch.
        let stripe = self.stripe(key);
        let ticket = FillTicket {
            stripe,
            stripe_epoch: self.stripes[stripe].load(Ordering::Acquire),
            global_epoch: self.global.load(Ordering::Acquire),
            taken: Deadline::now(),
        };
        self.trusted.load(Ordering::Acquire).then_some(ticket)
    }

    /// Whether nothing invalidated the ticket's key (nor flushed or untrusted the L1) since
    /// `ticket` was taken: a read sent then is as current as a fill of it would be.
    pub(crate) fn ticket_is_current(&self, ticket: &FillTicket) -> bool {
        self.trusted.load(Ordering::Acquire)
            && self.global.load(Ordering::Acquire) == ticket.global_epoch
            && self.stripes[ticket.stripe].load(Ordering::Acquire) == ticket.stripe_epoch
    }

    /// Insert `entry` for `key` if nothing invalidated it since `ticket` was taken. The entry
    /// lives for the L1 TTL, capped by `server_ttl` (the key's PTTL read with the value,
    /// counted from when the ticket was taken, before the read was sent) minus a margin, so it
    /// never outlives the Redis entry; a zero `server_ttl` (a key in its last millisecond, or
    /// gone by the time its PTTL was read) is not kept. Returns whether it was inserted.
    ///
    /// The payload is copied into a buffer of its own: a reply's bytes share the driver's read
    /// buffer (kilobytes, with other replies), which a kept entry would hold alive, so the
    /// L1's byte bound would not bound its memory.
    pub(crate) fn fill(
        &self,
        ticket: FillTicket,
        key: &str,
        mut entry: Entry,
        server_ttl: Option<Duration>,
    ) -> bool {
        let mut deadline = Deadline::after(self.ttl);
        if let Some(server) = server_ttl {
            // Keep clear of the server's expiry by a tenth (at least 1 ms).
            let margin = (server / 10).max(Duration::from_millis(1));
            let capped = server.saturating_sub(margin);
            if capped.is_zero() {
                return false;
            }
            deadline = deadline.min(ticket.taken.plus(capped));
        }
        let charge = key.len() + entry.payload.len() + ENTRY_OVERHEAD;
        if self.ttl.is_zero() || charge > self.max_bytes || deadline <= Deadline::now() {
            return false;
        }
        entry.payload = Bytes::copy_from_slice(&entry.payload);
        let shared_key = SmolStr::new(key);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let replaced = {
            // The shard lock orders this check against invalidate(): bump, then remove.
            let map_entry = self.map.entry(shared_key.clone());
            let valid = self.ticket_is_current(&ticket);
            if !valid {
                None
            } else {
                let slot = Slot {
                    entry,
                    deadline,
                    charge,
                    id,
                    freq: AtomicU8::new(0),
                };
                Some(match map_entry {
                    dashmap::Entry::Occupied(mut o) => o.insert(slot).charge,
                    dashmap::Entry::Vacant(v) => {
                        v.insert(slot);
                        0
                    }
                })
            }
        };
        let Some(old_charge) = replaced else {
            self.counters.fills_refused.fetch_add(1, Ordering::Relaxed);
            return false;
        };
        self.counters.fills.fetch_add(1, Ordering::Relaxed);
        self.bytes
            .fetch_add(charge as i64 - old_charge as i64, Ordering::Relaxed);
        let hash = self.hasher.hash_one(key);
        let mut fifos = self.fifos.lock().unwrap_or_else(|p| p.into_inner());
        fifos.admit((shared_key, id), hash);
        self.evict_over_bounds(&mut fifos);
        self.trim_tombstones(&mut fifos);
        true
    }

    /// Evict in S3-FIFO order until within both bounds.
    fn evict_over_bounds(&self, fifos: &mut Fifos) {
        let small_target = (self.max_entries / 10).max(1);
        // Each entry is passed at most MAX_FREQ + 1 times before it leaves: a finite walk
        // even if concurrent fills keep the map over its bound.
        let mut budget = (fifos.len() + 1) * (usize::from(MAX_FREQ) + 2);
        // Counted once (a map's length visits every shard), then kept as entries leave;
        // a concurrent fill runs its own eviction after its insert.
        let mut len = self.map.len();
        let over = |len: usize| {
            len > self.max_entries || self.bytes.load(Ordering::Relaxed) > self.max_bytes as i64
        };
        while over(len) && budget > 0 {
            budget -= 1;
            let from_small = fifos.small.len() >= small_target || fifos.main.is_empty();
            let popped = if from_small {
                fifos.small.pop_front()
            } else {
                fifos.main.pop_front()
            };
            let Some((key, id)) = popped else { break };
            let fate = match self.map.get(&*key) {
                Some(slot) if slot.id == id => {
                    let freq = slot.freq.load(Ordering::Relaxed);
                    if slot.deadline.has_passed() {
                        Fate::Expired
                    } else if from_small && freq > 1 {
                        // Read again while in small: it has earned main, starting afresh.
                        slot.freq.store(0, Ordering::Relaxed);
                        Fate::Again
                    } else if !from_small && freq > 0 {
                        slot.freq.store(freq - 1, Ordering::Relaxed);
                        Fate::Again
                    } else {
                        Fate::Evict
                    }
                }
                _ => Fate::Gone,
            };
            match fate {
                Fate::Gone => {}
                Fate::Again => fifos.main.push_back((key, id)),
                Fate::Expired | Fate::Evict => {
                    if let Some((_, slot)) = self.map.remove_if(&*key, |_, s| s.id == id) {
                        len = len.saturating_sub(1);
                        self.bytes.fetch_sub(slot.charge as i64, Ordering::Relaxed);
                        let cause = match fate {
                            Fate::Expired => &self.counters.expired,
                            _ => &self.counters.evicted_for_size,
                        };
                        cause.fetch_add(1, Ordering::Relaxed);
                    }
                    if from_small && matches!(fate, Fate::Evict) {
                        fifos.remember(self.hasher.hash_one(&*key), id, self.max_entries);
                    }
                }
            }
        }
    }

    /// Keep the FIFOs within twice the entry bound: invalidations leave tombstones that
    /// eviction may not reach while the map stays under its bounds. A few steps per fill,
    /// each dropping a tombstone or moving a live entry to the back of its FIFO.
    fn trim_tombstones(&self, fifos: &mut Fifos) {
        let limit = self.max_entries.saturating_mul(2).saturating_add(16);
        for _ in 0..4 {
            if fifos.len() <= limit {
                return;
            }
            let queue = if fifos.small.len() >= fifos.main.len() {
                &mut fifos.small
            } else {
                &mut fifos.main
            };
            let Some((key, id)) = queue.pop_front() else {
                return;
            };
            if self.map.get(&*key).is_some_and(|slot| slot.id == id) {
                queue.push_back((key, id));
            }
        }
    }

    /// Evict `key` and refuse fills of it that are in flight.
    pub(crate) fn invalidate(&self, key: &str) {
        let stripe = self.stripe(key);
        self.stripes[stripe].fetch_add(1, Ordering::AcqRel);
        if let Some((_, slot)) = self.map.remove(key) {
            self.bytes.fetch_sub(slot.charge as i64, Ordering::Relaxed);
        }
        if self.serve_stale_for.is_some() {
            // A local write while cut off: never answer with the value it replaced.
            if let Some(set) = self
                .stale
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_mut()
            {
                set.entries.remove(key);
            }
        }
        self.counters.invalidations.fetch_add(1, Ordering::Relaxed);
        let at = u64::try_from(self.created.elapsed().as_nanos()).unwrap_or(u64::MAX - 1);
        self.last_invalidation.store(at + 1, Ordering::Relaxed);
    }

    /// When the last invalidation was applied (measures invalidation latency without
    /// polling in a hot loop).
    pub fn last_invalidation(&self) -> Option<Instant> {
        match self.last_invalidation.load(Ordering::Relaxed) {
            0 => None,
            n => Some(self.created + Duration::from_nanos(n - 1)),
        }
    }

    /// Empty the L1 and refuse every fill in flight. With `trusted = false` no fill happens
    /// until [`L1::confirm`].
    pub(crate) fn flush(&self, reason: FlushReason, trusted: bool) {
        if !trusted {
            self.trusted.store(false, Ordering::Release);
        }
        self.global.fetch_add(1, Ordering::AcqRel);
        let keep_aside = self.serve_stale_for.is_some()
            && !trusted
            && !matches!(reason, FlushReason::ServerFlush | FlushReason::Manual);
        if keep_aside {
            let mut stale = self.stale.lock().unwrap_or_else(|p| p.into_inner());
            // A second loss before a confirmation keeps the first one's time: the entries
            // are as old as the first loss.
            let set = stale.get_or_insert_with(|| StaleSet {
                since: Instant::now(),
                entries: Default::default(),
            });
            let now = Deadline::now();
            for slot in self.map.iter() {
                if slot.deadline > now {
                    set.entries
                        .insert(slot.key().to_string(), slot.value().entry.clone());
                }
            }
        } else {
            self.drop_stale();
        }
        // FIFOs first: a fill inserts into the map before it takes a FIFO position, so one
        // that lands after this clear keeps both, and none keeps an entry without a position.
        self.fifos.lock().unwrap_or_else(|p| p.into_inner()).clear();
        // Each removed entry's own charge, never a reset to zero: a fill that inserted
        // before this clear may add its charge after it, and must find it subtracted once.
        let mut freed = 0usize;
        self.map.retain(|_, slot| {
            freed += slot.charge;
            false
        });
        self.bytes.fetch_sub(freed as i64, Ordering::Relaxed);
        *self
            .counters
            .flushes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(reason)
            .or_default() += 1;
    }

    /// Tracking is confirmed on a live connection: fills may resume.
    pub(crate) fn confirm(&self) {
        // Coherence is back: what was kept aside is never served again, not even as stale.
        self.drop_stale();
        // A fill ticketed before this point was ticketed while untrusted and never fills.
        self.global.fetch_add(1, Ordering::AcqRel);
        self.trusted.store(true, Ordering::Release);
    }

    /// Keys invalidated so far: one relaxed load, cheap enough to poll.
    pub fn invalidations(&self) -> u64 {
        self.counters.invalidations.load(Ordering::Relaxed)
    }

    /// Whether fills are allowed now.
    pub fn is_trusted(&self) -> bool {
        self.trusted.load(Ordering::Acquire)
    }

    /// Remove every entry past its deadline (the cache actor calls this periodically).
    pub fn sweep(&self) {
        if let Some(max) = self.serve_stale_for {
            let mut stale = self.stale.lock().unwrap_or_else(|p| p.into_inner());
            if stale.as_ref().is_some_and(|s| s.since.elapsed() > max) {
                *stale = None;
            }
        }
        let now = Deadline::now();
        let mut evicted = 0u64;
        let mut freed = 0usize;
        self.map.retain(|_, slot| {
            if slot.deadline <= now {
                evicted += 1;
                freed += slot.charge;
                false
            } else {
                true
            }
        });
        self.bytes.fetch_sub(freed as i64, Ordering::Relaxed);
        self.counters.expired.fetch_add(evicted, Ordering::Relaxed);
    }

    /// Entries now.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// A copy of the statistics.
    pub fn stats(&self) -> L1Stats {
        let c = &self.counters;
        L1Stats {
            hits: 0,
            fills: c.fills.load(Ordering::Relaxed),
            fills_refused: c.fills_refused.load(Ordering::Relaxed),
            invalidations: c.invalidations.load(Ordering::Relaxed),
            evictions: c.expired.load(Ordering::Relaxed)
                + c.evicted_for_size.load(Ordering::Relaxed),
            evictions_expired: c.expired.load(Ordering::Relaxed),
            evictions_size: c.evicted_for_size.load(Ordering::Relaxed),
            flushes: c
                .flushes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .map(|(r, n)| (r.label(), *n))
                .collect(),
            entries: self.map.len(),
            bytes: self.bytes.load(Ordering::Relaxed).max(0) as usize,
            trusted: self.is_trusted(),
            stale_entries: self.stale_entries(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l1() -> L1 {
        let l1 = L1::new(Duration::from_secs(10), 100, 1 << 20);
        l1.confirm();
        l1
    }

    fn b(s: &str) -> Entry {
        super::super::codec::decode(super::super::codec::encode_raw(None, s.as_bytes())).unwrap()
    }

    #[test]
    fn a_fill_that_raced_an_invalidation_is_refused() {
        let l1 = l1();
        let t = l1.ticket("k").unwrap();
        l1.invalidate("k");
        assert!(!l1.fill(t, "k", b("old"), None));
        assert!(l1.get("k").is_none());
        let t = l1.ticket("k").unwrap();
        assert!(l1.fill(t, "k", b("new"), None));
        assert_eq!(l1.get("k").unwrap(), b("new"));
    }

    #[test]
    fn a_fill_that_raced_a_flush_is_refused_and_untrusted_refuses_tickets() {
        let l1 = l1();
        let t = l1.ticket("k").unwrap();
        l1.flush(FlushReason::TrackingLost, false);
        assert!(!l1.fill(t, "k", b("v"), None));
        assert!(l1.ticket("k").is_none());
        l1.confirm();
        let t = l1.ticket("k").unwrap();
        assert!(l1.fill(t, "k", b("v"), None));
        assert_eq!(l1.stats().flushes.get("tracking_lost"), Some(&1));
    }

    #[test]
    fn entries_are_capped_by_the_server_ttl() {
        let l1 = l1();
        let t = l1.ticket("k").unwrap();
        assert!(l1.fill(t, "k", b("v"), Some(Duration::from_millis(20))));
        std::thread::sleep(Duration::from_millis(25));
        assert!(l1.get("k").is_none());
        let t = l1.ticket("k").unwrap();
        assert!(!l1.fill(t, "k", b("v"), Some(Duration::ZERO)));
    }

    #[test]
    fn the_server_ttl_counts_from_the_ticket_not_the_fill() {
        // The PTTL was measured by the server after the ticket was taken; a fill that comes
        // 30 ms later must not give the entry the whole 40 ms (less the margin) again.
        let l1 = l1();
        let t = l1.ticket("k").unwrap();
        std::thread::sleep(Duration::from_millis(30));
        assert!(l1.fill(t, "k", b("v"), Some(Duration::from_millis(40))));
        std::thread::sleep(Duration::from_millis(15));
        assert!(l1.get("k").is_none(), "served past ticket + PTTL − margin");
        // A cap already past when the reply comes is not kept at all.
        let t = l1.ticket("k").unwrap();
        std::thread::sleep(Duration::from_millis(25));
        assert!(!l1.fill(t, "k", b("v"), Some(Duration::from_millis(20))));
    }

    #[test]
    fn a_kept_entry_does_not_share_the_reply_buffer() {
        // A reply's payload is a slice of the driver's read buffer: kept as is, it would keep
        // the whole buffer alive.
        let l1 = l1();
        let buffer =
            bytes::Bytes::from(super::super::codec::encode_raw(None, &[7u8; 4096]).to_vec());
        let entry = super::super::codec::decode(buffer.clone()).unwrap();
        let t = l1.ticket("k").unwrap();
        assert!(l1.fill(t, "k", entry.clone(), None));
        let kept = l1.get("k").unwrap();
        assert_eq!(kept, entry);
        let range = buffer.as_ptr_range();
        assert!(
            !range.contains(&kept.payload.as_ptr()),
            "the kept payload points into the reply's buffer"
        );
    }

    #[test]
    fn an_entry_is_never_a_hit_once_its_deadline_has_passed() {
        // Deadlines shorter than, about and longer than the coarse clock's tick (hits read
        // the coarse clock first): the first read after the deadline must miss.
        for ttl_ms in [1u64, 3, 6, 11] {
            let ttl = Duration::from_millis(ttl_ms);
            let l1 = L1::new(ttl, 16, 1 << 20);
            l1.confirm();
            let t = l1.ticket("k").unwrap();
            assert!(l1.fill(t, "k", b("v"), None));
            let filled = Instant::now();
            let give_up = filled + Duration::from_secs(2);
            while filled.elapsed() < ttl {
                assert!(Instant::now() < give_up);
                std::hint::spin_loop();
            }
            assert!(
                l1.get("k").is_none(),
                "{ttl_ms} ms entry served past its deadline"
            );
            assert_eq!(l1.stats().evictions_expired, 1);
        }
    }

    #[test]
    fn concurrent_fills_invalidations_and_flushes_never_break_the_accounting() {
        let l1 = std::sync::Arc::new(L1::new(Duration::from_secs(10), 64, 8_000));
        l1.confirm();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let l1 = l1.clone();
                std::thread::spawn(move || {
                    for i in 0..20_000u32 {
                        let k = format!("k{}", (i * 7 + t) % 100);
                        match i % 5 {
                            0 => l1.invalidate(&k),
                            1 if i % 1000 == 1 => l1.flush(FlushReason::Manual, true),
                            2 => {
                                l1.get(&k);
                            }
                            _ => {
                                if let Some(ticket) = l1.ticket(&k) {
                                    l1.fill(ticket, &k, b("value"), None);
                                }
                            }
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("no overflow or panic");
        }
        let stats = l1.stats();
        assert!(stats.entries <= 64 && stats.bytes <= 8_000, "{stats:?}");
    }

    fn put(l1: &L1, k: &str) -> bool {
        let t = l1.ticket(k).unwrap();
        l1.fill(t, k, b("v"), None)
    }

    #[test]
    fn frequently_read_entries_survive_a_scan_of_one_time_keys() {
        let l1 = L1::new(Duration::from_secs(10), 100, 1 << 20);
        l1.confirm();
        for i in 0..50 {
            put(&l1, &format!("hot{i}"));
        }
        for _ in 0..3 {
            for i in 0..50 {
                assert!(l1.get(&format!("hot{i}")).is_some());
            }
        }
        for i in 0..2_000 {
            put(&l1, &format!("scan{i}"));
            // The hot set keeps being read while the scan goes on, as a working set does.
            if i % 20 == 0 {
                for h in 0..50 {
                    l1.get(&format!("hot{h}"));
                }
            }
        }
        let kept = (0..50)
            .filter(|i| l1.get(&format!("hot{i}")).is_some())
            .count();
        assert!(
            kept >= 45,
            "only {kept} of 50 hot entries survived the scan"
        );
        assert!(l1.len() <= 100);
        let stats = l1.stats();
        assert!(stats.evictions_size >= 1_900, "{stats:?}");
        assert_eq!(
            stats.evictions,
            stats.evictions_size + stats.evictions_expired
        );
    }

    #[test]
    fn a_key_evicted_from_small_and_seen_again_goes_to_main() {
        let l1 = L1::new(Duration::from_secs(10), 20, 1 << 20);
        l1.confirm();
        put(&l1, "returning");
        for i in 0..40 {
            put(&l1, &format!("filler{i}"));
        }
        assert!(
            l1.get("returning").is_none(),
            "evicted once, as a one-time key"
        );
        put(&l1, "returning");
        // Now in main: a further scan of one-time keys passes it by (they leave from small).
        for i in 0..15 {
            put(&l1, &format!("more{i}"));
        }
        assert!(l1.get("returning").is_some());
    }

    #[test]
    fn expiries_and_size_evictions_are_counted_apart() {
        let l1 = L1::new(Duration::from_millis(20), 10, 1 << 20);
        l1.confirm();
        for i in 0..10 {
            put(&l1, &format!("old{i}"));
        }
        std::thread::sleep(Duration::from_millis(30));
        for i in 0..10 {
            put(&l1, &format!("new{i}"));
        }
        let stats = l1.stats();
        assert_eq!(stats.evictions_expired, 10, "{stats:?}");
        assert_eq!(stats.evictions_size, 0, "{stats:?}");
        put(&l1, "one-more");
        assert_eq!(l1.stats().evictions_size, 1);
    }

    #[test]
    fn invalidations_leave_no_unbounded_trail() {
        let l1 = L1::new(Duration::from_secs(10), 10, 1 << 20);
        l1.confirm();
        for i in 0..10_000 {
            let k = format!("k{}", i % 7);
            put(&l1, &k);
            l1.invalidate(&k);
        }
        let fifos = l1.fifos.lock().unwrap().len();
        assert!(
            fifos <= 2 * 10 + 16 + 1,
            "{fifos} FIFO positions for an empty L1"
        );
        assert!(l1.is_empty());
    }

    #[test]
    fn bounds_hold() {
        let l1 = L1::new(Duration::from_secs(10), 50, 10_000);
        l1.confirm();
        for i in 0..500 {
            let k = format!("key{i}");
            let t = l1.ticket(&k).unwrap();
            l1.fill(t, &k, b(&"x".repeat(50)), None);
            assert!(l1.len() <= 50);
            assert!(l1.stats().bytes <= 10_000);
        }
        assert!(l1.stats().evictions > 0);
    }
}

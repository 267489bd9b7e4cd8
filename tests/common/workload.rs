//! A workload that keeps every contract in flight on one supervisor: counters, cache reads and
//! versioned writes (with an L1), locks, idempotency records, snapshots, rate limits and
//! breakers. Each call is tallied by outcome kind, and bounded: a call that takes longer than
//! the bound counts as `Unbounded`. Shared by the chaos test (`tests/outcomes.rs`) and the soak
//! (`benches/soak.rs`).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use forze_redis::cache::CacheKey;
use forze_redis::counter::CounterId;
use forze_redis::idempotency::{Begin, IdemRequest};
use forze_redis::lock::LockId;
use forze_redis::snapshot::RunId;
use forze_redis::Error;
use forze_redis_actors::ForzeHandle;

/// The resources the workload uses (TOML).
pub const RESOURCES: &str = r#"
[counters.orders]
[caches.plain]
ttl = "60s"
[caches.plain.l1]
ttl = "30s"
max_entries = 1000
[locks.jobs]
lease = "3s"
[idempotency.pay]
[snapshots.search]
[rate_limits.api]
permits = 50
per = "1s"
[breakers.down]
closed_cache_ttl = "1ms"
"#;

/// Outcomes of one operation's calls, by kind (`Ok`, an `ErrorKind` name, or `Unbounded`).
#[derive(Default)]
pub struct Tally {
    calls: AtomicU64,
    kinds: Mutex<BTreeMap<String, u64>>,
}

impl Tally {
    /// Count one outcome.
    pub fn record<T>(&self, r: &Result<T, Error>) {
        self.count(match r {
            Ok(_) => "Ok".to_string(),
            Err(e) => format!("{:?}", e.kind()),
        });
    }

    fn count(&self, kind: String) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        *self
            .kinds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(kind)
            .or_default() += 1;
    }

    /// Calls made.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// Outcomes by kind.
    pub fn kinds(&self) -> BTreeMap<String, u64> {
        self.kinds.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// One tally per operation that sends one write, plus the reads.
#[derive(Default)]
pub struct Tallies {
    pub incr: Tally,
    pub cache_get: Tally,
    pub set_versioned: Tally,
    pub lock_acquire: Tally,
    pub lock_release: Tally,
    pub idem_begin: Tally,
    pub idem_commit: Tally,
    pub snap_put: Tally,
    pub snap_page: Tally,
    pub limit: Tally,
    pub breaker: Tally,
    /// Permits the shared bucket on Redis granted.
    pub granted_by_redis: AtomicU64,
}

impl Tallies {
    /// Every tally with its operation's name.
    pub fn all(&self) -> [(&'static str, &Tally); 11] {
        [
            ("counter incr", &self.incr),
            ("cache get", &self.cache_get),
            ("cache set_versioned", &self.set_versioned),
            ("lock acquire", &self.lock_acquire),
            ("lock release", &self.lock_release),
            ("idempotency begin", &self.idem_begin),
            ("idempotency commit", &self.idem_commit),
            ("snapshot put", &self.snap_put),
            ("snapshot page", &self.snap_page),
            ("rate limit", &self.limit),
            ("breaker record", &self.breaker),
        ]
    }

    /// Outcomes of every operation, summed by kind.
    pub fn kinds(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for (_, t) in self.all() {
            for (k, n) in t.kinds() {
                *out.entry(k).or_default() += n;
            }
        }
        out
    }
}

/// Run `call`, tallied in `tally`; past `bound` it is abandoned and counted `Unbounded`.
async fn timed<T>(
    tally: &Tally,
    bound: Duration,
    call: impl Future<Output = Result<T, Error>>,
) -> Option<Result<T, Error>> {
    match tokio::time::timeout(bound, call).await {
        Ok(r) => {
            tally.record(&r);
            Some(r)
        }
        Err(_) => {
            tally.count("Unbounded".into());
            None
        }
    }
}

/// Drive every contract on `f` until `stop`; `w` is the worker number (its keys are its own).
pub async fn drive(
    f: ForzeHandle,
    w: usize,
    t: Arc<Tallies>,
    stop: Arc<AtomicBool>,
    bound: Duration,
) {
    let counter = f.counter("orders").unwrap();
    let cache = f.cache("plain").unwrap();
    let locks = f.lock("jobs").unwrap();
    let idem = f.idempotency("pay").unwrap();
    let snaps = f.snapshot("search").unwrap();
    let limit = f.rate_limit("api").unwrap();
    let breaker = f.breaker("down").unwrap();
    let mut n: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let incr = timed(&t.incr, bound, counter.incr(&CounterId::main(), 1)).await;
        let failing = !matches!(incr, Some(Ok(_)));
        // A plain key read through the L1 (filled on a miss), and a versioned one written.
        let plain = CacheKey::new(format!("p{w}-{}", n % 64));
        if let Some(Ok(None)) = timed(&t.cache_get, bound, cache.get::<u64>(&plain)).await {
            let _ = cache.set(&plain, &n, None).await;
        }
        let key = CacheKey::new(format!("v{w}-{}", n % 64));
        timed(
            &t.set_versioned,
            bound,
            cache.set_versioned(&key, n, &n, None),
        )
        .await;
        let acquired = timed(
            &t.lock_acquire,
            bound,
            locks.try_acquire(&LockId::new(format!("l{w}"))),
        )
        .await;
        if let Some(Ok(Some(guard))) = acquired {
            timed(&t.lock_release, bound, guard.release()).await;
        }
        let req = IdemRequest::new("charge", format!("w{w}-{n}"), "h");
        let begun = timed(&t.idem_begin, bound, idem.begin(&req)).await;
        if let Some(Ok(Begin::Proceed(claim))) = begun {
            timed(&t.idem_commit, bound, idem.commit(&claim, b"done")).await;
        }
        let run = RunId::new(format!("r{w}-{n}"));
        let ids = ["a".to_string(), "b".to_string()];
        timed(&t.snap_put, bound, snaps.put(&run, "fp", &ids)).await;
        timed(&t.snap_page, bound, snaps.page(&run, 0, 2, Some("fp"))).await;
        if let Some(Ok(d)) = timed(&t.limit, bound, limit.try_acquire("route", 1)).await {
            if d.allowed && d.decided_by == forze_redis::ratelimit::DecidedBy::Redis {
                t.granted_by_redis.fetch_add(1, Ordering::Relaxed);
            }
        }
        timed(
            &t.breaker,
            bound,
            breaker.record("route", !n.is_multiple_of(7)),
        )
        .await;
        // While Redis is down most calls fail at once, without awaiting anything: a loop of
        // them would never yield, and would starve the runtime's timers. Callers back off;
        // so does this one.
        if failing {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

//! The cache conformance battery (local backend and every server found) and the L1
//! coherence drills across replicas: cross-replica eviction, a 10 000-iteration read/write race
//! through a delaying proxy, get_or_load single-flight, torn-version checks.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{config, spawn_ready, Backend};
use forze_redis::cache::CacheKey;
use forze_redis::keys::TenantId;
use forze_redis::ErrorKind;
use forze_redis_actors::{Cache, ForzeHandle};
use forze_redis_testkit::{server_binaries, wait_until_async, FaultProxy, TestServer};
use serde::{Deserialize, Serialize};

pub const RESOURCES: &str = r#"
[caches.plain]
ttl = "120s"
[caches.hot]
ttl = "120s"
[caches.hot.l1]
ttl = "60s"
[caches.sliding]
ttl = "10s"
sliding_ttl = "3s"
[caches.tenanted]
tenant_aware = true
[caches.tenanted.l1]
"#;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Doc {
    id: u64,
    body: String,
}

fn k(s: &str) -> CacheKey {
    CacheKey::new(s)
}

async fn replicas(url: Option<&str>, test: &str, n: usize) -> Vec<ForzeHandle> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(spawn_ready(config(url, test, RESOURCES)).await);
    }
    out
}

/// Wait until the tracking subscriber of `forze` has confirmed tracking.
async fn tracking_confirmed(forze: &ForzeHandle) {
    wait_until_async(Duration::from_secs(10), "tracking confirmed", || async {
        matches!(forze.tracking_stats().await, Ok(Some(s)) if s.confirmed)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_conformance_battery_on_every_backend() {
    for backend in Backend::batteries() {
        let label = backend.label();
        eprintln!("cache battery on {label}");
        let forze = spawn_ready(config(backend.url().as_deref(), "cache-battery", RESOURCES)).await;
        if forze.is_redis() {
            tracking_confirmed(&forze).await;
        }
        for name in ["plain", "hot"] {
            let cache = forze.cache(name).unwrap();
            values_round_trip(&cache, &label).await;
            batches_keep_input_order(&cache, &label).await;
            versioned_writes_never_go_back(&cache, &label).await;
            deletes_and_exists(&cache, &label).await;
            per_call_ttl_expires(&cache, &label).await;
        }
        sliding_ttl_only_extends(&forze, &backend, &label).await;
        corrupt_values_are_counted_misses(&forze, &backend, &label).await;
        a_versioned_write_replaces_what_no_reader_can_decode(&forze, &backend, &label).await;
        tenants_are_isolated_and_required(&forze, &label).await;
        invalid_input_is_a_typed_error(&forze, &label).await;
        get_or_load_runs_the_loader_once_for_100_callers(&forze, &label).await;
        forze.shutdown().await.unwrap();
    }
}

async fn values_round_trip(cache: &Cache, label: &str) {
    let doc = Doc {
        id: 7,
        body: "héllo".into(),
    };
    assert_eq!(cache.get::<Doc>(&k("rt")).await.unwrap(), None, "{label}");
    cache.set(&k("rt"), &doc, None).await.unwrap();
    assert_eq!(
        cache.get::<Doc>(&k("rt")).await.unwrap(),
        Some(doc.clone()),
        "{label}"
    );
    // Twice: the second read may come from the L1.
    assert_eq!(
        cache.get::<Doc>(&k("rt")).await.unwrap(),
        Some(doc),
        "{label}"
    );
    for raw in [
        &b""[..],
        b"\xff\xfe\x00 not utf-8",
        b"{\"json\": \"bytes\"}",
    ] {
        cache.set_bytes(&k("raw"), raw, None).await.unwrap();
        for _ in 0..2 {
            let got = cache.get_bytes(&k("raw")).await.unwrap().unwrap();
            assert_eq!(&got[..], raw, "{label}: raw bytes round-trip exactly");
        }
    }
    // Read-your-own-writes: the write is visible at once on this replica, L1 or not.
    for i in 0..20u64 {
        cache.set(&k("ryow"), &i, None).await.unwrap();
        assert_eq!(
            cache.get::<u64>(&k("ryow")).await.unwrap(),
            Some(i),
            "{label}"
        );
    }
}

async fn batches_keep_input_order(cache: &Cache, label: &str) {
    let entries: Vec<(CacheKey, u64)> = (0..10).map(|i| (k(&format!("b{i}")), i)).collect();
    cache.set_many(&entries, None).await.unwrap();
    let keys: Vec<CacheKey> = ["b3", "missing", "b0", "b9", "b3"].map(k).to_vec();
    let got: Vec<Option<u64>> = cache.get_many(&keys).await.unwrap();
    assert_eq!(
        got,
        vec![Some(3), None, Some(0), Some(9), Some(3)],
        "{label}"
    );
    assert!(cache.get_many::<u64>(&[]).await.unwrap().is_empty());
    cache.set_many::<u64>(&[], None).await.unwrap();
}

async fn versioned_writes_never_go_back(cache: &Cache, label: &str) {
    let key = k("versioned");
    assert!(cache.set_versioned(&key, 2, "two", None).await.unwrap());
    assert!(
        !cache.set_versioned(&key, 1, "one", None).await.unwrap(),
        "{label}"
    );
    assert_eq!(
        cache.get_versioned::<String>(&key).await.unwrap(),
        Some((2, "two".to_string())),
        "{label}"
    );
    // Re-writing the same version is accepted (a replayed write is harmless).
    assert!(cache.set_versioned(&key, 2, "two", None).await.unwrap());
    let applied = cache
        .set_many_versioned(
            &[(key.clone(), 3, "three"), (k("versioned2"), 1, "one")],
            None,
        )
        .await
        .unwrap();
    assert_eq!(applied, vec![true, true], "{label}");
    assert_eq!(
        cache.get::<String>(&key).await.unwrap().as_deref(),
        Some("three")
    );
    // A plain value has no version.
    cache.set(&k("plainv"), "p", None).await.unwrap();
    assert_eq!(
        cache.get_versioned::<String>(&k("plainv")).await.unwrap(),
        None
    );
}

async fn deletes_and_exists(cache: &Cache, label: &str) {
    cache.set(&k("d1"), &1, None).await.unwrap();
    cache.set(&k("d2"), &2, None).await.unwrap();
    assert!(cache.exists(&k("d1")).await.unwrap(), "{label}");
    assert!(cache.delete(&k("d1")).await.unwrap(), "{label}");
    assert!(!cache.delete(&k("d1")).await.unwrap(), "{label}");
    assert!(!cache.exists(&k("d1")).await.unwrap(), "{label}");
    assert_eq!(cache.get::<u64>(&k("d1")).await.unwrap(), None);
    let n = cache
        .unlink_many(&[k("d2"), k("never"), k("b1")])
        .await
        .unwrap();
    assert_eq!(n, 2, "{label}");
    assert_eq!(cache.get::<u64>(&k("b1")).await.unwrap(), None);
}

async fn per_call_ttl_expires(cache: &Cache, label: &str) {
    cache
        .set(&k("short"), &1, Some(Duration::from_millis(150)))
        .await
        .unwrap();
    assert_eq!(
        cache.get::<u64>(&k("short")).await.unwrap(),
        Some(1),
        "{label}"
    );
    let c = cache.clone();
    wait_until_async(Duration::from_secs(3), "short entry expired", || {
        let c = c.clone();
        async move { c.get::<u64>(&k("short")).await.unwrap().is_none() }
    })
    .await;
    // A TTL too long for any clock (`Duration::MAX` as "for ever") is kept a century: no
    // panic in embedded mode, no expiry Redis refuses as an overflow.
    cache
        .set(&k("for-ever"), &2, Some(Duration::MAX))
        .await
        .unwrap();
    assert_eq!(
        cache.get::<u64>(&k("for-ever")).await.unwrap(),
        Some(2),
        "{label}"
    );
}

async fn server_pttl(
    backend: &Backend,
    forze: &ForzeHandle,
    cache: &str,
    key: &str,
) -> Option<i64> {
    let _ = forze;
    let full = format!("forze:cache:{{{cache}:_:{key}}}");
    match backend.cmd_for_key(&full, &["PTTL", &full])? {
        forze_redis_testkit::Resp::Integer(ms) => Some(ms),
        other => panic!("PTTL: {other:?}"),
    }
}

async fn sliding_ttl_only_extends(forze: &ForzeHandle, backend: &Backend, label: &str) {
    let cache = forze.cache("sliding").unwrap();
    // A 300 ms entry read with a 3 s sliding TTL lives on.
    cache
        .set(&k("slide"), &1, Some(Duration::from_millis(300)))
        .await
        .unwrap();
    assert_eq!(cache.get::<u64>(&k("slide")).await.unwrap(), Some(1));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        cache.get::<u64>(&k("slide")).await.unwrap(),
        Some(1),
        "{label}: the read extended the entry"
    );
    // A 10 s entry is never shortened to 3 s by a read.
    cache.set(&k("long"), &1, None).await.unwrap();
    cache.get::<u64>(&k("long")).await.unwrap();
    if let Some(pttl) = server_pttl(backend, forze, "sliding", "long").await {
        assert!(pttl > 8_000, "{label}: pttl {pttl} was shortened");
    }
}

async fn corrupt_values_are_counted_misses(forze: &ForzeHandle, backend: &Backend, label: &str) {
    let cache = forze.cache("plain").unwrap();
    cache.set(&k("ok1"), &1u64, None).await.unwrap();
    cache.set(&k("ok2"), &2u64, None).await.unwrap();
    let before = cache.stats().corrupt;
    let bad = "forze:cache:{plain:_:bad}";
    if backend
        .cmd_for_key(bad, &["SET", bad, "not ours"])
        .is_none()
    {
        // Locally, a value of another type is the corrupt case we can produce.
        cache.set(&k("bad"), "a string", None).await.unwrap();
    }
    let got: Vec<Option<u64>> = cache
        .get_many(&[k("ok1"), k("bad"), k("ok2")])
        .await
        .unwrap();
    assert_eq!(
        got,
        vec![Some(1), None, Some(2)],
        "{label}: one corrupt entry fails nothing"
    );
    assert_eq!(cache.get::<u64>(&k("bad")).await.unwrap(), None);
    assert_eq!(cache.stats().corrupt, before + 2, "{label}");
}

/// Stored values that start like a versioned entry but that the decoder refuses (unknown
/// flags, a version that is not 20 digits or does not fit a u64) are misses to every reader,
/// so they must not block versioned writes either.
async fn a_versioned_write_replaces_what_no_reader_can_decode(
    forze: &ForzeHandle,
    backend: &Backend,
    label: &str,
) {
    let cache = forze.cache("plain").unwrap();
    let key = "forze:cache:{plain:_:undecodable}";
    // The marker byte 0xC1 is not UTF-8, so the value is built by a script on the server.
    let put = "redis.call('SET', KEYS[1], string.char(193, tonumber(ARGV[1])) .. ARGV[2])";
    let forms = [
        ("5", "99999999999999999999\"x\""),
        ("1", "9999999999999999999x\"x\""),
        ("1", "99999999999999999999\"x\""),
        ("3", "1844674407370955161"),
    ];
    for (flags, rest) in forms {
        if backend
            .cmd_for_key(key, &["EVAL", put, "1", key, flags, rest])
            .is_none()
        {
            return; // Locally nothing foreign can be stored.
        }
        assert_eq!(
            cache.get::<String>(&k("undecodable")).await.unwrap(),
            None,
            "{label}: {flags} {rest}"
        );
        assert!(
            cache
                .set_versioned(&k("undecodable"), 1, "one", None)
                .await
                .unwrap(),
            "{label}: a value no reader decodes blocked a versioned write ({flags} {rest})"
        );
        assert_eq!(
            cache
                .get_versioned::<String>(&k("undecodable"))
                .await
                .unwrap(),
            Some((1, "one".to_string())),
            "{label}"
        );
    }
}

async fn tenants_are_isolated_and_required(forze: &ForzeHandle, label: &str) {
    let cache = forze.cache("tenanted").unwrap();
    let a = CacheKey::new("k").for_tenant(TenantId::new("a").unwrap());
    let b = CacheKey::new("k").for_tenant(TenantId::new("b:x").unwrap());
    cache.set(&a, "for a", None).await.unwrap();
    assert_eq!(cache.get::<String>(&b).await.unwrap(), None, "{label}");
    assert_eq!(
        cache.get::<String>(&a).await.unwrap().as_deref(),
        Some("for a")
    );
    let err = cache.get::<String>(&k("k")).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::TenantRequired, "{label}");
}

async fn invalid_input_is_a_typed_error(forze: &ForzeHandle, label: &str) {
    let cache = forze.cache("plain").unwrap();
    let e = cache.set(&k(""), &1, None).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Validation, "{label}");
    let e = cache
        .set(&k("x"), &1, Some(Duration::ZERO))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Validation, "{label}");
    assert_eq!(
        forze.cache("nope").unwrap_err().kind(),
        ErrorKind::Validation
    );
    // Keys with separators and braces are just keys.
    cache.set(&k("a:{b}%c"), &5, None).await.unwrap();
    assert_eq!(cache.get::<u64>(&k("a:{b}%c")).await.unwrap(), Some(5));
    assert_eq!(cache.get::<u64>(&k("a")).await.unwrap(), None);
}

async fn get_or_load_runs_the_loader_once_for_100_callers(forze: &ForzeHandle, label: &str) {
    let cache = forze.cache("hot").unwrap();
    let runs = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let (cache, runs) = (cache.clone(), runs.clone());
        tasks.push(tokio::spawn(async move {
            cache
                .get_or_load(&k("loaded"), None, || async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Ok::<_, std::io::Error>(Doc {
                        id: 1,
                        body: "loaded".into(),
                    })
                })
                .await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap().body, "loaded", "{label}");
    }
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "{label}: the loader ran more than once"
    );
    // A failing loader's error reaches every waiting caller, as the loader's own type (one
    // error shared by all); the next call loads again.
    #[derive(Debug, PartialEq)]
    struct BackendDown(u32);
    impl std::fmt::Display for BackendDown {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "backend down ({})", self.0)
        }
    }
    let mut tasks = Vec::new();
    for i in 0..10 {
        let cache = cache.clone();
        tasks.push(tokio::spawn(async move {
            cache
                .get_or_load(&k("failing"), None, || async move {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Err::<u64, _>(BackendDown(i))
                })
                .await
        }));
    }
    let mut codes = HashSet::new();
    for t in tasks {
        let e = t.await.unwrap().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Loader, "{label}");
        assert!(e.to_string().contains("backend down"));
        let typed = e
            .loader_error::<BackendDown>()
            .expect("the loader's own error");
        codes.insert(typed.0);
        assert!(e.loader_error::<String>().is_none());
    }
    assert_eq!(
        codes.len(),
        1,
        "{label}: one load, one error shared by every waiter"
    );
    let v: u64 = cache
        .get_or_load(&k("failing"), None, || async { Ok::<_, String>(9) })
        .await
        .unwrap();
    assert_eq!(v, 9);
}

/// A value loaded by `get_or_load` never replaces a write made while it loaded: not a write
/// or delete through the same handle (the loaded value may be older than it), not a value
/// another replica stored meanwhile (`SET … NX`: a stored value is newer than the load).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_never_overwrites_a_write_made_while_it_ran() {
    for backend in Backend::batteries() {
        let label = backend.label();
        let url = backend.url();
        let reps = replicas(url.as_deref(), "load-race", 2).await;
        for name in ["plain", "hot"] {
            let (a, b) = (reps[0].cache(name).unwrap(), reps[1].cache(name).unwrap());
            // (writer, delete instead of set); another replica only on a server (embedded
            // replicas do not share their state).
            let mut cases = vec![(a.clone(), false), (a.clone(), true)];
            if url.is_some() {
                cases.push((b.clone(), false));
            }
            for (i, (writer, delete)) in cases.into_iter().enumerate() {
                let key = k(&format!("loading-{i}"));
                a.set(&key, "before", None).await.unwrap();
                a.unlink(&key).await.unwrap();
                let key2 = key.clone();
                let loaded = a
                    .get_or_load(&key, None, || async move {
                        // The database said "old"; meanwhile a writer changes the key.
                        if delete {
                            writer.unlink(&key2).await.unwrap();
                        } else {
                            writer.set(&key2, "new", None).await.unwrap();
                        }
                        Ok::<_, String>("old".to_string())
                    })
                    .await
                    .unwrap();
                assert_eq!(loaded, "old", "{label}");
                let want = (!delete).then(|| "new".to_string());
                assert_eq!(
                    a.get::<String>(&key).await.unwrap(),
                    want,
                    "{label}: {name}: the load's older value replaced a write (case {i})"
                );
            }
        }
        for r in reps {
            r.shutdown().await.unwrap();
        }
    }
}

/// A server reached by its IPv6 address (`redis://[::1]:<port>`): the tracking connection
/// connects too, so the L1 is confirmed and kept coherent by pushes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipv6_server_gets_a_tracked_l1() {
    for bin in server_binaries() {
        let server = TestServer::start_with(&bin, None, &["--bind", "127.0.0.1", "::1"]);
        let url = format!("redis://[::1]:{}", server.port());
        let reps = replicas(Some(&url), "ipv6", 2).await;
        for r in &reps {
            tracking_confirmed(r).await;
        }
        let (a, b) = (reps[0].cache("hot").unwrap(), reps[1].cache("hot").unwrap());
        a.set(&k("v6"), "v1", None).await.unwrap();
        let b2 = b.clone();
        wait_until_async(Duration::from_secs(2), "the L1 serves v1", || {
            let b = b2.clone();
            async move {
                assert_eq!(
                    b.get::<String>(&k("v6")).await.unwrap().as_deref(),
                    Some("v1")
                );
                b.stats().l1.unwrap().hits >= 1
            }
        })
        .await;
        a.set(&k("v6"), "v2", None).await.unwrap();
        wait_until_async(Duration::from_secs(2), "the push evicts v1", || {
            let b = b.clone();
            async move { b.get::<String>(&k("v6")).await.unwrap().as_deref() == Some("v2") }
        })
        .await;
        assert!(b.stats().l1.unwrap().invalidations >= 1, "{bin}");
        for r in reps {
            r.shutdown().await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_on_one_replica_evicts_the_key_from_every_other_l1() {
    for bin in server_binaries() {
        let server = TestServer::start(&bin);
        let reps = replicas(Some(&server.url()), "evict", 3).await;
        for r in &reps {
            tracking_confirmed(r).await;
        }
        let caches: Vec<Cache> = reps.iter().map(|r| r.cache("hot").unwrap()).collect();
        caches[0].set(&k("shared"), "v1", None).await.unwrap();
        for c in &caches {
            // Read until the L1 serves it: a fill that raced the writer's own invalidation
            // push (it arrives after the write's reply) is refused, the next one sticks.
            let c2 = c.clone();
            wait_until_async(Duration::from_secs(2), "the L1 serves v1", || {
                let c = c2.clone();
                async move {
                    assert_eq!(
                        c.get::<String>(&k("shared")).await.unwrap().as_deref(),
                        Some("v1")
                    );
                    c.stats().l1.unwrap().hits >= 1
                }
            })
            .await;
        }
        caches[1].set(&k("shared"), "v2", None).await.unwrap();
        // The L1 TTL is 60 s: only the invalidation can make the others see v2 this soon.
        for (i, c) in caches.iter().enumerate() {
            let c2 = c.clone();
            wait_until_async(Duration::from_secs(2), "replica sees v2", || {
                let c = c2.clone();
                async move { c.get::<String>(&k("shared")).await.unwrap().as_deref() == Some("v2") }
            })
            .await;
            assert!(
                c.stats().l1.unwrap().invalidations >= 1,
                "{bin}: replica {i} was invalidated"
            );
        }
        // Deletes invalidate too.
        caches[2].unlink(&k("shared")).await.unwrap();
        for c in &caches {
            let c2 = c.clone();
            wait_until_async(Duration::from_secs(2), "replica sees the delete", || {
                let c = c2.clone();
                async move { c.get::<String>(&k("shared")).await.unwrap().is_none() }
            })
            .await;
        }
        for r in reps {
            r.shutdown().await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_racing_reads_and_writes_leave_no_stale_l1_entry() {
    const ITERATIONS: u64 = 10_000;
    const KEYS: u64 = 8;
    const CHECK_EVERY: u64 = 250;
    /// Longer than the largest injected delay (3 ms) plus processing.
    const QUIESCENCE: Duration = Duration::from_millis(50);
    for bin in server_binaries() {
        let server = TestServer::start(&bin);
        let proxy = Arc::new(FaultProxy::start(server.socket_addr()).await);
        // Readers reach Redis through the delaying proxy (data and tracking connections);
        // the writer goes direct, so its writes and their invalidations race the reads.
        let readers = replicas(Some(&proxy.url()), "race-r", 2).await;
        let writer = spawn_ready(config(Some(&server.url()), "race-w", RESOURCES)).await;
        for r in readers.iter().chain([&writer]) {
            tracking_confirmed(r).await;
        }
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut tasks = Vec::new();
        // Random delays, changed every millisecond.
        {
            let (proxy, done) = (proxy.clone(), done.clone());
            tasks.push(tokio::spawn(async move {
                while !done.load(Ordering::Relaxed) {
                    proxy.set_delay(Duration::from_micros(rand_below(3000)));
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                proxy.set_delay(Duration::ZERO);
            }));
        }
        for r in &readers {
            for _ in 0..3 {
                let (cache, done) = (r.cache("hot").unwrap(), done.clone());
                tasks.push(tokio::spawn(async move {
                    let mut i = 0u64;
                    while !done.load(Ordering::Relaxed) {
                        let key = k(&format!("race{}", i % KEYS));
                        let _ = cache.get::<u64>(&key).await.unwrap();
                        i += 1;
                    }
                }));
            }
        }
        let wcache = writer.cache("hot").unwrap();
        let mut last = vec![0u64; KEYS as usize];
        let mut stale = Vec::new();
        let all: Vec<Cache> = readers
            .iter()
            .chain([&writer])
            .map(|r| r.cache("hot").unwrap())
            .collect();
        for i in 1..=ITERATIONS {
            let slot = rand_below(KEYS);
            wcache
                .set(&k(&format!("race{slot}")), &i, None)
                .await
                .unwrap();
            last[slot as usize] = i;
            // Checkpoints: writes pause (reads go on), in-flight invalidations land, and then
            // every replica must return the last value of every key. A stale fill would stay
            // in the L1 (60 s TTL) with no later write to evict it, and be caught here.
            if i % CHECK_EVERY == 0 || i == ITERATIONS {
                tokio::time::sleep(QUIESCENCE).await;
                for (ri, cache) in all.iter().enumerate() {
                    for slot in 0..KEYS {
                        // Twice: the second read is an L1 hit if the first filled it.
                        for _ in 0..2 {
                            let got = cache.get::<u64>(&k(&format!("race{slot}"))).await.unwrap();
                            if got != Some(last[slot as usize]) {
                                stale.push((i, ri, slot, got, last[slot as usize]));
                            }
                        }
                    }
                }
            }
        }
        done.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await.unwrap();
        }
        let stats: Vec<_> = readers
            .iter()
            .map(|r| r.cache("hot").unwrap().stats().l1.unwrap())
            .collect();
        eprintln!(
            "{bin}: race done; L1 fills {:?}, fills refused {:?}, hits {:?}",
            stats.iter().map(|s| s.fills).collect::<Vec<_>>(),
            stats.iter().map(|s| s.fills_refused).collect::<Vec<_>>(),
            stats.iter().map(|s| s.hits).collect::<Vec<_>>()
        );
        assert!(stale.is_empty(), "{bin}: stale L1 entries {stale:?}");
        assert!(
            stats.iter().all(|s| s.fills > 0 && s.hits > 0),
            "{bin}: the L1 took part in the race"
        );
        for r in readers.into_iter().chain([writer]) {
            r.shutdown().await.unwrap();
        }
    }
}

fn rand_below(n: u64) -> u64 {
    rand::random_range(0..n)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Versioned {
    version: u64,
    body: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_versioned_writers_never_show_a_torn_version() {
    for backend in Backend::all() {
        let label = backend.label();
        let reps = match backend.url() {
            Some(url) => replicas(Some(&url), "torn", 3).await,
            None => {
                let one = spawn_ready(config(None, "torn", RESOURCES)).await;
                vec![one.clone(), one.clone(), one]
            }
        };
        let key = k("torn");
        let mut writers = Vec::new();
        for (w, r) in reps.iter().enumerate() {
            let cache = r.cache("hot").unwrap();
            let key = key.clone();
            writers.push(tokio::spawn(async move {
                for i in 0..300u64 {
                    let version = i * 3 + w as u64;
                    let v = Versioned {
                        version,
                        body: format!("body of {version}"),
                    };
                    cache.set_versioned(&key, version, &v, None).await.unwrap();
                }
            }));
        }
        let mut readers = Vec::new();
        for r in &reps {
            let cache = r.cache("hot").unwrap();
            let key = key.clone();
            readers.push(tokio::spawn(async move {
                let mut seen = HashSet::new();
                let mut last = 0;
                for _ in 0..600 {
                    if let Some((version, v)) =
                        cache.get_versioned::<Versioned>(&key).await.unwrap()
                    {
                        assert_eq!(
                            version, v.version,
                            "torn: pointer {version} body {}",
                            v.version
                        );
                        assert_eq!(v.body, format!("body of {version}"));
                        seen.insert(version);
                        last = version;
                    }
                }
                (seen.len(), last)
            }));
        }
        for w in writers {
            w.await.unwrap();
        }
        for r in readers {
            let (distinct, _) = r.await.unwrap();
            assert!(distinct > 0, "{label}");
        }
        let (version, v) = reps[0]
            .cache("hot")
            .unwrap()
            .get_versioned::<Versioned>(&key)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(version, 299 * 3 + 2, "{label}: the newest version wins");
        assert_eq!(v.version, version);
        for r in reps {
            r.shutdown().await.unwrap();
        }
    }
}

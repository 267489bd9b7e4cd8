//! Cache faults on every server found: the tracking connection killed, the server restarted,
//! `FLUSHALL`, the tracking connection black-holed, Redis down, and the cache actor and the
//! tracking subscriber made to panic. Each loss must flush the L1 (no hit served from
//! before), stop fills until tracking is confirmed again, and then let fills resume.

mod common;

use std::time::{Duration, Instant};

use common::{config, spawn_ready};
use forze_redis::cache::CacheKey;
use forze_redis::{Config, ErrorKind};
use forze_redis_actors::{Cache, CacheRead, ChildKind, ForzeHandle, Freshness, TrackingStats};
use forze_redis_testkit::{server_binaries, wait_until_async, FaultProxy, ProxyMode, TestServer};

const RESOURCES: &str = r#"
[caches.hot]
ttl = "120s"
[caches.hot.l1]
ttl = "60s"
"#;

/// Any call must finish well within this, whatever the fault.
const NEVER_HANG: Duration = Duration::from_secs(3);

fn k(s: &str) -> CacheKey {
    CacheKey::new(s)
}

/// A reader configuration whose reconnects wait about a second, so the window in which
/// tracking is down is wide enough to write behind its back.
fn slow_reconnect(url: &str, test: &str) -> Config {
    let mut cfg = config(Some(url), test, RESOURCES);
    let redis = cfg.redis.as_mut().unwrap();
    redis.reconnect.min_delay = Duration::from_secs(1);
    redis.reconnect.max_delay = Duration::from_secs(1);
    cfg
}

async fn tracking(forze: &ForzeHandle) -> TrackingStats {
    forze.tracking_stats().await.unwrap().unwrap()
}

async fn wait_tracking(forze: &ForzeHandle, what: &str, f: impl Fn(&TrackingStats) -> bool) {
    wait_until_async(Duration::from_secs(10), what, || async {
        forze
            .tracking_stats()
            .await
            .ok()
            .flatten()
            .is_some_and(|s| f(&s))
    })
    .await;
}

/// Read `key` until the L1 serves it with `expected`.
async fn fill(cache: &Cache, key: &str, expected: &str) {
    let before = cache.stats().l1.unwrap().hits;
    wait_until_async(Duration::from_secs(5), "the L1 serves the key", || async {
        let got = cache.get::<String>(&k(key)).await.unwrap();
        assert_eq!(got.as_deref(), Some(expected));
        cache.stats().l1.unwrap().hits > before
    })
    .await;
}

async fn timed<T>(f: impl std::future::Future<Output = T>) -> T {
    let started = Instant::now();
    let out = tokio::time::timeout(NEVER_HANG, f)
        .await
        .expect("call hung");
    assert!(started.elapsed() < NEVER_HANG);
    out
}

/// After a loss: the L1 is empty, untrusted (reads go to Redis and fill nothing), a write made
/// behind its back is read, and once tracking is confirmed again fills resume.
async fn check_loss_and_recovery(
    reader: &ForzeHandle,
    writer: &Cache,
    key: &str,
    reason: &str,
    label: &str,
) {
    let cache = reader.cache("hot").unwrap();
    let l1 = cache.stats().l1.unwrap();
    assert_eq!(l1.entries, 0, "{label}: L1 flushed");
    assert!(
        l1.flushes.get(reason).copied().unwrap_or(0) >= 1,
        "{label}: {:?}",
        l1.flushes
    );
    if !l1.trusted {
        writer.set(&k(key), "behind its back", None).await.unwrap();
        let fills = cache.stats().l1.unwrap().fills;
        let got = timed(cache.get::<String>(&k(key))).await.unwrap();
        assert_ne!(
            got.as_deref(),
            Some("v1"),
            "{label}: a hit from before the loss"
        );
        if cache.stats().l1.map(|l| l.trusted) == Some(false) {
            assert_eq!(
                cache.stats().l1.unwrap().fills,
                fills,
                "{label}: filled while untrusted"
            );
        }
    }
    wait_tracking(reader, "tracking confirmed again", |s| s.confirmed).await;
    writer.set(&k(key), "after", None).await.unwrap();
    let c = cache.clone();
    wait_until_async(Duration::from_secs(5), "reader sees the new value", || {
        let c = c.clone();
        async move { c.get::<String>(&k(key)).await.unwrap().as_deref() == Some("after") }
    })
    .await;
    fill(&cache, key, "after").await;
}

async fn setup(reader_url: &str, writer_url: &str, test: &str) -> (ForzeHandle, ForzeHandle) {
    let reader = spawn_ready(slow_reconnect(reader_url, test)).await;
    let writer = spawn_ready(config(Some(writer_url), test, RESOURCES)).await;
    for f in [&reader, &writer] {
        wait_tracking(f, "tracking confirmed", |s| s.confirmed).await;
    }
    writer
        .cache("hot")
        .unwrap()
        .set(&k("key"), "v1", None)
        .await
        .unwrap();
    fill(&reader.cache("hot").unwrap(), "key", "v1").await;
    (reader, writer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracking_connection_killed() {
    for bin in server_binaries() {
        let server = TestServer::start(&bin);
        let (reader, writer) = setup(&server.url(), &server.url(), "kill").await;
        // Both supervisors name their tracking connection alike: kill every one of them.
        let ids: Vec<String> = server
            .client_list()
            .into_iter()
            .filter(|c| c.get("name").is_some_and(|n| n.ends_with("-tracking")))
            .filter_map(|c| c.get("id").cloned())
            .collect();
        assert_eq!(ids.len(), 2, "{bin}: two tracking connections");
        for id in &ids {
            server.cmd(&["CLIENT", "KILL", "ID", id]).unwrap();
        }
        wait_tracking(&reader, "loss seen", |s| s.losses >= 1).await;
        check_loss_and_recovery(
            &reader,
            &writer.cache("hot").unwrap(),
            "key",
            "tracking_lost",
            &format!("{bin} kill"),
        )
        .await;
        assert!(tracking(&reader).await.confirmations >= 2);
        for f in [reader, writer] {
            f.shutdown().await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restarted() {
    for bin in server_binaries() {
        let mut server = TestServer::start(&bin);
        let (reader, writer) = setup(&server.url(), &server.url(), "restart").await;
        server.restart();
        wait_tracking(&reader, "loss seen", |s| s.losses >= 1).await;
        // The restarted server has no data (no persistence): nothing from before is served.
        let got = timed(reader.cache("hot").unwrap().get::<String>(&k("key")))
            .await
            .unwrap();
        assert_ne!(
            got.as_deref(),
            Some("v1"),
            "{bin}: a hit from before the restart"
        );
        wait_until_async(Duration::from_secs(10), "writer reconnected", || async {
            writer
                .cache("hot")
                .unwrap()
                .set(&k("probe"), "x", None)
                .await
                .is_ok()
        })
        .await;
        check_loss_and_recovery(
            &reader,
            &writer.cache("hot").unwrap(),
            "key",
            "tracking_lost",
            &format!("{bin} restart"),
        )
        .await;
        for f in [reader, writer] {
            f.shutdown().await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushall_flushes_every_l1() {
    for bin in server_binaries() {
        let server = TestServer::start(&bin);
        let (reader, writer) = setup(&server.url(), &server.url(), "flushall").await;
        let writer_cache = writer.cache("hot").unwrap();
        fill(&writer_cache, "key", "v1").await;
        server.cmd(&["FLUSHALL"]).unwrap();
        for f in [&reader, &writer] {
            wait_tracking(f, "server flush seen", |s| s.server_flushes >= 1).await;
            let cache = f.cache("hot").unwrap();
            assert_eq!(cache.stats().l1.unwrap().entries, 0, "{bin}");
            assert_eq!(
                timed(cache.get::<String>(&k("key"))).await.unwrap(),
                None,
                "{bin}: a hit from before FLUSHALL"
            );
        }
        // Tracking survived the flush: a write still evicts, and fills go on.
        check_loss_and_recovery(
            &reader,
            &writer_cache,
            "key",
            "server_flush",
            &format!("{bin} flushall"),
        )
        .await;
        assert_eq!(
            tracking(&reader).await.losses,
            0,
            "{bin}: FLUSHALL is not a loss"
        );
        for f in [reader, writer] {
            f.shutdown().await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracking_connection_black_holed() {
    for bin in server_binaries() {
        let server = TestServer::start(&bin);
        let proxy = FaultProxy::start(server.socket_addr()).await;
        let (reader, writer) = setup(&proxy.url(), &server.url(), "blackhole").await;
        proxy.set_mode(ProxyMode::BlackHole);
        // Detected by the unanswered PING: health_interval (100 ms) + command_timeout (500 ms).
        let started = Instant::now();
        wait_tracking(&reader, "loss seen", |s| s.losses >= 1).await;
        eprintln!("{bin}: black hole detected after {:?}", started.elapsed());
        let cache = reader.cache("hot").unwrap();
        assert_eq!(cache.stats().l1.unwrap().entries, 0, "{bin}");
        // The data connections are black-holed too: reads miss cleanly, in bounded time.
        let got = timed(cache.get::<String>(&k("key"))).await.unwrap();
        assert_eq!(got, None, "{bin}: read through a black hole");
        proxy.set_mode(ProxyMode::Pass);
        proxy.cut_all();
        check_loss_and_recovery(
            &reader,
            &writer.cache("hot").unwrap(),
            "key",
            "tracking_lost",
            &format!("{bin} black hole"),
        )
        .await;
        for f in [reader, writer] {
            f.shutdown().await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_reads_miss_and_writes_are_unavailable() {
    for bin in server_binaries() {
        let mut server = TestServer::start(&bin);
        let forze = spawn_ready(config(Some(&server.url()), "down", RESOURCES)).await;
        let cache = forze.cache("hot").unwrap();
        cache.set(&k("key"), "v1", None).await.unwrap();
        server.stop();
        wait_tracking(&forze, "loss seen", |s| !s.confirmed).await;
        for _ in 0..20 {
            assert_eq!(timed(cache.get::<String>(&k("key"))).await.unwrap(), None);
            let keys = [k("key"), k("other")];
            assert_eq!(
                timed(cache.get_many::<String>(&keys)).await.unwrap(),
                vec![None, None]
            );
            assert!(!timed(cache.exists(&k("key"))).await.unwrap());
            let e = timed(cache.set(&k("key"), "v2", None)).await.unwrap_err();
            assert!(
                matches!(e.kind(), ErrorKind::Unavailable | ErrorKind::OutcomeUnknown),
                "{bin}: {e}"
            );
            let e = timed(cache.delete(&k("key"))).await.unwrap_err();
            assert!(matches!(
                e.kind(),
                ErrorKind::Unavailable | ErrorKind::OutcomeUnknown
            ));
        }
        // get_or_load still serves: the loader runs, the value is returned, caching it fails.
        let v: String = timed(cache.get_or_load(&k("loaded"), None, || async {
            Ok::<_, String>("from the loader".into())
        }))
        .await
        .unwrap();
        assert_eq!(v, "from the loader");
        assert!(cache.stats().bypassed >= 40, "{bin}");
        server.restart();
        wait_tracking(&forze, "tracking back", |s| s.confirmed).await;
        wait_until_async(Duration::from_secs(10), "writes work again", || async {
            cache.set(&k("key"), "v3", None).await.is_ok()
        })
        .await;
        assert_eq!(
            cache.get::<String>(&k("key")).await.unwrap().as_deref(),
            Some("v3")
        );
        forze.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panicking_cache_actor_and_tracking_subscriber_keep_coherence() {
    for bin in server_binaries() {
        let server = TestServer::start(&bin);
        let (reader, writer) = setup(&server.url(), &server.url(), "panic").await;
        let cache = reader.cache("hot").unwrap();
        let writer_cache = writer.cache("hot").unwrap();

        // Readers keep reading through both panics; none may hang.
        let stop = Instant::now() + Duration::from_secs(3);
        let mut load = Vec::new();
        for _ in 0..4 {
            let cache = cache.clone();
            load.push(tokio::spawn(async move {
                while Instant::now() < stop {
                    timed(cache.get::<String>(&k("key"))).await.unwrap();
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }));
        }

        // The cache actor: its L1 survives (it lives in shared state), coherence is intact.
        assert!(reader
            .inject_panic(ChildKind::Cache("hot".into()))
            .await
            .unwrap());
        writer_cache.set(&k("key"), "v2", None).await.unwrap();
        let c = cache.clone();
        wait_until_async(Duration::from_secs(5), "reader sees v2", || {
            let c = c.clone();
            async move { c.get::<String>(&k("key")).await.unwrap().as_deref() == Some("v2") }
        })
        .await;
        fill(&cache, "key", "v2").await;
        wait_until_async(Duration::from_secs(5), "cache actor back", || async {
            reader.stats().await.is_ok()
        })
        .await;

        // The tracking subscriber: every L1 is flushed the moment it dies, untrusted until
        // the new incarnation confirms tracking.
        let confirmations = tracking(&reader).await.confirmations;
        assert!(reader.inject_panic(ChildKind::Tracking).await.unwrap());
        wait_until_async(
            Duration::from_secs(5),
            "L1 flushed by the dying subscriber",
            || async {
                cache
                    .stats()
                    .l1
                    .unwrap()
                    .flushes
                    .get("subscriber_restart")
                    .copied()
                    .unwrap_or(0)
                    >= 1
            },
        )
        .await;
        wait_tracking(&reader, "new incarnation confirmed", |s| {
            s.confirmed && s.confirmations > confirmations
        })
        .await;
        writer_cache.set(&k("key"), "v3", None).await.unwrap();
        let c = cache.clone();
        wait_until_async(Duration::from_secs(5), "reader sees v3", || {
            let c = c.clone();
            async move { c.get::<String>(&k("key")).await.unwrap().as_deref() == Some("v3") }
        })
        .await;
        fill(&cache, "key", "v3").await;
        for t in load {
            t.await.expect("no reader hung or failed");
        }
        assert_eq!(
            reader.stats().await.unwrap().supervisor.restarts,
            2,
            "{bin}"
        );
        for f in [reader, writer] {
            f.shutdown().await.unwrap();
        }
    }
}

/// Stale while down: a namespace with `serve_stale_for` answers `get_with_freshness` with the
/// value it held, marked stale, while the reader is cut off from Redis, up to the bound and
/// not after; a namespace without the option misses as before; once the reader is back, a
/// write made while it was cut off is read, fresh, and nothing stale is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_values_are_served_marked_while_cut_off_up_to_the_bound_and_never_after() {
    const STALE: &str = r#"
[caches.hot]
ttl = "120s"
[caches.hot.l1]
ttl = "60s"
serve_stale_for = "3s"
[caches.plain]
ttl = "120s"
[caches.plain.l1]
ttl = "60s"
"#;
    for bin in server_binaries() {
        let server = TestServer::start(&bin);
        let proxy = FaultProxy::start(server.socket_addr()).await;
        let reader = spawn_ready(config(Some(&proxy.url()), "stale-r", STALE)).await;
        let writer = spawn_ready(config(Some(&server.url()), "stale-w", STALE)).await;
        for f in [&reader, &writer] {
            wait_tracking(f, "tracking confirmed", |s| s.confirmed).await;
        }
        for ns in ["hot", "plain"] {
            writer
                .cache(ns)
                .unwrap()
                .set(&k("key"), "v1", None)
                .await
                .unwrap();
        }
        let (hot, plain) = (reader.cache("hot").unwrap(), reader.cache("plain").unwrap());
        // The L1s hold v1 under a confirmation that still stands at `cut`. A loss before the
        // cut (a tracking connection dropped on a loaded machine) would keep entries aside
        // from that earlier loss, older than the cut: then fill again.
        let mut attempts = 0;
        let cut = loop {
            let before = reader.tracking_stats().await.unwrap().unwrap();
            for cache in [&hot, &plain] {
                fill(cache, "key", "v1").await;
            }
            let cut = Instant::now();
            let after = reader.tracking_stats().await.unwrap().unwrap();
            if after.confirmed
                && (after.losses, after.confirmations) == (before.losses, before.confirmations)
            {
                break cut;
            }
            attempts += 1;
            assert!(attempts < 5, "{bin}: tracking kept dropping before the cut");
            wait_tracking(&reader, "tracking confirmed", |s| s.confirmed).await;
        };
        let fresh = hot
            .get_with_freshness::<String>(&k("key"))
            .await
            .unwrap()
            .unwrap();
        assert!(fresh.is_fresh() && fresh.value == "v1", "{bin}: {fresh:?}");

        // Cut off: Redis refuses the reader, tracking is lost.
        proxy.set_mode(ProxyMode::Refuse);
        wait_tracking(&reader, "tracking lost", |s| !s.confirmed).await;
        let lost_seen = Instant::now();
        writer
            .cache("hot")
            .unwrap()
            .set(&k("key"), "v2", None)
            .await
            .unwrap();
        answers_v1_stale_and_plain_reads_miss(&hot, &format!("{bin} cut off")).await;
        // The namespace without the option misses.
        let plain_read = timed(plain.get_with_freshness::<String>(&k("key")))
            .await
            .unwrap();
        assert_eq!(plain_read, None, "{bin}");
        assert!(hot.stats().l1.unwrap().stale_entries >= 1, "{bin}");

        // Every answer until the bound is the old value marked stale, with an age no older
        // than the cut; after the bound every answer is a miss, and the first miss comes
        // neither before the bound nor much after it.
        let (mut last_stale, mut first_miss) = (None, None);
        while cut.elapsed() < Duration::from_secs(12) {
            // A stale answer is timed from before its read, a miss from after it: a read that
            // began just before the bound and missed is not taken for an early miss.
            let at = Instant::now();
            match timed(hot.get_with_freshness::<String>(&k("key")))
                .await
                .unwrap()
            {
                Some(CacheRead {
                    value,
                    freshness: Freshness::Stale { age },
                    ..
                }) => {
                    assert_eq!(value, "v1", "{bin}");
                    assert!(first_miss.is_none(), "{bin}: a stale answer after a miss");
                    assert!(
                        age <= cut.elapsed() && age <= STALE_BOUND,
                        "{bin}: age {age:?}"
                    );
                    last_stale = Some(at);
                }
                None => {
                    first_miss.get_or_insert_with(Instant::now);
                }
                Some(fresh) => panic!("{bin}: {fresh:?} answered while cut off"),
            }
            if first_miss.is_some_and(|m: Instant| m.elapsed() > Duration::from_millis(500)) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let first_miss = first_miss.unwrap_or_else(|| panic!("{bin}: stale answers never ended"));
        let last_stale = last_stale.unwrap_or_else(|| panic!("{bin}: no stale answer"));
        // The loss was seen between `cut` and `lost_seen`; the bound runs from the loss.
        assert!(
            first_miss >= cut + STALE_BOUND,
            "{bin}: stale answers ended {:?} after the cut",
            first_miss - cut
        );
        assert!(
            first_miss <= lost_seen + STALE_BOUND + Duration::from_secs(1),
            "{bin}: stale answers went on {:?} after the loss was seen",
            first_miss - lost_seen
        );
        assert!(
            last_stale + Duration::from_millis(800) >= cut + STALE_BOUND,
            "{bin}: the last stale answer came {:?} after the cut",
            last_stale - cut
        );

        // Back: the write made while cut off is read, fresh, and the old value never again.
        proxy.set_mode(ProxyMode::Pass);
        wait_tracking(&reader, "tracking confirmed again", |s| s.confirmed).await;
        read_new_value_never_old(&hot, &bin.to_string()).await;
        assert_eq!(hot.stats().l1.unwrap().stale_entries, 0, "{bin}");
        reader.shutdown().await.unwrap();
        writer.shutdown().await.unwrap();
    }
}

/// While Redis is out of reach: `get_with_freshness` answers `v1` marked stale, and a plain
/// `get` never serves stale (it misses).
async fn answers_v1_stale_and_plain_reads_miss(cache: &Cache, what: &str) {
    let got = timed(cache.get_with_freshness::<String>(&k("key")))
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("{what}: no stale answer"));
    assert_eq!(got.value, "v1", "{what}");
    assert!(
        matches!(got.freshness, Freshness::Stale { .. }),
        "{what}: {got:?}"
    );
    assert_eq!(
        timed(cache.get::<String>(&k("key"))).await.unwrap(),
        None,
        "{what}"
    );
}

/// A namespace that serves stale for 30 s, longer than any of these tests waits.
const STALE_30S: &str = r#"
[caches.hot]
ttl = "120s"
[caches.hot.l1]
ttl = "60s"
serve_stale_for = "30s"
"#;

/// How long the stale tests' namespace serves stale (`serve_stale_for = "3s"`).
const STALE_BOUND: Duration = Duration::from_secs(3);

/// Read `key` until the L1's namespace answers `v2`, fresh, failing on any answer with `v1`
/// (fresh or stale) on the way: after the reader is back, nothing from before is served.
async fn read_new_value_never_old(cache: &Cache, what: &str) {
    wait_until_async(Duration::from_secs(10), "the new value is read", || async {
        match cache.get_with_freshness::<String>(&k("key")).await {
            Ok(Some(CacheRead {
                value, freshness, ..
            })) => {
                assert_ne!(
                    value, "v1",
                    "{what}: the old value served ({freshness:?}) after the return"
                );
                value == "v2" && freshness == Freshness::Fresh
            }
            _ => false,
        }
    })
    .await;
    assert_eq!(cache.stats().l1.unwrap().stale_entries, 0, "{what}");
}

/// Stale while down with the server killed: the namespace with the option answers the old
/// value marked stale while the server is gone; once a new server is up on the same port and
/// a value written there, the reader serves that value, fresh, and never the old one again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_values_are_served_while_the_server_is_killed_and_never_after_it_returns() {
    for bin in server_binaries() {
        let mut server = TestServer::start(&bin);
        let reader = spawn_ready(config(Some(&server.url()), "stale-kill-r", STALE_30S)).await;
        let writer = spawn_ready(config(Some(&server.url()), "stale-kill-w", STALE_30S)).await;
        wait_tracking(&reader, "tracking confirmed", |s| s.confirmed).await;
        let (hot, wcache) = (reader.cache("hot").unwrap(), writer.cache("hot").unwrap());
        wcache.set(&k("key"), "v1", None).await.unwrap();
        fill(&hot, "key", "v1").await;

        server.stop();
        wait_tracking(&reader, "tracking lost", |s| !s.confirmed).await;
        for _ in 0..3 {
            answers_v1_stale_and_plain_reads_miss(&hot, &format!("{bin} killed")).await;
        }

        let confirmations = tracking(&reader).await.confirmations;
        server.restart();
        wait_until_async(
            Duration::from_secs(10),
            "the writer writes again",
            || async { wcache.set(&k("key"), "v2", None).await.is_ok() },
        )
        .await;
        // Until tracking is confirmed again a read may still fail to reach the new server and
        // answer the old value marked stale (within the bound), but never as fresh.
        wait_until_async(
            Duration::from_secs(10),
            "tracking confirmed again",
            || async {
                if let Ok(Some(r)) = hot.get_with_freshness::<String>(&k("key")).await {
                    assert!(
                        !(r.value == "v1" && r.is_fresh()),
                        "{bin}: the old value served as fresh after the restart: {r:?}"
                    );
                }
                tracking(&reader).await.confirmations > confirmations
            },
        )
        .await;
        read_new_value_never_old(&hot, &format!("{bin} after restart")).await;
        reader.shutdown().await.unwrap();
        writer.shutdown().await.unwrap();
    }
}

/// A write of the reader itself while cut off is never answered with the value it replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_write_while_cut_off_drops_the_stale_value() {
    let bin = server_binaries().remove(0);
    let server = TestServer::start(&bin);
    let proxy = FaultProxy::start(server.socket_addr()).await;
    let reader = spawn_ready(config(Some(&proxy.url()), "stale-own", STALE_30S)).await;
    wait_tracking(&reader, "tracking confirmed", |s| s.confirmed).await;
    let hot = reader.cache("hot").unwrap();
    hot.set(&k("key"), "v1", None).await.unwrap();
    fill(&hot, "key", "v1").await;
    proxy.set_mode(ProxyMode::Refuse);
    wait_tracking(&reader, "tracking lost", |s| !s.confirmed).await;
    let stale = timed(hot.get_with_freshness::<String>(&k("key")))
        .await
        .unwrap();
    assert!(stale.is_some_and(|r| !r.is_fresh()));
    // The write fails (cut off) but may have been applied: the old value is gone either way.
    let _ = timed(hot.set(&k("key"), "v2", None)).await;
    let after = timed(hot.get_with_freshness::<String>(&k("key")))
        .await
        .unwrap();
    assert_eq!(after, None);
    reader.shutdown().await.unwrap();
}

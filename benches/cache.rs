//! Cache benchmarks, each against its baseline in the same run (release build):
//! - L1 hit through the public handle vs a bare `DashMap` get + clone of the same 64-byte
//!   value (target: at most 2× the time, i.e. a throughput ratio of at least 0.5);
//! - a remote read (namespace without L1) through the handle vs fred `GET` direct and vs fred
//!   with our connection settings, 64 tasks each on its own key (`cache_get_remote_c64`);
//! - one missing key read by 64 tasks through a namespace with an L1, where concurrent misses
//!   share one read, vs fred `GET` direct (`cache_miss_hot_c64`);
//! - invalidation latency: p99 from the writer's reply to the eviction in another replica's
//!   L1, vs p99 of the raw push arrival on a bare tracking connection (target: ours at most
//!   2× raw).
//!
//! `cargo bench --bench cache`. Prints `ratio <name> <value>` lines.

mod common;

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;
use forze_redis::cache::CacheKey;
use forze_redis::error::Access;
use forze_redis::tracking::connection::{TrackingConnection, TrackingEvent, TrackingTarget};
use forze_redis::Config;
use forze_redis_actors::{Forze, ForzeHandle};
use forze_redis_testkit::{server_binaries, ServerKind, TestServer};
use fred::interfaces::{ClientLike, KeysInterface};

const ROUNDS: usize = 5;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn percentile(mut v: Vec<Duration>, p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

async fn spawn(url: &str, name: &str) -> ForzeHandle {
    let config = Config::from_toml_str(&format!(
        r#"
[redis]
url = "{url}"
pool_size = 4
[caches.hot]
ttl = "600s"
[caches.hot.l1]
ttl = "300s"
[caches.remote]
ttl = "600s"
[supervision]
name_prefix = "{name}"
"#
    ))
    .expect("config");
    common::install_metrics_recorder();
    let (forze, _join) = Forze::spawn(config).await.expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(matches!(forze.tracking_stats().await, Ok(Some(s)) if s.confirmed)
        && forze.health().state == forze_redis::connection::HealthState::Up)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    forze
}

#[tokio::main]
async fn main() {
    let bin = server_binaries()
        .into_iter()
        .find(|b| b.kind == ServerKind::Redis)
        .unwrap_or_else(|| server_binaries().remove(0));
    let server = TestServer::start(&bin);
    println!("server: {} {}", bin.kind, bin.version);
    let reader = spawn(&server.url(), "bench-r").await;
    let writer = spawn(&server.url(), "bench-w").await;
    let hot = reader.cache("hot").expect("hot");
    let value = vec![7u8; 64];

    // 1. L1 hit vs bare DashMap get + clone, one task (the hit path never awaits I/O).
    let key = CacheKey::new("hit");
    hot.set_bytes(&key, &value, None).await.expect("set");
    while hot.stats().l1.map_or(0, |l| l.hits) == 0 {
        let _ = hot.get_bytes(&key).await;
    }
    let map: DashMap<String, Bytes> = DashMap::new();
    // The baseline hashes the caller's key, as ours does (its L1 is keyed by logical key).
    let full_key = "hit".to_string();
    map.insert(full_key.clone(), Bytes::from(value.clone()));
    const HITS: usize = 2_000_000;
    let (mut ours, mut bare) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let started = Instant::now();
        for _ in 0..HITS {
            black_box(hot.get_bytes(black_box(&key)).await.expect("hit"));
        }
        ours.push(HITS as f64 / started.elapsed().as_secs_f64());
        let started = Instant::now();
        for _ in 0..HITS {
            black_box(map.get(black_box(full_key.as_str())).map(|v| v.clone()));
        }
        bare.push(HITS as f64 / started.elapsed().as_secs_f64());
    }
    let (o, b) = (median(ours), median(bare));
    // Diagnostic: the L1 map alone (deadline check and hit counter included), without the
    // handle's validation, async layers and cooperative-budget yield point.
    let l1 = hot.l1().expect("l1");
    let started = Instant::now();
    for _ in 0..HITS {
        black_box(l1.get(black_box("hit")));
    }
    let raw = HITS as f64 / started.elapsed().as_secs_f64();
    println!("info cache_l1_map_get {raw:.0} hits/s");
    println!("cache_l1_hit: ours {o:.0} hits/s, bare DashMap get+clone {b:.0}/s");
    println!("ratio cache_l1_hit {:.3}", o / b);

    // 2. Remote reads at 64 tasks, each on its own key: handle (no L1) vs fred GET direct
    // and vs fred with our connection settings, same stored values.
    let remote = reader.cache("remote").expect("remote");
    let keys: Arc<Vec<CacheKey>> =
        Arc::new((0..64).map(|i| CacheKey::new(format!("r{i}"))).collect());
    let redis_keys: Arc<Vec<String>> = Arc::new(
        (0..64)
            .map(|i| format!("forze:cache:{{remote:_:r{i}}}"))
            .collect(),
    );
    for key in keys.iter() {
        remote.set_bytes(key, &value, None).await.expect("set");
    }
    let direct = common::direct_pool(&server.url()).await;
    let safe = common::same_settings_pool(&server.url()).await;
    let per_task = 40_000 / common::TASKS;
    let (mut ours, mut theirs, mut same) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let (c, keys) = (remote.clone(), keys.clone());
        ours.push(
            common::throughput(per_task, move |t, _| {
                let (c, keys) = (c.clone(), keys.clone());
                async move {
                    black_box(c.get_bytes(&keys[t]).await.expect("get"));
                }
            })
            .await,
        );
        let (d, names) = (direct.clone(), redis_keys.clone());
        theirs.push(
            common::throughput(per_task, move |t, _| {
                let (d, names) = (d.clone(), names.clone());
                async move {
                    let v: Option<Bytes> = d.get(&names[t]).await.expect("get");
                    black_box(v);
                }
            })
            .await,
        );
        let (s, names) = (safe.clone(), redis_keys.clone());
        same.push(
            common::throughput(per_task, move |t, _| {
                let (s, names) = (s.clone(), names.clone());
                async move {
                    let c = s.client("bench").expect("connected");
                    let v: Option<Bytes> = c
                        .with_options(s.options(Access::Read))
                        .get(&names[t])
                        .await
                        .expect("get");
                    black_box(v);
                }
            })
            .await,
        );
    }
    common::report("cache_get_remote_c64", "ops/s", ours, theirs, same);

    // 2b. One key missing, 64 callers: through a namespace with an L1 (every read misses it;
    // concurrent misses share one read) vs bare fred GET of the same missing key.
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    let missing = CacheKey::new("absent");
    for _ in 0..ROUNDS {
        let (c, key) = (hot.clone(), missing.clone());
        ours.push(
            common::throughput(per_task, move |_, _| {
                let (c, key) = (c.clone(), key.clone());
                async move {
                    assert!(c.get_bytes(&key).await.expect("get").is_none());
                }
            })
            .await,
        );
        let d = direct.clone();
        theirs.push(
            common::throughput(per_task, move |_, _| {
                let d = d.clone();
                async move {
                    let v: Option<Bytes> = d.get("forze:cache:{hot:_:absent}").await.expect("get");
                    assert!(v.is_none());
                }
            })
            .await,
        );
    }
    let (o, t) = (median(ours), median(theirs));
    println!("cache_miss_hot_c64: ours {o:.0} reads/s, fred GET direct {t:.0} reads/s");
    println!("ratio cache_miss_hot_c64 {:.3}", o / t);
    println!(
        "info cache_miss_hot_c64 reads joined {} of {}",
        hot.stats().reads_coalesced,
        hot.stats().reads
    );

    // 3. Invalidation latency, interleaved: our eviction vs the raw push on a bare connection.
    let target = TrackingTarget::new("127.0.0.1", server.port(), Default::default());
    let mut raw = TrackingConnection::open(
        &target,
        "bench-raw",
        &["forze:cache:{hot:".to_string()],
        Duration::from_secs(2),
    )
    .await
    .expect("raw tracking");
    let wcache = writer.cache("hot").expect("hot");
    let (mut ours, mut raws) = (Vec::new(), Vec::new());
    for i in 0..2_000u64 {
        let key = CacheKey::new(format!("inv{}", i % 16));
        // Fill the reader's L1 with the key, so the write has something to evict.
        wcache.set(&key, &i, None).await.expect("set");
        // Drain the raw connection's push for that write.
        loop {
            if let Ok(Ok(TrackingEvent::Invalidate(_))) =
                tokio::time::timeout(Duration::from_millis(200), raw.next_event()).await
            {
                break;
            }
        }
        for _ in 0..3 {
            let _ = hot.get::<u64>(&key).await;
        }
        if hot.stats().l1.map_or(0, |l| l.entries) == 0 {
            continue;
        }
        let l1 = hot.l1().expect("l1");
        let before = l1.invalidations();
        wcache.set(&key, &(i + 1), None).await.expect("set");
        let replied = Instant::now();
        // Both are timestamped where they happen (the raw push when this task reads it, our
        // eviction by the L1 itself), so neither measurement polls in a hot loop.
        let r = loop {
            if let Ok(TrackingEvent::Invalidate(_)) = raw.next_event().await {
                break Instant::now();
            }
        };
        let mut waited = 0;
        while l1.invalidations() == before && waited < 1000 {
            tokio::time::sleep(Duration::from_millis(1)).await;
            waited += 1;
        }
        let o = l1.last_invalidation().expect("evicted");
        raws.push(r - replied);
        ours.push(o - replied);
    }
    let samples = ours.len();
    let (o99, r99) = (
        percentile(ours.clone(), 0.99),
        percentile(raws.clone(), 0.99),
    );
    println!(
        "invalidation: ours p50 {:?} p99 {o99:?}, raw push p50 {:?} p99 {r99:?} ({samples} samples)",
        percentile(ours, 0.5),
        percentile(raws, 0.5),
    );
    println!(
        "ratio invalidation_p99 {:.3}",
        r99.as_secs_f64() / o99.as_secs_f64()
    );
    let _ = direct.quit().await;
    let _ = safe.pool().quit().await;
    reader.shutdown().await.expect("shutdown");
    writer.shutdown().await.expect("shutdown");
}

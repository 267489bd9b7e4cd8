//! Throughput as callers grow: 1, 8, 64 and 512 concurrent callers, each on its own key,
//! ours against the baseline in the same rounds (interleaved, medians):
//! - counter increments against fred `INCRBY` direct;
//! - cache reads that reach Redis (a namespace without L1) against fred `GET` direct;
//! - L1 hits against a bare `DashMap` get + clone, on the same tasks.
//!
//! Prints one `scale <contract> c<callers>: …` line per figure and
//! `ratio scale_<contract>_c<callers> <ours / baseline>`. `cargo bench --bench scale`.

mod common;

use std::future::Future;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use dashmap::DashMap;
use forze_redis::cache::CacheKey;
use forze_redis::counter::CounterId;
use fred::interfaces::{ClientLike, KeysInterface};

const CALLERS: [usize; 4] = [1, 8, 64, 512];
const ROUNDS: usize = 3;

/// `total` calls of `op(caller)` spread over `callers` tasks; calls per second.
async fn run<F, Fut>(callers: usize, total: usize, op: F) -> f64
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let per = (total / callers).max(1);
    let started = Instant::now();
    let tasks: Vec<_> = (0..callers)
        .map(|c| {
            let op = op.clone();
            tokio::spawn(async move {
                for _ in 0..per {
                    op(c).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
    (per * callers) as f64 / started.elapsed().as_secs_f64()
}

fn report(
    contract: &str,
    callers: usize,
    unit: &str,
    ours: Vec<f64>,
    base: Vec<f64>,
    against: &str,
) {
    let (o, b) = (common::median(ours), common::median(base));
    println!("scale {contract} c{callers}: ours {o:.0} {unit}, {against} {b:.0} {unit}");
    println!("ratio scale_{contract}_c{callers} {:.3}", o / b);
}

#[tokio::main]
async fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let (remote_ops, hit_ops) = if quick {
        (1_024, 10_240)
    } else {
        (20_480, 2_048_000)
    };
    let server = common::server();
    let forze = common::spawn(
        &server.url(),
        "[counters.scale]\ncoalesce = false\n[caches.remote]\nttl = \"600s\"\n[caches.hot]\nttl = \"600s\"\n[caches.hot.l1]\nttl = \"300s\"\nmax_entries = 1000",
    )
    .await;
    let counter = forze.counter("scale").expect("counter");
    let remote = forze.cache("remote").expect("cache");
    let hot = forze.cache("hot").expect("cache");
    let direct = common::direct_pool(&server.url()).await;
    let n = *CALLERS.iter().max().unwrap_or(&1);
    let ids: Arc<Vec<CounterId>> =
        Arc::new((0..n).map(|i| CounterId::suffix(format!("c{i}"))).collect());
    let keys: Arc<Vec<CacheKey>> =
        Arc::new((0..n).map(|i| CacheKey::new(format!("k{i}"))).collect());
    let direct_counters: Arc<Vec<String>> =
        Arc::new((0..n).map(|i| format!("direct:c{i}")).collect());
    let direct_keys: Arc<Vec<String>> = Arc::new(
        (0..n)
            .map(|i| format!("forze:cache:{{remote:_:k{i}}}"))
            .collect(),
    );
    let value = vec![7u8; 64];
    let map: Arc<DashMap<String, Bytes>> = Arc::new(DashMap::new());
    for (i, key) in keys.iter().enumerate() {
        remote.set_bytes(key, &value, None).await.expect("set");
        hot.set_bytes(key, &value, None).await.expect("set");
        map.insert(format!("k{i}"), Bytes::from(value.clone()));
    }
    // Reads fill the L1 once tracking is confirmed: read until it holds every key.
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    while hot.stats().l1.map_or(0, |l| l.entries) < keys.len() && Instant::now() < deadline {
        for key in keys.iter() {
            hot.get_bytes(key).await.expect("get");
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let map_keys: Arc<Vec<String>> = Arc::new((0..n).map(|i| format!("k{i}")).collect());

    for callers in CALLERS {
        let (mut ours, mut base) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            let (c, ids) = (counter.clone(), ids.clone());
            ours.push(
                run(callers, remote_ops, move |i| {
                    let (c, ids) = (c.clone(), ids.clone());
                    async move {
                        c.incr(&ids[i], 1).await.expect("incr");
                    }
                })
                .await,
            );
            let (d, k) = (direct.clone(), direct_counters.clone());
            base.push(
                run(callers, remote_ops, move |i| {
                    let (d, k) = (d.clone(), k.clone());
                    async move {
                        let _: i64 = d.incr_by(&k[i], 1).await.expect("incrby");
                    }
                })
                .await,
            );
        }
        report(
            "counter_incr",
            callers,
            "ops/s",
            ours,
            base,
            "fred INCRBY direct",
        );

        let (mut ours, mut base) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            let (c, k) = (remote.clone(), keys.clone());
            ours.push(
                run(callers, remote_ops, move |i| {
                    let (c, k) = (c.clone(), k.clone());
                    async move {
                        black_box(c.get_bytes(&k[i]).await.expect("get"));
                    }
                })
                .await,
            );
            let (d, k) = (direct.clone(), direct_keys.clone());
            base.push(
                run(callers, remote_ops, move |i| {
                    let (d, k) = (d.clone(), k.clone());
                    async move {
                        let v: Option<Bytes> = d.get(&k[i]).await.expect("get");
                        black_box(v);
                    }
                })
                .await,
            );
        }
        report(
            "cache_get_remote",
            callers,
            "ops/s",
            ours,
            base,
            "fred GET direct",
        );

        let (mut ours, mut base) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            let (c, k) = (hot.clone(), keys.clone());
            ours.push(
                run(callers, hit_ops, move |i| {
                    let (c, k) = (c.clone(), k.clone());
                    async move {
                        black_box(c.get_bytes(&k[i]).await.expect("hit"));
                    }
                })
                .await,
            );
            let (m, k) = (map.clone(), map_keys.clone());
            base.push(
                run(callers, hit_ops, move |i| {
                    let (m, k) = (m.clone(), k.clone());
                    async move {
                        black_box(m.get(&k[i]).map(|v| v.clone()));
                    }
                })
                .await,
            );
        }
        report(
            "cache_l1_hit",
            callers,
            "hits/s",
            ours,
            base,
            "bare DashMap get+clone",
        );
    }
    let _ = direct.quit().await;
    forze.shutdown().await.expect("shutdown");
}

//! What our calls allocate, with metrics recorded (a Prometheus recorder installed, as a
//! service would) and spans compiled in but not wanted by any subscriber: an L1 hit nothing,
//! a remote call no more than the driver's own command for it plus the key we build, a
//! script call less than the same script sent with fred's `evalsha`. Counted
//! by an allocator that counts the allocations of the calling thread only, around calls
//! polled to completion on that thread.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use common::{config, server_binaries, spawn_ready, TestServer};
use forze_redis_actors::CacheKey;
use futures::FutureExt;

struct CountingAllocator;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|a| a.set(a.get() + 1));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|a| a.set(a.get() + 1));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

const RESOURCES: &str = r#"
[caches.hot]
ttl = "600s"
[caches.hot.l1]
ttl = "300s"
[caches.remote]
ttl = "600s"
[counters.hits]
coalesce = false
[rate_limits.api]
permits = 1000000000
per = "1s"
coalesce = false
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_l1_hit_allocates_nothing_with_metrics_recorded() {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .expect("the only recorder of this test binary");
    let bin = server_binaries().remove(0);
    let server = TestServer::start(&bin);
    let forze = spawn_ready(config(Some(&server.url()), "l1-alloc", RESOURCES)).await;
    let cache = forze.cache("hot").unwrap();
    let key = CacheKey::new("k");
    cache.set(&key, &42u64, None).await.unwrap();
    // The first read fills the L1 (once tracking is confirmed).
    forze_redis_testkit::wait_until_async(
        std::time::Duration::from_secs(10),
        "an L1 hit",
        || async {
            let _: Option<u64> = cache.get(&key).await.unwrap();
            cache.stats().l1.is_some_and(|l1| l1.hits > 0)
        },
    )
    .await;

    const HITS: u64 = 10_000;
    let hits_before = cache.stats().l1.unwrap().hits;
    let before = allocations();
    for _ in 0..HITS {
        // Polled to completion here: an L1 hit never waits, and nothing else runs on this
        // thread in between, so every allocation counted is the hit's own.
        // (`unconstrained`: tokio's cooperative budget, which an L1 loop takes part in, would
        // otherwise ask this poll to yield now and then.)
        let v: Option<u64> = tokio::task::unconstrained(cache.get(&key))
            .now_or_never()
            .expect("an L1 hit completes at once")
            .unwrap();
        assert_eq!(v, Some(42));
    }
    let allocated = allocations() - before;
    assert_eq!(
        cache.stats().l1.unwrap().hits - hits_before,
        HITS,
        "every read was an L1 hit"
    );
    assert_eq!(allocated, 0, "{allocated} allocations in {HITS} L1 hits");
    forze.shutdown().await.unwrap();
}

/// Allocations per call of `call`, run `CALLS` times to completion on a thread of its own
/// (inside `runtime`, whose workers run the driver's connection tasks): only what the
/// caller's side of each call allocates is counted.
fn allocations_per_call<F, Fut>(runtime: &tokio::runtime::Handle, call: F) -> f64
where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    const CALLS: u64 = 2_000;
    let runtime = runtime.clone();
    std::thread::spawn(move || {
        let _inside = runtime.enter();
        // Warm up: lazily built tables, pooled blocks, the connection's buffers.
        for _ in 0..100 {
            futures::executor::block_on(call());
        }
        let before = allocations();
        for _ in 0..CALLS {
            futures::executor::block_on(call());
        }
        (allocations() - before) as f64 / CALLS as f64
    })
    .join()
    .expect("the counting thread")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_call_allocates_no_more_than_the_drivers_command_and_its_key() {
    use forze_redis::counter::CounterId;
    use forze_redis::error::Access;
    use fred::interfaces::{ClientLike, KeysInterface};
    use std::sync::Arc;

    let bin = server_binaries().remove(0);
    let server = TestServer::start(&bin);
    let forze = spawn_ready(config(Some(&server.url()), "remote-alloc", RESOURCES)).await;
    let redis = forze_redis::Config::from_toml_str(&format!(
        "[redis]\nurl = \"{}\"\npool_size = 4",
        server.url()
    ))
    .unwrap()
    .redis
    .unwrap();
    let fred = Arc::new(forze_redis::connection::RedisConnection::build(&redis).unwrap());
    fred.pool().init().await.unwrap();
    let runtime = tokio::runtime::Handle::current();

    let cache = forze.cache("remote").unwrap();
    // Behind an `Arc`: each call takes its own handle without allocating.
    let key = Arc::new(CacheKey::new("r1"));
    cache.set_bytes(&key, &[7u8; 64], None).await.unwrap();
    let (c, k) = (cache.clone(), key.clone());
    let ours_get = allocations_per_call(&runtime, move || {
        let (c, k) = (c.clone(), k.clone());
        async move {
            assert!(c.get_bytes(&k).await.unwrap().is_some());
        }
    });
    let f = fred.clone();
    let fred_get = allocations_per_call(&runtime, move || {
        let f = f.clone();
        async move {
            let client = f.client("test").unwrap();
            let v: Option<bytes::Bytes> = client
                .with_options(f.options(Access::Read))
                .get("forze:cache:{remote:_:r1}")
                .await
                .unwrap();
            assert!(v.is_some());
        }
    });

    let counter = forze.counter("hits").unwrap();
    let id = Arc::new(CounterId::suffix("c1"));
    let ours_incr = allocations_per_call(&runtime, move || {
        let (c, id) = (counter.clone(), id.clone());
        async move {
            c.incr(&id, 1).await.unwrap();
        }
    });
    let f = fred.clone();
    let fred_incr = allocations_per_call(&runtime, move || {
        let f = f.clone();
        async move {
            let client = f.client("test").unwrap();
            let _: i64 = client
                .with_options(f.options(Access::Write))
                .incr_by("alloc:c1", 1)
                .await
                .unwrap();
        }
    });
    // A script: a rate-limit decision against the same script by fred's own `EVALSHA`,
    // its arguments written as a user would (strings).
    let limiter = forze.rate_limit("api").unwrap();
    let ours_decide = allocations_per_call(&runtime, move || {
        let l = limiter.clone();
        async move {
            assert!(l.try_acquire("r1", 1).await.unwrap().allowed);
        }
    });
    let f = fred.clone();
    let fred_decide = allocations_per_call(&runtime, move || {
        let f = f.clone();
        async move {
            use fred::interfaces::LuaInterface;
            let client = f.client("test").unwrap();
            let r: Vec<i64> = client
                .with_options(f.options(Access::Write))
                .evalsha(
                    forze_redis::scripts::RATELIMIT_ACQUIRE.sha1(),
                    vec!["alloc:r1".to_string()],
                    vec![
                        "1000000000/1000".to_string(),
                        "1000000000".to_string(),
                        "1".to_string(),
                        "2000".to_string(),
                        "0".to_string(),
                    ],
                )
                .await
                .unwrap();
            assert_eq!(r[0], 1);
        }
    });
    println!(
        "allocations per call: cache get {ours_get} (fred GET {fred_get}), \
         counter incr {ours_incr} (fred INCRBY {fred_incr}), \
         rate-limit decision {ours_decide} (fred EVALSHA {fred_decide})"
    );
    // Ours builds the namespaced key (one `String`); everything else a call allocates is the
    // driver's. The small margin covers tables that grow now and then, never a whole
    // allocation per call.
    assert!(
        ours_get <= fred_get + 1.1,
        "a remote cache get allocates {ours_get} times, fred's GET {fred_get}"
    );
    assert!(
        ours_incr <= fred_incr + 1.1,
        "a counter increment allocates {ours_incr} times, fred's INCRBY {fred_incr}"
    );
    // Our script calls borrow their keys and send prebuilt or integer arguments: fewer
    // allocations than the same call written with fred's `evalsha` and strings.
    assert!(
        ours_decide <= fred_decide,
        "a rate-limit decision allocates {ours_decide} times, fred's EVALSHA {fred_decide}"
    );
    forze.shutdown().await.unwrap();
}

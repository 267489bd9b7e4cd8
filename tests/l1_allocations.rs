//! An L1 hit allocates nothing, with metrics recorded (a Prometheus recorder installed, as a
//! service would) and spans compiled in but not wanted by any subscriber. Counted by an
//! allocator that counts the allocations of the calling thread only, around hits polled to
//! completion on that thread.

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

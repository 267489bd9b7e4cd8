//! The L1's memory is bounded by what it charges: an entry filled from a Redis reply keeps its
//! own bytes, never the driver's read buffer the reply arrived in (kilobytes, shared with the
//! other replies of that read). Heap bytes counted by this binary's allocator.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicI64, Ordering};

use common::{config, server_binaries, spawn_ready, TestServer};
use forze_redis_actors::CacheKey;

struct LiveBytes;

static LIVE: AtomicI64 = AtomicI64::new(0);

unsafe impl GlobalAlloc for LiveBytes {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as i64, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as i64 - layout.size() as i64, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: LiveBytes = LiveBytes;

const RESOURCES: &str = r#"
[caches.hot]
ttl = "600s"
[caches.hot.l1]
ttl = "300s"
max_entries = 20000
[caches.cold]
ttl = "600s"
"#;

const ENTRIES: usize = 5_000;

/// Small entries filled between larger replies that are not kept (a namespace without an L1
/// on the same pool), as a mixed workload does: each kept entry came in a different read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_entries_hold_their_own_bytes_not_the_reply_buffers() {
    for bin in server_binaries() {
        let server = TestServer::start(&bin);
        let forze = spawn_ready(config(Some(&server.url()), "l1-memory", RESOURCES)).await;
        let (hot, cold) = (forze.cache("hot").unwrap(), forze.cache("cold").unwrap());
        let (big, small) = (vec![1u8; 4096], vec![2u8; 100]);
        for i in 0..ENTRIES {
            cold.set_bytes(&CacheKey::new(format!("c{i}")), &big, None)
                .await
                .unwrap();
            hot.set_bytes(&CacheKey::new(format!("h{i}")), &small, None)
                .await
                .unwrap();
        }
        let before = LIVE.load(Ordering::Relaxed);
        for i in 0..ENTRIES {
            for j in 0..3 {
                let key = CacheKey::new(format!("c{}", (3 * i + j) % ENTRIES));
                assert_eq!(cold.get_bytes(&key).await.unwrap().unwrap().len(), 4096);
            }
            let key = CacheKey::new(format!("h{i}"));
            assert_eq!(hot.get_bytes(&key).await.unwrap().unwrap().len(), 100);
        }
        let grown = LIVE.load(Ordering::Relaxed) - before;
        let l1 = hot.stats().l1.unwrap();
        assert_eq!(l1.entries, ENTRIES, "{bin}");
        // The L1 charges each entry its key, payload and a fixed overhead; the map's spare
        // capacity and the run's other state come on top. A reply buffer kept per entry is
        // 8 KiB or more, far beyond this bound.
        let bound = 4 * l1.bytes as i64;
        eprintln!(
            "{bin}: {} entries charged {} bytes; the heap grew {grown} bytes",
            l1.entries, l1.bytes
        );
        assert!(
            grown < bound,
            "{bin}: the heap grew {grown} bytes for {} charged",
            l1.bytes
        );
        forze.shutdown().await.unwrap();
    }
}

//! The L1's eviction order and lookups against moka, the policy-driven cache most Rust
//! services use, on the same Zipf(0.99) trace over 1 M keys with 10 k entries of capacity,
//! in the same run (release build):
//! - hit ratio: each access reads the key and inserts it on a miss;
//!   `ratio l1_zipf_hit_ratio_vs_moka` (ours / moka);
//! - lookups: the same trace read from the warmed caches on one thread, hits and misses alike;
//!   `ratio l1_zipf_lookups_vs_moka` (our lookups per second / moka's);
//! - memory: live heap bytes per entry (counted by this binary's allocator) of an L1 and a
//!   moka cache holding 1 k, 100 k and 1 M entries of a 10-byte key and a 64-byte value
//!   (`info l1_memory_per_entry_<n>`).
//!
//! `cargo bench --bench l1_policy`.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Instant;

use bytes::Bytes;
use forze_redis::cache::codec;
use forze_redis::cache::l1::L1;
use rand::{Rng, SeedableRng};

/// Counts live heap bytes, so memory per entry is measured, not estimated.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; only a counter is kept.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract for `alloc` is passed on as is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const KEYS: usize = 1_000_000;
const CAPACITY: usize = 10_000;
const SKEW: f64 = 0.99;

/// A Zipf(`SKEW`) trace of key indexes over `KEYS`, seeded (the same trace every run).
fn zipf_trace(len: usize) -> Vec<u32> {
    let mut cdf = Vec::with_capacity(KEYS);
    let mut total = 0.0;
    for rank in 1..=KEYS {
        total += 1.0 / (rank as f64).powf(SKEW);
        cdf.push(total);
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(17);
    (0..len)
        .map(|_| {
            let u = rng.random::<f64>() * total;
            cdf.partition_point(|&c| c < u).min(KEYS - 1) as u32
        })
        .collect()
}

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let len = if quick { 50_000 } else { 2_000_000 };
    let trace = zipf_trace(len);
    let keys: Vec<String> = (0..KEYS).map(|i| format!("key:{i}")).collect();
    let value = Bytes::from(vec![7u8; 64]);
    let entry = codec::decode(codec::encode_raw(None, &value)).expect("entry");

    let (mut ours_ratio, mut moka_ratio, mut ours_rate, mut moka_rate) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..common::ROUNDS {
        // Hit ratio: read, and insert on a miss, as a read-through cache does.
        let l1 = L1::standalone(CAPACITY, usize::MAX / 2);
        let mut hits = 0u64;
        for &i in &trace {
            let key = &keys[i as usize];
            if l1.get(key).is_some() {
                hits += 1;
            } else {
                l1.fill_now(key, entry.clone());
            }
        }
        ours_ratio.push(hits as f64 / len as f64);
        let moka: moka::sync::Cache<String, Bytes> = moka::sync::Cache::new(CAPACITY as u64);
        let mut hits = 0u64;
        for &i in &trace {
            let key = &keys[i as usize];
            if moka.get(key).is_some() {
                hits += 1;
            } else {
                moka.insert(key.clone(), value.clone());
            }
        }
        moka_ratio.push(hits as f64 / len as f64);
        moka.run_pending_tasks();

        // Lookups on the warmed caches: the same trace, reads only.
        let started = Instant::now();
        for &i in &trace {
            black_box(l1.get(black_box(&keys[i as usize])));
        }
        ours_rate.push(len as f64 / started.elapsed().as_secs_f64());
        let started = Instant::now();
        for &i in &trace {
            black_box(moka.get(black_box(&keys[i as usize])));
        }
        moka_rate.push(len as f64 / started.elapsed().as_secs_f64());
    }
    let (o, m) = (common::median(ours_ratio), common::median(moka_ratio));
    println!(
        "l1_zipf_hit_ratio: ours {o:.4}, moka {m:.4} (Zipf {SKEW}, {KEYS} keys, {CAPACITY} entries, {len} accesses)"
    );
    println!("ratio l1_zipf_hit_ratio_vs_moka {:.3}", o / m);
    let (o, m) = (common::median(ours_rate), common::median(moka_rate));
    println!("l1_zipf_lookups: ours {o:.0}/s, moka {m:.0}/s");
    println!("ratio l1_zipf_lookups_vs_moka {:.3}", o / m);
    memory_per_entry(if quick {
        &[1_000]
    } else {
        &[1_000, 100_000, 1_000_000]
    });
}

/// Live heap bytes per entry of each cache holding `n` distinct entries.
fn memory_per_entry(sizes: &[usize]) {
    for &n in sizes {
        let before = LIVE.load(Ordering::Relaxed);
        let l1 = L1::standalone(n, usize::MAX / 2);
        for i in 0..n {
            let payload = codec::encode_raw(None, &[(i % 251) as u8; 64]);
            l1.fill_now(
                &format!("key:{i:06}"),
                codec::decode(payload).expect("entry"),
            );
        }
        assert_eq!(l1.len(), n);
        let ours = (LIVE.load(Ordering::Relaxed) - before) as f64 / n as f64;
        drop(l1);
        let before = LIVE.load(Ordering::Relaxed);
        let moka: moka::sync::Cache<String, Bytes> = moka::sync::Cache::new(n as u64);
        for i in 0..n {
            moka.insert(
                format!("key:{i:06}"),
                Bytes::from(vec![(i % 251) as u8; 64]),
            );
        }
        moka.run_pending_tasks();
        let theirs = (LIVE.load(Ordering::Relaxed) - before) as f64 / n as f64;
        drop(moka);
        println!("info l1_memory_per_entry_{n} ours {ours:.0} bytes, moka {theirs:.0} bytes");
    }
}

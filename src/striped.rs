//! Counts and samples taken on every operation by every thread, without one cache line
//! bouncing between the cores that take them.
//!
//! A single `AtomicU64` that every call increments moves its cache line to the incrementing
//! core each time another core touched it last: on two busy cores that is most calls, and
//! one such transfer costs about as much as the rest of an L1 hit. Each thread here bumps
//! its own stripe (its own cache line) and a read sums the stripes.
//!
//! Latency samples have the same problem one level down: a metrics recorder's histogram is
//! a shared structure, and two busy cores recording into it take turns owning its lines
//! (about 150 ns per record, against 50 from one thread). [`StripedSamples`] keeps each
//! thread's samples in its own stripe and hands them on in batches.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
#[cfg(any(feature = "metrics", test))]
use std::sync::{Mutex, PoisonError};

/// Stripes per counter: threads beyond this share stripes (still correct, only slower).
pub(crate) const STRIPES: usize = 8;

/// One stripe, alone on its cache line.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Stripe(AtomicU64);

/// A monotonic counter with one stripe per thread (up to [`STRIPES`]).
#[derive(Debug, Default)]
pub struct StripedCounter {
    stripes: [Stripe; STRIPES],
}

thread_local! {
    /// This thread's stripe, handed out round-robin at its first count.
    static STRIPE: usize = {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES
    };
}

/// This thread's stripe (also the shard a thread keeps to in other per-thread structures).
#[inline]
pub(crate) fn stripe() -> usize {
    STRIPE.try_with(|s| *s).unwrap_or(0)
}

impl StripedCounter {
    /// Add `n` to this thread's stripe.
    #[inline]
    pub fn add(&self, n: u64) {
        self.stripes[stripe()].0.fetch_add(n, Ordering::Relaxed);
    }

    /// The total: exact once the adds it must see have happened-before this call.
    pub fn get(&self) -> u64 {
        self.stripes
            .iter()
            .map(|s| s.0.load(Ordering::Relaxed))
            .fold(0u64, u64::wrapping_add)
    }
}

// Samples are kept for the latency histogram alone (the `metrics` feature).

/// Most samples a stripe keeps before it hands them on: 2 KiB per stripe in use.
#[cfg(any(feature = "metrics", test))]
pub const SAMPLE_BATCH: usize = 256;

/// Samples (latencies, in seconds) taken by every thread, kept per stripe and handed on in
/// batches: a stripe's samples go to the sink when it holds [`SAMPLE_BATCH`] of them, and
/// every stripe's when [`StripedSamples::drain`] is called (a publishing tick). Memory stays
/// bounded whether or not anything drains.
#[cfg(any(feature = "metrics", test))]
#[derive(Debug, Default)]
pub struct StripedSamples {
    stripes: [SampleStripe; STRIPES],
}

/// One stripe's samples, alone on its cache line. A lock, though each thread has its own
/// stripe: threads beyond [`STRIPES`] share one, and the drain takes it too. Uncontended,
/// it costs two atomic operations on a line this core already holds.
#[cfg(any(feature = "metrics", test))]
#[derive(Debug, Default)]
#[repr(align(64))]
struct SampleStripe(Mutex<Vec<f64>>);

#[cfg(any(feature = "metrics", test))]
impl StripedSamples {
    /// Keep `value` in this thread's stripe; when that makes a full batch, hand the batch to
    /// `sink` (on this thread, under the stripe's lock).
    #[inline]
    pub fn push(&self, value: f64, sink: impl FnOnce(&[f64])) {
        let mut kept = self.stripes[stripe()]
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        kept.push(value);
        if kept.len() >= SAMPLE_BATCH {
            sink(&kept);
            kept.clear();
        }
    }

    /// Hand every stripe's kept samples to `sink`, one batch per stripe that has any.
    pub fn drain(&self, mut sink: impl FnMut(&[f64])) {
        for stripe in &self.stripes {
            let mut kept = stripe.0.lock().unwrap_or_else(PoisonError::into_inner);
            if !kept.is_empty() {
                sink(&kept);
                kept.clear();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn counts_from_many_threads_add_up() {
        let c = Arc::new(StripedCounter::default());
        let threads: Vec<_> = (0..12)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        c.add(1);
                    }
                    c.add(5);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(c.get(), 12 * 10_005);
        assert_eq!(std::mem::align_of::<Stripe>(), 64);
    }

    /// Every sample reaches the sink exactly once, in full batches while it is taken and the
    /// rest at the drain, from more threads than there are stripes.
    #[test]
    fn samples_from_many_threads_reach_the_sink_once() {
        use std::sync::Mutex;
        let samples = Arc::new(StripedSamples::default());
        let seen = Arc::new(Mutex::new(Vec::<f64>::new()));
        const PER_THREAD: usize = 3 * SAMPLE_BATCH + 7;
        let threads: Vec<_> = (0..12)
            .map(|t| {
                let (samples, seen) = (samples.clone(), seen.clone());
                std::thread::spawn(move || {
                    for i in 0..PER_THREAD {
                        let value = (t * PER_THREAD + i) as f64;
                        samples.push(value, |batch| {
                            assert_eq!(batch.len(), SAMPLE_BATCH, "only full batches early");
                            seen.lock().unwrap().extend_from_slice(batch);
                        });
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let early = seen.lock().unwrap().len();
        assert!(
            early >= 12 * 3 * SAMPLE_BATCH / 2,
            "batches went on early: {early}"
        );
        samples.drain(|batch| seen.lock().unwrap().extend_from_slice(batch));
        samples.drain(|_| panic!("a second drain finds nothing"));
        let mut all = seen.lock().unwrap().clone();
        all.sort_by(f64::total_cmp);
        let want: Vec<f64> = (0..12 * PER_THREAD).map(|v| v as f64).collect();
        assert_eq!(all, want);
        assert_eq!(std::mem::align_of::<SampleStripe>(), 64);
    }
}

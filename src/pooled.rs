//! Heap space for the driver's command futures, reused instead of allocated per call.
//!
//! A fred command future is about 8 KiB. Held inline, every async layer above it copies it
//! when built and moved; boxed, every call allocates and frees 8 KiB, which glibc serves
//! from its large bins, and a large request first consolidates every small chunk freed
//! since (measured: boxing alone cost about a tenth of a call's client CPU at 64 callers).
//! [`Pooled`] puts the future in a block taken from a small per-thread pool of blocks of its
//! exact layout and gives the block back when the future is dropped, so a steady stream of
//! calls allocates nothing.

use std::alloc::{alloc, dealloc, handle_alloc_error, Layout};
use std::cell::RefCell;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::ptr::NonNull;
use std::task::{Context, Poll};

/// Bytes of free blocks kept per thread; more are freed. A thread that served 128 calls at
/// once keeps their 8 KiB blocks for the next 128 (a smaller pool, 32 blocks, gave most
/// of the gain back at 64 callers on two threads: blocks freed past it were allocated again).
const KEPT_BYTES: usize = 1024 * 1024;

/// Free blocks of one thread, by layout (a handful of layouts: one per command kind).
struct Pool {
    free: Vec<(Layout, Vec<NonNull<u8>>)>,
    /// Bytes of the blocks in `free`.
    kept: usize,
}

impl Pool {
    fn take(&mut self, layout: Layout) -> Option<NonNull<u8>> {
        let block = self
            .free
            .iter_mut()
            .find(|(l, _)| *l == layout)
            .and_then(|(_, blocks)| blocks.pop())?;
        self.kept -= layout.size();
        Some(block)
    }

    /// Keep `block` for reuse, or return `false` when this thread keeps enough already.
    fn give(&mut self, layout: Layout, block: NonNull<u8>) -> bool {
        if self.kept + layout.size() > KEPT_BYTES {
            return false;
        }
        let i = match self.free.iter().position(|(l, _)| *l == layout) {
            Some(i) => i,
            None => {
                self.free.push((layout, Vec::new()));
                self.free.len() - 1
            }
        };
        self.free[i].1.push(block);
        self.kept += layout.size();
        true
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        for (layout, blocks) in self.free.drain(..) {
            for block in blocks {
                // SAFETY: every pooled block was allocated with this layout and is unused.
                unsafe { dealloc(block.as_ptr(), layout) };
            }
        }
    }
}

thread_local! {
    static POOL: RefCell<Pool> = const {
        RefCell::new(Pool {
            free: Vec::new(),
            kept: 0,
        })
    };
}

/// A future in a pooled heap block: `Unpin`, one pointer wide, and moved for free.
pub struct Pooled<F> {
    ptr: NonNull<F>,
    /// It owns an `F` (dropped with it), as a `Box<F>` would.
    _owns: PhantomData<F>,
}

// SAFETY: `Pooled<F>` owns its `F` exactly as a `Box<F>` would.
unsafe impl<F: Send> Send for Pooled<F> {}
// SAFETY: as above; `&Pooled<F>` gives no access to `F`.
unsafe impl<F: Sync> Sync for Pooled<F> {}

impl<F> Unpin for Pooled<F> {}

/// Build a future with `make` straight into a pooled block (see the module's documentation).
///
/// The block is taken before the future exists, so the optimizer builds it in place: a
/// future passed by value would be built on the stack first and then copied whole into the
/// block (8 KiB for a driver command: measured at about 2 % of a remote read's client CPU).
#[inline]
pub fn pooled_with<F: Future>(make: impl FnOnce() -> F) -> Pooled<F> {
    let layout = Layout::new::<F>();
    if layout.size() == 0 {
        // Nothing to store: a dangling, aligned pointer is a valid place for it.
        let ptr = NonNull::<F>::dangling();
        // SAFETY: writing a zero-sized value through an aligned pointer is allowed.
        unsafe { ptr.as_ptr().write(make()) };
        return Pooled {
            ptr,
            _owns: PhantomData,
        };
    }
    let ptr = take_block(layout).cast::<F>();
    // Owns the block until the future is in it: a panicking `make` gives it back.
    let guard = BlockGuard {
        block: ptr.cast(),
        layout,
    };
    // SAFETY: the block is unused, and sized and aligned for `F`.
    unsafe { ptr.as_ptr().write(make()) };
    std::mem::forget(guard);
    Pooled {
        ptr,
        _owns: PhantomData,
    }
}

/// A block from this thread's pool, or a new one; `layout` is not zero-sized.
fn take_block(layout: Layout) -> NonNull<u8> {
    POOL.try_with(|p| p.borrow_mut().take(layout))
        .ok()
        .flatten()
        .unwrap_or_else(|| {
            // SAFETY: the layout's size is not zero.
            NonNull::new(unsafe { alloc(layout) }).unwrap_or_else(|| handle_alloc_error(layout))
        })
}

/// Give an unused block back to this thread's pool, or free it.
fn give_block(block: NonNull<u8>, layout: Layout) {
    // During thread teardown the pool may be gone: free the block then.
    let kept = POOL
        .try_with(|p| p.borrow_mut().give(layout, block))
        .unwrap_or(false);
    if !kept {
        // SAFETY: the block was allocated with `layout` and nothing uses it any more.
        unsafe { dealloc(block.as_ptr(), layout) };
    }
}

/// Returns a block that never received its future (its maker panicked).
struct BlockGuard {
    block: NonNull<u8>,
    layout: Layout,
}

impl Drop for BlockGuard {
    fn drop(&mut self) {
        give_block(self.block, self.layout);
    }
}

impl<F: Future> Future for Pooled<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // SAFETY: the future stays at this address until it is dropped in place (`Drop`
        // below), so it is pinned; `Pooled` itself may move freely, it only points there.
        unsafe { Pin::new_unchecked(&mut *self.ptr.as_ptr()) }.poll(cx)
    }
}

impl<F> Drop for Pooled<F> {
    fn drop(&mut self) {
        let layout = Layout::new::<F>();
        // SAFETY: the future was written at `ptr` and is dropped exactly once, here.
        unsafe { std::ptr::drop_in_place(self.ptr.as_ptr()) };
        if layout.size() == 0 {
            return;
        }
        give_block(self.ptr.cast(), layout);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// Counts its drops; holds a large buffer so its future is far above any small bin.
    struct Tracked(Arc<AtomicUsize>, [u8; 4096]);
    impl Drop for Tracked {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn futures_run_once_drop_once_and_reuse_their_blocks_across_threads() {
        let drops = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for i in 0..200u64 {
            let d = drops.clone();
            tasks.push(tokio::spawn(async move {
                let held = Tracked(d, [i as u8; 4096]);
                let f = pooled_with(|| async move {
                    tokio::task::yield_now().await;
                    u64::from(held.1[4095]) + i
                });
                // Moved to another task and thread before it ends: the block is given back
                // to whichever thread drops it.
                tokio::spawn(f).await.unwrap()
            }));
        }
        for (i, t) in tasks.into_iter().enumerate() {
            assert_eq!(t.await.unwrap(), (i as u64 % 256) + i as u64);
        }
        assert_eq!(drops.load(Ordering::Relaxed), 200);

        // A future dropped before it completes drops its state exactly once too.
        let d = Arc::new(AtomicUsize::new(0));
        let held = Tracked(d.clone(), [0; 4096]);
        let pending = pooled_with(|| async move {
            let _keep = held;
            std::future::pending::<()>().await;
        });
        drop(pending);
        assert_eq!(d.load(Ordering::Relaxed), 1);

        // Zero-sized futures need no block.
        struct Ready;
        impl Future for Ready {
            type Output = u8;
            fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<u8> {
                Poll::Ready(7)
            }
        }
        assert_eq!(std::mem::size_of::<Ready>(), 0);
        assert_eq!(pooled_with(|| Ready).await, 7);
    }

    #[test]
    fn a_freed_block_is_reused_by_the_next_future_of_its_layout() {
        let big = [1u8; 8192];
        let first = pooled_with(|| async move { big[0] });
        let at = first.ptr.as_ptr() as usize;
        drop(first);
        let big = [2u8; 8192];
        let second = pooled_with(|| async move { big[1] });
        assert_eq!(second.ptr.as_ptr() as usize, at);
    }

    #[test]
    fn a_maker_that_panics_gives_its_block_back() {
        let kept = || POOL.with(|p| p.borrow().kept);
        let big = [3u8; 8192];
        let before = kept();
        let caught = std::panic::catch_unwind(|| {
            pooled_with(|| -> std::future::Ready<u8> { panic!("no future") });
        });
        assert!(caught.is_err());
        // The block taken for the future is back in the pool, and the next future of
        // that layout gets it.
        let layout = Layout::new::<std::future::Ready<u8>>();
        assert_eq!(kept(), before + layout.size());
        let next = pooled_with(|| std::future::ready(big[0]));
        assert_eq!(kept(), before);
        drop(next);
    }
}

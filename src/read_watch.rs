//! One deadline mechanism per connection pool for reads, instead of a timer per read.
//!
//! Every command is bounded by the command timeout. The driver bounds a command with a tokio
//! timer of its own, registered in the runtime's timer wheel when the command is sent and
//! removed when its reply comes: two locked wheel operations per command, about a tenth of a
//! remote cache read's client CPU at 64 callers. A read watched here goes without that timer:
//! it enters its deadline in a slot of a per-thread shard (one uncontended lock) and leaves it
//! when it ends (another), and one ticker task per pool passes over the shards every tick and
//! wakes every read past its deadline, which then ends with the driver's own `Timeout`. A
//! read so ends at most a tick (an eighth of the timeout, at most 50 ms) plus two kernel
//! ticks after its deadline, never before it.
//!
//! Only reads are watched. A command the driver timed out itself is never sent afterwards
//! (it checks a flag on the command before writing or replaying it); a watched read that
//! timed out may still be sent later, to an answer nobody reads, for instance when it was
//! queued behind a stalled connection or in flight when the connection was cut (the driver
//! then replays a read once after reconnecting). Harmless for a read, not for a write, whose
//! late execution the caller was told might or might not happen: writes keep the driver's
//! timer. To keep a stalled or failing server from receiving a backlog of such reads, reads go
//! back to the driver's timer (and so to its flag) for a while once one read has timed out
//! either way, and whenever the ticker is not running (no runtime to run it, or a runtime
//! shutting down).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use crate::deadline::Deadline;
use crate::task::AbortOnDrop;

/// Shards of watched reads: a thread keeps to its stripe's, so its lock is uncontended but
/// for the ticker's passes and reads that moved to another thread.
const SHARDS: usize = crate::striped::STRIPES;

/// How long reads keep the driver's timer after a read timed out, at least.
const TIMER_HOLD_MIN: Duration = Duration::from_secs(5);

/// The reads in flight of one pool, by deadline, and their ticker.
#[derive(Debug)]
pub(crate) struct ReadWatch {
    shared: Arc<Shared>,
    _ticker: AbortOnDrop,
}

#[derive(Debug)]
struct Shared {
    shards: [Shard; SHARDS],
    timeout: Duration,
    tick: Duration,
    /// How long reads keep the driver's timer after a timeout.
    hold: Duration,
    /// The ticker's last pass (nanoseconds of [`Deadline`]).
    last_pass: AtomicU64,
    /// Until when reads take the driver's timer (nanoseconds of [`Deadline`]; 0: not).
    timer_until: AtomicU64,
    /// Reads this watch ended with a timeout.
    expired: AtomicU64,
}

/// One shard, alone on its cache lines: two threads' shards sharing a line would move it
/// between their cores on every read (measured: a third of the watch's cost).
#[derive(Debug, Default)]
#[repr(align(128))]
struct Shard(Mutex<Slots>);

/// One shard's reads: a slab of slots, reused.
#[derive(Debug, Default)]
struct Slots {
    slots: Vec<Slot>,
    free: Vec<usize>,
}

#[derive(Debug)]
enum Slot {
    Free,
    Waiting { deadline: Deadline, waker: Waker },
    Expired,
}

impl ReadWatch {
    /// A watch bounding reads by `timeout`, its ticker spawned on the current runtime;
    /// `None` outside one (reads then keep the driver's timer).
    pub(crate) fn start(timeout: Duration) -> Option<Self> {
        Self::start_holding(timeout, timeout.saturating_mul(10).max(TIMER_HOLD_MIN))
    }

    /// [`ReadWatch::start`], reads keeping the driver's timer for `hold` after a timeout.
    fn start_holding(timeout: Duration, hold: Duration) -> Option<Self> {
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let tick = (timeout / 8).clamp(Duration::from_millis(1), Duration::from_millis(50));
        let shared = Arc::new(Shared {
            shards: Default::default(),
            timeout,
            tick,
            hold,
            last_pass: AtomicU64::new(Deadline::now().as_nanos()),
            timer_until: AtomicU64::new(0),
            expired: AtomicU64::new(0),
        });
        let ticker = runtime.spawn(tick_until_dropped(Arc::downgrade(&shared), tick));
        Some(ReadWatch {
            shared,
            _ticker: AbortOnDrop(ticker),
        })
    }

    /// The deadline of a read starting now, if it is to be watched: not while reads keep the
    /// driver's timer after a timeout, nor while the ticker has not passed for several ticks.
    pub(crate) fn deadline(&self) -> Option<Deadline> {
        let s = &self.shared;
        let deadline = Deadline::at_least_after(s.timeout);
        let now = deadline.as_nanos().saturating_sub(nanos(s.timeout));
        let stale_after = s
            .last_pass
            .load(Ordering::Relaxed)
            .saturating_add(nanos(s.tick.saturating_mul(4)) + nanos(Duration::from_millis(25)));
        (now >= s.timer_until.load(Ordering::Relaxed) && now <= stale_after).then_some(deadline)
    }

    /// `read` bounded by `deadline`.
    pub(crate) fn watch<F>(&self, deadline: Deadline, read: F) -> Watched<'_, F> {
        Watched {
            read,
            shared: &self.shared,
            deadline,
            slot: None,
        }
    }

    /// A read timed out (by this watch or by the driver's timer): reads take the driver's
    /// timer for a while.
    pub(crate) fn saw_timeout(&self) {
        self.shared.saw_timeout();
    }

    /// Reads this watch ended with a timeout.
    pub(crate) fn expired(&self) -> u64 {
        self.shared.expired.load(Ordering::Relaxed)
    }
}

impl Shared {
    fn saw_timeout(&self) {
        let until = Deadline::after(self.hold).as_nanos();
        self.timer_until.fetch_max(until, Ordering::Relaxed);
    }

    fn lock(&self, shard: usize) -> MutexGuard<'_, Slots> {
        // A panic under this lock leaves the slots consistent (each change is one write).
        self.shards[shard]
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Wake every read past its deadline; called once per tick.
    fn pass(&self) {
        let now = Deadline::now();
        let mut due = Vec::new();
        for shard in 0..self.shards.len() {
            let mut slots = self.lock(shard);
            for slot in slots.slots.iter_mut() {
                if matches!(slot, Slot::Waiting { deadline, .. } if *deadline <= now) {
                    if let Slot::Waiting { waker, .. } = std::mem::replace(slot, Slot::Expired) {
                        due.push(waker);
                    }
                }
            }
        }
        self.last_pass.store(now.as_nanos(), Ordering::Relaxed);
        if !due.is_empty() {
            self.expired.fetch_add(due.len() as u64, Ordering::Relaxed);
            self.saw_timeout();
        }
        // Woken outside the locks: a waker may run code of its own.
        for waker in due {
            waker.wake();
        }
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

async fn tick_until_dropped(shared: Weak<Shared>, tick: Duration) {
    let mut ticks = tokio::time::interval(tick);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        shared.pass();
    }
}

/// A read bounded by a [`ReadWatch`]: its own output, or the driver's `Timeout` error once
/// its deadline has passed.
pub(crate) struct Watched<'a, F> {
    read: F,
    shared: &'a Shared,
    deadline: Deadline,
    /// (shard, index) of its slot, once it waited.
    slot: Option<(usize, usize)>,
}

impl<F> Watched<'_, F> {
    /// Give its slot back, if it has one.
    fn leave(&mut self) {
        if let Some((shard, index)) = self.slot.take() {
            let mut slots = self.shared.lock(shard);
            slots.slots[index] = Slot::Free;
            slots.free.push(index);
        }
    }
}

impl<T, F> Future for Watched<'_, F>
where
    F: Future<Output = Result<T, fred::error::Error>> + Unpin,
{
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        if let Poll::Ready(out) = Pin::new(&mut this.read).poll(cx) {
            this.leave();
            return Poll::Ready(out);
        }
        match this.slot {
            None => {
                let shard = crate::striped::stripe();
                let mut slots = this.shared.lock(shard);
                let waiting = Slot::Waiting {
                    deadline: this.deadline,
                    waker: cx.waker().clone(),
                };
                let index = match slots.free.pop() {
                    Some(index) => {
                        slots.slots[index] = waiting;
                        index
                    }
                    None => {
                        slots.slots.push(waiting);
                        slots.slots.len() - 1
                    }
                };
                this.slot = Some((shard, index));
            }
            Some((shard, index)) => {
                let mut slots = this.shared.lock(shard);
                match &mut slots.slots[index] {
                    Slot::Expired => {
                        drop(slots);
                        this.leave();
                        return Poll::Ready(Err(fred::error::Error::new(
                            fred::error::ErrorKind::Timeout,
                            "Request timed out.",
                        )));
                    }
                    Slot::Waiting { waker, .. } => {
                        if !waker.will_wake(cx.waker()) {
                            *waker = cx.waker().clone();
                        }
                    }
                    // Never: the slot is this read's until it leaves.
                    Slot::Free => {}
                }
            }
        }
        Poll::Pending
    }
}

impl<F> Drop for Watched<'_, F> {
    fn drop(&mut self) {
        self.leave();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::time::Instant;

    type Reply = Result<u32, fred::error::Error>;

    fn watch(timeout_ms: u64, hold_ms: u64) -> ReadWatch {
        ReadWatch::start_holding(
            Duration::from_millis(timeout_ms),
            Duration::from_millis(hold_ms),
        )
        .expect("in a runtime")
    }

    /// Slots that hold a read (waiting or expired), over every shard.
    fn slots_in_use(w: &ReadWatch) -> usize {
        (0..SHARDS)
            .map(|i| {
                let slots = w.shared.lock(i);
                slots
                    .slots
                    .iter()
                    .filter(|s| !matches!(s, Slot::Free))
                    .count()
            })
            .sum()
    }

    /// A read the test answers: pending until `answered` is set (and polled again).
    fn answered_by(answered: Arc<AtomicBool>) -> impl Future<Output = Reply> + Unpin {
        futures::future::poll_fn(move |_| {
            if answered.load(Ordering::SeqCst) {
                Poll::Ready(Ok(7))
            } else {
                Poll::Pending
            }
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_never_answered_ends_with_a_timeout_never_before_its_deadline() {
        let w = watch(40, 60_000);
        let deadline = w.deadline().expect("watched");
        let started = Instant::now();
        let out = w.watch(deadline, futures::future::pending::<Reply>()).await;
        let took = started.elapsed();
        let e = out.expect_err("never answered");
        assert_eq!(*e.kind(), fred::error::ErrorKind::Timeout, "{e:?}");
        assert!(took >= Duration::from_millis(40), "ended early: {took:?}");
        assert!(took < Duration::from_secs(5), "ended late: {took:?}");
        assert_eq!(w.expired(), 1);
        assert_eq!(slots_in_use(&w), 0, "its slot given back");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn after_a_timeout_reads_take_the_drivers_timer_until_the_hold_ends() {
        let w = watch(20, 300);
        let deadline = w.deadline().expect("watched");
        let _ = w.watch(deadline, futures::future::pending::<Reply>()).await;
        assert!(w.deadline().is_none(), "watched right after a timeout");
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert!(
            w.deadline().is_some(),
            "still on the driver's timer after the hold"
        );
        // A timeout the driver's timer reported counts alike.
        w.saw_timeout();
        assert!(w.deadline().is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn answered_and_dropped_reads_give_their_slots_back() {
        let w = watch(1_000, 60_000);
        for _ in 0..1_000 {
            let answered = Arc::new(AtomicBool::new(false));
            let mut read = w.watch(w.deadline().unwrap(), answered_by(answered.clone()));
            let waker = futures::task::noop_waker();
            let mut cx = Context::from_waker(&waker);
            assert!(Pin::new(&mut read).poll(&mut cx).is_pending());
            answered.store(true, Ordering::SeqCst);
            assert!(matches!(
                Pin::new(&mut read).poll(&mut cx),
                Poll::Ready(Ok(7))
            ));
        }
        let mut dropped: Vec<_> = (0..100)
            .map(|_| w.watch(w.deadline().unwrap(), futures::future::pending::<Reply>()))
            .collect();
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        for read in dropped.iter_mut() {
            assert!(Pin::new(read).poll(&mut cx).is_pending());
        }
        assert_eq!(slots_in_use(&w), 100);
        drop(dropped);
        assert_eq!(slots_in_use(&w), 0);
        // Slots are reused, not grown: one thread's shard holds at most the 100 at once.
        let allocated: usize = (0..SHARDS).map(|i| w.shared.lock(i).slots.len()).sum();
        assert!(allocated <= 100, "{allocated} slots for 100 reads at once");
        assert_eq!(w.expired(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_answer_there_when_the_deadline_passes_is_kept() {
        let w = watch(1_000, 60_000);
        let answered = Arc::new(AtomicBool::new(false));
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        // Already past its deadline when it starts waiting.
        let mut read = w.watch(Deadline::now(), answered_by(answered.clone()));
        assert!(Pin::new(&mut read).poll(&mut cx).is_pending());
        w.shared.pass();
        assert_eq!(w.expired(), 1, "expired by the pass");
        answered.store(true, Ordering::SeqCst);
        assert!(matches!(
            Pin::new(&mut read).poll(&mut cx),
            Poll::Ready(Ok(7))
        ));
        assert_eq!(slots_in_use(&w), 0);
        // Not answered: the expiry ends it.
        let mut read = w.watch(Deadline::now(), futures::future::pending::<Reply>());
        assert!(Pin::new(&mut read).poll(&mut cx).is_pending());
        w.shared.pass();
        assert!(matches!(
            Pin::new(&mut read).poll(&mut cx),
            Poll::Ready(Err(_))
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_a_running_ticker_reads_take_the_drivers_timer() {
        let w = watch(40, 60_000);
        assert!(w.deadline().is_some());
        w._ticker.0.abort();
        // Stale after four ticks (5 ms each) and 25 ms of slack.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(w.deadline().is_none(), "a read watched by no ticker");
    }

    #[test]
    fn outside_a_runtime_there_is_no_watch() {
        assert!(ReadWatch::start(Duration::from_millis(100)).is_none());
    }
}

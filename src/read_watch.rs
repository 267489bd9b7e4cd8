//! One deadline mechanism per connection pool for reads, instead of a timer per read.
//!
//! Every command is bounded by the command timeout. The driver bounds a command with a tokio
//! timer of its own, registered in the runtime's timer wheel when the command is sent and
//! removed when its reply comes: two locked wheel operations per command, about a tenth of a
//! remote cache read's client CPU at 64 callers. A read watched here goes without that timer:
//! it enters its deadline in a slot of a per-thread shard (one uncontended lock) and leaves it
//! when it ends (another), and one ticker task per pool passes over the shards every tick and
//! wakes every read past its deadline, which then ends with the driver's own `Timeout`. A
//! read so ends at most a tick (an eighth of the timeout, 5 to 50 ms) plus two kernel ticks
//! after its deadline, and however late the runtime runs the ticker and the read; never
//! before its deadline. Timeouts under 40 ms are left to the driver's timer.
//!
//! Only reads are watched. A command the driver timed out itself is never sent afterwards
//! (it checks a flag on the command before writing or replaying it); a watched read that
//! timed out may still be sent later, to an answer nobody reads, for instance when it was
//! queued behind a stalled connection or in flight when the connection was cut (the driver
//! then replays a read once after reconnecting). Harmless for a read, not for a write, whose
//! late execution the caller was told might or might not happen: writes keep the driver's
//! timer. To keep a stalled or failing server from receiving a backlog of such reads, reads go
//! back to the driver's timer (and so to its flag) for a while once one read has timed out
//! either way, and whenever the ticker is not running. A read already waiting when its ticker
//! stops (its runtime shutting down while another runtime still uses the pool) is handed a
//! timer of its own, on the runtime that polls it, for what is left of its wait.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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

/// The shortest timeout watched: below it the ticks would have to come every millisecond
/// or two, for every pool, even an idle one.
const SHORTEST_WATCHED: Duration = Duration::from_millis(40);

/// How long past its last pass the ticker counts as running: four ticks, plus the coarse
/// clock's margin (up to 20 ms ahead at a 100 Hz kernel tick) and some scheduling slack.
fn stale_after(tick: Duration) -> Duration {
    tick.saturating_mul(4) + Duration::from_millis(50)
}

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
    /// The ticker has stopped for good (its task was dropped).
    stopped: AtomicBool,
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
    Waiting {
        deadline: Deadline,
        waker: Waker,
    },
    /// Past its deadline: the read ends with a timeout when next polled.
    Expired,
    /// Its ticker stopped before the deadline: the read waits on a timer of its own.
    Orphaned,
}

impl Slots {
    /// Enter a waiting read; its index.
    fn enter(&mut self, deadline: Deadline, waker: Waker) -> usize {
        let waiting = Slot::Waiting { deadline, waker };
        match self.free.pop() {
            Some(index) => {
                self.slots[index] = waiting;
                index
            }
            None => {
                self.slots.push(waiting);
                self.slots.len() - 1
            }
        }
    }
}

impl ReadWatch {
    /// A watch bounding reads by `timeout`, its ticker spawned on the current runtime;
    /// `None` outside one, or for a timeout under 40 ms (reads then keep the driver's timer).
    pub(crate) fn start(timeout: Duration) -> Option<Self> {
        Self::start_holding(timeout, timeout.saturating_mul(10).max(TIMER_HOLD_MIN))
    }

    /// [`ReadWatch::start`], reads keeping the driver's timer for `hold` after a timeout.
    fn start_holding(timeout: Duration, hold: Duration) -> Option<Self> {
        if timeout < SHORTEST_WATCHED {
            return None;
        }
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let tick = (timeout / 8).clamp(Duration::from_millis(5), Duration::from_millis(50));
        let shared = Arc::new(Shared {
            shards: Default::default(),
            timeout,
            tick,
            hold,
            last_pass: AtomicU64::new(Deadline::now().as_nanos()),
            stopped: AtomicBool::new(false),
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
    /// driver's timer after a timeout, nor while the ticker is not running.
    pub(crate) fn deadline(&self) -> Option<Deadline> {
        let s = &self.shared;
        let deadline = Deadline::at_least_after(s.timeout);
        let now = deadline.as_nanos().saturating_sub(nanos(s.timeout));
        let ticking = now
            <= s.last_pass
                .load(Ordering::Relaxed)
                .saturating_add(nanos(stale_after(s.tick)))
            && !s.stopped.load(Ordering::Relaxed);
        (ticking && now >= s.timer_until.load(Ordering::Relaxed)).then_some(deadline)
    }

    /// `read` bounded by `deadline`.
    pub(crate) fn watch<F>(&self, deadline: Deadline, read: F) -> Watched<'_, F> {
        Watched {
            read,
            shared: &self.shared,
            deadline,
            slot: None,
            own_timer: None,
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

    /// Move every waiting read that `due` selects to `to`, and wake it (outside the locks: a
    /// waker may run code of its own). A shard left with no read gives its memory back, so
    /// a burst does not make every later pass longer.
    fn wake_waiting(&self, to: fn() -> Slot, due: impl Fn(Deadline) -> bool) {
        let mut woken = Vec::new();
        for shard in 0..self.shards.len() {
            let mut slots = self.lock(shard);
            for slot in slots.slots.iter_mut() {
                if matches!(slot, Slot::Waiting { deadline, .. } if due(*deadline)) {
                    if let Slot::Waiting { waker, .. } = std::mem::replace(slot, to()) {
                        woken.push(waker);
                    }
                }
            }
            if slots.free.len() == slots.slots.len() && slots.slots.capacity() > 64 {
                *slots = Slots::default();
            }
        }
        for waker in woken {
            waker.wake();
        }
    }

    /// Wake every read past its deadline; called once per tick.
    fn pass(&self) {
        let now = Deadline::now();
        self.wake_waiting(|| Slot::Expired, |deadline| deadline <= now);
        self.last_pass.store(now.as_nanos(), Ordering::Relaxed);
    }

    /// The ticker stopped: every read still waiting waits on a timer of its own.
    fn orphan_all(&self) {
        self.stopped.store(true, Ordering::Relaxed);
        self.wake_waiting(|| Slot::Orphaned, |_| true);
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The ticker: a pass every `tick` while the watch lives. Its guard is made with the future,
/// not when it first runs: dropped even unpolled (a runtime shutting down before the ticker's
/// first tick), it still hands every waiting read a timer of its own.
fn tick_until_dropped(shared: Weak<Shared>, tick: Duration) -> impl Future<Output = ()> {
    /// Dropped with the ticker's task (aborted with its watch, or by a runtime shutting
    /// down): no read is left waiting on it.
    struct Stopped(Weak<Shared>);
    impl Drop for Stopped {
        fn drop(&mut self) {
            if let Some(shared) = self.0.upgrade() {
                shared.orphan_all();
            }
        }
    }
    let stopped = Stopped(shared.clone());
    async move {
        let _stopped = stopped;
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
}

/// The driver's own timeout error, which every read's error mapping already knows.
fn timed_out() -> fred::error::Error {
    fred::error::Error::new(fred::error::ErrorKind::Timeout, "Request timed out.")
}

/// A read bounded by a [`ReadWatch`]: its own output, or the driver's `Timeout` error once
/// its deadline has passed.
pub(crate) struct Watched<'a, F> {
    read: F,
    shared: &'a Shared,
    deadline: Deadline,
    /// (shard, index) of its slot, once it waited.
    slot: Option<(usize, usize)>,
    /// Its own timer, once its ticker stopped.
    own_timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<F> Watched<'_, F> {
    /// Give its slot back, if it has one.
    fn leave(&mut self) {
        if let Some((shard, index)) = self.slot.take() {
            let mut slots = self.shared.lock(shard);
            let old = std::mem::replace(&mut slots.slots[index], Slot::Free);
            slots.free.push(index);
            drop(slots);
            // A waker's drop may run code of its own: not under the lock.
            drop(old);
        }
    }

    /// Ended by the watch: counted, and reads take the driver's timer for a while.
    fn expire<T>(&mut self) -> Poll<Result<T, fred::error::Error>> {
        self.leave();
        self.shared.expired.fetch_add(1, Ordering::Relaxed);
        self.shared.saw_timeout();
        Poll::Ready(Err(timed_out()))
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
        if let Some(timer) = &mut this.own_timer {
            return match timer.as_mut().poll(cx) {
                Poll::Ready(()) => this.expire(),
                Poll::Pending => Poll::Pending,
            };
        }
        let Some((shard, index)) = this.slot else {
            let shard = crate::striped::stripe();
            let mut slots = this.shared.lock(shard);
            let index = slots.enter(this.deadline, cx.waker().clone());
            this.slot = Some((shard, index));
            // Entered after the stopped ticker's last look at this shard (the flag is set
            // before it looks, and this lock orders the two): nobody would wake it, so it
            // takes a timer of its own at once, on the next poll.
            if this.shared.stopped.load(Ordering::Relaxed) {
                slots.slots[index] = Slot::Orphaned;
                drop(slots);
                cx.waker().wake_by_ref();
            }
            return Poll::Pending;
        };
        let mut slots = this.shared.lock(shard);
        match &mut slots.slots[index] {
            Slot::Waiting { waker, .. } => {
                let replaced = (!waker.will_wake(cx.waker()))
                    .then(|| std::mem::replace(waker, cx.waker().clone()));
                drop(slots);
                // A waker's drop may run code of its own: not under the lock.
                drop(replaced);
                Poll::Pending
            }
            Slot::Expired => {
                drop(slots);
                this.expire()
            }
            Slot::Orphaned => {
                drop(slots);
                this.leave();
                let left = this
                    .deadline
                    .as_nanos()
                    .saturating_sub(Deadline::now().as_nanos());
                let mut timer = Box::pin(tokio::time::sleep(Duration::from_nanos(left)));
                if timer.as_mut().poll(cx).is_ready() {
                    return this.expire();
                }
                this.own_timer = Some(timer);
                Poll::Pending
            }
            Slot::Free => {
                // Never: the slot is this read's until it leaves. Enter again rather than
                // wait unwatched (the index is on the free list already).
                debug_assert!(false, "a watched read's slot was freed under it");
                let index = slots.enter(this.deadline, cx.waker().clone());
                this.slot = Some((shard, index));
                Poll::Pending
            }
        }
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

    /// A read past its deadline at once, entered (one poll) and expired by a pass.
    fn expired_read(w: &ReadWatch) -> Reply {
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut read = w.watch(Deadline::now(), futures::future::pending::<Reply>());
        assert!(Pin::new(&mut read).poll(&mut cx).is_pending());
        w.shared.pass();
        match Pin::new(&mut read).poll(&mut cx) {
            Poll::Ready(out) => out,
            Poll::Pending => panic!("not expired by the pass"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn after_a_timeout_reads_take_the_drivers_timer_until_the_hold_ends() {
        let w = watch(400, 300);
        assert!(w.deadline().is_some());
        assert!(expired_read(&w).is_err());
        assert!(w.deadline().is_none(), "watched right after a timeout");
        tokio::time::sleep(Duration::from_millis(400)).await;
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
        answered.store(true, Ordering::SeqCst);
        assert!(matches!(
            Pin::new(&mut read).poll(&mut cx),
            Poll::Ready(Ok(7))
        ));
        assert_eq!(slots_in_use(&w), 0);
        assert_eq!(
            w.expired(),
            0,
            "an answered read counted as ended by the watch"
        );
        // Not answered: the expiry ends it.
        assert!(expired_read(&w).is_err());
        assert_eq!(w.expired(), 1);
    }

    /// Counts its wakes.
    struct CountingWaker(AtomicU64);

    impl std::task::Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_waker_of_the_latest_poll_is_the_one_woken() {
        let w = watch(1_000, 60_000);
        let (a, b) = (
            Arc::new(CountingWaker(AtomicU64::new(0))),
            Arc::new(CountingWaker(AtomicU64::new(0))),
        );
        let mut read = w.watch(Deadline::now(), futures::future::pending::<Reply>());
        let waker_a = Waker::from(a.clone());
        let waker_b = Waker::from(b.clone());
        assert!(Pin::new(&mut read)
            .poll(&mut Context::from_waker(&waker_a))
            .is_pending());
        assert!(Pin::new(&mut read)
            .poll(&mut Context::from_waker(&waker_b))
            .is_pending());
        w.shared.pass();
        assert_eq!(b.0.load(Ordering::SeqCst), 1, "the latest waker not woken");
        assert_eq!(a.0.load(Ordering::SeqCst), 0, "a replaced waker woken");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_a_running_ticker_reads_take_the_drivers_timer() {
        let w = watch(400, 60_000);
        assert!(w.deadline().is_some());
        // Stopped before its first tick as well as after it.
        w._ticker.0.abort();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(w.deadline().is_none(), "a read watched by no ticker");
        let w = watch(400, 60_000);
        tokio::time::sleep(Duration::from_millis(100)).await;
        w._ticker.0.abort();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(w.deadline().is_none(), "a read watched by no ticker");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_waiting_when_its_ticker_stops_ends_on_a_timer_of_its_own() {
        let w = watch(300, 60_000);
        let deadline = w.deadline().expect("watched");
        let started = Instant::now();
        let read = w.watch(deadline, futures::future::pending::<Reply>());
        let stop = async {
            tokio::time::sleep(Duration::from_millis(30)).await;
            w._ticker.0.abort();
        };
        let (out, ()) =
            tokio::time::timeout(Duration::from_secs(5), async { tokio::join!(read, stop) })
                .await
                .expect("a read left waiting on a stopped ticker");
        let took = started.elapsed();
        assert!(out.is_err(), "{out:?}");
        assert!(took >= Duration::from_millis(300), "ended early: {took:?}");
        assert!(took < Duration::from_secs(5), "ended late: {took:?}");
        assert_eq!(w.expired(), 1);
        assert_eq!(slots_in_use(&w), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_that_starts_waiting_after_its_ticker_stopped_ends_on_a_timer_of_its_own() {
        let w = watch(400, 60_000);
        // Its deadline taken while the ticker ran; it first waits once the ticker is gone.
        let deadline = Deadline::at_least_after(Duration::from_millis(200));
        w._ticker.0.abort();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let started = Instant::now();
        let out = tokio::time::timeout(
            Duration::from_secs(5),
            w.watch(deadline, futures::future::pending::<Reply>()),
        )
        .await
        .expect("a read left waiting on a stopped ticker");
        assert!(out.is_err(), "{out:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(w.expired(), 1);
        assert_eq!(slots_in_use(&w), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_timeout_under_40_ms_is_left_to_the_drivers_timer() {
        assert!(ReadWatch::start(Duration::from_millis(39)).is_none());
        assert!(ReadWatch::start(Duration::from_millis(40)).is_some());
    }

    #[test]
    fn outside_a_runtime_there_is_no_watch() {
        assert!(ReadWatch::start(Duration::from_millis(100)).is_none());
    }
}

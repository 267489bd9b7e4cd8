//! Fenced distributed locks: the conformance battery (local backend and every server found),
//! contention with a fenced resource, a frozen holder, Redis down while held, tokens across a
//! server restart, a panicking heartbeater, and 10 000 leases renewed in one call per tick.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{config, spawn_ready, Backend};
use forze_redis::keys::TenantId;
use forze_redis::lock::LockId;
use forze_redis::{Config, ErrorKind};
use forze_redis_actors::{ChildKind, ForzeHandle, Lock, LostReason};
use forze_redis_testkit::{server_binaries, wait_until_async, Resp, TestServer};

const RESOURCES: &str = r#"
[locks.jobs]
lease = "2s"
retry_min = "1ms"
retry_max = "5ms"
[locks.short]
# Short enough to expire within a test, long enough that a loaded 2-core CI machine never
# misses a renewal for scheduling reasons alone.
lease = "1200ms"
extend_every = "200ms"
drift_margin = "200ms"
retry_min = "5ms"
retry_max = "20ms"
[locks.tenanted]
tenant_aware = true
[locks.woken]
wake_waiters = true
# Polling alone would retry after 2.5 to 5 s: a handover well before that was a wake.
retry_min = "5s"
retry_max = "5s"
[locks.fallback]
wake_waiters = true
retry_min = "10ms"
retry_max = "100ms"
[locks.fenced]
lease = "500ms"
extend_every = "100ms"
drift_margin = "100ms"
retry_min = "5ms"
retry_max = "20ms"
fence_idle = "1s"
"#;

fn id(s: &str) -> LockId {
    LockId::new(s)
}

/// The test double of a fenced resource: keeps the highest token it accepted and refuses
/// any lower one, as a storage system would with a fencing check.
#[derive(Debug, Default)]
struct FencedResource {
    highest: Mutex<u64>,
    accepted: Mutex<Vec<u64>>,
    rejected: AtomicU64,
}

impl FencedResource {
    fn write(&self, token: u64) -> bool {
        let mut h = self.highest.lock().unwrap();
        if token < *h {
            self.rejected.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        *h = token;
        self.accepted.lock().unwrap().push(token);
        true
    }
}

async fn replicas(url: Option<&str>, test: &str, n: usize) -> Vec<ForzeHandle> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(spawn_ready(config(url, test, RESOURCES)).await);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_battery_on_every_backend() {
    for backend in Backend::batteries() {
        let label = backend.label();
        eprintln!("lock battery on {label}");
        let forze = spawn_ready(config(backend.url().as_deref(), "lock-battery", RESOURCES)).await;
        let jobs = forze.lock("jobs").unwrap();
        exclusive_and_tokens_rise_across_release(&jobs, &label).await;
        wrong_owner_cannot_release_or_extend(&jobs, &label).await;
        queries_report_the_holder(&jobs, &label).await;
        a_dropped_guard_frees_the_lock(&jobs, &label).await;
        acquire_waits_then_times_out(&jobs, &label).await;
        expiry_and_steal_raise_the_token_and_fire_lost(&forze, &label).await;
        the_heartbeater_keeps_a_lease_alive_past_its_lease(&forze, &label).await;
        a_panicking_renewal_does_not_stop_the_next(&forze, &label).await;
        tenants_are_isolated_and_required(&forze, &label).await;
        a_wait_too_long_for_the_clock_waits_for_ever(&jobs, &label).await;
        a_lost_guard_is_not_extended(&forze, &label).await;
        the_lost_signal_fires_for_a_guard_on_a_thread_without_a_runtime(&forze, &label).await;
        forze.shutdown().await.unwrap();
    }
}

async fn a_wait_too_long_for_the_clock_waits_for_ever(jobs: &Lock, label: &str) {
    // `Duration::MAX` as "for ever": no deadline, and no panic computing one.
    let g = jobs.acquire(&id("for-ever"), Duration::MAX).await.unwrap();
    let waiter = tokio::spawn({
        let jobs = jobs.clone();
        async move { jobs.acquire(&id("for-ever"), Duration::MAX).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiter.is_finished(), "{label}: the waiter did not wait");
    let token = g.token();
    assert!(g.release().await.unwrap(), "{label}");
    let next = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("the waiter takes the released lock")
        .unwrap()
        .unwrap();
    assert!(next.token() > token, "{label}");
    next.release().await.unwrap();
}

async fn a_lost_guard_is_not_extended(forze: &ForzeHandle, label: &str) {
    let short = forze.lock("short").unwrap();
    forze.stall_heartbeats(true);
    let g = short
        .try_acquire(&id("lost-extend"))
        .await
        .unwrap()
        .unwrap();
    let mut lost = g.lost();
    let why = tokio::time::timeout(Duration::from_secs(3), lost.wait())
        .await
        .expect("lost fires");
    assert_eq!(why, LostReason::DeadlinePassed, "{label}");
    // The server lease outlives the local deadline by the drift margin (200 ms), so the key
    // is still this guard's; yet a lost lease stays lost, and is not renewed on the server.
    assert!(
        !g.extend().await.unwrap(),
        "{label}: a lost guard was extended"
    );
    assert!(g.is_lost(), "{label}");
    let left = short.ttl(&id("lost-extend")).await.unwrap();
    assert!(
        left.is_none_or(|t| t <= Duration::from_millis(250)),
        "{label}: the lost lease was renewed on the server: {left:?}"
    );
    forze.stall_heartbeats(false);
    drop(g);
}

async fn the_lost_signal_fires_for_a_guard_on_a_thread_without_a_runtime(
    forze: &ForzeHandle,
    label: &str,
) {
    let short = forze.lock("short").unwrap();
    forze.stall_heartbeats(true);
    let g = short
        .try_acquire(&id("on-a-thread"))
        .await
        .unwrap()
        .unwrap();
    // The guard moves to a plain thread, which asks for its lost signal there: the deadline
    // is still watched (on the runtime the guard was acquired on).
    let thread = std::thread::spawn(move || {
        let signal = g.lost();
        std::thread::sleep(Duration::from_millis(1500));
        signal.get()
    });
    let seen = tokio::task::spawn_blocking(move || thread.join())
        .await
        .unwrap();
    forze.stall_heartbeats(false);
    assert!(
        matches!(seen, Ok(Some(LostReason::DeadlinePassed))),
        "{label}: {seen:?}"
    );
}

/// A renewal period close to the deadline (`extend_every` 1.5 s against `lease − drift_margin`
/// 1.8 s, the heartbeater's tick 1.5 s): every lease is renewed in time, whatever the tick's
/// phase at its acquire. (Renewing what fell due within half a tick let a lease's first
/// renewal come up to half a tick late, after its deadline for about one lease in three here.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_period_close_to_the_deadline_still_renews_in_time() {
    const SLOW: &str = r#"
[locks.slow]
lease = "2s"
drift_margin = "200ms"
extend_every = "1500ms"
"#;
    let forze = spawn_ready(config(None, "lock-phase", SLOW)).await;
    let slow = forze.lock("slow").unwrap();
    // Ten acquires spread over one tick, so that every phase of the tick is taken.
    let mut held = Vec::new();
    for i in 0..10 {
        let g = slow
            .try_acquire(&id(&format!("p{i}")))
            .await
            .unwrap()
            .unwrap();
        let lost = g.lost();
        held.push((g, lost));
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    // Held past two renewals of the last one.
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let lost: Vec<_> = held
        .iter()
        .enumerate()
        .filter_map(|(i, (_, signal))| signal.get().map(|why| (i, why)))
        .collect();
    assert!(lost.is_empty(), "leases lost while renewed: {lost:?}");
    let stats = forze
        .heartbeat_stats()
        .await
        .unwrap()
        .expect("locks configured");
    assert!(stats.renewed >= 10, "{stats:?}");
    for (g, _) in held {
        assert!(g.release().await.unwrap());
    }
    forze.shutdown().await.unwrap();
}

async fn exclusive_and_tokens_rise_across_release(jobs: &Lock, label: &str) {
    let a = jobs.try_acquire(&id("x")).await.unwrap().expect("free");
    assert!(a.token() > 0);
    assert!(
        jobs.try_acquire(&id("x")).await.unwrap().is_none(),
        "{label}: exclusive"
    );
    let t1 = a.token();
    assert!(a.release().await.unwrap(), "{label}");
    let b = jobs
        .try_acquire(&id("x"))
        .await
        .unwrap()
        .expect("free again");
    assert!(b.token() > t1, "{label}: token rises across release");
    // A lock named like another lock's fence key is a different lock.
    let fence_named = jobs.try_acquire(&id("x:fence")).await.unwrap();
    assert!(
        fence_named.is_some(),
        "{label}: no aliasing with the fence key"
    );
    drop(fence_named);
    b.release().await.unwrap();
}

async fn wrong_owner_cannot_release_or_extend(jobs: &Lock, label: &str) {
    let g = jobs.try_acquire(&id("owned")).await.unwrap().unwrap();
    assert!(
        !jobs
            .release_as(&id("owned"), "not-the-owner")
            .await
            .unwrap(),
        "{label}"
    );
    assert!(
        !jobs.extend_as(&id("owned"), "not-the-owner").await.unwrap(),
        "{label}"
    );
    assert!(jobs.is_locked(&id("owned")).await.unwrap());
    assert!(
        jobs.extend_as(&id("owned"), g.owner()).await.unwrap(),
        "{label}: owner extends"
    );
    assert!(g.extend().await.unwrap());
    assert!(g.release().await.unwrap());
    assert!(!jobs.is_locked(&id("owned")).await.unwrap());
}

async fn queries_report_the_holder(jobs: &Lock, label: &str) {
    assert_eq!(jobs.owner(&id("q")).await.unwrap(), None);
    assert_eq!(jobs.ttl(&id("q")).await.unwrap(), None);
    let g = jobs.try_acquire(&id("q")).await.unwrap().unwrap();
    assert_eq!(
        jobs.owner(&id("q")).await.unwrap(),
        Some((g.owner().to_string(), g.token())),
        "{label}"
    );
    let ttl = jobs.ttl(&id("q")).await.unwrap().unwrap();
    assert!(
        ttl <= Duration::from_secs(2) && ttl > Duration::from_millis(500),
        "{label}: {ttl:?}"
    );
    g.release().await.unwrap();
}

async fn a_dropped_guard_frees_the_lock(jobs: &Lock, label: &str) {
    let g = jobs.try_acquire(&id("dropped")).await.unwrap().unwrap();
    drop(g);
    wait_until_async(Duration::from_secs(2), "dropped guard released", || async {
        !jobs.is_locked(&id("dropped")).await.unwrap()
    })
    .await;
    assert!(
        jobs.try_acquire(&id("dropped")).await.unwrap().is_some(),
        "{label}"
    );
}

async fn acquire_waits_then_times_out(jobs: &Lock, label: &str) {
    let g = jobs.try_acquire(&id("wait")).await.unwrap().unwrap();
    let t1 = g.token();
    let e = jobs
        .acquire(&id("wait"), Duration::from_millis(100))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout, "{label}: {e}");
    let waiter = {
        let jobs = jobs.clone();
        tokio::spawn(async move { jobs.acquire(&id("wait"), Duration::from_secs(3)).await })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    g.release().await.unwrap();
    let w = waiter.await.unwrap().unwrap();
    assert!(w.token() > t1, "{label}: the waiter got a higher token");
    w.release().await.unwrap();
}

async fn expiry_and_steal_raise_the_token_and_fire_lost(forze: &ForzeHandle, label: &str) {
    let short = forze.lock("short").unwrap();
    forze.stall_heartbeats(true);
    let g = short.try_acquire(&id("expiring")).await.unwrap().unwrap();
    let deadline = g.deadline();
    let mut lost = g.lost();
    let why = tokio::time::timeout(Duration::from_secs(3), lost.wait())
        .await
        .expect("lost fires");
    let fired = Instant::now();
    assert_eq!(why, LostReason::DeadlinePassed, "{label}");
    // The signal is timed to the deadline (a few milliseconds early, never later).
    assert!(
        fired + Duration::from_millis(5) >= deadline,
        "{label}: fired far too early"
    );
    // The server lease (1.2 s) outlives the local deadline (1 s): a steal must wait it out.
    let stolen = short
        .acquire(&id("expiring"), Duration::from_secs(3))
        .await
        .unwrap();
    assert!(
        stolen.token() > g.token(),
        "{label}: token rises across expiry"
    );
    assert!(
        !g.release().await.unwrap(),
        "{label}: the expired holder releases nothing"
    );
    assert_eq!(
        short.owner(&id("expiring")).await.unwrap().map(|(_, t)| t),
        Some(stolen.token())
    );
    forze.stall_heartbeats(false);
    stolen.release().await.unwrap();
}

async fn the_heartbeater_keeps_a_lease_alive_past_its_lease(forze: &ForzeHandle, label: &str) {
    let short = forze.lock("short").unwrap();
    let g = short.try_acquire(&id("kept")).await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(!g.is_lost(), "{label}: renewed lease was lost");
    assert_eq!(
        short.owner(&id("kept")).await.unwrap().map(|(o, _)| o),
        Some(g.owner().to_string()),
        "{label}"
    );
    assert!(g.deadline() > Instant::now());
    // The heartbeater restarted mid-lease keeps renewing.
    assert!(forze.inject_panic(ChildKind::Heartbeat).await.unwrap());
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        !g.is_lost(),
        "{label}: lease lost across a heartbeater restart"
    );
    assert!(g.release().await.unwrap(), "{label}");
}

async fn a_panicking_renewal_does_not_stop_the_next(forze: &ForzeHandle, label: &str) {
    let short = forze.lock("short").unwrap();
    let g = short.try_acquire(&id("panicked")).await.unwrap().unwrap();
    let before = forze.heartbeat_stats().await.unwrap().unwrap();
    forze.inject_renewal_panic();
    // Twice the lease: renewed by the ticks after the one that panicked.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        !g.is_lost(),
        "{label}: lease lost after a renewal task panicked"
    );
    let after = forze.heartbeat_stats().await.unwrap().unwrap();
    assert!(
        after.renewed >= before.renewed + 5,
        "{label}: {before:?} then {after:?}"
    );
    assert!(g.release().await.unwrap(), "{label}");
}

async fn tenants_are_isolated_and_required(forze: &ForzeHandle, label: &str) {
    let t = forze.lock("tenanted").unwrap();
    let a = LockId::new("j").for_tenant(TenantId::new("a").unwrap());
    let b = LockId::new("j").for_tenant(TenantId::new("b").unwrap());
    let ga = t.try_acquire(&a).await.unwrap().unwrap();
    let gb = t.try_acquire(&b).await.unwrap();
    assert!(gb.is_some(), "{label}: tenants isolated");
    let e = t.try_acquire(&id("j")).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::TenantRequired);
    let e = t
        .try_acquire(&LockId::new("").for_tenant(TenantId::new("a").unwrap()))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Validation);
    ga.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contention_over_three_supervisors_never_overlaps_or_goes_back() {
    const ACQUISITIONS: u64 = 2_000;
    for bin in server_binaries() {
        let server = TestServer::start(&bin);
        let reps = replicas(Some(&server.url()), "contend", 3).await;
        let resource = Arc::new(FencedResource::default());
        let inside = Arc::new(AtomicBool::new(false));
        let overlaps = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for t in 0..8 {
            let jobs = reps[t % 3].lock("jobs").unwrap();
            let (resource, inside, overlaps, done) = (
                resource.clone(),
                inside.clone(),
                overlaps.clone(),
                done.clone(),
            );
            tasks.push(tokio::spawn(async move {
                while done.fetch_add(1, Ordering::SeqCst) < ACQUISITIONS {
                    let g = jobs
                        .acquire(&id("contended"), Duration::from_secs(30))
                        .await
                        .unwrap();
                    if inside.swap(true, Ordering::SeqCst) {
                        overlaps.fetch_add(1, Ordering::SeqCst);
                    }
                    assert!(
                        resource.write(g.token()),
                        "a healthy holder's write was refused"
                    );
                    tokio::task::yield_now().await;
                    inside.store(false, Ordering::SeqCst);
                    assert!(g.release().await.unwrap());
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let accepted = resource.accepted.lock().unwrap().clone();
        assert_eq!(accepted.len() as u64, ACQUISITIONS, "{bin}");
        assert!(
            accepted.windows(2).all(|w| w[0] < w[1]),
            "{bin}: tokens out of order"
        );
        assert_eq!(
            overlaps.load(Ordering::SeqCst),
            0,
            "{bin}: critical sections overlapped"
        );
        assert_eq!(resource.rejected.load(Ordering::Relaxed), 0);
        for r in reps {
            r.shutdown().await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_holder_loses_by_its_deadline_and_its_fenced_write_is_rejected() {
    for bin in server_binaries() {
        let server = TestServer::start(&bin);
        let reps = replicas(Some(&server.url()), "frozen", 2).await;
        let (a, b) = (
            reps[0].lock("short").unwrap(),
            reps[1].lock("short").unwrap(),
        );
        let resource = FencedResource::default();
        let old = a.try_acquire(&id("frozen")).await.unwrap().unwrap();
        assert!(resource.write(old.token()));
        // Freeze the holder: its renewals stop, as if its process were stopped.
        reps[0].stall_heartbeats(true);
        let deadline = old.deadline();
        let mut lost = old.lost();
        let why = tokio::time::timeout(Duration::from_secs(3), lost.wait())
            .await
            .unwrap();
        let fired = Instant::now();
        assert_eq!(why, LostReason::DeadlinePassed);
        let late = fired.saturating_duration_since(deadline);
        eprintln!(
            "{bin}: lost fired {:?} before / {late:?} after the local deadline",
            deadline.saturating_duration_since(fired)
        );
        // Timed to the deadline; the bound only absorbs a loaded test machine's scheduling.
        assert!(
            late < Duration::from_millis(100),
            "{bin}: lost fired {late:?} late"
        );
        let new = b
            .acquire(&id("frozen"), Duration::from_secs(3))
            .await
            .unwrap();
        assert!(
            new.token() > old.token(),
            "{bin}: the next holder's token is higher"
        );
        assert!(resource.write(new.token()));
        // The old holder wakes up and writes anyway: the resource refuses it.
        assert!(
            !resource.write(old.token()),
            "{bin}: the stale write was accepted"
        );
        reps[0].stall_heartbeats(false);
        new.release().await.unwrap();
        for r in reps {
            r.shutdown().await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_while_held_fires_lost_and_refuses_acquire_then_tokens_keep_rising() {
    for bin in server_binaries() {
        let mut server = TestServer::start(&bin);
        let forze = spawn_ready(config(Some(&server.url()), "lock-down", RESOURCES)).await;
        let short = forze.lock("short").unwrap();
        let held = short.try_acquire(&id("held")).await.unwrap().unwrap();
        let t_before = held.token();
        server.stop();
        let deadline = held.deadline();
        let mut lost = held.lost();
        let why = tokio::time::timeout(Duration::from_secs(3), lost.wait())
            .await
            .unwrap();
        assert_eq!(why, LostReason::DeadlinePassed, "{bin}");
        let late = Instant::now().saturating_duration_since(deadline);
        assert!(
            late < Duration::from_millis(100),
            "{bin}: lost fired {late:?} late"
        );
        let started = Instant::now();
        let e = short
            .acquire(&id("other"), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unavailable, "{bin}: {e}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{bin}: acquire waited"
        );
        // Back without its data (no persistence): the fence key is gone, tokens still rise.
        server.restart();
        let again = wait_for_lock(&short, "held").await;
        assert!(
            again.token() > t_before,
            "{bin}: {} <= {t_before}",
            again.token()
        );
        again.release().await.unwrap();
        forze.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_that_finds_another_owner_fires_lost_for_every_subscriber() {
    for bin in server_binaries() {
        let server = TestServer::start(&bin);
        let forze = spawn_ready(config(Some(&server.url()), "lock-stolen", RESOURCES)).await;
        let jobs = forze.lock("jobs").unwrap();
        // `watched` has a subscriber before the loss; `unwatched` gets its first after it.
        let watched = jobs.try_acquire(&id("watched")).await.unwrap().unwrap();
        let unwatched = jobs.try_acquire(&id("unwatched")).await.unwrap().unwrap();
        let mut before = watched.lost();
        assert_eq!(before.get(), None, "{bin}: fired while held");
        for (g, name) in [(&watched, "watched"), (&unwatched, "unwatched")] {
            // Another owner takes the key behind the holder's back (an operator, a lost lease).
            let key = format!("forze:lock:{{jobs:_:{name}}}");
            server.cmd(&["SET", &key, "1:someone-else"]).unwrap();
            assert!(!g.extend().await.unwrap(), "{bin}: renewed a stolen lease");
            assert!(g.is_lost(), "{bin}: {name}");
        }
        let mut after = unwatched.lost();
        assert_eq!(
            after.get(),
            Some(LostReason::Stolen),
            "{bin}: taken after the loss"
        );
        for signal in [&mut before, &mut after] {
            let why = tokio::time::timeout(Duration::from_secs(1), signal.wait())
                .await
                .expect("lost fired");
            assert_eq!(why, LostReason::Stolen, "{bin}");
        }
        // A guard releases nothing that is not its own.
        assert!(!watched.release().await.unwrap(), "{bin}");
        assert!(!unwatched.release().await.unwrap(), "{bin}");
        forze.shutdown().await.unwrap();
    }
}

async fn wait_for_lock(lock: &Lock, name: &str) -> forze_redis_actors::LockGuard {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match lock.acquire(&id(name), Duration::from_secs(2)).await {
            Ok(g) => return g,
            Err(e) if Instant::now() < deadline && e.kind() == ErrorKind::Unavailable => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("no lock after the server came back: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_rise_across_release_expiry_steal_and_a_restart_without_persistence() {
    for bin in server_binaries() {
        let mut server = TestServer::start(&bin);
        let forze = spawn_ready(config(Some(&server.url()), "lock-tokens", RESOURCES)).await;
        let short = forze.lock("short").unwrap();
        let mut tokens = Vec::new();
        for round in 0..5 {
            let g = wait_for_lock(&short, "tok").await;
            tokens.push(g.token());
            match round % 3 {
                0 => assert!(g.release().await.unwrap()),
                // Expiry: the holder goes silent and the lease runs out on the server.
                1 => {
                    forze.stall_heartbeats(true);
                    let mut lost = g.lost();
                    lost.wait().await;
                    wait_until_async(Duration::from_secs(2), "expired", || async {
                        !short.is_locked(&id("tok")).await.unwrap()
                    })
                    .await;
                    forze.stall_heartbeats(false);
                }
                // Restart with the lock held: the server forgets lock and fence alike.
                _ => {
                    server.restart();
                    drop(g);
                }
            }
        }
        assert!(tokens.windows(2).all(|w| w[0] < w[1]), "{bin}: {tokens:?}");
        let fence = server
            .cmd(&["GET", "forze:lock:{short:_:tok}:fence"])
            .unwrap();
        eprintln!("{bin}: tokens {tokens:?}, fence {fence:?}");
        forze.shutdown().await.unwrap();
    }
}

/// With `fence_idle`, the fence key expires (no key per lock name ever used is left behind),
/// and tokens still rise: across the fence's own expiry, a steal after expiry, and a server
/// restart that loses lock and fence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiring_fences_leave_nothing_behind_and_tokens_still_rise() {
    for bin in server_binaries() {
        let mut server = TestServer::start(&bin);
        let forze = spawn_ready(config(Some(&server.url()), "lock-fence", RESOURCES)).await;
        let fenced = forze.lock("fenced").unwrap();
        let fence_key = "forze:lock:{fenced:_:f}:fence";
        let mut tokens = Vec::new();
        for round in 0..4 {
            let g = wait_for_lock(&fenced, "f").await;
            tokens.push(g.token());
            // The fence lives for the lease plus fence_idle at most.
            let pttl = server.cmd(&["PTTL", fence_key]).unwrap().as_int().unwrap();
            assert!(
                (1..=1500).contains(&pttl),
                "{bin}: fence PTTL {pttl} after acquire"
            );
            match round {
                // Released, then left idle until the fence expires.
                0 | 2 => {
                    assert!(g.release().await.unwrap());
                    wait_until_async(Duration::from_secs(5), "fence expired", || async {
                        server.cmd(&["EXISTS", fence_key]).unwrap().as_int() == Some(0)
                    })
                    .await;
                }
                // Restart with the lock held: lock and fence lost together.
                _ => {
                    server.restart();
                    drop(g);
                }
            }
        }
        assert!(tokens.windows(2).all(|w| w[0] < w[1]), "{bin}: {tokens:?}");
        // The last acquisition was lost to the restart: nothing of the lock remains.
        assert_eq!(
            server.cmd(&["EXISTS", fence_key]).unwrap().as_int(),
            Some(0),
            "{bin}"
        );
        forze.shutdown().await.unwrap();
    }
}

/// A waiter on another replica is woken by the push of the lock key when the holder releases:
/// it acquires long before its next poll would. With the tracking connections killed while it
/// waits and kept down, it still acquires, by polling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_are_woken_by_the_release_push_and_still_poll_without_tracking() {
    for bin in server_binaries() {
        let server = TestServer::start(&bin);
        let holder = spawn_ready(config(Some(&server.url()), "lock-wake-h", RESOURCES)).await;
        let waiter = spawn_ready(config(Some(&server.url()), "lock-wake-w", RESOURCES)).await;
        wait_until_async(Duration::from_secs(10), "tracking confirmed", || async {
            matches!(waiter.tracking_stats().await, Ok(Some(s)) if s.confirmed)
        })
        .await;
        let (held, waited) = (holder.lock("woken").unwrap(), waiter.lock("woken").unwrap());
        for round in 0..3 {
            let g = held.try_acquire(&id("w")).await.unwrap().expect("free");
            let w = waited.clone();
            let task = tokio::spawn(async move {
                let g = w.acquire(&id("w"), Duration::from_secs(30)).await.unwrap();
                let got = Instant::now();
                g.release().await.unwrap();
                got
            });
            // The waiter tried once and sleeps for seconds.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let released = Instant::now();
            assert!(g.release().await.unwrap());
            let got = task.await.unwrap();
            let handover = got.saturating_duration_since(released);
            assert!(
                handover < Duration::from_millis(2000),
                "{bin} round {round}: handover took {handover:?}: not woken"
            );
        }

        // Tracking killed while a waiter waits, and kept down (the ACL refuses `CLIENT
        // TRACKING` until the end): no push can wake it, and it still gets the lock by polling.
        let fallback_h = holder.lock("fallback").unwrap();
        let fallback_w = waiter.lock("fallback").unwrap();
        let g = fallback_h
            .try_acquire(&id("f"))
            .await
            .unwrap()
            .expect("free");
        let task =
            tokio::spawn(
                async move { fallback_w.acquire(&id("f"), Duration::from_secs(20)).await },
            );
        tokio::time::sleep(Duration::from_millis(100)).await;
        let losses = waiter.tracking_stats().await.unwrap().unwrap().losses;
        server
            .cmd(&["ACL", "SETUSER", "default", "-client|tracking"])
            .expect("deny CLIENT TRACKING");
        let mut killed = 0;
        for c in server.client_list() {
            if c.get("name").is_some_and(|n| n.ends_with("-tracking")) {
                if let Some(cid) = c.get("id") {
                    killed += usize::from(server.cmd(&["CLIENT", "KILL", "ID", cid]).is_ok());
                }
            }
        }
        assert!(killed >= 1, "{bin}: no tracking connection to kill");
        wait_until_async(Duration::from_secs(10), "the waiter's tracking is lost", || async {
            matches!(waiter.tracking_stats().await, Ok(Some(s)) if !s.confirmed && s.losses > losses)
        })
        .await;
        assert!(g.release().await.unwrap());
        let g = tokio::time::timeout(Duration::from_secs(20), task)
            .await
            .expect("the waiter acquired without tracking")
            .unwrap()
            .unwrap();
        assert!(
            matches!(waiter.tracking_stats().await, Ok(Some(s)) if !s.confirmed),
            "{bin}: tracking came back, so the waiter may have been woken by a push"
        );
        g.release().await.unwrap();
        server
            .cmd(&["ACL", "SETUSER", "default", "+client|tracking"])
            .expect("allow CLIENT TRACKING again");
        holder.shutdown().await.unwrap();
        waiter.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_leases_are_renewed_with_one_call_per_tick() {
    // Valkey renews with a pipeline of SET IFEQ, Redis 7 with the batched script.
    for bin in server_binaries() {
        ten_thousand_leases_on(&bin).await;
    }
}

async fn ten_thousand_leases_on(bin: &forze_redis_testkit::ServerBinary) {
    const LEASES: usize = 10_000;
    let server = TestServer::start(bin);
    let mut cfg: Config = config(
        Some(&server.url()),
        "bulk",
        r#"
[locks.bulk]
lease = "3s"
extend_every = "1s"
"#,
    );
    // No health probes in the window: every EVALSHA the server counts is ours.
    cfg.redis.as_mut().unwrap().health_interval = Duration::from_secs(600);
    let forze = spawn_ready(cfg).await;
    let bulk = forze.lock("bulk").unwrap();
    let mut guards = Vec::with_capacity(LEASES);
    for chunk in 0..(LEASES / 500) {
        let attempts = (0..500).map(|i| {
            let bulk = bulk.clone();
            async move {
                bulk.try_acquire(&id(&format!("lease{}", chunk * 500 + i)))
                    .await
            }
        });
        for g in futures::future::join_all(attempts).await {
            guards.push(g.unwrap().expect("free"));
        }
    }
    let commands = |name: &str| match server.cmd(&["INFO", "commandstats"]) {
        Ok(Resp::Bulk(Some(text))) => String::from_utf8_lossy(&text)
            .lines()
            .find(|l| l.starts_with(&format!("cmdstat_{name}:")))
            .and_then(|l| l.split("calls=").nth(1))
            .and_then(|v| v.split(',').next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0),
        other => panic!("INFO: {other:?}"),
    };
    let stats0 = forze.heartbeat_stats().await.unwrap().unwrap();
    let (calls0, sets0) = (commands("evalsha"), commands("set"));
    // Longer than the lease: every lease must have been renewed to still be held.
    tokio::time::sleep(Duration::from_millis(4_500)).await;
    let stats1 = forze.heartbeat_stats().await.unwrap().unwrap();
    let (calls1, sets1) = (commands("evalsha"), commands("set"));
    let ticks = stats1.ticks - stats0.ticks;
    let renewed = stats1.renewed - stats0.renewed;
    eprintln!(
        "{bin}: {ticks} ticks, {} calls counted by us, {} EVALSHA and {} SET counted by the \
         server, {renewed} renewals",
        stats1.calls - stats0.calls,
        calls1 - calls0,
        sets1 - sets0,
    );
    // Valkey (8.1 and later) renews each lease with one native SET, a pipeline per tick;
    // a tick in flight at either reading may add up to one tick's worth. On Redis 7 the
    // only SET is the first renewal's single probe for the option, refused (when the first
    // tick falls in the window); the extension script only reads and expires.
    if bin.kind == forze_redis_testkit::ServerKind::Valkey {
        assert!(
            renewed >= LEASES as u64 && (sets1 - sets0).abs_diff(renewed) <= LEASES as u64,
            "{bin}: {renewed} renewals, {} native SETs",
            sets1 - sets0
        );
    } else {
        assert!(
            sets1 - sets0 <= 1,
            "{bin}: renewals by the script, but {} SETs",
            sets1 - sets0
        );
    }
    assert!(ticks >= 3, "{bin}: {ticks} ticks");
    assert_eq!(
        stats1.calls - stats0.calls,
        ticks,
        "{bin}: one call per tick"
    );
    // A tick counts its call when it sends it: one sent just before the first reading and
    // run by the server just after it is the server's and not ours. Per-lease or per-chunk
    // renewals would be thousands or tens of calls.
    assert!(
        calls1 - calls0 <= ticks + 1,
        "{bin}: the server saw more calls than ticks (and the one that may have been in flight)"
    );
    assert!(
        guards.iter().all(|g| !g.is_lost()),
        "{bin}: a lease was lost"
    );
    assert_eq!(stats1.held, LEASES);
    let sample = bulk.owner(&id("lease1234")).await.unwrap().map(|(o, _)| o);
    assert_eq!(sample.as_deref(), Some(guards[1234].owner()));
    drop(guards);
    forze.shutdown().await.unwrap();
}

/// The heartbeat stats count a tick's calls with the tick: read between the decision of a
/// tick and the first run of its task, they already show both. Driven on the core runtime
/// alone, so no heartbeater ticks behind the test's back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decided_tick_shows_its_calls_before_its_task_runs() {
    let server = TestServer::start(&server_binaries().remove(0));
    let rt = forze_redis::runtime::Runtime::build(config(
        Some(&server.url()),
        "tick-calls",
        "[locks.jobs]\nlease = \"30s\"",
    ))
    .unwrap();
    let conn = rt.connection.clone().expect("redis mode");
    fred::interfaces::ClientLike::init(conn.pool())
        .await
        .unwrap();
    let jobs = rt.locks.get("jobs").unwrap();
    let guards = [
        jobs.try_acquire(&id("a")).await.unwrap().expect("free"),
        jobs.try_acquire(&id("b")).await.unwrap().expect("free"),
    ];
    let before = rt.leases.stats();
    // A tick long enough that both leases are due within half of it.
    let renewals = rt
        .leases
        .renew_due(Duration::from_secs(60))
        .expect("leases due");
    let decided = rt.leases.stats();
    assert_eq!(decided.ticks, before.ticks + 1);
    assert!(
        decided.calls > before.calls,
        "a decided tick without its calls: {decided:?}"
    );
    renewals.await;
    let after = rt.leases.stats();
    assert_eq!(after.calls, decided.calls, "calls counted twice");
    assert_eq!(after.renewed, before.renewed + 2);
    drop(guards);
    let _ = conn.quit(Duration::from_secs(1)).await;
}

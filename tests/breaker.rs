//! Fleet-wide circuit breakers: the battery on the local backend and every server found, a trip
//! seen by every replica, no round trips while open, half-open trials bounded fleet-wide, and
//! Redis killed mid-load.

mod common;

use std::time::{Duration, Instant};

use common::{config, spawn_ready, Backend};
use forze_redis::breaker::{CallError, DecidedBy, Phase};
use forze_redis::ErrorKind;
use forze_redis_actors::Breaker;
use forze_redis_testkit::{server_binaries, TestServer};

const RESOURCES: &str = r#"
[breakers.downstream]
failure_ratio = 0.5
window = "10s"
min_calls = 4
break_duration = "300ms"
half_open_max_calls = 2
closed_cache_ttl = "100ms"
"#;

async fn trip(b: &Breaker, route: &str) {
    for ok in [true, true, false, false] {
        let a = b.admit(route).await.unwrap();
        assert!(a.allowed);
        b.record(route, ok).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_battery_on_every_backend() {
    for backend in Backend::batteries() {
        let label = backend.label();
        let forze = spawn_ready(config(backend.url().as_deref(), "brk", RESOURCES)).await;
        let b = forze.breaker("downstream").unwrap();
        let mut events = b.transitions();
        trip(&b, "r").await;
        let ev = events.recv().await.unwrap();
        assert_eq!(ev.to, Phase::Open, "{label}");
        let a = b.admit("r").await.unwrap();
        assert!(!a.allowed && a.phase == Phase::Open, "{label}: {a:?}");
        assert!(a.retry_after <= Duration::from_millis(300), "{label}");
        // A refused call does not run.
        let ran = std::sync::atomic::AtomicBool::new(false);
        let e = b
            .call("r", async {
                ran.store(true, std::sync::atomic::Ordering::SeqCst);
                Ok::<_, ()>(())
            })
            .await
            .unwrap_err();
        assert!(matches!(e, CallError::Breaker(ref e) if e.kind() == ErrorKind::CircuitOpen));
        assert!(!ran.load(std::sync::atomic::Ordering::SeqCst));
        // After the break: two trials (half_open_max_calls), then refused.
        tokio::time::sleep(Duration::from_millis(320)).await;
        let t1 = b.admit("r").await.unwrap();
        let t2 = b.admit("r").await.unwrap();
        let t3 = b.admit("r").await.unwrap();
        assert!(
            t1.allowed && t2.allowed && !t3.allowed,
            "{label}: {t1:?} {t2:?} {t3:?}"
        );
        assert_eq!(t1.phase, Phase::HalfOpen);
        // The refused one is told when the round's slots free up, as on every backend: a
        // zero would have its caller retry in a loop for the whole round.
        assert!(
            t3.retry_after > Duration::ZERO && t3.retry_after <= Duration::from_millis(300),
            "{label}: {t3:?}"
        );
        // Trials that never report back free their slots after another break duration.
        tokio::time::sleep(Duration::from_millis(320)).await;
        assert!(
            b.admit("r").await.unwrap().allowed,
            "{label}: abandoned trials freed"
        );
        // One success closes it.
        assert_eq!(b.record("r", true).await.unwrap(), Phase::Closed, "{label}");
        assert!(b.admit("r").await.unwrap().allowed);
        // A half-open failure reopens it.
        trip(&b, "r2").await;
        tokio::time::sleep(Duration::from_millis(320)).await;
        assert!(b.admit("r2").await.unwrap().allowed);
        assert_eq!(b.record("r2", false).await.unwrap(), Phase::Open, "{label}");
        // Routes are separate breakers.
        assert!(b.admit("other").await.unwrap().allowed, "{label}");
        // Forced states, and reset.
        b.force_open("f").await.unwrap();
        assert!(!b.admit("f").await.unwrap().allowed, "{label}: forced open");
        b.reset("f").await.unwrap();
        assert!(b.admit("f").await.unwrap().allowed, "{label}: reset");
        b.force_close("g").await.unwrap();
        trip(&b, "g").await;
        assert!(
            b.admit("g").await.unwrap().allowed,
            "{label}: forced closed"
        );
        // Forcing or resetting to the phase it already has is no transition.
        let mut events = b.transitions();
        b.reset("f").await.unwrap();
        b.force_open("h").await.unwrap();
        b.force_open("h").await.unwrap();
        let mut seen = Vec::new();
        while let Ok(ev) = events.try_recv() {
            seen.push((ev.route, ev.to));
        }
        assert_eq!(seen, [("h".to_string(), Phase::Open)], "{label}");
        forze.shutdown().await.unwrap();
    }
}

/// A failure ratio with more digits than six decimals decides on Redis as it does locally:
/// 2 failures in 3 calls (0.666…67) reach 0.6666666.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_precise_failure_ratio_is_the_same_on_every_backend() {
    const PRECISE: &str = r#"
[breakers.precise]
failure_ratio = 0.6666666
window = "10s"
min_calls = 3
break_duration = "10s"
"#;
    for backend in Backend::batteries() {
        let label = backend.label();
        let forze = spawn_ready(config(backend.url().as_deref(), "brk-ratio", PRECISE)).await;
        let b = forze.breaker("precise").unwrap();
        let mut last = Phase::Closed;
        for ok in [true, false, false] {
            assert!(b.admit("r").await.unwrap().allowed, "{label}");
            last = b.record("r", ok).await.unwrap();
        }
        assert_eq!(
            last,
            Phase::Open,
            "{label}: 2 of 3 failures did not open it"
        );
        forze.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replicas_failures_open_the_breaker_for_all_and_trials_are_bounded_fleet_wide() {
    for bin in server_binaries() {
        let server = TestServer::start(&bin);
        let mut reps = Vec::new();
        for _ in 0..3 {
            reps.push(spawn_ready(config(Some(&server.url()), "brk-fleet", RESOURCES)).await);
        }
        let bs: Vec<Breaker> = reps
            .iter()
            .map(|r| r.breaker("downstream").unwrap())
            .collect();
        // Replicas 1 and 2 have a warm closed cache.
        for b in &bs[1..] {
            assert!(b.admit("svc").await.unwrap().allowed);
        }
        trip(&bs[0], "svc").await;
        let tripped = Instant::now();
        // Within the closed-cache TTL (100 ms) every replica stops admitting.
        for (i, b) in bs.iter().enumerate() {
            let mut refused_at = None;
            for _ in 0..200 {
                if !b.admit("svc").await.unwrap().allowed {
                    refused_at = Some(tripped.elapsed());
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let at = refused_at.expect("replica stopped admitting");
            assert!(
                at <= Duration::from_millis(200),
                "{bin}: replica {i} admitted for {at:?}"
            );
        }
        // While open, admits are answered from memory: no round trip per request. (Once the
        // trip's own invalidation push has landed: it may evict a phase a replica had just
        // learned, costing that replica one more round trip.)
        tokio::time::sleep(Duration::from_millis(50)).await;
        for b in &bs {
            b.admit("svc").await.unwrap();
        }
        let before: u64 = bs.iter().map(|b| b.stats().round_trips).sum();
        for b in &bs {
            for _ in 0..100 {
                let a = b.admit("svc").await.unwrap();
                assert!(!a.allowed);
                assert_eq!(a.decided_by, DecidedBy::Cache, "{bin}");
            }
        }
        let after: u64 = bs.iter().map(|b| b.stats().round_trips).sum();
        assert_eq!(after, before, "{bin}: round trips while open");
        // Half-open: at most 2 trials across 3 replicas × 10 callers.
        tokio::time::sleep(Duration::from_millis(320)).await;
        let mut tasks = Vec::new();
        for b in &bs {
            for _ in 0..10 {
                let b = b.clone();
                tasks.push(tokio::spawn(async move {
                    b.admit("svc").await.unwrap().allowed
                }));
            }
        }
        let mut admitted = 0;
        for t in tasks {
            if t.await.unwrap() {
                admitted += 1;
            }
        }
        assert_eq!(admitted, 2, "{bin}: half-open trials fleet-wide");
        // One success closes it for everyone (their caches expire within the TTL).
        assert_eq!(bs[2].record("svc", true).await.unwrap(), Phase::Closed);
        tokio::time::sleep(Duration::from_millis(350)).await;
        for b in &bs {
            assert!(b.admit("svc").await.unwrap().allowed, "{bin}");
        }
        for r in reps {
            r.shutdown().await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_load_falls_back_without_errors_and_comes_back() {
    for bin in server_binaries() {
        let mut server = TestServer::start(&bin);
        let forze = spawn_ready(config(Some(&server.url()), "brk-down", RESOURCES)).await;
        let b = forze.breaker("downstream").unwrap();
        assert!(b.admit("svc").await.unwrap().allowed);
        // Open in Redis when it goes: the fallback starts open, not closed.
        trip(&b, "tripped").await;
        server.stop();
        let a = b.admit("tripped").await.unwrap();
        // (Open, or half-open if the 300 ms break ended while the outage was being noticed.)
        assert!(
            a.decided_by == DecidedBy::Fallback && a.phase != Phase::Closed,
            "{bin}: the fallback starts where the fleet was: {a:?}"
        );
        tokio::time::sleep(Duration::from_millis(150)).await; // past the closed-cache TTL
        for _ in 0..20 {
            let a = b.admit("svc").await.unwrap();
            assert_eq!(a.decided_by, DecidedBy::Fallback, "{bin}");
            b.record("svc", true).await.unwrap();
        }
        // The local fallback trips on its own counts.
        for _ in 0..30 {
            b.admit("svc2").await.unwrap();
            b.record("svc2", false).await.unwrap();
        }
        assert!(
            !b.admit("svc2").await.unwrap().allowed,
            "{bin}: the fallback opened"
        );
        assert!(b.stats().fallbacks >= 40);
        server.restart();
        let mut back = false;
        for _ in 0..200 {
            if b.admit("svc").await.unwrap().decided_by == DecidedBy::Redis {
                back = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(back, "{bin}: switched back to Redis by itself");
        forze.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_go_on_while_the_resilience_actor_restarts() {
    use forze_redis_actors::ChildKind;
    const BOTH: &str = r#"
[breakers.downstream]
min_calls = 4
break_duration = "300ms"
closed_cache_ttl = "20ms"
[rate_limits.api]
permits = 1000
per = "1s"
"#;
    for backend in Backend::all() {
        let label = backend.label();
        let forze = spawn_ready(config(backend.url().as_deref(), "brk-panic", BOTH)).await;
        let (b, rl) = (
            forze.breaker("downstream").unwrap(),
            forze.rate_limit("api").unwrap(),
        );
        let load = {
            let (b, rl) = (b.clone(), rl.clone());
            tokio::spawn(async move {
                let stop = Instant::now() + Duration::from_millis(800);
                let mut decisions = 0;
                while Instant::now() < stop {
                    // Never an error, whatever the actor is doing.
                    b.admit("svc").await.unwrap();
                    b.record("svc", true).await.unwrap();
                    rl.try_acquire("svc", 1).await.unwrap();
                    decisions += 1;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                decisions
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            forze.inject_panic(ChildKind::Resilience).await.unwrap(),
            "{label}"
        );
        let decisions = load.await.unwrap();
        assert!(decisions > 50, "{label}: {decisions} decisions");
        let mut stats = None;
        for _ in 0..100 {
            if let Ok(Some(s)) = forze.resilience_stats().await {
                stats = Some(s);
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let stats = stats.expect("the restarted actor answers");
        assert!(
            stats.breakers[0].1.admits >= decisions,
            "{label}: counts survive the restart"
        );
        assert_eq!(
            forze.stats().await.unwrap().supervisor.restarts,
            1,
            "{label}"
        );
        forze.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trip_reaches_cached_replicas_through_tracking_far_sooner_than_the_cache_ttl() {
    // A closed cache of 10 s: only the invalidation push can stop the others this soon.
    const TRACKED: &str = r#"
[breakers.downstream]
min_calls = 4
break_duration = "5s"
closed_cache_ttl = "10s"
"#;
    for bin in server_binaries() {
        let server = TestServer::start(&bin);
        let mut reps = Vec::new();
        for _ in 0..3 {
            let mut cfg = config(Some(&server.url()), "brk-track", TRACKED);
            // Tracking reconnects slowly, so the kill below leaves it down for the second half.
            cfg.redis.as_mut().unwrap().reconnect.min_delay = Duration::from_secs(3);
            cfg.redis.as_mut().unwrap().reconnect.max_delay = Duration::from_secs(3);
            reps.push(spawn_ready(cfg).await);
        }
        for r in &reps {
            let r2 = r.clone();
            forze_redis_testkit::wait_until_async(Duration::from_secs(10), "tracking", || {
                let r = r2.clone();
                async move { matches!(r.tracking_stats().await, Ok(Some(s)) if s.confirmed) }
            })
            .await;
        }
        let bs: Vec<Breaker> = reps
            .iter()
            .map(|r| r.breaker("downstream").unwrap())
            .collect();
        for b in &bs[1..] {
            assert!(b.admit("svc").await.unwrap().allowed);
            assert_eq!(b.admit("svc").await.unwrap().decided_by, DecidedBy::Cache);
        }
        trip(&bs[0], "svc").await;
        let tripped = Instant::now();
        for (i, b) in bs.iter().enumerate().skip(1) {
            let mut stopped = None;
            for _ in 0..400 {
                if !b.admit("svc").await.unwrap().allowed {
                    stopped = Some(tripped.elapsed());
                    break;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            let at = stopped.expect("stopped admitting");
            eprintln!(
                "{bin}: replica {i} stopped admitting {at:?} after the trip (cache TTL 10 s)"
            );
            assert!(
                at < Duration::from_millis(500),
                "{bin}: replica {i} took {at:?}"
            );
        }
        for r in reps {
            r.shutdown().await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tracking_down_the_closed_cache_ttl_bounds_a_trip() {
    const UNTRACKED: &str = r#"
[breakers.downstream]
min_calls = 4
break_duration = "5s"
closed_cache_ttl = "300ms"
"#;
    for bin in server_binaries() {
        let server = TestServer::start(&bin);
        let mut reps = Vec::new();
        for _ in 0..2 {
            let mut cfg = config(Some(&server.url()), "brk-untracked", UNTRACKED);
            cfg.redis.as_mut().unwrap().reconnect.min_delay = Duration::from_secs(5);
            cfg.redis.as_mut().unwrap().reconnect.max_delay = Duration::from_secs(5);
            reps.push(spawn_ready(cfg).await);
        }
        // Kill every tracking connection; they stay down for 5 s.
        for c in server.client_list() {
            if c.get("name").is_some_and(|n| n.ends_with("-tracking")) {
                server.cmd(&["CLIENT", "KILL", "ID", &c["id"]]).unwrap();
            }
        }
        let r1 = reps[1].clone();
        forze_redis_testkit::wait_until_async(Duration::from_secs(5), "tracking lost", || {
            let r = r1.clone();
            async move { matches!(r.tracking_stats().await, Ok(Some(s)) if !s.confirmed) }
        })
        .await;
        let (a, b) = (
            reps[0].breaker("downstream").unwrap(),
            reps[1].breaker("downstream").unwrap(),
        );
        assert!(b.admit("svc").await.unwrap().allowed);
        trip(&a, "svc").await;
        let tripped = Instant::now();
        let mut stopped = None;
        for _ in 0..400 {
            if !b.admit("svc").await.unwrap().allowed {
                stopped = Some(tripped.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let at = stopped.expect("stopped admitting");
        eprintln!(
            "{bin}: untracked replica stopped admitting {at:?} after the trip (cache TTL 300 ms)"
        );
        assert!(at <= Duration::from_millis(400), "{bin}: {at:?}");
        // The open phase is kept no longer than a closed one, but its refusals still tell
        // when the break ends, whether Redis or the kept phase answers.
        let mut from_cache = 0;
        for _ in 0..20 {
            let refusal = b.admit("svc").await.unwrap();
            assert!(!refusal.allowed, "{bin}");
            from_cache += usize::from(refusal.decided_by == DecidedBy::Cache);
            let left = Duration::from_secs(5).saturating_sub(tripped.elapsed());
            assert!(
                refusal.retry_after + Duration::from_millis(100) >= left,
                "{bin}: retry after {:?} with {left:?} of the break left ({:?})",
                refusal.retry_after,
                refusal.decided_by
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(from_cache > 0, "{bin}: no refusal came from the kept phase");
        // A reset made elsewhere is seen within the same TTL, not at the end of the 5 s break:
        // untracked, an open phase is not cached longer than a closed one.
        a.reset("svc").await.unwrap();
        let reset = Instant::now();
        let mut admitted = None;
        for _ in 0..400 {
            if b.admit("svc").await.unwrap().allowed {
                admitted = Some(reset.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let at = admitted.expect("admitting again after the reset");
        eprintln!("{bin}: untracked replica saw the reset after {at:?} (break 5 s, TTL 300 ms)");
        assert!(at <= Duration::from_millis(400), "{bin}: {at:?}");
        for r in reps {
            r.shutdown().await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_with_skewed_clocks_decide_as_the_others() {
    use forze_redis::clock::{SignedDuration, SkewedClock};
    use std::time::SystemTime;
    const SKEW: &str = r#"
[breakers.downstream]
min_calls = 4
break_duration = "600ms"
half_open_max_calls = 2
closed_cache_ttl = "50ms"
[rate_limits.five]
permits = 5
per = "1s"
"#;
    let hour = Duration::from_secs(3600);
    let clocks = [
        None,
        Some(SkewedClock {
            wall_ahead: SignedDuration::Ahead(hour),
            monotonic_ahead: 3 * hour,
        }),
        Some(SkewedClock {
            wall_ahead: SignedDuration::Behind(hour / 4 * 3),
            monotonic_ahead: Duration::ZERO,
        }),
    ];
    for bin in server_binaries() {
        let server = TestServer::start(&bin);
        let mut reps = Vec::new();
        for clock in clocks {
            let cfg = config(Some(&server.url()), "brk-skew", SKEW);
            let cfg = match clock {
                Some(c) => cfg.with_clock(c),
                None => cfg,
            };
            reps.push(spawn_ready(cfg).await);
        }
        let bs: Vec<Breaker> = reps
            .iter()
            .map(|r| r.breaker("downstream").unwrap())
            .collect();
        // The replica an hour ahead trips it: its transition carries the server's time.
        let mut events = bs[1].transitions();
        trip(&bs[1], "svc").await;
        let ev = events.recv().await.unwrap();
        assert_eq!(ev.to, Phase::Open);
        let off = SystemTime::now()
            .duration_since(ev.at)
            .unwrap_or_else(|e| e.duration());
        assert!(
            off < Duration::from_secs(2),
            "{bin}: transition stamped {off:?} off"
        );
        // Every replica refuses with the same wait (all measured from the server's retry_at).
        let mut waits = Vec::new();
        for b in &bs {
            let a = b.admit("svc").await.unwrap();
            assert!(!a.allowed, "{bin}");
            waits.push(a.retry_after);
        }
        for (i, w) in waits.iter().enumerate() {
            assert!(
                w.abs_diff(waits[0]) <= Duration::from_millis(15)
                    && *w > Duration::from_millis(400),
                "{bin}: replica {i} waits {w:?}, replica 0 {:?}",
                waits[0]
            );
        }
        // Just before the break ends every replica still refuses; just after, the replicas
        // together get exactly the two fleet-wide trials.
        tokio::time::sleep(waits[0].saturating_sub(Duration::from_millis(100))).await;
        for (i, b) in bs.iter().enumerate() {
            assert!(
                !b.admit("svc").await.unwrap().allowed,
                "{bin}: replica {i} early"
            );
        }
        tokio::time::sleep(Duration::from_millis(130)).await;
        let mut trials = 0;
        for b in &bs {
            for _ in 0..2 {
                if b.admit("svc").await.unwrap().allowed {
                    trials += 1;
                }
            }
        }
        assert_eq!(trials, 2, "{bin}: half-open trials across skewed replicas");
        // Rate limits: the bucket one replica drained is empty for the skewed ones, with the
        // same retry_after.
        let rls: Vec<_> = reps.iter().map(|r| r.rate_limit("five").unwrap()).collect();
        for _ in 0..5 {
            assert!(rls[0].try_acquire("svc", 1).await.unwrap().allowed);
        }
        let mut retry = Vec::new();
        for rl in &rls {
            let d = rl.try_acquire("svc", 1).await.unwrap();
            assert!(!d.allowed, "{bin}");
            retry.push(d.retry_after);
        }
        for (i, r) in retry.iter().enumerate() {
            assert!(
                r.abs_diff(retry[0]) <= Duration::from_millis(10)
                    && *r > Duration::from_millis(150),
                "{bin}: replica {i} retry_after {r:?} vs {:?}",
                retry[0]
            );
        }
        for r in reps {
            r.shutdown().await.unwrap();
        }
    }
}

/// A closed breaker, forced closed or never tripped, is admitted by one `HMGET` of its phase
/// and no script; an open, half-open or forced-open one still goes to the script, which alone
/// moves phases and counts trials. A state the read cannot take (a key of the wrong type)
/// falls back locally, as a failed script did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_breaker_is_admitted_by_a_read_and_every_other_phase_by_the_script() {
    const UNCACHED: &str = r#"
[breakers.downstream]
failure_ratio = 0.5
window = "10s"
min_calls = 4
break_duration = "300ms"
half_open_max_calls = 1
closed_cache_ttl = "0s"
"#;
    for bin in server_binaries() {
        let server = TestServer::start(&bin);
        let forze = spawn_ready(config(Some(&server.url()), "brk-read", UNCACHED)).await;
        let b = forze.breaker("downstream").unwrap();
        let calls = || {
            (
                server.command_calls("hmget"),
                server.command_calls("evalsha") + server.command_calls("eval"),
            )
        };
        // What one admission cost the server: (HMGET, scripts). The server counts the HMGET a
        // script runs as well, so an admission by the script alone would show (1, 1), a read
        // followed by the script (2, 1).
        let admit = |route: &'static str| {
            let b = b.clone();
            async move {
                let before = calls();
                let a = b.admit(route).await.unwrap();
                let (reads, scripts) = calls();
                (a, reads - before.0, scripts - before.1)
            }
        };

        for route in ["fresh", "fresh", "other"] {
            let (a, reads, scripts) = admit(route).await;
            assert!(a.allowed && a.phase == Phase::Closed, "{bin}: {a:?}");
            assert_eq!(a.decided_by, DecidedBy::Redis, "{bin}");
            assert_eq!((reads, scripts), (1, 0), "{bin}: a closed {route}");
        }
        b.force_close("forced").await.unwrap();
        trip(&b, "forced").await;
        let (a, reads, scripts) = admit("forced").await;
        assert!(a.allowed && a.phase == Phase::Closed, "{bin}: {a:?}");
        assert_eq!((reads, scripts), (1, 0), "{bin}: forced closed");

        // Asked by a replica with nothing cached (the one that tripped it may serve the open
        // phase from its cache), started first: started between the trip and the admit, on
        // a loaded machine it could take longer than the break.
        let other = spawn_ready(config(Some(&server.url()), "brk-read-2", UNCACHED)).await;
        trip(&b, "tripped").await;
        let before = calls();
        let a = other
            .breaker("downstream")
            .unwrap()
            .admit("tripped")
            .await
            .unwrap();
        let (reads, scripts) = calls();
        assert!(!a.allowed && a.phase == Phase::Open, "{bin}: {a:?}");
        assert_eq!(a.decided_by, DecidedBy::Redis, "{bin}");
        assert_eq!(
            (reads - before.0, scripts - before.1),
            (2, 1),
            "{bin}: open, from the script"
        );
        other.shutdown().await.unwrap();
        tokio::time::sleep(Duration::from_millis(350)).await;
        let (trial, reads, scripts) = admit("tripped").await;
        assert!(
            trial.allowed && trial.phase == Phase::HalfOpen,
            "{bin}: {trial:?}"
        );
        assert_eq!(
            (reads, scripts),
            (2, 1),
            "{bin}: the trial, counted by the script"
        );
        let (a, _, scripts) = admit("tripped").await;
        assert!(!a.allowed && a.phase == Phase::HalfOpen, "{bin}: {a:?}");
        assert_eq!(scripts, 1, "{bin}: the second trial refused fleet-wide");

        b.force_open("off").await.unwrap();
        let (a, reads, scripts) = admit("off").await;
        assert!(!a.allowed && a.phase == Phase::Open, "{bin}: {a:?}");
        assert_eq!((reads, scripts), (2, 1), "{bin}: forced open");

        // A closed admission writes nothing: no key for a route only ever admitted.
        let keys = |pattern: &str| -> Vec<String> {
            let reply = server.cmd(&["KEYS", pattern]).unwrap();
            let listed = reply.as_array().expect("KEYS array");
            listed.iter().filter_map(|k| k.as_str()).collect()
        };
        assert!(keys("*fresh*").is_empty(), "{bin}: {:?}", keys("*fresh*"));
        // A state the read cannot take: decided locally, no error, as a failed script was.
        b.force_open("wrong").await.unwrap();
        let state = keys("*wrong*");
        assert_eq!(state.len(), 1, "{bin}: {state:?}");
        server.cmd(&["SET", &state[0], "not a hash"]).unwrap();
        let fallbacks = b.stats().fallbacks;
        let a = b.admit("wrong").await.unwrap();
        assert_eq!(a.decided_by, DecidedBy::Fallback, "{bin}: {a:?}");
        assert_eq!(b.stats().fallbacks, fallbacks + 1, "{bin}");
        forze.shutdown().await.unwrap();
    }
}

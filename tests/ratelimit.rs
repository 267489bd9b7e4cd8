//! Fleet-wide rate limits: the battery on the local backend and every server found, three
//! replicas sharing one policy, and Redis killed mid-load (local fallback, switch-back, no
//! double budget on the way back).

mod common;

use std::time::{Duration, Instant};

use common::{config, spawn_ready, Backend};
use forze_redis::ratelimit::DecidedBy;
use forze_redis::ErrorKind;
use forze_redis_actors::RateLimiter;
use forze_redis_testkit::{server_binaries, TestServer};

const RESOURCES: &str = r#"
[rate_limits.five]
permits = 5
per = "1s"
[rate_limits.api]
permits = 100
per = "1s"
[rate_limits.ten]
permits = 10
per = "1s"
[rate_limits.slow]
permits = 1
per = "30days"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_battery_on_every_backend() {
    for backend in Backend::batteries() {
        let label = backend.label();
        let forze = spawn_ready(config(backend.url().as_deref(), "rl", RESOURCES)).await;
        let five = forze.rate_limit("five").unwrap();
        bucket_starts_full_then_denies_with_an_accurate_retry_after(&five, &label).await;
        let e = five.try_acquire("r", 0).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Validation);
        let e = five.try_acquire("r", 6).await.unwrap_err();
        assert_eq!(
            e.kind(),
            ErrorKind::Validation,
            "{label}: above the capacity"
        );
        // A slow limit keeps its precision: one permit per 30 days.
        let slow = forze.rate_limit("slow").unwrap();
        assert!(slow.try_acquire("r", 1).await.unwrap().allowed, "{label}");
        let d = slow.try_acquire("r", 1).await.unwrap();
        let month = Duration::from_secs(30 * 24 * 3600);
        assert!(!d.allowed, "{label}");
        assert!(
            month - d.retry_after < Duration::from_secs(5),
            "{label}: {:?}",
            d.retry_after
        );
        let e = slow
            .acquire("r", 1, Duration::from_millis(10))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Throttled, "{label}");
        // An unrepresentable wait is "no deadline", not a panic.
        assert!(
            five.acquire("r", 1, Duration::MAX).await.unwrap().allowed,
            "{label}"
        );
        // Routes are separate buckets.
        assert!(
            five.try_acquire("other-route", 5).await.unwrap().allowed,
            "{label}"
        );
        // acquire waits for the refill, or says how long is left.
        let e = five
            .acquire("other-route", 1, Duration::from_millis(50))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Throttled, "{label}");
        let started = Instant::now();
        let d = five
            .acquire("other-route", 1, Duration::from_secs(1))
            .await
            .unwrap();
        assert!(
            d.allowed && started.elapsed() >= Duration::from_millis(100),
            "{label}"
        );
        forze.shutdown().await.unwrap();
    }
}

async fn bucket_starts_full_then_denies_with_an_accurate_retry_after(
    rl: &RateLimiter,
    label: &str,
) {
    let started = Instant::now();
    for i in 0..5 {
        let d = rl.try_acquire("r", 1).await.unwrap();
        assert!(d.allowed, "{label}: permit {i}");
        assert_eq!(d.remaining, 4 - i, "{label}");
    }
    let denied = rl.try_acquire("r", 1).await.unwrap();
    assert!(!denied.allowed, "{label}: the sixth permit in a second");
    // Five permits per second: one permit refills in 200 ms, minus what already refilled.
    let expected = Duration::from_millis(200).saturating_sub(started.elapsed());
    let diff = denied.retry_after.abs_diff(expected);
    assert!(
        diff <= Duration::from_millis(10),
        "{label}: retry_after {:?} vs {expected:?}",
        denied.retry_after
    );
    tokio::time::sleep(denied.retry_after + Duration::from_millis(2)).await;
    assert!(
        rl.try_acquire("r", 1).await.unwrap().allowed,
        "{label}: allowed after retry_after"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_share_one_budget() {
    for bin in server_binaries() {
        let server = TestServer::start(&bin);
        let mut reps = Vec::new();
        for _ in 0..3 {
            reps.push(spawn_ready(config(Some(&server.url()), "rl-fleet", RESOURCES)).await);
        }
        let stop = Instant::now() + Duration::from_secs(3);
        let mut tasks = Vec::new();
        for r in &reps {
            for _ in 0..2 {
                let rl = r.rate_limit("api").unwrap();
                tasks.push(tokio::spawn(async move {
                    let mut granted = 0u64;
                    while Instant::now() < stop {
                        let d = rl.try_acquire("hammered", 1).await.unwrap();
                        assert_eq!(d.decided_by, DecidedBy::Redis);
                        if d.allowed {
                            granted += 1;
                        }
                    }
                    granted
                }));
            }
        }
        let mut granted = 0;
        for t in tasks {
            granted += t.await.unwrap();
        }
        // 100/s for 3 s plus the initial burst of 100.
        let expected = 400.0;
        eprintln!(
            "{bin}: {granted} permits granted to 3 replicas in 3 s (expected about {expected})"
        );
        assert!(
            (granted as f64 - expected).abs() <= expected * 0.05,
            "{bin}: granted {granted}"
        );
        for r in reps {
            r.shutdown().await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_load_falls_back_and_switches_back_without_a_double_budget() {
    for bin in server_binaries() {
        let mut server = TestServer::start(&bin);
        let forze = spawn_ready(config(Some(&server.url()), "rl-down", RESOURCES)).await;
        let ten = forze.rate_limit("ten").unwrap();
        assert_eq!(
            ten.try_acquire("r", 1).await.unwrap().decided_by,
            DecidedBy::Redis
        );
        server.stop();
        // Within one call: every decision is made, none is an error.
        let mut local_grants = 0;
        let started = Instant::now();
        for _ in 0..30 {
            let d = ten.try_acquire("r", 1).await.unwrap();
            assert_eq!(d.decided_by, DecidedBy::Fallback, "{bin}");
            if d.allowed {
                local_grants += 1;
            }
        }
        // The local bucket (share 1.0) grants its capacity, plus what it refills (10/s)
        // while the calls run: a call sent on a connection whose close fred has not seen yet
        // waits out its command timeout (500 ms) before it falls back.
        let refill = (started.elapsed().as_secs_f64() * 10.0).floor() as i32;
        assert!(
            (10..=10 + refill).contains(&local_grants),
            "{bin}: {local_grants} local grants, capacity 10 + {refill} refilled"
        );
        assert!(ten.stats().fallbacks >= 30);
        // Back: the next calls go to Redis by themselves. The restarted server forgot the
        // bucket (full again); the 10 permits spent locally are charged to it, so this
        // refill period grants nothing more: no double budget.
        server.restart();
        let mut back = None;
        for _ in 0..200 {
            let d = ten.try_acquire("r", 1).await.unwrap();
            if d.decided_by == DecidedBy::Redis {
                back = Some(d);
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let d = back.expect("switched back to Redis by itself");
        assert!(
            !d.allowed || d.remaining <= 1,
            "{bin}: a full shared bucket on top of the local spend: {d:?}"
        );
        forze.shutdown().await.unwrap();
    }
}

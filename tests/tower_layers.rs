//! The tower layers on three replicas of one service (three supervisors on one private
//! server): together they keep the shared rate, and failures seen by one replica open the
//! breaker for all of them. Refusals carry their retry time.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{config, server_binaries, spawn_ready, TestServer};
use forze_redis_actors::layers::{BreakerLayer, RateLimitLayer, Refusal};
use tower::{BoxError, Service, ServiceBuilder, ServiceExt};

const RESOURCES: &str = r#"
[rate_limits.api]
permits = 20
per = "2s"
[breakers.backend]
min_calls = 4
failure_ratio = 0.5
break_duration = "30s"
"#;

/// A request: its route and whether the backend fails it.
#[derive(Clone)]
struct Req {
    route: &'static str,
    fail: bool,
}

fn refusal(e: &BoxError) -> Option<&Refusal> {
    e.downcast_ref::<Refusal>()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_share_the_rate_and_one_replicas_failures_open_the_breaker_for_all() {
    for bin in server_binaries() {
        let server = TestServer::start(&bin);
        let mut replicas = Vec::new();
        for _ in 0..3 {
            replicas.push(spawn_ready(config(Some(&server.url()), "tower", RESOURCES)).await);
        }
        let calls = Arc::new(AtomicUsize::new(0));
        let services: Vec<_> = replicas
            .iter()
            .map(|forze| {
                let calls = calls.clone();
                let backend = tower::service_fn(move |req: Req| {
                    calls.fetch_add(1, Ordering::Relaxed);
                    async move {
                        if req.fail {
                            Err::<&'static str, BoxError>("backend failed".into())
                        } else {
                            Ok("ok")
                        }
                    }
                });
                ServiceBuilder::new()
                    .layer(BreakerLayer::new(
                        forze.breaker("backend").unwrap(),
                        |r: &Req| r.route.to_string(),
                    ))
                    .layer(RateLimitLayer::new(
                        forze.rate_limit("api").unwrap(),
                        |r: &Req| r.route.to_string(),
                    ))
                    .service(backend)
            })
            .collect();

        // 60 requests on one route, round-robin over the replicas, as fast as they go: the
        // fleet grants the bucket (20) plus what refills meanwhile, not 20 per replica.
        let started = Instant::now();
        let (mut allowed, mut throttled) = (0u32, 0u32);
        for i in 0..60 {
            let svc = services[i % 3].clone();
            match svc
                .oneshot(Req {
                    route: "rated",
                    fail: false,
                })
                .await
            {
                Ok(_) => allowed += 1,
                Err(e) => match refusal(&e) {
                    Some(Refusal::Throttled { retry_after }) => {
                        assert!(
                            *retry_after > Duration::ZERO && *retry_after <= Duration::from_secs(2)
                        );
                        throttled += 1;
                    }
                    other => panic!("{bin}: unexpected refusal {other:?}: {e}"),
                },
            }
        }
        let refill = (started.elapsed().as_secs_f64() * 10.0).ceil() as u32;
        assert!(allowed >= 20, "{bin}: {allowed} allowed");
        assert!(
            allowed <= 20 + refill + 1,
            "{bin}: {allowed} allowed (refill {refill})"
        );
        assert_eq!(allowed + throttled, 60);

        // Replica 0 alone sees the backend fail: the breaker opens for every replica.
        for _ in 0..4 {
            let r = services[0]
                .clone()
                .oneshot(Req {
                    route: "orders",
                    fail: true,
                })
                .await;
            assert!(r.is_err());
        }
        let before = calls.load(Ordering::Relaxed);
        for (i, svc) in services.iter().enumerate() {
            let mut svc = svc.clone();
            let svc = svc.ready().await.unwrap();
            let err = svc
                .call(Req {
                    route: "orders",
                    fail: false,
                })
                .await
                .expect_err("the breaker is open for every replica");
            match refusal(&err) {
                Some(Refusal::CircuitOpen { retry_after }) => {
                    assert!(
                        *retry_after > Duration::from_secs(20),
                        "{bin}: replica {i}: {retry_after:?}"
                    );
                }
                other => panic!("{bin}: replica {i}: {other:?}: {err}"),
            }
        }
        assert_eq!(
            calls.load(Ordering::Relaxed),
            before,
            "{bin}: a refused call reached the backend"
        );
        for f in replicas {
            f.shutdown().await.unwrap();
        }
    }
}

//! The tower layers on three replicas of one axum service (three supervisors on one private
//! server): together they keep the shared rate, and failures (`5xx` answers) seen by one
//! replica open the breaker for all of them. Refusals carry their retry time, and a throttled
//! request never counts against the backend.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
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

/// A request to `path` (`/rated`, `/orders`, `/orders?fail`).
fn req(path: &str) -> Request {
    Request::builder().uri(path).body(Body::empty()).unwrap()
}

/// The breaker and rate-limit key: the path without its query.
fn route(r: &Request) -> String {
    r.uri().path().to_string()
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
                let (c1, c2) = (calls.clone(), calls.clone());
                let app = Router::new()
                    .route(
                        "/rated",
                        get(move || async move {
                            c1.fetch_add(1, Ordering::Relaxed);
                            "ok"
                        }),
                    )
                    .route(
                        "/orders",
                        get(move |q: axum::extract::RawQuery| async move {
                            c2.fetch_add(1, Ordering::Relaxed);
                            match q.0.as_deref() {
                                Some("fail") => StatusCode::BAD_GATEWAY,
                                _ => StatusCode::OK,
                            }
                        }),
                    );
                ServiceBuilder::new()
                    .layer(
                        BreakerLayer::new(forze.breaker("backend").unwrap(), route)
                            .failure_if(|r: &Response| r.status().is_server_error()),
                    )
                    .layer(RateLimitLayer::new(forze.rate_limit("api").unwrap(), route))
                    .service(app)
            })
            .collect();

        // 60 requests on one route, round-robin over the replicas, as fast as they go: the
        // fleet grants the bucket (20) plus what refills meanwhile, not 20 per replica.
        let started = Instant::now();
        let (mut allowed, mut throttled) = (0u32, 0u32);
        for i in 0..60 {
            let svc = services[i % 3].clone();
            match svc.oneshot(req("/rated")).await {
                Ok(r) => {
                    assert_eq!(r.status(), StatusCode::OK);
                    allowed += 1;
                }
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

        // The throttled requests never reached the backend, nor counted against it: the
        // breaker of `/rated` is still closed.
        assert_eq!(calls.load(Ordering::Relaxed), allowed as usize, "{bin}");
        let admitted = replicas[0]
            .breaker("backend")
            .unwrap()
            .admit("/rated")
            .await
            .unwrap();
        assert!(
            admitted.allowed,
            "{bin}: throttled requests tripped the breaker"
        );

        // Replica 0 alone sees the backend fail (502): the breaker opens for every replica.
        for _ in 0..4 {
            let r = services[0]
                .clone()
                .oneshot(req("/orders?fail"))
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
        }
        let before = calls.load(Ordering::Relaxed);
        for (i, svc) in services.iter().enumerate() {
            let mut svc = svc.clone();
            let svc = svc.ready().await.unwrap();
            let err = svc
                .call(req("/orders"))
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

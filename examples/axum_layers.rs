//! An axum service behind forze-redis's tower layers: a fleet-wide rate limit per tenant and a
//! circuit breaker per route, both refusing with `429`/`503` and a `Retry-After` header.
//!
//! `cargo run --example axum_layers` (embedded state, unless `REDIS_URL` names a server:
//! then every replica of the service shares the rate and the breaker). It serves on a free
//! loopback port, sends itself a burst of requests, prints what each got, and stops.
//! `FORZE_AXUM_LISTEN=127.0.0.1:8080` keeps serving there instead.

use std::time::Duration;

use axum::error_handling::HandleErrorLayer;
use axum::extract::{Path, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{BoxError, Router};
use forze_redis_actors::layers::{BreakerLayer, RateLimitLayer, Refusal};
use forze_redis_actors::{Config, Forze};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceBuilder;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let resources = r#"
[rate_limits.tenants]
permits = 5
per = "1s"
[breakers.routes]
min_calls = 4
failure_ratio = 0.5
break_duration = "5s"
"#;
    let config = match std::env::var("REDIS_URL") {
        Ok(url) => Config::from_toml_str(&format!("[redis]\nurl = \"{url}\"\n{resources}"))?,
        Err(_) => Config::from_toml_str(&format!("mode = \"embedded\"\n{resources}"))?,
    };
    let (forze, _join) = Forze::spawn(config).await?;

    let app = Router::new()
        .route("/stock/{sku}", get(stock))
        .route("/flaky", get(|| async { StatusCode::BAD_GATEWAY }))
        .layer(
            ServiceBuilder::new()
                // Refusals become responses; the layers below it answer with `Refusal`.
                .layer(HandleErrorLayer::new(refusal_response))
                // Per route: the path without its parameters would be better; the path will do.
                .layer(
                    BreakerLayer::new(forze.breaker("routes")?, |req: &Request| {
                        req.uri().path().split('/').nth(1).unwrap_or("").to_string()
                    })
                    .failure_if(|res: &Response| res.status().is_server_error()),
                )
                // Per tenant, from a header (tenants never become metric labels).
                .layer(RateLimitLayer::new(
                    forze.rate_limit("tenants")?,
                    |req: &Request| {
                        req.headers()
                            .get("x-tenant")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("anonymous")
                            .to_string()
                    },
                )),
        );

    let listen = std::env::var("FORZE_AXUM_LISTEN").ok();
    let listener =
        tokio::net::TcpListener::bind(listen.as_deref().unwrap_or("127.0.0.1:0")).await?;
    let addr = listener.local_addr()?;
    println!("serving on http://{addr}");
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    if listen.is_some() {
        server.await??;
        return Ok(());
    }

    // A burst from one tenant: the first 5 pass, then 429 with Retry-After.
    for i in 0..7 {
        println!(
            "acme  GET /stock/mug #{i}: {}",
            get_status(addr, "/stock/mug", "acme").await?
        );
    }
    // Another tenant has its own bucket.
    println!(
        "other GET /stock/mug: {}",
        get_status(addr, "/stock/mug", "other").await?
    );
    // A failing route trips its breaker: then 503 with Retry-After, without calling it.
    for i in 0..6 {
        let tenant = format!("t{i}");
        println!(
            "{tenant}    GET /flaky: {}",
            get_status(addr, "/flaky", &tenant).await?
        );
    }
    server.abort();
    forze.shutdown().await?;
    Ok(())
}

async fn stock(Path(sku): Path<String>) -> String {
    format!("{sku}: 12 in stock\n")
}

/// `429` for a rate limit, `503` for an open breaker, both with `Retry-After` (seconds,
/// rounded up); `500` for anything else.
async fn refusal_response(err: BoxError) -> Response {
    let Some(refusal) = err.downcast_ref::<Refusal>() else {
        return (StatusCode::INTERNAL_SERVER_ERROR, err.to_string()).into_response();
    };
    let status = match refusal {
        Refusal::Throttled { .. } => StatusCode::TOO_MANY_REQUESTS,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    let mut response = (status, refusal.to_string()).into_response();
    if let Some(after) = refusal.retry_after() {
        let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
    }
    response
}

/// A minimal HTTP/1.1 client for the demo: the status line and any Retry-After.
async fn get_status(
    addr: std::net::SocketAddr,
    path: &str,
    tenant: &str,
) -> std::io::Result<String> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nhost: {addr}\r\nx-tenant: {tenant}\r\nconnection: close\r\n\r\n"
    );
    s.write_all(request.as_bytes()).await?;
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut text))
        .await
        .map_err(|_| std::io::Error::other("no answer"))??;
    let status = text.lines().next().unwrap_or("").to_string();
    let retry = text
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("retry-after"))
        .map(|l| format!(" ({l})"))
        .unwrap_or_default();
    Ok(format!("{status}{retry}"))
}

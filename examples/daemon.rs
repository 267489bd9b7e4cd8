//! forze-redis embedded in a long-running service, operated the way services are:
//! - configuration from a TOML file plus environment overrides (`FORZE__…`, `REDIS_URL`), the
//!   effective configuration logged with secrets redacted;
//! - metrics in the Prometheus format on `/metrics` and a health endpoint on `/health` that
//!   reflects the pool and tracking state (`FORZE_DAEMON_LISTEN`, default `127.0.0.1:9464`);
//! - a periodic workload over every configured resource; graceful shutdown on SIGTERM or
//!   Ctrl-C.
//!
//! `cargo run --example daemon -- examples/forze.toml` (the file's `[redis]` table points at a
//! server; `FORZE__MODE=embedded` with no `[redis]` for embedded mode).
//! `FORZE_DAEMON_MAX_TICKS=N` stops after N ticks. `FORZE_DAEMON_DOWNSTREAM_FAILURE=1`
//! simulates an outage of the downstream service every breaker protects, so the breakers trip.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use forze_redis_actors::{
    payload_hash, CacheKey, CallError, Config, CounterId, Forze, ForzeHandle, HealthState,
    IdemRequest, LockGuard, LockId, RunId, TenantId,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    // The recorder first: resources register their metrics when they are built.
    let metrics = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Suffix("_seconds".into()),
            &[
                0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05,
                0.1, 0.25, 0.5, 1.0,
            ],
        )?
        .install_recorder()?;

    let path = std::env::args().nth(1);
    let config = Config::load(path.as_deref().map(std::path::Path::new))?;
    tracing::info!(
        path = path.as_deref().unwrap_or("<none>"),
        mode = ?config.effective_mode(),
        "configuration loaded:\n{}",
        config.to_toml_redacted()?
    );
    let max_ticks: Option<u64> = std::env::var("FORZE_DAEMON_MAX_TICKS")
        .ok()
        .and_then(|v| v.parse().ok());
    let downstream_failure: f64 = std::env::var("FORZE_DAEMON_DOWNSTREAM_FAILURE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let listen: SocketAddr = std::env::var("FORZE_DAEMON_LISTEN")
        .unwrap_or_else(|_| "127.0.0.1:9464".into())
        .parse()?;
    let names = Names::of(&config);

    let (forze, _join) = Forze::spawn(config).await?;
    let listener = TcpListener::bind(listen).await?;
    tracing::info!(addr = %listener.local_addr()?, "serving /metrics and /health");
    tokio::spawn(serve(listener, metrics, forze.clone()));

    // A lock held for the daemon's life: leader election, as a service would do it.
    let mut leases: Vec<LockGuard> = Vec::new();
    let mut term = signal(SignalKind::terminate())?;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut ticks = 0u64;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => { tracing::info!("Ctrl-C: shutting down"); break; }
            _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); break; }
            _ = tick.tick() => {
                ticks += 1;
                if leases.is_empty() {
                    leases = lead(&forze, &names).await;
                }
                work(&forze, &names, ticks, downstream_failure).await;
                if max_ticks.is_some_and(|m| ticks >= m) { break; }
            }
        }
    }
    for lease in leases {
        let _ = lease.release().await;
    }
    forze.shutdown().await?;
    tracing::info!("stopped");
    Ok(())
}

/// The configured resource names, by kind.
struct Names {
    locks: Vec<String>,
    idempotency: Vec<String>,
    snapshots: Vec<String>,
    rate_limits: Vec<String>,
    breakers: Vec<String>,
}

impl Names {
    fn of(c: &Config) -> Self {
        fn keys<V>(m: &BTreeMap<String, V>) -> Vec<String> {
            m.keys().cloned().collect()
        }
        Names {
            locks: keys(&c.locks),
            idempotency: keys(&c.idempotency),
            snapshots: keys(&c.snapshots),
            rate_limits: keys(&c.rate_limits),
            breakers: keys(&c.breakers),
        }
    }
}

/// Take the `leader` lock of every lock resource (those another replica holds are skipped).
async fn lead(forze: &ForzeHandle, names: &Names) -> Vec<LockGuard> {
    let mut held = Vec::new();
    for name in &names.locks {
        let Ok(lock) = forze.lock(name) else { continue };
        match lock.try_acquire(&LockId::new("leader")).await {
            Ok(Some(guard)) => {
                tracing::info!(lock = name, token = guard.token(), "leading");
                held.push(guard);
            }
            Ok(None) => tracing::info!(lock = name, "another replica leads"),
            Err(e) => tracing::warn!(lock = name, error = %e, "cannot take the lead"),
        }
    }
    held
}

/// One round of the workload: every resource used once or twice. A failure is logged and
/// the round goes on (one resource down must not stop the others).
async fn work(forze: &ForzeHandle, names: &Names, tick: u64, downstream_failure: f64) {
    fn log<T>(what: &str, r: forze_redis_actors::Result<T>) {
        if let Err(e) = r {
            tracing::warn!(resource = what, error = %e, "tick step failed");
        }
    }
    let Ok(tenant) = TenantId::new("daemon") else {
        return;
    };
    for name in forze.counter_names() {
        let Ok(counter) = forze.counter(&name) else {
            continue;
        };
        let mut id = CounterId::suffix("ticks");
        if counter.is_tenant_aware() {
            id = id.for_tenant(tenant.clone());
        }
        log(&name, counter.incr(&id, 1).await);
    }
    for name in forze.cache_names() {
        let Ok(cache) = forze.cache(&name) else {
            continue;
        };
        let mut key = CacheKey::new("status");
        if cache.is_tenant_aware() {
            key = key.for_tenant(tenant.clone());
        }
        // Written now and then; read every tick (L1 hits in between, with an L1).
        let fresh: forze_redis_actors::Result<Option<String>> = cache.get(&key).await;
        if tick % 10 == 1 || matches!(fresh, Ok(None)) {
            log(&name, cache.set(&key, &format!("tick {tick}"), None).await);
        }
        log(&name, fresh);
    }
    for name in &names.idempotency {
        let Ok(idem) = forze.idempotency(name) else {
            continue;
        };
        // A new request every 5 ticks, retried in between: claimed once, then replayed.
        let req = IdemRequest::new("report", format!("r{}", tick / 5), payload_hash(b"report"));
        let run = idem
            .run(&req, || async { Ok::<_, std::io::Error>(tick) })
            .await;
        if let Err(e) = run {
            tracing::warn!(resource = name, error = %e, "tick step failed");
        }
    }
    for name in &names.snapshots {
        let Ok(snaps) = forze.snapshot(name) else {
            continue;
        };
        let run = RunId::new(format!("run{}", tick % 3));
        let ids: Vec<String> = (0..20).map(|i| format!("doc{i}")).collect();
        log(name, snaps.put(&run, "q=status", &ids).await);
        log(name, snaps.page(&run, 0, 10, Some("q=status")).await);
    }
    for name in &names.rate_limits {
        let Ok(limiter) = forze.rate_limit(name) else {
            continue;
        };
        log(name, limiter.try_acquire("daemon", 1).await);
    }
    for name in &names.breakers {
        let Ok(breaker) = forze.breaker(name) else {
            continue;
        };
        let failing = rand_unit(tick) < downstream_failure;
        let outcome = breaker
            .call("downstream", async move {
                if failing {
                    Err("downstream unavailable")
                } else {
                    Ok(())
                }
            })
            .await;
        if let Err(CallError::Breaker(e)) = outcome {
            tracing::debug!(breaker = name, error = %e, "refused by the breaker");
        }
    }
}

/// A deterministic value in [0, 1) per tick (no RNG dependency for an example).
fn rand_unit(tick: u64) -> f64 {
    (tick.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11) as f64 / (1u64 << 53) as f64
}

/// A minimal HTTP/1.1 server: `GET /metrics` (Prometheus text format) and `GET /health`
/// (200 while the pool is up or degraded and tracking, if any, is confirmed; 503 otherwise).
async fn serve(listener: TcpListener, metrics: PrometheusHandle, forze: ForzeHandle) {
    loop {
        let Ok((mut socket, _)) = listener.accept().await else {
            continue;
        };
        let (metrics, forze) = (metrics.clone(), forze.clone());
        tokio::spawn(async move {
            // The request head, however it was split into segments (at most 8 KiB).
            let mut buf = Vec::with_capacity(1024);
            let mut chunk = [0u8; 1024];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
                match socket.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let request = String::from_utf8_lossy(&buf);
            let path = request.split_whitespace().nth(1).unwrap_or("/");
            let (status, kind, body) = match path {
                "/metrics" => {
                    metrics.run_upkeep();
                    ("200 OK", "text/plain; version=0.0.4", metrics.render())
                }
                "/health" => health(&forze).await,
                _ => ("404 Not Found", "text/plain", "not found\n".into()),
            };
            let head = format!(
                "HTTP/1.1 {status}\r\ncontent-type: {kind}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = socket.write_all(head.as_bytes()).await;
            let _ = socket.write_all(body.as_bytes()).await;
        });
    }
}

async fn health(forze: &ForzeHandle) -> (&'static str, &'static str, String) {
    let health = forze.health();
    let tracking = forze.tracking_stats().await.ok().flatten();
    let pool_ok = matches!(
        health.state,
        HealthState::Up | HealthState::Degraded | HealthState::Embedded
    );
    let tracking_ok = tracking.as_ref().is_none_or(|t| t.confirmed);
    let body = serde_json::json!({
        "status": if pool_ok && tracking_ok { "ok" } else { "unavailable" },
        "redis": health,
        "tracking_confirmed": tracking.as_ref().map(|t| t.confirmed),
    })
    .to_string();
    let status = if pool_ok && tracking_ok {
        "200 OK"
    } else {
        "503 Service Unavailable"
    };
    (status, "application/json", body)
}

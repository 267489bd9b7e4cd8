//! forze-redis embedded in a long-running service: reads its config file, logs through
//! `tracing`, serves a periodic workload, and shuts down gracefully on SIGTERM or Ctrl-C.
//!
//! `cargo run --example daemon -- examples/forze.toml` (the file's `[redis]` table points at a
//! server; remove it for embedded mode). `FORZE_DAEMON_MAX_TICKS=N` stops after N ticks.

use std::time::Duration;

use forze_redis_actors::{Config, CounterId, Forze, TenantId};
use tokio::signal::unix::{signal, SignalKind};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "examples/forze.toml".into());
    let config = Config::from_toml_file(&path)?;
    tracing::info!(path, redis = config.redis.is_some(), "configuration loaded");
    let max_ticks: Option<u64> = std::env::var("FORZE_DAEMON_MAX_TICKS")
        .ok()
        .and_then(|v| v.parse().ok());

    let (forze, _join) = Forze::spawn(config).await?;
    let mut term = signal(SignalKind::terminate())?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut ticks = 0u64;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => { tracing::info!("Ctrl-C: shutting down"); break; }
            _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); break; }
            _ = tick.tick() => {
                ticks += 1;
                for name in forze.counter_names() {
                    let counter = forze.counter(&name)?;
                    let mut id = CounterId::suffix("heartbeat");
                    if counter.is_tenant_aware() {
                        id = id.for_tenant(TenantId::new("daemon")?);
                    }
                    match counter.incr(&id, 1).await {
                        Ok(v) => tracing::info!(counter = name, value = v, health = ?forze.health().state, "tick"),
                        Err(e) => tracing::warn!(counter = name, error = %e, "tick failed"),
                    }
                }
                if max_ticks.is_some_and(|m| ticks >= m) { break; }
            }
        }
    }
    forze.shutdown().await?;
    tracing::info!("stopped");
    Ok(())
}

//! Scaffolding shared by the side-by-side benchmarks: one private server, a supervisor on
//! it, the bare fred pool and the pool with our settings to compare against, and the
//! interleaved-rounds arithmetic.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use forze_redis::connection::{HealthState, RedisConnection};
use forze_redis::Config;
use forze_redis_actors::{Forze, ForzeHandle};
use forze_redis_testkit::{server_binaries, ServerKind, TestServer};
use fred::interfaces::ClientLike;

/// Rounds per comparison; the sides alternate and the median of each is compared.
pub const ROUNDS: usize = 5;
/// Concurrent callers of the `_c64` comparisons.
pub const TASKS: usize = 64;

/// The median of `v`.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Run `op(task, call)` `per_task` times on each of [`TASKS`] tasks; calls per second.
pub async fn throughput<F, Fut>(per_task: usize, op: F) -> f64
where
    F: Fn(usize, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let started = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let op = op.clone();
            tokio::spawn(async move {
                for i in 0..per_task {
                    op(t, i).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
    (TASKS * per_task) as f64 / started.elapsed().as_secs_f64()
}

/// A private server (redis-server when found, else the first binary found).
pub fn server() -> TestServer {
    let bin = server_binaries()
        .into_iter()
        .find(|b| b.kind == ServerKind::Redis)
        .unwrap_or_else(|| server_binaries().remove(0));
    println!("server: {} {}", bin.kind, bin.version);
    TestServer::start(&bin)
}

/// A supervisor on `url` with `resources` (TOML), connected.
pub async fn spawn(url: &str, resources: &str) -> ForzeHandle {
    let config = Config::from_toml_str(&format!(
        "[redis]\nurl = \"{url}\"\npool_size = 4\n{resources}\n[supervision]\nname_prefix = \"bench\""
    ))
    .expect("config");
    spawn_config(config).await
}

/// With the `metrics` feature, install a Prometheus recorder (once), as a service would: the
/// benchmarks then pay for recording every series. Without it, nothing is recorded.
pub fn install_metrics_recorder() {
    #[cfg(feature = "metrics")]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            metrics_exporter_prometheus::PrometheusBuilder::new()
                .install_recorder()
                .expect("recorder");
            println!("metrics: on (Prometheus recorder installed)");
        });
    }
    #[cfg(not(feature = "metrics"))]
    println!("metrics: off (feature disabled)");
}

/// A supervisor for `config`, connected (waited for at most 10 s).
pub async fn spawn_config(config: Config) -> ForzeHandle {
    install_metrics_recorder();
    let (forze, _join) = Forze::spawn(config).await.expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(10);
    while forze.health().state != HealthState::Up && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    forze
}

/// Bare fred: its default settings, 4 connections.
pub async fn direct_pool(url: &str) -> fred::clients::Pool {
    let pool =
        fred::types::Builder::from_config(fred::types::config::Config::from_url(url).expect("url"))
            .build_pool(4)
            .expect("pool");
    pool.init().await.expect("connect");
    pool
}

/// fred on a pool built with our connection settings (per-command timeout, reconnect policy,
/// one attempt per write, our unresponsive check): the cost of those settings, which bare
/// fred lacks, apart from the cost of our code.
pub async fn same_settings_pool(url: &str) -> Arc<RedisConnection> {
    let redis = Config::from_toml_str(&format!("[redis]\nurl = \"{url}\"\npool_size = 4"))
        .expect("config")
        .redis
        .expect("redis");
    let conn = Arc::new(RedisConnection::build(&redis).expect("pool"));
    conn.pool().init().await.expect("connect");
    conn
}

/// The arguments our handle sends to the idempotency begin script with the default policy
/// (payload hash `ph`, a 300 s pending lease, a day's retention).
pub fn idempotency_begin_args(owner: &str) -> [fred::types::Value; 4] {
    use fred::types::Value;
    [
        Value::from("ph"),
        Value::from(owner),
        Value::Integer(300_000),
        Value::Integer(86_400_000),
    ]
}

/// The arguments our handle sends to the idempotency commit script (result `result`).
pub fn idempotency_commit_args(owner: &str) -> [fred::types::Value; 3] {
    use fred::types::Value;
    [
        Value::from(owner),
        Value::from("result"),
        Value::Integer(86_400_000),
    ]
}

/// One idempotency begin + commit as our handle sends it (the same two scripts and
/// arguments: a 300 s pending lease, a day's retention), through `conn`: the fred-with-our-
/// settings side of the idempotency comparisons. `key` must be fresh.
pub async fn idempotency_pair_same_settings(conn: &RedisConnection, key: &str, owner: &str) {
    use forze_redis::error::Access;
    use forze_redis::scripts::{IDEM_BEGIN, IDEM_COMMIT};
    use fred::types::Value;
    let r: Vec<Value> = conn
        .eval(
            "bench",
            Access::Write,
            &IDEM_BEGIN,
            &[key],
            &idempotency_begin_args(owner),
        )
        .await
        .expect("begin");
    assert_eq!(r[0].as_str().as_deref(), Some("proceed"));
    let n: i64 = conn
        .eval(
            "bench",
            Access::Write,
            &IDEM_COMMIT,
            &[key],
            &idempotency_commit_args(owner),
        )
        .await
        .expect("commit");
    assert_eq!(n, 1);
}

/// One lock acquire + release through `lock` on `id`, which must be free: our side of the
/// lock comparisons.
pub async fn lock_pair(lock: &forze_redis_actors::Lock, id: &forze_redis::lock::LockId) {
    let g = lock.try_acquire(id).await.expect("acquire").expect("free");
    assert!(g.release().await.expect("release"));
}

/// One lock acquire + release as our handle sends it (the same two scripts and arguments: a
/// 30 s lease, a fence that never expires) through `conn`: the fred-with-our-settings side of
/// the lock comparisons. `key` must be free.
pub async fn lock_pair_same_settings(conn: &RedisConnection, key: &str, owner: &str) {
    use forze_redis::error::Access;
    use forze_redis::scripts::{LOCK_ACQUIRE, LOCK_RELEASE};
    use fred::types::Value;
    let fence = format!("{key}:fence");
    let r: Vec<i64> = conn
        .eval(
            "bench",
            Access::Write,
            &LOCK_ACQUIRE,
            &[key, &fence],
            &[
                Value::from(owner),
                Value::Integer(30_000),
                Value::Integer(0),
            ],
        )
        .await
        .expect("acquire");
    assert_eq!(r[0], 1);
    let n: i64 = conn
        .eval(
            "bench",
            Access::Write,
            &LOCK_RELEASE,
            &[key],
            &[Value::from(owner)],
        )
        .await
        .expect("release");
    assert_eq!(n, 1);
}

/// Print the three throughputs and the two ratio lines of one comparison.
pub fn report(name: &str, unit: &str, ours: Vec<f64>, direct: Vec<f64>, same: Vec<f64>) {
    let (o, t, s) = (median(ours), median(direct), median(same));
    println!(
        "{name}: ours {o:.0} {unit}, fred direct {t:.0} {unit}, \
         fred with our settings {s:.0} {unit}"
    );
    println!("ratio {name} {:.3}", o / t);
    println!("ratio {name}_vs_fred_same_settings {:.3}", o / s);
}

//! Rate-limit decisions through the handle against the same script sent with fred direct,
//! same private server, same run, 64 tasks (each on its own route; the bucket is large, so
//! both sides decide "allowed" and do the same work).
//! Prints `ratio ratelimit_try_acquire_c64 <ours/direct throughput>`, and
//! `rate breaker_admit_closed_cached <decisions/s>`: breaker admissions served from the
//! replica's closed-state cache, one task (target at least 1 000 000).
//!
//! `cargo bench --bench ratelimit` (release build).

use std::sync::Arc;
use std::time::{Duration, Instant};

use forze_redis::connection::RedisConnection;
use forze_redis::error::Access;
use forze_redis::scripts::RATELIMIT_ACQUIRE;
use forze_redis::Config;
use forze_redis_actors::Forze;
use forze_redis_testkit::{server_binaries, ServerKind, TestServer};
use fred::interfaces::{ClientLike, LuaInterface};
use fred::types::Value;

const ROUNDS: usize = 5;
const TASKS: usize = 64;
const PER_TASK: usize = 500;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

async fn throughput<F, Fut>(op: F) -> f64
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
                for i in 0..PER_TASK {
                    op(t, i).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
    (TASKS * PER_TASK) as f64 / started.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let bin = server_binaries()
        .into_iter()
        .find(|b| b.kind == ServerKind::Redis)
        .unwrap_or_else(|| server_binaries().remove(0));
    let server = TestServer::start(&bin);
    println!("server: {} {}", bin.kind, bin.version);
    let config = Config::from_toml_str(&format!(
        "[redis]\nurl = \"{}\"\npool_size = 4\n[rate_limits.bench]\npermits = 100000000\nper = \"1s\"\n[breakers.bench]\nclosed_cache_ttl = \"10s\"\n[supervision]\nname_prefix = \"bench\"",
        server.url()
    ))
    .expect("config");
    let (forze, _join) = Forze::spawn(config).await.expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(10);
    while forze.health().state != forze_redis::connection::HealthState::Up
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let rl = forze.rate_limit("bench").expect("rate limit");
    let direct = fred::types::Builder::from_config(
        fred::types::config::Config::from_url(&server.url()).expect("url"),
    )
    .build_pool(4)
    .expect("pool");
    direct.init().await.expect("connect");
    let safe = Arc::new(
        RedisConnection::build(
            &Config::from_toml_str(&format!(
                "[redis]\nurl = \"{}\"\npool_size = 4",
                server.url()
            ))
            .expect("config")
            .redis
            .expect("redis"),
        )
        .expect("pool"),
    );
    safe.pool().init().await.expect("connect");
    // The same arguments the handle sends for this policy (permits/period ms, capacity, n, ttl,
    // debt).
    let args = |_t: usize, _i: usize| {
        vec![
            "100000000/1000".to_string(),
            "100000000".to_string(),
            "1".to_string(),
            "2000".to_string(),
            "0.000".to_string(),
        ]
    };
    let keys: Arc<Vec<String>> = Arc::new(
        (0..TASKS)
            .map(|t| format!("forze:ratelimit:{{direct:_:r{t}}}"))
            .collect(),
    );
    let (mut ours, mut theirs, mut same) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let r = rl.clone();
        ours.push(
            throughput(move |t, _| {
                let r = r.clone();
                async move {
                    let d = r.try_acquire(&format!("r{t}"), 1).await.expect("decision");
                    assert!(d.allowed);
                }
            })
            .await,
        );
        let (d, k) = (direct.clone(), keys.clone());
        theirs.push(
            throughput(move |t, i| {
                let (d, k) = (d.clone(), k.clone());
                async move {
                    let r: Vec<Value> = d
                        .next()
                        .evalsha(RATELIMIT_ACQUIRE.sha1(), vec![k[t].clone()], args(t, i))
                        .await
                        .expect("decision");
                    assert_eq!(r[0].as_i64(), Some(1));
                }
            })
            .await,
        );
        let (sf, k) = (safe.clone(), keys.clone());
        same.push(
            throughput(move |t, i| {
                let (sf, k) = (sf.clone(), k.clone());
                async move {
                    let r: Vec<Value> = sf
                        .eval(
                            "bench",
                            Access::Write,
                            &RATELIMIT_ACQUIRE,
                            vec![k[t].clone()],
                            args(t, i),
                        )
                        .await
                        .expect("decision");
                    assert_eq!(r[0].as_i64(), Some(1));
                }
            })
            .await,
        );
    }
    let (o, t, s) = (median(ours), median(theirs), median(same));
    println!(
        "ratelimit_try_acquire_c64: ours {o:.0} decisions/s, fred EVALSHA direct {t:.0} decisions/s, \
         fred with our settings {s:.0} decisions/s"
    );
    println!("ratio ratelimit_try_acquire_c64 {:.3}", o / t);
    println!(
        "ratio ratelimit_try_acquire_c64_vs_fred_same_settings {:.3}",
        o / s
    );

    // Breaker admissions while closed and cached: no I/O, one task.
    let breaker = forze.breaker("bench").expect("breaker");
    assert!(breaker.admit("svc").await.expect("admit").allowed);
    const ADMITS: usize = 2_000_000;
    let mut rates = Vec::new();
    for _ in 0..ROUNDS {
        let started = Instant::now();
        for _ in 0..ADMITS {
            let a = breaker
                .admit(std::hint::black_box("svc"))
                .await
                .expect("admit");
            std::hint::black_box(a);
        }
        rates.push(ADMITS as f64 / started.elapsed().as_secs_f64());
    }
    println!("rate breaker_admit_closed_cached {:.0}", median(rates));
    let _ = direct.quit().await;
    forze.shutdown().await.expect("shutdown");
}

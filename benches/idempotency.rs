//! Idempotency begin + commit through the handle against the same two scripts sent with fred
//! direct (`EVALSHA`), same private server, same run, 64 tasks, a fresh key per request.
//! Prints `ratio idempotency_begin_commit_c64 <ours/direct throughput>`.
//!
//! `cargo bench --bench idempotency` (release build).

use std::sync::Arc;
use std::time::{Duration, Instant};

use forze_redis::connection::RedisConnection;
use forze_redis::error::Access;
use forze_redis::idempotency::{Begin, IdemRequest};
use forze_redis::scripts::{IDEM_BEGIN, IDEM_COMMIT};
use forze_redis::Config;
use forze_redis_actors::Forze;
use forze_redis_testkit::{server_binaries, ServerKind, TestServer};
use fred::interfaces::{ClientLike, LuaInterface};

const ROUNDS: usize = 5;
const TASKS: usize = 64;
const PER_TASK: usize = 400;

/// Distinguishes the rounds, so every request of every round is fresh.
fn nonce() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static ROUND: AtomicU64 = AtomicU64::new(0);
    ROUND.fetch_add(1, Ordering::Relaxed)
}

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
        "[redis]\nurl = \"{}\"\npool_size = 4\n[idempotency.bench]\n[supervision]\nname_prefix = \"bench\"",
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
    let idem = forze.idempotency("bench").expect("idempotency");
    let direct = fred::types::Builder::from_config(
        fred::types::config::Config::from_url(&server.url()).expect("url"),
    )
    .build_pool(4)
    .expect("pool");
    direct.init().await.expect("connect");
    // Load the scripts so the direct side's EVALSHA never misses.
    for s in [&*IDEM_BEGIN, &*IDEM_COMMIT] {
        let _: String = direct.next().script_load(s.source()).await.expect("load");
    }
    // fred direct on a pool built with our connection settings (per-command timeout,
    // unresponsive detection, one attempt per write): the cost of those settings, which bare
    // fred lacks, apart from the cost of our code.
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

    let (mut ours, mut theirs, mut same) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let h = idem.clone();
        ours.push(
            throughput(move |t, i| {
                let h = h.clone();
                async move {
                    let r = IdemRequest::new("bench", format!("ours-{t}-{i}-{}", nonce()), "ph");
                    let Begin::Proceed(claim) = h.begin(&r).await.expect("begin") else {
                        panic!("fresh key replayed");
                    };
                    h.commit(&claim, b"result").await.expect("commit");
                }
            })
            .await,
        );
        let d = direct.clone();
        theirs.push(
            throughput(move |t, i| {
                let d = d.clone();
                async move {
                    let key = format!("forze:idem:{{direct:_:bench:{t}-{i}-{}}}", nonce());
                    let owner = format!("owner-{t}-{i}");
                    let r: Vec<fred::types::Value> = d
                        .next()
                        .evalsha(
                            IDEM_BEGIN.sha1(),
                            vec![key.clone()],
                            vec![
                                "ph".to_string(),
                                owner.clone(),
                                "300000".to_string(),
                                "86400000".to_string(),
                            ],
                        )
                        .await
                        .expect("begin");
                    assert_eq!(r[0].as_str().as_deref(), Some("proceed"));
                    let n: i64 = d
                        .next()
                        .evalsha(
                            IDEM_COMMIT.sha1(),
                            vec![key],
                            vec![owner, "result".to_string(), "86400000".to_string()],
                        )
                        .await
                        .expect("commit");
                    assert_eq!(n, 1);
                }
            })
            .await,
        );
        let sf = safe.clone();
        same.push(
            throughput(move |t, i| {
                let sf = sf.clone();
                async move {
                    let key = format!("forze:idem:{{same:_:bench:{t}-{i}-{}}}", nonce());
                    let owner = format!("owner-{t}-{i}");
                    let r: Vec<fred::types::Value> = sf
                        .eval(
                            "bench",
                            Access::Write,
                            &IDEM_BEGIN,
                            vec![key.clone()],
                            vec![
                                "ph".to_string(),
                                owner.clone(),
                                "300000".to_string(),
                                "86400000".to_string(),
                            ],
                        )
                        .await
                        .expect("begin");
                    assert_eq!(r[0].as_str().as_deref(), Some("proceed"));
                    let n: i64 = sf
                        .eval(
                            "bench",
                            Access::Write,
                            &IDEM_COMMIT,
                            vec![key],
                            vec![owner, "result".to_string(), "86400000".to_string()],
                        )
                        .await
                        .expect("commit");
                    assert_eq!(n, 1);
                }
            })
            .await,
        );
    }
    let (o, t, s) = (median(ours), median(theirs), median(same));
    println!(
        "idempotency_begin_commit_c64: ours {o:.0} pairs/s, fred EVALSHA direct {t:.0} pairs/s, \
         fred with our settings {s:.0} pairs/s"
    );
    println!("ratio idempotency_begin_commit_c64 {:.3}", o / t);
    println!(
        "ratio idempotency_begin_commit_c64_vs_fred_same_settings {:.3}",
        o / s
    );
    let _ = direct.quit().await;
    forze.shutdown().await.expect("shutdown");
}

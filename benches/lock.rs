//! Lock acquire + release through the handle against the same two scripts sent with fred
//! direct (`EVALSHA`), same private server, same run, 64 tasks each on its own lock name.
//! Prints `ratio lock_acquire_release_c64 <ours/direct throughput>`.
//!
//! `cargo bench --bench lock` (release build).

use std::sync::Arc;
use std::time::{Duration, Instant};

use forze_redis::connection::RedisConnection;
use forze_redis::error::Access;
use forze_redis::lock::LockId;
use forze_redis::scripts::{LOCK_ACQUIRE, LOCK_RELEASE};
use forze_redis::Config;
use forze_redis_actors::Forze;
use forze_redis_testkit::{server_binaries, ServerKind, TestServer};
use fred::interfaces::{ClientLike, LuaInterface};

const ROUNDS: usize = 5;
const TASKS: usize = 64;
const PER_TASK: usize = 400;

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
        "[redis]\nurl = \"{}\"\npool_size = 4\n[locks.bench]\nlease = \"30s\"\n[supervision]\nname_prefix = \"bench\"",
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
    let lock = forze.lock("bench").expect("lock");
    let direct = fred::types::Builder::from_config(
        fred::types::config::Config::from_url(&server.url()).expect("url"),
    )
    .build_pool(4)
    .expect("pool");
    direct.init().await.expect("connect");
    // Load the scripts so the direct side's EVALSHA never misses.
    for s in [&*LOCK_ACQUIRE, &*LOCK_RELEASE] {
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
    let names: Arc<Vec<LockId>> = Arc::new(
        (0..TASKS)
            .map(|t| LockId::new(format!("ours{t}")))
            .collect(),
    );

    let (mut ours, mut theirs, mut same) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let (l, n) = (lock.clone(), names.clone());
        ours.push(
            throughput(move |t, _| {
                let (l, n) = (l.clone(), n.clone());
                async move {
                    let g = l.try_acquire(&n[t]).await.expect("acquire").expect("free");
                    assert!(g.release().await.expect("release"));
                }
            })
            .await,
        );
        let d = direct.clone();
        theirs.push(
            throughput(move |t, i| {
                let d = d.clone();
                async move {
                    let key = format!("forze:lock:{{direct:_:d{t}}}");
                    let owner = format!("owner-{t}-{i}");
                    let r: Vec<i64> = d
                        .next()
                        .evalsha(
                            LOCK_ACQUIRE.sha1(),
                            vec![key.clone(), format!("{key}:fence")],
                            vec![owner.clone(), "30000".to_string()],
                        )
                        .await
                        .expect("acquire");
                    assert_eq!(r[0], 1);
                    let n: i64 = d
                        .next()
                        .evalsha(LOCK_RELEASE.sha1(), vec![key], vec![owner])
                        .await
                        .expect("release");
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
                    let key = format!("forze:lock:{{same:_:s{t}}}");
                    let owner = format!("owner-{t}-{i}");
                    let r: Vec<i64> = sf
                        .eval(
                            "bench",
                            Access::Write,
                            &LOCK_ACQUIRE,
                            vec![key.clone(), format!("{key}:fence")],
                            vec![owner.clone(), "30000".to_string()],
                        )
                        .await
                        .expect("acquire");
                    assert_eq!(r[0], 1);
                    let n: i64 = sf
                        .eval(
                            "bench",
                            Access::Write,
                            &LOCK_RELEASE,
                            vec![key],
                            vec![owner],
                        )
                        .await
                        .expect("release");
                    assert_eq!(n, 1);
                }
            })
            .await,
        );
    }
    let (o, t, s) = (median(ours), median(theirs), median(same));
    println!(
        "lock_acquire_release_c64: ours {o:.0} pairs/s, fred EVALSHA direct {t:.0} pairs/s, \
         fred with our settings {s:.0} pairs/s"
    );
    println!("ratio lock_acquire_release_c64 {:.3}", o / t);
    println!(
        "ratio lock_acquire_release_c64_vs_fred_same_settings {:.3}",
        o / s
    );
    let _ = direct.quit().await;
    forze.shutdown().await.expect("shutdown");
}

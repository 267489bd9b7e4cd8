//! Counter increments through our handle against fred `INCRBY` direct, same private server,
//! same run, at 1 and 64 concurrent callers. Prints `ratio <name> <ours/direct throughput>`.
//!
//! `cargo bench --bench counter` (release build).

use std::sync::Arc;
use std::time::{Duration, Instant};

use forze_redis::counter::CounterId;
use forze_redis::Config;
use forze_redis_actors::Forze;
use forze_redis_testkit::{server_binaries, ServerKind, TestServer};
use fred::interfaces::{ClientLike, KeysInterface};

const OPS_PER_ROUND: usize = 40_000;
const ROUNDS: usize = 3;

async fn throughput<F, Fut>(callers: usize, op: F) -> f64
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let per_caller = OPS_PER_ROUND / callers;
    let started = Instant::now();
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let op = op.clone();
            tokio::spawn(async move {
                for _ in 0..per_caller {
                    op().await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("bench task");
    }
    (per_caller * callers) as f64 / started.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
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
        "[redis]\nurl = \"{}\"\npool_size = 4\n[counters.bench]\n[supervision]\nname_prefix = \"bench\"",
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
    let counter = forze.counter("bench").expect("counter");

    let direct = fred::types::Builder::from_config(
        fred::types::config::Config::from_url(&server.url()).expect("url"),
    )
    .build_pool(4)
    .expect("pool");
    direct.init().await.expect("direct connect");

    for callers in [1usize, 64] {
        let mut ours = Vec::new();
        let mut theirs = Vec::new();
        for _ in 0..ROUNDS {
            let c = counter.clone();
            ours.push(
                throughput(callers, move || {
                    let c = c.clone();
                    async move {
                        c.incr(&CounterId::suffix("ours"), 1).await.expect("incr");
                    }
                })
                .await,
            );
            let d = direct.clone();
            theirs.push(
                throughput(callers, move || {
                    let d = d.clone();
                    async move {
                        let _: i64 = d.incr_by("direct", 1).await.expect("incrby");
                    }
                })
                .await,
            );
        }
        let (o, t) = (median(ours), median(theirs));
        println!("counter_incr_c{callers}: ours {o:.0} ops/s, fred direct {t:.0} ops/s");
        println!("ratio counter_incr_c{callers} {:.3}", o / t);
    }
    let _ = direct.quit().await;
    forze.shutdown().await.expect("shutdown");
}

//! Snapshot pages of 100 ids through the handle against the read the storage uses (the
//! `snap_page` script) sent with fred direct, same private server, same run, 64 tasks.
//! Prints `ratio snapshot_page_c64 <ours/direct throughput>`.
//!
//! `cargo bench --bench snapshot` (release build).

use std::sync::Arc;
use std::time::{Duration, Instant};

use forze_redis::connection::RedisConnection;
use forze_redis::error::Access;
use forze_redis::scripts::SNAP_PAGE;
use forze_redis::snapshot::RunId;
use forze_redis::Config;
use forze_redis_actors::Forze;
use forze_redis_testkit::{server_binaries, ServerKind, TestServer};
use fred::interfaces::{ClientLike, LuaInterface};
use fred::types::Value;

const ROUNDS: usize = 5;
const TASKS: usize = 64;
const PER_TASK: usize = 500;
const IDS: u64 = 50_000;

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

/// The page offset of call `i` of task `t`: spread over the run.
fn offset(t: usize, i: usize) -> u64 {
    ((t * 7919 + i * 104_729) as u64 % (IDS - 100)) / 100 * 100
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
        "[redis]\nurl = \"{}\"\npool_size = 4\n[snapshots.bench]\nttl = \"10m\"\n[supervision]\nname_prefix = \"bench\"",
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
    let snaps = forze.snapshots("bench").expect("snapshots");
    let ids: Vec<String> = (0..IDS).map(|i| format!("doc-{i:08}")).collect();
    snaps
        .put(&RunId::new("run"), "fp", &ids)
        .await
        .expect("put");
    let (meta, list) = ("forze:snap:{bench:_:run}", "forze:snap:{bench:_:run}:ids");

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
    let args = |t, i| {
        vec![
            offset(t, i).to_string(),
            "100".to_string(),
            "fp".to_string(),
            "0".to_string(),
        ]
    };

    let (mut ours, mut theirs, mut same) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let s = snaps.clone();
        ours.push(
            throughput(move |t, i| {
                let s = s.clone();
                async move {
                    let page = s
                        .page(&RunId::new("run"), offset(t, i), 100, Some("fp"))
                        .await
                        .expect("page")
                        .expect("complete");
                    assert_eq!(page.len(), 100);
                }
            })
            .await,
        );
        let d = direct.clone();
        theirs.push(
            throughput(move |t, i| {
                let d = d.clone();
                async move {
                    let r: Vec<Value> = d
                        .next()
                        .evalsha(SNAP_PAGE.sha1(), vec![meta, list], args(t, i))
                        .await
                        .expect("page");
                    assert_eq!(r.len(), 101);
                }
            })
            .await,
        );
        let sf = safe.clone();
        same.push(
            throughput(move |t, i| {
                let sf = sf.clone();
                async move {
                    let r: Vec<Value> = sf
                        .eval(
                            "bench",
                            Access::Write,
                            &SNAP_PAGE,
                            vec![meta, list],
                            args(t, i),
                        )
                        .await
                        .expect("page");
                    assert_eq!(r.len(), 101);
                }
            })
            .await,
        );
    }
    let (o, t, s) = (median(ours), median(theirs), median(same));
    println!(
        "snapshot_page_c64: ours {o:.0} pages/s, fred EVALSHA direct {t:.0} pages/s, \
         fred with our settings {s:.0} pages/s"
    );
    println!("ratio snapshot_page_c64 {:.3}", o / t);
    println!("ratio snapshot_page_c64_vs_fred_same_settings {:.3}", o / s);
    let _ = direct.quit().await;
    forze.shutdown().await.expect("shutdown");
}

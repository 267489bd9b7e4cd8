//! Counter increments through our handle against fred `INCRBY` direct, same private server,
//! same run: 1 caller, 64 callers each on its own counter (`counter_incr_c64`), and 64
//! callers on one counter (`counter_incr_hot_c64`, where ours coalesces). Prints
//! `ratio <name> <ours/direct throughput>`.
//!
//! `cargo bench --bench counter` (release build).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use forze_redis::connection::RedisConnection;
use forze_redis::counter::CounterId;
use forze_redis::error::Access;
use forze_redis::Config;
use forze_redis_actors::Forze;
use forze_redis_testkit::{server_binaries, ServerKind, TestServer};
use fred::interfaces::{ClientLike, KeysInterface};

/// Calls per round; under `cargo test` (no `--bench`), a quick pass that only checks it runs.
fn ops_per_round() -> usize {
    if std::env::args().any(|a| a == "--bench") {
        40_000
    } else {
        2_048
    }
}
/// Rounds per comparison; ours and direct alternate, and the median of each is compared.
const ROUNDS: usize = 5;

/// [`ops_per_round`] calls of `op(caller)` spread over `callers` tasks; calls per second.
async fn throughput<F, Fut>(callers: usize, op: F) -> f64
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let per_caller = ops_per_round() / callers;
    let started = Instant::now();
    let tasks: Vec<_> = (0..callers)
        .map(|caller| {
            let op = op.clone();
            tokio::spawn(async move {
                for _ in 0..per_caller {
                    op(caller).await;
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
        "[redis]\nurl = \"{}\"\npool_size = 4\n[counters.bench]\n[counters.plain]\ncoalesce = false\n[supervision]\nname_prefix = \"bench\"",
        server.url()
    ))
    .expect("config");
    common::install_metrics_recorder();
    let (forze, _join) = Forze::spawn(config).await.expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(10);
    while forze.health().state != forze_redis::connection::HealthState::Up
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let counter = forze.counter("bench").expect("counter");
    // The same without coalescing: what coalescing costs where there is nothing to share.
    let plain = forze.counter("plain").expect("counter");

    let direct = fred::types::Builder::from_config(
        fred::types::config::Config::from_url(&server.url()).expect("url"),
    )
    .build_pool(4)
    .expect("pool");
    direct.init().await.expect("direct connect");

    // fred direct on a pool built with our connection settings (per-command timeout,
    // unresponsive-connection detection, keepalive, one attempt per write): separates the
    // cost of those safety settings, which bare fred lacks, from the cost of our code.
    let safe_settings = |nodelay: bool| {
        let mut redis = Config::from_toml_str(&format!(
            "[redis]\nurl = \"{}\"\npool_size = 4",
            server.url()
        ))
        .expect("config")
        .redis
        .expect("redis");
        redis.tcp_nodelay = nodelay;
        Arc::new(RedisConnection::build(&redis).expect("pool"))
    };
    let safe = safe_settings(false);
    safe.pool().init().await.expect("safe connect");
    let safe_incr = |t: Arc<RedisConnection>, key: Arc<str>| async move {
        let c = t.client("bench").expect("connected");
        let _: i64 = c
            .with_options(t.options(Access::Write))
            .incr_by(&*key, 1)
            .await
            .expect("incrby");
    };
    // Each caller's own counter, named before the clock starts.
    let names = |side: &str, callers: usize| -> Arc<Vec<Arc<str>>> {
        Arc::new((0..callers).map(|i| format!("{side}:{i}").into()).collect())
    };
    let all_ids: Arc<Vec<CounterId>> = Arc::new(
        (0..64)
            .map(|i| CounterId::suffix(format!("ours{i}")))
            .collect(),
    );

    // Diagnostic: the same with TCP_NODELAY, to show what the `tcp_nodelay` default buys.
    let nodelay = safe_settings(true);
    nodelay.pool().init().await.expect("nodelay connect");
    let n = nodelay.clone();
    let keys = names("nodelay", 64);
    let v = throughput(64, move |i| safe_incr(n.clone(), keys[i].clone())).await;
    println!("info fred_with_our_settings_and_nodelay_c64 {v:.0} ops/s");
    let _ = nodelay.pool().quit().await;

    // (name, callers, whether they share one counter)
    for (name, callers, hot) in [
        ("counter_incr_c1", 1usize, false),
        ("counter_incr_c64", 64, false),
        ("counter_incr_hot_c64", 64, true),
    ] {
        let key = move |i: usize| if hot { 0 } else { i };
        let (mut ours, mut theirs, mut same) = (Vec::new(), Vec::new(), Vec::new());
        let mut uncoalesced = Vec::new();
        let (direct_keys, safe_keys) = (names("direct", 64), names("safe", 64));
        // Interleaved rounds, so drift on the machine hits every side alike.
        for _ in 0..ROUNDS {
            let (c, ids) = (counter.clone(), all_ids.clone());
            ours.push(
                throughput(callers, move |i| {
                    let (c, ids) = (c.clone(), ids.clone());
                    async move {
                        c.incr(&ids[key(i)], 1).await.expect("incr");
                    }
                })
                .await,
            );
            let (c, ids) = (plain.clone(), all_ids.clone());
            uncoalesced.push(
                throughput(callers, move |i| {
                    let (c, ids) = (c.clone(), ids.clone());
                    async move {
                        c.incr(&ids[key(i)], 1).await.expect("incr");
                    }
                })
                .await,
            );
            let (d, keys) = (direct.clone(), direct_keys.clone());
            theirs.push(
                throughput(callers, move |i| {
                    let (d, keys) = (d.clone(), keys.clone());
                    async move {
                        let _: i64 = d.incr_by(&*keys[key(i)], 1).await.expect("incrby");
                    }
                })
                .await,
            );
            let (s, keys) = (safe.clone(), safe_keys.clone());
            same.push(
                throughput(callers, move |i| safe_incr(s.clone(), keys[key(i)].clone())).await,
            );
        }
        let (o, t, s) = (median(ours), median(theirs), median(same));
        let u = median(uncoalesced);
        println!(
            "{name}: ours {o:.0} ops/s, ours with coalesce = false {u:.0} ops/s, \
             fred direct {t:.0} ops/s, fred with our settings {s:.0} ops/s"
        );
        println!("info {name}_coalesced_vs_not {:.3}", o / u);
        println!("ratio {name} {:.3}", o / t);
        println!("ratio {name}_vs_fred_same_settings {:.3}", o / s);
    }
    let _ = safe.pool().quit().await;
    let _ = direct.quit().await;
    forze.shutdown().await.expect("shutdown");
    observe_overhead();
}

/// What observing one operation costs by itself (its span not wanted by any subscriber; with
/// the `metrics` feature, its count and latency recorded by the installed recorder): an
/// operation that completes at once, observed, against the same operation bare, in ns per
/// call. `rate telemetry_observe_ns` is the difference; `scripts/bench-metrics.sh` compares it
/// between the builds with and without the feature.
fn observe_overhead() {
    use futures::FutureExt;
    use std::hint::black_box;
    // Under `cargo test` (no `--bench`), a quick pass that only checks it runs.
    let calls: u32 = if std::env::args().any(|a| a == "--bench") {
        2_000_000
    } else {
        20_000
    };
    let t = forze_redis::telemetry::Telemetry::new("bench", "counter", "bench", "bench", None);
    let (mut observed, mut bare) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let started = Instant::now();
        for i in 0..calls {
            let op = async move { Ok::<u32, forze_redis::Error>(black_box(i)) };
            black_box(t.observe("counter.incr", op, |_| "ok").now_or_never());
        }
        observed.push(started.elapsed().as_nanos() as f64 / f64::from(calls));
        let started = Instant::now();
        for i in 0..calls {
            let op = async move { Ok::<u32, forze_redis::Error>(black_box(i)) };
            black_box(op.now_or_never());
        }
        bare.push(started.elapsed().as_nanos() as f64 / f64::from(calls));
    }
    let (o, b) = (common::median(observed), common::median(bare));
    println!("telemetry_observe: observed {o:.1} ns/call, bare {b:.1} ns/call");
    println!("rate telemetry_observe_ns {:.1}", o - b);
}

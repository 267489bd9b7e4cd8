//! Client CPU per call: the process's CPU time per operation of ours against fred with our
//! connection settings, same private server, same run, 64 callers each on its own key.
//!
//! Throughput at 64 callers swings by a tenth or more between rounds on a small machine; the
//! CPU this process spends per call is a second view of the same cost, less tied to how long
//! each round waited on the server (it still moves with how many commands share a write, so
//! read it over several runs). Both sides run interleaved, round by round, and each
//! comparison is the median of the per-round ratios:
//! `ratio client_cpu_<contract>_c64_vs_fred_same_settings <fred CPU / our CPU per call>`
//! (1.0: we cost no more than the driver; 0.8: each call costs us a quarter more).
//!
//! `cargo bench --bench client_cpu` (release build). To profile one side alone (for
//! `perf record`, comparing the two profiles' sample counts per symbol), set
//! `PROFILE_SIDE=ours` or `fred` and `PROFILE_NAME` to a comparison's name or prefix
//! (`cache`, `counter`, `ratelimit`, `lock`, `idempotency`): that side runs for three times
//! the rounds, nothing else runs, and the process ends (stopping its server).
//! `CLIENT_CPU_ONLY=<prefix>` runs only the measurements whose names start with it.
//!
//! Last, our layer without a driver (embedded mode, process-local state), in calls per
//! second: `info counter_incr_embedded_c64` and `info lock_acquire_release_embedded_c64`; and
//! the bytes of a call's future (`info future_bytes`).

mod common;

use std::future::Future;
use std::hint::black_box;
use std::sync::Arc;

use bytes::Bytes;
use forze_redis::counter::CounterId;
use forze_redis::error::Access;
use forze_redis::lock::LockId;
use forze_redis_actors::{Begin, CacheKey, IdemRequest};
use fred::interfaces::{ClientLike, KeysInterface};
use fred::types::Value;

/// Calls per round; under `cargo test` (no `--bench`), a quick pass that only checks it runs.
fn calls_per_round() -> usize {
    if std::env::args().any(|a| a == "--bench") {
        128_000
    } else {
        2_048
    }
}

/// Rounds per comparison (ours and fred alternate, and which goes first alternates too).
const ROUNDS: usize = 9;

/// A number no other call of this run has had (fresh idempotency keys).
fn next() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// CPU time this process has used so far, in nanoseconds, from `/proc/self/stat` (user and
/// system time of every thread, in clock ticks of 10 ms: a round is long enough for that).
fn process_cpu_ns() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // The fields after the command name, which is in parentheses and may hold spaces.
    let after = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let ticks: f64 =
        fields[11].parse::<f64>().expect("utime") + fields[12].parse::<f64>().expect("stime");
    ticks * 1e7
}

/// CPU nanoseconds per call of `op(task)` over [`calls_per_round`] calls on
/// [`common::TASKS`] tasks.
async fn cpu_per_call<F, Fut>(op: F) -> f64
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    let per_task = calls_per_round() / common::TASKS;
    let before = process_cpu_ns();
    common::throughput(per_task, move |t, _| op(t)).await;
    (process_cpu_ns() - before) / (per_task * common::TASKS) as f64
}

/// Whether the measurement `name` runs: all of them, or those whose name starts with
/// `CLIENT_CPU_ONLY` when it is set (to measure one contract across builds quickly); while
/// profiling one side, only the comparisons named by `PROFILE_NAME`.
fn wanted(name: &str) -> bool {
    if std::env::var_os("PROFILE_SIDE").is_some() {
        return name.starts_with(&std::env::var("PROFILE_NAME").unwrap_or_default());
    }
    std::env::var("CLIENT_CPU_ONLY").map_or(true, |only| name.starts_with(&only))
}

/// Run both sides for [`ROUNDS`] rounds and print the comparison of `name`.
async fn compare<O, OF, F, FF>(name: &str, ours: O, fred: F)
where
    O: Fn(usize) -> OF + Send + Sync + Clone + 'static,
    OF: Future<Output = ()> + Send,
    F: Fn(usize) -> FF + Send + Sync + Clone + 'static,
    FF: Future<Output = ()> + Send,
{
    if !wanted(name) {
        return;
    }
    // For a profiler: one side of one comparison, three times as many rounds. The process
    // ends as usual afterwards (its server stopped with it), running nothing else.
    if let Ok(side) = std::env::var("PROFILE_SIDE") {
        for _ in 0..ROUNDS * 3 {
            let v = if side == "ours" {
                cpu_per_call(ours.clone()).await
            } else {
                cpu_per_call(fred.clone()).await
            };
            println!("{name} {side} {v:.0}");
        }
        return;
    }
    let (mut o, mut f, mut paired) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let (a, b) = if round % 2 == 0 {
            let a = cpu_per_call(ours.clone()).await;
            (a, cpu_per_call(fred.clone()).await)
        } else {
            let b = cpu_per_call(fred.clone()).await;
            (cpu_per_call(ours.clone()).await, b)
        };
        o.push(a);
        f.push(b);
        paired.push(b / a);
    }
    let (lo, hi) = paired
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), &r| (lo.min(r), hi.max(r)));
    println!(
        "{name}: ours {:.0} ns of CPU per call, fred with our settings {:.0} ns \
         (paired rounds {lo:.3}-{hi:.3})",
        common::median(o),
        common::median(f),
    );
    println!(
        "ratio client_cpu_{name}_vs_fred_same_settings {:.3}",
        common::median(paired)
    );
}

#[tokio::main]
async fn main() {
    let server = common::server();
    common::install_metrics_recorder();
    let forze = common::spawn(
        &server.url(),
        "[counters.bench]\n[caches.remote]\nttl = \"60s\"\n\
         [rate_limits.bench]\npermits = 100000000\nper = \"1s\"\n[idempotency.bench]\n\
         [locks.bench]\nlease = \"30s\"",
    )
    .await;
    let safe = common::same_settings_pool(&server.url()).await;

    // Counters: INCRBY, each caller on its own counter.
    let counter = forze.counter("bench").expect("counter");
    let ids: Arc<Vec<CounterId>> = Arc::new(
        (0..common::TASKS)
            .map(|i| CounterId::suffix(format!("c{i}")))
            .collect(),
    );
    let keys: Arc<Vec<Arc<str>>> = Arc::new(
        (0..common::TASKS)
            .map(|i| format!("bench:fred:c{i}").into())
            .collect(),
    );
    let ours = move |t: usize| {
        let (c, ids) = (counter.clone(), ids.clone());
        async move {
            black_box(c.incr(&ids[t], 1).await.expect("incr"));
        }
    };
    let s = safe.clone();
    let k = keys.clone();
    let fred = move |t: usize| {
        let (s, k) = (s.clone(), k.clone());
        async move {
            let c = s.client("bench").expect("connected");
            let v: i64 = c
                .with_options(s.options(Access::Write))
                .incr_by(&*k[t], 1)
                .await
                .expect("incrby");
            black_box(v);
        }
    };
    compare("counter_incr_c64", ours, fred).await;

    // Cache reads without an L1: GET, each caller on its own stored key.
    let remote = forze.cache("remote").expect("cache");
    let value = vec![7u8; 64];
    let cache_keys: Arc<Vec<CacheKey>> = Arc::new(
        (0..common::TASKS)
            .map(|i| CacheKey::new(format!("r{i}")))
            .collect(),
    );
    let redis_keys: Arc<Vec<String>> = Arc::new(
        (0..common::TASKS)
            .map(|i| format!("bench:fred:r{i}"))
            .collect(),
    );
    let c = safe.client("bench").expect("connected");
    for (key, rkey) in cache_keys.iter().zip(redis_keys.iter()) {
        remote.set_bytes(key, &value, None).await.expect("set");
        let _: () = c
            .set(rkey.as_str(), Bytes::from(value.clone()), None, None, false)
            .await
            .expect("set");
    }
    let ours = move |t: usize| {
        let (c, keys) = (remote.clone(), cache_keys.clone());
        async move {
            black_box(c.get_bytes(&keys[t]).await.expect("get"));
        }
    };
    let s = safe.clone();
    let fred = move |t: usize| {
        let (s, k) = (s.clone(), redis_keys.clone());
        async move {
            let c = s.client("bench").expect("connected");
            let v: Option<Bytes> = c
                .with_options(s.options(Access::Read))
                .get(&k[t])
                .await
                .expect("get");
            black_box(v);
        }
    };
    compare("cache_get_remote_c64", ours, fred).await;

    // Rate-limit decisions: the token-bucket script, each caller on its own route; fred with
    // our settings sends the same script with the arguments the handle sends for this policy.
    let limiter = forze.rate_limit("bench").expect("rate limit");
    let routes: Arc<Vec<String>> = Arc::new((0..common::TASKS).map(|i| format!("r{i}")).collect());
    let ours = move |t: usize| {
        let (l, routes) = (limiter.clone(), routes.clone());
        async move {
            black_box(l.try_acquire(&routes[t], 1).await.expect("decision"));
        }
    };
    let s = safe.clone();
    let route_keys: Arc<Vec<String>> = Arc::new(
        (0..common::TASKS)
            .map(|i| format!("bench:fred:{{r{i}}}"))
            .collect(),
    );
    let fred = move |t: usize| {
        let (s, keys) = (s.clone(), route_keys.clone());
        async move {
            let key = keys[t].as_str();
            let r: Vec<i64> = s
                .eval(
                    "bench",
                    Access::Write,
                    &forze_redis::scripts::RATELIMIT_ACQUIRE,
                    &[key],
                    &[
                        Value::from("100000000/1000"),
                        Value::from("100000000"),
                        Value::Integer(1),
                        Value::from("2000"),
                        Value::Integer(0),
                    ],
                )
                .await
                .expect("decision");
            black_box(r);
        }
    };
    compare("ratelimit_try_acquire_c64", ours, fred).await;

    // Lock acquire + release, each caller on its own lock; fred with our settings sends the
    // same two scripts (acquire with the fence key, release compared on the owner).
    let lock = forze.lock("bench").expect("lock");
    let lock_ids: Arc<Vec<LockId>> = Arc::new(
        (0..common::TASKS)
            .map(|t| LockId::new(format!("l{t}")))
            .collect(),
    );
    let ours = move |t: usize| {
        let (l, ids) = (lock.clone(), lock_ids.clone());
        async move { common::lock_pair(&l, &ids[t]).await }
    };
    let s = safe.clone();
    let fred = move |t: usize| {
        let s = s.clone();
        async move {
            let key = format!("forze:lock:{{fred:_:l{t}}}");
            let owner = format!("{:016x}-{}", 0x5eed_u64, next());
            common::lock_pair_same_settings(&s, &key, &owner).await;
        }
    };
    compare("lock_acquire_release_c64", ours, fred).await;

    // Idempotency begin + commit on a fresh key per call; fred with our settings sends the same
    // two scripts with the arguments the handle sends (its key is built the same way, less the
    // digest of the caller's key, and its owner is the same shape).
    let idem = forze.idempotency("bench").expect("idempotency");
    let ours = move |t: usize| {
        let h = idem.clone();
        async move {
            let req = IdemRequest::new("bench", format!("k-{t}-{}", next()), "ph");
            let Begin::Proceed(claim) = h.begin(&req).await.expect("begin") else {
                panic!("a fresh key replayed");
            };
            h.commit(&claim, b"result").await.expect("commit");
        }
    };
    let s = safe.clone();
    let fred = move |t: usize| {
        let s = s.clone();
        async move {
            let n = next();
            let key = format!("bench:fred:idem:{{bench:k-{t}-{n}}}");
            let owner = format!("{:016x}-{n}", 0x5eed_u64);
            common::idempotency_pair_same_settings(&s, &key, &owner).await;
        }
    };
    compare("idempotency_begin_commit_c64", ours, fred).await;

    forze.shutdown().await.expect("shutdown");

    // Our layer alone: the same increments in embedded mode (process-local state, no
    // driver), so what each call costs in our code is most of what is measured.
    let embedded = common::spawn_config(
        forze_redis::Config::from_toml_str(
            "mode = \"embedded\"\n[counters.bench]\n[locks.bench]\n[supervision]\nname_prefix = \"bench-local\"",
        )
        .expect("config"),
    )
    .await;
    // What each call's future occupies in its caller's task (every await layer, with the
    // driver's command future in a pooled block of its own): a poll touches it, and a call
    // builds and moves it.
    if wanted("future_bytes") {
        let counter = embedded.counter("bench").expect("counter");
        let lock = embedded.lock("bench").expect("lock");
        let id = CounterId::suffix("c");
        let lock_id = LockId::new("l");
        println!(
            "info future_bytes counter.incr {} lock.try_acquire {}",
            std::mem::size_of_val(&counter.incr(&id, 1)),
            std::mem::size_of_val(&lock.try_acquire(&lock_id)),
        );
    }
    if wanted("counter_incr_embedded") {
        let counter = embedded.counter("bench").expect("counter");
        let ids: Arc<Vec<CounterId>> = Arc::new(
            (0..common::TASKS)
                .map(|i| CounterId::suffix(format!("c{i}")))
                .collect(),
        );
        let rate = embedded_rate(move |t| {
            let (c, ids) = (counter.clone(), ids.clone());
            async move {
                black_box(c.incr(&ids[t], 1).await.expect("incr"));
            }
        })
        .await;
        println!("info counter_incr_embedded_c64 {rate:.0} ops/s (our layer without a driver)");
    }
    if wanted("lock_acquire_release_embedded") {
        let lock = embedded.lock("bench").expect("lock");
        let ids: Arc<Vec<LockId>> = Arc::new(
            (0..common::TASKS)
                .map(|t| LockId::new(format!("l{t}")))
                .collect(),
        );
        let rate = embedded_rate(move |t| {
            let (l, ids) = (lock.clone(), ids.clone());
            async move { common::lock_pair(&l, &ids[t]).await }
        })
        .await;
        println!(
            "info lock_acquire_release_embedded_c64 {rate:.0} pairs/s (our layer without a driver)"
        );
    }
    embedded.shutdown().await.expect("shutdown");
}

/// The median over [`ROUNDS`] of `op`'s calls per second on [`common::TASKS`] tasks, with
/// twenty times the calls of a remote round (a local call is that much cheaper).
async fn embedded_rate<F, Fut>(op: F) -> f64
where
    F: Fn(usize) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = ()> + Send,
{
    let mut rates = Vec::new();
    for _ in 0..ROUNDS {
        let op = op.clone();
        rates.push(
            common::throughput(20 * calls_per_round() / common::TASKS, move |t, _| op(t)).await,
        );
    }
    common::median(rates)
}

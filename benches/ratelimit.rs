//! Rate-limit decisions through the handle against the same script sent with fred direct,
//! same private server, same run, 64 tasks (each on its own route; the bucket is large, so
//! both sides decide "allowed" and do the same work).
//! Prints `ratio ratelimit_try_acquire_c64 <ours/direct throughput>`,
//! `ratio ratelimit_hot_c64` (64 tasks on one route: ours decides the requests that arrive
//! while one is in flight with one script call, bare fred sends one per decision), and
//! `rate breaker_admit_closed_cached <decisions/s>`: breaker admissions served from the
//! replica's closed-state cache, one task (target at least 1 000 000).
//!
//! `cargo bench --bench ratelimit` (release build).

mod common;

use std::sync::Arc;
use std::time::Instant;

use forze_redis::error::Access;
use forze_redis::scripts::RATELIMIT_ACQUIRE;
use fred::interfaces::{ClientLike, LuaInterface};
use fred::types::Value;

const PER_TASK: usize = 500;

#[tokio::main]
async fn main() {
    let server = common::server();
    let forze = common::spawn(&server.url(), "[rate_limits.bench]\npermits = 100000000\nper = \"1s\"\n[breakers.bench]\nclosed_cache_ttl = \"10s\"").await;
    let rl = forze.rate_limit("bench").expect("rate limit");
    let direct = common::direct_pool(&server.url()).await;
    let safe = common::same_settings_pool(&server.url()).await;
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
        (0..common::TASKS)
            .map(|t| format!("forze:ratelimit:{{direct:_:r{t}}}"))
            .collect(),
    );
    let (mut ours, mut theirs, mut same) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..common::ROUNDS {
        let r = rl.clone();
        ours.push(
            common::throughput(PER_TASK, move |t, _| {
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
            common::throughput(PER_TASK, move |t, i| {
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
            common::throughput(PER_TASK, move |t, i| {
                let (sf, k) = (sf.clone(), k.clone());
                async move {
                    let r: Vec<Value> = sf
                        .eval(
                            "bench",
                            Access::Write,
                            &RATELIMIT_ACQUIRE,
                            &[k[t].as_str()],
                            &args(t, i).into_iter().map(Value::from).collect::<Vec<_>>(),
                        )
                        .await
                        .expect("decision");
                    assert_eq!(r[0].as_i64(), Some(1));
                }
            })
            .await,
        );
    }
    common::report(
        "ratelimit_try_acquire_c64",
        "decisions/s",
        ours,
        theirs,
        same,
    );

    // 64 callers on one route: ours decides the requests that arrive while one is in flight
    // with one script call; bare fred sends the same script once per decision.
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    let hot_key = vec!["forze:ratelimit:{direct:_:hot}".to_string()];
    for _ in 0..common::ROUNDS {
        let r = rl.clone();
        ours.push(
            common::throughput(PER_TASK, move |_, _| {
                let r = r.clone();
                async move {
                    let d = r.try_acquire("hot", 1).await.expect("decision");
                    assert!(d.allowed);
                }
            })
            .await,
        );
        let (d, k) = (direct.clone(), hot_key.clone());
        theirs.push(
            common::throughput(PER_TASK, move |t, i| {
                let (d, k) = (d.clone(), k.clone());
                async move {
                    let r: Vec<Value> = d
                        .next()
                        .evalsha(RATELIMIT_ACQUIRE.sha1(), k, args(t, i))
                        .await
                        .expect("decision");
                    assert_eq!(r[0].as_i64(), Some(1));
                }
            })
            .await,
        );
    }
    let (o, t) = (common::median(ours), common::median(theirs));
    println!("ratelimit_hot_c64: ours {o:.0} decisions/s, fred EVALSHA direct {t:.0} decisions/s");
    println!("ratio ratelimit_hot_c64 {:.3}", o / t);

    // Breaker admissions while closed and cached: no I/O, one task.
    let breaker = forze.breaker("bench").expect("breaker");
    assert!(breaker.admit("svc").await.expect("admit").allowed);
    const ADMITS: usize = 2_000_000;
    let mut rates = Vec::new();
    for _ in 0..common::ROUNDS {
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
    println!(
        "rate breaker_admit_closed_cached {:.0}",
        common::median(rates)
    );
    let _ = direct.quit().await;
    forze.shutdown().await.expect("shutdown");
}

//! Lock acquire + release through the handle against the same two scripts sent with fred
//! direct (`EVALSHA`), same private server, same run, 64 tasks each on its own lock name.
//! Prints `ratio lock_acquire_release_c64 <ours/direct throughput>`.
//!
//! Then the handover: a waiter on a second supervisor waits in `acquire` while the holder
//! releases after a random 5–30 ms; the time from the release's reply to the waiter's guard,
//! woken by the push (`wake_waiters`) against polling with the default backoff (20 ms doubling
//! to 200 ms), interleaved round by round. Prints p50 and p99 of each and
//! `ratio lock_handover_p99_woken_vs_polling <polling p99 / woken p99>`.
//!
//! `cargo bench --bench lock` (release build).

mod common;

use std::sync::Arc;

use forze_redis::lock::LockId;
use forze_redis::scripts::{LOCK_ACQUIRE, LOCK_RELEASE};
use fred::interfaces::{ClientLike, LuaInterface};
use fred::types::Value;

const PER_TASK: usize = 400;

#[tokio::main]
async fn main() {
    let server = common::server();
    let locks =
        "[locks.bench]\nlease = \"30s\"\n[locks.woken]\nwake_waiters = true\n[locks.polled]";
    let forze = common::spawn(&server.url(), locks).await;
    let lock = forze.lock("bench").expect("lock");
    let direct = common::direct_pool(&server.url()).await;
    // Load the scripts so the direct side's EVALSHA never misses.
    for s in [&*LOCK_ACQUIRE, &*LOCK_RELEASE] {
        let _: String = direct.next().script_load(s.source()).await.expect("load");
    }
    let safe = common::same_settings_pool(&server.url()).await;
    let names: Arc<Vec<LockId>> = Arc::new(
        (0..common::TASKS)
            .map(|t| LockId::new(format!("ours{t}")))
            .collect(),
    );

    let (mut ours, mut theirs, mut same) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..common::ROUNDS {
        let (l, n) = (lock.clone(), names.clone());
        ours.push(
            common::throughput(PER_TASK, move |t, _| {
                let (l, n) = (l.clone(), n.clone());
                async move { common::lock_pair(&l, &n[t]).await }
            })
            .await,
        );
        let d = direct.clone();
        theirs.push(
            common::throughput(PER_TASK, move |t, i| {
                let d = d.clone();
                async move {
                    let key = format!("forze:lock:{{direct:_:d{t}}}");
                    let owner = format!("owner-{t}-{i}");
                    let r: Vec<i64> = d
                        .next()
                        .evalsha(
                            LOCK_ACQUIRE.sha1(),
                            &[key.as_str(), &format!("{key}:fence")],
                            &[Value::from(owner.as_str()), Value::Integer(30_000)],
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
            common::throughput(PER_TASK, move |t, i| {
                let sf = sf.clone();
                async move {
                    let key = format!("forze:lock:{{same:_:s{t}}}");
                    let owner = format!("owner-{t}-{i}");
                    common::lock_pair_same_settings(&sf, &key, &owner).await;
                }
            })
            .await,
        );
    }
    common::report("lock_acquire_release_c64", "pairs/s", ours, theirs, same);
    handover(&server.url(), &forze, locks).await;
    let _ = direct.quit().await;
    forze.shutdown().await.expect("shutdown");
}

/// Handover latency, woken against polling, interleaved.
async fn handover(url: &str, holder: &forze_redis_actors::ForzeHandle, locks: &str) {
    // Under `cargo test` (no `--bench`), a quick pass that only checks it runs.
    let rounds = if std::env::args().any(|a| a == "--bench") {
        100
    } else {
        5
    };
    let config = forze_redis::Config::from_toml_str(&format!(
        "[redis]\nurl = \"{url}\"\n{locks}\n[supervision]\nname_prefix = \"bench-waiter\""
    ))
    .expect("config");
    let waiter = common::spawn_config(config).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !matches!(waiter.tracking_stats().await, Ok(Some(s)) if s.confirmed)
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let mut times: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for round in 0..rounds {
        for (i, name) in ["woken", "polled"].into_iter().enumerate() {
            let id = LockId::new(format!("h{round}"));
            let g = holder
                .lock(name)
                .unwrap()
                .try_acquire(&id)
                .await
                .unwrap()
                .unwrap();
            let w = waiter.lock(name).unwrap();
            let wid = id.clone();
            let task = tokio::spawn(async move {
                let g = w
                    .acquire(&wid, std::time::Duration::from_secs(10))
                    .await
                    .unwrap();
                let at = std::time::Instant::now();
                let _ = g.release().await;
                at
            });
            let hold = rand::random_range(5..=30);
            tokio::time::sleep(std::time::Duration::from_millis(hold)).await;
            assert!(g.release().await.unwrap());
            let released = std::time::Instant::now();
            let got = task.await.unwrap();
            times[i].push(got.saturating_duration_since(released).as_secs_f64() * 1e3);
        }
    }
    let pct = |v: &mut Vec<f64>, p: f64| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[((v.len() - 1) as f64 * p).round() as usize]
    };
    let (w50, w99) = (pct(&mut times[0], 0.5), pct(&mut times[0], 0.99));
    let (p50, p99) = (pct(&mut times[1], 0.5), pct(&mut times[1], 0.99));
    println!("lock_handover: woken p50 {w50:.2} ms p99 {w99:.2} ms; polling p50 {p50:.2} ms p99 {p99:.2} ms");
    println!(
        "ratio lock_handover_p99_woken_vs_polling {:.3}",
        p99 / w99.max(1e-3)
    );
    waiter.shutdown().await.expect("shutdown");
}

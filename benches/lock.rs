//! Lock acquire + release through the handle against the same two scripts sent with fred
//! direct (`EVALSHA`), same private server, same run, 64 tasks each on its own lock name.
//! Prints `ratio lock_acquire_release_c64 <ours/direct throughput>`.
//!
//! `cargo bench --bench lock` (release build).

mod common;

use std::sync::Arc;

use forze_redis::error::Access;
use forze_redis::lock::LockId;
use forze_redis::scripts::{LOCK_ACQUIRE, LOCK_RELEASE};
use fred::interfaces::{ClientLike, LuaInterface};

const PER_TASK: usize = 400;

#[tokio::main]
async fn main() {
    let server = common::server();
    let forze = common::spawn(&server.url(), "[locks.bench]\nlease = \"30s\"").await;
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
                async move {
                    let g = l.try_acquire(&n[t]).await.expect("acquire").expect("free");
                    assert!(g.release().await.expect("release"));
                }
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
            common::throughput(PER_TASK, move |t, i| {
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
    common::report("lock_acquire_release_c64", "pairs/s", ours, theirs, same);
    let _ = direct.quit().await;
    forze.shutdown().await.expect("shutdown");
}

//! Idempotency begin + commit through the handle against the same two scripts sent with fred
//! direct (`EVALSHA`), same private server, same run, 64 tasks, a fresh key per request.
//! Prints `ratio idempotency_begin_commit_c64 <ours/direct throughput>`.
//!
//! `cargo bench --bench idempotency` (release build).

mod common;

use forze_redis::idempotency::{Begin, IdemRequest};
use forze_redis::scripts::{IDEM_BEGIN, IDEM_COMMIT};
use fred::interfaces::{ClientLike, LuaInterface};
use fred::types::Value;

const PER_TASK: usize = 400;

/// Distinguishes the rounds, so every request of every round is fresh.
fn nonce() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static ROUND: AtomicU64 = AtomicU64::new(0);
    ROUND.fetch_add(1, Ordering::Relaxed)
}

#[tokio::main]
async fn main() {
    let server = common::server();
    let forze = common::spawn(&server.url(), "[idempotency.bench]").await;
    let idem = forze.idempotency("bench").expect("idempotency");
    let direct = common::direct_pool(&server.url()).await;
    // Load the scripts so the direct side's EVALSHA never misses.
    for s in [&*IDEM_BEGIN, &*IDEM_COMMIT] {
        let _: String = direct.next().script_load(s.source()).await.expect("load");
    }
    let safe = common::same_settings_pool(&server.url()).await;

    let (mut ours, mut theirs, mut same) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..common::ROUNDS {
        let h = idem.clone();
        ours.push(
            common::throughput(PER_TASK, move |t, i| {
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
            common::throughput(PER_TASK, move |t, i| {
                let d = d.clone();
                async move {
                    let key = format!("forze:idem:{{direct:_:bench:{t}-{i}-{}}}", nonce());
                    let owner = format!("owner-{t}-{i}");
                    let r: Vec<Value> = d
                        .next()
                        .evalsha(
                            IDEM_BEGIN.sha1(),
                            &[key.as_str()],
                            &common::idempotency_begin_args(&owner),
                        )
                        .await
                        .expect("begin");
                    assert_eq!(r[0].as_str().as_deref(), Some("proceed"));
                    let n: i64 = d
                        .next()
                        .evalsha(
                            IDEM_COMMIT.sha1(),
                            &[key.as_str()],
                            &common::idempotency_commit_args(&owner),
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
            common::throughput(PER_TASK, move |t, i| {
                let sf = sf.clone();
                async move {
                    let key = format!("forze:idem:{{same:_:bench:{t}-{i}-{}}}", nonce());
                    let owner = format!("owner-{t}-{i}");
                    common::idempotency_pair_same_settings(&sf, &key, &owner).await;
                }
            })
            .await,
        );
    }
    common::report(
        "idempotency_begin_commit_c64",
        "pairs/s",
        ours,
        theirs,
        same,
    );
    let _ = direct.quit().await;
    forze.shutdown().await.expect("shutdown");
}

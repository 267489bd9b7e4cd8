//! Snapshot pages of 100 ids through the handle against the read the storage uses (the
//! `snap_page` script) sent with fred direct, same private server, same run, 64 tasks.
//! Prints `ratio snapshot_page_c64 <ours/direct throughput>`.
//!
//! `cargo bench --bench snapshot` (release build).

mod common;

use forze_redis::error::Access;
use forze_redis::scripts::SNAP_PAGE;
use forze_redis::snapshot::RunId;
use fred::interfaces::{ClientLike, LuaInterface};
use fred::types::Value;

const PER_TASK: usize = 500;
const IDS: u64 = 50_000;

/// The page offset of call `i` of task `t`: spread over the run.
fn offset(t: usize, i: usize) -> u64 {
    ((t * 7919 + i * 104_729) as u64 % (IDS - 100)) / 100 * 100
}

#[tokio::main]
async fn main() {
    let server = common::server();
    let forze = common::spawn(&server.url(), "[snapshots.bench]\nttl = \"10m\"").await;
    let snaps = forze.snapshot("bench").expect("snapshots");
    let ids: Vec<String> = (0..IDS).map(|i| format!("doc-{i:08}")).collect();
    snaps
        .put(&RunId::new("run"), "fp", &ids)
        .await
        .expect("put");
    let (meta, list) = ("forze:snap:{bench:_:run}", "forze:snap:{bench:_:run}:ids");

    let direct = common::direct_pool(&server.url()).await;
    let safe = common::same_settings_pool(&server.url()).await;
    let args = |t, i| {
        vec![
            offset(t, i).to_string(),
            "100".to_string(),
            // The expected fingerprint, after the "=" that marks one as given.
            "=fp".to_string(),
            "0".to_string(),
        ]
    };

    let (mut ours, mut theirs, mut same) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..common::ROUNDS {
        let s = snaps.clone();
        ours.push(
            common::throughput(PER_TASK, move |t, i| {
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
            common::throughput(PER_TASK, move |t, i| {
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
            common::throughput(PER_TASK, move |t, i| {
                let sf = sf.clone();
                async move {
                    let r: Vec<Value> = sf
                        .eval(
                            "bench",
                            Access::Write,
                            &SNAP_PAGE,
                            &[meta, list],
                            &args(t, i).into_iter().map(Value::from).collect::<Vec<_>>(),
                        )
                        .await
                        .expect("page");
                    assert_eq!(r.len(), 101);
                }
            })
            .await,
        );
    }
    common::report("snapshot_page_c64", "pages/s", ours, theirs, same);
    let _ = direct.quit().await;
    forze.shutdown().await.expect("shutdown");
}

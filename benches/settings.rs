//! What each connection setting costs against bare fred, one at a time, and what our pool's
//! settings cost together: 64 callers reading 64 keys with `GET`, every variant on a pool of 4
//! clients of its own, all in the same rounds (release build).
//!
//! This is how a setting's price is found before choosing it: a per-command timeout (a tokio
//! timer per command), fred's unresponsive check (a timer re-armed on every turn of each
//! connection task; our pool runs its own check instead), `TCP_NODELAY` (off in our pool:
//! Nagle lets concurrent callers share a flush).
//!
//! `cargo bench --bench settings`. Prints `ratio settings_<variant>_vs_bare <value>` lines
//! (throughput of the variant over bare fred's; 1.0 costs nothing).

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use forze_redis::error::Access;
use fred::interfaces::{ClientLike, KeysInterface};
use fred::types::config::{Options, TcpConfig, UnresponsiveConfig};
use fred::types::Builder;

/// A fred pool of 4 clients on `url`, built with `configure`.
async fn pool(url: &str, configure: impl FnOnce(&mut Builder)) -> fred::clients::Pool {
    let mut builder =
        Builder::from_config(fred::types::config::Config::from_url(url).expect("url"));
    configure(&mut builder);
    let pool = builder.build_pool(4).expect("pool");
    pool.init().await.expect("connect");
    pool
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[tokio::main]
async fn main() {
    // Under `cargo test` (no `--bench`), a quick pass that only checks it runs.
    let (rounds, per_task) = if std::env::args().any(|a| a == "--bench") {
        (7, 3_000)
    } else {
        (1, 20)
    };
    let server = common::server();
    let url = server.url();
    let ours = common::same_settings_pool(&url).await;
    let variants: Vec<(&str, fred::clients::Pool, Option<Options>)> = vec![
        ("bare", pool(&url, |_| {}).await, None),
        (
            "fred_unresponsive_check",
            pool(&url, |b| {
                b.with_connection_config(|c| {
                    c.unresponsive = UnresponsiveConfig {
                        max_timeout: Some(Duration::from_secs(2)),
                        interval: Duration::from_millis(500),
                    }
                });
            })
            .await,
            None,
        ),
        (
            "per_command_timeout",
            pool(&url, |_| {}).await,
            Some(Options {
                timeout: Some(Duration::from_secs(1)),
                ..Default::default()
            }),
        ),
        (
            "nodelay",
            pool(&url, |b| {
                b.with_connection_config(|c| {
                    c.tcp = TcpConfig {
                        nodelay: Some(true),
                        ..Default::default()
                    }
                });
            })
            .await,
            None,
        ),
        (
            "our_pool",
            ours.pool().clone(),
            Some(ours.options(Access::Read).clone()),
        ),
    ];
    let names: Arc<Vec<String>> = Arc::new((0..common::TASKS).map(|i| format!("k{i}")).collect());
    for name in names.iter() {
        let _: () = variants[0]
            .1
            .set(name.as_str(), "v", None, None, false)
            .await
            .expect("set");
    }
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    for _ in 0..rounds {
        for (i, (_, pool, options)) in variants.iter().enumerate() {
            let (pool, options, names) = (pool.clone(), options.clone(), names.clone());
            rates[i].push(
                common::throughput(per_task, move |t, _| {
                    let (pool, options, names) = (pool.clone(), options.clone(), names.clone());
                    async move {
                        let client = pool.next();
                        let v: Option<Bytes> = match &options {
                            Some(o) => client.with_options(o).get(&names[t]).await,
                            None => client.get(&names[t]).await,
                        }
                        .expect("get");
                        std::hint::black_box(v);
                    }
                })
                .await,
            );
        }
    }
    let bare = median(rates[0].clone());
    for (i, (name, _, _)) in variants.iter().enumerate().skip(1) {
        let rate = median(rates[i].clone());
        println!("settings {name}: {rate:.0} GET/s, bare fred {bare:.0}");
        println!("ratio settings_{name}_vs_bare {:.3}", rate / bare);
    }
    for (_, pool, _) in &variants {
        let _ = pool.quit().await;
    }
}

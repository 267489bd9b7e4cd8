//! Server CPU per logical operation: how much of one Redis core each contract's operation
//! costs, which decides how many replicas one server can carry. Each contract is driven at
//! 64 callers on distinct keys, and the server's `used_cpu_user + used_cpu_sys` delta over
//! the run is divided by the operations; a native `GET` driven the same way by bare fred is
//! the yardstick. Rounds are interleaved and medians compared. Prints, per contract,
//! `ratio server_cpu_<contract>_vs_get <ours / GET>` (lower is better) with the microseconds,
//! and the `INFO commandstats` lines of the last round (where the time goes).
//!
//! `cargo bench --bench server_cpu` (release build).

mod common;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use forze_redis::cache::CacheKey;
use forze_redis::counter::CounterId;
use forze_redis::idempotency::{Begin, IdemRequest};
use forze_redis::lock::LockId;
use forze_redis::LockGuard;
use forze_redis_actors::ForzeHandle;
use forze_redis_testkit::TestServer;
use fred::interfaces::KeysInterface;

const RESOURCES: &str = r#"
[caches.remote]
ttl = "600s"
[counters.cpu]
[locks.cpu]
lease = "30s"
[locks.held]
lease = "30s"
[idempotency.cpu]
[rate_limits.cpu]
permits = 100000000
per = "1s"
[breakers.cpu]
closed_cache_ttl = "0s"
"#;

/// A unique suffix per call, so no two calls of any round share a key.
fn nonce() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// The server's CPU seconds so far (user + system).
fn server_cpu(server: &TestServer) -> f64 {
    let info = server.cmd(&["INFO", "cpu"]).expect("INFO cpu");
    let text = info.as_str().expect("INFO text");
    let field = |name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':')?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} in INFO cpu"))
    };
    field("used_cpu_user") + field("used_cpu_sys")
}

type Op = Arc<dyn Fn(usize) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// The logical operations of each contract, as a user calls them (one caller per key).
/// `held`: one lease per caller, for the extension.
fn contracts(forze: &ForzeHandle, held: Arc<Vec<LockGuard>>) -> Vec<(&'static str, Op)> {
    let cache = forze.cache("remote").expect("cache");
    let counter = forze.counter("cpu").expect("counter");
    let lock = forze.lock("cpu").expect("lock");
    let idem = forze.idempotency("cpu").expect("idempotency");
    let limit = forze.rate_limit("cpu").expect("rate limit");
    let breaker = forze.breaker("cpu").expect("breaker");
    let held_lock = forze.lock("held").expect("lock");
    let held_by_owner = held.clone();
    let cache_keys: Arc<Vec<CacheKey>> =
        Arc::new((0..64).map(|t| CacheKey::new(format!("r{t}"))).collect());
    let counter_ids: Arc<Vec<CounterId>> = Arc::new(
        (0..64)
            .map(|t| CounterId::suffix(format!("c{t}")))
            .collect(),
    );
    let lock_ids: Arc<Vec<LockId>> =
        Arc::new((0..64).map(|t| LockId::new(format!("l{t}"))).collect());
    vec![
        ("cache_get", {
            Arc::new(move |t| {
                let (c, k) = (cache.clone(), cache_keys.clone());
                Box::pin(async move {
                    assert!(c.get_bytes(&k[t]).await.expect("get").is_some());
                })
            })
        }),
        ("counter_incr", {
            Arc::new(move |t| {
                let (c, ids) = (counter.clone(), counter_ids.clone());
                Box::pin(async move {
                    c.incr(&ids[t], 1).await.expect("incr");
                })
            })
        }),
        ("breaker_admit", {
            Arc::new(move |t| {
                let b = breaker.clone();
                Box::pin(async move {
                    b.admit(&format!("svc{t}")).await.expect("admit");
                })
            })
        }),
        ("ratelimit_decide", {
            Arc::new(move |t| {
                let r = limit.clone();
                Box::pin(async move {
                    assert!(
                        r.try_acquire(&format!("r{t}"), 1)
                            .await
                            .expect("decide")
                            .allowed
                    );
                })
            })
        }),
        ("lock_acquire_release", {
            Arc::new(move |t| {
                let (l, ids) = (lock.clone(), lock_ids.clone());
                Box::pin(async move { common::lock_pair(&l, &ids[t]).await })
            })
        }),
        // One renewal of a held lease, as the heartbeater sends it for each lease on each
        // tick (there batched per tick): `SET … IFEQ` where the server has it, else the script.
        ("lock_extend", {
            Arc::new(move |t| {
                let held = held.clone();
                Box::pin(async move {
                    assert!(held[t].extend().await.expect("extend"), "still held");
                })
            })
        }),
        // The same by owner alone (a holder without its guard): always the script, so on a
        // server with `SET … IFEQ` the two lines compare the command with the script.
        ("lock_extend_by_owner", {
            Arc::new(move |t| {
                let (l, held) = (held_lock.clone(), held_by_owner.clone());
                Box::pin(async move {
                    let id = LockId::new(format!("h{t}"));
                    let extended = l.extend_as(&id, held[t].owner()).await.expect("extend");
                    assert!(extended, "still held");
                })
            })
        }),
        ("idempotency_begin_commit", {
            Arc::new(move |t| {
                let h = idem.clone();
                Box::pin(async move {
                    let r = IdemRequest::new("cpu", format!("k{t}-{}", nonce()), "ph");
                    let Begin::Proceed(claim) = h.begin(&r).await.expect("begin") else {
                        panic!("fresh key replayed");
                    };
                    h.commit(&claim, b"result").await.expect("commit");
                })
            })
        }),
    ]
}

/// Server CPU microseconds per call of `op` at 64 callers, `per_task` calls each.
async fn cpu_per_op(server: &TestServer, per_task: usize, op: Op) -> f64 {
    let before = server_cpu(server);
    common::throughput(per_task, move |t, _| op(t)).await;
    let after = server_cpu(server);
    (after - before) * 1e6 / (per_task * common::TASKS) as f64
}

#[tokio::main]
async fn main() {
    // Under `cargo test` (no `--bench`), a quick pass that only checks it runs.
    let per_task = if std::env::args().any(|a| a == "--bench") {
        400
    } else {
        20
    };
    let server = common::server();
    let forze = common::spawn(&server.url(), RESOURCES).await;
    let cache = forze.cache("remote").expect("cache");
    let value = vec![7u8; 64];
    for t in 0..64 {
        cache
            .set_bytes(&CacheKey::new(format!("r{t}")), &value, None)
            .await
            .expect("set");
    }
    let direct = common::direct_pool(&server.url()).await;
    let names: Arc<Vec<String>> = Arc::new(
        (0..64)
            .map(|t| format!("forze:cache:{{remote:_:r{t}}}"))
            .collect(),
    );
    let get: Op = Arc::new(move |t| {
        let (d, n) = (direct.clone(), names.clone());
        Box::pin(async move {
            let v: Option<Bytes> = d.get(&n[t]).await.expect("get");
            assert!(v.is_some());
        })
    });
    let held_lock = forze.lock("held").expect("lock");
    let mut held = Vec::new();
    for t in 0..64 {
        let id = LockId::new(format!("h{t}"));
        held.push(
            held_lock
                .try_acquire(&id)
                .await
                .expect("acquire")
                .expect("free"),
        );
    }
    let contracts = contracts(&forze, Arc::new(held));
    let mut gets = Vec::new();
    let mut ours: Vec<Vec<f64>> = vec![Vec::new(); contracts.len()];
    let _ = server.cmd(&["CONFIG", "RESETSTAT"]);
    for round in 0..common::ROUNDS {
        if round + 1 == common::ROUNDS {
            // The last round's command statistics are printed below.
            let _ = server.cmd(&["CONFIG", "RESETSTAT"]);
        }
        gets.push(cpu_per_op(&server, per_task, get.clone()).await);
        for (i, (_, op)) in contracts.iter().enumerate() {
            ours[i].push(cpu_per_op(&server, per_task, op.clone()).await);
        }
    }
    let get_us = common::median(gets);
    println!("server_cpu_get: {get_us:.2} µs per native GET (bare fred, 64 callers)");
    for ((name, _), samples) in contracts.iter().zip(ours) {
        let us = common::median(samples);
        println!("server_cpu_{name}: {us:.2} µs per operation");
        println!("ratio server_cpu_{name}_vs_get {:.3}", us / get_us);
    }
    let stats = server.cmd(&["INFO", "commandstats"]).expect("commandstats");
    for line in stats.as_str().unwrap_or_default().lines() {
        if let Some(rest) = line.strip_prefix("cmdstat_") {
            println!("info commandstats {rest}");
        }
    }
    forze.shutdown().await.expect("shutdown");
}

//! The main job: several supervisors as replicas in one process, worker actors messaging their
//! children, a cached read-mostly catalog shared by the replicas (L1 kept coherent by
//! client-side caching when on Redis), and summary tables built from every actor's `Stats`.
//!
//! `REDIS_URL=redis://127.0.0.1:7000 cargo run --example fleet` runs against that server;
//! without `REDIS_URL` every replica runs on embedded local state.

use std::time::{Duration, Instant};

use forze_redis_actors::{
    payload_hash, CacheKey, CallError, Config, CounterId, CounterMsg, Forze, ForzeHandle,
    HealthState, IdemRequest, LockId, RunError, RunId, TenantId,
};
use ractor::{call_t, Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

const REPLICAS: usize = 3;
const WORKERS_PER_REPLICA: usize = 4;
const ORDERS_PER_WORKER: usize = 250;
const PRODUCTS: u64 = 40;
const CATALOG_READERS_PER_REPLICA: usize = 4;
const CATALOG_READS_PER_READER: u64 = 1_500;
const PRICE_UPDATES: u64 = 30;
const SETTLEMENTS_PER_REPLICA: u64 = 20;

/// Stands in for the storage a lock protects: it remembers the highest fencing token it has
/// accepted and refuses writes that carry a lower one (the consumer-side check of fencing).
#[derive(Default)]
struct FencedLedger {
    highest: std::sync::Mutex<u64>,
    accepted: std::sync::atomic::AtomicU64,
    rejected: std::sync::atomic::AtomicU64,
}

impl FencedLedger {
    fn write(&self, token: u64) -> bool {
        let mut highest = self.highest.lock().unwrap_or_else(|p| p.into_inner());
        let ok = token >= *highest;
        if ok {
            *highest = token;
            self.accepted
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        } else {
            self.rejected
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        ok
    }
}

/// A catalog entry, versioned by its revision.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Product {
    id: u64,
    revision: u64,
    price_cents: u64,
}

/// A worker actor of the user's application: allocates order numbers by messaging the
/// replica's counter actor, the way any actor in an application would.
struct OrderWorker;

enum WorkerMsg {
    Run {
        counter_actor: String,
        reply: RpcReplyPort<WorkerReport>,
    },
}

#[derive(Default, Debug)]
struct WorkerReport {
    ok: u64,
    errors: u64,
    last: i64,
}

impl Actor for OrderWorker {
    type Msg = WorkerMsg;
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, _: ActorRef<WorkerMsg>, _: ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }

    async fn handle(
        &self,
        _: ActorRef<WorkerMsg>,
        msg: WorkerMsg,
        _: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        let WorkerMsg::Run {
            counter_actor,
            reply,
        } = msg;
        let mut report = WorkerReport::default();
        for i in 0..ORDERS_PER_WORKER {
            let Some(actor) = ActorRef::<CounterMsg>::where_is(counter_actor.clone()) else {
                report.errors += 1;
                continue;
            };
            // Mostly single order numbers, sometimes a batch for a bulk import.
            let outcome = if i % 10 == 0 {
                call_t!(
                    actor,
                    |reply| CounterMsg::IncrBatch {
                        id: CounterId::main(),
                        size: 5,
                        reply
                    },
                    2000
                )
                .map(|r| r.map(|range| *range.end()))
            } else {
                call_t!(
                    actor,
                    |reply| CounterMsg::Incr {
                        id: CounterId::main(),
                        by: 1,
                        reply
                    },
                    2000
                )
            };
            match outcome {
                Ok(Ok(v)) => {
                    report.ok += 1;
                    report.last = report.last.max(v);
                }
                _ => report.errors += 1,
            }
        }
        let _ = reply.send(report);
        Ok(())
    }
}

fn replica_config(replica: usize, redis_url: Option<&str>) -> forze_redis_actors::Result<Config> {
    // Embedded mode is chosen explicitly when no server is given: a configuration that names
    // neither is refused.
    let (mode, redis) = match redis_url {
        Some(u) => ("redis", format!("[redis]\nurl = \"{u}\"\n")),
        None => ("embedded", String::new()),
    };
    Config::from_toml_str(&format!(
        r#"
mode = "{mode}"
key_prefix = "fleet-example"
[supervision]
name_prefix = "replica{replica}"
[counters.orders]
fallback = "local"
[counters.invoices]
tenant_aware = true
[caches.catalog]
ttl = "120s"
[caches.catalog.l1]
ttl = "30s"
max_entries = 1000
[idempotency.payments]
[snapshots.search]
[breakers.inventory]
failure_ratio = 0.5
min_calls = 10
window = "5s"
break_duration = "150ms"
closed_cache_ttl = "50ms"
[rate_limits.partner_api]
permits = 200
per = "1s"
[locks.settlement]
lease = "5s"
retry_min = "2ms"
retry_max = "20ms"
{redis}
"#
    ))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let redis_url = std::env::var("REDIS_URL").ok().filter(|u| !u.is_empty());
    match &redis_url {
        Some(_) => println!("mode: redis (REDIS_URL is set); replicas share one server"),
        None => println!(
            "mode: embedded local state (set REDIS_URL to use a server); each replica counts alone"
        ),
    }
    let mut replicas: Vec<ForzeHandle> = Vec::new();
    for r in 1..=REPLICAS {
        let (handle, _join) = Forze::spawn(replica_config(r, redis_url.as_deref())?).await?;
        replicas.push(handle);
    }
    if redis_url.is_some() {
        let deadline = Instant::now() + Duration::from_secs(5);
        while replicas.iter().any(|r| r.health().state != HealthState::Up)
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    let started = Instant::now();
    let mut runs = Vec::new();
    for replica in &replicas {
        let counter_actor = replica.names().counter("orders");
        for _ in 0..WORKERS_PER_REPLICA {
            let (worker, join) = Actor::spawn(None, OrderWorker, ()).await?;
            let name = counter_actor.clone();
            runs.push(tokio::spawn(async move {
                let report = call_t!(
                    worker,
                    |reply| WorkerMsg::Run {
                        counter_actor: name.clone(),
                        reply
                    },
                    60_000
                );
                worker.stop(None);
                let _ = join.await;
                report
            }));
        }
    }
    // Tenant invoices through the handle (the hot path: no mailbox).
    let tenant = TenantId::new("acme")?;
    for replica in &replicas {
        let invoices = replica.counter("invoices")?;
        for _ in 0..50 {
            invoices
                .incr(&CounterId::main().for_tenant(tenant.clone()), 1)
                .await?;
        }
    }
    // The catalog: read-mostly, cached, loaded from "the database" on a miss.
    let db_loads = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut catalog_runs = Vec::new();
    for replica in &replicas {
        let catalog = replica.cache("catalog")?;
        for reader in 0..CATALOG_READERS_PER_REPLICA {
            let (catalog, db_loads) = (catalog.clone(), db_loads.clone());
            catalog_runs.push(tokio::spawn(async move {
                let mut errors = 0u64;
                for i in 0..CATALOG_READS_PER_READER {
                    // Skewed popularity: low ids are read far more often.
                    let id = (i * 7 + reader as u64 * 13) % PRODUCTS;
                    let id = id * id / PRODUCTS;
                    let loads = db_loads.clone();
                    let got = catalog
                        .get_or_load(
                            &CacheKey::new(format!("product:{id}")),
                            None,
                            || async move {
                                loads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                tokio::time::sleep(Duration::from_millis(2)).await;
                                Ok::<_, String>(Product {
                                    id,
                                    revision: 0,
                                    price_cents: 1_000 + id,
                                })
                            },
                        )
                        .await;
                    if got.is_err() {
                        errors += 1;
                    }
                }
                errors
            }));
        }
    }
    // Meanwhile an editor on replica1 reprices product 0 (the hottest) again and again.
    let editor = replicas[0].cache("catalog")?;
    let mut editor_errors = 0u64;
    for revision in 1..=PRICE_UPDATES {
        let product = Product {
            id: 0,
            revision,
            price_cents: 2_000 + revision,
        };
        if editor
            .set_versioned(&CacheKey::new("product:0"), revision, &product, None)
            .await
            .is_err()
        {
            editor_errors += 1;
        }
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let mut catalog_errors = editor_errors;
    for run in catalog_runs {
        catalog_errors += run.await?;
    }
    // After quiescence every replica must serve the last revision (embedded: each replica
    // has its own local state, so only the editor's replica shares its writes).
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut stale = 0;
    let sharing = if redis_url.is_some() {
        replicas.len()
    } else {
        1
    };
    for replica in &replicas[..sharing] {
        let seen = replica
            .cache("catalog")?
            .get_versioned::<Product>(&CacheKey::new("product:0"))
            .await?;
        if seen.map(|(v, _)| v) != Some(PRICE_UPDATES) {
            stale += 1;
        }
    }

    // A lock-protected job: every replica settles the ledger in turn; each write carries the
    // fencing token, so a holder that lost its lease could never overwrite a newer one.
    let ledger = std::sync::Arc::new(FencedLedger::default());
    let mut settlement_runs = Vec::new();
    for replica in &replicas {
        let (lock, ledger) = (replica.lock("settlement")?, ledger.clone());
        settlement_runs.push(tokio::spawn(async move {
            let mut errors = 0u64;
            for _ in 0..SETTLEMENTS_PER_REPLICA {
                match lock
                    .acquire(&LockId::new("daily"), Duration::from_secs(10))
                    .await
                {
                    Ok(guard) => {
                        // A refused write is the fence doing its job, counted by the ledger.
                        if !guard.is_lost() {
                            ledger.write(guard.token());
                        }
                        if guard.release().await.is_err() {
                            errors += 1;
                        }
                    }
                    Err(_) => errors += 1,
                }
            }
            errors
        }));
    }
    let mut settlement_errors = 0;
    for run in settlement_runs {
        settlement_errors += run.await?;
    }

    // Payments with client retries: each request is sent 3 times, to different replicas (a
    // load balancer retrying after a timeout). The charge must happen once per request.
    let charges = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut payment_runs = Vec::new();
    for request in 0..30u64 {
        for attempt in 0..3usize {
            // Embedded replicas share nothing, so there the retries stay on one replica.
            let spread = if redis_url.is_some() { attempt } else { 0 };
            let payments =
                replicas[(request as usize + spread) % replicas.len()].idempotency("payments")?;
            let charges = charges.clone();
            payment_runs.push(tokio::spawn(async move {
                let body = format!("{{\"amount\":{}}}", 100 + request);
                let req = IdemRequest::new(
                    "charge",
                    format!("pay-{request}"),
                    payload_hash(body.as_bytes()),
                );
                payments
                    .run(&req, || async move {
                        charges.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        Ok::<_, String>(format!("receipt-{request}"))
                    })
                    .await
            }));
        }
    }
    let (mut paid, mut replayed_or_busy, mut payment_errors) = (0u64, 0u64, 0u64);
    for run in payment_runs {
        match run.await? {
            Ok(_) => paid += 1,
            Err(RunError::Idempotency(e)) if e.is_retryable() => replayed_or_busy += 1,
            Err(_) => payment_errors += 1,
        }
    }

    // A paged search: the result ids are stored once, then pages come without re-searching.
    let search = replicas[0].snapshot("search")?;
    let hits: Vec<String> = (0..2_500).map(|i| format!("product:{i}")).collect();
    let fingerprint = payload_hash(b"q=lamp&sort=price");
    search
        .put(&RunId::new("run-1"), &fingerprint, &hits)
        .await?;
    let mut paged = 0;
    let reader = if redis_url.is_some() {
        replicas[replicas.len() - 1].snapshot("search")?
    } else {
        search.clone()
    };
    let mut offset = 0;
    while let Some(page) = reader
        .page(&RunId::new("run-1"), offset, 100, Some(&fingerprint))
        .await?
    {
        if page.is_empty() {
            break;
        }
        offset += page.len() as u64;
        paged += 1;
    }

    // A flaky downstream behind a fleet-wide breaker and a shared rate limit: it fails for a
    // while, the breaker opens for every replica, trials probe it, it recovers, it closes.
    let downstream_calls = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let healthy_after = Instant::now() + Duration::from_millis(400);
    let mut resilience_runs = Vec::new();
    for replica in &replicas {
        let (breaker, limit) = (
            replica.breaker("inventory")?,
            replica.rate_limit("partner_api")?,
        );
        let calls = downstream_calls.clone();
        resilience_runs.push(tokio::spawn(async move {
            let (mut ok, mut refused, mut failed, mut throttled) = (0u64, 0u64, 0u64, 0u64);
            for _ in 0..150 {
                if !limit
                    .try_acquire("inventory", 1)
                    .await
                    .map(|d| d.allowed)
                    .unwrap_or(false)
                {
                    throttled += 1;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    continue;
                }
                let calls = calls.clone();
                let outcome = breaker
                    .call("inventory", async move {
                        calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if Instant::now() < healthy_after {
                            Err("inventory service down")
                        } else {
                            Ok(())
                        }
                    })
                    .await;
                match outcome {
                    Ok(()) => ok += 1,
                    Err(CallError::Breaker(_)) => refused += 1,
                    Err(CallError::Call(_)) => failed += 1,
                }
                tokio::time::sleep(Duration::from_millis(4)).await;
            }
            (ok, refused, failed, throttled)
        }));
    }
    let (mut r_ok, mut r_refused, mut r_failed, mut r_throttled) = (0, 0, 0, 0);
    for run in resilience_runs {
        let (a, b, c, d) = run.await?;
        r_ok += a;
        r_refused += b;
        r_failed += c;
        r_throttled += d;
    }

    let mut highest = 0;
    let mut worker_errors = 0;
    for run in runs {
        let report = run.await?.map_err(|e| format!("worker failed: {e}"))?;
        highest = highest.max(report.last);
        worker_errors += report.errors;
    }
    let elapsed = started.elapsed();

    println!();
    println!(
        "{:<10} {:>10} {:>8} {:>10} {:>9} {:>10}",
        "replica", "ops", "errors", "fallbacks", "restarts", "health"
    );
    for (i, replica) in replicas.iter().enumerate() {
        let stats = replica.stats().await?;
        let (ops, errors, fallbacks) =
            stats.counters.iter().fold((0, 0, 0), |(o, e, f), (_, s)| {
                (o + s.ops, e + s.errors, f + s.fallbacks)
            });
        println!(
            "{:<10} {:>10} {:>8} {:>10} {:>9} {:>10}",
            format!("replica{}", i + 1),
            ops,
            errors,
            fallbacks,
            stats.supervisor.restarts,
            format!("{:?}", stats.health.state)
        );
    }
    println!();
    println!(
        "{:<10} {:>8} {:>8} {:>8} {:>9} {:>10} {:>13} {:>9}",
        "catalog", "reads", "hits", "l1 hits", "hit ratio", "l1 fills", "invalidations", "l1 flush"
    );
    for (i, replica) in replicas.iter().enumerate() {
        let stats = replica.stats().await?;
        for (_, c) in &stats.caches {
            let l1 = c.l1.clone().unwrap_or_default();
            let ratio = if c.reads == 0 {
                0.0
            } else {
                c.hits as f64 / c.reads as f64
            };
            println!(
                "{:<10} {:>8} {:>8} {:>8} {:>8.1}% {:>10} {:>13} {:>9}",
                format!("replica{}", i + 1),
                c.reads,
                c.hits,
                l1.hits,
                ratio * 100.0,
                l1.fills,
                l1.invalidations,
                l1.flushes.values().sum::<u64>(),
            );
        }
    }
    println!();
    println!(
        "highest order number: {highest}; worker errors: {worker_errors}; {} ms",
        elapsed.as_millis()
    );
    println!(
        "catalog: {} database loads, {catalog_errors} errors, {stale} of {sharing} replicas \
         stale after {PRICE_UPDATES} price updates{}",
        db_loads.load(std::sync::atomic::Ordering::Relaxed),
        if redis_url.is_some() {
            ""
        } else {
            " (embedded: each replica caches alone)"
        }
    );
    println!(
        "settlement: {} fenced writes accepted, {} rejected, {settlement_errors} errors{}",
        ledger.accepted.load(std::sync::atomic::Ordering::Relaxed),
        ledger.rejected.load(std::sync::atomic::Ordering::Relaxed),
        if redis_url.is_some() {
            " (one lock across the replicas)"
        } else {
            " (embedded: each replica locks alone, so their turns interleave)"
        }
    );
    println!(
        "payments: 90 attempts of 30 requests, {} charges, {paid} answered, {replayed_or_busy} told \
         to retry (in progress), {payment_errors} errors{}",
        charges.load(std::sync::atomic::Ordering::SeqCst),
        if redis_url.is_some() {
            ""
        } else {
            " (embedded: each request's retries hit one replica)"
        }
    );
    println!(
        "search: {} ids stored once, read back in {paged} pages of 100{}",
        hits.len(),
        if redis_url.is_some() {
            " on another replica"
        } else {
            " (embedded: on the same replica)"
        }
    );
    println!(
        "inventory (flaky for 400 ms): {} calls reached it; {r_ok} ok, {r_failed} failed, \
         {r_refused} refused by the open breaker, {r_throttled} throttled by the shared limit",
        downstream_calls.load(std::sync::atomic::Ordering::Relaxed)
    );
    for replica in &replicas {
        replica.shutdown().await?;
    }
    Ok(())
}

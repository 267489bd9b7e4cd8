//! Coalesced increments on real servers: concurrent increments of one counter share one
//! `INCRBY` and still hand every caller a distinct value; a batch refused at the `i64` bound
//! answers each increment as it would have been answered alone; cancelled callers, a killed
//! server and `coalesce = false` behave as documented. A proxy delays the round trip so the
//! first increment is certainly in flight while the others arrive.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{config, server_binaries, spawn_ready, wait_until, TestServer};
use forze_redis::connection::HealthState;
use forze_redis::counter::{Counter, CounterId};
use forze_redis::{ConflictReason, Error, ErrorKind};
use forze_redis_testkit::FaultProxy;

const RESOURCES: &str = r#"
[counters.hot]
[counters.plain]
coalesce = false
"#;

/// Any call must finish well within this, whatever the fault.
const NEVER_HANG: Duration = Duration::from_secs(5);
/// The proxy's delay per direction: the first increment stays in flight for twice this.
const DELAY: Duration = Duration::from_millis(150);

/// Start `n` increments of `id` behind a queue certainly open: `first` runs two increments
/// of 1, the second started 5 ms after the first (the request that finds one in flight goes
/// alone too and opens the queue), and returns both values; each of the `n` tasks returns
/// its range (`incr_batch` of `1 + i % 3`).
async fn behind_one_in_flight(
    c: &Counter,
    id: &CounterId,
    n: usize,
) -> (
    tokio::task::JoinHandle<Result<[i64; 2], Error>>,
    Vec<tokio::task::JoinHandle<Result<std::ops::RangeInclusive<i64>, Error>>>,
) {
    let first = {
        let (c, id) = (c.clone(), id.clone());
        tokio::spawn(async move {
            let opener = async {
                tokio::time::sleep(Duration::from_millis(5)).await;
                c.incr(&id, 1).await
            };
            let (a, b) = tokio::join!(c.incr(&id, 1), opener);
            Ok([a?, b?])
        })
    };
    tokio::time::sleep(DELAY / 3).await;
    let rest = (0..n)
        .map(|i| {
            let (c, id) = (c.clone(), id.clone());
            tokio::spawn(async move { c.incr_batch(&id, 1 + (i % 3) as i64).await })
        })
        .collect();
    (first, rest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn increments_behind_one_in_flight_share_one_incrby_and_stay_distinct() {
    for bin in server_binaries() {
        let server = TestServer::start(&bin);
        let proxy = FaultProxy::start(server.addr()).await;
        let forze = spawn_ready(config(Some(&proxy.url()), "coalesce", RESOURCES)).await;
        proxy.set_delay(DELAY);
        for (name, coalesced) in [("hot", true), ("plain", false)] {
            let c = forze.counter(name).unwrap();
            let id = CounterId::suffix("distinct");
            let before = server.command_calls("incrby");
            let (first, rest) = behind_one_in_flight(&c, &id, 40).await;
            let mut seen = HashSet::new();
            for v in first.await.unwrap().unwrap() {
                assert!(seen.insert(v));
            }
            for t in rest {
                for v in t.await.unwrap().expect("incr_batch") {
                    assert!(seen.insert(v), "{bin} {name}: {v} handed out twice");
                }
            }
            let total = seen.len() as i64;
            assert!(
                seen.iter().all(|v| (1..=total).contains(v)),
                "{bin} {name}: values not gap-free: {seen:?}"
            );
            assert_eq!(c.get(&id).await.unwrap(), total, "{bin} {name}");
            let sent = server.command_calls("incrby") - before;
            if coalesced {
                // The first and the one that opens the queue alone, then the 40 behind them
                // as one INCRBY (a task the scheduler starts only after that batch was sent
                // makes another, on a loaded machine).
                assert!(
                    sent <= 4,
                    "{bin}: 42 coalesced increments took {sent} INCRBY"
                );
            } else {
                assert_eq!(sent, 42, "{bin}: coalesce = false must send each increment");
            }
        }
        forze.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_refused_at_the_bound_answers_each_increment_as_alone() {
    for bin in server_binaries() {
        let server = TestServer::start(&bin);
        let proxy = FaultProxy::start(server.addr()).await;
        let forze = spawn_ready(config(Some(&proxy.url()), "coalesce-bound", RESOURCES)).await;
        let c = forze.counter("hot").unwrap();
        let id = CounterId::suffix("bound");
        c.reset(&id, i64::MAX - 10).await.unwrap();
        proxy.set_delay(DELAY);
        let first = {
            let (c, id) = (c.clone(), id.clone());
            tokio::spawn(async move { c.incr(&id, 1).await })
        };
        tokio::time::sleep(DELAY / 3).await;
        let rest: Vec<_> = (0..10)
            .map(|_| {
                let (c, id) = (c.clone(), id.clone());
                tokio::spawn(async move { c.incr(&id, 3).await })
            })
            .collect();
        assert_eq!(first.await.unwrap().unwrap(), i64::MAX - 9);
        let (mut ok, mut refused) = (Vec::new(), 0);
        for t in rest {
            match t.await.unwrap() {
                Ok(v) => ok.push(v),
                Err(Error::Conflict {
                    reason: ConflictReason::OutOfRange,
                    ..
                }) => refused += 1,
                Err(e) => panic!("{bin}: unexpected {e}"),
            }
        }
        ok.sort();
        // Sent alone, three fit and seven are refused: the sum (30) alone would refuse all.
        assert_eq!(ok, vec![i64::MAX - 6, i64::MAX - 3, i64::MAX], "{bin}");
        assert_eq!(refused, 7, "{bin}");
        proxy.set_delay(Duration::ZERO);
        assert_eq!(c.get(&id).await.unwrap(), i64::MAX, "{bin}");

        // Mixed signs never share an INCRBY, and the final value is the exact sum.
        let id = CounterId::suffix("mixed");
        proxy.set_delay(DELAY);
        let first = {
            let (c, id) = (c.clone(), id.clone());
            tokio::spawn(async move { c.incr(&id, 100).await })
        };
        tokio::time::sleep(DELAY / 3).await;
        let deltas: Vec<i64> = (0..30).map(|i| if i % 4 == 0 { -7 } else { 2 }).collect();
        let rest: Vec<_> = deltas
            .iter()
            .map(|&d| {
                let (c, id) = (c.clone(), id.clone());
                tokio::spawn(async move {
                    if d < 0 {
                        c.decr(&id, -d).await
                    } else {
                        c.incr(&id, d).await
                    }
                })
            })
            .collect();
        first.await.unwrap().unwrap();
        for t in rest {
            t.await.unwrap().expect("mixed increment");
        }
        proxy.set_delay(Duration::ZERO);
        let sum: i64 = 100 + deltas.iter().sum::<i64>();
        assert_eq!(c.get(&id).await.unwrap(), sum, "{bin}");
        forze.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_callers_are_left_out_and_a_cancelled_first_caller_strands_nobody() {
    for bin in server_binaries() {
        let server = TestServer::start(&bin);
        let proxy = FaultProxy::start(server.addr()).await;
        let forze = spawn_ready(config(Some(&proxy.url()), "coalesce-cancel", RESOURCES)).await;
        let c = forze.counter("hot").unwrap();
        proxy.set_delay(DELAY);

        // Queued callers that give up before their batch is sent are not counted.
        let id = CounterId::suffix("cancelled-waiters");
        let (first, rest) = behind_one_in_flight(&c, &id, 25).await;
        for t in &rest[..20] {
            t.abort();
        }
        first.await.unwrap().unwrap();
        let mut kept_total = 0;
        for (i, t) in rest.into_iter().enumerate().skip(20) {
            let range = tokio::time::timeout(NEVER_HANG, t)
                .await
                .expect("no hang")
                .unwrap()
                .expect("kept caller served");
            assert_eq!(range.end() - range.start() + 1, 1 + (i % 3) as i64);
            kept_total += 1 + (i % 3) as i64;
        }
        proxy.set_delay(Duration::ZERO);
        assert_eq!(c.get(&id).await.unwrap(), 2 + kept_total, "{bin}");

        // The callers in flight cancelled, the queue's opener among them: the queue behind
        // it is still served, and their own increments (already sent) count.
        proxy.set_delay(DELAY);
        let id = CounterId::suffix("cancelled-first");
        let (first, rest) = behind_one_in_flight(&c, &id, 10).await;
        first.abort();
        let mut total = 2;
        for t in rest {
            let r = tokio::time::timeout(NEVER_HANG, t)
                .await
                .expect("a cancelled first caller strands nobody")
                .unwrap()
                .expect("served");
            total += r.end() - r.start() + 1;
        }
        proxy.set_delay(Duration::ZERO);
        assert_eq!(c.get(&id).await.unwrap(), total, "{bin}");
        forze.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_fails_queued_increments_with_typed_errors_and_the_key_recovers() {
    for bin in server_binaries() {
        let mut server = TestServer::start(&bin);
        let forze = spawn_ready(config(Some(&server.url()), "coalesce-kill", RESOURCES)).await;
        let c = forze.counter("hot").unwrap();
        let id = CounterId::main();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let workers: Vec<_> = (0..64)
            .map(|_| {
                let (c, id, stop) = (c.clone(), id.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut kinds = Vec::new();
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let r = tokio::time::timeout(NEVER_HANG, c.incr(&id, 1))
                            .await
                            .expect("every increment is bounded");
                        kinds.push(r.map(|_| ()).map_err(|e| e.kind()));
                        if kinds.len() > 100_000 {
                            break;
                        }
                    }
                    kinds
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(300)).await;
        server.stop();
        tokio::time::sleep(Duration::from_millis(500)).await;
        server.restart();
        let h = forze.clone();
        wait_until(
            Duration::from_secs(10),
            "health Up after restart",
            move || h.health().state == HealthState::Up,
        )
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (mut ok, mut failed) = (0u64, 0u64);
        for w in workers {
            for r in w.await.unwrap() {
                match r {
                    Ok(()) => ok += 1,
                    Err(kind) => {
                        assert!(
                            matches!(
                                kind,
                                ErrorKind::Unavailable
                                    | ErrorKind::OutcomeUnknown
                                    | ErrorKind::Timeout
                            ),
                            "{bin}: {kind:?}"
                        );
                        failed += 1;
                    }
                }
            }
        }
        assert!(ok > 0 && failed > 0, "{bin}: ok {ok}, failed {failed}");
        // Nothing stranded: the key takes increments again, at once and in bulk.
        let after = tokio::time::timeout(NEVER_HANG, c.incr(&id, 1))
            .await
            .expect("the key is not stranded")
            .expect("incr after the restart");
        let bulk: Vec<_> = (0..64)
            .map(|_| {
                let (c, id) = (c.clone(), id.clone());
                tokio::spawn(async move { c.incr(&id, 1).await })
            })
            .collect();
        let mut values = HashSet::new();
        for t in bulk {
            let v = tokio::time::timeout(NEVER_HANG, t)
                .await
                .expect("no hang")
                .unwrap()
                .expect("incr");
            assert!(values.insert(v));
        }
        assert_eq!(
            values,
            (after + 1..=after + 64).collect::<HashSet<_>>(),
            "{bin}"
        );
        forze.shutdown().await.unwrap();
    }
}

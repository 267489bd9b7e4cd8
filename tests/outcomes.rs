//! Every failure tells the truth: with every contract in flight on three supervisors behind a
//! TCP relay whose connections are all cut 60 times, 300 ms apart, each call ends `Ok`,
//! `Unavailable` (it did not run) or `OutcomeUnknown` (it may have run), never `Internal`; and
//! the server's own count of what it executed (its `MONITOR` feed, script by script) is compared
//! with the calls made, contract by contract: no write runs more often than it was called.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::workload::{drive, Tallies, Tally, RESOURCES};
use common::{config, spawn_ready};
use forze_redis::scripts::{self, Script};
use forze_redis::ErrorKind;
use forze_redis_testkit::{server_binaries, FaultProxy, Monitor, TestServer};
use fred::types::Value;

/// The runs of `script` on the server: by `EVALSHA`, and by `EVAL` after a `NOSCRIPT`.
fn script_runs(monitor: &Monitor, script: &Script) -> u64 {
    let by_sha = monitor.count(&format!("evalsha {}", script.sha1().to_ascii_lowercase()));
    let head: String = script.source().chars().take(24).collect();
    by_sha + monitor.count(&format!("eval {head}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_cuts_every_error_typed_and_no_write_run_twice() {
    for bin in server_binaries() {
        let server = TestServer::start(&bin);
        let relay = FaultProxy::start(server.addr()).await;
        let mut monitor = Monitor::start(server.socket_addr());
        let mut reps = Vec::new();
        for _ in 0..3 {
            reps.push(spawn_ready(config(Some(&relay.url()), "outcomes", RESOURCES)).await);
        }
        let tallies = Arc::new(Tallies::default());
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let mut workers = Vec::new();
        for (i, r) in reps.iter().enumerate() {
            for j in 0..3 {
                workers.push(tokio::spawn(drive(
                    r.clone(),
                    i * 3 + j,
                    tallies.clone(),
                    stop.clone(),
                    Duration::from_secs(5),
                )));
            }
        }
        for _ in 0..60 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            relay.cut_all();
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.store(true, Ordering::Relaxed);
        for w in workers {
            tokio::time::timeout(Duration::from_secs(10), w)
                .await
                .expect("every call is bounded")
                .unwrap();
        }
        let elapsed = started.elapsed();
        for r in reps {
            r.shutdown().await.unwrap();
        }
        // Let the last commands reach the feed.
        tokio::time::sleep(Duration::from_millis(200)).await;
        monitor.stop();
        let t = &tallies;
        let rows: [(&str, &Tally, u64, u64); 9] = [
            ("counter incr", &t.incr, monitor.count("incrby"), 1),
            (
                "cache set_versioned",
                &t.set_versioned,
                script_runs(&monitor, &scripts::CACHE_SET_VERSIONED),
                1,
            ),
            // Acquire is replay-safe (same owner token) and may be sent twice.
            (
                "lock acquire",
                &t.lock_acquire,
                script_runs(&monitor, &scripts::LOCK_ACQUIRE),
                2,
            ),
            (
                "lock release",
                &t.lock_release,
                script_runs(&monitor, &scripts::LOCK_RELEASE),
                1,
            ),
            (
                "idempotency begin",
                &t.idem_begin,
                script_runs(&monitor, &scripts::IDEM_BEGIN),
                1,
            ),
            (
                "idempotency commit",
                &t.idem_commit,
                script_runs(&monitor, &scripts::IDEM_COMMIT),
                1,
            ),
            (
                "snapshot put",
                &t.snap_put,
                script_runs(&monitor, &scripts::SNAP_BEGIN),
                1,
            ),
            (
                "rate limit",
                &t.limit,
                script_runs(&monitor, &scripts::RATELIMIT_ACQUIRE),
                1,
            ),
            (
                "breaker record",
                &t.breaker,
                script_runs(&monitor, &scripts::BREAKER),
                1,
            ),
        ];
        let mut internal = 0;
        let mut over = Vec::new();
        for (name, tally, runs, sends) in rows {
            let kinds = tally.kinds();
            internal += kinds.get("Internal").copied().unwrap_or(0);
            eprintln!(
                "{bin}: {name}: {} calls, server ran {runs}: {kinds:?}",
                tally.calls()
            );
            if runs > tally.calls() * sends {
                over.push(format!("{name}: {runs} runs for {} calls", tally.calls()));
            }
        }
        for (name, tally) in t.all() {
            for k in tally.kinds().keys() {
                assert!(
                    ["Ok", "Unavailable", "OutcomeUnknown", "Timeout"].contains(&k.as_str()),
                    "{bin}: {name}: {k} ({:?})",
                    tally.kinds()
                );
            }
        }
        let counts = monitor.counts();
        eprintln!(
            "{bin}: {elapsed:?}; every EVAL: {:?}",
            counts
                .iter()
                .filter(|(k, _)| k.starts_with("eval "))
                .collect::<Vec<_>>()
        );
        let granted = t.granted_by_redis.load(Ordering::Relaxed);
        // 50 a second, starting full (burst 50): far below the calls made, so the bucket
        // decides; a decision run twice could never grant more than this.
        let budget = 50 + (elapsed.as_secs_f64() * 50.0).ceil() as u64;
        eprintln!("{bin}: rate limit granted {granted} by Redis, budget {budget}");
        assert!(
            granted <= budget,
            "{bin}: {granted} granted, budget {budget}"
        );
        assert_eq!(internal, 0, "{bin}: Internal errors under connection cuts");
        assert!(
            over.is_empty(),
            "{bin}: writes ran more often than called: {over:?}"
        );
    }
}

/// A pipelined write (`set_many` of several keys) whose reply is lost ends `OutcomeUnknown`
/// at once, as a single write does, and is not sent again when the driver reconnects: a
/// replayed `SET` would bring back an old value with a fresh TTL over a newer one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelined_write_whose_reply_is_lost_is_not_sent_again() {
    use forze_redis::cache::CacheKey;
    for bin in server_binaries() {
        let server = TestServer::start(&bin);
        let relay = FaultProxy::start(server.addr()).await;
        let mut cfg = config(
            Some(&relay.url()),
            "pipelined-lost",
            "[caches.plain]\nttl = \"60s\"\n",
        );
        // No probe on the relay: the reply it loses is the write's.
        cfg.redis.as_mut().unwrap().health_interval = Duration::from_secs(600);
        let forze = spawn_ready(cfg).await;
        let cache = forze.cache("plain").unwrap();
        let entries = [(CacheKey::new("a"), 1u64), (CacheKey::new("b"), 2u64)];
        cache.set_many(&entries, None).await.unwrap();
        let before = server.command_calls("set");
        relay.lose_next_reply();
        let e = cache.set_many(&entries, None).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::OutcomeUnknown, "{bin}: {e}");
        let ran = server.command_calls("set") - before;
        // Long enough for a reconnect and a replay.
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let ran_in_all = server.command_calls("set") - before;
        eprintln!("{bin}: {ran} of 2 SETs ran before the loss, {ran_in_all} in all");
        assert!(
            (1..=2).contains(&ran) && ran_in_all == ran,
            "{bin}: {ran} ran, then {ran_in_all}: the pipeline was sent again"
        );
        forze.shutdown().await.unwrap();
    }
}

/// What the real driver reports in each connection-loss case is classified as documented: a
/// lost reply on a write is `OutcomeUnknown` (and the write ran once, a script too), a command
/// refused while disconnected is `Unavailable`. A driver update that words its reports
/// differently fails here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drivers_reports_on_a_lost_connection_are_classified_as_documented() {
    use forze_redis::config::RedisConfig;
    use forze_redis::connection::RedisConnection;
    use forze_redis::error::{Access, DriverErrorClass};
    use forze_redis_testkit::{wait_until, ProxyMode};
    use fred::interfaces::{ClientLike, KeysInterface};
    for bin in server_binaries() {
        let server = TestServer::start(&bin);
        let relay = FaultProxy::start(server.addr()).await;
        let mut cfg = RedisConfig::new(relay.url());
        cfg.pool_size = 1;
        cfg.reconnect.min_delay = Duration::from_millis(20);
        cfg.reconnect.max_delay = Duration::from_millis(100);
        let conn = RedisConnection::build(&cfg).unwrap();
        conn.connect_in_background();
        conn.wait_connected(Duration::from_secs(5)).await.unwrap();

        // A plain write whose reply is lost.
        relay.lose_next_reply();
        let e = conn
            .client("t")
            .unwrap()
            .with_options(conn.options(Access::Write))
            .incr::<i64, _>("plain")
            .await
            .map_err(|e| conn.error("t", Access::Write, e))
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::OutcomeUnknown, "{bin}: {e:?}");
        assert_eq!(
            e.driver_class(),
            Some(DriverErrorClass::Connection),
            "{bin}"
        );
        assert_eq!(
            server.cmd(&["GET", "plain"]).unwrap().as_str().as_deref(),
            Some("1")
        );

        // A script whose reply is lost: run once, reported unknown (never a silent second run).
        conn.wait_connected(Duration::from_secs(5)).await.unwrap();
        let run = || async {
            conn.eval::<Value>(
                "t",
                Access::Write,
                &scripts::IDEM_FAIL,
                &["{scripted}"],
                &[Value::from("owner")],
            )
            .await
        };
        // Right after the lost connection the client may say it is connected before its router
        // has a connection again: those calls are never written ("Failed to route command."),
        // so `Unavailable`. Bounded: 5 s.
        let mut refused = 0;
        for _ in 0..500 {
            match run().await {
                Ok(_) => break,
                Err(e) => {
                    assert_eq!(e.kind(), ErrorKind::Unavailable, "{bin}: {e:?}");
                    refused += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
        eprintln!("{bin}: {refused} calls refused unsent while the connection came back");
        run().await.unwrap();
        let before = server.command_calls("evalsha");
        relay.lose_next_reply();
        let e = run().await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::OutcomeUnknown, "{bin}: {e:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            server.command_calls("evalsha"),
            before + 1,
            "{bin}: ran once"
        );

        // Refused while disconnected, before anything is written.
        relay.set_mode(ProxyMode::Refuse);
        relay.cut_all();
        wait_until(Duration::from_secs(5), "disconnected", || {
            !conn.pool().clients()[0].is_connected()
        })
        .await;
        let e = conn.pool().clients()[0]
            .with_options(conn.options(Access::Write))
            .incr::<i64, _>("plain")
            .await
            .unwrap_err();
        assert_eq!(
            DriverErrorClass::of(&e),
            DriverErrorClass::NotSent,
            "{bin}: {e:?}"
        );
        assert_eq!(
            conn.error("t", Access::Write, e).kind(),
            ErrorKind::Unavailable,
            "{bin}"
        );
        conn.quit(Duration::from_secs(1)).await;
    }
}

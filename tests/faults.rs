//! Connection faults against real servers: late start, restart, black hole, frozen server,
//! lost reply.
//! Every scenario runs on every server binary found.

mod common;

use std::time::Duration;

use common::{
    config, pool_stats, server_binaries, spawn_bounded_read, spawn_ready, wait_until, TestServer,
};
use forze_redis::connection::HealthState;
use forze_redis::counter::CounterId;
use forze_redis::ErrorKind;
use forze_redis_actors::Forze;
use forze_redis_testkit::{reserve_port, FaultProxy, ProxyMode};

const RESOURCES: &str = r#"
[counters.strict]
[counters.lenient]
fallback = "local"
"#;

/// Any call must finish well within this, whatever the fault.
const NEVER_HANG: Duration = Duration::from_secs(5);

/// A read while the connection is black-holed ends, typed, and in bounded time.
async fn black_holed_read_fails(
    c: &forze_redis::counter::Counter,
    id: &CounterId,
    bin: &impl std::fmt::Display,
) {
    let read = tokio::time::timeout(NEVER_HANG, c.get(id))
        .await
        .expect("read must not hang");
    assert_black_holed_read_error(&read.unwrap_err(), bin);
}

/// How a read into a black hole ends: `Timeout` (the command timeout) or `Unavailable` (once
/// the unresponsive check has reconnected the client).
fn assert_black_holed_read_error(e: &forze_redis::Error, bin: &impl std::fmt::Display) {
    assert!(
        matches!(e.kind(), ErrorKind::Timeout | ErrorKind::Unavailable),
        "{bin}: {e}"
    );
}

/// End a black hole as a middlebox timeout would (forwarding again, the connections reset)
/// and wait until the pool is `Up` again.
async fn end_black_hole(proxy: &FaultProxy, forze: &forze_redis_actors::ForzeHandle) {
    proxy.set_mode(ProxyMode::Pass);
    proxy.cut_all();
    let h = forze.clone();
    wait_until(Duration::from_secs(10), "health Up again", move || {
        h.health().state == HealthState::Up
    })
    .await;
}

/// A configuration on `url` whose pool actor probes only on connection events, never
/// periodically: a drill's timeouts and lost replies are then the callers' own.
fn without_periodic_probes(url: &str, test: &str) -> forze_redis::Config {
    let mut cfg = config(Some(url), test, RESOURCES);
    cfg.redis.as_mut().unwrap().health_interval = Duration::from_secs(600);
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervisor_spawned_before_the_server_starts_falls_back_then_switches_over() {
    for bin in server_binaries() {
        let port = reserve_port();
        let url = format!("redis://127.0.0.1:{port}");
        let (forze, _join) = Forze::spawn(config(Some(&url), "late", RESOURCES))
            .await
            .unwrap();
        assert_ne!(forze.health().state, HealthState::Up);
        let strict = forze.counter("strict").unwrap();
        let lenient = forze.counter("lenient").unwrap();
        let id = CounterId::main();
        let err = strict.incr(&id, 1).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable, "{bin}: {err}");
        assert_eq!(
            lenient.incr(&id, 1).await.unwrap(),
            1,
            "{bin}: local fallback"
        );
        assert_eq!(lenient.stats().fallbacks, 1);

        let server = TestServer::start_on(&bin, port);
        let h = forze.clone();
        wait_until(
            Duration::from_secs(10),
            "health Up after the server started",
            move || h.health().state == HealthState::Up,
        )
        .await;
        // Served by Redis now: the value lands on the server.
        assert_eq!(strict.incr(&id, 5).await.unwrap(), 5, "{bin}");
        assert_eq!(
            lenient.incr(&id, 1).await.unwrap(),
            1,
            "{bin}: Redis starts from 0"
        );
        assert_eq!(lenient.stats().fallbacks, 1, "{bin}: no fallback once up");
        let keys = server.cmd(&["KEYS", "*strict*"]).unwrap();
        assert_eq!(keys.as_array().map(|a| a.len()), Some(1), "{bin}");
        forze.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restart_empties_the_script_cache_and_counters_still_work() {
    for bin in server_binaries() {
        let mut server = TestServer::start(&bin);
        let forze = spawn_ready(config(Some(&server.url()), "restart", RESOURCES)).await;
        let c = forze.counter("strict").unwrap();
        let id = CounterId::main();
        assert_eq!(c.incr(&id, 1).await.unwrap(), 1);
        server.restart();
        // Calls during the restart fail with typed errors and never hang.
        let during = tokio::time::timeout(NEVER_HANG, c.incr(&id, 1))
            .await
            .expect("no hang");
        if let Err(e) = &during {
            assert!(
                matches!(e.kind(), ErrorKind::Unavailable | ErrorKind::OutcomeUnknown),
                "{bin}: {e}"
            );
        }
        let h = forze.clone();
        wait_until(
            Duration::from_secs(10),
            "health Up after restart",
            move || h.health().state == HealthState::Up,
        )
        .await;
        let mut ok = None;
        for _ in 0..50 {
            match c.incr(&id, 1).await {
                Ok(v) => {
                    ok = Some(v);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        let v = ok.expect("counter works after the restart");
        assert!(v <= 2, "{bin}: the restarted server lost its data, got {v}");
        let stats = forze.stats().await.unwrap();
        assert!(
            stats.pool.unwrap().script_reloads >= 1,
            "{bin}: NOSCRIPT reload expected"
        );
        forze.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn black_holed_connection_is_detected_and_callers_get_typed_errors() {
    for bin in server_binaries() {
        let server = TestServer::start(&bin);
        let proxy = FaultProxy::start(server.addr()).await;
        let forze = spawn_ready(config(Some(&proxy.url()), "blackhole", RESOURCES)).await;
        let c = forze.counter("strict").unwrap();
        let id = CounterId::main();
        assert_eq!(c.incr(&id, 1).await.unwrap(), 1);

        proxy.set_mode(ProxyMode::BlackHole);
        let write = tokio::time::timeout(NEVER_HANG, c.incr(&id, 1))
            .await
            .expect("write must not hang");
        let e = write.unwrap_err();
        assert!(
            matches!(e.kind(), ErrorKind::OutcomeUnknown | ErrorKind::Unavailable),
            "{bin}: {e}"
        );
        black_holed_read_fails(&c, &id, &bin).await;
        // Detected within the unresponsive timeout (1 s here) plus probe slack.
        let h = forze.clone();
        wait_until(Duration::from_secs(3), "health leaves Up", move || {
            h.health().state != HealthState::Up
        })
        .await;

        end_black_hole(&proxy, &forze).await;
        let v = c.get(&id).await.unwrap();
        assert!((1..=2).contains(&v), "{bin}: {v}");
        forze.shutdown().await.unwrap();
    }
}

/// fred's own detector measures from a connection's latest write, so under steady traffic it
/// never finds a black hole. The pool's unresponsive check does: a call that times out makes
/// every client `PING`ed, and a client whose `PING` goes unanswered for `unresponsive_timeout`
/// is reconnected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_hole_under_steady_traffic_is_found_and_its_clients_reconnected() {
    for bin in server_binaries() {
        let server = TestServer::start(&bin);
        let proxy = FaultProxy::start(server.addr()).await;
        // No periodic health probe: the callers' own timeouts must start the check.
        let cfg = without_periodic_probes(&proxy.url(), "steadyhole");
        let forze = spawn_ready(cfg).await;
        let c = forze.counter("strict").unwrap();
        let id = CounterId::main();
        assert_eq!(c.incr(&id, 1).await.unwrap(), 1);
        assert_eq!(pool_stats(&forze).await.unresponsive_reconnects, 0);

        proxy.set_mode(ProxyMode::BlackHole);
        // A read sent every 20 ms, each on its own task: no connection goes a moment without
        // a fresh write.
        let traffic = {
            let (c, id) = (c.clone(), id.clone());
            tokio::spawn(async move {
                let mut reads = Vec::new();
                for _ in 0..300 {
                    reads.push(spawn_bounded_read(&c, &id));
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                reads
            })
        };
        // A read times out at 500 ms and the PING may go unanswered for 1 s.
        let f = forze.clone();
        let mut found = false;
        for _ in 0..50 {
            if pool_stats(&f).await.unresponsive_reconnects >= 1 {
                found = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(!traffic.is_finished(), "{bin}: the traffic ran throughout");
        assert!(found, "{bin}: no client reconnected under steady traffic");
        for read in traffic.await.unwrap() {
            if let Err(e) = read.await.unwrap() {
                assert_black_holed_read_error(&e, &bin);
            }
        }

        // Without periodic probes, only the probes run on each reconnect can publish `Up`:
        // they must wait for fred to count the client connected (it announces the reconnect
        // first), or the health stays `Degraded`.
        end_black_hole(&proxy, &forze).await;
        assert_eq!(c.get(&id).await.unwrap(), 1, "{bin}");
        forze.shutdown().await.unwrap();
    }
}

/// A server that stops answering while its connections stay open (frozen with `SIGSTOP`), then
/// answers again, with nothing reset in between. Calls during the freeze end typed and
/// bounded; each client is force-reconnected once, its reconnect waiting for the server (a
/// new connection to a frozen server opens, but its handshake is not answered), not once per
/// timeout; and the pool is `Up` again by itself once the server answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_server_is_reconnected_once_per_client_and_recovers_when_it_answers() {
    for bin in server_binaries() {
        let server = TestServer::start(&bin);
        let cfg = config(Some(&server.url()), "frozen", RESOURCES);
        let clients = cfg.redis.as_ref().unwrap().pool_size as u64;
        let forze = spawn_ready(cfg).await;
        let c = forze.counter("strict").unwrap();
        let id = CounterId::main();
        assert_eq!(c.incr(&id, 1).await.unwrap(), 1);
        let before = pool_stats(&forze).await;

        server.pause();
        let started = std::time::Instant::now();
        let mut reads = Vec::new();
        while started.elapsed() < Duration::from_secs(3) {
            reads.push(spawn_bounded_read(&c, &id));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let during = pool_stats(&forze).await;
        server.resume();

        let forced = during.unresponsive_reconnects - before.unresponsive_reconnects;
        assert!(
            (1..=clients).contains(&forced),
            "{bin}: {forced} forced reconnects of {clients} clients: {during:?}"
        );
        for read in reads {
            // The last reads may be answered once the server is back.
            match read.await.unwrap() {
                Ok(v) => assert_eq!(v, 1, "{bin}"),
                Err(e) => assert_black_holed_read_error(&e, &bin),
            }
        }
        let h = forze.clone();
        wait_until(Duration::from_secs(10), "health Up again", move || {
            h.health().state == HealthState::Up
        })
        .await;
        assert_eq!(c.get(&id).await.unwrap(), 1, "{bin}");
        forze.shutdown().await.unwrap();
    }
}

/// A reply later than the command timeout but within `unresponsive_timeout` times the call
/// out and reconnects nothing: the check's `PING` is answered once the server is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_server_times_calls_out_without_reconnecting_clients_that_still_answer() {
    for bin in server_binaries() {
        let server = std::sync::Arc::new(TestServer::start(&bin));
        let cfg = without_periodic_probes(&server.url(), "slowserver");
        let forze = spawn_ready(cfg).await;
        let c = forze.counter("strict").unwrap();
        let id = CounterId::main();
        assert_eq!(c.incr(&id, 1).await.unwrap(), 1);
        let before = pool_stats(&forze).await;

        let busy = {
            let server = server.clone();
            // Holds the server for 700 ms (command timeout 500 ms, unresponsive timeout 1 s).
            tokio::task::spawn_blocking(move || server.cmd(&["DEBUG", "SLEEP", "0.7"]))
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        let e = c.get(&id).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Timeout, "{bin}: {e}");
        busy.await.unwrap().expect("the server slept");
        // Long enough for a check to have reconnected, had its PING gone unanswered.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let after = pool_stats(&forze).await;
        assert!(
            after.unresponsive_checks > before.unresponsive_checks,
            "{bin}: the timeout started a check"
        );
        assert_eq!(after.unresponsive_reconnects, 0, "{bin}");
        assert_eq!(after.reconnects, before.reconnects, "{bin}");
        assert_eq!(c.get(&id).await.unwrap(), 1, "{bin}");
        forze.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_reply_to_an_incr_is_outcome_unknown_and_applied_exactly_once() {
    for bin in server_binaries() {
        let server = TestServer::start(&bin);
        let proxy = FaultProxy::start(server.addr()).await;
        // No periodic health probe during the drill: the lost reply must be the INCR's.
        let cfg = without_periodic_probes(&proxy.url(), "lostreply");
        let forze = spawn_ready(cfg).await;
        let c = forze.counter("strict").unwrap();
        let id = CounterId::suffix("once");
        assert_eq!(c.incr(&id, 0).await.unwrap(), 0);
        // The proxy loses the next reply on *any* connection, so the loss can land on
        // another command (the INCR then succeeds, or fails unsent on the closed connection).
        // Repeat (bounded) until an INCR itself lost its reply: OutcomeUnknown with the
        // counter one higher. In every round the INCR is applied at most once.
        let key = "forze:counter:{strict:_:once}";
        let server_value = || {
            server
                .cmd(&["GET", key])
                .unwrap()
                .as_str()
                .and_then(|v| v.parse::<i64>().ok())
                .unwrap_or(0)
        };
        let mut shown = false;
        for _ in 0..10 {
            let before = server_value();
            proxy.lose_next_reply();
            let r = tokio::time::timeout(NEVER_HANG, c.incr(&id, 1))
                .await
                .expect("no hang");
            let h = forze.clone();
            wait_until(Duration::from_secs(10), "reconnected", move || {
                h.health().state == HealthState::Up
            })
            .await;
            // Give fred every chance to replay the write: it must not.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let after = server_value();
            match r {
                Ok(v) => assert_eq!((v, after), (before + 1, before + 1), "{bin}"),
                Err(e) => {
                    assert_eq!(e.kind(), ErrorKind::OutcomeUnknown, "{bin}: {e}");
                    assert!(!e.is_retryable());
                    assert!(
                        (before..=before + 1).contains(&after),
                        "{bin}: applied {} times",
                        after - before
                    );
                    if after == before + 1 {
                        shown = true;
                        break;
                    }
                }
            }
        }
        assert!(shown, "{bin}: no INCR lost its own reply in 10 rounds");
        assert_eq!(c.get(&id).await.unwrap(), server_value());
        forze.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_gives_unavailable_or_local_fallback_and_recovers() {
    for bin in server_binaries() {
        let server = TestServer::start(&bin);
        let proxy = FaultProxy::start(server.addr()).await;
        let forze = spawn_ready(config(Some(&proxy.url()), "down", RESOURCES)).await;
        let strict = forze.counter("strict").unwrap();
        let lenient = forze.counter("lenient").unwrap();
        let id = CounterId::main();
        strict.incr(&id, 1).await.unwrap();
        proxy.set_mode(ProxyMode::Refuse);
        let h = forze.clone();
        wait_until(Duration::from_secs(5), "health Down", move || {
            h.health().state == HealthState::Down
        })
        .await;
        // A call written in the instant a reconnect attempt is accepted and dropped by the
        // "down" server may honestly end OutcomeUnknown (seen under load); none may succeed,
        // and with no connection up the calls are Unavailable.
        let mut e = strict.incr(&id, 1).await.unwrap_err();
        for _ in 0..20 {
            if e.kind() != ErrorKind::OutcomeUnknown {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            e = strict.incr(&id, 1).await.unwrap_err();
        }
        assert_eq!(e.kind(), ErrorKind::Unavailable, "{bin}: {e} ({e:?})");
        assert!(e.is_retryable());
        assert_eq!(
            lenient.incr(&id, 1).await.unwrap(),
            1,
            "{bin}: local fallback"
        );
        proxy.set_mode(ProxyMode::Pass);
        let h = forze.clone();
        wait_until(Duration::from_secs(10), "health Up", move || {
            h.health().state == HealthState::Up
        })
        .await;
        assert_eq!(strict.incr(&id, 1).await.unwrap(), 2, "{bin}");
        forze.shutdown().await.unwrap();
    }
}

/// Reads are bounded by the pool's read watch, not by a timer of the driver's per read: a read
/// sent into a black hole ends with `Timeout`, never before the command timeout. After it,
/// reads take the driver's own timer (which drops a timed-out command it has not sent yet),
/// so the watch ends no other read while the fault lasts; the pool recovers as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_into_a_black_hole_ends_by_the_read_watch_then_reads_take_the_drivers_timer() {
    use fred::interfaces::ClientLike;
    use std::time::Instant;
    for bin in server_binaries() {
        let server = TestServer::start(&bin);
        let proxy = FaultProxy::start(server.addr()).await;
        let rt = forze_redis::runtime::Runtime::build(config(
            Some(&proxy.url()),
            "read-watch",
            RESOURCES,
        ))
        .unwrap();
        let conn = rt.connection.clone().expect("redis mode");
        conn.pool().init().await.unwrap();
        let c = rt.counters.get("strict").unwrap();
        let id = CounterId::main();
        assert_eq!(c.incr(&id, 5).await.unwrap(), 5);
        for _ in 0..200 {
            assert_eq!(c.get(&id).await.unwrap(), 5, "{bin}");
        }
        assert_eq!(conn.watched_read_timeouts(), 0, "{bin}: a read timed out");

        proxy.set_mode(ProxyMode::BlackHole);
        let started = Instant::now();
        let read = tokio::time::timeout(NEVER_HANG, c.get(&id))
            .await
            .expect("read must not hang");
        let took = started.elapsed();
        let e = read.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Timeout, "{bin}: {e}");
        assert!(
            took >= conn.command_timeout(),
            "{bin}: ended early, {took:?}"
        );
        // 500 ms and one tick (62 ms) at most, well before the unresponsive check could cut
        // the connection (1 s after the first timeout).
        assert!(
            took < Duration::from_millis(950),
            "{bin}: ended late, {took:?}"
        );
        assert_eq!(
            conn.watched_read_timeouts(),
            1,
            "{bin}: not ended by the watch"
        );
        for _ in 0..3 {
            black_holed_read_fails(&c, &id, &bin).await;
        }
        assert_eq!(
            conn.watched_read_timeouts(),
            1,
            "{bin}: reads after a timeout were watched"
        );

        proxy.set_mode(ProxyMode::Pass);
        proxy.cut_all();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match c.get(&id).await {
                Ok(v) => {
                    assert_eq!(v, 5, "{bin}");
                    break;
                }
                Err(e) => assert!(Instant::now() < deadline, "{bin}: not back: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        conn.quit(Duration::from_secs(1)).await;
    }
}

/// Closing the pool of a frozen server takes one `QUIT` timeout, not one per client: the
/// clients are closed together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_a_pool_of_a_frozen_server_takes_one_timeout() {
    use forze_redis::config::RedisConfig;
    use forze_redis::connection::RedisConnection;
    for bin in server_binaries() {
        let server = TestServer::start(&bin);
        let mut cfg = RedisConfig::new(server.url());
        cfg.pool_size = 4;
        let conn = RedisConnection::build(&cfg).unwrap();
        conn.connect_in_background();
        conn.wait_connected(Duration::from_secs(5)).await.unwrap();
        server.pause();
        let timeout = Duration::from_millis(400);
        let started = std::time::Instant::now();
        conn.quit(timeout).await;
        let took = started.elapsed();
        server.resume();
        eprintln!("{bin}: 4 clients closed in {took:?} (timeout {timeout:?} each)");
        assert!(took < timeout * 2, "{bin}: {took:?}");
    }
}

//! Coalesced rate-limit decisions on real servers: decisions on one route that arrive while
//! one is in flight are decided by one script call, each in arrival order; cancelled
//! callers are not charged; a killed server sends every queued caller to the fallback;
//! `coalesce = false` sends one call per decision. A proxy delays the round trip so the first
//! decision is certainly in flight while the others arrive.

mod common;

use std::time::Duration;

use common::{config, server_binaries, spawn_ready, wait_until, TestServer};
use forze_redis::connection::HealthState;
use forze_redis::ratelimit::{DecidedBy, Decision, RateLimiter};
use forze_redis::scripts;
use forze_redis::Error;
use forze_redis_testkit::{FaultProxy, Monitor};

const RESOURCES: &str = r#"
[rate_limits.api]
permits = 10
per = "1h"
[rate_limits.plain]
permits = 10
per = "1h"
coalesce = false
"#;

const NEVER_HANG: Duration = Duration::from_secs(5);
/// The proxy's delay per direction: the first decision stays in flight for twice this.
const DELAY: Duration = Duration::from_millis(150);

/// Runs of the two rate-limit scripts on the server, by `EVALSHA` or by `EVAL` after a
/// `NOSCRIPT` (the pool's own health probes run another script, not counted).
fn script_runs(monitor: &Monitor) -> u64 {
    [
        &*scripts::RATELIMIT_ACQUIRE,
        &*scripts::RATELIMIT_ACQUIRE_MANY,
    ]
    .iter()
    .map(|script| {
        let head: String = script.source().chars().take(24).collect();
        monitor.count(&format!("evalsha {}", script.sha1().to_ascii_lowercase()))
            + monitor.count(&format!("eval {head}"))
    })
    .sum()
}

type Pending = tokio::task::JoinHandle<Result<Decision, Error>>;

/// One decision of `n` permits on `route`, started now.
fn decide(limiter: &RateLimiter, route: &'static str, n: u32) -> Pending {
    let limiter = limiter.clone();
    tokio::spawn(async move { limiter.try_acquire(route, n).await })
}

/// Two decisions of 1 permit certainly in flight (the second, started 5 ms after the first,
/// finds one in flight, goes alone too and opens the queue), then `asks` queued behind them
/// in this order (each is queued before the next starts).
async fn behind_one_in_flight(
    limiter: &RateLimiter,
    route: &'static str,
    asks: &[u32],
) -> ([Pending; 2], Vec<Pending>) {
    let first = decide(limiter, route, 1);
    tokio::time::sleep(Duration::from_millis(5)).await;
    let opener = decide(limiter, route, 1);
    tokio::time::sleep(DELAY / 3).await;
    let mut rest = Vec::new();
    for &n in asks {
        rest.push(decide(limiter, route, n));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    ([first, opener], rest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_behind_one_in_flight_share_one_call_and_are_decided_in_arrival_order() {
    for bin in server_binaries() {
        let server = TestServer::start(&bin);
        let proxy = FaultProxy::start(server.addr()).await;
        let forze = spawn_ready(config(Some(&proxy.url()), "limit-coalesce", RESOURCES)).await;
        let monitor = Monitor::start(server.socket_addr());
        proxy.set_delay(DELAY);
        // Load both scripts first: a script's first run is a NOSCRIPT, then an EVAL.
        let (first, rest) =
            behind_one_in_flight(&forze.rate_limit("api").unwrap(), "warm", &[1]).await;
        for t in first.into_iter().chain(rest) {
            t.await.unwrap().unwrap();
        }
        for (name, coalesced) in [("api", true), ("plain", false)] {
            let limiter = forze.rate_limit(name).unwrap();
            let before = script_runs(&monitor);
            // 10 permits, no refill to speak of: the two in flight take 1 each, then in order
            // 5 (granted, 3 left), 5 (denied), 3 (granted, 0 left), 1 (denied), 1 (denied).
            let (first, rest) = behind_one_in_flight(&limiter, "orders", &[5, 5, 3, 1, 1]).await;
            let [first, opener] = first;
            let (first, opener) = (
                first.await.unwrap().unwrap(),
                opener.await.unwrap().unwrap(),
            );
            assert!(
                first.allowed && first.remaining == 9 && opener.allowed && opener.remaining == 8,
                "{bin} {name}: {first:?} {opener:?}"
            );
            let mut got = Vec::new();
            for t in rest {
                let d = tokio::time::timeout(NEVER_HANG, t)
                    .await
                    .expect("no hang")
                    .unwrap()
                    .unwrap();
                assert_eq!(d.decided_by, DecidedBy::Redis, "{bin} {name}");
                got.push((d.allowed, d.remaining));
            }
            if coalesced {
                assert_eq!(
                    got,
                    vec![(true, 3), (false, 3), (true, 0), (false, 0), (false, 0)],
                    "{bin} {name}: decided out of arrival order"
                );
            } else {
                // Separate calls on separate pooled connections (each delayed by the proxy)
                // may reach the server in any order; whatever the order, the permits granted
                // are exactly those taken from the 8 left, and a denial takes nothing.
                let granted: u32 = [5, 5, 3, 1, 1]
                    .iter()
                    .zip(&got)
                    .filter(|(_, (allowed, _))| *allowed)
                    .map(|(n, _)| n)
                    .sum();
                let left = got.iter().map(|(_, remaining)| *remaining).min().unwrap();
                assert_eq!(u64::from(granted), 8 - left, "{bin} {name}: {got:?}");
            }
            // Let the last commands reach the feed.
            tokio::time::sleep(Duration::from_millis(200)).await;
            let calls = script_runs(&monitor) - before;
            if coalesced {
                // The two in flight alone, the five behind them in one call (or two, if the
                // scheduler starts one late on a loaded machine; the order holds either way).
                assert!(calls <= 4, "{bin}: 7 decisions took {calls} script calls");
            } else {
                assert_eq!(calls, 7, "{bin}: coalesce = false sends each decision");
            }
        }
        forze.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_callers_are_not_charged_and_a_killed_server_sends_the_queue_to_the_fallback() {
    for bin in server_binaries() {
        let mut server = TestServer::start(&bin);
        let proxy = FaultProxy::start(server.addr()).await;
        let forze = spawn_ready(config(Some(&proxy.url()), "limit-faults", RESOURCES)).await;
        let limiter = forze.rate_limit("api").unwrap();
        proxy.set_delay(DELAY);

        // Three queued callers give up before their batch is sent: only the other two count.
        let (first, rest) = behind_one_in_flight(&limiter, "cancel", &[2, 2, 2, 1, 1]).await;
        for t in &rest[..3] {
            t.abort();
        }
        for t in first {
            t.await.unwrap().unwrap();
        }
        let mut remaining = Vec::new();
        for t in rest.into_iter().skip(3) {
            let d = tokio::time::timeout(NEVER_HANG, t)
                .await
                .expect("no hang")
                .unwrap()
                .unwrap();
            assert!(d.allowed, "{bin}");
            remaining.push(d.remaining);
        }
        assert_eq!(
            remaining,
            vec![7, 6],
            "{bin}: cancelled callers were charged"
        );

        // The server stops while decisions queue: every caller is answered by the fallback.
        let (first, rest) = behind_one_in_flight(&limiter, "killed", &[1, 1, 1, 1]).await;
        server.stop();
        let mut decided = Vec::new();
        for t in first.into_iter().chain(rest) {
            let d = tokio::time::timeout(NEVER_HANG, t)
                .await
                .expect("no hang")
                .unwrap()
                .expect("never a Redis error");
            decided.push(d.decided_by);
        }
        assert!(decided.contains(&DecidedBy::Fallback), "{bin}: {decided:?}");
        server.restart();
        proxy.set_delay(Duration::ZERO);
        let h = forze.clone();
        wait_until(
            Duration::from_secs(10),
            "health Up after restart",
            move || h.health().state == HealthState::Up,
        )
        .await;
        let mut back = None;
        for _ in 0..50 {
            let d = limiter.try_acquire("after", 1).await.unwrap();
            if d.decided_by == DecidedBy::Redis {
                back = Some(d);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(back.is_some(), "{bin}: decisions go back to Redis");
        forze.shutdown().await.unwrap();
    }
}

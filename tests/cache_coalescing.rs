//! Coalesced L1 misses on real servers: concurrent misses of one key share one read; a read
//! made stale by this process's own write is never joined; a cancelled first reader and a
//! killed server strand nobody; `coalesce_misses = false` sends every read. A proxy delays
//! the round trip so the first read is certainly in flight while the others arrive.

mod common;

use std::time::Duration;

use common::{config, server_binaries, spawn_ready, tracked_on, wait_until, TestServer};
use forze_redis::cache::{Cache, CacheKey};
use forze_redis::connection::HealthState;
use forze_redis_testkit::FaultProxy;

const RESOURCES: &str = r#"
[caches.docs]
ttl = "60s"
[caches.docs.l1]
ttl = "10s"
[caches.plain]
ttl = "60s"
[caches.plain.l1]
ttl = "10s"
coalesce_misses = false
"#;

const NEVER_HANG: Duration = Duration::from_secs(5);
/// The proxy's delay per direction: the first read stays in flight for twice this.
const DELAY: Duration = Duration::from_millis(150);

/// `n` reads of `key` started while a first one is certainly in flight; every answer.
async fn reads_behind_one(c: &Cache, key: &CacheKey, n: usize) -> Vec<Option<String>> {
    let spawn = |c: &Cache| {
        let (c, key) = (c.clone(), key.clone());
        tokio::spawn(async move { c.get::<String>(&key).await })
    };
    let first = spawn(c);
    tokio::time::sleep(DELAY / 3).await;
    let rest: Vec<_> = (0..n).map(|_| spawn(c)).collect();
    let mut out = vec![first.await.unwrap().expect("first read")];
    for t in rest {
        let read = tokio::time::timeout(NEVER_HANG, t).await.expect("no hang");
        out.push(read.unwrap().expect("read"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misses_behind_one_read_in_flight_share_it() {
    for bin in server_binaries() {
        let server = TestServer::start(&bin);
        let proxy = FaultProxy::start(server.addr()).await;
        let forze = spawn_ready(config(Some(&proxy.url()), "coalesce-reads", RESOURCES)).await;
        tracked_on(&forze, 1).await;
        proxy.set_delay(DELAY);
        for (name, coalesced) in [("docs", true), ("plain", false)] {
            let c = forze.cache(name).unwrap();
            // A key missing in Redis: the L1 never fills, so every read is a miss.
            let missing = CacheKey::new("missing");
            let before = (server.command_calls("get"), c.stats().reads_coalesced);
            let answers = reads_behind_one(&c, &missing, 30).await;
            assert!(answers.iter().all(Option::is_none), "{bin} {name}");
            let sent = server.command_calls("get") - before.0;
            let joined = c.stats().reads_coalesced - before.1;
            if coalesced {
                // One read for all of them; a caller the scheduler starts only after that
                // read ended leads another (at most a couple on a loaded machine).
                assert!(sent <= 3, "{bin}: 31 concurrent misses sent {sent} GET");
                assert_eq!(sent + joined, 31, "{bin}: every miss either read or joined");
            } else {
                assert_eq!(sent, 31, "{bin}: coalesce_misses = false sends every read");
                assert_eq!(joined, 0, "{bin}");
            }
            // A present key: every caller gets the value.
            let present = CacheKey::new("present");
            c.set(&present, "v1", None).await.unwrap();
            // The write evicted it from the L1 of this process: the next reads miss.
            let answers = reads_behind_one(&c, &present, 20).await;
            assert!(
                answers.iter().all(|a| a.as_deref() == Some("v1")),
                "{bin} {name}: {answers:?}"
            );
        }
        forze.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_in_flight_before_this_process_writes_is_never_joined() {
    for bin in server_binaries() {
        let server = TestServer::start(&bin);
        let proxy = FaultProxy::start(server.addr()).await;
        let forze = spawn_ready(config(Some(&proxy.url()), "coalesce-ryw", RESOURCES)).await;
        tracked_on(&forze, 1).await;
        let c = forze.cache("docs").unwrap();
        let key = CacheKey::new("ryw");
        c.set(&key, "v1", None).await.unwrap();
        proxy.set_delay(DELAY);
        let l1_invalidations = |c: &Cache| c.stats().l1.map_or(0, |l| l.invalidations);
        let mut exercised = 0;
        for round in 0..5 {
            let new = format!("v{}", round + 2);
            // A first read in flight (a 300 ms round trip through the proxy)...
            let first = {
                let (c, key) = (c.clone(), key.clone());
                tokio::spawn(async move { c.get::<String>(&key).await })
            };
            tokio::time::sleep(Duration::from_millis(30)).await;
            // ...then this process begins a write: its local eviction happens before it is
            // sent (seen in the L1's invalidation count).
            let before = l1_invalidations(&c);
            let write = {
                let (c, key, new) = (c.clone(), key.clone(), new.clone());
                tokio::spawn(async move { c.set(&key, &new, None).await })
            };
            let h = c.clone();
            wait_until(
                Duration::from_secs(2),
                "the write's local eviction",
                move || l1_invalidations(&h) > before,
            )
            .await;
            // A read that starts now must not join the read sent before the write began.
            let in_flight = !first.is_finished();
            let joined_before = c.stats().reads_coalesced;
            c.get::<String>(&key).await.unwrap();
            assert_eq!(
                c.stats().reads_coalesced,
                joined_before,
                "{bin} round {round}: joined a read sent before this process's write"
            );
            exercised += usize::from(in_flight);
            write.await.unwrap().unwrap();
            first.await.unwrap().unwrap();
            assert_eq!(
                c.get::<String>(&key).await.unwrap().as_deref(),
                Some(new.as_str())
            );
        }
        assert!(
            exercised > 0,
            "{bin}: the first read was never still in flight"
        );
        forze.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_first_reader_or_a_killed_server_strands_nobody() {
    for bin in server_binaries() {
        let mut server = TestServer::start(&bin);
        let proxy = FaultProxy::start(server.addr()).await;
        let forze = spawn_ready(config(Some(&proxy.url()), "coalesce-faults", RESOURCES)).await;
        tracked_on(&forze, 1).await;
        let c = forze.cache("docs").unwrap();
        let key = CacheKey::new("k");
        proxy.set_delay(DELAY);

        // The first reader cancelled mid-read: the others read on their own.
        let first = {
            let (c, key) = (c.clone(), key.clone());
            tokio::spawn(async move { c.get::<String>(&key).await })
        };
        tokio::time::sleep(DELAY / 3).await;
        let rest: Vec<_> = (0..10)
            .map(|_| {
                let (c, key) = (c.clone(), key.clone());
                tokio::spawn(async move { c.get::<String>(&key).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(20)).await;
        first.abort();
        for t in rest {
            let read = tokio::time::timeout(NEVER_HANG, t)
                .await
                .expect("a cancelled first reader strands nobody");
            assert_eq!(read.unwrap().expect("read"), None, "{bin}");
        }

        // The server killed while reads wait on one in flight: all fail open (a miss).
        proxy.set_delay(Duration::ZERO);
        let readers: Vec<_> = (0..64)
            .map(|_| {
                let (c, key) = (c.clone(), key.clone());
                tokio::spawn(async move {
                    let mut answers = 0u32;
                    for _ in 0..200 {
                        let read = tokio::time::timeout(NEVER_HANG, c.get::<String>(&key))
                            .await
                            .expect("every read is bounded");
                        read.expect("reads fail open");
                        answers += 1;
                    }
                    answers
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(100)).await;
        server.stop();
        tokio::time::sleep(Duration::from_millis(300)).await;
        server.restart();
        for r in readers {
            assert_eq!(r.await.unwrap(), 200, "{bin}");
        }
        let h = forze.clone();
        wait_until(
            Duration::from_secs(10),
            "health Up after restart",
            move || h.health().state == HealthState::Up,
        )
        .await;
        tracked_on(&forze, 1).await;
        c.set(&key, "back", None).await.unwrap();
        let answers = reads_behind_one(&c, &key, 10).await;
        assert!(
            answers.iter().all(|a| a.as_deref() == Some("back")),
            "{bin}"
        );
        forze.shutdown().await.unwrap();
    }
}

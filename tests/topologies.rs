//! Beyond one server: L1 coherence on a 3-primary cluster (every primary tracked, a resharded
//! slot flushes and re-tracks), a frozen primary found by the unresponsive check, and a
//! Sentinel failover followed without a restart, on every server binary found.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{config, k, pool_stats, spawn_bounded_read, spawn_ready, tracked_on};
use forze_redis::cache::CacheKey;
use forze_redis::counter::CounterId;
use forze_redis::lock::LockId;
use forze_redis::ErrorKind;
use forze_redis_actors::{Cache, Counter, ForzeHandle};
use forze_redis_testkit::{
    key_slot, server_binaries, wait_until_async, TestCluster, TestSentinels, TestServer,
};

const RESOURCES: &str = r#"
[caches.plain]
ttl = "120s"
[caches.hot]
ttl = "120s"
[caches.hot.l1]
ttl = "60s"
[counters.orders]
[locks.jobs]
lease = "5s"
"#;

const KEYS: usize = 60;

/// Longer than any bounded call here may take.
const NEVER_HANG: Duration = Duration::from_secs(5);

/// The Redis key of cache entry `k<i>` of `hot` (docs/keys.md).
fn redis_key(i: usize) -> String {
    format!("forze:cache:{{hot:_:k{i}}}")
}

/// Wait until `cache` returns `want` for every key; returns how long that took.
async fn converge(cache: &Cache, want: u64, what: &str) -> Duration {
    common::converge(cache, KEYS, want, what).await
}

/// Two supervisors on `url`, both tracking `primaries` primaries; every key written as 1 by the
/// first (the writer's cache) and read back through the second's L1 (the reader's cache).
async fn writer_and_reader(
    url: &str,
    test: &str,
    primaries: u64,
) -> (Vec<ForzeHandle>, Cache, Cache) {
    let mut reps = Vec::new();
    for _ in 0..2 {
        let r = spawn_ready(config(Some(url), test, RESOURCES)).await;
        tracked_on(&r, primaries).await;
        reps.push(r);
    }
    let (writer, reader) = (reps[0].cache("hot").unwrap(), reps[1].cache("hot").unwrap());
    for i in 0..KEYS {
        writer.set(&k(i), &1u64, None).await.unwrap();
    }
    converge(&reader, 1, "warm-up").await;
    (reps, writer, reader)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_over_every_slot_invalidate_every_replicas_l1_on_a_cluster() {
    for bin in server_binaries() {
        let cluster = TestCluster::start(&bin, 3);
        let owners: BTreeSet<usize> = (0..KEYS).map(|i| cluster.owner_of(&redis_key(i))).collect();
        assert_eq!(owners.len(), 3, "{bin}: the keys live on every primary");
        let mut reps = Vec::new();
        for _ in 0..3 {
            let r = spawn_ready(config(Some(&cluster.url()), "cl-coherence", RESOURCES)).await;
            tracked_on(&r, 3).await;
            reps.push(r);
        }
        let caches: Vec<Cache> = reps.iter().map(|r| r.cache("hot").unwrap()).collect();
        for i in 0..KEYS {
            caches[0].set(&k(i), &1u64, None).await.unwrap();
        }
        for c in &caches[1..] {
            converge(c, 1, "warm-up").await;
            // Served from the L1 now.
            let hits = c.stats().l1.unwrap().hits;
            for i in 0..KEYS {
                assert_eq!(c.get::<u64>(&k(i)).await.unwrap(), Some(1));
            }
            assert_eq!(c.stats().l1.unwrap().hits, hits + KEYS as u64, "{bin}");
        }
        let before: Vec<u64> = caches
            .iter()
            .map(|c| c.stats().l1.unwrap().invalidations)
            .collect();
        for i in 0..KEYS {
            caches[0].set(&k(i), &2u64, None).await.unwrap();
        }
        for (n, c) in caches.iter().enumerate().skip(1) {
            let took = converge(c, 2, &format!("{bin}: replica {n}")).await;
            let pushed = c.stats().l1.unwrap().invalidations - before[n];
            eprintln!(
                "{bin}: replica {n} saw all {KEYS} updates in {took:?} ({pushed} invalidations)"
            );
            // Every key was evicted by a push from the primary that holds it, not by TTL.
            assert!(
                pushed >= KEYS as u64,
                "{bin}: replica {n}: {pushed} invalidations"
            );
        }
        for r in reps {
            r.shutdown().await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resharded_slot_flushes_every_l1_and_is_tracked_on_its_new_primary() {
    for bin in server_binaries() {
        let cluster = TestCluster::start(&bin, 3);
        let (reps, writer, reader) = writer_and_reader(&cluster.url(), "cl-reshard", 3).await;
        let flushed = |c: &Cache| {
            c.stats()
                .l1
                .unwrap()
                .flushes
                .get("topology_changed")
                .copied()
                .unwrap_or(0)
        };
        assert_eq!(flushed(&reader), 0);
        // Move the slot of k0 (with its key) to another primary.
        let slot = key_slot(redis_key(0).as_bytes());
        let from = cluster.owner_of_slot(slot);
        cluster.migrate_slot(slot, (from + 1) % 3);
        for r in &reps {
            let r2 = r.clone();
            wait_until_async(Duration::from_secs(10), "topology change seen", || {
                let r = r2.clone();
                async move {
                    matches!(r.tracking_stats().await, Ok(Some(s)) if s.topology_changes >= 1 && s.confirmed)
                }
            })
            .await;
        }
        assert!(flushed(&reader) >= 1, "{bin}: the reader's L1 was flushed");
        // Writes follow the slot (MOVED), and its new primary's pushes reach the reader.
        converge(&reader, 1, "refill").await;
        for i in 0..KEYS {
            writer.set(&k(i), &3u64, None).await.unwrap();
        }
        let took = converge(&reader, 3, &format!("{bin}: after resharding")).await;
        eprintln!("{bin}: after resharding the reader saw every update in {took:?}");
        // A non-idempotent write is sent once: sent to a slot's old owner, fred cannot follow
        // the redirection and the call is OutcomeUnknown (never a silent replay); that
        // client's slot map is fresh after it, so at most one call per pool client (2 here)
        // fails, and the rest go through.
        let orders = reps[0].counter("orders").unwrap();
        let id = CounterId::suffix("moved");
        let slot = key_slot(b"forze:counter:{orders:_:moved}");
        assert_eq!(orders.incr(&id, 1).await.unwrap(), 1);
        cluster.migrate_slot(slot, (cluster.owner_of_slot(slot) + 1) % 3);
        let (mut ok, mut unknown) = (1i64, 0i64);
        for _ in 0..6 {
            match orders.incr(&id, 1).await {
                Ok(_) => ok += 1,
                Err(e) if e.kind() == forze_redis::ErrorKind::OutcomeUnknown => unknown += 1,
                Err(e) => panic!("{bin}: {e}"),
            }
        }
        let value = orders.get(&id).await.unwrap();
        eprintln!("{bin}: counter across a moved slot: {ok} ok, {unknown} unknown, value {value}");
        assert!(ok >= 5 && unknown <= 2, "{bin}: {ok} ok, {unknown} unknown");
        assert!(value >= ok && value <= ok + unknown, "{bin}: value {value}");
        for r in reps {
            r.shutdown().await.unwrap();
        }
    }
}

/// With one primary of three frozen, every health probe sees it: the pool is `Degraded` on
/// every probe, never `Up` (a probe sent to a random primary saw it one time in three), and
/// `Up` again once the primary answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_primary_keeps_the_health_degraded_on_every_probe() {
    use forze_redis::connection::HealthState;
    for bin in server_binaries() {
        let cluster = TestCluster::start(&bin, 3);
        let mut cfg = config(Some(&cluster.url()), "cl-health", RESOURCES);
        let redis = cfg.redis.as_mut().unwrap();
        redis.command_timeout = Duration::from_millis(300);
        redis.health_interval = Duration::from_millis(100);
        let forze = spawn_ready(cfg).await;
        cluster.nodes()[0].pause();
        // The first probe that reaches the frozen node ends at the command timeout.
        tokio::time::sleep(Duration::from_millis(800)).await;
        let mut seen = std::collections::BTreeMap::new();
        for _ in 0..30 {
            *seen
                .entry(format!("{:?}", forze.health().state))
                .or_insert(0) += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        cluster.nodes()[0].resume();
        eprintln!("{bin}: health with one primary of three frozen: {seen:?}");
        assert!(!seen.contains_key("Up"), "{bin}: {seen:?}");
        assert!(seen.contains_key("Degraded"), "{bin}: {seen:?}");
        wait_until_async(Duration::from_secs(5), "health Up again", || async {
            forze.health().state == HealthState::Up
        })
        .await;
        forze.shutdown().await.unwrap();
    }
}

/// A write to a key already moved ends a pool client's connection task (fred 10.1 cannot
/// follow that `ASK`). Repeated, such ends must not leave the client down for growing
/// backoffs: the other calls routed to it keep working throughout the migration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_on_keys_being_migrated_do_not_take_their_clients_down() {
    for bin in server_binaries() {
        let cluster = TestCluster::start(&bin, 3);
        let mut cfg = config(Some(&cluster.url()), "cl-ask-storm", RESOURCES);
        // The default backoff ceiling: a client left down that long fails what is routed to it.
        cfg.redis.as_mut().unwrap().reconnect.max_delay = Duration::from_secs(5);
        let forze = spawn_ready(cfg).await;
        let orders = forze.counter("orders").unwrap();
        let moved = CounterId::suffix("moving");
        let steady = CounterId::suffix("steady");
        orders.incr(&moved, 1).await.unwrap();
        let slot = key_slot(b"forze:counter:{orders:_:moving}");
        assert_ne!(
            slot,
            key_slot(b"forze:counter:{orders:_:steady}"),
            "{bin}: the two keys must be in different slots"
        );
        let to = (cluster.owner_of_slot(slot) + 1) % 3;
        let from = cluster.begin_migration(slot, to);
        assert_eq!(cluster.move_keys(slot, from, to, usize::MAX), 1, "{bin}");
        let mut failed = Vec::new();
        let began = Instant::now();
        let mut slowest = Duration::ZERO;
        let mut moved_took = Vec::new();
        for round in 0..40 {
            let started = Instant::now();
            let m = orders.incr(&moved, 1).await;
            moved_took.push((started.elapsed().as_millis(), m.map_err(|e| e.kind()).err()));
            let started = Instant::now();
            if let Err(e) = orders.incr(&steady, 1).await {
                failed.push((round, e.kind(), started.elapsed()));
            }
            slowest = slowest.max(started.elapsed());
        }
        eprintln!("{bin}: slowest steady call {slowest:?}; moved (ms, error): {moved_took:?}");
        eprintln!(
            "{bin}: 40 rounds in {:?} during the migration; failed: {failed:?}",
            began.elapsed()
        );
        assert!(
            failed.is_empty(),
            "{bin}: calls on a key not being moved failed: {failed:?}"
        );
        cluster.finish_migration(slot, from, to);
        forze.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_during_a_slot_migration_end_typed_and_bounded_then_resume() {
    // fred 10.1 does not follow ASK here (its ASKING goes through the slot's old route and
    // the command times out): during a migration, calls on keys already moved must still end
    // with a value that is right, a miss, or a typed error, within the command timeout.
    for bin in server_binaries() {
        let cluster = TestCluster::start(&bin, 3);
        let forze = spawn_ready(config(Some(&cluster.url()), "cl-ask", RESOURCES)).await;
        let plain = forze.cache("plain").unwrap();
        let key = CacheKey::new("ask");
        let rkey = "forze:cache:{plain:_:ask}";
        plain.set(&key, &1u64, None).await.unwrap();
        let slot = key_slot(rkey.as_bytes());
        let to = (cluster.owner_of_slot(slot) + 1) % 3;
        let from = cluster.begin_migration(slot, to);
        assert_eq!(cluster.move_keys(slot, from, to, usize::MAX), 1, "{bin}");
        let started = Instant::now();
        let read = plain.get::<u64>(&key).await.unwrap();
        assert!(matches!(read, None | Some(1)), "{bin}: {read:?}");
        match plain.set(&key, &2u64, None).await {
            Ok(()) => {}
            Err(e) => assert!(
                matches!(
                    e.kind(),
                    forze_redis::ErrorKind::Unavailable
                        | forze_redis::ErrorKind::OutcomeUnknown
                        | forze_redis::ErrorKind::Timeout
                ),
                "{bin}: {e}"
            ),
        }
        let took = started.elapsed();
        eprintln!("{bin}: read {read:?} and a write during the migration took {took:?}");
        assert!(took < Duration::from_secs(3), "{bin}: {took:?}");
        cluster.finish_migration(slot, from, to);
        // The slot has its new owner: MOVED is followed, calls work again.
        let mut ok = false;
        for i in 0..40 {
            let w = plain.set(&key, &3u64, None).await;
            let r = plain.get::<u64>(&key).await;
            if i % 10 == 0 {
                eprintln!(
                    "{bin}: after the migration: write {w:?}, read {r:?}, {:?}",
                    plain.stats().bypassed
                );
            }
            if w.is_ok() && r.as_ref().ok() == Some(&Some(3)) {
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(ok, "{bin}: calls resume after the migration");
        let pool = pool_stats(&forze).await;
        eprintln!(
            "{bin}: fred connection tasks restarted: {}",
            pool.task_restarts
        );
        let v = cluster.nodes()[to].cmd(&["EXISTS", rkey]).unwrap();
        assert_eq!(
            v.as_int(),
            Some(1),
            "{bin}: the value lives on the new owner"
        );
        forze.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentinel_failover_is_followed_without_a_restart() {
    for bin in server_binaries() {
        failover_is_followed(&bin.to_string(), TestSentinels::start(&bin), |g| {
            g.failover()
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_sentinel_primary_is_replaced_and_followed() {
    for bin in server_binaries() {
        let group = TestSentinels::start(&bin);
        failover_is_followed(&bin.to_string(), group, |g| g.kill_primary()).await;
    }
}

/// A frozen primary (`SIGSTOP`: no connection error ever reaches the clients) is failed over
/// by the sentinels; the pool's unresponsive check reconnects the clients whose calls time
/// out, and fred's reconnect asks the sentinels for the primary again until they name the new
/// one. Without the check the clients would wait on the frozen primary until it resumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_sentinel_primary_is_replaced_and_followed() {
    for bin in server_binaries() {
        let group = TestSentinels::start(&bin);
        failover_is_followed(&bin.to_string(), group, |g| g.freeze_primary()).await;
    }
}

/// Two replicas on `group`: warm an L1, take a lock token and count, fail over with
/// `fail_over`, then check that the same supervisors work on the new primary, the L1 was
/// flushed and is coherent again, and lock tokens still increase.
async fn failover_is_followed(
    bin: &str,
    mut group: TestSentinels,
    fail_over: impl FnOnce(&mut TestSentinels) -> u16,
) {
    {
        let (reps, writer, reader) = writer_and_reader(&group.url(), "sentinel", 1).await;
        let orders = reps[0].counter("orders").unwrap();
        let id = CounterId::suffix("n");
        assert_eq!(orders.incr(&id, 5).await.unwrap(), 5);
        let jobs = reps[0].lock("jobs").unwrap();
        let before = jobs.try_acquire(&LockId::new("j")).await.unwrap().unwrap();
        let t1 = before.token();
        assert!(before.release().await.unwrap());
        // Let the replica catch up so the failover keeps the fence, then fail over.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let old = group.primary_port();
        let failing = Instant::now();
        let new = fail_over(&mut group);
        eprintln!("{bin}: failover {old} -> {new} in {:?}", failing.elapsed());
        let started = Instant::now();
        // Operations resume on the new primary, on the same supervisors.
        let mut value = None;
        for _ in 0..300 {
            if let Ok(v) = orders.incr(&id, 1).await {
                value = Some(v);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let value = value.expect("counter usable after the failover");
        eprintln!(
            "{bin}: counter usable {:?} after the failover",
            started.elapsed()
        );
        assert!(value >= 6, "{bin}: the counter kept its value ({value})");
        for r in &reps {
            let r2 = r.clone();
            wait_until_async(Duration::from_secs(15), "tracking on the new primary", || {
                let r = r2.clone();
                async move {
                    matches!(r.tracking_stats().await, Ok(Some(s)) if s.confirmed && s.confirmations >= 2)
                }
            })
            .await;
        }
        let flushes: u64 = reader.stats().l1.unwrap().flushes.values().sum();
        assert!(flushes >= 1, "{bin}: the reader's L1 was flushed");
        // New writes reach the reader through the new primary's pushes.
        for i in 0..KEYS {
            let mut ok = false;
            for _ in 0..100 {
                if writer.set(&k(i), &2u64, None).await.is_ok() {
                    ok = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert!(ok, "{bin}: write after the failover");
        }
        converge(&reader, 2, &format!("{bin}: after the failover")).await;
        // Lock tokens still increase.
        let mut after = None;
        for _ in 0..100 {
            if let Ok(Some(g)) = jobs.try_acquire(&LockId::new("j")).await {
                after = Some(g);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let after = after.expect("lock acquired after the failover");
        assert!(
            after.token() > t1,
            "{bin}: token {} after {t1}",
            after.token()
        );
        after.release().await.unwrap();
        for r in reps {
            r.shutdown().await.unwrap();
        }
    }
}

/// One tracking reader (one primary's connection) panics while the others run: that
/// primary's writes would no longer be pushed, so the session counts it a loss (the L1 is
/// flushed and untrusted), then tracks all three primaries again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_tracking_reader_is_a_loss_and_tracking_comes_back() {
    for bin in server_binaries() {
        let cluster = TestCluster::start(&bin, 3);
        let (reps, writer, reader) = writer_and_reader(&cluster.url(), "cl-reader", 3).await;
        let before = reps[1].tracking_stats().await.unwrap().unwrap();
        reps[1].inject_tracking_reader_panic();
        let r1 = reps[1].clone();
        wait_until_async(
            Duration::from_secs(10),
            "the panic counted as a loss",
            || {
                let r = r1.clone();
                async move {
                    matches!(r.tracking_stats().await, Ok(Some(s))
                    if s.losses > before.losses
                        && s.confirmations > before.confirmations
                        && s.confirmed
                        && s.primaries == 3)
                }
            },
        )
        .await;
        // Coherent again on every primary: every key's update reaches the reader by push.
        for i in 0..KEYS {
            writer.set(&k(i), &2u64, None).await.unwrap();
        }
        converge(&reader, 2, &format!("{bin}: after the reader's panic")).await;
        for r in reps {
            r.shutdown().await.unwrap();
        }
    }
}

/// The ids of the connections named `name` on `node` whose `CLIENT LIST` line has `field`.
fn clients_with(node: &TestServer, name: &str, field: &str) -> Vec<String> {
    let list = node.cmd(&["CLIENT", "LIST"]).unwrap();
    let list = list.as_str().expect("a client list").to_string();
    list.lines()
        .filter(|l| l.contains(&format!(" name={name} ")) && l.contains(field))
        .filter_map(|l| l.strip_prefix("id=")?.split(' ').next().map(str::to_string))
        .collect()
}

/// A tracking connection lost while the topology poll waits on a silent node: the loss is
/// acted on at once (L1 untrusted), not after the poll's timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tracking_loss_is_not_held_back_by_a_slow_topology_poll() {
    for bin in server_binaries() {
        let cluster = TestCluster::start(&bin, 3);
        let mut cfg = config(Some(&cluster.url()), "cl-poll", RESOURCES);
        // The poll's bound: long, so that a loss waiting for it would show.
        cfg.redis.as_mut().unwrap().command_timeout = Duration::from_secs(3);
        let forze = spawn_ready(cfg).await;
        tracked_on(&forze, 3).await;
        let name = "forze-test-tracking";
        // The node the poll asks (`CLUSTER NODES` on a connection without tracking).
        let watched = (0..3)
            .find(|&i| !clients_with(&cluster.nodes()[i], name, "cmd=cluster|nodes").is_empty())
            .expect("the topology watch connection");
        let other = (watched + 1) % 3;
        cluster.nodes()[watched].pause();
        // A poll (every 100 ms) is now waiting on the frozen node, for up to 3 s.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let tracking = clients_with(&cluster.nodes()[other], name, "flags=t");
        assert_eq!(tracking.len(), 1, "{bin}: {tracking:?}");
        cluster.nodes()[other]
            .cmd(&["CLIENT", "KILL", "ID", &tracking[0]])
            .unwrap();
        let killed = Instant::now();
        let hot = forze.cache("hot").unwrap();
        while hot.stats().l1.unwrap().trusted && killed.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let took = killed.elapsed();
        cluster.nodes()[watched].resume();
        assert!(
            took < Duration::from_millis(1200),
            "{bin}: the L1 stayed trusted {took:?} after its tracking connection closed"
        );
        eprintln!("{bin}: untrusted {took:?} after the close");
        tracked_on(&forze, 3).await;
        forze.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_cluster_primary_untrusts_every_l1_until_it_is_back() {
    for bin in server_binaries() {
        let mut cluster = TestCluster::start(&bin, 3);
        let (reps, writer, reader) = writer_and_reader(&cluster.url(), "cl-kill", 3).await;
        // Kill the primary of k0: the reader loses one of its three tracking connections, so
        // every L1 is flushed and untrusted (it cannot hear of writes on that node's slots).
        let dead = cluster.owner_of(&redis_key(0));
        cluster.stop_node(dead);
        let r1 = reps[1].clone();
        wait_until_async(Duration::from_secs(10), "tracking lost", || {
            let r = r1.clone();
            async move { matches!(r.tracking_stats().await, Ok(Some(s)) if !s.confirmed) }
        })
        .await;
        let l1 = reader.stats().l1.unwrap();
        assert!(!l1.trusted && l1.entries == 0, "{bin}: {l1:?}");
        // Whatever the cluster answers meanwhile (a live node's slots, CLUSTERDOWN once the
        // failure is agreed), reads are never stale and every call ends typed and bounded.
        let alive = (0..KEYS)
            .find(|&i| cluster.owner_of_slot(key_slot(redis_key(i).as_bytes())) != dead)
            .unwrap();
        let started = Instant::now();
        match writer.set(&k(alive), &2u64, None).await {
            Ok(()) => assert_eq!(reader.get::<u64>(&k(alive)).await.unwrap(), Some(2)),
            Err(e) => assert!(
                matches!(
                    e.kind(),
                    forze_redis::ErrorKind::Unavailable
                        | forze_redis::ErrorKind::OutcomeUnknown
                        | forze_redis::ErrorKind::Timeout
                ),
                "{bin}: {e}"
            ),
        }
        let read = reader.get::<u64>(&k(0)).await.unwrap();
        assert!(read.is_none() || read == Some(1), "{bin}: {read:?}");
        assert!(started.elapsed() < Duration::from_secs(3), "{bin}");
        // Back: tracked on all three again, and writes reach the reader by push.
        cluster.restart_node(dead);
        for r in &reps {
            let r2 = r.clone();
            wait_until_async(Duration::from_secs(20), "tracking back on 3 primaries", || {
                let r = r2.clone();
                async move {
                    matches!(r.tracking_stats().await, Ok(Some(s)) if s.confirmed && s.primaries == 3 && s.confirmations >= 2)
                }
            })
            .await;
        }
        for i in 0..KEYS {
            let mut ok = false;
            for _ in 0..100 {
                if writer.set(&k(i), &3u64, None).await.is_ok() {
                    ok = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert!(ok, "{bin}: write after the node came back");
        }
        let took = converge(&reader, 3, &format!("{bin}: after the node came back")).await;
        eprintln!("{bin}: node back; the reader saw every update in {took:?}");
        for r in reps {
            r.shutdown().await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_on_an_importing_empty_primary_reaches_the_l1() {
    // Scale-out: a new primary holds no slot yet; a slot is being migrated to it, and a client
    // that follows ASK writes a moved key there. Only a subscriber that tracks the empty
    // primary too hears of that write.
    for bin in server_binaries() {
        let cluster = TestCluster::start_with_spares(&bin, 3, 1);
        let spare = 3;
        let reader = spawn_ready(config(Some(&cluster.url()), "cl-spare", RESOURCES)).await;
        tracked_on(&reader, 4).await;
        let writer = spawn_ready(config(Some(&cluster.url()), "cl-spare", RESOURCES)).await;
        let hot = reader.cache("hot").unwrap();
        writer
            .cache("hot")
            .unwrap()
            .set(&k(0), &1u64, None)
            .await
            .unwrap();
        converge_one(&hot, 0, 1).await;
        let slot = key_slot(redis_key(0).as_bytes());
        let from = cluster.begin_migration(slot, spare);
        assert_eq!(cluster.move_keys(slot, from, spare, usize::MAX), 1, "{bin}");
        let before = hot.stats().l1.unwrap().invalidations;
        let replies = cluster.nodes()[spare]
            .cmd_pipeline(&[&["ASKING"], &["SET", &redis_key(0), "written elsewhere"]])
            .unwrap();
        assert_eq!(
            replies[1].as_str().as_deref(),
            Some("OK"),
            "{bin}: {replies:?}"
        );
        let r = reader.clone();
        wait_until_async(
            Duration::from_secs(5),
            "the push from the importing node",
            || {
                let h = r.cache("hot").unwrap();
                async move { h.stats().l1.unwrap().invalidations > before }
            },
        )
        .await;
        // The old value is gone from the L1: whatever the read gets now, it is not 1.
        assert_ne!(hot.get::<u64>(&k(0)).await.unwrap(), Some(1), "{bin}");
        cluster.finish_migration(slot, from, spare);
        reader.shutdown().await.unwrap();
        writer.shutdown().await.unwrap();
    }
}

async fn converge_one(cache: &Cache, i: usize, want: u64) {
    for _ in 0..200 {
        if cache.get::<u64>(&k(i)).await.unwrap() == Some(want) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("k{i} never read {want}");
}

/// Counter `c<i>` of `orders` and its Redis key.
fn order_counter(i: usize) -> (CounterId, String) {
    (
        CounterId::suffix(format!("c{i}")),
        format!("forze:counter:{{orders:_:c{i}}}"),
    )
}

/// A 3-primary cluster for freeze tests, a supervisor on it (command timeout 300 ms,
/// unresponsive timeout 400 ms, no periodic probe: the reads' own timeouts start the checks),
/// counters `c0..` at 1, and three indexes: the owner of `c0` (the one to freeze), a counter
/// on another primary, and that primary.
struct FreezeSetup {
    cluster: TestCluster,
    forze: ForzeHandle,
    orders: Counter,
    frozen: usize,
    alive: usize,
    heir: usize,
}

async fn freeze_setup(bin: &forze_redis_testkit::ServerBinary, test: &str) -> FreezeSetup {
    let cluster = TestCluster::start(bin, 3);
    let mut cfg = config(Some(&cluster.url()), test, RESOURCES);
    let redis = cfg.redis.as_mut().unwrap();
    redis.command_timeout = Duration::from_millis(300);
    redis.unresponsive_timeout = Duration::from_millis(400);
    redis.health_interval = Duration::from_secs(600);
    let forze = spawn_ready(cfg).await;
    let orders = forze.counter("orders").unwrap();
    for i in 0..KEYS {
        assert_eq!(orders.incr(&order_counter(i).0, 1).await.unwrap(), 1);
    }
    let frozen = cluster.owner_of(&order_counter(0).1);
    let alive = (0..KEYS)
        .find(|&i| cluster.owner_of(&order_counter(i).1) != frozen)
        .unwrap();
    let heir = cluster.owner_of(&order_counter(alive).1);
    FreezeSetup {
        cluster,
        forze,
        orders,
        frozen,
        alive,
        heir,
    }
}

/// Give the slot of counter `c0` to `heir`, as a failover does: its owner on every node but
/// `frozen`, with a config epoch above the frozen node's.
fn give_slot_of_key0(cluster: &TestCluster, frozen: usize, heir: usize) {
    let slot = key_slot(order_counter(0).1.as_bytes()).to_string();
    let heir_id = cluster.nodes()[heir]
        .cmd(&["CLUSTER", "MYID"])
        .unwrap()
        .as_str()
        .expect("a node id")
        .to_string();
    cluster.nodes()[heir]
        .cmd(&["CLUSTER", "BUMPEPOCH"])
        .unwrap();
    for (i, node) in cluster.nodes().iter().enumerate() {
        if i != frozen {
            node.cmd(&["CLUSTER", "SETSLOT", &slot, "NODE", &heir_id])
                .unwrap();
        }
    }
}

/// Reads of key `0` (on the primary to be frozen) and of key `alive` (on another), one pair
/// every 50 ms for `span`, each on its own task; their results once every read has ended.
async fn steady_reads(
    orders: &Counter,
    alive: usize,
    span: Duration,
) -> Vec<(usize, forze_redis::Result<i64>)> {
    let started = Instant::now();
    let mut reads = Vec::new();
    while started.elapsed() < span {
        for key in [0, alive] {
            reads.push((key, spawn_bounded_read(orders, &order_counter(key).0)));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut results = Vec::new();
    for (key, read) in reads {
        results.push((key, read.await.unwrap()));
    }
    results
}

/// One primary stops answering while its connections stay open (frozen with `SIGSTOP`), under
/// steady reads of its keys and of another primary's, twice.
///
/// First with the slot map unchanged: the unresponsive check finds the node and re-opens or
/// refreshes nothing (a refresh would block every node's calls while fred tries the silent
/// node, and re-route nothing), so the other primary's keys are served throughout.
///
/// Then with the frozen node's slot of key `0` given to another primary meanwhile, as a
/// failover does: the check sees the moved slot and refreshes the slot map, and key `0` is
/// served by its new owner while the old one is still frozen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_cluster_primary_is_found_and_its_moved_slots_are_followed() {
    for bin in server_binaries() {
        let FreezeSetup {
            cluster,
            forze,
            orders,
            frozen,
            alive,
            heir,
        } = freeze_setup(&bin, "cl-frozen").await;

        // 1. Frozen for about 2 s (1.6 s of reads, then the last ones end), below the
        // cluster's node timeout (3 s): the cluster itself never fails the node over nor goes
        // down.
        let before = pool_stats(&forze).await;
        cluster.nodes()[frozen].pause();
        let reads = steady_reads(&orders, alive, Duration::from_millis(1600)).await;
        let during = pool_stats(&forze).await;
        cluster.nodes()[frozen].resume();
        assert!(
            during.unresponsive_checks > before.unresponsive_checks,
            "{bin}: no check ran: {during:?}"
        );
        assert_eq!(
            (during.unresponsive_reconnects, during.reconnects),
            (before.unresponsive_reconnects, before.reconnects),
            "{bin}: nothing moved, yet a client was reconnected or refreshed: {during:?}"
        );
        for (key, read) in reads {
            match read {
                Ok(v) => assert_eq!(v, 1, "{bin}"),
                Err(e) => {
                    assert_eq!(key, 0, "{bin}: the live primary's key failed: {e}");
                    assert!(
                        matches!(e.kind(), ErrorKind::Timeout | ErrorKind::Unavailable),
                        "{bin}: {e}"
                    );
                }
            }
        }
        for i in 0..KEYS {
            converge_counter(&orders, i, 1, &bin).await;
        }
        // Checks still running at the resume did not refresh either.
        let after = pool_stats(&forze).await;
        assert_eq!(
            after.unresponsive_reconnects, before.unresponsive_reconnects,
            "{bin}: {after:?}"
        );

        // 2. Frozen again; meanwhile the slot of key `0` goes to the live primary (its owner
        // on both live nodes, with a config epoch above the frozen node's).
        let before = pool_stats(&forze).await;
        cluster.nodes()[frozen].pause();
        give_slot_of_key0(&cluster, frozen, heir);
        let started = Instant::now();
        let mut served = None;
        while served.is_none() && started.elapsed() < Duration::from_millis(2000) {
            // The key is new on its new owner.
            if let Ok(Ok(v)) =
                tokio::time::timeout(NEVER_HANG, orders.get(&order_counter(0).0)).await
            {
                served = Some((v, started.elapsed()));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let during = pool_stats(&forze).await;
        cluster.nodes()[frozen].resume();
        assert_eq!(
            served.map(|(v, _)| v),
            Some(0),
            "{bin}: the moved slot was not followed while its old owner was frozen: {during:?}"
        );
        assert!(
            during.unresponsive_reconnects > before.unresponsive_reconnects,
            "{bin}: {during:?}"
        );
        eprintln!(
            "{bin}: the moved slot was served {:?} after the freeze",
            served.unwrap().1
        );
        for i in 1..KEYS {
            converge_counter(&orders, i, 1, &bin).await;
        }
        forze.shutdown().await.unwrap();
    }
}

/// The unresponsive check when it cannot learn where a silent primary's slots went: it must
/// leave the client alone (a refresh then re-routes nothing and may block every node's
/// calls while fred tries the silent one), and the client recovers by itself.
///
/// First the whole cluster is frozen, so no node answers the check's `PING`. Then only one
/// primary is frozen and its slot of key `0` is given to another, but the live nodes refuse
/// `CLUSTER SLOTS` (an ACL rule), so no answer says the slot moved: the check does not
/// refresh, the other primary's keys are served throughout, and once the old owner answers
/// (with `MOVED`) fred follows the slot on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_check_that_learns_nothing_leaves_the_client_alone() {
    for bin in server_binaries() {
        let FreezeSetup {
            cluster,
            forze,
            orders,
            frozen,
            alive,
            heir,
        } = freeze_setup(&bin, "cl-unknown").await;

        // 1. Every node frozen, for less than the cluster's node timeout.
        let before = pool_stats(&forze).await;
        for node in cluster.nodes() {
            node.pause();
        }
        let reads = steady_reads(&orders, alive, Duration::from_millis(1600)).await;
        let during = pool_stats(&forze).await;
        for node in cluster.nodes() {
            node.resume();
        }
        assert!(
            during.unresponsive_checks > before.unresponsive_checks,
            "{bin}: no check ran: {during:?}"
        );
        assert_eq!(
            (during.unresponsive_reconnects, during.reconnects),
            (before.unresponsive_reconnects, before.reconnects),
            "{bin}: no node answered, yet a client was reconnected or refreshed: {during:?}"
        );
        for (_, read) in reads {
            match read {
                Ok(v) => assert_eq!(v, 1, "{bin}"),
                Err(e) => assert!(
                    matches!(e.kind(), ErrorKind::Timeout | ErrorKind::Unavailable),
                    "{bin}: {e}"
                ),
            }
        }
        for i in 0..KEYS {
            converge_counter(&orders, i, 1, &bin).await;
        }

        // 2. One primary frozen and its slot of key `0` moved, while the live nodes refuse
        // `CLUSTER SLOTS` to every client.
        for (i, node) in cluster.nodes().iter().enumerate() {
            if i != frozen {
                node.cmd(&["ACL", "SETUSER", "default", "-cluster|slots"])
                    .unwrap();
            }
        }
        let before = pool_stats(&forze).await;
        cluster.nodes()[frozen].pause();
        give_slot_of_key0(&cluster, frozen, heir);
        let reads = steady_reads(&orders, alive, Duration::from_millis(1600)).await;
        let during = pool_stats(&forze).await;
        for (i, node) in cluster.nodes().iter().enumerate() {
            if i != frozen {
                node.cmd(&["ACL", "SETUSER", "default", "+cluster|slots"])
                    .unwrap();
            }
        }
        cluster.nodes()[frozen].resume();
        assert!(
            during.unresponsive_checks > before.unresponsive_checks,
            "{bin}: no check ran: {during:?}"
        );
        assert_eq!(
            during.unresponsive_reconnects, before.unresponsive_reconnects,
            "{bin}: no node told where the slots went, yet the slot map was refreshed: {during:?}"
        );
        for (key, read) in reads {
            match read {
                Ok(v) => assert_eq!(v, 1, "{bin}"),
                Err(e) => {
                    assert_eq!(key, 0, "{bin}: the live primary's key failed: {e}");
                    assert!(
                        matches!(e.kind(), ErrorKind::Timeout | ErrorKind::Unavailable),
                        "{bin}: {e}"
                    );
                }
            }
        }
        // The old owner answers `MOVED` now, and fred follows it: the key is new on its
        // new owner.
        converge_counter(&orders, 0, 0, &bin).await;
        for i in 1..KEYS {
            converge_counter(&orders, i, 1, &bin).await;
        }
        forze.shutdown().await.unwrap();
    }
}

/// Wait (bounded) until counter `c<i>` reads `want`.
async fn converge_counter(orders: &Counter, i: usize, want: i64, bin: &impl std::fmt::Display) {
    for _ in 0..100 {
        if orders.get(&order_counter(i).0).await.ok() == Some(want) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{bin}: counter c{i} never read {want}");
}

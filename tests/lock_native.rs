//! Lock release and renewal by the server's own commands where it has them (`DELIFEQ` on
//! Valkey 9 and later, `SET … IFEQ` on Valkey 8.1 and later), by the scripts elsewhere, with
//! the same answers: released or renewed while ours, refused once another owner holds the key
//! or the lease expired. A failover to a server without them switches to the scripts.

mod common;

use std::time::Duration;

use common::{config, server_binaries, spawn_ready, TestServer};
use forze_redis::lock::LockId;
use forze_redis::scripts;
use forze_redis_testkit::{Monitor, Resp, ServerKind, TestCluster};
use std::collections::BTreeSet;

const RESOURCES: &str = r#"
[locks.jobs]
lease = "5s"
"#;

/// The (major, minor) of a server version string.
fn major_minor(version: &str) -> (u32, u32) {
    let mut parts = version.split('.').map(|p| p.parse().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

fn has_delifeq(kind: ServerKind, version: &str) -> bool {
    kind == ServerKind::Valkey && major_minor(version).0 >= 9
}

fn has_set_ifeq(kind: ServerKind, version: &str) -> bool {
    let since = match kind {
        ServerKind::Valkey => (8, 1),
        _ => (8, 4),
    };
    major_minor(version) >= since
}

/// Runs of `script` the monitor saw (by its SHA-1, or its source after a `NOSCRIPT`).
fn script_runs(monitor: &Monitor, script: &scripts::Script) -> u64 {
    monitor.count(&format!("evalsha {}", script.sha1().to_ascii_lowercase()))
        + monitor.count(&format!(
            "eval {}",
            script.source().chars().take(24).collect::<String>()
        ))
}

fn extend_scripts(monitor: &Monitor) -> u64 {
    script_runs(monitor, &scripts::LOCK_EXTEND)
}

/// The one key of the lock named `name`.
fn lock_key(server: &TestServer, name: &str) -> String {
    let keys = server.cmd(&["KEYS", &format!("*{name}}}")]).unwrap();
    keys.as_array().unwrap()[0].as_str().unwrap().to_string()
}

fn pttl(server: &TestServer, key: &str) -> i64 {
    match server.cmd(&["PTTL", key]).unwrap() {
        Resp::Integer(ms) => ms,
        other => panic!("PTTL: {other:?}"),
    }
}

const RENEWED: &str = r#"
[locks.jobs]
lease = "1500ms"
extend_every = "300ms"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewals_use_set_ifeq_where_the_server_has_it_and_answer_alike() {
    for bin in server_binaries() {
        let server = TestServer::start(&bin);
        let forze = spawn_ready(config(Some(&server.url()), "extend-native", RENEWED)).await;
        let monitor = Monitor::start(server.socket_addr());
        let lock = forze.lock("jobs").unwrap();
        let native = has_set_ifeq(bin.kind, &bin.version);

        // Kept past twice its lease by the heartbeater, then by hand: still ours, same value.
        let kept = lock
            .try_acquire(&LockId::new("kept"))
            .await
            .unwrap()
            .expect("free");
        let key = lock_key(&server, "kept");
        let value = server.cmd(&["GET", &key]).unwrap().as_str();
        tokio::time::sleep(Duration::from_millis(3_000)).await;
        assert!(!kept.is_lost(), "{bin}: renewed past its lease");
        assert!(kept.extend().await.unwrap(), "{bin}: extended by hand");
        assert_eq!(
            server.cmd(&["GET", &key]).unwrap().as_str(),
            value,
            "{bin}: value kept"
        );
        assert!(pttl(&server, &key) > 1_000, "{bin}: a full lease again");

        // Another owner holds the key now: not renewed, lost, and its value left alone.
        let stolen = lock
            .try_acquire(&LockId::new("stolen"))
            .await
            .unwrap()
            .expect("free");
        let key = lock_key(&server, "stolen");
        server
            .cmd(&["SET", &key, "1:someone-else", "PX", "60000"])
            .unwrap();
        assert!(!stolen.extend().await.unwrap(), "{bin}: not ours any more");
        assert!(
            stolen.is_lost(),
            "{bin}: a renewal that finds another owner loses the lease"
        );
        assert_eq!(
            server.cmd(&["GET", &key]).unwrap().as_str().as_deref(),
            Some("1:someone-else"),
            "{bin}: left alone"
        );
        assert!(pttl(&server, &key) > 50_000, "{bin}: its expiry left alone");

        // The key is gone (expired, evicted): not renewed, and not created again.
        let gone = lock
            .try_acquire(&LockId::new("gone"))
            .await
            .unwrap()
            .expect("free");
        let key = lock_key(&server, "gone");
        server.cmd(&["DEL", &key]).unwrap();
        assert!(!gone.extend().await.unwrap(), "{bin}: gone");
        assert_eq!(
            server.cmd(&["EXISTS", &key]).unwrap(),
            Resp::Integer(0),
            "{bin}: not recreated"
        );

        // Let the last commands reach the feed.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let scripted = extend_scripts(&monitor);
        if native {
            assert_eq!(scripted, 0, "{bin}: renewals by SET IFEQ, not the script");
        } else {
            // At least the three extends by hand, plus the heartbeater's ticks.
            assert!(
                scripted >= 5,
                "{bin}: renewals by the script, saw {scripted}"
            );
        }

        // By owner alone (a holder without its guard: the token is unknown): the script.
        let id = LockId::new("by-owner");
        let guard = lock.try_acquire(&id).await.unwrap().expect("free");
        let owner = guard.owner().to_string();
        assert!(
            lock.extend_as(&id, &owner).await.unwrap(),
            "{bin}: extended by owner"
        );
        assert!(
            !lock.extend_as(&id, "someone-else").await.unwrap(),
            "{bin}: not theirs"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            extend_scripts(&monitor) >= scripted + 2,
            "{bin}: renewals by owner alone use the script"
        );
        drop((kept, stolen, gone, guard));
        forze.shutdown().await.unwrap();
    }
}

/// A failover to a server without `SET … IFEQ` and `DELIFEQ` (an older Valkey or a Redis in
/// its place on the same address): held leases whose keys the new server lacks are lost, and
/// new leases are renewed and released by the scripts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_to_a_server_without_native_commands_switches_to_the_scripts() {
    let binaries = server_binaries();
    let newer = binaries
        .iter()
        .find(|b| has_set_ifeq(b.kind, &b.version) && has_delifeq(b.kind, &b.version));
    let older = binaries.iter().find(|b| !has_set_ifeq(b.kind, &b.version));
    let (Some(newer), Some(older)) = (newer, older) else {
        eprintln!("skipped: needs a server with and one without SET IFEQ and DELIFEQ");
        return;
    };
    let mut server = TestServer::start(newer);
    let forze = spawn_ready(config(Some(&server.url()), "extend-failover", RENEWED)).await;
    let lock = forze.lock("jobs").unwrap();
    let before = lock
        .try_acquire(&LockId::new("before"))
        .await
        .unwrap()
        .expect("free");
    assert!(before.extend().await.unwrap(), "{newer}: renewed natively");
    let first = lock
        .try_acquire(&LockId::new("first"))
        .await
        .unwrap()
        .expect("free");
    assert!(first.release().await.unwrap(), "{newer}: released natively");
    let mut lost = before.lost();

    // The newer server goes; the older one takes its address, empty.
    let port = server.port();
    server.stop();
    drop(server);
    let server = TestServer::start_on(older, port);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let held = loop {
        match lock.try_acquire(&LockId::new("after")).await {
            Ok(Some(guard)) => break guard,
            Ok(None) => panic!("{older}: an empty server holds nothing"),
            Err(e) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "{older}: no reconnect: {e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let monitor = Monitor::start(server.socket_addr());
    // The old lease's key is gone: its next renewal finds it missing.
    tokio::time::timeout(Duration::from_secs(3), lost.wait())
        .await
        .expect("the lease held across the failover is lost");
    // The new lease is kept past twice its lease by the script, and released by it.
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    assert!(
        !held.is_lost(),
        "{older}: renewed by the script past its lease"
    );
    assert!(
        held.extend().await.unwrap(),
        "{older}: extended by the script"
    );
    assert!(
        held.release().await.unwrap(),
        "{older}: released by the script"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        extend_scripts(&monitor) >= 3,
        "{older}: renewals by the script"
    );
    assert!(
        script_runs(&monitor, &scripts::LOCK_RELEASE) >= 1,
        "{older}: released by the script"
    );
    forze.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn releases_use_delifeq_where_the_server_has_it_and_answer_alike() {
    for bin in server_binaries() {
        let server = TestServer::start(&bin);
        let forze = spawn_ready(config(Some(&server.url()), "release-native", RESOURCES)).await;
        let monitor = Monitor::start(server.socket_addr());
        let lock = forze.lock("jobs").unwrap();
        let native = has_delifeq(bin.kind, &bin.version);

        for round in 0..3 {
            let id = LockId::new(format!("r{round}"));
            let guard = lock.try_acquire(&id).await.unwrap().expect("free");
            assert!(
                guard.release().await.unwrap(),
                "{bin}: our lease is released"
            );
            assert!(
                lock.try_acquire(&id).await.unwrap().is_some(),
                "{bin}: free again"
            );
        }

        // Another owner holds the key now (its value names another owner): not ours.
        let id = LockId::new("stolen");
        let guard = lock.try_acquire(&id).await.unwrap().expect("free");
        let keys = server.cmd(&["KEYS", "*stolen}"]).unwrap();
        let key = keys.as_array().unwrap()[0].as_str().unwrap();
        server
            .cmd(&["SET", &key, "1:someone-else", "PX", "5000"])
            .unwrap();
        assert!(!guard.release().await.unwrap(), "{bin}: not ours any more");
        let held = server.cmd(&["GET", &key]).unwrap().as_str();
        assert_eq!(held.as_deref(), Some("1:someone-else"), "{bin}: left alone");

        // A lease whose key is gone (expired, or evicted): nothing to release.
        let guard = lock
            .try_acquire(&LockId::new("gone"))
            .await
            .unwrap()
            .expect("free");
        let keys = server.cmd(&["KEYS", "*gone}"]).unwrap();
        let key = keys.as_array().unwrap()[0].as_str().unwrap();
        server.cmd(&["DEL", &key]).unwrap();
        assert!(!guard.release().await.unwrap(), "{bin}: gone");

        // Let the last commands reach the feed.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let release_script = script_runs(&monitor, &scripts::LOCK_RELEASE);
        let delifeq = monitor.count("delifeq");
        // At least the five releases above (guards dropped unreleased release too).
        if native {
            assert!(
                delifeq >= 5 && release_script == 0,
                "{bin}: DELIFEQ expected, got {delifeq} DELIFEQ and {release_script} scripts"
            );
        } else {
            assert!(
                delifeq == 0 && release_script >= 5,
                "{bin}: the script expected, got {delifeq} DELIFEQ and {release_script} scripts"
            );
        }
        // By owner alone (a holder that lost its guard): the script, on every server.
        let id = LockId::new("by-owner");
        let guard = lock.try_acquire(&id).await.unwrap().expect("free");
        let owner = guard.owner().to_string();
        assert!(
            lock.release_as(&id, &owner).await.unwrap(),
            "{bin}: released by owner"
        );
        assert!(
            !lock.release_as(&id, &owner).await.unwrap(),
            "{bin}: already released"
        );
        assert!(
            !guard.release().await.unwrap(),
            "{bin}: the guard's lease is gone"
        );

        forze.shutdown().await.unwrap();

        if native {
            // An ACL user that may run scripts but not DELIFEQ: releases still succeed.
            server
                .cmd(&[
                    "ACL", "SETUSER", "locker", "on", ">pw", "~*", "+@all", "-delifeq",
                ])
                .unwrap();
            let url = format!("redis://locker:pw@{}", server.addr());
            let forze = spawn_ready(config(Some(&url), "release-noperm", RESOURCES)).await;
            let lock = forze.lock("jobs").unwrap();
            for round in 0..2 {
                let id = LockId::new(format!("p{round}"));
                let guard = lock.try_acquire(&id).await.unwrap().expect("free");
                assert!(
                    guard.release().await.unwrap(),
                    "{bin}: released by the script"
                );
                assert!(
                    lock.try_acquire(&id).await.unwrap().is_some(),
                    "{bin}: free again"
                );
            }
            forze.shutdown().await.unwrap();
        }
    }
}

/// On a cluster, one tick's renewals cover leases on every primary: natively, one pipeline
/// whose commands each go to their key's node; by the script, one call per hash slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewals_on_a_cluster_reach_every_primary() {
    const LOCKS: usize = 48;
    for bin in server_binaries() {
        let cluster = TestCluster::start(&bin, 3);
        let forze = spawn_ready(config(Some(&cluster.url()), "extend-cluster", RENEWED)).await;
        let lock = forze.lock("jobs").unwrap();
        let mut guards = Vec::new();
        for i in 0..LOCKS {
            let id = LockId::new(format!("c{i}"));
            guards.push(lock.try_acquire(&id).await.unwrap().expect("free"));
        }
        // The lock keys (docs/keys.md).
        let keys: Vec<String> = (0..LOCKS)
            .map(|i| format!("forze:lock:{{jobs:_:c{i}}}"))
            .collect();
        let owners: BTreeSet<usize> = keys.iter().map(|k| cluster.owner_of(k)).collect();
        assert_eq!(owners.len(), 3, "{bin}: the leases live on every primary");
        let monitors: Vec<Monitor> = cluster
            .nodes()
            .iter()
            .map(|n| Monitor::start(n.socket_addr()))
            .collect();
        // Twice the lease: each lease was renewed on its own primary.
        tokio::time::sleep(Duration::from_millis(3_000)).await;
        let scripted: u64 = monitors.iter().map(extend_scripts).sum();
        if has_set_ifeq(bin.kind, &bin.version) {
            assert_eq!(scripted, 0, "{bin}: renewed by SET IFEQ");
        } else {
            assert!(scripted > 0, "{bin}: renewed by the script");
        }
        for (g, key) in guards.iter().zip(&keys) {
            assert!(!g.is_lost(), "{bin}: {key} renewed");
            let held = cluster.cmd_for_key(key, &["GET", key]).unwrap().as_str();
            assert_eq!(
                held,
                Some(format!("{}:{}", g.token(), g.owner())),
                "{bin}: {key}"
            );
        }
        let renewed = futures::future::join_all(guards.iter().map(|g| g.extend())).await;
        assert!(
            renewed.into_iter().all(|r| r.unwrap()),
            "{bin}: extended by hand"
        );
        let stats = forze.heartbeat_stats().await.unwrap().unwrap();
        assert_eq!(stats.lost, 0, "{bin}: nothing lost");
        drop(guards);
        forze.shutdown().await.unwrap();
    }
}

/// A renewal sent to a server that stopped answering (paused, not closed) ends with an error
/// within the command timeout, natively as by the script, counts as a failed heartbeat call,
/// and leaves the lease to its deadline; once the server answers again, renewals go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_to_a_paused_server_fails_in_bounded_time_and_renewals_resume() {
    const LONG: &str = r#"
[locks.jobs]
lease = "4s"
extend_every = "300ms"
"#;
    for bin in server_binaries() {
        let server = TestServer::start(&bin);
        let forze = spawn_ready(config(Some(&server.url()), "extend-paused", LONG)).await;
        let lock = forze.lock("jobs").unwrap();
        let guard = lock
            .try_acquire(&LockId::new("p"))
            .await
            .unwrap()
            .expect("free");
        assert!(
            guard.extend().await.unwrap(),
            "{bin}: renewed before the pause"
        );
        let failed0 = forze.heartbeat_stats().await.unwrap().unwrap().failed_calls;

        server.pause();
        let started = std::time::Instant::now();
        let answer = tokio::time::timeout(Duration::from_secs(3), guard.extend())
            .await
            .expect("bounded by the command timeout");
        let took = started.elapsed();
        assert!(
            answer.is_err(),
            "{bin}: a paused server renews nothing: {answer:?}"
        );
        // Let a heartbeat tick meet the pause too.
        tokio::time::sleep(Duration::from_millis(700)).await;
        server.resume();
        eprintln!("{bin}: the renewal failed after {took:?}");

        let failed1 = forze.heartbeat_stats().await.unwrap().unwrap().failed_calls;
        assert!(
            failed1 > failed0,
            "{bin}: the heartbeater's renewal failed too"
        );
        assert!(!guard.is_lost(), "{bin}: still within its deadline");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            match guard.extend().await {
                Ok(true) => break,
                Ok(false) => panic!("{bin}: the lease was lost across the pause"),
                Err(e) => {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "{bin}: no renewal: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        assert!(guard.release().await.unwrap(), "{bin}: still ours");
        forze.shutdown().await.unwrap();
    }
}

//! Lock release by the server's own `DELIFEQ` where it has one (Valkey 9 and later), by the
//! script elsewhere, with the same answers: released while ours, refused once another owner
//! holds the key or the lease expired.

mod common;

use std::time::Duration;

use common::{config, server_binaries, spawn_ready, TestServer};
use forze_redis::lock::LockId;
use forze_redis::scripts;
use forze_redis_testkit::{Monitor, ServerKind};

const RESOURCES: &str = r#"
[locks.jobs]
lease = "5s"
"#;

fn has_delifeq(kind: ServerKind, version: &str) -> bool {
    let major: u32 = version
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    kind == ServerKind::Valkey && major >= 9
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
        let release_script = monitor.count(&format!(
            "evalsha {}",
            scripts::LOCK_RELEASE.sha1().to_ascii_lowercase()
        )) + monitor.count(&format!(
            "eval {}",
            scripts::LOCK_RELEASE
                .source()
                .chars()
                .take(24)
                .collect::<String>()
        ));
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

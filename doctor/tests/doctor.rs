//! `forze-doctor` against private servers: a healthy one, one with `maxmemory-policy
//! allkeys-lru`, an ACL user that may not run scripts, `CLIENT` denied by ACL and renamed
//! away, and a cluster with a slot unassigned. Each must get the right verdict, and the exit
//! status must say whether a check failed.

use std::collections::BTreeMap;
use std::process::Command;

use forze_redis_testkit::{server_binaries, TestCluster, TestServer};

/// Run the doctor with `--json` on `url`: (exit code, verdict status by check).
fn doctor(url: &str) -> (i32, BTreeMap<String, String>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_forze-doctor"))
        .args(["--json", "--timeout", "2s", url])
        .output()
        .expect("forze-doctor runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let doc: serde_json::Value = serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {text} / {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let checks = doc["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .map(|c| {
            (
                c["check"].as_str().unwrap().to_string(),
                c["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    (out.status.code().unwrap_or(-1), checks, text)
}

fn status<'a>(checks: &'a BTreeMap<String, String>, check: &str) -> &'a str {
    checks.get(check).map(String::as_str).unwrap_or("missing")
}

#[test]
fn a_healthy_server_passes_every_check_that_matters() {
    for bin in server_binaries() {
        let server = TestServer::start(&bin);
        let (code, checks, text) = doctor(&server.url());
        for check in [
            "connect",
            "server",
            "resp3_client_tracking",
            "scripts",
            "clock",
            "maxmemory_policy",
            "cluster_slots",
            "latency",
        ] {
            assert_eq!(status(&checks, check), "pass", "{bin}: {check}: {text}");
        }
        // The test servers run without AOF: a warning, not a failure.
        assert_eq!(status(&checks, "persistence"), "warn", "{bin}: {text}");
        assert_eq!(code, 0, "{bin}: {text}");
    }
}

#[test]
fn allkeys_eviction_fails_the_policy_check() {
    let bin = server_binaries().remove(0);
    let server = TestServer::start_with(
        &bin,
        None,
        &["--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru"],
    );
    let (code, checks, text) = doctor(&server.url());
    assert_eq!(status(&checks, "maxmemory_policy"), "fail", "{text}");
    assert!(text.contains("allkeys-lru"), "{text}");
    assert_eq!(code, 1, "{text}");
    // volatile-* only warns.
    server
        .cmd(&["CONFIG", "SET", "maxmemory-policy", "volatile-lru"])
        .unwrap();
    let (code, checks, text) = doctor(&server.url());
    assert_eq!(status(&checks, "maxmemory_policy"), "warn", "{text}");
    assert_eq!(code, 0, "{text}");
}

#[test]
fn an_acl_user_without_evalsha_fails_the_scripts_check() {
    let bin = server_binaries().remove(0);
    let server = TestServer::start(&bin);
    server
        .cmd(&[
            "ACL", "SETUSER", "app", "on", ">s3cret", "~*", "&*", "+@all", "-evalsha",
        ])
        .unwrap();
    let url = server.url().replace("redis://", "redis://app:s3cret@");
    let (code, checks, text) = doctor(&url);
    assert_eq!(status(&checks, "connect"), "pass", "{text}");
    assert_eq!(status(&checks, "scripts"), "fail", "{text}");
    assert_eq!(status(&checks, "resp3_client_tracking"), "pass", "{text}");
    assert!(!text.contains("s3cret"), "the password was printed: {text}");
    assert_eq!(code, 1, "{text}");
    // EVALSHA allowed and the script already loaded, but no EVAL: forze's fallback after a
    // script cache flush would be refused, so this fails too.
    let source = forze_redis::scripts::SERVER_TIME.source();
    server.cmd(&["SCRIPT", "LOAD", source]).unwrap();
    server
        .cmd(&[
            "ACL", "SETUSER", "noeval", "on", ">pw", "~*", "&*", "+@all", "-eval",
        ])
        .unwrap();
    let url = server.url().replace("redis://", "redis://noeval:pw@");
    let (code, checks, text) = doctor(&url);
    assert_eq!(status(&checks, "scripts"), "fail", "{text}");
    assert!(text.contains("EVAL refused"), "{text}");
    assert_eq!(code, 1, "{text}");
}

#[test]
fn client_commands_denied_or_renamed_fail_the_tracking_check() {
    let bin = server_binaries().remove(0);
    // Denied by ACL.
    let server = TestServer::start(&bin);
    server
        .cmd(&[
            "ACL", "SETUSER", "noclient", "on", ">pw", "~*", "&*", "+@all", "-client",
        ])
        .unwrap();
    let url = server.url().replace("redis://", "redis://noclient:pw@");
    let (code, checks, text) = doctor(&url);
    assert_eq!(status(&checks, "resp3_client_tracking"), "fail", "{text}");
    assert_eq!(code, 1, "{text}");
    // Renamed away in the server's configuration.
    let renamed = TestServer::start_with(&bin, Some("rename-command CLIENT \"\"\n"), &[]);
    let (code, checks, text) = doctor(&renamed.url());
    assert_eq!(status(&checks, "resp3_client_tracking"), "fail", "{text}");
    assert_eq!(code, 1, "{text}");
}

#[test]
fn a_cluster_with_a_slot_unassigned_fails_the_slots_check() {
    let bin = server_binaries().remove(0);
    let cluster = TestCluster::start(&bin, 3);
    let (code, checks, text) = doctor(&cluster.url());
    assert_eq!(status(&checks, "cluster_slots"), "pass", "{text}");
    assert_eq!(code, 0, "{text}");
    let owner = cluster.owner_of_slot(0);
    cluster.nodes()[owner]
        .cmd(&["CLUSTER", "DELSLOTS", "0"])
        .unwrap();
    // The other nodes learn of it through the cluster bus.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (code, checks, text) = doctor(&cluster.url());
        if status(&checks, "cluster_slots") == "fail" {
            assert!(text.contains("slots not served: 0"), "{text}");
            assert_eq!(code, 1, "{text}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the unassigned slot was not seen: {text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

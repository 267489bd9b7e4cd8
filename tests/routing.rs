//! Tenant routing on real servers: tenants on two servers isolated, one pool per endpoint,
//! LRU eviction closing a pool while calls are in flight (each ends with a result or a typed
//! error), and credentials rotated by eviction.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{config, spawn_ready};
use forze_redis::cache::CacheKey;
use forze_redis::counter::CounterId;
use forze_redis::keys::TenantId;
use forze_redis::ErrorKind;
use forze_redis_actors::ForzeHandle;
use forze_redis_testkit::{server_binaries, wait_until, TestServer};

fn t(s: &str) -> TenantId {
    TenantId::new(s).unwrap()
}

fn resources(max_pools: usize, routes: &[(&str, String)]) -> String {
    let mut r = format!(
        r#"
[counters.orders]
routed = true
[counters.visits]
routed = true
fallback = "local"
[caches.docs]
routed = true
ttl = "60s"
[caches.docs.l1]
ttl = "30s"
[routing]
max_pools = {max_pools}
[routing.tenants]
"#
    );
    for (tenant, url) in routes {
        r.push_str(&format!("{tenant} = \"{url}\"\n"));
    }
    r
}

fn counter_key(tenant: &str, suffix: &str) -> String {
    format!("forze:counter:{{orders:t={tenant}:{suffix}}}")
}

fn get_int(server: &TestServer, key: &str) -> Option<i64> {
    server
        .cmd(&["GET", key])
        .unwrap()
        .as_str()
        .and_then(|v| v.parse().ok())
}

/// Client connections on a server only routed pools use (the admin connection that asks
/// is not counted).
fn our_connections(server: &TestServer) -> usize {
    server.client_list().len().saturating_sub(1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_on_two_servers_are_isolated_and_share_one_pool_per_endpoint() {
    for bin in server_binaries() {
        let (home, own) = (TestServer::start(&bin), TestServer::start(&bin));
        let routes = [("acme", own.url()), ("beta", own.url())];
        let forze = spawn_ready(config(Some(&home.url()), "route", &resources(4, &routes))).await;
        let orders = forze.counter("orders").unwrap();
        let n = |tenant: &str| CounterId::suffix("n").for_tenant(t(tenant));
        for _ in 0..3 {
            orders.incr(&n("acme"), 1).await.unwrap();
        }
        orders.incr(&n("beta"), 2).await.unwrap();
        orders.incr(&n("zed"), 5).await.unwrap();
        // Routed tenants live on their server only; the others on [redis] only.
        assert_eq!(get_int(&own, &counter_key("acme", "n")), Some(3), "{bin}");
        assert_eq!(get_int(&own, &counter_key("beta", "n")), Some(2), "{bin}");
        assert_eq!(get_int(&home, &counter_key("acme", "n")), None, "{bin}");
        assert_eq!(get_int(&home, &counter_key("zed", "n")), Some(5), "{bin}");
        assert_eq!(get_int(&own, &counter_key("zed", "n")), None, "{bin}");
        assert_eq!(orders.get(&n("acme")).await.unwrap(), 3);
        // Two tenants, one endpoint: one pool, opened once.
        let s = forze.router_stats().unwrap();
        assert_eq!((s.open_pools, s.opened, s.evicted), (1, 1, 0), "{bin}");
        // A routed resource needs a tenant.
        let e = orders.incr(&CounterId::suffix("n"), 1).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::TenantRequired, "{bin}");

        // Caches: entries go to the tenant's endpoint; the L1 runs by TTL (no tracking).
        let docs = forze.cache("docs").unwrap();
        let key = |tenant: &str| CacheKey::new("d1").for_tenant(t(tenant));
        docs.set(&key("acme"), &"for acme", None).await.unwrap();
        docs.set(&key("zed"), &"for zed", None).await.unwrap();
        assert_eq!(
            docs.get::<String>(&key("acme")).await.unwrap().as_deref(),
            Some("for acme")
        );
        assert_eq!(
            docs.get::<String>(&key("zed")).await.unwrap().as_deref(),
            Some("for zed")
        );
        let stats = docs.stats();
        assert_eq!(stats.coherence, "ttl", "{bin}");
        let hits = stats.l1.unwrap().hits;
        docs.get::<String>(&key("acme")).await.unwrap();
        assert_eq!(docs.stats().l1.unwrap().hits, hits + 1, "{bin}: L1 hit");
        let on = |s: &TestServer, tenant: &str| {
            s.cmd(&["EXISTS", &format!("forze:cache:{{docs:t={tenant}:d1}}")])
                .unwrap()
                .as_int()
        };
        assert_eq!((on(&own, "acme"), on(&home, "acme")), (Some(1), Some(0)));
        assert_eq!((on(&own, "zed"), on(&home, "zed")), (Some(0), Some(1)));
        // A batch spanning endpoints is refused, not split silently.
        let fresh = |tenant: &str| CacheKey::new("d2").for_tenant(t(tenant));
        let e = docs
            .get_many::<String>(&[fresh("acme"), fresh("zed")])
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Validation, "{bin}");
        // No tracking subscriber for a routed cache alone.
        assert!(forze.tracking_stats().await.unwrap().is_none(), "{bin}");
        forze.shutdown().await.unwrap();
        wait_until(
            Duration::from_secs(5),
            "routed pool closed at shutdown",
            || our_connections(&own) == 0,
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lru_eviction_closes_a_pool_and_calls_in_flight_end_with_a_result_or_a_typed_error() {
    for bin in server_binaries() {
        let (home, b, c) = (
            TestServer::start(&bin),
            TestServer::start(&bin),
            TestServer::start(&bin),
        );
        let routes = [("acme", b.url()), ("gamma", c.url())];
        let forze: ForzeHandle = spawn_ready(config(
            Some(&home.url()),
            "route-lru",
            &resources(1, &routes),
        ))
        .await;
        let orders = forze.counter("orders").unwrap();
        let id = CounterId::suffix("n").for_tenant(t("acme"));
        orders.incr(&id, 1).await.unwrap();
        // Calls for acme in flight while gamma's calls keep evicting acme's pool.
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut load = Vec::new();
        for _ in 0..8 {
            let (orders, id, stop) = (orders.clone(), id.clone(), stop.clone());
            load.push(tokio::spawn(async move {
                let (mut ok, mut unknown, mut refused) = (0i64, 0i64, 0i64);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let started = Instant::now();
                    match orders.incr(&id, 1).await {
                        Ok(_) => ok += 1,
                        Err(e) => match e.kind() {
                            ErrorKind::OutcomeUnknown => unknown += 1,
                            ErrorKind::Unavailable | ErrorKind::Timeout => refused += 1,
                            other => panic!("untyped failure: {other:?} {e}"),
                        },
                    }
                    assert!(started.elapsed() < Duration::from_secs(3), "a call hung");
                }
                (ok, unknown, refused)
            }));
        }
        let gamma = CounterId::suffix("n").for_tenant(t("gamma"));
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(60)).await;
            // Errors allowed here too (its own pool may be evicted by acme's calls).
            let _ = orders.incr(&gamma, 1).await;
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (mut ok, mut unknown, mut refused) = (1i64, 0i64, 0i64);
        for l in load {
            let (o, u, r) = l.await.unwrap();
            ok += o;
            unknown += u;
            refused += r;
        }
        let stored = get_int(&b, &counter_key("acme", "n")).unwrap();
        let s = forze.router_stats().unwrap();
        eprintln!(
            "{bin}: acme {ok} ok, {unknown} unknown, {refused} refused, stored {stored}; {s:?}"
        );
        assert!(s.evicted >= 1 && s.open_pools == 1, "{bin}: {s:?}");
        assert!(
            stored >= ok && stored <= ok + unknown,
            "{bin}: stored {stored}, ok {ok}, unknown {unknown}"
        );
        // Quiet now: gamma alone evicts acme's pool for good, and it is closed after the
        // grace (one command timeout).
        orders.incr(&gamma, 1).await.unwrap();
        wait_until(Duration::from_secs(5), "evicted pool closed", || {
            our_connections(&b) == 0
        })
        .await;
        assert!(forze.router_stats().unwrap().closed >= 1);
        assert!(our_connections(&c) >= 1, "{bin}: gamma's pool is open");
        forze.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_rotated_by_eviction() {
    for bin in server_binaries() {
        let (home, own) = (TestServer::start(&bin), TestServer::start(&bin));
        own.cmd(&["ACL", "SETUSER", "tenant", "on", ">pw1", "~*", "+@all"])
            .unwrap();
        let url = |pw: &str| format!("redis://tenant:{pw}@127.0.0.1:{}", own.port());
        let routes = [("acme", url("pw1"))];
        let forze = spawn_ready(config(
            Some(&home.url()),
            "route-rotate",
            &resources(4, &routes),
        ))
        .await;
        let orders = forze.counter("orders").unwrap();
        let id = CounterId::suffix("n").for_tenant(t("acme"));
        assert_eq!(orders.incr(&id, 1).await.unwrap(), 1);
        // The password changes on the server; authenticated connections keep working...
        own.cmd(&["ACL", "SETUSER", "tenant", "resetpass", ">pw2"])
            .unwrap();
        assert_eq!(orders.incr(&id, 1).await.unwrap(), 2);
        // ...until the route gets the new credentials: the old pool is evicted and closed,
        // a new one authenticates with pw2.
        forze.set_route(&t("acme"), Some(&url("pw2"))).unwrap();
        assert_eq!(orders.incr(&id, 1).await.unwrap(), 3, "{bin}");
        let s = forze.router_stats().unwrap();
        assert_eq!((s.opened, s.evicted, s.open_pools), (2, 1, 1), "{bin}");
        wait_until(Duration::from_secs(5), "old pool closed", || {
            forze.router_stats().unwrap().closed == 1
        })
        .await;
        assert_eq!(orders.incr(&id, 1).await.unwrap(), 4, "{bin}");
        // A wrong password is a typed error within the connect timeout, never a hang.
        forze.set_route(&t("acme"), Some(&url("wrong"))).unwrap();
        let started = Instant::now();
        let e = orders.incr(&id, 1).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unavailable, "{bin}: {e}");
        assert!(started.elapsed() < Duration::from_secs(2), "{bin}");
        assert!(
            !format!("{e:?}").contains("wrong"),
            "{bin}: secret in {e:?}"
        );
        // Back to [redis]: the tenant's counter there starts from scratch.
        forze.set_route(&t("acme"), None).unwrap();
        assert_eq!(orders.incr(&id, 1).await.unwrap(), 1, "{bin}");
        forze.shutdown().await.unwrap();
    }
}

/// Increments of one hot key queued behind a request in flight to a tenant's old endpoint,
/// made after its route changed, go to the new endpoint: a batch never carries a request to
/// an endpoint other than its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn increments_queued_across_a_route_change_go_to_the_new_endpoint() {
    use forze_redis_testkit::FaultProxy;
    for bin in server_binaries() {
        let home = TestServer::start(&bin);
        let old = TestServer::start(&bin);
        let new = TestServer::start(&bin);
        let relay = FaultProxy::start(old.addr()).await;
        let routes = [("acme", relay.url())];
        let forze = spawn_ready(config(
            Some(&home.url()),
            "route-queued",
            &resources(4, &routes),
        ))
        .await;
        let orders = forze.counter("orders").unwrap();
        let id = CounterId::suffix("hot").for_tenant(t("acme"));
        assert_eq!(orders.incr(&id, 1).await.unwrap(), 1);
        // Two requests in flight to the old endpoint (the second opens the key's queue).
        relay.set_delay(Duration::from_millis(120));
        let mut first = Vec::new();
        for _ in 0..2 {
            let orders = orders.clone();
            let id = id.clone();
            first.push(tokio::spawn(async move { orders.incr(&id, 1).await }));
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        forze.set_route(&t("acme"), Some(&new.url())).unwrap();
        let mut later = Vec::new();
        for _ in 0..10 {
            let orders = orders.clone();
            let id = id.clone();
            later.push(tokio::spawn(async move { orders.incr(&id, 1).await }));
        }
        for call in first.into_iter().chain(later) {
            call.await.unwrap().unwrap();
        }
        let key = counter_key("acme", "hot");
        assert_eq!(get_int(&old, &key), Some(3), "{bin}: the old endpoint");
        assert_eq!(get_int(&new, &key), Some(10), "{bin}: the new endpoint");
        forze.shutdown().await.unwrap();
    }
}

//! Tenant routing: a route table from tenant to endpoint, and one connection pool per distinct
//! endpoint, opened lazily, bounded by LRU and closed on eviction.
//!
//! - **Shared pools.** Pools are keyed by the endpoint URL (credentials included), so tenants
//!   routed to the same URL share one pool, and a URL with new credentials is a new pool.
//! - **Lazy.** A pool is built on the first call for one of its tenants and connects in the
//!   background; that call waits for it at most `connect_timeout`, then gets `Unavailable`.
//! - **LRU-bounded.** Beyond `max_pools`, the least recently used pool is evicted: removed at
//!   once (new calls open a new pool), closed after a grace of one command timeout, so calls
//!   already holding it finish or fail with a typed error (`Unavailable`/`OutcomeUnknown`).
//! - **Credentials rotated by eviction.** [`Router::set_route`] with a new URL (a new
//!   password) evicts the pool no tenant uses any more; the next call opens one with the new
//!   credentials. Connections already authenticated are never reused with old credentials.
//!
//! Routed endpoints are not tracked for client-side caching: a routed cache's L1 lives by its
//! TTL only. They are not probed by the pool actor either: their health is that of the
//! commands sent to them.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use crate::config::{RedisConfig, RouteEndpoint, RoutingConfig};
use crate::connection::RedisConnection;
use crate::error::{Error, Result};
use crate::keys::TenantId;

/// One open endpoint pool.
#[derive(Debug)]
struct Endpoint {
    /// The endpoint, as the route table gives it (the pool key; `Debug` redacts the URL).
    endpoint: RouteEndpoint,
    conn: Arc<RedisConnection>,
}

/// Counts of the router.
#[derive(Debug, Default)]
struct Counters {
    opened: AtomicU64,
    evicted: AtomicU64,
    closed: AtomicU64,
}

/// A copy of the router's statistics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct RouterStats {
    /// Endpoint pools open now.
    pub open_pools: usize,
    /// Pools opened so far.
    pub opened: u64,
    /// Pools evicted (LRU bound or route change).
    pub evicted: u64,
    /// Evicted pools whose connections have been closed.
    pub closed: u64,
}

/// The route table and the endpoint pools.
#[derive(Debug)]
pub struct Router {
    routes: RwLock<BTreeMap<String, RouteEndpoint>>,
    /// Most recently used last. Small (`max_pools`), so a scan is cheaper than a map.
    pools: Mutex<VecDeque<Endpoint>>,
    max_pools: usize,
    /// Settings of every endpoint pool but the URL.
    template: RedisConfig,
    counters: Arc<Counters>,
}

impl Router {
    /// A router for `config`, with connection settings from `template` (`[redis]`, or the
    /// defaults in embedded mode).
    pub fn new(config: &RoutingConfig, template: RedisConfig) -> Self {
        Router {
            routes: RwLock::new(config.tenants.clone()),
            pools: Mutex::new(VecDeque::new()),
            max_pools: config.max_pools.max(1),
            template,
            counters: Arc::default(),
        }
    }

    /// The endpoint `tenant` is routed to, if any.
    pub fn route(&self, tenant: &TenantId) -> Option<RouteEndpoint> {
        self.read_routes().get(tenant.as_str()).cloned()
    }

    /// Whether connections to `endpoint` (`None`: `[redis]`) are encrypted, with what a route
    /// inherits from `[redis]`.
    pub fn encrypts(&self, endpoint: Option<&RouteEndpoint>) -> bool {
        endpoint.map_or_else(
            || self.template.uses_tls(),
            |e| e.redis_config(&self.template).uses_tls(),
        )
    }

    /// Whether `tenant` has a route of its own.
    pub fn is_routed(&self, tenant: &TenantId) -> bool {
        self.read_routes().contains_key(tenant.as_str())
    }

    fn read_routes(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, RouteEndpoint>> {
        self.routes.read().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_pools(&self) -> std::sync::MutexGuard<'_, VecDeque<Endpoint>> {
        self.pools.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The connection for `tenant`: `None` when it has no route (it stays on `[redis]`),
    /// else its endpoint's pool, opened if needed and connected (waited for at most
    /// `connect_timeout`; `Unavailable` after that).
    pub async fn connection(&self, tenant: &TenantId) -> Result<Option<Arc<RedisConnection>>> {
        // A route changed between reading it and finding its pool: read it again (bounded;
        // routes do not change that often).
        for _ in 0..4 {
            let Some(endpoint) = self.read_routes().get(tenant.as_str()).cloned() else {
                return Ok(None);
            };
            if let Some(conn) = self.pool_for(&endpoint)? {
                conn.wait_connected(self.template.connect_timeout).await?;
                return Ok(Some(conn));
            }
        }
        Err(Error::unavailable("routing.connect"))
    }

    /// The pool of `endpoint`, opened if needed; `None` when no route uses `endpoint` any
    /// more (a pool opened then would keep old credentials alive after a rotation).
    fn pool_for(&self, endpoint: &RouteEndpoint) -> Result<Option<Arc<RedisConnection>>> {
        let mut pools = self.lock_pools();
        if let Some(i) = pools.iter().position(|e| e.endpoint.same_as(endpoint)) {
            let e = pools.remove(i).expect("position is in range");
            let conn = e.conn.clone();
            pools.push_back(e);
            return Ok(Some(conn));
        }
        // Checked under the pools lock: `set_route` changes the routes first and evicts
        // unused pools under this lock after, so a pool opened here is either still routed
        // or evicted by that pass.
        if !self.read_routes().values().any(|e| e.same_as(endpoint)) {
            return Ok(None);
        }
        let cfg = endpoint.redis_config(&self.template);
        let conn = Arc::new(RedisConnection::build(&cfg)?);
        conn.connect_in_background();
        self.counters.opened.fetch_add(1, Ordering::Relaxed);
        tracing::info!(endpoint = %endpoint.url, "routed endpoint pool opened");
        pools.push_back(Endpoint {
            endpoint: endpoint.clone(),
            conn: conn.clone(),
        });
        while pools.len() > self.max_pools {
            if let Some(old) = pools.pop_front() {
                self.evict(old, "least recently used");
            }
        }
        Ok(Some(conn))
    }

    /// Close `old` after a grace of one command timeout, so calls holding it can finish.
    fn evict(&self, old: Endpoint, why: &'static str) {
        self.counters.evicted.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            endpoint = %old.endpoint.url,
            why,
            "routed endpoint pool evicted"
        );
        let grace = self.template.command_timeout;
        let counters = self.counters.clone();
        let close = async move {
            tokio::time::sleep(grace).await;
            old.conn.quit(grace).await;
            counters.closed.fetch_add(1, Ordering::Relaxed);
        };
        // Without a runtime (a router dropped at exit) the pool's connections end with it.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            drop(rt.spawn(close));
        }
    }

    /// Route `tenant` to `endpoint` from now on (`None`: back to `[redis]`). A pool no route
    /// uses any more is evicted: this is how credentials and certificates are rotated.
    pub fn set_route(&self, tenant: &TenantId, endpoint: Option<RouteEndpoint>) -> Result<()> {
        if let Some(e) = &endpoint {
            e.redis_config(&self.template)
                .validate_endpoint(&format!("routing.tenants.{}", tenant.as_str()))?;
        }
        let used: Vec<RouteEndpoint> = {
            let mut routes = self.routes.write().unwrap_or_else(|p| p.into_inner());
            match endpoint {
                Some(e) => routes.insert(tenant.as_str().to_string(), e),
                None => routes.remove(tenant.as_str()),
            };
            routes.values().cloned().collect()
        };
        let mut pools = self.lock_pools();
        let mut kept = VecDeque::with_capacity(pools.len());
        for e in pools.drain(..) {
            if used.iter().any(|u| u.same_as(&e.endpoint)) {
                kept.push_back(e);
            } else {
                self.evict(e, "route changed");
            }
        }
        *pools = kept;
        Ok(())
    }

    /// Close every pool now, all at once, within `timeout` (shutdown).
    pub async fn close_all(&self, timeout: Duration) {
        let all: Vec<Endpoint> = self.lock_pools().drain(..).collect();
        futures::future::join_all(all.iter().map(|e| async {
            e.conn.quit(timeout).await;
            self.counters.closed.fetch_add(1, Ordering::Relaxed);
        }))
        .await;
    }

    /// A copy of the statistics.
    pub fn stats(&self) -> RouterStats {
        RouterStats {
            open_pools: self.lock_pools().len(),
            opened: self.counters.opened.load(Ordering::Relaxed),
            evicted: self.counters.evicted.load(Ordering::Relaxed),
            closed: self.counters.closed.load(Ordering::Relaxed),
        }
    }
}

/// Where one call of a routed resource goes.
#[derive(Debug, Clone)]
pub enum Destination {
    /// The resource's own store (`[redis]`, or local state in embedded mode).
    Default,
    /// A routed endpoint.
    Endpoint(Arc<RedisConnection>),
}

/// Pick the destination for `tenant` on a resource that may be routed.
pub async fn destination(
    router: Option<&Router>,
    resource: &str,
    tenant: Option<&TenantId>,
) -> Result<Destination> {
    let Some(router) = router else {
        return Ok(Destination::Default);
    };
    let tenant = tenant.ok_or_else(|| Error::TenantRequired {
        resource: resource.to_string(),
    })?;
    Ok(match router.connection(tenant).await? {
        Some(conn) => Destination::Endpoint(conn),
        None => Destination::Default,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RedisUrl;

    fn router(max: usize) -> Router {
        let mut cfg = RoutingConfig {
            max_pools: max,
            ..Default::default()
        };
        for (t, port) in [("a", 1), ("b", 1), ("c", 2), ("d", 3)] {
            cfg.tenants.insert(
                t.into(),
                RedisUrl::new(format!("redis://127.0.0.1:{port}")).into(),
            );
        }
        Router::new(&cfg, RedisConfig::new("redis://127.0.0.1:1"))
    }

    #[tokio::test]
    async fn same_urls_share_a_pool_and_the_least_recently_used_is_evicted() {
        let r = router(2);
        let t = |s: &str| TenantId::new(s).unwrap();
        let url = |t: &TenantId| r.read_routes().get(t.as_str()).cloned().unwrap();
        let a = r.pool_for(&url(&t("a"))).unwrap().unwrap();
        let b = r.pool_for(&url(&t("b"))).unwrap().unwrap();
        assert!(Arc::ptr_eq(&a, &b), "same URL, same pool");
        r.pool_for(&url(&t("c"))).unwrap().unwrap();
        assert_eq!(r.stats().open_pools, 2);
        // a/b's pool is used again, so c's is now the least recently used.
        r.pool_for(&url(&t("a"))).unwrap().unwrap();
        r.pool_for(&url(&t("d"))).unwrap().unwrap();
        let s = r.stats();
        assert_eq!((s.open_pools, s.opened, s.evicted), (2, 3, 1));
        let again = r.pool_for(&url(&t("a"))).unwrap().unwrap();
        assert!(Arc::ptr_eq(&a, &again), "a's pool survived");
        assert!(!r.is_routed(&t("zzz")));
        assert!(r.is_routed(&t("a")));
    }

    #[tokio::test]
    async fn a_route_change_evicts_the_pool_nobody_uses() {
        let r = router(8);
        let t = |s: &str| TenantId::new(s).unwrap();
        let url = |t: &TenantId| r.read_routes().get(t.as_str()).cloned().unwrap();
        r.pool_for(&url(&t("c"))).unwrap().unwrap();
        r.pool_for(&url(&t("a"))).unwrap().unwrap();
        // c moves to new credentials: its old pool is no one's.
        r.set_route(
            &t("c"),
            Some(RedisUrl::new("redis://:pw2@127.0.0.1:2").into()),
        )
        .unwrap();
        assert_eq!(r.stats().evicted, 1);
        // a moves, but b still uses the old URL: kept.
        r.set_route(&t("a"), None).unwrap();
        assert_eq!(r.stats().evicted, 1);
        assert!(r
            .set_route(&t("a"), Some(RedisUrl::new("ftp://x").into()))
            .is_err());
        // A URL no route uses any more gets no pool (a call that read the old route).
        assert!(r
            .pool_for(&RedisUrl::new("redis://127.0.0.1:2").into())
            .unwrap()
            .is_none());
        // Debug never shows a routed endpoint's password.
        r.pool_for(&RedisUrl::new("redis://:pw2@127.0.0.1:2").into())
            .unwrap();
        assert!(!format!("{r:?}").contains("pw2"));
    }

    #[tokio::test]
    async fn a_routed_resource_needs_a_tenant() {
        let r = router(2);
        let e = destination(Some(&r), "orders", None).await.unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::TenantRequired);
        let zed = TenantId::new("zed").unwrap();
        assert!(matches!(
            destination(Some(&r), "orders", Some(&zed)).await.unwrap(),
            Destination::Default
        ));
        assert!(matches!(
            destination(None, "orders", None).await.unwrap(),
            Destination::Default
        ));
    }
}

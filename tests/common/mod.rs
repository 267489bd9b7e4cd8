//! Shared set-up for the integration tests: configurations with short timeouts and unique
//! actor-name prefixes, so many supervisors live in one test process.

#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use forze_redis::Config;
use forze_redis_actors::{Forze, ForzeHandle};

pub use forze_redis_testkit::{server_binaries, wait_until, TestCluster, TestServer};

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
"#
    )
}

/// A configuration: optional Redis, a unique prefix, quick restarts, plus `resources` (TOML).
pub fn config(url: Option<&str>, test: &str, resources: &str) -> Config {
    let redis = url.map(redis_table).unwrap_or_default();
    let text = format!(
        r#"
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
        out
    }

    /// The Redis URL, `None` for local.
    pub fn url(&self) -> Option<String> {
        match self {
            Backend::Local => None,
            Backend::Server(s) => Some(s.url()),
            Backend::Cluster(c) => Some(c.url()),
        }
    }

    /// Run a command on the server that holds `key` (`None` for local).
    pub fn cmd_for_key(&self, key: &str, args: &[&str]) -> Option<forze_redis_testkit::Resp> {
        let r = match self {
            Backend::Local => return None,
            Backend::Server(s) => s.cmd(args),
            Backend::Cluster(c) => c.cmd_for_key(key, args),
        };
        Some(r.unwrap_or_else(|e| panic!("{args:?}: {e}")))
    }

    /// Every key on the server(s) (`None` for local).
    pub fn all_keys(&self) -> Option<Vec<String>> {
        let servers: Vec<&TestServer> = match self {
            Backend::Local => return None,
            Backend::Server(s) => vec![s],
            Backend::Cluster(c) => c.nodes().iter().collect(),
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
        }
    }
}

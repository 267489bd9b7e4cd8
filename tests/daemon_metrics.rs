//! The daemon example as operators run it: against a private server (its URL given only
//! through `REDIS_URL`), scraped on `/metrics` and `/health` while it works. Every contract's
//! documented series must show plausible values; the health endpoint must follow the server
//! going away; SIGTERM must stop it cleanly.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{server_binaries, TestServer};

const CONFIG: &str = r#"
key_prefix = "daemon-test"
[counters.orders]
[caches.catalog]
ttl = "60s"
[caches.catalog.l1]
ttl = "10s"
[locks.jobs]
lease = "5s"
[idempotency.payments]
[snapshots.search]
[rate_limits.api]
permits = 1000
per = "1s"
[breakers.inventory]
min_calls = 2
failure_ratio = 0.5
break_duration = "60s"
"#;

/// The example's binary, built from these sources by cargo itself. `cargo test --all-targets`
/// compiles examples as test harnesses, so the runnable binary is asked of cargo (which has
/// released the build directory by the time tests run). It is asked with the workspace and
/// features of the test script's build, so every library is already built and only the
/// example is compiled and linked (another feature set would rebuild both crates beside the
/// test build). Cargo names the executable in its JSON messages, so no target-directory
/// layout is guessed.
fn daemon_binary() -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    // `json-render-diagnostics`: artifact messages on stdout, compiler errors rendered on
    // stderr, which the failure message carries (a JSON-only build would swallow them).
    let output = Command::new(cargo)
        .args(["build", "--message-format=json-render-diagnostics"])
        .args([
            "--manifest-path",
            manifest,
            "--workspace",
            "--features",
            "forze-redis-actors/fault-injection",
            "--example",
            "daemon",
        ])
        .stderr(Stdio::piped())
        .output()
        .expect("cargo runs");
    assert!(
        output.status.success(),
        "cargo build --example daemon failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|msg| msg["reason"] == "compiler-artifact" && msg["target"]["name"] == "daemon")
        .find_map(|msg| msg["executable"].as_str().map(PathBuf::from))
        .expect("cargo names the daemon executable")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// `GET path` → (status code, body); `None` while nothing listens.
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    // One write: the request head in one piece.
    let request = format!("GET {path} HTTP/1.1\r\nhost: localhost\r\n\r\n");
    s.write_all(request.as_bytes()).ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_string()))
}

/// Prometheus text → (metric name, labels) → value.
type Series = Vec<(String, BTreeMap<String, String>, f64)>;

fn parse(text: &str) -> Series {
    let mut out = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let labels = labels
            .split("\",")
            .filter_map(|kv| kv.split_once("=\""))
            .map(|(k, v)| (k.to_string(), v.trim_end_matches('"').to_string()))
            .collect();
        out.push((name.to_string(), labels, value));
    }
    out
}

/// The value of the one series `name` whose labels include `want` (summed if several).
fn value(series: &Series, name: &str, want: &[(&str, &str)]) -> Option<f64> {
    let matching: Vec<f64> = series
        .iter()
        .filter(|(n, labels, _)| {
            n == name
                && want
                    .iter()
                    .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| *v)
        .collect();
    (!matching.is_empty()).then(|| matching.iter().sum())
}

/// Whether a series is present with at least `n`.
fn at_least(v: Option<f64>, n: f64) -> bool {
    v.is_some_and(|v| v >= n)
}

/// What a healthy daemon with a tripped breaker must show: (what, met).
fn expectations(s: &Series) -> Vec<(&'static str, bool)> {
    let ops = "forze_operations_total";
    vec![
        (
            "counter increments counted ok",
            at_least(
                value(
                    s,
                    ops,
                    &[
                        ("resource", "counter"),
                        ("operation", "counter.incr"),
                        ("outcome", "ok"),
                    ],
                ),
                2.0,
            ),
        ),
        (
            "cache reads served by the L1 counted as l1_hit",
            at_least(
                value(s, ops, &[("resource", "cache"), ("outcome", "l1_hit")]),
                1.0,
            ),
        ),
        (
            "the first cache read counted as a miss",
            at_least(
                value(
                    s,
                    ops,
                    &[
                        ("resource", "cache"),
                        ("operation", "cache.get"),
                        ("outcome", "miss"),
                    ],
                ),
                1.0,
            ),
        ),
        (
            "idempotency claims and replays",
            at_least(
                value(
                    s,
                    ops,
                    &[("resource", "idempotency"), ("outcome", "claimed")],
                ),
                1.0,
            ) && at_least(
                value(
                    s,
                    ops,
                    &[("resource", "idempotency"), ("outcome", "replayed")],
                ),
                1.0,
            ),
        ),
        (
            "snapshot pages hit",
            at_least(
                value(
                    s,
                    ops,
                    &[
                        ("resource", "snapshot"),
                        ("operation", "snapshot.page"),
                        ("outcome", "hit"),
                    ],
                ),
                1.0,
            ),
        ),
        (
            "rate-limit decisions allowed",
            at_least(
                value(
                    s,
                    ops,
                    &[("resource", "rate_limit"), ("outcome", "allowed")],
                ),
                1.0,
            ),
        ),
        (
            "the held leader lock in the leases gauge",
            value(s, "forze_lock_leases_held", &[]) == Some(1.0),
        ),
        (
            "lock acquisition counted",
            at_least(
                value(s, ops, &[("resource", "lock"), ("outcome", "acquired")]),
                1.0,
            ),
        ),
        (
            "the tripped breaker's route in the open phase",
            value(
                s,
                "forze_breaker_routes",
                &[("name", "inventory"), ("phase", "open")],
            ) == Some(1.0)
                && at_least(
                    value(s, "forze_breaker_transitions_total", &[("to", "open")]),
                    1.0,
                ),
        ),
        (
            "breaker refusals counted",
            at_least(
                value(
                    s,
                    ops,
                    &[("resource", "breaker"), ("outcome", "cached_refused")],
                ),
                1.0,
            ) || at_least(
                value(s, ops, &[("resource", "breaker"), ("outcome", "refused")]),
                1.0,
            ),
        ),
        (
            "health gauge up, tracking active, pool connected",
            value(s, "forze_redis_health", &[("state", "up")]) == Some(1.0)
                && value(s, "forze_redis_health", &[("state", "down")]) == Some(0.0)
                && value(s, "forze_tracking_active", &[]) == Some(1.0)
                && at_least(
                    value(s, "forze_pool_connections", &[("state", "connected")]),
                    1.0,
                ),
        ),
        (
            "L1 entries and bytes",
            at_least(value(s, "forze_l1_entries", &[("name", "catalog")]), 1.0)
                && at_least(value(s, "forze_l1_bytes", &[("name", "catalog")]), 1.0),
        ),
        (
            "latency histograms with buckets",
            at_least(
                value(
                    s,
                    "forze_operation_duration_seconds_count",
                    &[("resource", "counter"), ("outcome", "ok")],
                ),
                2.0,
            ) && s.iter().any(|(n, l, _)| {
                n == "forze_operation_duration_seconds_bucket"
                    && l.get("le").is_some_and(|le| le == "0.001")
            }),
        ),
    ]
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_daemon_serves_every_contracts_metrics_and_a_health_that_follows_the_server() {
    let bin = daemon_binary();
    for server_bin in server_binaries() {
        let mut server = TestServer::start(&server_bin);
        let dir = std::env::temp_dir().join(format!("forze-daemon-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("daemon.toml");
        std::fs::write(&config, CONFIG).unwrap();
        let port = free_port();
        let mut daemon = Daemon(
            Command::new(&bin)
                .arg(&config)
                // The file names no server: the environment does, as in a container.
                .env("REDIS_URL", server.url())
                .env("FORZE__REDIS__COMMAND_TIMEOUT", "500ms")
                .env("FORZE_DAEMON_LISTEN", format!("127.0.0.1:{port}"))
                .env("FORZE_DAEMON_DOWNSTREAM_FAILURE", "1")
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("the daemon starts"),
        );

        // Scrape until every expectation holds (bounded), then report what is missing.
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last = Vec::new();
        loop {
            if let Some((200, body)) = get(port, "/metrics") {
                last = expectations(&parse(&body));
                if last.iter().all(|(_, ok)| *ok) {
                    break;
                }
            }
            assert!(
                daemon.0.try_wait().unwrap().is_none(),
                "the daemon exited early"
            );
            if Instant::now() > deadline {
                let missing: Vec<_> = last.iter().filter(|(_, ok)| !ok).map(|(w, _)| *w).collect();
                panic!(
                    "{}: after 30 s the metrics still lack: {missing:?}",
                    server_bin.kind.name()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        let (code, body) = get(port, "/health").expect("health answers");
        assert_eq!(code, 200, "{body}");
        assert!(body.contains("\"status\":\"ok\""), "{body}");

        // The server goes away: health turns 503, the health gauge says down, and the events
        // are counted: the tracking loss, the L1 flush it caused, and the held lease lost
        // once its renewals cannot reach the server (lease 5 s).
        server.stop();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let health = get(port, "/health");
            let scraped = get(port, "/metrics").map(|(_, b)| parse(&b));
            let events = scraped.as_ref().map(|s| {
                [
                    (
                        "health down",
                        value(s, "forze_redis_health", &[("state", "down")]) == Some(1.0),
                    ),
                    (
                        "tracking inactive",
                        value(s, "forze_tracking_active", &[]) == Some(0.0),
                    ),
                    (
                        "tracking loss",
                        at_least(value(s, "forze_tracking_losses_total", &[]), 1.0),
                    ),
                    (
                        "L1 flushed for the loss",
                        at_least(
                            value(
                                s,
                                "forze_l1_flushes_total",
                                &[("name", "catalog"), ("reason", "tracking_lost")],
                            ),
                            1.0,
                        ),
                    ),
                    (
                        "lease lost",
                        at_least(value(s, "forze_lock_leases_lost_total", &[]), 1.0),
                    ),
                ]
            });
            let missing: Vec<&str> = events.map_or(vec!["a scrape"], |e| {
                e.iter().filter(|(_, ok)| !ok).map(|(w, _)| *w).collect()
            });
            if matches!(health, Some((503, _))) && missing.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "metrics did not follow the server: health {health:?}, missing {missing:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }

        // SIGTERM: a clean stop, exit status 0.
        let pid = daemon.0.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = daemon.0.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(status.success(), "the daemon exited with {status}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

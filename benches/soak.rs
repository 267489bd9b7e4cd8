//! Soak: every contract in flight on 3 replicas (supervisors) behind one TCP relay, for a
//! configurable time, with faults injected on a schedule, reporting at regular intervals the
//! resident memory, the live tokio tasks, the L1 bytes, the server's client connections and the
//! calls by outcome kind.
//!
//! - `cargo bench --bench soak`: 10 minutes, a report every minute. `SOAK_DURATION` (humantime,
//!   e.g. `30m`) and `SOAK_REPORT_EVERY` change both.
//! - Run as a test (`cargo test --all-targets`, which CI does): 60 seconds, a report every 10 s.
//!
//! Faults, in turn, one every `SOAK_FAULT_EVERY` (default 5 s): every connection cut at the
//! relay; `CLIENT KILL TYPE normal` on the server; a 2 s black hole that ends by resuming
//! forwarding; the server frozen for 1.5 s (`SIGSTOP`/`SIGCONT`); a foreign `FLUSHALL`; the
//! server killed and restarted. The last minute (the last 10 s as a test) runs without faults,
//! so the connections can be counted after they settle.
//!
//! What it checks (and fails on): no `Internal` error and no call past its bound; resident
//! memory and live tasks at the end within a generous margin of the first report after warm-up
//! (a leak grows without bound, noise does not); the connections on the server after the
//! faults equal those before them.

#[path = "../tests/common/workload.rs"]
mod workload;

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use forze_redis::Config;
use forze_redis_actors::{Cache, ForzeHandle};
use forze_redis_testkit::{sigcont, sigstop, FaultProxy, ProxyMode};
use workload::{drive, Tallies, RESOURCES};

/// Workers per replica.
const WORKERS: usize = 3;
/// A call that takes longer than this is a failure (`Unbounded`).
const CALL_BOUND: Duration = Duration::from_secs(5);

fn setting(name: &str, default: Duration) -> Duration {
    std::env::var(name)
        .ok()
        .and_then(|v| humantime::parse_duration(&v).ok())
        .unwrap_or(default)
}

/// Resident memory of this process, in KiB (`VmRSS`).
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

struct Sample {
    at: Duration,
    rss_kib: u64,
    tasks: usize,
    l1_bytes: u64,
    connections: usize,
}

fn sample(started: Instant, server: &forze_redis_testkit::TestServer, caches: &[Cache]) -> Sample {
    Sample {
        at: started.elapsed(),
        rss_kib: rss_kib(),
        tasks: tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks(),
        l1_bytes: caches
            .iter()
            .filter_map(|c| c.stats().l1.map(|l| l.bytes as u64))
            .sum(),
        // The soak's own admin connection asking is not counted.
        connections: server
            .cmd(&["CLIENT", "LIST"])
            .ok()
            .and_then(|r| r.as_str().map(|s| s.lines().count().saturating_sub(1)))
            .unwrap_or(0),
    }
}

fn config(url: &str, n: usize) -> Config {
    let text = format!(
        r#"
{RESOURCES}
[supervision]
name_prefix = "soak{n}"
call_timeout = "2s"
[redis]
url = "{url}"
pool_size = 2
connect_timeout = "500ms"
command_timeout = "500ms"
unresponsive_timeout = "1s"
health_interval = "200ms"
client_name = "soak"
[redis.reconnect]
min_delay = "20ms"
max_delay = "500ms"
"#
    );
    Config::from_toml_str(&text).expect("soak configuration")
}

async fn inject(
    fault: usize,
    server: &mut forze_redis_testkit::TestServer,
    relay: &FaultProxy,
) -> &'static str {
    match fault % 6 {
        0 => {
            relay.cut_all();
            "cut every connection"
        }
        1 => {
            let _ = server.cmd(&["CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"]);
            "CLIENT KILL"
        }
        2 => {
            relay.set_mode(ProxyMode::BlackHole);
            tokio::time::sleep(Duration::from_secs(2)).await;
            relay.set_mode(ProxyMode::Pass);
            "black hole 2 s, then forwarding again"
        }
        3 => {
            if let Some(pid) = server.pid() {
                sigstop(pid);
                tokio::time::sleep(Duration::from_millis(1500)).await;
                sigcont(pid);
            }
            "server frozen 1.5 s"
        }
        4 => {
            let _ = server.cmd(&["FLUSHALL"]);
            "FLUSHALL"
        }
        _ => {
            server.stop();
            tokio::time::sleep(Duration::from_millis(500)).await;
            server.restart();
            "server killed and restarted"
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let benchmark = std::env::args().any(|a| a == "--bench");
    let (duration, every) = if benchmark {
        (
            setting("SOAK_DURATION", Duration::from_secs(600)),
            setting("SOAK_REPORT_EVERY", Duration::from_secs(60)),
        )
    } else {
        (Duration::from_secs(60), Duration::from_secs(10))
    };
    let fault_every = setting("SOAK_FAULT_EVERY", Duration::from_secs(5));
    let quiet = every.min(duration / 4);
    let mut server = common::server();
    let relay = FaultProxy::start(server.addr()).await;
    println!(
        "soak: {} on 3 replicas, {WORKERS} workers each, a fault every {}, report every {}",
        humantime::format_duration(duration),
        humantime::format_duration(fault_every),
        humantime::format_duration(every)
    );
    let mut reps: Vec<ForzeHandle> = Vec::new();
    for n in 0..3 {
        reps.push(common::spawn_config(config(&relay.url(), n)).await);
    }
    let caches: Vec<Cache> = reps.iter().map(|r| r.cache("plain").unwrap()).collect();
    let tallies = Arc::new(Tallies::default());
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut workers = Vec::new();
    for (i, r) in reps.iter().enumerate() {
        for j in 0..WORKERS {
            workers.push(tokio::spawn(drive(
                r.clone(),
                i * WORKERS + j,
                tallies.clone(),
                stop.clone(),
                CALL_BOUND,
            )));
        }
    }
    // Connections once everything is up, before any fault.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let baseline = sample(started, &server, &caches);
    println!(
        "{:>8} {:>10} {:>7} {:>9} {:>6}  calls by kind (since the last report)",
        "at", "rss KiB", "tasks", "L1 bytes", "conns"
    );
    let mut samples: Vec<Sample> = Vec::new();
    let mut last_kinds = tallies.kinds();
    let mut next_report = started + every;
    let mut next_fault = started + fault_every;
    let mut faults = 0;
    let faults_end = started + duration - quiet;
    while started.elapsed() < duration {
        if Instant::now() >= next_report {
            let s = sample(started, &server, &caches);
            let kinds = tallies.kinds();
            let delta: Vec<String> = kinds
                .iter()
                .map(|(k, n)| format!("{k}={}", n - last_kinds.get(k).copied().unwrap_or(0)))
                .collect();
            println!(
                "{:>7}s {:>10} {:>7} {:>9} {:>6}  {}",
                s.at.as_secs(),
                s.rss_kib,
                s.tasks,
                s.l1_bytes,
                s.connections,
                delta.join(" ")
            );
            last_kinds = kinds;
            samples.push(s);
            next_report += every;
        }
        let now = Instant::now();
        if now >= next_fault && now < faults_end {
            let what = inject(faults, &mut server, &relay).await;
            faults += 1;
            println!(
                "soak: {:>5}s fault {faults}: {what}",
                started.elapsed().as_secs()
            );
            next_fault += fault_every;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        tokio::time::timeout(CALL_BOUND * 4, w)
            .await
            .expect("workers stop")
            .expect("worker");
    }
    let end = sample(started, &server, &caches);
    for r in &reps {
        r.shutdown().await.unwrap();
    }
    let kinds = tallies.kinds();
    println!("soak: {faults} faults; calls by kind: {kinds:?}");
    for (name, t) in tallies.all() {
        println!("soak:   {name}: {:?}", t.kinds());
    }
    // After warm-up: the second report (the first one includes start-up and the first faults).
    let warm = samples.get(1).or(samples.first()).unwrap_or(&baseline);
    let rss_growth = end.rss_kib as f64 / warm.rss_kib.max(1) as f64;
    println!(
        "soak: rss {} KiB after warm-up, {} KiB at the end (x{rss_growth:.2}); tasks {} -> {}; connections {} before the faults, {} at the end",
        warm.rss_kib, end.rss_kib, warm.tasks, end.tasks, baseline.connections, end.connections
    );
    assert_eq!(kinds.get("Internal"), None, "no Internal error");
    assert_eq!(kinds.get("Unbounded"), None, "every call bounded");
    // Generous margins: allocator noise and the L1 filling up are not leaks; a leak grows
    // with every fault and every call.
    assert!(
        end.rss_kib <= warm.rss_kib * 3 / 2 + 16 * 1024,
        "resident memory grew: {} -> {} KiB",
        warm.rss_kib,
        end.rss_kib
    );
    assert!(
        end.tasks <= warm.tasks + 64,
        "live tasks grew: {} -> {}",
        warm.tasks,
        end.tasks
    );
    assert_eq!(
        end.connections, baseline.connections,
        "connections on the server after the faults"
    );
}

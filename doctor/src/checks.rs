//! The checks, in the order they run. Each gives one [`Verdict`]; a check that cannot run
//! because an earlier one failed says so (`SKIP`).
//!
//! | check | what forze-redis needs | fails when |
//! |---|---|---|
//! | `connect` | the pool connects (TLS, auth, cluster, sentinel) | no connection |
//! | `server` | Redis or Valkey 6.2 or later | older, or unknown |
//! | `resp3_client_tracking` | `HELLO 3` and `CLIENT TRACKING … BCAST` on every primary (cache L1s, breaker phases, woken lock waiters) | refused, denied by ACL, or `CLIENT` renamed |
//! | `scripts` | `EVALSHA`/`EVAL` of the Lua scripts (locks, idempotency, breakers, rate limits) | refused by the ACL user |
//! | `clock` | the server's `TIME` (tokens, breakers, rate limits decide on it) | (warns on a skew above 1 s) |
//! | `maxmemory_policy` | no eviction of locks, fences and idempotency records | an `allkeys-*` policy (`volatile-*` warns) |
//! | `persistence` | fence keys that survive a restart (else tokens rely on the clock) | (warns without AOF) |
//! | `cluster_slots` | every slot served (cluster only) | a slot unassigned, or the cluster not `ok` |
//! | `latency` | round trips well within `command_timeout` | (warns above a tenth of it) |

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use forze_redis::config::RedisConfig;
use forze_redis::connection::RedisConnection;
use forze_redis::error::Access;
use forze_redis::scripts::SERVER_TIME;
use forze_redis::tracking::connection::{TrackingConnection, TrackingTarget};
use forze_redis::tracking::topology::TrackingSource;
use redis_protocol::resp3::types::OwnedFrame;
use serde::Serialize;

use crate::frames::{info_fields, int, items, pairs};

/// How a check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// What forze-redis needs is there.
    Pass,
    /// Works, with a risk or a cost worth knowing.
    Warn,
    /// A contract will not work (or not safely) on this deployment.
    Fail,
    /// Could not run (an earlier check failed).
    Skip,
}

impl Status {
    /// The label printed in the table.
    pub fn label(self) -> &'static str {
        match self {
            Status::Pass => "PASS",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
            Status::Skip => "SKIP",
        }
    }
}

/// One check's verdict.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    /// The check's name.
    pub check: &'static str,
    /// How it ended.
    pub status: Status,
    /// What was found.
    pub reason: String,
    /// What to do, when something is to be done.
    pub fix: Option<String>,
}

impl Verdict {
    /// A verdict with a fix.
    fn new(check: &'static str, status: Status, reason: String, fix: &str) -> Self {
        Verdict {
            check,
            status,
            reason,
            fix: Some(fix.to_string()),
        }
    }

    fn pass(check: &'static str, reason: String) -> Self {
        Verdict {
            check,
            status: Status::Pass,
            reason,
            fix: None,
        }
    }

    fn skip(check: &'static str, why: &str) -> Self {
        Verdict {
            check,
            status: Status::Skip,
            reason: why.to_string(),
            fix: None,
        }
    }
}

const NODE_CHECKS: [&str; 7] = [
    "server",
    "resp3_client_tracking",
    "clock",
    "maxmemory_policy",
    "persistence",
    "cluster_slots",
    "latency",
];

/// Every check against the deployment of `config`, each step bounded by `timeout`.
pub async fn run(config: &RedisConfig, timeout: Duration) -> Vec<Verdict> {
    let mut out = Vec::new();
    let conn = match RedisConnection::build(config) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            out.push(Verdict::new(
                "connect",
                Status::Fail,
                e.to_string(),
                "fix the URL or TLS options",
            ));
            return out;
        }
    };
    conn.connect_in_background();
    let started = Instant::now();
    // The pool's connection is one check; the checks of each primary still run without it
    // (a cluster with a slot unassigned refuses the pool, and the slot check says why).
    let pool_up = match conn.wait_connected(timeout * 2).await {
        Ok(()) => {
            out.push(Verdict::pass(
                "connect",
                format!("connected in {} ms", started.elapsed().as_millis()),
            ));
            true
        }
        Err(e) => {
            let cause = conn
                .diagnostics()
                .last()
                .map(|c| c.to_string())
                .unwrap_or_else(|| e.to_string());
            out.push(Verdict::new(
                "connect",
                Status::Fail,
                format!("no connection within {:?}: {cause}", timeout * 2),
                "check the address, the credentials and the TLS settings (CA, server name, \
                 client certificate); a cluster must serve every slot (see cluster_slots)",
            ));
            false
        }
    };

    let mut nodes = Vec::new();
    let primaries = match TrackingSource::new(config, &conn) {
        Ok(source) => source
            .resolve("forze-doctor", timeout)
            .await
            .map(|(t, _)| t.primaries)
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    let primaries: Vec<TrackingTarget> = match primaries {
        Ok(p) => p,
        Err(e) => {
            out.push(Verdict::new(
                "server",
                Status::Fail,
                format!("cannot find the primaries: {e}"),
                "a TCP URL of a single server, a cluster seed or the sentinels",
            ));
            vec![]
        }
    };
    let mut connect_errors = Vec::new();
    for target in &primaries {
        match TrackingConnection::connect(target, "forze-doctor", timeout).await {
            Ok(c) => nodes.push((target.addr(), Some(c))),
            Err(e) => connect_errors.push(format!("{}: {e}", target.addr())),
        }
    }
    if !primaries.is_empty() {
        out.push(server(&mut nodes, &connect_errors, timeout).await);
        out.push(client_tracking(&primaries, timeout).await);
    }
    if pool_up {
        out.push(scripts(&conn, &mut nodes, timeout).await);
        out.push(clock(&conn).await);
    } else {
        out.push(Verdict::skip("scripts", "the pool is not connected"));
        out.push(Verdict::skip("clock", "the pool is not connected"));
    }
    if primaries.is_empty() {
        // The `server` verdict said why no primary was found.
        out.push(Verdict::skip("resp3_client_tracking", "no primary found"));
    }
    if nodes.is_empty() {
        for c in &NODE_CHECKS[3..] {
            out.push(Verdict::skip(c, "no RESP3 connection to a primary"));
        }
    } else {
        out.push(maxmemory(&mut nodes, timeout).await);
        out.push(persistence(&mut nodes, timeout).await);
        out.push(cluster_slots(&mut nodes, timeout).await);
        let default_timeout = RedisConfig::new("redis://localhost").command_timeout;
        out.push(latency(&mut nodes, default_timeout, timeout).await);
    }
    conn.quit(timeout).await;
    out
}

/// One request on a node's connection, bounded by `timeout`. A request cut short by the
/// timeout leaves its reply (or half its command) on the wire, so the connection is dropped
/// and every later request to that node fails instead of reading the wrong reply.
async fn request(
    conn: &mut Option<TrackingConnection>,
    args: &[&[u8]],
    timeout: Duration,
) -> Result<OwnedFrame, String> {
    let Some(c) = conn.as_mut() else {
        return Err("connection dropped after an earlier timeout".into());
    };
    match tokio::time::timeout(timeout, c.request(args)).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => {
            *conn = None;
            Err(format!("no reply within {timeout:?}"))
        }
    }
}

async fn server(
    nodes: &mut [(String, Option<TrackingConnection>)],
    connect_errors: &[String],
    timeout: Duration,
) -> Verdict {
    if !connect_errors.is_empty() {
        return Verdict::new(
            "server",
            Status::Fail,
            format!("RESP3 connection refused: {}", connect_errors.join("; ")),
            "Redis or Valkey 6.2 or later, with HELLO allowed for the ACL user",
        );
    }
    let mut seen = Vec::new();
    for (addr, conn) in nodes.iter_mut() {
        let info = match request(conn, &[b"INFO", b"server"], timeout).await {
            Ok(r) => info_fields(&r),
            Err(e) => {
                return Verdict::new(
                    "server",
                    Status::Fail,
                    format!("{addr}: INFO refused: {e}"),
                    "allow INFO for the ACL user",
                )
            }
        };
        let (name, version) = match info.get("valkey_version") {
            Some(v) => ("valkey", v.clone()),
            None => (
                "redis",
                info.get("redis_version")
                    .cloned()
                    .unwrap_or_else(|| "?".into()),
            ),
        };
        let parts: Vec<u32> = version.split('.').filter_map(|p| p.parse().ok()).collect();
        let old = name == "redis" && parts.as_slice() < [6, 2].as_slice();
        if old {
            return Verdict::new(
                "server",
                Status::Fail,
                format!("{addr}: {name} {version}"),
                "upgrade to Redis 6.2 or later (or Valkey): RESP3, CLIENT TRACKING BCAST and GETEX are needed",
            );
        }
        let mode = info
            .get("redis_mode")
            .cloned()
            .unwrap_or_else(|| "standalone".into());
        seen.push(format!("{addr}: {name} {version} ({mode})"));
    }
    Verdict::pass("server", seen.join(", "))
}

async fn client_tracking(primaries: &[TrackingTarget], timeout: Duration) -> Verdict {
    let mut ok = 0;
    for target in primaries {
        let probe = ["forze-doctor:probe:".to_string()];
        match TrackingConnection::open(target, "forze-doctor", &probe, timeout).await {
            Ok(_) => ok += 1,
            Err(e) => {
                return Verdict::new(
                    "resp3_client_tracking",
                    Status::Fail,
                    format!("{}: {e}", target.addr()),
                    "allow HELLO and CLIENT (ACL: +hello +client|tracking +client|setname; do not \
                     rename or disable CLIENT): cache L1s, cached breaker phases and woken lock \
                     waiters need CLIENT TRACKING … BCAST",
                )
            }
        }
    }
    Verdict::pass(
        "resp3_client_tracking",
        format!("HELLO 3 and CLIENT TRACKING BCAST accepted on {ok} primary(ies)"),
    )
}

async fn scripts(
    conn: &RedisConnection,
    nodes: &mut [(String, Option<TrackingConnection>)],
    timeout: Duration,
) -> Verdict {
    let time: forze_redis::Result<Vec<i64>> = conn
        .eval("doctor.scripts", Access::Read, &SERVER_TIME, &[], &[])
        .await;
    // EVALSHA alone can pass on a script another client loaded; forze falls back to EVAL
    // after the script cache is emptied (a restart, SCRIPT FLUSH), so EVAL must work too.
    let eval = match nodes.first_mut() {
        Some((addr, c)) => request(c, &[b"EVAL", b"return 1", b"0"], timeout)
            .await
            .map(drop)
            .map_err(|e| format!("{addr}: EVAL refused: {e}")),
        None => Ok(()),
    };
    match (time, eval) {
        (Ok(_), Ok(())) => Verdict::pass("scripts", "EVALSHA and EVAL accepted".into()),
        (Ok(_), Err(e)) => Verdict::new(
            "scripts",
            Status::Fail,
            e,
            "let the ACL user run EVAL (ACL SETUSER <user> +eval): forze sends EVAL when the \
             server's script cache was emptied (restart, SCRIPT FLUSH)",
        ),
        (Err(e), _) => Verdict::new(
            "scripts",
            Status::Fail,
            format!("a Lua script was refused: {e}"),
            "let the ACL user run scripts (ACL SETUSER <user> +evalsha +eval +script|load): \
             locks, idempotency, snapshots, breakers and rate limits are Lua scripts",
        ),
    }
}

async fn clock(conn: &RedisConnection) -> Verdict {
    let time: forze_redis::Result<Vec<i64>> = conn
        .eval("doctor.clock", Access::Read, &SERVER_TIME, &[], &[])
        .await;
    let local = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    match time.as_deref() {
        Ok([secs, micros]) => {
            let server = *secs as f64 + *micros as f64 / 1e6;
            let skew = server - local;
            let shown = format!("server TIME read; skew against this host {:+.3} s", skew);
            if skew.abs() > 1.0 {
                Verdict::new(
                    "clock",
                    Status::Warn,
                    shown,
                    "synchronise clocks (NTP) on servers and clients, and never step them back: \
                     fencing tokens after a lost fence key, breakers and rate limits read the server clock",
                )
            } else {
                Verdict::pass("clock", shown)
            }
        }
        Ok(_) => Verdict::new(
            "clock",
            Status::Fail,
            "unexpected TIME reply".into(),
            "a server that implements TIME",
        ),
        Err(e) => Verdict::new(
            "clock",
            Status::Fail,
            format!("TIME through a script failed: {e}"),
            "see the scripts check",
        ),
    }
}

async fn maxmemory(
    nodes: &mut [(String, Option<TrackingConnection>)],
    timeout: Duration,
) -> Verdict {
    let mut findings = Vec::new();
    let mut worst = Status::Pass;
    for (addr, conn) in nodes.iter_mut() {
        let reply = request(conn, &[b"CONFIG", b"GET", b"maxmemory-policy"], timeout).await;
        let policy = match reply {
            Ok(r) => pairs(&r).get("maxmemory-policy").cloned(),
            Err(_) => None,
        };
        let policy = match policy {
            Some(p) => p,
            None => {
                // CONFIG may be denied (managed services): INFO memory says it too.
                match request(conn, &[b"INFO", b"memory"], timeout).await {
                    Ok(r) => info_fields(&r)
                        .get("maxmemory_policy")
                        .cloned()
                        .unwrap_or_default(),
                    Err(_) => String::new(),
                }
            }
        };
        // Without a memory limit nothing is ever evicted, whatever the policy says.
        let limit = match request(conn, &[b"INFO", b"memory"], timeout).await {
            Ok(r) => info_fields(&r)
                .get("maxmemory")
                .and_then(|v| v.parse::<u64>().ok()),
            Err(_) => None,
        };
        let evicting = policy != "noeviction" && !policy.is_empty();
        let status = if policy.is_empty() {
            Status::Warn
        } else if evicting && limit == Some(0) {
            // A limit set later (or by the platform) would make the policy bite.
            Status::Warn
        } else if policy.starts_with("allkeys") {
            Status::Fail
        } else if policy.starts_with("volatile") {
            Status::Warn
        } else {
            Status::Pass
        };
        worst = worst.max_severity(status);
        let limit = match limit {
            Some(0) => " (no maxmemory set)".to_string(),
            Some(n) => format!(" (maxmemory {} MiB)", n >> 20),
            None => String::new(),
        };
        findings.push(format!(
            "{addr}: {}{limit}",
            if policy.is_empty() {
                "policy unreadable"
            } else {
                &policy
            }
        ));
    }
    let reason = findings.join(", ");
    match worst {
        Status::Pass => Verdict::pass("maxmemory_policy", reason),
        Status::Fail => Verdict::new(
            "maxmemory_policy",
            Status::Fail,
            reason,
            "CONFIG SET maxmemory-policy noeviction: an allkeys-* policy can evict locks, fence \
             keys and idempotency records under memory pressure, breaking mutual exclusion, \
             token order and exactly-once",
        ),
        _ => Verdict::new(
            "maxmemory_policy",
            Status::Warn,
            reason,
            "prefer noeviction: a volatile-* policy can evict held locks and idempotency \
             records (they have TTLs) under memory pressure; size maxmemory so it never does",
        ),
    }
}

async fn persistence(
    nodes: &mut [(String, Option<TrackingConnection>)],
    timeout: Duration,
) -> Verdict {
    let mut without_aof = Vec::new();
    let mut details = Vec::new();
    for (addr, conn) in nodes.iter_mut() {
        let p = request(conn, &[b"INFO", b"persistence"], timeout)
            .await
            .map(|r| info_fields(&r));
        let r = request(conn, &[b"INFO", b"replication"], timeout)
            .await
            .map(|r| info_fields(&r));
        let aof = p
            .as_ref()
            .ok()
            .and_then(|f| f.get("aof_enabled"))
            .is_some_and(|v| v == "1");
        let replicas = r
            .as_ref()
            .ok()
            .and_then(|f| f.get("connected_slaves"))
            .cloned()
            .unwrap_or_else(|| "?".into());
        if !aof {
            without_aof.push(addr.clone());
        }
        details.push(format!(
            "{addr}: aof {}, {replicas} replica(s)",
            if aof { "on" } else { "off" }
        ));
    }
    if without_aof.is_empty() {
        Verdict::pass("persistence", details.join(", "))
    } else {
        Verdict::new(
            "persistence",
            Status::Warn,
            details.join(", "),
            "without AOF a restart (or a failover before replication) loses fence keys: tokens \
             then rely on the server clock never stepping back. Turn on appendonly, or keep \
             server clocks synchronised; see docs/locks.md",
        )
    }
}

async fn cluster_slots(
    nodes: &mut [(String, Option<TrackingConnection>)],
    timeout: Duration,
) -> Verdict {
    let Some((_, first)) = nodes.first_mut() else {
        return Verdict::skip("cluster_slots", "no connection");
    };
    let info = request(first, &[b"INFO", b"cluster"], timeout)
        .await
        .map(|r| info_fields(&r));
    if !info
        .as_ref()
        .is_ok_and(|f| f.get("cluster_enabled").is_some_and(|v| v == "1"))
    {
        return Verdict::pass("cluster_slots", "not a cluster".into());
    }
    // Every primary's own view: the owner of a slot it gave up knows at once, the others
    // only when told. A slot any primary sees unserved is reported.
    let mut covered_by_all = vec![true; 16384];
    let mut states = Vec::new();
    for (addr, conn) in nodes.iter_mut() {
        let slots = match request(conn, &[b"CLUSTER", b"SLOTS"], timeout).await {
            Ok(r) => r,
            Err(e) => {
                return Verdict::new(
                    "cluster_slots",
                    Status::Fail,
                    format!("{addr}: CLUSTER SLOTS refused: {e}"),
                    "allow CLUSTER SLOTS and CLUSTER NODES for the ACL user",
                )
            }
        };
        let mut covered = vec![false; 16384];
        for range in items(&slots).unwrap_or(&[]) {
            let r = items(range).unwrap_or(&[]);
            if let (Some(start), Some(end)) = (r.first().and_then(int), r.get(1).and_then(int)) {
                for s in start.max(0)..=end.min(16383) {
                    covered[s as usize] = true;
                }
            }
        }
        for (all, this) in covered_by_all.iter_mut().zip(covered) {
            *all &= this;
        }
        if let Ok(r) = request(conn, &[b"CLUSTER", b"INFO"], timeout).await {
            let state = info_fields(&r)
                .get("cluster_state")
                .cloned()
                .unwrap_or_default();
            states.push(format!("{addr}: {state}"));
        }
    }
    let mut missing = Vec::new();
    let mut s = 0;
    while s < 16384 {
        if covered_by_all[s] {
            s += 1;
            continue;
        }
        let start = s;
        while s < 16384 && !covered_by_all[s] {
            s += 1;
        }
        missing.push(if s - 1 == start {
            format!("{start}")
        } else {
            format!("{start}-{}", s - 1)
        });
    }
    let failing = states.iter().any(|s| s.ends_with(": fail"));
    if missing.is_empty() && !failing {
        Verdict::pass(
            "cluster_slots",
            format!(
                "all 16384 slots served; cluster_state {}",
                states.join(", ")
            ),
        )
    } else {
        Verdict::new(
            "cluster_slots",
            Status::Fail,
            format!(
                "slots not served: {}; cluster_state {}",
                if missing.is_empty() {
                    "none".to_string()
                } else {
                    missing.join(", ")
                },
                states.join(", ")
            ),
            "assign every slot (CLUSTER ADDSLOTS, or redis-cli --cluster fix): keys in an \
             unassigned slot fail with CLUSTERDOWN",
        )
    }
}

async fn latency(
    nodes: &mut [(String, Option<TrackingConnection>)],
    command_timeout: Duration,
    timeout: Duration,
) -> Verdict {
    let mut findings = Vec::new();
    let mut slow = false;
    for (addr, conn) in nodes.iter_mut() {
        let mut rtts = Vec::new();
        for _ in 0..20 {
            let t = Instant::now();
            if request(conn, &[b"PING"], timeout).await.is_err() {
                break;
            }
            rtts.push(t.elapsed());
        }
        if rtts.is_empty() {
            findings.push(format!("{addr}: PING failed"));
            slow = true;
            continue;
        }
        rtts.sort();
        let (p50, max) = (rtts[rtts.len() / 2], rtts[rtts.len() - 1]);
        slow |= p50 > command_timeout / 10;
        findings.push(format!(
            "{addr}: p50 {:.2} ms, max {:.2} ms",
            p50.as_secs_f64() * 1e3,
            max.as_secs_f64() * 1e3
        ));
    }
    if slow {
        Verdict::new(
            "latency",
            Status::Warn,
            findings.join(", "),
            "round trips above a tenth of forze's default command_timeout (1 s) leave \
             little margin: raise [redis] command_timeout or bring the service closer to Redis",
        )
    } else {
        Verdict::pass("latency", findings.join(", "))
    }
}

impl Status {
    fn max_severity(self, other: Status) -> Status {
        let rank = |s: Status| match s {
            Status::Pass | Status::Skip => 0,
            Status::Warn => 1,
            Status::Fail => 2,
        };
        if rank(other) > rank(self) {
            other
        } else {
            self
        }
    }
}

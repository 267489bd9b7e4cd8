//! Supervision drills: a child panicking under load, the restart intensity exceeded, and a
//! shutdown that leaves nothing behind. Run on the local backend and on every server found.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{config, spawn_ready, Backend};
use forze_redis::counter::CounterId;
use forze_redis::ErrorKind;
use forze_redis_actors::{ChildKind, CounterMsg, Forze, ForzeHandle};
use forze_redis_testkit::{wait_until, wait_until_async};
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::sync::mpsc;

const RESOURCES: &str = r#"
[counters.jobs]
fallback = "local"
[counters.strict]
"#;

/// Every caller's bound: the call timeout (2 s) plus slack for a restart.
const CALLER_BOUND: Duration = Duration::from_secs(4);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_panicking_under_load_is_restarted_and_no_caller_hangs() {
    for backend in Backend::all() {
        let label = backend.label();
        let forze = spawn_ready(config(backend.url().as_deref(), "panic-load", RESOURCES)).await;
        let jobs = forze.counter("jobs").unwrap();
        let id = CounterId::suffix("panic-load");
        jobs.reset(&id, 0).await.unwrap();

        let stop = Instant::now() + Duration::from_millis(1500);
        let ok = Arc::new(AtomicU64::new(0));
        let typed_errors = Arc::new(AtomicU64::new(0));
        let unknown = Arc::new(AtomicU64::new(0));
        let mut load = Vec::new();
        for worker in 0..16 {
            let (forze, id, ok, typed_errors, unknown) = (
                forze.clone(),
                id.clone(),
                ok.clone(),
                typed_errors.clone(),
                unknown.clone(),
            );
            load.push(tokio::spawn(async move {
                let jobs = forze.counter("jobs").unwrap();
                let actor = forze.names().counter("jobs");
                while Instant::now() < stop {
                    let started = Instant::now();
                    // Half the callers go through the actor's mailbox, half through the handle.
                    let result = if worker % 2 == 0 {
                        jobs.incr(&id, 1).await
                    } else {
                        message_incr(&actor, &id).await
                    };
                    assert!(
                        started.elapsed() < CALLER_BOUND,
                        "a caller waited {:?}",
                        started.elapsed()
                    );
                    match result {
                        Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                        // A write whose reply did not come in time may have been applied.
                        Err(e) if e.kind() == ErrorKind::OutcomeUnknown => {
                            unknown.fetch_add(1, Ordering::Relaxed)
                        }
                        Err(e) => {
                            assert!(
                                matches!(e.kind(), ErrorKind::Unavailable | ErrorKind::Timeout),
                                "untyped failure: {e}"
                            );
                            // Back off like a real caller instead of spinning.
                            tokio::time::sleep(Duration::from_millis(5)).await;
                            typed_errors.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            }));
        }
        // Panic the counter actor three times and (with Redis) the pool actor once, mid-load.
        let mut kinds = vec![ChildKind::Counter("jobs".into()); 3];
        if forze.is_redis() {
            kinds.push(ChildKind::Pool);
        }
        for (n, kind) in kinds.into_iter().enumerate() {
            tokio::time::sleep(Duration::from_millis(200)).await;
            wait_restarted(&forze, n as u64).await;
            assert!(forze.inject_panic(kind).await.unwrap(), "{label}");
        }
        for task in load {
            task.await.expect("no caller panicked or hung");
        }
        let succeeded = ok.load(Ordering::Relaxed);
        assert!(succeeded > 0, "{label}: no call succeeded under load");

        // Every success was applied exactly once; an unknown outcome at most once.
        let unknown = unknown.load(Ordering::Relaxed);
        let value = jobs.get(&id).await.unwrap() as u64;
        assert!(
            (succeeded..=succeeded + unknown).contains(&value),
            "{label}: value {value} vs {succeeded} ok + {unknown} unknown"
        );
        let expected = if forze.is_redis() { 4 } else { 3 };
        wait_restarted(&forze, expected).await;
        let stats = forze.stats().await.unwrap();
        assert_eq!(stats.supervisor.restarts, expected, "{label}");
        eprintln!(
            "{label}: {succeeded} ok, {unknown} unknown, {} typed errors, {} restarts",
            typed_errors.load(Ordering::Relaxed),
            stats.supervisor.restarts
        );
        forze.shutdown().await.unwrap();
    }
}

/// Wait until the supervisor has performed `restarts` restarts and every child runs again.
async fn wait_restarted(forze: &ForzeHandle, restarts: u64) {
    let children = if forze.is_redis() { 3 } else { 2 };
    wait_until_async(Duration::from_secs(5), "children restarted", || async {
        match forze.stats().await {
            Ok(s) => {
                s.supervisor.restarts >= restarts
                    && s.supervisor.children_restarting == 0
                    && s.supervisor.children_running == children
            }
            Err(_) => false,
        }
    })
    .await;
}

async fn message_incr(actor: &str, id: &CounterId) -> forze_redis::Result<i64> {
    let Some(cell) = ractor::registry::where_is(actor) else {
        return Err(forze_redis::Error::unavailable("counter.incr"));
    };
    let actor: ActorRef<CounterMsg> = cell.into();
    let id = id.clone();
    match actor
        .call(
            |reply| CounterMsg::Incr { id, by: 1, reply },
            Some(Duration::from_secs(2)),
        )
        .await
    {
        Ok(ractor::rpc::CallResult::Success(r)) => r,
        Ok(ractor::rpc::CallResult::Timeout) => Err(forze_redis::Error::Timeout {
            op: "counter.incr".into(),
            after: Duration::from_secs(2),
        }),
        // The actor died with the request in its mailbox: the caller learns it at once.
        Ok(ractor::rpc::CallResult::SenderError) | Err(_) => {
            Err(forze_redis::Error::unavailable("counter.incr"))
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_state_survives_a_counter_actor_restart() {
    let forze = spawn_ready(config(None, "local-survives", RESOURCES)).await;
    let jobs = forze.counter("jobs").unwrap();
    let id = CounterId::main();
    assert_eq!(jobs.incr(&id, 41).await.unwrap(), 41);
    assert!(forze
        .inject_panic(ChildKind::Counter("jobs".into()))
        .await
        .unwrap());
    wait_restarted(&forze, 1).await;
    assert_eq!(
        message_incr(&forze.names().counter("jobs"), &id)
            .await
            .unwrap(),
        42,
        "the restarted actor sees the value from before"
    );
    forze.shutdown().await.unwrap();
}

/// A parent actor that forwards the supervision events it receives.
struct Parent;

impl Actor for Parent {
    type Msg = ();
    type State = mpsc::UnboundedSender<String>;
    type Arguments = mpsc::UnboundedSender<String>;

    async fn pre_start(
        &self,
        _: ActorRef<()>,
        tx: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(tx)
    }

    async fn handle_supervisor_evt(
        &self,
        _: ActorRef<()>,
        event: SupervisionEvent,
        tx: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let line = match event {
            SupervisionEvent::ActorFailed(cell, err) => {
                format!("failed {} {err}", cell.get_name().unwrap_or_default())
            }
            SupervisionEvent::ActorTerminated(cell, _, reason) => format!(
                "terminated {} {}",
                cell.get_name().unwrap_or_default(),
                reason.unwrap_or_default()
            ),
            _ => return Ok(()),
        };
        let _ = tx.send(line);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exceeding_the_restart_intensity_fails_the_supervisor_to_its_parent() {
    for backend in Backend::all() {
        let label = backend.label();
        let mut cfg = config(backend.url().as_deref(), "intensity", RESOURCES);
        cfg.supervision.max_restarts = 2;
        cfg.supervision.restart_window = Duration::from_secs(30);
        let (tx, mut events) = mpsc::unbounded_channel();
        let (parent, parent_join) = Actor::spawn(None, Parent, tx).await.unwrap();
        let (forze, join) = Forze::spawn_linked(cfg, parent.get_cell()).await.unwrap();
        let names = [
            forze.names().supervisor(),
            forze.names().counter("jobs"),
            forze.names().counter("strict"),
        ];

        // Two restarts are within the limit; the third failure escalates.
        for round in 0..3 {
            wait_restarted(&forze, round).await;
            assert!(
                forze
                    .inject_panic(ChildKind::Counter("jobs".into()))
                    .await
                    .unwrap(),
                "{label}: round {round}"
            );
        }
        let event = tokio::time::timeout(Duration::from_secs(10), events.recv())
            .await
            .expect("the parent hears of the supervisor within 10 s")
            .unwrap();
        assert!(
            event.starts_with("failed ") && event.contains("restart intensity exceeded"),
            "{label}: parent got `{event}`"
        );
        tokio::time::timeout(Duration::from_secs(10), join)
            .await
            .expect("supervisor task ended")
            .unwrap();
        // The failed tree left nothing behind.
        for name in &names {
            assert!(
                ractor::registry::where_is(name.clone()).is_none(),
                "{label}: {name} still registered"
            );
        }
        assert_eq!(forze.tasks_in_flight(), 0, "{label}");
        let err = forze
            .counter("jobs")
            .unwrap()
            .incr(&CounterId::main(), 1)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable, "{label}");
        parent.stop(None);
        parent_join.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_leaves_no_task_actor_or_connection_behind() {
    for backend in Backend::all() {
        let label = backend.label();
        let mut cfg = config(backend.url().as_deref(), "shutdown", RESOURCES);
        let client_name = format!("forze-shutdown-{}", std::process::id());
        if let Some(redis) = cfg.redis.as_mut() {
            redis.client_name = client_name.clone();
        }
        let forze = spawn_ready(cfg).await;
        let names = [
            forze.names().supervisor(),
            forze.names().pool(),
            forze.names().counter("jobs"),
            forze.names().counter("strict"),
        ];
        // Requests in flight through both ways in while shutdown begins.
        let mut load = Vec::new();
        for _ in 0..8 {
            let forze = forze.clone();
            load.push(tokio::spawn(async move {
                let jobs = forze.counter("jobs").unwrap();
                for _ in 0..200 {
                    let a = jobs.incr(&CounterId::main(), 1).await;
                    let b = message_incr(&forze.names().counter("jobs"), &CounterId::main()).await;
                    for r in [a, b] {
                        if let Err(e) = r {
                            assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
                        }
                    }
                }
            }));
        }
        if let Backend::Server(server) = &backend {
            // Named by the pool actor once it has handled the connect, which may come after
            // the first probe published `Up`.
            wait_until(
                Duration::from_secs(5),
                "the pool's connections carry the name",
                || {
                    server
                        .client_list()
                        .iter()
                        .any(|c| c.get("name") == Some(&client_name))
                },
            )
            .await;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
        forze.shutdown().await.unwrap();
        for task in load {
            task.await.unwrap();
        }
        assert_eq!(forze.tasks_in_flight(), 0, "{label}: request tasks left");
        for name in &names {
            assert!(
                ractor::registry::where_is(name.clone()).is_none(),
                "{label}: {name} still registered"
            );
        }
        if let Backend::Server(server) = &backend {
            wait_until(
                Duration::from_secs(5),
                "server sees no forze connection",
                || {
                    !server
                        .client_list()
                        .iter()
                        .any(|c| c.get("name") == Some(&client_name))
                },
            )
            .await;
            // Only the test kit's own admin connection is left.
            let left = server.client_list();
            assert!(left.len() <= 1, "{label}: clients left: {left:?}");
        }
        // A second shutdown is a no-op.
        forze.shutdown().await.unwrap();
    }
}

/// With Redis frozen and a long command timeout, requests in flight cannot end by themselves:
/// shutdown still ends within its bound, cancels them (their callers hear at once), and leaves
/// no task behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_redis_frozen_cancels_what_it_cannot_drain_within_its_bound() {
    let bin = forze_redis_testkit::server_binaries().remove(0);
    let server = forze_redis_testkit::TestServer::start(&bin);
    let mut cfg = config(Some(&server.url()), "shutdown-frozen", RESOURCES);
    let redis = cfg.redis.as_mut().unwrap();
    redis.command_timeout = Duration::from_secs(60);
    redis.unresponsive_timeout = Duration::from_secs(60);
    cfg.supervision.shutdown_timeout = Duration::from_millis(500);
    let forze = spawn_ready(cfg).await;
    let actor: ActorRef<CounterMsg> = ractor::registry::where_is(forze.names().counter("strict"))
        .expect("counter actor")
        .into();
    server.pause();
    let mut callers = Vec::new();
    for _ in 0..4 {
        let actor = actor.clone();
        callers.push(tokio::spawn(async move {
            actor
                .call(
                    |reply| CounterMsg::Incr {
                        id: CounterId::main(),
                        by: 1,
                        reply,
                    },
                    Some(Duration::from_secs(60)),
                )
                .await
        }));
    }
    wait_until(Duration::from_secs(5), "requests in flight", || {
        forze.tasks_in_flight() == 4
    })
    .await;
    let started = Instant::now();
    let stopped = forze.shutdown().await;
    let took = started.elapsed();
    server.resume();
    stopped.expect("shutdown within its bound");
    eprintln!("shutdown with Redis frozen took {took:?} (shutdown_timeout 500 ms)");
    assert!(
        took <= Duration::from_millis(3 * 500 + 1000),
        "shutdown took {took:?}"
    );
    assert_eq!(forze.tasks_in_flight(), 0, "request tasks left");
    for caller in callers {
        let answer = tokio::time::timeout(Duration::from_secs(1), caller)
            .await
            .expect("the caller heard of the cancelled request at once")
            .unwrap();
        assert!(
            matches!(answer, Ok(ractor::rpc::CallResult::SenderError)),
            "{answer:?}"
        );
    }
}

/// Every resource handle carries the shutdown gate: after shutdown, every operation of every
/// contract (lock queries and owner-checked release included) is refused with `Unavailable`
/// before anything runs, and handles taken before shutdown are refused too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_shutdown_every_handle_refuses_every_operation() {
    use forze_redis_actors::{CacheKey, IdemRequest, LockId, RunId};
    let resources = "[counters.jobs]\n[caches.docs]\n[locks.jobs]\n[idempotency.orders]\n\
                     [snapshots.search]\n[rate_limits.api]\npermits = 10\nper = \"1s\"\n[breakers.api]";
    let forze = spawn_ready(config(None, "gate", resources)).await;
    let counter = forze.counter("jobs").unwrap();
    let cache = forze.cache("docs").unwrap();
    let lock = forze.lock("jobs").unwrap();
    let idem = forze.idempotency("orders").unwrap();
    let snaps = forze.snapshot("search").unwrap();
    let limiter = forze.rate_limit("api").unwrap();
    let breaker = forze.breaker("api").unwrap();
    let id = LockId::new("j");
    let guard = lock.acquire(&id, Duration::from_secs(1)).await.unwrap();
    let owner = guard.owner().to_string();
    forze.shutdown().await.unwrap();

    let key = CacheKey::new("k");
    let results: Vec<(&str, forze_redis::Result<()>)> = vec![
        (
            "counter.incr",
            counter.incr(&CounterId::main(), 1).await.map(drop),
        ),
        (
            "counter.get",
            counter.get(&CounterId::main()).await.map(drop),
        ),
        ("cache.get", cache.get::<u64>(&key).await.map(drop)),
        ("cache.set", cache.set(&key, &1u64, None).await),
        ("cache.delete", cache.delete(&key).await.map(drop)),
        ("cache.unlink", cache.unlink(&key).await.map(drop)),
        (
            "lock.acquire",
            lock.try_acquire(&LockId::new("other")).await.map(drop),
        ),
        ("lock.is_locked", lock.is_locked(&id).await.map(drop)),
        ("lock.owner", lock.owner(&id).await.map(drop)),
        ("lock.ttl", lock.ttl(&id).await.map(drop)),
        (
            "lock.release_as",
            lock.release_as(&id, &owner).await.map(drop),
        ),
        (
            "lock.extend_as",
            lock.extend_as(&id, &owner).await.map(drop),
        ),
        (
            "idempotency.begin",
            idem.begin(&IdemRequest::new("op", "k", "h"))
                .await
                .map(drop),
        ),
        (
            "snapshot.meta",
            snaps.meta(&RunId::new("r")).await.map(drop),
        ),
        (
            "ratelimit.try_acquire",
            limiter.try_acquire("r", 1).await.map(drop),
        ),
        ("breaker.admit", breaker.admit("r").await.map(drop)),
    ];
    for (op, result) in results {
        let err = result.expect_err(op);
        assert_eq!(err.kind(), ErrorKind::Unavailable, "{op}: {err}");
    }
    drop(guard);
}

/// A supervisor whose start fails after its connections began coming up (a child's name is
/// taken by another supervisor of the process) closes them: `spawn` fails and nothing keeps
/// connecting to the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_start_leaves_no_connection_behind() {
    let bin = &forze_redis_testkit::server_binaries()[0];
    let server = forze_redis_testkit::TestServer::start(bin);
    let prefix = common::prefix("failed-start");
    // Another supervisor, whose actors are named `<prefix>.counter.…`: its own supervisor
    // takes the name of a counter named `supervisor` below.
    let taken = forze_redis::Config::from_toml_str(&format!(
        "mode = \"embedded\"\n[supervision]\nname_prefix = \"{prefix}.counter\""
    ))
    .unwrap();
    let (taken, _join) = Forze::spawn(taken).await.unwrap();
    let mut cfg = config(Some(&server.url()), "unused", "[counters.supervisor]");
    cfg.supervision.name_prefix = prefix;
    assert!(Forze::spawn(cfg).await.is_err(), "the start should fail");
    wait_until(Duration::from_secs(5), "no connection left", || {
        server.client_list().len() <= 1
    })
    .await;
    // And none comes back (a pool left running reconnects).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let left = server.client_list();
    assert!(left.len() <= 1, "clients left: {left:?}");
    taken.shutdown().await.unwrap();
}

//! Idempotency records: the battery on the local backend and every server found, 50 concurrent
//! duplicates over 3 supervisors, a crashed worker's claim, Redis down, and lost replies.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{config, spawn_ready, Backend};
use forze_redis::idempotency::{payload_hash, Begin, IdemRequest, RunError};
use forze_redis::keys::TenantId;
use forze_redis::{ConflictReason, ErrorKind};
use forze_redis_actors::{ForzeHandle, Idempotency};
use forze_redis_testkit::{server_binaries, FaultProxy, ProxyMode, TestServer};

const RESOURCES: &str = r#"
[idempotency.orders]
[idempotency.quick]
pending_lease = "300ms"
retention = "1h"
poll_interval = "10ms"
[idempotency.tenanted]
tenant_aware = true
"#;

fn req(key: &str, payload: &str) -> IdemRequest {
    IdemRequest::new("create_order", key, payload_hash(payload.as_bytes()))
}

fn reason(e: &forze_redis::Error) -> Option<ConflictReason> {
    e.conflict_reason()
}

async fn claim(h: &Idempotency, r: &IdemRequest) -> forze_redis::idempotency::Claim {
    match h.begin(r).await.unwrap() {
        Begin::Proceed(c) => c,
        Begin::Replay(_) => panic!("expected a claim"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_battery_on_every_backend() {
    for backend in Backend::batteries() {
        let label = backend.label();
        eprintln!("idempotency battery on {label}");
        let forze = spawn_ready(config(backend.url().as_deref(), "idem-battery", RESOURCES)).await;
        let orders = forze.idempotency("orders").unwrap();

        // Claim, duplicate refused at once, commit, replay.
        let r = req("k1", "payload-1");
        let c = claim(&orders, &r).await;
        let e = orders.begin(&r).await.unwrap_err();
        assert_eq!(reason(&e), Some(ConflictReason::InProgress), "{label}: {e}");
        assert!(e.is_retryable());
        // Mismatch is checked before the state: pending...
        let e = orders.begin(&req("k1", "payload-2")).await.unwrap_err();
        assert_eq!(reason(&e), Some(ConflictReason::PayloadMismatch), "{label}");
        orders.commit(&c, b"\x00result bytes\xff").await.unwrap();
        match orders.begin(&r).await.unwrap() {
            Begin::Replay(bytes) => assert_eq!(&bytes[..], b"\x00result bytes\xff", "{label}"),
            other => panic!("{label}: {other:?}"),
        }
        // ...and done.
        let e = orders.begin(&req("k1", "payload-2")).await.unwrap_err();
        assert_eq!(reason(&e), Some(ConflictReason::PayloadMismatch), "{label}");
        // A replayed commit by the owner is harmless; fail after commit keeps the record.
        orders.commit(&c, b"\x00result bytes\xff").await.unwrap();
        assert!(!orders.fail(&c).await.unwrap(), "{label}");
        assert!(matches!(orders.begin(&r).await.unwrap(), Begin::Replay(_)));

        // fail releases only the caller's own claim.
        let r2 = req("k2", "p");
        let first = claim(&orders, &r2).await;
        assert!(orders.fail(&first).await.unwrap(), "{label}");
        let second = claim(&orders, &r2).await;
        assert!(
            !orders.fail(&first).await.unwrap(),
            "{label}: a stale fail released another claim"
        );
        let e = orders.begin(&r2).await.unwrap_err();
        assert_eq!(reason(&e), Some(ConflictReason::InProgress), "{label}");
        let e = orders.commit(&first, b"late").await.unwrap_err();
        assert_eq!(reason(&e), Some(ConflictReason::NotOwner), "{label}");
        orders.commit(&second, b"second").await.unwrap();

        crashed_worker_blocks_only_until_its_lease(&forze, &label).await;
        begin_wait_replays_a_finished_duplicate(&forze, &label).await;
        the_run_wrapper_executes_once(&orders, &label).await;
        inputs_are_validated_and_tenants_isolated(&forze, &label).await;
        for k in backend.all_keys().unwrap_or_default() {
            {
                assert!(
                    !k.contains("k1") && !k.contains("secret"),
                    "{label}: raw key in {k}"
                );
            }
        }
        forze.shutdown().await.unwrap();
    }
}

async fn crashed_worker_blocks_only_until_its_lease(forze: &ForzeHandle, label: &str) {
    let quick = forze.idempotency("quick").unwrap();
    let r = req("crash", "p");
    let crashed = claim(&quick, &r).await; // never commits: "crashes"
    let e = quick.begin(&r).await.unwrap_err();
    assert_eq!(reason(&e), Some(ConflictReason::InProgress), "{label}");
    tokio::time::sleep(Duration::from_millis(350)).await;
    let retry = claim(&quick, &r).await;
    assert!(
        retry.took_over,
        "{label}: the retry took the abandoned claim over"
    );
    let e = quick.commit(&crashed, b"stale").await.unwrap_err();
    assert_eq!(
        reason(&e),
        Some(ConflictReason::NotOwner),
        "{label}: late commit refused"
    );
    quick.commit(&retry, b"fresh").await.unwrap();
    match quick.begin(&r).await.unwrap() {
        Begin::Replay(b) => assert_eq!(&b[..], b"fresh", "{label}"),
        other => panic!("{other:?}"),
    }
}

async fn begin_wait_replays_a_finished_duplicate(forze: &ForzeHandle, label: &str) {
    let quick = forze.idempotency("quick").unwrap();
    let r = req("wait", "p");
    let c = claim(&quick, &r).await;
    let waiter = {
        let (quick, r) = (quick.clone(), r.clone());
        // `Duration::MAX` as "for ever": no deadline, and no panic computing one.
        tokio::spawn(async move { quick.begin_wait(&r, Duration::MAX).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    quick.commit(&c, b"done").await.unwrap();
    let waited = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("the waiter sees the commit");
    match waited.unwrap().unwrap() {
        Begin::Replay(b) => assert_eq!(&b[..], b"done", "{label}"),
        other => panic!("{label}: {other:?}"),
    }
    // A wait that ends before the claim does is still InProgress.
    let r = req("wait2", "p");
    let _c = claim(&quick, &r).await;
    let e = quick
        .begin_wait(&r, Duration::from_millis(50))
        .await
        .unwrap_err();
    assert_eq!(reason(&e), Some(ConflictReason::InProgress), "{label}");
}

async fn the_run_wrapper_executes_once(orders: &Idempotency, label: &str) {
    let runs = Arc::new(AtomicU64::new(0));
    let op = |runs: Arc<AtomicU64>| async move {
        runs.fetch_add(1, Ordering::SeqCst);
        Ok::<_, String>(vec![1u32, 2, 3])
    };
    let r = req("wrapped", "p");
    let a: Vec<u32> = orders.run(&r, || op(runs.clone())).await.unwrap();
    let b: Vec<u32> = orders.run(&r, || op(runs.clone())).await.unwrap();
    assert_eq!(a, b);
    assert_eq!(runs.load(Ordering::SeqCst), 1, "{label}: ran twice");
    // A failing operation releases its claim: the retry runs.
    let r = req("wrapped-fail", "p");
    let e = orders
        .run(&r, || async { Err::<u32, _>("downstream refused") })
        .await
        .unwrap_err();
    assert!(
        matches!(e, RunError::Operation("downstream refused")),
        "{label}"
    );
    let v: u32 = orders
        .run(&r, || async { Ok::<_, String>(7) })
        .await
        .unwrap();
    assert_eq!(v, 7);
}

async fn inputs_are_validated_and_tenants_isolated(forze: &ForzeHandle, label: &str) {
    let orders = forze.idempotency("orders").unwrap();
    for bad in [
        IdemRequest::new("", "k", "h"),
        IdemRequest::new("op", "", "h"),
        IdemRequest::new("op", "k", ""),
    ] {
        let e = orders.begin(&bad).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Validation, "{label}: {bad:?}");
    }
    let t = forze.idempotency("tenanted").unwrap();
    let e = t.begin(&req("k", "p")).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::TenantRequired);
    let a = req("secret-key", "p").for_tenant(TenantId::new("a").unwrap());
    let b = req("secret-key", "other").for_tenant(TenantId::new("b").unwrap());
    let _ca = claim(&t, &a).await;
    let _cb = claim(&t, &b).await; // another tenant: no mismatch, no conflict
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_duplicates_over_three_supervisors_run_once() {
    for bin in server_binaries() {
        let server = TestServer::start(&bin);
        let mut reps = Vec::new();
        for _ in 0..3 {
            reps.push(spawn_ready(config(Some(&server.url()), "idem-dups", RESOURCES)).await);
        }
        let executions = Arc::new(AtomicU64::new(0));
        let r = req("order-42", "the same payload");
        let mut tasks = Vec::new();
        for i in 0..50 {
            let h = reps[i % 3].idempotency("orders").unwrap();
            let (executions, r) = (executions.clone(), r.clone());
            tasks.push(tokio::spawn(async move {
                h.run(&r, || async move {
                    executions.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Ok::<_, String>("order 42 created".to_string())
                })
                .await
            }));
        }
        let (mut ok, mut in_progress) = (0, 0);
        for t in tasks {
            match t.await.unwrap() {
                Ok(v) => {
                    assert_eq!(v, "order 42 created");
                    ok += 1;
                }
                Err(RunError::Idempotency(e)) if reason(&e) == Some(ConflictReason::InProgress) => {
                    in_progress += 1
                }
                Err(e) => panic!("{bin}: {e:?}"),
            }
        }
        assert_eq!(
            executions.load(Ordering::SeqCst),
            1,
            "{bin}: executed more than once"
        );
        assert_eq!(ok + in_progress, 50);
        assert!(ok >= 1);
        // After the commit every duplicate replays.
        for rep in &reps {
            let h = rep.idempotency("orders").unwrap();
            let v: String = h
                .run(&r, || async { Err::<String, _>("must not run") })
                .await
                .unwrap();
            assert_eq!(v, "order 42 created");
        }
        eprintln!("{bin}: 1 execution, {ok} results, {in_progress} InProgress");
        for rep in reps {
            rep.shutdown().await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_is_unavailable_and_never_a_second_execution() {
    for bin in server_binaries() {
        let mut server = TestServer::start(&bin);
        let forze = spawn_ready(config(Some(&server.url()), "idem-down", RESOURCES)).await;
        let h = forze.idempotency("orders").unwrap();
        let r = req("down", "p");
        let v: u32 = h.run(&r, || async { Ok::<_, String>(1) }).await.unwrap();
        assert_eq!(v, 1);
        server.stop();
        // Once the loss is seen nothing is sent: Unavailable, never OutcomeUnknown.
        let f = forze.clone();
        forze_redis_testkit::wait_until(Duration::from_secs(10), "health not Up", move || {
            f.health().state != forze_redis::connection::HealthState::Up
        })
        .await;
        let executions = AtomicU64::new(0);
        for _ in 0..5 {
            let e = h
                .run(&r, || async {
                    executions.fetch_add(1, Ordering::SeqCst);
                    Ok::<u32, String>(2)
                })
                .await
                .unwrap_err();
            match e {
                RunError::Idempotency(e) => assert_eq!(e.kind(), ErrorKind::Unavailable, "{bin}"),
                RunError::Operation(_) => panic!("{bin}: ran"),
            }
        }
        assert_eq!(
            executions.load(Ordering::SeqCst),
            0,
            "{bin}: executed without a claim"
        );
        forze.shutdown().await.unwrap();
    }
}

/// `run`'s commit, after the operation succeeded, is lost on its way (the connection hangs
/// for 300 ms and drops what was sent): `run` sends the commit again, so the result is stored
/// and a duplicate replays it instead of waiting for the claim's lease and running again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_sends_a_lost_commit_again() {
    for bin in server_binaries() {
        let server = TestServer::start(&bin);
        let proxy = Arc::new(FaultProxy::start(server.addr()).await);
        let mut cfg = config(Some(&proxy.url()), "idem-recommit", RESOURCES);
        cfg.redis.as_mut().unwrap().health_interval = Duration::from_secs(600);
        let forze = spawn_ready(cfg).await;
        let h = forze.idempotency("quick").unwrap();
        let warm = claim(&h, &req("warm", "p")).await;
        h.commit(&warm, b"w").await.unwrap();

        let r = req("recommit", "p");
        let p = proxy.clone();
        let value = h
            .run(&r, || async move {
                // The operation is done; what it sends next (the commit) hangs and is lost.
                p.set_mode(ProxyMode::BlackHole);
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    p.set_mode(ProxyMode::Pass);
                });
                Ok::<_, String>(7u64)
            })
            .await
            .unwrap();
        assert_eq!(value, 7);
        // The hung connection lost bytes, so its replies are out of step until the
        // unresponsive check has re-opened it: a call on it meanwhile may time out.
        let mut begun = None;
        for _ in 0..50 {
            match h.begin(&r).await {
                Err(e) if matches!(e.kind(), ErrorKind::OutcomeUnknown | ErrorKind::Timeout) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                other => {
                    begun = Some(other);
                    break;
                }
            }
        }
        match begun {
            Some(Ok(Begin::Replay(b))) => assert_eq!(&b[..], b"7", "{bin}"),
            other => panic!("{bin}: the result was not stored: {other:?}"),
        }
        forze.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_reply_on_begin_or_commit_is_outcome_unknown() {
    for bin in server_binaries() {
        let server = TestServer::start(&bin);
        let proxy = FaultProxy::start(server.addr()).await;
        let mut cfg = config(Some(&proxy.url()), "idem-lost", RESOURCES);
        // No health probes: the lost reply must be ours.
        cfg.redis.as_mut().unwrap().health_interval = Duration::from_secs(600);
        let forze = spawn_ready(cfg).await;
        let h = forze.idempotency("quick").unwrap();

        // Load the scripts first, so the lost reply is a script's that ran (a lost NOSCRIPT
        // reply would prove nothing).
        let warm = claim(&h, &req("warm", "p")).await;
        h.commit(&warm, b"w").await.unwrap();

        // fred may re-send an EVALSHA whose reply was lost once the connection is back; the
        // scripts make that harmless (same owner: proceed again / commit again). So a lost
        // reply surfaces either as OutcomeUnknown or as the replayed answer, never as a
        // second claim or a wrong result.
        proxy.lose_next_reply();
        let first = h.begin(&req("lost-begin", "p")).await;
        match &first {
            Err(e) => assert_eq!(e.kind(), ErrorKind::OutcomeUnknown, "{bin}: {e}"),
            Ok(Begin::Proceed(_)) => eprintln!("{bin}: fred replayed the lost begin"),
            Ok(other) => panic!("{bin}: {other:?}"),
        }
        wait_up(&forze).await;
        // The claim exists (its owner may not know it): a duplicate is refused, not run.
        let e = h.begin(&req("lost-begin", "p")).await.unwrap_err();
        assert_eq!(reason(&e), Some(ConflictReason::InProgress), "{bin}");

        let r = req("lost-commit", "p");
        let c = claim(&h, &r).await;
        proxy.lose_next_reply();
        match h.commit(&c, b"result").await {
            Err(e) => assert_eq!(e.kind(), ErrorKind::OutcomeUnknown, "{bin}: {e}"),
            Ok(()) => eprintln!("{bin}: fred replayed the lost commit"),
        }
        wait_up(&forze).await;
        // Retrying the commit is safe: the same owner's commit answers yes again.
        h.commit(&c, b"result").await.unwrap();
        match h.begin(&r).await.unwrap() {
            Begin::Replay(b) => assert_eq!(&b[..], b"result", "{bin}"),
            other => panic!("{bin}: {other:?}"),
        }
        forze.shutdown().await.unwrap();
    }
}

async fn wait_up(forze: &ForzeHandle) {
    let f = forze.clone();
    forze_redis_testkit::wait_until(Duration::from_secs(10), "reconnected", move || {
        f.health().state == forze_redis::connection::HealthState::Up
    })
    .await;
}

/// A `Begin` message whose caller gave up (its call timed out) before the claim was made:
/// nobody will run the operation, so the claim is released and a retry claims at once
/// instead of waiting for the pending lease (5 minutes here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_its_caller_never_received_is_released() {
    use forze_redis_actors::IdempotencyMsg;
    use ractor::{call_t, ActorRef};
    for bin in server_binaries() {
        let server = TestServer::start(&bin);
        let forze = spawn_ready(config(Some(&server.url()), "idem-undelivered", RESOURCES)).await;
        let h = forze.idempotency("orders").unwrap();
        let actor = ActorRef::<IdempotencyMsg>::where_is(forze.names().idempotency("orders"))
            .expect("registered");
        // Scripts loaded first: the message's begin is then one call, sent while paused.
        let warm = claim(&h, &req("warm", "p")).await;
        h.commit(&warm, b"w").await.unwrap();
        let r = req("undelivered", "p");
        // The server answers 300 ms late (within the command timeout); the caller waits 100.
        server.pause();
        let resume = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            server.resume();
            server
        });
        let call = call_t!(
            actor,
            |reply| IdempotencyMsg::Begin {
                req: r.clone(),
                reply
            },
            100
        );
        assert!(call.is_err(), "{bin}: the call did not time out: {call:?}");
        let _server = resume.await.unwrap();
        let mut begun = None;
        for _ in 0..40 {
            match h.begin(&r).await {
                Ok(b) => {
                    begun = Some(b);
                    break;
                }
                Err(e) if reason(&e) == Some(ConflictReason::InProgress) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("{bin}: {e}"),
            }
        }
        match begun {
            Some(Begin::Proceed(c)) => assert!(!c.took_over, "{bin}"),
            other => panic!("{bin}: the undelivered claim still blocks the key: {other:?}"),
        }
        forze.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_reach_the_same_records_and_survive_an_actor_panic() {
    use forze_redis_actors::{ChildKind, IdempotencyMsg};
    use ractor::{call_t, ActorRef};
    for backend in Backend::all() {
        let label = backend.label();
        let forze = spawn_ready(config(backend.url().as_deref(), "idem-msg", RESOURCES)).await;
        let h = forze.idempotency("orders").unwrap();
        let actor = || {
            ActorRef::<IdempotencyMsg>::where_is(forze.names().idempotency("orders"))
                .expect("registered")
        };
        let r = req("by-message", "p");
        let begun = call_t!(
            actor(),
            |reply| IdempotencyMsg::Begin {
                req: r.clone(),
                reply
            },
            2000
        )
        .unwrap()
        .unwrap();
        let Begin::Proceed(claim) = begun else {
            panic!("{label}: fresh key replayed")
        };
        // The handle sees the claim the message made.
        let e = h.begin(&r).await.unwrap_err();
        assert_eq!(reason(&e), Some(ConflictReason::InProgress), "{label}");
        assert!(forze
            .inject_panic(ChildKind::Idempotency("orders".into()))
            .await
            .unwrap());
        // Records live outside the actor: the restarted actor commits the same claim.
        let mut committed = false;
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let Some(a) = ActorRef::<IdempotencyMsg>::where_is(forze.names().idempotency("orders"))
            else {
                continue;
            };
            let claim = claim.clone();
            if let Ok(r) = call_t!(
                a,
                |reply| IdempotencyMsg::Commit {
                    claim,
                    result: bytes::Bytes::from_static(b"via message"),
                    reply
                },
                2000
            ) {
                r.unwrap();
                committed = true;
                break;
            }
        }
        assert!(committed, "{label}: the restarted actor answered");
        match h.begin(&r).await.unwrap() {
            Begin::Replay(b) => assert_eq!(&b[..], b"via message", "{label}"),
            other => panic!("{label}: {other:?}"),
        }
        forze.shutdown().await.unwrap();
    }
}

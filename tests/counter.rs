//! The counter conformance battery: the same guarantees on the local backend, on every
//! redis-server and on every valkey-server found.

mod common;

use std::collections::HashSet;

use common::{config, spawn_ready, Backend};
use forze_redis::counter::CounterId;
use forze_redis::keys::TenantId;
use forze_redis::{ConflictReason, ErrorKind};
use forze_redis_actors::{CounterMsg, ForzeHandle};
use ractor::{call_t, ActorRef};

const RESOURCES: &str = r#"
[counters.orders]
[counters.orders_archive]
[counters.tenanted]
tenant_aware = true
"#;

/// Three supervisors sharing one backend (for the local backend, three handles of one
/// supervisor: local state is per process by definition).
async fn replicas(backend: &Backend, test: &str) -> Vec<ForzeHandle> {
    match backend.url() {
        None => {
            let one = spawn_ready(config(None, test, RESOURCES)).await;
            vec![one.clone(), one.clone(), one]
        }
        Some(url) => {
            let mut out = Vec::new();
            for _ in 0..3 {
                out.push(spawn_ready(config(Some(&url), test, RESOURCES)).await);
            }
            out
        }
    }
}

async fn shutdown(replicas: Vec<ForzeHandle>) {
    for r in replicas {
        r.shutdown().await.expect("shutdown");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counter_conformance_battery_on_every_backend() {
    for backend in Backend::batteries() {
        let label = backend.label();
        eprintln!("counter battery on {label}");
        let reps = replicas(&backend, "battery").await;
        untouched_counter_reads_zero_and_incr_by_zero_creates_it(&reps[0], &label).await;
        batch_ranges_are_ascending_and_disjoint_under_32_tasks_over_3_replicas(&reps, &label).await;
        reset_is_range_checked_before_any_io(&reps[0], &backend, &label).await;
        overflow_at_the_i64_bounds_is_refused_with_the_value_unchanged(&reps[0], &label).await;
        suffixes_and_tenants_are_isolated(&reps[0], &label).await;
        list_is_exact_prefix_over_250_suffixes(&reps[0], &label).await;
        messages_and_handle_share_one_counter(&reps[1], &label).await;
        invalid_input_is_a_typed_error(&reps[0], &label).await;
        shutdown(reps).await;
    }
}

async fn untouched_counter_reads_zero_and_incr_by_zero_creates_it(f: &ForzeHandle, label: &str) {
    let c = f.counter("orders").unwrap();
    let id = CounterId::suffix("fresh");
    assert_eq!(c.get(&id).await.unwrap(), 0, "{label}");
    assert!(c
        .list(None)
        .await
        .unwrap()
        .iter()
        .all(|e| e.suffix.as_deref() != Some("fresh")));
    assert_eq!(c.incr(&id, 0).await.unwrap(), 0, "{label}");
    let listed = c.list(None).await.unwrap();
    assert!(
        listed
            .iter()
            .any(|e| e.suffix.as_deref() == Some("fresh") && e.value == 0),
        "{label}: incr(0) must create the counter at 0: {listed:?}"
    );
    assert_eq!(c.incr(&id, 1).await.unwrap(), 1, "{label}");
    assert_eq!(c.decr(&id, 3).await.unwrap(), -2, "{label}");
    assert_eq!(c.incr(&id, -2).await.unwrap(), -4, "{label}");
}

async fn batch_ranges_are_ascending_and_disjoint_under_32_tasks_over_3_replicas(
    reps: &[ForzeHandle],
    label: &str,
) {
    let id = CounterId::suffix("batches");
    let mut tasks = Vec::new();
    for t in 0..32 {
        let c = reps[t % reps.len()].counter("orders").unwrap();
        let id = id.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for i in 0..20 {
                let size = 1 + ((t + i) % 5) as i64;
                let r = c.incr_batch(&id, size).await.expect("incr_batch");
                assert_eq!(r.end() - r.start() + 1, size);
                got.push(r);
            }
            got
        }));
    }
    let mut seen = HashSet::new();
    let mut total = 0i64;
    for t in tasks {
        for r in t.await.unwrap() {
            assert!(r.start() <= r.end());
            for v in r {
                assert!(seen.insert(v), "{label}: value {v} allocated twice");
                total += 1;
            }
        }
    }
    // Disjoint and gap-free: exactly 1..=total were handed out.
    assert_eq!(seen.len() as i64, total);
    assert!(seen.iter().all(|v| (1..=total).contains(v)), "{label}");
    let c = reps[0].counter("orders").unwrap();
    assert_eq!(c.get(&id).await.unwrap(), total, "{label}");
}

async fn reset_is_range_checked_before_any_io(f: &ForzeHandle, backend: &Backend, label: &str) {
    let c = f.counter("orders").unwrap();
    let id = CounterId::suffix("reset");
    assert_eq!(c.reset(&id, 41).await.unwrap(), 41);
    let sets_before = backend.command_calls("set");
    for bad in [u64::MAX as i128, i64::MAX as i128 + 1, i64::MIN as i128 - 1] {
        let err = c.reset(&id, bad).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Validation, "{label}: {err}");
    }
    let err = c.reset(&id, u64::MAX).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Validation, "{label}");
    assert_eq!(
        backend.command_calls("set"),
        sets_before,
        "{label}: nothing may be sent"
    );
    assert_eq!(c.get(&id).await.unwrap(), 41, "{label}");
    // Reset is absolute and returns the new value; the sequence continues from it.
    assert_eq!(c.reset(&id, -7).await.unwrap(), -7);
    assert_eq!(c.incr(&id, 1).await.unwrap(), -6);
}

async fn overflow_at_the_i64_bounds_is_refused_with_the_value_unchanged(
    f: &ForzeHandle,
    label: &str,
) {
    let c = f.counter("orders").unwrap();
    let id = CounterId::suffix("bounds");
    let out_of_range = |e: forze_redis::Error| {
        assert_eq!(
            e.conflict_reason(),
            Some(ConflictReason::OutOfRange),
            "{label}: {e}"
        );
    };
    c.reset(&id, i64::MAX).await.unwrap();
    out_of_range(c.incr(&id, 1).await.unwrap_err());
    out_of_range(c.incr_batch(&id, 2).await.unwrap_err());
    assert_eq!(c.get(&id).await.unwrap(), i64::MAX, "{label}");
    assert_eq!(
        c.incr(&id, 0).await.unwrap(),
        i64::MAX,
        "{label}: exact past 2^53"
    );
    assert_eq!(c.decr(&id, 1).await.unwrap(), i64::MAX - 1, "{label}");

    c.reset(&id, i64::MIN).await.unwrap();
    out_of_range(c.decr(&id, 1).await.unwrap_err());
    out_of_range(c.incr(&id, -1).await.unwrap_err());
    assert_eq!(c.get(&id).await.unwrap(), i64::MIN, "{label}");
    c.reset(&id, 0).await.unwrap();
    out_of_range(c.decr(&id, i64::MIN).await.unwrap_err());
    assert_eq!(c.get(&id).await.unwrap(), 0, "{label}");
    // Refused on a counter never set, it stays absent (as on Redis, which creates nothing).
    let never = CounterId::suffix("never-set");
    out_of_range(c.decr(&never, i64::MIN).await.unwrap_err());
    let listed = c.list(None).await.unwrap();
    assert!(
        listed
            .iter()
            .all(|e| e.suffix.as_deref() != Some("never-set")),
        "{label}: a refused decrement created the counter: {listed:?}"
    );
}

async fn suffixes_and_tenants_are_isolated(f: &ForzeHandle, label: &str) {
    let c = f.counter("tenanted").unwrap();
    let err = c.incr(&CounterId::main(), 1).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::TenantRequired, "{label}");
    let tenants = [
        TenantId::new("acme").unwrap(),
        TenantId::new("acme:{x}").unwrap(),
    ];
    for round in 1..=3 {
        for t in &tenants {
            for s in ["a", "b"] {
                let id = CounterId::suffix(s).for_tenant(t.clone());
                assert_eq!(c.incr(&id, 1).await.unwrap(), round, "{label}: {t} {s}");
            }
        }
    }
    let listed = c.list(Some(&tenants[0])).await.unwrap();
    assert_eq!(listed.len(), 2, "{label}: {listed:?}");
    // A non-tenant-aware resource refuses a tenant (dropping it would mix the tenant's
    // data into the shared counters): a Validation error, and nothing written.
    let plain = f.counter("orders").unwrap();
    let id = CounterId::suffix("shared");
    plain.incr(&id, 5).await.unwrap();
    let err = plain
        .incr(&id.clone().for_tenant(tenants[0].clone()), 1)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Validation, "{label}: {err}");
    assert_eq!(plain.get(&id).await.unwrap(), 5, "{label}");
}

async fn list_is_exact_prefix_over_250_suffixes(f: &ForzeHandle, label: &str) {
    let archive = f.counter("orders_archive").unwrap();
    for i in 0..30 {
        archive
            .incr(&CounterId::suffix(format!("arch{i}")), 1)
            .await
            .unwrap();
    }
    archive.incr(&CounterId::main(), 1).await.unwrap();
    let orders = f.counter("orders").unwrap();
    let before: Vec<_> = orders.list(None).await.unwrap();
    for i in 0..250 {
        orders
            .incr(&CounterId::suffix(format!("bulk:{i}")), i + 1)
            .await
            .unwrap();
    }
    let listed = orders.list(None).await.unwrap();
    assert_eq!(listed.len(), before.len() + 250, "{label}");
    for i in 0..250 {
        let name = format!("bulk:{i}");
        let e = listed
            .iter()
            .find(|e| e.suffix.as_deref() == Some(&name))
            .expect("listed");
        assert_eq!(e.value, i + 1, "{label}");
    }
    assert!(
        listed
            .iter()
            .all(|e| e.suffix.as_deref().is_none_or(|s| !s.starts_with("arch"))),
        "{label}: orders_archive leaked into orders"
    );
    let archived = archive.list(None).await.unwrap();
    assert_eq!(archived.len(), 31, "{label}");
    assert_eq!(archived[0].suffix, None);
    // Listing does not move any counter.
    assert_eq!(orders.list(None).await.unwrap(), listed, "{label}");
}

async fn messages_and_handle_share_one_counter(f: &ForzeHandle, label: &str) {
    let c = f.counter("orders").unwrap();
    let id = CounterId::suffix("msg");
    let v = c.incr(&id, 10).await.unwrap();
    let actor = ActorRef::<CounterMsg>::where_is(f.names().counter("orders"))
        .expect("counter actor registered");
    let id2 = id.clone();
    let w = call_t!(
        actor,
        |reply| CounterMsg::Incr {
            id: id2.clone(),
            by: 1,
            reply
        },
        2000
    )
    .expect("actor answers")
    .unwrap();
    assert_eq!(w, v + 1, "{label}");
    let r = call_t!(
        actor,
        |reply| CounterMsg::IncrBatch {
            id: id.clone(),
            size: 3,
            reply
        },
        2000
    )
    .expect("actor answers")
    .unwrap();
    assert_eq!(r, (v + 2)..=(v + 4), "{label}");
    // As the counter actor reports them, through its mailbox.
    let stats = call_t!(actor, CounterMsg::Stats, 2000).expect("actor answers");
    assert!(stats.ops > 0 && stats.fallbacks == 0, "{label}: {stats:?}");
}

async fn invalid_input_is_a_typed_error(f: &ForzeHandle, label: &str) {
    let c = f.counter("orders").unwrap();
    for err in [
        c.incr_batch(&CounterId::main(), 0).await.unwrap_err(),
        c.incr_batch(&CounterId::main(), -3).await.unwrap_err(),
        c.incr(&CounterId::suffix(""), 1).await.unwrap_err(),
    ] {
        assert_eq!(err.kind(), ErrorKind::Validation, "{label}: {err}");
    }
    assert_eq!(f.counter("nope").unwrap_err().kind(), ErrorKind::Validation);
}

//! Search-result snapshots: the same battery on the local backend and every server found.

mod common;

use std::time::Duration;

use common::{config, spawn_ready, Backend};
use forze_redis::keys::TenantId;
use forze_redis::snapshot::RunId;
use forze_redis::{ConflictReason, ErrorKind};
use forze_redis_actors::Snapshots;

const RESOURCES: &str = r#"
[snapshots.search]
max_ids = 200000
[snapshots.small]
max_ids = 10
[snapshots.short]
ttl = "700ms"
[snapshots.kept]
ttl = "400ms"
keep_alive = "1s"
[snapshots.tenanted]
tenant_aware = true
"#;

fn ids(range: std::ops::Range<u64>) -> Vec<String> {
    range.map(|i| format!("doc-{i:06}")).collect()
}

fn run(s: &str) -> RunId {
    RunId::new(s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_battery_on_every_backend() {
    for backend in Backend::batteries() {
        let label = backend.label();
        eprintln!("snapshot battery on {label}");
        let forze = spawn_ready(config(backend.url().as_deref(), "snap", RESOURCES)).await;
        let search = forze.snapshot("search").unwrap();
        pages_of_120_000_ids_match_the_original_order(&search, &label).await;
        incomplete_mismatched_and_past_the_end(&search, &label).await;
        writers_are_checked(&search, &label).await;
        let small = forze.snapshot("small").unwrap();
        let e = small.put(&run("big"), "fp", &ids(0..11)).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Validation, "{label}");
        assert!(e.to_string().contains("max_ids"), "{label}: {e}");
        let mut w = small.begin(&run("streamed-big"), "fp").await.unwrap();
        small.append(&mut w, &ids(0..6), false).await.unwrap();
        let e = small.append(&mut w, &ids(6..12), true).await.unwrap_err();
        assert!(e.to_string().contains("max_ids"), "{label}: {e}");
        a_run_expires_whole(&forze.snapshot("short").unwrap(), &label).await;
        keep_alive_extends_a_read_run(&forze.snapshot("kept").unwrap(), &label).await;
        let t = forze.snapshot("tenanted").unwrap();
        let e = t.put(&run("r"), "fp", &ids(0..3)).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::TenantRequired);
        let a = run("r").for_tenant(TenantId::new("a").unwrap());
        let b = run("r").for_tenant(TenantId::new("b").unwrap());
        t.put(&a, "fp", &ids(0..3)).await.unwrap();
        assert_eq!(
            t.page(&b, 0, 10, None).await.unwrap(),
            None,
            "{label}: tenants isolated"
        );
        forze.shutdown().await.unwrap();
    }
}

async fn pages_of_120_000_ids_match_the_original_order(s: &Snapshots, label: &str) {
    let all = ids(0..120_000);
    // Streamed in uneven chunks, as a search that yields pages would.
    let mut w = s.begin(&run("big"), "sha256:q").await.unwrap();
    let mut start = 0;
    for (i, size) in [1usize, 4_999, 7_000, 20_000, 50_000, 38_000]
        .iter()
        .enumerate()
    {
        let chunk = &all[start..start + size];
        start += size;
        s.append(&mut w, chunk, i == 5).await.unwrap();
    }
    assert_eq!(start, all.len());
    let meta = s.meta(&run("big")).await.unwrap().unwrap();
    assert!(meta.complete && meta.total == 120_000, "{label}: {meta:?}");
    for (offset, limit) in [
        (0u64, 100u64),
        (4_990, 20),
        (59_999, 3),
        (119_950, 100),
        (12_345, 1_000),
    ] {
        let page = s
            .page(&run("big"), offset, limit, Some("sha256:q"))
            .await
            .unwrap()
            .unwrap();
        let end = ((offset + limit) as usize).min(all.len());
        assert_eq!(
            page,
            all[offset as usize..end].to_vec(),
            "{label}: page {offset}+{limit}"
        );
    }
    // Paging the whole run in pages of 1 000 reassembles it exactly.
    let mut back = Vec::with_capacity(all.len());
    let mut offset = 0;
    loop {
        let page = s
            .page(&run("big"), offset, 1_000, None)
            .await
            .unwrap()
            .unwrap();
        if page.is_empty() {
            break;
        }
        offset += page.len() as u64;
        back.extend(page);
    }
    assert_eq!(back, all, "{label}");
    // put writes the same through chunk_size appends.
    s.put(&run("put"), "fp", &all[..12_000]).await.unwrap();
    assert_eq!(
        s.page(&run("put"), 11_990, 100, None)
            .await
            .unwrap()
            .unwrap(),
        all[11_990..12_000].to_vec()
    );
    assert!(s.delete(&run("put")).await.unwrap());
    assert_eq!(s.page(&run("put"), 0, 1, None).await.unwrap(), None);
    assert!(!s.delete(&run("put")).await.unwrap());
}

async fn incomplete_mismatched_and_past_the_end(s: &Snapshots, label: &str) {
    let mut w = s.begin(&run("partial"), "fp").await.unwrap();
    s.append(&mut w, &ids(0..10), false).await.unwrap();
    assert_eq!(
        s.page(&run("partial"), 0, 5, None).await.unwrap(),
        None,
        "{label}: incomplete"
    );
    s.finish(&mut w).await.unwrap();
    assert_eq!(
        s.page(&run("partial"), 0, 2, None).await.unwrap().unwrap(),
        ids(0..2)
    );
    assert_eq!(
        s.page(&run("partial"), 0, 2, Some("other")).await.unwrap(),
        None,
        "{label}"
    );
    assert_eq!(
        s.page(&run("partial"), 10, 5, None).await.unwrap(),
        Some(vec![]),
        "{label}"
    );
    assert_eq!(
        s.page(&run("partial"), 99, 5, None).await.unwrap(),
        Some(vec![])
    );
    assert_eq!(s.page(&run("never"), 0, 5, None).await.unwrap(), None);
    let e = s.page(&run("partial"), 0, 0, None).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Validation);
    s.put(&run("empty"), "fp", &[]).await.unwrap();
    assert_eq!(
        s.page(&run("empty"), 0, 5, None).await.unwrap(),
        Some(vec![])
    );
    // An empty expected fingerprint is checked like any other (it is not "any").
    assert_eq!(
        s.page(&run("partial"), 0, 2, Some("")).await.unwrap(),
        None,
        "{label}: an empty fingerprint matched a run with another"
    );
    s.put(&run("unprinted"), "", &ids(0..3)).await.unwrap();
    assert_eq!(
        s.page(&run("unprinted"), 0, 5, Some("")).await.unwrap(),
        Some(ids(0..3)),
        "{label}"
    );
    // "The rest", whatever the numbers: no error from a bound too large for the server.
    assert_eq!(
        s.page(&run("partial"), 3, u64::MAX, Some("fp"))
            .await
            .unwrap(),
        Some(ids(3..10)),
        "{label}"
    );
    assert_eq!(
        s.page(&run("partial"), u64::MAX, u64::MAX, None)
            .await
            .unwrap(),
        Some(vec![]),
        "{label}"
    );
}

async fn writers_are_checked(s: &Snapshots, label: &str) {
    // Out of order: a writer whose chunk index skips ahead (as after a lost, unretried append).
    let mut w = s.begin(&run("order"), "fp").await.unwrap();
    s.append(&mut w, &ids(0..3), false).await.unwrap();
    let mut skipped = w.clone();
    s.append(&mut skipped, &ids(3..6), false).await.unwrap();
    // `w` still thinks chunk 1 is next; the run expects chunk 2.
    let e = s.append(&mut w, &ids(100..103), false).await.unwrap_err();
    assert_eq!(
        e.conflict_reason(),
        Some(ConflictReason::OutOfOrder),
        "{label}: {e}"
    );
    // A second writer that begins the same run: the first one's appends are refused.
    let mut first = s.begin(&run("race"), "fp").await.unwrap();
    let mut second = s.begin(&run("race"), "fp").await.unwrap();
    let e = s.append(&mut first, &ids(0..3), true).await.unwrap_err();
    assert_eq!(
        e.conflict_reason(),
        Some(ConflictReason::NotOwner),
        "{label}: {e}"
    );
    s.append(&mut second, &ids(10..13), true).await.unwrap();
    assert_eq!(
        s.page(&run("race"), 0, 10, None).await.unwrap().unwrap(),
        ids(10..13)
    );
    // A complete run takes no more.
    let e = s.append(&mut second, &ids(0..1), true).await.unwrap_err();
    assert_eq!(
        e.conflict_reason(),
        Some(ConflictReason::OutOfOrder),
        "{label}"
    );
}

async fn a_run_expires_whole(s: &Snapshots, label: &str) {
    // Streamed over most of its TTL: the first chunk must not expire before the others.
    let mut w = s.begin(&run("aging"), "fp").await.unwrap();
    for i in 0..5u64 {
        s.append(&mut w, &ids(i * 10..i * 10 + 10), i == 4)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        s.page(&run("aging"), 0, 50, None).await.unwrap().unwrap(),
        ids(0..50),
        "{label}: every chunk is still there"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        s.page(&run("aging"), 0, 50, None).await.unwrap(),
        None,
        "{label}: expired"
    );
    assert_eq!(s.meta(&run("aging")).await.unwrap(), None, "{label}");
}

async fn keep_alive_extends_a_read_run(s: &Snapshots, label: &str) {
    s.put(&run("kept"), "fp", &ids(0..5)).await.unwrap();
    // Read every 200 ms for 1.2 s: three times the 400 ms TTL, alive thanks to the reads.
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            s.page(&run("kept"), 0, 5, None).await.unwrap(),
            Some(ids(0..5)),
            "{label}: keep-alive"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_reach_the_same_runs() {
    use forze_redis_actors::SnapshotMsg;
    use ractor::{call_t, ActorRef};
    for backend in Backend::all() {
        let label = backend.label();
        let forze = spawn_ready(config(backend.url().as_deref(), "snap-msg", RESOURCES)).await;
        let s = forze.snapshot("search").unwrap();
        let actor = ActorRef::<SnapshotMsg>::where_is(forze.names().snapshots("search"))
            .expect("registered");
        call_t!(
            actor,
            |reply| SnapshotMsg::Put {
                run: run("m"),
                fingerprint: "fp".into(),
                ids: ids(0..250),
                reply
            },
            2000
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            s.page(&run("m"), 240, 20, Some("fp")).await.unwrap(),
            Some(ids(240..250))
        );
        let page = call_t!(
            actor,
            |reply| SnapshotMsg::Page {
                run: run("m"),
                offset: 0,
                limit: 3,
                expected_fingerprint: None,
                reply
            },
            2000
        )
        .unwrap()
        .unwrap();
        assert_eq!(page, Some(ids(0..3)), "{label}");
        let deleted = call_t!(
            actor,
            |reply| SnapshotMsg::Delete {
                run: run("m"),
                reply
            },
            2000
        )
        .unwrap()
        .unwrap();
        assert!(deleted, "{label}");
        forze.shutdown().await.unwrap();
    }
}

/// Without `keep_alive` a page only reads: the page script never asks the server clock and
/// never moves the run's expiry (with it, every page does).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_without_keep_alive_only_read() {
    for bin in forze_redis_testkit::server_binaries() {
        let server = forze_redis_testkit::TestServer::start(&bin);
        let forze = spawn_ready(config(Some(&server.url()), "snap-read-only", RESOURCES)).await;
        let ids: Vec<String> = (0..50).map(|i| format!("id{i}")).collect();
        for (name, reads_clock) in [("search", false), ("kept", true)] {
            let s = forze.snapshot(name).unwrap();
            s.put(&RunId::new("r"), "fp", &ids).await.unwrap();
            let before = server.command_calls("time");
            for offset in 0..5 {
                let page = s
                    .page(&RunId::new("r"), offset * 10, 10, None)
                    .await
                    .unwrap();
                assert_eq!(page.map(|p| p.len()), Some(10), "{bin}: {name}");
            }
            let calls = server.command_calls("time") - before;
            assert_eq!(calls > 0, reads_clock, "{bin}: {name}: {calls} TIME calls");
        }
        forze.shutdown().await.unwrap();
    }
}

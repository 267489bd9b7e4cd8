//! Spans follow OpenTelemetry's database conventions on every contract: a subscriber that
//! records spans sees, for one call of each contract against a private server,
//! `db.system.name`, `db.operation.name`, `server.address`, `server.port`, our resource kind,
//! name and namespace, the outcome, and `error.type` on a failed call.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{config, server_binaries, spawn_ready, TestServer};
use forze_redis_actors::{payload_hash, CacheKey, CounterId, IdemRequest, LockId, RunId, TenantId};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::Subscriber;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

type Fields = BTreeMap<String, String>;

/// Records the fields of every closed `forze.operation` span.
#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Vec<Fields>>>);

struct Visitor<'a>(&'a mut Fields);

impl Visit for Visitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_string(), value.to_string());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_string(), value.to_string());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_string(), value.to_string());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().to_string(), format!("{value:?}"));
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Recorder {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if attrs.metadata().name() != "forze.operation" {
            return;
        }
        let mut fields = Fields::new();
        attrs.record(&mut Visitor(&mut fields));
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(fields);
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            if let Some(fields) = span.extensions_mut().get_mut::<Fields>() {
                values.record(&mut Visitor(fields));
            }
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(&id) {
            if let Some(fields) = span.extensions_mut().remove::<Fields>() {
                self.0.lock().unwrap().push(fields);
            }
        }
    }
}

const RESOURCES: &str = r#"
[counters.orders]
[caches.catalog]
ttl = "60s"
[locks.jobs]
[idempotency.payments]
[snapshots.search]
[rate_limits.api]
permits = 100
per = "1s"
[breakers.inventory]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_contract_traces_with_the_database_conventions() {
    let recorder = Recorder::default();
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(recorder.clone()))
        .expect("the only subscriber of this test binary");

    for bin in server_binaries() {
        let server = TestServer::start(&bin);
        let port = server.url().rsplit(':').next().unwrap().to_string();
        let forze = spawn_ready(config(Some(&server.url()), "spans", RESOURCES)).await;
        recorder.0.lock().unwrap().clear();

        forze
            .counter("orders")
            .unwrap()
            .incr(&CounterId::main(), 1)
            .await
            .unwrap();
        let bad = CounterId::main().for_tenant(TenantId::new("acme").unwrap());
        let err = forze
            .counter("orders")
            .unwrap()
            .incr(&bad, 1)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), forze_redis_actors::ErrorKind::Validation);
        // A server-side refusal: the counter's key holds something that is not an integer.
        let keys = server.cmd(&["KEYS", "*orders*"]).unwrap();
        let key = keys.as_array().unwrap()[0].as_str().unwrap();
        server.cmd(&["SET", key.as_str(), "not a number"]).unwrap();
        let err = forze
            .counter("orders")
            .unwrap()
            .incr(&CounterId::main(), 1)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), forze_redis_actors::ErrorKind::Conflict);
        let _: Option<String> = forze
            .cache("catalog")
            .unwrap()
            .get(&CacheKey::new("k"))
            .await
            .unwrap();
        let guard = forze
            .lock("jobs")
            .unwrap()
            .try_acquire(&LockId::new("l"))
            .await
            .unwrap()
            .unwrap();
        guard.release().await.unwrap();
        let req = IdemRequest::new("op", "k1", payload_hash(b"p"));
        forze
            .idempotency("payments")
            .unwrap()
            .begin(&req)
            .await
            .unwrap();
        let snaps = forze.snapshot("search").unwrap();
        snaps
            .put(&RunId::new("r"), "fp", &["a".to_string()])
            .await
            .unwrap();
        snaps
            .page(&RunId::new("r"), 0, 10, Some("fp"))
            .await
            .unwrap();
        forze
            .rate_limit("api")
            .unwrap()
            .try_acquire("route", 1)
            .await
            .unwrap();
        forze
            .breaker("inventory")
            .unwrap()
            .admit("route")
            .await
            .unwrap();
        let failed_call = forze
            .breaker("inventory")
            .unwrap()
            .call("route", async { Err::<(), _>("downstream failed") })
            .await;
        assert!(failed_call.is_err());
        forze.shutdown().await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;

        let spans = recorder.0.lock().unwrap().clone();
        let find = |op: &str, outcome: &str| {
            spans
                .iter()
                .find(|f| {
                    f.get("db.operation.name").map(String::as_str) == Some(op)
                        && f.get("forze.outcome").map(String::as_str) == Some(outcome)
                })
                .unwrap_or_else(|| {
                    panic!(
                        "{}: no {op} span with outcome {outcome} in {spans:#?}",
                        bin.kind.name()
                    )
                })
                .clone()
        };
        for (op, outcome, resource, name) in [
            ("counter.incr", "ok", "counter", "orders"),
            ("cache.get", "miss", "cache", "catalog"),
            ("lock.try_acquire", "acquired", "lock", "jobs"),
            ("lock.release", "released", "lock", "jobs"),
            ("idempotency.begin", "claimed", "idempotency", "payments"),
            ("snapshot.begin", "ok", "snapshot", "search"),
            ("snapshot.page", "hit", "snapshot", "search"),
            ("ratelimit.decide", "allowed", "rate_limit", "api"),
            ("breaker.admit", "admitted", "breaker", "inventory"),
            ("breaker.record", "recorded", "breaker", "inventory"),
        ] {
            let f = find(op, outcome);
            let expect = [
                ("db.system.name", "redis"),
                ("server.address", "127.0.0.1"),
                ("server.port", port.as_str()),
                ("forze.resource", resource),
                ("forze.name", name),
                ("forze.namespace", name),
                ("otel.kind", "client"),
            ];
            for (k, v) in expect {
                assert_eq!(f.get(k).map(String::as_str), Some(v), "{op}: {k} in {f:?}");
            }
            assert_eq!(
                f.get("otel.name"),
                Some(&format!("{op} {name}")),
                "{op}: {f:?}"
            );
            assert!(!f.contains_key("error.type"), "{op}: {f:?}");
        }
        let failed = find("counter.incr", "validation");
        assert_eq!(
            failed.get("error.type").map(String::as_str),
            Some("validation"),
            "{failed:?}"
        );
        let refused = find("counter.incr", "conflict");
        assert_eq!(
            refused.get("error.type").map(String::as_str),
            Some("conflict"),
            "{refused:?}"
        );
        // Counter spans say which store served them.
        assert_eq!(
            find("counter.incr", "ok")
                .get("forze.served")
                .map(String::as_str),
            Some("redis")
        );
    }
}

//! How each resource's operations are observed: a span per operation with OpenTelemetry's
//! database conventions, and (with the `metrics` feature) a counter by operation and outcome
//! and a latency histogram per operation, through the `metrics` facade.
//!
//! Every resource owns one [`Telemetry`]. An operation is observed once, where it is written
//! (in the resource handle), by [`Telemetry::observe`]; the L1 hit of a cache, which must stay
//! allocation-free and take tens of nanoseconds, only bumps a pre-registered counter
//! ([`Telemetry::counter`]).
//!
//! Metric handles are registered with the installed recorder the first time an
//! (operation, outcome) pair is seen, then reused: the per-call cost is a scan of the few
//! pairs seen so far (no lock, no shared write), an add to this thread's stripe of the pair's
//! count, and the latency kept in this thread's stripe of the pair's samples. The recorder's
//! operation counters are brought up to those counts, and the kept latencies recorded, by
//! [`Telemetry::publish`], which the runtime calls every second (a shared counter bumped, or
//! a shared histogram written, by every call would move cache lines between cores on most
//! calls); a thread that keeps a full batch of latencies records it itself.
//! Install the recorder (for instance `metrics-exporter-prometheus`) before
//! spawning the runtime. Labels are the resource kind and name, the operation and the outcome,
//! all bounded by the configuration: tenants never become label values.
//!
//! Spans are at `DEBUG` level, named `forze.operation`, with `otel.name` set to
//! `<operation> <resource name>`. When no subscriber wants them, building one costs a cached
//! interest check and no allocation, and the operation runs without the span's wrapper.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use dashmap::DashMap;
use serde::Serialize;
use tracing::field::Empty;
use tracing::Instrument;

use crate::config::RedisUrl;
use crate::error::Result;
use crate::striped::StripedCounter;
#[cfg(feature = "metrics")]
use crate::striped::StripedSamples;

/// Whether this build records metrics (the `metrics` cargo feature of this crate).
pub const METRICS_ENABLED: bool = cfg!(feature = "metrics");

/// Names of every metric, in one place (documented in `docs/operations.md`).
pub mod names {
    /// Counter: operations by `resource`, `name`, `operation`, `outcome`.
    pub const OPERATIONS: &str = "forze_operations_total";
    /// Histogram (seconds): operation latency by `resource`, `name`, `operation`, `outcome`.
    pub const DURATION: &str = "forze_operation_duration_seconds";
    /// Gauge: L1 entries by cache `name`.
    pub const L1_ENTRIES: &str = "forze_l1_entries";
    /// Gauge: L1 bytes by cache `name`.
    pub const L1_BYTES: &str = "forze_l1_bytes";
    /// Gauge: entries kept aside by a loss of tracking, servable as stale, by cache `name`.
    pub const L1_STALE_ENTRIES: &str = "forze_l1_stale_entries";
    /// Counter: L1 entries removed by cache `name` and `cause` (`expired`: past its
    /// deadline; `size`: by the eviction order, over a bound; `invalidation`).
    pub const L1_EVICTIONS: &str = "forze_l1_evictions_total";
    /// Gauge: pool connections by `state` (`connected`, `total`).
    pub const POOL_CONNECTIONS: &str = "forze_pool_connections";
    /// Gauge: 1 for the current Redis health `state`, 0 for the others.
    pub const HEALTH: &str = "forze_redis_health";
    /// Gauge: 1 while the tracking session keeps L1s coherent, else 0.
    pub const TRACKING_ACTIVE: &str = "forze_tracking_active";
    /// Counter: tracking sessions lost.
    pub const TRACKING_LOSSES: &str = "forze_tracking_losses_total";
    /// Counter: whole-L1 flushes (every entry dropped) by cache `name` and `reason`.
    pub const L1_FLUSHES: &str = "forze_l1_flushes_total";
    /// Gauge: lock leases held by this process.
    pub const LEASES_HELD: &str = "forze_lock_leases_held";
    /// Counter: leases lost by `reason` (`stolen`, `deadline_passed`).
    pub const LEASES_LOST: &str = "forze_lock_leases_lost_total";
    /// Gauge: routes of the breaker `name` by the `phase` this process last saw them in.
    pub const BREAKER_ROUTES: &str = "forze_breaker_routes";
    /// Counter: breaker transitions by `name` and `to`.
    pub const BREAKER_TRANSITIONS: &str = "forze_breaker_transitions_total";
    /// Counter: actor restarts performed by the supervisor.
    pub const ACTOR_RESTARTS: &str = "forze_actor_restarts_total";
}

/// How many times one operation ended with one outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct OperationCount {
    /// The operation (`cache.get`, `lock.acquire`).
    pub operation: &'static str,
    /// The outcome (`hit`, `miss`, `ok`, `denied`, or an error kind such as `unavailable`).
    pub outcome: &'static str,
    /// How many.
    pub count: u64,
}

/// Observes the operations of one resource. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Telemetry(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    /// The supervisor's name prefix: a label on every series, so that several runtimes in
    /// one process never merge theirs.
    supervisor: Arc<str>,
    resource: &'static str,
    name: Arc<str>,
    namespace: Arc<str>,
    server_address: Option<String>,
    server_port: Option<u16>,
    slots: Slots,
}

/// Pairs one [`Slots`] table holds without its overflow map: more than any resource has.
const SLOT_CAPACITY: usize = 64;

/// Every (operation, outcome) seen, with its slot. Read on every operation by every task, so
/// a lookup takes no lock and writes nothing shared (a lock's reference count alone would
/// bounce one cache line between cores on every call): an append-only table whose length is
/// published after each entry is written, and a map for pairs beyond its capacity.
#[derive(Debug)]
struct Slots {
    table: Box<[std::sync::OnceLock<SlotEntry>]>,
    len: std::sync::atomic::AtomicUsize,
    /// Serializes appends.
    append: std::sync::Mutex<()>,
    overflow: DashMap<(&'static str, &'static str), Arc<Slot>, foldhash::fast::RandomState>,
}

#[derive(Debug)]
struct SlotEntry {
    operation: &'static str,
    outcome: &'static str,
    slot: Arc<Slot>,
}

impl Slots {
    fn new() -> Self {
        Slots {
            table: (0..SLOT_CAPACITY)
                .map(|_| std::sync::OnceLock::new())
                .collect(),
            len: std::sync::atomic::AtomicUsize::new(0),
            append: std::sync::Mutex::new(()),
            overflow: DashMap::default(),
        }
    }

    fn find(&self, operation: &str, outcome: &str) -> Option<&Arc<Slot>> {
        let len = self.len.load(Ordering::Acquire);
        self.table[..len]
            .iter()
            .filter_map(|e| e.get())
            .find(|e| e.operation == operation && e.outcome == outcome)
            .map(|e| &e.slot)
    }

    fn get_or_insert(
        &self,
        operation: &'static str,
        outcome: &'static str,
        make: impl FnOnce() -> Slot,
    ) -> Arc<Slot> {
        if let Some(slot) = self.find(operation, outcome) {
            return slot.clone();
        }
        if let Some(slot) = self.overflow.get(&(operation, outcome)) {
            return slot.clone();
        }
        let _append = self.append.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = self.find(operation, outcome) {
            return slot.clone();
        }
        let len = self.len.load(Ordering::Acquire);
        if len == SLOT_CAPACITY {
            return self
                .overflow
                .entry((operation, outcome))
                .or_insert_with(|| Arc::new(make()))
                .clone();
        }
        let slot = Arc::new(make());
        let entry = SlotEntry {
            operation,
            outcome,
            slot: slot.clone(),
        };
        // Only appends write the table, one at a time (the lock): this cell is empty.
        let _ = self.table[len].set(entry);
        self.len.store(len + 1, Ordering::Release);
        slot
    }

    fn entries(&self) -> Vec<(&'static str, &'static str, Arc<Slot>)> {
        let len = self.len.load(Ordering::Acquire);
        let table = self.table[..len]
            .iter()
            .filter_map(|e| e.get())
            .map(|e| (e.operation, e.outcome, e.slot.clone()));
        let overflow: Vec<_> = self
            .overflow
            .iter()
            .map(|e| (e.key().0, e.key().1, e.value().clone()))
            .collect();
        table.chain(overflow).collect()
    }
}

/// One (operation, outcome): its count, and its metric handles.
#[derive(Debug)]
struct Slot {
    count: StripedCounter,
    /// How much of `count` the recorder has been given.
    #[cfg(feature = "metrics")]
    published: std::sync::atomic::AtomicU64,
    #[cfg(feature = "metrics")]
    counter: metrics::Counter,
    #[cfg(feature = "metrics")]
    duration: metrics::Histogram,
    /// Latencies not yet handed to `duration`: in batches, or on the publishing tick.
    #[cfg(feature = "metrics")]
    latencies: StripedSamples,
}

/// Record a batch of latencies into the recorder's histogram.
#[cfg(feature = "metrics")]
fn record_all(histogram: &metrics::Histogram, batch: &[f64]) {
    for &seconds in batch {
        histogram.record(seconds);
    }
}

/// When an operation started (only read with the `metrics` feature).
#[derive(Debug, Clone, Copy)]
pub struct Started(#[cfg(feature = "metrics")] quanta::Instant);

/// `otel.name`: `<operation> <resource name>`, formatted only when a subscriber records it.
struct SpanName<'a>(&'static str, &'a str);

impl std::fmt::Display for SpanName<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.0, self.1)
    }
}

/// `fut` inside a span: the future itself when no subscriber wants the span, else
/// instrumented with it.
pub type InSpan<F> = futures::future::Either<F, tracing::instrument::Instrumented<F>>;

/// Run `fut` inside `span`; without the span's wrapper when no subscriber wants it (then
/// entering and leaving it on every poll would do nothing but cost).
///
/// A plain function, not an `async fn`: an async function stores its argument and then the
/// future it awaits, so `fut` would be held twice in every future above it.
pub fn in_span<F: Future>(span: &tracing::Span, fut: F) -> InSpan<F> {
    if span.is_disabled() {
        futures::future::Either::Left(fut)
    } else {
        futures::future::Either::Right(fut.instrument(span.clone()))
    }
}

pin_project_lite::pin_project! {
    /// The future of [`Telemetry::observe`]: `fut` in its span, then the outcome counted
    /// and the latency recorded.
    #[must_use = "futures do nothing unless polled"]
    pub struct Observed<'a, F, O> {
        #[pin]
        fut: InSpan<F>,
        telemetry: &'a Telemetry,
        operation: &'static str,
        started: Started,
        span: tracing::Span,
        // Taken when the operation ends.
        outcome: Option<O>,
    }
}

impl<T, F, O> Future for Observed<'_, F, O>
where
    F: Future<Output = Result<T>>,
    O: FnOnce(&T) -> &'static str,
{
    type Output = Result<T>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<T>> {
        let this = self.project();
        let result = std::task::ready!(this.fut.poll(cx));
        if let Some(outcome) = this.outcome.take() {
            this.telemetry
                .close(this.span, this.operation, *this.started, &result, outcome);
        }
        std::task::Poll::Ready(result)
    }
}

impl Telemetry {
    /// The telemetry of resource `name` of kind `resource` (`cache`, `counter`…), keyed under
    /// `namespace`, on the server of `url` (`None`: embedded, process-local), in the runtime
    /// whose actors are named with `supervisor`.
    pub fn new(
        supervisor: &str,
        resource: &'static str,
        name: &str,
        namespace: &str,
        url: Option<&RedisUrl>,
    ) -> Self {
        let (server_address, server_port) = match url.and_then(RedisUrl::server_address) {
            Some((host, port)) => (Some(host), port),
            None => (None, None),
        };
        Telemetry(Arc::new(Inner {
            supervisor: supervisor.into(),
            resource,
            name: name.into(),
            namespace: namespace.into(),
            server_address,
            server_port,
            slots: Slots::new(),
        }))
    }

    /// The span of one operation. Its `forze.outcome` and `error.type` are recorded by
    /// [`Telemetry::observe`].
    pub fn span(&self, operation: &'static str) -> tracing::Span {
        let i = &*self.0;
        tracing::debug_span!(
            "forze.operation",
            otel.name = %SpanName(operation, &i.name),
            otel.kind = "client",
            db.system.name = if i.server_address.is_some() { "redis" } else { "forze.embedded" },
            db.operation.name = operation,
            server.address = i.server_address.as_deref(),
            server.port = i.server_port,
            forze.resource = i.resource,
            forze.name = &*i.name,
            forze.namespace = &*i.namespace,
            forze.outcome = Empty,
            forze.served = Empty,
            error.type = Empty,
        )
    }

    /// Start timing an operation.
    #[inline]
    pub fn start(&self) -> Started {
        Started(
            #[cfg(feature = "metrics")]
            quanta::Instant::now(),
        )
    }

    /// Record `outcome` (and `error.type` for an error) on `span` (a no-op for a disabled
    /// one), count the operation and record its latency: the end of an operation that ran
    /// its own future in [`Telemetry::span`].
    pub fn end<T>(
        &self,
        span: &tracing::Span,
        operation: &'static str,
        started: Started,
        result: &Result<T>,
        ok: &'static str,
    ) {
        self.close(span, operation, started, result, |_| ok);
    }

    /// The outcome of `result` (`outcome` of the value, or the error's kind) recorded on
    /// `span`, counted, and the latency recorded.
    fn close<T>(
        &self,
        span: &tracing::Span,
        operation: &'static str,
        started: Started,
        result: &Result<T>,
        outcome: impl FnOnce(&T) -> &'static str,
    ) {
        let out = match result {
            Ok(v) => outcome(v),
            Err(e) => {
                let kind = e.kind().as_str();
                span.record("error.type", kind);
                kind
            }
        };
        span.record("forze.outcome", out);
        self.finish(operation, out, started);
    }

    /// Run `operation` in its span, then count it with its outcome (`outcome` of the value,
    /// or the error's kind) and record its latency. The clock starts and the span opens
    /// when this is called. (A hand-written future rather than an `async fn`, which would
    /// hold `fut` twice: once as its argument, once as the future it awaits.)
    pub fn observe<T, F, O>(
        &self,
        operation: &'static str,
        fut: F,
        outcome: O,
    ) -> Observed<'_, F, O>
    where
        F: Future<Output = Result<T>>,
        O: FnOnce(&T) -> &'static str,
    {
        let started = self.start();
        let span = self.span(operation);
        Observed {
            fut: in_span(&span, fut),
            telemetry: self,
            operation,
            started,
            span,
            outcome: Some(outcome),
        }
    }

    /// Count one `operation` that ended with `outcome`, and record its latency.
    pub fn finish(&self, operation: &'static str, outcome: &'static str, started: Started) {
        // Borrowed from the table: cloning the slot's `Arc` would write its shared count.
        let record = |slot: &Slot| {
            slot.count.add(1);
            #[cfg(feature = "metrics")]
            slot.latencies
                .push(started.0.elapsed().as_secs_f64(), |batch| {
                    record_all(&slot.duration, batch)
                });
        };
        match self.0.slots.find(operation, outcome) {
            Some(slot) => record(slot),
            None => record(&self.slot(operation, outcome)),
        }
        #[cfg(not(feature = "metrics"))]
        let _ = started;
    }

    /// Hand the metrics recorder what this resource observed since the last call: operation
    /// counters brought up to this resource's own counts ([`OutcomeCounter`]s included), and
    /// the latencies each thread kept back.
    pub fn publish(&self) {
        #[cfg(feature = "metrics")]
        for (_, _, slot) in self.0.slots.entries() {
            // What was counted since the last publish, added: an `absolute` would be taken
            // as a maximum by some recorders, so a runtime started again in the same process
            // under the same labels would not count until it passed the old total. The max
            // makes two overlapping publishes add each operation once.
            let now = slot.count.get();
            let before = slot.published.fetch_max(now, Ordering::Relaxed);
            if now > before {
                slot.counter.increment(now - before);
            }
            slot.latencies
                .drain(|batch| record_all(&slot.duration, batch));
        }
    }

    /// A handle that counts `operation` with `outcome` (no span, no latency, the metric
    /// published later by [`Telemetry::publish`]): for paths that must stay
    /// allocation-free and take a few nanoseconds, such as an L1 hit. Register it once and
    /// keep it.
    pub fn counter(&self, operation: &'static str, outcome: &'static str) -> OutcomeCounter {
        OutcomeCounter(self.slot(operation, outcome))
    }

    fn slot(&self, operation: &'static str, outcome: &'static str) -> Arc<Slot> {
        self.0
            .slots
            .get_or_insert(operation, outcome, || self.register(operation, outcome))
    }

    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    fn register(&self, operation: &'static str, outcome: &'static str) -> Slot {
        #[cfg(feature = "metrics")]
        let labels = [
            ("supervisor", self.0.supervisor.to_string()),
            ("resource", self.0.resource.to_string()),
            ("name", self.0.name.to_string()),
            ("operation", operation.to_string()),
            ("outcome", outcome.to_string()),
        ];
        Slot {
            count: StripedCounter::default(),
            #[cfg(feature = "metrics")]
            published: std::sync::atomic::AtomicU64::new(0),
            #[cfg(feature = "metrics")]
            counter: metrics::counter!(names::OPERATIONS, &labels),
            #[cfg(feature = "metrics")]
            duration: metrics::histogram!(names::DURATION, &labels),
            #[cfg(feature = "metrics")]
            latencies: StripedSamples::default(),
        }
    }

    /// Every (operation, outcome) seen so far with its count, sorted.
    pub fn operations(&self) -> Vec<OperationCount> {
        let mut out: Vec<OperationCount> = self
            .0
            .slots
            .entries()
            .into_iter()
            .map(|(operation, outcome, slot)| OperationCount {
                operation,
                outcome,
                count: slot.count.get(),
            })
            .filter(|c| c.count > 0)
            .collect();
        out.sort_by(|a, b| (a.operation, a.outcome).cmp(&(b.operation, b.outcome)));
        out
    }

    /// The resource name.
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// The supervisor label of this runtime's series.
    pub fn supervisor(&self) -> &str {
        &self.0.supervisor
    }
}

/// A pre-registered count of one (operation, outcome); see [`Telemetry::counter`].
#[derive(Debug, Clone)]
pub struct OutcomeCounter(Arc<Slot>);

impl OutcomeCounter {
    /// How many were counted.
    pub fn get(&self) -> u64 {
        self.0.count.get()
    }

    /// Count one. Only this thread's stripe of the count is touched (one atomic add): its metric is
    /// brought up to that count by [`Telemetry::publish`], which the runtime calls
    /// every second, so a scrape sees these outcomes at most that late.
    #[inline]
    pub fn increment(&self) {
        self.0.count.add(1);
    }
}

/// Describe every metric to the installed recorder (units and help texts, shown as
/// Prometheus `# HELP` lines). Called once when a runtime is built.
pub fn describe() {
    #[cfg(feature = "metrics")]
    {
        use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
        describe_counter!(
            names::OPERATIONS,
            "Operations by resource, name, operation and outcome"
        );
        describe_histogram!(
            names::DURATION,
            Unit::Seconds,
            "Operation latency by resource, name, operation and outcome (L1 hits are counted, not timed)"
        );
        describe_gauge!(names::L1_ENTRIES, "Entries held by a cache's L1");
        describe_gauge!(names::L1_BYTES, Unit::Bytes, "Bytes held by a cache's L1");
        describe_gauge!(
            names::L1_STALE_ENTRIES,
            "Entries kept aside by a loss of tracking, servable as stale"
        );
        describe_counter!(names::L1_EVICTIONS, "L1 entries removed, by cause");
        describe_gauge!(names::POOL_CONNECTIONS, "Pool connections by state");
        describe_gauge!(names::HEALTH, "1 for the current Redis health state");
        describe_gauge!(
            names::TRACKING_ACTIVE,
            "1 while the tracking session keeps the L1s coherent"
        );
        describe_counter!(names::TRACKING_LOSSES, "Tracking sessions lost");
        describe_counter!(names::L1_FLUSHES, "Whole-L1 flushes by reason");
        describe_gauge!(names::LEASES_HELD, "Lock leases held by this process");
        describe_counter!(names::LEASES_LOST, "Lock leases lost, by reason");
        describe_gauge!(
            names::BREAKER_ROUTES,
            "Routes of a breaker by the phase this process last saw them in"
        );
        describe_counter!(names::BREAKER_TRANSITIONS, "Breaker transitions");
        describe_counter!(
            names::ACTOR_RESTARTS,
            "Actor restarts performed by the supervisor"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    #[tokio::test]
    async fn outcomes_are_counted_by_operation() {
        let t = Telemetry::new("forze", "counter", "orders", "orders", None);
        t.observe("counter.incr", async { Ok(1) }, |_| "ok")
            .await
            .unwrap();
        t.observe("counter.incr", async { Ok(2) }, |_| "ok")
            .await
            .unwrap();
        let e: Result<i64> = t
            .observe(
                "counter.incr",
                async { Err(Error::validation("id", "bad")) },
                |_| "ok",
            )
            .await;
        assert!(e.is_err());
        t.counter("counter.get", "l1_hit").increment();
        let ops = t.operations();
        let count = |op, out| {
            ops.iter()
                .find(|c| c.operation == op && c.outcome == out)
                .map(|c| c.count)
        };
        assert_eq!(count("counter.incr", "ok"), Some(2));
        assert_eq!(count("counter.incr", "validation"), Some(1));
        assert_eq!(count("counter.get", "l1_hit"), Some(1));
    }

    /// Counts reach the recorder as what was counted since the last publish: a second publish
    /// adds nothing, and a runtime built again under the same labels adds its own counts to
    /// the series (an `absolute` would be kept as a maximum and hide them).
    #[cfg(feature = "metrics")]
    #[test]
    fn published_counts_add_up_across_publishes_and_rebuilt_runtimes() {
        use metrics_util::debugging::{DebugValue, DebuggingRecorder};
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let total = || {
            snapshotter
                .snapshot()
                .into_vec()
                .into_iter()
                .find_map(|(key, _, _, value)| match value {
                    DebugValue::Counter(n) if key.key().name() == names::OPERATIONS => Some(n),
                    _ => None,
                })
        };
        let run = |times: usize| {
            let t = metrics::with_local_recorder(&recorder, || {
                let t = Telemetry::new("forze", "counter", "orders", "orders", None);
                for _ in 0..times {
                    t.finish("counter.incr", "ok", t.start());
                }
                t
            });
            t.publish();
            t.publish();
        };
        // One snapshot at the end: the debugging recorder's snapshot drains its counters.
        run(3);
        run(2);
        assert_eq!(total(), Some(5));
    }

    /// Latencies reach the recorder's histogram once each: full batches as they fill, on
    /// the thread that filled them, and the rest at the publish.
    #[cfg(feature = "metrics")]
    #[test]
    fn latencies_reach_the_recorder_in_batches_and_at_the_publish() {
        use crate::striped::SAMPLE_BATCH;
        use metrics_util::debugging::{DebugValue, DebuggingRecorder};
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        // Samples recorded since the last snapshot (a snapshot drains them).
        let recorded = || {
            snapshotter
                .snapshot()
                .into_vec()
                .into_iter()
                .find_map(|(key, _, _, value)| match value {
                    DebugValue::Histogram(v) if key.key().name() == names::DURATION => {
                        Some(v.len())
                    }
                    _ => None,
                })
                .unwrap_or(0)
        };
        // Handles are registered with the recorder at the first observation of a pair.
        let t = metrics::with_local_recorder(&recorder, || {
            let t = Telemetry::new("forze", "counter", "orders", "orders", None);
            for _ in 0..2 * SAMPLE_BATCH + 10 {
                t.finish("counter.incr", "ok", t.start());
            }
            t
        });
        assert_eq!(recorded(), 2 * SAMPLE_BATCH, "full batches, as they filled");
        t.publish();
        assert_eq!(recorded(), 10, "the rest at the publish");
        t.publish();
        assert_eq!(recorded(), 0, "each once");
    }

    #[test]
    fn a_cluster_reports_one_of_its_seed_nodes() {
        let got = RedisUrl::new("redis-cluster://:pw@h1:7000?node=h2:7001").server_address();
        assert!(
            matches!(
                got.as_ref().map(|(h, p)| (h.as_str(), *p)),
                Some(("h1", Some(7000))) | Some(("h2", Some(7001)))
            ),
            "{got:?}"
        );
    }

    #[test]
    fn server_address_never_carries_credentials() {
        let cases = [
            (
                "redis://:pw@10.0.0.1:6380/0",
                Some(("10.0.0.1", Some(6380))),
            ),
            (
                "rediss://u:p@cache.internal",
                // The driver's default port when none is written.
                Some(("cache.internal", Some(6379))),
            ),
            ("redis://[::1]:6390", Some(("[::1]", Some(6390)))),
            ("redis+unix:///tmp/r.sock", Some(("/tmp/r.sock", None))),
            // Passwords holding the separators, and a sentinel password in the query
            // (neither is a URL the configuration accepts: no address rather than a guess).
            ("redis://:p@ss/w?rd@h9:1", None),
            (
                "redis-sentinel://h1:26379/0?sentinelServiceName=m&sentinelPassword=s@cret",
                None,
            ),
            (
                "redis-sentinel://:s@cret@h1:26379/0?sentinelServiceName=m",
                Some(("h1", Some(26379))),
            ),
        ];
        for (url, want) in cases {
            let got = RedisUrl::new(url).server_address();
            assert_eq!(got.as_ref().map(|(h, p)| (h.as_str(), *p)), want, "{url}");
        }
    }
}

//! Fleet-wide circuit breakers: closed → open → half-open per (policy, route), decided by one
//! script on the server clock (`breaker.lua`), with a local cache and a local fallback.
//!
//! - **Closed by a read.** An admission not served from the cache reads the phase first
//!   (`HMGET`): a closed breaker, which the script would admit without writing, is admitted
//!   on that read; only another phase goes on to the script.
//! - **Local cache.** A closed state is served from memory for `closed_cache_ttl` (no round
//!   trip); an open state is served from memory until the `retry_at` the script returned,
//!   converted to this process's monotonic clock from the server's own `now` in the same reply,
//!   so a replica whose wall clock is skewed decides exactly as the others. Half-open is never
//!   cached: trial calls are counted fleet-wide by the script.
//! - **Fallback.** On any Redis error the replica decides with a process-local breaker of the
//!   same rules (counted, traced) and goes back to Redis on the next call. No Redis error ever
//!   escapes `admit` or `record`.
//! - **Events.** Every transition the script reports is traced and sent on a broadcast channel
//!   ([`Breaker::transitions`]).

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use dashmap::DashMap;
use fred::interfaces::{ClientLike, HashesInterface};
use tokio::sync::broadcast;

use crate::clock::{from_unix_ms, SharedClock};
use crate::config::BreakerConfig;
use crate::connection::RedisConnection;
use crate::error::{Access, Error, Result};
use crate::gate::Gate;
use crate::keys::KeySpace;
use crate::pooled::pooled_with;
use crate::scripts::BREAKER;
use crate::time::after;

/// A breaker's phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Calls go through; outcomes are counted.
    Closed,
    /// Calls are refused until the break ends.
    Open,
    /// A bounded number of trial calls go through; one success closes, one failure reopens.
    HalfOpen,
}

impl Phase {
    /// The phase in snake case (`closed`, `open`, `half_open`), as stats and metrics name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Closed => "closed",
            Phase::Open => "open",
            Phase::HalfOpen => "half_open",
        }
    }

    fn parse(s: &str) -> Phase {
        match s {
            "open" => Phase::Open,
            "half_open" => Phase::HalfOpen,
            _ => Phase::Closed,
        }
    }
}

pub use crate::decided_by::DecidedBy;

/// An admission decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    /// Whether the call may go ahead.
    pub allowed: bool,
    /// The phase after the decision.
    pub phase: Phase,
    /// When refused and known: how long until a trial call may be admitted.
    pub retry_after: Duration,
    /// Where it was decided.
    pub decided_by: DecidedBy,
}

/// The outcome label of an admission.
fn admission_outcome(a: &Admission) -> &'static str {
    match (a.allowed, a.decided_by) {
        (true, DecidedBy::Fallback) => "fallback_admitted",
        (false, DecidedBy::Fallback) => "fallback_refused",
        (true, _) => "admitted",
        (false, _) => "refused",
    }
}

/// A phase change, as the script (or the fallback) reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// The policy.
    pub policy: String,
    /// The route.
    pub route: String,
    /// The new phase.
    pub to: Phase,
    /// Whether the fallback (not the fleet) made it.
    pub local: bool,
    /// When: the server's clock for the fleet's transitions, this host's wall clock for the
    /// fallback's.
    pub at: SystemTime,
}

/// A phase this process may answer from memory until `until`.
#[derive(Debug, Clone, Copy)]
struct Cached {
    phase: Phase,
    until: Instant,
    /// Open only: when a trial may be admitted. Later than `until` while untracked (the phase
    /// is then kept no longer than a closed one), and what a refusal's `retry_after` counts to.
    retry_at: Instant,
}

/// What one round trip to Redis decided, as the script replies it.
#[derive(Debug, Clone, Copy)]
struct Decided {
    allowed: bool,
    phase: Phase,
    /// The phase the script moved to, if it moved one.
    transition: Option<Phase>,
    /// When a trial call may be admitted, on the server's clock (ms; 0 when not open, or
    /// when forced open).
    retry_at: i64,
    /// The server's clock when it decided (ms; 0 when no transition needs it).
    server_now: i64,
}

#[derive(Debug, Clone, Copy)]
struct LocalState {
    phase: Phase,
    window_start: Instant,
    successes: u32,
    failures: u32,
    opened_at: Instant,
    half_open_calls: u32,
    /// Set by force_open / force_close until reset.
    forced: Option<Phase>,
}

/// Counters of one policy.
#[derive(Debug, Default)]
struct Counters {
    admits: AtomicU64,
    refused: AtomicU64,
    round_trips: AtomicU64,
    fallbacks: AtomicU64,
}

/// A copy of one policy's statistics.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct BreakerStats {
    /// Admission decisions.
    pub admits: u64,
    /// Decisions that refused.
    pub refused: u64,
    /// Round trips to Redis (admissions and records; an admission that finds the breaker
    /// not closed makes two: the phase read, then the script).
    pub round_trips: u64,
    /// Decisions or records handled by the local fallback.
    pub fallbacks: u64,
    /// Routes by the phase this process last saw them in (`closed`, `open`, `half_open`).
    pub routes_by_phase: BTreeMap<&'static str, u64>,
}

/// One breaker policy: a breaker per route.
#[derive(Debug, Clone)]
pub struct Breaker(Arc<BreakerState>);

#[doc(hidden)]
impl std::ops::Deref for Breaker {
    type Target = BreakerState;
    fn deref(&self) -> &BreakerState {
        &self.0
    }
}

/// What every clone of one [`Breaker`] shares.
#[doc(hidden)]
#[derive(Debug)]
pub struct BreakerState {
    /// Spans and metrics of every operation.
    pub(crate) telemetry: crate::telemetry::Telemetry,
    /// Admissions served from the cached phase (admitted, refused): registered once.
    cached_outcomes: (
        crate::telemetry::OutcomeCounter,
        crate::telemetry::OutcomeCounter,
    ),
    gate: Gate,
    name: String,
    space: KeySpace,
    /// Same namespace, the `breaker-counts` kind: outcome counts, apart from the state.
    counts_space: KeySpace,
    /// Bumped by every invalidation push for this policy: a phase read before it moved is
    /// not cached (the same race rule as the cache L1's fills).
    epoch: AtomicU64,
    /// Whether the tracking subscriber is confirmed: an open phase is then cached until its
    /// `retry_at` (a reset elsewhere would be pushed); otherwise no longer than
    /// `closed_cache_ttl`, like a closed one.
    tracked: AtomicBool,
    clock: SharedClock,
    config: BreakerConfig,
    conn: Option<Arc<RedisConnection>>,
    cache: DashMap<String, Cached>,
    /// Local breakers by route: embedded mode's only state, the fallback in Redis mode.
    local: DashMap<String, LocalState>,
    local_sweeper: crate::sweep::Sweeper,
    counters: Counters,
    events: broadcast::Sender<Transition>,
    args: [fred::types::Value; 6],
    /// The phase each route was last seen in by a decision or record of this process, and
    /// when (forgotten by [`Breaker::sweep`] once unused).
    last_phase: DashMap<String, (Phase, Instant)>,
}

impl Breaker {
    /// A policy on Redis (`conn` is `Some`) or on local state.
    pub(crate) fn new(
        name: impl Into<String>,
        space: KeySpace,
        config: &BreakerConfig,
        conn: Option<Arc<RedisConnection>>,
        clock: SharedClock,
        gate: Gate,
        telemetry: crate::telemetry::Telemetry,
    ) -> Self {
        let ms = crate::time::ttl_arg;
        let text = <fred::types::Value as From<String>>::from;
        let ttl = config
            .window
            .max(config.break_duration)
            .saturating_mul(4)
            .max(Duration::from_secs(60));
        let counts_space = KeySpace::new(
            space.prefix().clone(),
            crate::keys::ResourceKind::BreakerCounts,
            space.namespace().clone(),
        );
        Breaker(Arc::new(BreakerState {
            cached_outcomes: (
                telemetry.counter("breaker.admit", "cached_admitted"),
                telemetry.counter("breaker.admit", "cached_refused"),
            ),
            telemetry,
            last_phase: DashMap::new(),
            gate,
            counts_space,
            epoch: AtomicU64::new(0),
            tracked: AtomicBool::new(false),
            clock,
            args: [
                // Shortest exact form: rounded, a ratio just above a reachable one (2 of 3)
                // would open on Redis and not locally, or the other way round.
                text(config.failure_ratio.to_string()),
                ms(config.window),
                text(config.min_calls.to_string()),
                ms(config.break_duration),
                text(config.half_open_max_calls.to_string()),
                ms(ttl),
            ],
            name: name.into(),
            space,
            config: config.clone(),
            conn,
            cache: DashMap::new(),
            local: DashMap::new(),
            local_sweeper: Default::default(),
            counters: Counters::default(),
            events: broadcast::channel(256).0,
        }))
    }

    /// The policy name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The prefix of every state key of this policy: what the tracking subscriber asks the
    /// server to broadcast invalidations for (state keys change only on phase changes).
    pub(crate) fn tracking_prefix(&self) -> String {
        self.space.namespace_prefix()
    }

    /// An invalidation push for `redis_key` (a state key of this policy): drop its cached
    /// phase, so the next admit asks Redis. A phase read in flight is not cached.
    pub(crate) fn apply_invalidation(&self, redis_key: &str) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.cache.remove(redis_key);
    }

    /// Drop every cached phase (a server flush, or tracking lost).
    pub(crate) fn flush_cache(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.cache.clear();
    }

    /// The tracking subscriber confirmed (`true`) or lost (`false`) invalidations for this
    /// policy. Lost: every cached phase is dropped and, until confirmed again, none is served
    /// longer than `closed_cache_ttl` (an open one included, so a reset made by another replica
    /// is seen within that TTL).
    pub(crate) fn set_tracked(&self, tracked: bool) {
        self.tracked.store(tracked, Ordering::Release);
        // Either way a phase read in flight is not cached: one sent untracked may predate
        // a reset that no push will announce.
        self.flush_cache();
    }

    /// Drop cached phases past their deadline (the resilience actor calls this periodically,
    /// so routes that stopped being used do not hold memory).
    #[doc(hidden)]
    pub fn sweep(&self) {
        let now = self.clock.now();
        self.cache.retain(|_, c| c.until > now);
        // A route not decided for as long as its counts live on the server is forgotten (a
        // route abandoned while open must not be reported open for ever).
        let keep = self
            .config
            .window
            .max(self.config.break_duration)
            .saturating_mul(4)
            .max(Duration::from_secs(60));
        self.last_phase
            .retain(|_, (_, seen)| now.saturating_duration_since(*seen) < keep);
    }

    /// Every transition from now on.
    pub fn transitions(&self) -> broadcast::Receiver<Transition> {
        self.events.subscribe()
    }

    /// A copy of the statistics.
    pub fn stats(&self) -> BreakerStats {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        BreakerStats {
            admits: l(&self.counters.admits),
            refused: l(&self.counters.refused),
            round_trips: l(&self.counters.round_trips),
            fallbacks: l(&self.counters.fallbacks),
            routes_by_phase: {
                let mut by = BTreeMap::new();
                for p in [Phase::Closed, Phase::Open, Phase::HalfOpen] {
                    by.insert(p.as_str(), 0);
                }
                for e in self.last_phase.iter() {
                    *by.entry(e.value().0.as_str()).or_insert(0) += 1;
                }
                by
            },
        }
    }

    /// Remember the phase `route` was last seen in (for stats and the phase gauge).
    fn saw(&self, route: &str, phase: Phase) {
        let now = self.clock.now();
        match self.last_phase.get_mut(route) {
            Some(mut p) => *p = (phase, now),
            None => {
                self.last_phase.insert(route.to_string(), (phase, now));
            }
        }
    }

    fn key(&self, route: &str) -> Result<String> {
        let route = if route.is_empty() { "-" } else { route };
        Ok(self.space.key(None, &[route])?.into_string())
    }

    fn counts_key(&self, route: &str) -> Result<String> {
        let route = if route.is_empty() { "-" } else { route };
        Ok(self.counts_space.key(None, &[route])?.into_string())
    }

    fn emit(&self, route: &str, to: Phase, local: bool, at: SystemTime) {
        tracing::info!(policy = %self.name, route, ?to, local, "circuit breaker transition");
        self.saw(route, to);
        #[cfg(feature = "metrics")]
        metrics::counter!(
            crate::telemetry::names::BREAKER_TRANSITIONS,
            "supervisor" => self.telemetry.supervisor().to_string(),
            "name" => self.name.clone(),
            "to" => to.as_str(),
        )
        .increment(1);
        let _ = self.events.send(Transition {
            policy: self.name.clone(),
            route: route.to_string(),
            to,
            local,
            at,
        });
    }

    /// Whether a call on `route` may go ahead. Never a Redis error.
    pub async fn admit(&self, route: &str) -> Result<Admission> {
        self.gate.check("breaker.admit")?;
        self.decide(route).await
    }

    /// [`Breaker::admit`] past the gate (`call` checks it once for admit, call and record).
    async fn decide(&self, route: &str) -> Result<Admission> {
        let key = self.key(route)?;
        self.counters.admits.fetch_add(1, Ordering::Relaxed);
        let now = self.clock.now();
        let cached = self.cache.get(&key).map(|c| *c);
        let decision = match (&self.conn, cached) {
            // Served from the cached phase: counted, not timed or traced (a hot path of
            // about a hundred nanoseconds).
            (Some(_), Some(c)) if c.until > now && c.phase == Phase::Closed => {
                self.cached_outcomes.0.increment();
                Admission {
                    allowed: true,
                    phase: Phase::Closed,
                    retry_after: Duration::ZERO,
                    decided_by: DecidedBy::Cache,
                }
            }
            (Some(_), Some(c)) if c.until > now && c.phase == Phase::Open => {
                self.cached_outcomes.1.increment();
                Admission {
                    allowed: false,
                    phase: Phase::Open,
                    retry_after: c.retry_at.saturating_duration_since(now),
                    decided_by: DecidedBy::Cache,
                }
            }
            (Some(conn), _) => {
                let decide = async {
                    Ok(match self.admit_remote(conn, &key, route).await {
                        Ok(a) => a,
                        Err(e) => {
                            self.counters.fallbacks.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(policy = %self.name, error = %e, "breaker decided locally");
                            self.local_admit(&key, route, DecidedBy::Fallback)
                        }
                    })
                };
                let a = self
                    .telemetry
                    .observe("breaker.admit", decide, admission_outcome)
                    .await?;
                self.saw(route, a.phase);
                a
            }
            (None, _) => {
                let started = self.telemetry.start();
                let a = self.local_admit(&key, route, DecidedBy::Local);
                self.telemetry
                    .finish("breaker.admit", admission_outcome(&a), started);
                self.saw(route, a.phase);
                a
            }
        };
        if !decision.allowed {
            self.counters.refused.fetch_add(1, Ordering::Relaxed);
        }
        Ok(decision)
    }

    /// Record the outcome of an admitted call. Never a Redis error.
    pub async fn record(&self, route: &str, ok: bool) -> Result<Phase> {
        self.gate.check("breaker.record")?;
        self.record_outcome(route, ok).await
    }

    /// [`Breaker::record`] past the gate: a call admitted before shutdown still counts.
    async fn record_outcome(&self, route: &str, ok: bool) -> Result<Phase> {
        let op = async {
            let key = self.key(route)?;
            let action = if ok { "ok" } else { "fail" };
            Ok(match &self.conn {
                Some(conn) => match pooled_with(|| self.script(conn, &key, route, action)).await {
                    Ok(a) => a.phase,
                    Err(_) => {
                        self.counters.fallbacks.fetch_add(1, Ordering::Relaxed);
                        self.local_record(&key, route, ok)
                    }
                },
                None => self.local_record(&key, route, ok),
            })
        };
        self.telemetry
            .observe("breaker.record", op, |_| "recorded")
            .await
            .inspect(|&phase| self.saw(route, phase))
    }

    /// Admit, run `call`, and record its outcome (`Err` counts as a failure). A refused call
    /// returns [`Error::CircuitOpen`] without running.
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use forze_redis_actors::{CallError, Config, ErrorKind, Forze};
    ///
    /// let config = Config::from_toml_str(r#"mode = "embedded"
    ///     [breakers.payments]
    ///     min_calls = 2
    ///     failure_ratio = 0.5
    /// "#)?;
    /// let (forze, _join) = Forze::spawn(config).await?;
    /// let payments = forze.breaker("payments")?;
    ///
    /// // Closed: the call runs and its value comes back.
    /// let receipt = payments.call("psp", async { Ok::<_, std::io::Error>("receipt-1") }).await?;
    /// assert_eq!(receipt, "receipt-1");
    /// // A failure comes back as `CallError::Call`; one failure in two calls opens the breaker.
    /// let failed = payments.call("psp", async { Err::<&str, _>("gateway timeout") }).await;
    /// assert!(matches!(failed, Err(CallError::Call("gateway timeout"))));
    /// // Open: the next call is refused without running.
    /// let refused = payments.call("psp", async { Ok::<_, std::io::Error>("receipt-2") }).await;
    /// assert!(matches!(refused, Err(CallError::Breaker(ref e)) if e.kind() == ErrorKind::CircuitOpen));
    ///
    /// forze.shutdown().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn call<T, E, F>(&self, route: &str, call: F) -> std::result::Result<T, CallError<E>>
    where
        F: std::future::Future<Output = std::result::Result<T, E>>,
    {
        self.gate
            .check("breaker.call")
            .map_err(CallError::Breaker)?;
        let a = self.decide(route).await.map_err(CallError::Breaker)?;
        if !a.allowed {
            return Err(CallError::Breaker(Error::CircuitOpen {
                retry_after: a.retry_after,
            }));
        }
        let out = call.await;
        let _ = self.record_outcome(route, out.is_ok()).await;
        out.map_err(CallError::Call)
    }

    /// Open the breaker of `route` fleet-wide until [`Breaker::reset`]. Admin operation: a
    /// Redis error is returned.
    pub async fn force_open(&self, route: &str) -> Result<()> {
        self.gate.check("breaker.force_open")?;
        self.admin(route, "force_open").await
    }

    /// Hold the breaker of `route` closed fleet-wide until [`Breaker::reset`].
    pub async fn force_close(&self, route: &str) -> Result<()> {
        self.gate.check("breaker.force_close")?;
        self.admin(route, "force_closed").await
    }

    /// Clear any forcing and counts: closed, fleet-wide.
    pub async fn reset(&self, route: &str) -> Result<()> {
        self.gate.check("breaker.reset")?;
        self.admin(route, "reset").await
    }

    async fn admin(&self, route: &str, action: &'static str) -> Result<()> {
        let op = async {
            let key = self.key(route)?;
            match &self.conn {
                Some(conn) => {
                    self.cache.remove(&key);
                    pooled_with(|| self.script(conn, &key, route, action)).await?;
                    // Forced states are never cached: every replica asks until reset.
                    self.cache.remove(&key);
                }
                None => {
                    let (phase, forced) = match action {
                        "force_open" => (Phase::Open, Some(Phase::Open)),
                        "force_closed" => (Phase::Closed, Some(Phase::Closed)),
                        _ => (Phase::Closed, None),
                    };
                    let mut state = Self::fresh(self.clock.now());
                    let before = self.local.get(&key).map(|s| s.phase);
                    state.phase = phase;
                    state.forced = forced;
                    self.local.insert(key, state);
                    if before.unwrap_or(Phase::Closed) != phase {
                        self.emit(route, phase, true, self.clock.wall());
                    }
                }
            }
            Ok(())
        };
        self.telemetry.observe("breaker.admin", op, |_| "ok").await
    }

    /// An admission decided by Redis. A closed breaker, the steady state, is read with one
    /// `HMGET` of its phase and forced phase: for it the script would admit and write nothing,
    /// so the read decides the same at about a third of the server's CPU. Any other phase
    /// goes to the script, which alone moves a phase and counts trial calls fleet-wide.
    async fn admit_remote(
        &self,
        conn: &RedisConnection,
        key: &str,
        route: &str,
    ) -> Result<Admission> {
        const OP: &str = "breaker";
        self.counters.round_trips.fetch_add(1, Ordering::Relaxed);
        let sent = self.clock.now();
        let epoch = self.epoch.load(Ordering::Acquire);
        let bound = conn.read_bound();
        let client = conn.client(OP)?.with_options(bound.options());
        let read: Vec<fred::types::Value> = bound
            .run(pooled_with(|| client.hmget(key, ("ph", "fo"))))
            .await
            .map_err(|e| conn.error(OP, Access::Read, e))?;
        // Absent (never tripped, or expired) or `closed`, and not forced open: what the
        // script's admission treats as closed without writing.
        let closed = |v: &fred::types::Value| {
            matches!(v, fred::types::Value::Null) || v.as_str().is_some_and(|s| s == "closed")
        };
        if read.len() != 2 || !read.iter().all(closed) {
            return pooled_with(|| self.script(conn, key, route, "admit")).await;
        }
        Ok(self.apply(
            key,
            route,
            "admit",
            sent,
            epoch,
            Decided {
                allowed: true,
                phase: Phase::Closed,
                transition: None,
                retry_at: 0,
                server_now: 0,
            },
        ))
    }

    async fn script(
        &self,
        conn: &RedisConnection,
        key: &str,
        route: &str,
        action: &'static str,
    ) -> Result<Admission> {
        self.counters.round_trips.fetch_add(1, Ordering::Relaxed);
        let sent = self.clock.now();
        let epoch = self.epoch.load(Ordering::Acquire);
        let counts = self.counts_key(route)?;
        let [a1, a2, a3, a4, a5, a6] = &self.args;
        let reply: Vec<fred::types::Value> = conn
            .eval(
                "breaker",
                Access::Write,
                &BREAKER,
                &[key, &counts],
                &[
                    // A static name: shared, not copied.
                    fred::types::Value::Bytes(bytes::Bytes::from_static(action.as_bytes())),
                    a1.clone(),
                    a2.clone(),
                    a3.clone(),
                    a4.clone(),
                    a5.clone(),
                    a6.clone(),
                ],
            )
            .await?;
        let bad = || Error::internal("breaker", "unexpected script reply");
        let [allowed, phase, transition, retry_at, server_now] = reply.as_slice() else {
            return Err(bad());
        };
        let decided = Decided {
            allowed: allowed.as_i64() == Some(1),
            phase: Phase::parse(&phase.as_string().ok_or_else(bad)?),
            transition: transition
                .as_string()
                .filter(|t| !t.is_empty())
                .map(|t| Phase::parse(&t)),
            retry_at: retry_at.as_i64().unwrap_or(0),
            server_now: server_now.as_i64().unwrap_or(0),
        };
        Ok(self.apply(key, route, action, sent, epoch, decided))
    }

    /// Take in what Redis decided for `action` (sent at `sent`, when the invalidation epoch
    /// was `epoch`): the cached phase, the fallback's seed, the transition event.
    fn apply(
        &self,
        key: &str,
        route: &str,
        action: &'static str,
        sent: Instant,
        epoch: u64,
        decided: Decided,
    ) -> Admission {
        let Decided {
            allowed,
            phase,
            transition,
            retry_at,
            server_now,
        } = decided;
        // The server's own clock sets the deadline; only its distance from the server's now
        // is carried over to ours, so a skewed local wall clock changes nothing. Never more
        // than one break (a corrupt state hash cannot park a replica for ever).
        let wait = Duration::from_millis(retry_at.saturating_sub(server_now).max(0) as u64)
            .min(self.config.break_duration);
        let forced = retry_at == 0 && phase == Phase::Open;
        // An invalidation that arrived while this call was in flight may concern a newer
        // phase than the one it returned: do not cache it then.
        let raced = self.epoch.load(Ordering::Acquire) != epoch;
        match phase {
            _ if raced => {
                self.cache.remove(key);
            }
            Phase::Closed if action != "force_closed" => {
                self.cache.insert(
                    key.to_string(),
                    Cached {
                        phase,
                        until: sent + self.config.closed_cache_ttl,
                        retry_at: sent,
                    },
                );
            }
            Phase::Open if !forced => {
                let hold = if self.tracked.load(Ordering::Acquire) {
                    wait
                } else {
                    wait.min(self.config.closed_cache_ttl)
                };
                self.cache.insert(
                    key.to_string(),
                    Cached {
                        phase,
                        until: sent + hold,
                        retry_at: sent + wait,
                    },
                );
            }
            _ => {
                self.cache.remove(key);
            }
        }
        self.seed_fallback(key, phase, forced, sent, wait);
        if let Some(to) = transition {
            self.emit(route, to, false, from_unix_ms(server_now));
        }
        // An invalidation that landed between the epoch check and the insert: undo.
        if self.epoch.load(Ordering::Acquire) != epoch {
            self.cache.remove(key);
        }
        Admission {
            allowed,
            phase,
            retry_after: if allowed { Duration::ZERO } else { wait },
            decided_by: DecidedBy::Redis,
        }
    }

    /// Keep the fallback breaker of `key` in the phase Redis last gave, so an outage starts
    /// where the fleet was: open (ending when the fleet's break ends) or closed. Half-open and
    /// forced phases leave it as it is.
    fn seed_fallback(&self, key: &str, phase: Phase, forced: bool, sent: Instant, wait: Duration) {
        let seeded = match phase {
            Phase::Open if !forced => {
                let ends = after(sent, wait);
                let opened_at = ends.checked_sub(self.config.break_duration).unwrap_or(sent);
                LocalState {
                    phase: Phase::Open,
                    opened_at,
                    ..Self::fresh(sent)
                }
            }
            Phase::Closed if !forced => Self::fresh(sent),
            _ => return,
        };
        match self.local.get_mut(key) {
            Some(mut s) if s.phase != seeded.phase || seeded.phase == Phase::Open => *s = seeded,
            Some(_) => {}
            None if seeded.phase == Phase::Open => {
                self.local.insert(key.to_string(), seeded);
            }
            None => {}
        }
    }

    fn fresh(now: Instant) -> LocalState {
        LocalState {
            phase: Phase::Closed,
            window_start: now,
            successes: 0,
            failures: 0,
            opened_at: now,
            half_open_calls: 0,
            forced: None,
        }
    }

    /// Drop local states that are as good as fresh (closed, not forced, their window over),
    /// so routes no longer used do not hold memory.
    fn sweep_local(&self, now: Instant) {
        let window = self.config.window;
        self.local_sweeper.sweep(&self.local, |_, s| {
            s.forced.is_some()
                || s.phase != Phase::Closed
                || now.saturating_duration_since(s.window_start) < window
        });
    }

    fn local_admit(&self, key: &str, route: &str, decided_by: DecidedBy) -> Admission {
        let now = self.clock.now();
        self.sweep_local(now);
        let mut s = self
            .local
            .entry(key.to_string())
            .or_insert_with(|| Self::fresh(now));
        if let Some(forced) = s.forced {
            return Admission {
                allowed: forced == Phase::Closed,
                phase: forced,
                retry_after: Duration::ZERO,
                decided_by,
            };
        }
        let mut to = None;
        if s.phase == Phase::Open
            && now.saturating_duration_since(s.opened_at) >= self.config.break_duration
        {
            s.phase = Phase::HalfOpen;
            s.half_open_calls = 0;
            s.opened_at = now;
            to = Some(Phase::HalfOpen);
        }
        // Trials that never reported back free their slots after one more break duration.
        if s.phase == Phase::HalfOpen
            && s.half_open_calls >= self.config.half_open_max_calls
            && now.saturating_duration_since(s.opened_at) >= self.config.break_duration
        {
            s.half_open_calls = 0;
            s.opened_at = now;
        }
        let allowed = match s.phase {
            Phase::Closed => true,
            Phase::HalfOpen if s.half_open_calls < self.config.half_open_max_calls => {
                s.half_open_calls += 1;
                true
            }
            _ => false,
        };
        // As the script: open, the break's end; refused while half-open, the end of this
        // round of trials, when the slots free up.
        let retry_after = match s.phase {
            Phase::Open => {
                (s.opened_at + self.config.break_duration).saturating_duration_since(now)
            }
            Phase::HalfOpen if !allowed => {
                (s.opened_at + self.config.break_duration).saturating_duration_since(now)
            }
            _ => Duration::ZERO,
        };
        let phase = s.phase;
        drop(s);
        if let Some(p) = to {
            self.emit(route, p, true, self.clock.wall());
        }
        Admission {
            allowed,
            phase,
            retry_after,
            decided_by,
        }
    }

    fn local_record(&self, key: &str, route: &str, ok: bool) -> Phase {
        let now = self.clock.now();
        let mut s = self
            .local
            .entry(key.to_string())
            .or_insert_with(|| Self::fresh(now));
        if let Some(forced) = s.forced {
            return forced;
        }
        let mut to = None;
        let roll = |s: &mut LocalState| {
            if now.saturating_duration_since(s.window_start) >= self.config.window {
                s.window_start = now;
                s.successes = 0;
                s.failures = 0;
            }
        };
        match (s.phase, ok) {
            (Phase::HalfOpen, true) => {
                *s = Self::fresh(now);
                to = Some(Phase::Closed);
            }
            (Phase::HalfOpen, false) => {
                s.phase = Phase::Open;
                s.opened_at = now;
                to = Some(Phase::Open);
            }
            (Phase::Closed, true) => {
                roll(&mut s);
                s.successes = s.successes.saturating_add(1);
            }
            (Phase::Closed, false) => {
                roll(&mut s);
                s.failures = s.failures.saturating_add(1);
                let total = s.successes.saturating_add(s.failures);
                if total >= self.config.min_calls
                    && f64::from(s.failures) / f64::from(total) >= self.config.failure_ratio
                {
                    s.phase = Phase::Open;
                    s.opened_at = now;
                    to = Some(Phase::Open);
                }
            }
            (Phase::Open, _) => {}
        }
        let phase = s.phase;
        drop(s);
        if let Some(p) = to {
            self.emit(route, p, true, self.clock.wall());
        }
        phase
    }
}

/// The error of [`Breaker::call`].
#[derive(Debug, thiserror::Error)]
pub enum CallError<E> {
    /// The breaker refused the call (or its input was invalid).
    #[error(transparent)]
    Breaker(Error),
    /// The call ran and failed (recorded as a failure).
    #[error("the call failed")]
    Call(E),
}

#[cfg(test)]
mod tests {
    use crate::sweep::MIN_SWEEP;

    /// Closed breakers whose window is over are as good as new: they leave memory, and an
    /// open one stays.
    #[tokio::test]
    async fn settled_local_breakers_do_not_stay_in_memory() {
        let config = crate::Config::from_toml_str(
            "mode = \"embedded\"\n[breakers.down]\nwindow = \"5ms\"\nmin_calls = 1\nfailure_ratio = 1.0\nbreak_duration = \"60s\"",
        )
        .expect("config");
        let rt = crate::runtime::Runtime::build(config).expect("runtime");
        let down = rt.breakers.get("down").expect("down");
        assert!(down.admit("tripped").await.unwrap().allowed);
        down.record("tripped", false).await.unwrap();
        for round in 0..10 {
            for i in 0..1000 {
                assert!(down.admit(&format!("r{round}-{i}")).await.unwrap().allowed);
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(down.local.len() <= 2 * MIN_SWEEP, "{}", down.local.len());
        assert!(
            !down.admit("tripped").await.unwrap().allowed,
            "the open one was swept"
        );
    }
}

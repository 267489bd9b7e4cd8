//! The Redis connection pool with safe settings, command options and script execution.
//!
//! fred's defaults are unsafe for us (`docs/operations.md`, "Safe fred settings"): no reconnect
//! policy, no command timeout, no detection of a half-open peer, and in-flight writes replayed
//! after a reconnect. [`RedisConnection::build`] fixes each of them:
//!
//! | setting | value | why |
//! |---|---|---|
//! | RESP2 | always | pushes are read on the tracking subscriber's own RESP3 connection, never on the pool; RESP2 replies cost fred less to parse (lock acquire + release at 64 tasks: about 10 % more throughput) |
//! | reconnect policy | exponential, jittered, forever | fred never reconnects without one |
//! | `fail_fast` (config) | false | start while Redis is down; connect in the background |
//! | per-command `timeout` | `command_timeout` | fred has no default timeout |
//! | per-command `fail_fast` | true | a call while disconnected errors at once |
//! | writes: `max_attempts` | 1 | a lost reply is `OutcomeUnknown`, never a silent replay |
//! | `unresponsive.max_timeout` | off | black-holed connections are found by the pool's unresponsive check (`src/unresponsive.rs`) instead: a timeout makes every client `PING`ed, and one unanswered for `unresponsive_timeout` is reconnected (on a cluster, its slot map refreshed if the silent node's slots moved) |
//! | `internal_command_timeout`, `connection_timeout` | `connect_timeout` | the handshake waits on them |
//! | TCP keepalive, `TCP_USER_TIMEOUT` | configured | dead peers found by the kernel too |
//! | `TCP_NODELAY` | configured, off by default | Nagle coalesces concurrent flushes (see the config) |
//! | TLS | from the URL scheme and `[redis.tls]` | our rustls client, never fred's default; see [`crate::tls`] |
//!
//! Every command picks a *connected* client of the pool; when none is connected the call fails
//! with `Unavailable` before anything is sent, carrying the reason connections fail when one is
//! known (a refused certificate, refused credentials…).

use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures::future::Either;

use fred::clients::{Client, Pool};
use fred::interfaces::{ClientLike, EventInterface};
use fred::types::config::{Options, ReconnectPolicy, TcpConfig};
use fred::types::{ClusterHash, CustomCommand, FromValue, Value};

use crate::config::RedisConfig;
use crate::connect_failure::{ConnectDiagnostics, ConnectFailure};
use crate::deadline::Deadline;
use crate::error::{Access, DriverErrorClass, Error, Result};
use crate::read_watch::{ReadWatch, Watched};
use crate::scripts::Script;
use crate::tls::TlsClient;
use crate::unresponsive::UnresponsiveCheck;

/// States of a native command's availability (see `RedisConnection::del_if_eq`).
const NATIVE_UNKNOWN: u8 = 0;
const NATIVE_YES: u8 = 1;
const NATIVE_NO: u8 = 2;

/// The server's refusal of a command before running it: one it does not have (`ERR unknown
/// command 'X'`), or one this ACL user may not run (`NOPERM`).
fn refused_command(e: &fred::error::Error) -> bool {
    DriverErrorClass::of(e) == DriverErrorClass::Auth
        || e.details().to_ascii_lowercase().contains("unknown command")
}

/// The server's refusal of a command's option before running it: a server without `SET …
/// IFEQ` (Redis before 8.4, Valkey before 8.1) answers `ERR syntax error`.
fn refused_option(e: &fred::error::Error) -> bool {
    refused_command(e) || e.details().to_ascii_lowercase().contains("syntax error")
}

/// The shared connection pool and the options every command is sent with. Cheap to share
/// behind an `Arc`; clones of the inner fred pool are handed to callers' tasks.
#[derive(Debug)]
pub struct RedisConnection {
    pool: Pool,
    command_timeout: Duration,
    read_opts: Options,
    /// `read_opts` without the driver's timer, for reads the read watch bounds.
    watched_read_opts: Options,
    /// Bounds reads without a timer per read (`None` outside a runtime).
    read_watch: Option<ReadWatch>,
    /// Finds black-holed connections after a timeout and reconnects them.
    unresponsive: UnresponsiveCheck,
    write_opts: Options,
    idempotent_write_opts: Options,
    script_reloads: AtomicU64,
    /// Whether the server has `DELIFEQ` (Valkey 9 and later): [`NATIVE_UNKNOWN`] until a
    /// first use tells, then [`NATIVE_YES`] or [`NATIVE_NO`].
    delifeq: AtomicU8,
    /// Whether the server has `SET … IFEQ` (Valkey 8.1, Redis 8.4 and later), as `delifeq`.
    set_ifeq: AtomicU8,
    /// Set by `quit`: the connection tasks' watchdogs stop restarting them. A lock, not a
    /// flag: a watchdog checks it and starts a task under it, so none starts after `quit`.
    quitting: Arc<std::sync::Mutex<bool>>,
    /// Connection tasks restarted after they ended on their own.
    task_restarts: Arc<AtomicU64>,
    /// Backoff between restarts of an ended connection task.
    restart_delay: (Duration, Duration),
    /// The TLS client every connection of this deployment uses, when TLS is on.
    tls: Option<TlsClient>,
    /// Why connections fail, for the `Unavailable` errors of refused calls.
    diagnostics: Arc<ConnectDiagnostics>,
}

/// How one read is bounded (see [`RedisConnection::read_bound`]).
pub(crate) struct ReadBound<'a> {
    options: &'a Options,
    watch: Option<(&'a ReadWatch, Deadline)>,
}

impl<'a> ReadBound<'a> {
    /// The options to send the read with.
    pub(crate) fn options(&self) -> &'a Options {
        self.options
    }

    /// Await `read` (sent with [`ReadBound::options`]) within the command timeout.
    pub(crate) fn run<T, F>(&self, read: F) -> Either<Watched<'a, F>, F>
    where
        F: Future<Output = Result<T, fred::error::Error>> + Unpin,
    {
        match self.watch {
            Some((watch, deadline)) => Either::Left(watch.watch(deadline, read)),
            None => Either::Right(read),
        }
    }
}

fn millis_u32(d: Duration) -> u32 {
    u32::try_from(crate::time::millis(d)).unwrap_or(u32::MAX)
}

impl RedisConnection {
    /// Build the pool with the safe settings above. Does not connect.
    pub fn build(cfg: &RedisConfig) -> Result<Self> {
        cfg.validate_endpoint("redis")?;
        let mut fred_cfg = cfg.url.to_fred_config()?;
        // Start while Redis is down: connect() in the background instead of failing init.
        fred_cfg.fail_fast = false;
        fred_cfg.tracing = fred::types::config::TracingConfig::new(cfg.driver_tracing);
        let diagnostics = Arc::new(ConnectDiagnostics::default());
        let tls = apply_tls(cfg, &mut fred_cfg, &diagnostics)?;
        let mut policy = ReconnectPolicy::new_exponential(
            cfg.reconnect.max_attempts,
            millis_u32(cfg.reconnect.min_delay),
            millis_u32(cfg.reconnect.max_delay),
            2,
        );
        policy.set_jitter(millis_u32(cfg.reconnect.jitter));

        let mut builder = fred::types::Builder::from_config(fred_cfg);
        builder
            .set_policy(policy)
            .with_connection_config(|c| {
                c.connection_timeout = cfg.connect_timeout;
                c.internal_command_timeout = cfg.connect_timeout;
                // fred's own black-hole detector stays off (its default): it re-arms a timer
                // on every turn of the connection task and never fires under steady traffic.
                // `UnresponsiveCheck` replaces it.
                // Writes are sent once; reads may be retried within their timeout.
                c.max_command_attempts = 2;
                c.tcp = tcp_config(cfg);
            })
            .with_performance_config(|p| {
                p.default_command_timeout = cfg.command_timeout;
                // fred's event channels end silently on lag; keep them roomy.
                p.broadcast_channel_capacity = 4096;
            });
        let pool = builder.build_pool(cfg.pool_size).map_err(|e| {
            Error::config("redis", format!("cannot build the pool ({:?})", e.kind()))
        })?;

        let read_opts = Options {
            timeout: Some(cfg.command_timeout),
            fail_fast: true,
            ..Default::default()
        };
        let write_opts = Options {
            max_attempts: Some(1),
            ..read_opts.clone()
        };
        // fred counts a send after a MOVED/ASK redirection as another attempt: with one
        // attempt, a write to a slot that moved fails. Writes that are safe to run twice get a
        // second attempt, so they follow a redirection (or a reconnect) transparently.
        let idempotent_write_opts = Options {
            max_attempts: Some(2),
            ..read_opts.clone()
        };
        // No timer of the driver's own: the read watch bounds these (zero is "none").
        let watched_read_opts = Options {
            timeout: Some(Duration::ZERO),
            ..read_opts.clone()
        };
        let quitting = Arc::new(std::sync::Mutex::new(false));
        let unresponsive =
            UnresponsiveCheck::new(pool.clients(), cfg.unresponsive_timeout, quitting.clone());
        Ok(RedisConnection {
            pool,
            command_timeout: cfg.command_timeout,
            read_watch: ReadWatch::start(cfg.command_timeout),
            unresponsive,
            watched_read_opts,
            read_opts,
            write_opts,
            idempotent_write_opts,
            script_reloads: AtomicU64::new(0),
            delifeq: AtomicU8::new(NATIVE_UNKNOWN),
            set_ifeq: AtomicU8::new(NATIVE_UNKNOWN),
            quitting,
            task_restarts: Arc::new(AtomicU64::new(0)),
            restart_delay: (
                cfg.reconnect.min_delay.max(Duration::from_millis(10)),
                cfg.reconnect.max_delay.max(Duration::from_millis(10)),
            ),
            tls,
            diagnostics,
        })
    }

    /// The TLS client of this deployment (`None` without TLS), for the other connections it
    /// opens (tracking, topology polls).
    pub fn tls(&self) -> Option<&TlsClient> {
        self.tls.as_ref()
    }

    /// Why connections fail now, shared with the tracking connections.
    pub fn diagnostics(&self) -> &Arc<ConnectDiagnostics> {
        &self.diagnostics
    }

    /// `Unavailable` for `op` because no connection is up, with the known cause.
    fn refused(&self, op: &'static str) -> Error {
        Error::unavailable_because(op, self.diagnostics.last())
    }

    /// Start connecting every client in the background. Returns at once; callers are served
    /// (or refused with `Unavailable`) while the connections come up.
    ///
    /// Each client's connection task is watched: fred ends it for good on some internal errors
    /// (an `ASK` redirection it cannot follow ends the router task in fred 10.1, after which
    /// every command on that client times out), so a task that ends before `quit` is started
    /// again, with the reconnect backoff (its minimum after an `ASK`).
    pub fn connect_in_background(&self) {
        for client in self.pool.clients() {
            self.watch_connection_events(client);
            let client = client.clone();
            let quitting = self.quitting.clone();
            let restarts = self.task_restarts.clone();
            let (min, max) = self.restart_delay;
            tokio::spawn(async move {
                let mut delay = min;
                loop {
                    let started = tokio::time::Instant::now();
                    let task = {
                        let quitting = quitting.lock().unwrap_or_else(|p| p.into_inner());
                        if *quitting {
                            return;
                        }
                        // Spawns the task and returns at once: no await under the lock.
                        client.connect()
                    };
                    let ended = task.await;
                    if *quitting.lock().unwrap_or_else(|p| p.into_inner()) {
                        return;
                    }
                    restarts.fetch_add(1, Ordering::Relaxed);
                    let why = match &ended {
                        Ok(Ok(())) => "ended".to_string(),
                        Ok(Err(e)) => format!("{:?}", e.kind()),
                        Err(_) => "panicked".to_string(),
                    };
                    tracing::warn!(why, "redis connection task ended; starting it again");
                    // A task that ran a while gets a fresh backoff, and so does one ended by
                    // an `ASK` it could not follow (the connection was fine): during a slot
                    // migration every write to a moved key ends it, and a growing backoff
                    // would leave the client down, its calls queued, for seconds.
                    let ask = matches!(&ended, Ok(Err(e)) if ended_by_ask(e));
                    if ask || started.elapsed() > max {
                        delay = min;
                    }
                    tokio::time::sleep(delay).await;
                    if !ask {
                        delay = (delay * 2).min(max);
                    }
                }
            });
        }
    }

    /// Keep the diagnostics current from `client`'s events: a connection error names a cause
    /// (when the driver's report says what failed), a connection up clears it. Ends with the
    /// client's event channels (at `quit`).
    fn watch_connection_events(&self, client: &Client) {
        use tokio::sync::broadcast::error::RecvError;
        let mut errors = client.error_rx();
        let mut ups = client.reconnect_rx();
        let diagnostics = self.diagnostics.clone();
        let tls = self.tls.is_some();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    e = errors.recv() => match e {
                        Ok((err, _server)) => {
                            let report = format!("{err:?}");
                            if let Some(cause) = ConnectFailure::of_driver_report(tls, &report) {
                                diagnostics.record(cause);
                            }
                        }
                        Err(RecvError::Lagged(_)) => {}
                        Err(RecvError::Closed) => return,
                    },
                    up = ups.recv() => match up {
                        Ok(_) | Err(RecvError::Lagged(_)) => diagnostics.clear(),
                        Err(RecvError::Closed) => return,
                    },
                }
            }
        });
    }

    /// Connection tasks started again after they ended on their own.
    pub fn task_restarts(&self) -> u64 {
        self.task_restarts.load(Ordering::Relaxed)
    }

    /// Wait until a client is connected, at most `timeout`; `Unavailable` after that.
    pub async fn wait_connected(&self, timeout: Duration) -> Result<()> {
        if self.pool.next_connected().is_connected() {
            return Ok(());
        }
        let deadline =
            tokio::time::Instant::from_std(crate::time::after(std::time::Instant::now(), timeout));
        let mut pause = Duration::from_millis(1);
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(pause).await;
            if self.pool.next_connected().is_connected() {
                return Ok(());
            }
            pause = (pause * 2).min(Duration::from_millis(20));
        }
        Err(self.refused("routing.connect"))
    }

    /// The fred pool, for the pool actor's health checks and events.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The per-command time limit.
    pub fn command_timeout(&self) -> Duration {
        self.command_timeout
    }

    /// How many times a script was re-sent with `EVAL` after `NOSCRIPT`.
    pub fn script_reloads(&self) -> u64 {
        self.script_reloads.load(Ordering::Relaxed)
    }

    /// A connected client for `op`, or `Unavailable` without sending anything.
    pub fn client(&self, op: &'static str) -> Result<&Client> {
        let client = self.pool.next_connected();
        if client.is_connected() {
            Ok(client)
        } else {
            Err(self.refused(op))
        }
    }

    /// The options for a command of the given access.
    pub fn options(&self, access: Access) -> &Options {
        match access {
            Access::Read => &self.read_opts,
            Access::Write => &self.write_opts,
            Access::IdempotentWrite => &self.idempotent_write_opts,
        }
    }

    /// How the next read is bounded: by the read watch (no timer of the driver's own), or,
    /// while reads have been timing out or the watch is not running, by the driver's timer.
    /// Send the read with [`ReadBound::options`] and await it through [`ReadBound::run`].
    pub(crate) fn read_bound(&self) -> ReadBound<'_> {
        match self
            .read_watch
            .as_ref()
            .and_then(|w| Some((w, w.deadline()?)))
        {
            Some(watch) => ReadBound {
                options: &self.watched_read_opts,
                watch: Some(watch),
            },
            None => self.driver_timed_read(),
        }
    }

    /// A read bounded by the driver's own timer, never by the read watch: for a read that
    /// sends a write too (a sliding TTL's `PEXPIRE`), which must not be sent once timed out.
    pub(crate) fn driver_timed_read(&self) -> ReadBound<'_> {
        ReadBound {
            options: &self.read_opts,
            watch: None,
        }
    }

    /// Reads the read watch ended with a timeout (not counting those the driver's timer
    /// ended).
    pub fn watched_read_timeouts(&self) -> u64 {
        self.read_watch.as_ref().map_or(0, ReadWatch::expired)
    }

    /// Clients checked (sent a `PING` per connection) after a command timed out.
    pub fn unresponsive_checks(&self) -> u64 {
        self.unresponsive.checks()
    }

    /// Reconnects requested because a client's connection left a `PING` unanswered for
    /// `unresponsive_timeout` after a command timed out.
    pub fn unresponsive_reconnects(&self) -> u64 {
        self.unresponsive.reconnects()
    }

    /// Map a fred error of `op` to our error (a timeout also starts the unresponsive check).
    pub fn error(&self, op: &'static str, access: Access, err: fred::error::Error) -> Error {
        if *err.kind() == fred::error::ErrorKind::Timeout {
            if access == Access::Read {
                if let Some(watch) = &self.read_watch {
                    watch.saw_timeout();
                }
            }
            self.unresponsive.suspect();
        }
        Error::from_driver(op, access, self.command_timeout, err)
    }

    /// Run `script` on a connected client with `EVALSHA`, falling back to `EVAL` on `NOSCRIPT`.
    ///
    /// `keys` are borrowed (each is copied once, into the command) and `args` are values: an
    /// integer goes as one without being formatted first, and a string or bytes argument
    /// built once (per resource, not per call) is shared, so a call allocates its command and
    /// its keys, not one `String` per argument.
    pub async fn eval<R: FromValue>(
        &self,
        op: &'static str,
        access: Access,
        script: &Script,
        keys: &[&str],
        args: &[Value],
    ) -> Result<R> {
        self.eval_on(self.client(op)?, op, access, script, keys, args)
            .await
    }

    /// Probe every connected client of the pool, all at once, bounded by the command
    /// timeout: the server clock through the script registry, so that after a server restart
    /// the first probe also reloads the script cache. On a cluster a client is probed on each
    /// primary it routes to (a keyless script would go to a random one), so a silent primary
    /// is seen on every probe, not on a third of them.
    pub async fn probe(&self) -> Probe {
        let clients = self.pool().clients();
        let per_client = clients.iter().filter(|c| c.is_connected()).map(|client| {
            let nodes = crate::unresponsive::ping_targets(client);
            futures::future::join_all(nodes.into_iter().map(|node| async move {
                let mut opts = self.options(Access::Read).clone();
                opts.cluster_node = node;
                let time: Result<Vec<i64>> = self
                    .eval_with(
                        client.with_options(&opts),
                        "health.probe",
                        Access::Read,
                        &crate::scripts::SERVER_TIME,
                        &[],
                        &[],
                    )
                    .await;
                time.is_ok()
            }))
        });
        let answers = futures::future::join_all(per_client).await;
        Probe {
            healthy: answers.iter().filter(|a| a.iter().all(|ok| *ok)).count(),
            total: clients.len(),
            answered: answers.iter().flatten().filter(|ok| **ok).count(),
            asked: answers.iter().map(Vec::len).sum(),
        }
    }

    /// Whether `DELIFEQ` may run: `false` once the server refused it, so a caller can skip
    /// building its arguments.
    pub(crate) fn may_have_del_if_eq(&self) -> bool {
        self.delifeq.load(Ordering::Relaxed) != NATIVE_NO
    }

    /// `DELIFEQ key value` (delete `key` if it holds exactly `value`) where the server has
    /// the command: `Some(deleted)`; `None` when it does not (nothing ran), so the caller
    /// runs its script instead. The server's answer to the first use decides for the life of
    /// this pool (Valkey reports a Redis-compatible version, so the version string cannot);
    /// a refusal later (a failover to an older server, an ACL change) switches to the script.
    pub async fn del_if_eq(&self, op: &'static str, key: &str, value: &str) -> Result<Option<i64>> {
        if !self.may_have_del_if_eq() {
            return Ok(None);
        }
        let client = self.client(op)?.with_options(self.options(Access::Write));
        let command = CustomCommand::new_static("DELIFEQ", script_slot(&client, &[key]), false);
        match client
            .custom::<i64, Value>(command, vec![Value::from(key), Value::from(value)])
            .await
        {
            Ok(deleted) => {
                self.delifeq.store(NATIVE_YES, Ordering::Relaxed);
                Ok(Some(deleted))
            }
            // Refused by the server before running: unknown (an older server, a proxy, a
            // renamed command) or not permitted to this ACL user. The script may be.
            Err(e) if refused_command(&e) => {
                tracing::debug!("DELIFEQ refused by the server: lock releases use the script");
                self.delifeq.store(NATIVE_NO, Ordering::Relaxed);
                Ok(None)
            }
            Err(e) => Err(self.error(op, Access::Write, e)),
        }
    }

    /// Whether `SET … IFEQ` may run: `false` once the server refused it.
    pub(crate) fn may_have_set_if_eq(&self) -> bool {
        self.set_ifeq.load(Ordering::Relaxed) != NATIVE_NO
    }

    /// `SET key value IFEQ value PX ttl` for each `(key, value)`: give each key that still
    /// holds exactly `value` a new time to live, and nothing else (a missing key stays
    /// missing). Sent as one pipeline; on a cluster each command goes to its key's node.
    ///
    /// One answer per pair: `Some(renewed)`, or `None` where the server refused the option
    /// (nothing ran for that pair), so the caller runs its script for those. As with
    /// [`RedisConnection::del_if_eq`], the first answer decides for this pool and a later
    /// refusal switches back to the script. Each command is idempotent, so the pipeline
    /// keeps the pool's replay budget; it is bounded by the pool's default command timeout.
    pub async fn set_if_eq_many(
        &self,
        op: &'static str,
        pairs: &[(&str, &str)],
        ttl: Duration,
    ) -> Result<Vec<Option<bool>>> {
        if pairs.is_empty() || !self.may_have_set_if_eq() {
            return Ok(vec![None; pairs.len()]);
        }
        if pairs.len() > 1 && self.native_set_if_eq().is_none() {
            // Not known yet: ask with one command first, so a server without the option
            // refuses one command, not a whole batch.
            let first = Box::pin(self.set_if_eq_many(op, &pairs[..1], ttl)).await?;
            if first[0].is_none() {
                return Ok(vec![None; pairs.len()]);
            }
            let mut rest = Box::pin(self.set_if_eq_many(op, &pairs[1..], ttl)).await?;
            rest.insert(0, first[0]);
            return Ok(rest);
        }
        let access = Access::IdempotentWrite;
        let client = self.client(op)?;
        // Built from the client with this access's options (a fail-fast, bounded command that
        // is never sent again after a reconnect); `client.pipeline()` would carry none.
        let pipeline = fred::clients::Pipeline::from(client.with_options(self.options(access)));
        let ttl = crate::time::ttl_arg(ttl);
        for (key, value) in pairs {
            let command = CustomCommand::new_static("SET", script_slot(client, &[key]), false);
            let args = vec![
                Value::from(*key),
                Value::from(*value),
                Value::from_static_str("IFEQ"),
                Value::from(*value),
                Value::from_static_str("PX"),
                ttl.clone(),
            ];
            // Queued in memory; nothing is sent until `try_all`.
            pipeline
                .custom::<(), Value>(command, args)
                .await
                .map_err(|e| self.error(op, access, e))?;
        }
        let replies = pipeline.try_all::<Value>().await;
        if replies.len() != pairs.len() {
            // The pipeline as a whole failed (timeout, connection lost): one error for all.
            let first = replies.into_iter().find_map(|r| r.err());
            return Err(match first {
                Some(e) => self.error(op, access, e),
                None => Error::internal(op, "short pipeline reply"),
            });
        }
        let mut out = Vec::with_capacity(pairs.len());
        for reply in replies {
            out.push(match reply {
                Ok(Value::Null) => Some(false),
                Ok(_) => Some(true),
                Err(e) if refused_option(&e) => None,
                Err(e) => return Err(self.error(op, access, e)),
            });
        }
        let refused = out.iter().any(Option::is_none);
        if refused {
            tracing::debug!("SET IFEQ refused by the server: lease renewals use the script");
        }
        self.set_ifeq.store(
            if refused { NATIVE_NO } else { NATIVE_YES },
            Ordering::Relaxed,
        );
        Ok(out)
    }

    /// Whether lease renewals use the server's `SET … IFEQ`: `None` until the first renewal.
    pub fn native_set_if_eq(&self) -> Option<bool> {
        match self.set_ifeq.load(Ordering::Relaxed) {
            NATIVE_YES => Some(true),
            NATIVE_NO => Some(false),
            _ => None,
        }
    }

    /// Whether lock releases use the server's `DELIFEQ`: `None` until the first release.
    pub fn native_delifeq(&self) -> Option<bool> {
        match self.delifeq.load(Ordering::Relaxed) {
            NATIVE_YES => Some(true),
            NATIVE_NO => Some(false),
            _ => None,
        }
    }

    /// Run `script` on `client` with `EVALSHA`, falling back to `EVAL` on `NOSCRIPT`
    /// (arguments as for [`RedisConnection::eval`]).
    pub async fn eval_on<R: FromValue>(
        &self,
        client: &Client,
        op: &'static str,
        access: Access,
        script: &Script,
        keys: &[&str],
        args: &[Value],
    ) -> Result<R> {
        self.eval_with(
            client.with_options(self.options(access)),
            op,
            access,
            script,
            keys,
            args,
        )
        .await
    }

    /// [`RedisConnection::eval_on`] with the options already on the client.
    async fn eval_with<R: FromValue>(
        &self,
        client: fred::clients::WithOptions<Client>,
        op: &'static str,
        access: Access,
        script: &Script,
        keys: &[&str],
        args: &[Value],
    ) -> Result<R> {
        let fail = |e| self.error(op, access, e);
        let hash = script_slot(&client, keys);
        // Scripts go out as custom commands: fred 10.1 sends its own `EVALSHA`/`EVAL` again
        // after a lost connection whatever the attempt budget (a script that ran came back
        // `Ok` from its second run), while a custom command keeps the budget, so a write is
        // never replayed and a lost reply is `OutcomeUnknown`. Measured by
        // `tests/outcomes.rs`.
        let command = |name: &'static str, head: Value| {
            let mut all = Vec::with_capacity(2 + keys.len() + args.len());
            all.push(head);
            all.push(Value::Integer(keys.len() as i64));
            all.extend(keys.iter().map(|&k| Value::from(k)));
            all.extend(args.iter().cloned());
            (CustomCommand::new_static(name, hash.clone(), false), all)
        };
        let (cmd, all) = command("EVALSHA", script.sha1_value());
        match client.custom::<Value, Value>(cmd, all).await {
            Ok(v) => v.convert().map_err(fail),
            Err(e) if DriverErrorClass::of(&e) == DriverErrorClass::NoScript => {
                // NOSCRIPT proves the script did not run: sending the source is safe.
                self.script_reloads.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(script = script.name(), "NOSCRIPT: reloading with EVAL");
                let (cmd, all) = command("EVAL", Value::from(script.source()));
                client.custom::<R, Value>(cmd, all).await.map_err(fail)
            }
            Err(e) => Err(fail(e)),
        }
    }

    /// A snapshot of the clients' connection state.
    pub fn health(&self) -> Health {
        let total = self.pool.size();
        let connected = self
            .pool
            .clients()
            .iter()
            .filter(|c| c.is_connected())
            .count();
        Health {
            state: HealthState::from_counts(connected, total),
            since: SystemTime::now(),
            connected,
            total,
        }
    }

    /// Close every connection, all at once, within `timeout`. A client whose `QUIT` is not
    /// answered by then (a server that hangs) is left to the driver, which closes it when its
    /// socket fails; it is no longer restarted by us.
    pub async fn quit(&self, timeout: Duration) {
        *self.quitting.lock().unwrap_or_else(|p| p.into_inner()) = true;
        let quits = self.pool.clients().iter().map(|c| {
            let c = c.clone();
            async move {
                if tokio::time::timeout(timeout, c.quit()).await.is_err() {
                    tracing::warn!("redis client did not quit in time");
                }
            }
        });
        futures::future::join_all(quits).await;
    }
}

/// Put our TLS client into fred's configuration when `cfg` asks for TLS. The server-name
/// override is set on every configured server and mapped onto every discovered cluster node.
#[cfg(feature = "tls")]
fn apply_tls(
    cfg: &RedisConfig,
    fred_cfg: &mut fred::types::config::Config,
    diagnostics: &Arc<ConnectDiagnostics>,
) -> Result<Option<TlsClient>> {
    use fred::types::config::{HostMapping, ServerConfig, TlsConfig as FredTls, TlsHostMapping};
    let Some(settings) = cfg.tls_settings() else {
        return Ok(None);
    };
    let client = TlsClient::new(&settings, diagnostics.clone())?;

    /// Every discovered node is verified as the configured server name.
    #[derive(Debug)]
    struct FixedName(String);
    impl HostMapping for FixedName {
        fn map(&self, _ip: &std::net::IpAddr, _default_host: &str) -> Option<String> {
            Some(self.0.clone())
        }
    }

    let mut hostnames = TlsHostMapping::None;
    if let Some(name) = client.server_name_override() {
        match &mut fred_cfg.server {
            ServerConfig::Centralized { server } => {
                server.tls_server_name = Some(name.to_string().into())
            }
            ServerConfig::Clustered { hosts, .. } | ServerConfig::Sentinel { hosts, .. } => {
                for h in hosts {
                    h.tls_server_name = Some(name.to_string().into());
                }
            }
            #[allow(unreachable_patterns)]
            _ => {}
        }
        hostnames = TlsHostMapping::Custom(Arc::new(FixedName(name.to_string())));
    } else {
        // An IPv6 address from a URL keeps its brackets (`[fd00::5]`), which no server name
        // parses as: verify the address itself, as for an IPv4 one.
        let unbracket = |host: &str| {
            host.strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .map(str::to_string)
        };
        let servers: Vec<&mut fred::types::config::Server> = match &mut fred_cfg.server {
            ServerConfig::Centralized { server } => vec![server],
            ServerConfig::Clustered { hosts, .. } | ServerConfig::Sentinel { hosts, .. } => {
                hosts.iter_mut().collect()
            }
            #[allow(unreachable_patterns)]
            _ => Vec::new(),
        };
        for server in servers {
            if let Some(ip) = unbracket(&server.host) {
                server.tls_server_name = Some(ip.into());
            }
        }
    }
    fred_cfg.tls = Some(FredTls {
        connector: fred::types::config::TlsConnector::from(tokio_rustls::TlsConnector::from(
            client.rustls_config(),
        )),
        hostnames,
    });
    if !fred_cfg.uses_tls() {
        // Belt and braces: never hand fred a TLS request it would not honour.
        return Err(Error::config(
            "redis.tls",
            "the driver did not accept the TLS settings",
        ));
    }
    Ok(Some(client))
}

/// Without the `tls` feature, validation has already refused any TLS request.
#[cfg(not(feature = "tls"))]
fn apply_tls(
    cfg: &RedisConfig,
    _fred_cfg: &mut fred::types::config::Config,
    _diagnostics: &Arc<ConnectDiagnostics>,
) -> Result<Option<TlsClient>> {
    crate::tls::refuse_unsupported(cfg.uses_tls(), false, "redis")?;
    Ok(None)
}

/// Whether fred 10.1 ended a connection task because it could not follow an `ASK`
/// redirection (`router/utils.rs`, `send_asking_with_policy`: a command with no attempt left).
fn ended_by_ask(e: &fred::error::Error) -> bool {
    *e.kind() == fred::error::ErrorKind::Routing && e.details() == "Max attempts reached."
}

fn tcp_config(cfg: &RedisConfig) -> TcpConfig {
    TcpConfig {
        nodelay: Some(cfg.tcp_nodelay),
        keepalive: (!cfg.tcp_keepalive.is_zero()).then(|| {
            socket2::TcpKeepalive::new()
                .with_time(cfg.tcp_keepalive)
                .with_interval((cfg.tcp_keepalive / 3).max(Duration::from_secs(1)))
        }),
        #[cfg(target_os = "linux")]
        user_timeout: (!cfg.tcp_user_timeout.is_zero()).then_some(cfg.tcp_user_timeout),
        ..Default::default()
    }
}

/// Connection health as the pool actor publishes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthState {
    /// Every connection is up.
    Up,
    /// Some connections are up.
    Degraded,
    /// No connection is up: Redis-backed calls fail fast or fall back.
    Down,
    /// No Redis is configured: everything runs on local state.
    Embedded,
}

impl HealthState {
    /// Every state, for gauges that show one of them.
    #[doc(hidden)]
    pub const ALL: [HealthState; 4] = [
        HealthState::Up,
        HealthState::Degraded,
        HealthState::Down,
        HealthState::Embedded,
    ];

    /// The state in snake case (`up`, `degraded`, `down`, `embedded`).
    pub fn as_str(self) -> &'static str {
        match self {
            HealthState::Up => "up",
            HealthState::Degraded => "degraded",
            HealthState::Down => "down",
            HealthState::Embedded => "embedded",
        }
    }

    /// The state for `connected` of `total` connections.
    #[doc(hidden)]
    pub fn from_counts(connected: usize, total: usize) -> Self {
        match connected {
            0 => HealthState::Down,
            n if n >= total => HealthState::Up,
            _ => HealthState::Degraded,
        }
    }
}

/// What one health probe found.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    /// Clients whose every probe answered.
    pub healthy: usize,
    /// Clients in the pool.
    pub total: usize,
    /// Probes answered (one per client off a cluster, one per client and primary on one).
    pub answered: usize,
    /// Probes sent.
    pub asked: usize,
}

impl Probe {
    /// `Up` when every client answered on every node, `Down` when nothing answered, else
    /// `Degraded` (some clients, or some primaries of a cluster, silent).
    pub fn state(&self) -> HealthState {
        if self.healthy == self.total && self.total > 0 {
            HealthState::Up
        } else if self.answered == 0 {
            HealthState::Down
        } else {
            HealthState::Degraded
        }
    }
}

/// A health report: state, since when, and connection counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Health {
    /// The state.
    pub state: HealthState,
    /// When the state last changed.
    pub since: SystemTime,
    /// Connected clients.
    pub connected: usize,
    /// Clients in the pool.
    pub total: usize,
}

impl Health {
    /// Publish the state for `connected` of `total` clients on `health`; whether the state
    /// changed (counts alone changing wakes watchers too, but is no transition).
    #[doc(hidden)]
    pub fn publish(
        health: &tokio::sync::watch::Sender<Health>,
        new: HealthState,
        connected: usize,
        total: usize,
    ) -> bool {
        let mut transition = false;
        health.send_if_modified(|h| {
            transition = h.state != new;
            if transition {
                tracing::info!(from = ?h.state, to = ?new, connected, total, "redis health changed");
                h.since = SystemTime::now();
                h.state = new;
            }
            let counts_changed = h.connected != connected || h.total != total;
            h.connected = connected;
            h.total = total;
            transition || counts_changed
        });
        transition
    }

    /// The health of embedded local mode.
    #[doc(hidden)]
    pub fn embedded() -> Self {
        Health {
            state: HealthState::Embedded,
            since: SystemTime::now(),
            connected: 0,
            total: 0,
        }
    }
}

/// The slot a custom command with these keys is sent to. fred routes a custom command on a
/// cluster by an explicit slot only (any other `ClusterHash` falls back to hashing the first
/// argument, a script's sha). Every key of one call shares a hash tag, so the first key's
/// slot is the call's; a keyless call goes to a random slot, as fred's own `EVALSHA` does.
/// Off a cluster the slot routes nothing, so it is not computed (a CRC over the key on every
/// call).
fn script_slot(client: &impl ClientLike, keys: &[&str]) -> ClusterHash {
    if !client.is_clustered() {
        return ClusterHash::Random;
    }
    ClusterHash::Custom(match keys.first() {
        Some(k) => redis_protocol::redis_keyslot(k.as_bytes()),
        None => rand::random::<u16>() % 16_384,
    })
}

#[cfg(all(test, feature = "tls"))]
mod tests {
    use super::*;
    use fred::interfaces::ClientLike;
    use fred::types::config::ServerConfig;

    /// An IPv6 address in a TLS URL is verified as that address: fred keeps the URL's
    /// brackets, which no server name parses as.
    #[test]
    fn an_ipv6_tls_server_is_verified_by_its_address() {
        let cfg = crate::Config::from_toml_str("[redis]\nurl = \"rediss://[fd00::5]:6380\"")
            .unwrap()
            .redis
            .unwrap();
        let conn = RedisConnection::build(&cfg).unwrap();
        let fred_cfg = conn.pool().next().client_config();
        let ServerConfig::Centralized { server } = &fred_cfg.server else {
            panic!("{:?}", fred_cfg.server)
        };
        assert_eq!(server.tls_server_name.as_deref(), Some("fd00::5"));
    }
}

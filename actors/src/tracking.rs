//! The tracking subscriber (`<prefix>.tracking`): keeps every cache L1 of this supervisor
//! coherent with Redis through client-side caching.
//!
//! It owns one task per incarnation, on a thread of its own ([`DedicatedThread`]), that holds
//! a dedicated RESP3 connection with
//! `CLIENT TRACKING ON BCAST PREFIX <one prefix per L1 namespace>` and:
//! - applies each invalidation push to the L1 that owns the key's prefix, directly (no
//!   mailbox between the push and the eviction);
//! - flushes every L1 on a server flush (the null push fred would drop);
//! - sends `PING` every `health_interval` and treats a `PONG` later than `command_timeout`
//!   as a lost connection (black hole);
//! - on any loss (closed, killed, restarted, timed out, refused) flushes every L1 and marks it
//!   untrusted, so no fill happens and no hit is served from before, then reconnects with the
//!   jittered exponential backoff of `[redis.reconnect]` and confirms tracking again before
//!   the L1s accept fills.
//!
//! What it keeps coherent, and the trust that lets the L1s serve, are the core's
//! [`Tracked`] and [`Trust`]: trust exists only while a confirmed session runs, and dropping
//! it flushes. When the actor stops or fails, its task is aborted and a guard flushes every L1
//! untrusted at once: a dead subscriber can never leave an L1 serving entries nobody
//! invalidates.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use forze_redis::cache::l1::FlushReason;
use forze_redis::task::{AbortOnDrop, DedicatedThread};
use forze_redis::tracking::connection::{TrackingConnection, TrackingEvent};
use forze_redis::tracking::topology::{Topology, TopologyWatch, TrackingSource};
use forze_redis::tracking::{Tracked, Trust};
use forze_redis::Error;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::shared::Shared;

/// Messages of the tracking subscriber.
#[derive(Debug)]
#[non_exhaustive]
pub enum TrackingMsg {
    /// Report statistics.
    Stats(RpcReplyPort<TrackingStats>),
    /// Make this actor panic, to drill supervision.
    #[cfg(feature = "fault-injection")]
    Panic,
}

/// A copy of the tracking subscriber's statistics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct TrackingStats {
    /// Whether tracking is confirmed on a live connection now.
    pub confirmed: bool,
    /// Times tracking was confirmed (first connect and every reconnect).
    pub confirmations: u64,
    /// Tracking connections lost after confirmation.
    pub losses: u64,
    /// Connection attempts that failed before confirmation.
    pub connect_failures: u64,
    /// Keys invalidated by pushes.
    pub invalidated_keys: u64,
    /// Server flushes seen (`FLUSHALL`/`FLUSHDB`).
    pub server_flushes: u64,
    /// Topology changes (a slot moved, a failover) that flushed the L1s and re-tracked.
    pub topology_changes: u64,
    /// Primaries tracked by the last confirmed set of connections.
    pub primaries: u64,
    /// The tracked prefixes, de-overlapped.
    pub prefixes: Vec<String>,
}

impl TrackingStats {
    /// The statistics from the counters the subscriber keeps in the shared state (they
    /// survive its restarts), with the tracked `prefixes`.
    pub(crate) fn read(shared: &Shared, prefixes: Vec<String>) -> Self {
        let c = &shared.tracking_stats;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        TrackingStats {
            confirmed: c.confirmed.load(Ordering::Acquire),
            confirmations: l(&c.confirmations),
            losses: l(&c.losses),
            connect_failures: l(&c.connect_failures),
            invalidated_keys: l(&c.invalidated_keys),
            server_flushes: l(&c.server_flushes),
            topology_changes: l(&c.topology_changes),
            primaries: l(&c.primaries),
            prefixes,
        }
    }
}

/// The tracking subscriber actor.
#[derive(Debug)]
pub struct TrackingSubscriber;

/// Flushes every L1 untrusted when dropped: the incarnation that kept them coherent is gone.
/// (Its task's [`Trust`] would flush too, but only once the aborted task is next polled; this
/// guard does it at once, in the actor's own stop.)
#[derive(Debug)]
struct FlushOnDrop {
    shared: Arc<Shared>,
    tracked: Tracked,
    stopped: Arc<AtomicBool>,
}

impl Drop for FlushOnDrop {
    fn drop(&mut self) {
        // Set before flushing: an aborted task still mid-poll sees it and never re-confirms.
        self.stopped.store(true, Ordering::Release);
        self.shared
            .tracking_stats
            .confirmed
            .store(false, Ordering::Release);
        self.tracked.lose(FlushReason::SubscriberRestart);
    }
}

/// State of one incarnation. Field order matters: the task is aborted before the flush, and
/// the thread it ran on stops last.
#[derive(Debug)]
pub struct TrackingState {
    _task: AbortOnDrop,
    _flush: FlushOnDrop,
    _thread: DedicatedThread,
    prefixes: Vec<String>,
    shared: Arc<Shared>,
}

impl Actor for TrackingSubscriber {
    type Msg = TrackingMsg;
    type State = TrackingState;
    type Arguments = Arc<Shared>;

    async fn pre_start(
        &self,
        _myself: ActorRef<TrackingMsg>,
        shared: Arc<Shared>,
    ) -> Result<TrackingState, ActorProcessingErr> {
        let tracked = shared.tracked();
        // A new incarnation knows nothing of what happened before it: start from empty. The
        // first one starts with empty, untrusted L1s; a later one flushes again (the dying one
        // already did, through its guard) in case anything slipped in between. Either way,
        // nothing is trusted until this one confirms.
        if shared.tracking_stats.started.swap(true, Ordering::AcqRel) {
            tracked.lose(FlushReason::SubscriberRestart);
        } else {
            tracked.start_untrusted();
        }
        let stopped = Arc::new(AtomicBool::new(false));
        let flush = FlushOnDrop {
            shared: shared.clone(),
            tracked: tracked.clone(),
            stopped: stopped.clone(),
        };
        let prefixes = tracked.prefixes();
        // The connections are opened and read on a thread of their own, so an invalidation
        // is applied as soon as it arrives however busy the application's runtime is.
        let thread = DedicatedThread::start("forze-tracking").await?;
        let task = thread.spawn(run(shared.clone(), tracked, prefixes.clone(), stopped));
        Ok(TrackingState {
            _task: task,
            _flush: flush,
            _thread: thread,
            prefixes,
            shared,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<TrackingMsg>,
        msg: TrackingMsg,
        state: &mut TrackingState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            TrackingMsg::Stats(reply) => {
                let _ = reply.send(TrackingStats::read(&state.shared, state.prefixes.clone()));
            }
            #[cfg(feature = "fault-injection")]
            TrackingMsg::Panic => panic!("fault injection: tracking subscriber panic"),
        }
        Ok(())
    }
}

/// Resolve the primaries, track every one, confirm, serve, and on every loss or topology
/// change flush and start again. Runs until aborted.
async fn run(
    shared: Arc<Shared>,
    tracked: Tracked,
    prefixes: Vec<String>,
    stopped: Arc<AtomicBool>,
) {
    let (Some(redis), Some(source)) = (&shared.config.redis, &shared.tracking) else {
        return;
    };
    let name = format!("{}-tracking", redis.client_name);
    let stats = &shared.tracking_stats;
    let mut delay = redis.reconnect.min_delay;
    loop {
        match track_all(source, &name, &prefixes, redis.connect_timeout).await {
            Ok((conns, watch, topology)) => {
                delay = redis.reconnect.min_delay;
                if stopped.load(Ordering::Acquire) {
                    return;
                }
                let trust: Trust = tracked.confirm();
                if stopped.load(Ordering::Acquire) {
                    // The incarnation stopped while we confirmed: dropping the trust undoes it.
                    return;
                }
                stats.primaries.store(conns.len() as u64, Ordering::Relaxed);
                stats.confirmed.store(true, Ordering::Release);
                stats.confirmations.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    prefixes = prefixes.len(),
                    primaries = conns.len(),
                    "cache tracking confirmed"
                );
                let why = serve(
                    conns,
                    watch.map(|w| (source, w, topology)),
                    &tracked,
                    &shared,
                    redis,
                )
                .await;
                stats.confirmed.store(false, Ordering::Release);
                match why {
                    Lost::TopologyChanged => {
                        trust.end(FlushReason::TopologyChanged);
                        stats.topology_changes.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!("topology changed; every L1 flushed, re-tracking");
                        // The new primaries are known: re-track at once.
                        continue;
                    }
                    Lost::Connection(e) => {
                        trust.end(FlushReason::TrackingLost);
                        stats.losses.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(error = %e, "cache tracking lost; every L1 flushed");
                    }
                }
            }
            Err(e) => {
                stats.connect_failures.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(error = %e, "cache tracking connect failed");
            }
        }
        let jitter = redis.reconnect.jitter.mul_f64(rand::random::<f64>());
        tokio::time::sleep(delay + jitter).await;
        delay = (delay * 2).min(redis.reconnect.max_delay);
    }
}

/// Resolve the topology and open a tracking connection to every primary. All or nothing: an
/// L1 is trusted only while every primary that may hold its keys is tracked.
async fn track_all(
    source: &TrackingSource,
    name: &str,
    prefixes: &[String],
    timeout: Duration,
) -> Result<(Vec<TrackingConnection>, Option<TopologyWatch>, Topology), Error> {
    let (topology, watch) = source.resolve(name, timeout).await?;
    let mut conns = Vec::with_capacity(topology.primaries.len());
    for target in &topology.primaries {
        conns.push(TrackingConnection::open(target, name, prefixes, timeout).await?);
    }
    Ok((conns, watch, topology))
}

/// Why serving ended.
enum Lost {
    /// A tracking or topology connection failed (closed, refused, timed out).
    Connection(Error),
    /// The primaries or the slot map changed.
    TopologyChanged,
}

/// Read one tracking connection until it fails: pings it every `ping_every`, treats a pong
/// later than `pong_within` as lost, applies invalidations and server flushes where they are
/// read (a hop to another task would put a wake-up between the push and the eviction), and
/// forwards the loss.
async fn read_connection(
    mut conn: TrackingConnection,
    tracked: Tracked,
    shared: Arc<Shared>,
    tx: mpsc::UnboundedSender<Error>,
    ping_every: Duration,
    pong_within: Duration,
) {
    // Whatever ends this reader, its end is a loss: also a panic, which would otherwise drop
    // its sender unheard while the other primaries' readers keep the session serving.
    let report = ReportLoss(Some(tx));
    let mut ticker = tokio::time::interval(ping_every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ping_sent: Option<Instant> = None;
    let lost = loop {
        tokio::select! {
            event = conn.next_event() => match event {
                Ok(TrackingEvent::Invalidate(keys)) => {
                    shared
                        .tracking_stats
                        .invalidated_keys
                        .fetch_add(keys.len() as u64, Ordering::Relaxed);
                    for key in &keys {
                        tracked.invalidate(key);
                    }
                }
                Ok(TrackingEvent::Flush) => {
                    shared.tracking_stats.server_flushes.fetch_add(1, Ordering::Relaxed);
                    tracked.server_flushed();
                    tracing::info!("server flush seen; every L1 flushed");
                }
                Ok(TrackingEvent::Pong) => ping_sent = None,
                Err(e) => break e,
            },
            _ = ticker.tick() => {
                #[cfg(feature = "fault-injection")]
                if shared.tracking_stats.panic_a_reader.swap(false, Ordering::AcqRel) {
                    panic!("fault injection: tracking reader panic");
                }
                match ping_sent {
                    Some(at) if at.elapsed() > pong_within => {
                        break Error::Timeout { op: "cache.tracking.ping".into(), after: pong_within };
                    }
                    Some(_) => {}
                    None => {
                        if let Err(e) = conn.ping().await {
                            break e;
                        }
                        ping_sent = Some(Instant::now());
                    }
                }
            }
        }
    };
    report.send(lost);
}

/// The loss of one tracking connection, sent once when its reader ends: with the error it
/// ended on, or, if it ended any other way (a panic), as the reader's own end.
struct ReportLoss(Option<mpsc::UnboundedSender<Error>>);

impl ReportLoss {
    fn send(mut self, lost: Error) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(lost);
        }
    }
}

impl Drop for ReportLoss {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(Error::internal(
                "cache.tracking",
                "a tracking reader ended without a reason",
            ));
        }
    }
}

/// What a reader reported (`None`: every reader is gone).
fn heard_loss(heard: Option<Error>) -> Lost {
    Lost::Connection(heard.unwrap_or_else(|| Error::unavailable("cache.tracking")))
}

/// Serve confirmed connections until one is lost or the topology changes; returns why.
async fn serve(
    conns: Vec<TrackingConnection>,
    mut watch: Option<(&TrackingSource, TopologyWatch, Topology)>,
    tracked: &Tracked,
    shared: &Arc<Shared>,
    redis: &forze_redis::config::RedisConfig,
) -> Lost {
    let (tx, mut rx) = mpsc::unbounded_channel();
    // Aborted when serving ends, whichever way.
    let _readers: Vec<AbortOnDrop> = conns
        .into_iter()
        .map(|c| {
            AbortOnDrop(tokio::spawn(read_connection(
                c,
                tracked.clone(),
                shared.clone(),
                tx.clone(),
                redis.health_interval,
                redis.command_timeout,
            )))
        })
        .collect();
    drop(tx);
    let mut poll = tokio::time::interval(redis.health_interval);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    poll.tick().await;
    loop {
        tokio::select! {
            heard = rx.recv() => return heard_loss(heard),
            _ = poll.tick(), if watch.is_some() => {
                let Some((source, w, topology)) = watch.as_mut() else { continue };
                // A loss heard while the poll waits on its node ends serving at once, as it
                // would between polls: the L1 must not stay trusted for a poll's timeout.
                let polled = tokio::select! {
                    heard = rx.recv() => return heard_loss(heard),
                    polled = source.poll(w, redis.command_timeout) => polled,
                };
                match polled {
                    Ok(now) if now.fingerprint != topology.fingerprint => {
                        return Lost::TopologyChanged;
                    }
                    Ok(_) => {}
                    Err(e) => return Lost::Connection(e),
                }
            }
        }
    }
}

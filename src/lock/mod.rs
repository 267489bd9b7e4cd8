//! Distributed locks with fencing tokens: the contract, the Redis store (three scripts) and the
//! process-local store of embedded mode.
//!
//! A [`Lease`] is one acquisition: a unique owner, a fencing token, and the local deadline
//! before which the holder may act (acquire start + lease − drift margin, moved forward by
//! every confirmed extend). Tokens rise strictly across every generation of a lock (release,
//! expiry, steal) and stay rising across a server that lost its data, because each token is
//! `max(last token + 1, server TIME in µs)`: see `docs/locks.md` for the exact guarantee.
//!
//! | module | what lives there |
//! |---|---|
//! | [`lease`] | [`LockGuard`], its lost signal, and the registry of held leases |
//! | [`renewal`] | batched renewal of every held lease (what the heartbeater runs) |
//! | [`redis`] | the Redis side: acquire, release, batched extend, queries |
//! | [`local`] | embedded mode's in-process locks (same contract, process-wide only) |

pub mod lease;
pub mod local;
pub mod redis;
pub mod renewal;

use dashmap::DashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use crate::config::LockConfig;
use crate::error::{Error, Result};
use crate::gate::Gate;
use crate::keys::{key_tenant, KeySpace, TenantId};
use crate::pooled::pooled_with;
use crate::time::after;
pub use lease::{LeaseRegistry, LockGuard, LostReason, LostSignal};
use local::LocalLockStore;
use redis::RedisLockStore;

/// A lock name and, for tenant-aware resources, its tenant.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LockId {
    tenant: Option<TenantId>,
    name: String,
}

impl LockId {
    /// A lock without tenant.
    pub fn new(name: impl Into<String>) -> Self {
        LockId {
            tenant: None,
            name: name.into(),
        }
    }

    /// The same lock for `tenant`.
    pub fn for_tenant(mut self, tenant: TenantId) -> Self {
        self.tenant = Some(tenant);
        self
    }

    /// The lock name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl From<&str> for LockId {
    fn from(name: &str) -> Self {
        LockId::new(name)
    }
}

/// One acquisition of a lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The lock's Redis key (or local key).
    pub key: String,
    /// The owner: unique per acquisition.
    pub owner: String,
    /// The fencing token: present it to every resource the lock protects.
    pub token: u64,
    /// When the acquire was sent: the lease counts from here, not from the reply.
    pub started: Instant,
    /// The lease duration.
    pub lease: Duration,
}

/// A unique owner string: a random per-process prefix and a counter.
pub fn new_owner() -> String {
    // The process part is formatted once; each owner appends its number (without the
    // formatting machinery: this runs on every acquire, begin and snapshot write).
    static PROCESS: LazyLock<String> = LazyLock::new(|| format!("{:016x}-", rand::random::<u64>()));
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let mut digits = itoa::Buffer::new();
    let number = digits.format(NEXT.fetch_add(1, Ordering::Relaxed));
    let mut owner = String::with_capacity(PROCESS.len() + number.len());
    owner.push_str(&PROCESS);
    owner.push_str(number);
    owner
}

#[derive(Debug)]
enum Store {
    Redis(RedisLockStore),
    Local(LocalLockStore),
}

/// What acquiring returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// Taken, with this token.
    Taken(u64),
    /// Held by another owner; its remaining lease if known.
    Held(Option<Duration>),
}

/// One configured lock resource: the handle users call from any task. Cheap to clone.
///
/// [`acquire`](Self::acquire) returns a [`LockGuard`] whose lease is renewed in the
/// background until it is released or dropped. After shutdown has begun every operation
/// returns `Unavailable`.
#[derive(Debug, Clone)]
pub struct Lock(Arc<LockState>);

#[doc(hidden)]
impl std::ops::Deref for Lock {
    type Target = LockState;
    fn deref(&self) -> &LockState {
        &self.0
    }
}

/// What every clone of one [`Lock`] shares.
#[doc(hidden)]
#[derive(Debug)]
pub struct LockState {
    /// Spans and metrics of every operation.
    pub(crate) telemetry: crate::telemetry::Telemetry,
    gate: Gate,
    name: String,
    space: KeySpace,
    tenant_aware: bool,
    config: LockConfig,
    store: Store,
    /// Every lease held through the runtime's locks (renewed together).
    leases: Arc<LeaseRegistry>,
    /// Waiters of `acquire` in this process, by lock key (with `wake_waiters`).
    waiters: DashMap<String, Arc<tokio::sync::Notify>>,
}

impl Lock {
    /// A lock resource on Redis (`redis` is `Some`) or on local state (embedded mode).
    // Called from one place, the runtime's table, with every part of the resource.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        name: impl Into<String>,
        space: KeySpace,
        config: &LockConfig,
        redis: Option<RedisLockStore>,
        local: LocalLockStore,
        leases: Arc<LeaseRegistry>,
        gate: Gate,
        telemetry: crate::telemetry::Telemetry,
    ) -> Self {
        Lock(Arc::new(LockState {
            telemetry,
            gate,
            leases,
            waiters: DashMap::new(),
            name: name.into(),
            space,
            tenant_aware: config.tenant_aware,
            config: config.clone(),
            store: match redis {
                Some(r) => Store::Redis(r),
                None => Store::Local(local),
            },
        }))
    }

    /// The resource name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The configuration.
    pub(crate) fn config(&self) -> &LockConfig {
        &self.config
    }

    /// The lock's key for `id` (validated: tenant rules, non-empty name).
    pub(crate) fn key(&self, id: &LockId) -> Result<String> {
        if id.name.is_empty() {
            return Err(Error::validation("lock", "the name must not be empty"));
        }
        let tenant = key_tenant(&self.name, self.tenant_aware, id.tenant.as_ref())?;
        Ok(self.space.key(tenant, &[&id.name])?.into_string())
    }

    /// The local deadline of a lease confirmed at `from`: `from + lease − drift margin`.
    pub(crate) fn deadline_from(&self, from: Instant) -> Instant {
        after(from, self.config.lease.saturating_sub(self.config.drift()))
    }

    /// Try once. `Ok(None)` when another owner holds it.
    pub async fn try_acquire(&self, id: &LockId) -> Result<Option<LockGuard>> {
        self.gate.check("lock.acquire")?;
        let lease = self
            .telemetry
            .observe("lock.try_acquire", self.try_lease(id), |l| match l {
                Some(_) => "acquired",
                None => "busy",
            })
            .await?;
        Ok(lease.map(|lease| LockGuard::new(self.clone(), lease)))
    }

    async fn try_lease(&self, id: &LockId) -> Result<Option<Lease>> {
        let key = self.key(id)?;
        let owner = new_owner();
        let started = Instant::now();
        let attempt = self.attempt(&key, &owner).await?;
        Ok(match attempt {
            Attempt::Taken(token) => Some(Lease {
                key,
                owner,
                token,
                started,
                lease: self.config.lease,
            }),
            Attempt::Held(_) => None,
        })
    }

    async fn attempt(&self, key: &str, owner: &str) -> Result<Attempt> {
        match &self.store {
            Store::Redis(r) => {
                pooled_with(|| r.acquire(key, owner, self.config.lease, self.config.fence_ttl()))
                    .await
            }
            Store::Local(l) => Ok(l.acquire(key, owner, self.config.lease)),
        }
    }

    /// Acquire, waiting up to `wait` with jittered exponential retries (`retry_min` doubling
    /// to `retry_max`, never past the wait deadline). `Timeout` when still held after `wait`;
    /// `Unavailable` at once when Redis cannot be reached (never a local lock instead).
    ///
    /// The guard's lease is renewed in the background while it lives; its
    /// [`lost`](LockGuard::lost) signal fires if a renewal finds another owner or the local
    /// deadline passes unrenewed.
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// use forze_redis_actors::{Config, ErrorKind, Forze, LockId};
    ///
    /// let config = Config::from_toml_str(r#"mode = "embedded"
    ///     [locks.jobs]
    ///     lease = "10s"
    /// "#)?;
    /// let (forze, _join) = Forze::spawn(config).await?;
    /// let jobs = forze.lock("jobs")?;
    /// let id = LockId::new("nightly-report");
    ///
    /// let guard = jobs.acquire(&id, Duration::from_secs(1)).await?;
    /// let token = guard.token(); // send it with every write the lock protects
    /// // Held: another acquire gives up after its wait.
    /// let err = jobs.acquire(&id, Duration::from_millis(50)).await.unwrap_err();
    /// assert_eq!(err.kind(), ErrorKind::Timeout);
    ///
    /// assert!(guard.release().await?); // still ours when released
    /// let next = jobs.acquire(&id, Duration::from_secs(1)).await?;
    /// assert!(next.token() > token); // fencing tokens only go up
    /// next.release().await?;
    ///
    /// forze.shutdown().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn acquire(&self, id: &LockId, wait: Duration) -> Result<LockGuard> {
        self.gate.check("lock.acquire")?;
        let lease = self
            .telemetry
            .observe("lock.acquire", self.lease(id, wait), |_| "acquired")
            .await?;
        Ok(LockGuard::new(self.clone(), lease))
    }

    async fn lease(&self, id: &LockId, wait: Duration) -> Result<Lease> {
        let key = self.key(id)?;
        let owner = new_owner();
        // A wait too long for the clock (`Duration::MAX` as "for ever") has no deadline.
        let deadline = Instant::now().checked_add(wait);
        let mut pause = self.config.retry_min;
        let waiter = self
            .config
            .wake_waiters
            .then(|| Waiter::new(&self.waiters, &key));
        loop {
            // Registered before the attempt: a release pushed between the attempt and the
            // sleep still wakes this waiter.
            let mut woken = waiter.as_ref().map(|w| Box::pin(w.notify.notified()));
            if let Some(n) = woken.as_mut() {
                n.as_mut().enable();
            }
            let started = Instant::now();
            if let Attempt::Taken(token) = self.attempt(&key, &owner).await? {
                return Ok(Lease {
                    key,
                    owner,
                    token,
                    started,
                    lease: self.config.lease,
                });
            }
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                return Err(Error::Timeout {
                    op: "lock.acquire".into(),
                    after: wait,
                });
            }
            // Jitter (50–100 % of the pause): contenders that lost together do not retry together.
            let jittered = pause.mul_f64(rand::random_range(0.5..=1.0));
            let sleep = tokio::time::sleep(match deadline {
                Some(d) => jittered.min(d - now),
                None => jittered,
            });
            let pushed = match woken {
                Some(n) => tokio::select! {
                    _ = n => true,
                    _ = sleep => false,
                },
                None => {
                    sleep.await;
                    false
                }
            };
            // Woken by a change of the lock key: try at once, and from the shortest pause on
            // if it was taken again; otherwise back off.
            pause = if pushed {
                self.config.retry_min
            } else {
                (pause * 2).min(self.config.retry_max)
            };
        }
    }

    /// Whether the tracking session wakes this lock's waiters (`wake_waiters`).
    pub(crate) fn wakes_waiters(&self) -> bool {
        self.config.wake_waiters
    }

    /// The prefix of this lock's keys, for the tracking session.
    pub(crate) fn tracking_prefix(&self) -> String {
        self.space.namespace_prefix()
    }

    /// The key `redis_key` changed (a push): wake the waiters of it in this process.
    pub(crate) fn wake_waiters(&self, redis_key: &str) {
        if let Some(n) = self.waiters.get(redis_key) {
            n.notify_waiters();
        }
    }

    /// Pushes may have been missed (tracking lost, server flushed): wake every waiter.
    pub(crate) fn wake_all_waiters(&self) {
        for n in self.waiters.iter() {
            n.notify_waiters();
        }
    }

    /// Release `lease` if it is still the owner's; whether it was.
    pub(crate) async fn release(&self, lease: &Lease) -> Result<bool> {
        let release = async {
            match &self.store {
                // Token 0: `release_as`, which knows the owner only.
                Store::Redis(r) => {
                    let token = Some(lease.token).filter(|&t| t > 0);
                    pooled_with(|| r.release(&lease.key, &lease.owner, token)).await
                }
                Store::Local(l) => Ok(l.release(&lease.key, &lease.owner)),
            }
        };
        self.telemetry
            .observe("lock.release", release, |&ours| {
                if ours {
                    "released"
                } else {
                    "not_owner"
                }
            })
            .await
    }

    /// Renew `leases` for a full lease each; one flag per lease, `false` when it is lost
    /// (another owner, or expired). On Redis: one pipeline or script call per group, sent
    /// together ([`RedisLockStore::extend_many`]).
    pub(crate) async fn extend_many(&self, leases: &[&Lease]) -> Result<Vec<bool>> {
        let extend = async {
            match &self.store {
                Store::Redis(r) => pooled_with(|| r.extend_many(leases, self.config.lease)).await,
                Store::Local(l) => Ok(leases
                    .iter()
                    .map(|held| l.extend(&held.key, &held.owner, self.config.lease))
                    .collect()),
            }
        };
        // One count per batch: its outcome says whether every lease in it was still held.
        self.telemetry
            .observe("lock.extend", extend, |flags: &Vec<bool>| {
                if flags.iter().all(|&f| f) {
                    "extended"
                } else {
                    "lost"
                }
            })
            .await
    }

    /// How many round-trip calls [`Lock::extend_many`] makes for `leases` (0 locally).
    pub(crate) fn redis_groups(&self, leases: &[&Lease]) -> usize {
        match &self.store {
            Store::Redis(r) => r.extend_calls(leases),
            Store::Local(_) => 0,
        }
    }

    /// Whether `id` is held by anyone.
    pub async fn is_locked(&self, id: &LockId) -> Result<bool> {
        Ok(self.owner(id).await?.is_some())
    }

    /// The current owner of `id` and its token, if held.
    pub async fn owner(&self, id: &LockId) -> Result<Option<(String, u64)>> {
        self.gate.check("lock.owner")?;
        let key = self.key(id)?;
        let holder = async {
            match &self.store {
                Store::Redis(r) => pooled_with(|| r.holder(&key)).await,
                Store::Local(l) => Ok(l.holder(&key)),
            }
        };
        self.telemetry
            .observe("lock.owner", holder, |h| {
                if h.is_some() {
                    "held"
                } else {
                    "free"
                }
            })
            .await
    }

    /// The remaining lease of `id`, if held.
    pub async fn ttl(&self, id: &LockId) -> Result<Option<Duration>> {
        self.gate.check("lock.ttl")?;
        let key = self.key(id)?;
        let ttl = async {
            match &self.store {
                Store::Redis(r) => pooled_with(|| r.ttl(&key)).await,
                Store::Local(l) => Ok(l.ttl(&key)),
            }
        };
        self.telemetry
            .observe(
                "lock.ttl",
                ttl,
                |t| if t.is_some() { "held" } else { "free" },
            )
            .await
    }
}

impl Lock {
    /// Release a lease by key and owner, as a holder that lost its guard would (owner-checked:
    /// `Ok(false)` unless `owner` holds it).
    pub async fn release_as(&self, id: &LockId, owner: &str) -> Result<bool> {
        self.gate.check("lock.release")?;
        self.release(&self.lease_of(id, owner)?).await
    }

    /// Renew a lease by key and owner (owner-checked).
    pub async fn extend_as(&self, id: &LockId, owner: &str) -> Result<bool> {
        self.gate.check("lock.extend")?;
        self.extend_one(&self.lease_of(id, owner)?).await
    }

    /// The lease of `owner` on `id` as a caller without its guard knows it: token 0
    /// (unknown), so it is checked by owner alone.
    fn lease_of(&self, id: &LockId, owner: &str) -> Result<Lease> {
        Ok(Lease {
            key: self.key(id)?,
            owner: owner.to_string(),
            token: 0,
            started: Instant::now(),
            lease: self.config.lease,
        })
    }

    /// Renew one lease for a full lease; whether its owner still held it.
    pub(crate) async fn extend_one(&self, lease: &Lease) -> Result<bool> {
        let flags = self.extend_many(&[lease]).await?;
        Ok(flags.first().copied().unwrap_or(false))
    }

    /// Leases held now through the runtime's locks (every lock resource).
    pub fn held_leases(&self) -> usize {
        self.leases.held()
    }
}

/// One waiter's registration for its lock key; the entry goes with the last waiter.
struct Waiter<'a> {
    map: &'a DashMap<String, Arc<tokio::sync::Notify>>,
    key: String,
    notify: Arc<tokio::sync::Notify>,
}

impl<'a> Waiter<'a> {
    fn new(map: &'a DashMap<String, Arc<tokio::sync::Notify>>, key: &str) -> Self {
        let notify = map.entry(key.to_string()).or_default().clone();
        Waiter {
            map,
            key: key.to_string(),
            notify,
        }
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        // The map's reference and ours: nobody else waits on this key.
        self.map
            .remove_if(&self.key, |_, n| Arc::strong_count(n) <= 2);
    }
}

/// Split a stored lock value `"<token>:<owner>"`.
pub(crate) fn parse_holder(value: &str) -> Option<(String, u64)> {
    let (token, owner) = value.split_once(':')?;
    Some((owner.to_string(), token.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_are_unique_and_colon_free() {
        let a = new_owner();
        let b = new_owner();
        assert_ne!(a, b);
        assert!(!a.contains(':'));
        // `<16 hex digits of the process>-<number>`, numbered in order.
        let (pa, na) = a.split_once('-').expect("dash");
        let (pb, nb) = b.split_once('-').expect("dash");
        assert_eq!(pa, pb);
        assert_eq!(pa.len(), 16);
        assert!(pa.bytes().all(|c| c.is_ascii_hexdigit()));
        assert!(nb.parse::<u64>().unwrap() > na.parse::<u64>().unwrap());
    }

    #[test]
    fn holder_values_parse() {
        assert_eq!(parse_holder("42:abc-1"), Some(("abc-1".into(), 42)));
        assert_eq!(parse_holder("x:abc"), None);
    }
}

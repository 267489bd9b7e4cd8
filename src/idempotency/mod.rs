//! Idempotency records: run an operation at most once per (op, key) within the retention,
//! replaying its stored result to duplicates.
//!
//! One Redis hash per record (`<prefix>:idem:{<ns>:<tenant>:<op>:<sha256(key)>}`): state,
//! payload hash, the owner of the current claim, the claim's lease end on the server clock,
//! and the result. Three scripts (`idem_begin`, `idem_commit`, `idem_fail`) move it:
//!
//! ```text
//!   (none) ──begin──► Pending(owner, lease) ──commit(owner)──► Done(result) ──begin──► replay
//!                        │  ▲                         
//!              fail(owner)  └─ begin after the lease: taken over by a new owner
//! ```
//!
//! Where this improves on forze: a claim carries a unique owner, so a worker whose claim ran
//! out and was taken over cannot commit over the new owner (`Conflict(NotOwner)`); a pending
//! claim has its own lease (default 5 min), so a crashed worker blocks the key only that long;
//! the record is one key (atomic, cluster-safe). Payload mismatch is checked before the state.
//! While Redis is unreachable, `begin` returns `Unavailable`: never a second execution.

pub mod local;
pub mod redis;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::config::IdempotencyConfig;
use crate::error::{ConflictReason, Error, ErrorKind, Result};
use crate::gate::Gate;
use crate::keys::{key_tenant, KeySpace, TenantId};
use crate::lock::new_owner;
use crate::pooled::pooled_with;
use local::LocalIdempotencyStore;
use redis::RedisIdempotencyStore;

/// What the store answered to a begin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BeginReply {
    /// A new claim is the caller's.
    Proceed,
    /// The previous claim's lease ran out; the caller owns the claim now.
    TakeOver,
    /// Done before: here is the result.
    Replay(Bytes),
    /// Another payload used this key.
    Mismatch,
    /// Another owner's claim is live for this long.
    Busy(Duration),
}

/// A claim on an idempotency record: present it to [`Idempotency::commit`] or
/// [`Idempotency::fail`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    key: String,
    owner: String,
    /// Whether this claim took over an abandoned one.
    pub took_over: bool,
}

impl Claim {
    /// The unique owner of this claim.
    pub fn owner(&self) -> &str {
        &self.owner
    }
}

/// The outcome of [`Idempotency::begin`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Begin {
    /// Run the operation, then commit or fail the claim.
    Proceed(Claim),
    /// The operation ran before: its stored result.
    Replay(Bytes),
}

/// One idempotency request: which operation, the caller's key (hashed before it reaches
/// Redis), the payload's hash, and the tenant for tenant-aware resources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdemRequest {
    /// The operation name (for instance `"create_order"`); part of the record's key.
    pub op: String,
    /// The caller's idempotency key (for instance an `Idempotency-Key` header).
    pub key: String,
    /// A hash of the request's payload; a different payload under the same key is refused.
    pub payload_hash: String,
    /// The tenant.
    pub tenant: Option<TenantId>,
}

impl IdemRequest {
    /// A request without tenant.
    pub fn new(
        op: impl Into<String>,
        key: impl Into<String>,
        payload_hash: impl Into<String>,
    ) -> Self {
        IdemRequest {
            op: op.into(),
            key: key.into(),
            payload_hash: payload_hash.into(),
            tenant: None,
        }
    }

    /// The same request for `tenant`.
    pub fn for_tenant(mut self, tenant: TenantId) -> Self {
        self.tenant = Some(tenant);
        self
    }
}

/// `sha256:<hex>` of `bytes`: a payload hash for callers that have the payload's bytes.
pub fn payload_hash(bytes: &[u8]) -> String {
    format!("sha256:{}", HexDigest::of(bytes).as_str())
}

/// The SHA-256 of some bytes in lowercase hex, on the stack: a record key takes it as a key
/// part on every begin and commit, so it is neither formatted nor allocated.
struct HexDigest([u8; 64]);

impl HexDigest {
    fn of(bytes: &[u8]) -> Self {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 64];
        for (pair, b) in out.chunks_exact_mut(2).zip(Sha256::digest(bytes)) {
            pair[0] = DIGITS[usize::from(b >> 4)];
            pair[1] = DIGITS[usize::from(b & 0xf)];
        }
        HexDigest(out)
    }

    fn as_str(&self) -> &str {
        // Hex digits only: always valid UTF-8.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

#[derive(Debug)]
enum Store {
    Redis(RedisIdempotencyStore),
    Local(LocalIdempotencyStore),
}

/// One configured idempotency resource.
#[derive(Debug, Clone)]
pub struct Idempotency(Arc<IdempotencyState>);

#[doc(hidden)]
impl std::ops::Deref for Idempotency {
    type Target = IdempotencyState;
    fn deref(&self) -> &IdempotencyState {
        &self.0
    }
}

/// What every clone of one [`Idempotency`] shares.
#[doc(hidden)]
#[derive(Debug)]
pub struct IdempotencyState {
    /// Spans and metrics of every operation.
    pub(crate) telemetry: crate::telemetry::Telemetry,
    gate: Gate,
    name: String,
    space: KeySpace,
    tenant_aware: bool,
    config: IdempotencyConfig,
    store: Store,
}

fn conflict(op: &'static str, reason: ConflictReason) -> Error {
    Error::Conflict {
        op: op.into(),
        reason,
    }
}

impl Idempotency {
    /// A resource on Redis (`redis` is `Some`) or on local state (embedded mode).
    pub(crate) fn new(
        name: impl Into<String>,
        space: KeySpace,
        config: &IdempotencyConfig,
        redis: Option<RedisIdempotencyStore>,
        local: LocalIdempotencyStore,
        gate: Gate,
        telemetry: crate::telemetry::Telemetry,
    ) -> Self {
        Idempotency(Arc::new(IdempotencyState {
            telemetry,
            gate,
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

    /// The record key of `req`: op verbatim (escaped), the caller's key as its SHA-256.
    pub(crate) fn record_key(&self, req: &IdemRequest) -> Result<String> {
        if req.op.is_empty() {
            return Err(Error::validation("op", "must not be empty"));
        }
        if req.key.is_empty() {
            return Err(Error::validation("key", "must not be empty"));
        }
        if req.payload_hash.is_empty() {
            return Err(Error::validation("payload_hash", "must not be empty"));
        }
        let tenant = key_tenant(&self.name, self.tenant_aware, req.tenant.as_ref())?;
        let digest = HexDigest::of(req.key.as_bytes());
        Ok(self
            .space
            .key(tenant, &[&req.op, digest.as_str()])?
            .into_string())
    }

    async fn begin_once(&self, key: &str, req: &IdemRequest, owner: &str) -> Result<BeginReply> {
        let (lease, retention) = (self.config.pending_lease, self.config.retention);
        match &self.store {
            Store::Redis(r) => {
                pooled_with(|| r.begin(key, &req.payload_hash, owner, lease, retention)).await
            }
            Store::Local(l) => Ok(l.begin(key, &req.payload_hash, owner, lease, retention)),
        }
    }

    fn settle(
        reply: BeginReply,
        key: String,
        owner: String,
    ) -> Result<std::result::Result<Begin, Duration>> {
        const OP: &str = "idempotency.begin";
        Ok(match reply {
            BeginReply::Proceed | BeginReply::TakeOver => Ok(Begin::Proceed(Claim {
                key,
                owner,
                took_over: reply == BeginReply::TakeOver,
            })),
            BeginReply::Replay(result) => Ok(Begin::Replay(result)),
            BeginReply::Mismatch => return Err(conflict(OP, ConflictReason::PayloadMismatch)),
            BeginReply::Busy(left) => Err(left),
        })
    }

    /// Claim the record, or replay its result. `Conflict(PayloadMismatch)` when the key was
    /// used with another payload (checked first); `Conflict(InProgress)` at once when another
    /// attempt holds a live claim (never a silent wait: see [`Idempotency::begin_wait`]).
    pub async fn begin(&self, req: &IdemRequest) -> Result<Begin> {
        self.gate.check("idempotency.begin")?;
        self.claim_or_replay(req).await
    }

    /// [`Idempotency::begin`] past the gate (`run` checks it once for its whole sequence).
    async fn claim_or_replay(&self, req: &IdemRequest) -> Result<Begin> {
        let op = async {
            let key = self.record_key(req)?;
            let owner = new_owner();
            let reply = self.begin_once(&key, req, &owner).await?;
            Self::settle(reply, key, owner)?
                .map_err(|_| conflict("idempotency.begin", ConflictReason::InProgress))
        };
        self.telemetry
            .observe("idempotency.begin", op, |b| match b {
                Begin::Proceed(_) => "claimed",
                Begin::Replay(_) => "replayed",
            })
            .await
    }

    /// Like [`Idempotency::begin`], but wait up to `max_wait` for a live claim to finish
    /// (then replay its result) or to be released or abandoned (then claim). Still
    /// `Conflict(InProgress)` if neither happens in time.
    pub async fn begin_wait(&self, req: &IdemRequest, max_wait: Duration) -> Result<Begin> {
        self.gate.check("idempotency.begin")?;
        let op = async {
            let key = self.record_key(req)?;
            let owner = new_owner();
            let deadline = crate::time::after(Instant::now(), max_wait);
            loop {
                let reply = self.begin_once(&key, req, &owner).await?;
                match Self::settle(reply, key.clone(), owner.clone())? {
                    Ok(begin) => return Ok(begin),
                    Err(left) => {
                        let now = Instant::now();
                        if now >= deadline {
                            return Err(conflict("idempotency.begin", ConflictReason::InProgress));
                        }
                        let pause = self.config.poll_interval.min(left).min(deadline - now);
                        tokio::time::sleep(pause.max(Duration::from_millis(1))).await;
                    }
                }
            }
        };
        self.telemetry
            .observe("idempotency.begin_wait", op, |b| match b {
                Begin::Proceed(_) => "claimed",
                Begin::Replay(_) => "replayed",
            })
            .await
    }

    /// Store `result` for the claim. `Conflict(NotOwner)` when the claim is not the caller's
    /// any more (taken over after its lease, or expired): the result is not stored.
    pub async fn commit(&self, claim: &Claim, result: &[u8]) -> Result<()> {
        self.gate.check("idempotency.commit")?;
        self.store_result(claim, result).await
    }

    /// [`Idempotency::commit`] past the gate: a `run` that began before shutdown stores its
    /// result even if shutdown begins while the operation runs (else a retry would run it
    /// again once the claim's lease ends).
    async fn store_result(&self, claim: &Claim, result: &[u8]) -> Result<()> {
        let op = async {
            let ok = match &self.store {
                Store::Redis(r) => {
                    let retention = self.config.retention;
                    pooled_with(|| r.commit(&claim.key, &claim.owner, result, retention)).await?
                }
                Store::Local(l) => {
                    l.commit(&claim.key, &claim.owner, result, self.config.retention)
                }
            };
            if ok {
                Ok(())
            } else {
                Err(conflict("idempotency.commit", ConflictReason::NotOwner))
            }
        };
        self.telemetry
            .observe("idempotency.commit", op, |_| "committed")
            .await
    }

    /// [`Idempotency::store_result`] for `run`, whose operation already ran: a commit that
    /// may not have been applied (`OutcomeUnknown`, `Timeout`) or was not sent
    /// (`Unavailable`) is sent again, up to three times in all, since a commit by the same
    /// owner is safe to repeat; a claim left pending would block duplicates until its lease
    /// and then let one run the operation again.
    async fn store_result_retried(&self, claim: &Claim, result: &[u8]) -> Result<()> {
        let mut pause = Duration::from_millis(50);
        let mut attempt = 1;
        loop {
            match self.store_result(claim, result).await {
                Err(e)
                    if attempt < 3
                        && matches!(
                            e.kind(),
                            ErrorKind::OutcomeUnknown | ErrorKind::Timeout | ErrorKind::Unavailable
                        ) =>
                {
                    tracing::debug!(error = %e, attempt, "idempotency commit retried");
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                    attempt += 1;
                }
                done => return done,
            }
        }
    }

    /// Give the claim up so a retry can run; whether it was still the caller's (another
    /// owner's claim or a done record is never touched).
    pub async fn fail(&self, claim: &Claim) -> Result<bool> {
        self.gate.check("idempotency.fail")?;
        self.release_claim(claim).await
    }

    /// [`Idempotency::fail`] past the gate.
    async fn release_claim(&self, claim: &Claim) -> Result<bool> {
        let op = async {
            match &self.store {
                Store::Redis(r) => pooled_with(|| r.fail(&claim.key, &claim.owner)).await,
                Store::Local(l) => Ok(l.fail(&claim.key, &claim.owner)),
            }
        };
        self.telemetry
            .observe("idempotency.fail", op, |&ours| {
                if ours {
                    "released"
                } else {
                    "not_owner"
                }
            })
            .await
    }

    /// Run `operation` idempotently: replay a stored result (JSON), or claim, run, and commit
    /// its `Ok` value (or fail the claim on `Err`, so a retry can run). Conflicts and
    /// `Unavailable` come back as [`RunError::Idempotency`]; the operation's own error as
    /// [`RunError::Operation`]. A commit that fails after the operation succeeded is logged
    /// and the value returned: the claim then blocks duplicates until its lease ends.
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use forze_redis_actors::{payload_hash, Config, Forze, IdemRequest};
    ///
    /// let config = Config::from_toml_str(r#"mode = "embedded"
    ///     [idempotency.orders]
    /// "#)?;
    /// let (forze, _join) = Forze::spawn(config).await?;
    /// let orders = forze.idempotency("orders")?;
    /// let req = IdemRequest::new("create_order", "key-7f3a", payload_hash(b"sku=42&qty=1"));
    ///
    /// let first: String = orders
    ///     .run(&req, || async { Ok::<_, String>("order 1001 created".to_string()) })
    ///     .await?;
    /// // A retry of the same request replays the stored result; the operation does not run.
    /// let retry: String = orders
    ///     .run(&req, || async { Err::<String, _>("must not run twice") })
    ///     .await?;
    /// assert_eq!(retry, first);
    ///
    /// forze.shutdown().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn run<T, E, F, Fut>(
        &self,
        req: &IdemRequest,
        operation: F,
    ) -> std::result::Result<T, RunError<E>>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> Fut,
        Fut: Future<Output = std::result::Result<T, E>>,
    {
        self.gate
            .check("idempotency.run")
            .map_err(RunError::Idempotency)?;
        let claim = match self
            .claim_or_replay(req)
            .await
            .map_err(RunError::Idempotency)?
        {
            Begin::Replay(bytes) => {
                return serde_json::from_slice(&bytes).map_err(|e| {
                    RunError::Idempotency(Error::Codec {
                        message: format!("stored result does not decode: {e}"),
                    })
                })
            }
            Begin::Proceed(claim) => claim,
        };
        match operation().await {
            Ok(value) => {
                match serde_json::to_vec(&value) {
                    Ok(bytes) => {
                        if let Err(e) = self.store_result_retried(&claim, &bytes).await {
                            tracing::error!(resource = %self.name, error = %e, "idempotency commit failed after the operation succeeded");
                        }
                    }
                    Err(e) => {
                        tracing::error!(resource = %self.name, error = %e, "result not encodable; claim failed");
                        let _ = self.release_claim(&claim).await;
                    }
                }
                Ok(value)
            }
            Err(e) => {
                if let Err(fe) = self.release_claim(&claim).await {
                    tracing::warn!(resource = %self.name, error = %fe, "idempotency fail() failed; the claim ends with its lease");
                }
                Err(RunError::Operation(e))
            }
        }
    }
}

/// The error of [`Idempotency::run`].
#[derive(Debug, thiserror::Error)]
pub enum RunError<E> {
    /// The idempotency layer refused or could not decide (conflict, unavailable, codec).
    #[error(transparent)]
    Idempotency(Error),
    /// The operation ran and failed; its claim was released.
    #[error("the operation failed")]
    Operation(E),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shutdown beginning while `run`'s operation executes does not cut the sequence short:
    /// `run` passes the gate once, at its start, so the result is still committed and a retry
    /// replays it instead of running the operation again.
    #[tokio::test]
    async fn a_run_under_way_when_the_gate_closes_still_commits_its_result() {
        let config = crate::Config::from_toml_str("mode = \"embedded\"\n[idempotency.orders]")
            .expect("config");
        let rt = crate::runtime::Runtime::build(config).expect("runtime");
        let idem = rt.idempotency.get("orders").expect("orders");
        let req = IdemRequest::new("op", "k", payload_hash(b"p"));
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
        let running = tokio::spawn({
            let (idem, req) = (idem.clone(), req.clone());
            async move {
                idem.run(&req, || async move {
                    let _ = started_tx.send(());
                    let _ = go_rx.await;
                    Ok::<_, String>(42u64)
                })
                .await
            }
        });
        started_rx.await.expect("started");
        rt.gate.close();
        assert_eq!(
            idem.begin(&req).await.unwrap_err().kind(),
            crate::ErrorKind::Unavailable,
            "new calls are refused"
        );
        go_tx.send(()).expect("go");
        assert_eq!(running.await.expect("task").expect("run"), 42);
        match idem.claim_or_replay(&req).await.expect("begin") {
            Begin::Replay(bytes) => assert_eq!(bytes.as_ref(), b"42"),
            Begin::Proceed(_) => panic!("the result was not committed: a retry would run again"),
        }
    }

    /// The record key's layout is what replicas of different versions share: a change
    /// would make a mixed fleet miss each other's records (and run a call twice).
    #[test]
    fn record_keys_keep_their_layout() {
        let config = crate::Config::from_toml_str("mode = \"embedded\"\n[idempotency.orders]")
            .expect("config");
        let rt = crate::runtime::Runtime::build(config).expect("runtime");
        let idem = rt.idempotency.get("orders").expect("orders");
        let req = IdemRequest::new("charge:eu", "abc", "sha256:x");
        assert_eq!(
            idem.record_key(&req).unwrap(),
            "forze:idem:{orders:_:charge%3Aeu:\
             ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad}"
        );
    }

    #[test]
    fn payload_hashes_are_sha256_hex() {
        assert_eq!(
            payload_hash(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            payload_hash(b"abc"),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}

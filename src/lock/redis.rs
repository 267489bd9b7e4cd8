//! Locks on Redis: `lock_acquire.lua`, `lock_release.lua` and `lock_extend.lua` (see
//! `src/scripts/`), plus plain reads for the queries.
//!
//! Replays: fred may re-send an `EVALSHA` whose reply was lost. Each script is safe to run
//! twice: a replayed acquire by the same owner returns that owner's token, a replayed release
//! or extend is owner-checked.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use fred::interfaces::{ClientLike, KeysInterface};
use fred::types::Value;

use super::{parse_holder, Attempt};
use crate::connection::RedisConnection;
use crate::error::{Access, Error, Result};
use crate::scripts::{LOCK_ACQUIRE, LOCK_EXTEND, LOCK_RELEASE};
use crate::time::ttl_arg;

/// The fence key of a lock is its key with this suffix.
const FENCE_SUFFIX: &str = ":fence";

/// Most leases renewed by one script call: bounds how long one call keeps the server busy.
pub const EXTEND_BATCH: usize = 10_000;

/// Locks on Redis through the shared pool.
#[derive(Debug, Clone)]
pub struct RedisLockStore {
    conn: Arc<RedisConnection>,
}

impl RedisLockStore {
    /// A store over `conn`.
    pub fn new(conn: Arc<RedisConnection>) -> Self {
        RedisLockStore { conn }
    }

    /// Run the acquire script. `fence_ttl`: the fence key's time to live (`None`: it never
    /// expires).
    pub async fn acquire(
        &self,
        key: &str,
        owner: &str,
        lease: Duration,
        fence_ttl: Option<Duration>,
    ) -> Result<Attempt> {
        const OP: &str = "lock.acquire";
        // Sized exactly (`format!` guesses, then grows by reallocation).
        let mut fence = String::with_capacity(key.len() + FENCE_SUFFIX.len());
        fence.push_str(key);
        fence.push_str(FENCE_SUFFIX);
        let reply: Vec<i64> = self
            .conn
            .eval(
                OP,
                Access::IdempotentWrite,
                &LOCK_ACQUIRE,
                &[key, &fence],
                &[
                    Value::from(owner),
                    ttl_arg(lease),
                    fence_ttl.map_or(Value::Integer(0), ttl_arg),
                ],
            )
            .await?;
        match reply.as_slice() {
            [1, token] if *token > 0 => Ok(Attempt::Taken(*token as u64)),
            [0, pttl] => Ok(Attempt::Held(
                (*pttl > 0).then(|| Duration::from_millis(*pttl as u64)),
            )),
            _ => Err(Error::internal(OP, "unexpected script reply")),
        }
    }

    /// Give the lease back if `owner` still holds it: with its `token` known, the server's
    /// `DELIFEQ` where it has one (the stored value is exactly `<token>:<owner>`), else the
    /// script, which compares the owner alone.
    pub async fn release(&self, key: &str, owner: &str, token: Option<u64>) -> Result<bool> {
        if let Some(token) = token.filter(|_| self.conn.may_have_del_if_eq()) {
            let value = format!("{token}:{owner}");
            if let Some(deleted) = self.conn.del_if_eq("lock.release", key, &value).await? {
                return Ok(deleted == 1);
            }
        }
        let n: i64 = self
            .conn
            .eval(
                "lock.release",
                Access::Write,
                &LOCK_RELEASE,
                &[key],
                &[Value::from(owner)],
            )
            .await?;
        Ok(n == 1)
    }

    /// Renew `(key, owner)` pairs. Keys are grouped (one group on a single server; one per
    /// hash slot on a cluster, where a script's keys must share a slot) and each group of up
    /// to [`EXTEND_BATCH`] is one script call; the calls are sent together, so a tick costs
    /// one round trip.
    pub async fn extend_many(&self, leases: &[(&str, &str)], lease: Duration) -> Result<Vec<bool>> {
        const OP: &str = "lock.extend";
        let groups = self.groups(leases);
        let mut calls = Vec::new();
        for indices in groups.values() {
            for chunk in indices.chunks(EXTEND_BATCH) {
                let keys: Vec<&str> = chunk.iter().map(|&i| leases[i].0).collect();
                let mut args: Vec<Value> = Vec::with_capacity(chunk.len() + 1);
                args.push(ttl_arg(lease));
                args.extend(chunk.iter().map(|&i| Value::from(leases[i].1)));
                let chunk = chunk.to_vec();
                calls.push(async move {
                    let flags: Vec<i64> = self
                        .conn
                        .eval(OP, Access::IdempotentWrite, &LOCK_EXTEND, &keys, &args)
                        .await?;
                    if flags.len() != chunk.len() {
                        return Err(Error::internal(OP, "short script reply"));
                    }
                    Ok::<_, Error>((chunk, flags))
                });
            }
        }
        let mut out = vec![false; leases.len()];
        for result in futures::future::join_all(calls).await {
            let (chunk, flags) = result?;
            for (i, flag) in chunk.into_iter().zip(flags) {
                out[i] = flag == 1;
            }
        }
        Ok(out)
    }

    /// The indices of `leases` by script group: one group on a single server, one per hash
    /// slot on a cluster.
    pub fn groups(&self, leases: &[(&str, &str)]) -> BTreeMap<u16, Vec<usize>> {
        let clustered = self.conn.pool().next().is_clustered();
        let mut groups: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
        for (i, (key, _)) in leases.iter().enumerate() {
            let group = if clustered {
                redis_protocol::redis_keyslot(key.as_bytes())
            } else {
                0
            };
            groups.entry(group).or_default().push(i);
        }
        groups
    }

    /// How many script calls renewing `leases` takes.
    pub fn extend_calls(&self, leases: &[(&str, &str)]) -> usize {
        self.groups(leases)
            .values()
            .map(|g| g.len().div_ceil(EXTEND_BATCH))
            .sum()
    }

    /// The holder of `key` and its token.
    pub async fn holder(&self, key: &str) -> Result<Option<(String, u64)>> {
        const OP: &str = "lock.owner";
        let client = self
            .conn
            .client(OP)?
            .with_options(self.conn.options(Access::Read));
        let v: Option<String> = client
            .get(key)
            .await
            .map_err(|e| self.conn.error(OP, Access::Read, e))?;
        Ok(v.as_deref().and_then(parse_holder))
    }

    /// The remaining lease of `key`.
    pub async fn ttl(&self, key: &str) -> Result<Option<Duration>> {
        const OP: &str = "lock.ttl";
        let client = self
            .conn
            .client(OP)?
            .with_options(self.conn.options(Access::Read));
        let ms: Value = client
            .pttl(key)
            .await
            .map_err(|e| self.conn.error(OP, Access::Read, e))?;
        Ok(match ms {
            Value::Integer(ms) if ms > 0 => Some(Duration::from_millis(ms as u64)),
            _ => None,
        })
    }
}

//! Locks on Redis: `lock_acquire.lua`, `lock_release.lua` and `lock_extend.lua` (see
//! `src/scripts/`), the server's own `DELIFEQ` and `SET … IFEQ` where it has them, plus
//! plain reads for the queries.
//!
//! Replays: fred may re-send an `EVALSHA` whose reply was lost. Each script is safe to run
//! twice: a replayed acquire by the same owner returns that owner's token, a replayed release
//! or extend is owner-checked.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use fred::interfaces::{ClientLike, KeysInterface};
use fred::types::Value;

use super::{parse_holder, Attempt, Lease};
use crate::connection::RedisConnection;
use crate::error::{Access, Error, Result};
use crate::pooled::pooled_with;
use crate::scripts::{LOCK_ACQUIRE, LOCK_EXTEND, LOCK_RELEASE};
use crate::time::ttl_arg;

/// The fence key of a lock is its key with this suffix.
const FENCE_SUFFIX: &str = ":fence";

/// Most leases renewed by one script call (bounds how long one call keeps the server busy)
/// or one pipeline.
pub const EXTEND_BATCH: usize = 10_000;

/// A held lock's stored value: `"<token>:<owner>"`, as the acquire script writes it.
fn holder_value(token: u64, owner: &str) -> String {
    let mut token_text = itoa::Buffer::new();
    let token_text = token_text.format(token);
    let mut value = String::with_capacity(token_text.len() + 1 + owner.len());
    value.push_str(token_text);
    value.push(':');
    value.push_str(owner);
    value
}

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
            let value = holder_value(token, owner);
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

    /// Renew `leases` for `lease` each; one flag per lease, `false` when it is lost.
    ///
    /// Where the server has `SET … IFEQ` and a lease's token is known (every guard's), the
    /// lease is renewed by that native command: the stored value is exactly
    /// `<token>:<owner>`, and the command costs the server about half the script's work per
    /// lease and never holds it for a whole batch. The commands go out as one pipeline per
    /// [`EXTEND_BATCH`] leases. The rest (a renewal by owner alone, or a server without the
    /// option) use the script: leases grouped (one group on a single server, one per hash
    /// slot on a cluster, where a script's keys must share a slot), each group of up to
    /// [`EXTEND_BATCH`] one script call. Every call is sent together, so a tick costs one
    /// round trip either way.
    pub async fn extend_many(&self, leases: &[&Lease], lease: Duration) -> Result<Vec<bool>> {
        const OP: &str = "lock.extend";
        let mut out = vec![false; leases.len()];
        let (native, mut by_script) = self.split_native(leases);
        if !native.is_empty() {
            let values: Vec<String> = native
                .iter()
                .map(|&i| holder_value(leases[i].token, &leases[i].owner))
                .collect();
            let pipelines = native.chunks(EXTEND_BATCH).zip(values.chunks(EXTEND_BATCH));
            let pipelines = pipelines.map(|(indices, values)| async move {
                let pairs: Vec<(&str, &str)> = indices
                    .iter()
                    .zip(values)
                    .map(|(&i, v)| (leases[i].key.as_str(), v.as_str()))
                    .collect();
                let answers = self.conn.set_if_eq_many(OP, &pairs, lease).await?;
                Ok::<_, Error>(indices.iter().copied().zip(answers).collect::<Vec<_>>())
            });
            for answers in futures::future::join_all(pipelines).await {
                for (i, answer) in answers? {
                    match answer {
                        Some(renewed) => out[i] = renewed,
                        // Refused by the server (nothing ran): the script renews it below.
                        None => by_script.push(i),
                    }
                }
            }
        }
        if by_script.is_empty() {
            return Ok(out);
        }
        let groups = self.groups(leases, &by_script);
        let mut calls = Vec::new();
        for indices in groups.values() {
            for chunk in indices.chunks(EXTEND_BATCH) {
                let keys: Vec<&str> = chunk.iter().map(|&i| leases[i].key.as_str()).collect();
                let mut args: Vec<Value> = Vec::with_capacity(chunk.len() + 1);
                args.push(ttl_arg(lease));
                args.extend(chunk.iter().map(|&i| Value::from(leases[i].owner.as_str())));
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
        for result in futures::future::join_all(calls).await {
            let (chunk, flags) = result?;
            for (&i, flag) in chunk.iter().zip(flags) {
                out[i] = flag == 1;
            }
        }
        Ok(out)
    }

    /// The indices of `leases` to renew natively (token known, and the server not known to
    /// lack `SET … IFEQ`), and those for the script.
    fn split_native(&self, leases: &[&Lease]) -> (Vec<usize>, Vec<usize>) {
        let native_ok = self.conn.may_have_set_if_eq();
        (0..leases.len()).partition(|&i| native_ok && leases[i].token > 0)
    }

    /// The indices `of` of `leases` by script group: one group on a single server, one per
    /// hash slot on a cluster.
    fn groups(&self, leases: &[&Lease], of: &[usize]) -> BTreeMap<u16, Vec<usize>> {
        let clustered = self.conn.pool().next().is_clustered();
        let mut groups: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
        for &i in of {
            let group = if clustered {
                redis_protocol::redis_keyslot(leases[i].key.as_bytes())
            } else {
                0
            };
            groups.entry(group).or_default().push(i);
        }
        groups
    }

    /// How many calls (pipelines and script calls) renewing `leases` takes now.
    pub fn extend_calls(&self, leases: &[&Lease]) -> usize {
        let (native, by_script) = self.split_native(leases);
        native.len().div_ceil(EXTEND_BATCH)
            + self
                .groups(leases, &by_script)
                .values()
                .map(|g| g.len().div_ceil(EXTEND_BATCH))
                .sum::<usize>()
    }

    /// The holder of `key` and its token.
    pub async fn holder(&self, key: &str) -> Result<Option<(String, u64)>> {
        const OP: &str = "lock.owner";
        let bound = self.conn.read_bound();
        let client = self.conn.client(OP)?.with_options(bound.options());
        let v: Option<String> = bound
            .run(pooled_with(|| client.get(key)))
            .await
            .map_err(|e| self.conn.error(OP, Access::Read, e))?;
        Ok(v.as_deref().and_then(parse_holder))
    }

    /// The remaining lease of `key`.
    pub async fn ttl(&self, key: &str) -> Result<Option<Duration>> {
        const OP: &str = "lock.ttl";
        let bound = self.conn.read_bound();
        let client = self.conn.client(OP)?.with_options(bound.options());
        let ms: Value = bound
            .run(pooled_with(|| client.pttl(key)))
            .await
            .map_err(|e| self.conn.error(OP, Access::Read, e))?;
        Ok(match ms {
            Value::Integer(ms) if ms > 0 => Some(Duration::from_millis(ms as u64)),
            _ => None,
        })
    }
}

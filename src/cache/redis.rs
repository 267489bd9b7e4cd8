//! The Redis cache store: one string per entry (see [`codec`](super::codec)).
//!
//! Reads and batch writes are pipelines of single-key commands, one round trip each, and
//! cluster-safe (fred routes each command to its slot's node). A versioned write is one script
//! call per key. Every future that holds a fred call is put on the heap once (in a pooled
//! block) so ours stay small.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
// `client.pipeline()` on a client with options would drop them (it derefs to the plain
// client): a pipeline is built from the optioned client, so each command carries them.
use fred::clients::Pipeline;
use fred::interfaces::{ClientLike, KeysInterface};
use fred::types::{Expiration, ExpireOptions, SetOptions, Value};

use super::one_or_many::OneOrMany;
use crate::connection::RedisConnection;
use crate::error::{Access, Error, Result};
use crate::pooled::pooled_with;
use crate::scripts::CACHE_SET_VERSIONED;

use crate::time::{ttl_arg, ttl_millis};

/// What one read of one key returned.
#[derive(Debug, Clone, Default)]
pub struct Read {
    /// The stored bytes, if the key exists.
    pub stored: Option<Bytes>,
    /// The key's remaining time to live, when asked for and the key has one.
    pub pttl: Option<Duration>,
}

/// Whether a write replaces what the key holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    /// Always (`SET`).
    Always,
    /// Only a key that holds nothing (`SET … NX`): a loaded value never replaces one a writer
    /// stored meanwhile.
    IfAbsent,
}

/// Cache entries on Redis through the shared pool.
#[derive(Debug, Clone)]
pub struct RedisCacheStore {
    conn: Arc<RedisConnection>,
}

fn bytes_of(op: &'static str, v: Value) -> Result<Option<Bytes>> {
    match v {
        Value::Null => Ok(None),
        Value::Bytes(b) => Ok(Some(b)),
        Value::String(s) => Ok(Some(s.into_inner())),
        other => Err(Error::internal(
            op,
            format!("unexpected {:?} reply", other.kind()),
        )),
    }
}

/// Queue one command on a pipeline. The driver answers a pipelined command at once (it is
/// only buffered), so its future is polled where it is made instead of being awaited: awaited,
/// each of these 8 KiB futures would be copied into the caller's state. Unconstrained: the
/// answer comes through a channel that would otherwise report "not ready" to a task whose
/// scheduling budget is spent.
fn queue(
    op: &'static str,
    command: impl std::future::Future<Output = std::result::Result<(), fred::error::Error>>,
) -> std::result::Result<(), fred::error::Error> {
    use futures::FutureExt;
    tokio::task::unconstrained(command)
        .now_or_never()
        .unwrap_or_else(|| {
            Err(fred::error::Error::new(
                fred::error::ErrorKind::Unknown,
                format!("{op}: a pipelined command was not queued at once"),
            ))
        })
}

/// A `PTTL` reply as the cap of an L1 entry: `None` for a key without expiry (`-1`), zero
/// (not kept) for a key in its last millisecond (`0`), one gone since its `GET` (`-2`), or a
/// reply we cannot read.
fn pttl_of(v: &Value) -> Option<Duration> {
    match v {
        Value::Integer(-1) => None,
        Value::Integer(ms) => Some(Duration::from_millis(u64::try_from(*ms).unwrap_or(0))),
        _ => Some(Duration::ZERO),
    }
}

impl RedisCacheStore {
    /// A store over `conn`.
    pub fn new(conn: Arc<RedisConnection>) -> Self {
        RedisCacheStore { conn }
    }

    /// Read `keys` in one round trip. With `with_pttl`, each key's PTTL comes with it (for
    /// capping L1 entries); with `slide`, each key's TTL is extended to at least `slide`
    /// (`PEXPIRE … GT`: only ever extends).
    pub async fn read(
        &self,
        op: &'static str,
        keys: &[&str],
        with_pttl: bool,
        slide: Option<Duration>,
    ) -> Result<OneOrMany<Read>> {
        let err = |e| self.conn.error(op, Access::Read, e);
        if let ([key], false, None) = (keys, with_pttl, slide) {
            // One key, nothing else asked: a plain GET, no pipeline to build. On the heap
            // where it is made: a driver command future is about 8 KiB, copied at every move.
            let bound = self.conn.read_bound();
            let client = self.conn.client(op)?.with_options(bound.options());
            let v: Value = bound
                .run(pooled_with(|| client.get(*key)))
                .await
                .map_err(err)?;
            return Ok(OneOrMany::one(Read {
                stored: bytes_of(op, v)?,
                pttl: None,
            }));
        }
        let per_key = 1 + usize::from(with_pttl) + usize::from(slide.is_some());
        // Reads only are watched: a sliding TTL's `PEXPIRE` keeps the driver's timer, which
        // never sends it once timed out.
        let bound = match slide {
            None => self.conn.read_bound(),
            Some(_) => self.conn.driver_timed_read(),
        };
        let client = self.conn.client(op)?.with_options(bound.options());
        let pipeline = Pipeline::from(client);
        for key in keys {
            queue(op, pipeline.get::<(), _>(*key)).map_err(err)?;
            if with_pttl {
                queue(op, pipeline.pttl::<(), _>(*key)).map_err(err)?;
            }
            if let Some(slide) = slide {
                let ms = ttl_millis(slide) as i64;
                queue(
                    op,
                    pipeline.pexpire::<(), _>(*key, ms, Some(ExpireOptions::GT)),
                )
                .map_err(err)?;
            }
        }
        let replies: Vec<Value> = bound
            .run(pooled_with(|| pipeline.all()))
            .await
            .map_err(err)?;
        if replies.len() != keys.len() * per_key {
            return Err(Error::internal(op, "short pipeline reply"));
        }
        let mut out = Vec::with_capacity(keys.len());
        let mut replies = replies.into_iter();
        for _ in keys {
            let stored = bytes_of(op, replies.next().unwrap_or(Value::Null))?;
            let pttl = if with_pttl {
                replies.next().as_ref().and_then(pttl_of)
            } else {
                None
            };
            if slide.is_some() {
                replies.next();
            }
            out.push(Read { stored, pttl });
        }
        Ok(OneOrMany::Many(out))
    }

    /// Write each `(key, stored)` with `ttl`, in one round trip.
    pub async fn write(
        &self,
        op: &'static str,
        entries: &[(&str, Bytes)],
        ttl: Duration,
        mode: WriteMode,
    ) -> Result<()> {
        let client = self
            .conn
            .client(op)?
            .with_options(self.conn.options(Access::IdempotentWrite));
        let err = |e| self.conn.error(op, Access::IdempotentWrite, e);
        let px = Some(Expiration::PX(ttl_millis(ttl) as i64));
        let nx = (mode == WriteMode::IfAbsent).then_some(SetOptions::NX);
        if let [(key, stored)] = entries {
            // `Value`: a `SET … NX` that finds the key answers nil.
            return client
                .set::<Value, _, _>(*key, stored.clone(), px, nx, false)
                .await
                .map(drop)
                .map_err(err);
        }
        let pipeline = Pipeline::from(client);
        for (key, stored) in entries {
            pipeline
                .set::<(), _, _>(*key, stored.clone(), px.clone(), nx.clone(), false)
                .await
                .map_err(err)?;
        }
        let _: Vec<Value> = pipeline.all().await.map_err(err)?;
        Ok(())
    }

    /// Write a versioned entry unless a newer version is stored; whether it was written.
    pub async fn write_versioned(
        &self,
        op: &'static str,
        key: &str,
        stored: Bytes,
        version: &str,
        ttl: Duration,
    ) -> Result<bool> {
        let applied: i64 = self
            .conn
            .eval(
                op,
                Access::Write,
                &CACHE_SET_VERSIONED,
                &[key],
                &[Value::Bytes(stored), Value::from(version), ttl_arg(ttl)],
            )
            .await?;
        Ok(applied == 1)
    }

    /// Remove `keys` (`DEL` when `hard`: memory reclaimed before the reply; else `UNLINK`);
    /// how many existed. Sent as an idempotent write: if fred sends it a second time (after a
    /// redirection or a lost reply), the keys are gone all the same, but the count is that of
    /// the second send, so it may under-count.
    pub async fn remove(&self, op: &'static str, keys: &[&str], hard: bool) -> Result<u64> {
        let client = self
            .conn
            .client(op)?
            .with_options(self.conn.options(Access::IdempotentWrite));
        let err = |e| self.conn.error(op, Access::IdempotentWrite, e);
        let pipeline = Pipeline::from(client);
        for key in keys {
            if hard {
                pipeline.del::<(), _>(*key).await.map_err(err)?;
            } else {
                pipeline.unlink::<(), _>(*key).await.map_err(err)?;
            }
        }
        let replies: Vec<Value> = pipeline.all().await.map_err(err)?;
        Ok(replies.iter().map(|v| v.as_u64().unwrap_or(0)).sum())
    }

    /// Whether `key` exists.
    pub async fn exists(&self, op: &'static str, key: &str) -> Result<bool> {
        let bound = self.conn.read_bound();
        let client = self.conn.client(op)?.with_options(bound.options());
        let n: i64 = bound
            .run(pooled_with(|| client.exists(key)))
            .await
            .map_err(|e| self.conn.error(op, Access::Read, e))?;
        Ok(n > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pttl_caps_an_entry_unless_the_key_has_no_expiry() {
        assert_eq!(
            pttl_of(&Value::Integer(1500)),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(pttl_of(&Value::Integer(-1)), None);
        // The key's last millisecond, or gone since its GET: nothing to keep.
        assert_eq!(pttl_of(&Value::Integer(0)), Some(Duration::ZERO));
        assert_eq!(pttl_of(&Value::Integer(-2)), Some(Duration::ZERO));
        assert_eq!(pttl_of(&Value::Null), Some(Duration::ZERO));
    }
}

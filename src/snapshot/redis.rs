//! Snapshots on Redis: `snap_begin.lua`, `snap_append.lua`, `snap_page.lua`, plus `HGETALL`
//! and `DEL` for meta and delete. Every script is safe to run twice (fred may re-send an
//! `EVALSHA` whose reply was lost): a replayed append of the chunk just appended (same writer,
//! index and ids) answers ok without appending again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use fred::interfaces::{ClientLike, HashesInterface, KeysInterface};
use fred::types::Value;

use super::{AppendReply, RunKeys, SnapshotMeta};
use crate::connection::RedisConnection;
use crate::error::{Access, Error, Result};
use crate::scripts::{SNAP_APPEND, SNAP_BEGIN, SNAP_PAGE};
use crate::time::ttl_arg;

/// The largest offset or limit sent to the page script: 2^40, exact in a Lua number and
/// written without an exponent, as is their sum.
const PAGE_BOUND: u64 = 1 << 40;

/// Snapshots on Redis through the shared pool.
#[derive(Debug, Clone)]
pub struct RedisSnapshotStore {
    conn: Arc<RedisConnection>,
}

fn text(v: Value) -> Option<String> {
    v.as_string()
}

impl RedisSnapshotStore {
    /// A store over `conn`.
    pub fn new(conn: Arc<RedisConnection>) -> Self {
        RedisSnapshotStore { conn }
    }

    /// Run the begin script.
    pub async fn begin(
        &self,
        keys: &RunKeys,
        fp: &str,
        writer: &str,
        ttl: Duration,
        max: u64,
    ) -> Result<()> {
        let _: i64 = self
            .conn
            .eval(
                "snapshot.begin",
                Access::Write,
                &SNAP_BEGIN,
                &[&keys.meta, &keys.ids],
                &[
                    Value::from(fp),
                    Value::from(writer),
                    ttl_arg(ttl),
                    Value::from(max.to_string()),
                ],
            )
            .await?;
        Ok(())
    }

    /// Run the append script.
    pub async fn append(
        &self,
        keys: &RunKeys,
        writer: &str,
        index: u64,
        ids: &[String],
        last: bool,
    ) -> Result<AppendReply> {
        const OP: &str = "snapshot.append";
        let mut args = Vec::with_capacity(ids.len() + 3);
        args.push(Value::from(writer));
        args.push(Value::from(index.to_string()));
        args.push(Value::Integer(i64::from(last)));
        args.extend(ids.iter().map(|id| Value::from(id.as_str())));
        let reply: Vec<Value> = self
            .conn
            .eval(
                OP,
                Access::Write,
                &SNAP_APPEND,
                &[&keys.meta, &keys.ids],
                &args,
            )
            .await?;
        let mut it = reply.into_iter();
        let tag = it.next().and_then(text);
        let num = it.next().and_then(|v| v.as_u64()).unwrap_or(0);
        Ok(match tag.as_deref() {
            Some("ok") => AppendReply::Ok(num),
            Some("missing") => AppendReply::Missing,
            Some("complete") => AppendReply::Complete,
            Some("concurrent") => AppendReply::Concurrent,
            Some("out_of_order") => AppendReply::OutOfOrder(num),
            Some("too_many") => AppendReply::TooMany(num),
            _ => return Err(Error::internal(OP, "unexpected script reply")),
        })
    }

    /// Run the page script: one round trip. `offset` and `limit` beyond [`PAGE_BOUND`] are
    /// taken as that bound (a run holds far fewer ids).
    pub async fn page(
        &self,
        keys: &RunKeys,
        offset: u64,
        limit: u64,
        expected: Option<&str>,
        keep: Duration,
    ) -> Result<Option<Vec<String>>> {
        const OP: &str = "snapshot.page";
        let reply: Vec<Value> = self
            .conn
            .eval(
                OP,
                // A keep-alive writes; without one the script only reads, but it is still a
                // script call: a lost reply is reported as for a write, never retried blind.
                Access::Write,
                &SNAP_PAGE,
                &[&keys.meta, &keys.ids],
                &[
                    // Lua numbers are doubles, and Redis reads a number written in exponent
                    // form as no integer: bounds far above any run's length keep them exact.
                    Value::from(offset.min(PAGE_BOUND).to_string()),
                    Value::from(limit.min(PAGE_BOUND).to_string()),
                    // "=" and the fingerprint, so that an empty one is still checked.
                    Value::from(expected.map_or(String::new(), |fp| format!("={fp}"))),
                    Value::from(
                        if keep.is_zero() {
                            0
                        } else {
                            crate::time::ttl_millis(keep)
                        }
                        .to_string(),
                    ),
                ],
            )
            .await?;
        let mut it = reply.into_iter();
        match it.next().and_then(text).as_deref() {
            Some("ok") => Ok(Some(it.filter_map(text).collect())),
            Some("none") => Ok(None),
            _ => Err(Error::internal(OP, "unexpected script reply")),
        }
    }

    /// The run's metadata.
    pub async fn meta(&self, keys: &RunKeys) -> Result<Option<SnapshotMeta>> {
        const OP: &str = "snapshot.meta";
        let client = self
            .conn
            .client(OP)?
            .with_options(self.conn.options(Access::Read));
        let err = |e| self.conn.error(OP, Access::Read, e);
        let pipeline = client.pipeline();
        pipeline
            .hgetall::<(), _>(keys.meta.as_str())
            .await
            .map_err(err)?;
        pipeline
            .pttl::<(), _>(keys.meta.as_str())
            .await
            .map_err(err)?;
        let (fields, pttl): (HashMap<String, String>, i64) = pipeline.all().await.map_err(err)?;
        if fields.is_empty() {
            return Ok(None);
        }
        Ok(Some(SnapshotMeta {
            fingerprint: fields.get("fp").cloned().unwrap_or_default(),
            total: fields.get("n").and_then(|n| n.parse().ok()).unwrap_or(0),
            complete: fields.get("st").map(String::as_str) == Some("done"),
            expires_in: (pttl > 0).then(|| Duration::from_millis(pttl as u64)),
        }))
    }

    /// Delete both keys of the run.
    pub async fn delete(&self, keys: &RunKeys) -> Result<bool> {
        const OP: &str = "snapshot.delete";
        let client = self
            .conn
            .client(OP)?
            .with_options(self.conn.options(Access::Write));
        // Same hash slot: one multi-key DEL is cluster-safe.
        let n: i64 = client
            .del(vec![keys.meta.clone(), keys.ids.clone()])
            .await
            .map_err(|e| self.conn.error(OP, Access::Write, e))?;
        Ok(n > 0)
    }
}

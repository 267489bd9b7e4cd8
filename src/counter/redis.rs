//! The Redis counter store: fleet-wide counters.
//!
//! `incr`/`decr` are `INCRBY`/`DECRBY` sent once (the server refuses a result outside `i64`
//! before writing, which becomes [`ConflictReason::OutOfRange`](crate::ConflictReason));
//! `get` is `GET`; `set` is `SET`; `list` is a `SCAN` over the
//! glob-escaped tenant base, filtered to exact matches, then `GET` of each key found.

use std::collections::BTreeMap;
use std::sync::Arc;

use fred::interfaces::{ClientLike, ClusterInterface, KeysInterface};
use fred::types::Value;

use super::out_of_range;
use crate::connection::RedisConnection;
use crate::error::{Access, DriverErrorClass, Error, Result};
use crate::keys::{glob_escape, parts_after_base};
use crate::pooled::pooled_with;

/// Keys per `SCAN` step.
const SCAN_COUNT: u32 = 500;
/// Upper bound of `SCAN` steps in one `list`, so a pathological keyspace cannot loop forever.
const MAX_SCAN_STEPS: usize = 1_000_000;
/// Keys per `GET` pipeline in `list`.
const GET_CHUNK: usize = 500;

/// Counters on Redis through the shared connection pool.
#[derive(Debug, Clone)]
pub struct RedisCounterStore {
    conn: Arc<RedisConnection>,
}

impl RedisCounterStore {
    /// Which connection this store sends to (its address): stores over one pool agree.
    pub(crate) fn connection_id(&self) -> usize {
        Arc::as_ptr(&self.conn) as usize
    }

    /// A store over `conn`.
    pub fn new(conn: Arc<RedisConnection>) -> Self {
        RedisCounterStore { conn }
    }

    async fn add(&self, op: &'static str, key: &str, by: i64, decr: bool) -> Result<i64> {
        let client = self
            .conn
            .client(op)?
            .with_options(self.conn.options(Access::Write));
        // Built in a pooled heap block (`pooled_with`: a reused block, not a Box per call):
        // fred's command futures are about 8 KiB, and every layer that held one inline would
        // copy it when built and moved.
        let reply = if decr {
            pooled_with(|| client.decr_by::<i64, _>(key, by)).await
        } else {
            pooled_with(|| client.incr_by::<i64, _>(key, by)).await
        };
        reply.map_err(|e| match DriverErrorClass::of(&e) {
            // INCRBY/DECRBY answer a generic `ERR` only when the result would leave the i64
            // range or the stored value is not an integer; either way nothing was written.
            DriverErrorClass::ServerError => out_of_range(op),
            _ => self.conn.error(op, Access::Write, e),
        })
    }
}

fn parse_i64(op: &'static str, value: &Value) -> Result<i64> {
    match value {
        Value::Integer(i) => Ok(*i),
        Value::Null => Ok(0),
        other => other
            .as_str()
            .and_then(|s| s.parse::<i64>().ok())
            .ok_or_else(|| Error::Codec {
                message: format!("{op}: the stored counter is not an integer"),
            }),
    }
}

/// The counter operations on Redis: `INCRBY`/`DECRBY` (atomic, refused by the server at the
/// `i64` bounds), `GET`, `SET`, and a `SCAN` of one tenant base for `list`.
impl RedisCounterStore {
    pub(crate) async fn incr(&self, key: &str, by: i64) -> Result<i64> {
        self.add("counter.incr", key, by, false).await
    }

    pub(crate) async fn decr(&self, key: &str, by: i64) -> Result<i64> {
        self.add("counter.decr", key, by, true).await
    }

    pub(crate) async fn get(&self, key: &str) -> Result<i64> {
        const OP: &str = "counter.get";
        let bound = self.conn.read_bound();
        let client = self.conn.client(OP)?.with_options(bound.options());
        let v: Value = bound
            .run(pooled_with(|| client.get(key)))
            .await
            .map_err(|e| self.conn.error(OP, Access::Read, e))?;
        parse_i64(OP, &v)
    }

    pub(crate) async fn set(&self, key: &str, value: i64) -> Result<()> {
        const OP: &str = "counter.reset";
        let client = self
            .conn
            .client(OP)?
            .with_options(self.conn.options(Access::Write));
        pooled_with(|| client.set::<(), _, _>(key, value, None, None, false))
            .await
            .map_err(|e| self.conn.error(OP, Access::Write, e))
    }

    pub(crate) async fn list(&self, base: &str) -> Result<Vec<(Vec<String>, i64)>> {
        const OP: &str = "counter.list";
        let raw = self.conn.client(OP)?;
        let client = raw.with_options(self.conn.options(Access::Read));
        let pattern = format!("{}*", glob_escape(base));
        // BTreeMap: sorted, and SCAN may return a key more than once.
        let mut found: BTreeMap<String, Vec<String>> = BTreeMap::new();
        // A cluster's keys are spread over its primaries, and SCAN walks one node: walk each.
        let nodes: Vec<Option<fred::types::config::Server>> = if raw.is_clustered() {
            raw.cached_cluster_state()
                .map(|s| s.unique_primary_nodes())
                .unwrap_or_default()
                .into_iter()
                .map(Some)
                .collect()
        } else {
            vec![None]
        };
        if nodes.is_empty() {
            return Err(Error::unavailable(OP));
        }
        for node in nodes {
            let on_node = raw.with_options(&fred::types::config::Options {
                cluster_node: node,
                ..self.conn.options(Access::Read).clone()
            });
            let mut cursor = "0".to_string();
            for _ in 0..MAX_SCAN_STEPS {
                let page: Value = on_node
                    .scan_page(cursor.clone(), pattern.clone(), Some(SCAN_COUNT), None)
                    .await
                    .map_err(|e| self.conn.error(OP, Access::Read, e))?;
                let (next, keys) = parse_scan_page(page)?;
                for key in keys {
                    if let Some(parts) = parts_after_base(base, &key) {
                        found.insert(key, parts);
                    }
                }
                // The loop ends on cursor 0 only: an empty page does not mean the end.
                if next == "0" {
                    break;
                }
                cursor = next;
            }
        }
        let keys: Vec<(String, Vec<String>)> = found.into_iter().collect();
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(GET_CHUNK) {
            // One GET per key (not MGET): on a cluster the keys live in different slots.
            let pipeline = client.pipeline();
            for (key, _) in chunk {
                pipeline
                    .get::<(), _>(key.as_str())
                    .await
                    .map_err(|e| self.conn.error(OP, Access::Read, e))?;
            }
            let values: Vec<Value> = pipeline
                .all()
                .await
                .map_err(|e| self.conn.error(OP, Access::Read, e))?;
            for ((_, parts), value) in chunk.iter().zip(values) {
                // Deleted since the scan: skipped, not reported as 0.
                if !matches!(value, Value::Null) {
                    out.push((parts.clone(), parse_i64(OP, &value)?));
                }
            }
        }
        Ok(out)
    }
}

fn parse_scan_page(page: Value) -> Result<(String, Vec<String>)> {
    let bad = || Error::internal("counter.list", "unexpected SCAN reply");
    let Value::Array(mut items) = page else {
        return Err(bad());
    };
    if items.len() != 2 {
        return Err(bad());
    }
    let keys = items.pop().ok_or_else(bad)?;
    let cursor = items.pop().and_then(|c| c.as_string()).ok_or_else(bad)?;
    let keys = match keys {
        Value::Array(keys) => keys.into_iter().filter_map(|k| k.as_string()).collect(),
        _ => return Err(bad()),
    };
    Ok((cursor, keys))
}

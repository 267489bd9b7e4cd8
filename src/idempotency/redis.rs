//! Idempotency records on Redis: `idem_begin.lua`, `idem_commit.lua`, `idem_fail.lua`.
//!
//! Each script is safe to run twice (fred may re-send an `EVALSHA` whose reply was lost): a
//! replayed begin by the same owner proceeds again, a replayed commit by the same owner
//! answers 1, a replayed fail finds nothing of the owner's and answers 0.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fred::types::Value;

use super::BeginReply;
use crate::connection::RedisConnection;
use crate::error::{Access, Error, Result};
use crate::scripts::{IDEM_BEGIN, IDEM_COMMIT, IDEM_FAIL};
use crate::time::ttl_arg;

/// Idempotency records on Redis through the shared pool.
#[derive(Debug, Clone)]
pub struct RedisIdempotencyStore {
    conn: Arc<RedisConnection>,
}

impl RedisIdempotencyStore {
    /// A store over `conn`.
    pub fn new(conn: Arc<RedisConnection>) -> Self {
        RedisIdempotencyStore { conn }
    }

    /// Run the begin script.
    pub async fn begin(
        &self,
        key: &str,
        payload_hash: &str,
        owner: &str,
        lease: Duration,
        retention: Duration,
    ) -> Result<BeginReply> {
        const OP: &str = "idempotency.begin";
        let reply: Vec<Value> = self
            .conn
            .eval(
                OP,
                Access::Write,
                &IDEM_BEGIN,
                &[key],
                &[
                    Value::from(payload_hash),
                    Value::from(owner),
                    ttl_arg(lease),
                    ttl_arg(retention),
                ],
            )
            .await?;
        let mut it = reply.into_iter();
        let tag = it.next().and_then(|v| v.as_string());
        Ok(match tag.as_deref() {
            Some("proceed") => BeginReply::Proceed,
            Some("takeover") => BeginReply::TakeOver,
            Some("mismatch") => BeginReply::Mismatch,
            Some("replay") => BeginReply::Replay(match it.next() {
                Some(Value::Bytes(b)) => b,
                Some(Value::String(s)) => s.into_inner(),
                // A done record always has a result; an empty one is still a result.
                _ => Bytes::new(),
            }),
            Some("busy") => BeginReply::Busy(Duration::from_millis(
                it.next().and_then(|v| v.as_u64()).unwrap_or(0),
            )),
            _ => return Err(Error::internal(OP, "unexpected script reply")),
        })
    }

    /// Run the commit script; whether the claim was the owner's.
    pub async fn commit(
        &self,
        key: &str,
        owner: &str,
        result: &[u8],
        retention: Duration,
    ) -> Result<bool> {
        let n: i64 = self
            .conn
            .eval(
                "idempotency.commit",
                Access::Write,
                &IDEM_COMMIT,
                &[key],
                &[
                    Value::from(owner),
                    Value::Bytes(Bytes::copy_from_slice(result)),
                    ttl_arg(retention),
                ],
            )
            .await?;
        Ok(n == 1)
    }

    /// Run the fail script; whether the owner's pending claim was released.
    pub async fn fail(&self, key: &str, owner: &str) -> Result<bool> {
        let n: i64 = self
            .conn
            .eval(
                "idempotency.fail",
                Access::Write,
                &IDEM_FAIL,
                &[key],
                &[Value::from(owner)],
            )
            .await?;
        Ok(n == 1)
    }
}

//! The Lua scripts, each a `.lua` file beside this module with a header that states its KEYS,
//! ARGV and return value.
//!
//! Scripts run through `EVALSHA`; on `NOSCRIPT` (a restarted or failed-over server has an empty
//! script cache) [`crate::connection::RedisConnection::eval`] sends `EVAL` with the full source,
//! which also caches it again. `NOSCRIPT` proves the script did not run, so the retry is safe even
//! for non-idempotent scripts.

use std::sync::LazyLock;

/// A Lua script and its SHA-1.
#[derive(Debug)]
pub struct Script {
    name: &'static str,
    source: &'static str,
    /// Built once; as a command argument it is shared by every call (a clone is a reference
    /// count, not a copy).
    sha1: fred::bytes_utils::Str,
}

impl Script {
    /// A script from its source.
    pub fn new(name: &'static str, source: &'static str) -> Self {
        Script {
            name,
            source,
            sha1: fred::util::sha1_hash(source).into(),
        }
    }

    /// The file name without extension, for logs and stats.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The Lua source.
    pub fn source(&self) -> &'static str {
        self.source
    }

    /// The SHA-1 that `EVALSHA` takes.
    pub fn sha1(&self) -> &str {
        &self.sha1
    }

    /// The SHA-1 as a command argument, shared rather than copied.
    pub(crate) fn sha1_value(&self) -> fred::types::Value {
        fred::types::Value::String(self.sha1.clone())
    }
}

/// `server_time.lua`: the server clock; the pool actor's probe runs it on every connection,
/// which also re-caches the script cache after a server restart.
pub static SERVER_TIME: LazyLock<Script> =
    LazyLock::new(|| Script::new("server_time", include_str!("server_time.lua")));

/// `cache_set_versioned.lua`: a versioned cache write that never replaces a newer version.
pub static CACHE_SET_VERSIONED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "cache_set_versioned",
        include_str!("cache_set_versioned.lua"),
    )
});

/// `lock_acquire.lua`: a fenced lease.
pub static LOCK_ACQUIRE: LazyLock<Script> =
    LazyLock::new(|| Script::new("lock_acquire", include_str!("lock_acquire.lua")));

/// `lock_release.lua`: owner-checked release.
pub static LOCK_RELEASE: LazyLock<Script> =
    LazyLock::new(|| Script::new("lock_release", include_str!("lock_release.lua")));

/// `lock_extend.lua`: owner-checked renewal of many leases at once.
pub static LOCK_EXTEND: LazyLock<Script> =
    LazyLock::new(|| Script::new("lock_extend", include_str!("lock_extend.lua")));

/// `idem_begin.lua`: claim an idempotency record, replay it, or refuse.
pub static IDEM_BEGIN: LazyLock<Script> =
    LazyLock::new(|| Script::new("idem_begin", include_str!("idem_begin.lua")));

/// `idem_commit.lua`: store a claim's result, owner-checked.
pub static IDEM_COMMIT: LazyLock<Script> =
    LazyLock::new(|| Script::new("idem_commit", include_str!("idem_commit.lua")));

/// `idem_fail.lua`: release a claim, owner-checked.
pub static IDEM_FAIL: LazyLock<Script> =
    LazyLock::new(|| Script::new("idem_fail", include_str!("idem_fail.lua")));

/// `snap_begin.lua`: open a snapshot run.
pub static SNAP_BEGIN: LazyLock<Script> =
    LazyLock::new(|| Script::new("snap_begin", include_str!("snap_begin.lua")));

/// `snap_append.lua`: append the next chunk of a run, in order, by its writer.
pub static SNAP_APPEND: LazyLock<Script> =
    LazyLock::new(|| Script::new("snap_append", include_str!("snap_append.lua")));

/// `snap_page.lua`: one page of a complete run.
pub static SNAP_PAGE: LazyLock<Script> =
    LazyLock::new(|| Script::new("snap_page", include_str!("snap_page.lua")));

/// `ratelimit_acquire.lua`: a token bucket on the server clock.
pub static RATELIMIT_ACQUIRE: LazyLock<Script> =
    LazyLock::new(|| Script::new("ratelimit_acquire", include_str!("ratelimit_acquire.lua")));

/// `ratelimit_acquire_many.lua`: several requests on one token bucket, decided in order.
pub static RATELIMIT_ACQUIRE_MANY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "ratelimit_acquire_many",
        include_str!("ratelimit_acquire_many.lua"),
    )
});

/// `breaker.lua`: admit or record for a fleet-wide circuit breaker.
pub static BREAKER: LazyLock<Script> =
    LazyLock::new(|| Script::new("breaker", include_str!("breaker.lua")));

/// Every script, for preloading and tests.
pub fn all() -> [&'static Script; 14] {
    [
        &SERVER_TIME,
        &CACHE_SET_VERSIONED,
        &LOCK_ACQUIRE,
        &LOCK_RELEASE,
        &LOCK_EXTEND,
        &IDEM_BEGIN,
        &IDEM_COMMIT,
        &IDEM_FAIL,
        &SNAP_BEGIN,
        &SNAP_APPEND,
        &SNAP_PAGE,
        &RATELIMIT_ACQUIRE,
        &RATELIMIT_ACQUIRE_MANY,
        &BREAKER,
    ]
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_script_has_a_header_naming_keys_argv_and_return() {
        for s in super::all() {
            let src = s.source();
            assert!(src.starts_with(&format!("-- {}", s.name())), "{}", s.name());
            for word in ["KEYS[1]", "ARGV[1]", "Returns"] {
                assert!(src.contains(word), "{} header lacks {word}", s.name());
            }
            assert_eq!(s.sha1().len(), 40);
        }
    }
}

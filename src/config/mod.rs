//! The configuration tree.
//!
//! One serde tree ([`Config`]) read from TOML (or any serde format), durations written as
//! humantime strings (`"250ms"`, `"30s"`, `"24h"`). Every field has a documented default, so an
//! empty document is a valid configuration: embedded local mode with no resources.
//! [`Config::validate`] checks everything at start and names the offending field in the error
//! (`counters.orders.namespace`). The Redis URL is a [`RedisUrl`], whose `Debug` and `Display`
//! never show the password.
//!
//! ```
//! let cfg = forze_redis::Config::from_toml_str(r#"
//!     [redis]
//!     url = "redis://:s3cret@127.0.0.1:7000"
//!     command_timeout = "500ms"
//!
//!     [counters.orders]
//!     fallback = "local"
//! "#).unwrap();
//! assert!(!format!("{cfg:?}").contains("s3cret"));
//! ```

mod redis;
mod resources;
mod routing;
mod supervision;

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::keys::{KeyPrefix, Namespace};
pub use redis::{ReconnectConfig, RedisConfig, RedisUrl};
pub use resources::{
    BreakerConfig, CacheConfig, CounterConfig, Fallback, IdempotencyConfig, L1Config, LockConfig,
    RateLimitConfig, ResourceConfig, SnapshotConfig,
};
pub use routing::{RouteEndpoint, RoutingConfig};
pub use supervision::SupervisionConfig;

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Redis connection. Absent: embedded local mode, every contract on process-local state.
    pub redis: Option<RedisConfig>,
    /// First segment of every Redis key (default `forze`), so deployments can share a server.
    pub key_prefix: String,
    /// Restart and shutdown policy of the actor tree.
    pub supervision: SupervisionConfig,
    /// Counter resources by name.
    pub counters: BTreeMap<String, CounterConfig>,
    /// Cache namespaces by name.
    pub caches: BTreeMap<String, CacheConfig>,
    /// Distributed lock resources by name.
    pub locks: BTreeMap<String, LockConfig>,
    /// Idempotency record resources by name.
    pub idempotency: BTreeMap<String, IdempotencyConfig>,
    /// Search-result snapshot resources by name.
    pub snapshots: BTreeMap<String, SnapshotConfig>,
    /// Rate-limit policies by name.
    pub rate_limits: BTreeMap<String, RateLimitConfig>,
    /// Circuit-breaker policies by name.
    pub breakers: BTreeMap<String, BreakerConfig>,
    /// Tenant-routed endpoints, for resources with `routed = true`.
    pub routing: RoutingConfig,
    /// The local clock breakers and rate limiters read (the system clock; not configurable
    /// from a file). Tests inject a skewed one with [`Config::with_clock`].
    #[serde(skip)]
    pub clock: crate::clock::SharedClock,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            redis: None,
            key_prefix: "forze".into(),
            supervision: SupervisionConfig::default(),
            counters: BTreeMap::new(),
            caches: BTreeMap::new(),
            locks: BTreeMap::new(),
            idempotency: BTreeMap::new(),
            snapshots: BTreeMap::new(),
            rate_limits: BTreeMap::new(),
            breakers: BTreeMap::new(),
            routing: RoutingConfig::default(),
            clock: Default::default(),
        }
    }
}

impl Config {
    /// This configuration with another local clock for breakers and rate limiters (tests and
    /// drills: a replica whose clock is skewed).
    pub fn with_clock(mut self, clock: impl crate::clock::Clock + 'static) -> Self {
        self.clock = crate::clock::SharedClock(std::sync::Arc::new(clock));
        self
    }

    /// Parse and validate a TOML document. Errors name the offending field.
    pub fn from_toml_str(text: &str) -> Result<Self> {
        let de = toml::Deserializer::parse(text)
            .map_err(|e| Error::config("<document>", e.message().to_string()))?;
        let cfg: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            Error::config(path, e.into_inner().message().to_string())
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Read, parse and validate a TOML file.
    pub fn from_toml_file(path: impl AsRef<std::path::Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::config("<file>", format!("cannot read {}: {e}", path.display())))?;
        Self::from_toml_str(&text)
    }

    /// Check every field; the error names the first offending one.
    pub fn validate(&self) -> Result<()> {
        if let Some(redis) = &self.redis {
            redis.validate()?;
        }
        self.key_prefix()?;
        validate_name_prefix(&self.supervision.name_prefix)?;
        let s = &self.supervision;
        if s.restart_backoff_max < s.restart_backoff_min {
            return Err(Error::config(
                "supervision.restart_backoff_max",
                "must not be below supervision.restart_backoff_min",
            ));
        }
        if s.restart_window.is_zero() {
            return Err(Error::config(
                "supervision.restart_window",
                "must be greater than zero",
            ));
        }
        for (field, value) in [
            ("supervision.restart_backoff_min", s.restart_backoff_min),
            ("supervision.shutdown_timeout", s.shutdown_timeout),
        ] {
            if value.is_zero() {
                return Err(Error::config(field, "must be greater than zero"));
            }
        }
        if s.call_timeout.is_zero() {
            return Err(Error::config(
                "supervision.call_timeout",
                "must be greater than zero",
            ));
        }
        if self.routing.max_pools == 0 {
            return Err(Error::config("routing.max_pools", "must be at least 1"));
        }
        let template = self
            .redis
            .clone()
            .unwrap_or_else(|| RedisConfig::new("redis://127.0.0.1:6379"));
        for (tenant, endpoint) in &self.routing.tenants {
            crate::keys::TenantId::new(tenant.as_str())
                .map_err(|_| Error::config("routing.tenants", "a tenant name is not valid"))?;
            endpoint
                .redis_config(&template)
                .validate_endpoint(&format!("routing.tenants.{tenant}"))
                .map_err(|e| match e {
                    // The URL parser names `redis.url`: name the tenant's entry instead.
                    Error::Config { field, message } if field == "redis.url" => Error::config(
                        format!("routing.tenants.{tenant}"),
                        format!("the URL of tenant `{tenant}` is not valid: {message}"),
                    ),
                    other => other,
                })?;
        }
        self.validate_section(&self.counters)?;
        self.validate_section(&self.caches)?;
        self.validate_section(&self.breakers)?;
        self.validate_section(&self.rate_limits)?;
        self.validate_section(&self.snapshots)?;
        self.validate_section(&self.idempotency)?;
        self.validate_section(&self.locks)?;
        Ok(())
    }

    /// The rules every resource kind shares: a valid name, a namespace no other resource of
    /// the kind uses, and the kind's own checks.
    fn validate_section<C: ResourceConfig>(&self, section: &BTreeMap<String, C>) -> Result<()> {
        let kind = C::SECTION;
        let mut seen: BTreeMap<String, &str> = BTreeMap::new();
        for (name, c) in section {
            validate_resource_name(&format!("{kind}.{name}"), name)?;
            let ns = self.namespace(name, c)?;
            if let Some(other) = seen.insert(ns.as_str().to_string(), name) {
                return Err(Error::config(
                    format!("{kind}.{name}.namespace"),
                    format!("namespace `{ns}` is already used by {kind}.{other}"),
                ));
            }
            c.check(&|f| format!("{kind}.{name}.{f}"))?;
        }
        Ok(())
    }

    /// The validated namespace of the resource `name` of `c`'s kind (its name by default).
    #[doc(hidden)]
    pub fn namespace<C: ResourceConfig>(&self, name: &str, c: &C) -> Result<Namespace> {
        Namespace::parse(
            &format!("{}.{name}.namespace", C::SECTION),
            c.namespace_setting().unwrap_or(name),
        )
    }

    /// The validated key prefix.
    #[doc(hidden)]
    pub fn key_prefix(&self) -> Result<KeyPrefix> {
        KeyPrefix::parse("key_prefix", &self.key_prefix)
    }
}

fn validate_resource_name(field: &str, name: &str) -> Result<()> {
    // Resource names become actor names and default namespaces: same charset as namespaces.
    Namespace::parse(field, name).map(|_| ())
}

fn validate_name_prefix(prefix: &str) -> Result<()> {
    KeyPrefix::parse("supervision.name_prefix", prefix).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn empty_document_is_embedded_mode_with_defaults() {
        let cfg = Config::from_toml_str("").unwrap();
        assert!(cfg.redis.is_none());
        assert_eq!(cfg.key_prefix, "forze");
        assert_eq!(cfg.supervision.max_restarts, 10);
        assert_eq!(
            cfg.supervision.restart_backoff_min,
            Duration::from_millis(100)
        );
    }

    #[test]
    fn durations_are_humantime_strings() {
        let cfg = Config::from_toml_str(
            "[redis]\nurl = \"redis://127.0.0.1:7000\"\ncommand_timeout = \"250ms\"\n[supervision]\nrestart_window = \"2m\"",
        )
        .unwrap();
        let r = cfg.redis.unwrap();
        assert_eq!(r.command_timeout, Duration::from_millis(250));
        assert_eq!(r.pool_size, 4);
        assert_eq!(cfg.supervision.restart_window, Duration::from_secs(120));
    }

    #[test]
    fn errors_name_the_offending_field() {
        let cases = [
            (
                "[redis]\nurl = \"redis://h:1\"\ncommand_timeout = \"soon\"",
                "redis.command_timeout",
            ),
            (
                "[redis]\nurl = \"redis://h:1\"\npool_size = 0",
                "redis.pool_size",
            ),
            ("[redis]\nurl = \"nope://h\"", "redis.url"),
            (
                "[counters.orders]\nnamespace = \"a:b\"",
                "counters.orders.namespace",
            ),
            (
                "[counters.orders]\nfallback = \"maybe\"",
                "counters.orders.fallback",
            ),
            ("[counters.orders]\nbogus = 1", "counters.orders"),
            ("key_prefix = \"a{b\"", "key_prefix"),
            (
                "[counters.a]\nnamespace = \"x\"\n[counters.b]\nnamespace = \"x\"",
                "counters.b.namespace",
            ),
            (
                "[supervision]\nname_prefix = \"\"",
                "supervision.name_prefix",
            ),
        ];
        for (doc, field) in cases {
            let err = Config::from_toml_str(doc).unwrap_err();
            assert!(
                err.to_string().contains(field),
                "error for {doc:?} should name {field}: {err}"
            );
        }
    }

    #[test]
    fn passwords_never_show() {
        for url in [
            "redis://user:hunter2@host:6380/0",
            "redis://:hunter2@host:6380",
            "rediss://hunter2@host",
            "redis-sentinel://h:26379?sentinelServiceName=m&sentinelPassword=hunter2",
            // Unescaped separators inside the password.
            "redis://user:hun/ter2@host:6380/0",
            "redis://:hun?ter2@host",
            "redis://:hu@nter2@host:1/0",
            "redis://:hunter2#x@host",
            "redis-sentinel://h?sentinelPassword=hun&ter2&x=1",
        ] {
            let u = RedisUrl::new(url);
            for shown in [format!("{u:?}"), u.to_string()] {
                for secret in ["hunter2", "hun", "ter2", "nter2"] {
                    assert!(
                        !shown.contains(secret),
                        "{shown} shows part of the password"
                    );
                }
            }
        }
        let bad = Config::from_toml_str("[redis]\nurl = \"bogus://:hunter2@h\"").unwrap_err();
        assert!(!bad.to_string().contains("hunter2"), "{bad}");
        assert!(!format!("{bad:?}").contains("hunter2"), "{bad:?}");
    }

    #[test]
    fn example_file_parses() {
        let text = include_str!("../../examples/forze.toml");
        Config::from_toml_str(text).unwrap();
    }

    #[test]
    fn tls_is_accepted_only_by_a_build_that_can_honour_it() {
        for text in [
            "[redis]\nurl = \"rediss://:hunter2@127.0.0.1:7000\"",
            "[redis]\nurl = \"valkeys-cluster://127.0.0.1:7000\"",
            "[redis]\nurl = \"redis://127.0.0.1:7000\"\n[redis.tls]\nmin_version = \"1.3\"",
        ] {
            let r = Config::from_toml_str(text);
            if crate::tls::TLS_SUPPORTED {
                assert!(r.unwrap().redis.unwrap().uses_tls(), "{text}");
            } else {
                let e = r.unwrap_err();
                assert_eq!(e.kind(), crate::ErrorKind::Config, "{text}");
                assert!(e.to_string().contains("`tls` cargo feature"), "{e}");
                assert!(!e.to_string().contains("hunter2"), "{e}");
            }
        }
        let plain = Config::from_toml_str("[redis]\nurl = \"redis://127.0.0.1:7000\"").unwrap();
        assert!(!plain.redis.unwrap().uses_tls());
    }

    #[test]
    fn tls_settings_are_checked() {
        for (text, field) in [
            (
                "[redis]\nurl = \"redis+unix:///tmp/r.sock\"\n[redis.tls]\n",
                "redis",
            ),
            (
                "[redis]\nurl = \"rediss://h:1\"\n[redis.tls]\nmin_version = \"1.1\"",
                "redis.tls.min_version",
            ),
            (
                "[redis]\nurl = \"rediss://h:1\"\n[redis.tls]\nkey_file = \"/k.pem\"",
                "redis.tls.cert_file",
            ),
            (
                "[redis]\nurl = \"rediss://h:1\"\n[redis.tls]\nserver_name = \"a b\"",
                "redis.tls.server_name",
            ),
            (
                "[redis]\nurl = \"rediss://h:1\"\n[redis.tls]\nverify = false",
                "redis.tls",
            ),
            (
                "[redis]\nurl = \"rediss-sentinel://h:1?sentinelServiceName=s\"\n\
                 [redis.tls]\nserver_name = \"redis.internal\"",
                "redis.tls.server_name",
            ),
        ] {
            let e = Config::from_toml_str(text).unwrap_err();
            assert!(e.to_string().contains(field), "{text}: {e}");
        }
    }

    #[test]
    fn a_routed_endpoint_may_carry_its_own_tls_table() {
        let c = Config::from_toml_str(
            "[routing.tenants]\nacme = \"redis://h:1\"\n\
             beta = { url = \"rediss://:pw@h:2\", tls = { server_name = \"redis.beta\" } }",
        );
        if !crate::tls::TLS_SUPPORTED {
            assert!(c.is_err());
            return;
        }
        let c = c.unwrap();
        let beta = &c.routing.tenants["beta"];
        assert_eq!(
            beta.tls.as_ref().unwrap().server_name.as_deref(),
            Some("redis.beta")
        );
        assert!(!beta.same_as(&c.routing.tenants["acme"]));
        assert!(c.routing.tenants["acme"].tls.is_none());
    }
}

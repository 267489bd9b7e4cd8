//! The configuration tree.
//!
//! One serde tree ([`Config`]) read from TOML (or any serde format), durations written as
//! humantime strings (`"250ms"`, `"30s"`, `"24h"`). Every field but the choice of mode has a
//! documented default. The mode is never assumed: a configuration names a server
//! (`[redis] url`, or `REDIS_URL` in the environment) or chooses `mode = "embedded"`, since a
//! fleet whose replicas silently ran on process-local state would each count, lock and limit
//! alone. [`Config::validate`] checks everything at start and names the offending field in
//! the error (`counters.orders.namespace`). [`Config::load`] applies environment overrides of
//! any field (see [`ENV_PREFIX`]). The Redis URL is a [`RedisUrl`], whose `Debug`, `Display`
//! and serialized forms never show the password; [`Config::to_toml_redacted`] prints the
//! effective configuration.
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

mod env;
mod redis;
mod resources;
mod routing;
mod supervision;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::keys::{KeyPrefix, Namespace};
pub use env::ENV_PREFIX;
pub use redis::{ReconnectConfig, RedisConfig, RedisUrl};
pub use resources::{
    BreakerConfig, CacheConfig, CounterConfig, Fallback, IdempotencyConfig, L1Config, LockConfig,
    RateLimitConfig, ResourceConfig, SnapshotConfig,
};
pub use routing::{RouteEndpoint, RoutingConfig};
pub use supervision::SupervisionConfig;

/// Where the runtime keeps its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Mode {
    /// On the server `[redis]` names (the mode a `[redis]` table implies).
    Redis,
    /// Every contract on process-local state: development and single-process use. Replicas
    /// in this mode share nothing.
    Embedded,
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `"redis"` or `"embedded"`. Optional when `[redis]` is given (it implies `"redis"`);
    /// required otherwise: a configuration that names neither is refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<Mode>,
    /// Redis connection. Required unless `mode = "embedded"`.
    #[serde(skip_serializing_if = "Option::is_none")]
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
            mode: None,
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
    /// An empty configuration in embedded mode (every contract on process-local state), to
    /// which resources are added in code.
    pub fn embedded() -> Self {
        Config {
            mode: Some(Mode::Embedded),
            ..Config::default()
        }
    }

    /// The mode this configuration runs in (after [`Config::validate`] accepted it).
    pub fn effective_mode(&self) -> Mode {
        match (self.mode, &self.redis) {
            (Some(mode), _) => mode,
            (None, Some(_)) => Mode::Redis,
            (None, None) => Mode::Embedded,
        }
    }

    /// The effective configuration as TOML, every URL's password replaced by `***` (for
    /// logging at start or a `--print-config` flag).
    pub fn to_toml_redacted(&self) -> Result<String> {
        toml::to_string(self).map_err(|e| Error::config("<document>", format!("cannot print: {e}")))
    }

    /// This configuration with another local clock for breakers and rate limiters (tests and
    /// drills: a replica whose clock is skewed).
    pub fn with_clock(mut self, clock: impl crate::clock::Clock + 'static) -> Self {
        self.clock = crate::clock::SharedClock(std::sync::Arc::new(clock));
        self
    }

    /// Parse and validate a TOML document. Errors name the offending field. The environment
    /// is not read: see [`Config::load`].
    pub fn from_toml_str(text: &str) -> Result<Self> {
        Self::from_toml_and_vars(text, std::iter::empty::<(String, String)>())
    }

    /// Parse `text`, apply the overrides among `vars` (pairs as `std::env::vars()` gives them;
    /// see [`ENV_PREFIX`] for which are read and how), then validate.
    pub fn from_toml_and_vars<K, V>(
        text: &str,
        vars: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Self>
    where
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            Error::config("<document>", redis::redact_urls(e.message()))
        })?;
        env::apply(&mut table, vars)?;
        let cfg: Config =
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
                let path = e.path().to_string();
                // serde quotes the offending value: a URL given in the wrong place must not
                // show its password.
                Error::config(path, redis::redact_urls(e.into_inner().message()))
            })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The service configuration: the TOML file at `path` if given (else an empty document),
    /// with the process environment's overrides applied (see [`ENV_PREFIX`]), validated.
    pub fn load(path: Option<&std::path::Path>) -> Result<Self> {
        let text = match path {
            Some(path) => read_file(path)?,
            None => String::new(),
        };
        Self::from_toml_and_vars(&text, std::env::vars())
    }

    /// Read, parse and validate a TOML file.
    pub fn from_toml_file(path: impl AsRef<std::path::Path>) -> Result<Self> {
        Self::from_toml_str(&read_file(path.as_ref())?)
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
        // Last, so that a mistyped field is named before the missing choice of mode.
        match (self.mode, &self.redis) {
            (None, None) => {
                return Err(Error::config(
                    "mode",
                    "the configuration names no Redis server: set `[redis] url` (or the \
                     REDIS_URL environment variable) so that replicas share their state, or \
                     `mode = \"embedded\"` to run every contract on process-local state \
                     (development and single-process use only)",
                ))
            }
            (Some(Mode::Embedded), Some(_)) => {
                return Err(Error::config(
                    "mode",
                    "`mode = \"embedded\"` runs on process-local state, but `[redis]` names a \
                     server: remove one of them",
                ))
            }
            (Some(Mode::Redis), None) => {
                return Err(Error::config(
                    "redis.url",
                    "`mode = \"redis\"` needs `[redis] url` (or the REDIS_URL environment \
                     variable)",
                ))
            }
            _ => {}
        }
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

fn read_file(path: &std::path::Path) -> Result<String> {
    std::fs::read_to_string(path)
        .map_err(|e| Error::config("<file>", format!("cannot read {}: {e}", path.display())))
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
    fn empty_embedded_document_has_the_defaults() {
        let cfg = Config::from_toml_str("mode = \"embedded\"").unwrap();
        assert!(cfg.redis.is_none());
        assert_eq!(cfg.effective_mode(), Mode::Embedded);
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

    /// Sentinel credentials of their own would be ignored by the driver: refused, and the
    /// refusal does not echo them.
    #[test]
    fn sentinel_credentials_of_their_own_are_refused() {
        for param in [
            "sentinelPassword=s3cret",
            "sentinelUsername=admin&x=1",
            "SENTINELPASSWORD=s3cret",
        ] {
            let text = format!(
                "[redis]\nurl = \"redis-sentinel://:pw@h:26379?sentinelServiceName=m&{param}\""
            );
            let e = Config::from_toml_str(&text).unwrap_err().to_string();
            assert!(
                e.contains("redis.url") && e.contains("not supported"),
                "{e}"
            );
            assert!(!e.contains("s3cret") && !e.contains(":pw@"), "{e}");
        }
        Config::from_toml_str(
            "[redis]\nurl = \"redis-sentinel://:pw@h:26379?sentinelServiceName=m\"",
        )
        .unwrap();
    }

    /// Socket settings the kernel would refuse at every connect are refused at start.
    #[test]
    fn socket_settings_the_kernel_refuses_are_refused() {
        let with = |line: &str| {
            Config::from_toml_str(&format!("[redis]\nurl = \"redis://h:1\"\n{line}"))
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        for bad in ["500ms", "1500ms", "32768s", "1d"] {
            let e = with(&format!("tcp_keepalive = \"{bad}\"")).unwrap_err();
            assert!(e.contains("redis.tcp_keepalive"), "{bad}: {e}");
        }
        for good in ["0s", "1s", "30s", "32767s"] {
            with(&format!("tcp_keepalive = \"{good}\"")).unwrap();
        }
        let e = with("tcp_user_timeout = \"25d\"").unwrap_err();
        assert!(e.contains("redis.tcp_user_timeout"), "{e}");
        with("tcp_user_timeout = \"24d\"").unwrap();
        with("tcp_user_timeout = \"0s\"").unwrap();
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
            // The script's rate is permits per whole milliseconds.
            (
                "[rate_limits.api]\npermits = 3\nper = \"1ms 500us\"",
                "rate_limits.api.per",
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
            "mode = \"embedded\"\n[routing.tenants]\nacme = \"redis://h:1\"\n\
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

    #[test]
    fn a_config_naming_neither_a_server_nor_embedded_mode_is_refused() {
        for text in ["", "[counters.orders]", "key_prefix = \"svc\""] {
            let e = Config::from_toml_str(text).unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::Config, "{text}");
            let shown = e.to_string();
            assert!(shown.contains("mode"), "{shown}");
            assert!(
                shown.contains("REDIS_URL") && shown.contains("embedded"),
                "{shown}"
            );
        }
        let e = Config::from_toml_str("mode = \"embedded\"\n[redis]\nurl = \"redis://h:1\"")
            .unwrap_err();
        assert!(e.to_string().contains("remove one"), "{e}");
        let e = Config::from_toml_str("mode = \"redis\"").unwrap_err();
        assert!(e.to_string().contains("redis.url"), "{e}");
        let c = Config::from_toml_str("[redis]\nurl = \"redis://h:1\"").unwrap();
        assert_eq!(c.effective_mode(), Mode::Redis);
        assert_eq!(Config::embedded().effective_mode(), Mode::Embedded);
        Config::embedded().validate().unwrap();
    }

    #[test]
    fn environment_overrides_any_field() {
        let file = "mode = \"redis\"\n[redis]\nurl = \"redis://file:1\"\npool_size = 2\n\
                    [caches.users]\nttl = \"1m\"\n[counters.orders]";
        let c = Config::from_toml_and_vars(
            file,
            [
                ("FORZE__REDIS__POOL_SIZE", "8"),
                ("FORZE__REDIS__COMMAND_TIMEOUT", "250ms"),
                ("FORZE__CACHES__USERS__TTL", "10m"),
                ("FORZE__COUNTERS__ORDERS__FALLBACK", "local"),
                ("REDIS_URL", "redis://env:2"),
                ("HOME", "/root"),
            ],
        )
        .unwrap();
        let r = c.redis.as_ref().unwrap();
        assert_eq!(r.pool_size, 8);
        assert_eq!(r.command_timeout, Duration::from_millis(250));
        assert_eq!(r.url.redacted(), "redis://env:2");
        assert_eq!(c.caches["users"].ttl, Duration::from_secs(600));
        assert_eq!(c.counters["orders"].fallback, Fallback::Local);
        // REDIS_URL alone is a valid service configuration; FORZE__MODE chooses embedded.
        let c = Config::from_toml_and_vars("", [("REDIS_URL", "redis://h:1")]).unwrap();
        assert_eq!(c.effective_mode(), Mode::Redis);
        let c = Config::from_toml_and_vars("", [("FORZE__MODE", "embedded")]).unwrap();
        assert_eq!(c.effective_mode(), Mode::Embedded);
        // A variable that names no field is refused like an unknown key, naming the path.
        let e = Config::from_toml_and_vars(file, [("FORZE__REDIS__POOL_SIZ", "8")]).unwrap_err();
        assert!(e.to_string().contains("redis"), "{e}");
        let e =
            Config::from_toml_and_vars(file, [("FORZE__REDIS__POOL_SIZE", "many")]).unwrap_err();
        assert!(e.to_string().contains("redis.pool_size"), "{e}");
    }

    #[test]
    fn a_url_in_the_wrong_place_is_not_echoed_with_its_password() {
        let e =
            Config::from_toml_and_vars("", [("FORZE__REDIS", "redis://:hunter2@h:1")]).unwrap_err();
        let shown = e.to_string();
        assert!(
            shown.contains("redis") && !shown.contains("hunter2"),
            "{shown}"
        );
        assert_eq!(
            redis::redact_urls("a \"redis://u:pw@h:1/0\" and rediss://:x@y b"),
            "a \"redis://u:***@h:1/0\" and rediss://:***@y b"
        );
    }

    /// A password holding the characters that end a URL in prose (a quote, a space, a
    /// backtick, angle brackets) is hidden whole, however the message quotes it.
    #[test]
    fn a_password_with_quotes_or_spaces_is_not_echoed() {
        for password in [
            "Tr0ub4dor'3",
            "a b c",
            "x\"y",
            "p`q",
            "l<m>n",
            "back\\slash\"",
        ] {
            let url = format!("redis://:{password}@h:6379");
            let e = Config::from_toml_and_vars("", [("FORZE__REDIS", url.as_str())]).unwrap_err();
            let shown = e.to_string();
            for part in password.split(['\'', ' ', '"', '`', '<', '>', '\\']) {
                assert!(
                    part.len() < 2 || !shown.contains(part),
                    "{password:?} leaked {part:?}: {shown}"
                );
            }
            let e = Config::from_toml_str(&format!("redis = {:?}", url)).unwrap_err();
            let shown = e.to_string();
            for part in password.split(['\'', ' ', '"', '`', '<', '>', '\\']) {
                assert!(
                    part.len() < 2 || !shown.contains(part),
                    "{password:?} leaked {part:?}: {shown}"
                );
            }
        }
        let sentinel = "redis-sentinel://h:26379?sentinelServiceName=m&sentinelPassword=a'bcd efg";
        let shown = redis::redact_urls(&format!("unquoted {sentinel} then more"));
        assert!(!shown.contains("bcd") && !shown.contains("efg"), "{shown}");
        // Quoted as serde quotes values: the message around the URL stays readable.
        assert_eq!(
            redis::redact_urls("invalid type: string \"redis://:a'b c@h:1\", expected struct"),
            "invalid type: string \"redis://:***@h:1\", expected struct"
        );
    }

    #[test]
    fn the_effective_configuration_prints_redacted_and_reads_back() {
        let text = "[redis]\nurl = \"redis://user:hunter2@h:1/0\"\ncommand_timeout = \"250ms\"\n\
                    [redis.tls]\nserver_name = \"r.internal\"\nmin_version = \"1.3\"\n\
                    [caches.users]\nttl = \"10m\"\nl1 = { max_entries = 5 }\n\
                    [locks.jobs]\nlease = \"30s\"\n\
                    [routing.tenants]\nacme = \"redis://:pw2@h:2\"";
        let parsed = Config::from_toml_str(text);
        if !crate::tls::TLS_SUPPORTED {
            // A build without TLS refuses the table (tested above).
            assert!(parsed.is_err());
            return;
        }
        let c = parsed.unwrap();
        let printed = c.to_toml_redacted().unwrap();
        assert!(
            !printed.contains("hunter2") && !printed.contains("pw2"),
            "{printed}"
        );
        assert!(printed.contains("***"), "{printed}");
        let back = Config::from_toml_str(&printed).unwrap();
        let r = back.redis.unwrap();
        assert_eq!(r.command_timeout, Duration::from_millis(250));
        assert_eq!(r.tls.unwrap().min_version, crate::tls::TlsVersion::V1_3);
        assert_eq!(back.caches["users"].l1.as_ref().unwrap().max_entries, 5);
        assert_eq!(back.locks["jobs"].lease, Duration::from_secs(30));
        assert_eq!(back.routing.tenants.len(), 1);
        assert_eq!(
            Config::embedded()
                .to_toml_redacted()
                .unwrap()
                .lines()
                .next(),
            Some("mode = \"embedded\"")
        );
    }
}

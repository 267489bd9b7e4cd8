//! `[redis]`: the connection, its reconnect policy, and the URL whose password never shows.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};
use crate::tls::TlsConfig;

/// The Redis connection.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://`, `rediss://`, `redis-cluster://`, `redis-sentinel://`, `redis+unix://` (and
    /// the `valkey…` spellings). Required.
    pub url: RedisUrl,
    /// Connections in the pool (default 4).
    #[serde(default = "defaults::pool_size")]
    pub pool_size: usize,
    /// Time allowed to open one connection (default 2 s).
    #[serde(default = "defaults::connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Per-command time limit (default 1 s). A write that exceeds it is `OutcomeUnknown`.
    #[serde(default = "defaults::command_timeout", with = "humantime_serde")]
    pub command_timeout: Duration,
    /// After a command times out, each connection is sent a `PING`; a client with one
    /// unanswered this long is reconnected (default 2 s). This is what detects a black-holed
    /// peer; keep it above the slowest legitimate command.
    #[serde(default = "defaults::unresponsive_timeout", with = "humantime_serde")]
    pub unresponsive_timeout: Duration,
    /// How often the pool actor probes connection health with `PING` (default 500 ms).
    #[serde(default = "defaults::health_interval", with = "humantime_serde")]
    pub health_interval: Duration,
    /// Reconnect backoff.
    #[serde(default)]
    pub reconnect: ReconnectConfig,
    /// TCP keepalive idle time (default 30 s); `"0s"` disables it.
    #[serde(default = "defaults::tcp_keepalive", with = "humantime_serde")]
    pub tcp_keepalive: Duration,
    /// Linux `TCP_USER_TIMEOUT` (default 10 s); `"0s"` disables it.
    #[serde(default = "defaults::tcp_user_timeout", with = "humantime_serde")]
    pub tcp_user_timeout: Duration,
    /// Set `TCP_NODELAY` (default `false`, fred's default). fred already batches queued
    /// commands into one flush; leaving Nagle on lets the kernel coalesce the flushes of many
    /// concurrent callers too (about 20 % more throughput at 64 callers on loopback), at the
    /// cost of up to one round trip of added latency for a write sent while another is
    /// unacknowledged. Set `true` for latency-sensitive, low-concurrency services.
    #[serde(default)]
    pub tcp_nodelay: bool,
    /// `CLIENT SETNAME` of every connection (default `forze`).
    #[serde(default = "defaults::client_name")]
    pub client_name: String,
    /// Let the driver emit its own span per command (at `INFO`, under our operation spans):
    /// the time a command spent queued, written and awaited. Off by default: one more span
    /// per command (default `false`).
    #[serde(default)]
    pub driver_tracing: bool,
    /// `[redis.tls]`: TLS settings. A `rediss://`/`valkeys://` URL turns TLS on with the
    /// defaults (platform roots, TLS 1.2 or later); this table turns it on for any TCP URL and
    /// sets the CA bundle, the client certificate for mutual TLS, a server-name override and
    /// the minimum version. See `docs/operations.md`.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
}

/// Reconnect backoff of the connection pool: exponential, jittered, forever by default.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReconnectConfig {
    /// First delay (default 100 ms).
    #[serde(with = "humantime_serde")]
    pub min_delay: Duration,
    /// Largest delay (default 5 s).
    #[serde(with = "humantime_serde")]
    pub max_delay: Duration,
    /// Random jitter added to each delay (default 50 ms).
    #[serde(with = "humantime_serde")]
    pub jitter: Duration,
    /// Attempts in one run of fred's reconnect loop; 0 = unbounded (default 0). When a run
    /// gives up, the connection task is started again after the backoff (see
    /// `RedisConnection::connect_in_background`): the pool itself never gives up, it only
    /// pauses, since a service that outlives a Redis outage must find Redis again.
    pub max_attempts: u32,
}

impl Default for ReconnectConfig {
    fn default() -> Self {
        ReconnectConfig {
            min_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
            jitter: Duration::from_millis(50),
            max_attempts: 0,
        }
    }
}

mod defaults {
    use std::time::Duration;
    pub fn pool_size() -> usize {
        4
    }
    pub fn connect_timeout() -> Duration {
        Duration::from_secs(2)
    }
    pub fn command_timeout() -> Duration {
        Duration::from_secs(1)
    }
    pub fn unresponsive_timeout() -> Duration {
        Duration::from_secs(2)
    }
    pub fn health_interval() -> Duration {
        Duration::from_millis(500)
    }
    pub fn tcp_keepalive() -> Duration {
        Duration::from_secs(30)
    }
    pub fn tcp_user_timeout() -> Duration {
        Duration::from_secs(10)
    }
    pub fn client_name() -> String {
        "forze".into()
    }
}

impl RedisConfig {
    /// A configuration for `url` with every other field at its default.
    pub fn new(url: impl Into<String>) -> Self {
        RedisConfig {
            url: RedisUrl::new(url),
            pool_size: defaults::pool_size(),
            connect_timeout: defaults::connect_timeout(),
            command_timeout: defaults::command_timeout(),
            unresponsive_timeout: defaults::unresponsive_timeout(),
            health_interval: defaults::health_interval(),
            reconnect: ReconnectConfig::default(),
            tcp_keepalive: defaults::tcp_keepalive(),
            tcp_user_timeout: defaults::tcp_user_timeout(),
            tcp_nodelay: false,
            client_name: defaults::client_name(),
            driver_tracing: false,
            tls: None,
        }
    }

    /// Whether connections are encrypted: the URL's scheme says so, or `[redis.tls]` is set.
    pub fn uses_tls(&self) -> bool {
        self.url.has_tls_scheme() || self.tls.is_some()
    }

    /// The TLS settings in force: `[redis.tls]`, or the defaults for a TLS URL without it.
    pub fn tls_settings(&self) -> Option<TlsConfig> {
        match &self.tls {
            Some(t) => Some(t.clone()),
            None if self.url.has_tls_scheme() => Some(TlsConfig::default()),
            None => None,
        }
    }

    /// Validate the URL and the TLS settings of one endpoint (`field` names its table).
    pub(crate) fn validate_endpoint(&self, field: &str) -> Result<()> {
        let fred = self.url.to_fred_config()?;
        if self.uses_tls() {
            if matches!(fred.server, fred::types::config::ServerConfig::Unix { .. }) {
                return Err(Error::config(
                    field,
                    "TLS is not available over a unix socket; use a TCP URL",
                ));
            }
            if let Some(t) = &self.tls {
                t.validate(&format!("{field}.tls"))?;
                // fred verifies the primary that sentinels name by its announced address and
                // offers no name mapping for it: a name override could never be honoured.
                if t.server_name.is_some()
                    && matches!(
                        fred.server,
                        fred::types::config::ServerConfig::Sentinel { .. }
                    )
                {
                    return Err(Error::config(
                        format!("{field}.tls.server_name"),
                        "not supported behind Sentinel: the primary is verified by the address \
                         the sentinels announce, so its certificate must carry that address",
                    ));
                }
            }
        }
        crate::tls::refuse_unsupported(self.uses_tls(), crate::tls::TLS_SUPPORTED, field)
    }

    pub(crate) fn validate(&self) -> Result<()> {
        self.validate_endpoint("redis")?;
        if self.pool_size == 0 || self.pool_size > 256 {
            return Err(Error::config(
                "redis.pool_size",
                "must be between 1 and 256",
            ));
        }
        for (field, d) in [
            ("redis.connect_timeout", self.connect_timeout),
            ("redis.command_timeout", self.command_timeout),
            ("redis.unresponsive_timeout", self.unresponsive_timeout),
            ("redis.health_interval", self.health_interval),
            ("redis.reconnect.min_delay", self.reconnect.min_delay),
        ] {
            if d.is_zero() {
                return Err(Error::config(field, "must be greater than zero"));
            }
        }
        // The kernel refuses a keepalive idle time outside 1 to 32767 whole seconds, and a
        // user timeout of 2^31 ms or more: every connect would fail, long after validation.
        let keepalive = self.tcp_keepalive;
        if !keepalive.is_zero()
            && (keepalive.subsec_nanos() != 0 || !(1..=32_767).contains(&keepalive.as_secs()))
        {
            return Err(Error::config(
                "redis.tcp_keepalive",
                "must be 0s (off) or a whole number of seconds from 1s to 32767s",
            ));
        }
        if self.tcp_user_timeout.as_millis() > i32::MAX as u128 {
            return Err(Error::config(
                "redis.tcp_user_timeout",
                "must be below 2^31 ms (about 24 days)",
            ));
        }
        if self.reconnect.max_delay < self.reconnect.min_delay {
            return Err(Error::config(
                "redis.reconnect.max_delay",
                "must not be below redis.reconnect.min_delay",
            ));
        }
        if self.client_name.is_empty()
            || !self
                .client_name
                .chars()
                .all(|c| c.is_ascii_graphic() && c != ' ')
        {
            return Err(Error::config(
                "redis.client_name",
                "must be non-empty printable ASCII without spaces",
            ));
        }
        Ok(())
    }
}

/// The URL schemes fred understands.
const SCHEMES: &[&str] = &[
    "redis",
    "rediss",
    "valkey",
    "valkeys",
    "redis-cluster",
    "rediss-cluster",
    "valkey-cluster",
    "valkeys-cluster",
    "redis-sentinel",
    "rediss-sentinel",
    "valkey-sentinel",
    "valkeys-sentinel",
    "redis+unix",
    "valkey+unix",
];

/// A Redis URL whose password never shows in `Debug` or `Display`.
#[derive(Clone)]
pub struct RedisUrl(String);

impl RedisUrl {
    /// Wrap a URL.
    pub fn new(url: impl Into<String>) -> Self {
        RedisUrl(url.into())
    }

    /// The URL as written, password included: for keying pools only, never for output.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with any password replaced by `***`.
    pub fn redacted(&self) -> String {
        redact_url(&self.0)
    }

    /// The first server the URL names, as `(host, port)`, for the `server.address` and
    /// `server.port` of spans; a Unix socket gives its path and no port. Read from the
    /// driver's own parse of the URL, which keeps the credentials apart (a password holding
    /// `@`, `/` or `?`, a sentinel password in the query), so they never reach a span.
    #[doc(hidden)]
    pub fn server_address(&self) -> Option<(String, Option<u16>)> {
        use fred::types::config::ServerConfig;
        let first = |hosts: &[fred::types::config::Server]| {
            hosts.first().map(|s| (s.host.to_string(), Some(s.port)))
        };
        match self.to_fred_config().ok()?.server {
            ServerConfig::Centralized { server } => {
                Some((server.host.to_string(), Some(server.port)))
            }
            ServerConfig::Clustered { hosts, .. } => first(&hosts),
            ServerConfig::Sentinel { hosts, .. } => first(&hosts),
            ServerConfig::Unix { path } => Some((path.display().to_string(), None)),
        }
    }

    /// Whether the scheme asks for TLS (`rediss`, `valkeys` and their cluster and sentinel
    /// forms).
    pub fn has_tls_scheme(&self) -> bool {
        let scheme = self.0.split_once("://").map(|(s, _)| s).unwrap_or("");
        scheme.starts_with("rediss") || scheme.starts_with("valkeys")
    }

    /// The fred configuration for this URL's servers and credentials, **without TLS**: the
    /// TLS settings are applied by `connection` from `[redis.tls]` and the scheme, so this is
    /// never used alone to open a connection. RESP2: see `connection`. Errors never contain
    /// the URL.
    pub(crate) fn to_fred_config(&self) -> Result<fred::types::config::Config> {
        let (scheme, rest) = self.0.split_once("://").unwrap_or(("", ""));
        if !SCHEMES.contains(&scheme) {
            return Err(Error::config(
                "redis.url",
                format!(
                    "unsupported scheme `{scheme}`; expected one of {}",
                    SCHEMES.join(", ")
                ),
            ));
        }
        // Credentials of their own for the sentinels would be ignored (they are contacted
        // with the URL's credentials): refused, never silently dropped.
        if let Some((_, query)) = rest.split_once('?') {
            let ignored = query.split('&').find_map(|kv| {
                let name = kv.split_once('=').map_or(kv, |(k, _)| k);
                ["sentinelUsername", "sentinelPassword"]
                    .into_iter()
                    .find(|p| p.eq_ignore_ascii_case(name))
            });
            if let Some(param) = ignored {
                return Err(Error::config(
                    "redis.url",
                    format!(
                        "`{param}` is not supported: the sentinels are contacted with the \
                         URL's own user and password"
                    ),
                ));
            }
        }
        // fred would build its own TLS connector from a TLS scheme (or, without a TLS feature,
        // warn and connect in clear): parse the plain form and let `connection` decide.
        let plain = scheme
            .replacen("rediss", "redis", 1)
            .replacen("valkeys", "valkey", 1);
        let mut cfg =
            fred::types::config::Config::from_url(&format!("{plain}://{rest}")).map_err(|e| {
                // fred's message may quote the URL: report only the error kind and the
                // redacted URL.
                Error::config(
                    "redis.url",
                    format!("cannot parse {} ({:?})", self.redacted(), e.kind()),
                )
            })?;
        // The pool never needs pushes (the tracking subscriber owns its own RESP3
        // connection), and RESP2 replies are cheaper for fred to parse.
        cfg.version = fred::types::RespVersion::RESP2;
        Ok(cfg)
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedisUrl({})", self.redacted())
    }
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Serialized redacted: printing the effective configuration never shows the password.
impl Serialize for RedisUrl {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.redacted())
    }
}

impl<'de> Deserialize<'de> for RedisUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        Ok(RedisUrl(String::deserialize(d)?))
    }
}

/// `text` with every URL in it redacted (for error messages that may quote a value, such as a
/// URL given where a table was expected).
///
/// A password may hold any character, the ones that usually end a URL in prose included, so a
/// URL's end is never searched for inside its secrets: a URL quoted as a Rust string literal
/// (`"…"`, as serde quotes values) ends at its closing quote; any other ends at a boundary
/// character, but never before its last `@` (its credentials) and, once a `password`
/// parameter begins, not before the next URL or the end of the text. Hiding too much is the
/// price of never hiding too little.
pub(crate) fn redact_urls(text: &str) -> String {
    let boundary = |c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '`' | '<' | '>');
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let start = rest[..at]
            .char_indices()
            .rev()
            .find(|&(_, c)| boundary(c))
            .map_or(0, |(i, c)| i + c.len_utf8());
        let end = if rest[..start].ends_with('"') {
            closing_quote(rest, at)
        } else {
            // Up to the next URL: what an `@` or a password parameter there belongs to.
            let region = rest[at + 3..]
                .find("://")
                .map_or(rest.len(), |i| at + 3 + i);
            let secret_from = rest[at..region].rfind('@').map_or(at, |i| at + i);
            if rest[at..region].to_ascii_lowercase().contains("password=") {
                region
            } else {
                rest[secret_from..]
                    .find(boundary)
                    .map_or(rest.len(), |i| secret_from + i)
            }
        };
        out.push_str(&rest[..start]);
        out.push_str(&redact_url(&rest[start..end]));
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// Where the string literal that holds byte `from` of `text` closes: the first `"` after it
/// that no backslash escapes (the end of `text` if none).
fn closing_quote(text: &str, from: usize) -> usize {
    let mut escaped = false;
    for (i, c) in text[from..].char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => return from + i,
            _ => {}
        }
    }
    text.len()
}

/// Replace the password of `scheme://user:password@host…` and of query parameters whose
/// name contains `password` with `***`.
fn redact_url(url: &str) -> String {
    let mut out = url.to_string();
    if let Some(scheme_end) = out.find("://") {
        let auth_start = scheme_end + 3;
        // The last `@` ends the credentials even when an unescaped password holds `/`, `?`,
        // `#` or `@`. An `@` further on (in the query) only makes us hide more, never less.
        if let Some(at) = out[auth_start..].rfind('@') {
            let at = auth_start + at;
            if let Some(colon) = out[auth_start..at].find(':') {
                out.replace_range(auth_start + colon + 1..at, "***");
            } else if at > auth_start {
                // `redis://secret@host` is a password without a user.
                out.replace_range(auth_start..at, "***");
            }
        }
    }
    if let Some(q) = out.find('?') {
        let (head, query) = out.split_at(q + 1);
        // Everything after a password parameter is hidden too: an unescaped `&` in the
        // password would otherwise leak its tail as another "parameter".
        let mut hiding = false;
        let redacted: Vec<String> = query
            .split('&')
            .map(|kv| match kv.split_once('=') {
                _ if hiding => "***".to_string(),
                Some((k, _)) if k.to_ascii_lowercase().contains("password") => {
                    hiding = true;
                    format!("{k}=***")
                }
                _ => kv.to_string(),
            })
            .collect();
        out = format!("{head}{}", redacted.join("&"));
    }
    out
}

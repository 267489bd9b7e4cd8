//! `[routing]`: which tenants live on their own endpoint.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::redis::{RedisConfig, RedisUrl};
use crate::tls::TlsConfig;

/// Tenant routing (`[routing]`): which tenants live on their own endpoint.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// Endpoint pools kept open at most; the least recently used is closed beyond it
    /// (default 16).
    pub max_pools: usize,
    /// Tenant → endpoint: a URL (any `redis.url` form), or a table `{ url = "…", tls = {…} }`
    /// for an endpoint whose TLS settings differ from `[redis.tls]`. Tenants with the same
    /// endpoint share a pool. Connection settings other than the URL and TLS come from
    /// `[redis]` (or its defaults); an endpoint without its own `tls` uses `[redis.tls]`.
    pub tenants: BTreeMap<String, RouteEndpoint>,
}

/// Where a routed tenant's data lives: a URL and, where they differ from `[redis.tls]`, its
/// own TLS settings.
#[derive(Debug, Clone)]
pub struct RouteEndpoint {
    /// The endpoint's URL.
    pub url: RedisUrl,
    /// TLS settings of this endpoint; `None` uses `[redis.tls]`.
    pub tls: Option<TlsConfig>,
}

impl RouteEndpoint {
    /// Whether `other` is the same endpoint: same URL (credentials included) and same TLS
    /// settings. Same endpoints share a pool.
    #[doc(hidden)]
    pub fn same_as(&self, other: &RouteEndpoint) -> bool {
        self.url.expose() == other.url.expose() && self.tls == other.tls
    }

    /// The connection settings of this endpoint: `template` with its URL and TLS. Without
    /// its own `tls`, the endpoint is encrypted as `[redis]` is, also when `[redis]` asks for
    /// TLS by its URL's scheme alone: no routed tenant connects in clear beside an encrypted
    /// main server.
    #[doc(hidden)]
    pub fn redis_config(&self, template: &RedisConfig) -> RedisConfig {
        let mut cfg = template.clone();
        cfg.url = self.url.clone();
        // `server_name` names `[redis]`'s server: another endpoint is verified as its own host
        // unless its own table says otherwise.
        cfg.tls = self.tls.clone().or_else(|| {
            template.tls_settings().map(|mut t| {
                t.server_name = None;
                t
            })
        });
        cfg
    }
}

impl From<RedisUrl> for RouteEndpoint {
    fn from(url: RedisUrl) -> Self {
        RouteEndpoint { url, tls: None }
    }
}

impl<'de> Deserialize<'de> for RouteEndpoint {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Table {
            url: RedisUrl,
            #[serde(default)]
            tls: Option<TlsConfig>,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Url(RedisUrl),
            Table(Table),
        }
        Ok(match Form::deserialize(d)? {
            Form::Url(url) => RouteEndpoint { url, tls: None },
            Form::Table(t) => RouteEndpoint {
                url: t.url,
                tls: t.tls,
            },
        })
    }
}

/// Written as a table, its URL redacted (for printing the effective configuration).
impl Serialize for RouteEndpoint {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut t = s.serialize_struct("RouteEndpoint", 2)?;
        t.serialize_field("url", &self.url)?;
        if let Some(tls) = &self.tls {
            t.serialize_field("tls", tls)?;
        }
        t.end()
    }
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            max_pools: 16,
            tenants: BTreeMap::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    // A build without TLS refuses a `rediss://` configuration outright.
    #[cfg(feature = "tls")]
    #[test]
    fn a_routed_endpoint_is_encrypted_when_the_main_server_is() {
        // TLS by the main URL's scheme alone (no `[redis.tls]`): a bare tenant URL is
        // encrypted too, with the default settings.
        let cfg = crate::Config::from_toml_str(
            "[redis]\nurl = \"rediss://main:6380\"\n[routing.tenants]\nacme = \"redis://10.0.0.7\"",
        )
        .unwrap();
        let main = cfg.redis.as_ref().unwrap();
        let acme = cfg.routing.tenants["acme"].redis_config(main);
        assert!(acme.uses_tls());
        assert_eq!(acme.tls_settings(), Some(crate::tls::TlsConfig::default()));
        // A plaintext main server leaves a plaintext tenant in clear, as configured.
        let cfg = crate::Config::from_toml_str(
            "[redis]\nurl = \"redis://main\"\n[routing.tenants]\nacme = \"redis://10.0.0.7\"",
        )
        .unwrap();
        let acme = cfg.routing.tenants["acme"].redis_config(cfg.redis.as_ref().unwrap());
        assert!(!acme.uses_tls());
    }

    /// `[redis.tls]`'s `server_name` names the main server: a tenant that inherits the table
    /// is verified as its own host, and keeps the rest (its CA, its minimum version).
    #[cfg(feature = "tls")]
    #[test]
    fn a_routed_endpoint_does_not_inherit_the_main_server_name() {
        let cfg = crate::Config::from_toml_str(
            "[redis]\nurl = \"rediss://10.0.0.1:6380\"\n\
             [redis.tls]\nserver_name = \"main.internal\"\nmin_version = \"1.3\"\n\
             [routing.tenants]\nacme = \"rediss://acme.internal\"\n\
             beta = { url = \"rediss://10.0.0.9\", tls = { server_name = \"beta.internal\" } }",
        )
        .unwrap();
        let main = cfg.redis.as_ref().unwrap();
        let acme = cfg.routing.tenants["acme"].redis_config(main).tls.unwrap();
        assert_eq!(acme.server_name, None);
        assert_eq!(acme.min_version, main.tls.as_ref().unwrap().min_version);
        let beta = cfg.routing.tenants["beta"].redis_config(main).tls.unwrap();
        assert_eq!(beta.server_name.as_deref(), Some("beta.internal"));
    }
}

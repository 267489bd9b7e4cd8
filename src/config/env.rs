//! Environment overrides of any configuration field.

use crate::error::{Error, Result};

/// Prefix of the environment variables that override configuration fields.
///
/// `FORZE__` followed by the field's path, its segments joined by `__` and lowercased when
/// applied: `FORZE__REDIS__COMMAND_TIMEOUT=250ms` sets `redis.command_timeout`,
/// `FORZE__CACHES__USERS__TTL=10m` sets `caches.users.ttl`, `FORZE__MODE=embedded` chooses
/// embedded mode. (Resource names with capitals cannot be reached this way.)
///
/// A value is read as a TOML value when it parses as one (`4`, `true`, `"text"`,
/// `["a", "b"]`) and as a string otherwise (`250ms`, `redis://host:6380`); quote a string
/// that looks like a number (`'"123"'`). A variable that names no field is refused like an
/// unknown key in the file, so a typo never goes unnoticed.
///
/// `REDIS_URL`, the conventional variable, sets `redis.url` unless `FORZE__REDIS__URL` is
/// also set (which wins), the configuration chooses `mode = "embedded"` (an explicit choice
/// is not overturned by a variable the platform may inject), or it is empty.
///
/// An override changes a resource's fields; it never adds one: `FORZE__CACHES__USRES__TTL`
/// names a cache the document does not define and is refused (so are route entries of
/// `routing.tenants`).
pub const ENV_PREFIX: &str = "FORZE__";

/// Tables whose keys are names the user chose (resources, tenants): an override may change an
/// entry, never add one, so a mistyped name is refused instead of creating a resource.
const NAMED_ENTRIES: [&[&str]; 8] = [
    &["counters"],
    &["caches"],
    &["locks"],
    &["idempotency"],
    &["snapshots"],
    &["rate_limits"],
    &["breakers"],
    &["routing", "tenants"],
];

/// The conventional variable for the server's URL.
const REDIS_URL: &str = "REDIS_URL";

/// Apply the overrides among `vars` to the parsed document `table`.
pub(super) fn apply<K, V>(
    table: &mut toml::Table,
    vars: impl IntoIterator<Item = (K, V)>,
) -> Result<()>
where
    K: AsRef<str>,
    V: AsRef<str>,
{
    let encrypted_before = encrypted_connections(table);
    let mut overrides: Vec<(Vec<String>, String)> = Vec::new();
    let mut redis_url = None;
    for (name, value) in vars {
        let (name, value) = (name.as_ref(), value.as_ref());
        if name == REDIS_URL {
            redis_url = Some(value.to_string());
        } else if let Some(path) = name.strip_prefix(ENV_PREFIX) {
            let path: Vec<String> = path.split("__").map(str::to_ascii_lowercase).collect();
            if path.iter().any(String::is_empty) {
                return Err(Error::config(
                    name,
                    "an override names a field path: segments joined by `__`, none empty",
                ));
            }
            overrides.push((path, value.to_string()));
        }
    }
    let explicit_url = overrides.iter().any(|(p, _)| p == &["redis", "url"]);
    // Sorted, so that the outcome never depends on the environment's order.
    overrides.sort();
    for (path, value) in overrides {
        let name = format!("{ENV_PREFIX}{}", path.join("__").to_ascii_uppercase());
        refuse_new_entries(table, &path, &name)?;
        set(table, &path, parse_value(&value), &name)?;
    }
    let embedded = table.get("mode").and_then(toml::Value::as_str) == Some("embedded");
    match redis_url {
        Some(url) if !explicit_url && !embedded && !url.trim().is_empty() => {
            // The URL is a string whatever it looks like.
            let path = ["redis".to_string(), "url".to_string()];
            set(table, &path, toml::Value::String(url), REDIS_URL)?;
        }
        _ => {}
    }
    // The environment may change a connection, never strip its encryption: a plaintext
    // `REDIS_URL` injected by a platform, or a tenant's table replaced by a bare URL (losing
    // its `tls`), would otherwise connect in clear where the file asks for TLS.
    let encrypted_after = encrypted_connections(table);
    if let Some(lost) = encrypted_before
        .iter()
        .find(|c| !encrypted_after.contains(*c))
    {
        return Err(Error::config(
            lost.clone(),
            "an environment override would connect in plaintext where the configuration asks \
             for TLS: give a TLS URL (rediss://, valkeys://), or override the `url` field alone",
        ));
    }
    Ok(())
}

/// The connections of `table` that are encrypted, by config path: `redis` when its URL has a
/// TLS scheme or `[redis.tls]` is set, and each routed tenant whose own URL or `tls` asks for
/// it. (A tenant also inherits `[redis]`'s TLS; that is covered by `redis` itself.)
fn encrypted_connections(table: &toml::Table) -> Vec<String> {
    let tls_url = |v: Option<&toml::Value>| {
        v.and_then(toml::Value::as_str).is_some_and(|url| {
            let scheme = url.split_once("://").map_or("", |(s, _)| s);
            scheme.starts_with("rediss") || scheme.starts_with("valkeys")
        })
    };
    let endpoint = |v: &toml::Value| match v {
        toml::Value::Table(t) => tls_url(t.get("url")) || t.contains_key("tls"),
        other => tls_url(Some(other)),
    };
    let mut out = Vec::new();
    if let Some(redis) = table.get("redis") {
        if endpoint(redis) {
            out.push("redis".to_string());
        }
    }
    let tenants = table
        .get("routing")
        .and_then(|r| r.get("tenants"))
        .and_then(toml::Value::as_table);
    for (name, route) in tenants.into_iter().flatten() {
        if endpoint(route) {
            out.push(format!("routing.tenants.{name}"));
        }
    }
    out
}

/// Refuse an override of `path` that would add an entry to a table of named entries.
fn refuse_new_entries(table: &toml::Table, path: &[String], var: &str) -> Result<()> {
    for named in NAMED_ENTRIES {
        let depth = named.len();
        if path.len() <= depth || !path.iter().zip(named.iter()).all(|(a, b)| a == b) {
            continue;
        }
        let mut at = Some(table);
        for segment in named {
            at = at
                .and_then(|t| t.get(*segment))
                .and_then(toml::Value::as_table);
        }
        let entry = &path[depth];
        if !at.is_some_and(|t| t.contains_key(entry)) {
            return Err(Error::config(
                var,
                format!(
                    "`{}.{entry}` is not in the configuration: an override changes an entry, \
                     it never adds one (names are lowercased when applied)",
                    named.join(".")
                ),
            ));
        }
    }
    Ok(())
}

/// A TOML value when `text` is one, else the string itself.
fn parse_value(text: &str) -> toml::Value {
    match format!("v = {text}").parse::<toml::Table>() {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(text.into())),
        Err(_) => toml::Value::String(text.to_string()),
    }
}

/// Set `path` in `table` to `value`, creating the tables on the way.
fn set(table: &mut toml::Table, path: &[String], value: toml::Value, var: &str) -> Result<()> {
    let (last, parents) = path.split_last().expect("a path has a segment");
    let mut at = table;
    for (depth, segment) in parents.iter().enumerate() {
        let entry = at
            .entry(segment.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        at = match entry {
            toml::Value::Table(t) => t,
            _ => {
                return Err(Error::config(
                    var,
                    format!("`{}` is not a table", path[..=depth].join(".")),
                ))
            }
        };
    }
    at.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_override_never_strips_encryption() {
        let file = r#"
[redis]
url = "rediss://main:6380"
[routing.tenants]
acme = { url = "redis://10.0.0.7", tls = { server_name = "acme.internal" } }
beta = "rediss://10.0.0.8"
"#;
        let refused = [
            ("REDIS_URL", "redis://main:6380", "redis"),
            ("FORZE__REDIS__URL", "redis://main:6380", "redis"),
            (
                "FORZE__ROUTING__TENANTS__ACME",
                "redis://:new@10.0.0.7",
                "routing.tenants.acme",
            ),
            (
                "FORZE__ROUTING__TENANTS__BETA",
                "redis://10.0.0.8",
                "routing.tenants.beta",
            ),
        ];
        for (var, value, field) in refused {
            let err = applied(file, &[(var, value)]).unwrap_err();
            assert!(
                matches!(&err, Error::Config { field: f, .. } if f == field),
                "{var}: {err}"
            );
        }
        // Changing a URL keeps the encryption: allowed.
        for (var, value) in [
            ("REDIS_URL", "rediss://other:6380"),
            (
                "FORZE__ROUTING__TENANTS__ACME__URL",
                "redis://:new@10.0.0.7",
            ),
            ("FORZE__ROUTING__TENANTS__BETA", "rediss://:new@10.0.0.8"),
        ] {
            applied(file, &[(var, value)]).unwrap_or_else(|e| panic!("{var}: {e}"));
        }
        // A plaintext file may stay plaintext.
        applied(
            "[redis]\nurl = \"redis://a\"",
            &[("REDIS_URL", "redis://b")],
        )
        .unwrap();
    }

    fn applied(text: &str, vars: &[(&str, &str)]) -> Result<toml::Table> {
        let mut t: toml::Table = text.parse().unwrap();
        apply(&mut t, vars.iter().copied())?;
        Ok(t)
    }

    #[test]
    fn values_parse_as_toml_or_stay_strings() {
        assert_eq!(parse_value("4"), toml::Value::Integer(4));
        assert_eq!(parse_value("true"), toml::Value::Boolean(true));
        assert_eq!(parse_value("\"123\""), toml::Value::String("123".into()));
        assert_eq!(parse_value("250ms"), toml::Value::String("250ms".into()));
        assert_eq!(
            parse_value("redis://:p@h:1/0?x=1"),
            toml::Value::String("redis://:p@h:1/0?x=1".into())
        );
    }

    #[test]
    fn nested_paths_create_tables_and_override_the_file() {
        let t = applied(
            "[redis]\nurl = \"redis://a:1\"\npool_size = 2\n[caches.users]",
            &[
                ("FORZE__REDIS__POOL_SIZE", "8"),
                ("FORZE__CACHES__USERS__TTL", "10m"),
                ("UNRELATED", "x"),
            ],
        )
        .unwrap();
        assert_eq!(t["redis"]["pool_size"].as_integer(), Some(8));
        assert_eq!(t["redis"]["url"].as_str(), Some("redis://a:1"));
        assert_eq!(t["caches"]["users"]["ttl"].as_str(), Some("10m"));
        assert!(!t.contains_key("unrelated"));
    }

    #[test]
    fn redis_url_sets_the_url_unless_the_prefixed_variable_does() {
        let t = applied("", &[("REDIS_URL", "redis://a:1")]).unwrap();
        assert_eq!(t["redis"]["url"].as_str(), Some("redis://a:1"));
        let t = applied(
            "",
            &[
                ("REDIS_URL", "redis://a:1"),
                ("FORZE__REDIS__URL", "redis://b:2"),
            ],
        )
        .unwrap();
        assert_eq!(t["redis"]["url"].as_str(), Some("redis://b:2"));
    }

    #[test]
    fn an_override_never_adds_a_resource() {
        let file = "[caches.users]\nttl = \"1m\"\n[routing.tenants]\nacme = \"redis://h:1\"";
        let t = applied(file, &[("FORZE__CACHES__USERS__TTL", "2m")]).unwrap();
        assert_eq!(t["caches"]["users"]["ttl"].as_str(), Some("2m"));
        for var in [
            "FORZE__CACHES__USRES__TTL",
            "FORZE__COUNTERS__ORDERS__FALLBACK",
            "FORZE__ROUTING__TENANTS__BETA",
        ] {
            let err = applied(file, &[(var, "x")]).unwrap_err();
            assert!(err.to_string().contains("never adds"), "{var}: {err}");
        }
        // The existing tenant's route can be changed.
        let t = applied(file, &[("FORZE__ROUTING__TENANTS__ACME", "redis://h:2")]).unwrap();
        assert_eq!(
            t["routing"]["tenants"]["acme"].as_str(),
            Some("redis://h:2")
        );
    }

    #[test]
    fn redis_url_never_overturns_an_explicit_embedded_mode() {
        let t = applied("mode = \"embedded\"", &[("REDIS_URL", "redis://a:1")]).unwrap();
        assert!(!t.contains_key("redis"));
        let t = applied(
            "",
            &[("FORZE__MODE", "embedded"), ("REDIS_URL", "redis://a:1")],
        )
        .unwrap();
        assert!(!t.contains_key("redis"));
        let t = applied("", &[("REDIS_URL", "  ")]).unwrap();
        assert!(!t.contains_key("redis"));
    }

    #[test]
    fn malformed_paths_are_refused() {
        let err = applied("", &[("FORZE__REDIS____URL", "x")]).unwrap_err();
        assert!(err.to_string().contains("FORZE__REDIS____URL"), "{err}");
        let err = applied("key_prefix = \"p\"", &[("FORZE__KEY_PREFIX__X", "1")]).unwrap_err();
        assert!(err.to_string().contains("key_prefix"), "{err}");
    }
}

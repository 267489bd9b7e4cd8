//! Redis key layout: one builder for every resource, so the layout's guarantees hold everywhere.
//!
//! A key looks like
//!
//! ```text
//! <prefix>:<kind>:{<namespace>:<tenant>[:<part>]*}[:<sub>]*
//! forze:counter:{orders:_}                  counter `orders`, no tenant, no suffix
//! forze:counter:{orders:t=acme:eu%3Awest}   tenant `acme`, suffix `eu:west`
//! forze:lock:{jobs:_:nightly}:fence         a sibling key of lock `nightly` (same slot)
//! ```
//!
//! - `prefix` ([`KeyPrefix`]) and `namespace` ([`Namespace`]) are configuration, restricted to
//!   `[A-Za-z0-9_.-]`, so they contain no separator, no brace and no glob character.
//! - `tenant` is `_` for none, or `t=` followed by the escaped tenant id.
//! - Each user-supplied part is escaped with [`escape_part`]: `%`, `:`, `{`, `}` and control
//!   bytes become `%XX`. An escaped part therefore contains no separator and no brace, which is
//!   what makes the layout injective (no two distinct tuples alias) and keeps users from
//!   injecting a hash tag.
//! - Everything from the namespace to the last part sits inside one `{…}` hash tag, so every
//!   sibling key of one entity ([`RedisKey::sibling`]) lands in one cluster slot, while distinct
//!   entities spread over the slots.
//! - Every key of a namespace, for every tenant, starts with [`KeySpace::namespace_prefix`]
//!   (`<prefix>:<kind>:{<namespace>:`), and no key of another namespace or kind starts with it,
//!   because the namespace is followed by `:` and cannot itself contain `:`. One BCAST tracking
//!   prefix per cache namespace is therefore exact.

use std::fmt;

use serde::{Deserialize, Deserializer};

use crate::error::{Error, Result};

/// The characters allowed in namespaces and key prefixes.
fn is_config_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')
}

fn validate_identifier(field: &str, value: &str, max_len: usize) -> Result<()> {
    if value.is_empty() {
        return Err(Error::config(field, "must not be empty"));
    }
    if value.len() > max_len {
        return Err(Error::config(
            field,
            format!("must be at most {max_len} characters, got {}", value.len()),
        ));
    }
    if let Some(bad) = value.chars().find(|c| !is_config_char(*c)) {
        return Err(Error::config(
            field,
            format!("`{value}` contains {bad:?}; only ASCII letters, digits, `_`, `-` and `.` are allowed"),
        ));
    }
    Ok(())
}

/// A validated resource namespace (`[A-Za-z0-9_.-]{1,64}`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Namespace(String);

impl Namespace {
    /// Validate `value`; `field` names it in the error.
    pub fn parse(field: &str, value: &str) -> Result<Self> {
        validate_identifier(field, value, 64)?;
        Ok(Namespace(value.to_string()))
    }

    /// The namespace as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Namespace({})", self.0)
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A validated global key prefix (`[A-Za-z0-9_.-]{1,32}`), default `forze`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct KeyPrefix(String);

impl KeyPrefix {
    /// Validate `value`; `field` names it in the error.
    pub fn parse(field: &str, value: &str) -> Result<Self> {
        validate_identifier(field, value, 32)?;
        Ok(KeyPrefix(value.to_string()))
    }

    /// The prefix as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for KeyPrefix {
    fn default() -> Self {
        KeyPrefix("forze".into())
    }
}

impl fmt::Debug for KeyPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyPrefix({})", self.0)
    }
}

/// A tenant id: any non-empty UTF-8 string of at most 256 bytes. Escaped in keys.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(String);

impl TenantId {
    /// Validate a tenant id.
    pub fn new(id: impl Into<String>) -> Result<Self> {
        let id = id.into();
        if id.is_empty() {
            return Err(Error::validation("tenant", "must not be empty"));
        }
        if id.len() > 256 {
            return Err(Error::validation("tenant", "must be at most 256 bytes"));
        }
        Ok(TenantId(id))
    }

    /// The id as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TenantId({:?})", self.0)
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for TenantId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        TenantId::new(s).map_err(serde::de::Error::custom)
    }
}

/// The kind of resource a key belongs to; its tag is the key's second segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResourceKind {
    /// Cache entries (`cache`).
    Cache,
    /// Counters (`counter`).
    Counter,
    /// Idempotency records (`idem`).
    Idempotency,
    /// Search-result snapshots (`snap`).
    Snapshot,
    /// Distributed locks (`lock`).
    Lock,
    /// Circuit breakers (`breaker`).
    Breaker,
    /// Rate limiters (`ratelimit`).
    RateLimit,
    /// The outcome counts of circuit breakers (`breaker-counts`): kept apart from the breaker
    /// state (same hash slot, different prefix), so tracking the state prefix sees phase
    /// changes only, not every recorded outcome.
    BreakerCounts,
}

impl ResourceKind {
    /// The key segment of this kind.
    pub fn tag(self) -> &'static str {
        match self {
            ResourceKind::Cache => "cache",
            ResourceKind::Counter => "counter",
            ResourceKind::Idempotency => "idem",
            ResourceKind::Snapshot => "snap",
            ResourceKind::Lock => "lock",
            ResourceKind::Breaker => "breaker",
            ResourceKind::RateLimit => "ratelimit",
            ResourceKind::BreakerCounts => "breaker-counts",
        }
    }

    /// Every kind.
    pub const ALL: [ResourceKind; 8] = [
        ResourceKind::Cache,
        ResourceKind::Counter,
        ResourceKind::Idempotency,
        ResourceKind::Snapshot,
        ResourceKind::Lock,
        ResourceKind::Breaker,
        ResourceKind::RateLimit,
        ResourceKind::BreakerCounts,
    ];
}

/// Escape one user-supplied key part: `%`, `:`, `{`, `}` and ASCII control bytes become `%XX`.
///
/// The result contains no `:`, `{` or `}`, and [`unescape_part`] inverts it.
pub fn escape_part(part: &str) -> String {
    let mut out = String::with_capacity(part.len());
    push_escaped(&mut out, part);
    out
}

/// Append the [`escape_part`] form of `part` to `out` (no allocation when `out` has room).
pub fn push_escaped(out: &mut String, part: &str) {
    // Most parts need no escape: copy them whole.
    if !part.bytes().any(|b| ESCAPED[usize::from(b)]) {
        out.push_str(part);
        return;
    }
    for c in part.chars() {
        match c {
            c if c.is_ascii() && ESCAPED[usize::from(c as u8)] => push_pct(out, c as u8),
            c => out.push(c),
        }
    }
}

/// The bytes [`push_escaped`] escapes: `%`, `:`, `{`, `}` and ASCII control bytes. One
/// table lookup per byte instead of five comparisons: every key part is scanned twice per
/// key (to size it, then to write it), and an idempotency key's part is a 64-digit digest.
static ESCAPED: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = (b as u8).is_ascii_control() || matches!(b as u8, b'%' | b':' | b'{' | b'}');
        b += 1;
    }
    table
};

/// The length of `part` once escaped by [`push_escaped`]: each escaped byte takes three.
fn escaped_len(part: &str) -> usize {
    let escapes: usize = part
        .bytes()
        .map(|b| usize::from(ESCAPED[usize::from(b)]))
        .sum();
    part.len() + 2 * escapes
}

fn push_pct(out: &mut String, b: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(HEX[(b >> 4) as usize] as char);
    out.push(HEX[(b & 0xf) as usize] as char);
}

/// Invert [`escape_part`]; `None` if `escaped` is not exactly what it writes for some part
/// (a key written by another client in another form, such as `%41` for `A` or `%3a`, is not
/// taken for one of ours: it is another Redis key).
pub fn unescape_part(escaped: &str) -> Option<String> {
    let bytes = escaped.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let digit = |at: usize| {
                    let d = *bytes.get(at)?;
                    match d {
                        b'0'..=b'9' => Some(d - b'0'),
                        b'A'..=b'F' => Some(d - b'A' + 10),
                        _ => None,
                    }
                };
                let b = digit(i + 1)? << 4 | digit(i + 2)?;
                if !ESCAPED[usize::from(b)] {
                    return None;
                }
                out.push(b);
                i += 3;
            }
            b if ESCAPED[usize::from(b)] => return None,
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Escape Redis glob metacharacters (`\ * ? [ ] ^`) for a literal `SCAN MATCH`.
pub fn glob_escape(literal: &str) -> String {
    let mut out = String::with_capacity(literal.len() + 8);
    for c in literal.chars() {
        if matches!(c, '\\' | '*' | '?' | '[' | ']' | '^') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The key space of one resource: prefix, kind and namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeySpace {
    prefix: KeyPrefix,
    kind: ResourceKind,
    namespace: Namespace,
    /// `<prefix>:<kind>:{<namespace>:`, built once: every key starts with it.
    base: String,
}

impl KeySpace {
    /// A key space.
    pub fn new(prefix: KeyPrefix, kind: ResourceKind, namespace: Namespace) -> Self {
        let base = format!(
            "{}:{}:{{{}:",
            prefix.as_str(),
            kind.tag(),
            namespace.as_str()
        );
        KeySpace {
            prefix,
            kind,
            namespace,
            base,
        }
    }

    /// The key prefix.
    pub fn prefix(&self) -> &KeyPrefix {
        &self.prefix
    }

    /// The namespace.
    pub fn namespace(&self) -> &Namespace {
        &self.namespace
    }

    /// The resource kind.
    pub fn kind(&self) -> ResourceKind {
        self.kind
    }

    /// `<prefix>:<kind>:{<namespace>:`: every key of this namespace, for every tenant, starts
    /// with it, and no key of another namespace or kind does.
    pub fn namespace_prefix(&self) -> String {
        self.base.clone()
    }

    /// [`KeySpace::namespace_prefix`] without a copy.
    pub fn namespace_prefix_str(&self) -> &str {
        &self.base
    }

    /// `<namespace prefix><tenant>`: the common start of every key of one tenant (or of the
    /// tenant-less keys). Followed by `}` for an entity without parts or `:` before a part.
    pub fn tenant_base(&self, tenant: Option<&TenantId>) -> String {
        let mut s = self.namespace_prefix();
        push_tenant(&mut s, tenant);
        s
    }

    /// The tenant of a key of this space (`None` for a tenant-less key or another space's).
    pub fn tenant_of_key(&self, key: &str) -> Option<TenantId> {
        let rest = key.strip_prefix(self.namespace_prefix_str())?;
        let rest = rest.strip_prefix("t=")?;
        // The escaped tenant ends at the first `:` (a part follows) or `}` (none does).
        let end = rest.find([':', '}'])?;
        TenantId::new(unescape_part(&rest[..end])?).ok()
    }

    /// The key of the entity named by `parts` for `tenant`. Parts must be non-empty.
    pub fn key(&self, tenant: Option<&TenantId>, parts: &[&str]) -> Result<RedisKey> {
        // Sized exactly: a key that grew by reallocation took glibc's arena lock on every
        // call (a realloc skips the per-thread cache), which threads then waited on.
        let len = self.base.len()
            + tenant.map_or(1, |t| 2 + escaped_len(t.as_str()))
            + parts.iter().map(|p| 1 + escaped_len(p)).sum::<usize>()
            + 1;
        let mut s = String::with_capacity(len);
        self.write_key(&mut s, tenant, parts)?;
        debug_assert_eq!(s.len(), len);
        Ok(RedisKey(s))
    }

    /// Write the key of [`KeySpace::key`] into `buf` (cleared first), so hot paths can reuse
    /// one buffer instead of allocating a key per call.
    pub fn write_key(
        &self,
        buf: &mut String,
        tenant: Option<&TenantId>,
        parts: &[&str],
    ) -> Result<()> {
        buf.clear();
        buf.push_str(&self.base);
        push_tenant(buf, tenant);
        for part in parts {
            if part.is_empty() {
                return Err(Error::validation("key part", "must not be empty"));
            }
            buf.push(':');
            push_escaped(buf, part);
        }
        buf.push('}');
        Ok(())
    }

    /// Recover the parts of a key built by [`KeySpace::key`] for `tenant`; `None` if the key
    /// does not belong to this key space and tenant, or has sibling suffixes.
    pub fn parse_parts(&self, tenant: Option<&TenantId>, key: &str) -> Option<Vec<String>> {
        parts_after_base(&self.tenant_base(tenant), key)
    }
}

/// The unescaped parts of `key` if it is an entity key directly under `base` (a
/// [`KeySpace::tenant_base`]); `None` for any other key, including sibling keys and keys of
/// another tenant whose escaped id merely starts like this one.
pub fn parts_after_base(base: &str, key: &str) -> Option<Vec<String>> {
    let rest = key.strip_prefix(base)?;
    let inner = rest.strip_suffix('}')?;
    if inner.is_empty() {
        return Some(Vec::new());
    }
    let inner = inner.strip_prefix(':')?;
    inner.split(':').map(unescape_part).collect()
}

fn push_tenant(s: &mut String, tenant: Option<&TenantId>) {
    match tenant {
        None => s.push('_'),
        Some(t) => {
            s.push_str("t=");
            push_escaped(s, t.as_str());
        }
    }
}

/// The tenant that takes part in a key of `resource`: required (`TenantRequired`) when the
/// resource is tenant-aware, refused (`Validation`) when it is not. The one place that rule
/// lives.
pub fn key_tenant<'a>(
    resource: &str,
    tenant_aware: bool,
    tenant: Option<&'a TenantId>,
) -> Result<Option<&'a TenantId>> {
    match (tenant_aware, tenant) {
        (true, None) => Err(Error::TenantRequired {
            resource: resource.to_string(),
        }),
        (true, t) => Ok(t),
        // Dropping it would put the caller's data in the shared, tenant-less keys.
        (false, Some(_)) => Err(Error::validation(
            "tenant",
            format!(
                "resource `{resource}` is not tenant-aware: leave the tenant out, or set \
                 `tenant_aware = true` on it"
            ),
        )),
        (false, None) => Ok(None),
    }
}

/// A Redis key built by a [`KeySpace`].
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RedisKey(String);

impl RedisKey {
    /// The key text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The key text, without copying it.
    pub fn into_string(self) -> String {
        self.0
    }

    /// A sibling key (`<key>:<sub>`) in the same hash slot. `sub` is a fixed identifier chosen
    /// by this crate (`fence`, `ptr`…), never user input.
    pub fn sibling(&self, sub: &'static str) -> RedisKey {
        debug_assert!(
            sub.chars().all(is_config_char),
            "sibling names are fixed identifiers"
        );
        RedisKey(format!("{}:{sub}", self.0))
    }

    /// The part between the first `{` and the following `}`, which Redis Cluster hashes.
    pub fn hash_tag(&self) -> &str {
        let open = self.0.find('{').map(|i| i + 1).unwrap_or(0);
        let close = self.0[open..]
            .find('}')
            .map(|i| open + i)
            .unwrap_or(self.0.len());
        &self.0[open..close]
    }
}

impl fmt::Debug for RedisKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedisKey({})", self.0)
    }
}

impl fmt::Display for RedisKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<RedisKey> for fred::types::Key {
    fn from(k: RedisKey) -> Self {
        fred::types::Key::from(k.0)
    }
}

impl From<&RedisKey> for fred::types::Key {
    fn from(k: &RedisKey) -> Self {
        fred::types::Key::from(k.0.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn space(ns: &str) -> KeySpace {
        KeySpace::new(
            KeyPrefix::default(),
            ResourceKind::Counter,
            Namespace::parse("ns", ns).unwrap(),
        )
    }

    #[test]
    fn layout_examples() {
        let s = space("orders");
        assert_eq!(
            s.key(None, &[]).unwrap().as_str(),
            "forze:counter:{orders:_}"
        );
        let t = TenantId::new("acme").unwrap();
        assert_eq!(
            s.key(Some(&t), &["eu:west"]).unwrap().as_str(),
            "forze:counter:{orders:t=acme:eu%3Awest}"
        );
        let lock = KeySpace::new(
            KeyPrefix::default(),
            ResourceKind::Lock,
            Namespace::parse("ns", "jobs").unwrap(),
        );
        let k = lock.key(None, &["nightly"]).unwrap();
        assert_eq!(
            k.sibling("fence").as_str(),
            "forze:lock:{jobs:_:nightly}:fence"
        );
        assert_eq!(k.hash_tag(), "jobs:_:nightly");
    }

    #[test]
    fn a_lock_named_x_fence_cannot_touch_lock_x_fence_counter() {
        let lock = KeySpace::new(
            KeyPrefix::default(),
            ResourceKind::Lock,
            Namespace::parse("ns", "l").unwrap(),
        );
        let fence_of_x = lock.key(None, &["x"]).unwrap().sibling("fence");
        let lock_x_fence = lock.key(None, &["x:fence"]).unwrap();
        assert_ne!(fence_of_x, lock_x_fence);
    }

    #[test]
    fn invalid_namespaces_are_refused_naming_the_field() {
        for bad in ["", "a:b", "a{b", "a b", "a*", &"x".repeat(65)] {
            let err = Namespace::parse("counters.x.namespace", bad).unwrap_err();
            assert!(err.to_string().contains("counters.x.namespace"), "{err}");
        }
        assert!(space("orders").key(None, &[""]).is_err());
        assert!(TenantId::new("").is_err());
    }

    #[test]
    fn escape_round_trips_and_removes_separators() {
        for s in ["a", "a:b", "{x}", "%", "%3A", "é:ü", "\n\t", "a%b:c{d}"] {
            let e = escape_part(s);
            assert!(!e.contains(':') && !e.contains('{') && !e.contains('}'));
            assert_eq!(unescape_part(&e).as_deref(), Some(s));
        }
    }

    /// Only the form `escape_part` writes is read back: another spelling of the same bytes
    /// is another Redis key, not one of ours.
    #[test]
    fn unescape_reads_only_the_canonical_form() {
        for foreign in [
            "%3a", "%41", "%+A", "%0a", "a\nb", "%", "%3", "%G0", "a:b", "{x}",
        ] {
            assert_eq!(unescape_part(foreign), None, "{foreign:?}");
        }
        assert_eq!(unescape_part("%3A%0A%25").as_deref(), Some(":\n%"));
    }

    /// Exactly `%`, `:`, `{`, `}` and ASCII control bytes are escaped, whatever surrounds
    /// them, and a key's exact size (checked when it is built) counts them.
    #[test]
    fn exactly_the_separators_and_controls_are_escaped() {
        let s = space("orders");
        for c in (0u8..=0x7f).map(char::from).chain(['é', '€', '𝄞']) {
            let escaped = c.is_ascii_control() || matches!(c, '%' | ':' | '{' | '}');
            let want = if escaped {
                format!("%{:02X}", c as u32)
            } else {
                c.to_string()
            };
            let part = format!("a{c}é{c}");
            assert_eq!(escape_part(&part), format!("a{want}é{want}"), "{c:?}");
            let key = s.key(None, &[&part]).unwrap();
            assert!(
                key.as_str().ends_with(&format!("a{want}é{want}}}")),
                "{c:?}"
            );
        }
    }

    #[test]
    fn parse_parts_inverts_key() {
        let s = space("orders");
        let t = TenantId::new("t:1").unwrap();
        let k = s.key(Some(&t), &["a:b", "c"]).unwrap();
        assert_eq!(
            s.parse_parts(Some(&t), k.as_str()),
            Some(vec!["a:b".to_string(), "c".to_string()])
        );
        assert_eq!(s.parse_parts(None, k.as_str()), None);
        let other = space("orders_archive").key(None, &[]).unwrap();
        assert_eq!(s.parse_parts(None, other.as_str()), None);
    }

    #[test]
    fn glob_escape_escapes_metacharacters() {
        assert_eq!(glob_escape("a*b?[c]\\^"), "a\\*b\\?\\[c\\]\\\\\\^");
    }
}

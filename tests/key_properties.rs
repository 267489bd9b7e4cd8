//! Property tests of the key layout (`docs/keys.md`), no server needed:
//! - no two distinct (prefix, kind, namespace, tenant, parts, sibling) tuples build one key;
//! - a key and its sibling keys (the keys of one multi-key operation) share one cluster slot,
//!   computed with CRC16 as Redis does;
//! - each cache namespace owns a prefix (the one its tracking subscription uses) that no key of
//!   another namespace, kind or key prefix starts with.

use forze_redis::keys::{KeyPrefix, KeySpace, Namespace, RedisKey, ResourceKind, TenantId};
use proptest::prelude::*;
use redis_protocol::redis_keyslot;

/// Sibling names the crate uses for multi-key operations.
const SIBLINGS: [&str; 4] = ["fence", "meta", "ptr", "chunk"];

/// Text drawn from an alphabet rich in the separators, escapes and tag braces that could
/// make two keys collide if escaping were wrong.
fn tricky_text(min: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            Just(':'),
            Just('{'),
            Just('}'),
            Just('%'),
            Just('_'),
            Just('='),
            Just('t'),
            Just('3'),
            Just('A'),
            Just('\n'),
            Just('é'),
        ],
        min..6,
    )
    .prop_map(|v| v.into_iter().collect())
}

fn name() -> impl Strategy<Value = String> {
    // Namespaces and prefixes are restricted to [A-Za-z0-9_.-]; draw from a small alphabet so
    // near-collisions (`a` vs `a.b` vs `a-`) are frequent.
    proptest::collection::vec(
        prop_oneof![Just('a'), Just('b'), Just('.'), Just('_'), Just('-')],
        1..4,
    )
    .prop_map(|v| v.into_iter().collect())
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Tuple {
    prefix: String,
    kind: usize,
    namespace: String,
    tenant: Option<String>,
    parts: Vec<String>,
    sibling: Option<usize>,
}

fn tuple() -> impl Strategy<Value = Tuple> {
    (
        prop_oneof![
            Just("forze".to_string()),
            Just("forze2".to_string()),
            name()
        ],
        0..ResourceKind::ALL.len(),
        name(),
        proptest::option::of(tricky_text(1)),
        proptest::collection::vec(tricky_text(1), 1..4),
        proptest::option::of(0..SIBLINGS.len()),
    )
        .prop_map(|(prefix, kind, namespace, tenant, parts, sibling)| Tuple {
            prefix,
            kind,
            namespace,
            tenant,
            parts,
            sibling,
        })
}

/// A tuple and a near neighbour of it: the same text regrouped (parts joined or split at a
/// separator, a part moved into the tenant, a separator replaced by its escape). These are the
/// pairs a wrong escaping would make alias; independent random pairs almost never are.
fn near_pair() -> impl Strategy<Value = (Tuple, Tuple)> {
    (tuple(), 0..6usize, any::<prop::sample::Index>()).prop_map(|(a, how, at)| {
        let mut b = a.clone();
        let i = at.index(b.parts.len());
        match how {
            0 if b.parts.len() > 1 => {
                let i = i.min(b.parts.len() - 2);
                let next = b.parts.remove(i + 1);
                b.parts[i] = format!("{}:{next}", b.parts[i]);
            }
            1 => {
                if let Some((l, r)) = b.parts[i].clone().split_once(':') {
                    if !l.is_empty() && !r.is_empty() {
                        b.parts[i] = l.to_string();
                        b.parts.insert(i + 1, r.to_string());
                    }
                }
            }
            2 if b.parts.len() > 1 => {
                let first = b.parts.remove(0);
                b.tenant = Some(match b.tenant {
                    Some(t) => format!("{t}:{first}"),
                    None => format!("_:{first}"),
                });
            }
            3 => b.parts[i] = b.parts[i].replace(':', "%3A").replace('}', "%7D"),
            4 => b.tenant = b.tenant.map(|t| t.replace(':', "%3A")).or(Some("_".into())),
            _ => b.parts[i] = format!("{}}}", b.parts[i]),
        }
        (a, b)
    })
}

fn space(t: &Tuple) -> KeySpace {
    KeySpace::new(
        KeyPrefix::parse("key_prefix", &t.prefix).unwrap(),
        ResourceKind::ALL[t.kind],
        Namespace::parse("namespace", &t.namespace).unwrap(),
    )
}

fn build(t: &Tuple) -> RedisKey {
    let tenant = t.tenant.as_ref().map(|s| TenantId::new(s.clone()).unwrap());
    let parts: Vec<&str> = t.parts.iter().map(String::as_str).collect();
    let key = space(t).key(tenant.as_ref(), &parts).unwrap();
    match t.sibling {
        Some(i) => key.sibling(SIBLINGS[i]),
        None => key,
    }
}

fn valid(t: &Tuple) -> bool {
    t.tenant
        .as_ref()
        .is_none_or(|s| TenantId::new(s.clone()).is_ok())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn distinct_tuples_never_alias(a in tuple(), b in tuple()) {
        prop_assume!(valid(&a) && valid(&b));
        let (ka, kb) = (build(&a), build(&b));
        if a == b {
            prop_assert_eq!(ka, kb);
        } else {
            prop_assert_ne!(ka.as_str(), kb.as_str(), "{:?} and {:?} alias", a, b);
        }
    }

    #[test]
    fn near_neighbours_never_alias((a, b) in near_pair()) {
        prop_assume!(valid(&a) && valid(&b) && b.parts.iter().all(|p| !p.is_empty()));
        let (ka, kb) = (build(&a), build(&b));
        if a == b {
            prop_assert_eq!(ka, kb);
        } else {
            prop_assert_ne!(ka.as_str(), kb.as_str(), "{:?} and {:?} alias", a, b);
        }
    }

    #[test]
    fn a_key_and_its_siblings_share_one_slot(t in tuple()) {
        prop_assume!(valid(&t));
        let mut base = t.clone();
        base.sibling = None;
        let key = build(&base);
        let slot = redis_keyslot(key.as_str().as_bytes());
        // The tag Redis hashes is the whole entity (escaped), never a fragment of user text.
        prop_assert_eq!(slot, redis_keyslot(format!("{{{}}}", key.hash_tag()).as_bytes()));
        let braces = key.hash_tag().contains(['{', '}']);
        prop_assert!(!braces, "braces inside the tag of {}", key);
        for sub in SIBLINGS {
            let sibling = key.sibling(sub);
            prop_assert_eq!(slot, redis_keyslot(sibling.as_str().as_bytes()), "{} vs {}", key, sibling);
        }
    }

    #[test]
    fn each_cache_namespace_owns_its_prefix(cache in tuple(), other in tuple()) {
        prop_assume!(valid(&cache) && valid(&other));
        let mut cache = cache;
        cache.kind = 0;
        prop_assert_eq!(ResourceKind::ALL[0], ResourceKind::Cache);
        let owned = space(&cache).namespace_prefix();
        prop_assert!(build(&cache).as_str().starts_with(&owned));
        let same_owner = other.kind == 0
            && other.prefix == cache.prefix
            && other.namespace == cache.namespace;
        prop_assert_eq!(
            build(&other).as_str().starts_with(&owned),
            same_owner,
            "{:?} vs cache prefix {}", other, owned
        );
    }
}

//! Reading RESP3 replies: text, numbers, arrays, maps and `INFO` fields.

use std::collections::BTreeMap;

use redis_protocol::resp3::types::OwnedFrame;

/// A string reply (blob, simple or verbatim) as text.
pub fn text(f: &OwnedFrame) -> Option<String> {
    match f {
        OwnedFrame::BlobString { data, .. }
        | OwnedFrame::SimpleString { data, .. }
        | OwnedFrame::VerbatimString { data, .. } => {
            Some(String::from_utf8_lossy(data).into_owned())
        }
        OwnedFrame::Number { data, .. } => Some(data.to_string()),
        _ => None,
    }
}

/// A number, or a string holding one.
pub fn int(f: &OwnedFrame) -> Option<i64> {
    match f {
        OwnedFrame::Number { data, .. } => Some(*data),
        other => text(other)?.trim().parse().ok(),
    }
}

/// The items of an array (or a set).
pub fn items(f: &OwnedFrame) -> Option<&[OwnedFrame]> {
    match f {
        OwnedFrame::Array { data, .. } | OwnedFrame::Push { data, .. } => Some(data),
        _ => None,
    }
}

/// A map reply, or an array of alternating keys and values (what `CONFIG GET` gives), as
/// text pairs.
pub fn pairs(f: &OwnedFrame) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    match f {
        OwnedFrame::Map { data, .. } => {
            for (k, v) in data {
                if let (Some(k), Some(v)) = (text(k), text(v)) {
                    out.insert(k, v);
                }
            }
        }
        other => {
            if let Some(items) = items(other) {
                for kv in items.chunks(2) {
                    if let [k, v] = kv {
                        if let (Some(k), Some(v)) = (text(k), text(v)) {
                            out.insert(k, v);
                        }
                    }
                }
            }
        }
    }
    out
}

/// The `field:value` lines of an `INFO` reply.
pub fn info_fields(reply: &OwnedFrame) -> BTreeMap<String, String> {
    let body = text(reply).unwrap_or_default();
    // A verbatim string starts with its format (`txt:`) in some decoders.
    let body = body.strip_prefix("txt:").unwrap_or(&body);
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

//! The stored form of a cache entry: one Redis string per logical key.
//!
//! ```text
//! byte 0      0xC1                 format marker (anything else reads as corrupt)
//! byte 1      flags                bit 0: versioned, bit 1: raw bytes (else JSON)
//! bytes 2..22 version              only when versioned: 20 ASCII digits, zero-padded u64
//! rest        payload              JSON (serde values) or the caller's bytes, verbatim
//! ```
//!
//! A version lives in the same string as its value, so a reader can never see one version's
//! pointer with another version's body: a versioned write is a single `SET`. The fixed-width
//! decimal version lets the Lua script compare versions as strings.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, Result};

const MARKER: u8 = 0xC1;
const VERSIONED: u8 = 0b01;
const RAW: u8 = 0b10;
/// Width of the zero-padded decimal version (`u64::MAX` has 20 digits).
pub const VERSION_WIDTH: usize = 20;

/// How the payload is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadKind {
    /// serde_json.
    Json,
    /// The caller's bytes, verbatim.
    Raw,
}

/// A decoded entry: its version (if written with one) and its payload, sharing the stored
/// buffer (no copy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The version given to `set_versioned`, if any.
    pub version: Option<u64>,
    /// How `payload` is encoded.
    pub kind: PayloadKind,
    /// The payload.
    pub payload: Bytes,
}

/// Encode a serde value.
pub fn encode_json<T: Serialize + ?Sized>(version: Option<u64>, value: &T) -> Result<Bytes> {
    let mut out = header(version, PayloadKind::Json, 64);
    serde_json::to_writer((&mut out).writer(), value).map_err(|e| Error::Codec {
        message: format!("cannot encode the value: {e}"),
    })?;
    Ok(out.freeze())
}

/// Encode raw bytes.
pub fn encode_raw(version: Option<u64>, bytes: &[u8]) -> Bytes {
    let mut out = header(version, PayloadKind::Raw, bytes.len());
    out.put_slice(bytes);
    out.freeze()
}

fn header(version: Option<u64>, kind: PayloadKind, payload_hint: usize) -> BytesMut {
    let mut out = BytesMut::with_capacity(2 + VERSION_WIDTH + payload_hint);
    let mut flags = 0;
    if version.is_some() {
        flags |= VERSIONED;
    }
    if kind == PayloadKind::Raw {
        flags |= RAW;
    }
    out.put_u8(MARKER);
    out.put_u8(flags);
    if let Some(v) = version {
        out.put_slice(format_version(v).as_bytes());
    }
    out
}

/// The fixed-width decimal form of a version.
pub fn format_version(v: u64) -> String {
    format!("{v:0width$}", width = VERSION_WIDTH)
}

/// Decode the stored form; `None` when it is not an entry of ours (corrupt or foreign).
/// Takes the buffer by value: the payload is the same buffer advanced past the header, so
/// decoding costs no copy and no reference-count traffic.
pub fn decode(stored: Bytes) -> Option<Entry> {
    let (&marker, rest) = stored.split_first()?;
    let (&flags, _) = rest.split_first()?;
    if marker != MARKER || flags & !(VERSIONED | RAW) != 0 {
        return None;
    }
    let mut start = 2;
    let version = if flags & VERSIONED != 0 {
        let digits = stored.get(2..2 + VERSION_WIDTH)?;
        start += VERSION_WIDTH;
        if !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        Some(std::str::from_utf8(digits).ok()?.parse::<u64>().ok()?)
    } else {
        None
    };
    let kind = if flags & RAW != 0 {
        PayloadKind::Raw
    } else {
        PayloadKind::Json
    };
    let mut payload = stored;
    payload.advance(start);
    Some(Entry {
        version,
        kind,
        payload,
    })
}

/// Decode a payload as `T`; `None` when it does not decode (counted as a corrupt miss).
pub fn decode_value<T: DeserializeOwned>(entry: &Entry) -> Option<T> {
    serde_json::from_slice(&entry.payload).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_bytes_round_trip_exactly_including_invalid_utf8_and_empty() {
        for bytes in [&b""[..], b"\xff\x00\xc1", b"{\"looks\":\"json\"}"] {
            for version in [None, Some(0), Some(u64::MAX)] {
                let stored = encode_raw(version, bytes);
                let e = decode(stored).unwrap();
                assert_eq!(e.version, version);
                assert_eq!(e.kind, PayloadKind::Raw);
                assert_eq!(&e.payload[..], bytes);
            }
        }
    }

    #[test]
    fn json_values_round_trip() {
        let stored = encode_json(Some(7), &vec![1u32, 2, 3]).unwrap();
        let e = decode(stored).unwrap();
        assert_eq!(e.version, Some(7));
        assert_eq!(decode_value::<Vec<u32>>(&e), Some(vec![1, 2, 3]));
        assert_eq!(decode_value::<String>(&e), None);
    }

    #[test]
    fn foreign_or_truncated_values_are_corrupt() {
        for bad in [&b""[..], b"x", b"\xc1", b"\xc1\x04abc", b"\xc1\x01123"] {
            assert!(decode(Bytes::copy_from_slice(bad)).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn versions_compare_as_strings_like_numbers() {
        assert!(format_version(9) < format_version(10));
        assert!(format_version(u64::MAX - 1) < format_version(u64::MAX));
    }
}

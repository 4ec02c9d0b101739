//! On-disk encodings: MVCC keys, node-local keys and checksummed version values.
//!
//! MVCC key = `escape(user_key) ++ 0x00 0x01 ++ !ts.to_bytes()`: `0x00` inside the user key is
//! written as `0x00 0xff`, so the terminator `0x00 0x01` sorts below any continuation and
//! user-key order is preserved; the inverted 12-byte timestamp makes the newest version of a
//! key sort first. Every MVCC key therefore ends in exactly [`TIMESTAMP_BYTES`] bytes of
//! timestamp, and everything before them (the *MVCC prefix*) identifies the user key; the
//! RocksDB prefix extractor and bloom filters work on that prefix.
//!
//! Node-local (non-MVCC) keys start with `0x00 0x00`, which no MVCC key can start with (an
//! escaped key's `0x00` is always followed by `0xff` or `0x01`), so the two keyspaces never mix
//! and local keys sort below all MVCC keys.
//!
//! Value = `format u8 | flags u8 | origin_id u32 BE | origin_ts 12 | bytes | crc32c u32 BE`,
//! the checksum covering everything before it. Decoding verifies the checksum first and
//! refuses anything malformed: corrupt bytes are never returned as data.

use ldr_types::{TIMESTAMP_BYTES, Timestamp};

use crate::{ValueHeader, Version};

/// First bytes of every node-local key.
pub(crate) const LOCAL_PREFIX: [u8; 2] = [0x00, 0x00];
/// Local keys written by callers of `put_local`.
const LOCAL_USER_TAG: u8 = 0x01;
/// Local keys the engine itself owns (GC threshold, ...).
const LOCAL_INTERNAL_TAG: u8 = 0x00;

const TERMINATOR: [u8; 2] = [0x00, 0x01];
const VALUE_FORMAT: u8 = 1;
const FLAG_TOMBSTONE: u8 = 0x01;
const FLAG_OMIT: u8 = 0x02;
const VALUE_HEADER_BYTES: usize = 1 + 1 + 4 + TIMESTAMP_BYTES;
const CRC_BYTES: usize = 4;

/// Why stored bytes could not be decoded (turned into `StorageError::Corruption` by callers,
/// who know the key to name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DecodeError(pub String);

/// Appends `escape(user_key) ++ terminator` to `out`.
pub(crate) fn encode_prefix_into(user_key: &[u8], out: &mut Vec<u8>) {
    out.reserve(user_key.len() + 2 + TIMESTAMP_BYTES);
    for &b in user_key {
        out.push(b);
        if b == 0x00 {
            out.push(0xff);
        }
    }
    out.extend_from_slice(&TERMINATOR);
}

/// The MVCC prefix (all versions of `user_key` start with it).
pub(crate) fn mvcc_prefix(user_key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(user_key.len() + 2 + TIMESTAMP_BYTES);
    encode_prefix_into(user_key, &mut out);
    out
}

/// Appends the inverted timestamp (newest first) to an MVCC prefix.
pub(crate) fn push_ts(out: &mut Vec<u8>, ts: Timestamp) {
    out.extend(ts.to_bytes().iter().map(|b| !b));
}

/// The full MVCC key of `(user_key, ts)`.
#[cfg(test)]
pub(crate) fn mvcc_key(user_key: &[u8], ts: Timestamp) -> Vec<u8> {
    let mut out = mvcc_prefix(user_key);
    push_ts(&mut out, ts);
    out
}

/// The smallest key above every version of the key with this MVCC prefix (the prefix ends in
/// the terminator's `0x01`, so incrementing the last byte is exact).
pub(crate) fn prefix_successor(prefix: &[u8]) -> Vec<u8> {
    let mut out = prefix.to_vec();
    if let Some(last) = out.last_mut() {
        *last += 1;
    }
    out
}

/// Splits a stored MVCC key into `(mvcc_prefix, ts)`.
pub(crate) fn split_mvcc_key(raw: &[u8]) -> Result<(&[u8], Timestamp), DecodeError> {
    if raw.len() < TERMINATOR.len() + TIMESTAMP_BYTES || raw.starts_with(&LOCAL_PREFIX) {
        return Err(DecodeError(format!(
            "malformed mvcc key of {} bytes",
            raw.len()
        )));
    }
    let (prefix, ts_bytes) = raw.split_at(raw.len() - TIMESTAMP_BYTES);
    if !prefix.ends_with(&TERMINATOR) {
        return Err(DecodeError("mvcc key without terminator".to_string()));
    }
    let mut inverted = [0u8; TIMESTAMP_BYTES];
    for (dst, src) in inverted.iter_mut().zip(ts_bytes) {
        *dst = !src;
    }
    let ts = Timestamp::from_bytes(&inverted).map_err(|e| DecodeError(e.to_string()))?;
    Ok((prefix, ts))
}

/// The user key of an MVCC prefix.
pub(crate) fn decode_prefix(prefix: &[u8]) -> Result<Vec<u8>, DecodeError> {
    let body = prefix
        .strip_suffix(&TERMINATOR)
        .ok_or_else(|| DecodeError("mvcc key without terminator".to_string()))?;
    let mut out = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        let b = body[i];
        out.push(b);
        if b == 0x00 {
            if body.get(i + 1) != Some(&0xff) {
                return Err(DecodeError(format!("bad escape in mvcc key at byte {i}")));
            }
            i += 2;
        } else {
            i += 1;
        }
    }
    Ok(out)
}

/// Best-effort user key of a raw stored key, for error messages.
pub(crate) fn user_key_for_error(raw: &[u8]) -> Vec<u8> {
    match split_mvcc_key(raw).and_then(|(p, _)| decode_prefix(p)) {
        Ok(k) => k,
        Err(_) => raw.to_vec(),
    }
}

/// RocksDB prefix extractor: the MVCC prefix of an MVCC key (also of a seek key built from a
/// prefix and a timestamp).
pub(crate) fn prefix_extractor(key: &[u8]) -> &[u8] {
    if key.len() >= TIMESTAMP_BYTES {
        &key[..key.len() - TIMESTAMP_BYTES]
    } else {
        key
    }
}

/// Whether [`prefix_extractor`] applies to `key` (local keys are looked up whole).
pub(crate) fn prefix_in_domain(key: &[u8]) -> bool {
    key.len() >= TERMINATOR.len() + TIMESTAMP_BYTES && !key.starts_with(&LOCAL_PREFIX)
}

/// The stored key of a caller's local key.
pub(crate) fn local_user_key(key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 3);
    out.extend_from_slice(&LOCAL_PREFIX);
    out.push(LOCAL_USER_TAG);
    out.extend_from_slice(key);
    out
}

/// The stored key of one of the engine's own local keys.
pub(crate) fn local_internal_key(name: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len() + 3);
    out.extend_from_slice(&LOCAL_PREFIX);
    out.push(LOCAL_INTERNAL_TAG);
    out.extend_from_slice(name.as_bytes());
    out
}

/// `bytes ++ crc32c(bytes)`: local values are checksummed too.
pub(crate) fn encode_local_value(value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len() + CRC_BYTES);
    out.extend_from_slice(value);
    out.extend_from_slice(&crc32c::crc32c(value).to_be_bytes());
    out
}

pub(crate) fn decode_local_value(raw: &[u8]) -> Result<Vec<u8>, DecodeError> {
    let body = verify_crc(raw)?;
    Ok(body.to_vec())
}

fn verify_crc(raw: &[u8]) -> Result<&[u8], DecodeError> {
    if raw.len() < CRC_BYTES {
        return Err(DecodeError(format!(
            "value of {} bytes is too short for its checksum",
            raw.len()
        )));
    }
    let (body, crc) = raw.split_at(raw.len() - CRC_BYTES);
    let stored = u32::from_be_bytes([crc[0], crc[1], crc[2], crc[3]]);
    let computed = crc32c::crc32c(body);
    if stored != computed {
        return Err(DecodeError(format!(
            "checksum mismatch: stored {stored:#010x}, computed {computed:#010x}"
        )));
    }
    Ok(body)
}

/// Encodes one version's value (header, tombstone flag, bytes, checksum).
pub(crate) fn encode_value(header: &ValueHeader, value: Option<&[u8]>) -> Vec<u8> {
    let bytes = value.unwrap_or(&[]);
    let mut out = Vec::with_capacity(VALUE_HEADER_BYTES + bytes.len() + CRC_BYTES);
    let mut flags = 0u8;
    if value.is_none() {
        flags |= FLAG_TOMBSTONE;
    }
    if header.omit_in_rangefeeds {
        flags |= FLAG_OMIT;
    }
    out.push(VALUE_FORMAT);
    out.push(flags);
    out.extend_from_slice(&header.origin_id.to_be_bytes());
    out.extend_from_slice(&header.origin_ts.to_bytes());
    out.extend_from_slice(bytes);
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

/// Decodes and verifies a stored value into a [`Version`] at `ts`.
pub(crate) fn decode_value(ts: Timestamp, raw: &[u8]) -> Result<Version, DecodeError> {
    let body = verify_crc(raw)?;
    if body.len() < VALUE_HEADER_BYTES {
        return Err(DecodeError(format!(
            "value body of {} bytes is shorter than its header",
            body.len()
        )));
    }
    if body[0] != VALUE_FORMAT {
        return Err(DecodeError(format!("unknown value format {}", body[0])));
    }
    let flags = body[1];
    if flags & !(FLAG_TOMBSTONE | FLAG_OMIT) != 0 {
        return Err(DecodeError(format!("unknown value flags {flags:#04x}")));
    }
    let origin_id = u32::from_be_bytes([body[2], body[3], body[4], body[5]]);
    let origin_ts = Timestamp::from_bytes(&body[6..6 + TIMESTAMP_BYTES])
        .map_err(|e| DecodeError(e.to_string()))?;
    let bytes = &body[VALUE_HEADER_BYTES..];
    let value = if flags & FLAG_TOMBSTONE != 0 {
        if !bytes.is_empty() {
            return Err(DecodeError("tombstone carries value bytes".to_string()));
        }
        None
    } else {
        Some(bytes.to_vec())
    };
    Ok(Version {
        ts,
        header: ValueHeader {
            origin_id,
            origin_ts,
            omit_in_rangefeeds: flags & FLAG_OMIT != 0,
        },
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Vec<Vec<u8>> {
        vec![
            vec![],
            vec![0x00],
            vec![0x00, 0x00],
            vec![0x00, 0x01],
            vec![0x00, 0xff],
            vec![0x01],
            vec![0x01, 0x00],
            vec![0x01, 0x00, 0x00],
            vec![0x02, 0xff, 0x00],
            vec![0xff],
            vec![0xff; 8],
        ]
    }

    #[test]
    fn mvcc_keys_preserve_user_key_order_and_put_newest_first() {
        let ts = [
            Timestamp::new(1, 0),
            Timestamp::new(1, 5),
            Timestamp::new(7, 0),
            Timestamp::MAX,
        ];
        let mut all = Vec::new();
        for k in keys() {
            for t in ts {
                all.push((k.clone(), t));
            }
        }
        let mut expected = all.clone();
        expected.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        let mut encoded: Vec<Vec<u8>> = all.iter().map(|(k, t)| mvcc_key(k, *t)).collect();
        encoded.sort();
        let decoded: Vec<(Vec<u8>, Timestamp)> = encoded
            .iter()
            .map(|raw| {
                let (prefix, ts) = split_mvcc_key(raw).expect("valid key");
                (decode_prefix(prefix).expect("valid prefix"), ts)
            })
            .collect();
        assert_eq!(decoded, expected);
    }

    #[test]
    fn keys_round_trip_and_local_keys_sort_below() {
        for k in keys() {
            let raw = mvcc_key(&k, Timestamp::new(42, 3));
            let (prefix, ts) = split_mvcc_key(&raw).expect("valid key");
            assert_eq!(ts, Timestamp::new(42, 3));
            assert_eq!(decode_prefix(prefix).expect("valid prefix"), k);
            assert_eq!(prefix_extractor(&raw), prefix);
            assert!(prefix_in_domain(&raw));
            assert!(local_user_key(&[0xff; 20]) < raw);
            assert!(!prefix_in_domain(&local_user_key(&[0xff; 20])));
            // Span bounds: the prefix of a larger key bounds all versions of smaller ones.
            assert!(prefix_successor(prefix) > raw);
        }
        assert!(split_mvcc_key(&[1, 2, 3]).is_err());
        assert!(decode_prefix(&[0x00, 0x05, 0x00, 0x01]).is_err());
    }

    #[test]
    fn values_round_trip_and_detect_every_flipped_byte() {
        let header = ValueHeader {
            origin_id: 7,
            origin_ts: Timestamp::new(9, 1),
            omit_in_rangefeeds: true,
        };
        for value in [None, Some(&b""[..]), Some(&b"hello"[..])] {
            let raw = encode_value(&header, value);
            let v = decode_value(Timestamp::new(3, 0), &raw).expect("round trip");
            assert_eq!(v.header, header);
            assert_eq!(v.value.as_deref(), value);
            for i in 0..raw.len() {
                let mut bad = raw.clone();
                bad[i] ^= 0x40;
                assert!(
                    decode_value(Timestamp::new(3, 0), &bad).is_err(),
                    "flip at {i} undetected"
                );
            }
        }
        assert!(decode_value(Timestamp::ZERO, &[]).is_err());
        assert!(decode_local_value(&encode_local_value(b"x")).is_ok());
    }
}

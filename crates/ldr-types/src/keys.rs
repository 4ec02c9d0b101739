//! The key layout shared by every layer.
//!
//! ```text
//! 0x01 <subspace> 0x00 <key bytes>                       system keyspace (one range, node 1)
//! 0x02 <table_id u32> <shard u16> <index_id u32> <cols>  table data
//! ```
//!
//! A table is split into `shard_count` ranges by a hash of its primary key; shard `s` of table
//! `t` owns the span `[0x02 t s, 0x02 t s+1)`, and every index entry of a row (primary and
//! non-unique secondary) lives in the row's shard, so a row's keys are written in one atomic
//! batch on one node. Unique secondary indexes are global: their entries live in the shard of
//! the hash of the indexed values (see `docs/architecture.md`).

use std::fmt::Write as _;

use crate::span::Span;
use crate::{IndexId, TableId};

pub const SYSTEM_PREFIX: u8 = 0x01;
pub const TABLE_PREFIX: u8 = 0x02;

/// Length of `0x02 <table_id> <shard> <index_id>`.
pub const INDEX_PREFIX_LEN: usize = 1 + 4 + 2 + 4;

/// A key in the system keyspace: `0x01 <subspace> 0x00 <key>`.
pub fn system_key(subspace: &str, key: &[u8]) -> Vec<u8> {
    debug_assert!(
        !subspace.as_bytes().contains(&0),
        "subspace names are NUL-free"
    );
    let mut out = Vec::with_capacity(2 + subspace.len() + key.len());
    out.push(SYSTEM_PREFIX);
    out.extend_from_slice(subspace.as_bytes());
    out.push(0);
    out.extend_from_slice(key);
    out
}

/// All keys of one system subspace.
pub fn system_subspace_span(subspace: &str) -> Span {
    Span::prefix(&system_key(subspace, b""))
}

/// The whole system keyspace.
pub fn system_span() -> Span {
    Span::new(vec![SYSTEM_PREFIX], vec![SYSTEM_PREFIX + 1])
}

/// All keys of a table (every shard, every index).
pub fn table_span(table_id: TableId) -> Span {
    let mut p = vec![TABLE_PREFIX];
    p.extend_from_slice(&table_id.to_be_bytes());
    Span::prefix(&p)
}

/// The index id under which transaction records live, inside the shard of the transaction's
/// anchor key (never a real index: ids are allocated upwards from 1), so no SQL scan and no
/// replication stream of an index span sees them.
pub const TXN_RECORD_INDEX_ID: IndexId = IndexId::MAX - 1;

/// The key of a transaction's record: `0x02 <table> <shard> <TXN_RECORD_INDEX_ID> <txn id>`, in
/// the range of `anchor` (a table key). `None` when `anchor` is not a table key.
pub fn txn_record_key(anchor: &[u8], txn_id: &[u8; 16]) -> Option<Vec<u8>> {
    let parts = decode_table_key(anchor)?;
    let mut k = index_prefix(parts.table_id, parts.shard, TXN_RECORD_INDEX_ID);
    k.extend_from_slice(txn_id);
    Some(k)
}

/// `0x02 <table_id> <shard>`: the prefix of one shard (one range).
pub fn shard_prefix(table_id: TableId, shard: u16) -> Vec<u8> {
    let mut p = Vec::with_capacity(7);
    p.push(TABLE_PREFIX);
    p.extend_from_slice(&table_id.to_be_bytes());
    p.extend_from_slice(&shard.to_be_bytes());
    p
}

/// The span of one shard: the keys of one range.
pub fn shard_span(table_id: TableId, shard: u16) -> Span {
    Span::prefix(&shard_prefix(table_id, shard))
}

/// `0x02 <table_id> <shard> <index_id>`: the prefix of one index inside one shard.
pub fn index_prefix(table_id: TableId, shard: u16, index_id: IndexId) -> Vec<u8> {
    let mut p = shard_prefix(table_id, shard);
    p.extend_from_slice(&index_id.to_be_bytes());
    p
}

/// The span of one index inside one shard (for the primary index: the span LDR streams).
pub fn index_span(table_id: TableId, shard: u16, index_id: IndexId) -> Span {
    Span::prefix(&index_prefix(table_id, shard, index_id))
}

/// The parts of a table key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableKey<'a> {
    pub table_id: TableId,
    pub shard: u16,
    pub index_id: IndexId,
    /// The encoded index columns (and, for secondary indexes, the primary key suffix).
    pub rest: &'a [u8],
}

/// Splits a table key into its parts; `None` if `key` is not a complete table key.
pub fn decode_table_key(key: &[u8]) -> Option<TableKey<'_>> {
    if key.len() < INDEX_PREFIX_LEN || key[0] != TABLE_PREFIX {
        return None;
    }
    let table_id = TableId::from_be_bytes(key[1..5].try_into().ok()?);
    let shard = u16::from_be_bytes(key[5..7].try_into().ok()?);
    let index_id = IndexId::from_be_bytes(key[7..11].try_into().ok()?);
    Some(TableKey {
        table_id,
        shard,
        index_id,
        rest: &key[INDEX_PREFIX_LEN..],
    })
}

/// The stable shard of a primary key: FNV-1a over its encoded bytes, modulo the shard count.
pub fn shard_for(encoded_key: &[u8], shard_count: u16) -> u16 {
    assert!(shard_count > 0, "a table has at least one shard");
    (fnv1a64(encoded_key) % u64::from(shard_count)) as u16
}

/// 64-bit FNV-1a: stable across processes and versions (used for sharding and fingerprints).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf29ce484222325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x100000001b3);
    }
    hash
}

/// A human-readable rendering: `/Table/104/3/1/<hex>` or `/System/jobs/<hex>`.
pub fn pretty_key(key: &[u8]) -> String {
    if key.is_empty() {
        return "/Min".to_string();
    }
    if key.iter().all(|b| *b == 0xff) {
        return "/Max".to_string();
    }
    match key[0] {
        SYSTEM_PREFIX => {
            let rest = &key[1..];
            match rest.iter().position(|b| *b == 0) {
                Some(i) => {
                    let mut s = format!("/System/{}", String::from_utf8_lossy(&rest[..i]));
                    if i + 1 < rest.len() {
                        s.push('/');
                        push_printable(&mut s, &rest[i + 1..]);
                    }
                    s
                }
                None => format!("/System/{}", String::from_utf8_lossy(rest)),
            }
        }
        TABLE_PREFIX => {
            let mut s = String::from("/Table");
            let parts: [(usize, usize); 3] = [(1, 4), (5, 2), (7, 4)];
            for (start, len) in parts {
                if key.len() >= start + len {
                    let v = key[start..start + len]
                        .iter()
                        .fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
                    let _ = write!(s, "/{v}");
                } else if key.len() > start {
                    s.push('/');
                    push_printable(&mut s, &key[start..]);
                    return s;
                } else {
                    return s;
                }
            }
            if key.len() > INDEX_PREFIX_LEN {
                s.push('/');
                push_printable(&mut s, &key[INDEX_PREFIX_LEN..]);
            }
            s
        }
        _ => {
            let mut s = String::from("/Raw/");
            push_printable(&mut s, key);
            s
        }
    }
}

fn push_printable(out: &mut String, bytes: &[u8]) {
    if bytes.iter().all(|b| b.is_ascii_graphic()) {
        out.push_str(&String::from_utf8_lossy(bytes));
    } else {
        out.push_str("0x");
        for b in bytes {
            let _ = write!(out, "{b:02x}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_keys_round_trip_and_nest() {
        let k = {
            let mut k = index_prefix(104, 3, 1);
            k.extend_from_slice(b"\x89");
            k
        };
        let parts = decode_table_key(&k).expect("a complete table key");
        assert_eq!(
            (parts.table_id, parts.shard, parts.index_id, parts.rest),
            (104, 3, 1, &b"\x89"[..])
        );
        assert!(shard_span(104, 3).contains_key(&k));
        assert!(index_span(104, 3, 1).contains_key(&k));
        assert!(!shard_span(104, 4).contains_key(&k));
        assert!(table_span(104).contains(&shard_span(104, 65535)));
        assert!(!table_span(104).contains_key(&shard_prefix(105, 0)));
        assert_eq!(decode_table_key(b"\x02abc"), None);
    }

    #[test]
    fn system_keys_stay_in_their_subspace() {
        let a = system_key("jobs", b"1");
        assert!(system_subspace_span("jobs").contains_key(&a));
        assert!(!system_subspace_span("job").contains_key(&a));
        assert!(system_span().contains_key(&a));
        assert!(!system_span().contains_key(&shard_prefix(1, 0)));
    }

    #[test]
    fn shards_are_stable_and_spread() {
        assert_eq!(shard_for(b"abc", 9), shard_for(b"abc", 9));
        let mut seen = [0u32; 9];
        for i in 0u32..9000 {
            seen[shard_for(&i.to_be_bytes(), 9) as usize] += 1;
        }
        assert!(seen.iter().all(|n| *n > 700), "uneven spread {seen:?}");
    }

    #[test]
    fn pretty_keys() {
        assert_eq!(pretty_key(&index_prefix(104, 3, 1)), "/Table/104/3/1");
        assert_eq!(pretty_key(&system_key("jobs", b"7")), "/System/jobs/7");
        assert_eq!(pretty_key(&shard_span(104, 3).end), "/Table/104/4");
    }
}

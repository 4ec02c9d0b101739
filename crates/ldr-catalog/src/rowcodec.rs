//! The row codec: how a table row maps to KV pairs, shared by the SQL write path and the
//! replication layer.
//!
//! - primary index: `index_prefix(table, shard, 1) ++ key(pk columns)` →
//!   [`encoding::encode_value`] of every column (by column id); `shard =
//!   shard_for(key(pk columns), shard_count)`;
//! - non-unique secondary index `i`: `index_prefix(table, row shard, i) ++ key(index columns)
//!   ++ key(pk columns)` → empty value, written as a dependent of the primary row so it
//!   commits atomically with it;
//! - unique secondary index `i`: `index_prefix(table, shard_for(key(index columns)), i) ++
//!   key(index columns)` → `key(pk columns)`, global, claimed before the row is written and
//!   released after (see `docs/architecture.md`); no entry when an index column is NULL.
//!
//! Replication uses [`decode_row`] on a source primary-index KV, [`remap_row`] to match the
//! destination's columns by name, and [`lww_writes`] to build the destination write.

use ldr_kv::{Condition, RowWrite, ValueHeader};
use ldr_types::keys;

use crate::catalog::{IndexDescriptor, TableDescriptor};
use crate::datum::Datum;
use crate::encoding;
use crate::error::{Result, SqlError};

/// The encoded primary key columns of a row (the key suffix after the index prefix).
pub fn pk_bytes(desc: &TableDescriptor, row: &[Datum]) -> Vec<u8> {
    encoding::encode_key_tuple(desc.pk_positions().into_iter().map(|i| &row[i]))
}

/// The row's shard.
pub fn shard_of(desc: &TableDescriptor, pk: &[u8]) -> u16 {
    keys::shard_for(pk, desc.shard_count.max(1))
}

/// The primary index key of a row.
pub fn primary_key(desc: &TableDescriptor, row: &[Datum]) -> Vec<u8> {
    primary_key_from_pk(desc, &pk_bytes(desc, row))
}

/// The primary index key for encoded primary key columns.
pub fn primary_key_from_pk(desc: &TableDescriptor, pk: &[u8]) -> Vec<u8> {
    let mut k = keys::index_prefix(desc.id, shard_of(desc, pk), ldr_types::PRIMARY_INDEX_ID);
    k.extend_from_slice(pk);
    k
}

/// The stored value of a row (every column, NULLs included, by column id).
pub fn encode_row(desc: &TableDescriptor, row: &[Datum]) -> Vec<u8> {
    encoding::encode_value(desc.columns.iter().zip(row).map(|(c, d)| (c.id, d)))
}

/// Decodes a primary index value into a row in `desc`'s column order. Columns the value
/// lacks (added later) read their absent value; unknown ids (dropped columns) are skipped.
pub fn decode_row_value(desc: &TableDescriptor, value: &[u8]) -> Result<Vec<Datum>> {
    let mut row: Vec<Option<Datum>> = vec![None; desc.columns.len()];
    for (id, d) in encoding::decode_value(value)? {
        if let Some(i) = desc.column_index_by_id(id) {
            row[i] = Some(d);
        }
    }
    Ok(row
        .into_iter()
        .zip(&desc.columns)
        .map(|(d, c)| d.unwrap_or_else(|| c.absent_datum()))
        .collect())
}

/// Decodes a primary index KV (key and value) into a row; checks that the key belongs to
/// the table's primary index.
pub fn decode_row(desc: &TableDescriptor, key: &[u8], value: &[u8]) -> Result<Vec<Datum>> {
    let parts = keys::decode_table_key(key).ok_or_else(|| SqlError::internal("not a table key"))?;
    if parts.table_id != desc.id || parts.index_id != ldr_types::PRIMARY_INDEX_ID {
        return Err(SqlError::internal(format!(
            "key of table {} index {} decoded with the descriptor of table {}",
            parts.table_id, parts.index_id, desc.id
        )));
    }
    decode_row_value(desc, value)
}

/// Decodes the primary key columns from a primary index key.
pub fn decode_pk(desc: &TableDescriptor, key: &[u8]) -> Result<Vec<Datum>> {
    let parts = keys::decode_table_key(key).ok_or_else(|| SqlError::internal("not a table key"))?;
    let mut rest = parts.rest;
    let mut out = Vec::new();
    for i in desc.pk_positions() {
        let (d, r) = encoding::decode_key(rest, &desc.columns[i].ty)?;
        out.push(d);
        rest = r;
    }
    Ok(out)
}

/// A row as `(column name, value)` pairs, visible and hidden columns alike.
pub fn named_row(desc: &TableDescriptor, row: &[Datum]) -> Vec<(String, Datum)> {
    desc.columns
        .iter()
        .zip(row)
        .map(|(c, d)| (c.name.clone(), d.clone()))
        .collect()
}

/// Builds a row for `desc` from named values (columns matched by name; missing ones NULL,
/// unknown ones are an error), coercing each value to the column's type.
pub fn remap_row(desc: &TableDescriptor, named: &[(String, Datum)]) -> Result<Vec<Datum>> {
    let mut row = vec![Datum::Null; desc.columns.len()];
    for (name, d) in named {
        let i = desc
            .column_index(name)
            .ok_or_else(|| SqlError::undefined_column(name))?;
        row[i] = d.clone().coerce_for_column(&desc.columns[i].ty, name)?;
    }
    Ok(row)
}

/// The row as JSON keyed by column name (the DLQ's `incoming_row`).
pub fn row_to_json(desc: &TableDescriptor, row: &[Datum]) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    for (c, d) in desc.columns.iter().zip(row) {
        m.insert(c.name.clone(), d.to_json());
    }
    serde_json::Value::Object(m)
}

/// The key of a non-unique secondary index entry.
pub fn secondary_key(
    desc: &TableDescriptor,
    index: &IndexDescriptor,
    row: &[Datum],
    pk: &[u8],
) -> Vec<u8> {
    let mut k = keys::index_prefix(desc.id, shard_of(desc, pk), index.id);
    for i in desc.index_positions(index) {
        encoding::encode_key(&mut k, &row[i]);
    }
    k.extend_from_slice(pk);
    k
}

/// The encoded values of a unique index's columns, `None` if any is NULL (no entry).
pub fn unique_values(
    desc: &TableDescriptor,
    index: &IndexDescriptor,
    row: &[Datum],
) -> Option<Vec<u8>> {
    let positions = desc.index_positions(index);
    if positions.iter().any(|i| row[*i].is_null()) {
        return None;
    }
    Some(encoding::encode_key_tuple(
        positions.iter().map(|i| &row[*i]),
    ))
}

/// The global key of a unique index entry for encoded values.
pub fn unique_key(desc: &TableDescriptor, index: &IndexDescriptor, values: &[u8]) -> Vec<u8> {
    let mut k = keys::index_prefix(
        desc.id,
        keys::shard_for(values, desc.shard_count.max(1)),
        index.id,
    );
    k.extend_from_slice(values);
    k
}

/// The dependents (non-unique index entries) that move a row from `prev` to `new`: deletes
/// of old entries whose key changes, puts of new ones. Both rows share the primary key.
pub fn secondary_dependents(
    desc: &TableDescriptor,
    new: Option<&[Datum]>,
    prev: Option<&[Datum]>,
    pk: &[u8],
) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    let mut out = Vec::new();
    for index in desc.indexes.iter().filter(|i| !i.unique) {
        let old_key = prev.map(|r| secondary_key(desc, index, r, pk));
        let new_key = new.map(|r| secondary_key(desc, index, r, pk));
        if old_key == new_key {
            continue;
        }
        if let Some(k) = old_key {
            out.push((k, None));
        }
        if let Some(k) = new_key {
            out.push((k, Some(Vec::new())));
        }
    }
    out
}

/// What a replicated (LWW) write of one row consists of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LwwWrites {
    /// The primary row with its non-unique index entries as dependents, with
    /// `Condition::Lww` and the given header.
    pub row: RowWrite,
    /// Unique index entries to put (new values), in their own (global) ranges, with the same
    /// header and an LWW condition: the newest write of an entry wins, as for the row.
    pub unique_puts: Vec<RowWrite>,
    /// Unique index entries to delete (old values that changed), LWW as well.
    pub unique_deletes: Vec<RowWrite>,
}

/// Builds the writes that apply a replicated row version to `desc`'s table: `new` (`None`
/// for a delete) replaces `prev` (the destination's current row, if the caller knows it;
/// `expected_prev` is the encoded value the LWW condition should expect, see
/// [`Condition::Lww`]).
pub fn lww_writes(
    desc: &TableDescriptor,
    new: Option<&[Datum]>,
    prev: Option<&[Datum]>,
    header: ValueHeader,
    expected_prev: Option<Option<Vec<u8>>>,
    local_origin_id: ldr_types::OriginId,
) -> Result<LwwWrites> {
    let key_row = new
        .or(prev)
        .ok_or_else(|| SqlError::internal("an LWW write needs a new or a previous row"))?;
    let pk = pk_bytes(desc, key_row);
    if let (Some(n), Some(p)) = (new, prev)
        && pk_bytes(desc, p) != pk_bytes(desc, n)
    {
        return Err(SqlError::internal(
            "an LWW write cannot change the primary key",
        ));
    }
    let condition = Condition::Lww {
        expected_prev,
        local_origin_id,
    };
    let row = RowWrite {
        key: primary_key_from_pk(desc, &pk),
        value: new.map(|r| encode_row(desc, r)),
        condition,
        header,
        dependents: secondary_dependents(desc, new, prev, &pk),
    };
    let entry_cond = Condition::Lww {
        expected_prev: None,
        local_origin_id,
    };
    let mut unique_puts = Vec::new();
    let mut unique_deletes = Vec::new();
    for index in desc.indexes.iter().filter(|i| i.unique) {
        let new_vals = new.and_then(|r| unique_values(desc, index, r));
        let old_vals = prev.and_then(|r| unique_values(desc, index, r));
        if new_vals == old_vals && new_vals.is_some() {
            continue;
        }
        if let Some(v) = &new_vals {
            unique_puts.push(RowWrite {
                key: unique_key(desc, index, v),
                value: Some(pk.clone()),
                condition: entry_cond.clone(),
                header,
                dependents: vec![],
            });
        }
        if let Some(v) = &old_vals {
            unique_deletes.push(RowWrite {
                key: unique_key(desc, index, v),
                value: None,
                condition: entry_cond.clone(),
                header,
                dependents: vec![],
            });
        }
    }
    Ok(LwwWrites {
        row,
        unique_puts,
        unique_deletes,
    })
}

/// A canonical encoding of the listed columns of a row, independent of column ids (for
/// fingerprints): for each column, its key encoding, or for JSONB its canonical text.
pub fn canonical_bytes(row: &[Datum], positions: &[usize]) -> Vec<u8> {
    let mut out = Vec::new();
    for &i in positions {
        encoding::encode_key(&mut out, &row[i]);
        // Keys normalize decimals; keep the scale so 1.0 and 1.00 fingerprint differently,
        // as stored values differ.
        if let Datum::Decimal(d) = &row[i] {
            out.push(d.scale() as u8);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::ColumnDescriptor;
    use crate::types::SqlType;

    fn desc() -> TableDescriptor {
        crate::test_fixtures::users_table(3)
    }

    fn row(id: i64, email: &str, city: &str) -> Vec<Datum> {
        vec![
            Datum::Int(id),
            Datum::String(email.into()),
            Datum::String(city.into()),
        ]
    }

    #[test]
    fn keys_and_values_round_trip() {
        let d = desc();
        let r = row(7, "a@x", "nyc");
        let key = primary_key(&d, &r);
        let parts = keys::decode_table_key(&key).expect("table key");
        assert_eq!((parts.table_id, parts.index_id), (104, 1));
        assert_eq!(parts.shard, shard_of(&d, &pk_bytes(&d, &r)));
        let value = encode_row(&d, &r);
        assert_eq!(decode_row(&d, &key, &value).expect("decodes"), r);
        assert_eq!(decode_pk(&d, &key).expect("pk"), vec![Datum::Int(7)]);
        assert_eq!(
            row_to_json(&d, &r),
            serde_json::json!({"id": 7, "email": "a@x", "city": "nyc"})
        );
        // A descriptor with the columns in another order and other ids decodes by name.
        let named = named_row(&d, &r);
        let mut other = d.clone();
        other.columns.reverse();
        for (i, c) in other.columns.iter_mut().enumerate() {
            c.id = 10 + i as u32;
        }
        other.primary_index.columns[0].column_id = other.column("id").expect("id").id;
        let remapped = remap_row(&other, &named).expect("remaps");
        assert_eq!(
            remapped,
            vec![
                Datum::String("nyc".into()),
                Datum::String("a@x".into()),
                Datum::Int(7)
            ]
        );
        other.id = 105;
        assert!(
            decode_row(&other, &key, &value).is_err(),
            "a key of another table is refused"
        );
    }

    #[test]
    fn dropped_and_added_columns() {
        let mut d = desc();
        let value = encode_row(&d, &row(1, "e", "c"));
        d.columns.remove(2);
        d.indexes.remove(1);
        d.columns.push(ColumnDescriptor {
            id: 4,
            name: "n".into(),
            ty: SqlType::Int8,
            nullable: true,
            default_expr: Some("5".into()),
            hidden: false,
            absent_value: Some("5".into()),
        });
        let decoded = decode_row_value(&d, &value).expect("decodes");
        assert_eq!(
            decoded,
            vec![Datum::Int(1), Datum::String("e".into()), Datum::Int(5)]
        );
        // An explicit NULL written after the ADD COLUMN stays NULL.
        let v2 = encode_row(&d, &[Datum::Int(1), Datum::String("e".into()), Datum::Null]);
        assert_eq!(decode_row_value(&d, &v2).expect("decodes")[2], Datum::Null);
    }

    #[test]
    fn lww_writes_cover_indexes() {
        let d = desc();
        let prev = row(1, "old@x", "nyc");
        let new = row(1, "new@x", "sf");
        let header = ValueHeader {
            origin_id: 9,
            origin_ts: ldr_types::Timestamp::new(5, 0),
            omit_in_rangefeeds: false,
        };
        let w = lww_writes(&d, Some(&new), Some(&prev), header, None, 3).expect("builds");
        assert_eq!(w.row.key, primary_key(&d, &new));
        assert_eq!(
            w.row.dependents.len(),
            2,
            "old city entry deleted, new one put"
        );
        assert!(w.row.dependents.iter().any(|(_, v)| v.is_none()));
        assert_eq!(w.unique_puts.len(), 1);
        assert_eq!(w.unique_deletes.len(), 1);
        assert_eq!(
            w.unique_puts[0].value.as_deref(),
            Some(&pk_bytes(&d, &new)[..])
        );
        let del = lww_writes(&d, None, Some(&new), header, None, 3).expect("delete");
        assert!(del.row.value.is_none());
        assert_eq!(del.row.dependents.len(), 1);
        assert_eq!(del.unique_deletes.len(), 1);
        let same = lww_writes(&d, Some(&new), Some(&new), header, None, 3).expect("no-op indexes");
        assert!(
            same.row.dependents.is_empty()
                && same.unique_puts.is_empty()
                && same.unique_deletes.is_empty()
        );
    }
}

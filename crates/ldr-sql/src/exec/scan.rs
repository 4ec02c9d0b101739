//! Reading rows: choosing an access path from a filter (primary key point lookups and
//! ranges, unique and non-unique secondary index lookups, or a scan of every shard),
//! reading at the statement's timestamp, and overlaying the transaction's own writes.
//!
//! The access path only narrows what is read; callers always re-apply the full filter.
//!
//! Inside an explicit transaction every value read from the KV layer is recorded in the
//! transaction's read set (`txn.rs`): rows found, keys looked up and found absent, and the
//! unique index entries of unique lookups. A read that finds another value than the
//! transaction saw before fails with 40001.

use std::sync::Arc;

use futures::future::join_all;
use ldr_kv::{KeyVersion, KvClient, Version};
use ldr_types::{Span, Timestamp, keys, prefix_end};

use super::rows::StoredRow;
use super::txn_buffer::TxnBuffer;
use crate::catalog::{
    IndexDescriptor, MVCC_TIMESTAMP_COLUMN, ORIGIN_TIMESTAMP_COLUMN, TableDescriptor,
};
use crate::datum::Datum;
use crate::encoding;
use crate::error::{Result, SqlError};
use crate::expr::{BinOp, EvalCtx, ScalarExpr, Scope, ScopeColumn};
use crate::rowcodec;
use crate::types::{SqlType, TypeFamily};

const PAGE: usize = 1000;
/// Point lookups beyond this many keys scan instead.
const MAX_POINT_KEYS: usize = 1000;

/// The scope of a table's rows: its columns (hidden ones marked), then the system columns.
pub(crate) fn table_scope(desc: &TableDescriptor, alias: Option<&str>) -> Scope {
    let table = Some(alias.unwrap_or(&desc.name).to_string());
    let mut columns: Vec<ScopeColumn> = desc
        .columns
        .iter()
        .map(|c| ScopeColumn {
            table: table.clone(),
            name: c.name.clone(),
            ty: c.ty.clone(),
            hidden: c.hidden,
        })
        .collect();
    for name in [MVCC_TIMESTAMP_COLUMN, ORIGIN_TIMESTAMP_COLUMN] {
        columns.push(ScopeColumn {
            table: table.clone(),
            name: name.into(),
            ty: SqlType::DECIMAL,
            hidden: true,
        });
    }
    Scope { columns }
}

/// Decodes one stored version of a primary index key (`None` for a tombstone).
pub(crate) fn decode_version(
    desc: &TableDescriptor,
    key: &[u8],
    v: &Version,
) -> Result<Option<StoredRow>> {
    let Some(raw) = &v.value else { return Ok(None) };
    let values = rowcodec::decode_row(desc, key, raw)?;
    Ok(Some(StoredRow {
        key: key.to_vec(),
        values,
        raw: raw.clone(),
        ts: v.ts,
        origin_ts: v.header.origin_ts,
        buffered: false,
    }))
}

/// How rows are found.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Access {
    Full,
    /// Full primary keys.
    Keys(Vec<Vec<u8>>),
    /// A range of the primary key's encoding (suffix after the index prefix), in every shard.
    PkRange {
        start: Vec<u8>,
        end: Option<Vec<u8>>,
    },
    /// Encoded values of a unique index.
    Unique {
        index: IndexDescriptor,
        values: Vec<Vec<u8>>,
    },
    /// Encoded leading values of a non-unique index.
    Secondary {
        index: IndexDescriptor,
        prefixes: Vec<Vec<u8>>,
    },
}

/// The constraints a filter puts on one column.
#[derive(Default, Debug)]
struct ColumnBounds {
    eq: Option<Vec<Datum>>,
    lo: Option<(Datum, bool)>,
    hi: Option<(Datum, bool)>,
}

fn conjuncts<'a>(e: &'a ScalarExpr, out: &mut Vec<&'a ScalarExpr>) {
    if let ScalarExpr::Binary(BinOp::And, a, b) = e {
        conjuncts(a, out);
        conjuncts(b, out);
    } else {
        out.push(e);
    }
}

/// A value usable as an index key for a column of `ty` (same family, or a lossless numeric
/// widening).
fn key_value(d: Datum, ty: &SqlType) -> Option<Datum> {
    if d.is_null() {
        return None;
    }
    let fam = d.natural_type().family();
    match (fam, ty.family()) {
        (a, b) if a == b => Some(d),
        (TypeFamily::Int, TypeFamily::Float) | (TypeFamily::Int, TypeFamily::Decimal) => {
            d.cast(ty).ok()
        }
        (TypeFamily::Timestamp, TypeFamily::TimestampTz)
        | (TypeFamily::TimestampTz, TypeFamily::Timestamp) => d.cast(ty).ok(),
        _ => None,
    }
}

fn const_value(e: &ScalarExpr, ctx: &EvalCtx) -> Option<Datum> {
    if e.references_columns() || e.is_volatile() {
        return None;
    }
    e.eval(&[], ctx).ok()
}

fn analyze(
    filter: &ScalarExpr,
    ncols: usize,
    desc: &TableDescriptor,
    ctx: &EvalCtx,
) -> Vec<ColumnBounds> {
    let mut bounds: Vec<ColumnBounds> = (0..ncols).map(|_| ColumnBounds::default()).collect();
    let mut list = Vec::new();
    conjuncts(filter, &mut list);
    let col_ty = |i: usize| desc.columns.get(i).map(|c| c.ty.clone());
    for c in list {
        match c {
            ScalarExpr::Binary(op, a, b) => {
                let (col, val, op) = match (a.as_ref(), b.as_ref()) {
                    (ScalarExpr::Column(i), other) => (*i, other, *op),
                    (other, ScalarExpr::Column(i)) => (
                        *i,
                        other,
                        match op {
                            BinOp::Lt => BinOp::Gt,
                            BinOp::LtEq => BinOp::GtEq,
                            BinOp::Gt => BinOp::Lt,
                            BinOp::GtEq => BinOp::LtEq,
                            o => *o,
                        },
                    ),
                    _ => continue,
                };
                let Some(ty) = col_ty(col) else { continue };
                let Some(v) = const_value(val, ctx).and_then(|v| key_value(v, &ty)) else {
                    continue;
                };
                let b = &mut bounds[col];
                match op {
                    BinOp::Eq => b.eq = Some(vec![v]),
                    BinOp::Gt => b.lo = Some((v, false)),
                    BinOp::GtEq => b.lo = Some((v, true)),
                    BinOp::Lt => b.hi = Some((v, false)),
                    BinOp::LtEq => b.hi = Some((v, true)),
                    _ => {}
                }
            }
            ScalarExpr::InList {
                expr,
                list,
                negated: false,
            } => {
                let ScalarExpr::Column(col) = expr.as_ref() else {
                    continue;
                };
                let Some(ty) = col_ty(*col) else { continue };
                let vals: Option<Vec<Datum>> = list
                    .iter()
                    .map(|x| const_value(x, ctx).and_then(|v| key_value(v, &ty)))
                    .collect();
                if let Some(mut vals) = vals {
                    vals.sort_by(|a, b| a.sort_cmp(b));
                    vals.dedup_by(|a, b| a.sort_cmp(b) == std::cmp::Ordering::Equal);
                    bounds[*col].eq = Some(vals);
                }
            }
            ScalarExpr::Between {
                expr,
                low,
                high,
                negated: false,
            } => {
                let ScalarExpr::Column(col) = expr.as_ref() else {
                    continue;
                };
                let Some(ty) = col_ty(*col) else { continue };
                if let Some(lo) = const_value(low, ctx).and_then(|v| key_value(v, &ty)) {
                    bounds[*col].lo = Some((lo, true));
                }
                if let Some(hi) = const_value(high, ctx).and_then(|v| key_value(v, &ty)) {
                    bounds[*col].hi = Some((hi, true));
                }
            }
            _ => {}
        }
    }
    bounds
}

/// Cartesian product of per-column value lists, encoded; `None` if too many.
fn combos(lists: &[&Vec<Datum>]) -> Option<Vec<Vec<u8>>> {
    let total: usize = lists
        .iter()
        .map(|l| l.len())
        .try_fold(1usize, |acc, n| acc.checked_mul(n))?;
    if total > MAX_POINT_KEYS {
        return None;
    }
    let mut out: Vec<Vec<u8>> = vec![Vec::new()];
    for l in lists {
        let mut next = Vec::with_capacity(out.len() * l.len());
        for prefix in &out {
            for v in l.iter() {
                let mut k = prefix.clone();
                encoding::encode_key(&mut k, v);
                next.push(k);
            }
        }
        out = next;
    }
    Some(out)
}

/// Picks an access path for `filter` (bound in [`table_scope`]).
pub(crate) fn plan_access(
    desc: &TableDescriptor,
    filter: Option<&ScalarExpr>,
    ctx: &EvalCtx,
) -> Access {
    let Some(filter) = filter else {
        return Access::Full;
    };
    let bounds = analyze(filter, desc.columns.len(), desc, ctx);
    let pk = desc.pk_positions();
    // 1. Every primary key column fixed: point lookups.
    let eqs: Option<Vec<&Vec<Datum>>> = pk.iter().map(|i| bounds[*i].eq.as_ref()).collect();
    if let Some(lists) = eqs
        && let Some(pks) = combos(&lists)
    {
        return Access::Keys(
            pks.iter()
                .map(|p| rowcodec::primary_key_from_pk(desc, p))
                .collect(),
        );
    }
    // 2. A unique index fully fixed.
    for index in desc.indexes.iter().filter(|i| i.unique && !i.write_only) {
        let eqs: Option<Vec<&Vec<Datum>>> = desc
            .index_positions(index)
            .iter()
            .map(|i| bounds[*i].eq.as_ref())
            .collect();
        if let Some(lists) = eqs
            && let Some(values) = combos(&lists)
        {
            return Access::Unique {
                index: index.clone(),
                values,
            };
        }
    }
    // 3. A range on the leading primary key columns (equalities then one range).
    let mut prefix = Vec::new();
    let mut used = false;
    for (n, i) in pk.iter().enumerate() {
        let b = &bounds[*i];
        if let Some(eq) = &b.eq
            && eq.len() == 1
        {
            encoding::encode_key(&mut prefix, &eq[0]);
            used = true;
            continue;
        }
        if b.lo.is_some() || b.hi.is_some() {
            let start = match &b.lo {
                Some((v, inclusive)) => {
                    let mut k = prefix.clone();
                    encoding::encode_key(&mut k, v);
                    if *inclusive { k } else { prefix_end(&k) }
                }
                // Skip NULLs (they never satisfy a comparison).
                None => {
                    let mut k = prefix.clone();
                    k.push(0x01);
                    k
                }
            };
            let end = match &b.hi {
                Some((v, inclusive)) => {
                    let mut k = prefix.clone();
                    encoding::encode_key(&mut k, v);
                    Some(if *inclusive { prefix_end(&k) } else { k })
                }
                None => (!prefix.is_empty()).then(|| prefix_end(&prefix)),
            };
            return Access::PkRange { start, end };
        }
        let _ = n;
        break;
    }
    if used {
        return Access::PkRange {
            start: prefix.clone(),
            end: Some(prefix_end(&prefix)),
        };
    }
    // 4. A non-unique index with its leading columns fixed.
    for index in desc.indexes.iter().filter(|i| !i.unique && !i.write_only) {
        let positions = desc.index_positions(index);
        let mut lists = Vec::new();
        for i in &positions {
            match bounds[*i].eq.as_ref() {
                Some(l) => lists.push(l),
                None => break,
            }
        }
        if !lists.is_empty()
            && let Some(prefixes) = combos(&lists)
        {
            return Access::Secondary {
                index: index.clone(),
                prefixes,
            };
        }
    }
    Access::Full
}

/// Every live version in `span` at `ts` (`None`: the latest), paged.
pub(crate) async fn scan_all(
    kv: &KvClient,
    span: &Span,
    ts: impl Into<Option<Timestamp>>,
) -> Result<Vec<KeyVersion>> {
    let ts = ts.into();
    let mut out = Vec::new();
    let mut start = span.start.clone();
    loop {
        if span.end.as_slice() <= start.as_slice() && !span.end.is_empty() {
            break;
        }
        let page = kv
            .scan(&Span::new(start.clone(), span.end.clone()), ts, PAGE)
            .await?;
        let n = page.len();
        if let Some(last) = page.last() {
            start = last.key.clone();
            start.push(0);
        }
        out.extend(page);
        if n < PAGE {
            break;
        }
    }
    Ok(out)
}

/// Reads a row by primary key, through the transaction's writes.
pub(crate) async fn get_row(
    kv: &KvClient,
    desc: &TableDescriptor,
    key: &[u8],
    ts: Timestamp,
    txn: Option<&TxnBuffer>,
) -> Result<Option<StoredRow>> {
    if let Some(buf) = txn
        && let Some(change) = buf.get(desc.id, key)
    {
        return Ok(change
            .new
            .as_ref()
            .map(|values| buffered_row(desc, key, values)));
    }
    let v = kv.get(key, Some(ts)).await?;
    if let Some(buf) = txn {
        buf.observe(key, v.as_ref().and_then(|v| v.value.as_deref()))?;
    }
    match v {
        Some(v) => decode_version(desc, key, &v),
        None => Ok(None),
    }
}

/// Reads rows by primary key, in input order (`None`: absent), through the transaction's
/// writes, like [`get_row`] for each key but with one request per range owner.
pub(crate) async fn get_rows(
    kv: &KvClient,
    desc: &TableDescriptor,
    keys: &[Vec<u8>],
    ts: Timestamp,
    txn: Option<&TxnBuffer>,
) -> Result<Vec<Option<StoredRow>>> {
    let mut out: Vec<Option<StoredRow>> = vec![None; keys.len()];
    let mut unbuffered: Vec<usize> = Vec::with_capacity(keys.len());
    for (i, key) in keys.iter().enumerate() {
        match txn.and_then(|buf| buf.get(desc.id, key)) {
            Some(change) => {
                out[i] = change
                    .new
                    .as_ref()
                    .map(|values| buffered_row(desc, key, values));
            }
            None => unbuffered.push(i),
        }
    }
    if unbuffered.len() == keys.len() {
        return fetch(kv, desc, keys, ts, txn).await;
    }
    let wanted: Vec<Vec<u8>> = unbuffered.iter().map(|i| keys[*i].clone()).collect();
    for (i, row) in unbuffered
        .into_iter()
        .zip(fetch(kv, desc, &wanted, ts, txn).await?)
    {
        out[i] = row;
    }
    Ok(out)
}

/// For each of `values` (encoded values of a unique index), the row holding them, through
/// the transaction's writes (as a lookup through [`Access::Unique`] would find it), with one
/// request per range owner for the index entries and one for the rows.
pub(crate) async fn find_unique(
    kv: &KvClient,
    desc: &TableDescriptor,
    index: &IndexDescriptor,
    values: &[Vec<u8>],
    ts: Timestamp,
    txn: Option<&TxnBuffer>,
) -> Result<Vec<Option<StoredRow>>> {
    let entry_keys: Vec<Vec<u8>> = values
        .iter()
        .map(|v| rowcodec::unique_key(desc, index, v))
        .collect();
    let entries = kv.get_many(&entry_keys, Some(ts)).await?;
    let mut owners: Vec<(usize, Vec<u8>)> = Vec::new();
    for (i, (key, entry)) in entry_keys.iter().zip(&entries).enumerate() {
        // The entry too: a value found absent that another transaction claims is a conflict
        // (a phantom through a unique lookup).
        if let Some(buf) = txn {
            buf.observe(key, entry.as_ref().and_then(|v| v.value.as_deref()))?;
        }
        if let Some(Version {
            value: Some(pk), ..
        }) = entry
        {
            owners.push((i, rowcodec::primary_key_from_pk(desc, pk)));
        }
    }
    let owner_keys: Vec<Vec<u8>> = owners.iter().map(|(_, k)| k.clone()).collect();
    let rows = fetch(kv, desc, &owner_keys, ts, txn).await?;
    let changed = match txn {
        Some(buf) => buf.table_changes(desc.id),
        None => Vec::new(),
    };
    let holds =
        |row: &[Datum], v: &[u8]| rowcodec::unique_values(desc, index, row).as_deref() == Some(v);
    let mut out: Vec<Option<StoredRow>> = vec![None; values.len()];
    for ((i, key), row) in owners.into_iter().zip(rows) {
        // A row the transaction changed is seen as it changed it (below).
        if changed.iter().any(|(k, _)| **k == key) {
            continue;
        }
        if let Some(row) = row
            && holds(&row.values, &values[i])
        {
            out[i] = Some(row);
        }
    }
    if !changed.is_empty() {
        for (i, slot) in out.iter_mut().enumerate() {
            if slot.is_some() {
                continue;
            }
            *slot = changed.iter().find_map(|(k, new)| {
                new.filter(|n| holds(n, &values[i]))
                    .map(|n| buffered_row(desc, k, n))
            });
        }
    }
    Ok(out)
}

pub(crate) fn buffered_row(desc: &TableDescriptor, key: &[u8], values: &[Datum]) -> StoredRow {
    StoredRow {
        key: key.to_vec(),
        values: values.to_vec(),
        raw: rowcodec::encode_row(desc, values),
        ts: Timestamp::ZERO,
        origin_ts: Timestamp::ZERO,
        buffered: true,
    }
}

/// The primary keys a secondary-index key points at.
fn pk_from_secondary(
    desc: &TableDescriptor,
    index: &IndexDescriptor,
    key: &[u8],
) -> Result<Vec<u8>> {
    let parts = keys::decode_table_key(key).ok_or_else(|| SqlError::internal("bad index key"))?;
    let mut rest = parts.rest;
    for i in desc.index_positions(index) {
        let (_, r) = encoding::decode_key(rest, &desc.columns[i].ty)?;
        rest = r;
    }
    Ok(rest.to_vec())
}

/// Reads the rows an access path finds, at `ts`, through the transaction's writes.
pub(crate) async fn read(
    kv: &KvClient,
    desc: &Arc<TableDescriptor>,
    access: &Access,
    ts: Timestamp,
    txn: Option<&TxnBuffer>,
) -> Result<Vec<StoredRow>> {
    let shards = desc.shard_count.max(1);
    let mut rows: Vec<StoredRow> = match access {
        Access::Keys(keys) => get_many(kv, desc, keys.clone(), ts, txn).await?,
        Access::Full | Access::PkRange { .. } => {
            let spans: Vec<Span> = (0..shards)
                .map(|s| {
                    let prefix = keys::index_prefix(desc.id, s, ldr_types::PRIMARY_INDEX_ID);
                    match access {
                        Access::PkRange { start, end } => {
                            let mut a = prefix.clone();
                            a.extend_from_slice(start);
                            let b = match end {
                                Some(e) => {
                                    let mut b = prefix.clone();
                                    b.extend_from_slice(e);
                                    b
                                }
                                None => prefix_end(&prefix),
                            };
                            Span::new(a, b)
                        }
                        _ => Span::prefix(&prefix),
                    }
                })
                .collect();
            if let Some(buf) = txn {
                spans.iter().for_each(|sp| buf.observe_span(sp));
            }
            let parts = join_all(spans.iter().map(|sp| scan_all(kv, sp, ts))).await;
            let mut out = Vec::new();
            for p in parts {
                for kvv in p? {
                    if let Some(buf) = txn {
                        buf.observe(&kvv.key, kvv.version.value.as_deref())?;
                    }
                    if let Some(r) = decode_version(desc, &kvv.key, &kvv.version)? {
                        out.push(r);
                    }
                }
            }
            out
        }
        Access::Unique { index, values } => {
            let entry_keys: Vec<Vec<u8>> = values
                .iter()
                .map(|v| rowcodec::unique_key(desc, index, v))
                .collect();
            let entries = kv.get_many(&entry_keys, Some(ts)).await?;
            let mut pks = Vec::new();
            for (key, e) in entry_keys.iter().zip(entries) {
                // The entry too: a value found absent that another transaction claims is a
                // conflict (a phantom through a unique lookup).
                if let Some(buf) = txn {
                    buf.observe(key, e.as_ref().and_then(|v| v.value.as_deref()))?;
                }
                if let Some(Version {
                    value: Some(pk), ..
                }) = e
                {
                    pks.push(rowcodec::primary_key_from_pk(desc, &pk));
                }
            }
            get_many(kv, desc, pks, ts, txn).await?
        }
        Access::Secondary { index, prefixes } => {
            let mut spans = Vec::new();
            for s in 0..shards {
                for p in prefixes {
                    let mut k = keys::index_prefix(desc.id, s, index.id);
                    k.extend_from_slice(p);
                    spans.push(Span::prefix(&k));
                }
            }
            if let Some(buf) = txn {
                spans.iter().for_each(|sp| buf.observe_span(sp));
            }
            let parts = join_all(spans.iter().map(|sp| scan_all(kv, sp, ts))).await;
            let mut pks = Vec::new();
            for p in parts {
                for kvv in p? {
                    let pk = pk_from_secondary(desc, index, &kvv.key)?;
                    pks.push(rowcodec::primary_key_from_pk(desc, &pk));
                }
            }
            pks.sort();
            pks.dedup();
            get_many(kv, desc, pks, ts, txn).await?
        }
    };
    if let Some(buf) = txn {
        let changed = buf.table_changes(desc.id);
        if !changed.is_empty() {
            rows.retain(|r| !changed.iter().any(|(k, _)| **k == r.key));
            for (k, values) in changed {
                if let Some(values) = values {
                    rows.push(buffered_row(desc, k, values));
                }
            }
        }
    }
    Ok(rows)
}

/// Up to `n` rows of a table outside a transaction (a `LIMIT` without filter, order,
/// grouping or join): the shards are read one after the other, a page at a time, until `n`
/// rows are found, instead of reading the whole table.
pub(crate) async fn read_first(
    kv: &KvClient,
    desc: &TableDescriptor,
    ts: Timestamp,
    n: usize,
) -> Result<Vec<StoredRow>> {
    let mut out = Vec::with_capacity(n.min(PAGE));
    for shard in 0..desc.shard_count.max(1) {
        let prefix = keys::index_prefix(desc.id, shard, ldr_types::PRIMARY_INDEX_ID);
        let span = Span::prefix(&prefix);
        let mut start = span.start.clone();
        while out.len() < n {
            let want = (n - out.len()).clamp(1, PAGE);
            let page = kv
                .scan(&Span::new(start.clone(), span.end.clone()), Some(ts), want)
                .await?;
            let full = page.len() == want;
            if let Some(last) = page.last() {
                start = last.key.clone();
                start.push(0);
            }
            for kvv in page {
                if let Some(r) = decode_version(desc, &kvv.key, &kvv.version)? {
                    out.push(r);
                }
            }
            if !full {
                break;
            }
        }
        if out.len() >= n {
            break;
        }
    }
    out.truncate(n);
    Ok(out)
}

/// Reads rows by primary key; in a transaction, records every key read (absent ones too).
async fn get_many(
    kv: &KvClient,
    desc: &TableDescriptor,
    keys: Vec<Vec<u8>>,
    ts: Timestamp,
    txn: Option<&TxnBuffer>,
) -> Result<Vec<StoredRow>> {
    Ok(fetch(kv, desc, &keys, ts, txn)
        .await?
        .into_iter()
        .flatten()
        .collect())
}

/// Reads rows by primary key from the KV layer (not through the transaction's writes), in
/// input order, with one request per range owner; in a transaction, records every key read
/// (absent ones too).
async fn fetch(
    kv: &KvClient,
    desc: &TableDescriptor,
    keys: &[Vec<u8>],
    ts: Timestamp,
    txn: Option<&TxnBuffer>,
) -> Result<Vec<Option<StoredRow>>> {
    let got = kv.get_many(keys, Some(ts)).await?;
    let mut out = Vec::with_capacity(keys.len());
    for (k, v) in keys.iter().zip(got) {
        if let Some(buf) = txn {
            buf.observe(k, v.as_ref().and_then(|v| v.value.as_deref()))?;
        }
        out.push(match v {
            Some(v) => decode_version(desc, k, &v)?,
            None => None,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expr::Binder;
    use crate::parser::parse_expr;

    /// `t (id INT8 PRIMARY KEY, email STRING UNIQUE, city STRING, INDEX (city))`, 4 shards.
    fn desc() -> TableDescriptor {
        ldr_catalog::test_fixtures::users_table(4)
    }

    fn access(filter: &str, params: Vec<Datum>) -> Access {
        let d = desc();
        let scope = table_scope(&d, None);
        let mut types = Vec::new();
        let (f, _) = Binder::new(&scope, &mut types)
            .bind(&parse_expr(filter).expect("parses"))
            .expect("binds");
        plan_access(
            &d,
            Some(&f),
            &EvalCtx {
                params,
                ..EvalCtx::default()
            },
        )
    }

    #[test]
    fn point_lookups_and_ranges_avoid_full_scans() {
        let d = desc();
        let key = |id: i64| rowcodec::primary_key(&d, &[Datum::Int(id), Datum::Null, Datum::Null]);
        assert_eq!(access("id = 7", vec![]), Access::Keys(vec![key(7)]));
        assert_eq!(
            access("7 = id AND city = 'x'", vec![]),
            Access::Keys(vec![key(7)])
        );
        assert_eq!(
            access("id = $1", vec![Datum::Int(9)]),
            Access::Keys(vec![key(9)])
        );
        assert_eq!(
            access("id IN (3, 1, 3)", vec![]),
            Access::Keys(vec![key(1), key(3)])
        );
        assert!(
            matches!(access("email = 'a@x'", vec![]), Access::Unique { ref values, .. } if values.len() == 1)
        );
        assert!(matches!(
            access("id > 5 AND id <= 10", vec![]),
            Access::PkRange { end: Some(_), .. }
        ));
        assert!(matches!(
            access("id BETWEEN 1 AND 2", vec![]),
            Access::PkRange { .. }
        ));
        assert!(
            matches!(access("city = 'nyc'", vec![]), Access::Secondary { ref prefixes, .. } if prefixes.len() == 1)
        );
        assert_eq!(access("city LIKE 'n%'", vec![]), Access::Full);
        assert_eq!(access("id = 1 OR id = 2", vec![]), Access::Full);
        assert_eq!(access("id + 1 = 2", vec![]), Access::Full);
        // A value of another type family cannot be a key: scan (the filter still applies).
        assert_eq!(access("id = 1.5", vec![]), Access::Full);
    }

    #[test]
    fn ranges_cover_exactly_the_bounds() {
        let d = desc();
        let enc = |id: i64| crate::encoding::encode_key_tuple([&Datum::Int(id)]);
        let Access::PkRange { start, end } = access("id >= 5 AND id < 10", vec![]) else {
            panic!("range")
        };
        assert!(start <= enc(5) && enc(4) < start);
        let end = end.expect("bounded");
        assert!(enc(9) < end && enc(10) >= end);
        let Access::PkRange { start, end } = access("id > 5", vec![]) else {
            panic!("range")
        };
        assert!(enc(5) < start && start <= enc(6));
        assert_eq!(end, None);
        let _ = d;
    }
}

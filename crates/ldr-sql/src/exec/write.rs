//! The write path: row changes become conditional KV writes, with unique-index claims and
//! constraint checks.
//!
//! A [`Change`] replaces a row's previous committed value (`old`, `None` if absent) with a
//! new one (`None` deletes). Applying it:
//! 1. writes every unique index entry the new row adds (a conditional put of the entry whose
//!    value is the row's primary key; an entry owned by another row that still holds the
//!    value is a 23505; one whose row no longer holds the value, left by a writer from before
//!    entries were transactional, is taken over);
//! 2. writes the primary row, conditional on `old` (`Condition::Expect`), with its
//!    non-unique index entries as dependents, so they commit atomically;
//! 3. releases the unique entries the old row held and the new one does not (conditional
//!    deletes that expect this row's primary key).
//!
//! A table with unique indexes, or changes in several ranges, are written in one KV
//! transaction ([`apply_rows_unlocked`]): the row and its entries become visible together or
//! not at all, and an entry of a writer still in progress is an intent that this writer waits
//! for (or pushes) like any other. If a write's condition fails, the transaction is rolled
//! back and the caller gets a conflict with the actual version, to re-read and retry
//! (autocommit) or fail the COMMIT (`txn.rs`).

use std::collections::HashMap;
use std::sync::Arc;

use ldr_kv::{Condition, KvClient, RowOutcome, RowWrite, ValueHeader, Version};
use ldr_types::Timestamp;

use super::SqlServer;
use super::rows::Change;
use super::scan;
use super::txn_buffer::TxnBuffer;
use crate::catalog::{Catalog, ForeignKeyDescriptor, IndexDescriptor, TableDescriptor};
use crate::datum::Datum;
use crate::encoding;
use crate::error::{Result, SqlError, sqlstate};
use crate::expr::{BinOp, Binder, EvalCtx, ScalarExpr};
use crate::parser;
use crate::rowcodec;
use crate::validated::{ValidatedOutcome, ValidatedWrite};

/// What happened to a change.
#[derive(Debug, Clone)]
pub(crate) enum Applied {
    Written(Timestamp),
    /// The row was not `old` any more: the actual latest version (`None`: not attempted
    /// because another row of the same range conflicted; retry it).
    Conflict(Option<Version>),
}

/// The 23505 error for a duplicate in an index.
pub(crate) fn unique_violation(
    desc: &TableDescriptor,
    index: &IndexDescriptor,
    row: &[Datum],
) -> SqlError {
    let positions = desc.index_positions(index);
    let names: Vec<&str> = positions
        .iter()
        .map(|i| desc.columns[*i].name.as_str())
        .collect();
    let values: Vec<String> = positions.iter().map(|i| row[*i].to_sql_literal()).collect();
    SqlError::new(
        sqlstate::UNIQUE_VIOLATION,
        format!(
            "duplicate key value violates unique constraint \"{}\"",
            index.name
        ),
    )
    .with_detail(format!(
        "Key ({})=({}) already exists.",
        names.join(", "),
        values.join(", ")
    ))
}

enum Claim {
    /// We wrote the entry: release it if the row write fails.
    New,
    /// The entry already pointed at this row.
    Ours,
}

async fn claim(
    kv: &KvClient,
    desc: &TableDescriptor,
    index: &IndexDescriptor,
    values: &[u8],
    pk: &[u8],
    row: &[Datum],
) -> Result<Claim> {
    let key = rowcodec::unique_key(desc, index, values);
    let mut expected: Option<Vec<u8>> = None;
    for _ in 0..CLAIM_ATTEMPTS {
        let w = RowWrite {
            key: key.clone(),
            value: Some(pk.to_vec()),
            condition: Condition::Expect(expected.clone()),
            header: ValueHeader::default(),
            dependents: vec![],
        };
        let outcome = kv.write(vec![w], true).await?.pop().map(|(_, o)| o);
        match outcome {
            Some(RowOutcome::Written { .. }) => return Ok(Claim::New),
            Some(RowOutcome::ConditionFailed { actual: Some(v) }) => {
                let Some(owner) = v.value.clone() else {
                    expected = None;
                    continue;
                };
                if owner == pk {
                    return Ok(Claim::Ours);
                }
                // Does the owning row still hold the value?
                let owner_key = rowcodec::primary_key_from_pk(desc, &owner);
                let holds = match kv.get(&owner_key, None).await? {
                    Some(ov) => match &ov.value {
                        Some(raw) => {
                            let owner_row = rowcodec::decode_row_value(desc, raw)?;
                            rowcodec::unique_values(desc, index, &owner_row).as_deref()
                                == Some(values)
                        }
                        None => false,
                    },
                    None => false,
                };
                if holds {
                    return Err(unique_violation(desc, index, row));
                }
                // An entry without its row (written before entries were transactional).
                expected = Some(owner);
            }
            Some(RowOutcome::ConditionFailed { actual: None }) => expected = None,
            other => {
                return Err(SqlError::internal(format!(
                    "unexpected outcome of a unique claim: {other:?}"
                )));
            }
        }
    }
    Err(SqlError::new(
        sqlstate::SERIALIZATION_FAILURE,
        format!(
            "restart transaction: contention on unique constraint \"{}\"",
            index.name
        ),
    ))
}

/// Attempts of one unique entry write (each lost to a concurrent change of the entry).
const CLAIM_ATTEMPTS: usize = 10;

async fn release(kv: &KvClient, key: Vec<u8>, pk: Vec<u8>) -> Result<()> {
    let w = RowWrite {
        key,
        value: None,
        condition: Condition::Expect(Some(pk)),
        header: ValueHeader::default(),
        dependents: vec![],
    };
    kv.write(vec![w], true).await?;
    Ok(())
}

/// The unique entries the old row held that the new one does not.
fn stale_entries(ch: &Change) -> Vec<(Vec<u8>, Vec<u8>)> {
    let Some(old) = &ch.old else { return vec![] };
    let desc = &ch.table;
    let pk = rowcodec::pk_bytes(desc, &old.values);
    let mut out = Vec::new();
    for index in desc.indexes.iter().filter(|i| i.unique) {
        let Some(vals) = rowcodec::unique_values(desc, index, &old.values) else {
            continue;
        };
        let new_vals = ch
            .new
            .as_ref()
            .and_then(|n| rowcodec::unique_values(desc, index, n));
        if new_vals.as_deref() != Some(&vals[..]) {
            out.push((rowcodec::unique_key(desc, index, &vals), pk.clone()));
        }
    }
    out
}

/// Applies changes (see the module doc) outside an explicit transaction. Rows of one range
/// are written atomically. Holds this gateway's row locks shared, so no COMMIT of this
/// gateway is between its validation and its writes on these rows.
pub(crate) async fn apply(server: &SqlServer, changes: &[Change]) -> Result<Vec<Applied>> {
    let _locks = server
        .row_locks
        .lock(changes.iter().map(|c| c.key.as_slice()), false)
        .await?;
    apply_unlocked(&server.kv, changes).await
}

/// [`apply`] without the row locks (the COMMIT holds them).
pub(crate) async fn apply_unlocked(kv: &KvClient, changes: &[Change]) -> Result<Vec<Applied>> {
    apply_rows_unlocked(kv, changes, OnDuplicate::Fail)
        .await?
        .into_iter()
        .map(|a| match a {
            RowApplied::Written(ts) => Ok(Applied::Written(ts)),
            RowApplied::Conflict(v) => Ok(Applied::Conflict(v)),
            RowApplied::Duplicate => Err(SqlError::internal(
                "a unique duplicate was skipped without being asked to",
            )),
        })
        .collect()
}

/// What happens to a change whose unique claim finds the value held by another row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OnDuplicate {
    /// The statement fails with 23505 (nothing of it is written).
    Fail,
    /// The change is skipped and the others applied (`ON CONFLICT DO NOTHING` without a
    /// conflict target).
    Skip,
}

/// What happened to a change applied by [`apply_rows`].
#[derive(Debug, Clone)]
pub(crate) enum RowApplied {
    Written(Timestamp),
    /// As [`Applied::Conflict`]: re-read and retry.
    Conflict(Option<Version>),
    /// A unique value it adds belongs to another row ([`OnDuplicate::Skip`]): not written.
    Duplicate,
}

/// [`apply`] with a choice for unique duplicates. The work is batched: every unique claim of
/// every change in one request per range, then every row in one conditional request per
/// range (atomic per range), then every release in one request per range.
pub(crate) async fn apply_rows(
    server: &SqlServer,
    changes: &[Change],
    on_duplicate: OnDuplicate,
) -> Result<Vec<RowApplied>> {
    let _locks = server
        .row_locks
        .lock(changes.iter().map(|c| c.key.as_slice()), false)
        .await?;
    apply_rows_unlocked(&server.kv, changes, on_duplicate).await
}

/// A unique index entry a change adds.
struct WantedClaim {
    change: usize,
    /// Position of the index in the table's `indexes`.
    index: usize,
    values: Vec<u8>,
    key: Vec<u8>,
    pk: Vec<u8>,
}

/// The unique entries every change adds, in change order. Two changes adding the same entry
/// would both hold one value: the later one is a duplicate (23505, or skipped).
fn wanted_claims(
    changes: &[Change],
    on_duplicate: OnDuplicate,
    skipped: &mut [bool],
) -> Result<Vec<WantedClaim>> {
    let mut out: Vec<WantedClaim> = Vec::new();
    let mut first: HashMap<Vec<u8>, usize> = HashMap::new();
    for (ci, ch) in changes.iter().enumerate() {
        let Some(new) = &ch.new else { continue };
        let desc = &ch.table;
        let mut pk: Option<Vec<u8>> = None;
        for (pos, index) in desc.indexes.iter().enumerate().filter(|(_, i)| i.unique) {
            let Some(values) = rowcodec::unique_values(desc, index, new) else {
                continue;
            };
            let old_values = ch
                .old
                .as_ref()
                .and_then(|o| rowcodec::unique_values(desc, index, &o.values));
            if old_values.as_deref() == Some(&values[..]) {
                continue;
            }
            let key = rowcodec::unique_key(desc, index, &values);
            if first.contains_key(&key) {
                match on_duplicate {
                    OnDuplicate::Fail => return Err(unique_violation(desc, index, new)),
                    OnDuplicate::Skip => {
                        skipped[ci] = true;
                        continue;
                    }
                }
            }
            first.insert(key.clone(), ci);
            let pk = pk
                .get_or_insert_with(|| rowcodec::pk_bytes(desc, new))
                .clone();
            out.push(WantedClaim {
                change: ci,
                index: pos,
                values,
                key,
                pk,
            });
        }
    }
    out.retain(|w| !skipped[w.change]);
    Ok(out)
}

/// Claims the unique entries every change adds: first all at once (an entry that is free, or
/// already this row's, needs nothing more), then the contended ones one by one through
/// [`claim`]. Returns the entries claimed per change and which changes were skipped as
/// duplicates. On error, releases what it claimed.
async fn claim_batch(
    kv: &KvClient,
    changes: &[Change],
    on_duplicate: OnDuplicate,
) -> Result<(Vec<Vec<(Vec<u8>, Vec<u8>)>>, Vec<bool>)> {
    let mut claimed: Vec<Vec<(Vec<u8>, Vec<u8>)>> = vec![Vec::new(); changes.len()];
    let mut skipped = vec![false; changes.len()];
    let wanted = wanted_claims(changes, on_duplicate, &mut skipped)?;
    if wanted.is_empty() {
        return Ok((claimed, skipped));
    }
    let writes: Vec<RowWrite> = wanted
        .iter()
        .map(|w| RowWrite {
            key: w.key.clone(),
            value: Some(w.pk.clone()),
            condition: Condition::Expect(None),
            header: ValueHeader::default(),
            dependents: vec![],
        })
        .collect();
    // Inside the statement's transaction: on error the transaction is rolled back, and the
    // entries written so far with it.
    let outcomes = kv.write(writes, false).await?;
    let mut contended = Vec::new();
    for (w, (_, outcome)) in wanted.iter().zip(outcomes) {
        match outcome {
            RowOutcome::Written { .. } => claimed[w.change].push((w.key.clone(), w.pk.clone())),
            RowOutcome::ConditionFailed { actual: Some(v) }
                if v.value.as_deref() == Some(w.pk.as_slice()) => {}
            _ => contended.push(w),
        }
    }
    for w in contended {
        if skipped[w.change] {
            continue;
        }
        let ch = &changes[w.change];
        let desc = &ch.table;
        let new = ch.new.as_deref().expect("only new rows claim");
        match claim(kv, desc, &desc.indexes[w.index], &w.values, &w.pk, new).await {
            Ok(Claim::New) => claimed[w.change].push((w.key.clone(), w.pk.clone())),
            Ok(Claim::Ours) => {}
            Err(e)
                if on_duplicate == OnDuplicate::Skip && e.code() == sqlstate::UNIQUE_VIOLATION =>
            {
                skipped[w.change] = true;
            }
            Err(e) => {
                let _ = release_many(kv, claimed.into_iter().flatten().collect()).await;
                return Err(e);
            }
        }
    }
    let mut releases = Vec::new();
    for (ci, c) in claimed.iter_mut().enumerate() {
        if skipped[ci] {
            releases.append(c);
        }
    }
    let _ = release_many(kv, releases).await;
    Ok((claimed, skipped))
}

/// Releases unique entries (conditional deletes that expect the owning primary key), in one
/// request per range (a key listed twice goes in a second round).
async fn release_many(kv: &KvClient, mut entries: Vec<(Vec<u8>, Vec<u8>)>) -> Result<()> {
    while !entries.is_empty() {
        let mut seen = std::collections::HashSet::new();
        let mut later = Vec::new();
        let mut writes = Vec::with_capacity(entries.len());
        for (key, pk) in entries {
            if !seen.insert(key.clone()) {
                later.push((key, pk));
                continue;
            }
            writes.push(RowWrite {
                key,
                value: None,
                condition: Condition::Expect(Some(pk)),
                header: ValueHeader::default(),
                dependents: vec![],
            });
        }
        kv.write(writes, false).await?;
        entries = later;
    }
    Ok(())
}

/// The write of a change's primary row (with its non-unique index entries as dependents),
/// conditional on the row it replaces.
fn row_write(ch: &Change) -> RowWrite {
    let desc = &ch.table;
    let pk_row = ch
        .new
        .as_deref()
        .or(ch.old.as_ref().map(|o| o.values.as_slice()))
        .unwrap_or(&[]);
    let pk = rowcodec::pk_bytes(desc, pk_row);
    RowWrite {
        key: ch.key.clone(),
        value: ch.new.as_ref().map(|n| rowcodec::encode_row(desc, n)),
        condition: Condition::Expect(ch.old.as_ref().map(|o| o.raw.clone())),
        header: ValueHeader::default(),
        dependents: rowcodec::secondary_dependents(
            desc,
            ch.new.as_deref(),
            ch.old.as_ref().map(|o| o.values.as_slice()),
            &pk,
        ),
    }
}

/// Whether writing `changes` touches more than one range: several shards, or a unique
/// index (whose entries live in the shard of the indexed values).
pub(crate) fn spans_ranges(changes: &[Change]) -> bool {
    let mut first: Option<(ldr_types::TableId, u16)> = None;
    for ch in changes {
        if ch.table.indexes.iter().any(|i| i.unique) {
            return true;
        }
        let Some(k) = ldr_types::keys::decode_table_key(&ch.key) else {
            return true;
        };
        match first {
            None => first = Some((k.table_id, k.shard)),
            Some(f) if f != (k.table_id, k.shard) => return true,
            Some(_) => {}
        }
    }
    false
}

/// [`apply_rows`] without the row locks. Changes that touch one range are written in one
/// phase (one atomic batch). Changes across ranges are one KV transaction (intents, then the
/// commit of its record): either every change is written, or, if any conflicts, none is and
/// the written ones are reported as not attempted ([`RowApplied::Conflict`] without a
/// version), so the caller retries them with the rest.
pub(crate) async fn apply_rows_unlocked(
    kv: &KvClient,
    changes: &[Change],
    on_duplicate: OnDuplicate,
) -> Result<Vec<RowApplied>> {
    // Inside a transaction (a COMMIT's writes) the transaction's client writes intents.
    if changes.is_empty() || kv.in_txn() || !spans_ranges(changes) {
        return apply_rows_one_phase(kv, changes, on_duplicate).await;
    }
    // An implicit transaction aborted by a pusher (or stuck behind an older one) is retried
    // here, as CockroachDB retries implicit transactions on the gateway.
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let txn = kv.begin_txn(&changes[0].key).await?;
        let applied = match apply_rows_one_phase(txn.client(), changes, on_duplicate).await {
            Ok(a) => a,
            Err(e) => {
                txn.rollback().await;
                if is_txn_retry(&e) && attempt < IMPLICIT_RETRIES {
                    retry_pause(attempt).await;
                    continue;
                }
                return Err(e);
            }
        };
        if applied.iter().any(|a| matches!(a, RowApplied::Conflict(_))) {
            txn.rollback().await;
            return Ok(applied
                .into_iter()
                .map(|a| match a {
                    RowApplied::Written(_) => RowApplied::Conflict(None),
                    other => other,
                })
                .collect());
        }
        match txn.commit().await {
            Ok(ts) => {
                return Ok(applied
                    .into_iter()
                    .map(|a| match a {
                        RowApplied::Written(_) => RowApplied::Written(ts),
                        other => other,
                    })
                    .collect());
            }
            Err(e) => {
                let e = SqlError::from(e);
                if is_txn_retry(&e) && attempt < IMPLICIT_RETRIES {
                    retry_pause(attempt).await;
                    continue;
                }
                return Err(e);
            }
        }
    }
}

/// How often an implicit transaction is retried after being aborted by a conflict.
const IMPLICIT_RETRIES: u32 = 20;

/// Whether an error is a transaction conflict that a retry can get past.
fn is_txn_retry(e: &SqlError) -> bool {
    matches!(
        e,
        SqlError::Kv(ldr_kv::KvError::TxnAborted { .. } | ldr_kv::KvError::TxnConflict(_))
    )
}

/// A short, growing, jittered pause between retries of an implicit transaction.
async fn retry_pause(attempt: u32) {
    let base = 2u64 << attempt.min(6);
    let jitter = rand::random::<u64>() % base;
    tokio::time::sleep(std::time::Duration::from_millis(base + jitter)).await;
}

/// The writes of [`apply_rows_unlocked`] through `kv` (a transaction's client writes
/// intents).
async fn apply_rows_one_phase(
    kv: &KvClient,
    changes: &[Change],
    on_duplicate: OnDuplicate,
) -> Result<Vec<RowApplied>> {
    let (mut claims, skipped) = claim_batch(kv, changes, on_duplicate).await?;
    let live: Vec<usize> = (0..changes.len()).filter(|i| !skipped[*i]).collect();
    let rows: Vec<RowWrite> = live.iter().map(|i| row_write(&changes[*i])).collect();
    let outcomes = match kv.write(rows, true).await {
        Ok(o) => o,
        Err(e) => {
            // The caller's transaction is rolled back (entries included); a one-phase write
            // of a single range wrote nothing or, if ambiguous, may have written its batch.
            return Err(e.into());
        }
    };
    let mut out = vec![RowApplied::Duplicate; changes.len()];
    let mut releases = Vec::new();
    for (i, (ts, outcome)) in live.into_iter().zip(outcomes) {
        out[i] = match outcome {
            RowOutcome::Written { .. } => {
                releases.extend(stale_entries(&changes[i]));
                RowApplied::Written(ts)
            }
            RowOutcome::ConditionFailed { actual } => {
                releases.append(&mut claims[i]);
                RowApplied::Conflict(Some(actual.unwrap_or(Version {
                    ts: Timestamp::ZERO,
                    header: ValueHeader::default(),
                    value: None,
                })))
            }
            RowOutcome::NotAttempted => {
                releases.append(&mut claims[i]);
                RowApplied::Conflict(None)
            }
            other => {
                return Err(SqlError::internal(format!(
                    "unexpected write outcome {other:?}"
                )));
            }
        };
    }
    release_many(kv, releases).await?;
    Ok(out)
}

/// The 23505 for inserting a primary key that exists.
pub(crate) fn pk_violation(desc: &TableDescriptor, row: &[Datum]) -> SqlError {
    unique_violation(desc, &desc.primary_index, row)
}

// ---- constraints ----

/// NOT NULL and CHECK constraints of a new row.
pub(crate) fn check_row(desc: &TableDescriptor, row: &[Datum], ctx: &EvalCtx) -> Result<()> {
    for (c, v) in desc.columns.iter().zip(row) {
        if !c.nullable && v.is_null() {
            return Err(SqlError::new(
                sqlstate::NOT_NULL_VIOLATION,
                format!(
                    "null value in column \"{}\" violates not-null constraint",
                    c.name
                ),
            ));
        }
    }
    if desc.checks.is_empty() {
        return Ok(());
    }
    let scope = scan::table_scope(desc, None);
    let mut full = row.to_vec();
    full.push(Datum::Null);
    full.push(Datum::Null);
    for check in &desc.checks {
        let expr = parser::parse_expr(&check.expr)?;
        let mut params = Vec::new();
        let (bound, _) = Binder::new(&scope, &mut params).bind(&expr)?;
        // NULL passes a CHECK, only FALSE fails.
        if let Datum::Bool(false) = bound.eval(&full, ctx)? {
            return Err(SqlError::new(
                sqlstate::CHECK_VIOLATION,
                format!("failed to satisfy CHECK constraint ({})", check.expr),
            ));
        }
    }
    Ok(())
}

fn fk_values(desc: &TableDescriptor, cols: &[u32], row: &[Datum]) -> Option<Vec<Datum>> {
    let vals: Vec<Datum> = cols
        .iter()
        .map(|id| {
            desc.column_index_by_id(*id)
                .map(|i| row[i].clone())
                .unwrap_or(Datum::Null)
        })
        .collect();
    if vals.iter().any(Datum::is_null) {
        None
    } else {
        Some(vals)
    }
}

fn fk_detail(names: &[String], vals: &[Datum]) -> String {
    let v: Vec<String> = vals.iter().map(Datum::to_sql_literal).collect();
    format!("Key ({})=({})", names.join(", "), v.join(", "))
}

/// Checks that every foreign key of a new row has its parent row. `op` is `insert` or
/// `update` (for the message).
pub(crate) async fn check_fk_parents(
    catalog: &Catalog,
    desc: &TableDescriptor,
    row: &[Datum],
    old: Option<&[Datum]>,
    op: &str,
    ts: Timestamp,
    txn: Option<&TxnBuffer>,
) -> Result<()> {
    for fk in &desc.foreign_keys {
        let Some(vals) = fk_values(desc, &fk.columns, row) else {
            continue;
        };
        if let Some(old) = old
            && fk_values(desc, &fk.columns, old).as_ref() == Some(&vals)
        {
            continue;
        }
        let parent = catalog.table_by_id(fk.ref_table_id).await?.ok_or_else(|| {
            SqlError::internal(format!(
                "foreign key {} references a missing table",
                fk.name
            ))
        })?;
        if !parent_exists(catalog.kv(), &parent, fk, &vals, ts, txn).await? {
            let names: Vec<String> = fk
                .columns
                .iter()
                .filter_map(|id| desc.column_by_id(*id).map(|c| c.name.clone()))
                .collect();
            return Err(SqlError::new(
                sqlstate::FOREIGN_KEY_VIOLATION,
                format!(
                    "{op} on table \"{}\" violates foreign key constraint \"{}\"",
                    desc.name, fk.name
                ),
            )
            .with_detail(format!(
                "{} is not present in table \"{}\".",
                fk_detail(&names, &vals),
                parent.name
            )));
        }
    }
    Ok(())
}

async fn parent_exists(
    kv: &KvClient,
    parent: &Arc<TableDescriptor>,
    fk: &ForeignKeyDescriptor,
    vals: &[Datum],
    ts: Timestamp,
    txn: Option<&TxnBuffer>,
) -> Result<bool> {
    let filter = equality_filter(parent, &fk.ref_columns, vals)?;
    let access = scan::plan_access(parent, Some(&filter), &EvalCtx::default());
    let rows = scan::read(kv, parent, &access, ts, txn).await?;
    let ctx = EvalCtx::default();
    for r in rows {
        if filter.eval_predicate(&r.scope_values(), &ctx)? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// `col1 = v1 AND col2 = v2 …` over a table's scope.
fn equality_filter(desc: &TableDescriptor, cols: &[u32], vals: &[Datum]) -> Result<ScalarExpr> {
    let mut filter: Option<ScalarExpr> = None;
    for (id, v) in cols.iter().zip(vals) {
        let i = desc
            .column_index_by_id(*id)
            .ok_or_else(|| SqlError::internal("foreign key column missing"))?;
        let v = v
            .clone()
            .coerce_for_column(&desc.columns[i].ty, &desc.columns[i].name)?;
        let eq = ScalarExpr::Binary(
            BinOp::Eq,
            Box::new(ScalarExpr::Column(i)),
            Box::new(ScalarExpr::Const(v)),
        );
        filter = Some(match filter {
            None => eq,
            Some(f) => ScalarExpr::Binary(BinOp::And, Box::new(f), Box::new(eq)),
        });
    }
    filter.ok_or_else(|| SqlError::internal("empty foreign key"))
}

/// Tables of the database with a foreign key to `desc`.
pub(crate) async fn referencing_tables(
    catalog: &Catalog,
    desc: &TableDescriptor,
) -> Result<Vec<(Arc<TableDescriptor>, ForeignKeyDescriptor)>> {
    let mut out = Vec::new();
    for child in catalog.tables_in(desc.database_id).await? {
        for fk in &child.foreign_keys {
            if fk.ref_table_id == desc.id {
                out.push((child.clone(), fk.clone()));
            }
        }
    }
    Ok(out)
}

/// Restricts deleting (or changing the referenced key of) a row other rows reference.
pub(crate) async fn check_fk_children(
    catalog: &Catalog,
    children: &[(Arc<TableDescriptor>, ForeignKeyDescriptor)],
    desc: &TableDescriptor,
    old: &[Datum],
    new: Option<&[Datum]>,
    ts: Timestamp,
    txn: Option<&TxnBuffer>,
) -> Result<()> {
    for (child, fk) in children {
        let Some(vals) = fk_values(desc, &fk.ref_columns, old) else {
            continue;
        };
        if let Some(new) = new
            && fk_values(desc, &fk.ref_columns, new).as_ref() == Some(&vals)
        {
            continue;
        }
        let filter = equality_filter(child, &fk.columns, &vals)?;
        let access = scan::plan_access(child, Some(&filter), &EvalCtx::default());
        let rows = scan::read(catalog.kv(), child, &access, ts, txn).await?;
        let ctx = EvalCtx::default();
        let mut referenced = false;
        for r in rows {
            if filter.eval_predicate(&r.scope_values(), &ctx)? {
                referenced = true;
                break;
            }
        }
        if referenced {
            let names: Vec<String> = fk
                .ref_columns
                .iter()
                .filter_map(|id| desc.column_by_id(*id).map(|c| c.name.clone()))
                .collect();
            let op = if new.is_some() { "update" } else { "delete" };
            return Err(SqlError::new(
                sqlstate::FOREIGN_KEY_VIOLATION,
                format!(
                    "{op} on table \"{}\" violates foreign key constraint \"{}\" on table \"{}\"",
                    desc.name, fk.name, child.name
                ),
            )
            .with_detail(format!(
                "{} is still referenced from table \"{}\".",
                fk_detail(&names, &vals),
                child.name
            )));
        }
    }
    Ok(())
}

// ---- validated-mode replication writes ----

/// Attempts of one validated write (each lost to a concurrent change of the row, or aborted
/// by a conflicting transaction).
const VALIDATED_ATTEMPTS: usize = 20;

/// Applies a replicated row with every constraint checked and the LWW condition, in one KV
/// transaction: the row (LWW write, which decides first: a row that loses is not checked),
/// then NOT NULL and CHECK, the foreign keys it references and the rows referencing its old
/// values, and its unique index entries. Nothing of a row that fails a check is written.
pub(crate) async fn apply_validated(
    server: &SqlServer,
    w: ValidatedWrite,
) -> Result<ValidatedOutcome> {
    let desc = &w.table;
    let pk = encoding::encode_key_tuple(w.pk.iter());
    let key = rowcodec::primary_key_from_pk(desc, &pk);
    let children = referencing_tables(&server.catalog, desc).await?;
    // A table without unique indexes writes one key per row: no transaction is needed when
    // the checks pass (they run first). A failed check goes the transactional way, which lets
    // LWW decide first, so a row that would lose is an LWW loss, not a constraint failure.
    if !desc.indexes.iter().any(|i| i.unique) {
        for _ in 0..VALIDATED_ATTEMPTS {
            match validated_single_write(server, &w, &key, &pk, &children).await? {
                SingleWrite::Done(outcome) => return Ok(outcome),
                SingleWrite::Changed => continue,
                SingleWrite::CheckFailed => break,
            }
        }
    }
    for _ in 0..VALIDATED_ATTEMPTS {
        let txn = server.kv.begin_txn(&key).await?;
        let tkv = txn.client().clone();
        let attempt = validated_attempt(server, &tkv, &w, &key, &pk, &children).await;
        match attempt {
            Ok(Some(ValidatedOutcome::Applied(_))) => match txn.commit().await {
                Ok(ts) => return Ok(ValidatedOutcome::Applied(ts)),
                // Aborted by a conflicting transaction: nothing was written; again.
                Err(ldr_kv::KvError::TxnAborted { .. }) => continue,
                Err(e) => return Err(e.into()),
            },
            Ok(Some(outcome)) => {
                txn.rollback().await;
                return Ok(outcome);
            }
            Ok(None) => txn.rollback().await,
            Err(e) => {
                txn.rollback().await;
                if matches!(&e, SqlError::Kv(ldr_kv::KvError::TxnAborted { .. })) {
                    continue;
                }
                return Err(e);
            }
        }
    }
    Err(SqlError::new(
        sqlstate::SERIALIZATION_FAILURE,
        "restart transaction: the row kept changing concurrently",
    ))
}

/// The checks of a validated write against the row it replaces (`old`, read at `ts`): NOT
/// NULL and CHECK, the parents the new row references, the children of the old row's values.
async fn validated_checks(
    server: &SqlServer,
    w: &ValidatedWrite,
    old: Option<&[Datum]>,
    children: &[(Arc<TableDescriptor>, ForeignKeyDescriptor)],
    ts: Timestamp,
) -> Result<()> {
    let desc = &w.table;
    if let Some(new) = &w.new {
        check_row(desc, new, &EvalCtx::default())?;
        check_fk_parents(&server.catalog, desc, new, old, "insert", ts, None).await?;
    }
    if let Some(old) = old {
        check_fk_children(
            &server.catalog,
            children,
            desc,
            old,
            w.new.as_deref(),
            ts,
            None,
        )
        .await?;
    }
    Ok(())
}

/// What [`validated_single_write`] did.
enum SingleWrite {
    Done(ValidatedOutcome),
    /// A constraint refused the row.
    CheckFailed,
    /// The row changed between its read and its write.
    Changed,
}

/// [`apply_validated`] for a row whose table has no unique index: the checks against the
/// current row, then one LWW write conditional on that row.
async fn validated_single_write(
    server: &SqlServer,
    w: &ValidatedWrite,
    key: &[u8],
    pk: &[u8],
    children: &[(Arc<TableDescriptor>, ForeignKeyDescriptor)],
) -> Result<SingleWrite> {
    let desc = &w.table;
    let kv = &server.kv;
    let ts = kv.clock().now();
    let old = match kv.get(key, Some(ts)).await? {
        Some(v) => scan::decode_version(desc, key, &v)?,
        None => None,
    };
    let old_values = old.as_ref().map(|o| o.values.as_slice());
    match validated_checks(server, w, old_values, children, ts).await {
        Ok(()) => {}
        Err(e) if e.code().starts_with("23") => return Ok(SingleWrite::CheckFailed),
        Err(e) => return Err(e),
    }
    let row = RowWrite {
        key: key.to_vec(),
        value: w.new.as_ref().map(|n| rowcodec::encode_row(desc, n)),
        condition: Condition::Lww {
            expected_prev: Some(old.as_ref().map(|o| o.raw.clone())),
            local_origin_id: w.local_origin_id,
        },
        header: w.header,
        dependents: rowcodec::secondary_dependents(desc, w.new.as_deref(), old_values, pk),
    };
    Ok(match kv.write(vec![row], true).await?.pop() {
        Some((ts, RowOutcome::Written { .. })) => SingleWrite::Done(ValidatedOutcome::Applied(ts)),
        Some((_, RowOutcome::LwwLost { existing })) => {
            SingleWrite::Done(ValidatedOutcome::LwwLost(existing))
        }
        Some((_, RowOutcome::LwwUnexpected { .. })) => SingleWrite::Changed,
        other => {
            return Err(SqlError::internal(format!(
                "unexpected outcome of a validated write: {other:?}"
            )));
        }
    })
}

/// One try of [`apply_validated`] inside a transaction whose client is `tkv`: `Ok(None)` when
/// the row changed between its read and its write (try again).
async fn validated_attempt(
    server: &SqlServer,
    tkv: &KvClient,
    w: &ValidatedWrite,
    key: &[u8],
    pk: &[u8],
    children: &[(Arc<TableDescriptor>, ForeignKeyDescriptor)],
) -> Result<Option<ValidatedOutcome>> {
    let desc = &w.table;
    let ts = tkv.clock().now();
    let old = match tkv.get(key, Some(ts)).await? {
        Some(v) => scan::decode_version(desc, key, &v)?,
        None => None,
    };
    let row = RowWrite {
        key: key.to_vec(),
        value: w.new.as_ref().map(|n| rowcodec::encode_row(desc, n)),
        condition: Condition::Lww {
            expected_prev: Some(old.as_ref().map(|o| o.raw.clone())),
            local_origin_id: w.local_origin_id,
        },
        header: w.header,
        dependents: rowcodec::secondary_dependents(
            desc,
            w.new.as_deref(),
            old.as_ref().map(|o| o.values.as_slice()),
            pk,
        ),
    };
    match tkv.write(vec![row], false).await?.pop().map(|(_, o)| o) {
        Some(RowOutcome::Written { .. }) => {}
        Some(RowOutcome::LwwLost { existing }) => {
            return Ok(Some(ValidatedOutcome::LwwLost(existing)));
        }
        Some(RowOutcome::LwwUnexpected { .. }) => return Ok(None),
        other => {
            return Err(SqlError::internal(format!(
                "unexpected outcome of a validated write: {other:?}"
            )));
        }
    }
    let old_values = old.as_ref().map(|o| o.values.as_slice());
    validated_checks(server, w, old_values, children, ts).await?;
    for index in desc.indexes.iter().filter(|i| i.unique) {
        let new_vals = w
            .new
            .as_ref()
            .and_then(|n| rowcodec::unique_values(desc, index, n));
        let old_vals = old_values.and_then(|o| rowcodec::unique_values(desc, index, o));
        if new_vals == old_vals {
            continue;
        }
        if let (Some(vals), Some(new)) = (&new_vals, &w.new) {
            claim(tkv, desc, index, vals, pk, new).await?;
        }
        if let Some(vals) = old_vals {
            release(tkv, rowcodec::unique_key(desc, index, &vals), pk.to_vec()).await?;
        }
    }
    Ok(Some(ValidatedOutcome::Applied(ts)))
}

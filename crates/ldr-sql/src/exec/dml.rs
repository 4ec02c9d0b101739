//! INSERT (with ON CONFLICT), UPSERT, UPDATE, DELETE and TRUNCATE.
//!
//! Every statement computes row changes, checks NOT NULL, CHECK and FOREIGN KEY
//! constraints, and either applies them through `write.rs` (autocommit: conflicting
//! concurrent writes are re-read and retried, bounded) or buffers them in the open
//! transaction.

use std::collections::HashSet;
use std::sync::Arc;

use ldr_types::Timestamp;
use sqlparser::ast as sql;

use super::rows::Change;
use super::rows::StoredRow;
use super::scan;
use super::select;
use super::upsert;
use super::write::{self, Applied, RowApplied};
use super::{ColumnInfo, QueryResult, Session, resolve};
use crate::catalog::TableDescriptor;
use crate::datum::Datum;
use crate::error::{Result, SqlError, sqlstate};
use crate::expr::{
    Binder, EvalCtx, ScalarExpr, Scope, ScopeColumn, normalize_ident, timestamp_decimal,
};
use crate::parser::{self, DeleteStmt, InsertSource, InsertStmt, OnConflict, UpdateStmt};
use crate::rowcodec;
use crate::types::SqlType;

/// Retries of a row whose conditional write lost to a concurrent writer.
const MAX_ROW_RETRIES: usize = 50;

fn retry_exhausted() -> SqlError {
    SqlError::new(
        sqlstate::SERIALIZATION_FAILURE,
        "restart transaction: too many concurrent writes to the same rows",
    )
}

/// A short, growing, jittered pause before retrying rows that lost to concurrent writers,
/// so that writers contending for the same rows spread out instead of colliding in lockstep
/// (at most ~16 ms; none before the first attempt).
async fn retry_pause(attempt: usize) {
    if attempt == 0 {
        return;
    }
    let cap_us = 250u64 << attempt.min(6);
    let pause_us = rand::random_range(0..cap_us);
    tokio::time::sleep(std::time::Duration::from_micros(pause_us)).await;
}

// ---- RETURNING ----

#[derive(Debug, Clone)]
struct Returning {
    columns: Vec<ColumnInfo>,
    exprs: Vec<ScalarExpr>,
}

fn bind_returning(
    items: &Option<Vec<sql::SelectItem>>,
    scope: &Scope,
    params: &mut Vec<Option<SqlType>>,
) -> Result<Option<Returning>> {
    let Some(items) = items else { return Ok(None) };
    let mut r = Returning {
        columns: vec![],
        exprs: vec![],
    };
    for item in items {
        match item {
            sql::SelectItem::Wildcard(_) => {
                for (i, c) in scope.columns.iter().enumerate() {
                    if !c.hidden {
                        r.columns.push(ColumnInfo::new(&c.name, c.ty.clone()));
                        r.exprs.push(ScalarExpr::Column(i));
                    }
                }
            }
            sql::SelectItem::UnnamedExpr(e) | sql::SelectItem::ExprWithAlias { expr: e, .. } => {
                let name = match item {
                    sql::SelectItem::ExprWithAlias { alias, .. } => normalize_ident(alias),
                    _ => match e {
                        sql::Expr::Identifier(i) => normalize_ident(i),
                        sql::Expr::CompoundIdentifier(p) => {
                            p.last().map(normalize_ident).unwrap_or_default()
                        }
                        sql::Expr::Function(f) => crate::expr::function_name(&f.name),
                        _ => "?column?".into(),
                    },
                };
                let mut b = Binder::new(scope, params);
                let (x, ty) = b.bind(e)?;
                let (x, ty) = if ty == SqlType::Unknown {
                    b.coerce_unknown(x, &SqlType::String)?
                } else {
                    (x, ty)
                };
                r.columns.push(ColumnInfo::new(&name, ty));
                r.exprs.push(x);
            }
            _ => return Err(SqlError::unsupported("this RETURNING item")),
        }
    }
    Ok(Some(r))
}

fn returning_row(
    r: &Returning,
    values: &[Datum],
    ts: Option<Timestamp>,
    ctx: &EvalCtx,
) -> Result<Vec<Datum>> {
    let mut full = values.to_vec();
    full.push(match ts {
        Some(t) if !t.is_zero() => Datum::Decimal(timestamp_decimal(t)),
        _ => Datum::Null,
    });
    full.push(Datum::Null);
    r.exprs.iter().map(|x| x.eval(&full, ctx)).collect()
}

fn finish(tag: &str, n: usize, returning: Option<Returning>, rows: Vec<Vec<Datum>>) -> QueryResult {
    match returning {
        Some(r) => QueryResult {
            tag: tag.into(),
            rows_affected: Some(rows.len()),
            columns: r.columns,
            rows,
            returns_rows: true,
            txn: super::TxnEffect::None,
            notices: vec![],
            stream: None,
        },
        None => QueryResult::count(tag, n),
    }
}

// ---- INSERT / UPSERT ----

#[derive(Debug, Clone)]
enum Arbiter {
    Primary,
    Unique(crate::catalog::IndexDescriptor),
    /// `ON CONFLICT DO NOTHING` without a target: any unique constraint.
    Any,
}

#[derive(Debug, Clone)]
enum Source {
    Values(Vec<Vec<Option<ScalarExpr>>>),
    Query(Box<select::SelectPlan>),
    DefaultValues,
}

#[derive(Debug, Clone)]
enum Conflict {
    Error,
    DoNothing(Arbiter),
    DoUpdate {
        arbiter: Arbiter,
        sets: Vec<(usize, ScalarExpr)>,
        filter: Option<ScalarExpr>,
    },
    Upsert,
}

#[derive(Debug, Clone)]
struct InsertPlan {
    desc: Arc<TableDescriptor>,
    targets: Vec<usize>,
    source: Source,
    defaults: Vec<Option<ScalarExpr>>,
    conflict: Conflict,
    returning: Option<Returning>,
}

/// Binds every column's DEFAULT expression (in an empty scope).
pub(crate) fn bind_defaults(desc: &TableDescriptor) -> Result<Vec<Option<ScalarExpr>>> {
    let empty = Scope::default();
    desc.columns
        .iter()
        .map(|c| match &c.default_expr {
            Some(text) => {
                let e = parser::parse_expr(text)?;
                let mut params = Vec::new();
                Ok(Some(
                    Binder::new(&empty, &mut params).bind_typed(&e, &c.ty)?.0,
                ))
            }
            None => Ok(None),
        })
        .collect()
}

fn is_default_marker(e: &sql::Expr) -> bool {
    matches!(e, sql::Expr::Identifier(i) if i.quote_style.is_none() && i.value.eq_ignore_ascii_case("default"))
}

fn arbiter_for(desc: &TableDescriptor, columns: &[String]) -> Result<Arbiter> {
    if columns.is_empty() {
        return Ok(Arbiter::Any);
    }
    let mut want: Vec<u32> = Vec::new();
    for c in columns {
        want.push(desc.require_column(c)?.id);
    }
    want.sort_unstable();
    let matches = |idx: &crate::catalog::IndexDescriptor| {
        let mut have: Vec<u32> = idx.columns.iter().map(|c| c.column_id).collect();
        have.sort_unstable();
        have == want
    };
    if matches(&desc.primary_index) {
        return Ok(Arbiter::Primary);
    }
    for idx in desc.indexes.iter().filter(|i| i.unique) {
        if matches(idx) {
            return Ok(Arbiter::Unique(idx.clone()));
        }
    }
    Err(SqlError::new(
        sqlstate::INVALID_COLUMN_REFERENCE,
        "there is no unique or exclusion constraint matching the ON CONFLICT specification",
    ))
}

async fn plan_insert(
    s: &mut Session,
    ins: &InsertStmt,
    params: &mut Vec<Option<SqlType>>,
) -> Result<InsertPlan> {
    let desc = resolve::resolve_table(&s.server.catalog, s.database(), &ins.table).await?;
    super::privilege::require_table(s, &desc, "INSERT").await?;
    if ins.upsert || matches!(ins.on_conflict, Some(OnConflict::DoUpdate { .. })) {
        super::privilege::require_table(s, &desc, "UPDATE").await?;
    }
    let targets: Vec<usize> = if ins.columns.is_empty() {
        desc.visible_columns().map(|(i, _)| i).collect()
    } else {
        let mut seen = HashSet::new();
        let mut v = Vec::new();
        for c in &ins.columns {
            let i = desc
                .column_index(c)
                .ok_or_else(|| SqlError::undefined_column(c))?;
            if !seen.insert(i) {
                return Err(SqlError::new(
                    sqlstate::DUPLICATE_COLUMN,
                    format!("multiple assignments to the same column \"{c}\""),
                ));
            }
            v.push(i);
        }
        v
    };
    let empty = Scope::default();
    let source = match &ins.source {
        InsertSource::DefaultValues => Source::DefaultValues,
        InsertSource::Values(rows) => {
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                if row.len() > targets.len() {
                    return Err(SqlError::new(
                        sqlstate::SYNTAX_ERROR,
                        format!(
                            "INSERT has more expressions than target columns, {} expressions for {} targets",
                            row.len(),
                            targets.len()
                        ),
                    ));
                }
                let mut bound = Vec::with_capacity(row.len());
                for (e, &ci) in row.iter().zip(&targets) {
                    if is_default_marker(e) {
                        bound.push(None);
                        continue;
                    }
                    let mut b = Binder::new(&empty, params);
                    let (x, _) = b.bind_typed(e, &desc.columns[ci].ty)?;
                    bound.push(Some(x));
                }
                out.push(bound);
            }
            Source::Values(out)
        }
        InsertSource::Query(q) => {
            let plan = select::plan_query(s, q, params).await?;
            if plan.columns.len() > targets.len() {
                return Err(SqlError::new(
                    sqlstate::SYNTAX_ERROR,
                    format!(
                        "INSERT has more expressions than target columns, {} expressions for {} targets",
                        plan.columns.len(),
                        targets.len()
                    ),
                ));
            }
            Source::Query(Box::new(plan))
        }
    };
    let defaults = bind_defaults(&desc)?;
    let scope = scan::table_scope(&desc, ins.alias.as_deref());
    let conflict = if ins.upsert {
        Conflict::Upsert
    } else {
        match &ins.on_conflict {
            None => Conflict::Error,
            Some(OnConflict::DoNothing { columns }) => {
                Conflict::DoNothing(arbiter_for(&desc, columns)?)
            }
            Some(OnConflict::DoUpdate {
                columns,
                assignments,
                selection,
            }) => {
                let arbiter = arbiter_for(&desc, columns)?;
                let mut ex_scope = scope.clone();
                for c in &desc.columns {
                    ex_scope.columns.push(ScopeColumn {
                        table: Some("excluded".into()),
                        name: c.name.clone(),
                        ty: c.ty.clone(),
                        hidden: true,
                    });
                }
                let mut sets = Vec::new();
                for (col, e) in assignments {
                    let i = desc
                        .column_index(col)
                        .ok_or_else(|| SqlError::undefined_column(col))?;
                    let mut b = Binder::new(&ex_scope, params);
                    sets.push((
                        i,
                        if is_default_marker(e) {
                            defaults[i]
                                .clone()
                                .unwrap_or(ScalarExpr::Const(Datum::Null))
                        } else {
                            b.bind_typed(e, &desc.columns[i].ty)?.0
                        },
                    ));
                }
                let filter = match selection {
                    Some(w) => Some(Binder::new(&ex_scope, params).bind(w)?.0),
                    None => None,
                };
                Conflict::DoUpdate {
                    arbiter,
                    sets,
                    filter,
                }
            }
        }
    };
    let returning = bind_returning(&ins.returning, &scope, params)?;
    Ok(InsertPlan {
        desc,
        targets,
        source,
        defaults,
        conflict,
        returning,
    })
}

pub(crate) async fn describe_insert(
    s: &mut Session,
    ins: &InsertStmt,
    params: &mut Vec<Option<SqlType>>,
) -> Result<Vec<ColumnInfo>> {
    Ok(plan_insert(s, ins, params)
        .await?
        .returning
        .map(|r| r.columns)
        .unwrap_or_default())
}

/// Builds the full rows to insert (targets filled, the rest defaults), coerced to column
/// types. For UPSERT, also which columns were given.
async fn source_rows(
    s: &mut Session,
    plan: &InsertPlan,
    ctx: &EvalCtx,
) -> Result<Vec<(Vec<Datum>, Vec<bool>)>> {
    let desc = &plan.desc;
    let given_rows: Vec<Vec<Option<Datum>>> = match &plan.source {
        Source::DefaultValues => vec![vec![]],
        Source::Values(rows) => rows
            .iter()
            .map(|r| {
                r.iter()
                    .map(|x| x.as_ref().map(|x| x.eval(&[], ctx)).transpose())
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<_>>()?,
        Source::Query(q) => select::run_plan(s, q, ctx)
            .await?
            .into_iter()
            .map(|r| r.into_iter().map(Some).collect())
            .collect(),
    };
    // Columns not listed keep their value on UPSERT's update path; defaults count as given
    // only for columns that were listed.
    let given_mask: Vec<bool> = (0..desc.columns.len())
        .map(|ci| plan.targets.contains(&ci))
        .collect();
    let mut out = Vec::with_capacity(given_rows.len());
    for given in given_rows {
        let mut row = vec![Datum::Null; desc.columns.len()];
        let mut set = vec![false; desc.columns.len()];
        for (v, &ci) in given.into_iter().zip(&plan.targets) {
            if let Some(v) = v {
                row[ci] = v.coerce_for_column(&desc.columns[ci].ty, &desc.columns[ci].name)?;
                set[ci] = true;
            }
        }
        for (ci, c) in desc.columns.iter().enumerate() {
            if !set[ci]
                && let Some(d) = &plan.defaults[ci]
            {
                row[ci] = d.eval(&[], ctx)?.coerce_for_column(&c.ty, &c.name)?;
            }
        }
        out.push((row, given_mask.clone()));
    }
    Ok(out)
}

/// The keys by which a proposed row conflicts with other proposed rows of its statement:
/// its primary key for the primary key arbiter, its unique entry for a unique arbiter (none
/// when a value is NULL), all of them without a conflict target.
fn arbiter_keys(desc: &TableDescriptor, arbiter: &Arbiter, row: &[Datum]) -> Vec<Vec<u8>> {
    let unique = |idx: &crate::catalog::IndexDescriptor| {
        rowcodec::unique_values(desc, idx, row).map(|v| rowcodec::unique_key(desc, idx, &v))
    };
    match arbiter {
        Arbiter::Primary => vec![rowcodec::primary_key(desc, row)],
        Arbiter::Unique(idx) => unique(idx).into_iter().collect(),
        Arbiter::Any => std::iter::once(rowcodec::primary_key(desc, row))
            .chain(desc.indexes.iter().filter(|i| i.unique).filter_map(unique))
            .collect(),
    }
}

/// Finds, for each proposed row, the row it conflicts with through an arbiter (the primary
/// key first, then unique indexes in order), with one read per range owner for all rows.
async fn find_conflicts(
    s: &Session,
    desc: &Arc<TableDescriptor>,
    arbiter: &Arbiter,
    rows: &[&[Datum]],
    ts: Timestamp,
) -> Result<Vec<Option<StoredRow>>> {
    let kv = &s.server.kv;
    let txn = s.txn_ref();
    let mut found: Vec<Option<StoredRow>> = vec![None; rows.len()];
    if matches!(arbiter, Arbiter::Primary | Arbiter::Any) {
        let keys: Vec<Vec<u8>> = rows
            .iter()
            .map(|r| rowcodec::primary_key(desc, r))
            .collect();
        found = scan::get_rows(kv, desc, &keys, ts, txn).await?;
    }
    let indexes: Vec<&crate::catalog::IndexDescriptor> = match arbiter {
        Arbiter::Primary => vec![],
        Arbiter::Unique(idx) => vec![idx],
        Arbiter::Any => desc.indexes.iter().filter(|i| i.unique).collect(),
    };
    for idx in indexes {
        let (who, values): (Vec<usize>, Vec<Vec<u8>>) = (0..rows.len())
            .filter(|i| found[*i].is_none())
            .filter_map(|i| rowcodec::unique_values(desc, idx, rows[i]).map(|v| (i, v)))
            .unzip();
        if who.is_empty() {
            continue;
        }
        let hits = scan::find_unique(kv, desc, idx, &values, ts, txn).await?;
        for (i, hit) in who.into_iter().zip(hits) {
            found[i] = hit;
        }
    }
    Ok(found)
}

async fn find_by_unique(
    kv: &ldr_kv::KvClient,
    desc: &Arc<TableDescriptor>,
    idx: &crate::catalog::IndexDescriptor,
    values: Option<Vec<u8>>,
    ts: Timestamp,
    txn: Option<&super::txn_buffer::TxnBuffer>,
) -> Result<Option<StoredRow>> {
    let Some(values) = values else {
        return Ok(None);
    };
    let rows = scan::read(
        kv,
        desc,
        &scan::Access::Unique {
            index: idx.clone(),
            values: vec![values.clone()],
        },
        ts,
        txn,
    )
    .await?;
    // Buffered rows of the transaction are all returned by the overlay: check values.
    Ok(rows
        .into_iter()
        .find(|r| rowcodec::unique_values(desc, idx, &r.values).as_deref() == Some(&values[..])))
}

/// Validates a new row (NOT NULL, CHECK, FK parents).
async fn validate_new(
    s: &mut Session,
    desc: &TableDescriptor,
    row: &[Datum],
    old: Option<&[Datum]>,
    op: &str,
    ctx: &EvalCtx,
    ts: Timestamp,
) -> Result<()> {
    write::check_row(desc, row, ctx)?;
    if !desc.foreign_keys.is_empty() {
        let catalog = &s.server.catalog;
        let txn = match &s.txn {
            super::Txn::Open(b) => Some(b),
            _ => None,
        };
        write::check_fk_parents(catalog, desc, row, old, op, ts, txn).await?;
    }
    Ok(())
}

/// Checks a buffered (transactional) insert against existing rows and unique values.
async fn txn_check_unique(
    s: &mut Session,
    desc: &Arc<TableDescriptor>,
    row: &[Datum],
    own_key: Option<&[u8]>,
    ts: Timestamp,
) -> Result<()> {
    let kv = s.server.kv.clone();
    let txn = s.txn_ref();
    for idx in desc.indexes.iter().filter(|i| i.unique) {
        if let Some(r) = find_by_unique(
            &kv,
            desc,
            idx,
            rowcodec::unique_values(desc, idx, row),
            ts,
            txn,
        )
        .await?
            && Some(r.key.as_slice()) != own_key
        {
            return Err(write::unique_violation(desc, idx, row));
        }
    }
    Ok(())
}

pub(crate) async fn insert(
    s: &mut Session,
    ins: &InsertStmt,
    params: Vec<Datum>,
) -> Result<QueryResult> {
    let mut types = Vec::new();
    let plan = plan_insert(s, ins, &mut types).await?;
    let ctx = s.eval_ctx(params);
    let rows = source_rows(s, &plan, &ctx).await?;
    let ts = s.stmt_ts();
    let out_rows = match &plan.conflict {
        Conflict::Error => insert_plain(s, &plan, rows, &ctx, ts).await?,
        Conflict::DoNothing(arbiter) => {
            insert_do_nothing(s, &plan, arbiter, rows, &ctx, ts).await?
        }
        Conflict::DoUpdate {
            arbiter,
            sets,
            filter,
        } => insert_do_update(s, &plan, arbiter, sets, filter.as_ref(), rows, &ctx, ts).await?,
        Conflict::Upsert => upsert(s, &plan, rows, &ctx).await?,
    };
    let n = out_rows.len();
    let ret_rows = match &plan.returning {
        Some(r) => out_rows
            .iter()
            .map(|(v, t)| returning_row(r, v, *t, &ctx))
            .collect::<Result<Vec<_>>>()?,
        None => vec![],
    };
    Ok(finish("INSERT", n, plan.returning, ret_rows))
}

/// What a statement wrote: each row's new values and commit timestamp (`None` inside an
/// explicit transaction), in statement order.
type Written = Vec<(Vec<Datum>, Option<Timestamp>)>;

fn insert_change(desc: &Arc<TableDescriptor>, row: &[Datum]) -> Change {
    Change {
        table: desc.clone(),
        key: rowcodec::primary_key(desc, row),
        old: None,
        new: Some(row.to_vec()),
    }
}

/// `INSERT` without `ON CONFLICT`: an existing primary key is a 23505.
async fn insert_plain(
    s: &mut Session,
    plan: &InsertPlan,
    rows: Vec<(Vec<Datum>, Vec<bool>)>,
    ctx: &EvalCtx,
    ts: Timestamp,
) -> Result<Written> {
    let desc = &plan.desc;
    let mut seen = HashSet::new();
    let mut changes = Vec::with_capacity(rows.len());
    for (row, _) in rows {
        validate_new(s, desc, &row, None, "insert", ctx, ts).await?;
        let key = rowcodec::primary_key(desc, &row);
        if !seen.insert(key.clone()) {
            return Err(write::pk_violation(desc, &row));
        }
        changes.push(Change {
            table: desc.clone(),
            key,
            old: None,
            new: Some(row),
        });
    }
    let mut out = Vec::with_capacity(changes.len());
    if s.in_txn() {
        let keys: Vec<Vec<u8>> = changes.iter().map(|c| c.key.clone()).collect();
        let existing = scan::get_rows(&s.server.kv, desc, &keys, ts, s.txn_ref()).await?;
        for (ch, existing) in changes.into_iter().zip(existing) {
            let new = ch.new.clone().unwrap_or_default();
            if existing.is_some() {
                return Err(write::pk_violation(desc, &new));
            }
            txn_check_unique(s, desc, &new, None, ts).await?;
            if let Some(buf) = s.txn_buffer() {
                buf.add(ch);
            }
            out.push((new, None));
        }
        return Ok(out);
    }
    let applied = write::apply(&s.server, &changes).await?;
    // Name a row whose key exists rather than one that was not attempted because another
    // row of its range failed.
    let culprit = applied
        .iter()
        .position(|a| matches!(a, Applied::Conflict(Some(v)) if v.value.is_some()))
        .or_else(|| {
            applied
                .iter()
                .position(|a| matches!(a, Applied::Conflict(_)))
        });
    if let Some(i) = culprit {
        return Err(write::pk_violation(
            desc,
            changes[i]
                .new
                .as_deref()
                .expect("inserts carry the new row"),
        ));
    }
    for (ch, a) in changes.into_iter().zip(applied) {
        if let Applied::Written(t) = a {
            out.push((ch.new.unwrap_or_default(), Some(t)));
        }
    }
    Ok(out)
}

/// `INSERT … ON CONFLICT DO NOTHING`: rows that conflict (with existing rows, or with an
/// earlier row of the statement) are skipped. All rows are looked up at once, then the
/// others written at once; a row not attempted because another row of its range lost a race
/// is looked up again.
async fn insert_do_nothing(
    s: &mut Session,
    plan: &InsertPlan,
    arbiter: &Arbiter,
    rows: Vec<(Vec<Datum>, Vec<bool>)>,
    ctx: &EvalCtx,
    ts: Timestamp,
) -> Result<Written> {
    let desc = &plan.desc;
    let mut keys = Vec::with_capacity(rows.len());
    for (row, _) in &rows {
        validate_new(s, desc, row, None, "insert", ctx, ts).await?;
        let mut k = arbiter_keys(desc, arbiter, row);
        let pk = rowcodec::primary_key(desc, row);
        if !k.contains(&pk) {
            k.push(pk);
        }
        keys.push(k);
    }
    let on_duplicate = match arbiter {
        Arbiter::Any => write::OnDuplicate::Skip,
        _ => write::OnDuplicate::Fail,
    };
    let mut pending: Vec<usize> = upsert::duplicates(&keys)
        .into_iter()
        .enumerate()
        .filter_map(|(i, d)| d.is_none().then_some(i))
        .collect();
    let mut results: Vec<Option<(Vec<Datum>, Option<Timestamp>)>> = vec![None; rows.len()];
    for attempt in 0..=MAX_ROW_RETRIES {
        if pending.is_empty() {
            break;
        }
        if attempt == MAX_ROW_RETRIES {
            return Err(retry_exhausted());
        }
        retry_pause(attempt).await;
        let now = if attempt == 0 { ts } else { s.stmt_ts() };
        let probe: Vec<&[Datum]> = pending.iter().map(|i| rows[*i].0.as_slice()).collect();
        let found = find_conflicts(s, desc, arbiter, &probe, now).await?;
        let inserts: Vec<usize> = std::mem::take(&mut pending)
            .into_iter()
            .zip(found)
            .filter_map(|(i, f)| f.is_none().then_some(i))
            .collect();
        if s.in_txn() {
            for i in inserts {
                let row = &rows[i].0;
                match txn_check_unique(s, desc, row, None, now).await {
                    Ok(()) => {}
                    Err(e)
                        if on_duplicate == write::OnDuplicate::Skip
                            && e.code() == sqlstate::UNIQUE_VIOLATION =>
                    {
                        continue;
                    }
                    Err(e) => return Err(e),
                }
                if let Some(buf) = s.txn_buffer() {
                    buf.add(insert_change(desc, row));
                }
                results[i] = Some((row.clone(), None));
            }
            break;
        }
        let changes: Vec<Change> = inserts
            .iter()
            .map(|i| insert_change(desc, &rows[*i].0))
            .collect();
        let applied = write::apply_rows(&s.server, &changes, on_duplicate).await?;
        for ((i, ch), a) in inserts.into_iter().zip(changes).zip(applied) {
            match a {
                RowApplied::Written(t) => results[i] = Some((ch.new.unwrap_or_default(), Some(t))),
                // A unique value is taken, or the row was inserted concurrently: it
                // conflicts now.
                RowApplied::Duplicate | RowApplied::Conflict(Some(_)) => {}
                // Not attempted (another row of its range lost a race): again.
                RowApplied::Conflict(None) => pending.push(i),
            }
        }
    }
    Ok(results.into_iter().flatten().collect())
}

/// `INSERT … ON CONFLICT … DO UPDATE`: each row updates the row it conflicts with (if the
/// `WHERE` holds) or is inserted. All rows are looked up at once, then every change written
/// at once (each conditional on the row it read); rows whose write lost to a concurrent
/// writer are looked up and decided again.
#[allow(clippy::too_many_arguments)]
async fn insert_do_update(
    s: &mut Session,
    plan: &InsertPlan,
    arbiter: &Arbiter,
    sets: &[(usize, ScalarExpr)],
    filter: Option<&ScalarExpr>,
    rows: Vec<(Vec<Datum>, Vec<bool>)>,
    ctx: &EvalCtx,
    ts: Timestamp,
) -> Result<Written> {
    let desc = &plan.desc;
    let mut keys = Vec::with_capacity(rows.len());
    for (row, _) in &rows {
        validate_new(s, desc, row, None, "insert", ctx, ts).await?;
        keys.push(arbiter_keys(desc, arbiter, row));
    }
    if upsert::duplicates(&keys).iter().any(Option::is_some) {
        return Err(upsert::affect_twice());
    }
    let mut affected = upsert::Affected::default();
    let mut pending: Vec<usize> = (0..rows.len()).collect();
    let mut results: Vec<Option<(Vec<Datum>, Option<Timestamp>)>> = vec![None; rows.len()];
    for attempt in 0..=MAX_ROW_RETRIES {
        if pending.is_empty() {
            break;
        }
        if attempt == MAX_ROW_RETRIES {
            return Err(retry_exhausted());
        }
        retry_pause(attempt).await;
        let now = s.stmt_ts();
        let probe: Vec<&[Datum]> = pending.iter().map(|i| rows[*i].0.as_slice()).collect();
        let found = find_conflicts(s, desc, arbiter, &probe, now).await?;
        let mut changes = Vec::with_capacity(pending.len());
        let mut owners = Vec::with_capacity(pending.len());
        for (i, existing) in std::mem::take(&mut pending).into_iter().zip(found) {
            let row = &rows[i].0;
            match existing {
                None => {
                    let ch = insert_change(desc, row);
                    affected.claim(i, &ch.key)?;
                    changes.push(ch);
                }
                Some(existing) => {
                    affected.claim(i, &existing.key)?;
                    let mut scope_row = existing.scope_values();
                    scope_row.extend(row.iter().cloned());
                    if let Some(f) = filter
                        && !f.eval_predicate(&scope_row, ctx)?
                    {
                        continue;
                    }
                    let mut updated = existing.values.clone();
                    for (ci, x) in sets {
                        let c = &desc.columns[*ci];
                        updated[*ci] =
                            x.eval(&scope_row, ctx)?.coerce_for_column(&c.ty, &c.name)?;
                    }
                    validate_new(
                        s,
                        desc,
                        &updated,
                        Some(&existing.values),
                        "update",
                        ctx,
                        now,
                    )
                    .await?;
                    changes.push(Change {
                        table: desc.clone(),
                        key: existing.key.clone(),
                        old: Some(existing),
                        new: Some(updated),
                    });
                }
            }
            owners.push(i);
        }
        if s.in_txn() {
            for (i, ch) in owners.into_iter().zip(changes) {
                let new = ch.new.clone().unwrap_or_default();
                let own_key = ch.old.as_ref().map(|_| ch.key.clone());
                txn_check_unique(s, desc, &new, own_key.as_deref(), now).await?;
                if let Some(buf) = s.txn_buffer() {
                    buf.add(ch);
                }
                results[i] = Some((new, None));
            }
            break;
        }
        let applied = write::apply_rows(&s.server, &changes, write::OnDuplicate::Fail).await?;
        for ((i, ch), a) in owners.into_iter().zip(changes).zip(applied) {
            match a {
                RowApplied::Written(t) => results[i] = Some((ch.new.unwrap_or_default(), Some(t))),
                // Changed concurrently: not affected yet, look it up again.
                RowApplied::Conflict(_) => {
                    affected.forget(i);
                    pending.push(i);
                }
                RowApplied::Duplicate => {
                    return Err(SqlError::internal("a duplicate was skipped in DO UPDATE"));
                }
            }
        }
    }
    Ok(results.into_iter().flatten().collect())
}

/// `UPSERT`: each row replaces the given columns of the row with its primary key, or is
/// inserted. Batched like [`insert_do_update`].
async fn upsert(
    s: &mut Session,
    plan: &InsertPlan,
    rows: Vec<(Vec<Datum>, Vec<bool>)>,
    ctx: &EvalCtx,
) -> Result<Written> {
    let desc = &plan.desc;
    let keys: Vec<Vec<u8>> = rows
        .iter()
        .map(|(row, _)| rowcodec::primary_key(desc, row))
        .collect();
    let mut seen = HashSet::with_capacity(keys.len());
    if !keys.iter().all(|k| seen.insert(k.as_slice())) {
        return Err(upsert::affect_twice());
    }
    let mut pending: Vec<usize> = (0..rows.len()).collect();
    let mut results: Vec<Option<(Vec<Datum>, Option<Timestamp>)>> = vec![None; rows.len()];
    for attempt in 0..=MAX_ROW_RETRIES {
        if pending.is_empty() {
            break;
        }
        if attempt == MAX_ROW_RETRIES {
            return Err(retry_exhausted());
        }
        retry_pause(attempt).await;
        let now = s.stmt_ts();
        let probe: Vec<Vec<u8>> = pending.iter().map(|i| keys[*i].clone()).collect();
        let found = scan::get_rows(&s.server.kv, desc, &probe, now, s.txn_ref()).await?;
        let mut changes = Vec::with_capacity(pending.len());
        let owners = std::mem::take(&mut pending);
        for ((&i, key), existing) in owners.iter().zip(probe).zip(found) {
            let (row, mask) = &rows[i];
            let new: Vec<Datum> = match &existing {
                Some(e) => e
                    .values
                    .iter()
                    .zip(row)
                    .zip(mask)
                    .map(|((old, new), given)| if *given { new.clone() } else { old.clone() })
                    .collect(),
                None => row.clone(),
            };
            validate_new(
                s,
                desc,
                &new,
                existing.as_ref().map(|e| e.values.as_slice()),
                if existing.is_some() {
                    "update"
                } else {
                    "insert"
                },
                ctx,
                now,
            )
            .await?;
            changes.push(Change {
                table: desc.clone(),
                key,
                old: existing,
                new: Some(new),
            });
        }
        if s.in_txn() {
            for (i, ch) in owners.into_iter().zip(changes) {
                let new = ch.new.clone().unwrap_or_default();
                txn_check_unique(s, desc, &new, Some(&ch.key), now).await?;
                if let Some(buf) = s.txn_buffer() {
                    buf.add(ch);
                }
                results[i] = Some((new, None));
            }
            break;
        }
        let applied = write::apply_rows(&s.server, &changes, write::OnDuplicate::Fail).await?;
        for ((i, ch), a) in owners.into_iter().zip(changes).zip(applied) {
            match a {
                RowApplied::Written(t) => results[i] = Some((ch.new.unwrap_or_default(), Some(t))),
                RowApplied::Conflict(_) => pending.push(i),
                RowApplied::Duplicate => {
                    return Err(SqlError::internal("a duplicate was skipped in UPSERT"));
                }
            }
        }
    }
    Ok(results.into_iter().flatten().collect())
}

/// Replaces one existing row. `Ok(None)`: it changed concurrently (the caller re-reads).
async fn update_one(
    s: &mut Session,
    desc: &Arc<TableDescriptor>,
    old: StoredRow,
    new: Vec<Datum>,
    ts: Timestamp,
) -> Result<Option<Option<Timestamp>>> {
    let key = old.key.clone();
    if s.in_txn() {
        txn_check_unique(s, desc, &new, Some(&key), ts).await?;
        if let Some(buf) = s.txn_buffer() {
            buf.add(Change {
                table: desc.clone(),
                key,
                old: Some(old),
                new: Some(new),
            });
        }
        return Ok(Some(None));
    }
    let ch = Change {
        table: desc.clone(),
        key,
        old: Some(old),
        new: Some(new),
    };
    match write::apply(&s.server, std::slice::from_ref(&ch))
        .await?
        .pop()
    {
        Some(Applied::Written(t)) => Ok(Some(Some(t))),
        _ => Ok(None),
    }
}

// ---- UPDATE / DELETE ----

struct Target {
    desc: Arc<TableDescriptor>,
    scope: Scope,
    filter: Option<ScalarExpr>,
}

async fn plan_target(
    s: &mut Session,
    table: &[String],
    alias: Option<&str>,
    selection: &Option<sql::Expr>,
    privilege: &str,
    params: &mut Vec<Option<SqlType>>,
) -> Result<Target> {
    let desc = resolve::resolve_table(&s.server.catalog, s.database(), table).await?;
    super::privilege::require_table(s, &desc, privilege).await?;
    let scope = scan::table_scope(&desc, alias);
    let filter = match selection {
        Some(w) => {
            let mut b = Binder::new(&scope, params);
            let (x, ty) = b.bind(w)?;
            if ty != SqlType::Bool && ty != SqlType::Unknown {
                return Err(SqlError::datatype_mismatch(format!(
                    "argument of WHERE must be type bool, not type {}",
                    ty.family_name()
                )));
            }
            Some(x)
        }
        None => None,
    };
    Ok(Target {
        desc,
        scope,
        filter,
    })
}

async fn matching_rows(
    s: &mut Session,
    t: &Target,
    ctx: &EvalCtx,
    ts: Timestamp,
) -> Result<Vec<StoredRow>> {
    let access = scan::plan_access(&t.desc, t.filter.as_ref(), ctx);
    let kv = s.server.kv.clone();
    let rows = scan::read(&kv, &t.desc, &access, ts, s.txn_ref()).await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let keep = match &t.filter {
            Some(f) => f.eval_predicate(&r.scope_values(), ctx)?,
            None => true,
        };
        if keep {
            out.push(r);
        }
    }
    Ok(out)
}

fn bind_sets(
    t: &Target,
    assignments: &[(String, sql::Expr)],
    defaults: &[Option<ScalarExpr>],
    params: &mut Vec<Option<SqlType>>,
) -> Result<Vec<(usize, ScalarExpr)>> {
    let mut seen = HashSet::new();
    let mut sets = Vec::new();
    for (col, e) in assignments {
        let i = t
            .desc
            .column_index(col)
            .ok_or_else(|| SqlError::undefined_column(col))?;
        if !seen.insert(i) {
            return Err(SqlError::new(
                sqlstate::DUPLICATE_COLUMN,
                format!("multiple assignments to the same column \"{col}\""),
            ));
        }
        let x = if is_default_marker(e) {
            defaults[i]
                .clone()
                .unwrap_or(ScalarExpr::Const(Datum::Null))
        } else {
            Binder::new(&t.scope, params)
                .bind_typed(e, &t.desc.columns[i].ty)?
                .0
        };
        sets.push((i, x));
    }
    Ok(sets)
}

pub(crate) async fn describe_update(
    s: &mut Session,
    u: &UpdateStmt,
    params: &mut Vec<Option<SqlType>>,
) -> Result<Vec<ColumnInfo>> {
    let t = plan_target(
        s,
        &u.table,
        u.alias.as_deref(),
        &u.selection,
        "UPDATE",
        params,
    )
    .await?;
    let defaults = bind_defaults(&t.desc)?;
    bind_sets(&t, &u.assignments, &defaults, params)?;
    Ok(bind_returning(&u.returning, &t.scope, params)?
        .map(|r| r.columns)
        .unwrap_or_default())
}

pub(crate) async fn describe_delete(
    s: &mut Session,
    d: &DeleteStmt,
    params: &mut Vec<Option<SqlType>>,
) -> Result<Vec<ColumnInfo>> {
    let t = plan_target(
        s,
        &d.table,
        d.alias.as_deref(),
        &d.selection,
        "DELETE",
        params,
    )
    .await?;
    Ok(bind_returning(&d.returning, &t.scope, params)?
        .map(|r| r.columns)
        .unwrap_or_default())
}

pub(crate) async fn update(
    s: &mut Session,
    u: &UpdateStmt,
    params: Vec<Datum>,
) -> Result<QueryResult> {
    let mut types = Vec::new();
    let t = plan_target(
        s,
        &u.table,
        u.alias.as_deref(),
        &u.selection,
        "UPDATE",
        &mut types,
    )
    .await?;
    let defaults = bind_defaults(&t.desc)?;
    let sets = bind_sets(&t, &u.assignments, &defaults, &mut types)?;
    let returning = bind_returning(&u.returning, &t.scope, &mut types)?;
    let ctx = s.eval_ctx(params);
    let desc = t.desc.clone();
    let pk_cols = desc.pk_positions();
    let changes_pk = sets.iter().any(|(i, _)| pk_cols.contains(i));
    let children = write::referencing_tables(&s.server.catalog, &desc).await?;
    let mut ts = s.stmt_ts();
    let mut pending = matching_rows(s, &t, &ctx, ts).await?;
    let mut out_rows: Vec<(Vec<Datum>, Option<Timestamp>)> = Vec::new();
    for attempt in 0..=MAX_ROW_RETRIES {
        if pending.is_empty() {
            break;
        }
        if attempt == MAX_ROW_RETRIES {
            return Err(retry_exhausted());
        }
        retry_pause(attempt).await;
        let mut changes = Vec::with_capacity(pending.len());
        for old in std::mem::take(&mut pending) {
            let scope_row = old.scope_values();
            let mut new = old.values.clone();
            for (i, x) in &sets {
                let c = &desc.columns[*i];
                new[*i] = x
                    .eval(&scope_row, &ctx)?
                    .coerce_for_column(&c.ty, &c.name)?;
            }
            validate_new(s, &desc, &new, Some(&old.values), "update", &ctx, ts).await?;
            if !children.is_empty() {
                let txn = match &s.txn {
                    super::Txn::Open(b) => Some(b),
                    _ => None,
                };
                write::check_fk_children(
                    &s.server.catalog,
                    &children,
                    &desc,
                    &old.values,
                    Some(&new),
                    ts,
                    txn,
                )
                .await?;
            }
            changes.push((old, new));
        }
        if changes_pk {
            // Rows whose primary key changes move: check the new key is free, delete, insert.
            for (old, new) in changes {
                let new_key = rowcodec::primary_key(&desc, &new);
                if new_key == old.key {
                    match update_one(s, &desc, old.clone(), new.clone(), ts).await? {
                        Some(t) => out_rows.push((new, t)),
                        None => pending.push(refresh(s, &t, &old.key, &ctx).await?.unwrap_or(old)),
                    }
                    continue;
                }
                let kv = s.server.kv.clone();
                if scan::get_row(&kv, &desc, &new_key, ts, s.txn_ref())
                    .await?
                    .is_some()
                {
                    return Err(write::pk_violation(&desc, &new));
                }
                let del = Change {
                    table: desc.clone(),
                    key: old.key.clone(),
                    old: Some(old.clone()),
                    new: None,
                };
                let ins = Change {
                    table: desc.clone(),
                    key: new_key,
                    old: None,
                    new: Some(new.clone()),
                };
                if s.in_txn() {
                    txn_check_unique(s, &desc, &new, Some(&old.key), ts).await?;
                    if let Some(buf) = s.txn_buffer() {
                        buf.add(del);
                        buf.add(ins);
                    }
                    out_rows.push((new, None));
                    continue;
                }
                match write::apply(&s.server, std::slice::from_ref(&del))
                    .await?
                    .pop()
                {
                    Some(Applied::Written(_)) => {}
                    _ => {
                        if let Some(r) = refresh(s, &t, &old.key, &ctx).await? {
                            pending.push(r);
                        }
                        continue;
                    }
                }
                match write::apply(&s.server, std::slice::from_ref(&ins))
                    .await?
                    .pop()
                {
                    Some(Applied::Written(w)) => out_rows.push((new, Some(w))),
                    _ => return Err(write::pk_violation(&desc, &new)),
                }
            }
        } else if s.in_txn() {
            for (old, new) in changes {
                txn_check_unique(s, &desc, &new, Some(&old.key), ts).await?;
                let key = old.key.clone();
                if let Some(buf) = s.txn_buffer() {
                    buf.add(Change {
                        table: desc.clone(),
                        key,
                        old: Some(old),
                        new: Some(new.clone()),
                    });
                }
                out_rows.push((new, None));
            }
        } else {
            let batch: Vec<Change> = changes
                .into_iter()
                .map(|(old, new)| Change {
                    table: desc.clone(),
                    key: old.key.clone(),
                    old: Some(old),
                    new: Some(new),
                })
                .collect();
            let applied = write::apply(&s.server, &batch).await?;
            let mut conflicted = Vec::new();
            for (ch, a) in batch.into_iter().zip(applied) {
                match a {
                    Applied::Written(w) => out_rows.push((ch.new.unwrap_or_default(), Some(w))),
                    Applied::Conflict(_) => conflicted.push(ch.key),
                }
            }
            pending.extend(refresh_many(s, &t, &conflicted, &ctx).await?);
        }
        ts = s.server.kv.clock().now();
    }
    let n = out_rows.len();
    let ret_rows = match &returning {
        Some(r) => out_rows
            .iter()
            .map(|(v, w)| returning_row(r, v, *w, &ctx))
            .collect::<Result<Vec<_>>>()?,
        None => vec![],
    };
    Ok(finish("UPDATE", n, returning, ret_rows))
}

/// Re-reads a row after a conflict; `None` if it is gone or no longer matches the filter.
async fn refresh(
    s: &mut Session,
    t: &Target,
    key: &[u8],
    ctx: &EvalCtx,
) -> Result<Option<StoredRow>> {
    let ts = s.stmt_ts();
    let kv = s.server.kv.clone();
    let Some(row) = scan::get_row(&kv, &t.desc, key, ts, None).await? else {
        return Ok(None);
    };
    let keep = match &t.filter {
        Some(f) => f.eval_predicate(&row.scope_values(), ctx)?,
        None => true,
    };
    Ok(keep.then_some(row))
}

/// [`refresh`] for several rows, with one read per range owner.
async fn refresh_many(
    s: &mut Session,
    t: &Target,
    keys: &[Vec<u8>],
    ctx: &EvalCtx,
) -> Result<Vec<StoredRow>> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let ts = s.stmt_ts();
    let mut out = Vec::with_capacity(keys.len());
    for row in scan::get_rows(&s.server.kv, &t.desc, keys, ts, None)
        .await?
        .into_iter()
        .flatten()
    {
        let keep = match &t.filter {
            Some(f) => f.eval_predicate(&row.scope_values(), ctx)?,
            None => true,
        };
        if keep {
            out.push(row);
        }
    }
    Ok(out)
}

pub(crate) async fn delete(
    s: &mut Session,
    d: &DeleteStmt,
    params: Vec<Datum>,
) -> Result<QueryResult> {
    let mut types = Vec::new();
    let t = plan_target(
        s,
        &d.table,
        d.alias.as_deref(),
        &d.selection,
        "DELETE",
        &mut types,
    )
    .await?;
    let returning = bind_returning(&d.returning, &t.scope, &mut types)?;
    let ctx = s.eval_ctx(params);
    let desc = t.desc.clone();
    let children = write::referencing_tables(&s.server.catalog, &desc).await?;
    let mut ts = s.stmt_ts();
    let mut pending = matching_rows(s, &t, &ctx, ts).await?;
    let mut out_rows: Vec<(Vec<Datum>, Option<Timestamp>)> = Vec::new();
    for attempt in 0..=MAX_ROW_RETRIES {
        if pending.is_empty() {
            break;
        }
        if attempt == MAX_ROW_RETRIES {
            return Err(retry_exhausted());
        }
        retry_pause(attempt).await;
        if !children.is_empty() {
            let txn = match &s.txn {
                super::Txn::Open(b) => Some(b),
                _ => None,
            };
            for old in &pending {
                write::check_fk_children(
                    &s.server.catalog,
                    &children,
                    &desc,
                    &old.values,
                    None,
                    ts,
                    txn,
                )
                .await?;
            }
        }
        let batch: Vec<Change> = std::mem::take(&mut pending)
            .into_iter()
            .map(|old| Change {
                table: desc.clone(),
                key: old.key.clone(),
                old: Some(old),
                new: None,
            })
            .collect();
        if s.in_txn() {
            for ch in batch {
                let values = ch
                    .old
                    .as_ref()
                    .map(|o| o.values.clone())
                    .unwrap_or_default();
                if let Some(buf) = s.txn_buffer() {
                    buf.add(ch);
                }
                out_rows.push((values, None));
            }
            break;
        }
        let applied = write::apply(&s.server, &batch).await?;
        let mut conflicted = Vec::new();
        for (ch, a) in batch.into_iter().zip(applied) {
            match a {
                Applied::Written(commit_ts) => {
                    // RETURNING crdb_internal_mvcc_timestamp of a delete is the commit
                    // timestamp of its tombstone (what an LWW oracle needs), not the deleted
                    // version's.
                    let old = ch.old.expect("deletes carry the old row");
                    out_rows.push((old.values, Some(commit_ts)));
                }
                Applied::Conflict(_) => conflicted.push(ch.key),
            }
        }
        pending.extend(refresh_many(s, &t, &conflicted, &ctx).await?);
        ts = s.server.kv.clock().now();
    }
    let n = out_rows.len();
    let ret_rows = match &returning {
        Some(r) => out_rows
            .iter()
            .map(|(v, w)| returning_row(r, v, *w, &ctx))
            .collect::<Result<Vec<_>>>()?,
        None => vec![],
    };
    Ok(finish("DELETE", n, returning, ret_rows))
}

pub(crate) async fn truncate(s: &mut Session, tables: &[Vec<String>]) -> Result<QueryResult> {
    if s.in_txn() {
        return Err(SqlError::unsupported("TRUNCATE inside a transaction"));
    }
    for name in tables {
        let desc = resolve::resolve_table(&s.server.catalog, s.database(), name).await?;
        super::privilege::require_table(s, &desc, "DROP").await?;
        crate::validation::check_schema_change_allowed(
            &desc,
            &crate::validation::SchemaChange::Other,
        )?;
        let children = write::referencing_tables(&s.server.catalog, &desc).await?;
        if let Some((child, _)) = children.iter().find(|(c, _)| c.id != desc.id) {
            return Err(SqlError::new(
                sqlstate::FEATURE_NOT_SUPPORTED,
                format!(
                    "\"{}\" is referenced by foreign key from table \"{}\"",
                    desc.name, child.name
                ),
            ));
        }
        let ts = s.stmt_ts();
        let rows = scan::read(&s.server.kv, &desc, &scan::Access::Full, ts, None).await?;
        for chunk in rows.chunks(500) {
            let batch: Vec<Change> = chunk
                .iter()
                .map(|old| Change {
                    table: desc.clone(),
                    key: old.key.clone(),
                    old: Some(old.clone()),
                    new: None,
                })
                .collect();
            // Rows changed concurrently are left as they are (TRUNCATE is not atomic here).
            write::apply(&s.server, &batch).await?;
        }
    }
    Ok(QueryResult::command("TRUNCATE"))
}

//! `crdb_internal.check_consistency(stats_only BOOL, start_key BYTES, end_key BYTES)`, as
//! CockroachDB's: one row per range overlapping `[start_key, end_key)` (empty keys: every
//! range), with `range_id, start_key, start_key_pretty, status, detail, duration`. `status` is
//! `RANGE_CONSISTENT`, `RANGE_INCONSISTENT` or `RANGE_INDETERMINATE` (a replica did not
//! answer); see `ldr_kv`'s `consistency.rs` for how replicas are compared. Admin only.
//!
//! The function is a FROM source: its arguments are constants evaluated when the query is
//! planned, and the rows come from running [`Statement::CheckConsistency`].

use sqlparser::ast as sql;

use super::result::{col, s as text};
use super::{ColumnInfo, QueryResult, Session, privilege};
use crate::datum::Datum;
use crate::error::{Result, SqlError, sqlstate};
use crate::expr::{Binder, Scope};
use crate::interval::Interval;
use crate::parser::Statement;
use crate::types::SqlType;

/// The function's name, as written after `crdb_internal.`.
pub(crate) const FUNCTION: &str = "check_consistency";

const SIGNATURE: &str =
    "crdb_internal.check_consistency(stats_only: bool, start_key: bytes, end_key: bytes)";

pub(crate) fn columns() -> Vec<ColumnInfo> {
    vec![
        col("range_id", SqlType::Int8),
        col("start_key", SqlType::Bytes),
        col("start_key_pretty", SqlType::String),
        col("status", SqlType::String),
        col("detail", SqlType::String),
        col("duration", SqlType::Interval),
    ]
}

/// Whether `parts` (a FROM name) is `[db.]crdb_internal.check_consistency`.
pub(crate) fn is_function(parts: &[String]) -> bool {
    matches!(parts, [.., schema, name] if parts.len() <= 3 && schema == "crdb_internal" && name == FUNCTION)
}

/// The statement a `FROM crdb_internal.check_consistency(…)` source runs.
pub(crate) fn source_statement(s: &Session, args: &[sql::FunctionArg]) -> Result<Statement> {
    let exprs: Vec<&sql::Expr> = args
        .iter()
        .map(|a| match a {
            sql::FunctionArg::Unnamed(sql::FunctionArgExpr::Expr(e)) => Ok(e),
            _ => Err(SqlError::new(
                sqlstate::UNDEFINED_FUNCTION,
                format!("unknown signature: {SIGNATURE} takes positional arguments"),
            )),
        })
        .collect::<Result<_>>()?;
    let [stats_only, start, end] = exprs.as_slice() else {
        return Err(SqlError::new(
            sqlstate::UNDEFINED_FUNCTION,
            format!(
                "unknown signature: crdb_internal.check_consistency() with {} argument(s); \
                 want {SIGNATURE}",
                exprs.len()
            ),
        ));
    };
    let stats_only = match constant(s, stats_only, &SqlType::Bool, "stats_only")? {
        Datum::Bool(b) => b,
        other => return Err(mismatch("stats_only", "bool", &other)),
    };
    let start_key = key(s, start, "start_key")?;
    let end_key = key(s, end, "end_key")?;
    if !start_key.is_empty() && !end_key.is_empty() && start_key >= end_key {
        return Err(SqlError::new(
            sqlstate::INVALID_PARAMETER_VALUE,
            "start_key must be less than end_key",
        ));
    }
    Ok(Statement::CheckConsistency {
        stats_only,
        start_key,
        end_key,
    })
}

fn mismatch(name: &str, want: &str, got: &Datum) -> SqlError {
    SqlError::new(
        sqlstate::DATATYPE_MISMATCH,
        format!(
            "{SIGNATURE}: argument {name} must be {want}, not {}",
            got.natural_type().sql_name()
        ),
    )
}

fn key(s: &Session, e: &sql::Expr, name: &str) -> Result<Vec<u8>> {
    match constant(s, e, &SqlType::Bytes, name)? {
        Datum::Bytes(b) => Ok(b),
        Datum::String(t) => Ok(t.into_bytes()),
        other => Err(mismatch(name, "bytes", &other)),
    }
}

/// A constant argument (no columns, no placeholders), coerced to `want`; never NULL.
fn constant(s: &Session, e: &sql::Expr, want: &SqlType, name: &str) -> Result<Datum> {
    let scope = Scope::default();
    let mut params = Vec::new();
    let (x, _) = Binder::new(&scope, &mut params).bind_typed(e, want)?;
    if !params.is_empty() {
        return Err(SqlError::unsupported(format!(
            "placeholders in the arguments of {SIGNATURE}"
        )));
    }
    match x.eval(&[], &s.eval_ctx(vec![]))? {
        Datum::Null => Err(SqlError::new(
            sqlstate::INVALID_PARAMETER_VALUE,
            format!("{SIGNATURE}: argument {name} must not be NULL"),
        )),
        d => Ok(d),
    }
}

fn interval_of(d: std::time::Duration) -> Datum {
    Datum::Interval(Interval::new(
        0,
        0,
        i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
    ))
}

/// Runs the check (admin only).
pub(crate) async fn rows(
    sess: &Session,
    stats_only: bool,
    start_key: &[u8],
    end_key: &[u8],
) -> Result<QueryResult> {
    privilege::require_admin(sess, "run crdb_internal.check_consistency").await?;
    let results = sess
        .server
        .kv
        .check_consistency(stats_only, start_key, end_key)
        .await?;
    let rows = results
        .into_iter()
        .map(|r| {
            vec![
                Datum::Int(i64::try_from(r.range_id).unwrap_or(i64::MAX)),
                Datum::Bytes(r.start_key.clone()),
                text(ldr_types::keys::pretty_key(&r.start_key)),
                text(r.status.as_str()),
                text(r.detail),
                interval_of(r.duration),
            ]
        })
        .collect();
    Ok(QueryResult::rows(columns(), rows))
}

//! Row-level TTL: which tables expire rows, when a row has expired, and one pass that deletes
//! the expired rows of a table (what a `ROW LEVEL TTL` job runs; the job and its schedule are
//! in `ldr-server`).
//!
//! A table expires rows when its storage parameters set `ttl_expire_after` (a row expires that
//! long after its last write: its logical timestamp, the source's for a replicated row, as
//! CockroachDB's hidden `crdb_internal_expiration` column would hold) or
//! `ttl_expiration_expression` (a TIMESTAMPTZ expression over the row's columns; NULL never
//! expires). A pass reads the table a page (`ttl_select_batch_size`, default 500) at a time at
//! one timestamp and deletes the expired rows in batches (`ttl_delete_batch_size`, default
//! 100), each delete conditional on the row being unchanged, so a row written again meanwhile
//! survives. With `ttl_disable_changefeed_replication` on the table (or the cluster setting
//! `sql.ttl.changefeed_replication.disabled`), the deletes are marked `omit_in_rangefeeds`:
//! changefeeds and LDR streams with `discard = 'ttl-deletes'` leave them out.

use std::sync::Arc;

use ldr_kv::{Condition, RowOutcome, RowWrite, ValueHeader};
use ldr_types::{Span, TableId, Timestamp, keys};

use super::SqlServer;
use super::rows::StoredRow;
use super::scan;
use super::write;
use crate::catalog::TableDescriptor;
use crate::cron::Cron;
use crate::error::{Result, SqlError, sqlstate};
use crate::expr::{Binder, EvalCtx, ScalarExpr};
use crate::interval::Interval;
use crate::{parser, rowcodec};

/// CockroachDB's defaults.
const DEFAULT_CRON: &str = "@hourly";
const DEFAULT_SELECT_BATCH: usize = 500;
const DEFAULT_DELETE_BATCH: usize = 100;

/// A table with row-level TTL, as its schedule needs it.
#[derive(Debug, Clone)]
pub struct TtlTable {
    pub table_id: TableId,
    /// `db.public.t`.
    pub name: String,
    pub cron: Cron,
    /// `ttl_pause`: the schedule starts no job.
    pub paused: bool,
}

/// What one pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TtlStats {
    pub rows_selected: u64,
    pub rows_deleted: u64,
}

/// How a table's rows expire.
enum Expiry {
    After(i64),
    Expression(Box<ScalarExpr>),
}

impl SqlServer {
    /// Every table with row-level TTL on (tables whose `ttl_job_cron` does not parse are left
    /// out: `ALTER TABLE` refuses such values).
    pub async fn ttl_tables(&self) -> Result<Vec<TtlTable>> {
        let mut out = Vec::new();
        for t in self.catalog.all_tables().await? {
            if t.storage_params.get("ttl").map(String::as_str) != Some("true") {
                continue;
            }
            let cron_text = t
                .storage_params
                .get("ttl_job_cron")
                .map_or(DEFAULT_CRON, String::as_str);
            let Ok(cron) = Cron::parse(cron_text) else {
                continue;
            };
            out.push(TtlTable {
                table_id: t.id,
                name: t.qualified_name(),
                cron,
                paused: t.storage_params.get("ttl_pause").map(String::as_str) == Some("true"),
            });
        }
        Ok(out)
    }

    /// Deletes the expired rows of `table_id` as of now (see the module doc). `stopped` is
    /// polled between batches; `progress` hears the totals after each batch.
    pub async fn run_ttl(
        &self,
        table_id: TableId,
        stopped: &(dyn Fn() -> bool + Send + Sync),
        progress: &(dyn Fn(TtlStats) + Send + Sync),
    ) -> Result<TtlStats> {
        let desc = self.catalog.table_by_id(table_id).await?.ok_or_else(|| {
            SqlError::new(
                sqlstate::UNDEFINED_TABLE,
                format!("table {table_id} no longer exists"),
            )
        })?;
        let expiry = expiry_of(&desc)?;
        let param = |name: &str, default: usize| {
            desc.storage_params
                .get(name)
                .and_then(|v| v.parse::<usize>().ok())
                .filter(|n| *n > 0)
                .unwrap_or(default)
        };
        let select_batch = param("ttl_select_batch_size", DEFAULT_SELECT_BATCH);
        let delete_batch = param("ttl_delete_batch_size", DEFAULT_DELETE_BATCH);
        let omit = desc
            .storage_params
            .get("ttl_disable_changefeed_replication")
            .map(String::as_str)
            == Some("true")
            || self
                .kv
                .settings()
                .bool("sql.ttl.changefeed_replication.disabled");
        let read_ts = self.kv.clock().now();
        let now_micros = (read_ts.wall_time_ns / 1000) as i64;
        let ctx = EvalCtx {
            now_micros,
            clock: Some(self.kv.clock().clone()),
            ..EvalCtx::default()
        };
        let children = write::referencing_tables(&self.catalog, &desc).await?;
        let mut stats = TtlStats::default();
        for shard in 0..desc.shard_count.max(1) {
            let prefix = keys::index_prefix(desc.id, shard, ldr_types::PRIMARY_INDEX_ID);
            let span = Span::prefix(&prefix);
            let mut start = span.start.clone();
            loop {
                if stopped() {
                    return Ok(stats);
                }
                let page = self
                    .kv
                    .scan(
                        &Span::new(start.clone(), span.end.clone()),
                        Some(read_ts),
                        select_batch,
                    )
                    .await?;
                let full = page.len() == select_batch;
                if let Some(last) = page.last() {
                    start = last.key.clone();
                    start.push(0);
                }
                let mut expired = Vec::new();
                for kvv in &page {
                    let Some(row) = scan::decode_version(&desc, &kvv.key, &kvv.version)? else {
                        continue;
                    };
                    stats.rows_selected += 1;
                    if is_expired(&expiry, &row, now_micros, &ctx)? {
                        expired.push(row);
                    }
                }
                for batch in expired.chunks(delete_batch) {
                    stats.rows_deleted += self
                        .delete_expired(&desc, batch, omit, &children, read_ts)
                        .await?;
                }
                progress(stats);
                if !full {
                    break;
                }
            }
        }
        Ok(stats)
    }

    /// Deletes `rows` if each is still the version read (and, for a parent table, has no
    /// children); returns how many were deleted.
    async fn delete_expired(
        &self,
        desc: &Arc<TableDescriptor>,
        rows: &[StoredRow],
        omit: bool,
        children: &[(Arc<TableDescriptor>, crate::catalog::ForeignKeyDescriptor)],
        read_ts: Timestamp,
    ) -> Result<u64> {
        let header = ValueHeader {
            omit_in_rangefeeds: omit,
            ..ValueHeader::default()
        };
        let mut writes = Vec::with_capacity(rows.len());
        let mut kept = Vec::with_capacity(rows.len());
        for row in rows {
            if !children.is_empty()
                && write::check_fk_children(
                    &self.catalog,
                    children,
                    desc,
                    &row.values,
                    None,
                    read_ts,
                    None,
                )
                .await
                .is_err()
            {
                // Still referenced: a TTL delete does not cascade; it stays until its
                // children go.
                continue;
            }
            let pk = rowcodec::pk_bytes(desc, &row.values);
            writes.push(RowWrite {
                key: row.key.clone(),
                value: None,
                condition: Condition::Expect(Some(row.raw.clone())),
                header,
                dependents: rowcodec::secondary_dependents(desc, None, Some(&row.values), &pk),
            });
            kept.push((row, pk));
        }
        if writes.is_empty() {
            return Ok(0);
        }
        let outcomes = self.kv.write(writes, false).await?;
        let mut deleted = 0;
        for ((row, pk), (_, outcome)) in kept.into_iter().zip(outcomes) {
            if !matches!(outcome, RowOutcome::Written { .. }) {
                continue;
            }
            deleted += 1;
            // The row's unique entries go with it.
            for index in desc.indexes.iter().filter(|i| i.unique) {
                if let Some(values) = rowcodec::unique_values(desc, index, &row.values) {
                    let release = RowWrite {
                        key: rowcodec::unique_key(desc, index, &values),
                        value: None,
                        condition: Condition::Expect(Some(pk.clone())),
                        header,
                        dependents: vec![],
                    };
                    self.kv.write(vec![release], true).await?;
                }
            }
        }
        Ok(deleted)
    }
}

fn expiry_of(desc: &TableDescriptor) -> Result<Expiry> {
    if let Some(text) = desc.storage_params.get("ttl_expiration_expression") {
        let expr = parser::parse_expr(text)?;
        let scope = scan::table_scope(desc, None);
        let mut params = Vec::new();
        let (bound, _) = Binder::new(&scope, &mut params).bind(&expr)?;
        return Ok(Expiry::Expression(Box::new(bound)));
    }
    if let Some(text) = desc.storage_params.get("ttl_expire_after") {
        let interval = Interval::parse(text)?;
        return Ok(Expiry::After(
            i64::try_from(interval.total_micros()).unwrap_or(i64::MAX),
        ));
    }
    Err(SqlError::new(
        sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE,
        format!(
            "table {} has no ttl_expire_after or ttl_expiration_expression",
            desc.name
        ),
    ))
}

/// Whether `row` has expired at `now_micros`.
fn is_expired(expiry: &Expiry, row: &StoredRow, now_micros: i64, ctx: &EvalCtx) -> Result<bool> {
    let expires = match expiry {
        Expiry::After(after) => {
            let written = if row.origin_ts.is_zero() {
                row.ts
            } else {
                row.origin_ts
            };
            Some(((written.wall_time_ns / 1000) as i64).saturating_add(*after))
        }
        Expiry::Expression(expr) => match expr.eval(&row.scope_values(), ctx)? {
            crate::datum::Datum::TimestampTz(m) | crate::datum::Datum::Timestamp(m) => Some(m),
            crate::datum::Datum::Null => None,
            other => {
                return Err(SqlError::new(
                    sqlstate::DATATYPE_MISMATCH,
                    format!("ttl_expiration_expression must be a TIMESTAMPTZ, got {other:?}"),
                ));
            }
        },
    };
    Ok(expires.is_some_and(|e| e <= now_micros))
}

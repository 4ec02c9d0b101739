//! DDL, one module per statement family: [`database`] (CREATE/DROP DATABASE, CREATE
//! SCHEMA), [`table`] (CREATE/DROP TABLE), [`index`] (CREATE/DROP
//! INDEX), [`alter`] (ALTER TABLE) and [`zone`] (zone configurations). This module
//! dispatches and holds what several families share: column and constraint building,
//! foreign keys, privilege checks and whole-table reads.
//!
//! Schema changes are not transactional. A new index is first published write-only (writers
//! maintain it), then existing rows are backfilled, then it becomes readable. A table that
//! logical replication jobs lock only accepts the changes `validation` allows.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use ldr_kv::{Condition, RowWrite, ValueHeader};
use ldr_types::{Span, keys};

use super::rows::Change;
use super::rows::StoredRow;
use super::scan;
use super::write::{self, Applied};
use super::{QueryResult, Session, privilege, resolve};
use crate::catalog::{
    CheckDescriptor, ColumnDescriptor, ForeignKeyDescriptor, IndexColumn, IndexDescriptor,
    ROWID_COLUMN, TableDescriptor,
};
use crate::datum::Datum;
use crate::error::{Result, SqlError, sqlstate};
use crate::expr::{Binder, EvalCtx, Scope};
use crate::parser::{
    AlterTableOp, ColumnDef, CreateIndex, CreateTable, ForeignKeyDef, IndexColumnDef, IndexDef,
    Statement, TableElement,
};
use crate::rowcodec;
use crate::types::{SqlType, TypeFamily};
use crate::validation::{self, SchemaChange};

mod alter;
mod database;
mod index;
mod table;
mod zone;

use self::alter::*;
use self::database::*;
use self::index::*;
pub use self::table::STORAGE_PARAMS;
use self::table::*;
pub(crate) use self::zone::{check_zone_option, configure_range_zone};

pub(crate) async fn execute(
    s: &mut Session,
    stmt: &Statement,
    _params: Vec<Datum>,
) -> Result<QueryResult> {
    match stmt {
        Statement::CreateDatabase {
            name,
            if_not_exists,
        } => create_database(s, name, *if_not_exists).await,
        Statement::CreateSchema {
            name,
            if_not_exists,
        } => create_schema(s, name, *if_not_exists).await,
        Statement::CreateTable(ct) => create_table(s, ct).await,
        Statement::CreateIndex(ci) => create_index(s, ci).await,
        Statement::DropDatabase {
            name,
            if_exists,
            cascade: _,
        } => drop_database(s, name, *if_exists).await,
        Statement::DropTable {
            names,
            if_exists,
            cascade,
        } => drop_tables(s, names, *if_exists, *cascade).await,
        Statement::DropIndex { names, if_exists } => drop_indexes(s, names, *if_exists).await,
        Statement::AlterTable {
            table,
            if_exists,
            ops,
        } => alter_table(s, table, *if_exists, ops).await,
        _ => Err(SqlError::internal("not a DDL statement")),
    }
}

/// Binds an expression over a table's columns to check it (DEFAULT, CHECK).
fn check_expr(
    desc_columns: &[ColumnDescriptor],
    table: &str,
    text: &str,
    want: Option<&SqlType>,
    allow_columns: bool,
) -> Result<()> {
    let expr = crate::parser::parse_expr(text)?;
    let scope = if allow_columns {
        Scope {
            columns: desc_columns
                .iter()
                .map(|c| crate::expr::ScopeColumn {
                    table: Some(table.to_string()),
                    name: c.name.clone(),
                    ty: c.ty.clone(),
                    hidden: c.hidden,
                })
                .collect(),
        }
    } else {
        Scope::default()
    };
    let mut params = Vec::new();
    let mut b = Binder::new(&scope, &mut params);
    let (_, ty) = match want {
        Some(t) => b.bind_typed(&expr, t)?,
        None => b.bind(&expr)?,
    };
    if !params.is_empty() {
        return Err(SqlError::new(
            sqlstate::SYNTAX_ERROR,
            "placeholders are not allowed here",
        ));
    }
    if let Some(t) = want {
        if ty != SqlType::Unknown
            && ty.family() != t.family()
            && !(ty.is_numeric() && t.is_numeric())
            && !matches!(
                (ty.family(), t.family()),
                (
                    TypeFamily::TimestampTz | TypeFamily::Timestamp | TypeFamily::Date,
                    TypeFamily::TimestampTz | TypeFamily::Timestamp | TypeFamily::Date
                )
            )
        {
            return Err(SqlError::datatype_mismatch(format!(
                "expected DEFAULT expression to have type {}, but '{text}' has type {}",
                t.family_name(),
                ty.family_name()
            )));
        }
    } else if ty != SqlType::Bool && ty != SqlType::Unknown {
        return Err(SqlError::datatype_mismatch(format!(
            "expected CHECK expression to have type bool, but '{text}' has type {}",
            ty.family_name()
        )));
    }
    Ok(())
}

fn column_from_def(def: &ColumnDef, id: u32) -> Result<ColumnDescriptor> {
    let ty = SqlType::parse(&def.type_name)?;
    let mut default_expr = def.default.as_ref().map(|e| e.to_string());
    if def.serial && default_expr.is_none() {
        default_expr = Some("unique_rowid()".into());
    }
    if let Some(text) = &default_expr {
        check_expr(&[], "", text, Some(&ty), false).map_err(|e| {
            if e.code() == sqlstate::UNDEFINED_COLUMN {
                SqlError::new(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    format!(
                        "variable sub-expressions are not allowed in DEFAULT ({})",
                        text
                    ),
                )
            } else {
                e
            }
        })?;
    }
    Ok(ColumnDescriptor {
        id,
        name: def.name.clone(),
        ty,
        nullable: def.nullable.unwrap_or(true) && !def.primary_key && !def.serial,
        default_expr,
        hidden: def.hidden,
        absent_value: None,
    })
}

fn index_columns(
    desc_columns: &[ColumnDescriptor],
    cols: &[IndexColumnDef],
) -> Result<Vec<IndexColumn>> {
    let mut seen = BTreeSet::new();
    cols.iter()
        .map(|c| {
            let col = desc_columns
                .iter()
                .find(|d| d.name == c.name)
                .ok_or_else(|| SqlError::undefined_column(&c.name))?;
            if !seen.insert(col.id) {
                return Err(SqlError::new(
                    sqlstate::DUPLICATE_COLUMN,
                    format!("index contains duplicate column \"{}\"", c.name),
                ));
            }
            if !col.ty.is_indexable() {
                return Err(SqlError::new(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    format!(
                        "column {} is of type {} and thus is not indexable",
                        col.name,
                        col.ty.sql_name().to_lowercase()
                    ),
                ));
            }
            Ok(IndexColumn {
                column_id: col.id,
                descending: c.descending,
            })
        })
        .collect()
}

fn generated_check_name(
    taken: &BTreeSet<String>,
    expr_text: &str,
    columns: &[ColumnDescriptor],
) -> String {
    let used: Vec<&str> = columns
        .iter()
        .filter(|c| {
            expr_text
                .split(|ch: char| !ch.is_alphanumeric() && ch != '_')
                .any(|w| w == c.name)
        })
        .map(|c| c.name.as_str())
        .collect();
    let base = if used.is_empty() {
        "check".to_string()
    } else {
        format!("check_{}", used.join("_"))
    };
    if !taken.contains(&base) {
        return base;
    }
    (1..)
        .map(|i| format!("{base}{i}"))
        .find(|n| !taken.contains(n))
        .expect("some suffix is free")
}

async fn build_fk(
    s: &Session,
    desc: &TableDescriptor,
    def: &ForeignKeyDef,
    taken: &BTreeSet<String>,
) -> Result<ForeignKeyDescriptor> {
    for action in [&def.on_delete, &def.on_update].into_iter().flatten() {
        if !matches!(action.as_str(), "NO ACTION" | "RESTRICT") {
            return Err(SqlError::unsupported(format!(
                "ON DELETE/UPDATE {action} is not supported"
            )));
        }
    }
    let self_ref = match def.ref_table.as_slice() {
        [t] => t == &desc.name,
        [sch, t] => t == &desc.name && sch == &desc.schema,
        [d, sch, t] => t == &desc.name && sch == &desc.schema && d == &desc.database,
        _ => false,
    };
    let parent: Arc<TableDescriptor> = if self_ref {
        Arc::new(desc.clone())
    } else {
        resolve::resolve_table(&s.server.catalog, s.database(), &def.ref_table).await?
    };
    if parent.database_id != desc.database_id {
        return Err(SqlError::unsupported("foreign keys across databases"));
    }
    let ref_cols: Vec<u32> = if def.ref_columns.is_empty() {
        parent
            .primary_index
            .columns
            .iter()
            .map(|c| c.column_id)
            .collect()
    } else {
        def.ref_columns
            .iter()
            .map(|c| parent.require_column(c).map(|d| d.id))
            .collect::<Result<_>>()?
    };
    if ref_cols.len() != def.columns.len() {
        return Err(SqlError::new(
            sqlstate::INVALID_FOREIGN_KEY,
            "number of referencing and referenced columns for foreign key disagree",
        ));
    }
    let unique_target = std::iter::once(&parent.primary_index)
        .chain(parent.indexes.iter().filter(|i| i.unique))
        .any(|i| {
            let mut a: Vec<u32> = i.columns.iter().map(|c| c.column_id).collect();
            let mut b = ref_cols.clone();
            a.sort_unstable();
            b.sort_unstable();
            a == b
        });
    if !unique_target {
        return Err(SqlError::new(
            sqlstate::INVALID_FOREIGN_KEY,
            format!(
                "there is no unique constraint matching given keys for referenced table {}",
                parent.name
            ),
        ));
    }
    let mut cols = Vec::new();
    for (c, rid) in def.columns.iter().zip(&ref_cols) {
        let col = desc.require_column(c)?;
        let rcol = parent
            .column_by_id(*rid)
            .ok_or_else(|| SqlError::internal("referenced column missing"))?;
        if col.ty.family() != rcol.ty.family() {
            return Err(SqlError::datatype_mismatch(format!(
                "type of \"{}\" ({}) does not match foreign key \"{}\".\"{}\" ({})",
                col.name,
                col.ty.sql_name(),
                parent.name,
                rcol.name,
                rcol.ty.sql_name()
            )));
        }
        cols.push(col.id);
    }
    let name = match &def.name {
        Some(n) => n.clone(),
        None => {
            let base = format!("{}_{}_fkey", desc.name, def.columns.join("_"));
            if taken.contains(&base) {
                (1..)
                    .map(|i| format!("{base}{i}"))
                    .find(|n| !taken.contains(n))
                    .expect("free name")
            } else {
                base
            }
        }
    };
    Ok(ForeignKeyDescriptor {
        name,
        columns: cols,
        ref_table_id: if self_ref { desc.id } else { parent.id },
        ref_columns: ref_cols,
        on_delete: def.on_delete.clone().unwrap_or_else(|| "NO ACTION".into()),
        on_update: def.on_update.clone().unwrap_or_else(|| "NO ACTION".into()),
    })
}

async fn require_alter(s: &Session, desc: &TableDescriptor) -> Result<()> {
    if desc.owner == s.user || privilege::is_admin(&s.server.catalog, &s.user).await? {
        return Ok(());
    }
    if desc
        .privileges
        .get(&s.user)
        .is_some_and(|p| p.contains("CREATE") || p.contains("ALL"))
    {
        return Ok(());
    }
    Err(SqlError::insufficient_privilege(format!(
        "user {} does not have CREATE privilege on relation {}",
        s.user, desc.name
    )))
}

async fn table_has_rows(s: &Session, desc: &Arc<TableDescriptor>) -> Result<bool> {
    let ts = s.server.kv.clock().now();
    for shard in 0..desc.shard_count.max(1) {
        let span = keys::index_span(desc.id, shard, ldr_types::PRIMARY_INDEX_ID);
        if !s.server.kv.scan(&span, Some(ts), 1).await?.is_empty() {
            return Ok(true);
        }
    }
    Ok(false)
}

async fn all_rows(s: &Session, desc: &Arc<TableDescriptor>) -> Result<Vec<StoredRow>> {
    let ts = s.server.kv.clock().now();
    scan::read(&s.server.kv, desc, &scan::Access::Full, ts, None).await
}

//! DDL: CREATE/DROP DATABASE, CREATE SCHEMA, CREATE/DROP TABLE, CREATE/DROP INDEX,
//! ALTER TABLE; `SHOW CREATE TABLE` rendering.
//!
//! Schema changes are not transactional. A new index is first published write-only (writers
//! maintain it), then existing rows are backfilled, then it becomes readable. A table that
//! logical replication jobs lock only accepts the changes `validation` allows.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use ldr_kv::{Condition, RowWrite, ValueHeader};
use ldr_types::{Span, keys};

use super::scan::{self, StoredRow};
use super::write::{self, Applied, Change};
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

/// Storage parameters accepted by `WITH (…)` / `ALTER TABLE … SET (…)`.
pub const STORAGE_PARAMS: &[&str] = &[
    "ttl",
    "ttl_expire_after",
    "ttl_expiration_expression",
    "ttl_job_cron",
    "ttl_select_batch_size",
    "ttl_delete_batch_size",
    "ttl_select_rate_limit",
    "ttl_delete_rate_limit",
    "ttl_row_stats_poll_interval",
    "ttl_pause",
    "ttl_label_metrics",
    "ttl_disable_changefeed_replication",
    "fillfactor",
    "autovacuum_enabled",
    "exclude_data_from_backup",
    "schema_locked",
    "sql_stats_automatic_collection_enabled",
    "sql_stats_forecasts_enabled",
];

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

async fn create_database(s: &mut Session, name: &str, if_not_exists: bool) -> Result<QueryResult> {
    if !privilege::has_system_privilege(&s.server.catalog, &s.user, "CREATEDB").await? {
        return Err(SqlError::insufficient_privilege(format!(
            "user {} does not have CREATEDB privilege",
            s.user
        )));
    }
    if !s.server.catalog.create_database(name, &s.user).await? && !if_not_exists {
        return Err(SqlError::new(
            sqlstate::DUPLICATE_DATABASE,
            format!("database \"{name}\" already exists"),
        ));
    }
    Ok(QueryResult::command("CREATE DATABASE"))
}

async fn create_schema(
    s: &mut Session,
    name: &[String],
    if_not_exists: bool,
) -> Result<QueryResult> {
    let (db, schema) = match name {
        [sch] => (s.database().to_string(), sch.clone()),
        [d, sch] => (d.clone(), sch.clone()),
        _ => {
            return Err(SqlError::new(
                sqlstate::SYNTAX_ERROR,
                "improper qualified name",
            ));
        }
    };
    let desc = s.server.catalog.require_database(&db).await?;
    privilege::require_database_create(s, &desc).await?;
    if desc.has_schema(&schema)
        || matches!(
            schema.as_str(),
            "pg_catalog" | "information_schema" | "crdb_internal"
        )
    {
        if if_not_exists {
            return Ok(QueryResult::command("CREATE SCHEMA"));
        }
        return Err(SqlError::new(
            sqlstate::DUPLICATE_SCHEMA,
            format!("schema \"{schema}\" already exists"),
        ));
    }
    let sch = schema.clone();
    s.server
        .catalog
        .update_database(&db, &move |d| {
            if !d.has_schema(&sch) {
                d.schemas.push(sch.clone());
            }
            Ok(())
        })
        .await?;
    Ok(QueryResult::command("CREATE SCHEMA"))
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

fn storage_value(e: &crate::parser::Expr) -> Result<String> {
    use sqlparser::ast as sql;
    Ok(match e {
        sql::Expr::Value(v) => match &v.value {
            sql::Value::SingleQuotedString(s)
            | sql::Value::DollarQuotedString(sql::DollarQuotedString { value: s, .. }) => s.clone(),
            sql::Value::Number(n, _) => n.clone(),
            sql::Value::Boolean(b) => b.to_string(),
            other => other.to_string(),
        },
        sql::Expr::Identifier(i) => i.value.clone(),
        other => other.to_string(),
    })
}

/// Validates `(key, value)` storage parameters; returns them normalized.
fn storage_params(params: &[(String, crate::parser::Expr)]) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for (k, e) in params {
        let key = k.to_ascii_lowercase();
        if !STORAGE_PARAMS.contains(&key.as_str()) {
            return Err(SqlError::new(
                sqlstate::INVALID_PARAMETER_VALUE,
                format!("invalid storage parameter \"{key}\""),
            ));
        }
        let v = storage_value(e)?;
        match key.as_str() {
            "ttl_expire_after" => {
                let iv = crate::interval::Interval::parse(&v).map_err(|_| {
                    SqlError::new(
                        sqlstate::INVALID_PARAMETER_VALUE,
                        format!("value of \"ttl_expire_after\" must be an interval: \"{v}\""),
                    )
                })?;
                if iv.total_micros() <= 0 {
                    return Err(SqlError::new(
                        sqlstate::INVALID_PARAMETER_VALUE,
                        "value of \"ttl_expire_after\" must be at least zero",
                    ));
                }
            }
            "ttl"
            | "ttl_pause"
            | "ttl_label_metrics"
            | "ttl_disable_changefeed_replication"
            | "autovacuum_enabled"
            | "exclude_data_from_backup"
            | "schema_locked" => {
                let b = crate::datum::parse_bool(&v).ok_or_else(|| {
                    SqlError::new(
                        sqlstate::INVALID_PARAMETER_VALUE,
                        format!("parameter \"{key}\" requires a Boolean value"),
                    )
                })?;
                out.push((key, b.to_string()));
                continue;
            }
            "ttl_job_cron" => {
                crate::cron::Cron::parse(&v)
                    .map_err(|e| SqlError::new(sqlstate::INVALID_PARAMETER_VALUE, e))?;
            }
            "ttl_expiration_expression" => {
                crate::parser::parse_expr(&v).map_err(|e| {
                    SqlError::new(
                        sqlstate::INVALID_PARAMETER_VALUE,
                        format!("ttl_expiration_expression \"{v}\" does not parse: {e}"),
                    )
                })?;
            }
            "ttl_select_batch_size"
            | "ttl_delete_batch_size"
            | "ttl_select_rate_limit"
            | "ttl_delete_rate_limit"
            | "fillfactor" => {
                v.parse::<i64>().map_err(|_| {
                    SqlError::new(
                        sqlstate::INVALID_PARAMETER_VALUE,
                        format!("parameter \"{key}\" requires an integer value"),
                    )
                })?;
            }
            _ => {}
        }
        out.push((key, v));
    }
    Ok(out)
}

fn apply_storage(map: &mut BTreeMap<String, String>, params: Vec<(String, String)>) {
    let setting_expire = params
        .iter()
        .any(|(k, _)| k == "ttl_expire_after" || k == "ttl_expiration_expression");
    for (k, v) in params {
        map.insert(k, v);
    }
    if setting_expire && !map.contains_key("ttl") {
        map.insert("ttl".into(), "true".into());
    }
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

fn new_index(desc: &TableDescriptor, def: &IndexDef) -> Result<IndexDescriptor> {
    let columns = index_columns(&desc.columns, &def.columns)?;
    let names: Vec<String> = def.columns.iter().map(|c| c.name.clone()).collect();
    let name = match &def.name {
        Some(n) => n.clone(),
        None => desc.new_index_name(&names, def.unique),
    };
    let storing = def
        .storing
        .iter()
        .map(|c| desc.require_column(c).map(|d| d.id))
        .collect::<Result<_>>()?;
    Ok(IndexDescriptor {
        id: desc.next_index_id,
        name,
        unique: def.unique,
        columns,
        storing,
        write_only: false,
    })
}

async fn create_table(s: &mut Session, ct: &CreateTable) -> Result<QueryResult> {
    // The DLQ schema is created on demand.
    let dlq_db = match ct.name.as_slice() {
        [sch, _] if sch == "crdb_replication" => Some(s.database().to_string()),
        [db, sch, _] if sch == "crdb_replication" => Some(db.clone()),
        _ => None,
    };
    if let Some(db) = dlq_db
        && let Some(d) = s.server.catalog.database(&db).await?
        && !d.has_schema("crdb_replication")
    {
        s.server
            .catalog
            .update_database(&db, &|d| {
                if !d.has_schema("crdb_replication") {
                    d.schemas.push("crdb_replication".into());
                }
                Ok(())
            })
            .await?;
    }
    let target = resolve::target(&s.server.catalog, s.database(), &ct.name).await?;
    privilege::require_database_create(s, &target.database).await?;
    if matches!(target.database.name.as_str(), "system") {
        return Err(SqlError::insufficient_privilege(
            "user does not have CREATE privilege on database system",
        ));
    }
    if let Some(existing) = s
        .server
        .catalog
        .table(target.database.id, &target.schema, &target.name)
        .await?
    {
        let _ = existing;
        if ct.if_not_exists {
            return Ok(QueryResult::command("CREATE TABLE"));
        }
        return Err(SqlError::new(
            sqlstate::DUPLICATE_TABLE,
            format!("relation \"{}\" already exists", target.display()),
        ));
    }
    let id = s.server.catalog.allocate_id().await?;
    let mut desc = TableDescriptor {
        id,
        version: 1,
        database_id: target.database.id,
        database: target.database.name.clone(),
        schema: target.schema.clone(),
        name: target.name.clone(),
        columns: vec![],
        next_column_id: 1,
        primary_index: IndexDescriptor {
            id: 1,
            name: format!("{}_pkey", target.name),
            unique: true,
            columns: vec![],
            storing: vec![],
            write_only: false,
        },
        indexes: vec![],
        next_index_id: 2,
        foreign_keys: vec![],
        checks: vec![],
        storage_params: BTreeMap::new(),
        ldr_job_ids: vec![],
        shard_count: 1,
        owner: s.user.clone(),
        privileges: BTreeMap::new(),
    };
    // Columns first (constraints may refer to any of them).
    let mut pk: Option<(Option<String>, Vec<IndexColumnDef>)> = None;
    let mut index_defs: Vec<IndexDef> = Vec::new();
    let mut check_defs: Vec<(Option<String>, String)> = Vec::new();
    let mut fk_defs: Vec<ForeignKeyDef> = Vec::new();
    let mut families = 0;
    for el in &ct.elements {
        if let TableElement::Column(def) = el {
            let col = column_from_def(def, desc.next_column_id)?;
            desc.next_column_id += 1;
            if def.primary_key {
                if pk.is_some() {
                    return Err(multiple_pks(&desc.name));
                }
                pk = Some((
                    None,
                    vec![IndexColumnDef {
                        name: def.name.clone(),
                        descending: false,
                    }],
                ));
            }
            if let Some(name) = &def.unique {
                index_defs.push(IndexDef {
                    name: name.clone(),
                    unique: true,
                    columns: vec![IndexColumnDef {
                        name: def.name.clone(),
                        descending: false,
                    }],
                    storing: vec![],
                });
            }
            for (name, e) in &def.checks {
                check_defs.push((name.clone(), e.to_string()));
            }
            if let Some(fk) = &def.references {
                fk_defs.push(fk.clone());
            }
            desc.columns.push(col);
        }
    }
    for el in &ct.elements {
        match el {
            TableElement::Column(_) => {}
            TableElement::PrimaryKey { name, columns } => {
                if pk.is_some() {
                    return Err(multiple_pks(&desc.name));
                }
                pk = Some((name.clone(), columns.clone()));
            }
            TableElement::Index(def) => index_defs.push(def.clone()),
            TableElement::Check { name, expr } => check_defs.push((name.clone(), expr.to_string())),
            TableElement::ForeignKey(fk) => fk_defs.push(fk.clone()),
            TableElement::Family => families += 1,
        }
    }
    if families > 1 {
        return Err(SqlError::unsupported(
            "multiple column families are not supported",
        ));
    }
    match pk {
        Some((name, cols)) => {
            desc.primary_index.columns = index_columns(&desc.columns, &cols)?;
            if let Some(n) = name {
                desc.primary_index.name = n;
            }
            for c in &desc.primary_index.columns {
                let col = desc
                    .columns
                    .iter_mut()
                    .find(|d| d.id == c.column_id)
                    .expect("pk columns were resolved");
                col.nullable = false;
            }
        }
        None => {
            if desc.column(ROWID_COLUMN).is_some() {
                return Err(SqlError::new(
                    sqlstate::DUPLICATE_COLUMN,
                    "column \"rowid\" specified more than once",
                ));
            }
            let id = desc.next_column_id;
            desc.next_column_id += 1;
            desc.columns.push(ColumnDescriptor {
                id,
                name: ROWID_COLUMN.into(),
                ty: SqlType::Int8,
                nullable: false,
                default_expr: Some("unique_rowid()".into()),
                hidden: true,
                absent_value: None,
            });
            desc.primary_index.columns = vec![IndexColumn {
                column_id: id,
                descending: false,
            }];
        }
    }
    for def in &index_defs {
        let idx = new_index(&desc, def)?;
        desc.next_index_id += 1;
        desc.indexes.push(idx);
    }
    let mut taken: BTreeSet<String> = BTreeSet::new();
    for (name, text) in check_defs {
        check_expr(&desc.columns, &desc.name, &text, None, true)?;
        let name = name.unwrap_or_else(|| generated_check_name(&taken, &text, &desc.columns));
        taken.insert(name.clone());
        desc.checks.push(CheckDescriptor { name, expr: text });
    }
    for def in &fk_defs {
        let fk = build_fk(s, &desc, def, &taken).await?;
        taken.insert(fk.name.clone());
        desc.foreign_keys.push(fk);
    }
    let params = storage_params(&ct.storage_params)?;
    apply_storage(&mut desc.storage_params, params);
    desc.validate()?;
    let table_name = target.display();
    match s.server.catalog.create_table(desc).await? {
        Some(_) => Ok(QueryResult::command("CREATE TABLE")),
        None if ct.if_not_exists => Ok(QueryResult::command("CREATE TABLE")),
        None => Err(SqlError::new(
            sqlstate::DUPLICATE_TABLE,
            format!("relation \"{table_name}\" already exists"),
        )),
    }
}

fn multiple_pks(table: &str) -> SqlError {
    SqlError::new(
        sqlstate::INVALID_TABLE_DEFINITION,
        format!("multiple primary keys for table \"{table}\" are not allowed"),
    )
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

/// Publishes a new index write-only, backfills it, then makes it readable. A duplicate
/// found while backfilling a unique index removes the index again.
async fn add_index(
    s: &mut Session,
    desc: &Arc<TableDescriptor>,
    mut idx: IndexDescriptor,
) -> Result<()> {
    idx.write_only = true;
    let idx_id = idx.id;
    let pending = idx.clone();
    let published = s
        .server
        .catalog
        .update_table(desc.id, &move |d| {
            if d.index_by_name(&pending.name).is_some() {
                return Err(SqlError::new(
                    sqlstate::DUPLICATE_TABLE,
                    format!("index with name \"{}\" already exists", pending.name),
                ));
            }
            let mut i = pending.clone();
            i.id = d.next_index_id;
            d.next_index_id += 1;
            d.indexes.push(i);
            Ok(())
        })
        .await?;
    let idx = published
        .indexes
        .iter()
        .find(|i| i.name == idx.name)
        .cloned()
        .ok_or_else(|| SqlError::internal("published index missing"))?;
    let _ = idx_id;
    let result = backfill_index(s, &published, &idx).await;
    match result {
        Ok(()) => {
            let name = idx.name.clone();
            s.server
                .catalog
                .update_table(desc.id, &move |d| {
                    if let Some(i) = d.indexes.iter_mut().find(|i| i.name == name) {
                        i.write_only = false;
                    }
                    Ok(())
                })
                .await?;
            Ok(())
        }
        Err(e) => {
            let id = idx.id;
            let _ = s
                .server
                .catalog
                .update_table(desc.id, &move |d| {
                    d.indexes.retain(|i| i.id != id);
                    Ok(())
                })
                .await;
            let _ = clear_index(s, &published, id).await;
            Err(e)
        }
    }
}

async fn backfill_index(
    s: &mut Session,
    desc: &Arc<TableDescriptor>,
    idx: &IndexDescriptor,
) -> Result<()> {
    let kv = s.server.kv.clone();
    let ts = kv.clock().now();
    let rows = scan::read(&kv, desc, &scan::Access::Full, ts, None).await?;
    if idx.unique {
        // Claim every value; a value held by another row that still has it is a duplicate.
        for r in &rows {
            let Some(vals) = rowcodec::unique_values(desc, idx, &r.values) else {
                continue;
            };
            let pk = rowcodec::pk_bytes(desc, &r.values);
            let key = rowcodec::unique_key(desc, idx, &vals);
            let w = RowWrite {
                key: key.clone(),
                value: Some(pk.clone()),
                condition: Condition::Expect(None),
                header: ValueHeader::default(),
                dependents: vec![],
            };
            let out = kv.write(vec![w], true).await?;
            if let Some((_, ldr_kv::RowOutcome::ConditionFailed { actual: Some(v) })) = out.first()
                && v.value.as_deref() != Some(&pk[..])
            {
                let owner = v.value.clone().unwrap_or_default();
                let owner_row = kv
                    .get(&rowcodec::primary_key_from_pk(desc, &owner), None)
                    .await?;
                let holds = match owner_row.and_then(|o| o.value) {
                    Some(raw) => {
                        rowcodec::unique_values(desc, idx, &rowcodec::decode_row_value(desc, &raw)?)
                            .as_deref()
                            == Some(&vals[..])
                    }
                    None => false,
                };
                if holds {
                    return Err(write::unique_violation(desc, idx, &r.values));
                }
                let w = RowWrite {
                    key,
                    value: Some(pk),
                    condition: Condition::Expect(Some(owner)),
                    header: ValueHeader::default(),
                    dependents: vec![],
                };
                kv.write(vec![w], true).await?;
            }
        }
    } else {
        let entries: Vec<RowWrite> = rows
            .iter()
            .map(|r| {
                let pk = rowcodec::pk_bytes(desc, &r.values);
                RowWrite {
                    key: rowcodec::secondary_key(desc, idx, &r.values, &pk),
                    value: Some(Vec::new()),
                    condition: Condition::None,
                    header: ValueHeader::default(),
                    dependents: vec![],
                }
            })
            .collect();
        for chunk in entries.chunks(500) {
            kv.write(chunk.to_vec(), false).await?;
        }
    }
    Ok(())
}

/// Deletes every entry of an index (all shards).
async fn clear_index(s: &Session, desc: &TableDescriptor, index_id: u32) -> Result<()> {
    let kv = &s.server.kv;
    let ts = kv.clock().now();
    for shard in 0..desc.shard_count.max(1) {
        let span: Span = keys::index_span(desc.id, shard, index_id);
        let entries = scan::scan_all(kv, &span, ts).await?;
        let deletes: Vec<RowWrite> = entries
            .into_iter()
            .map(|e| RowWrite {
                key: e.key,
                value: None,
                condition: Condition::None,
                header: ValueHeader::default(),
                dependents: vec![],
            })
            .collect();
        for chunk in deletes.chunks(500) {
            kv.write(chunk.to_vec(), false).await?;
        }
    }
    Ok(())
}

async fn create_index(s: &mut Session, ci: &CreateIndex) -> Result<QueryResult> {
    let desc = resolve::resolve_table(&s.server.catalog, s.database(), &ci.table).await?;
    require_alter(s, &desc).await?;
    validation::check_schema_change_allowed(
        &desc,
        &SchemaChange::CreateIndex {
            unique: ci.index.unique,
        },
    )?;
    if let Some(n) = &ci.index.name
        && desc.index_by_name(n).is_some()
    {
        if ci.if_not_exists {
            return Ok(QueryResult::command("CREATE INDEX"));
        }
        return Err(SqlError::new(
            sqlstate::DUPLICATE_TABLE,
            format!("index with name \"{n}\" already exists"),
        ));
    }
    let idx = new_index(&desc, &ci.index)?;
    add_index(s, &desc, idx).await?;
    Ok(QueryResult::command("CREATE INDEX"))
}

async fn drop_database(s: &mut Session, name: &str, if_exists: bool) -> Result<QueryResult> {
    let Some(db) = s.server.catalog.database(name).await? else {
        if if_exists {
            return Ok(QueryResult::command("DROP DATABASE"));
        }
        return Err(SqlError::undefined_database(name));
    };
    if name == "system" {
        return Err(SqlError::insufficient_privilege(
            "cannot drop the system database",
        ));
    }
    if db.owner != s.user {
        privilege::require_admin(s, "drop databases they do not own").await?;
    }
    let tables = s.server.catalog.tables_in(db.id).await?;
    for t in &tables {
        validation::check_schema_change_allowed(t, &SchemaChange::Other)?;
    }
    for t in &tables {
        s.server.catalog.drop_table(t).await?;
    }
    s.server.catalog.drop_database_record(name).await?;
    Ok(QueryResult::command("DROP DATABASE"))
}

async fn drop_tables(
    s: &mut Session,
    names: &[Vec<String>],
    if_exists: bool,
    cascade: bool,
) -> Result<QueryResult> {
    for name in names {
        let Some(desc) = resolve::lookup_table(&s.server.catalog, s.database(), name).await? else {
            if if_exists {
                continue;
            }
            return Err(SqlError::undefined_table(name.join(".")));
        };
        privilege::require_table(s, &desc, "DROP").await?;
        validation::check_schema_change_allowed(&desc, &SchemaChange::Other)?;
        let children = write::referencing_tables(&s.server.catalog, &desc).await?;
        let others: Vec<_> = children.iter().filter(|(c, _)| c.id != desc.id).collect();
        if let Some((child, fk)) = others.first() {
            if !cascade {
                return Err(SqlError::new(
                    sqlstate::DEPENDENT_OBJECTS_STILL_EXIST,
                    format!(
                        "\"{}\" is referenced by foreign key from table \"{}\"",
                        desc.name, child.name
                    ),
                )
                .with_hint(format!(
                    "drop the constraint \"{}\" first, or use CASCADE",
                    fk.name
                )));
            }
            for (child, fk) in others {
                validation::check_schema_change_allowed(child, &SchemaChange::Other)?;
                let fk_name = fk.name.clone();
                s.server
                    .catalog
                    .update_table(child.id, &move |d| {
                        d.foreign_keys.retain(|f| f.name != fk_name);
                        Ok(())
                    })
                    .await?;
            }
        }
        s.server.catalog.drop_table(&desc).await?;
    }
    Ok(QueryResult::command("DROP TABLE"))
}

async fn drop_indexes(
    s: &mut Session,
    names: &[crate::parser::IndexName],
    if_exists: bool,
) -> Result<QueryResult> {
    for n in names {
        let (desc, index_name) = match &n.table {
            Some(t) => {
                let desc = resolve::resolve_table(&s.server.catalog, s.database(), t).await?;
                (Some(desc), n.index.last().cloned().unwrap_or_default())
            }
            None => {
                let index_name = n.index.last().cloned().unwrap_or_default();
                let db = match n.index.len() {
                    3 => n.index[0].clone(),
                    _ => s.database().to_string(),
                };
                let db = s.server.catalog.require_database(&db).await?;
                let tables = s.server.catalog.tables_in(db.id).await?;
                let found: Vec<_> = tables
                    .into_iter()
                    .filter(|t| {
                        t.indexes.iter().any(|i| i.name == index_name)
                            || t.primary_index.name == index_name
                    })
                    .collect();
                if found.len() > 1 {
                    return Err(SqlError::new(
                        sqlstate::AMBIGUOUS_PARAMETER,
                        format!(
                            "index name \"{index_name}\" is ambiguous (found in {} tables)",
                            found.len()
                        ),
                    ));
                }
                (found.into_iter().next(), index_name)
            }
        };
        let Some(desc) = desc.filter(|d| d.index_by_name(&index_name).is_some()) else {
            if if_exists {
                continue;
            }
            return Err(SqlError::new(
                sqlstate::UNDEFINED_OBJECT,
                format!("index \"{index_name}\" does not exist"),
            ));
        };
        if desc.primary_index.name == index_name {
            return Err(SqlError::unsupported(format!(
                "cannot drop the primary index of table \"{}\"",
                desc.name
            )));
        }
        require_alter(s, &desc).await?;
        validation::check_schema_change_allowed(&desc, &SchemaChange::DropIndex)?;
        let idx = desc
            .index_by_name(&index_name)
            .cloned()
            .ok_or_else(|| SqlError::internal("index vanished"))?;
        if idx.unique {
            let mut cols: Vec<u32> = idx.columns.iter().map(|c| c.column_id).collect();
            cols.sort_unstable();
            for (child, fk) in write::referencing_tables(&s.server.catalog, &desc).await? {
                let mut r = fk.ref_columns.clone();
                r.sort_unstable();
                if r == cols {
                    return Err(SqlError::new(
                        sqlstate::DEPENDENT_OBJECTS_STILL_EXIST,
                        format!("index \"{index_name}\" is in use as unique constraint"),
                    )
                    .with_detail(format!(
                        "foreign key \"{}\" of table \"{}\" depends on it",
                        fk.name, child.name
                    )));
                }
            }
        }
        let id = idx.id;
        let updated = s
            .server
            .catalog
            .update_table(desc.id, &move |d| {
                d.indexes.retain(|i| i.id != id);
                Ok(())
            })
            .await?;
        clear_index(s, &updated, id).await?;
    }
    Ok(QueryResult::command("DROP INDEX"))
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

fn lock_class(ops: &[AlterTableOp]) -> SchemaChange {
    if ops.len() != 1 {
        return SchemaChange::Other;
    }
    match &ops[0] {
        AlterTableOp::SetStorage(kv) => {
            SchemaChange::SetStorageParams(kv.iter().map(|(k, _)| k.to_ascii_lowercase()).collect())
        }
        AlterTableOp::ResetStorage(k) => {
            SchemaChange::ResetStorageParams(k.iter().map(|k| k.to_ascii_lowercase()).collect())
        }
        AlterTableOp::ConfigureZone(_) => SchemaChange::ConfigureZone,
        _ => SchemaChange::Other,
    }
}

async fn alter_table(
    s: &mut Session,
    table: &[String],
    if_exists: bool,
    ops: &[AlterTableOp],
) -> Result<QueryResult> {
    let Some(desc) = resolve::lookup_table(&s.server.catalog, s.database(), table).await? else {
        if if_exists {
            return Ok(QueryResult::command("ALTER TABLE"));
        }
        return Err(SqlError::undefined_table(table.join(".")));
    };
    require_alter(s, &desc).await?;
    validation::check_schema_change_allowed(&desc, &lock_class(ops))?;
    for op in ops {
        // Re-read: earlier ops of the statement changed the descriptor.
        let desc = s
            .server
            .catalog
            .table_by_id(desc.id)
            .await?
            .ok_or_else(|| SqlError::undefined_table(table.join(".")))?;
        alter_op(s, &desc, op).await?;
    }
    Ok(QueryResult::command("ALTER TABLE"))
}

async fn alter_op(s: &mut Session, desc: &Arc<TableDescriptor>, op: &AlterTableOp) -> Result<()> {
    let server = s.server.clone();
    let catalog = &server.catalog;
    match op {
        AlterTableOp::AddColumn {
            column,
            if_not_exists,
        } => {
            if desc.column(&column.name).is_some() {
                if *if_not_exists {
                    return Ok(());
                }
                return Err(SqlError::new(
                    sqlstate::DUPLICATE_COLUMN,
                    format!(
                        "column \"{}\" of relation \"{}\" already exists",
                        column.name, desc.name
                    ),
                ));
            }
            if column.primary_key {
                return Err(SqlError::unsupported("adding a primary key column"));
            }
            let mut col = column_from_def(column, desc.next_column_id)?;
            // Rows that exist read the default (evaluated once) or NULL.
            let mut backfill_volatile = false;
            if let Some(text) = &col.default_expr {
                let e = crate::parser::parse_expr(text)?;
                let mut params = Vec::new();
                let (x, _) = Binder::new(&Scope::default(), &mut params).bind_typed(&e, &col.ty)?;
                if x.is_volatile() {
                    backfill_volatile = true;
                } else {
                    let ctx = s.eval_ctx(vec![]);
                    let v = x.eval(&[], &ctx)?.coerce_for_column(&col.ty, &col.name)?;
                    col.absent_value = v.to_text(0);
                }
            }
            if !col.nullable
                && col.absent_value.is_none()
                && !backfill_volatile
                && table_has_rows(s, desc).await?
            {
                return Err(SqlError::new(
                    sqlstate::NOT_NULL_VIOLATION,
                    format!(
                        "null value in column \"{}\" violates not-null constraint",
                        col.name
                    ),
                ));
            }
            for (name, e) in &column.checks {
                let mut cols = desc.columns.clone();
                cols.push(col.clone());
                check_expr(&cols, &desc.name, &e.to_string(), None, true)?;
                let _ = name;
            }
            let new_col = col.clone();
            let checks: Vec<(Option<String>, String)> = column
                .checks
                .iter()
                .map(|(n, e)| (n.clone(), e.to_string()))
                .collect();
            let updated = catalog
                .update_table(desc.id, &move |d| {
                    if d.column(&new_col.name).is_some() {
                        return Err(SqlError::new(
                            sqlstate::DUPLICATE_COLUMN,
                            format!(
                                "column \"{}\" of relation \"{}\" already exists",
                                new_col.name, d.name
                            ),
                        ));
                    }
                    let mut c = new_col.clone();
                    c.id = d.next_column_id;
                    d.next_column_id += 1;
                    d.columns.push(c);
                    let mut taken: BTreeSet<String> =
                        d.checks.iter().map(|c| c.name.clone()).collect();
                    for (name, text) in &checks {
                        let n = name
                            .clone()
                            .unwrap_or_else(|| generated_check_name(&taken, text, &d.columns));
                        taken.insert(n.clone());
                        d.checks.push(CheckDescriptor {
                            name: n,
                            expr: text.clone(),
                        });
                    }
                    Ok(())
                })
                .await?;
            if backfill_volatile {
                backfill_column(s, &updated, &col.name).await?;
            }
            if let Some(name) = &column.unique {
                let def = IndexDef {
                    name: name.clone(),
                    unique: true,
                    columns: vec![IndexColumnDef {
                        name: column.name.clone(),
                        descending: false,
                    }],
                    storing: vec![],
                };
                let idx = new_index(&updated, &def)?;
                add_index(s, &updated, idx).await?;
            }
            if let Some(fk) = &column.references {
                let current = catalog
                    .table_by_id(desc.id)
                    .await?
                    .ok_or_else(|| SqlError::internal("table vanished"))?;
                let taken: BTreeSet<String> = current
                    .foreign_keys
                    .iter()
                    .map(|f| f.name.clone())
                    .collect();
                let fkd = build_fk(s, &current, fk, &taken).await?;
                validate_fk_rows(s, &current, &fkd).await?;
                s.server
                    .catalog
                    .update_table(desc.id, &move |d| {
                        d.foreign_keys.push(fkd.clone());
                        Ok(())
                    })
                    .await?;
            }
            Ok(())
        }
        AlterTableOp::DropColumn { name, if_exists } => {
            let Some(col) = desc.column(name).cloned() else {
                if *if_exists {
                    return Ok(());
                }
                return Err(SqlError::undefined_column(name));
            };
            if desc
                .primary_index
                .columns
                .iter()
                .any(|c| c.column_id == col.id)
            {
                return Err(SqlError::unsupported(format!(
                    "column \"{name}\" is referenced by the primary key"
                )));
            }
            if desc
                .foreign_keys
                .iter()
                .any(|f| f.columns.contains(&col.id))
            {
                return Err(SqlError::new(
                    sqlstate::DEPENDENT_OBJECTS_STILL_EXIST,
                    format!("column \"{name}\" is referenced by a foreign key"),
                ));
            }
            for (child, fk) in write::referencing_tables(catalog, desc).await? {
                if fk.ref_columns.contains(&col.id) {
                    return Err(SqlError::new(
                        sqlstate::DEPENDENT_OBJECTS_STILL_EXIST,
                        format!(
                            "column \"{name}\" is referenced by foreign key \"{}\" from table \"{}\"",
                            fk.name, child.name
                        ),
                    ));
                }
            }
            for c in &desc.checks {
                if c.expr
                    .split(|ch: char| !ch.is_alphanumeric() && ch != '_')
                    .any(|w| w == name)
                {
                    return Err(SqlError::new(
                        sqlstate::DEPENDENT_OBJECTS_STILL_EXIST,
                        format!(
                            "column \"{name}\" is referenced by check constraint \"{}\"",
                            c.name
                        ),
                    ));
                }
            }
            let dropped: Vec<u32> = desc
                .indexes
                .iter()
                .filter(|i| i.columns.iter().any(|c| c.column_id == col.id))
                .map(|i| i.id)
                .collect();
            let id = col.id;
            let gone = dropped.clone();
            let updated = catalog
                .update_table(desc.id, &move |d| {
                    d.columns.retain(|c| c.id != id);
                    d.indexes.retain(|i| !gone.contains(&i.id));
                    for i in d.indexes.iter_mut() {
                        i.storing.retain(|c| *c != id);
                    }
                    Ok(())
                })
                .await?;
            for i in dropped {
                clear_index(s, &updated, i).await?;
            }
            Ok(())
        }
        AlterTableOp::SetStorage(params) => {
            let params = storage_params(params)?;
            catalog
                .update_table(desc.id, &move |d| {
                    apply_storage(&mut d.storage_params, params.clone());
                    Ok(())
                })
                .await?;
            Ok(())
        }
        AlterTableOp::ResetStorage(keys) => {
            let keys: Vec<String> = keys.iter().map(|k| k.to_ascii_lowercase()).collect();
            for k in &keys {
                if !STORAGE_PARAMS.contains(&k.as_str()) {
                    return Err(SqlError::new(
                        sqlstate::INVALID_PARAMETER_VALUE,
                        format!("invalid storage parameter \"{k}\""),
                    ));
                }
            }
            catalog
                .update_table(desc.id, &move |d| {
                    for k in &keys {
                        d.storage_params.remove(k);
                        if k == "ttl" {
                            d.storage_params.retain(|p, _| !p.starts_with("ttl"));
                        }
                    }
                    if !d.storage_params.contains_key("ttl_expire_after")
                        && !d.storage_params.contains_key("ttl_expiration_expression")
                    {
                        d.storage_params.remove("ttl");
                    }
                    Ok(())
                })
                .await?;
            Ok(())
        }
        AlterTableOp::SetDefault { column, default } => {
            let col = desc.require_column(column)?.clone();
            let text = default.as_ref().map(|e| e.to_string());
            if let Some(t) = &text {
                check_expr(&[], "", t, Some(&col.ty), false)?;
            }
            let id = col.id;
            catalog
                .update_table(desc.id, &move |d| {
                    if let Some(c) = d.columns.iter_mut().find(|c| c.id == id) {
                        c.default_expr = text.clone();
                    }
                    Ok(())
                })
                .await?;
            Ok(())
        }
        AlterTableOp::SetNotNull { column, not_null } => {
            let col = desc.require_column(column)?.clone();
            if !*not_null
                && desc
                    .primary_index
                    .columns
                    .iter()
                    .any(|c| c.column_id == col.id)
            {
                return Err(SqlError::new(
                    sqlstate::INVALID_TABLE_DEFINITION,
                    format!("column \"{column}\" is in a primary index"),
                ));
            }
            if *not_null {
                let i = desc.column_index(column).expect("column exists");
                for r in all_rows(s, desc).await? {
                    if r.values[i].is_null() {
                        return Err(SqlError::new(
                            sqlstate::NOT_NULL_VIOLATION,
                            format!(
                                "validation of column \"{column}\" NOT NULL failed on row: {}",
                                r.values
                                    .iter()
                                    .map(|v| v.to_sql_literal())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ),
                        ));
                    }
                }
            }
            let id = col.id;
            let nullable = !*not_null;
            catalog
                .update_table(desc.id, &move |d| {
                    if let Some(c) = d.columns.iter_mut().find(|c| c.id == id) {
                        c.nullable = nullable;
                    }
                    Ok(())
                })
                .await?;
            Ok(())
        }
        AlterTableOp::AddConstraint(el) => match el {
            TableElement::Check { name, expr } => {
                let text = expr.to_string();
                check_expr(&desc.columns, &desc.name, &text, None, true)?;
                let taken: BTreeSet<String> = desc.checks.iter().map(|c| c.name.clone()).collect();
                let name = name
                    .clone()
                    .unwrap_or_else(|| generated_check_name(&taken, &text, &desc.columns));
                if taken.contains(&name) {
                    return Err(SqlError::new(
                        sqlstate::DUPLICATE_OBJECT,
                        format!("duplicate constraint name: \"{name}\""),
                    ));
                }
                let mut probe = (**desc).clone();
                probe.checks = vec![CheckDescriptor {
                    name: name.clone(),
                    expr: text.clone(),
                }];
                let ctx = EvalCtx::default();
                for r in all_rows(s, desc).await? {
                    write::check_row(&probe, &r.values, &ctx).map_err(|_| {
                        SqlError::new(
                            sqlstate::CHECK_VIOLATION,
                            format!(
                                "validation of CHECK \"{text}\" failed on row: {}",
                                r.values
                                    .iter()
                                    .map(|v| v.to_sql_literal())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            ),
                        )
                    })?;
                }
                catalog
                    .update_table(desc.id, &move |d| {
                        d.checks.push(CheckDescriptor {
                            name: name.clone(),
                            expr: text.clone(),
                        });
                        Ok(())
                    })
                    .await?;
                Ok(())
            }
            TableElement::Index(def) if def.unique => {
                let idx = new_index(desc, def)?;
                add_index(s, desc, idx).await
            }
            TableElement::ForeignKey(fk) => {
                let taken: BTreeSet<String> =
                    desc.foreign_keys.iter().map(|f| f.name.clone()).collect();
                let fkd = build_fk(s, desc, fk, &taken).await?;
                validate_fk_rows(s, desc, &fkd).await?;
                catalog
                    .update_table(desc.id, &move |d| {
                        d.foreign_keys.push(fkd.clone());
                        Ok(())
                    })
                    .await?;
                Ok(())
            }
            _ => Err(SqlError::unsupported("this constraint in ALTER TABLE")),
        },
        AlterTableOp::DropConstraint { name, if_exists } => {
            if desc.checks.iter().any(|c| &c.name == name) {
                let n = name.clone();
                catalog
                    .update_table(desc.id, &move |d| {
                        d.checks.retain(|c| c.name != n);
                        Ok(())
                    })
                    .await?;
                return Ok(());
            }
            if desc.foreign_keys.iter().any(|f| &f.name == name) {
                let n = name.clone();
                catalog
                    .update_table(desc.id, &move |d| {
                        d.foreign_keys.retain(|f| f.name != n);
                        Ok(())
                    })
                    .await?;
                return Ok(());
            }
            if desc.indexes.iter().any(|i| &i.name == name && i.unique) {
                return Box::pin(drop_indexes(
                    s,
                    &[crate::parser::IndexName {
                        table: Some(vec![
                            desc.database.clone(),
                            desc.schema.clone(),
                            desc.name.clone(),
                        ]),
                        index: vec![name.clone()],
                    }],
                    false,
                ))
                .await
                .map(|_| ());
            }
            if desc.primary_index.name == *name {
                return Err(SqlError::unsupported("dropping a primary key constraint"));
            }
            if *if_exists {
                return Ok(());
            }
            Err(SqlError::new(
                sqlstate::UNDEFINED_OBJECT,
                format!(
                    "constraint \"{name}\" of relation \"{}\" does not exist",
                    desc.name
                ),
            ))
        }
        AlterTableOp::ConfigureZone(options) => {
            privilege::require_admin(s, "configure zones").await?;
            let mut num_replicas = None;
            for (key, value) in options {
                if let Some(n) = check_zone_option(key, value)? {
                    num_replicas = Some(n);
                }
            }
            if options.is_empty() {
                // DISCARD: the table follows the default zone again.
                server.kv.set_table_num_replicas(desc.id, None).await?;
            } else if let Some(n) = num_replicas {
                server
                    .kv
                    .set_table_num_replicas(desc.id, Some(n))
                    .await
                    .map_err(|e| match e {
                        ldr_kv::KvError::InvalidRequest(m) => SqlError::unsupported(format!(
                            "num_replicas of table {}: {m}",
                            desc.name
                        )),
                        e => e.into(),
                    })?;
            }
            Ok(())
        }
    }
}

/// Zone configuration keys CockroachDB has; only `num_replicas` has an effect here.
const ZONE_KEYS: &[&str] = &[
    "num_replicas",
    "num_voters",
    "gc.ttlseconds",
    "range_min_bytes",
    "range_max_bytes",
    "constraints",
    "voter_constraints",
    "lease_preferences",
    "global_reads",
];

/// Checks one `CONFIGURE ZONE` option: a known key, and for `num_replicas` a count from 1 to
/// [`ldr_kv::NUM_REPLICAS_MAX`]; returns the replica count when it is `num_replicas`.
pub(crate) fn check_zone_option(key: &str, value: &str) -> Result<Option<u32>> {
    if !ZONE_KEYS.contains(&key) {
        return Err(SqlError::new(
            sqlstate::INVALID_PARAMETER_VALUE,
            format!("unsupported zone config parameter: \"{key}\""),
        ));
    }
    if key != "num_replicas" || value == "COPY FROM PARENT" {
        return Ok(None);
    }
    match value.parse::<u32>() {
        Ok(n) if (1..=ldr_kv::NUM_REPLICAS_MAX).contains(&n) => Ok(Some(n)),
        _ => Err(SqlError::new(
            sqlstate::INVALID_PARAMETER_VALUE,
            format!(
                "num_replicas must be a whole number from 1 to {}, got {value}",
                ldr_kv::NUM_REPLICAS_MAX
            ),
        )),
    }
}

/// `ALTER RANGE <name> CONFIGURE ZONE …`: `default` sets the replication factor of ranges
/// created from now on; CockroachDB's other named zones are accepted without effect.
pub(crate) async fn configure_range_zone(
    s: &mut Session,
    range: &str,
    options: &[(String, String)],
) -> Result<QueryResult> {
    privilege::require_admin(s, "configure zones").await?;
    if !["default", "meta", "liveness", "system", "timeseries"].contains(&range) {
        return Err(SqlError::new(
            sqlstate::UNDEFINED_OBJECT,
            format!("zone \"{range}\" does not exist"),
        ));
    }
    let mut num_replicas = None;
    for (key, value) in options {
        if let Some(n) = check_zone_option(key, value)? {
            num_replicas = Some(n);
        }
    }
    if range == "default" {
        let n = if options.is_empty() {
            Some(ldr_kv::DEFAULT_NUM_REPLICAS) // DISCARD: back to the built-in default
        } else {
            num_replicas
        };
        if let Some(n) = n {
            s.server.kv.set_default_num_replicas(n).await?;
        }
    }
    Ok(QueryResult::command("CONFIGURE ZONE"))
}

/// Gives existing rows a volatile default (`gen_random_uuid()`, `unique_rowid()`), one
/// evaluation per row.
async fn backfill_column(s: &mut Session, desc: &Arc<TableDescriptor>, column: &str) -> Result<()> {
    let i = desc
        .column_index(column)
        .ok_or_else(|| SqlError::undefined_column(column))?;
    let defaults = super::dml::bind_defaults(desc)?;
    let Some(default) = &defaults[i] else {
        return Ok(());
    };
    let ctx = s.eval_ctx(vec![]);
    let mut pending = all_rows(s, desc).await?;
    for _ in 0..50 {
        if pending.is_empty() {
            return Ok(());
        }
        let mut changes = Vec::new();
        for r in std::mem::take(&mut pending) {
            if !r.values[i].is_null() {
                continue;
            }
            let mut new = r.values.clone();
            new[i] = default
                .eval(&[], &ctx)?
                .coerce_for_column(&desc.columns[i].ty, column)?;
            changes.push(Change {
                table: desc.clone(),
                key: r.key.clone(),
                old: Some(r),
                new: Some(new),
            });
        }
        let applied = write::apply(&s.server, &changes).await?;
        for (ch, a) in changes.into_iter().zip(applied) {
            if let Applied::Conflict(_) = a {
                let ts = s.server.kv.clock().now();
                if let Some(r) = scan::get_row(&s.server.kv, desc, &ch.key, ts, None).await? {
                    pending.push(r);
                }
            }
        }
    }
    Err(SqlError::new(
        sqlstate::SERIALIZATION_FAILURE,
        "restart transaction: rows kept changing during the column backfill",
    ))
}

async fn validate_fk_rows(
    s: &mut Session,
    desc: &Arc<TableDescriptor>,
    fk: &ForeignKeyDescriptor,
) -> Result<()> {
    let mut probe = (**desc).clone();
    probe.foreign_keys = vec![fk.clone()];
    let ts = s.server.kv.clock().now();
    for r in all_rows(s, desc).await? {
        write::check_fk_parents(
            &s.server.catalog,
            &probe,
            &r.values,
            None,
            "insert",
            ts,
            None,
        )
        .await?;
    }
    Ok(())
}

/// `SHOW CREATE TABLE` text, as CockroachDB prints it.
pub(crate) async fn show_create(
    catalog: &crate::catalog::Catalog,
    desc: &TableDescriptor,
) -> Result<String> {
    let mut lines: Vec<String> = Vec::new();
    for c in &desc.columns {
        let mut l = format!("\t{} {}", quote_ident(&c.name), c.ty.sql_name());
        if c.hidden {
            l.push_str(" NOT VISIBLE");
        }
        l.push_str(if c.nullable { " NULL" } else { " NOT NULL" });
        if let Some(d) = &c.default_expr {
            l.push_str(&format!(" DEFAULT {d}"));
        }
        lines.push(l);
    }
    let cols = |idx: &IndexDescriptor| -> String {
        idx.columns
            .iter()
            .map(|ic| {
                let name = desc
                    .column_by_id(ic.column_id)
                    .map(|c| quote_ident(&c.name))
                    .unwrap_or_default();
                format!("{name} {}", if ic.descending { "DESC" } else { "ASC" })
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    lines.push(format!(
        "\tCONSTRAINT {} PRIMARY KEY ({})",
        quote_ident(&desc.primary_index.name),
        cols(&desc.primary_index)
    ));
    for idx in desc.indexes.iter().filter(|i| !i.write_only) {
        let mut l = format!(
            "\t{}INDEX {} ({})",
            if idx.unique { "UNIQUE " } else { "" },
            quote_ident(&idx.name),
            cols(idx)
        );
        if !idx.storing.is_empty() {
            let st: Vec<String> = idx
                .storing
                .iter()
                .filter_map(|id| desc.column_by_id(*id).map(|c| quote_ident(&c.name)))
                .collect();
            l.push_str(&format!(" STORING ({})", st.join(", ")));
        }
        lines.push(l);
    }
    for fk in &desc.foreign_keys {
        let parent = catalog.table_by_id(fk.ref_table_id).await?;
        let (pname, pcols) = match &parent {
            Some(p) => (
                format!("{}.{}", p.schema, quote_ident(&p.name)),
                fk.ref_columns
                    .iter()
                    .filter_map(|id| p.column_by_id(*id).map(|c| quote_ident(&c.name)))
                    .collect::<Vec<_>>(),
            ),
            None => (format!("[{}]", fk.ref_table_id), vec![]),
        };
        let own: Vec<String> = fk
            .columns
            .iter()
            .filter_map(|id| desc.column_by_id(*id).map(|c| quote_ident(&c.name)))
            .collect();
        lines.push(format!(
            "\tCONSTRAINT {} FOREIGN KEY ({}) REFERENCES {}({})",
            quote_ident(&fk.name),
            own.join(", "),
            pname,
            pcols.join(", ")
        ));
    }
    for c in &desc.checks {
        lines.push(format!(
            "\tCONSTRAINT {} CHECK ({})",
            quote_ident(&c.name),
            c.expr
        ));
    }
    let mut out = format!(
        "CREATE TABLE {}.{} (\n{}\n)",
        desc.schema,
        quote_ident(&desc.name),
        lines.join(",\n")
    );
    if !desc.storage_params.is_empty() {
        let params: Vec<String> = desc
            .storage_params
            .iter()
            .map(|(k, v)| {
                if v == "true" || v == "false" || v.parse::<i64>().is_ok() {
                    format!("{k} = {v}")
                } else {
                    format!("{k} = {}", crate::datum::quote_literal(v))
                }
            })
            .collect();
        out.push_str(&format!(" WITH ({})", params.join(", ")));
    }
    Ok(out)
}

/// Quotes an identifier when it needs it.
pub(crate) fn quote_ident(name: &str) -> String {
    let plain = !name.is_empty()
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !matches!(
            name,
            "select"
                | "from"
                | "where"
                | "table"
                | "index"
                | "order"
                | "group"
                | "user"
                | "default"
                | "primary"
                | "key"
                | "check"
                | "unique"
                | "references"
                | "constraint"
        );
    if plain {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

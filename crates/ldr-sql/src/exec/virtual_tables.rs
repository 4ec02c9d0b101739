//! The `information_schema` and `pg_catalog` tables that drivers, ORMs and people query to
//! find tables and columns: `information_schema.schemata`, `.tables`, `.columns` and
//! `pg_catalog.pg_tables`, over the current (or named) database, with PostgreSQL's columns
//! (plus CockroachDB's `crdb_sql_type` and `is_hidden`). A user sees the tables they own or
//! hold a privilege on; admins see all.

use super::result::{col, s as text};
use super::{ColumnInfo, QueryResult, Session, privilege};
use crate::catalog::TableDescriptor;
use crate::datum::Datum;
use crate::error::Result;
use crate::parser::VirtualTable;
use crate::types::SqlType;

fn yes_no(b: bool) -> Datum {
    text(if b { "YES" } else { "NO" })
}

fn int(v: Option<u32>) -> Datum {
    v.map(|v| Datum::Int(i64::from(v))).unwrap_or(Datum::Null)
}

/// The schemas every database has besides the ones users create.
const SYSTEM_SCHEMAS: [&str; 4] = [
    "crdb_internal",
    "information_schema",
    "pg_catalog",
    "pg_extension",
];

pub(crate) fn columns(table: VirtualTable) -> Vec<ColumnInfo> {
    use SqlType::{Bool, Int8, String};
    match table {
        VirtualTable::InformationSchemaSchemata => vec![
            col("catalog_name", String),
            col("schema_name", String),
            col("default_character_set_name", String),
            col("sql_path", String),
            col("crdb_is_user_defined", String),
        ],
        VirtualTable::InformationSchemaTables => vec![
            col("table_catalog", String),
            col("table_schema", String),
            col("table_name", String),
            col("table_type", String),
            col("is_insertable_into", String),
            col("version", Int8),
        ],
        VirtualTable::InformationSchemaColumns => vec![
            col("table_catalog", String),
            col("table_schema", String),
            col("table_name", String),
            col("column_name", String),
            col("ordinal_position", Int8),
            col("column_default", String),
            col("is_nullable", String),
            col("data_type", String),
            col("character_maximum_length", Int8),
            col("numeric_precision", Int8),
            col("numeric_scale", Int8),
            col("udt_name", String),
            col("crdb_sql_type", String),
            col("is_hidden", String),
        ],
        VirtualTable::CrdbInternalNodeTransactions => super::activity::table_columns(),
        VirtualTable::PgTables => vec![
            col("schemaname", String),
            col("tablename", String),
            col("tableowner", String),
            col("tablespace", String),
            col("hasindexes", Bool),
            col("hasrules", Bool),
            col("hastriggers", Bool),
            col("rowsecurity", Bool),
        ],
    }
}

pub(crate) async fn rows(
    sess: &Session,
    table: VirtualTable,
    database: Option<&str>,
) -> Result<QueryResult> {
    if table == VirtualTable::CrdbInternalNodeTransactions {
        return Ok(QueryResult::rows(
            super::activity::table_columns(),
            super::activity::table_rows(
                i64::from(sess.server.kv.node_id()),
                &sess.visible_transactions(),
            ),
        ));
    }
    let catalog = &sess.server.catalog;
    let db = catalog
        .require_database(database.unwrap_or(sess.database()))
        .await?;
    let mut rows = Vec::new();
    if table == VirtualTable::InformationSchemaSchemata {
        let system = SYSTEM_SCHEMAS.iter().map(|n| (n.to_string(), false));
        let user = std::iter::once("public".to_string())
            .chain(db.schemas.iter().cloned())
            .map(|n| (n, true));
        for (schema, user_defined) in system.chain(user) {
            rows.push(vec![
                text(db.name.clone()),
                text(schema),
                Datum::Null,
                Datum::Null,
                yes_no(user_defined),
            ]);
        }
        return Ok(QueryResult::rows(columns(table), rows));
    }
    let admin = privilege::is_admin(catalog, sess.user()).await?;
    let visible = |t: &TableDescriptor| {
        admin || t.owner == sess.user() || t.privileges.contains_key(sess.user())
    };
    for t in catalog.tables_in(db.id).await? {
        if !visible(&t) {
            continue;
        }
        match table {
            VirtualTable::InformationSchemaTables => rows.push(vec![
                text(db.name.clone()),
                text(t.schema.clone()),
                text(t.name.clone()),
                text("BASE TABLE"),
                yes_no(true),
                Datum::Int(t.version as i64),
            ]),
            VirtualTable::InformationSchemaColumns => {
                for (i, c) in t.columns.iter().enumerate() {
                    let (precision, scale) = numeric_shape(&c.ty);
                    let (data_type, udt_name) = pg_names(&c.ty);
                    rows.push(vec![
                        text(db.name.clone()),
                        text(t.schema.clone()),
                        text(t.name.clone()),
                        text(c.name.clone()),
                        Datum::Int(i as i64 + 1),
                        c.default_expr.clone().map(text).unwrap_or(Datum::Null),
                        yes_no(c.nullable),
                        text(data_type),
                        int(character_length(&c.ty)),
                        int(precision),
                        int(scale),
                        text(udt_name),
                        text(c.ty.sql_name()),
                        yes_no(c.hidden),
                    ]);
                }
            }
            VirtualTable::PgTables => rows.push(vec![
                text(t.schema.clone()),
                text(t.name.clone()),
                text(t.owner.clone()),
                Datum::Null,
                Datum::Bool(true),
                Datum::Bool(false),
                Datum::Bool(false),
                Datum::Bool(false),
            ]),
            VirtualTable::InformationSchemaSchemata
            | VirtualTable::CrdbInternalNodeTransactions => unreachable!("answered above"),
        }
    }
    Ok(QueryResult::rows(columns(table), rows))
}

/// (`data_type`, `udt_name`) of `information_schema.columns`: PostgreSQL's SQL-standard type
/// name and its `pg_type` name.
fn pg_names(ty: &SqlType) -> (&'static str, &'static str) {
    match ty {
        SqlType::Bool => ("boolean", "bool"),
        SqlType::Int2 => ("smallint", "int2"),
        SqlType::Int4 => ("integer", "int4"),
        SqlType::Int8 => ("bigint", "int8"),
        SqlType::Float4 => ("real", "float4"),
        SqlType::Float8 => ("double precision", "float8"),
        SqlType::Decimal { .. } => ("numeric", "numeric"),
        SqlType::String => ("text", "text"),
        SqlType::Varchar { .. } => ("character varying", "varchar"),
        SqlType::Char { .. } => ("character", "bpchar"),
        SqlType::Bytes => ("bytea", "bytea"),
        SqlType::Date => ("date", "date"),
        SqlType::Timestamp => ("timestamp without time zone", "timestamp"),
        SqlType::TimestampTz => ("timestamp with time zone", "timestamptz"),
        SqlType::Interval => ("interval", "interval"),
        SqlType::Uuid => ("uuid", "uuid"),
        SqlType::Jsonb => ("jsonb", "jsonb"),
        SqlType::Unknown => ("unknown", "unknown"),
    }
}

fn character_length(ty: &SqlType) -> Option<u32> {
    match ty {
        SqlType::Varchar { width } => *width,
        SqlType::Char { width } => Some(*width),
        _ => None,
    }
}

/// (numeric_precision, numeric_scale) as PostgreSQL reports them (binary precision for
/// integers and floats).
fn numeric_shape(ty: &SqlType) -> (Option<u32>, Option<u32>) {
    match ty {
        SqlType::Int2 => (Some(16), Some(0)),
        SqlType::Int4 => (Some(32), Some(0)),
        SqlType::Int8 => (Some(64), Some(0)),
        SqlType::Float4 => (Some(24), None),
        SqlType::Float8 => (Some(53), None),
        SqlType::Decimal { precision, scale } => (*precision, *scale),
        _ => (None, None),
    }
}

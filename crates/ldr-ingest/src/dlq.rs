//! The dead-letter queue tables: one per destination table,
//! `<db>.crdb_replication.dlq_<table_id>_<schema>_<table>`, with CockroachDB's columns
//! (seeds/001). Created (idempotently) when a job is created and whenever it starts; rows are
//! written through the node's internal SQL executor, so the tables are ordinary tables users
//! can `SELECT` from.

use std::sync::Arc;

use async_trait::async_trait;
use ldr_catalog::catalog::{Catalog, TableDescriptor};
use ldr_catalog::{Datum, SqlError};

use crate::dlq_policy::{DLQ_SCHEMA, dlq_table_name};
use crate::error::{IngestError, Result};

/// Runs SQL as the node (internal executor), for DLQ tables and rows.
#[async_trait]
pub trait InternalSql: Send + Sync {
    /// Executes one statement in `database` with `$n` parameters.
    async fn execute(
        &self,
        database: &str,
        sql: &str,
        params: Vec<Datum>,
    ) -> std::result::Result<u64, SqlError>;
}

/// The DLQ table name of a destination table, fully qualified and quoted.
pub fn qualified_dlq_table(table: &TableDescriptor) -> String {
    format!(
        "{}.{}.{}",
        quote(&table.database),
        DLQ_SCHEMA,
        quote(&dlq_table_name(table.id, &table.schema, &table.name))
    )
}

fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// The DLQ table's definition (CockroachDB's columns; the primary key is not hash-sharded).
pub fn create_dlq_table_sql(table: &TableDescriptor) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {} (
            id INT8 NOT NULL DEFAULT unique_rowid(),
            ingestion_job_id INT8 NOT NULL,
            table_id INT8 NOT NULL,
            dlq_timestamp TIMESTAMPTZ NOT NULL DEFAULT now(),
            dlq_reason STRING NOT NULL,
            mutation_type STRING NULL,
            key_value_bytes BYTES NOT VISIBLE NOT NULL,
            incoming_row JSONB NULL,
            PRIMARY KEY (ingestion_job_id, dlq_timestamp, id)
        )",
        qualified_dlq_table(table)
    )
}

/// Creates DLQ tables.
pub struct DlqTables {
    catalog: Arc<Catalog>,
    sql: Arc<dyn InternalSql>,
}

impl DlqTables {
    pub fn new(catalog: Arc<Catalog>, sql: Arc<dyn InternalSql>) -> DlqTables {
        DlqTables { catalog, sql }
    }

    /// Creates the `crdb_replication` schema and the DLQ table of every table, if missing.
    pub async fn ensure(&self, tables: &[Arc<TableDescriptor>]) -> Result<()> {
        for t in tables {
            let has_schema = self
                .catalog
                .database(&t.database)
                .await
                .map_err(IngestError::from_sql)?
                .is_some_and(|d| d.has_schema(DLQ_SCHEMA));
            if !has_schema {
                self.sql
                    .execute(
                        &t.database,
                        &format!(
                            "CREATE SCHEMA IF NOT EXISTS {}.{DLQ_SCHEMA}",
                            quote(&t.database)
                        ),
                        vec![],
                    )
                    .await
                    .map_err(IngestError::from_sql)?;
            }
            self.sql
                .execute(&t.database, &create_dlq_table_sql(t), vec![])
                .await
                .map_err(IngestError::from_sql)?;
        }
        Ok(())
    }
}

/// One row for a DLQ table.
#[derive(Debug, Clone)]
pub struct DlqRow {
    pub job_id: i64,
    pub table_id: u32,
    pub reason: String,
    pub mutation_type: &'static str,
    pub key_value_bytes: Vec<u8>,
    pub incoming_row: Option<serde_json::Value>,
}

/// Inserts `row` into `table`'s DLQ.
pub async fn insert_dlq_row(
    sql: &dyn InternalSql,
    table: &TableDescriptor,
    row: DlqRow,
) -> Result<()> {
    let statement = format!(
        "INSERT INTO {} (ingestion_job_id, table_id, dlq_reason, mutation_type, key_value_bytes, incoming_row) VALUES ($1, $2, $3, $4, $5, $6)",
        qualified_dlq_table(table)
    );
    let params = vec![
        Datum::Int(row.job_id),
        Datum::Int(i64::from(row.table_id)),
        Datum::String(row.reason),
        Datum::String(row.mutation_type.to_string()),
        Datum::Bytes(row.key_value_bytes),
        row.incoming_row.map(Datum::Json).unwrap_or(Datum::Null),
    ];
    sql.execute(&table.database, &statement, params)
        .await
        .map_err(IngestError::from_sql)?;
    Ok(())
}

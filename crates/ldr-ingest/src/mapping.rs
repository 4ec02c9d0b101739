//! What both appliers (immediate and validated) share: the replicated tables of a processor
//! (the source descriptor to decode a source KV, the destination descriptor to write), the
//! decoding of a source event into destination rows, and dead-lettering.

use std::collections::HashMap;
use std::sync::Arc;

use ldr_catalog::catalog::{Catalog, IndexDescriptor, TableDescriptor};
use ldr_catalog::{Datum, SqlError, rowcodec, sqlstate};
use ldr_proto::pb;
use ldr_types::{TableId, keys};
use prost::Message;

use crate::applier::{ApplyError, SourceEvent};
use crate::dlq::{DlqRow, InternalSql, insert_dlq_row};
use crate::dlq_policy::mutation_type;
use crate::error::{IngestError, Result};

/// One replicated table: how to read the source and write the destination.
pub(crate) struct TableMapping {
    pub source: TableDescriptor,
    pub destination: Arc<TableDescriptor>,
    pub has_secondary: bool,
    pub unique_indexes: Vec<IndexDescriptor>,
}

/// The replicated tables of one processor, by source table id.
pub(crate) struct Tables(HashMap<TableId, TableMapping>);

impl Tables {
    /// Decodes the source descriptors of `spec` (they come from the source cluster: validated
    /// before use) and looks up the destinations.
    pub async fn load(catalog: &Catalog, spec: &pb::ProcessorSpec) -> Result<Tables> {
        let mut tables = HashMap::new();
        for t in &spec.tables {
            let source = TableDescriptor::decode(&t.source_descriptor).map_err(|e| {
                IngestError::Protocol(format!("invalid source table descriptor: {e}"))
            })?;
            let destination = catalog
                .table_by_id(t.destination_table_id)
                .await
                .map_err(|e| IngestError::Retryable(e.to_string()))?
                .ok_or_else(|| {
                    IngestError::Permanent(format!(
                        "destination table {} no longer exists",
                        t.destination_table_id
                    ))
                })?;
            let has_secondary = destination.indexes.iter().any(|i| !i.unique);
            let unique_indexes = destination
                .indexes
                .iter()
                .filter(|i| i.unique)
                .cloned()
                .collect();
            tables.insert(
                t.source_table_id,
                TableMapping {
                    source,
                    destination,
                    has_secondary,
                    unique_indexes,
                },
            );
        }
        Ok(Tables(tables))
    }

    /// The table a source key belongs to.
    pub fn mapping(&self, key: &[u8]) -> std::result::Result<&TableMapping, ApplyError> {
        let parts = keys::decode_table_key(key).ok_or_else(|| {
            ApplyError::new(
                "replicated key is not a table key",
                Some(sqlstate::DATATYPE_MISMATCH),
            )
        })?;
        self.0.get(&parts.table_id).ok_or_else(|| {
            ApplyError::new(
                format!("no destination for source table {}", parts.table_id),
                Some(sqlstate::UNDEFINED_TABLE),
            )
        })
    }

    /// Writes `event` into its table's dead-letter queue with `reason`.
    pub async fn dead_letter(
        &self,
        sql: &dyn InternalSql,
        job_id: i64,
        event: &SourceEvent,
        reason: &str,
    ) -> std::result::Result<(), ApplyError> {
        let table = self.mapping(&event.key)?;
        let incoming_row = event
            .value
            .as_deref()
            .and_then(|v| table.to_destination(&event.key, v).ok())
            .map(|row| rowcodec::row_to_json(&table.destination, &row));
        let key_value_bytes = pb::KvEvent {
            key: event.key.clone(),
            ts: Some(event.ts.into()),
            value: event.value.clone(),
            prev_value: event.prev_value.clone(),
        }
        .encode_to_vec();
        let row = DlqRow {
            job_id,
            table_id: table.destination.id,
            reason: reason.to_string(),
            mutation_type: mutation_type(event.is_delete()),
            key_value_bytes,
            incoming_row,
        };
        insert_dlq_row(sql, &table.destination, row)
            .await
            .map_err(|e| ApplyError::new(e.to_string(), None))
    }
}

impl TableMapping {
    /// Source row bytes → destination row.
    pub fn to_destination(
        &self,
        key: &[u8],
        value: &[u8],
    ) -> std::result::Result<Vec<Datum>, ApplyError> {
        let row = rowcodec::decode_row(&self.source, key, value).map_err(decode_error)?;
        rowcodec::remap_row(&self.destination, &rowcodec::named_row(&self.source, &row))
            .map_err(decode_error)
    }

    /// The destination's primary key columns (in primary key order) for a source key.
    pub fn destination_pk(&self, key: &[u8]) -> std::result::Result<Vec<Datum>, ApplyError> {
        let src_pk = rowcodec::decode_pk(&self.source, key).map_err(decode_error)?;
        let src_names: Vec<String> = self
            .source
            .pk_positions()
            .iter()
            .map(|i| self.source.columns[*i].name.clone())
            .collect();
        let mut dst = Vec::with_capacity(src_pk.len());
        for i in self.destination.pk_positions() {
            let column = &self.destination.columns[i];
            let position = src_names.iter().position(|n| *n == column.name).ok_or_else(|| {
                ApplyError::new(
                    format!("destination primary key column \"{}\" is not in the source primary key", column.name),
                    Some(sqlstate::DATATYPE_MISMATCH),
                )
            })?;
            dst.push(
                src_pk[position]
                    .clone()
                    .coerce_for_column(&column.ty, &column.name)
                    .map_err(decode_error)?,
            );
        }
        Ok(dst)
    }
}

/// A decoding failure as a row failure (dead-lettered after its retries).
pub(crate) fn decode_error(e: SqlError) -> ApplyError {
    match e {
        SqlError::Pg(p) => ApplyError::new(p.message, Some(p.code)),
        other => ApplyError::new(other.to_string(), Some(sqlstate::DATATYPE_MISMATCH)),
    }
}

pub(crate) fn kv_error(e: ldr_kv::KvError) -> ApplyError {
    // No SQLSTATE: a KV failure (node down, network) must fail the flow, never go to the DLQ.
    ApplyError {
        retryable: !crate::error::kv_is_broken(&e),
        ..ApplyError::new(e.to_string(), None)
    }
}

//! The validated-mode applier: every replicated row goes through the destination's SQL write
//! path ([`ValidatedWriter`], which the server wires to `ldr-sql`'s executor), so NOT NULL,
//! CHECK, FOREIGN KEY (both directions) and UNIQUE constraints are enforced as for a SQL write,
//! still under last-write-wins. A row of a table without unique indexes is checked against the
//! current row and then written with one LWW conditional write; a row with unique index
//! entries, or one that failed a check, is one KV transaction in which the LWW write decides
//! first (a losing row is an LWW loss, not checked). A row that fails a constraint comes back
//! with its SQLSTATE (23502, 23503, 23505, 23514), so the processor keeps it in the retry queue
//! and dead-letters it once it is older than `retry_queue_duration`; a child row whose parent
//! arrives later applies on retry. Written rows carry the source's origin id and timestamp, as
//! in immediate mode, so they are not streamed back.

use std::sync::Arc;

use async_trait::async_trait;
use futures::StreamExt;
use ldr_catalog::SqlError;
use ldr_catalog::validated::{ValidatedOutcome, ValidatedWrite, ValidatedWriter};
use ldr_kv::{KvClient, ValueHeader};
use ldr_proto::pb;

use crate::applier::{Applier, ApplyError, EventOutcome, SourceEvent};
use crate::dlq::InternalSql;
use crate::error::Result;
use crate::flow::ApplierFactory;
use crate::immediate::ImmediateApplierFactory;
use crate::mapping::{Tables, kv_error};
use crate::metrics::Metrics;

/// Rows one validated applier writes at once (each is its own transaction).
const CONCURRENCY: usize = 16;

/// Builds the applier of a processor's mode (`ProcessorSpec.mode`).
pub struct ModeApplierFactory {
    pub immediate: ImmediateApplierFactory,
    /// The SQL write path (validated mode).
    pub writer: Arc<dyn ValidatedWriter>,
}

#[async_trait]
impl ApplierFactory for ModeApplierFactory {
    async fn applier(&self, spec: &pb::ProcessorSpec) -> Result<Arc<dyn Applier>> {
        if spec.mode != "validated" {
            return self.immediate.applier(spec).await;
        }
        Ok(Arc::new(ValidatedApplier {
            kv: self.immediate.kv.clone(),
            writer: self.writer.clone(),
            sql: self.immediate.sql.clone(),
            metrics: self.immediate.metrics.clone(),
            job_id: spec.job_id,
            origin_id: spec.source_origin_id.max(1),
            tables: Tables::load(&self.immediate.catalog, spec).await?,
        }))
    }
}

/// Applies replicated rows through the SQL write path.
pub struct ValidatedApplier {
    kv: KvClient,
    writer: Arc<dyn ValidatedWriter>,
    sql: Arc<dyn InternalSql>,
    metrics: Arc<Metrics>,
    job_id: i64,
    origin_id: u32,
    tables: Tables,
}

impl ValidatedApplier {
    fn prepare(&self, event: &SourceEvent) -> std::result::Result<ValidatedWrite, ApplyError> {
        let table = self.tables.mapping(&event.key)?;
        let new = event
            .value
            .as_deref()
            .map(|v| table.to_destination(&event.key, v))
            .transpose()?;
        let pk = match &new {
            Some(row) => table
                .destination
                .pk_positions()
                .into_iter()
                .map(|i| row[i].clone())
                .collect(),
            None => table.destination_pk(&event.key)?,
        };
        Ok(ValidatedWrite {
            table: table.destination.clone(),
            pk,
            new,
            header: ValueHeader {
                origin_id: self.origin_id,
                origin_ts: event.ts,
                omit_in_rangefeeds: false,
            },
            local_origin_id: self.kv.origin_id(),
        })
    }

    async fn apply_one(&self, event: &SourceEvent) -> EventOutcome {
        let write = match self.prepare(event) {
            Ok(w) => w,
            Err(e) => return EventOutcome::Failed(e),
        };
        match self.writer.apply_validated(write).await {
            Ok(ValidatedOutcome::Applied(_)) => EventOutcome::Applied,
            Ok(ValidatedOutcome::LwwLost(_)) => EventOutcome::LwwLost,
            Err(SqlError::Pg(p)) => {
                if p.code.starts_with("23") {
                    self.metrics.validated_constraint_failures.inc(1);
                }
                EventOutcome::Failed(ApplyError::new(p.message, Some(p.code)))
            }
            Err(SqlError::Kv(e)) => EventOutcome::Failed(kv_error(e)),
            // Internal failures carry their SQLSTATE (never dead-lettered: they fail the flow).
            Err(e) => EventOutcome::Failed(ApplyError::new(e.to_string(), Some(e.code()))),
        }
    }
}

#[async_trait]
impl Applier for ValidatedApplier {
    async fn apply(&self, events: &[SourceEvent]) -> Vec<EventOutcome> {
        futures::stream::iter(0..events.len())
            .map(|i| self.apply_one(&events[i]))
            .buffered(CONCURRENCY)
            .collect()
            .await
    }

    async fn dead_letter(
        &self,
        event: &SourceEvent,
        reason: &str,
    ) -> std::result::Result<(), ApplyError> {
        self.tables
            .dead_letter(self.sql.as_ref(), self.job_id, event, reason)
            .await
    }
}

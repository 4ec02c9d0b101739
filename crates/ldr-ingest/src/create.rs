//! `CREATE LOGICAL REPLICATION STREAM`, the replication half: the SQL layer has already checked
//! the statement (transaction, options, the external connection, destination tables,
//! privileges, foreign keys); here we start the stream on the source (history retention job,
//! protected timestamp, source schema locks), check each table pair's schema compatibility,
//! create the DLQ tables, lock the destination tables and create the `LOGICAL REPLICATION`
//! job. A failure after the source stream started completes it unsuccessfully, so the source
//! releases what it took.

use std::sync::Arc;

use ldr_catalog::catalog::{Catalog, TableDescriptor};
use ldr_catalog::{SqlError, sqlstate};
use ldr_jobs::{JobType, Registry};
use ldr_kv::KvClient;
use ldr_proto::pb;
use ldr_stream::{SourceUri, StreamClient, StreamError};
use ldr_types::{JobId, Timestamp};
use tracing::info;

use crate::dlq::{DlqTables, InternalSql};
use crate::job::{Discard, LdrPayload, LdrProgress, Mode, TablePair};

/// What creating a stream needs on the destination node.
pub struct CreateContext {
    pub kv: KvClient,
    pub registry: Arc<Registry>,
    pub catalog: Arc<Catalog>,
    pub sql: Arc<dyn InternalSql>,
}

/// What the statement asks of the replication layer once the SQL layer has checked it (the
/// server builds it from `ldr-sql`'s request, so this crate needs no parser types).
#[derive(Debug, Clone)]
pub struct StreamRequest {
    /// The statement's text: the job's command and the source's consumer description.
    pub command: String,
    /// The source tables as written, each as its name parts (`db`, `schema`, `t`); resolved on
    /// the source.
    pub source_tables: Vec<Vec<String>>,
    /// The external connection's name (`source` in `external://source`).
    pub external_connection: String,
    /// The URI the external connection holds (the source cluster).
    pub source_uri: String,
    /// The destination tables, in the order of `source_tables`.
    pub destinations: Vec<Arc<TableDescriptor>>,
    /// The session's user: the job's owner.
    pub user: String,
    /// `MODE = 'validated'`.
    pub validated: bool,
    /// `CURSOR = '…'`: start here without an initial scan.
    pub cursor: Option<Timestamp>,
    /// `DEFAULT FUNCTION`: `lww` or `dlq`.
    pub default_function: String,
    /// `DISCARD`: `ttl-deletes` or `all-deletes`.
    pub discard: Option<String>,
    /// `LABEL`.
    pub label: Option<String>,
    /// `SKIP SCHEMA CHECK`.
    pub skip_schema_check: bool,
}

/// Maps a source-side stream error to the user's statement error.
fn source_error(e: StreamError) -> SqlError {
    let code = match &e {
        StreamError::RangefeedDisabled | StreamError::FailedPrecondition(_) => {
            sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE
        }
        StreamError::PermissionDenied(_) | StreamError::Unauthenticated(_) => {
            sqlstate::INSUFFICIENT_PRIVILEGE
        }
        StreamError::NotFound(_) => sqlstate::UNDEFINED_TABLE,
        StreamError::InvalidArgument(_) => sqlstate::INVALID_PARAMETER_VALUE,
        _ => "08006",
    };
    SqlError::new(code, e.to_string())
}

/// `db.schema.t`, quoting parts that contain dots or quotes so the source can split it back.
fn quoted_name(name: &[String]) -> String {
    name.iter()
        .map(|p| {
            if p.contains(['.', '"']) {
                format!("\"{}\"", p.replace('"', "\"\""))
            } else {
                p.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// Runs the replication half of the statement; returns the new job's id.
pub async fn create_stream(ctx: &CreateContext, request: StreamRequest) -> Result<JobId, SqlError> {
    let discard = match request.discard.as_deref() {
        None => Discard::Nothing,
        Some("ttl-deletes") => Discard::TtlDeletes,
        Some("all-deletes") => Discard::AllDeletes,
        Some(other) => {
            return Err(SqlError::new(
                sqlstate::INVALID_PARAMETER_VALUE,
                format!("unknown discard option \"{other}\""),
            ));
        }
    };
    let uri = SourceUri::parse(&request.source_uri)
        .map_err(|e| SqlError::new(sqlstate::INVALID_PARAMETER_VALUE, e.to_string()))?;

    // Start the stream on the source: history retention job + protected timestamp.
    let mut client = StreamClient::connect_uri(&uri)
        .await
        .map_err(source_error)?;
    let source_names: Vec<String> = request
        .source_tables
        .iter()
        .map(|name| quoted_name(name))
        .collect();
    let started = client
        .start_stream(pb::StartStreamRequest {
            table_names: source_names.clone(),
            start_ts: request.cursor.map(Into::into),
            consumer_description: request.command.clone(),
        })
        .await
        .map_err(source_error)?;
    let stream_id = started.stream_id;
    let result = finish(ctx, &request, discard, &started, &source_names).await;
    if result.is_err() {
        let _ = client.complete_stream(stream_id, false).await;
    }
    result
}

async fn finish(
    ctx: &CreateContext,
    request: &StreamRequest,
    discard: Discard,
    started: &pb::StartStreamResponse,
    source_names: &[String],
) -> Result<JobId, SqlError> {
    let destinations = &request.destinations;
    let mut pairs = Vec::with_capacity(destinations.len());
    for ((source_name, descriptor), destination) in source_names
        .iter()
        .zip(&started.table_descriptors)
        .zip(destinations)
    {
        let source = TableDescriptor::decode(descriptor).map_err(|e| {
            SqlError::new(
                sqlstate::PROTOCOL_VIOLATION,
                format!("invalid source descriptor for {source_name}: {e}"),
            )
        })?;
        ldr_catalog::validation::check_compatibility(
            &source,
            destination,
            request.skip_schema_check,
        )?;
        pairs.push(TablePair {
            source_table_id: source.id,
            source_name: source.qualified_name(),
            destination_table_id: destination.id,
            destination_name: destination.qualified_name(),
        });
    }
    let start_ts = ldr_proto::ts_or_zero(started.start_ts);
    let payload = LdrPayload {
        stream_id: started.stream_id,
        source_cluster_id: started.source_cluster_id.clone(),
        source_origin_id: started.source_origin_id,
        source_connection: format!("external://{}", request.external_connection),
        source_uri: request.source_uri.clone(),
        tables: destinations.iter().map(|d| d.qualified_name()).collect(),
        pairs,
        replication_start_time: start_ts.to_decimal_string(),
        initial_scan: request.cursor.is_none(),
        mode: if request.validated {
            Mode::Validated
        } else {
            Mode::Immediate
        },
        discard,
        label: request.label.clone().filter(|l| !l.is_empty()),
        skip_schema_check: request.skip_schema_check,
        conflict_resolution_type: request.default_function.to_ascii_uppercase(),
        command: request.command.clone(),
    };
    let progress = LdrProgress {
        replicated_time: request.cursor.map(|c| c.to_decimal_string()),
        ..Default::default()
    };
    let description = format!(
        "LOGICAL REPLICATION STREAM into {} from external://{}",
        payload.tables.join(", "),
        request.external_connection
    );
    let json = |v: serde_json::Result<serde_json::Value>| v.map_err(SqlError::internal);
    // DLQ tables first (idempotent), so a job never runs without them.
    DlqTables::new(ctx.catalog.clone(), ctx.sql.clone())
        .ensure(destinations)
        .await
        .map_err(SqlError::internal)?;
    let job_id = ctx
        .registry
        .create(
            JobType::LogicalReplication,
            description,
            request.user.clone(),
            json(serde_json::to_value(&payload))?,
            json(serde_json::to_value(&progress))?,
        )
        .await
        .map_err(SqlError::internal)?;
    for d in destinations {
        if let Err(e) = ldr_catalog::validation::lock(&ctx.catalog, d.id, job_id).await {
            let _ = ctx.registry.cancel(job_id).await;
            return Err(e);
        }
    }
    info!(job_id, stream_id = started.stream_id, tables = ?payload.tables, "created logical replication job");
    Ok(job_id)
}

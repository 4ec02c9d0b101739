//! `CREATE LOGICAL REPLICATION STREAM`: validates the statement, resolves the destination
//! tables and the external connection, checks privileges, starts the stream on the source,
//! checks schema compatibility, creates the DLQ tables, locks the destination tables and
//! creates the `LOGICAL REPLICATION` job. Errors carry CockroachDB's texts.

use std::sync::Arc;

use ldr_jobs::{JobType, Registry};
use ldr_kv::KvClient;
use ldr_proto::pb;
use ldr_sql::catalog::{Catalog, TableDescriptor};
use ldr_sql::parser::ast::{CreateLogicalReplicationStream, ObjectName};
use ldr_sql::sqlstate;
use ldr_stream::{SourceUri, StreamClient, StreamError};
use ldr_types::{JobId, Timestamp};
use tracing::info;

use crate::dlq::{DlqTables, InternalSql};
use crate::error::{IngestError, Result};
use crate::job::{Discard, LdrPayload, LdrProgress, Mode, TablePair};

/// What creating a stream needs on the destination node.
pub struct CreateContext {
    pub kv: KvClient,
    pub registry: Arc<Registry>,
    pub catalog: Arc<Catalog>,
    pub sql: Arc<dyn InternalSql>,
}

/// Parsed and validated `WITH` options.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamOptions {
    pub mode: Mode,
    pub cursor: Option<Timestamp>,
    pub discard: Discard,
    pub label: Option<String>,
    pub skip_schema_check: bool,
    pub conflict_resolution_type: &'static str,
}

fn sql_err(code: &'static str, message: impl Into<String>) -> IngestError {
    IngestError::sql(code, message)
}

/// Validates the `WITH` options (pure).
pub fn parse_options(stmt: &CreateLogicalReplicationStream) -> Result<StreamOptions> {
    let o = &stmt.options;
    let mode = match o.mode.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None | Some("immediate") => Mode::Immediate,
        Some("validated") => {
            return Err(sql_err(
                sqlstate::FEATURE_NOT_SUPPORTED,
                "MODE = 'validated' is not supported yet: use MODE = 'immediate'",
            ));
        }
        Some(other) => {
            return Err(sql_err(
                sqlstate::INVALID_PARAMETER_VALUE,
                format!("unknown mode \"{other}\": expected 'immediate' or 'validated'"),
            ));
        }
    };
    if !o.functions.is_empty() {
        return Err(sql_err(
            sqlstate::FEATURE_NOT_SUPPORTED,
            "MODE = 'immediate' cannot be used with user-defined functions",
        ));
    }
    let conflict_resolution_type = match o
        .default_function
        .as_deref()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None | Some("lww") => "LWW",
        Some("dlq") => "DLQ",
        Some(other) => {
            return Err(sql_err(
                sqlstate::FEATURE_NOT_SUPPORTED,
                format!(
                    "user-defined conflict resolution functions are not supported: \"{other}\""
                ),
            ));
        }
    };
    let discard = match o.discard.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None => Discard::Nothing,
        Some("ttl-deletes") => Discard::TtlDeletes,
        Some("all-deletes") => Discard::AllDeletes,
        Some(other) => {
            return Err(sql_err(
                sqlstate::INVALID_PARAMETER_VALUE,
                format!(
                    "unknown discard option \"{other}\": expected 'ttl-deletes' or 'all-deletes'"
                ),
            ));
        }
    };
    let cursor = match &o.cursor {
        None => None,
        Some(text) => Some(text.parse::<Timestamp>().map_err(|e| {
            sql_err(
                sqlstate::INVALID_PARAMETER_VALUE,
                format!("invalid cursor: {e}"),
            )
        })?),
    };
    if stmt.from_tables.len() != stmt.into_tables.len() {
        return Err(sql_err(
            sqlstate::INVALID_PARAMETER_VALUE,
            "the same number of source and destination tables must be specified",
        ));
    }
    if stmt.from_tables.is_empty() {
        return Err(sql_err(
            sqlstate::SYNTAX_ERROR,
            "at least one table must be replicated",
        ));
    }
    Ok(StreamOptions {
        mode,
        cursor,
        discard,
        label: o.label.clone().filter(|l| !l.is_empty()),
        skip_schema_check: o.skip_schema_check,
        conflict_resolution_type,
    })
}

/// `external://name` → `name`.
pub fn external_connection_name(uri: &str) -> Result<&str> {
    uri.strip_prefix("external://")
        .filter(|n| !n.is_empty() && !n.contains('/'))
        .ok_or_else(|| {
            sql_err(
                sqlstate::INVALID_PARAMETER_VALUE,
                "uri must be an external connection",
            )
        })
}

/// Maps a source-side stream error to the user's statement error.
fn source_error(e: StreamError) -> IngestError {
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
    sql_err(code, e.to_string())
}

/// Resolves a destination table name in the session's database.
async fn resolve_table(
    catalog: &Catalog,
    current_db: &str,
    name: &ObjectName,
) -> Result<Arc<TableDescriptor>> {
    let (db, schema, table) = match name.as_slice() {
        [t] => (current_db.to_string(), "public".to_string(), t.clone()),
        [a, t] => {
            let current = catalog
                .database(current_db)
                .await
                .map_err(IngestError::from_sql)?;
            if current
                .as_ref()
                .is_some_and(|d| a == "public" || d.has_schema(a))
            {
                (current_db.to_string(), a.clone(), t.clone())
            } else {
                (a.clone(), "public".to_string(), t.clone())
            }
        }
        [d, s, t] => (d.clone(), s.clone(), t.clone()),
        _ => {
            return Err(sql_err(
                sqlstate::SYNTAX_ERROR,
                format!("invalid table name {}", name.join(".")),
            ));
        }
    };
    let display = name.join(".");
    let database = catalog
        .database(&db)
        .await
        .map_err(IngestError::from_sql)?
        .ok_or_else(|| {
            sql_err(
                sqlstate::UNDEFINED_TABLE,
                format!("relation \"{display}\" does not exist"),
            )
        })?;
    catalog
        .table(database.id, &schema, &table)
        .await
        .map_err(IngestError::from_sql)?
        .ok_or_else(|| {
            sql_err(
                sqlstate::UNDEFINED_TABLE,
                format!("relation \"{display}\" does not exist"),
            )
        })
}

/// Table or system REPLICATIONDEST (or the deprecated REPLICATION) for every destination table.
async fn check_privileges(
    catalog: &Catalog,
    user: &str,
    tables: &[Arc<TableDescriptor>],
) -> Result<()> {
    let record = catalog
        .user(user)
        .await
        .map_err(IngestError::from_sql)?
        .ok_or_else(|| {
            sql_err(
                sqlstate::INSUFFICIENT_PRIVILEGE,
                format!("user {user} does not exist"),
            )
        })?;
    if record.is_admin()
        || record.system_privileges.contains("REPLICATIONDEST")
        || record.system_privileges.contains("REPLICATION")
        || record.system_privileges.contains("ALL")
    {
        return Ok(());
    }
    for t in tables {
        let granted = t
            .privileges
            .get(user)
            .is_some_and(|p| p.contains("REPLICATIONDEST") || p.contains("ALL"));
        if !granted && t.owner != user {
            return Err(sql_err(
                sqlstate::INSUFFICIENT_PRIVILEGE,
                format!(
                    "failed privilege check: table or system level REPLICATIONDEST privilege required: user {user} does not have REPLICATIONDEST privilege on relation {}",
                    t.name
                ),
            ));
        }
    }
    Ok(())
}

/// Runs the statement; returns the new job's id.
pub async fn create_stream(
    ctx: &CreateContext,
    user: &str,
    current_db: &str,
    stmt: &CreateLogicalReplicationStream,
) -> Result<JobId> {
    let options = parse_options(stmt)?;
    let connection_name = external_connection_name(&stmt.on)?;
    let connection = ctx
        .catalog
        .external_connection(connection_name)
        .await
        .map_err(IngestError::from_sql)?
        .ok_or_else(|| {
            sql_err(
                sqlstate::UNDEFINED_OBJECT,
                format!("external connection \"{connection_name}\" does not exist"),
            )
        })?;
    let uri = SourceUri::parse(&connection.uri)
        .map_err(|e| sql_err(sqlstate::INVALID_PARAMETER_VALUE, e.to_string()))?;

    let mut destinations = Vec::with_capacity(stmt.into_tables.len());
    for name in &stmt.into_tables {
        destinations.push(resolve_table(&ctx.catalog, current_db, name).await?);
    }
    check_privileges(&ctx.catalog, user, &destinations).await?;
    if options.mode == Mode::Immediate {
        if let Some(t) = destinations.iter().find(|t| !t.foreign_keys.is_empty()) {
            return Err(sql_err(
                sqlstate::FEATURE_NOT_SUPPORTED,
                format!(
                    "foreign keys are only supported with MODE = 'validated' (table {} has foreign keys)",
                    t.name
                ),
            ));
        }
    }
    if options.discard == Discard::TtlDeletes {
        // The source decides which deletes are TTL deletes; nothing to check here beyond the
        // source rejecting the stream when no table excludes TTL deletes (checked there).
    }

    // Start the stream on the source: history retention job + protected timestamp.
    let mut client = StreamClient::connect_uri(&uri)
        .await
        .map_err(source_error)?;
    let source_names: Vec<String> = stmt.from_tables.iter().map(|n| n.join(".")).collect();
    let started = client
        .start_stream(pb::StartStreamRequest {
            table_names: source_names.clone(),
            start_ts: options.cursor.map(Into::into),
            consumer_description: stmt.statement.clone(),
        })
        .await
        .map_err(source_error)?;
    let abort = |client: StreamClient, stream_id: i64| async move {
        let mut client = client;
        let _ = client.complete_stream(stream_id, false).await;
    };

    let mut pairs = Vec::with_capacity(destinations.len());
    for ((source_name, descriptor), destination) in source_names
        .iter()
        .zip(&started.table_descriptors)
        .zip(&destinations)
    {
        let source: TableDescriptor = match serde_json::from_slice(descriptor) {
            Ok(d) => d,
            Err(e) => {
                abort(client, started.stream_id).await;
                return Err(sql_err(
                    sqlstate::INTERNAL_ERROR,
                    format!("invalid source descriptor for {source_name}: {e}"),
                ));
            }
        };
        if !options.skip_schema_check {
            if let Err(e) = crate::compat::check_compatibility(
                &source,
                destination,
                options.mode == Mode::Validated,
            ) {
                abort(client, started.stream_id).await;
                return Err(IngestError::from_sql(e));
            }
        }
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
        source_connection: stmt.on.clone(),
        source_uri: connection.uri.clone(),
        tables: destinations.iter().map(|d| d.qualified_name()).collect(),
        pairs,
        replication_start_time: start_ts.to_decimal_string(),
        initial_scan: options.cursor.is_none(),
        mode: options.mode,
        discard: options.discard,
        label: options.label.clone(),
        skip_schema_check: options.skip_schema_check,
        conflict_resolution_type: options.conflict_resolution_type.to_string(),
        command: stmt.statement.clone(),
    };
    let progress = LdrProgress {
        replicated_time: options.cursor.map(|c| c.to_decimal_string()),
        ..Default::default()
    };
    let description = format!(
        "LOGICAL REPLICATION STREAM into {} from {}",
        payload.tables.join(", "),
        stmt.on
    );
    let to_json = |v: serde_json::Result<serde_json::Value>| {
        v.map_err(|e| sql_err(sqlstate::INTERNAL_ERROR, e.to_string()))
    };
    let created = ctx
        .registry
        .create(
            JobType::LogicalReplication,
            description,
            user.to_string(),
            to_json(serde_json::to_value(&payload))?,
            to_json(serde_json::to_value(&progress))?,
        )
        .await;
    let job_id = match created {
        Ok(id) => id,
        Err(e) => {
            abort(client, started.stream_id).await;
            return Err(sql_err(sqlstate::INTERNAL_ERROR, e.to_string()));
        }
    };
    // DLQ tables and schema locks; the job's cleanup undoes them if anything below fails.
    let setup = async {
        DlqTables::new(ctx.catalog.clone(), ctx.sql.clone())
            .ensure(&destinations)
            .await?;
        for d in &destinations {
            ctx.catalog
                .update_table(d.id, &move |t| {
                    if !t.ldr_job_ids.contains(&job_id) {
                        t.ldr_job_ids.push(job_id);
                    }
                    Ok(())
                })
                .await
                .map_err(IngestError::from_sql)?;
        }
        Ok::<_, IngestError>(())
    };
    if let Err(e) = setup.await {
        let _ = ctx.registry.cancel(job_id).await;
        return Err(e);
    }
    info!(job_id, stream_id = started.stream_id, tables = ?payload.tables, "created logical replication job");
    Ok(job_id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ldr_sql::parser::ast::LogicalReplicationOptions;

    fn stmt(options: LogicalReplicationOptions) -> CreateLogicalReplicationStream {
        CreateLogicalReplicationStream {
            from_tables: vec![vec!["db".into(), "public".into(), "t".into()]],
            into_tables: vec![vec!["db".into(), "public".into(), "t".into()]],
            on: "external://a".into(),
            options,
            statement: "CREATE LOGICAL REPLICATION STREAM ...".into(),
        }
    }

    fn code(e: IngestError) -> &'static str {
        match e {
            IngestError::Sql { code, .. } => code,
            other => panic!("expected a SQL error, got {other:?}"),
        }
    }

    #[test]
    fn options_are_validated() {
        let o =
            parse_options(&stmt(LogicalReplicationOptions::default())).expect("defaults are valid");
        assert_eq!(
            (o.mode, o.discard, o.cursor, o.conflict_resolution_type),
            (Mode::Immediate, Discard::Nothing, None, "LWW")
        );
        let o = parse_options(&stmt(LogicalReplicationOptions {
            discard: Some("all-deletes".into()),
            cursor: Some("1732250000123456789.0000000001".into()),
            label: Some("x".into()),
            ..Default::default()
        }))
        .expect("valid");
        assert_eq!(o.discard, Discard::AllDeletes);
        assert_eq!(o.cursor, Some(Timestamp::new(1732250000123456789, 1)));
        let validated = LogicalReplicationOptions {
            mode: Some("validated".into()),
            ..Default::default()
        };
        assert_eq!(
            code(parse_options(&stmt(validated)).expect_err("not yet")),
            sqlstate::FEATURE_NOT_SUPPORTED
        );
        let bad = LogicalReplicationOptions {
            discard: Some("some".into()),
            ..Default::default()
        };
        assert_eq!(
            code(parse_options(&stmt(bad)).expect_err("bad")),
            sqlstate::INVALID_PARAMETER_VALUE
        );
        let bad = LogicalReplicationOptions {
            cursor: Some("yesterday".into()),
            ..Default::default()
        };
        assert_eq!(
            code(parse_options(&stmt(bad)).expect_err("bad")),
            sqlstate::INVALID_PARAMETER_VALUE
        );
        let mut mismatch = stmt(LogicalReplicationOptions::default());
        mismatch.into_tables.push(vec!["u".into()]);
        let e = parse_options(&mismatch).expect_err("mismatch");
        assert!(
            e.to_string()
                .contains("the same number of source and destination tables")
        );
    }

    #[test]
    fn uri_must_be_an_external_connection() {
        assert_eq!(
            external_connection_name("external://a").expect("valid"),
            "a"
        );
        for bad in ["postgresql://root@h:1", "external://", "a"] {
            assert_eq!(
                external_connection_name(bad).expect_err(bad).to_string(),
                "uri must be an external connection"
            );
        }
    }
}

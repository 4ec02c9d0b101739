//! `CREATE LOGICAL REPLICATION STREAM`: the statement's checks that belong to the SQL layer
//! (single-statement transaction, option values, the external connection, destination
//! tables and privileges, foreign keys vs mode), then the [`ReplicationStatements`] hook,
//! which the server implements with the ingest crate (it contacts the source, checks schema
//! compatibility with [`crate::validation::check_compatibility`], locks the tables and
//! creates the job). The same hook describes a job for `SHOW LOGICAL REPLICATION JOBS`
//! ([`LogicalReplicationJobInfo`]): the job record's payload is the ingest crate's, and only
//! it reads it.

use std::sync::Arc;

use ldr_jobs::JobRecord;
use ldr_types::{JobId, Timestamp};

use super::{ColumnInfo, QueryResult, Session, privilege, resolve};
use crate::catalog::TableDescriptor;
use crate::datum::Datum;
use crate::error::{Result, SqlError, sqlstate};
use crate::parser::CreateLogicalReplicationStream;
use crate::types::SqlType;

/// A destination table, resolved.
#[derive(Debug, Clone)]
pub struct ResolvedTable {
    pub database: String,
    pub schema: String,
    pub name: String,
    pub descriptor: Arc<TableDescriptor>,
}

impl ResolvedTable {
    /// `db.schema.table`.
    pub fn qualified(&self) -> String {
        format!("{}.{}.{}", self.database, self.schema, self.name)
    }
}

/// Everything the replication layer needs to create an LDR job.
#[derive(Debug, Clone)]
pub struct LdrStreamRequest {
    /// The statement as written (with `statement.statement` its text, the job's command).
    pub statement: CreateLogicalReplicationStream,
    /// The external connection's name (`source` in `external://source`).
    pub external_connection: String,
    /// The URI the external connection holds (the source cluster).
    pub source_uri: String,
    /// The destination tables, in order (source names are in `statement.from_tables`).
    pub into: Vec<ResolvedTable>,
    /// The session's user (the job's owner) and database (for resolving source names).
    pub user: String,
    pub database: String,
    /// `MODE = 'validated'`.
    pub validated: bool,
    /// `CURSOR = '…'`: start here without an initial scan.
    pub cursor: Option<Timestamp>,
    /// `DEFAULT FUNCTION`: `lww` (default) or `dlq`.
    pub default_function: String,
    /// `DISCARD`: `ttl-deletes` or `all-deletes`.
    pub discard: Option<String>,
}

/// One `LOGICAL REPLICATION` job as `SHOW LOGICAL REPLICATION JOBS` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogicalReplicationJobInfo {
    /// The destination tables, `db.schema.t`.
    pub tables: Vec<String>,
    /// `None` until the first full checkpoint (the initial scan is done).
    pub replicated_time: Option<Timestamp>,
    pub replication_start_time: Option<Timestamp>,
    /// `LWW` or `DLQ`.
    pub conflict_resolution_type: String,
    /// The statement that created the job.
    pub command: String,
}

/// Implemented by the server (with `ldr-ingest`).
#[async_trait::async_trait]
pub trait ReplicationStatements: Send + Sync {
    /// Creates the LDR job, returns its id.
    async fn create_logical_replication_stream(&self, request: LdrStreamRequest) -> Result<JobId>;

    /// What a `LOGICAL REPLICATION` job's record says, for `SHOW LOGICAL REPLICATION JOBS`;
    /// `None` if the record cannot be read (the row then shows the job's id and status only).
    fn describe_job(&self, job: &JobRecord) -> Option<LogicalReplicationJobInfo>;
}

fn invalid(msg: impl Into<String>) -> SqlError {
    SqlError::new(sqlstate::INVALID_PARAMETER_VALUE, msg.into())
}

pub(crate) async fn create_stream_with_params(
    sess: &mut Session,
    stmt: &CreateLogicalReplicationStream,
    in_batch: bool,
    params: &[Datum],
) -> Result<QueryResult> {
    if sess.in_txn() || in_batch {
        return Err(SqlError::new(
            sqlstate::ACTIVE_SQL_TRANSACTION,
            "cannot CREATE LOGICAL REPLICATION STREAM in a multi-statement transaction",
        ));
    }
    let mut stmt = stmt.clone();
    if let Some(n) = stmt
        .on
        .strip_prefix('$')
        .and_then(|n| n.parse::<usize>().ok())
    {
        match params.get(n.wrapping_sub(1)) {
            Some(Datum::String(u)) => stmt.on = u.clone(),
            _ => return Err(invalid(format!("no value provided for placeholder: ${n}"))),
        }
    }
    if stmt.from_tables.len() != stmt.into_tables.len() {
        return Err(invalid(
            "the same number of source and destination tables must be specified",
        ));
    }
    let o = &stmt.options;
    let validated = match o.mode.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None | Some("immediate") => false,
        Some("validated") => true,
        Some(other) => return Err(invalid(format!("unknown mode \"{other}\""))),
    };
    let default_function = match o
        .default_function
        .as_deref()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None | Some("lww") => "lww".to_string(),
        Some("dlq") => "dlq".to_string(),
        Some(other) => {
            return Err(SqlError::unsupported(format!(
                "user-defined conflict resolution functions are not supported: \"{other}\""
            )));
        }
    };
    if !o.functions.is_empty() {
        return Err(SqlError::unsupported(
            "FUNCTION … FOR TABLE is not supported",
        ));
    }
    let discard = match o.discard.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None => None,
        Some(d @ ("ttl-deletes" | "all-deletes")) => Some(d.to_string()),
        Some(other) => return Err(invalid(format!("unknown discard option \"{other}\""))),
    };
    let cursor = match &o.cursor {
        None => None,
        Some(c) => Some(c.parse::<Timestamp>().map_err(|_| invalid(format!("invalid cursor \"{c}\": expected a decimal timestamp such as cluster_logical_timestamp() returns")))?),
    };
    let name = stmt
        .on
        .strip_prefix("external://")
        .map(|n| n.trim_end_matches('/').to_string())
        .filter(|n| !n.is_empty())
        .ok_or_else(|| invalid("uri must be an external connection"))?;
    let conn = sess.server.catalog.external_connection(&name).await?.ok_or_else(|| {
        SqlError::new(sqlstate::UNDEFINED_OBJECT, format!("failed to load external connection object: external connection with name {name} does not exist"))
    })?;
    let mut into = Vec::new();
    for t in &stmt.into_tables {
        let desc = resolve::resolve_table(&sess.server.catalog, sess.database(), t).await?;
        into.push(ResolvedTable {
            database: desc.database.clone(),
            schema: desc.schema.clone(),
            name: desc.name.clone(),
            descriptor: desc,
        });
    }
    if !privilege::has_system_privilege(&sess.server.catalog, &sess.user, "REPLICATIONDEST").await?
    {
        for t in &into {
            if !privilege::has_table_privilege(
                &sess.server.catalog,
                &sess.user,
                &t.descriptor,
                "REPLICATIONDEST",
            )
            .await?
            {
                return Err(SqlError::insufficient_privilege(format!(
                    "failed privilege check: table or system level REPLICATIONDEST privilege required: user {} does not have REPLICATIONDEST privilege on relation {}",
                    sess.user, t.name
                )));
            }
        }
    }
    for t in &into {
        crate::validation::check_foreign_keys_allowed(&t.descriptor, validated)?;
    }
    let Some(hook) = sess.server.replication() else {
        return Err(SqlError::unsupported(
            "logical replication is not available on this node",
        ));
    };
    let request = LdrStreamRequest {
        external_connection: name,
        source_uri: conn.uri,
        into,
        user: sess.user.clone(),
        database: sess.database().to_string(),
        validated,
        cursor,
        default_function,
        discard,
        statement: stmt,
    };
    let job_id = hook.create_logical_replication_stream(request).await?;
    Ok(QueryResult::rows(
        vec![ColumnInfo::new("job_id", SqlType::Int8)],
        vec![vec![Datum::Int(job_id)]],
    ))
}

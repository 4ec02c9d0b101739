//! `CREATE CHANGEFEED` and `SHOW CHANGEFEED JOBS`: the SQL layer's half (single statement,
//! the watched tables resolved and the user's CHANGEFEED/SELECT privilege checked), then the
//! [`ChangefeedStatements`] hook, which the server implements with the changefeed crate
//! (options, the sink, the job and its protected timestamp). A sinkless changefeed's rows
//! come back as a [`RowStream`] the wire protocol sends as messages are emitted.

use std::str::FromStr;

use ldr_jobs::{JobRecord, JobType};
use ldr_types::JobId;

use super::ldr::ResolvedTable;
use super::result::{col, s};
use super::{ColumnInfo, QueryResult, RowStream, Session, privilege, resolve};
use crate::datum::Datum;
use crate::error::{Result, SqlError, sqlstate};
use crate::parser::{CreateChangefeed, Expr};
use crate::types::SqlType;

/// Everything the changefeed layer needs to create a changefeed job.
#[derive(Debug, Clone)]
pub struct ChangefeedRequest {
    /// The statement as written.
    pub statement: CreateChangefeed,
    /// The watched tables, in order.
    pub targets: Vec<ResolvedTable>,
    /// The session's user (the job's owner) and database.
    pub user: String,
    pub database: String,
}

/// Implemented by the server (with `ldr-changefeed`): validates the options and the sink,
/// creates the changefeed job and returns its id; or starts a sinkless changefeed and
/// returns the stream of its `table, key, value` rows. The feed runs until the stream is
/// dropped (the client went away or canceled), it ends (`initial_scan = 'only'`,
/// `end_time`), or it fails (an error as the stream's last item).
#[async_trait::async_trait]
pub trait ChangefeedStatements: Send + Sync {
    async fn create_changefeed(&self, request: ChangefeedRequest) -> Result<JobId>;
    async fn sinkless_changefeed(&self, request: ChangefeedRequest) -> Result<RowStream>;
}

/// The columns of a sinkless changefeed (CockroachDB's core changefeed; text rather than
/// BYTES so psql shows the JSON).
pub(crate) fn sinkless_columns() -> Vec<ColumnInfo> {
    vec![
        col("table", SqlType::String),
        col("key", SqlType::String),
        col("value", SqlType::String),
    ]
}

pub(crate) async fn create(
    sess: &mut Session,
    stmt: &CreateChangefeed,
    in_batch: bool,
) -> Result<QueryResult> {
    if sess.in_txn() || in_batch {
        return Err(SqlError::new(
            sqlstate::ACTIVE_SQL_TRANSACTION,
            "cannot CREATE CHANGEFEED in a multi-statement transaction",
        ));
    }
    let mut targets = Vec::with_capacity(stmt.targets.len());
    for t in &stmt.targets {
        let desc = resolve::resolve_table(&sess.server.catalog, sess.database(), t).await?;
        if targets
            .iter()
            .any(|r: &ResolvedTable| r.descriptor.id == desc.id)
        {
            continue;
        }
        targets.push(ResolvedTable {
            database: desc.database.clone(),
            schema: desc.schema.clone(),
            name: desc.name.clone(),
            descriptor: desc,
        });
    }
    // CockroachDB: the CHANGEFEED privilege on every table, or SELECT (deprecated path) for
    // an admin-less user; admins hold all privileges.
    for t in &targets {
        let catalog = &sess.server.catalog;
        if !privilege::has_table_privilege(catalog, &sess.user, &t.descriptor, "CHANGEFEED").await?
            && !privilege::has_table_privilege(catalog, &sess.user, &t.descriptor, "SELECT").await?
        {
            return Err(SqlError::insufficient_privilege(format!(
                "user {} requires the CHANGEFEED privilege on all target tables to be able to run an enterprise changefeed",
                sess.user
            )));
        }
    }
    let Some(hook) = sess.server.changefeeds() else {
        return Err(SqlError::unsupported(
            "changefeeds are not available on this node",
        ));
    };
    let request = ChangefeedRequest {
        statement: stmt.clone(),
        targets,
        user: sess.user.clone(),
        database: sess.database().to_string(),
    };
    if stmt.sink.is_none() {
        let rows = hook.sinkless_changefeed(request).await?;
        return Ok(QueryResult::streamed(sinkless_columns(), rows));
    }
    let job_id = hook.create_changefeed(request).await?;
    Ok(QueryResult::rows(
        vec![col("job_id", SqlType::Int8)],
        vec![vec![Datum::Int(job_id)]],
    ))
}

/// The columns of `SHOW CHANGEFEED JOBS` (CockroachDB's).
pub(crate) fn show_columns() -> Vec<ColumnInfo> {
    vec![
        col("job_id", SqlType::Int8),
        col("description", SqlType::String),
        col("user_name", SqlType::String),
        col("status", SqlType::String),
        col("running_status", SqlType::String),
        col("created", SqlType::TimestampTz),
        col("started", SqlType::TimestampTz),
        col("finished", SqlType::TimestampTz),
        col("modified", SqlType::TimestampTz),
        col("high_water_timestamp", SqlType::DECIMAL),
        col("readable_high_water_timestamptz", SqlType::TimestampTz),
        col("error", SqlType::String),
        col("sink_uri", SqlType::String),
        col("full_table_names", SqlType::String),
        col("topics", SqlType::String),
        col("format", SqlType::String),
    ]
}

pub(crate) async fn show_jobs(
    sess: &mut Session,
    id: Option<&Expr>,
    params: &[Datum],
) -> Result<QueryResult> {
    let jobs = match id {
        Some(e) => {
            let id = super::jobs::job_id(sess, e, params)?;
            let job = sess.server.jobs.get(id).await?;
            super::jobs::check_job_visible(sess, &job).await?;
            vec![job]
        }
        None => super::jobs::visible_jobs(sess).await?,
    };
    let rows = jobs
        .iter()
        .filter(|j| j.job_type == JobType::Changefeed)
        .map(job_row)
        .collect();
    Ok(QueryResult::rows(show_columns(), rows))
}

fn ts_datum(ts: ldr_types::Timestamp) -> Datum {
    if ts.is_zero() {
        Datum::Null
    } else {
        Datum::TimestampTz((ts.wall_time_ns / 1000) as i64)
    }
}

fn text(v: Option<&serde_json::Value>) -> Datum {
    match v.and_then(|v| v.as_str()) {
        Some(t) => s(t.to_string()),
        None => Datum::Null,
    }
}

/// One `SHOW CHANGEFEED JOBS` row from a job record: the payload holds `sink_uri`,
/// `full_table_names`, `topics` and `format`; the progress `high_water` (decimal).
pub(crate) fn job_row(j: &JobRecord) -> Vec<Datum> {
    let high_water = j
        .progress
        .get("high_water")
        .and_then(|v| v.as_str())
        .and_then(|t| t.parse::<ldr_types::Timestamp>().ok())
        .filter(|t| !t.is_zero());
    let tables: Vec<String> = j
        .payload
        .get("full_table_names")
        .and_then(|t| t.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    vec![
        Datum::Int(j.id),
        s(j.description.clone()),
        s(j.user_name.clone()),
        s(j.status.as_str()),
        j.running_status.clone().map(s).unwrap_or(Datum::Null),
        ts_datum(j.created),
        ts_datum(j.created),
        j.finished.map(ts_datum).unwrap_or(Datum::Null),
        j.finished.map(ts_datum).unwrap_or(ts_datum(j.created)),
        high_water
            .and_then(|t| rust_decimal::Decimal::from_str(&t.to_decimal_string()).ok())
            .map(Datum::Decimal)
            .unwrap_or(Datum::Null),
        high_water.map(ts_datum).unwrap_or(Datum::Null),
        s(j.error.clone().unwrap_or_default()),
        text(j.payload.get("sink_uri")),
        s(format!("{{{}}}", tables.join(","))),
        text(j.payload.get("topics")),
        text(j.payload.get("format")),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_read_payload_and_progress() {
        let job = JobRecord {
            id: 7,
            job_type: JobType::Changefeed,
            description: "CREATE CHANGEFEED FOR TABLE t INTO 'nodelocal://1/cf'".into(),
            user_name: "root".into(),
            status: ldr_jobs::JobStatus::Running,
            running_status: None,
            created: ldr_types::Timestamp::new(1_700_000_000_000_000_000, 0),
            finished: None,
            fraction_completed: 0.0,
            error: None,
            coordinator_id: Some(1),
            payload: serde_json::json!({
                "sink_uri": "nodelocal://1/cf",
                "full_table_names": ["defaultdb.public.t"],
                "topics": "t",
                "format": "json",
            }),
            progress: serde_json::json!({"high_water": "1700000000500000000.0000000003"}),
        };
        let row = job_row(&job);
        assert_eq!(row.len(), show_columns().len());
        assert_eq!(
            row[9],
            Datum::Decimal(
                rust_decimal::Decimal::from_str("1700000000500000000.0000000003").expect("decimal")
            )
        );
        assert_eq!(row[12], s("nodelocal://1/cf"));
        assert_eq!(row[13], s("{defaultdb.public.t}"));
        assert_eq!(row[15], s("json"));
    }
}

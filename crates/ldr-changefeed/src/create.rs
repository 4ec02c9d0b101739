//! `CREATE CHANGEFEED`'s changefeed half ([`ChangefeedStatements`]): checks the options and
//! the sink, creates the `CHANGEFEED` job (claimed and started by this node) and protects the
//! history from its start time; or runs a sinkless changefeed whose rows stream to the SQL
//! client for as long as it reads them.

use std::sync::Arc;

use async_trait::async_trait;
use ldr_jobs::{JobType, Registry};
use ldr_kv::{KvClient, PtsRecord};
use ldr_sql::exec::{ChangefeedRequest, ChangefeedStatements};
use ldr_sql::{SqlError, sqlstate};
use ldr_types::JobId;
use tracing::{info, warn};

use std::time::{Duration, Instant};

use ldr_sql::exec::{RowSender, RowStream};

use crate::job::{ChangefeedPayload, ChangefeedResumer, RunContext, RunEnd, Running, pts_id};
use crate::options::{OptionError, SinkSpec, parse_options, parse_sink};
use crate::sink::CLIENT_ROWS_BUFFERED_MAX;

/// Creates changefeed jobs on this node, and runs sinkless changefeeds.
pub struct ChangefeedCreator {
    pub kv: KvClient,
    pub registry: Arc<Registry>,
    /// Runs sinkless changefeeds (the same machinery as the jobs').
    pub runner: Arc<ChangefeedResumer>,
}

/// How long a sinkless changefeed keeps retrying after errors, without a run that lasted
/// [`SINKLESS_HEALTHY_RUN`], before it fails.
const SINKLESS_RETRY_DEADLINE: Duration = Duration::from_secs(60);
/// A run that lasted this long was healthy: the retry deadline and backoff start again.
const SINKLESS_HEALTHY_RUN: Duration = Duration::from_secs(30);
const SINKLESS_BACKOFF_INITIAL: Duration = Duration::from_millis(100);
const SINKLESS_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Runs a sinkless changefeed until it ends (`initial_scan = 'only'`, `end_time`) or fails.
/// A retryable error (a lease moved, a node went away) restarts it from its last high-water
/// mark (rows since then may come again: at least once, as CockroachDB's core changefeeds),
/// until errors keep coming for [`SINKLESS_RETRY_DEADLINE`].
async fn run_sinkless(
    runner: &ChangefeedResumer,
    payload: &ChangefeedPayload,
    metrics_id: i64,
    rows: RowSender,
) -> ldr_sql::Result<()> {
    // Never set: the statement stops by being dropped (see `sinkless_changefeed`).
    let (_stop_tx, stop) = tokio::sync::watch::channel(false);
    let mut state = runner.new_state(payload, ldr_types::Timestamp::ZERO);
    let mut failing_since: Option<Instant> = None;
    let mut backoff = SINKLESS_BACKOFF_INITIAL;
    loop {
        let run = RunContext {
            job_id: 0,
            metrics_id,
            stop: stop.clone(),
            registry: None,
            rows: Some(rows.clone()),
        };
        let started = Instant::now();
        match runner.run_once(&run, payload, &mut state).await {
            Ok(RunEnd::Done) | Ok(RunEnd::Stopped) => return Ok(()),
            Err(e) if e.is_retryable() => {
                if started.elapsed() >= SINKLESS_HEALTHY_RUN {
                    failing_since = None;
                    backoff = SINKLESS_BACKOFF_INITIAL;
                }
                let since = *failing_since.get_or_insert(started);
                if since.elapsed() >= SINKLESS_RETRY_DEADLINE {
                    return Err(SqlError::new(
                        sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE,
                        e.to_string(),
                    ));
                }
                warn!(metrics_id, error = %e, ?backoff, "sinkless changefeed run ended; retrying from its high-water mark");
                runner.metrics.retried();
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(SINKLESS_BACKOFF_MAX);
            }
            Err(e) => {
                return Err(SqlError::new(
                    sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE,
                    e.to_string(),
                ));
            }
        }
    }
}

fn option_error(e: OptionError) -> SqlError {
    let code = if e.feature_not_supported {
        sqlstate::FEATURE_NOT_SUPPORTED
    } else {
        sqlstate::INVALID_PARAMETER_VALUE
    };
    SqlError::new(code, e.message)
}

#[async_trait]
impl ChangefeedStatements for ChangefeedCreator {
    /// Checks the statement, then runs the changefeed in a task of its own that sends its
    /// rows into the returned stream until the changefeed ends, fails (the error is the
    /// stream's last item) or the stream is dropped (the client went away or canceled: the
    /// task stops at once, and with it the partition readers and their rangefeeds).
    async fn sinkless_changefeed(&self, request: ChangefeedRequest) -> ldr_sql::Result<RowStream> {
        let (payload, _) = self.check(&request).await?;
        let (rows, stream) = RowStream::channel(CLIENT_ROWS_BUFFERED_MAX);
        let runner = self.runner.clone();
        tokio::spawn(async move {
            let id = runner.metrics.sinkless_started();
            let _running = Running {
                metrics: &runner.metrics,
                job_id: id,
            };
            info!(metrics_id = id, initial_scan = ?payload.options.initial_scan, "sinkless changefeed started");
            let ended = tokio::select! {
                r = run_sinkless(&runner, &payload, id, rows.clone()) => r,
                _ = rows.closed() => Err(SqlError::new(sqlstate::QUERY_CANCELED, "the client went away")),
            };
            match ended {
                Ok(()) => info!(metrics_id = id, "sinkless changefeed done"),
                Err(e) if rows.is_closed() => {
                    info!(metrics_id = id, error = %e.message(), "sinkless changefeed stopped: its client went away or canceled");
                }
                Err(e) => {
                    info!(metrics_id = id, error = %e.message(), "sinkless changefeed failed");
                    let _ = rows.send(Err(e)).await;
                }
            }
        });
        Ok(stream)
    }

    async fn create_changefeed(&self, request: ChangefeedRequest) -> ldr_sql::Result<JobId> {
        let (payload, start) = self.check(&request).await?;
        let statement = &request.statement;
        let options = payload.options.clone();
        let value = serde_json::to_value(&payload)
            .map_err(|e| SqlError::internal(format!("cannot encode changefeed payload: {e}")))?;
        let job_id = self
            .registry
            .create(
                JobType::Changefeed,
                statement.statement.clone(),
                request.user.clone(),
                value,
                serde_json::json!({}),
            )
            .await
            .map_err(|e| SqlError::internal(e.to_string()))?;
        let protected = self
            .kv
            .protect(PtsRecord {
                id: pts_id(job_id),
                ts: start,
                owner: format!("job {job_id}"),
            })
            .await;
        if let Err(e) = protected {
            let _ = self.registry.cancel(job_id).await;
            return Err(e.into());
        }
        info!(job_id, initial_scan = ?options.initial_scan, %start, "created changefeed");
        Ok(job_id)
    }
}

impl ChangefeedCreator {
    /// Checks the statement (options, sink, cluster state): the job payload and the start
    /// time.
    async fn check(
        &self,
        request: &ChangefeedRequest,
    ) -> ldr_sql::Result<(ChangefeedPayload, ldr_types::Timestamp)> {
        let statement = &request.statement;
        let mut options = parse_options(&statement.options).map_err(option_error)?;
        let sink = parse_sink(statement.sink.as_deref(), &mut options).map_err(option_error)?;
        if !self.kv.settings().bool("kv.rangefeed.enabled") {
            return Err(SqlError::new(
                sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE,
                "rangefeeds require the kv.rangefeed.enabled setting. See https://www.cockroachlabs.com/docs/stable/change-data-capture.html#enable-rangefeeds-to-reduce-latency",
            ));
        }
        if let SinkSpec::Nodelocal {
            node: Some(node), ..
        } = &sink
        {
            let nodes = self.kv.nodes().await?;
            if !nodes.iter().any(|n| n.node.node_id == *node) {
                return Err(SqlError::new(
                    sqlstate::INVALID_PARAMETER_VALUE,
                    format!("nodelocal sink: node {node} is not a member of this cluster"),
                ));
            }
        }
        let now = self.kv.clock().now();
        if let Some(cursor) = options.cursor
            && cursor > now
        {
            return Err(SqlError::new(
                sqlstate::INVALID_PARAMETER_VALUE,
                format!(
                    "cannot specify timestamp in the future ({} > {})",
                    cursor.to_decimal_string(),
                    now.to_decimal_string()
                ),
            ));
        }
        let start = options.cursor.unwrap_or(now);
        if let Some(end) = options.end_time
            && end < start
        {
            return Err(SqlError::new(
                sqlstate::INVALID_PARAMETER_VALUE,
                format!(
                    "specified end time {} cannot be less than statement time {}",
                    end.to_decimal_string(),
                    start.to_decimal_string()
                ),
            ));
        }
        let topics: Vec<String> = request
            .targets
            .iter()
            .map(|t| {
                if options.full_table_name {
                    t.qualified()
                } else {
                    t.name.clone()
                }
            })
            .collect();
        let payload = ChangefeedPayload {
            table_ids: request.targets.iter().map(|t| t.descriptor.id).collect(),
            full_table_names: request.targets.iter().map(|t| t.qualified()).collect(),
            topics: topics.join(","),
            sink_uri: statement.sink.clone().unwrap_or_default(),
            sink,
            format: "json".into(),
            options: options.clone(),
            statement_time: now.to_decimal_string(),
        };
        Ok((payload, start))
    }
}

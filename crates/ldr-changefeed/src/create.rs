//! `CREATE CHANGEFEED`'s changefeed half ([`ChangefeedStatements`]): checks the options and
//! the sink, creates the `CHANGEFEED` job (claimed and started by this node) and protects the
//! history from its start time.

use std::sync::Arc;

use async_trait::async_trait;
use ldr_jobs::{JobType, Registry};
use ldr_kv::{KvClient, PtsRecord};
use ldr_sql::exec::{ChangefeedRequest, ChangefeedStatements};
use ldr_sql::{SqlError, sqlstate};
use ldr_types::JobId;
use tracing::info;

use std::time::{Duration, Instant};

use ldr_sql::Datum;

use crate::job::{ChangefeedPayload, ChangefeedResumer, RunContext, pts_id};
use crate::options::InitialScan;
use crate::options::{OptionError, SinkSpec, parse_options, parse_sink};
use crate::sink::Collected;

/// Creates changefeed jobs on this node, and runs sinkless changefeeds.
pub struct ChangefeedCreator {
    pub kv: KvClient,
    pub registry: Arc<Registry>,
    /// Runs sinkless changefeeds (the same machinery as the jobs').
    pub runner: Arc<ChangefeedResumer>,
}

/// How long a sinkless changefeed keeps retrying after errors before it fails.
const SINKLESS_RETRY_DEADLINE: Duration = Duration::from_secs(60);

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
    async fn sinkless_changefeed(
        &self,
        request: ChangefeedRequest,
    ) -> ldr_sql::Result<Vec<Vec<Datum>>> {
        let (payload, _) = self.check(&request).await?;
        let o = &payload.options;
        if o.initial_scan != InitialScan::Only && o.end_time.is_none() {
            return Err(SqlError::unsupported(
                "a sinkless changefeed returns its rows when it ends: use WITH initial_scan = 'only' or end_time = '<decimal timestamp>', or a sink (INTO 'nodelocal://…')",
            ));
        }
        let collected = Arc::new(parking_lot::Mutex::new(Collected::default()));
        let (_stop_tx, stop) = tokio::sync::watch::channel(false);
        let mut state = self.runner.new_state(&payload, ldr_types::Timestamp::ZERO);
        let deadline = Instant::now() + SINKLESS_RETRY_DEADLINE;
        let mut backoff = Duration::from_millis(100);
        loop {
            let run = RunContext {
                job_id: 0,
                stop: stop.clone(),
                registry: None,
                collected: Some(collected.clone()),
            };
            match self.runner.run_once(&run, &payload, &mut state).await {
                Ok(_) => break,
                Err(e) if e.is_retryable() && Instant::now() < deadline => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
                Err(e) => {
                    return Err(SqlError::new(
                        sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE,
                        e.to_string(),
                    ));
                }
            }
        }
        let rows = std::mem::take(&mut collected.lock().rows);
        let text = |v: Option<String>| v.map(Datum::String).unwrap_or(Datum::Null);
        Ok(rows
            .into_iter()
            .map(|(t, k, v)| vec![text(t), text(k), text(v)])
            .collect())
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

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

use crate::job::{ChangefeedPayload, pts_id};
use crate::options::{OptionError, SinkSpec, parse_options, parse_sink};

/// Creates changefeed jobs on this node.
pub struct ChangefeedCreator {
    pub kv: KvClient,
    pub registry: Arc<Registry>,
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
    async fn create_changefeed(&self, request: ChangefeedRequest) -> ldr_sql::Result<JobId> {
        let statement = &request.statement;
        let mut options = parse_options(&statement.options).map_err(option_error)?;
        let sink = parse_sink(statement.sink.as_deref(), &mut options).map_err(option_error)?;
        if sink == SinkSpec::Sinkless {
            return Err(SqlError::unsupported(
                "sinkless changefeeds (CREATE CHANGEFEED without INTO) are not supported; use INTO 'nodelocal://<node>/<path>' or 'webhook-https://…'",
            ));
        }
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

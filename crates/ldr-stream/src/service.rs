//! The `ReplicationStream` gRPC service every source node serves: stream creation (history
//! retention job + protected timestamp + schema locks), planning (one partition per source
//! node), heartbeats, completion, and partition streams.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use ldr_jobs::{JobStatus, JobType, Registry};
use ldr_kv::{KvClient, PtsRecord};
use ldr_proto::pb;
use ldr_rangefeed::RangefeedManager;
use ldr_types::{JobId, NodeId, PRIMARY_INDEX_ID, Span, TableId, Timestamp, keys};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::info;

use crate::catalog::SourceCatalog;
use crate::error::{Result, StreamError};
use crate::partition::{PartitionOptions, run_partition};
use crate::producer_job::{
    EXPIRATION_WINDOW, ProducerPayload, ProducerProgress, StreamState, pts_id, stream_status,
};

/// The producer side of one node.
pub struct Producer {
    pub kv: KvClient,
    pub registry: Arc<Registry>,
    pub catalog: Arc<dyn SourceCatalog>,
    pub rangefeeds: Arc<RangefeedManager>,
}

fn user_of<T>(request: &Request<T>) -> Result<String> {
    request
        .metadata()
        .get(ldr_proto::metadata::USER)
        .and_then(|v| v.to_str().ok())
        .filter(|u| !u.is_empty())
        .map(str::to_string)
        .ok_or_else(|| {
            StreamError::Unauthenticated("replication stream requests must name a user".to_string())
        })
}

impl Producer {
    /// The partitions of `table_ids`: for every node serving ranges of them, the primary
    /// index spans of its ranges. A replicated range is served where its lease is now (any
    /// replica could: followers resolve at the closed timestamps they applied), or by a live
    /// replica when no leaseholder answers; a single-owner range by its owner.
    pub async fn partitions(&self, table_ids: &[TableId]) -> Result<Vec<pb::Partition>> {
        let nodes = self.kv.nodes().await?;
        let live: Vec<NodeId> = nodes
            .iter()
            .filter(|n| n.is_live)
            .map(|n| n.node.node_id)
            .collect();
        let mut ranges = Vec::new();
        for table_id in table_ids {
            ranges.extend(self.kv.table_ranges(*table_id).await?);
        }
        let servers = futures::future::join_all(ranges.iter().map(|range| async {
            if !range.is_replicated() {
                return range.node_id;
            }
            match self.kv.range_leaseholder(range).await {
                Ok(node) => node,
                Err(_) => range
                    .replicas
                    .iter()
                    .copied()
                    .find(|n| live.contains(n))
                    .unwrap_or(range.node_id),
            }
        }))
        .await;
        let mut by_node: BTreeMap<NodeId, Vec<Span>> = BTreeMap::new();
        for (range, node) in ranges.iter().zip(servers) {
            let table_id = range.table_id.expect("table ranges have a table");
            by_node.entry(node).or_default().push(keys::index_span(
                table_id,
                range.shard,
                PRIMARY_INDEX_ID,
            ));
        }
        let mut partitions = Vec::with_capacity(by_node.len());
        for (node_id, spans) in by_node {
            let address = nodes
                .iter()
                .find(|n| n.node.node_id == node_id)
                .map(|n| n.node.sql_address.clone())
                .ok_or_else(|| {
                    StreamError::Internal(format!(
                        "range owner node {node_id} is not a cluster member"
                    ))
                })?;
            partitions.push(pb::Partition {
                node_id,
                address,
                spans: spans.into_iter().map(pb::Span::from).collect(),
            });
        }
        Ok(partitions)
    }

    async fn producer_job(
        &self,
        stream_id: JobId,
    ) -> Result<(ldr_jobs::JobRecord, ProducerPayload, ProducerProgress)> {
        let record = match self.registry.get(stream_id).await {
            Ok(r) => r,
            Err(ldr_jobs::JobError::NotFound(_)) => {
                return Err(StreamError::NotFound(format!(
                    "replication stream {stream_id} does not exist"
                )));
            }
            Err(e) => return Err(e.into()),
        };
        if record.job_type != JobType::ReplicationStreamProducer {
            return Err(StreamError::NotFound(format!(
                "job {stream_id} is not a replication stream"
            )));
        }
        let payload: ProducerPayload = serde_json::from_value(record.payload.clone())
            .map_err(|e| StreamError::Internal(format!("corrupt producer job payload: {e}")))?;
        let progress: ProducerProgress = serde_json::from_value(record.progress.clone())
            .map_err(|e| StreamError::Internal(format!("corrupt producer job progress: {e}")))?;
        Ok((record, payload, progress))
    }

    /// Only the stream's own user (or root) may use it.
    fn check_owner(&self, user: &str, record: &ldr_jobs::JobRecord) -> Result<()> {
        if user == record.user_name || user == "root" {
            Ok(())
        } else {
            Err(StreamError::PermissionDenied(format!(
                "user {user} does not own replication stream {}",
                record.id
            )))
        }
    }

    pub async fn start_stream(
        &self,
        user: &str,
        request: pb::StartStreamRequest,
    ) -> Result<pb::StartStreamResponse> {
        if !self.kv.settings().bool("kv.rangefeed.enabled") {
            return Err(StreamError::RangefeedDisabled);
        }
        if request.table_names.is_empty() {
            return Err(StreamError::InvalidArgument(
                "no tables to replicate".to_string(),
            ));
        }
        let tables = self
            .catalog
            .resolve_for_replication(user, &request.table_names)
            .await?;
        let start_ts = request
            .start_ts
            .map(Timestamp::from)
            .unwrap_or_else(|| self.kv.clock().now());
        let table_ids: Vec<TableId> = tables.iter().map(|t| t.table_id).collect();
        let table_names: Vec<String> = tables.iter().map(|t| t.name.clone()).collect();
        let partitions = self.partitions(&table_ids).await?;

        let now = Timestamp::new(self.kv.clock().physical_now_ns(), 0);
        let description = format!(
            "History Retention for Logical Replication of {}",
            table_names.join(", ")
        );
        // The job id is the stream id; the PTS id derives from it, so create the job first.
        let payload = ProducerPayload {
            table_ids: table_ids.clone(),
            table_names: table_names.clone(),
            pts_id: String::new(),
            expiration_window_secs: EXPIRATION_WINDOW.as_secs(),
            start_ts,
        };
        let progress = ProducerProgress {
            expiration: now.add_nanos(EXPIRATION_WINDOW.as_nanos() as u64),
            state: StreamState::NotFinished,
            protected_ts: start_ts,
        };
        let job_id = self
            .registry
            .create(
                JobType::ReplicationStreamProducer,
                description,
                user.to_string(),
                to_json(&payload)?,
                to_json(&progress)?,
            )
            .await?;
        let pts = pts_id(job_id);
        let setup = async {
            self.registry
                .update_progress(job_id, &|r| {
                    if let Some(obj) = r.payload.as_object_mut() {
                        obj.insert(
                            "pts_id".to_string(),
                            serde_json::Value::String(pts_id(r.id)),
                        );
                    }
                })
                .await?;
            self.kv
                .protect(PtsRecord {
                    id: pts.clone(),
                    ts: start_ts,
                    owner: format!("job {job_id}"),
                })
                .await?;
            self.catalog.lock_tables(&table_ids, job_id).await?;
            Ok::<_, StreamError>(())
        };
        if let Err(e) = setup.await {
            // Undo: the job's cleanup releases whatever was taken.
            let _ = self.registry.cancel(job_id).await;
            return Err(e);
        }
        info!(stream_id = job_id, tables = ?table_names, %start_ts, "started replication stream");
        Ok(pb::StartStreamResponse {
            stream_id: job_id,
            source_cluster_id: self.kv.cluster_id(),
            source_origin_id: self.kv.origin_id(),
            table_descriptors: tables.into_iter().map(|t| t.descriptor).collect(),
            partitions,
            start_ts: Some(start_ts.into()),
        })
    }

    pub async fn plan_stream(
        &self,
        user: &str,
        stream_id: JobId,
    ) -> Result<pb::PlanStreamResponse> {
        let (record, payload, _) = self.producer_job(stream_id).await?;
        self.check_owner(user, &record)?;
        if record.status.is_terminal() {
            return Err(StreamError::StreamNotRunning(stream_id));
        }
        let tables = self.catalog.tables(&payload.table_ids).await?;
        let partitions = self.partitions(&payload.table_ids).await?;
        Ok(pb::PlanStreamResponse {
            partitions,
            table_descriptors: tables.into_iter().map(|t| t.descriptor).collect(),
        })
    }

    pub async fn heartbeat(
        &self,
        user: &str,
        request: pb::HeartbeatRequest,
    ) -> Result<pb::HeartbeatResponse> {
        let stream_id = request.stream_id;
        let (record, payload, progress) = match self.producer_job(stream_id).await {
            Ok(found) => found,
            Err(StreamError::NotFound(_)) => {
                return Ok(pb::HeartbeatResponse {
                    status: pb::StreamStatus::StreamInactive as i32,
                    protected_ts: None,
                });
            }
            Err(e) => return Err(e),
        };
        self.check_owner(user, &record)?;
        let status = stream_status(Some(record.status));
        let mut protected_ts = progress.protected_ts;
        if status == pb::StreamStatus::StreamActive {
            let replicated = ldr_proto::ts_or_zero(request.replicated_time);
            if replicated > protected_ts {
                self.kv
                    .update_protection(&payload.pts_id, replicated)
                    .await?;
                protected_ts = replicated;
            }
            let now = Timestamp::new(self.kv.clock().physical_now_ns(), 0);
            let expiration =
                now.add_nanos(payload.expiration_window_secs.saturating_mul(1_000_000_000));
            self.registry
                .update_progress(stream_id, &move |r| {
                    if let Ok(mut p) =
                        serde_json::from_value::<ProducerProgress>(r.progress.clone())
                    {
                        p.expiration = std::cmp::max(p.expiration, expiration);
                        p.protected_ts = std::cmp::max(p.protected_ts, protected_ts);
                        if let Ok(v) = serde_json::to_value(&p) {
                            r.progress = v;
                        }
                    }
                })
                .await?;
        }
        Ok(pb::HeartbeatResponse {
            status: status as i32,
            protected_ts: Some(protected_ts.into()),
        })
    }

    pub async fn complete_stream(
        &self,
        user: &str,
        request: pb::CompleteStreamRequest,
    ) -> Result<()> {
        let (record, _, _) = self.producer_job(request.stream_id).await?;
        self.check_owner(user, &record)?;
        let successful = request.successful_ingestion;
        self.registry
            .update_progress(request.stream_id, &move |r| {
                if let Ok(mut p) = serde_json::from_value::<ProducerProgress>(r.progress.clone()) {
                    p.state = if successful { StreamState::FinishedSuccessfully } else { StreamState::FinishedUnsuccessfully };
                    if let Ok(v) = serde_json::to_value(&p) {
                        r.progress = v;
                    }
                }
                if !successful {
                    r.running_status = Some(
                        "canceling this producer job as the corresponding stream ingestion did not finish successfully"
                            .to_string(),
                    );
                }
            })
            .await?;
        info!(
            stream_id = request.stream_id,
            successful, "destination completed the stream"
        );
        Ok(())
    }

    pub async fn stream_partition(
        self: &Arc<Self>,
        user: &str,
        request: pb::StreamPartitionRequest,
    ) -> Result<ReceiverStream<std::result::Result<pb::StreamEvent, Status>>> {
        let (record, _, _) = self.producer_job(request.stream_id).await?;
        self.check_owner(user, &record)?;
        if record.status != JobStatus::Running {
            return Err(StreamError::StreamNotRunning(request.stream_id));
        }
        let options = PartitionOptions::from_request(&request, &self.kv)?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let rangefeeds = self.rangefeeds.clone();
        let kv = self.kv.clone();
        tokio::spawn(async move {
            run_partition(kv, rangefeeds, options, tx).await;
        });
        Ok(ReceiverStream::new(rx))
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<serde_json::Value> {
    serde_json::to_value(value)
        .map_err(|e| StreamError::Internal(format!("cannot encode job record: {e}")))
}

/// The tonic service wrapper. It can be mounted before the node has joined a cluster
/// ([`ReplicationStreamService::deferred`]); calls fail as unavailable until the producer is set.
#[derive(Clone)]
pub struct ReplicationStreamService {
    producer: Arc<std::sync::OnceLock<Arc<Producer>>>,
}

impl ReplicationStreamService {
    pub fn new(producer: Arc<Producer>) -> Self {
        let cell = std::sync::OnceLock::new();
        let _ = cell.set(producer);
        ReplicationStreamService {
            producer: Arc::new(cell),
        }
    }

    /// A service whose producer is installed later with [`ReplicationStreamService::set`].
    pub fn deferred() -> Self {
        ReplicationStreamService {
            producer: Arc::new(std::sync::OnceLock::new()),
        }
    }

    pub fn set(&self, producer: Arc<Producer>) {
        let _ = self.producer.set(producer);
    }

    fn producer(&self) -> std::result::Result<&Arc<Producer>, Status> {
        self.producer
            .get()
            .ok_or_else(|| Status::unavailable("node is not initialized yet"))
    }

    pub fn into_server(self) -> pb::replication_stream_server::ReplicationStreamServer<Self> {
        pb::replication_stream_server::ReplicationStreamServer::new(self)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(256 << 20)
    }
}

type EventStream = Pin<Box<dyn Stream<Item = std::result::Result<pb::StreamEvent, Status>> + Send>>;

impl ReplicationStreamService {
    /// The user a request names, once its password checks out (on a secure source; an
    /// insecure one trusts the name, as its SQL logins do).
    async fn caller<T>(&self, request: &Request<T>) -> std::result::Result<String, Status> {
        let user = user_of(request)?;
        let password = request
            .metadata()
            .get(ldr_proto::metadata::PASSWORD)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        self.producer()?
            .catalog
            .authenticate(&user, password)
            .await?;
        Ok(user)
    }
}

#[tonic::async_trait]
impl pb::replication_stream_server::ReplicationStream for ReplicationStreamService {
    async fn start_stream(
        &self,
        request: Request<pb::StartStreamRequest>,
    ) -> std::result::Result<Response<pb::StartStreamResponse>, Status> {
        let user = self.caller(&request).await?;
        Ok(Response::new(
            self.producer()?
                .start_stream(&user, request.into_inner())
                .await?,
        ))
    }

    async fn plan_stream(
        &self,
        request: Request<pb::PlanStreamRequest>,
    ) -> std::result::Result<Response<pb::PlanStreamResponse>, Status> {
        let user = self.caller(&request).await?;
        Ok(Response::new(
            self.producer()?
                .plan_stream(&user, request.into_inner().stream_id)
                .await?,
        ))
    }

    type StreamPartitionStream = EventStream;

    async fn stream_partition(
        &self,
        request: Request<pb::StreamPartitionRequest>,
    ) -> std::result::Result<Response<Self::StreamPartitionStream>, Status> {
        let user = self.caller(&request).await?;
        let stream = self
            .producer()?
            .stream_partition(&user, request.into_inner())
            .await?;
        Ok(Response::new(Box::pin(stream)))
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> std::result::Result<Response<pb::HeartbeatResponse>, Status> {
        let user = self.caller(&request).await?;
        Ok(Response::new(
            self.producer()?
                .heartbeat(&user, request.into_inner())
                .await?,
        ))
    }

    async fn complete_stream(
        &self,
        request: Request<pb::CompleteStreamRequest>,
    ) -> std::result::Result<Response<pb::CompleteStreamResponse>, Status> {
        let user = self.caller(&request).await?;
        self.producer()?
            .complete_stream(&user, request.into_inner())
            .await?;
        Ok(Response::new(pb::CompleteStreamResponse {}))
    }
}

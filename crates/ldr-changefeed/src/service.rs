//! The `Changefeed` gRPC service every node serves to the coordinators of its cluster:
//! `StreamSpans` runs the replication partition loop ([`ldr_stream::run_partition`]) over
//! spans this node serves, with every origin (rows LDR wrote are changes too), and
//! `WriteNodelocal` / `ReadNodelocal` / `ListNodelocal` give other nodes this node's
//! `<store>/extern` (changefeed sink files, backup collections).

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::Stream;
use ldr_kv::KvClient;
use ldr_proto::pb;
use ldr_rangefeed::{RangefeedManager, StartFrom};
use ldr_stream::{PartitionOptions, run_partition};
use ldr_types::{ResolvedSpan, Span, SpanFrontier, Timestamp};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

/// What the service needs of its node.
pub struct NodeChangefeeds {
    pub kv: KvClient,
    pub rangefeeds: Arc<RangefeedManager>,
    /// `<store>/extern`: the root of `nodelocal://<this node>/…`.
    pub extern_dir: PathBuf,
}

/// The tonic service; mounted before the node is initialized ([`ChangefeedService::deferred`]).
#[derive(Clone, Default)]
pub struct ChangefeedService {
    node: Arc<OnceLock<Arc<NodeChangefeeds>>>,
}

impl ChangefeedService {
    pub fn deferred() -> Self {
        ChangefeedService::default()
    }

    pub fn set(&self, node: Arc<NodeChangefeeds>) {
        let _ = self.node.set(node);
    }

    fn node(&self) -> Result<&Arc<NodeChangefeeds>, Status> {
        self.node
            .get()
            .ok_or_else(|| Status::unavailable("node is not initialized yet"))
    }

    pub fn into_server(self) -> pb::changefeed_server::ChangefeedServer<Self> {
        pb::changefeed_server::ChangefeedServer::new(self)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(256 << 20)
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::StreamEvent, Status>> + Send>>;

/// The partition options of a request (pure; tested below).
pub fn partition_options(
    request: &pb::ChangefeedSpansRequest,
    min_checkpoint_frequency: Duration,
) -> Result<PartitionOptions, Status> {
    let spans: Vec<Span> = request.spans.iter().cloned().map(Span::from).collect();
    if spans.is_empty() || spans.iter().any(Span::is_empty) {
        return Err(Status::invalid_argument(
            "changefeed span request needs non-empty spans",
        ));
    }
    let start = match request.initial_scan_ts {
        Some(ts) => StartFrom::InitialScan { at: ts.into() },
        None => {
            let mut frontier = SpanFrontier::new(spans.clone(), Timestamp::ZERO);
            for r in &request.progress {
                let r = ResolvedSpan::from(r.clone());
                frontier.forward(&r.span, r.ts);
            }
            StartFrom::CatchUp {
                from: frontier.entries(),
            }
        }
    };
    Ok(PartitionOptions {
        stream_id: request.job_id,
        spans,
        start,
        with_filtering: request.with_filtering,
        only_local_origin: false,
        batch_bytes_max: (request.batch_bytes_max as usize).clamp(1 << 10, 64 << 20),
        min_checkpoint_frequency,
    })
}

#[tonic::async_trait]
impl pb::changefeed_server::Changefeed for ChangefeedService {
    type StreamSpansStream = EventStream;

    async fn stream_spans(
        &self,
        request: Request<pb::ChangefeedSpansRequest>,
    ) -> Result<Response<Self::StreamSpansStream>, Status> {
        let node = self.node()?.clone();
        if !node.kv.settings().bool("kv.rangefeed.enabled") {
            return Err(Status::failed_precondition(
                "rangefeeds require the kv.rangefeed.enabled setting. See https://www.cockroachlabs.com/docs/stable/change-data-capture.html#enable-rangefeeds-to-reduce-latency",
            ));
        }
        let options = partition_options(
            &request.into_inner(),
            node.kv
                .settings()
                .duration("physical_replication.producer.min_checkpoint_frequency")
                .max(Duration::from_millis(10)),
        )?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            run_partition(node.kv.clone(), node.rangefeeds.clone(), options, tx).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn write_nodelocal(
        &self,
        request: Request<pb::NodelocalWriteRequest>,
    ) -> Result<Response<pb::NodelocalWriteResponse>, Status> {
        let node = self.node()?.clone();
        let request = request.into_inner();
        check_nodelocal_path(&request.path)?;
        let dir = node.extern_dir.clone();
        let path = request.path.clone();
        tokio::task::spawn_blocking(move || {
            crate::sink::write_file_at(&dir, &path, &request.contents)
        })
        .await
        .map_err(|e| Status::internal(format!("write task failed: {e}")))?
        .map_err(|e| Status::unavailable(format!("cannot write {}: {e}", request.path)))?;
        Ok(Response::new(pb::NodelocalWriteResponse {}))
    }

    async fn read_nodelocal(
        &self,
        request: Request<pb::NodelocalReadRequest>,
    ) -> Result<Response<pb::NodelocalReadResponse>, Status> {
        let node = self.node()?.clone();
        let request = request.into_inner();
        check_nodelocal_path(&request.path)?;
        let contents = ldr_backup::storage::read_local(&node.extern_dir, &request.path)
            .await
            .map_err(nodelocal_status)?;
        Ok(Response::new(pb::NodelocalReadResponse {
            found: contents.is_some(),
            contents: contents.unwrap_or_default(),
        }))
    }

    async fn list_nodelocal(
        &self,
        request: Request<pb::NodelocalListRequest>,
    ) -> Result<Response<pb::NodelocalListResponse>, Status> {
        let node = self.node()?.clone();
        let request = request.into_inner();
        check_nodelocal_path(&request.path)?;
        let dirs = ldr_backup::storage::list_local(
            node.extern_dir.join(&request.path),
            request.marker,
            request.depth as usize,
        )
        .await
        .map_err(nodelocal_status)?;
        Ok(Response::new(pb::NodelocalListResponse { dirs }))
    }
}

/// Refuses a path that leaves the external I/O directory (CockroachDB's text).
fn check_nodelocal_path(path: &str) -> Result<(), Status> {
    if path.split('/').any(|p| p == "..") || path.starts_with('/') {
        return Err(Status::invalid_argument(format!(
            "local file access to paths outside of external-io-dir is not allowed: {path}"
        )));
    }
    Ok(())
}

fn nodelocal_status(e: ldr_backup::BackupError) -> Status {
    match e {
        ldr_backup::BackupError::OutsideExternDir(_) | ldr_backup::BackupError::InvalidUri(_) => {
            Status::invalid_argument(e.to_string())
        }
        other => Status::unavailable(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_from_requests() {
        let span = Span::new(b"a".to_vec(), b"b".to_vec());
        let mut request = pb::ChangefeedSpansRequest {
            job_id: 1,
            spans: vec![span.clone().into()],
            initial_scan_ts: Some(Timestamp::new(5, 0).into()),
            progress: vec![],
            with_filtering: true,
            batch_bytes_max: 0,
        };
        let o = partition_options(&request, Duration::from_millis(50)).expect("valid");
        assert_eq!(
            o.start,
            StartFrom::InitialScan {
                at: Timestamp::new(5, 0)
            }
        );
        assert!(!o.only_local_origin, "changefeeds see every origin");
        assert!(o.with_filtering);
        request.initial_scan_ts = None;
        request.progress = vec![
            ResolvedSpan {
                span: span.clone(),
                ts: Timestamp::new(9, 0),
            }
            .into(),
        ];
        let o = partition_options(&request, Duration::from_millis(50)).expect("valid");
        assert_eq!(
            o.start,
            StartFrom::CatchUp {
                from: vec![ResolvedSpan {
                    span,
                    ts: Timestamp::new(9, 0)
                }]
            }
        );
        request.spans.clear();
        assert!(partition_options(&request, Duration::from_millis(50)).is_err());
    }
}

//! Running processors where the plan puts them: in this process when the chosen destination
//! node is this node, else on that node through the `Ingest.RunProcessor` RPC. Either way the
//! coordinator receives a stream of [`FlowUpdate`]s.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ldr_kv::{KvClient, NodeDescriptor};
use ldr_proto::pb;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tonic::transport::Endpoint;
use tracing::{debug, error};

use crate::applier::Applier;
use crate::error::{IngestError, Result};
use crate::metrics::Metrics;
use crate::panic_guard::catch_panic;
use crate::processor::Processor;

/// What the coordinator hears from its processors.
#[derive(Debug)]
pub enum FlowUpdate {
    Resolved {
        processor_id: u32,
        update: pb::ProcessorUpdate,
    },
    Failed {
        processor_id: u32,
        error: IngestError,
    },
}

/// Builds the applier a processor writes with (immediate or validated mode).
#[async_trait]
pub trait ApplierFactory: Send + Sync {
    async fn applier(&self, spec: &pb::ProcessorSpec) -> Result<Arc<dyn Applier>>;
}

/// Runs processors for the coordinators of this node and, through the Ingest service, for
/// coordinators on other nodes.
pub struct FlowRunner {
    kv: KvClient,
    appliers: Arc<dyn ApplierFactory>,
    metrics: Arc<Metrics>,
}

impl FlowRunner {
    pub fn new(
        kv: KvClient,
        appliers: Arc<dyn ApplierFactory>,
        metrics: Arc<Metrics>,
    ) -> Arc<FlowRunner> {
        Arc::new(FlowRunner {
            kv,
            appliers,
            metrics,
        })
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn kv(&self) -> &KvClient {
        &self.kv
    }

    /// Runs a processor here until it fails or `updates` closes.
    ///
    /// A panic inside the processor is caught here, the last line of defence: it is logged and
    /// counted, and the flow fails with a retryable error as any other processor error does;
    /// the node and its other jobs keep running.
    pub async fn run_local(
        &self,
        spec: pb::ProcessorSpec,
        updates: mpsc::Sender<pb::ProcessorUpdate>,
    ) -> Result<()> {
        let (job_id, processor_id) = (spec.job_id, spec.processor_id);
        let run = async {
            let applier = self.appliers.applier(&spec).await?;
            let processor = Processor::new(self.kv.clone(), spec, applier, self.metrics.clone());
            processor.run(updates).await
        };
        // What outlives the processor (metrics, the KV client, the updates channel) is
        // consistent at every await point, so catching its panic is sound.
        match catch_panic(run).await {
            Ok(result) => result,
            Err(message) => {
                self.metrics.processor_panics.inc(1);
                error!(job_id, processor_id, panic = %message, "processor panicked; failing its flow");
                Err(IngestError::Retryable(format!(
                    "processor {processor_id} panicked: {message}"
                )))
            }
        }
    }

    /// Starts processor `spec` on `node` and forwards its updates to `tx`.
    pub fn spawn(
        self: &Arc<Self>,
        node: NodeDescriptor,
        spec: pb::ProcessorSpec,
        tx: mpsc::Sender<FlowUpdate>,
    ) -> JoinHandle<()> {
        let runner = self.clone();
        tokio::spawn(async move {
            let processor_id = spec.processor_id;
            let result = if node.node_id == runner.kv.node_id() {
                runner.run_here(spec, &tx).await
            } else {
                runner.run_remote(&node, spec, &tx).await
            };
            if let Err(error) = result {
                let _ = tx
                    .send(FlowUpdate::Failed {
                        processor_id,
                        error,
                    })
                    .await;
            }
        })
    }

    async fn run_here(&self, spec: pb::ProcessorSpec, tx: &mpsc::Sender<FlowUpdate>) -> Result<()> {
        let processor_id = spec.processor_id;
        let (utx, mut urx) = mpsc::channel(16);
        let forward = async {
            while let Some(update) = urx.recv().await {
                if tx
                    .send(FlowUpdate::Resolved {
                        processor_id,
                        update,
                    })
                    .await
                    .is_err()
                {
                    break;
                }
            }
        };
        let (result, ()) = tokio::join!(self.run_local(spec, utx), forward);
        result
    }

    async fn run_remote(
        &self,
        node: &NodeDescriptor,
        spec: pb::ProcessorSpec,
        tx: &mpsc::Sender<FlowUpdate>,
    ) -> Result<()> {
        let processor_id = spec.processor_id;
        let endpoint = Endpoint::from_shared(format!("http://{}", node.address))
            .map_err(|e| IngestError::Retryable(format!("bad node address {}: {e}", node.address)))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(10));
        let channel = ldr_security::dial::node_channel(endpoint)
            .await
            .map_err(|e| {
                IngestError::Retryable(format!(
                    "cannot reach destination node {}: {e}",
                    node.node_id
                ))
            })?;
        let mut client = pb::ingest_client::IngestClient::new(channel);
        let mut stream = client.run_processor(spec).await?.into_inner();
        loop {
            match stream.message().await {
                Ok(Some(update)) => {
                    if tx
                        .send(FlowUpdate::Resolved {
                            processor_id,
                            update,
                        })
                        .await
                        .is_err()
                    {
                        return Ok(());
                    }
                }
                Ok(None) => {
                    return Err(IngestError::Retryable(format!(
                        "processor on node {} ended",
                        node.node_id
                    )));
                }
                Err(status) => {
                    debug!(node_id = node.node_id, %status, "remote processor failed");
                    return Err(IngestError::from_remote(&status));
                }
            }
        }
    }
}

/// The `Ingest` gRPC service: runs processors for coordinators on other nodes. Mountable
/// before the node is initialized ([`IngestService::deferred`]).
#[derive(Clone)]
pub struct IngestService {
    runner: Arc<std::sync::OnceLock<Arc<FlowRunner>>>,
}

impl IngestService {
    pub fn new(runner: Arc<FlowRunner>) -> IngestService {
        let service = IngestService::deferred();
        service.set(runner);
        service
    }

    pub fn deferred() -> IngestService {
        IngestService {
            runner: Arc::new(std::sync::OnceLock::new()),
        }
    }

    pub fn set(&self, runner: Arc<FlowRunner>) {
        let _ = self.runner.set(runner);
    }

    pub fn into_server(self) -> pb::ingest_server::IngestServer<Self> {
        pb::ingest_server::IngestServer::new(self)
    }
}

type UpdateStream = std::pin::Pin<
    Box<dyn futures::Stream<Item = std::result::Result<pb::ProcessorUpdate, tonic::Status>> + Send>,
>;

#[tonic::async_trait]
impl pb::ingest_server::Ingest for IngestService {
    type RunProcessorStream = UpdateStream;

    async fn run_processor(
        &self,
        request: tonic::Request<pb::ProcessorSpec>,
    ) -> std::result::Result<tonic::Response<Self::RunProcessorStream>, tonic::Status> {
        let runner = self
            .runner
            .get()
            .cloned()
            .ok_or_else(|| tonic::Status::unavailable("node is not initialized yet"))?;
        let spec = request.into_inner();
        let (out_tx, out_rx) =
            mpsc::channel::<std::result::Result<pb::ProcessorUpdate, tonic::Status>>(16);
        tokio::spawn(async move {
            let (utx, mut urx) = mpsc::channel(16);
            let out = out_tx.clone();
            let forward = async move {
                while let Some(update) = urx.recv().await {
                    if out.send(Ok(update)).await.is_err() {
                        break;
                    }
                }
            };
            let run = async {
                // Stop when the coordinator hangs up.
                tokio::select! {
                    r = runner.run_local(spec, utx) => r,
                    _ = out_tx.closed() => Ok(()),
                }
            };
            let (result, ()) = tokio::join!(run, forward);
            if let Err(e) = result {
                let _ = out_tx.send(Err(e.into())).await;
            }
        });
        Ok(tonic::Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(out_rx),
        )))
    }
}

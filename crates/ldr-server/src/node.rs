//! One node process: binds the listen and HTTP ports, starts the cluster layer, and once the
//! node belongs to an initialized cluster, the job registry, the replication producer, the
//! ingestion flows and SQL.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use ldr_ingest::{FlowRunner, IngestService, LdrResumer};
use ldr_jobs::{JobType, Registry};
use ldr_kv::{KvClient, KvNode, NodeConfig};
use ldr_security::NodeTls;
use ldr_stream::{Producer, ProducerResumer, ReplicationStreamService};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tracing::{error, info, warn};

use crate::http::{self, HttpState};
use crate::listener::{self, PgHandler};
use crate::sql::SqlWiring;

/// How a node starts (`ldr start` flags): the cluster layer's node configuration.
pub use ldr_kv::NodeConfig as ServerConfig;

/// Environment variable that shifts this node's physical clock (testbed clock skew).
pub const CLOCK_OFFSET_ENV: &str = "LDR_CLOCK_OFFSET_NS";

/// The running pieces of an initialized node.
pub struct Node {
    pub kv: KvClient,
    pub registry: Arc<Registry>,
    pub metrics: Arc<ldr_ingest::metrics::Metrics>,
    pub sql: SqlWiring,
}

/// Runs a node until SIGINT/SIGTERM: insecure (`tls` is `None`, `--insecure`) or secure
/// (`--certs-dir`: TLS on the one port, node certificates between nodes, logins by client
/// certificate or password).
/// Runs a node until it is asked to stop. `max_sql_memory`: the node's SQL memory in bytes
/// (default: a quarter of the machine's).
pub async fn run(
    config: ServerConfig,
    tls: Option<NodeTls>,
    max_sql_memory: Option<u64>,
) -> Result<()> {
    if let Some(tls) = &tls {
        // Every dialer of this process (KV, Raft, remote processors) now uses TLS.
        ldr_security::dial::set_node_client(tls.node_client.clone());
        info!(certs_dir = %tls.certs_dir.display(), "secure mode");
    } else {
        warn!("running in insecure mode: no TLS, no password checks; anyone can connect as root");
    }
    let listener = TcpListener::bind(&config.listen_addr)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen_addr))?;
    let http_listener = TcpListener::bind(&config.http_addr)
        .await
        .with_context(|| format!("cannot listen on {}", config.http_addr))?;
    let listen_addr: SocketAddr = listener.local_addr()?;
    info!(%listen_addr, http = %http_listener.local_addr()?, store = %config.store_dir.display(), "starting node");

    // Advertise the addresses actually bound (a `:0` port becomes the real one).
    let kv_node = KvNode::start(NodeConfig {
        listen_addr: listen_addr.to_string(),
        http_addr: http_listener.local_addr()?.to_string(),
        ..config.clone()
    })
    .await
    .context("cannot start the node")?;
    if let Some(offset) = std::env::var(CLOCK_OFFSET_ENV)
        .ok()
        .and_then(|v| v.parse::<i64>().ok())
    {
        warn!(
            offset_ns = offset,
            "physical clock shifted by {CLOCK_OFFSET_ENV}"
        );
        kv_node.client().clock().set_physical_offset_ns(offset);
    }

    // gRPC: mounted now (joins need the KV service); the replication services answer
    // "unavailable" until the node is initialized.
    let stream_service = ReplicationStreamService::deferred();
    let ingest_service = IngestService::deferred();
    let changefeed_service = ldr_changefeed::ChangefeedService::deferred();
    let (grpc_tx, grpc_rx) = mpsc::channel(128);
    // The cluster-internal services want a node certificate on TLS connections; the
    // replication stream service is for other clusters (they log in with a password).
    use ldr_security::conn::require_node_certificate as node_only;
    use tonic::service::interceptor::InterceptedService;
    let grpc = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .add_service(InterceptedService::new(kv_node.grpc_service(), node_only))
        .add_service(InterceptedService::new(kv_node.raft_service(), node_only))
        .add_service(stream_service.clone().into_server())
        .add_service(InterceptedService::new(
            ingest_service.clone().into_server(),
            node_only,
        ))
        .add_service(InterceptedService::new(
            changefeed_service.clone().into_server(),
            node_only,
        ))
        .serve_with_incoming(ReceiverStream::new(grpc_rx));
    tokio::spawn(async move {
        if let Err(e) = grpc.await {
            error!(error = %e, "grpc server stopped");
        }
    });

    let ready = Arc::new(AtomicBool::new(false));
    let node_cell: Arc<tokio::sync::OnceCell<Arc<Node>>> = Arc::new(tokio::sync::OnceCell::new());
    let pg: PgHandler = {
        let node_cell = node_cell.clone();
        Arc::new(move |stream, peer| {
            let node_cell = node_cell.clone();
            Box::pin(async move {
                // Connections before initialization wait for it (as CockroachDB's do).
                let node = tokio::time::timeout(Duration::from_secs(60), async {
                    loop {
                        if let Some(n) = node_cell.get() {
                            return n.clone();
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                })
                .await;
                match node {
                    Ok(node) => node.sql.serve(stream, peer).await,
                    Err(_) => {
                        warn!(%peer, "sql connection dropped: node not initialized after 60s")
                    }
                }
            })
        })
    };
    tokio::spawn(listener::accept_loop(
        listener,
        grpc_tx,
        pg,
        tls.as_ref().map(|t| t.grpc_server.clone()),
    ));

    let metrics = Arc::new(ldr_ingest::metrics::Metrics::new());
    let ttl_metrics = Arc::new(crate::ttl::TtlMetrics::default());
    let changefeed_metrics = Arc::new(ldr_changefeed::metrics::ChangefeedMetrics::default());
    // The time series sampler renders what `/metrics` renders (plus its own gauges).
    let ts_gauges: Arc<std::sync::OnceLock<Arc<crate::timeseries::Timeseries>>> =
        Arc::new(std::sync::OnceLock::new());
    let render_metrics: http::MetricsRenderer = {
        let (metrics, ttl_metrics, changefeed_metrics, ts_gauges, node_cell) = (
            metrics.clone(),
            ttl_metrics.clone(),
            changefeed_metrics.clone(),
            ts_gauges.clone(),
            node_cell.clone(),
        );
        Arc::new(move || {
            let mut out = String::new();
            metrics.render(&mut out);
            ttl_metrics.render(&mut out);
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            changefeed_metrics.render(&mut out, now);
            if let Some(ts) = ts_gauges.get() {
                ts.render_gauges(&mut out);
            }
            crate::timeseries::render_sql_stats(
                node_cell.get().map(|n| n.sql.server.stats()),
                &mut out,
            );
            out
        })
    };
    let ts = match crate::ts_store::TsStore::open(
        kv_node.engine().clone(),
        crate::timeseries::config_from_env(),
    ) {
        Ok(store) => {
            let ts = Arc::new(crate::timeseries::Timeseries::new(
                store,
                render_metrics.clone(),
            ));
            let _ = ts_gauges.set(ts.clone());
            ts.clone().spawn(node_cell.clone());
            Some(ts)
        }
        Err(e) => {
            warn!(error = %e, "time series store unavailable");
            None
        }
    };
    let http_state = HttpState {
        ready: ready.clone(),
        ts,
        node: node_cell.clone(),
        metrics: render_metrics,
        secure: tls.is_some(),
        sessions: Arc::new(crate::console_auth::Sessions::default()),
        nodes_json: {
            let node_cell = node_cell.clone();
            Arc::new(move |_| {
                let node_cell = node_cell.clone();
                Box::pin(async move {
                    match node_cell.get() {
                        Some(node) => nodes_json(&node.kv).await,
                        None => "[]".to_string(),
                    }
                })
            })
        },
        protected_timestamps_json: {
            let node_cell = node_cell.clone();
            Arc::new(move |_| {
                let node_cell = node_cell.clone();
                Box::pin(async move {
                    match node_cell.get() {
                        Some(node) => match node.kv.protections().await {
                            Ok(records) => serde_json::Value::Array(
                                records
                                    .iter()
                                    .map(|r| {
                                        serde_json::json!({
                                            "id": r.id,
                                            "ts": r.ts.to_decimal_string(),
                                            "owner": r.owner,
                                        })
                                    })
                                    .collect(),
                            )
                            .to_string(),
                            Err(e) => serde_json::json!({ "error": e.to_string() }).to_string(),
                        },
                        None => "[]".to_string(),
                    }
                })
            })
        },
    };
    tokio::spawn(http::serve(http_listener, http_state));

    // Wait for `ldr init` or a successful join.
    tokio::select! {
        r = kv_node.wait_initialized() => r.context("node failed before joining a cluster")?,
        _ = shutdown_signal() => {
            kv_node.stop().await;
            return Ok(());
        }
    }
    let kv = kv_node.client();
    info!(node_id = kv.node_id(), cluster_id = %kv.cluster_id(), "node initialized");

    let registry = Registry::start(kv.clone());
    // The SQL layer reads the system keyspace (node 1) to start: while node 1 is down or
    // unreachable, keep the process up and retry, as the registry does, instead of exiting.
    let sql = {
        let mut backoff = Duration::from_millis(250);
        loop {
            match SqlWiring::start(
                kv.clone(),
                registry.clone(),
                metrics.clone(),
                tls.as_ref().map(|t| t.sql_server.clone()),
            )
            .await
            {
                Ok(sql) => break sql,
                Err(e) => {
                    warn!(error = %e, ?backoff, "cannot start SQL yet (is node 1 reachable?); retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown_signal() => {
                            kv_node.stop().await;
                            return Ok(());
                        }
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    };
    if let Some(bytes) = max_sql_memory {
        sql.server.set_max_sql_memory(bytes);
    }
    let producer = Arc::new(Producer {
        kv: kv.clone(),
        registry: registry.clone(),
        catalog: sql.source_catalog(),
        rangefeeds: kv_node.rangefeeds().clone(),
    });
    stream_service.set(producer.clone());
    crate::backup::register(&kv, &registry, &sql, config.store_dir.join("extern"));
    crate::changefeed::register(
        &changefeed_service,
        &kv,
        &kv_node,
        &registry,
        &sql,
        producer,
        config.store_dir.join("extern"),
        changefeed_metrics.clone(),
    );
    let flows = FlowRunner::new(kv.clone(), sql.applier_factory(), metrics.clone());
    ingest_service.set(flows.clone());
    registry.register_resumer(
        JobType::ReplicationStreamProducer,
        Arc::new(ProducerResumer {
            catalog: sql.source_catalog(),
        }),
    );
    registry.register_resumer(
        JobType::LogicalReplication,
        Arc::new(LdrResumer {
            flows: flows.clone(),
            tables: sql.destination_tables(),
        }),
    );
    sql.register_jobs(&registry, ttl_metrics);
    kv_node.set_drain_hook(Arc::new(JobsDrain(registry.clone())));
    let node = Arc::new(Node {
        kv,
        registry,
        metrics,
        sql,
    });
    let _ = node_cell.set(node);
    ready.store(true, Ordering::Release);
    info!("node ready");

    tokio::select! {
        // `ldr node drain` drained the node and asked it to stop.
        _ = kv_node.shutdown_requested() => info!("drained; shutting down"),
        // A graceful stop drains first (leases and job claims move at once instead of after
        // the liveness TTL), as CockroachDB's does, within a deadline.
        _ = shutdown_signal() => {
            info!("draining before shutting down");
            match kv_node.drain(GRACEFUL_DRAIN).await {
                Ok(left) if left.done() => info!("drained"),
                Ok(left) => warn!(
                    leases = left.remaining_leases,
                    jobs = left.remaining_jobs,
                    "shutting down before the drain finished"
                ),
                Err(e) => warn!(error = %e, "drain failed; shutting down"),
            }
        }
    }
    info!("shutting down");
    ready.store(false, Ordering::Release);
    kv_node.stop().await;
    Ok(())
}

/// The cluster's nodes as JSON for `GET /_status/nodes`.
async fn nodes_json(kv: &KvClient) -> String {
    let nodes = match kv.nodes().await {
        Ok(nodes) => nodes,
        Err(e) => return serde_json::json!({ "error": e.to_string() }).to_string(),
    };
    // Replica counts come from the range descriptors (a dead node reports nothing).
    let replicas = kv.replica_counts().await.unwrap_or_default();
    let rows: Vec<serde_json::Value> = nodes
        .iter()
        .map(|n| {
            serde_json::json!({
                "node_id": n.node.node_id,
                "address": n.node.address,
                "sql_address": n.node.sql_address,
                "http_address": n.node.http_address,
                "started_at": crate::console::format_ts(n.node.started_at),
                "is_live": n.is_live,
                "is_draining": n.is_draining,
                "membership": n.membership.as_str(),
                "replicas": replicas.get(&n.node.node_id).copied().unwrap_or(0),
                "leases": n.leases,
            })
        })
        .collect();
    serde_json::Value::Array(rows).to_string()
}

/// How long a graceful stop (SIGTERM, SIGINT) drains before it stops anyway.
const GRACEFUL_DRAIN: Duration = Duration::from_secs(10);

/// Releases the node's job claims when it drains.
struct JobsDrain(Arc<Registry>);

#[async_trait::async_trait]
impl ldr_kv::DrainHook for JobsDrain {
    async fn drain(&self) -> usize {
        self.0.drain(Duration::from_secs(5)).await
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

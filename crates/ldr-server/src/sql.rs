//! Wires the SQL layer to the replication crates on one node: the pgwire server, the internal
//! executor the DLQ uses, the catalog views of the producer and the LDR job, the immediate
//! applier, and the `CREATE LOGICAL REPLICATION STREAM` hook.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Result;
use async_trait::async_trait;
use ldr_ingest::metrics::Metrics;
use ldr_ingest::{
    ApplierFactory, CreateContext, DestinationTables, ImmediateApplierFactory, InternalSql,
    LdrPayload, LdrProgress, ModeApplierFactory, StreamRequest,
};
use ldr_jobs::{JobRecord, Registry};
use ldr_kv::KvClient;
use ldr_sql::catalog::Catalog;
use ldr_sql::exec::{
    LdrStreamRequest, LogicalReplicationJobInfo, ReplicationStatements, SqlConfig, SqlServer,
};
use ldr_sql::{Datum, SqlError};
use ldr_stream::SourceCatalog;
use ldr_types::JobId;
use tokio::net::TcpStream;
use tracing::debug;

use crate::catalog_adapters::{SqlDestinationTables, SqlSourceCatalog};

/// The SQL side of a node, and the replication pieces built on it.
pub struct SqlWiring {
    pub server: Arc<SqlServer>,
    pub catalog: Arc<Catalog>,
    internal: Arc<NodeSql>,
    metrics: Arc<Metrics>,
    kv: KvClient,
    /// TLS for SQL clients (secure mode).
    tls: Option<Arc<rustls::ServerConfig>>,
}

/// The internal executor: statements run as the internal user `node`, one session per call.
struct NodeSql {
    server: Arc<SqlServer>,
}

#[async_trait]
impl InternalSql for NodeSql {
    async fn execute(
        &self,
        database: &str,
        sql: &str,
        params: Vec<Datum>,
    ) -> std::result::Result<u64, SqlError> {
        let mut session = self.server.node_session(database);
        let prepared = session.prepare(sql, &[]).await?;
        let result = session.execute_prepared(&prepared, params).await?;
        Ok(result.rows_affected.unwrap_or(0) as u64)
    }
}

/// `CREATE LOGICAL REPLICATION STREAM`'s replication half.
struct Hook {
    ctx: CreateContext,
}

#[async_trait]
impl ReplicationStatements for Hook {
    async fn create_logical_replication_stream(
        &self,
        request: LdrStreamRequest,
    ) -> ldr_sql::Result<JobId> {
        ldr_ingest::create_stream(&self.ctx, stream_request(request)).await
    }

    fn describe_job(&self, job: &JobRecord) -> Option<LogicalReplicationJobInfo> {
        let payload = LdrPayload::from_record(job).ok()?;
        // Progress that does not decode shows as no replicated time yet.
        let progress = LdrProgress::from_record(job).unwrap_or_default();
        Some(LogicalReplicationJobInfo {
            replicated_time: progress.replicated_ts(),
            replication_start_time: Some(payload.start_ts()),
            tables: payload.tables,
            conflict_resolution_type: payload.conflict_resolution_type,
            command: payload.command,
        })
    }
}

/// The SQL layer's request, as the replication layer takes it (no parser types).
fn stream_request(request: LdrStreamRequest) -> StreamRequest {
    let LdrStreamRequest {
        statement,
        external_connection,
        source_uri,
        into,
        user,
        database: _,
        validated,
        cursor,
        default_function,
        discard,
    } = request;
    StreamRequest {
        command: statement.statement,
        source_tables: statement.from_tables,
        external_connection,
        source_uri,
        destinations: into.into_iter().map(|t| t.descriptor).collect(),
        user,
        validated,
        cursor,
        default_function,
        discard,
        label: statement.options.label,
        skip_schema_check: statement.options.skip_schema_check,
    }
}

impl SqlWiring {
    pub async fn start(
        kv: KvClient,
        registry: Arc<Registry>,
        metrics: Arc<Metrics>,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> Result<SqlWiring> {
        let config = SqlConfig {
            insecure: tls.is_none(),
        };
        let server = SqlServer::start(kv.clone(), registry.clone(), config).await?;
        let catalog = Arc::new(Catalog::new(kv.clone()));
        let internal = Arc::new(NodeSql {
            server: server.clone(),
        });
        server.set_replication_statements(Arc::new(Hook {
            ctx: CreateContext {
                kv: kv.clone(),
                registry,
                catalog: catalog.clone(),
                sql: internal.clone(),
            },
        }));
        Ok(SqlWiring {
            server,
            catalog,
            internal,
            metrics,
            kv,
            tls,
        })
    }

    /// Serves one pgwire connection; a panic while serving it ends only this connection
    /// (with a FATAL XX000 error to the client, see [`ldr_sql::connection_guard`]).
    pub async fn serve(&self, stream: TcpStream, peer: SocketAddr) {
        let server = self.server.clone();
        let tls = self.tls.clone();
        ldr_sql::connection_guard::serve_guarded(stream, peer, move |stream| async move {
            if let Err(e) = ldr_sql::protocol::serve_connection_tls(stream, server, tls).await {
                debug!(%peer, error = %e, "sql connection ended with an error");
            }
        })
        .await
    }

    pub fn source_catalog(&self) -> Arc<dyn SourceCatalog> {
        Arc::new(SqlSourceCatalog {
            catalog: self.catalog.clone(),
            secure: self.tls.is_some(),
        })
    }

    pub fn destination_tables(&self) -> Arc<dyn DestinationTables> {
        Arc::new(SqlDestinationTables {
            catalog: self.catalog.clone(),
        })
    }

    pub fn applier_factory(&self) -> Arc<dyn ApplierFactory> {
        Arc::new(ModeApplierFactory {
            immediate: ImmediateApplierFactory {
                kv: self.kv.clone(),
                catalog: self.catalog.clone(),
                sql: self.internal.clone(),
                metrics: self.metrics.clone(),
            },
            writer: self.server.clone(),
        })
    }

    /// Registers job types implemented on top of SQL (row-level TTL) and starts the TTL
    /// scheduler.
    pub fn register_jobs(
        &self,
        registry: &Arc<Registry>,
        ttl_metrics: Arc<crate::ttl::TtlMetrics>,
    ) {
        registry.register_resumer(
            ldr_jobs::JobType::RowLevelTtl,
            Arc::new(crate::ttl::TtlResumer {
                server: self.server.clone(),
                metrics: ttl_metrics,
            }),
        );
        crate::ttl::spawn_scheduler(self.server.clone(), registry.clone(), self.kv.clone());
    }
}

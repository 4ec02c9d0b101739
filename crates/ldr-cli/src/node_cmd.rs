//! `ldr init` and `ldr node status`.

use std::time::Duration;

use anyhow::{Context, Result, bail};

/// `ldr init --host`: bootstraps the cluster of the node at `host`.
pub async fn init(host: &str) -> Result<()> {
    match ldr_kv::bootstrap_remote(host).await {
        Ok(cluster_id) => {
            println!("Cluster successfully initialized");
            println!("cluster id: {cluster_id}");
            Ok(())
        }
        Err(ldr_kv::KvError::AlreadyInitialized) => bail!("cluster has already been initialized"),
        Err(e) => Err(e).with_context(|| format!("cannot initialize the cluster through {host}")),
    }
}

/// One row of `/_status/nodes`.
#[derive(Debug, serde::Deserialize)]
struct NodeRow {
    node_id: u32,
    address: String,
    sql_address: String,
    http_address: String,
    started_at: String,
    is_live: bool,
}

/// `ldr node status --host`: every node of the cluster, from the node's HTTP status endpoint.
pub async fn status(host: &str, format: crate::sql::Format) -> Result<()> {
    let info = ldr_kv::remote_node_info(host)
        .await
        .with_context(|| format!("cannot reach the node at {host}"))?;
    if !info.initialized {
        bail!("the node at {host} is not part of an initialized cluster yet (run ldr init)");
    }
    let http: std::net::SocketAddr = info.node.http_address.parse().with_context(|| {
        format!(
            "node reports an invalid http address {:?}",
            info.node.http_address
        )
    })?;
    let response = ldr_sim::http_get(http, "/_status/nodes", Duration::from_secs(10)).await?;
    if response.status != 200 {
        bail!(
            "GET /_status/nodes on {http} answered {}: {}",
            response.status,
            response.body.trim()
        );
    }
    let rows: Vec<NodeRow> =
        serde_json::from_str(&response.body).context("invalid /_status/nodes response")?;
    let result = crate::sql::StatementResult {
        columns: [
            "id",
            "address",
            "sql_address",
            "http_address",
            "started_at",
            "is_available",
            "is_live",
        ]
        .iter()
        .map(|c| c.to_string())
        .collect(),
        rows: rows
            .into_iter()
            .map(|r| {
                vec![
                    Some(r.node_id.to_string()),
                    Some(r.address),
                    Some(r.sql_address),
                    Some(r.http_address),
                    Some(r.started_at),
                    Some(r.is_live.to_string()),
                    Some(r.is_live.to_string()),
                ]
            })
            .collect(),
        affected: None,
    };
    crate::sql::print_result(&result, format, &mut std::io::stdout().lock())
}

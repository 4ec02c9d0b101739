//! `ldr init`, the `ldr node` commands (status, drain, decommission, recommission), and the
//! testbed's `ldr debug partition`.

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

/// `ldr debug partition --host H [--from A,B]`: cuts the node at `host` off from the nodes at
/// `from` (an empty list heals it).
pub async fn partition(host: &str, from: &[String]) -> Result<()> {
    for address in from {
        if address.parse::<std::net::SocketAddr>().is_err() && !address.contains(':') {
            bail!("--from takes HOST:PORT addresses, not {address:?}");
        }
    }
    ldr_kv::set_remote_partition(host, from)
        .await
        .with_context(|| format!("cannot reach the node at {host}"))?;
    if from.is_empty() {
        println!("{host}: partition healed");
    } else {
        println!("{host}: cut off from {}", from.join(", "));
    }
    Ok(())
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
    #[serde(default)]
    is_draining: bool,
    #[serde(default)]
    membership: String,
    #[serde(default)]
    replicas: u64,
    #[serde(default)]
    leases: u64,
}

/// Optional column groups of `ldr node status` (CockroachDB's `--ranges`, `--decommission`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Columns {
    pub ranges: bool,
    pub decommission: bool,
}

/// `--wait` of `ldr node decommission`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Wait {
    All,
    None,
}

/// How often decommission and drain report progress.
const POLL: Duration = Duration::from_millis(500);

/// The rows of `/_status/nodes` of the cluster of the node at `host`.
async fn node_rows(host: &str) -> Result<Vec<NodeRow>> {
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
    if let Ok(serde_json::Value::Object(error)) = serde_json::from_str(&response.body) {
        bail!(
            "the node at {host} cannot list the cluster's nodes: {}",
            error
                .get("error")
                .and_then(|e| e.as_str())
                .unwrap_or("unknown error")
        );
    }
    serde_json::from_str(&response.body).context("invalid /_status/nodes response")
}

/// `ldr node status --host`: every node of the cluster, from the node's HTTP status endpoint.
pub async fn status(host: &str, columns: Columns, format: crate::sql::Format) -> Result<()> {
    let rows = node_rows(host).await?;
    let mut names = vec![
        "id",
        "address",
        "sql_address",
        "http_address",
        "started_at",
        "is_available",
        "is_live",
    ];
    if columns.ranges {
        names.extend(["replicas_leaseholders", "replicas"]);
    }
    if columns.decommission {
        names.extend(["is_decommissioning", "membership", "is_draining"]);
    }
    let result = crate::sql::StatementResult {
        columns: names.iter().map(|c| c.to_string()).collect(),
        rows: rows
            .into_iter()
            .map(|r| {
                let mut row = vec![
                    Some(r.node_id.to_string()),
                    Some(r.address),
                    Some(r.sql_address),
                    Some(r.http_address),
                    Some(r.started_at),
                    Some(r.is_live.to_string()),
                    Some(r.is_live.to_string()),
                ];
                if columns.ranges {
                    row.push(Some(r.leases.to_string()));
                    row.push(Some(r.replicas.to_string()));
                }
                if columns.decommission {
                    row.push(Some((r.membership != "active").to_string()));
                    row.push(Some(r.membership));
                    row.push(Some(r.is_draining.to_string()));
                }
                row
            })
            .collect(),
        affected: None,
    };
    crate::sql::print_result(&result, format, &mut std::io::stdout().lock())
}

/// `ldr node drain --host`: drains the node (its leases and job claims move to other nodes;
/// it takes no new ones), reporting what is left, then stops it unless `shutdown` is false.
pub async fn drain(host: &str, shutdown: bool, wait: Duration) -> Result<()> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut last = None;
    loop {
        let progress = match ldr_kv::drain_remote(host, shutdown).await {
            Ok(progress) => progress,
            // It answered before: it finished draining and stopped meanwhile.
            Err(ldr_kv::KvError::NodeUnavailable { .. }) if shutdown && last.is_some() => {
                ldr_kv::DrainProgress::default()
            }
            Err(e) => {
                return Err(e).with_context(|| format!("cannot drain the node at {host}"));
            }
        };
        if last != Some(progress) {
            eprintln!(
                "node is draining... remaining: {} leases, {} jobs",
                progress.remaining_leases, progress.remaining_jobs
            );
            last = Some(progress);
        }
        if progress.done() {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "the node at {host} still holds {} leases and {} jobs after {wait:?}",
                progress.remaining_leases,
                progress.remaining_jobs
            );
        }
        tokio::time::sleep(POLL).await;
    }
    println!("node is draining... done");
    if shutdown {
        // The node stops on its own once drained; wait until its port is closed.
        let until = tokio::time::Instant::now() + Duration::from_secs(60);
        while tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(host))
            .await
            .is_ok_and(|c| c.is_ok())
        {
            if tokio::time::Instant::now() >= until {
                bail!("the node at {host} was drained but did not stop within 60s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        println!("node stopped");
    }
    Ok(())
}

/// `ldr node decommission N... --host`: marks the nodes decommissioning, then (with
/// `--wait=all`) reports their replica counts until none is left and marks them
/// decommissioned, as `cockroach node decommission` does.
pub async fn decommission(
    host: &str,
    node_ids: &[u32],
    wait: Wait,
    format: crate::sql::Format,
) -> Result<()> {
    ldr_kv::set_remote_membership(host, node_ids, ldr_kv::Membership::Decommissioning)
        .await
        .with_context(|| format!("cannot decommission through the node at {host}"))?;
    if wait == Wait::None {
        return print_decommission(host, node_ids, format).await;
    }
    let mut last: Option<Vec<u64>> = None;
    loop {
        let rows = node_rows(host).await?;
        let counts: Vec<u64> = node_ids
            .iter()
            .map(|id| {
                rows.iter()
                    .find(|r| r.node_id == *id)
                    .map(|r| r.replicas)
                    .unwrap_or(0)
            })
            .collect();
        if last.as_ref() != Some(&counts) {
            let progress: Vec<String> = node_ids
                .iter()
                .zip(&counts)
                .map(|(id, n)| format!("node {id}: {n} replicas"))
                .collect();
            eprintln!("decommissioning... {}", progress.join(", "));
            last = Some(counts.clone());
        }
        if counts.iter().all(|n| *n == 0) {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    ldr_kv::set_remote_membership(host, node_ids, ldr_kv::Membership::Decommissioned)
        .await
        .with_context(|| format!("cannot mark the nodes decommissioned through {host}"))?;
    print_decommission(host, node_ids, format).await?;
    println!();
    println!(
        "No more data reported on target nodes. Please verify cluster health before removing the nodes."
    );
    Ok(())
}

/// `ldr node recommission N... --host`.
pub async fn recommission(host: &str, node_ids: &[u32]) -> Result<()> {
    ldr_kv::set_remote_membership(host, node_ids, ldr_kv::Membership::Active)
        .await
        .with_context(|| format!("cannot recommission through the node at {host}"))?;
    println!("ok");
    Ok(())
}

async fn print_decommission(
    host: &str,
    node_ids: &[u32],
    format: crate::sql::Format,
) -> Result<()> {
    let rows = node_rows(host).await?;
    let result = crate::sql::StatementResult {
        columns: [
            "id",
            "is_live",
            "replicas",
            "is_decommissioning",
            "membership",
            "is_draining",
        ]
        .iter()
        .map(|c| c.to_string())
        .collect(),
        rows: rows
            .into_iter()
            .filter(|r| node_ids.contains(&r.node_id))
            .map(|r| {
                vec![
                    Some(r.node_id.to_string()),
                    Some(r.is_live.to_string()),
                    Some(r.replicas.to_string()),
                    Some((r.membership != "active").to_string()),
                    Some(r.membership),
                    Some(r.is_draining.to_string()),
                ]
            })
            .collect(),
        affected: None,
    };
    crate::sql::print_result(&result, format, &mut std::io::stdout().lock())
}

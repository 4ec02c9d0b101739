//! ldr-specific SQL helpers for end-to-end tests, the demo and the fuzzer: external
//! connections, LDR streams (both directions), the cluster's logical clock, and waiting for a
//! job's replicated time to pass a point.
//!
//! Statements follow DESIGN.md §7/§8 (CockroachDB's syntax). Everything here needs the real
//! `ldr` binary; the parsing parts are pure and unit-tested.

use std::time::Duration;

use ldr_types::Timestamp;

use crate::check::replicated_time::{JobSample, parse_jobs, parse_replicated_time};
use crate::cluster::Cluster;
use crate::error::{Result, SimError};
use crate::sql::{self, TextRows, wait_until};
use crate::workload::kv::check_identifier;

/// `CREATE EXTERNAL CONNECTION name AS '<source's external URL of node 1>'` on `dest`
/// (the URL goes through the source's fault proxies when it is proxied).
pub async fn create_external_connection(
    dest: &Cluster,
    name: &str,
    source: &Cluster,
) -> Result<()> {
    check_identifier(name)?;
    dest.exec(
        1,
        &format!(
            "CREATE EXTERNAL CONNECTION {name} AS '{}'",
            source.external_url(1)?
        ),
    )
    .await
}

/// `CREATE LOGICAL REPLICATION STREAM FROM TABLE(S) … ON 'external://conn' INTO TABLE(S) …
/// [WITH options]` on `dest`; returns the job id.
pub async fn create_stream(
    dest: &Cluster,
    connection: &str,
    source_tables: &[&str],
    dest_tables: &[&str],
    options: Option<&str>,
) -> Result<i64> {
    check_identifier(connection)?;
    for table in source_tables.iter().chain(dest_tables) {
        check_identifier(table)?;
    }
    if source_tables.is_empty() || source_tables.len() != dest_tables.len() {
        return Err(SimError::InvalidArgument(
            "source and destination table lists must be non-empty and equally long".into(),
        ));
    }
    let (from, into) = if source_tables.len() == 1 {
        (
            format!("TABLE {}", source_tables[0]),
            format!("TABLE {}", dest_tables[0]),
        )
    } else {
        (
            format!("TABLES ({})", source_tables.join(", ")),
            format!("TABLES ({})", dest_tables.join(", ")),
        )
    };
    let with = options.map(|o| format!(" WITH {o}")).unwrap_or_default();
    let statement = format!(
        "CREATE LOGICAL REPLICATION STREAM FROM {from} ON 'external://{connection}' INTO {into}{with}"
    );
    parse_job_id(&dest.query_text(1, &statement).await?)
}

/// Rangefeeds on (both clusters are sources), tables on both clusters, an external connection
/// each way, and one stream per direction. Returns the job ids `(on a, on b)`.
pub async fn setup_bidirectional(
    a: &Cluster,
    b: &Cluster,
    table: &str,
    create_table_sql: &str,
) -> Result<(i64, i64)> {
    setup_bidirectional_with(a, b, table, create_table_sql, None).await
}

/// [`setup_bidirectional`] with the streams' `WITH` options (e.g. `mode = 'validated'`).
pub async fn setup_bidirectional_with(
    a: &Cluster,
    b: &Cluster,
    table: &str,
    create_table_sql: &str,
    options: Option<&str>,
) -> Result<(i64, i64)> {
    for cluster in [a, b] {
        cluster
            .exec(1, "SET CLUSTER SETTING kv.rangefeed.enabled = true")
            .await?;
        cluster.exec(1, create_table_sql).await?;
    }
    create_external_connection(a, "ldr_sim_b", b).await?;
    create_external_connection(b, "ldr_sim_a", a).await?;
    let job_a = create_stream(a, "ldr_sim_b", &[table], &[table], options).await?;
    let job_b = create_stream(b, "ldr_sim_a", &[table], &[table], options).await?;
    Ok((job_a, job_b))
}

/// How a stream applies replicated rows at its destination (`WITH mode = …`): `immediate`
/// writes KV directly (the default), `validated` goes through the SQL write path with every
/// constraint enforced. Benchmarks and the fuzzer run either.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApplyMode {
    Immediate,
    Validated,
}

impl ApplyMode {
    /// Both, in the order a comparison runs them (the baseline first).
    pub const ALL: [ApplyMode; 2] = [ApplyMode::Immediate, ApplyMode::Validated];

    /// `immediate` / `validated` (the SQL option's value).
    pub fn as_str(self) -> &'static str {
        match self {
            ApplyMode::Immediate => "immediate",
            ApplyMode::Validated => "validated",
        }
    }

    /// The stream's `WITH` options for this mode. Immediate mode is the default and keeps the
    /// statement without options, exactly as before the mode could be chosen.
    pub fn stream_options(self) -> Option<&'static str> {
        match self {
            ApplyMode::Immediate => None,
            ApplyMode::Validated => Some("mode = 'validated'"),
        }
    }
}

impl std::fmt::Display for ApplyMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ApplyMode {
    type Err = SimError;

    fn from_str(text: &str) -> Result<ApplyMode> {
        match text.trim().to_ascii_lowercase().as_str() {
            "immediate" => Ok(ApplyMode::Immediate),
            "validated" => Ok(ApplyMode::Validated),
            other => Err(SimError::InvalidArgument(format!(
                "unknown LDR mode {other:?} (expected immediate or validated)"
            ))),
        }
    }
}

/// The `command` of job `job` in `SHOW LOGICAL REPLICATION JOBS WITH DETAILS` on any running
/// node of `cluster`: the statement that created it, options (and so the mode) included.
pub async fn job_command(cluster: &Cluster, job: i64) -> Result<String> {
    let client = any_node(cluster).await?;
    let rows = sql::query_text(&client, "SHOW LOGICAL REPLICATION JOBS WITH DETAILS").await?;
    job_command_of(&rows, job)
}

/// The `command` column of job `job`'s row (pure).
pub fn job_command_of(rows: &TextRows, job: i64) -> Result<String> {
    let (Some(id_column), Some(command_column)) = (rows.column("job_id"), rows.column("command"))
    else {
        return Err(SimError::Protocol(format!(
            "SHOW LOGICAL REPLICATION JOBS WITH DETAILS has no job_id or command column: {:?}",
            rows.columns
        )));
    };
    let id = job.to_string();
    rows.rows
        .iter()
        .find(|r| {
            r.get(id_column)
                .cloned()
                .flatten()
                .as_deref()
                .map(str::trim)
                == Some(&id)
        })
        .and_then(|r| r.get(command_column).cloned().flatten())
        .ok_or_else(|| SimError::Protocol(format!("job {job} is not listed with a command")))
}

/// The `job_id` column of a statement's result (pure).
pub fn parse_job_id(rows: &TextRows) -> Result<i64> {
    let column = rows.column("job_id").unwrap_or(0);
    rows.rows
        .first()
        .and_then(|r| r.get(column).cloned().flatten())
        .and_then(|text| text.trim().parse().ok())
        .ok_or_else(|| SimError::Protocol(format!("no job_id in result {rows:?}")))
}

/// `SELECT cluster_logical_timestamp()` on `node`.
pub async fn cluster_logical_timestamp(cluster: &Cluster, node: usize) -> Result<Timestamp> {
    let rows = cluster
        .query_text(node, "SELECT cluster_logical_timestamp()")
        .await?;
    let text = rows
        .rows
        .first()
        .and_then(|r| r.first().cloned().flatten())
        .unwrap_or_default();
    parse_replicated_time(&text)
        .ok_or_else(|| SimError::Protocol(format!("cluster_logical_timestamp() returned {text:?}")))
}

/// `SELECT crdb_internal.cluster_origin_id()`: the cluster's LWW identity (the larger wins an
/// exact timestamp tie).
pub async fn cluster_origin_id(cluster: &Cluster) -> Result<u32> {
    let rows = cluster
        .query_text(1, "SELECT crdb_internal.cluster_origin_id()")
        .await?;
    let text = rows
        .rows
        .first()
        .and_then(|r| r.first().cloned().flatten())
        .unwrap_or_default();
    text.trim()
        .parse::<u32>()
        .ok()
        .filter(|id| *id != 0)
        .ok_or_else(|| {
            SimError::Protocol(format!(
                "crdb_internal.cluster_origin_id() returned {text:?}"
            ))
        })
}

/// The greatest `cluster_logical_timestamp()` over the running nodes of `cluster`: no write
/// acknowledged by any of them so far has a later timestamp.
pub async fn cluster_now(cluster: &Cluster) -> Result<Timestamp> {
    let mut latest = None;
    let mut last_error = None;
    for node in cluster
        .nodes()
        .into_iter()
        .filter(|n| n.running && !n.paused)
    {
        match cluster_logical_timestamp(cluster, node.index).await {
            Ok(ts) => latest = latest.max(Some(ts)),
            Err(e) => last_error = Some(e),
        }
    }
    match (latest, last_error) {
        (Some(ts), _) => Ok(ts),
        (None, Some(e)) => Err(e),
        (None, None) => Err(SimError::Process(format!(
            "no node of cluster {} is running",
            cluster.name()
        ))),
    }
}

/// Waits until every job in `SHOW LOGICAL REPLICATION JOBS` on `cluster` (at least one)
/// reports a replicated time at or above `at`; returns the jobs' replicated times.
pub async fn wait_all_replicated_past(
    cluster: &Cluster,
    at: Timestamp,
    timeout: Duration,
) -> Result<Vec<(String, Timestamp)>> {
    let urls = cluster.urls();
    let mut next = 0usize;
    wait_until(
        &format!(
            "every LDR job on cluster {} to replicate past {at}",
            cluster.name()
        ),
        timeout,
        Duration::from_millis(200),
        || {
            next += 1;
            let url = urls[next % urls.len()].clone();
            async move {
                let client = sql::connect(&url, sql::CONNECT_TIMEOUT)
                    .await
                    .map_err(|e| e.to_string())?;
                let rows = sql::query_text(&client, "SHOW LOGICAL REPLICATION JOBS")
                    .await
                    .map_err(|e| e.to_string())?;
                let jobs = parse_jobs(&rows).map_err(|e| e.to_string())?;
                if jobs.is_empty() {
                    return Err("no logical replication job".to_string());
                }
                let behind: Vec<String> = jobs
                    .iter()
                    .filter(|j| j.replicated_time.is_none_or(|ts| ts < at))
                    .map(|j| {
                        format!(
                            "job {} {} at {}",
                            j.job_id,
                            j.status,
                            j.replicated_time
                                .map(|t| t.to_string())
                                .unwrap_or_else(|| "no replicated time".into())
                        )
                    })
                    .collect();
                if behind.is_empty() {
                    Ok(jobs
                        .iter()
                        .filter_map(|j| j.replicated_time.map(|t| (j.job_id.clone(), t)))
                        .collect())
                } else {
                    Err(behind.join("; "))
                }
            }
        },
    )
    .await
}

/// A SQL connection to the first running, unpaused node of `cluster`.
async fn any_node(cluster: &Cluster) -> Result<tokio_postgres::Client> {
    let mut last_error = None;
    for node in cluster
        .nodes()
        .into_iter()
        .filter(|n| n.running && !n.paused)
    {
        match cluster.sql(node.index).await {
            Ok(client) => return Ok(client),
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.unwrap_or_else(|| {
        SimError::Process(format!("no node of cluster {} is running", cluster.name()))
    }))
}

/// The LDR jobs of `cluster` (`SHOW LOGICAL REPLICATION JOBS` on any running node).
pub async fn logical_replication_jobs(cluster: &Cluster) -> Result<Vec<JobSample>> {
    let client = any_node(cluster).await?;
    parse_jobs(&sql::query_text(&client, "SHOW LOGICAL REPLICATION JOBS").await?)
}

/// `PAUSE JOB` every running LDR job of `cluster`, then waits until each of them reports
/// `paused`.
pub async fn pause_jobs(cluster: &Cluster, timeout: Duration) -> Result<()> {
    let jobs = logical_replication_jobs(cluster).await?;
    let client = any_node(cluster).await?;
    let mut targets = Vec::new();
    for job in jobs.iter().filter(|j| j.status == "running") {
        let id = job.job_id.trim().to_string();
        sql::exec(&client, &format!("PAUSE JOB {id}")).await?;
        targets.push(id);
    }
    wait_until(
        &format!("the LDR jobs of cluster {} to be paused", cluster.name()),
        timeout,
        Duration::from_millis(100),
        || async {
            let jobs = logical_replication_jobs(cluster)
                .await
                .map_err(|e| e.to_string())?;
            let not_paused: Vec<String> = jobs
                .iter()
                .filter(|j| targets.contains(&j.job_id.trim().to_string()) && j.status != "paused")
                .map(|j| format!("job {} {}", j.job_id, j.status))
                .collect();
            if not_paused.is_empty() {
                Ok(())
            } else {
                Err(not_paused.join("; "))
            }
        },
    )
    .await
}

/// `RESUME JOB` every paused LDR job of `cluster`.
pub async fn resume_jobs(cluster: &Cluster) -> Result<()> {
    let jobs = logical_replication_jobs(cluster).await?;
    let client = any_node(cluster).await?;
    for job in jobs.iter().filter(|j| j.status == "paused") {
        sql::exec(&client, &format!("RESUME JOB {}", job.job_id.trim())).await?;
    }
    Ok(())
}

/// Waits until job `job_id` on `cluster` reports a replicated time at or above `at`: every
/// source change up to `at` has then been applied or dead-lettered.
pub async fn wait_replicated_past(
    cluster: &Cluster,
    job_id: i64,
    at: Timestamp,
    timeout: Duration,
) -> Result<Timestamp> {
    let url = cluster.url(1)?;
    wait_until(
        &format!(
            "job {job_id} on cluster {} to replicate past {at}",
            cluster.name()
        ),
        timeout,
        Duration::from_millis(200),
        || async {
            let client = sql::connect(&url, sql::CONNECT_TIMEOUT)
                .await
                .map_err(|e| e.to_string())?;
            let rows = sql::query_text(&client, "SHOW LOGICAL REPLICATION JOBS")
                .await
                .map_err(|e| e.to_string())?;
            let jobs = parse_jobs(&rows).map_err(|e| e.to_string())?;
            let job = jobs
                .iter()
                .find(|j| j.job_id.trim() == job_id.to_string())
                .ok_or_else(|| format!("job {job_id} not listed"))?;
            match job.replicated_time {
                Some(ts) if ts >= at => Ok(ts),
                other => Err(format!("status {}, replicated time {other:?}", job.status)),
            }
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_id_is_read_from_the_result() {
        let rows = TextRows {
            columns: vec!["job_id".into()],
            rows: vec![vec![Some("1011226433398095873".into())]],
        };
        assert_eq!(parse_job_id(&rows).expect("job id"), 1011226433398095873);
        assert!(parse_job_id(&TextRows::default()).is_err());
    }

    #[test]
    fn modes_parse_and_name_their_stream_options() {
        for mode in ApplyMode::ALL {
            assert_eq!(mode.as_str().parse::<ApplyMode>().expect("parse"), mode);
        }
        assert_eq!(
            " Validated".parse::<ApplyMode>().expect("parse"),
            ApplyMode::Validated
        );
        assert!("both".parse::<ApplyMode>().is_err());
        assert_eq!(ApplyMode::Immediate.stream_options(), None);
        assert_eq!(
            ApplyMode::Validated.stream_options(),
            Some("mode = 'validated'")
        );
    }

    #[test]
    fn a_jobs_command_is_read_from_the_details() {
        let rows = TextRows {
            columns: vec!["job_id".into(), "status".into(), "command".into()],
            rows: vec![
                vec![Some("1".into()), Some("running".into()), Some("one".into())],
                vec![
                    Some("2".into()),
                    Some("running".into()),
                    Some("CREATE … WITH mode = 'validated'".into()),
                ],
            ],
        };
        assert_eq!(
            job_command_of(&rows, 2).expect("command"),
            "CREATE … WITH mode = 'validated'"
        );
        assert!(job_command_of(&rows, 3).is_err());
        assert!(job_command_of(&TextRows::default(), 1).is_err());
    }
}

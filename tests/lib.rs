//! Helpers shared by the end-to-end tests in `e2e/`: they run real `ldr` processes through the
//! `ldr-sim` harness. Build the binary first (`scripts/test` does).

use std::process::Output;

use anyhow::{Context, Result, bail, ensure};
use ldr_sim::{Cluster, ClusterSpec, find_ldr_binary};

pub mod sinks;

/// Starts an `n`-node cluster named `name` and waits until it serves SQL.
pub async fn cluster(name: &str, n: usize) -> Result<Cluster> {
    Ok(Cluster::start(ClusterSpec::new(name, n)?).await?)
}

/// Starts an `n`-node cluster whose inter-cluster traffic goes through a fault proxy.
pub async fn proxied_cluster(name: &str, n: usize) -> Result<Cluster> {
    Ok(Cluster::start(ClusterSpec::new(name, n)?.proxied(true)).await?)
}

/// Runs the `ldr` binary with `args` and captures its output.
pub fn ldr_command(args: &[&str]) -> Result<Output> {
    let bin = find_ldr_binary()?;
    std::process::Command::new(&bin)
        .args(args)
        .output()
        .with_context(|| format!("running {} {args:?}", bin.display()))
}

/// Runs `ldr node <args> --insecure --host=<address of node index host>` (at most 240 s) and
/// returns its stderr and stdout, or an error with them.
pub async fn ldr_node(c: &Cluster, host: usize, args: &[&str]) -> Result<String> {
    let address = c.node_info(host)?.listen_addr.to_string();
    let mut command = tokio::process::Command::new(find_ldr_binary()?);
    command
        .arg("node")
        .args(args)
        .arg("--insecure")
        .arg(format!("--host={address}"))
        .kill_on_drop(true);
    let output = tokio::time::timeout(std::time::Duration::from_secs(240), command.output())
        .await
        .with_context(|| format!("ldr node {args:?} did not finish in 240s"))??;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout)
    );
    ensure!(
        output.status.success(),
        "ldr node {args:?} failed ({}): {text}",
        output.status
    );
    Ok(text)
}

/// The SQLSTATE of a failed statement (empty if it was not a server error).
pub fn code_of(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.code().code().to_string())
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// Logical replication helpers (used by `e2e/ldr_*.rs`).
// ---------------------------------------------------------------------------------------------

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use ldr_sim::metrics::Metrics;
use ldr_sim::sql::TextRows;
use ldr_types::Timestamp;
use tokio_postgres::Client;

/// Deadline for replication to catch up or a job to change status: generous, because CI runs
/// several of these tests at once on two cores with debug builds.
pub const CATCH_UP: Duration = Duration::from_secs(180);

/// Starts clusters `a` and `b` with `nodes` nodes each, concurrently.
pub async fn cluster_pair(nodes: usize, proxied: bool) -> Result<(Cluster, Cluster)> {
    let spec_a = ClusterSpec::new("a", nodes)?
        .proxied(proxied)
        .ready_timeout(Duration::from_secs(180));
    let spec_b = ClusterSpec::new("b", nodes)?
        .proxied(proxied)
        .ready_timeout(Duration::from_secs(180));
    let (a, b) = tokio::try_join!(Cluster::start(spec_a), Cluster::start(spec_b))?;
    Ok((a, b))
}

/// `SET CLUSTER SETTING kv.rangefeed.enabled = true` (needed on every source cluster).
pub async fn enable_rangefeeds(c: &Cluster) -> Result<()> {
    Ok(c.exec(1, "SET CLUSTER SETTING kv.rangefeed.enabled = true")
        .await?)
}

/// Prints a line of test progress with the elapsed time, so a CI log shows where a test spent
/// its time and where it stopped.
pub fn phase(started: Instant, what: &str) {
    eprintln!("[{:>7.2}s] {what}", started.elapsed().as_secs_f64());
}

/// A connection to the first node of `c` that answers, starting at `first` (nodes may be down
/// on purpose).
pub async fn any_sql(c: &Cluster, first: usize) -> Result<Client> {
    let n = c.node_count();
    let mut last = None;
    for i in 0..n {
        let node = (first - 1 + i) % n + 1;
        if !c.node_info(node)?.running {
            continue;
        }
        match tokio::time::timeout(Duration::from_secs(5), c.sql(node)).await {
            Ok(Ok(client)) => return Ok(client),
            Ok(Err(e)) => last = Some(anyhow::Error::from(e)),
            Err(_) => last = Some(anyhow::anyhow!("connecting to node {node} timed out")),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no node of cluster {} is running", c.name())))
}

/// Runs `sql` (simple protocol) on any reachable node of `c`; every value as text.
pub async fn query_any(c: &Cluster, sql: &str) -> Result<TextRows> {
    let client = any_sql(c, 1).await?;
    Ok(ldr_sim::sql::query_text(&client, sql).await?)
}

/// The first value of the first row of a text result.
pub fn scalar(rows: &TextRows) -> Option<String> {
    rows.rows.first().and_then(|r| r.first().cloned().flatten())
}

/// Column `name` of every row (NULL as the empty string).
pub fn column_values(rows: &TextRows, name: &str) -> Result<Vec<String>> {
    let i = rows
        .column(name)
        .with_context(|| format!("no column {name} in {:?}", rows.columns))?;
    Ok(rows
        .rows
        .iter()
        .map(|r| r[i].clone().unwrap_or_default())
        .collect())
}

/// One row of a text result as `column -> value` (NULL as `None`).
pub fn row_map(rows: &TextRows, index: usize) -> BTreeMap<String, Option<String>> {
    rows.columns
        .iter()
        .cloned()
        .zip(rows.rows[index].iter().cloned())
        .collect()
}

/// Polls `check` every `every` until it returns `Ok`, failing after `timeout` with the last
/// observation (`Err(text)` means "not yet").
pub async fn poll<T, F, Fut>(what: &str, timeout: Duration, every: Duration, check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::result::Result<T, String>>,
{
    Ok(ldr_sim::sql::wait_until(what, timeout, every, check).await?)
}

/// `SHOW JOBS` row of `job_id` on `c` (any node), as `column -> value`.
pub async fn job_row(c: &Cluster, job_id: i64) -> Result<BTreeMap<String, Option<String>>> {
    let rows = query_any(c, "SHOW JOBS").await?;
    let ids = column_values(&rows, "job_id")?;
    let index = ids
        .iter()
        .position(|id| id.trim() == job_id.to_string())
        .with_context(|| format!("job {job_id} is not in SHOW JOBS on {}: {ids:?}", c.name()))?;
    Ok(row_map(&rows, index))
}

/// Waits until job `job_id` on `c` has status `status`; returns its `SHOW JOBS` row.
pub async fn wait_job_status(
    c: &Cluster,
    job_id: i64,
    status: &str,
    timeout: Duration,
) -> Result<BTreeMap<String, Option<String>>> {
    poll(
        &format!("job {job_id} on cluster {} to be {status}", c.name()),
        timeout,
        Duration::from_millis(250),
        || async {
            let row = job_row(c, job_id).await.map_err(|e| e.to_string())?;
            match row.get("status").cloned().flatten() {
                Some(s) if s == status => Ok(row),
                _ => Err(format!("{row:?}")),
            }
        },
    )
    .await
}

/// The ids of the jobs of type `job_type` on `c` (`SHOW JOBS`).
pub async fn jobs_of_type(c: &Cluster, job_type: &str) -> Result<Vec<i64>> {
    let rows = query_any(c, "SHOW JOBS").await?;
    let ids = column_values(&rows, "job_id")?;
    let types = column_values(&rows, "job_type")?;
    ids.iter()
        .zip(types)
        .filter(|(_, t)| t == job_type)
        .map(|(id, _)| id.trim().parse::<i64>().context("job id"))
        .collect()
}

/// `cluster_logical_timestamp()` on any reachable node of `c`.
pub async fn now(c: &Cluster) -> Result<Timestamp> {
    let text =
        scalar(&query_any(c, "SELECT cluster_logical_timestamp()").await?).unwrap_or_default();
    text.parse::<Timestamp>()
        .map_err(|e| anyhow::anyhow!("cluster_logical_timestamp() returned {text:?}: {e}"))
}

/// Waits until LDR job `job_id` on `c` reports a replicated time at or above `at` (asking any
/// reachable node): every change of its source up to `at` has been applied or dead-lettered.
pub async fn wait_replicated(
    c: &Cluster,
    job_id: i64,
    at: Timestamp,
    timeout: Duration,
) -> Result<Timestamp> {
    let mut next = 1usize;
    poll(
        &format!(
            "job {job_id} on cluster {} to replicate past {at}",
            c.name()
        ),
        timeout,
        Duration::from_millis(250),
        || {
            next = next % c.node_count() + 1;
            let first = next;
            async move {
                let client = any_sql(c, first).await.map_err(|e| e.to_string())?;
                let jobs = ldr_sim::check::replicated_time::sample_jobs(&client)
                    .await
                    .map_err(|e| e.to_string())?;
                let job = jobs
                    .iter()
                    .find(|j| j.job_id.trim() == job_id.to_string())
                    .ok_or_else(|| format!("job {job_id} not listed"))?;
                match job.replicated_time {
                    Some(ts) if ts >= at => Ok(ts),
                    other => Err(format!("status {}, replicated time {other:?}", job.status)),
                }
            }
        },
    )
    .await
}

/// Runs `sql`, which must fail with SQLSTATE `code` and a message containing `text`; returns
/// the message.
pub async fn expect_error(client: &Client, sql: &str, code: &str, text: &str) -> Result<String> {
    match client.batch_execute(sql).await {
        Ok(()) => bail!("{sql:?} succeeded; expected SQLSTATE {code} ({text:?})"),
        Err(e) => {
            let message = e
                .as_db_error()
                .map(|d| d.message().to_string())
                .unwrap_or_else(|| e.to_string());
            ensure!(
                code_of(&e) == code && message.contains(text),
                "{sql:?}: expected SQLSTATE {code} with {text:?}, got {} {message:?}",
                code_of(&e)
            );
            Ok(message)
        }
    }
}

/// `SELECT k, v FROM <table>` on any node of `c`, as `k -> v`.
pub async fn read_kv(c: &Cluster, table: &str) -> Result<BTreeMap<i64, String>> {
    let client = any_sql(c, 1).await?;
    let rows = client
        .query(&format!("SELECT k, v FROM {table} ORDER BY k"), &[])
        .await
        .with_context(|| format!("reading {table} on {}", c.name()))?;
    Ok(rows
        .iter()
        .map(|r| (r.get::<_, i64>(0), r.get::<_, String>(1)))
        .collect())
}

/// `/metrics` of every running node of `c`, merged (sums cover the whole cluster).
pub async fn cluster_metrics(c: &Cluster) -> Result<Metrics> {
    let mut all = Metrics::default();
    for node in c.node_ids() {
        if c.node_info(node)?.running {
            all.merge(c.metrics(node).await?);
        }
    }
    Ok(all)
}

/// The output of one `psql` run.
#[derive(Debug, Clone)]
pub struct PsqlOutput {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

impl PsqlOutput {
    /// The `(SQLSTATE, message)` of the first `ERROR:` line (psql runs with VERBOSITY verbose).
    pub fn error(&self) -> Option<(String, String)> {
        let line = self
            .stderr
            .lines()
            .find_map(|l| l.strip_prefix("ERROR:"))?
            .trim();
        match line.split_once(": ") {
            Some((code, message))
                if code.len() == 5 && code.chars().all(|c| c.is_ascii_alphanumeric()) =>
            {
                Some((code.to_string(), message.to_string()))
            }
            _ => Some((String::new(), line.to_string())),
        }
    }

    /// stdout of a single query as a table: psql runs unaligned (`-A`) with the unit separator
    /// between fields and `NULL` for nulls, so the first line is the header and every other
    /// non-empty line a row.
    pub fn table(&self) -> TextRows {
        let mut lines = self.stdout.lines().filter(|l| !l.is_empty());
        let columns = lines
            .next()
            .map(|h| h.split(PSQL_SEPARATOR).map(str::to_string).collect())
            .unwrap_or_default();
        let rows = lines
            .map(|l| {
                l.split(PSQL_SEPARATOR)
                    .map(|v| (v != "NULL").then(|| v.to_string()))
                    .collect()
            })
            .collect();
        TextRows { columns, rows }
    }
}

/// Field separator of [`psql`] output (ASCII unit separator: never inside our values).
pub const PSQL_SEPARATOR: char = '\u{1f}';

/// Runs the real `psql` client against `url` with `statements` (one `-c` each, in order, like a
/// user typing them), unaligned output, verbose errors; fails only if psql could not run or
/// did not finish within a minute.
pub async fn psql(url: &str, statements: &[&str]) -> Result<PsqlOutput> {
    let mut command = tokio::process::Command::new("psql");
    command
        .arg("-X")
        .arg("-A")
        .arg("-P")
        .arg("footer=off")
        .arg("-P")
        .arg("null=NULL")
        .arg("-F")
        .arg(PSQL_SEPARATOR.to_string());
    command.arg("-c").arg("\\set VERBOSITY verbose");
    for s in statements {
        command.arg("-c").arg(s);
    }
    command
        .arg(url)
        .kill_on_drop(true)
        .stdin(std::process::Stdio::null());
    let output = tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .with_context(|| format!("psql {statements:?} did not finish within a minute"))?
        .context("running psql (is it installed?)")?;
    Ok(PsqlOutput {
        success: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

/// [`psql`] that must succeed; returns its output.
pub async fn psql_ok(url: &str, statements: &[&str]) -> Result<PsqlOutput> {
    let out = psql(url, statements).await?;
    ensure!(
        out.success && !out.stderr.contains("ERROR:"),
        "psql {statements:?} failed:\n{}\n{}",
        out.stdout,
        out.stderr
    );
    Ok(out)
}

/// [`psql`] of one statement that must fail with SQLSTATE `code` and a message containing
/// `text`; returns the message.
pub async fn psql_err(url: &str, statement: &str, code: &str, text: &str) -> Result<String> {
    let out = psql(url, &[statement]).await?;
    let (got_code, message) = out
        .error()
        .with_context(|| format!("psql {statement:?} did not fail:\n{}", out.stdout))?;
    ensure!(
        got_code == code && message.contains(text),
        "psql {statement:?}: expected {code} with {text:?}, got {got_code} {message:?}"
    );
    Ok(message)
}

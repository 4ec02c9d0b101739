//! The ldr side of the benchmark: a source and a destination cluster of `nodes` nodes each,
//! a one-way LDR stream of `kv` and `hb`, then bidirectional streams of `kvc`, every stream in
//! one apply mode (`immediate`, or `WITH mode = 'validated'`). The side records the job's
//! command as `SHOW LOGICAL REPLICATION JOBS WITH DETAILS` shows it, and at its end the apply
//! counters of both clusters (failed attempts, constraint failures, DLQ rows, LWW losses).
//!
//! How each figure is measured (exactly, not sampled, where the issue asks for it):
//! - **catch-up**: `PAUSE JOB`; load; `T` = the newest `cluster_logical_timestamp()` over every
//!   source node (each node's clock is at or above every commit timestamp it assigned, so `T`
//!   bounds every loaded row); `RESUME JOB` at wall time `t0`; wait until the job's replicated
//!   time passes `T` (every row applied); verify `count(*)` once; the end is the newest
//!   destination commit timestamp `max(crdb_internal_mvcc_timestamp)` over `kv` (each applied
//!   row's own commit time at the destination), so the checkpoint interval does not inflate
//!   the time. If that query fails, the time replicated time was seen past `T` is used and
//!   the report says so.
//! - **commit latency** (steady): each heartbeat row's destination copy carries
//!   `crdb_internal_origin_timestamp` (its source commit timestamp) and
//!   `crdb_internal_mvcc_timestamp` (its destination commit timestamp, taken when the applier
//!   wrote it, which is when it became visible). Their difference is that row's source commit
//!   → destination visible latency, with no polling error; both clocks are HLCs over the same
//!   machine's system clock.
//! - **lag** (steady): `now − replicated_time` from `SHOW LOGICAL REPLICATION JOBS`, sampled
//!   every 100 ms during the workload.
//! - **CPU**: `/proc/<pid>/stat` of every node process, before and after the phase.
//! - **durability and replication factor**: `kv.raft_log.disable_synchronization_unsafe` is
//!   set on both clusters before the tables exist and read back from every node (each node
//!   applies it to its Raft log writer when its settings cache refreshes); `--replicas` sets
//!   the default zone's `num_replicas` first; the factor reported is what `SHOW RANGES FROM
//!   TABLE kv` lists as voters on both clusters before the load.
//! - **changefeed emit rate** (after the backup phase): a nodelocal changefeed's initial scan
//!   of the destination's `kv`, create to `succeeded`, and a live one under an unthrottled
//!   write load until its high-water mark passes the load; messages and bytes from the
//!   `changefeed_emitted_*` counters (see `changefeed_emit`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use ldr_types::Timestamp;
use tokio_postgres::Client;

use super::progress::Reporter;
use super::report::{ApplyCounters, BenchReport, CpuUse, LdrModeReport};
use super::stats::Percentiles;
use super::{
    BenchOptions, CONFLICT_TABLE, HB_TABLE, Heartbeats, KV_TABLE, Sampler, Variant, epoch_now,
    load_rows, or_cancel, polled, procfs, steady_workload, watch,
};
use crate::check::convergence::wait_converged;
use crate::check::replicated_time::{parse_replicated_time, sample_jobs};
use crate::cluster::{Cluster, ClusterSpec};
use crate::error::{Result, SimError};
use crate::ldr;
use crate::sql::{self, CONNECT_TIMEOUT};
use crate::workload::kv::{self as kvw, KeyDistribution, KvConfig};
use crate::workload::{LoadOptions, Progress};

const SOURCE_CONNECTION: &str = "bench_src";
const DEST_CONNECTION: &str = "bench_dst";

struct LdrSide {
    src: Cluster,
    dst: Cluster,
    /// How every stream of this side applies rows (`WITH mode = …`), over which clusters.
    variant: Variant,
    job: i64,
    /// The job's `command` in `SHOW LOGICAL REPLICATION JOBS WITH DETAILS` (`None` if it
    /// could not be read).
    job_command: Option<String>,
    /// A connection to destination node 1 for polling.
    dst_client: Client,
    /// Voters per range of `kv`: fewest and most over both clusters, and ranges per cluster.
    factor: (usize, usize, usize),
}

const SYNC_SETTING: &str = "kv.raft_log.disable_synchronization_unsafe";

/// Waits until every node of `cluster` reads `SYNC_SETTING` as `disabled` (its settings
/// cache refreshes every second; the Raft log writer follows in the same refresh).
async fn wait_sync_setting(cluster: &Cluster, disabled: bool) -> Result<()> {
    let want = disabled.to_string();
    for node in cluster.node_ids() {
        sql::wait_until(
            &format!("node {node} to apply {SYNC_SETTING} = {want}"),
            Duration::from_secs(30),
            Duration::from_millis(100),
            || async {
                let rows = cluster
                    .query_text(node, &format!("SHOW CLUSTER SETTING {SYNC_SETTING}"))
                    .await
                    .map_err(|e| e.to_string())?;
                let value = rows
                    .rows
                    .first()
                    .and_then(|r| r.first().cloned().flatten())
                    .unwrap_or_default();
                // Booleans come back as `t`/`f` or `true`/`false`.
                let value = match value.trim() {
                    "t" | "true" => "true",
                    "f" | "false" => "false",
                    other => return Err(format!("unexpected value {other:?}")),
                };
                if value == want {
                    Ok(())
                } else {
                    Err(format!("reads {value}"))
                }
            },
        )
        .await?;
    }
    Ok(())
}

/// Voters of each range of `table` on `cluster` (`SHOW RANGES FROM TABLE`).
async fn voters_per_range(cluster: &Cluster, table: &str) -> Result<Vec<usize>> {
    let rows = cluster
        .query_text(1, &format!("SHOW RANGES FROM TABLE {table}"))
        .await?;
    let column = rows
        .column("voting_replicas")
        .ok_or_else(|| SimError::Protocol("SHOW RANGES has no voting_replicas column".into()))?;
    Ok(rows
        .rows
        .iter()
        .map(|r| {
            r.get(column)
                .cloned()
                .flatten()
                .unwrap_or_default()
                .trim_matches(|c| c == '{' || c == '}')
                .split(',')
                .filter(|n| !n.trim().is_empty())
                .count()
        })
        .collect())
}

/// Waits (bounded) until every range of `kv` and `hb` on both clusters has `want` voters, and
/// returns (fewest, most, ranges of `kv` per cluster) as last read, reached or not.
async fn replication_factor(
    src: &Cluster,
    dst: &Cluster,
    want: usize,
    reporter: &Reporter,
) -> Result<(usize, usize, usize)> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut all = Vec::new();
        let mut kv_ranges = 0;
        for cluster in [src, dst] {
            let kv = voters_per_range(cluster, KV_TABLE).await?;
            kv_ranges = kv.len();
            all.extend(kv);
            all.extend(voters_per_range(cluster, HB_TABLE).await?);
        }
        let fewest = all.iter().copied().min().unwrap_or(0);
        let most = all.iter().copied().max().unwrap_or(0);
        if (fewest == want && most == want) || Instant::now() >= deadline {
            if fewest != want || most != want {
                reporter.note(&format!(
                    "ranges have {fewest}-{most} voters after 60 s, expected {want}: measuring anyway"
                ));
            }
            return Ok((fewest, most, kv_ranges));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Newest `cluster_logical_timestamp()` over every node of `cluster`.
async fn newest_clock(cluster: &Cluster) -> Result<Timestamp> {
    let mut newest = Timestamp::ZERO;
    for node in cluster.node_ids() {
        newest = newest.max(ldr::cluster_logical_timestamp(cluster, node).await?);
    }
    Ok(newest)
}

/// Sum of a counter over every node of `cluster` (`None` if no node answered).
async fn counter_sum(cluster: &Cluster, name: &str) -> Option<f64> {
    let mut total = None;
    for node in cluster.node_ids() {
        if let Ok(metrics) = cluster.metrics(node).await
            && let Some(v) = metrics.counter(name)
        {
            *total.get_or_insert(0.0) += v;
        }
    }
    total
}

/// Reads `logical_replication_events_ingested` summed over a cluster's nodes, minus a base,
/// straight from their HTTP ports (cheap enough to poll every 250 ms).
#[derive(Clone)]
struct IngestedProbe {
    http: Arc<Vec<std::net::SocketAddr>>,
    base: f64,
}

impl IngestedProbe {
    fn new(cluster: &Cluster, base: f64) -> IngestedProbe {
        IngestedProbe {
            http: Arc::new(cluster.nodes().iter().map(|n| n.http_addr).collect()),
            base,
        }
    }

    async fn read(&self) -> Option<f64> {
        let mut total = 0.0;
        for addr in self.http.iter() {
            let response = crate::http_get(*addr, "/metrics", Duration::from_secs(5))
                .await
                .ok()?;
            total += crate::metrics::Metrics::parse(&response.body)
                .counter("logical_replication_events_ingested")
                .unwrap_or(0.0);
        }
        Some(total - self.base)
    }
}

fn cluster_cpu(cluster: &Cluster) -> f64 {
    cluster
        .nodes()
        .iter()
        .filter_map(|n| n.pid)
        .map(procfs::process_cpu_seconds)
        .sum()
}

/// The job's status and replicated time.
async fn job_state(
    client: &Client,
    job: i64,
) -> std::result::Result<(String, Option<Timestamp>), String> {
    let jobs = sample_jobs(client).await.map_err(|e| e.to_string())?;
    let id = job.to_string();
    jobs.into_iter()
        .find(|j| j.job_id.trim() == id)
        .map(|j| (j.status, j.replicated_time))
        .ok_or_else(|| format!("job {job} is not listed"))
}

fn parse_ts(text: Option<&String>, what: &str) -> Result<Timestamp> {
    text.and_then(|t| parse_replicated_time(t))
        .ok_or_else(|| SimError::Protocol(format!("cannot read {what} from {text:?}")))
}

impl LdrSide {
    async fn start(
        options: &BenchOptions,
        variant: Variant,
        binary: &std::path::Path,
        reporter: &Reporter,
    ) -> Result<LdrSide> {
        let mode = variant;
        reporter.step(&format!(
            "ldr ({mode} mode): starting a source and a destination cluster of {} node(s) each",
            options.nodes
        ));
        let spec = |name: &str| {
            ClusterSpec::with_binary(name, options.nodes, binary)
                .secure(variant.secure)
                .env("LDR_LOG", "warn")
                .ready_timeout(Duration::from_secs(120))
        };
        let (src, dst) = tokio::try_join!(
            Cluster::start(spec("bench-src")),
            Cluster::start(spec("bench-dst"))
        )?;
        let disabled = !options.raft_log_sync;
        for cluster in [&src, &dst] {
            // Durability first, so that every write of the run has it.
            cluster
                .exec(
                    1,
                    &format!("SET CLUSTER SETTING {SYNC_SETTING} = {disabled}"),
                )
                .await?;
            if let Some(n) = options.replicas {
                // Before the tables: they are created with this many voters.
                cluster
                    .exec(
                        1,
                        &format!("ALTER RANGE default CONFIGURE ZONE USING num_replicas = {n}"),
                    )
                    .await?;
            }
        }
        for cluster in [&src, &dst] {
            wait_sync_setting(cluster, disabled).await?;
        }
        reporter.note(&format!(
            "raft log sync {} ({SYNC_SETTING} = {disabled} on every node)",
            options.raft_log_sync_text()
        ));
        for cluster in [&src, &dst] {
            // Both are sources: dst→src in the conflict phase.
            cluster
                .exec(1, "SET CLUSTER SETTING kv.rangefeed.enabled = true")
                .await?;
            cluster
                .exec(
                    1,
                    &format!("CREATE TABLE {KV_TABLE} (k INT8 PRIMARY KEY, v TEXT)"),
                )
                .await?;
            cluster
                .exec(
                    1,
                    &format!("CREATE TABLE {HB_TABLE} (seq INT8 PRIMARY KEY, v TEXT)"),
                )
                .await?;
        }
        let factor = replication_factor(&src, &dst, options.replication_factor(), reporter).await?;
        reporter.note(&format!(
            "replication factor {} ({} ranges of {KV_TABLE} per cluster)",
            if factor.0 == factor.1 {
                factor.0.to_string()
            } else {
                format!("{}-{}", factor.0, factor.1)
            },
            factor.2
        ));
        ldr::create_external_connection(&dst, SOURCE_CONNECTION, &src).await?;
        let job = ldr::create_stream(
            &dst,
            SOURCE_CONNECTION,
            &[KV_TABLE, HB_TABLE],
            &[KV_TABLE, HB_TABLE],
            variant.mode.stream_options(),
        )
        .await?;
        let job_command = match ldr::job_command(&dst, job).await {
            Ok(command) => Some(command),
            Err(e) => {
                reporter.note(&format!("cannot read job {job}'s command: {e}"));
                None
            }
        };
        let now = newest_clock(&src).await?;
        ldr::wait_replicated_past(&dst, job, now, Duration::from_secs(120)).await?;
        let dst_client = sql::connect(&dst.url(1)?, CONNECT_TIMEOUT).await?;
        reporter.note(&format!("stream running ({mode} mode): job {job}"));
        Ok(LdrSide {
            src,
            dst,
            variant,
            job,
            job_command,
            dst_client,
            factor,
        })
    }

    fn cpu(&self) -> (f64, f64) {
        (cluster_cpu(&self.src), cluster_cpu(&self.dst))
    }

    async fn wait_status(&self, status: &str, timeout: Duration) -> Result<()> {
        sql::wait_until(
            &format!("job {} to be {status}", self.job),
            timeout,
            Duration::from_millis(100),
            || async {
                let (current, _) = job_state(&self.dst_client, self.job).await?;
                if current.eq_ignore_ascii_case(status) {
                    Ok(())
                } else {
                    Err(format!("status {current}"))
                }
            },
        )
        .await
    }
}

/// Runs the LDR side in `mode` into `report`: its top-level ldr figures, and one
/// `ldr_modes` entry (the mode, the job's command and the apply counters of the whole side;
/// the caller copies the figures into it).
pub(super) async fn run(
    options: &BenchOptions,
    variant: Variant,
    binary: &std::path::Path,
    reporter: &Reporter,
    report: &mut BenchReport,
) -> Result<()> {
    let mode = variant;
    let side = or_cancel(
        &options.cancel,
        LdrSide::start(options, variant, binary, reporter),
    )
    .await?;
    report.ldr_modes.push(LdrModeReport {
        job_command: side.job_command.clone(),
        ..LdrModeReport::new(&variant.to_string())
    });
    report.durability.disable_synchronization_unsafe = Some(!options.raft_log_sync);
    let (fewest, most, kv_ranges) = side.factor;
    report.replication.factor = Some(fewest);
    report.replication.factor_max = Some(most);
    report.replication.kv_ranges = Some(kv_ranges);
    let result = match or_cancel(&options.cancel, idle_cpu(&side)).await {
        Ok(cores) => {
            report.replication.idle_cpu_cores = Some(cores);
            reporter.note(&format!(
                "idle (stream running, no writes): {cores:.2} CPU cores over all {} nodes",
                2 * options.nodes
            ));
            phases(options, reporter, report, &side).await
        }
        Err(e) => Err(e),
    };
    let counters = apply_counters(&side).await;
    if let Some(entry) = report.ldr_modes.last_mut() {
        entry.set_counters(counters);
    }
    reporter.note(&format!(
        "{mode} mode, whole run: {} failed apply attempts (retried or dead-lettered), {} constraint failures, {} DLQ rows, {} LWW losses",
        text(counters.retries),
        text(counters.constraint_failures),
        text(counters.dlq_rows),
        text(counters.lww_losses)
    ));
    if result.is_err() {
        for (name, cluster) in [("source", &side.src), ("destination", &side.dst)] {
            for node in cluster.node_ids() {
                if let Ok(tail) = cluster.log_tail(node, 15) {
                    reporter.note(&format!("{name} node {node} log tail:\n{tail}"));
                }
            }
        }
    }
    result
}

fn text(v: Option<u64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

/// The apply counters of both clusters (every stream of the side, every phase), read at the
/// end of the side: nodes never restart during the benchmark, so the in-memory counters
/// cover the whole run.
async fn apply_counters(side: &LdrSide) -> ApplyCounters {
    let both = |name: &'static str| async move {
        let a = counter_sum(&side.src, name).await;
        let b = counter_sum(&side.dst, name).await;
        match (a, b) {
            (None, None) => None,
            (a, b) => Some((a.unwrap_or(0.0) + b.unwrap_or(0.0)).max(0.0) as u64),
        }
    };
    let initial = both("logical_replication_events_initial_failure").await;
    let retry = both("logical_replication_events_retry_failure").await;
    ApplyCounters {
        retries: initial.zip(retry).map(|(a, b)| a + b),
        constraint_failures: both("logical_replication_validated_constraint_failures").await,
        dlq_rows: both("logical_replication_events_dlqed").await,
        lww_losses: both("logical_replication_kv_update_too_old").await,
        rows_applied: both("logical_replication_events_ingested").await,
    }
}

/// How long the idle CPU baseline is measured.
const IDLE_WINDOW: Duration = Duration::from_secs(3);

/// CPU cores busy over every node of both clusters while the stream runs and nothing is
/// written (the baseline that per-row CPU at low rates is mostly made of).
async fn idle_cpu(side: &LdrSide) -> Result<f64> {
    let (src0, dst0) = side.cpu();
    let started = Instant::now();
    tokio::time::sleep(IDLE_WINDOW).await;
    let (src1, dst1) = side.cpu();
    Ok(((src1 - src0) + (dst1 - dst0)) / started.elapsed().as_secs_f64())
}

async fn phases(
    options: &BenchOptions,
    reporter: &Reporter,
    report: &mut BenchReport,
    side: &LdrSide,
) -> Result<()> {
    catchup(options, reporter, report, side).await?;
    for index in 0..options.steady_rates.len() {
        if options.cancel.is_cancelled() {
            return Ok(());
        }
        steady(options, reporter, report, side, index).await?;
    }
    if !options.cancel.is_cancelled() {
        report.conflicts.ran = true;
        if let Err(e) = conflicts(options, reporter, report, side).await {
            report.conflicts.error = Some(e.to_string());
            report.conflicts.converged = false;
        }
    }
    if !options.cancel.is_cancelled() {
        report.backup.ran = true;
        if let Err(e) = backup_restore(reporter, report, side).await {
            report.backup.error = Some(e.to_string());
            report.failures.push(format!("backup: {e}"));
        }
    }
    if !options.cancel.is_cancelled() {
        report.changefeed.ran = true;
        if let Err(e) = changefeed_emit(options, reporter, report, side).await {
            report.changefeed.error = Some(e.to_string());
            report.failures.push(format!("changefeed: {e}"));
        }
    }
    Ok(())
}

/// `changefeed_emitted_messages` and `changefeed_emitted_bytes` summed over a cluster.
async fn changefeed_emitted(cluster: &Cluster) -> (f64, f64) {
    (
        counter_sum(cluster, "changefeed_emitted_messages")
            .await
            .unwrap_or(0.0),
        counter_sum(cluster, "changefeed_emitted_bytes")
            .await
            .unwrap_or(0.0),
    )
}

/// `(status, high-water mark)` of a changefeed job (`SHOW CHANGEFEED JOB`).
async fn changefeed_state(
    client: &Client,
    job: i64,
) -> std::result::Result<(String, Option<Timestamp>), String> {
    let rows = sql::query_text(client, &format!("SHOW CHANGEFEED JOB {job}"))
        .await
        .map_err(|e| e.to_string())?;
    let value = |name: &str| {
        rows.column(name)
            .and_then(|i| rows.rows.first().and_then(|r| r[i].clone()))
    };
    let status = value("status").ok_or_else(|| format!("no changefeed job {job}"))?;
    let high_water = value("high_water_timestamp").and_then(|t| t.parse::<Timestamp>().ok());
    Ok((status, high_water))
}

/// Polls a changefeed job every 50 ms until `done` holds for its state, failing when it
/// failed or was canceled, or after `deadline_in`.
async fn wait_changefeed(
    options: &BenchOptions,
    client: &Client,
    job: i64,
    what: &str,
    deadline_in: Duration,
    done: impl Fn(&str, Option<Timestamp>) -> bool,
) -> Result<()> {
    let deadline = Instant::now() + deadline_in;
    let mut last_seen;
    loop {
        if options.cancel.is_cancelled() {
            return Err(super::cancelled());
        }
        match polled(changefeed_state(client, job)).await {
            Ok((status, hw)) if done(&status, hw) => return Ok(()),
            Ok((status, _)) if status == "failed" || status == "canceled" => {
                return Err(SimError::Process(format!(
                    "changefeed job {job} is {status} while waiting for {what}"
                )));
            }
            Ok((status, hw)) => last_seen = format!("status {status}, high-water {hw:?}"),
            Err(e) => last_seen = e,
        }
        if Instant::now() >= deadline {
            return Err(SimError::Timeout {
                what: format!("changefeed job {job}: {what}"),
                waited_ms: deadline_in.as_millis(),
                details: format!("; last: {last_seen}"),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Changefeeds on the destination's `kv` (the rows LDR wrote), coordinated by its node 1,
/// into nodelocal sinks: the emit rate of an initial scan, then of live changes under a
/// write load. Messages and bytes are the increase of the cluster's
/// `changefeed_emitted_messages` / `_bytes` (JSON key and value of each message handed to
/// the sink, resolved messages included).
/// - initial scan: `WITH initial_scan = 'only'`, timed from the statement to the job's
///   `succeeded` (the scan, encoding, the files written, the job record);
/// - live: `WITH initial_scan = 'no', resolved = '1s', min_checkpoint_frequency = '1s'`;
///   once it runs, `--duration` of unthrottled `--steady-batch`-row upserts on the
///   destination (bounded by a row count too), then wait for the job's high-water mark to
///   pass the newest clock after the load (every change emitted and flushed); timed from the
///   load's start to then.
async fn changefeed_emit(
    options: &BenchOptions,
    reporter: &Reporter,
    report: &mut BenchReport,
    side: &LdrSide,
) -> Result<()> {
    reporter.step("changefeed: initial scan of the destination's kv into nodelocal, then live changes under a write load");
    side.dst
        .exec(1, "SET CLUSTER SETTING kv.rangefeed.enabled = true")
        .await?;
    let client = side.dst.sql(1).await?;
    let create = async |statement: &str| -> Result<i64> {
        let row = client
            .query_one(statement, &[])
            .await
            .map_err(|e| SimError::sql(statement.to_string(), e))?;
        Ok(row.get::<_, i64>(0))
    };

    let (messages0, bytes0) = changefeed_emitted(&side.dst).await;
    let begin = Instant::now();
    let job = create(&format!(
        "CREATE CHANGEFEED FOR TABLE {KV_TABLE} INTO 'nodelocal://1/bench-changefeed-scan' WITH initial_scan = 'only'"
    ))
    .await?;
    wait_changefeed(
        options,
        &client,
        job,
        "its initial scan to finish",
        options.apply_deadline(options.rows),
        |status, _| status == "succeeded",
    )
    .await?;
    let secs = begin.elapsed().as_secs_f64();
    let (messages1, bytes1) = changefeed_emitted(&side.dst).await;
    {
        let c = &mut report.changefeed;
        c.initial_scan_messages = (messages1 - messages0).max(0.0) as u64;
        c.initial_scan_bytes = (bytes1 - bytes0).max(0.0) as u64;
        c.initial_scan_secs = Some(secs);
        c.initial_scan_messages_per_s = Some(c.initial_scan_messages as f64 / secs.max(1e-9));
        c.initial_scan_mb_per_s = Some(c.initial_scan_bytes as f64 / 1e6 / secs.max(1e-9));
        reporter.note(&format!(
            "changefeed initial scan: {} messages, {:.1} MB in {secs:.2}s",
            c.initial_scan_messages,
            c.initial_scan_bytes as f64 / 1e6
        ));
    }
    if options.cancel.is_cancelled() {
        return Ok(());
    }

    let job = create(&format!(
        "CREATE CHANGEFEED FOR TABLE {KV_TABLE} INTO 'nodelocal://1/bench-changefeed-live' WITH initial_scan = 'no', resolved = '1s', min_checkpoint_frequency = '1s'"
    ))
    .await?;
    wait_changefeed(
        options,
        &client,
        job,
        "it to run",
        Duration::from_secs(60),
        |status, hw| status == "running" && hw.is_some(),
    )
    .await?;
    let (messages0, bytes0) = changefeed_emitted(&side.dst).await;
    let begin = Instant::now();
    let config = options.kv_config(options.steady_batch, KeyDistribution::Uniform);
    let statements_max = options.rows.max(1000) / options.steady_batch.max(1) as u64 * 10;
    let load = LoadOptions::new(side.dst.urls())
        .concurrency(options.concurrency)
        .duration(options.duration)
        .max_ops(statements_max)
        .seed(options.seed.wrapping_add(0xcf))
        .progress(Progress::Silent)
        .cancel(options.cancel.clone());
    let written = kvw::run(&config, &load).await?.summary;
    let load_secs = begin.elapsed().as_secs_f64();
    let bound = newest_clock(&side.dst).await?;
    let waited = wait_changefeed(
        options,
        &client,
        job,
        "its high-water mark to pass the load",
        options.apply_deadline(written.rows_written),
        |_, hw| hw.is_some_and(|hw| hw >= bound),
    )
    .await;
    let secs = begin.elapsed().as_secs_f64();
    let (messages1, bytes1) = changefeed_emitted(&side.dst).await;
    let _ = client.batch_execute(&format!("CANCEL JOB {job}")).await;
    waited?;
    let c = &mut report.changefeed;
    c.live_rows_written = written.rows_written;
    c.live_write_rows_per_s = Some(written.rows_written as f64 / load_secs.max(1e-9));
    c.live_messages = (messages1 - messages0).max(0.0) as u64;
    c.live_bytes = (bytes1 - bytes0).max(0.0) as u64;
    c.live_secs = Some(secs);
    c.live_messages_per_s = Some(c.live_messages as f64 / secs.max(1e-9));
    c.live_mb_per_s = Some(c.live_bytes as f64 / 1e6 / secs.max(1e-9));
    reporter.note(&format!(
        "changefeed live: {} rows written in {load_secs:.2}s, {} messages emitted by {secs:.2}s",
        written.rows_written, c.live_messages
    ));
    Ok(())
}

/// BACKUP of the destination's `kv` table (rows LDR wrote), then RESTORE of it into another
/// database, through SQL on the destination's node 1: rows per second of each.
async fn backup_restore(
    reporter: &Reporter,
    report: &mut BenchReport,
    side: &LdrSide,
) -> Result<()> {
    reporter.step("backup: BACKUP and RESTORE of the destination's kv table");
    let client = side.dst.sql(1).await?;
    let collection = "nodelocal://1/bench-backup";
    let statement = format!("BACKUP TABLE {KV_TABLE} INTO '{collection}'");
    let begin = Instant::now();
    let rows = client
        .query(statement.as_str(), &[])
        .await
        .map_err(|e| SimError::sql(statement.clone(), e))?;
    let backup_secs = begin.elapsed().as_secs_f64();
    let row = rows
        .first()
        .ok_or_else(|| SimError::Process("BACKUP returned no row".into()))?;
    let backed_up: i64 = row.get("rows");
    let bytes: i64 = row.get("bytes");
    let b = &mut report.backup;
    b.rows = u64::try_from(backed_up).unwrap_or(0);
    b.bytes = u64::try_from(bytes).unwrap_or(0);
    b.backup_secs = Some(backup_secs);
    b.backup_rows_per_s = Some(backed_up as f64 / backup_secs.max(1e-9));
    client
        .batch_execute("CREATE DATABASE IF NOT EXISTS bench_restore")
        .await
        .map_err(|e| SimError::sql("CREATE DATABASE bench_restore", e))?;
    let statement = format!(
        "RESTORE TABLE {KV_TABLE} FROM LATEST IN '{collection}' WITH into_db = 'bench_restore'"
    );
    let begin = Instant::now();
    client
        .batch_execute(statement.as_str())
        .await
        .map_err(|e| SimError::sql(statement.clone(), e))?;
    let restore_secs = begin.elapsed().as_secs_f64();
    b.restore_secs = Some(restore_secs);
    b.restore_rows_per_s = Some(backed_up as f64 / restore_secs.max(1e-9));
    reporter.note(&format!(
        "backup {backed_up} rows in {backup_secs:.2}s, restore in {restore_secs:.2}s"
    ));
    Ok(())
}

async fn catchup(
    options: &BenchOptions,
    reporter: &Reporter,
    report: &mut BenchReport,
    side: &LdrSide,
) -> Result<()> {
    reporter.step(&format!(
        "ldr catch-up: job paused, loading {} rows in {}-row statements",
        options.rows, options.load_batch
    ));
    side.dst.exec(1, &format!("PAUSE JOB {}", side.job)).await?;
    side.wait_status("paused", Duration::from_secs(60)).await?;
    let load = or_cancel(
        &options.cancel,
        load_rows(options, reporter, side.src.urls(), "ldr load"),
    )
    .await?;
    report.catchup.ldr_load_rows_per_s = Some(load.rows_written_per_s);
    let bound = newest_clock(&side.src).await?;
    let ingested_before = counter_sum(&side.dst, "logical_replication_events_ingested")
        .await
        .unwrap_or(0.0);
    let (cpu_src0, cpu_dst0) = side.cpu();
    let t0 = epoch_now();
    side.dst
        .exec(1, &format!("RESUME JOB {}", side.job))
        .await?;
    let progress = watch();
    let sampler = {
        let progress = progress.clone();
        let probe = IngestedProbe::new(&side.dst, ingested_before);
        Sampler::spawn(Duration::from_millis(250), t0, move || {
            let probe = probe.clone();
            let progress = progress.clone();
            async move {
                let v = probe.read().await?;
                progress.set(v);
                Some(v)
            }
        })
    };
    let mut bar = reporter.bar("ldr catch-up", options.rows, "rows");
    let deadline_in = options.apply_deadline(options.rows);
    let deadline = Instant::now() + deadline_in;
    let mut last_seen;
    let observed = loop {
        if options.cancel.is_cancelled() {
            sampler.finish().await;
            return Err(super::cancelled());
        }
        match polled(job_state(&side.dst_client, side.job)).await {
            Ok((_, Some(rt))) if rt >= bound => break epoch_now(),
            Ok((status, rt)) => last_seen = format!("status {status}, replicated time {rt:?}"),
            Err(e) => last_seen = e,
        }
        if Instant::now() >= deadline {
            sampler.finish().await;
            return Err(SimError::Timeout {
                what: format!("the destination to replicate past {bound}"),
                waited_ms: deadline_in.as_millis(),
                details: format!("; last: {last_seen}; about {} rows applied", progress.get()),
            });
        }
        bar.set(progress.get());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (cpu_src1, cpu_dst1) = side.cpu();
    let mut series = sampler.finish().await;
    bar.finish(options.rows);
    let count = side
        .dst
        .query_text(1, &format!("SELECT count(*) FROM {KV_TABLE}"))
        .await?;
    let count: u64 = count
        .rows
        .first()
        .and_then(|r| r.first().cloned().flatten())
        .and_then(|t| t.trim().parse().ok())
        .ok_or_else(|| SimError::Protocol("count(*) returned nothing".into()))?;
    if count != options.rows {
        return Err(SimError::Invariant(format!(
            "ldr catch-up: the destination has {count} rows after replicating past {bound}, expected {}",
            options.rows
        )));
    }
    // The job was paused during the load: no loaded row may have been applied before RESUME.
    if let Ok(rows) = side
        .dst
        .query_text(
            1,
            &format!("SELECT min(crdb_internal_mvcc_timestamp) FROM {KV_TABLE}"),
        )
        .await
        && let Ok(oldest) = parse_ts(
            rows.rows
                .first()
                .and_then(|r| r.first())
                .and_then(|v| v.as_ref()),
            "min(crdb_internal_mvcc_timestamp)",
        )
        && (oldest.wall_time_ns as f64 / 1e9) < t0
    {
        return Err(SimError::Invariant(format!(
            "ldr catch-up: a row was applied at {oldest}, {:.3}s before RESUME JOB: the job did not stay paused while loading",
            t0 - oldest.wall_time_ns as f64 / 1e9
        )));
    }
    let newest = side
        .dst
        .query_text(
            1,
            &format!("SELECT max(crdb_internal_mvcc_timestamp) FROM {KV_TABLE}"),
        )
        .await
        .and_then(|rows| {
            parse_ts(
                rows.rows
                    .first()
                    .and_then(|r| r.first())
                    .and_then(|v| v.as_ref()),
                "max(crdb_internal_mvcc_timestamp)",
            )
        });
    let (end, method) = match newest {
        Ok(ts) => (
            ts.wall_time_ns as f64 / 1e9,
            "newest destination commit timestamp (exact)".to_string(),
        ),
        Err(e) => {
            report.notes.push(format!(
                "ldr catch-up end measured when replicated time was seen past the last write (an upper bound: up to one checkpoint interval late), because max(crdb_internal_mvcc_timestamp) failed: {e}"
            ));
            (
                observed,
                "replicated time observed past the last write (upper bound)".to_string(),
            )
        }
    };
    let secs = (end - t0).max(1e-6);
    series.retain(|(t, _)| *t <= secs);
    series.insert(0, (0.0, 0.0));
    series.push((secs, options.rows as f64));
    report.series.catchup_ldr_applied = series;
    report.catchup.ldr_secs = Some(secs);
    report.catchup.ldr_rows_per_s = Some(options.rows as f64 / secs);
    report.catchup.ldr_end_method = Some(method);
    report.catchup.ldr_cpu = Some(CpuUse::new(
        cpu_src1 - cpu_src0,
        cpu_dst1 - cpu_dst0,
        options.rows,
    ));
    reporter.note(&format!(
        "ldr applied {} rows in {secs:.2}s: {:.0} rows/s (replicated time seen past the last write after {:.2}s)",
        options.rows,
        options.rows as f64 / secs,
        observed - t0
    ));
    Ok(())
}

async fn steady(
    options: &BenchOptions,
    reporter: &Reporter,
    report: &mut BenchReport,
    side: &LdrSide,
    index: usize,
) -> Result<()> {
    let rate = options.steady_rates[index];
    reporter.step(&format!(
        "ldr steady state: {rate} rows/s ({}-row upserts) for {:?}",
        options.steady_batch, options.duration
    ));
    let first_seq = super::pg_side::heartbeat_base(index);
    let max_heartbeats =
        (options.duration.as_secs_f64() / options.heartbeat_interval.as_secs_f64()) as u64 + 1000;
    let ingested_before = counter_sum(&side.dst, "logical_replication_events_ingested")
        .await
        .unwrap_or(0.0);
    let t0 = epoch_now();
    let (cpu_src0, cpu_dst0) = side.cpu();
    let cpu_started = Instant::now();
    let applied_sampler = {
        let probe = IngestedProbe::new(&side.dst, ingested_before);
        Sampler::spawn(Duration::from_millis(250), t0, move || {
            let probe = probe.clone();
            async move { probe.read().await }
        })
    };
    let lag_client = Arc::new(sql::connect(&side.dst.url(1)?, CONNECT_TIMEOUT).await?);
    let job = side.job;
    let lag_sampler = {
        let client = lag_client.clone();
        Sampler::spawn(Duration::from_millis(100), t0, move || {
            let client = client.clone();
            async move {
                let (_, rt) = job_state(&client, job).await.ok()?;
                let rt = rt?;
                Some(((epoch_now() - rt.wall_time_ns as f64 / 1e9) * 1000.0).max(0.0))
            }
        })
    };
    let heartbeats = Heartbeats::spawn(
        &side.src.url(1)?,
        &format!("INSERT INTO {HB_TABLE} (seq, v) VALUES ($1, 'hb')"),
        first_seq,
        options.heartbeat_interval,
        max_heartbeats,
    )
    .await?;
    let workload = steady_workload(
        options,
        side.src.urls(),
        rate,
        options.seed.wrapping_add(index as u64 + 1),
    )
    .await;
    let (last_seq, sent, failed) = heartbeats.finish().await;
    let lag = lag_sampler.finish().await;
    let workload = workload?;
    // Drain: replicated time past every source clock ⇒ every row written so far applied.
    let bound = newest_clock(&side.src).await?;
    or_cancel(
        &options.cancel,
        ldr::wait_replicated_past(
            &side.dst,
            side.job,
            bound,
            options.apply_deadline(workload.rows_written),
        ),
    )
    .await?;
    let (cpu_src1, cpu_dst1) = side.cpu();
    let cpu_window_s = cpu_started.elapsed().as_secs_f64();
    let applied = applied_sampler.finish().await;
    let last = last_seq.unwrap_or(first_seq - 1);
    let rows = sql::query_text(
        &side.dst_client,
        &format!(
            "SELECT seq, crdb_internal_origin_timestamp, crdb_internal_mvcc_timestamp FROM {HB_TABLE} WHERE seq >= {first_seq} AND seq <= {last}"
        ),
    )
    .await?;
    let mut points = Vec::with_capacity(rows.rows.len());
    for row in &rows.rows {
        let origin = parse_ts(
            row.get(1).and_then(|v| v.as_ref()),
            "crdb_internal_origin_timestamp",
        )?;
        let applied_at = parse_ts(
            row.get(2).and_then(|v| v.as_ref()),
            "crdb_internal_mvcc_timestamp",
        )?;
        let latency_ms = (applied_at.wall_time_ns as f64 - origin.wall_time_ns as f64) / 1e6;
        points.push((origin.wall_time_ns as f64 / 1e9 - t0, latency_ms));
    }
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    if (points.len() as u64) < sent {
        return Err(SimError::Invariant(format!(
            "ldr steady: {} of {sent} heartbeats reached the destination after replicated time passed {bound}",
            points.len()
        )));
    }
    let latencies: Vec<f64> = points.iter().map(|p| p.1).collect();
    let lags: Vec<f64> = lag.iter().map(|p| p.1).collect();
    let entry = &mut report.steady.rates[index];
    entry.commit_latency_ms = Percentiles::of(&latencies);
    entry.lag_ms = Percentiles::of(&lags);
    entry.ldr_achieved_rows_per_s = Some(workload.rows_written_per_s);
    entry.ldr_workload_errors = workload.errors + failed;
    entry.ldr_heartbeats_sent = sent;
    entry.ldr_write_latency_ms = super::write_latency(&workload);
    if index == 0
        && workload.rows_written > 0
        && let Some(idle) = report.replication.idle_cpu_cores
    {
        let used = (cpu_src1 - cpu_src0) + (cpu_dst1 - cpu_dst0);
        report.replication.cpu_us_per_row_steady_above_idle =
            Some((used - idle * cpu_window_s).max(0.0) * 1e6 / workload.rows_written as f64);
    }
    entry.ldr_cpu = Some(CpuUse::new(
        cpu_src1 - cpu_src0,
        cpu_dst1 - cpu_dst0,
        workload.rows_written,
    ));
    if workload.errors > 0 {
        report.notes.push(format!(
            "ldr steady @{rate}: {} workload errors {:?}",
            workload.errors, workload.errors_by_kind
        ));
    }
    let series = &mut report.series.steady[index];
    series.ldr_applied = applied;
    series.ldr_commit_latency = points;
    series.ldr_lag = lag;
    reporter.note(&format!(
        "ldr: {:.0} rows/s achieved, commit latency p50/p99/max {} ms ({} heartbeats), replicated-time lag {} ms",
        workload.rows_written_per_s,
        entry.commit_latency_ms.short(),
        entry.commit_latency_ms.count,
        entry.lag_ms.short()
    ));
    Ok(())
}

async fn conflicts(
    options: &BenchOptions,
    reporter: &Reporter,
    report: &mut BenchReport,
    side: &LdrSide,
) -> Result<()> {
    reporter.step(&format!(
        "ldr bidirectional conflicts: {} keys, {} rows/s on each cluster for {:?}",
        options.conflict_keys, options.conflict_rate, options.duration
    ));
    let schema = format!("CREATE TABLE {CONFLICT_TABLE} (k INT8 PRIMARY KEY, v TEXT)");
    side.src.exec(1, &schema).await?;
    side.dst.exec(1, &schema).await?;
    ldr::create_external_connection(&side.src, DEST_CONNECTION, &side.dst).await?;
    let job_a = ldr::create_stream(
        &side.src,
        DEST_CONNECTION,
        &[CONFLICT_TABLE],
        &[CONFLICT_TABLE],
        side.variant.mode.stream_options(),
    )
    .await?;
    let job_b = ldr::create_stream(
        &side.dst,
        SOURCE_CONNECTION,
        &[CONFLICT_TABLE],
        &[CONFLICT_TABLE],
        side.variant.mode.stream_options(),
    )
    .await?;
    let now = newest_clock(&side.src)
        .await?
        .max(newest_clock(&side.dst).await?);
    ldr::wait_replicated_past(&side.src, job_a, now, Duration::from_secs(120)).await?;
    ldr::wait_replicated_past(&side.dst, job_b, now, Duration::from_secs(120)).await?;
    let too_old = "logical_replication_kv_update_too_old";
    let dlqed = "logical_replication_events_dlqed";
    let before_losses = counter_sum(&side.src, too_old).await.unwrap_or(0.0)
        + counter_sum(&side.dst, too_old).await.unwrap_or(0.0);
    let before_dlq = counter_sum(&side.src, dlqed).await.unwrap_or(0.0)
        + counter_sum(&side.dst, dlqed).await.unwrap_or(0.0);
    let config = KvConfig {
        table: CONFLICT_TABLE.into(),
        keys: options.conflict_keys,
        batch: 1,
        value_bytes: options.value_bytes,
        distribution: KeyDistribution::Uniform,
        ..KvConfig::default()
    };
    let load = |urls: Vec<String>, seed: u64| {
        LoadOptions::new(urls)
            .concurrency(2)
            .duration(options.duration)
            .max_rate(options.conflict_rate as f64)
            .seed(seed)
            .progress(Progress::Log)
            .cancel(options.cancel.clone())
    };
    let started = Instant::now();
    let (load_a, load_b) = (
        load(side.src.urls(), options.seed ^ 0xa),
        load(side.dst.urls(), options.seed ^ 0xb),
    );
    let (a, b) = tokio::join!(kvw::run(&config, &load_a), kvw::run(&config, &load_b));
    let (a, b) = (a?, b?);
    let elapsed = started.elapsed().as_secs_f64();
    report.conflicts.rows_written_a = a.summary.rows_written;
    report.conflicts.rows_written_b = b.summary.rows_written;
    report.conflicts.duration_s = elapsed;
    reporter.note("quiescing: waiting for both jobs to replicate past every clock");
    let bound = newest_clock(&side.src)
        .await?
        .max(newest_clock(&side.dst).await?);
    ldr::wait_replicated_past(&side.src, job_a, bound, Duration::from_secs(180)).await?;
    ldr::wait_replicated_past(&side.dst, job_b, bound, Duration::from_secs(180)).await?;
    let converged = wait_converged(
        &side.src.url(1)?,
        &side.dst.url(1)?,
        CONFLICT_TABLE,
        Duration::from_secs(60),
    )
    .await;
    let after_losses = counter_sum(&side.src, too_old).await.unwrap_or(0.0)
        + counter_sum(&side.dst, too_old).await.unwrap_or(0.0);
    let after_dlq = counter_sum(&side.src, dlqed).await.unwrap_or(0.0)
        + counter_sum(&side.dst, dlqed).await.unwrap_or(0.0);
    let k = &mut report.conflicts;
    k.lww_losses = (after_losses - before_losses).max(0.0) as u64;
    k.lww_losses_per_s = Some(k.lww_losses as f64 / elapsed.max(1e-9));
    k.dlq_rows = (after_dlq - before_dlq).max(0.0) as u64;
    match converged {
        Ok(fingerprints) => {
            k.converged = true;
            k.fingerprints = Some(fingerprints.to_string());
        }
        Err(e) => {
            k.converged = false;
            k.error = Some(e.to_string());
        }
    }
    reporter.note(&format!(
        "LWW losses {} ({:.1}/s), DLQ rows {}, converged: {}",
        k.lww_losses,
        k.lww_losses_per_s.unwrap_or(0.0),
        k.dlq_rows,
        k.converged
    ));
    Ok(())
}

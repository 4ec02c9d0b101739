//! `ldr bench`: one command that measures how fast ldr replicates, with what lag and at what
//! conflict rate, next to PostgreSQL logical replication and raw RocksDB on the same machine,
//! in the same run. It builds its own topology on loopback in temp dirs, runs, tears down, and
//! writes a JSON report, a terminal table and an SVG plot (see `docs/benchmarks.md` for how to
//! read every figure and how it is measured).
//!
//! Phases, in this order (each system alone on the machine while it is measured):
//! 1. **rocksdb**: raw batched put and read-check-write rates ([`ldr_storage::bench`]);
//! 2. **postgres** (unless skipped): two local PostgreSQL 15 servers with a publication and a
//!    subscription; catch-up (subscription disabled while loading, marker row, ENABLE) and the
//!    steady rates (per-row heartbeat lag `dst_ts − src_ts`), following
//!    `reference/pg-peer-notes.md`;
//! 3. **ldr**: a source and a destination cluster of `nodes` nodes each with a one-way stream
//!    of `kv` and `hb`; catch-up (job paused while loading, RESUME, replicated time past every
//!    source clock, count verified, end = newest destination commit timestamp), steady rates
//!    (per heartbeat row: destination commit timestamp − origin commit timestamp; replicated
//!    time lag every 100 ms), then bidirectional conflicts on `kvc` with a fingerprint check.
//!    Once per LDR apply mode of `--mode` (`immediate`, `validated`, or `both`: immediate then
//!    validated, each on fresh clusters); the first mode fills the top-level ldr figures, and
//!    every mode has an entry in `ldr_modes` with its ratios to immediate mode and PostgreSQL.
//!    After them, a BACKUP and RESTORE of the destination's `kv`, then changefeeds on it (the
//!    emit rate of an initial scan and of live changes, beside the RocksDB scan rate).
//!
//! Every wait polls a condition with a deadline; every load is bounded by a row count or a
//! duration; the run stops early (and still reports) when its cancellation token fires.

mod ldr_side;
mod pg_side;
pub mod procfs;
pub mod progress;
pub mod report;
pub mod stats;
pub mod svg;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_postgres::types::Type;
use tokio_util::sync::CancellationToken;

use crate::error::{Result, SimError};
pub use crate::ldr::ApplyMode;
use crate::sql;
use crate::workload::kv::{self, KeyDistribution, KvConfig};
use crate::workload::{LoadOptions, Progress, ProgressLine, WorkloadSummary};
pub use procfs::Machine;
use progress::Reporter;
pub use report::{BenchReport, render_svg, render_table};

/// Table of the catch-up and steady phases (same shape on both systems).
pub const KV_TABLE: &str = "kv";
/// Heartbeat table (ldr: same shape on both sides; PostgreSQL: `dst_ts` on the subscriber).
pub const HB_TABLE: &str = "hb";
/// Table of the bidirectional conflict phase.
pub const CONFLICT_TABLE: &str = "kvc";

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Nodes per ldr cluster (source and destination alike).
    pub nodes: usize,
    /// Rows loaded for the catch-up phase, and the key space of the steady phase (rounded up
    /// to a multiple of `load_batch`).
    pub rows: u64,
    /// Length of each steady rate and of the conflict phase.
    pub duration: Duration,
    /// Offered rows per second of the steady phase, one phase per rate.
    pub steady_rates: Vec<u64>,
    /// Directory for the JSON report and the plot.
    pub out_dir: PathBuf,
    pub skip_postgres: bool,
    /// Run only the PostgreSQL and RocksDB phases (tests of the harness without ldr).
    pub skip_ldr: bool,
    /// The `ldr` executable that nodes run.
    pub ldr_binary: Option<PathBuf>,
    /// Rows per statement while loading (100, as the issue asks).
    pub load_batch: usize,
    /// Rows per statement in the steady phase.
    pub steady_batch: usize,
    pub value_bytes: usize,
    /// Connections of the load and steady workloads.
    pub concurrency: usize,
    /// One heartbeat row every this long during the steady phase.
    pub heartbeat_interval: Duration,
    /// Key space of the conflict phase (small: many conflicts).
    pub conflict_keys: u64,
    /// Rows per second written on each cluster in the conflict phase.
    pub conflict_rate: u64,
    /// Keys of the raw RocksDB phases (default: `rows`, at least 20,000, at most 2,000,000).
    pub rocksdb_keys: Option<u64>,
    pub seed: u64,
    /// No progress output on stderr.
    pub quiet: bool,
    /// The command line, echoed into the report.
    pub command: String,
    pub cancel: CancellationToken,
    /// Durability of both systems: `true` fsyncs ldr's Raft log before a replicated write is
    /// acknowledged (`kv.raft_log.disable_synchronization_unsafe = false`, ldr's own default)
    /// and runs PostgreSQL with `fsync = on`; `false` (the benchmark's default, as before
    /// ranges were replicated) writes ldr's log without syncing it
    /// (`disable_synchronization_unsafe = true`) and runs PostgreSQL with `fsync = off`.
    pub raft_log_sync: bool,
    /// Voters per range (`ALTER RANGE default CONFIGURE ZONE USING num_replicas`, set before
    /// the tables are created); `None` keeps the cluster default (3, capped by `nodes`).
    pub replicas: Option<usize>,
    /// LDR apply modes to measure, in order, each on fresh clusters with the same phases
    /// (`--mode`: `[Immediate]` by default, `[Immediate, Validated]` for `both`). The first
    /// mode's figures fill the report's top-level ldr fields; every mode's are in `ldr_modes`.
    pub modes: Vec<ApplyMode>,
    /// Cluster security to measure, in order (`--secure`: `[false]` by default, `[true]` for
    /// `on`, `[false, true]` for `both`): each apply mode runs once per entry, on fresh
    /// clusters; a secure run's clusters have their own CAs, SQL and node-to-node traffic
    /// over TLS, and the stream dials the source with verify-full TLS and a password. Its
    /// `ldr_modes` entry is `<mode>+tls`, so `immediate+tls` against `immediate` is the cost
    /// of TLS.
    pub security: Vec<bool>,
}

/// One LDR configuration the benchmark measures: an apply mode over insecure or secure
/// (TLS) clusters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Variant {
    pub mode: ApplyMode,
    pub secure: bool,
}

impl std::fmt::Display for Variant {
    /// `immediate`, `validated`, `immediate+tls`, …: its name in `ldr_modes`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.secure {
            write!(f, "{}+tls", self.mode)
        } else {
            write!(f, "{}", self.mode)
        }
    }
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            nodes: 1,
            rows: 1_000_000,
            duration: Duration::from_secs(30),
            steady_rates: vec![20_000],
            out_dir: PathBuf::from("bench/results"),
            skip_postgres: false,
            skip_ldr: false,
            ldr_binary: None,
            load_batch: 100,
            steady_batch: 10,
            value_bytes: 100,
            concurrency: 4,
            heartbeat_interval: Duration::from_millis(20),
            conflict_keys: 100,
            conflict_rate: 1000,
            rocksdb_keys: None,
            seed: crate::workload::seed_from_env(),
            quiet: false,
            command: String::new(),
            cancel: CancellationToken::new(),
            raft_log_sync: false,
            replicas: None,
            modes: vec![ApplyMode::Immediate],
            security: vec![false],
        }
    }
}

impl BenchOptions {
    /// Every (apply mode, security) pair to run, in order: security outermost, so the
    /// insecure runs come first and the first variant is the baseline.
    pub fn variants(&self) -> Vec<Variant> {
        self.security
            .iter()
            .flat_map(|&secure| self.modes.iter().map(move |&mode| Variant { mode, secure }))
            .collect()
    }

    fn validate(&mut self) -> Result<()> {
        let bad = |m: &str| Err(SimError::InvalidArgument(m.to_string()));
        if self.nodes == 0 || self.nodes > 9 {
            return bad("--nodes must be between 1 and 9");
        }
        if self.load_batch == 0 || self.steady_batch == 0 || self.concurrency == 0 {
            return bad("batch sizes and concurrency must be at least 1");
        }
        if self.rows == 0 {
            return bad("--rows must be at least 1");
        }
        self.rows = self.rows.div_ceil(self.load_batch as u64) * self.load_batch as u64;
        if (self.steady_batch as u64) > self.rows {
            return bad("the steady batch must not exceed --rows");
        }
        if self.duration.is_zero() {
            return bad("--duration must be positive");
        }
        if self.steady_rates.is_empty() || self.steady_rates.contains(&0) {
            return bad("--steady-rate needs one or more positive rates");
        }
        if self.steady_rates.len() > 20 {
            return bad("at most 20 steady rates");
        }
        if self.heartbeat_interval.is_zero() || self.conflict_keys == 0 || self.conflict_rate == 0 {
            return bad("heartbeat interval, conflict keys and conflict rate must be positive");
        }
        if self.value_bytes == 0 {
            return bad("values need at least one byte");
        }
        if self.modes.is_empty() {
            return bad("--mode needs at least one LDR apply mode");
        }
        if self
            .modes
            .iter()
            .enumerate()
            .any(|(i, m)| self.modes[..i].contains(m))
        {
            return bad("--mode lists a mode twice");
        }
        if self.security.is_empty()
            || (self.security.len() == 2 && self.security[0] == self.security[1])
            || self.security.len() > 2
        {
            return bad("--secure needs off, on or both");
        }
        if let Some(r) = self.replicas
            && (r == 0 || r > self.nodes)
        {
            return bad("--replicas must be between 1 and --nodes");
        }
        if self.raft_log_sync && !self.skip_ldr && self.replication_factor() < 2 {
            // Single-copy ranges are outside Raft: their writes go to the node's RocksDB WAL,
            // which is never synced, so PostgreSQL with fsync on would not be a fair peer.
            return bad(
                "--raft-log-sync=on needs replicated ranges (--nodes and --replicas of 2 or more): \
                 single-copy ranges never sync their WAL, so the comparison with PostgreSQL \
                 (fsync = on) would not be fair",
            );
        }
        Ok(())
    }

    /// Voters per range the clusters should have: `--replicas`, or the default zone's 3
    /// capped by the nodes there are.
    pub fn replication_factor(&self) -> usize {
        self.replicas.unwrap_or(self.nodes.min(3))
    }

    /// `on` / `off`.
    pub fn raft_log_sync_text(&self) -> &'static str {
        if self.raft_log_sync { "on" } else { "off" }
    }

    fn kv_config(&self, batch: usize, distribution: KeyDistribution) -> KvConfig {
        KvConfig {
            table: KV_TABLE.into(),
            keys: self.rows,
            batch,
            value_bytes: self.value_bytes,
            distribution,
            ..KvConfig::default()
        }
    }

    fn rocksdb_keys(&self) -> u64 {
        self.rocksdb_keys
            .unwrap_or(self.rows)
            .clamp(20_000, 2_000_000)
    }

    /// Generous deadline for waiting on `rows` rows to replicate (never unbounded).
    fn apply_deadline(&self, rows: u64) -> Duration {
        Duration::from_secs(120) + Duration::from_secs_f64(rows as f64 / 1_000.0)
    }
}

/// `release` / `debug` from the binary's path (cargo's layout), else `unknown`.
pub fn build_kind(binary: &Path) -> String {
    let text = binary.to_string_lossy();
    if text.contains("/release/") {
        "release".into()
    } else if text.contains("/debug/") {
        "debug".into()
    } else {
        "unknown".into()
    }
}

/// Seconds since the Unix epoch, from the system clock (the clock every process on this
/// machine shares: ldr's HLC wall time and PostgreSQL's `clock_timestamp()` read it too).
pub(crate) fn epoch_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn cancelled() -> SimError {
    SimError::Process("the benchmark was cancelled".into())
}

/// Runs `future` unless the token fires first.
pub(crate) async fn or_cancel<T>(
    cancel: &CancellationToken,
    future: impl Future<Output = Result<T>>,
) -> Result<T> {
    tokio::select! {
        result = future => result,
        _ = cancel.cancelled() => Err(cancelled()),
    }
}

/// Loads `options.rows` rows (`load_batch` per statement, keys `0..rows`, each once) into the
/// table behind `urls`, with a progress bar. Returns the workload summary.
pub(crate) async fn load_rows(
    options: &BenchOptions,
    reporter: &Reporter,
    urls: Vec<String>,
    label: &str,
) -> Result<WorkloadSummary> {
    let config = options.kv_config(options.load_batch, KeyDistribution::Sequential);
    let statements = options.rows / options.load_batch as u64;
    let (tx, mut rx) = mpsc::channel::<ProgressLine>(64);
    let load = LoadOptions::new(urls)
        .concurrency(options.concurrency)
        .max_ops(statements)
        .duration(Duration::from_secs(3600))
        .seed(options.seed)
        .progress(Progress::Channel(tx))
        .cancel(options.cancel.clone());
    let mut bar = reporter.bar(label, options.rows, "rows");
    let batch = options.load_batch as f64;
    let drive = async {
        let mut loaded = 0.0f64;
        let mut last_elapsed = 0.0f64;
        // Ends when the workload drops its sender.
        while let Some(line) = rx.recv().await {
            loaded += line.ops_per_s * (line.elapsed_s - last_elapsed) * batch;
            last_elapsed = line.elapsed_s;
            bar.set(loaded as u64);
        }
    };
    // The run owns the options (and so the progress sender): when it ends, the channel
    // closes and `drive` ends too.
    let run = async move { kv::run(&config, &load).await };
    let (run, ()) = tokio::join!(run, drive);
    let run = run?;
    bar.finish(run.summary.rows_written);
    if run.summary.errors > 0 || run.summary.rows_written != options.rows {
        return Err(SimError::Invariant(format!(
            "{label}: loaded {} of {} rows ({} errors: {:?})",
            run.summary.rows_written, options.rows, run.summary.errors, run.summary.errors_by_kind
        )));
    }
    Ok(run.summary)
}

/// The workload's statement latency (its HDR summary) in the report's percentile shape
/// (`p90` is not kept by the summary: `null`).
pub(crate) fn write_latency(summary: &WorkloadSummary) -> stats::Percentiles {
    let l = &summary.latency;
    if l.count == 0 {
        return stats::Percentiles::default();
    }
    stats::Percentiles {
        count: l.count,
        p50: Some(l.p50_ms),
        p90: None,
        p99: Some(l.p99_ms),
        max: Some(l.max_ms),
        mean: Some(l.mean_ms),
    }
}

/// Runs the steady kv workload (upserts of existing keys at `rate` rows/s for the duration).
pub(crate) async fn steady_workload(
    options: &BenchOptions,
    urls: Vec<String>,
    rate: u64,
    seed: u64,
) -> Result<WorkloadSummary> {
    let config = options.kv_config(options.steady_batch, KeyDistribution::Uniform);
    let load = LoadOptions::new(urls)
        .concurrency(options.concurrency)
        .duration(options.duration)
        .max_rate(rate as f64 / options.steady_batch as f64)
        .seed(seed)
        .progress(if options.quiet {
            Progress::Log
        } else {
            Progress::Stdout
        })
        .cancel(options.cancel.clone());
    Ok(kv::run(&config, &load).await?.summary)
}

/// A background task that samples a value every `interval` and keeps `(seconds since
/// `origin`, value)` pairs (at most `MAX_SAMPLES`).
pub(crate) struct Sampler {
    stop: CancellationToken,
    handle: JoinHandle<Vec<(f64, f64)>>,
}

const MAX_SAMPLES: usize = 200_000;

impl Sampler {
    pub(crate) fn spawn<F, Fut>(interval: Duration, origin_epoch_s: f64, mut probe: F) -> Sampler
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = Option<f64>> + Send,
    {
        let stop = CancellationToken::new();
        let token = stop.clone();
        let handle = tokio::spawn(async move {
            let mut out = Vec::new();
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            while out.len() < MAX_SAMPLES {
                tokio::select! {
                    _ = ticker.tick() => {}
                    _ = token.cancelled() => break,
                }
                let probe_result = tokio::select! {
                    v = probe() => v,
                    _ = token.cancelled() => break,
                };
                if let Some(value) = probe_result {
                    out.push((epoch_now() - origin_epoch_s, value));
                }
            }
            out
        });
        Sampler { stop, handle }
    }

    pub(crate) async fn finish(self) -> Vec<(f64, f64)> {
        self.stop.cancel();
        self.handle.await.unwrap_or_default()
    }
}

/// Writes one heartbeat row every `interval` with `insert` (one INT8 parameter: the sequence
/// number, starting at `first_seq`) until stopped. Returns the last sequence number written,
/// the number written, and the number of failed inserts.
pub(crate) struct Heartbeats {
    stop: CancellationToken,
    handle: JoinHandle<(Option<i64>, u64, u64)>,
}

impl Heartbeats {
    pub(crate) async fn spawn(
        url: &str,
        insert: &str,
        first_seq: i64,
        interval: Duration,
        max_rows: u64,
    ) -> Result<Heartbeats> {
        let client = sql::connect(url, sql::CONNECT_TIMEOUT).await?;
        let statement = client
            .prepare_typed(insert, &[Type::INT8])
            .await
            .map_err(|e| SimError::sql(format!("preparing {insert:?}"), e))?;
        let stop = CancellationToken::new();
        let token = stop.clone();
        let handle = tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut seq = first_seq;
            let mut last = None;
            let (mut written, mut failed) = (0u64, 0u64);
            while written + failed < max_rows {
                tokio::select! {
                    _ = ticker.tick() => {}
                    _ = token.cancelled() => break,
                }
                let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&seq];
                let insert = tokio::select! {
                    result = client.execute(&statement, &params) => result,
                    _ = token.cancelled() => break,
                };
                match insert {
                    Ok(_) => {
                        last = Some(seq);
                        written += 1;
                    }
                    Err(e) => {
                        failed += 1;
                        tracing::debug!(seq, error = %crate::error::describe_sql_error(&e), "heartbeat insert failed");
                    }
                }
                seq += 1;
            }
            (last, written, failed)
        });
        Ok(Heartbeats { stop, handle })
    }

    pub(crate) async fn finish(self) -> (Option<i64>, u64, u64) {
        self.stop.cancel();
        self.handle.await.unwrap_or((None, 0, 0))
    }
}

/// The latest value a sampler saw, shared with a progress bar.
#[derive(Default)]
pub(crate) struct Watch {
    value: AtomicI64,
}

impl Watch {
    pub(crate) fn set(&self, v: f64) {
        self.value.store(v as i64, Ordering::Relaxed);
    }

    pub(crate) fn get(&self) -> u64 {
        self.value.load(Ordering::Relaxed).max(0) as u64
    }
}

/// Deadline for one polling query (a hung server must not hang the benchmark).
pub(crate) const POLL_TIMEOUT: Duration = Duration::from_secs(10);

/// `future` with [`POLL_TIMEOUT`]; a timeout becomes an error message.
pub(crate) async fn polled<T>(
    future: impl Future<Output = std::result::Result<T, String>>,
) -> std::result::Result<T, String> {
    match tokio::time::timeout(POLL_TIMEOUT, future).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {POLL_TIMEOUT:?}")),
    }
}

/// Where the run writes and what it found.
#[derive(Debug, Clone)]
pub struct BenchOutcome {
    pub report: BenchReport,
    pub json_path: PathBuf,
    pub svg_path: PathBuf,
}

fn file_stem(nodes: usize) -> String {
    format!(
        "bench-{}-nodes{nodes}",
        chrono::Utc::now().format("%Y%m%d-%H%M%S")
    )
}

/// Runs the benchmark, writes the JSON report and the plot, and returns them. A phase that
/// fails is recorded in `report.failures` (status `failed`) and the run goes on with what is
/// independent of it; only bad options and unwritable output are `Err`.
pub async fn run(mut options: BenchOptions) -> Result<BenchOutcome> {
    options.validate()?;
    let ldr_binary = if options.skip_ldr {
        options.ldr_binary.clone().unwrap_or_default()
    } else {
        match options.ldr_binary.clone() {
            Some(path) => path,
            None => crate::find_ldr_binary()?,
        }
    };
    std::fs::create_dir_all(&options.out_dir)
        .map_err(|e| SimError::io(format!("creating {}", options.out_dir.display()), e))?;
    let stem = file_stem(options.nodes);
    let json_path = options.out_dir.join(format!("{stem}.json"));
    let svg_path = options.out_dir.join(format!("{stem}.svg"));
    let reporter = Reporter::new(options.quiet);
    let started = Instant::now();
    let mut report = BenchReport {
        version: report::REPORT_VERSION,
        started_at: chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        command: options.command.clone(),
        config: report::ConfigEcho {
            nodes: options.nodes,
            rows: options.rows,
            duration_s: options.duration.as_secs_f64(),
            steady_rates: options.steady_rates.clone(),
            load_batch: options.load_batch,
            steady_batch: options.steady_batch,
            value_bytes: options.value_bytes,
            concurrency: options.concurrency,
            heartbeat_interval_ms: options.heartbeat_interval.as_secs_f64() * 1000.0,
            conflict_keys: options.conflict_keys,
            conflict_rate_per_side: options.conflict_rate,
            seed: options.seed,
            skip_postgres: options.skip_postgres,
            skip_ldr: options.skip_ldr,
            ldr_binary: ldr_binary.display().to_string(),
            ldr_build: build_kind(&ldr_binary),
            raft_log_sync: options.raft_log_sync,
            replicas: options.replicas,
            ldr_modes: if options.skip_ldr {
                Vec::new()
            } else {
                options.variants().iter().map(|v| v.to_string()).collect()
            },
        },
        durability: report::DurabilityReport {
            raft_log_sync: options.raft_log_sync_text().into(),
            summary: durability_summary(&options),
            ..Default::default()
        },
        machine: Machine::detect(),
        catchup: report::CatchupReport {
            rows: options.rows,
            batch: options.load_batch,
            value_bytes: options.value_bytes,
            ..Default::default()
        },
        conflicts: report::ConflictReport {
            keys: options.conflict_keys,
            rate_per_side: options.conflict_rate,
            ..Default::default()
        },
        ..BenchReport::default()
    };
    report.steady.rates = options
        .steady_rates
        .iter()
        .map(|&rate| report::SteadyRate {
            rate_rows_per_s: rate,
            duration_s: options.duration.as_secs_f64(),
            batch: options.steady_batch,
            ..Default::default()
        })
        .collect();
    report.series.steady = options
        .steady_rates
        .iter()
        .map(|&rate| report::SteadySeries {
            rate_rows_per_s: rate,
            ..Default::default()
        })
        .collect();
    if report.config.ldr_build == "debug" && !options.skip_ldr {
        report.notes.push(
            "the ldr binary is a debug build: its figures are not representative (use scripts/bench or a --release build)".into(),
        );
    }
    reporter.step(&format!(
        "ldr bench: nodes={} rows={} duration={:?} rates={:?} seed={} raft-log-sync={} replicas={} mode={} ({} cores, {})",
        options.nodes,
        options.rows,
        options.duration,
        options.steady_rates,
        options.seed,
        options.raft_log_sync_text(),
        options.replication_factor(),
        options
            .modes
            .iter()
            .map(|m| m.as_str())
            .collect::<Vec<_>>()
            .join(","),
        report.machine.cores,
        report.machine.memory
    ));

    // 1. The storage limit, alone on the machine.
    if let Err(e) = run_rocksdb(&options, &reporter, &mut report).await {
        report.failures.push(format!("rocksdb limit: {e}"));
    }
    // 2. PostgreSQL.
    if !options.skip_postgres && !options.cancel.is_cancelled() {
        if crate::pg::postgres_available() {
            if let Err(e) = pg_side::run(&options, &reporter, &mut report).await {
                report.failures.push(format!("postgres: {e}"));
            }
        } else {
            report.failures.push(format!(
                "postgres: PostgreSQL 15 is not installed at {} (set LDR_PG_BIN_DIR, or pass --skip-postgres)",
                crate::pg::PgConfig::new("probe").bin_dir.display()
            ));
        }
    }
    // 3. ldr, once per apply mode.
    if !options.skip_ldr {
        run_ldr_modes(&options, &ldr_binary, &reporter, &mut report).await;
    }
    if options.cancel.is_cancelled() {
        report.failures.push("cancelled before the end".into());
    }
    report.finished_at = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string();
    report.elapsed_s = started.elapsed().as_secs_f64();
    report.files = report::Files {
        json: json_path.display().to_string(),
        svg: svg_path.display().to_string(),
    };
    report.finalize();
    let json = serde_json::to_string_pretty(&report)?;
    std::fs::write(&json_path, json + "\n")
        .map_err(|e| SimError::io(format!("writing {}", json_path.display()), e))?;
    std::fs::write(&svg_path, render_svg(&report))
        .map_err(|e| SimError::io(format!("writing {}", svg_path.display()), e))?;
    Ok(BenchOutcome {
        report,
        json_path,
        svg_path,
    })
}

/// The LDR side once per variant of `options.variants()` (apply mode × security), in order,
/// each on fresh clusters. The first variant runs into `report` itself (its figures are the
/// top-level ldr fields, as before modes existed); every later one runs into a copy of the
/// report as it was before the first (PostgreSQL's figures included, so its ratios are
/// computed alike), and only its `ldr_modes` entry, its catch-up curve, and its failures and
/// notes (prefixed with the variant) come back.
async fn run_ldr_modes(
    options: &BenchOptions,
    ldr_binary: &Path,
    reporter: &Reporter,
    report: &mut BenchReport,
) {
    let before = report.clone();
    for (index, variant) in options.variants().into_iter().enumerate() {
        if options.cancel.is_cancelled() {
            return;
        }
        let mut copy = (index > 0).then(|| before.clone());
        let target = match copy.as_mut() {
            Some(copy) => copy,
            None => &mut *report,
        };
        // Boxed: the side's future is large, and each variant adds to the caller's stack.
        if let Err(e) = Box::pin(ldr_side::run(
            options, variant, ldr_binary, reporter, target,
        ))
        .await
        {
            target
                .failures
                .push(if index == 0 && variant.mode == ApplyMode::Immediate {
                    // The text of a run before modes existed.
                    format!("ldr: {e}")
                } else {
                    format!("ldr {variant} mode: {e}")
                });
        }
        target.finalize();
        let failures: Vec<String> = target
            .failures
            .iter()
            .filter(|f| !before.failures.contains(f))
            .cloned()
            .collect();
        let label = variant.to_string();
        let mut entry = match target.ldr_modes.pop() {
            Some(entry) if entry.mode == label => entry,
            other => {
                // The side failed before its streams existed.
                target.ldr_modes.extend(other);
                report::LdrModeReport::new(&label)
            }
        };
        entry.fill_from(target, failures.clone());
        let Some(mut copy) = copy else {
            report.ldr_modes.push(entry);
            continue;
        };
        for failure in failures {
            report.failures.push(format!("{variant} mode: {failure}"));
        }
        for note in copy.notes.iter().filter(|n| !before.notes.contains(n)) {
            report.notes.push(format!("{variant} mode: {note}"));
        }
        report
            .series
            .catchup_ldr_other_modes
            .push(report::ModeSeries {
                mode: label,
                points: std::mem::take(&mut copy.series.catchup_ldr_applied),
            });
        report.ldr_modes.push(entry);
    }
}

/// What an acknowledged write survives with these options (same for both systems).
fn durability_summary(options: &BenchOptions) -> String {
    if options.raft_log_sync {
        format!(
            "sync on: ldr fsyncs the Raft log of each replicated write on a quorum of its {} replicas before acknowledging it, PostgreSQL fsyncs its WAL at commit: an acknowledged write survives an OS crash",
            options.replication_factor()
        )
    } else {
        "sync off: ldr writes its Raft log (and single-copy ranges their WAL) without syncing, PostgreSQL runs with fsync = off: an acknowledged write survives a killed process, not an OS crash (kv.raft_log.disable_synchronization_unsafe = true is for benchmarks only)".into()
    }
}

async fn run_rocksdb(
    options: &BenchOptions,
    reporter: &Reporter,
    report: &mut BenchReport,
) -> Result<()> {
    let keys = options.rocksdb_keys();
    reporter.step(&format!(
        "rocksdb limit: {keys} random keys, 1000-key batches, {}-byte values",
        options.value_bytes
    ));
    let dir = tempfile::Builder::new()
        .prefix("ldr-bench-rocksdb-")
        .tempdir()
        .map_err(|e| SimError::io("creating the rocksdb temp dir", e))?;
    let config = ldr_storage::bench::RawLimitsConfig {
        keys: keys as usize,
        value_bytes: options.value_bytes,
        seed: options.seed,
        ..Default::default()
    };
    let path = dir.path().join("db");
    let reporter_copy = *reporter;
    let cancel = options.cancel.clone();
    let limits = tokio::task::spawn_blocking(move || {
        let mut put_bar = Some(reporter_copy.bar("rocksdb put", keys, "keys"));
        let mut rcw_bar: Option<progress::Bar> = None;
        let result =
            ldr_storage::bench::measure_raw_limits(&path, &config, &mut |phase, done, _| {
                if cancel.is_cancelled() {
                    return;
                }
                match phase {
                    ldr_storage::bench::RawPhase::Put => {
                        if let Some(bar) = put_bar.as_mut() {
                            bar.set(done as u64);
                        }
                    }
                    ldr_storage::bench::RawPhase::ReadCheckWrite => {
                        if let Some(bar) = put_bar.take() {
                            bar.finish(keys);
                        }
                        rcw_bar
                            .get_or_insert_with(|| {
                                reporter_copy.bar("rocksdb read-check-write", keys, "ops")
                            })
                            .set(done as u64);
                    }
                }
            });
        if let Some(bar) = rcw_bar {
            bar.finish(keys);
        }
        result
    })
    .await
    .map_err(|e| SimError::Process(format!("the rocksdb measurement panicked: {e}")))?
    .map_err(|e| SimError::Process(format!("rocksdb: {e}")))?;
    drop(dir);
    report.rocksdb = report::RocksdbReport {
        put_per_s: Some(limits.put_per_s),
        read_check_write_per_s: Some(limits.read_check_write_per_s),
        keys,
        batch: limits.batch,
        value_bytes: limits.value_bytes,
        read_hit_fraction: Some(limits.read_hit_fraction),
        put_secs: Some(limits.put_secs),
        read_check_write_secs: Some(limits.read_check_write_secs),
        scan_per_s: Some(limits.scan_per_s),
    };
    reporter.note(&format!(
        "put {:.0} keys/s, read-check-write {:.0} ops/s ({:.0}% hits)",
        limits.put_per_s,
        limits.read_check_write_per_s,
        limits.read_hit_fraction * 100.0
    ));
    Ok(())
}

/// Convenience for callers that only need the shared state of a sampler-fed bar.
pub(crate) fn watch() -> Arc<Watch> {
    Arc::new(Watch::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid(options: BenchOptions) -> std::result::Result<BenchOptions, String> {
        let mut options = options;
        options
            .validate()
            .map(|()| options)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn sync_on_needs_replicated_ranges() {
        let one = BenchOptions {
            raft_log_sync: true,
            ..BenchOptions::default()
        };
        let error = valid(one.clone()).expect_err("one node: single-copy ranges");
        assert!(
            error.contains("--raft-log-sync=on needs replicated ranges"),
            "{error}"
        );
        // Without ldr only PostgreSQL runs, with fsync on.
        assert!(
            valid(BenchOptions {
                skip_ldr: true,
                ..one.clone()
            })
            .is_ok()
        );
        let three = BenchOptions {
            nodes: 3,
            ..one.clone()
        };
        assert_eq!(valid(three.clone()).expect("RF 3").replication_factor(), 3);
        assert!(
            valid(BenchOptions {
                replicas: Some(1),
                ..three.clone()
            })
            .is_err()
        );
        let off = BenchOptions {
            nodes: 3,
            replicas: Some(1),
            ..BenchOptions::default()
        };
        assert_eq!(valid(off).expect("RF 1 on 3 nodes").replication_factor(), 1);
        assert_eq!(
            valid(BenchOptions {
                nodes: 5,
                ..BenchOptions::default()
            })
            .expect("5 nodes")
            .replication_factor(),
            3,
            "the default zone's 3, capped by nodes"
        );
        assert!(
            valid(BenchOptions {
                nodes: 2,
                replicas: Some(3),
                ..BenchOptions::default()
            })
            .is_err()
        );
        assert!(durability_summary(&three).starts_with("sync on:"));
        // Modes: at least one, none twice.
        for (modes, ok) in [
            (vec![], false),
            (vec![ApplyMode::Validated, ApplyMode::Validated], false),
            (vec![ApplyMode::Validated], true),
            (ApplyMode::ALL.to_vec(), true),
        ] {
            let result = valid(BenchOptions {
                modes: modes.clone(),
                ..BenchOptions::default()
            });
            assert_eq!(result.is_ok(), ok, "{modes:?}: {:?}", result.err());
        }
        assert!(durability_summary(&BenchOptions::default()).starts_with("sync off:"));
    }
}

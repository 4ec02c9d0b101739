//! The benchmark's report: the JSON document (its keys are a contract that scripts and CI read,
//! see `docs/benchmarks.md`), the terminal table, and the plot built from its time series.
//! Pure: building text from a [`BenchReport`] does no I/O.
//!
//! Contract keys (always present; a figure that was not measured is `null`):
//! `catchup.ldr_rows_per_s`, `catchup.postgres_rows_per_s`,
//! `steady.commit_latency_ms.{p50,p99,max}`, `steady.lag_ms.{p50,p99,max}`,
//! `steady.postgres_lag_ms.{p50,p99,max}`, `rocksdb.put_per_s`,
//! `rocksdb.read_check_write_per_s`, `conflicts.converged` (bool), `machine.{cores,memory}`.
//! `steady.*` is the first steady rate; `steady.rates` lists every rate. Also always present:
//! `durability.raft_log_sync` (`on`/`off`), `durability.postgres_fsync`,
//! `replication.factor` (voters per range of `kv`, as measured; `null` without ldr) and the
//! cost of replication `replication.{cpu_us_per_row_catchup,cpu_us_per_row_steady}`.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::procfs::Machine;
use super::stats::{Percentiles, fmt_ms, rates_from_cumulative, ratio};
use super::svg::{self, LAG_COLOR, LDR_COLOR, POSTGRES_COLOR, Panel, Plot, Series};

/// Version of the JSON layout; bumped when a key changes meaning.
pub const REPORT_VERSION: u32 = 1;

/// What the run was asked to do (echoed into the report).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConfigEcho {
    pub nodes: usize,
    pub rows: u64,
    pub duration_s: f64,
    pub steady_rates: Vec<u64>,
    pub load_batch: usize,
    pub steady_batch: usize,
    pub value_bytes: usize,
    pub concurrency: usize,
    pub heartbeat_interval_ms: f64,
    pub conflict_keys: u64,
    pub conflict_rate_per_side: u64,
    pub seed: u64,
    pub skip_postgres: bool,
    pub skip_ldr: bool,
    pub ldr_binary: String,
    /// `release` or `debug` build of the `ldr` binary, when known.
    pub ldr_build: String,
    /// `--raft-log-sync`: Raft log appends fsynced (and PostgreSQL's `fsync = on`).
    #[serde(default)]
    pub raft_log_sync: bool,
    /// `--replicas`: voters per range asked for (`null`: the cluster default, 3 capped by
    /// nodes).
    #[serde(default)]
    pub replicas: Option<usize>,
    /// `--mode`: the LDR apply modes run, in order (`immediate`, `validated`); the first
    /// mode's figures are the top-level `catchup.ldr_*`, `steady.*`, `conflicts.*` and
    /// `replication.*`; every mode's are in `ldr_modes`. Empty in reports written before the
    /// option existed (they ran immediate mode).
    #[serde(default)]
    pub ldr_modes: Vec<String>,
}

/// The durability both systems ran with (same on both: the comparison is only fair then).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DurabilityReport {
    /// `on`: ldr fsyncs the Raft log before acknowledging a replicated write
    /// (`kv.raft_log.disable_synchronization_unsafe = false`); `off`: the log is written,
    /// not synced (`= true`). Single-copy ranges never sync their WAL.
    pub raft_log_sync: String,
    /// `kv.raft_log.disable_synchronization_unsafe` as read back from every node of both
    /// clusters after it was set (`null`: ldr did not run or a node disagreed).
    pub disable_synchronization_unsafe: Option<bool>,
    /// `SHOW fsync` on the publisher and the subscriber (`null`: PostgreSQL did not run).
    pub postgres_fsync: Option<String>,
    /// `SHOW synchronous_commit` on the publisher.
    pub postgres_synchronous_commit: Option<String>,
    /// The subscription's `synchronous_commit` (its apply worker's commits).
    pub postgres_subscription_synchronous_commit: Option<String>,
    /// One sentence: what an acknowledged write survives.
    pub summary: String,
}

/// The replication factor ldr ran with, and what replication cost per row.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReplicationReport {
    /// Voters per range of `kv`, fewest over the ranges of both clusters (`SHOW RANGES FROM
    /// TABLE kv`, read before the load).
    pub factor: Option<usize>,
    /// Most voters of any range of `kv` (equal to `factor` unless a range was mid-change).
    pub factor_max: Option<usize>,
    /// Ranges of `kv` per cluster.
    pub kv_ranges: Option<usize>,
    /// CPU microseconds per row over every node of both clusters, catch-up phase.
    pub cpu_us_per_row_catchup: Option<f64>,
    /// The destination cluster's share of it.
    pub cpu_us_per_row_catchup_destination: Option<f64>,
    /// The same in the first steady rate (the source's share includes executing the
    /// workload's SQL).
    pub cpu_us_per_row_steady: Option<f64>,
    pub cpu_us_per_row_steady_destination: Option<f64>,
    /// CPU cores busy over every node of both clusters with the stream running and nothing
    /// written (a window before the load): heartbeats, leases, closed timestamps, polling.
    #[serde(default)]
    pub idle_cpu_cores: Option<f64>,
    /// `cpu_us_per_row_steady` less what the idle clusters would have burnt over the phase:
    /// the CPU the rows themselves cost (at low rates the idle share dominates the gross).
    #[serde(default)]
    pub cpu_us_per_row_steady_above_idle: Option<f64>,
    /// Per-row latency, first steady rate: source commit → visible at the destination
    /// (= `steady.commit_latency_ms`).
    pub commit_latency_ms: Percentiles,
    /// Per-statement latency of the source's writes (`--steady-batch` rows each), first
    /// steady rate: what the Raft round trip and the log sync add to a client's write.
    pub write_latency_ms: Percentiles,
}

/// CPU time used during a phase.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct CpuUse {
    /// Source cluster (ldr nodes) or publisher (postmaster tree), seconds.
    pub source_s: f64,
    /// Destination cluster or subscriber, seconds.
    pub destination_s: f64,
    pub total_s: f64,
    /// `total_s` per 1,000 rows replicated in the phase.
    pub total_s_per_1000_rows: Option<f64>,
    /// `destination_s` per 1,000 rows.
    pub destination_s_per_1000_rows: Option<f64>,
}

impl CpuUse {
    pub fn new(source_s: f64, destination_s: f64, rows: u64) -> CpuUse {
        let per = |s: f64| (rows > 0).then(|| s * 1000.0 / rows as f64);
        CpuUse {
            source_s,
            destination_s,
            total_s: source_s + destination_s,
            total_s_per_1000_rows: per(source_s + destination_s),
            destination_s_per_1000_rows: per(destination_s),
        }
    }
}

/// Catch-up: load while replication is stopped, restart it, time until everything applied.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CatchupReport {
    pub rows: u64,
    pub batch: usize,
    pub value_bytes: usize,
    pub ldr_rows_per_s: Option<f64>,
    /// `ldr_rows_per_s / nodes`.
    pub ldr_rows_per_s_per_dest_node: Option<f64>,
    pub ldr_secs: Option<f64>,
    /// How the end was measured (see docs/benchmarks.md).
    pub ldr_end_method: Option<String>,
    /// How fast the source took the load (not the figure of merit).
    pub ldr_load_rows_per_s: Option<f64>,
    pub ldr_cpu: Option<CpuUse>,
    pub postgres_rows_per_s: Option<f64>,
    pub postgres_secs: Option<f64>,
    pub postgres_load_rows_per_s: Option<f64>,
    pub postgres_cpu: Option<CpuUse>,
    /// ldr / PostgreSQL.
    pub ratio_vs_postgres: Option<f64>,
    /// Per destination node, as a fraction of the raw RocksDB rates.
    pub ldr_fraction_of_rocksdb_put: Option<f64>,
    pub ldr_fraction_of_rocksdb_read_check_write: Option<f64>,
}

/// One steady-state rate.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SteadyRate {
    /// Offered rows per second.
    pub rate_rows_per_s: u64,
    pub duration_s: f64,
    pub batch: usize,
    /// Rows per second the source actually took.
    pub ldr_achieved_rows_per_s: Option<f64>,
    pub postgres_achieved_rows_per_s: Option<f64>,
    /// ldr: source commit → destination commit, per heartbeat row (exact, see the docs).
    pub commit_latency_ms: Percentiles,
    /// ldr: now − replicated time, sampled every 100 ms.
    pub lag_ms: Percentiles,
    /// PostgreSQL: per heartbeat row `dst_ts − src_ts` (its end-to-end lag).
    pub postgres_lag_ms: Percentiles,
    /// The same samples as `postgres_lag_ms`, under the name of the ldr figure they compare to.
    pub postgres_commit_latency_ms: Percentiles,
    /// ldr p99 / PostgreSQL p99.
    pub commit_latency_p99_ratio_vs_postgres: Option<f64>,
    pub ldr_cpu: Option<CpuUse>,
    pub postgres_cpu: Option<CpuUse>,
    pub ldr_heartbeats_sent: u64,
    pub postgres_heartbeats_sent: u64,
    pub ldr_workload_errors: u64,
    pub postgres_workload_errors: u64,
    /// The source's statement latency as the workload's clients saw it (`--steady-batch`
    /// rows per statement; HDR histogram: `p90` is not kept, `mean` is).
    #[serde(default)]
    pub ldr_write_latency_ms: Percentiles,
    #[serde(default)]
    pub postgres_write_latency_ms: Percentiles,
}

/// Steady state: the first rate's figures at the top level, every rate in `rates`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SteadyReport {
    #[serde(flatten)]
    pub first: SteadyRate,
    pub rates: Vec<SteadyRate>,
}

/// Bidirectional replication under conflicting writes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConflictReport {
    /// Whether the phase ran (it needs ldr).
    pub ran: bool,
    /// Fingerprints equal on both clusters after quiescing; false when it did not run.
    pub converged: bool,
    pub keys: u64,
    pub duration_s: f64,
    pub rate_per_side: u64,
    pub rows_written_a: u64,
    pub rows_written_b: u64,
    /// `logical_replication_kv_update_too_old` over both clusters during the phase.
    pub lww_losses: u64,
    pub lww_losses_per_s: Option<f64>,
    /// `logical_replication_events_dlqed` over both clusters during the phase.
    pub dlq_rows: u64,
    pub fingerprints: Option<String>,
    pub error: Option<String>,
}

/// The raw storage limit of this machine.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RocksdbReport {
    pub put_per_s: Option<f64>,
    pub read_check_write_per_s: Option<f64>,
    pub keys: u64,
    pub batch: usize,
    pub value_bytes: usize,
    pub read_hit_fraction: Option<f64>,
    pub put_secs: Option<f64>,
    pub read_check_write_secs: Option<f64>,
    /// A forward scan of every key (what a backup's read is bounded by).
    #[serde(default)]
    pub scan_per_s: Option<f64>,
}

/// BACKUP and RESTORE of the destination's `kv` table after the LDR phases (a backup of an
/// LDR destination table), through SQL on node 1 of the destination cluster.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BackupReport {
    pub ran: bool,
    /// Rows the backup wrote (its statement's `rows`).
    pub rows: u64,
    pub bytes: u64,
    pub backup_secs: Option<f64>,
    pub backup_rows_per_s: Option<f64>,
    pub restore_secs: Option<f64>,
    pub restore_rows_per_s: Option<f64>,
    /// `backup_rows_per_s / rocksdb.scan_per_s`.
    pub backup_fraction_of_rocksdb_scan: Option<f64>,
    /// `restore_rows_per_s / rocksdb.put_per_s`.
    pub restore_fraction_of_rocksdb_put: Option<f64>,
    pub error: Option<String>,
}

/// Changefeeds on the destination's `kv` after the backup phase, into nodelocal sinks on
/// node 1 of the destination: the emit rate of an initial scan and of live changes under a
/// write load, beside the RocksDB scan rate of the same run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChangefeedReport {
    pub ran: bool,
    /// Messages (and their JSON key and value bytes) the initial scan emitted.
    pub initial_scan_messages: u64,
    pub initial_scan_bytes: u64,
    /// From `CREATE CHANGEFEED … WITH initial_scan = 'only'` to the job's `succeeded`.
    pub initial_scan_secs: Option<f64>,
    pub initial_scan_messages_per_s: Option<f64>,
    /// Megabytes (10^6) per second.
    pub initial_scan_mb_per_s: Option<f64>,
    /// `initial_scan_messages_per_s / rocksdb.scan_per_s`.
    pub initial_scan_fraction_of_rocksdb_scan: Option<f64>,
    /// Rows the write load upserted while the live changefeed ran, and at what rate.
    pub live_rows_written: u64,
    pub live_write_rows_per_s: Option<f64>,
    /// Messages (resolved ones included) and bytes the live changefeed emitted from the
    /// load's start until its high-water mark passed the load.
    pub live_messages: u64,
    pub live_bytes: u64,
    pub live_secs: Option<f64>,
    pub live_messages_per_s: Option<f64>,
    pub live_mb_per_s: Option<f64>,
    /// `live_messages_per_s / rocksdb.scan_per_s`.
    pub live_fraction_of_rocksdb_scan: Option<f64>,
    pub error: Option<String>,
}

/// Time series of one steady rate (seconds since the phase started).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SteadySeries {
    pub rate_rows_per_s: u64,
    /// Cumulative rows applied at the destination.
    pub ldr_applied: Vec<(f64, f64)>,
    pub postgres_applied: Vec<(f64, f64)>,
    /// (source commit time, commit latency ms) per heartbeat.
    pub ldr_commit_latency: Vec<(f64, f64)>,
    pub postgres_commit_latency: Vec<(f64, f64)>,
    /// (sample time, replicated-time lag ms).
    pub ldr_lag: Vec<(f64, f64)>,
}

/// Everything the plot shows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Timelines {
    /// Cumulative rows applied since replication restarted (seconds since RESUME/ENABLE).
    pub catchup_ldr_applied: Vec<(f64, f64)>,
    pub catchup_postgres_applied: Vec<(f64, f64)>,
    pub steady: Vec<SteadySeries>,
    /// The catch-up curves of the apply modes after the first (`--mode=both`).
    #[serde(default)]
    pub catchup_ldr_other_modes: Vec<ModeSeries>,
}

/// Output files of a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Files {
    pub json: String,
    pub svg: String,
}

/// One steady rate of one LDR apply mode.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LdrModeSteady {
    pub rate_rows_per_s: u64,
    pub achieved_rows_per_s: Option<f64>,
    /// Per heartbeat row: source commit → destination commit (as `steady.commit_latency_ms`).
    pub commit_latency_ms: Percentiles,
    /// now − replicated time, sampled every 100 ms (as `steady.lag_ms`).
    pub lag_ms: Percentiles,
    /// This mode's p50 / immediate mode's p50 at the same rate (`null` without immediate).
    pub commit_latency_p50_ratio_vs_immediate: Option<f64>,
    pub commit_latency_p99_ratio_vs_immediate: Option<f64>,
    /// This mode's p99 / PostgreSQL's per-row lag p99 at the same rate.
    pub commit_latency_p99_ratio_vs_postgres: Option<f64>,
}

/// The ldr figures of one apply mode (`--mode`). Each mode runs the whole LDR side (fresh
/// source and destination clusters, catch-up, steady rates, conflicts) with its streams
/// created `WITH mode = '<mode>'` (immediate: no option, the default).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LdrModeReport {
    /// `immediate` or `validated`.
    pub mode: String,
    /// The one-way job's `command` in `SHOW LOGICAL REPLICATION JOBS WITH DETAILS`: the
    /// statement that ran, so the report shows the mode the destination really used.
    pub job_command: Option<String>,
    /// What failed in this mode's phases (also in the report's `failures`).
    pub failures: Vec<String>,
    pub catchup_rows_per_s: Option<f64>,
    pub catchup_secs: Option<f64>,
    /// CPU microseconds per row over every node of both clusters, catch-up.
    pub catchup_cpu_us_per_row: Option<f64>,
    /// The destination cluster's share.
    pub catchup_cpu_us_per_row_destination: Option<f64>,
    /// This mode's catch-up rate / immediate mode's.
    pub catchup_ratio_vs_immediate: Option<f64>,
    /// This mode's catch-up rate / PostgreSQL's.
    pub catchup_ratio_vs_postgres: Option<f64>,
    pub steady: Vec<LdrModeSteady>,
    pub conflicts_ran: bool,
    pub conflicts_converged: bool,
    /// `logical_replication_kv_update_too_old` over both clusters during the conflict phase.
    pub conflicts_lww_losses: u64,
    /// `logical_replication_events_dlqed` over both clusters during the conflict phase.
    pub conflicts_dlq_rows: u64,
    /// Over the whole LDR side of this mode, every node of both clusters (`null`: not read):
    /// failed apply attempts, first attempts and re-attempts
    /// (`logical_replication_events_initial_failure + _retry_failure`); each row that failed
    /// went to the retry queue, or to the DLQ.
    pub retries: Option<u64>,
    /// Attempts a constraint refused (`logical_replication_validated_constraint_failures`,
    /// validated mode only).
    pub constraint_failures: Option<u64>,
    /// Rows dead-lettered (`logical_replication_events_dlqed`).
    pub dlq_rows: Option<u64>,
    /// Rows lost to last-write-wins (`logical_replication_kv_update_too_old`).
    pub lww_losses: Option<u64>,
    /// Rows applied (`logical_replication_events_ingested`).
    pub rows_applied: Option<u64>,
}

/// Counters of one LDR side, summed over every node of both clusters at its end.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ApplyCounters {
    pub retries: Option<u64>,
    pub constraint_failures: Option<u64>,
    pub dlq_rows: Option<u64>,
    pub lww_losses: Option<u64>,
    pub rows_applied: Option<u64>,
}

impl LdrModeReport {
    pub fn new(mode: &str) -> LdrModeReport {
        LdrModeReport {
            mode: mode.to_string(),
            ..LdrModeReport::default()
        }
    }

    /// Copies this mode's figures from a report its LDR side ran into (after
    /// [`BenchReport::finalize`]); `failures` are the ones this side added.
    pub fn fill_from(&mut self, report: &BenchReport, failures: Vec<String>) {
        let c = &report.catchup;
        self.failures = failures;
        self.catchup_rows_per_s = c.ldr_rows_per_s;
        self.catchup_secs = c.ldr_secs;
        self.catchup_cpu_us_per_row = report.replication.cpu_us_per_row_catchup;
        self.catchup_cpu_us_per_row_destination =
            report.replication.cpu_us_per_row_catchup_destination;
        self.steady = report
            .steady
            .rates
            .iter()
            .map(|r| LdrModeSteady {
                rate_rows_per_s: r.rate_rows_per_s,
                achieved_rows_per_s: r.ldr_achieved_rows_per_s,
                commit_latency_ms: r.commit_latency_ms,
                lag_ms: r.lag_ms,
                ..LdrModeSteady::default()
            })
            .collect();
        let k = &report.conflicts;
        self.conflicts_ran = k.ran;
        self.conflicts_converged = k.converged;
        self.conflicts_lww_losses = k.lww_losses;
        self.conflicts_dlq_rows = k.dlq_rows;
    }

    pub fn set_counters(&mut self, counters: ApplyCounters) {
        self.retries = counters.retries;
        self.constraint_failures = counters.constraint_failures;
        self.dlq_rows = counters.dlq_rows;
        self.lww_losses = counters.lww_losses;
        self.rows_applied = counters.rows_applied;
    }
}

/// The catch-up curve of an apply mode after the first (the first mode's is
/// `catchup_ldr_applied`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModeSeries {
    pub mode: String,
    pub points: Vec<(f64, f64)>,
}

/// The whole report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BenchReport {
    pub version: u32,
    pub started_at: String,
    pub finished_at: String,
    pub elapsed_s: f64,
    pub command: String,
    pub config: ConfigEcho,
    pub machine: Machine,
    /// `ok` or `failed`.
    pub status: String,
    pub failures: Vec<String>,
    pub notes: Vec<String>,
    #[serde(default)]
    pub durability: DurabilityReport,
    #[serde(default)]
    pub replication: ReplicationReport,
    pub catchup: CatchupReport,
    pub steady: SteadyReport,
    pub conflicts: ConflictReport,
    pub rocksdb: RocksdbReport,
    #[serde(default)]
    pub backup: BackupReport,
    #[serde(default)]
    pub changefeed: ChangefeedReport,
    /// Every LDR apply mode that ran (`--mode`), in order, with its ratios to immediate mode
    /// and to PostgreSQL.
    #[serde(default)]
    pub ldr_modes: Vec<LdrModeReport>,
    pub series: Timelines,
    pub files: Files,
}

impl BenchReport {
    /// Fills the derived figures (ratios, fractions, `steady.first`, status).
    pub fn finalize(&mut self) {
        let c = &mut self.catchup;
        c.ratio_vs_postgres = ratio(c.ldr_rows_per_s, c.postgres_rows_per_s);
        let nodes = self.config.nodes.max(1) as f64;
        c.ldr_rows_per_s_per_dest_node = c.ldr_rows_per_s.map(|r| r / nodes);
        c.ldr_fraction_of_rocksdb_put =
            ratio(c.ldr_rows_per_s_per_dest_node, self.rocksdb.put_per_s);
        c.ldr_fraction_of_rocksdb_read_check_write = ratio(
            c.ldr_rows_per_s_per_dest_node,
            self.rocksdb.read_check_write_per_s,
        );
        self.backup.backup_fraction_of_rocksdb_scan =
            ratio(self.backup.backup_rows_per_s, self.rocksdb.scan_per_s);
        self.backup.restore_fraction_of_rocksdb_put =
            ratio(self.backup.restore_rows_per_s, self.rocksdb.put_per_s);
        let cf = &mut self.changefeed;
        cf.initial_scan_fraction_of_rocksdb_scan =
            ratio(cf.initial_scan_messages_per_s, self.rocksdb.scan_per_s);
        cf.live_fraction_of_rocksdb_scan = ratio(cf.live_messages_per_s, self.rocksdb.scan_per_s);
        for rate in &mut self.steady.rates {
            rate.postgres_commit_latency_ms = rate.postgres_lag_ms;
            rate.commit_latency_p99_ratio_vs_postgres =
                ratio(rate.commit_latency_ms.p99, rate.postgres_lag_ms.p99);
        }
        for rate in &self.steady.rates {
            for (system, achieved) in [
                ("ldr", rate.ldr_achieved_rows_per_s),
                ("postgres", rate.postgres_achieved_rows_per_s),
            ] {
                if let Some(a) = achieved
                    && a < 0.9 * rate.rate_rows_per_s as f64
                {
                    let note = format!(
                        "{system} could not take the offered {} rows/s (achieved {:.0}): its steady figures at this rate are at the achieved rate, with the source saturated",
                        rate.rate_rows_per_s, a
                    );
                    if !self.notes.contains(&note) {
                        self.notes.push(note);
                    }
                }
            }
        }
        if let Some(first) = self.steady.rates.first() {
            self.steady.first = first.clone();
        }
        let us_per_row = |cpu: Option<CpuUse>, destination: bool| {
            cpu.and_then(|c| {
                if destination {
                    c.destination_s_per_1000_rows
                } else {
                    c.total_s_per_1000_rows
                }
            })
            .map(|ms| ms * 1000.0)
        };
        let r = &mut self.replication;
        r.cpu_us_per_row_catchup = us_per_row(self.catchup.ldr_cpu, false);
        r.cpu_us_per_row_catchup_destination = us_per_row(self.catchup.ldr_cpu, true);
        r.cpu_us_per_row_steady = us_per_row(self.steady.first.ldr_cpu, false);
        r.cpu_us_per_row_steady_destination = us_per_row(self.steady.first.ldr_cpu, true);
        r.commit_latency_ms = self.steady.first.commit_latency_ms;
        r.write_latency_ms = self.steady.first.ldr_write_latency_ms;
        self.finalize_modes();
        if self.conflicts.ran && !self.conflicts.converged {
            let message = "bidirectional conflicts: the clusters did not converge".to_string();
            if !self.failures.contains(&message) {
                self.failures.push(message);
            }
        }
        self.status = if self.failures.is_empty() {
            "ok".into()
        } else {
            "failed".into()
        };
    }

    pub fn ok(&self) -> bool {
        self.status == "ok"
    }

    /// Each mode's ratios to immediate mode (when it ran) and to PostgreSQL.
    fn finalize_modes(&mut self) {
        let immediate = self
            .ldr_modes
            .iter()
            .find(|m| m.mode == "immediate")
            .cloned();
        for mode in &mut self.ldr_modes {
            mode.catchup_ratio_vs_postgres =
                ratio(mode.catchup_rows_per_s, self.catchup.postgres_rows_per_s);
            mode.catchup_ratio_vs_immediate = immediate
                .as_ref()
                .and_then(|i| ratio(mode.catchup_rows_per_s, i.catchup_rows_per_s));
            for (index, steady) in mode.steady.iter_mut().enumerate() {
                let base = immediate.as_ref().and_then(|i| i.steady.get(index));
                steady.commit_latency_p50_ratio_vs_immediate =
                    base.and_then(|b| ratio(steady.commit_latency_ms.p50, b.commit_latency_ms.p50));
                steady.commit_latency_p99_ratio_vs_immediate =
                    base.and_then(|b| ratio(steady.commit_latency_ms.p99, b.commit_latency_ms.p99));
                steady.commit_latency_p99_ratio_vs_postgres = self
                    .steady
                    .rates
                    .get(index)
                    .and_then(|r| ratio(steady.commit_latency_ms.p99, r.postgres_lag_ms.p99));
            }
        }
    }
}

fn rate_text(v: Option<f64>) -> String {
    match v {
        Some(v) if v >= 100.0 => group_thousands(v.round() as u64),
        Some(v) => format!("{v:.1}"),
        None => "-".into(),
    }
}

/// `1234567` → `1,234,567`.
pub fn group_thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn ratio_text(v: Option<f64>) -> String {
    v.map(|r| format!("{r:.2}x")).unwrap_or_else(|| "-".into())
}

fn cpu_text(c: Option<CpuUse>) -> String {
    match c.and_then(|c| c.total_s_per_1000_rows.map(|t| (t, c))) {
        Some((t, c)) => format!(
            "{:.3} ({:.3} dst)",
            t,
            c.destination_s_per_1000_rows.unwrap_or(0.0)
        ),
        None => "-".into(),
    }
}

/// A fraction as a percentage with one decimal (changefeed rates are a few percent of the
/// scan rate, or less: whole percents would round them to 0%).
fn pct1_text(v: Option<f64>) -> String {
    v.map(|f| format!("{:.1}%", f * 100.0))
        .unwrap_or_else(|| "-".into())
}

/// Megabytes per second, one decimal.
fn mb_text(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.1}")).unwrap_or_else(|| "-".into())
}

fn pct_text(v: Option<f64>) -> String {
    v.map(|f| format!("{:.0}%", f * 100.0))
        .unwrap_or_else(|| "-".into())
}

/// `durability: raft log sync off (…), PostgreSQL fsync=off …; replication factor 3 …`.
fn durability_line(report: &BenchReport) -> String {
    let d = &report.durability;
    let sync = if d.raft_log_sync.is_empty() {
        // A report written before the option existed: ldr ran with its defaults then.
        "not recorded"
    } else {
        d.raft_log_sync.as_str()
    };
    let mut text = format!("durability: raft log sync {sync}");
    if let Some(v) = d.disable_synchronization_unsafe {
        let _ = write!(
            text,
            " (kv.raft_log.disable_synchronization_unsafe = {v} on every node)"
        );
    }
    match (&d.postgres_fsync, &d.postgres_synchronous_commit) {
        (Some(f), Some(c)) => {
            let _ = write!(
                text,
                "; PostgreSQL fsync = {f}, synchronous_commit = {c}{}",
                d.postgres_subscription_synchronous_commit
                    .as_ref()
                    .map(|s| format!(" (subscription: {s})"))
                    .unwrap_or_default()
            );
        }
        _ => text.push_str("; PostgreSQL not run"),
    }
    let r = &report.replication;
    match (r.factor, r.factor_max) {
        (Some(f), Some(m)) if f != m => {
            let _ = write!(text, "; replication factor {f}-{m} (ranges mid-change)");
        }
        (Some(f), _) => {
            let _ = write!(
                text,
                "; replication factor {f}{}",
                r.kv_ranges
                    .map(|n| format!(" ({n} ranges of kv)"))
                    .unwrap_or_default()
            );
        }
        _ => text.push_str("; replication factor -"),
    }
    text
}

/// The cost of replication in one line: CPU per row over every node and per-row latency.
fn replication_cost_line(report: &BenchReport) -> Option<String> {
    let r = &report.replication;
    if r.cpu_us_per_row_catchup.is_none() && r.cpu_us_per_row_steady.is_none() {
        return None;
    }
    let us = |v: Option<f64>| v.map(|v| format!("{v:.0}")).unwrap_or_else(|| "-".into());
    Some(format!(
        "ldr per row (RF {}, sync {}): CPU us catch-up {} ({} dst), steady {} ({} dst, {} above idle; idle {} cores); commit latency p50/p99 {}/{} ms; source write p50/p99 {}/{} ms",
        r.factor
            .map(|f| f.to_string())
            .unwrap_or_else(|| "-".into()),
        if report.durability.raft_log_sync.is_empty() {
            "?"
        } else {
            report.durability.raft_log_sync.as_str()
        },
        us(r.cpu_us_per_row_catchup),
        us(r.cpu_us_per_row_catchup_destination),
        us(r.cpu_us_per_row_steady),
        us(r.cpu_us_per_row_steady_destination),
        us(r.cpu_us_per_row_steady_above_idle),
        r.idle_cpu_cores
            .map(|c| format!("{c:.2}"))
            .unwrap_or_else(|| "-".into()),
        opt_ms(r.commit_latency_ms.p50),
        opt_ms(r.commit_latency_ms.p99),
        opt_ms(r.write_latency_ms.p50),
        opt_ms(r.write_latency_ms.p99),
    ))
}

fn opt_ms(v: Option<f64>) -> String {
    v.map(fmt_ms).unwrap_or_else(|| "-".into())
}

/// The apply modes side by side (`--mode=validated` or `both`): one column per mode, then each
/// other mode's ratio to immediate mode and to PostgreSQL. `None` for an immediate-only run
/// (the main table is that already).
/// A figure of one mode in the modes block, and its ratios (to immediate, to PostgreSQL).
type ModeCell<'a> = &'a dyn Fn(&LdrModeReport) -> String;
type ModeRatios<'a> = &'a dyn Fn(&LdrModeReport) -> (Option<f64>, Option<f64>);

fn modes_block(report: &BenchReport) -> Option<String> {
    let modes = &report.ldr_modes;
    if modes.iter().all(|m| m.mode == "immediate") {
        return None;
    }
    let others: Vec<&LdrModeReport> = modes.iter().filter(|m| m.mode != "immediate").collect();
    let mut out = String::new();
    let row = |out: &mut String, name: &str, cells: Vec<String>| {
        let _ = write!(out, "{name:<44}");
        for cell in cells {
            let _ = write!(out, " {cell:>14}");
        }
        out.push('\n');
    };
    let mut header: Vec<String> = modes.iter().map(|m| m.mode.clone()).collect();
    for m in &others {
        header.push(format!("{}/imm", short_mode(&m.mode)));
        header.push(format!("{}/pg", short_mode(&m.mode)));
    }
    row(&mut out, "ldr apply modes (fresh clusters each)", header);
    // A figure's cells: one value per mode, then per other mode its two ratios.
    let cells = |value: ModeCell<'_>, ratios: ModeRatios<'_>| {
        let mut cells: Vec<String> = modes.iter().map(value).collect();
        for m in &others {
            let (imm, pg) = ratios(m);
            cells.push(ratio_text(imm));
            cells.push(ratio_text(pg));
        }
        cells
    };
    row(
        &mut out,
        "  catch-up apply (rows/s)",
        cells(&|m| rate_text(m.catchup_rows_per_s), &|m| {
            (m.catchup_ratio_vs_immediate, m.catchup_ratio_vs_postgres)
        }),
    );
    row(
        &mut out,
        "  catch-up CPU us per row (total)",
        cells(
            &|m| {
                m.catchup_cpu_us_per_row
                    .map(|v| format!("{v:.0}"))
                    .unwrap_or_else(|| "-".into())
            },
            &|m| {
                let base = modes.iter().find(|b| b.mode == "immediate");
                (
                    base.and_then(|b| ratio(m.catchup_cpu_us_per_row, b.catchup_cpu_us_per_row)),
                    None,
                )
            },
        ),
    );
    let rates = modes.iter().map(|m| m.steady.len()).max().unwrap_or(0);
    for index in 0..rates {
        let rate = modes
            .iter()
            .find_map(|m| m.steady.get(index))
            .map(|s| s.rate_rows_per_s)
            .unwrap_or(0);
        let steady = |m: &LdrModeReport| m.steady.get(index).cloned().unwrap_or_default();
        row(
            &mut out,
            &format!("  @{rate} rows/s: commit latency p50 (ms)"),
            cells(&|m| opt_ms(steady(m).commit_latency_ms.p50), &|m| {
                (steady(m).commit_latency_p50_ratio_vs_immediate, {
                    let pg = report
                        .steady
                        .rates
                        .get(index)
                        .map(|r| r.postgres_lag_ms.p50);
                    ratio(steady(m).commit_latency_ms.p50, pg.flatten())
                })
            }),
        );
        row(
            &mut out,
            &format!("  @{rate} rows/s: commit latency p99 (ms)"),
            cells(&|m| opt_ms(steady(m).commit_latency_ms.p99), &|m| {
                (
                    steady(m).commit_latency_p99_ratio_vs_immediate,
                    steady(m).commit_latency_p99_ratio_vs_postgres,
                )
            }),
        );
        row(
            &mut out,
            &format!("  @{rate} rows/s: replicated-time lag p99 (ms)"),
            cells(&|m| opt_ms(steady(m).lag_ms.p99), &|_| (None, None)),
        );
    }
    let count = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_else(|| "-".into());
    row(
        &mut out,
        "  conflicts: LWW losses / DLQ rows / converged",
        cells(
            &|m| {
                if m.conflicts_ran {
                    format!(
                        "{}/{}/{}",
                        m.conflicts_lww_losses,
                        m.conflicts_dlq_rows,
                        if m.conflicts_converged { "yes" } else { "NO" }
                    )
                } else {
                    "not run".into()
                }
            },
            &|_| (None, None),
        ),
    );
    row(
        &mut out,
        "  whole run: retries / constraint fails",
        cells(
            &|m| format!("{}/{}", count(m.retries), count(m.constraint_failures)),
            &|_| (None, None),
        ),
    );
    row(
        &mut out,
        "  whole run: DLQ rows / LWW losses",
        cells(
            &|m| format!("{}/{}", count(m.dlq_rows), count(m.lww_losses)),
            &|_| (None, None),
        ),
    );
    Some(out)
}

/// `val` for `validated`, `imm` for `immediate` (column headers).
fn short_mode(mode: &str) -> &str {
    match mode {
        "validated" => "val",
        "immediate" => "imm",
        other => other,
    }
}

/// The terminal table.
pub fn render_table(report: &BenchReport) -> String {
    let mut out = String::new();
    let cfg = &report.config;
    let m = &report.machine;
    let _ = writeln!(
        out,
        "ldr bench: nodes={} rows={} duration={}s rates={:?} ({} cores, {}, ldr {} build)",
        cfg.nodes, cfg.rows, cfg.duration_s, cfg.steady_rates, m.cores, m.memory, cfg.ldr_build
    );
    let _ = writeln!(out, "{}", durability_line(report));
    if !cfg.ldr_modes.is_empty() {
        let _ = writeln!(
            out,
            "ldr apply mode: {} (the ldr column below is {} mode)",
            cfg.ldr_modes.join(", "),
            cfg.ldr_modes[0]
        );
    }
    let line = |out: &mut String, name: &str, ldr: String, pg: String, r: String| {
        let _ = writeln!(out, "{name:<44} {ldr:>18} {pg:>18} {r:>9}");
    };
    line(
        &mut out,
        "figure",
        "ldr".into(),
        "postgres".into(),
        "ldr/pg".into(),
    );
    let c = &report.catchup;
    line(
        &mut out,
        &format!("catch-up apply, {} rows (rows/s)", c.rows),
        rate_text(c.ldr_rows_per_s),
        rate_text(c.postgres_rows_per_s),
        ratio_text(c.ratio_vs_postgres),
    );
    line(
        &mut out,
        "  catch-up time (s)",
        c.ldr_secs.map(|s| format!("{s:.2}")).unwrap_or("-".into()),
        c.postgres_secs
            .map(|s| format!("{s:.2}"))
            .unwrap_or("-".into()),
        String::new(),
    );
    line(
        &mut out,
        "  source load (rows/s)",
        rate_text(c.ldr_load_rows_per_s),
        rate_text(c.postgres_load_rows_per_s),
        ratio_text(ratio(c.ldr_load_rows_per_s, c.postgres_load_rows_per_s)),
    );
    line(
        &mut out,
        "  CPU s per 1000 rows (total, dst)",
        cpu_text(c.ldr_cpu),
        cpu_text(c.postgres_cpu),
        ratio_text(ratio(
            c.ldr_cpu.and_then(|x| x.total_s_per_1000_rows),
            c.postgres_cpu.and_then(|x| x.total_s_per_1000_rows),
        )),
    );
    for s in &report.steady.rates {
        line(
            &mut out,
            &format!("steady @{} rows/s: achieved (rows/s)", s.rate_rows_per_s),
            rate_text(s.ldr_achieved_rows_per_s),
            rate_text(s.postgres_achieved_rows_per_s),
            String::new(),
        );
        line(
            &mut out,
            "  commit latency p50/p99/max (ms)",
            s.commit_latency_ms.short(),
            s.postgres_lag_ms.short(),
            ratio_text(s.commit_latency_p99_ratio_vs_postgres),
        );
        line(
            &mut out,
            &format!("  source write p50/p99/max (ms, {}-row stmt)", s.batch),
            s.ldr_write_latency_ms.short(),
            s.postgres_write_latency_ms.short(),
            ratio_text(ratio(
                s.ldr_write_latency_ms.p99,
                s.postgres_write_latency_ms.p99,
            )),
        );
        line(
            &mut out,
            "  replicated-time lag p50/p99/max (ms)",
            s.lag_ms.short(),
            "-".into(),
            String::new(),
        );
        line(
            &mut out,
            "  CPU s per 1000 rows (total, dst)",
            cpu_text(s.ldr_cpu),
            cpu_text(s.postgres_cpu),
            ratio_text(ratio(
                s.ldr_cpu.and_then(|x| x.total_s_per_1000_rows),
                s.postgres_cpu.and_then(|x| x.total_s_per_1000_rows),
            )),
        );
    }
    if let Some(line) = replication_cost_line(report) {
        let _ = writeln!(out, "{line}");
    }
    if let Some(block) = modes_block(report) {
        out.push_str(&block);
    }
    let k = &report.conflicts;
    if k.ran {
        let _ = writeln!(
            out,
            "conflicts ({} keys, {} rows/s per side, {:.0}s): LWW losses {} ({}/s), DLQ rows {}, converged: {}",
            k.keys,
            k.rate_per_side,
            k.duration_s,
            k.lww_losses,
            k.lww_losses_per_s
                .map(|r| format!("{r:.1}"))
                .unwrap_or("-".into()),
            k.dlq_rows,
            if k.converged { "yes" } else { "NO" }
        );
    } else {
        let _ = writeln!(out, "conflicts: not run");
    }
    let r = &report.rocksdb;
    let _ = writeln!(
        out,
        "rocksdb limit ({} keys): put {} /s, read-check-write {} /s; ldr catch-up per node = {} of put, {} of read-check-write",
        r.keys,
        rate_text(r.put_per_s),
        rate_text(r.read_check_write_per_s),
        pct_text(c.ldr_fraction_of_rocksdb_put),
        pct_text(c.ldr_fraction_of_rocksdb_read_check_write)
    );
    let b = &report.backup;
    if b.ran {
        let _ = writeln!(
            out,
            "backup of the destination's kv ({} rows): backup {} rows/s ({} of rocksdb scan {} /s), restore {} rows/s ({} of put){}",
            b.rows,
            rate_text(b.backup_rows_per_s),
            pct_text(b.backup_fraction_of_rocksdb_scan),
            rate_text(r.scan_per_s),
            rate_text(b.restore_rows_per_s),
            pct_text(b.restore_fraction_of_rocksdb_put),
            b.error
                .as_ref()
                .map(|e| format!("; error: {e}"))
                .unwrap_or_default()
        );
    }
    let cf = &report.changefeed;
    if cf.ran {
        let _ = writeln!(
            out,
            "changefeed on the destination's kv: initial scan {} messages/s, {} MB/s ({} of rocksdb scan); live {} messages/s, {} MB/s ({} of rocksdb scan) under {} rows/s written{}",
            rate_text(cf.initial_scan_messages_per_s),
            mb_text(cf.initial_scan_mb_per_s),
            pct1_text(cf.initial_scan_fraction_of_rocksdb_scan),
            rate_text(cf.live_messages_per_s),
            mb_text(cf.live_mb_per_s),
            pct1_text(cf.live_fraction_of_rocksdb_scan),
            rate_text(cf.live_write_rows_per_s),
            cf.error
                .as_ref()
                .map(|e| format!("; error: {e}"))
                .unwrap_or_default()
        );
    }
    for note in &report.notes {
        let _ = writeln!(out, "note: {note}");
    }
    if report.ok() {
        let _ = writeln!(out, "status: ok");
    } else {
        let _ = writeln!(out, "status: FAILED");
        for f in &report.failures {
            let _ = writeln!(out, "  - {f}");
        }
    }
    if !report.files.json.is_empty() {
        let _ = writeln!(
            out,
            "report: {}  plot: {}",
            report.files.json, report.files.svg
        );
    }
    out
}

/// Concatenates per-rate series on one time axis; returns the offset of each rate.
fn steady_offsets(report: &BenchReport) -> Vec<f64> {
    let mut offsets = Vec::new();
    let mut t = 0.0;
    for (i, _) in report.series.steady.iter().enumerate() {
        offsets.push(t);
        let d = report
            .steady
            .rates
            .get(i)
            .map(|r| r.duration_s)
            .unwrap_or(0.0);
        t += d + 2.0;
    }
    offsets
}

fn shifted(points: &[(f64, f64)], dx: f64) -> Vec<(f64, f64)> {
    points.iter().map(|(x, y)| (x + dx, *y)).collect()
}

/// The figure: catch-up throughput, steady throughput, steady latency/lag.
pub fn build_plot(report: &BenchReport) -> Plot {
    let s = &report.series;
    let catchup = Panel {
        title: format!(
            "Catch-up: rows applied since RESUME / ENABLE ({} rows; the slope is the apply rate)",
            report.catchup.rows
        ),
        x_label: "seconds since replication restarted".into(),
        y_label: "rows applied".into(),
        log_y: false,
        series: vec![
            Series::line(
                format!("ldr ({} rows/s)", rate_text(report.catchup.ldr_rows_per_s)),
                LDR_COLOR,
                s.catchup_ldr_applied.clone(),
            ),
            Series::line(
                format!(
                    "postgres ({} rows/s)",
                    rate_text(report.catchup.postgres_rows_per_s)
                ),
                POSTGRES_COLOR,
                s.catchup_postgres_applied.clone(),
            ),
        ],
        markers: Vec::new(),
    };
    let mut catchup = catchup;
    for other in &s.catchup_ldr_other_modes {
        let rate = report
            .ldr_modes
            .iter()
            .find(|m| m.mode == other.mode)
            .and_then(|m| m.catchup_rows_per_s);
        catchup.series.push(
            Series::line(
                format!("ldr {} mode ({} rows/s)", other.mode, rate_text(rate)),
                LDR_COLOR,
                other.points.clone(),
            )
            .dashed(),
        );
    }
    let offsets = steady_offsets(report);
    let mut throughput = Panel {
        title: "Steady state: rows applied per second at the destination (heartbeats included)"
            .into(),
        x_label: "seconds (phases of each offered rate, one after another)".into(),
        y_label: "rows/s".into(),
        ..Panel::default()
    };
    let mut latency = Panel {
        title: "Steady state: commit → visible latency per heartbeat, and ldr replicated-time lag"
            .into(),
        x_label: "seconds (source commit time of the heartbeat)".into(),
        y_label: "ms (log)".into(),
        log_y: true,
        ..Panel::default()
    };
    let mut series = [Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new()];
    let gap = (f64::NAN, f64::NAN);
    for (rate, dx) in s.steady.iter().zip(&offsets) {
        for line in &mut series {
            line.push(gap);
        }
        series[0].extend(shifted(&rates_from_cumulative(&rate.ldr_applied, 1.0), *dx));
        series[1].extend(shifted(
            &rates_from_cumulative(&rate.postgres_applied, 1.0),
            *dx,
        ));
        series[2].extend(shifted(&rate.ldr_commit_latency, *dx));
        series[3].extend(shifted(&rate.postgres_commit_latency, *dx));
        series[4].extend(shifted(&rate.ldr_lag, *dx));
        let marker = (*dx, format!("{} rows/s", rate.rate_rows_per_s));
        throughput.markers.push(marker.clone());
        latency.markers.push(marker);
    }
    let [ldr_tp, pg_tp, ldr_lat, pg_lat, ldr_lag] = series;
    throughput.series = vec![
        Series::line("ldr", LDR_COLOR, ldr_tp),
        Series::line("postgres", POSTGRES_COLOR, pg_tp),
    ];
    latency.series = vec![
        Series::dots("ldr commit latency", LDR_COLOR, ldr_lat),
        Series::dots("postgres lag (dst_ts - src_ts)", POSTGRES_COLOR, pg_lat),
        Series::line("ldr replicated-time lag", LAG_COLOR, ldr_lag).dashed(),
    ];
    Plot {
        title: format!(
            "ldr vs PostgreSQL logical replication (nodes={}, replication factor {}, sync {})",
            report.config.nodes,
            report
                .replication
                .factor
                .map(|f| f.to_string())
                .unwrap_or_else(|| "-".into()),
            if report.durability.raft_log_sync.is_empty() {
                "not recorded"
            } else {
                report.durability.raft_log_sync.as_str()
            }
        ),
        subtitle: format!(
            "{} · {} cores, {} · {} · status {}",
            report.started_at,
            report.machine.cores,
            report.machine.memory,
            report.machine.cpu_model,
            report.status
        ),
        panels: vec![catchup, throughput, latency],
    }
}

/// The SVG text of [`build_plot`].
pub fn render_svg(report: &BenchReport) -> String {
    svg::render(&build_plot(report))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_report() -> BenchReport {
        let mut report = BenchReport {
            version: REPORT_VERSION,
            config: ConfigEcho {
                nodes: 2,
                rows: 1000,
                duration_s: 3.0,
                steady_rates: vec![200, 400],
                ..ConfigEcho::default()
            },
            machine: Machine {
                cores: 2,
                memory: "1.0 GiB".into(),
                memory_bytes: 1 << 30,
                ..Machine::default()
            },
            catchup: CatchupReport {
                rows: 1000,
                ldr_rows_per_s: Some(50_000.0),
                postgres_rows_per_s: Some(100_000.0),
                ..CatchupReport::default()
            },
            rocksdb: RocksdbReport {
                put_per_s: Some(100_000.0),
                read_check_write_per_s: Some(25_000.0),
                ..RocksdbReport::default()
            },
            conflicts: ConflictReport {
                ran: true,
                converged: true,
                ..ConflictReport::default()
            },
            ..BenchReport::default()
        };
        for rate in [200, 400] {
            report.steady.rates.push(SteadyRate {
                rate_rows_per_s: rate,
                duration_s: 3.0,
                commit_latency_ms: Percentiles::of(&[1.0, 2.0, 30.0]),
                lag_ms: Percentiles::of(&[300.0, 900.0]),
                postgres_lag_ms: Percentiles::of(&[1.0, 15.0]),
                ..SteadyRate::default()
            });
            report.series.steady.push(SteadySeries {
                rate_rows_per_s: rate,
                ldr_applied: vec![(0.0, 0.0), (1.0, 200.0), (2.0, 400.0)],
                ldr_commit_latency: vec![(0.1, 1.0), (0.2, 30.0)],
                ..SteadySeries::default()
            });
        }
        report.series.catchup_ldr_applied = vec![(0.0, 0.0), (1.0, 600.0), (1.5, 1000.0)];
        report
    }

    #[test]
    fn finalize_derives_ratios_and_status() {
        let mut report = sample_report();
        report.finalize();
        assert!(report.ok());
        let c = &report.catchup;
        assert_eq!(c.ratio_vs_postgres, Some(0.5));
        assert_eq!(c.ldr_rows_per_s_per_dest_node, Some(25_000.0));
        assert_eq!(c.ldr_fraction_of_rocksdb_put, Some(0.25));
        assert_eq!(c.ldr_fraction_of_rocksdb_read_check_write, Some(1.0));
        assert_eq!(report.steady.first.rate_rows_per_s, 200);
        assert_eq!(
            report.steady.first.commit_latency_p99_ratio_vs_postgres,
            Some(2.0)
        );
        assert_eq!(
            report.steady.first.postgres_commit_latency_ms,
            report.steady.first.postgres_lag_ms
        );

        report.steady.rates[1].ldr_achieved_rows_per_s = Some(100.0);
        report.finalize();
        assert_eq!(report.notes.len(), 1, "{:?}", report.notes);
        assert!(report.notes[0].contains("ldr could not take the offered 400 rows/s"));
        report.conflicts.converged = false;
        report.finalize();
        report.finalize();
        assert!(!report.ok());
        assert_eq!(report.failures.len(), 1, "{:?}", report.failures);
    }

    #[test]
    fn json_has_every_contract_key() {
        let mut report = sample_report();
        report.finalize();
        let json = serde_json::to_value(&report).expect("serialize");
        for path in [
            "/catchup/ldr_rows_per_s",
            "/catchup/postgres_rows_per_s",
            "/steady/commit_latency_ms/p50",
            "/steady/commit_latency_ms/p99",
            "/steady/commit_latency_ms/max",
            "/steady/lag_ms/p50",
            "/steady/lag_ms/p99",
            "/steady/lag_ms/max",
            "/steady/postgres_lag_ms/p50",
            "/steady/postgres_lag_ms/p99",
            "/steady/postgres_lag_ms/max",
            "/rocksdb/put_per_s",
            "/rocksdb/read_check_write_per_s",
            "/machine/cores",
            "/machine/memory",
            "/changefeed/initial_scan_messages_per_s",
            "/changefeed/initial_scan_mb_per_s",
            "/changefeed/initial_scan_fraction_of_rocksdb_scan",
            "/changefeed/live_messages_per_s",
            "/changefeed/live_mb_per_s",
            "/changefeed/live_fraction_of_rocksdb_scan",
        ] {
            assert!(json.pointer(path).is_some(), "missing {path}");
        }
        assert!(
            json.pointer("/conflicts/converged")
                .is_some_and(|v| v.is_boolean())
        );
        assert_eq!(
            json.pointer("/steady/rates")
                .and_then(|r| r.as_array())
                .map(Vec::len),
            Some(2)
        );
        assert_eq!(json["steady"]["lag_ms"]["p99"], 900.0);
        // An empty report keeps the keys, with nulls.
        let empty = serde_json::to_value(BenchReport::default()).expect("serialize");
        assert!(
            empty
                .pointer("/steady/commit_latency_ms/p99")
                .is_some_and(|v| v.is_null())
        );
        assert!(
            empty
                .pointer("/catchup/postgres_rows_per_s")
                .is_some_and(|v| v.is_null())
        );
        // And the document reads back.
        let back: BenchReport = serde_json::from_value(json).expect("deserialize");
        assert_eq!(back, report);
    }

    #[test]
    fn changefeed_rates_are_reported_beside_the_rocksdb_scan() {
        let mut report = sample_report();
        report.rocksdb.scan_per_s = Some(1_000_000.0);
        report.changefeed = ChangefeedReport {
            ran: true,
            initial_scan_messages: 100_000,
            initial_scan_bytes: 20_000_000,
            initial_scan_secs: Some(2.0),
            initial_scan_messages_per_s: Some(50_000.0),
            initial_scan_mb_per_s: Some(10.0),
            live_rows_written: 30_000,
            live_write_rows_per_s: Some(3_000.0),
            live_messages: 30_010,
            live_bytes: 6_000_000,
            live_secs: Some(11.0),
            live_messages_per_s: Some(2_728.0),
            live_mb_per_s: Some(0.5),
            ..ChangefeedReport::default()
        };
        report.finalize();
        let cf = &report.changefeed;
        assert_eq!(cf.initial_scan_fraction_of_rocksdb_scan, Some(0.05));
        assert_eq!(cf.live_fraction_of_rocksdb_scan, Some(0.002728));
        let table = render_table(&report);
        assert!(
            table.contains(
                "changefeed on the destination's kv: initial scan 50,000 messages/s, 10.0 MB/s (5.0% of rocksdb scan); live 2,728 messages/s, 0.5 MB/s (0.3% of rocksdb scan) under 3,000 rows/s written"
            ),
            "{table}"
        );
    }

    #[test]
    fn durability_and_cost_of_replication_are_reported() {
        let mut report = sample_report();
        report.durability = DurabilityReport {
            raft_log_sync: "on".into(),
            disable_synchronization_unsafe: Some(false),
            postgres_fsync: Some("on".into()),
            postgres_synchronous_commit: Some("on".into()),
            postgres_subscription_synchronous_commit: Some("off".into()),
            summary: "sync on: …".into(),
        };
        report.replication.factor = Some(3);
        report.replication.factor_max = Some(3);
        report.replication.kv_ranges = Some(8);
        report.catchup.ldr_cpu = Some(CpuUse::new(0.3, 0.1, 1000));
        report.steady.rates[0].ldr_cpu = Some(CpuUse::new(0.2, 0.2, 2000));
        report.steady.rates[0].ldr_write_latency_ms = Percentiles::of(&[2.0, 4.0]);
        report.steady.rates[0].postgres_write_latency_ms = Percentiles::of(&[1.0, 2.0]);
        report.finalize();
        let r = &report.replication;
        // 0.4 CPU-s over 1000 rows = 400 µs a row; 0.4 s over 2000 rows = 200 µs.
        assert_eq!(r.cpu_us_per_row_catchup.map(f64::round), Some(400.0));
        assert_eq!(
            r.cpu_us_per_row_catchup_destination.map(f64::round),
            Some(100.0)
        );
        assert_eq!(r.cpu_us_per_row_steady.map(f64::round), Some(200.0));
        assert_eq!(r.commit_latency_ms, report.steady.first.commit_latency_ms);
        assert_eq!(r.write_latency_ms.p99, Some(4.0));
        let table = render_table(&report);
        assert!(
            table.contains(
                "durability: raft log sync on (kv.raft_log.disable_synchronization_unsafe = false on every node); PostgreSQL fsync = on, synchronous_commit = on (subscription: off); replication factor 3 (8 ranges of kv)"
            ),
            "{table}"
        );
        assert!(
            table.contains("ldr per row (RF 3, sync on): CPU us catch-up 400 (100 dst), steady 200 (100 dst, - above idle; idle - cores); commit latency p50/p99 2.00/30.0 ms; source write p50/p99 2.00/4.00 ms"),
            "{table}"
        );
        assert!(table.contains("source write p50/p99/max"), "{table}");
        let json = serde_json::to_value(&report).expect("serialize");
        assert_eq!(json["durability"]["raft_log_sync"], "on");
        assert_eq!(json["replication"]["factor"], 3);
        // A report written before these keys existed still reads (`--from-json`).
        let mut old = json.clone();
        let object = old.as_object_mut().expect("object");
        object.remove("durability");
        object.remove("replication");
        old["config"]
            .as_object_mut()
            .expect("config")
            .remove("raft_log_sync");
        let back: BenchReport = serde_json::from_value(old).expect("old report reads");
        assert_eq!(back.durability, DurabilityReport::default());
        assert!(render_table(&back).contains("raft log sync not recorded"));
    }

    /// A `--mode=both` report: immediate in the top-level fields and `ldr_modes[0]`,
    /// validated in `ldr_modes[1]` with its catch-up curve.
    fn both_modes_report() -> BenchReport {
        let mut report = sample_report();
        report.config.ldr_modes = vec!["immediate".into(), "validated".into()];
        let mut immediate = LdrModeReport::new("immediate");
        immediate.fill_from(&report, Vec::new());
        immediate.set_counters(ApplyCounters {
            retries: Some(0),
            constraint_failures: Some(0),
            dlq_rows: Some(0),
            lww_losses: Some(40),
            rows_applied: Some(3000),
        });
        let mut validated = LdrModeReport {
            job_command: Some("CREATE … WITH mode = 'validated'".into()),
            ..LdrModeReport::new("validated")
        };
        let mut copy = report.clone();
        copy.catchup.ldr_rows_per_s = Some(10_000.0);
        for rate in &mut copy.steady.rates {
            rate.commit_latency_ms = Percentiles::of(&[2.0, 4.0, 90.0]);
        }
        validated.fill_from(&copy, Vec::new());
        validated.set_counters(ApplyCounters {
            retries: Some(3),
            constraint_failures: Some(0),
            dlq_rows: Some(0),
            lww_losses: Some(38),
            rows_applied: Some(3000),
        });
        report.ldr_modes = vec![immediate, validated];
        report.series.catchup_ldr_other_modes = vec![ModeSeries {
            mode: "validated".into(),
            points: vec![(0.0, 0.0), (0.1, 1000.0)],
        }];
        report
    }

    #[test]
    fn validated_mode_is_reported_as_ratios_to_immediate_and_postgres() {
        let mut report = both_modes_report();
        report.finalize();
        assert!(report.ok(), "{:?}", report.failures);
        let [immediate, validated] = &report.ldr_modes[..] else {
            panic!("two modes: {:?}", report.ldr_modes);
        };
        assert_eq!(immediate.catchup_ratio_vs_immediate, Some(1.0));
        assert_eq!(immediate.catchup_ratio_vs_postgres, Some(0.5));
        // 10,000 rows/s against immediate's 50,000 and PostgreSQL's 100,000.
        assert_eq!(validated.catchup_ratio_vs_immediate, Some(0.2));
        assert_eq!(validated.catchup_ratio_vs_postgres, Some(0.1));
        // p50 4 vs 2 ms, p99 90 vs 30 ms, PostgreSQL's p99 15 ms.
        let steady = &validated.steady[1];
        assert_eq!(steady.rate_rows_per_s, 400);
        assert_eq!(steady.commit_latency_p50_ratio_vs_immediate, Some(2.0));
        assert_eq!(steady.commit_latency_p99_ratio_vs_immediate, Some(3.0));
        assert_eq!(steady.commit_latency_p99_ratio_vs_postgres, Some(6.0));
        // The top-level figures stay immediate mode's.
        assert_eq!(report.catchup.ldr_rows_per_s, Some(50_000.0));

        let table = render_table(&report);
        assert!(
            table.contains(
                "ldr apply mode: immediate, validated (the ldr column below is immediate mode)"
            ),
            "{table}"
        );
        for needle in [
            "immediate      validated        val/imm         val/pg",
            "  catch-up apply (rows/s)",
            "50,000         10,000          0.20x          0.10x",
            "  @400 rows/s: commit latency p99 (ms)",
            "3.00x          6.00x",
            "  whole run: retries / constraint fails",
            "0/0            3/0",
        ] {
            assert!(table.contains(needle), "{needle:?} not in\n{table}");
        }
        let svg = render_svg(&report);
        assert!(svg.contains("ldr validated mode (10,000 rows/s)"), "{svg}");

        // The JSON keeps every mode, and reads back.
        let json = serde_json::to_value(&report).expect("serialize");
        assert_eq!(json["ldr_modes"][1]["mode"], "validated");
        assert_eq!(json["ldr_modes"][1]["catchup_ratio_vs_immediate"], 0.2);
        assert_eq!(json["config"]["ldr_modes"][1], "validated");
        let back: BenchReport = serde_json::from_value(json.clone()).expect("deserialize");
        assert_eq!(back, report);
        // A report written before modes existed still reads, and shows no modes block.
        let mut old = json;
        old.as_object_mut().expect("object").remove("ldr_modes");
        old["config"]
            .as_object_mut()
            .expect("config")
            .remove("ldr_modes");
        old["series"]
            .as_object_mut()
            .expect("series")
            .remove("catchup_ldr_other_modes");
        let back: BenchReport = serde_json::from_value(old).expect("old report reads");
        assert!(back.ldr_modes.is_empty());
        assert!(!render_table(&back).contains("ldr apply mode"));

        // An immediate-only run prints no modes block.
        let mut only = sample_report();
        only.config.ldr_modes = vec!["immediate".into()];
        only.ldr_modes = vec![LdrModeReport::new("immediate")];
        only.finalize();
        let table = render_table(&only);
        assert!(
            table.contains("ldr apply mode: immediate (the ldr column below is immediate mode)")
        );
        assert!(!table.contains("ldr apply modes"), "{table}");
    }

    #[test]
    fn table_and_plot_show_both_systems() {
        let mut report = sample_report();
        report.finalize();
        let table = render_table(&report);
        assert!(
            table.contains("catch-up apply, 1000 rows (rows/s)"),
            "{table}"
        );
        assert!(
            table.contains("50,000") && table.contains("100,000") && table.contains("0.50x"),
            "{table}"
        );
        assert!(table.contains("steady @400 rows/s"), "{table}");
        assert!(table.contains("2.00/30.0/30.0"), "{table}");
        assert!(
            table.contains("converged: yes") && table.contains("status: ok"),
            "{table}"
        );
        let plot = build_plot(&report);
        assert_eq!(plot.panels.len(), 3);
        assert_eq!(plot.panels[1].markers.len(), 2, "one marker per rate");
        // The second rate's points are shifted past the first rate's duration.
        let ldr_latency: Vec<(f64, f64)> = plot.panels[2].series[0]
            .points
            .iter()
            .copied()
            .filter(|p| p.0.is_finite())
            .collect();
        assert_eq!(ldr_latency.len(), 4);
        assert!(ldr_latency[2].0 > 3.0);
        let svg = render_svg(&report);
        assert!(svg.contains("<svg") && svg.contains("ldr replicated-time lag"));
        assert_eq!(group_thousands(1_234_567), "1,234,567");
        assert_eq!(group_thousands(12), "12");
    }
}

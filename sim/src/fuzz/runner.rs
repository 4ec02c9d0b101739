//! Runs a [`Scenario`] against two live clusters and checks the outcome.
//!
//! Steps start at their scheduled times (never earlier; a slow restart delays the steps after
//! it). Each write runs in its own task through its node's direct SQL address with a deadline,
//! so a paused or killed node never stalls the schedule, and is recorded as acknowledged
//! (with the commit timestamp it returned), ambiguous (sent, no answer) or failed. Faults
//! run in order on the harness. After the last step everything is healed; then:
//! 1. convergence: the table is the same on both clusters (fingerprints, or rows);
//! 2. LWW oracle: every key holds its winning write on both clusters;
//! 3. replicated time never went backwards on either cluster (sampled throughout).
//!
//! A failure's error names the seed, the fault timeline and the checker's report (with each
//! wrong key's write history).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;
use tokio_postgres::types::Type;

use super::scenario::{Op, Scenario, Side};
use crate::check::convergence::{Fingerprints, wait_converged, wait_same_rows};
use crate::check::lww::LwwOracle;
use crate::check::replicated_time::{MonotonicReport, ReplicatedTimeWatcher};
use crate::cluster::{Cluster, ClusterSpec};
use crate::error::{Result, SimError};
use crate::proxy::Fault;
use crate::sql::{self, DecimalText};
use crate::workload::kv::{self, KvConfig};
use crate::workload::{WriteRecord, WriteStatus};

/// How convergence is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConvergenceCheck {
    /// `SHOW EXPERIMENTAL_FINGERPRINTS` (ldr).
    Fingerprints,
    /// `SELECT k, v … ORDER BY k` compared as text (any server).
    Rows,
}

/// Knobs of a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunnerConfig {
    /// The `kv`-shaped table the scenario writes (`k INT8 PRIMARY KEY, v STRING`).
    pub table: String,
    /// LWW origin ids of clusters A and B (ldr's `origin_id` of each cluster: the larger wins
    /// a timestamp tie).
    pub origin_ids: [u32; 2],
    pub write_timeout: Duration,
    pub converge_timeout: Duration,
    pub convergence: ConvergenceCheck,
    /// Sample `SHOW LOGICAL REPLICATION JOBS` during the run.
    pub watch_replicated_time: bool,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        RunnerConfig {
            table: "kv".into(),
            origin_ids: [1, 2],
            write_timeout: Duration::from_secs(10),
            converge_timeout: Duration::from_secs(180),
            convergence: ConvergenceCheck::Fingerprints,
            watch_replicated_time: true,
        }
    }
}

/// What a successful run saw.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    pub seed: u64,
    pub elapsed_s: f64,
    pub writes_acknowledged: usize,
    pub writes_ambiguous: usize,
    pub writes_failed: usize,
    pub keys_checked: usize,
    pub fingerprints: Option<Fingerprints>,
    pub replicated_time: Option<MonotonicReport>,
    /// Every executed non-write step with its actual start time.
    pub timeline: Vec<String>,
}

/// Starts clusters `a` and `b` (proxied, `nodes` each) for fuzzing, concurrently.
pub async fn start_clusters(
    nodes: usize,
    ldr_binary: std::path::PathBuf,
) -> Result<(Cluster, Cluster)> {
    let a = ClusterSpec::with_binary("a", nodes, ldr_binary.clone()).proxied(true);
    let b = ClusterSpec::with_binary("b", nodes, ldr_binary).proxied(true);
    tokio::try_join!(Cluster::start(a), Cluster::start(b))
}

/// Creates `table` (`k INT8 PRIMARY KEY, v STRING`) on both clusters and bidirectional LDR
/// between them (see [`crate::ldr::setup_bidirectional`]); returns the job ids.
pub async fn setup_bidirectional(a: &Cluster, b: &Cluster, table: &str) -> Result<(i64, i64)> {
    kv::check_identifier(table)?;
    crate::ldr::setup_bidirectional(
        a,
        b,
        table,
        &format!("CREATE TABLE IF NOT EXISTS {table} (k INT8 PRIMARY KEY, v STRING)"),
    )
    .await
}

/// Executes scenarios against a pair of clusters.
pub struct Runner<'a> {
    a: &'a Cluster,
    b: &'a Cluster,
    config: RunnerConfig,
}

impl<'a> Runner<'a> {
    pub fn new(a: &'a Cluster, b: &'a Cluster, config: RunnerConfig) -> Runner<'a> {
        Runner { a, b, config }
    }

    fn cluster(&self, side: Side) -> &'a Cluster {
        match side {
            Side::A => self.a,
            Side::B => self.b,
        }
    }

    /// Runs `scenario` and checks the outcome; see the module doc.
    pub async fn run(&self, scenario: &Scenario) -> Result<RunReport> {
        kv::check_identifier(&self.config.table)?;
        let seed = scenario.seed;
        tracing::info!(
            seed,
            steps = scenario.steps.len(),
            writes = scenario.writes(),
            "fuzz scenario starting"
        );
        let start = Instant::now();
        let watcher = self.config.watch_replicated_time.then(|| {
            let urls: Vec<String> = self.a.urls().into_iter().chain(self.b.urls()).collect();
            ReplicatedTimeWatcher::spawn(urls, Duration::from_millis(500))
        });
        let records: Arc<Mutex<Vec<WriteRecord>>> = Arc::new(Mutex::new(Vec::new()));
        let failed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut writes = JoinSet::new();
        let mut timeline = Vec::new();
        let mut outcome = Ok(());
        for (index, step) in scenario.steps.iter().enumerate() {
            tokio::time::sleep_until((start + Duration::from_millis(step.at_ms)).into()).await;
            match &step.op {
                Op::Write {
                    cluster,
                    node,
                    key,
                    value,
                } => {
                    let url = match self.cluster(*cluster).url(*node) {
                        Ok(url) => url,
                        Err(e) => {
                            outcome = Err(e);
                            break;
                        }
                    };
                    let write = PlannedWrite {
                        origin: cluster.label(),
                        url,
                        node: *node,
                        seq: index as u64,
                        key: *key,
                        value: value.clone(),
                        table: self.config.table.clone(),
                    };
                    let (records, failed, timeout) =
                        (records.clone(), failed.clone(), self.config.write_timeout);
                    writes.spawn(async move {
                        match write.execute(start, timeout).await {
                            Some(record) => records
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .push(record),
                            None => {
                                failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                        }
                    });
                }
                op => {
                    timeline.push(format!("{:>8.3}s {op}", start.elapsed().as_secs_f64()));
                    if let Err(e) = self.apply_fault(op).await {
                        outcome = Err(SimError::Process(format!(
                            "fault step {index} ({op}) failed: {e}"
                        )));
                        break;
                    }
                }
            }
        }
        // Heal whatever is still broken (a failed run, or a hand-written scenario).
        self.heal_all().await;
        while writes.join_next().await.is_some() {}
        let replicated_time = match watcher {
            Some(w) => Some(w.finish().await),
            None => None,
        };
        let records = std::mem::take(&mut *records.lock().unwrap_or_else(|p| p.into_inner()));
        let fail = |e: SimError| self.failure(scenario, &timeline, e);
        outcome.map_err(fail)?;

        let fingerprints = match self.config.convergence {
            ConvergenceCheck::Fingerprints => Some(
                wait_converged(
                    &self.a.url(1)?,
                    &self.b.url(1)?,
                    &self.config.table,
                    self.config.converge_timeout,
                )
                .await
                .map_err(fail)?,
            ),
            ConvergenceCheck::Rows => {
                let query = format!("SELECT k, v FROM {} ORDER BY k", self.config.table);
                wait_same_rows(
                    &self.a.url(1)?,
                    &self.b.url(1)?,
                    &query,
                    self.config.converge_timeout,
                )
                .await
                .map_err(fail)?;
                None
            }
        };
        let mut oracle = LwwOracle::new([
            ("a".to_string(), self.config.origin_ids[0]),
            ("b".to_string(), self.config.origin_ids[1]),
        ]);
        let acknowledged = records
            .iter()
            .filter(|r| r.status == WriteStatus::Acknowledged)
            .count();
        let ambiguous = records.len() - acknowledged;
        oracle.add(records).map_err(fail)?;
        let table_config = KvConfig {
            table: self.config.table.clone(),
            ..KvConfig::default()
        };
        let table_a = kv::read_table(&self.a.sql(1).await?, &table_config).await?;
        let table_b = kv::read_table(&self.b.sql(1).await?, &table_config).await?;
        let lww = oracle
            .verify(&[("cluster a", &table_a), ("cluster b", &table_b)])
            .map_err(fail)?;
        let replicated_time = match replicated_time {
            Some(result) => Some(result.map_err(fail)?),
            None => None,
        };
        let report = RunReport {
            seed,
            elapsed_s: start.elapsed().as_secs_f64(),
            writes_acknowledged: acknowledged,
            writes_ambiguous: ambiguous,
            writes_failed: failed.load(std::sync::atomic::Ordering::Relaxed),
            keys_checked: lww.keys_checked,
            fingerprints,
            replicated_time,
            timeline,
        };
        tracing::info!(
            seed,
            acknowledged,
            ambiguous,
            keys = report.keys_checked,
            "fuzz scenario passed"
        );
        Ok(report)
    }

    async fn apply_fault(&self, op: &Op) -> Result<()> {
        match op {
            Op::Write { .. } => Ok(()),
            Op::Kill { cluster, node } => self.cluster(*cluster).kill(*node),
            Op::Restart { cluster, node } => self.cluster(*cluster).restart(*node).await,
            Op::Pause { cluster, node } => self.cluster(*cluster).pause(*node),
            Op::Resume { cluster, node } => self.cluster(*cluster).resume(*node),
            Op::ClockSkew {
                cluster,
                node,
                offset_ns,
            } => {
                self.cluster(*cluster)
                    .set_clock_offset(*node, *offset_ns)
                    .await
            }
            Op::Network {
                cluster: Some(side),
                fault,
            } => self.cluster(*side).set_fault(*fault),
            Op::Network {
                cluster: None,
                fault,
            } => {
                self.a.set_fault(*fault)?;
                self.b.set_fault(*fault)
            }
        }
    }

    async fn heal_all(&self) {
        for cluster in [self.a, self.b] {
            if cluster.spec().proxied_sql {
                let _ = cluster.set_fault(Fault::Pass);
            }
            for info in cluster.nodes() {
                let result = if info.paused {
                    cluster.resume(info.index)
                } else if !info.running {
                    cluster.restart(info.index).await
                } else {
                    Ok(())
                };
                if let Err(e) = result {
                    tracing::warn!(cluster = cluster.name(), node = info.index, error = %e, "could not heal node after the scenario");
                }
            }
        }
    }

    fn failure(&self, scenario: &Scenario, timeline: &[String], error: SimError) -> SimError {
        let mut text = format!(
            "fuzz run failed: seed {} ({} steps, {} writes); reproduce with SEED={} or by replaying the scenario JSON\nfault timeline (actual start times):\n",
            scenario.seed,
            scenario.steps.len(),
            scenario.writes(),
            scenario.seed
        );
        if timeline.is_empty() {
            text.push_str("  (no faults)\n");
        }
        for line in timeline {
            text.push_str(&format!("  {line}\n"));
        }
        text.push_str(&error.to_string());
        SimError::Invariant(text)
    }
}

/// One scheduled write.
struct PlannedWrite {
    origin: &'static str,
    url: String,
    node: usize,
    seq: u64,
    key: i64,
    value: Option<String>,
    table: String,
}

impl PlannedWrite {
    /// Runs the write; `None` when it certainly did not happen (never sent, refused by the
    /// server, or a delete of an absent row).
    async fn execute(self, start: Instant, timeout: Duration) -> Option<WriteRecord> {
        let client = sql::connect(&self.url, timeout).await.ok()?;
        let (statement_sql, types) = match &self.value {
            Some(_) => (
                format!(
                    "INSERT INTO {} (k, v) VALUES ($1, $2) ON CONFLICT (k) DO UPDATE SET v = excluded.v RETURNING k, crdb_internal_mvcc_timestamp",
                    self.table
                ),
                vec![Type::INT8, Type::TEXT],
            ),
            None => (
                format!(
                    "DELETE FROM {} WHERE k = $1 RETURNING k, crdb_internal_mvcc_timestamp",
                    self.table
                ),
                vec![Type::INT8],
            ),
        };
        let statement = tokio::time::timeout(timeout, client.prepare_typed(&statement_sql, &types))
            .await
            .ok()?
            .ok()?;
        let sent_ns = start.elapsed().as_nanos() as u64;
        let result = match &self.value {
            Some(v) => {
                tokio::time::timeout(timeout, client.query(&statement, &[&self.key, v])).await
            }
            None => tokio::time::timeout(timeout, client.query(&statement, &[&self.key])).await,
        };
        let answered_ns = start.elapsed().as_nanos() as u64;
        let record = |status, timestamp| WriteRecord {
            origin: self.origin.to_string(),
            key: self.key,
            value: self.value.clone(),
            timestamp,
            status,
            worker: self.node,
            seq: self.seq,
            sent_ns,
            answered_ns,
        };
        match result {
            Ok(Ok(rows)) => {
                let row = rows.first()?;
                match row
                    .try_get::<_, DecimalText>(1)
                    .ok()
                    .and_then(|DecimalText(t)| t.parse().ok())
                {
                    Some(ts) => Some(record(WriteStatus::Acknowledged, Some(ts))),
                    None => {
                        tracing::warn!(
                            key = self.key,
                            "write returned no usable commit timestamp; treating it as ambiguous"
                        );
                        Some(record(WriteStatus::Ambiguous, None))
                    }
                }
            }
            Ok(Err(e)) if crate::workload::is_ambiguous(&e) => {
                Some(record(WriteStatus::Ambiguous, None))
            }
            Ok(Err(_)) => None,
            Err(_) => Some(record(WriteStatus::Ambiguous, None)),
        }
    }
}

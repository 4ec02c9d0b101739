//! Runs a [`Scenario`] against two live ldr clusters with bidirectional LDR and checks the
//! outcome.
//!
//! Steps start at their scheduled times (never earlier; a slow restart delays the steps after
//! it). Each write runs in its own task through its node's direct SQL address with a deadline,
//! so a paused or killed node never stalls the schedule, and is recorded as acknowledged
//! (with the commit timestamp it returned), ambiguous (sent, and the answer was lost or says
//! the outcome is unknown) or failed (certainly not applied). Faults run in order on the
//! harness. After the last step everything is healed; then:
//! 1. quiesce: every LDR job on each cluster replicates past the other cluster's clock (so
//!    every write of the run has been applied or dead-lettered);
//! 2. convergence: the table has the same fingerprints and the same rows on both clusters;
//! 3. LWW oracle: every key holds its winning write on both clusters (origin ids from
//!    `crdb_internal.cluster_origin_id()`; without them an exact tie accepts either write);
//! 4. monotonic replicated time: no job's replicated time went backwards (sampled throughout);
//! 5. accounting: each destination ingested (applied or lost to LWW) or dead-lettered at least
//!    every write acknowledged on its source, and nothing is left in its retry queue — skipped,
//!    with a note, for a destination whose node restarted (its counters live in memory).
//!
//! A failure's error names the seed, the fault timeline (actual start times), the checker's
//! report, and the write history of each key that is wrong or differs between the clusters.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ldr_types::Timestamp;
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;
use tokio_postgres::types::Type;

use super::scenario::{Op, Scenario, Side};
use crate::check::accounting::{self, ReplicationCounters};
use crate::check::convergence::{Fingerprints, fingerprints};
use crate::check::lww::LwwOracle;
use crate::check::replicated_time::{MonotonicReport, ReplicatedTimeWatcher};
use crate::cluster::{Cluster, ClusterSpec};
use crate::error::{Result, SimError};
use crate::ldr::{self, ApplyMode};
use crate::proxy::Fault;
use crate::sql::{self, DecimalText};
use crate::workload::kv::{self, KvConfig};
use crate::workload::{WriteRecord, WriteStatus};

/// How long a `PAUSE JOB` may take to show as `paused`.
const JOB_STATUS_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the schedule waits for a restarted node to serve before it goes on.
const RESTART_READY_WAIT: Duration = Duration::from_secs(10);

/// Knobs of a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunnerConfig {
    /// The `kv`-shaped table the scenario writes (`k INT8 PRIMARY KEY, v STRING`); it must be
    /// empty when the run starts.
    pub table: String,
    /// LWW origin ids of clusters A and B (the larger wins an exact timestamp tie). `None`:
    /// ask the clusters (`crdb_internal.cluster_origin_id()`); if they cannot say, an exact
    /// tie accepts either write.
    pub origin_ids: Option<[u32; 2]>,
    /// Deadline of one write (connect, prepare, execute).
    pub write_timeout: Duration,
    /// Deadline of quiescing, and then of converging.
    pub converge_timeout: Duration,
    /// Sample `SHOW LOGICAL REPLICATION JOBS` on both clusters during the run.
    pub watch_replicated_time: bool,
    /// Check the destinations' LDR counters (see the module doc).
    pub check_accounting: bool,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        RunnerConfig {
            table: "kv".into(),
            origin_ids: None,
            write_timeout: Duration::from_secs(10),
            converge_timeout: Duration::from_secs(180),
            watch_replicated_time: true,
            check_accounting: true,
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
    /// Rows left in the table (the same on both clusters).
    pub rows: usize,
    /// The origin ids the oracle used (`None`: unknown, exact ties accepted either way).
    pub origin_ids: Option<[u32; 2]>,
    /// Keys whose winner was an exact cross-cluster tie the oracle could not order.
    pub unresolved_ties: usize,
    pub fingerprints: Fingerprints,
    /// Per cluster (A, B), when watched.
    pub replicated_time: Vec<MonotonicReport>,
    /// Per direction: the accounting verdict, or why it was skipped.
    pub accounting: Vec<String>,
    /// Every executed non-write step with its actual start time.
    pub timeline: Vec<String>,
}

impl std::fmt::Display for RunReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "seed {} passed in {:.1}s: {} writes acknowledged, {} ambiguous, {} failed; {} keys checked, {} rows on both clusters, fingerprints {}",
            self.seed,
            self.elapsed_s,
            self.writes_acknowledged,
            self.writes_ambiguous,
            self.writes_failed,
            self.keys_checked,
            self.rows,
            self.fingerprints
        )?;
        match self.origin_ids {
            Some([a, b]) => writeln!(f, "  origin ids: a {a}, b {b}")?,
            None => writeln!(
                f,
                "  origin ids unknown: {} exact ties accepted either way",
                self.unresolved_ties
            )?,
        }
        for (side, report) in ["a", "b"].iter().zip(&self.replicated_time) {
            writeln!(
                f,
                "  replicated time on {side}: monotonic over {} samples ({} failed while faults were on)",
                report.samples, report.failed_samples
            )?;
        }
        for line in &self.accounting {
            writeln!(f, "  {line}")?;
        }
        Ok(())
    }
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
    setup_bidirectional_mode(a, b, table, ApplyMode::Immediate).await
}

/// [`setup_bidirectional`] with both streams in `mode` (`validated`: `WITH mode =
/// 'validated'`, every replicated row through the destination's SQL write path).
pub async fn setup_bidirectional_mode(
    a: &Cluster,
    b: &Cluster,
    table: &str,
    mode: ApplyMode,
) -> Result<(i64, i64)> {
    kv::check_identifier(table)?;
    crate::ldr::setup_bidirectional_with(
        a,
        b,
        table,
        &format!("CREATE TABLE IF NOT EXISTS {table} (k INT8 PRIMARY KEY, v STRING)"),
        mode.stream_options(),
    )
    .await
}

/// The tables as read at the end, for reports.
type Tables = (BTreeMap<i64, String>, BTreeMap<i64, String>);

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
        let origin_ids = match self.config.origin_ids {
            Some(ids) => Some(ids),
            None => match tokio::try_join!(
                ldr::cluster_origin_id(self.a),
                ldr::cluster_origin_id(self.b)
            ) {
                Ok((a, b)) => Some([a, b]),
                Err(e) => {
                    tracing::warn!(error = %e, "origin ids unknown; exact timestamp ties will accept either write");
                    None
                }
            },
        };
        let counters_before = if self.config.check_accounting {
            Some(tokio::try_join!(
                accounting::cluster_counters(self.a),
                accounting::cluster_counters(self.b)
            )?)
        } else {
            None
        };

        let start = Instant::now();
        let watchers = self.config.watch_replicated_time.then(|| {
            [self.a, self.b]
                .map(|c| ReplicatedTimeWatcher::spawn(c.urls(), Duration::from_millis(500)))
        });
        let records: Arc<Mutex<Vec<WriteRecord>>> = Arc::new(Mutex::new(Vec::new()));
        let failed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut writes = JoinSet::new();
        let mut timeline = Vec::new();
        let mut restarted = [false, false];
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
                    // A node that exited on its own crashed: stop here, before a fault step
                    // could hide it (a kill, then a restart).
                    if let Some(crash) = self.crashes() {
                        outcome = Err(SimError::Process(crash));
                        break;
                    }
                    timeline.push(format!("{:>8.3}s {op}", start.elapsed().as_secs_f64()));
                    if let Op::Kill { cluster, .. } | Op::ClockSkew { cluster, .. } = op {
                        restarted[*cluster as usize] = true;
                    }
                    match self.apply_fault(op).await {
                        Ok(None) => {}
                        Ok(Some(note)) => {
                            if let Some(line) = timeline.last_mut() {
                                line.push_str(&format!(" ({note})"));
                            }
                        }
                        Err(e) => {
                            outcome = Err(SimError::Process(format!(
                                "fault step {index} ({op}) failed: {e}"
                            )));
                            break;
                        }
                    }
                }
            }
        }
        // Heal whatever is still broken (a failed run, or a hand-written scenario), and wait
        // until every node serves again.
        let (healed, ready) = self.heal_all().await;
        timeline.extend(healed);
        if outcome.is_ok() {
            outcome = ready;
        }
        while writes.join_next().await.is_some() {}
        let records = std::mem::take(&mut *records.lock().unwrap_or_else(|p| p.into_inner()));
        let mut oracle = match origin_ids {
            Some([a, b]) => LwwOracle::new([("a".to_string(), a), ("b".to_string(), b)]),
            None => LwwOracle::with_unknown_origin_ids(["a".to_string(), "b".to_string()]),
        };
        let acknowledged = |side: Side| {
            records
                .iter()
                .filter(|r| r.status == WriteStatus::Acknowledged && r.origin == side.label())
                .count()
        };
        let (acknowledged_a, acknowledged_b) = (acknowledged(Side::A), acknowledged(Side::B));
        let ambiguous = records.len() - acknowledged_a - acknowledged_b;
        let latest_write = |side: Side| {
            records
                .iter()
                .filter(|r| r.origin == side.label())
                .filter_map(|r| r.timestamp)
                .max()
        };
        let (latest_a, latest_b) = (latest_write(Side::A), latest_write(Side::B));
        oracle.add(records)?;
        let fail = |e: SimError, tables: Option<&Tables>| {
            self.failure(scenario, &timeline, &oracle, e, tables)
        };
        if let Err(e) = outcome {
            return Err(fail(e, None));
        }

        // 1. Quiesce: both directions replicate past every write of the run.
        if let Err(e) = self.quiesce(latest_a, latest_b).await {
            let tables = self.read_tables().await.ok();
            return Err(fail(e, tables.as_ref()));
        }
        // 2. Convergence.
        let (fingerprints, tables) = match self.converge().await {
            Ok(done) => done,
            Err((e, tables)) => return Err(fail(e, tables.as_ref())),
        };
        // 3. LWW oracle.
        let lww = oracle
            .verify(&[("cluster a", &tables.0), ("cluster b", &tables.1)])
            .map_err(|e| fail(e, None))?;
        // 4. Monotonic replicated time.
        let mut replicated_time = Vec::new();
        if let Some(watchers) = watchers {
            for watcher in watchers {
                replicated_time.push(watcher.finish().await.map_err(|e| fail(e, None))?);
            }
        }
        // 5. Accounting.
        let mut accounting_lines = Vec::new();
        if let Some((before_a, before_b)) = counters_before {
            let directions = [
                (Side::A, Side::B, acknowledged_a, before_b),
                (Side::B, Side::A, acknowledged_b, before_a),
            ];
            for (source, dest, emitted, before) in directions {
                let line = self
                    .account(
                        source,
                        dest,
                        emitted as u64,
                        &before,
                        restarted[dest as usize],
                    )
                    .await
                    .map_err(|e| fail(e, Some(&tables)))?;
                accounting_lines.push(line);
            }
        }

        let report = RunReport {
            seed,
            elapsed_s: start.elapsed().as_secs_f64(),
            writes_acknowledged: acknowledged_a + acknowledged_b,
            writes_ambiguous: ambiguous,
            writes_failed: failed.load(std::sync::atomic::Ordering::Relaxed),
            keys_checked: lww.keys_checked,
            rows: tables.0.len(),
            origin_ids,
            unresolved_ties: oracle.unresolved_ties().len(),
            fingerprints,
            replicated_time,
            accounting: accounting_lines,
            timeline,
        };
        tracing::info!(
            seed,
            acknowledged = report.writes_acknowledged,
            ambiguous,
            keys = report.keys_checked,
            "fuzz scenario passed"
        );
        Ok(report)
    }

    /// Waits until the jobs on B have replicated past every write on A and vice versa. The
    /// end of A's writes is the later of A's clocks now and A's latest acknowledged write (a
    /// node whose skewed clock went back may have written above its clock now).
    async fn quiesce(
        &self,
        latest_a: Option<Timestamp>,
        latest_b: Option<Timestamp>,
    ) -> Result<()> {
        let end_a = ldr::cluster_now(self.a)
            .await?
            .max(latest_a.unwrap_or_default());
        let end_b = ldr::cluster_now(self.b)
            .await?
            .max(latest_b.unwrap_or_default());
        let timeout = self.config.converge_timeout;
        tokio::try_join!(
            ldr::wait_all_replicated_past(self.b, end_a, timeout),
            ldr::wait_all_replicated_past(self.a, end_b, timeout)
        )?;
        Ok(())
    }

    async fn read_tables(&self) -> Result<Tables> {
        let config = KvConfig {
            table: self.config.table.clone(),
            ..KvConfig::default()
        };
        let a = kv::read_table(&self.a.sql(1).await?, &config).await?;
        let b = kv::read_table(&self.b.sql(1).await?, &config).await?;
        Ok((a, b))
    }

    /// Polls until fingerprints and rows are equal on both clusters (an ambiguous write whose
    /// statement was stuck on a paused node may still commit and replicate after healing).
    async fn converge(
        &self,
    ) -> std::result::Result<(Fingerprints, Tables), (SimError, Option<Tables>)> {
        let started = Instant::now();
        let deadline = started + self.config.converge_timeout;
        let mut polls = 0u64;
        loop {
            polls += 1;
            let observation = async {
                let fp_a = fingerprints(&self.a.sql(1).await?, &self.config.table).await?;
                let fp_b = fingerprints(&self.b.sql(1).await?, &self.config.table).await?;
                let tables = self.read_tables().await?;
                Ok::<_, SimError>((fp_a, fp_b, tables))
            }
            .await;
            let last = match observation {
                Ok((fp_a, fp_b, tables)) if fp_a == fp_b && tables.0 == tables.1 => {
                    tracing::info!(polls, waited_ms = started.elapsed().as_millis() as u64, fingerprints = %fp_a, "clusters converged");
                    return Ok((fp_a, tables));
                }
                Ok((fp_a, fp_b, tables)) => {
                    let differing = differing_keys(&tables.0, &tables.1);
                    (
                        format!(
                            "fingerprints a {fp_a}, b {fp_b}; {} rows on a, {} on b; {} keys differ: {:?}",
                            tables.0.len(),
                            tables.1.len(),
                            differing.len(),
                            &differing[..differing.len().min(20)]
                        ),
                        Some(tables),
                    )
                }
                Err(e) => (format!("error: {e}"), None),
            };
            if Instant::now() >= deadline {
                return Err((
                    SimError::Invariant(format!(
                        "table {} did not converge within {:?} ({polls} polls): {}",
                        self.config.table, self.config.converge_timeout, last.0
                    )),
                    last.1,
                ));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The accounting line of one direction (an error if it does not hold).
    async fn account(
        &self,
        source: Side,
        dest: Side,
        emitted: u64,
        before: &ReplicationCounters,
        dest_restarted: bool,
    ) -> Result<String> {
        let direction = format!("{} -> {}", source.label(), dest.label());
        if dest_restarted {
            return Ok(format!(
                "accounting {direction}: skipped (a node of {} restarted, and its counters live in memory)",
                dest.label()
            ));
        }
        let after = accounting::cluster_counters(self.cluster(dest)).await?;
        match accounting::verify(emitted, before, &after) {
            Ok(report) => Ok(format!(
                "accounting {direction}: {}",
                report.to_string().trim_start_matches("accounting: ")
            )),
            Err(SimError::Invariant(text)) => {
                Err(SimError::Invariant(format!("{direction}: {text}")))
            }
            Err(e) => Err(e),
        }
    }

    /// Runs one fault step; `Some(note)` is added to its timeline line.
    async fn apply_fault(&self, op: &Op) -> Result<Option<String>> {
        let done = |r: Result<()>| r.map(|()| None);
        match op {
            Op::Write { .. } => Ok(None),
            Op::Kill { cluster, node } => done(self.cluster(*cluster).kill(*node)),
            Op::Restart { cluster, node } => self.restart_node(*cluster, *node, None).await,
            Op::ClockSkew {
                cluster,
                node,
                offset_ns,
            } => self.restart_node(*cluster, *node, Some(*offset_ns)).await,
            Op::Pause { cluster, node } => done(self.cluster(*cluster).pause(*node)),
            Op::Resume { cluster, node } => done(self.cluster(*cluster).resume(*node)),
            Op::Network {
                cluster: Some(side),
                fault,
            } => done(self.cluster(*side).set_fault(*fault)),
            Op::Network {
                cluster: None,
                fault,
            } => {
                self.a.set_fault(*fault)?;
                done(self.b.set_fault(*fault))
            }
            Op::PauseJobs { cluster } => {
                done(ldr::pause_jobs(self.cluster(*cluster), JOB_STATUS_TIMEOUT).await)
            }
            Op::ResumeJobs { cluster } => done(ldr::resume_jobs(self.cluster(*cluster)).await),
        }
    }

    /// Restarts a node (with a new clock offset, if given) on its store. The schedule waits
    /// at most [`RESTART_READY_WAIT`] for it: a node may not serve until another node of its
    /// cluster that is down comes back later in the schedule; the heal step waits for it in
    /// full. A node that exits fails the step.
    async fn restart_node(
        &self,
        side: Side,
        node: usize,
        offset_ns: Option<i64>,
    ) -> Result<Option<String>> {
        let cluster = self.cluster(side);
        cluster.kill(node)?;
        if let Some(offset) = offset_ns {
            cluster.set_next_clock_offset(node, offset)?;
        }
        cluster.start_node(node)?;
        if cluster.wait_ready_within(node, RESTART_READY_WAIT).await? {
            Ok(None)
        } else {
            Ok(Some(format!(
                "not ready after {}s, the schedule goes on",
                RESTART_READY_WAIT.as_secs()
            )))
        }
    }

    /// Passes all traffic, resumes paused nodes, restarts stopped ones and resets skewed
    /// clocks, then waits until every node is ready; returns a line per repair (none after a
    /// generated scenario, which heals itself) and an error if a node is not ready or had
    /// exited on its own (a crash the harness did not cause).
    /// Paused jobs are left alone: a scenario that leaves a job paused tests exactly that.
    /// Every node that exited on its own, with its log tail; `None` if there is none.
    fn crashes(&self) -> Option<String> {
        let mut crashed = Vec::new();
        for (cluster, label) in [(self.a, "a"), (self.b, "b")] {
            for info in cluster.nodes() {
                if let Some(status) = &info.exited {
                    crashed.push(format!(
                        "node {label}/{} exited on its own ({status}); its log: {}\n{}",
                        info.index,
                        info.log_path.display(),
                        cluster.log_tail(info.index, 30).unwrap_or_default()
                    ));
                }
            }
        }
        (!crashed.is_empty()).then(|| crashed.join("\n"))
    }

    async fn heal_all(&self) -> (Vec<String>, Result<()>) {
        let mut repairs = Vec::new();
        let crashed = self.crashes();
        for (cluster, label) in [(self.a, "a"), (self.b, "b")] {
            if cluster.spec().proxied_sql {
                let _ = cluster.set_fault(Fault::Pass);
            }
            for info in cluster.nodes() {
                let (what, result) = if info.paused {
                    ("resume", cluster.resume(info.index))
                } else if !info.running {
                    ("restart", cluster.start_node(info.index))
                } else if info.clock_offset_ns != 0 {
                    let restarted = cluster
                        .set_next_clock_offset(info.index, 0)
                        .and_then(|()| cluster.kill(info.index))
                        .and_then(|()| cluster.start_node(info.index));
                    ("reset the clock of", restarted)
                } else {
                    continue;
                };
                repairs.push(format!("   (heal) {what} {label}/{}", info.index));
                if let Err(e) = result {
                    tracing::warn!(cluster = cluster.name(), node = info.index, error = %e, "could not heal node after the scenario");
                }
            }
        }
        for cluster in [self.a, self.b] {
            for index in cluster.node_ids() {
                if let Err(e) = cluster.wait_ready(index).await {
                    return (repairs, Err(e));
                }
            }
        }
        match crashed {
            None => (repairs, Ok(())),
            Some(crash) => (repairs, Err(SimError::Process(crash))),
        }
    }

    fn failure(
        &self,
        scenario: &Scenario,
        timeline: &[String],
        oracle: &LwwOracle,
        error: SimError,
        tables: Option<&Tables>,
    ) -> SimError {
        let mut text = format!(
            "fuzz run failed: seed {} ({} steps, {} writes)\nfault timeline (actual start times):\n",
            scenario.seed,
            scenario.steps.len(),
            scenario.writes(),
        );
        if timeline.is_empty() {
            text.push_str("  (no faults)\n");
        }
        for line in timeline {
            text.push_str(&format!("  {line}\n"));
        }
        text.push_str(&error.to_string());
        if let Some((a, b)) = tables {
            let differing = differing_keys(a, b);
            if !differing.is_empty() {
                text.push_str(&format!(
                    "\nkeys that differ between the clusters ({}), with their write histories:\n",
                    differing.len()
                ));
                text.push_str(
                    &oracle.describe_keys(&differing, &[("cluster a", a), ("cluster b", b)]),
                );
            }
        }
        SimError::Invariant(text)
    }
}

/// Keys present on one side only or with different values (sorted).
fn differing_keys(a: &BTreeMap<i64, String>, b: &BTreeMap<i64, String>) -> Vec<i64> {
    let mut keys: Vec<i64> = a
        .iter()
        .filter(|(k, v)| b.get(k) != Some(v))
        .map(|(k, _)| *k)
        .chain(b.keys().filter(|k| !a.contains_key(k)).copied())
        .collect();
    keys.sort_unstable();
    keys
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
                tracing::debug!(key = self.key, error = %crate::error::describe_sql_error(&e), "write outcome unknown");
                Some(record(WriteStatus::Ambiguous, None))
            }
            Ok(Err(e)) => {
                tracing::debug!(key = self.key, error = %crate::error::describe_sql_error(&e), "write failed");
                None
            }
            Err(_) => Some(record(WriteStatus::Ambiguous, None)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differing_keys_cover_both_sides() {
        let a: BTreeMap<i64, String> = [(1, "x"), (2, "y"), (4, "same")]
            .into_iter()
            .map(|(k, v)| (k, v.to_string()))
            .collect();
        let b: BTreeMap<i64, String> = [(2, "z"), (3, "only-b"), (4, "same")]
            .into_iter()
            .map(|(k, v)| (k, v.to_string()))
            .collect();
        assert_eq!(differing_keys(&a, &b), vec![1, 2, 3]);
        assert!(differing_keys(&a, &a).is_empty());
    }
}

//! The linearizability workload: seeded clients and a seeded nemesis against a real ldr
//! cluster whose table ranges are Raft groups on three nodes, then [`check`].
//!
//! 1. **Setup**: `ALTER RANGE default CONFIGURE ZONE USING num_replicas = 3`, a fresh table
//!    `reg (k INT8 PRIMARY KEY, v INT8 NOT NULL)` and every key set to 0 (retried until the
//!    new ranges elect their leaseholders).
//! 2. **Clients** (`clients` tasks), each with its own pgwire connection to a node picked by
//!    its seeded generator, run until the end of `duration`: reads
//!    (`SELECT v FROM reg WHERE k = $1`), writes (`UPSERT`), and compare-and-sets
//!    (`UPDATE reg SET v = $new WHERE k = $k AND v = $old`: 1 row = swapped, 0 = not). Every
//!    written value is unique (client number in the high bits, a counter in the low ones); a
//!    compare-and-set expects the last value its client saw for the key. Operation kinds,
//!    keys, values and node choices come from the client's ChaCha8 generator; what a
//!    compare-and-set expects depends on what was read, so on timing.
//! 3. **Outcomes** ([`classify_error`]): an answer is definite; SQLSTATE 58C00 (the write
//!    never reached a replica) and 40001 (refused, nothing written) are refused operations;
//!    every other error, a lost connection and a timeout after sending are indeterminate
//!    (the connection is dropped and the client reconnects, to another node if that fails).
//! 4. **Nemesis**: fault episodes generated from the seed ([`Episode::schedule`]), one at a
//!    time so a quorum stays up: `kill` (SIGKILL, later restart on the same store), `pause`
//!    (SIGSTOP, later SIGCONT: the node keeps its sockets and answers nobody) or
//!    `partition` (the node is cut off from the other two by `ldr debug partition` on every
//!    node, later healed; SQL clients still reach it, so the minority side is exercised).
//! 5. **Heal and final reads**: every node back, then each key read through every node and
//!    added to the history (so a lost acknowledged write shows up).
//! 6. **Check**: [`check`] per key. On a violation that involves refused operations, the
//!    report says whether treating them as indeterminate would explain the history (that is,
//!    whether a "refused" error is the likely lie).
//!
//! Same seed, same configuration: same operation choices and fault schedule; the timing of
//! processes and the network differs run to run.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tokio_postgres::{Client, Statement};

use super::checker::{CheckOptions, CheckReport, check};
use super::history::{Call, Operation, Outcome, Value};
use crate::cluster::Cluster;
use crate::error::{Result, SimError, describe_sql_error};
use crate::sql;
use crate::worker::{
    Answer, Worker, Workload, answer, connect, nanos_since, run_workload, setup_table,
    workload_knobs,
};

/// How long a restarted node may take to serve before the schedule goes on.
const RESTART_READY_WAIT: Duration = Duration::from_secs(30);
/// Deadline for setup and for the final reads after healing.
pub(crate) const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);

/// What the nemesis does to a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// SIGKILL, then restart on the same store.
    Kill,
    /// SIGSTOP, then SIGCONT.
    Pause,
    /// A network partition cuts the node off from the others (`ldr debug partition`), then
    /// heals.
    Partition,
}

impl FaultKind {
    pub const ALL: [FaultKind; 3] = [FaultKind::Kill, FaultKind::Pause, FaultKind::Partition];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::Pause => "pause",
            FaultKind::Partition => "partition",
        }
    }

    pub fn parse(text: &str) -> Option<FaultKind> {
        match text.trim().to_ascii_lowercase().as_str() {
            "kill" => Some(FaultKind::Kill),
            "pause" => Some(FaultKind::Pause),
            "partition" => Some(FaultKind::Partition),
            _ => None,
        }
    }
}

/// Knobs of one run.
#[derive(Debug, Clone)]
pub struct LincheckConfig {
    pub seed: u64,
    /// How long the clients run.
    pub duration: Duration,
    pub clients: usize,
    pub keys: usize,
    /// Fault episodes to attempt (fewer when the duration has no room for them).
    pub faults: usize,
    pub fault_kinds: Vec<FaultKind>,
    /// Harness node numbers the nemesis may hit.
    pub fault_nodes: Vec<usize>,
    /// Share of reads; `write_percent` of writes; the rest are compare-and-sets.
    pub read_percent: u8,
    pub write_percent: u8,
    /// Client deadline of one operation; after it the outcome is unknown.
    pub op_timeout: Duration,
    /// Longest pause of a client between two operations (drawn uniformly from 0..=this).
    pub think_max: Duration,
    /// The table (created by the run; must not exist).
    pub table: String,
    pub check: CheckOptions,
}

impl LincheckConfig {
    /// Defaults for `seed`: 5 clients, 3 keys, 20 s, one fault episode per 5 s, kill and
    /// pause on nodes 2 and 3.
    pub fn new(seed: u64) -> LincheckConfig {
        LincheckConfig {
            seed,
            duration: Duration::from_secs(20),
            clients: 5,
            keys: 3,
            faults: 4,
            fault_kinds: FaultKind::ALL.to_vec(),
            fault_nodes: vec![1, 2, 3],
            read_percent: 40,
            write_percent: 30,
            op_timeout: Duration::from_secs(5),
            think_max: Duration::from_millis(5),
            table: "reg".to_string(),
            check: CheckOptions::default(),
        }
    }

    fn validate(&self) -> Result<()> {
        let bad = |what: &str| Err(SimError::InvalidArgument(what.to_string()));
        if self.clients == 0 || self.keys == 0 {
            return bad("lincheck needs at least one client and one key");
        }
        if self.clients >= 1 << 20 {
            return bad("too many clients");
        }
        if u16::from(self.read_percent) + u16::from(self.write_percent) > 100 {
            return bad("read_percent + write_percent must be at most 100");
        }
        if self.faults > 0 && (self.fault_kinds.is_empty() || self.fault_nodes.is_empty()) {
            return bad("faults need at least one fault kind and one node");
        }
        if !self
            .table
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return bad("the table name must be a plain identifier");
        }
        Ok(())
    }
}

/// One fault episode: `kind` on `node` from `start_ms` to `end_ms` after the clients start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Episode {
    pub kind: FaultKind,
    pub node: usize,
    pub start_ms: u64,
    pub end_ms: u64,
}

impl fmt::Display for Episode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:>7.3}s {} node {} .. {:.3}s {}",
            self.start_ms as f64 / 1e3,
            self.kind.name(),
            self.node,
            self.end_ms as f64 / 1e3,
            match self.kind {
                FaultKind::Kill => "restart",
                FaultKind::Pause => "resume",
                FaultKind::Partition => "heal",
            }
        )
    }
}

/// Shortest episode.
const EPISODE_MIN_MS: u64 = 1_000;
/// Longest episode.
const EPISODE_MAX_MS: u64 = 4_000;
/// Quiet time at both ends of the run and after each episode.
const QUIET_MS: u64 = 1_000;

impl Episode {
    /// The fault schedule of `config` (pure): the run is cut into equal slots after a quiet
    /// first second, one episode per slot at a random offset, 1–4 s long, ending at least a
    /// second before the slot does (a restarted node gets time to catch up before the next
    /// episode), so episodes never overlap. Slots shorter than 2.5 s are dropped.
    pub fn schedule(config: &LincheckConfig) -> Vec<Episode> {
        Episode::plan(
            config.seed,
            config.duration,
            config.faults,
            &config.fault_kinds,
            &config.fault_nodes,
        )
    }

    /// The same schedule from its inputs alone (for other workloads: the list-append
    /// anomaly check runs the same nemesis).
    pub fn plan(
        seed: u64,
        duration: Duration,
        faults: usize,
        fault_kinds: &[FaultKind],
        fault_nodes: &[usize],
    ) -> Vec<Episode> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x006e_656d_6573_6973);
        let total_ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        let window = total_ms.saturating_sub(2 * QUIET_MS);
        let slot_min = EPISODE_MIN_MS + QUIET_MS + QUIET_MS / 2;
        let slots = (faults as u64).min(window / slot_min);
        if slots == 0 || fault_kinds.is_empty() || fault_nodes.is_empty() {
            return Vec::new();
        }
        let slot = window / slots;
        (0..slots)
            .map(|i| {
                let slot_start = QUIET_MS + i * slot;
                let longest = (slot - QUIET_MS).min(EPISODE_MAX_MS);
                let length = rng.random_range(EPISODE_MIN_MS..=longest);
                let start = slot_start + rng.random_range(0..=slot - QUIET_MS - length);
                let kind = fault_kinds[rng.random_range(0..fault_kinds.len())];
                let node = fault_nodes[rng.random_range(0..fault_nodes.len())];
                Episode {
                    kind,
                    node,
                    start_ms: start,
                    end_ms: start + length,
                }
            })
            .collect()
    }
}

/// The outcome a failed statement stands for (see the module doc): 58C00 and 40001 say
/// nothing was written; anything else, or no SQLSTATE at all (the connection broke), leaves
/// the outcome unknown.
pub fn classify_error(sqlstate: Option<&str>) -> Outcome {
    match sqlstate {
        Some("58C00" | "40001") => Outcome::Failed,
        _ => Outcome::Unknown,
    }
}

/// Everything one run produced.
#[derive(Debug, Clone)]
pub struct LincheckReport {
    pub seed: u64,
    pub planned: Vec<Episode>,
    /// The fault steps as executed (actual times, same clock as the history).
    pub timeline: Vec<String>,
    pub history: Vec<Operation>,
    pub check: CheckReport,
    /// When a violation involves refused operations: the verdict with them counted as
    /// indeterminate instead.
    pub refused_note: Option<String>,
    pub workload_time: Duration,
    pub check_time: Duration,
}

impl LincheckReport {
    /// Every key proven linearizable.
    pub fn passed(&self) -> bool {
        self.check.is_linearizable()
    }
}

impl fmt::Display for LincheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let totals = self.check.totals();
        let verdict = if self.passed() {
            "PASS"
        } else if self.check.violations().next().is_some() {
            "FAIL (not linearizable)"
        } else {
            "FAIL (inconclusive)"
        };
        writeln!(
            f,
            "{verdict} seed {}: {} in {:.1}s of workload, checked in {:.2}s",
            self.seed,
            totals,
            self.workload_time.as_secs_f64(),
            self.check_time.as_secs_f64()
        )?;
        writeln!(f, "fault timeline (actual times):")?;
        if self.timeline.is_empty() {
            writeln!(f, "  (no faults)")?;
        }
        for line in &self.timeline {
            writeln!(f, "  {line}")?;
        }
        writeln!(f, "per key:")?;
        write!(f, "{}", self.check)?;
        if let Some(note) = &self.refused_note {
            writeln!(f, "{note}")?;
        }
        Ok(())
    }
}

/// The SQL a client runs, prepared on its connection.
pub(crate) struct Statements {
    read: Statement,
    write: Statement,
    cas: Statement,
}

impl Workload for LincheckConfig {
    type Statements = Statements;
    /// The last value the client saw per key (what its next compare-and-set expects).
    type State = BTreeMap<i64, Value>;
    type Record = Operation;
    const SEED_SALT: u64 = 0;

    workload_knobs!();

    async fn prepare(
        client: &Client,
        table: &str,
    ) -> std::result::Result<Statements, tokio_postgres::Error> {
        Ok(Statements {
            read: client
                .prepare(&format!("SELECT v FROM {table} WHERE k = $1"))
                .await?,
            write: client
                .prepare(&format!("UPSERT INTO {table} (k, v) VALUES ($1, $2)"))
                .await?,
            cas: client
                .prepare(&format!(
                    "UPDATE {table} SET v = $1 WHERE k = $2 AND v = $3"
                ))
                .await?,
        })
    }

    async fn step(&self, worker: &mut Worker<Self>, origin: Instant) -> Operation {
        let node = worker.node();
        let (key, call) = worker.next_call(self);
        let invoke_ns = nanos_since(origin);
        let (outcome, detail) = worker.execute(key, call, self.op_timeout).await;
        Operation {
            client: worker.id,
            key,
            call,
            outcome,
            invoke_ns,
            complete_ns: nanos_since(origin),
            node,
            detail,
        }
    }
}

impl Worker<LincheckConfig> {
    fn next_call(&mut self, config: &LincheckConfig) -> (i64, Call) {
        let key = self.rng.random_range(0..config.keys) as i64;
        let roll = self.rng.random_range(0..100u8);
        if roll < config.read_percent {
            return (key, Call::Read);
        }
        let value = self.unique_value();
        if roll < config.read_percent + config.write_percent {
            (key, Call::Write(value))
        } else {
            let expected = self.state.get(&key).copied().unwrap_or(0);
            (
                key,
                Call::Cas {
                    expected,
                    new: value,
                },
            )
        }
    }

    /// Runs one operation on the current connection; returns the outcome and error detail.
    async fn execute(&mut self, key: i64, call: Call, timeout: Duration) -> (Outcome, String) {
        let Some(c) = &self.connection else {
            return (Outcome::Failed, "no connection".into());
        };
        let s = &c.statements;
        let run = async {
            match call {
                Call::Read => c
                    .client
                    .query_opt(&s.read, &[&key])
                    .await
                    .map(|row| Outcome::Read(row.map(|r| r.get::<_, i64>(0)))),
                Call::Write(v) => c
                    .client
                    .execute(&s.write, &[&key, &v])
                    .await
                    .map(|_| Outcome::Written),
                Call::Cas { expected, new } => c
                    .client
                    .execute(&s.cas, &[&new, &key, &expected])
                    .await
                    .map(|rows| match rows {
                        0 => Outcome::CasFailed,
                        1 => Outcome::CasOk,
                        _ => Outcome::Unknown,
                    }),
            }
        };
        let (outcome, detail) = match answer(timeout, run).await {
            Answer::Value(Outcome::Unknown) => {
                (Outcome::Unknown, "more than one row updated".to_string())
            }
            Answer::Value(outcome) => (outcome, String::new()),
            Answer::Refused(code, detail) => (classify_error(code.as_deref()), detail),
            Answer::Broken(detail) => (Outcome::Unknown, detail),
        };
        // After an error without a SQLSTATE (the connection broke) or a timeout, the
        // connection's state is unknown: start over on a fresh one.
        if matches!(outcome, Outcome::Unknown | Outcome::Failed) && !detail.contains("SQLSTATE") {
            self.connection = None;
        }
        match (call, outcome) {
            (_, Outcome::Read(Some(v))) | (Call::Write(v), Outcome::Written) => {
                self.state.insert(key, v);
            }
            (Call::Cas { new, .. }, Outcome::CasOk) => {
                self.state.insert(key, new);
            }
            _ => {}
        }
        (outcome, detail)
    }
}

/// Runs the schedule's episodes in order (each starts at its time, never earlier; a slow
/// restart delays the ones after it); returns the executed timeline.
pub(crate) async fn nemesis(
    cluster: Arc<Cluster>,
    plan: Vec<Episode>,
    origin: Instant,
) -> Result<Vec<String>> {
    let mut timeline = Vec::new();
    let at = |origin: Instant| format!("{:>7.3}s", origin.elapsed().as_secs_f64());
    for episode in plan {
        tokio::time::sleep_until((origin + Duration::from_millis(episode.start_ms)).into()).await;
        let node = episode.node;
        match episode.kind {
            FaultKind::Kill => cluster.kill(node)?,
            FaultKind::Pause => cluster.pause(node)?,
            FaultKind::Partition => {
                let others: Vec<usize> = cluster.node_ids().filter(|n| *n != node).collect();
                cluster.partition(&[&others, &[node]]).await?
            }
        }
        timeline.push(format!(
            "{} {} node {node}",
            at(origin),
            episode.kind.name()
        ));
        tokio::time::sleep_until((origin + Duration::from_millis(episode.end_ms)).into()).await;
        match episode.kind {
            FaultKind::Kill => {
                let started = at(origin);
                cluster.start_node(node)?;
                let ready = cluster.wait_ready_within(node, RESTART_READY_WAIT).await?;
                timeline.push(format!(
                    "{started} restart node {node} ({})",
                    if ready {
                        format!("serving at {}", at(origin).trim())
                    } else {
                        format!("not ready after {}s", RESTART_READY_WAIT.as_secs())
                    }
                ));
            }
            FaultKind::Pause => {
                cluster.resume(node)?;
                timeline.push(format!("{} resume node {node}", at(origin)));
            }
            FaultKind::Partition => {
                cluster.heal().await?;
                timeline.push(format!("{} heal the partition of node {node}", at(origin)));
            }
        }
    }
    Ok(timeline)
}

/// Refuses fault nodes that are not nodes of `cluster`.
pub(crate) fn check_fault_nodes(cluster: &Cluster, fault_nodes: &[usize]) -> Result<()> {
    for &node in fault_nodes {
        if node == 0 || node > cluster.node_count() {
            return Err(SimError::InvalidArgument(format!(
                "fault node {node} is not a node of a {}-node cluster",
                cluster.node_count()
            )));
        }
    }
    Ok(())
}

/// Resumes paused nodes and starts stopped ones, then waits until every node serves; fails
/// with the node logs if one exited on its own (`during` names the run in that report).
pub(crate) async fn heal(cluster: &Cluster, during: &str) -> Result<Vec<String>> {
    let mut repairs = Vec::new();
    for info in cluster.nodes() {
        if let Some(status) = &info.exited {
            return Err(SimError::Process(cluster.failure_report(&format!(
                "node {} exited on its own ({status}) during the {during}",
                info.index
            ))));
        }
        if info.paused {
            cluster.resume(info.index)?;
            repairs.push(format!("(heal) resume node {}", info.index));
        } else if !info.running {
            cluster.start_node(info.index)?;
            repairs.push(format!("(heal) restart node {}", info.index));
        }
    }
    for node in cluster.node_ids() {
        cluster.wait_ready(node).await?;
    }
    // Partitions end too (a no-op for nodes that are not cut off).
    cluster.heal().await?;
    Ok(repairs)
}

/// Creates the replicated table and sets every key to 0, retrying while the new ranges
/// elect leaseholders.
async fn setup(cluster: &Cluster, config: &LincheckConfig) -> Result<()> {
    setup_table(
        cluster,
        &config.table,
        "INT8 NOT NULL",
        "0",
        config.keys,
        "the initial values to be written",
    )
    .await
}

/// Reads every key through every node after healing (each read retried until it answers),
/// recorded as operations of client `reader`.
async fn final_reads(
    cluster: &Cluster,
    config: &LincheckConfig,
    reader: usize,
    origin: Instant,
) -> Result<Vec<Operation>> {
    let mut ops = Vec::new();
    for node in cluster.node_ids() {
        for key in 0..config.keys as i64 {
            let op = sql::wait_until(
                &format!("a read of key {key} through node {node} after healing"),
                SETTLE_TIMEOUT,
                Duration::from_millis(200),
                || async {
                    let c = connect::<LincheckConfig>(cluster, node, &config.table).await?;
                    let invoke_ns = nanos_since(origin);
                    let row = tokio::time::timeout(
                        config.op_timeout,
                        c.client.query_opt(&c.statements.read, &[&key]),
                    )
                    .await
                    .map_err(|_| "timed out".to_string())?
                    .map_err(|e| describe_sql_error(&e))?;
                    Ok(Operation {
                        client: reader,
                        key,
                        call: Call::Read,
                        outcome: Outcome::Read(row.map(|r| r.get::<_, i64>(0))),
                        invoke_ns,
                        complete_ns: nanos_since(origin),
                        node,
                        detail: String::new(),
                    })
                },
            )
            .await?;
            ops.push(op);
        }
    }
    Ok(ops)
}

/// Runs the workload and the nemesis of `config` against `cluster` (3 nodes, started and
/// ready), then checks the history. Harness trouble (a node that crashed on its own, a
/// table that cannot be created) is an error; a violation is in the report.
pub async fn run(cluster: Arc<Cluster>, config: LincheckConfig) -> Result<LincheckReport> {
    config.validate()?;
    check_fault_nodes(&cluster, &config.fault_nodes)?;
    setup(&cluster, &config).await?;
    let planned = Episode::schedule(&config);
    let config = Arc::new(config);
    let workload = run_workload(&cluster, config.clone(), planned.clone()).await?;
    let mut history: Vec<Operation> = workload.histories.into_iter().flatten().collect();
    let mut timeline = workload.timeline;
    timeline.extend(heal(&cluster, "linearizability run").await?);
    history.extend(final_reads(&cluster, &config, config.clients + 1, workload.origin).await?);

    let started = Instant::now();
    let report = check(&history, &|_| Some(0), &config.check);
    let refused_note = refused_note(&history, &report, &config.check);
    Ok(LincheckReport {
        seed: config.seed,
        planned,
        timeline,
        history,
        check: report,
        refused_note,
        workload_time: workload.workload_time,
        check_time: started.elapsed(),
    })
}

/// For keys with a violation and refused writes: checks them again with the refused writes
/// counted as indeterminate, and says what that shows.
fn refused_note(
    history: &[Operation],
    report: &CheckReport,
    options: &CheckOptions,
) -> Option<String> {
    let keys: Vec<i64> = report.violations().map(|v| v.key).collect();
    let relaxed: Vec<Operation> = history
        .iter()
        .filter(|o| keys.contains(&o.key))
        .map(|o| {
            let mut o = o.clone();
            if o.outcome == Outcome::Failed && !matches!(o.call, Call::Read) {
                o.outcome = Outcome::Unknown;
            }
            o
        })
        .collect();
    if relaxed
        .iter()
        .zip(history.iter().filter(|o| keys.contains(&o.key)))
        .all(|(a, b)| a == b)
    {
        return None;
    }
    let again = check(&relaxed, &|_| Some(0), options);
    let explained: Vec<i64> = again
        .keys
        .iter()
        .filter(|k| matches!(k.verdict, super::Verdict::Linearizable))
        .map(|k| k.key)
        .collect();
    Some(if explained.is_empty() {
        "counting refused (58C00/40001) writes as indeterminate does not explain the violation"
            .to_string()
    } else {
        format!(
            "counting refused (58C00/40001) writes as indeterminate makes key(s) {explained:?} linearizable: a write reported as refused probably took effect"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_is_a_function_of_the_seed() {
        let config = LincheckConfig::new(7);
        assert_eq!(Episode::schedule(&config), Episode::schedule(&config));
        let different = (0..20)
            .map(|s| Episode::schedule(&LincheckConfig::new(s)))
            .collect::<std::collections::HashSet<_>>();
        assert!(different.len() > 15, "{different:?}");
    }

    #[test]
    fn episodes_fit_the_run_and_never_overlap() {
        for seed in 0..300 {
            for (secs, faults) in [(20, 4), (10, 10), (30, 6), (4, 3), (2, 2)] {
                let mut config = LincheckConfig::new(seed);
                config.duration = Duration::from_secs(secs);
                config.faults = faults;
                let plan = Episode::schedule(&config);
                assert!(plan.len() <= faults);
                let mut last_end = 0;
                for e in &plan {
                    assert!(e.start_ms >= last_end + QUIET_MS, "{plan:?}");
                    assert!(e.end_ms - e.start_ms >= EPISODE_MIN_MS, "{plan:?}");
                    assert!(e.end_ms - e.start_ms <= EPISODE_MAX_MS, "{plan:?}");
                    assert!(e.end_ms + QUIET_MS <= secs * 1000, "{plan:?}");
                    assert!(config.fault_nodes.contains(&e.node));
                    last_end = e.end_ms;
                }
                if secs >= 10 {
                    assert!(!plan.is_empty(), "seed {seed}: no episode in {secs}s");
                }
            }
        }
    }

    #[test]
    fn no_faults_when_asked_for_none() {
        let mut config = LincheckConfig::new(1);
        config.faults = 0;
        assert!(Episode::schedule(&config).is_empty());
    }

    #[test]
    fn errors_are_classified_conservatively() {
        assert_eq!(classify_error(Some("58C00")), Outcome::Failed);
        assert_eq!(classify_error(Some("40001")), Outcome::Failed);
        assert_eq!(classify_error(Some("40003")), Outcome::Unknown);
        assert_eq!(classify_error(Some("XX000")), Outcome::Unknown);
        assert_eq!(classify_error(None), Outcome::Unknown);
    }

    #[test]
    fn client_choices_are_a_function_of_the_seed_and_values_are_unique() {
        let config = LincheckConfig::new(3);
        let calls = |id| {
            let mut w = Worker::<LincheckConfig>::new(id, 3);
            (0..200).map(|_| w.next_call(&config)).collect::<Vec<_>>()
        };
        assert_eq!(calls(1), calls(1));
        assert_ne!(calls(1), calls(2));
        let mut written = std::collections::HashSet::new();
        for id in 1..=5 {
            for (key, call) in calls(id) {
                assert!((0..3).contains(&key));
                let v = match call {
                    Call::Write(v) | Call::Cas { new: v, .. } => v,
                    Call::Read => continue,
                };
                assert!(v != 0 && written.insert(v), "value {v} written twice");
            }
        }
        let kinds = calls(1);
        assert!(kinds.iter().any(|(_, c)| matches!(c, Call::Read)));
        assert!(kinds.iter().any(|(_, c)| matches!(c, Call::Write(_))));
        assert!(kinds.iter().any(|(_, c)| matches!(c, Call::Cas { .. })));
    }
}

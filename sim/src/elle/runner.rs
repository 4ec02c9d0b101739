//! The list-append workload: seeded clients running explicit transactions against a real ldr
//! cluster whose table ranges are Raft groups on three nodes, the lincheck nemesis (kill -9 /
//! restart, pause / resume, partition / heal), then [`check`].
//!
//! 1. **Setup**: `ALTER RANGE default CONFIGURE ZONE USING num_replicas = 3`, a fresh table
//!    `append (k INT8 PRIMARY KEY, v STRING NOT NULL)` (its rows hash into several ranges)
//!    with every key set to the empty list (retried until the new ranges elect leaseholders).
//! 2. **Clients** (`clients` tasks), each with its own pgwire connection to a node picked by
//!    its seeded generator, run transactions until the end of `duration`: `BEGIN`, one to
//!    `ops_max` micro-operations on random keys, `COMMIT`. A read is
//!    `SELECT v FROM append WHERE k = $1` (the list is the comma-separated elements); an
//!    append is `INSERT INTO append (k, v) VALUES ($1, $2) ON CONFLICT (k) DO UPDATE SET v =
//!    append.v || ',' || excluded.v`, with an element unique in the whole run (client number
//!    in the high bits, a counter in the low ones). Keys, kinds and elements come from the
//!    client's ChaCha8 generator.
//! 3. **Outcomes**: COMMIT acknowledged = ok. An error before COMMIT (the block is rolled
//!    back; nothing was sent for commit) = failed. An error at COMMIT is classified by
//!    [`classify_error`] (40001, 58C00: failed; anything else, a lost connection or no
//!    answer within `op_timeout`: indeterminate). After an error without a SQLSTATE or a
//!    timeout the client reconnects, to another node if that fails.
//! 4. **Nemesis**: [`Episode::plan`] from the seed, one episode at a time so a quorum stays
//!    up (the same schedule `ldr sim lincheck` would run for these knobs).
//! 5. **Heal and final reads**: every node back, then one read-only transaction per node
//!    reading every key, added to the history; every acknowledged append must be in them
//!    (a lost append is reported next to the anomalies).
//! 6. **Check**: [`check`] (Elle's list-append analysis).
//!
//! Same seed, same configuration: same transaction plans and fault schedule; the timing of
//! processes and the network differs run to run.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use tokio_postgres::{Client, Statement};

use super::checker::{CheckOptions, CheckReport, check};
use super::history::{Element, Key, MicroOp, Txn, TxnOutcome};
use crate::cluster::Cluster;
use crate::error::{Result, SimError};
use crate::lincheck::runner::{SETTLE_TIMEOUT, check_fault_nodes, heal};
use crate::lincheck::{Episode, FaultKind, Outcome, classify_error};
use crate::sql;
use crate::worker::{
    Answer, Worker, Workload, answer, connect, nanos_since, run_workload, setup_table,
    workload_knobs,
};

/// Knobs of one run.
#[derive(Debug, Clone)]
pub struct ElleConfig {
    pub seed: u64,
    /// How long the clients run.
    pub duration: Duration,
    pub clients: usize,
    pub keys: usize,
    /// Micro-operations per transaction, drawn uniformly from 1..=this.
    pub ops_max: usize,
    /// Share of reads among micro-operations; the rest are appends.
    pub read_percent: u8,
    /// Fault episodes to attempt (fewer when the duration has no room for them).
    pub faults: usize,
    pub fault_kinds: Vec<FaultKind>,
    /// Harness node numbers the nemesis may hit.
    pub fault_nodes: Vec<usize>,
    /// Client deadline of one statement (BEGIN, a micro-operation, COMMIT).
    pub op_timeout: Duration,
    /// Longest pause of a client between two transactions (drawn uniformly from 0..=this).
    pub think_max: Duration,
    /// The table (created by the run; must not exist).
    pub table: String,
    pub check: CheckOptions,
}

impl ElleConfig {
    /// Defaults for `seed`: 5 clients, 6 keys, up to 4 micro-operations per transaction
    /// (half reads), 20 s, 4 fault episodes of every kind on every node.
    pub fn new(seed: u64) -> ElleConfig {
        ElleConfig {
            seed,
            duration: Duration::from_secs(20),
            clients: 5,
            keys: 6,
            ops_max: 4,
            read_percent: 50,
            faults: 4,
            fault_kinds: FaultKind::ALL.to_vec(),
            fault_nodes: vec![1, 2, 3],
            op_timeout: Duration::from_secs(5),
            think_max: Duration::from_millis(5),
            table: "append".to_string(),
            check: CheckOptions::default(),
        }
    }

    /// The fault schedule of this configuration (pure).
    pub fn schedule(&self) -> Vec<Episode> {
        Episode::plan(
            self.seed,
            self.duration,
            self.faults,
            &self.fault_kinds,
            &self.fault_nodes,
        )
    }

    fn validate(&self) -> Result<()> {
        let bad = |what: &str| Err(SimError::InvalidArgument(what.to_string()));
        if self.clients == 0 || self.keys == 0 || self.ops_max == 0 {
            return bad("the anomaly check needs a client, a key and a micro-operation");
        }
        if self.clients >= 1 << 20 {
            return bad("too many clients");
        }
        if self.read_percent > 100 {
            return bad("read_percent must be at most 100");
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

/// An acknowledged append that the final reads do not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LostAppend {
    pub txn: usize,
    pub key: Key,
    pub element: Element,
}

/// Everything one run produced.
#[derive(Debug, Clone)]
pub struct ElleReport {
    pub seed: u64,
    pub planned: Vec<Episode>,
    /// The fault steps as executed (actual times, same clock as the history).
    pub timeline: Vec<String>,
    pub history: Vec<Txn>,
    pub check: CheckReport,
    /// Acknowledged appends missing from the final reads.
    pub lost: Vec<LostAppend>,
    pub workload_time: Duration,
    pub check_time: Duration,
}

impl ElleReport {
    /// No anomaly and no lost append.
    pub fn passed(&self) -> bool {
        self.check.is_valid() && self.lost.is_empty()
    }

    /// Failed and indeterminate transactions by outcome, statement and SQLSTATE (or the
    /// start of the error text when there is none), most frequent first.
    pub fn causes(&self) -> Vec<(String, usize)> {
        let mut causes: BTreeMap<String, usize> = BTreeMap::new();
        for txn in self.history.iter().filter(|t| t.outcome != TxnOutcome::Ok) {
            // Details read "<statement>: <error>".
            let (statement, error) = txn.detail.split_once(": ").unwrap_or(("", &txn.detail));
            let cause = match error.split_once("(SQLSTATE ") {
                Some((_, rest)) => format!("SQLSTATE {}", rest.get(..5).unwrap_or(rest)),
                None => error
                    .char_indices()
                    .take_while(|(i, _)| *i < 60)
                    .map(|(_, c)| c)
                    .collect(),
            };
            let key = format!("{} at {statement}: {cause}", txn.outcome.name());
            *causes.entry(key).or_insert(0) += 1;
        }
        let mut causes: Vec<(String, usize)> = causes.into_iter().collect();
        causes.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        causes
    }
}

impl fmt::Display for ElleReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = if self.passed() {
            "PASS"
        } else {
            "FAIL (anomalies)"
        };
        writeln!(
            f,
            "{verdict} seed {}: {:.1}s of workload, checked in {:.3}s",
            self.seed,
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
        let causes = self.causes();
        if !causes.is_empty() {
            let shown: Vec<String> = causes
                .iter()
                .take(6)
                .map(|(cause, n)| format!("{n} {cause}"))
                .collect();
            writeln!(f, "not committed: {}", shown.join("; "))?;
        }
        write!(f, "{}", self.check)?;
        for lost in self.lost.iter().take(10) {
            writeln!(
                f,
                "- lost append: T{} committed append({}, {}) but the final reads do not hold it\n    T{}: {}",
                lost.txn, lost.key, lost.element, lost.txn, self.history[lost.txn]
            )?;
        }
        if self.lost.len() > 10 {
            writeln!(f, "- … {} lost appends in all", self.lost.len())?;
        }
        Ok(())
    }
}

/// The SQL a client runs, prepared on its connection.
pub(crate) struct Statements {
    read: Statement,
    append: Statement,
}

impl Workload for ElleConfig {
    type Statements = Statements;
    type State = ();
    type Record = Txn;
    const SEED_SALT: u64 = 0x656c_6c65;

    workload_knobs!();

    async fn prepare(
        client: &Client,
        table: &str,
    ) -> std::result::Result<Statements, tokio_postgres::Error> {
        Ok(Statements {
            read: client
                .prepare(&format!("SELECT v FROM {table} WHERE k = $1"))
                .await?,
            append: client
                .prepare(&format!(
                    "INSERT INTO {table} (k, v) VALUES ($1, $2) ON CONFLICT (k) DO UPDATE SET v = {table}.v || ',' || excluded.v"
                ))
                .await?,
        })
    }

    async fn step(&self, worker: &mut Worker<Self>, origin: Instant) -> Txn {
        let plan = worker.next_txn(self);
        worker.run_txn(&plan, self.op_timeout, origin).await
    }
}

/// The elements of a stored list: comma-separated integers (the empty list is `''`; an
/// append to it leaves a leading comma, skipped).
fn parse_list(text: &str) -> std::result::Result<Vec<Element>, String> {
    text.split(',')
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse()
                .map_err(|_| format!("the list {text:?} holds {s:?}, not an element"))
        })
        .collect()
}

/// A planned micro-operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Planned {
    Read(Key),
    Append(Key, Element),
}

impl Worker<ElleConfig> {
    fn next_txn(&mut self, config: &ElleConfig) -> Vec<Planned> {
        let n = self.rng.random_range(1..=config.ops_max);
        (0..n)
            .map(|_| {
                let key = self.rng.random_range(0..config.keys) as Key;
                if self.rng.random_range(0..100u8) < config.read_percent {
                    Planned::Read(key)
                } else {
                    Planned::Append(key, self.unique_value())
                }
            })
            .collect()
    }

    /// Runs `plan` (see [`Worker::execute`]) and records it as a transaction of this client,
    /// times in nanoseconds since `origin`.
    async fn run_txn(&mut self, plan: &[Planned], timeout: Duration, origin: Instant) -> Txn {
        let node = self.node();
        let invoke_ns = nanos_since(origin);
        let (ops, outcome, detail) = self.execute(plan, timeout).await;
        Txn {
            client: self.id,
            ops,
            outcome,
            invoke_ns,
            complete_ns: nanos_since(origin),
            node,
            detail,
        }
    }

    /// Runs `plan` in one explicit transaction on the current connection; returns the
    /// micro-operations as recorded (reads without an answer have no elements), the
    /// outcome and the error text.
    async fn execute(
        &mut self,
        plan: &[Planned],
        timeout: Duration,
    ) -> (Vec<MicroOp>, TxnOutcome, String) {
        let mut ops: Vec<MicroOp> = plan
            .iter()
            .map(|p| match *p {
                Planned::Read(key) => MicroOp::Read {
                    key,
                    elements: None,
                },
                Planned::Append(key, element) => MicroOp::Append { key, element },
            })
            .collect();
        let Some(c) = self.connection.as_ref() else {
            return (ops, TxnOutcome::Failed, "not connected".into());
        };
        let mut failure = match answer(timeout, c.client.batch_execute("BEGIN")).await {
            Answer::Value(()) => None,
            Answer::Refused(_, e) => Some((format!("BEGIN: {e}"), false)),
            Answer::Broken(e) => Some((format!("BEGIN: {e}"), true)),
        };
        for (i, step) in plan.iter().enumerate() {
            if failure.is_some() {
                break;
            }
            match *step {
                Planned::Read(key) => {
                    match answer(timeout, c.client.query_opt(&c.statements.read, &[&key])).await {
                        Answer::Value(row) => {
                            let text: Option<String> = row.map(|r| r.get(0));
                            match parse_list(text.as_deref().unwrap_or("")) {
                                Ok(elements) => {
                                    ops[i] = MicroOp::Read {
                                        key,
                                        elements: Some(elements),
                                    };
                                }
                                Err(e) => failure = Some((e, false)),
                            }
                        }
                        Answer::Refused(_, e) => failure = Some((format!("read: {e}"), false)),
                        Answer::Broken(e) => failure = Some((format!("read: {e}"), true)),
                    }
                }
                Planned::Append(key, element) => {
                    let text = element.to_string();
                    match answer(
                        timeout,
                        c.client.execute(&c.statements.append, &[&key, &text]),
                    )
                    .await
                    {
                        Answer::Value(_) => {}
                        Answer::Refused(_, e) => failure = Some((format!("append: {e}"), false)),
                        Answer::Broken(e) => failure = Some((format!("append: {e}"), true)),
                    }
                }
            }
        }
        if let Some((detail, broken)) = failure {
            // COMMIT was never sent: nothing of the transaction can commit. Reads that did
            // answer stay recorded (the checker ignores reads of transactions that failed).
            let rolled_back = !broken
                && matches!(
                    answer(timeout, c.client.batch_execute("ROLLBACK")).await,
                    Answer::Value(())
                );
            if !rolled_back {
                self.connection = None;
            }
            return (ops, TxnOutcome::Failed, detail);
        }
        match answer(timeout, c.client.batch_execute("COMMIT")).await {
            Answer::Value(()) => (ops, TxnOutcome::Ok, String::new()),
            Answer::Refused(code, e) => {
                let outcome = match classify_error(code.as_deref()) {
                    Outcome::Failed => TxnOutcome::Failed,
                    _ => TxnOutcome::Info,
                };
                (ops, outcome, format!("COMMIT: {e}"))
            }
            Answer::Broken(e) => {
                self.connection = None;
                (ops, TxnOutcome::Info, format!("COMMIT: {e}"))
            }
        }
    }
}

/// Creates the replicated table with every key at the empty list, retrying while the new
/// ranges elect leaseholders.
async fn setup(cluster: &Cluster, config: &ElleConfig) -> Result<()> {
    setup_table(
        cluster,
        &config.table,
        "STRING NOT NULL",
        "''",
        config.keys,
        "the empty lists to be written",
    )
    .await
}

/// One read-only transaction per node reading every key after healing (retried until it
/// commits), recorded as transactions of client `reader`.
async fn final_reads(
    cluster: &Cluster,
    config: &ElleConfig,
    reader: usize,
    origin: Instant,
) -> Result<Vec<Txn>> {
    let mut txns = Vec::new();
    let plan: Vec<Planned> = (0..config.keys as Key).map(Planned::Read).collect();
    for node in cluster.node_ids() {
        let txn = sql::wait_until(
            &format!("a read of every key through node {node} after healing"),
            SETTLE_TIMEOUT,
            Duration::from_millis(200),
            || {
                let plan = plan.clone();
                async move {
                    let mut worker = Worker::<ElleConfig>::new(reader, config.seed);
                    worker.connection =
                        Some(connect::<ElleConfig>(cluster, node, &config.table).await?);
                    let txn = worker.run_txn(&plan, config.op_timeout, origin).await;
                    if txn.outcome != TxnOutcome::Ok {
                        return Err(txn.detail);
                    }
                    Ok(txn)
                }
            },
        )
        .await?;
        txns.push(txn);
    }
    Ok(txns)
}

/// Acknowledged appends of `history` that the transactions at `finals` (reads of every key
/// after everything else completed) do not hold.
pub fn lost_appends(history: &[Txn], finals: &[usize]) -> Vec<LostAppend> {
    let mut held: BTreeMap<Key, std::collections::BTreeSet<Element>> = BTreeMap::new();
    for &f in finals {
        for (key, elements) in history[f].reads() {
            held.entry(key)
                .or_default()
                .extend(elements.iter().copied());
        }
    }
    let mut lost = Vec::new();
    for (t, txn) in history.iter().enumerate() {
        if txn.outcome != TxnOutcome::Ok {
            continue;
        }
        for (key, element) in txn.appends() {
            if !held.get(&key).is_some_and(|h| h.contains(&element)) {
                lost.push(LostAppend {
                    txn: t,
                    key,
                    element,
                });
            }
        }
    }
    lost
}

/// Runs the workload and the nemesis of `config` against `cluster` (3 nodes, started and
/// ready), then checks the history. Harness trouble (a node that crashed on its own, a
/// table that cannot be created) is an error; anomalies are in the report.
pub async fn run(cluster: Arc<Cluster>, config: ElleConfig) -> Result<ElleReport> {
    config.validate()?;
    check_fault_nodes(&cluster, &config.fault_nodes)?;
    setup(&cluster, &config).await?;
    let planned = config.schedule();
    let config = Arc::new(config);
    let workload = run_workload(&cluster, config.clone(), planned.clone()).await?;
    // Client order, then each client's order: the same plan gives the same indices.
    let mut history: Vec<Txn> = workload.histories.into_iter().flatten().collect();
    let mut timeline = workload.timeline;
    let origin = workload.origin;
    timeline.extend(heal(&cluster, "list-append anomaly run").await?);
    let first_final = history.len();
    history.extend(final_reads(&cluster, &config, config.clients + 1, origin).await?);
    let finals: Vec<usize> = (first_final..history.len()).collect();

    let started = Instant::now();
    let report = check(&history, &config.check)?;
    let lost = lost_appends(&history, &finals);
    Ok(ElleReport {
        seed: config.seed,
        planned,
        timeline,
        history,
        check: report,
        lost,
        workload_time: workload.workload_time,
        check_time: started.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elle::history::list_text;

    #[test]
    fn lists_parse_from_their_stored_text() {
        assert_eq!(parse_list(""), Ok(vec![]));
        assert_eq!(parse_list(",5"), Ok(vec![5]));
        assert_eq!(parse_list(",5,6,-7"), Ok(vec![5, 6, -7]));
        assert!(parse_list(",5,x").is_err());
        assert_eq!(list_text(&parse_list("1,2").expect("parses")), "[1 2]");
    }

    #[test]
    fn transaction_plans_are_a_function_of_the_seed_and_elements_are_unique() {
        let config = ElleConfig::new(3);
        let plans = |id| {
            let mut w = Worker::<ElleConfig>::new(id, 3);
            (0..200).map(|_| w.next_txn(&config)).collect::<Vec<_>>()
        };
        assert_eq!(plans(1), plans(1));
        assert_ne!(plans(1), plans(2));
        let mut appended = std::collections::HashSet::new();
        let (mut reads, mut appends) = (0, 0);
        for id in 1..=5 {
            for plan in plans(id) {
                assert!((1..=config.ops_max).contains(&plan.len()));
                for step in plan {
                    match step {
                        Planned::Read(key) => {
                            assert!((0..6).contains(&key));
                            reads += 1;
                        }
                        Planned::Append(key, element) => {
                            assert!((0..6).contains(&key));
                            assert!(appended.insert(element), "{element} appended twice");
                            appends += 1;
                        }
                    }
                }
            }
        }
        assert!(
            reads > 100 && appends > 100,
            "{reads} reads, {appends} appends"
        );
    }

    #[test]
    fn the_schedule_is_lincheck_s_for_the_same_knobs() {
        let config = ElleConfig::new(11);
        let mut lin = crate::lincheck::LincheckConfig::new(11);
        lin.duration = config.duration;
        lin.faults = config.faults;
        assert_eq!(config.schedule(), Episode::schedule(&lin));
        assert!(!config.schedule().is_empty());
    }

    #[test]
    fn causes_group_by_outcome_statement_and_sqlstate() {
        let txn = |outcome, detail: &str| Txn {
            client: 1,
            ops: Vec::new(),
            outcome,
            invoke_ns: 0,
            complete_ns: 1,
            node: 1,
            detail: detail.to_string(),
        };
        let report = ElleReport {
            seed: 1,
            planned: Vec::new(),
            timeline: Vec::new(),
            history: vec![
                txn(TxnOutcome::Ok, ""),
                txn(
                    TxnOutcome::Failed,
                    "COMMIT: ERROR: restart transaction: x (SQLSTATE 40001)",
                ),
                txn(
                    TxnOutcome::Failed,
                    "COMMIT: ERROR: restart transaction: y (SQLSTATE 40001)",
                ),
                txn(TxnOutcome::Info, "COMMIT: connection closed"),
            ],
            check: CheckReport::default(),
            lost: Vec::new(),
            workload_time: Duration::ZERO,
            check_time: Duration::ZERO,
        };
        assert_eq!(
            report.causes(),
            vec![
                ("failed at COMMIT: SQLSTATE 40001".to_string(), 2),
                ("info at COMMIT: connection closed".to_string(), 1)
            ]
        );
    }

    #[test]
    fn acknowledged_appends_missing_from_the_final_reads_are_lost() {
        let txn = |outcome, ops| Txn {
            client: 1,
            ops,
            outcome,
            invoke_ns: 0,
            complete_ns: 1,
            node: 1,
            detail: String::new(),
        };
        let history = [
            txn(TxnOutcome::Ok, vec![MicroOp::Append { key: 1, element: 1 }]),
            txn(TxnOutcome::Ok, vec![MicroOp::Append { key: 1, element: 2 }]),
            txn(
                TxnOutcome::Info,
                vec![MicroOp::Append { key: 1, element: 3 }],
            ),
            txn(
                TxnOutcome::Ok,
                vec![MicroOp::Read {
                    key: 1,
                    elements: Some(vec![1]),
                }],
            ),
        ];
        assert_eq!(
            lost_appends(&history, &[3]),
            vec![LostAppend {
                txn: 1,
                key: 1,
                element: 2
            }]
        );
    }
}

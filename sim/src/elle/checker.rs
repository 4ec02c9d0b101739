//! The list-append anomaly checker, after Elle (Kingsbury & Alvaro, "Elle: Inferring
//! Isolation Anomalies from Experimental Observations", VLDB 2020).
//!
//! Because every element is appended at most once per key, a read of a key names the
//! transaction that wrote each version it saw, and the longest read of a key orders every
//! append it contains. From a history of transactions the checker infers:
//!
//! 1. **Per-transaction facts** (committed transactions only): a read that holds an element
//!    twice (*duplicate elements*), an element nobody appended (*unknown element*), an
//!    element appended by a transaction that certainly did not commit (*G1a*, aborted read),
//!    a read that ends at an append its writer followed with another append to the same key
//!    (*G1b*, intermediate read), and a read that does not reflect the transaction's own
//!    earlier reads and appends of the key (*internal* inconsistency).
//! 2. **Version orders**: per key, the longest committed read; every other read of the key
//!    must be a prefix of it, else the key has an *incompatible order* (reported, and the
//!    key then yields no dependency edges).
//! 3. **Dependencies** between transactions that committed or may have (ok and info; the
//!    reads of info transactions are not trusted, their appends are): `ww` (T1 appended the
//!    version right before T2's in a key's order), `wr` (T2 read a list whose last element
//!    T1 appended), `rw` (T1 read a list and T2 appended the next element in the key's
//!    order, so T1 did not see T2's append), and, with [`CheckOptions::realtime`], `realtime`
//!    (T1 committed before T2 began; the transitive reduction only).
//! 4. **Cycles**: Tarjan's strongly connected components of the dependency graph, then in
//!    each component the shortest cycle of each class (a breadth-first search over (node,
//!    edges-used) states from the component's transactions in order, at most
//!    [`CheckOptions::cycle_starts_max`] of them): *G0* (ww only), *G1c* (ww and wr, at least
//!    one wr), *G-single* (exactly one rw: read skew, and lost update shows this way) and
//!    *G2* (two or more rw: write skew and other anti-dependency cycles; serializability
//!    forbids it too). With realtime edges, cycles that need one are reported as the
//!    `-realtime` variants (a strict-serializability violation, not a serializability one).
//!
//! Every anomaly comes with an explanation naming the transactions (`T<i>` is the `i`-th
//! transaction of the history) and, for cycles, each edge with the key and elements that
//! prove it. The check is deterministic: ordered maps throughout, components and starting
//! transactions in index order.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt;

use petgraph::algo::tarjan_scc;
use petgraph::graph::{DiGraph, NodeIndex};
use serde::{Deserialize, Serialize};

use super::history::{Element, Key, MicroOp, Txn, TxnOutcome, list_text};
use crate::error::{Result, SimError};

/// Bounds and options of a check.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// Add realtime edges (T1 committed before T2 began) and report the cycles that need
    /// them (`G0-realtime` … `G2-realtime`): strict serializability instead of
    /// serializability. Off by default: ldr promises serializability.
    pub realtime: bool,
    /// Starting transactions of the shortest-cycle search per component and class.
    pub cycle_starts_max: usize,
    /// Anomalies kept per kind; the rest are only counted.
    pub anomalies_per_kind_max: usize,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            realtime: false,
            cycle_starts_max: 64,
            anomalies_per_kind_max: 8,
        }
    }
}

/// What kind of anomaly was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum AnomalyKind {
    /// A cycle of write-write dependencies (dirty write).
    G0,
    /// A committed read saw an append of a transaction that did not commit.
    G1a,
    /// A committed read saw a state in the middle of another transaction's appends.
    G1b,
    /// A cycle of write-write and write-read dependencies, at least one write-read.
    G1c,
    /// A cycle with exactly one read-write anti-dependency (read skew, lost update).
    GSingle,
    /// A cycle with two or more read-write anti-dependencies (write skew).
    G2,
    /// G0 that needs a realtime edge.
    G0Realtime,
    /// G1c that needs a realtime edge.
    G1cRealtime,
    /// G-single that needs a realtime edge.
    GSingleRealtime,
    /// G2 that needs a realtime edge.
    G2Realtime,
    /// A read holds the same element more than once.
    DuplicateElements,
    /// A read holds an element no transaction appended.
    UnknownElement,
    /// Two reads of a key are not prefixes of one another.
    IncompatibleOrder,
    /// A read does not reflect its own transaction's earlier reads and appends of the key.
    InternalInconsistency,
}

impl AnomalyKind {
    /// Elle's name of the anomaly.
    pub fn name(self) -> &'static str {
        match self {
            AnomalyKind::G0 => "G0",
            AnomalyKind::G1a => "G1a",
            AnomalyKind::G1b => "G1b",
            AnomalyKind::G1c => "G1c",
            AnomalyKind::GSingle => "G-single",
            AnomalyKind::G2 => "G2",
            AnomalyKind::G0Realtime => "G0-realtime",
            AnomalyKind::G1cRealtime => "G1c-realtime",
            AnomalyKind::GSingleRealtime => "G-single-realtime",
            AnomalyKind::G2Realtime => "G2-realtime",
            AnomalyKind::DuplicateElements => "duplicate-elements",
            AnomalyKind::UnknownElement => "unknown-element",
            AnomalyKind::IncompatibleOrder => "incompatible-order",
            AnomalyKind::InternalInconsistency => "internal",
        }
    }

    /// Whether serializability forbids it (every kind but the realtime ones).
    pub fn breaks_serializability(self) -> bool {
        !matches!(
            self,
            AnomalyKind::G0Realtime
                | AnomalyKind::G1cRealtime
                | AnomalyKind::GSingleRealtime
                | AnomalyKind::G2Realtime
        )
    }
}

impl fmt::Display for AnomalyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A dependency between two transactions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum EdgeKind {
    /// The first wrote a version the second overwrote next.
    Ww,
    /// The second read the version the first wrote.
    Wr,
    /// The first read a version the second overwrote next (anti-dependency).
    Rw,
    /// The first committed before the second began.
    Realtime,
}

impl EdgeKind {
    pub fn name(self) -> &'static str {
        match self {
            EdgeKind::Ww => "ww",
            EdgeKind::Wr => "wr",
            EdgeKind::Rw => "rw",
            EdgeKind::Realtime => "realtime",
        }
    }

    fn bit(self) -> u8 {
        match self {
            EdgeKind::Ww => 1,
            EdgeKind::Wr => 2,
            EdgeKind::Rw => 4,
            EdgeKind::Realtime => 8,
        }
    }
}

/// The evidence for one edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Why {
    /// In `key`'s order, `first` (by the edge's source) came right before `second`.
    Ww {
        key: Key,
        first: Element,
        second: Element,
    },
    /// The target read `key` and its last element was `element`, by the source.
    Wr { key: Key, element: Element },
    /// The source read `key` ending at `last` (`None`: empty) and `next`, by the target,
    /// came next in `key`'s order.
    Rw {
        key: Key,
        last: Option<Element>,
        next: Element,
    },
    /// The source completed before the target was invoked.
    Realtime,
}

/// One edge of a cycle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    pub from: usize,
    pub kind: EdgeKind,
    pub to: usize,
    pub why: Why,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (a, b) = (self.from, self.to);
        match self.why {
            Why::Ww { key, first, second } => write!(
                f,
                "T{a} < T{b} (ww): on key {key}, T{a} appended {first} and T{b} appended {second} right after it"
            ),
            Why::Wr { key, element } => write!(
                f,
                "T{a} < T{b} (wr): T{b} read key {key} and saw T{a}'s append of {element} last"
            ),
            Why::Rw { key, last, next } => {
                let seen = match last {
                    Some(e) => format!("ending at {e}"),
                    None => "as empty".to_string(),
                };
                write!(
                    f,
                    "T{a} < T{b} (rw): T{a} read key {key} {seen} and missed T{b}'s append of {next}, the next version"
                )
            }
            Why::Realtime => write!(
                f,
                "T{a} < T{b} (realtime): T{a} committed before T{b} began"
            ),
        }
    }
}

/// One anomaly: its kind, the transactions involved (indices into the history), the cycle
/// for cycle kinds, and a human-readable explanation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Anomaly {
    pub kind: AnomalyKind,
    pub txns: Vec<usize>,
    pub cycle: Vec<Step>,
    pub explanation: String,
}

impl fmt::Display for Anomaly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.explanation)
    }
}

/// Transactions of a history by outcome, and what the analysis used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnCounts {
    pub ok: usize,
    pub failed: usize,
    pub info: usize,
    /// Indeterminate transactions with an append some committed read saw (so they did
    /// commit).
    pub info_seen: usize,
    /// Micro-operations of committed transactions.
    pub reads: usize,
    pub appends: usize,
}

impl TxnCounts {
    pub fn total(&self) -> usize {
        self.ok + self.failed + self.info
    }

    pub fn merge(&mut self, other: &TxnCounts) {
        self.ok += other.ok;
        self.failed += other.failed;
        self.info += other.info;
        self.info_seen += other.info_seen;
        self.reads += other.reads;
        self.appends += other.appends;
    }
}

impl fmt::Display for TxnCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} txns: {} committed ({} reads, {} appends), {} failed, {} indeterminate ({} seen committed)",
            self.total(),
            self.ok,
            self.reads,
            self.appends,
            self.failed,
            self.info,
            self.info_seen
        )
    }
}

/// The verdict on a history.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckReport {
    pub counts: TxnCounts,
    /// Keys with at least one committed read or append.
    pub keys: usize,
    /// Dependency edges by kind (after deduplication per pair of transactions).
    pub edges: BTreeMap<EdgeKind, usize>,
    /// Strongly connected components with more than one transaction.
    pub cyclic_components: usize,
    /// The anomalies kept (at most [`CheckOptions::anomalies_per_kind_max`] per kind), in
    /// kind order.
    pub anomalies: Vec<Anomaly>,
    /// Anomalies found per kind, including those not kept.
    pub found: BTreeMap<AnomalyKind, usize>,
}

impl CheckReport {
    /// No anomaly of any kind.
    pub fn is_valid(&self) -> bool {
        self.found.is_empty()
    }

    /// No anomaly that serializability forbids (realtime ones aside).
    pub fn is_serializable(&self) -> bool {
        self.found.keys().all(|k| !k.breaks_serializability())
    }

    /// The kinds found, in order.
    pub fn kinds(&self) -> Vec<AnomalyKind> {
        self.found.keys().copied().collect()
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let edges: Vec<String> = self
            .edges
            .iter()
            .map(|(k, n)| format!("{n} {}", k.name()))
            .collect();
        writeln!(
            f,
            "{} on {} keys; edges: {}; {} cyclic component(s)",
            self.counts,
            self.keys,
            if edges.is_empty() {
                "none".to_string()
            } else {
                edges.join(", ")
            },
            self.cyclic_components
        )?;
        if self.found.is_empty() {
            return writeln!(f, "no anomaly");
        }
        let found: Vec<String> = self
            .found
            .iter()
            .map(|(k, n)| format!("{k} ×{n}"))
            .collect();
        writeln!(f, "ANOMALIES: {}", found.join(", "))?;
        for anomaly in &self.anomalies {
            writeln!(f, "- {anomaly}")?;
        }
        Ok(())
    }
}

/// Checks a list-append history for anomalies (see the module doc). Fails only when the
/// history breaks the workload's contract: an element appended twice to one key.
pub fn check(history: &[Txn], options: &CheckOptions) -> Result<CheckReport> {
    let mut analysis = Analysis::new(history, options)?;
    analysis.per_txn();
    let orders = analysis.version_orders();
    let graph = analysis.dependencies(&orders);
    analysis.cycles(&graph);
    Ok(analysis.finish())
}

/// The dependency graph: per transaction, its outgoing edges with one piece of evidence per
/// (target, kind).
struct Graph {
    out: Vec<BTreeMap<(usize, EdgeKind), Why>>,
}

impl Graph {
    fn new(n: usize) -> Graph {
        Graph {
            out: vec![BTreeMap::new(); n],
        }
    }

    fn add(&mut self, from: usize, to: usize, kind: EdgeKind, why: Why) {
        if from != to {
            self.out[from].entry((to, kind)).or_insert(why);
        }
    }
}

/// The shape of a cycle class: which edges it may use and what it must contain.
#[derive(Debug, Clone, Copy)]
struct Class {
    kind: AnomalyKind,
    /// Bits of [`EdgeKind::bit`].
    allowed: u8,
    /// Least and most rw edges (the search counts 0, 1 and "2 or more").
    rw_min: u8,
    rw_max: u8,
    needs_wr: bool,
    needs_realtime: bool,
}

const WW: u8 = 1;
const WR: u8 = 2;
const RW: u8 = 4;
const RT: u8 = 8;

const CLASSES: [Class; 8] = [
    class(AnomalyKind::G0, WW, 0, 0, false, false),
    class(AnomalyKind::G1c, WW | WR, 0, 0, true, false),
    class(AnomalyKind::GSingle, WW | WR | RW, 1, 1, false, false),
    class(AnomalyKind::G2, WW | WR | RW, 2, 2, false, false),
    class(AnomalyKind::G0Realtime, WW | RT, 0, 0, false, true),
    class(AnomalyKind::G1cRealtime, WW | WR | RT, 0, 0, true, true),
    class(
        AnomalyKind::GSingleRealtime,
        WW | WR | RW | RT,
        1,
        1,
        false,
        true,
    ),
    class(
        AnomalyKind::G2Realtime,
        WW | WR | RW | RT,
        2,
        2,
        false,
        true,
    ),
];

const fn class(
    kind: AnomalyKind,
    allowed: u8,
    rw_min: u8,
    rw_max: u8,
    needs_wr: bool,
    needs_realtime: bool,
) -> Class {
    Class {
        kind,
        allowed,
        rw_min,
        rw_max,
        needs_wr,
        needs_realtime,
    }
}

/// Search state flags: rw edges used (0, 1, 2 = two or more), a wr edge used, a realtime
/// edge used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Flags {
    rw: u8,
    wr: bool,
    rt: bool,
}

impl Flags {
    const STATES: usize = 12;

    fn index(self) -> usize {
        usize::from(self.rw) * 4 + usize::from(self.wr) * 2 + usize::from(self.rt)
    }

    fn after(self, kind: EdgeKind) -> Flags {
        let mut next = self;
        match kind {
            EdgeKind::Rw => next.rw = (next.rw + 1).min(2),
            EdgeKind::Wr => next.wr = true,
            EdgeKind::Realtime => next.rt = true,
            EdgeKind::Ww => {}
        }
        next
    }

    fn accepted_by(self, class: &Class) -> bool {
        self.rw >= class.rw_min
            && self.rw <= class.rw_max
            && (self.wr || !class.needs_wr)
            && (self.rt || !class.needs_realtime)
    }
}

/// The state of one check.
struct Analysis<'h> {
    history: &'h [Txn],
    options: &'h CheckOptions,
    /// Who appended each (key, element).
    writer: HashMap<(Key, Element), usize>,
    /// Each transaction's last append per key.
    last_append: HashMap<(usize, Key), Element>,
    report: CheckReport,
    /// Info transactions a committed read proved committed.
    info_seen: BTreeSet<usize>,
}

impl<'h> Analysis<'h> {
    fn new(history: &'h [Txn], options: &'h CheckOptions) -> Result<Analysis<'h>> {
        let mut writer = HashMap::new();
        let mut last_append = HashMap::new();
        for (t, txn) in history.iter().enumerate() {
            for (key, element) in txn.appends() {
                if let Some(other) = writer.insert((key, element), t) {
                    return Err(SimError::InvalidArgument(format!(
                        "element {element} is appended to key {key} by both T{other} and T{t}: the list-append workload must append each element once per key"
                    )));
                }
                last_append.insert((t, key), element);
            }
        }
        Ok(Analysis {
            history,
            options,
            writer,
            last_append,
            report: CheckReport::default(),
            info_seen: BTreeSet::new(),
        })
    }

    fn record(&mut self, kind: AnomalyKind, txns: Vec<usize>, cycle: Vec<Step>, text: String) {
        let count = self.report.found.entry(kind).or_insert(0);
        *count += 1;
        if *count <= self.options.anomalies_per_kind_max {
            let mut explanation = text;
            for t in &txns {
                explanation.push_str(&format!("\n    T{t}: {}", self.history[*t]));
            }
            self.report.anomalies.push(Anomaly {
                kind,
                txns,
                cycle,
                explanation,
            });
        }
    }

    /// Step 1: facts about single committed transactions and their reads.
    fn per_txn(&mut self) {
        let mut keys = BTreeSet::new();
        for (t, txn) in committed(self.history) {
            self.report.counts.reads += txn.reads().count();
            self.report.counts.appends += txn.appends().count();
            keys.extend(txn.ops.iter().map(MicroOp::key));
            self.internal(t, txn);
            for (key, elements) in txn.reads() {
                self.read_facts(t, key, elements);
            }
        }
        self.report.keys = keys.len();
    }

    /// A read must show what the transaction read before plus what it appended since; a
    /// key it only appended to must end with its appends.
    fn internal(&mut self, t: usize, txn: &Txn) {
        enum Known {
            Exact(Vec<Element>),
            Suffix(Vec<Element>),
        }
        let mut known: BTreeMap<Key, Known> = BTreeMap::new();
        for op in &txn.ops {
            match op {
                MicroOp::Append { key, element } => match known.get_mut(key) {
                    Some(Known::Exact(list) | Known::Suffix(list)) => list.push(*element),
                    None => {
                        known.insert(*key, Known::Suffix(vec![*element]));
                    }
                },
                MicroOp::Read {
                    key,
                    elements: Some(read),
                } => {
                    let expected = match known.get(key) {
                        Some(Known::Exact(list)) if read != list => {
                            Some(format!("exactly {}", list_text(list)))
                        }
                        Some(Known::Suffix(list)) if !read.ends_with(list) => {
                            Some(format!("a list ending with {}", list_text(list)))
                        }
                        _ => None,
                    };
                    if let Some(expected) = expected {
                        self.record(
                            AnomalyKind::InternalInconsistency,
                            vec![t],
                            Vec::new(),
                            format!(
                                "T{t} read key {key} = {} but its own earlier reads and appends of the key call for {expected}",
                                list_text(read)
                            ),
                        );
                        return;
                    }
                    known.insert(*key, Known::Exact(read.clone()));
                }
                MicroOp::Read { elements: None, .. } => {}
            }
        }
    }

    fn read_facts(&mut self, t: usize, key: Key, read: &[Element]) {
        let mut seen = BTreeSet::new();
        if let Some(dup) = read.iter().find(|e| !seen.insert(**e)) {
            self.record(
                AnomalyKind::DuplicateElements,
                vec![t],
                Vec::new(),
                format!(
                    "T{t} read key {key} = {}, which holds {dup} more than once",
                    list_text(read)
                ),
            );
        }
        for element in read {
            match self.writer.get(&(key, *element)).copied() {
                None => self.record(
                    AnomalyKind::UnknownElement,
                    vec![t],
                    Vec::new(),
                    format!(
                        "T{t} read key {key} = {} but no transaction appended {element}",
                        list_text(read)
                    ),
                ),
                Some(w) if self.history[w].outcome == TxnOutcome::Failed => self.record(
                    AnomalyKind::G1a,
                    vec![t, w],
                    Vec::new(),
                    format!(
                        "T{t} read key {key} = {} and saw {element}, appended by T{w}, which did not commit",
                        list_text(read)
                    ),
                ),
                Some(w) => {
                    if self.history[w].outcome == TxnOutcome::Info {
                        self.info_seen.insert(w);
                    }
                }
            }
        }
        if let Some(&last) = read.last()
            && let Some(&w) = self.writer.get(&(key, last))
            && w != t
            && let Some(&final_append) = self.last_append.get(&(w, key))
            && final_append != last
        {
            self.record(
                AnomalyKind::G1b,
                vec![t, w],
                Vec::new(),
                format!(
                    "T{t} read key {key} = {}, ending at {last}, which T{w} appended before appending {final_append} to the same key: an intermediate state of T{w}",
                    list_text(read)
                ),
            );
        }
    }

    /// Step 2: each key's longest committed read, if every other read is a prefix of it.
    fn version_orders(&mut self) -> BTreeMap<Key, Vec<Element>> {
        let mut reads: BTreeMap<Key, Vec<(usize, &'h [Element])>> = BTreeMap::new();
        for (t, txn) in committed(self.history) {
            for (key, elements) in txn.reads() {
                reads.entry(key).or_default().push((t, elements));
            }
        }
        let mut orders = BTreeMap::new();
        for (key, reads) in reads {
            let Some(&(longest_txn, longest)) = reads
                .iter()
                .reduce(|best, r| if r.1.len() > best.1.len() { r } else { best })
            else {
                continue;
            };
            if let Some(&(t, read)) = reads.iter().find(|(_, r)| !longest.starts_with(r)) {
                let conflicting = reads
                    .iter()
                    .filter(|(_, r)| !longest.starts_with(r))
                    .count();
                self.record(
                    AnomalyKind::IncompatibleOrder,
                    vec![t, longest_txn],
                    Vec::new(),
                    format!(
                        "key {key}: T{t} read {} but T{longest_txn} read {}, and neither is a prefix of the other ({conflicting} read(s) of the key disagree with the longest); the key yields no dependencies",
                        list_text(read),
                        list_text(longest)
                    ),
                );
                continue;
            }
            orders.insert(key, longest.to_vec());
        }
        orders
    }

    /// Whether `t` may be in the graph: committed or maybe committed.
    fn in_graph(&self, t: usize) -> bool {
        self.history[t].outcome != TxnOutcome::Failed
    }

    /// Step 3: ww, wr, rw (and realtime) edges.
    fn dependencies(&mut self, orders: &BTreeMap<Key, Vec<Element>>) -> Graph {
        let mut graph = Graph::new(self.history.len());
        // Each key's order restricted to appends of transactions that may have committed
        // (an aborted append is G1a already; the versions around it still order).
        let mut valid: BTreeMap<Key, Vec<(Element, usize, usize)>> = BTreeMap::new();
        for (&key, order) in orders {
            let list = valid.entry(key).or_default();
            for (position, element) in order.iter().enumerate() {
                if let Some(&w) = self.writer.get(&(key, *element))
                    && self.in_graph(w)
                {
                    list.push((*element, w, position));
                }
            }
            for pair in list.windows(2) {
                let ((first, a, _), (second, b, _)) = (pair[0], pair[1]);
                graph.add(a, b, EdgeKind::Ww, Why::Ww { key, first, second });
            }
        }
        for (t, txn) in committed(self.history) {
            for (key, read) in txn.reads() {
                let Some(list) = valid.get(&key) else {
                    continue;
                };
                if let Some(&last) = read.last()
                    && let Some(&w) = self.writer.get(&(key, last))
                    && self.in_graph(w)
                {
                    graph.add(w, t, EdgeKind::Wr, Why::Wr { key, element: last });
                }
                // The next version after the read: the first later append by another
                // transaction than the one that wrote the read's last element (a read that
                // ends inside a transaction's appends is G1b already; its own next append
                // is not another version). Positions index the full order.
                let last_writer = read
                    .last()
                    .and_then(|e| self.writer.get(&(key, *e)).copied());
                let next = list
                    .iter()
                    .find(|(_, w, position)| *position >= read.len() && Some(*w) != last_writer);
                if let Some(&(next, w, _)) = next
                    && w != t
                {
                    graph.add(
                        t,
                        w,
                        EdgeKind::Rw,
                        Why::Rw {
                            key,
                            last: read.last().copied(),
                            next,
                        },
                    );
                }
            }
        }
        if self.options.realtime {
            self.realtime_edges(&mut graph);
        }
        for out in &graph.out {
            for (_, kind) in out.keys() {
                *self.report.edges.entry(*kind).or_insert(0) += 1;
            }
        }
        graph
    }

    /// The transitive reduction of "A committed before B began": A (committed) precedes B
    /// (committed or maybe) directly iff A completed before B's invocation and after the
    /// invocation of every committed C that also completed before B's invocation.
    fn realtime_edges(&self, graph: &mut Graph) {
        let mut done: Vec<(u64, u64, usize)> = committed(self.history)
            .map(|(t, txn)| (txn.complete_ns, txn.invoke_ns, t))
            .collect();
        done.sort_unstable();
        // latest_invoke[i] = the latest invocation among done[..=i].
        let latest_invoke: Vec<u64> = done
            .iter()
            .scan(0u64, |latest, (_, invoke, _)| {
                *latest = (*latest).max(*invoke);
                Some(*latest)
            })
            .collect();
        for (b, txn) in self.history.iter().enumerate() {
            if !self.in_graph(b) {
                continue;
            }
            let before = done.partition_point(|(complete, _, _)| *complete < txn.invoke_ns);
            if before == 0 {
                continue;
            }
            let barrier = latest_invoke[before - 1];
            for &(_, _, a) in done[..before]
                .iter()
                .rev()
                .take_while(|(complete, _, _)| *complete >= barrier)
            {
                graph.add(a, b, EdgeKind::Realtime, Why::Realtime);
            }
        }
    }

    /// Step 4: components, then the shortest cycle of each class in each.
    fn cycles(&mut self, graph: &Graph) {
        let mut g: DiGraph<usize, ()> = DiGraph::with_capacity(graph.out.len(), 0);
        let nodes: Vec<NodeIndex> = (0..graph.out.len()).map(|t| g.add_node(t)).collect();
        for (from, out) in graph.out.iter().enumerate() {
            let targets: BTreeSet<usize> = out.keys().map(|(to, _)| *to).collect();
            for to in targets {
                g.add_edge(nodes[from], nodes[to], ());
            }
        }
        let mut components: Vec<Vec<usize>> = tarjan_scc(&g)
            .into_iter()
            .filter(|c| c.len() > 1)
            .map(|c| {
                let mut members: Vec<usize> = c.into_iter().map(|n| g[n]).collect();
                members.sort_unstable();
                members
            })
            .collect();
        components.sort_unstable();
        self.report.cyclic_components = components.len();
        for members in &components {
            for class in CLASSES {
                if class.needs_realtime && !self.options.realtime {
                    continue;
                }
                if let Some(cycle) = shortest_cycle(graph, members, &class, self.options) {
                    let text = explain_cycle(class.kind, &cycle);
                    let txns = cycle.iter().map(|s| s.from).collect();
                    self.record(class.kind, txns, cycle, text);
                }
            }
        }
    }

    fn finish(mut self) -> CheckReport {
        for txn in self.history {
            match txn.outcome {
                TxnOutcome::Ok => self.report.counts.ok += 1,
                TxnOutcome::Failed => self.report.counts.failed += 1,
                TxnOutcome::Info => self.report.counts.info += 1,
            }
        }
        self.report.counts.info_seen = self.info_seen.len();
        self.report.anomalies.sort_by_key(|a| a.kind);
        self.report
    }
}

/// The committed transactions of a history with their indices.
fn committed(history: &[Txn]) -> impl Iterator<Item = (usize, &Txn)> {
    history
        .iter()
        .enumerate()
        .filter(|(_, t)| t.outcome == TxnOutcome::Ok)
}

/// The shortest cycle of `class` through one of the first `cycle_starts_max` members of a
/// component (breadth first over (transaction, flags) states; the first return to the
/// start with accepted flags is the shortest through it).
fn shortest_cycle(
    graph: &Graph,
    members: &[usize],
    class: &Class,
    options: &CheckOptions,
) -> Option<Vec<Step>> {
    let local: HashMap<usize, usize> = members.iter().enumerate().map(|(i, t)| (*t, i)).collect();
    let mut best: Option<Vec<Step>> = None;
    for &start in members.iter().take(options.cycle_starts_max.max(1)) {
        let states = members.len() * Flags::STATES;
        // parent[state] = (previous state, transaction, edge kind) on the shortest path.
        let mut parent: Vec<Option<(usize, usize, EdgeKind)>> = vec![None; states];
        let mut visited = vec![false; states];
        let mut queue = VecDeque::new();
        let origin = local[&start] * Flags::STATES;
        visited[origin] = true;
        queue.push_back((start, Flags::default()));
        let mut found: Option<(usize, usize, EdgeKind)> = None;
        'search: while let Some((t, flags)) = queue.pop_front() {
            let here = local[&t] * Flags::STATES + flags.index();
            for &(to, kind) in graph.out[t].keys() {
                if kind.bit() & class.allowed == 0 {
                    continue;
                }
                let Some(&to_local) = local.get(&to) else {
                    continue;
                };
                let next = flags.after(kind);
                if next.rw > class.rw_max {
                    continue;
                }
                if to == start {
                    if next.accepted_by(class) {
                        found = Some((here, t, kind));
                        break 'search;
                    }
                    continue;
                }
                let state = to_local * Flags::STATES + next.index();
                if !visited[state] {
                    visited[state] = true;
                    parent[state] = Some((here, t, kind));
                    queue.push_back((to, next));
                }
            }
        }
        let Some((mut state, last_from, last_kind)) = found else {
            continue;
        };
        // Walk back from the closing edge to the start.
        let mut edges = vec![(last_from, last_kind, start)];
        let mut to = last_from;
        while state != origin {
            let (previous, from, kind) =
                parent[state].expect("every visited state but the origin has a parent");
            edges.push((from, kind, to));
            state = previous;
            to = from;
        }
        edges.reverse();
        let cycle: Vec<Step> = edges
            .into_iter()
            .map(|(from, kind, to)| Step {
                from,
                kind,
                to,
                why: graph.out[from][&(to, kind)],
            })
            .collect();
        if best.as_ref().is_none_or(|b| cycle.len() < b.len()) {
            let shortest_possible = cycle.len() <= 2;
            best = Some(cycle);
            if shortest_possible {
                break;
            }
        }
    }
    best
}

fn explain_cycle(kind: AnomalyKind, cycle: &[Step]) -> String {
    let what = match kind {
        AnomalyKind::G0 | AnomalyKind::G0Realtime => "a cycle of write-write dependencies",
        AnomalyKind::G1c | AnomalyKind::G1cRealtime => {
            "a cycle of write-write and write-read dependencies (circular information flow)"
        }
        AnomalyKind::GSingle | AnomalyKind::GSingleRealtime => {
            "a cycle with exactly one anti-dependency (read skew; a lost update shows this way)"
        }
        _ => "a cycle with two or more anti-dependencies (write skew)",
    };
    let mut names: Vec<String> = cycle.iter().map(|s| format!("T{}", s.from)).collect();
    if let Some(first) = cycle.first() {
        names.push(format!("T{}", first.from));
    }
    let mut text = format!("{what}: {}", names.join(" < "));
    for step in cycle {
        text.push_str(&format!("\n    {step}"));
    }
    text.push_str("\n  so each transaction must come before itself; the transactions:");
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn append(key: Key, element: Element) -> MicroOp {
        MicroOp::Append { key, element }
    }

    fn read(key: Key, elements: &[Element]) -> MicroOp {
        MicroOp::Read {
            key,
            elements: Some(elements.to_vec()),
        }
    }

    /// A transaction of `client` over [start, end] milliseconds.
    fn txn(client: usize, outcome: TxnOutcome, ops: Vec<MicroOp>, start: u64, end: u64) -> Txn {
        Txn {
            client,
            ops,
            outcome,
            invoke_ns: start * 1_000_000,
            complete_ns: end * 1_000_000,
            node: 1,
            detail: String::new(),
        }
    }

    fn ok(client: usize, ops: Vec<MicroOp>) -> Txn {
        txn(client, TxnOutcome::Ok, ops, 0, 100)
    }

    fn kinds(history: &[Txn]) -> Vec<AnomalyKind> {
        let report = check(history, &CheckOptions::default()).expect("a well-formed history");
        report.kinds()
    }

    #[test]
    fn a_serializable_history_has_no_anomaly() {
        // T0 < T1 < T2 on key 1; T2 and T3 touch disjoint keys; everything is ordered.
        let history = [
            ok(1, vec![append(1, 1), append(2, 1)]),
            ok(2, vec![read(1, &[1]), append(1, 2)]),
            ok(3, vec![read(1, &[1, 2]), read(2, &[1]), append(2, 3)]),
            ok(1, vec![append(3, 9), read(3, &[9])]),
            ok(4, vec![read(1, &[1, 2]), read(2, &[1, 3]), read(3, &[9])]),
        ];
        let report = check(&history, &CheckOptions::default()).expect("well formed");
        assert!(report.is_valid(), "{report}");
        assert_eq!(report.counts.ok, 5);
        assert_eq!(report.counts.appends, 5);
        assert_eq!(report.cyclic_components, 0);
        assert!(report.edges[&EdgeKind::Ww] >= 2, "{report}");
        assert!(report.edges[&EdgeKind::Wr] >= 2, "{report}");
    }

    #[test]
    fn indeterminate_and_failed_transactions_that_fit_are_not_flagged() {
        let history = [
            // Maybe committed, and a read shows it did.
            txn(
                1,
                TxnOutcome::Info,
                vec![append(1, 1), read(2, &[77])],
                0,
                10,
            ),
            // Maybe committed, never seen: may well not have.
            txn(2, TxnOutcome::Info, vec![append(1, 2)], 0, 10),
            // Certainly not committed and never seen.
            txn(
                3,
                TxnOutcome::Failed,
                vec![append(1, 3), append(2, 4)],
                0,
                10,
            ),
            ok(4, vec![read(1, &[1]), append(1, 5)]),
            ok(5, vec![read(1, &[1, 5]), read(2, &[])]),
        ];
        let report = check(&history, &CheckOptions::default()).expect("well formed");
        // The info transaction's read of key 2 (77, appended by nobody) is not trusted.
        assert!(report.is_valid(), "{report}");
        assert_eq!(
            (report.counts.ok, report.counts.failed, report.counts.info),
            (2, 1, 2)
        );
        assert_eq!(report.counts.info_seen, 1);
    }

    #[test]
    fn g0_write_cycle() {
        // T0 and T1 both append to keys 1 and 2, in opposite orders.
        let history = [
            ok(1, vec![append(1, 1), append(2, 1)]),
            ok(2, vec![append(1, 2), append(2, 2)]),
            ok(3, vec![read(1, &[1, 2]), read(2, &[2, 1])]),
        ];
        let report = check(&history, &CheckOptions::default()).expect("well formed");
        assert_eq!(report.kinds(), vec![AnomalyKind::G0], "{report}");
        let cycle = &report.anomalies[0].cycle;
        assert_eq!(cycle.len(), 2);
        assert!(cycle.iter().all(|s| s.kind == EdgeKind::Ww));
        let text = report.to_string();
        assert!(text.contains("T0 appended 1 and T1 appended 2"), "{text}");
    }

    #[test]
    fn g1a_aborted_read() {
        let history = [
            txn(1, TxnOutcome::Failed, vec![append(1, 1)], 0, 10),
            ok(2, vec![read(1, &[1])]),
        ];
        assert_eq!(kinds(&history), vec![AnomalyKind::G1a]);
    }

    #[test]
    fn g1b_intermediate_read() {
        let history = [
            ok(1, vec![append(1, 1), append(1, 2)]),
            ok(2, vec![read(1, &[1])]),
            ok(3, vec![read(1, &[1, 2])]),
        ];
        assert_eq!(kinds(&history), vec![AnomalyKind::G1b]);
    }

    #[test]
    fn g1c_circular_information_flow() {
        // T0 saw T1's append to key 2 and T1 saw T0's append to key 1.
        let history = [
            ok(1, vec![append(1, 1), read(2, &[2])]),
            ok(2, vec![append(2, 2), read(1, &[1])]),
        ];
        let report = check(&history, &CheckOptions::default()).expect("well formed");
        assert_eq!(report.kinds(), vec![AnomalyKind::G1c], "{report}");
        assert!(
            report.anomalies[0]
                .cycle
                .iter()
                .all(|s| s.kind == EdgeKind::Wr)
        );
    }

    #[test]
    fn lost_update_is_g_single() {
        // Both read [0] and appended; the final order keeps both appends, so one of them
        // must have come after a read that missed the other.
        let history = [
            ok(1, vec![append(1, 0)]),
            ok(2, vec![read(1, &[0]), append(1, 1)]),
            ok(3, vec![read(1, &[0]), append(1, 2)]),
            ok(4, vec![read(1, &[0, 1, 2])]),
        ];
        let report = check(&history, &CheckOptions::default()).expect("well formed");
        assert_eq!(report.kinds(), vec![AnomalyKind::GSingle], "{report}");
        let cycle = &report.anomalies[0].cycle;
        assert_eq!(
            cycle.iter().filter(|s| s.kind == EdgeKind::Rw).count(),
            1,
            "{report}"
        );
        assert_eq!(report.anomalies[0].txns.len(), 2);
    }

    #[test]
    fn read_skew_is_g_single() {
        // T2 saw T1's append to key 2 but not T1's (earlier) append to key 1.
        let history = [
            ok(1, vec![append(1, 1), append(2, 1)]),
            ok(2, vec![read(1, &[]), read(2, &[1])]),
            ok(3, vec![read(1, &[1])]),
        ];
        assert_eq!(kinds(&history), vec![AnomalyKind::GSingle]);
    }

    #[test]
    fn write_skew_is_g2() {
        // Each read the key the other appended to, empty, and appended to its own key.
        let history = [
            ok(1, vec![read(1, &[]), append(2, 1)]),
            ok(2, vec![read(2, &[]), append(1, 2)]),
            ok(3, vec![read(1, &[2]), read(2, &[1])]),
        ];
        let report = check(&history, &CheckOptions::default()).expect("well formed");
        assert_eq!(report.kinds(), vec![AnomalyKind::G2], "{report}");
        assert!(
            report.anomalies[0]
                .cycle
                .iter()
                .all(|s| s.kind == EdgeKind::Rw)
        );
    }

    #[test]
    fn duplicate_elements() {
        let history = [ok(1, vec![append(1, 1)]), ok(2, vec![read(1, &[1, 1])])];
        assert!(kinds(&history).contains(&AnomalyKind::DuplicateElements));
    }

    #[test]
    fn incompatible_orders() {
        let history = [
            ok(1, vec![append(1, 1)]),
            ok(2, vec![append(1, 2)]),
            ok(3, vec![read(1, &[1, 2])]),
            ok(4, vec![read(1, &[2, 1])]),
        ];
        assert_eq!(kinds(&history), vec![AnomalyKind::IncompatibleOrder]);
    }

    #[test]
    fn internal_inconsistency() {
        // The transaction appended 5 and then read a list without it.
        let history = [
            ok(1, vec![append(1, 1)]),
            ok(2, vec![read(1, &[1]), append(1, 5), read(1, &[1])]),
        ];
        assert_eq!(kinds(&history), vec![AnomalyKind::InternalInconsistency]);
        // A key only appended to must end with the appends.
        let history = [ok(2, vec![append(1, 5), read(1, &[])])];
        assert_eq!(kinds(&history), vec![AnomalyKind::InternalInconsistency]);
    }

    #[test]
    fn unknown_elements() {
        let history = [ok(1, vec![read(1, &[42])])];
        assert_eq!(kinds(&history), vec![AnomalyKind::UnknownElement]);
    }

    #[test]
    fn an_element_appended_twice_is_a_malformed_history() {
        let history = [ok(1, vec![append(1, 1)]), ok(2, vec![append(1, 1)])];
        let err = check(&history, &CheckOptions::default()).expect_err("malformed");
        assert!(err.to_string().contains("T0 and T1"), "{err}");
    }

    #[test]
    fn realtime_edges_only_when_asked_for() {
        // T1 began after T0 committed, yet read key 1 without T0's append: serializable
        // (T1 before T0), not strictly serializable.
        let history = [
            txn(1, TxnOutcome::Ok, vec![append(1, 1)], 0, 10),
            txn(2, TxnOutcome::Ok, vec![read(1, &[])], 20, 30),
            txn(3, TxnOutcome::Ok, vec![read(1, &[1])], 40, 50),
        ];
        assert!(kinds(&history).is_empty());
        let options = CheckOptions {
            realtime: true,
            ..CheckOptions::default()
        };
        let report = check(&history, &options).expect("well formed");
        assert_eq!(
            report.kinds(),
            vec![AnomalyKind::GSingleRealtime],
            "{report}"
        );
        assert!(report.is_serializable() && !report.is_valid());
        // The reduction: T0 < T1 < T2 needs no T0 < T2 edge.
        assert_eq!(report.edges[&EdgeKind::Realtime], 2, "{report}");
    }

    #[test]
    fn realtime_edges_never_leave_an_indeterminate_transaction() {
        // The info transaction gave up at 10 ms and committed later, after T1 read.
        let history = [
            txn(1, TxnOutcome::Info, vec![append(1, 1)], 0, 10),
            txn(2, TxnOutcome::Ok, vec![read(1, &[])], 20, 30),
            txn(3, TxnOutcome::Ok, vec![read(1, &[1])], 40, 50),
        ];
        let options = CheckOptions {
            realtime: true,
            ..CheckOptions::default()
        };
        let report = check(&history, &options).expect("well formed");
        assert!(report.is_valid(), "{report}");
    }

    #[test]
    fn the_shortest_cycle_is_reported_and_the_check_is_deterministic() {
        // A long G-single ring (T0 .. T5 by wr, closed by one rw) plus a 2-cycle.
        let mut history = Vec::new();
        for i in 0..6 {
            let mut ops = vec![append(10 + i, 1)];
            if i > 0 {
                ops.insert(0, read(10 + i - 1, &[1]));
            }
            history.push(ok(i as usize, ops));
        }
        // T5 read key 10 without T0's append: the one rw edge closing the ring.
        history[5].ops.insert(0, read(10, &[]));
        // And a lost update on key 1 between T6 and T7.
        history.push(ok(6, vec![read(1, &[]), append(1, 1)]));
        history.push(ok(7, vec![read(1, &[]), append(1, 2)]));
        history.push(ok(8, vec![read(1, &[1, 2])]));
        let a = check(&history, &CheckOptions::default()).expect("well formed");
        let b = check(&history, &CheckOptions::default()).expect("well formed");
        assert_eq!(a, b);
        assert_eq!(a.kinds(), vec![AnomalyKind::GSingle], "{a}");
        assert_eq!(a.cyclic_components, 2);
        let lengths: Vec<usize> = a.anomalies.iter().map(|x| x.cycle.len()).collect();
        assert_eq!(lengths, vec![6, 2], "{a}");
    }

    #[test]
    fn the_report_explains_each_edge() {
        let history = [
            ok(1, vec![append(1, 0)]),
            ok(2, vec![read(1, &[0]), append(1, 1)]),
            ok(3, vec![read(1, &[0]), append(1, 2)]),
            ok(4, vec![read(1, &[0, 1, 2])]),
        ];
        let text = check(&history, &CheckOptions::default())
            .expect("well formed")
            .to_string();
        assert!(text.contains("ANOMALIES: G-single ×1"), "{text}");
        assert!(
            text.contains("T2 < T1 (rw): T2 read key 1 ending at 0 and missed T1's append of 1"),
            "{text}"
        );
        assert!(
            text.contains("T1 < T2 (ww): on key 1, T1 appended 1 and T2 appended 2"),
            "{text}"
        );
        assert!(text.contains("T1: client 2 via node 1"), "{text}");
    }
}

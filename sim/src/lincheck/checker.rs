//! The linearizability checker: is there a total order of a register's operations that
//! respects real time (an operation that completed before another was invoked comes first)
//! and register semantics (a read returns the last value written)?
//!
//! Keys are independent registers, so each key is checked on its own (P-compositionality:
//! a history is linearizable iff every key's sub-history is). Per key, the search is Wing &
//! Gong's with Lowe's memoisation, as in Porcupine and Knossos:
//!
//! 1. Every operation becomes a call event (at its invocation) and, when its outcome is
//!    definite, a return event (at its completion), sorted by time in a doubly linked list
//!    (calls before returns at equal times: such operations count as concurrent).
//! 2. Walk the list from the head. At a call, try to linearize that operation now: apply it
//!    to the current state; if its result fits and the pair (set of linearized operations,
//!    new state) was never reached before, push it on a stack, lift its call and return out
//!    of the list, and start again from the head. At a return whose operation is not
//!    linearized yet, undo the last choice (pop, put its events back) and try the next call
//!    after it. A return reached with an empty stack means no linearization exists.
//! 3. Indeterminate operations have no return event (their completion is +infinity) and
//!    may be left out: the search succeeds as soon as every determinate operation is
//!    linearized.
//!
//! The cache of (linearized set, state) pairs makes the search polynomial in practice; a
//! deadline and a cache size limit bound it anyway (the verdict is then "inconclusive").
//! On a violation the checker shrinks the key's history to a small subset that is still
//! not linearizable (removing chunks, then single operations, never a write whose value a
//! remaining operation observed) and reports it with the longest linearizable prefix it
//! found and the operation it could not place.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;
use std::time::{Duration, Instant};

use super::history::{Call, Operation, Outcome, Value};

/// Bounds of a check.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// Time for the whole search over every key (keys are checked in turn).
    pub time_budget: Duration,
    /// Extra time to shrink each violation to a small explanation.
    pub shrink_budget: Duration,
    /// Memoised (linearized set, state) pairs per key before the search gives up.
    pub max_cache_entries: usize,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            time_budget: Duration::from_secs(60),
            shrink_budget: Duration::from_secs(10),
            max_cache_entries: 4_000_000,
        }
    }
}

/// Operations of one key by outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpCounts {
    pub reads: usize,
    pub writes: usize,
    pub cas_ok: usize,
    pub cas_failed: usize,
    /// Writes and compare-and-sets whose outcome is unknown (reads of unknown outcome are
    /// counted in `dropped`).
    pub indeterminate: usize,
    /// Refused operations and reads without an answer: not checked.
    pub dropped: usize,
}

impl OpCounts {
    fn add(&mut self, op: &Operation) {
        match (op.call, op.outcome) {
            (_, Outcome::Failed) | (Call::Read, Outcome::Unknown) => self.dropped += 1,
            (_, Outcome::Unknown) => self.indeterminate += 1,
            (_, Outcome::Read(_)) => self.reads += 1,
            (_, Outcome::Written) => self.writes += 1,
            (_, Outcome::CasOk) => self.cas_ok += 1,
            (_, Outcome::CasFailed) => self.cas_failed += 1,
        }
    }

    /// Operations with a definite outcome.
    pub fn determinate(&self) -> usize {
        self.reads + self.writes + self.cas_ok + self.cas_failed
    }

    pub fn total(&self) -> usize {
        self.determinate() + self.indeterminate + self.dropped
    }

    pub fn merge(&mut self, other: &OpCounts) {
        self.reads += other.reads;
        self.writes += other.writes;
        self.cas_ok += other.cas_ok;
        self.cas_failed += other.cas_failed;
        self.indeterminate += other.indeterminate;
        self.dropped += other.dropped;
    }
}

impl fmt::Display for OpCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ops: {} reads, {} writes, {} cas ok, {} cas failed, {} indeterminate, {} dropped",
            self.total(),
            self.reads,
            self.writes,
            self.cas_ok,
            self.cas_failed,
            self.indeterminate,
            self.dropped
        )
    }
}

/// Why one key's history is not linearizable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub key: i64,
    pub initial: Option<Value>,
    /// A small subset of the key's operations that has no linearization by itself, in
    /// invocation order.
    pub minimal: Vec<Operation>,
    /// Operations checked for this key (before shrinking).
    pub checked: usize,
    /// The longest linearizable prefix the search found, in linearization order.
    pub longest_prefix: Vec<Operation>,
    /// The determinate operation whose completion no linearization reached.
    pub stuck: Operation,
}

fn state_text(v: Option<Value>) -> String {
    v.map_or_else(|| "(no row)".to_string(), |v| v.to_string())
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "key {}: NOT LINEARIZABLE (initial value {})",
            self.key,
            state_text(self.initial)
        )?;
        writeln!(
            f,
            "  these {} of the key's {} checked operations have no linearization (by invocation):",
            self.minimal.len(),
            self.checked
        )?;
        for op in &self.minimal {
            writeln!(f, "    {op}")?;
        }
        let mut state = self.initial;
        for op in &self.longest_prefix {
            state = op.step(state).unwrap_or(state);
        }
        writeln!(
            f,
            "  longest linearizable prefix: {} operations, leaving value {}; its last ones:",
            self.longest_prefix.len(),
            state_text(state)
        )?;
        let skip = self.longest_prefix.len().saturating_sub(5);
        for op in &self.longest_prefix[skip..] {
            writeln!(f, "    {op}")?;
        }
        writeln!(
            f,
            "  no linearization reaches the completion of: {}",
            self.stuck
        )
    }
}

/// The verdict on one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    Violation(Box<Violation>),
    /// The search ran out of time or memory.
    Inconclusive(String),
}

/// One key's counts and verdict.
#[derive(Debug, Clone)]
pub struct KeyCheck {
    pub key: i64,
    pub counts: OpCounts,
    pub verdict: Verdict,
    pub elapsed: Duration,
}

/// The verdict on every key of a history.
#[derive(Debug, Clone, Default)]
pub struct CheckReport {
    pub keys: Vec<KeyCheck>,
}

impl CheckReport {
    pub fn violations(&self) -> impl Iterator<Item = &Violation> {
        self.keys.iter().filter_map(|k| match &k.verdict {
            Verdict::Violation(v) => Some(v.as_ref()),
            _ => None,
        })
    }

    /// Whether every key was proven linearizable.
    pub fn is_linearizable(&self) -> bool {
        self.keys
            .iter()
            .all(|k| matches!(k.verdict, Verdict::Linearizable))
    }

    pub fn inconclusive(&self) -> impl Iterator<Item = (i64, &str)> {
        self.keys.iter().filter_map(|k| match &k.verdict {
            Verdict::Inconclusive(why) => Some((k.key, why.as_str())),
            _ => None,
        })
    }

    /// Counts summed over every key.
    pub fn totals(&self) -> OpCounts {
        let mut all = OpCounts::default();
        for k in &self.keys {
            all.merge(&k.counts);
        }
        all
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for k in &self.keys {
            let verdict = match &k.verdict {
                Verdict::Linearizable => "linearizable".to_string(),
                Verdict::Violation(_) => "NOT LINEARIZABLE".to_string(),
                Verdict::Inconclusive(why) => format!("INCONCLUSIVE ({why})"),
            };
            writeln!(
                f,
                "  key {}: {verdict} in {:.1}ms; {}",
                k.key,
                k.elapsed.as_secs_f64() * 1e3,
                k.counts
            )?;
        }
        for v in self.violations() {
            write!(f, "{v}")?;
        }
        Ok(())
    }
}

/// Checks every key of `history` (any order; operations of every key mixed) against
/// register semantics, starting from `initial(key)`.
pub fn check(
    history: &[Operation],
    initial: &dyn Fn(i64) -> Option<Value>,
    options: &CheckOptions,
) -> CheckReport {
    let mut by_key: BTreeMap<i64, Vec<Operation>> = BTreeMap::new();
    for op in history {
        by_key.entry(op.key).or_default().push(op.clone());
    }
    let deadline = Instant::now() + options.time_budget;
    let mut report = CheckReport::default();
    for (key, ops) in by_key {
        let started = Instant::now();
        let mut counts = OpCounts::default();
        for op in &ops {
            counts.add(op);
        }
        let relevant: Vec<Operation> = ops.into_iter().filter(|o| o.is_relevant()).collect();
        let init = initial(key);
        let verdict = match decide(init, &relevant, deadline, options.max_cache_entries) {
            Search::Linearizable => Verdict::Linearizable,
            Search::GaveUp(why) => Verdict::Inconclusive(why),
            Search::Violation { stuck, longest } => {
                let shrink_deadline = Instant::now() + options.shrink_budget;
                let minimal = shrink(init, &relevant, shrink_deadline, options);
                Verdict::Violation(Box::new(Violation {
                    key,
                    initial: init,
                    minimal,
                    checked: relevant.len(),
                    longest_prefix: longest.iter().map(|&i| relevant[i].clone()).collect(),
                    stuck: relevant[stuck].clone(),
                }))
            }
        };
        report.keys.push(KeyCheck {
            key,
            counts,
            verdict,
            elapsed: started.elapsed(),
        });
    }
    report
}

/// The result of one search over one key's relevant operations.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Search {
    Linearizable,
    /// `stuck` and `longest` index the searched operations.
    Violation {
        stuck: usize,
        longest: Vec<usize>,
    },
    GaveUp(String),
}

const NIL: usize = usize::MAX;
const HEAD: usize = 0;
/// How often (in search steps) the deadline is looked at.
const DEADLINE_EVERY: u64 = 1024;

struct Entry {
    op: usize,
    /// For a call: its return entry, if the operation is determinate. `None` for returns.
    matching: Option<usize>,
    is_call: bool,
}

/// A doubly linked list of events with dancing-links removal: a lifted entry keeps its
/// pointers, so entries put back in reverse order of removal land where they were.
struct Events {
    entries: Vec<Entry>,
    prev: Vec<usize>,
    next: Vec<usize>,
}

impl Events {
    fn new(ops: &[Operation]) -> Events {
        // (time, 0 = call / 1 = return, op)
        let mut events: Vec<(u64, u8, usize)> = Vec::with_capacity(ops.len() * 2);
        for (i, op) in ops.iter().enumerate() {
            events.push((op.invoke_ns, 0, i));
            if op.is_determinate() {
                events.push((op.complete_ns.max(op.invoke_ns), 1, i));
            }
        }
        events.sort_unstable();
        let mut entries = vec![Entry {
            op: NIL,
            matching: None,
            is_call: false,
        }];
        let mut call_entry = vec![NIL; ops.len()];
        for &(_, kind, op) in &events {
            let index = entries.len();
            if kind == 0 {
                call_entry[op] = index;
                entries.push(Entry {
                    op,
                    matching: None,
                    is_call: true,
                });
            } else {
                entries[call_entry[op]].matching = Some(index);
                entries.push(Entry {
                    op,
                    matching: None,
                    is_call: false,
                });
            }
        }
        let n = entries.len();
        let prev = (0..n).map(|i| i.wrapping_sub(1)).collect::<Vec<_>>();
        let next = (0..n)
            .map(|i| if i + 1 < n { i + 1 } else { NIL })
            .collect::<Vec<_>>();
        Events {
            entries,
            prev,
            next,
        }
    }

    fn unlink(&mut self, e: usize) {
        let (p, n) = (self.prev[e], self.next[e]);
        self.next[p] = n;
        if n != NIL {
            self.prev[n] = p;
        }
    }

    fn relink(&mut self, e: usize) {
        let (p, n) = (self.prev[e], self.next[e]);
        self.next[p] = e;
        if n != NIL {
            self.prev[n] = e;
        }
    }

    /// Removes a call and its return.
    fn lift(&mut self, call: usize) {
        self.unlink(call);
        if let Some(ret) = self.entries[call].matching {
            self.unlink(ret);
        }
    }

    /// Undoes [`Events::lift`] (must be the most recent lift not yet undone).
    fn unlift(&mut self, call: usize) {
        if let Some(ret) = self.entries[call].matching {
            self.relink(ret);
        }
        self.relink(call);
    }
}

/// The state an indeterminate operation leaves when nobody observed its value: all such
/// values behave alike (no read returns them, no compare-and-set expects them), so the
/// search treats them as one.
const UNOBSERVED: Value = Value::MIN;

/// Indeterminate operations whose value a determinate operation observed certainly took
/// effect, before the first such observer completed: they become determinate, completing
/// then (a compare-and-set as swapped). This keeps the same linearizations when written
/// values are unique (only values written once, and not the initial one, are used) and
/// spares the search from trying them everywhere. An observer that completed before the
/// operation was even invoked leaves it alone (the search reports that violation).
fn bound_observed(initial: Option<Value>, ops: &[Operation]) -> Vec<Operation> {
    let mut writers: BTreeMap<Value, usize> = BTreeMap::new();
    for op in ops {
        if let Some(v) = op.written_value() {
            *writers.entry(v).or_default() += 1;
        }
    }
    let mut first_observed: BTreeMap<Value, u64> = BTreeMap::new();
    for op in ops.iter().filter(|o| o.is_determinate()) {
        if let Some(v) = op.observed_value() {
            let at = first_observed.entry(v).or_insert(u64::MAX);
            *at = (*at).min(op.complete_ns);
        }
    }
    ops.iter()
        .map(|o| {
            let mut o = o.clone();
            if let (Outcome::Unknown, Some(v)) = (o.outcome, o.written_value())
                && Some(v) != initial
                && writers.get(&v) == Some(&1)
                && let Some(&by) = first_observed.get(&v)
                && by >= o.invoke_ns
            {
                o.outcome = match o.call {
                    Call::Cas { .. } => Outcome::CasOk,
                    _ => Outcome::Written,
                };
                o.complete_ns = by;
            }
            o
        })
        .collect()
}

/// Decides one key: first without the indeterminate operations whose value nobody
/// observed (leaving them out is always allowed, and each one left in multiplies the
/// search), then, only if that finds no linearization, with every operation (such a write
/// can still explain a compare-and-set that failed), their values merged into
/// [`UNOBSERVED`]. Indices in the result are indices into `ops`.
fn decide(
    initial: Option<Value>,
    ops: &[Operation],
    deadline: Instant,
    max_cache_entries: usize,
) -> Search {
    let bounded = bound_observed(initial, ops);
    let ops = &bounded[..];
    // Values some operation depends on: read, expected by a compare-and-set (whatever its
    // outcome: a failed one depends on the value not being there), or initial.
    let observed: HashSet<Value> = ops
        .iter()
        .filter_map(|o| match o.call {
            Call::Cas { expected, .. } => Some(expected),
            _ => o.observed_value(),
        })
        .chain(initial)
        .collect();
    let unobserved = |o: &Operation| {
        !o.is_determinate() && o.written_value().is_some_and(|v| !observed.contains(&v))
    };
    let needed: Vec<Operation> = ops.iter().filter(|o| !unobserved(o)).cloned().collect();
    if needed.len() < ops.len() {
        match search(initial, &needed, deadline, max_cache_entries) {
            Search::Linearizable => return Search::Linearizable,
            Search::GaveUp(why) => return Search::GaveUp(why),
            Search::Violation { .. } => {}
        }
    }
    let uses_sentinel = initial == Some(UNOBSERVED)
        || ops.iter().any(|o| match o.call {
            Call::Read => o.outcome == Outcome::Read(Some(UNOBSERVED)),
            Call::Write(v) => v == UNOBSERVED,
            Call::Cas { expected, new } => expected == UNOBSERVED || new == UNOBSERVED,
        });
    if uses_sentinel {
        return search(initial, ops, deadline, max_cache_entries);
    }
    let merged: Vec<Operation> = ops
        .iter()
        .map(|o| {
            let mut o = o.clone();
            if unobserved(&o) {
                o.call = match o.call {
                    Call::Write(_) => Call::Write(UNOBSERVED),
                    Call::Cas { expected, .. } => Call::Cas {
                        expected,
                        new: UNOBSERVED,
                    },
                    Call::Read => Call::Read,
                };
            }
            o
        })
        .collect();
    search(initial, &merged, deadline, max_cache_entries)
}

/// Wing & Gong / Lowe search over one key's relevant operations (see the module doc).
///
/// The candidates of a configuration are the calls before the first return left in the
/// list. They are tried in order of their returns (the operation that must be placed
/// soonest first, so operations with long windows do not send the search on detours), then
/// the indeterminate ones, with two refinements, both sound because an indeterminate
/// operation may be left out and, having no return, is available at any point after its
/// invocation:
/// - one that would not change the state is never tried (leaving it out is the same);
/// - indeterminate operations that do the same thing (same call, which after [`decide`]
///   merged unobserved values means: every unobserved write is one class, and every
///   unobserved compare-and-set with the same expected value) are interchangeable, so a
///   configuration tries one of each class: the earliest invoked, which is available
///   wherever a later one is;
/// - one that writes an unobserved value is tried only where a failed compare-and-set
///   needs it (see below).
fn search(
    initial: Option<Value>,
    ops: &[Operation],
    deadline: Instant,
    max_cache_entries: usize,
) -> Search {
    /// A linearized candidate, and what is left to try in its configuration.
    struct Frame {
        call: usize,
        state: Option<Value>,
        untried: Vec<usize>,
        first_return: usize,
    }

    let mut events = Events::new(ops);
    let words = ops.len().div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut state = initial;
    let mut remaining = ops.iter().filter(|o| o.is_determinate()).count();
    let mut stack: Vec<Frame> = Vec::new();
    let mut cache: HashSet<(Vec<u64>, Option<Value>)> = HashSet::new();
    // The deepest point where the search got stuck: the linearized prefix, and the
    // operation whose completion it could not get past.
    let mut longest: Vec<usize> = Vec::new();
    let mut stuck: Option<usize> = None;
    let mut steps: u64 = 0;
    // The configuration's candidates, in reverse order of trial (popped from the end).
    let mut untried: Vec<usize> = Vec::new();
    let mut first_return = NIL;
    let mut fresh = true;
    loop {
        if remaining == 0 {
            return Search::Linearizable;
        }
        if fresh {
            // A new configuration: collect its candidates.
            fresh = false;
            let mut determinate: Vec<(usize, usize)> = Vec::new();
            let mut indeterminate: Vec<usize> = Vec::new();
            let mut entry = events.next[HEAD];
            while entry != NIL && events.entries[entry].is_call {
                steps += 1;
                let op = &ops[events.entries[entry].op];
                match events.entries[entry].matching {
                    Some(ret) => determinate.push((ret, entry)),
                    None => {
                        let changes = op.step(state).is_some_and(|next| next != state);
                        let same_class_first = indeterminate
                            .iter()
                            .any(|&e| ops[events.entries[e].op].call == op.call);
                        if changes && !same_class_first {
                            indeterminate.push(entry);
                        }
                    }
                }
                entry = events.next[entry];
            }
            first_return = entry;
            // A write of an unobserved value only ever helps a compare-and-set that failed
            // although the register held what it expected: the state it leaves can only be
            // overwritten or seen by failed compare-and-sets, so without such a candidate
            // right now, leaving the write out (or placing it later) is as good.
            let helps_failed_cas = determinate.iter().any(|&(_, e)| {
                let op = &ops[events.entries[e].op];
                matches!(
                    (op.call, op.outcome),
                    (Call::Cas { expected, .. }, Outcome::CasFailed) if Some(expected) == state
                )
            });
            indeterminate.retain(|&e| {
                helps_failed_cas || ops[events.entries[e].op].step(state) != Some(Some(UNOBSERVED))
            });
            determinate.sort_unstable();
            untried = indeterminate.into_iter().rev().collect();
            untried.extend(determinate.into_iter().rev().map(|(_, e)| e));
            if entry != NIL && (stuck.is_none() || stack.len() > longest.len()) {
                longest = stack.iter().map(|f| events.entries[f.call].op).collect();
                stuck = Some(events.entries[entry].op);
            }
        }
        steps += 1;
        if steps.is_multiple_of(DEADLINE_EVERY) && Instant::now() >= deadline {
            return Search::GaveUp(format!(
                "out of time after {steps} steps, {} cached states",
                cache.len()
            ));
        }
        if let Some(call) = untried.pop() {
            let op_index = events.entries[call].op;
            let Some(next_state) = ops[op_index].step(state) else {
                continue;
            };
            linearized[op_index / 64] |= 1 << (op_index % 64);
            if !cache.insert((linearized.clone(), next_state)) {
                linearized[op_index / 64] &= !(1 << (op_index % 64));
                continue;
            }
            if cache.len() > max_cache_entries {
                return Search::GaveUp(format!("more than {max_cache_entries} cached states"));
            }
            stack.push(Frame {
                call,
                state,
                untried: std::mem::take(&mut untried),
                first_return,
            });
            state = next_state;
            if ops[op_index].is_determinate() {
                remaining -= 1;
            }
            events.lift(call);
            fresh = true;
            continue;
        }
        // Nothing left to try here: undo the last choice.
        let Some(frame) = stack.pop() else {
            return Search::Violation {
                stuck: stuck.unwrap_or(0),
                longest,
            };
        };
        let op_index = events.entries[frame.call].op;
        linearized[op_index / 64] &= !(1 << (op_index % 64));
        if ops[op_index].is_determinate() {
            remaining += 1;
        }
        state = frame.state;
        events.unlift(frame.call);
        untried = frame.untried;
        first_return = frame.first_return;
    }
}

/// Shrinks a non-linearizable set of operations to a small one that is still not
/// linearizable, within `deadline`; returns it in invocation order.
fn shrink(
    initial: Option<Value>,
    ops: &[Operation],
    deadline: Instant,
    options: &CheckOptions,
) -> Vec<Operation> {
    let written_anywhere: BTreeSet<Value> = ops.iter().filter_map(|o| o.written_value()).collect();
    // Removing a write whose value a remaining operation observed would turn the story into
    // "read a value nobody wrote", which hides the real anomaly.
    let keeps_witnesses = |candidate: &[Operation]| {
        let written: BTreeSet<Value> = candidate.iter().filter_map(|o| o.written_value()).collect();
        candidate
            .iter()
            .filter_map(|o| o.observed_value())
            .all(|v| written.contains(&v) || !written_anywhere.contains(&v))
    };
    let still_violates = |candidate: &[Operation]| {
        let per_try = (Instant::now() + Duration::from_millis(500)).min(deadline);
        matches!(
            decide(initial, candidate, per_try, options.max_cache_entries),
            Search::Violation { .. }
        )
    };
    let mut current = ops.to_vec();
    let mut chunk = (current.len() / 2).max(1);
    // Halving chunks, then single operations until a pass removes nothing (a write becomes
    // removable once the reads of its value are gone).
    'outer: loop {
        let before = current.len();
        let mut start = 0;
        while start < current.len() {
            if Instant::now() >= deadline {
                break 'outer;
            }
            let end = (start + chunk).min(current.len());
            let candidate: Vec<Operation> = current[..start]
                .iter()
                .chain(&current[end..])
                .cloned()
                .collect();
            if keeps_witnesses(&candidate) && still_violates(&candidate) {
                current = candidate;
            } else {
                start = end;
            }
        }
        if chunk > 1 {
            chunk /= 2;
        } else if current.len() == before {
            break;
        }
    }
    current.sort_by_key(|o| (o.invoke_ns, o.client));
    current
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    /// A compact description of one history for failure messages.
    fn describe(ops: &[Operation]) -> String {
        ops.iter()
            .map(|o| format!("  {o} (key {})", o.key))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// A terse history builder: times in milliseconds, one key unless `on` says otherwise.
    struct H {
        ops: Vec<Operation>,
    }

    impl H {
        fn new() -> H {
            H { ops: Vec::new() }
        }

        fn push(mut self, client: usize, call: Call, outcome: Outcome, a: u64, b: u64) -> H {
            self.ops.push(Operation {
                client,
                key: 1,
                call,
                outcome,
                invoke_ns: a * MS,
                complete_ns: b * MS,
                node: 1,
                detail: if matches!(outcome, Outcome::Unknown | Outcome::Failed) {
                    "test".into()
                } else {
                    String::new()
                },
            });
            self
        }

        fn on(mut self, key: i64) -> H {
            if let Some(last) = self.ops.last_mut() {
                last.key = key;
            }
            self
        }

        fn read(self, c: usize, v: Option<Value>, a: u64, b: u64) -> H {
            self.push(c, Call::Read, Outcome::Read(v), a, b)
        }

        fn write(self, c: usize, v: Value, a: u64, b: u64) -> H {
            self.push(c, Call::Write(v), Outcome::Written, a, b)
        }

        fn write_unknown(self, c: usize, v: Value, a: u64) -> H {
            self.push(c, Call::Write(v), Outcome::Unknown, a, a + 5)
        }

        fn write_refused(self, c: usize, v: Value, a: u64, b: u64) -> H {
            self.push(c, Call::Write(v), Outcome::Failed, a, b)
        }

        fn cas(self, c: usize, expected: Value, new: Value, ok: bool, a: u64, b: u64) -> H {
            let outcome = if ok {
                Outcome::CasOk
            } else {
                Outcome::CasFailed
            };
            self.push(c, Call::Cas { expected, new }, outcome, a, b)
        }

        fn cas_unknown(self, c: usize, expected: Value, new: Value, a: u64) -> H {
            self.push(c, Call::Cas { expected, new }, Outcome::Unknown, a, a + 5)
        }

        fn check(&self) -> CheckReport {
            check(&self.ops, &|_| Some(0), &CheckOptions::default())
        }

        fn assert_linearizable(&self) {
            let report = self.check();
            assert!(
                report.is_linearizable(),
                "expected linearizable:\n{}\n{report}",
                describe(&self.ops)
            );
        }

        /// Asserts a violation on key 1 whose minimal explanation has exactly `minimal` ops
        /// (as (client, invoke ms) pairs, in invocation order).
        fn assert_violation(&self, minimal: &[(usize, u64)]) -> Violation {
            let report = self.check();
            let v = report
                .violations()
                .next()
                .unwrap_or_else(|| {
                    panic!("expected a violation:\n{}\n{report}", describe(&self.ops))
                })
                .clone();
            let got: Vec<(usize, u64)> = v
                .minimal
                .iter()
                .map(|o| (o.client, o.invoke_ns / MS))
                .collect();
            assert_eq!(got, minimal, "minimal explanation:\n{v}");
            v
        }
    }

    // ---- against a brute-force oracle ----

    /// Whether some order of some subset of `ops` (every determinate operation, any of the
    /// indeterminate ones) respects real time and register semantics: every permutation.
    fn brute_force(initial: Option<Value>, ops: &[Operation]) -> bool {
        let unknown: Vec<usize> = (0..ops.len())
            .filter(|&i| !ops[i].is_determinate())
            .collect();
        (0..1u32 << unknown.len()).any(|mask| {
            let chosen: Vec<usize> = (0..ops.len())
                .filter(|&i| match unknown.iter().position(|&u| u == i) {
                    Some(bit) => mask & (1 << bit) != 0,
                    None => true,
                })
                .collect();
            permutations(&chosen).any(|order| {
                let respects_time = order.iter().enumerate().all(|(at, &a)| {
                    order[at + 1..].iter().all(|&b| {
                        !(ops[b].is_determinate() && ops[b].complete_ns < ops[a].invoke_ns)
                    })
                });
                respects_time
                    && order
                        .iter()
                        .try_fold(initial, |state, &i| ops[i].step(state))
                        .is_some()
            })
        })
    }

    /// Every permutation of `items` (Heap's algorithm, collected: the inputs are tiny).
    fn permutations(items: &[usize]) -> impl Iterator<Item = Vec<usize>> {
        fn heap(k: usize, a: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
            if k <= 1 {
                out.push(a.clone());
                return;
            }
            for i in 0..k {
                heap(k - 1, a, out);
                let j = if k.is_multiple_of(2) { i } else { 0 };
                a.swap(j, k - 1);
            }
        }
        let mut out = Vec::new();
        heap(items.len(), &mut items.to_vec(), &mut out);
        out.into_iter()
    }

    /// A small deterministic generator (xorshift64*), so the test needs no dependencies.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) % n
        }
    }

    /// A random history of 3 clients with 2 operations each (one of them 3) over values
    /// 0..3, with random outcomes (many are not linearizable, many are).
    /// With `unique`, every write writes a fresh value and reads and compare-and-sets pick
    /// among the values written so far (as the real workload does).
    fn random_history(rng: &mut Rng, unique: bool) -> Vec<Operation> {
        let mut ops = Vec::new();
        let mut written: Vec<Value> = vec![0];
        for client in 1..=3 {
            let mut t = rng.below(4);
            for _ in 0..2 + u64::from(client == 1 && rng.below(2) == 0) {
                let a = t;
                let b = a + 1 + rng.below(6);
                t = b + rng.below(3);
                let pick = |rng: &mut Rng| {
                    if unique {
                        written[rng.below(written.len() as u64) as usize]
                    } else {
                        rng.below(3) as Value
                    }
                };
                let read = pick(rng);
                let expected = pick(rng);
                let v = if unique {
                    written.push(10 + written.len() as Value);
                    10 + written.len() as Value - 1
                } else {
                    rng.below(3) as Value
                };
                let (call, outcome) = match rng.below(6) {
                    0 | 1 => (Call::Read, Outcome::Read(Some(read))),
                    2 => (Call::Write(v), Outcome::Written),
                    3 => (Call::Write(v), Outcome::Unknown),
                    4 => {
                        let outcome = if rng.below(2) == 0 {
                            Outcome::CasOk
                        } else {
                            Outcome::CasFailed
                        };
                        (Call::Cas { expected, new: v }, outcome)
                    }
                    _ => (Call::Cas { expected, new: v }, Outcome::Unknown),
                };
                ops.push(Operation {
                    client,
                    key: 1,
                    call,
                    outcome,
                    invoke_ns: a,
                    complete_ns: b,
                    node: 1,
                    detail: String::new(),
                });
            }
        }
        ops
    }

    #[test]
    fn the_checker_agrees_with_brute_force_on_random_small_histories() {
        let seed = std::env::var("SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0x5EED_u64);
        let mut rng = Rng(seed | 1);
        let (mut yes, mut no) = (0, 0);
        for round in 0..2000 {
            let ops = random_history(&mut rng, round % 2 == 1);
            let expected = brute_force(Some(0), &ops);
            let report = check(&ops, &|_| Some(0), &CheckOptions::default());
            assert_eq!(
                report.is_linearizable(),
                expected,
                "SEED={seed} round {round}: brute force says {expected}:\n{}\n{report}",
                describe(&ops)
            );
            if expected {
                yes += 1;
            } else {
                no += 1;
                // The shrunk explanation is itself not linearizable.
                let v = report.violations().next().expect("a violation");
                assert!(!brute_force(Some(0), &v.minimal), "SEED={seed}: {v}");
            }
        }
        eprintln!("{yes} linearizable, {no} not");
        assert!(yes > 200 && no > 200, "{yes} linearizable, {no} not");
    }

    // ---- linearizable histories ----

    #[test]
    fn an_empty_history_and_sequential_ones_are_linearizable() {
        H::new().assert_linearizable();
        H::new()
            .read(1, Some(0), 0, 1)
            .write(1, 5, 2, 3)
            .read(2, Some(5), 4, 5)
            .cas(2, 5, 6, true, 6, 7)
            .cas(1, 5, 7, false, 8, 9)
            .read(1, Some(6), 10, 11)
            .assert_linearizable();
    }

    #[test]
    fn overlapping_operations_may_take_effect_in_either_order() {
        // Write 1 and write 2 overlap; the reads after both see 2, so 1 went first. A read
        // overlapping both may see the initial value, 1, or 2.
        H::new()
            .write(1, 1, 0, 10)
            .write(2, 2, 2, 12)
            .read(3, Some(1), 1, 11)
            .read(3, Some(2), 13, 14)
            .read(1, Some(2), 15, 16)
            .assert_linearizable();
        // The same with the reader seeing 2 then 1 while both writes are in flight: 2 first.
        H::new()
            .write(1, 1, 0, 10)
            .write(2, 2, 0, 10)
            .read(3, Some(2), 1, 2)
            .read(3, Some(1), 3, 4)
            .read(3, Some(1), 11, 12)
            .assert_linearizable();
    }

    #[test]
    fn a_read_concurrent_with_a_write_may_see_the_old_or_the_new_value() {
        for seen in [Some(0), Some(9)] {
            H::new()
                .write(1, 9, 0, 10)
                .read(2, seen, 5, 6)
                .read(2, Some(9), 11, 12)
                .assert_linearizable();
        }
    }

    #[test]
    fn concurrent_cas_one_wins() {
        H::new()
            .cas(1, 0, 1, true, 0, 10)
            .cas(2, 0, 2, false, 0, 10)
            .cas(3, 1, 3, true, 1, 11)
            .read(1, Some(3), 12, 13)
            .assert_linearizable();
    }

    #[test]
    fn an_indeterminate_write_may_have_happened_late() {
        // The write of 7 timed out at 5 ms; the value shows up much later: it took effect
        // after the write of 8 completed.
        H::new()
            .write_unknown(1, 7, 0)
            .write(2, 8, 10, 11)
            .read(2, Some(8), 12, 13)
            .read(3, Some(7), 100, 101)
            .read(2, Some(7), 102, 103)
            .assert_linearizable();
    }

    #[test]
    fn an_indeterminate_write_may_never_have_happened() {
        H::new()
            .write_unknown(1, 7, 0)
            .read(2, Some(0), 10, 11)
            .write(2, 8, 12, 13)
            .read(3, Some(8), 100, 101)
            .assert_linearizable();
        // Nothing after it at all.
        H::new()
            .write_unknown(1, 7, 0)
            .read(2, Some(0), 100, 101)
            .assert_linearizable();
    }

    #[test]
    fn an_indeterminate_cas_may_have_swapped_or_not() {
        // Applied: a later read sees its new value.
        H::new()
            .cas_unknown(1, 0, 4, 0)
            .read(2, Some(4), 20, 21)
            .assert_linearizable();
        // Not applied.
        H::new()
            .cas_unknown(1, 0, 4, 0)
            .read(2, Some(0), 20, 21)
            .assert_linearizable();
        // Explains a later successful cas that expected its value.
        H::new()
            .cas_unknown(1, 0, 4, 0)
            .cas(2, 4, 5, true, 20, 21)
            .read(2, Some(5), 22, 23)
            .assert_linearizable();
    }

    #[test]
    fn refused_operations_are_left_out() {
        H::new()
            .write_refused(1, 7, 0, 1)
            .read(2, Some(0), 10, 11)
            .assert_linearizable();
    }

    #[test]
    fn keys_are_independent_registers() {
        // Key 2's value never shows on key 1 and vice versa.
        let h = H::new()
            .write(1, 1, 0, 1)
            .on(1)
            .write(2, 2, 0, 1)
            .on(2)
            .read(1, Some(1), 2, 3)
            .on(1)
            .read(2, Some(2), 2, 3)
            .on(2);
        let report = h.check();
        assert!(report.is_linearizable(), "{report}");
        assert_eq!(report.keys.len(), 2);
        assert_eq!(report.totals().reads, 2);
        assert_eq!(report.totals().writes, 2);
    }

    #[test]
    fn a_long_concurrent_history_is_checked_quickly() {
        // 5 clients, 2000 operations in overlapping rounds, with indeterminate writes
        // sprinkled in: a linearizable history built from a known sequential order.
        let mut h = H::new();
        let mut value = 0;
        let mut t = 0;
        for round in 0..400u64 {
            // Every op of a round overlaps every other op of the round. Linearization order
            // inside the round: write (client 1), cas (client 2), reads (3, 4), failed cas (5).
            let next = value + 1;
            if round % 25 == 7 {
                // The write is indeterminate and did not happen; the cas then expects the
                // old value.
                h = h.write_unknown(1, 1_000_000 + round as i64, t);
            } else {
                h = h.write(1, next, t, t + 10);
                value = next;
            }
            let swapped = value + 1_000;
            h = h
                .cas(2, value, swapped, true, t + 1, t + 9)
                .read(3, Some(swapped), t + 2, t + 8)
                .read(4, Some(swapped), t + 2, t + 8)
                .cas(5, value, 42, false, t + 3, t + 7);
            value = swapped;
            t += 11;
        }
        let started = Instant::now();
        h.assert_linearizable();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "took {:?}",
            started.elapsed()
        );
    }

    #[test]
    fn many_late_indeterminate_writes_are_checked_quickly() {
        // What a paused leaseholder produces: every round, three writes time out and take
        // effect later, out of order; one is never read but explains a failed
        // compare-and-set, the other two are read. 300 indeterminate writes in all.
        let mut h = H::new();
        let mut previous = 0;
        for round in 0..100u64 {
            let t = round * 20;
            let (a, b, c) = (
                1000 + 3 * round as Value,
                1001 + 3 * round as Value,
                1002 + 3 * round as Value,
            );
            h = h
                .write_unknown(1, a, t)
                .write_unknown(2, b, t + 1)
                .write_unknown(3, c, t + 2)
                // c took effect (unobserved): the register no longer holds `previous`.
                .cas(4, previous, 1, false, t + 11, t + 12)
                // then b, then a.
                .read(5, Some(b), t + 14, t + 15)
                .read(4, Some(a), t + 17, t + 18);
            previous = a;
        }
        let started = Instant::now();
        h.assert_linearizable();
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "took {:?}",
            started.elapsed()
        );
        assert_eq!(h.check().totals().indeterminate, 300);
    }

    // ---- non-linearizable histories ----

    #[test]
    fn a_stale_read_after_a_completed_write_is_a_violation() {
        let v = H::new()
            .read(3, Some(0), 0, 1)
            .write(1, 5, 2, 3)
            .read(2, Some(5), 4, 5)
            .read(2, Some(0), 6, 7)
            .read(3, Some(5), 8, 9)
            .assert_violation(&[(1, 2), (2, 6)]);
        assert_eq!(v.stuck.invoke_ns, 6 * MS, "{v}");
        let text = v.to_string();
        assert!(text.contains("key 1: NOT LINEARIZABLE"), "{text}");
        assert!(text.contains("read -> 0"), "{text}");
    }

    #[test]
    fn a_read_going_back_in_time_between_two_clients_is_a_violation() {
        // Both writes completed; client 3 sees 2 then client 4, strictly later, sees 1.
        H::new()
            .write(1, 1, 0, 2)
            .write(2, 2, 1, 3)
            .read(3, Some(2), 4, 5)
            .read(4, Some(1), 6, 7)
            .assert_violation(&[(1, 0), (2, 1), (3, 4), (4, 6)]);
    }

    #[test]
    fn a_lost_cas_is_a_violation() {
        // Two compare-and-sets from 0 both report success: one of them was lost.
        H::new()
            .cas(1, 0, 1, true, 0, 10)
            .cas(2, 0, 2, true, 1, 11)
            .read(3, Some(2), 20, 21)
            .assert_violation(&[(1, 0), (2, 1)]);
        // A cas that reports success but whose value never shows up.
        H::new()
            .write(1, 3, 0, 1)
            .cas(2, 3, 4, true, 2, 3)
            .read(3, Some(3), 4, 5)
            .assert_violation(&[(1, 0), (2, 2), (3, 4)]);
    }

    #[test]
    fn a_failed_cas_that_should_have_succeeded_is_a_violation() {
        H::new()
            .write(1, 3, 0, 1)
            .cas(2, 3, 4, false, 2, 3)
            .assert_violation(&[(1, 0), (2, 2)]);
    }

    #[test]
    fn a_read_of_a_value_never_written_is_a_violation() {
        let v = H::new()
            .write(1, 1, 0, 1)
            .read(2, Some(1), 2, 3)
            .read(2, Some(99), 4, 5)
            .assert_violation(&[(2, 4)]);
        assert!(v.to_string().contains("read -> 99"), "{v}");
        // A refused write's value must not show up either.
        H::new()
            .write_refused(1, 7, 0, 1)
            .read(2, Some(7), 10, 11)
            .assert_violation(&[(2, 10)]);
        // Nor an absent row when the key exists.
        H::new().read(2, None, 0, 1).assert_violation(&[(2, 0)]);
    }

    #[test]
    fn an_indeterminate_write_cannot_take_effect_before_it_was_invoked() {
        H::new()
            .read(2, Some(7), 0, 1)
            .write_unknown(1, 7, 2)
            .assert_violation(&[(2, 0), (1, 2)]);
    }

    #[test]
    fn an_indeterminate_write_takes_effect_once() {
        // 7 appeared, was overwritten by 8 (completed after 7 was seen), then appears again.
        H::new()
            .write_unknown(1, 7, 0)
            .read(2, Some(7), 10, 11)
            .write(3, 8, 12, 13)
            .read(2, Some(8), 14, 15)
            .read(2, Some(7), 16, 17)
            .assert_violation(&[(1, 0), (2, 10), (3, 12), (2, 16)]);
    }

    #[test]
    fn a_violation_on_one_key_is_reported_for_that_key_only() {
        let h = H::new()
            .write(1, 1, 0, 1)
            .on(2)
            .read(2, Some(0), 2, 3)
            .on(2)
            .write(1, 5, 0, 1)
            .read(2, Some(5), 2, 3);
        let report = h.check();
        let keys: Vec<i64> = report.violations().map(|v| v.key).collect();
        assert_eq!(keys, vec![2], "{report}");
        assert!(!report.is_linearizable());
    }

    #[test]
    fn the_violation_is_found_in_a_long_history_and_shrunk() {
        // 300 correct sequential rounds, then a stale read, then 100 more rounds.
        let mut h = H::new();
        let mut t = 0;
        for i in 1..=300 {
            h = h.write(1, i, t, t + 1).read(2, Some(i), t + 2, t + 3);
            t += 4;
        }
        h = h.read(3, Some(299), t, t + 1);
        let stale_at = t;
        t += 2;
        for i in 301..=400 {
            h = h.write(1, i, t, t + 1).read(2, Some(i), t + 2, t + 3);
            t += 4;
        }
        // Minimal: the write of 299, the write of 300 (completed before the stale read), and
        // the stale read itself.
        h.assert_violation(&[(1, 4 * 298), (1, 4 * 299), (3, stale_at)]);
    }

    #[test]
    fn a_search_out_of_time_is_inconclusive_not_a_pass() {
        // A long linearizable history needs more than the first batch of search steps.
        let mut h = H::new();
        for i in 1..=2000 {
            let t = 3 * i as u64;
            h = h.write(1, i, t, t + 1).read(2, Some(i), t + 1, t + 2);
        }
        assert!(h.check().is_linearizable());
        let report = check(
            &h.ops,
            &|_| Some(0),
            &CheckOptions {
                time_budget: Duration::ZERO,
                ..CheckOptions::default()
            },
        );
        assert!(!report.is_linearizable());
        assert_eq!(report.violations().count(), 0, "{report}");
        assert_eq!(report.inconclusive().count(), 1, "{report}");
    }
}

//! The LWW oracle: given every write to a table (from every cluster), each key must end in
//! the state of its winning write — the greatest `(timestamp, origin id)`, deletes included —
//! on every cluster.
//!
//! Inputs are the workloads' [`WriteRecord`]s: acknowledged writes carry their commit
//! timestamp (`RETURNING crdb_internal_mvcc_timestamp`); ambiguous writes (the connection
//! failed before an answer) have none and may or may not have happened, so their states are
//! also accepted. Origin ids are the clusters' LWW identities (ldr's
//! `crdb_internal.cluster_origin_id()`, the larger wins an exact timestamp tie), given per
//! origin label; when they are not known ([`LwwOracle::with_unknown_origin_ids`]), an exact tie
//! between origins accepts either write. The table must start empty, or its initial rows must
//! be given as writes too.
//!
//! On mismatch the report lists, for each wrong key (at most [`REPORTED_KEYS_MAX`]), what was
//! expected, what each cluster has, and that key's full write history: the minimal history
//! that explains the failure.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use ldr_types::Timestamp;

use crate::error::{Result, SimError};
use crate::workload::{WriteRecord, WriteStatus};

/// Keys described in detail in a failure report.
pub const REPORTED_KEYS_MAX: usize = 20;

/// A key's state: `None` = absent (never written or deleted).
pub type KeyState = Option<String>;

/// What the oracle allows for one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expectation {
    /// The winning acknowledged write's state (absent if there is none).
    pub winner: KeyState,
    /// The winner's `(timestamp, origin id)`, if any (origin id 0 when ids are unknown).
    pub winner_at: Option<(Timestamp, u32)>,
    /// Every state that is acceptable (the winner's plus those of ambiguous writes and of
    /// writes tied with the winner that the oracle cannot order).
    pub allowed: BTreeSet<KeyState>,
    /// The greatest timestamp was written by more than one origin and the origin ids are not
    /// known, so either tied write is accepted.
    pub unresolved_tie: bool,
}

/// A wrong key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub key: i64,
    pub expected: Expectation,
    /// `(cluster label, actual state)`.
    pub actual: Vec<(String, KeyState)>,
}

/// The oracle's verdict over one or more clusters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LwwReport {
    pub keys_checked: usize,
    pub writes: usize,
    pub mismatches: Vec<Mismatch>,
    /// The full report text (empty when everything matched).
    pub text: String,
}

impl LwwReport {
    pub fn holds(&self) -> bool {
        self.mismatches.is_empty()
    }
}

/// Collects writes and judges final states.
#[derive(Debug, Clone, Default)]
pub struct LwwOracle {
    origin_ids: BTreeMap<String, u32>,
    /// False: `origin_ids` only names the labels; exact ties between origins are unresolved.
    ids_known: bool,
    by_key: BTreeMap<i64, Vec<WriteRecord>>,
    writes: usize,
}

impl LwwOracle {
    /// `origin_ids`: the LWW origin id of each origin label used in the records.
    pub fn new(origin_ids: impl IntoIterator<Item = (String, u32)>) -> LwwOracle {
        LwwOracle {
            origin_ids: origin_ids.into_iter().collect(),
            ids_known: true,
            by_key: BTreeMap::new(),
            writes: 0,
        }
    }

    /// An oracle for origins whose LWW ids are not known: an exact timestamp tie between
    /// two origins then accepts either write (each is reported as an unresolved tie).
    pub fn with_unknown_origin_ids(labels: impl IntoIterator<Item = String>) -> LwwOracle {
        LwwOracle {
            origin_ids: labels.into_iter().map(|l| (l, 0)).collect(),
            ids_known: false,
            by_key: BTreeMap::new(),
            writes: 0,
        }
    }

    /// Whether exact ties between origins are decided by origin id.
    pub fn origin_ids_known(&self) -> bool {
        self.ids_known
    }

    /// Adds writes. Acknowledged writes need a timestamp and a known origin.
    pub fn add(&mut self, records: impl IntoIterator<Item = WriteRecord>) -> Result<()> {
        for record in records {
            if !self.origin_ids.contains_key(&record.origin) {
                return Err(SimError::InvalidArgument(format!(
                    "write to key {} from unknown origin {:?} (known: {:?})",
                    record.key,
                    record.origin,
                    self.origin_ids.keys()
                )));
            }
            if record.status == WriteStatus::Acknowledged && record.timestamp.is_none() {
                return Err(SimError::InvalidArgument(format!(
                    "acknowledged write to key {} from {} has no commit timestamp; record with mvcc_timestamp on",
                    record.key, record.origin
                )));
            }
            self.writes += 1;
            self.by_key.entry(record.key).or_default().push(record);
        }
        Ok(())
    }

    fn origin_id(&self, record: &WriteRecord) -> u32 {
        self.origin_ids.get(&record.origin).copied().unwrap_or(0)
    }

    /// What key `key` may be in.
    pub fn expectation(&self, key: i64) -> Expectation {
        let writes = self.by_key.get(&key).map(Vec::as_slice).unwrap_or_default();
        let rank = |w: &WriteRecord| (w.timestamp.unwrap_or_default(), self.origin_id(w));
        let mut winner: Option<&WriteRecord> = None;
        let mut tied: Vec<&WriteRecord> = Vec::new();
        let mut unresolved_tie = false;
        for w in writes
            .iter()
            .filter(|w| w.status == WriteStatus::Acknowledged)
        {
            let Some(best) = winner else {
                winner = Some(w);
                continue;
            };
            if rank(w) > rank(best) {
                winner = Some(w);
                tied.clear();
                unresolved_tie = false;
            } else if rank(w) == rank(best) && w.value != best.value {
                // Same timestamp and origin id: ldr breaks this by value bytes (same origin),
                // or by origin id, which we do not know (different origins); accept either.
                tied.push(w);
                unresolved_tie |= w.origin != best.origin;
            }
        }
        let winner_state = winner.and_then(|w| w.value.clone());
        let mut allowed = BTreeSet::from([winner_state.clone()]);
        allowed.extend(tied.iter().map(|w| w.value.clone()));
        allowed.extend(
            writes
                .iter()
                .filter(|w| w.status == WriteStatus::Ambiguous)
                .map(|w| w.value.clone()),
        );
        Expectation {
            winner: winner_state,
            winner_at: winner.map(rank),
            allowed,
            unresolved_tie,
        }
    }

    /// Keys whose expectation holds an exact cross-origin tie the oracle could not order.
    pub fn unresolved_ties(&self) -> Vec<i64> {
        self.by_key
            .keys()
            .copied()
            .filter(|k| self.expectation(*k).unresolved_tie)
            .collect()
    }

    /// Judges each cluster's table contents (`(label, key -> value)`).
    pub fn check(&self, clusters: &[(&str, &BTreeMap<i64, String>)]) -> LwwReport {
        let mut keys: BTreeSet<i64> = self.by_key.keys().copied().collect();
        for (_, table) in clusters {
            keys.extend(table.keys().copied());
        }
        let mut mismatches = Vec::new();
        for &key in &keys {
            let expected = self.expectation(key);
            let actual: Vec<(String, KeyState)> = clusters
                .iter()
                .map(|(label, table)| (label.to_string(), table.get(&key).cloned()))
                .collect();
            if actual
                .iter()
                .any(|(_, state)| !expected.allowed.contains(state))
            {
                mismatches.push(Mismatch {
                    key,
                    expected,
                    actual,
                });
            }
        }
        let text = if mismatches.is_empty() {
            String::new()
        } else {
            self.render(&mismatches, keys.len())
        };
        LwwReport {
            keys_checked: keys.len(),
            writes: self.writes,
            mismatches,
            text,
        }
    }

    /// [`LwwOracle::check`], as an error carrying the report when any key is wrong.
    pub fn verify(&self, clusters: &[(&str, &BTreeMap<i64, String>)]) -> Result<LwwReport> {
        let report = self.check(clusters);
        if report.holds() {
            Ok(report)
        } else {
            Err(SimError::Invariant(report.text))
        }
    }

    fn render(&self, mismatches: &[Mismatch], keys: usize) -> String {
        let mut out = format!(
            "LWW oracle: {} of {keys} keys are wrong ({} writes recorded)\n",
            mismatches.len(),
            self.writes
        );
        for m in mismatches.iter().take(REPORTED_KEYS_MAX) {
            self.describe(&mut out, m.key, &m.expected, &m.actual);
        }
        if mismatches.len() > REPORTED_KEYS_MAX {
            let _ = writeln!(
                out,
                "… and {} more keys",
                mismatches.len() - REPORTED_KEYS_MAX
            );
        }
        out
    }

    /// For each of `keys` (at most [`REPORTED_KEYS_MAX`]): what the oracle expects, what each
    /// cluster has, and the key's write history — e.g. for the keys on which two clusters
    /// differ.
    pub fn describe_keys(
        &self,
        keys: &[i64],
        clusters: &[(&str, &BTreeMap<i64, String>)],
    ) -> String {
        let mut out = String::new();
        for &key in keys.iter().take(REPORTED_KEYS_MAX) {
            let actual: Vec<(String, KeyState)> = clusters
                .iter()
                .map(|(label, table)| (label.to_string(), table.get(&key).cloned()))
                .collect();
            self.describe(&mut out, key, &self.expectation(key), &actual);
        }
        if keys.len() > REPORTED_KEYS_MAX {
            let _ = writeln!(out, "… and {} more keys", keys.len() - REPORTED_KEYS_MAX);
        }
        out
    }

    fn describe(
        &self,
        out: &mut String,
        key: i64,
        expected: &Expectation,
        actual: &[(String, KeyState)],
    ) {
        let _ = write!(out, "key {key}: expected {}", show(&expected.winner));
        if let Some((ts, origin)) = expected.winner_at {
            if self.ids_known {
                let _ = write!(out, " (write at {ts}, origin id {origin})");
            } else {
                let _ = write!(out, " (write at {ts})");
            }
        }
        if expected.allowed.len() > 1 {
            let others: Vec<String> = expected
                .allowed
                .iter()
                .filter(|s| **s != expected.winner)
                .map(show)
                .collect();
            let _ = write!(
                out,
                ", or from an ambiguous/tied write: {}",
                others.join(", ")
            );
        }
        if expected.unresolved_tie {
            out.push_str(" [exact timestamp tie between origins, origin ids unknown]");
        }
        out.push('\n');
        for (label, state) in actual {
            let mark = if expected.allowed.contains(state) {
                "ok "
            } else {
                "BAD"
            };
            let _ = writeln!(out, "    {mark} {label}: {}", show(state));
        }
        out.push_str("    history (by timestamp):\n");
        let mut history: Vec<&WriteRecord> = self
            .by_key
            .get(&key)
            .map(|v| v.iter().collect())
            .unwrap_or_default();
        history.sort_by_key(|w| {
            (
                w.timestamp.is_none(),
                w.timestamp,
                self.origin_id(w),
                w.sent_ns,
            )
        });
        if history.is_empty() {
            out.push_str("      (no writes recorded)\n");
        }
        for w in history {
            let ts = w
                .timestamp
                .map(|t| t.to_string())
                .unwrap_or_else(|| "unknown".into());
            let op = match &w.value {
                Some(v) => format!("upsert {}", show(&Some(v.clone()))),
                None => "delete".to_string(),
            };
            let origin = if self.ids_known {
                format!("origin {} (id {})", w.origin, self.origin_id(w))
            } else {
                format!("origin {}", w.origin)
            };
            let _ = writeln!(
                out,
                "      ts {ts} {origin} {op} [{:?}, worker {} #{}, sent at {:.3}s, answered at {:.3}s]",
                w.status,
                w.worker,
                w.seq,
                w.sent_ns as f64 / 1e9,
                w.answered_ns as f64 / 1e9
            );
        }
    }
}

fn show(state: &KeyState) -> String {
    match state {
        None => "absent".to_string(),
        Some(v) if v.chars().count() > 16 => {
            format!("{:?}…", v.chars().take(16).collect::<String>())
        }
        Some(v) => format!("{v:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(origin: &str, key: i64, value: Option<&str>, wall: u64, logical: u32) -> WriteRecord {
        WriteRecord {
            origin: origin.into(),
            key,
            value: value.map(str::to_string),
            timestamp: Some(Timestamp::new(wall, logical)),
            status: WriteStatus::Acknowledged,
            worker: 0,
            seq: 0,
            sent_ns: wall,
            answered_ns: wall,
        }
    }

    fn oracle() -> LwwOracle {
        LwwOracle::new([("a".to_string(), 10), ("b".to_string(), 20)])
    }

    fn table(entries: &[(i64, &str)]) -> BTreeMap<i64, String> {
        entries.iter().map(|(k, v)| (*k, v.to_string())).collect()
    }

    #[test]
    fn greatest_timestamp_wins_regardless_of_arrival() {
        let mut o = oracle();
        o.add([
            write("b", 1, Some("late-b"), 200, 0),
            write("a", 1, Some("early-a"), 100, 5),
        ])
        .expect("add");
        assert_eq!(o.expectation(1).winner, Some("late-b".into()));
        assert!(
            o.check(&[
                ("A", &table(&[(1, "late-b")])),
                ("B", &table(&[(1, "late-b")]))
            ])
            .holds()
        );
        let report = o.check(&[
            ("A", &table(&[(1, "early-a")])),
            ("B", &table(&[(1, "late-b")])),
        ]);
        assert!(!report.holds());
        assert!(
            report.text.contains("key 1: expected \"late-b\""),
            "{}",
            report.text
        );
        assert!(
            report.text.contains("BAD A: \"early-a\""),
            "{}",
            report.text
        );
        assert!(report.text.contains("ok  B: \"late-b\""), "{}", report.text);
    }

    #[test]
    fn logical_part_orders_equal_walls() {
        let mut o = oracle();
        o.add([
            write("a", 1, Some("x"), 100, 2),
            write("b", 1, Some("y"), 100, 1),
        ])
        .expect("add");
        assert_eq!(o.expectation(1).winner, Some("x".into()));
    }

    #[test]
    fn ties_go_to_the_larger_origin_id() {
        let mut o = oracle();
        o.add([
            write("b", 1, Some("from-b"), 100, 0),
            write("a", 1, Some("from-a"), 100, 0),
        ])
        .expect("add");
        assert_eq!(o.expectation(1).winner, Some("from-b".into()));
        let mut reversed = LwwOracle::new([("a".to_string(), 30), ("b".to_string(), 20)]);
        reversed
            .add([
                write("b", 1, Some("from-b"), 100, 0),
                write("a", 1, Some("from-a"), 100, 0),
            ])
            .expect("add");
        assert_eq!(reversed.expectation(1).winner, Some("from-a".into()));
    }

    #[test]
    fn unknown_origin_ids_accept_either_side_of_an_exact_tie() {
        let mut o = LwwOracle::with_unknown_origin_ids(["a".to_string(), "b".to_string()]);
        assert!(!o.origin_ids_known());
        o.add([
            write("b", 1, Some("from-b"), 100, 0),
            write("a", 1, Some("from-a"), 100, 0),
            write("a", 2, Some("old"), 50, 0),
            write("b", 2, Some("new"), 60, 0),
        ])
        .expect("add");
        let tie = o.expectation(1);
        assert!(tie.unresolved_tie);
        assert_eq!(
            tie.allowed,
            BTreeSet::from([Some("from-a".to_string()), Some("from-b".to_string())])
        );
        assert!(!o.expectation(2).unresolved_tie, "no tie on key 2");
        assert_eq!(o.unresolved_ties(), vec![1]);
        assert!(
            o.check(&[("A", &table(&[(1, "from-a"), (2, "new")]))])
                .holds()
        );
        assert!(
            o.check(&[("A", &table(&[(1, "from-b"), (2, "new")]))])
                .holds()
        );
        let bad = o.check(&[("A", &table(&[(1, "from-b"), (2, "old")]))]);
        assert_eq!(bad.mismatches.len(), 1);
        assert!(
            bad.text
                .contains("key 2: expected \"new\" (write at 60.0000000000)"),
            "{}",
            bad.text
        );
        // A later write resolves the tie.
        o.add([write("a", 1, Some("later"), 101, 0)]).expect("add");
        assert!(!o.expectation(1).unresolved_tie);
        assert_eq!(o.expectation(1).allowed.len(), 1);
    }

    #[test]
    fn described_keys_show_expectation_states_and_history() {
        let mut o = oracle();
        o.add([
            write("a", 4, Some("x"), 100, 0),
            write("b", 4, None, 200, 0),
        ])
        .expect("add");
        let text = o.describe_keys(&[4], &[("A", &table(&[(4, "x")])), ("B", &table(&[]))]);
        assert!(
            text.contains("key 4: expected absent (write at 200.0000000000, origin id 20)"),
            "{text}"
        );
        assert!(text.contains("BAD A: \"x\""), "{text}");
        assert!(text.contains("ok  B: absent"), "{text}");
        let upsert = text.find("upsert \"x\"").expect("upsert in history");
        let delete = text
            .find("origin b (id 20) delete")
            .expect("delete in history");
        assert!(upsert < delete, "{text}");
    }

    #[test]
    fn deletes_win_and_lose_like_writes() {
        let mut o = oracle();
        o.add([
            write("a", 1, Some("v"), 100, 0),
            write("b", 1, None, 150, 0),
            write("a", 2, None, 100, 0),
            write("b", 2, Some("newer"), 150, 0),
        ])
        .expect("add");
        assert_eq!(o.expectation(1).winner, None);
        assert_eq!(o.expectation(2).winner, Some("newer".into()));
        assert!(o.verify(&[("A", &table(&[(2, "newer")]))]).is_ok());
        // A resurrected row is caught.
        let err = o
            .verify(&[("A", &table(&[(1, "v"), (2, "newer")]))])
            .expect_err("key 1 must be absent");
        assert!(err.to_string().contains("key 1: expected absent"), "{err}");
    }

    #[test]
    fn unwritten_keys_must_be_absent_and_ambiguous_writes_are_tolerated() {
        let mut o = oracle();
        let mut ambiguous = write("a", 3, Some("maybe"), 0, 0);
        ambiguous.timestamp = None;
        ambiguous.status = WriteStatus::Ambiguous;
        o.add([write("a", 3, Some("sure"), 100, 0), ambiguous])
            .expect("add");
        assert!(o.check(&[("A", &table(&[(3, "maybe")]))]).holds());
        assert!(o.check(&[("A", &table(&[(3, "sure")]))]).holds());
        assert!(!o.check(&[("A", &table(&[(3, "other")]))]).holds());
        let stray = o.check(&[("A", &table(&[(3, "sure"), (9, "ghost")]))]);
        assert_eq!(stray.mismatches.len(), 1);
        assert!(
            stray.text.contains("(no writes recorded)"),
            "{}",
            stray.text
        );
    }

    #[test]
    fn bad_inputs_are_rejected() {
        let mut o = oracle();
        assert!(o.add([write("zzz", 1, Some("v"), 1, 0)]).is_err());
        let mut untimed = write("a", 1, Some("v"), 1, 0);
        untimed.timestamp = None;
        assert!(o.add([untimed]).is_err());
    }

    #[test]
    fn report_history_is_ordered_by_timestamp() {
        let mut o = oracle();
        o.add([
            write("b", 7, Some("second"), 300, 0),
            write("a", 7, Some("first"), 200, 0),
        ])
        .expect("add");
        let report = o.check(&[("A", &table(&[(7, "first")]))]);
        let first = report
            .text
            .find("upsert \"first\"")
            .expect("first in history");
        let second = report
            .text
            .find("upsert \"second\"")
            .expect("second in history");
        assert!(first < second, "{}", report.text);
    }
}

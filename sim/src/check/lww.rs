//! The LWW oracle: given every write to a table (from every cluster), each key must end in
//! the state of its winning write — the greatest `(timestamp, origin id)`, deletes included —
//! on every cluster.
//!
//! Inputs are the workloads' [`WriteRecord`]s: acknowledged writes carry their commit
//! timestamp (`RETURNING crdb_internal_mvcc_timestamp`); ambiguous writes (the connection
//! failed before an answer) have none and may or may not have happened, so their states are
//! also accepted. Origin ids are the clusters' LWW identities (ldr's `origin_id`, the larger
//! wins a timestamp tie), given per origin label. The table must start empty, or its initial
//! rows must be given as writes too.
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
    /// The winner's `(timestamp, origin id)`, if any.
    pub winner_at: Option<(Timestamp, u32)>,
    /// Every state that is acceptable (the winner's plus those of ambiguous writes).
    pub allowed: BTreeSet<KeyState>,
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
    by_key: BTreeMap<i64, Vec<WriteRecord>>,
    writes: usize,
}

impl LwwOracle {
    /// `origin_ids`: the LWW origin id of each origin label used in the records.
    pub fn new(origin_ids: impl IntoIterator<Item = (String, u32)>) -> LwwOracle {
        LwwOracle {
            origin_ids: origin_ids.into_iter().collect(),
            by_key: BTreeMap::new(),
            writes: 0,
        }
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
        let mut winner: Option<&WriteRecord> = None;
        let mut tied: Vec<&WriteRecord> = Vec::new();
        for w in writes
            .iter()
            .filter(|w| w.status == WriteStatus::Acknowledged)
        {
            let rank = (w.timestamp.unwrap_or_default(), self.origin_id(w));
            match winner {
                None => winner = Some(w),
                Some(best) => {
                    let best_rank = (best.timestamp.unwrap_or_default(), self.origin_id(best));
                    if rank > best_rank {
                        winner = Some(w);
                        tied.clear();
                    } else if rank == best_rank && w.value != best.value {
                        // Same timestamp and origin: ldr breaks this by value bytes, which we
                        // cannot see; accept either.
                        tied.push(w);
                    }
                }
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
            winner_at: winner.map(|w| (w.timestamp.unwrap_or_default(), self.origin_id(w))),
            allowed,
        }
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
            let _ = write!(out, "key {}: expected {}", m.key, show(&m.expected.winner));
            if let Some((ts, origin)) = m.expected.winner_at {
                let _ = write!(out, " (write at {ts}, origin id {origin})");
            }
            if m.expected.allowed.len() > 1 {
                let others: Vec<String> = m
                    .expected
                    .allowed
                    .iter()
                    .filter(|s| **s != m.expected.winner)
                    .map(show)
                    .collect();
                let _ = write!(
                    out,
                    ", or from an ambiguous/tied write: {}",
                    others.join(", ")
                );
            }
            out.push('\n');
            for (label, state) in &m.actual {
                let mark = if m.expected.allowed.contains(state) {
                    "ok "
                } else {
                    "BAD"
                };
                let _ = writeln!(out, "    {mark} {label}: {}", show(state));
            }
            out.push_str("    history (by timestamp):\n");
            let mut history: Vec<&WriteRecord> = self
                .by_key
                .get(&m.key)
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
                let _ = writeln!(
                    out,
                    "      ts {ts} origin {} (id {}) {op} [{:?}, worker {} #{}, sent at {:.3}s]",
                    w.origin,
                    self.origin_id(w),
                    w.status,
                    w.worker,
                    w.seq,
                    w.sent_ns as f64 / 1e9
                );
            }
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

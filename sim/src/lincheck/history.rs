//! The history a linearizability check reads: every operation a client issued on a register
//! (one key), with the client's invoke and completion times and what came back.
//!
//! Outcomes are classified by the recorder, not by the checker:
//! - a definite result (`Read`, `Written`, `CasOk`, `CasFailed`) took effect exactly once,
//!   between its invocation and its completion;
//! - [`Outcome::Unknown`] (an ambiguous error such as SQLSTATE 40003, a connection lost or a
//!   timeout after the request was sent) may have taken effect at any moment after its
//!   invocation, or never: its completion is treated as +infinity and it may be left out;
//! - [`Outcome::Failed`] (refused before anything was written, e.g. 58C00, 40001, or an
//!   error before the request was sent) never took effect and is left out of the check.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A register value. The workload writes every value at most once, so a read names the write
/// it saw.
pub type Value = i64;

/// What a client asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Call {
    Read,
    Write(Value),
    /// Set the register to `new` if it holds `expected`.
    Cas {
        expected: Value,
        new: Value,
    },
}

/// What came back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The value read; `None` when the key had no row.
    Read(Option<Value>),
    /// A write was acknowledged.
    Written,
    /// A compare-and-set found `expected` and wrote `new`.
    CasOk,
    /// A compare-and-set did not find `expected` and wrote nothing.
    CasFailed,
    /// Indeterminate: may or may not have taken effect.
    Unknown,
    /// Certainly not applied.
    Failed,
}

/// One operation of one client on one key. Times are nanoseconds on one monotonic clock
/// shared by every client of the history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operation {
    /// Which client issued it (a client runs one operation at a time).
    pub client: usize,
    pub key: i64,
    pub call: Call,
    pub outcome: Outcome,
    pub invoke_ns: u64,
    /// When the answer arrived (or the client gave up); ignored for [`Outcome::Unknown`].
    pub complete_ns: u64,
    /// The node the client was connected to (0 when unknown).
    pub node: usize,
    /// The error text of an `Unknown` or `Failed` outcome (empty otherwise).
    pub detail: String,
}

impl Operation {
    /// Whether the checker must place this operation (it certainly took effect).
    pub fn is_determinate(&self) -> bool {
        !matches!(self.outcome, Outcome::Unknown | Outcome::Failed)
    }

    /// Whether the checker looks at this operation at all: definite results, and
    /// indeterminate writes and compare-and-sets (an indeterminate read changes nothing).
    pub fn is_relevant(&self) -> bool {
        match self.outcome {
            Outcome::Failed => false,
            Outcome::Unknown => !matches!(self.call, Call::Read),
            _ => true,
        }
    }

    /// The value this operation leaves in the register if it takes effect, if it writes.
    pub fn written_value(&self) -> Option<Value> {
        match (self.call, self.outcome) {
            (Call::Write(v), Outcome::Written | Outcome::Unknown) => Some(v),
            (Call::Cas { new, .. }, Outcome::CasOk | Outcome::Unknown) => Some(new),
            _ => None,
        }
    }

    /// The value this operation claims to have observed in the register, if any (a read's
    /// result, a successful compare-and-set's expected value).
    pub fn observed_value(&self) -> Option<Value> {
        match (self.call, self.outcome) {
            (Call::Read, Outcome::Read(v)) => v,
            (Call::Cas { expected, .. }, Outcome::CasOk) => Some(expected),
            _ => None,
        }
    }

    /// Applies this operation to register state `state` as if it took effect there; `None`
    /// if what it returned is impossible in that state. An indeterminate operation applies
    /// as if it succeeded (a compare-and-set that would fail changes nothing, which is the
    /// same as leaving it out).
    pub fn step(&self, state: Option<Value>) -> Option<Option<Value>> {
        match (self.call, self.outcome) {
            (Call::Read, Outcome::Read(v)) => (v == state).then_some(state),
            (Call::Write(v), Outcome::Written | Outcome::Unknown) => Some(Some(v)),
            (Call::Cas { expected, new }, Outcome::CasOk | Outcome::Unknown) => {
                (state == Some(expected)).then_some(Some(new))
            }
            (Call::Cas { expected, .. }, Outcome::CasFailed) => {
                (state != Some(expected)).then_some(state)
            }
            _ => None,
        }
    }
}

/// Seconds with millisecond precision, for reports.
pub(crate) fn seconds(ns: u64) -> String {
    format!("{:.3}s", ns as f64 / 1e9)
}

fn value_text(v: Option<Value>) -> String {
    match v {
        Some(v) => v.to_string(),
        None => "(no row)".to_string(),
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match (self.call, self.outcome) {
            (Call::Read, Outcome::Read(v)) => format!("read -> {}", value_text(v)),
            (Call::Read, _) => "read".to_string(),
            (Call::Write(v), _) => format!("write {v}"),
            (Call::Cas { expected, new }, _) => format!("cas {expected} -> {new}"),
        };
        let result = match self.outcome {
            Outcome::Read(_) | Outcome::Written => "ok".to_string(),
            Outcome::CasOk => "ok (swapped)".to_string(),
            Outcome::CasFailed => "failed (value differed)".to_string(),
            Outcome::Unknown => format!("INDETERMINATE ({})", self.detail),
            Outcome::Failed => format!("refused ({})", self.detail),
        };
        let end = if matches!(self.outcome, Outcome::Unknown) {
            format!("gave up {}", seconds(self.complete_ns))
        } else {
            seconds(self.complete_ns)
        };
        write!(
            f,
            "client {} via node {}: {what} [{} .. {end}] {result}",
            self.client,
            self.node,
            seconds(self.invoke_ns),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(call: Call, outcome: Outcome) -> Operation {
        Operation {
            client: 1,
            key: 1,
            call,
            outcome,
            invoke_ns: 0,
            complete_ns: 1,
            node: 1,
            detail: String::new(),
        }
    }

    #[test]
    fn steps_follow_register_semantics() {
        let read7 = op(Call::Read, Outcome::Read(Some(7)));
        assert_eq!(read7.step(Some(7)), Some(Some(7)));
        assert_eq!(read7.step(Some(8)), None);
        assert_eq!(read7.step(None), None);
        let absent = op(Call::Read, Outcome::Read(None));
        assert_eq!(absent.step(None), Some(None));
        assert_eq!(
            op(Call::Write(3), Outcome::Written).step(None),
            Some(Some(3))
        );
        let cas = Call::Cas {
            expected: 1,
            new: 2,
        };
        assert_eq!(op(cas, Outcome::CasOk).step(Some(1)), Some(Some(2)));
        assert_eq!(op(cas, Outcome::CasOk).step(Some(5)), None);
        assert_eq!(op(cas, Outcome::CasFailed).step(Some(5)), Some(Some(5)));
        assert_eq!(op(cas, Outcome::CasFailed).step(Some(1)), None);
        assert_eq!(op(cas, Outcome::Unknown).step(Some(1)), Some(Some(2)));
        assert_eq!(op(cas, Outcome::Unknown).step(Some(9)), None);
        assert_eq!(op(Call::Write(4), Outcome::Failed).step(Some(1)), None);
    }

    #[test]
    fn relevance_and_values() {
        assert!(!op(Call::Read, Outcome::Unknown).is_relevant());
        assert!(op(Call::Write(2), Outcome::Unknown).is_relevant());
        assert!(!op(Call::Write(2), Outcome::Unknown).is_determinate());
        assert!(!op(Call::Write(2), Outcome::Failed).is_relevant());
        let cas = Call::Cas {
            expected: 1,
            new: 2,
        };
        assert_eq!(op(cas, Outcome::CasOk).observed_value(), Some(1));
        assert_eq!(op(cas, Outcome::CasFailed).observed_value(), None);
        assert_eq!(op(cas, Outcome::CasFailed).written_value(), None);
        assert_eq!(op(cas, Outcome::Unknown).written_value(), Some(2));
    }
}

//! The history a list-append check reads: every transaction a client ran, as a list of
//! micro-operations on keys whose values are lists, with what came back and how it ended.
//!
//! A key's value is a list of elements; `append(k, e)` adds `e` at its end and `read(k)`
//! returns the whole list. The workload appends every element at most once per key, so an
//! element read names the transaction that appended it, and the longest read of a key tells
//! the order in which the appends to it took effect (its version order).
//!
//! Outcomes are classified by the recorder, not by the checker:
//! - [`TxnOutcome::Ok`]: COMMIT was acknowledged; every read returned what is recorded;
//! - [`TxnOutcome::Failed`]: certainly not committed (SQLSTATE 40001, or any error before
//!   COMMIT was sent): none of its appends may ever be visible;
//! - [`TxnOutcome::Info`]: indeterminate (40003, a connection lost or no answer during
//!   COMMIT): its appends may be visible or not. Its reads are not trusted (a transaction
//!   that did not commit may have read anything), so the checker ignores them.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A key of the list-append workload.
pub type Key = i64;
/// An element appended to a key's list; unique per key across the history.
pub type Element = i64;

/// One micro-operation of a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MicroOp {
    /// Append `element` to the list of `key`.
    Append { key: Key, element: Element },
    /// Read the list of `key`: `None` when no answer came back (the transaction then did
    /// not end `Ok`); `Some(vec![])` for an absent or empty list.
    Read {
        key: Key,
        elements: Option<Vec<Element>>,
    },
}

impl MicroOp {
    pub fn key(&self) -> Key {
        match self {
            MicroOp::Append { key, .. } | MicroOp::Read { key, .. } => *key,
        }
    }
}

impl fmt::Display for MicroOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MicroOp::Append { key, element } => write!(f, "append({key}, {element})"),
            MicroOp::Read {
                key,
                elements: Some(elements),
            } => write!(f, "read({key}) -> {}", list_text(elements)),
            MicroOp::Read {
                key,
                elements: None,
            } => write!(f, "read({key}) -> ?"),
        }
    }
}

/// How a transaction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TxnOutcome {
    /// Committed.
    Ok,
    /// Certainly not committed.
    Failed,
    /// May or may not have committed.
    Info,
}

impl TxnOutcome {
    pub fn name(self) -> &'static str {
        match self {
            TxnOutcome::Ok => "ok",
            TxnOutcome::Failed => "failed",
            TxnOutcome::Info => "info",
        }
    }
}

/// One transaction of one client. Times are nanoseconds on one monotonic clock shared by
/// every client of the history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Txn {
    /// Which client ran it (a client runs one transaction at a time).
    pub client: usize,
    pub ops: Vec<MicroOp>,
    pub outcome: TxnOutcome,
    /// When BEGIN was sent.
    pub invoke_ns: u64,
    /// When the answer to COMMIT (or the error that ended it) arrived, or the client gave up.
    pub complete_ns: u64,
    /// The node the client was connected to (0 when unknown).
    pub node: usize,
    /// The error text of a `Failed` or `Info` transaction (empty otherwise).
    pub detail: String,
}

impl Txn {
    /// The appends of this transaction in order.
    pub fn appends(&self) -> impl Iterator<Item = (Key, Element)> + '_ {
        self.ops.iter().filter_map(|op| match op {
            MicroOp::Append { key, element } => Some((*key, *element)),
            MicroOp::Read { .. } => None,
        })
    }

    /// The completed reads of this transaction in order.
    pub fn reads(&self) -> impl Iterator<Item = (Key, &[Element])> + '_ {
        self.ops.iter().filter_map(|op| match op {
            MicroOp::Read {
                key,
                elements: Some(elements),
            } => Some((*key, elements.as_slice())),
            _ => None,
        })
    }
}

impl fmt::Display for Txn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ops: Vec<String> = self.ops.iter().map(|op| op.to_string()).collect();
        write!(
            f,
            "client {} via node {} [{} .. {}] {}: [{}]",
            self.client,
            self.node,
            seconds(self.invoke_ns),
            seconds(self.complete_ns),
            self.outcome.name(),
            ops.join(", ")
        )?;
        if !self.detail.is_empty() {
            write!(f, " ({})", self.detail)?;
        }
        Ok(())
    }
}

/// `[1 2 3]`, or its first and last elements when it is long.
pub(crate) fn list_text(elements: &[Element]) -> String {
    const SHOWN: usize = 8;
    if elements.len() <= SHOWN {
        let parts: Vec<String> = elements.iter().map(|e| e.to_string()).collect();
        return format!("[{}]", parts.join(" "));
    }
    let head: Vec<String> = elements[..3].iter().map(|e| e.to_string()).collect();
    let tail: Vec<String> = elements[elements.len() - 3..]
        .iter()
        .map(|e| e.to_string())
        .collect();
    format!(
        "[{} … ({} elements) … {}]",
        head.join(" "),
        elements.len(),
        tail.join(" ")
    )
}

/// Seconds with millisecond precision, for reports.
fn seconds(ns: u64) -> String {
    format!("{:.3}s", ns as f64 / 1e9)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_and_reads_in_order() {
        let txn = Txn {
            client: 1,
            ops: vec![
                MicroOp::Read {
                    key: 1,
                    elements: Some(vec![4]),
                },
                MicroOp::Append { key: 1, element: 5 },
                MicroOp::Read {
                    key: 2,
                    elements: None,
                },
            ],
            outcome: TxnOutcome::Info,
            invoke_ns: 1_000_000,
            complete_ns: 2_000_000,
            node: 3,
            detail: "connection lost".into(),
        };
        assert_eq!(txn.appends().collect::<Vec<_>>(), vec![(1, 5)]);
        assert_eq!(txn.reads().collect::<Vec<_>>(), vec![(1, &[4][..])]);
        assert_eq!(
            txn.to_string(),
            "client 1 via node 3 [0.001s .. 0.002s] info: [read(1) -> [4], append(1, 5), read(2) -> ?] (connection lost)"
        );
    }

    #[test]
    fn long_lists_are_shortened() {
        let list: Vec<Element> = (1..=20).collect();
        assert_eq!(list_text(&list), "[1 2 3 … (20 elements) … 18 19 20]");
        assert_eq!(list_text(&[]), "[]");
    }
}

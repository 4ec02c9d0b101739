//! Transactional anomalies of multi-range transactions against a replicated ldr cluster,
//! found the way Elle finds them (Kingsbury & Alvaro, VLDB 2020): list-append histories.
//!
//! Several clients run explicit transactions of appends to and reads of a few keys whose
//! rows lie in different ranges (Raft groups on three nodes), while a nemesis kills (-9)
//! and restarts, pauses and resumes, or partitions nodes. Every element is appended once, so
//! each read names the transactions it observed and the longest read of a key orders its
//! appends; from that the checker infers write-write, write-read and read-write
//! dependencies and looks for the cycles and reads serializability forbids.
//!
//! - [`history`]: transactions of micro-operations (`append(k, e)`, `read(k) -> [e…]`) and
//!   their outcomes (ok, failed, indeterminate);
//! - [`checker`]: the pure analysis: G0, G1a, G1b, G1c, G-single (lost update, read skew),
//!   G2 (write skew), duplicate or unknown elements, incompatible orders, internal
//!   inconsistency, each explained edge by edge;
//! - [`runner`]: the seeded workload and fault schedule against a real 3-node cluster.
//!
//! ```
//! use ldr_sim::elle::{AnomalyKind, CheckOptions, MicroOp, Txn, TxnOutcome, check};
//! let txn = |ops| Txn {
//!     client: 1, ops, outcome: TxnOutcome::Ok, invoke_ns: 0, complete_ns: 1, node: 1,
//!     detail: String::new(),
//! };
//! let read = |key, list: &[i64]| MicroOp::Read { key, elements: Some(list.to_vec()) };
//! let append = |key, element| MicroOp::Append { key, element };
//! // A lost update: both transactions read [0] and appended; both appends survived.
//! let history = [
//!     txn(vec![append(1, 0)]),
//!     txn(vec![read(1, &[0]), append(1, 1)]),
//!     txn(vec![read(1, &[0]), append(1, 2)]),
//!     txn(vec![read(1, &[0, 1, 2])]),
//! ];
//! let report = check(&history, &CheckOptions::default())?;
//! assert_eq!(report.kinds(), vec![AnomalyKind::GSingle]);
//! # Ok::<(), ldr_sim::SimError>(())
//! ```

pub mod checker;
pub mod history;
pub mod runner;

pub use checker::{
    Anomaly, AnomalyKind, CheckOptions, CheckReport, EdgeKind, Step, TxnCounts, Why, check,
};
pub use history::{Element, Key, MicroOp, Txn, TxnOutcome};
pub use runner::{ElleConfig, ElleReport, LostAppend, lost_appends, run};

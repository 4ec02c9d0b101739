//! Linearizability of single-key histories against a replicated ldr cluster.
//!
//! Several clients read, write and compare-and-set a handful of keys of one table whose
//! ranges are Raft groups on three nodes, while a nemesis kills (-9) and restarts, or pauses
//! and resumes, nodes of the cluster. Every operation is recorded with the client's invoke
//! and completion times and its outcome; afterwards [`check`] decides, key by key, whether
//! some total order of the operations respects both real time and register semantics.
//!
//! - [`history`]: operations, outcomes (definite, indeterminate, refused) and the register
//!   model;
//! - [`checker`]: the Wing & Gong / Lowe search with memoisation (as Porcupine and Knossos),
//!   bounded in time, with a shrunk explanation of any violation;
//! - [`runner`]: the seeded workload and fault schedule against a real 3-node cluster.
//!
//! ```
//! use ldr_sim::lincheck::{Call, CheckOptions, Operation, Outcome, check};
//! let op = |client, call, outcome, invoke_ns, complete_ns| Operation {
//!     client, key: 1, call, outcome, invoke_ns, complete_ns, node: 1, detail: String::new(),
//! };
//! // A write of 5 completed before a read began, and the read saw the old value.
//! let history = [
//!     op(1, Call::Write(5), Outcome::Written, 0, 10),
//!     op(2, Call::Read, Outcome::Read(Some(0)), 20, 30),
//! ];
//! let report = check(&history, &|_key| Some(0), &CheckOptions::default());
//! assert_eq!(report.violations().count(), 1);
//! ```

pub mod checker;
pub mod history;
pub mod runner;

pub use checker::{CheckOptions, CheckReport, KeyCheck, OpCounts, Verdict, Violation, check};
pub use history::{Call, Operation, Outcome, Value};
pub use runner::{Episode, FaultKind, LincheckConfig, LincheckReport, classify_error, run};

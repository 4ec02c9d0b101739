//! Checkers: what must hold after (or during) a run, each failing with a report that says
//! what was expected, what was seen, and where.
//!
//! - [`convergence`]: both clusters end with the same table (fingerprints or rows);
//! - [`lww`]: each key's final state is its last write by (timestamp, origin id);
//! - [`accounting`]: every emitted change was applied, lost to LWW, or dead-lettered;
//! - [`replicated_time`]: no job's replicated time ever moves backwards.
//!
//! Decision logic is pure (plain data in, verdict out) and unit-tested; the async functions
//! around it only fetch the data.

pub mod accounting;
pub mod convergence;
pub mod lww;
pub mod replicated_time;

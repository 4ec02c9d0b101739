//! ldr-ingest: the consumer side of logical replication (the `LOGICAL REPLICATION` job).
//!
//! Pure decision pieces (no I/O, unit-tested exhaustively): [`chunker`] (flush chunking that
//! never splits a key), [`purgatory`] (the retry queue and the checkpoints held behind it),
//! [`retry`] (the job's backoff-then-pause policy), [`dlq_policy`] (retry, dead-letter or fail
//! a row), and [`metrics`] (CockroachDB's LDR metric names, Prometheus text).

mod applier;
pub mod chunker;
mod coordinator;
pub mod dlq_policy;
mod error;
mod flow;
mod job;
pub mod metrics;
mod processor;
pub mod purgatory;
pub mod retry;
#[cfg(test)]
mod test_rng;

pub use applier::{Applier, ApplyError, EventOutcome, SourceEvent};
pub use coordinator::{DestinationTables, LdrResumer, assign};
pub use error::{IngestError, Result};
pub use flow::{ApplierFactory, FlowRunner, FlowUpdate, IngestService};
pub use job::{Discard, LdrPayload, LdrProgress, Mode, TablePair};
pub use processor::{Processor, collapse_versions};

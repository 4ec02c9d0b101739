//! ldr-ingest: the consumer side of logical replication (the `LOGICAL REPLICATION` job).
//!
//! Pure decision pieces (no I/O, unit-tested exhaustively): [`chunker`] (flush chunking that
//! never splits a key), [`purgatory`] (the retry queue and the checkpoints held behind it),
//! [`retry`] (the job's backoff-then-pause policy), [`dlq_policy`] (retry, dead-letter or fail
//! a row), and [`metrics`] (CockroachDB's LDR metric names, Prometheus text).

mod applier;
pub mod chunker;
mod coordinator;
mod create;
mod dlq;
pub mod dlq_policy;
mod error;
mod flow;
mod immediate;
mod job;
mod mapping;
pub mod metrics;
pub mod panic_guard;
mod processor;
pub mod purgatory;
pub mod retry;
#[cfg(test)]
mod test_rng;
mod validated;

pub use applier::{Applier, ApplyError, EventOutcome, SourceEvent};
pub use coordinator::{DestinationTables, LdrResumer, assign};
pub use create::{CreateContext, StreamRequest, create_stream};
pub use dlq::{
    DlqRow, DlqTables, InternalSql, create_dlq_table_sql, insert_dlq_row, qualified_dlq_table,
};
pub use error::{IngestError, Result};
pub use flow::{ApplierFactory, FlowRunner, FlowUpdate, IngestService};
pub use immediate::{ImmediateApplier, ImmediateApplierFactory};
pub use job::{Discard, LdrPayload, LdrProgress, Mode, TablePair};
pub use processor::{Processor, collapse_versions};
pub use validated::{ModeApplierFactory, ValidatedApplier};

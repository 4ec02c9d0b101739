//! ldr-ingest: the consumer side of logical replication (the `LOGICAL REPLICATION` job).
//!
//! Pure decision pieces (no I/O, unit-tested exhaustively): [`chunker`] (flush chunking that
//! never splits a key), [`purgatory`] (the retry queue and the checkpoints held behind it),
//! [`retry`] (the job's backoff-then-pause policy), [`dlq_policy`] (retry, dead-letter or fail
//! a row), and [`metrics`] (CockroachDB's LDR metric names, Prometheus text).

pub mod chunker;
pub mod dlq_policy;
pub mod metrics;
pub mod purgatory;
pub mod retry;
#[cfg(test)]
mod test_rng;

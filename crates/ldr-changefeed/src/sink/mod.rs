//! Sinks: where a changefeed's messages go. A sink buffers or sends row messages as they come
//! and makes them durable on [`Sink::flush`]; the coordinator advances the high-water mark only
//! past timestamps whose messages a flush returned for (at-least-once: a failed flush restarts
//! the changefeed from the last high-water mark, re-emitting what may have been lost).

mod client;
mod cloudstorage;
mod webhook;

pub use client::{CLIENT_ROWS_BUFFERED_MAX, ClientSink};
pub use cloudstorage::{
    CloudStorageSink, FileWriter, LocalFiles, RemoteFiles, file_name, format_time, partition_dir,
    write_file as write_file_at,
};
pub use webhook::WebhookSink;

use ldr_types::Timestamp;

use crate::encode::Message;

/// A sink error: retryable ones restart the changefeed from its high-water mark after a
/// backoff (a webhook that is down, a node that is unreachable); others fail the job.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SinkError {
    #[error("{0}")]
    Retryable(String),
    #[error("{0}")]
    Permanent(String),
}

impl SinkError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, SinkError::Retryable(_))
    }
}

/// One changefeed's sink.
#[async_trait::async_trait]
pub trait Sink: Send {
    /// Buffers (or sends) one row message of `topic` (schema version `schema_version`).
    async fn emit_row(
        &mut self,
        topic: &str,
        schema_version: u64,
        message: &Message,
        mvcc: Timestamp,
    ) -> Result<(), SinkError>;
    /// Makes every message emitted so far durable. `frontier` is the changefeed's resolved
    /// timestamp now: no message emitted later has a timestamp at or below it.
    async fn flush(&mut self, frontier: Timestamp) -> Result<(), SinkError>;
    /// Emits a resolved message (after a flush covering `ts`).
    async fn emit_resolved(&mut self, payload: &str, ts: Timestamp) -> Result<(), SinkError>;
    /// Whether to flush after every batch of changes (webhooks deliver as changes come;
    /// files are written at checkpoints).
    fn flush_per_batch(&self) -> bool;
}

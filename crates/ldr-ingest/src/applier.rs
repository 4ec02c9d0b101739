//! The boundary between a processor (stream handling, ordering, retries) and the code that
//! writes rows (immediate-mode LWW writes, validated-mode SQL writes, the DLQ).

use async_trait::async_trait;
use ldr_types::Timestamp;

/// One source change as the processor hands it to an applier. When a batch held several
/// versions of a key, the processor passes only the newest (`ts`, `value`) with the oldest
/// version's `prev_value`: under last-write-wins the intermediate versions could only lose to
/// it, so the final state is the same and the destination does one write instead of many.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceEvent {
    pub key: Vec<u8>,
    /// The source MVCC timestamp (the origin timestamp on the destination).
    pub ts: Timestamp,
    /// `None` for a delete.
    pub value: Option<Vec<u8>>,
    pub prev_value: Option<Vec<u8>>,
    /// How many source versions this event stands for (for the ingested counters).
    pub versions: u32,
}

impl SourceEvent {
    pub fn is_delete(&self) -> bool {
        self.value.is_none()
    }
    /// Key and value bytes, as `logical_bytes` counts them.
    pub fn logical_bytes(&self) -> u64 {
        (self.key.len() + self.value.as_ref().map_or(0, Vec::len)) as u64
    }
}

/// Why one event could not be applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyError {
    pub message: String,
    /// The PostgreSQL error code, when the failure is a SQL-level one (e.g. 23505).
    pub pgcode: Option<String>,
    /// Whether the failure may pass by waiting. `false` when its cause is broken data (see
    /// [`crate::IngestError::is_retryable`]): a flow that fails because of this row pauses
    /// the job at once instead of retrying.
    pub retryable: bool,
}

impl ApplyError {
    pub fn new(message: impl Into<String>, pgcode: Option<&str>) -> ApplyError {
        ApplyError {
            message: message.into(),
            pgcode: pgcode.map(str::to_string),
            retryable: true,
        }
    }
}

impl std::fmt::Display for ApplyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// What happened to one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventOutcome {
    Applied,
    /// A newer (or tie-winning) version already exists: the event lost last-write-wins.
    LwwLost,
    /// Filtered out by the job's options (e.g. `discard = 'all-deletes'`).
    Discarded,
    Failed(ApplyError),
}

/// Writes events into the destination tables.
#[async_trait]
pub trait Applier: Send + Sync {
    /// Applies one chunk: the events have distinct keys; outcomes come back in order.
    async fn apply(&self, events: &[SourceEvent]) -> Vec<EventOutcome>;

    /// Writes an event that could not be applied into its table's dead-letter queue with
    /// `reason` ("<error> (<eligibility>)").
    async fn dead_letter(&self, event: &SourceEvent, reason: &str) -> Result<(), ApplyError>;
}

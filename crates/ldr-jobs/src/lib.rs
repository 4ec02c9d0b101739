//! The job registry: durable job records in the system keyspace, their lifecycle, and which
//! node runs them.
//!
//! A job is created with [`Registry::create`] (status `running`), claimed by one node, and run
//! by the [`Resumer`] registered for its [`JobType`]. `PAUSE`/`CANCEL` set a request the running
//! node acts on; a job whose node's liveness expired is adopted by another live node, which
//! resumes it from its persisted progress.
//!
//! This file is the crate's contract with `ldr-sql` (`SHOW JOBS`, `PAUSE/RESUME/CANCEL JOB`),
//! `ldr-stream`, `ldr-ingest` and `ldr-server`.

mod registry;
mod state;

use std::sync::Arc;

use ldr_kv::KvClient;
use ldr_types::{JobId, NodeId, Timestamp};
pub use registry::{JOBS_SUBSPACE, Registry, RegistryOptions};
use serde::{Deserialize, Serialize};

/// Errors of the registry.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("job with ID {0} does not exist")]
    NotFound(JobId),
    /// CockroachDB's texts, e.g. "job with state succeeded cannot be requested to be paused".
    #[error("{0}")]
    InvalidTransition(String),
    #[error(transparent)]
    Kv(#[from] ldr_kv::KvError),
    #[error("job record is corrupt: {0}")]
    Corrupt(String),
    /// A compare-and-put loop kept losing to concurrent writers.
    #[error("job {0}: too many concurrent updates to the job record")]
    Contention(JobId),
    /// A resumer's progress update after another node took the job over: stop running it.
    #[error("job {0}: this node no longer holds the job's claim")]
    ClaimLost(JobId),
}

pub type Result<T, E = JobError> = std::result::Result<T, E>;

/// Job types, with CockroachDB's `SHOW JOBS` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum JobType {
    /// "LOGICAL REPLICATION"
    LogicalReplication,
    /// "REPLICATION STREAM PRODUCER" (history retention)
    ReplicationStreamProducer,
    /// "ROW LEVEL TTL"
    RowLevelTtl,
    /// "CHANGEFEED"
    Changefeed,
    /// "BACKUP"
    Backup,
    /// "RESTORE"
    Restore,
}

impl JobType {
    pub fn as_str(&self) -> &'static str {
        match self {
            JobType::LogicalReplication => "LOGICAL REPLICATION",
            JobType::ReplicationStreamProducer => "REPLICATION STREAM PRODUCER",
            JobType::RowLevelTtl => "ROW LEVEL TTL",
            JobType::Changefeed => "CHANGEFEED",
            JobType::Backup => "BACKUP",
            JobType::Restore => "RESTORE",
        }
    }
}

/// Job statuses (`SHOW JOBS` prints [`JobStatus::as_str`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum JobStatus {
    Running,
    PauseRequested,
    Paused,
    CancelRequested,
    Reverting,
    Canceled,
    Failed,
    Succeeded,
}

impl JobStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            JobStatus::Running => "running",
            JobStatus::PauseRequested => "pause-requested",
            JobStatus::Paused => "paused",
            JobStatus::CancelRequested => "cancel-requested",
            JobStatus::Reverting => "reverting",
            JobStatus::Canceled => "canceled",
            JobStatus::Failed => "failed",
            JobStatus::Succeeded => "succeeded",
        }
    }
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            JobStatus::Canceled | JobStatus::Failed | JobStatus::Succeeded
        )
    }
}

/// A persisted job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: JobId,
    pub job_type: JobType,
    pub description: String,
    pub user_name: String,
    pub status: JobStatus,
    pub running_status: Option<String>,
    pub created: Timestamp,
    pub finished: Option<Timestamp>,
    pub fraction_completed: f64,
    pub error: Option<String>,
    /// The node currently running it (None: unclaimed).
    pub coordinator_id: Option<NodeId>,
    /// Type-specific immutable details (JSON).
    pub payload: serde_json::Value,
    /// Type-specific progress (JSON), updated by the resumer.
    pub progress: serde_json::Value,
}

/// What a resumer returns when it stops.
#[derive(Debug)]
pub enum ResumeOutcome {
    Succeeded,
    /// The job should fail permanently with this error (its `on_fail_or_cancel` then runs).
    Failed(String),
    /// Pause the job with this error as its status ("pausing after error: …").
    PauseWithError(String),
}

/// Handed to a resumer: the job's identity, a KV client, and a way to report progress.
#[derive(Clone)]
pub struct JobContext {
    pub job_id: JobId,
    pub kv: KvClient,
    pub registry: Arc<Registry>,
    /// Cancelled when the job must stop running on this node (pause, cancel, shutdown,
    /// lost claim). The resumer returns promptly after it fires.
    pub stop: tokio::sync::watch::Receiver<bool>,
}

/// Runs jobs of one type.
///
/// When `ctx.stop` fires the resumer returns promptly with any outcome: the registry then
/// decides from the record (`pause-requested` → `paused`, `cancel-requested` → `reverting` and
/// `on_fail_or_cancel`); a job still `running` or `reverting` (shutdown, lost claim) stays as
/// it is for its next claimant and the outcome is ignored. Resumers and `on_fail_or_cancel`
/// must be idempotent: a job is re-run from its persisted progress after a node loss.
#[async_trait::async_trait]
pub trait Resumer: Send + Sync {
    /// Runs (or resumes) the job until it finishes or `ctx.stop` fires.
    async fn resume(&self, ctx: JobContext, record: JobRecord) -> ResumeOutcome;
    /// Cleanup after a cancel or a failure (release protected timestamps, schema locks, …).
    async fn on_fail_or_cancel(
        &self,
        ctx: JobContext,
        record: JobRecord,
    ) -> std::result::Result<(), String>;
}

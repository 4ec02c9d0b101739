//! The history retention job (`REPLICATION STREAM PRODUCER`): holds a protected timestamp on
//! the source so GC keeps the history the stream still needs, and the schema locks of the
//! source tables.
//!
//! Its life, as in CockroachDB: heartbeats from the destination move the protected timestamp
//! to the destination's replicated time and push the expiry out by the expiration window
//! (24h); a liveness loop fails the job when the expiry passes ("replication stream N timed
//! out") or when the destination reports it finished unsuccessfully ("destination cluster job
//! finished unsuccessfully"). Failing or canceling releases the protected timestamp and the
//! schema locks.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ldr_jobs::{JobContext, JobRecord, JobStatus, ResumeOutcome, Resumer};
use ldr_proto::pb::StreamStatus;
use ldr_types::{JobId, TableId, Timestamp};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::catalog::SourceCatalog;

/// How long a stream lives without heartbeats.
pub const EXPIRATION_WINDOW: Duration = Duration::from_secs(24 * 60 * 60);

/// Immutable details of a producer job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProducerPayload {
    pub table_ids: Vec<TableId>,
    pub table_names: Vec<String>,
    pub pts_id: String,
    pub expiration_window_secs: u64,
    pub start_ts: Timestamp,
}

/// What the destination told us about its side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum StreamState {
    #[default]
    NotFinished,
    FinishedSuccessfully,
    FinishedUnsuccessfully,
}

/// Mutable progress of a producer job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProducerProgress {
    /// Wall time after which the stream is considered abandoned.
    pub expiration: Timestamp,
    pub state: StreamState,
    pub protected_ts: Timestamp,
}

/// The PTS record id of a producer job.
pub fn pts_id(job_id: JobId) -> String {
    format!("producer-{job_id}")
}

/// The stream status a heartbeat reports for a producer job in `status` (CockroachDB's
/// mapping); a missing job is INACTIVE.
pub fn stream_status(status: Option<JobStatus>) -> StreamStatus {
    match status {
        Some(JobStatus::Running) => StreamStatus::StreamActive,
        Some(JobStatus::Paused) | Some(JobStatus::PauseRequested) => StreamStatus::StreamPaused,
        Some(s) if s.is_terminal() => StreamStatus::StreamInactive,
        Some(JobStatus::CancelRequested) | Some(JobStatus::Reverting) => {
            StreamStatus::StreamInactive
        }
        None => StreamStatus::StreamInactive,
        Some(_) => StreamStatus::StreamUnknownRetry,
    }
}

/// What the liveness loop does with the job now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LivenessDecision {
    KeepRunning,
    /// Release the protected timestamp and succeed.
    Succeed,
    Fail(String),
}

/// The liveness decision for `progress` at wall time `now`.
pub fn liveness_decision(
    job_id: JobId,
    progress: &ProducerProgress,
    now: Timestamp,
) -> LivenessDecision {
    match progress.state {
        StreamState::FinishedUnsuccessfully => {
            LivenessDecision::Fail("destination cluster job finished unsuccessfully".to_string())
        }
        StreamState::FinishedSuccessfully if now > progress.expiration => LivenessDecision::Succeed,
        StreamState::FinishedSuccessfully => LivenessDecision::KeepRunning,
        StreamState::NotFinished if now > progress.expiration => {
            LivenessDecision::Fail(format!("replication stream {job_id} timed out"))
        }
        StreamState::NotFinished => LivenessDecision::KeepRunning,
    }
}

/// Runs producer jobs.
pub struct ProducerResumer {
    pub catalog: Arc<dyn SourceCatalog>,
}

fn parse<T: serde::de::DeserializeOwned>(
    value: &serde_json::Value,
    what: &str,
) -> Result<T, String> {
    serde_json::from_value(value.clone()).map_err(|e| format!("corrupt producer job {what}: {e}"))
}

#[async_trait]
impl Resumer for ProducerResumer {
    async fn resume(&self, mut ctx: JobContext, record: JobRecord) -> ResumeOutcome {
        let job_id = record.id;
        let payload: ProducerPayload = match parse(&record.payload, "payload") {
            Ok(p) => p,
            Err(e) => return ResumeOutcome::Failed(e),
        };
        loop {
            let tick = Duration::from_secs(1).min(
                ctx.kv
                    .settings()
                    .duration("stream_replication.stream_liveness_track_frequency"),
            );
            tokio::select! {
                _ = ctx.stop.changed() => return ResumeOutcome::Succeeded,
                _ = tokio::time::sleep(tick) => {}
            }
            if *ctx.stop.borrow() {
                // Stopped on this node (pause, cancel, shutdown): the registry decides what follows.
                return ResumeOutcome::Succeeded;
            }
            let record = match ctx.registry.get(job_id).await {
                Ok(r) => r,
                Err(e) => {
                    warn!(job_id, error = %e, "cannot read producer job; retrying");
                    continue;
                }
            };
            let progress: ProducerProgress = match parse(&record.progress, "progress") {
                Ok(p) => p,
                Err(e) => return ResumeOutcome::Failed(e),
            };
            let now = Timestamp::new(ctx.kv.clock().physical_now_ns(), 0);
            match liveness_decision(job_id, &progress, now) {
                LivenessDecision::KeepRunning => {}
                LivenessDecision::Succeed => {
                    if let Err(e) = ctx.kv.release_protection(&payload.pts_id).await {
                        warn!(job_id, error = %e, "cannot release protected timestamp; retrying");
                        continue;
                    }
                    info!(
                        job_id,
                        "stream finished successfully; protected timestamp released"
                    );
                    return ResumeOutcome::Succeeded;
                }
                LivenessDecision::Fail(reason) => return ResumeOutcome::Failed(reason),
            }
        }
    }

    async fn on_fail_or_cancel(&self, ctx: JobContext, record: JobRecord) -> Result<(), String> {
        let payload: ProducerPayload = parse(&record.payload, "payload")?;
        self.catalog
            .unlock_tables(&payload.table_ids, record.id)
            .await
            .map_err(|e| e.to_string())?;
        ctx.kv
            .release_protection(&payload.pts_id)
            .await
            .map_err(|e| e.to_string())?;
        info!(
            job_id = record.id,
            "producer job released its protected timestamp and schema locks"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(state: StreamState, expiration: u64) -> ProducerProgress {
        ProducerProgress {
            expiration: Timestamp::new(expiration, 0),
            state,
            protected_ts: Timestamp::ZERO,
        }
    }

    #[test]
    fn liveness_decisions() {
        let now = Timestamp::new(100, 0);
        assert_eq!(
            liveness_decision(7, &progress(StreamState::NotFinished, 200), now),
            LivenessDecision::KeepRunning
        );
        assert_eq!(
            liveness_decision(7, &progress(StreamState::NotFinished, 50), now),
            LivenessDecision::Fail("replication stream 7 timed out".into())
        );
        assert_eq!(
            liveness_decision(7, &progress(StreamState::FinishedUnsuccessfully, 200), now),
            LivenessDecision::Fail("destination cluster job finished unsuccessfully".into())
        );
        assert_eq!(
            liveness_decision(7, &progress(StreamState::FinishedSuccessfully, 200), now),
            LivenessDecision::KeepRunning
        );
        assert_eq!(
            liveness_decision(7, &progress(StreamState::FinishedSuccessfully, 50), now),
            LivenessDecision::Succeed
        );
    }

    #[test]
    fn heartbeat_status_mapping() {
        assert_eq!(
            stream_status(Some(JobStatus::Running)),
            StreamStatus::StreamActive
        );
        assert_eq!(
            stream_status(Some(JobStatus::Paused)),
            StreamStatus::StreamPaused
        );
        for s in [
            JobStatus::Canceled,
            JobStatus::Failed,
            JobStatus::Succeeded,
            JobStatus::Reverting,
        ] {
            assert_eq!(
                stream_status(Some(s)),
                StreamStatus::StreamInactive,
                "{s:?}"
            );
        }
        assert_eq!(stream_status(None), StreamStatus::StreamInactive);
    }
}

//! The job lifecycle as a pure state machine: what a record becomes after a user request
//! (`PAUSE`/`RESUME`/`CANCEL JOB`), after a resumer or its cleanup returns, and what a node's
//! registry loop should do with a job it sees. No I/O: the registry reads a record, asks these
//! functions, and writes the result with a compare-and-put (re-asking on conflict).
//!
//! ```text
//!             PAUSE                 (node stops resumer)
//!  running ──────────► pause-requested ──────────► paused ──RESUME──► running (or reverting)
//!     │  ▲ CANCEL (from running or paused)
//!     │  └──────────► cancel-requested ──(stop)──► reverting ──cleanup ok──► canceled
//!     │ resumer: Succeeded ──► succeeded
//!     │ resumer: Failed(e) ──► reverting ──cleanup ok──► failed (error e)
//!     │ resumer: PauseWithError(e) ──► paused ("pausing after error: e")
//! ```
//!
//! Error texts follow CockroachDB's job updater (`job with state paused cannot be resumed`).
//! Claims: a node runs a job only while the record names it as `coordinator_id` *and* carries
//! the claim epoch it wrote when claiming; every claim bumps the epoch, so a node that lost a
//! claim (and maybe re-took it) can never apply a stale outcome.

use ldr_types::{JobId, NodeId, Timestamp};
use serde::{Deserialize, Serialize};

use crate::{JobError, JobRecord, JobStatus, ResumeOutcome};

/// Prefix of the error/status text of a job that paused itself after an error.
pub(crate) const PAUSE_AFTER_ERROR_PREFIX: &str = "pausing after error: ";

/// What is persisted under `jobs/<id>`: the public record plus the registry's bookkeeping.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct StoredJob {
    #[serde(flatten)]
    pub record: JobRecord,
    #[serde(default)]
    pub internal: Internal,
}

/// The registry's bookkeeping that `SHOW JOBS` does not show.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct Internal {
    /// Bumped by every claim. A node's task writes only while the epoch is the one it claimed.
    #[serde(default)]
    pub claim_epoch: u64,
    /// Set while the job is reverting (or paused while reverting): why it reverts. Resuming a
    /// paused job with this set goes back to `reverting` (CockroachDB's `FinalResumeError`).
    #[serde(default)]
    pub revert: Option<RevertReason>,
    /// The reason given with `PAUSE JOB` (or by a resumer pausing itself).
    #[serde(default)]
    pub pause_reason: Option<String>,
    /// Failed `on_fail_or_cancel` attempts so far.
    #[serde(default)]
    pub revert_attempts: u32,
}

/// Why a job is reverting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum RevertReason {
    Canceled,
    Failed(String),
}

impl RevertReason {
    fn text(&self) -> &str {
        match self {
            RevertReason::Canceled => "job canceled by user",
            RevertReason::Failed(e) => e,
        }
    }
}

/// Whether a function changed the record (and it must be written).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    Unchanged,
    Changed,
}

impl StoredJob {
    pub(crate) fn new(record: JobRecord) -> StoredJob {
        StoredJob {
            record,
            internal: Internal::default(),
        }
    }

    fn id(&self) -> JobId {
        self.record.id
    }

    pub(crate) fn status(&self) -> JobStatus {
        self.record.status
    }

    /// Whether `node` holds the claim it took at `epoch`.
    pub(crate) fn claimed_by(&self, node: NodeId, epoch: u64) -> bool {
        self.record.coordinator_id == Some(node) && self.internal.claim_epoch == epoch
    }
}

fn invalid(msg: String) -> JobError {
    JobError::InvalidTransition(msg)
}

// ---------------------------------------------------------------- user requests

/// `PAUSE JOB`: running or reverting jobs become `pause-requested` (the running node stops
/// them); already paused or pause-requested jobs are left alone.
pub(crate) fn request_pause(
    job: &mut StoredJob,
    reason: Option<String>,
) -> Result<Change, JobError> {
    match job.status() {
        JobStatus::PauseRequested | JobStatus::Paused => Ok(Change::Unchanged),
        JobStatus::Running | JobStatus::Reverting => {
            job.record.status = JobStatus::PauseRequested;
            job.internal.pause_reason = reason;
            Ok(Change::Changed)
        }
        s => Err(invalid(format!(
            "job with state {} cannot be requested to be paused",
            s.as_str()
        ))),
    }
}

/// `RESUME JOB`: a paused job goes back to `running` (or `reverting` if it was paused while
/// reverting); running or reverting jobs are left alone.
pub(crate) fn request_resume(job: &mut StoredJob) -> Result<Change, JobError> {
    match job.status() {
        JobStatus::Running | JobStatus::Reverting => Ok(Change::Unchanged),
        JobStatus::Paused => {
            // The error shown while paused after an error no longer describes a running job.
            if job
                .record
                .running_status
                .as_deref()
                .is_some_and(|s| s.starts_with(PAUSE_AFTER_ERROR_PREFIX))
            {
                job.record.running_status = None;
            }
            match &job.internal.revert {
                Some(reason) => {
                    job.record.status = JobStatus::Reverting;
                    job.record.error = match reason {
                        RevertReason::Canceled => None,
                        RevertReason::Failed(e) => Some(e.clone()),
                    };
                }
                None => {
                    job.record.status = JobStatus::Running;
                    job.record.error = None;
                }
            }
            job.internal.pause_reason = None;
            job.record.coordinator_id = None;
            Ok(Change::Changed)
        }
        s => Err(invalid(format!(
            "job with state {} cannot be resumed",
            s.as_str()
        ))),
    }
}

/// `CANCEL JOB`: running or paused jobs become `cancel-requested`; the node that claims it
/// stops the resumer and runs `on_fail_or_cancel`.
pub(crate) fn request_cancel(job: &mut StoredJob) -> Result<Change, JobError> {
    match job.status() {
        JobStatus::CancelRequested | JobStatus::Canceled => Ok(Change::Unchanged),
        JobStatus::Paused => match &job.internal.revert {
            // Departure from CockroachDB (which refuses both): a job paused while reverting
            // because of a cancel is already being canceled.
            Some(RevertReason::Canceled) => Ok(Change::Unchanged),
            Some(RevertReason::Failed(e)) => Err(invalid(format!(
                "job {} is paused and has non-nil FinalResumeError hence cannot be canceled and should be reverted: {e}",
                job.id()
            ))),
            None => {
                job.record.status = JobStatus::CancelRequested;
                job.record.coordinator_id = None;
                Ok(Change::Changed)
            }
        },
        JobStatus::Running => {
            job.record.status = JobStatus::CancelRequested;
            Ok(Change::Changed)
        }
        s => Err(invalid(format!(
            "job with state {} cannot be requested to be canceled",
            s.as_str()
        ))),
    }
}

// ---------------------------------------------------------------- the registry loop

/// What one node knows about a job besides its record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Observation {
    pub me: NodeId,
    /// Whether this node has a resumer registered for the job's type.
    pub has_resumer: bool,
    /// The claim epoch of the task running this job on this node, if any.
    pub local_epoch: Option<u64>,
    /// Liveness of the claiming node when it is another node (`None`: unknown or not asked).
    pub coordinator_live: Option<bool>,
    /// Whether this node's own liveness is comfortably valid. A node about to be considered
    /// dead claims nothing: other nodes may adopt its jobs any moment.
    pub self_live: bool,
}

/// Why a local task is told to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StopReason {
    PauseRequested,
    CancelRequested,
    /// The record no longer names this node and epoch.
    ClaimLost,
    /// The job is paused or finished: nothing should run it.
    NotRunnable,
}

/// What the registry loop does with one job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    Nothing,
    /// Claim (bump the epoch) and run the resumer.
    ClaimAndResume,
    /// Claim and run `on_fail_or_cancel` (the job is already reverting).
    ClaimAndRevert,
    /// Claim, move `cancel-requested` to `reverting`, and run `on_fail_or_cancel`.
    ClaimAndBeginRevert,
    /// `pause-requested` and nobody runs it: mark it paused.
    CompletePause,
    /// Fire the stop signal of the local task.
    StopLocal(StopReason),
}

/// Whether the job needs the liveness of its claiming node to be decided (only then does the
/// loop ask for it).
pub(crate) fn needs_coordinator_liveness(
    job: &StoredJob,
    me: NodeId,
    local_epoch: Option<u64>,
) -> bool {
    local_epoch.is_none()
        && !job.status().is_terminal()
        && job.status() != JobStatus::Paused
        && job.record.coordinator_id.is_some_and(|c| c != me)
}

/// The registry loop's decision for one job.
pub(crate) fn decide(job: &StoredJob, obs: &Observation) -> Action {
    let status = job.status();
    if let Some(epoch) = obs.local_epoch {
        if status.is_terminal() || status == JobStatus::Paused {
            return Action::StopLocal(StopReason::NotRunnable);
        }
        if !job.claimed_by(obs.me, epoch) {
            return Action::StopLocal(StopReason::ClaimLost);
        }
        return match status {
            JobStatus::PauseRequested => Action::StopLocal(StopReason::PauseRequested),
            JobStatus::CancelRequested => Action::StopLocal(StopReason::CancelRequested),
            _ => Action::Nothing,
        };
    }
    if status.is_terminal() || status == JobStatus::Paused {
        return Action::Nothing;
    }
    let may_take = match job.record.coordinator_id {
        None => true,
        Some(c) if c == obs.me => true,
        Some(_) => obs.coordinator_live == Some(false),
    };
    if !may_take {
        return Action::Nothing;
    }
    match status {
        JobStatus::PauseRequested => Action::CompletePause,
        _ if !obs.has_resumer || !obs.self_live => Action::Nothing,
        JobStatus::Running => Action::ClaimAndResume,
        JobStatus::Reverting => Action::ClaimAndRevert,
        JobStatus::CancelRequested => Action::ClaimAndBeginRevert,
        JobStatus::Paused | JobStatus::Canceled | JobStatus::Failed | JobStatus::Succeeded => {
            Action::Nothing
        }
    }
}

/// Applies a claiming action decided by [`decide`]: this node becomes the coordinator with a
/// new epoch, returned. `ClaimAndBeginRevert` also moves the job to `reverting`.
pub(crate) fn claim(job: &mut StoredJob, me: NodeId, action: Action) -> u64 {
    debug_assert!(
        matches!(
            action,
            Action::ClaimAndResume | Action::ClaimAndRevert | Action::ClaimAndBeginRevert
        ),
        "claim only for claiming actions, got {action:?}"
    );
    job.record.coordinator_id = Some(me);
    job.internal.claim_epoch += 1;
    if action == Action::ClaimAndBeginRevert {
        begin_revert(job, RevertReason::Canceled);
    }
    job.internal.claim_epoch
}

fn begin_revert(job: &mut StoredJob, reason: RevertReason) {
    job.record.status = JobStatus::Reverting;
    if let RevertReason::Failed(e) = &reason {
        job.record.error = Some(e.clone());
    }
    job.internal.revert = Some(reason);
    job.internal.revert_attempts = 0;
}

fn mark_paused(job: &mut StoredJob, error: Option<&str>) {
    job.record.status = JobStatus::Paused;
    job.record.coordinator_id = None;
    if let Some(e) = error {
        let text = format!("{PAUSE_AFTER_ERROR_PREFIX}{e}");
        job.record.running_status = Some(text.clone());
        job.record.error = Some(text.clone());
        job.internal.pause_reason = Some(text);
    }
}

/// `pause-requested` with no task running it: paused.
pub(crate) fn complete_pause(job: &mut StoredJob) -> Change {
    if job.status() != JobStatus::PauseRequested {
        return Change::Unchanged;
    }
    mark_paused(job, None);
    Change::Changed
}

fn finish(job: &mut StoredJob, status: JobStatus, error: Option<String>, now: Timestamp) {
    debug_assert!(status.is_terminal());
    job.record.status = status;
    job.record.error = error;
    job.record.finished = Some(now);
    job.record.coordinator_id = None;
    if status == JobStatus::Succeeded {
        job.record.fraction_completed = 1.0;
    }
}

/// What the task that ran a resumer (or its cleanup) does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// Stop running the job on this node.
    Exit,
    /// Run `on_fail_or_cancel`.
    Revert,
    /// `on_fail_or_cancel` failed; try again after a backoff (this many attempts so far).
    RetryRevert(u32),
}

/// A resumer returned `outcome` on `me`'s claim `epoch`; `stopped` says whether the registry
/// had fired its stop signal. After a stop, the record decides (pause-requested → paused,
/// cancel-requested → reverting); a still-`running` job is left as it is for its next
/// claimant, whatever the outcome (resumers commonly return `Succeeded` when stopped).
pub(crate) fn apply_resume_outcome(
    job: &mut StoredJob,
    me: NodeId,
    epoch: u64,
    outcome: &ResumeOutcome,
    stopped: bool,
    now: Timestamp,
) -> (Change, Next) {
    if !job.claimed_by(me, epoch) {
        return (Change::Unchanged, Next::Exit);
    }
    match job.status() {
        // Stopped by this node (shutdown, lost claim) while still running: the outcome is how
        // the resumer reacted to the stop, not a result.
        JobStatus::Running if stopped => (Change::Unchanged, Next::Exit),
        JobStatus::Running => match outcome {
            ResumeOutcome::Succeeded => {
                finish(job, JobStatus::Succeeded, None, now);
                (Change::Changed, Next::Exit)
            }
            ResumeOutcome::Failed(e) => {
                begin_revert(job, RevertReason::Failed(e.clone()));
                (Change::Changed, Next::Revert)
            }
            ResumeOutcome::PauseWithError(e) => {
                mark_paused(job, Some(e));
                (Change::Changed, Next::Exit)
            }
        },
        JobStatus::PauseRequested => {
            let error = match outcome {
                ResumeOutcome::PauseWithError(e) => Some(e.as_str()),
                _ => None,
            };
            mark_paused(job, error);
            (Change::Changed, Next::Exit)
        }
        JobStatus::CancelRequested => {
            begin_revert(job, RevertReason::Canceled);
            (Change::Changed, Next::Revert)
        }
        JobStatus::Reverting
        | JobStatus::Paused
        | JobStatus::Canceled
        | JobStatus::Failed
        | JobStatus::Succeeded => (Change::Unchanged, Next::Exit),
    }
}

/// `on_fail_or_cancel` returned `result` on `me`'s claim `epoch`. Success finishes the job
/// (`canceled`, or `failed` with the resumer's error); a failure is retried until
/// `max_attempts`, after which the job finishes anyway with the cleanup error appended.
pub(crate) fn apply_revert_outcome(
    job: &mut StoredJob,
    me: NodeId,
    epoch: u64,
    result: &Result<(), String>,
    stopped: bool,
    max_attempts: u32,
    now: Timestamp,
) -> (Change, Next) {
    if !job.claimed_by(me, epoch) {
        return (Change::Unchanged, Next::Exit);
    }
    match job.status() {
        // As for resumers: a stopped cleanup is re-run by the next claimant.
        JobStatus::Reverting if stopped => (Change::Unchanged, Next::Exit),
        JobStatus::Reverting => {
            let reason = job
                .internal
                .revert
                .clone()
                .unwrap_or(RevertReason::Canceled);
            let (status, error) = match &reason {
                RevertReason::Canceled => (JobStatus::Canceled, None),
                RevertReason::Failed(e) => (JobStatus::Failed, Some(e.clone())),
            };
            match result {
                Ok(()) => {
                    finish(job, status, error, now);
                    (Change::Changed, Next::Exit)
                }
                Err(cleanup) => {
                    job.internal.revert_attempts += 1;
                    let attempts = job.internal.revert_attempts;
                    if attempts >= max_attempts {
                        let text = format!(
                            "{}; cleanup failed after {attempts} attempts: {cleanup}",
                            error.as_deref().unwrap_or_else(|| reason.text())
                        );
                        finish(job, status, Some(text), now);
                        (Change::Changed, Next::Exit)
                    } else {
                        (Change::Changed, Next::RetryRevert(attempts))
                    }
                }
            }
        }
        JobStatus::PauseRequested => {
            mark_paused(job, None);
            (Change::Changed, Next::Exit)
        }
        JobStatus::Running
        | JobStatus::CancelRequested
        | JobStatus::Paused
        | JobStatus::Canceled
        | JobStatus::Failed
        | JobStatus::Succeeded => (Change::Unchanged, Next::Exit),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::JobType;

    const ME: NodeId = 1;
    const OTHER: NodeId = 2;

    const ALL: [JobStatus; 8] = [
        JobStatus::Running,
        JobStatus::PauseRequested,
        JobStatus::Paused,
        JobStatus::CancelRequested,
        JobStatus::Reverting,
        JobStatus::Canceled,
        JobStatus::Failed,
        JobStatus::Succeeded,
    ];

    fn job(status: JobStatus) -> StoredJob {
        StoredJob::new(JobRecord {
            id: 42,
            job_type: JobType::LogicalReplication,
            description: "d".into(),
            user_name: "root".into(),
            status,
            running_status: None,
            created: Timestamp::new(1, 0),
            finished: None,
            fraction_completed: 0.0,
            error: None,
            coordinator_id: None,
            payload: serde_json::Value::Null,
            progress: serde_json::Value::Null,
        })
    }

    fn claimed(status: JobStatus, node: NodeId, epoch: u64) -> StoredJob {
        let mut j = job(status);
        j.record.coordinator_id = Some(node);
        j.internal.claim_epoch = epoch;
        j
    }

    fn err_text(r: Result<Change, JobError>) -> String {
        match r {
            Err(e) => e.to_string(),
            Ok(c) => panic!("expected an error, got {c:?}"),
        }
    }

    #[test]
    fn pause_requests_for_every_status() {
        for s in ALL {
            let mut j = job(s);
            let r = request_pause(&mut j, Some("why".into()));
            match s {
                JobStatus::Running | JobStatus::Reverting => {
                    assert_eq!(r.expect("pausable"), Change::Changed, "{s:?}");
                    assert_eq!(j.record.status, JobStatus::PauseRequested);
                    assert_eq!(j.internal.pause_reason.as_deref(), Some("why"));
                }
                JobStatus::PauseRequested | JobStatus::Paused => {
                    assert_eq!(r.expect("idempotent"), Change::Unchanged, "{s:?}");
                    assert_eq!(j.record.status, s);
                }
                _ => assert_eq!(
                    err_text(r),
                    format!(
                        "job with state {} cannot be requested to be paused",
                        s.as_str()
                    )
                ),
            }
        }
    }

    #[test]
    fn resume_requests_for_every_status() {
        for s in ALL {
            let mut j = claimed(s, OTHER, 3);
            let r = request_resume(&mut j);
            match s {
                JobStatus::Paused => {
                    assert_eq!(r.expect("resumable"), Change::Changed);
                    assert_eq!(j.record.status, JobStatus::Running);
                    assert_eq!(j.record.coordinator_id, None, "any node may claim it");
                }
                JobStatus::Running | JobStatus::Reverting => {
                    assert_eq!(r.expect("idempotent"), Change::Unchanged, "{s:?}");
                }
                _ => assert_eq!(
                    err_text(r),
                    format!("job with state {} cannot be resumed", s.as_str())
                ),
            }
        }
    }

    #[test]
    fn cancel_requests_for_every_status() {
        for s in ALL {
            let mut j = claimed(s, OTHER, 3);
            let r = request_cancel(&mut j);
            match s {
                JobStatus::Running => {
                    assert_eq!(r.expect("cancelable"), Change::Changed);
                    assert_eq!(j.record.status, JobStatus::CancelRequested);
                    assert_eq!(
                        j.record.coordinator_id,
                        Some(OTHER),
                        "the running node keeps it to stop it"
                    );
                }
                JobStatus::Paused => {
                    assert_eq!(r.expect("cancelable"), Change::Changed);
                    assert_eq!(j.record.status, JobStatus::CancelRequested);
                }
                JobStatus::CancelRequested | JobStatus::Canceled => {
                    assert_eq!(r.expect("idempotent"), Change::Unchanged);
                }
                _ => assert_eq!(
                    err_text(r),
                    format!(
                        "job with state {} cannot be requested to be canceled",
                        s.as_str()
                    )
                ),
            }
        }
    }

    #[test]
    fn paused_while_reverting_resumes_into_reverting() {
        // A failing job starts reverting, gets paused, and resumes into reverting again.
        let mut j = claimed(JobStatus::Running, ME, 1);
        let (_, next) = apply_resume_outcome(
            &mut j,
            ME,
            1,
            &ResumeOutcome::Failed("boom".into()),
            false,
            Timestamp::new(5, 0),
        );
        assert_eq!(next, Next::Revert);
        assert_eq!(
            j.record.error.as_deref(),
            Some("boom"),
            "the error is visible while reverting"
        );
        assert_eq!(
            request_pause(&mut j, None).expect("pausable"),
            Change::Changed
        );
        let (_, next) = apply_revert_outcome(
            &mut j,
            ME,
            1,
            &Err("stopped".into()),
            true,
            10,
            Timestamp::new(6, 0),
        );
        assert_eq!(next, Next::Exit);
        assert_eq!(j.record.status, JobStatus::Paused);
        // Cancelling it is refused with CockroachDB's text.
        assert_eq!(
            err_text(request_cancel(&mut j.clone())),
            "job 42 is paused and has non-nil FinalResumeError hence cannot be canceled and should be reverted: boom"
        );
        assert_eq!(request_resume(&mut j).expect("resumable"), Change::Changed);
        assert_eq!(j.record.status, JobStatus::Reverting);
        assert_eq!(j.record.error.as_deref(), Some("boom"));
        // Finishing the cleanup fails the job with the original error.
        let epoch = claim(&mut j, OTHER, Action::ClaimAndRevert);
        let (_, next) = apply_revert_outcome(
            &mut j,
            OTHER,
            epoch,
            &Ok(()),
            false,
            10,
            Timestamp::new(9, 0),
        );
        assert_eq!(next, Next::Exit);
        assert_eq!(j.record.status, JobStatus::Failed);
        assert_eq!(j.record.error.as_deref(), Some("boom"));
        assert_eq!(j.record.finished, Some(Timestamp::new(9, 0)));
        assert_eq!(j.record.coordinator_id, None);
    }

    #[test]
    fn paused_while_reverting_a_cancel_accepts_another_cancel() {
        let mut j = claimed(JobStatus::CancelRequested, ME, 1);
        let (_, next) = apply_resume_outcome(
            &mut j,
            ME,
            1,
            &ResumeOutcome::Succeeded,
            true,
            Timestamp::new(5, 0),
        );
        // Succeeded while canceling: the cancel wins.
        assert_eq!(next, Next::Revert);
        request_pause(&mut j, None).expect("pausable");
        apply_revert_outcome(
            &mut j,
            ME,
            1,
            &Err("stopped".into()),
            true,
            10,
            Timestamp::new(6, 0),
        );
        assert_eq!(j.record.status, JobStatus::Paused);
        assert_eq!(
            request_cancel(&mut j).expect("already canceling"),
            Change::Unchanged
        );
        request_resume(&mut j).expect("resumable");
        assert_eq!(j.record.status, JobStatus::Reverting);
        assert_eq!(j.record.error, None);
    }

    fn obs(
        local_epoch: Option<u64>,
        coordinator_live: Option<bool>,
        has_resumer: bool,
        self_live: bool,
    ) -> Observation {
        Observation {
            me: ME,
            has_resumer,
            local_epoch,
            coordinator_live,
            self_live,
        }
    }

    /// Every (status, claim, local task, liveness, resumer, own liveness) combination against
    /// the rules written out independently.
    #[test]
    fn decide_exhaustively() {
        let coordinators = [None, Some(ME), Some(OTHER)];
        let locals = [None, Some(7u64), Some(8u64)];
        let lives = [None, Some(true), Some(false)];
        let mut checked = 0;
        for s in ALL {
            for coordinator in coordinators {
                for local in locals {
                    for live in lives {
                        for has_resumer in [false, true] {
                            for self_live in [false, true] {
                                let mut j = job(s);
                                j.record.coordinator_id = coordinator;
                                j.internal.claim_epoch = 7;
                                let action = decide(&j, &obs(local, live, has_resumer, self_live));
                                let runnable = !s.is_terminal() && s != JobStatus::Paused;
                                let expected = if let Some(epoch) = local {
                                    if !runnable {
                                        Action::StopLocal(StopReason::NotRunnable)
                                    } else if coordinator != Some(ME) || epoch != 7 {
                                        Action::StopLocal(StopReason::ClaimLost)
                                    } else if s == JobStatus::PauseRequested {
                                        Action::StopLocal(StopReason::PauseRequested)
                                    } else if s == JobStatus::CancelRequested {
                                        Action::StopLocal(StopReason::CancelRequested)
                                    } else {
                                        Action::Nothing
                                    }
                                } else if !runnable
                                    || (coordinator == Some(OTHER) && live != Some(false))
                                {
                                    Action::Nothing
                                } else if s == JobStatus::PauseRequested {
                                    Action::CompletePause
                                } else if !has_resumer || !self_live {
                                    Action::Nothing
                                } else {
                                    match s {
                                        JobStatus::Running => Action::ClaimAndResume,
                                        JobStatus::Reverting => Action::ClaimAndRevert,
                                        JobStatus::CancelRequested => Action::ClaimAndBeginRevert,
                                        _ => unreachable!("covered above"),
                                    }
                                };
                                assert_eq!(
                                    action, expected,
                                    "status {s:?} coordinator {coordinator:?} local {local:?} live {live:?} resumer {has_resumer} self_live {self_live}"
                                );
                                let needs = needs_coordinator_liveness(&j, ME, local);
                                assert_eq!(
                                    needs,
                                    local.is_none() && runnable && coordinator == Some(OTHER)
                                );
                                checked += 1;
                            }
                        }
                    }
                }
            }
        }
        assert_eq!(checked, 8 * 3 * 3 * 3 * 2 * 2);
    }

    #[test]
    fn claims_bump_the_epoch_and_fence_old_claimants() {
        let mut j = claimed(JobStatus::Running, OTHER, 4);
        let epoch = claim(&mut j, ME, Action::ClaimAndResume);
        assert_eq!(epoch, 5);
        assert!(j.claimed_by(ME, 5));
        // The old claimant's outcome is ignored.
        let (change, next) = apply_resume_outcome(
            &mut j,
            OTHER,
            4,
            &ResumeOutcome::Succeeded,
            false,
            Timestamp::new(1, 0),
        );
        assert_eq!((change, next), (Change::Unchanged, Next::Exit));
        assert_eq!(j.record.status, JobStatus::Running);
        // Our own stale epoch (we lost and re-took the claim) is ignored too.
        let again = claim(&mut j, ME, Action::ClaimAndResume);
        let (change, _) = apply_resume_outcome(
            &mut j,
            ME,
            epoch,
            &ResumeOutcome::Failed("x".into()),
            false,
            Timestamp::new(1, 0),
        );
        assert_eq!(change, Change::Unchanged);
        assert_eq!(again, 6);
    }

    #[test]
    fn claim_and_begin_revert_moves_to_reverting() {
        let mut j = job(JobStatus::CancelRequested);
        let epoch = claim(&mut j, ME, Action::ClaimAndBeginRevert);
        assert_eq!(j.record.status, JobStatus::Reverting);
        assert_eq!(j.internal.revert, Some(RevertReason::Canceled));
        let (_, next) =
            apply_revert_outcome(&mut j, ME, epoch, &Ok(()), false, 10, Timestamp::new(3, 0));
        assert_eq!(next, Next::Exit);
        assert_eq!(j.record.status, JobStatus::Canceled);
        assert_eq!(j.record.error, None);
        assert_eq!(j.record.finished, Some(Timestamp::new(3, 0)));
    }

    /// Every (status, outcome, stopped) combination of a resumer returning.
    #[test]
    fn resume_outcomes_exhaustively() {
        let outcomes = || {
            [
                ResumeOutcome::Succeeded,
                ResumeOutcome::Failed("bad".into()),
                ResumeOutcome::PauseWithError("flaky".into()),
            ]
        };
        let now = Timestamp::new(77, 0);
        for s in ALL {
            for outcome in outcomes() {
                for stopped in [false, true] {
                    let mut j = claimed(s, ME, 1);
                    let before = j.clone();
                    let (change, next) =
                        apply_resume_outcome(&mut j, ME, 1, &outcome, stopped, now);
                    let ctx = format!("{s:?} {outcome:?} stopped={stopped}");
                    match (s, &outcome) {
                        (JobStatus::Running, _) if stopped => {
                            assert_eq!((change, next), (Change::Unchanged, Next::Exit), "{ctx}");
                            assert_eq!(j, before, "{ctx}: left for the next claimant");
                        }
                        (JobStatus::Running, ResumeOutcome::Succeeded) => {
                            assert_eq!((change, next), (Change::Changed, Next::Exit), "{ctx}");
                            assert_eq!(j.record.status, JobStatus::Succeeded);
                            assert_eq!(j.record.finished, Some(now));
                            assert_eq!(j.record.fraction_completed, 1.0);
                            assert_eq!(j.record.coordinator_id, None);
                        }
                        (JobStatus::Running, ResumeOutcome::Failed(_)) => {
                            assert_eq!((change, next), (Change::Changed, Next::Revert), "{ctx}");
                            assert_eq!(j.record.status, JobStatus::Reverting);
                            assert_eq!(j.record.error.as_deref(), Some("bad"));
                            assert_eq!(
                                j.record.coordinator_id,
                                Some(ME),
                                "the same task runs the cleanup"
                            );
                        }
                        (JobStatus::Running, ResumeOutcome::PauseWithError(_)) => {
                            assert_eq!((change, next), (Change::Changed, Next::Exit), "{ctx}");
                            assert_eq!(j.record.status, JobStatus::Paused);
                            assert_eq!(
                                j.record.error.as_deref(),
                                Some("pausing after error: flaky")
                            );
                            assert_eq!(
                                j.record.running_status.as_deref(),
                                Some("pausing after error: flaky")
                            );
                            assert_eq!(j.record.coordinator_id, None);
                            assert_eq!(j.record.finished, None);
                        }
                        (JobStatus::PauseRequested, _) => {
                            assert_eq!((change, next), (Change::Changed, Next::Exit), "{ctx}");
                            assert_eq!(j.record.status, JobStatus::Paused);
                            assert_eq!(j.record.coordinator_id, None);
                        }
                        (JobStatus::CancelRequested, _) => {
                            assert_eq!((change, next), (Change::Changed, Next::Revert), "{ctx}");
                            assert_eq!(j.record.status, JobStatus::Reverting);
                            assert_eq!(j.internal.revert, Some(RevertReason::Canceled));
                        }
                        _ => {
                            assert_eq!((change, next), (Change::Unchanged, Next::Exit), "{ctx}");
                            assert_eq!(j, before);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn pause_with_error_then_resume_clears_the_error() {
        let mut j = claimed(JobStatus::Running, ME, 1);
        apply_resume_outcome(
            &mut j,
            ME,
            1,
            &ResumeOutcome::PauseWithError("e1".into()),
            false,
            Timestamp::ZERO,
        );
        assert_eq!(request_resume(&mut j).expect("resumable"), Change::Changed);
        assert_eq!(j.record.status, JobStatus::Running);
        assert_eq!(j.record.error, None);
        assert_eq!(j.record.running_status, None);
        // A running status the resumer set itself survives a plain pause/resume.
        j.record.running_status = Some("replicating".into());
        request_pause(&mut j, None).expect("pausable");
        complete_pause(&mut j);
        request_resume(&mut j).expect("resumable");
        assert_eq!(j.record.running_status.as_deref(), Some("replicating"));
    }

    /// Every (status, result, stopped) combination of `on_fail_or_cancel` returning.
    #[test]
    fn revert_outcomes_exhaustively() {
        let now = Timestamp::new(88, 0);
        for s in ALL {
            for reason in [RevertReason::Canceled, RevertReason::Failed("orig".into())] {
                for result in [Ok(()), Err("cleanup broke".to_string())] {
                    for stopped in [false, true] {
                        let mut j = claimed(s, ME, 1);
                        j.internal.revert = Some(reason.clone());
                        let before = j.clone();
                        let (change, next) =
                            apply_revert_outcome(&mut j, ME, 1, &result, stopped, 3, now);
                        let ctx = format!("{s:?} {reason:?} {result:?} stopped={stopped}");
                        let terminal = match reason {
                            RevertReason::Canceled => JobStatus::Canceled,
                            RevertReason::Failed(_) => JobStatus::Failed,
                        };
                        match (s, &result) {
                            (JobStatus::Reverting, _) if stopped => {
                                assert_eq!((change, next), (Change::Unchanged, Next::Exit));
                                assert_eq!(j, before, "{ctx}");
                            }
                            (JobStatus::Reverting, Ok(())) => {
                                assert_eq!((change, next), (Change::Changed, Next::Exit), "{ctx}");
                                assert_eq!(j.record.status, terminal);
                                assert_eq!(j.record.finished, Some(now));
                            }
                            (JobStatus::Reverting, Err(_)) => {
                                assert_eq!(
                                    (change, next),
                                    (Change::Changed, Next::RetryRevert(1)),
                                    "{ctx}"
                                );
                                assert_eq!(j.record.status, JobStatus::Reverting);
                            }
                            (JobStatus::PauseRequested, _) => {
                                assert_eq!((change, next), (Change::Changed, Next::Exit), "{ctx}");
                                assert_eq!(j.record.status, JobStatus::Paused);
                                assert_eq!(
                                    j.internal.revert,
                                    Some(reason.clone()),
                                    "kept for the resume"
                                );
                            }
                            _ => {
                                assert_eq!(
                                    (change, next),
                                    (Change::Unchanged, Next::Exit),
                                    "{ctx}"
                                );
                                assert_eq!(j, before);
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn cleanup_gives_up_after_max_attempts() {
        let mut j = claimed(JobStatus::Running, ME, 1);
        apply_resume_outcome(
            &mut j,
            ME,
            1,
            &ResumeOutcome::Failed("orig".into()),
            false,
            Timestamp::ZERO,
        );
        let err = Err("no".to_string());
        assert_eq!(
            apply_revert_outcome(&mut j, ME, 1, &err, false, 3, Timestamp::ZERO).1,
            Next::RetryRevert(1)
        );
        assert_eq!(
            apply_revert_outcome(&mut j, ME, 1, &err, false, 3, Timestamp::ZERO).1,
            Next::RetryRevert(2)
        );
        assert_eq!(
            apply_revert_outcome(&mut j, ME, 1, &err, false, 3, Timestamp::new(4, 0)).1,
            Next::Exit
        );
        assert_eq!(j.record.status, JobStatus::Failed);
        assert_eq!(
            j.record.error.as_deref(),
            Some("orig; cleanup failed after 3 attempts: no")
        );

        let mut c = claimed(JobStatus::Reverting, ME, 1);
        c.internal.revert = Some(RevertReason::Canceled);
        assert_eq!(
            apply_revert_outcome(&mut c, ME, 1, &err, false, 1, Timestamp::ZERO).1,
            Next::Exit
        );
        assert_eq!(c.record.status, JobStatus::Canceled);
        assert_eq!(
            c.record.error.as_deref(),
            Some("job canceled by user; cleanup failed after 1 attempts: no")
        );
    }

    #[test]
    fn complete_pause_only_from_pause_requested() {
        for s in ALL {
            let mut j = claimed(s, ME, 1);
            let change = complete_pause(&mut j);
            if s == JobStatus::PauseRequested {
                assert_eq!(change, Change::Changed);
                assert_eq!(j.record.status, JobStatus::Paused);
                assert_eq!(j.record.coordinator_id, None);
            } else {
                assert_eq!(change, Change::Unchanged, "{s:?}");
            }
        }
    }

    #[test]
    fn stored_job_round_trips_and_reads_records_without_bookkeeping() {
        let mut j = claimed(JobStatus::Reverting, ME, 9);
        j.internal.revert = Some(RevertReason::Failed("e".into()));
        let bytes = serde_json::to_vec(&j).expect("serializable");
        let back: StoredJob = serde_json::from_slice(&bytes).expect("round trip");
        assert_eq!(back, j);
        // A bare JobRecord (no bookkeeping) reads with defaults.
        let bare = serde_json::to_vec(&j.record).expect("serializable");
        let back: StoredJob = serde_json::from_slice(&bare).expect("bare record");
        assert_eq!(back.record, j.record);
        assert_eq!(back.internal, Internal::default());
    }
}

//! The LDR job's retry policy around its replication flow (CockroachDB's
//! `ingestWithRetries`): a failed flow is retried with exponential backoff from 250ms to 1m;
//! whenever the job's replicated time advanced since the last failure the budget resets (and
//! the next retry is immediate); after 30 retries without progress the job pauses with the
//! error ("pausing after error: …"). Permanent errors (e.g. the source stream is INACTIVE)
//! bypass this and fail the job; errors that cannot resolve by waiting (corrupt data, see
//! [`IngestError::is_retryable`]) pause it at once. [`JobRetry::on_flow_error`] makes that
//! decision; the LDR job's resumer acts on it.
//!
//! ```
//! use std::time::Duration;
//! use ldr_ingest::retry::{JobRetry, RetryDecision, RetryPolicy};
//! use ldr_types::Timestamp;
//! let mut r = JobRetry::new(RetryPolicy::default());
//! assert_eq!(r.on_retryable_error(Timestamp::ZERO, "boom"), RetryDecision::Retry { backoff: Duration::from_millis(250), attempt: 1 });
//! assert_eq!(r.on_retryable_error(Timestamp::ZERO, "boom"), RetryDecision::Retry { backoff: Duration::from_millis(500), attempt: 2 });
//! // Progress resets the budget: retry at once.
//! assert_eq!(r.on_retryable_error(Timestamp::new(5, 0), "boom"), RetryDecision::Retry { backoff: Duration::ZERO, attempt: 0 });
//! ```

use std::time::Duration;

use ldr_types::Timestamp;

use crate::error::IngestError;

/// Backoff parameters (CockroachDB's `retry.Options` for LDR, without jitter: callers may add
/// ±15% themselves).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    pub multiplier: f64,
    /// Retries after the first attempt before giving up.
    pub max_retries: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            initial_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(60),
            multiplier: 2.0,
            max_retries: 30,
        }
    }
}

impl RetryPolicy {
    /// The wait before retry number `attempt` (0-based).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = self.multiplier.max(1.0).powi(attempt.min(1000) as i32);
        let secs =
            (self.initial_backoff.as_secs_f64() * factor).min(self.max_backoff.as_secs_f64());
        Duration::from_secs_f64(secs)
    }
}

/// What to do after a flow failed with a retryable error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetryDecision {
    /// Run the flow again after `backoff` (`attempt`: retries since the last reset; 0 right
    /// after progress).
    Retry { backoff: Duration, attempt: u32 },
    /// Out of retries: pause the job with this error (the registry shows it as
    /// "pausing after error: <error>").
    Pause { error: String },
}

/// What the job does after a failed flow attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlowFailureAction {
    /// Fail the job with this error (it is permanent).
    Fail { error: String },
    /// Pause the job with this error: retrying cannot help, or the retries are exhausted.
    Pause { error: String },
    /// Run the flow again after `backoff`.
    Retry { backoff: Duration },
}

/// The retry state of one run of the LDR job's resumer. Create it when the first attempt
/// starts; after each failure call [`JobRetry::on_retryable_error`] (it watches replicated
/// time itself), or [`JobRetry::reset`] on progress plus [`JobRetry::next_backoff`].
#[derive(Debug, Clone)]
pub struct JobRetry {
    policy: RetryPolicy,
    /// Retries since the last reset.
    attempt: u32,
    /// The next retry is immediate (the budget was just reset).
    reset: bool,
    last_replicated_time: Timestamp,
}

impl Default for JobRetry {
    fn default() -> Self {
        JobRetry::new(RetryPolicy::default())
    }
}

impl JobRetry {
    pub fn new(policy: RetryPolicy) -> JobRetry {
        JobRetry {
            policy,
            attempt: 0,
            reset: false,
            last_replicated_time: Timestamp::ZERO,
        }
    }

    /// Retries since the last reset.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Progress was made: the budget restarts and the next retry is immediate. (Use this with
    /// [`JobRetry::next_backoff`] when the caller tracks replicated time itself.)
    pub fn reset(&mut self) {
        self.attempt = 0;
        self.reset = true;
    }

    /// The wait before the next retry, or `None` when the retries are exhausted (pause).
    pub fn next_backoff(&mut self) -> Option<Duration> {
        if self.reset {
            self.reset = false;
            return Some(Duration::ZERO);
        }
        if self.attempt >= self.policy.max_retries {
            return None;
        }
        let backoff = self.policy.backoff(self.attempt);
        self.attempt += 1;
        Some(backoff)
    }

    /// A flow attempt failed with `error`; `progressed`: the job's replicated time advanced
    /// during the attempt. A permanent error fails the job and one that cannot resolve by
    /// waiting pauses it, without using the retry budget; anything else is retried.
    pub fn on_flow_error(&mut self, error: &IngestError, progressed: bool) -> FlowFailureAction {
        if error.is_permanent() {
            return FlowFailureAction::Fail {
                error: error.to_string(),
            };
        }
        if !error.is_retryable() {
            return FlowFailureAction::Pause {
                error: error.to_string(),
            };
        }
        if progressed {
            self.reset();
        }
        match self.next_backoff() {
            Some(backoff) => FlowFailureAction::Retry { backoff },
            None => FlowFailureAction::Pause {
                error: error.to_string(),
            },
        }
    }

    /// A flow attempt failed with a retryable `error`; `replicated_time` is the job's persisted
    /// replicated time now.
    pub fn on_retryable_error(&mut self, replicated_time: Timestamp, error: &str) -> RetryDecision {
        if self.last_replicated_time < replicated_time {
            self.last_replicated_time = replicated_time;
            self.reset();
        }
        match self.next_backoff() {
            Some(backoff) => RetryDecision::Retry {
                backoff,
                attempt: self.attempt,
            },
            None => RetryDecision::Pause {
                error: error.to_string(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_and_next_backoff_interface() {
        let mut r = JobRetry::default();
        assert_eq!(r.next_backoff(), Some(Duration::from_millis(250)));
        assert_eq!(r.next_backoff(), Some(Duration::from_millis(500)));
        r.reset();
        assert_eq!(
            r.next_backoff(),
            Some(Duration::ZERO),
            "immediately after progress"
        );
        assert_eq!(r.next_backoff(), Some(Duration::from_millis(250)));
        for _ in 1..30 {
            assert!(r.next_backoff().is_some());
        }
        assert_eq!(r.next_backoff(), None);
    }

    #[test]
    fn a_cause_that_cannot_resolve_is_not_retried() {
        // A corrupt stored value, kept as the KV error it is: the job pauses on the first
        // failure instead of retrying (30 times, or forever while other spans progress).
        let corruption =
            IngestError::Kv(ldr_kv::KvError::Storage(ldr_kv::StorageError::Corruption {
                key: "/Table/104/1/7".into(),
                detail: "checksum mismatch".into(),
            }));
        let mut r = JobRetry::default();
        for progressed in [false, true] {
            assert_eq!(
                r.on_flow_error(&corruption, progressed),
                FlowFailureAction::Pause {
                    error: corruption.to_string()
                }
            );
        }
        assert_eq!(r.attempt(), 0, "the retry budget is untouched");
        // The same through a processor on another node (the kind travels over gRPC).
        let remote =
            IngestError::from_remote(&tonic::Status::from(corruption)).context("processor 1");
        assert!(matches!(
            r.on_flow_error(&remote, false),
            FlowFailureAction::Pause { .. }
        ));
        // A node that is down is retried with backoff; a permanent error fails the job.
        let down = IngestError::Kv(ldr_kv::KvError::Rpc("connection refused".into()));
        assert_eq!(
            r.on_flow_error(&down, false),
            FlowFailureAction::Retry {
                backoff: Duration::from_millis(250)
            }
        );
        assert_eq!(
            r.on_flow_error(&down, true),
            FlowFailureAction::Retry {
                backoff: Duration::ZERO
            },
            "progress resets the budget"
        );
        assert_eq!(
            r.on_flow_error(&IngestError::Permanent("stream inactive".into()), false),
            FlowFailureAction::Fail {
                error: "stream inactive".into()
            }
        );
    }

    #[test]
    fn retryable_errors_pause_once_the_budget_is_spent() {
        let mut r = JobRetry::default();
        let down = IngestError::Retryable("source unreachable".into());
        for i in 0..30 {
            assert!(
                matches!(
                    r.on_flow_error(&down, false),
                    FlowFailureAction::Retry { .. }
                ),
                "retry {i}"
            );
        }
        assert_eq!(
            r.on_flow_error(&down, false),
            FlowFailureAction::Pause {
                error: "source unreachable".into()
            }
        );
    }

    #[test]
    fn backoff_doubles_to_one_minute() {
        let p = RetryPolicy::default();
        let ms: Vec<u128> = (0..12).map(|a| p.backoff(a).as_millis()).collect();
        assert_eq!(
            ms,
            vec![
                250, 500, 1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000, 60000, 60000
            ]
        );
        assert_eq!(p.backoff(u32::MAX), Duration::from_secs(60));
    }

    #[test]
    fn thirty_retries_without_progress_then_pause() {
        let mut r = JobRetry::new(RetryPolicy::default());
        let mut total = Duration::ZERO;
        for i in 1..=30 {
            match r.on_retryable_error(Timestamp::ZERO, "e") {
                RetryDecision::Retry { backoff, attempt } => {
                    assert_eq!(attempt, i);
                    total += backoff;
                }
                d => panic!("retry {i}: {d:?}"),
            }
        }
        assert_eq!(
            r.on_retryable_error(Timestamp::ZERO, "source unreachable"),
            RetryDecision::Pause {
                error: "source unreachable".into()
            }
        );
        // 250ms..32s (8 steps) + 22 × 60s.
        assert_eq!(
            total,
            Duration::from_millis(63_750) + Duration::from_secs(22 * 60)
        );
    }

    #[test]
    fn progress_resets_the_budget_each_time() {
        let mut r = JobRetry::new(RetryPolicy::default());
        for _ in 0..30 {
            r.on_retryable_error(Timestamp::new(1, 0), "e");
        }
        // 29 retries since the reset at the first call: one more allowed, then pause.
        assert!(matches!(
            r.on_retryable_error(Timestamp::new(1, 0), "e"),
            RetryDecision::Retry { attempt: 30, .. }
        ));
        assert!(matches!(
            r.on_retryable_error(Timestamp::new(1, 0), "e"),
            RetryDecision::Pause { .. }
        ));
        // Progress (even after giving up once) resets: immediate retry, then the ladder again.
        assert_eq!(
            r.on_retryable_error(Timestamp::new(2, 0), "e"),
            RetryDecision::Retry {
                backoff: Duration::ZERO,
                attempt: 0
            }
        );
        assert_eq!(
            r.on_retryable_error(Timestamp::new(2, 0), "e"),
            RetryDecision::Retry {
                backoff: Duration::from_millis(250),
                attempt: 1
            }
        );
        // Replicated time going backwards (a stale read) does not reset.
        assert_eq!(
            r.on_retryable_error(Timestamp::new(1, 0), "e"),
            RetryDecision::Retry {
                backoff: Duration::from_millis(500),
                attempt: 2
            }
        );
    }
}

//! What happens to a row that failed to apply on its own: retry it later (purgatory), send it
//! to the dead letter queue, or fail the processor (CockroachDB's `shouldRetryLater`,
//! `canDlqError` and the DLQ row format).
//!
//! Only errors that carry a SQLSTATE outside the internal/retryable classes (57, 58, 25, 2D,
//! 40, XX, 58C) may be dead-lettered: a row that failed because a node was unavailable must
//! not be dropped into the DLQ. Such errors fail the flow instead; the job retries with backoff
//! and eventually pauses with the error ("the job never pauses because of DLQ writes", but it
//! does pause instead of DLQ'ing an internal error).
//!
//! ```
//! use ldr_ingest::dlq_policy::{RetryEligibility, RowFailure, RowFailureAction, on_row_failure};
//! let f = RowFailure { message: "duplicate key value violates unique constraint \"t_v_key\"", pgcode: Some("23505"), injected: false };
//! match on_row_failure(&f, RetryEligibility::SizeLimit) {
//!     RowFailureAction::Dlq { reason, .. } => {
//!         assert_eq!(reason, "duplicate key value violates unique constraint \"t_v_key\" (size limit)")
//!     }
//!     other => panic!("{other:?}"),
//! }
//! ```

/// Whether a failed row may still be retried, and if not, why (the DLQ reason suffix).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RetryEligibility {
    /// "allowed": keep it for the purgatory.
    Allowed,
    /// "size limit": the node-wide retry queue is full (or retrying is disabled).
    SizeLimit,
    /// "age limit": it waited longer than `retry_queue_duration`.
    AgeLimit,
    /// "not retryable": the error cannot resolve by waiting.
    NotRetryable,
}

impl RetryEligibility {
    pub fn as_str(&self) -> &'static str {
        match self {
            RetryEligibility::Allowed => "allowed",
            RetryEligibility::SizeLimit => "size limit",
            RetryEligibility::AgeLimit => "age limit",
            RetryEligibility::NotRetryable => "not retryable",
        }
    }
}

impl std::fmt::Display for RetryEligibility {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// SQLSTATE class prefixes that mean an internal or retryable problem (never dead-lettered).
pub const NON_DLQ_PGCODE_PREFIXES: [&str; 7] = ["57", "58", "25", "2D", "40", "XX", "58C"];

/// Why an error may not go to the DLQ (`None`: it may). CockroachDB's `canDlqError` texts.
pub fn dlq_refusal(pgcode: Option<&str>) -> Option<&'static str> {
    match pgcode {
        None => Some("can only DLQ errors with pg codes"),
        Some(code) => {
            let code = code.to_ascii_uppercase();
            NON_DLQ_PGCODE_PREFIXES
                .iter()
                .any(|p| code.starts_with(p))
                .then_some("unable to DLQ pgcode that indicates an internal or retryable error")
        }
    }
}

/// Whether an error with this SQLSTATE may be dead-lettered.
pub fn can_dlq(pgcode: Option<&str>) -> bool {
    dlq_refusal(pgcode).is_none()
}

/// `shouldRetryLater`: a row keeps the flush's eligibility unless it is `Allowed`, in which
/// case injected test failures are treated as too old (straight to the DLQ) and everything
/// else may be retried.
pub fn should_retry_later(eligibility: RetryEligibility, injected: bool) -> RetryEligibility {
    match eligibility {
        RetryEligibility::Allowed if injected => RetryEligibility::AgeLimit,
        e => e,
    }
}

/// One row's failure as the applier saw it.
#[derive(Debug, Clone, Copy)]
pub struct RowFailure<'a> {
    /// The error text (the DLQ reason's prefix).
    pub message: &'a str,
    /// Its SQLSTATE, if it came from the SQL layer.
    pub pgcode: Option<&'a str>,
    /// A synthetic failure injected by a test knob.
    pub injected: bool,
}

/// What to do with a row that failed on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowFailureAction {
    /// Leave it unprocessed: it goes to (or stays in) the purgatory.
    Retry,
    /// Write it to the DLQ with this reason; count it under `eligibility`.
    Dlq {
        eligibility: RetryEligibility,
        reason: String,
    },
    /// The error cannot be dead-lettered: fail the processor with this error.
    FailFlow(String),
}

/// Decides a single row's fate. `eligibility` is the flush's (purgatory's) eligibility.
pub fn on_row_failure(failure: &RowFailure<'_>, eligibility: RetryEligibility) -> RowFailureAction {
    let eligibility = should_retry_later(eligibility, failure.injected);
    if eligibility == RetryEligibility::Allowed {
        return RowFailureAction::Retry;
    }
    match dlq_refusal(failure.pgcode) {
        Some(refusal) => RowFailureAction::FailFlow(format!(
            "dlq eligibility {eligibility}: {refusal}: {}",
            failure.message
        )),
        None => RowFailureAction::Dlq {
            eligibility,
            reason: dlq_reason(failure.message, eligibility),
        },
    }
}

/// The `dlq_reason` column: `"<error> (<eligibility>)"`.
pub fn dlq_reason(error: &str, eligibility: RetryEligibility) -> String {
    format!("{error} ({eligibility})")
}

/// The `mutation_type` column: `delete` for deletes, `insert` otherwise (updates are recorded
/// as inserts, as in CockroachDB).
pub fn mutation_type(is_delete: bool) -> &'static str {
    if is_delete { "delete" } else { "insert" }
}

/// The schema holding DLQ tables.
pub const DLQ_SCHEMA: &str = "crdb_replication";

/// The DLQ table name (unquoted) for a destination table: `dlq_<table_id>_<schema>_<table>`.
pub fn dlq_table_name(dest_table_id: u32, schema: &str, table: &str) -> String {
    format!("dlq_{dest_table_id}_{schema}_{table}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [RetryEligibility; 4] = [
        RetryEligibility::Allowed,
        RetryEligibility::SizeLimit,
        RetryEligibility::AgeLimit,
        RetryEligibility::NotRetryable,
    ];

    #[test]
    fn eligibility_strings() {
        let s: Vec<&str> = ALL.iter().map(|e| e.as_str()).collect();
        assert_eq!(
            s,
            vec!["allowed", "size limit", "age limit", "not retryable"]
        );
    }

    #[test]
    fn pgcode_classes() {
        for code in [
            "57014", "57P01", "58000", "58030", "58C01", "25001", "25P02", "2D000", "40001",
            "40P01", "XX000", "xx001",
        ] {
            assert!(!can_dlq(Some(code)), "{code} is internal or retryable");
        }
        for code in [
            "23505", "23503", "23514", "23502", "22001", "42P01", "0A000", "P0001", "2BP01",
            "2F000",
        ] {
            assert!(can_dlq(Some(code)), "{code} may be dead-lettered");
        }
        assert!(!can_dlq(None));
        assert_eq!(dlq_refusal(None), Some("can only DLQ errors with pg codes"));
    }

    #[test]
    fn should_retry_later_for_every_case() {
        for e in ALL {
            for injected in [false, true] {
                let got = should_retry_later(e, injected);
                let expected = if e == RetryEligibility::Allowed && injected {
                    RetryEligibility::AgeLimit
                } else {
                    e
                };
                assert_eq!(got, expected, "{e:?} injected={injected}");
            }
        }
    }

    #[test]
    fn row_failure_actions_exhaustively() {
        let codes = [None, Some("23505"), Some("40001")];
        for e in ALL {
            for injected in [false, true] {
                for code in codes {
                    let f = RowFailure {
                        message: "boom",
                        pgcode: code,
                        injected,
                    };
                    let action = on_row_failure(&f, e);
                    let eff = should_retry_later(e, injected);
                    let ctx = format!("{e:?} injected={injected} code={code:?}");
                    if eff == RetryEligibility::Allowed {
                        assert_eq!(action, RowFailureAction::Retry, "{ctx}");
                    } else if code == Some("23505") {
                        assert_eq!(
                            action,
                            RowFailureAction::Dlq {
                                eligibility: eff,
                                reason: format!("boom ({})", eff.as_str())
                            },
                            "{ctx}"
                        );
                    } else {
                        let refusal = dlq_refusal(code).expect("refused");
                        assert_eq!(
                            action,
                            RowFailureAction::FailFlow(format!(
                                "dlq eligibility {}: {refusal}: boom",
                                eff.as_str()
                            )),
                            "{ctx}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn row_format() {
        assert_eq!(dlq_reason("x", RetryEligibility::AgeLimit), "x (age limit)");
        assert_eq!(mutation_type(true), "delete");
        assert_eq!(mutation_type(false), "insert");
        assert_eq!(dlq_table_name(104, "public", "t"), "dlq_104_public_t");
    }
}

//! Accounting: every change the source emitted is, on the destination, either applied
//! (LWW losers included), or in the DLQ, and nothing is left in the retry queue.
//!
//! The destination's counters come from `/metrics` (summed over its nodes), read before and
//! after a run: `logical_replication_events_ingested` (applied, LWW losers included),
//! `logical_replication_events_dlqed`, `logical_replication_kv_update_too_old` (LWW losses)
//! and the gauge `logical_replication_retry_queue_events`. `emitted` is what the caller
//! knows was written on the source (acknowledged rows of its workloads). Delivery is at least
//! once, so counters may exceed `emitted` but never fall short. Counters live in process
//! memory: if a destination node restarted in between, a counter can go down and the check
//! is inconclusive (reported as such, not as a pass).

use serde::{Deserialize, Serialize};

use crate::cluster::Cluster;
use crate::error::{Result, SimError};
use crate::metrics::Metrics;

pub const EVENTS_INGESTED: &str = "logical_replication_events_ingested";
pub const EVENTS_DLQED: &str = "logical_replication_events_dlqed";
pub const KV_UPDATE_TOO_OLD: &str = "logical_replication_kv_update_too_old";
pub const RETRY_QUEUE_EVENTS: &str = "logical_replication_retry_queue_events";

/// The destination counters that matter, summed over nodes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ReplicationCounters {
    pub events_ingested: f64,
    pub events_dlqed: f64,
    pub lww_losses: f64,
    pub retry_queue_events: f64,
}

impl ReplicationCounters {
    /// Reads the counters from a (merged) scrape; absent metrics count as zero.
    pub fn from_metrics(metrics: &Metrics) -> ReplicationCounters {
        ReplicationCounters {
            events_ingested: metrics.counter(EVENTS_INGESTED).unwrap_or(0.0),
            events_dlqed: metrics.counter(EVENTS_DLQED).unwrap_or(0.0),
            lww_losses: metrics.counter(KV_UPDATE_TOO_OLD).unwrap_or(0.0),
            retry_queue_events: metrics.sum(RETRY_QUEUE_EVENTS).unwrap_or(0.0),
        }
    }
}

/// Scrapes every running node of `cluster` and sums the counters.
pub async fn cluster_counters(cluster: &Cluster) -> Result<ReplicationCounters> {
    let mut merged = Metrics::default();
    for node in cluster.node_ids() {
        merged.merge(cluster.metrics(node).await?);
    }
    Ok(ReplicationCounters::from_metrics(&merged))
}

/// The verdict, with the breakdown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AccountingReport {
    pub emitted: u64,
    pub ingested: u64,
    pub applied: u64,
    pub lost_to_lww: u64,
    pub dlqed: u64,
    pub retry_queue_events: u64,
    /// False when a counter went down (a node restarted): nothing can be concluded.
    pub conclusive: bool,
    pub problems: Vec<String>,
}

impl AccountingReport {
    pub fn holds(&self) -> bool {
        self.conclusive && self.problems.is_empty()
    }
}

impl std::fmt::Display for AccountingReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "accounting: emitted {}, ingested {} (applied {}, lost to LWW {}), dead-lettered {}, still in the retry queue {}",
            self.emitted,
            self.ingested,
            self.applied,
            self.lost_to_lww,
            self.dlqed,
            self.retry_queue_events
        )?;
        if !self.conclusive {
            write!(
                f,
                "; INCONCLUSIVE: a counter went down (a destination node restarted)"
            )?;
        }
        for p in &self.problems {
            write!(f, "; {p}")?;
        }
        Ok(())
    }
}

/// Judges the counters (pure).
pub fn evaluate(
    emitted: u64,
    before: &ReplicationCounters,
    after: &ReplicationCounters,
) -> AccountingReport {
    let delta = |a: f64, b: f64| a - b;
    let ingested = delta(after.events_ingested, before.events_ingested);
    let dlqed = delta(after.events_dlqed, before.events_dlqed);
    let lost = delta(after.lww_losses, before.lww_losses);
    let conclusive = ingested >= 0.0 && dlqed >= 0.0 && lost >= 0.0;
    let as_count = |v: f64| v.max(0.0).round() as u64;
    let (ingested, dlqed, lost) = (as_count(ingested), as_count(dlqed), as_count(lost));
    let retry = as_count(after.retry_queue_events);
    let mut problems = Vec::new();
    if ingested + dlqed < emitted {
        problems.push(format!(
            "{} emitted changes are unaccounted for (neither ingested nor dead-lettered)",
            emitted - ingested - dlqed
        ));
    }
    if retry > 0 {
        problems.push(format!("{retry} events are still in the retry queue"));
    }
    if lost > ingested {
        problems.push(format!(
            "more LWW losses ({lost}) than ingested events ({ingested})"
        ));
    }
    AccountingReport {
        emitted,
        ingested,
        applied: ingested.saturating_sub(lost),
        lost_to_lww: lost,
        dlqed,
        retry_queue_events: retry,
        conclusive,
        problems,
    }
}

/// [`evaluate`] as a result: an error carries the report unless it holds.
pub fn verify(
    emitted: u64,
    before: &ReplicationCounters,
    after: &ReplicationCounters,
) -> Result<AccountingReport> {
    let report = evaluate(emitted, before, after);
    if report.holds() {
        Ok(report)
    } else {
        Err(SimError::Invariant(report.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counters(ingested: f64, dlqed: f64, lww: f64, retry: f64) -> ReplicationCounters {
        ReplicationCounters {
            events_ingested: ingested,
            events_dlqed: dlqed,
            lww_losses: lww,
            retry_queue_events: retry,
        }
    }

    #[test]
    fn every_emitted_change_accounted_for() {
        let report = verify(
            100,
            &counters(10.0, 0.0, 0.0, 0.0),
            &counters(105.0, 5.0, 7.0, 0.0),
        )
        .expect("holds");
        assert_eq!(
            (
                report.ingested,
                report.applied,
                report.lost_to_lww,
                report.dlqed
            ),
            (95, 88, 7, 5)
        );
        // Duplicates (at-least-once) are fine.
        assert!(
            evaluate(
                10,
                &counters(0.0, 0.0, 0.0, 0.0),
                &counters(15.0, 0.0, 0.0, 0.0)
            )
            .holds()
        );
    }

    #[test]
    fn missing_changes_and_pending_retries_fail() {
        let err = verify(
            100,
            &ReplicationCounters::default(),
            &counters(90.0, 5.0, 0.0, 2.0),
        )
        .expect_err("5 missing and 2 pending");
        let text = err.to_string();
        assert!(
            text.contains("5 emitted changes are unaccounted for"),
            "{text}"
        );
        assert!(
            text.contains("2 events are still in the retry queue"),
            "{text}"
        );
    }

    #[test]
    fn a_counter_reset_is_inconclusive() {
        let report = evaluate(
            10,
            &counters(50.0, 0.0, 0.0, 0.0),
            &counters(20.0, 0.0, 0.0, 0.0),
        );
        assert!(!report.conclusive && !report.holds());
        assert!(report.to_string().contains("INCONCLUSIVE"));
    }

    #[test]
    fn counters_read_with_or_without_total_suffix() {
        let metrics = Metrics::parse(
            "logical_replication_events_ingested_total 4\nlogical_replication_events_dlqed 1\nlogical_replication_kv_update_too_old 2\nlogical_replication_retry_queue_events 0\n",
        );
        assert_eq!(
            ReplicationCounters::from_metrics(&metrics),
            counters(4.0, 1.0, 2.0, 0.0)
        );
    }
}

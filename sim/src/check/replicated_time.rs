//! Monotonic replicated time: sampled from `SHOW LOGICAL REPLICATION JOBS` during a run, each
//! job's `replicated_time` must never decrease (it is the frontier of what has been applied;
//! going back would mean a checkpoint was lost or a frontier regressed).
//!
//! `replicated_time` may arrive as the decimal `wall.logical` or as a TIMESTAMPTZ text (as in
//! CockroachDB); both parse to a [`Timestamp`]. NULL (no progress yet) carries no information
//! and is skipped. Sampling tolerates unreachable nodes (faults are the point of a run) and
//! tries the next URL.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime};
use ldr_types::Timestamp;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::error::{Result, SimError};
use crate::sql::{self, TextRows};

/// One job as seen in one sample.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSample {
    pub job_id: String,
    pub status: String,
    pub replicated_time: Option<Timestamp>,
}

/// Parses a replicated time: decimal `wall[.logical]` or a timestamp with time zone.
pub fn parse_replicated_time(text: &str) -> Option<Timestamp> {
    let text = text.trim();
    if text.is_empty() || text.eq_ignore_ascii_case("null") {
        return None;
    }
    if let Ok(ts) = text.parse::<Timestamp>() {
        return Some(ts);
    }
    let with_zone = [
        "%Y-%m-%d %H:%M:%S%.f%#z",
        "%Y-%m-%dT%H:%M:%S%.f%#z",
        "%Y-%m-%d %H:%M:%S%.f %#z",
    ];
    for format in with_zone {
        if let Ok(dt) = DateTime::parse_from_str(text, format) {
            return dt
                .timestamp_nanos_opt()
                .and_then(|ns| u64::try_from(ns).ok())
                .map(|ns| Timestamp::new(ns, 0));
        }
    }
    for format in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"] {
        if let Ok(dt) = NaiveDateTime::parse_from_str(text, format) {
            return dt
                .and_utc()
                .timestamp_nanos_opt()
                .and_then(|ns| u64::try_from(ns).ok())
                .map(|ns| Timestamp::new(ns, 0));
        }
    }
    None
}

/// Turns `SHOW LOGICAL REPLICATION JOBS` rows into samples (pure).
pub fn parse_jobs(rows: &TextRows) -> Result<Vec<JobSample>> {
    let column = |name: &str| {
        rows.column(name).ok_or_else(|| {
            SimError::Protocol(format!(
                "SHOW LOGICAL REPLICATION JOBS has no {name} column: {:?}",
                rows.columns
            ))
        })
    };
    let (id, status, time) = (
        column("job_id")?,
        column("status")?,
        column("replicated_time")?,
    );
    rows.rows
        .iter()
        .map(|row| {
            let raw_time = row[time].clone();
            let replicated_time = match &raw_time {
                None => None,
                Some(text) => match parse_replicated_time(text) {
                    Some(ts) => Some(ts),
                    None if text.trim().is_empty() || text.eq_ignore_ascii_case("null") => None,
                    None => {
                        return Err(SimError::Protocol(format!(
                            "cannot parse replicated_time {text:?}"
                        )));
                    }
                },
            };
            Ok(JobSample {
                job_id: row[id].clone().unwrap_or_default(),
                status: row[status].clone().unwrap_or_default(),
                replicated_time,
            })
        })
        .collect()
}

/// Samples the jobs through one connection.
pub async fn sample_jobs(client: &tokio_postgres::Client) -> Result<Vec<JobSample>> {
    parse_jobs(&sql::query_text(client, "SHOW LOGICAL REPLICATION JOBS").await?)
}

/// Tracks each job's latest replicated time and records regressions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonotonicChecker {
    last: BTreeMap<String, Timestamp>,
    samples: u64,
    failed_samples: u64,
    violations: Vec<String>,
}

/// The outcome of a watch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonotonicReport {
    /// Latest replicated time per job.
    pub latest: BTreeMap<String, Timestamp>,
    pub samples: u64,
    pub failed_samples: u64,
    pub violations: Vec<String>,
}

impl MonotonicChecker {
    pub fn new() -> MonotonicChecker {
        MonotonicChecker::default()
    }

    /// Feeds one sample of every job.
    pub fn observe(&mut self, jobs: &[JobSample]) {
        self.samples += 1;
        for job in jobs {
            let Some(ts) = job.replicated_time else {
                continue;
            };
            match self.last.get(&job.job_id) {
                Some(&previous) if ts < previous => {
                    let message = format!(
                        "job {} ({}): replicated time went back from {previous} to {ts} at sample {}",
                        job.job_id, job.status, self.samples
                    );
                    tracing::error!(job_id = %job.job_id, %previous, %ts, "replicated time regressed");
                    self.violations.push(message);
                }
                Some(&previous) if ts == previous => {}
                _ => {
                    self.last.insert(job.job_id.clone(), ts);
                }
            }
        }
    }

    /// Counts a sample that could not be taken (node down, cut, paused).
    pub fn observe_failure(&mut self) {
        self.failed_samples += 1;
    }

    pub fn report(&self) -> MonotonicReport {
        MonotonicReport {
            latest: self.last.clone(),
            samples: self.samples,
            failed_samples: self.failed_samples,
            violations: self.violations.clone(),
        }
    }

    /// The report, or an error listing every regression.
    pub fn verify(&self) -> Result<MonotonicReport> {
        if self.violations.is_empty() {
            Ok(self.report())
        } else {
            Err(SimError::Invariant(format!(
                "replicated time is not monotonic:\n  {}",
                self.violations.join("\n  ")
            )))
        }
    }
}

/// A background sampler: every `interval`, the first reachable URL's
/// `SHOW LOGICAL REPLICATION JOBS` feeds a [`MonotonicChecker`].
pub struct ReplicatedTimeWatcher {
    stop: CancellationToken,
    task: JoinHandle<MonotonicChecker>,
}

impl ReplicatedTimeWatcher {
    pub fn spawn(urls: Vec<String>, interval: Duration) -> ReplicatedTimeWatcher {
        let stop = CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(async move {
            let mut checker = MonotonicChecker::new();
            let mut next_url = 0usize;
            loop {
                let mut sampled = false;
                for attempt in 0..urls.len() {
                    let url = &urls[(next_url + attempt) % urls.len()];
                    let sample = async {
                        let client = sql::connect(url, Duration::from_secs(3)).await?;
                        tokio::time::timeout(Duration::from_secs(5), sample_jobs(&client))
                            .await
                            .map_err(|_| SimError::Timeout {
                                what: "SHOW LOGICAL REPLICATION JOBS".into(),
                                waited_ms: 5000,
                                details: String::new(),
                            })?
                    };
                    match tokio::select! { r = sample => r, _ = token.cancelled() => return checker }
                    {
                        Ok(jobs) => {
                            checker.observe(&jobs);
                            next_url = (next_url + attempt) % urls.len().max(1);
                            sampled = true;
                            break;
                        }
                        Err(e) => {
                            tracing::debug!(url = %url, error = %e, "replicated time sample failed")
                        }
                    }
                }
                if !sampled {
                    checker.observe_failure();
                }
                tokio::select! {
                    _ = tokio::time::sleep(interval) => {}
                    _ = token.cancelled() => return checker,
                }
            }
        });
        ReplicatedTimeWatcher { stop, task }
    }

    /// Stops sampling and judges what was seen.
    pub async fn finish(self) -> Result<MonotonicReport> {
        self.stop.cancel();
        let checker = self
            .task
            .await
            .map_err(|e| SimError::Process(format!("replicated time watcher failed: {e}")))?;
        checker.verify()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: &str, ts: Option<Timestamp>) -> JobSample {
        JobSample {
            job_id: id.into(),
            status: "running".into(),
            replicated_time: ts,
        }
    }

    #[test]
    fn parses_both_time_forms() {
        assert_eq!(
            parse_replicated_time("1732250000123456789.0000000002"),
            Some(Timestamp::new(1732250000123456789, 2))
        );
        assert_eq!(
            parse_replicated_time("2024-11-22 04:33:20.123456+00"),
            Some(Timestamp::new(1732250000123456000, 0))
        );
        assert_eq!(
            parse_replicated_time("2024-11-22T04:33:20.5+00:00"),
            Some(Timestamp::new(1732250000500000000, 0))
        );
        assert_eq!(
            parse_replicated_time("2024-11-22 04:33:20"),
            Some(Timestamp::new(1732250000000000000, 0))
        );
        assert_eq!(parse_replicated_time(""), None);
        assert_eq!(parse_replicated_time("NULL"), None);
        assert_eq!(parse_replicated_time("yesterday"), None);
    }

    #[test]
    fn parses_show_jobs_rows() {
        let rows = TextRows {
            columns: vec![
                "job_id".into(),
                "status".into(),
                "tables".into(),
                "replicated_time".into(),
            ],
            rows: vec![
                vec![
                    Some("101".into()),
                    Some("running".into()),
                    Some("{kv}".into()),
                    Some("5.0000000001".into()),
                ],
                vec![Some("102".into()), Some("paused".into()), None, None],
            ],
        };
        let jobs = parse_jobs(&rows).expect("parse");
        assert_eq!(
            jobs,
            vec![
                JobSample {
                    job_id: "101".into(),
                    status: "running".into(),
                    replicated_time: Some(Timestamp::new(5, 1))
                },
                JobSample {
                    job_id: "102".into(),
                    status: "paused".into(),
                    replicated_time: None
                }
            ]
        );
        let bad = TextRows {
            columns: rows.columns.clone(),
            rows: vec![vec![
                Some("1".into()),
                Some("running".into()),
                None,
                Some("soon".into()),
            ]],
        };
        assert!(parse_jobs(&bad).is_err());
    }

    #[test]
    fn detects_a_regression_per_job() {
        let mut checker = MonotonicChecker::new();
        checker.observe(&[job("1", Some(Timestamp::new(10, 0))), job("2", None)]);
        checker.observe(&[
            job("1", Some(Timestamp::new(10, 0))),
            job("2", Some(Timestamp::new(3, 0))),
        ]);
        checker.observe(&[job("1", None), job("2", Some(Timestamp::new(4, 0)))]);
        checker.observe(&[job("1", Some(Timestamp::new(12, 0)))]);
        let report = checker.verify().expect("monotonic so far");
        assert_eq!(report.latest.get("1"), Some(&Timestamp::new(12, 0)));
        assert_eq!(report.samples, 4);
        checker.observe(&[job("1", Some(Timestamp::new(11, 9)))]);
        let err = checker.verify().expect_err("went back");
        assert!(err.to_string().contains("job 1 (running): replicated time went back from 12.0000000000 to 11.0000000009 at sample 5"), "{err}");
    }
}

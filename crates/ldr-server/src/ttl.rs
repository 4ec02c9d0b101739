//! Row-level TTL jobs: a schedule per table with TTL (its `ttl_job_cron`, `@hourly` by
//! default) starts a `ROW LEVEL TTL` job at each firing time, and the job deletes the table's
//! expired rows ([`SqlServer::run_ttl`]).
//!
//! Every node runs the scheduler loop; the firing time a table last ran at is kept in the
//! system keyspace (`ttl_schedule/<table id>`), and a node starts a job only after it moved
//! that record forward with a conditional write, so each firing time starts one job in the
//! whole cluster. A new table's schedule starts at its first firing time after the scheduler
//! first sees it. A job is an ordinary job (`SHOW JOBS`, `PAUSE`/`RESUME`/`CANCEL`, adopted by
//! another node if its node dies) whose progress holds the rows it selected and deleted.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ldr_jobs::{JobContext, JobRecord, JobType, Registry, ResumeOutcome, Resumer};
use ldr_kv::{Condition, KvClient, RowOutcome, RowWrite, ValueHeader};
use ldr_sql::exec::{SqlServer, TtlStats};
use parking_lot::Mutex;
use tracing::{debug, info, warn};

/// How often the scheduler looks for firing times that passed.
const SCHEDULER_TICK: Duration = Duration::from_secs(5);

/// CockroachDB's `jobs.row_level_ttl.*` counters of this node.
#[derive(Debug, Default)]
pub struct TtlMetrics {
    rows_selected: AtomicU64,
    rows_deleted: AtomicU64,
    jobs_succeeded: AtomicU64,
    jobs_failed: AtomicU64,
}

impl TtlMetrics {
    /// Prometheus text.
    pub fn render(&self, out: &mut String) {
        for (name, help, value) in [
            (
                "jobs_row_level_ttl_rows_selected",
                "Number of rows selected for deletion by the row level TTL job",
                &self.rows_selected,
            ),
            (
                "jobs_row_level_ttl_rows_deleted",
                "Number of rows deleted by the row level TTL job",
                &self.rows_deleted,
            ),
            (
                "jobs_row_level_ttl_resume_completed",
                "Number of row level TTL jobs which successfully resumed to completion",
                &self.jobs_succeeded,
            ),
            (
                "jobs_row_level_ttl_resume_failed",
                "Number of row level TTL jobs which failed with a non-retryable error",
                &self.jobs_failed,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            let _ = writeln!(out, "{name} {}", value.load(Ordering::Relaxed));
        }
    }
}

/// Runs `ROW LEVEL TTL` jobs.
pub struct TtlResumer {
    pub server: Arc<SqlServer>,
    pub metrics: Arc<TtlMetrics>,
}

#[async_trait]
impl Resumer for TtlResumer {
    async fn resume(&self, ctx: JobContext, record: JobRecord) -> ResumeOutcome {
        let Some(table_id) = record
            .payload
            .get("table_id")
            .and_then(|v| v.as_u64())
            .and_then(|v| u32::try_from(v).ok())
        else {
            return ResumeOutcome::Failed("row level TTL job without a table id".into());
        };
        let stop = ctx.stop.clone();
        let stopped = move || *stop.borrow();
        let last = Arc::new(Mutex::new(TtlStats::default()));
        let seen = last.clone();
        let progress = move |s: TtlStats| *seen.lock() = s;
        let result = self.server.run_ttl(table_id, &stopped, &progress).await;
        let stats = *last.lock();
        self.metrics
            .rows_selected
            .fetch_add(stats.rows_selected, Ordering::Relaxed);
        self.metrics
            .rows_deleted
            .fetch_add(stats.rows_deleted, Ordering::Relaxed);
        let recorded = ctx
            .registry
            .update_progress(ctx.job_id, &move |job: &mut JobRecord| {
                job.progress = serde_json::json!({
                    "rows_selected": stats.rows_selected,
                    "rows_deleted": stats.rows_deleted,
                });
                job.fraction_completed = 1.0;
            })
            .await;
        if let Err(e) = recorded {
            debug!(job_id = ctx.job_id, error = %e, "could not record TTL progress");
        }
        match result {
            Ok(s) => {
                self.metrics.jobs_succeeded.fetch_add(1, Ordering::Relaxed);
                info!(
                    job_id = ctx.job_id,
                    table_id,
                    rows_deleted = s.rows_deleted,
                    "row level TTL job done"
                );
                ResumeOutcome::Succeeded
            }
            Err(e) => {
                self.metrics.jobs_failed.fetch_add(1, Ordering::Relaxed);
                ResumeOutcome::Failed(e.to_string())
            }
        }
    }

    async fn on_fail_or_cancel(
        &self,
        _ctx: JobContext,
        _record: JobRecord,
    ) -> std::result::Result<(), String> {
        // Deletes are final; nothing to undo.
        Ok(())
    }
}

/// Starts the scheduler loop of this node (it ends with the runtime).
pub fn spawn_scheduler(server: Arc<SqlServer>, registry: Arc<Registry>, kv: KvClient) {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(SCHEDULER_TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            if let Err(e) = schedule_once(&server, &registry, &kv).await {
                debug!(error = %e, "row level TTL scheduler pass failed");
            }
        }
    });
}

/// One scheduler pass: starts the job of every table whose next firing time passed.
async fn schedule_once(
    server: &SqlServer,
    registry: &Arc<Registry>,
    kv: &KvClient,
) -> anyhow::Result<()> {
    let now = Utc::now();
    for table in server.ttl_tables().await? {
        if table.paused {
            continue;
        }
        let key = ldr_types::keys::system_key("ttl_schedule", &table.table_id.to_be_bytes());
        let current = kv.get(&key, None).await?.and_then(|v| v.value);
        let last = current
            .as_deref()
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            .map(|t| t.with_timezone(&Utc));
        let due = match last {
            // First seen: the schedule starts now; the first job runs at the next firing.
            None => None,
            Some(last) => table.cron.next_after(last).filter(|next| *next <= now),
        };
        if last.is_some() && due.is_none() {
            continue;
        }
        // Firing times missed while no node ran the scheduler are skipped, not run late.
        let mark = now.to_rfc3339();
        let claim = RowWrite {
            key: key.clone(),
            value: Some(mark.into_bytes()),
            condition: Condition::Expect(current),
            header: ValueHeader::default(),
            dependents: vec![],
        };
        let won = matches!(
            kv.write(vec![claim], true).await?.pop(),
            Some((_, RowOutcome::Written { .. }))
        );
        if !won || due.is_none() {
            continue;
        }
        let created = registry
            .create(
                JobType::RowLevelTtl,
                format!("ttl for {}", table.name),
                "node".into(),
                serde_json::json!({ "table_id": table.table_id, "table": table.name }),
                serde_json::json!({}),
            )
            .await;
        match created {
            Ok(job_id) => info!(job_id, table = %table.name, "started row level TTL job"),
            Err(e) => warn!(table = %table.name, error = %e, "could not start row level TTL job"),
        }
    }
    Ok(())
}

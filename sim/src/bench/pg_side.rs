//! The PostgreSQL side of the benchmark, measured as `reference/pg-peer-notes.md` says:
//! - two local PostgreSQL 15 servers (publisher, subscriber) with the durability of ldr's run
//!   (`--raft-log-sync`): `fsync = off` (WAL written at commit, not synced, like ldr's log
//!   with `kv.raft_log.disable_synchronization_unsafe`) or `fsync = on`; `synchronous_commit
//!   = on` either way (a commit waits for its WAL write, and with fsync its flush); the
//!   subscription keeps PostgreSQL's default `synchronous_commit = off` for its apply
//!   worker, which is crash-safe there (the replication origin advances only with flushed
//!   WAL, and the publisher resends from it). Checkpoints pushed out of the measured window;
//! - `kv (k INT8 PRIMARY KEY, v TEXT)` and a heartbeat table `hb (seq, src_ts)` in one
//!   publication; on the subscriber `hb` has an extra `dst_ts DEFAULT clock_timestamp()` that
//!   the apply worker fills when it applies the row;
//! - catch-up: `ALTER SUBSCRIPTION … DISABLE`, load, a marker heartbeat written last,
//!   `ENABLE`; one apply worker applies in commit order, so the marker applied ⇒ everything
//!   applied, and the marker's `dst_ts` is the exact end. The 5 s worker restart delay
//!   (`wal_retrieve_retry_interval`) is waited out before `ENABLE`, so it is not measured;
//! - steady: per heartbeat row, `dst_ts − src_ts`, the exact end-to-end lag of that row.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use super::progress::Reporter;
use super::report::{BenchReport, CpuUse};
use super::stats::Percentiles;
use super::{
    BenchOptions, HB_TABLE, Heartbeats, KV_TABLE, Sampler, epoch_now, load_rows, or_cancel, procfs,
    steady_workload, watch,
};
use crate::error::{Result, SimError};
use crate::pg::{PgConfig, PgInstance, PgPair, set_subscription_enabled};
use crate::sql;

const PUBLICATION: &str = "bench_pub";
const SUBSCRIPTION: &str = "bench_sub";
/// PostgreSQL's default `wal_retrieve_retry_interval`, plus a margin.
const WORKER_RESTART_DELAY: Duration = Duration::from_millis(5500);

fn config(name: &str, fsync: bool) -> PgConfig {
    let mut config = PgConfig::new(name);
    config.fsync = fsync;
    config.extra_conf = vec![
        "synchronous_commit = on".into(),
        // Keep checkpoints out of the measured window (the notes' advice).
        "max_wal_size = '16GB'".into(),
        "checkpoint_timeout = '1h'".into(),
        "shared_buffers = '512MB'".into(),
    ];
    config
}

struct PgSide {
    pair: PgPair,
    publisher: Client,
    subscriber: Client,
    last_worker_start: Instant,
    /// Rows the subscriber has applied so far (known from what we wrote).
    expected_applied: f64,
}

impl PgSide {
    async fn start(options: &BenchOptions, reporter: &Reporter) -> Result<PgSide> {
        let fsync = options.raft_log_sync;
        reporter.step(&format!(
            "postgres: starting a publisher and a subscriber (PostgreSQL 15, fsync = {})",
            if fsync { "on" } else { "off" }
        ));
        let (publisher, subscriber) = tokio::try_join!(
            PgInstance::start(config("bench-publisher", fsync)),
            PgInstance::start(config("bench-subscriber", fsync))
        )?;
        let pair = PgPair {
            publisher,
            subscriber,
        };
        let kv_schema = format!("CREATE TABLE {KV_TABLE} (k INT8 PRIMARY KEY, v TEXT)");
        pair.exec_both(&kv_schema).await?;
        let publisher = pair.publisher.connect().await?;
        let subscriber = pair.subscriber.connect().await?;
        sql::exec(
            &publisher,
            &format!("CREATE TABLE {HB_TABLE} (seq INT8 PRIMARY KEY, src_ts TIMESTAMPTZ NOT NULL)"),
        )
        .await?;
        sql::exec(
            &subscriber,
            &format!(
                "CREATE TABLE {HB_TABLE} (seq INT8 PRIMARY KEY, src_ts TIMESTAMPTZ NOT NULL, \
                 dst_ts TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp())"
            ),
        )
        .await?;
        pair.replicate(
            PUBLICATION,
            SUBSCRIPTION,
            &[KV_TABLE, HB_TABLE],
            Duration::from_secs(120),
        )
        .await?;
        Ok(PgSide {
            pair,
            publisher,
            subscriber,
            last_worker_start: Instant::now(),
            expected_applied: 0.0,
        })
    }

    fn cpu(&self) -> (f64, f64) {
        let tree = |pg: &PgInstance| {
            procfs::postmaster_pid(pg.data_dir())
                .map(procfs::tree_cpu_seconds)
                .unwrap_or(0.0)
        };
        (tree(&self.pair.publisher), tree(&self.pair.subscriber))
    }

    /// Rows inserted + updated in `kv` and `hb` on the subscriber (PostgreSQL's statistics:
    /// the apply worker publishes them at most once a second). Heartbeats count, as they do
    /// in ldr's `events_ingested`.
    async fn applied(client: &Client) -> Option<f64> {
        let row = client
            .query_one(
                "SELECT coalesce(sum(n_tup_ins + n_tup_upd), 0)::float8 FROM pg_stat_user_tables WHERE relname IN ($1, $2)",
                &[&KV_TABLE, &HB_TABLE],
            )
            .await
            .ok()?;
        row.try_get(0).ok()
    }

    /// `dst_ts` (epoch seconds) of heartbeat `seq` on the subscriber, if it arrived.
    async fn heartbeat_arrival(&self, seq: i64) -> Result<Option<f64>> {
        let rows = self
            .subscriber
            .query(
                "SELECT extract(epoch FROM dst_ts)::float8 FROM hb WHERE seq = $1",
                &[&seq],
            )
            .await
            .map_err(|e| SimError::sql("reading a heartbeat on the subscriber", e))?;
        Ok(rows.first().and_then(|r| r.try_get(0).ok()))
    }

    /// The applied-rows statistic once it has caught up with what is known to be applied
    /// (it trails by up to a second), so a phase's baseline does not include an earlier
    /// phase's rows. Gives up after a few seconds (it only feeds the plot).
    async fn settled_applied(&self) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let applied = PgSide::applied(&self.subscriber).await.unwrap_or(0.0);
            if applied >= self.expected_applied || Instant::now() >= deadline {
                return applied;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn wait_worker_stopped(&self) -> Result<()> {
        sql::wait_until(
            "the subscription's apply worker to stop",
            Duration::from_secs(60),
            Duration::from_millis(50),
            || async {
                let row = self
                    .subscriber
                    .query_one(
                        "SELECT count(*) FROM pg_stat_subscription WHERE subname = $1 AND pid IS NOT NULL",
                        &[&SUBSCRIPTION],
                    )
                    .await
                    .map_err(|e| crate::error::describe_sql_error(&e))?;
                let workers: i64 = row.get(0);
                if workers == 0 {
                    Ok(())
                } else {
                    Err(format!("{workers} workers running"))
                }
            },
        )
        .await
    }
}

pub(super) async fn run(
    options: &BenchOptions,
    reporter: &Reporter,
    report: &mut BenchReport,
) -> Result<()> {
    let mut side = or_cancel(&options.cancel, PgSide::start(options, reporter)).await?;
    let result = match read_durability(&side, report).await {
        Ok(()) => phases(options, reporter, report, &mut side).await,
        Err(e) => Err(e),
    };
    let stop = side.pair.stop().await;
    result.and(stop)
}

/// `SHOW name` as text.
async fn show(client: &Client, name: &str) -> Result<String> {
    client
        .query_one(&format!("SHOW {name}"), &[])
        .await
        .map_err(|e| SimError::sql(format!("SHOW {name}"), e))
        .and_then(|row| {
            row.try_get::<_, String>(0)
                .map_err(|e| SimError::sql(format!("reading SHOW {name}"), e))
        })
}

/// `SHOW fsync` / `synchronous_commit` as the servers run them, and the subscription's own
/// `synchronous_commit`, into the report; an `fsync` other than asked is an error.
async fn read_durability(side: &PgSide, report: &mut BenchReport) -> Result<()> {
    let fsync_pub = show(&side.publisher, "fsync").await?;
    let fsync_sub = show(&side.subscriber, "fsync").await?;
    let wanted = if report.config.raft_log_sync {
        "on"
    } else {
        "off"
    };
    if fsync_pub != wanted || fsync_sub != wanted {
        return Err(SimError::Invariant(format!(
            "PostgreSQL runs with fsync = {fsync_pub} (publisher) / {fsync_sub} (subscriber), expected {wanted}"
        )));
    }
    let commit = show(&side.publisher, "synchronous_commit").await?;
    let subscription = side
        .subscriber
        .query_one(
            "SELECT subsynccommit FROM pg_subscription WHERE subname = $1",
            &[&SUBSCRIPTION],
        )
        .await
        .map_err(|e| SimError::sql("reading the subscription's synchronous_commit", e))?
        .try_get::<_, String>(0)
        .map_err(|e| SimError::sql("reading subsynccommit", e))?;
    let d = &mut report.durability;
    d.postgres_fsync = Some(fsync_pub);
    d.postgres_synchronous_commit = Some(commit);
    d.postgres_subscription_synchronous_commit = Some(subscription);
    Ok(())
}

async fn phases(
    options: &BenchOptions,
    reporter: &Reporter,
    report: &mut BenchReport,
    side: &mut PgSide,
) -> Result<()> {
    catchup(options, reporter, report, side).await?;
    for index in 0..options.steady_rates.len() {
        if options.cancel.is_cancelled() {
            break;
        }
        steady(options, reporter, report, side, index).await?;
    }
    Ok(())
}

async fn catchup(
    options: &BenchOptions,
    reporter: &Reporter,
    report: &mut BenchReport,
    side: &mut PgSide,
) -> Result<()> {
    reporter.step(&format!(
        "postgres catch-up: subscription disabled, loading {} rows in {}-row statements",
        options.rows, options.load_batch
    ));
    set_subscription_enabled(&side.subscriber, SUBSCRIPTION, false).await?;
    side.wait_worker_stopped().await?;
    let load = or_cancel(
        &options.cancel,
        load_rows(
            options,
            reporter,
            vec![side.pair.publisher.url()],
            "postgres load",
        ),
    )
    .await?;
    report.catchup.postgres_load_rows_per_s = Some(load.rows_written_per_s);
    // The marker: written after every loaded row, so applied after all of them.
    sql::exec(
        &side.publisher,
        "INSERT INTO hb (seq, src_ts) VALUES (0, clock_timestamp())",
    )
    .await?;
    let wait = WORKER_RESTART_DELAY.saturating_sub(side.last_worker_start.elapsed());
    if !wait.is_zero() {
        reporter.note(&format!(
            "waiting {:.1}s so the launcher may restart the worker at once (wal_retrieve_retry_interval)",
            wait.as_secs_f64()
        ));
        tokio::time::sleep(wait).await;
    }
    let applied_before = side.settled_applied().await;
    let (cpu_src0, cpu_dst0) = side.cpu();
    let t0 = epoch_now();
    set_subscription_enabled(&side.subscriber, SUBSCRIPTION, true).await?;
    side.last_worker_start = Instant::now();
    let sampler_client = Arc::new(side.pair.subscriber.connect().await?);
    let progress = watch();
    let sampler = {
        let client = sampler_client.clone();
        let progress = progress.clone();
        Sampler::spawn(Duration::from_millis(250), t0, move || {
            let client = client.clone();
            let progress = progress.clone();
            async move {
                let v = PgSide::applied(&client).await? - applied_before;
                progress.set(v);
                Some(v)
            }
        })
    };
    let mut bar = reporter.bar("postgres catch-up", options.rows, "rows");
    let deadline = Instant::now() + options.apply_deadline(options.rows);
    let end = loop {
        if options.cancel.is_cancelled() {
            sampler.finish().await;
            return Err(super::cancelled());
        }
        match tokio::time::timeout(super::POLL_TIMEOUT, side.heartbeat_arrival(0)).await {
            Ok(Ok(Some(end))) => break end,
            Ok(Ok(None)) | Err(_) => {}
            Ok(Err(e)) => {
                sampler.finish().await;
                return Err(e);
            }
        }
        if Instant::now() >= deadline {
            sampler.finish().await;
            return Err(SimError::Timeout {
                what: "the subscriber to apply the catch-up marker".into(),
                waited_ms: options.apply_deadline(options.rows).as_millis(),
                details: format!("; about {} rows applied", progress.get()),
            });
        }
        bar.set(progress.get());
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let (cpu_src1, cpu_dst1) = side.cpu();
    let mut series = sampler.finish().await;
    bar.finish(options.rows);
    let count: i64 = side
        .subscriber
        .query_one("SELECT count(*) FROM kv", &[])
        .await
        .map_err(|e| SimError::sql("counting kv on the subscriber", e))?
        .get(0);
    if count as u64 != options.rows {
        return Err(SimError::Invariant(format!(
            "postgres catch-up: the subscriber has {count} rows, expected {}",
            options.rows
        )));
    }
    side.expected_applied += options.rows as f64 + 1.0;
    let secs = (end - t0).max(1e-6);
    // The statistics trail: end the series with the exact figure.
    series.push((secs, options.rows as f64));
    series.sort_by(|a, b| a.0.total_cmp(&b.0));
    series.retain(|(t, _)| *t <= secs);
    for point in &mut series {
        // The marker is counted too.
        point.1 = point.1.min(options.rows as f64);
    }
    series.insert(0, (0.0, 0.0));
    report.series.catchup_postgres_applied = series;
    report.catchup.postgres_secs = Some(secs);
    report.catchup.postgres_rows_per_s = Some(options.rows as f64 / secs);
    report.catchup.postgres_cpu = Some(CpuUse::new(
        cpu_src1 - cpu_src0,
        cpu_dst1 - cpu_dst0,
        options.rows,
    ));
    reporter.note(&format!(
        "postgres applied {} rows in {secs:.2}s: {:.0} rows/s",
        options.rows,
        options.rows as f64 / secs
    ));
    Ok(())
}

/// First heartbeat sequence number of steady rate `index` (rate phases never share one).
pub(super) fn heartbeat_base(index: usize) -> i64 {
    (index as i64 + 1) * 10_000_000
}

async fn steady(
    options: &BenchOptions,
    reporter: &Reporter,
    report: &mut BenchReport,
    side: &mut PgSide,
    index: usize,
) -> Result<()> {
    let rate = options.steady_rates[index];
    reporter.step(&format!(
        "postgres steady state: {rate} rows/s ({}-row upserts) for {:?}",
        options.steady_batch, options.duration
    ));
    let first_seq = heartbeat_base(index);
    let max_heartbeats =
        (options.duration.as_secs_f64() / options.heartbeat_interval.as_secs_f64()) as u64 + 1000;
    let applied_before = side.settled_applied().await;
    let t0 = epoch_now();
    let (cpu_src0, cpu_dst0) = side.cpu();
    let sampler_client = Arc::new(side.pair.subscriber.connect().await?);
    let sampler = {
        let client = sampler_client.clone();
        Sampler::spawn(Duration::from_millis(250), t0, move || {
            let client = client.clone();
            async move { Some(PgSide::applied(&client).await? - applied_before) }
        })
    };
    let heartbeats = Heartbeats::spawn(
        &side.pair.publisher.url(),
        "INSERT INTO hb (seq, src_ts) VALUES ($1, clock_timestamp())",
        first_seq,
        options.heartbeat_interval,
        max_heartbeats,
    )
    .await?;
    let workload = steady_workload(
        options,
        vec![side.pair.publisher.url()],
        rate,
        options.seed.wrapping_add(index as u64 + 1),
    )
    .await;
    let (last_seq, sent, failed) = heartbeats.finish().await;
    let workload = workload?;
    // Drain: the last heartbeat applied ⇒ everything before it applied (commit order).
    if let Some(last) = last_seq {
        let deadline = options.apply_deadline(workload.rows_written);
        or_cancel(
            &options.cancel,
            sql::wait_until(
                "the subscriber to apply the last heartbeat",
                deadline,
                Duration::from_millis(20),
                || async {
                    match side.heartbeat_arrival(last).await {
                        Ok(Some(_)) => Ok(()),
                        Ok(None) => Err("not yet".to_string()),
                        Err(e) => Err(e.to_string()),
                    }
                },
            ),
        )
        .await?;
    }
    let (cpu_src1, cpu_dst1) = side.cpu();
    let applied = sampler.finish().await;
    side.expected_applied += (workload.rows_written + sent) as f64;
    let rows = sampler_client
        .query(
            "SELECT extract(epoch FROM src_ts)::float8, (extract(epoch FROM (dst_ts - src_ts)) * 1000)::float8 \
             FROM hb WHERE seq >= $1 AND seq < $2 ORDER BY seq",
            &[&first_seq, &(first_seq + 10_000_000)],
        )
        .await
        .map_err(|e| SimError::sql("reading heartbeats on the subscriber", e))?;
    let mut points = Vec::with_capacity(rows.len());
    for row in &rows {
        let src: f64 = row
            .try_get(0)
            .map_err(|e| SimError::sql("decoding src_ts", e))?;
        let lag: f64 = row
            .try_get(1)
            .map_err(|e| SimError::sql("decoding the heartbeat lag", e))?;
        points.push((src - t0, lag));
    }
    if (points.len() as u64) < sent {
        return Err(SimError::Invariant(format!(
            "postgres steady: {} of {sent} heartbeats reached the subscriber",
            points.len()
        )));
    }
    let lags: Vec<f64> = points.iter().map(|p| p.1).collect();
    let entry = &mut report.steady.rates[index];
    entry.postgres_lag_ms = Percentiles::of(&lags);
    entry.postgres_achieved_rows_per_s = Some(workload.rows_written_per_s);
    entry.postgres_workload_errors = workload.errors + failed;
    entry.postgres_heartbeats_sent = sent;
    entry.postgres_write_latency_ms = super::write_latency(&workload);
    entry.postgres_cpu = Some(CpuUse::new(
        cpu_src1 - cpu_src0,
        cpu_dst1 - cpu_dst0,
        workload.rows_written,
    ));
    let series = &mut report.series.steady[index];
    series.postgres_applied = applied;
    series.postgres_commit_latency = points;
    reporter.note(&format!(
        "postgres: {:.0} rows/s achieved, heartbeat lag p50/p99/max {} ms ({} heartbeats)",
        workload.rows_written_per_s,
        entry.postgres_lag_ms.short(),
        entry.postgres_lag_ms.count
    ));
    Ok(())
}

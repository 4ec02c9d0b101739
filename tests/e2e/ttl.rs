//! Row-level TTL beside LDR (seeds 001/002, "TTL"): a table with `ttl_expire_after` and a
//! `ttl_job_cron` of every minute gets `ROW LEVEL TTL` jobs that delete its expired rows. With
//! `ttl_disable_changefeed_replication` on the source table, a stream with
//! `discard = 'ttl-deletes'` leaves those deletes out (the destination keeps the rows); on a
//! table without it the same stream replicates them. Bad TTL parameters are refused.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use ldr_e2e::{
    CATCH_UP, cluster_metrics, cluster_pair, enable_rangefeeds, jobs_of_type, now, phase, poll,
    query_any, row_map, wait_replicated,
};
use ldr_sim::Cluster;

async fn count(c: &Cluster, table: &str) -> Result<i64> {
    let rows = query_any(c, &format!("SELECT count(*) FROM {table}")).await?;
    ldr_e2e::scalar(&rows)
        .context("count")?
        .parse()
        .context("count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ttl_jobs_delete_expired_rows_and_ldr_can_discard_them() -> Result<()> {
    let started = Instant::now();
    let (a, b) = cluster_pair(1, false).await?;
    // The destination has the tables without TTL (seed 000: TTL is configured per cluster).
    for table in ["kept", "mirrored"] {
        b.exec(
            1,
            &format!("CREATE TABLE {table} (id INT8 PRIMARY KEY, v STRING)"),
        )
        .await?;
    }
    a.exec(
        1,
        "CREATE TABLE kept (id INT8 PRIMARY KEY, v STRING) WITH (ttl_expire_after = '1 second', \
         ttl_job_cron = '* * * * *', ttl_disable_changefeed_replication = true)",
    )
    .await?;
    a.exec(1, "CREATE TABLE mirrored (id INT8 PRIMARY KEY, v STRING)")
        .await?;
    a.exec(
        1,
        "ALTER TABLE mirrored SET (ttl_expire_after = '1 second', ttl_job_cron = '* * * * *')",
    )
    .await?;
    // Refused parameters.
    for (sql, text) in [
        (
            "ALTER TABLE mirrored SET (ttl_job_cron = 'every minute')",
            "invalid cron expression",
        ),
        (
            "ALTER TABLE mirrored SET (ttl_expire_after = 'soon')",
            "must be an interval",
        ),
    ] {
        let e = a
            .exec(1, sql)
            .await
            .err()
            .with_context(|| format!("{sql} was accepted"))?;
        ensure!(format!("{e:#}").contains(text), "{sql}: {e:#}");
    }
    let values: Vec<String> = (1..=50).map(|i| format!("({i}, 'v{i}')")).collect();
    for table in ["kept", "mirrored"] {
        a.exec(
            1,
            &format!("INSERT INTO {table} VALUES {}", values.join(", ")),
        )
        .await?;
    }
    enable_rangefeeds(&a).await?;
    ldr_sim::ldr::create_external_connection(&b, "a", &a).await?;
    let tables = ["defaultdb.public.kept", "defaultdb.public.mirrored"];
    let job =
        ldr_sim::ldr::create_stream(&b, "a", &tables, &tables, Some("discard = 'ttl-deletes'"))
            .await?;
    wait_replicated(&b, job, now(&a).await?, CATCH_UP).await?;
    ensure!(count(&b, "kept").await? == 50 && count(&b, "mirrored").await? == 50);
    phase(started, "50 rows in each table on both clusters");

    // A TTL job per table runs at the next minute and empties both tables on A.
    poll(
        "both tables emptied by row level TTL jobs on A",
        Duration::from_secs(150),
        Duration::from_millis(500),
        || {
            let a = &a;
            async move {
                let (k, m) = (
                    count(a, "kept").await.map_err(|e| e.to_string())?,
                    count(a, "mirrored").await.map_err(|e| e.to_string())?,
                );
                if k == 0 && m == 0 {
                    Ok(())
                } else {
                    Err(format!("kept {k}, mirrored {m} rows left"))
                }
            }
        },
    )
    .await?;
    let ttl_jobs = jobs_of_type(&a, "ROW LEVEL TTL").await?;
    ensure!(ttl_jobs.len() >= 2, "TTL jobs: {ttl_jobs:?}");
    let jobs = query_any(&a, "SHOW JOBS").await?;
    let descriptions: Vec<String> = (0..jobs.rows.len())
        .map(|i| row_map(&jobs, i))
        .filter(|r| r.get("job_type").cloned().flatten().as_deref() == Some("ROW LEVEL TTL"))
        .filter_map(|r| r.get("description").cloned().flatten())
        .collect();
    for table in tables {
        ensure!(
            descriptions
                .iter()
                .any(|d| d == &format!("ttl for {table}")),
            "no TTL job for {table}: {descriptions:?}"
        );
    }
    let deleted = cluster_metrics(&a)
        .await?
        .counter("jobs_row_level_ttl_rows_deleted")
        .unwrap_or(0.0);
    ensure!(deleted >= 100.0, "rows deleted counted: {deleted}");
    phase(
        started,
        &format!("TTL jobs {ttl_jobs:?} deleted {deleted} rows on A"),
    );

    // B: the TTL deletes of `kept` were discarded, those of `mirrored` replicated.
    wait_replicated(&b, job, now(&a).await?, CATCH_UP).await?;
    ensure!(
        count(&b, "kept").await? == 50,
        "TTL deletes of kept reached B"
    );
    ensure!(
        count(&b, "mirrored").await? == 0,
        "TTL deletes of mirrored did not reach B"
    );
    phase(
        started,
        "B kept the rows of `kept` and lost those of `mirrored`",
    );
    Ok(())
}

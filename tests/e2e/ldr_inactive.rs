//! When the source's history retention job goes away (here: a user cancels it on the source),
//! the stream is INACTIVE: the destination's LDR job fails permanently with CockroachDB's
//! "history retention job is no longer active" instead of retrying forever, and the source
//! releases the protected timestamp and the schema lock of its table.

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use ldr_e2e::{
    CATCH_UP, cluster_pair, enable_rangefeeds, jobs_of_type, now, phase, wait_job_status,
    wait_replicated,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn canceling_the_history_retention_job_fails_the_destination_job() -> Result<()> {
    let started = Instant::now();
    let (a, b) = cluster_pair(1, false).await?;
    for c in [&a, &b] {
        c.exec(1, "CREATE TABLE t (k INT8 PRIMARY KEY, v STRING)")
            .await?;
    }
    enable_rangefeeds(&a).await?;
    a.exec(1, "INSERT INTO t VALUES (1, 'one')").await?;
    ldr_sim::ldr::create_external_connection(&b, "a", &a).await?;
    let job = ldr_sim::ldr::create_stream(&b, "a", &["t"], &["t"], None).await?;
    wait_replicated(&b, job, now(&a).await?, CATCH_UP).await?;
    let producers = jobs_of_type(&a, "REPLICATION STREAM PRODUCER").await?;
    ensure!(
        producers.len() == 1,
        "expected one producer job on A, got {producers:?}"
    );
    let producer = producers[0];
    phase(
        started,
        &format!("LDR job {job} running from producer {producer}"),
    );

    // Cancel the history retention job on the source: its stream becomes INACTIVE.
    a.exec(1, &format!("CANCEL JOB {producer}")).await?;
    wait_job_status(&a, producer, "canceled", CATCH_UP).await?;

    // The destination notices at its next heartbeat and fails for good.
    let row = wait_job_status(&b, job, "failed", Duration::from_secs(60)).await?;
    let error = row.get("error").cloned().flatten().unwrap_or_default();
    ensure!(
        error == "history retention job is no longer active",
        "destination job error: {error:?}"
    );
    phase(started, "destination job failed with the INACTIVE error");

    // The source released its schema lock: schema changes are allowed again there.
    a.exec(1, "ALTER TABLE t ADD COLUMN extra INT8").await?;
    let response = a.http_get(1, "/_status/protected_timestamps").await?;
    ensure!(
        response.body.trim() == "[]",
        "protected timestamps left on A: {}",
        response.body
    );
    Ok(())
}

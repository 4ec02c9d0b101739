//! Canceling an LDR job releases everything the stream holds on the source: the producer (history
//! retention) job fails because its destination finished unsuccessfully, its protected timestamp
//! disappears, and the schema locks on both tables are lifted.
//!
//! While the job runs, the test also checks what it holds: the producer's protected timestamp
//! exists and moves forward with the destination's heartbeats, and both tables refuse schema
//! changes other than the allowed ones (non-unique CREATE INDEX, DROP INDEX, storage parameters)
//! with CockroachDB's error.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use ldr_e2e::{
    CATCH_UP, cluster_pair, enable_rangefeeds, expect_error, jobs_of_type, now, phase, poll,
    read_kv, wait_job_status, wait_replicated,
};
use ldr_sim::Cluster;
use ldr_types::Timestamp;

/// The protected timestamp records of `c` (`GET /_status/protected_timestamps`) as
/// `(owner, ts)`.
async fn protected_timestamps(c: &Cluster) -> Result<Vec<(String, Timestamp)>> {
    let response = c.http_get(1, "/_status/protected_timestamps").await?;
    ensure!(
        response.status == 200,
        "/_status/protected_timestamps answered {}: {}",
        response.status,
        response.body
    );
    let records: Vec<serde_json::Value> = serde_json::from_str(&response.body)
        .with_context(|| format!("parsing {}", response.body))?;
    records
        .iter()
        .map(|r| {
            let owner = r
                .get("owner")
                .and_then(|o| o.as_str())
                .context("record without owner")?
                .to_string();
            let ts = r
                .get("ts")
                .and_then(|t| t.as_str())
                .context("record without ts")?;
            Ok((
                owner,
                ts.parse::<Timestamp>()
                    .map_err(|e| anyhow::anyhow!("{ts:?}: {e}"))?,
            ))
        })
        .collect()
}

/// The protected timestamp held by job `job`, if any.
async fn protection_of(c: &Cluster, job: i64) -> Result<Option<Timestamp>> {
    let owner = format!("job {job}");
    Ok(protected_timestamps(c)
        .await?
        .into_iter()
        .find(|(o, _)| *o == owner)
        .map(|(_, ts)| ts))
}

const LOCKED: &str = "because it is referenced by one or more logical replication jobs";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_releases_the_producer_protection_and_schema_locks() -> Result<()> {
    let started = Instant::now();
    let (a, b) = cluster_pair(1, false).await?;
    for c in [&a, &b] {
        c.exec(
            1,
            "CREATE TABLE t (k INT8 PRIMARY KEY, v STRING); CREATE INDEX t_v_idx ON t (v)",
        )
        .await?;
    }
    enable_rangefeeds(&a).await?;
    a.exec(1, "INSERT INTO t VALUES (1, 'one'), (2, 'two')")
        .await?;
    ensure!(
        protected_timestamps(&a).await?.is_empty(),
        "a protected timestamp exists before any stream"
    );
    ldr_sim::ldr::create_external_connection(&b, "a", &a).await?;
    let job = ldr_sim::ldr::create_stream(&b, "a", &["t"], &["t"], None).await?;
    let producers = jobs_of_type(&a, "REPLICATION STREAM PRODUCER").await?;
    ensure!(
        producers.len() == 1,
        "expected one producer job on A, got {producers:?}"
    );
    let producer = producers[0];
    wait_replicated(&b, job, now(&a).await?, CATCH_UP).await?;
    phase(
        started,
        &format!("LDR job {job} on B running; producer job {producer} on A"),
    );

    // The producer protects history from the stream's start, and the destination's heartbeats
    // (every 5 s) move that protection forward as the replicated time advances.
    let records = protected_timestamps(&a).await?;
    let first = protection_of(&a, producer).await?.with_context(|| {
        format!("no protected timestamp for producer job {producer}: {records:?}")
    })?;
    let moved = poll(
        "the protected timestamp to move forward",
        CATCH_UP,
        Duration::from_millis(500),
        || async {
            match protection_of(&a, producer)
                .await
                .map_err(|e| e.to_string())?
            {
                Some(ts) if ts > first => Ok(ts),
                other => Err(format!("still {other:?} (first {first})")),
            }
        },
    )
    .await?;
    phase(
        started,
        &format!("protected timestamp {first} moved to {moved}"),
    );

    // Both tables are schema locked: only the allowed changes pass.
    for c in [&a, &b] {
        let client = c.sql(1).await?;
        let side = c.name();
        expect_error(
            &client,
            "ALTER TABLE t ADD COLUMN extra INT8",
            "0A000",
            &format!("this schema change is disallowed on table t {LOCKED}"),
        )
        .await
        .with_context(|| format!("on {side}"))?;
        expect_error(
            &client,
            "CREATE UNIQUE INDEX t_v_key ON t (v)",
            "0A000",
            LOCKED,
        )
        .await
        .with_context(|| format!("on {side}"))?;
        expect_error(&client, "DROP TABLE t", "0A000", LOCKED)
            .await
            .with_context(|| format!("on {side}"))?;
        client
            .batch_execute("CREATE INDEX t_v_idx2 ON t (v)")
            .await
            .with_context(|| format!("a plain CREATE INDEX must be allowed on {side}"))?;
        client
            .batch_execute("DROP INDEX t@t_v_idx2")
            .await
            .with_context(|| format!("DROP INDEX must be allowed on {side}"))?;
        client
            .batch_execute("ALTER TABLE t SET (ttl_job_cron = '@daily')")
            .await
            .with_context(|| format!("a TTL storage parameter must be allowed on {side}"))?;
    }
    phase(
        started,
        "schema locks hold on both tables; allowed changes pass",
    );

    // CANCEL JOB: the destination job is canceled; the producer fails because its destination
    // finished unsuccessfully and releases its protected timestamp and schema lock.
    b.exec(1, &format!("CANCEL JOB {job}")).await?;
    wait_job_status(&b, job, "canceled", CATCH_UP).await?;
    let row = wait_job_status(&a, producer, "failed", CATCH_UP).await?;
    let error = row.get("error").cloned().flatten().unwrap_or_default();
    ensure!(
        error.contains("destination cluster job finished unsuccessfully"),
        "producer job error: {error:?}"
    );
    poll(
        "the producer's protected timestamp to be released",
        CATCH_UP,
        Duration::from_millis(300),
        || async {
            match protection_of(&a, producer)
                .await
                .map_err(|e| e.to_string())?
            {
                None => Ok(()),
                Some(ts) => Err(format!("still protected at {ts}")),
            }
        },
    )
    .await?;
    ensure!(
        protected_timestamps(&a).await?.is_empty(),
        "protected timestamps left on A: {:?}",
        protected_timestamps(&a).await?
    );
    phase(
        started,
        "job canceled, producer failed, protected timestamp released",
    );

    // The locks are gone: the schema change refused before now succeeds on both sides.
    for c in [&a, &b] {
        poll(
            &format!("ALTER TABLE … ADD COLUMN to succeed on {}", c.name()),
            CATCH_UP,
            Duration::from_millis(300),
            || async {
                c.exec(1, "ALTER TABLE t ADD COLUMN IF NOT EXISTS extra INT8")
                    .await
                    .map_err(|e| e.to_string())
            },
        )
        .await?;
    }
    let rows = read_kv(&b, "t").await?;
    ensure!(
        rows.len() == 2,
        "B must keep the two replicated rows: {rows:?}"
    );
    phase(started, "schema changes allowed again on both tables");
    Ok(())
}

//! `/metrics` on the destination nodes (DESIGN.md §9, reference §5): every LDR metric is exported
//! under CockroachDB's name on every node, and each one moves when the thing it counts happens —
//! an initial scan (events ingested and applied on the first attempt, bytes, commit latency,
//! batch durations), an LWW loss (`kv_update_too_old`), a row waiting in the retry queue (the
//! queue gauges rise, then fall when it is dead-lettered: `events_dlqed`), and the job's
//! replicated time (`replicated_time_seconds{job_id=…}`, advancing with the wall clock).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, ensure};
use ldr_e2e::{
    CATCH_UP, cluster_metrics, cluster_pair, enable_rangefeeds, now, phase, poll, wait_job_status,
    wait_replicated,
};
use ldr_sim::metrics::Metrics;

const NAMES: [&str; 10] = [
    "logical_replication_events_ingested",
    "logical_replication_events_dlqed",
    "logical_replication_logical_bytes",
    "logical_replication_commit_latency_count",
    "logical_replication_retry_queue_events",
    "logical_replication_retry_queue_bytes",
    "logical_replication_batch_hist_nanos_count",
    "logical_replication_events_initial_success",
    "logical_replication_events_initial_failure",
    "logical_replication_kv_update_too_old",
];

fn value(m: &Metrics, name: &str) -> f64 {
    m.sum(name).unwrap_or(0.0)
}

const SCANNED: i64 = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn destination_metrics_move_with_what_they_count() -> Result<()> {
    let started = Instant::now();
    let (a, b) = cluster_pair(2, false).await?;
    for c in [&a, &b] {
        c.exec(
            1,
            "CREATE TABLE m (k INT8 PRIMARY KEY, email STRING UNIQUE, v STRING)",
        )
        .await?;
    }
    b.exec(
        1,
        "SET CLUSTER SETTING logical_replication.consumer.retry_queue_duration = '4s'",
    )
    .await?;
    enable_rangefeeds(&a).await?;

    // Every node exports every metric, before any job exists.
    for node in b.node_ids() {
        let m = b.metrics(node).await?;
        for name in NAMES {
            ensure!(
                m.sum(name).is_some(),
                "node {node} of B does not export {name}"
            );
        }
        ensure!(
            m.get(
                "logical_replication_commit_latency_bucket",
                &[("le", "+Inf")]
            )
            .is_some(),
            "node {node}: commit_latency is not a histogram"
        );
        ensure!(
            m.get(
                "logical_replication_batch_hist_nanos_bucket",
                &[("le", "+Inf")]
            )
            .is_some(),
            "node {node}: batch_hist_nanos is not a histogram"
        );
    }
    let before = cluster_metrics(&b).await?;

    // An initial scan of SCANNED rows.
    let values: Vec<String> = (1..=SCANNED)
        .map(|k| format!("({k}, 'user{k}@example.com', 'v{k}')"))
        .collect();
    a.exec(1, &format!("INSERT INTO m VALUES {}", values.join(", ")))
        .await?;
    ldr_sim::ldr::create_external_connection(&b, "a", &a).await?;
    let job = ldr_sim::ldr::create_stream(&b, "a", &["m"], &["m"], None).await?;
    wait_replicated(&b, job, now(&a).await?, CATCH_UP).await?;
    let scanned = cluster_metrics(&b).await?;
    let moved = |name: &str, at_least: f64| -> Result<()> {
        let delta = value(&scanned, name) - value(&before, name);
        ensure!(
            delta >= at_least,
            "{name} moved by {delta} during the initial scan, expected at least {at_least}"
        );
        Ok(())
    };
    moved("logical_replication_events_ingested", SCANNED as f64)?;
    moved("logical_replication_events_initial_success", SCANNED as f64)?;
    moved("logical_replication_logical_bytes", SCANNED as f64 * 10.0)?;
    // One observation per applied batch (CockroachDB: the earliest event of a batch to its flush).
    moved("logical_replication_commit_latency_count", 1.0)?;
    moved("logical_replication_commit_latency_sum", 1.0)?;
    moved("logical_replication_batch_hist_nanos_count", 1.0)?;
    moved("logical_replication_batch_hist_nanos_sum", 1.0)?;
    phase(started, &format!("initial scan of {SCANNED} rows counted"));

    // Replicated time per job, in seconds, close to the wall clock and advancing.
    let label = job.to_string();
    let first = poll(
        "replicated_time_seconds of the job",
        CATCH_UP,
        Duration::from_millis(250),
        || async {
            let m = cluster_metrics(&b).await.map_err(|e| e.to_string())?;
            m.get(
                "logical_replication_replicated_time_seconds",
                &[("job_id", &label)],
            )
            .ok_or_else(|| "not exported yet".to_string())
        },
    )
    .await?;
    let wall = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs_f64();
    ensure!(
        (wall - first).abs() < 60.0,
        "replicated_time_seconds {first} is far from the wall clock {wall}"
    );
    poll(
        "replicated_time_seconds to advance",
        CATCH_UP,
        Duration::from_millis(250),
        || async {
            let m = cluster_metrics(&b).await.map_err(|e| e.to_string())?;
            match m.get(
                "logical_replication_replicated_time_seconds",
                &[("job_id", &label)],
            ) {
                Some(t) if t > first => Ok(()),
                other => Err(format!("{other:?} (first {first})")),
            }
        },
    )
    .await?;
    phase(
        started,
        "replicated_time_seconds{job_id} advances with the wall clock",
    );

    // An LWW loss: with the job paused, A writes key 1, then B writes it later; on resume A's
    // older version loses on B.
    b.exec(1, &format!("PAUSE JOB {job}")).await?;
    wait_job_status(&b, job, "paused", CATCH_UP).await?;
    a.exec(1, "UPDATE m SET v = 'older, from A' WHERE k = 1")
        .await?;
    b.exec(2, "UPDATE m SET v = 'newer, from B' WHERE k = 1")
        .await?;
    b.exec(1, &format!("RESUME JOB {job}")).await?;
    wait_replicated(&b, job, now(&a).await?, CATCH_UP).await?;
    ensure!(
        read_kv_v(&b, 1).await? == "newer, from B",
        "B's newer write must survive"
    );
    let lost = cluster_metrics(&b).await?;
    let losses = value(&lost, "logical_replication_kv_update_too_old")
        - value(&scanned, "logical_replication_kv_update_too_old");
    ensure!(
        losses >= 1.0,
        "kv_update_too_old moved by {losses} after an LWW loss"
    );
    phase(started, "an LWW loss counted in kv_update_too_old");

    // A row that cannot apply (a UNIQUE clash) waits in the retry queue — both gauges rise —
    // and is dead-lettered after retry_queue_duration (4 s): the gauges fall, events_dlqed rises.
    b.exec(
        1,
        "INSERT INTO m VALUES (100, 'clash@example.com', 'from B')",
    )
    .await?;
    a.exec(
        1,
        "INSERT INTO m VALUES (101, 'clash@example.com', 'from A')",
    )
    .await?;
    let queued = poll(
        "the retry queue gauges to rise",
        CATCH_UP,
        Duration::from_millis(100),
        || async {
            let m = cluster_metrics(&b).await.map_err(|e| e.to_string())?;
            let (events, bytes) = (
                value(&m, "logical_replication_retry_queue_events"),
                value(&m, "logical_replication_retry_queue_bytes"),
            );
            if events >= 1.0 && bytes > 0.0 {
                Ok((events, bytes))
            } else {
                Err(format!("events {events}, bytes {bytes}"))
            }
        },
    )
    .await?;
    let dlqed = poll(
        "the clash to be dead-lettered and the queue to drain",
        CATCH_UP,
        Duration::from_millis(250),
        || async {
            let m = cluster_metrics(&b).await.map_err(|e| e.to_string())?;
            let dlqed = value(&m, "logical_replication_events_dlqed")
                - value(&before, "logical_replication_events_dlqed");
            let (events, bytes) = (
                value(&m, "logical_replication_retry_queue_events"),
                value(&m, "logical_replication_retry_queue_bytes"),
            );
            if dlqed >= 1.0 && events == 0.0 && bytes == 0.0 {
                Ok(dlqed)
            } else {
                Err(format!(
                    "dlqed {dlqed}, queue events {events}, bytes {bytes}"
                ))
            }
        },
    )
    .await?;
    let after = cluster_metrics(&b).await?;
    ensure!(
        value(&after, "logical_replication_events_initial_failure")
            > value(&before, "logical_replication_events_initial_failure"),
        "events_initial_failure did not count the clash's failed first attempt"
    );
    phase(
        started,
        &format!(
            "retry queue rose to {queued:?} (events, bytes), then drained; {dlqed} event(s) dead-lettered"
        ),
    );
    Ok(())
}

async fn read_kv_v(c: &ldr_sim::Cluster, k: i64) -> Result<String> {
    let row = c
        .sql(1)
        .await?
        .query_one("SELECT v FROM m WHERE k = $1", &[&k])
        .await
        .context("reading m")?;
    Ok(row.get(0))
}

//! The initial scan: a stream on a table that already holds 100,000 rows copies all of them,
//! each with its source commit timestamp as its origin timestamp (so LWW treats scanned rows like
//! any other write), while `SHOW JOBS` shows the scan's progress in `fraction_completed` (one
//! source node's partition is held back by its fault proxy until a partial value shows). Then
//! `cursor = '<timestamp>'`: no initial scan; rows written before the cursor stay on the source,
//! changes after it (including an update of an older row) replicate.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use ldr_e2e::{
    CATCH_UP, cluster_pair, enable_rangefeeds, job_row, now, phase, query_any, read_kv,
    wait_replicated,
};
use ldr_sim::check::convergence::wait_converged;
use ldr_sim::{Cluster, Fault};

const ROWS: i64 = 100_000;
const BATCH: i64 = 1_000;

/// Loads rows `1..=ROWS` into `scan` on `c`, `BATCH` per statement, spread over the nodes.
async fn load(c: &Cluster) -> Result<()> {
    let clients = [c.sql(1).await?, c.sql(2).await?, c.sql(3).await?];
    let mut tasks = Vec::new();
    for (i, client) in clients.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let mut start = 1 + i as i64 * BATCH;
            while start <= ROWS {
                let values: Vec<String> = (start..(start + BATCH).min(ROWS + 1))
                    .map(|k| format!("({k}, 'value {k}', {})", k % 97))
                    .collect();
                client
                    .batch_execute(&format!(
                        "INSERT INTO scan (k, v, n) VALUES {}",
                        values.join(", ")
                    ))
                    .await?;
                start += 3 * BATCH;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// `k -> timestamp text` of `column` for `keys` on `c`.
async fn timestamps(c: &Cluster, column: &str, keys: &[i64]) -> Result<BTreeMap<i64, String>> {
    let list: Vec<String> = keys.iter().map(i64::to_string).collect();
    let rows = query_any(
        c,
        &format!(
            "SELECT k, {column} FROM scan WHERE k IN ({}) ORDER BY k",
            list.join(", ")
        ),
    )
    .await?;
    Ok(rows
        .rows
        .iter()
        .map(|r| {
            (
                r[0].clone().unwrap_or_default().parse().unwrap_or(-1),
                r[1].clone().unwrap_or_default(),
            )
        })
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn initial_scan_of_100k_rows_and_cursor() -> Result<()> {
    let started = Instant::now();
    let (a, b) = cluster_pair(3, true).await?;
    for c in [&a, &b] {
        c.exec(1, "CREATE TABLE scan (k INT8 PRIMARY KEY, v STRING NOT NULL, n INT8); CREATE TABLE cur (k INT8 PRIMARY KEY, v STRING)").await?;
    }
    enable_rangefeeds(&a).await?;
    load(&a).await?;
    let count: i64 = query_any(&a, "SELECT count(*) FROM scan").await?.rows[0][0]
        .clone()
        .unwrap_or_default()
        .parse()?;
    ensure!(count == ROWS, "A holds {count} rows after loading");
    phase(started, &format!("{ROWS} rows loaded on A"));

    // The stream, with A's node 3 unreachable from B at first (its proxy holds every byte),
    // so that node's partition cannot scan while the others finish: SHOW JOBS must show the
    // partial scan. Healed, the scan completes and the fraction reaches 1.
    ldr_sim::ldr::create_external_connection(&b, "a", &a).await?;
    a.set_node_fault(3, Fault::Drop)?;
    let scan_started = Instant::now();
    let job = ldr_sim::ldr::create_stream(&b, "a", &["scan"], &["scan"], None).await?;
    let mut samples: Vec<f64> = Vec::new();
    let mut statuses = Vec::new();
    let deadline = Instant::now() + CATCH_UP;
    let mut healed = false;
    loop {
        let row = job_row(&b, job).await?;
        let fraction: f64 = row
            .get("fraction_completed")
            .cloned()
            .flatten()
            .context("fraction_completed is NULL")?
            .parse()?;
        samples.push(fraction);
        statuses.push(
            row.get("running_status")
                .cloned()
                .flatten()
                .unwrap_or_default(),
        );
        if fraction >= 1.0 {
            break;
        }
        if !healed && fraction > 0.0 {
            phase(
                started,
                &format!(
                    "SHOW JOBS shows the partial scan: fraction_completed {fraction}, running_status {:?}",
                    statuses.last()
                ),
            );
            a.set_node_fault(3, Fault::Pass)?;
            healed = true;
        }
        ensure!(
            Instant::now() < deadline,
            "the initial scan did not finish within {CATCH_UP:?}: {samples:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ensure!(
        healed,
        "fraction_completed went from 0 to 1 without a partial value although one partition was held back: {samples:?}"
    );
    let scan_time = scan_started.elapsed();
    ensure!(
        samples.windows(2).all(|w| w[0] <= w[1]),
        "fraction_completed went backwards: {samples:?}"
    );
    ensure!(
        statuses.iter().any(|s| s == "initial scan"),
        "running_status never said \"initial scan\": {statuses:?}"
    );
    let at = now(&a).await?;
    wait_replicated(&b, job, at, CATCH_UP).await?;
    let fingerprints =
        wait_converged(&a.url(1)?, &b.url(1)?, "scan", Duration::from_secs(60)).await?;
    phase(
        started,
        &format!(
            "initial scan done in {:.1}s (one partition held back at first), fraction_completed {:?}; converged {fingerprints}",
            scan_time.as_secs_f64(),
            dedup(&samples)
        ),
    );

    // Every scanned row carries its source commit timestamp as its origin timestamp.
    let sample: Vec<i64> = (0..200).map(|i| 1 + i * (ROWS / 200) + i % 7).collect();
    let source = timestamps(&a, "crdb_internal_mvcc_timestamp", &sample).await?;
    let dest = timestamps(&b, "crdb_internal_origin_timestamp", &sample).await?;
    ensure!(
        source.len() == sample.len(),
        "sampled {} of {} keys on A",
        source.len(),
        sample.len()
    );
    ensure!(
        source == dest,
        "origin timestamps on B differ from the commit timestamps on A:\nA: {source:?}\nB: {dest:?}"
    );
    let local = timestamps(&a, "crdb_internal_origin_timestamp", &sample[..5]).await?;
    ensure!(
        local.values().all(String::is_empty),
        "rows written on A must have no origin timestamp: {local:?}"
    );
    phase(started, "sampled rows carry their source timestamps");

    // cursor: rows before it stay on A; rows after it, and a later update of an older row,
    // replicate. There is no initial scan.
    let values = |range: std::ops::RangeInclusive<i64>| {
        range
            .map(|k| format!("({k}, 'before {k}')"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    a.exec(1, &format!("INSERT INTO cur VALUES {}", values(1..=50)))
        .await?;
    let cursor = now(&a).await?;
    a.exec(
        2,
        &format!(
            "INSERT INTO cur VALUES {}",
            values(51..=100).replace("before", "after")
        ),
    )
    .await?;
    a.exec(3, "UPDATE cur SET v = 'updated after' WHERE k = 10")
        .await?;
    let job = ldr_sim::ldr::create_stream(
        &b,
        "a",
        &["cur"],
        &["cur"],
        Some(&format!("cursor = '{}'", cursor.to_decimal_string())),
    )
    .await?;
    wait_replicated(&b, job, now(&a).await?, CATCH_UP).await?;
    let got = read_kv(&b, "cur").await?;
    let mut expected: BTreeMap<i64, String> =
        (51..=100).map(|k| (k, format!("after {k}"))).collect();
    expected.insert(10, "updated after".into());
    ensure!(
        got == expected,
        "with cursor {cursor}, B has {} rows: {:?}; expected rows 51..=100 and 10",
        got.len(),
        got.keys().collect::<Vec<_>>()
    );
    let start = query_any(&b, "SHOW LOGICAL REPLICATION JOBS WITH DETAILS").await?;
    ensure!(
        start
            .rows
            .iter()
            .any(|r| r[0].as_deref() == Some(&job.to_string())),
        "cursor job listed: {start:?}"
    );
    phase(
        started,
        "cursor skipped the rows before it and replicated the changes after it",
    );
    Ok(())
}

fn dedup(samples: &[f64]) -> Vec<f64> {
    let mut out: Vec<f64> = Vec::new();
    for s in samples {
        if out.last() != Some(s) {
            out.push(*s);
        }
    }
    out
}

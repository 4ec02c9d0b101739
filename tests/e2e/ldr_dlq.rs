//! The dead letter queue (`seeds/001_*.txt`): rows that cannot apply on the destination — here a
//! UNIQUE secondary index clash between rows written on the two clusters (different primary
//! keys, same unique value) — are retried for `retry_queue_duration`, then land in
//! `<db>.crdb_replication.dlq_<table_id>_public_<table>` with `dlq_reason`, `mutation_type` and
//! `incoming_row`; the job keeps running and replicated time moves past them.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use ldr_e2e::{
    CATCH_UP, cluster_metrics, cluster_pair, column_values, enable_rangefeeds, now, phase,
    query_any, wait_job_status, wait_replicated,
};
use ldr_sim::sql::TextRows;

/// The DLQ's columns, in order (`seeds/001_*.txt`), hidden ones included.
const DLQ_COLUMNS: [&str; 8] = [
    "id",
    "ingestion_job_id",
    "table_id",
    "dlq_timestamp",
    "dlq_reason",
    "mutation_type",
    "key_value_bytes",
    "incoming_row",
];

fn rows_of(rows: &TextRows) -> Vec<Vec<String>> {
    rows.rows
        .iter()
        .map(|r| {
            r.iter()
                .map(|v| v.clone().unwrap_or_else(|| "NULL".into()))
                .collect()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unique_clash_goes_to_the_dlq_and_the_job_keeps_running() -> Result<()> {
    let started = Instant::now();
    let (a, b) = cluster_pair(1, false).await?;
    for c in [&a, &b] {
        c.exec(1, "CREATE DATABASE db; CREATE TABLE db.public.users (id INT8 PRIMARY KEY, email STRING NOT NULL UNIQUE, n INT8)").await?;
    }
    b.exec(
        1,
        "SET CLUSTER SETTING logical_replication.consumer.retry_queue_duration = '2s'",
    )
    .await?;
    // The clash: B has user 1 with x@; A has user 2 with the same address, and user 3.
    b.exec(1, "INSERT INTO db.users VALUES (1, 'x@example.com', 1)")
        .await?;
    a.exec(
        1,
        "INSERT INTO db.users VALUES (2, 'x@example.com', 2), (3, 'y@example.com', 3)",
    )
    .await?;
    enable_rangefeeds(&a).await?;
    ldr_sim::ldr::create_external_connection(&b, "a", &a).await?;
    let job =
        ldr_sim::ldr::create_stream(&b, "a", &["db.public.users"], &["db.public.users"], None)
            .await?;
    // A live clash too, as an update: on A user 2 gives up x@ and user 3 takes it. On B, user
    // 2 (never applied there) arrives with its new address; user 3's update clashes.
    wait_replicated(&b, job, now(&a).await?, CATCH_UP).await?;
    a.exec(
        1,
        "UPDATE db.users SET email = 'old-x@example.com' WHERE id = 2",
    )
    .await?;
    a.exec(
        1,
        "UPDATE db.users SET email = 'x@example.com', n = 33 WHERE id = 3",
    )
    .await?;
    wait_replicated(&b, job, now(&a).await?, CATCH_UP).await?;
    phase(started, &format!("job {job} replicated past both clashes"));

    // The DLQ table exists under crdb_replication, named after the destination table's id.
    let tables = query_any(&b, "SHOW TABLES FROM db").await?;
    let names: Vec<(String, String, String)> = column_values(&tables, "schema_name")?
        .into_iter()
        .zip(column_values(&tables, "table_name")?)
        .zip(column_values(&tables, "owner")?)
        .map(|((schema, name), owner)| (schema, name, owner))
        .collect();
    let (_, dlq, owner) = names
        .iter()
        .find(|(schema, name, _)| {
            schema == "crdb_replication"
                && name.starts_with("dlq_")
                && name.ends_with("_public_users")
        })
        .with_context(|| format!("no DLQ table in SHOW TABLES FROM db: {names:?}"))?
        .clone();
    // As in CockroachDB, the job's internal user creates (and owns) the DLQ table.
    ensure!(
        owner == "node",
        "DLQ table {dlq} is owned by {owner}, not node"
    );
    let table_id: i64 = dlq
        .trim_start_matches("dlq_")
        .trim_end_matches("_public_users")
        .parse()
        .with_context(|| format!("DLQ table name {dlq}"))?;
    let dlq = format!("db.crdb_replication.{dlq}");
    let columns = query_any(&b, &format!("SHOW COLUMNS FROM {dlq}")).await?;
    let names = column_values(&columns, "column_name")?;
    for column in DLQ_COLUMNS {
        ensure!(
            names.iter().any(|n| n == column),
            "{dlq} has no column {column}: {names:?}"
        );
    }
    phase(
        started,
        &format!("DLQ table {dlq} with the documented columns"),
    );

    // Both clashing rows are in it, with their reason, mutation type and incoming row.
    let rows = query_any(&b, &format!("SELECT ingestion_job_id, table_id, dlq_reason, mutation_type, incoming_row, dlq_timestamp FROM {dlq} ORDER BY dlq_timestamp")).await?;
    let rows = rows_of(&rows);
    ensure!(
        rows.len() == 2,
        "expected 2 DLQ rows (the insert of user 2, the update of user 3), got {rows:?}"
    );
    for row in &rows {
        ensure!(
            row[0] == job.to_string() && row[1] == table_id.to_string(),
            "job/table of DLQ row {row:?}"
        );
        ensure!(
            row[2].ends_with("(age limit)") || row[2].ends_with("(size limit)"),
            "dlq_reason {:?}",
            row[2]
        );
        ensure!(
            row[2].contains("unique") || row[2].contains("duplicate"),
            "dlq_reason does not name the clash: {:?}",
            row[2]
        );
        ensure!(row[5] != "NULL", "dlq_timestamp is NULL");
    }
    let insert: serde_json::Value = serde_json::from_str(&rows[0][4])
        .with_context(|| format!("incoming_row {:?}", rows[0][4]))?;
    ensure!(
        rows[0][3] == "insert"
            && insert == serde_json::json!({"id": 2, "email": "x@example.com", "n": 2}),
        "first DLQ row: {:?}",
        rows[0]
    );
    // CockroachDB logs every non-delete as `insert` (its DLQ has a TODO for updates); so do we.
    let update: serde_json::Value = serde_json::from_str(&rows[1][4])
        .with_context(|| format!("incoming_row {:?}", rows[1][4]))?;
    ensure!(
        rows[1][3] == "insert"
            && update == serde_json::json!({"id": 3, "email": "x@example.com", "n": 33}),
        "second DLQ row: {:?}",
        rows[1]
    );
    // A user can filter it like any table, and re-apply a row by hand from incoming_row.
    let by_type = query_any(&b, &format!("SELECT count(*) FROM {dlq} WHERE mutation_type = 'insert' AND incoming_row->>'id' = '2'")).await?;
    ensure!(
        ldr_e2e::scalar(&by_type).as_deref() == Some("1"),
        "filtered SELECT from the DLQ: {by_type:?}"
    );
    phase(
        started,
        "both clashes dead-lettered with reason, mutation type and incoming row",
    );

    // The job kept running: B keeps its own user 1, user 3 (before its clashing update), and the
    // later change of user 2 applied as an insert of a non-clashing row; new rows still arrive.
    wait_job_status(&b, job, "running", Duration::from_secs(5)).await?;
    a.exec(1, "INSERT INTO db.users VALUES (4, 'z@example.com', 4)")
        .await?;
    wait_replicated(&b, job, now(&a).await?, CATCH_UP).await?;
    let users = rows_of(&query_any(&b, "SELECT id, email, n FROM db.users ORDER BY id").await?);
    let expected = [
        ["1", "x@example.com", "1"],
        ["2", "old-x@example.com", "2"],
        ["3", "y@example.com", "3"],
        ["4", "z@example.com", "4"],
    ];
    ensure!(users == expected, "users on B: {users:?}");
    let dlqed = cluster_metrics(&b)
        .await?
        .counter("logical_replication_events_dlqed")
        .unwrap_or(0.0);
    ensure!(dlqed >= 2.0, "logical_replication_events_dlqed = {dlqed}");
    phase(
        started,
        "job running; later rows replicate; events_dlqed counted",
    );
    Ok(())
}

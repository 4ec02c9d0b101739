//! Validated mode (`WITH mode = 'validated'`, seeds 000–002): replicated rows go through the
//! destination's SQL write path, so its constraints hold. Through real `ldr` processes:
//!
//! - a stream of tables with foreign keys is refused in immediate mode (CockroachDB's text)
//!   and accepted in validated mode;
//! - parent and child tables in one stream (initial scan and live changes, children written in
//!   the same transactions as their parents) converge with no DLQ row;
//! - a child whose parent never arrives (deleted on the destination), and a row whose UNIQUE
//!   value a destination row holds, are retried for `retry_queue_duration` and then
//!   dead-lettered with the constraint's message and `(age limit)`, as is a row a stricter
//!   destination CHECK refuses; the job keeps running;
//! - the mode is in `SHOW LOGICAL REPLICATION JOBS WITH DETAILS`, and constraint failures are
//!   counted in `logical_replication_validated_constraint_failures`.

use std::time::Instant;

use anyhow::{Context, Result, ensure};
use ldr_e2e::{
    CATCH_UP, cluster_metrics, cluster_pair, column_values, enable_rangefeeds, now, phase,
    query_any, wait_replicated,
};
use ldr_sim::Cluster;

const SCHEMA: [&str; 2] = [
    "CREATE TABLE parent (id INT8 PRIMARY KEY, name STRING NOT NULL)",
    "CREATE TABLE child (id INT8 PRIMARY KEY, pid INT8 NOT NULL REFERENCES parent (id), \
     email STRING UNIQUE, n INT8 CHECK (n >= 0))",
];

async fn rows(c: &Cluster, sql: &str) -> Result<Vec<Vec<String>>> {
    Ok(query_any(c, sql)
        .await?
        .rows
        .into_iter()
        .map(|r| r.into_iter().map(|v| v.unwrap_or_default()).collect())
        .collect())
}

/// `(dlq_reason, incoming_row)` of every DLQ row of `table` on `c`.
async fn dlq_rows(c: &Cluster, table: &str) -> Result<Vec<(String, String)>> {
    let tables = query_any(c, "SHOW TABLES FROM defaultdb").await?;
    let suffix = format!("_public_{table}");
    let Some(dlq) = column_values(&tables, "table_name")?
        .into_iter()
        .find(|n| n.starts_with("dlq_") && n.ends_with(&suffix))
    else {
        return Ok(vec![]);
    };
    Ok(rows(
        c,
        &format!(
            "SELECT dlq_reason, incoming_row::STRING FROM defaultdb.crdb_replication.{dlq} ORDER BY dlq_timestamp"
        ),
    )
    .await?
    .into_iter()
    .map(|r| (r[0].clone(), r[1].clone()))
    .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn validated_mode_enforces_the_destinations_constraints() -> Result<()> {
    let started = Instant::now();
    let (a, b) = cluster_pair(1, false).await?;
    for c in [&a, &b] {
        for sql in SCHEMA {
            c.exec(1, sql).await?;
        }
    }
    b.exec(
        1,
        "SET CLUSTER SETTING logical_replication.consumer.retry_queue_duration = '4s'",
    )
    .await?;
    // Rows before the stream (initial scan): 20 parents, 40 children.
    let parents: Vec<String> = (1..=20).map(|i| format!("({i}, 'p{i}')")).collect();
    a.exec(
        1,
        &format!("INSERT INTO parent VALUES {}", parents.join(", ")),
    )
    .await?;
    let children: Vec<String> = (1..=40)
        .map(|i| format!("({i}, {}, 'c{i}@x', {i})", i % 20 + 1))
        .collect();
    a.exec(
        1,
        &format!("INSERT INTO child VALUES {}", children.join(", ")),
    )
    .await?;
    enable_rangefeeds(&a).await?;
    ldr_sim::ldr::create_external_connection(&b, "a", &a).await?;

    // Immediate mode cannot check foreign keys: refused.
    let refused = ldr_sim::ldr::create_stream(
        &b,
        "a",
        &["defaultdb.public.parent", "defaultdb.public.child"],
        &["defaultdb.public.parent", "defaultdb.public.child"],
        None,
    )
    .await
    .err()
    .context("an immediate-mode stream of tables with foreign keys was accepted")?;
    ensure!(
        refused
            .to_string()
            .contains("foreign keys are only supported with MODE = 'validated'"),
        "{refused}"
    );

    let job = ldr_sim::ldr::create_stream(
        &b,
        "a",
        &["defaultdb.public.parent", "defaultdb.public.child"],
        &["defaultdb.public.parent", "defaultdb.public.child"],
        Some("mode = 'validated'"),
    )
    .await?;
    let details = query_any(&b, "SHOW LOGICAL REPLICATION JOBS WITH DETAILS").await?;
    let command = column_values(&details, "command")?.join(" ");
    ensure!(command.contains("validated"), "command: {command}");
    // The console's replication table names the mode.
    let page = b.http_get(1, "/").await?;
    ensure!(
        page.body.contains(&format!("<tr><td>{job}</td>"))
            && page.body.contains("<td>validated</td>"),
        "console does not show job {job} in validated mode"
    );

    // Live changes: parents and their children in one transaction each, an update, a delete
    // of a child and then of its parent.
    for i in 21..=30 {
        a.exec(
            1,
            &format!(
                "BEGIN; INSERT INTO parent VALUES ({i}, 'p{i}'); \
                 INSERT INTO child VALUES ({}, {i}, 'c{i}@y', {i}); COMMIT",
                i + 100
            ),
        )
        .await?;
    }
    a.exec(1, "UPDATE parent SET name = 'renamed' WHERE id = 3")
        .await?;
    a.exec(1, "DELETE FROM child WHERE id = 130").await?;
    a.exec(1, "DELETE FROM parent WHERE id = 30").await?;
    wait_replicated(&b, job, now(&a).await?, CATCH_UP).await?;
    for sql in [
        "SELECT id, name FROM parent ORDER BY id",
        "SELECT id, pid, email, n FROM child ORDER BY id",
    ] {
        let (on_a, on_b) = (rows(&a, sql).await?, rows(&b, sql).await?);
        ensure!(on_a == on_b, "{sql}: A {on_a:?}\nB {on_b:?}");
    }
    ensure!(rows(&b, "SELECT count(*) FROM child").await?[0][0] == "49");
    for table in ["parent", "child"] {
        let dlq = dlq_rows(&b, table).await?;
        ensure!(dlq.is_empty(), "DLQ rows for {table}: {dlq:?}");
    }
    phase(
        started,
        &format!("job {job}: parents and children converged, no DLQ row"),
    );

    // A child whose parent is gone on B (deleted there by a local write), and a child whose
    // unique email a local row of B holds: retried, then dead-lettered.
    a.exec(1, "INSERT INTO parent VALUES (40, 'p40')").await?;
    wait_replicated(&b, job, now(&a).await?, CATCH_UP).await?;
    b.exec(1, "DELETE FROM parent WHERE id = 40").await?;
    b.exec(1, "INSERT INTO child VALUES (500, 1, 'taken@z', 1)")
        .await?;
    a.exec(1, "INSERT INTO child VALUES (400, 40, 'orphan@z', 1)")
        .await?;
    a.exec(1, "INSERT INTO child VALUES (401, 2, 'taken@z', 1)")
        .await?;
    wait_replicated(&b, job, now(&a).await?, CATCH_UP).await?;
    let dlq = dlq_rows(&b, "child").await?;
    ensure!(dlq.len() == 2, "DLQ rows for child: {dlq:?}");
    let fk = dlq
        .iter()
        .find(|(_, row)| row.contains("orphan@z"))
        .context("the orphan child is not in the DLQ")?;
    ensure!(
        fk.0.contains("violates foreign key constraint") && fk.0.ends_with("(age limit)"),
        "reason {:?}",
        fk.0
    );
    let unique = dlq
        .iter()
        .find(|(_, row)| row.contains("\"id\": 401") || row.contains("\"id\":401"))
        .context("the unique clash is not in the DLQ")?;
    ensure!(
        unique
            .0
            .contains("duplicate key value violates unique constraint")
            && unique.0.ends_with("(age limit)"),
        "reason {:?}",
        unique.0
    );
    ensure!(
        rows(&b, "SELECT count(*) FROM child WHERE id IN (400, 401)").await?[0][0] == "0",
        "a dead-lettered row was written"
    );
    phase(
        started,
        "orphan child and unique clash dead-lettered after the retry window",
    );

    // A CHECK the source's rows can never meet (a stricter destination, accepted with
    // `skip schema check`): dead-lettered with the CHECK's text; rows that meet it apply.
    a.exec(
        1,
        "CREATE TABLE scored (id INT8 PRIMARY KEY, n INT8 CHECK (n < 1000))",
    )
    .await?;
    b.exec(
        1,
        "CREATE TABLE scored (id INT8 PRIMARY KEY, n INT8 CHECK (n < 100))",
    )
    .await?;
    let scored = ldr_sim::ldr::create_stream(
        &b,
        "a",
        &["defaultdb.public.scored"],
        &["defaultdb.public.scored"],
        Some("mode = 'validated', skip schema check"),
    )
    .await?;
    a.exec(1, "INSERT INTO scored VALUES (1, 500), (2, 5)")
        .await?;
    wait_replicated(&b, scored, now(&a).await?, CATCH_UP).await?;
    ensure!(
        rows(&b, "SELECT id, n FROM scored").await? == vec![vec!["2", "5"]],
        "scored on B: {:?}",
        rows(&b, "SELECT id, n FROM scored").await?
    );
    let dlq = dlq_rows(&b, "scored").await?;
    ensure!(
        dlq.len() == 1 && dlq[0].0 == "failed to satisfy CHECK constraint (n < 100) (age limit)",
        "DLQ rows for scored: {dlq:?}"
    );

    // The job keeps running.
    a.exec(1, "INSERT INTO child VALUES (402, 5, 'later@z', 7)")
        .await?;
    wait_replicated(&b, job, now(&a).await?, CATCH_UP).await?;
    ensure!(
        rows(&b, "SELECT email FROM child WHERE id = 402").await? == vec![vec!["later@z"]],
        "the job stopped applying after the DLQ"
    );
    let failures = cluster_metrics(&b)
        .await?
        .counter("logical_replication_validated_constraint_failures")
        .unwrap_or(0.0);
    ensure!(failures >= 2.0, "constraint failures counted: {failures}");
    phase(
        started,
        &format!("job keeps running; {failures} constraint failures counted"),
    );
    Ok(())
}

/// Bidirectional validated mode over parent and child tables: each side writes parents with
/// their children (in one transaction, so a child can reach the other side before its parent
/// is applied there), children of the other side's parents once those arrived, and
/// conflicting updates of shared parents. Both clusters converge to the same rows with no DLQ
/// row on either side.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parents_and_children_written_on_both_sides_converge() -> Result<()> {
    let started = Instant::now();
    let (a, b) = cluster_pair(1, false).await?;
    for c in [&a, &b] {
        for sql in SCHEMA {
            c.exec(1, sql).await?;
        }
        enable_rangefeeds(c).await?;
    }
    let shared: Vec<String> = (1..=10).map(|i| format!("({i}, 'shared{i}')")).collect();
    a.exec(
        1,
        &format!("INSERT INTO parent VALUES {}", shared.join(", ")),
    )
    .await?;
    let tables = ["defaultdb.public.parent", "defaultdb.public.child"];
    ldr_sim::ldr::create_external_connection(&a, "b", &b).await?;
    ldr_sim::ldr::create_external_connection(&b, "a", &a).await?;
    let validated = Some("mode = 'validated'");
    let job_on_b = ldr_sim::ldr::create_stream(&b, "a", &tables, &tables, validated).await?;
    let job_on_a = ldr_sim::ldr::create_stream(&a, "b", &tables, &tables, validated).await?;
    wait_replicated(&b, job_on_b, now(&a).await?, CATCH_UP).await?;
    phase(started, "bidirectional validated streams running");

    // Each side: 20 parents with a child each (one transaction), updates of the shared
    // parents, and children of the shared parents.
    let (on_a, on_b) = tokio::join!(write_family(&a, 1000, "a"), write_family(&b, 2000, "b"));
    on_a?;
    on_b?;
    let (end_a, end_b) = (now(&a).await?, now(&b).await?);
    wait_replicated(&b, job_on_b, end_a, CATCH_UP).await?;
    wait_replicated(&a, job_on_a, end_b, CATCH_UP).await?;
    for sql in [
        "SELECT id, name FROM parent ORDER BY id",
        "SELECT id, pid, email, n FROM child ORDER BY id",
    ] {
        let (rows_a, rows_b) = (rows(&a, sql).await?, rows(&b, sql).await?);
        ensure!(rows_a == rows_b, "{sql}: A {rows_a:?}\nB {rows_b:?}");
    }
    ensure!(
        rows(&a, "SELECT count(*) FROM child").await?[0][0] == "80",
        "children missing"
    );
    for (label, c) in [("A", &a), ("B", &b)] {
        for table in ["parent", "child"] {
            let dlq = dlq_rows(c, table).await?;
            ensure!(dlq.is_empty(), "DLQ rows for {table} on {label}: {dlq:?}");
        }
    }
    phase(started, "both sides converged, no DLQ row");
    Ok(())
}

/// 20 parents with a child each (one transaction), updates of the shared parents 1–10, and
/// children of the shared parents, on `c`.
async fn write_family(c: &Cluster, base: i64, side: &str) -> Result<()> {
    for i in 0..20 {
        let id = base + i;
        c.exec(
            1,
            &format!(
                "BEGIN; INSERT INTO parent VALUES ({id}, '{side}{id}'); \
                 INSERT INTO child VALUES ({id}, {id}, '{side}{id}@x', {i}); COMMIT"
            ),
        )
        .await?;
        let shared = i % 10 + 1;
        c.exec(
            1,
            &format!("UPDATE parent SET name = '{side}-{i}' WHERE id = {shared}"),
        )
        .await?;
        c.exec(
            1,
            &format!(
                "INSERT INTO child VALUES ({}, {shared}, NULL, {i})",
                base + 500 + i
            ),
        )
        .await?;
    }
    Ok(())
}

//! Every way `CREATE LOGICAL REPLICATION STREAM` can be refused, each through a real statement
//! with its SQLSTATE and CockroachDB's text (reference/crdb-ldr.md §4): rangefeeds off on the
//! source, a URI that is not an external connection, a missing connection, unequal table lists,
//! schema mismatches (column count, column type, UNIQUE indexes, a DECIMAL primary key), a
//! foreign key in immediate mode, foreign keys that differ in validated mode, missing privileges on
//! either side, a multi-statement transaction. Then the options that change what replicates:
//! `discard = 'all-deletes'`, `label` (by-label metrics) and `skip schema check`.

use std::time::Instant;

use anyhow::{Context, Result, ensure};
use ldr_e2e::{
    CATCH_UP, cluster_metrics, cluster_pair, enable_rangefeeds, expect_error, now, phase, poll,
    query_any, scalar, wait_replicated,
};
use ldr_sim::Cluster;
use tokio_postgres::Client;

async fn client(c: &Cluster) -> Result<Client> {
    Ok(c.sql(1).await?)
}

/// Creates a stream with `options` on `dest`; returns the job id.
async fn create(
    dest: &Client,
    from: &str,
    connection: &str,
    into: &str,
    options: &str,
) -> Result<i64> {
    let sql = format!(
        "CREATE LOGICAL REPLICATION STREAM FROM TABLE {from} ON 'external://{connection}' INTO TABLE {into}{options}"
    );
    let row = dest
        .query_one(&sql, &[])
        .await
        .with_context(|| sql.clone())?;
    Ok(row.get::<_, i64>(0))
}

async fn count(c: &Cluster, sql: &str) -> Result<i64> {
    Ok(scalar(&query_any(c, sql).await?)
        .unwrap_or_default()
        .parse()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn create_stream_errors_and_options() -> Result<()> {
    let started = Instant::now();
    let (a, b) = cluster_pair(1, false).await?;
    let addr = a.node_info(1)?.advertised_sql_addr;
    let (src, dst) = (client(&a).await?, client(&b).await?);
    let schemas = [
        // (table, source definition, destination definition)
        (
            "ok",
            "id INT8 PRIMARY KEY, v STRING",
            "id INT8 PRIMARY KEY, v STRING",
        ),
        (
            "more_cols",
            "id INT8 PRIMARY KEY, v STRING, w INT8",
            "id INT8 PRIMARY KEY, v STRING",
        ),
        (
            "other_type",
            "id INT8 PRIMARY KEY, v INT8",
            "id INT8 PRIMARY KEY, v STRING",
        ),
        (
            "uniq",
            "id INT8 PRIMARY KEY, v STRING UNIQUE",
            "id INT8 PRIMARY KEY, v STRING",
        ),
        (
            "dec",
            "id DECIMAL PRIMARY KEY, v STRING",
            "id DECIMAL PRIMARY KEY, v STRING",
        ),
        ("parent", "id INT8 PRIMARY KEY", "id INT8 PRIMARY KEY"),
        (
            "child",
            "id INT8 PRIMARY KEY, p INT8 REFERENCES parent (id)",
            "id INT8 PRIMARY KEY, p INT8 REFERENCES parent (id)",
        ),
        (
            "fk_differs",
            "id INT8 PRIMARY KEY, p INT8",
            "id INT8 PRIMARY KEY, p INT8 REFERENCES parent (id)",
        ),
        (
            "keep",
            "k INT8 PRIMARY KEY, v STRING",
            "k INT8 PRIMARY KEY, v STRING",
        ),
        (
            "labeled",
            "k INT8 PRIMARY KEY, v STRING",
            "k INT8 PRIMARY KEY, v STRING",
        ),
    ];
    for (table, source, dest) in schemas {
        src.batch_execute(&format!("CREATE TABLE {table} ({source})"))
            .await?;
        dst.batch_execute(&format!("CREATE TABLE {table} ({dest})"))
            .await?;
    }
    src.batch_execute(
        "CREATE USER no_priv WITH PASSWORD 'p1';
         CREATE USER src_legacy WITH PASSWORD 'p2'; GRANT SYSTEM REPLICATION TO src_legacy;
         CREATE USER src_new WITH PASSWORD 'p3'; GRANT SYSTEM REPLICATIONSOURCE TO src_new;",
    )
    .await?;
    dst.batch_execute(&format!(
        "CREATE EXTERNAL CONNECTION a AS 'postgresql://root@{addr}/defaultdb?sslmode=disable';
         CREATE EXTERNAL CONNECTION a_no_priv AS 'postgresql://no_priv:p1@{addr}/defaultdb?sslmode=disable';
         CREATE EXTERNAL CONNECTION a_legacy AS 'postgresql://src_legacy:p2@{addr}/defaultdb?sslmode=disable';
         CREATE EXTERNAL CONNECTION a_new AS 'postgresql://src_new:p3@{addr}/defaultdb?sslmode=disable';
         CREATE USER dest_user WITH PASSWORD 'p4';"
    ))
    .await?;
    phase(started, "tables, users and external connections created");

    let stream = |table: &str| {
        format!(
            "CREATE LOGICAL REPLICATION STREAM FROM TABLE {table} ON 'external://a' INTO TABLE {table}"
        )
    };

    // The source must have rangefeeds enabled.
    expect_error(
        &dst,
        &stream("ok"),
        "55000",
        "kv.rangefeed.enabled must be enabled on the source cluster for logical replication",
    )
    .await?;
    enable_rangefeeds(&a).await?;

    // The URI: an external connection, which must exist.
    expect_error(
        &dst,
        &format!("CREATE LOGICAL REPLICATION STREAM FROM TABLE ok ON 'postgresql://root@{addr}/defaultdb?sslmode=disable' INTO TABLE ok"),
        "22023",
        "uri must be an external connection",
    )
    .await?;
    let missing = expect_error(
        &dst,
        "CREATE LOGICAL REPLICATION STREAM FROM TABLE ok ON 'external://nope' INTO TABLE ok",
        "42704",
        "nope",
    )
    .await?;
    ensure!(
        missing.contains("does not exist"),
        "missing connection: {missing:?}"
    );

    // The table lists must be equally long.
    expect_error(
        &dst,
        "CREATE LOGICAL REPLICATION STREAM FROM TABLES (ok, keep) ON 'external://a' INTO TABLES (ok)",
        "22023",
        "the same number of source and destination tables must be specified",
    )
    .await?;

    // Schema validation.
    expect_error(
        &dst,
        &stream("more_cols"),
        "42P16",
        "destination table more_cols has 2 columns, but the source table more_cols has 3 columns",
    )
    .await?;
    expect_error(&dst, &stream("other_type"), "42P16", "destination table other_type column v has type STRING, but the source table other_type has type INT8").await?;
    expect_error(&dst, &stream("uniq"), "42P16", "UNIQUE indexes").await?;
    expect_error(
        &dst,
        &stream("dec"),
        "42P16",
        "primary key column (id) with composite encoding",
    )
    .await?;
    expect_error(
        &dst,
        &stream("child"),
        "42P16",
        "foreign keys are only supported with MODE = 'validated'",
    )
    .await?;
    // Validated mode accepts foreign keys, but they must match.
    expect_error(
        &dst,
        &format!("{} WITH mode = 'validated'", stream("fk_differs")),
        "42P16",
        "destination table fk_differs has 1 foreign key constraints, but the source table fk_differs has 0",
    )
    .await?;
    phase(started, "URI, table-list and schema errors");

    // Privileges: the destination user needs REPLICATIONDEST (or REPLICATION), the URI's user
    // REPLICATIONSOURCE (or REPLICATION) on the source.
    let dest_user = ldr_sim::sql::connect(
        &format!(
            "postgresql://dest_user:p4@{}/defaultdb?sslmode=disable",
            b.node_info(1)?.listen_addr
        ),
        ldr_sim::sql::CONNECT_TIMEOUT,
    )
    .await?;
    expect_error(
        &dest_user,
        &stream("ok"),
        "42501",
        "failed privilege check: table or system level REPLICATIONDEST privilege required: user dest_user does not have REPLICATIONDEST privilege on relation ok",
    )
    .await?;
    expect_error(
        &dst,
        "CREATE LOGICAL REPLICATION STREAM FROM TABLE ok ON 'external://a_no_priv' INTO TABLE ok",
        "42501",
        "failed privilege check: table or system level REPLICATIONSOURCE privilege required: user no_priv does not have REPLICATIONSOURCE privilege on relation ok",
    )
    .await?;

    // Not inside an explicit transaction.
    expect_error(
        &dst,
        &format!("BEGIN; {}; COMMIT", stream("ok")),
        "25001",
        "cannot CREATE LOGICAL REPLICATION STREAM in a multi-statement transaction",
    )
    .await?;
    dst.batch_execute("ROLLBACK").await.ok();
    let jobs = count(&b, "SELECT count(*) FROM [SHOW JOBS]").await?;
    ensure!(jobs == 0, "refused statements left {jobs} jobs behind");
    phase(
        started,
        "privilege and transaction errors; no job was created",
    );

    // The same statements succeed once their cause is fixed: REPLICATIONDEST for the user,
    // REPLICATION (legacy) or REPLICATIONSOURCE in the URI, SKIP SCHEMA CHECK for `uniq`.
    dst.batch_execute("GRANT SYSTEM REPLICATIONDEST TO dest_user")
        .await?;
    let ok_job = create(&dest_user, "ok", "a_legacy", "ok", "").await?;
    let uniq_job = create(&dst, "uniq", "a_new", "uniq", " WITH SKIP SCHEMA CHECK").await?;
    // discard = 'all-deletes': inserts and updates replicate, deletes do not.
    let keep_job = create(&dst, "keep", "a", "keep", " WITH discard = 'all-deletes'").await?;
    // label: the job's metrics also appear under *_by_label{label="…"}.
    let labeled_job = create(
        &dst,
        "labeled",
        "a",
        "labeled",
        " WITH label = 'tutorial_label'",
    )
    .await?;
    src.batch_execute(
        "INSERT INTO ok VALUES (1, 'one');
         INSERT INTO uniq VALUES (1, 'u1'), (2, 'u2');
         INSERT INTO keep VALUES (1, 'a'), (2, 'b'), (3, 'c');
         INSERT INTO labeled VALUES (1, 'x'), (2, 'y');",
    )
    .await?;
    let at = now(&a).await?;
    for job in [ok_job, uniq_job, keep_job, labeled_job] {
        wait_replicated(&b, job, at, CATCH_UP).await?;
    }
    src.batch_execute("DELETE FROM keep WHERE k IN (1, 2); UPDATE keep SET v = 'c2' WHERE k = 3; INSERT INTO keep VALUES (4, 'd')").await?;
    let at = now(&a).await?;
    wait_replicated(&b, keep_job, at, CATCH_UP).await?;
    ensure!(
        count(&b, "SELECT count(*) FROM ok").await? == 1,
        "ok did not replicate"
    );
    ensure!(
        count(&b, "SELECT count(*) FROM uniq").await? == 2,
        "uniq did not replicate with SKIP SCHEMA CHECK"
    );
    let keep = ldr_e2e::read_kv(&b, "keep").await?;
    let expected: std::collections::BTreeMap<i64, String> =
        [(1, "a"), (2, "b"), (3, "c2"), (4, "d")]
            .into_iter()
            .map(|(k, v)| (k, v.to_string()))
            .collect();
    ensure!(
        keep == expected,
        "discard = 'all-deletes': B has {keep:?}, expected {expected:?}"
    );
    ensure!(
        count(&a, "SELECT count(*) FROM keep").await? == 2,
        "A must have deleted two rows"
    );
    phase(
        started,
        "fixed statements succeed; all-deletes drops deletes only; skip schema check replicates",
    );

    let m = poll(
        "by-label metrics of the labeled job",
        CATCH_UP,
        std::time::Duration::from_millis(300),
        || async {
            let m = cluster_metrics(&b).await.map_err(|e| e.to_string())?;
            match m.get(
                "logical_replication_events_ingested_by_label",
                &[("label", "tutorial_label")],
            ) {
                Some(v) if v >= 2.0 => Ok(m),
                other => Err(format!("events_ingested_by_label = {other:?}")),
            }
        },
    )
    .await?;
    for name in [
        "logical_replication_replicated_time_by_label",
        "logical_replication_events_dlqed_by_label",
    ] {
        ensure!(
            m.get(name, &[("label", "tutorial_label")]).is_some(),
            "{name}{{label=\"tutorial_label\"}} is missing from /metrics"
        );
    }
    let labels: std::collections::BTreeSet<String> = m
        .samples
        .iter()
        .filter(|s| s.name.ends_with("_by_label"))
        .filter_map(|s| s.labels.get("label").cloned())
        .collect();
    ensure!(
        labels.len() == 1,
        "only the labeled job has by-label metrics, got labels {labels:?}"
    );
    phase(started, "label: *_by_label metrics present");
    Ok(())
}

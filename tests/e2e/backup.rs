//! Backups, restores and `AS OF SYSTEM TIME` through real `ldr` processes (CockroachDB's
//! BACKUP / RESTORE / SHOW BACKUP(S), seed 001 "Jobs and LDR"):
//! - a full backup, rows changed and dropped, RESTORE gives the backed-up rows back; an
//!   incremental layer picks up later writes and deletes; a backup `AS OF SYSTEM TIME` holds
//!   the rows of that time; `SHOW BACKUPS` / `SHOW BACKUP` list the layers; the jobs show in
//!   `SHOW JOBS` as BACKUP / RESTORE, succeeded, and no protected timestamp stays behind;
//! - `SELECT … AS OF SYSTEM TIME` reads the past, and below the GC threshold fails with
//!   CockroachDB's error;
//! - bad input (no backup there, a corrupted file, an existing table, an unknown database,
//!   a path outside the extern directory) is refused with a SQLSTATE;
//! - the seed's sentence: a backup of an LDR destination table includes the rows LDR wrote,
//!   and the restored table is not schema locked.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use ldr_e2e::{
    CATCH_UP, cluster, cluster_pair, column_values, enable_rangefeeds, expect_error, now, phase,
    query_any, read_kv, row_map,
};
use ldr_sim::Cluster;

/// The result row of a BACKUP or RESTORE statement run on node 1, as `column -> value`.
async fn run_job_statement(c: &Cluster, sql: &str) -> Result<BTreeMap<String, Option<String>>> {
    let rows = query_any(c, sql).await.with_context(|| sql.to_string())?;
    ensure!(rows.rows.len() == 1, "{sql}: one result row, got {rows:?}");
    let row = row_map(&rows, 0);
    ensure!(
        row.get("status").cloned().flatten().as_deref() == Some("succeeded")
            && row.get("fraction_completed").cloned().flatten().as_deref() == Some("1"),
        "{sql}: expected a succeeded job, got {row:?}"
    );
    Ok(row)
}

fn count(row: &BTreeMap<String, Option<String>>, column: &str) -> Result<i64> {
    row.get(column)
        .cloned()
        .flatten()
        .with_context(|| format!("no {column} in {row:?}"))?
        .parse::<i64>()
        .context(column.to_string())
}

fn kv(pairs: &[(i64, &str)]) -> BTreeMap<i64, String> {
    pairs.iter().map(|(k, v)| (*k, v.to_string())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backup_restore_incremental_as_of_and_bad_input() -> Result<()> {
    let started = Instant::now();
    let c = cluster("bk", 1).await?;
    let client = c.sql(1).await?;
    let coll = "nodelocal://1/coll";

    phase(
        started,
        "1. a table with a secondary and a unique index, a full backup",
    );
    client
        .batch_execute(
            "CREATE TABLE t (k INT8 PRIMARY KEY, v STRING, w STRING UNIQUE, INDEX (v));
             INSERT INTO t VALUES (1, 'a', 'wa'), (2, 'b', 'wb'), (3, 'c', 'wc')",
        )
        .await?;
    let before_changes = now(&c).await?;
    let full = run_job_statement(&c, &format!("BACKUP TABLE t INTO '{coll}'")).await?;
    ensure!(
        count(&full, "rows")? == 3 && count(&full, "index_entries")? == 6,
        "full backup counts 3 rows and their 6 index entries: {full:?}"
    );

    phase(
        started,
        "2. changes, then an incremental backup picks them up",
    );
    client
        .batch_execute(
            "UPDATE t SET v = 'b2' WHERE k = 2; DELETE FROM t WHERE k = 1;
             INSERT INTO t VALUES (4, 'd', 'wd')",
        )
        .await?;
    let incremental =
        run_job_statement(&c, &format!("BACKUP TABLE t INTO LATEST IN '{coll}'")).await?;
    ensure!(
        count(&incremental, "rows")? == 2,
        "the incremental layer holds the changed rows only: {incremental:?}"
    );
    client
        .batch_execute("INSERT INTO t VALUES (5, 'e', 'we')")
        .await?;

    phase(started, "3. SHOW BACKUPS and SHOW BACKUP list the layers");
    let backups = query_any(&c, &format!("SHOW BACKUPS IN '{coll}'")).await?;
    let paths = column_values(&backups, "path")?;
    ensure!(paths.len() == 1, "one full backup: {paths:?}");
    let path = &paths[0];
    ensure!(
        path.len() == "/2026/12/07-123456.78".len() && path.starts_with('/'),
        "CockroachDB's dated subdirectory: {path}"
    );
    let dir = c.node_info(1)?.store_dir.join("extern/coll");
    let latest = std::fs::read_to_string(dir.join("LATEST"))?;
    ensure!(
        &latest == path,
        "LATEST names {latest}, SHOW BACKUPS {path}"
    );
    let shown = query_any(&c, &format!("SHOW BACKUP FROM LATEST IN '{coll}'")).await?;
    ensure!(
        column_values(&shown, "backup_type")? == ["full", "incremental"]
            && column_values(&shown, "object_name")? == ["t", "t"]
            && column_values(&shown, "rows")? == ["3", "2"]
            && column_values(&shown, "database_name")? == ["defaultdb", "defaultdb"],
        "SHOW BACKUP: {shown:?}"
    );
    ensure!(
        row_map(&shown, 0)
            .get("start_time")
            .cloned()
            .flatten()
            .is_none()
            && row_map(&shown, 1).get("start_time") == row_map(&shown, 0).get("end_time"),
        "the incremental layer starts where the full one ends: {shown:?}"
    );

    phase(
        started,
        "4. drop the table: RESTORE gives the rows of the latest layer",
    );
    client.batch_execute("DROP TABLE t").await?;
    let restored =
        run_job_statement(&c, &format!("RESTORE TABLE t FROM LATEST IN '{coll}'")).await?;
    ensure!(count(&restored, "rows")? == 3, "{restored:?}");
    let rows = read_kv(&c, "t").await?;
    ensure!(
        rows == kv(&[(2, "b2"), (3, "c"), (4, "d")]),
        "restored rows: {rows:?}"
    );
    // The indexes were rebuilt: lookups through them find the rows, and uniqueness holds.
    let by_v = query_any(&c, "SELECT k FROM t WHERE v = 'b2'").await?;
    ensure!(column_values(&by_v, "k")? == ["2"], "{by_v:?}");
    expect_error(
        &client,
        "INSERT INTO t VALUES (9, 'x', 'wd')",
        "23505",
        "t_w_key",
    )
    .await?;

    phase(
        started,
        "5. a backup AS OF SYSTEM TIME before the changes holds the old rows",
    );
    client.batch_execute("CREATE DATABASE old").await?;
    run_job_statement(
        &c,
        &format!(
            "BACKUP TABLE t INTO 'nodelocal://1/asof' AS OF SYSTEM TIME '{}'",
            now(&c).await?.to_decimal_string()
        ),
    )
    .await?;
    client
        .batch_execute("UPDATE t SET v = 'later' WHERE k = 3")
        .await?;
    run_job_statement(
        &c,
        "RESTORE TABLE t FROM LATEST IN 'nodelocal://1/asof' WITH into_db = 'old'",
    )
    .await?;
    let old = read_kv(&c, "old.t").await?;
    ensure!(
        old == kv(&[(2, "b2"), (3, "c"), (4, "d")]),
        "AS OF SYSTEM TIME backup: {old:?}"
    );

    phase(
        started,
        "6. SELECT … AS OF SYSTEM TIME reads the past; below the GC threshold fails",
    );
    client
        .batch_execute(
            "CREATE TABLE h (k INT8 PRIMARY KEY, v STRING); INSERT INTO h VALUES (1, 'one')",
        )
        .await?;
    let one = now(&c).await?;
    client
        .batch_execute("UPDATE h SET v = 'uno' WHERE k = 1")
        .await?;
    let past = query_any(
        &c,
        &format!(
            "SELECT v FROM h AS OF SYSTEM TIME '{}'",
            one.to_decimal_string()
        ),
    )
    .await?;
    ensure!(column_values(&past, "v")? == ["one"], "{past:?}");
    let present = query_any(&c, "SELECT v FROM h").await?;
    ensure!(column_values(&present, "v")? == ["uno"], "{present:?}");
    let message = expect_error(
        &client,
        "SELECT * FROM h AS OF SYSTEM TIME '-5h'",
        "XXUUU",
        "must be after replica GC threshold",
    )
    .await?;
    ensure!(message.starts_with("batch timestamp "), "{message}");
    expect_error(
        &client,
        "SELECT * FROM h AS OF SYSTEM TIME '10s'",
        "22023",
        "interval value '10s' too large",
    )
    .await?;
    expect_error(
        &client,
        &format!(
            "BACKUP TABLE h INTO 'nodelocal://1/x' AS OF SYSTEM TIME '{}'",
            before_changes
                .sub_nanos(5 * 3600 * 1_000_000_000)
                .to_decimal_string()
        ),
        "XXUUU",
        "must be after replica GC threshold",
    )
    .await?;

    phase(started, "7. bad input: each a clear error with a SQLSTATE");
    expect_error(
        &client,
        "RESTORE TABLE t FROM LATEST IN 'nodelocal://1/nothing'",
        "58P01",
        "path does not contain a completed latest backup",
    )
    .await?;
    expect_error(
        &client,
        &format!("RESTORE TABLE t FROM LATEST IN '{coll}'"),
        "42P07",
        "relation \"t\" already exists",
    )
    .await?;
    expect_error(
        &client,
        &format!("RESTORE TABLE t FROM LATEST IN '{coll}' WITH into_db = 'nope'"),
        "3D000",
        "\"nope\"",
    )
    .await?;
    expect_error(
        &client,
        "BACKUP TABLE t INTO 'nodelocal://1/../escape'",
        "42501",
        "local file access to paths outside of external-io-dir is not allowed",
    )
    .await?;
    expect_error(
        &client,
        "BACKUP TABLE h INTO LATEST IN 'nodelocal://1/nothing'",
        "58P01",
        "path does not contain a completed latest backup",
    )
    .await?;

    phase(
        started,
        "7b. nodelocal needs admin or EXTERNALIOIMPLICITACCESS (CockroachDB's rule)",
    );
    client
        .batch_execute("CREATE USER u WITH PASSWORD 'pw'; GRANT SELECT ON TABLE t TO u")
        .await?;
    let (user, connection) =
        tokio_postgres::connect(&c.external_url_as(1, "u", "pw")?, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    expect_error(
        &user,
        "BACKUP TABLE t INTO 'nodelocal://1/by-u'",
        "42501",
        "only users with the admin role or the EXTERNALIOIMPLICITACCESS system privilege",
    )
    .await?;
    client
        .batch_execute("GRANT SYSTEM EXTERNALIOIMPLICITACCESS TO u")
        .await?;
    user.batch_execute("BACKUP TABLE t INTO 'nodelocal://1/by-u'")
        .await
        .context("with the privilege, u backs up a table it may read")?;

    phase(
        started,
        "8. a corrupted data file is detected by SHOW BACKUP and RESTORE",
    );
    let data = dir.join(path.trim_start_matches('/')).join("data/0.ldrbak");
    let mut bytes = std::fs::read(&data)?;
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(&data, &bytes)?;
    expect_error(
        &client,
        &format!("SHOW BACKUP FROM LATEST IN '{coll}'"),
        "XX001",
        "is corrupt: checksum mismatch",
    )
    .await?;
    client.batch_execute("CREATE DATABASE again").await?;
    expect_error(
        &client,
        &format!("RESTORE TABLE t FROM LATEST IN '{coll}' WITH into_db = 'again'"),
        "XX001",
        "data/0.ldrbak is corrupt: checksum mismatch",
    )
    .await?;
    let leftover = query_any(&c, "SHOW TABLES FROM again").await?;
    ensure!(
        leftover.rows.is_empty(),
        "a failed restore drops the table it created: {leftover:?}"
    );

    phase(
        started,
        "9. SHOW JOBS lists the jobs; no protected timestamp stays behind",
    );
    let jobs = query_any(
        &c,
        "SELECT job_type, status FROM [SHOW JOBS] WHERE job_type IN ('BACKUP', 'RESTORE') ORDER BY created",
    )
    .await?;
    ensure!(
        column_values(&jobs, "job_type")?
            == [
                "BACKUP", "BACKUP", "RESTORE", "BACKUP", "RESTORE", "BACKUP", "RESTORE"
            ]
            && column_values(&jobs, "status")?
                == [
                    "succeeded",
                    "succeeded",
                    "succeeded",
                    "succeeded",
                    "succeeded",
                    "succeeded",
                    "failed"
                ],
        "{jobs:?}"
    );
    let pts = c.http_get(1, "/_status/protected_timestamps").await?.body;
    ensure!(
        !pts.contains("backup-"),
        "backup protections released: {pts}"
    );
    phase(started, "done");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backup_of_an_ldr_destination_restores_ldr_rows_unlocked() -> Result<()> {
    let started = Instant::now();
    let (a, b) = cluster_pair(1, false).await?;
    for c in [&a, &b] {
        c.exec(1, "CREATE TABLE test_table (k INT8 PRIMARY KEY, v STRING)")
            .await?;
    }
    enable_rangefeeds(&a).await?;

    phase(started, "1. LDR A -> B; writes on both clusters");
    ldr_sim::ldr::create_external_connection(&b, "a", &a).await?;
    let table = ["defaultdb.public.test_table"];
    let job = ldr_sim::ldr::create_stream(&b, "a", &table, &table, None).await?;
    a.exec(
        1,
        "INSERT INTO test_table VALUES (1, 'from a'), (2, 'from a')",
    )
    .await?;
    b.exec(1, "INSERT INTO test_table VALUES (101, 'on b')")
        .await?;
    ldr_e2e::wait_replicated(&b, job, now(&a).await?, CATCH_UP).await?;

    phase(started, "2. a backup on B includes the rows LDR wrote");
    let backup = run_job_statement(&b, "BACKUP TABLE test_table INTO 'nodelocal://1/ldr'").await?;
    ensure!(count(&backup, "rows")? == 3, "{backup:?}");

    phase(
        started,
        "3. restored into another database: LDR's rows, no schema lock",
    );
    b.exec(1, "CREATE DATABASE restored").await?;
    run_job_statement(
        &b,
        "RESTORE TABLE test_table FROM LATEST IN 'nodelocal://1/ldr' WITH into_db = 'restored'",
    )
    .await?;
    let rows = read_kv(&b, "restored.test_table").await?;
    ensure!(
        rows == kv(&[(1, "from a"), (2, "from a"), (101, "on b")]),
        "restored rows: {rows:?}"
    );
    let client = b.sql(1).await?;
    expect_error(
        &client,
        "ALTER TABLE test_table ADD COLUMN extra INT8",
        "0A000",
        "referenced by one or more logical replication jobs",
    )
    .await?;
    client
        .batch_execute("ALTER TABLE restored.test_table ADD COLUMN extra INT8")
        .await
        .context("the restored table is not schema locked")?;

    phase(
        started,
        "4. the restored table is not written by the LDR job",
    );
    a.exec(1, "INSERT INTO test_table VALUES (3, 'later')")
        .await?;
    ldr_e2e::wait_replicated(&b, job, now(&a).await?, CATCH_UP).await?;
    let live = read_kv(&b, "test_table").await?;
    ensure!(
        live.contains_key(&3),
        "LDR still writes its table: {live:?}"
    );
    let restored = query_any(&b, "SELECT k FROM restored.test_table ORDER BY k").await?;
    ensure!(
        column_values(&restored, "k")? == ["1", "2", "101"],
        "the restored copy is not an LDR destination: {restored:?}"
    );
    phase(started, "done");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backups_reach_the_storage_of_the_node_the_uri_names() -> Result<()> {
    let started = Instant::now();
    let c = cluster("bkn", 2).await?;
    // `nodelocal://1` names node id 1: the harness's first node.
    let node1_id = scalar_of(&c, 1, "SHOW node_id").await?;
    ensure!(node1_id == "1", "the first node has id 1, not {node1_id}");
    phase(started, "1. on node 2, a backup into nodelocal://1");
    let client = c.sql(2).await?;
    client
        .batch_execute(
            "CREATE TABLE r (k INT8 PRIMARY KEY, v STRING); INSERT INTO r VALUES (1, 'x'), (2, 'y')",
        )
        .await?;
    let rows = client
        .query("BACKUP TABLE r INTO 'nodelocal://1/remote'", &[])
        .await?;
    ensure!(rows.len() == 1, "one result row");
    let dir = c.node_info(1)?.store_dir.join("extern/remote");
    ensure!(
        dir.join("LATEST").is_file(),
        "the files are on node 1: {}",
        dir.display()
    );
    ensure!(
        !c.node_info(2)?.store_dir.join("extern/remote").exists(),
        "nothing on node 2"
    );

    phase(
        started,
        "2. from node 2: SHOW BACKUPS, SHOW BACKUP and RESTORE read node 1's files",
    );
    let paths: Vec<String> = client
        .query("SHOW BACKUPS IN 'nodelocal://1/remote'", &[])
        .await?
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect();
    ensure!(paths.len() == 1, "{paths:?}");
    let shown = client
        .query("SHOW BACKUP FROM LATEST IN 'nodelocal://1/remote'", &[])
        .await?;
    ensure!(shown.len() == 1, "one table row");
    client.batch_execute("DROP TABLE r").await?;
    client
        .batch_execute("RESTORE TABLE r FROM LATEST IN 'nodelocal://1/remote'")
        .await?;
    let rows = read_kv(&c, "r").await?;
    ensure!(rows == kv(&[(1, "x"), (2, "y")]), "{rows:?}");
    expect_error(
        &client,
        "BACKUP TABLE r INTO 'nodelocal://9/x'",
        "22023",
        "node 9 is not a member of this cluster",
    )
    .await?;
    phase(started, "done");
    Ok(())
}

async fn scalar_of(c: &Cluster, node: usize, sql: &str) -> Result<String> {
    let client = c.sql(node).await?;
    let rows = ldr_sim::sql::query_text(&client, sql).await?;
    ldr_e2e::scalar(&rows).context("no value")
}

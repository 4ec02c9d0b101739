//! The set-up tutorial (`seeds/000_*.txt`), step by step, through the real `psql` client, on two
//! 3-node clusters A and B: the rangefeed setting (its error first), a replication user, an
//! external connection, `CREATE LOGICAL REPLICATION STREAM` in its one-table and many-table
//! forms, `SHOW LOGICAL REPLICATION JOBS [WITH DETAILS]`, `SHOW JOBS` on both sides, PAUSE,
//! RESUME, then the same steps the other way for bidirectional LDR, and CANCEL. It ends with
//! equal `SHOW EXPERIMENTAL_FINGERPRINTS` of every table on both clusters.

use std::time::Instant;

use anyhow::{Context, Result, ensure};
use ldr_e2e::{
    CATCH_UP, cluster_pair, column_values, now, phase, poll, psql, psql_err, psql_ok, query_any,
    wait_job_status, wait_replicated,
};
use ldr_sim::Cluster;

const USER: &str = "ldr_user";
const PASSWORD: &str = "ldr_pw";
const TABLES: [&str; 3] = ["db.public.t", "db.public.t2", "db.public.t3"];

fn user_url(c: &Cluster, node: usize) -> Result<String> {
    Ok(format!(
        "postgresql://{USER}:{PASSWORD}@{}/defaultdb?sslmode=disable",
        c.node_info(node)?.listen_addr
    ))
}

/// Step 1 on one cluster, minus the setting: the database, the tables (identical on both
/// clusters) and the replication user.
async fn prepare(c: &Cluster) -> Result<()> {
    psql_ok(
        &c.url(1)?,
        &[
            "CREATE DATABASE db",
            "CREATE TABLE db.public.t (id INT8 PRIMARY KEY, name STRING, qty INT8)",
            "CREATE TABLE db.public.t2 (id INT8 PRIMARY KEY, note STRING)",
            "CREATE TABLE db.public.t3 (id INT8 PRIMARY KEY, amount INT8 NOT NULL DEFAULT 0)",
            &format!("CREATE USER {USER} WITH PASSWORD '{PASSWORD}'"),
            &format!("GRANT SYSTEM REPLICATION TO {USER}"),
        ],
    )
    .await?;
    Ok(())
}

/// Step 2: on `dest`, an external connection named `name` to `source` with the user's URI.
async fn connect(dest: &Cluster, name: &str, source: &Cluster) -> Result<()> {
    let uri = format!(
        "postgresql://{USER}:{PASSWORD}@{}?sslmode=disable",
        source.node_info(1)?.advertised_sql_addr
    );
    psql_ok(
        &dest.url(1)?,
        &[&format!("CREATE EXTERNAL CONNECTION {name} AS '{uri}'")],
    )
    .await?;
    Ok(())
}

/// Step 3 on `dest` as the replication user: the one-table form for `t` and the many-table form
/// for `t2, t3`. Returns both job ids.
async fn start_streams(dest: &Cluster, connection: &str) -> Result<(i64, i64)> {
    let url = user_url(dest, 1)?;
    let single = format!(
        "CREATE LOGICAL REPLICATION STREAM FROM TABLE db.public.t ON 'external://{connection}' INTO TABLE db.public.t"
    );
    let many = format!(
        "CREATE LOGICAL REPLICATION STREAM FROM TABLES (db.public.t2, db.public.t3) ON 'external://{connection}' INTO TABLES (db.public.t2, db.public.t3)"
    );
    let mut ids = Vec::new();
    for statement in [&single, &many] {
        let out = psql_ok(&url, &[statement]).await?;
        let table = out.table();
        ensure!(
            table.columns == ["job_id"] && table.rows.len() == 1,
            "{statement} returned {table:?}"
        );
        ids.push(
            column_values(&table, "job_id")?[0]
                .parse::<i64>()
                .context("job_id")?,
        );
    }
    Ok((ids[0], ids[1]))
}

/// `SHOW LOGICAL REPLICATION JOBS [WITH DETAILS]` on `dest` lists both jobs, running, with
/// their tables and (once the first checkpoint is in) a replicated time.
async fn check_show_jobs(dest: &Cluster, connection: &str, single: i64, many: i64) -> Result<()> {
    let url = dest.url(1)?;
    poll(
        "both jobs to report a replicated time",
        CATCH_UP,
        std::time::Duration::from_millis(300),
        || async {
            let t = psql(&url, &["SHOW LOGICAL REPLICATION JOBS"])
                .await
                .map_err(|e| e.to_string())?
                .table();
            let times = column_values(&t, "replicated_time").map_err(|e| e.to_string())?;
            if times.len() >= 2 && t.rows.iter().all(|r| r[3].is_some()) {
                Ok(())
            } else {
                Err(format!("{t:?}"))
            }
        },
    )
    .await?;
    let t = psql_ok(&url, &["SHOW LOGICAL REPLICATION JOBS"])
        .await?
        .table();
    ensure!(
        t.columns == ["job_id", "status", "tables", "replicated_time"],
        "SHOW LOGICAL REPLICATION JOBS columns: {:?}",
        t.columns
    );
    let ids = column_values(&t, "job_id")?;
    let tables = column_values(&t, "tables")?;
    let statuses = column_values(&t, "status")?;
    for (job, expected) in [
        (single, "{db.public.t}"),
        (many, "{db.public.t2,db.public.t3}"),
    ] {
        let i = ids
            .iter()
            .position(|id| *id == job.to_string())
            .with_context(|| format!("job {job} missing: {t:?}"))?;
        ensure!(
            tables[i] == expected && statuses[i] == "running",
            "job {job}: tables {} status {}",
            tables[i],
            statuses[i]
        );
    }
    let d = psql_ok(&url, &["SHOW LOGICAL REPLICATION JOBS WITH DETAILS"])
        .await?
        .table();
    ensure!(
        d.columns
            == [
                "job_id",
                "status",
                "tables",
                "replicated_time",
                "replication_start_time",
                "conflict_resolution_type",
                "command"
            ],
        "WITH DETAILS columns: {:?}",
        d.columns
    );
    let ids = column_values(&d, "job_id")?;
    let i = ids
        .iter()
        .position(|id| *id == single.to_string())
        .context("single-table job in WITH DETAILS")?;
    let row: Vec<String> = d.rows[i]
        .iter()
        .map(|v| v.clone().unwrap_or_default())
        .collect();
    ensure!(
        !row[4].is_empty() && row[5] == "LWW",
        "details of job {single}: {row:?}"
    );
    ensure!(
        row[6]
            == format!(
                "CREATE LOGICAL REPLICATION STREAM FROM TABLE db.public.t ON 'external://{connection}' INTO TABLE db.public.t"
            ),
        "command of job {single}: {:?}",
        row[6]
    );
    Ok(())
}

/// `SHOW JOBS`: the destination's LOGICAL REPLICATION job and the source's history retention
/// job (REPLICATION STREAM PRODUCER) for the same tables.
async fn check_job_types(
    dest: &Cluster,
    source: &Cluster,
    connection: &str,
    job: i64,
) -> Result<i64> {
    let d = psql_ok(&dest.url(2)?, &["SHOW JOBS"]).await?.table();
    ensure!(
        d.columns
            == [
                "job_id",
                "job_type",
                "description",
                "user_name",
                "status",
                "running_status",
                "created",
                "finished",
                "fraction_completed",
                "error",
                "coordinator_id"
            ],
        "SHOW JOBS columns: {:?}",
        d.columns
    );
    let ids = column_values(&d, "job_id")?;
    let i = ids
        .iter()
        .position(|id| *id == job.to_string())
        .context("LDR job in SHOW JOBS")?;
    let row = ldr_e2e::row_map(&d, i);
    let get = |k: &str| row.get(k).cloned().flatten().unwrap_or_default();
    ensure!(
        get("job_type") == "LOGICAL REPLICATION",
        "job type {:?}",
        get("job_type")
    );
    ensure!(
        get("description")
            == format!("LOGICAL REPLICATION STREAM into db.public.t from external://{connection}"),
        "description {:?}",
        get("description")
    );
    ensure!(get("user_name") == USER, "user_name {:?}", get("user_name"));
    let s = psql_ok(&source.url(3)?, &["SHOW JOBS"]).await?.table();
    let types = column_values(&s, "job_type")?;
    let descriptions = column_values(&s, "description")?;
    let statuses = column_values(&s, "status")?;
    let ids = column_values(&s, "job_id")?;
    let i = (0..types.len())
        .find(|&i| {
            types[i] == "REPLICATION STREAM PRODUCER"
                && descriptions[i] == "History Retention for Logical Replication of db.public.t"
        })
        .with_context(|| {
            format!(
                "no history retention job for db.public.t on {}: {s:?}",
                source.name()
            )
        })?;
    ensure!(
        statuses[i] == "running",
        "producer job status {}",
        statuses[i]
    );
    ensure!(
        (0..types.len()).any(|j| types[j] == "REPLICATION STREAM PRODUCER"
            && descriptions[j].contains("db.public.t2")
            && descriptions[j].contains("db.public.t3")),
        "no history retention job for t2, t3: {descriptions:?}"
    );
    Ok(ids[i].parse()?)
}

/// The fingerprints of every table, as psql prints them.
async fn fingerprints(c: &Cluster) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for table in TABLES {
        out.push(
            psql_ok(
                &c.url(1)?,
                &[&format!(
                    "SHOW EXPERIMENTAL_FINGERPRINTS FROM TABLE {table}"
                )],
            )
            .await?
            .stdout,
        );
    }
    Ok(out)
}

async fn count(c: &Cluster, table: &str) -> Result<i64> {
    Ok(
        ldr_e2e::scalar(&query_any(c, &format!("SELECT count(*) FROM {table}")).await?)
            .unwrap_or_default()
            .parse()?,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tutorial_unidirectional_then_bidirectional_through_psql() -> Result<()> {
    let started = Instant::now();
    let (a, b) = cluster_pair(3, false).await?;
    phase(started, "clusters A and B are up (3 nodes each)");

    // Before you begin: identical tables on both clusters; A has rows already (initial scan).
    for c in [&a, &b] {
        prepare(c).await?;
    }
    psql_ok(
        &a.url(2)?,
        &[
            "INSERT INTO db.public.t VALUES (1, 'apple', 3), (2, 'pear', 5), (3, 'fig', 0)",
            "INSERT INTO db.public.t2 VALUES (1, 'first'), (2, 'second')",
            "INSERT INTO db.public.t3 (id, amount) VALUES (1, 100), (2, 200), (3, 300)",
        ],
    )
    .await?;

    // Step 2 first, then step 3 with the source's rangefeeds still off: CockroachDB's error.
    connect(&b, "a", &a).await?;
    psql_err(
        &user_url(&b, 1)?,
        "CREATE LOGICAL REPLICATION STREAM FROM TABLE db.public.t ON 'external://a' INTO TABLE db.public.t",
        "55000",
        "kv.rangefeed.enabled must be enabled on the source cluster for logical replication",
    )
    .await?;
    // Step 1 on the source: enable rangefeeds. Step 3: start LDR, both statement forms.
    psql_ok(
        &a.url(1)?,
        &["SET CLUSTER SETTING kv.rangefeed.enabled = true"],
    )
    .await?;
    let (job_t, job_many) = start_streams(&b, "a").await?;
    phase(
        started,
        &format!("A -> B streams started: jobs {job_t} (t) and {job_many} (t2, t3)"),
    );
    check_show_jobs(&b, "a", job_t, job_many).await?;
    let producer_t = check_job_types(&b, &a, "a", job_t).await?;
    phase(
        started,
        "SHOW LOGICAL REPLICATION JOBS and SHOW JOBS look like CockroachDB's",
    );

    // The initial scan and live changes (insert, update, delete) arrive on B.
    psql_ok(
        &a.url(3)?,
        &[
            "INSERT INTO db.public.t VALUES (4, 'kiwi', 7)",
            "UPDATE db.public.t SET qty = qty + 1 WHERE id = 1",
            "DELETE FROM db.public.t WHERE id = 3",
            "UPSERT INTO db.public.t3 (id, amount) VALUES (3, 333), (4, 400)",
        ],
    )
    .await?;
    let at = now(&a).await?;
    wait_replicated(&b, job_t, at, CATCH_UP).await?;
    wait_replicated(&b, job_many, at, CATCH_UP).await?;
    let rows = psql_ok(
        &b.url(2)?,
        &["SELECT id, name, qty FROM db.public.t ORDER BY id"],
    )
    .await?
    .table();
    let got: Vec<Vec<String>> = rows
        .rows
        .iter()
        .map(|r| r.iter().map(|v| v.clone().unwrap_or_default()).collect())
        .collect();
    ensure!(
        got == [["1", "apple", "4"], ["2", "pear", "5"], ["4", "kiwi", "7"]],
        "db.public.t on B: {got:?}"
    );
    ensure!(
        count(&b, "db.public.t2").await? == 2 && count(&b, "db.public.t3").await? == 4,
        "t2/t3 on B"
    );
    phase(started, "initial scan and live changes replicated A -> B");

    // PAUSE JOB: the job stops applying; a write on A stays on A. RESUME JOB: it arrives.
    psql_ok(&user_url(&b, 2)?, &[&format!("PAUSE JOB {job_t}")]).await?;
    wait_job_status(&b, job_t, "paused", CATCH_UP).await?;
    psql_ok(
        &a.url(1)?,
        &["INSERT INTO db.public.t VALUES (5, 'plum', 1)"],
    )
    .await?;
    let at = now(&a).await?;
    let paused = psql_ok(
        &b.url(1)?,
        &["SELECT count(*) FROM db.public.t WHERE id = 5"],
    )
    .await?
    .table();
    ensure!(
        ldr_e2e::scalar(&paused).as_deref() == Some("0"),
        "row 5 reached B while the job was paused"
    );
    let status = psql_ok(&b.url(1)?, &["SHOW LOGICAL REPLICATION JOBS"])
        .await?
        .table();
    ensure!(
        status
            .rows
            .iter()
            .any(|r| r[0].as_deref() == Some(&job_t.to_string())
                && r[1].as_deref() == Some("paused")),
        "{status:?}"
    );
    psql_ok(&user_url(&b, 3)?, &[&format!("RESUME JOB {job_t}")]).await?;
    wait_job_status(&b, job_t, "running", CATCH_UP).await?;
    wait_replicated(&b, job_t, at, CATCH_UP).await?;
    ensure!(
        count(&b, "db.public.t").await? == 4,
        "row 5 did not arrive after RESUME"
    );
    phase(
        started,
        "PAUSE JOB held back a write; RESUME JOB delivered it",
    );

    // Step 4: the same steps with B as the source and A as the destination.
    connect(&a, "b", &b).await?;
    psql_err(
        &user_url(&a, 1)?,
        "CREATE LOGICAL REPLICATION STREAM FROM TABLE db.public.t ON 'external://b' INTO TABLE db.public.t",
        "55000",
        "kv.rangefeed.enabled must be enabled on the source cluster for logical replication",
    )
    .await?;
    psql_ok(
        &b.url(1)?,
        &["SET CLUSTER SETTING kv.rangefeed.enabled = true"],
    )
    .await?;
    let (back_t, back_many) = start_streams(&a, "b").await?;
    check_show_jobs(&a, "b", back_t, back_many).await?;
    check_job_types(&a, &b, "b", back_t).await?;
    phase(
        started,
        &format!(
            "B -> A streams started: jobs {back_t} and {back_many}; both clusters run a producer and an LDR job"
        ),
    );

    // Bidirectional: writes on both sides, some to the same rows, converge everywhere.
    psql_ok(
        &b.url(1)?,
        &[
            "INSERT INTO db.public.t VALUES (10, 'from b', 1)",
            "UPDATE db.public.t SET name = 'pear (b)' WHERE id = 2",
            "INSERT INTO db.public.t2 VALUES (10, 'from b')",
            "DELETE FROM db.public.t3 WHERE id = 1",
        ],
    )
    .await?;
    psql_ok(
        &a.url(2)?,
        &[
            "INSERT INTO db.public.t VALUES (20, 'from a', 2)",
            "UPDATE db.public.t SET name = 'pear (a)' WHERE id = 2",
            "UPDATE db.public.t2 SET note = 'changed on a' WHERE id = 1",
            "UPDATE db.public.t3 SET amount = amount + 1 WHERE id = 2",
        ],
    )
    .await?;
    let (at_a, at_b) = (now(&a).await?, now(&b).await?);
    for (c, job, at) in [
        (&b, job_t, at_a),
        (&b, job_many, at_a),
        (&a, back_t, at_b),
        (&a, back_many, at_b),
    ] {
        wait_replicated(c, job, at, CATCH_UP).await?;
    }
    let (fa, fb) = (fingerprints(&a).await?, fingerprints(&b).await?);
    ensure!(
        fa == fb,
        "fingerprints differ after bidirectional writes:\nA: {fa:?}\nB: {fb:?}"
    );
    let name = psql_ok(&b.url(3)?, &["SELECT name FROM db.public.t WHERE id = 2"])
        .await?
        .table();
    ensure!(
        ldr_e2e::scalar(&name).as_deref() == Some("pear (a)"),
        "the later update of row 2 must win: {name:?}"
    );
    phase(
        started,
        "bidirectional writes converged (equal fingerprints)",
    );

    // CANCEL JOB on both LDR jobs of t: each is canceled, and its producer on the other side
    // fails because its destination finished unsuccessfully.
    psql_ok(&user_url(&b, 1)?, &[&format!("CANCEL JOB {job_t}")]).await?;
    psql_ok(&user_url(&a, 1)?, &[&format!("CANCEL JOB {back_t}")]).await?;
    wait_job_status(&b, job_t, "canceled", CATCH_UP).await?;
    wait_job_status(&a, back_t, "canceled", CATCH_UP).await?;
    let producer = wait_job_status(&a, producer_t, "failed", CATCH_UP).await?;
    let error = producer.get("error").cloned().flatten().unwrap_or_default();
    ensure!(
        error.contains("destination cluster job finished unsuccessfully"),
        "producer job error: {error:?}"
    );
    let still = psql_ok(&b.url(1)?, &["SHOW LOGICAL REPLICATION JOBS"])
        .await?
        .table();
    let statuses: Vec<(String, String)> = still
        .rows
        .iter()
        .map(|r| {
            (
                r[0].clone().unwrap_or_default(),
                r[1].clone().unwrap_or_default(),
            )
        })
        .collect();
    ensure!(
        statuses.contains(&(job_t.to_string(), "canceled".into()))
            && statuses.contains(&(job_many.to_string(), "running".into())),
        "{statuses:?}"
    );
    phase(started, "CANCEL JOB: jobs canceled, producer failed");

    // The end state: every table is identical on both clusters.
    let (fa, fb) = (fingerprints(&a).await?, fingerprints(&b).await?);
    ensure!(fa == fb, "final fingerprints differ:\nA: {fa:?}\nB: {fb:?}");
    for table in TABLES {
        ensure!(
            count(&a, table).await? == count(&b, table).await?,
            "row counts of {table} differ"
        );
    }
    phase(
        started,
        "done: equal SHOW EXPERIMENTAL_FINGERPRINTS on A and B",
    );
    Ok(())
}

//! Replicated ranges through real `ldr` processes: with `num_replicas = 3`, every range of a
//! table is a Raft group on all three nodes, `SHOW RANGES` shows its leaseholder and replicas,
//! `kill -9` of a node leaves every key writable through the others within seconds, no
//! acknowledged write is lost, and the killed node catches up when it restarts.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use ldr_e2e::{cluster, column_values, poll};

const KEYS: i64 = 600;

/// One UPSERT of every key with value `v<round>-<key>`.
fn upsert_all(round: usize) -> String {
    let values: Vec<String> = (0..KEYS)
        .map(|k| format!("({k}, 'v{round}-{k}')"))
        .collect();
    format!("UPSERT INTO kv (k, v) VALUES {}", values.join(", "))
}

async fn read_all(c: &ldr_sim::Cluster, node: usize) -> Result<BTreeMap<i64, String>> {
    let rows = c.query(node, "SELECT k, v FROM kv").await?;
    Ok(rows
        .iter()
        .map(|r| (r.get::<_, i64>(0), r.get::<_, String>(1)))
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replicated_table_survives_the_loss_of_a_node() -> Result<()> {
    let c = cluster("rr", 3).await?;
    c.exec(
        1,
        "ALTER RANGE default CONFIGURE ZONE USING num_replicas = 3;
         CREATE TABLE kv (k INT8 PRIMARY KEY, v STRING NOT NULL);",
    )
    .await?;

    // Every range is a Raft group on all three nodes, with a leaseholder among them.
    let ranges = c.query_text(2, "SHOW RANGES FROM TABLE kv").await?;
    let replicas = column_values(&ranges, "replicas")?;
    ensure!(!replicas.is_empty(), "no ranges");
    for r in &replicas {
        ensure!(r == "{1,2,3}" || r.split(',').count() == 3, "replicas {r}");
    }
    let holders = column_values(&ranges, "lease_holder")?;
    ensure!(
        holders
            .iter()
            .all(|h| ["1", "2", "3"].contains(&h.as_str())),
        "{holders:?}"
    );

    c.exec(1, &upsert_all(0)).await?;

    // kill -9 of node 3 (node 1 still holds the system range): every key is writable again
    // through node 2 after at most an election.
    c.kill(3)?;
    let killed = Instant::now();
    let recovered = poll(
        "every range writable without node 3",
        Duration::from_secs(60),
        Duration::from_millis(100),
        || {
            let c = &c;
            async move {
                c.exec(2, &upsert_all(1))
                    .await
                    .map(|_| killed.elapsed())
                    .map_err(|e| e.to_string())
            }
        },
    )
    .await?;
    let acknowledged = 1;
    eprintln!("every range writable {recovered:?} after kill -9 of node 3");
    // The target is 10 s (goal 5 s) on an idle machine; CI runs many clusters at once on two
    // cores, so the test allows twice that.
    ensure!(
        recovered < Duration::from_secs(20),
        "writes resumed only after {recovered:?}"
    );

    // No acknowledged write is lost: every key has the last acknowledged round's value,
    // read through either survivor.
    for node in [1, 2] {
        let rows = read_all(&c, node).await?;
        ensure!(
            rows.len() == KEYS as usize,
            "node {node} sees {} rows",
            rows.len()
        );
        for (k, v) in &rows {
            ensure!(
                *v == format!("v{acknowledged}-{k}"),
                "key {k} = {v} through node {node}"
            );
        }
    }

    // Node 3 restarts on its store, catches up, and serves the same rows.
    c.restart(3).await?;
    c.exec(3, &upsert_all(2))
        .await
        .context("write through the restarted node")?;
    let through3 = read_all(&c, 3).await?;
    ensure!(through3.len() == KEYS as usize);
    ensure!(
        through3.iter().all(|(k, v)| *v == format!("v2-{k}")),
        "stale rows through node 3"
    );
    let fingerprints = |node| {
        let c = &c;
        async move {
            let rows = c
                .query_text(node, "SHOW EXPERIMENTAL_FINGERPRINTS FROM TABLE kv")
                .await?;
            column_values(&rows, "fingerprint")
        }
    };
    let f1 = fingerprints(1).await?;
    ensure!(
        f1 == fingerprints(3).await?,
        "fingerprints differ between gateways"
    );
    Ok(())
}

/// Polls `sql` on `node` until it succeeds; returns how long after `since` it did.
async fn first_success(
    c: &ldr_sim::Cluster,
    node: usize,
    sql: &str,
    since: Instant,
) -> Result<Duration> {
    poll(
        &format!("`{sql}` on node {node}"),
        Duration::from_secs(60),
        Duration::from_millis(100),
        || async move {
            c.exec(node, sql)
                .await
                .map(|_| since.elapsed())
                .map_err(|e| e.to_string())
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn node_1_is_not_special() -> Result<()> {
    let (a, b) = ldr_e2e::cluster_pair(3, false).await?;
    for c in [&a, &b] {
        c.exec(1, "CREATE TABLE kv (k INT8 PRIMARY KEY, v STRING NOT NULL)")
            .await?;
    }
    ldr_e2e::enable_rangefeeds(&a).await?;
    c_upsert(&a, 0).await?;

    // Every range, the system range included, has three voters by default.
    let ranges = b.query_text(2, "SHOW CLUSTER RANGES").await?;
    let replicas = column_values(&ranges, "replicas")?;
    ensure!(
        replicas.iter().all(|r| r == "{1,2,3}"),
        "ranges not on every node: {replicas:?}"
    );

    // kill -9 of B's node 1: nodes 2 and 3 take new connections, run DDL and DML, start a
    // job, and accept a logical replication stream.
    b.kill(1)?;
    let killed = Instant::now();
    let sql_back = first_success(&b, 2, "SELECT count(*) FROM kv", killed).await?;
    eprintln!("node 2 served SQL {sql_back:?} after kill -9 of node 1");
    ensure!(
        sql_back < Duration::from_secs(20),
        "SQL resumed only after {sql_back:?}"
    );
    b.exec(
        3,
        "CREATE TABLE after (k INT8 PRIMARY KEY);
         INSERT INTO after VALUES (1), (2), (3);",
    )
    .await
    .context("DDL and DML through node 3 without node 1")?;
    let count = b.query_text(2, "SELECT count(*) FROM after").await?;
    ensure!(ldr_e2e::scalar(&count).as_deref() == Some("3"), "{count:?}");
    b.exec(
        2,
        &format!("CREATE EXTERNAL CONNECTION a AS '{}'", a.external_url(1)?),
    )
    .await?;
    let job = b
        .query_text(
            3,
            "CREATE LOGICAL REPLICATION STREAM FROM TABLE kv ON 'external://a' INTO TABLE kv",
        )
        .await?;
    let job: i64 = ldr_e2e::scalar(&job)
        .context("a job id")?
        .parse()
        .context("job id")?;
    ldr_e2e::wait_replicated(&b, job, ldr_e2e::now(&a).await?, ldr_e2e::CATCH_UP).await?;
    let through2 = read_all(&b, 2).await?;
    ensure!(
        through2.len() == KEYS as usize,
        "node 2 sees {} replicated rows",
        through2.len()
    );

    // Node 1 comes back and serves what was written without it.
    b.restart(1).await?;
    let back = poll(
        "node 1 to read the table created without it",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || async {
            let rows = b
                .query_text(1, "SELECT count(*) FROM after")
                .await
                .map_err(|e| e.to_string())?;
            ldr_e2e::scalar(&rows).ok_or_else(|| "no count".to_string())
        },
    )
    .await?;
    ensure!(back == "3", "node 1 counts {back}");
    Ok(())
}

async fn c_upsert(c: &ldr_sim::Cluster, round: usize) -> Result<()> {
    c.exec(1, &upsert_all(round)).await?;
    Ok(())
}

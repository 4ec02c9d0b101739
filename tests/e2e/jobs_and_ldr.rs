//! Seed 001's "Jobs and LDR" section, sentence by sentence, through the real `psql` client on
//! two one-node clusters A and B:
//! 1. Changefeeds: a changefeed watching `test_table` on A; LDR A → B with writes on both
//!    clusters: the changefeed emits A's writes only; LDR B → A too: it also emits the writes
//!    arriving from B.
//! 2. Backups: a backup of B's `test_table` (the destination of A → B) includes the rows LDR
//!    wrote; restored into another database, they are all there.
//! 3. TTL: row-level TTL deletes on A's table with `ttl_disable_changefeed_replication` stay
//!    out of B with `discard = 'ttl-deletes'` (B keeps the rows). (`ttl.rs` checks that the
//!    same deletes replicate from a table without the parameter.)

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use ldr_e2e::sinks::{latest_values, nodelocal, wait_resolved};
use ldr_e2e::{CATCH_UP, cluster_pair, now, phase, poll, psql_ok, wait_replicated};

/// The single value `psql` printed for a one-row, one-column statement.
async fn psql_scalar(url: &str, sql: &str) -> Result<String> {
    let t = psql_ok(url, &[sql]).await?.table();
    ldr_e2e::scalar(&t).with_context(|| format!("{sql}: no value in {t:?}"))
}

async fn psql_count(url: &str, table: &str) -> Result<i64> {
    psql_scalar(url, &format!("SELECT count(*) FROM {table}"))
        .await?
        .parse()
        .context("count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jobs_and_ldr_as_the_seed_tells_through_psql() -> Result<()> {
    let started = Instant::now();
    let (a, b) = cluster_pair(1, false).await?;
    let (url_a, url_b) = (a.url(1)?, b.url(1)?);
    for url in [&url_a, &url_b] {
        psql_ok(
            url,
            &[
                "CREATE TABLE test_table (k INT8 PRIMARY KEY, v STRING)",
                "SET CLUSTER SETTING kv.rangefeed.enabled = true",
            ],
        )
        .await?;
    }

    phase(started, "1. a changefeed watching test_table on cluster A");
    let feed = psql_scalar(
        &url_a,
        "CREATE CHANGEFEED FOR TABLE test_table INTO 'nodelocal://1/cf' \
         WITH updated, resolved = '200ms', min_checkpoint_frequency = '200ms'",
    )
    .await?;
    ensure!(feed.parse::<i64>().is_ok(), "changefeed job id: {feed:?}");
    let sink = nodelocal(&a, 1, "cf")?;

    phase(started, "2. LDR A -> B; writes on both clusters");
    psql_ok(
        &url_b,
        &[&format!(
            "CREATE EXTERNAL CONNECTION a AS '{}'",
            a.external_url(1)?
        )],
    )
    .await?;
    let a_to_b: i64 = psql_scalar(
        &url_b,
        "CREATE LOGICAL REPLICATION STREAM FROM TABLE test_table ON 'external://a' INTO TABLE test_table",
    )
    .await?
    .parse()
    .context("job id")?;
    psql_ok(
        &url_a,
        &["INSERT INTO test_table VALUES (1, 'a1'), (2, 'a2'), (3, 'a3')"],
    )
    .await?;
    psql_ok(
        &url_b,
        &["INSERT INTO test_table VALUES (101, 'b1'), (102, 'b2')"],
    )
    .await?;
    wait_replicated(&b, a_to_b, now(&a).await?, CATCH_UP).await?;
    let emitted = wait_resolved(&sink, now(&a).await?, CATCH_UP).await?;
    let keys: BTreeSet<i64> = latest_values(&emitted.messages)?.into_keys().collect();
    ensure!(
        keys == BTreeSet::from([1, 2, 3]),
        "while LDR runs only A -> B, the changefeed on A emits A's writes only: {keys:?}"
    );

    phase(
        started,
        "3. LDR B -> A too: the changefeed on A emits B's writes",
    );
    psql_ok(
        &url_a,
        &[&format!(
            "CREATE EXTERNAL CONNECTION b AS '{}'",
            b.external_url(1)?
        )],
    )
    .await?;
    let b_to_a: i64 = psql_scalar(
        &url_a,
        "CREATE LOGICAL REPLICATION STREAM FROM TABLE test_table ON 'external://b' INTO TABLE test_table",
    )
    .await?
    .parse()
    .context("job id")?;
    psql_ok(&url_b, &["INSERT INTO test_table VALUES (103, 'b3')"]).await?;
    psql_ok(&url_a, &["INSERT INTO test_table VALUES (4, 'a4')"]).await?;
    wait_replicated(&a, b_to_a, now(&b).await?, CATCH_UP).await?;
    let emitted = wait_resolved(&sink, now(&a).await?, CATCH_UP).await?;
    let want: BTreeMap<i64, Option<String>> = [
        (1, "a1"),
        (2, "a2"),
        (3, "a3"),
        (4, "a4"),
        (101, "b1"),
        (102, "b2"),
        (103, "b3"),
    ]
    .into_iter()
    .map(|(k, v)| (k, Some(v.to_string())))
    .collect();
    let latest = latest_values(&emitted.messages)?;
    ensure!(
        latest == want,
        "the changefeed on A emits A's writes and B's arriving through LDR: {latest:?}"
    );

    phase(
        started,
        "4. a backup of B's destination table includes LDR's rows",
    );
    wait_replicated(&b, a_to_b, now(&a).await?, CATCH_UP).await?;
    psql_ok(
        &url_b,
        &["BACKUP TABLE test_table INTO 'nodelocal://1/backups'"],
    )
    .await?;
    psql_ok(
        &url_b,
        &[
            "CREATE DATABASE restored",
            "RESTORE TABLE test_table FROM LATEST IN 'nodelocal://1/backups' WITH into_db = 'restored'",
        ],
    )
    .await?;
    let restored = psql_ok(&url_b, &["SELECT k FROM restored.test_table ORDER BY k"])
        .await?
        .table();
    let restored: Vec<i64> = restored
        .rows
        .iter()
        .map(|r| r[0].as_deref().unwrap_or("").parse())
        .collect::<Result<_, _>>()
        .context("restored keys")?;
    ensure!(
        restored == vec![1, 2, 3, 4, 101, 102, 103],
        "the restored table holds B's rows and the rows LDR wrote from A: {restored:?}"
    );

    phase(
        started,
        "5. TTL deletes stay out of LDR with discard = 'ttl-deletes'",
    );
    psql_ok(
        &url_a,
        &["CREATE TABLE expiring (id INT8 PRIMARY KEY, v STRING) WITH (ttl_expire_after = '1 second', \
           ttl_job_cron = '* * * * *', ttl_disable_changefeed_replication = true)"],
    )
    .await?;
    psql_ok(
        &url_b,
        &["CREATE TABLE expiring (id INT8 PRIMARY KEY, v STRING)"],
    )
    .await?;
    let ttl_stream: i64 = psql_scalar(
        &url_b,
        "CREATE LOGICAL REPLICATION STREAM FROM TABLE expiring ON 'external://a' INTO TABLE expiring \
         WITH discard = 'ttl-deletes'",
    )
    .await?
    .parse()
    .context("job id")?;
    let values: Vec<String> = (1..=20).map(|i| format!("({i}, 'v{i}')")).collect();
    psql_ok(
        &url_a,
        &[&format!(
            "INSERT INTO expiring VALUES {}",
            values.join(", ")
        )],
    )
    .await?;
    wait_replicated(&b, ttl_stream, now(&a).await?, CATCH_UP).await?;
    ensure!(psql_count(&url_b, "expiring").await? == 20);
    poll(
        "the row level TTL job to empty the table on A",
        Duration::from_secs(150),
        Duration::from_millis(500),
        || {
            let url = &url_a;
            async move {
                match psql_count(url, "expiring").await {
                    Ok(0) => Ok(()),
                    Ok(n) => Err(format!("{n} rows left")),
                    Err(e) => Err(e.to_string()),
                }
            }
        },
    )
    .await?;
    let ttl_jobs = psql_ok(&url_a, &["SHOW JOBS"]).await?.table();
    let types = ldr_e2e::column_values(&ttl_jobs, "job_type")?;
    ensure!(
        types.iter().any(|t| t == "ROW LEVEL TTL"),
        "no ROW LEVEL TTL job in SHOW JOBS: {types:?}"
    );
    wait_replicated(&b, ttl_stream, now(&a).await?, CATCH_UP).await?;
    ensure!(
        psql_count(&url_b, "expiring").await? == 20,
        "TTL deletes reached B despite discard = 'ttl-deletes'"
    );
    phase(started, "done");
    Ok(())
}

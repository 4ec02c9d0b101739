//! Changefeeds through real `ldr` processes (CockroachDB's `CREATE CHANGEFEED`, seed 001
//! "Jobs and LDR"):
//! - a nodelocal sink gets exactly the expected messages (initial scan, updates with `before`,
//!   deletes, `updated` timestamps, `.RESOLVED` files) under CockroachDB's file names, the job
//!   shows in `SHOW CHANGEFEED JOBS` with its high-water mark and protects history until it is
//!   canceled;
//! - the seed's story: a changefeed on A emits A's writes while LDR runs A→B, and B's writes
//!   too once LDR runs B→A;
//! - pause/resume, a graceful restart and a `kill -9` of the coordinator's node under writes
//!   lose no change; a nodelocal sink on another node than the coordinator gets every row;
//! - a webhook receiver that is down for a while then comes up gets every message;
//! - bad input is refused with CockroachDB's texts;
//! - a sinkless changefeed returns its `table, key, value` rows: bounded ones end with the
//!   initial scan or at `end_time`; an unbounded one streams live changes row by row (with
//!   tokio-postgres and psycopg) until its client disconnects or cancels, and the node then
//!   stops it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use ldr_e2e::{
    CATCH_UP, cluster, cluster_pair, enable_rangefeeds, expect_error, now, phase, poll, query_any,
    row_map, wait_job_status,
};
use ldr_sim::Cluster;
use ldr_types::Timestamp;
use serde_json::Value;

use ldr_e2e::sinks::{
    SinkContents, files_below, latest_values, nodelocal, read_sink, ts_of, wait_resolved,
};

/// `SHOW CHANGEFEED JOBS` row of `job`.
async fn changefeed_row(c: &Cluster, job: i64) -> Result<BTreeMap<String, Option<String>>> {
    let rows = query_any(c, "SHOW CHANGEFEED JOBS").await?;
    let i = ldr_e2e::column_values(&rows, "job_id")?
        .iter()
        .position(|id| id.trim() == job.to_string())
        .with_context(|| format!("job {job} not in SHOW CHANGEFEED JOBS"))?;
    Ok(row_map(&rows, i))
}

async fn create_changefeed(c: &Cluster, node: usize, sql: &str) -> Result<i64> {
    let client = c.sql(node).await?;
    let row = client
        .query_one(sql, &[])
        .await
        .with_context(|| sql.to_string())?;
    Ok(row.get::<_, i64>(0))
}

async fn protected_timestamps(c: &Cluster) -> Result<String> {
    Ok(c.http_get(1, "/_status/protected_timestamps").await?.body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodelocal_sink_gets_exactly_the_changes() -> Result<()> {
    let started = Instant::now();
    let c = cluster("cf", 1).await?;
    enable_rangefeeds(&c).await?;
    c.exec(
        1,
        "CREATE TABLE t (id INT8 PRIMARY KEY, v STRING); INSERT INTO t VALUES (1, 'a'), (2, 'b')",
    )
    .await?;
    phase(started, "creating the changefeed");
    let job = create_changefeed(
        &c,
        1,
        "CREATE CHANGEFEED FOR TABLE t INTO 'nodelocal://1/cf' WITH updated, diff, resolved = '1s', min_checkpoint_frequency = '200ms'",
    )
    .await?;
    let row = changefeed_row(&c, job).await?;
    ensure!(
        row["sink_uri"].as_deref() == Some("nodelocal://1/cf")
            && row["full_table_names"].as_deref() == Some("{defaultdb.public.t}")
            && row["format"].as_deref() == Some("json")
            && row["status"].as_deref() == Some("running"),
        "{row:?}"
    );
    ensure!(
        protected_timestamps(&c)
            .await?
            .contains(&format!("changefeed-{job}")),
        "the changefeed protects its history"
    );
    let dir = nodelocal(&c, 1, "cf")?;
    // The initial scan is done once a resolved timestamp is written.
    let first = wait_resolved(&dir, Timestamp::new(1, 0), CATCH_UP).await?;
    let scan_ts = ts_of(&first.messages.first().context("scan rows")?["updated"])?;
    phase(started, "initial scan written; changing rows");
    c.exec(
        1,
        "UPDATE t SET v = 'a2' WHERE id = 1; DELETE FROM t WHERE id = 2; INSERT INTO t VALUES (3, 'c')",
    )
    .await?;
    let after = now(&c).await?;
    let sink = wait_resolved(&dir, after, CATCH_UP).await?;
    phase(started, "changes written");
    // The node's changefeed metrics count what reached the sink (CockroachDB's names).
    let m = ldr_e2e::cluster_metrics(&c).await?;
    let emitted = m.sum("changefeed_emitted_messages").unwrap_or(0.0);
    ensure!(
        emitted >= sink.messages.len() as f64
            && m.sum("changefeed_emitted_bytes").unwrap_or(0.0) > 0.0
            && m.sum("changefeed_flushes").unwrap_or(0.0) >= 1.0
            && m.sum("changefeed_running") == Some(1.0),
        "changefeed metrics: emitted {emitted} for {} messages; {m:?}",
        sink.messages.len()
    );

    // Exactly the expected messages (a repeat of the same message would be allowed: delivery
    // is at least once).
    let mut seen: Vec<(i64, String, String, Timestamp)> = Vec::new();
    for m in &sink.messages {
        let key = m["key"][0].as_i64().with_context(|| format!("{m}"))?;
        let entry = (
            key,
            m["after"].to_string(),
            m["before"].to_string(),
            ts_of(&m["updated"])?,
        );
        if !seen.contains(&entry) {
            seen.push(entry);
        }
    }
    let shape: Vec<(i64, String, String)> = {
        let mut v: Vec<_> = seen
            .iter()
            .map(|(k, a, b, _)| (*k, a.clone(), b.clone()))
            .collect();
        v.sort();
        v
    };
    let want = vec![
        (1, r#"{"id":1,"v":"a"}"#.to_string(), "null".to_string()),
        (
            1,
            r#"{"id":1,"v":"a2"}"#.to_string(),
            r#"{"id":1,"v":"a"}"#.to_string(),
        ),
        (2, "null".to_string(), r#"{"id":2,"v":"b"}"#.to_string()),
        (2, r#"{"id":2,"v":"b"}"#.to_string(), "null".to_string()),
        (3, r#"{"id":3,"v":"c"}"#.to_string(), "null".to_string()),
    ];
    let mut want_sorted = want.clone();
    want_sorted.sort();
    ensure!(
        shape == want_sorted,
        "messages:\n{:#?}\nexpected:\n{want_sorted:#?}",
        sink.messages
    );
    // Scan rows carry the statement time; changes their own, later, MVCC timestamps.
    for (k, a, _, ts) in &seen {
        let is_scan = (*k == 1 && a.contains("\"a\"")) || (*k == 2 && a.contains("\"b\""));
        ensure!(
            (*ts == scan_ts) == is_scan && *ts <= after,
            "{k} {a} at {ts} (scan at {scan_ts})"
        );
    }
    // Message text is CockroachDB's (sorted keys, spaced).
    let text = std::fs::read_to_string(
        dir.join(
            files_below(&dir)
                .iter()
                .find(|f| f.to_string_lossy().ends_with(".ndjson"))
                .context("a data file")?,
        ),
    )?;
    let line = format!(
        r#"{{"after": {{"id": 1, "v": "a"}}, "before": null, "key": [1], "updated": "{}"}}"#,
        scan_ts.to_decimal_string()
    );
    ensure!(text.lines().any(|l| l == line), "{line} not in:\n{text}");
    // File names: <33-digit ts>-<session>-<node>-<sink>-<file>-<topic>-<schema>.ndjson.
    for name in &sink.data_files {
        let parts: Vec<&str> = name.trim_end_matches(".ndjson").split('-').collect();
        ensure!(
            parts.len() == 7
                && parts[0].len() == 33
                && parts[1].len() == 16
                && parts[2] == "1"
                && parts[4].len() == 8
                && parts[5] == "t",
            "file name {name}"
        );
    }
    ensure!(
        sink.resolved.windows(2).all(|w| w[0] <= w[1]),
        "resolved timestamps move forward: {:?}",
        sink.resolved
    );

    phase(started, "high-water mark and cancel");
    let hw = poll(
        "a high-water mark",
        CATCH_UP,
        Duration::from_millis(200),
        || async {
            let row = changefeed_row(&c, job).await.map_err(|e| e.to_string())?;
            row.get("high_water_timestamp")
                .cloned()
                .flatten()
                .and_then(|t| t.parse::<Timestamp>().ok())
                .filter(|t| *t >= after)
                .ok_or_else(|| format!("{row:?}"))
        },
    )
    .await?;
    ensure!(hw >= after);
    // The protected timestamp follows the high-water mark (GC may remove what is below it).
    poll(
        "the protected timestamp to reach the writes",
        CATCH_UP,
        Duration::from_millis(200),
        || async {
            let pts = protected_timestamps(&c).await.map_err(|e| e.to_string())?;
            let records: Vec<Value> = serde_json::from_str(&pts).map_err(|e| e.to_string())?;
            let ts = records
                .iter()
                .find(|r| r["id"] == format!("changefeed-{job}"))
                .map(|r| ts_of(&r["ts"]))
                .transpose()
                .map_err(|e| e.to_string())?;
            match ts {
                Some(ts) if ts >= after => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await?;
    c.exec(1, &format!("CANCEL JOB {job}")).await?;
    wait_job_status(&c, job, "canceled", CATCH_UP).await?;
    poll(
        "the protected timestamp to be released",
        CATCH_UP,
        Duration::from_millis(200),
        || async {
            let pts = protected_timestamps(&c).await.map_err(|e| e.to_string())?;
            if pts.contains(&format!("changefeed-{job}")) {
                Err(pts)
            } else {
                Ok(())
            }
        },
    )
    .await?;

    phase(
        started,
        "initial_scan = 'only': the rows as of now, then the job succeeds",
    );
    let only = create_changefeed(
        &c,
        1,
        "CREATE CHANGEFEED FOR TABLE t INTO 'nodelocal://1/only' WITH initial_scan = 'only'",
    )
    .await?;
    wait_job_status(&c, only, "succeeded", CATCH_UP).await?;
    let scan = read_sink(&nodelocal(&c, 1, "only")?)?;
    let mut rows: Vec<String> = scan.messages.iter().map(|m| m.to_string()).collect();
    rows.sort();
    ensure!(
        rows == vec![
            r#"{"after":{"id":1,"v":"a2"},"key":[1]}"#.to_string(),
            r#"{"after":{"id":3,"v":"c"},"key":[3]}"#.to_string(),
        ] && scan.resolved.is_empty(),
        "initial scan only: {rows:?} {:?}",
        scan.resolved
    );
    ensure!(
        !protected_timestamps(&c)
            .await?
            .contains(&format!("changefeed-{only}")),
        "a finished changefeed releases its protected timestamp"
    );

    phase(
        started,
        "cursor and the bare envelope: only changes after the cursor",
    );
    let cursor = now(&c).await?;
    c.exec(1, "UPDATE t SET v = 'c2' WHERE id = 3").await?;
    let bare = create_changefeed(
        &c,
        1,
        &format!(
            "CREATE CHANGEFEED FOR TABLE t INTO 'nodelocal://1/bare' WITH cursor = '{}', envelope = bare, updated, resolved, min_checkpoint_frequency = '200ms'",
            cursor.to_decimal_string()
        ),
    )
    .await?;
    let sink = wait_resolved(&nodelocal(&c, 1, "bare")?, now(&c).await?, CATCH_UP).await?;
    ensure!(
        sink.messages.len() == 1
            && sink.messages[0]["id"] == 3
            && sink.messages[0]["v"] == "c2"
            && ts_of(&sink.messages[0]["__crdb__"]["updated"])? > cursor,
        "{:?}",
        sink.messages
    );
    c.exec(1, &format!("CANCEL JOB {bare}")).await?;
    phase(started, "done");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_changefeeds_are_refused() -> Result<()> {
    let c = cluster("cfbad", 1).await?;
    c.exec(1, "CREATE TABLE t (id INT8 PRIMARY KEY)").await?;
    let client = c.sql(1).await?;
    // Rangefeeds are off by default, as in CockroachDB.
    expect_error(
        &client,
        "CREATE CHANGEFEED FOR TABLE t INTO 'nodelocal://1/x'",
        "55000",
        "rangefeeds require the kv.rangefeed.enabled setting",
    )
    .await?;
    enable_rangefeeds(&c).await?;
    for (sql, code, text) in [
        (
            "CREATE CHANGEFEED FOR TABLE t INTO 'kafka2://h:9092'",
            "22023",
            "unsupported sink: kafka2",
        ),
        (
            "CREATE CHANGEFEED FOR TABLE t INTO 'nodelocal://1/x' WITH bogus",
            "22023",
            "invalid option \"bogus\"",
        ),
        (
            "CREATE CHANGEFEED FOR TABLE t INTO 'nodelocal://1/x' WITH format = avro",
            "22023",
            "WITH format=avro requires option confluent_schema_registry",
        ),
        (
            "CREATE CHANGEFEED FOR TABLE t INTO 'nodelocal://1/x' WITH envelope = 'sideways'",
            "22023",
            "unknown envelope: sideways",
        ),
        (
            "CREATE CHANGEFEED FOR TABLE t INTO 'nodelocal://1/x' WITH initial_scan = 'only', resolved",
            "22023",
            "cannot specify both initial_scan='only' and resolved",
        ),
        (
            "CREATE CHANGEFEED FOR TABLE t INTO 'nodelocal://1/x' WITH resolved = 'soon'",
            "22023",
            "problem parsing option resolved",
        ),
        (
            "CREATE CHANGEFEED FOR TABLE t INTO 'nodelocal://7/x'",
            "22023",
            "node 7 is not a member",
        ),
        (
            "CREATE CHANGEFEED FOR TABLE t INTO 'webhook-https://127.0.0.1:1/x?topic_prefix=a'",
            "22023",
            "unknown sink query parameter: topic_prefix",
        ),
        (
            "CREATE CHANGEFEED FOR TABLE nope INTO 'nodelocal://1/x'",
            "42P01",
            "relation \"nope\" does not exist",
        ),
        (
            "CREATE CHANGEFEED FOR TABLE t WITH end_time = '1000.0000000000'",
            "22023",
            "specified end time 1000.0000000000 cannot be less than statement time",
        ),
        ("CREATE CHANGEFEED t", "42601", "syntax error"),
    ] {
        expect_error(&client, sql, code, text).await?;
    }
    // Nothing was created by the refused statements.
    let rows = query_any(&c, "SHOW CHANGEFEED JOBS").await?;
    ensure!(rows.rows.is_empty(), "{:?}", rows.rows);
    Ok(())
}

/// The node id (`crdb_internal.node_id()`) of the harness's node `index` (they differ: ids
/// follow the order nodes joined).
async fn node_id_of(c: &Cluster, index: usize) -> Result<usize> {
    let rows = c
        .query_text(index, "SELECT crdb_internal.node_id()")
        .await?;
    ldr_e2e::scalar(&rows)
        .context("node id")?
        .trim()
        .parse()
        .context("node id")
}

/// The union of the nodelocal sinks `nodelocal://self/<path>` wrote on every node of `c`.
fn read_sinks(c: &Cluster, path: &str) -> Result<SinkContents> {
    let mut all = SinkContents::default();
    for node in c.node_ids() {
        let s = read_sink(&nodelocal(c, node, path)?)?;
        all.messages.extend(s.messages);
        all.resolved.extend(s.resolved);
        all.data_files.extend(s.data_files);
    }
    Ok(all)
}

/// Upserts `(k, 'v<k>')` for `keys` on any running node of `c`, retrying each until it
/// commits (nodes may be dying).
async fn write_keys(c: &Cluster, keys: std::ops::RangeInclusive<i64>, avoid: usize) -> Result<()> {
    let deadline = Instant::now() + CATCH_UP;
    let mut first = if avoid == 1 { 2 } else { 1 };
    let mut client = ldr_e2e::any_sql(c, first).await?;
    for k in keys {
        loop {
            ensure!(Instant::now() < deadline, "could not write key {k}");
            let sql = format!("UPSERT INTO t VALUES ({k}, 'v{k}')");
            match tokio::time::timeout(Duration::from_secs(10), client.batch_execute(&sql)).await {
                Ok(Ok(())) => break,
                _ => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    first = first % c.node_count() + 1;
                    if first == avoid {
                        first = first % c.node_count() + 1;
                    }
                    if let Ok(cl) = ldr_e2e::any_sql(c, first).await {
                        client = cl;
                    }
                }
            }
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pause_resume_and_coordinator_kill_lose_no_change() -> Result<()> {
    let started = Instant::now();
    let c = cluster("cfkill", 3).await?;
    enable_rangefeeds(&c).await?;
    c.exec(1, "CREATE TABLE t (k INT8 PRIMARY KEY, v STRING)")
        .await?;
    write_keys(&c, 1..=40, 0).await?;
    // Created through node 2: node 2 claims and coordinates it. `self`: each coordinator
    // writes below its own store, so the files of a killed coordinator stay readable.
    let job = create_changefeed(
        &c,
        2,
        "CREATE CHANGEFEED FOR TABLE t INTO 'nodelocal://self/cf' WITH updated, resolved = '200ms', min_checkpoint_frequency = '200ms'",
    )
    .await?;
    write_keys(&c, 41..=80, 0).await?;
    phase(started, "pausing");
    c.exec(1, &format!("PAUSE JOB {job}")).await?;
    wait_job_status(&c, job, "paused", CATCH_UP).await?;
    write_keys(&c, 81..=120, 0).await?;
    c.exec(1, &format!("RESUME JOB {job}")).await?;
    wait_job_status(&c, job, "running", CATCH_UP).await?;
    let after_resume = now(&c).await?;
    poll(
        "the resumed changefeed to resolve past the writes made while paused",
        CATCH_UP,
        Duration::from_millis(200),
        || async {
            let s = read_sinks(&c, "cf").map_err(|e| e.to_string())?;
            if s.resolved.iter().any(|r| *r >= after_resume) {
                Ok(())
            } else {
                Err(format!("{:?}", s.resolved.iter().max()))
            }
        },
    )
    .await?;

    let mut index_of = BTreeMap::new();
    for index in c.node_ids() {
        index_of.insert(node_id_of(&c, index).await?, index);
    }
    // The node running the job (a node id) and its harness index.
    let coordinator_of = || async {
        let id: usize = poll(
            "a coordinator",
            CATCH_UP,
            Duration::from_millis(200),
            || async {
                let row = ldr_e2e::job_row(&c, job).await.map_err(|e| e.to_string())?;
                row.get("coordinator_id")
                    .cloned()
                    .flatten()
                    .and_then(|n| n.trim().parse::<usize>().ok())
                    .ok_or_else(|| format!("{row:?}"))
            },
        )
        .await?;
        let index = *index_of
            .get(&id)
            .with_context(|| format!("node id {id} in {index_of:?}"))?;
        anyhow::Ok((id, index))
    };

    phase(
        started,
        "restarting the coordinator's node (graceful) under writes",
    );
    let (restarted_id, restarted) = coordinator_of().await?;
    c.stop(restarted).await?;
    write_keys(&c, 121..=160, restarted).await?;
    c.start_node(restarted)?;
    c.wait_ready(restarted).await?;
    let after_restart = now(&c).await?;
    poll(
        "the changefeed to resolve past the writes made during the restart",
        CATCH_UP,
        Duration::from_millis(200),
        || async {
            let s = read_sinks(&c, "cf").map_err(|e| e.to_string())?;
            if s.resolved.iter().any(|r| *r >= after_restart) {
                Ok(())
            } else {
                Err(format!("{:?}", s.resolved.iter().max()))
            }
        },
    )
    .await?;
    phase(started, &format!("node {restarted_id} restarted"));

    phase(started, "killing the coordinator under writes");
    let (coordinator_id, coordinator) = coordinator_of().await?;
    let writer = {
        let c2 = &c;
        async move { write_keys(c2, 161..=240, coordinator).await }
    };
    let killer = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        c.kill(coordinator)
    };
    let (w, k) = tokio::join!(writer, killer);
    w?;
    k?;
    let after = now(&c).await?;
    phase(
        started,
        &format!("node {coordinator_id} killed; waiting for another node to resume"),
    );
    let sinks = poll(
        "a new coordinator to resolve past every write",
        CATCH_UP,
        Duration::from_millis(250),
        || async {
            let s = read_sinks(&c, "cf").map_err(|e| e.to_string())?;
            if s.resolved.iter().any(|r| *r >= after) {
                Ok(s)
            } else {
                Err(format!("{:?}", s.resolved.iter().max()))
            }
        },
    )
    .await?;
    let row = ldr_e2e::job_row(&c, job).await?;
    ensure!(
        row["coordinator_id"].as_deref().map(str::trim) != Some(&coordinator_id.to_string()),
        "another node coordinates now: {row:?}"
    );
    // Every row written is in the sinks with its value (duplicates allowed: at least once).
    let latest = latest_values(&sinks.messages)?;
    let missing: Vec<i64> = (1..=240)
        .filter(|k| latest.get(k).cloned().flatten() != Some(format!("v{k}")))
        .collect();
    ensure!(
        missing.is_empty(),
        "keys missing from the changefeed: {missing:?} ({} messages)",
        sinks.messages.len()
    );
    let rows = query_any(&c, "SELECT count(*) FROM t").await?;
    ensure!(
        ldr_e2e::scalar(&rows).as_deref() == Some("240"),
        "{:?}",
        rows.rows
    );

    phase(
        started,
        "a nodelocal sink on another node than the coordinator",
    );
    let live: Vec<usize> = c.node_ids().filter(|n| *n != coordinator).collect();
    let (creator, target) = (live[0], live[1]);
    let creator_id = node_id_of(&c, creator).await?;
    let target_id = node_id_of(&c, target).await?;
    let only = create_changefeed(
        &c,
        creator,
        &format!(
            "CREATE CHANGEFEED FOR TABLE t INTO 'nodelocal://{target_id}/remote' WITH initial_scan = 'only'"
        ),
    )
    .await?;
    wait_job_status(&c, only, "succeeded", CATCH_UP).await?;
    let remote = read_sink(&nodelocal(&c, target, "remote")?)?;
    let keys: BTreeSet<i64> = latest_values(&remote.messages)?.into_keys().collect();
    ensure!(
        keys == (1..=240).collect::<BTreeSet<i64>>(),
        "node {target_id}'s sink has every row ({} keys)",
        keys.len()
    );
    ensure!(
        remote
            .data_files
            .iter()
            .all(|f| f.split('-').nth(2) == Some(&creator_id.to_string())),
        "files name their writer, node {creator_id}: {:?}",
        remote.data_files
    );
    phase(started, "done");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn changefeed_on_a_emits_ldr_writes_once_b_replicates_into_a() -> Result<()> {
    let started = Instant::now();
    let (a, b) = cluster_pair(1, false).await?;
    for c in [&a, &b] {
        c.exec(1, "CREATE TABLE test_table (k INT8 PRIMARY KEY, v STRING)")
            .await?;
        enable_rangefeeds(c).await?;
    }
    phase(started, "1. a changefeed watching test_table on cluster A");
    let job = create_changefeed(
        &a,
        1,
        "CREATE CHANGEFEED FOR TABLE test_table INTO 'nodelocal://1/cf' WITH updated, resolved = '200ms', min_checkpoint_frequency = '200ms'",
    )
    .await?;
    ensure!(job > 0);
    let dir = nodelocal(&a, 1, "cf")?;
    phase(started, "2. LDR A -> B, writes on both clusters");
    ldr_sim::ldr::create_external_connection(&b, "a", &a).await?;
    let table = ["defaultdb.public.test_table"];
    let a_to_b = ldr_sim::ldr::create_stream(&b, "a", &table, &table, None).await?;
    a.exec(
        1,
        "INSERT INTO test_table VALUES (1, 'a1'), (2, 'a2'), (3, 'a3')",
    )
    .await?;
    b.exec(1, "INSERT INTO test_table VALUES (101, 'b1'), (102, 'b2')")
        .await?;
    ldr_e2e::wait_replicated(&b, a_to_b, now(&a).await?, CATCH_UP).await?;
    let sink = wait_resolved(&dir, now(&a).await?, CATCH_UP).await?;
    let keys: BTreeSet<i64> = latest_values(&sink.messages)?.into_keys().collect();
    ensure!(
        keys == BTreeSet::from([1, 2, 3]),
        "while LDR runs only A -> B, the changefeed on A emits A's writes only: {keys:?}"
    );
    phase(
        started,
        "3. LDR B -> A too: B's writes reach A and its changefeed",
    );
    ldr_sim::ldr::create_external_connection(&a, "b", &b).await?;
    let b_to_a = ldr_sim::ldr::create_stream(&a, "b", &table, &table, None).await?;
    b.exec(1, "INSERT INTO test_table VALUES (103, 'b3')")
        .await?;
    a.exec(1, "INSERT INTO test_table VALUES (4, 'a4')").await?;
    ldr_e2e::wait_replicated(&a, b_to_a, now(&b).await?, CATCH_UP).await?;
    let sink = wait_resolved(&dir, now(&a).await?, CATCH_UP).await?;
    let latest = latest_values(&sink.messages)?;
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
    ensure!(
        latest == want,
        "the changefeed on A emits A's writes and B's writes arriving through LDR: {latest:?}"
    );
    phase(started, "done");
    Ok(())
}

/// A minimal webhook receiver: records every POST body; answers 200.
async fn start_receiver(
    listener: tokio::net::TcpListener,
    bodies: Arc<std::sync::Mutex<Vec<String>>>,
) -> tokio::task::JoinHandle<()> {
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: String| {
            let bodies = bodies.clone();
            async move {
                if let Ok(mut b) = bodies.lock() {
                    b.push(body);
                }
                "ok"
            }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn webhook_receiver_down_then_up_gets_every_message() -> Result<()> {
    let started = Instant::now();
    let c = cluster("cfhook", 1).await?;
    enable_rangefeeds(&c).await?;
    c.exec(1, "CREATE TABLE t (k INT8 PRIMARY KEY, v STRING)")
        .await?;
    write_keys(&c, 1..=20, 0).await?;
    // A port nothing listens on yet.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let job = create_changefeed(
        &c,
        1,
        &format!(
            "CREATE CHANGEFEED FOR TABLE t INTO 'webhook-http://127.0.0.1:{port}/hook' WITH updated, resolved = '500ms', min_checkpoint_frequency = '200ms'"
        ),
    )
    .await?;
    phase(
        started,
        "receiver down: the job reports the error and keeps retrying",
    );
    poll(
        "the sink error in SHOW CHANGEFEED JOBS",
        CATCH_UP,
        Duration::from_millis(200),
        || async {
            let row = changefeed_row(&c, job).await.map_err(|e| e.to_string())?;
            match row.get("running_status").cloned().flatten() {
                Some(s) if s.contains("retryable error") && s.contains("127.0.0.1") => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await?;
    write_keys(&c, 21..=40, 0).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let row = changefeed_row(&c, job).await?;
    ensure!(row["status"].as_deref() == Some("running"), "{row:?}");
    phase(started, "receiver up");
    let bodies = Arc::new(std::sync::Mutex::new(Vec::new()));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    let server = start_receiver(listener, bodies.clone()).await;
    write_keys(&c, 41..=50, 0).await?;
    let after = now(&c).await?;
    let (messages, resolved) = poll(
        "every message and a resolved message past the writes",
        CATCH_UP,
        Duration::from_millis(200),
        || async {
            let bodies = bodies.lock().map_err(|e| e.to_string())?.clone();
            let mut messages = Vec::new();
            let mut resolved = Vec::new();
            for b in &bodies {
                let v: Value = serde_json::from_str(b).map_err(|e| format!("{b}: {e}"))?;
                if let Some(r) = v.get("resolved") {
                    resolved.push(ts_of(r).map_err(|e| e.to_string())?);
                    continue;
                }
                let payload = v["payload"]
                    .as_array()
                    .ok_or_else(|| format!("no payload: {b}"))?;
                if v["length"].as_u64() != Some(payload.len() as u64) {
                    return Err(format!("length does not match: {b}"));
                }
                messages.extend(payload.iter().cloned());
            }
            if resolved.iter().any(|r| *r >= after) {
                Ok((messages, resolved))
            } else {
                Err(format!(
                    "{} messages, resolved {:?}",
                    messages.len(),
                    resolved.last()
                ))
            }
        },
    )
    .await?;
    let latest = latest_values(&messages)?;
    let missing: Vec<i64> = (1..=50)
        .filter(|k| latest.get(k).cloned().flatten() != Some(format!("v{k}")))
        .collect();
    ensure!(
        missing.is_empty(),
        "missing after the receiver came up: {missing:?}"
    );
    for m in &messages {
        ensure!(
            m["topic"] == "t" && m["key"].is_array() && m["updated"].is_string(),
            "webhook messages carry key, topic and updated: {m}"
        );
    }
    ensure!(!resolved.is_empty());
    let row = changefeed_row(&c, job).await?;
    ensure!(
        !row["running_status"]
            .clone()
            .unwrap_or_default()
            .contains("retryable error"),
        "the error clears once the receiver answers: {row:?}"
    );
    server.abort();
    phase(started, "done");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sinkless_changefeeds_return_table_key_value_rows() -> Result<()> {
    let c = cluster("cfcore", 1).await?;
    enable_rangefeeds(&c).await?;
    c.exec(
        1,
        "CREATE TABLE t (id INT8 PRIMARY KEY, v STRING); INSERT INTO t VALUES (1, 'a'), (2, 'b')",
    )
    .await?;
    // The initial scan only: CockroachDB's core changefeed columns.
    let rows = query_any(
        &c,
        "CREATE CHANGEFEED FOR TABLE t WITH initial_scan = 'only'",
    )
    .await?;
    ensure!(
        rows.columns == ["table", "key", "value"],
        "{:?}",
        rows.columns
    );
    let mut got: Vec<Vec<Option<String>>> = rows.rows.clone();
    got.sort();
    ensure!(
        got == vec![
            vec![
                Some("t".to_string()),
                Some("[1]".to_string()),
                Some(r#"{"after": {"id": 1, "v": "a"}}"#.to_string())
            ],
            vec![
                Some("t".to_string()),
                Some("[2]".to_string()),
                Some(r#"{"after": {"id": 2, "v": "b"}}"#.to_string())
            ],
        ],
        "{got:?}"
    );
    // Changes between a cursor and an end time.
    let cursor = now(&c).await?;
    c.exec(
        1,
        "UPDATE t SET v = 'a2' WHERE id = 1; DELETE FROM t WHERE id = 2",
    )
    .await?;
    let end = now(&c).await?;
    c.exec(1, "INSERT INTO t VALUES (3, 'late')").await?;
    let rows = query_any(
        &c,
        &format!(
            "CREATE CHANGEFEED FOR TABLE t WITH cursor = '{}', end_time = '{}', diff",
            cursor.to_decimal_string(),
            end.to_decimal_string()
        ),
    )
    .await?;
    let mut values: Vec<String> = rows
        .rows
        .iter()
        .map(|r| r[2].clone().unwrap_or_default())
        .collect();
    values.sort();
    ensure!(
        values
            == vec![
                r#"{"after": null, "before": {"id": 2, "v": "b"}}"#.to_string(),
                r#"{"after": {"id": 1, "v": "a2"}, "before": {"id": 1, "v": "a"}}"#.to_string(),
            ],
        "changes in (cursor, end_time] only: {values:?}"
    );
    // The other message options work alike: a bare envelope (the row at the top level) in
    // JSON, and key_only (no value: NULL).
    let rows = query_any(
        &c,
        "CREATE CHANGEFEED FOR TABLE t WITH initial_scan = 'only', envelope = 'bare', format = json",
    )
    .await?;
    let mut got: Vec<Vec<Option<String>>> = rows.rows.clone();
    got.sort();
    let row = |k: &str, v: Option<&str>| {
        vec![
            Some("t".to_string()),
            Some(k.to_string()),
            v.map(String::from),
        ]
    };
    ensure!(
        got == vec![
            row("[1]", Some(r#"{"id": 1, "v": "a2"}"#)),
            row("[3]", Some(r#"{"id": 3, "v": "late"}"#)),
        ],
        "bare: {got:?}"
    );
    let rows = query_any(
        &c,
        "CREATE CHANGEFEED FOR TABLE t WITH initial_scan = 'only', envelope = 'key_only'",
    )
    .await?;
    let mut got: Vec<Vec<Option<String>>> = rows.rows.clone();
    got.sort();
    ensure!(
        got == vec![row("[1]", None), row("[3]", None)],
        "key_only: {got:?}"
    );
    // No job is left behind.
    let rows = query_any(&c, "SHOW CHANGEFEED JOBS").await?;
    ensure!(rows.rows.is_empty(), "{:?}", rows.rows);
    Ok(())
}

/// A connection to node `index` of `c` and the task owning its socket: aborting the task
/// closes the socket, as a client process that exits does (dropping the client alone leaves
/// tokio-postgres waiting for the never-ending statement's response).
async fn connect_owned(
    c: &Cluster,
    index: usize,
) -> Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>)> {
    let (client, conn) = tokio_postgres::connect(&c.url(index)?, tokio_postgres::NoTls).await?;
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok((client, task))
}

fn no_params() -> impl ExactSizeIterator<Item = &'static (dyn tokio_postgres::types::ToSql + Sync)>
{
    std::iter::empty()
}

/// `changefeed_running` summed over the cluster's nodes.
async fn changefeeds_running(c: &Cluster) -> Result<f64> {
    Ok(ldr_e2e::cluster_metrics(c)
        .await?
        .sum("changefeed_running")
        .unwrap_or(0.0))
}

/// Waits until `changefeed_running` is `n` on the cluster.
async fn wait_running(c: &Cluster, n: f64, why: &str) -> Result<()> {
    poll(
        why,
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async {
            match changefeeds_running(c).await {
                Ok(v) if v == n => Ok(()),
                Ok(v) => Err(format!("changefeed_running {v}, expected {n}")),
                Err(e) => Err(e.to_string()),
            }
        },
    )
    .await
}

/// A streamed changefeed row: `(table, key, value)`.
type FeedRow = (Option<String>, Option<String>, Option<String>);

/// The next row of a streaming changefeed (waiting at most `CATCH_UP`).
async fn next_feed_row(
    rows: &mut std::pin::Pin<&mut tokio_postgres::RowStream>,
    what: &str,
) -> Result<FeedRow> {
    use futures::StreamExt;
    let row = tokio::time::timeout(CATCH_UP, rows.next())
        .await
        .with_context(|| format!("waiting for {what}"))?
        .with_context(|| format!("the changefeed ended before {what}"))??;
    Ok((row.get(0), row.get(1), row.get(2)))
}

/// The next change (not a resolved row) of a streaming changefeed, as its key and value
/// JSON; resolved rows on the way are checked (NULL table and key, `{"resolved":…}`) and
/// counted into `resolved`.
async fn next_change(
    rows: &mut std::pin::Pin<&mut tokio_postgres::RowStream>,
    what: &str,
    resolved: &mut Vec<Timestamp>,
) -> Result<(String, Value)> {
    loop {
        let (table, key, value) = next_feed_row(rows, what).await?;
        let value = value.with_context(|| format!("{what}: a row without a value"))?;
        let json: Value = serde_json::from_str(&value)
            .with_context(|| format!("{what}: value is not JSON: {value}"))?;
        if table.is_none() {
            ensure!(key.is_none(), "a resolved row has no key: {key:?}");
            ensure!(
                json.as_object().is_some_and(|o| o.len() == 1) && json.get("resolved").is_some(),
                "a resolved row is {{\"resolved\":…}}: {value}"
            );
            let ts = ts_of(&json["resolved"])?;
            ensure!(
                resolved.last().is_none_or(|last| *last <= ts),
                "resolved timestamps never go back: {resolved:?} then {ts}"
            );
            resolved.push(ts);
            continue;
        }
        ensure!(table.as_deref() == Some("t"), "{what}: table {table:?}");
        return Ok((key.with_context(|| format!("{what}: no key"))?, json));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sinkless_changefeeds_stream_live_changes_until_the_client_leaves() -> Result<()> {
    let started = Instant::now();
    let c = cluster("cfstream", 1).await?;
    enable_rangefeeds(&c).await?;
    c.exec(
        1,
        "CREATE TABLE t (id INT8 PRIMARY KEY, v STRING); INSERT INTO t VALUES (1, 'a')",
    )
    .await?;
    ensure!(changefeeds_running(&c).await? == 0.0, "nothing runs yet");
    phase(started, "cluster up");

    // An unbounded changefeed streams rows over the extended protocol (tokio-postgres
    // query_raw; psycopg's stream() likewise): the initial scan first, with CockroachDB's
    // message format (`updated` is the statement time for scanned rows).
    let (feed, socket) = connect_owned(&c, 1).await?;
    let stream = feed
        .query_raw(
            "CREATE CHANGEFEED FOR TABLE t WITH updated, diff, resolved = '1s'",
            no_params(),
        )
        .await?;
    let mut rows = std::pin::pin!(stream);
    let mut resolved = Vec::new();
    let (key, value) = next_change(&mut rows, "the initial scan", &mut resolved).await?;
    ensure!(key == "[1]", "{key}");
    ensure!(
        value["after"] == serde_json::json!({"id": 1, "v": "a"}) && value["before"].is_null(),
        "{value}"
    );
    let scan_time = ts_of(&value["updated"])?;
    ensure!(
        changefeeds_running(&c).await? == 1.0,
        "a sinkless changefeed counts as running"
    );
    phase(started, "initial scan row streamed");

    // Changes made from another connection after the feed started arrive one by one, in
    // order, while the statement runs: insert, update (with `before`), delete.
    let mut last_updated = scan_time;
    for (sql, key, after, before) in [
        (
            "INSERT INTO t VALUES (2, 'b')",
            "[2]",
            serde_json::json!({"id": 2, "v": "b"}),
            Value::Null,
        ),
        (
            "UPDATE t SET v = 'a2' WHERE id = 1",
            "[1]",
            serde_json::json!({"id": 1, "v": "a2"}),
            serde_json::json!({"id": 1, "v": "a"}),
        ),
        (
            "DELETE FROM t WHERE id = 2",
            "[2]",
            Value::Null,
            serde_json::json!({"id": 2, "v": "b"}),
        ),
    ] {
        c.exec(1, sql).await?;
        let (got_key, value) = next_change(&mut rows, sql, &mut resolved).await?;
        ensure!(got_key == key, "{sql}: key {got_key}, expected {key}");
        ensure!(
            value["after"] == after && value["before"] == before,
            "{sql}: {value}, expected after {after} before {before}"
        );
        let updated = ts_of(&value["updated"])?;
        ensure!(
            updated > last_updated,
            "{sql}: updated {updated} after {last_updated}"
        );
        last_updated = updated;
    }
    phase(started, "live changes streamed in order");

    // Resolved rows (NULL table and key) keep coming while the table is idle, and pass the
    // last change.
    loop {
        let (table, _, value) = next_feed_row(&mut rows, "a resolved row").await?;
        ensure!(table.is_none(), "no change was made: {value:?}");
        let json: Value = serde_json::from_str(value.as_deref().unwrap_or("null"))?;
        let ts = ts_of(&json["resolved"])?;
        if ts >= last_updated {
            break;
        }
    }
    phase(started, "resolved rows pass the last change");

    // The client goes away (its socket closes while the feed is idle): the node stops the
    // feed (its readers and rangefeeds go with it) and no job was left behind.
    socket.abort();
    drop(feed);
    wait_running(&c, 0.0, "the changefeed stops when its client disconnects").await?;
    let jobs = query_any(&c, "SHOW CHANGEFEED JOBS").await?;
    ensure!(jobs.rows.is_empty(), "{:?}", jobs.rows);
    phase(started, "disconnect stopped the feed");

    // A CancelRequest (psql's Ctrl-C) ends it with 57014 after the rows so far, over the
    // simple protocol too; the connection stays usable and the feed stops.
    let (client, _socket) = connect_owned(&c, 1).await?;
    let messages = client
        .simple_query_raw("CREATE CHANGEFEED FOR TABLE t")
        .await?;
    let mut messages = std::pin::pin!(messages);
    let first = loop {
        use futures::StreamExt;
        match tokio::time::timeout(CATCH_UP, messages.next())
            .await
            .context("the initial scan over the simple protocol")?
            .context("ended")??
        {
            tokio_postgres::SimpleQueryMessage::Row(row) => {
                break (
                    row.get(0).map(String::from),
                    row.get(1).map(String::from),
                    row.get(2).map(String::from),
                );
            }
            _ => continue,
        }
    };
    ensure!(
        first
            == (
                Some("t".into()),
                Some("[1]".into()),
                Some(r#"{"after": {"id": 1, "v": "a2"}}"#.into())
            ),
        "{first:?}"
    );
    wait_running(&c, 1.0, "the second feed runs").await?;
    client
        .cancel_token()
        .cancel_query(tokio_postgres::NoTls)
        .await?;
    let e = loop {
        use futures::StreamExt;
        match tokio::time::timeout(CATCH_UP, messages.next())
            .await
            .context("the cancel ends the statement")?
            .context("ended without an error")?
        {
            Ok(_) => continue,
            Err(e) => break e,
        }
    };
    ensure!(
        ldr_e2e::code_of(&e) == "57014"
            && e.as_db_error().map(|d| d.message()) == Some("query execution canceled"),
        "{e}"
    );
    wait_running(&c, 0.0, "a canceled changefeed stops").await?;
    let one = client.query_one("SELECT 1", &[]).await?;
    ensure!(
        one.get::<_, i64>(0) == 1,
        "the connection is usable after a cancel"
    );
    phase(started, "cancel stopped the feed");

    // psycopg 3, as CockroachDB's docs show (`for row in cur.stream(…)`): a change made
    // after the feed started arrives; leaving the loop cancels the statement.
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/e2e/psycopg_changefeed.py");
    // The interpreter python3-psycopg is installed for (docs/development.md).
    let python = std::env::var("LDR_PYTHON").unwrap_or_else(|_| {
        if std::path::Path::new("/usr/bin/python3").exists() {
            "/usr/bin/python3".into()
        } else {
            "python3".into()
        }
    });
    let output = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(&python)
            .arg(script)
            .args(["--key", "100", "--deadline-s", "60"])
            .arg(c.url(1)?)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .context("psycopg script did not finish in 120s")??;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        output.status.success(),
        "psycopg changefeed failed ({}); install python3-psycopg (scripts/setup.sh) if it is missing\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    let summary: Value = serde_json::from_str(
        stdout
            .lines()
            .find_map(|l| l.strip_prefix("summary "))
            .with_context(|| format!("no summary line in {stdout}"))?,
    )?;
    let seen = summary["rows"].as_array().context("rows")?;
    ensure!(
        seen.first()
            == Some(&serde_json::json!([
                "t",
                "[1]",
                r#"{"after": {"id": 1, "v": "a2"}}"#
            ]))
            && seen.last()
                == Some(&serde_json::json!([
                    "t",
                    "[100]",
                    r#"{"after": {"id": 100, "v": "from psycopg"}}"#
                ])),
        "psycopg saw {summary}"
    );
    wait_running(&c, 0.0, "psycopg's feed stops").await?;
    phase(started, "psycopg streamed and canceled");
    Ok(())
}

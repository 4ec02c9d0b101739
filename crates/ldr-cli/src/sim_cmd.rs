//! `ldr sim run <scenario.json>` and `ldr sim fuzz --seed S --runs N`: the conflict fuzzer of
//! DESIGN.md §10 on the command line, over `ldr_sim::fuzz`.
//!
//! Each scenario runs against two fresh clusters of this very binary (`a` and `b`, N nodes
//! each, inter-cluster traffic through fault proxies) with bidirectional LDR on a `kv` table:
//! writes on both sides, faults (kill/restart, pause/resume, cut, blackhole, delay, clock
//! skew, paused jobs), then the checkers (quiesce, convergence, LWW oracle, monotonic
//! replicated time, accounting). `fuzz` generates scenario `i` from seed `S + i`: the same
//! seed and options always give the same writes and fault schedule. Every run prints its
//! seed and how to reproduce it; a failure prints the fault timeline and the write history
//! of every wrong key, saves the scenario (for `ldr sim run`), keeps the clusters' stores
//! and logs, and makes the command exit non-zero. `--mode=validated` creates both streams
//! `WITH mode = 'validated'` (every replicated row through the SQL write path); the run
//! prints each job's command as the cluster shows it, and the reproduction line carries the
//! mode.
//!
//! `ldr sim lincheck --seed S` is the linearizability check of `ldr_sim::lincheck`: one
//! 3-node cluster with replicated ranges, seeded clients reading, writing and
//! compare-and-setting a few keys while nodes are killed and paused, then a check of the
//! history key by key; a violation (or an inconclusive check) exits non-zero.
//!
//! `ldr sim elle --seed S` is the transactional anomaly check of `ldr_sim::elle`: the same
//! cluster and nemesis, with clients running explicit transactions of list appends and reads
//! over keys in several ranges, then Elle's analysis; an anomaly exits non-zero.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use ldr_sim::fuzz::{
    ApplyMode, FaultKind, GenConfig, Runner, RunnerConfig, Scenario, setup_bidirectional_mode,
};
use ldr_sim::{Cluster, ClusterSpec};

use crate::workload_cmd::parse_duration;

/// How long a cluster may take to start on a loaded machine.
pub(crate) const READY_TIMEOUT: Duration = Duration::from_secs(180);

#[derive(Debug, Subcommand)]
pub enum SimCommand {
    /// Run a scenario file (as written by `ldr sim fuzz --save`, or by hand) against two fresh
    /// clusters with bidirectional LDR, then check the outcome.
    Run(RunArgs),
    /// Generate seeded scenarios (writes and faults) and run each against two fresh clusters.
    Fuzz(FuzzArgs),
    /// Linearizability of single-key histories: seeded reads, writes and compare-and-sets on
    /// a replicated 3-node cluster while nodes are killed and paused.
    Lincheck(crate::lincheck_cmd::LincheckArgs),
    /// Transactional anomalies (Elle's list-append analysis): seeded explicit transactions
    /// of appends and reads over keys in several ranges while nodes are killed and paused;
    /// G0, G1a/b/c, G-single (lost update) and G2 fail the run.
    Elle(crate::elle_cmd::ElleArgs),
}

/// `--mode`: how both streams apply replicated rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    /// KV writes (a stream's default mode).
    Immediate,
    /// WITH mode = 'validated': each row through the SQL write path, constraints enforced.
    Validated,
}

impl ModeArg {
    pub fn mode(self) -> ApplyMode {
        match self {
            ModeArg::Immediate => ApplyMode::Immediate,
            ModeArg::Validated => ApplyMode::Validated,
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// The scenario JSON file.
    pub scenario: PathBuf,
    /// Nodes per cluster (default: the scenario's `config.nodes_per_cluster`).
    #[arg(long)]
    pub nodes: Option<usize>,
    /// Keep the clusters' stores and logs even when the run passes.
    #[arg(long)]
    pub keep: bool,
    /// LDR apply mode of both streams.
    #[arg(long, value_enum, default_value = "immediate")]
    pub mode: ModeArg,
    /// Secure clusters: each with its own CA, TLS for SQL and between nodes, both streams
    /// over verify-full TLS with a password.
    #[arg(long)]
    pub secure: bool,
}

#[derive(Debug, Clone, Args)]
pub struct FuzzArgs {
    /// Seed of the first run (run `i` uses `seed + i`); random when absent (and printed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Number of scenarios to generate and run; stops at the first failure.
    #[arg(long, default_value_t = 1)]
    pub runs: u64,
    /// Nodes per cluster.
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Length of each scenario's schedule (`20s`, `1m`, or seconds).
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Size of the key space (fewer keys, more conflicts).
    #[arg(long, default_value_t = 20)]
    pub keys: i64,
    /// Writes per scenario (default: 10 per second of --duration).
    #[arg(long)]
    pub writes: Option<usize>,
    /// Fault episodes to attempt per scenario (default: one per 3 s of --duration, at least 2).
    #[arg(long)]
    pub faults: Option<usize>,
    /// Fault kinds to draw from, comma separated: kill, pause, cut, blackhole, delay,
    /// clock-skew, pause-job (default: all).
    #[arg(long, value_delimiter = ',')]
    pub fault_kinds: Vec<String>,
    /// Percentage of writes that are deletes.
    #[arg(long, default_value_t = 10)]
    pub delete_percent: u8,
    /// Largest clock skew of a clock-skew fault, in milliseconds.
    #[arg(long, default_value_t = 200)]
    pub max_clock_skew_ms: u64,
    /// Write each generated scenario to `DIR/seed-<seed>.json` (replay with `ldr sim run`).
    #[arg(long, value_name = "DIR")]
    pub save: Option<PathBuf>,
    /// Generate (and save) the scenarios, print their fault schedules, run nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Keep the clusters' stores and logs even when the runs pass.
    #[arg(long)]
    pub keep: bool,
    /// LDR apply mode of both streams: `immediate` (KV writes) or `validated` (WITH mode =
    /// 'validated'). The scenario is the same in both; the checks are too.
    #[arg(long, value_enum, default_value = "immediate")]
    pub mode: ModeArg,
    /// Secure clusters: each with its own CA, TLS for SQL and between nodes, both streams
    /// over verify-full TLS with a password.
    #[arg(long)]
    pub secure: bool,
}

impl FuzzArgs {
    /// The generator settings these flags describe (pure).
    pub fn gen_config(&self) -> Result<GenConfig> {
        let duration_ms = u64::try_from(self.duration.as_millis()).unwrap_or(u64::MAX);
        let seconds = duration_ms / 1000;
        let fault_kinds = if self.fault_kinds.is_empty() {
            FaultKind::ALL.to_vec()
        } else {
            self.fault_kinds
                .iter()
                .map(|k| parse_fault_kind(k))
                .collect::<Result<Vec<_>>>()?
        };
        Ok(GenConfig {
            nodes_per_cluster: self.nodes,
            keys: self.keys,
            writes: self
                .writes
                .unwrap_or_else(|| usize::try_from(seconds * 10).unwrap_or(usize::MAX).max(10)),
            duration_ms,
            faults: self
                .faults
                .unwrap_or_else(|| usize::try_from(seconds / 3).unwrap_or(usize::MAX).max(2)),
            fault_kinds,
            max_clock_skew_ms: self.max_clock_skew_ms,
            delete_percent: self.delete_percent,
            ..GenConfig::default()
        })
    }

    /// The command that generates exactly the scenario of `seed` again (every generation
    /// option spelled out, so defaults changing later does not matter).
    pub fn reproduce_command(&self, seed: u64) -> Result<String> {
        let config = self.gen_config()?;
        let kinds: Vec<String> = config
            .fault_kinds
            .iter()
            .map(|k| fault_kind_name(*k))
            .collect();
        Ok(format!(
            "ldr sim fuzz --seed {seed} --runs 1 --nodes {} --duration {}ms --keys {} --writes {} --faults {} --fault-kinds {} --delete-percent {} --max-clock-skew-ms {} --mode {}{}",
            config.nodes_per_cluster,
            config.duration_ms,
            config.keys,
            config.writes,
            config.faults,
            kinds.join(","),
            config.delete_percent,
            config.max_clock_skew_ms,
            self.mode.mode(),
            if self.secure { " --secure" } else { "" }
        ))
    }
}

/// `kill`, `clock-skew` / `clock_skew`, … (case-insensitive).
fn parse_fault_kind(text: &str) -> Result<FaultKind> {
    let name = text.trim().to_ascii_lowercase().replace('-', "_");
    serde_json::from_value(serde_json::Value::String(name)).map_err(|_| {
        anyhow::anyhow!(
            "unknown fault kind {text:?} (expected kill, pause, cut, blackhole, delay, clock-skew or pause-job)"
        )
    })
}

fn fault_kind_name(kind: FaultKind) -> String {
    serde_json::to_value(kind)
        .ok()
        .and_then(|v| v.as_str().map(|s| s.replace('_', "-")))
        .unwrap_or_default()
}

pub async fn run(command: SimCommand) -> Result<()> {
    init_logging();
    match command {
        SimCommand::Run(args) => run_file(&args).await,
        SimCommand::Fuzz(args) => fuzz(&args).await,
        SimCommand::Lincheck(args) => crate::seeded_check::run(&args).await,
        SimCommand::Elle(args) => crate::seeded_check::run(&args).await,
    }
}

/// Progress of the harness on stderr (`LDR_LOG` overrides the filter).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LDR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr)
        .try_init();
}

async fn run_file(args: &RunArgs) -> Result<()> {
    let scenario = Scenario::load(&args.scenario)
        .with_context(|| format!("cannot load scenario {}", args.scenario.display()))?;
    let nodes = args.nodes.unwrap_or(scenario.config.nodes_per_cluster);
    let mode = args.mode.mode();
    println!(
        "ldr sim run: {} (seed {}, {} steps, {} writes, {} nodes per cluster, {mode} mode)",
        args.scenario.display(),
        scenario.seed,
        scenario.steps.len(),
        scenario.writes(),
        nodes
    );
    let reproduce = format!(
        "ldr sim run {} --nodes {nodes} --mode {mode}{}",
        args.scenario.display(),
        if args.secure { " --secure" } else { "" }
    );
    match execute(&scenario, nodes, mode, args.secure, args.keep, &reproduce).await? {
        Outcome::Passed => Ok(()),
        Outcome::Failed => bail!(
            "scenario {} (seed {}) failed",
            args.scenario.display(),
            scenario.seed
        ),
    }
}

async fn fuzz(args: &FuzzArgs) -> Result<()> {
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let config = args.gen_config()?;
    let first_seed = args.seed.unwrap_or_else(rand_seed);
    println!(
        "ldr sim fuzz: seed {first_seed}, {} run(s) (run i uses seed {first_seed}+i); {} mode; {} nodes per cluster, {} writes over {} keys in {:.1}s, up to {} fault episodes ({})",
        args.runs,
        args.mode.mode(),
        config.nodes_per_cluster,
        config.writes,
        config.keys,
        config.duration_ms as f64 / 1000.0,
        config.faults,
        config
            .fault_kinds
            .iter()
            .map(|k| fault_kind_name(*k))
            .collect::<Vec<_>>()
            .join(",")
    );
    if let Some(dir) = &args.save {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let started = Instant::now();
    for i in 0..args.runs {
        let seed = first_seed.wrapping_add(i);
        let scenario = Scenario::generate(seed, &config)?;
        println!(
            "\n=== run {}/{}: seed {seed} ({} writes, {} fault steps) ===",
            i + 1,
            args.runs,
            scenario.writes(),
            scenario.fault_timeline().len()
        );
        print_planned_timeline(&scenario);
        let reproduce = args.reproduce_command(seed)?;
        let saved = match &args.save {
            Some(dir) => Some(save(&scenario, dir)?),
            None => None,
        };
        if let Some(path) = &saved {
            println!("scenario saved to {}", path.display());
        }
        if args.dry_run {
            continue;
        }
        println!("reproduce: {reproduce}");
        match execute(
            &scenario,
            config.nodes_per_cluster,
            args.mode.mode(),
            args.secure,
            args.keep,
            &reproduce,
        )
        .await?
        {
            Outcome::Passed => {}
            Outcome::Failed => {
                bail!("seed {seed} failed (run {} of {})", i + 1, args.runs)
            }
        }
    }
    if !args.dry_run {
        crate::seeded_check::print_all_passed(args.runs, first_seed, started);
    }
    Ok(())
}

pub(crate) fn rand_seed() -> u64 {
    ldr_sim::workload::seed_from_env()
}

fn print_planned_timeline(scenario: &Scenario) {
    let timeline = scenario.fault_timeline();
    if timeline.is_empty() {
        println!("fault schedule: (no faults)");
        return;
    }
    println!("fault schedule:");
    for line in timeline {
        println!("  {line}");
    }
}

fn save(scenario: &Scenario, dir: &Path) -> Result<PathBuf> {
    let path = dir.join(format!("seed-{}.json", scenario.seed));
    scenario
        .save(&path)
        .with_context(|| format!("cannot save the scenario to {}", path.display()))?;
    Ok(path)
}

enum Outcome {
    Passed,
    Failed,
}

/// Two fresh clusters, bidirectional LDR, the scenario, the checkers. Harness trouble
/// (a cluster that does not start) is an error; a failed check is [`Outcome::Failed`],
/// reported on stdout with everything needed to reproduce it.
async fn execute(
    scenario: &Scenario,
    nodes: usize,
    mode: ApplyMode,
    secure: bool,
    keep: bool,
    reproduce: &str,
) -> Result<Outcome> {
    let binary = std::env::current_exe().context("cannot find the ldr binary")?;
    let started = Instant::now();
    let spec = |name: &str| {
        ClusterSpec::with_binary(name, nodes, binary.clone())
            .proxied(true)
            .secure(secure)
            .ready_timeout(READY_TIMEOUT)
    };
    let (mut a, mut b) = tokio::try_join!(Cluster::start(spec("a")), Cluster::start(spec("b")))?;
    let (job_a, job_b) = setup_bidirectional_mode(&a, &b, "kv", mode)
        .await
        .context("setting up bidirectional LDR")?;
    println!(
        "clusters a and b ({nodes} node(s) each, {}) ready with bidirectional LDR ({mode} mode) in {:.1}s",
        if secure { "secure" } else { "insecure" },
        started.elapsed().as_secs_f64()
    );
    // What the clusters say they run (the mode is in the command), not what was asked.
    for (name, cluster, job) in [("a", &a, job_a), ("b", &b, job_b)] {
        let command = ldr_sim::ldr::job_command(cluster, job)
            .await
            .with_context(|| format!("reading job {job}'s command on cluster {name}"))?;
        println!("job on {name}: {job}: {command}");
    }
    let result = Runner::new(&a, &b, RunnerConfig::default())
        .run(scenario)
        .await;
    let outcome = match result {
        Ok(report) => {
            println!("executed fault timeline:");
            if report.timeline.is_empty() {
                println!("  (no faults)");
            }
            for line in &report.timeline {
                println!("  {line}");
            }
            print!("PASS {report}");
            Outcome::Passed
        }
        Err(e) => {
            println!("FAIL\n{e}");
            let saved = save(scenario, &failure_dir())?;
            println!("\nscenario saved to {}", saved.display());
            println!("reproduce: {reproduce}");
            println!("   or: ldr sim run {} --mode {mode}", saved.display());
            Outcome::Failed
        }
    };
    if keep || matches!(outcome, Outcome::Failed) {
        println!(
            "cluster files (stores, node logs) kept in {} and {}",
            a.keep_files().display(),
            b.keep_files().display()
        );
    }
    Ok(outcome)
}

/// Where a failed scenario is written: `$TMPDIR/ldr-sim-failures`.
pub(crate) fn failure_dir() -> PathBuf {
    let dir = std::env::temp_dir().join("ldr-sim-failures");
    let _ = std::fs::create_dir_all(&dir);
    dir
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        command: SimCommand,
    }

    fn fuzz_args(args: &[&str]) -> FuzzArgs {
        let cli = Cli::try_parse_from(["sim", "fuzz"].iter().chain(args)).expect("parse");
        match cli.command {
            SimCommand::Fuzz(args) => args,
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn defaults_scale_with_the_duration() {
        let config = fuzz_args(&["--seed", "7"]).gen_config().expect("config");
        assert_eq!(config.nodes_per_cluster, 3);
        assert_eq!(config.duration_ms, 20_000);
        assert_eq!(config.writes, 200);
        assert_eq!(config.faults, 6);
        assert_eq!(config.fault_kinds, FaultKind::ALL.to_vec());
        let short = fuzz_args(&["--duration", "4s", "--nodes", "1"])
            .gen_config()
            .expect("config");
        assert_eq!(
            (short.writes, short.faults, short.nodes_per_cluster),
            (40, 2, 1)
        );
    }

    #[test]
    fn the_mode_defaults_to_immediate_and_refuses_unknown_modes() {
        assert_eq!(fuzz_args(&[]).mode.mode(), ApplyMode::Immediate);
        assert_eq!(
            fuzz_args(&["--mode", "validated"]).mode.mode(),
            ApplyMode::Validated
        );
        assert!(
            fuzz_args(&[])
                .reproduce_command(1)
                .expect("command")
                .ends_with("--mode immediate")
        );
        assert!(Cli::try_parse_from(["sim", "fuzz", "--mode", "both"]).is_err());
        let run =
            Cli::try_parse_from(["sim", "run", "x.json", "--mode", "validated"]).expect("parse");
        match run.command {
            SimCommand::Run(args) => assert_eq!(args.mode, ModeArg::Validated),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn fault_kinds_parse_with_dashes_and_reject_unknown_names() {
        let config = fuzz_args(&["--fault-kinds", "kill,clock-skew,Cut"])
            .gen_config()
            .expect("config");
        assert_eq!(
            config.fault_kinds,
            vec![FaultKind::Kill, FaultKind::ClockSkew, FaultKind::Cut]
        );
        let err = fuzz_args(&["--fault-kinds", "meteor"])
            .gen_config()
            .expect_err("unknown kind");
        assert!(
            err.to_string().contains("unknown fault kind \"meteor\""),
            "{err}"
        );
    }

    #[test]
    fn the_reproduce_command_regenerates_the_same_scenario() {
        let args = fuzz_args(&[
            "--seed",
            "100",
            "--runs",
            "5",
            "--duration",
            "7s",
            "--keys",
            "5",
            "--mode",
            "validated",
        ]);
        let command = args.reproduce_command(103).expect("command");
        assert!(command.ends_with(" --mode validated"), "{command}");
        let words: Vec<&str> = command.split_whitespace().collect();
        assert_eq!(&words[..3], ["ldr", "sim", "fuzz"]);
        let again = fuzz_args(&words[3..]);
        assert_eq!(again.seed, Some(103));
        assert_eq!(again.runs, 1);
        assert_eq!(again.mode, ModeArg::Validated, "the mode reproduces too");
        assert_eq!(
            again.gen_config().expect("config"),
            args.gen_config().expect("config")
        );
        assert_eq!(
            Scenario::generate(103, &again.gen_config().expect("config")).expect("generate"),
            Scenario::generate(103, &args.gen_config().expect("config")).expect("generate")
        );
    }
}

//! The driver `ldr sim lincheck` and `ldr sim elle` share: a seeded check of one replicated
//! cluster under the lincheck nemesis, run seed after seed.
//!
//! Run `i` uses seed `S + i` (`S` from `--seed`, or random and printed). Each run prints its
//! fault schedule and the command that reproduces it (every option spelled out), then starts
//! a fresh 3-node cluster of this very binary (or of `LDR_BIN`), hands it to the check, and
//! prints the check's report. A failed run saves its history as JSON under
//! `$TMPDIR/ldr-sim-failures/<check>-seed-S.json`, keeps the cluster's stores and logs, and
//! stops the command with a non-zero exit; `--dry-run` prints the schedules only.
//!
//! A command implements [`SeededCheck`] (its options, its configuration and its check) and
//! calls [`run`]; the options every check takes are [`SeedArgs`], [`FaultArgs`] and
//! [`RunFlags`], flattened into its arguments.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use ldr_sim::lincheck::{Episode, FaultKind};
use ldr_sim::{Cluster, ClusterSpec};
use serde::Serialize;

use crate::sim_cmd::{READY_TIMEOUT, failure_dir, rand_seed};
use crate::workload_cmd::parse_duration;

/// The options every seeded check takes first.
#[derive(Debug, Clone, Args)]
pub struct SeedArgs {
    /// Seed of the first run (run `i` uses `seed + i`); random when absent (and printed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Runs, each on a fresh cluster; stops at the first failure.
    #[arg(long, default_value_t = 1)]
    pub runs: u64,
    /// How long the clients run (`30s`, `1m`, or seconds).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Concurrent clients, each with its own connection.
    #[arg(long, default_value_t = 5)]
    pub clients: usize,
}

/// The nemesis' options.
#[derive(Debug, Clone, Args)]
pub struct FaultArgs {
    /// Fault episodes to attempt (default: one per 5 s of --duration).
    #[arg(long)]
    pub faults: Option<usize>,
    /// Fault kinds, comma separated: kill, pause, partition (default: all three).
    #[arg(long, value_delimiter = ',')]
    pub fault_kinds: Vec<String>,
    /// Nodes the nemesis may hit, comma separated (any: the system range is replicated too).
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 2, 3])]
    pub fault_nodes: Vec<usize>,
}

impl FaultArgs {
    /// Fault episodes to attempt in a run of `duration`.
    pub fn count(&self, duration: Duration) -> usize {
        self.faults
            .unwrap_or_else(|| usize::try_from(duration.as_secs() / 5).unwrap_or(usize::MAX))
    }

    /// The fault kinds asked for (all of them when none are named).
    pub fn kinds(&self) -> Result<Vec<FaultKind>> {
        if self.fault_kinds.is_empty() {
            return Ok(FaultKind::ALL.to_vec());
        }
        self.fault_kinds
            .iter()
            .map(|k| {
                FaultKind::parse(k).with_context(|| {
                    format!("unknown fault kind {k:?} (expected kill, pause or partition)")
                })
            })
            .collect()
    }
}

/// `--faults F --fault-kinds K,… --fault-nodes N,…` of a reproduce command.
pub fn fault_options(faults: usize, kinds: &[FaultKind], nodes: &[usize]) -> String {
    let kinds: Vec<&str> = kinds.iter().map(|k| k.name()).collect();
    let nodes: Vec<String> = nodes.iter().map(|n| n.to_string()).collect();
    format!(
        "--faults {faults} --fault-kinds {} --fault-nodes {}",
        kinds.join(","),
        nodes.join(",")
    )
}

/// The options every seeded check takes last.
#[derive(Debug, Clone, Args)]
pub struct RunFlags {
    /// Print the fault schedules, run nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Keep the cluster's stores and logs even when the run passes.
    #[arg(long)]
    pub keep: bool,
}

/// A check [`run`] drives: its options, the configuration of one seed, and the check itself.
pub(crate) trait SeededCheck {
    /// The sub-command (`ldr sim <NAME>`), also the cluster's name and the failure file's
    /// prefix.
    const NAME: &'static str;
    type Config;
    /// What one run produced; `Display` prints the verdict and its explanation.
    type Report: fmt::Display;
    /// One entry of a run's history, saved as JSON when the run fails.
    type Record: Serialize;

    fn seeds(&self) -> &SeedArgs;
    fn flags(&self) -> &RunFlags;
    /// The workload in the first line, after `3 nodes, ` (e.g. `5 clients on 3 keys for 30.0s`).
    fn workload(&self) -> String;
    /// The configuration of the run with `seed` (pure).
    fn config(&self, seed: u64) -> Result<Self::Config>;
    /// The fault schedule of a configuration (pure).
    fn schedule(config: &Self::Config) -> Vec<Episode>;
    /// The command that runs the schedule of `seed` again (every option spelled out).
    fn reproduce_command(&self, seed: u64) -> Result<String>;
    /// Runs the workload and the check against a started, ready cluster.
    fn check(
        cluster: Arc<Cluster>,
        config: Self::Config,
    ) -> impl Future<Output = ldr_sim::Result<Self::Report>>;
    fn passed(report: &Self::Report) -> bool;
    fn history(report: &Self::Report) -> &[Self::Record];
}

/// Runs `--runs` seeds of `check` (see the module doc); an error names the failed seed.
pub(crate) async fn run<C: SeededCheck>(check: &C) -> Result<()> {
    let seeds = check.seeds();
    let flags = check.flags();
    if seeds.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let first_seed = seeds.seed.unwrap_or_else(rand_seed);
    println!(
        "ldr sim {}: seed {first_seed}, {} run(s) (run i uses seed {first_seed}+i); 3 nodes, {}",
        C::NAME,
        seeds.runs,
        check.workload()
    );
    let started = Instant::now();
    for i in 0..seeds.runs {
        let seed = first_seed.wrapping_add(i);
        let config = check.config(seed)?;
        println!("\n=== run {}/{}: seed {seed} ===", i + 1, seeds.runs);
        let plan = C::schedule(&config);
        println!("fault schedule:");
        if plan.is_empty() {
            println!("  (no faults)");
        }
        for episode in &plan {
            println!("  {episode}");
        }
        let reproduce = check.reproduce_command(seed)?;
        println!("reproduce: {reproduce}");
        if flags.dry_run {
            continue;
        }
        if !execute::<C>(config, seed, flags.keep, &reproduce).await? {
            bail!("seed {seed} failed (run {} of {})", i + 1, seeds.runs);
        }
    }
    if !flags.dry_run {
        print_all_passed(seeds.runs, first_seed, started);
    }
    Ok(())
}

/// The last line of a seeded command whose `runs` runs from `first_seed` all passed (also
/// `ldr sim fuzz`'s).
pub(crate) fn print_all_passed(runs: u64, first_seed: u64, started: Instant) {
    println!(
        "\nall {runs} run(s) passed in {:.1}s (seeds {first_seed}..={})",
        started.elapsed().as_secs_f64(),
        first_seed.wrapping_add(runs - 1)
    );
}

/// One fresh cluster, the workload, the check; `Ok(false)` when the check failed (reported
/// on stdout).
async fn execute<C: SeededCheck>(
    config: C::Config,
    seed: u64,
    keep: bool,
    reproduce: &str,
) -> Result<bool> {
    // The nodes run this binary, or `LDR_BIN` (to check another build with this harness).
    let binary = match std::env::var_os("LDR_BIN") {
        Some(path) => PathBuf::from(path),
        None => std::env::current_exe().context("cannot find the ldr binary")?,
    };
    let started = Instant::now();
    let spec = ClusterSpec::with_binary(C::NAME, 3, binary).ready_timeout(READY_TIMEOUT);
    let cluster = Arc::new(Cluster::start(spec).await?);
    println!(
        "cluster ready in {:.1}s; running the workload",
        started.elapsed().as_secs_f64()
    );
    let report = C::check(cluster.clone(), config).await?;
    print!("{report}");
    let passed = C::passed(&report);
    if !passed {
        let path = save_history(C::NAME, seed, C::history(&report))?;
        println!("history saved to {}", path.display());
        println!("reproduce: {reproduce}");
    }
    if keep || !passed {
        let mut cluster = Arc::try_unwrap(cluster)
            .map_err(|_| anyhow::anyhow!("the cluster is still shared after the run"))?;
        println!(
            "cluster files (stores, node logs) kept in {}",
            cluster.keep_files().display()
        );
    }
    Ok(passed)
}

/// Writes the history of a failed run to `$TMPDIR/ldr-sim-failures/<name>-seed-S.json`.
fn save_history(name: &str, seed: u64, history: &[impl Serialize]) -> Result<PathBuf> {
    let path = failure_dir().join(format!("{name}-seed-{seed}.json"));
    let json = serde_json::to_string_pretty(history).context("encoding the history")?;
    std::fs::write(&path, json).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Helpers for the commands' tests.
#[cfg(test)]
pub(crate) mod testing {
    use clap::Parser;

    use super::SeededCheck;
    use crate::sim_cmd::SimCommand;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        command: SimCommand,
    }

    /// `ldr sim <args>` parsed.
    pub(crate) fn parse_sim(args: &[&str]) -> SimCommand {
        Cli::try_parse_from(["sim"].iter().chain(args))
            .expect("parse")
            .command
    }

    /// The reproduce command of `seed`, parsed again by `reparse`, gives the same schedule
    /// and the same command.
    pub(crate) fn assert_reproduce_round_trips<C: SeededCheck>(
        args: &C,
        seed: u64,
        reparse: impl Fn(&[&str]) -> C,
    ) {
        let command = args.reproduce_command(seed).expect("command");
        let words: Vec<&str> = command.split_whitespace().collect();
        assert_eq!(&words[..3], ["ldr", "sim", C::NAME]);
        let again = reparse(&words[3..]);
        assert_eq!(
            C::schedule(&again.config(seed).expect("config")),
            C::schedule(&args.config(seed).expect("config"))
        );
        assert_eq!(again.reproduce_command(seed).expect("command"), command);
    }
}

#[cfg(test)]
mod tests {
    use super::testing::parse_sim;
    use super::*;
    use crate::sim_cmd::SimCommand;

    fn fault_args(args: &[&str]) -> FaultArgs {
        match parse_sim(&[&["lincheck"][..], args].concat()) {
            SimCommand::Lincheck(args) => args.faults,
            _ => panic!("not parsed as lincheck"),
        }
    }

    #[test]
    fn fault_options_default_and_spell_out() {
        let args = fault_args(&[]);
        assert_eq!(args.count(Duration::from_secs(20)), 4);
        assert_eq!(args.kinds().expect("kinds"), FaultKind::ALL.to_vec());
        assert_eq!(
            fault_options(4, &FaultKind::ALL, &args.fault_nodes),
            "--faults 4 --fault-kinds kill,pause,partition --fault-nodes 1,2,3"
        );
        let args = fault_args(&["--faults", "2", "--fault-kinds", "pause"]);
        assert_eq!(args.count(Duration::from_secs(20)), 2);
        assert_eq!(args.kinds().expect("kinds"), vec![FaultKind::Pause]);
    }

    #[test]
    fn unknown_fault_kinds_are_refused() {
        let err = fault_args(&["--fault-kinds", "kill,meteor"])
            .kinds()
            .expect_err("meteor");
        assert!(err.to_string().contains("meteor"), "{err}");
    }
}

//! `ldr sim elle --seed S --duration 30s`: the transactional anomaly check of
//! `ldr_sim::elle` (Elle's list-append analysis) on the command line.
//!
//! Each run starts a fresh 3-node cluster of this very binary (or of `LDR_BIN`), makes the
//! table's ranges Raft groups on all three nodes, runs seeded clients (explicit transactions
//! of appends and reads over a few keys in different ranges) while a seeded nemesis kills,
//! pauses and partitions nodes, then looks for G0, G1a/b/c, G-single, G2 and the other
//! list-append anomalies. It prints the fault schedule, the command that reproduces it, the
//! transaction counts and the verdict; an anomaly prints its explanation edge by edge,
//! saves the history as JSON and keeps the cluster's stores and logs, and makes the command
//! exit non-zero.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use ldr_sim::elle::{self, ElleConfig};
use ldr_sim::lincheck::FaultKind;
use ldr_sim::{Cluster, ClusterSpec};

use crate::sim_cmd::{READY_TIMEOUT, failure_dir, rand_seed};
use crate::workload_cmd::parse_duration;

#[derive(Debug, Clone, Args)]
pub struct ElleArgs {
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
    /// Keys (lists), spread over the table's ranges by hash.
    #[arg(long, default_value_t = 6)]
    pub keys: usize,
    /// Most micro-operations (appends and reads) in one transaction.
    #[arg(long, default_value_t = 4)]
    pub ops_max: usize,
    /// Percentage of reads among micro-operations (the rest are appends).
    #[arg(long, default_value_t = 50)]
    pub read_percent: u8,
    /// Fault episodes to attempt (default: one per 5 s of --duration).
    #[arg(long)]
    pub faults: Option<usize>,
    /// Fault kinds, comma separated: kill, pause, partition (default: all three).
    #[arg(long, value_delimiter = ',')]
    pub fault_kinds: Vec<String>,
    /// Nodes the nemesis may hit, comma separated.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 2, 3])]
    pub fault_nodes: Vec<usize>,
    /// Client deadline of one statement, after which a COMMIT's outcome is unknown.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub op_timeout: Duration,
    /// Also add realtime edges (strict serializability: `-realtime` anomalies fail too).
    #[arg(long)]
    pub realtime: bool,
    /// Print the fault schedules, run nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Keep the cluster's stores and logs even when the run passes.
    #[arg(long)]
    pub keep: bool,
}

impl ElleArgs {
    /// The configuration of the run with `seed` (pure).
    pub fn config(&self, seed: u64) -> Result<ElleConfig> {
        let fault_kinds = if self.fault_kinds.is_empty() {
            FaultKind::ALL.to_vec()
        } else {
            self.fault_kinds
                .iter()
                .map(|k| {
                    FaultKind::parse(k).with_context(|| {
                        format!("unknown fault kind {k:?} (expected kill, pause or partition)")
                    })
                })
                .collect::<Result<Vec<_>>>()?
        };
        let mut config = ElleConfig::new(seed);
        config.duration = self.duration;
        config.clients = self.clients;
        config.keys = self.keys;
        config.ops_max = self.ops_max;
        config.read_percent = self.read_percent;
        config.faults = self
            .faults
            .unwrap_or_else(|| usize::try_from(self.duration.as_secs() / 5).unwrap_or(usize::MAX));
        config.fault_kinds = fault_kinds;
        config.fault_nodes = self.fault_nodes.clone();
        config.op_timeout = self.op_timeout;
        config.check.realtime = self.realtime;
        Ok(config)
    }

    /// The command that runs the schedule of `seed` again (every option spelled out).
    pub fn reproduce_command(&self, seed: u64) -> Result<String> {
        let c = self.config(seed)?;
        let kinds: Vec<&str> = c.fault_kinds.iter().map(|k| k.name()).collect();
        let nodes: Vec<String> = c.fault_nodes.iter().map(|n| n.to_string()).collect();
        Ok(format!(
            "ldr sim elle --seed {seed} --duration {}ms --clients {} --keys {} --ops-max {} --read-percent {} --faults {} --fault-kinds {} --fault-nodes {} --op-timeout {}ms{}",
            c.duration.as_millis(),
            c.clients,
            c.keys,
            c.ops_max,
            c.read_percent,
            c.faults,
            kinds.join(","),
            nodes.join(","),
            c.op_timeout.as_millis(),
            if c.check.realtime { " --realtime" } else { "" }
        ))
    }
}

pub async fn run(args: &ElleArgs) -> Result<()> {
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let first_seed = args.seed.unwrap_or_else(rand_seed);
    println!(
        "ldr sim elle: seed {first_seed}, {} run(s) (run i uses seed {first_seed}+i); 3 nodes, {} clients, transactions of up to {} appends/reads on {} keys for {:.1}s",
        args.runs,
        args.clients,
        args.ops_max,
        args.keys,
        args.duration.as_secs_f64()
    );
    let started = Instant::now();
    for i in 0..args.runs {
        let seed = first_seed.wrapping_add(i);
        let config = args.config(seed)?;
        println!("\n=== run {}/{}: seed {seed} ===", i + 1, args.runs);
        let plan = config.schedule();
        println!("fault schedule:");
        if plan.is_empty() {
            println!("  (no faults)");
        }
        for episode in &plan {
            println!("  {episode}");
        }
        let reproduce = args.reproduce_command(seed)?;
        println!("reproduce: {reproduce}");
        if args.dry_run {
            continue;
        }
        if !execute(config, args.keep, &reproduce).await? {
            bail!("seed {seed} failed (run {} of {})", i + 1, args.runs);
        }
    }
    if !args.dry_run {
        println!(
            "\nall {} run(s) passed in {:.1}s (seeds {first_seed}..={})",
            args.runs,
            started.elapsed().as_secs_f64(),
            first_seed.wrapping_add(args.runs - 1)
        );
    }
    Ok(())
}

/// One fresh cluster, the workload, the check; `Ok(false)` when an anomaly was found
/// (reported on stdout).
async fn execute(config: ElleConfig, keep: bool, reproduce: &str) -> Result<bool> {
    // The nodes run this binary, or `LDR_BIN` (to check another build with this harness).
    let binary = match std::env::var_os("LDR_BIN") {
        Some(path) => PathBuf::from(path),
        None => std::env::current_exe().context("cannot find the ldr binary")?,
    };
    let seed = config.seed;
    let started = Instant::now();
    let spec = ClusterSpec::with_binary("elle", 3, binary).ready_timeout(READY_TIMEOUT);
    let cluster = Arc::new(Cluster::start(spec).await?);
    println!(
        "cluster ready in {:.1}s; running the workload",
        started.elapsed().as_secs_f64()
    );
    let report = elle::run(cluster.clone(), config).await?;
    print!("{report}");
    let passed = report.passed();
    if !passed {
        let path = save_history(seed, &report.history)?;
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

/// Writes the history of a failed run to `$TMPDIR/ldr-sim-failures/elle-seed-S.json`.
fn save_history(seed: u64, history: &[elle::Txn]) -> Result<PathBuf> {
    let path = failure_dir().join(format!("elle-seed-{seed}.json"));
    let json = serde_json::to_string_pretty(history).context("encoding the history")?;
    std::fs::write(&path, json).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::sim_cmd::SimCommand;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        command: SimCommand,
    }

    fn elle_args(args: &[&str]) -> ElleArgs {
        let cli = Cli::try_parse_from(["sim", "elle"].iter().chain(args)).expect("parse");
        match cli.command {
            SimCommand::Elle(args) => args,
            _ => panic!("not parsed as elle"),
        }
    }

    #[test]
    fn defaults_and_the_reproduce_command_round_trip() {
        let args = elle_args(&["--seed", "9", "--duration", "20s", "--realtime"]);
        let config = args.config(9).expect("config");
        assert_eq!(config.faults, 4);
        assert_eq!(config.keys, 6);
        assert!(config.check.realtime);
        assert_eq!(config.fault_kinds, FaultKind::ALL.to_vec());
        let command = args.reproduce_command(9).expect("command");
        let words: Vec<&str> = command.split_whitespace().collect();
        assert_eq!(&words[..3], ["ldr", "sim", "elle"]);
        let again = elle_args(&words[3..]);
        assert_eq!(
            again.config(9).expect("config").schedule(),
            config.schedule()
        );
        assert_eq!(again.reproduce_command(9).expect("command"), command);
    }

    #[test]
    fn unknown_fault_kinds_are_refused() {
        let err = elle_args(&["--fault-kinds", "kill,meteor"])
            .config(1)
            .expect_err("meteor");
        assert!(err.to_string().contains("meteor"), "{err}");
    }
}

//! `ldr sim lincheck --seed S --duration 30s`: the linearizability check of
//! `ldr_sim::lincheck` on the command line.
//!
//! Each run starts a fresh 3-node cluster of this very binary (or of `LDR_BIN`), makes the table's ranges
//! Raft groups on all three nodes, runs seeded clients (reads, writes, compare-and-sets on a
//! few keys) while a seeded nemesis kills, pauses and partitions nodes, then checks the history key by
//! key. It prints the fault schedule, the command that reproduces it, per-key counts and the
//! verdict; a violation prints the key's shrunk history, saves the whole history as JSON
//! and keeps the cluster's stores and logs. A violation or an inconclusive check makes the
//! command exit non-zero.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use clap::Args;
use ldr_sim::Cluster;
use ldr_sim::lincheck::{self, Episode, LincheckConfig, LincheckReport};

use crate::seeded_check::{FaultArgs, RunFlags, SeedArgs, SeededCheck, fault_options};
use crate::workload_cmd::parse_duration;

#[derive(Debug, Clone, Args)]
pub struct LincheckArgs {
    #[command(flatten)]
    pub seeds: SeedArgs,
    /// Keys (independent registers).
    #[arg(long, default_value_t = 3)]
    pub keys: usize,
    #[command(flatten)]
    pub faults: FaultArgs,
    /// Percentage of reads.
    #[arg(long, default_value_t = 40)]
    pub read_percent: u8,
    /// Percentage of writes (the rest are compare-and-sets).
    #[arg(long, default_value_t = 30)]
    pub write_percent: u8,
    /// Client deadline of one operation, after which its outcome is unknown.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub op_timeout: Duration,
    /// Time the checker may spend on one run's history.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub check_budget: Duration,
    #[command(flatten)]
    pub flags: RunFlags,
}

impl SeededCheck for LincheckArgs {
    const NAME: &'static str = "lincheck";
    type Config = LincheckConfig;
    type Report = LincheckReport;
    type Record = lincheck::Operation;

    fn seeds(&self) -> &SeedArgs {
        &self.seeds
    }

    fn flags(&self) -> &RunFlags {
        &self.flags
    }

    fn workload(&self) -> String {
        format!(
            "{} clients on {} keys for {:.1}s",
            self.seeds.clients,
            self.keys,
            self.seeds.duration.as_secs_f64()
        )
    }

    fn config(&self, seed: u64) -> Result<LincheckConfig> {
        let mut config = LincheckConfig::new(seed);
        config.duration = self.seeds.duration;
        config.clients = self.seeds.clients;
        config.keys = self.keys;
        config.faults = self.faults.count(self.seeds.duration);
        config.fault_kinds = self.faults.kinds()?;
        config.fault_nodes = self.faults.fault_nodes.clone();
        config.read_percent = self.read_percent;
        config.write_percent = self.write_percent;
        config.op_timeout = self.op_timeout;
        config.check.time_budget = self.check_budget;
        Ok(config)
    }

    fn schedule(config: &LincheckConfig) -> Vec<Episode> {
        Episode::schedule(config)
    }

    fn reproduce_command(&self, seed: u64) -> Result<String> {
        let c = self.config(seed)?;
        Ok(format!(
            "ldr sim lincheck --seed {seed} --duration {}ms --clients {} --keys {} {} --read-percent {} --write-percent {} --op-timeout {}ms",
            c.duration.as_millis(),
            c.clients,
            c.keys,
            fault_options(c.faults, &c.fault_kinds, &c.fault_nodes),
            c.read_percent,
            c.write_percent,
            c.op_timeout.as_millis()
        ))
    }

    async fn check(
        cluster: Arc<Cluster>,
        config: LincheckConfig,
    ) -> ldr_sim::Result<LincheckReport> {
        lincheck::run(cluster, config).await
    }

    fn passed(report: &LincheckReport) -> bool {
        report.passed()
    }

    fn history(report: &LincheckReport) -> &[lincheck::Operation] {
        &report.history
    }
}

#[cfg(test)]
mod tests {
    use ldr_sim::lincheck::FaultKind;

    use super::*;
    use crate::seeded_check::testing::{assert_reproduce_round_trips, parse_sim};
    use crate::sim_cmd::SimCommand;

    fn lincheck_args(args: &[&str]) -> LincheckArgs {
        match parse_sim(&[&["lincheck"][..], args].concat()) {
            SimCommand::Lincheck(args) => args,
            _ => panic!("not parsed as lincheck"),
        }
    }

    #[test]
    fn defaults_and_the_reproduce_command_round_trip() {
        let args = lincheck_args(&["--seed", "9", "--duration", "20s"]);
        let config = args.config(9).expect("config");
        assert_eq!(config.faults, 4);
        assert_eq!(config.fault_nodes, vec![1, 2, 3]);
        assert_eq!(config.fault_kinds, FaultKind::ALL.to_vec());
        assert_reproduce_round_trips(&args, 9, lincheck_args);
    }
}

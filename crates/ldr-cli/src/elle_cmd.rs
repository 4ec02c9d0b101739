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

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use clap::Args;
use ldr_sim::Cluster;
use ldr_sim::elle::{self, ElleConfig, ElleReport};
use ldr_sim::lincheck::Episode;

use crate::seeded_check::{FaultArgs, RunFlags, SeedArgs, SeededCheck, fault_options};
use crate::workload_cmd::parse_duration;

#[derive(Debug, Clone, Args)]
pub struct ElleArgs {
    #[command(flatten)]
    pub seeds: SeedArgs,
    /// Keys (lists), spread over the table's ranges by hash.
    #[arg(long, default_value_t = 6)]
    pub keys: usize,
    /// Most micro-operations (appends and reads) in one transaction.
    #[arg(long, default_value_t = 4)]
    pub ops_max: usize,
    /// Percentage of reads among micro-operations (the rest are appends).
    #[arg(long, default_value_t = 50)]
    pub read_percent: u8,
    #[command(flatten)]
    pub faults: FaultArgs,
    /// Client deadline of one statement, after which a COMMIT's outcome is unknown.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub op_timeout: Duration,
    /// Also add realtime edges (strict serializability: `-realtime` anomalies fail too).
    #[arg(long)]
    pub realtime: bool,
    #[command(flatten)]
    pub flags: RunFlags,
}

impl SeededCheck for ElleArgs {
    const NAME: &'static str = "elle";
    type Config = ElleConfig;
    type Report = ElleReport;
    type Record = elle::Txn;

    fn seeds(&self) -> &SeedArgs {
        &self.seeds
    }

    fn flags(&self) -> &RunFlags {
        &self.flags
    }

    fn workload(&self) -> String {
        format!(
            "{} clients, transactions of up to {} appends/reads on {} keys for {:.1}s",
            self.seeds.clients,
            self.ops_max,
            self.keys,
            self.seeds.duration.as_secs_f64()
        )
    }

    fn config(&self, seed: u64) -> Result<ElleConfig> {
        let mut config = ElleConfig::new(seed);
        config.duration = self.seeds.duration;
        config.clients = self.seeds.clients;
        config.keys = self.keys;
        config.ops_max = self.ops_max;
        config.read_percent = self.read_percent;
        config.faults = self.faults.count(self.seeds.duration);
        config.fault_kinds = self.faults.kinds()?;
        config.fault_nodes = self.faults.fault_nodes.clone();
        config.op_timeout = self.op_timeout;
        config.check.realtime = self.realtime;
        Ok(config)
    }

    fn schedule(config: &ElleConfig) -> Vec<Episode> {
        config.schedule()
    }

    fn reproduce_command(&self, seed: u64) -> Result<String> {
        let c = self.config(seed)?;
        Ok(format!(
            "ldr sim elle --seed {seed} --duration {}ms --clients {} --keys {} --ops-max {} --read-percent {} {} --op-timeout {}ms{}",
            c.duration.as_millis(),
            c.clients,
            c.keys,
            c.ops_max,
            c.read_percent,
            fault_options(c.faults, &c.fault_kinds, &c.fault_nodes),
            c.op_timeout.as_millis(),
            if c.check.realtime { " --realtime" } else { "" }
        ))
    }

    async fn check(cluster: Arc<Cluster>, config: ElleConfig) -> ldr_sim::Result<ElleReport> {
        elle::run(cluster, config).await
    }

    fn passed(report: &ElleReport) -> bool {
        report.passed()
    }

    fn history(report: &ElleReport) -> &[elle::Txn] {
        &report.history
    }
}

#[cfg(test)]
mod tests {
    use ldr_sim::lincheck::FaultKind;

    use super::*;
    use crate::seeded_check::testing::{assert_reproduce_round_trips, parse_sim};
    use crate::sim_cmd::SimCommand;

    fn elle_args(args: &[&str]) -> ElleArgs {
        match parse_sim(&[&["elle"][..], args].concat()) {
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
        assert_reproduce_round_trips(&args, 9, elle_args);
    }
}

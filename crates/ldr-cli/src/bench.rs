//! `ldr bench`: the load benchmark (ldr vs PostgreSQL logical replication vs raw RocksDB on
//! this machine, in one run). Parses the command line into `ldr_sim::bench::BenchOptions`,
//! runs it with this very binary as the `ldr` of every node, prints the table and exits
//! non-zero when a phase failed or the conflict phase did not converge. Ctrl-C stops the run
//! early; the report written so far is still saved.
//!
//! Contract (scripts and CI rely on it): `ldr bench [--nodes=N] [--rows=N]
//! [--duration=SECONDS] [--steady-rate=R[,R...]] [--out=DIR] [--skip-postgres]
//! [--raft-log-sync=on|off] [--replicas=N] [--mode=immediate|validated|both]
//! [--secure=off|on|both]`; the JSON report's keys are listed in `docs/benchmarks.md`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::{Args, ValueEnum};
use ldr_sim::bench::{self, ApplyMode, BenchOptions};
use ldr_sim::workload::CancellationToken;

use crate::workload_cmd::parse_duration;

/// `--raft-log-sync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SyncMode {
    On,
    Off,
}

/// `--secure`: which cluster security to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SecureMode {
    Off,
    On,
    Both,
}

impl SecureMode {
    /// The security of each run, insecure first.
    pub fn security(self) -> Vec<bool> {
        match self {
            SecureMode::Off => vec![false],
            SecureMode::On => vec![true],
            SecureMode::Both => vec![false, true],
        }
    }
}

/// `--mode`: which LDR apply modes to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BenchMode {
    /// Streams apply rows straight to KV (the default mode of a stream).
    Immediate,
    /// Streams are created `WITH mode = 'validated'`: each row through the SQL write path.
    Validated,
    /// Immediate, then validated, each on fresh clusters; validated reported as ratios.
    Both,
}

impl BenchMode {
    /// The modes to run, in order.
    pub fn modes(self) -> Vec<ApplyMode> {
        match self {
            BenchMode::Immediate => vec![ApplyMode::Immediate],
            BenchMode::Validated => vec![ApplyMode::Validated],
            BenchMode::Both => ApplyMode::ALL.to_vec(),
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Nodes per cluster (1 = the head-to-head with PostgreSQL: one process per side).
    #[arg(long, default_value_t = 1)]
    pub nodes: usize,
    /// Rows loaded for catch-up (~100 bytes each, 100 per statement); also the steady key space.
    #[arg(long, default_value_t = 1_000_000)]
    pub rows: u64,
    /// Seconds of each steady rate (and of the conflict phase).
    #[arg(long, default_value = "30", value_parser = parse_duration)]
    pub duration: Duration,
    /// Offered rows per second of the steady phase; several give a curve.
    #[arg(long = "steady-rate", value_delimiter = ',', default_value = "20000")]
    pub steady_rate: Vec<u64>,
    /// Directory of the JSON report and the SVG plot.
    #[arg(long, default_value = "bench/results")]
    pub out: PathBuf,
    /// Do not run the PostgreSQL peer.
    #[arg(long)]
    pub skip_postgres: bool,
    /// Durability of both systems. `on`: ldr fsyncs its Raft log before acknowledging a
    /// replicated write (kv.raft_log.disable_synchronization_unsafe = false) and PostgreSQL
    /// runs with fsync = on; `off`: neither syncs (the setting = true, fsync = off). `on`
    /// needs replicated ranges (2 or more nodes).
    #[arg(long = "raft-log-sync", value_enum, default_value = "off")]
    pub raft_log_sync: SyncMode,
    /// Voters per range (ALTER RANGE default CONFIGURE ZONE USING num_replicas, before the
    /// tables exist); default: 3, capped by --nodes. `--nodes=3 --replicas=1` measures the
    /// same topology without replication.
    #[arg(long)]
    pub replicas: Option<usize>,
    /// LDR apply mode of the streams: `immediate` (KV writes, the default), `validated`
    /// (WITH mode = 'validated': the SQL write path, constraints enforced), or `both` (the
    /// ldr phases once per mode, on fresh clusters, validated reported as ratios against
    /// immediate and PostgreSQL).
    #[arg(long, value_enum, default_value = "immediate")]
    pub mode: BenchMode,
    /// Cluster security of the ldr phases: `off` (insecure, the default), `on` (secure
    /// clusters: certificates, TLS for SQL and between nodes, the stream over verify-full TLS
    /// with a password) or `both` (every mode once insecure, then once secure, on fresh
    /// clusters: `<mode>+tls` against `<mode>` is the cost of TLS).
    #[arg(long, value_enum, default_value = "off")]
    pub secure: SecureMode,
    /// Do not run ldr (measures only PostgreSQL and RocksDB; for testing the harness).
    #[arg(long, hide = true)]
    pub skip_ldr: bool,
    /// Rows per statement in the steady phase.
    #[arg(long, default_value_t = 10)]
    pub steady_batch: usize,
    /// Connections of the load and steady workloads.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Key space of the bidirectional conflict phase.
    #[arg(long, default_value_t = 100)]
    pub conflict_keys: u64,
    /// Rows per second written on each cluster in the conflict phase.
    #[arg(long, default_value_t = 1000)]
    pub conflict_rate: u64,
    /// Keys of the raw RocksDB phases (default: --rows, within 20k..2M).
    #[arg(long)]
    pub rocksdb_keys: Option<u64>,
    /// Seed of the workloads (default: random, or $SEED).
    #[arg(long)]
    pub seed: Option<u64>,
    /// No progress bars (the table is still printed).
    #[arg(long)]
    pub quiet: bool,
    /// Run nothing: print the table of an earlier JSON report and redraw its SVG plot.
    #[arg(long, value_name = "REPORT.json")]
    pub from_json: Option<PathBuf>,
}

/// `--from-json`: the table and a fresh plot from a saved report.
fn replot(path: &std::path::Path) -> Result<()> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
    let report: bench::BenchReport = serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{} is not a bench report: {e}", path.display()))?;
    let svg = path.with_extension("svg");
    std::fs::write(&svg, bench::render_svg(&report))
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", svg.display()))?;
    print!("{}", bench::render_table(&report));
    println!("plot redrawn: {}", svg.display());
    Ok(())
}

pub async fn run(args: BenchArgs) -> Result<()> {
    if let Some(path) = &args.from_json {
        return replot(path);
    }
    let filter = tracing_subscriber::EnvFilter::try_from_env("LDR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr)
        .try_init();
    let cancel = CancellationToken::new();
    {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!(
                    "interrupted: stopping the benchmark and writing what was measured (Ctrl-C again to kill)"
                );
                cancel.cancel();
                if tokio::signal::ctrl_c().await.is_ok() {
                    std::process::exit(130);
                }
            }
        });
    }
    let mut options = BenchOptions {
        nodes: args.nodes,
        rows: args.rows,
        duration: args.duration,
        steady_rates: args.steady_rate.clone(),
        out_dir: args.out.clone(),
        skip_postgres: args.skip_postgres,
        skip_ldr: args.skip_ldr,
        ldr_binary: Some(std::env::current_exe()?),
        steady_batch: args.steady_batch,
        concurrency: args.concurrency,
        conflict_keys: args.conflict_keys,
        conflict_rate: args.conflict_rate,
        rocksdb_keys: args.rocksdb_keys,
        quiet: args.quiet,
        command: std::env::args().collect::<Vec<_>>().join(" "),
        cancel,
        raft_log_sync: args.raft_log_sync == SyncMode::On,
        replicas: args.replicas,
        modes: args.mode.modes(),
        security: args.secure.security(),
        ..BenchOptions::default()
    };
    if let Some(seed) = args.seed {
        options.seed = seed;
    }
    let outcome = bench::run(options).await?;
    println!();
    print!("{}", bench::render_table(&outcome.report));
    if !outcome.report.ok() {
        bail!(
            "the benchmark failed: {}",
            outcome.report.failures.join("; ")
        );
    }
    Ok(())
}

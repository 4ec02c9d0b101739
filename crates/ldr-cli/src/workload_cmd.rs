//! `ldr workload init|run|check`: a thin CLI over `ldr_sim::workload` (`kv`, `bank`), like
//! `cockroach workload`. It works against any PostgreSQL-wire server (ldr or PostgreSQL):
//! `init` creates the table (and the bank's accounts), `run` drives the load with a line per
//! second and a final summary, bounded by `--duration` and/or `--max-ops`, and stops cleanly
//! on Ctrl-C; `check bank` verifies that the total balance is intact.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use ldr_sim::workload::bank::{self, BankConfig};
use ldr_sim::workload::kv::{self, KvConfig};
use ldr_sim::workload::{CancellationToken, LoadOptions, Progress, WorkloadSummary};

/// Which workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    /// Upserts and reads over a key space (`kv (k INT8 PRIMARY KEY, v TEXT)`).
    Kv,
    /// Transfers between accounts that keep the total balance.
    Bank,
}

/// Workloads that have a checker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CheckKind {
    Bank,
}

#[derive(Debug, Subcommand)]
pub enum WorkloadCommand {
    /// Create the workload's table (the bank's accounts too).
    Init {
        kind: Kind,
        /// A postgresql:// URL of any node.
        #[arg(long)]
        url: String,
        #[command(flatten)]
        shape: Shape,
    },
    /// Run the workload.
    Run(RunArgs),
    /// Verify a workload's invariant (bank: every account present, total intact).
    Check {
        kind: CheckKind,
        #[arg(long)]
        url: String,
        #[command(flatten)]
        shape: Shape,
    },
}

/// The table's shape (must match between init, run and check).
#[derive(Debug, Clone, Args)]
pub struct Shape {
    /// Table name (default: `kv` or `bank`).
    #[arg(long)]
    pub table: Option<String>,
    /// bank: number of accounts.
    #[arg(long, default_value_t = 100)]
    pub accounts: u64,
    /// bank: starting balance of every account.
    #[arg(long, default_value_t = 1000)]
    pub initial_balance: i64,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    pub kind: Kind,
    /// postgresql:// URLs, comma separated; connections are spread over them.
    #[arg(long, value_delimiter = ',', required = true)]
    pub url: Vec<String>,
    /// Concurrent connections.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Stop after this long (`30s`, `2m`, or seconds). Default 30s unless --max-ops is given.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Operations per second over all connections.
    #[arg(long)]
    pub max_rate: Option<f64>,
    /// Stop after this many operations.
    #[arg(long)]
    pub max_ops: Option<u64>,
    /// kv: size of the key space (few keys on both clusters = many conflicts).
    #[arg(long, default_value_t = 1000)]
    pub keys: u64,
    /// kv: bytes per value.
    #[arg(long, default_value_t = 100)]
    pub value_bytes: usize,
    /// kv: rows per statement.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// kv: percentage of operations that are reads.
    #[arg(long, default_value_t = 0)]
    pub read_percent: u8,
    /// Seed of the operation stream (default: random, or $SEED).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Exit successfully even when some operations failed.
    #[arg(long)]
    pub tolerate_errors: bool,
    /// Print the final summary as JSON as well.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub shape: Shape,
}

/// `30` (seconds), or a humantime duration such as `30s`, `1m30s`, `500ms`.
pub fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<f64>() {
        if seconds.is_finite() && seconds > 0.0 {
            return Ok(Duration::from_secs_f64(seconds));
        }
        return Err(format!("duration must be positive, got {text}"));
    }
    humantime::parse_duration(text).map_err(|e| format!("bad duration {text:?}: {e}"))
}

fn kv_config(args: &RunArgs) -> KvConfig {
    KvConfig {
        table: args.shape.table.clone().unwrap_or_else(|| "kv".into()),
        keys: args.keys,
        batch: args.batch,
        value_bytes: args.value_bytes,
        read_percent: args.read_percent,
        ..KvConfig::default()
    }
}

fn bank_config(shape: &Shape) -> BankConfig {
    BankConfig {
        table: shape.table.clone().unwrap_or_else(|| "bank".into()),
        accounts: shape.accounts,
        initial_balance: shape.initial_balance,
        ..BankConfig::default()
    }
}

/// A token cancelled by the first Ctrl-C (a second one kills the process as usual).
fn ctrl_c_token() -> CancellationToken {
    let token = CancellationToken::new();
    let child = token.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("interrupted: stopping the workload (Ctrl-C again to kill)");
            child.cancel();
            // Restore the default: a second Ctrl-C ends the process at once.
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(130);
            }
        }
    });
    token
}

async fn connect(url: &str) -> Result<tokio_postgres::Client> {
    ldr_sim::sql::connect(url, ldr_sim::sql::CONNECT_TIMEOUT)
        .await
        .with_context(|| format!("connecting to {url}"))
}

pub async fn run(command: WorkloadCommand) -> Result<()> {
    match command {
        WorkloadCommand::Init { kind, url, shape } => {
            let client = connect(&url).await?;
            match kind {
                Kind::Kv => {
                    let config = KvConfig {
                        table: shape.table.clone().unwrap_or_else(|| "kv".into()),
                        ..KvConfig::default()
                    };
                    kv::init(&client, &config).await?;
                    println!("created table {}", config.table);
                }
                Kind::Bank => {
                    let config = bank_config(&shape);
                    bank::init(&client, &config).await?;
                    println!(
                        "created table {} with {} accounts of {} (total {})",
                        config.table,
                        config.accounts,
                        config.initial_balance,
                        config.expected_total()
                    );
                }
            }
            Ok(())
        }
        WorkloadCommand::Check {
            kind: CheckKind::Bank,
            url,
            shape,
        } => {
            let client = connect(&url).await?;
            let result = bank::check(&client, &bank_config(&shape)).await;
            match result {
                Ok(check) => {
                    println!("{check}");
                    Ok(())
                }
                Err(ldr_sim::SimError::Invariant(report)) => bail!("{report}"),
                Err(e) => Err(e.into()),
            }
        }
        WorkloadCommand::Run(args) => run_load(args).await,
    }
}

async fn run_load(args: RunArgs) -> Result<()> {
    let duration = match (args.duration, args.max_ops) {
        (Some(d), _) => Some(d),
        (None, Some(_)) => None,
        (None, None) => Some(Duration::from_secs(30)),
    };
    let mut options = LoadOptions::new(args.url.clone())
        .concurrency(args.concurrency)
        .progress(Progress::Stdout)
        .cancel(ctrl_c_token());
    options.duration = duration;
    options.max_ops = args.max_ops;
    options.max_rate = args.max_rate;
    if let Some(seed) = args.seed {
        options.seed = seed;
    }
    println!(
        "{:?} workload on {} ({} connections, seed {}){}{}",
        args.kind,
        args.url.join(","),
        args.concurrency,
        options.seed,
        duration
            .map(|d| format!(", for {}", humantime::format_duration(d)))
            .unwrap_or_default(),
        args.max_ops
            .map(|n| format!(", at most {n} ops"))
            .unwrap_or_default()
    );
    let summary: WorkloadSummary = match args.kind {
        Kind::Kv => kv::run(&kv_config(&args), &options).await?.summary,
        Kind::Bank => bank::run(&bank_config(&args.shape), &options).await?,
    };
    println!("{summary}");
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    }
    if summary.errors > 0 && !args.tolerate_errors {
        bail!(
            "{} operations failed ({:?}); pass --tolerate-errors to accept that",
            summary.errors,
            summary.errors_by_kind
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_accept_seconds_and_units() {
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("0.5"), Ok(Duration::from_millis(500)));
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("soon").is_err());
    }
}

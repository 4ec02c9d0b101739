//! The `ldr` binary: run nodes, initialize clusters, open a SQL shell, and drive the testbed.

mod bench;
mod demo;
mod lincheck_cmd;
mod node_cmd;
mod sim_cmd;
mod sql;
mod start;
mod workload_cmd;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "ldr",
    version,
    about = "Multi-cluster logical data replication engine and testbed"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a node.
    Start(start::StartArgs),
    /// Initialize a new cluster through one of its nodes (once per cluster).
    Init {
        #[arg(long)]
        insecure: bool,
        /// HOST:PORT of the node to make node 1.
        #[arg(long)]
        host: String,
    },
    /// Two local clusters with bidirectional LDR and a light load; psql into either side.
    Demo(demo::DemoArgs),
    /// Node commands.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Load generators (kv, bank) against any PostgreSQL-wire server.
    #[command(subcommand)]
    Workload(workload_cmd::WorkloadCommand),
    /// Load benchmark: ldr vs PostgreSQL logical replication vs raw RocksDB on this machine.
    Bench(bench::BenchArgs),
    /// Conflict fuzzing: seeded scenarios (writes and faults) on two clusters with
    /// bidirectional LDR, checked for convergence and last-write-wins; and a
    /// linearizability check of replicated ranges (`sim lincheck`).
    #[command(subcommand)]
    Sim(sim_cmd::SimCommand),
    /// Open a SQL shell (or run statements with -e).
    Sql {
        /// Accepted for CockroachDB compatibility; ldr always runs without TLS.
        #[arg(long)]
        insecure: bool,
        /// Accepted for CockroachDB compatibility and ignored: ldr runs without TLS.
        #[arg(long, value_name = "DIR")]
        certs_dir: Option<String>,
        /// HOST:PORT of any node.
        #[arg(long, conflicts_with = "url")]
        host: Option<String>,
        /// A postgresql:// connection URL.
        #[arg(long)]
        url: Option<String>,
        #[arg(long, short = 'd')]
        database: Option<String>,
        #[arg(long, short = 'u', default_value = "root")]
        user: String,
        /// Statement to execute (repeatable); without it, statements are read from stdin.
        #[arg(short = 'e', long = "execute")]
        execute: Vec<String>,
        #[arg(long, value_enum, default_value_t = sql::Format::Table)]
        format: sql::Format,
    },
}

#[derive(Subcommand)]
enum NodeCommand {
    /// Show the nodes of the cluster.
    Status {
        #[arg(long)]
        insecure: bool,
        #[arg(long)]
        host: String,
        /// Also show replica and lease counts.
        #[arg(long)]
        ranges: bool,
        /// Also show draining and decommissioning state.
        #[arg(long)]
        decommission: bool,
        /// Show every column.
        #[arg(long)]
        all: bool,
        #[arg(long, value_enum, default_value_t = sql::Format::Table)]
        format: sql::Format,
    },
    /// Drain a node: move its leases and job claims to other nodes, then stop it.
    Drain {
        #[arg(long)]
        insecure: bool,
        /// HOST:PORT of the node to drain.
        #[arg(long)]
        host: String,
        /// Leave the process running once drained (it takes no leases until restarted).
        #[arg(long)]
        no_shutdown: bool,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 600)]
        drain_wait: u64,
    },
    /// Decommission nodes: move every replica off them; they receive none afterwards.
    Decommission {
        /// Ids of the nodes to decommission.
        #[arg(required = true)]
        node_ids: Vec<u32>,
        #[arg(long)]
        insecure: bool,
        /// HOST:PORT of any live node.
        #[arg(long)]
        host: String,
        /// `all`: wait until the nodes hold no replicas, then mark them decommissioned;
        /// `none`: only mark them decommissioning.
        #[arg(long, value_enum, default_value_t = node_cmd::Wait::All)]
        wait: node_cmd::Wait,
        #[arg(long, value_enum, default_value_t = sql::Format::Table)]
        format: sql::Format,
    },
    /// Cancel the decommissioning of nodes (not of decommissioned ones).
    Recommission {
        #[arg(required = true)]
        node_ids: Vec<u32>,
        #[arg(long)]
        insecure: bool,
        #[arg(long)]
        host: String,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Start(args) => {
            if args.background {
                return start::start_background(&args);
            }
            init_logging();
            runtime()?.block_on(ldr_server::run(args.config()))
        }
        Command::Demo(args) => runtime()?.block_on(demo::run(args)),
        Command::Workload(command) => runtime()?.block_on(workload_cmd::run(command)),
        Command::Bench(args) => runtime()?.block_on(bench::run(args)),
        Command::Sim(command) => runtime()?.block_on(sim_cmd::run(command)),
        Command::Init { insecure: _, host } => runtime()?.block_on(node_cmd::init(&host)),
        Command::Node(NodeCommand::Status {
            insecure: _,
            host,
            ranges,
            decommission,
            all,
            format,
        }) => {
            let columns = node_cmd::Columns {
                ranges: ranges || all,
                decommission: decommission || all,
            };
            runtime()?.block_on(node_cmd::status(&host, columns, format))
        }
        Command::Node(NodeCommand::Drain {
            insecure: _,
            host,
            no_shutdown,
            drain_wait,
        }) => runtime()?.block_on(node_cmd::drain(
            &host,
            !no_shutdown,
            std::time::Duration::from_secs(drain_wait),
        )),
        Command::Node(NodeCommand::Decommission {
            node_ids,
            insecure: _,
            host,
            wait,
            format,
        }) => runtime()?.block_on(node_cmd::decommission(&host, &node_ids, wait, format)),
        Command::Node(NodeCommand::Recommission {
            node_ids,
            insecure: _,
            host,
        }) => runtime()?.block_on(node_cmd::recommission(&host, &node_ids)),
        Command::Sql {
            insecure: _,
            certs_dir: _,
            host,
            url,
            database,
            user,
            execute,
            format,
        } => {
            let target = sql::Target::new(url, host, database, &user)?;
            runtime()?.block_on(sql::run(&target, &execute, format))
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LDR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: `ldr start > node.log` and --background write plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(ansi)
        .init();
}

/// Worker stack size: SQL binding and evaluation recurse once per expression level and answer
/// 54001 when the stack runs low (`ldr_sql::stack`); 8 MiB (virtual, touched as used) instead
/// of tokio's 2 MiB lets deeply nested statements run instead.
const WORKER_STACK_BYTES: usize = 8 << 20;

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(WORKER_STACK_BYTES)
        .build()?)
}

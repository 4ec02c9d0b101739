//! The `ldr` binary: run nodes, initialize clusters, open a SQL shell, and drive the testbed.

mod bench;
mod cert_cmd;
mod demo;
mod elle_cmd;
mod lincheck_cmd;
mod node_cmd;
mod seeded_check;
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
        /// Secure cluster: dial with client.root.crt (or node.crt) from this directory.
        #[arg(long, value_name = "DIR", conflicts_with = "insecure")]
        certs_dir: Option<std::path::PathBuf>,
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
    /// linearizability check of replicated ranges (`sim lincheck`) and a transactional
    /// anomaly check (`sim elle`).
    #[command(subcommand)]
    Sim(sim_cmd::SimCommand),
    /// Create and list certificates of a secure cluster (as `cockroach cert`).
    #[command(subcommand)]
    Cert(cert_cmd::CertCommand),
    /// Print a connection URI with TLS parameters (for CREATE EXTERNAL CONNECTION).
    EncodeUri(cert_cmd::EncodeUriArgs),
    /// Testbed fault knobs.
    #[command(subcommand)]
    Debug(DebugCommand),
    /// Open a SQL shell (or run statements with -e).
    Sql {
        /// Connect without TLS (an insecure node); TLS parameters of --url are dropped.
        #[arg(long, conflicts_with = "certs_dir")]
        insecure: bool,
        /// Secure node: verify it with DIR/ca.crt and log in with DIR/client.<user>.crt if
        /// present (else by password, from the URL).
        #[arg(long, value_name = "DIR")]
        certs_dir: Option<std::path::PathBuf>,
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
enum DebugCommand {
    /// Cut a node off from other nodes of its cluster (a network partition inside the
    /// cluster): its requests and Raft messages to them fail as unreachable. Run it on every
    /// node of each side for a symmetric partition; without --from it heals.
    Partition {
        #[arg(long)]
        insecure: bool,
        #[arg(long, value_name = "DIR", conflicts_with = "insecure")]
        certs_dir: Option<std::path::PathBuf>,
        /// HOST:PORT of the node to cut off.
        #[arg(long)]
        host: String,
        /// Node addresses (HOST:PORT, as they advertise them) it no longer reaches.
        #[arg(long, value_delimiter = ',')]
        from: Vec<String>,
    },
}

#[derive(Subcommand)]
enum NodeCommand {
    /// Show the nodes of the cluster.
    Status {
        #[arg(long)]
        insecure: bool,
        #[arg(long, value_name = "DIR", conflicts_with = "insecure")]
        certs_dir: Option<std::path::PathBuf>,
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
        #[arg(long, value_name = "DIR", conflicts_with = "insecure")]
        certs_dir: Option<std::path::PathBuf>,
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
        #[arg(long, value_name = "DIR", conflicts_with = "insecure")]
        certs_dir: Option<std::path::PathBuf>,
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
        #[arg(long, value_name = "DIR", conflicts_with = "insecure")]
        certs_dir: Option<std::path::PathBuf>,
        #[arg(long)]
        host: String,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Start(args) => {
            let max_sql_memory = args.max_sql_memory()?;
            if args.background {
                return start::start_background(&args);
            }
            let tls = args.security()?;
            init_logging();
            runtime()?.block_on(ldr_server::run(args.config(), tls, max_sql_memory))
        }
        Command::Demo(args) => runtime()?.block_on(demo::run(args)),
        Command::Workload(command) => runtime()?.block_on(workload_cmd::run(command)),
        Command::Bench(args) => runtime()?.block_on(bench::run(args)),
        Command::Sim(command) => runtime()?.block_on(sim_cmd::run(command)),
        Command::Cert(command) => cert_cmd::run(command),
        Command::EncodeUri(args) => cert_cmd::encode(args),
        Command::Init {
            insecure: _,
            certs_dir,
            host,
        } => {
            dial_securely(certs_dir.as_deref())?;
            runtime()?.block_on(node_cmd::init(&host))
        }
        Command::Node(NodeCommand::Status {
            insecure: _,
            certs_dir,
            host,
            ranges,
            decommission,
            all,
            format,
        }) => {
            dial_securely(certs_dir.as_deref())?;
            let columns = node_cmd::Columns {
                ranges: ranges || all,
                decommission: decommission || all,
            };
            runtime()?.block_on(node_cmd::status(&host, columns, format))
        }
        Command::Node(NodeCommand::Drain {
            insecure: _,
            certs_dir,
            host,
            no_shutdown,
            drain_wait,
        }) => {
            dial_securely(certs_dir.as_deref())?;
            runtime()?.block_on(node_cmd::drain(
                &host,
                !no_shutdown,
                std::time::Duration::from_secs(drain_wait),
            ))
        }
        Command::Node(NodeCommand::Decommission {
            node_ids,
            insecure: _,
            certs_dir,
            host,
            wait,
            format,
        }) => {
            dial_securely(certs_dir.as_deref())?;
            runtime()?.block_on(node_cmd::decommission(&host, &node_ids, wait, format))
        }
        Command::Node(NodeCommand::Recommission {
            node_ids,
            insecure: _,
            certs_dir,
            host,
        }) => {
            dial_securely(certs_dir.as_deref())?;
            runtime()?.block_on(node_cmd::recommission(&host, &node_ids))
        }
        Command::Debug(DebugCommand::Partition {
            insecure: _,
            certs_dir,
            host,
            from,
        }) => {
            dial_securely(certs_dir.as_deref())?;
            runtime()?.block_on(node_cmd::partition(&host, &from))
        }
        Command::Sql {
            insecure,
            certs_dir,
            host,
            url,
            database,
            user,
            execute,
            format,
        } => {
            let security = sql::Security {
                insecure,
                certs_dir,
            };
            let target = sql::Target::new(url, host, database, &user, &security)?;
            runtime()?.block_on(sql::run(&target, &execute, format))
        }
    }
}

/// With `--certs-dir`, node commands (which speak gRPC to a node) dial over TLS with
/// `client.root.crt` (or the node certificate) of that directory.
fn dial_securely(certs_dir: Option<&std::path::Path>) -> Result<()> {
    if let Some(dir) = certs_dir {
        let config = ldr_security::tls::cli_client(dir).map_err(|e| {
            anyhow::anyhow!("cannot load the certificates of {}: {e}", dir.display())
        })?;
        ldr_security::dial::set_node_client(config);
    }
    Ok(())
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LDR_LOG")
        // openraft logs every triggered heartbeat and vote at INFO: hundreds of lines a second
        // on a node with many ranges. Its warnings and errors stay.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
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

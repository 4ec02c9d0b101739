//! The `ldr` binary: run nodes, initialize clusters, open a SQL shell, and drive the testbed.

mod sql;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "ldr", version, about = "Multi-cluster logical data replication engine and testbed")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Open a SQL shell (or run statements with -e).
    Sql {
        /// Accepted for CockroachDB compatibility; ldr always runs without TLS.
        #[arg(long)]
        insecure: bool,
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

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Sql { insecure: _, host, url, database, user, execute, format } => {
            let target = sql::Target::new(url, host, database, &user)?;
            runtime()?.block_on(sql::run(&target, &execute, format))
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

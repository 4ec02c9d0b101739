//! Helpers shared by the end-to-end tests in `e2e/`: they run real `ldr` processes through the
//! `ldr-sim` harness. Build the binary first (`scripts/test` does).

use std::process::Output;

use anyhow::{Context, Result};
use ldr_sim::{Cluster, ClusterSpec, find_ldr_binary};

/// Starts an `n`-node cluster named `name` and waits until it serves SQL.
pub async fn cluster(name: &str, n: usize) -> Result<Cluster> {
    Ok(Cluster::start(ClusterSpec::new(name, n)?).await?)
}

/// Starts an `n`-node cluster whose inter-cluster traffic goes through a fault proxy.
pub async fn proxied_cluster(name: &str, n: usize) -> Result<Cluster> {
    Ok(Cluster::start(ClusterSpec::new(name, n)?.proxied(true)).await?)
}

/// Runs the `ldr` binary with `args` and captures its output.
pub fn ldr_command(args: &[&str]) -> Result<Output> {
    let bin = find_ldr_binary()?;
    std::process::Command::new(&bin).args(args).output().with_context(|| format!("running {} {args:?}", bin.display()))
}

/// The SQLSTATE of a failed statement (empty if it was not a server error).
pub fn code_of(e: &tokio_postgres::Error) -> String {
    e.as_db_error().map(|d| d.code().code().to_string()).unwrap_or_default()
}

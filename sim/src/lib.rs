//! `ldr-sim`: the testbed around ldr — start real clusters as processes, break the network
//! between them, drive workloads, and check what must hold afterwards.
//!
//! Pieces:
//! - [`Cluster`]: N `ldr start` processes on loopback with temp stores, readiness by condition,
//!   kill (-9) / restart / pause (SIGSTOP) / clock skew per node, logs captured per node, and
//!   nothing left running when it is dropped (or when the test process dies);
//! - [`FaultProxy`]: sits in front of each node's inter-cluster address and can pass, cut,
//!   delay or blackhole that traffic;
//! - [`workload`]: `kv` and `bank` over any PostgreSQL-wire server, with per-second progress,
//!   an HDR latency summary, and optional recording of acknowledged writes for oracles;
//! - [`check`]: convergence (fingerprints), LWW oracle, accounting (metrics), monotonic
//!   replicated time;
//! - [`fuzz`]: seeded scenarios (same seed, same operations and faults) and their runner;
//! - [`lincheck`] and [`elle`]: linearizability of single-key histories and transactional
//!   anomalies (Elle's list-append analysis) of one replicated cluster under faults;
//! - [`ldr`]: external connections, streams, waiting for replicated time (ldr SQL);
//! - [`pg`]: two local PostgreSQL 15 servers with a publication/subscription, the peer of the
//!   benchmark.
//!
//! ```no_run
//! # async fn demo() -> ldr_sim::Result<()> {
//! use ldr_sim::{Cluster, ClusterSpec};
//! let cluster = Cluster::start(ClusterSpec::new("a", 3)?).await?;
//! cluster.exec(1, "CREATE TABLE kv (k INT8 PRIMARY KEY, v STRING)").await?;
//! let rows = cluster.query(2, "SELECT count(*) FROM kv").await?;
//! # let _ = rows; Ok(()) }
//! ```
//!
//! Invariants the harness keeps: every wait polls a condition with a deadline; every child
//! process is reaped; every buffer and load loop is bounded.

pub mod bench;
pub mod check;
mod cluster;
pub mod elle;
mod error;
pub mod fuzz;
mod http;
pub mod ldr;
pub mod lincheck;
pub mod metrics;
pub mod pg;
mod ports;
pub mod process;
mod proxy;
pub mod sql;
mod worker;
pub mod workload;

pub use cluster::{
    Cluster, ClusterSpec, NodeInfo, STREAM_PASSWORD, STREAM_USER, find_ldr_binary, sql_url,
};
pub use error::{Result, SimError, describe_sql_error};
pub use http::{HttpResponse, http_get};
pub use ports::free_loopback_addr;
pub use proxy::{CHUNK_BYTES, CHUNKS_IN_FLIGHT, Fault, FaultProxy, ProxyStats};

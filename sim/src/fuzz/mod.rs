//! Seeded conflict fuzzing: [`Scenario`]s generated from a seed (same seed, same writes and
//! fault schedule), saved as JSON, and run by the [`Runner`] against two ldr clusters with
//! bidirectional LDR (immediate or validated [`ApplyMode`]), then checked: convergence, LWW
//! oracle, monotonic replicated time and accounting. Every run prints its seed; a failure prints the fault timeline and each wrong
//! key's history. `ldr sim run` / `ldr sim fuzz` are the command-line front end.
//!
//! ```no_run
//! # async fn demo() -> ldr_sim::Result<()> {
//! use ldr_sim::fuzz::{GenConfig, Runner, RunnerConfig, Scenario, setup_bidirectional, start_clusters};
//! let (a, b) = start_clusters(3, ldr_sim::find_ldr_binary()?).await?;
//! setup_bidirectional(&a, &b, "kv").await?;
//! let scenario = Scenario::generate(42, &GenConfig::default())?;
//! let report = Runner::new(&a, &b, RunnerConfig::default()).run(&scenario).await?;
//! println!("seed {} passed: {} writes acknowledged", report.seed, report.writes_acknowledged);
//! # Ok(()) }
//! ```

mod runner;
mod scenario;

pub use crate::ldr::ApplyMode;
pub use runner::{
    RunReport, Runner, RunnerConfig, setup_bidirectional, setup_bidirectional_mode, start_clusters,
};
pub use scenario::{FaultKind, GenConfig, Op, SCENARIO_VERSION, Scenario, Side, Step};

//! One ldr node: the shared SQL/gRPC listener, the HTTP endpoints, and the wiring of the
//! cluster layer, SQL, jobs, the replication producer and the ingestion jobs.

// The SQL connection future nests the KV client's intent handling deeply.
#![recursion_limit = "256"]

mod backup;
mod catalog_adapters;
mod changefeed;
pub mod console;
pub mod console_auth;
pub mod console_dashboards;
pub mod http;
pub mod listener;
mod node;
mod sql;
pub mod timeseries;
pub mod ts_query;
pub mod ts_sampler;
pub mod ts_store;
pub mod ttl;

pub use listener::{PgHandler, Protocol, accept_loop, classify, sniff};
pub use node::{CLOCK_OFFSET_ENV, Node, ServerConfig, run};

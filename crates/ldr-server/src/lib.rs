//! One ldr node: the shared SQL/gRPC listener, the HTTP endpoints, and the wiring of the
//! cluster layer, SQL, jobs, the replication producer and the ingestion jobs.

pub mod http;
pub mod listener;

pub use listener::{PgHandler, Protocol, accept_loop, classify, sniff};

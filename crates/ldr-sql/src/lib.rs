//! ldr-sql: the SQL layer of a node — the parser, the executor, privileges and the PostgreSQL
//! wire protocol, on top of `ldr-catalog` (types and values, key and row encodings, the
//! catalog, the LDR schema rules), whose modules it re-exports under the same paths.
//!
//! - [`types`], [`datum`], [`interval`], [`encoding`], [`rowcodec`], [`catalog`],
//!   [`validation`], [`error`]: re-exported from `ldr-catalog` (see its crate doc).
//! - [`parser`]: sqlparser for standard SQL plus CockroachDB's own statements.
//! - [`expr`]: binding (names, types, parameters, aggregates) and evaluation.
//! - [`exec`]: [`exec::SqlServer`] (one per node) and [`exec::Session`] (one per
//!   connection); the [`exec::ReplicationStatements`] hook the server implements.
//! - [`protocol`]: pgwire front end, [`protocol::serve_connection`]; [`connection_guard`]: the
//!   per-connection panic boundary a server spawns it inside.
//! - [`frontend_frame`]: every frontend message read whole and checked before pgwire decodes
//!   it (a malformed one is a FATAL `08P01`, never a panic).
//! - [`wire`]: text and binary wire formats.
//! - [`stack`]: the stack-depth check recursive binding and evaluation make (54001).
//!
//! Using it from a server:
//!
//! ```no_run
//! # async fn run(kv: ldr_kv::KvClient, socket: tokio::net::TcpStream) -> Result<(), Box<dyn std::error::Error>> {
//! let jobs = ldr_jobs::Registry::start(kv.clone());
//! let sql = ldr_sql::exec::SqlServer::start(kv, jobs, ldr_sql::exec::SqlConfig { insecure: true }).await?;
//! // sql.set_replication_statements(Arc::new(MyIngest { … }));
//! tokio::spawn(ldr_sql::protocol::serve_connection(socket, sql.clone()));
//! # Ok(()) }
//! ```
//!
//! Invariants: a row's primary entry and its non-unique index entries are written in one
//! conditional batch; a unique index entry points at the row that holds its value (or is a
//! claim being released or taken over); every error a client sees has a SQLSTATE; an explicit
//! transaction commits only if every row it read is unchanged (optimistic, `exec/txn.rs`).
//!
//! Key space: besides rows and index entries, a COMMIT writes short-lived commit locks at
//! `0x02 <table> <shard> <index u32::MAX> <rest of the locked key>` (same range as the key,
//! outside every primary index span, so replication streams and SQL scans never see them).

// The pgwire handlers' futures nest deeply (session, executor, KV client, retries).
#![recursion_limit = "256"]

pub mod asof;
pub mod budget;
pub mod connection_guard;
pub mod copy;
pub mod cron;
pub mod exec;
pub mod expr;
pub mod frontend_frame;
pub mod parser;
pub mod protocol;
pub mod stack;
pub mod stats;
pub mod wire;

// The lower half, under the paths it had when it lived here (`crate::datum::Datum`, …).
pub use ldr_catalog::{
    Datum, Interval, PgError, Result, SqlError, SqlType, catalog, datum, encoding, error, interval,
    rowcodec, sqlstate, types, validated, validation,
};

//! ldr-catalog: what a SQL table *is*, without the SQL language: types and values, their key
//! and row encodings, the catalog of descriptors in the system keyspace, and the logical
//! replication schema rules.
//!
//! It is the lower half of the SQL layer. `ldr-sql` (parser, binder, executor, pgwire)
//! builds on it and re-exports every module under the same path (`ldr_sql::datum` is
//! `ldr_catalog::datum`); the replication crates use it directly, so they decode, remap and
//! write rows without depending on the parser or the executor, and a change to the executor
//! does not rebuild them.
//!
//! - [`types`], [`datum`], [`interval`]: SQL types and values, text input/output, casts.
//! - [`encoding`]: order-preserving key encoding and the column-id row value encoding.
//! - [`rowcodec`]: how a row maps to KV pairs (primary, non-unique and unique index
//!   entries); used by the SQL write path and by replication (decode a source KV, remap it to
//!   the destination's columns by name, build LWW writes, render the DLQ's JSON).
//! - [`catalog`]: descriptors, users and external connections in the system keyspace.
//! - [`validation`]: LDR schema compatibility, schema locks, allowed schema changes.
//! - [`validated`]: the validated-mode write interface (a replicated row written through the
//!   SQL write path's constraint checks), implemented by `ldr-sql`, called by `ldr-ingest`.
//! - [`error`]: [`SqlError`], every failure with a SQLSTATE.
//!
//! Jargon: a *descriptor* is a table's schema as stored (columns with stable ids, indexes,
//! constraints, the LDR jobs that lock it); a *datum* is one value; a *key tuple* is the
//! order-preserving encoding of several datums.
//!
//! ```
//! use ldr_catalog::{Datum, SqlType, encoding};
//!
//! let key = encoding::encode_key_tuple([&Datum::Int(7), &Datum::String("a".into())]);
//! let (id, rest) = encoding::decode_key(&key, &SqlType::Int8)?;
//! let (name, rest) = encoding::decode_key(rest, &SqlType::String)?;
//! assert_eq!((id, name), (Datum::Int(7), Datum::String("a".into())));
//! assert!(rest.is_empty());
//! # Ok::<(), ldr_catalog::SqlError>(())
//! ```
//!
//! Invariants: for two values of one type, the byte order of their key encodings is their
//! SQL order (NULL first); a column id is never reused within a table, so a row value
//! written before a schema change still decodes after it.

pub mod catalog;
pub mod datum;
pub mod encoding;
pub mod error;
pub mod interval;
pub mod rowcodec;
#[cfg(any(test, feature = "test-fixtures"))]
pub mod test_fixtures;
pub mod types;
pub mod validated;
pub mod validation;

pub use datum::Datum;
pub use error::{PgError, Result, SqlError, sqlstate};
pub use interval::Interval;
pub use types::SqlType;

//! ldr-sql: the SQL layer of a node.
pub mod catalog;
pub mod datum;
pub mod encoding;
pub mod error;
pub mod exec;
pub mod expr;
pub mod interval;
pub mod parser;
pub mod protocol;
pub mod rowcodec;
pub mod types;
pub mod validation;
pub mod wire;

pub use datum::Datum;
pub use error::{PgError, Result, SqlError, sqlstate};
pub use interval::Interval;
pub use types::SqlType;

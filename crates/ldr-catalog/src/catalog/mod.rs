//! The catalog: descriptors and their storage in the system keyspace.
pub mod descriptor;
pub mod store;

pub use descriptor::*;
pub use store::{
    Catalog, ExternalConnection, SCRAM_ITERATIONS, ScramVerifier, UserRecord, parse_scram_verifier,
    scram_verifier,
};

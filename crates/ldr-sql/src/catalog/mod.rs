//! The catalog: descriptors and their storage.
pub mod descriptor;

pub use descriptor::*;

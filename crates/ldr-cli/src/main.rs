//! The `ldr` binary.
fn main() {}

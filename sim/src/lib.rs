//! ldr-sim: placeholder.

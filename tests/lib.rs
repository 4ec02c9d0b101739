//! End-to-end tests through real `ldr` processes live under this crate's `e2e/` folder.

//! ldr-ingest: placeholder while the workspace is laid out.

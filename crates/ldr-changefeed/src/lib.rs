//! Changefeeds: CockroachDB's `CREATE CHANGEFEED`, as a `CHANGEFEED` job that emits every
//! change of the watched tables to a sink as JSON messages.
//!
//! - [`options`]: the `WITH` options and sink URIs, with CockroachDB's errors (pure).
//! - [`encode`]: CockroachDB's JSON messages (wrapped, bare, key_only; resolved) (pure).
//! - [`pacing`]: when to flush, emit resolved messages and checkpoint (pure).
//! - [`sink`]: `nodelocal://` files (CockroachDB's cloud storage sink naming), webhooks, and
//!   the SQL client of a sinkless changefeed (rows streamed through a bounded channel).
//! - [`service`]: the node-to-node `Changefeed` gRPC service: a node streams the spans it
//!   serves (the replication partition loop, every origin) and writes nodelocal files.
//! - [`job`]: the resumer: plans the ranges, merges the node streams into a span frontier,
//!   flushes the sink and checkpoints the high-water mark (job record and protected
//!   timestamp); restarts from the last flushed frontier on any error.
//! - [`create`]: the `CREATE CHANGEFEED` hook the SQL layer calls; it also runs sinkless
//!   changefeeds, in a task per statement that stops when the client stops reading.
//! - [`metrics`]: CockroachDB's `changefeed.*` metrics of the node.
//!
//! Jargon: the *high-water mark* is the frontier's minimum after a sink flush: every change
//! at or below it reached the sink. Delivery is at least once; a change is never skipped
//! (a restart catches up from the high-water mark, which the protected timestamp keeps
//! above the GC threshold).
//!
//! ```
//! use ldr_changefeed::options::{parse_options, parse_sink, SinkSpec};
//! let mut o = parse_options(&[("updated".into(), None), ("resolved".into(), Some("10s".into()))]).unwrap();
//! let sink = parse_sink(Some("nodelocal://1/cf"), &mut o).unwrap();
//! assert_eq!(sink, SinkSpec::Nodelocal { node: Some(1), path: "cf".into() });
//! assert_eq!(o.resolved_ms, Some(10_000));
//! ```

pub mod create;
pub mod encode;
pub mod job;
pub mod metrics;
pub mod options;
pub mod pacing;
pub mod service;
pub mod sink;

pub use create::ChangefeedCreator;
pub use job::{ChangefeedPayload, ChangefeedResumer};
pub use service::{ChangefeedService, NodeChangefeeds};

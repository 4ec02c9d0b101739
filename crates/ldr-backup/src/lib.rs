//! Backups and restores: CockroachDB's `BACKUP … INTO 'nodelocal://…'` (full, and
//! incremental with `INTO LATEST IN`), `RESTORE … FROM LATEST IN …`, `SHOW BACKUPS IN` and
//! `SHOW BACKUP FROM … IN`, as `BACKUP` and `RESTORE` jobs.
//!
//! - [`layout`]: the collection's directories and file names, as CockroachDB lays them out
//!   (dated full backup subdirectories, `LATEST`, `incrementals/…`) (pure).
//! - [`layer`]: what a full or incremental layer holds, and its cut into files (pure).
//! - [`manifest`]: a layer's manifest (tables, descriptors, files with SHA-256) and the data
//!   file format; checksums verified on decode (pure).
//! - [`storage`]: the collection's files below this node's `<store>/extern`.
//! - [`chain`]: a full backup and its incremental layers, verified.
//! - [`job`]: the resumers: a backup reads at one timestamp (held by a protected timestamp
//!   while it runs), a restore creates the tables and writes the rows.
//! - [`create`]: the statements' hook the SQL layer calls.
//!
//! Jargon: a *collection* is the URI a user names; a *layer* is one backup in it (a full
//! backup, or an incremental on top of it); a *chain* is a full backup with its layers.
//! Invariants: a layer is complete exactly when its manifest exists (written last), and no
//! file is believed whose SHA-256 does not match what the manifest recorded.
//!
//! ```
//! use ldr_backup::layout::{full_subdir, parse_collection};
//! use ldr_types::Timestamp;
//! let c = parse_collection("nodelocal://1/backups").unwrap();
//! assert_eq!((c.node, c.path.as_str()), (Some(1), "backups"));
//! // 2026-12-07 12:34:56.78 UTC
//! let end = Timestamp::new(1_796_646_896_780_000_000, 0);
//! assert_eq!(full_subdir(end), "/2026/12/07-123456.78");
//! ```

pub mod chain;
pub mod create;
pub mod error;
pub mod job;
pub mod layer;
pub mod layout;
pub mod manifest;
pub mod storage;

pub use create::BackupCreator;
pub use error::BackupError;
pub use job::{BackupResumer, RestoreResumer};

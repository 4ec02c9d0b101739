//! The `BACKUP` and `RESTORE` jobs: payloads, progress and resumers.
//!
//! A backup reads every primary index row of its tables at its end time (a protected
//! timestamp keeps that history from GC while it runs), writes the rows to data files, then
//! the manifest (with each file's SHA-256) and its checksum, and for a full backup the
//! collection's `LATEST` file: a layer without a manifest is not a backup. An incremental
//! layer holds the rows written after the previous layer's end time (their values at its own
//! end time) and tombstones for the rows deleted since.
//!
//! A restore creates the tables (new ids, in the target database, with no schema lock and no
//! LDR job reference), then writes the chain's rows, newest layer first per key, through the
//! tables' current encoding: primary rows with their secondary and unique index entries. A
//! failed or canceled restore drops what it created.
//!
//! Both re-run from the start when resumed (files are rewritten whole; restored rows are
//! plain puts), so a node loss mid-way is harmless.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use ldr_jobs::{JobContext, JobRecord, Registry, ResumeOutcome, Resumer};
use ldr_kv::{Condition, KvClient, RowWrite, ValueHeader};
use ldr_sql::catalog::{Catalog, TableDescriptor};
use ldr_sql::{Datum, rowcodec};
use ldr_types::{Span, TableId, Timestamp, keys};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::chain::{self, Layer};
use crate::error::BackupError;
use crate::layer::{Previous, Scanned, cut_files, entry_bytes, layer_entries};
use crate::layout;
use crate::manifest::{
    BackupType, Entry, FORMAT_VERSION, Manifest, ManifestFile, ManifestTable, decode_data,
    encode_data, encode_manifest,
};
use crate::storage::CollectionDir;

/// Rows per KV scan page.
const SCAN_PAGE_ROWS: usize = 1000;
/// A data file is cut when its entries reach this many bytes.
const DATA_FILE_BYTES_MAX: usize = 16 << 20;
/// Rows per KV write batch of a restore.
const RESTORE_BATCH_ROWS: usize = 500;

/// The protected timestamp record id of a backup job.
pub fn pts_id(job_id: i64) -> String {
    format!("backup-{job_id}")
}

/// The immutable details of a backup job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackupPayload {
    /// The node whose `<store>/extern` holds the collection (any node reaches it).
    #[serde(default)]
    pub node_id: ldr_types::NodeId,
    pub collection_uri: String,
    /// The collection's path below the extern directory.
    pub collection_path: String,
    /// The layer's directory, relative to the collection.
    pub layer_dir: String,
    /// The full backup's subdirectory (`/2026/12/07-…`): what `LATEST` names.
    pub full_subdir: String,
    pub backup_type: BackupType,
    /// Decimal; zero for a full backup.
    pub start_time: String,
    pub end_time: String,
    pub table_ids: Vec<TableId>,
    /// Tables of the previous layer (an incremental layer scans other tables whole).
    #[serde(default)]
    pub previous_table_ids: Vec<TableId>,
    pub databases: Vec<String>,
}

/// What a backup or restore job counted (its statement's result row).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub rows: u64,
    pub index_entries: u64,
    pub bytes: u64,
}

/// A table a restore creates.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RestoreTable {
    /// Its id in the backup.
    pub backup_id: TableId,
    pub database: String,
    pub name: String,
}

/// The immutable details of a restore job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RestorePayload {
    /// The node whose `<store>/extern` holds the collection (any node reaches it).
    #[serde(default)]
    pub node_id: ldr_types::NodeId,
    pub collection_uri: String,
    pub collection_path: String,
    /// The full backup's subdirectory (`/2026/12/07-…`).
    pub full_subdir: String,
    pub tables: Vec<RestoreTable>,
    /// Databases the restore creates first (RESTORE DATABASE).
    pub create_databases: Vec<String>,
}

/// What a restore created (persisted, so a failure or cancel can drop it).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RestoreProgress {
    /// backup id → new id.
    #[serde(default)]
    pub new_ids: BTreeMap<TableId, TableId>,
    #[serde(default)]
    pub created_tables: Vec<TableId>,
    #[serde(default)]
    pub created_databases: Vec<String>,
}

/// Attempts of a job run after retryable errors (a range without a leaseholder for a moment).
const RUN_ATTEMPTS_MAX: u32 = 5;
const RETRY_BACKOFF_INITIAL: std::time::Duration = std::time::Duration::from_millis(250);

/// Runs `run` again after retryable errors, with backoff, at most [`RUN_ATTEMPTS_MAX`] times;
/// a stop request ends the wait.
async fn with_retries<T, F, Fut>(ctx: &JobContext, mut run: F) -> Result<T, BackupError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, BackupError>>,
{
    let mut backoff = RETRY_BACKOFF_INITIAL;
    let mut attempt = 1;
    loop {
        match run().await {
            Err(e) if e.is_retryable() && attempt < RUN_ATTEMPTS_MAX => {
                warn!(job_id = ctx.job_id, error = %e, attempt, "backup job run failed; retrying");
                let mut stop = ctx.stop.clone();
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => return Err(BackupError::Stopped),
                }
                backoff *= 2;
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// Records the SQLSTATE of a failure in the job's progress (the waiting statement reports it)
/// and fails the job.
async fn fail(ctx: &JobContext, e: BackupError) -> ResumeOutcome {
    let code = e.code();
    let message = e.to_string();
    let _ = ctx
        .registry
        .update_progress(ctx.job_id, &move |r| {
            if let Some(o) = r.progress.as_object_mut() {
                o.insert("sqlstate".into(), serde_json::json!(code));
            } else {
                r.progress = serde_json::json!({ "sqlstate": code });
            }
        })
        .await;
    ResumeOutcome::Failed(message)
}

async fn report(
    registry: &Arc<Registry>,
    job_id: i64,
    fraction: f64,
    counts: Counts,
    extra: Option<serde_json::Value>,
) {
    let r = registry
        .update_progress(job_id, &move |r| {
            r.fraction_completed = fraction;
            let mut p = serde_json::to_value(counts).unwrap_or_default();
            if let (Some(o), Some(serde_json::Value::Object(x))) = (p.as_object_mut(), &extra) {
                for (k, v) in x {
                    o.insert(k.clone(), v.clone());
                }
            }
            r.progress = p;
        })
        .await;
    if let Err(e) = r {
        warn!(job_id, error = %e, "could not record backup progress");
    }
}

/// The primary index spans of a table (one per shard).
fn primary_spans(desc: &TableDescriptor) -> Vec<Span> {
    (0..desc.shard_count.max(1))
        .map(|shard| keys::index_span(desc.id, shard, ldr_types::PRIMARY_INDEX_ID))
        .collect()
}

/// Calls `f` with every page of live rows of `span` at `ts`.
async fn scan_pages(
    kv: &KvClient,
    span: &Span,
    ts: Timestamp,
    f: &mut (dyn FnMut(Vec<ldr_kv::KeyVersion>) + Send),
) -> Result<(), BackupError> {
    let mut start = span.start.clone();
    loop {
        let page = kv
            .scan(
                &Span::new(start.clone(), span.end.clone()),
                Some(ts),
                SCAN_PAGE_ROWS,
            )
            .await?;
        let n = page.len();
        if let Some(last) = page.last() {
            start = last.key.clone();
            start.push(0);
        }
        f(page);
        if n < SCAN_PAGE_ROWS {
            return Ok(());
        }
    }
}

/// Runs backup jobs on this node.
pub struct BackupResumer {
    pub kv: KvClient,
    pub catalog: Arc<Catalog>,
    /// This node's `<store>/extern`.
    pub extern_dir: PathBuf,
}

#[async_trait]
impl Resumer for BackupResumer {
    async fn resume(&self, ctx: JobContext, record: JobRecord) -> ResumeOutcome {
        let payload: BackupPayload = match serde_json::from_value(record.payload.clone()) {
            Ok(p) => p,
            Err(e) => return ResumeOutcome::Failed(format!("corrupt backup payload: {e}")),
        };
        let outcome = with_retries(&ctx, || self.run(&ctx, &payload)).await;
        if matches!(outcome, Err(BackupError::Stopped)) {
            // Paused, canceled (on_fail_or_cancel releases the protection) or handed to
            // another node, which runs it again at the same end time: keep the protection.
            return ResumeOutcome::Succeeded;
        }
        if let Err(e) = self.kv.release_protection(&pts_id(ctx.job_id)).await {
            warn!(job_id = ctx.job_id, error = %e, "could not release the backup's protected timestamp");
        }
        match outcome {
            Ok(counts) => {
                info!(job_id = ctx.job_id, rows = counts.rows, bytes = counts.bytes, dir = %payload.layer_dir, "backup done");
                ResumeOutcome::Succeeded
            }
            Err(e) => fail(&ctx, e).await,
        }
    }

    async fn on_fail_or_cancel(
        &self,
        _ctx: JobContext,
        record: JobRecord,
    ) -> std::result::Result<(), String> {
        self.kv
            .release_protection(&pts_id(record.id))
            .await
            .map_err(|e| format!("cannot release protected timestamp: {e}"))
    }
}

impl BackupResumer {
    async fn run(&self, ctx: &JobContext, p: &BackupPayload) -> Result<Counts, BackupError> {
        let node = (p.node_id != 0).then_some(p.node_id);
        let dir =
            CollectionDir::on_node(&self.kv, &self.extern_dir, node, &p.collection_path).await?;
        let start: Timestamp = p.start_time.parse().unwrap_or(Timestamp::ZERO);
        let end: Timestamp = p
            .end_time
            .parse()
            .map_err(|_| BackupError::Corrupt("backup payload has no end time".into()))?;
        let mut counts = Counts::default();
        let mut tables = Vec::new();
        let mut files = Vec::new();
        let layer = p.layer_dir.trim_matches('/').to_string();
        let total = p.table_ids.len().max(1) as f64;
        for (i, id) in p.table_ids.iter().enumerate() {
            if *ctx.stop.borrow() {
                return Err(BackupError::Stopped);
            }
            let Some(desc) = self.catalog.table_by_id(*id).await? else {
                return Err(BackupError::Sql(ldr_sql::SqlError::undefined_table(
                    format!("[{id}]"),
                )));
            };
            let mut desc = (*desc).clone();
            // A restored table holds no schema lock and no reference to an LDR job.
            desc.ldr_job_ids.clear();
            let whole = p.backup_type == BackupType::Full || !p.previous_table_ids.contains(id);
            let mut at_end: Vec<Scanned> = Vec::new();
            for span in primary_spans(&desc) {
                scan_pages(&self.kv, &span, end, &mut |page| {
                    at_end.extend(page.into_iter().filter_map(|kv| {
                        kv.version.value.map(|value| Scanned {
                            key: kv.key,
                            ts: kv.version.ts,
                            value,
                        })
                    }));
                })
                .await?;
            }
            let previous = if whole {
                None
            } else {
                // The rows live at the previous layer's end: those gone now are tombstones.
                let mut live_keys = Vec::new();
                for span in primary_spans(&desc) {
                    scan_pages(&self.kv, &span, start, &mut |page| {
                        live_keys.extend(page.into_iter().map(|kv| kv.key));
                    })
                    .await?;
                }
                live_keys.sort();
                live_keys.dedup();
                Some(Previous {
                    end: start,
                    live_keys,
                })
            };
            let (entries, deleted) = layer_entries(at_end, previous.as_ref());
            let live = entries.len() as u64 - deleted;
            let bytes: u64 = entries.iter().map(|e| entry_bytes(e) as u64).sum();
            let mut writes = Vec::new();
            for chunk in cut_files(entries, DATA_FILE_BYTES_MAX) {
                let (data, sha256) = encode_data(&chunk);
                let path = layout::data_file(files.len());
                files.push(ManifestFile {
                    path: path.clone(),
                    table_id: *id,
                    sha256,
                    size_bytes: data.len() as u64,
                    entries: chunk.len() as u64,
                });
                writes.push((path, data));
            }
            for (path, data) in writes {
                dir.write(&format!("{layer}/{path}"), &data).await?;
            }
            let secondary = desc.indexes.len() as u64;
            counts.rows += live;
            counts.index_entries += live * secondary;
            counts.bytes += bytes;
            tables.push(ManifestTable {
                descriptor: desc,
                rows: live,
                deleted,
                bytes,
            });
            report(
                &ctx.registry,
                ctx.job_id,
                (i + 1) as f64 / total * 0.99,
                counts,
                None,
            )
            .await;
        }
        let manifest = Manifest {
            format_version: FORMAT_VERSION,
            backup_type: p.backup_type,
            start_time: p.start_time.clone(),
            end_time: p.end_time.clone(),
            cluster_id: self.kv.cluster_id(),
            job_id: ctx.job_id,
            databases: p.databases.clone(),
            tables,
            files,
        };
        let (bytes, checksum) = encode_manifest(&manifest);
        // The checksum first: a manifest is only believed with it, and is the layer's
        // completion marker.
        dir.write(
            &format!("{layer}/{}", layout::MANIFEST_CHECKSUM_FILE),
            checksum.as_bytes(),
        )
        .await?;
        dir.write(&format!("{layer}/{}", layout::MANIFEST_FILE), &bytes)
            .await?;
        if p.backup_type == BackupType::Full {
            dir.write(layout::LATEST_FILE, p.full_subdir.as_bytes())
                .await?;
        }
        report(&ctx.registry, ctx.job_id, 1.0, counts, None).await;
        Ok(counts)
    }
}

/// Runs restore jobs on this node.
pub struct RestoreResumer {
    pub kv: KvClient,
    pub catalog: Arc<Catalog>,
    pub extern_dir: PathBuf,
}

#[async_trait]
impl Resumer for RestoreResumer {
    async fn resume(&self, ctx: JobContext, record: JobRecord) -> ResumeOutcome {
        let payload: RestorePayload = match serde_json::from_value(record.payload.clone()) {
            Ok(p) => p,
            Err(e) => return ResumeOutcome::Failed(format!("corrupt restore payload: {e}")),
        };
        match with_retries(&ctx, || self.run(&ctx, &payload)).await {
            Ok(counts) => {
                info!(job_id = ctx.job_id, rows = counts.rows, "restore done");
                ResumeOutcome::Succeeded
            }
            Err(BackupError::Stopped) => ResumeOutcome::Succeeded,
            Err(e) => fail(&ctx, e).await,
        }
    }

    async fn on_fail_or_cancel(
        &self,
        _ctx: JobContext,
        record: JobRecord,
    ) -> std::result::Result<(), String> {
        let progress: RestoreProgress = record
            .progress
            .get("created")
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default();
        for id in &progress.created_tables {
            if let Ok(Some(desc)) = self.catalog.table_by_id(*id).await
                && let Err(e) = self.catalog.drop_table(&desc).await
            {
                return Err(format!("cannot drop restored table {}: {e}", desc.name));
            }
        }
        for db in &progress.created_databases {
            if let Err(e) = self.catalog.drop_database_record(db).await {
                return Err(format!("cannot drop restored database {db}: {e}"));
            }
        }
        Ok(())
    }
}

/// A backed-up row value with the descriptor it was encoded with.
type Versioned<'a> = (&'a TableDescriptor, Option<Vec<u8>>);

impl RestoreResumer {
    async fn save(&self, ctx: &JobContext, progress: &RestoreProgress, counts: Counts, f: f64) {
        let created = serde_json::to_value(progress).unwrap_or_default();
        report(
            &ctx.registry,
            ctx.job_id,
            f,
            counts,
            Some(serde_json::json!({ "created": created })),
        )
        .await;
    }

    async fn run(&self, ctx: &JobContext, p: &RestorePayload) -> Result<Counts, BackupError> {
        // What an earlier run (on this node or another) already created.
        let record = ctx
            .registry
            .get(ctx.job_id)
            .await
            .map_err(|e| BackupError::Sql(ldr_sql::SqlError::internal(e.to_string())))?;
        let mut progress: RestoreProgress = record
            .progress
            .get("created")
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default();
        let node = (p.node_id != 0).then_some(p.node_id);
        let dir =
            CollectionDir::on_node(&self.kv, &self.extern_dir, node, &p.collection_path).await?;
        let layers = chain::load_chain(&dir, &p.full_subdir, &p.collection_uri).await?;
        let last = &layers.last().expect("a chain has its full layer").manifest;
        let mut counts = Counts::default();

        // Databases, then ids for every table (so foreign keys between restored tables can
        // point at the new ids), then the tables.
        for db in &p.create_databases {
            if progress.created_databases.contains(db) {
                continue;
            }
            if !self.catalog.create_database(db, "root").await? {
                return Err(BackupError::Sql(ldr_sql::SqlError::new(
                    ldr_sql::sqlstate::DUPLICATE_DATABASE,
                    format!("database \"{db}\" already exists"),
                )));
            }
            progress.created_databases.push(db.clone());
            self.save(ctx, &progress, counts, 0.0).await;
        }
        for t in &p.tables {
            if let std::collections::btree_map::Entry::Vacant(e) =
                progress.new_ids.entry(t.backup_id)
            {
                e.insert(self.catalog.allocate_id().await?);
            }
        }
        self.save(ctx, &progress, counts, 0.0).await;
        let mut targets: HashMap<TableId, Arc<TableDescriptor>> = HashMap::new();
        for t in &p.tables {
            let new_id = progress.new_ids[&t.backup_id];
            if progress.created_tables.contains(&new_id) {
                if let Some(d) = self.catalog.table_by_id(new_id).await? {
                    targets.insert(t.backup_id, d);
                }
                continue;
            }
            let source = last.table(t.backup_id).ok_or_else(|| {
                BackupError::Corrupt(format!(
                    "table {} (id {}) is not in the backup's last layer",
                    t.name, t.backup_id
                ))
            })?;
            let db = self.catalog.require_database(&t.database).await?;
            let mut desc = source.descriptor.clone();
            desc.id = new_id;
            desc.version = 1;
            desc.database_id = db.id;
            desc.database = db.name.clone();
            desc.name = t.name.clone();
            desc.ldr_job_ids.clear();
            desc.foreign_keys
                .retain_mut(|fk| match progress.new_ids.get(&fk.ref_table_id) {
                    Some(id) => {
                        fk.ref_table_id = *id;
                        true
                    }
                    None => false,
                });
            match self.catalog.create_table(desc).await? {
                Some(d) => {
                    progress.created_tables.push(new_id);
                    self.save(ctx, &progress, counts, 0.0).await;
                    targets.insert(t.backup_id, d);
                }
                None => {
                    return Err(BackupError::Sql(ldr_sql::SqlError::new(
                        ldr_sql::sqlstate::DUPLICATE_TABLE,
                        format!("relation \"{}\" already exists", t.name),
                    )));
                }
            }
        }

        // Rows: per table, the incremental layers' entries (newest wins) over the full
        // layer's.
        let total_files: usize = layers
            .iter()
            .map(|l| {
                l.manifest
                    .files
                    .iter()
                    .filter(|f| targets.contains_key(&f.table_id))
                    .count()
            })
            .sum();
        let mut files_done = 0usize;
        for t in &p.tables {
            if *ctx.stop.borrow() {
                return Err(BackupError::Stopped);
            }
            let target = targets[&t.backup_id].clone();
            let mut overlay: BTreeMap<Vec<u8>, Versioned<'_>> = BTreeMap::new();
            for layer in layers.iter().skip(1) {
                for (desc, entries) in self.read_table(&dir, layer, t.backup_id).await? {
                    for e in entries {
                        overlay.insert(e.key, (desc, e.value));
                    }
                    files_done += 1;
                }
            }
            let mut batch: Vec<RowWrite> = Vec::new();
            for (desc, entries) in self.read_table(&dir, &layers[0], t.backup_id).await? {
                for e in entries {
                    if overlay.contains_key(&e.key) {
                        continue;
                    }
                    if let Some(v) = e.value {
                        self.add_row(&target, desc, &e.key, &v, &mut batch, &mut counts)?;
                    }
                    if batch.len() >= RESTORE_BATCH_ROWS {
                        self.write(std::mem::take(&mut batch)).await?;
                    }
                }
                files_done += 1;
                let f = files_done as f64 / total_files.max(1) as f64 * 0.99;
                self.save(ctx, &progress, counts, f).await;
            }
            for (key, (desc, value)) in &overlay {
                if let Some(v) = value {
                    self.add_row(&target, desc, key, v, &mut batch, &mut counts)?;
                }
                if batch.len() >= RESTORE_BATCH_ROWS {
                    self.write(std::mem::take(&mut batch)).await?;
                }
            }
            self.write(batch).await?;
        }
        self.save(ctx, &progress, counts, 1.0).await;
        Ok(counts)
    }

    /// The verified entries of `table`'s files in `layer`, each with the descriptor they
    /// were encoded with.
    async fn read_table<'a>(
        &self,
        dir: &CollectionDir,
        layer: &'a Layer,
        table: TableId,
    ) -> Result<Vec<(&'a TableDescriptor, Vec<Entry>)>, BackupError> {
        let Some(desc) = layer.manifest.table(table).map(|t| &t.descriptor) else {
            return Ok(vec![]);
        };
        let mut out = Vec::new();
        for f in layer.manifest.files.iter().filter(|f| f.table_id == table) {
            let rel = format!("{}/{}", layer.dir, f.path);
            let bytes = dir.read(&rel).await?.ok_or_else(|| {
                BackupError::NotFound(format!("backup data file /{rel} does not exist"))
            })?;
            out.push((desc, decode_data(&bytes, &f.sha256, &format!("/{rel}"))?));
        }
        Ok(out)
    }

    /// Adds the writes of one backed-up row (encoded with `source`) to `batch`, re-encoded
    /// for `target`: the primary row with its non-unique index entries, and its unique index
    /// entries.
    fn add_row(
        &self,
        target: &TableDescriptor,
        source: &TableDescriptor,
        key: &[u8],
        value: &[u8],
        batch: &mut Vec<RowWrite>,
        counts: &mut Counts,
    ) -> Result<(), BackupError> {
        let row: Vec<Datum> = rowcodec::decode_row(source, key, value)?;
        let row = if source.columns == target.columns {
            row
        } else {
            rowcodec::remap_row(target, &rowcodec::named_row(source, &row))?
        };
        let pk = rowcodec::pk_bytes(target, &row);
        let encoded = rowcodec::encode_row(target, &row);
        counts.rows += 1;
        counts.bytes += (key.len() + encoded.len()) as u64;
        let dependents = rowcodec::secondary_dependents(target, Some(&row), None, &pk);
        counts.index_entries += dependents.len() as u64;
        batch.push(RowWrite {
            key: rowcodec::primary_key_from_pk(target, &pk),
            value: Some(encoded),
            condition: Condition::None,
            header: ValueHeader::default(),
            dependents,
        });
        for index in target.indexes.iter().filter(|i| i.unique) {
            if let Some(values) = rowcodec::unique_values(target, index, &row) {
                counts.index_entries += 1;
                batch.push(RowWrite {
                    key: rowcodec::unique_key(target, index, &values),
                    value: Some(pk.clone()),
                    condition: Condition::None,
                    header: ValueHeader::default(),
                    dependents: vec![],
                });
            }
        }
        Ok(())
    }

    async fn write(&self, batch: Vec<RowWrite>) -> Result<(), BackupError> {
        if batch.is_empty() {
            return Ok(());
        }
        for (_, outcome) in self.kv.write(batch, false).await? {
            if !matches!(outcome, ldr_kv::RowOutcome::Written { .. }) {
                return Err(BackupError::Io(format!(
                    "restore write was not applied: {outcome:?}"
                )));
            }
        }
        Ok(())
    }
}

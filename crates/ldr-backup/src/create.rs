//! The statements' backup half ([`BackupStatements`]): checks the URI, the options and the
//! backup chain, creates the `BACKUP` / `RESTORE` job (claimed and run by this node), holds
//! the backup's protected timestamp, and waits for the job like CockroachDB does unless
//! `WITH detached`. Also `SHOW BACKUPS IN` and `SHOW BACKUP`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use ldr_jobs::{JobStatus, JobType, Registry};
use ldr_kv::{KvClient, PtsRecord};
use ldr_sql::catalog::Catalog;
use ldr_sql::exec::{BackupRequest, BackupStatements, RestoreRequest};
use ldr_sql::parser::BackupTargets;
use ldr_sql::{Datum, SqlError, sqlstate};
use ldr_types::{NodeId, Timestamp};
use tracing::info;

use crate::chain::{self, Layer};
use crate::error::BackupError;
use crate::job::{BackupPayload, Counts, RestorePayload, RestoreTable, pts_id};
use crate::layout::{self, Collection};
use crate::manifest::{BackupType, decode_data};
use crate::storage::CollectionDir;

/// How often a waiting statement looks at its job.
const JOB_POLL_INTERVAL: Duration = Duration::from_millis(50);
/// How long a statement waits for its job before it answers with the job id only.
const JOB_WAIT_MAX: Duration = Duration::from_secs(24 * 3600);

/// Implements BACKUP, RESTORE and SHOW BACKUP(S) on this node.
pub struct BackupCreator {
    pub kv: KvClient,
    pub registry: Arc<Registry>,
    pub catalog: Arc<Catalog>,
    /// This node's `<store>/extern`.
    pub extern_dir: PathBuf,
}

fn sql(e: BackupError) -> SqlError {
    e.into_sql()
}

fn option_names(
    options: &[(String, Option<String>)],
    allowed: &[&str],
    unsupported: &[&str],
) -> Result<(), BackupError> {
    for (k, _) in options {
        if unsupported.contains(&k.as_str()) {
            return Err(BackupError::Unsupported(format!(
                "option {k} is not supported"
            )));
        }
        if !allowed.contains(&k.as_str()) {
            return Err(BackupError::InvalidOption(format!(
                "invalid option \"{k}\""
            )));
        }
    }
    Ok(())
}

fn option<'a>(options: &'a [(String, Option<String>)], name: &str) -> Option<&'a str> {
    options
        .iter()
        .find(|(k, _)| k == name)
        .and_then(|(_, v)| v.as_deref())
}

fn ts_datum(ts: Timestamp) -> Datum {
    Datum::Timestamp((ts.wall_time_ns / 1000) as i64)
}

impl BackupCreator {
    /// The directory of a collection URI, on the node it names (`self`: this node), and
    /// that node's id.
    async fn collection(
        &self,
        uri: &str,
    ) -> Result<(Collection, CollectionDir, NodeId), BackupError> {
        let c = layout::parse_collection(uri)?;
        let node: NodeId = c.node.unwrap_or(self.kv.node_id());
        let dir = CollectionDir::on_node(&self.kv, &self.extern_dir, Some(node), &c.path).await?;
        Ok((c, dir, node))
    }

    /// Waits for a job to finish: its result row, or its error with its SQLSTATE.
    async fn wait(&self, job_id: i64) -> ldr_sql::Result<Vec<Datum>> {
        let deadline = Instant::now() + JOB_WAIT_MAX;
        loop {
            let job = self
                .registry
                .get(job_id)
                .await
                .map_err(|e| SqlError::internal(e.to_string()))?;
            if job.status.is_terminal() {
                if job.status != JobStatus::Succeeded {
                    let code = job
                        .progress
                        .get("sqlstate")
                        .and_then(|v| v.as_str())
                        .and_then(|c| known_code(c))
                        .unwrap_or(sqlstate::INTERNAL_ERROR);
                    let message = job
                        .error
                        .clone()
                        .unwrap_or_else(|| format!("job {job_id} {}", job.status.as_str()));
                    return Err(SqlError::new(code, message));
                }
                let counts: Counts =
                    serde_json::from_value(job.progress.clone()).unwrap_or_default();
                return Ok(vec![
                    Datum::Int(job_id),
                    Datum::String(job.status.as_str().into()),
                    Datum::Float(job.fraction_completed),
                    Datum::Int(counts.rows as i64),
                    Datum::Int(counts.index_entries as i64),
                    Datum::Int(counts.bytes as i64),
                ]);
            }
            if Instant::now() > deadline {
                return Err(SqlError::new(
                    sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE,
                    format!("job {job_id} is still running; see SHOW JOB {job_id}"),
                ));
            }
            tokio::time::sleep(JOB_POLL_INTERVAL).await;
        }
    }

    async fn chain(
        &self,
        dir: &CollectionDir,
        subdir: &str,
        uri: &str,
    ) -> Result<(String, Vec<Layer>), BackupError> {
        let full = chain::resolve_subdir(dir, subdir, uri).await?;
        let layers = chain::load_chain(dir, &full, uri).await?;
        Ok((full, layers))
    }
}

/// The SQLSTATEs a job may record (a `&'static str` for [`SqlError::new`]).
fn known_code(code: &str) -> Option<&'static str> {
    [
        crate::error::UNDEFINED_FILE,
        crate::error::DATA_CORRUPTED,
        crate::error::IO_ERROR,
        sqlstate::INVALID_PARAMETER_VALUE,
        sqlstate::FEATURE_NOT_SUPPORTED,
        sqlstate::INSUFFICIENT_PRIVILEGE,
        sqlstate::DUPLICATE_TABLE,
        sqlstate::DUPLICATE_DATABASE,
        sqlstate::UNDEFINED_TABLE,
        sqlstate::INVALID_CATALOG_NAME,
        sqlstate::RANGE_UNAVAILABLE,
        sqlstate::SERIALIZATION_FAILURE,
        sqlstate::INTERNAL_ERROR,
    ]
    .into_iter()
    .find(|c| *c == code)
}

#[async_trait]
impl BackupStatements for BackupCreator {
    async fn backup(&self, request: BackupRequest) -> ldr_sql::Result<Vec<Vec<Datum>>> {
        let stmt = &request.statement;
        option_names(
            &stmt.options,
            &["detached"],
            &[
                "revision_history",
                "encryption_passphrase",
                "kms",
                "incremental_location",
            ],
        )
        .map_err(sql)?;
        let (collection, dir, storage_node) =
            self.collection(&stmt.collection).await.map_err(sql)?;
        let end = request.end_time;
        let table_ids: Vec<_> = request.tables.iter().map(|t| t.descriptor.id).collect();
        let (backup_type, full_subdir, layer_dir, start, previous) = if stmt.incremental {
            let (full, layers) = self
                .chain(&dir, "LATEST", &stmt.collection)
                .await
                .map_err(sql)?;
            let last = &layers.last().expect("a chain has its full layer").manifest;
            if end <= last.end() {
                return Err(SqlError::new(
                    sqlstate::INVALID_PARAMETER_VALUE,
                    format!(
                        "backup end time {} must be after the previous backup's end time {}",
                        end.to_decimal_string(),
                        last.end_time
                    ),
                ));
            }
            let previous: Vec<_> = last.tables.iter().map(|t| t.descriptor.id).collect();
            let dir_name = layout::incremental_dir(&full, last.end(), end);
            (
                BackupType::Incremental,
                full,
                dir_name,
                last.end(),
                previous,
            )
        } else {
            let mut subdir = layout::full_subdir(end);
            let base = subdir.clone();
            let mut n = 0;
            // A name taken by a complete backup (another in the same hundredth of a second).
            while dir
                .read(&format!(
                    "{}/{}",
                    subdir.trim_start_matches('/'),
                    layout::MANIFEST_FILE
                ))
                .await
                .map_err(sql)?
                .is_some()
            {
                n += 1;
                subdir = format!("{base}.{n}");
            }
            let rel = subdir.trim_start_matches('/').to_string();
            (BackupType::Full, subdir, rel, Timestamp::ZERO, vec![])
        };
        let payload = BackupPayload {
            node_id: storage_node,
            collection_uri: stmt.collection.clone(),
            collection_path: collection.path.clone(),
            layer_dir,
            full_subdir,
            backup_type,
            start_time: start.to_decimal_string(),
            end_time: end.to_decimal_string(),
            table_ids,
            previous_table_ids: previous,
            databases: request.databases.clone(),
        };
        let value = serde_json::to_value(&payload)
            .map_err(|e| SqlError::internal(format!("cannot encode backup payload: {e}")))?;
        let job_id = self
            .registry
            .create(
                JobType::Backup,
                stmt.statement.clone(),
                request.user.clone(),
                value,
                serde_json::json!({}),
            )
            .await
            .map_err(|e| SqlError::internal(e.to_string()))?;
        // An incremental layer also reads at its start time (rows deleted since).
        let protect_at = if start.is_zero() { end } else { start };
        if let Err(e) = self
            .kv
            .protect(PtsRecord {
                id: pts_id(job_id),
                ts: protect_at,
                owner: format!("job {job_id}"),
            })
            .await
        {
            let _ = self.registry.cancel(job_id).await;
            return Err(e.into());
        }
        info!(job_id, kind = backup_type.as_str(), end = %end, "created backup job");
        if stmt.options.iter().any(|(k, _)| k == "detached") {
            return Ok(vec![vec![Datum::Int(job_id)]]);
        }
        Ok(vec![self.wait(job_id).await?])
    }

    async fn restore(&self, request: RestoreRequest) -> ldr_sql::Result<Vec<Vec<Datum>>> {
        let stmt = &request.statement;
        option_names(
            &stmt.options,
            &[
                "detached",
                "into_db",
                "new_db_name",
                "skip_missing_foreign_keys",
            ],
            &[
                "encryption_passphrase",
                "kms",
                "incremental_location",
                "schema_only",
            ],
        )
        .map_err(sql)?;
        let (collection, dir, storage_node) =
            self.collection(&stmt.collection).await.map_err(sql)?;
        let (full, layers) = self
            .chain(&dir, &stmt.subdir, &stmt.collection)
            .await
            .map_err(sql)?;
        let last = &layers.last().expect("a chain has its full layer").manifest;
        let into_db = option(&stmt.options, "into_db");
        let new_db_name = option(&stmt.options, "new_db_name");
        let mut tables = Vec::new();
        let mut create_databases = Vec::new();
        match &stmt.targets {
            BackupTargets::Tables(names) => {
                if new_db_name.is_some() {
                    return Err(SqlError::new(
                        sqlstate::INVALID_PARAMETER_VALUE,
                        "new_db_name can only be used for RESTORE DATABASE with a single target database",
                    ));
                }
                for name in names {
                    let (db, table) = match name.as_slice() {
                        [t] => (None, t),
                        [d, t] | [d, _, t] => (Some(d.as_str()), t),
                        _ => {
                            return Err(SqlError::new(
                                sqlstate::INVALID_NAME,
                                format!("invalid table name: {}", name.join(".")),
                            ));
                        }
                    };
                    let db = db.unwrap_or(&request.database);
                    let found = last
                        .tables
                        .iter()
                        .find(|t| &t.descriptor.name == table && t.descriptor.database == db)
                        .ok_or_else(|| {
                            SqlError::new(
                                sqlstate::UNDEFINED_TABLE,
                                format!(
                                    "failed to resolve targets specified in the RESTORE stmt: table \"{}\" does not exist in the backup",
                                    name.join(".")
                                ),
                            )
                        })?;
                    tables.push(RestoreTable {
                        backup_id: found.descriptor.id,
                        database: into_db.unwrap_or(&found.descriptor.database).to_string(),
                        name: found.descriptor.name.clone(),
                    });
                }
            }
            BackupTargets::Databases(names) => {
                if into_db.is_some() {
                    return Err(SqlError::new(
                        sqlstate::INVALID_PARAMETER_VALUE,
                        "cannot use \"into_db\" option when restoring database(s)",
                    ));
                }
                if new_db_name.is_some() && names.len() != 1 {
                    return Err(SqlError::new(
                        sqlstate::INVALID_PARAMETER_VALUE,
                        "new_db_name can only be used for RESTORE DATABASE with a single target database",
                    ));
                }
                for name in names {
                    if !last.databases.contains(name) {
                        return Err(SqlError::new(
                            sqlstate::INVALID_CATALOG_NAME,
                            format!(
                                "database \"{name}\" does not exist in the backup (back it up with BACKUP DATABASE {name})"
                            ),
                        ));
                    }
                    let target = new_db_name.unwrap_or(name).to_string();
                    if self.catalog.database(&target).await?.is_some() {
                        return Err(SqlError::new(
                            sqlstate::DUPLICATE_DATABASE,
                            format!("database \"{target}\" already exists"),
                        ));
                    }
                    for t in last
                        .tables
                        .iter()
                        .filter(|t| &t.descriptor.database == name)
                    {
                        tables.push(RestoreTable {
                            backup_id: t.descriptor.id,
                            database: target.clone(),
                            name: t.descriptor.name.clone(),
                        });
                    }
                    create_databases.push(target);
                }
            }
        }
        // A foreign key to a table this restore does not bring needs the user's consent.
        let skip_missing = stmt
            .options
            .iter()
            .any(|(k, _)| k == "skip_missing_foreign_keys");
        for t in &tables {
            let Some(source) = last.table(t.backup_id) else {
                continue;
            };
            for fk in &source.descriptor.foreign_keys {
                if !skip_missing && !tables.iter().any(|o| o.backup_id == fk.ref_table_id) {
                    return Err(SqlError::new(
                        sqlstate::INVALID_PARAMETER_VALUE,
                        format!(
                            "cannot restore table \"{}\" without referenced table {} (or \"skip_missing_foreign_keys\" option)",
                            t.name, fk.ref_table_id
                        ),
                    ));
                }
            }
        }
        // Target databases exist (unless the restore creates them); names are free.
        for t in &tables {
            if create_databases.contains(&t.database) {
                continue;
            }
            let Some(db) = self.catalog.database(&t.database).await? else {
                return Err(SqlError::new(
                    sqlstate::INVALID_CATALOG_NAME,
                    format!(
                        "a database named \"{}\" needs to exist to restore table \"{}\"",
                        t.database, t.name
                    ),
                ));
            };
            if self
                .catalog
                .table(db.id, "public", &t.name)
                .await?
                .is_some()
            {
                return Err(SqlError::new(
                    sqlstate::DUPLICATE_TABLE,
                    format!("relation \"{}\" already exists", t.name),
                ));
            }
        }
        let payload = RestorePayload {
            node_id: storage_node,
            collection_uri: stmt.collection.clone(),
            collection_path: collection.path.clone(),
            full_subdir: full,
            tables,
            create_databases,
        };
        let value = serde_json::to_value(&payload)
            .map_err(|e| SqlError::internal(format!("cannot encode restore payload: {e}")))?;
        let job_id = self
            .registry
            .create(
                JobType::Restore,
                stmt.statement.clone(),
                request.user.clone(),
                value,
                serde_json::json!({}),
            )
            .await
            .map_err(|e| SqlError::internal(e.to_string()))?;
        info!(job_id, "created restore job");
        if stmt.options.iter().any(|(k, _)| k == "detached") {
            return Ok(vec![vec![Datum::Int(job_id)]]);
        }
        Ok(vec![self.wait(job_id).await?])
    }

    async fn show_backups(&self, collection: &str) -> ldr_sql::Result<Vec<Vec<Datum>>> {
        let (_, dir, _) = self.collection(collection).await.map_err(sql)?;
        let found = dir
            .dirs_with("", layout::MANIFEST_FILE, 3)
            .await
            .map_err(sql)?;
        Ok(found
            .into_iter()
            .filter(|d| layout::is_full_subdir(d))
            .map(|d| vec![Datum::String(format!("/{d}"))])
            .collect())
    }

    async fn show_backup(
        &self,
        subdir: &str,
        collection: &str,
    ) -> ldr_sql::Result<Vec<Vec<Datum>>> {
        let (_, dir, _) = self.collection(collection).await.map_err(sql)?;
        let (_, layers) = self.chain(&dir, subdir, collection).await.map_err(sql)?;
        let mut rows = Vec::new();
        for layer in &layers {
            let m = &layer.manifest;
            // Every data file is read and checked: a corrupt file shows here, not at restore.
            for f in &m.files {
                let rel = format!("{}/{}", layer.dir, f.path);
                let bytes = dir.read(&rel).await.map_err(sql)?.ok_or_else(|| {
                    sql(BackupError::NotFound(format!(
                        "backup data file /{rel} does not exist"
                    )))
                })?;
                decode_data(&bytes, &f.sha256, &format!("/{rel}")).map_err(sql)?;
            }
            let start = if m.backup_type == BackupType::Full {
                Datum::Null
            } else {
                ts_datum(m.start())
            };
            let common =
                |db: &str, schema: Datum, name: &str, kind: &str, size: Datum, n: Datum| {
                    vec![
                        Datum::String(db.to_string()),
                        schema,
                        Datum::String(name.to_string()),
                        Datum::String(kind.to_string()),
                        Datum::String(m.backup_type.as_str().to_string()),
                        start.clone(),
                        ts_datum(m.end()),
                        size,
                        n,
                        Datum::Bool(false),
                    ]
                };
            for db in &m.databases {
                rows.push(common(
                    db,
                    Datum::Null,
                    db,
                    "database",
                    Datum::Null,
                    Datum::Null,
                ));
            }
            for t in &m.tables {
                let d = &t.descriptor;
                rows.push(common(
                    &d.database,
                    Datum::String(d.schema.clone()),
                    &d.name,
                    "table",
                    Datum::Int(t.bytes as i64),
                    Datum::Int(t.rows as i64),
                ));
            }
        }
        Ok(rows)
    }
}

//! `BACKUP`, `RESTORE`, `SHOW BACKUPS IN` and `SHOW BACKUP FROM … IN`: the SQL layer's half
//! (single statement, targets resolved, privileges, the `AS OF SYSTEM TIME` timestamp checked
//! against the GC threshold), then the [`BackupStatements`] hook, which the server implements
//! with the backup crate (files, manifests, the `BACKUP` / `RESTORE` jobs).
//!
//! Also `SELECT … AS OF SYSTEM TIME`: the session reads at the clause's timestamp for that
//! statement ([`select_as_of`]).

use ldr_types::Timestamp;

use super::ldr::ResolvedTable;
use super::result::col;
use super::{ColumnInfo, QueryResult, Session, privilege, resolve};
use crate::asof;
use crate::datum::Datum;
use crate::error::{Result, SqlError, sqlstate};
use crate::parser::{AsOf, BackupStmt, BackupTargets, Query, RestoreStmt};
use crate::types::SqlType;

/// Everything the backup layer needs to run a BACKUP.
#[derive(Debug, Clone)]
pub struct BackupRequest {
    pub statement: BackupStmt,
    /// The tables to back up (every table of the named databases for `BACKUP DATABASE`).
    pub tables: Vec<ResolvedTable>,
    /// `BACKUP DATABASE`: the databases named.
    pub databases: Vec<String>,
    /// The timestamp the backup reads at (`AS OF SYSTEM TIME`, else now).
    pub end_time: Timestamp,
    pub user: String,
}

/// Everything the backup layer needs to run a RESTORE.
#[derive(Debug, Clone)]
pub struct RestoreRequest {
    pub statement: RestoreStmt,
    /// The session's database: `RESTORE TABLE t` names the backed-up `t` of this database.
    pub database: String,
    pub user: String,
}

/// Implemented by the server (with `ldr-backup`). Each returns rows in the column order of
/// [`backup_columns`], [`show_backups_columns`] and [`show_backup_columns`].
#[async_trait::async_trait]
pub trait BackupStatements: Send + Sync {
    async fn backup(&self, request: BackupRequest) -> Result<Vec<Vec<Datum>>>;
    async fn restore(&self, request: RestoreRequest) -> Result<Vec<Vec<Datum>>>;
    async fn show_backups(&self, collection: &str) -> Result<Vec<Vec<Datum>>>;
    async fn show_backup(&self, subdir: &str, collection: &str) -> Result<Vec<Vec<Datum>>>;
}

/// CockroachDB's result columns of BACKUP and RESTORE.
pub fn backup_columns() -> Vec<ColumnInfo> {
    vec![
        col("job_id", SqlType::Int8),
        col("status", SqlType::String),
        col("fraction_completed", SqlType::Float8),
        col("rows", SqlType::Int8),
        col("index_entries", SqlType::Int8),
        col("bytes", SqlType::Int8),
    ]
}

/// `… WITH detached`: only the job id.
pub fn detached_columns() -> Vec<ColumnInfo> {
    vec![col("job_id", SqlType::Int8)]
}

/// `SHOW BACKUPS IN`: one subdirectory per full backup.
pub fn show_backups_columns() -> Vec<ColumnInfo> {
    vec![col("path", SqlType::String)]
}

/// `SHOW BACKUP`: one row per database and table per layer (CockroachDB's columns).
pub fn show_backup_columns() -> Vec<ColumnInfo> {
    vec![
        col("database_name", SqlType::String),
        col("parent_schema_name", SqlType::String),
        col("object_name", SqlType::String),
        col("object_type", SqlType::String),
        col("backup_type", SqlType::String),
        col("start_time", SqlType::Timestamp),
        col("end_time", SqlType::Timestamp),
        col("size_bytes", SqlType::Int8),
        col("rows", SqlType::Int8),
        col("is_full_cluster", SqlType::Bool),
    ]
}

fn is_detached(options: &[(String, Option<String>)]) -> bool {
    options.iter().any(|(k, _)| k == "detached")
}

/// The result columns of a backup statement (for Describe).
pub(crate) fn describe(stmt: &crate::parser::Statement) -> Option<Vec<ColumnInfo>> {
    use crate::parser::Statement as S;
    Some(match stmt {
        S::Backup(b) if is_detached(&b.options) => detached_columns(),
        S::Restore(r) if is_detached(&r.options) => detached_columns(),
        S::Backup(_) | S::Restore(_) => backup_columns(),
        S::ShowBackups { .. } => show_backups_columns(),
        S::ShowBackup { .. } => show_backup_columns(),
        _ => return None,
    })
}

/// CockroachDB: a `nodelocal://` URI needs the admin role or EXTERNALIOIMPLICITACCESS.
async fn require_nodelocal_access(sess: &Session) -> Result<()> {
    let catalog = &sess.server.catalog;
    if privilege::is_admin(catalog, &sess.user).await?
        || privilege::has_system_privilege(catalog, &sess.user, "EXTERNALIOIMPLICITACCESS").await?
    {
        return Ok(());
    }
    Err(SqlError::insufficient_privilege(
        "only users with the admin role or the EXTERNALIOIMPLICITACCESS system privilege are allowed to access the specified nodelocal URI",
    ))
}

fn hook(sess: &Session) -> Result<std::sync::Arc<dyn BackupStatements>> {
    sess.server
        .backups()
        .ok_or_else(|| SqlError::unsupported("backups are not available on this node"))
}

fn refuse_in_txn(sess: &Session, in_batch: bool, what: &str) -> Result<()> {
    if sess.in_txn() || in_batch {
        return Err(SqlError::new(
            sqlstate::ACTIVE_SQL_TRANSACTION,
            format!("{what} cannot be used inside a multi-statement transaction"),
        ));
    }
    Ok(())
}

/// The timestamp `as_of` names now, refused at or below the GC threshold the cluster's
/// policy allows (`gc.ttlseconds`, protected timestamps).
pub(crate) async fn resolve_as_of(sess: &Session, as_of: &AsOf) -> Result<Timestamp> {
    let kv = &sess.server.kv;
    let now = kv.clock().now();
    let ts = asof::resolve(as_of, now)?;
    let protected: Vec<Timestamp> = kv.protections().await?.into_iter().map(|p| p.ts).collect();
    let threshold = asof::policy_gc_threshold(now, kv.settings().int("gc.ttlseconds"), &protected);
    asof::check_gc_threshold(ts, threshold)?;
    Ok(ts)
}

/// `SELECT … AS OF SYSTEM TIME …`: the query, read at the clause's timestamp.
pub(crate) async fn select_as_of(
    sess: &mut Session,
    query: &Query,
    as_of: &AsOf,
    params: Vec<Datum>,
) -> Result<QueryResult> {
    if sess.in_txn() {
        return Err(SqlError::new(
            sqlstate::FEATURE_NOT_SUPPORTED,
            "AS OF SYSTEM TIME must be provided on a top-level statement outside an explicit transaction",
        ));
    }
    let ts = resolve_as_of(sess, as_of).await?;
    sess.as_of = Some(ts);
    let r = super::select::execute_query(sess, query, params).await;
    sess.as_of = None;
    r
}

pub(crate) async fn backup(
    sess: &mut Session,
    stmt: &BackupStmt,
    in_batch: bool,
) -> Result<QueryResult> {
    refuse_in_txn(sess, in_batch, "BACKUP")?;
    require_nodelocal_access(sess).await?;
    let catalog = &sess.server.catalog;
    let mut tables: Vec<ResolvedTable> = Vec::new();
    let mut databases = Vec::new();
    match &stmt.targets {
        BackupTargets::Tables(names) => {
            for name in names {
                let desc = resolve::resolve_table(catalog, sess.database(), name).await?;
                if tables.iter().any(|t| t.descriptor.id == desc.id) {
                    continue;
                }
                tables.push(ResolvedTable {
                    database: desc.database.clone(),
                    schema: desc.schema.clone(),
                    name: desc.name.clone(),
                    descriptor: desc,
                });
            }
        }
        BackupTargets::Databases(names) => {
            for name in names {
                let db = catalog.require_database(name).await?;
                databases.push(db.name.clone());
                for desc in catalog.tables_in(db.id).await? {
                    tables.push(ResolvedTable {
                        database: desc.database.clone(),
                        schema: desc.schema.clone(),
                        name: desc.name.clone(),
                        descriptor: desc,
                    });
                }
            }
        }
    }
    // CockroachDB: the BACKUP privilege (or admin); we take SELECT on every table.
    for t in &tables {
        if !privilege::has_table_privilege(catalog, &sess.user, &t.descriptor, "SELECT").await?
            && !privilege::has_table_privilege(catalog, &sess.user, &t.descriptor, "BACKUP").await?
        {
            return Err(SqlError::insufficient_privilege(format!(
                "user {} does not have SELECT privilege on relation {}",
                sess.user, t.name
            )));
        }
    }
    let end_time = match &stmt.as_of {
        Some(a) => resolve_as_of(sess, a).await?,
        None => sess.server.kv.clock().now(),
    };
    let hook = hook(sess)?;
    let rows = hook
        .backup(BackupRequest {
            statement: stmt.clone(),
            tables,
            databases,
            end_time,
            user: sess.user.clone(),
        })
        .await?;
    let columns = if is_detached(&stmt.options) {
        detached_columns()
    } else {
        backup_columns()
    };
    Ok(QueryResult::rows(columns, rows))
}

pub(crate) async fn restore(
    sess: &mut Session,
    stmt: &RestoreStmt,
    in_batch: bool,
) -> Result<QueryResult> {
    refuse_in_txn(sess, in_batch, "RESTORE")?;
    privilege::require_admin(sess, "RESTORE").await?;
    let hook = hook(sess)?;
    let rows = hook
        .restore(RestoreRequest {
            statement: stmt.clone(),
            database: sess.database().to_string(),
            user: sess.user.clone(),
        })
        .await?;
    let columns = if is_detached(&stmt.options) {
        detached_columns()
    } else {
        backup_columns()
    };
    Ok(QueryResult::rows(columns, rows))
}

pub(crate) async fn show_backups(sess: &mut Session, collection: &str) -> Result<QueryResult> {
    require_nodelocal_access(sess).await?;
    let hook = hook(sess)?;
    let rows = hook.show_backups(collection).await?;
    Ok(QueryResult::rows(show_backups_columns(), rows))
}

pub(crate) async fn show_backup(
    sess: &mut Session,
    subdir: &str,
    collection: &str,
) -> Result<QueryResult> {
    require_nodelocal_access(sess).await?;
    let hook = hook(sess)?;
    let rows = hook.show_backup(subdir, collection).await?;
    Ok(QueryResult::rows(show_backup_columns(), rows))
}

//! The executor: a [`SqlServer`] per node (catalog, KV client, job registry, replication
//! hook) and a [`Session`] per connection that runs statements.
//!
//! Reads go to the KV layer at a timestamp taken when the statement starts; writes go through
//! `write.rs` (conditional writes, unique-index claims). In an explicit transaction, writes
//! are buffered in the session and applied at COMMIT; reads see committed data plus the
//! transaction's own writes, and are validated optimistically (`txn.rs`): a row the
//! transaction read that changed before its COMMIT fails the statement that notices or the
//! COMMIT with 40001, with nothing applied. Limits (documented departures from CockroachDB):
//! a statement outside a transaction that writes several ranges is atomic per range, not
//! across ranges (each row conditional on the value it read, retried on conflict); a COMMIT
//! that writes several ranges undoes the ranges it wrote when a later one conflicts, and is
//! only left partly applied (40003) if that undo itself races with another writer; scans do
//! not detect phantoms; read-only transactions are not validated; DDL inside a transaction
//! takes effect immediately and is not undone by ROLLBACK; a query string with several
//! statements is not an implicit transaction (statements before a failing one stay applied).

mod activity;
mod backup;
mod changefeed;
mod consistency;
mod ddl;
mod dml;
mod jobs;
mod ldr;
mod privilege;
mod resolve;
mod result;
mod row_stream;
mod rows;
mod scan;
mod select;
pub mod session;
mod show;
mod show_create;
mod ttl;
mod txn;
mod txn_buffer;
mod upsert;
mod virtual_tables;
mod write;

use std::sync::Arc;

use ldr_jobs::Registry;
use ldr_kv::KvClient;
use ldr_types::JobId;
use parking_lot::RwLock;

pub use self::backup::{
    BackupRequest, BackupStatements, RestoreRequest, backup_columns, detached_columns,
    show_backup_columns, show_backups_columns,
};
pub use self::changefeed::{ChangefeedRequest, ChangefeedStatements};
pub use self::ldr::{
    LdrStreamRequest, LogicalReplicationJobInfo, ReplicationStatements, ResolvedTable,
};
pub use self::privilege::{SYSTEM_PRIVILEGES, TABLE_PRIVILEGES};
pub use self::result::{ColumnInfo, QueryResult, TxnEffect, TxnStatus};
pub use self::row_stream::{RowSender, RowStream};
pub use self::session::SessionVars;
pub use self::show::{fingerprints, redact_uri};
pub use self::ttl::{TtlStats, TtlTable};
use crate::catalog::{Catalog, TableDescriptor, UserRecord};
use crate::datum::Datum;
use crate::error::{Result, SqlError, sqlstate};
use crate::expr::EvalCtx;
use crate::parser::{self, Statement};
use crate::types::SqlType;
pub use crate::validated::{ValidatedOutcome, ValidatedWrite, ValidatedWriter};

/// PostgreSQL's text for a failed password login (28P01): the same for an unknown user, a
/// wrong password and a user without one, so a client learns nothing about which.
pub fn password_failed(user: &str) -> SqlError {
    SqlError::new(
        sqlstate::INVALID_PASSWORD,
        format!("password authentication failed for user \"{user}\""),
    )
}

/// Server options.
#[derive(Debug, Clone)]
pub struct SqlConfig {
    /// `--insecure`: passwords are not checked at login, and connections are plain text.
    /// Otherwise (secure mode) a client must use TLS and log in with a client certificate or
    /// a password (SCRAM-SHA-256).
    pub insecure: bool,
}

impl Default for SqlConfig {
    fn default() -> Self {
        SqlConfig { insecure: true }
    }
}

/// The SQL layer of one node.
pub struct SqlServer {
    pub(crate) kv: KvClient,
    pub(crate) catalog: Catalog,
    pub(crate) jobs: Arc<Registry>,
    replication: RwLock<Option<Arc<dyn ReplicationStatements>>>,
    changefeeds: RwLock<Option<Arc<dyn ChangefeedStatements>>>,
    backups: RwLock<Option<Arc<dyn BackupStatements>>>,
    config: SqlConfig,
    /// This gateway's row locks (see `txn.rs`).
    pub(crate) row_locks: txn::RowLocks,
    /// The node's SQL memory, shared by its statements (see [`crate::budget`]).
    pub(crate) memory: Arc<crate::budget::NodeMemory>,
    /// Statement counts and latency (`/metrics`, the DB Console).
    stats: crate::stats::SqlStats,
    /// The sessions' open transactions (`SHOW TRANSACTIONS`).
    pub(crate) open_txns: Arc<activity::OpenTxns>,
}

impl SqlServer {
    /// Builds the SQL layer over a node's KV client and job registry, and makes sure the
    /// objects every cluster has exist (`defaultdb`, `postgres`, `system`, users `root` and
    /// `admin`). Idempotent and safe to run on every node at start.
    pub async fn start(
        kv: KvClient,
        jobs: Arc<Registry>,
        config: SqlConfig,
    ) -> Result<Arc<SqlServer>> {
        let server = Arc::new(SqlServer {
            catalog: Catalog::new(kv.clone()),
            kv,
            jobs,
            replication: RwLock::new(None),
            changefeeds: RwLock::new(None),
            backups: RwLock::new(None),
            config,
            row_locks: txn::RowLocks::default(),
            open_txns: Arc::default(),
            memory: crate::budget::NodeMemory::new(crate::budget::NodeMemory::default_limit()),
            stats: crate::stats::SqlStats::default(),
        });
        server.bootstrap().await?;
        Ok(server)
    }

    async fn bootstrap(&self) -> Result<()> {
        for db in ["defaultdb", "postgres", "system"] {
            if self.catalog.database(db).await?.is_none() {
                self.catalog.create_database(db, "root").await?;
            }
        }
        for name in ["root", "admin"] {
            if self.catalog.user(name).await?.is_none() {
                let mut u = UserRecord::new(name);
                u.login = name == "root";
                self.catalog.create_user(&u).await?;
            }
        }
        Ok(())
    }

    /// Installs the implementation of `CREATE LOGICAL REPLICATION STREAM`.
    pub fn set_replication_statements(&self, r: Arc<dyn ReplicationStatements>) {
        *self.replication.write() = Some(r);
    }

    pub(crate) fn replication(&self) -> Option<Arc<dyn ReplicationStatements>> {
        self.replication.read().clone()
    }

    /// Installs the implementation of `CREATE CHANGEFEED`.
    pub fn set_changefeed_statements(&self, c: Arc<dyn ChangefeedStatements>) {
        *self.changefeeds.write() = Some(c);
    }

    pub(crate) fn changefeeds(&self) -> Option<Arc<dyn ChangefeedStatements>> {
        self.changefeeds.read().clone()
    }

    /// Installs the implementation of BACKUP, RESTORE and SHOW BACKUP(S).
    pub fn set_backup_statements(&self, b: Arc<dyn BackupStatements>) {
        *self.backups.write() = Some(b);
    }

    pub(crate) fn backups(&self) -> Option<Arc<dyn BackupStatements>> {
        self.backups.read().clone()
    }

    pub fn kv(&self) -> &KvClient {
        &self.kv
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    pub fn jobs(&self) -> &Arc<Registry> {
        &self.jobs
    }

    /// Statement counts and latency of this gateway.
    pub fn stats(&self) -> &crate::stats::SqlStats {
        &self.stats
    }

    pub fn config(&self) -> &SqlConfig {
        &self.config
    }

    /// Checks a login: the user must exist and may log in; outside insecure mode the password
    /// must match (a user without a password, root included, cannot log in by password).
    /// Errors are 28000/28P01 as PostgreSQL.
    pub async fn authenticate(&self, user: &str, password: Option<&str>) -> Result<()> {
        let record = self.login_record(user).await?;
        if self.config.insecure {
            return Ok(());
        }
        match password {
            Some(p) if record.check_password(p) => Ok(()),
            _ => Err(password_failed(user)),
        }
    }

    /// The record of a user who may log in (28P01 if unknown, 28000 without LOGIN), for a
    /// login whose credentials were checked elsewhere (a client certificate, SCRAM).
    pub async fn login_record(&self, user: &str) -> Result<UserRecord> {
        let record = self
            .catalog
            .user(user)
            .await?
            .ok_or_else(|| password_failed(user))?;
        if !record.login {
            return Err(SqlError::new(
                sqlstate::INVALID_AUTHORIZATION,
                format!("role \"{user}\" is not permitted to log in"),
            ));
        }
        Ok(record)
    }

    /// Whether a login needs a password (not in insecure mode).
    pub fn requires_password(&self) -> bool {
        !self.config.insecure
    }

    /// A new session for an authenticated user. An unknown database is accepted as
    /// CockroachDB does (statements that need it fail with 3D000).
    /// A session of the internal user `node`, as CockroachDB's internal executor: an admin
    /// that no login can use. Objects it creates (the DLQ tables) are owned by `node`.
    pub fn node_session(self: &Arc<Self>, database: &str) -> Session {
        let db = if database.is_empty() {
            "defaultdb"
        } else {
            database
        };
        Session {
            server: self.clone(),
            user: "node".to_string(),
            vars: SessionVars::new("node", db, true, self.kv.node_id()),
            txn: Txn::Idle,
            show_sources: vec![],
            as_of: None,
            limits: None,
            cancel: None,
            session_id: uuid::Uuid::new_v4().simple().to_string(),
            open_txn: None,
        }
    }

    pub async fn session(self: &Arc<Self>, user: &str, database: &str) -> Result<Session> {
        let record = self
            .catalog
            .user(user)
            .await?
            .ok_or_else(|| password_failed(user))?;
        let db = if database.is_empty() {
            "defaultdb"
        } else {
            database
        };
        Ok(Session {
            server: self.clone(),
            user: user.to_string(),
            vars: SessionVars::new(user, db, record.is_admin(), self.kv.node_id()),
            txn: Txn::Idle,
            show_sources: vec![],
            as_of: None,
            limits: None,
            cancel: None,
            session_id: uuid::Uuid::new_v4().simple().to_string(),
            open_txn: None,
        })
    }

    /// Runs SQL as `user` in `database` (for internal callers: DLQ tables, tests). Stops at
    /// the first error.
    pub async fn execute_as(
        self: &Arc<Self>,
        user: &str,
        database: &str,
        sql: &str,
    ) -> Result<Vec<QueryResult>> {
        let mut s = self.session(user, database).await?;
        let mut out = Vec::new();
        for r in s.execute(sql).await {
            out.push(r?);
        }
        Ok(out)
    }

    /// Resolves a table name as written (`t`, `db.t`, `db.public.t`) with `database` as the
    /// default database.
    pub async fn resolve_table(
        &self,
        database: &str,
        name: &[String],
    ) -> Result<Arc<TableDescriptor>> {
        resolve::resolve_table(&self.catalog, database, name).await
    }

    /// The URI of an external connection.
    pub async fn external_connection_uri(&self, name: &str) -> Result<Option<String>> {
        Ok(self.catalog.external_connection(name).await?.map(|c| c.uri))
    }

    /// Whether `user` holds a system privilege (admins hold all; `REPLICATION` implies
    /// `REPLICATIONSOURCE` and `REPLICATIONDEST`).
    pub async fn has_system_privilege(&self, user: &str, privilege: &str) -> Result<bool> {
        privilege::has_system_privilege(&self.catalog, user, privilege).await
    }

    /// Whether `user` holds a privilege on a table (owner and admins hold all).
    pub async fn has_table_privilege(
        &self,
        user: &str,
        table: &TableDescriptor,
        privilege: &str,
    ) -> Result<bool> {
        privilege::has_table_privilege(&self.catalog, user, table, privilege).await
    }

    /// Locks a table's schema for an LDR job (idempotent).
    pub async fn lock_table_schema(
        &self,
        table_id: ldr_types::TableId,
        job_id: JobId,
    ) -> Result<Arc<TableDescriptor>> {
        crate::validation::lock(&self.catalog, table_id, job_id).await
    }

    /// Sets the node's SQL memory (`ldr start --max-sql-memory`), shared by its statements.
    pub fn set_max_sql_memory(&self, bytes: u64) {
        self.memory.set_limit(bytes);
    }

    /// Bytes the node's running statements hold now.
    pub fn sql_memory_used(&self) -> u64 {
        self.memory.used()
    }

    /// Releases an LDR job's schema lock on a table (idempotent; a dropped table is fine).
    pub async fn unlock_table_schema(
        &self,
        table_id: ldr_types::TableId,
        job_id: JobId,
    ) -> Result<()> {
        crate::validation::unlock(&self.catalog, table_id, job_id).await
    }

    /// Applies one replicated row through the SQL write path (validated mode): NOT NULL,
    /// CHECK, FOREIGN KEY and UNIQUE are enforced, and the primary row is written with the
    /// LWW condition and the given header. See [`ValidatedWrite`].
    pub async fn apply_validated(&self, write: ValidatedWrite) -> Result<ValidatedOutcome> {
        write::apply_validated(self, write).await
    }
}

#[async_trait::async_trait]
impl ValidatedWriter for SqlServer {
    async fn apply_validated(&self, write: ValidatedWrite) -> Result<ValidatedOutcome> {
        write::apply_validated(self, write).await
    }
}

/// The explicit transaction of a session.
pub(crate) enum Txn {
    Idle,
    Open(txn_buffer::TxnBuffer),
    /// An error happened inside the transaction: only ROLLBACK (or COMMIT, which rolls back)
    /// is accepted. Savepoints kept for ROLLBACK TO SAVEPOINT.
    Failed(txn_buffer::TxnBuffer),
    /// `RELEASE SAVEPOINT cockroach_restart` committed the transaction: only COMMIT (or
    /// ROLLBACK) is accepted, to end the block (see `txn.rs`).
    CommitWait,
}

/// A prepared statement: parsed, with its parameter and result types.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub sql: String,
    /// `None` for an empty query.
    pub statement: Option<Statement>,
    pub param_types: Vec<SqlType>,
    pub columns: Vec<ColumnInfo>,
}

/// One client connection's state.
pub struct Session {
    pub(crate) server: Arc<SqlServer>,
    pub(crate) user: String,
    pub vars: SessionVars,
    pub(crate) txn: Txn,
    /// The `[SHOW …]` sources of the statement being planned or run.
    pub(crate) show_sources: Vec<Statement>,
    /// The running statement's `AS OF SYSTEM TIME` timestamp: it reads there.
    pub(crate) as_of: Option<ldr_types::Timestamp>,
    /// The running statement's memory budget and deadline.
    pub(crate) limits: Option<Arc<crate::budget::StmtLimits>>,
    /// The connection's cancel flag (set by the wire protocol; `None` for internal sessions).
    pub(crate) cancel: Option<Arc<crate::budget::Canceler>>,
    /// CockroachDB's session id (32 hex digits).
    pub(crate) session_id: String,
    /// The open transaction's entry in `SHOW TRANSACTIONS` (see `activity.rs`).
    pub(crate) open_txn: Option<activity::OpenTxnGuard>,
}

impl Session {
    pub fn user(&self) -> &str {
        &self.user
    }

    pub fn database(&self) -> &str {
        self.vars.database()
    }

    pub fn server(&self) -> &Arc<SqlServer> {
        &self.server
    }

    pub fn txn_status(&self) -> TxnStatus {
        match self.txn {
            Txn::Idle => TxnStatus::Idle,
            Txn::Open(_) | Txn::CommitWait => TxnStatus::InTransaction,
            Txn::Failed(_) => TxnStatus::Failed,
        }
    }

    /// A new statement's limits: `sql.distsql.temp_storage.workmem` of the node's SQL memory,
    /// and `statement_timeout` from now.
    fn statement_limits(&self) -> Result<crate::budget::StmtLimits> {
        let timeout = session::parse_statement_timeout(&self.vars.get("statement_timeout")?)?;
        Ok(crate::budget::StmtLimits::new(
            self.server.memory.clone(),
            self.server
                .kv
                .settings()
                .bytes("sql.distsql.temp_storage.workmem"),
            timeout.map(|t| std::time::Instant::now() + t),
        )
        .with_cancel(self.cancel.clone()))
    }

    /// Lets `canceler` stop this session's statements (a pgwire CancelRequest).
    pub fn set_canceler(&mut self, canceler: Arc<crate::budget::Canceler>) {
        self.cancel = Some(canceler);
    }

    /// Evaluates a constant expression (with parameters) of a utility statement.
    pub(crate) fn eval_const(
        &self,
        e: &parser::Expr,
        want: Option<&SqlType>,
        params: &[Datum],
    ) -> Result<Datum> {
        let scope = crate::expr::Scope::default();
        let mut types = Vec::new();
        let mut b = crate::expr::Binder::new(&scope, &mut types);
        let (x, _) = match want {
            Some(t) => b.bind_typed(e, t)?,
            None => b.bind(e)?,
        };
        x.eval(&[], &self.eval_ctx(params.to_vec()))
    }

    pub(crate) fn eval_ctx(&self, params: Vec<Datum>) -> EvalCtx {
        EvalCtx {
            params,
            now_micros: chrono::Utc::now()
                .timestamp_micros()
                .max(self.server.kv.clock().now().wall_time_ns as i64 / 1000),
            database: self.database().to_string(),
            user: self.user.clone(),
            node_id: self.server.kv.node_id(),
            origin_id: self.server.kv.origin_id(),
            tz_offset_secs: self.vars.tz_offset_secs,
            clock: Some(self.server.kv.clock().clone()),
            limits: self.limits.clone(),
        }
    }

    /// Runs a query string (simple protocol): every statement in order, stopping at the first
    /// error (whose result is the last element).
    pub async fn execute(&mut self, sql: &str) -> Vec<Result<QueryResult>> {
        let statements = match parser::parse(sql) {
            Ok(s) => s,
            Err(e) => {
                self.abort_txn();
                return vec![Err(e)];
            }
        };
        let mut out = Vec::with_capacity(statements.len());
        let implicit_batch = statements.len() > 1;
        for stmt in statements {
            let r = self.run(&stmt, vec![], implicit_batch).await;
            let failed = r.is_err();
            out.push(r);
            if failed {
                break;
            }
        }
        out
    }

    /// Parses and describes a statement for the extended protocol. `param_types` are the
    /// types the client declared (`None`: infer).
    pub async fn prepare(
        &mut self,
        sql: &str,
        param_types: &[Option<SqlType>],
    ) -> Result<Prepared> {
        let mut statements = parser::parse(sql)?;
        if statements.len() > 1 {
            return Err(SqlError::new(
                sqlstate::SYNTAX_ERROR,
                "cannot insert multiple commands into a prepared statement",
            ));
        }
        let Some(statement) = statements.pop() else {
            return Ok(Prepared {
                sql: sql.to_string(),
                statement: None,
                param_types: vec![],
                columns: vec![],
            });
        };
        let mut types: Vec<Option<SqlType>> = param_types.to_vec();
        let columns = self.describe(&statement, &mut types).await?;
        let param_types = types
            .into_iter()
            .map(|t| t.unwrap_or(SqlType::String))
            .collect();
        Ok(Prepared {
            sql: sql.to_string(),
            statement: Some(statement),
            param_types,
            columns,
        })
    }

    /// Runs a prepared statement with bound parameters.
    pub async fn execute_prepared(
        &mut self,
        prepared: &Prepared,
        params: Vec<Datum>,
    ) -> Result<QueryResult> {
        let Some(stmt) = &prepared.statement else {
            return Ok(QueryResult::command(""));
        };
        if params.len() < prepared.param_types.len() {
            return Err(SqlError::new(
                sqlstate::PROTOCOL_VIOLATION,
                format!(
                    "expected {} arguments, got {}",
                    prepared.param_types.len(),
                    params.len()
                ),
            ));
        }
        self.run(stmt, params, false).await
    }

    async fn run(
        &mut self,
        stmt: &Statement,
        params: Vec<Datum>,
        in_batch: bool,
    ) -> Result<QueryResult> {
        let started = std::time::Instant::now();
        self.check_txn_state(stmt)?;
        if let Some(c) = &self.cancel {
            c.reset();
        }
        let limits = Arc::new(self.statement_limits()?);
        let deadline = limits.deadline();
        self.limits = Some(limits);
        // A read past its deadline or canceled stops wherever it waits; other statements stop
        // at their next check (a write is never abandoned halfway).
        let r = if matches!(
            stmt,
            Statement::Select(_) | Statement::SelectFromShow { .. } | Statement::SelectAsOf { .. }
        ) {
            let cancel = self.cancel.clone();
            let canceled = async move {
                match cancel {
                    Some(c) => c.canceled().await,
                    None => std::future::pending().await,
                }
            };
            let timeout = async move {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = self.dispatch(stmt, params, in_batch) => r,
                _ = canceled => Err(crate::budget::query_canceled()),
                _ = timeout => Err(crate::budget::statement_timeout()),
            }
        } else {
            self.dispatch(stmt, params, in_batch).await
        };
        self.limits = None;
        // A streamed result keeps the statement's deadline: its rows are still to come.
        let mut r = r;
        if let Ok(QueryResult {
            stream: Some(stream),
            ..
        }) = &mut r
        {
            stream.set_deadline(deadline);
        }
        // A statement stopped mid-way (timeout, cancel) must not leave its AS OF SYSTEM TIME
        // behind for the next one.
        self.as_of = None;
        if r.is_err() {
            self.abort_txn();
        }
        self.track_txn(stmt);
        if self.user != "node" {
            self.server.stats.record(started.elapsed());
        }
        r
    }

    async fn dispatch(
        &mut self,
        stmt: &Statement,
        params: Vec<Datum>,
        in_batch: bool,
    ) -> Result<QueryResult> {
        use Statement as S;
        match stmt {
            S::Begin => self.begin(),
            S::Commit => self.commit().await,
            S::Rollback => Ok(self.rollback()),
            S::Savepoint(name) => self.savepoint(name),
            S::ReleaseSavepoint(name) => self.release_savepoint(name).await,
            S::RollbackToSavepoint(name) => self.rollback_to_savepoint(name),
            S::SetTransaction => Ok(QueryResult::command("SET TRANSACTION")),
            S::Select(q) => select::execute_query(self, q, params).await,
            S::SelectAsOf { query, as_of } => {
                backup::select_as_of(self, query, as_of, params).await
            }
            S::Backup(b) => backup::backup(self, b, in_batch).await,
            S::Restore(r) => backup::restore(self, r, in_batch).await,
            S::ShowBackups { collection } => backup::show_backups(self, collection).await,
            S::ShowBackup { subdir, collection } => {
                backup::show_backup(self, subdir, collection).await
            }
            S::SelectFromShow { query, shows } => {
                self.show_sources = shows.clone();
                let r = select::execute_query(self, query, params).await;
                self.show_sources.clear();
                r
            }
            S::Insert(i) => dml::insert(self, i, params).await,
            S::Update(u) => dml::update(self, u, params).await,
            S::Delete(d) => dml::delete(self, d, params).await,
            S::Truncate { tables } => dml::truncate(self, tables).await,
            S::CreateLogicalReplicationStream(s) => {
                ldr::create_stream_with_params(self, s, in_batch, &params).await
            }
            S::CreateChangefeed(c) => changefeed::create(self, c, in_batch).await,
            S::ShowChangefeedJobs(id) => changefeed::show_jobs(self, id.as_ref(), &params).await,
            S::NoOp { tag } => Ok(QueryResult::command(tag)),
            S::ConfigureRangeZone { range, options } => {
                ddl::configure_range_zone(self, range, options).await
            }
            S::SetVar { .. }
            | S::ResetVar(_)
            | S::ResetAll
            | S::ShowVar(_)
            | S::ShowAllVars
            | S::Use(_) => show::session_statement(self, stmt, params).await,
            S::CreateDatabase { .. }
            | S::CreateSchema { .. }
            | S::CreateTable(_)
            | S::CreateIndex(_)
            | S::DropDatabase { .. }
            | S::DropTable { .. }
            | S::DropIndex { .. }
            | S::AlterTable { .. } => ddl::execute(self, stmt, params).await,
            S::CreateUser(_)
            | S::AlterUser(_)
            | S::DropUser { .. }
            | S::GrantSystem { .. }
            | S::RevokeSystem { .. }
            | S::GrantTable { .. }
            | S::RevokeTable { .. }
            | S::GrantDatabase { .. }
            | S::RevokeDatabase { .. }
            | S::GrantRole { .. }
            | S::RevokeRole { .. } => privilege::execute(self, stmt).await,
            _ => show::execute(self, stmt, params).await,
        }
    }

    /// Result columns of a statement, inferring parameter types into `params`.
    async fn describe(
        &mut self,
        stmt: &Statement,
        params: &mut Vec<Option<SqlType>>,
    ) -> Result<Vec<ColumnInfo>> {
        use Statement as S;
        match stmt {
            S::Select(q) | S::SelectAsOf { query: q, .. } => {
                select::describe_query(self, q, params).await
            }
            S::Backup(_) | S::Restore(_) | S::ShowBackups { .. } | S::ShowBackup { .. } => {
                Ok(backup::describe(stmt).unwrap_or_default())
            }
            S::SelectFromShow { query, shows } => {
                self.show_sources = shows.clone();
                let r = select::describe_query(self, query, params).await;
                self.show_sources.clear();
                r
            }
            S::Insert(i) => dml::describe_insert(self, i, params).await,
            S::Update(u) => dml::describe_update(self, u, params).await,
            S::Delete(d) => dml::describe_delete(self, d, params).await,
            other => {
                // Parameters of utility statements (`PAUSE JOB $1`, `… ON $1`).
                let scope = crate::expr::Scope::default();
                let mut b = crate::expr::Binder::new(&scope, params);
                match other {
                    S::PauseJob(e)
                    | S::ResumeJob(e)
                    | S::CancelJob(e)
                    | S::ShowJob(e)
                    | S::ShowChangefeedJobs(Some(e)) => {
                        b.bind_typed(e, &SqlType::Int8)?;
                    }
                    S::CreateExternalConnection { uri, .. } => {
                        b.bind_typed(uri, &SqlType::String)?;
                    }
                    S::SetClusterSetting { value: Some(v), .. } => {
                        b.bind_typed(v, &SqlType::String)?;
                    }
                    S::CreateLogicalReplicationStream(c) => {
                        if let Some(n) =
                            c.on.strip_prefix('$')
                                .and_then(|n| n.parse::<usize>().ok())
                                .filter(|n| *n >= 1)
                        {
                            if params.len() < n {
                                params.resize(n, None);
                            }
                            params[n - 1].get_or_insert(SqlType::String);
                        }
                    }
                    _ => {}
                }
                Ok(show::describe(self, other).await)
            }
        }
    }

    // ---- transactions: see `txn.rs` for BEGIN, COMMIT, ROLLBACK and savepoints ----

    /// The open transaction's buffer, if any.
    pub(crate) fn txn_buffer(&mut self) -> Option<&mut txn_buffer::TxnBuffer> {
        match &mut self.txn {
            Txn::Open(b) => Some(b),
            _ => None,
        }
    }

    pub(crate) fn txn_ref(&self) -> Option<&txn_buffer::TxnBuffer> {
        match &self.txn {
            Txn::Open(b) => Some(b),
            _ => None,
        }
    }

    /// The timestamp a statement reads at: the transaction's snapshot inside an explicit
    /// transaction (so its statements see one consistent state), else now.
    pub(crate) fn stmt_ts(&mut self) -> ldr_types::Timestamp {
        if let Some(ts) = self.as_of {
            return ts;
        }
        let now = self.server.kv.clock().now();
        match self.txn_buffer() {
            Some(buf) => buf.read_ts(now),
            None => now,
        }
    }

    /// Keeps this session's `SHOW TRANSACTIONS` entry in step with its transaction block
    /// after `stmt` ran: registered at BEGIN, counted per statement and client-side restart,
    /// gone when the block ends.
    fn track_txn(&mut self, stmt: &Statement) {
        let snapshot = match &self.txn {
            Txn::Idle => {
                self.open_txn = None;
                return;
            }
            Txn::Open(buf) | Txn::Failed(buf) => buf.snapshot_ts(),
            Txn::CommitWait => None,
        };
        let application_name = self.vars.get("application_name").unwrap_or_default();
        match &self.open_txn {
            Some(guard) => {
                let mut a = guard.activity.lock();
                a.num_stmts += 1;
                if matches!(stmt, Statement::RollbackToSavepoint(name) if name == txn::RESTART_SAVEPOINT)
                {
                    a.num_retries += 1;
                }
                if snapshot.is_some() {
                    a.read_ts = snapshot;
                }
                a.application_name = application_name;
            }
            None => {
                let start_us = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_micros() as i64)
                    .unwrap_or(0);
                self.open_txn = Some(self.server.open_txns.register(activity::TxnActivity {
                    id: uuid::Uuid::new_v4().to_string(),
                    session_id: self.session_id.clone(),
                    user: self.user.clone(),
                    start_us,
                    application_name,
                    num_stmts: 1,
                    num_retries: 0,
                    read_ts: snapshot,
                }));
            }
        }
    }

    /// The open transactions this session may see: every one for an admin, else its user's
    /// (CockroachDB: VIEWACTIVITY).
    pub(crate) fn visible_transactions(&self) -> Vec<activity::TxnActivity> {
        let admin = self.vars.get("is_superuser").is_ok_and(|v| v == "on");
        self.server
            .open_txns
            .list()
            .into_iter()
            .filter(|t| admin || t.user == self.user)
            .collect()
    }

    pub(crate) fn in_txn(&self) -> bool {
        !matches!(self.txn, Txn::Idle)
    }
}

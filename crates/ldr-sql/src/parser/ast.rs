//! The statements this crate executes. Standard DML keeps sqlparser's expression and query
//! trees; CockroachDB statements and DDL get their own small structs.

pub use sqlparser::ast::{Expr, Query, SelectItem};

/// A possibly qualified name as written, each part case-folded (unquoted parts lowercased).
pub type ObjectName = Vec<String>;

#[derive(Debug, Clone, PartialEq)]
pub enum Statement {
    Select(Box<Query>),
    /// A query reading CockroachDB's `[SHOW …]` sources: `FROM [SHOW JOBS]` is rewritten to
    /// the table `__crdb_show_<i>` naming `shows[i]`.
    SelectFromShow {
        query: Box<Query>,
        shows: Vec<Statement>,
    },
    Insert(InsertStmt),
    Update(UpdateStmt),
    Delete(DeleteStmt),
    Truncate {
        tables: Vec<ObjectName>,
    },

    CreateDatabase {
        name: String,
        if_not_exists: bool,
    },
    CreateSchema {
        name: ObjectName,
        if_not_exists: bool,
    },
    CreateTable(CreateTable),
    CreateIndex(CreateIndex),
    DropDatabase {
        name: String,
        if_exists: bool,
        cascade: bool,
    },
    DropTable {
        names: Vec<ObjectName>,
        if_exists: bool,
        cascade: bool,
    },
    DropIndex {
        names: Vec<IndexName>,
        if_exists: bool,
    },
    AlterTable {
        table: ObjectName,
        if_exists: bool,
        ops: Vec<AlterTableOp>,
    },

    Begin,
    Commit,
    Rollback,
    Savepoint(String),
    ReleaseSavepoint(String),
    RollbackToSavepoint(String),
    SetTransaction,
    SetVar {
        name: String,
        value: Option<Vec<Expr>>,
    },
    ResetVar(String),
    ResetAll,
    ShowVar(String),
    ShowAllVars,
    Use(String),

    SetClusterSetting {
        name: String,
        value: Option<Expr>,
    },
    ShowClusterSetting(String),
    ShowClusterSettings,

    ShowDatabases,
    ShowSchemas {
        database: Option<String>,
    },
    ShowTables {
        from: Option<ObjectName>,
    },
    ShowCreateTable(ObjectName),
    ShowColumns(ObjectName),
    ShowIndexes(ObjectName),
    ShowConstraints(ObjectName),
    ShowRanges(RangesFrom),
    ShowFingerprints(ObjectName),
    ShowJobs,
    /// `SHOW [LOCAL] TRANSACTIONS`: this node's open explicit transactions.
    ShowTransactions,
    ShowJob(Expr),
    ShowLogicalReplicationJobs {
        with_details: bool,
    },
    ShowUsers,
    ShowGrants {
        table: Option<ObjectName>,
        users: Vec<String>,
    },
    ShowSystemGrants {
        users: Vec<String>,
    },
    ShowExternalConnections {
        name: Option<String>,
    },
    /// The rows of an `information_schema` / `pg_catalog` table a query reads (never parsed
    /// on its own: built when a FROM clause names one).
    VirtualTable {
        table: VirtualTable,
        database: Option<String>,
    },
    /// The rows of `crdb_internal.check_consistency(stats_only, start_key, end_key)` (never
    /// parsed on its own: built when a FROM clause calls it).
    CheckConsistency {
        stats_only: bool,
        start_key: Vec<u8>,
        end_key: Vec<u8>,
    },

    PauseJob(Expr),
    ResumeJob(Expr),
    CancelJob(Expr),

    CreateUser(UserSpec),
    AlterUser(UserSpec),
    DropUser {
        names: Vec<String>,
        if_exists: bool,
    },
    GrantSystem {
        privileges: Vec<String>,
        users: Vec<String>,
    },
    RevokeSystem {
        privileges: Vec<String>,
        users: Vec<String>,
    },
    GrantTable {
        privileges: Vec<String>,
        tables: Vec<ObjectName>,
        users: Vec<String>,
    },
    RevokeTable {
        privileges: Vec<String>,
        tables: Vec<ObjectName>,
        users: Vec<String>,
    },
    GrantDatabase {
        privileges: Vec<String>,
        databases: Vec<String>,
        users: Vec<String>,
    },
    RevokeDatabase {
        privileges: Vec<String>,
        databases: Vec<String>,
        users: Vec<String>,
    },
    GrantRole {
        roles: Vec<String>,
        users: Vec<String>,
    },
    RevokeRole {
        roles: Vec<String>,
        users: Vec<String>,
    },

    CreateExternalConnection {
        name: String,
        if_not_exists: bool,
        uri: Expr,
    },
    DropExternalConnection {
        name: String,
        if_exists: bool,
    },

    CreateLogicalReplicationStream(CreateLogicalReplicationStream),

    /// `CREATE CHANGEFEED FOR TABLE … [INTO '…'] [WITH …]`.
    CreateChangefeed(CreateChangefeed),
    /// `SHOW CHANGEFEED JOBS` / `SHOW CHANGEFEED JOB <id>`.
    ShowChangefeedJobs(Option<Expr>),

    /// `SELECT … FROM … AS OF SYSTEM TIME …`: the query read at a past timestamp.
    SelectAsOf {
        query: Box<Query>,
        as_of: AsOf,
    },
    /// `BACKUP … INTO [LATEST IN] '…' [AS OF SYSTEM TIME …] [WITH …]`.
    Backup(BackupStmt),
    /// `RESTORE … FROM <LATEST | 'subdir'> IN '…' [WITH …]`.
    Restore(RestoreStmt),
    /// `SHOW BACKUPS IN '…'`.
    ShowBackups {
        collection: String,
    },
    /// `SHOW BACKUP FROM <LATEST | 'subdir'> IN '…'`.
    ShowBackup {
        subdir: String,
        collection: String,
    },

    /// `ALTER RANGE <name> CONFIGURE ZONE USING key = value, …` (or `DISCARD`: no options).
    ConfigureRangeZone {
        range: String,
        options: Vec<(String, String)>,
    },

    /// Parsed and accepted but does nothing (e.g. `ALTER DATABASE … CONFIGURE ZONE`).
    NoOp {
        tag: String,
    },
}

impl Statement {
    /// Whether the statement only reads (allowed in any transaction state, no buffering).
    pub fn is_transaction_control(&self) -> bool {
        matches!(
            self,
            Statement::Begin
                | Statement::Commit
                | Statement::Rollback
                | Statement::Savepoint(_)
                | Statement::ReleaseSavepoint(_)
                | Statement::RollbackToSavepoint(_)
        )
    }
}

/// The `information_schema` and `pg_catalog` tables that tools and drivers query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VirtualTable {
    InformationSchemaSchemata,
    CrdbInternalNodeTransactions,
    InformationSchemaTables,
    InformationSchemaColumns,
    PgTables,
}

impl VirtualTable {
    /// The virtual table `schema.name`, if it is one we serve.
    pub fn lookup(schema: &str, name: &str) -> Option<VirtualTable> {
        Some(match (schema, name) {
            ("information_schema", "schemata") => VirtualTable::InformationSchemaSchemata,
            ("information_schema", "tables") => VirtualTable::InformationSchemaTables,
            ("information_schema", "columns") => VirtualTable::InformationSchemaColumns,
            ("pg_catalog", "pg_tables") => VirtualTable::PgTables,
            ("crdb_internal", "node_transactions") => VirtualTable::CrdbInternalNodeTransactions,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum InsertSource {
    Values(Vec<Vec<Expr>>),
    Query(Box<Query>),
    DefaultValues,
}

#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)]
pub enum OnConflict {
    DoNothing {
        columns: Vec<String>,
    },
    DoUpdate {
        columns: Vec<String>,
        assignments: Vec<(String, Expr)>,
        selection: Option<Expr>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct InsertStmt {
    pub table: ObjectName,
    pub alias: Option<String>,
    pub columns: Vec<String>,
    pub source: InsertSource,
    pub on_conflict: Option<OnConflict>,
    pub returning: Option<Vec<SelectItem>>,
    /// `UPSERT INTO`.
    pub upsert: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct UpdateStmt {
    pub table: ObjectName,
    pub alias: Option<String>,
    pub assignments: Vec<(String, Expr)>,
    pub selection: Option<Expr>,
    pub returning: Option<Vec<SelectItem>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DeleteStmt {
    pub table: ObjectName,
    pub alias: Option<String>,
    pub selection: Option<Expr>,
    pub returning: Option<Vec<SelectItem>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ColumnDef {
    pub name: String,
    pub type_name: String,
    /// `None`: not specified; `Some(true)`: NULL; `Some(false)`: NOT NULL.
    pub nullable: Option<bool>,
    pub default: Option<Expr>,
    pub primary_key: bool,
    pub unique: Option<Option<String>>,
    pub checks: Vec<(Option<String>, Expr)>,
    pub references: Option<ForeignKeyDef>,
    pub hidden: bool,
    /// `SERIAL` types imply `DEFAULT unique_rowid()`.
    pub serial: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct IndexColumnDef {
    pub name: String,
    pub descending: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct IndexDef {
    pub name: Option<String>,
    pub unique: bool,
    pub columns: Vec<IndexColumnDef>,
    pub storing: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ForeignKeyDef {
    pub name: Option<String>,
    pub columns: Vec<String>,
    pub ref_table: ObjectName,
    pub ref_columns: Vec<String>,
    pub on_delete: Option<String>,
    pub on_update: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)]
pub enum TableElement {
    Column(ColumnDef),
    PrimaryKey {
        name: Option<String>,
        columns: Vec<IndexColumnDef>,
    },
    Index(IndexDef),
    Check {
        name: Option<String>,
        expr: Expr,
    },
    ForeignKey(ForeignKeyDef),
    Family,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CreateTable {
    pub name: ObjectName,
    pub if_not_exists: bool,
    pub elements: Vec<TableElement>,
    pub storage_params: Vec<(String, Expr)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CreateIndex {
    pub table: ObjectName,
    pub if_not_exists: bool,
    pub index: IndexDef,
}

#[derive(Debug, Clone, PartialEq)]
pub struct IndexName {
    pub table: Option<ObjectName>,
    pub index: ObjectName,
}

#[derive(Debug, Clone, PartialEq)]
pub enum AlterTableOp {
    AddColumn {
        column: ColumnDef,
        if_not_exists: bool,
    },
    DropColumn {
        name: String,
        if_exists: bool,
    },
    SetStorage(Vec<(String, Expr)>),
    ResetStorage(Vec<String>),
    SetDefault {
        column: String,
        default: Option<Expr>,
    },
    SetNotNull {
        column: String,
        not_null: bool,
    },
    AddConstraint(TableElement),
    DropConstraint {
        name: String,
        if_exists: bool,
    },
    /// `CONFIGURE ZONE USING key = value, …` (lowercased keys, values as written).
    ConfigureZone(Vec<(String, String)>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct UserSpec {
    pub name: String,
    pub if_not_exists: bool,
    /// `Some(None)`: `PASSWORD NULL`.
    pub password: Option<Option<String>>,
    pub login: Option<bool>,
}

/// `CREATE LOGICAL REPLICATION STREAM …` as written.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CreateLogicalReplicationStream {
    /// Source tables as written (resolved on the source cluster).
    pub from_tables: Vec<ObjectName>,
    /// Destination tables as written (resolved in the session's database).
    pub into_tables: Vec<ObjectName>,
    /// The `ON '…'` URI, e.g. `external://source`.
    pub on: String,
    pub options: LogicalReplicationOptions,
    /// The statement's text (the job's `command`).
    pub statement: String,
}

/// The `WITH …` options of `CREATE LOGICAL REPLICATION STREAM`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogicalReplicationOptions {
    /// `immediate` (default) or `validated`.
    pub mode: Option<String>,
    /// A decimal `wall.logical` timestamp: start there, without an initial scan.
    pub cursor: Option<String>,
    /// `lww` (default) or `dlq`.
    pub default_function: Option<String>,
    /// `ttl-deletes` or `all-deletes`.
    pub discard: Option<String>,
    pub label: Option<String>,
    pub skip_schema_check: bool,
    /// Internal: the parent job of a reverse stream.
    pub parent: Option<String>,
    /// `FUNCTION f FOR TABLE t`.
    pub functions: Vec<(String, ObjectName)>,
}

/// Which ranges `SHOW RANGES` lists.
#[derive(Debug, Clone, PartialEq)]
pub enum RangesFrom {
    /// `SHOW RANGES FROM TABLE t`
    Table(ObjectName),
    /// `SHOW RANGES FROM DATABASE d`; `SHOW RANGES` is the current database.
    Database(Option<String>),
    /// `SHOW CLUSTER RANGES`: every range, the system range included.
    Cluster,
}

/// `CREATE CHANGEFEED FOR TABLE t [, …] [INTO 'sink'] [WITH opt [= value], …]` as written.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CreateChangefeed {
    /// The watched tables as written.
    pub targets: Vec<ObjectName>,
    /// The sink URI; `None`: a sinkless changefeed (rows go to the client).
    pub sink: Option<String>,
    /// Options in order, names lowercased; `None` for a bare option (`updated`, `resolved`).
    pub options: Vec<(String, Option<String>)>,
    /// The statement's text.
    pub statement: String,
}

/// What follows `AS OF SYSTEM TIME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AsOf {
    /// A string literal: a decimal, an interval or a timestamp.
    Text(String),
    /// A bare number: a decimal timestamp.
    Number(String),
    /// `follower_read_timestamp()`.
    FollowerReadTimestamp,
}

/// What a BACKUP or RESTORE covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackupTargets {
    Tables(Vec<ObjectName>),
    Databases(Vec<String>),
}

/// `BACKUP` as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupStmt {
    pub targets: BackupTargets,
    /// The collection URI (`INTO '…'` or `INTO LATEST IN '…'`).
    pub collection: String,
    /// `INTO LATEST IN`: an incremental backup on top of the latest full backup.
    pub incremental: bool,
    pub as_of: Option<AsOf>,
    /// Options in order, names lowercased.
    pub options: Vec<(String, Option<String>)>,
    /// The statement's text (the job's description).
    pub statement: String,
}

/// `RESTORE` as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreStmt {
    pub targets: BackupTargets,
    /// `LATEST` or a subdirectory such as `/2026/12/07-123456.78`.
    pub subdir: String,
    pub collection: String,
    pub as_of: Option<AsOf>,
    pub options: Vec<(String, Option<String>)>,
    pub statement: String,
}

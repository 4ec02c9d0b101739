//! SHOW statements, session variables, cluster settings, jobs control, external
//! connections, ranges and fingerprints.

use ldr_jobs::{JobRecord, JobStatus, JobType};
use ldr_kv::SettingValue;
use ldr_types::keys;

use super::jobs::{check_job_visible, job_id, visible_jobs};
use super::result::{col, s};
use super::scan;
use super::{ColumnInfo, LogicalReplicationJobInfo, QueryResult, Session, privilege, resolve};
use crate::catalog::{ExternalConnection, TableDescriptor};
use crate::datum::Datum;
use crate::error::{Result, SqlError, sqlstate};
use crate::parser::{RangesFrom, Statement};
use crate::rowcodec;
use crate::types::SqlType;

fn opt_s(v: Option<String>) -> Datum {
    v.map(Datum::String).unwrap_or(Datum::Null)
}

fn text_of(d: &Datum) -> String {
    match d {
        Datum::Bool(b) => b.to_string(),
        other => other.to_text(0).unwrap_or_default(),
    }
}

// ---- session statements ----

pub(crate) async fn session_statement(
    sess: &mut Session,
    stmt: &Statement,
    params: Vec<Datum>,
) -> Result<QueryResult> {
    match stmt {
        Statement::Use(db) => {
            set_database(sess, db).await?;
            Ok(QueryResult::command("SET"))
        }
        Statement::SetVar { name, value } => {
            let name = super::session::canonical_var(name);
            let Some(values) = value else {
                sess.vars.reset(&name)?;
                return Ok(QueryResult::command("SET"));
            };
            let mut parts = Vec::new();
            for v in values {
                parts.push(text_of(&sess.eval_const(v, None, &params)?));
            }
            let text = parts.join(", ");
            if name == "database" {
                set_database(sess, &text).await?;
            } else {
                sess.vars.set(&name, &text)?;
            }
            Ok(QueryResult::command("SET"))
        }
        Statement::ResetVar(name) => {
            sess.vars.reset(name)?;
            Ok(QueryResult::command("RESET"))
        }
        Statement::ResetAll => {
            let names: Vec<String> = sess.vars.all().keys().cloned().collect();
            for n in names {
                let _ = sess.vars.reset(&n);
            }
            Ok(QueryResult::command("RESET"))
        }
        Statement::ShowVar(name) => {
            let canonical = super::session::canonical_var(name);
            let value = match canonical.as_str() {
                "transaction_status" => match sess.txn_status() {
                    super::TxnStatus::Idle => "NoTxn".to_string(),
                    super::TxnStatus::InTransaction => "Open".to_string(),
                    super::TxnStatus::Failed => "Aborted".to_string(),
                },
                _ => sess.vars.get(&canonical)?,
            };
            Ok(QueryResult::rows(
                vec![col(&canonical, SqlType::String)],
                vec![vec![s(value)]],
            ))
        }
        Statement::ShowAllVars => {
            let rows = sess
                .vars
                .all()
                .iter()
                .map(|(k, v)| vec![s(k.clone()), s(v.clone())])
                .collect();
            Ok(QueryResult::rows(
                vec![
                    col("variable", SqlType::String),
                    col("value", SqlType::String),
                ],
                rows,
            ))
        }
        _ => Err(SqlError::internal("not a session statement")),
    }
}

async fn set_database(sess: &mut Session, db: &str) -> Result<()> {
    if sess.server.catalog.database(db).await?.is_none() {
        return Err(SqlError::undefined_database(db));
    }
    sess.vars.set_database(db);
    Ok(())
}

// ---- describe ----

/// Result columns of utility statements (for the extended protocol's Describe).
pub(crate) async fn describe(sess: &Session, stmt: &Statement) -> Vec<ColumnInfo> {
    use Statement as S;
    match stmt {
        S::ShowDatabases => databases_columns(),
        S::ShowSchemas { .. } => vec![
            col("schema_name", SqlType::String),
            col("owner", SqlType::String),
        ],
        S::ShowTables { .. } => tables_columns(),
        S::ShowCreateTable(_) => vec![
            col("table_name", SqlType::String),
            col("create_statement", SqlType::String),
        ],
        S::ShowColumns(_) => columns_columns(),
        S::ShowIndexes(_) => indexes_columns(),
        S::ShowConstraints(_) => constraints_columns(),
        S::ShowRanges(_) => ranges_columns(),
        S::ShowFingerprints(_) => vec![
            col("index_name", SqlType::String),
            col("fingerprint", SqlType::Int8),
        ],
        S::ShowJobs | S::ShowJob(_) => jobs_columns(),
        S::ShowTransactions => super::activity::show_columns(),
        S::ShowLogicalReplicationJobs { with_details } => ldr_jobs_columns(*with_details),
        S::ShowUsers => users_columns(),
        S::ShowGrants { .. } => grants_columns(),
        S::ShowSystemGrants { .. } => vec![
            col("grantee", SqlType::String),
            col("privilege_type", SqlType::String),
            col("is_grantable", SqlType::Bool),
        ],
        S::ShowExternalConnections { .. } => ext_columns(),
        S::VirtualTable { table, .. } => super::virtual_tables::columns(*table),
        S::CheckConsistency { .. } => super::consistency::columns(),
        S::ShowClusterSettings => settings_columns(),
        S::ShowClusterSetting(name) => vec![col(name, setting_type(sess, name))],
        S::ShowVar(name) => vec![col(&super::session::canonical_var(name), SqlType::String)],
        S::ShowAllVars => vec![
            col("variable", SqlType::String),
            col("value", SqlType::String),
        ],
        S::CreateLogicalReplicationStream(_) => vec![col("job_id", SqlType::Int8)],
        S::CreateChangefeed(c) if c.sink.is_none() => super::changefeed::sinkless_columns(),
        S::CreateChangefeed(_) => vec![col("job_id", SqlType::Int8)],
        S::ShowChangefeedJobs(_) => super::changefeed::show_columns(),
        _ => vec![],
    }
}

fn databases_columns() -> Vec<ColumnInfo> {
    vec![
        col("database_name", SqlType::String),
        col("owner", SqlType::String),
        col("primary_region", SqlType::String),
        col("secondary_region", SqlType::String),
        col("regions", SqlType::String),
        col("survival_goal", SqlType::String),
    ]
}

fn tables_columns() -> Vec<ColumnInfo> {
    vec![
        col("schema_name", SqlType::String),
        col("table_name", SqlType::String),
        col("type", SqlType::String),
        col("owner", SqlType::String),
        col("estimated_row_count", SqlType::Int8),
        col("locality", SqlType::String),
    ]
}

fn columns_columns() -> Vec<ColumnInfo> {
    vec![
        col("column_name", SqlType::String),
        col("data_type", SqlType::String),
        col("is_nullable", SqlType::Bool),
        col("column_default", SqlType::String),
        col("generation_expression", SqlType::String),
        col("indices", SqlType::String),
        col("is_hidden", SqlType::Bool),
    ]
}

fn indexes_columns() -> Vec<ColumnInfo> {
    vec![
        col("table_name", SqlType::String),
        col("index_name", SqlType::String),
        col("non_unique", SqlType::Bool),
        col("seq_in_index", SqlType::Int8),
        col("column_name", SqlType::String),
        col("definition", SqlType::String),
        col("direction", SqlType::String),
        col("storing", SqlType::Bool),
        col("implicit", SqlType::Bool),
        col("visible", SqlType::Bool),
    ]
}

fn constraints_columns() -> Vec<ColumnInfo> {
    vec![
        col("table_name", SqlType::String),
        col("constraint_name", SqlType::String),
        col("constraint_type", SqlType::String),
        col("details", SqlType::String),
        col("validated", SqlType::Bool),
    ]
}

fn ranges_columns() -> Vec<ColumnInfo> {
    vec![
        col("range_id", SqlType::Int8),
        col("start_key", SqlType::String),
        col("end_key", SqlType::String),
        col("lease_holder", SqlType::Int8),
        col("replicas", SqlType::String),
        col("voting_replicas", SqlType::String),
    ]
}

fn jobs_columns() -> Vec<ColumnInfo> {
    vec![
        col("job_id", SqlType::Int8),
        col("job_type", SqlType::String),
        col("description", SqlType::String),
        col("user_name", SqlType::String),
        col("status", SqlType::String),
        col("running_status", SqlType::String),
        col("created", SqlType::TimestampTz),
        col("finished", SqlType::TimestampTz),
        col("fraction_completed", SqlType::Float8),
        col("error", SqlType::String),
        col("coordinator_id", SqlType::Int8),
    ]
}

fn ldr_jobs_columns(details: bool) -> Vec<ColumnInfo> {
    let mut v = vec![
        col("job_id", SqlType::Int8),
        col("status", SqlType::String),
        col("tables", SqlType::String),
        col("replicated_time", SqlType::TimestampTz),
    ];
    if details {
        v.push(col("replication_start_time", SqlType::TimestampTz));
        v.push(col("conflict_resolution_type", SqlType::String));
        v.push(col("command", SqlType::String));
    }
    v
}

fn users_columns() -> Vec<ColumnInfo> {
    vec![
        col("username", SqlType::String),
        col("options", SqlType::String),
        col("member_of", SqlType::String),
    ]
}

fn grants_columns() -> Vec<ColumnInfo> {
    vec![
        col("database_name", SqlType::String),
        col("schema_name", SqlType::String),
        col("table_name", SqlType::String),
        col("grantee", SqlType::String),
        col("privilege_type", SqlType::String),
        col("is_grantable", SqlType::Bool),
    ]
}

fn ext_columns() -> Vec<ColumnInfo> {
    vec![
        col("connection_name", SqlType::String),
        col("connection_uri", SqlType::String),
        col("connection_type", SqlType::String),
    ]
}

fn settings_columns() -> Vec<ColumnInfo> {
    vec![
        col("variable", SqlType::String),
        col("value", SqlType::String),
        col("setting_type", SqlType::String),
        col("description", SqlType::String),
    ]
}

fn setting_type(sess: &Session, name: &str) -> SqlType {
    match sess.server.kv.settings().get(name) {
        Ok(SettingValue::Bool(_)) => SqlType::Bool,
        Ok(SettingValue::Int(_)) => SqlType::Int8,
        Ok(SettingValue::Float(_)) => SqlType::Float8,
        _ => SqlType::String,
    }
}

// ---- execution ----

pub(crate) async fn execute(
    sess: &mut Session,
    stmt: &Statement,
    params: Vec<Datum>,
) -> Result<QueryResult> {
    use Statement as S;
    match stmt {
        S::ShowDatabases => {
            let mut rows = Vec::new();
            for d in sess.server.catalog.databases().await? {
                rows.push(vec![
                    s(d.name),
                    s(d.owner),
                    Datum::Null,
                    Datum::Null,
                    s("{}"),
                    Datum::Null,
                ]);
            }
            Ok(QueryResult::rows(databases_columns(), rows))
        }
        S::ShowSchemas { database } => {
            let db = database
                .clone()
                .unwrap_or_else(|| sess.database().to_string());
            let d = sess.server.catalog.require_database(&db).await?;
            let mut rows = vec![
                vec![s("crdb_internal"), Datum::Null],
                vec![s("information_schema"), Datum::Null],
                vec![s("pg_catalog"), Datum::Null],
                vec![s("pg_extension"), Datum::Null],
                vec![s("public"), s("admin")],
            ];
            for sch in &d.schemas {
                rows.push(vec![s(sch.clone()), s(d.owner.clone())]);
            }
            rows.sort_by(|a, b| a[0].sort_cmp(&b[0]));
            Ok(QueryResult::rows(
                vec![
                    col("schema_name", SqlType::String),
                    col("owner", SqlType::String),
                ],
                rows,
            ))
        }
        S::ShowTables { from } => show_tables(sess, from.as_deref()).await,
        S::ShowCreateTable(name) => {
            let desc = resolve::resolve_table(&sess.server.catalog, sess.database(), name).await?;
            let text = super::show_create::show_create(&sess.server.catalog, &desc).await?;
            Ok(QueryResult::rows(
                vec![
                    col("table_name", SqlType::String),
                    col("create_statement", SqlType::String),
                ],
                vec![vec![s(name.join(".")), s(text)]],
            ))
        }
        S::ShowColumns(name) => {
            let desc = resolve::resolve_table(&sess.server.catalog, sess.database(), name).await?;
            let mut rows = Vec::new();
            for c in &desc.columns {
                let indices: Vec<String> = desc
                    .all_indexes()
                    .filter(|i| {
                        !i.write_only
                            && (i.columns.iter().any(|ic| ic.column_id == c.id)
                                || i.id == 1
                                || i.storing.contains(&c.id)
                                || desc
                                    .primary_index
                                    .columns
                                    .iter()
                                    .any(|p| p.column_id == c.id))
                    })
                    .map(|i| i.name.clone())
                    .collect();
                rows.push(vec![
                    s(c.name.clone()),
                    s(c.ty.sql_name()),
                    Datum::Bool(c.nullable),
                    opt_s(c.default_expr.clone()),
                    s(""),
                    s(format!("{{{}}}", indices.join(","))),
                    Datum::Bool(c.hidden),
                ]);
            }
            Ok(QueryResult::rows(columns_columns(), rows))
        }
        S::ShowIndexes(name) => {
            let desc = resolve::resolve_table(&sess.server.catalog, sess.database(), name).await?;
            Ok(QueryResult::rows(indexes_columns(), index_rows(&desc)))
        }
        S::ShowConstraints(name) => {
            let desc = resolve::resolve_table(&sess.server.catalog, sess.database(), name).await?;
            let mut rows = Vec::new();
            let cols = |ids: &[u32]| {
                ids.iter()
                    .filter_map(|id| desc.column_by_id(*id).map(|c| c.name.clone()))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let pk_ids: Vec<u32> = desc
                .primary_index
                .columns
                .iter()
                .map(|c| c.column_id)
                .collect();
            rows.push(vec![
                s(desc.name.clone()),
                s(desc.primary_index.name.clone()),
                s("PRIMARY KEY"),
                s(format!("PRIMARY KEY ({} ASC)", cols(&pk_ids))),
                Datum::Bool(true),
            ]);
            for i in desc.indexes.iter().filter(|i| i.unique && !i.write_only) {
                let ids: Vec<u32> = i.columns.iter().map(|c| c.column_id).collect();
                rows.push(vec![
                    s(desc.name.clone()),
                    s(i.name.clone()),
                    s("UNIQUE"),
                    s(format!("UNIQUE ({} ASC)", cols(&ids))),
                    Datum::Bool(true),
                ]);
            }
            for c in &desc.checks {
                rows.push(vec![
                    s(desc.name.clone()),
                    s(c.name.clone()),
                    s("CHECK"),
                    s(format!("CHECK (({}))", c.expr)),
                    Datum::Bool(true),
                ]);
            }
            for f in &desc.foreign_keys {
                let parent = sess.server.catalog.table_by_id(f.ref_table_id).await?;
                let pname = parent.as_ref().map(|p| p.name.clone()).unwrap_or_default();
                let pcols = parent
                    .as_ref()
                    .map(|p| {
                        f.ref_columns
                            .iter()
                            .filter_map(|id| p.column_by_id(*id).map(|c| c.name.clone()))
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .unwrap_or_default();
                rows.push(vec![
                    s(desc.name.clone()),
                    s(f.name.clone()),
                    s("FOREIGN KEY"),
                    s(format!(
                        "FOREIGN KEY ({}) REFERENCES {}({})",
                        cols(&f.columns),
                        pname,
                        pcols
                    )),
                    Datum::Bool(true),
                ]);
            }
            rows.sort_by(|a, b| a[1].sort_cmp(&b[1]));
            Ok(QueryResult::rows(constraints_columns(), rows))
        }
        S::ShowRanges(from) => show_ranges(sess, from).await,
        S::ShowFingerprints(name) => {
            let desc = resolve::resolve_table(&sess.server.catalog, sess.database(), name).await?;
            privilege::require_table(sess, &desc, "SELECT").await?;
            let ts = sess.server.kv.clock().now();
            let rows = scan::read(&sess.server.kv, &desc, &scan::Access::Full, ts, None).await?;
            let out = fingerprints(&desc, rows.iter().map(|r| r.values.as_slice()))
                .into_iter()
                .map(|(n, f)| vec![s(n), Datum::Int(f)])
                .collect();
            Ok(QueryResult::rows(
                vec![
                    col("index_name", SqlType::String),
                    col("fingerprint", SqlType::Int8),
                ],
                out,
            ))
        }
        S::ShowTransactions => Ok(QueryResult::rows(
            super::activity::show_columns(),
            super::activity::show_rows(
                i64::from(sess.server.kv.node_id()),
                &sess.visible_transactions(),
            ),
        )),
        S::ShowJobs => {
            let jobs = visible_jobs(sess).await?;
            Ok(QueryResult::rows(
                jobs_columns(),
                jobs.iter().map(job_row).collect(),
            ))
        }
        S::ShowJob(e) => {
            let id = job_id(sess, e, &params)?;
            let job = sess.server.jobs.get(id).await?;
            check_job_visible(sess, &job).await?;
            Ok(QueryResult::rows(jobs_columns(), vec![job_row(&job)]))
        }
        S::ShowLogicalReplicationJobs { with_details } => {
            let jobs = visible_jobs(sess).await?;
            let hook = sess.server.replication();
            let rows = jobs
                .iter()
                .filter(|j| j.job_type == JobType::LogicalReplication)
                .map(|j| {
                    let info = hook.as_ref().and_then(|h| h.describe_job(j));
                    ldr_job_row(j, info.as_ref(), *with_details)
                })
                .collect();
            Ok(QueryResult::rows(ldr_jobs_columns(*with_details), rows))
        }
        S::PauseJob(e) | S::ResumeJob(e) | S::CancelJob(e) => {
            let id = job_id(sess, e, &params)?;
            let job = sess.server.jobs.get(id).await?;
            if job.user_name != sess.user
                && !privilege::has_system_privilege(&sess.server.catalog, &sess.user, "CONTROLJOB")
                    .await?
            {
                return Err(SqlError::insufficient_privilege(format!(
                    "user {} does not have CONTROLJOB privilege",
                    sess.user
                )));
            }
            let tag = match stmt {
                S::PauseJob(_) => {
                    sess.server.jobs.pause(id, None).await?;
                    "PAUSE JOBS"
                }
                S::ResumeJob(_) => {
                    sess.server.jobs.resume(id).await?;
                    "RESUME JOBS"
                }
                _ => {
                    sess.server.jobs.cancel(id).await?;
                    "CANCEL JOBS"
                }
            };
            Ok(QueryResult::command(tag))
        }
        S::ShowUsers => {
            let mut rows = Vec::new();
            for u in sess.server.catalog.users().await? {
                let mut opts = Vec::new();
                if !u.login {
                    opts.push("NOLOGIN");
                }
                let member_of: Vec<String> = u.roles.iter().cloned().collect();
                rows.push(vec![
                    s(u.name.clone()),
                    s(opts.join(", ")),
                    s(format!("{{{}}}", member_of.join(","))),
                ]);
            }
            Ok(QueryResult::rows(users_columns(), rows))
        }
        S::ShowGrants { table, users } => show_grants(sess, table.as_deref(), users).await,
        S::ShowSystemGrants { users } => {
            let mut rows = Vec::new();
            for u in sess.server.catalog.users().await? {
                if !users.is_empty() && !users.contains(&u.name) {
                    continue;
                }
                for p in &u.system_privileges {
                    rows.push(vec![s(u.name.clone()), s(p.clone()), Datum::Bool(false)]);
                }
            }
            Ok(QueryResult::rows(
                vec![
                    col("grantee", SqlType::String),
                    col("privilege_type", SqlType::String),
                    col("is_grantable", SqlType::Bool),
                ],
                rows,
            ))
        }
        S::VirtualTable { table, database } => {
            super::virtual_tables::rows(sess, *table, database.as_deref()).await
        }
        S::CheckConsistency {
            stats_only,
            start_key,
            end_key,
        } => super::consistency::rows(sess, *stats_only, start_key, end_key).await,
        S::ShowExternalConnections { name } => {
            privilege::require_admin(sess, "view external connections")
                .await
                .or(privilege::require_system(sess, "EXTERNALCONNECTION").await)?;
            let mut rows = Vec::new();
            for c in sess.server.catalog.external_connections().await? {
                if name.as_ref().is_some_and(|n| *n != c.name) {
                    continue;
                }
                rows.push(vec![
                    s(c.name),
                    s(redact_uri(&c.uri)),
                    s(c.connection_type.to_uppercase()),
                ]);
            }
            if let Some(n) = name
                && rows.is_empty()
            {
                return Err(SqlError::new(
                    sqlstate::UNDEFINED_OBJECT,
                    format!("external connection with name {n} does not exist"),
                ));
            }
            Ok(QueryResult::rows(ext_columns(), rows))
        }
        S::CreateExternalConnection {
            name,
            if_not_exists,
            uri,
        } => {
            if !privilege::has_system_privilege(
                &sess.server.catalog,
                &sess.user,
                "EXTERNALCONNECTION",
            )
            .await?
            {
                return Err(SqlError::insufficient_privilege(format!(
                    "user {} does not have EXTERNALCONNECTION system privilege",
                    sess.user
                )));
            }
            let uri = match sess.eval_const(uri, Some(&SqlType::String), &params)? {
                Datum::String(u) => u,
                _ => {
                    return Err(SqlError::new(
                        sqlstate::INVALID_PARAMETER_VALUE,
                        "external connection URI must be a string",
                    ));
                }
            };
            let scheme = uri.split("://").next().unwrap_or("").to_ascii_lowercase();
            if !uri.contains("://") || scheme.is_empty() {
                return Err(SqlError::new(
                    sqlstate::INVALID_PARAMETER_VALUE,
                    format!(
                        "failed to construct External Connection details: invalid URI \"{uri}\""
                    ),
                ));
            }
            let c = ExternalConnection {
                name: name.clone(),
                uri,
                owner: sess.user.clone(),
                connection_type: scheme,
            };
            if !sess.server.catalog.create_external_connection(&c).await? && !if_not_exists {
                return Err(SqlError::new(
                    sqlstate::DUPLICATE_OBJECT,
                    format!(
                        "failed to create external connection: external connection with connection name {name} already exists"
                    ),
                ));
            }
            Ok(QueryResult::command("CREATE EXTERNAL CONNECTION"))
        }
        S::DropExternalConnection { name, if_exists } => {
            if !privilege::has_system_privilege(
                &sess.server.catalog,
                &sess.user,
                "EXTERNALCONNECTION",
            )
            .await?
            {
                return Err(SqlError::insufficient_privilege(format!(
                    "user {} does not have EXTERNALCONNECTION system privilege",
                    sess.user
                )));
            }
            if !sess.server.catalog.drop_external_connection(name).await? && !if_exists {
                return Err(SqlError::new(
                    sqlstate::UNDEFINED_OBJECT,
                    format!("external connection with name {name} does not exist"),
                ));
            }
            Ok(QueryResult::command("DROP EXTERNAL CONNECTION"))
        }
        S::SetClusterSetting { name, value } => {
            if !privilege::has_system_privilege(
                &sess.server.catalog,
                &sess.user,
                "MODIFYCLUSTERSETTING",
            )
            .await?
            {
                return Err(SqlError::insufficient_privilege(format!(
                    "only users with the MODIFYCLUSTERSETTING privilege are allowed to set cluster setting '{name}'"
                )));
            }
            let r = match value {
                None => sess.server.kv.reset_setting(name).await,
                Some(e) => {
                    let v = sess.eval_const(e, None, &params)?;
                    sess.server.kv.set_setting(name, &text_of(&v)).await
                }
            };
            r.map_err(|e| setting_error(name, e))?;
            Ok(QueryResult::command("SET CLUSTER SETTING"))
        }
        S::ShowClusterSetting(name) => {
            if !privilege::has_system_privilege(
                &sess.server.catalog,
                &sess.user,
                "VIEWCLUSTERSETTING",
            )
            .await?
            {
                return Err(SqlError::insufficient_privilege(format!(
                    "only users with the VIEWCLUSTERSETTING privilege are allowed to show cluster setting '{name}'"
                )));
            }
            let settings = sess.server.kv.settings();
            let value = settings.get(name).map_err(|e| setting_error(name, e))?;
            let text = settings
                .get_text(name)
                .map_err(|e| setting_error(name, e))?;
            let (ty, d) = match value {
                SettingValue::Bool(b) => (SqlType::Bool, Datum::Bool(b)),
                SettingValue::Int(i) => (SqlType::Int8, Datum::Int(i)),
                SettingValue::Float(f) => (SqlType::Float8, Datum::Float(f)),
                _ => (SqlType::String, s(text)),
            };
            Ok(QueryResult::rows(vec![col(name, ty)], vec![vec![d]]))
        }
        S::ShowClusterSettings => {
            if !privilege::has_system_privilege(
                &sess.server.catalog,
                &sess.user,
                "VIEWCLUSTERSETTING",
            )
            .await?
            {
                return Err(SqlError::insufficient_privilege(
                    "only users with the VIEWCLUSTERSETTING privilege are allowed to SHOW CLUSTER SETTINGS",
                ));
            }
            let rows = sess
                .server
                .kv
                .settings()
                .all()
                .into_iter()
                .map(|(n, v, t, d)| vec![s(n), s(v), s(t), s(d)])
                .collect();
            Ok(QueryResult::rows(settings_columns(), rows))
        }
        other => Err(SqlError::unsupported(
            format!("statement {other:?}")
                .chars()
                .take(80)
                .collect::<String>(),
        )),
    }
}

fn setting_error(name: &str, e: ldr_kv::KvError) -> SqlError {
    match e {
        ldr_kv::KvError::UnknownSetting(_) => SqlError::new(
            sqlstate::UNDEFINED_OBJECT,
            format!("unknown cluster setting '{name}'"),
        ),
        ldr_kv::KvError::InvalidSetting { value, detail, .. } => SqlError::new(
            sqlstate::INVALID_PARAMETER_VALUE,
            format!("invalid value for cluster setting '{name}': \"{value}\": {detail}"),
        ),
        other => other.into(),
    }
}

/// Hides the password of a `postgresql://user:password@…` URI.
pub fn redact_uri(uri: &str) -> String {
    if let Some((scheme, rest)) = uri.split_once("://")
        && let Some((userinfo, host)) = rest.split_once('@')
        && let Some((user, _)) = userinfo.split_once(':')
    {
        return format!("{scheme}://{user}:redacted@{host}");
    }
    uri.to_string()
}

/// `SHOW RANGES FROM TABLE t | FROM DATABASE d`, `SHOW RANGES` (the current database) and
/// `SHOW CLUSTER RANGES` (every range, the system range first).
async fn show_ranges(sess: &mut Session, from: &RangesFrom) -> Result<QueryResult> {
    let kv = sess.server.kv.clone();
    let mut ranges = match from {
        RangesFrom::Table(name) => {
            let desc = resolve::resolve_table(&sess.server.catalog, sess.database(), name).await?;
            kv.table_ranges_fresh(desc.id).await?
        }
        RangesFrom::Database(name) => {
            let db = name.clone().unwrap_or_else(|| sess.database().to_string());
            let d = sess.server.catalog.require_database(&db).await?;
            let mut all = Vec::new();
            for t in sess.server.catalog.tables_in(d.id).await? {
                match kv.table_ranges_fresh(t.id).await {
                    Ok(r) => all.extend(r),
                    Err(ldr_kv::KvError::NoRanges { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            all
        }
        RangesFrom::Cluster => {
            privilege::require_admin(sess, "show cluster ranges").await?;
            kv.cluster_ranges().await?
        }
    };
    ranges.sort_by(|a, b| a.span.start.cmp(&b.span.start));
    let mut rows = Vec::with_capacity(ranges.len());
    for r in ranges {
        // A range whose leaseholder cannot be found now shows NULL, as CockroachDB.
        let lease_holder = match kv.range_leaseholder(&r).await {
            Ok(n) => Datum::Int(i64::from(n)),
            Err(e) if e.is_retryable() => Datum::Null,
            Err(e) => return Err(e.into()),
        };
        let mut replicas = if r.is_replicated() {
            r.replicas.clone()
        } else {
            vec![r.node_id]
        };
        replicas.sort_unstable();
        let list = |nodes: &[ldr_types::NodeId]| {
            let items: Vec<String> = nodes.iter().map(|n| n.to_string()).collect();
            s(format!("{{{}}}", items.join(",")))
        };
        rows.push(vec![
            Datum::Int(r.range_id as i64),
            s(keys::pretty_key(&r.span.start)),
            s(keys::pretty_key(&r.span.end)),
            lease_holder,
            list(&replicas),
            list(&replicas),
        ]);
    }
    Ok(QueryResult::rows(ranges_columns(), rows))
}

async fn show_tables(sess: &mut Session, from: Option<&[String]>) -> Result<QueryResult> {
    let (db, schema) = match from {
        None => (sess.database().to_string(), None),
        Some([d]) => {
            // `SHOW TABLES FROM x`: a database, or a schema of the current database.
            if sess.server.catalog.database(d).await?.is_some() {
                (d.clone(), None)
            } else {
                (sess.database().to_string(), Some(d.clone()))
            }
        }
        Some([d, sch]) => (d.clone(), Some(sch.clone())),
        Some(_) => {
            return Err(SqlError::new(
                sqlstate::SYNTAX_ERROR,
                "improper qualified name",
            ));
        }
    };
    let d = sess.server.catalog.require_database(&db).await?;
    let mut rows = Vec::new();
    for t in sess.server.catalog.tables_in(d.id).await? {
        if schema.as_ref().is_some_and(|sch| *sch != t.schema) {
            continue;
        }
        let count = estimated_rows(sess, &t).await?;
        rows.push(vec![
            s(t.schema.clone()),
            s(t.name.clone()),
            s("table"),
            s(t.owner.clone()),
            Datum::Int(count),
            Datum::Null,
        ]);
    }
    Ok(QueryResult::rows(tables_columns(), rows))
}

/// Counts rows, stopping at 100 000 (an estimate for large tables).
async fn estimated_rows(sess: &Session, t: &TableDescriptor) -> Result<i64> {
    const CAP: usize = 100_000;
    let kv = &sess.server.kv;
    let ts = kv.clock().now();
    let mut total = 0usize;
    for shard in 0..t.shard_count.max(1) {
        let span = keys::index_span(t.id, shard, ldr_types::PRIMARY_INDEX_ID);
        let mut start = span.start.clone();
        loop {
            let page = kv
                .scan(
                    &ldr_types::Span::new(start.clone(), span.end.clone()),
                    Some(ts),
                    1000,
                )
                .await?;
            total += page.len();
            if page.len() < 1000 || total >= CAP {
                break;
            }
            if let Some(last) = page.last() {
                start = last.key.clone();
                start.push(0);
            }
        }
        if total >= CAP {
            break;
        }
    }
    Ok(total as i64)
}

fn index_rows(desc: &TableDescriptor) -> Vec<Vec<Datum>> {
    let mut rows = Vec::new();
    for idx in desc.all_indexes().filter(|i| !i.write_only) {
        let mut seq = 0;
        let mut key_ids = Vec::new();
        let name_of = |id: u32| {
            desc.column_by_id(id)
                .map(|c| c.name.clone())
                .unwrap_or_default()
        };
        let def_cols: Vec<String> = idx
            .columns
            .iter()
            .map(|c| {
                format!(
                    "{} {}",
                    name_of(c.column_id),
                    if c.descending { "DESC" } else { "ASC" }
                )
            })
            .collect();
        let definition = format!(
            "CREATE {}INDEX {} ON {}.{}.{} USING btree ({})",
            if idx.unique { "UNIQUE " } else { "" },
            idx.name,
            desc.database,
            desc.schema,
            desc.name,
            def_cols.join(", ")
        );
        for c in &idx.columns {
            seq += 1;
            key_ids.push(c.column_id);
            rows.push(vec![
                s(desc.name.clone()),
                s(idx.name.clone()),
                Datum::Bool(!idx.unique),
                Datum::Int(seq),
                s(name_of(c.column_id)),
                s(definition.clone()),
                s(if c.descending { "DESC" } else { "ASC" }),
                Datum::Bool(false),
                Datum::Bool(false),
                Datum::Bool(true),
            ]);
        }
        let is_primary = idx.id == ldr_types::PRIMARY_INDEX_ID;
        let stored: Vec<u32> = if is_primary {
            desc.columns
                .iter()
                .map(|c| c.id)
                .filter(|id| !key_ids.contains(id))
                .collect()
        } else {
            idx.storing.clone()
        };
        for id in stored {
            seq += 1;
            rows.push(vec![
                s(desc.name.clone()),
                s(idx.name.clone()),
                Datum::Bool(!idx.unique),
                Datum::Int(seq),
                s(name_of(id)),
                s(definition.clone()),
                s("N/A"),
                Datum::Bool(true),
                Datum::Bool(false),
                Datum::Bool(true),
            ]);
        }
        if !is_primary {
            for c in &desc.primary_index.columns {
                if key_ids.contains(&c.column_id) {
                    continue;
                }
                seq += 1;
                rows.push(vec![
                    s(desc.name.clone()),
                    s(idx.name.clone()),
                    Datum::Bool(!idx.unique),
                    Datum::Int(seq),
                    s(name_of(c.column_id)),
                    s(definition.clone()),
                    s("ASC"),
                    Datum::Bool(false),
                    Datum::Bool(true),
                    Datum::Bool(true),
                ]);
            }
        }
    }
    rows
}

/// `SHOW EXPERIMENTAL_FINGERPRINTS`: one order-independent fingerprint per index over the
/// live rows (the wrapping sum of FNV-1a 64 over each row's canonical encoding of the
/// index's key columns, then the primary key columns, then the other columns it holds, the
/// latter by name), so clusters holding the same rows agree whatever their column ids.
pub fn fingerprints<'a>(
    desc: &TableDescriptor,
    rows: impl Iterator<Item = &'a [Datum]>,
) -> Vec<(String, i64)> {
    let indexes: Vec<&crate::catalog::IndexDescriptor> =
        desc.all_indexes().filter(|i| !i.write_only).collect();
    let layouts: Vec<Vec<usize>> = indexes
        .iter()
        .map(|idx| {
            let mut positions = desc.index_positions(idx);
            let pk = desc.pk_positions();
            for p in &pk {
                if !positions.contains(p) {
                    positions.push(*p);
                }
            }
            let mut rest: Vec<usize> = if idx.id == ldr_types::PRIMARY_INDEX_ID {
                (0..desc.columns.len())
                    .filter(|i| !positions.contains(i))
                    .collect()
            } else {
                idx.storing
                    .iter()
                    .filter_map(|id| desc.column_index_by_id(*id))
                    .filter(|i| !positions.contains(i))
                    .collect()
            };
            rest.sort_by(|a, b| desc.columns[*a].name.cmp(&desc.columns[*b].name));
            positions.extend(rest);
            positions
        })
        .collect();
    let mut sums = vec![0u64; indexes.len()];
    for row in rows {
        for (i, layout) in layouts.iter().enumerate() {
            sums[i] = sums[i].wrapping_add(keys::fnv1a64(&rowcodec::canonical_bytes(row, layout)));
        }
    }
    indexes
        .iter()
        .zip(sums)
        .map(|(idx, sum)| (idx.name.clone(), sum as i64))
        .collect()
}

async fn show_grants(
    sess: &mut Session,
    table: Option<&[String]>,
    users: &[String],
) -> Result<QueryResult> {
    let tables: Vec<std::sync::Arc<TableDescriptor>> = match table {
        Some(t) => vec![resolve::resolve_table(&sess.server.catalog, sess.database(), t).await?],
        None => {
            let d = sess
                .server
                .catalog
                .require_database(sess.database())
                .await?;
            sess.server.catalog.tables_in(d.id).await?
        }
    };
    let mut rows = Vec::new();
    for t in tables {
        let mut entries: Vec<(String, String)> = vec![
            ("admin".into(), "ALL".into()),
            ("root".into(), "ALL".into()),
        ];
        if t.owner != "root" && t.owner != "admin" {
            entries.push((t.owner.clone(), "ALL".into()));
        }
        for (u, privs) in &t.privileges {
            for p in privs {
                entries.push((u.clone(), p.clone()));
            }
        }
        for (u, p) in entries {
            if !users.is_empty() && !users.contains(&u) {
                continue;
            }
            rows.push(vec![
                s(t.database.clone()),
                s(t.schema.clone()),
                s(t.name.clone()),
                s(u),
                s(p),
                Datum::Bool(false),
            ]);
        }
    }
    Ok(QueryResult::rows(grants_columns(), rows))
}

fn ts_datum(ts: ldr_types::Timestamp) -> Datum {
    if ts.is_zero() {
        Datum::Null
    } else {
        Datum::TimestampTz((ts.wall_time_ns / 1000) as i64)
    }
}

fn job_row(j: &JobRecord) -> Vec<Datum> {
    vec![
        Datum::Int(j.id),
        s(j.job_type.as_str()),
        s(j.description.clone()),
        s(j.user_name.clone()),
        s(j.status.as_str()),
        opt_s(j.running_status.clone()),
        ts_datum(j.created),
        j.finished.map(ts_datum).unwrap_or(Datum::Null),
        Datum::Float(j.fraction_completed),
        s(j.error.clone().unwrap_or_default()),
        j.coordinator_id
            .map(|n| Datum::Int(i64::from(n)))
            .unwrap_or(Datum::Null),
    ]
}

/// A row of `SHOW LOGICAL REPLICATION JOBS`: the job's id and status, and what the
/// replication hook read from its record (NULLs when it could not).
fn ldr_job_row(
    j: &JobRecord,
    info: Option<&LogicalReplicationJobInfo>,
    details: bool,
) -> Vec<Datum> {
    let status = match j.status {
        JobStatus::PauseRequested => "pause-requested",
        other => other.as_str(),
    };
    let ts = |t: Option<ldr_types::Timestamp>| match t {
        Some(t) if !t.is_zero() => ts_datum(t),
        _ => Datum::Null,
    };
    let text = |f: fn(&LogicalReplicationJobInfo) -> String| info.map_or(Datum::Null, |i| s(f(i)));
    let mut row = vec![
        Datum::Int(j.id),
        s(status),
        text(|i| format!("{{{}}}", i.tables.join(","))),
        ts(info.and_then(|i| i.replicated_time)),
    ];
    if details {
        row.push(ts(info.and_then(|i| i.replication_start_time)));
        row.push(text(|i| i.conflict_resolution_type.clone()));
        row.push(text(|i| i.command.clone()));
    }
    row
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_redaction() {
        assert_eq!(
            redact_uri("postgresql://u:secret@host:26257/db?sslmode=disable"),
            "postgresql://u:redacted@host:26257/db?sslmode=disable"
        );
        assert_eq!(redact_uri("postgresql://u@host:1"), "postgresql://u@host:1");
    }

    #[test]
    fn ldr_rows_show_what_the_hook_describes() {
        let j = JobRecord {
            id: 7,
            job_type: JobType::LogicalReplication,
            description: "d".into(),
            user_name: "root".into(),
            status: JobStatus::Running,
            running_status: None,
            created: ldr_types::Timestamp::new(1_700_000_000_000_000_000, 0),
            finished: None,
            fraction_completed: 0.0,
            error: None,
            coordinator_id: Some(1),
            payload: serde_json::json!({"ingest": "owns this shape"}),
            progress: serde_json::json!({}),
        };
        let info = LogicalReplicationJobInfo {
            tables: vec!["db.public.t".into(), "db.public.u".into()],
            replicated_time: None,
            replication_start_time: Some(ldr_types::Timestamp::new(1_700_000_000_000_000_000, 0)),
            conflict_resolution_type: "LWW".into(),
            command: "CREATE LOGICAL REPLICATION STREAM …".into(),
        };
        let row = ldr_job_row(&j, Some(&info), true);
        assert_eq!(row[0], Datum::Int(7));
        assert_eq!(row[1], s("running"));
        assert_eq!(row[2], s("{db.public.t,db.public.u}"));
        assert_eq!(
            row[3],
            Datum::Null,
            "no replicated time before the initial scan is done"
        );
        assert_eq!(row[4].to_text(0).as_deref(), Some("2023-11-14 22:13:20+00"));
        assert_eq!(row[5], s("LWW"));
        assert_eq!(row[6], s("CREATE LOGICAL REPLICATION STREAM …"));
        // A record the hook cannot read still lists the job, with NULLs.
        let row = ldr_job_row(&j, None, false);
        assert_eq!(
            row,
            vec![Datum::Int(7), s("running"), Datum::Null, Datum::Null]
        );
    }
}

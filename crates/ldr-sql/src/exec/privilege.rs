//! Users and privileges: CREATE/ALTER/DROP USER, GRANT/REVOKE (system, table, database,
//! role membership), and the checks statements make. `root` and members of `admin` hold
//! every privilege; a table's owner holds every privilege on it.

use super::{QueryResult, Session, resolve};
use crate::catalog::store::user_missing;
use crate::catalog::{Catalog, TableDescriptor, UserRecord};
use crate::error::{Result, SqlError, sqlstate};
use crate::parser::Statement;

/// System privileges accepted by `GRANT SYSTEM`.
pub const SYSTEM_PRIVILEGES: &[&str] = &[
    "ALL",
    "BACKUP",
    "CANCELQUERY",
    "CHANGEFEED",
    "CONTROLJOB",
    "CREATEDB",
    "CREATELOGIN",
    "CREATEROLE",
    "EXTERNALCONNECTION",
    "EXTERNALIOIMPLICITACCESS",
    "MODIFYCLUSTERSETTING",
    "MODIFYSQLCLUSTERSETTING",
    "NOSQLLOGIN",
    "REPAIRCLUSTER",
    "REPLICATION",
    "REPLICATIONDEST",
    "REPLICATIONSOURCE",
    "RESTORE",
    "VIEWACTIVITY",
    "VIEWACTIVITYREDACTED",
    "VIEWCLUSTERMETADATA",
    "VIEWCLUSTERSETTING",
    "VIEWDEBUG",
    "VIEWJOB",
    "VIEWSYSTEMTABLE",
];

/// Table privileges accepted by `GRANT … ON TABLE`.
pub const TABLE_PRIVILEGES: &[&str] = &[
    "ALL",
    "SELECT",
    "INSERT",
    "UPDATE",
    "DELETE",
    "DROP",
    "CREATE",
    "ZONECONFIG",
    "CHANGEFEED",
    "BACKUP",
    "REPLICATIONSOURCE",
    "REPLICATIONDEST",
];

const DATABASE_PRIVILEGES: &[&str] = &[
    "ALL",
    "CREATE",
    "CONNECT",
    "DROP",
    "ZONECONFIG",
    "BACKUP",
    "RESTORE",
];

async fn user_record(catalog: &Catalog, user: &str) -> Result<Option<UserRecord>> {
    catalog.user(user).await
}

pub(crate) async fn is_admin(catalog: &Catalog, user: &str) -> Result<bool> {
    if user == "root" || user == "node" {
        return Ok(true);
    }
    Ok(user_record(catalog, user)
        .await?
        .is_some_and(|u| u.is_admin()))
}

/// See [`super::SqlServer::has_system_privilege`].
pub(crate) async fn has_system_privilege(
    catalog: &Catalog,
    user: &str,
    privilege: &str,
) -> Result<bool> {
    if user == "root" || user == "node" {
        return Ok(true);
    }
    let Some(u) = user_record(catalog, user).await? else {
        return Ok(false);
    };
    if u.is_admin() {
        return Ok(true);
    }
    let p = privilege.to_ascii_uppercase();
    let held = |x: &str| u.system_privileges.contains(x);
    Ok(held(&p)
        || held("ALL")
        || (matches!(p.as_str(), "REPLICATIONSOURCE" | "REPLICATIONDEST") && held("REPLICATION"))
        || (p == "VIEWCLUSTERSETTING" && held("MODIFYCLUSTERSETTING")))
}

/// See [`super::SqlServer::has_table_privilege`].
pub(crate) async fn has_table_privilege(
    catalog: &Catalog,
    user: &str,
    table: &TableDescriptor,
    privilege: &str,
) -> Result<bool> {
    if table.owner == user || is_admin(catalog, user).await? {
        return Ok(true);
    }
    let p = privilege.to_ascii_uppercase();
    Ok(table
        .privileges
        .get(user)
        .is_some_and(|set| set.contains(&p) || set.contains("ALL")))
}

pub(crate) async fn require_table(
    s: &Session,
    table: &TableDescriptor,
    privilege: &str,
) -> Result<()> {
    if has_table_privilege(&s.server.catalog, &s.user, table, privilege).await? {
        return Ok(());
    }
    Err(SqlError::insufficient_privilege(format!(
        "user {} does not have {} privilege on relation {}",
        s.user,
        privilege.to_ascii_uppercase(),
        table.name
    )))
}

pub(crate) async fn require_system(s: &Session, privilege: &str) -> Result<()> {
    if has_system_privilege(&s.server.catalog, &s.user, privilege).await? {
        return Ok(());
    }
    Err(SqlError::insufficient_privilege(format!(
        "user {} does not have {} system privilege",
        s.user, privilege
    )))
}

pub(crate) async fn require_admin(s: &Session, what: &str) -> Result<()> {
    if is_admin(&s.server.catalog, &s.user).await? {
        return Ok(());
    }
    Err(SqlError::insufficient_privilege(format!(
        "only users with the admin role are allowed to {what}"
    )))
}

/// CREATE on a database (tables, schemas).
pub(crate) async fn require_database_create(
    s: &Session,
    db: &crate::catalog::DatabaseDescriptor,
) -> Result<()> {
    if db.owner == s.user || is_admin(&s.server.catalog, &s.user).await? {
        return Ok(());
    }
    if db
        .privileges
        .get(&s.user)
        .is_some_and(|p| p.contains("CREATE") || p.contains("ALL"))
    {
        return Ok(());
    }
    Err(SqlError::insufficient_privilege(format!(
        "user {} does not have CREATE privilege on database {}",
        s.user, db.name
    )))
}

fn check_names(privs: &[String], allowed: &[&str], kind: &str) -> Result<Vec<String>> {
    privs
        .iter()
        .map(|p| {
            let p = p.to_ascii_uppercase();
            if allowed.contains(&p.as_str()) {
                Ok(p)
            } else {
                Err(SqlError::new(
                    sqlstate::INVALID_PARAMETER_VALUE,
                    format!("invalid privilege type {p} for {kind}"),
                ))
            }
        })
        .collect()
}

async fn require_user_exists(catalog: &Catalog, users: &[String]) -> Result<()> {
    for u in users {
        if catalog.user(u).await?.is_none() {
            return Err(user_missing(u));
        }
    }
    Ok(())
}

pub(crate) async fn execute(s: &mut Session, stmt: &Statement) -> Result<QueryResult> {
    let catalog = &s.server.catalog;
    match stmt {
        Statement::CreateUser(spec) => {
            if !has_system_privilege(catalog, &s.user, "CREATEROLE").await? {
                return Err(SqlError::insufficient_privilege(format!(
                    "user {} does not have CREATEROLE privilege",
                    s.user
                )));
            }
            validate_user_name(&spec.name)?;
            let mut u = UserRecord::new(&spec.name);
            if let Some(login) = spec.login {
                u.login = login;
            }
            if let Some(p) = &spec.password {
                u.set_password(p.as_deref());
            }
            if !catalog.create_user(&u).await? {
                if spec.if_not_exists {
                    return Ok(QueryResult::command("CREATE ROLE"));
                }
                return Err(SqlError::new(
                    sqlstate::DUPLICATE_OBJECT,
                    format!("a role/user named {} already exists", spec.name),
                ));
            }
            Ok(QueryResult::command("CREATE ROLE"))
        }
        Statement::AlterUser(spec) => {
            if spec.name != s.user && !has_system_privilege(catalog, &s.user, "CREATEROLE").await? {
                return Err(SqlError::insufficient_privilege(format!(
                    "user {} does not have CREATEROLE privilege",
                    s.user
                )));
            }
            let password = spec.password.clone();
            let login = spec.login;
            catalog
                .update_user(&spec.name, &move |u| {
                    if let Some(p) = &password {
                        u.set_password(p.as_deref());
                    }
                    if let Some(l) = login {
                        u.login = l;
                    }
                    Ok(())
                })
                .await?;
            Ok(QueryResult::command("ALTER ROLE"))
        }
        Statement::DropUser { names, if_exists } => {
            if !has_system_privilege(catalog, &s.user, "CREATEROLE").await? {
                return Err(SqlError::insufficient_privilege(format!(
                    "user {} does not have CREATEROLE privilege",
                    s.user
                )));
            }
            for n in names {
                if n == "root" || n == "admin" {
                    return Err(SqlError::insufficient_privilege(format!(
                        "cannot drop role/user {n}: grants still exist on system objects"
                    )));
                }
                if n == &s.user {
                    return Err(SqlError::new(
                        sqlstate::OBJECT_IN_USE,
                        "cannot drop the current user",
                    ));
                }
                if !catalog.delete_user(n).await? && !if_exists {
                    return Err(user_missing(n));
                }
            }
            Ok(QueryResult::command("DROP ROLE"))
        }
        Statement::GrantSystem { privileges, users }
        | Statement::RevokeSystem { privileges, users } => {
            require_admin(s, "grant system privileges").await?;
            let privs = check_names(privileges, SYSTEM_PRIVILEGES, "system")?;
            require_user_exists(catalog, users).await?;
            let grant = matches!(stmt, Statement::GrantSystem { .. });
            for u in users {
                let privs = privs.clone();
                catalog
                    .update_user(u, &move |rec| {
                        for p in &privs {
                            if grant {
                                rec.system_privileges.insert(p.clone());
                            } else if p == "ALL" {
                                rec.system_privileges.clear();
                            } else {
                                rec.system_privileges.remove(p);
                            }
                        }
                        Ok(())
                    })
                    .await?;
            }
            Ok(QueryResult::command(if grant { "GRANT" } else { "REVOKE" }))
        }
        Statement::GrantTable {
            privileges,
            tables,
            users,
        }
        | Statement::RevokeTable {
            privileges,
            tables,
            users,
        } => {
            let privs = check_names(privileges, TABLE_PRIVILEGES, "table")?;
            require_user_exists(catalog, users).await?;
            let grant = matches!(stmt, Statement::GrantTable { .. });
            for name in tables {
                let desc = resolve::resolve_table(catalog, s.database(), name).await?;
                if desc.owner != s.user && !is_admin(catalog, &s.user).await? {
                    return Err(SqlError::insufficient_privilege(format!(
                        "user {} does not have GRANT privilege on relation {}",
                        s.user, desc.name
                    )));
                }
                let privs = privs.clone();
                let users = users.clone();
                catalog
                    .update_table(desc.id, &move |d| {
                        for u in &users {
                            let set = d.privileges.entry(u.clone()).or_default();
                            for p in &privs {
                                if grant {
                                    set.insert(p.clone());
                                } else if p == "ALL" {
                                    set.clear();
                                } else {
                                    set.remove(p);
                                }
                            }
                            if set.is_empty() {
                                d.privileges.remove(u);
                            }
                        }
                        Ok(())
                    })
                    .await?;
            }
            Ok(QueryResult::command(if grant { "GRANT" } else { "REVOKE" }))
        }
        Statement::GrantDatabase {
            privileges,
            databases,
            users,
        }
        | Statement::RevokeDatabase {
            privileges,
            databases,
            users,
        } => {
            require_admin(s, "grant database privileges").await?;
            let privs = check_names(privileges, DATABASE_PRIVILEGES, "database")?;
            require_user_exists(catalog, users).await?;
            let grant = matches!(stmt, Statement::GrantDatabase { .. });
            for db in databases {
                let privs = privs.clone();
                let users = users.clone();
                catalog
                    .update_database(db, &move |d| {
                        for u in &users {
                            let set = d.privileges.entry(u.clone()).or_default();
                            for p in &privs {
                                if grant {
                                    set.insert(p.clone());
                                } else {
                                    set.remove(p);
                                }
                            }
                        }
                        Ok(())
                    })
                    .await?;
            }
            Ok(QueryResult::command(if grant { "GRANT" } else { "REVOKE" }))
        }
        Statement::GrantRole { roles, users } | Statement::RevokeRole { roles, users } => {
            require_admin(s, "grant roles").await?;
            require_user_exists(catalog, roles).await?;
            require_user_exists(catalog, users).await?;
            let grant = matches!(stmt, Statement::GrantRole { .. });
            for u in users {
                let roles = roles.clone();
                catalog
                    .update_user(u, &move |rec| {
                        for r in &roles {
                            if grant {
                                rec.roles.insert(r.clone());
                            } else {
                                rec.roles.remove(r);
                            }
                        }
                        Ok(())
                    })
                    .await?;
            }
            Ok(QueryResult::command(if grant { "GRANT" } else { "REVOKE" }))
        }
        _ => Err(SqlError::internal("not a privilege statement")),
    }
}

fn validate_user_name(name: &str) -> Result<()> {
    // `node` is the internal executor's user (it owns the DLQ tables); `public` and `none`
    // are CockroachDB's other reserved role names.
    if matches!(name, "node" | "public" | "none") {
        return Err(SqlError::new(
            "42939",
            format!("role name \"{name}\" is reserved"),
        ));
    }
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(SqlError::new(
            sqlstate::INVALID_NAME,
            format!(
                "username \"{name}\" invalid; usernames are case insensitive, must start with a letter, digit or underscore, may contain letters, digits, dashes, periods, or underscores, and must not exceed 63 characters"
            ),
        ))
    }
}

//! The crate's error type: every failure a SQL client can see carries a SQLSTATE, a lowercase
//! PostgreSQL-style message and optional detail/hint; cluster and job errors are wrapped and
//! mapped to the SQLSTATE class that tells a caller whether retrying can help.

use std::fmt;

/// SQLSTATE codes used by this crate (PostgreSQL / CockroachDB values).
pub mod sqlstate {
    pub const SUCCESSFUL_COMPLETION: &str = "00000";
    pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
    pub const INVALID_PARAMETER_VALUE: &str = "22023";
    pub const INVALID_TEXT_REPRESENTATION: &str = "22P02";
    pub const NUMERIC_VALUE_OUT_OF_RANGE: &str = "22003";
    pub const DIVISION_BY_ZERO: &str = "22012";
    pub const INVALID_ARGUMENT_FOR_POWER: &str = "2201F";
    pub const STRING_DATA_RIGHT_TRUNCATION: &str = "22001";
    pub const DATETIME_FIELD_OVERFLOW: &str = "22008";
    pub const INVALID_DATETIME_FORMAT: &str = "22007";
    pub const INVALID_ESCAPE_SEQUENCE: &str = "22025";
    pub const CHARACTER_NOT_IN_REPERTOIRE: &str = "22021";
    pub const NOT_NULL_VIOLATION: &str = "23502";
    pub const FOREIGN_KEY_VIOLATION: &str = "23503";
    pub const UNIQUE_VIOLATION: &str = "23505";
    pub const CHECK_VIOLATION: &str = "23514";
    pub const INVALID_TRANSACTION_STATE: &str = "25000";
    pub const INVALID_SAVEPOINT_SPECIFICATION: &str = "3B001";
    pub const INVALID_FOREIGN_KEY: &str = "42830";
    pub const ACTIVE_SQL_TRANSACTION: &str = "25001";
    pub const NO_ACTIVE_SQL_TRANSACTION: &str = "25P01";
    pub const IN_FAILED_SQL_TRANSACTION: &str = "25P02";
    pub const INVALID_AUTHORIZATION: &str = "28000";
    pub const INVALID_PASSWORD: &str = "28P01";
    pub const INVALID_CATALOG_NAME: &str = "3D000";
    pub const INVALID_SCHEMA_NAME: &str = "3F000";
    pub const SERIALIZATION_FAILURE: &str = "40001";
    pub const STATEMENT_COMPLETION_UNKNOWN: &str = "40003";
    pub const SYNTAX_ERROR: &str = "42601";
    pub const INSUFFICIENT_PRIVILEGE: &str = "42501";
    pub const UNDEFINED_COLUMN: &str = "42703";
    pub const UNDEFINED_FUNCTION: &str = "42883";
    pub const UNDEFINED_TABLE: &str = "42P01";
    pub const UNDEFINED_OBJECT: &str = "42704";
    pub const DUPLICATE_COLUMN: &str = "42701";
    pub const DUPLICATE_DATABASE: &str = "42P04";
    pub const DUPLICATE_TABLE: &str = "42P07";
    pub const DUPLICATE_OBJECT: &str = "42710";
    pub const DUPLICATE_SCHEMA: &str = "42P06";
    pub const AMBIGUOUS_COLUMN: &str = "42702";
    pub const DATATYPE_MISMATCH: &str = "42804";
    pub const CANNOT_COERCE: &str = "42846";
    pub const GROUPING_ERROR: &str = "42803";
    pub const INVALID_COLUMN_REFERENCE: &str = "42P10";
    pub const INVALID_TABLE_DEFINITION: &str = "42P16";
    pub const UNDEFINED_PARAMETER: &str = "42P02";
    pub const AMBIGUOUS_PARAMETER: &str = "42P08";
    pub const INDETERMINATE_DATATYPE: &str = "42P18";
    pub const WRONG_OBJECT_TYPE: &str = "42809";
    pub const INVALID_NAME: &str = "42602";
    pub const DEPENDENT_OBJECTS_STILL_EXIST: &str = "2BP01";
    pub const OBJECT_NOT_IN_PREREQUISITE_STATE: &str = "55000";
    pub const CANT_CHANGE_RUNTIME_PARAM: &str = "55P02";
    pub const OBJECT_IN_USE: &str = "55006";
    pub const PROTOCOL_VIOLATION: &str = "08P01";
    pub const RANGE_UNAVAILABLE: &str = "58C00";
    pub const INTERNAL_ERROR: &str = "XX000";
    pub const CARDINALITY_VIOLATION: &str = "21000";
    pub const INVALID_ROW_COUNT: &str = "2201W";
    pub const PROGRAM_LIMIT_EXCEEDED: &str = "54000";
    /// `stack depth limit exceeded` (PostgreSQL's name for the condition).
    pub const STATEMENT_TOO_COMPLEX: &str = "54001";
    pub const OUT_OF_MEMORY: &str = "53200";
    pub const QUERY_CANCELED: &str = "57014";
}

/// A user-facing SQL error (what an ErrorResponse carries).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgError {
    pub code: &'static str,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl fmt::Display for PgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Errors of the SQL layer.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    /// An error with a SQLSTATE, shown to the client as is.
    #[error("{0}")]
    Pg(PgError),
    #[error("{0}")]
    Kv(#[from] ldr_kv::KvError),
    #[error("{0}")]
    Jobs(#[from] ldr_jobs::JobError),
}

pub type Result<T, E = SqlError> = std::result::Result<T, E>;

impl SqlError {
    pub fn new(code: &'static str, message: impl Into<String>) -> SqlError {
        SqlError::Pg(PgError {
            code,
            message: message.into(),
            detail: None,
            hint: None,
        })
    }

    pub fn with_detail(self, detail: impl Into<String>) -> SqlError {
        match self {
            SqlError::Pg(mut e) => {
                e.detail = Some(detail.into());
                SqlError::Pg(e)
            }
            other => other,
        }
    }

    pub fn with_hint(self, hint: impl Into<String>) -> SqlError {
        match self {
            SqlError::Pg(mut e) => {
                e.hint = Some(hint.into());
                SqlError::Pg(e)
            }
            other => other,
        }
    }

    /// The SQLSTATE a client sees.
    pub fn code(&self) -> &'static str {
        match self {
            SqlError::Pg(e) => e.code,
            SqlError::Kv(e) => kv_code(e),
            SqlError::Jobs(ldr_jobs::JobError::NotFound(_)) => sqlstate::UNDEFINED_OBJECT,
            SqlError::Jobs(ldr_jobs::JobError::InvalidTransition(_)) => {
                sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE
            }
            SqlError::Jobs(ldr_jobs::JobError::Kv(e)) => kv_code(e),
            SqlError::Jobs(_) => sqlstate::INTERNAL_ERROR,
        }
    }

    pub fn message(&self) -> String {
        match self {
            SqlError::Pg(e) => e.message.clone(),
            other => other.to_string(),
        }
    }

    pub fn detail(&self) -> Option<&str> {
        match self {
            SqlError::Pg(e) => e.detail.as_deref(),
            _ => None,
        }
    }

    pub fn hint(&self) -> Option<&str> {
        match self {
            SqlError::Pg(e) => e.hint.as_deref(),
            _ => None,
        }
    }

    /// Whether running the same statement again later may succeed (node down, contention).
    pub fn is_retryable(&self) -> bool {
        let code = self.code();
        code.starts_with("40") || code.starts_with("58")
    }

    /// As a [`PgError`] (cluster errors get their SQLSTATE and text).
    pub fn to_pg(&self) -> PgError {
        match self {
            SqlError::Pg(e) => e.clone(),
            other => PgError {
                code: other.code(),
                message: other.to_string(),
                detail: None,
                hint: None,
            },
        }
    }

    // ---- common constructors ----

    pub fn syntax(near: &str) -> SqlError {
        SqlError::new(
            sqlstate::SYNTAX_ERROR,
            format!("at or near \"{near}\": syntax error"),
        )
    }

    pub fn unsupported(what: impl fmt::Display) -> SqlError {
        SqlError::new(
            sqlstate::FEATURE_NOT_SUPPORTED,
            format!("unimplemented: {what}"),
        )
    }

    pub fn undefined_table(name: impl fmt::Display) -> SqlError {
        SqlError::new(
            sqlstate::UNDEFINED_TABLE,
            format!("relation \"{name}\" does not exist"),
        )
    }

    pub fn undefined_column(name: impl fmt::Display) -> SqlError {
        SqlError::new(
            sqlstate::UNDEFINED_COLUMN,
            format!("column \"{name}\" does not exist"),
        )
    }

    pub fn undefined_database(name: impl fmt::Display) -> SqlError {
        SqlError::new(
            sqlstate::INVALID_CATALOG_NAME,
            format!("database \"{name}\" does not exist"),
        )
    }

    pub fn internal(what: impl fmt::Display) -> SqlError {
        SqlError::new(sqlstate::INTERNAL_ERROR, format!("internal error: {what}"))
    }

    pub fn invalid_text(value: &str, type_name: &str) -> SqlError {
        SqlError::new(
            sqlstate::INVALID_TEXT_REPRESENTATION,
            format!("could not parse \"{value}\" as type {type_name}"),
        )
    }

    pub fn out_of_range(what: impl fmt::Display) -> SqlError {
        SqlError::new(sqlstate::NUMERIC_VALUE_OUT_OF_RANGE, what.to_string())
    }

    pub fn datatype_mismatch(what: impl fmt::Display) -> SqlError {
        SqlError::new(sqlstate::DATATYPE_MISMATCH, what.to_string())
    }

    pub fn insufficient_privilege(what: impl fmt::Display) -> SqlError {
        SqlError::new(sqlstate::INSUFFICIENT_PRIVILEGE, what.to_string())
    }
}

fn kv_code(e: &ldr_kv::KvError) -> &'static str {
    if e.is_retryable() {
        match e {
            ldr_kv::KvError::Storage(_) => sqlstate::SERIALIZATION_FAILURE,
            ldr_kv::KvError::AmbiguousResult { .. } => sqlstate::STATEMENT_COMPLETION_UNKNOWN,
            _ => sqlstate::RANGE_UNAVAILABLE,
        }
    } else {
        match e {
            ldr_kv::KvError::TxnAborted { .. }
            | ldr_kv::KvError::TxnConflict(_)
            | ldr_kv::KvError::Storage(ldr_kv::StorageError::WriteIntent(_)) => {
                sqlstate::SERIALIZATION_FAILURE
            }
            ldr_kv::KvError::UnknownSetting(_) => sqlstate::UNDEFINED_OBJECT,
            ldr_kv::KvError::InvalidSetting { .. } => sqlstate::INVALID_PARAMETER_VALUE,
            _ => sqlstate::INTERNAL_ERROR,
        }
    }
}

impl From<PgError> for SqlError {
    fn from(e: PgError) -> Self {
        SqlError::Pg(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builders_keep_code_and_texts() {
        let e = SqlError::new(
            sqlstate::UNIQUE_VIOLATION,
            "duplicate key value violates unique constraint \"t_pkey\"",
        )
        .with_detail("Key (id)=(1) already exists.");
        assert_eq!(e.code(), "23505");
        assert_eq!(e.detail(), Some("Key (id)=(1) already exists."));
        assert_eq!(
            SqlError::syntax("(").message(),
            "at or near \"(\": syntax error"
        );
        assert!(!e.is_retryable());
        assert!(SqlError::new(sqlstate::SERIALIZATION_FAILURE, "restart").is_retryable());
    }
}

//! Job ids in statements and which jobs a user may see (`SHOW JOBS`, `SHOW CHANGEFEED
//! JOBS`, `PAUSE JOB`, ...): a user sees their own jobs, and every job with VIEWJOB.

use ldr_jobs::JobRecord;

use super::{Session, privilege};
use crate::datum::Datum;
use crate::error::{Result, SqlError, sqlstate};
use crate::parser::Expr;
use crate::types::SqlType;

pub(super) fn job_id(sess: &Session, e: &Expr, params: &[Datum]) -> Result<i64> {
    match sess.eval_const(e, Some(&SqlType::Int8), params)? {
        Datum::Int(i) => Ok(i),
        Datum::Decimal(d) => rust_decimal::prelude::ToPrimitive::to_i64(&d)
            .ok_or_else(|| SqlError::new(sqlstate::INVALID_PARAMETER_VALUE, "invalid job id")),
        _ => Err(SqlError::new(
            sqlstate::INVALID_PARAMETER_VALUE,
            "job id must be an integer",
        )),
    }
}

pub(super) async fn visible_jobs(sess: &Session) -> Result<Vec<JobRecord>> {
    let all = sess.server.jobs.list().await?;
    if privilege::has_system_privilege(&sess.server.catalog, &sess.user, "VIEWJOB").await? {
        return Ok(all);
    }
    Ok(all
        .into_iter()
        .filter(|j| j.user_name == sess.user)
        .collect())
}

pub(super) async fn check_job_visible(sess: &Session, job: &JobRecord) -> Result<()> {
    if job.user_name == sess.user
        || privilege::has_system_privilege(&sess.server.catalog, &sess.user, "VIEWJOB").await?
    {
        Ok(())
    } else {
        Err(SqlError::insufficient_privilege(format!(
            "user {} does not have VIEWJOB privilege",
            sess.user
        )))
    }
}

//! Zone configurations: `ALTER RANGE … CONFIGURE ZONE` options and their checks.

use super::*;

/// Zone configuration keys CockroachDB has; only `num_replicas` has an effect here.
pub(super) const ZONE_KEYS: &[&str] = &[
    "num_replicas",
    "num_voters",
    "gc.ttlseconds",
    "range_min_bytes",
    "range_max_bytes",
    "constraints",
    "voter_constraints",
    "lease_preferences",
    "global_reads",
];

/// Checks one `CONFIGURE ZONE` option: a known key, and for `num_replicas` a count from 1 to
/// [`ldr_kv::NUM_REPLICAS_MAX`]; returns the replica count when it is `num_replicas`.
pub(crate) fn check_zone_option(key: &str, value: &str) -> Result<Option<u32>> {
    if !ZONE_KEYS.contains(&key) {
        return Err(SqlError::new(
            sqlstate::INVALID_PARAMETER_VALUE,
            format!("unsupported zone config parameter: \"{key}\""),
        ));
    }
    if key != "num_replicas" || value == "COPY FROM PARENT" {
        return Ok(None);
    }
    match value.parse::<u32>() {
        Ok(n) if (1..=ldr_kv::NUM_REPLICAS_MAX).contains(&n) => Ok(Some(n)),
        _ => Err(SqlError::new(
            sqlstate::INVALID_PARAMETER_VALUE,
            format!(
                "num_replicas must be a whole number from 1 to {}, got {value}",
                ldr_kv::NUM_REPLICAS_MAX
            ),
        )),
    }
}

/// `ALTER RANGE <name> CONFIGURE ZONE …`: `default` sets the replication factor of ranges
/// created from now on; CockroachDB's other named zones are accepted without effect.
pub(crate) async fn configure_range_zone(
    s: &mut Session,
    range: &str,
    options: &[(String, String)],
) -> Result<QueryResult> {
    privilege::require_admin(s, "configure zones").await?;
    if !["default", "meta", "liveness", "system", "timeseries"].contains(&range) {
        return Err(SqlError::new(
            sqlstate::UNDEFINED_OBJECT,
            format!("zone \"{range}\" does not exist"),
        ));
    }
    let mut num_replicas = None;
    for (key, value) in options {
        if let Some(n) = check_zone_option(key, value)? {
            num_replicas = Some(n);
        }
    }
    if range == "default" {
        let n = if options.is_empty() {
            Some(ldr_kv::DEFAULT_NUM_REPLICAS) // DISCARD: back to the built-in default
        } else {
            num_replicas
        };
        if let Some(n) = n {
            s.server.kv.set_default_num_replicas(n).await?;
        }
    }
    Ok(QueryResult::command("CONFIGURE ZONE"))
}

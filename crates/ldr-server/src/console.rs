//! The DB console page (`GET /` on the HTTP port): nodes, jobs with a type filter and
//! initial-scan progress, and the Logical Data Replication dashboard (replication lag, rows
//! applied, DLQ, batch latency). Plain server-rendered HTML that refreshes itself.

use std::fmt::Write as _;

use ldr_jobs::{JobRecord, JobType};
use ldr_types::Timestamp;

use crate::node::Node;

/// `2026-11-22 03:18:19.123456+00` from an HLC timestamp (UTC, as SHOW JOBS prints).
pub fn format_ts(ts: Timestamp) -> String {
    let secs = (ts.wall_time_ns / 1_000_000_000) as i64;
    let micros = (ts.wall_time_ns % 1_000_000_000) / 1_000;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{micros:06}+00",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The console's job-type filter values (the DB Console's dropdown names).
const TYPE_FILTERS: [(&str, Option<JobType>); 4] = [
    ("All", None),
    (
        "Logical Replication Ingestion",
        Some(JobType::LogicalReplication),
    ),
    (
        "Replication Producer",
        Some(JobType::ReplicationStreamProducer),
    ),
    ("Row Level TTL", Some(JobType::RowLevelTtl)),
];

fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name).then(|| v.replace('+', " ").replace("%20", " "))
    })
}

/// Renders the page.
pub async fn render(node: &Node, query: Option<&str>) -> String {
    let filter = query_param(query, "type")
        .and_then(|t| {
            TYPE_FILTERS
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case(&t))
                .map(|(_, ty)| *ty)
        })
        .flatten();
    let mut html = String::new();
    let _ = write!(
        html,
        "<!doctype html><html><head><meta charset=utf-8><meta http-equiv=refresh content=2>\
         <title>ldr console: node {}</title><style>body{{font-family:sans-serif;margin:1.5em}}\
         table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:left}}\
         .bar{{background:#eee;width:120px;height:10px}}.fill{{background:#36c;height:10px}}</style></head><body>\
         <h1>ldr console</h1><p>cluster {} &middot; node {}</p>",
        node.kv.node_id(),
        escape(&node.kv.cluster_id()),
        node.kv.node_id()
    );

    html.push_str("<h2>Nodes</h2><table><tr><th>id</th><th>address</th><th>sql address</th><th>live</th></tr>");
    if let Ok(nodes) = node.kv.nodes().await {
        for n in nodes {
            let _ = write!(
                html,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                n.node.node_id,
                escape(&n.node.address),
                escape(&n.node.sql_address),
                n.is_live
            );
        }
    }
    html.push_str("</table>");

    html.push_str("<h2>Logical Data Replication</h2>");
    let m = &node.metrics;
    let now = Timestamp::new(node.kv.clock().physical_now_ns(), 0).as_secs_f64();
    let _ = write!(
        html,
        "<table><tr><th>rows applied</th><th>rows in DLQ</th><th>LWW losses</th><th>retry queue rows</th>\
         <th>batch apply p99 (per row)</th><th>commit latency p99</th></tr>\
         <tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr></table>",
        m.events_ingested.get(),
        m.events_dlqed.get(),
        m.kv_update_too_old.get(),
        m.retry_queue_events.get(),
        fmt_nanos(quantile(&m.batch_hist_nanos.cumulative(), 0.99)),
        fmt_nanos(quantile(&m.commit_latency.cumulative(), 0.99)),
    );

    let jobs: Vec<JobRecord> = node.registry.list().await.unwrap_or_default();
    html.push_str("<h3>Replication lag</h3><table><tr><th>job</th><th>tables</th><th>mode</th><th>replicated time</th><th>lag</th></tr>");
    for job in jobs
        .iter()
        .filter(|j| j.job_type == JobType::LogicalReplication && !j.status.is_terminal())
    {
        let replicated = job
            .progress
            .get("replicated_time")
            .and_then(|v| v.as_str())
            .and_then(|s| s.parse::<Timestamp>().ok());
        let tables = job
            .payload
            .get("tables")
            .map(|t| t.to_string())
            .unwrap_or_default();
        let mode = job
            .payload
            .get("mode")
            .and_then(|m| m.as_str())
            .unwrap_or("immediate");
        let (rt, lag) = match replicated {
            Some(ts) => (
                format_ts(ts),
                format!("{:.2}s", (now - ts.as_secs_f64()).max(0.0)),
            ),
            None => ("(initial scan)".to_string(), "-".to_string()),
        };
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{rt}</td><td>{lag}</td></tr>",
            job.id,
            escape(&tables),
            escape(mode)
        );
    }
    html.push_str("</table>");

    html.push_str("<h2>Jobs</h2><form>Type: <select name=type onchange='this.form.submit()'>");
    for (name, ty) in TYPE_FILTERS {
        let selected = if ty == filter { " selected" } else { "" };
        let _ = write!(html, "<option{selected}>{name}</option>");
    }
    html.push_str(
        "</select></form><table><tr><th>job id</th><th>type</th><th>description</th><th>status</th>\
         <th>progress</th><th>running status</th><th>error</th><th>coordinator</th></tr>",
    );
    for job in jobs
        .iter()
        .filter(|j| filter.is_none_or(|f| j.job_type == f))
    {
        let pct = (job.fraction_completed.clamp(0.0, 1.0) * 100.0).round();
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td><div class=bar><div class=fill style='width:{pct}%'></div></div>{pct}%</td>\
             <td>{}</td><td>{}</td><td>{}</td></tr>",
            job.id,
            job.job_type.as_str(),
            escape(&job.description),
            job.status.as_str(),
            escape(job.running_status.as_deref().unwrap_or("")),
            escape(job.error.as_deref().unwrap_or("")),
            job.coordinator_id
                .map(|n| n.to_string())
                .unwrap_or_default()
        );
    }
    html.push_str("</table><p><a href=/metrics>metrics</a></p></body></html>");
    html
}

/// The `q` quantile from cumulative histogram buckets (`(upper bound, count)`; `None` = +Inf).
fn quantile(buckets: &[(Option<u64>, u64)], q: f64) -> Option<u64> {
    let total = buckets.last().map(|b| b.1)?;
    if total == 0 {
        return None;
    }
    let rank = (q * total as f64).ceil() as u64;
    buckets
        .iter()
        .find(|(_, c)| *c >= rank)
        .and_then(|(le, _)| *le)
}

fn fmt_nanos(n: Option<u64>) -> String {
    match n {
        None => "-".to_string(),
        Some(n) if n >= 1_000_000_000 => format!("{:.2}s", n as f64 / 1e9),
        Some(n) if n >= 1_000_000 => format!("{:.1}ms", n as f64 / 1e6),
        Some(n) => format!("{:.1}µs", n as f64 / 1e3),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_render_in_utc() {
        assert_eq!(
            format_ts(Timestamp::new(0, 0)),
            "1970-01-01 00:00:00.000000+00"
        );
        assert_eq!(
            format_ts(Timestamp::new(1_795_317_499_123_456_789, 0)),
            "2026-11-22 03:18:19.123456+00"
        );
        assert_eq!(
            format_ts(Timestamp::new(951_782_400_000_000_000, 0)),
            "2000-02-29 00:00:00.000000+00"
        );
    }

    #[test]
    fn quantiles_from_buckets() {
        let b = vec![
            (Some(10), 50),
            (Some(100), 99),
            (Some(1000), 100),
            (None, 100),
        ];
        assert_eq!(quantile(&b, 0.5), Some(10));
        assert_eq!(quantile(&b, 0.99), Some(100));
        assert_eq!(quantile(&b, 1.0), Some(1000));
        assert_eq!(quantile(&[], 0.5), None);
    }

    #[test]
    fn query_params() {
        assert_eq!(
            query_param(Some("type=Replication+Producer"), "type").as_deref(),
            Some("Replication Producer")
        );
        assert_eq!(query_param(Some("a=1"), "type"), None);
    }
}

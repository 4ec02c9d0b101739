//! The DB Console's pages, served by every node's HTTP port: a left navigation with
//! **Overview** (`/`: nodes, replication lag per job, all jobs), **Metrics**
//! (`/console/metrics`: the Overview and Logical Data Replication dashboards, drawn by uPlot
//! from `GET /ts/query`) and **Jobs** (`/console/jobs`: Type and Status filters, the initial
//! scan's progress bar; `/console/jobs/<id>`: a job's details with Pause, Resume and Cancel).
//!
//! Pages are rendered on the server from the job registry, so they work without script; only
//! the charts need the page's script (`metrics.js`, no build step) and the vendored uPlot
//! (MIT, `assets/`), both served by the node itself. What a page shows depends on the
//! [`Viewer`]: in secure mode the logged-in user sees the jobs `SHOW JOBS` would show them.

use std::fmt::Write as _;

use ldr_jobs::{JobRecord, JobStatus};
use ldr_types::{JobId, Timestamp};

use crate::console_dashboards::{self, Dashboard};
use crate::node::Node;

/// `2026-11-22 03:18:19.123456+00` from an HLC timestamp (UTC, as SHOW JOBS prints).
pub fn format_ts(ts: Timestamp) -> String {
    let nanos = i64::try_from(ts.wall_time_ns).unwrap_or(i64::MAX);
    chrono::DateTime::from_timestamp_nanos(nanos)
        .format("%Y-%m-%d %H:%M:%S%.6f+00")
        .to_string()
}

pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Who is looking at a page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Viewer {
    pub user: String,
    /// Secure mode: the user logged in (and may log out).
    pub secure: bool,
    /// Sees every job (VIEWJOB, admin); otherwise only their own.
    pub view_all_jobs: bool,
}

impl Viewer {
    /// Insecure mode: everyone is `root`, as with `cockroach start --insecure`.
    pub fn insecure_root() -> Viewer {
        Viewer {
            user: "root".to_string(),
            secure: false,
            view_all_jobs: true,
        }
    }

    /// A logged-in user of a secure cluster, with their privileges.
    pub async fn logged_in(node: &Node, user: &str) -> Viewer {
        let view_all_jobs = node
            .sql
            .server
            .has_system_privilege(user, "VIEWJOB")
            .await
            .unwrap_or(false);
        Viewer {
            user: user.to_string(),
            secure: true,
            view_all_jobs,
        }
    }

    pub fn sees(&self, job: &JobRecord) -> bool {
        self.view_all_jobs || job.user_name == self.user
    }
}

/// Which navigation entry a page belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Overview,
    Metrics,
    Jobs,
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:0;color:#242a35;background:#f5f7fa}\
nav{position:fixed;top:0;bottom:0;left:0;width:150px;background:#0b1a33;padding-top:10px}\
nav a{display:block;color:#c0c6d9;padding:10px 18px;text-decoration:none}\
nav a.active{color:#fff;background:#0055ff}nav .brand{color:#fff;font-weight:bold;padding:8px 18px 16px}\
main{margin-left:150px;padding:14px 24px}header{display:flex;justify-content:space-between;align-items:center}\
table{border-collapse:collapse;background:#fff}td,th{border:1px solid #dde1ea;padding:4px 9px;text-align:left;font-size:14px}\
th{background:#eef1f6}.bar{display:inline-block;vertical-align:middle;background:#dde1ea;width:120px;height:10px;margin-right:6px}\
.fill{background:#0055ff;height:10px}.charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:14px}\
.chart{background:#fff;border:1px solid #dde1ea;padding:8px}.chart h3{font-size:15px;margin:2px 0 6px}\
.lasts{font-size:12px;color:#475872}.lasts span{margin-right:12px}.note{color:#6b7a99;font-size:13px}\
.msg{background:#fff4d6;border:1px solid #e8c46a;padding:6px 10px;margin:8px 0}.err{color:#b3261e}\
select,button,input{font-size:14px;margin-right:8px}dl{display:grid;grid-template-columns:200px auto;gap:4px 12px;background:#fff;padding:10px;border:1px solid #dde1ea}\
dt{color:#6b7a99}dd{margin:0}";

/// The page frame: the left navigation and the user's name.
pub fn layout(title: &str, nav: Nav, viewer: &Viewer, head: &str, body: &str) -> String {
    let item = |target: Nav, href: &str, name: &str| {
        let class = if target == nav { " class=active" } else { "" };
        format!("<a{class} href={href}>{name}</a>")
    };
    let user = if viewer.secure {
        format!(
            "{} <form method=post action=/console/logout style=display:inline><button>Log out</button></form>",
            escape(&viewer.user)
        )
    } else {
        "insecure mode (root)".to_string()
    };
    format!(
        "<!doctype html><html><head><meta charset=utf-8><title>{} | ldr DB Console</title>\
         <style>{STYLE}</style>{head}</head><body><nav><div class=brand>ldr</div>{}{}{}</nav>\
         <main><header><h1>{}</h1><div class=note>{user}</div></header>{body}</main></body></html>",
        escape(title),
        item(Nav::Overview, "/", "Overview"),
        item(Nav::Metrics, "/console/metrics", "Metrics"),
        item(Nav::Jobs, "/console/jobs", "Jobs"),
        escape(title),
    )
}

/// The DB Console's name of a job type (its **Type** dropdown).
pub fn type_label(job_type: &str) -> String {
    match job_type {
        "LOGICAL REPLICATION" => "Logical Replication Ingestion".to_string(),
        "REPLICATION STREAM PRODUCER" => "Replication Producer".to_string(),
        "ROW LEVEL TTL" => "Row Level TTL".to_string(),
        other => other
            .split(' ')
            .map(|w| {
                let lower = w.to_ascii_lowercase();
                let mut c = lower.chars();
                match c.next() {
                    Some(f) => f.to_ascii_uppercase().to_string() + c.as_str(),
                    None => String::new(),
                }
            })
            .collect::<Vec<_>>()
            .join(" "),
    }
}

/// The Type dropdown's entries: the known types, then any other type a job has.
fn type_options(jobs: &[JobRecord]) -> Vec<String> {
    let mut out: Vec<String> = [
        "LOGICAL REPLICATION",
        "REPLICATION STREAM PRODUCER",
        "ROW LEVEL TTL",
    ]
    .iter()
    .map(|t| type_label(t))
    .collect();
    for j in jobs {
        let l = type_label(j.job_type.as_str());
        if !out.contains(&l) {
            out.push(l);
        }
    }
    out
}

/// The Status dropdown's entries (`SHOW JOBS` statuses).
const STATUS_OPTIONS: [&str; 8] = [
    "running",
    "paused",
    "pause-requested",
    "cancel-requested",
    "reverting",
    "canceled",
    "failed",
    "succeeded",
];

fn type_matches(filter: &str, job: &JobRecord) -> bool {
    filter.eq_ignore_ascii_case(&type_label(job.job_type.as_str()))
        || filter.eq_ignore_ascii_case(job.job_type.as_str())
}

/// An LDR job's replicated time (`None` during its initial scan).
fn replicated_time(job: &JobRecord) -> Option<Timestamp> {
    job.progress
        .get("replicated_time")
        .and_then(|v| v.as_str())
        .and_then(|s| s.parse::<Timestamp>().ok())
}

fn is_ldr(job: &JobRecord) -> bool {
    job.job_type.as_str() == "LOGICAL REPLICATION"
}

/// Whether the Status column shows a progress bar: a running job part-way through (for LDR,
/// its initial scan: no replicated time yet).
pub fn shows_progress(job: &JobRecord) -> bool {
    if job.status.is_terminal() {
        return false;
    }
    if is_ldr(job) {
        return replicated_time(job).is_none();
    }
    job.status == JobStatus::Running && job.fraction_completed > 0.0 && job.fraction_completed < 1.0
}

fn status_cell(job: &JobRecord) -> String {
    let mut out = escape(job.status.as_str());
    if shows_progress(job) {
        let pct = (job.fraction_completed.clamp(0.0, 1.0) * 100.0).round();
        let _ = write!(
            out,
            "<br><span class=bar data-job-progress={pct} title='initial scan'><span class=fill style='display:block;width:{pct}%'></span></span>{pct}%"
        );
    }
    out
}

/// The Overview page (`GET /`): nodes, the Logical Data Replication summary, replication lag
/// per job and all jobs (`?type=` filters them as the Jobs page does).
pub async fn render(node: &Node, query: Option<&str>, viewer: &Viewer) -> String {
    let filter = query_param(query, "type").filter(|t| !t.eq_ignore_ascii_case("all"));
    let mut html = String::new();
    let _ = write!(
        html,
        "<p>cluster {} &middot; node {}</p>",
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

    let jobs: Vec<JobRecord> = node
        .registry
        .list()
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|j| viewer.sees(j))
        .collect();
    html.push_str("<h3>Replication lag</h3><table><tr><th>job</th><th>tables</th><th>mode</th><th>replicated time</th><th>lag</th></tr>");
    for job in jobs.iter().filter(|j| is_ldr(j) && !j.status.is_terminal()) {
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
        let (rt, lag) = match replicated_time(job) {
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
    html.push_str("<h2>Jobs</h2>");
    let status = query_param(query, "status").filter(|t| !t.eq_ignore_ascii_case("all"));
    html.push_str(&jobs_table(&jobs, filter.as_deref(), status.as_deref(), ""));
    html.push_str("<p><a href=/metrics>Prometheus metrics</a></p>");
    layout(
        "Overview",
        Nav::Overview,
        viewer,
        "<meta http-equiv=refresh content=10>",
        &html,
    )
}

/// The filter form and the jobs table.
fn jobs_table(
    jobs: &[JobRecord],
    type_filter: Option<&str>,
    status_filter: Option<&str>,
    action: &str,
) -> String {
    let mut html = String::new();
    let _ = write!(
        html,
        "<form method=get action='{action}'>Type: <select name=type onchange='this.form.submit()'><option>All</option>"
    );
    for name in type_options(jobs) {
        let selected = if type_filter.is_some_and(|f| f.eq_ignore_ascii_case(&name)) {
            " selected"
        } else {
            ""
        };
        let _ = write!(html, "<option{selected}>{}</option>", escape(&name));
    }
    html.push_str(
        "</select>Status: <select name=status onchange='this.form.submit()'><option>All</option>",
    );
    for status in STATUS_OPTIONS {
        let selected = if status_filter.is_some_and(|f| f.eq_ignore_ascii_case(status)) {
            " selected"
        } else {
            ""
        };
        let _ = write!(html, "<option{selected}>{status}</option>");
    }
    html.push_str(
        "</select><noscript><button>Filter</button></noscript></form>\
         <table id=jobs><tr><th>job id</th><th>type</th><th>description</th><th>status</th>\
         <th>running status</th><th>user</th><th>created</th><th>error</th><th>coordinator</th></tr>",
    );
    let mut shown: Vec<&JobRecord> = jobs
        .iter()
        .filter(|j| type_filter.is_none_or(|f| type_matches(f, j)))
        .filter(|j| status_filter.is_none_or(|f| f.eq_ignore_ascii_case(j.status.as_str())))
        .collect();
    shown.sort_by(|a, b| b.created.cmp(&a.created).then(b.id.cmp(&a.id)));
    for job in &shown {
        let _ = write!(
            html,
            "<tr data-job-id={id} data-job-type='{ty}'><td><a href=/console/jobs/{id}>{id}</a></td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&type_label(job.job_type.as_str())),
            escape(&job.description),
            status_cell(job),
            escape(job.running_status.as_deref().unwrap_or("")),
            escape(&job.user_name),
            format_ts(job.created),
            escape(job.error.as_deref().unwrap_or("")),
            job.coordinator_id
                .map(|n| n.to_string())
                .unwrap_or_default(),
            id = job.id,
            ty = escape(&type_label(job.job_type.as_str())),
        );
    }
    let _ = write!(
        html,
        "</table><p class=note>{} of {} jobs</p>",
        shown.len(),
        jobs.len()
    );
    html
}

/// The Jobs page (`GET /console/jobs?type=…&status=…`).
pub async fn jobs_page(node: &Node, query: Option<&str>, viewer: &Viewer) -> String {
    let type_filter = query_param(query, "type").filter(|t| !t.eq_ignore_ascii_case("all"));
    let status_filter = query_param(query, "status").filter(|t| !t.eq_ignore_ascii_case("all"));
    let jobs: Vec<JobRecord> = node
        .registry
        .list()
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|j| viewer.sees(j))
        .collect();
    let body = jobs_table(
        &jobs,
        type_filter.as_deref(),
        status_filter.as_deref(),
        "/console/jobs",
    );
    layout(
        "Jobs",
        Nav::Jobs,
        viewer,
        "<meta http-equiv=refresh content=30>",
        &body,
    )
}

/// Rows in each DLQ table of an LDR job: `(destination table, DLQ table, rows or error)`.
async fn dlq_counts(node: &Node, job: &JobRecord) -> Vec<(String, String, Result<i64, String>)> {
    let Ok(payload) = serde_json::from_value::<ldr_ingest::LdrPayload>(job.payload.clone()) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for pair in &payload.pairs {
        let parts: Vec<&str> = pair.destination_name.splitn(3, '.').collect();
        let [db, schema, table] = parts.as_slice() else {
            continue;
        };
        let dlq = format!(
            "\"{}\".{}.\"{}\"",
            db.replace('"', "\"\""),
            ldr_ingest::dlq_policy::DLQ_SCHEMA,
            ldr_ingest::dlq_policy::dlq_table_name(pair.destination_table_id, schema, table)
                .replace('"', "\"\"")
        );
        let mut session = node.sql.server.node_session(db);
        let counted = match session
            .execute(&format!("SELECT count(*) FROM {dlq}"))
            .await
            .pop()
        {
            Some(Ok(r)) => match r.rows.first().and_then(|row| row.first()) {
                Some(ldr_sql::Datum::Int(n)) => Ok(*n),
                other => Err(format!("unexpected answer {other:?}")),
            },
            Some(Err(e)) => Err(e.to_string()),
            None => Err("no answer".to_string()),
        };
        out.push((pair.destination_name.clone(), dlq, counted));
    }
    out
}

/// A job's page (`GET /console/jobs/<id>`); `None` if there is no such job or the viewer may
/// not see it.
pub async fn job_page(
    node: &Node,
    id: JobId,
    viewer: &Viewer,
    message: Option<&str>,
) -> Option<String> {
    let job = node.registry.get(id).await.ok()?;
    if !viewer.sees(&job) {
        return None;
    }
    let mut html = String::new();
    if let Some(m) = message {
        let _ = write!(html, "<div class=msg id=message>{}</div>", escape(m));
    }
    let now = Timestamp::new(node.kv.clock().physical_now_ns(), 0).as_secs_f64();
    let _ = write!(
        html,
        "<dl id=job data-job-id={}><dt>Description</dt><dd>{}</dd><dt>Type</dt><dd>{}</dd>\
         <dt>Status</dt><dd id=status>{}</dd><dt>Running status</dt><dd>{}</dd>\
         <dt>User</dt><dd>{}</dd><dt>Created</dt><dd>{}</dd><dt>Coordinator</dt><dd>{}</dd>",
        job.id,
        escape(&job.description),
        escape(&type_label(job.job_type.as_str())),
        status_cell(&job),
        escape(job.running_status.as_deref().unwrap_or("")),
        escape(&job.user_name),
        format_ts(job.created),
        job.coordinator_id
            .map(|n| format!("n{n}"))
            .unwrap_or_else(|| "-".to_string()),
    );
    if is_ldr(&job) {
        let (rt, lag) = match replicated_time(&job) {
            Some(ts) => (
                format_ts(ts),
                format!("{:.2}s", (now - ts.as_secs_f64()).max(0.0)),
            ),
            None => ("(initial scan)".to_string(), "-".to_string()),
        };
        let _ = write!(
            html,
            "<dt>Replicated time</dt><dd id=replicated-time>{rt}</dd><dt>Replication lag</dt><dd>{lag}</dd>"
        );
    }
    if let Some(f) = job.finished {
        let _ = write!(html, "<dt>Finished</dt><dd>{}</dd>", format_ts(f));
    }
    let _ = write!(
        html,
        "<dt>Error</dt><dd class=err id=error>{}</dd></dl>",
        escape(job.error.as_deref().unwrap_or(""))
    );
    if !job.status.is_terminal() {
        html.push_str("<p>");
        for (action, label) in [
            ("pause", "Pause"),
            ("resume", "Resume"),
            ("cancel", "Cancel"),
        ] {
            // Canceling cannot be undone: the browser asks first.
            let confirm = if action == "cancel" {
                " onsubmit=\"return confirm('Cancel this job? This cannot be undone.')\""
            } else {
                ""
            };
            let _ = write!(
                html,
                "<form method=post action=/console/jobs/{}/{action} style=display:inline{confirm}><button id={action}>{label}</button></form>",
                job.id
            );
        }
        html.push_str("</p>");
    }
    if is_ldr(&job) {
        html.push_str("<h2>Dead letter queue</h2><table id=dlq><tr><th>table</th><th>DLQ table</th><th>rows</th></tr>");
        for (table, dlq, count) in dlq_counts(node, &job).await {
            let cell = match count {
                Ok(n) => format!("<td data-dlq-rows={n}>{n}</td>"),
                Err(e) => format!("<td class=err>{}</td>", escape(&e)),
            };
            let _ = write!(
                html,
                "<tr><td>{}</td><td>{}</td>{cell}</tr>",
                escape(&table),
                escape(&dlq)
            );
        }
        html.push_str("</table>");
    }
    html.push_str("<p><a href=/console/jobs>All jobs</a></p>");
    Some(layout(
        &format!("Job {}", job.id),
        Nav::Jobs,
        viewer,
        "",
        &html,
    ))
}

/// Pause, resume or cancel a job as the viewer: the same statement (and privilege check:
/// the job's owner or CONTROLJOB) as `PAUSE JOB` / `RESUME JOB` / `CANCEL JOB`.
pub async fn job_action(
    node: &Node,
    id: JobId,
    action: &str,
    viewer: &Viewer,
) -> Result<String, String> {
    let statement = match action {
        "pause" => "PAUSE JOB",
        "resume" => "RESUME JOB",
        "cancel" => "CANCEL JOB",
        other => return Err(format!("unknown action {other:?}")),
    };
    node.sql
        .server
        .execute_as(&viewer.user, "defaultdb", &format!("{statement} {id}"))
        .await
        .map(|_| format!("{statement} {id}: done"))
        .map_err(|e| e.to_string())
}

/// The Metrics page (`GET /console/metrics?dashboard=…&range=…&agg=…`).
pub fn metrics_page(query: Option<&str>, viewer: &Viewer) -> String {
    let asked = query_param(query, "dashboard");
    let found = asked.as_deref().and_then(console_dashboards::find);
    let dashboard = found.unwrap_or(&console_dashboards::DASHBOARDS[0]);
    // An unknown dashboard (an old bookmark, a typo) says so and shows the default one.
    let unknown = match (&asked, found) {
        (Some(name), None) => format!(
            "<div class=msg id=message>unknown dashboard {:?}: showing {}</div>",
            escape(name),
            escape(dashboard.title)
        ),
        _ => String::new(),
    };
    let range = query_param(query, "range")
        .filter(|r| console_dashboards::RANGES.iter().any(|(k, _, _)| k == r))
        .unwrap_or_else(|| "10m".to_string());
    let agg = query_param(query, "agg")
        .filter(|a| a == "node")
        .unwrap_or_else(|| "cluster".to_string());
    let mut html = String::from(
        "<form method=get action=/console/metrics id=controls>Dashboard: <select name=dashboard onchange='this.form.submit()'>",
    );
    for d in &console_dashboards::DASHBOARDS {
        let selected = if d.id == dashboard.id {
            " selected"
        } else {
            ""
        };
        let _ = write!(
            html,
            "<option value={}{selected}>{}</option>",
            d.id,
            escape(d.title)
        );
    }
    html.push_str("</select>Time range: <select name=range onchange='this.form.submit()'>");
    for (key, label, _) in console_dashboards::RANGES {
        let selected = if key == range { " selected" } else { "" };
        let _ = write!(html, "<option value={key}{selected}>{label}</option>");
    }
    html.push_str("</select>Graph: <select name=agg onchange='this.form.submit()'>");
    for (key, label) in [("cluster", "Cluster"), ("node", "Per node")] {
        let selected = if key == agg { " selected" } else { "" };
        let _ = write!(html, "<option value={key}{selected}>{label}</option>");
    }
    html.push_str("</select><noscript><button>Show</button></noscript></form>");
    html.push_str(&unknown);
    html.push_str(&charts_html(dashboard, &range, &agg));
    layout(
        "Metrics",
        Nav::Metrics,
        viewer,
        "<link rel=stylesheet href=/console/assets/uPlot.min.css><script src=/console/assets/uPlot.iife.min.js></script>",
        &html,
    )
}

fn charts_html(dashboard: &Dashboard, range: &str, agg: &str) -> String {
    let range_secs = console_dashboards::RANGES
        .iter()
        .find(|(k, _, _)| *k == range)
        .map_or(600, |r| r.2);
    let mut html = format!(
        "<div class=charts id=charts data-dashboard={} data-range-secs={range_secs} data-agg={agg}>",
        dashboard.id
    );
    for chart in dashboard.charts {
        let _ = write!(
            html,
            "<div class=chart data-spec='{}' data-state=loading><h3>{}</h3><div class=plot></div><div class=lasts></div><p class=note>{}</p></div>",
            escape(&chart.spec_json()),
            escape(chart.title),
            escape(chart.help)
        );
    }
    html.push_str("</div><script src=/console/assets/metrics.js></script>");
    html
}

/// The login page of a secure cluster.
pub fn login_page(error: Option<&str>, next: &str) -> String {
    let error = error
        .map(|e| format!("<p class=err id=login-error>{}</p>", escape(e)))
        .unwrap_or_default();
    format!(
        "<!doctype html><html><head><meta charset=utf-8><title>Log in | ldr DB Console</title><style>{STYLE}</style></head>\
         <body><main style='margin:60px auto;max-width:360px'><h1>Log in to the DB Console</h1>{error}\
         <form method=post action=/console/login><input type=hidden name=next value='{}'>\
         <p><label>Username <input name=user autocomplete=username required></label></p>\
         <p><label>Password <input name=password type=password autocomplete=current-password required></label></p>\
         <p><button id=login>Log in</button></p></form>\
         <p class=note>A SQL user with a password (<code>CREATE USER … WITH PASSWORD</code>).</p></main></body></html>",
        escape(next)
    )
}

/// A query-string parameter, percent-decoded.
pub fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes()).find_map(|(k, v)| (k == name).then(|| v.into_owned()))
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
    fn metrics_page_names_its_dashboard_and_refuses_unknown_ones_clearly() {
        let viewer = Viewer::insecure_root();
        let page = metrics_page(Some("dashboard=ldr&range=1d&agg=node"), &viewer);
        assert!(page.contains("<option value=ldr selected>Logical Data Replication</option>"));
        assert!(page.contains("data-range-secs=86400 data-agg=node"));
        assert!(page.contains("Replication Lag by Label"));
        let page = metrics_page(Some("dashboard=%3Cscript%3E&range=99y"), &viewer);
        assert!(
            page.contains("unknown dashboard \"&lt;script&gt;\": showing Overview"),
            "{page}"
        );
        assert!(page.contains("data-range-secs=600"));
        assert!(!page.contains("<script>\""));
    }

    #[test]
    fn jobs_table_filters_by_type_and_status_and_shows_scan_progress() {
        let job = |id: i64,
                   ty: ldr_jobs::JobType,
                   status: JobStatus,
                   progress: serde_json::Value| JobRecord {
            id,
            job_type: ty,
            description: format!("job {id}"),
            user_name: "root".to_string(),
            status,
            running_status: None,
            created: Timestamp::new(id as u64 * 1_000_000_000, 0),
            finished: None,
            fraction_completed: 0.25,
            error: None,
            coordinator_id: Some(1),
            payload: serde_json::json!({}),
            progress,
        };
        let jobs = vec![
            job(
                1,
                ldr_jobs::JobType::LogicalReplication,
                JobStatus::Running,
                serde_json::json!({}),
            ),
            job(
                2,
                ldr_jobs::JobType::LogicalReplication,
                JobStatus::Paused,
                serde_json::json!({"replicated_time": "1700000000000000000.0000000000"}),
            ),
            job(
                3,
                ldr_jobs::JobType::ReplicationStreamProducer,
                JobStatus::Running,
                serde_json::json!({}),
            ),
        ];
        let html = jobs_table(&jobs, Some("Logical Replication Ingestion"), None, "");
        assert!(html.contains("data-job-id=1 ") && html.contains("data-job-id=2 "));
        assert!(!html.contains("data-job-id=3 "));
        // Job 1 is in its initial scan (no replicated time): a 25% bar; job 2 is past it.
        assert_eq!(html.matches("data-job-progress=25").count(), 1, "{html}");
        let html = jobs_table(&jobs, None, Some("paused"), "");
        assert!(html.contains("data-job-id=2 ") && !html.contains("data-job-id=1 "));
        let html = jobs_table(&jobs, Some("replication producer"), None, "");
        assert!(html.contains("data-job-id=3 ") && html.contains("1 of 3 jobs"));
        assert_eq!(type_label("CHANGEFEED"), "Changefeed");
    }

    #[test]
    fn query_params() {
        assert_eq!(
            query_param(Some("type=Replication+Producer"), "type").as_deref(),
            Some("Replication Producer")
        );
        assert_eq!(query_param(Some("a=1"), "type"), None);
        assert_eq!(
            query_param(Some("next=%2Fconsole%2Fjobs"), "next").as_deref(),
            Some("/console/jobs")
        );
    }
}

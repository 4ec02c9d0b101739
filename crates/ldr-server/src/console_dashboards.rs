//! The Metrics page's dashboards: which graphs each shows and which series (the names of
//! `GET /metrics`, histograms as `<name>_p50` / `<name>_p99`) each graph draws. The
//! Logical Data Replication dashboard has CockroachDB's graphs
//! (`ui-logical-data-replication-dashboard`); monitoring/grafana-ldr.json draws the same ones
//! from Prometheus.

use serde_json::json;

/// One line of a graph.
#[derive(Debug, Clone, Copy)]
pub struct Series {
    pub label: &'static str,
    pub name: &'static str,
    /// Per-second rate (counters).
    pub rate: bool,
    /// How nodes combine in the cluster view: `sum` or `max`.
    pub agg: &'static str,
    /// `lag`: the graph shows `sample time - value` (a replicated time as lag in seconds).
    pub transform: &'static str,
}

/// One graph.
#[derive(Debug, Clone, Copy)]
pub struct Chart {
    pub title: &'static str,
    pub help: &'static str,
    /// `ns` (durations), `s`, `bytes/s`, `/s` or `count`.
    pub unit: &'static str,
    pub series: &'static [Series],
}

impl Chart {
    /// What the page's script reads from the graph's `data-spec` attribute.
    pub fn spec_json(&self) -> String {
        json!({
            "title": self.title,
            "unit": self.unit,
            "series": self.series.iter().map(|s| json!({
                "label": s.label,
                "name": s.name,
                "rate": s.rate,
                "agg": s.agg,
                "transform": s.transform,
            })).collect::<Vec<_>>(),
        })
        .to_string()
    }
}

/// A dashboard of the **Dashboard** dropdown.
#[derive(Debug)]
pub struct Dashboard {
    pub id: &'static str,
    pub title: &'static str,
    pub charts: &'static [Chart],
}

const fn s(label: &'static str, name: &'static str, rate: bool, agg: &'static str) -> Series {
    Series {
        label,
        name,
        rate,
        agg,
        transform: "",
    }
}

const fn lag(label: &'static str, name: &'static str) -> Series {
    Series {
        label,
        name,
        rate: false,
        agg: "max",
        transform: "lag",
    }
}

/// The dashboards, the first being the default.
pub const DASHBOARDS: [Dashboard; 2] = [
    Dashboard {
        id: "overview",
        title: "Overview",
        charts: &[
            Chart {
                title: "SQL Statements",
                help: "Statements executed per second on the cluster's SQL gateways.",
                unit: "/s",
                series: &[s("statements", "sql_query_count", true, "sum")],
            },
            Chart {
                title: "Service Latency: SQL Statements, 99th percentile",
                help: "Time to execute a statement, 99th percentile of the slowest node.",
                unit: "ns",
                series: &[s("p99", "sql_service_latency_p99", false, "max")],
            },
            Chart {
                title: "Live Node Count",
                help: "Nodes this node sees as live.",
                unit: "count",
                series: &[s("live nodes", "liveness_livenodes", false, "max")],
            },
            Chart {
                title: "Row Updates Applied",
                help: "Rows applied by logical replication jobs per second.",
                unit: "/s",
                series: &[s(
                    "applied",
                    "logical_replication_events_ingested",
                    true,
                    "sum",
                )],
            },
        ],
    },
    Dashboard {
        id: "ldr",
        title: "Logical Data Replication",
        charts: &[
            Chart {
                title: "Replication Latency",
                help: "Commit latency: the time between an event's MVCC timestamp on the source and its commit on the destination (50th and 99th percentiles).",
                unit: "ns",
                series: &[
                    s(
                        "p50",
                        "logical_replication_commit_latency_p50",
                        false,
                        "max",
                    ),
                    s(
                        "p99",
                        "logical_replication_commit_latency_p99",
                        false,
                        "max",
                    ),
                ],
            },
            Chart {
                title: "Replication Lag",
                help: "How far each job's replicated time trails the present (from logical_replication_replicated_time_seconds).",
                unit: "s",
                series: &[lag("lag", "logical_replication_replicated_time_seconds")],
            },
            Chart {
                title: "Row Updates Applied",
                help: "Row updates applied per second, and those sent to the dead letter queue.",
                unit: "/s",
                series: &[
                    s(
                        "applied",
                        "logical_replication_events_ingested",
                        true,
                        "sum",
                    ),
                    s("DLQ", "logical_replication_events_dlqed", true, "sum"),
                ],
            },
            Chart {
                title: "Logical Bytes Received",
                help: "Bytes (keys and values) received per second by the replication jobs.",
                unit: "bytes/s",
                series: &[s(
                    "received",
                    "logical_replication_logical_bytes",
                    true,
                    "sum",
                )],
            },
            Chart {
                title: "Batch Application Processing Time: 50th percentile",
                help: "Time spent per row flushing a batch, median.",
                unit: "ns",
                series: &[s(
                    "p50",
                    "logical_replication_batch_hist_nanos_p50",
                    false,
                    "max",
                )],
            },
            Chart {
                title: "Batch Application Processing Time: 99th percentile",
                help: "Time spent per row flushing a batch, 99th percentile.",
                unit: "ns",
                series: &[s(
                    "p99",
                    "logical_replication_batch_hist_nanos_p99",
                    false,
                    "max",
                )],
            },
            Chart {
                title: "DLQ Causes",
                help: "Rows sent to the dead letter queue per second, by cause.",
                unit: "/s",
                series: &[
                    s(
                        "retry queue age",
                        "logical_replication_events_dlqed_age",
                        true,
                        "sum",
                    ),
                    s(
                        "retry queue space",
                        "logical_replication_events_dlqed_space",
                        true,
                        "sum",
                    ),
                    s(
                        "non-retryable error",
                        "logical_replication_events_dlqed_errtype",
                        true,
                        "sum",
                    ),
                ],
            },
            Chart {
                title: "Retry Queue Size",
                help: "Row updates waiting in the retry queue.",
                unit: "count",
                series: &[s(
                    "events",
                    "logical_replication_retry_queue_events",
                    false,
                    "sum",
                )],
            },
            Chart {
                title: "Replication Lag by Label",
                help: "Jobs created WITH label = '…': their lag.",
                unit: "s",
                series: &[lag("lag", "logical_replication_replicated_time_by_label")],
            },
            Chart {
                title: "Row Updates Applied by Label",
                help: "Jobs created with a label: row updates applied per second.",
                unit: "/s",
                series: &[s(
                    "applied",
                    "logical_replication_events_ingested_by_label",
                    true,
                    "sum",
                )],
            },
        ],
    },
];

/// Time ranges of the page: `(parameter, label, seconds)`.
pub const RANGES: [(&str, &str, u64); 4] = [
    ("10m", "Past 10 minutes", 600),
    ("1h", "Past hour", 3600),
    ("6h", "Past 6 hours", 6 * 3600),
    ("1d", "Past day", 24 * 3600),
];

/// The dashboard with id `id`, or the one titled `id`.
pub fn find(id: &str) -> Option<&'static Dashboard> {
    DASHBOARDS
        .iter()
        .find(|d| d.id == id || d.title.eq_ignore_ascii_case(id))
}

/// Every series name the dashboards draw.
pub fn series_names() -> Vec<&'static str> {
    let mut out: Vec<&str> = DASHBOARDS
        .iter()
        .flat_map(|d| d.charts.iter())
        .flat_map(|c| c.series.iter().map(|s| s.name))
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every graph draws series that a node's `/metrics` declares (label families appear once
    /// a job has a label).
    #[test]
    fn dashboards_draw_series_of_metrics() {
        let mut text = String::new();
        ldr_ingest::metrics::Metrics::new().render(&mut text);
        crate::ttl::TtlMetrics::default().render(&mut text);
        crate::timeseries::render_sql_stats(None, &mut text);
        text.push_str("# TYPE liveness_livenodes gauge\nliveness_livenodes 1\n");
        let families = crate::ts_sampler::families(&text);
        for name in series_names() {
            assert!(
                families.iter().any(|f| f == name)
                    || crate::ts_query::LABEL_FAMILIES.contains(&name),
                "dashboard series {name} is not in /metrics: {families:?}"
            );
        }
        for d in &DASHBOARDS {
            for c in d.charts {
                let spec: serde_json::Value =
                    serde_json::from_str(&c.spec_json()).expect("spec is JSON");
                assert_eq!(
                    spec["series"].as_array().map(Vec::len),
                    Some(c.series.len())
                );
            }
        }
        assert_eq!(find("Logical Data Replication").map(|d| d.id), Some("ldr"));
        assert!(find("nope").is_none());
    }

    /// monitoring/grafana-ldr.json parses, draws the console's graphs, and every metric its
    /// queries name is a sample of `/metrics`.
    #[test]
    fn grafana_dashboard_uses_metrics_that_exist() {
        let json: serde_json::Value =
            serde_json::from_str(include_str!("../../../monitoring/grafana-ldr.json"))
                .expect("grafana-ldr.json is JSON");
        let metrics = ldr_ingest::metrics::Metrics::new();
        metrics.label("east").events_ingested.inc(1);
        metrics.set_replicated_time(1, Some("east"), ldr_types::Timestamp::new(1, 0));
        let mut text = String::new();
        metrics.render(&mut text);
        crate::ttl::TtlMetrics::default().render(&mut text);
        crate::timeseries::render_sql_stats(None, &mut text);
        text.push_str("liveness_livenodes 1\n");
        let samples: std::collections::BTreeSet<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split([' ', '{']).next())
            .collect();
        let panels = json["panels"].as_array().expect("panels");
        let mut names = 0;
        for panel in panels {
            for target in panel["targets"].as_array().into_iter().flatten() {
                let expr = target["expr"].as_str().expect("expr");
                for token in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                    if ["logical_replication_", "sql_", "liveness_"]
                        .iter()
                        .any(|p| token.starts_with(p))
                    {
                        names += 1;
                        assert!(
                            samples.contains(token),
                            "{token} (in {expr:?}) is not in /metrics"
                        );
                    }
                }
            }
        }
        assert!(names >= 15, "only {names} metric names found");
        let titles: Vec<&str> = panels.iter().filter_map(|p| p["title"].as_str()).collect();
        for d in &DASHBOARDS {
            for c in d.charts {
                assert!(
                    titles.contains(&c.title),
                    "grafana lacks the graph {:?}",
                    c.title
                );
            }
        }
    }
}

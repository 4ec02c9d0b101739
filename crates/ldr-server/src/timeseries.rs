//! The node's time series service: samples what `GET /metrics` renders every 10 s into the
//! node's [`TsStore`], keeps it within its retention and byte limit, and answers
//! `GET /ts/local` (this node's points) and `GET /ts/query` (the cluster's, gathered from
//! every live node's `/ts/local` and aggregated).
//!
//! `LDR_TS_INTERVAL_MS` (test only) shortens the sampling interval so that tests see points
//! within seconds; production nodes sample every 10 s as CockroachDB does.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long a cluster-wide query waits for the list of nodes.
const NODE_LIST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

use parking_lot::Mutex;
use tracing::{debug, warn};

use crate::http::MetricsRenderer;
use crate::node::Node;
use crate::ts_query::{self, Skipped, TsAnswer, TsRequest};
use crate::ts_sampler::{self, Sampler};
use crate::ts_store::{Points, TsConfig, TsError, TsStore};

/// Test-only: the sampling interval in milliseconds (default 10 000).
pub const INTERVAL_ENV: &str = "LDR_TS_INTERVAL_MS";
/// How often retention and the byte limit are enforced.
const MAINTAIN_EVERY: Duration = Duration::from_secs(60);

/// Seconds since the epoch.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The configuration from the environment (the sampling interval only).
pub fn config_from_env() -> TsConfig {
    let mut config = TsConfig::default();
    if let Some(ms) = std::env::var(INTERVAL_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|ms| *ms >= 100)
    {
        warn!(
            interval_ms = ms,
            "time series sampling interval set by {INTERVAL_ENV} (test only)"
        );
        config.interval_secs = ms as f64 / 1000.0;
    }
    config
}

/// Appends the SQL gateway's `sql_query_count` and `sql_service_latency` (zero before the
/// node serves SQL, so the families always exist).
pub fn render_sql_stats(stats: Option<&ldr_sql::stats::SqlStats>, out: &mut String) {
    use std::fmt::Write as _;
    let (count, sum, buckets) = match stats {
        Some(s) => (s.statements(), s.sum_ns(), s.cumulative()),
        None => (0, 0, ldr_sql::stats::SqlStats::default().cumulative()),
    };
    out.push_str(
        "# HELP sql_query_count Number of SQL queries executed\n# TYPE sql_query_count counter\n",
    );
    let _ = writeln!(out, "sql_query_count {count}");
    out.push_str("# HELP sql_service_latency Latency of SQL request execution (nanoseconds)\n# TYPE sql_service_latency histogram\n");
    for (le, c) in &buckets {
        match le {
            Some(le) => {
                let _ = writeln!(out, "sql_service_latency_bucket{{le=\"{le}\"}} {c}");
            }
            None => {
                let _ = writeln!(out, "sql_service_latency_bucket{{le=\"+Inf\"}} {c}");
            }
        }
    }
    let total = buckets.last().map_or(0, |b| b.1);
    let _ = writeln!(
        out,
        "sql_service_latency_sum {sum}\nsql_service_latency_count {total}"
    );
}

/// The time series of one node.
pub struct Timeseries {
    pub store: TsStore,
    render: MetricsRenderer,
    sampler: Mutex<Sampler>,
    /// `liveness_livenodes`: live nodes as this node last saw them (rendered in `/metrics`).
    pub live_nodes: AtomicI64,
    node_id: AtomicU32,
}

impl std::fmt::Debug for Timeseries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Timeseries")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl Timeseries {
    pub fn new(store: TsStore, render: MetricsRenderer) -> Timeseries {
        Timeseries {
            store,
            render,
            sampler: Mutex::new(Sampler::default()),
            live_nodes: AtomicI64::new(0),
            node_id: AtomicU32::new(0),
        }
    }

    /// Appends this service's own gauges to a Prometheus text.
    pub fn render_gauges(&self, out: &mut String) {
        out.push_str("# HELP liveness_livenodes Number of live nodes in the cluster (will be 0 if this node is not itself live)\n");
        out.push_str("# TYPE liveness_livenodes gauge\n");
        out.push_str(&format!(
            "liveness_livenodes {}\n",
            self.live_nodes.load(Ordering::Relaxed)
        ));
    }

    /// Samples the metrics once at `ts_secs`.
    pub fn sample_once(&self, ts_secs: u64) -> Result<(), TsError> {
        let text = (self.render)();
        let samples = self.sampler.lock().sample(&text);
        self.store.record(ts_secs, &samples)
    }

    fn parse(&self, query: &str) -> Result<TsRequest, TsError> {
        // The known names, computed once per request.
        let families = ts_sampler::families(&(self.render)());
        let recorded: std::collections::HashSet<String> = self
            .store
            .names()
            .iter()
            .map(|n| ts_query::base_name(n).to_string())
            .collect();
        ts_query::parse_request(
            query,
            &|b| {
                ts_query::LABEL_FAMILIES.contains(&b)
                    || families.iter().any(|f| f == b)
                    || recorded.contains(b)
            },
            now_secs(),
            self.store.config().interval_secs.ceil() as u64,
        )
    }

    /// `GET /ts/local`: this node's aligned points as JSON `{"node_id", "series": {name: points}}`.
    pub async fn local_json(self: &Arc<Self>, query: &str) -> Result<String, TsError> {
        let req = self.parse(query)?;
        let points = self.read_local(req).await?;
        Ok(serde_json::json!({
            "node_id": self.node_id.load(Ordering::Relaxed),
            "series": points,
        })
        .to_string())
    }

    async fn read_local(
        self: &Arc<Self>,
        req: TsRequest,
    ) -> Result<BTreeMap<String, Points>, TsError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || ts_query::local_points(&this.store, &req))
            .await
            .map_err(|e| TsError::BadRequest(format!("query task failed: {e}")))?
    }

    /// `GET /ts/query`: the cluster's series (every live node's, aggregated).
    pub async fn query(
        self: &Arc<Self>,
        node: Option<&Node>,
        query: &str,
    ) -> Result<TsAnswer, TsError> {
        let req = self.parse(query)?;
        let me = node.map_or_else(|| self.node_id.load(Ordering::Relaxed), |n| n.kv.node_id());
        let mut per_node: BTreeMap<u32, BTreeMap<String, Points>> = BTreeMap::new();
        let mut skipped = Vec::new();
        per_node.insert(me, self.read_local(req.clone()).await?);
        if let Some(node) = node {
            // The node list lives in the system range: without its quorum, answer with this
            // node's points (and say so) instead of waiting.
            let nodes = tokio::time::timeout(NODE_LIST_TIMEOUT, node.kv.nodes())
                .await
                .unwrap_or_else(|_| {
                    Err(ldr_kv::KvError::Internal(format!(
                        "no answer within {NODE_LIST_TIMEOUT:?}"
                    )))
                });
            match nodes {
                Ok(nodes) => {
                    let path = format!("/ts/local?{}", ts_query::local_query_string(&req));
                    let peers: Vec<_> =
                        nodes.into_iter().filter(|n| n.node.node_id != me).collect();
                    let answers = futures::future::join_all(peers.iter().map(|n| {
                        let path = path.clone();
                        async move {
                            if !n.is_live {
                                return Err("node is not live".to_string());
                            }
                            ts_query::peer_get(&n.node.http_address, &path).await
                        }
                    }))
                    .await;
                    for (n, answer) in peers.iter().zip(answers) {
                        let parsed = answer.and_then(|body| {
                            serde_json::from_str::<LocalAnswer>(&body)
                                .map_err(|e| format!("malformed answer: {e}"))
                        });
                        match parsed {
                            Ok(a) => {
                                per_node.insert(n.node.node_id, a.series);
                            }
                            Err(error) => {
                                debug!(node_id = n.node.node_id, %error, "node skipped in a time series query");
                                skipped.push(Skipped {
                                    node_id: n.node.node_id,
                                    error,
                                });
                            }
                        }
                    }
                }
                Err(e) => skipped.push(Skipped {
                    node_id: 0,
                    error: format!("cannot list the cluster's nodes: {e}"),
                }),
            }
        }
        let series = ts_query::aggregate(&per_node, req.agg);
        Ok(TsAnswer {
            start: req.start,
            end: req.end,
            step: req.step,
            agg: req.agg,
            rate: req.rate,
            points_max: ts_query::POINTS_MAX,
            nodes: per_node.keys().copied().collect(),
            skipped,
            series,
        })
    }

    /// Samples every interval and maintains the store until the process exits; also keeps
    /// `liveness_livenodes` current once the node is initialized.
    pub fn spawn(self: Arc<Self>, node: Arc<tokio::sync::OnceCell<Arc<Node>>>) {
        let interval = Duration::from_secs_f64(self.store.config().interval_secs.max(0.1));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last_maintain = std::time::Instant::now();
            loop {
                tick.tick().await;
                if let Some(node) = node.get() {
                    self.node_id.store(node.kv.node_id(), Ordering::Relaxed);
                    if let Ok(nodes) = node.kv.nodes().await {
                        let live = nodes.iter().filter(|n| n.is_live).count() as i64;
                        self.live_nodes.store(live, Ordering::Relaxed);
                    }
                }
                let this = self.clone();
                let maintain = last_maintain.elapsed() >= MAINTAIN_EVERY;
                if maintain {
                    last_maintain = std::time::Instant::now();
                }
                let result = tokio::task::spawn_blocking(move || {
                    let now = now_secs();
                    this.sample_once(now)?;
                    if maintain {
                        this.store.maintain(now)?;
                    }
                    Ok::<_, TsError>(())
                })
                .await;
                match result {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => warn!(error = %e, "time series sample failed"),
                    Err(e) => warn!(error = %e, "time series sampler task failed"),
                }
            }
        });
    }
}

/// Another node's `/ts/local` answer.
#[derive(Debug, serde::Deserialize)]
struct LocalAnswer {
    series: BTreeMap<String, Points>,
}

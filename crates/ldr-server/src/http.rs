//! The HTTP port: `GET /health` (200 once the node serves SQL; `?ready=1` accepted),
//! `GET /metrics` (Prometheus text), the time series endpoints (`GET /ts/query` for the
//! cluster, `GET /ts/local` for this node) and the DB Console (see [`crate::console`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tracing::warn;

use crate::node::Node;
use crate::timeseries::Timeseries;
use crate::ts_store::TsError;

/// Renders the Prometheus text of this node.
pub type MetricsRenderer = Arc<dyn Fn() -> String + Send + Sync>;

/// Renders a page from the request's query string.
pub type ConsoleRenderer =
    Arc<dyn Fn(Option<String>) -> futures::future::BoxFuture<'static, String> + Send + Sync>;

/// What the HTTP handlers read.
#[derive(Clone)]
pub struct HttpState {
    pub ready: Arc<AtomicBool>,
    pub metrics: MetricsRenderer,
    pub console: ConsoleRenderer,
    /// `GET /_status/nodes`: JSON array of the cluster's nodes (`ldr node status` reads it).
    pub nodes_json: ConsoleRenderer,
    /// `GET /_status/protected_timestamps`: JSON array of the cluster's protected timestamp
    /// records (what GC must keep; held by history retention jobs).
    pub protected_timestamps_json: ConsoleRenderer,
    /// This node's time series (`None`: the endpoints answer 503).
    pub ts: Option<Arc<Timeseries>>,
    /// The node once it is initialized.
    pub node: Arc<tokio::sync::OnceCell<Arc<Node>>>,
}

fn json_response(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn json_error(status: StatusCode, message: &str) -> Response {
    json_response(status, serde_json::json!({ "error": message }).to_string())
}

fn ts_error(e: TsError) -> Response {
    match e {
        TsError::BadRequest(m) => json_error(StatusCode::BAD_REQUEST, &m),
        e => json_error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

async fn ts_query(State(state): State<HttpState>, uri: axum::http::Uri) -> Response {
    let Some(ts) = &state.ts else {
        return json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "time series are not available",
        );
    };
    let node = state.node.get().cloned();
    match ts.query(node.as_deref(), uri.query().unwrap_or("")).await {
        Ok(answer) => match serde_json::to_string(&answer) {
            Ok(body) => json_response(StatusCode::OK, body),
            Err(e) => json_error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        },
        Err(e) => ts_error(e),
    }
}

async fn ts_local(State(state): State<HttpState>, uri: axum::http::Uri) -> Response {
    let Some(ts) = &state.ts else {
        return json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "time series are not available",
        );
    };
    match ts.local_json(uri.query().unwrap_or("")).await {
        Ok(body) => json_response(StatusCode::OK, body),
        Err(e) => ts_error(e),
    }
}

async fn health(State(state): State<HttpState>) -> Response {
    if state.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "node is not ready\n").into_response()
    }
}

async fn metrics(State(state): State<HttpState>) -> Response {
    let body = (state.metrics)();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

async fn console(State(state): State<HttpState>, uri: axum::http::Uri) -> Response {
    Html((state.console)(uri.query().map(str::to_string)).await).into_response()
}

async fn status_nodes(State(state): State<HttpState>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        (state.nodes_json)(None).await,
    )
        .into_response()
}

async fn status_protected_timestamps(State(state): State<HttpState>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        (state.protected_timestamps_json)(None).await,
    )
        .into_response()
}

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route(
            "/_status/protected_timestamps",
            get(status_protected_timestamps),
        )
        .route("/_status/nodes", get(status_nodes))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/ts/query", get(ts_query))
        .route("/ts/local", get(ts_local))
        .route("/", get(console))
        .with_state(state)
}

/// Serves the HTTP port until the process exits.
pub async fn serve(listener: TcpListener, state: HttpState) {
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    if let Err(e) = axum::serve(listener, router(state)).await {
        warn!(?addr, error = %e, "http server stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn health_follows_readiness_and_metrics_render() {
        let ready = Arc::new(AtomicBool::new(false));
        let state = HttpState {
            ready: ready.clone(),
            metrics: Arc::new(|| "# TYPE x counter\nx 1\n".to_string()),
            console: Arc::new(|q| Box::pin(async move { format!("<html>console {q:?}</html>") })),
            nodes_json: Arc::new(|_| Box::pin(async { "[]".to_string() })),
            protected_timestamps_json: Arc::new(|_| Box::pin(async { "[{}]".to_string() })),
            ts: None,
            node: Arc::new(tokio::sync::OnceCell::new()),
        };
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("bound");
        tokio::spawn(serve(listener, state));
        let get = |path: &'static str| async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
            s.write_all(
                format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await
            .expect("write");
            let mut out = String::new();
            s.read_to_string(&mut out).await.expect("read");
            out
        };
        assert!(get("/health").await.starts_with("HTTP/1.1 503"));
        ready.store(true, Ordering::Release);
        assert!(get("/health").await.starts_with("HTTP/1.1 200"));
        let m = get("/metrics").await;
        assert!(m.contains("x 1"), "{m}");
        assert!(get("/?type=x").await.contains("console Some(\"type=x\")"));
        assert!(get("/_status/nodes").await.ends_with("[]"));
        assert!(get("/_status/protected_timestamps").await.ends_with("[{}]"));
    }

    #[tokio::test]
    async fn ts_endpoints_answer_series_and_refuse_bad_input() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = crate::ts_store::TsStore::open(
            crate::ts_store::tests::engine(dir.path()),
            crate::ts_store::TsConfig::default(),
        )
        .expect("open");
        let counter = Arc::new(std::sync::atomic::AtomicU64::new(5));
        let render: MetricsRenderer = {
            let counter = counter.clone();
            Arc::new(move || {
                format!(
                    "# TYPE x counter\nx {}\n# TYPE h histogram\nh_bucket{{le=\"10\"}} 1\nh_bucket{{le=\"+Inf\"}} 1\nh_sum 3\nh_count 1\n",
                    counter.load(Ordering::Relaxed)
                )
            })
        };
        let ts = Arc::new(Timeseries::new(store, render.clone()));
        let now = crate::timeseries::now_secs();
        ts.sample_once(now - 20).expect("sample");
        counter.store(25, Ordering::Relaxed);
        ts.sample_once(now - 10).expect("sample");
        let state = HttpState {
            ready: Arc::new(AtomicBool::new(true)),
            metrics: render,
            console: Arc::new(|_| Box::pin(async { String::new() })),
            nodes_json: Arc::new(|_| Box::pin(async { "[]".to_string() })),
            protected_timestamps_json: Arc::new(|_| Box::pin(async { "[]".to_string() })),
            ts: Some(ts),
            node: Arc::new(tokio::sync::OnceCell::new()),
        };
        let app = router(state);
        let call = |path: String| {
            let app = app.clone();
            async move {
                use tower::ServiceExt;
                let response = app
                    .oneshot(
                        axum::http::Request::get(path)
                            .body(axum::body::Body::empty())
                            .expect("request"),
                    )
                    .await
                    .expect("infallible");
                let status = response.status();
                let body = axum::body::to_bytes(response.into_body(), 1 << 20)
                    .await
                    .expect("body");
                (status, String::from_utf8_lossy(&body).into_owned())
            }
        };
        let (status, body) = call(format!(
            "/ts/query?names=x,h_p99&start={}&end={}",
            now - 60,
            now
        ))
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        let x = v["series"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["name"] == "x"))
            .expect("series x");
        assert_eq!(
            x["points"]
                .as_array()
                .and_then(|p| p.last())
                .map(|p| p[1].clone()),
            Some(25.0.into())
        );
        assert!(body.contains("\"h_p99\""), "{body}");
        let (status, body) = call(format!(
            "/ts/query?names=x&rate=1&start={}&end={}",
            now - 60,
            now
        ))
        .await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            body.contains(&format!("[{},2.0]", (now - 10) / 10 * 10)),
            "{body}"
        );
        let (status, body) = call("/ts/query?names=nope".to_string()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body.contains("unknown series"), "{body}");
        let (status, _) = call("/ts/query?names=x&start=0&end=999999999".to_string()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let (status, body) = call("/ts/local?names=x".to_string()).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(body.contains("\"x\""), "{body}");
    }
}

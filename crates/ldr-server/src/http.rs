//! The HTTP port: `GET /health` (200 once the node serves SQL; `?ready=1` accepted),
//! `GET /metrics` (Prometheus text), and a small console page.

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
}

//! The HTTP port: `GET /health` (200 once the node serves SQL; `?ready=1` accepted),
//! `GET /metrics` (Prometheus text), the time series endpoints (`GET /ts/query` for the
//! cluster, `GET /ts/local` for this node) and the DB Console (see [`crate::console`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use std::time::Instant;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use ldr_types::JobId;
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::console::{self, Viewer};
use crate::console_auth::{self, Sessions};
use crate::node::Node;
use crate::timeseries::Timeseries;
use crate::ts_store::TsError;

/// Renders the Prometheus text of this node.
pub type MetricsRenderer = Arc<dyn Fn() -> String + Send + Sync>;

/// Renders a JSON document (the `/_status` endpoints).
pub type ConsoleRenderer =
    Arc<dyn Fn(Option<String>) -> futures::future::BoxFuture<'static, String> + Send + Sync>;

/// What the HTTP handlers read.
#[derive(Clone)]
pub struct HttpState {
    pub ready: Arc<AtomicBool>,
    pub metrics: MetricsRenderer,
    /// Secure mode (`--certs-dir`): the console asks for a login.
    pub secure: bool,
    /// The console's login sessions.
    pub sessions: Arc<Sessions>,
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

async fn ts_query(State(state): State<HttpState>, headers: HeaderMap, uri: Uri) -> Response {
    if state.secure {
        let user = headers
            .get(header::COOKIE)
            .and_then(|v| v.to_str().ok())
            .and_then(console_auth::token_from_cookie)
            .and_then(|t| state.sessions.user(t, Instant::now()));
        if user.is_none() {
            return json_error(StatusCode::UNAUTHORIZED, "log in to the DB Console first");
        }
    }
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

async fn ts_local(State(state): State<HttpState>, uri: Uri) -> Response {
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

/// The page's viewer, or the answer to send instead: the login page's redirect (secure mode
/// without a session) or 503 before the node is initialized.
async fn viewer(
    state: &HttpState,
    headers: &HeaderMap,
    uri: &Uri,
) -> Result<(Arc<Node>, Viewer), Response> {
    let Some(node) = state.node.get().cloned() else {
        return Err((
            StatusCode::SERVICE_UNAVAILABLE,
            Html("<html><body><h1>ldr</h1><p>node not initialized</p></body></html>"),
        )
            .into_response());
    };
    if !state.secure {
        return Ok((node, Viewer::insecure_root()));
    }
    let user = headers
        .get(header::COOKIE)
        .and_then(|v| v.to_str().ok())
        .and_then(console_auth::token_from_cookie)
        .and_then(|t| state.sessions.user(t, Instant::now()));
    match user {
        Some(user) => {
            let viewer = Viewer::logged_in(&node, &user).await;
            Ok((node, viewer))
        }
        None => {
            let next = uri
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_else(|| "/".to_string());
            let location = format!("/console/login?next={}", percent_encode(&next));
            Err((StatusCode::SEE_OTHER, [(header::LOCATION, location)]).into_response())
        }
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_./".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

async fn overview(State(state): State<HttpState>, headers: HeaderMap, uri: Uri) -> Response {
    match viewer(&state, &headers, &uri).await {
        Ok((node, viewer)) => {
            Html(console::render(&node, uri.query(), &viewer).await).into_response()
        }
        Err(r) => r,
    }
}

async fn jobs_page(State(state): State<HttpState>, headers: HeaderMap, uri: Uri) -> Response {
    match viewer(&state, &headers, &uri).await {
        Ok((node, viewer)) => {
            Html(console::jobs_page(&node, uri.query(), &viewer).await).into_response()
        }
        Err(r) => r,
    }
}

async fn job_page(
    State(state): State<HttpState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let (node, viewer) = match viewer(&state, &headers, &uri).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let Ok(id) = id.parse::<JobId>() else {
        return (
            StatusCode::BAD_REQUEST,
            Html(format!("job id {:?} is not a number", console::escape(&id))),
        )
            .into_response();
    };
    let message = console::query_param(uri.query(), "message");
    match console::job_page(&node, id, &viewer, message.as_deref()).await {
        Some(page) => Html(page).into_response(),
        None => (StatusCode::NOT_FOUND, Html(format!("job {id} not found"))).into_response(),
    }
}

async fn job_action(
    State(state): State<HttpState>,
    Path((id, action)): Path<(String, String)>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let (node, viewer) = match viewer(&state, &headers, &uri).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let Ok(id) = id.parse::<JobId>() else {
        return (
            StatusCode::BAD_REQUEST,
            format!("job id {id:?} is not a number"),
        )
            .into_response();
    };
    let (status, message) = match console::job_action(&node, id, &action, &viewer).await {
        Ok(m) => (StatusCode::SEE_OTHER, m),
        Err(e) => (StatusCode::SEE_OTHER, e),
    };
    let location = format!("/console/jobs/{id}?message={}", percent_encode(&message));
    (status, [(header::LOCATION, location)]).into_response()
}

async fn metrics_page(State(state): State<HttpState>, headers: HeaderMap, uri: Uri) -> Response {
    match viewer(&state, &headers, &uri).await {
        Ok((_, viewer)) => Html(console::metrics_page(uri.query(), &viewer)).into_response(),
        Err(r) => r,
    }
}

async fn login_page(uri: Uri) -> Response {
    let next = console_auth::safe_next(console::query_param(uri.query(), "next").as_deref());
    Html(console::login_page(None, &next)).into_response()
}

async fn login(State(state): State<HttpState>, body: String) -> Response {
    let user = console::query_param(Some(&body), "user").unwrap_or_default();
    let password = console::query_param(Some(&body), "password").unwrap_or_default();
    let next = console_auth::safe_next(console::query_param(Some(&body), "next").as_deref());
    let Some(node) = state.node.get().cloned() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "node not initialized").into_response();
    };
    if !state.secure {
        return (StatusCode::SEE_OTHER, [(header::LOCATION, next)]).into_response();
    }
    match node.sql.server.authenticate(&user, Some(&password)).await {
        Ok(()) => {
            let token = state.sessions.create(&user, Instant::now());
            info!(user = %user, "console login");
            (
                StatusCode::SEE_OTHER,
                [
                    (header::SET_COOKIE, console_auth::set_cookie(&token)),
                    (header::LOCATION, next),
                ],
            )
                .into_response()
        }
        Err(e) => {
            warn!(user = %user, error = %e, "console login refused");
            (
                StatusCode::UNAUTHORIZED,
                Html(console::login_page(Some(&e.to_string()), &next)),
            )
                .into_response()
        }
    }
}

async fn logout(State(state): State<HttpState>, headers: HeaderMap) -> Response {
    if let Some(t) = headers
        .get(header::COOKIE)
        .and_then(|v| v.to_str().ok())
        .and_then(console_auth::token_from_cookie)
    {
        state.sessions.remove(t);
    }
    (
        StatusCode::SEE_OTHER,
        [
            (header::SET_COOKIE, console_auth::clear_cookie()),
            (header::LOCATION, "/console/login".to_string()),
        ],
    )
        .into_response()
}

/// The console's static files, compiled into the binary.
pub const ASSETS: [(&str, &str, &[u8]); 4] = [
    (
        "uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../assets/uPlot.iife.min.js"),
    ),
    (
        "uPlot.min.css",
        "text/css; charset=utf-8",
        include_bytes!("../assets/uPlot.min.css"),
    ),
    (
        "metrics.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../assets/metrics.js"),
    ),
    (
        "uPlot.LICENSE",
        "text/plain; charset=utf-8",
        include_bytes!("../assets/uPlot.LICENSE"),
    ),
];

async fn asset(Path(name): Path<String>) -> Response {
    match ASSETS.iter().find(|(n, _, _)| *n == name) {
        Some((_, content_type, bytes)) => (
            [
                (header::CONTENT_TYPE, *content_type),
                (header::CACHE_CONTROL, "max-age=3600"),
            ],
            *bytes,
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "no such file").into_response(),
    }
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
        .route("/", get(overview))
        .route("/console/metrics", get(metrics_page))
        .route("/console/jobs", get(jobs_page))
        .route("/console/jobs/{id}", get(job_page))
        .route("/console/jobs/{id}/{action}", post(job_action))
        .route("/console/login", get(login_page).post(login))
        .route("/console/logout", post(logout))
        .route("/console/assets/{name}", get(asset))
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
            secure: false,
            sessions: Arc::new(Sessions::default()),
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
        // Before initialization the console says so.
        assert!(get("/?type=x").await.starts_with("HTTP/1.1 503"));
        assert!(
            get("/console/assets/uPlot.iife.min.js")
                .await
                .contains("uPlot")
        );
        assert!(
            get("/console/assets/nope.js")
                .await
                .starts_with("HTTP/1.1 404")
        );
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
        let sessions = Arc::new(Sessions::default());
        let now = crate::timeseries::now_secs();
        ts.sample_once(now - 20).expect("sample");
        counter.store(25, Ordering::Relaxed);
        ts.sample_once(now - 10).expect("sample");
        let state = HttpState {
            ready: Arc::new(AtomicBool::new(true)),
            metrics: render,
            secure: true,
            sessions: sessions.clone(),
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
        // Secure mode: a query without a session is refused; with one it answers.
        let (status, _) = call(format!("/ts/query?names=x&start={}&end={}", now - 60, now)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let token = sessions.create("alice", Instant::now());
        let call = |path: String| {
            let app = app.clone();
            let cookie = format!("{}={token}", console_auth::COOKIE);
            async move {
                use tower::ServiceExt;
                let response = app
                    .oneshot(
                        axum::http::Request::get(path)
                            .header(header::COOKIE, cookie)
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

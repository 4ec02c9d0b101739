//! The cluster harness: N real `ldr start` processes on loopback, bootstrapped with `ldr init`,
//! ready when every node answers `/health` with 200 and `SELECT 1` over SQL.
//!
//! Each node gets two free loopback ports (listen = SQL + gRPC, HTTP), a store directory and a
//! log file (stdout and stderr, appended across restarts) in the cluster's temp directory.
//! With `proxied_sql`, each node advertises a [`FaultProxy`] in front of its listen port as
//! its `--advertise-sql-addr`: other clusters dial that, so inter-cluster traffic can be cut
//! while intra-cluster traffic (to `--advertise-addr`) flows.
//!
//! Nodes are numbered from 1 in start order. That is the harness's numbering, not always ldr's
//! node id (ldr hands out ids in the order nodes join, and the nodes start at once; ask
//! `SELECT crdb_internal.node_id()` when the id matters). All methods take `&self`, so a test can share
//! the cluster (`Arc<Cluster>`) between a workload and a fault injector.
//!
//! Set `LDR_SIM_KEEP=1` to keep the temp directory (stores and logs) after the cluster is
//! dropped. When a test panics, the drop prints every node's log path and last lines.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row};

use crate::error::{Result, SimError, describe_sql_error};
use crate::http::{HttpResponse, http_get};
use crate::metrics::Metrics;
use crate::ports::{free_loopback_addr, mentions_address_in_use};
use crate::process::{ManagedProcess, SIGCONT, SIGSTOP, SIGTERM, SpawnOptions};
use crate::proxy::{Fault, FaultProxy};
use crate::sql::{self, CONNECT_TIMEOUT, TextRows};

/// Environment variable that shifts a node's physical clock, read by `ldr start`.
pub const CLOCK_OFFSET_ENV: &str = "LDR_CLOCK_OFFSET_NS";
/// Start attempts when a freshly allocated port turns out to be taken.
const START_ATTEMPTS: usize = 3;
/// Lines of each node's log shown in failure reports.
const REPORT_LOG_LINES: usize = 30;
/// Deadline for one `/health` request.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(3);
/// Deadline for a graceful stop before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(30);

/// The SQL URL of a node at `addr`.
pub fn sql_url(addr: SocketAddr) -> String {
    format!("postgresql://root@{addr}/defaultdb?sslmode=disable")
}

/// Creates a secure cluster's certificates in `<dir>/certs` (CA key beside it, outside the
/// certificates directory, as the tutorial keeps it): the CA, a node certificate for
/// 127.0.0.1 and localhost (every node of the harness listens on loopback), and root's
/// client certificate.
fn create_certificates(dir: &Path) -> Result<()> {
    let certs = dir.join("certs");
    let ca_key = dir.join("ca.key");
    let fail = |what: &str, e: ldr_security::SecurityError| {
        SimError::InvalidArgument(format!("creating the cluster's {what}: {e}"))
    };
    ldr_security::certs::create_ca(&certs, &ca_key, false).map_err(|e| fail("CA", e))?;
    ldr_security::certs::create_node(
        &certs,
        &ca_key,
        &["127.0.0.1".to_string(), "localhost".to_string()],
        false,
    )
    .map_err(|e| fail("node certificate", e))?;
    ldr_security::certs::create_client(&certs, &ca_key, "root", false)
        .map_err(|e| fail("root client certificate", e))
}

/// Finds the `ldr` binary: `$LDR_BIN`, else `$CARGO_TARGET_DIR/debug/ldr`, else
/// `<workspace>/target/debug/ldr`, else next to the running executable (tests run from
/// `<target>/debug/deps/`).
pub fn find_ldr_binary() -> Result<PathBuf> {
    let mut looked_at = Vec::new();
    if let Some(path) = std::env::var_os("LDR_BIN") {
        let path = PathBuf::from(path);
        if path.is_file() {
            return Ok(path);
        }
        looked_at.push(path);
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let mut candidates = Vec::new();
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
        let target = PathBuf::from(target);
        let target = if target.is_relative() {
            workspace.join(target)
        } else {
            target
        };
        candidates.push(target.join("debug").join("ldr"));
    }
    candidates.push(workspace.join("target").join("debug").join("ldr"));
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1).take(2) {
            candidates.push(dir.join("ldr"));
        }
    }
    for candidate in candidates {
        if candidate.is_file() {
            return Ok(candidate);
        }
        looked_at.push(candidate);
    }
    Err(SimError::BinaryNotFound { looked_at })
}

/// What to start.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// Cluster name (`--cluster-name`, temp dir prefix, log lines).
    pub name: String,
    /// Number of nodes (>= 1).
    pub nodes: usize,
    /// The `ldr` executable.
    pub ldr_binary: PathBuf,
    /// Put a fault proxy in front of each node's advertised SQL address.
    pub proxied_sql: bool,
    /// Extra environment for every node (e.g. `RUST_LOG`).
    pub env: Vec<(String, String)>,
    /// Extra arguments appended to every `ldr start`.
    pub extra_start_args: Vec<String>,
    /// How long a start or restart may take until every node is ready.
    pub ready_timeout: Duration,
    /// Where the temp directory is created (default: the system temp dir).
    pub base_dir: Option<PathBuf>,
    /// A secure cluster: certificates of its own CA (`<dir>/certs`), nodes started with
    /// `--certs-dir`, SQL over TLS (root by client certificate), and other clusters dial it as
    /// [`STREAM_USER`] with a password over verify-full TLS.
    pub secure: bool,
    /// How many nodes `start` runs (the first ones); the others are created (ports, stores,
    /// `--join` lists) but started later with [`Cluster::start_node`], as nodes that join a
    /// running cluster. `None`: all of them.
    pub initially_running: Option<usize>,
}

/// The replication user a secure cluster creates for the streams other clusters open.
pub const STREAM_USER: &str = "ldr_stream";
/// Its password.
pub const STREAM_PASSWORD: &str = "ldr-stream-password";

impl ClusterSpec {
    /// A spec using [`find_ldr_binary`], unproxied, with a 90 s readiness deadline.
    pub fn new(name: impl Into<String>, nodes: usize) -> Result<ClusterSpec> {
        Ok(ClusterSpec::with_binary(name, nodes, find_ldr_binary()?))
    }

    pub fn with_binary(
        name: impl Into<String>,
        nodes: usize,
        ldr_binary: impl Into<PathBuf>,
    ) -> ClusterSpec {
        ClusterSpec {
            name: name.into(),
            nodes,
            ldr_binary: ldr_binary.into(),
            proxied_sql: false,
            env: Vec::new(),
            extra_start_args: Vec::new(),
            ready_timeout: Duration::from_secs(90),
            base_dir: None,
            secure: false,
            initially_running: None,
        }
    }

    /// Starts only the first `n` nodes (see [`ClusterSpec::initially_running`]).
    pub fn initially_running(mut self, n: usize) -> ClusterSpec {
        self.initially_running = Some(n);
        self
    }

    pub fn secure(mut self, secure: bool) -> ClusterSpec {
        self.secure = secure;
        self
    }

    pub fn proxied(mut self, proxied: bool) -> ClusterSpec {
        self.proxied_sql = proxied;
        self
    }

    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> ClusterSpec {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Appends an argument to every `ldr start` of this cluster.
    pub fn start_arg(mut self, arg: impl Into<String>) -> ClusterSpec {
        self.extra_start_args.push(arg.into());
        self
    }

    pub fn ready_timeout(mut self, timeout: Duration) -> ClusterSpec {
        self.ready_timeout = timeout;
        self
    }
}

/// A snapshot of one node, for reports and for building connection strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// 1-based.
    pub index: usize,
    /// `--listen-addr` (SQL + gRPC).
    pub listen_addr: SocketAddr,
    pub http_addr: SocketAddr,
    /// `--advertise-sql-addr`: the proxy when proxied, else the listen address.
    pub advertised_sql_addr: SocketAddr,
    pub store_dir: PathBuf,
    pub log_path: PathBuf,
    pub pid: Option<u32>,
    pub running: bool,
    pub paused: bool,
    pub clock_offset_ns: i64,
    /// How many times this node was started.
    pub starts: u32,
    /// The exit status, when the process ended on its own (not killed by the harness).
    pub exited: Option<String>,
}

struct NodeState {
    process: Option<ManagedProcess>,
    clock_offset_ns: i64,
    paused: bool,
    starts: u32,
}

struct Node {
    index: usize,
    listen_addr: SocketAddr,
    http_addr: SocketAddr,
    proxy: Option<FaultProxy>,
    store_dir: PathBuf,
    log_path: PathBuf,
    state: Mutex<NodeState>,
}

impl Node {
    fn state(&self) -> MutexGuard<'_, NodeState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn advertised_sql_addr(&self) -> SocketAddr {
        self.proxy
            .as_ref()
            .map(FaultProxy::addr)
            .unwrap_or(self.listen_addr)
    }
}

/// A running cluster. Dropping it kills every node.
pub struct Cluster {
    spec: ClusterSpec,
    dir: Option<tempfile::TempDir>,
    dir_path: PathBuf,
    nodes: Vec<Node>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("name", &self.spec.name)
            .field("dir", &self.dir_path)
            .field("nodes", &self.nodes())
            .finish()
    }
}

impl Cluster {
    /// Starts the cluster and waits until every node is ready (see the module doc).
    pub async fn start(spec: ClusterSpec) -> Result<Cluster> {
        if spec.nodes == 0 {
            return Err(SimError::InvalidArgument(
                "a cluster needs at least one node".into(),
            ));
        }
        if !spec.ldr_binary.is_file() {
            return Err(SimError::BinaryNotFound {
                looked_at: vec![spec.ldr_binary.clone()],
            });
        }
        let prefix = format!("ldr-sim-{}-", spec.name);
        let mut builder = tempfile::Builder::new();
        builder.prefix(&prefix);
        let dir = match &spec.base_dir {
            Some(base) => builder.tempdir_in(base),
            None => builder.tempdir(),
        }
        .map_err(|e| SimError::io("creating the cluster temp dir", e))?;
        let dir_path = dir.path().to_path_buf();
        if spec.secure {
            create_certificates(&dir_path)?;
        }
        let mut cluster = Cluster {
            spec,
            dir: Some(dir),
            dir_path,
            nodes: Vec::new(),
        };
        let mut last_error = None;
        for attempt in 1..=START_ATTEMPTS {
            match cluster.try_start(attempt).await {
                Ok(()) => return Ok(cluster),
                Err(e) => {
                    let port_clash = cluster.nodes.iter().any(|n| {
                        mentions_address_in_use(&tail_lines(&n.log_path, REPORT_LOG_LINES))
                    });
                    let report = cluster.failure_report(&format!(
                        "cluster {} failed to start (attempt {attempt}): {e}",
                        cluster.spec.name
                    ));
                    cluster.kill_all();
                    if port_clash && attempt < START_ATTEMPTS {
                        tracing::warn!(cluster = %cluster.spec.name, attempt, "a port was taken by someone else; retrying with fresh ports");
                        last_error = Some(e);
                        continue;
                    }
                    return Err(SimError::Process(report));
                }
            }
        }
        Err(last_error.unwrap_or_else(|| SimError::Process("cluster start failed".into())))
    }

    async fn try_start(&mut self, attempt: usize) -> Result<()> {
        let initial_offset = self
            .spec
            .env
            .iter()
            .rev()
            .find(|(k, _)| k == CLOCK_OFFSET_ENV)
            .and_then(|(_, v)| v.parse::<i64>().ok())
            .unwrap_or(0);
        let mut nodes = Vec::with_capacity(self.spec.nodes);
        for index in 1..=self.spec.nodes {
            let listen_addr = free_loopback_addr()?;
            let http_addr = free_loopback_addr()?;
            let proxy = if self.spec.proxied_sql {
                Some(FaultProxy::start(listen_addr).await?)
            } else {
                None
            };
            let node_dir = self
                .dir_path
                .join(format!("attempt{attempt}"))
                .join(format!("node{index}"));
            let store_dir = node_dir.join("store");
            std::fs::create_dir_all(&store_dir)
                .map_err(|e| SimError::io(format!("creating {}", store_dir.display()), e))?;
            nodes.push(Node {
                index,
                listen_addr,
                http_addr,
                proxy,
                store_dir,
                log_path: node_dir.join("node.log"),
                state: Mutex::new(NodeState {
                    process: None,
                    clock_offset_ns: initial_offset,
                    paused: false,
                    starts: 0,
                }),
            });
        }
        self.nodes = nodes;
        let running = self.initially_running();
        for node in &self.nodes[..running] {
            self.spawn_node(node)?;
        }
        let deadline = Instant::now() + self.spec.ready_timeout;
        self.run_init(deadline).await?;
        for index in 1..=running {
            self.wait_ready_until(index, deadline).await?;
        }
        self.wait_system_replicated_until(deadline).await?;
        if self.spec.secure {
            self.exec(
                1,
                &format!(
                    "CREATE USER IF NOT EXISTS {STREAM_USER} WITH PASSWORD '{STREAM_PASSWORD}';
                     GRANT SYSTEM REPLICATION TO {STREAM_USER};"
                ),
            )
            .await?;
        }
        tracing::info!(cluster = %self.spec.name, nodes = self.nodes.len(), dir = %self.dir_path.display(), "cluster ready");
        Ok(())
    }

    fn join_list(&self) -> String {
        self.nodes
            .iter()
            .map(|n| n.listen_addr.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    fn spawn_node(&self, node: &Node) -> Result<()> {
        let mut state = node.state();
        if let Some(process) = state.process.as_mut()
            && process.is_running()
        {
            return Err(SimError::InvalidArgument(format!(
                "node {} of cluster {} is already running",
                node.index, self.spec.name
            )));
        }
        state.starts += 1;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log_path)
            .map_err(|e| SimError::io(format!("opening {}", node.log_path.display()), e))?;
        writeln!(
            log,
            "=== ldr-sim: starting node {} of cluster {} (start #{}, clock offset {} ns) ===",
            node.index, self.spec.name, state.starts, state.clock_offset_ns
        )
        .map_err(|e| SimError::io("writing the node log", e))?;
        let stderr = log
            .try_clone()
            .map_err(|e| SimError::io("duplicating the log handle", e))?;
        let mut command = Command::new(&self.spec.ldr_binary);
        command
            .arg("start")
            .arg(self.security_flag())
            .arg(format!("--store={}", node.store_dir.display()))
            .arg(format!("--listen-addr={}", node.listen_addr))
            .arg(format!("--http-addr={}", node.http_addr))
            .arg(format!("--join={}", self.join_list()))
            .arg(format!("--advertise-addr={}", node.listen_addr))
            .arg(format!(
                "--advertise-sql-addr={}",
                node.advertised_sql_addr()
            ))
            .arg(format!("--cluster-name={}", self.spec.name))
            .args(&self.spec.extra_start_args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(stderr));
        if let Some(parent) = node.store_dir.parent() {
            command.current_dir(parent);
        }
        // Plain text in the log files (tracing writes ANSI colours unless NO_COLOR is set).
        command.env("NO_COLOR", "1");
        for (key, value) in &self.spec.env {
            command.env(key, value);
        }
        command.env(CLOCK_OFFSET_ENV, state.clock_offset_ns.to_string());
        let process = ManagedProcess::spawn(
            format!("{}/node{}", self.spec.name, node.index),
            command,
            SpawnOptions::default(),
        )?;
        tracing::info!(cluster = %self.spec.name, node = node.index, pid = process.pid(), listen = %node.listen_addr, "started node");
        state.process = Some(process);
        state.paused = false;
        Ok(())
    }

    async fn run_init(&self, deadline: Instant) -> Result<()> {
        let first = &self.nodes[0];
        let init_log = self.dir_path.join("init.log");
        loop {
            self.check_alive()?;
            let out = OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .open(&init_log)
                .map_err(|e| SimError::io("opening init.log", e))?;
            let err = out
                .try_clone()
                .map_err(|e| SimError::io("duplicating the init log handle", e))?;
            let mut command = Command::new(&self.spec.ldr_binary);
            command
                .arg("init")
                .arg(self.security_flag())
                .arg(format!("--host={}", first.listen_addr))
                .stdin(Stdio::null())
                .stdout(Stdio::from(out))
                .stderr(Stdio::from(err));
            for (key, value) in &self.spec.env {
                command.env(key, value);
            }
            let mut process = ManagedProcess::spawn(
                format!("{}/init", self.spec.name),
                command,
                SpawnOptions::default(),
            )?;
            let remaining = deadline.saturating_duration_since(Instant::now());
            let status = process
                .wait_exit(remaining.min(Duration::from_secs(30)))
                .await?;
            let output = std::fs::read_to_string(&init_log).unwrap_or_default();
            let last = match status {
                Some(s) if s.success() => return Ok(()),
                // A previous attempt may have succeeded after we gave up on it.
                _ if output.to_ascii_lowercase().contains("already") => return Ok(()),
                Some(s) => format!("`ldr init` exited with {s}: {}", output.trim()),
                None => "`ldr init` did not finish within 30s".to_string(),
            };
            drop(process);
            if Instant::now() >= deadline {
                return Err(SimError::Timeout {
                    what: format!("`ldr init` of cluster {}", self.spec.name),
                    waited_ms: self.spec.ready_timeout.as_millis(),
                    details: format!("; {last}"),
                });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Fails if any node that should be running has exited.
    fn check_alive(&self) -> Result<()> {
        for node in &self.nodes {
            let mut state = node.state();
            if let Some(process) = state.process.as_mut()
                && let Some(status) = process.try_wait()?
            {
                return Err(SimError::Process(format!(
                    "node {} of cluster {} exited with {status}",
                    node.index, self.spec.name
                )));
            }
        }
        Ok(())
    }

    fn node(&self, index: usize) -> Result<&Node> {
        if index == 0 || index > self.nodes.len() {
            return Err(SimError::InvalidArgument(format!(
                "cluster {} has nodes 1..={}, not {index}",
                self.spec.name,
                self.nodes.len()
            )));
        }
        Ok(&self.nodes[index - 1])
    }

    /// One readiness probe: `/health` is 200 and `SELECT 1` answers.
    async fn probe(&self, node: &Node) -> std::result::Result<(), String> {
        {
            let mut state = node.state();
            match state.process.as_mut() {
                None => return Err("not running".into()),
                Some(process) => {
                    if let Some(status) = process.try_wait().map_err(|e| e.to_string())? {
                        return Err(format!("exited with {status}"));
                    }
                }
            }
        }
        match http_get(node.http_addr, "/health", HEALTH_TIMEOUT).await {
            Ok(HttpResponse { status: 200, .. }) => {}
            Ok(response) => {
                return Err(format!(
                    "/health answered {}: {}",
                    response.status,
                    response.body.trim()
                ));
            }
            Err(e) => return Err(format!("/health: {e}")),
        }
        let client = sql::connect(&self.url_of(node.listen_addr), Duration::from_secs(5))
            .await
            .map_err(|e| format!("sql connect: {e}"))?;
        client
            .simple_query("SELECT 1")
            .await
            .map_err(|e| format!("SELECT 1: {}", describe_sql_error(&e)))?;
        Ok(())
    }

    async fn wait_ready_until(&self, index: usize, deadline: Instant) -> Result<()> {
        let node = self.node(index)?;
        let start = Instant::now();
        loop {
            let last = match self.probe(node).await {
                Ok(()) => return Ok(()),
                Err(observation) => observation,
            };
            if last.starts_with("exited with") || last == "not running" {
                return Err(SimError::Process(format!(
                    "node {index} of cluster {} {last}",
                    self.spec.name
                )));
            }
            if Instant::now() >= deadline {
                return Err(SimError::Timeout {
                    what: format!("node {index} of cluster {} to be ready", self.spec.name),
                    waited_ms: start.elapsed().as_millis(),
                    details: format!("; last observation: {last}"),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the system range has a replica on every node (up to three): a new
    /// cluster's system range starts on node 1 alone, and the nodes that join become its
    /// replicas within seconds. Until then, losing node 1 would stop the cluster.
    /// How many nodes `start` runs.
    fn initially_running(&self) -> usize {
        self.spec
            .initially_running
            .unwrap_or(self.nodes.len())
            .clamp(1, self.nodes.len())
    }

    async fn wait_system_replicated_until(&self, deadline: Instant) -> Result<()> {
        let want = self.initially_running().min(3);
        let start = Instant::now();
        loop {
            let last = match self.query_text(1, "SHOW CLUSTER RANGES").await {
                Ok(rows) => {
                    let replicas = rows
                        .column("replicas")
                        .and_then(|c| rows.rows.first().map(|r| r[c].clone()))
                        .flatten()
                        .unwrap_or_default();
                    if replicas.split(',').count() >= want {
                        return Ok(());
                    }
                    format!("system range replicas {replicas}")
                }
                // A binary from before replicated system ranges (benchmark baselines).
                Err(e) if e.to_string().contains("syntax error") => return Ok(()),
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                return Err(SimError::Timeout {
                    what: format!(
                        "the system range of cluster {} to be replicated",
                        self.spec.name
                    ),
                    waited_ms: start.elapsed().as_millis(),
                    details: format!("; last observation: {last}"),
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits (up to the spec's `ready_timeout`) until node `index` is ready; on failure the
    /// error carries the node logs' last lines.
    pub async fn wait_ready(&self, index: usize) -> Result<()> {
        let deadline = Instant::now() + self.spec.ready_timeout;
        match self.wait_ready_until(index, deadline).await {
            Ok(()) => Ok(()),
            Err(e) => {
                let report = self.failure_report(&format!(
                    "node {index} of cluster {} is not ready: {e}",
                    self.spec.name
                ));
                Err(SimError::Process(report))
            }
        }
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    pub fn spec(&self) -> &ClusterSpec {
        &self.spec
    }

    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Node numbers, `1..=node_count()`.
    pub fn node_ids(&self) -> std::ops::RangeInclusive<usize> {
        1..=self.nodes.len()
    }

    /// The temp directory holding stores and logs.
    pub fn dir(&self) -> &Path {
        &self.dir_path
    }

    /// Keeps the temp directory (stores and logs) after the cluster is dropped, e.g. after a
    /// failed run; returns its path.
    pub fn keep_files(&mut self) -> PathBuf {
        if let Some(dir) = self.dir.take() {
            let _ = dir.keep();
        }
        self.dir_path.clone()
    }

    pub fn node_info(&self, index: usize) -> Result<NodeInfo> {
        let node = self.node(index)?;
        let mut state = node.state();
        let running = state
            .process
            .as_mut()
            .is_some_and(ManagedProcess::is_running);
        let exited = match state.process.as_mut() {
            Some(process) if !running => process.try_wait().ok().flatten().map(|s| s.to_string()),
            _ => None,
        };
        Ok(NodeInfo {
            index,
            listen_addr: node.listen_addr,
            http_addr: node.http_addr,
            advertised_sql_addr: node.advertised_sql_addr(),
            store_dir: node.store_dir.clone(),
            log_path: node.log_path.clone(),
            pid: if running {
                state.process.as_ref().map(ManagedProcess::pid)
            } else {
                None
            },
            running,
            paused: state.paused && running,
            clock_offset_ns: state.clock_offset_ns,
            starts: state.starts,
            exited,
        })
    }

    pub fn nodes(&self) -> Vec<NodeInfo> {
        self.node_ids()
            .filter_map(|i| self.node_info(i).ok())
            .collect()
    }

    /// `--insecure`, or `--certs-dir=<dir>/certs` for a secure cluster.
    fn security_flag(&self) -> String {
        if self.spec.secure {
            format!("--certs-dir={}", self.certs_dir().display())
        } else {
            "--insecure".into()
        }
    }

    /// The certificates directory of a secure cluster (`ca.crt`, `node.*`, `client.root.*`).
    pub fn certs_dir(&self) -> PathBuf {
        self.dir_path.join("certs")
    }

    /// The SQL URL of `addr` as root: [`sql_url`], or for a secure cluster verify-full TLS
    /// with root's client certificate (a URL psql takes as it is).
    pub fn url_of(&self, addr: SocketAddr) -> String {
        if !self.spec.secure {
            return sql_url(addr);
        }
        let certs = self.certs_dir();
        format!(
            "postgresql://root@{addr}/defaultdb?sslmode=verify-full&sslrootcert={}&sslcert={}&sslkey={}",
            certs.join("ca.crt").display(),
            certs.join("client.root.crt").display(),
            certs.join("client.root.key").display()
        )
    }

    /// Direct SQL URL of a node (intra-cluster path, never through the proxy).
    pub fn url(&self, index: usize) -> Result<String> {
        Ok(self.url_of(self.node(index)?.listen_addr))
    }

    /// SQL URL through the node's fault proxy, if the cluster is proxied.
    pub fn proxied_url(&self, index: usize) -> Result<Option<String>> {
        Ok(self
            .node(index)?
            .proxy
            .as_ref()
            .map(|p| self.url_of(p.addr())))
    }

    /// The URL another cluster should use for this node (for `CREATE EXTERNAL CONNECTION`):
    /// through the proxy when proxied, else direct. For a secure cluster, the form
    /// `ldr encode-uri … --inline` prints: [`STREAM_USER`] with its password, verify-full TLS,
    /// this cluster's CA inline.
    pub fn external_url(&self, index: usize) -> Result<String> {
        if !self.spec.secure {
            return Ok(sql_url(self.node(index)?.advertised_sql_addr()));
        }
        self.external_url_as(index, STREAM_USER, STREAM_PASSWORD)
    }

    /// [`Cluster::external_url`] for another user that logs in with `password` (it must
    /// exist, with the privileges the stream needs).
    pub fn external_url_as(&self, index: usize, user: &str, password: &str) -> Result<String> {
        let addr = self.node(index)?.advertised_sql_addr();
        if !self.spec.secure {
            return Ok(format!(
                "postgresql://{user}:{password}@{addr}/defaultdb?sslmode=disable"
            ));
        }
        let ca_path = self.certs_dir().join("ca.crt");
        let ca = ldr_security::uri::read_for_uri(&ca_path)
            .map_err(|e| SimError::InvalidArgument(format!("reading the cluster's CA: {e}")))?;
        ldr_security::uri::encode_uri(&ldr_security::uri::EncodeUri {
            target: format!("{user}:{password}@{addr}"),
            database: Some("defaultdb".into()),
            ca_cert: Some(ca),
            cert: None,
            key: None,
            inline: true,
            cluster: "system".into(),
        })
        .map_err(|e| SimError::InvalidArgument(format!("encoding the external URL: {e}")))
    }

    /// Direct URLs of every node.
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| self.url_of(n.listen_addr))
            .collect()
    }

    pub fn proxy(&self, index: usize) -> Result<Option<&FaultProxy>> {
        Ok(self.node(index)?.proxy.as_ref())
    }

    /// Sets the same fault on every node's proxy (e.g. cut this cluster off from the others).
    /// Fails if the cluster is not proxied.
    pub fn set_fault(&self, fault: Fault) -> Result<()> {
        if !self.spec.proxied_sql {
            return Err(SimError::InvalidArgument(format!(
                "cluster {} was started without proxied_sql",
                self.spec.name
            )));
        }
        for node in &self.nodes {
            if let Some(proxy) = &node.proxy {
                proxy.set(fault);
            }
        }
        Ok(())
    }

    /// Sets a fault on one node's proxy.
    pub fn set_node_fault(&self, index: usize, fault: Fault) -> Result<()> {
        match &self.node(index)?.proxy {
            Some(proxy) => {
                proxy.set(fault);
                Ok(())
            }
            None => Err(SimError::InvalidArgument(format!(
                "cluster {} was started without proxied_sql",
                self.spec.name
            ))),
        }
    }

    /// A new SQL connection to node `index` (direct).
    pub async fn sql(&self, index: usize) -> Result<Client> {
        sql::connect(&self.url(index)?, CONNECT_TIMEOUT).await
    }

    /// Runs statements on node `index` (simple protocol; several statements allowed).
    pub async fn exec(&self, index: usize, statements: &str) -> Result<()> {
        let client = self.sql(index).await?;
        sql::exec(&client, statements).await
    }

    /// Runs a query with parameters on node `index` (extended protocol, typed rows).
    pub async fn query(&self, index: usize, query: &str) -> Result<Vec<Row>> {
        self.query_params(index, query, &[]).await
    }

    pub async fn query_params(
        &self,
        index: usize,
        query: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>> {
        let client = self.sql(index).await?;
        client
            .query(query, params)
            .await
            .map_err(|e| SimError::sql(format!("running {query:?} on node {index}"), e))
    }

    /// Runs a query on node `index` with every value as text.
    pub async fn query_text(&self, index: usize, query: &str) -> Result<TextRows> {
        let client = self.sql(index).await?;
        sql::query_text(&client, query).await
    }

    /// `GET path` on node `index`'s HTTP port.
    pub async fn http_get(&self, index: usize, path: &str) -> Result<HttpResponse> {
        http_get(self.node(index)?.http_addr, path, Duration::from_secs(10)).await
    }

    /// Node `index`'s `/metrics`, parsed.
    pub async fn metrics(&self, index: usize) -> Result<Metrics> {
        let response = self.http_get(index, "/metrics").await?;
        if response.status != 200 {
            return Err(SimError::Protocol(format!(
                "/metrics of node {index} answered {}",
                response.status
            )));
        }
        Ok(Metrics::parse(&response.body))
    }

    /// SIGKILL node `index` (a crash); its store and ports are kept for [`Cluster::restart`].
    pub fn kill(&self, index: usize) -> Result<()> {
        let node = self.node(index)?;
        let mut state = node.state();
        if let Some(process) = state.process.as_mut() {
            let status = process.kill()?;
            tracing::info!(cluster = %self.spec.name, node = index, %status, "killed node");
        }
        state.process = None;
        state.paused = false;
        Ok(())
    }

    /// Graceful stop: SIGTERM, then SIGKILL after 30 s.
    pub async fn stop(&self, index: usize) -> Result<()> {
        let node = self.node(index)?;
        {
            let mut state = node.state();
            let Some(process) = state.process.as_mut() else {
                return Ok(());
            };
            let _ = process.signal(SIGCONT);
            let _ = process.signal(SIGTERM);
        }
        let deadline = Instant::now() + STOP_GRACE;
        loop {
            {
                let mut state = node.state();
                let exited = match state.process.as_mut() {
                    None => true,
                    Some(process) => process.try_wait()?.is_some(),
                };
                if exited || Instant::now() >= deadline {
                    if let Some(mut process) = state.process.take() {
                        process.kill()?;
                    }
                    state.paused = false;
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Restarts node `index` on the same store and ports (killing it first if it runs) and
    /// waits until it is ready.
    pub async fn restart(&self, index: usize) -> Result<()> {
        self.kill(index)?;
        let node = self.node(index)?;
        self.spawn_node(node)?;
        self.wait_ready(index).await
    }

    /// Starts a killed node without waiting for readiness (for scenarios that restart several
    /// nodes at once; follow with [`Cluster::wait_ready`]).
    pub fn start_node(&self, index: usize) -> Result<()> {
        let node = self.node(index)?;
        self.spawn_node(node)
    }

    /// A network partition inside the cluster: the nodes of each group reach only the nodes
    /// of their own group (node-to-node requests and Raft messages; SQL clients still reach
    /// every node). Every running node is told through `ldr debug partition`; nodes in no
    /// group are cut off from everyone. [`Cluster::heal`] ends it.
    pub async fn partition(&self, groups: &[&[usize]]) -> Result<()> {
        for node in &self.nodes {
            if !node
                .state()
                .process
                .as_mut()
                .is_some_and(|p| p.is_running())
            {
                continue;
            }
            let group = groups.iter().find(|g| g.contains(&node.index));
            let blocked: Vec<String> = self
                .nodes
                .iter()
                .filter(|other| {
                    other.index != node.index && !group.is_some_and(|g| g.contains(&other.index))
                })
                .map(|other| other.listen_addr.to_string())
                .collect();
            self.debug_partition(node, &blocked).await?;
        }
        tracing::info!(cluster = %self.spec.name, ?groups, "network partitioned");
        Ok(())
    }

    /// Ends a [`Cluster::partition`]: every running node reaches every other again.
    pub async fn heal(&self) -> Result<()> {
        for node in &self.nodes {
            if node
                .state()
                .process
                .as_mut()
                .is_some_and(|p| p.is_running())
            {
                self.debug_partition(node, &[]).await?;
            }
        }
        tracing::info!(cluster = %self.spec.name, "network partition healed");
        Ok(())
    }

    async fn debug_partition(&self, node: &Node, blocked: &[String]) -> Result<()> {
        let mut command = tokio::process::Command::new(&self.spec.ldr_binary);
        command
            .arg("debug")
            .arg("partition")
            .arg(self.security_flag())
            .arg(format!("--host={}", node.listen_addr))
            .stdin(Stdio::null())
            .kill_on_drop(true);
        if !blocked.is_empty() {
            command.arg(format!("--from={}", blocked.join(",")));
        }
        let output = tokio::time::timeout(Duration::from_secs(30), command.output())
            .await
            .map_err(|_| SimError::Timeout {
                what: format!("ldr debug partition on node {}", node.index),
                waited_ms: 30_000,
                details: String::new(),
            })?
            .map_err(|e| SimError::io("running ldr debug partition", e))?;
        if !output.status.success() {
            return Err(SimError::Process(format!(
                "ldr debug partition on node {} failed: {}",
                node.index,
                String::from_utf8_lossy(&output.stderr)
            )));
        }
        Ok(())
    }

    /// SIGSTOP node `index`: it keeps its sockets but does nothing.
    pub fn pause(&self, index: usize) -> Result<()> {
        let node = self.node(index)?;
        let mut state = node.state();
        let process = state
            .process
            .as_mut()
            .ok_or_else(|| SimError::InvalidArgument(format!("node {index} is not running")))?;
        process.signal(SIGSTOP)?;
        state.paused = true;
        tracing::info!(cluster = %self.spec.name, node = index, "paused node");
        Ok(())
    }

    /// SIGCONT node `index`.
    pub fn resume(&self, index: usize) -> Result<()> {
        let node = self.node(index)?;
        let mut state = node.state();
        let process = state
            .process
            .as_mut()
            .ok_or_else(|| SimError::InvalidArgument(format!("node {index} is not running")))?;
        process.signal(SIGCONT)?;
        state.paused = false;
        tracing::info!(cluster = %self.spec.name, node = index, "resumed node");
        Ok(())
    }

    /// Restarts node `index` with its physical clock shifted by `offset_ns`
    /// (`LDR_CLOCK_OFFSET_NS`) and waits until it is ready.
    pub async fn set_clock_offset(&self, index: usize, offset_ns: i64) -> Result<()> {
        self.node(index)?.state().clock_offset_ns = offset_ns;
        self.restart(index).await
    }

    /// Sets the clock offset node `index` gets at its next start, without restarting it.
    pub fn set_next_clock_offset(&self, index: usize, offset_ns: i64) -> Result<()> {
        self.node(index)?.state().clock_offset_ns = offset_ns;
        Ok(())
    }

    /// Waits at most `timeout` for node `index` to be ready: `Ok(true)` when it is,
    /// `Ok(false)` when it still runs but is not ready yet (e.g. it waits for a node that is
    /// down), an error with the node logs when it exited or is not running.
    pub async fn wait_ready_within(&self, index: usize, timeout: Duration) -> Result<bool> {
        match self.wait_ready_until(index, Instant::now() + timeout).await {
            Ok(()) => Ok(true),
            Err(SimError::Timeout { .. }) => Ok(false),
            Err(e) => Err(SimError::Process(self.failure_report(&format!(
                "node {index} of cluster {} is not ready: {e}",
                self.spec.name
            )))),
        }
    }

    /// The last `lines` lines of node `index`'s log.
    pub fn log_tail(&self, index: usize, lines: usize) -> Result<String> {
        Ok(tail_lines(&self.node(index)?.log_path, lines))
    }

    /// Every node: state, addresses, log path and last log lines.
    pub fn failure_report(&self, headline: &str) -> String {
        let mut out = format!(
            "{headline}\ncluster {} in {}\n",
            self.spec.name,
            self.dir_path.display()
        );
        for node in &self.nodes {
            let status = {
                let mut state = node.state();
                let paused = state.paused;
                match state.process.as_mut() {
                    None => "not running".to_string(),
                    Some(p) => match p.try_wait() {
                        Ok(Some(s)) => format!("exited with {s}"),
                        Ok(None) if paused => format!("paused (pid {})", p.pid()),
                        Ok(None) => format!("running (pid {})", p.pid()),
                        Err(e) => format!("unknown ({e})"),
                    },
                }
            };
            out.push_str(&format!(
                "--- node {} [{status}] listen {} http {} advertised-sql {}\n    log: {}\n",
                node.index,
                node.listen_addr,
                node.http_addr,
                node.advertised_sql_addr(),
                node.log_path.display()
            ));
            for line in tail_lines(&node.log_path, REPORT_LOG_LINES).lines() {
                out.push_str("    | ");
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    fn kill_all(&self) {
        for node in &self.nodes {
            let mut state = node.state();
            if let Some(mut process) = state.process.take()
                && let Err(e) = process.kill()
            {
                tracing::warn!(cluster = %self.spec.name, node = node.index, error = %e, "could not kill node");
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "{}",
                self.failure_report(&format!(
                    "cluster {} dropped during a panic",
                    self.spec.name
                ))
            );
        }
        self.kill_all();
        let keep = std::env::var("LDR_SIM_KEEP").is_ok_and(|v| !v.is_empty() && v != "0");
        if keep && let Some(dir) = self.dir.take() {
            let path = dir.keep();
            eprintln!(
                "ldr-sim: kept cluster {} files in {}",
                self.spec.name,
                path.display()
            );
        }
    }
}

/// The last `lines` lines of a text file (reads at most its last 64 KiB).
pub(crate) fn tail_lines(path: &Path, lines: usize) -> String {
    const TAIL_BYTES: u64 = 64 * 1024;
    let Ok(mut file) = File::open(path) else {
        return String::from("(no log file)");
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(TAIL_BYTES);
    if file.seek(SeekFrom::Start(start)).is_err() {
        return String::new();
    }
    let mut bytes = Vec::new();
    if file.read_to_end(&mut bytes).is_err() {
        return String::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_returns_the_last_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log");
        std::fs::write(&path, "a\nb\nc\nd\n").expect("write");
        assert_eq!(tail_lines(&path, 2), "c\nd");
        assert_eq!(tail_lines(&path, 10), "a\nb\nc\nd");
        assert_eq!(tail_lines(&dir.path().join("missing"), 2), "(no log file)");
    }

    #[test]
    fn url_format() {
        let addr: SocketAddr = "127.0.0.1:26257".parse().expect("addr");
        assert_eq!(
            sql_url(addr),
            "postgresql://root@127.0.0.1:26257/defaultdb?sslmode=disable"
        );
    }
}

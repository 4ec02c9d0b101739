//! The cluster harness, end to end, with `fake-ldr` standing in for `ldr` (the real binary is
//! built elsewhere): a fake node forwards SQL to a real PostgreSQL server and serves
//! `/health` and `/metrics`, which is all the harness relies on. These tests prove process
//! management (start, readiness, kill, restart on the same store, pause/resume, clock offset,
//! proxies, cleanup) independently of the database.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ldr_sim::pg::{PgConfig, PgInstance};
use ldr_sim::process::{ManagedProcess, SpawnOptions};
use ldr_sim::{Cluster, ClusterSpec, Fault, SimError};

const WAIT: Duration = Duration::from_secs(60);

fn fake_ldr() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_fake-ldr"))
}

fn pid_alive(pid: u32) -> bool {
    // A zombie (state Z) no longer runs; reaping it is its parent's business.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .unwrap_or_default()
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

async fn wait_pid_gone(pid: u32) {
    let deadline = Instant::now() + WAIT;
    while pid_alive(pid) {
        assert!(
            Instant::now() < deadline,
            "pid {pid} still alive after {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn select_one(url: &str) -> Result<i32, String> {
    let client = ldr_sim::sql::connect(url, Duration::from_secs(10))
        .await
        .map_err(|e| e.to_string())?;
    let row = client
        .query_one("SELECT 1::INT4", &[])
        .await
        .map_err(|e| e.to_string())?;
    Ok(row.get(0))
}

#[tokio::test]
async fn cluster_lifecycle_with_fake_nodes() {
    let backend = PgInstance::start(PgConfig::new("fake-backend"))
        .await
        .expect("start the PostgreSQL backend");
    // The harness connects as root to defaultdb, as it will to ldr.
    let admin = backend.connect().await.expect("connect to the backend");
    ldr_sim::sql::exec(&admin, "CREATE ROLE root SUPERUSER LOGIN")
        .await
        .expect("create root");
    ldr_sim::sql::exec(&admin, "CREATE DATABASE defaultdb")
        .await
        .expect("create defaultdb");
    let spec = ClusterSpec::with_binary("fake", 3, fake_ldr())
        .proxied(true)
        .env("FAKE_LDR_BACKEND", backend.addr().to_string())
        .ready_timeout(WAIT);

    // Why: start returns only when every node is ready, so SQL works at once on all of them,
    // directly and through each node's proxy.
    let cluster = Cluster::start(spec).await.expect("start the fake cluster");
    assert_eq!(cluster.node_count(), 3);
    for n in cluster.node_ids() {
        assert_eq!(
            select_one(&cluster.url(n).expect("url")).await,
            Ok(1),
            "node {n} direct"
        );
        let proxied = cluster
            .proxied_url(n)
            .expect("proxied url")
            .expect("cluster is proxied");
        assert_eq!(
            select_one(&proxied).await,
            Ok(1),
            "node {n} through its proxy"
        );
        assert_eq!(cluster.external_url(n).expect("external url"), proxied);
        assert_eq!(
            cluster.http_get(n, "/health").await.expect("health").status,
            200
        );
        let info = cluster.node_info(n).expect("info");
        assert!(
            info.running && !info.paused && info.pid.is_some() && info.starts == 1,
            "{info:?}"
        );
        assert!(
            info.log_path.is_file(),
            "log file {} missing",
            info.log_path.display()
        );
    }
    assert!(
        cluster
            .log_tail(1, 5)
            .expect("log tail")
            .contains("fake-ldr: node listening"),
        "node output is captured"
    );

    // Why: kill is a crash: the process is gone at once and SQL to it fails.
    let pid2 = cluster.node_info(2).expect("info").pid.expect("pid");
    cluster.kill(2).expect("kill node 2");
    assert!(!pid_alive(pid2), "node 2 (pid {pid2}) survived SIGKILL");
    assert!(
        select_one(&cluster.url(2).expect("url")).await.is_err(),
        "SQL reached a killed node"
    );
    assert!(!cluster.node_info(2).expect("info").running);

    // Why: restart reuses the store and ports (the fake counts starts in its store).
    cluster.restart(2).await.expect("restart node 2");
    assert_eq!(select_one(&cluster.url(2).expect("url")).await, Ok(1));
    let metrics = cluster.metrics(2).await.expect("metrics");
    assert_eq!(
        metrics.counter("ldr_fake_starts"),
        Some(2.0),
        "restart must reuse the same store"
    );

    // Why: a paused node keeps its sockets but answers nothing; resume brings it back.
    cluster.pause(3).expect("pause node 3");
    assert!(cluster.node_info(3).expect("info").paused);
    let paused = ldr_sim::http_get(
        cluster.node_info(3).expect("info").http_addr,
        "/health",
        Duration::from_millis(500),
    )
    .await;
    assert!(
        matches!(paused, Err(SimError::Timeout { .. })),
        "a SIGSTOPped node answered: {paused:?}"
    );
    cluster.resume(3).expect("resume node 3");
    cluster
        .wait_ready(3)
        .await
        .expect("node 3 ready after resume");

    // Why: clock skew is a restart with LDR_CLOCK_OFFSET_NS set for that node only.
    cluster
        .set_clock_offset(1, 250_000_000)
        .await
        .expect("skew node 1");
    assert_eq!(
        cluster
            .metrics(1)
            .await
            .expect("metrics")
            .sum("ldr_fake_clock_offset_ns"),
        Some(250_000_000.0)
    );
    assert_eq!(
        cluster
            .metrics(2)
            .await
            .expect("metrics")
            .sum("ldr_fake_clock_offset_ns"),
        Some(0.0)
    );
    assert_eq!(
        cluster.node_info(1).expect("info").clock_offset_ns,
        250_000_000
    );

    // Why: cutting the proxies isolates the advertised (inter-cluster) address only.
    cluster.set_fault(Fault::Cut).expect("cut");
    assert!(
        select_one(&cluster.external_url(1).expect("url"))
            .await
            .is_err(),
        "SQL crossed a cut proxy"
    );
    assert_eq!(
        select_one(&cluster.url(1).expect("url")).await,
        Ok(1),
        "direct path must be unaffected"
    );
    cluster.set_fault(Fault::Pass).expect("heal");
    assert_eq!(
        select_one(&cluster.external_url(1).expect("url")).await,
        Ok(1)
    );

    // Why: dropping the cluster kills every node and removes its directory.
    let pids: Vec<u32> = cluster.nodes().iter().filter_map(|n| n.pid).collect();
    assert_eq!(pids.len(), 3);
    let dir = cluster.dir().to_path_buf();
    drop(cluster);
    for pid in pids {
        assert!(!pid_alive(pid), "node pid {pid} survived the cluster drop");
    }
    assert!(!dir.exists(), "cluster dir {} left behind", dir.display());
}

#[tokio::test]
async fn a_node_that_exits_fails_start_with_its_log() {
    let spec = ClusterSpec::with_binary("broken", 2, fake_ldr())
        .env("FAKE_LDR_FAIL", "disk on fire")
        .env("FAKE_LDR_BACKEND", "127.0.0.1:1")
        .ready_timeout(WAIT);
    let err = Cluster::start(spec)
        .await
        .expect_err("a failing node must fail the start");
    let text = err.to_string();
    // Why: the report must say which node, where its log is, and what it printed.
    assert!(
        text.contains("disk on fire"),
        "log tail missing from: {text}"
    );
    assert!(text.contains("node.log"), "log path missing from: {text}");
    assert!(
        text.contains("exited with"),
        "exit status missing from: {text}"
    );
}

#[tokio::test]
async fn missing_binary_is_a_clear_error() {
    let spec = ClusterSpec::with_binary("none", 1, "/nonexistent/ldr");
    let err = Cluster::start(spec).await.expect_err("no binary");
    assert!(matches!(err, SimError::BinaryNotFound { .. }), "{err}");
}

/// Runs only inside the child process started by `children_die_with_the_harness_process`:
/// spawns a long sleep through the harness, prints its pid, and exits without running any
/// destructor, as a killed test process would.
#[test]
fn orphan_helper_noop_unless_env() {
    if std::env::var_os("LDR_SIM_ORPHAN_HELPER").is_none() {
        return;
    }
    let mut command = std::process::Command::new("sleep");
    command.arg("600");
    let process = ManagedProcess::spawn("orphan", command, SpawnOptions::default()).expect("spawn");
    println!("ORPHAN_PID={}", process.pid());
    std::mem::forget(process);
    std::process::exit(0);
}

#[tokio::test]
async fn children_die_with_the_harness_process() {
    let exe = std::env::current_exe().expect("current exe");
    let output = std::process::Command::new(exe)
        .args([
            "--exact",
            "orphan_helper_noop_unless_env",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("LDR_SIM_ORPHAN_HELPER", "1")
        .output()
        .expect("run the helper process");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let pid: u32 = stdout
        .lines()
        .find_map(|l| {
            l.split_once("ORPHAN_PID=")
                .map(|(_, pid)| pid.trim().to_string())
        })
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "helper printed no pid; stdout: {stdout}; stderr: {}",
                String::from_utf8_lossy(&output.stderr)
            )
        });
    // Why: PR_SET_PDEATHSIG must kill the child although no destructor ran in its parent.
    wait_pid_gone(pid).await;
}

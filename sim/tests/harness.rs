//! The cluster harness, end to end, on real `ldr` nodes (build the binary first:
//! `cargo build -p ldr-cli`, or point `LDR_BIN` at it): start and readiness, kill (-9),
//! restart on the same store, pause/resume (SIGSTOP), clock skew, the fault proxies in front
//! of the advertised SQL addresses, failure reports with the node log, and cleanup.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ldr_sim::process::{ManagedProcess, SpawnOptions};
use ldr_sim::{Cluster, ClusterSpec, Fault, SimError};

const WAIT: Duration = Duration::from_secs(60);

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

/// ldr's node id of harness node `node` (ids follow join order, not the harness's numbering).
async fn node_id(cluster: &Cluster, node: usize) -> String {
    let rows = cluster
        .query_text(node, "SELECT crdb_internal.node_id()")
        .await
        .unwrap_or_else(|e| panic!("node id of node {node}: {e}"));
    rows.rows[0][0].clone().unwrap_or_default()
}

async fn count_rows(cluster: &Cluster, node: usize) -> i64 {
    let rows = cluster
        .query(node, "SELECT count(*) FROM t")
        .await
        .unwrap_or_else(|e| panic!("count through node {node}: {e}"));
    rows[0].get(0)
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_lifecycle_with_real_nodes() {
    let spec = ClusterSpec::new("life", 3)
        .expect("the ldr binary (cargo build -p ldr-cli, or LDR_BIN)")
        .proxied(true)
        .ready_timeout(WAIT);

    // Why: start returns only when every node is ready, so SQL works at once on all of them,
    // directly and through each node's proxy.
    let cluster = Cluster::start(spec).await.expect("start the cluster");
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
    let log = cluster.log_tail(1, 200).expect("log tail");
    assert!(log.contains("node ready"), "node output is captured: {log}");
    assert!(!log.contains('\u{1b}'), "log files are plain text: {log}");

    // Rows on every node's ranges (a table has several ranges per node), to prove below that a
    // restarted node serves its old store.
    let values: Vec<String> = (1..=30).map(|i| format!("({i}, 'v{i}')")).collect();
    cluster
        .exec(
            1,
            &format!(
                "CREATE TABLE t (k INT8 PRIMARY KEY, v STRING); INSERT INTO t VALUES {}",
                values.join(", ")
            ),
        )
        .await
        .expect("seed rows");
    let counted = count_rows(&cluster, 1).await;
    assert_eq!(counted, 30);

    let node_id_of_2 = node_id(&cluster, 2).await;

    // Why: kill is a crash: the process is gone at once and SQL to it fails.
    let pid2 = cluster.node_info(2).expect("info").pid.expect("pid");
    cluster.kill(2).expect("kill node 2");
    assert!(!pid_alive(pid2), "node 2 (pid {pid2}) survived SIGKILL");
    assert!(
        select_one(&cluster.url(2).expect("url")).await.is_err(),
        "SQL reached a killed node"
    );
    assert!(!cluster.node_info(2).expect("info").running);

    // Why: restart reuses the store, identity and ports: node 2 is node 2 again and every row,
    // those on its own ranges included, is readable through it.
    cluster.restart(2).await.expect("restart node 2");
    assert_eq!(cluster.node_info(2).expect("info").starts, 2);
    assert_eq!(
        node_id(&cluster, 2).await,
        node_id_of_2,
        "restarted node kept its identity"
    );
    assert_eq!(
        count_rows(&cluster, 2).await,
        30,
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

    // Why: clock skew restarts the node with LDR_CLOCK_OFFSET_NS, and its HLC then reads at
    // least its shifted physical clock.
    let offset_ns: i64 = 250_000_000;
    cluster
        .set_clock_offset(1, offset_ns)
        .await
        .expect("skew node 1");
    assert_eq!(
        cluster.node_info(1).expect("info").clock_offset_ns,
        offset_ns
    );
    let before_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos() as u64;
    let hlc = ldr_sim::ldr::cluster_logical_timestamp(&cluster, 1)
        .await
        .expect("cluster_logical_timestamp");
    assert!(
        hlc.wall_time_ns >= before_ns + offset_ns as u64 - 10_000_000,
        "node 1's clock is not shifted: hlc {hlc}, wall clock before the query {before_ns}"
    );
    assert!(
        cluster
            .log_tail(1, 400)
            .expect("log")
            .contains("offset_ns=250000000"),
        "the node did not report its clock offset"
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
    // `ldr start` rejects an unknown flag and exits at once.
    let spec = ClusterSpec::new("broken", 2)
        .expect("the ldr binary")
        .start_arg("--no-such-flag")
        .ready_timeout(WAIT);
    let err = Cluster::start(spec)
        .await
        .expect_err("a failing node must fail the start");
    let text = err.to_string();
    // Why: the report must say which node, where its log is, and what it printed.
    assert!(
        text.contains("--no-such-flag"),
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

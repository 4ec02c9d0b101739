//! In-process clusters for the integration tests: a single node ([`TestNode`]: KV node on a
//! temp store, bootstrapped, job registry, SQL server) or several ([`start_cluster`]).
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use ldr_kv::{KvNode, NodeConfig};
use ldr_sql::exec::{QueryResult, Session, SqlConfig, SqlServer};
use ldr_sql::{Datum, SqlError};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

pub struct TestNode {
    pub node: Arc<KvNode>,
    pub server: Arc<SqlServer>,
    _dir: tempfile::TempDir,
}

impl TestNode {
    pub async fn start() -> TestNode {
        Self::start_with(SqlConfig::default()).await
    }

    pub async fn start_with(config: SqlConfig) -> TestNode {
        let dir = tempfile::tempdir().expect("temp dir");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("bound").to_string();
        let node = KvNode::start(NodeConfig {
            store_dir: dir.path().to_path_buf(),
            listen_addr: address,
            advertise_addr: None,
            advertise_sql_addr: None,
            http_addr: "127.0.0.1:0".into(),
            join: vec![],
            cluster_name: None,
            max_clock_offset: Duration::from_millis(500),
        })
        .await
        .expect("node starts");
        let service = node.grpc_service();
        let raft = node.raft_service();
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .add_service(raft)
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await;
        });
        node.bootstrap().await.expect("bootstrap");
        node.wait_initialized().await.expect("initialized");
        let kv = node.client();
        let jobs = ldr_jobs::Registry::start(kv.clone());
        let server = SqlServer::start(kv, jobs, config)
            .await
            .expect("sql server starts");
        TestNode {
            node,
            server,
            _dir: dir,
        }
    }

    pub async fn session(&self) -> Session {
        self.server
            .session("root", "defaultdb")
            .await
            .expect("root session")
    }
}

/// Runs SQL, panicking on error; returns the last statement's result.
pub async fn exec(s: &mut Session, sql: &str) -> QueryResult {
    let mut out = s.execute(sql).await;
    let last = out.pop().expect("at least one statement");
    for r in out {
        if let Err(e) = r {
            panic!("{sql}: {} {}", e.code(), e.message());
        }
    }
    match last {
        Ok(r) => r,
        Err(e) => panic!("{sql}: {} {} {:?}", e.code(), e.message(), e.detail()),
    }
}

/// Runs SQL expecting an error; returns it.
pub async fn exec_err(s: &mut Session, sql: &str) -> SqlError {
    for r in s.execute(sql).await {
        if let Err(e) = r {
            return e;
        }
    }
    panic!("{sql}: expected an error");
}

/// The rows of a query as text (NULL as "NULL").
pub async fn rows(s: &mut Session, sql: &str) -> Vec<Vec<String>> {
    let tz = s.vars.tz_offset_secs;
    let result = exec(s, sql).await;
    result
        .rows
        .iter()
        .map(|r| {
            r.iter()
                .map(|d| d.to_text(tz).unwrap_or_else(|| "NULL".into()))
                .collect()
        })
        .collect()
}

pub async fn one(s: &mut Session, sql: &str) -> Datum {
    let r = exec(s, sql).await;
    assert_eq!(r.rows.len(), 1, "{sql}: expected one row, got {:?}", r.rows);
    r.rows[0][0].clone()
}

/// How long a cluster may take to form.
const CLUSTER_DEADLINE: Duration = Duration::from_secs(60);

/// `n` in-process nodes of one cluster (every node live), each with its own SQL server.
pub async fn start_cluster(n: usize) -> (Vec<Arc<KvNode>>, Vec<Arc<SqlServer>>, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut listeners = Vec::new();
    for _ in 0..n {
        listeners.push(TcpListener::bind("127.0.0.1:0").await.expect("bind"));
    }
    let addresses: Vec<String> = listeners
        .iter()
        .map(|l| l.local_addr().expect("bound").to_string())
        .collect();
    let mut nodes = Vec::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        let node = KvNode::start(NodeConfig {
            store_dir: dir.path().join(format!("n{i}")),
            listen_addr: addresses[i].clone(),
            advertise_addr: None,
            advertise_sql_addr: None,
            http_addr: "127.0.0.1:0".into(),
            join: addresses.clone(),
            cluster_name: None,
            max_clock_offset: Duration::from_millis(500),
        })
        .await
        .expect("node starts");
        let service = node.grpc_service();
        let raft = node.raft_service();
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .add_service(raft)
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await;
        });
        nodes.push(node);
    }
    ldr_kv::bootstrap_remote(&addresses[0])
        .await
        .expect("bootstrap");
    for node in &nodes {
        tokio::time::timeout(CLUSTER_DEADLINE, node.wait_initialized())
            .await
            .expect("joins in time")
            .expect("initialized");
    }
    // Every node live before tables are created (their ranges spread over live nodes).
    let client = nodes[0].client();
    let deadline = std::time::Instant::now() + CLUSTER_DEADLINE;
    loop {
        let live = client
            .nodes()
            .await
            .map(|s| s.iter().filter(|s| s.is_live).count())
            .unwrap_or(0);
        if live == n {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "only {live} of {n} nodes live"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The system range starts on node 1 alone; the replicate queue adds the others.
    loop {
        let voters = client.local_replica_status(1).map_or(0, |s| s.voters.len());
        if voters == n.min(3) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the system range has {voters} voters"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Start the SQL servers concurrently: their bootstraps race on the same objects.
    let starts = nodes.iter().map(|node| {
        let kv = node.client();
        async move {
            let jobs = ldr_jobs::Registry::start(kv.clone());
            SqlServer::start(kv, jobs, SqlConfig::default())
                .await
                .expect("sql server starts")
        }
    });
    let servers = futures::future::join_all(starts).await;
    (nodes, servers, dir)
}

/// Serves pgwire for `server` on an ephemeral 127.0.0.1 port (as the node's listener does for
/// SQL connections) and returns the port.
pub async fn listen(server: Arc<SqlServer>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("bound").port();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let server = server.clone();
            tokio::spawn(async move {
                let _ = ldr_sql::protocol::serve_connection(socket, server).await;
            });
        }
    });
    port
}

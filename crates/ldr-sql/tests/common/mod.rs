//! In-process clusters for the integration tests: a single node ([`TestNode`]: KV node on a
//! temp store, bootstrapped, job registry, SQL server) or several ([`start_cluster`]).
#![allow(dead_code)]

use std::sync::Arc;

use ldr_kv::KvNode;
use ldr_sql::exec::{QueryResult, Session, SqlConfig, SqlServer};
use ldr_sql::{Datum, SqlError};
use tokio::net::TcpListener;

pub struct TestNode {
    pub node: Arc<KvNode>,
    pub server: Arc<SqlServer>,
    _kv_node: ldr_testkit::TestNode,
    _dir: tempfile::TempDir,
}

impl TestNode {
    pub async fn start() -> TestNode {
        Self::start_with(SqlConfig::default()).await
    }

    pub async fn start_with(config: SqlConfig) -> TestNode {
        let dir = tempfile::tempdir().expect("temp dir");
        let kv_node = ldr_testkit::TestNode::start_bootstrapped(dir.path().to_path_buf()).await;
        let node = kv_node.node.clone();
        let kv = node.client();
        let jobs = ldr_jobs::Registry::start(kv.clone());
        let server = SqlServer::start(kv, jobs, config)
            .await
            .expect("sql server starts");
        TestNode {
            node,
            server,
            _kv_node: kv_node,
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

/// `n` in-process nodes of one cluster (every node live), each with its own SQL server.
pub async fn start_cluster(n: usize) -> (ldr_testkit::TestCluster, Vec<Arc<SqlServer>>) {
    let cluster = ldr_testkit::TestCluster::start(n).await;
    // Start the SQL servers concurrently: their bootstraps race on the same objects.
    let starts = cluster.nodes.iter().map(|node| {
        let kv = node.client();
        async move {
            let jobs = ldr_jobs::Registry::start(kv.clone());
            SqlServer::start(kv, jobs, SqlConfig::default())
                .await
                .expect("sql server starts")
        }
    });
    let servers = futures::future::join_all(starts).await;
    (cluster, servers)
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

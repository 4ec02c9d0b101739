//! Test support for the crates' integration tests (a dev-dependency only):
//! - [`eventually`]: poll a condition until it holds, failing the test after a deadline;
//! - [`TestNode`]: one `KvNode` with its own store and gRPC server on a 127.0.0.1 ephemeral
//!   port, which can be stopped and restarted on the same store;
//! - [`TestCluster`]: `n` such nodes joined through `--join`, bootstrapped through the
//!   `Kv.Bootstrap` RPC (as `ldr init` does), every node live and the system range on up to
//!   three of them.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ldr_kv::{KvClient, KvError, KvNode, NodeConfig};
use ldr_types::NodeId;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;

/// How long a test waits for a condition: generous, the suites run on a loaded 2-core
/// machine.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Polls `f` until it returns `Some`, failing the test after [`DEADLINE`].
pub async fn eventually<T, F, Fut>(what: &str, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    eventually_within(what, DEADLINE, f).await
}

/// Polls `f` every 50 ms until it returns `Some`, failing the test after `deadline`.
pub async fn eventually_within<T, F, Fut>(what: &str, deadline: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = tokio::time::Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A node's configuration for tests: its store, its listen address, whom it joins.
pub fn node_config(store_dir: &Path, listen_addr: &str, join: Vec<String>) -> NodeConfig {
    NodeConfig {
        store_dir: store_dir.to_path_buf(),
        listen_addr: listen_addr.to_string(),
        advertise_addr: None,
        advertise_sql_addr: None,
        http_addr: "127.0.0.1:0".to_string(),
        join,
        cluster_name: None,
        max_clock_offset: Duration::from_millis(500),
    }
}

/// One node and the gRPC server in front of it.
pub struct TestNode {
    pub node: Arc<KvNode>,
    pub address: String,
    dir: PathBuf,
    join: Vec<String>,
    server: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
}

impl TestNode {
    /// Starts a node on `dir` serving on `listener`, joining `join` (not initialized: see
    /// [`TestNode::start_bootstrapped`] and [`TestCluster::start`]). A previous incarnation
    /// may still be releasing the store's lock: opening is retried until [`DEADLINE`].
    pub async fn start(dir: PathBuf, listener: TcpListener, join: Vec<String>) -> TestNode {
        let address = listener.local_addr().expect("bound").to_string();
        let config = node_config(&dir, &address, join.clone());
        let node = eventually("the store to open", || {
            let config = config.clone();
            async move {
                match KvNode::start(config).await {
                    Ok(n) => Some(n),
                    Err(e) => {
                        eprintln!("start failed (retrying): {e}");
                        None
                    }
                }
            }
        })
        .await;
        let service = node.grpc_service();
        let raft = node.raft_service();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(async move {
            let served = tonic::transport::Server::builder()
                .add_service(service)
                .add_service(raft)
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = stop_rx.await;
                })
                .await;
            if let Err(e) = served {
                eprintln!("test server failed: {e}");
            }
        });
        TestNode {
            node,
            address,
            dir,
            join,
            server: Some((stop_tx, handle)),
        }
    }

    /// A one-node cluster on `dir`: started on an ephemeral port and bootstrapped in process.
    pub async fn start_bootstrapped(dir: PathBuf) -> TestNode {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let node = TestNode::start(dir, listener, vec![]).await;
        node.node.bootstrap().await.expect("bootstrap");
        tokio::time::timeout(DEADLINE, node.node.wait_initialized())
            .await
            .expect("initialized in time")
            .expect("initialized");
        node
    }

    pub fn client(&self) -> KvClient {
        self.node.client()
    }

    pub fn node_id(&self) -> NodeId {
        self.client().node_id()
    }

    /// Stops the node and its server, closing the store.
    pub async fn stop(&mut self) {
        self.node.stop().await;
        if let Some((tx, handle)) = self.server.take() {
            let _ = tx.send(());
            let _ = tokio::time::timeout(DEADLINE, handle).await;
        }
    }

    /// Starts a new incarnation on the same store and address.
    pub async fn restart(mut self) -> TestNode {
        self.stop().await;
        let TestNode {
            node,
            address,
            dir,
            join,
            ..
        } = self;
        drop(node);
        let listener = eventually("the port to be free again", || {
            let address = address.clone();
            async move { TcpListener::bind(&address).await.ok() }
        })
        .await;
        TestNode::start(dir, listener, join).await
    }

    /// Starts a new incarnation on the same store, listening on a new port.
    pub async fn restart_elsewhere(mut self) -> TestNode {
        self.stop().await;
        let TestNode {
            node, dir, join, ..
        } = self;
        drop(node);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        TestNode::start(dir, listener, join).await
    }
}

/// Several nodes of one cluster in this process.
pub struct TestCluster {
    /// `nodes[i]` is node `i + 1`.
    pub nodes: Vec<TestNode>,
    dir: tempfile::TempDir,
}

impl TestCluster {
    /// Starts `n` nodes that all list each other in `--join`, bootstraps the first through
    /// the `Kv.Bootstrap` RPC (as `ldr init` does), and waits until every node is live and
    /// the system range has a voter on up to three of them.
    pub async fn start(n: usize) -> TestCluster {
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
            let store = dir.path().join(format!("n{i}"));
            nodes.push(TestNode::start(store, listener, addresses.clone()).await);
        }
        // Nodes started before `ldr init` wait (and keep retrying their joins).
        assert!(matches!(
            nodes[0].client().sys_get("x", b"y").await,
            Err(KvError::NotInitialized)
        ));
        let cluster_id = ldr_kv::bootstrap_remote(&addresses[0])
            .await
            .expect("bootstrap over rpc");
        for node in &nodes {
            tokio::time::timeout(DEADLINE, node.node.wait_initialized())
                .await
                .expect("every node joins in time")
                .expect("initialized");
            assert_eq!(node.client().cluster_id(), cluster_id);
        }
        nodes.sort_by_key(|n| n.node_id());
        let ids: Vec<NodeId> = nodes.iter().map(|n| n.node_id()).collect();
        assert_eq!(
            ids,
            (1..=n as NodeId).collect::<Vec<_>>(),
            "node ids are dense from 1"
        );
        let cluster = TestCluster { nodes, dir };
        cluster.wait_all_live().await;
        cluster.wait_system_replicated().await;
        cluster
    }

    /// The directory holding every node's store.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn node(&self, node_id: NodeId) -> &TestNode {
        &self.nodes[node_id as usize - 1]
    }

    pub fn client(&self, node_id: NodeId) -> KvClient {
        self.node(node_id).client()
    }

    /// Waits until node 1 sees every node of this cluster live.
    pub async fn wait_all_live(&self) {
        let client = self.client(1);
        let n = self.nodes.len();
        eventually("every node to be live", || {
            let client = client.clone();
            async move {
                let nodes = client.nodes().await.ok()?;
                (nodes.iter().filter(|s| s.is_live).count() == n).then_some(())
            }
        })
        .await;
    }

    /// Waits until the system range has a voter on every node (up to three): it starts on
    /// node 1 alone and the replicate queue adds the nodes that joined.
    pub async fn wait_system_replicated(&self) {
        let want = self.nodes.len().min(3);
        let client = self.client(1);
        eventually("the system range to be replicated", || {
            let client = client.clone();
            async move {
                let status = client.local_replica_status(1)?;
                (status.voters.len() == want).then_some(())
            }
        })
        .await;
    }
}

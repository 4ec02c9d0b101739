//! Idle ranges over the real gRPC transport (127.0.0.1): every node heartbeats all the ranges
//! it leads at once, so an idle node ships its heartbeats to a peer in a few batches per
//! interval, not in one RPC per range; and the leases those heartbeats keep stay valid.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ldr_replica::grpc::{GrpcTransport, RaftService, ServiceSlot};
use ldr_replica::{LeaseStatus, RaftNodeId, ReplicaNode, ReplicaStore, StoreOptions};
use ldr_storage::{Engine, EngineOptions};
use ldr_types::{Clock, Span};
use tokio_stream::wrappers::TcpListenerStream;

const NODES: [RaftNodeId; 3] = [1, 2, 3];
const RANGES: u64 = 24;
const WAIT: Duration = Duration::from_secs(30);
const CLUSTER: &str = "heartbeats-test";

struct Node {
    _dir: tempfile::TempDir,
    store: Arc<ReplicaStore>,
    transport: Arc<GrpcTransport>,
    server: tokio::task::JoinHandle<()>,
}

fn options() -> StoreOptions {
    StoreOptions {
        sync_log: false,
        heartbeat_interval: Duration::from_millis(100),
        election_timeout_min: Duration::from_millis(800),
        election_timeout_max: Duration::from_millis(1600),
        lease: Duration::from_millis(500),
        snapshot_logs_since_last: 10_000,
    }
}

fn span_of(range: u64) -> Span {
    Span::new(vec![b'r', range as u8], vec![b'r', range as u8 + 1])
}

/// Starts one node: its engine, its Raft service on a fresh 127.0.0.1 port, its store.
async fn start_node(id: RaftNodeId, listener: tokio::net::TcpListener) -> Node {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Engine::open(
        dir.path(),
        Arc::new(Clock::default()),
        EngineOptions::default(),
    )
    .expect("open engine");
    let slot: ServiceSlot = Arc::default();
    let server = tokio::spawn({
        let slot = slot.clone();
        async move {
            let _ = tonic::transport::Server::builder()
                .add_service(RaftService::new(slot))
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await;
        }
    });
    let transport = GrpcTransport::new(id, CLUSTER);
    let store = ReplicaStore::open(id, engine, transport.clone(), options())
        .await
        .expect("open store");
    assert!(slot.set((store.clone(), CLUSTER.to_string())).is_ok());
    Node {
        _dir: dir,
        store,
        transport,
        server,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_ranges_share_heartbeat_batches_and_keep_their_leases() {
    // Three nodes on real ports, RANGES ranges replicated on all three, leaders spread by
    // bootstrapping each range on a different node.
    let mut listeners = Vec::new();
    let mut members = BTreeMap::new();
    for id in NODES {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address").to_string();
        members.insert(id, ReplicaNode::new(address));
        listeners.push(listener);
    }
    let mut nodes = Vec::new();
    for (id, listener) in NODES.into_iter().zip(listeners) {
        nodes.push(start_node(id, listener).await);
    }
    for range in 0..RANGES {
        for node in &nodes {
            node.store
                .create_replica(range, span_of(range))
                .await
                .expect("create replica");
        }
        nodes[range as usize % nodes.len()]
            .store
            .bootstrap(range, members.clone())
            .await
            .expect("bootstrap");
    }

    // Every range gets a leaseholder (elections and the first appends are not idle traffic).
    let deadline = Instant::now() + WAIT;
    loop {
        let held = (0..RANGES)
            .filter(|&r| {
                nodes.iter().any(|n| {
                    n.store
                        .replica(r)
                        .is_some_and(|rep| rep.lease_status() == LeaseStatus::Valid)
                })
            })
            .count();
        if held == RANGES as usize {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {held} of {RANGES} ranges have a leaseholder after {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Idle: wait until the cluster shipped 20 heartbeat rounds' worth of messages (every
    // range's leader to its two followers, 20 times), then count the batches that carried
    // them. One RPC per range would make messages / batches about 1; batched rounds make it
    // about RANGES / 3 (the leaders one node holds, per peer).
    let sent = |nodes: &[Node]| {
        nodes.iter().fold((0, 0), |(b, m), n| {
            let (nb, nm) = n.transport.stats().sent();
            (b + nb, m + nm)
        })
    };
    let (batches_before, messages_before) = sent(&nodes);
    let round_messages = RANGES * 2;
    let deadline = Instant::now() + WAIT;
    let (batches, messages) = loop {
        let (b, m) = sent(&nodes);
        if m - messages_before >= 20 * round_messages {
            break (b - batches_before, m - messages_before);
        }
        assert!(
            Instant::now() < deadline,
            "only {} messages in {WAIT:?}",
            m - messages_before
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let per_batch = messages as f64 / batches as f64;
    assert!(
        per_batch >= 3.0,
        "idle heartbeats travel {per_batch:.1} messages per batch ({messages} messages in \
         {batches} batches); expected the heartbeats of a node's ranges to share batches"
    );

    // Leases stay exclusive: no range has two leaseholders.
    for range in 0..RANGES {
        let holders = nodes
            .iter()
            .filter(|n| {
                n.store
                    .replica(range)
                    .is_some_and(|r| r.lease_status() == LeaseStatus::Valid)
            })
            .count();
        assert!(holders <= 1, "range {range} has {holders} leaseholders");
    }
    for node in &nodes {
        node.store.shutdown().await;
        node.server.abort();
    }
}

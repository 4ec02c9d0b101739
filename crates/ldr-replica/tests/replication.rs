//! Replicated ranges through real openraft groups on real RocksDB engines, with an in-process
//! transport that can take nodes down and cut links: election, replication, lease rules,
//! failover, restart from disk, snapshots, and refusal of bad messages.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ldr_replica::{
    Command, Envelope, LeaseStatus, RaftNodeId, RaftTransport, ReplicaError, ReplicaNode,
    ReplicaStore, StoreOptions, TransportError,
};
use ldr_storage::{Condition, Engine, EngineOptions, RowWrite, ValueHeader};
use ldr_types::{Clock, Span};
use parking_lot::Mutex;

const RANGE: u64 = 7;
const WAIT: Duration = Duration::from_secs(20);

/// Delivers messages in-process; nodes can be down and links cut.
#[derive(Default)]
struct Router {
    stores: Mutex<HashMap<RaftNodeId, Arc<ReplicaStore>>>,
    down: Mutex<HashSet<RaftNodeId>>,
    cut: Mutex<HashSet<(RaftNodeId, RaftNodeId)>>,
}

#[async_trait::async_trait]
impl RaftTransport for Router {
    async fn send(
        &self,
        to: RaftNodeId,
        _address: &str,
        envelope: Envelope,
        timeout: Duration,
    ) -> Result<Vec<u8>, TransportError> {
        let from = envelope.from;
        let unreachable = |detail: &str| TransportError::Unreachable {
            node: to,
            detail: detail.into(),
        };
        if self.down.lock().contains(&to) || self.down.lock().contains(&from) {
            return Err(unreachable("down"));
        }
        if self.cut.lock().contains(&(from, to)) || self.cut.lock().contains(&(to, from)) {
            return Err(unreachable("partitioned"));
        }
        let store = self.stores.lock().get(&to).cloned();
        let Some(store) = store else {
            return Err(unreachable("no such node"));
        };
        match tokio::time::timeout(timeout, store.handle(envelope)).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(e)) => Err(TransportError::Refused {
                node: to,
                detail: e.to_string(),
            }),
            Err(_) => Err(unreachable("timeout")),
        }
    }
}

struct Node {
    _dir: tempfile::TempDir,
    engine: Arc<Engine>,
    store: Arc<ReplicaStore>,
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

fn span() -> Span {
    Span::new(b"a".to_vec(), b"z".to_vec())
}

fn members(ids: &[RaftNodeId]) -> BTreeMap<RaftNodeId, ReplicaNode> {
    ids.iter()
        .map(|id| (*id, ReplicaNode::new(format!("node-{id}"))))
        .collect()
}

async fn start_node(router: &Arc<Router>, id: RaftNodeId, options: StoreOptions) -> Node {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = Engine::open(
        dir.path(),
        Arc::new(Clock::default()),
        EngineOptions::default(),
    )
    .expect("open engine");
    let store = ReplicaStore::open(id, engine.clone(), router.clone(), options)
        .await
        .expect("open store");
    router.stores.lock().insert(id, store.clone());
    Node {
        _dir: dir,
        engine,
        store,
    }
}

/// Starts `ids` with one range replicated on all of them, bootstrapped on the first.
async fn cluster(
    ids: &[RaftNodeId],
    options: StoreOptions,
) -> (Arc<Router>, HashMap<RaftNodeId, Node>) {
    let router = Arc::new(Router::default());
    let mut nodes = HashMap::new();
    for &id in ids {
        let node = start_node(&router, id, options.clone()).await;
        node.store
            .create_replica(RANGE, span())
            .await
            .expect("create replica");
        nodes.insert(id, node);
    }
    nodes[&ids[0]]
        .store
        .bootstrap(RANGE, members(ids))
        .await
        .expect("bootstrap");
    (router, nodes)
}

/// Waits for a leaseholder among `candidates`.
async fn leaseholder(nodes: &HashMap<RaftNodeId, Node>, candidates: &[RaftNodeId]) -> RaftNodeId {
    let deadline = Instant::now() + WAIT;
    loop {
        for id in candidates {
            let replica = nodes[id].store.replica(RANGE).expect("replica");
            if replica.lease_status() == LeaseStatus::Valid {
                return *id;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no leaseholder among {candidates:?} within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn put(key: String, value: String) -> RowWrite {
    RowWrite {
        key: key.into_bytes(),
        value: Some(value.into_bytes()),
        condition: Condition::None,
        header: ValueHeader::default(),
        dependents: vec![],
    }
}

/// Evaluates and proposes `count` single-key writes at the leaseholder among `candidates`,
/// as the KV layer does, finding it again when the lease moves (a loaded machine can miss a
/// heartbeat); returns the last applied index. Writes are blind puts of distinct keys, so a
/// retried ambiguous one only adds a version.
async fn write(
    nodes: &HashMap<RaftNodeId, Node>,
    candidates: &[RaftNodeId],
    prefix: &str,
    count: usize,
) -> u64 {
    let mut last = 0;
    for i in 0..count {
        let deadline = Instant::now() + WAIT;
        loop {
            let node = &nodes[&leaseholder(nodes, candidates).await];
            let replica = node.store.replica(RANGE).expect("replica");
            let eval = node
                .engine
                .evaluate(
                    &[put(format!("k{prefix}{i:04}"), format!("v{i}"))],
                    true,
                    node.engine.clock().now(),
                )
                .expect("evaluate");
            let closed = node.engine.clock().now().sub_nanos(1);
            match replica.propose(Command::new(&eval.writes, closed)).await {
                Ok(index) => {
                    last = index;
                    break;
                }
                Err(e) if e.is_retryable() && Instant::now() < deadline => {
                    eprintln!("write {prefix}{i} retried: {e}");
                }
                Err(e) => panic!("write {prefix}{i}: {e}"),
            }
        }
    }
    last
}

/// The number of live keys in the range's span on `node`.
fn live_keys(node: &Node) -> usize {
    node.engine
        .scan(&span(), ldr_types::Timestamp::MAX, 0)
        .expect("scan")
        .len()
}

/// Waits until every node in `ids` applied `index`, then checks their data is identical.
async fn assert_identical(nodes: &HashMap<RaftNodeId, Node>, ids: &[RaftNodeId], index: u64) {
    for id in ids {
        let replica = nodes[id].store.replica(RANGE).expect("replica");
        assert!(
            replica.wait_applied(index, WAIT).await,
            "node {id} did not apply index {index} (at {})",
            replica.applied_index()
        );
    }
    let sums: Vec<_> = ids
        .iter()
        .map(|id| nodes[id].engine.span_checksum(&span()).expect("checksum"))
        .collect();
    assert!(
        sums.iter().all(|s| *s == sums[0]),
        "replicas differ: {sums:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_elect_a_leaseholder_and_apply_identically() {
    let ids = [1, 2, 3];
    let (_router, nodes) = cluster(&ids, options()).await;
    let leader = leaseholder(&nodes, &ids).await;
    // Followers refuse to serve and point at the leader.
    for id in ids.iter().filter(|i| **i != leader) {
        let status = nodes[id]
            .store
            .replica(RANGE)
            .expect("replica")
            .lease_status();
        assert!(
            matches!(status, LeaseStatus::NotLeaseholder { .. }),
            "{status:?}"
        );
    }
    let index = write(&nodes, &ids, "a", 50).await;
    assert_identical(&nodes, &ids, index).await;
    assert_eq!(live_keys(&nodes[&1]), 50);
    let status = nodes[&leaseholder(&nodes, &ids).await]
        .store
        .replica(RANGE)
        .expect("replica")
        .status();
    assert_eq!(status.voters, vec![1, 2, 3]);
    assert!(status.is_leaseholder);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_leaseholder_moves_the_lease_and_the_restarted_node_catches_up() {
    let ids = [1, 2, 3];
    let (router, mut nodes) = cluster(&ids, options()).await;
    let old = leaseholder(&nodes, &ids).await;
    write(&nodes, &ids, "a", 20).await;

    // Kill the leaseholder: it stops, and nothing reaches it.
    router.down.lock().insert(old);
    nodes[&old].store.shutdown().await;
    let killed_at = Instant::now();
    let rest: Vec<RaftNodeId> = ids.iter().copied().filter(|i| *i != old).collect();
    leaseholder(&nodes, &rest).await;
    let failover = killed_at.elapsed();
    assert!(
        failover < Duration::from_secs(10),
        "failover took {failover:?}"
    );
    let index = write(&nodes, &rest, "b", 20).await;
    assert_identical(&nodes, &rest, index).await;

    // Restart it on its own store: it reloads its replica and catches up from the log.
    let engine = nodes[&old].engine.clone();
    let store = ReplicaStore::open(old, engine, router.clone(), options())
        .await
        .expect("reopen");
    assert!(
        store.replica(RANGE).is_some(),
        "the replica is reloaded from disk"
    );
    router.stores.lock().insert(old, store.clone());
    nodes.get_mut(&old).expect("node").store = store;
    router.down.lock().remove(&old);
    assert_identical(&nodes, &ids, index).await;
    assert_eq!(live_keys(&nodes[&old]), 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_leaseholder_loses_its_lease_and_the_majority_goes_on() {
    let ids = [1, 2, 3];
    let (router, nodes) = cluster(&ids, options()).await;
    let old = leaseholder(&nodes, &ids).await;
    write(&nodes, &ids, "a", 5).await;
    for other in ids.iter().filter(|i| **i != old) {
        router.cut.lock().insert((old, *other));
    }
    // The minority side stops serving within the lease.
    let old_replica = nodes[&old].store.replica(RANGE).expect("replica");
    let deadline = Instant::now() + WAIT;
    while old_replica.lease_status() == LeaseStatus::Valid {
        assert!(
            Instant::now() < deadline,
            "the partitioned leader kept its lease"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A write there cannot commit.
    let eval = nodes[&old]
        .engine
        .evaluate(
            &[put("kminority".into(), "x".into())],
            true,
            nodes[&old].engine.clock().now(),
        )
        .expect("evaluate");
    let minority = tokio::time::timeout(
        Duration::from_secs(2),
        old_replica.propose(Command::new(&eval.writes, ldr_types::Timestamp::ZERO)),
    )
    .await;
    assert!(
        !matches!(minority, Ok(Ok(_))),
        "a minority committed a write: {minority:?}"
    );
    let rest: Vec<RaftNodeId> = ids.iter().copied().filter(|i| *i != old).collect();
    leaseholder(&nodes, &rest).await;
    let index = write(&nodes, &rest, "b", 10).await;
    router.cut.lock().clear();
    assert_identical(&nodes, &ids, index).await;
    assert!(
        nodes[&old]
            .engine
            .get(b"kminority", ldr_types::Timestamp::MAX)
            .expect("get")
            .is_none(),
        "the minority's write never applies"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_replica_is_built_from_a_snapshot_after_the_log_was_purged() {
    let mut opts = options();
    opts.snapshot_logs_since_last = 20;
    let ids = [1, 2, 3];
    let (router, mut nodes) = cluster(&ids, opts.clone()).await;
    let index = write(&nodes, &ids, "a", 120).await;
    assert_identical(&nodes, &ids, index).await;
    let deadline = Instant::now() + WAIT;
    let leader = leaseholder(&nodes, &ids).await;
    let replica = nodes[&leader].store.replica(RANGE).expect("replica");
    while replica.status().purged_index.is_none() {
        assert!(Instant::now() < deadline, "the leader never purged its log");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let fourth = start_node(&router, 4, opts).await;
    fourth
        .store
        .create_replica(RANGE, span())
        .await
        .expect("create");
    nodes.insert(4, fourth);
    let replica = nodes[&leaseholder(&nodes, &ids).await]
        .store
        .replica(RANGE)
        .expect("replica");
    replica
        .change_voters(members(&[4]), BTreeSet::from([1, 2, 3, 4]))
        .await
        .expect("add a voter");
    let index = write(&nodes, &ids, "b", 5).await;
    assert_identical(&nodes, &[1, 2, 3, 4], index).await;
    let status = nodes[&4].store.replica(RANGE).expect("replica").status();
    assert_eq!(status.voters, vec![1, 2, 3, 4]);
    assert_eq!(live_keys(&nodes[&4]), 125);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_for_unknown_ranges_and_corrupt_messages_are_refused() {
    let (_router, nodes) = cluster(&[1], options()).await;
    let store = &nodes[&1].store;
    let unknown = store
        .handle(Envelope {
            range_id: 99,
            from: 2,
            payload: vec![1, 2, 3, 4, 5],
            heartbeat: false,
        })
        .await;
    assert!(
        matches!(unknown, Err(ReplicaError::RangeNotFound { range_id: 99 })),
        "{unknown:?}"
    );
    let corrupt = store
        .handle(Envelope {
            range_id: RANGE,
            from: 2,
            payload: vec![0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 0],
            heartbeat: false,
        })
        .await;
    assert!(
        matches!(corrupt, Err(ReplicaError::Malformed { .. })),
        "{corrupt:?}"
    );
    // A single-replica range serves on its own (RF 1).
    leaseholder(&nodes, &[1]).await;
    let index = write(&nodes, &[1], "a", 3).await;
    assert!(index > 0);
    // Re-creating with another span is refused; the same span is idempotent.
    assert!(store.create_replica(RANGE, span()).await.is_ok());
    assert!(matches!(
        store
            .create_replica(RANGE, Span::new(b"a".to_vec(), b"b".to_vec()))
            .await,
        Err(ReplicaError::ReplicaExists { .. })
    ));
    store.remove_replica(RANGE).await.expect("remove");
    assert!(store.replica(RANGE).is_none());
    assert_eq!(
        nodes[&1]
            .engine
            .span_checksum(&span())
            .expect("sum")
            .versions,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leaseholder_waits_out_the_maximum_clock_offset() {
    // One node whose clock allows 300 ms of offset: its first lease serves only after its
    // physical clock passed the moment it took the lease plus 300 ms.
    let router = Arc::new(Router::default());
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(Clock::new(Duration::from_millis(300)));
    let engine = Engine::open(dir.path(), clock, EngineOptions::default()).expect("engine");
    let store = ReplicaStore::open(1, engine, router.clone(), options())
        .await
        .expect("store");
    router.stores.lock().insert(1, store.clone());
    let replica = store.create_replica(RANGE, span()).await.expect("create");
    store
        .bootstrap(RANGE, members(&[1]))
        .await
        .expect("bootstrap");
    let deadline = Instant::now() + WAIT;
    let mut first_starting = None;
    loop {
        match replica.lease_status() {
            LeaseStatus::Valid => break,
            LeaseStatus::Starting => {
                first_starting.get_or_insert_with(Instant::now);
            }
            LeaseStatus::NotLeaseholder { .. } => {}
        }
        assert!(Instant::now() < deadline, "the lease never became valid");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let started = first_starting.expect("the lease was starting before it was valid");
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "valid after only {:?}",
        started.elapsed()
    );
    assert!(matches!(replica.check_lease(), Ok(())));
}

/// Moves the lease while four writers keep proposing at the leaseholder, then stops the old
/// leaseholder at once (as `ldr node drain` does): every write is answered as applied or
/// refused unapplied (retryable), none is left ambiguous, and every applied one is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_transfer_under_writes_leaves_no_write_ambiguous() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let ids = [1, 2, 3];
    let (_router, nodes) = cluster(&ids, options()).await;
    let from = leaseholder(&nodes, &ids).await;
    let to = ids
        .iter()
        .copied()
        .find(|i| *i != from)
        .expect("another node");
    let replica = nodes[&from].store.replica(RANGE).expect("replica");
    let stop = Arc::new(AtomicBool::new(false));
    let applied = Arc::new(AtomicUsize::new(0));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (engine, replica) = (nodes[&from].engine.clone(), replica.clone());
            let (stop, applied) = (stop.clone(), applied.clone());
            tokio::spawn(async move {
                let mut mine = Vec::new();
                for i in 0..100_000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let key = format!("w{w}-{i:06}");
                    let eval = engine
                        .evaluate(&[put(key.clone(), "v".into())], true, engine.clock().now())
                        .expect("evaluate");
                    let closed = engine.clock().now().sub_nanos(1);
                    match replica.propose(Command::new(&eval.writes, closed)).await {
                        Ok(_) => {
                            applied.fetch_add(1, Ordering::Relaxed);
                            mine.push(key);
                        }
                        Err(e @ ReplicaError::Ambiguous { .. }) => {
                            return Err(format!("write {key}: {e}"));
                        }
                        Err(e) if e.is_retryable() => {
                            // Refused unapplied; the range moved (or is moving) away.
                            tokio::task::yield_now().await;
                        }
                        Err(e) => return Err(format!("write {key}: {e}")),
                    }
                }
                Ok(mine)
            })
        })
        .collect();
    // Writes flow before the transfer starts.
    let deadline = Instant::now() + WAIT;
    while applied.load(Ordering::Relaxed) < 50 {
        assert!(Instant::now() < deadline, "writes did not start");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        replica
            .begin_lease_transfer(to, Duration::from_secs(2), Duration::from_secs(3))
            .await
            .expect("begin transfer"),
        "node {to} did not catch up"
    );
    let target = nodes[&to].store.replica(RANGE).expect("replica");
    target.campaign().await.expect("campaign");
    while replica.is_leader() {
        assert!(Instant::now() < deadline, "the old leaseholder still leads");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    replica.end_lease_transfer();
    nodes[&from].store.shutdown().await;
    stop.store(true, Ordering::Relaxed);
    let mut written = Vec::new();
    for writer in writers {
        written.extend(
            writer
                .await
                .expect("writer task")
                .expect("no ambiguous write"),
        );
    }
    // Every write answered as applied is on the new leaseholder.
    let survivors: Vec<RaftNodeId> = ids.iter().copied().filter(|i| *i != from).collect();
    let index = write(&nodes, &survivors, "after", 1).await;
    assert!(target.wait_applied(index, WAIT).await);
    let now = nodes[&to].engine.clock().now();
    for key in &written {
        assert!(
            nodes[&to]
                .engine
                .get(key.as_bytes(), now)
                .expect("get")
                .is_some(),
            "{key} was answered as applied but is missing"
        );
    }
}

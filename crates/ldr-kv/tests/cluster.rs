//! Multi-node tests of the cluster layer: three `KvNode`s in one process, each with its own
//! store and gRPC server on a 127.0.0.1 ephemeral port, bootstrapped through the `Kv.Bootstrap`
//! RPC (`ldr init`) and joined through `--join` addresses.

use std::sync::Arc;
use std::time::Duration;

use ldr_kv::{
    Condition, KvClient, KvError, PtsRecord, RangeDescriptor, RowOutcome, RowWrite, ValueHeader,
};
use ldr_testkit::{DEADLINE, TestCluster, eventually};
use ldr_types::{NodeId, TableId, keys};

/// The primary index key of `pk` in a table with `shard_count` shards.
fn row_key(table_id: TableId, shard_count: u16, pk: &[u8]) -> Vec<u8> {
    let mut key = keys::index_prefix(table_id, keys::shard_for(pk, shard_count), 1);
    key.extend_from_slice(pk);
    key
}

fn insert(key: Vec<u8>, value: &[u8]) -> RowWrite {
    RowWrite {
        key,
        value: Some(value.to_vec()),
        condition: Condition::Expect(None),
        header: ValueHeader::default(),
        dependents: Vec::new(),
    }
}

fn put(key: Vec<u8>, value: &[u8]) -> RowWrite {
    RowWrite {
        condition: Condition::None,
        ..insert(key, value)
    }
}

fn owner_of(ranges: &[RangeDescriptor], key: &[u8]) -> NodeId {
    ranges
        .iter()
        .find(|r| r.span.contains_key(key))
        .expect("a range holds every key")
        .node_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_written_through_one_node_are_read_through_another() {
    let cluster = TestCluster::start(3).await;
    let (n1, n3) = (cluster.client(1), cluster.client(3));

    // A new table gets three shards per live node, spread over every node.
    let table: TableId = 104;
    let ranges = n1
        .create_table_ranges(table, None)
        .await
        .expect("create ranges");
    assert_eq!(ranges.len(), 9);
    for node in 1..=3 {
        assert_eq!(
            ranges.iter().filter(|r| r.node_id == node).count(),
            3,
            "node {node} owns three shards"
        );
    }
    assert_eq!(
        n3.table_ranges(table).await.expect("visible from node 3"),
        ranges
    );
    assert_eq!(
        n1.create_table_ranges(table, None)
            .await
            .expect("idempotent"),
        ranges
    );

    // 3,000 rows written through node 1 land in their shards' owners.
    let shard_count = ranges.len() as u16;
    let rows: Vec<RowWrite> = (0..3000u32)
        .map(|i| {
            insert(
                row_key(table, shard_count, &i.to_be_bytes()),
                format!("v{i}").as_bytes(),
            )
        })
        .collect();
    let outcomes = n1
        .write(rows.clone(), false)
        .await
        .expect("write 3000 rows");
    assert_eq!(outcomes.len(), 3000);
    assert!(
        outcomes
            .iter()
            .all(|(ts, o)| matches!(o, RowOutcome::Written { prev: None }) && !ts.is_zero())
    );

    // Node 3 reads them all back, in key order, across the nine ranges.
    let all = n3
        .scan(&keys::table_span(table), None, 0)
        .await
        .expect("scan from node 3");
    assert_eq!(all.len(), 3000);
    assert!(
        all.windows(2).all(|w| w[0].key < w[1].key),
        "scan merges ranges in key order"
    );
    let limited = n3
        .scan(&keys::table_span(table), None, 10)
        .await
        .expect("limited scan");
    assert_eq!(
        limited.iter().map(|kv| &kv.key).collect::<Vec<_>>(),
        all[..10].iter().map(|kv| &kv.key).collect::<Vec<_>>()
    );
    for i in [0u32, 1234, 2999] {
        let key = row_key(table, shard_count, &i.to_be_bytes());
        let v = n3.get(&key, None).await.expect("get").expect("present");
        assert_eq!(v.value.as_deref(), Some(format!("v{i}").as_bytes()));
        assert_eq!(
            n3.range_for_key(&key).await.expect("routed").node_id,
            owner_of(&ranges, &key)
        );
    }

    // Outcomes come back in input order, whatever the grouping by range.
    let mixed: Vec<RowWrite> = (2990..3010u32)
        .map(|i| insert(row_key(table, shard_count, &i.to_be_bytes()), b"again"))
        .collect();
    let outcomes = n3.write(mixed, false).await.expect("mixed write");
    for (i, (_, o)) in (2990..3010u32).zip(&outcomes) {
        if i < 3000 {
            assert!(
                matches!(o, RowOutcome::ConditionFailed { actual: Some(_) }),
                "row {i} exists: {o:?}"
            );
        } else {
            assert!(
                matches!(o, RowOutcome::Written { .. }),
                "row {i} is new: {o:?}"
            );
        }
    }

    // A read at an old timestamp sees the old state; commit timestamps order the writes.
    let before = outcomes[0].0;
    let k = row_key(table, shard_count, &3005u32.to_be_bytes());
    assert_eq!(
        n1.get(&k, Some(before.prev())).await.expect("old read"),
        None
    );

    // A dependent outside its row's range is refused before anything is written.
    let mut bad = put(row_key(table, shard_count, b"dep"), b"x");
    let other_shard = (keys::shard_for(b"dep", shard_count) + 1) % shard_count;
    bad.dependents
        .push((keys::index_prefix(table, other_shard, 2), Some(Vec::new())));
    assert!(n1.write(vec![bad], true).await.is_err());

    // Dropping the table deletes its rows and ranges, also for nodes with cached ranges.
    n1.drop_table_ranges(table).await.expect("drop");
    assert!(matches!(
        n1.table_ranges(table).await,
        Err(KvError::NoRanges { .. })
    ));
    let err = n3
        .scan(&keys::table_span(table), None, 0)
        .await
        .expect_err("dropped table");
    assert!(
        matches!(
            err,
            KvError::NoRanges { .. } | KvError::RangeNotFound { .. }
        ),
        "{err}"
    );
    let err = n3.get(&k, None).await.expect_err("dropped table");
    assert!(
        matches!(
            err,
            KvError::NoRanges { .. } | KvError::RangeNotFound { .. }
        ),
        "{err}"
    );
    n1.drop_table_ranges(table)
        .await
        .expect("dropping twice is a no-op");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_node_is_unavailable_until_it_restarts_with_its_identity_and_data() {
    let mut cluster = TestCluster::start(3).await;
    let n1 = cluster.client(1);
    // Single-owner ranges (`num_replicas = 1`): a stopped owner makes its ranges unavailable.
    n1.set_default_num_replicas(1).await.expect("zone");
    let table: TableId = 200;
    let ranges = n1.create_table_ranges(table, None).await.expect("ranges");
    let shard_count = ranges.len() as u16;
    let rows: Vec<RowWrite> = (0..300u32)
        .map(|i| {
            put(
                row_key(table, shard_count, &i.to_be_bytes()),
                format!("v{i}").as_bytes(),
            )
        })
        .collect();
    n1.write(rows, true).await.expect("write");
    let on_node3 = (0..300u32)
        .map(|i| row_key(table, shard_count, &i.to_be_bytes()))
        .find(|k| owner_of(&ranges, k) == 3)
        .expect("node 3 owns some rows");
    let cluster_id = n1.cluster_id();

    // Node 3 stops: its ranges fail with a retryable NodeUnavailable; others still serve.
    let mut node3 = cluster.nodes.pop().expect("three nodes");
    node3.stop().await;
    let err = n1.get(&on_node3, None).await.expect_err("node 3 is down");
    assert!(
        matches!(err, KvError::NodeUnavailable { node_id: 3, .. }),
        "{err}"
    );
    assert!(err.is_retryable());
    let err = n1
        .scan(&keys::table_span(table), None, 0)
        .await
        .expect_err("a range is down");
    assert!(err.is_retryable(), "{err}");
    let err = n1
        .write(vec![put(on_node3.clone(), b"while down")], true)
        .await
        .expect_err("write while down");
    assert!(matches!(err, KvError::NodeUnavailable { .. }), "{err}");
    let on_node1 = (0..300u32)
        .map(|i| row_key(table, shard_count, &i.to_be_bytes()))
        .find(|k| owner_of(&ranges, k) == 1)
        .expect("node 1 owns some rows");
    assert!(
        n1.get(&on_node1, None)
            .await
            .expect("node 1 still serves")
            .is_some()
    );
    eventually("node 3 to be seen dead", || {
        let n1 = n1.clone();
        async move { (!n1.is_node_live(3).await.ok()?).then_some(()) }
    })
    .await;

    // Node 3 comes back on its store: same identity, same data, and its ranges serve again.
    let node3 = node3.restart().await;
    tokio::time::timeout(DEADLINE, node3.node.wait_initialized())
        .await
        .expect("in time")
        .expect("resumes");
    assert_eq!(node3.node_id(), 3);
    assert_eq!(node3.client().cluster_id(), cluster_id);
    let v = node3
        .client()
        .get(&on_node3, None)
        .await
        .expect("local read")
        .expect("data persisted");
    assert!(v.value.expect("live").starts_with(b"v"));
    let back = eventually("node 3's ranges to serve again", || {
        let n1 = n1.clone();
        let key = on_node3.clone();
        async move { n1.get(&key, None).await.ok().flatten() }
    })
    .await;
    assert!(back.value.expect("live").starts_with(b"v"));
    let all = n1
        .scan(&keys::table_span(table), None, 0)
        .await
        .expect("full scan after restart");
    assert_eq!(all.len(), 300);
    cluster.nodes.push(node3);
    cluster.wait_all_live().await;

    // Node 1 (the system range) restarts too, on another port: the system keyspace survives
    // and the other nodes learn its new address. (A client keeps its node's store open, so
    // ours goes first.)
    drop(n1);
    let node1 = cluster.nodes.remove(0);
    let old_address = node1.address.clone();
    let node1 = node1.restart_elsewhere().await;
    assert_ne!(node1.address, old_address);
    tokio::time::timeout(DEADLINE, node1.node.wait_initialized())
        .await
        .expect("in time")
        .expect("resumes");
    assert_eq!(node1.node_id(), 1);
    assert_eq!(
        node1
            .client()
            .table_ranges(table)
            .await
            .expect("descriptors persisted"),
        ranges
    );
    let new_address = node1.address.clone();
    cluster.nodes.insert(0, node1);
    cluster.wait_all_live().await;
    let n3 = cluster.client(3);
    eventually("node 3 to reach node 1 at its new address", || {
        let n3 = n3.clone();
        let new_address = new_address.clone();
        async move {
            let nodes = n3.nodes().await.ok()?;
            (nodes[0].node.address == new_address).then_some(())
        }
    })
    .await;
    let n2 = cluster.client(2);
    let all = eventually("node 2 to reach node 1 again", || {
        let n2 = n2.clone();
        async move { n2.scan(&keys::table_span(table), None, 0).await.ok() }
    })
    .await;
    assert_eq!(all.len(), 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_bootstrap_and_clock_envelope() {
    let cluster = TestCluster::start(3).await;
    let (n1, n2, n3) = (cluster.client(1), cluster.client(2), cluster.client(3));

    // Every node knows every node, with the addresses it listens on.
    let nodes = n2.nodes().await.expect("nodes");
    assert_eq!(nodes.len(), 3);
    for (status, test_node) in nodes.iter().zip(&cluster.nodes) {
        assert!(status.is_live);
        assert_eq!(status.node.address, test_node.address);
        assert!(status.liveness_expiration > n2.clock().now());
    }

    // `ldr init` again, on any node, is refused.
    for test_node in &cluster.nodes {
        let err = ldr_kv::bootstrap_remote(&test_node.address)
            .await
            .expect_err("already initialized");
        assert!(matches!(err, KvError::AlreadyInitialized), "{err}");
        assert_eq!(err.to_string(), "the cluster has already been initialized");
    }
    assert!(matches!(
        cluster.nodes[1].node.bootstrap().await,
        Err(KvError::AlreadyInitialized)
    ));
    let info = ldr_kv::remote_node_info(&cluster.nodes[2].address)
        .await
        .expect("node info");
    assert!(info.initialized);
    assert_eq!(
        (info.node_id, info.cluster_id.as_str()),
        (3, n1.cluster_id().as_str())
    );
    assert_eq!(
        info.node1_address.as_deref(),
        Some(cluster.nodes[0].address.as_str())
    );

    // The origin id is a stable non-zero function of the cluster id, equal on every node.
    assert_ne!(n1.origin_id(), 0);
    assert_eq!(n1.origin_id(), n3.origin_id());

    // A KV request from another cluster is refused.
    let mut raw =
        ldr_proto::pb::kv_client::KvClient::connect(format!("http://{}", cluster.nodes[0].address))
            .await
            .expect("connect");
    let mut request = tonic::Request::new(ldr_proto::pb::KvGetRequest {
        range_id: 1,
        key: keys::system_key("x", b"y"),
        read_ts: None,
    });
    request.metadata_mut().insert(
        ldr_proto::metadata::CLUSTER_ID,
        "some-other-cluster".parse().expect("ascii"),
    );
    let status = raw.get(request).await.expect_err("wrong cluster");
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert!(
        status.message().contains("some-other-cluster"),
        "{}",
        status.message()
    );

    // A node whose clock runs ahead by more than the maximum offset is refused by its
    // peers, with an error that says why; it recovers when its clock does.
    ldr_kv::set_remote_clock_offset(&cluster.nodes[2].address, 2_000_000_000)
        .await
        .expect("skew node 3");
    let err = n3
        .sys_get("x", b"y")
        .await
        .expect_err("node 3's clock is 2s ahead");
    assert!(matches!(err, KvError::Clock(_)), "{err}");
    assert!(
        err.to_string().contains("maximum clock offset of 500ms"),
        "{err}"
    );
    ldr_kv::set_remote_clock_offset(&cluster.nodes[2].address, 0)
        .await
        .expect("unskew node 3");
    eventually("node 3's clock to be accepted again", || {
        let n3 = n3.clone();
        async move { n3.sys_get("x", b"y").await.ok() }
    })
    .await;

    // The catalog generation bumped on one node reaches the others.
    let generation = n2.bump_catalog_generation().await.expect("bump");
    assert!(generation >= 1);
    assert_eq!(n2.catalog_generation(), generation);
    for client in [&n1, &n3] {
        eventually("the catalog generation to propagate", || async move {
            (client.catalog_generation() >= generation).then_some(())
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system_keyspace_counters_and_settings() {
    let cluster = TestCluster::start(3).await;
    let (n1, n2, n3) = (cluster.client(1), cluster.client(2), cluster.client(3));

    // Plain and conditional puts, deletes and scans of a subspace, from any node.
    n2.sys_put("test", b"a", b"1").await.expect("put");
    n3.sys_put("test", b"b", b"2").await.expect("put");
    assert_eq!(
        n1.sys_get("test", b"a").await.expect("get").as_deref(),
        Some(&b"1"[..])
    );
    assert_eq!(
        n1.sys_cput("test", b"a", Some(b"3"), Some(b"1"))
            .await
            .expect("cput"),
        Ok(())
    );
    assert_eq!(
        n2.sys_cput("test", b"a", Some(b"4"), Some(b"1"))
            .await
            .expect("cput"),
        Err(Some(b"3".to_vec()))
    );
    assert_eq!(
        n2.sys_cput("test", b"c", Some(b"5"), None)
            .await
            .expect("cput absent"),
        Ok(())
    );
    assert_eq!(
        n2.sys_cput("test", b"c", Some(b"6"), None)
            .await
            .expect("cput absent"),
        Err(Some(b"5".to_vec()))
    );
    n3.sys_delete("test", b"c").await.expect("delete");
    let scanned = n1.sys_scan("test").await.expect("scan");
    assert_eq!(
        scanned,
        vec![
            (b"a".to_vec(), b"3".to_vec()),
            (b"b".to_vec(), b"2".to_vec())
        ]
    );

    // Counters are atomic under concurrent increments from every node.
    let mut tasks = Vec::new();
    for client in [&n1, &n2, &n3] {
        for _ in 0..3 {
            let client = client.clone();
            tasks.push(tokio::spawn(async move {
                let mut got = Vec::new();
                for _ in 0..20 {
                    got.push(
                        client
                            .sys_increment("test_counter", 1)
                            .await
                            .expect("increment"),
                    );
                }
                got
            }));
        }
    }
    let mut values = Vec::new();
    for t in tasks {
        values.extend(t.await.expect("task"));
    }
    values.sort_unstable();
    assert_eq!(
        values,
        (1..=180).collect::<Vec<i64>>(),
        "every increment got a distinct value"
    );
    assert_eq!(
        n2.sys_increment("test_counter", 10).await.expect("by ten"),
        190
    );

    // A setting set on one node is validated, persisted, and seen by the others.
    let err = n2
        .set_setting("no.such.setting", "1")
        .await
        .expect_err("unknown");
    assert!(matches!(err, KvError::UnknownSetting(_)), "{err}");
    let err = n2
        .set_setting("gc.ttlseconds", "soon")
        .await
        .expect_err("invalid");
    assert!(matches!(err, KvError::InvalidSetting { .. }), "{err}");
    n2.set_setting("gc.ttlseconds", "600").await.expect("set");
    n2.set_setting("logical_replication.consumer.retry_queue_duration", "5m")
        .await
        .expect("set duration");
    assert_eq!(
        n2.settings().int("gc.ttlseconds"),
        600,
        "the setting node sees it at once"
    );
    for client in [&n1, &n3] {
        eventually("the setting to propagate", || async move {
            (client.settings().int("gc.ttlseconds") == 600
                && client
                    .settings()
                    .duration("logical_replication.consumer.retry_queue_duration")
                    == Duration::from_secs(300))
            .then_some(())
        })
        .await;
    }
    let all = n3.settings().all();
    let row = all
        .iter()
        .find(|r| r.0 == "logical_replication.consumer.retry_queue_duration")
        .expect("listed");
    assert_eq!(row.1, "5m0s");
    n1.reset_setting("gc.ttlseconds").await.expect("reset");
    eventually("the reset to propagate", || {
        let n3 = n3.clone();
        async move { (n3.settings().int("gc.ttlseconds") == 14400).then_some(()) }
    })
    .await;

    // The closed timestamp target applies to every node's engine.
    n1.set_setting("kv.closed_timestamp.target_duration", "50ms")
        .await
        .expect("set");
    let engine = cluster.nodes[2].node.engine().clone();
    eventually("node 3's closed timestamp to trail by about 50ms", || {
        let engine = engine.clone();
        let n3 = n3.clone();
        async move {
            let lag = n3
                .clock()
                .now()
                .wall_time_ns
                .saturating_sub(engine.closed_timestamp().wall_time_ns);
            (n3.settings()
                .duration("kv.closed_timestamp.target_duration")
                == Duration::from_millis(50)
                && lag < 150_000_000)
                .then_some(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protected_timestamps_hold_back_gc() {
    let cluster = TestCluster::start(3).await;
    let n1 = cluster.client(1);
    let table: TableId = 300;
    let ranges = n1
        .create_table_ranges(table, Some(3))
        .await
        .expect("ranges");
    let key = row_key(table, 3, b"k");
    let owner = owner_of(&ranges, &key);
    let owner_client = cluster.client(owner);
    let owner_node = cluster.nodes[owner as usize - 1].node.clone();

    // Two versions of one key.
    let (ts1, _) = n1
        .write(vec![put(key.clone(), b"v1")], true)
        .await
        .expect("v1")[0]
        .clone();
    let (ts2, _) = n1
        .write(vec![put(key.clone(), b"v2")], true)
        .await
        .expect("v2")[0]
        .clone();
    assert!(ts2 > ts1);

    // A protection at ts1 keeps v1 readable at ts1, even with a zero GC TTL and the GC
    // threshold past v2.
    n1.protect(PtsRecord {
        id: "test-pts".into(),
        ts: ts1,
        owner: "test".into(),
    })
    .await
    .expect("protect");
    owner_client
        .set_setting("gc.ttlseconds", "0")
        .await
        .expect("ttl 0");
    let engine = owner_node.engine().clone();
    eventually("the closed timestamp to pass v2", || {
        let engine = engine.clone();
        async move { (engine.closed_timestamp() > ts2).then_some(()) }
    })
    .await;
    owner_node.run_gc().await.expect("gc");
    assert_eq!(
        owner_node.engine().gc_threshold(),
        ts1,
        "the protection holds the threshold at ts1"
    );
    let v = n1
        .get(&key, Some(ts1))
        .await
        .expect("read at ts1")
        .expect("v1 kept");
    assert_eq!(v.value.as_deref(), Some(&b"v1"[..]));

    // Protections only move forward; unknown ones cannot be updated.
    n1.update_protection("test-pts", ts1.prev())
        .await
        .expect("backwards is a no-op");
    assert_eq!(n1.protections().await.expect("list")[0].ts, ts1);
    let err = n1
        .update_protection("nope", ts2)
        .await
        .expect_err("unknown record");
    assert!(matches!(err, KvError::PtsNotFound(_)), "{err}");

    // Moving the protection past v2 lets GC remove v1; v2 stays.
    n1.update_protection("test-pts", ts2)
        .await
        .expect("forward");
    assert_eq!(n1.protections().await.expect("list")[0].ts, ts2);
    // GC never passes the closed timestamp, so wait until it is past v2. (The node's own GC
    // loop may get there first; either way v1 is gone afterwards.)
    let engine = owner_node.engine().clone();
    eventually("the closed timestamp to pass v2", || {
        let engine = engine.clone();
        async move { (engine.closed_timestamp() > ts2).then_some(()) }
    })
    .await;
    owner_node.run_gc().await.expect("gc");
    let old = n1.get(&key, Some(ts1)).await.expect("read at ts1");
    assert_eq!(old, None, "v1 was collected");
    assert_eq!(
        n1.get(&key, None)
            .await
            .expect("latest")
            .and_then(|v| v.value)
            .as_deref(),
        Some(&b"v2"[..])
    );

    // Releasing the protection lets GC run up to now.
    n1.release_protection("test-pts").await.expect("release");
    assert!(n1.protections().await.expect("list").is_empty());
    owner_node.run_gc().await.expect("gc");
    assert!(owner_node.engine().gc_threshold() > ts2);
}

/// The span checksum of `range` on every node that holds a replica of it, once they all
/// applied the same index.
async fn replica_checksums_agree(cluster: &TestCluster, range: &RangeDescriptor) {
    eventually("every replica to apply the same commands", || async {
        let mut applied = Vec::new();
        for node_id in &range.replicas {
            let client = cluster.client(*node_id);
            applied.push(client.local_replica_status(range.range_id)?.applied_index);
        }
        applied.windows(2).all(|w| w[0] == w[1]).then_some(())
    })
    .await;
    let sums: Vec<_> = range
        .replicas
        .iter()
        .map(|n| {
            cluster.nodes[*n as usize - 1]
                .node
                .engine()
                .span_checksum(&range.span)
                .expect("checksum")
        })
        .collect();
    assert!(
        sums.iter().all(|s| *s == sums[0]),
        "replicas of range {} differ: {sums:?}",
        range.range_id
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicated_ranges_keep_serving_when_a_node_stops_and_it_catches_up_on_restart() {
    let mut cluster = TestCluster::start(3).await;
    let n1 = cluster.client(1);
    assert_eq!(
        n1.default_num_replicas().await.expect("zone"),
        ldr_kv::DEFAULT_NUM_REPLICAS
    );
    assert!(n1.set_default_num_replicas(0).await.is_err());
    n1.set_default_num_replicas(3)
        .await
        .expect("num_replicas = 3");
    let table: TableId = 300;
    let ranges = n1
        .create_table_ranges(table, Some(6))
        .await
        .expect("ranges");
    assert!(ranges.iter().all(|r| r.replicas.len() == 3), "{ranges:?}");
    let key = |i: u32| row_key(table, 6, &i.to_be_bytes());
    let rows: Vec<RowWrite> = (0..300u32)
        .map(|i| put(key(i), format!("v{i}").as_bytes()))
        .collect();
    n1.write(rows, true).await.expect("write");
    for range in &ranges {
        replica_checksums_agree(&cluster, range).await;
    }

    // Node 3 stops: every key stays readable and writable through nodes 1 and 2, after at
    // most an election for the ranges it led.
    let mut node3 = cluster.nodes.pop().expect("three nodes");
    node3.stop().await;
    let stopped = std::time::Instant::now();
    let n2 = cluster.client(2);

    // A table created right away, while node 3 still counts as live, lists it among the
    // replicas, first for some ranges: those are bootstrapped by another replica, so every
    // range serves (it used to wait for node 3 to come back).
    let later: TableId = 301;
    let later_ranges = n2
        .create_table_ranges(later, Some(6))
        .await
        .expect("ranges created while a node is down");
    assert!(
        later_ranges.iter().any(|r| r.replicas.first() == Some(&3)),
        "node 3 no longer counted as live when the table was created ({:?} after it stopped): {later_ranges:?}",
        stopped.elapsed()
    );
    let later_key = |i: u32| row_key(later, 6, &i.to_be_bytes());
    n2.write((0..60u32).map(|i| put(later_key(i), b"x")).collect(), true)
        .await
        .expect("every range of the new table is writable without node 3");
    let rows: Vec<RowWrite> = (0..300u32)
        .map(|i| put(key(i), format!("w{i}").as_bytes()))
        .collect();
    n2.write(rows, true)
        .await
        .expect("every range writable without node 3");
    let failover = stopped.elapsed();
    assert!(
        failover < Duration::from_secs(10),
        "writes resumed after {failover:?}"
    );
    eprintln!("writes to every range resumed {failover:?} after node 3 stopped");
    let read = n1
        .get_many(&(0..300u32).map(key).collect::<Vec<_>>(), None)
        .await
        .expect("read");
    for (i, v) in read.into_iter().enumerate() {
        assert_eq!(
            v.and_then(|v| v.value),
            Some(format!("w{i}").into_bytes()),
            "key {i}"
        );
    }
    let scanned = n2
        .scan(&keys::table_span(table), None, 0)
        .await
        .expect("scan");
    assert_eq!(scanned.len(), 300);

    // Node 3 restarts on its store and catches up from the others' logs.
    cluster.nodes.push(node3.restart().await);
    cluster.wait_all_live().await;
    for range in ranges.iter().chain(&later_ranges) {
        replica_checksums_agree(&cluster, range).await;
    }
    let on3 = cluster
        .client(3)
        .get(&key(7), None)
        .await
        .expect("read via node 3");
    assert_eq!(on3.and_then(|v| v.value), Some(b"w7".to_vec()));

    // Dropping the table clears every replica.
    n1.drop_table_ranges(table).await.expect("drop");
    for range in &ranges {
        eventually("the dropped range's replicas to go away", || async {
            range
                .replicas
                .iter()
                .all(|n| {
                    cluster
                        .client(*n)
                        .local_replica_status(range.range_id)
                        .is_none()
                })
                .then_some(())
        })
        .await;
    }
}

/// The range's descriptor as `client` reads it now (not its cache).
async fn stored_range(client: &KvClient, range_id: ldr_types::RangeId) -> Option<RangeDescriptor> {
    let ranges = client.cluster_ranges().await.ok()?;
    ranges.into_iter().find(|r| r.range_id == range_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_follow_the_zone_config_and_the_cluster_outlives_node_1() {
    let mut cluster = TestCluster::start(3).await;
    let n2 = cluster.client(2);

    // The system range is a Raft group on all three nodes, listed as such.
    eventually(
        "the system range's descriptor to list three voters",
        || async {
            let mut voters = stored_range(&n2, 1).await?.replicas;
            voters.sort_unstable();
            (voters == [1, 2, 3]).then_some(())
        },
    )
    .await;

    // Two replicas per range, then three: the replicate queue adds a learner, catches it up
    // and makes it a voter, and the descriptors follow. Back to two removes one.
    n2.set_default_num_replicas(2).await.expect("zone");
    let table: TableId = 400;
    let ranges = n2
        .create_table_ranges(table, Some(3))
        .await
        .expect("ranges");
    assert!(ranges.iter().all(|r| r.replicas.len() == 2), "{ranges:?}");
    let key = |i: u32| row_key(table, 3, &i.to_be_bytes());
    let rows: Vec<RowWrite> = (0..90u32)
        .map(|i| put(key(i), format!("v{i}").as_bytes()))
        .collect();
    n2.write(rows, true).await.expect("write");
    n2.set_default_num_replicas(3).await.expect("zone");
    for range in &ranges {
        let grown = eventually("the range to grow to three voters", || async {
            let r = stored_range(&n2, range.range_id).await?;
            (r.replicas.len() == 3).then_some(r)
        })
        .await;
        assert!(grown.generation > range.generation, "{grown:?}");
        replica_checksums_agree(&cluster, &grown).await;
    }
    n2.set_default_num_replicas(2).await.expect("zone");
    for range in &ranges {
        let shrunk = eventually("the range to shrink to two voters", || async {
            let r = stored_range(&n2, range.range_id).await?;
            (r.replicas.len() == 2).then_some(r)
        })
        .await;
        let leaseholder = n2.range_leaseholder(&shrunk).await.expect("leaseholder");
        assert!(shrunk.replicas.contains(&leaseholder), "{shrunk:?}");
    }
    n2.set_default_num_replicas(3).await.expect("zone");
    for range in &ranges {
        eventually("the range to grow back to three voters", || async {
            let r = stored_range(&n2, range.range_id).await?;
            (r.replicas.len() == 3).then_some(())
        })
        .await;
    }

    // Node 1 stops: nodes 2 and 3 keep serving the system keyspace (reads, writes, id
    // allocation, new tables) and every table range.
    let n3 = cluster.client(3);
    let mut node1 = cluster.nodes.remove(0);
    node1.stop().await;
    let stopped = std::time::Instant::now();
    eventually(
        "the system range to serve writes without node 1",
        || async { n3.sys_put("test", b"after-node-1", b"yes").await.ok() },
    )
    .await;
    eprintln!(
        "the system range served writes {:?} after node 1 stopped",
        stopped.elapsed()
    );
    assert_eq!(
        n2.sys_get("test", b"after-node-1").await.expect("read"),
        Some(b"yes".to_vec())
    );
    let a = n2
        .sys_increment("test_counter", 1)
        .await
        .expect("increment");
    let b = n3
        .sys_increment("test_counter", 1)
        .await
        .expect("increment");
    assert_eq!(b, a + 1);
    // New ranges go to live nodes: once node 1's liveness record has expired, a new table
    // is placed without it. (A table created before that lists node 1 and still serves:
    // see `replicated_ranges_keep_serving_when_a_node_stops_…`.)
    eventually("node 1 to be seen as not live", || async {
        let nodes = n3.nodes().await.ok()?;
        nodes
            .iter()
            .any(|s| s.node.node_id == 1 && !s.is_live)
            .then_some(())
    })
    .await;
    let fresh = n3
        .create_table_ranges(401, Some(2))
        .await
        .expect("a new table without node 1");
    assert!(fresh.iter().all(|r| !r.replicas.contains(&1)), "{fresh:?}");
    n3.write(vec![put(row_key(401, 2, b"k"), b"v")], true)
        .await
        .expect("write to the new table");
    let read = n2
        .get_many(&(0..90u32).map(key).collect::<Vec<_>>(), None)
        .await
        .expect("read the old table");
    assert!(read.iter().all(|v| v.is_some()));

    // Node 1 comes back and catches up.
    let node1 = node1.restart().await;
    tokio::time::timeout(DEADLINE, node1.node.wait_initialized())
        .await
        .expect("in time")
        .expect("resumes");
    cluster.nodes.insert(0, node1);
    cluster.wait_all_live().await;
    let n1 = cluster.client(1);
    let seen = eventually("node 1 to read what was written without it", || async {
        n1.sys_get("test", b"after-node-1").await.ok().flatten()
    })
    .await;
    assert_eq!(seen, b"yes".to_vec());
}

/// The ranges of `table` in a consistency check's result.
fn rows_of(
    results: &[ldr_kv::RangeConsistency],
    ranges: &[RangeDescriptor],
) -> Vec<ldr_kv::RangeConsistency> {
    ranges
        .iter()
        .map(|r| {
            results
                .iter()
                .find(|c| c.range_id == r.range_id)
                .unwrap_or_else(|| panic!("range {} is checked: {results:?}", r.range_id))
                .clone()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistency_checks_compare_replicas_at_one_applied_index_and_name_a_corrupt_one() {
    use ldr_kv::ConsistencyStatus::{Consistent, Inconsistent, Indeterminate};

    let mut cluster = TestCluster::start(3).await;
    let n1 = cluster.client(1);
    n1.set_default_num_replicas(3).await.expect("zone");
    let table: TableId = 500;
    let ranges = n1
        .create_table_ranges(table, Some(3))
        .await
        .expect("ranges");
    assert!(ranges.iter().all(|r| r.replicas.len() == 3), "{ranges:?}");
    let key = |i: u32| row_key(table, 3, &i.to_be_bytes());
    // Several versions per key and tombstones: the checksum covers MVCC history.
    for round in 0..3u32 {
        let rows: Vec<RowWrite> = (0..120u32)
            .map(|i| {
                let mut row = put(key(i), format!("v{round}-{i}").as_bytes());
                if round == 2 && i % 5 == 0 {
                    row.value = None;
                }
                row
            })
            .collect();
        n1.write(rows, true).await.expect("write");
    }

    // Writes keep going while the check runs: every replica checksums the same applied
    // index (the request's), so the ranges are consistent anyway.
    let writer = {
        let client = cluster.client(2);
        tokio::spawn(async move {
            let mut i = 0u32;
            loop {
                let rows: Vec<RowWrite> = (0..12u32)
                    .map(|j| {
                        let pk = ((i * 12 + j) % 120).to_be_bytes();
                        put(row_key(table, 3, &pk), format!("w{i}").as_bytes())
                    })
                    .collect();
                let _ = client.write(rows, true).await;
                i += 1;
            }
        })
    };
    for stats_only in [false, true] {
        let results = cluster
            .client(3)
            .check_consistency(stats_only, b"", b"")
            .await
            .expect("check");
        // Every range of the cluster, the system range included, in key order.
        assert!(results.iter().any(|c| c.range_id == 1), "{results:?}");
        assert!(
            results.windows(2).all(|w| w[0].start_key < w[1].start_key),
            "{results:?}"
        );
        for c in &results {
            assert_eq!(c.status, Consistent, "stats_only={stats_only}: {c:?}");
            assert!(c.detail.contains("3 replica(s) agree"), "{c:?}");
        }
        rows_of(&results, &ranges);
    }
    writer.abort();
    let _ = writer.await;

    // A key bound selects the ranges it overlaps.
    let first = &ranges[0];
    let bounded = n1
        .check_consistency(false, &first.span.start, &first.span.end)
        .await
        .expect("bounded check");
    assert_eq!(
        bounded.iter().map(|c| c.range_id).collect::<Vec<_>>(),
        vec![first.range_id]
    );

    // One replica's store gets a key inside the range's span behind Raft's back: the check
    // finds the range inconsistent and names that replica; the other ranges stay consistent.
    let victim_range = &ranges[1];
    let leaseholder = n1
        .range_leaseholder(victim_range)
        .await
        .expect("leaseholder");
    let victim = *victim_range
        .replicas
        .iter()
        .find(|n| **n != leaseholder)
        .expect("a follower");
    let stray_key = (1000..)
        .map(key)
        .find(|k| victim_range.span.contains_key(k))
        .expect("a key in the range");
    let engine = cluster.nodes[victim as usize - 1].node.engine().clone();
    engine
        .commit_versions(
            &[ldr_storage::VersionWrite {
                key: stray_key,
                version: ldr_kv::Version {
                    ts: engine.clock().now(),
                    header: ValueHeader::default(),
                    value: Some(b"stray".to_vec()),
                },
            }],
            &[],
        )
        .expect("a write bypassing raft");
    for stats_only in [false, true] {
        let results = n1
            .check_consistency(stats_only, b"", b"")
            .await
            .expect("check");
        let table_rows = rows_of(&results, &ranges);
        for (range, c) in ranges.iter().zip(&table_rows) {
            if range.range_id != victim_range.range_id {
                assert_eq!(c.status, Consistent, "{c:?}");
                continue;
            }
            assert_eq!(c.status, Inconsistent, "stats_only={stats_only}: {c:?}");
            let now = n1
                .range_leaseholder(victim_range)
                .await
                .expect("leaseholder");
            if now == leaseholder {
                assert_eq!(c.inconsistent_replicas, vec![victim], "{c:?}");
                assert!(
                    c.detail
                        .contains(&format!("replica n{victim} differs from the leaseholder")),
                    "{c:?}"
                );
            } else {
                // The lease moved to the corrupt replica meanwhile: the others differ from it.
                assert!(c.detail.contains(&format!("n{victim}")), "{c:?}");
            }
        }
    }

    // A single-owner range (created while num_replicas = 1) is consistent trivially.
    n1.set_default_num_replicas(1).await.expect("zone");
    let single = n1
        .create_table_ranges(501, Some(2))
        .await
        .expect("single-owner ranges");
    assert!(single.iter().all(|r| !r.is_replicated()), "{single:?}");
    let span = keys::table_span(501);
    let results = n1
        .check_consistency(false, &span.start, &span.end)
        .await
        .expect("check");
    assert_eq!(results.len(), 2, "{results:?}");
    for c in &results {
        assert_eq!(c.status, Consistent, "{c:?}");
        assert!(c.detail.contains("single-owner"), "{c:?}");
    }

    // A replica that does not answer leaves its ranges indeterminate (or, when another
    // replica differs, inconsistent), naming it.
    let mut node3 = cluster.nodes.pop().expect("three nodes");
    node3.stop().await;
    let results = n1
        .check_consistency(false, b"", b"")
        .await
        .expect("check without node 3");
    for c in rows_of(&results, &ranges) {
        if c.range_id == victim_range.range_id && victim != 3 {
            assert_eq!(c.status, Inconsistent, "{c:?}");
        } else {
            assert_eq!(c.status, Indeterminate, "{c:?}");
        }
        assert!(c.detail.contains("n3"), "{c:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_copy_ranges_become_raft_groups_under_writes_when_the_zone_wants_copies() {
    let mut cluster = TestCluster::start(3).await;
    let n1 = cluster.client(1);

    // Ranges created under num_replicas = 1 have one copy, written without Raft (as a table
    // created while the cluster had one node).
    n1.set_default_num_replicas(1).await.expect("zone");
    let table: TableId = 500;
    let ranges = n1
        .create_table_ranges(table, Some(3))
        .await
        .expect("ranges");
    assert!(ranges.iter().all(|r| !r.is_replicated()), "{ranges:?}");
    let key = |i: u32| row_key(table, 3, &i.to_be_bytes());
    let rows: Vec<RowWrite> = (0..90u32)
        .map(|i| put(key(i), format!("v{i}").as_bytes()))
        .collect();
    n1.write(rows, true).await.expect("write");

    // A writer on node 2 keeps writing new keys while the ranges change; every write it
    // was told succeeded must be there afterwards, on every replica.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let client = cluster.client(2);
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut acked = Vec::new();
            let mut failed = 0u32;
            for i in 1000..6000u32 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let row = put(
                    row_key(table, 3, &i.to_be_bytes()),
                    format!("w{i}").as_bytes(),
                );
                match client.write(vec![row], true).await {
                    Ok(_) => acked.push(i),
                    Err(e) => {
                        failed += 1;
                        eprintln!("write {i} failed: {e}");
                    }
                }
            }
            (acked, failed)
        })
    };

    // The zone wants three copies: each owner makes its ranges Raft groups of one voter on
    // the data it has, and the replicate queue grows them to three voters.
    n1.set_default_num_replicas(3).await.expect("zone");
    let mut grown = Vec::new();
    for range in &ranges {
        let r = eventually("the single-copy range to grow to three voters", || async {
            let r = stored_range(&n1, range.range_id).await?;
            (r.replicas.len() == 3).then_some(r)
        })
        .await;
        assert!(r.generation > range.generation, "{r:?}");
        grown.push(r);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (acked, failed) = writer.await.expect("writer");
    eprintln!(
        "{} writes acknowledged and {failed} failed while the ranges changed",
        acked.len()
    );
    assert!(!acked.is_empty());
    for range in &grown {
        replica_checksums_agree(&cluster, range).await;
    }
    let n3 = cluster.client(3);
    let keys: Vec<Vec<u8>> = (0..90u32).chain(acked.iter().copied()).map(key).collect();
    let read = n3.get_many(&keys, None).await.expect("read");
    for (k, v) in keys.iter().zip(read) {
        assert!(v.and_then(|v| v.value).is_some(), "key {k:?} lost");
    }

    // The copies are real: with the original owner of a range stopped, its rows are still
    // read (and written) through the other nodes.
    let owner = ranges[0].node_id;
    let survivor = if owner == 3 { 2 } else { 3 };
    let mut stopped = cluster.nodes.remove(owner as usize - 1);
    stopped.stop().await;
    let survivor = cluster
        .nodes
        .iter()
        .find(|n| n.node_id() == survivor)
        .expect("survivor")
        .client();
    let first: Vec<Vec<u8>> = (0..90u32)
        .map(key)
        .filter(|k| ranges[0].span.contains_key(k))
        .collect();
    assert!(!first.is_empty());
    let read = eventually("the rows of the stopped owner's range", || async {
        survivor.get_many(&first, None).await.ok()
    })
    .await;
    assert!(read.iter().all(|v| v.is_some()));
    survivor
        .write(vec![put(first[0].clone(), b"after")], true)
        .await
        .expect("write without the original owner");
}

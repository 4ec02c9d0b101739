//! The serving side of a changefeed on a real (one-node, in-process) cluster: the span stream
//! a coordinator reads carries rows of every origin (a row LDR wrote is a change too), and
//! leaves out versions marked `omit_in_rangefeeds` (TTL deletes of a table with
//! `ttl_disable_changefeed_replication`) unless `ignore_disable_changefeed_replication`
//! turns the filter off.

use std::sync::Arc;
use std::time::Duration;

use ldr_changefeed::options::parse_options;
use ldr_changefeed::service::partition_options;
use ldr_kv::{Condition, KvNode, RowWrite, ValueHeader};
use ldr_proto::pb;
use ldr_types::{PRIMARY_INDEX_ID, Span, Timestamp, keys};

const DEADLINE: Duration = Duration::from_secs(60);

/// Every key a span stream delivers until its frontier passes `until`.
async fn stream_keys(
    node: &Arc<KvNode>,
    spans: &[Span],
    with_filtering: bool,
    until: Timestamp,
) -> Vec<(Vec<u8>, bool)> {
    let request = pb::ChangefeedSpansRequest {
        job_id: 1,
        spans: spans.iter().map(pb::Span::from).collect(),
        initial_scan_ts: None,
        progress: vec![],
        with_filtering,
        batch_bytes_max: 1 << 20,
    };
    let options = partition_options(&request, Duration::from_millis(50)).expect("options");
    let (tx, mut rx) = tokio::sync::mpsc::channel(4);
    let kv = node.client();
    let rangefeeds = node.rangefeeds().clone();
    let task = tokio::spawn(ldr_stream::run_partition(kv, rangefeeds, options, tx));
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let event = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("a checkpoint past the writes in time")
            .expect("stream open")
            .expect("no stream error");
        match event.event {
            Some(pb::stream_event::Event::Batch(b)) => {
                out.extend(b.kvs.into_iter().map(|kv| (kv.key, kv.value.is_some())));
            }
            Some(pb::stream_event::Event::Checkpoint(cp)) => {
                let min = cp
                    .resolved_spans
                    .iter()
                    .map(|r| ldr_proto::ts_or_zero(r.ts))
                    .min()
                    .unwrap_or(Timestamp::ZERO);
                if min >= until {
                    break;
                }
            }
            None => {}
        }
    }
    drop(rx);
    task.abort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn span_streams_carry_every_origin_and_drop_omitted_versions_unless_asked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = ldr_testkit::TestNode::start_bootstrapped(dir.path().to_path_buf()).await;
    let node = &node.node;
    let kv = node.client();
    let table = 200;
    let ranges = kv
        .create_table_ranges(table, Some(1))
        .await
        .expect("ranges");
    let span = keys::index_span(table, ranges[0].shard, PRIMARY_INDEX_ID);
    let key = |k: u8| {
        let mut key = keys::index_prefix(table, ranges[0].shard, PRIMARY_INDEX_ID);
        key.push(k);
        key
    };
    let write = |k: u8, value: Option<&[u8]>, header: ValueHeader| RowWrite {
        key: key(k),
        value: value.map(<[u8]>::to_vec),
        condition: Condition::None,
        header,
        dependents: vec![],
    };
    let origin = ValueHeader {
        origin_id: 7,
        origin_ts: kv.clock().now(),
        omit_in_rangefeeds: false,
    };
    let omitted = ValueHeader {
        omit_in_rangefeeds: true,
        ..ValueHeader::default()
    };
    kv.write(
        vec![
            write(1, Some(b"local"), ValueHeader::default()),
            write(2, Some(b"from ldr"), origin),
            write(3, Some(b"expiring"), ValueHeader::default()),
        ],
        false,
    )
    .await
    .expect("writes");
    // A TTL delete of key 3, marked to be left out of changefeeds.
    kv.write(vec![write(3, None, omitted)], false)
        .await
        .expect("ttl delete");
    let after = kv.clock().now();

    // The default (`ttl_disable_changefeed_replication` honoured): the marked delete is left
    // out; the LDR-written row is in.
    let defaults = parse_options(&[]).expect("options");
    let got = stream_keys(
        &node,
        std::slice::from_ref(&span),
        defaults.drops_omitted(),
        after,
    )
    .await;
    assert!(got.contains(&(key(1), true)), "{got:?}");
    assert!(
        got.contains(&(key(2), true)),
        "rows LDR wrote are changes: {got:?}"
    );
    assert!(got.contains(&(key(3), true)), "{got:?}");
    assert!(
        !got.contains(&(key(3), false)),
        "the TTL delete is omitted: {got:?}"
    );

    // `ignore_disable_changefeed_replication`: the delete is emitted.
    let ignore =
        parse_options(&[("ignore_disable_changefeed_replication".into(), None)]).expect("options");
    let got = stream_keys(&node, &[span], ignore.drops_omitted(), after).await;
    assert!(
        got.contains(&(key(3), false)),
        "the TTL delete is emitted: {got:?}"
    );
    node.stop().await;
}

//! Every message of ours decodes from arbitrary bytes without panicking (an error, or a
//! message with missing fields), encodes again, and converts to `ldr-types` values without
//! panicking. A gRPC peer is outside input: a bug or an attacker on the port must cost an
//! error, not the node.
//!
//! `PROPTEST_CASES=n` runs more cases; a failure prints the shrunk bytes.

use std::collections::BTreeSet;

use ldr_proto::pb;
use ldr_types::{ResolvedSpan, Span, Timestamp};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use prost::Message;

/// The proto files whose messages [`every_message!`] lists.
// `proto/raft.proto` joins this list (and its messages the macro) when it lands.
const PROTO_FILES: [&str; 5] = [
    "common.proto",
    "kv.proto",
    "stream.proto",
    "ingest.proto",
    "changefeed.proto",
];

/// Runs `$body` with `M` bound to each top-level message type, and lists their names.
macro_rules! every_message {
    ($($m:ident),* $(,)?) => {
        const MESSAGE_NAMES: &[&str] = &[$(stringify!($m)),*];

        /// Decodes `bytes` as every message; what decodes must encode and decode again.
        fn decode_as_every_message(bytes: &[u8]) {
            $(
                if let Ok(m) = pb::$m::decode(bytes) {
                    let again = m.encode_to_vec();
                    pb::$m::decode(again.as_slice()).unwrap_or_else(|e| {
                        panic!("{} re-encoded from {bytes:?} does not decode: {e}", stringify!($m))
                    });
                }
                // Length-delimited, as messages nest and stream.
                let _ = pb::$m::decode_length_delimited(bytes);
            )*
        }
    };
}

every_message!(
    // common.proto
    Timestamp,
    Span,
    ResolvedSpan,
    ValueHeader,
    // kv.proto
    Ping,
    KvVersion,
    KvKeyVersion,
    KvNodeDescriptor,
    KvGetRequest,
    KvGetResponse,
    KvRangeKeys,
    KvGetManyRequest,
    KvMaybeVersion,
    KvGetManyResponse,
    KvScanRequest,
    KvScanResponse,
    KvConditionNone,
    KvConditionExpect,
    KvConditionLww,
    KvCondition,
    KvDependent,
    KvRowWrite,
    KvWriteRequest,
    KvOutcomeWritten,
    KvOutcomeConditionFailed,
    KvOutcomeLwwLost,
    KvOutcomeLwwUnexpected,
    KvOutcomeNotAttempted,
    KvRowOutcome,
    KvWriteResponse,
    KvTxnMeta,
    KvResolveIntentsRequest,
    KvResolveIntentsResponse,
    KvIncrementRequest,
    KvIncrementResponse,
    KvClearRangeRequest,
    KvClearRangeResponse,
    KvJoinRequest,
    KvJoinResponse,
    KvBootstrapRequest,
    KvBootstrapResponse,
    KvNodeInfoRequest,
    KvNodeInfoResponse,
    KvAnnounceRequest,
    KvAnnounceResponse,
    KvNotifyRequest,
    KvNotifyResponse,
    KvSetClockOffsetRequest,
    KvSetClockOffsetResponse,
    KvSetPartitionRequest,
    KvSetPartitionResponse,
    KvCreateReplicaRequest,
    KvCreateReplicaResponse,
    KvClosedRange,
    KvCloseTimestampsRequest,
    KvCloseTimestampsResponse,
    KvCampaignRequest,
    KvCampaignResponse,
    KvDrainRequest,
    KvDrainResponse,
    KvSetMembershipRequest,
    KvSetMembershipResponse,
    KvCheckConsistencyRequest,
    KvCheckConsistencyResponse,
    KvCollectChecksumRequest,
    KvCollectChecksumResponse,
    KvReplicaChecksum,
    // stream.proto
    StartStreamRequest,
    Partition,
    StartStreamResponse,
    PlanStreamRequest,
    PlanStreamResponse,
    StreamPartitionRequest,
    KvEvent,
    EventBatch,
    RangeStats,
    Checkpoint,
    StreamEvent,
    HeartbeatRequest,
    HeartbeatResponse,
    CompleteStreamRequest,
    CompleteStreamResponse,
    // ingest.proto
    TableMapping,
    ProcessorSpec,
    ProcessorUpdate,
    // changefeed.proto
    ChangefeedSpansRequest,
    NodelocalWriteRequest,
    NodelocalWriteResponse,
    NodelocalReadRequest,
    NodelocalReadResponse,
    NodelocalListRequest,
    NodelocalListResponse,
);

fn config(default: u32) -> Config {
    Config {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default),
        ..Config::default()
    }
}

#[test]
fn the_list_covers_every_message() {
    // Top-level `message X` lines of the proto files, against the macro's list.
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../proto");
    let mut declared = BTreeSet::new();
    for file in PROTO_FILES {
        let text = std::fs::read_to_string(format!("{dir}/{file}"))
            .unwrap_or_else(|e| panic!("read {file}: {e}"));
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("message ") {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                declared.insert(name);
            }
        }
    }
    let listed: BTreeSet<String> = MESSAGE_NAMES.iter().map(|s| s.to_string()).collect();
    assert_eq!(
        declared, listed,
        "every message of {PROTO_FILES:?} is listed in every_message! (and nothing else)"
    );
}

/// Bytes that are mostly well-formed protobuf: field keys with valid wire types, lengths that
/// may lie, nested garbage.
fn protobuf_like() -> impl Strategy<Value = Vec<u8>> {
    let field = (1u32..16, 0u8..6, prop::collection::vec(any::<u8>(), 0..12)).prop_map(
        |(number, wire_type, payload)| {
            let mut out = Vec::new();
            prost::encoding::encode_key(
                number,
                match wire_type {
                    0 => prost::encoding::WireType::Varint,
                    1 => prost::encoding::WireType::SixtyFourBit,
                    2 | 4 => prost::encoding::WireType::LengthDelimited,
                    3 => prost::encoding::WireType::StartGroup,
                    _ => prost::encoding::WireType::ThirtyTwoBit,
                },
                &mut out,
            );
            if wire_type == 2 {
                prost::encoding::encode_varint(payload.len() as u64, &mut out);
            }
            out.extend_from_slice(&payload);
            out
        },
    );
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64),
        prop::collection::vec(field, 0..8).prop_map(|fs| fs.concat()),
    ]
}

#[test]
fn arbitrary_bytes_decode_or_fail_cleanly() {
    let mut runner = TestRunner::new(config(2000));
    runner
        .run(&protobuf_like(), |bytes| {
            decode_as_every_message(&bytes);
            Ok(())
        })
        .expect("decoding never panics");
}

#[test]
fn conversions_take_missing_and_garbage_fields() {
    // Messages with every field missing convert to defaults (a zero timestamp, which the
    // receivers that care refuse: see ldr-ingest's processor).
    assert_eq!(Timestamp::from(pb::Timestamp::default()), Timestamp::ZERO);
    assert_eq!(ldr_proto::ts_or_zero(None), Timestamp::ZERO);
    let empty = ResolvedSpan::from(pb::ResolvedSpan::default());
    assert_eq!(empty.ts, Timestamp::ZERO);
    assert_eq!(empty.span, Span::default());
    let mut runner = TestRunner::new(config(1000));
    runner
        .run(&protobuf_like(), |bytes| {
            if let Ok(r) = pb::ResolvedSpan::decode(bytes.as_slice()) {
                let _ = ResolvedSpan::from(r);
            }
            if let Ok(s) = pb::Span::decode(bytes.as_slice()) {
                let _ = Span::from(s);
            }
            if let Ok(t) = pb::Timestamp::decode(bytes.as_slice()) {
                let t = Timestamp::from(t);
                prop_assert_eq!(Timestamp::from(pb::Timestamp::from(t)), t);
            }
            if let Ok(c) = pb::Checkpoint::decode(bytes.as_slice()) {
                let _: Vec<ResolvedSpan> = c.resolved_spans.into_iter().map(Into::into).collect();
            }
            Ok(())
        })
        .expect("conversions never panic");
}

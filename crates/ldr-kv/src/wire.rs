//! Conversions between the `kv.proto` wire messages and this crate's types, the error
//! encoding that lets a caller rebuild the callee's [`KvError`], and the gRPC metadata every
//! KV call carries (sender clock, cluster id).
//!
//! An error crosses the wire as a gRPC status whose `details` hold a JSON [`WireError`]; a
//! status without one (transport failure, timeout, a peer that went away) becomes
//! [`KvError::NodeUnavailable`] when retrying may help, else [`KvError::Rpc`].

use ldr_proto::pb;
use ldr_proto::ts_or_zero;
use ldr_storage::{
    Condition, KeyVersion, RowOutcome, RowWrite, StorageError, ValueHeader, Version,
};
use ldr_types::{ClockError, NodeId, Timestamp};
use serde::{Deserialize, Serialize};
use tonic::Code;
use tonic::metadata::{MetadataMap, MetadataValue};

use crate::{KvError, NodeDescriptor, Result};

// ---- values ----

pub(crate) fn header_to_pb(h: &ValueHeader) -> pb::ValueHeader {
    pb::ValueHeader {
        origin_id: h.origin_id,
        origin_ts: Some(h.origin_ts.into()),
        omit_in_rangefeeds: h.omit_in_rangefeeds,
    }
}

pub(crate) fn header_from_pb(h: Option<pb::ValueHeader>) -> ValueHeader {
    match h {
        Some(h) => ValueHeader {
            origin_id: h.origin_id,
            origin_ts: ts_or_zero(h.origin_ts),
            omit_in_rangefeeds: h.omit_in_rangefeeds,
        },
        None => ValueHeader::default(),
    }
}

pub(crate) fn version_to_pb(v: Version) -> pb::KvVersion {
    pb::KvVersion {
        ts: Some(v.ts.into()),
        header: Some(header_to_pb(&v.header)),
        value: v.value,
    }
}

pub(crate) fn version_from_pb(v: pb::KvVersion) -> Version {
    Version {
        ts: ts_or_zero(v.ts),
        header: header_from_pb(v.header),
        value: v.value,
    }
}

pub(crate) fn key_version_to_pb(kv: KeyVersion) -> pb::KvKeyVersion {
    pb::KvKeyVersion {
        key: kv.key,
        version: Some(version_to_pb(kv.version)),
    }
}

pub(crate) fn key_version_from_pb(kv: pb::KvKeyVersion) -> Result<KeyVersion> {
    let version = kv
        .version
        .ok_or_else(|| malformed("scan row without a version"))?;
    Ok(KeyVersion {
        key: kv.key,
        version: version_from_pb(version),
    })
}

// ---- writes ----

fn condition_to_pb(c: &Condition) -> pb::KvCondition {
    use pb::kv_condition::Kind;
    let kind = match c {
        Condition::None => Kind::None(pb::KvConditionNone {}),
        Condition::Expect(v) => Kind::Expect(pb::KvConditionExpect { value: v.clone() }),
        Condition::Lww {
            expected_prev,
            local_origin_id,
        } => Kind::Lww(pb::KvConditionLww {
            has_expected_prev: expected_prev.is_some(),
            expected_prev: expected_prev.clone().flatten(),
            local_origin_id: *local_origin_id,
        }),
    };
    pb::KvCondition { kind: Some(kind) }
}

fn condition_from_pb(c: Option<pb::KvCondition>) -> Result<Condition> {
    use pb::kv_condition::Kind;
    match c.and_then(|c| c.kind) {
        Some(Kind::None(_)) => Ok(Condition::None),
        Some(Kind::Expect(e)) => Ok(Condition::Expect(e.value)),
        Some(Kind::Lww(l)) => Ok(Condition::Lww {
            expected_prev: l.has_expected_prev.then_some(l.expected_prev),
            local_origin_id: l.local_origin_id,
        }),
        None => Err(malformed("row write without a condition")),
    }
}

/// A transaction id from the wire (exactly 16 bytes).
pub(crate) fn txn_id_from_pb(bytes: &[u8]) -> Result<ldr_storage::TxnId> {
    bytes.try_into().map_err(|_| {
        KvError::InvalidRequest(format!(
            "a transaction id has 16 bytes, not {}",
            bytes.len()
        ))
    })
}

pub(crate) fn txn_from_pb(t: pb::KvTxnMeta) -> Result<ldr_storage::TxnMeta> {
    Ok(ldr_storage::TxnMeta {
        txn_id: txn_id_from_pb(&t.txn_id)?,
        record_key: t.record_key,
    })
}

pub(crate) fn row_to_pb(r: RowWrite) -> pb::KvRowWrite {
    pb::KvRowWrite {
        condition: Some(condition_to_pb(&r.condition)),
        header: Some(header_to_pb(&r.header)),
        key: r.key,
        value: r.value,
        dependents: r
            .dependents
            .into_iter()
            .map(|(key, value)| pb::KvDependent { key, value })
            .collect(),
    }
}

pub(crate) fn row_from_pb(r: pb::KvRowWrite) -> Result<RowWrite> {
    Ok(RowWrite {
        condition: condition_from_pb(r.condition)?,
        header: header_from_pb(r.header),
        key: r.key,
        value: r.value,
        dependents: r.dependents.into_iter().map(|d| (d.key, d.value)).collect(),
    })
}

pub(crate) fn outcome_to_pb(o: RowOutcome) -> pb::KvRowOutcome {
    use pb::kv_row_outcome::Outcome;
    let outcome = match o {
        RowOutcome::Written { prev } => Outcome::Written(pb::KvOutcomeWritten {
            prev: prev.map(version_to_pb),
        }),
        RowOutcome::ConditionFailed { actual } => {
            Outcome::ConditionFailed(pb::KvOutcomeConditionFailed {
                actual: actual.map(version_to_pb),
            })
        }
        RowOutcome::LwwLost { existing } => Outcome::LwwLost(pb::KvOutcomeLwwLost {
            existing: Some(existing.into()),
        }),
        RowOutcome::LwwUnexpected { actual } => {
            Outcome::LwwUnexpected(pb::KvOutcomeLwwUnexpected {
                actual: actual.map(version_to_pb),
            })
        }
        RowOutcome::NotAttempted => Outcome::NotAttempted(pb::KvOutcomeNotAttempted {}),
    };
    pb::KvRowOutcome {
        outcome: Some(outcome),
    }
}

pub(crate) fn outcome_from_pb(o: pb::KvRowOutcome) -> Result<RowOutcome> {
    use pb::kv_row_outcome::Outcome;
    Ok(
        match o
            .outcome
            .ok_or_else(|| malformed("row outcome without a value"))?
        {
            Outcome::Written(w) => RowOutcome::Written {
                prev: w.prev.map(version_from_pb),
            },
            Outcome::ConditionFailed(c) => RowOutcome::ConditionFailed {
                actual: c.actual.map(version_from_pb),
            },
            Outcome::LwwLost(l) => RowOutcome::LwwLost {
                existing: ts_or_zero(l.existing),
            },
            Outcome::LwwUnexpected(u) => RowOutcome::LwwUnexpected {
                actual: u.actual.map(version_from_pb),
            },
            Outcome::NotAttempted(_) => RowOutcome::NotAttempted,
        },
    )
}

// ---- membership ----

pub(crate) fn node_to_pb(n: &NodeDescriptor) -> pb::KvNodeDescriptor {
    pb::KvNodeDescriptor {
        node_id: n.node_id,
        address: n.address.clone(),
        sql_address: n.sql_address.clone(),
        http_address: n.http_address.clone(),
        started_at: Some(n.started_at.into()),
    }
}

pub(crate) fn node_from_pb(n: pb::KvNodeDescriptor) -> NodeDescriptor {
    NodeDescriptor {
        node_id: n.node_id,
        address: n.address,
        sql_address: n.sql_address,
        http_address: n.http_address,
        started_at: ts_or_zero(n.started_at),
    }
}

fn malformed(what: &str) -> KvError {
    KvError::Rpc(format!("malformed message: {what}"))
}

// ---- errors ----

/// A [`StorageError`] on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum WireStorageError {
    Rocksdb(String),
    Corruption {
        key: String,
        detail: String,
    },
    InvalidArgument(String),
    BelowGcThreshold {
        requested: Timestamp,
        threshold: Timestamp,
    },
    BelowClosedTimestamp {
        ts: Timestamp,
        closed: Timestamp,
    },
    WriteIntent {
        key: Vec<u8>,
        txn_id: [u8; 16],
        record_key: Vec<u8>,
        write_ts: Timestamp,
        value: Option<Vec<u8>>,
    },
}

/// A [`KvError`] on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum WireError {
    Storage(WireStorageError),
    NodeUnavailable {
        node_id: NodeId,
        address: String,
        detail: String,
    },
    AmbiguousResult {
        node_id: NodeId,
        address: String,
        detail: String,
    },
    RangeNotFound {
        range_id: u64,
    },
    NotLeaseholder {
        range_id: u64,
        hint: Option<NodeId>,
    },
    NoRanges {
        table_id: u32,
    },
    NotInitialized,
    AlreadyInitialized,
    UnknownSetting(String),
    InvalidSetting {
        name: String,
        value: String,
        detail: String,
    },
    Clock {
        remote: Timestamp,
        ahead_ms: u64,
        max_offset_ms: u64,
    },
    WrongCluster {
        expected: String,
        got: String,
    },
    PtsNotFound(String),
    Rpc(String),
    InvalidRequest(String),
    TxnAborted {
        txn_id: String,
        reason: String,
        #[serde(default)]
        conflicting: Option<String>,
    },
    TxnConflict(String),
    Internal(String),
}

impl WireError {
    fn from_error(e: &KvError) -> (Code, WireError) {
        match e {
            KvError::Storage(s) => {
                let code = if s.is_retryable() {
                    Code::Aborted
                } else {
                    Code::Internal
                };
                let w = match s {
                    StorageError::Rocksdb(m) => WireStorageError::Rocksdb(m.clone()),
                    StorageError::Corruption { key, detail } => WireStorageError::Corruption {
                        key: key.clone(),
                        detail: detail.clone(),
                    },
                    StorageError::InvalidArgument(m) => {
                        WireStorageError::InvalidArgument(m.clone())
                    }
                    StorageError::BelowGcThreshold {
                        requested,
                        threshold,
                    } => WireStorageError::BelowGcThreshold {
                        requested: *requested,
                        threshold: *threshold,
                    },
                    StorageError::BelowClosedTimestamp { ts, closed } => {
                        WireStorageError::BelowClosedTimestamp {
                            ts: *ts,
                            closed: *closed,
                        }
                    }
                    StorageError::WriteIntent(c) => WireStorageError::WriteIntent {
                        key: c.key.clone(),
                        txn_id: c.txn.txn_id,
                        record_key: c.txn.record_key.clone(),
                        write_ts: c.write_ts,
                        value: c.value.clone(),
                    },
                };
                (code, WireError::Storage(w))
            }
            KvError::NodeUnavailable {
                node_id,
                address,
                detail,
            } => (
                Code::Unavailable,
                WireError::NodeUnavailable {
                    node_id: *node_id,
                    address: address.clone(),
                    detail: detail.clone(),
                },
            ),
            KvError::AmbiguousResult {
                node_id,
                address,
                detail,
            } => (
                Code::Unavailable,
                WireError::AmbiguousResult {
                    node_id: *node_id,
                    address: address.clone(),
                    detail: detail.clone(),
                },
            ),
            KvError::RangeNotFound { range_id } => (
                Code::NotFound,
                WireError::RangeNotFound {
                    range_id: *range_id,
                },
            ),
            KvError::NotLeaseholder { range_id, hint } => (
                Code::FailedPrecondition,
                WireError::NotLeaseholder {
                    range_id: *range_id,
                    hint: *hint,
                },
            ),
            KvError::NoRanges { table_id } => (
                Code::NotFound,
                WireError::NoRanges {
                    table_id: *table_id,
                },
            ),
            KvError::NotInitialized => (Code::FailedPrecondition, WireError::NotInitialized),
            KvError::AlreadyInitialized => (Code::AlreadyExists, WireError::AlreadyInitialized),
            KvError::UnknownSetting(n) => {
                (Code::InvalidArgument, WireError::UnknownSetting(n.clone()))
            }
            KvError::InvalidSetting {
                name,
                value,
                detail,
            } => (
                Code::InvalidArgument,
                WireError::InvalidSetting {
                    name: name.clone(),
                    value: value.clone(),
                    detail: detail.clone(),
                },
            ),
            KvError::Clock(ClockError::RemoteTooFarAhead {
                remote,
                ahead_ms,
                max_offset_ms,
            }) => (
                Code::FailedPrecondition,
                WireError::Clock {
                    remote: *remote,
                    ahead_ms: *ahead_ms,
                    max_offset_ms: *max_offset_ms,
                },
            ),
            KvError::WrongCluster { expected, got } => (
                Code::PermissionDenied,
                WireError::WrongCluster {
                    expected: expected.clone(),
                    got: got.clone(),
                },
            ),
            KvError::PtsNotFound(id) => (Code::NotFound, WireError::PtsNotFound(id.clone())),
            KvError::Rpc(m) => (Code::Unknown, WireError::Rpc(m.clone())),
            KvError::TxnAborted {
                txn_id,
                reason,
                conflicting,
            } => (
                Code::Aborted,
                WireError::TxnAborted {
                    txn_id: txn_id.clone(),
                    reason: reason.clone(),
                    conflicting: conflicting.clone(),
                },
            ),
            KvError::TxnConflict(m) => (Code::Aborted, WireError::TxnConflict(m.clone())),
            KvError::InvalidRequest(m) => (
                Code::FailedPrecondition,
                WireError::InvalidRequest(m.clone()),
            ),
            KvError::Internal(m) => (Code::Internal, WireError::Internal(m.clone())),
        }
    }

    fn into_error(self) -> KvError {
        match self {
            WireError::Storage(s) => KvError::Storage(match s {
                WireStorageError::Rocksdb(m) => StorageError::Rocksdb(m),
                WireStorageError::Corruption { key, detail } => {
                    StorageError::Corruption { key, detail }
                }
                WireStorageError::InvalidArgument(m) => StorageError::InvalidArgument(m),
                WireStorageError::BelowGcThreshold {
                    requested,
                    threshold,
                } => StorageError::BelowGcThreshold {
                    requested,
                    threshold,
                },
                WireStorageError::BelowClosedTimestamp { ts, closed } => {
                    StorageError::BelowClosedTimestamp { ts, closed }
                }
                WireStorageError::WriteIntent {
                    key,
                    txn_id,
                    record_key,
                    write_ts,
                    value,
                } => StorageError::WriteIntent(Box::new(ldr_storage::IntentConflict {
                    key,
                    txn: ldr_storage::TxnMeta { txn_id, record_key },
                    write_ts,
                    value,
                })),
            }),
            WireError::NodeUnavailable {
                node_id,
                address,
                detail,
            } => KvError::NodeUnavailable {
                node_id,
                address,
                detail,
            },
            WireError::AmbiguousResult {
                node_id,
                address,
                detail,
            } => KvError::AmbiguousResult {
                node_id,
                address,
                detail,
            },
            WireError::RangeNotFound { range_id } => KvError::RangeNotFound { range_id },
            WireError::NotLeaseholder { range_id, hint } => {
                KvError::NotLeaseholder { range_id, hint }
            }
            WireError::NoRanges { table_id } => KvError::NoRanges { table_id },
            WireError::NotInitialized => KvError::NotInitialized,
            WireError::AlreadyInitialized => KvError::AlreadyInitialized,
            WireError::UnknownSetting(n) => KvError::UnknownSetting(n),
            WireError::InvalidSetting {
                name,
                value,
                detail,
            } => KvError::InvalidSetting {
                name,
                value,
                detail,
            },
            WireError::Clock {
                remote,
                ahead_ms,
                max_offset_ms,
            } => KvError::Clock(ClockError::RemoteTooFarAhead {
                remote,
                ahead_ms,
                max_offset_ms,
            }),
            WireError::WrongCluster { expected, got } => KvError::WrongCluster { expected, got },
            WireError::PtsNotFound(id) => KvError::PtsNotFound(id),
            WireError::Rpc(m) => KvError::Rpc(m),
            WireError::InvalidRequest(m) => KvError::InvalidRequest(m),
            WireError::TxnAborted {
                txn_id,
                reason,
                conflicting,
            } => KvError::TxnAborted {
                txn_id,
                reason,
                conflicting,
            },
            WireError::TxnConflict(m) => KvError::TxnConflict(m),
            WireError::Internal(m) => KvError::Internal(m),
        }
    }
}

/// The status a handler returns for `e`.
pub(crate) fn error_to_status(e: &KvError) -> tonic::Status {
    let (code, wire) = WireError::from_error(e);
    let details = serde_json::to_vec(&wire).expect("wire errors always serialize");
    tonic::Status::with_details(code, e.to_string(), details.into())
}

/// The error a caller sees for a failed call to `node_id` at `address`.
pub(crate) fn status_to_error(status: &tonic::Status, node_id: NodeId, address: &str) -> KvError {
    if let Ok(wire) = serde_json::from_slice::<WireError>(status.details()) {
        return wire.into_error();
    }
    match status.code() {
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::Cancelled
        | Code::Unknown
        | Code::Aborted => KvError::NodeUnavailable {
            node_id,
            address: address.to_string(),
            detail: status.message().to_string(),
        },
        code => KvError::Rpc(format!("{code:?}: {}", status.message())),
    }
}

// ---- metadata ----

pub(crate) fn set_clock(md: &mut MetadataMap, ts: Timestamp) {
    let value = MetadataValue::try_from(ts.to_decimal_string())
        .expect("decimal timestamps are valid metadata");
    md.insert(ldr_proto::metadata::CLOCK, value);
}

/// The sender's clock, if it sent one.
pub(crate) fn read_clock(md: &MetadataMap) -> Result<Option<Timestamp>> {
    let Some(value) = md.get(ldr_proto::metadata::CLOCK) else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .map_err(|_| malformed("non-ascii clock metadata"))?;
    text.parse::<Timestamp>()
        .map(Some)
        .map_err(|e| KvError::Rpc(format!("malformed clock metadata: {e}")))
}

pub(crate) fn set_cluster_id(md: &mut MetadataMap, cluster_id: &str) {
    if let Ok(value) = MetadataValue::try_from(cluster_id) {
        md.insert(ldr_proto::metadata::CLUSTER_ID, value);
    }
}

pub(crate) fn read_cluster_id(md: &MetadataMap) -> Option<String> {
    md.get(ldr_proto::metadata::CLUSTER_ID)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(value: Option<&[u8]>) -> Version {
        Version {
            ts: Timestamp::new(10, 2),
            header: ValueHeader {
                origin_id: 7,
                origin_ts: Timestamp::new(9, 1),
                omit_in_rangefeeds: true,
            },
            value: value.map(<[u8]>::to_vec),
        }
    }

    #[test]
    fn rows_round_trip_with_every_condition() {
        let conditions = [
            Condition::None,
            Condition::Expect(None),
            Condition::Expect(Some(b"old".to_vec())),
            Condition::Lww {
                expected_prev: None,
                local_origin_id: 3,
            },
            Condition::Lww {
                expected_prev: Some(None),
                local_origin_id: 3,
            },
            Condition::Lww {
                expected_prev: Some(Some(Vec::new())),
                local_origin_id: 3,
            },
        ];
        for condition in conditions {
            let row = RowWrite {
                key: b"k".to_vec(),
                value: None,
                condition,
                header: version(None).header,
                dependents: vec![
                    (b"d1".to_vec(), Some(b"x".to_vec())),
                    (b"d2".to_vec(), None),
                ],
            };
            assert_eq!(row_from_pb(row_to_pb(row.clone())).expect("valid"), row);
        }
        assert!(
            row_from_pb(pb::KvRowWrite::default()).is_err(),
            "a row needs a condition"
        );
    }

    #[test]
    fn outcomes_round_trip() {
        let outcomes = [
            RowOutcome::Written { prev: None },
            RowOutcome::Written {
                prev: Some(version(Some(b"v"))),
            },
            RowOutcome::ConditionFailed {
                actual: Some(version(None)),
            },
            RowOutcome::LwwLost {
                existing: Timestamp::new(4, 4),
            },
            RowOutcome::LwwUnexpected { actual: None },
            RowOutcome::NotAttempted,
        ];
        for o in outcomes {
            assert_eq!(outcome_from_pb(outcome_to_pb(o.clone())).expect("valid"), o);
        }
    }

    #[test]
    fn errors_survive_the_wire() {
        let errors = [
            KvError::Storage(StorageError::BelowGcThreshold {
                requested: Timestamp::new(1, 0),
                threshold: Timestamp::new(2, 0),
            }),
            KvError::Storage(StorageError::BelowClosedTimestamp {
                ts: Timestamp::new(1, 0),
                closed: Timestamp::new(2, 0),
            }),
            KvError::NodeUnavailable {
                node_id: 3,
                address: "a:1".into(),
                detail: "down".into(),
            },
            KvError::RangeNotFound { range_id: 12 },
            KvError::NotLeaseholder {
                range_id: 12,
                hint: Some(3),
            },
            KvError::NoRanges { table_id: 104 },
            KvError::NotInitialized,
            KvError::AlreadyInitialized,
            KvError::UnknownSetting("x".into()),
            KvError::InvalidSetting {
                name: "a".into(),
                value: "b".into(),
                detail: "c".into(),
            },
            KvError::Clock(ClockError::RemoteTooFarAhead {
                remote: Timestamp::new(5, 0),
                ahead_ms: 900,
                max_offset_ms: 500,
            }),
            KvError::WrongCluster {
                expected: "a".into(),
                got: "b".into(),
            },
            KvError::PtsNotFound("p".into()),
            KvError::InvalidRequest("no".into()),
            KvError::Internal("boom".into()),
        ];
        for e in errors {
            let status = error_to_status(&e);
            assert_eq!(status.message(), e.to_string());
            let back = status_to_error(&status, 9, "x:1");
            assert_eq!(back.to_string(), e.to_string());
            assert_eq!(back.is_retryable(), e.is_retryable(), "{e}");
        }
    }

    #[test]
    fn transport_failures_are_retryable_node_unavailable() {
        let status = tonic::Status::unavailable("tcp connect error");
        let e = status_to_error(&status, 2, "127.0.0.1:9");
        assert!(
            matches!(&e, KvError::NodeUnavailable { node_id: 2, .. }),
            "{e}"
        );
        assert!(e.is_retryable());
        let e = status_to_error(
            &tonic::Status::cancelled("Timeout expired"),
            2,
            "127.0.0.1:9",
        );
        assert!(e.is_retryable(), "{e}");
        let e = status_to_error(
            &tonic::Status::unimplemented("no such method"),
            2,
            "127.0.0.1:9",
        );
        assert!(matches!(e, KvError::Rpc(_)), "{e}");
    }

    #[test]
    fn clock_metadata_round_trips() {
        let mut md = MetadataMap::new();
        assert_eq!(read_clock(&md).expect("absent is fine"), None);
        set_clock(&mut md, Timestamp::new(1_732_250_000_123_456_789, 2));
        assert_eq!(
            read_clock(&md).expect("valid"),
            Some(Timestamp::new(1_732_250_000_123_456_789, 2))
        );
        set_cluster_id(&mut md, "abc");
        assert_eq!(read_cluster_id(&md).as_deref(), Some("abc"));
        md.insert(
            ldr_proto::metadata::CLOCK,
            MetadataValue::from_static("soon"),
        );
        assert!(read_clock(&md).is_err());
    }
}

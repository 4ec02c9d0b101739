//! The persisted shape of a `LOGICAL REPLICATION` job: its immutable details (payload) and its
//! progress (replicated time and the checkpointed resolved spans). Only this crate reads them
//! ([`LdrPayload::from_record`], [`LdrProgress::from_record`]); `SHOW LOGICAL REPLICATION
//! JOBS` gets its columns through the SQL layer's typed hook, which the server implements
//! with these.

use ldr_jobs::JobRecord;
use ldr_types::{ResolvedSpan, TableId, Timestamp};
use serde::{Deserialize, Serialize};

/// Apply mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Immediate,
    Validated,
}

impl Mode {
    pub fn as_str(&self) -> &'static str {
        match self {
            Mode::Immediate => "immediate",
            Mode::Validated => "validated",
        }
    }
}

/// Which deletes never reach the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Discard {
    #[default]
    Nothing,
    /// TTL deletes marked `omit_in_rangefeeds` are filtered on the source.
    TtlDeletes,
    /// Every delete is dropped (and TTL deletes are filtered on the source).
    AllDeletes,
}

/// One replicated table pair.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TablePair {
    pub source_table_id: TableId,
    pub source_name: String,
    pub destination_table_id: TableId,
    /// Fully qualified: `db.public.t`.
    pub destination_name: String,
}

/// Immutable details of an LDR job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LdrPayload {
    pub stream_id: i64,
    pub source_cluster_id: String,
    pub source_origin_id: u32,
    /// The external connection the job reads from (`external://name`).
    pub source_connection: String,
    /// The resolved source URI at creation (credentials included; never shown to users).
    pub source_uri: String,
    /// Destination table names, as `SHOW LOGICAL REPLICATION JOBS` lists them.
    pub tables: Vec<String>,
    pub pairs: Vec<TablePair>,
    /// Decimal `wall.logical`.
    pub replication_start_time: String,
    /// Whether the job starts with an initial scan (no cursor).
    pub initial_scan: bool,
    pub mode: Mode,
    pub discard: Discard,
    pub label: Option<String>,
    pub skip_schema_check: bool,
    /// "LWW" or "DLQ".
    pub conflict_resolution_type: String,
    /// The statement that created the job.
    pub command: String,
}

/// Decodes a part of a job record (`what`: "payload" or "progress" for the message).
fn decode<T: serde::de::DeserializeOwned>(v: &serde_json::Value, what: &str) -> Result<T, String> {
    serde_json::from_value(v.clone())
        .map_err(|e| format!("corrupt logical replication job {what}: {e}"))
}

impl LdrPayload {
    /// The payload of a `LOGICAL REPLICATION` job record.
    pub fn from_record(record: &JobRecord) -> Result<LdrPayload, String> {
        decode(&record.payload, "payload")
    }

    pub fn start_ts(&self) -> Timestamp {
        self.replication_start_time
            .parse()
            .unwrap_or(Timestamp::ZERO)
    }
}

/// Progress of an LDR job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct LdrProgress {
    /// Decimal `wall.logical`; `None` until the first full checkpoint (initial scan done).
    pub replicated_time: Option<String>,
    /// Every resolved span of the frontier at the last checkpoint.
    #[serde(default)]
    pub checkpoint: Vec<ResolvedSpan>,
    /// The source node addresses of the last plan.
    #[serde(default)]
    pub partition_addresses: Vec<String>,
}

impl LdrProgress {
    /// The progress of a `LOGICAL REPLICATION` job record.
    pub fn from_record(record: &JobRecord) -> Result<LdrProgress, String> {
        decode(&record.progress, "progress")
    }

    pub fn replicated_ts(&self) -> Option<Timestamp> {
        self.replicated_time.as_deref().and_then(|s| s.parse().ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_json_has_the_fields_show_reads() {
        let payload = LdrPayload {
            stream_id: 9,
            source_cluster_id: "c".into(),
            source_origin_id: 5,
            source_connection: "external://a".into(),
            source_uri: "postgresql://u:p@h:1".into(),
            tables: vec!["db.public.t".into()],
            pairs: vec![],
            replication_start_time: "1732250000123456789.0000000000".into(),
            initial_scan: true,
            mode: Mode::Immediate,
            discard: Discard::AllDeletes,
            label: None,
            skip_schema_check: false,
            conflict_resolution_type: "LWW".into(),
            command: "CREATE LOGICAL REPLICATION STREAM ...".into(),
        };
        let v = serde_json::to_value(&payload).expect("serializable");
        assert_eq!(v["tables"][0], "db.public.t");
        assert_eq!(v["conflict_resolution_type"], "LWW");
        assert_eq!(v["discard"], "all-deletes");
        assert_eq!(v["mode"], "immediate");
        assert_eq!(payload.start_ts(), Timestamp::new(1732250000123456789, 0));
        let p = LdrProgress {
            replicated_time: Some("5.0000000001".into()),
            ..Default::default()
        };
        assert_eq!(p.replicated_ts(), Some(Timestamp::new(5, 1)));
        assert_eq!(
            serde_json::to_value(&p).expect("serializable")["replicated_time"],
            "5.0000000001"
        );
    }
}

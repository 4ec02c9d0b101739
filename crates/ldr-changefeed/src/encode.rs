//! CockroachDB's JSON changefeed messages, built from decoded rows. Pure.
//!
//! - wrapped (default): `{"after": {...}, "key": [...], "updated": "…"}`, plus `"before"`
//!   with `diff`, `"topic"` with `topic_in_value`, `"mvcc_timestamp"`; a delete has
//!   `"after": null`. `"key"` is in the value for cloud storage and webhook sinks
//!   (`key_in_value`); the message key is always the primary key as a JSON array.
//! - bare: the row's columns at the top level, metadata under `"__crdb__"`.
//! - key_only: no value (sinkless changefeeds print the key).
//! - resolved: `{"resolved":"<decimal>"}` (Go's compact JSON, as CockroachDB writes it).
//!
//! Objects are sorted by key and spaced as CockroachDB's JSON (`{"a": 1, "b": [1, 2]}`);
//! timestamps are CockroachDB's decimal `wall.logical` (10 logical digits).

use ldr_types::Timestamp;
use serde_json::{Map, Value};

use crate::options::{ChangefeedOptions, Envelope};

/// One row change to encode.
#[derive(Debug, Clone)]
pub struct RowChange {
    /// The topic (table name, or `db.public.t` with `full_table_name`).
    pub topic: String,
    /// The primary key values, in index order.
    pub key: Vec<Value>,
    /// The row after the change (`None`: deleted).
    pub after: Option<Map<String, Value>>,
    /// The row before (with `diff`; `None`: it did not exist).
    pub before: Option<Map<String, Value>>,
    /// The timestamp `updated` reports (the MVCC timestamp, or the initial scan's time).
    pub updated: Timestamp,
    /// The version's MVCC timestamp.
    pub mvcc: Timestamp,
}

/// An encoded message: the key (a JSON array) and the value (`None` with `key_only`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub key: String,
    pub value: Option<String>,
}

/// Encodes row changes and resolved timestamps for one changefeed.
#[derive(Debug, Clone)]
pub struct Encoder {
    options: ChangefeedOptions,
}

impl Encoder {
    pub fn new(options: ChangefeedOptions) -> Encoder {
        Encoder { options }
    }

    pub fn encode_row(&self, row: &RowChange) -> Message {
        let o = &self.options;
        let key = Value::Array(row.key.clone());
        let key_text = ldr_sql::datum::format_json(&key);
        let mut meta = Map::new();
        if o.key_in_value {
            meta.insert("key".into(), key);
        }
        if o.topic_in_value {
            meta.insert("topic".into(), Value::String(row.topic.clone()));
        }
        if o.updated {
            meta.insert(
                "updated".into(),
                Value::String(row.updated.to_decimal_string()),
            );
        }
        if o.mvcc_timestamp {
            meta.insert(
                "mvcc_timestamp".into(),
                Value::String(row.mvcc.to_decimal_string()),
            );
        }
        let value = match o.envelope {
            Envelope::KeyOnly => None,
            Envelope::Wrapped => {
                let mut m = meta;
                m.insert(
                    "after".into(),
                    row.after.clone().map(Value::Object).unwrap_or(Value::Null),
                );
                if o.diff {
                    m.insert(
                        "before".into(),
                        row.before.clone().map(Value::Object).unwrap_or(Value::Null),
                    );
                }
                Some(ldr_sql::datum::format_json(&Value::Object(m)))
            }
            Envelope::Bare => {
                let mut m = row.after.clone().unwrap_or_default();
                if o.diff {
                    meta.insert(
                        "before".into(),
                        row.before.clone().map(Value::Object).unwrap_or(Value::Null),
                    );
                }
                if !meta.is_empty() || row.after.is_none() {
                    m.insert("__crdb__".into(), Value::Object(meta));
                }
                Some(ldr_sql::datum::format_json(&Value::Object(m)))
            }
        };
        Message {
            key: key_text,
            value,
        }
    }

    /// `{"resolved":"<decimal>"}`.
    pub fn encode_resolved(&self, ts: Timestamp) -> String {
        format!("{{\"resolved\":\"{}\"}}", ts.to_decimal_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row(after: Option<Value>, before: Option<Value>) -> RowChange {
        let obj = |v: Value| match v {
            Value::Object(m) => m,
            other => panic!("not an object: {other}"),
        };
        RowChange {
            topic: "t".into(),
            key: vec![json!(1)],
            after: after.map(obj),
            before: before.map(obj),
            updated: Timestamp::new(1_700_000_000_000_000_000, 1),
            mvcc: Timestamp::new(1_700_000_000_000_000_000, 1),
        }
    }

    #[test]
    fn wrapped_messages_as_cockroachdb_writes_them() {
        let mut o = ChangefeedOptions::default();
        let e = Encoder::new(o.clone());
        let m = e.encode_row(&row(Some(json!({"id": 1, "name": "a"})), None));
        assert_eq!(m.key, "[1]");
        assert_eq!(
            m.value.as_deref(),
            Some(r#"{"after": {"id": 1, "name": "a"}}"#)
        );
        o.key_in_value = true;
        o.updated = true;
        o.diff = true;
        let e = Encoder::new(o.clone());
        let m = e.encode_row(&row(
            Some(json!({"id": 1, "name": "b"})),
            Some(json!({"id": 1, "name": "a"})),
        ));
        assert_eq!(
            m.value.as_deref(),
            Some(
                r#"{"after": {"id": 1, "name": "b"}, "before": {"id": 1, "name": "a"}, "key": [1], "updated": "1700000000000000000.0000000001"}"#
            )
        );
        // A delete: after is null.
        let m = e.encode_row(&row(None, Some(json!({"id": 1, "name": "b"}))));
        assert_eq!(
            m.value.as_deref(),
            Some(
                r#"{"after": null, "before": {"id": 1, "name": "b"}, "key": [1], "updated": "1700000000000000000.0000000001"}"#
            )
        );
        o.topic_in_value = true;
        o.diff = false;
        o.updated = false;
        let m = Encoder::new(o).encode_row(&row(Some(json!({"id": 1})), None));
        assert_eq!(
            m.value.as_deref(),
            Some(r#"{"after": {"id": 1}, "key": [1], "topic": "t"}"#)
        );
    }

    #[test]
    fn bare_and_key_only() {
        let o = ChangefeedOptions {
            envelope: Envelope::Bare,
            updated: true,
            ..Default::default()
        };
        let m = Encoder::new(o).encode_row(&row(Some(json!({"id": 1, "v": "x"})), None));
        assert_eq!(
            m.value.as_deref(),
            Some(
                r#"{"__crdb__": {"updated": "1700000000000000000.0000000001"}, "id": 1, "v": "x"}"#
            )
        );
        let o = ChangefeedOptions {
            envelope: Envelope::KeyOnly,
            ..Default::default()
        };
        let m = Encoder::new(o).encode_row(&row(Some(json!({"id": 1})), None));
        assert_eq!((m.key.as_str(), m.value), ("[1]", None));
    }

    #[test]
    fn resolved() {
        let e = Encoder::new(ChangefeedOptions::default());
        assert_eq!(
            e.encode_resolved(Timestamp::new(1_700_000_000_000_000_000, 0)),
            r#"{"resolved":"1700000000000000000.0000000000"}"#
        );
    }
}

//! The sink of a sinkless changefeed (`CREATE CHANGEFEED FOR t WITH …` without `INTO`): its
//! messages become the statement's `table, key, value` rows, as CockroachDB's core
//! changefeed returns them (a resolved message: `NULL, NULL, {"resolved":…}`). Bounded: past
//! [`COLLECTED_BYTES_MAX`] the statement fails instead of holding the node's memory.

use std::sync::Arc;

use ldr_types::Timestamp;
use parking_lot::Mutex;

use super::{Sink, SinkError};
use crate::encode::Message;

/// The most message bytes one sinkless changefeed may return.
pub const COLLECTED_BYTES_MAX: usize = 64 << 20;

/// The rows collected so far.
#[derive(Debug, Default)]
pub struct Collected {
    /// `(table, key, value)`.
    pub rows: Vec<(Option<String>, Option<String>, Option<String>)>,
    pub bytes: usize,
}

impl Collected {
    fn push(
        &mut self,
        row: (Option<String>, Option<String>, Option<String>),
    ) -> Result<(), SinkError> {
        let n = [&row.0, &row.1, &row.2]
            .iter()
            .map(|v| v.as_ref().map_or(0, String::len))
            .sum::<usize>();
        if self.bytes + n > COLLECTED_BYTES_MAX {
            return Err(SinkError::Permanent(format!(
                "sinkless changefeed result exceeds {} MiB; use a sink (INTO 'nodelocal://…') or a narrower end_time",
                COLLECTED_BYTES_MAX >> 20
            )));
        }
        self.bytes += n;
        self.rows.push(row);
        Ok(())
    }
}

/// A sink appending to shared [`Collected`] rows.
pub struct CollectSink {
    pub collected: Arc<Mutex<Collected>>,
}

#[async_trait::async_trait]
impl Sink for CollectSink {
    async fn emit_row(
        &mut self,
        topic: &str,
        _schema_version: u64,
        message: &Message,
        _mvcc: Timestamp,
    ) -> Result<(), SinkError> {
        self.collected.lock().push((
            Some(topic.to_string()),
            Some(message.key.clone()),
            message.value.clone(),
        ))
    }

    async fn flush(&mut self, _frontier: Timestamp) -> Result<(), SinkError> {
        Ok(())
    }

    async fn emit_resolved(&mut self, payload: &str, _ts: Timestamp) -> Result<(), SinkError> {
        self.collected
            .lock()
            .push((None, None, Some(payload.to_string())))
    }

    fn flush_per_batch(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn rows_and_the_memory_bound() {
        let collected = Arc::new(Mutex::new(Collected::default()));
        let mut sink = CollectSink {
            collected: collected.clone(),
        };
        let m = Message {
            key: "[1]".into(),
            value: Some("{}".into()),
        };
        sink.emit_row("t", 1, &m, Timestamp::ZERO)
            .await
            .expect("row");
        sink.emit_resolved("{\"resolved\":\"1.0000000000\"}", Timestamp::ZERO)
            .await
            .expect("resolved");
        assert_eq!(
            collected.lock().rows,
            vec![
                (Some("t".into()), Some("[1]".into()), Some("{}".into())),
                (None, None, Some("{\"resolved\":\"1.0000000000\"}".into())),
            ]
        );
        collected.lock().bytes = COLLECTED_BYTES_MAX;
        let e = sink
            .emit_row("t", 1, &m, Timestamp::ZERO)
            .await
            .expect_err("bound");
        assert!(
            !e.is_retryable() && e.to_string().contains("exceeds"),
            "{e}"
        );
    }
}

//! The sink of a sinkless changefeed (`CREATE CHANGEFEED FOR t WITH …` without `INTO`): the
//! SQL client. Each message becomes a `table, key, value` row of the statement, sent as it
//! is emitted, as CockroachDB's core changefeed streams them (a resolved message:
//! `NULL, NULL, {"resolved":…}`). The rows go through the statement's bounded
//! [`RowSender`]: a client that reads slowly makes `emit_row` wait, and with it the
//! changefeed (nothing is buffered beyond the channel); a client that went away makes it
//! fail, which ends the changefeed.

use ldr_sql::Datum;
use ldr_sql::exec::RowSender;
use ldr_types::Timestamp;

use super::{Sink, SinkError};
use crate::encode::Message;

/// Rows waiting between a sinkless changefeed and its client's connection.
pub const CLIENT_ROWS_BUFFERED_MAX: usize = 128;

/// A sink sending rows to the SQL client of a sinkless changefeed.
pub struct ClientSink {
    pub rows: RowSender,
}

/// The error of a client that stopped reading (it disconnected or canceled).
fn gone() -> SinkError {
    SinkError::Permanent("the SQL client of the sinkless changefeed went away".into())
}

fn text(v: Option<&str>) -> Datum {
    v.map(|t| Datum::String(t.to_string()))
        .unwrap_or(Datum::Null)
}

impl ClientSink {
    async fn send(&self, row: Vec<Datum>) -> Result<(), SinkError> {
        self.rows.send(Ok(row)).await.map_err(|_| gone())
    }
}

#[async_trait::async_trait]
impl Sink for ClientSink {
    async fn emit_row(
        &mut self,
        topic: &str,
        _schema_version: u64,
        message: &Message,
        _mvcc: Timestamp,
    ) -> Result<(), SinkError> {
        self.send(vec![
            text(Some(topic)),
            text(Some(&message.key)),
            text(message.value.as_deref()),
        ])
        .await
    }

    /// Every row already went to the connection (which flushes it to the client as soon
    /// as no other row waits).
    async fn flush(&mut self, _frontier: Timestamp) -> Result<(), SinkError> {
        if self.rows.is_closed() {
            return Err(gone());
        }
        Ok(())
    }

    async fn emit_resolved(&mut self, payload: &str, _ts: Timestamp) -> Result<(), SinkError> {
        self.send(vec![Datum::Null, Datum::Null, text(Some(payload))])
            .await
    }

    fn flush_per_batch(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ldr_sql::exec::RowStream;

    #[tokio::test]
    async fn rows_backpressure_and_a_client_that_left() {
        let (tx, mut rows) = RowStream::channel(2);
        let mut sink = ClientSink { rows: tx };
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
        // The channel is full: the next row waits for the client.
        let waiting = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            sink.emit_row("t", 1, &m, Timestamp::ZERO),
        )
        .await;
        assert!(waiting.is_err(), "a full channel blocks the changefeed");
        let row = |t: &str, k: &str, v: &str| {
            vec![
                Datum::String(t.into()),
                Datum::String(k.into()),
                Datum::String(v.into()),
            ]
        };
        assert_eq!(
            rows.next().await.expect("row").expect("ok"),
            row("t", "[1]", "{}")
        );
        assert_eq!(
            rows.next().await.expect("row").expect("ok"),
            vec![
                Datum::Null,
                Datum::Null,
                Datum::String("{\"resolved\":\"1.0000000000\"}".into())
            ]
        );
        // A delete: no value.
        let delete = Message {
            key: "[2]".into(),
            value: None,
        };
        sink.emit_row("t", 1, &delete, Timestamp::ZERO)
            .await
            .expect("row");
        assert_eq!(
            rows.next().await.expect("row").expect("ok"),
            vec![
                Datum::String("t".into()),
                Datum::String("[2]".into()),
                Datum::Null
            ]
        );
        // The client went away: the changefeed fails (not retryable) instead of waiting.
        drop(rows);
        let e = sink
            .emit_row("t", 1, &m, Timestamp::ZERO)
            .await
            .expect_err("gone");
        assert!(
            !e.is_retryable() && e.to_string().contains("went away"),
            "{e}"
        );
        assert!(sink.flush(Timestamp::ZERO).await.is_err());
    }
}

//! [`RowStream`]: the rows of a statement that keeps producing them after it returns (a
//! sinkless changefeed streams its messages for as long as the client reads them). Every
//! other statement returns its rows whole in [`super::QueryResult::rows`].
//!
//! The producer holds a [`RowSender`] on a bounded channel: when the client reads slowly,
//! `send` waits (backpressure) instead of buffering. The producer ends the stream by
//! dropping its sender (the statement completed) or by sending an error (reported after the
//! rows so far). The consumer (the wire protocol) ends it by dropping the stream: the
//! producer sees [`RowSender::closed`] and stops (the client went away or canceled).
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! use ldr_sql::Datum;
//! use ldr_sql::exec::RowStream;
//! let (tx, mut rows) = RowStream::channel(2);
//! tokio::spawn(async move {
//!     for i in 0..3 {
//!         // The third send waits until the consumer took the first row.
//!         if tx.send(Ok(vec![Datum::Int(i)])).await.is_err() {
//!             return; // the consumer dropped the stream
//!         }
//!     }
//! });
//! let mut n = 0;
//! while let Some(row) = rows.next().await {
//!     assert_eq!(row.unwrap(), vec![Datum::Int(n)]);
//!     n += 1;
//! }
//! assert_eq!(n, 3);
//! # });
//! ```

use std::fmt;
use std::time::Instant;

use tokio::sync::mpsc;

use crate::datum::Datum;
use crate::error::Result;

/// The producer's end of a [`RowStream`].
pub type RowSender = mpsc::Sender<Result<Vec<Datum>>>;

/// Rows that arrive while the statement runs.
pub struct RowStream {
    rows: mpsc::Receiver<Result<Vec<Datum>>>,
    /// `statement_timeout` of the statement that made the stream: past it the wire protocol
    /// stops reading and reports 57014.
    deadline: Option<Instant>,
}

impl fmt::Debug for RowStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RowStream")
            .field("buffered", &self.rows.len())
            .field("deadline", &self.deadline)
            .finish()
    }
}

impl RowStream {
    /// A stream and its sender; at most `rows_buffered_max` rows wait between them.
    pub fn channel(rows_buffered_max: usize) -> (RowSender, RowStream) {
        let (tx, rx) = mpsc::channel(rows_buffered_max.max(1));
        (
            tx,
            RowStream {
                rows: rx,
                deadline: None,
            },
        )
    }

    /// The next row, waiting for it; `None` once the producer finished.
    pub async fn next(&mut self) -> Option<Result<Vec<Datum>>> {
        self.rows.recv().await
    }

    /// The next row if one is waiting now (`Ok(None)`: none yet; `Err(())`: the stream ended).
    pub(crate) fn try_next(&mut self) -> std::result::Result<Option<Result<Vec<Datum>>>, ()> {
        match self.rows.try_recv() {
            Ok(row) => Ok(Some(row)),
            Err(mpsc::error::TryRecvError::Empty) => Ok(None),
            Err(mpsc::error::TryRecvError::Disconnected) => Err(()),
        }
    }

    pub(crate) fn set_deadline(&mut self, deadline: Option<Instant>) {
        self.deadline = deadline;
    }

    /// When the statement times out (`statement_timeout`), if it does.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn backpressure_end_and_drop() {
        let (tx, mut rows) = RowStream::channel(1);
        tx.send(Ok(vec![Datum::Int(1)]))
            .await
            .expect("room for one");
        // Full: a second row waits for the consumer.
        assert!(tx.try_send(Ok(vec![Datum::Int(2)])).is_err(), "bounded");
        assert_eq!(
            rows.try_next().expect("open").expect("a row").expect("ok"),
            vec![Datum::Int(1)]
        );
        assert!(rows.try_next().expect("open").is_none(), "nothing waits");
        tx.send(Ok(vec![Datum::Int(2)])).await.expect("room again");
        drop(tx);
        assert_eq!(
            rows.next().await.expect("a row").expect("ok"),
            vec![Datum::Int(2)]
        );
        assert!(rows.next().await.is_none(), "the producer finished");
        assert!(rows.try_next().is_err(), "ended");

        // The consumer going away is what stops a producer.
        let (tx, rows) = RowStream::channel(4);
        assert!(!tx.is_closed());
        drop(rows);
        tx.closed().await;
        assert!(tx.send(Ok(vec![])).await.is_err());
    }
}

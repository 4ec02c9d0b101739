//! Streamed results over the wire (a sinkless changefeed's rows), against tokio-postgres on
//! an ephemeral loopback listener, with a stand-in for the changefeed crate that hands each
//! statement's row sender to the test, so the test decides when rows are emitted:
//! - each row reaches the client as it is emitted (extended and simple protocol), resolved
//!   rows carry NULL table and key, and the statement ends when the producer does;
//! - an error after rows is reported after them, and the connection stays usable;
//! - a client that does not read blocks the producer (its bounded channel fills) and then
//!   gets every row in order;
//! - a CancelRequest (57014), `statement_timeout` and a client that disconnects while the feed
//!   is idle all stop the producer (its sender sees the stream closed);
//! - inside an explicit transaction the statement is refused (25001).
mod common;

use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use common::{TestNode, listen};
use futures::StreamExt;
use ldr_sql::exec::{ChangefeedRequest, ChangefeedStatements, RowSender, RowStream};
use ldr_sql::{Datum, SqlError, sqlstate};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, SimpleQueryMessage};

/// How long any one expected event may take.
const WAIT: Duration = Duration::from_secs(10);
/// Rows waiting between the stand-in producer and the connection.
const CHANNEL_ROWS: usize = 4;

/// Hands each sinkless changefeed's row sender to the test.
struct Feeds {
    started: mpsc::UnboundedSender<RowSender>,
}

#[async_trait::async_trait]
impl ChangefeedStatements for Feeds {
    async fn create_changefeed(&self, _: ChangefeedRequest) -> ldr_sql::Result<i64> {
        Err(SqlError::unsupported(
            "only sinkless changefeeds in this test",
        ))
    }

    async fn sinkless_changefeed(&self, _: ChangefeedRequest) -> ldr_sql::Result<RowStream> {
        let (tx, rows) = RowStream::channel(CHANNEL_ROWS);
        self.started
            .send(tx)
            .map_err(|_| SqlError::internal("the test is gone"))?;
        Ok(rows)
    }
}

struct Setup {
    _node: TestNode,
    port: u16,
    started: mpsc::UnboundedReceiver<RowSender>,
}

impl Setup {
    async fn new() -> Setup {
        let node = TestNode::start().await;
        let (tx, started) = mpsc::unbounded_channel();
        node.server
            .set_changefeed_statements(Arc::new(Feeds { started: tx }));
        let port = listen(node.server.clone()).await;
        let client = connect(port).await;
        client
            .batch_execute("CREATE TABLE t (id INT8 PRIMARY KEY)")
            .await
            .expect("create table");
        Setup {
            _node: node,
            port,
            started,
        }
    }

    /// The row sender of the changefeed statement that started next.
    async fn feed(&mut self) -> RowSender {
        timeout(WAIT, self.started.recv())
            .await
            .expect("the statement reached the changefeed hook in time")
            .expect("hook alive")
    }
}

async fn connect(port: u16) -> tokio_postgres::Client {
    connect_with_task(port).await.0
}

/// A client and the task that owns its socket (aborting it closes the socket, as a client
/// process that exits does: dropping only the client leaves tokio-postgres waiting for the
/// never-ending statement's response).
async fn connect_with_task(port: u16) -> (tokio_postgres::Client, tokio::task::JoinHandle<()>) {
    let (client, conn) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user=root dbname=defaultdb"),
        NoTls,
    )
    .await
    .expect("connects");
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    (client, task)
}

fn no_params() -> impl ExactSizeIterator<Item = &'static (dyn ToSql + Sync)> {
    std::iter::empty()
}

fn message(table: Option<&str>, key: Option<&str>, value: &str) -> Vec<Datum> {
    let text = |v: Option<&str>| v.map_or(Datum::Null, |v| Datum::String(v.into()));
    vec![text(table), text(key), text(Some(value))]
}

fn code(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.code().code().to_string())
        .unwrap_or_else(|| format!("not a db error: {e}"))
}

/// The server's message of an error.
fn text(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_else(|| format!("not a db error: {e}"))
}

/// The `(table, key, value)` of a row.
fn cells(row: &tokio_postgres::Row) -> (Option<String>, Option<String>, Option<String>) {
    (row.get(0), row.get(1), row.get(2))
}

async fn still_usable(client: &tokio_postgres::Client) {
    let row = timeout(WAIT, client.query_one("SELECT 1", &[]))
        .await
        .expect("answers in time")
        .expect("the connection is usable afterwards");
    assert_eq!(row.get::<_, i64>(0), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_reach_the_client_as_they_are_emitted() {
    let mut setup = Setup::new().await;
    let client = connect(setup.port).await;

    // Extended protocol (tokio-postgres query_raw, psycopg's stream()): the columns first,
    // then each row as soon as it is emitted. A row held in the connection's buffer would
    // never arrive here: nothing else is sent until the test emits the next one.
    let stream = client
        .query_raw("CREATE CHANGEFEED FOR TABLE t", no_params())
        .await
        .expect("the changefeed starts");
    let feed = setup.feed().await;
    let mut rows = pin!(stream);
    let emitted = [
        message(Some("t"), Some("[1]"), r#"{"after": {"id": 1}}"#),
        message(
            None,
            None,
            r#"{"resolved":"1700000000000000000.0000000000"}"#,
        ),
        message(Some("t"), Some("[1]"), r#"{"after": null}"#),
    ];
    for (i, m) in emitted.iter().enumerate() {
        feed.send(Ok(m.clone())).await.expect("client reading");
        let row = timeout(WAIT, rows.next())
            .await
            .unwrap_or_else(|_| panic!("row {i} did not reach the client while the feed ran"))
            .expect("a row")
            .expect("no error");
        if i == 0 {
            let names: Vec<&str> = row.columns().iter().map(|c| c.name()).collect();
            assert_eq!(names, ["table", "key", "value"]);
        }
        let expected = (m[0].to_text(0), m[1].to_text(0), m[2].to_text(0));
        assert_eq!(cells(&row), expected, "row {i}");
    }
    // The producer finishing ends the statement, with the row count in its tag.
    drop(feed);
    let end = timeout(WAIT, rows.next()).await.expect("ends in time");
    assert!(end.is_none(), "no more rows: {end:?}");
    assert_eq!(rows.rows_affected(), Some(3));
    still_usable(&client).await;

    // Simple protocol (psql): RowDescription, then each row as it comes, CommandComplete.
    let stream = client
        .simple_query_raw("CREATE CHANGEFEED FOR TABLE t WITH resolved")
        .await
        .expect("the changefeed starts");
    let feed = setup.feed().await;
    let mut messages = pin!(stream);
    feed.send(Ok(message(Some("t"), Some("[2]"), "{}")))
        .await
        .expect("client reading");
    let row = loop {
        match timeout(WAIT, messages.next())
            .await
            .expect("the row reached the client while the feed ran")
            .expect("a message")
            .expect("no error")
        {
            SimpleQueryMessage::RowDescription(_) => continue,
            SimpleQueryMessage::Row(row) => break row,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(
        (row.get(0), row.get(1), row.get(2)),
        (Some("t"), Some("[2]"), Some("{}"))
    );
    drop(feed);
    match timeout(WAIT, messages.next()).await.expect("ends in time") {
        Some(Ok(SimpleQueryMessage::CommandComplete(n))) => assert_eq!(n, 1),
        other => panic!("expected CommandComplete: {other:?}"),
    }
    still_usable(&client).await;

    // Inside an explicit transaction block it is refused, as any CREATE CHANGEFEED.
    client.batch_execute("BEGIN").await.expect("begin");
    let e = client
        .simple_query("CREATE CHANGEFEED FOR TABLE t")
        .await
        .expect_err("refused in a transaction");
    assert_eq!(code(&e), sqlstate::ACTIVE_SQL_TRANSACTION, "{e}");
    client.batch_execute("ROLLBACK").await.expect("rollback");
    assert!(setup.started.try_recv().is_err(), "no feed was started");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_after_rows_is_reported_after_them() {
    let mut setup = Setup::new().await;
    let client = connect(setup.port).await;
    let failure = || {
        SqlError::new(
            sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE,
            "CHANGEFEED cannot target a dropped table (table 104)",
        )
    };

    // Extended protocol: the rows so far, then the ErrorResponse.
    let stream = client
        .query_raw("CREATE CHANGEFEED FOR TABLE t", no_params())
        .await
        .expect("starts");
    let feed = setup.feed().await;
    feed.send(Ok(message(Some("t"), Some("[1]"), "{}")))
        .await
        .expect("client reading");
    feed.send(Err(failure())).await.expect("client reading");
    let mut rows = pin!(stream);
    let first = timeout(WAIT, rows.next()).await.expect("in time");
    assert!(matches!(first, Some(Ok(_))), "the row first: {first:?}");
    let e = timeout(WAIT, rows.next())
        .await
        .expect("in time")
        .expect("an item")
        .expect_err("then the error");
    assert_eq!(code(&e), sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE, "{e}");
    assert!(text(&e).contains("dropped table"), "{e}");
    still_usable(&client).await;

    // Simple protocol.
    let stream = client
        .simple_query_raw("CREATE CHANGEFEED FOR TABLE t")
        .await
        .expect("starts");
    let feed = setup.feed().await;
    feed.send(Ok(message(Some("t"), Some("[1]"), "{}")))
        .await
        .expect("client reading");
    feed.send(Err(failure())).await.expect("client reading");
    let mut messages = pin!(stream);
    let mut rows_seen = 0;
    let e = loop {
        match timeout(WAIT, messages.next())
            .await
            .expect("in time")
            .expect("an item")
        {
            Ok(SimpleQueryMessage::Row(_)) => rows_seen += 1,
            Ok(SimpleQueryMessage::RowDescription(_)) => {}
            Ok(other) => panic!("unexpected {other:?}"),
            Err(e) => break e,
        }
    };
    assert_eq!(rows_seen, 1, "the row came before the error");
    assert_eq!(code(&e), sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE, "{e}");
    still_usable(&client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_read_blocks_the_producer() {
    let mut setup = Setup::new().await;
    let client = connect(setup.port).await;
    // 32 MiB of rows: far more than the socket buffers and the client's queue hold, so the
    // producer can only finish if the client reads.
    const ROWS: usize = 2048;
    let value = "x".repeat(16 << 10);
    let stream = client
        .query_raw("CREATE CHANGEFEED FOR TABLE t", no_params())
        .await
        .expect("starts");
    let feed = setup.feed().await;
    let observer = feed.clone();
    let producer = tokio::spawn(async move {
        for i in 0..ROWS {
            let m = message(Some("t"), Some(&format!("[{i}]")), &value);
            if feed.send(Ok(m)).await.is_err() {
                return i;
            }
        }
        ROWS
    });
    // The client reads nothing: the producer's channel fills up and stays full (its sends
    // wait), instead of the node buffering the rows.
    let deadline = tokio::time::Instant::now() + WAIT;
    while observer.capacity() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the row channel never filled: rows are buffered somewhere unbounded"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!producer.is_finished(), "the producer is blocked");
    drop(observer);
    // Reading drains it: every row, in order.
    let mut rows = pin!(stream);
    for i in 0..ROWS {
        let row = timeout(WAIT, rows.next())
            .await
            .expect("rows keep coming")
            .expect("a row")
            .expect("no error");
        assert_eq!(row.get::<_, Option<String>>(1), Some(format!("[{i}]")));
    }
    let sent = timeout(WAIT, producer)
        .await
        .expect("the producer finished")
        .expect("no panic");
    assert_eq!(sent, ROWS);
    assert!(timeout(WAIT, rows.next()).await.expect("ends").is_none());
    still_usable(&client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_timeout_and_disconnect_stop_the_producer() {
    let mut setup = Setup::new().await;

    // A CancelRequest: 57014 after the rows so far; the producer sees its stream closed.
    let client = connect(setup.port).await;
    let stream = client
        .query_raw("CREATE CHANGEFEED FOR TABLE t", no_params())
        .await
        .expect("starts");
    let feed = setup.feed().await;
    feed.send(Ok(message(Some("t"), Some("[1]"), "{}")))
        .await
        .expect("client reading");
    let mut rows = pin!(stream);
    let first = timeout(WAIT, rows.next()).await.expect("in time");
    assert!(matches!(first, Some(Ok(_))), "{first:?}");
    client
        .cancel_token()
        .cancel_query(NoTls)
        .await
        .expect("cancel request sent");
    let e = timeout(WAIT, rows.next())
        .await
        .expect("the cancel ends the statement in time")
        .expect("an item")
        .expect_err("canceled");
    assert_eq!(code(&e), sqlstate::QUERY_CANCELED, "{e}");
    assert!(text(&e) == "query execution canceled", "{e}");
    timeout(WAIT, feed.closed())
        .await
        .expect("the producer was told to stop");
    still_usable(&client).await;

    // statement_timeout: the same, with PostgreSQL's timeout text.
    client
        .batch_execute("SET statement_timeout = '300ms'")
        .await
        .expect("set");
    let stream = client
        .query_raw("CREATE CHANGEFEED FOR TABLE t", no_params())
        .await
        .expect("starts");
    let feed = setup.feed().await;
    let mut rows = pin!(stream);
    let e = timeout(WAIT, rows.next())
        .await
        .expect("the timeout ends the statement")
        .expect("an item")
        .expect_err("timed out");
    assert_eq!(code(&e), sqlstate::QUERY_CANCELED, "{e}");
    assert!(text(&e).contains("statement timeout"), "{e}");
    timeout(WAIT, feed.closed())
        .await
        .expect("the producer was told to stop");
    client
        .batch_execute("RESET statement_timeout")
        .await
        .expect("reset");
    still_usable(&client).await;
    drop(client);

    // A client that goes away while the feed is idle (nothing to write, its Sync still
    // unread in the socket): the producer is told to stop all the same.
    for protocol in ["extended", "simple"] {
        let (client, socket) = connect_with_task(setup.port).await;
        if protocol == "extended" {
            let stream = client
                .query_raw("CREATE CHANGEFEED FOR TABLE t", no_params())
                .await
                .expect("starts");
            drop(stream);
        } else {
            let stream = client
                .simple_query_raw("CREATE CHANGEFEED FOR TABLE t")
                .await
                .expect("starts");
            drop(stream);
        }
        let feed = setup.feed().await;
        assert!(
            !feed.is_closed(),
            "{protocol}: the feed runs while connected"
        );
        socket.abort();
        drop(client);
        timeout(WAIT, feed.closed())
            .await
            .unwrap_or_else(|_| panic!("{protocol}: a disconnect did not stop the producer"));
    }
}

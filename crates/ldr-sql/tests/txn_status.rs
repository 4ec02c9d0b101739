//! Transaction status as PostgreSQL reports it, read byte by byte from ReadyForQuery, and
//! drivers' retry loops under contention:
//! - a raw protocol client (simple and extended protocol) checks the status after every
//!   statement: a failed COMMIT ends the block (`I`); a failed statement inside a block
//!   leaves it aborted (`E`, 25P02 for everything but ROLLBACK) until ROLLBACK; COMMIT of an
//!   aborted block answers ROLLBACK; COMMIT/ROLLBACK outside a block warn (25P01) and
//!   succeed; nested savepoints; CockroachDB's retry protocol (`SAVEPOINT cockroach_restart`,
//!   `ROLLBACK TO SAVEPOINT cockroach_restart` restarts, `RELEASE` commits);
//! - tokio-postgres and psycopg 3 bank transfers from several workers on contended accounts:
//!   every transfer commits or retries on 40001, none fails for protocol reasons, the total
//!   holds;
//! - psql's `ON_ERROR_ROLLBACK`, which relies on the status byte to place its savepoints.
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{TestNode, listen, start_cluster};
use ldr_sql::exec::SqlServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long one message exchange may take.
const REPLY_DEADLINE: Duration = Duration::from_secs(30);

// ---- a raw protocol client ----

/// What the server answered up to and including ReadyForQuery.
#[derive(Debug, Default)]
struct Reply {
    /// CommandComplete tags.
    tags: Vec<String>,
    /// SQLSTATEs of ErrorResponses.
    errors: Vec<String>,
    /// `(severity, SQLSTATE)` of NoticeResponses.
    notices: Vec<(String, String)>,
    /// DataRow values as text.
    rows: Vec<Vec<Option<String>>>,
    /// The ReadyForQuery status byte: `I`, `T` or `E`.
    status: char,
}

impl Reply {
    /// Asserts the status and the errors (by SQLSTATE) of a reply.
    #[track_caller]
    fn expect(&self, what: &str, status: char, errors: &[&str]) -> &Reply {
        assert_eq!(
            (self.status, self.errors.as_slice()),
            (
                status,
                errors
                    .iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .as_slice()
            ),
            "{what}: expected status {status} and errors {errors:?}, got {self:?}"
        );
        self
    }

    #[track_caller]
    fn tag(&self, what: &str, tag: &str) -> &Reply {
        assert_eq!(
            self.tags.last().map(String::as_str),
            Some(tag),
            "{what}: expected tag {tag}, got {self:?}"
        );
        self
    }

    #[track_caller]
    fn no_transaction_warning(&self, what: &str) -> &Reply {
        assert_eq!(
            self.notices,
            vec![("WARNING".to_string(), "25P01".to_string())],
            "{what}: expected PostgreSQL's warning, got {self:?}"
        );
        self
    }

    fn int(&self) -> i64 {
        self.rows
            .first()
            .and_then(|r| r.first().cloned().flatten())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("expected one integer, got {self:?}"))
    }
}

/// A connection speaking the wire protocol by hand, so that tests read the ReadyForQuery
/// status byte itself rather than a driver's interpretation of it.
struct Raw {
    socket: TcpStream,
}

impl Raw {
    async fn connect(port: u16) -> Raw {
        let socket = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connects");
        let mut raw = Raw { socket };
        let mut body = Vec::new();
        body.extend_from_slice(&196_608i32.to_be_bytes()); // protocol 3.0
        for s in ["user", "root", "database", "defaultdb", ""] {
            body.extend_from_slice(s.as_bytes());
            body.push(0);
        }
        let mut msg = ((body.len() + 4) as i32).to_be_bytes().to_vec();
        msg.extend_from_slice(&body);
        raw.socket.write_all(&msg).await.expect("startup sent");
        let reply = raw.read_until_ready().await;
        assert_eq!(reply.status, 'I', "after startup: {reply:?}");
        raw
    }

    async fn send(&mut self, kind: u8, body: &[u8]) {
        let mut msg = vec![kind];
        msg.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        msg.extend_from_slice(body);
        self.socket.write_all(&msg).await.expect("sent");
    }

    async fn read_message(&mut self) -> (u8, Vec<u8>) {
        let mut head = [0u8; 5];
        self.socket
            .read_exact(&mut head)
            .await
            .expect("message header");
        let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]);
        let mut body = vec![0u8; (len as usize).saturating_sub(4)];
        self.socket
            .read_exact(&mut body)
            .await
            .expect("message body");
        (head[0], body)
    }

    async fn read_until_ready(&mut self) -> Reply {
        tokio::time::timeout(REPLY_DEADLINE, async {
            let mut reply = Reply::default();
            loop {
                let (kind, body) = self.read_message().await;
                match kind {
                    b'C' => reply.tags.push(cstr(&body)),
                    b'E' => reply.errors.push(field(&body, b'C')),
                    b'N' => reply.notices.push((field(&body, b'S'), field(&body, b'C'))),
                    b'D' => reply.rows.push(data_row(&body)),
                    b'Z' => {
                        reply.status = body.first().map(|b| *b as char).unwrap_or('?');
                        return reply;
                    }
                    _ => {}
                }
            }
        })
        .await
        .expect("ReadyForQuery in time")
    }

    /// A simple query.
    async fn simple(&mut self, sql: &str) -> Reply {
        let mut body = sql.as_bytes().to_vec();
        body.push(0);
        self.send(b'Q', &body).await;
        self.read_until_ready().await
    }

    /// One statement through the extended protocol: Parse, Bind, Execute, Sync (unnamed).
    async fn extended(&mut self, sql: &str) -> Reply {
        let mut parse = vec![0u8];
        parse.extend_from_slice(sql.as_bytes());
        parse.extend_from_slice(&[0, 0, 0]);
        self.send(b'P', &parse).await;
        self.send(b'B', &[0, 0, 0, 0, 0, 0, 0, 0]).await;
        self.send(b'E', &[0, 0, 0, 0, 0]).await;
        self.send(b'S', &[]).await;
        self.read_until_ready().await
    }

    /// Bind to a statement that does not exist, then Sync (an error pgwire reports itself).
    async fn bind_unknown(&mut self) -> Reply {
        self.send(b'B', b"\0nope\0\0\0\0\0\0\0").await;
        self.send(b'S', &[]).await;
        self.read_until_ready().await
    }
}

fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|c| *c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// A field of an ErrorResponse or NoticeResponse.
fn field(body: &[u8], code: u8) -> String {
    let mut rest = body;
    while let Some((&kind, tail)) = rest.split_first() {
        if kind == 0 {
            break;
        }
        let value = cstr(tail);
        if kind == code {
            return value;
        }
        rest = tail.get(value.len() + 1..).unwrap_or(&[]);
    }
    String::new()
}

fn data_row(body: &[u8]) -> Vec<Option<String>> {
    let mut out = Vec::new();
    let mut rest = body.get(2..).unwrap_or(&[]);
    while rest.len() >= 4 {
        let len = i32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
        rest = &rest[4..];
        if len < 0 {
            out.push(None);
        } else {
            let n = (len as usize).min(rest.len());
            out.push(Some(String::from_utf8_lossy(&rest[..n]).into_owned()));
            rest = &rest[n..];
        }
    }
    out
}

/// A node serving SQL, with `bank (id, balance)` holding accounts 1 and 2 at 100 each.
async fn bank_node() -> (TestNode, u16) {
    let node = TestNode::start().await;
    let port = listen(node.server.clone()).await;
    let mut c = Raw::connect(port).await;
    c.simple(
        "CREATE TABLE bank (id INT8 PRIMARY KEY, balance INT8 NOT NULL); \
         INSERT INTO bank VALUES (1, 100), (2, 100)",
    )
    .await
    .expect("setup", 'I', &[]);
    (node, port)
}

// ---- status sequences ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statuses_outside_and_inside_blocks_follow_postgres() {
    let (_node, port) = bank_node().await;
    let mut c = Raw::connect(port).await;

    // COMMIT and ROLLBACK outside a block: PostgreSQL's warning, success, still idle.
    c.simple("ROLLBACK")
        .await
        .expect("rollback outside", 'I', &[])
        .tag("rollback outside", "ROLLBACK")
        .no_transaction_warning("rollback outside");
    c.simple("COMMIT")
        .await
        .expect("commit outside", 'I', &[])
        .tag("commit outside", "COMMIT")
        .no_transaction_warning("commit outside");
    // Savepoint statements outside a block are errors, and leave the connection idle.
    c.simple("SAVEPOINT a")
        .await
        .expect("savepoint outside", 'I', &["25P01"]);
    c.simple("RELEASE SAVEPOINT a")
        .await
        .expect("release outside", 'I', &["25P01"]);
    c.simple("ROLLBACK TO SAVEPOINT a")
        .await
        .expect("rollback to outside", 'I', &["25P01"]);
    // A failed statement outside a block leaves it idle.
    c.simple("SELECT * FROM nope")
        .await
        .expect("error outside", 'I', &["42P01"]);

    // Inside a block: a failed statement aborts it; everything but ROLLBACK is refused.
    c.simple("BEGIN").await.expect("begin", 'T', &[]);
    c.simple("SELECT balance FROM bank WHERE id = 1")
        .await
        .expect("read", 'T', &[]);
    c.simple("SELECT * FROM nope")
        .await
        .expect("error inside", 'E', &["42P01"]);
    c.simple("SELECT 1")
        .await
        .expect("after the error", 'E', &["25P02"]);
    c.simple("SAVEPOINT a")
        .await
        .expect("savepoint when aborted", 'E', &["25P02"]);
    c.simple("ROLLBACK")
        .await
        .expect("rollback", 'I', &[])
        .tag("rollback", "ROLLBACK");

    // COMMIT of an aborted block rolls back and says so.
    c.simple("BEGIN; INSERT INTO bank VALUES (3, 0)")
        .await
        .expect("insert", 'T', &[]);
    c.simple("SELECT 1/0")
        .await
        .expect("division", 'E', &["22012"]);
    c.simple("COMMIT")
        .await
        .expect("commit of aborted", 'I', &[])
        .tag("commit of aborted", "ROLLBACK");
    let n = c.simple("SELECT count(*) FROM bank WHERE id = 3").await;
    assert_eq!(n.int(), 0, "the aborted block's insert was not applied");

    // An error in the middle of a multi-statement string inside a block aborts it too.
    c.simple("BEGIN; SELECT 1; SELECT * FROM nope; SELECT 2")
        .await
        .expect("batch", 'E', &["42P01"]);
    c.simple("ROLLBACK").await.expect("rollback", 'I', &[]);
    // BEGIN inside a block is an error (as in CockroachDB) and aborts it.
    c.simple("BEGIN").await.expect("begin", 'T', &[]);
    c.simple("BEGIN")
        .await
        .expect("begin twice", 'E', &["25001"]);
    c.simple("ROLLBACK").await.expect("rollback", 'I', &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_commit_ends_the_block() {
    let (_node, port) = bank_node().await;
    let mut a = Raw::connect(port).await;
    let mut b = Raw::connect(port).await;

    for round in 0..3 {
        // A reads and writes account 1; B changes it before A commits: A's COMMIT fails
        // with 40001, and A holds no transaction any more (status I, not E).
        a.simple("BEGIN").await.expect("begin", 'T', &[]);
        let seen = a
            .simple("SELECT balance FROM bank WHERE id = 1")
            .await
            .int();
        a.simple(&format!(
            "UPDATE bank SET balance = {} WHERE id = 1",
            seen - 10
        ))
        .await
        .expect("update", 'T', &[]);
        b.simple("UPDATE bank SET balance = balance + 1 WHERE id = 1")
            .await
            .expect("concurrent write", 'I', &[]);
        a.simple("COMMIT").await.expect(
            &format!("round {round}: conflicting commit"),
            'I',
            &["40001"],
        );
        // The connection is usable at once: what psycopg's next `with conn.transaction()`
        // does (BEGIN) works, and a savepoint outside a block is refused (it was not: the
        // bug had the driver send SAVEPOINT here).
        a.simple("SELECT 1")
            .await
            .expect("after the failed commit", 'I', &[]);
    }
    let balance = a
        .simple("SELECT balance FROM bank WHERE id = 1")
        .await
        .int();
    assert_eq!(balance, 103, "only B's three increments were applied");

    // The same through the extended protocol: the status arrives at Sync.
    a.extended("BEGIN")
        .await
        .expect("begin (extended)", 'T', &[]);
    let seen = a
        .extended("SELECT balance FROM bank WHERE id = 2")
        .await
        .int();
    a.extended(&format!(
        "UPDATE bank SET balance = {} WHERE id = 2",
        seen - 10
    ))
    .await
    .expect("update (extended)", 'T', &[]);
    b.extended("UPDATE bank SET balance = balance + 1 WHERE id = 2")
        .await
        .expect("concurrent write (extended)", 'I', &[]);
    a.extended("COMMIT")
        .await
        .expect("conflicting commit (extended)", 'I', &["40001"]);
    a.extended("SELECT 1")
        .await
        .expect("after it (extended)", 'I', &[]);

    // Extended protocol: failed statements abort, COMMIT/ROLLBACK outside warn.
    a.extended("ROLLBACK")
        .await
        .expect("rollback outside (extended)", 'I', &[])
        .no_transaction_warning("rollback outside (extended)");
    a.extended("BEGIN").await.expect("begin", 'T', &[]);
    a.extended("SELECT * FROM nope")
        .await
        .expect("error", 'E', &["42P01"]);
    a.extended("SELECT 1")
        .await
        .expect("aborted", 'E', &["25P02"]);
    a.extended("COMMIT")
        .await
        .expect("commit of aborted (extended)", 'I', &[])
        .tag("commit of aborted (extended)", "ROLLBACK");
    // An error pgwire reports itself (Bind to an unknown statement) aborts the block too.
    a.extended("BEGIN").await.expect("begin", 'T', &[]);
    a.bind_unknown()
        .await
        .expect("bind error in a block", 'E', &["26000"]);
    a.extended("SELECT 1")
        .await
        .expect("aborted", 'E', &["25P02"]);
    a.simple("ROLLBACK").await.expect("rollback", 'I', &[]);
    a.bind_unknown()
        .await
        .expect("bind error outside", 'I', &["26000"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_savepoints_undo_and_reopen() {
    let (_node, port) = bank_node().await;
    let mut c = Raw::connect(port).await;

    c.simple("BEGIN; INSERT INTO bank VALUES (10, 0)")
        .await
        .expect("begin", 'T', &[]);
    c.simple("SAVEPOINT a; INSERT INTO bank VALUES (11, 0)")
        .await
        .expect("a", 'T', &[]);
    c.simple("SAVEPOINT b; INSERT INTO bank VALUES (12, 0)")
        .await
        .expect("b", 'T', &[]);
    // Rolling back to b undoes 12; an error then aborts; rolling back to a reopens the
    // block and undoes 11 too.
    c.simple("ROLLBACK TO SAVEPOINT b")
        .await
        .expect("to b", 'T', &[])
        .tag("to b", "ROLLBACK");
    c.simple("SELECT * FROM nope")
        .await
        .expect("error", 'E', &["42P01"]);
    c.simple("ROLLBACK TO SAVEPOINT a")
        .await
        .expect("to a", 'T', &[]);
    c.simple("INSERT INTO bank VALUES (13, 0)")
        .await
        .expect("13", 'T', &[]);
    c.simple("RELEASE SAVEPOINT a")
        .await
        .expect("release a", 'T', &[])
        .tag("release", "RELEASE");
    // A savepoint that does not exist is an error that aborts the block, as in PostgreSQL.
    c.simple("RELEASE SAVEPOINT a")
        .await
        .expect("release again", 'E', &["3B001"]);
    c.simple("ROLLBACK TO SAVEPOINT zz")
        .await
        .expect("unknown savepoint", 'E', &["3B001"]);
    c.simple("ROLLBACK").await.expect("rollback", 'I', &[]);

    c.simple(
        "BEGIN; INSERT INTO bank VALUES (10, 0); SAVEPOINT a; INSERT INTO bank VALUES (11, 0)",
    )
    .await
    .expect("again", 'T', &[]);
    c.simple("ROLLBACK TO SAVEPOINT a; RELEASE SAVEPOINT a; INSERT INTO bank VALUES (13, 0)")
        .await
        .expect("undo 11", 'T', &[]);
    c.simple("COMMIT")
        .await
        .expect("commit", 'I', &[])
        .tag("commit", "COMMIT");
    let ids = c
        .simple("SELECT id FROM bank WHERE id >= 10 ORDER BY id")
        .await;
    let ids: Vec<Option<String>> = ids.rows.into_iter().flatten().collect();
    assert_eq!(ids, vec![Some("10".to_string()), Some("13".to_string())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cockroach_restart_protocol() {
    let (_node, port) = bank_node().await;
    let mut a = Raw::connect(port).await;
    let mut b = Raw::connect(port).await;

    // The retry savepoint must be the first statement, and cannot be nested.
    a.simple("BEGIN; SELECT balance FROM bank WHERE id = 1")
        .await
        .expect("read", 'T', &[]);
    a.simple("SAVEPOINT cockroach_restart")
        .await
        .expect("not first", 'E', &["42601"]);
    a.simple("ROLLBACK").await.expect("rollback", 'I', &[]);
    a.simple("BEGIN; SAVEPOINT x").await.expect("x", 'T', &[]);
    a.simple("SAVEPOINT cockroach_restart")
        .await
        .expect("nested", 'E', &["42601"]);
    a.simple("ROLLBACK").await.expect("rollback", 'I', &[]);

    // The transaction reads one snapshot: a concurrent write is not seen by a re-read, and
    // the RELEASE that would commit on top of it fails with 40001, leaving the block
    // aborted; ROLLBACK TO SAVEPOINT cockroach_restart restarts (status T, a new snapshot,
    // the old reads forgotten); RELEASE commits; only COMMIT is accepted after it.
    a.simple("BEGIN").await.expect("begin", 'T', &[]);
    a.simple("SAVEPOINT cockroach_restart")
        .await
        .expect("savepoint", 'T', &[]);
    a.simple("SELECT balance FROM bank WHERE id = 1")
        .await
        .expect("read", 'T', &[]);
    b.simple("UPDATE bank SET balance = balance + 5 WHERE id = 1")
        .await
        .expect("b", 'I', &[]);
    let reread = a.simple("SELECT balance FROM bank WHERE id = 1").await;
    reread.expect("re-read", 'T', &[]);
    assert_eq!(reread.int(), 100, "the transaction's snapshot");
    a.simple("UPDATE bank SET balance = balance - 5 WHERE id = 1")
        .await
        .expect("stale write", 'T', &[]);
    a.simple("RELEASE SAVEPOINT cockroach_restart")
        .await
        .expect("release over a concurrent write", 'E', &["40001"]);
    a.simple("ROLLBACK TO SAVEPOINT cockroach_restart")
        .await
        .expect("restart", 'T', &[])
        .tag("restart", "ROLLBACK");
    let seen = a.simple("SELECT balance FROM bank WHERE id = 1").await;
    seen.expect("read after restart", 'T', &[]);
    assert_eq!(seen.int(), 105);
    a.simple("UPDATE bank SET balance = balance - 5 WHERE id = 1")
        .await
        .expect("w", 'T', &[]);
    a.simple("RELEASE SAVEPOINT cockroach_restart")
        .await
        .expect("release commits", 'T', &[])
        .tag("release", "RELEASE");
    assert_eq!(
        b.simple("SELECT balance FROM bank WHERE id = 1")
            .await
            .int(),
        100,
        "committed at RELEASE, before COMMIT"
    );
    a.simple("SELECT 1")
        .await
        .expect("after release", 'T', &["25000"]);
    a.simple("COMMIT")
        .await
        .expect("commit", 'I', &[])
        .tag("commit", "COMMIT");

    // RELEASE that fails (a conflict found at commit): aborted, restartable; the restarted
    // transaction commits.
    a.simple("BEGIN; SAVEPOINT cockroach_restart")
        .await
        .expect("begin", 'T', &[]);
    let seen = a
        .simple("SELECT balance FROM bank WHERE id = 2")
        .await
        .int();
    a.simple(&format!(
        "UPDATE bank SET balance = {} WHERE id = 2",
        seen + 1
    ))
    .await
    .expect("write", 'T', &[]);
    b.simple("UPDATE bank SET balance = balance + 7 WHERE id = 2")
        .await
        .expect("b", 'I', &[]);
    a.simple("RELEASE SAVEPOINT cockroach_restart")
        .await
        .expect("release conflicts", 'E', &["40001"]);
    a.simple("SELECT 1")
        .await
        .expect("aborted", 'E', &["25P02"]);
    a.simple("ROLLBACK TO SAVEPOINT cockroach_restart")
        .await
        .expect("restart", 'T', &[]);
    let seen = a
        .simple("SELECT balance FROM bank WHERE id = 2")
        .await
        .int();
    assert_eq!(seen, 107, "the restarted transaction reads afresh");
    a.simple(&format!(
        "UPDATE bank SET balance = {} WHERE id = 2",
        seen + 1
    ))
    .await
    .expect("write", 'T', &[]);
    a.simple("RELEASE SAVEPOINT cockroach_restart")
        .await
        .expect("release", 'T', &[]);
    a.simple("COMMIT").await.expect("commit", 'I', &[]);
    assert_eq!(
        b.simple("SELECT balance FROM bank WHERE id = 2")
            .await
            .int(),
        108
    );

    // The same through the extended protocol, and a client that gives up with ROLLBACK.
    a.extended("BEGIN").await.expect("begin", 'T', &[]);
    a.extended("SAVEPOINT cockroach_restart")
        .await
        .expect("savepoint", 'T', &[]);
    a.extended("UPDATE bank SET balance = balance + 1 WHERE id = 1")
        .await
        .expect("w", 'T', &[]);
    a.extended("ROLLBACK TO SAVEPOINT cockroach_restart")
        .await
        .expect("restart", 'T', &[]);
    a.extended("RELEASE SAVEPOINT cockroach_restart")
        .await
        .expect("release", 'T', &[]);
    a.extended("COMMIT").await.expect("commit", 'I', &[]);
    assert_eq!(
        b.simple("SELECT balance FROM bank WHERE id = 1")
            .await
            .int(),
        100,
        "the write before the restart was discarded"
    );
    a.simple("BEGIN; SAVEPOINT cockroach_restart; UPDATE bank SET balance = 0 WHERE id = 1")
        .await
        .expect("begin", 'T', &[]);
    a.simple("SELECT * FROM nope")
        .await
        .expect("error", 'E', &["42P01"]);
    a.simple("ROLLBACK").await.expect("give up", 'I', &[]);
    assert_eq!(
        b.simple("SELECT balance FROM bank WHERE id = 1")
            .await
            .int(),
        100
    );
}

// ---- drivers' retry loops under contention ----

/// Accounts, their opening balance, workers and transfers per worker for the driver tests.
const ACCOUNTS: i64 = 4;
const OPENING_BALANCE: i64 = 1000;
const WORKERS: usize = 4;
const TRANSFERS: usize = 25;
/// How long a driver test's workers may take in all.
const DRIVER_DEADLINE: Duration = Duration::from_secs(180);

/// Two nodes serving SQL with `bank` holding [`ACCOUNTS`] accounts; their ports.
async fn bank_cluster() -> (Vec<Arc<SqlServer>>, ldr_testkit::TestCluster, Vec<u16>) {
    let (cluster, servers) = start_cluster(2).await;
    let mut ports = Vec::new();
    for s in &servers {
        ports.push(listen(s.clone()).await);
    }
    let mut c = Raw::connect(ports[0]).await;
    let values: Vec<String> = (0..ACCOUNTS)
        .map(|i| format!("({i}, {OPENING_BALANCE})"))
        .collect();
    c.simple(&format!(
        "CREATE TABLE bank (id INT8 PRIMARY KEY, balance INT8 NOT NULL); INSERT INTO bank VALUES {}",
        values.join(", ")
    ))
    .await
    .expect("bank", 'I', &[]);
    (servers, cluster, ports)
}

async fn bank_total(port: u16) -> i64 {
    let mut c = Raw::connect(port).await;
    c.simple("SELECT sum(balance) FROM bank").await.int()
}

/// Worker `w`'s transfers: (from, to, amount), deterministic.
fn transfers_of(w: usize) -> Vec<(i64, i64, i64)> {
    (0..TRANSFERS)
        .map(|i| {
            let from = ((w + i) as i64) % ACCOUNTS;
            let to = (from + 1 + (i as i64 % (ACCOUNTS - 1))) % ACCOUNTS;
            (from, to, 1 + (w * 7 + i) as i64 % 50)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_transfers_commit_or_retry() {
    let (_servers, _cluster, ports) = bank_cluster().await;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..WORKERS {
        let port = ports[w % ports.len()];
        tasks.spawn(async move {
            let (mut client, conn) = tokio_postgres::connect(
                &format!("host=127.0.0.1 port={port} user=root dbname=defaultdb"),
                tokio_postgres::NoTls,
            )
            .await
            .expect("connects");
            tokio::spawn(async move {
                let _ = conn.await;
            });
            let mut retried = 0usize;
            // Odd workers use CockroachDB's retry protocol, even ones BEGIN … COMMIT again.
            let restart = w % 2 == 1;
            for (from, to, amount) in transfers_of(w) {
                let mut attempt = 0;
                loop {
                    attempt += 1;
                    assert!(
                        started.elapsed() < DRIVER_DEADLINE && attempt < 1000,
                        "worker {w} out of time after {retried} retries"
                    );
                    let r = transfer(&mut client, from, to, amount, restart).await;
                    match r {
                        Ok(()) => break,
                        Err(e)
                            if e.code()
                                == Some(
                                    &tokio_postgres::error::SqlState::T_R_SERIALIZATION_FAILURE,
                                ) =>
                        {
                            retried += 1;
                        }
                        Err(e) => panic!("worker {w}: transfer failed, not with 40001: {e:?}"),
                    }
                }
            }
            retried
        });
    }
    let mut retried = 0;
    while let Some(r) = tasks.join_next().await {
        retried += r.expect("worker finished");
    }
    println!(
        "tokio-postgres: {} transfers committed, {retried} retries",
        WORKERS * TRANSFERS
    );
    assert_eq!(bank_total(ports[0]).await, ACCOUNTS * OPENING_BALANCE);
}

/// One transfer with tokio-postgres's `Transaction` (BEGIN … COMMIT; ROLLBACK on drop), or
/// with the CockroachDB retry protocol (restarting in place on 40001).
async fn transfer(
    client: &mut tokio_postgres::Client,
    from: i64,
    to: i64,
    amount: i64,
    restart: bool,
) -> Result<(), tokio_postgres::Error> {
    let read = "SELECT balance FROM bank WHERE id = $1";
    let write = "UPDATE bank SET balance = $1 WHERE id = $2";
    if !restart {
        let txn = client.transaction().await?;
        let a: i64 = txn.query_one(read, &[&from]).await?.get(0);
        let b: i64 = txn.query_one(read, &[&to]).await?.get(0);
        txn.execute(write, &[&(a - amount), &from]).await?;
        txn.execute(write, &[&(b + amount), &to]).await?;
        return txn.commit().await;
    }
    client
        .batch_execute("BEGIN; SAVEPOINT cockroach_restart")
        .await?;
    let mut restarts = 0;
    loop {
        let attempt = async {
            let a: i64 = client.query_one(read, &[&from]).await?.get(0);
            let b: i64 = client.query_one(read, &[&to]).await?.get(0);
            client.execute(write, &[&(a - amount), &from]).await?;
            client.execute(write, &[&(b + amount), &to]).await?;
            client
                .batch_execute("RELEASE SAVEPOINT cockroach_restart")
                .await
        }
        .await;
        match attempt {
            Ok(()) => return client.batch_execute("COMMIT").await,
            Err(e)
                if e.code()
                    == Some(&tokio_postgres::error::SqlState::T_R_SERIALIZATION_FAILURE)
                    && restarts < 100 =>
            {
                restarts += 1;
                client
                    .batch_execute("ROLLBACK TO SAVEPOINT cockroach_restart")
                    .await?;
            }
            Err(e) => {
                client.batch_execute("ROLLBACK").await?;
                return Err(e);
            }
        }
    }
}

/// The Python interpreter psycopg is installed for: `LDR_PYTHON`, else the system one (the
/// `python3-psycopg` package installs there; a pyenv `python3` earlier on PATH may lack it).
fn python() -> String {
    if let Ok(p) = std::env::var("LDR_PYTHON") {
        return p;
    }
    if std::path::Path::new("/usr/bin/python3").exists() {
        return "/usr/bin/python3".into();
    }
    "python3".into()
}

/// Runs a command, killing it if it outlives `deadline`.
fn run_bounded(mut cmd: std::process::Command, deadline: Duration) -> std::process::Output {
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starts");
    let started = Instant::now();
    loop {
        if child.try_wait().expect("waits").is_some() {
            return child.wait_with_output().expect("output");
        }
        if started.elapsed() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "{cmd:?} still running after {deadline:?}; stdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_transfers_commit_or_retry() {
    let (_servers, _cluster, ports) = bank_cluster().await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/psycopg_bank.py");
    let mut cmd = std::process::Command::new(python());
    cmd.arg(script)
        .arg("--workers")
        .arg(WORKERS.to_string())
        .arg("--transfers")
        .arg(TRANSFERS.to_string())
        .arg("--deadline-s")
        .arg(DRIVER_DEADLINE.as_secs().to_string());
    for p in &ports {
        cmd.arg(format!(
            "postgresql://root@127.0.0.1:{p}/defaultdb?sslmode=disable"
        ));
    }
    let out = tokio::task::spawn_blocking(move || {
        run_bounded(cmd, DRIVER_DEADLINE + Duration::from_secs(30))
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "psycopg bank failed ({:?}); install python3-psycopg (scripts/setup.sh) if it is missing\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    let summary = stdout
        .lines()
        .find_map(|l| l.strip_prefix("summary "))
        .unwrap_or_else(|| panic!("no summary line in:\n{stdout}"));
    let v: serde_json::Value = serde_json::from_str(summary).expect("summary is JSON");
    assert_eq!(v["committed"], (WORKERS * TRANSFERS) as u64, "{v}");
    assert_eq!(v["failed"], 0, "{v}");
    assert_eq!(bank_total(ports[0]).await, ACCOUNTS * OPENING_BALANCE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_on_error_rollback_places_savepoints_by_the_status() {
    let (_node, port) = bank_node().await;
    // psql's ON_ERROR_ROLLBACK wraps each statement of an open block in a savepoint, and
    // decides so from the status byte; a failed statement then costs only itself.
    let script = "\\set ON_ERROR_ROLLBACK on\n\
                  ROLLBACK;\n\
                  BEGIN;\n\
                  INSERT INTO bank VALUES (20, 0);\n\
                  INSERT INTO nope VALUES (1);\n\
                  INSERT INTO bank VALUES (21, 0);\n\
                  COMMIT;\n\
                  \\set ON_ERROR_ROLLBACK off\n\
                  BEGIN;\n\
                  INSERT INTO bank VALUES (22, 0);\n\
                  SELECT 1/0;\n\
                  INSERT INTO bank VALUES (23, 0);\n\
                  COMMIT;\n\
                  SELECT id FROM bank WHERE id >= 20 ORDER BY id;\n";
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("script.sql");
    std::fs::write(&path, script).expect("script written");
    let mut cmd = std::process::Command::new("psql");
    cmd.env("PGCONNECT_TIMEOUT", "10")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "root",
            "-d",
            "defaultdb",
        ])
        .args(["-X", "-At", "-f"])
        .arg(&path);
    let out = tokio::task::spawn_blocking(move || run_bounded(cmd, Duration::from_secs(60)))
        .await
        .expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("WARNING:  there is no transaction in progress"),
        "ROLLBACK outside a block warns:\n{stderr}"
    );
    assert!(
        stderr.contains("current transaction is aborted"),
        "without ON_ERROR_ROLLBACK the block aborts:\n{stderr}"
    );
    let ids: Vec<&str> = stdout
        .lines()
        .filter(|l| l.chars().all(|c| c.is_ascii_digit()) && !l.is_empty())
        .collect();
    assert!(
        stdout.lines().any(|l| l == "ROLLBACK") && ids == ["20", "21"],
        "the first block commits 20 and 21, the second rolls back:\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
}

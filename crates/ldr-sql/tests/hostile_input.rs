//! Hostile input never panics. Property tests over everything that reads outside text or bytes
//! — the SQL parser, text input of every type, binary parameters, the key and value encodings
//! (replicated rows) and COPY data — then the cases that
//! used to panic or overflow the stack, through a session and through a real pgwire client,
//! and garbage on the port: every malformed frontend frame is refused with FATAL 08P01 before
//! the pgwire crate's decoder (which panics on some) sees it, and the per-connection panic
//! boundary never fires.
//!
//! Case counts are modest so each property runs in seconds in a debug build;
//! `PROPTEST_CASES=n` runs more. A failure prints the shrunk input that panicked.
mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use ldr_sql::connection_guard::serve_guarded;
use ldr_sql::datum::Datum;
use ldr_sql::exec::SqlServer;
use ldr_sql::types::SqlType;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_postgres::NoTls;

/// Cases per property: `PROPTEST_CASES`, else `default`.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn config(default: u32) -> Config {
    Config {
        cases: cases(default),
        // Shrinking inputs of a few hundred bytes: bounded, so a failure reports in time.
        max_shrink_iters: 2048,
        ..Config::default()
    }
}

/// Pieces of SQL (and of things that are not), glued at random: keywords, punctuation,
/// CockroachDB's own syntax, and multi-byte characters where the parser slices text.
const SQL_PIECES: &[&str] = &[
    "SELECT",
    "FROM",
    "WHERE",
    "t",
    "a",
    "x",
    "*",
    ",",
    ";",
    "(",
    ")",
    "[",
    "]",
    "{",
    "}",
    "'",
    "\"",
    "''",
    "::",
    ":::",
    ".",
    "1",
    "0",
    "-1",
    "1e400",
    "9223372036854775808",
    "+",
    "-",
    "/",
    "%",
    "||",
    "->",
    "->>",
    "=",
    "<>",
    "AND",
    "OR",
    "NOT",
    "IS",
    "NULL",
    "TRUE",
    "$1",
    "$0",
    "$99999999999",
    "E'\\x",
    "b'\\xzz'",
    "--",
    "/*",
    "*/",
    "[SHOW",
    "SHOW",
    "JOBS",
    "[SHOW JOBS]",
    "CREATE",
    "TABLE",
    "INDEX",
    "PRIMARY KEY",
    "INT",
    "STRING",
    "TIMESTAMPTZ",
    "INTERVAL",
    "INSERT INTO",
    "VALUES",
    "UPSERT INTO",
    "UPDATE",
    "SET",
    "DELETE",
    "RETURNING",
    "ON CONFLICT",
    "DO NOTHING",
    "UNION",
    "ALL",
    "WITH",
    "AS",
    "CASE",
    "WHEN",
    "THEN",
    "ELSE",
    "END",
    "IN",
    "BETWEEN",
    "LIKE",
    "ARRAY",
    "CAST",
    "GRANT",
    "ALL ON",
    "TO",
    "CLUSTER SETTING",
    "BEGIN",
    "COMMIT",
    "SAVEPOINT",
    "CREATE LOGICAL REPLICATION STREAM",
    "ON 'external://x'",
    "INTO TABLE",
    "日本",
    "é",
    "ß",
    "\u{1F600}",
    "\u{0}",
    "\u{FEFF}",
    "\\",
    "\n",
    "\t",
    " ",
];

fn sql_soup() -> impl Strategy<Value = String> {
    let piece = prop::sample::select(SQL_PIECES);
    let sep = prop::sample::select(&[" ", "", " ", "\n"][..]);
    prop::collection::vec((piece, sep), 0..40).prop_map(|parts| {
        parts
            .into_iter()
            .flat_map(|(p, s)| [p, s])
            .collect::<String>()
    })
}

fn any_sql() -> impl Strategy<Value = String> {
    prop_oneof![sql_soup(), any::<String>(), "\\PC{0,80}"]
}

#[test]
fn parse_never_panics() {
    let mut runner = TestRunner::new(config(2000));
    runner
        .run(&any_sql(), |sql| {
            let _ = ldr_sql::parser::parse(&sql);
            let _ = ldr_sql::parser::parse_expr(&sql);
            let _ = ldr_sql::copy::parse_copy(&sql);
            let _ = SqlType::parse(&sql);
            Ok(())
        })
        .expect("parsing never panics");
}

/// Every column type, with and without modifiers.
fn every_type() -> Vec<SqlType> {
    vec![
        SqlType::Bool,
        SqlType::Int2,
        SqlType::Int4,
        SqlType::Int8,
        SqlType::Float4,
        SqlType::Float8,
        SqlType::DECIMAL,
        SqlType::Decimal {
            precision: Some(5),
            scale: Some(2),
        },
        SqlType::Decimal {
            precision: Some(1),
            scale: Some(0),
        },
        SqlType::String,
        SqlType::Varchar { width: Some(3) },
        SqlType::Varchar { width: None },
        SqlType::Char { width: 2 },
        SqlType::Bytes,
        SqlType::Date,
        SqlType::Timestamp,
        SqlType::TimestampTz,
        SqlType::Interval,
        SqlType::Uuid,
        SqlType::Jsonb,
        SqlType::Unknown,
    ]
}

/// Text that looks like values of some type, with multi-byte characters where parsers slice.
const VALUE_PIECES: &[&str] = &[
    "2024",
    "-",
    "01",
    "0é",
    "日本",
    ":",
    "12",
    "00",
    "+",
    "05",
    "+05:30",
    " ",
    "T",
    "Z",
    "UTC",
    "GMT",
    ".",
    "123456789",
    "BC",
    "AD",
    "infinity",
    "-infinity",
    "epoch",
    "now",
    "today",
    "P",
    "1h",
    "30m",
    "ms",
    "µs",
    "ago",
    "@",
    "year",
    "mons",
    "day",
    "e",
    "E",
    "NaN",
    "Infinity",
    "\\x",
    "\\",
    "0x",
    "{",
    "}",
    "[",
    "]",
    "\"",
    ",",
    "9999999999999999999999",
    "t",
    "f",
    "yes",
    "on",
    "null",
    "true",
    "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
    "ß",
    "\u{1F600}",
    "'",
];

fn value_text() -> impl Strategy<Value = String> {
    let soup = prop::collection::vec(prop::sample::select(VALUE_PIECES), 0..16)
        .prop_map(|parts| parts.concat());
    prop_oneof![soup, any::<String>()]
}

#[test]
fn text_input_of_every_type_never_panics() {
    let types = every_type();
    let mut runner = TestRunner::new(config(1000));
    runner
        .run(&value_text(), |text| {
            for ty in &types {
                if let Ok(d) = Datum::parse_text(&text, ty) {
                    // What parsed also prints, encodes and casts without panicking.
                    let _ = d.to_text(0);
                    let _ = d.to_text(-12 * 3600);
                    let _ = d.to_sql_literal();
                    let _ = d.to_json();
                    let mut key = Vec::new();
                    ldr_sql::encoding::encode_key(&mut key, &d);
                    let _ = ldr_sql::encoding::decode_key(&key, ty);
                    for to in &types {
                        let _ = d.cast(to);
                    }
                }
            }
            let _ = ldr_sql::Interval::parse(&text);
            Ok(())
        })
        .expect("text input never panics");
}

#[test]
fn binary_input_and_encoded_rows_never_panic() {
    let types = every_type();
    let mut runner = TestRunner::new(config(1000));
    runner
        .run(&prop::collection::vec(any::<u8>(), 0..48), |bytes| {
            for ty in &types {
                let _ = ldr_sql::wire::decode_param(&bytes, ty, true);
                let _ = ldr_sql::wire::decode_param(&bytes, ty, false);
                // Keys and values arrive from other clusters in replication streams.
                let _ = ldr_sql::encoding::decode_key(&bytes, ty);
            }
            let _ = ldr_sql::encoding::decode_value(&bytes);
            let _ = ldr_sql::encoding::get_uvarint(&bytes);
            let _ = ldr_sql::wire::decode_numeric(&bytes);
            Ok(())
        })
        .expect("binary input never panics");
}

#[test]
fn copy_data_never_panics() {
    let specs: Vec<_> = [
        "COPY t FROM STDIN",
        "COPY t FROM STDIN WITH (FORMAT csv, HEADER true)",
        "COPY t FROM STDIN WITH (FORMAT csv, DELIMITER ';', QUOTE '''', ESCAPE '\\')",
    ]
    .iter()
    .map(|q| {
        ldr_sql::copy::parse_copy(q)
            .expect("a COPY")
            .expect("a COPY we serve")
    })
    .collect();
    let data = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64),
        value_text().prop_map(String::into_bytes),
    ];
    let mut runner = TestRunner::new(config(1000));
    runner
        .run(&(data, 0usize..4), |(data, columns)| {
            for spec in &specs {
                let _ = ldr_sql::copy::parse_rows(spec, &data, columns);
            }
            Ok(())
        })
        .expect("COPY data never panics");
}

/// Frontend message bytes: random, or a real message type byte and length over a random body
/// (so the decoder gets past its length checks).
fn frontend_bytes() -> impl Strategy<Value = Vec<u8>> {
    let framed = (
        prop::sample::select(&b"QPBEDCSHXpdcfF"[..]),
        prop::collection::vec(any::<u8>(), 0..48),
        -8i32..64,
    )
        .prop_map(|(tag, body, slack)| {
            let len = (body.len() as i32 + 4).saturating_add(slack % 3 - 1);
            let mut m = vec![tag];
            m.extend_from_slice(&len.to_be_bytes());
            m.extend_from_slice(&body);
            m
        });
    let startup = prop::collection::vec(any::<u8>(), 0..48).prop_map(|body| {
        // A length, then the protocol version 3.0 (or SSL/cancel codes) and parameters.
        let mut m = ((body.len() + 8) as i32).to_be_bytes().to_vec();
        m.extend_from_slice(&[0, 3, 0, 0]);
        m.extend_from_slice(&body);
        m
    });
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..96),
        framed.clone(),
        prop::collection::vec(framed, 1..4).prop_map(|ms| ms.concat()),
        startup,
    ]
}

/// A StartupMessage for `root` on `defaultdb` (protocol 3.0).
fn startup_message() -> Vec<u8> {
    let mut body = 196_608i32.to_be_bytes().to_vec();
    for part in ["user", "root", "database", "defaultdb"] {
        body.extend_from_slice(part.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut m = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    m.extend_from_slice(&body);
    m
}

/// Reads backend messages until one of type `tag` (or the connection closes); returns
/// `(type, body)` of every message read.
async fn read_until(client: &mut TcpStream, tag: u8) -> Vec<(u8, Vec<u8>)> {
    let mut got = Vec::new();
    let read = async {
        loop {
            let mut header = [0u8; 5];
            if client.read_exact(&mut header).await.is_err() {
                return;
            }
            let len = i32::from_be_bytes([header[1], header[2], header[3], header[4]]);
            let mut body = vec![0u8; usize::try_from(len - 4).expect("a sane length")];
            if client.read_exact(&mut body).await.is_err() {
                return;
            }
            got.push((header[0], body));
            if header[0] == tag {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .expect("the server answered in time");
    got
}

/// A server whose connections run inside the per-connection panic boundary, as a node's.
async fn listen_guarded(server: Arc<SqlServer>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("bound").port();
    tokio::spawn(async move {
        while let Ok((socket, peer)) = listener.accept().await {
            let server = server.clone();
            tokio::spawn(serve_guarded(socket, peer, move |socket| async move {
                let _ = ldr_sql::protocol::serve_connection(socket, server).await;
            }));
        }
    });
    port
}

async fn select_one(port: u16) {
    let (client, conn) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user=root dbname=defaultdb"),
        NoTls,
    )
    .await
    .expect("a new connection after garbage");
    tokio::spawn(conn);
    let one: i64 = client
        .query_one("SELECT 1", &[])
        .await
        .expect("the server still answers")
        .get(0);
    assert_eq!(one, 1);
}

/// A frontend message: type byte, a length field of `len`, then `body` (which may disagree).
fn message_with_length(tag: u8, len: i32, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&len.to_be_bytes());
    m.extend_from_slice(body);
    m
}

/// A frontend message whose length field matches its body.
fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    message_with_length(tag, body.len() as i32 + 4, body)
}

/// Malformed frames for every frontend message type: wrong length fields, bodies short of
/// what the type declares, trailing garbage, lengths over the type's limit.
fn malformed_frames() -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    for &tag in b"PBDECSHQXFdcfp" {
        // Length fields that cannot be meant: under 4 (the Parse with length 3 used to
        // panic), negative, over every limit.
        for len in [0, 3, -1, i32::MIN, 0x4000_0000, i32::MAX] {
            frames.push(message_with_length(tag, len, b"\0\0\0\0\0\0\0\0"));
        }
    }
    // Bodies short of their declared fields, or with bytes left over.
    for (tag, body) in [
        (b'P', &b""[..]),
        (b'P', b"s\0"),
        (b'P', b"s\0SELECT 1\0"),
        (b'P', b"s\0SELECT 1\0\0\x01"),
        (b'P', b"s\0SELECT 1\0\0\0junk"),
        (b'B', b""),
        (b'B', b"\0\0"),
        (b'B', b"\0\0\0\0\0\x01\0\0\0\x10ab"),
        (b'B', b"\0\0\0\0\0\x01\xff\xff\xff\xfe\0\0"),
        (b'B', b"\0\0\0\0\0\0\0\x05"),
        (b'D', b""),
        (b'D', b"S"),
        (b'D', b"Sname"),
        (b'D', b"S\0junk"),
        (b'E', b""),
        (b'E', b"\0\0\0"),
        (b'E', b"portal"),
        (b'C', b""),
        (b'C', b"P"),
        (b'S', b"x"),
        (b'H', b"x"),
        (b'Q', b""),
        (b'Q', b"SELECT 1"),
        (b'Q', b"SELECT 1\0; DROP"),
        (b'X', b"x"),
        (b'F', b"\0\0\0\0\0\0\0\0\0\0"),
        (b'c', b"x"),
        (b'f', b""),
        (b'f', b"no terminator"),
        (b'p', b"secret\0"),
        (b'Z', b""),
        (0, b""),
    ] {
        frames.push(message(tag, body));
    }
    // Small types have PostgreSQL's 10,000-byte limit.
    for &tag in b"DECSHXcf" {
        frames.push(message_with_length(tag, 10_001, b""));
    }
    frames
}

/// Connects and completes a startup as `root`, then sends `bytes`; returns what the server
/// answered until it closed the connection.
async fn answer_after_startup(port: u16, bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut client = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    client.write_all(&startup_message()).await.expect("write");
    let startup = read_until(&mut client, b'Z').await;
    assert_eq!(
        startup.last().map(|m| m.0),
        Some(b'Z'),
        "ready for query: {startup:?}"
    );
    // The server may close as soon as it has seen enough; a failed write is fine.
    let _ = client.write_all(bytes).await;
    let answer = read_until(&mut client, b'E').await;
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut rest))
        .await
        .unwrap_or_else(|_| panic!("the server did not close the connection after {bytes:?}"))
        .unwrap_or_default();
    assert!(rest.is_empty(), "nothing after the FATAL error: {rest:?}");
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_of_every_type_get_08p01_without_a_panic() {
    // Every malformed frame, each on a fresh connection after a valid startup, is refused
    // before pgwire decodes it: FATAL 08P01, then the close. Nothing panics (the connection
    // boundary never fires) and the node goes on serving.
    let node = TestNode::start().await;
    let port = listen_guarded(node.server.clone()).await;
    let panics_before = ldr_sql::connection_guard::panics_caught();
    let violations_before = ldr_sql::frontend_frame::protocol_violations();
    let frames = malformed_frames();
    for frame in &frames {
        let answer = answer_after_startup(port, frame).await;
        let (tag, body) = answer
            .last()
            .unwrap_or_else(|| panic!("no answer to {frame:?}"));
        let text = String::from_utf8_lossy(body);
        assert_eq!(*tag, b'E', "an ErrorResponse to {frame:?}: {answer:?}");
        assert!(
            text.contains("SFATAL\0") && text.contains("C08P01\0"),
            "FATAL 08P01 for {frame:?}: {text:?}"
        );
        assert_eq!(
            ldr_sql::connection_guard::panics_caught(),
            panics_before,
            "a panic serving {frame:?}"
        );
    }
    // The Describe without a body that used to panic gets PostgreSQL's message.
    let answer = answer_after_startup(port, &[b'D', 0, 0, 0, 4]).await;
    let text = String::from_utf8_lossy(&answer.last().expect("an answer").1).into_owned();
    assert!(text.contains("Minvalid message format\0"), "{text:?}");
    assert_eq!(
        ldr_sql::frontend_frame::protocol_violations() - violations_before,
        frames.len() as u64 + 1,
        "every refusal is counted"
    );

    // A frame cut short by the client's close: nobody is left to answer; the server closes.
    for frame in [message_with_length(b'P', 100, b"s\0SEL"), vec![b'Q', 0, 0]] {
        let mut client = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        client.write_all(&startup_message()).await.expect("write");
        read_until(&mut client, b'Z').await;
        client.write_all(&frame).await.expect("write");
        client.shutdown().await.expect("shutdown");
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut rest))
            .await
            .expect("the server closed the connection")
            .expect("read");
        assert!(rest.is_empty(), "no answer to a cut frame: {rest:?}");
    }
    assert_eq!(ldr_sql::connection_guard::panics_caught(), panics_before);
    select_one(port).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_that_is_not_utf8_gets_22021_and_the_session_goes_on() {
    // pgwire decodes strings lossily: without the check, Latin-1 text ran with U+FFFD in
    // place of its bytes. PostgreSQL answers 22021 (an ERROR, not FATAL) and so do we: a
    // simple Query is answered with the error and ReadyForQuery; an extended-protocol message
    // fails until the next Sync, as after any error there.
    let node = TestNode::start().await;
    let port = listen_guarded(node.server.clone()).await;
    let mut client = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    client.write_all(&startup_message()).await.expect("write");
    read_until(&mut client, b'Z').await;
    let code_of = |answer: &[(u8, Vec<u8>)]| {
        answer
            .iter()
            .find(|m| m.0 == b'E')
            .map(|m| String::from_utf8_lossy(&m.1).into_owned())
    };

    client
        .write_all(&message(b'Q', b"SELECT 'caf\xe9'\0"))
        .await
        .expect("write");
    let answer = read_until(&mut client, b'Z').await;
    let error = code_of(&answer).expect("an error for Latin-1 text");
    assert!(
        error.contains("SERROR\0") && error.contains("C22021\0"),
        "{error:?}"
    );
    assert!(
        error.contains("invalid byte sequence for encoding \"UTF8\": 0xe9 0x27"),
        "{error:?}"
    );
    assert_eq!(answer.last().map(|m| m.1.clone()), Some(b"I".to_vec()));

    // Parse with such text, then Bind and Execute of it, then Sync: one error, then ready.
    let mut extended = message(b'P', b"\0SELECT '\xff'\0\0\0");
    extended.extend(message(b'B', b"\0\0\0\0\0\0\0\0"));
    extended.extend(message(b'E', b"\0\0\0\0\0"));
    extended.extend(message(b'S', b""));
    client.write_all(&extended).await.expect("write");
    let answer = read_until(&mut client, b'Z').await;
    assert_eq!(
        answer.iter().filter(|m| m.0 == b'E').count(),
        1,
        "one error until Sync: {answer:?}"
    );
    assert!(code_of(&answer).is_some_and(|e| e.contains("C22021\0")));

    // The session goes on: valid UTF-8, multi-byte included, runs.
    client
        .write_all(&message(b'Q', "SELECT '日本é'\0".as_bytes()))
        .await
        .expect("write");
    let answer = read_until(&mut client, b'Z').await;
    assert!(code_of(&answer).is_none(), "{answer:?}");
    let row = answer.iter().find(|m| m.0 == b'D').expect("a row");
    assert!(
        row.1
            .windows("日本é".len())
            .any(|w| w == "日本é".as_bytes()),
        "{row:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_port_never_stops_the_server() {
    // Arbitrary bytes, before and after a valid startup: every connection ends (with an error
    // or a close) once the client stops sending, and the server keeps serving.
    let node = TestNode::start().await;
    let port = listen_guarded(node.server.clone()).await;
    let mut runner = TestRunner::new(config(200));
    let inputs: Vec<(Vec<u8>, bool)> = (0..runner.config().cases)
        .map(|_| {
            (frontend_bytes(), any::<bool>())
                .new_tree(&mut runner)
                .expect("a strategy without filters always generates")
                .current()
        })
        .collect();
    let panics_before = ldr_sql::connection_guard::panics_caught();
    for (bytes, after_startup) in inputs {
        let mut client = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        if after_startup {
            client.write_all(&startup_message()).await.expect("write");
            read_until(&mut client, b'Z').await;
        }
        // The server may close early (an error), so writes may fail; that is an answer too.
        let _ = client.write_all(&bytes).await;
        let _ = client.shutdown().await;
        let mut rest = Vec::new();
        let ended =
            tokio::time::timeout(Duration::from_secs(30), client.read_to_end(&mut rest)).await;
        assert!(ended.is_ok(), "the connection did not end after {bytes:?}");
        assert!(
            !String::from_utf8_lossy(&rest).contains("CXX000\0"),
            "an internal error (a panic) after {bytes:?}: {rest:?}"
        );
        assert_eq!(
            ldr_sql::connection_guard::panics_caught(),
            panics_before,
            "a panic serving {bytes:?} (after startup: {after_startup})"
        );
    }
    select_one(port).await;
}

/// `1 + 1 + … + 1` with `n` terms.
fn long_sum(n: usize) -> String {
    let mut sql = String::with_capacity(n * 4 + 8);
    sql.push_str("SELECT 1");
    for _ in 1..n {
        sql.push_str(" + 1");
    }
    sql
}

/// The start of a statement, for messages (by characters: never split one).
fn shown(sql: &str) -> String {
    sql.chars().take(60).collect()
}

/// Statements that used to panic or overflow the stack, and the SQLSTATE each must give.
fn known_cases() -> Vec<(String, &'static str)> {
    vec![
        ("SELECT a[日本] FROM t".into(), "0A000"),
        ("SELECT [日本日本]".into(), "0A000"),
        ("SELECT '2024-01-0é 12:00'::TIMESTAMPTZ".into(), "22007"),
        ("SELECT '日本日本日本日本日本'::TIMESTAMPTZ".into(), "22007"),
        ("SELECT '2024-01-01日本+05'::TIMESTAMP".into(), "22007"),
        ("SET timezone = '+1é1'".into(), "22023"),
        (long_sum(50_000), "54001"),
        (long_sum(ldr_sql::parser::MAX_EXPR_DEPTH + 1), "54001"),
        (
            format!("SELECT {}1{}", "(".repeat(2_000), ")".repeat(2_000)),
            "54001",
        ),
        (
            format!("SELECT 1{}", " UNION SELECT 1".repeat(20_000)),
            "54001",
        ),
        (format!("SELECT 1{}", "::INT".repeat(20_000)), "54001"),
        (
            format!(
                "SELECT * FROM t WHERE {}",
                vec!["a = 1"; 20_000].join(" OR ")
            ),
            "54001",
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn known_cases_give_postgres_errors_through_a_session() {
    let node = TestNode::start().await;
    let mut s = node.session().await;
    exec(&mut s, "CREATE TABLE t (id INT PRIMARY KEY, a INT)").await;
    for (sql, code) in known_cases() {
        let head = &shown(&sql);
        let err = exec_err(&mut s, &sql).await;
        assert_eq!(err.code(), code, "{head}: {}", err.message());
        assert_eq!(
            rows(&mut s, "SELECT 1").await,
            vec![vec!["1"]],
            "session unusable after {head}"
        );
    }
    // Shallow enough for any build's stack (a debug binder frame is tens of KiB): evaluates.
    assert_eq!(rows(&mut s, &long_sum(16)).await, vec![vec!["16"]]);
    // Within the parser's limit, as deep as it allows: an answer or 54001 (a debug build's
    // binder frames are large), never an overflow.
    let deepest = long_sum(ldr_sql::parser::MAX_EXPR_DEPTH - 8);
    match s.execute(&deepest).await.pop().expect("one result") {
        Ok(r) => assert_eq!(r.rows.len(), 1),
        Err(e) => assert_eq!(e.code(), "54001", "{}", e.message()),
    }
    assert_eq!(rows(&mut s, "SELECT 1").await, vec![vec!["1"]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn known_cases_give_postgres_errors_through_pgwire() {
    // The real path: the server's worker threads (2 MiB stacks), tokio-postgres, both the
    // simple and the extended protocol. Every case is an error with its SQLSTATE and the
    // connection stays usable.
    let node = TestNode::start().await;
    exec(
        &mut node.session().await,
        "CREATE TABLE t (id INT PRIMARY KEY, a INT)",
    )
    .await;
    let port = listen(node.server.clone()).await;
    let (client, conn) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user=root dbname=defaultdb"),
        NoTls,
    )
    .await
    .expect("connect");
    let conn = tokio::spawn(conn);
    for (sql, code) in known_cases() {
        let head = &shown(&sql);
        let simple = tokio::time::timeout(Duration::from_secs(60), client.simple_query(&sql))
            .await
            .unwrap_or_else(|_| panic!("{head}: no answer in time"));
        let err = simple.expect_err(head);
        let db = err
            .as_db_error()
            .unwrap_or_else(|| panic!("{head}: not a server error: {err}"));
        assert_eq!(db.code().code(), code, "{head}: {}", db.message());
        let extended = tokio::time::timeout(Duration::from_secs(60), client.query(&sql, &[]))
            .await
            .unwrap_or_else(|_| panic!("{head}: no answer in time"));
        let err = extended.expect_err(head);
        let db = err
            .as_db_error()
            .unwrap_or_else(|| panic!("{head}: not a server error: {err}"));
        assert_eq!(
            db.code().code(),
            code,
            "{head} (extended): {}",
            db.message()
        );
        let one: i64 = client
            .query_one("SELECT 1", &[])
            .await
            .unwrap_or_else(|e| panic!("connection unusable after {head}: {e}"))
            .get(0);
        assert_eq!(one, 1);
    }
    drop(client);
    tokio::time::timeout(Duration::from_secs(10), conn)
        .await
        .expect("the connection ends when the client goes")
        .expect("connection task")
        .expect("the connection ended cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_statements_never_break_a_session() {
    // Binding and execution too, not just parsing: soup against a live session. Errors are
    // fine; a panic fails the test, and the session must keep answering.
    let node = TestNode::start().await;
    let mut s = node.session().await;
    exec(
        &mut s,
        "CREATE TABLE t (id INT PRIMARY KEY, a INT, x STRING)",
    )
    .await;
    exec(
        &mut s,
        "INSERT INTO t VALUES (1, 2, '日本'), (2, NULL, 'é')",
    )
    .await;
    // Generated up front: the runner is not Send, the session lives in async code.
    let mut runner = TestRunner::new(config(300));
    let statements: Vec<String> = (0..runner.config().cases)
        .map(|_| {
            sql_soup()
                .new_tree(&mut runner)
                .expect("a strategy without filters always generates")
                .current()
        })
        .collect();
    for sql in statements {
        let results = s.execute(&sql).await;
        for r in results {
            if let Err(e) = r {
                assert_eq!(e.code().len(), 5, "{sql:?}: bad SQLSTATE {}", e.code());
            }
        }
        let _ = s.execute("ROLLBACK").await;
        assert_eq!(
            rows(&mut s, "SELECT 1").await,
            vec![vec!["1"]],
            "session unusable after {sql:?}"
        );
    }
}

//! Frontend messages read and checked before the pgwire crate decodes them.
//!
//! pgwire 0.42's decoder trusts what a client declares: it reads a body past the message's
//! length (a Describe without a body, `D 00 00 00 04`, or a Parse whose length is 3 panics)
//! and leaves what it did not read to be taken as the next message. So the connection loop
//! ([`crate::protocol::serve_connection`]) reads each frame whole here — type byte, 4-byte
//! big-endian length of at least 4 and at most the type's limit (PostgreSQL's: 10,000 bytes
//! for small messages and the startup packet, 1 GiB − 1 for Query, Parse, Bind and CopyData)
//! — checks that the body holds exactly what its type declares (the NUL-terminated strings
//! and counted fields pgwire will read, nothing missing and nothing left over, as
//! PostgreSQL's `pq_getmsgend` does), and only then hands pgwire a copy of that one frame.
//! A frame that fails is a protocol violation (SQLSTATE `08P01`, PostgreSQL's messages such
//! as `invalid message format`): the connection gets a FATAL error and closes.
//!
//! The checks are pure functions of the bytes ([`check_startup`], [`check_message`]);
//! [`FrameReader`] only adds the reading, bounded by what the client actually sent (a
//! declared length is never allocated up front).

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::error::{SqlError, sqlstate};

/// The longest startup packet, SSLRequest or CancelRequest (PostgreSQL's
/// `MAX_STARTUP_PACKET_LENGTH`).
pub const STARTUP_FRAME_BYTES_MAX: usize = 10_000;
/// The longest message of a small type (PostgreSQL's `PQ_SMALL_MESSAGE_LIMIT`).
pub const SMALL_FRAME_BYTES_MAX: usize = 10_000;
/// The longest password message (PostgreSQL's `PG_MAX_AUTH_TOKEN_LENGTH`).
pub const AUTH_FRAME_BYTES_MAX: usize = 65_535;
/// The longest Query, Parse, Bind or CopyData (PostgreSQL's `PQ_LARGE_MESSAGE_LIMIT`).
pub const LARGE_FRAME_BYTES_MAX: usize = (1 << 30) - 1;

/// How much more to ask the socket for at a time while a frame is incomplete.
const READ_CHUNK_BYTES: usize = 64 * 1024;

const CANCEL_REQUEST_CODE: u32 = 80_877_102;
const SSL_REQUEST_CODE: u32 = 80_877_103;
const GSSENC_REQUEST_CODE: u32 = 80_877_104;

/// Frames refused as protocol violations since the process started (all connections).
static PROTOCOL_VIOLATIONS: AtomicU64 = AtomicU64::new(0);

/// How many frontend frames this process refused as protocol violations.
pub fn protocol_violations() -> u64 {
    PROTOCOL_VIOLATIONS.load(Ordering::Relaxed)
}

pub(crate) fn count_violation() {
    PROTOCOL_VIOLATIONS.fetch_add(1, Ordering::Relaxed);
}

fn violation(message: impl Into<String>) -> SqlError {
    SqlError::new(sqlstate::PROTOCOL_VIOLATION, message)
}

fn invalid_format() -> SqlError {
    violation("invalid message format")
}

/// The frame the connection reads next: before startup frames carry no type byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    Startup,
    Typed,
}

/// Reads whole frames from a client, holding what arrived beyond the current frame.
pub struct FrameReader {
    buf: BytesMut,
}

impl FrameReader {
    /// A reader that starts with `already_read` (bytes read during SSL negotiation).
    pub fn new(already_read: BytesMut) -> FrameReader {
        FrameReader { buf: already_read }
    }

    /// The next whole frame (header included), `Ok(None)` when the client closed the
    /// connection (at or inside a frame: there is nobody left to answer). The header is
    /// checked before the body is read, so a length over its limit is refused at once.
    pub async fn next<R: AsyncRead + Unpin>(
        &mut self,
        io: &mut R,
        kind: FrameKind,
    ) -> std::io::Result<Option<Result<BytesMut, SqlError>>> {
        let header_bytes = match kind {
            FrameKind::Startup => 4,
            FrameKind::Typed => 5,
        };
        if !self.fill(io, header_bytes).await? {
            return Ok(None);
        }
        let frame_bytes = match frame_length(kind, &self.buf[..header_bytes]) {
            Ok(n) => n,
            Err(e) => return Ok(Some(Err(e))),
        };
        if !self.fill(io, frame_bytes).await? {
            return Ok(None);
        }
        Ok(Some(Ok(self.buf.split_to(frame_bytes))))
    }

    /// Reads until `n` bytes are buffered; false if the stream ended first.
    async fn fill<R: AsyncRead + Unpin>(&mut self, io: &mut R, n: usize) -> std::io::Result<bool> {
        while self.buf.len() < n {
            self.buf.reserve((n - self.buf.len()).min(READ_CHUNK_BYTES));
            if io.read_buf(&mut self.buf).await? == 0 {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// The whole frame's length from its header (type byte and length, or the length alone
/// before startup), refused when it cannot be meant.
pub fn frame_length(kind: FrameKind, header: &[u8]) -> Result<usize, SqlError> {
    match (kind, header) {
        (FrameKind::Startup, &[a, b, c, d]) => {
            let len = i32::from_be_bytes([a, b, c, d]);
            match usize::try_from(len) {
                Ok(n) if (8..=STARTUP_FRAME_BYTES_MAX).contains(&n) => Ok(n),
                _ => Err(violation("invalid length of startup packet")),
            }
        }
        (FrameKind::Typed, &[tag, a, b, c, d]) => {
            let max = message_bytes_max(tag)?;
            let len = i32::from_be_bytes([a, b, c, d]);
            match usize::try_from(len) {
                Ok(n) if (4..=max).contains(&n) => Ok(n + 1),
                Ok(n) if n > max => Err(violation(format!(
                    "invalid message length: {n} bytes is over the limit of {max} for message type {}",
                    tag_name(tag)
                ))),
                _ => Err(violation("invalid message length")),
            }
        }
        _ => Err(invalid_format()),
    }
}

/// The limit for a message type, or the error PostgreSQL gives for a type it does not know.
fn message_bytes_max(tag: u8) -> Result<usize, SqlError> {
    match tag {
        b'Q' | b'P' | b'B' | b'd' => Ok(LARGE_FRAME_BYTES_MAX),
        b'D' | b'C' | b'E' | b'S' | b'H' | b'X' | b'c' | b'f' => Ok(SMALL_FRAME_BYTES_MAX),
        b'p' => Ok(AUTH_FRAME_BYTES_MAX),
        // FunctionCall: PostgreSQL has it, pgwire does not decode it.
        b'F' => Err(violation(
            "unsupported frontend message type 70 (function call)",
        )),
        _ => Err(violation(format!("invalid frontend message type {tag}"))),
    }
}

/// The type byte as text for messages: the character when printable, else its number.
fn tag_name(tag: u8) -> String {
    if tag.is_ascii_graphic() {
        format!("'{}'", tag as char)
    } else {
        tag.to_string()
    }
}

/// What a startup-phase frame is, once checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartupFrame {
    Startup,
    Cancel,
}

/// Checks a whole startup-phase frame (length included): a StartupMessage for protocol 3
/// with `name\0value\0` pairs and a final `\0`, or a CancelRequest. (SSL and GSS requests
/// were answered before; one arriving now is out of place.)
pub fn check_startup(frame: &[u8]) -> Result<StartupFrame, SqlError> {
    let Some(code) = frame.get(4..8) else {
        return Err(violation("invalid length of startup packet"));
    };
    let code = u32::from_be_bytes([code[0], code[1], code[2], code[3]]);
    match code {
        CANCEL_REQUEST_CODE => {
            // Process id, then a secret key of 4 to 256 bytes (protocol 3.2).
            if (16..=12 + 256).contains(&frame.len()) {
                Ok(StartupFrame::Cancel)
            } else {
                Err(violation("invalid length of cancel request packet"))
            }
        }
        SSL_REQUEST_CODE | GSSENC_REQUEST_CODE => Err(violation(
            "encryption requests are answered only before the startup packet",
        )),
        _ if code >> 16 == 3 => {
            let mut body = Body::new(&frame[8..]);
            loop {
                match body.cstring() {
                    Some([]) => break,
                    Some(_) => {
                        if body.cstring().is_none() {
                            return Err(violation(
                                "invalid startup packet layout: expected terminator as last byte",
                            ));
                        }
                    }
                    None => {
                        return Err(violation(
                            "invalid startup packet layout: expected terminator as last byte",
                        ));
                    }
                }
            }
            if body.is_empty() {
                Ok(StartupFrame::Startup)
            } else {
                Err(violation(
                    "invalid startup packet layout: expected terminator as last byte",
                ))
            }
        }
        _ => Err(SqlError::new(
            sqlstate::FEATURE_NOT_SUPPORTED,
            format!(
                "unsupported frontend protocol {}.{}: server supports 3.0 to 3.2",
                code >> 16,
                code & 0xffff
            ),
        )),
    }
}

/// Checks a whole typed frame (type byte and length included, as [`FrameReader`] returns
/// it): the body holds exactly the fields its type declares, read the way pgwire reads them.
/// `authenticating` is true while the server waits for a password, the only time a
/// PasswordMessage (`p`) is expected and the only message then expected (PostgreSQL's rule).
pub fn check_message(frame: &[u8], authenticating: bool) -> Result<(), SqlError> {
    let (&tag, rest) = frame.split_first().ok_or_else(invalid_format)?;
    let body = rest.get(4..).ok_or_else(invalid_format)?;
    match (tag, authenticating) {
        (b'p', true) | (b'X', _) => {}
        (_, true) => {
            return Err(violation(format!(
                "expected password response, got message type {tag}"
            )));
        }
        (b'p', false) => return Err(violation(format!("invalid frontend message type {tag}"))),
        _ => {}
    }
    let mut b = Body::new(body);
    let ok = match tag {
        // Query, CopyFail: a string.
        b'Q' | b'f' => b.cstring().is_some(),
        // Parse: statement name, query, parameter type count (u16) and the types.
        b'P' => {
            b.cstring().is_some()
                && b.cstring().is_some()
                && b.u16().is_some_and(|n| b.skip(4 * usize::from(n)))
        }
        b'B' => check_bind(&mut b),
        // Describe, Close: 'S' or 'P' (checked by the handlers, as PostgreSQL's are), a name.
        b'D' | b'C' => b.skip(1) && b.cstring().is_some(),
        // Execute: portal name and the row limit.
        b'E' => b.cstring().is_some() && b.skip(4),
        // Sync, Flush, Terminate, CopyDone: no body.
        b'S' | b'H' | b'X' | b'c' => true,
        // CopyData, password family (cleartext, SASL): any bytes, taken whole.
        b'd' | b'p' => b.skip(b.remaining()),
        _ => {
            message_bytes_max(tag)?;
            false
        }
    };
    if ok && b.is_empty() {
        Ok(())
    } else {
        Err(invalid_format())
    }
}

/// Checks that the text a well-formed typed frame carries — a Query's statement, a Parse's
/// name and statement, a Bind's portal and statement names, a Describe's, Close's or
/// Execute's name — is UTF-8, the only client encoding we serve. pgwire decodes these
/// strings lossily (a byte that is not UTF-8 becomes U+FFFD), so without this check a
/// statement written in another encoding would run as different text and store it.
/// PostgreSQL refuses such a message with `22021` and the session goes on; so does the
/// connection loop. Call it after [`check_message`] accepted the frame.
pub fn check_text(frame: &[u8]) -> Result<(), SqlError> {
    let Some((&tag, rest)) = frame.split_first() else {
        return Ok(());
    };
    let mut b = Body::new(rest.get(4..).unwrap_or_default());
    let strings = match tag {
        b'Q' | b'E' => 1,
        b'P' | b'B' => 2,
        b'D' | b'C' => {
            b.skip(1);
            1
        }
        _ => 0,
    };
    for _ in 0..strings {
        let Some(text) = b.cstring() else {
            return Ok(());
        };
        if let Err(e) = std::str::from_utf8(text) {
            // PostgreSQL shows the bytes of the character the first bad byte begins.
            let start = e.valid_up_to();
            let width = match text[start] {
                0xc0..=0xdf => 2,
                0xe0..=0xef => 3,
                0xf0..=0xf7 => 4,
                _ => 1,
            };
            let end = (start + width).min(text.len());
            let bytes: Vec<String> = text[start..end]
                .iter()
                .map(|b| format!("0x{b:02x}"))
                .collect();
            return Err(SqlError::new(
                sqlstate::CHARACTER_NOT_IN_REPERTOIRE,
                format!(
                    "invalid byte sequence for encoding \"UTF8\": {}",
                    bytes.join(" ")
                ),
            ));
        }
    }
    Ok(())
}

/// Bind: portal, statement, format codes, parameters (each a length, -1 for NULL, and the
/// bytes), result format codes.
fn check_bind(b: &mut Body<'_>) -> bool {
    if b.cstring().is_none() || b.cstring().is_none() {
        return false;
    }
    if !b.u16().is_some_and(|n| b.skip(2 * usize::from(n))) {
        return false;
    }
    let Some(params) = b.u16() else {
        return false;
    };
    for _ in 0..params {
        match b.i32() {
            Some(-1) => {}
            Some(len) => match usize::try_from(len) {
                Ok(len) if b.skip(len) => {}
                _ => return false,
            },
            None => return false,
        }
    }
    b.u16().is_some_and(|n| b.skip(2 * usize::from(n)))
}

/// A cursor over a message body that never reads past it.
struct Body<'a> {
    rest: &'a [u8],
}

impl<'a> Body<'a> {
    fn new(rest: &'a [u8]) -> Body<'a> {
        Body { rest }
    }

    fn remaining(&self) -> usize {
        self.rest.len()
    }

    fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    /// Skips `n` bytes; false (nothing skipped) if fewer remain.
    fn skip(&mut self, n: usize) -> bool {
        match self.rest.get(n..) {
            Some(rest) => {
                self.rest = rest;
                true
            }
            None => false,
        }
    }

    /// A NUL-terminated string (without its NUL), or None if no NUL remains.
    fn cstring(&mut self) -> Option<&'a [u8]> {
        let end = self.rest.iter().position(|&c| c == 0)?;
        let (s, rest) = self.rest.split_at(end);
        self.rest = rest.get(1..)?;
        Some(s)
    }

    fn u16(&mut self) -> Option<u16> {
        let (n, rest) = self.rest.split_first_chunk::<2>()?;
        self.rest = rest;
        Some(u16::from_be_bytes(*n))
    }

    fn i32(&mut self) -> Option<i32> {
        let (n, rest) = self.rest.split_first_chunk::<4>()?;
        self.rest = rest;
        Some(i32::from_be_bytes(*n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typed(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    fn code(r: Result<(), SqlError>) -> Option<&'static str> {
        r.err().map(|e| e.code())
    }

    #[test]
    fn well_formed_messages_pass() {
        let mut bind = b"portal\0stmt\0".to_vec();
        bind.extend_from_slice(&[0, 1, 0, 1]); // one format code: binary
        bind.extend_from_slice(&[0, 2]); // two parameters
        bind.extend_from_slice(&[0, 0, 0, 2, b'h', b'i']);
        bind.extend_from_slice(&(-1i32).to_be_bytes()); // NULL
        bind.extend_from_slice(&[0, 0]); // no result formats
        let cases: Vec<Vec<u8>> = vec![
            typed(b'Q', b"SELECT 1\0"),
            typed(b'P', b"s1\0SELECT $1\0\0\x01\0\0\0\x17"),
            typed(b'P', b"\0SELECT 1\0\0\0"),
            typed(b'B', &bind),
            typed(b'D', b"Ss1\0"),
            typed(b'D', b"P\0"),
            typed(b'C', b"S\0"),
            typed(b'E', b"\0\0\0\0\0"),
            typed(b'S', b""),
            typed(b'H', b""),
            typed(b'X', b""),
            typed(b'd', b"1\t2\n"),
            typed(b'd', b""),
            typed(b'c', b""),
            typed(b'f', b"aborted\0"),
        ];
        for m in cases {
            assert_eq!(check_message(&m, false).ok(), Some(()), "{m:?}");
        }
        assert_eq!(
            check_message(&typed(b'p', b"secret\0"), true).ok(),
            Some(())
        );
    }

    #[test]
    fn short_long_and_garbage_bodies_are_protocol_violations() {
        let cases: Vec<Vec<u8>> = vec![
            typed(b'D', b""),
            typed(b'D', b"S"),
            typed(b'C', b""),
            typed(b'E', b"\0\0\0"),
            typed(b'E', b"portal"),
            typed(b'P', b"s1\0"),
            typed(b'P', b"s1\0SELECT 1\0\0"),
            typed(b'P', b"s1\0SELECT 1\0\0\x02\0\0\0\x17"),
            typed(b'B', b"\0\0\0\0\0\x01\xff\xff\xff\xfe\0\0"),
            typed(b'B', b"\0\0\0\0\0\x01\0\0\0\x09ab\0\0"),
            typed(b'Q', b"SELECT 1"),
            typed(b'Q', b"SELECT 1\0trailing"),
            typed(b'S', b"x"),
            typed(b'H', b"x"),
            typed(b'c', b"x"),
            typed(b'f', b""),
            typed(b'F', b"\0\0\0\0"),
            typed(b'Z', b""),
        ];
        for m in cases {
            assert_eq!(code(check_message(&m, false)), Some("08P01"), "{m:?}");
        }
        // A password outside authentication, anything but a password during it.
        assert_eq!(
            code(check_message(&typed(b'p', b"x\0"), false)),
            Some("08P01")
        );
        assert_eq!(
            code(check_message(&typed(b'Q', b"x\0"), true)),
            Some("08P01")
        );
    }

    #[test]
    fn lengths_are_checked_before_bodies_are_read() {
        let len = |tag: u8, n: i32| {
            let mut h = vec![tag];
            h.extend_from_slice(&n.to_be_bytes());
            frame_length(FrameKind::Typed, &h)
        };
        assert_eq!(len(b'D', 4).ok(), Some(5));
        for n in [-1, 0, 3, i32::MIN] {
            assert!(len(b'P', n).is_err(), "{n}");
        }
        assert!(len(b'D', 10_001).is_err());
        assert!(len(b'Q', 10_001).is_ok());
        assert!(len(b'Q', i32::MAX).is_err());
        assert!(len(b'?', 4).is_err());
        let startup = |n: i32| frame_length(FrameKind::Startup, &n.to_be_bytes());
        assert_eq!(startup(8).ok(), Some(8));
        for n in [-8, 0, 7, 10_001] {
            assert!(startup(n).is_err(), "{n}");
        }
    }

    #[test]
    fn startup_packets_need_their_terminator() {
        let packet = |version: u32, params: &[u8]| {
            let mut m = ((params.len() + 8) as i32).to_be_bytes().to_vec();
            m.extend_from_slice(&version.to_be_bytes());
            m.extend_from_slice(params);
            m
        };
        let v3 = 196_608;
        assert_eq!(
            check_startup(&packet(v3, b"user\0root\0\0")).ok(),
            Some(StartupFrame::Startup)
        );
        assert_eq!(
            check_startup(&packet(v3, b"\0")).ok(),
            Some(StartupFrame::Startup)
        );
        for bad in [&b""[..], b"user\0root\0", b"user\0root", b"user\0", b"\0\0"] {
            assert!(check_startup(&packet(v3, bad)).is_err(), "{bad:?}");
        }
        let err = check_startup(&packet(2 << 16, b"\0")).expect_err("protocol 2");
        assert_eq!(err.code(), "0A000");
        let cancel = packet(CANCEL_REQUEST_CODE, &[0, 0, 0, 1, 0, 0, 0, 2]);
        assert_eq!(check_startup(&cancel).ok(), Some(StartupFrame::Cancel));
        assert!(check_startup(&packet(CANCEL_REQUEST_CODE, &[0, 0, 0, 1])).is_err());
        assert!(check_startup(&packet(SSL_REQUEST_CODE, b"")).is_err());
    }

    /// Text fields that are not UTF-8 are refused with PostgreSQL's 22021 (pgwire would have
    /// turned them into U+FFFD and run the statement); every other field is left alone.
    #[test]
    fn text_that_is_not_utf8_is_refused() {
        let refused = [
            typed(b'Q', b"SELECT '\xff\xfe'\0"),
            typed(b'Q', b"INSERT INTO t VALUES ('caf\xe9')\0"),
            typed(b'P', b"s\xc3\0SELECT 1\0\0\0"),
            typed(b'P', b"s\0SELECT '\xed\xa0\x80'\0\0\0"),
            typed(b'B', b"\0st\x80\0\0\0\0\0\0\0"),
            typed(b'D', b"Sst\xff\0"),
            typed(b'C', b"P\xfe\0"),
            typed(b'E', b"\xff\0\0\0\0\0"),
        ];
        for m in refused {
            assert_eq!(check_message(&m, false).err().map(|e| e.code()), None);
            assert_eq!(code(check_text(&m)), Some("22021"), "{m:?}");
        }
        let err = check_text(&typed(b'Q', b"SELECT 'caf\xe9'\0")).expect_err("latin-1");
        assert_eq!(
            err.message(),
            "invalid byte sequence for encoding \"UTF8\": 0xe9 0x27"
        );
        let accepted = [
            typed(b'Q', "SELECT '日本', 'é'\0".as_bytes()),
            typed(b'P', "s\0SELECT '日本'\0\0\0".as_bytes()),
            // Bind parameters and COPY data are values, checked where they are parsed.
            typed(b'B', b"\0\0\0\0\0\x01\0\0\0\x01\xff\0\0"),
            typed(b'd', b"\xff\xfe\n"),
            typed(b'p', b"\xff\0"),
            typed(b'S', b""),
        ];
        for m in accepted {
            assert_eq!(code(check_text(&m)), None, "{m:?}");
        }
    }
}

//! A minimal HTTP/1.1 GET client for a node's `/health` and `/metrics`.
//!
//! The testbed needs two plain GETs against loopback; a full HTTP stack would be a large
//! dependency for that. Handles `Content-Length`, `Transfer-Encoding: chunked` and
//! read-to-close bodies, with a deadline on the whole exchange.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::error::{Result, SimError};

/// Upper bound on a response we are willing to buffer.
const RESPONSE_BYTES_MAX: usize = 64 << 20;

/// A response: status code and body text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    pub body: String,
}

/// `GET path` on `addr`, failing after `timeout`.
pub async fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<HttpResponse> {
    match tokio::time::timeout(timeout, get_inner(addr, path)).await {
        Ok(result) => result,
        Err(_) => Err(SimError::Timeout {
            what: format!("GET http://{addr}{path}"),
            waited_ms: timeout.as_millis(),
            details: String::new(),
        }),
    }
}

async fn get_inner(addr: SocketAddr, path: &str) -> Result<HttpResponse> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| SimError::io(format!("connecting to http://{addr}"), e))?;
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAccept: */*\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| SimError::io(format!("sending GET {path} to {addr}"), e))?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = stream
            .read(&mut buf)
            .await
            .map_err(|e| SimError::io(format!("reading response from {addr}"), e))?;
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
        if raw.len() > RESPONSE_BYTES_MAX {
            return Err(SimError::Protocol(format!(
                "response from {addr}{path} exceeds {RESPONSE_BYTES_MAX} bytes"
            )));
        }
        // Stop early once a complete response is buffered (the server may keep the socket).
        if let Some(done) = parse_response(&raw, false)? {
            return Ok(done);
        }
    }
    parse_response(&raw, true)?
        .ok_or_else(|| SimError::Protocol(format!("incomplete response from {addr}{path}")))
}

/// Parses a complete response, `None` if more bytes are needed. `eof`: the server closed the
/// connection, which ends a body that has neither a length nor chunks.
fn parse_response(raw: &[u8], eof: bool) -> Result<Option<HttpResponse>> {
    let Some(header_end) = find(raw, b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = String::from_utf8_lossy(&raw[..header_end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = parse_status(status_line)?;
    let mut content_length = None;
    let mut chunked = false;
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            let name = name.trim().to_ascii_lowercase();
            let value = value.trim();
            if name == "content-length" {
                content_length = value.parse::<usize>().ok();
            } else if name == "transfer-encoding" && value.to_ascii_lowercase().contains("chunked")
            {
                chunked = true;
            }
        }
    }
    let body = &raw[header_end + 4..];
    if chunked {
        return Ok(decode_chunked(body).map(|b| HttpResponse {
            status,
            body: String::from_utf8_lossy(&b).into_owned(),
        }));
    }
    if let Some(len) = content_length {
        if body.len() >= len {
            return Ok(Some(HttpResponse {
                status,
                body: String::from_utf8_lossy(&body[..len]).into_owned(),
            }));
        }
        return Ok(None);
    }
    if eof {
        return Ok(Some(HttpResponse {
            status,
            body: String::from_utf8_lossy(body).into_owned(),
        }));
    }
    Ok(None)
}

fn parse_status(line: &str) -> Result<u16> {
    let mut parts = line.split_whitespace();
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/") {
        return Err(SimError::Protocol(format!(
            "not an HTTP status line: {line:?}"
        )));
    }
    parts
        .next()
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| SimError::Protocol(format!("bad HTTP status line: {line:?}")))
}

/// Decodes a chunked body; `None` until the terminating zero-length chunk has arrived.
fn decode_chunked(mut body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = find(body, b"\r\n")?;
        let size_text = String::from_utf8_lossy(&body[..line_end]);
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16).ok()?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        if body.len() < size + 2 {
            return None;
        }
        out.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[test]
    fn parses_content_length_and_chunked() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        assert_eq!(
            parse_response(raw, false).expect("parse"),
            Some(HttpResponse {
                status: 200,
                body: "ok".into()
            })
        );
        let partial = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nok";
        assert_eq!(parse_response(partial, false).expect("parse"), None);
        let chunked = b"HTTP/1.1 503 Service Unavailable\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        assert_eq!(
            parse_response(chunked, false).expect("parse"),
            Some(HttpResponse {
                status: 503,
                body: "abcde".into()
            })
        );
        assert!(parse_response(b"SSH-2.0\r\n\r\n", true).is_err());
    }

    #[tokio::test]
    async fn gets_from_a_real_socket() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            let mut buf = vec![0u8; 1024];
            let n = socket.read(&mut buf).await.expect("read");
            let request = String::from_utf8_lossy(&buf[..n]).into_owned();
            socket
                .write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nhealthy")
                .await
                .expect("write");
            request
        });
        let response = http_get(addr, "/health", Duration::from_secs(30))
            .await
            .expect("get");
        assert_eq!(
            response,
            HttpResponse {
                status: 200,
                body: "healthy".into()
            }
        );
        let request = server.await.expect("server task");
        assert!(request.starts_with("GET /health HTTP/1.1\r\n"), "{request}");
    }
}

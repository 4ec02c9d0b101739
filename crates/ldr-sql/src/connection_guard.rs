//! The last line of defence for a SQL connection: a panic while serving it (in our code or in
//! the pgwire crate, whose decoder only sees frames `frontend_frame` checked) is caught at the
//! connection's task, logged, counted ([`panics_caught`]) and answered with a `FATAL` `XX000`
//! ErrorResponse before the socket closes, as PostgreSQL does for an internal error that ends
//! a session. The node and its other connections keep serving. Not a substitute for errors: every known case returns
//! one; this exists so that a missed case costs one connection, not the node.

use std::any::Any;
use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::FutureExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tracing::{debug, error};

/// How long the goodbye message may take to write.
const GOODBYE_TIMEOUT: Duration = Duration::from_secs(1);

/// Connections that panicked since the process started.
static PANICS: AtomicU64 = AtomicU64::new(0);

/// How many connections this process closed because they panicked (each one is a bug: a
/// missed error case).
pub fn panics_caught() -> u64 {
    PANICS.load(Ordering::Relaxed)
}

/// Serves one connection with `serve`, catching a panic inside it.
pub async fn serve_guarded<F, Fut>(stream: TcpStream, peer: SocketAddr, serve: F)
where
    F: FnOnce(TcpStream) -> Fut,
    Fut: Future<Output = ()>,
{
    // A second handle on the socket to say goodbye with: the connection's own handle is
    // dropped while the panic unwinds.
    let (stream, spare) = match split_handle(stream) {
        Ok(pair) => pair,
        Err(e) => {
            debug!(%peer, error = %e, "cannot set up the sql connection");
            return;
        }
    };
    // Unwind safety: the connection's state dies with it; what it shares with the node
    // (catalog cache, KV client, job registry) is consistent at every await point.
    if let Err(payload) = AssertUnwindSafe(serve(stream)).catch_unwind().await {
        PANICS.fetch_add(1, Ordering::Relaxed);
        let message = panic_message(payload.as_ref());
        error!(%peer, panic = %message, "sql connection panicked; closing it with an internal error");
        if let Some(mut spare) = spare {
            let goodbye = fatal_internal_error(&message);
            let _ = tokio::time::timeout(GOODBYE_TIMEOUT, spare.write_all(&goodbye)).await;
            let _ = spare.shutdown().await;
        }
    }
}

/// The text of a caught panic's payload (`panic!` with a literal or a formatted message).
fn panic_message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_string())
}

/// The stream back, plus a duplicate handle when the system allows one (without it a panic
/// still closes the connection, only without the error message).
fn split_handle(stream: TcpStream) -> std::io::Result<(TcpStream, Option<TcpStream>)> {
    let std_stream = stream.into_std()?;
    let spare = std_stream
        .try_clone()
        .and_then(TcpStream::from_std)
        .map_err(|e| debug!(error = %e, "no spare handle for the sql connection"))
        .ok();
    Ok((TcpStream::from_std(std_stream)?, spare))
}

/// A pgwire ErrorResponse: `FATAL`, SQLSTATE `XX000`, the panic as detail.
fn fatal_internal_error(panic: &str) -> Vec<u8> {
    let fields: [(u8, &str); 5] = [
        (b'S', "FATAL"),
        (b'V', "FATAL"),
        (b'C', "XX000"),
        (
            b'M',
            "internal error: the server failed while serving this connection",
        ),
        (b'D', panic),
    ];
    let mut body = Vec::new();
    for (tag, text) in fields {
        body.push(tag);
        // Fields are NUL-terminated: a NUL inside the text would end it early.
        body.extend(text.bytes().filter(|b| *b != 0));
        body.push(0);
    }
    body.push(0);
    let len = i32::try_from(body.len() + 4).unwrap_or(i32::MAX);
    let mut message = vec![b'E'];
    message.extend_from_slice(&len.to_be_bytes());
    message.extend_from_slice(&body);
    message
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    /// Reads what the server sent until it closed the connection.
    async fn read_to_close(mut client: TcpStream) -> Vec<u8> {
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut got))
            .await
            .expect("the server closed the connection in time")
            .expect("read");
        got
    }

    #[tokio::test]
    async fn a_panicking_connection_gets_xx000_and_the_server_keeps_serving() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let server = tokio::spawn(async move {
            // Connection 1 panics mid-session; connection 2 is served normally after it.
            for n in 0..2 {
                let (stream, peer) = listener.accept().await.expect("accept");
                let task = tokio::spawn(serve_guarded(stream, peer, move |mut s| async move {
                    if n == 0 {
                        let held = [1u8];
                        panic!(
                            "index out of bounds: the len is {} but the index is 4",
                            held.len()
                        );
                    }
                    s.write_all(b"ok").await.expect("write");
                }));
                task.await
                    .expect("the connection task itself did not panic");
            }
        });

        let first = read_to_close(TcpStream::connect(addr).await.expect("connect")).await;
        assert_eq!(first.first(), Some(&b'E'), "an ErrorResponse: {first:?}");
        let len = i32::from_be_bytes(first[1..5].try_into().expect("length")) as usize;
        assert_eq!(first.len(), 1 + len, "exactly one message, then the close");
        let text = String::from_utf8_lossy(&first);
        assert!(text.contains("SFATAL\0"), "{text:?}");
        assert!(text.contains("CXX000\0"), "{text:?}");
        assert!(text.contains("Dindex out of bounds"), "{text:?}");

        let second = read_to_close(TcpStream::connect(addr).await.expect("connect")).await;
        assert_eq!(second, b"ok", "the next connection is served as usual");
        server.await.expect("the accept loop survived the panic");
    }

    #[test]
    fn the_error_response_is_well_formed_even_with_nul_in_the_message() {
        let m = fatal_internal_error("a\0b");
        let len = i32::from_be_bytes(m[1..5].try_into().expect("length")) as usize;
        assert_eq!(m.len(), 1 + len);
        assert_eq!(m.last(), Some(&0));
        assert!(String::from_utf8_lossy(&m).contains("Dab\0"));
    }
}

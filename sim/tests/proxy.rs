//! The fault proxy against a plain TCP echo server: each mode does what it promises, and
//! switching back to `Pass` always restores service.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ldr_sim::{Fault, FaultProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const WAIT: Duration = Duration::from_secs(30);

/// An echo server: returns every byte it receives, per connection.
async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind echo server");
    let addr = listener.local_addr().expect("echo addr");
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let (mut r, mut w) = socket.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

async fn roundtrip(stream: &mut TcpStream, payload: &[u8]) -> std::io::Result<Vec<u8>> {
    stream.write_all(payload).await?;
    let mut out = vec![0u8; payload.len()];
    stream.read_exact(&mut out).await?;
    Ok(out)
}

/// Reads until EOF or error; true if the connection was closed (as opposed to data arriving).
async fn closed_within(stream: &mut TcpStream, timeout: Duration) -> bool {
    let mut buf = [0u8; 64];
    match tokio::time::timeout(timeout, stream.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(_)) => false,
        Err(_) => false,
    }
}

#[tokio::test]
async fn pass_forwards_bytes_intact_both_ways() {
    let proxy = FaultProxy::start(echo_server().await).await.expect("proxy");
    let mut conn = TcpStream::connect(proxy.addr())
        .await
        .expect("connect via proxy");
    // Why: larger than the proxy's in-flight bound, so chunking and backpressure are exercised.
    let payload: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let (mut r, mut w) = conn.split();
    let writer = async {
        w.write_all(&payload).await.expect("write");
    };
    let reader = async {
        let mut got = vec![0u8; payload.len()];
        r.read_exact(&mut got).await.expect("read echo");
        got
    };
    let ((), got) = tokio::time::timeout(WAIT, async { tokio::join!(writer, reader) })
        .await
        .expect("echo in time");
    assert!(got == payload, "echoed bytes differ from sent bytes");
    let stats = proxy.stats();
    assert_eq!(stats.bytes_to_target, payload.len() as u64);
    assert_eq!(stats.bytes_to_client, payload.len() as u64);
    assert_eq!(stats.accepted, 1);
}

#[tokio::test]
async fn cut_resets_existing_and_refuses_new_connections_until_pass() {
    let proxy = FaultProxy::start(echo_server().await).await.expect("proxy");
    let mut existing = TcpStream::connect(proxy.addr()).await.expect("connect");
    assert_eq!(
        roundtrip(&mut existing, b"hello")
            .await
            .expect("echo before cut"),
        b"hello"
    );

    // Why: a cut must sever established streams, not only new ones.
    proxy.cut();
    assert!(
        closed_within(&mut existing, WAIT).await,
        "existing connection survived a cut"
    );

    // Why: new connections are accepted by the kernel but closed at once, never forwarded.
    let mut fresh = TcpStream::connect(proxy.addr())
        .await
        .expect("tcp connect still completes");
    let _ = fresh.write_all(b"x").await;
    assert!(
        closed_within(&mut fresh, WAIT).await,
        "new connection was served during a cut"
    );
    assert!(proxy.stats().refused >= 1);

    // Why: healing restores service for new connections.
    proxy.pass();
    let mut healed = TcpStream::connect(proxy.addr())
        .await
        .expect("connect after heal");
    assert_eq!(
        tokio::time::timeout(WAIT, roundtrip(&mut healed, b"again"))
            .await
            .expect("in time")
            .expect("echo"),
        b"again"
    );
}

#[tokio::test]
async fn delay_adds_latency_in_each_direction() {
    let proxy = FaultProxy::start(echo_server().await).await.expect("proxy");
    let mut conn = TcpStream::connect(proxy.addr()).await.expect("connect");
    roundtrip(&mut conn, b"warm").await.expect("warm-up echo");

    proxy.set(Fault::Delay { ms: 150 });
    let start = Instant::now();
    let echoed = tokio::time::timeout(WAIT, roundtrip(&mut conn, b"slow"))
        .await
        .expect("in time")
        .expect("echo");
    let elapsed = start.elapsed();
    assert_eq!(echoed, b"slow");
    // Why: the request and the echo each pass the proxy once, so at least two delays.
    assert!(
        elapsed >= Duration::from_millis(300),
        "round trip took only {elapsed:?} with 150ms per direction"
    );

    proxy.pass();
    assert_eq!(
        roundtrip(&mut conn, b"fast")
            .await
            .expect("echo after pass"),
        b"fast"
    );
}

#[tokio::test]
async fn blackhole_holds_traffic_and_delivers_it_in_order_after_heal() {
    let proxy = FaultProxy::start(echo_server().await).await.expect("proxy");
    let mut existing = TcpStream::connect(proxy.addr()).await.expect("connect");
    assert_eq!(
        roundtrip(&mut existing, b"one").await.expect("echo"),
        b"one"
    );

    proxy.blackhole();
    existing
        .write_all(b"two")
        .await
        .expect("write is accepted by the kernel");
    // Why: nothing may come back while blackholed (a bounded wait is the only way to observe
    // an absence).
    let mut buf = [0u8; 3];
    assert!(
        tokio::time::timeout(Duration::from_millis(300), existing.read_exact(&mut buf))
            .await
            .is_err(),
        "data crossed a blackhole"
    );
    // A new connection is accepted but not served either.
    let mut fresh = TcpStream::connect(proxy.addr())
        .await
        .expect("tcp connect completes during blackhole");
    fresh.write_all(b"new").await.expect("write");
    let mut fresh_buf = [0u8; 3];
    assert!(
        tokio::time::timeout(Duration::from_millis(300), fresh.read_exact(&mut fresh_buf))
            .await
            .is_err(),
        "new connection served during blackhole"
    );

    // Why: after healing, held bytes flow in order, so streams are not corrupted.
    proxy.pass();
    tokio::time::timeout(WAIT, existing.read_exact(&mut buf))
        .await
        .expect("in time")
        .expect("read");
    assert_eq!(&buf, b"two");
    tokio::time::timeout(WAIT, fresh.read_exact(&mut fresh_buf))
        .await
        .expect("in time")
        .expect("read");
    assert_eq!(&fresh_buf, b"new");
    assert_eq!(
        roundtrip(&mut existing, b"three").await.expect("echo"),
        b"three"
    );
}

#[tokio::test]
async fn dropping_the_proxy_closes_its_connections() {
    let proxy = FaultProxy::start(echo_server().await).await.expect("proxy");
    let addr = proxy.addr();
    let mut conn = TcpStream::connect(addr).await.expect("connect");
    assert_eq!(roundtrip(&mut conn, b"hi").await.expect("echo"), b"hi");
    drop(proxy);
    assert!(
        closed_within(&mut conn, WAIT).await,
        "connection outlived its proxy"
    );
    // The listener is gone: new connections are refused (poll: the abort is asynchronous).
    let deadline = Instant::now() + WAIT;
    while TcpStream::connect(addr).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "proxy still listening after drop"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

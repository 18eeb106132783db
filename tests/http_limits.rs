//! Slow and greedy HTTP clients: half-sent request heads are cut off after the header-read
//! timeout, idle keep-alive connections after the idle timeout, connections over the cap are
//! closed at accept, and `/healthz` answers while a thousand slow clients hold connections.

mod common;

use std::time::Duration;

use common::TestServer;
use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Opens a connection and sends a request head that never ends.
async fn slow_client(server: &TestServer) -> TcpStream {
    let mut stream = TcpStream::connect(server.server.http_addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: slow\r\nX-Slow: 1\r\n")
        .await
        .unwrap();
    stream
}

/// Whether the server closed `stream` within `within` (EOF or a reset; a 408 before it is fine).
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    tokio::time::timeout(within, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_answers_while_a_thousand_slow_clients_are_connected() {
    let server =
        TestServer::start_with(|c| c.http_header_read_timeout = Duration::from_secs(3)).await;
    let mut slow = Vec::new();
    for _ in 0..1000 {
        slow.push(slow_client(&server).await);
    }
    let health = server
        .http
        .get(server.url("/healthz"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .expect("/healthz answers");
    assert_eq!(health.status(), StatusCode::OK);

    let mut closed = 0;
    for stream in &mut slow {
        if closed_within(stream, Duration::from_secs(10)).await {
            closed += 1;
        }
    }
    assert_eq!(closed, 1000, "every half-sent head is cut off");
    // The one left is the connection asking.
    assert_eq!(
        server
            .wait_metric("convene_http_connections", 1.0, Duration::from_secs(5))
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_are_closed() {
    let server = TestServer::start_with(|c| c.http_idle_timeout = Duration::from_secs(1)).await;
    let mut stream = TcpStream::connect(server.server.http_addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: idle\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    assert!(
        closed_within(&mut stream, Duration::from_secs(10)).await,
        "the idle connection is closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_are_closed_at_accept() {
    let server = TestServer::start_with(|c| {
        c.http_max_connections = 20;
        c.http_header_read_timeout = Duration::from_secs(30);
    })
    .await;
    let mut streams = Vec::new();
    for _ in 0..30 {
        streams.push(slow_client(&server).await);
    }
    let mut refused = 0;
    for stream in &mut streams {
        if closed_within(stream, Duration::from_millis(300)).await {
            refused += 1;
        }
    }
    assert_eq!(
        refused, 10,
        "the ten over the cap are closed, the twenty held"
    );
    drop(streams);
    assert_eq!(
        server
            .wait_metric("convene_http_connections", 1.0, Duration::from_secs(5))
            .await,
        1.0,
        "slots come back when clients go (the one left is the connection asking)"
    );
    // The ten, plus any scrape above that came while the dropped connections were still
    // closing (it was refused and retried).
    let refused_total = server
        .metric("convene_http_connections_refused_total")
        .await;
    assert!(
        (10.0..=13.0).contains(&refused_total),
        "{refused_total} refused"
    );
}

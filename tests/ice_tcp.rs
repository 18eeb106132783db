//! ICE-TCP (RFC 6544): the SFU answers with passive TCP candidates on its media port number, and
//! a client with no UDP at all (as behind a firewall that blocks it) publishes and watches over
//! TCP, RFC 4571 framing both ways.

mod common;

use std::time::Duration;

use common::client::{Kind, PeerOptions, WhepSubscriber, WhipPublisher};
use common::TestServer;

fn tcp_only() -> PeerOptions {
    PeerOptions {
        bind: "",
        tcp: Some("127.0.0.1:0"),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_udp_publishes_and_watches_over_tcp() {
    let server = TestServer::start().await;

    let viewer = WhepSubscriber::connect_configured(
        &server,
        "tcp",
        &server.token("tcp", "viewer", false, true),
        tcp_only(),
    )
    .await;
    let publisher = WhipPublisher::connect_configured(
        &server,
        "tcp",
        &server.token("tcp", "publisher", true, false),
        tcp_only(),
    )
    .await;
    let port = server.server.media_addr.port();
    let answer = &publisher.session.answer;
    assert!(
        answer
            .lines()
            .any(|l| l.contains(&format!(" 127.0.0.1 {port} typ host tcptype passive"))),
        "{answer}"
    );
    for sequence in 0..60u16 {
        publisher.send(Kind::Video, sequence, vec![0x10; 900]).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let got = viewer
        .wait_packets(Kind::Video, 50, Duration::from_secs(10))
        .await;
    assert!(got >= 50, "the viewer got {got} packets over TCP");
    // One connection per peer at least (webrtc-rs may open a spare one, which the server closes
    // unless a verified check binds it).
    assert!(server.metric("convene_ice_tcp_connections_total").await >= 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ice_tcp_can_be_turned_off() {
    let server = TestServer::start_with(|c| c.ice_tcp = false).await;
    let publisher = WhipPublisher::connect(
        &server,
        "udp",
        &server.token("udp", "publisher", true, false),
    )
    .await;
    assert!(!publisher.session.answer.contains("tcptype"));
    let port = server.server.media_addr.port();
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
}

/// Chromium in a network namespace whose every outgoing UDP datagram is dropped (a firewall that
/// lets only TCP out) publishes through WHIP and watches through WHEP: ICE-TCP carries both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_behind_a_udp_blocking_firewall_connects_over_tcp() {
    let link = common::netns::Link::new();
    link.drop_udp(common::netns::Way::Out, 100);
    let server = TestServer::on_link(&link).await;
    let chromium = link.wrapper(&common::browser::chromium());
    let url = format!("http://{}", server.server.http_addr);
    // The page is not on localhost: let it use the (fake) camera all the same.
    let secure = format!("--unsafely-treat-insecure-origin-as-secure={url}");
    common::browser::run_script(
        "whip_whep.mjs",
        &[
            ("CONVENE_URL", &url),
            ("CHROMIUM_EXTRA_ARGS", &secure),
            ("ROOM", "firewalled"),
            (
                "PUBLISH_TOKEN",
                &server.token("firewalled", "publisher", true, false),
            ),
            (
                "WATCH_TOKEN",
                &server.token("firewalled", "viewer", false, true),
            ),
            ("CHROMIUM", chromium.to_str().unwrap()),
            (
                "ARTIFACT_DIR",
                common::browser::root()
                    .join("test-artifacts/ice-tcp")
                    .to_str()
                    .unwrap(),
            ),
        ],
        Duration::from_secs(90),
    )
    .await;
    assert!(
        link.dropped(common::netns::Way::Out) > 0,
        "Chromium tried UDP first"
    );
    assert!(server.metric("convene_ice_tcp_connections_total").await >= 2.0);
}

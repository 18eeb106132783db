//! IPv6: a dual-stack media socket (`::`) takes a publisher over `::1` and viewers over `::1` and
//! over IPv4 on the same port; the embedded TURN server allocates an IPv6 relay when asked
//! (RFC 6156) and relays to Convene's IPv6 media address.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::client::{sdp_attribute, Kind, PeerOptions, WhepSubscriber, WhipPublisher};
use common::TestServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipv6_publisher_reaches_ipv6_and_ipv4_viewers_on_one_dual_stack_port() {
    let server = TestServer::start_with(|c| {
        c.media_bind_ip = "::".parse().unwrap();
        c.public_ip = vec!["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()];
        c.media_workers = 1;
    })
    .await;
    let on_ipv6 = || PeerOptions {
        bind: "[::1]:0",
        ..Default::default()
    };
    let v6_viewer = WhepSubscriber::connect_configured(
        &server,
        "six",
        &server.token("six", "v6-viewer", false, true),
        on_ipv6(),
    )
    .await;
    let v4_viewer = WhepSubscriber::connect(
        &server,
        "six",
        &server.token("six", "v4-viewer", false, true),
        None,
    )
    .await;
    let publisher = WhipPublisher::connect_configured(
        &server,
        "six",
        &server.token("six", "publisher", true, false),
        on_ipv6(),
    )
    .await;
    // The answer offers both families on the one port.
    let candidates: Vec<&str> = publisher
        .session
        .answer
        .lines()
        .filter(|l| l.starts_with("a=candidate:"))
        .collect();
    let port = server.server.media_addr.port().to_string();
    for ip in ["127.0.0.1", "::1"] {
        assert!(
            candidates
                .iter()
                .any(|c| c.contains(&format!(" {ip} {port} typ host"))),
            "{candidates:?}"
        );
    }
    assert!(sdp_attribute(&publisher.session.answer, "ice-ufrag").is_some());
    for sequence in 0..60u16 {
        publisher.send(Kind::Audio, sequence, vec![6; 40]).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for (name, viewer) in [("IPv6", &v6_viewer), ("IPv4", &v4_viewer)] {
        let got = viewer
            .wait_packets(Kind::Audio, 40, Duration::from_secs(10))
            .await;
        assert!(got >= 40, "the {name} viewer got {got}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turn_allocates_an_ipv6_relay_when_asked() {
    let server = TestServer::start_with(|c| {
        c.media_bind_ip = "::".parse().unwrap();
        c.public_ip = vec!["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()];
        c.media_workers = 1;
        c.turn.enabled = true;
        c.turn.listen = "[::1]:0".parse().unwrap();
        c.turn.secret = "six-six-six-six-six".to_owned();
    })
    .await;
    let turn = server.server.turn.as_ref().unwrap().udp;
    let media = SocketAddr::new("::1".parse().unwrap(), server.server.media_addr.port());
    let outcome = common::turn_client::allocate_ipv6(turn, "six-six-six-six-six", media).await;
    assert!(outcome.relayed.is_ipv6(), "{outcome:?}");
    assert_eq!(outcome.permission_to_media, None, "{outcome:?}");
    assert_eq!(outcome.permission_to_ipv4, Some(443), "{outcome:?}");
}

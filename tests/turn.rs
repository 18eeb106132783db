//! TURN: the embedded server speaks TURN to a raw client (refusals: unauthenticated, forged,
//! expired, peers outside Convene; over UDP and TCP), relays a webrtc-rs publisher that may only
//! use relay candidates, and hands coturn-compatible credentials to clients (WHIP/WHEP `Link`,
//! the REST join, `/ice-servers`); an external coturn given the same secret relays the same
//! publisher.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::client::{Kind, PeerOptions, WhepSubscriber, WhipPublisher};
use common::turn_client::{RawClient, Wire};
use common::TestServer;
use rtc::peer_connection::configuration::{
    RTCConfigurationBuilder, RTCIceServer, RTCIceTransportPolicy,
};

use rtc::stun::message::*;
use rtc::turn::proto::lifetime::Lifetime;
use rtc::turn::proto::peeraddr::PeerAddress;
use rtc::turn::proto::relayaddr::RelayedAddress;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECRET: &str = "turn-test-secret";

async fn turn_server() -> TestServer {
    TestServer::start_with(|c| {
        c.turn.enabled = true;
        c.turn.listen = "127.0.0.1:0".parse().unwrap();
        c.turn.secret = SECRET.to_owned();
    })
    .await
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The sum of a metric's series whose line starts with `prefix`.
async fn metric_sum(server: &TestServer, prefix: &str) -> f64 {
    server
        .metrics()
        .await
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn credential(identity: &str, ttl: u64) -> (String, String) {
    let c = convene::turn::credentials::issue(SECRET.as_bytes(), identity, ttl, unix_now());
    (c.username, c.password)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turn_refuses_strangers_and_expired_credentials_and_relays_only_to_convene() {
    let server = turn_server().await;
    let turn = server.server.turn.as_ref().expect("turn runs");
    let media = server.server.media_addr;
    let mut client = RawClient::udp(turn.udp).await;

    // Unauthenticated: 401 with the realm and a nonce to answer with.
    let answer = client.allocate(None).await;
    assert_eq!(answer.code, Some(401));
    assert_eq!(client.realm, "convene");
    assert_eq!(client.nonce.len(), 32);

    // A password not made from our secret, or a credential already expired: 401.
    let (username, _) = credential("alice", 600);
    let answer = client.allocate(Some((&username, "forged"))).await;
    assert_eq!(answer.code, Some(401), "forged password");
    let expired =
        convene::turn::credentials::issue(SECRET.as_bytes(), "alice", 60, unix_now() - 120);
    let answer = client
        .allocate(Some((&expired.username, &expired.password)))
        .await;
    assert_eq!(answer.code, Some(401), "expired credential");
    let answer = client.allocate(Some(("alice", "x"))).await;
    assert_eq!(answer.code, Some(401), "not expiry:identity");

    // A valid credential allocates a relay, once per 5-tuple.
    let (username, password) = credential("alice", 600);
    let answer = client.allocate(Some((&username, &password))).await;
    assert_eq!(answer.code, None, "{}", answer.msg);
    let mut relayed = RelayedAddress::default();
    relayed.get_from(&answer.msg).unwrap();
    assert_eq!(relayed.ip.to_string(), "127.0.0.1");
    let mut lifetime = Lifetime::default();
    lifetime.get_from(&answer.msg).unwrap();
    assert_eq!(lifetime.0, Duration::from_secs(600));
    let answer = client.allocate(Some((&username, &password))).await;
    assert_eq!(
        answer.code,
        Some(437),
        "a second allocation on the same 5-tuple"
    );

    // Another identity's credential on this allocation: 441.
    let (other, other_password) = credential("mallory", 600);
    let permission = |peer: SocketAddr| -> Vec<Box<dyn Setter>> {
        vec![Box::new(PeerAddress {
            ip: peer.ip(),
            port: peer.port(),
        })]
    };
    let request = client.request(
        METHOD_CREATE_PERMISSION,
        permission(media),
        Some((&other, &other_password)),
    );
    assert_eq!(client.exchange(&request).await.code, Some(441));

    // Peers: Convene's media port only. Not another host, not another port of this one.
    for refused in [
        "10.9.8.7:5000".parse().unwrap(),
        server.server.http_addr,
        SocketAddr::new(media.ip(), 22),
    ] {
        let request = client.request(
            METHOD_CREATE_PERMISSION,
            permission(refused),
            Some((&username, &password)),
        );
        assert_eq!(client.exchange(&request).await.code, Some(403), "{refused}");
    }
    let request = client.request(
        METHOD_CREATE_PERMISSION,
        permission(media),
        Some((&username, &password)),
    );
    let answer = client.exchange(&request).await;
    assert_eq!(answer.code, None, "{}", answer.msg);
    assert!(metric_sum(&server, "convene_turn_refused_total").await >= 7.0);

    // A permission is for an IP, but the media port is all it opens: a Send indication to
    // another port of that host goes nowhere. (The Refresh answered after it proves the relay
    // handled it: one task takes a client's messages in order.)
    let other_service = std::net::UdpSocket::bind(SocketAddr::new(media.ip(), 0)).unwrap();
    let mut send = Message::new();
    send.build(&[
        Box::new(TransactionId::new()),
        Box::new(MessageType::new(METHOD_SEND, CLASS_INDICATION)),
        Box::new(PeerAddress {
            ip: media.ip(),
            port: other_service.local_addr().unwrap().port(),
        }),
        Box::new(rtc::turn::proto::data::Data(b"hello".to_vec())),
    ])
    .unwrap();
    let Wire::Udp(socket, _) = &client.wire else {
        unreachable!()
    };
    socket.send_to(&send.raw, turn.udp).await.unwrap();
    let request = client.request(
        METHOD_REFRESH,
        vec![Box::new(Lifetime(Duration::from_secs(600)))],
        Some((&username, &password)),
    );
    assert_eq!(client.exchange(&request).await.code, None);
    assert_eq!(
        metric_sum(&server, "convene_turn_relayed_packets_total").await,
        0.0,
        "nothing relayed to another port"
    );
    other_service.set_nonblocking(true).unwrap();
    assert!(other_service.recv(&mut [0u8; 64]).is_err());

    // Channels are 0x4000 through 0x4FFF (RFC 8656 §12).
    let request = client.request(
        METHOD_CHANNEL_BIND,
        vec![
            Box::new(rtc::turn::proto::channum::ChannelNumber(0x5000)),
            Box::new(PeerAddress {
                ip: media.ip(),
                port: media.port(),
            }),
        ],
        Some((&username, &password)),
    );
    assert_eq!(client.exchange(&request).await.code, Some(400));

    // Refresh to zero ends the allocation; a permission then has nothing to attach to.
    let request = client.request(
        METHOD_REFRESH,
        vec![Box::new(Lifetime(Duration::ZERO))],
        Some((&username, &password)),
    );
    assert_eq!(client.exchange(&request).await.code, None);
    let request = client.request(
        METHOD_CREATE_PERMISSION,
        permission(media),
        Some((&username, &password)),
    );
    assert_eq!(client.exchange(&request).await.code, Some(437));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_that_expires_stops_refreshing_its_allocation() {
    let server = turn_server().await;
    let turn = server.server.turn.as_ref().unwrap();
    let mut client = RawClient::udp(turn.udp).await;
    client.allocate(None).await;
    // Valid for the next two seconds only.
    let short = convene::turn::credentials::issue(SECRET.as_bytes(), "bob", 2, unix_now());
    let answer = client
        .allocate(Some((&short.username, &short.password)))
        .await;
    assert_eq!(answer.code, None, "{}", answer.msg);
    while unix_now() < short.expires_at {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let request = client.request(
        METHOD_REFRESH,
        vec![Box::new(Lifetime(Duration::from_secs(600)))],
        Some((&short.username, &short.password)),
    );
    assert_eq!(client.exchange(&request).await.code, Some(401));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_allocation_quota_is_per_identity_whatever_the_credential() {
    let server = TestServer::start_with(|c| {
        c.turn.enabled = true;
        c.turn.listen = "127.0.0.1:0".parse().unwrap();
        c.turn.secret = SECRET.to_owned();
        c.turn.max_allocations_per_user = 1;
    })
    .await;
    let turn = server.server.turn.as_ref().unwrap().udp;
    let mut first = RawClient::udp(turn).await;
    first.allocate(None).await;
    let (username, password) = credential("erin", 600);
    assert_eq!(
        first.allocate(Some((&username, &password))).await.code,
        None
    );
    // Every join hands out a credential with a new expiry: still the same identity.
    let mut second = RawClient::udp(turn).await;
    second.allocate(None).await;
    let (username, password) = credential("erin", 900);
    assert_eq!(
        second.allocate(Some((&username, &password))).await.code,
        Some(486)
    );
    let (username, password) = credential("frank", 900);
    assert_eq!(
        second.allocate(Some((&username, &password))).await.code,
        None
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turn_over_tcp_is_framed_and_authenticated_the_same() {
    let server = turn_server().await;
    let turn = server.server.turn.as_ref().unwrap();
    assert_eq!(turn.tcp.port(), turn.udp.port(), "one port for UDP and TCP");
    let mut client = RawClient::tcp(turn.tcp).await;
    assert_eq!(client.allocate(None).await.code, Some(401));
    let (username, password) = credential("carol", 600);
    let answer = client.allocate(Some((&username, &password))).await;
    assert_eq!(answer.code, None, "{}", answer.msg);
    // What is neither STUN nor ChannelData (here TLS on the plain port) closes the stream.
    let Wire::Stream(stream) = &mut client.wire else {
        unreachable!()
    };
    stream
        .write_all(&[0x16, 0x03, 0x01, 0x00, 0x10])
        .await
        .unwrap();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
    assert!(matches!(read, Ok(Ok(0))), "the connection closes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turn_over_tls_serves_the_configured_certificate() {
    let scratch = common::TempDir::new();
    let (cert, key) = (scratch.0.join("cert.pem"), scratch.0.join("key.pem"));
    let made = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args([
            "-subj",
            "/CN=turn.test",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl runs");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let server = TestServer::start_with(|c| {
        c.turn.enabled = true;
        c.turn.listen = "127.0.0.1:0".parse().unwrap();
        c.turn.tls_listen = "127.0.0.1:0".parse().unwrap();
        c.turn.tls_cert = cert.clone();
        c.turn.tls_key = key.clone();
        c.turn.secret = SECRET.to_owned();
    })
    .await;
    let tls = server
        .server
        .turn
        .as_ref()
        .unwrap()
        .tls
        .expect("TLS listens");
    let servers = server.server.state.ice.for_identity("dana");
    assert!(
        servers[0]
            .urls
            .contains(&format!("turns:127.0.0.1:{}?transport=tcp", tls.port())),
        "{servers:?}"
    );
    let mut client = RawClient::tls(tls, &cert).await;
    assert_eq!(client.allocate(None).await.code, Some(401));
    let (username, password) = credential("dana", 600);
    let answer = client.allocate(Some((&username, &password))).await;
    assert_eq!(answer.code, None, "{}", answer.msg);
}

/// The RTCConfiguration of a client that may only use relay candidates through `servers`.
fn relay_only(
    servers: Vec<convene::config::IceServer>,
) -> rtc::peer_connection::configuration::RTCConfiguration {
    RTCConfigurationBuilder::new()
        .with_ice_servers(
            servers
                .into_iter()
                .map(|s| RTCIceServer {
                    urls: s.urls,
                    username: s.username.unwrap_or_default(),
                    credential: s.credential.unwrap_or_default(),
                })
                .collect(),
        )
        .with_ice_transport_policy(RTCIceTransportPolicy::Relay)
        .build()
}

/// A WHEP viewer, then a WHIP publisher of `identity` that may only use relay candidates through
/// `servers`; its audio must reach the viewer. Returns the publisher's session.
async fn relayed_publisher_reaches_a_viewer(
    server: &TestServer,
    room: &str,
    identity: &str,
    servers: Vec<convene::config::IceServer>,
) -> common::client::Session {
    let viewer = WhepSubscriber::connect(
        server,
        room,
        &server.token(room, "viewer", false, true),
        None,
    )
    .await;
    let publisher = WhipPublisher::connect_configured(
        server,
        room,
        &server.token(room, identity, true, false),
        PeerOptions {
            configuration: Some(relay_only(servers)),
            ..Default::default()
        },
    )
    .await;
    for sequence in 0..100u16 {
        publisher.send(Kind::Audio, sequence, vec![0xAB; 60]).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        viewer
            .wait_packets(Kind::Audio, 50, Duration::from_secs(10))
            .await
            >= 50
    );
    publisher.session
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_only_publisher_reaches_a_viewer_through_the_embedded_turn() {
    let server = turn_server().await;
    let servers = server.server.state.ice.for_identity("relayed");
    assert!(
        servers[0].urls[0].starts_with("turn:127.0.0.1:"),
        "{servers:?}"
    );
    let session = relayed_publisher_reaches_a_viewer(&server, "relay", "relayed", servers).await;
    // Its answer named the TURN server (RFC 9725 §4.6) with this identity's credential.
    let links: Vec<&str> = session
        .links
        .iter()
        .filter(|l| l.contains("rel=\"ice-server\""))
        .map(String::as_str)
        .collect();
    assert!(
        links
            .iter()
            .any(|l| l.contains("?transport=udp>") && l.contains(":relayed\"")),
        "{links:?}"
    );
    assert!(
        links.iter().any(|l| l.contains("?transport=tcp>")),
        "{links:?}"
    );
    assert!(
        metric_sum(
            &server,
            "convene_turn_relayed_packets_total{direction=\"to_peer\"}"
        )
        .await
            >= 50.0
    );
    assert_eq!(server.metric("convene_turn_allocations").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_and_ice_servers_hand_out_fresh_coturn_credentials() {
    let server = turn_server().await;
    let user = server.user("turnuser").await;
    let response = server
        .http
        .get(server.api("/ice-servers"))
        .bearer_auth(&user.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    let body: serde_json::Value = response.json().await.unwrap();
    let turn = &body["ice_servers"][0];
    let username = turn["username"].as_str().unwrap();
    let (expiry, identity) = username.split_once(':').unwrap();
    assert_eq!(identity, user.id);
    let expiry: u64 = expiry.parse().unwrap();
    assert!(expiry > unix_now() + 23 * 3600, "24 h by default");
    assert_eq!(
        convene::turn::credentials::verify(SECRET.as_bytes(), username, unix_now()).unwrap(),
        turn["credential"].as_str().unwrap()
    );
    let urls: Vec<&str> = turn["urls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap())
        .collect();
    assert!(
        urls.iter().any(|u| u.ends_with("?transport=udp")),
        "{urls:?}"
    );
    assert!(
        urls.iter().any(|u| u.ends_with("?transport=tcp")),
        "{urls:?}"
    );
    // Signed out: 401.
    let response = server
        .http
        .get(server.api("/ice-servers"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::UNAUTHORIZED);

    // The REST join carries them too, for the participant's media identity.
    let (_, meeting) = server
        .call(
            reqwest::Method::POST,
            "/meetings",
            Some(&user.token),
            Some(json!({"title": "turn"})),
        )
        .await;
    let code = meeting["code"].as_str().unwrap();
    let (status, joined) = server
        .call(
            reqwest::Method::POST,
            &format!("/meetings/{code}/join"),
            Some(&user.token),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::OK, "{joined}");
    let turn = &joined["ice_servers"][0];
    assert!(turn["username"]
        .as_str()
        .unwrap()
        .ends_with(&format!(":{}", joined["identity"].as_str().unwrap())));
}

/// Debian's coturn, started with the secret Convene signs with.
struct Coturn {
    child: tokio::process::Child,
    port: u16,
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

async fn coturn() -> Option<Coturn> {
    let binary = ["/usr/bin/turnserver", "/usr/local/bin/turnserver"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())?;
    let port = {
        let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let child = tokio::process::Command::new(binary)
        .args([
            "-n",
            "--listening-ip=127.0.0.1",
            "--relay-ip=127.0.0.1",
            &format!("--listening-port={port}"),
            "--use-auth-secret",
            &format!("--static-auth-secret={SECRET}"),
            "--realm=convene",
            "--allow-loopback-peers",
            "--no-cli",
            "--no-tls",
            "--no-dtls",
            "--no-tcp-relay",
            "--min-port=49152",
            "--max-port=65535",
            "--log-file=stdout",
            "--simple-log",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .ok()?;
    // Ready once it answers a STUN binding request.
    let mut client = RawClient::udp(SocketAddr::from(([127, 0, 0, 1], port))).await;
    for _ in 0..50 {
        let request = client.request(METHOD_BINDING, Vec::new(), None);
        let answered =
            tokio::time::timeout(Duration::from_millis(200), client.exchange(&request)).await;
        if answered.is_ok() {
            return Some(Coturn { child, port });
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coturn_sharing_the_secret_relays_a_publisher_with_our_credentials() {
    let Some(coturn) = coturn().await else {
        assert!(
            std::env::var("CI").is_err(),
            "coturn is installed in CI (.ci/run): apt-get install coturn"
        );
        eprintln!("skipped: coturn is not installed (apt-get install coturn)");
        return;
    };
    let port = coturn.port;
    let server = TestServer::start_with(|c| {
        c.turn.urls = vec![format!("turn:127.0.0.1:{port}?transport=udp")];
        c.turn.secret = SECRET.to_owned();
    })
    .await;
    assert!(server.server.turn.is_none(), "the embedded server is off");
    let servers = server.server.state.ice.for_identity("via-coturn");
    relayed_publisher_reaches_a_viewer(&server, "coturn", "via-coturn", servers).await;
}

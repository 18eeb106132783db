//! Rooms are pinned to media engines: each engine has its own thread, port and rooms; a room's
//! media and commands stay on its engine.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::client::{candidate_lines, Kind, WhepSubscriber, WhipPublisher};
use common::TestServer;
use convene::ids::RoomId;

/// The port of the first host candidate in an SDP answer.
fn candidate_port(sdp: &str) -> u16 {
    let line = candidate_lines(sdp)
        .into_iter()
        .next()
        .expect("a candidate");
    // candidate:<foundation> <component> udp <priority> <ip> <port> typ host
    line.split_whitespace()
        .nth(5)
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {line}"))
}

async fn commands_of(server: &TestServer, engine: usize) -> f64 {
    let name = format!("convene_engine_commands_total{{engine=\"{engine}\"}}");
    let text = server.metrics().await;
    text.lines()
        .find_map(|l| l.strip_prefix(name.as_str()))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Sends 30 packets from sequence number `from` (SRTP drops replayed ones, so each round starts
/// past the last) and says whether the viewer got them.
async fn flows(
    publisher: &WhipPublisher,
    viewer: &WhepSubscriber,
    tag: &'static [u8],
    from: u16,
) -> bool {
    let before = viewer.payloads(Kind::Audio).len();
    for sequence in from..from + 30 {
        publisher
            .send(Kind::Audio, sequence, Bytes::from_static(tag))
            .await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    viewer
        .wait_packets(Kind::Audio, before + 5, Duration::from_secs(10))
        .await
        >= before + 5
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_meetings_on_two_engines_each_forward_and_commands_stay_home() {
    let server = TestServer::start_with(|c| c.media_workers = 2).await;
    let addrs = server.server.state.sfu.media_addrs();
    assert_eq!(addrs.len(), 2);
    assert_ne!(addrs[0].port(), addrs[1].port());

    let a_pub =
        WhipPublisher::connect(&server, "a", &server.token("a", "alice", true, false)).await;
    let a_view =
        WhepSubscriber::connect(&server, "a", &server.token("a", "ann", false, true), None).await;
    let b_pub = WhipPublisher::connect(&server, "b", &server.token("b", "bob", true, false)).await;
    let b_view =
        WhepSubscriber::connect(&server, "b", &server.token("b", "ben", false, true), None).await;

    let sfu = &server.server.state.sfu;
    let (a, b) = (RoomId("a".into()), RoomId("b".into()));
    let (engine_a, engine_b) = (
        sfu.engine_of_room(&a).unwrap(),
        sfu.engine_of_room(&b).unwrap(),
    );
    assert_ne!(
        engine_a, engine_b,
        "the second room goes to the idle engine"
    );
    // Every session of a room is answered with its engine's port.
    for (session, engine) in [
        (&a_pub.session, engine_a),
        (&a_view.session, engine_a),
        (&b_pub.session, engine_b),
        (&b_view.session, engine_b),
    ] {
        assert_eq!(candidate_port(&session.answer), addrs[engine].port());
    }

    assert!(
        flows(&a_pub, &a_view, b"room a", 0).await,
        "room a forwards"
    );
    assert!(
        flows(&b_pub, &b_view, b"room b", 0).await,
        "room b forwards"
    );
    assert!(a_view.payloads(Kind::Audio).iter().all(|p| p == "room a"));
    assert!(b_view.payloads(Kind::Audio).iter().all(|p| p == "room b"));

    // A command for room a is handled by a's engine alone.
    let before_b = commands_of(&server, engine_b).await;
    let before_a = commands_of(&server, engine_a).await;
    let closed = sfu.close_room(a.clone()).await.unwrap();
    assert_eq!(closed, 2, "room a's publisher and viewer");
    assert_eq!(commands_of(&server, engine_a).await, before_a + 1.0);
    assert_eq!(
        commands_of(&server, engine_b).await,
        before_b,
        "nothing reached room b's engine"
    );
    a_view.peer.closed_by_server().await;
    assert!(
        flows(&b_pub, &b_view, b"room b", 100).await,
        "room b keeps forwarding"
    );

    // Once empty, the room is forgotten; it opens again on the least-loaded engine.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while sfu.engine_of_room(&a).is_some() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(sfu.engine_of_room(&a), None);
    assert_eq!(
        sfu.close_room(a).await.unwrap(),
        0,
        "an unplaced room holds nobody"
    );
}

#[tokio::test]
async fn one_engine_serves_every_room_on_one_port() {
    let server = TestServer::start_with(|c| c.media_workers = 1).await;
    let addrs = server.server.state.sfu.media_addrs();
    assert_eq!(addrs.len(), 1);
    let a = WhipPublisher::connect(&server, "a", &server.token("a", "alice", true, false)).await;
    let b = WhipPublisher::connect(&server, "b", &server.token("b", "bob", true, false)).await;
    assert_eq!(candidate_port(&a.session.answer), addrs[0].port());
    assert_eq!(candidate_port(&b.session.answer), addrs[0].port());
}

#[tokio::test]
async fn viewers_take_no_participant_place() {
    let server = TestServer::start_with(|c| {
        c.max_participants = 1;
        c.max_viewers_per_room = 3;
    })
    .await;
    let _stage =
        WhipPublisher::connect(&server, "show", &server.token("show", "stage", true, false)).await;
    let mut viewers = Vec::new();
    for i in 0..3 {
        let token = server.token("show", &format!("viewer-{i}"), false, true);
        viewers.push(
            WhepSubscriber::start(&server, "show", &token, None)
                .await
                .expect("a viewer takes no participant's place"),
        );
    }
    let refused = WhepSubscriber::start(
        &server,
        "show",
        &server.token("show", "viewer-3", false, true),
        None,
    )
    .await
    .err()
    .expect("max_viewers_per_room bounds viewers");
    assert_eq!(refused.code(), "room_full");
}

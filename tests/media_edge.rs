//! The media edge against hostile clients: WHIP/WHEP sessions belong to the identity that made
//! them, and a meeting's kicks, bans, ends and newer joins revoke what a join token can still
//! open. Meetings are made and joined over REST, so tokens carry their seat as the server
//! issues them. Runs on SQLite, and on PostgreSQL when DATABASE_URL is set.

mod common;

use std::time::Duration;

use common::api::assert_error;
use common::client::{error_code, WhepSubscriber, WhipPublisher};
use common::TestServer;
use convene::domain::token::{Grants, JoinClaims};
use reqwest::header::AUTHORIZATION;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const WITHIN: Duration = Duration::from_secs(10);

fn room(meeting: &Value) -> &str {
    meeting["id"].as_str().unwrap()
}

fn join_token(reply: &Value) -> &str {
    reply["join_token"].as_str().unwrap()
}

/// A WHIP POST with a fresh publisher; the error code, if refused.
async fn whip_refusal(
    server: &TestServer,
    room: &str,
    token: &str,
) -> Option<(StatusCode, String)> {
    match WhipPublisher::start(server, room, token, false).await {
        Ok(publisher) => {
            publisher.close().await;
            None
        }
        Err(e) => Some((e.status, e.code())),
    }
}

async fn request(
    server: &TestServer,
    method: Method,
    url: &str,
    token: &str,
) -> (StatusCode, String) {
    let response = server
        .http
        .request(method, url)
        .header(AUTHORIZATION, format!("Bearer {token}"))
        .header("content-type", "application/trickle-ice-sdpfrag")
        .body("a=candidate:1 1 udp 2130706431 127.0.0.1 9 typ host\r\n")
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, error_code(&response.text().await.unwrap()))
}

fn token_with(server: &TestServer, room: &str, identity: &str, grants: Grants) -> String {
    server.server.state.keys.sign(&JoinClaims::new(
        room,
        identity,
        grants,
        Duration::from_secs(600),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_owner_patches_or_deletes_a_session_and_moderators_may_delete() {
    let server = TestServer::start().await;
    let alice = server.token("stage", "alice", true, true);
    let mallory = server.token("stage", "mallory", true, true);
    let publisher = WhipPublisher::connect(&server, "stage", &alice).await;
    let url = publisher.session.url.clone();

    for method in [Method::PATCH, Method::DELETE] {
        let (status, code) = request(&server, method.clone(), &url, &mallory).await;
        assert_eq!(
            status,
            StatusCode::FORBIDDEN,
            "{method} by another identity"
        );
        assert_eq!(code, "forbidden");
    }
    // A token of another room learns nothing about this room's sessions.
    let outsider = server.token("elsewhere", "alice", true, true);
    let other_room_url = url.replace("/whip/stage/", "/whip/elsewhere/");
    let (status, _) = request(&server, Method::DELETE, &other_room_url, &outsider).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(server.metric("convene_peers").await, 1.0, "still up");

    // The owner's trickle is fine; a moderator of the room may end it.
    let (status, _) = request(&server, Method::PATCH, &url, &alice).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let moderator = token_with(
        &server,
        "stage",
        "mod",
        Grants {
            moderate: true,
            ..Default::default()
        },
    );
    let (status, _) = request(&server, Method::PATCH, &url, &moderator).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "a moderator may not patch");
    let (status, _) = request(&server, Method::DELETE, &url, &moderator).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        server
            .wait_metric("convene_peers", 0.0, Duration::from_secs(5))
            .await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owners_manage_sessions_with_an_expired_token() {
    let server = TestServer::start().await;
    let keys = &server.server.state.keys;
    let grants = Grants {
        publish: true,
        ..Default::default()
    };
    let publisher = WhipPublisher::connect(
        &server,
        "stage",
        &token_with(&server, "stage", "alice", grants.clone()),
    )
    .await;
    let mut expired = JoinClaims::new("stage", "alice", grants, Duration::from_secs(1));
    expired.exp -= 100;
    expired.nbf -= 200;
    let expired = keys.sign(&expired);
    assert_eq!(
        whip_refusal(&server, "stage", &expired).await,
        Some((StatusCode::UNAUTHORIZED, "unauthorized".into())),
        "no new session with an expired token"
    );
    let (status, _) = request(&server, Method::DELETE, &publisher.session.url, &expired).await;
    assert_eq!(status, StatusCode::OK, "its owner ends the session");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ban_closes_live_whip_sessions_and_refuses_new_ones() {
    let server = TestServer::start().await;
    let host = server.user("host").await;
    let pat = server.user("pat").await;
    let meeting = server.open_meeting(&host).await;
    let seat = server.join_meeting(&meeting, Some(&pat)).await;
    let token = join_token(&seat).to_owned();
    let publisher = WhipPublisher::connect(&server, room(&meeting), &token).await;

    let kick = format!(
        "/meetings/{}/participants/{}/kick",
        room(&meeting),
        seat["participant_id"].as_str().unwrap()
    );
    let (status, body) = server
        .call(
            Method::POST,
            &kick,
            Some(&host.token),
            Some(json!({"ban": true})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    tokio::time::timeout(WITHIN, publisher.peer.closed_by_server())
        .await
        .expect("the kick closes the banned participant's WHIP session");
    assert_eq!(
        whip_refusal(&server, room(&meeting), &token).await,
        Some((StatusCode::FORBIDDEN, "banned".into()))
    );
    // The same identity with a token minted without a seat is banned too.
    let operator = server.token(room(&meeting), &pat.id, true, true);
    assert_eq!(
        whip_refusal(&server, room(&meeting), &operator).await,
        Some((StatusCode::FORBIDDEN, "banned".into()))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kick_without_ban_revokes_the_token_until_a_new_join() {
    let server = TestServer::start().await;
    let host = server.user("host").await;
    let meeting = server.open_meeting(&host).await;
    let guest = server.join_meeting(&meeting, None).await;
    let token = join_token(&guest).to_owned();
    let kick = format!(
        "/meetings/{}/participants/{}/kick",
        room(&meeting),
        guest["participant_id"].as_str().unwrap()
    );
    let (status, _) = server
        .call(Method::POST, &kick, Some(&host.token), Some(json!({})))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        whip_refusal(&server, room(&meeting), &token).await,
        Some((StatusCode::FORBIDDEN, "kicked".into()))
    );
    let refused = WhepSubscriber::start(&server, room(&meeting), &token, None)
        .await
        .err()
        .expect("WHEP refused too");
    assert_eq!(
        (refused.status, refused.code()),
        (StatusCode::FORBIDDEN, "kicked".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_join_revokes_the_earlier_token() {
    let server = TestServer::start().await;
    let host = server.user("host").await;
    let pat = server.user("pat").await;
    let meeting = server.open_meeting(&host).await;
    let first = server.join_meeting(&meeting, Some(&pat)).await;
    let second = server.join_meeting(&meeting, Some(&pat)).await;
    assert_eq!(
        whip_refusal(&server, room(&meeting), join_token(&first)).await,
        Some((StatusCode::FORBIDDEN, "seat_gone".into()))
    );
    assert_eq!(
        whip_refusal(&server, room(&meeting), join_token(&second)).await,
        None
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ending_a_meeting_closes_whip_and_whep_and_refuses_new_sessions() {
    let server = TestServer::start().await;
    let host = server.user("host").await;
    let meeting = server.open_meeting(&host).await;
    let room = room(&meeting).to_owned();
    let guest = server.join_meeting(&meeting, None).await;
    // An encoder with an operator token (no seat) and a viewer with a participant's token.
    let encoder = server.token(&room, "encoder", true, false);
    let publisher = WhipPublisher::connect(&server, &room, &encoder).await;
    let viewer = WhepSubscriber::connect(&server, &room, join_token(&guest), None).await;

    let (status, body) = server
        .call(
            Method::POST,
            &format!("/meetings/{room}/end"),
            Some(&host.token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    tokio::time::timeout(WITHIN, publisher.peer.closed_by_server())
        .await
        .expect("the end closes the encoder's WHIP session");
    assert!(viewer.ended(WITHIN).await.is_some(), "the end closes WHEP");
    assert_eq!(
        whip_refusal(&server, &room, &encoder).await,
        Some((StatusCode::GONE, "meeting_ended".into()))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kicked_moderator_cannot_mint_invite_links() {
    let server = TestServer::start().await;
    let host = server.user("host").await;
    let mo = server.user("mo").await;
    let meeting = server.open_meeting(&host).await;
    let seat = server.join_meeting(&meeting, Some(&mo)).await;
    let participant = format!(
        "/meetings/{}/participants/{}",
        room(&meeting),
        seat["participant_id"].as_str().unwrap()
    );
    let (status, body) = server
        .call(
            Method::PATCH,
            &participant,
            Some(&host.token),
            Some(json!({"role": "moderator"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let links = format!("/meetings/{}/join-tokens", room(&meeting));
    let link = json!({"role": "participant"});
    let (status, body) = server
        .call(Method::POST, &links, Some(&mo.token), Some(link.clone()))
        .await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "an admitted moderator may: {body}"
    );

    let (status, _) = server
        .call(
            Method::POST,
            &format!("{participant}/kick"),
            Some(&host.token),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let refused = server
        .call(Method::POST, &links, Some(&mo.token), Some(link))
        .await;
    assert_error(&refused, StatusCode::FORBIDDEN, "forbidden");
    // Rejoining after the kick does not bring the promotion back.
    let again = server.join_meeting(&meeting, Some(&mo)).await;
    assert_eq!(again["role"], "participant");
}

/// A STUN Binding request naming `username`, with a MESSAGE-INTEGRITY that is not the HMAC of
/// any password.
fn forged_binding_request(username: &str) -> Vec<u8> {
    let mut attrs = Vec::new();
    attrs.extend_from_slice(&0x0006u16.to_be_bytes());
    attrs.extend_from_slice(&(username.len() as u16).to_be_bytes());
    attrs.extend_from_slice(username.as_bytes());
    while attrs.len() % 4 != 0 {
        attrs.push(0);
    }
    attrs.extend_from_slice(&0x0008u16.to_be_bytes());
    attrs.extend_from_slice(&20u16.to_be_bytes());
    attrs.extend_from_slice(&[0xAB; 20]);
    let mut message = vec![0x00, 0x01];
    message.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    message.extend_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
    message.extend_from_slice(&[9u8; 12]);
    message.extend_from_slice(&attrs);
    message
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_stun_with_a_known_ufrag_binds_no_address() {
    let server = TestServer::start().await;
    let token = server.token("stage", "alice", true, false);
    let publisher = WhipPublisher::connect(&server, "stage", &token).await;
    let server_ufrag = common::client::sdp_attribute(&publisher.session.answer, "ice-ufrag")
        .expect("the answer names our ufrag")
        .to_owned();
    let dropped = server.metric("convene_udp_datagrams_dropped_total").await;

    let spoofer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let media = server.server.media_addr;
    spoofer
        .send_to(
            &forged_binding_request(&format!("{server_ufrag}:evil")),
            media,
        )
        .unwrap();
    // Were the address bound, this would reach the peer's DTLS/SRTP stack.
    spoofer.send_to(&[0x80; 40], media).unwrap();

    let after = server
        .wait_metric(
            "convene_udp_datagrams_dropped_total",
            dropped + 2.0,
            Duration::from_secs(5),
        )
        .await;
    assert_eq!(after, dropped + 2.0, "both datagrams are dropped");
    assert_eq!(server.metric("convene_stun_rejected_total").await, 1.0);
    assert_eq!(
        publisher.peer.state(),
        webrtc::peer_connection::RTCPeerConnectionState::Connected
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_identity_cannot_fill_the_server() {
    let server = TestServer::start_with(|c| c.max_sessions_per_identity = 3).await;
    let token = server.token("stage", "greedy", true, true);
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(
            WhipPublisher::start(&server, "stage", &token, false)
                .await
                .expect("within the per-identity cap"),
        );
    }
    assert_eq!(
        whip_refusal(&server, "stage", &token).await,
        Some((StatusCode::CONFLICT, "too_many_sessions".into()))
    );
    // Another identity, and the same identity in another room, are not affected.
    let other = server.token("stage", "modest", true, false);
    assert_eq!(whip_refusal(&server, "stage", &other).await, None);
    let elsewhere = server.token("other-room", "greedy", true, false);
    assert_eq!(whip_refusal(&server, "other-room", &elsewhere).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whip_and_whep_posts_are_rate_limited_per_identity_and_per_address() {
    let server = TestServer::start_with(|c| {
        c.rate_limit_media_per_identity_per_minute = 3;
        c.rate_limit_media_per_minute = 6;
    })
    .await;
    let alice = server.token("stage", "alice", true, true);
    for _ in 0..3 {
        assert_eq!(whip_refusal(&server, "stage", &alice).await, None);
    }
    let refused = whip_refusal(&server, "stage", &alice).await;
    assert_eq!(
        refused,
        Some((StatusCode::TOO_MANY_REQUESTS, "rate_limited".into()))
    );
    // Other identities from the same address share the address's quota (6 in all).
    let mut statuses = Vec::new();
    for i in 0..4 {
        let token = server.token("stage", &format!("bob{i}"), true, true);
        statuses.push(whip_refusal(&server, "stage", &token).await.map(|(s, _)| s));
    }
    assert_eq!(
        statuses,
        vec![
            None,
            None,
            Some(StatusCode::TOO_MANY_REQUESTS),
            Some(StatusCode::TOO_MANY_REQUESTS)
        ],
        "the address had used 4 of its 6"
    );
}

async fn send_audio(publisher: &WhipPublisher, sequences: std::ops::Range<u16>) {
    for sequence in sequences {
        publisher
            .send(
                common::client::Kind::Audio,
                sequence,
                bytes::Bytes::from(vec![sequence as u8; 40]),
            )
            .await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mute_leaves_no_sequence_gap_at_the_subscriber() {
    use common::client::Kind;
    use convene::ids::{ParticipantId, RoomId};
    use convene::sfu::MediaKind;
    let server = TestServer::start().await;
    let publisher = WhipPublisher::connect(
        &server,
        "stage",
        &server.token("stage", "alice", true, false),
    )
    .await;
    let viewer = WhepSubscriber::connect(
        &server,
        "stage",
        &server.token("stage", "bob", false, true),
        None,
    )
    .await;
    let sfu = &server.server.state.sfu;
    let mute = |muted| {
        sfu.set_muted(
            RoomId("stage".into()),
            ParticipantId("alice".into()),
            MediaKind::Audio,
            muted,
        )
    };
    send_audio(&publisher, 0..30).await;
    viewer.wait_packets(Kind::Audio, 28, WITHIN).await;
    assert_eq!(mute(true).await.unwrap(), 1);
    send_audio(&publisher, 30..60).await;
    assert_eq!(mute(false).await.unwrap(), 1);
    let before = viewer.payloads(Kind::Audio).len();
    send_audio(&publisher, 60..90).await;
    viewer.wait_packets(Kind::Audio, before + 28, WITHIN).await;

    let received: Vec<u16> = viewer
        .inbox(Kind::Audio)
        .packets
        .iter()
        .map(|p| p.sequence)
        .collect();
    let payloads: Vec<u8> = viewer.payloads(Kind::Audio).iter().map(|p| p[0]).collect();
    assert!(
        payloads.iter().all(|p| !(30..60).contains(p)),
        "nothing sent while muted arrived"
    );
    let gaps: Vec<(u16, u16)> = received
        .windows(2)
        .filter(|w| w[1].wrapping_sub(w[0]) != 1)
        .map(|w| (w[0], w[1]))
        .collect();
    assert!(
        gaps.is_empty(),
        "sequence gaps at the subscriber: {gaps:?} in {received:?}"
    );
}

/// `count` packets of `kind` whose payloads start with `tag`, paced.
async fn send_tagged(
    publisher: &WhipPublisher,
    kind: common::client::Kind,
    tag: u8,
    first: u16,
    count: u16,
) {
    for sequence in first..first + count {
        let mut payload = vec![tag; 200];
        payload[1] = sequence as u8;
        publisher
            .send(kind, sequence, bytes::Bytes::from(payload))
            .await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn tagged(viewer: &WhepSubscriber, kind: common::client::Kind, tag: u8) -> usize {
    viewer.payloads(kind).iter().filter(|p| p[0] == tag).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whep_viewer_outlives_its_publisher_and_takes_the_next_without_reposting() {
    use common::client::Kind;
    let server = TestServer::start().await;
    // The viewer comes first: nothing to watch yet, and it is accepted.
    let viewer = WhepSubscriber::connect(
        &server,
        "show",
        &server.token("show", "fan", false, true),
        None,
    )
    .await;
    assert_eq!(server.metric("convene_peers").await, 1.0);

    let first =
        WhipPublisher::connect(&server, "show", &server.token("show", "obs", true, false)).await;
    for kind in [Kind::Audio, Kind::Video] {
        send_tagged(&first, kind, b'A', 0, 30).await;
    }
    // (A keyframe request needs the publisher's SSRC: its first packet brings it.)
    assert!(
        first.wait_keyframe_request(0, WITHIN).await,
        "a keyframe is asked for the waiting viewer"
    );
    viewer.wait_packets(Kind::Video, 28, WITHIN).await;
    assert!(tagged(&viewer, Kind::Audio, b'A') >= 28 && tagged(&viewer, Kind::Video, b'A') >= 28);

    // The encoder restarts: a DELETE, then a new session of the same encoder.
    assert_eq!(first.delete().await.status(), StatusCode::OK);
    assert_eq!(
        server
            .wait_metric("convene_published_tracks", 0.0, WITHIN)
            .await,
        0.0
    );
    assert!(
        viewer.ended(Duration::from_millis(500)).await.is_none(),
        "the viewer stays"
    );
    let second =
        WhipPublisher::connect(&server, "show", &server.token("show", "obs", true, false)).await;
    let video_before = viewer.payloads(Kind::Video).len();
    for kind in [Kind::Audio, Kind::Video] {
        // Its own sequence numbers start elsewhere; the viewer's continue.
        send_tagged(&second, kind, b'B', 40_000, 30).await;
    }
    assert!(
        second.wait_keyframe_request(0, WITHIN).await,
        "the returning publisher is asked for a keyframe at once"
    );
    viewer
        .wait_packets(Kind::Video, video_before + 28, WITHIN)
        .await;
    assert!(
        tagged(&viewer, Kind::Audio, b'B') >= 28,
        "audio of the new publisher"
    );
    assert!(
        tagged(&viewer, Kind::Video, b'B') >= 28,
        "video of the new publisher"
    );
    let sequences: Vec<u16> = viewer
        .inbox(Kind::Video)
        .packets
        .iter()
        .map(|p| p.sequence)
        .collect();
    let jumps: Vec<(u16, u16)> = sequences
        .windows(2)
        .filter(|w| w[1].wrapping_sub(w[0]) != 1)
        .map(|w| (w[0], w[1]))
        .collect();
    assert!(
        jumps.is_empty(),
        "the leg's sequence continues across publishers: {jumps:?}"
    );

    let deleted = viewer.session.delete().await;
    assert_eq!(deleted.status(), StatusCode::OK, "the viewer's own DELETE");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_waits_no_longer_than_whep_publisher_wait() {
    let server = TestServer::start_with(|c| c.whep_publisher_wait = Duration::from_secs(1)).await;
    let viewer = WhepSubscriber::connect(
        &server,
        "empty",
        &server.token("empty", "fan", false, true),
        None,
    )
    .await;
    assert!(
        viewer.ended(WITHIN).await.is_some(),
        "closed after the wait"
    );
    assert_eq!(server.wait_metric("convene_peers", 0.0, WITHIN).await, 0.0);
}

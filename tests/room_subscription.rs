//! The SFU's room subscriptions, driven through its handle as WebSocket signaling drives them:
//! the server offers a subscriber connection with every other participant's tracks, and offers
//! again as publishers come and go. Real server, real webrtc-rs clients.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use common::client::{Kind, OfferedSubscriber, WhipPublisher};
use common::TestServer;
use convene::ids::{ParticipantId, RoomId};
use convene::sfu::quality::Quality;
use convene::sfu::SfuEvent;
use rand::RngCore;
use tokio::sync::mpsc;

fn payloads(count: usize, len: usize) -> Vec<Bytes> {
    (0..count)
        .map(|_| {
            let mut payload = vec![0u8; len];
            rand::rng().fill_bytes(&mut payload);
            Bytes::from(payload)
        })
        .collect()
}

/// Sends paced packets numbered from `first` (SRTP refuses a sequence number seen before).
async fn send(publisher: &WhipPublisher, first: u16, video: &[Bytes], audio: &[Bytes]) {
    for (i, (v, a)) in video.iter().zip(audio).enumerate() {
        let sequence = first + i as u16;
        publisher.send(Kind::Video, sequence, v.clone()).await;
        publisher.send(Kind::Audio, sequence, a.clone()).await;
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
}

fn received_of(received: &[Bytes], sent: &[Bytes]) -> usize {
    let sent: HashSet<&Bytes> = sent.iter().collect();
    received
        .iter()
        .filter(|p| sent.contains(p))
        .collect::<HashSet<_>>()
        .len()
}

fn media_sections(sdp: &str) -> usize {
    sdp.lines()
        .filter(|l| l.starts_with("m=audio") || l.starts_with("m=video"))
        .count()
}

/// The next offer for the watched session, skipping other events.
async fn next_offer(events: &mut mpsc::UnboundedReceiver<SfuEvent>) -> String {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), events.recv()).await {
            Ok(Some(SfuEvent::Offer { sdp, .. })) => return sdp,
            Ok(Some(_)) => continue,
            other => panic!("no renegotiation offer: {other:?}"),
        }
    }
}

#[tokio::test]
async fn room_subscriber_follows_publishers_coming_and_going() {
    let server = TestServer::start().await;
    let state = &server.server.state;
    let room = "meeting-1";
    let alice =
        WhipPublisher::connect(&server, room, &server.token(room, "alice", true, false)).await;

    // Carol's subscription starts with alice's two tracks, and never her own.
    let negotiated = state
        .sfu
        .subscribe_room(
            RoomId(room.into()),
            ParticipantId("carol".into()),
            limits(state),
            false,
        )
        .await
        .unwrap();
    assert_eq!(
        media_sections(&negotiated.answer),
        2,
        "{}",
        negotiated.answer
    );
    assert!(
        negotiated.answer.contains("m=application"),
        "a data channel brings the transport up early"
    );
    let (events_tx, mut events) = mpsc::unbounded_channel();
    server
        .server
        .live
        .hub
        .watch_session(negotiated.session, events_tx);
    let carol = OfferedSubscriber::new().await;
    let answer = carol.answer(&negotiated.answer).await;
    state.sfu.answer(negotiated.session, answer).await.unwrap();
    carol.peer.wait_connected(Duration::from_secs(10)).await;

    let (alice_video, alice_audio) = (payloads(50, 900), payloads(50, 100));
    send(&alice, 0, &alice_video, &alice_audio).await;
    carol
        .wait_packets(Kind::Video, 48, Duration::from_secs(5))
        .await;
    assert!(received_of(&carol.payloads(Kind::Video), &alice_video) >= 48);
    assert!(received_of(&carol.payloads(Kind::Audio), &alice_audio) >= 48);

    // Within a quality interval, carol's connection is measured: loopback is excellent.
    let quality = loop {
        match tokio::time::timeout(Duration::from_secs(5), events.recv()).await {
            Ok(Some(SfuEvent::ConnectionQuality {
                quality, sample, ..
            })) => break (quality, sample),
            Ok(Some(_)) => continue,
            other => panic!("no connection quality event: {other:?}"),
        }
    };
    assert_eq!(quality.0, Quality::Excellent, "{:?}", quality.1);
    assert!(
        quality.1.loss < 0.01 && quality.1.rtt_ms < 50.0,
        "{:?}",
        quality.1
    );

    // Bob publishes: carol is offered his tracks and receives them.
    let bob = WhipPublisher::connect(&server, room, &server.token(room, "bob", true, false)).await;
    let offer = next_offer(&mut events).await;
    assert_eq!(media_sections(&offer), 4, "{offer}");
    let answer = carol.answer(&offer).await;
    state.sfu.answer(negotiated.session, answer).await.unwrap();
    let (bob_video, bob_audio) = (payloads(50, 950), payloads(50, 110));
    tokio::time::sleep(Duration::from_millis(200)).await;
    send(&bob, 0, &bob_video, &bob_audio).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        received_of(&carol.payloads(Kind::Video), &bob_video) >= 45,
        "bob's video reaches carol"
    );
    assert!(
        received_of(&carol.payloads(Kind::Audio), &bob_audio) >= 45,
        "bob's audio reaches carol"
    );

    // Alice leaves: carol is offered again without alice's senders and stays connected.
    assert_eq!(alice.delete().await.status(), reqwest::StatusCode::OK);
    let offer = next_offer(&mut events).await;
    let answer = carol.answer(&offer).await;
    state.sfu.answer(negotiated.session, answer).await.unwrap();
    let more_bob = payloads(30, 930);
    send(&bob, 50, &more_bob, &payloads(30, 100)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        received_of(&carol.payloads(Kind::Video), &more_bob) >= 27,
        "bob still flows after alice left"
    );
    assert_eq!(server.metric("convene_published_tracks").await, 2.0);

    // An answer when no offer is pending is refused, not applied.
    let stray = carol.peer.local_sdp().await;
    assert!(state.sfu.answer(negotiated.session, stray).await.is_err());
}

/// The limits REST and WHIP would admit a session of a standalone room under.
fn limits(state: &convene::app::AppState) -> convene::sfu::RoomLimits {
    convene::domain::admission::room_limits(&state.config, None)
}

#[tokio::test]
async fn room_capacity_counts_participants_not_connections() {
    let server = TestServer::start_with(|c| c.max_participants = 1).await;
    let state = &server.server.state;
    let room = RoomId("capped".into());
    let _alice = WhipPublisher::connect(
        &server,
        "capped",
        &server.token("capped", "alice", true, false),
    )
    .await;
    // Alice's second connection (her subscriber) takes no second place...
    assert!(state
        .sfu
        .subscribe_room(
            room.clone(),
            ParticipantId("alice".into()),
            limits(state),
            false
        )
        .await
        .is_ok());
    // ...but another participant finds the room full.
    let refused = state
        .sfu
        .subscribe_room(room, ParticipantId("bob".into()), limits(state), false)
        .await;
    assert!(
        matches!(refused, Err(convene::sfu::SfuError::RoomFull { max: 1 })),
        "{refused:?}"
    );
}

#[tokio::test]
async fn a_publisher_offer_with_new_credentials_restarts_ice() {
    let server = TestServer::start().await;
    let state = &server.server.state;
    let alice = WhipPublisher::connect(
        &server,
        "restart",
        &server.token("restart", "alice", true, false),
    )
    .await;
    let session = convene::ids::PeerId(
        uuid::Uuid::parse_str(alice.location().rsplit('/').next().unwrap()).unwrap(),
    );
    let ufrag = |sdp: &str| {
        sdp.lines()
            .find_map(|l| l.strip_prefix("a=ice-ufrag:"))
            .unwrap()
            .trim()
            .to_owned()
    };
    let before = ufrag(&alice.peer.remote_sdp().await);

    // The renegotiation path WebSocket signaling uses, with an ICE-restart offer.
    let offer = alice
        .peer
        .offer(
            Some(rtc::peer_connection::configuration::RTCOfferOptions { ice_restart: true }),
            true,
        )
        .await;
    let answer = state.sfu.renegotiate(session, offer).await.unwrap();
    assert_ne!(
        ufrag(&answer),
        before,
        "the server's credentials changed with the restart"
    );
    alice.peer.apply_answer(&answer).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    alice.peer.wait_connected(Duration::from_secs(5)).await;

    // Media still reaches a subscriber over the restarted connection.
    let negotiated = state
        .sfu
        .subscribe_room(
            RoomId("restart".into()),
            ParticipantId("bob".into()),
            limits(state),
            false,
        )
        .await
        .unwrap();
    let bob = OfferedSubscriber::new().await;
    let answer = bob.answer(&negotiated.answer).await;
    state.sfu.answer(negotiated.session, answer).await.unwrap();
    bob.peer.wait_connected(Duration::from_secs(10)).await;
    let (video, audio) = (payloads(40, 900), payloads(40, 100));
    send(&alice, 0, &video, &audio).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        received_of(&bob.payloads(Kind::Video), &video) >= 36,
        "media flows after the restart"
    );
}

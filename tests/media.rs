//! Media through a real server: webrtc-rs clients publish over WHIP and watch over WHEP, and the
//! tests check what arrives, byte for byte, plus the server's view in its metrics.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::client::{
    answer_from_fragment, candidate_lines, error_code, sdp_attribute, trickle_fragment, Ending,
    Kind, WhepSubscriber, WhipPublisher, CONNECT_TIMEOUT, SDPFRAG,
};
use common::TestServer;
use rand::RngCore;
use reqwest::header::{CONTENT_TYPE, ETAG};
use reqwest::StatusCode;
use rtc::peer_connection::configuration::RTCOfferOptions;

const PACKETS: usize = 300;
/// Gap between two sends; loopback drops bursts into webrtc-rs' receive queues.
const PACING: Duration = Duration::from_millis(3);
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

fn random_payload(len: usize) -> Bytes {
    let mut payload = vec![0u8; len];
    rand::rng().fill_bytes(&mut payload);
    Bytes::from(payload)
}

/// `count` distinct payloads for `kind`: ~100 bytes of audio, ~800-1000 of video.
fn payloads(kind: Kind, count: usize) -> Vec<Bytes> {
    (0..count)
        .map(|i| match kind {
            Kind::Video => random_payload(800 + (i * 7) % 200),
            _ => random_payload(90 + i % 20),
        })
        .collect()
}

/// Sends `audio[i]` and `video[i]` for every i, paced.
async fn send_all(publisher: &WhipPublisher, audio: &[Bytes], video: &[Bytes]) {
    for (i, (a, v)) in audio.iter().zip(video).enumerate() {
        publisher.send(Kind::Audio, i as u16, a.clone()).await;
        publisher.send(Kind::Video, i as u16, v.clone()).await;
        tokio::time::sleep(PACING).await;
    }
}

/// How many of `sent` arrived (distinct, byte-identical); panics on a payload never sent.
fn delivered(received: &[Bytes], sent: &[Bytes]) -> usize {
    let sent: HashSet<&Bytes> = sent.iter().collect();
    for payload in received {
        assert!(
            sent.contains(payload),
            "received a payload that was never sent ({} bytes)",
            payload.len()
        );
    }
    received.iter().collect::<HashSet<_>>().len()
}

/// The server closed the subscription (close_notify, or the tracks ended), as opposed to the
/// subscriber noticing by its own ICE timeout that the server stopped answering.
fn ended_by_server(ending: Option<Ending>) -> bool {
    matches!(ending, Some(Ending::TransportClosed | Ending::TracksEnded))
}

fn at_least_99_percent(n: usize) -> usize {
    (n * 99).div_ceil(100)
}

/// A WHIP publisher in room `r` and a WHEP viewer watching it, both connected.
async fn publisher_and_viewer(server: &TestServer) -> (WhipPublisher, WhepSubscriber) {
    let publisher =
        WhipPublisher::connect(server, "r", &server.token("r", "pub", true, false)).await;
    let viewer = server.token("r", "viewer", false, true);
    let subscriber = WhepSubscriber::connect(server, "r", &viewer, None).await;
    (publisher, subscriber)
}

/// A sender task writing one video packet every ~10 ms until dropped.
fn keep_sending_video(publisher: Arc<WhipPublisher>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        for sequence in 0u16.. {
            publisher
                .send(Kind::Video, sequence, random_payload(900))
                .await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_audio_and_video_to_two_subscribers() {
    let server = TestServer::start().await;
    let publisher =
        WhipPublisher::connect(&server, "r", &server.token("r", "pub", true, false)).await;
    let watch_token = server.token("r", "viewer", false, true);
    let first = WhepSubscriber::connect(&server, "r", &watch_token, None).await;
    let second = WhepSubscriber::connect(&server, "r", &watch_token, None).await;
    assert_eq!(server.metric("convene_subscribers").await, 4.0);

    let (audio, video) = (
        payloads(Kind::Audio, PACKETS),
        payloads(Kind::Video, PACKETS),
    );
    send_all(&publisher, &audio, &video).await;

    let wanted = at_least_99_percent(PACKETS);
    for subscriber in [&first, &second] {
        for (kind, sent) in [(Kind::Audio, &audio), (Kind::Video, &video)] {
            subscriber
                .wait_packets(kind, PACKETS, DELIVERY_TIMEOUT)
                .await;
            let got = delivered(&subscriber.payloads(kind), sent);
            assert!(got >= wanted, "{kind}: {got} of {PACKETS} delivered");
        }
    }
    let out = server.metric("convene_rtp_packets_out_total").await;
    assert!(
        out >= (2 * wanted * 2) as f64,
        "rtp_packets_out_total = {out}"
    );
    assert_eq!(server.metric("convene_subscribers").await, 4.0);
}

/// A subscriber whose link loses packets NACKs them, and the server sends them again from the
/// track's history (one for all its subscribers): every payload arrives in the end, byte for
/// byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_packets_are_retransmitted_on_nack() {
    let server = TestServer::start().await;
    let (publisher, subscriber) = publisher_and_viewer(&server).await;
    let video = payloads(Kind::Video, 80);
    let (warmup, rest) = video.split_at(20);
    for (sequence, payload) in warmup.iter().enumerate() {
        publisher
            .send(Kind::Video, sequence as u16, payload.clone())
            .await;
        tokio::time::sleep(PACING).await;
    }
    subscriber
        .wait_packets(Kind::Video, warmup.len(), DELIVERY_TIMEOUT)
        .await;
    let payload_type = subscriber.inbox(Kind::Video).packets[0].payload_type;
    subscriber.peer.lose_incoming_rtp(payload_type, 3);
    for (i, payload) in rest.iter().enumerate() {
        publisher
            .send(Kind::Video, (warmup.len() + i) as u16, payload.clone())
            .await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Every packet sent after the losses began arrives in the end. (The viewer's very first
    // packet can be lost while its track is being set up, before any loss: not counted.)
    let arrived = |subscriber: &WhepSubscriber| {
        let received: HashSet<Bytes> = subscriber.payloads(Kind::Video).into_iter().collect();
        rest.iter().filter(|p| received.contains(*p)).count()
    };
    let deadline = Instant::now() + DELIVERY_TIMEOUT;
    while arrived(&subscriber) < rest.len() {
        assert!(
            Instant::now() < deadline,
            "{} of {} delivered after losing {}",
            arrived(&subscriber),
            rest.len(),
            subscriber.peer.lost_incoming()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Nothing arrived that was never sent.
    delivered(&subscriber.payloads(Kind::Video), &video);
    assert_eq!(subscriber.peer.lost_incoming(), 3, "the link lost three");
    let nacks = server
        .metric("convene_nacks_total{direction=\"received\"}")
        .await;
    assert!(nacks >= 1.0, "nacks received: {nacks}");
    let again = server
        .metric("convene_rtp_retransmissions_total{result=\"sent\"}")
        .await;
    assert!(again >= 3.0, "sent again from the track's history: {again}");
}

/// A mute at the SFU drops packets on purpose; the viewer must not see a gap (it would NACK
/// every dropped packet): the sequence it receives stays contiguous across the mute, and
/// nobody NACKs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mute_at_the_sfu_leaves_no_gap_and_causes_no_nacks() {
    let server = TestServer::start().await;
    let (publisher, subscriber) = publisher_and_viewer(&server).await;
    let sfu = &server.server.state.sfu;
    let (room, identity) = (
        convene::ids::RoomId("r".into()),
        convene::ids::ParticipantId("pub".into()),
    );
    let video = payloads(Kind::Video, 90);
    let mut sequence = 0u16;
    for (round, muted) in [(0, false), (1, true), (2, false)] {
        if round > 0 {
            let applied = sfu
                .set_muted(
                    room.clone(),
                    identity.clone(),
                    convene::sfu::MediaKind::Video,
                    muted,
                )
                .await
                .expect("mute applied");
            assert_eq!(applied, 1);
        }
        for payload in &video[round * 30..(round + 1) * 30] {
            publisher.send(Kind::Video, sequence, payload.clone()).await;
            sequence += 1;
            tokio::time::sleep(PACING).await;
        }
        if muted {
            // Every packet sent while muted is in before the unmute: a command can overtake
            // datagrams still queued at the server, which would then go out unmuted.
            let arrived = server
                .wait_metric("convene_rtp_packets_in_total", 60.0, DELIVERY_TIMEOUT)
                .await;
            assert_eq!(arrived, 60.0, "the server received what was sent");
        } else {
            let wanted = if round == 0 { 30 } else { 60 };
            subscriber
                .wait_packets(Kind::Video, wanted, DELIVERY_TIMEOUT)
                .await;
        }
    }
    let received: Vec<u16> = subscriber
        .inbox(Kind::Video)
        .packets
        .iter()
        .map(|p| p.sequence)
        .collect();
    assert_eq!(received.len(), 60, "the 30 sent while muted were dropped");
    assert!(
        received.windows(2).all(|w| w[1] == w[0].wrapping_add(1)),
        "a gap across the mute: {received:?}"
    );
    // Give a NACK generator time to speak up (its interval is 100 ms) before looking.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let metrics = server.metrics().await;
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("convene_nacks_total{direction=\"received\"}")),
        "a NACK came after the mute"
    );
}

/// `convene_keyframe_requests_total{kind="pli",direction="sent"}`; 0 before the first one.
async fn plis_sent(server: &TestServer) -> f64 {
    let text = server.metrics().await;
    text.lines()
        .filter(|l| l.starts_with("convene_keyframe_requests_total{"))
        .filter(|l| l.contains(r#"kind="pli""#) && l.contains(r#"direction="sent""#))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_subscriber_triggers_keyframe_request() {
    let server = TestServer::start().await;
    let publisher = Arc::new(
        WhipPublisher::connect(&server, "r", &server.token("r", "pub", true, false)).await,
    );
    let sender = keep_sending_video(Arc::clone(&publisher));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent_before = plis_sent(&server).await;
    let seen = publisher.keyframe_requests();

    let subscriber = WhepSubscriber::connect(
        &server,
        "r",
        &server.token("r", "viewer", false, true),
        None,
    )
    .await;
    let connected = Instant::now();
    assert!(
        publisher
            .wait_keyframe_request(seen, Duration::from_secs(1))
            .await,
        "no PLI/FIR reached the publisher within 1 s of the subscriber connecting"
    );
    let latency = connected.elapsed();
    assert!(plis_sent(&server).await > sent_before);
    assert!(
        subscriber
            .wait_packets(Kind::Video, 10, DELIVERY_TIMEOUT)
            .await
            >= 10,
        "video did not reach the late subscriber"
    );
    println!("keyframe request arrived {latency:?} after the subscriber connected");
    sender.abort();
}

/// A VP8 payload whose descriptor carries a 15-bit picture id and TL0PICIDX, then `body`.
fn vp8_payload(picture: u16, tl0: u8, body: &[u8]) -> Bytes {
    let mut payload = vec![0x90, 0xc0, 0x80 | (picture >> 8) as u8, picture as u8, tl0];
    payload.extend_from_slice(body);
    Bytes::from(payload)
}

/// A viewer that takes the next publisher sees one VP8 stream: its picture ids and TL0PICIDX go
/// on from the last ones it got (its decoder would take a jump for lost frames), and the rest
/// of each payload arrives untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_that_takes_the_next_publisher_sees_continuous_vp8_pictures() {
    let server = TestServer::start().await;
    let (alice, viewer) = publisher_and_viewer(&server).await;
    let body = random_payload(600);
    for i in 0..10u16 {
        alice
            .send(Kind::Video, i, vp8_payload(100 + i, 7 + i as u8, &body))
            .await;
        tokio::time::sleep(PACING).await;
    }
    viewer.wait_packets(Kind::Video, 9, DELIVERY_TIMEOUT).await;
    assert_eq!(alice.delete().await.status(), StatusCode::OK);
    server
        .wait_metric("convene_published_tracks", 0.0, Duration::from_secs(5))
        .await;
    let bob = WhipPublisher::connect(&server, "r", &server.token("r", "bob", true, false)).await;
    // The viewer takes bob once his tracks are there; send until it has all ten of his.
    let deadline = Instant::now() + DELIVERY_TIMEOUT;
    let mut sequence = 1000u16;
    while viewer.inbox(Kind::Video).packets.len() < 20 {
        assert!(
            Instant::now() < deadline,
            "bob's video never reached the viewer"
        );
        let picture = 9000 + sequence - 1000;
        bob.send(Kind::Video, sequence, vp8_payload(picture, 50, &body))
            .await;
        sequence += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // In the leg's sequence order (a retransmission may arrive late).
    let mut packets = viewer.inbox(Kind::Video).packets;
    packets.sort_by_key(|p| p.sequence);
    let pictures: Vec<u16> = packets
        .iter()
        .map(|p| u16::from(p.payload[2] & 0x7f) << 8 | u16::from(p.payload[3]))
        .collect();
    assert!(
        pictures.windows(2).all(|w| w[1] == w[0] + 1),
        "picture ids jump: {pictures:?}"
    );
    // The viewer's very first packet can be lost while its track is being set up.
    assert!((100..110).contains(&pictures[0]), "{pictures:?}");
    let from_alice = usize::from(110 - pictures[0]);
    let tl0: Vec<u8> = packets.iter().map(|p| p.payload[4]).collect();
    assert_eq!(
        tl0[from_alice],
        tl0[from_alice - 1].wrapping_add(1),
        "TL0PICIDX goes on: {tl0:?}"
    );
    assert!(packets.iter().all(|p| p.payload[5..] == body[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publisher_delete_leaves_the_viewer_waiting_and_its_delete_releases_the_room() {
    let server = TestServer::start().await;
    let (publisher, subscriber) = publisher_and_viewer(&server).await;
    send_all(
        &publisher,
        &payloads(Kind::Audio, 5),
        &payloads(Kind::Video, 5),
    )
    .await;
    subscriber
        .wait_packets(Kind::Video, 1, DELIVERY_TIMEOUT)
        .await;

    assert_eq!(publisher.delete().await.status(), StatusCode::OK);
    assert_eq!(
        server
            .wait_metric("convene_published_tracks", 0.0, Duration::from_secs(5))
            .await,
        0.0
    );
    // The viewer's session outlives its publisher: it waits for the next one.
    assert!(
        subscriber.ended(Duration::from_millis(500)).await.is_none(),
        "the viewer was closed with its publisher"
    );
    assert_eq!(server.metric("convene_peers").await, 1.0);
    assert_eq!(subscriber.session.delete().await.status(), StatusCode::OK);
    assert_eq!(
        server
            .wait_metric("convene_rooms", 0.0, Duration::from_secs(5))
            .await,
        0.0
    );
    assert_eq!(server.metric("convene_peers").await, 0.0);

    let again = publisher.delete().await;
    assert_eq!(again.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        error_code(&again.text().await.unwrap()),
        "session_not_found"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vanished_publisher_is_reaped_and_its_viewer_waits_no_longer_than_allowed() {
    let server = TestServer::start_with(|c| c.whep_publisher_wait = Duration::from_secs(2)).await;
    let (publisher, subscriber) = publisher_and_viewer(&server).await;
    send_all(
        &publisher,
        &payloads(Kind::Audio, 5),
        &payloads(Kind::Video, 5),
    )
    .await;
    subscriber
        .wait_packets(Kind::Video, 1, DELIVERY_TIMEOUT)
        .await;
    assert_eq!(server.metric("convene_rooms").await, 1.0);

    publisher.vanish().await;
    // Reaped by the ICE timeouts; then its viewer waits `whep_publisher_wait` and is closed.
    let ending = subscriber.ended(Duration::from_secs(20)).await;
    assert!(
        ended_by_server(ending),
        "subscription not ended by the server: {ending:?}"
    );
    assert_eq!(
        server
            .wait_metric("convene_rooms", 0.0, Duration::from_secs(15))
            .await,
        0.0
    );
    assert!(server.metric("convene_peers_reaped_total").await >= 1.0);
}

/// A client that closes its connection (DTLS close_notify) without a DELETE has left: the server
/// releases it at once instead of waiting for ICE timeouts, here set beyond the test's patience.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_peers_are_released_without_ice_timeouts() {
    let server = TestServer::start_with(|config| {
        config.ice_disconnected_timeout = Duration::from_secs(60);
        config.ice_failed_timeout = Duration::from_secs(60);
    })
    .await;
    let publisher =
        WhipPublisher::connect(&server, "r", &server.token("r", "pub", true, false)).await;
    let token = server.token("r", "viewer", false, true);
    let leaving = WhepSubscriber::connect(&server, "r", &token, None).await;
    let staying = WhepSubscriber::connect(&server, "r", &token, None).await;
    send_all(
        &publisher,
        &payloads(Kind::Audio, 5),
        &payloads(Kind::Video, 5),
    )
    .await;
    staying.wait_packets(Kind::Video, 1, DELIVERY_TIMEOUT).await;
    assert_eq!(server.metric("convene_subscribers").await, 4.0);

    leaving.close().await;
    let within = Duration::from_secs(10);
    assert_eq!(
        server.wait_metric("convene_subscribers", 2.0, within).await,
        2.0,
        "a closed subscriber kept its down tracks"
    );
    publisher.close().await;
    assert_eq!(
        server
            .wait_metric("convene_published_tracks", 0.0, within)
            .await,
        0.0,
        "the closed publisher's tracks outlived it"
    );
    staying.close().await;
    assert_eq!(
        server.wait_metric("convene_rooms", 0.0, within).await,
        0.0,
        "the room outlived its closed peers"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickle_and_ice_restart() {
    let server = TestServer::start().await;
    let token = server.token("r", "pub", true, false);
    let mut publisher = WhipPublisher::start(&server, "r", &token, false)
        .await
        .expect("WHIP POST");
    let offer = publisher.session.offer.clone();
    assert!(
        candidate_lines(&offer).is_empty(),
        "the offer has candidates"
    );

    // Trickle: PATCH the candidates gathered since, under the offer's credentials.
    publisher.peer.wait_gathered(1).await;
    let local = publisher.peer.local_sdp().await;
    assert!(!candidate_lines(&local).is_empty(), "nothing was gathered");
    assert_eq!(
        sdp_attribute(&offer, "ice-ufrag"),
        sdp_attribute(&local, "ice-ufrag")
    );
    let trickled = publisher
        .session
        .patch(None, &trickle_fragment(&local))
        .await;
    assert_eq!(trickled.status(), StatusCode::NO_CONTENT);
    publisher.peer.wait_connected(CONNECT_TIMEOUT).await;

    // A wrong entity tag is refused before anything else happens.
    let stale = publisher
        .session
        .patch(Some("\"not-the-etag\""), &trickle_fragment(&local))
        .await;
    assert_eq!(stale.status(), StatusCode::PRECONDITION_FAILED);
    assert_eq!(error_code(&stale.text().await.unwrap()), "etag_mismatch");

    // ICE restart: new credentials in a fragment, with If-Match.
    let rounds = publisher.peer.gathering_rounds();
    publisher
        .peer
        .offer(Some(RTCOfferOptions { ice_restart: true }), false)
        .await;
    publisher.peer.wait_gathered(rounds + 1).await;
    let restarted = publisher.peer.local_sdp().await;
    assert_ne!(
        sdp_attribute(&restarted, "ice-ufrag"),
        sdp_attribute(&local, "ice-ufrag")
    );
    let response = publisher
        .session
        .patch(
            Some(&publisher.session.etag.clone()),
            &trickle_fragment(&restarted),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()[CONTENT_TYPE].to_str().unwrap(), SDPFRAG);
    let new_etag = response.headers()[ETAG].to_str().unwrap().to_owned();
    assert_ne!(new_etag, publisher.session.etag);
    let fragment = response.text().await.unwrap();
    let previous = publisher.peer.remote_sdp().await;
    for attribute in ["ice-ufrag", "ice-pwd"] {
        let new = sdp_attribute(&fragment, attribute).expect("fragment carries credentials");
        assert_ne!(
            Some(new),
            sdp_attribute(&previous, attribute),
            "{attribute}"
        );
    }
    let old_etag = std::mem::replace(&mut publisher.session.etag, new_etag);
    publisher
        .peer
        .apply_answer(&answer_from_fragment(&previous, &fragment))
        .await;
    publisher.peer.wait_connected(CONNECT_TIMEOUT).await;

    // Media still flows after the restart.
    let subscriber = WhepSubscriber::connect(
        &server,
        "r",
        &server.token("r", "viewer", false, true),
        None,
    )
    .await;
    let audio = payloads(Kind::Audio, 20);
    send_all(&publisher, &audio, &payloads(Kind::Video, 20)).await;
    assert!(
        subscriber
            .wait_packets(Kind::Audio, 18, DELIVERY_TIMEOUT)
            .await
            >= 18
    );
    assert!(delivered(&subscriber.payloads(Kind::Audio), &audio) >= 18);

    // The old entity tag is stale now.
    let stale = publisher
        .session
        .patch(Some(&old_etag), &trickle_fragment(&restarted))
        .await;
    assert_eq!(stale.status(), StatusCode::PRECONDITION_FAILED);
    assert_eq!(error_code(&stale.text().await.unwrap()), "etag_mismatch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whep_publisher_selection() {
    let server = TestServer::start().await;
    let alice =
        WhipPublisher::connect(&server, "r", &server.token("r", "alice", true, false)).await;
    let bob = WhipPublisher::connect(&server, "r", &server.token("r", "bob", true, false)).await;
    let token = server.token("r", "viewer", false, true);
    let of_alice = WhepSubscriber::connect(&server, "r", &token, Some("alice")).await;
    let default = WhepSubscriber::connect(&server, "r", &token, None).await;

    let (alice_audio, bob_audio) = (payloads(Kind::Audio, 30), payloads(Kind::Audio, 30));
    let (alice_video, bob_video) = (payloads(Kind::Video, 30), payloads(Kind::Video, 30));
    tokio::join!(
        send_all(&alice, &alice_audio, &alice_video),
        send_all(&bob, &bob_audio, &bob_video)
    );
    for (subscriber, sent) in [(&of_alice, &alice_audio), (&default, &bob_audio)] {
        subscriber
            .wait_packets(Kind::Audio, 30, DELIVERY_TIMEOUT)
            .await;
        // `delivered` also fails on any payload of the other publisher.
        assert!(delivered(&subscriber.payloads(Kind::Audio), sent) >= 29);
    }
    for (subscriber, sent) in [(&of_alice, &alice_video), (&default, &bob_video)] {
        subscriber
            .wait_packets(Kind::Video, 30, DELIVERY_TIMEOUT)
            .await;
        assert!(delivered(&subscriber.payloads(Kind::Video), sent) >= 29);
    }

    // Watching a publisher that is not there (yet) waits for it, and gets nobody else's media.
    let nobody = WhepSubscriber::connect(&server, "r", &token, Some("nobody")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(nobody.payloads(Kind::Audio).is_empty() && nobody.payloads(Kind::Video).is_empty());
}

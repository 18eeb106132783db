//! Media control over the socket: selective subscription (a participant drops and takes back
//! one of another's tracks) and per-source mute (muting the camera leaves a screen share
//! flowing). Real server, WebSocket clients with webrtc-rs connections.

mod common;
#[path = "signaling/ws_client.rs"]
mod ws_client;

use std::collections::HashMap;
use std::time::Duration;

use common::api::TestUser;
use common::TestServer;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use ws_client::MediaClient;

async fn seat(server: &TestServer, meeting: &Value, user: &TestUser) -> String {
    let path = format!("/meetings/{}/join", meeting["code"].as_str().unwrap());
    let reply = server
        .call(Method::POST, &path, Some(&user.token), Some(json!({})))
        .await;
    assert_eq!(reply.0, StatusCode::OK, "{}", reply.1);
    reply.1["join_token"].as_str().unwrap().to_owned()
}

/// Two participants in a fresh meeting; alice publishes `sources`, bob publishes nothing.
async fn pair(
    server: &TestServer,
    sources: &[(&str, &str)],
) -> (MediaClient, MediaClient, HashMap<String, String>) {
    let host = server.user("alice").await;
    let guest = server.user("bob").await;
    let (status, meeting) = server
        .call(
            Method::POST,
            "/meetings",
            Some(&host.token),
            Some(json!({"title": "m"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let mut alice =
        MediaClient::join(server, "alice", &seat(server, &meeting, &host).await, false).await;
    let mut bob =
        MediaClient::join(server, "bob", &seat(server, &meeting, &guest).await, false).await;
    alice.publish(sources).await;
    alice.wait_publisher_connected().await;
    bob.wait_subscriber_connected().await;
    // Track id by alice's own track name.
    let mut tracks = HashMap::new();
    while tracks.len() < sources.len() {
        let message = bob.ws.expect("track_published").await;
        tracks.insert(
            message["publisher_track_id"].as_str().unwrap().to_owned(),
            message["track_id"].as_str().unwrap().to_owned(),
        );
    }
    (alice, bob, tracks)
}

/// Sends `rounds` paced rounds on `names` and returns how many packets bob got of each.
async fn exchange(
    alice: &MediaClient,
    bob: &MediaClient,
    tracks: &HashMap<String, String>,
    names: &[&str],
    rounds: usize,
) -> HashMap<String, usize> {
    let before: HashMap<String, usize> = names
        .iter()
        .map(|n| (n.to_string(), bob.packets_from(&tracks[*n], "alice", n)))
        .collect();
    for _ in 0..rounds {
        alice.send_round(names).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    names
        .iter()
        .map(|n| {
            (
                n.to_string(),
                bob.packets_from(&tracks[*n], "alice", n) - before[*n],
            )
        })
        .collect()
}

#[tokio::test]
async fn unsubscribe_drops_one_track_and_subscribe_brings_it_back() {
    let server = TestServer::start().await;
    let (alice, mut bob, tracks) = pair(&server, &[("microphone", "mic"), ("camera", "cam")]).await;
    let names = ["mic", "cam"];
    let got = exchange(&alice, &bob, &tracks, &names, 30).await;
    assert!(
        got["mic"] >= 25 && got["cam"] >= 25,
        "both flow at first: {got:?}"
    );

    let answered = *bob.answered.borrow();
    bob.ws
        .send(json!({"type": "unsubscribe", "track_id": tracks["cam"], "ref": "u"}));
    let mut answered_rx = bob.answered.clone();
    tokio::time::timeout(
        Duration::from_secs(5),
        answered_rx.wait_for(|n| *n > answered),
    )
    .await
    .expect("a new offer after unsubscribe")
    .unwrap();
    let got = exchange(&alice, &bob, &tracks, &names, 30).await;
    assert!(got["mic"] >= 25, "audio still flows: {got:?}");
    assert_eq!(got["cam"], 0, "the dropped track stops: {got:?}");

    let answered = *bob.answered.borrow();
    bob.ws
        .send(json!({"type": "subscribe", "track_id": tracks["cam"], "ref": "s"}));
    tokio::time::timeout(
        Duration::from_secs(5),
        answered_rx.wait_for(|n| *n > answered),
    )
    .await
    .expect("a new offer after subscribe")
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = exchange(&alice, &bob, &tracks, &names, 30).await;
    assert!(
        got["mic"] >= 25 && got["cam"] >= 25,
        "the camera flows again: {got:?}"
    );

    // Unknown and own tracks are refused, and the socket stays.
    bob.ws
        .send(json!({"type": "unsubscribe", "track_id": "t999", "ref": "x"}));
    let error = bob.ws.expect_where("error", |m| m["ref"] == "x").await;
    assert_eq!(error["code"], "unknown_track", "{error}");
    bob.ws
        .send(json!({"type": "subscribe", "track_id": "not-a-track", "ref": "y"}));
    let error = bob.ws.expect_where("error", |m| m["ref"] == "y").await;
    assert_eq!(error["code"], "unknown_track", "{error}");
    bob.ws.send(json!({"type": "ping", "ref": "p"}));
    bob.ws.expect("pong").await;
}

#[tokio::test]
async fn muting_the_camera_leaves_the_screen_share_flowing() {
    let server = TestServer::start().await;
    let (alice, bob, tracks) = pair(&server, &[("camera", "cam"), ("screen", "scr")]).await;
    let names = ["cam", "scr"];
    let got = exchange(&alice, &bob, &tracks, &names, 30).await;
    assert!(got["cam"] >= 25 && got["scr"] >= 25, "{got:?}");

    // The mute reaches the SFU a moment after the message: rounds are exchanged until it shows
    // (a bounded number of times), then one more round must show it still.
    alice
        .ws
        .send(json!({"type": "mute", "source": "camera", "muted": true, "ref": "m"}));
    let got = exchange_until(&alice, &bob, &tracks, &names, |g| g["cam"] == 0).await;
    assert_eq!(got["cam"], 0, "the muted camera stops: {got:?}");
    let got = exchange(&alice, &bob, &tracks, &names, 30).await;
    assert_eq!(got["cam"], 0, "the muted camera stays stopped: {got:?}");
    assert!(got["scr"] >= 25, "the screen share keeps flowing: {got:?}");

    alice
        .ws
        .send(json!({"type": "mute", "source": "camera", "muted": false, "ref": "u"}));
    let got = exchange_until(&alice, &bob, &tracks, &names, |g| g["cam"] >= 25).await;
    assert!(
        got["cam"] >= 25 && got["scr"] >= 25,
        "both flow after unmute: {got:?}"
    );
}

/// Exchanges rounds of 30 packets until `done` holds of what arrived, at most 10 times; returns
/// the last round's counts.
async fn exchange_until(
    alice: &MediaClient,
    bob: &MediaClient,
    tracks: &HashMap<String, String>,
    names: &[&str],
    done: impl Fn(&HashMap<String, usize>) -> bool,
) -> HashMap<String, usize> {
    let mut got = exchange(alice, bob, tracks, names, 30).await;
    for _ in 0..9 {
        if done(&got) {
            break;
        }
        got = exchange(alice, bob, tracks, names, 30).await;
    }
    got
}

#[tokio::test]
async fn a_duplicate_join_can_be_refused_by_config() {
    let server =
        TestServer::start_with(|c| c.ws_duplicate_join = convene::config::DuplicateJoin::Refuse)
            .await;
    let host = server.user("alice").await;
    let (_, meeting) = server
        .call(
            Method::POST,
            "/meetings",
            Some(&host.token),
            Some(json!({"title": "m"})),
        )
        .await;
    let token = seat(&server, &meeting, &host).await;
    let (mut first, _) = ws_client::Ws::join(&server, &token).await;

    let mut second = ws_client::Ws::connect(&server, &format!("?token={token}"))
        .await
        .expect("upgrade accepted");
    second.send(json!({"type": "join"}));
    let error = second.expect("error").await;
    assert_eq!(error["code"], "already_connected", "{error}");
    assert_eq!(second.closed().await.0, 4002);
    // The first socket is untouched.
    first.send(json!({"type": "ping", "ref": "p"}));
    first.expect("pong").await;
    assert!(!first.is_closed());
}

#[tokio::test]
async fn joined_carries_chat_history_and_the_schedule() {
    let server = TestServer::start().await;
    let host = server.user("alice").await;
    let at = (chrono::Utc::now() + chrono::Duration::hours(2))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let (_, meeting) = server
        .call(
            Method::POST,
            "/meetings",
            Some(&host.token),
            Some(json!({"title": "m", "scheduled_at": at, "duration_minutes": 30})),
        )
        .await;
    let (mut alice, joined) =
        ws_client::Ws::join(&server, &seat(&server, &meeting, &host).await).await;
    assert_eq!(joined["meeting"]["scheduled_at"], at.as_str(), "{joined}");
    assert_eq!(joined["meeting"]["duration_minutes"], 30);
    assert_eq!(joined["chat"], json!([]));
    for text in ["first", "second"] {
        alice.send(json!({"type": "chat", "text": text}));
        alice
            .expect_where("chat_message", |m| {
                m["message"]["text"] == text || m["text"] == text
            })
            .await;
    }
    // A guest (no account, so no REST history) gets the history with its `joined`, oldest first.
    let path = format!("/meetings/{}/join", meeting["code"].as_str().unwrap());
    let (status, seat) = server
        .call(
            Method::POST,
            &path,
            None,
            Some(json!({"display_name": "Gus"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{seat}");
    let (_gus, joined) = ws_client::Ws::join(&server, seat["join_token"].as_str().unwrap()).await;
    let texts: Vec<&str> = joined["chat"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["first", "second"]);
}

#[tokio::test]
async fn toggling_a_subscription_reuses_its_section() {
    // 400 messages (changes and answers) in a few seconds: over the default message rate.
    let server = TestServer::start_with(|c| {
        c.ws_messages_per_second = 1000;
        c.ws_message_burst = 1000;
    })
    .await;
    let (alice, bob, tracks) = pair(&server, &[("microphone", "mic"), ("camera", "cam")]).await;
    let mut sizes = Vec::new();
    for round in 0..100 {
        for kind in ["unsubscribe", "subscribe"] {
            let answered = *bob.answered.borrow();
            bob.ws.send(
                json!({"type": kind, "track_id": tracks["cam"], "ref": format!("{kind}{round}")}),
            );
            let mut answered_rx = bob.answered.clone();
            tokio::time::timeout(
                Duration::from_secs(5),
                answered_rx.wait_for(|n| *n > answered),
            )
            .await
            .unwrap_or_else(|_| panic!("no new offer after {kind} in round {round}"))
            .unwrap();
        }
        let offer = bob.subscriber_offer().await;
        sizes.push((offer.matches("\nm=").count(), offer.len()));
    }
    let (first, last) = (sizes[0], sizes[sizes.len() - 1]);
    assert_eq!(first.0, last.0, "no section is added: {sizes:?}");
    assert!(
        last.1 <= first.1 + 64,
        "the offer does not grow: {} → {} bytes",
        first.1,
        last.1
    );
    let got = exchange(&alice, &bob, &tracks, &["mic", "cam"], 30).await;
    assert!(
        got["cam"] >= 25,
        "the camera flows after 100 toggles: {got:?}"
    );
}

/// PLI/FIR the server sent its publishers so far.
async fn keyframe_requests_sent(server: &TestServer) -> f64 {
    server
        .metrics()
        .await
        .lines()
        .filter(|l| l.starts_with("convene_keyframe_requests_total") && l.contains("\"sent\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn a_paused_track_stops_without_renegotiation_and_resumes_from_a_keyframe() {
    let server = TestServer::start().await;
    let (alice, mut bob, tracks) = pair(&server, &[("microphone", "mic"), ("camera", "cam")]).await;
    let names = ["mic", "cam"];
    let got = exchange(&alice, &bob, &tracks, &names, 30).await;
    assert!(got["mic"] >= 25 && got["cam"] >= 25, "both flow: {got:?}");
    let answered = *bob.answered.borrow();

    // Messages are served in order: the pong says the pause is in place.
    bob.ws
        .send(json!({"type": "set_track", "track_id": tracks["cam"], "paused": true}));
    bob.ws.send(json!({"type": "ping", "ref": "after-pause"}));
    bob.ws
        .expect_where("pong", |m| m["ref"] == "after-pause")
        .await;
    let got = exchange(&alice, &bob, &tracks, &names, 30).await;
    assert!(got["mic"] >= 25, "audio still flows: {got:?}");
    assert_eq!(got["cam"], 0, "the paused track stops: {got:?}");
    assert_eq!(
        *bob.answered.borrow(),
        answered,
        "no renegotiation for a pause"
    );
    assert_eq!(server.metric("convene_paused_down_tracks").await, 1.0);

    let keyframes = keyframe_requests_sent(&server).await;
    bob.ws
        .send(json!({"type": "set_track", "track_id": tracks["cam"], "paused": false}));
    bob.ws.send(json!({"type": "ping", "ref": "after-resume"}));
    bob.ws
        .expect_where("pong", |m| m["ref"] == "after-resume")
        .await;
    let got = exchange(&alice, &bob, &tracks, &names, 30).await;
    assert!(got["cam"] >= 25, "the camera flows again: {got:?}");
    assert!(
        keyframe_requests_sent(&server).await > keyframes,
        "resuming asked the publisher for a keyframe"
    );
    assert_eq!(
        *bob.answered.borrow(),
        answered,
        "no renegotiation to resume"
    );
    assert_eq!(server.metric("convene_paused_down_tracks").await, 0.0);

    bob.ws
        .send(json!({"type": "set_track", "track_id": "t999", "paused": true, "ref": "x"}));
    let error = bob.ws.expect_where("error", |m| m["ref"] == "x").await;
    assert_eq!(error["code"], "unknown_track", "{error}");

    // A tile's size is taken for a track that is not simulcast (it has one layer), and
    // nonsense sizes are refused whole, before anything changes.
    bob.ws
        .send(json!({"type": "set_track", "track_id": tracks["cam"], "width": 320, "height": 180}));
    bob.ws.send(json!({"type": "ping", "ref": "after-size"}));
    bob.ws
        .expect_where("pong", |m| m["ref"] == "after-size")
        .await;
    let got = exchange(&alice, &bob, &tracks, &names, 30).await;
    assert!(
        got["cam"] >= 25,
        "a one-layer track flows at any size: {got:?}"
    );
    for (n, bad) in [
        json!({"width": 320}),
        json!({"width": 0, "height": 180}),
        json!({"width": 9000, "height": 180}),
        json!({"width": 320, "height": 180, "layer": 1}),
        json!({"layer": 3}),
        json!({"paused": true, "height": 10}),
    ]
    .into_iter()
    .enumerate()
    {
        let mut message =
            json!({"type": "set_track", "track_id": tracks["cam"], "ref": format!("bad{n}")});
        message
            .as_object_mut()
            .unwrap()
            .extend(bad.as_object().unwrap().clone());
        bob.ws.send(message);
        let error = bob
            .ws
            .expect_where("error", |m| m["ref"] == format!("bad{n}"))
            .await;
        assert_eq!(error["code"], "invalid", "{bad}: {error}");
    }
    assert_eq!(
        server.metric("convene_paused_down_tracks").await,
        0.0,
        "the refused pause did not happen"
    );
}

/// A VP8 L1T3 frame as one packet: picture id, TL0PICIDX and TID in the descriptor (T1 frames
/// marked layer sync), then the frame's number.
fn l1t3_frame(n: u16) -> bytes::Bytes {
    let tid = [0u8, 2, 1, 2][usize::from(n % 4)];
    let tl0 = (n / 4) as u8;
    let picture = 1000 + n;
    let mut payload = vec![
        0x90,
        0xe0,
        0x80 | (picture >> 8) as u8,
        picture as u8,
        tl0,
        (tid << 6) | if tid == 1 { 0x20 } else { 0 },
    ];
    payload.extend_from_slice(&n.to_be_bytes());
    payload.extend(std::iter::repeat_n(0x42, 300));
    bytes::Bytes::from(payload)
}

/// (frame number, TID, picture id as received) of what Bob received of `track`.
fn received_frames(bob: &MediaClient, track: &str) -> Vec<(u16, u8, u16)> {
    bob.received()
        .get(track)
        .map(|t| {
            t.payloads
                .iter()
                .filter(|p| p.len() > 8 && p[1] == 0xe0)
                .map(|p| {
                    let n = u16::from_be_bytes([p[6], p[7]]);
                    let picture = (u16::from(p[2] & 0x7f) << 8) | u16::from(p[3]);
                    (n, p[5] >> 6, picture)
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn a_frame_rate_cap_drops_upper_vp8_temporal_layers_and_lifts() {
    let server = TestServer::start().await;
    let (alice, mut bob, tracks) = pair(&server, &[("camera", "cam")]).await;
    let cam = &tracks["cam"];
    // 100 frames/s: T0 25, T1 25, T2 50.
    let mut n = 0u16;
    let mut send = |count: u16| {
        let start = n;
        n += count;
        (start..start + count).collect::<Vec<u16>>()
    };
    for frame in send(150) {
        alice.send_payload("cam", Some(l1t3_frame(frame))).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // 30 fps: T0 alone (25) falls short, T0+T1 (50) covers it, so T2 goes.
    bob.ws
        .send(json!({"type": "set_track", "track_id": cam, "fps": 30}));
    bob.ws.send(json!({"type": "ping", "ref": "capped"}));
    bob.ws.expect_where("pong", |m| m["ref"] == "capped").await;
    let capped = send(120);
    for frame in &capped {
        alice.send_payload("cam", Some(l1t3_frame(*frame))).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    bob.ws
        .send(json!({"type": "set_track", "track_id": cam, "fps": 0}));
    bob.ws.send(json!({"type": "ping", "ref": "lifted"}));
    bob.ws.expect_where("pong", |m| m["ref"] == "lifted").await;
    let lifted = send(80);
    for frame in &lifted {
        alice.send_payload("cam", Some(l1t3_frame(*frame))).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(400)).await;

    let got = received_frames(&bob, cam);
    let in_range = |range: &[u16]| -> Vec<(u16, u8, u16)> {
        got.iter()
            .copied()
            .filter(|(f, _, _)| range.contains(f))
            .collect()
    };
    let during = in_range(&capped[4..]);
    assert!(
        during.len() > 50,
        "T0 and T1 flow under the cap: {}",
        during.len()
    );
    assert!(
        during.iter().all(|(_, tid, _)| *tid <= 1),
        "no T2 frame under a 30 fps cap: {during:?}"
    );
    let after = in_range(&lifted[4..]);
    assert!(
        after.iter().filter(|(_, tid, _)| *tid == 2).count() > 25,
        "T2 again once lifted: {after:?}"
    );
    // Picture ids as received go up by one per frame received: the dropped ones left no hole.
    for pair in got.windows(2) {
        let ((fa, _, pa), (fb, _, pb)) = (pair[0], pair[1]);
        assert!(fb > fa, "in order: {fa} then {fb}");
        assert_eq!(pb, pa.wrapping_add(1) & 0x7fff, "frames {fa} → {fb}");
    }
    // Out-of-range caps are refused.
    bob.ws
        .send(json!({"type": "set_track", "track_id": cam, "fps": 1000, "ref": "too-fast"}));
    let error = bob
        .ws
        .expect_where("error", |m| m["ref"] == "too-fast")
        .await;
    assert_eq!(error["code"], "invalid", "{error}");
}

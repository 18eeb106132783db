//! WebSocket signaling (`/ws`) end to end: authentication and join, presence, limits and bad
//! input, media over a publisher/subscriber connection pair with real webrtc-rs clients (three
//! participants, then a screen share mid-meeting), mute, hands, chat and typing, moderation
//! (kick and ban, mute, roles, end for all), the waiting room, takeover and resume.
//! Runs on SQLite, and on PostgreSQL when DATABASE_URL is set.

mod common;
#[path = "signaling/ws_client.rs"]
mod ws_client;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::api::TestUser;
use common::TestServer;
use convene::config::IceServer;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use ws_client::{MediaClient, Ws, WAIT};

// ---- helpers ------------------------------------------------------------------------------

/// A meeting hosted by `host`, made over REST, with `settings`.
async fn meeting(server: &TestServer, host: &TestUser, settings: Value) -> Value {
    let reply = server
        .call(
            Method::POST,
            "/meetings",
            Some(&host.token),
            Some(json!({"title": "Signaling", "settings": settings})),
        )
        .await;
    assert_eq!(reply.0, StatusCode::CREATED, "{}", reply.1);
    reply.1
}

/// `POST /meetings/{code}/join` as `user` (a guest named `guest` when `None`).
async fn join_rest(
    server: &TestServer,
    meeting: &Value,
    user: Option<&TestUser>,
    body: Value,
) -> (StatusCode, Value) {
    let path = format!("/meetings/{}/join", meeting["code"].as_str().unwrap());
    server
        .call(
            Method::POST,
            &path,
            user.map(|u| u.token.as_str()),
            Some(body),
        )
        .await
}

/// Joins over REST (must succeed); the join response (join_token, participant_id, ...).
async fn seat(server: &TestServer, meeting: &Value, user: &TestUser) -> Value {
    let reply = join_rest(server, meeting, Some(user), json!({})).await;
    assert_eq!(reply.0, StatusCode::OK, "{}", reply.1);
    reply.1
}

fn token(seat: &Value) -> &str {
    seat["join_token"].as_str().expect("a join token")
}

fn id(value: &Value, field: &str) -> String {
    value[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} in {value}"))
        .to_owned()
}

/// A participant row's status and left_at, read from the store.
async fn row(server: &TestServer, meeting: &Value, participant_id: &str) -> (String, bool, bool) {
    let p = server
        .server
        .state
        .store
        .participant(meeting["id"].as_str().unwrap(), participant_id)
        .await
        .unwrap();
    (p.status, p.left_at.is_some(), p.mic_muted)
}

/// Polls a participant row until its status is `status`.
async fn wait_status(server: &TestServer, meeting: &Value, participant_id: &str, status: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (now, _, _) = row(server, meeting, participant_id).await;
        if now == status {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "participant {participant_id} is {now}, not {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn ids_of(participants: &Value) -> HashSet<String> {
    participants
        .as_array()
        .unwrap()
        .iter()
        .map(|p| id(p, "participant_id"))
        .collect()
}

// ---- step 1: authentication, presence, limits -------------------------------------------

#[tokio::test]
async fn tokens_are_checked_before_and_at_join() {
    let server = TestServer::start_with(|c| c.ws_join_timeout = Duration::from_millis(500)).await;
    // A bad token in the query is refused before the upgrade.
    assert_eq!(
        Ws::connect(&server, "?token=garbage").await.err(),
        Some(401)
    );
    assert_eq!(
        Ws::connect(&server, "?wait_token=garbage").await.err(),
        Some(401)
    );

    // No token anywhere: join is refused and the socket closed (4401).
    let mut ws = Ws::connect(&server, "").await.unwrap();
    ws.send(json!({"type": "join", "ref": "j"}));
    let error = ws.expect("error").await;
    assert_eq!(error["code"], "unauthorized");
    assert_eq!(error["ref"], "j");
    assert_eq!(ws.closed().await.0, 4401);

    // A bad token in join: the same.
    let mut ws = Ws::connect(&server, "").await.unwrap();
    ws.send(json!({"type": "join", "token": "x.y.z"}));
    assert_eq!(ws.expect("error").await["code"], "unauthorized");
    assert_eq!(ws.closed().await.0, 4401);

    // Messages before join are refused; a socket that never joins is closed (4408).
    let mut ws = Ws::connect(&server, "").await.unwrap();
    ws.send(json!({"type": "chat", "text": "hi"}));
    assert_eq!(ws.expect("error").await["code"], "not_joined");
    assert_eq!(ws.closed().await.0, 4408);

    // A valid token whose room is no meeting (e.g. minted for WHIP) is refused (4403).
    let whip_token = server.token("not-a-meeting", "someone", true, true);
    let (mut ws, _) = {
        let mut ws = Ws::connect(&server, &format!("?token={whip_token}"))
            .await
            .unwrap();
        ws.send(json!({"type": "join"}));
        let error = ws.expect("error").await;
        (ws, error)
    };
    assert_eq!(ws.closed().await.0, 4403);
    assert!(ws
        .wait_where("joined", Duration::ZERO, |_| true)
        .await
        .is_none());

    // A token for a participant who never joined over REST: 4010.
    let host = server.user("hana").await;
    let m = meeting(&server, &host, json!({})).await;
    let stranger = server.token(m["id"].as_str().unwrap(), "stranger", true, true);
    let mut ws = Ws::connect(&server, "").await.unwrap();
    ws.send(json!({"type": "join", "token": stranger}));
    assert_eq!(ws.expect("error").await["code"], "not_joined");
    assert_eq!(ws.closed().await.0, 4010);

    // An unsupported protocol version is refused, and the socket stays for a good join.
    let seat = seat(&server, &m, &host).await;
    let mut ws = Ws::connect(&server, "").await.unwrap();
    ws.send(json!({"type": "join", "token": token(&seat), "version": 2}));
    assert_eq!(ws.expect("error").await["code"], "unsupported_version");
    ws.send(json!({"type": "join", "token": token(&seat), "version": 1}));
    let joined = ws.expect("joined").await;
    assert_eq!(joined["you"]["participant_id"], seat["participant_id"]);
    // A second join on a joined socket is refused; the socket stays.
    ws.send(json!({"type": "join", "ref": "again"}));
    assert_eq!(
        ws.expect_where("error", |m| m["ref"] == "again").await["code"],
        "already_joined"
    );
    ws.send(json!({"type": "ping", "ref": "p"}));
    assert_eq!(ws.expect("pong").await["ref"], "p");
}

#[tokio::test]
async fn join_announces_presence_and_leave_records_it() {
    let server = TestServer::start_with(|c| {
        c.ice_servers = vec![IceServer {
            urls: vec!["stun:stun.example.net:3478".into()],
            username: None,
            credential: None,
        }]
    })
    .await;
    let (host, bob) = (server.user("hana").await, server.user("bob").await);
    let m = meeting(&server, &host, json!({"mute_on_join": true})).await;
    let host_seat = seat(&server, &m, &host).await;
    let bob_seat = seat(&server, &m, &bob).await;

    let (mut hana, joined) = Ws::join(&server, token(&host_seat)).await;
    assert_eq!(joined["protocol_version"], 1);
    assert_eq!(joined["resumed"], false);
    assert_eq!(joined["you"]["participant_id"], host_seat["participant_id"]);
    assert_eq!(joined["you"]["identity"], host.id);
    assert_eq!(joined["you"]["display_name"], "hana");
    assert_eq!(joined["you"]["role"], "host");
    assert_eq!(
        joined["you"]["muted"],
        json!(["microphone"]),
        "mute_on_join"
    );
    assert_eq!(joined["participants"], json!([]));
    assert_eq!(
        joined["ice_servers"][0]["urls"][0],
        "stun:stun.example.net:3478"
    );
    assert_eq!(joined["meeting"]["id"], m["id"]);
    assert_eq!(joined["meeting"]["settings"]["mute_on_join"], true);
    assert_eq!(joined["permissions"]["moderate"], true);
    assert_eq!(
        joined["permissions"]["publish_sources"],
        json!(["camera", "microphone", "screen", "screen_audio"])
    );
    assert_eq!(
        joined["waiting"],
        json!([]),
        "moderators see the waiting room"
    );
    // The server offers the subscriber connection right away.
    let offer = hana.expect("offer").await;
    assert!(offer["sdp"].as_str().unwrap().contains("m=application"));

    // Bob joins with the token in the join message; each sees the other.
    let mut ws = Ws::connect(&server, "").await.unwrap();
    ws.send(json!({"type": "join", "token": token(&bob_seat)}));
    let bob_joined = ws.expect("joined").await;
    let mut bob_ws = ws;
    assert_eq!(bob_joined["you"]["role"], "participant");
    assert!(bob_joined.get("waiting").is_none(), "not a moderator");
    assert_eq!(
        ids_of(&bob_joined["participants"]),
        HashSet::from([id(&host_seat, "participant_id")])
    );
    assert_eq!(bob_joined["participants"][0]["display_name"], "hana");
    let announced = hana.expect("participant_joined").await;
    assert_eq!(
        announced["participant"]["participant_id"],
        bob_seat["participant_id"]
    );
    assert_eq!(announced["participant"]["display_name"], "bob");

    // Ping/pong.
    bob_ws.send(json!({"type": "ping", "ref": 42}));
    assert_eq!(bob_ws.expect("pong").await["ref"], "42");

    // Bob leaves: closed normally, hana told, the row says left.
    bob_ws.send(json!({"type": "leave"}));
    assert_eq!(bob_ws.closed().await.0, 1000);
    let left = hana.expect("participant_left").await;
    assert_eq!(left["participant_id"], bob_seat["participant_id"]);
    assert_eq!(left["reason"], "left");
    let bob_id = id(&bob_seat, "participant_id");
    wait_status(&server, &m, &bob_id, "left").await;
    assert!(row(&server, &m, &bob_id).await.1, "left_at is set");

    // The same token cannot come back: the seat is given up (4010).
    let mut again = Ws::connect(&server, &format!("?token={}", token(&bob_seat)))
        .await
        .unwrap();
    again.send(json!({"type": "join"}));
    assert_eq!(again.expect("error").await["code"], "session_gone");
    assert_eq!(again.closed().await.0, 4010);
}

#[tokio::test]
async fn bad_messages_get_errors_until_abuse_closes_the_socket() {
    let server = TestServer::start_with(|c| {
        c.ws_max_violations = 6;
        c.ws_max_message_bytes = 4096;
    })
    .await;
    let host = server.user("hana").await;
    let m = meeting(&server, &host, json!({})).await;
    let (mut ws, _) = Ws::join(&server, token(&seat(&server, &m, &host).await)).await;

    ws.send_text("{not json");
    assert_eq!(ws.expect("error").await["code"], "bad_json");
    ws.send(json!({"type": "dance", "ref": "d"}));
    let error = ws.expect("error").await;
    assert_eq!(
        (error["code"].as_str(), error["ref"].as_str()),
        (Some("unknown_type"), Some("d"))
    );
    ws.send(json!({"type": "offer"}));
    assert_eq!(ws.expect("error").await["code"], "bad_message");
    ws.send(json!({"no": "type"}));
    assert_eq!(ws.expect("error").await["code"], "bad_message");
    ws.send_binary(b"\x00\x01");
    assert_eq!(ws.expect("error").await["code"], "bad_message");
    ws.send(json!({"type": "chat", "text": "x".repeat(5000)}));
    assert_eq!(ws.expect("error").await["code"], "message_too_large");
    // Six refused messages: the socket is still usable.
    ws.send(json!({"type": "ping", "ref": "alive"}));
    assert_eq!(ws.expect("pong").await["ref"], "alive");
    // A known message the session refuses is not abuse.
    ws.send(json!({"type": "subscribe", "track_id": "t1"}));
    assert_eq!(ws.expect("error").await["code"], "unknown_track");
    // The seventh refused message closes it with 1008.
    ws.send_text("[]");
    assert_eq!(ws.expect("error").await["code"], "bad_message");
    let (code, reason) = ws.closed().await;
    assert_eq!(code, 1008, "{reason}");

    // A frame far over the limit is not read at all: the socket closes with 1009.
    let (ws, _) = Ws::join(&server, token(&seat(&server, &m, &host).await)).await;
    ws.send_text(&"x".repeat(4 * 4096 + 1));
    assert_eq!(ws.closed().await.0, 1009);
}

#[tokio::test]
async fn message_rate_is_limited() {
    let server = TestServer::start_with(|c| {
        c.ws_messages_per_second = 1;
        c.ws_message_burst = 5;
        c.ws_max_violations = 100;
    })
    .await;
    let host = server.user("hana").await;
    let m = meeting(&server, &host, json!({})).await;
    let (mut ws, _) = Ws::join(&server, token(&seat(&server, &m, &host).await)).await;
    for i in 0..12 {
        ws.send(json!({"type": "ping", "ref": i}));
    }
    let pongs = ws.all_of("pong", Duration::from_millis(500)).await.len();
    let limited = ws
        .all_of("error", Duration::ZERO)
        .await
        .iter()
        .filter(|e| e["code"] == "rate_limited")
        .count();
    // The burst of 5 less the join, plus what half a second refills.
    assert!((4..=5).contains(&pongs), "{pongs} pongs");
    assert_eq!(pongs + limited, 12);
    assert!(!ws.is_closed());
}

#[tokio::test]
async fn silent_sockets_time_out_and_live_ones_stay() {
    let server = TestServer::start_with(|c| {
        c.ws_ping_interval = Duration::from_millis(200);
        c.ws_idle_timeout = Duration::from_millis(700);
    })
    .await;
    let host = server.user("hana").await;
    let m = meeting(&server, &host, json!({})).await;
    let host_seat = seat(&server, &m, &host).await;
    // This client answers pings (its reader runs), so it stays past the idle timeout.
    let (ws, _) = Ws::join(&server, token(&host_seat)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!ws.is_closed(), "a client answering pings is not idle");

    // A client that never reads answers no ping: closed with 4408 after the idle timeout.
    let url = format!("ws://{}/ws", server.server.http_addr);
    let (mut silent, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    use futures_util::StreamExt;
    let mut code = None;
    while let Ok(Some(frame)) = tokio::time::timeout(WAIT, silent.next()).await {
        if let Ok(tokio_tungstenite::tungstenite::Message::Close(Some(frame))) = frame {
            code = Some(u16::from(frame.code));
            break;
        }
    }
    assert_eq!(code, Some(4408));
}

// ---- step 2: media -----------------------------------------------------------------------

/// The `track_published` messages `client` saw, by (participant id, source) → track id.
async fn published_tracks(
    client: &mut MediaClient,
    count: usize,
) -> HashMap<(String, String), String> {
    let mut tracks = HashMap::new();
    while tracks.len() < count {
        let message = client.ws.expect("track_published").await;
        tracks.insert(
            (id(&message, "participant_id"), id(&message, "source")),
            id(&message, "track_id"),
        );
    }
    tracks
}

/// What each expectation is: receiver index, remote track id, sender name, sender track id.
type Expectation = (usize, String, String, String);

/// Sends a round of packets on every client's `sending` tracks every 20 ms until every
/// expectation saw `n` packets (or `WAIT` passed); returns the ones that did not.
async fn exchange(
    clients: &[MediaClient],
    sending: &[Vec<String>],
    expectations: &[Expectation],
    n: usize,
) -> Vec<(Expectation, usize)> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        for (client, tracks) in clients.iter().zip(sending) {
            let tracks: Vec<&str> = tracks.iter().map(String::as_str).collect();
            client.send_round(&tracks).await;
        }
        let missing: Vec<(Expectation, usize)> = expectations
            .iter()
            .map(|e| (e.clone(), clients[e.0].packets_from(&e.1, &e.2, &e.3)))
            .filter(|(_, got)| *got < n)
            .collect();
        if missing.is_empty() || tokio::time::Instant::now() > deadline {
            return missing;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn three_participants_exchange_media_and_a_screen_share_reaches_everyone() {
    let server = TestServer::start().await;
    let host = server.user("alice").await;
    let (bob, carol) = (server.user("bob").await, server.user("carol").await);
    let m = meeting(&server, &host, json!({})).await;
    let names = ["alice", "bob", "carol"];
    let mut clients = Vec::new();
    for (name, user) in names.iter().zip([&host, &bob, &carol]) {
        let seat = seat(&server, &m, user).await;
        // Carol trickles her candidates over the socket instead of putting them in her offer.
        let client = MediaClient::join(&server, name, token(&seat), *name == "carol").await;
        clients.push(client);
    }
    for client in &mut clients {
        let name = client.name.clone();
        client
            .publish(&[
                ("microphone", &format!("mic-{name}")),
                ("camera", &format!("cam-{name}")),
            ])
            .await;
    }
    for client in &clients {
        client.wait_publisher_connected().await;
        client.wait_subscriber_connected().await;
    }
    // Everyone learns of all six tracks (their own included), each with its source.
    let mut seen = Vec::new();
    for client in &mut clients {
        seen.push(published_tracks(client, 6).await);
    }
    assert!(seen.windows(2).all(|w| w[0] == w[1]), "{seen:?}");
    let tracks = seen.remove(0);
    let pids: Vec<String> = clients.iter().map(MediaClient::participant_id).collect();
    let identities: Vec<String> = clients
        .iter()
        .map(|c| id(&c.joined["you"], "identity"))
        .collect();

    // Each receives the other two's audio and video, on the tracks announced for them.
    let sending: Vec<Vec<String>> = names
        .iter()
        .map(|n| vec![format!("mic-{n}"), format!("cam-{n}")])
        .collect();
    let mut expectations = Vec::new();
    for receiver in 0..3 {
        for sender in (0..3).filter(|s| *s != receiver) {
            for (source, prefix) in [("microphone", "mic"), ("camera", "cam")] {
                let track_id = tracks[&(pids[sender].clone(), source.to_owned())].clone();
                let name = names[sender];
                expectations.push((
                    receiver,
                    track_id,
                    name.to_owned(),
                    format!("{prefix}-{name}"),
                ));
            }
        }
    }
    // Bob speaks loudly, the others softly (below the speaking threshold).
    clients[1]
        .audio_level
        .store(10, std::sync::atomic::Ordering::Relaxed);
    let missing = exchange(&clients, &sending, &expectations, 25).await;
    assert!(missing.is_empty(), "not delivered: {missing:?}");
    // Everyone hears who speaks, and how good each connection is (loopback: excellent).
    for client in &mut clients {
        let speakers = client
            .ws
            .expect_where("active_speakers", |m| {
                !m["speakers"].as_array().unwrap().is_empty()
            })
            .await;
        assert_eq!(
            speakers["speakers"][0]["participant_id"],
            pids[1].as_str(),
            "{speakers}"
        );
        assert_eq!(
            speakers["speakers"].as_array().unwrap().len(),
            1,
            "{speakers}"
        );
        for pid in &pids {
            let quality = client
                .ws
                .expect_where("connection_quality", |m| {
                    m["participant_id"] == pid.as_str()
                })
                .await;
            assert_eq!(quality["quality"], "excellent");
        }
    }
    for (i, client) in clients.iter().enumerate() {
        let remote = client.received();
        assert_eq!(remote.len(), 4, "{}: {:?}", names[i], remote.keys());
        // The stream id of a remote track is its publisher's identity.
        for (track_id, track) in &remote {
            let publisher = tracks
                .iter()
                .find(|(_, t)| *t == track_id)
                .map(|((pid, _), _)| pid)
                .expect("an announced track");
            assert_ne!(publisher, &pids[i], "{} receives its own track", names[i]);
            let j = pids.iter().position(|p| p == publisher).unwrap();
            assert_eq!(
                track.stream_id, identities[j],
                "{}'s track {track_id}",
                names[i]
            );
        }
    }

    // Alice shares her screen: a third track on her publisher (a renegotiation), announced to
    // everyone and added to bob's and carol's subscriber connections (server offers).
    let answered_before: Vec<u32> = clients.iter().map(|c| *c.answered.borrow()).collect();
    clients[0].publish(&[("screen", "screen-alice")]).await;
    let mut screen_track = None;
    for client in &mut clients {
        let message = client
            .ws
            .expect_where("track_published", |m| m["source"] == "screen")
            .await;
        assert_eq!(message["participant_id"], pids[0].as_str());
        assert_eq!(message["kind"], "video");
        assert_eq!(message["publisher_track_id"], "screen-alice");
        screen_track = Some(id(&message, "track_id"));
    }
    let screen_track = screen_track.unwrap();
    let mut sending = sending;
    sending[0].push("screen-alice".to_owned());
    let expectations: Vec<Expectation> = [1, 2]
        .into_iter()
        .map(|r| {
            (
                r,
                screen_track.clone(),
                "alice".to_owned(),
                "screen-alice".to_owned(),
            )
        })
        .chain([(
            1,
            tracks[&(pids[0].clone(), "camera".to_owned())].clone(),
            "alice".to_owned(),
            "cam-alice".to_owned(),
        )])
        .collect();
    let baseline: Vec<usize> = expectations
        .iter()
        .map(|e| clients[e.0].packets_from(&e.1, &e.2, &e.3))
        .collect();
    let missing = exchange(&clients, &sending, &expectations, 25 + baseline[2]).await;
    assert!(
        missing.is_empty(),
        "screen share not delivered: {missing:?}"
    );
    for (i, client) in clients.iter().enumerate().skip(1) {
        assert!(
            *client.answered.borrow() > answered_before[i],
            "{} was offered the screen track",
            names[i]
        );
    }
    assert!(!clients[0].received().contains_key(&screen_track));
    for client in &clients {
        client.close().await;
    }
}

// ---- step 3: mute, hands, chat, moderation, waiting room, takeover, resume ---------------

#[tokio::test]
async fn mute_stops_forwarding_and_is_broadcast_and_recorded() {
    let server = TestServer::start().await;
    let (host, bob) = (server.user("alice").await, server.user("bob").await);
    let m = meeting(&server, &host, json!({})).await;
    let alice_seat = seat(&server, &m, &host).await;
    let bob_seat = seat(&server, &m, &bob).await;
    let mut alice = MediaClient::join(&server, "alice", token(&alice_seat), false).await;
    let mut bob = MediaClient::join(&server, "bob", token(&bob_seat), false).await;
    bob.publish(&[("microphone", "mic-bob"), ("camera", "cam-bob")])
        .await;
    alice.wait_subscriber_connected().await;
    bob.wait_publisher_connected().await;
    let tracks = published_tracks(&mut alice, 2).await;
    let bob_pid = bob.participant_id();
    let mic = tracks[&(bob_pid.clone(), "microphone".to_owned())].clone();
    let cam = tracks[&(bob_pid.clone(), "camera".to_owned())].clone();
    let clients = [alice, bob];
    let sending = vec![vec![], vec!["mic-bob".to_owned(), "cam-bob".to_owned()]];
    let both = [
        (0, mic.clone(), "bob".to_owned(), "mic-bob".to_owned()),
        (0, cam.clone(), "bob".to_owned(), "cam-bob".to_owned()),
    ];
    assert!(exchange(&clients, &sending, &both, 20).await.is_empty());
    let [mut alice, mut bob] = clients;

    // Bob mutes his microphone: everyone is told, the row records it, audio stops.
    bob.ws
        .send(json!({"type": "mute", "source": "microphone", "muted": true}));
    for client in [&mut alice, &mut bob] {
        let state = client.ws.expect("media_state").await;
        assert_eq!(state["participant_id"], bob_pid.as_str());
        assert_eq!(
            (state["source"].as_str(), state["muted"].as_bool()),
            (Some("microphone"), Some(true))
        );
        assert!(state.get("by").is_none());
    }
    assert!(row(&server, &m, &bob_pid).await.2, "mic_muted recorded");
    let clients = [alice, bob];
    tokio::time::sleep(Duration::from_millis(300)).await;
    let audio_before = clients[0].packets_from(&mic, "bob", "mic-bob");
    let video_before = clients[0].packets_from(&cam, "bob", "cam-bob");
    let video_more = [(0, cam.clone(), "bob".to_owned(), "cam-bob".to_owned())];
    assert!(exchange(&clients, &sending, &video_more, video_before + 25)
        .await
        .is_empty());
    let audio_after = clients[0].packets_from(&mic, "bob", "mic-bob");
    assert!(
        audio_after <= audio_before + 2,
        "muted audio kept flowing: {audio_before} → {audio_after}"
    );

    // Unmuted: audio flows again and the row says so.
    let [mut alice, mut bob] = clients;
    bob.ws
        .send(json!({"type": "mute", "source": "microphone", "muted": false}));
    let state = alice.ws.expect("media_state").await;
    assert_eq!(state["muted"], false);
    let _ = bob.ws.expect("media_state").await;
    assert!(!row(&server, &m, &bob_pid).await.2, "mic_muted cleared");
    let clients = [alice, bob];
    let audio_more = [(0, mic.clone(), "bob".to_owned(), "mic-bob".to_owned())];
    assert!(exchange(&clients, &sending, &audio_more, audio_after + 20)
        .await
        .is_empty());

    // The host mutes bob's camera (moderation): marked by alice, video stops.
    let [alice, mut bob] = clients;
    alice.ws.send(json!({"type": "moderate", "action": "mute", "participant_id": bob_pid, "source": "camera"}));
    let state = bob
        .ws
        .expect_where("media_state", |m| m["source"] == "camera")
        .await;
    assert_eq!(state["muted"], true);
    assert_eq!(state["by"], alice.participant_id().as_str());
    // A participant may not mute the host.
    bob.ws.send(json!({"type": "moderate", "action": "mute", "participant_id": alice.participant_id(), "source": "microphone", "ref": "m"}));
    assert_eq!(
        bob.ws.expect_where("error", |m| m["ref"] == "m").await["code"],
        "forbidden"
    );
    let clients = [alice, bob];
    tokio::time::sleep(Duration::from_millis(300)).await;
    let video_before = clients[0].packets_from(&cam, "bob", "cam-bob");
    let audio_before = clients[0].packets_from(&mic, "bob", "mic-bob");
    let audio_more = [(0, mic.clone(), "bob".to_owned(), "mic-bob".to_owned())];
    assert!(exchange(&clients, &sending, &audio_more, audio_before + 25)
        .await
        .is_empty());
    let video_after = clients[0].packets_from(&cam, "bob", "cam-bob");
    assert!(
        video_after <= video_before + 2,
        "moderator-muted video kept flowing: {video_before} → {video_after}"
    );
    for client in &clients {
        client.close().await;
    }
}

#[tokio::test]
async fn hands_chat_and_typing() {
    let server = TestServer::start_with(|c| {
        c.chat_max_length = 20;
        c.ws_chat_per_minute = 3;
        c.ws_typing_interval = Duration::from_secs(5);
    })
    .await;
    let (host, bob) = (server.user("alice").await, server.user("bob").await);
    let m = meeting(&server, &host, json!({})).await;
    let (mut alice, _) = Ws::join(&server, token(&seat(&server, &m, &host).await)).await;
    let bob_seat = seat(&server, &m, &bob).await;
    let (mut bob_ws, _) = Ws::join(&server, token(&bob_seat)).await;
    let bob_pid = id(&bob_seat, "participant_id");

    bob_ws.send(json!({"type": "raise_hand"}));
    let update = alice.expect("participant_updated").await;
    assert_eq!(update["participant"]["participant_id"], bob_pid.as_str());
    assert_eq!(update["participant"]["hand_raised"], true);
    bob_ws.send(json!({"type": "lower_hand"}));
    let update = alice.expect("participant_updated").await;
    assert_eq!(update["participant"]["hand_raised"], false);

    // Chat: stored like REST chat, broadcast to everyone with the sender.
    bob_ws.send(json!({"type": "chat", "text": "  hello all "}));
    for ws in [&mut alice, &mut bob_ws] {
        let message = ws.expect("chat_message").await;
        assert_eq!(message["text"], "hello all");
        assert_eq!(message["participant_id"], bob_pid.as_str());
        assert_eq!(message["sender_name"], "bob");
        assert_eq!(message["user_id"], bob.id.as_str());
    }
    let history = server
        .call(
            Method::GET,
            &format!("/meetings/{}/messages", m["id"].as_str().unwrap()),
            Some(&host.token),
            None,
        )
        .await;
    assert_eq!(history.0, StatusCode::OK);
    assert_eq!(history.1["items"][0]["text"], "hello all");
    assert_eq!(history.1["items"][0]["participant_id"], bob_pid.as_str());
    // Messages posted over REST reach the sockets too.
    let posted = server
        .call(
            Method::POST,
            &format!("/meetings/{}/messages", m["id"].as_str().unwrap()),
            Some(&host.token),
            Some(json!({"text": "from rest"})),
        )
        .await;
    assert_eq!(posted.0, StatusCode::CREATED, "{}", posted.1);
    assert_eq!(
        bob_ws
            .expect_where("chat_message", |m| m["text"] == "from rest")
            .await["id"],
        posted.1["id"]
    );
    // Empty, too long, and over the per-participant rate.
    bob_ws.send(json!({"type": "chat", "text": "   ", "ref": "empty"}));
    assert_eq!(
        bob_ws.expect_where("error", |m| m["ref"] == "empty").await["code"],
        "invalid"
    );
    bob_ws.send(json!({"type": "chat", "text": "x".repeat(21), "ref": "long"}));
    assert_eq!(
        bob_ws.expect_where("error", |m| m["ref"] == "long").await["code"],
        "invalid"
    );
    bob_ws.send(json!({"type": "chat", "text": "two"}));
    bob_ws.send(json!({"type": "chat", "text": "three"}));
    bob_ws.send(json!({"type": "chat", "text": "four", "ref": "four"}));
    assert_eq!(
        bob_ws.expect_where("error", |m| m["ref"] == "four").await["code"],
        "rate_limited"
    );
    let stored = server
        .server
        .state
        .store
        .count_messages(m["id"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(stored, 4, "hello, from rest, two, three");

    // Typing goes to the others, at most once per interval.
    bob_ws.send(json!({"type": "typing"}));
    bob_ws.send(json!({"type": "typing"}));
    let typing = alice.expect("typing").await;
    assert_eq!(
        (
            typing["participant_id"].as_str(),
            typing["active"].as_bool()
        ),
        (Some(bob_pid.as_str()), Some(true))
    );
    assert_eq!(
        alice
            .all_of("typing", Duration::from_millis(300))
            .await
            .len(),
        1
    );
    assert!(bob_ws.all_of("typing", Duration::ZERO).await.is_empty());
}

#[tokio::test]
async fn chat_follows_the_meeting_setting() {
    let server = TestServer::start().await;
    let host = server.user("alice").await;
    let m = meeting(&server, &host, json!({"chat": false})).await;
    let (mut alice, joined) = Ws::join(&server, token(&seat(&server, &m, &host).await)).await;
    assert_eq!(joined["permissions"]["chat"], false);
    alice.send(json!({"type": "chat", "text": "hi", "ref": "c"}));
    assert_eq!(
        alice.expect_where("error", |m| m["ref"] == "c").await["code"],
        "chat_disabled"
    );
    // The host turns chat on over REST: sockets see meeting_updated and may chat.
    let patched = server
        .call(
            Method::PATCH,
            &format!("/meetings/{}", m["id"].as_str().unwrap()),
            Some(&host.token),
            Some(json!({"settings": {"chat": true}})),
        )
        .await;
    assert_eq!(patched.0, StatusCode::OK, "{}", patched.1);
    let updated = alice.expect("meeting_updated").await;
    assert_eq!(updated["meeting"]["settings"]["chat"], true);
    alice.send(json!({"type": "chat", "text": "now"}));
    assert_eq!(alice.expect("chat_message").await["text"], "now");
}

#[tokio::test]
async fn kick_with_ban_closes_the_socket_and_refuses_rejoining() {
    let server = TestServer::start().await;
    let (host, bob, carol) = (
        server.user("alice").await,
        server.user("bob").await,
        server.user("carol").await,
    );
    let m = meeting(&server, &host, json!({})).await;
    let (mut alice, _) = Ws::join(&server, token(&seat(&server, &m, &host).await)).await;
    let bob_seat = seat(&server, &m, &bob).await;
    let (mut bob_ws, _) = Ws::join(&server, token(&bob_seat)).await;
    let carol_seat = seat(&server, &m, &carol).await;
    let (mut carol_ws, _) = Ws::join(&server, token(&carol_seat)).await;
    let (bob_pid, carol_pid) = (
        id(&bob_seat, "participant_id"),
        id(&carol_seat, "participant_id"),
    );
    assert_eq!(
        server.wait_metric("convene_peers", 3.0, WAIT).await,
        3.0,
        "a subscriber connection per participant"
    );

    // A participant may not kick.
    carol_ws
        .send(json!({"type": "moderate", "action": "kick", "participant_id": bob_pid, "ref": "k"}));
    assert_eq!(
        carol_ws.expect_where("error", |m| m["ref"] == "k").await["code"],
        "forbidden"
    );
    // Unknown participant, missing participant id.
    alice.send(
        json!({"type": "moderate", "action": "kick", "participant_id": "nobody", "ref": "n"}),
    );
    assert_eq!(
        alice.expect_where("error", |m| m["ref"] == "n").await["code"],
        "participant_not_found"
    );
    alice.send(json!({"type": "moderate", "action": "kick", "ref": "i"}));
    assert_eq!(
        alice.expect_where("error", |m| m["ref"] == "i").await["code"],
        "invalid"
    );

    // The host kicks bob with a ban.
    alice.send(
        json!({"type": "moderate", "action": "kick", "participant_id": bob_pid, "ban": true}),
    );
    let kicked = bob_ws.expect("kicked").await;
    assert_eq!(kicked["banned"], true);
    assert_eq!(kicked["by"], alice_pid(&alice));
    assert_eq!(bob_ws.closed().await.0, 4003);
    for ws in [&mut alice, &mut carol_ws] {
        let left = ws.expect("participant_left").await;
        assert_eq!(
            (left["participant_id"].as_str(), left["reason"].as_str()),
            (Some(bob_pid.as_str()), Some("kicked"))
        );
    }
    assert_eq!(row(&server, &m, &bob_pid).await.0, "kicked");
    assert_eq!(
        server.wait_metric("convene_peers", 2.0, WAIT).await,
        2.0,
        "bob's media is gone"
    );
    // Banned: the REST join and the old token are both refused.
    let again = join_rest(&server, &m, Some(&bob), json!({})).await;
    common::api::assert_error(&again, StatusCode::FORBIDDEN, "banned");
    let mut ws = Ws::connect(&server, &format!("?token={}", token(&bob_seat)))
        .await
        .unwrap();
    ws.send(json!({"type": "join"}));
    assert_eq!(ws.expect("error").await["code"], "banned");
    assert_eq!(ws.closed().await.0, 4003);

    // A kick over REST reaches the socket the same way (no ban: carol may come back).
    let path = format!(
        "/meetings/{}/participants/{carol_pid}/kick",
        m["id"].as_str().unwrap()
    );
    let reply = server
        .call(Method::POST, &path, Some(&host.token), Some(json!({})))
        .await;
    assert_eq!(reply.0, StatusCode::OK, "{}", reply.1);
    assert_eq!(carol_ws.expect("kicked").await["banned"], false);
    assert_eq!(carol_ws.closed().await.0, 4003);
    assert_eq!(
        alice.expect("participant_left").await["participant_id"],
        carol_pid.as_str()
    );
    let back = join_rest(&server, &m, Some(&carol), json!({})).await;
    assert_eq!(back.0, StatusCode::OK, "{}", back.1);
}

fn alice_pid(ws: &Ws) -> String {
    let log = ws.log.lock().unwrap();
    let joined = log.iter().find(|m| m["type"] == "joined").expect("joined");
    id(&joined["you"], "participant_id")
}

#[tokio::test]
async fn roles_change_permissions() {
    let server = TestServer::start().await;
    let (host, bob) = (server.user("alice").await, server.user("bob").await);
    let m = meeting(&server, &host, json!({})).await;
    let (mut alice, _) = Ws::join(&server, token(&seat(&server, &m, &host).await)).await;
    let bob_seat = seat(&server, &m, &bob).await;
    let (mut bob_ws, _) = Ws::join(&server, token(&bob_seat)).await;
    let guest = join_rest(&server, &m, None, json!({"display_name": "Gus"})).await;
    assert_eq!(guest.0, StatusCode::OK, "{}", guest.1);
    let (mut gus, joined) = Ws::join(&server, token(&guest.1)).await;
    let (bob_pid, gus_pid) = (
        id(&bob_seat, "participant_id"),
        id(&guest.1, "participant_id"),
    );
    // Guests may not share their screen.
    assert_eq!(
        joined["permissions"]["publish_sources"],
        json!(["camera", "microphone"])
    );
    gus.send(json!({"type": "publish", "source": "screen", "track_id": "s", "ref": "s"}));
    assert_eq!(
        gus.expect_where("error", |m| m["ref"] == "s").await["code"],
        "forbidden_source"
    );

    // Bob may not change roles or mute; the host makes him a moderator.
    bob_ws.send(json!({"type": "moderate", "action": "set_role", "participant_id": gus_pid, "role": "participant", "ref": "r"}));
    assert_eq!(
        bob_ws.expect_where("error", |m| m["ref"] == "r").await["code"],
        "forbidden"
    );
    alice.send(json!({"type": "moderate", "action": "set_role", "participant_id": bob_pid, "role": "host", "ref": "h"}));
    assert_eq!(
        alice.expect_where("error", |m| m["ref"] == "h").await["code"],
        "invalid"
    );
    alice.send(json!({"type": "moderate", "action": "set_role", "participant_id": bob_pid, "role": "moderator"}));
    for ws in [&mut alice, &mut bob_ws, &mut gus] {
        let update = ws
            .expect_where("participant_updated", |m| {
                m["participant"]["participant_id"] == bob_pid.as_str()
            })
            .await;
        assert_eq!(update["participant"]["role"], "moderator");
    }
    // Now bob mutes the guest.
    bob_ws.send(json!({"type": "moderate", "action": "mute", "participant_id": gus_pid, "source": "microphone"}));
    let state = gus.expect("media_state").await;
    assert_eq!(state["by"], bob_pid.as_str());
    // The guest, promoted to participant over REST, may share the screen.
    let path = format!(
        "/meetings/{}/participants/{gus_pid}",
        m["id"].as_str().unwrap()
    );
    let reply = server
        .call(
            Method::PATCH,
            &path,
            Some(&host.token),
            Some(json!({"role": "participant"})),
        )
        .await;
    assert_eq!(reply.0, StatusCode::OK, "{}", reply.1);
    let update = gus
        .expect_where("participant_updated", |m| {
            m["participant"]["participant_id"] == gus_pid.as_str()
        })
        .await;
    assert_eq!(update["participant"]["role"], "participant");
    gus.send(json!({"type": "publish", "source": "screen", "track_id": "s", "ref": "s2"}));
    assert!(gus
        .wait_where("error", Duration::from_millis(500), |m| m["ref"] == "s2")
        .await
        .is_none());
}

#[tokio::test]
async fn ending_the_meeting_disconnects_everyone() {
    let server = TestServer::start().await;
    let (host, bob) = (server.user("alice").await, server.user("bob").await);
    let m = meeting(&server, &host, json!({"waiting_room": true})).await;
    let (mut alice, _) = Ws::join(&server, token(&seat(&server, &m, &host).await)).await;
    // Bob waits; an admitted guest joins.
    let waiting = join_rest(&server, &m, Some(&bob), json!({})).await;
    assert_eq!(waiting.0, StatusCode::ACCEPTED);
    let mut bob_ws = Ws::connect(
        &server,
        &format!("?wait_token={}", waiting.1["wait_token"].as_str().unwrap()),
    )
    .await
    .unwrap();
    bob_ws.expect("waiting").await;
    let guest = join_rest(&server, &m, None, json!({"display_name": "Gus"})).await;
    let gus_pid = id(&guest.1, "participant_id");
    // The host hears of each arrival in the waiting room.
    assert_eq!(
        alice.expect("waiting").await["participant"]["participant_id"],
        waiting.1["participant_id"]
    );
    assert_eq!(
        alice.expect("waiting").await["participant"]["participant_id"],
        gus_pid.as_str()
    );
    let mut admit = server
        .call(
            Method::POST,
            &format!(
                "/meetings/{}/waiting/{gus_pid}/admit",
                m["id"].as_str().unwrap()
            ),
            Some(&host.token),
            None,
        )
        .await;
    assert_eq!(admit.0, StatusCode::OK, "{}", admit.1);
    admit = join_rest(
        &server,
        &m,
        None,
        json!({"wait_token": guest.1["wait_token"]}),
    )
    .await;
    let (mut gus, _) = Ws::join(&server, token(&admit.1)).await;
    // Only the host may end it.
    gus.send(json!({"type": "moderate", "action": "end_meeting", "ref": "e"}));
    assert_eq!(
        gus.expect_where("error", |m| m["ref"] == "e").await["code"],
        "forbidden"
    );

    alice.send(json!({"type": "moderate", "action": "end_meeting"}));
    for ws in [&mut alice, &mut gus, &mut bob_ws] {
        let ended = ws.expect("meeting_ended").await;
        assert_eq!(ws.closed().await.0, 4004, "{ended}");
    }
    let read = server
        .call(
            Method::GET,
            &format!("/meetings/{}", m["id"].as_str().unwrap()),
            Some(&host.token),
            None,
        )
        .await;
    assert_eq!(read.1["status"], "ended");
    assert_eq!(row(&server, &m, &gus_pid).await.0, "left");
    assert_eq!(server.wait_metric("convene_peers", 0.0, WAIT).await, 0.0);
    let late = join_rest(&server, &m, None, json!({"display_name": "Late"})).await;
    assert_eq!(late.0, StatusCode::GONE);

    // Ending over REST tells the sockets the same way.
    let m = meeting(&server, &host, json!({})).await;
    let (mut alice, _) = Ws::join(&server, token(&seat(&server, &m, &host).await)).await;
    let reply = server
        .call(
            Method::POST,
            &format!("/meetings/{}/end", m["id"].as_str().unwrap()),
            Some(&host.token),
            None,
        )
        .await;
    assert_eq!(reply.0, StatusCode::OK, "{}", reply.1);
    let ended = alice.expect("meeting_ended").await;
    assert_eq!(ended["by"], alice_pid(&alice), "the host had a seat");
    assert_eq!(alice.closed().await.0, 4004);
}

#[tokio::test]
async fn waiting_room_sockets_are_admitted_or_denied() {
    let server = TestServer::start().await;
    let host = server.user("alice").await;
    let m = meeting(&server, &host, json!({"waiting_room": true})).await;
    let gus = join_rest(&server, &m, None, json!({"display_name": "Gus"})).await;
    assert_eq!(gus.0, StatusCode::ACCEPTED, "{}", gus.1);
    let gus_pid = id(&gus.1, "participant_id");
    let (mut alice, joined) = Ws::join(&server, token(&seat(&server, &m, &host).await)).await;
    assert_eq!(
        joined["waiting"][0]["participant_id"],
        gus_pid.as_str(),
        "{joined}"
    );

    let mut gus_ws = Ws::connect(
        &server,
        &format!("?wait_token={}", gus.1["wait_token"].as_str().unwrap()),
    )
    .await
    .unwrap();
    let waiting = gus_ws.expect("waiting").await;
    assert_eq!(waiting["participant"]["display_name"], "Gus");
    // A waiting socket can do nothing else.
    gus_ws.send(json!({"type": "chat", "text": "let me in", "ref": "c"}));
    assert_eq!(
        gus_ws.expect_where("error", |m| m["ref"] == "c").await["code"],
        "not_admitted"
    );

    alice.send(json!({"type": "moderate", "action": "admit", "participant_id": gus_pid}));
    let admitted = gus_ws.expect("admitted").await;
    assert_eq!(admitted["participant_id"], gus_pid.as_str());
    assert_eq!(admitted["role"], "guest");
    assert!(admitted["join_token"].is_string());
    let told = alice.expect("admitted").await;
    assert_eq!(told["participant_id"], gus_pid.as_str());
    assert!(
        told.get("join_token").is_none(),
        "the token is the guest's alone"
    );
    // The admitted socket joins as it is, with the token it was given.
    gus_ws.send(json!({"type": "join"}));
    let joined = gus_ws.expect("joined").await;
    assert_eq!(joined["you"]["participant_id"], gus_pid.as_str());
    assert_eq!(
        alice.expect("participant_joined").await["participant"]["participant_id"],
        gus_pid.as_str()
    );
    // Admitting again is a conflict.
    alice.send(
        json!({"type": "moderate", "action": "admit", "participant_id": gus_pid, "ref": "a"}),
    );
    assert_eq!(
        alice.expect_where("error", |m| m["ref"] == "a").await["code"],
        "not_waiting"
    );

    // Denied over REST: the socket is told and closed; the wait token no longer works.
    let dora = join_rest(&server, &m, None, json!({"display_name": "Dora"})).await;
    let dora_pid = id(&dora.1, "participant_id");
    // Moderators hear of an arrival in the waiting room at once (not of polls of it).
    let arrival = alice.expect("waiting").await;
    assert_eq!(arrival["participant"]["participant_id"], dora_pid.as_str());
    assert_eq!(arrival["participant"]["display_name"], "Dora");
    let poll = join_rest(
        &server,
        &m,
        None,
        json!({"wait_token": dora.1["wait_token"]}),
    )
    .await;
    assert_eq!(poll.0, StatusCode::ACCEPTED);
    let mut dora_ws = Ws::connect(
        &server,
        &format!("?wait_token={}", dora.1["wait_token"].as_str().unwrap()),
    )
    .await
    .unwrap();
    dora_ws.expect("waiting").await;
    let reply = server
        .call(
            Method::POST,
            &format!(
                "/meetings/{}/waiting/{dora_pid}/deny",
                m["id"].as_str().unwrap()
            ),
            Some(&host.token),
            None,
        )
        .await;
    assert_eq!(reply.0, StatusCode::OK, "{}", reply.1);
    assert_eq!(
        dora_ws.expect("denied").await["participant_id"],
        dora_pid.as_str()
    );
    assert_eq!(dora_ws.closed().await.0, 4005);
    assert_eq!(
        alice.expect("denied").await["participant_id"],
        dora_pid.as_str()
    );
    assert_eq!(
        alice.all_of("waiting", Duration::ZERO).await.len(),
        1,
        "polls are not arrivals"
    );
    let claim = join_rest(
        &server,
        &m,
        None,
        json!({"wait_token": dora.1["wait_token"]}),
    )
    .await;
    common::api::assert_error(&claim, StatusCode::FORBIDDEN, "denied");
    // A decided wait token connects only to be told the decision.
    let mut late = Ws::connect(
        &server,
        &format!("?wait_token={}", dora.1["wait_token"].as_str().unwrap()),
    )
    .await
    .unwrap();
    late.expect("denied").await;
    assert_eq!(late.closed().await.0, 4005);
}

#[tokio::test]
async fn a_second_join_takes_over_the_session() {
    let server = TestServer::start().await;
    let (host, bob) = (server.user("alice").await, server.user("bob").await);
    let m = meeting(&server, &host, json!({})).await;
    let (mut alice, _) = Ws::join(&server, token(&seat(&server, &m, &host).await)).await;
    let bob_seat = seat(&server, &m, &bob).await;
    let bob_pid = id(&bob_seat, "participant_id");
    let (first, _) = Ws::join(&server, token(&bob_seat)).await;
    alice.expect("participant_joined").await;

    // The same token again, without resume: the first socket is closed as replaced.
    let (_second, joined) = Ws::join(&server, token(&bob_seat)).await;
    assert_eq!(joined["resumed"], false);
    assert_eq!(joined["you"]["participant_id"], bob_pid.as_str());
    assert_eq!(first.closed().await.0, 4001);
    let left = alice.expect("participant_left").await;
    assert_eq!(left["reason"], "replaced");
    alice.expect("participant_joined").await;
    assert_eq!(
        row(&server, &m, &bob_pid).await.0,
        "joined",
        "the seat is kept"
    );

    // Bob joins again over REST (a new seat) and connects with the new token.
    let newer = seat(&server, &m, &bob).await;
    let (_third, joined) = Ws::join(&server, token(&newer)).await;
    assert_eq!(joined["you"]["participant_id"], newer["participant_id"]);
    let left = alice.expect("participant_left").await;
    assert_eq!(left["participant_id"], bob_pid.as_str());
    let joined_again = alice.expect("participant_joined").await;
    assert_eq!(
        joined_again["participant"]["participant_id"],
        newer["participant_id"]
    );
    assert_eq!(
        server.wait_metric("convene_peers", 2.0, WAIT).await,
        2.0,
        "one subscriber each"
    );
}

#[tokio::test]
async fn a_dropped_socket_resumes_within_the_grace_period() {
    let server = TestServer::start_with(|c| c.ws_resume_grace = Duration::from_secs(2)).await;
    let (host, bob) = (server.user("alice").await, server.user("bob").await);
    let m = meeting(&server, &host, json!({})).await;
    let (mut alice, _) = Ws::join(&server, token(&seat(&server, &m, &host).await)).await;
    let bob_seat = seat(&server, &m, &bob).await;
    let bob_pid = id(&bob_seat, "participant_id");
    let (mut first, _) = Ws::join(&server, token(&bob_seat)).await;
    let offer = first.expect("offer").await;
    alice.expect("participant_joined").await;
    bob_ws_raise(&first);
    alice.expect("participant_updated").await;

    first.drop_connection();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut resumed = Ws::connect(&server, &format!("?token={}", token(&bob_seat)))
        .await
        .unwrap();
    resumed.send(json!({"type": "join", "resume": true}));
    let joined = resumed.expect("joined").await;
    assert_eq!(joined["resumed"], true);
    assert_eq!(joined["you"]["participant_id"], bob_pid.as_str());
    assert_eq!(
        joined["you"]["hand_raised"], true,
        "state survives the reconnect"
    );
    // The unanswered subscriber offer comes again.
    assert_eq!(resumed.expect("offer").await["sdp"], offer["sdp"]);
    // Nobody saw bob leave or join.
    assert!(alice
        .wait_where("participant_left", Duration::from_millis(2500), |_| true)
        .await
        .is_none());
    assert!(
        alice
            .all_of("participant_joined", Duration::ZERO)
            .await
            .len()
            == 1
    );

    // Dropped for longer than the grace period: gone for good.
    resumed.drop_connection();
    let left = alice.expect("participant_left").await;
    assert_eq!(
        (left["participant_id"].as_str(), left["reason"].as_str()),
        (Some(bob_pid.as_str()), Some("disconnected"))
    );
    wait_status(&server, &m, &bob_pid, "left").await;
    let mut late = Ws::connect(&server, &format!("?token={}", token(&bob_seat)))
        .await
        .unwrap();
    late.send(json!({"type": "join", "resume": true}));
    assert_eq!(late.expect("error").await["code"], "session_gone");
    assert_eq!(late.closed().await.0, 4010);
}

fn bob_ws_raise(ws: &Ws) {
    ws.send(json!({"type": "raise_hand"}));
}

#[tokio::test]
async fn offers_are_checked_against_declared_sources() {
    let server = TestServer::start_with(|c| c.ws_max_declared_tracks = 2).await;
    let (host, bob, carol) = (
        server.user("alice").await,
        server.user("bob").await,
        server.user("carol").await,
    );
    let m = meeting(&server, &host, json!({})).await;
    let (_alice, _) = Ws::join(&server, token(&seat(&server, &m, &host).await)).await;
    let mut bob_client =
        MediaClient::join(&server, "bob", token(&seat(&server, &m, &bob).await), false).await;
    bob_client
        .ws
        .send(json!({"type": "publish", "source": "screen", "track_id": "scr-bob", "ref": "p"}));
    assert!(bob_client
        .ws
        .wait_where("error", Duration::from_millis(300), |m| m["ref"] == "p")
        .await
        .is_none());
    // Declarations are bounded (re-declaring a known track is not a new one).
    for (track, reference) in [("cam-bob", "c1"), ("scr-bob", "again"), ("x", "x")] {
        bob_client.ws.send(
            json!({"type": "publish", "source": "camera", "track_id": track, "ref": reference}),
        );
    }
    let error = bob_client.ws.expect("error").await;
    assert_eq!(
        (error["code"].as_str(), error["ref"].as_str()),
        (Some("too_many_tracks"), Some("x"))
    );
    bob_client
        .ws
        .send(json!({"type": "publish", "source": "screen", "track_id": "scr-bob"}));
    // The host turns screen sharing off: the declared screen track may no longer be offered.
    let patched = server
        .call(
            Method::PATCH,
            &format!("/meetings/{}", m["id"].as_str().unwrap()),
            Some(&host.token),
            Some(json!({"settings": {"screen_share": false}})),
        )
        .await;
    assert_eq!(patched.0, StatusCode::OK, "{}", patched.1);
    bob_client.ws.expect("meeting_updated").await;
    let refused = bob_client.offer_refused("screen", "scr-bob").await;
    assert_eq!(refused["code"], "forbidden_source", "{refused}");
    assert_eq!(
        server.metric("convene_published_tracks").await,
        0.0,
        "the offer never reached the SFU"
    );

    // A track declared as audio but offered as video is refused too.
    let mut carol_client = MediaClient::join(
        &server,
        "carol",
        token(&seat(&server, &m, &carol).await),
        false,
    )
    .await;
    carol_client
        .ws
        .send(json!({"type": "publish", "source": "microphone", "track_id": "v1"}));
    let refused = carol_client.offer_refused("camera", "v1").await;
    assert_eq!(refused["code"], "bad_publish", "{refused}");
    bob_client.close().await;
    carol_client.close().await;
}

// ---- step 4: the meeting's lifecycle -------------------------------------------------------

/// `GET /meetings/{id}` as `user`.
async fn read_meeting(server: &TestServer, user: &TestUser, meeting: &Value) -> Value {
    let path = format!("/meetings/{}", meeting["id"].as_str().unwrap());
    let reply = server
        .call(Method::GET, &path, Some(&user.token), None)
        .await;
    assert_eq!(reply.0, StatusCode::OK, "{}", reply.1);
    reply.1
}

/// Polls the meeting until its status is `status` or `within` passed; the last read.
async fn wait_meeting_status(
    server: &TestServer,
    user: &TestUser,
    meeting: &Value,
    status: &str,
    within: Duration,
) -> Value {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let read = read_meeting(server, user, meeting).await;
        if read["status"] == status || tokio::time::Instant::now() > deadline {
            return read;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn an_empty_meeting_ends_after_the_timeout() {
    let server = TestServer::start_with(|c| c.meeting_empty_timeout = Duration::from_secs(1)).await;
    let (host, bob) = (server.user("alice").await, server.user("bob").await);
    let m = meeting(&server, &host, json!({"waiting_room": true})).await;
    let (mut alice, _) = Ws::join(&server, token(&seat(&server, &m, &host).await)).await;
    assert_eq!(read_meeting(&server, &host, &m).await["status"], "live");
    // Bob waits in the waiting room, with a socket.
    let waiting = join_rest(&server, &m, Some(&bob), json!({})).await;
    assert_eq!(waiting.0, StatusCode::ACCEPTED, "{}", waiting.1);
    let bob_pid = id(&waiting.1, "participant_id");
    let mut bob_ws = Ws::connect(
        &server,
        &format!("?wait_token={}", waiting.1["wait_token"].as_str().unwrap()),
    )
    .await
    .unwrap();
    bob_ws.expect("waiting").await;
    alice.expect("waiting").await;

    // The host, the only participant connected, leaves: the meeting is empty.
    alice.send(json!({"type": "leave"}));
    assert_eq!(alice.closed().await.0, 1000);
    let emptied = tokio::time::Instant::now();
    assert_eq!(
        read_meeting(&server, &host, &m).await["status"],
        "live",
        "not ended at once"
    );
    let read = wait_meeting_status(&server, &host, &m, "ended", Duration::from_secs(3)).await;
    assert_eq!(read["status"], "ended", "{read}");
    assert!(read["ended_at"].is_string(), "{read}");
    assert!(
        emptied.elapsed() >= Duration::from_millis(800),
        "ended after the timeout, not before"
    );
    // Ended as the host's end does: the waiting socket is told, every seat is left.
    let ended = bob_ws.expect("meeting_ended").await;
    assert!(ended["by"].is_null(), "{ended}");
    assert_eq!(bob_ws.closed().await.0, 4004);
    assert_eq!(row(&server, &m, &bob_pid).await.0, "left");
    let late = join_rest(&server, &m, None, json!({"display_name": "Late"})).await;
    assert_eq!(late.0, StatusCode::GONE, "{}", late.1);

    // A kick over REST that empties a meeting starts the countdown as well, and the media of
    // the meeting is gone when it ends.
    let m = meeting(&server, &host, json!({})).await;
    let bob_seat = seat(&server, &m, &bob).await;
    let mut bob_client = MediaClient::join(&server, "bob", token(&bob_seat), false).await;
    bob_client.wait_subscriber_connected().await;
    assert_eq!(server.wait_metric("convene_peers", 1.0, WAIT).await, 1.0);
    let path = format!(
        "/meetings/{}/participants/{}/kick",
        m["id"].as_str().unwrap(),
        id(&bob_seat, "participant_id")
    );
    let reply = server
        .call(Method::POST, &path, Some(&host.token), Some(json!({})))
        .await;
    assert_eq!(reply.0, StatusCode::OK, "{}", reply.1);
    assert_eq!(bob_client.ws.expect("kicked").await["banned"], false);
    let read = wait_meeting_status(&server, &host, &m, "ended", Duration::from_secs(3)).await;
    assert_eq!(read["status"], "ended", "{read}");
    assert_eq!(server.wait_metric("convene_peers", 0.0, WAIT).await, 0.0);
    bob_client.close().await;
}

#[tokio::test]
async fn a_rejoin_within_the_timeout_keeps_the_meeting_live() {
    let server = TestServer::start_with(|c| c.meeting_empty_timeout = Duration::from_secs(1)).await;
    let (host, bob) = (server.user("alice").await, server.user("bob").await);
    let m = meeting(&server, &host, json!({})).await;
    let (bob_ws, _) = Ws::join(&server, token(&seat(&server, &m, &bob).await)).await;
    bob_ws.send(json!({"type": "leave"}));
    assert_eq!(bob_ws.closed().await.0, 1000);
    let emptied = tokio::time::Instant::now();

    // Bob is back before the timeout (a new seat, a new socket): the countdown stops.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (mut again, _) = Ws::join(&server, token(&seat(&server, &m, &bob).await)).await;
    tokio::time::sleep_until(emptied + Duration::from_millis(2500)).await;
    assert_eq!(read_meeting(&server, &host, &m).await["status"], "live");
    again.send(json!({"type": "ping", "ref": "alive"}));
    assert_eq!(
        again.expect("pong").await["ref"],
        "alive",
        "still connected"
    );
    assert!(!again.is_closed());
}

#[tokio::test]
async fn a_rest_join_during_the_countdown_postpones_the_end() {
    let timeout = Duration::from_secs(2);
    let server = TestServer::start_with(|c| c.meeting_empty_timeout = timeout).await;
    let (host, bob) = (server.user("alice").await, server.user("bob").await);
    let m = meeting(&server, &host, json!({})).await;
    let (bob_ws, _) = Ws::join(&server, token(&seat(&server, &m, &bob).await)).await;
    bob_ws.send(json!({"type": "leave"}));
    assert_eq!(bob_ws.closed().await.0, 1000);
    let emptied = tokio::time::Instant::now();

    // The host joins over REST halfway through but never connects: the meeting waits a full
    // timeout from that join for the socket, then ends (REST seats are no presence).
    tokio::time::sleep(timeout / 2).await;
    let host_seat = seat(&server, &m, &host).await;
    tokio::time::sleep_until(emptied + timeout + Duration::from_millis(500)).await;
    assert_eq!(
        read_meeting(&server, &host, &m).await["status"],
        "live",
        "the fresh seat gets time to connect"
    );
    let read = wait_meeting_status(&server, &host, &m, "ended", Duration::from_secs(4)).await;
    assert_eq!(read["status"], "ended", "{read}");
    assert_eq!(
        row(&server, &m, &id(&host_seat, "participant_id")).await.0,
        "left"
    );
}

#[tokio::test]
async fn a_zero_empty_timeout_keeps_empty_meetings_live() {
    let server = TestServer::start_with(|c| c.meeting_empty_timeout = Duration::ZERO).await;
    let (host, bob) = (server.user("alice").await, server.user("bob").await);
    let m = meeting(&server, &host, json!({})).await;
    let (bob_ws, _) = Ws::join(&server, token(&seat(&server, &m, &bob).await)).await;
    bob_ws.send(json!({"type": "leave"}));
    assert_eq!(bob_ws.closed().await.0, 1000);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(read_meeting(&server, &host, &m).await["status"], "live");
}

#[tokio::test]
async fn joined_sockets_get_fresh_tokens_for_their_seat() {
    let server = TestServer::start_with(|c| c.join_token_ttl = Duration::from_secs(4)).await;
    let host = server.user("alice").await;
    let m = meeting(&server, &host, json!({})).await;
    let alice_seat = seat(&server, &m, &host).await;
    let (mut alice, _) = Ws::join(&server, token(&alice_seat)).await;
    let refreshed = alice.expect("token_refreshed").await;
    let fresh = refreshed["join_token"].as_str().unwrap();
    assert_ne!(fresh, token(&alice_seat));
    let claims = server
        .server
        .state
        .keys
        .verify(fresh)
        .expect("a valid token");
    let issued = server.server.state.keys.verify(token(&alice_seat)).unwrap();
    assert_eq!(
        claims.pid.as_deref(),
        Some(id(&alice_seat, "participant_id").as_str())
    );
    assert_eq!((claims.sub, claims.room), (issued.sub, issued.room));
    assert!(claims.exp >= issued.exp, "a later expiry");
    assert!(refreshed["expires_at"].as_str().unwrap().ends_with('Z'));
}

#[tokio::test]
async fn chat_with_control_characters_is_refused() {
    let server = TestServer::start().await;
    let host = server.user("alice").await;
    let m = meeting(&server, &host, json!({})).await;
    let (mut alice, _) = Ws::join(&server, token(&seat(&server, &m, &host).await)).await;
    alice.send(json!({"type": "chat", "text": "nul\u{0}byte", "ref": "1"}));
    let error = alice.expect("error").await;
    assert_eq!(
        (error["code"].as_str(), error["ref"].as_str()),
        (Some("invalid"), Some("1"))
    );
    alice.send(json!({"type": "chat", "text": "two\nlines"}));
    assert_eq!(alice.expect("chat_message").await["text"], "two\nlines");
}

#[tokio::test]
async fn websockets_are_capped_per_address_and_overall() {
    let server = TestServer::start_with(|c| {
        c.ws_max_connections_per_address = 2;
        c.ws_max_connections = 3;
    })
    .await;
    let first = Ws::connect(&server, "").await.expect("first socket");
    let second = Ws::connect(&server, "").await.expect("second socket");
    assert_eq!(
        Ws::connect(&server, "").await.err(),
        Some(429),
        "per address"
    );
    first.drop_connection();
    // The slot comes back once the server sees the socket go.
    let deadline = tokio::time::Instant::now() + WAIT;
    let third = loop {
        match Ws::connect(&server, "").await {
            Ok(ws) => break ws,
            Err(status) => {
                assert_eq!(status, 429);
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the slot never came back"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let (open, addresses) = server.server.live.sockets.open_now();
    assert_eq!((open, addresses), (2, 1));
    drop((second, third));
}

#[tokio::test]
async fn a_client_close_is_answered_with_a_close() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    use tokio_tungstenite::tungstenite::Message;
    let server = TestServer::start().await;
    let url = format!("ws://{}/ws", server.server.http_addr);
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    socket
        .send(Message::Close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        })))
        .await
        .unwrap();
    let answer = tokio::time::timeout(WAIT, socket.next())
        .await
        .expect("the server answers the close");
    match answer {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(frame.code, CloseCode::Normal),
        other => panic!("expected a close frame, got {other:?}"),
    }
}

//! Cascading (`cluster_cascade`): one meeting over three nodes on loopback sharing Redis (the
//! test's own), the database (the CI's PostgreSQL with `DATABASE_URL`, else one SQLite file)
//! and the server secret. Each participant connects to a different node and stays there; the
//! publisher's node relays to the others the tracks their participants receive, and only those.
//! (Publishers on several nodes at once are not covered yet: see docs/cluster.md.)
mod common;
#[path = "signaling/ws_client.rs"]
mod ws_client;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::client::{Kind, WhepSubscriber, WhipPublisher};
use common::redis::Shared;
use common::TestServer;
use serde_json::{json, Value};
use ws_client::MediaClient;

async fn three_cascading_nodes(shared: &Shared) -> [TestServer; 3] {
    let cascading = |c: &mut convene::config::Config| {
        c.cluster_cascade = true;
        c.cluster_cascade_sync = Duration::from_millis(100);
    };
    let a = shared.node("node-a", cascading).await;
    let b = shared.node("node-b", cascading).await;
    let c = shared.node("node-c", cascading).await;
    let cluster = a.server.state.cluster.clone().expect("cluster mode");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while cluster.nodes().await.map(|n| n.len()).unwrap_or(0) < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "3 nodes never registered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    [a, b, c]
}

/// Polls `check` until it holds; fails the test, saying `what` did not happen, after `within`.
async fn until(within: Duration, what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "not done: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A participant connected to `node` (REST join there, then its socket there).
async fn participant(node: &TestServer, meeting: &Value, name: &str, manual: bool) -> MediaClient {
    let user = node.user(name).await;
    let answer = node.join_meeting(meeting, Some(&user)).await;
    let token = answer["join_token"].as_str().unwrap();
    let join = if manual {
        json!({"type": "join", "auto_subscribe": false})
    } else {
        json!({"type": "join"})
    };
    MediaClient::join_sending(node.server.http_addr, name, token, false, join).await
}

/// The track ids `client` was told of, by (participant id, source): from `joined`,
/// `participant_joined` and `track_published`, less `track_unpublished`.
fn tracks_known(client: &MediaClient) -> HashMap<(String, String), String> {
    let mut known = HashMap::new();
    let add = |known: &mut HashMap<(String, String), String>, participant: &Value| {
        for track in participant["tracks"].as_array().into_iter().flatten() {
            known.insert(
                (
                    participant["participant_id"].as_str().unwrap().to_owned(),
                    track["source"].as_str().unwrap().to_owned(),
                ),
                track["track_id"].as_str().unwrap().to_owned(),
            );
        }
    };
    for participant in client.joined["participants"]
        .as_array()
        .into_iter()
        .flatten()
    {
        add(&mut known, participant);
    }
    for message in client.ws.messages() {
        match message["type"].as_str() {
            Some("participant_joined") | Some("participant_updated") => {
                add(&mut known, &message["participant"])
            }
            Some("track_published") => {
                known.insert(
                    (
                        message["participant_id"].as_str().unwrap().to_owned(),
                        message["source"].as_str().unwrap().to_owned(),
                    ),
                    message["track_id"].as_str().unwrap().to_owned(),
                );
            }
            Some("track_unpublished") => {
                let gone = message["track_id"].as_str().unwrap();
                known.retain(|_, id| id != gone);
            }
            _ => {}
        }
    }
    known
}

/// Waits until `client` knows every one of `wanted` (participant id, source); their ids.
async fn wait_tracks(
    client: &MediaClient,
    wanted: &[(String, &str)],
) -> HashMap<(String, String), String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let known = tracks_known(client);
        if wanted
            .iter()
            .all(|(p, s)| known.contains_key(&(p.clone(), (*s).to_owned())))
        {
            return known;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} never learnt of {wanted:?}: knows {known:?}",
            client.name
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_meeting_over_three_nodes_relays_each_track_only_to_the_nodes_that_receive_it() {
    let shared = Shared::new().await;
    let [a, b, c] = three_cascading_nodes(&shared).await;
    let host = a.user("host").await;
    let meeting = a.open_meeting(&host).await;

    // A publisher on each node (each also receives the others), and a receiver on each node,
    // each connected where it is (no redirect). Both participants on C subscribe by hand: to
    // every camera and microphone, never to pa's screen share.
    let sa = participant(&a, &meeting, "sa", false).await;
    let sb = participant(&b, &meeting, "sb", false).await;
    let sc = participant(&c, &meeting, "sc", true).await;
    let mut pa = participant(&a, &meeting, "pa", false).await;
    let mut pb = participant(&b, &meeting, "pb", false).await;
    let mut pc = participant(&c, &meeting, "pc", true).await;
    pa.publish(&[
        ("microphone", "mic"),
        ("camera", "cam"),
        ("screen", "screen"),
    ])
    .await;
    pb.publish(&[("microphone", "mic"), ("camera", "cam")])
        .await;
    pc.publish(&[("microphone", "mic"), ("camera", "cam")])
        .await;
    for publisher in [&pa, &pb, &pc] {
        publisher.wait_publisher_connected().await;
    }
    let publishers = Arc::new([pa, pb, pc]);
    let sending = {
        let publishers = publishers.clone();
        tokio::spawn(async move {
            loop {
                publishers[0].send_round(&["mic", "cam", "screen"]).await;
                publishers[1].send_round(&["mic", "cam"]).await;
                publishers[2].send_round(&["mic", "cam"]).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let [pa, pb, pc] = &*publishers;
    let key = |(p, s): &(String, &str)| (p.clone(), (*s).to_owned());
    // (participant, source) of every camera and microphone, with their sender and its track.
    let mut media = Vec::new();
    for publisher in [pa, pb, pc] {
        for (source, sent) in [("microphone", "mic"), ("camera", "cam")] {
            media.push(((publisher.participant_id(), source), publisher, sent));
        }
    }
    let screen = (pa.participant_id(), "screen");
    let cameras_and_mics: Vec<(String, &str)> = media.iter().map(|(k, _, _)| k.clone()).collect();
    let mut everything = cameras_and_mics.clone();
    everything.push(screen.clone());
    for manual in [&sc, pc] {
        let known = wait_tracks(manual, &everything).await;
        for wanted in &cameras_and_mics {
            if wanted.0 != manual.participant_id() {
                manual
                    .ws
                    .send(json!({"type": "subscribe", "track_id": known[&key(wanted)]}));
            }
        }
    }

    // Every receiver gets every other publisher's camera and microphone, wherever both are.
    for receiver in [&sa, &sb, &sc, pa, pb, pc] {
        let others: Vec<(String, &str)> = cameras_and_mics
            .iter()
            .filter(|(p, _)| *p != receiver.participant_id())
            .cloned()
            .collect();
        let known = wait_tracks(receiver, &others).await;
        for (wanted, publisher, sent) in &media {
            if wanted.0 == receiver.participant_id() {
                continue;
            }
            let track = &known[&key(wanted)];
            let got = receiver
                .wait_packets(track, &publisher.name, sent, 20, Duration::from_secs(20))
                .await;
            assert!(
                got >= 20,
                "{} got {got} packets of {}'s {} ({track})",
                receiver.name,
                publisher.name,
                wanted.1
            );
        }
    }
    // The screen share reaches the receivers on A and B (automatic subscriptions)...
    for receiver in [&sa, &sb, pb] {
        let known = wait_tracks(receiver, std::slice::from_ref(&screen)).await;
        let track = &known[&key(&screen)];
        let got = receiver
            .wait_packets(track, "pa", "screen", 20, Duration::from_secs(20))
            .await;
        assert!(
            got >= 20,
            "{} got {got} packets of the screen share",
            receiver.name
        );
    }
    // ... and never node C, where nobody receives it: C relayed the other nodes' cameras and
    // microphones, not the screen share; B relayed it.
    let relayed =
        |source: &str| format!("convene_cascade_relayed_tracks_total{{source=\"{source}\"}}");
    assert_eq!(
        c.metric(&relayed("screen")).await,
        0.0,
        "the screen share reached node C"
    );
    for receiver in [&sc, pc] {
        let on_c = &tracks_known(receiver)[&key(&screen)];
        assert_eq!(receiver.packets_from(on_c, "pa", "screen"), 0);
    }
    assert!(b.metric(&relayed("screen")).await >= 1.0);
    assert!(c.metric(&relayed("camera")).await >= 2.0);
    assert!(c.metric(&relayed("microphone")).await >= 2.0);

    // Once nobody on C receives pa's tracks, their relay closes (A holds one peer fewer); taken
    // again, they flow again.
    let pa_tracks = [
        (pa.participant_id(), "microphone"),
        (pa.participant_id(), "camera"),
    ];
    let peers_on_a = a.metric("convene_peers").await;
    for manual in [&sc, pc] {
        let known = tracks_known(manual);
        for wanted in &pa_tracks {
            manual
                .ws
                .send(json!({"type": "unsubscribe", "track_id": known[&key(wanted)]}));
        }
    }
    // (One relay, or two when the camera was asked for while the microphone's was opening.)
    until(
        Duration::from_secs(10),
        "the relay of pa's tracks to C closes",
        async || a.metric("convene_peers").await < peers_on_a,
    )
    .await;
    let cameras_relayed = c.metric(&relayed("camera")).await;
    let camera = tracks_known(&sc)[&key(&pa_tracks[1])].clone();
    let before = sc.packets_from(&camera, "pa", "cam");
    sc.ws.send(json!({"type": "subscribe", "track_id": camera}));
    let got = sc
        .wait_packets(&camera, "pa", "cam", before + 20, Duration::from_secs(20))
        .await;
    assert!(
        got >= before + 20,
        "pa's camera again on C: {before} then {got}"
    );
    assert_eq!(c.metric(&relayed("camera")).await, cameras_relayed + 1.0);
    sending.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_kicks_and_whip_whep_cross_the_nodes_of_a_cascaded_meeting() {
    let shared = Shared::new().await;
    let [a, b, c] = three_cascading_nodes(&shared).await;
    let host = a.user("host").await;
    let meeting = a.open_meeting(&host).await;
    let id = meeting["id"].as_str().unwrap();

    // The host on A, bob on C: each sees the other.
    let answer = a.join_meeting(&meeting, Some(&host)).await;
    let mut alice = MediaClient::join_sending(
        a.server.http_addr,
        "alice",
        answer["join_token"].as_str().unwrap(),
        false,
        json!({"type": "join"}),
    )
    .await;
    let bob = participant(&c, &meeting, "bob", false).await;
    let bob_id = bob.participant_id();
    alice
        .ws
        .expect_where("participant_joined", |m| {
            m["participant"]["participant_id"] == bob_id.as_str()
        })
        .await;

    // Chat from bob's socket on C reaches alice on A, and is stored once.
    bob.ws
        .send(json!({"type": "chat", "text": "hello from node C"}));
    let chat = alice
        .ws
        .expect_where("chat_message", |m| m["text"] == "hello from node C")
        .await;
    assert_eq!(chat["participant_id"], bob_id.as_str());
    assert_eq!(b.chat_copies(id, &host.token, "hello from node C").await, 1);

    // Settings changed over REST (at the meeting's node) reach sessions on other nodes: chat
    // turned off there is off for bob on C.
    let (status, body) = a
        .call(
            reqwest::Method::PATCH,
            &format!("/meetings/{id}"),
            Some(&host.token),
            Some(json!({"settings": {"chat": false}})),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::OK, "{body}");
    let mut bob = bob;
    let updated = bob
        .ws
        .expect_where("meeting_updated", |m| {
            m["meeting"]["settings"]["chat"] == false
        })
        .await;
    assert_eq!(updated["meeting"]["id"], id);
    bob.ws
        .send(json!({"type": "chat", "text": "still here?", "ref": "c1"}));
    let refused = bob.ws.expect_where("error", |m| m["ref"] == "c1").await;
    assert_eq!(refused["code"], "chat_disabled", "{refused}");

    // WHIP on A, WHEP on B and C (a WHIP publisher is shared like a member): media reaches
    // both viewers through relays.
    let room = id;
    let publisher = WhipPublisher::connect(&a, room, &a.token(room, "whip-cam", true, false)).await;
    let viewers = [
        WhepSubscriber::connect(
            &b,
            room,
            &b.token(room, "viewer-b", false, true),
            Some("whip-cam"),
        )
        .await,
        WhepSubscriber::connect(
            &c,
            room,
            &c.token(room, "viewer-c", false, true),
            Some("whip-cam"),
        )
        .await,
    ];
    for viewer in &viewers {
        assert!(viewer.session.url.starts_with(&b.base) || viewer.session.url.starts_with(&c.base));
    }
    let sending = tokio::spawn(async move {
        for sequence in 0..u16::MAX {
            publisher.send(Kind::Audio, sequence, vec![5; 40]).await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    for viewer in &viewers {
        let got = viewer
            .wait_packets(Kind::Audio, 30, Duration::from_secs(20))
            .await;
        assert!(got >= 30, "{got} packets through the relay");
    }
    sending.abort();

    // The relay routes are for nodes: not open to a client, not even through a node that hands
    // a request about a meeting on (with `..` segments that would leave the meeting's routes).
    let relay_request = json!({"meeting_id": id, "publisher": "whip-cam", "tracks": ["t2"],
                               "offer": "v=0\r\n"});
    let response = reqwest::Client::new()
        .post(a.url("/internal/v1/cascade/relays"))
        .header("x-convene-forwarded", "guess")
        .json(&relay_request)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::FORBIDDEN);
    // A layer choice for a relay: the nodes' key only, values within a receiver's own limits,
    // a relay session that exists; each refusal in the error envelope.
    let wish = json!({"paused": false, "best": false, "size": null, "layer": 0, "fps": null,
                      "temporal": null});
    let wish_url = a.url(&format!(
        "/internal/v1/cascade/relays/{id}/{}/tracks/t1",
        uuid::Uuid::now_v7()
    ));
    let key = a.server.state.keys.cluster_relay_key();
    let put = |body: Value, key: Option<&str>| {
        let mut request = reqwest::Client::new().put(&wish_url).json(&body);
        if let Some(key) = key {
            request = request.header("x-convene-relay", key);
        }
        async move {
            let response = request.send().await.unwrap();
            let status = response.status();
            let body: Value = response.json().await.unwrap_or_default();
            (
                status,
                body["error"]["code"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        }
    };
    let refusals = [
        (put(wish.clone(), None).await, 403),
        (put(wish.clone(), Some("guess")).await, 403),
        (put(json!({"layer": "top"}), None).await, 403),
        (put(json!({"layer": "top"}), Some(&key)).await, 422),
        (
            put(
                json!({"paused": false, "best": false, "size": null, "layer": 0, "fps": 9999,
                    "temporal": null}),
                Some(&key),
            )
            .await,
            422,
        ),
        (put(wish.clone(), Some(&key)).await, 404),
    ];
    let garbage = reqwest::Client::new()
        .post(a.url("/internal/v1/cascade/relays"))
        .header("x-convene-relay", &key)
        .json(&json!({"meeting_id": id, "tracks": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(garbage.status(), reqwest::StatusCode::UNPROCESSABLE_ENTITY);
    let body: Value = garbage.json().await.unwrap();
    assert!(body["error"]["code"].is_string(), "{body}");
    for ((status, code), expected) in refusals {
        assert_eq!(status.as_u16(), expected, "{code}");
        assert!(!code.is_empty(), "an error envelope with a code ({status})");
    }
    for node in [&a, &b, &c] {
        let body = relay_request.to_string();
        let request = format!(
            "POST /api/v1/meetings/{id}/%2e%2e/%2e%2e/%2e%2e/%2e%2e/internal/v1/cascade/relays HTTP/1.1\r\n\
             Host: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            node.server.http_addr,
            body.len()
        );
        let mut stream = tokio::net::TcpStream::connect(node.server.http_addr)
            .await
            .unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer).await;
        let status = answer.split(' ').nth(1).unwrap_or_default().to_owned();
        assert!(
            status == "404" || status == "400",
            "a dotted path reached the relay route: {answer}"
        );
    }

    // A kick made over REST at B (which hands it to the meeting's node) closes bob's socket
    // on C; alice sees him leave.
    let (status, body) = b
        .call(
            reqwest::Method::POST,
            &format!("/meetings/{id}/participants/{bob_id}/kick"),
            Some(&host.token),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::OK, "{body}");
    assert_eq!(bob.ws.closed().await.0, 4003, "kicked on node C");
    alice
        .ws
        .expect_where("participant_left", |m| {
            m["participant_id"] == bob_id.as_str()
        })
        .await;
}

/// The width of the last VP8 keyframe `client` received on `track`, if any came.
fn last_keyframe_width(client: &MediaClient, track: &str) -> Option<u16> {
    client
        .received()
        .get(track)?
        .payloads
        .iter()
        .rev()
        .find_map(|p| convene::sfu::keyframe::vp8_keyframe(p).flatten())
        .map(|(width, _)| width)
}

/// Waits until the last keyframe `client` received on `track` is `width` wide.
async fn wait_keyframe_width(client: &MediaClient, track: &str, width: u16, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let last = last_keyframe_width(client, track);
        if last == Some(width) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}: {what}: the last keyframe is {last:?} wide, not {width}",
            client.name
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Layer choices cross a relay: a simulcast publisher (headless Chromium, WHIP) on node A,
/// receivers on node B. The relay carries the most B's receivers want together: the best by
/// default, the lowest layer once the one receiver asks for it, the best again when a second
/// receiver (who wants it) arrives, the lowest again while that one pauses the track; nothing
/// of the camera once nobody on B takes it (the microphone keeps the relay open).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn layer_choices_on_one_node_decide_what_the_relay_from_the_publishers_node_carries() {
    let shared = Shared::new().await;
    let [a, b, _c] = three_cascading_nodes(&shared).await;
    let host = a.user("host").await;
    let meeting = a.open_meeting(&host).await;
    let room = meeting["id"].as_str().unwrap();
    let token = a.token(room, "cam", true, false);
    let (publisher, sending) = common::browser::Running::start(
        "publish.mjs",
        &[
            ("CONVENE_URL", a.base.as_str()),
            ("ROOM", room),
            ("PUBLISH_TOKEN", token.as_str()),
        ],
        "SENDING",
        Duration::from_secs(90),
    )
    .await;
    let widths: HashMap<String, u16> =
        serde_json::from_str(sending.trim_start_matches("SENDING").trim()).unwrap();
    let (low, top) = (widths["q"], widths["f"]);
    assert!(low < top, "{widths:?}");

    let first = participant(&b, &meeting, "first", false).await;
    let camera = (String::from("cam"), "camera");
    let track = wait_tracks(&first, std::slice::from_ref(&camera)).await
        [&(camera.0.clone(), camera.1.to_owned())]
        .clone();
    wait_keyframe_width(&first, &track, top, "the relay carries the best at first").await;

    first
        .ws
        .send(json!({"type": "set_track", "track_id": track, "layer": 0}));
    wait_keyframe_width(&first, &track, low, "its one receiver asked for the lowest").await;
    let asked = a
        .metric("convene_layer_switches_total{reason=\"requested\"}")
        .await;
    assert!(
        asked >= 1.0,
        "the relay's layer changed at A on request: {asked}"
    );

    let second = participant(&b, &meeting, "second", false).await;
    let track_there = wait_tracks(&second, std::slice::from_ref(&camera)).await
        [&(camera.0.clone(), camera.1.to_owned())]
        .clone();
    assert_eq!(track_there, track, "one id for the track on node B");
    wait_keyframe_width(&second, &track, top, "a second receiver wants the best").await;
    wait_keyframe_width(&first, &track, top, "B gets one stream: the most wanted").await;

    second
        .ws
        .send(json!({"type": "set_track", "track_id": track, "paused": true}));
    wait_keyframe_width(&first, &track, low, "the receiver wanting more paused it").await;
    assert_eq!(a.metric("convene_paused_down_tracks").await, 0.0);
    second
        .ws
        .send(json!({"type": "set_track", "track_id": track, "paused": false}));
    wait_keyframe_width(&first, &track, top, "the one wanting the best resumed").await;

    // Nobody on B takes the camera any more (the relay stays for the microphone): it stops
    // crossing, and crosses again for a receiver who takes it again.
    first
        .ws
        .send(json!({"type": "unsubscribe", "track_id": track}));
    second
        .ws
        .send(json!({"type": "unsubscribe", "track_id": track}));
    let paused = a
        .wait_metric("convene_paused_down_tracks", 1.0, Duration::from_secs(10))
        .await;
    assert_eq!(
        paused, 1.0,
        "A stopped sending the camera nobody on B takes"
    );
    let peers = a.metric("convene_peers").await;
    let before = second.received()[&track].payloads.len();
    second
        .ws
        .send(json!({"type": "subscribe", "track_id": track}));
    let paused = a
        .wait_metric("convene_paused_down_tracks", 0.0, Duration::from_secs(10))
        .await;
    assert_eq!(paused, 0.0, "the camera crosses again");
    assert_eq!(a.metric("convene_peers").await, peers, "on the same relay");
    until(
        Duration::from_secs(20),
        "the camera comes back to the receiver taking it again",
        async || second.received()[&track].payloads.len() >= before + 30,
    )
    .await;
    publisher.stop().await;
}

/// A cascaded meeting is recorded whole: the node recording it (the meeting's node) receives
/// every remote participant's tracks while it records, though nobody there receives them, and
/// stops once the recording stops. A Chromium publisher (WHIP) on another node gets a file of
/// its own that decodes. A recording running on another node is stopped over REST too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_recording_node_records_the_participants_of_the_other_nodes() {
    assert!(
        common::media::ffmpeg_available(),
        "ffmpeg/ffprobe are needed (scripts/test installs them)"
    );
    let shared = Shared::new().await;
    let nodes = three_cascading_nodes(&shared).await;
    let host = nodes[0].user("host").await;
    let meeting = nodes[0].open_meeting(&host).await;
    let id = meeting["id"].as_str().unwrap();
    // The host, on the meeting's node, receives nothing: the room is open there, and nothing
    // is relayed for them.
    let answer = nodes[0].join_meeting(&meeting, Some(&host)).await;
    let ws_url = answer["ws_url"].as_str().unwrap();
    let here = nodes
        .iter()
        .position(|n| ws_url.contains(&n.server.http_addr.to_string()))
        .expect("the join names a node");
    let (recorder, other) = (&nodes[here], &nodes[(here + 1) % 3]);
    let watcher = MediaClient::join_sending(
        recorder.server.http_addr,
        "host",
        answer["join_token"].as_str().unwrap(),
        false,
        json!({"type": "join", "auto_subscribe": false}),
    )
    .await;
    let token = other.token(id, "cam", true, false);
    let (publisher, _) = common::browser::Running::start(
        "publish.mjs",
        &[
            ("CONVENE_URL", other.base.as_str()),
            ("ROOM", id),
            ("PUBLISH_TOKEN", token.as_str()),
        ],
        "SENDING",
        Duration::from_secs(90),
    )
    .await;
    let camera = (String::from("cam"), "camera");
    wait_tracks(
        &watcher,
        &[camera.clone(), (camera.0.clone(), "microphone")],
    )
    .await;
    let relayed = "convene_cascade_relayed_tracks_total{source=\"camera\"}";
    assert_eq!(
        recorder.metric(relayed).await,
        0.0,
        "nothing relayed before the recording"
    );

    let recordings = format!("/meetings/{id}/recordings");
    let (status, started) = recorder
        .call(reqwest::Method::POST, &recordings, Some(&host.token), None)
        .await;
    assert_eq!(status, reqwest::StatusCode::CREATED, "{started}");
    let recording = started["id"].as_str().unwrap().to_owned();
    let relays = recorder
        .wait_metric(relayed, 1.0, Duration::from_secs(20))
        .await;
    assert_eq!(relays, 1.0, "the camera is relayed for the recording");
    // Seconds of media to record.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let peers = recorder.metric("convene_peers").await;
    let (status, stopped) = recorder
        .call(
            reqwest::Method::POST,
            &format!("{recordings}/{recording}/stop"),
            Some(&host.token),
            None,
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::OK, "{stopped}");
    assert_eq!(stopped["status"], "ready", "{stopped}");
    let file = stopped["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["participant_id"] == "cam" && f["source"] == "camera")
        .unwrap_or_else(|| panic!("no file of the publisher on another node: {stopped}"));
    assert_eq!(file["kinds"], json!(["audio", "video"]), "{file}");

    let dir = common::TempDir::new();
    let path = dir.0.join("cam.webm");
    let response = reqwest::Client::new()
        .get(recorder.url(file["url"].as_str().unwrap()))
        .bearer_auth(&host.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    let bytes = response.bytes().await.unwrap();
    std::fs::write(&path, &bytes).unwrap();
    let probe = common::media::probe(&path);
    let duration: f64 = probe["format"]["duration"]
        .as_str()
        .and_then(|d| d.parse().ok())
        .unwrap_or(0.0);
    assert!(duration >= 2.0, "{duration} s recorded: {probe}");
    let errors = common::media::decode_errors(&path);
    assert!(errors.is_empty(), "decoding: {errors}");

    // Recorded no more, and received by nobody there: the relay closed.
    until(
        Duration::from_secs(10),
        "the relay closes after the recording",
        async || recorder.metric("convene_peers").await < peers,
    )
    .await;

    // A recording started by a moderator's socket on another node runs there; REST (at the
    // meeting's node) stops it all the same.
    let mut moderator = participant(other, &meeting, "moderator", false).await;
    let moderator_id = moderator.participant_id();
    let (status, body) = recorder
        .call(
            reqwest::Method::PATCH,
            &format!("/meetings/{id}/participants/{moderator_id}"),
            Some(&host.token),
            Some(json!({"role": "moderator"})),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::OK, "{body}");
    moderator
        .ws
        .expect_where("participant_updated", |m| {
            m["participant"]["participant_id"] == moderator_id.as_str()
                && m["participant"]["role"] == "moderator"
        })
        .await;
    moderator
        .ws
        .send(json!({"type": "moderate", "action": "start_recording"}));
    let started = moderator.ws.expect("recording_started").await;
    let elsewhere = started["recording_id"].as_str().unwrap();
    let (status, stopped) = recorder
        .call(
            reqwest::Method::POST,
            &format!("{recordings}/{elsewhere}/stop"),
            Some(&host.token),
            None,
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::OK, "{stopped}");
    assert_eq!(stopped["status"], "ready", "{stopped}");
    moderator.ws.expect("recording_stopped").await;
    publisher.stop().await;
}

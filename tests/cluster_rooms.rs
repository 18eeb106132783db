//! Cluster mode, rooms: three nodes on loopback sharing Redis (the test's own), the database
//! (the CI's PostgreSQL with `DATABASE_URL`, else one SQLite file) and the server secret.
//! Placement spreads rooms by load and never places a room twice when first joins race;
//! a client at the wrong node is sent to the room's node (REST answers its URLs, WHIP/WHEP
//! `307`, the socket `wrong_node`) and gets media; REST about a meeting (chat, kick) reaches
//! it from any node; `kill -9` of a node places its rooms again and its participants resume on
//! another node.

mod common;
#[path = "signaling/ws_client.rs"]
mod ws_client;

use std::collections::HashMap;
use std::time::Duration;

use common::api::TestUser;
use common::client::{Kind, WhepSubscriber, WhipPublisher};
use common::process::Process;
use common::redis::Shared;
use common::{TempDir, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use ws_client::MediaClient;

async fn three_nodes(shared: &Shared) -> [TestServer; 3] {
    let a = shared.node("node-a", |_| {}).await;
    let b = shared.node("node-b", |_| {}).await;
    let c = shared.node("node-c", |_| {}).await;
    wait_registered(&a, 3).await;
    [a, b, c]
}

/// Waits until the registry lists `count` nodes (as the placement script sees them).
async fn wait_registered(server: &TestServer, count: usize) {
    let cluster = server.server.state.cluster.clone().expect("cluster mode");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        if cluster.nodes().await.map(|n| n.len()).unwrap_or(0) == count {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{count} nodes never registered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn meeting(server: &TestServer, host: &TestUser) -> Value {
    server.open_meeting(host).await
}

async fn join(server: &TestServer, meeting: &Value, user: Option<&TestUser>) -> Value {
    server.join_meeting(meeting, user).await
}

/// A participant joining the cluster through the node at `entry` (following `wrong_node`, and
/// retrying while a dead node is named), with the join's token; `resume` asks to resume.
async fn participant(
    entry: std::net::SocketAddr,
    name: &str,
    token: &str,
    resume: bool,
) -> MediaClient {
    MediaClient::join_cluster(entry, name, token, resume, Duration::from_secs(30)).await
}

/// Alice publishes a microphone, bob receives it: how many of 40 packets he got.
async fn mic_flows(alice: &mut MediaClient, bob: &mut MediaClient) -> usize {
    alice.publish(&[("microphone", "mic")]).await;
    alice.wait_publisher_connected().await;
    bob.wait_subscriber_connected().await;
    let track = bob.ws.expect("track_published").await["track_id"]
        .as_str()
        .unwrap()
        .to_owned();
    for _ in 0..40 {
        alice.send_round(&["mic"]).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    bob.wait_packets(&track, "alice", "mic", 30, Duration::from_secs(10))
        .await
}

/// Which of `nodes` a join answer's `ws_url` names.
fn node_of(nodes: &[&TestServer], answer: &Value) -> usize {
    let url = answer["ws_url"].as_str().expect("ws_url");
    nodes
        .iter()
        .position(|n| url == format!("ws://{}/ws", n.server.http_addr))
        .unwrap_or_else(|| panic!("{url} names none of the nodes"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placement_spreads_rooms_by_load_and_racing_first_joins_place_a_room_once() {
    let shared = Shared::new().await;
    let [a, b, c] = three_nodes(&shared).await;
    let nodes = [&a, &b, &c];
    let host = a.user("host").await;

    // 30 rooms, their first joins spread over the nodes: each node gets a third.
    let mut placed = [0usize; 3];
    for i in 0..30 {
        let m = meeting(&a, &host).await;
        let answer = join(nodes[i % 3], &m, Some(&host)).await;
        let owner = node_of(&nodes, &answer);
        placed[owner] += 1;
        let http = nodes[owner].base.clone();
        assert_eq!(
            answer["whip_url"],
            format!("{http}/whip/{}", m["id"].as_str().unwrap())
        );
    }
    // The nodes share this process, so their CPU figures differ only by when each sampled it;
    // that noise may tip a tie, not a spread.
    assert!(
        placed.iter().all(|n| (8..=12).contains(n)),
        "rooms per node: {placed:?}"
    );

    // Load counts: a WHIP room placed on C gets twenty publishers (probing WHIP rooms until
    // one lands there), and the next six rooms go mostly to A and B.
    let mut peers = Vec::new();
    let mut room = String::new();
    for i in 0..3 {
        room = format!("load-{i}");
        let publisher = WhipPublisher::connect(&c, &room, &c.token(&room, "p0", true, false)).await;
        let on_c = publisher.session.url.starts_with(&c.base);
        peers.push(publisher);
        if on_c {
            break;
        }
    }
    assert!(
        peers.last().unwrap().session.url.starts_with(&c.base),
        "a room on C"
    );
    for i in 1..20 {
        let identity = format!("p{i}");
        peers
            .push(WhipPublisher::connect(&c, &room, &c.token(&room, &identity, true, false)).await);
    }
    let cluster = c.server.state.cluster.clone().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let nodes = cluster.nodes().await.unwrap();
        if nodes.iter().any(|n| n.id == "node-c" && n.load.peers >= 20) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{nodes:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut next = [0usize; 3];
    for _ in 0..6 {
        let m = meeting(&a, &host).await;
        next[node_of(&nodes, &join(&c, &m, Some(&host)).await)] += 1;
    }
    assert!(
        next[2] < next[0] && next[2] < next[1],
        "the loaded node C takes fewer of six new rooms: {next:?}"
    );

    // Races: twelve first joins of one fresh meeting at once, four at each node; every answer
    // names the one node. Five meetings.
    for _ in 0..5 {
        let m = meeting(&a, &host).await;
        let joins = (0..12).map(|i| {
            let node = nodes[i % 3];
            let m = m.clone();
            async move { join(node, &m, None).await }
        });
        let answers = futures_util::future::join_all(joins).await;
        let owners: Vec<usize> = answers.iter().map(|a| node_of(&nodes, a)).collect();
        assert!(
            owners.iter().all(|o| *o == owners[0]),
            "one owner for one room: {owners:?}"
        );
    }
    drop(peers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_at_the_wrong_node_is_sent_to_the_room_and_gets_media() {
    let shared = Shared::new().await;
    let [a, b, c] = three_nodes(&shared).await;
    let nodes = [&a, &b, &c];

    // WHIP/WHEP: a viewer's POST at A places the room; a publisher POSTing at another node is
    // answered 307 to the room's node, and (following it, as WHIP clients do) publishes there.
    let room = "wrong-node";
    let viewer =
        WhepSubscriber::connect(&a, room, &a.token(room, "viewer", false, true), None).await;
    let owner = nodes
        .iter()
        .position(|n| viewer.session.url.starts_with(&n.base))
        .expect("the viewer's resource is on a node");
    let wrong = nodes[(owner + 1) % 3];
    let token = wrong.token(room, "publisher", true, false);
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let response = no_redirects
        .post(wrong.url(&format!("/whip/{room}")))
        .header("content-type", "application/sdp")
        .header("authorization", format!("Bearer {token}"))
        .body("v=0\r\n")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TEMPORARY_REDIRECT);
    assert_eq!(
        response.headers()["location"],
        format!("{}/whip/{room}", nodes[owner].base).as_str()
    );
    let publisher = WhipPublisher::connect(wrong, room, &token).await;
    assert!(publisher.session.url.starts_with(&nodes[owner].base));
    for sequence in 0..40u16 {
        publisher.send(Kind::Audio, sequence, vec![5; 40]).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let got = viewer
        .wait_packets(Kind::Audio, 30, Duration::from_secs(10))
        .await;
    assert!(got >= 30, "{got} packets through the redirect");

    // A meeting: the REST join at any node names the room's node; a socket at another node
    // is told where to go, and the participant joins there and gets media.
    let host = a.user("host").await;
    let guest = a.user("guest").await;
    let m = meeting(&a, &host).await;
    let host_join = join(&a, &m, Some(&host)).await;
    let owner = node_of(&nodes, &host_join);
    let wrong = nodes[(owner + 2) % 3];
    let guest_join = join(wrong, &m, Some(&guest)).await;
    assert_eq!(
        guest_join["ws_url"], host_join["ws_url"],
        "one node serves the meeting"
    );
    let mut alice = participant(
        wrong.server.http_addr,
        "alice",
        host_join["join_token"].as_str().unwrap(),
        false,
    )
    .await;
    let mut bob = participant(
        wrong.server.http_addr,
        "bob",
        guest_join["join_token"].as_str().unwrap(),
        false,
    )
    .await;
    let got = mic_flows(&mut alice, &mut bob).await;
    assert!(got >= 30, "{got} packets in the meeting");

    // REST at a node that does not serve the meeting reaches it: chat lands once and on the
    // sockets, and a kick removes bob from his node.
    let id = m["id"].as_str().unwrap();
    let (status, body) = wrong
        .call(
            Method::POST,
            &format!("/meetings/{id}/messages"),
            Some(&host.token),
            Some(json!({"text": "hello from another node"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let chat = bob
        .ws
        .expect_where("chat_message", |m| m["text"] == "hello from another node")
        .await;
    assert_eq!(chat["text"], "hello from another node");
    assert_eq!(
        nodes[(owner + 1) % 3]
            .chat_copies(id, &host.token, "hello from another node")
            .await,
        1
    );

    let bob_id = bob.participant_id();
    let (status, body) = wrong
        .call(
            Method::POST,
            &format!("/meetings/{id}/participants/{bob_id}/kick"),
            Some(&host.token),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        bob.ws.closed().await.0,
        4003,
        "kicked on the meeting's node"
    );
    let left = alice
        .ws
        .expect_where("participant_left", |m| {
            m["participant_id"] == bob_id.as_str()
        })
        .await;
    assert_eq!(left["reason"], "kicked", "{left}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_node_places_its_rooms_again_and_its_participants_resume_elsewhere() {
    let shared = Shared::new().await;
    // The seats a dead node still holds are closed by the others after this grace.
    let grace = |c: &mut convene::config::Config| c.ws_resume_grace = Duration::from_secs(5);
    let a = shared.node("node-a", grace).await;
    let b = shared.node("node-b", grace).await;
    let data = TempDir::new();
    let env = shared.env("node-k");
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let k = Process::start_with(&data, &shared.database_url, &env).await;
    wait_registered(&a, 3).await;
    let host = a.user("host").await;
    let guest = a.user("guest").await;

    // A meeting placed on K: rooms go where the fewest are, so within a few K gets one.
    let k_ws = format!("ws://{}/ws", k.addr);
    let mut found = None;
    for _ in 0..6 {
        let m = meeting(&a, &host).await;
        let answer = join(&a, &m, Some(&host)).await;
        if answer["ws_url"] == k_ws.as_str() {
            found = Some((m, answer));
            break;
        }
    }
    let (m, host_join) = found.expect("a room placed on node K");
    let guest_join = join(&b, &m, Some(&guest)).await;
    assert_eq!(guest_join["ws_url"], k_ws.as_str());
    // Carol is on K too, and never comes back.
    let carol = a.user("carol").await;
    let carol_join = join(&a, &m, Some(&carol)).await;
    let carol_client = participant(
        a.server.http_addr,
        "carol",
        carol_join["join_token"].as_str().unwrap(),
        false,
    )
    .await;
    let carol_id = carol_client.participant_id();
    let (alice_token, bob_token) = (
        host_join["join_token"].as_str().unwrap().to_owned(),
        guest_join["join_token"].as_str().unwrap().to_owned(),
    );
    let mut alice = participant(a.server.http_addr, "alice", &alice_token, false).await;
    let mut bob = participant(a.server.http_addr, "bob", &bob_token, false).await;
    let got = mic_flows(&mut alice, &mut bob).await;
    assert!(got >= 30, "{got} packets on node K");
    let (alice_id, bob_id) = (alice.participant_id(), bob.participant_id());
    drop(bob);

    k.kill_9();
    drop(carol_client);

    // Both resume through A (their page's server): the room is placed again on a live node,
    // each gets `joined` there as a new session (its media was on K) and media flows again.
    let mut alice = {
        drop(alice);
        participant(a.server.http_addr, "alice", &alice_token, true).await
    };
    let mut bob = participant(a.server.http_addr, "bob", &bob_token, true).await;
    assert_eq!(
        alice.joined["resumed"], false,
        "a new session on a new node"
    );
    assert_eq!(alice.participant_id(), alice_id, "the same seat");
    assert_eq!(bob.participant_id(), bob_id, "the same seat");
    let got = mic_flows(&mut alice, &mut bob).await;
    assert!(got >= 30, "{got} packets after the move");

    // The seats were taken over, not closed: both are still in the meeting, once each; carol's,
    // left on the dead node, is closed once the resume grace is over.
    let id = m["id"].as_str().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let list = loop {
        let (status, list) = a
            .call(
                Method::GET,
                &format!("/meetings/{id}/participants"),
                Some(&host.token),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{list}");
        let carol_left = list["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["id"] == carol_id.as_str() && p["status"] == "left");
        if carol_left {
            break list;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "carol's seat on the dead node was never closed: {list}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let joined: HashMap<String, usize> = list["items"]
        .as_array()
        .unwrap_or_else(|| panic!("{list}"))
        .iter()
        .filter(|p| p["status"] == "joined")
        .fold(HashMap::new(), |mut seen, p| {
            *seen
                .entry(p["id"].as_str().unwrap().to_owned())
                .or_default() += 1;
            seen
        });
    assert_eq!(joined.get(&alice_id), Some(&1), "{list}");
    assert_eq!(joined.get(&bob_id), Some(&1), "{list}");
}

/// The browser page follows the cluster: served by node A, it joins a meeting placed on node K;
/// when K is killed, it reconnects through A and meets again on a live node
/// (tests/browser/cluster_meeting.mjs, headless Chromium).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_meeting_page_moves_to_a_live_node_when_its_node_dies() {
    let shared = Shared::new().await;
    let a = shared.node("node-a", |_| {}).await;
    let data = TempDir::new();
    let env = shared.env("node-k");
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let k = Process::start_with(&data, &shared.database_url, &env).await;
    wait_registered(&a, 2).await;
    let host = a.user("host").await;
    let k_ws = format!("ws://{}/ws", k.addr);
    let mut code = None;
    for _ in 0..6 {
        let m = meeting(&a, &host).await;
        if join(&a, &m, Some(&host)).await["ws_url"] == k_ws.as_str() {
            code = m["code"].as_str().map(str::to_owned);
            break;
        }
    }
    let code = code.expect("a meeting placed on node K");
    let pid = k.pid().to_string();
    common::browser::run_script(
        "cluster_meeting.mjs",
        &[
            ("CONVENE_URL", a.base.as_str()),
            ("CODE", code.as_str()),
            ("DEAD_WS", k_ws.as_str()),
            ("KILL_PID", pid.as_str()),
        ],
        Duration::from_secs(150),
    )
    .await;
    drop(k);
}

/// Redis stopped mid-meeting: the meeting's node keeps its sockets and media, and when Redis
/// returns empty (no persistence) the node claims its room again, so joins at another node
/// are sent to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_away_mid_meeting_keeps_the_meeting_and_its_node_claims_it_back() {
    let mut shared = Shared::new().await;
    let a = shared.node("node-a", |_| {}).await;
    let b = shared.node("node-b", |_| {}).await;
    wait_registered(&a, 2).await;
    let nodes = [&a, &b];
    let host = a.user("host").await;
    let guest = a.user("guest").await;
    let m = meeting(&a, &host).await;
    let host_join = join(&a, &m, Some(&host)).await;
    let owner = node_of(&nodes, &host_join);
    let other = nodes[1 - owner];
    let guest_join = join(other, &m, Some(&guest)).await;
    let entry = other.server.http_addr;
    let within = Duration::from_secs(15);
    let alice_token = host_join["join_token"].as_str().unwrap();
    let bob_token = guest_join["join_token"].as_str().unwrap();
    let mut alice = participant(entry, "alice", alice_token, false).await;
    let mut bob = participant(entry, "bob", bob_token, false).await;
    assert!(mic_flows(&mut alice, &mut bob).await >= 30);

    shared.redis.stop();
    let cluster = nodes[owner].server.state.cluster.clone().unwrap();
    let deadline = tokio::time::Instant::now() + within;
    while cluster.redis_up() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "Redis never seen away"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let track = bob
        .received()
        .keys()
        .next()
        .cloned()
        .expect("bob has alice's track");
    let before = bob.packets_from(&track, "alice", "mic");
    for _ in 0..40 {
        alice.send_round(&["mic"]).await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let got = bob
        .wait_packets(&track, "alice", "mic", before + 30, Duration::from_secs(10))
        .await;
    assert!(
        got >= before + 30,
        "{} packets while Redis was away",
        got - before
    );
    alice.ws.send(json!({"type": "chat", "text": "still here"}));
    bob.ws
        .expect_where("chat_message", |m| m["text"] == "still here")
        .await;

    shared.redis.run();
    let carol = a.user("carol").await;
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let (status, answer) = other
            .call(
                Method::POST,
                &format!("/meetings/{}/join", m["id"].as_str().unwrap()),
                Some(&carol.token),
                Some(json!({})),
            )
            .await;
        if status == StatusCode::OK && answer["ws_url"] == host_join["ws_url"] {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the meeting's node never claimed it back: {status} {answer}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `convene load` pointed at a node that does not serve its room follows the 307s (sending its
/// token again) and every subscriber gets every packet on the room's node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn convene_load_at_another_node_follows_the_redirects() {
    let shared = Shared::new().await;
    let a = shared.node("node-a", |_| {}).await;
    let b = shared.node("node-b", |_| {}).await;
    wait_registered(&a, 2).await;
    let room = "load-redirect";
    // The room is placed by a first viewer at A; the load goes to the other node.
    let viewer =
        WhepSubscriber::connect(&a, room, &a.token(room, "first", false, true), None).await;
    let wrong = if viewer.session.url.starts_with(&a.base) {
        &b
    } else {
        &a
    };
    let (url, secret) = (wrong.base.clone(), shared.secret.clone());
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_convene"))
            .args(["load", "--url", &url, "--room", room, "--subscribers", "5"])
            .args([
                "--video-kbps",
                "300",
                "--seconds",
                "3",
                "--warmup",
                "1s",
                "--json",
            ])
            .env("CONVENE_JWT_SECRET", secret)
            .output()
            .expect("convene load runs")
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "convene load failed: {stderr}");
    let report: Value = serde_json::from_slice(&output.stdout).expect("a JSON report");
    assert_eq!(report["subscribers_connected"], 5, "{report:#}");
    assert_eq!(report["delivery_percent"], 100.0, "{report:#}");
    drop(viewer);
}

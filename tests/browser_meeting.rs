//! The meeting client in headless Chromium (Debian's, fake devices, driven by playwright-core):
//! tests/browser/meeting.mjs signs the host in through the page, then two and three participants
//! see each other's video decoding, chat, screen share, a kick and the waiting room (see the
//! script's header). Needs `chromium` and `tests/browser/node_modules` (`npm ci --prefix
//! tests/browser`); fails, with the fix in its message, when they are missing. Screenshots go to
//! test-artifacts/meeting (three.png: the three-person meeting).

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::TestServer;
use reqwest::{Method, StatusCode};
use serde_json::json;

#[tokio::test]
async fn participants_meet_chat_share_and_are_moderated_in_chromium() {
    let chromium = common::browser::chromium();
    let root = common::browser::root();

    let server = TestServer::start().await;
    let host = server.user("Hana").await;
    let (status, open) = server
        .call(
            Method::POST,
            "/meetings",
            Some(&host.token),
            Some(json!({"title": "Browser meeting"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{open}");
    let (status, waiting) = server
        .call(
            Method::POST,
            "/meetings",
            Some(&host.token),
            Some(json!({"title": "With a waiting room", "settings": {"waiting_room": true}})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{waiting}");
    let (status, locked) = server
        .call(
            Method::POST,
            "/meetings",
            Some(&host.token),
            Some(json!({"title": "With a passcode", "passcode": "4321"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{locked}");

    let artifacts = root.join("test-artifacts/meeting");
    let _ = std::fs::remove_file(artifacts.join("three.png"));
    let output = tokio::process::Command::new("node")
        .arg(root.join("tests/browser/meeting.mjs"))
        .current_dir(&root)
        .env("CONVENE_URL", &server.base)
        .env("CODE", open["code"].as_str().unwrap())
        .env("WAITING_CODE", waiting["code"].as_str().unwrap())
        .env("PASSCODE_CODE", locked["code"].as_str().unwrap())
        .env("PASSCODE", "4321")
        .env("HOST_LOGIN", &host.username)
        .env("HOST_PASSWORD", &host.password)
        .env("CHROMIUM", &chromium)
        .env("ARTIFACT_DIR", &artifacts)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(180), output)
        .await
        .expect("browser test finishes")
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}\n{stderr}");
    assert!(
        output.status.success() && stdout.lines().any(|l| l == "PASS"),
        "browser meeting test failed:\n{stdout}\n{stderr}"
    );
    assert!(
        artifacts.join("three.png").exists(),
        "the three-person screenshot was saved"
    );

    // Chromium offers RED: the SFU asked each publisher for it (its answer leads with RED) and
    // forwarded it as RED on the room subscriptions, whose answers took it.
    assert!(
        server
            .metric("convene_audio_red_total{sent_as=\"red\"}")
            .await
            > 0.0,
        "meeting audio went out as RED"
    );

    // The recording the host made through the page: the host's camera and microphone in one
    // WebM that ffprobe reads (VP8 + Opus, the time recorded) and ffmpeg decodes cleanly.
    let recordings = format!("/meetings/{}/recordings", open["id"].as_str().unwrap());
    let (status, list) = server
        .call(Method::GET, &recordings, Some(&host.token), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let recording = &list["items"][0];
    assert_eq!(recording["status"], "ready", "{list}");
    let at = |field: &str| {
        chrono::DateTime::parse_from_rfc3339(recording[field].as_str().unwrap())
            .unwrap()
            .timestamp_millis() as f64
            / 1000.0
    };
    let recorded_for = at("ended_at") - at("started_at");
    let files = recording["files"].as_array().unwrap();
    assert!(files.len() >= 3, "host, Bob and Cara: {recording}");
    let scratch = common::media::Scratch::new("browser-recording");
    let camera = files
        .iter()
        .find(|f| f["display_name"] == "Hana" && f["source"] == "camera")
        .unwrap_or_else(|| panic!("the host's camera file: {recording}"));
    // The host was sharing the screen meanwhile: it has its own file.
    assert!(
        files
            .iter()
            .any(|f| f["display_name"] == "Hana" && f["source"] == "screen"),
        "the host's screen share file: {recording}"
    );
    let path = scratch.0.join("host.webm");
    let bytes = server
        .http
        .get(format!(
            "{}{}",
            server.base,
            camera["url"].as_str().unwrap()
        ))
        .bearer_auth(&host.token)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    std::fs::write(&path, &bytes).unwrap();
    let probe = common::media::probe(&path);
    let mut streams: Vec<String> = probe["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            format!(
                "{}/{}",
                s["codec_type"].as_str().unwrap(),
                s["codec_name"].as_str().unwrap()
            )
        })
        .collect();
    streams.sort();
    assert_eq!(streams, ["audio/opus", "video/vp8"], "{probe}");
    let duration: f64 = probe["format"]["duration"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (duration - recorded_for).abs() <= recorded_for * 0.1,
        "{duration} s in the file, {recorded_for} s recorded"
    );
    let errors = common::media::decode_errors(&path);
    assert!(
        errors.is_empty(),
        "decoding the Chromium recording: {errors}"
    );

    // The kick went through the server, not only the page.
    let (status, people) = server
        .call(
            Method::GET,
            &format!("/meetings/{}/participants", open["id"].as_str().unwrap()),
            Some(&host.token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let kicked: Vec<_> = people["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["status"] == "kicked")
        .map(|p| p["display_name"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(kicked, ["Cara"], "{people}");
    // So did the end.
    let (_, ended) = server
        .call(
            Method::GET,
            &format!("/meetings/{}", waiting["id"].as_str().unwrap()),
            Some(&host.token),
            None,
        )
        .await;
    assert_eq!(ended["status"], "ended", "{ended}");
}

/// A participant whose page may only use TURN relay candidates (`?relay=1`, the servers its join
/// named: the embedded TURN) and one connecting directly see each other's camera.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_only_participant_meets_a_direct_one_in_chromium() {
    let server = TestServer::start_with(|c| {
        c.turn.enabled = true;
        c.turn.listen = "127.0.0.1:0".parse().unwrap();
    })
    .await;
    let host = server.user("Host").await;
    let (status, meeting) = server
        .call(
            Method::POST,
            "/meetings",
            Some(&host.token),
            Some(json!({"title": "Through TURN"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{meeting}");
    common::browser::run_script(
        "relay_meeting.mjs",
        &[
            ("CONVENE_URL", &server.base),
            ("CODE", meeting["code"].as_str().unwrap()),
        ],
        Duration::from_secs(120),
    )
    .await;
    // Ray's two connections (publisher and subscriber) each took an allocation.
    assert!(
        server
            .metric("convene_turn_allocations_total{transport=\"udp\"}")
            .await
            >= 2.0
    );
    let (to_client, to_peer) = (
        server
            .metric("convene_turn_relayed_packets_total{direction=\"to_client\"}")
            .await,
        server
            .metric("convene_turn_relayed_packets_total{direction=\"to_peer\"}")
            .await,
    );
    println!("relayed: {to_client} to clients, {to_peer} to Convene");
    // Ray's camera went up through the relay, Dee's came down through it.
    assert!(to_peer > 30.0 && to_client > 30.0);
}

//! WHIP/WHEP HTTP behaviour that needs no media: auth, bad input, limits, CORS, operations, CLI.
//! Real server on ephemeral ports, real HTTP client.

mod common;

use std::time::Duration;

use common::TestServer;
use convene::domain::token::{Grants, JoinClaims, TokenKeys};
use reqwest::header;
use reqwest::StatusCode;
use serde_json::Value;

/// A browser-like publish offer (Opus + VP8, sendonly). Nothing will answer its ICE checks.
fn offer(direction: &str) -> String {
    let fingerprint = (0..32)
        .map(|i| format!("{:02X}", i * 7 % 256))
        .collect::<Vec<_>>()
        .join(":");
    let section = |kind: &str, mid: u8, pt: u8, rtpmap: &str, extra: &str, ssrc: u32| {
        format!(
            "m={kind} 9 UDP/TLS/RTP/SAVPF {pt}\r\nc=IN IP4 0.0.0.0\r\na=rtcp:9 IN IP4 0.0.0.0\r\n\
             a=ice-ufrag:tEsT\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\na=ice-options:trickle\r\n\
             a=fingerprint:sha-256 {fingerprint}\r\na=setup:actpass\r\na=mid:{mid}\r\na={direction}\r\n\
             a=msid:stream {kind}0\r\na=rtcp-mux\r\na=rtpmap:{pt} {rtpmap}\r\n{extra}a=ssrc:{ssrc} cname:test\r\n"
        )
    };
    format!(
        "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\na=msid-semantic: WMS stream\r\n{}{}",
        section("audio", 0, 111, "opus/48000/2", "a=fmtp:111 minptime=10;useinbandfec=1\r\n", 1111),
        section("video", 1, 96, "VP8/90000", "a=rtcp-fb:96 nack\r\na=rtcp-fb:96 nack pli\r\n", 2222),
    )
}

async fn post(
    server: &TestServer,
    path: &str,
    token: Option<&str>,
    content_type: &str,
    body: String,
) -> reqwest::Response {
    let mut request = server
        .http
        .post(server.url(path))
        .header(header::CONTENT_TYPE, content_type)
        .body(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap()
}

/// Asserts the status and the JSON error envelope's code; returns the message.
async fn expect_error(response: reqwest::Response, status: StatusCode, code: &str) -> String {
    assert_eq!(response.status(), status);
    let body: Value = response.json().await.expect("error body is JSON");
    assert_eq!(body["error"]["code"], code, "{body}");
    let message = body["error"]["message"]
        .as_str()
        .expect("message is a string");
    assert!(!message.is_empty());
    message.to_owned()
}

#[tokio::test]
async fn health_readiness_metrics_and_page() {
    let server = TestServer::start().await;
    let health = server
        .http
        .get(server.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let ready = server.http.get(server.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    let metrics = server.metrics().await;
    for name in [
        "convene_rooms",
        "convene_peers",
        "convene_published_tracks",
        "convene_subscribers",
        "convene_rtp_packets_in_total",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
    let page = server.http.get(server.url("/whip")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.text().await.unwrap().contains("/whip/"));
    let app = server
        .http
        .get(server.url("/m/abc-defg-hij"))
        .send()
        .await
        .unwrap();
    assert_eq!(app.status(), StatusCode::OK);
    assert!(app.text().await.unwrap().contains("/assets/main.js"));
    let module = server
        .http
        .get(server.url("/assets/main.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        module.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );
    let missing = server
        .http
        .get(server.url("/assets/nope.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn tokens_are_checked() {
    let server = TestServer::start().await;
    let sdp = offer("sendonly");
    let www = post(&server, "/whip/r1", None, "application/sdp", sdp.clone()).await;
    assert_eq!(www.headers()[header::WWW_AUTHENTICATE], "Bearer");
    expect_error(www, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let garbage = post(
        &server,
        "/whip/r1",
        Some("not-a-token"),
        "application/sdp",
        sdp.clone(),
    )
    .await;
    expect_error(garbage, StatusCode::UNAUTHORIZED, "unauthorized").await;

    let foreign = TokenKeys::from_secret(b"someone else").sign(&JoinClaims::new(
        "r1",
        "a",
        Grants {
            publish: true,
            ..Default::default()
        },
        Duration::from_secs(60),
    ));
    let response = post(
        &server,
        "/whip/r1",
        Some(&foreign),
        "application/sdp",
        sdp.clone(),
    )
    .await;
    expect_error(response, StatusCode::UNAUTHORIZED, "unauthorized").await;

    let mut expired = JoinClaims::new(
        "r1",
        "a",
        Grants {
            publish: true,
            ..Default::default()
        },
        Duration::from_secs(60),
    );
    expired.exp -= 3600;
    expired.nbf -= 7200;
    let response = post(
        &server,
        "/whip/r1",
        Some(&server.server.state.keys.sign(&expired)),
        "application/sdp",
        sdp.clone(),
    )
    .await;
    let message = expect_error(response, StatusCode::UNAUTHORIZED, "unauthorized").await;
    assert!(message.contains("expired"), "{message}");

    let other_room = server.token("r2", "a", true, true);
    let response = post(
        &server,
        "/whip/r1",
        Some(&other_room),
        "application/sdp",
        sdp.clone(),
    )
    .await;
    expect_error(response, StatusCode::FORBIDDEN, "forbidden").await;
    let watch_only = server.token("r1", "a", false, true);
    let response = post(
        &server,
        "/whip/r1",
        Some(&watch_only),
        "application/sdp",
        sdp.clone(),
    )
    .await;
    expect_error(response, StatusCode::FORBIDDEN, "forbidden").await;
    let publish_only = server.token("r1", "a", true, false);
    let response = post(
        &server,
        "/whep/r1",
        Some(&publish_only),
        "application/sdp",
        offer("recvonly"),
    )
    .await;
    expect_error(response, StatusCode::FORBIDDEN, "forbidden").await;
    assert_eq!(
        server.metric("convene_peers").await,
        0.0,
        "no peer was created by a refused request"
    );
}

#[tokio::test]
async fn whip_session_lifecycle_over_http() {
    let server = TestServer::start().await;
    let token = server.token("lifecycle", "alice", true, false);
    let response = post(
        &server,
        "/whip/lifecycle",
        Some(&token),
        "application/sdp",
        offer("sendonly"),
    )
    .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let headers = response.headers().clone();
    assert_eq!(headers[header::CONTENT_TYPE], "application/sdp");
    assert_eq!(headers["accept-patch"], "application/trickle-ice-sdpfrag");
    let location = headers[header::LOCATION].to_str().unwrap().to_owned();
    assert!(location.starts_with("/whip/lifecycle/"), "{location}");
    let etag = headers[header::ETAG].to_str().unwrap().to_owned();
    assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");
    let answer = response.text().await.unwrap();
    assert!(
        answer.contains("a=recvonly"),
        "answer receives what the offer sends:\n{answer}"
    );
    let media_port = server.server.media_addr.port();
    assert!(
        answer.contains(&format!("127.0.0.1 {media_port} typ host")),
        "answer carries our host candidate:\n{answer}"
    );
    assert_eq!(server.metric("convene_rooms").await, 1.0);
    assert_eq!(server.metric("convene_published_tracks").await, 2.0);

    // Trickle with the right and a wrong entity tag.
    let fragment = "a=ice-ufrag:tEsT\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=candidate:1 1 udp 2130706431 127.0.0.1 40000 typ host\r\na=end-of-candidates\r\n";
    let patch = |tag: &str| {
        server
            .http
            .patch(server.url(&location))
            .bearer_auth(&token)
            .header(header::CONTENT_TYPE, "application/trickle-ice-sdpfrag")
            .header(header::IF_MATCH, tag)
            .body(fragment)
            .send()
    };
    assert_eq!(patch(&etag).await.unwrap().status(), StatusCode::NO_CONTENT);
    assert_eq!(patch("*").await.unwrap().status(), StatusCode::NO_CONTENT);
    // A stale tag, the current one made weak, or no tag at all name no current generation.
    for stale in [
        "\"stale\"".to_owned(),
        format!("W/{etag}"),
        etag.trim_matches('"').to_owned(),
    ] {
        expect_error(
            patch(&stale).await.unwrap(),
            StatusCode::PRECONDITION_FAILED,
            "etag_mismatch",
        )
        .await;
    }
    let wrong_type = server
        .http
        .patch(server.url(&location))
        .bearer_auth(&token)
        .header(header::CONTENT_TYPE, "text/plain")
        .body(fragment)
        .send()
        .await
        .unwrap();
    expect_error(
        wrong_type,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await;
    let garbage = server
        .http
        .patch(server.url(&location))
        .bearer_auth(&token)
        .header(header::CONTENT_TYPE, "application/trickle-ice-sdpfrag")
        .body("hello")
        .send()
        .await
        .unwrap();
    expect_error(garbage, StatusCode::BAD_REQUEST, "bad_ice_fragment").await;

    let deleted = server
        .http
        .delete(server.url(&location))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::OK);
    assert_eq!(server.metric("convene_rooms").await, 0.0);
    assert_eq!(server.metric("convene_published_tracks").await, 0.0);
    let again = server
        .http
        .delete(server.url(&location))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    expect_error(again, StatusCode::NOT_FOUND, "session_not_found").await;
}

#[tokio::test]
async fn bad_input_gets_clear_errors_and_server_stays_healthy() {
    let server = TestServer::start().await;
    let token = server.token("bad", "alice", true, true);
    let cases: Vec<(&str, &str, String, StatusCode, &str)> = vec![
        (
            "/whip/bad",
            "text/plain",
            offer("sendonly"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            "/whip/bad",
            "application/sdp",
            "this is not sdp".into(),
            StatusCode::BAD_REQUEST,
            "bad_sdp",
        ),
        (
            "/whip/bad",
            "application/sdp",
            "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n".into(),
            StatusCode::BAD_REQUEST,
            "bad_sdp",
        ),
        (
            "/whip/bad",
            "application/sdp",
            offer("sendonly").replace("a=ice-ufrag:tEsT\r\n", ""),
            StatusCode::BAD_REQUEST,
            "bad_sdp",
        ),
        (
            "/whip/bad",
            "application/sdp",
            offer("sendonly").replace("a=fingerprint", "a=fingerprimt"),
            StatusCode::BAD_REQUEST,
            "bad_sdp",
        ),
        (
            "/whip/bad",
            "application/sdp",
            String::new(),
            StatusCode::BAD_REQUEST,
            "empty_body",
        ),
        // No codec in common: every section would be rejected.
        (
            "/whip/bad",
            "application/sdp",
            offer("sendonly")
                .replace("opus/48000/2", "NOPE/48000/2")
                .replace("VP8/90000", "FOO/90000"),
            StatusCode::BAD_REQUEST,
            "bad_sdp",
        ),
        (
            "/whip/bad",
            "application/sdp",
            offer("sendonly").replace("a=fingerprint:sha-256 00:", "a=fingerprint:sha-256 ZZ:"),
            StatusCode::BAD_REQUEST,
            "bad_sdp",
        ),
        (
            "/whip/bad",
            "application/sdp",
            offer("sendonly").replace("a=fingerprint:sha-256 00:07:", "a=fingerprint:sha-256 "),
            StatusCode::BAD_REQUEST,
            "bad_sdp",
        ),
        (
            "/whip/bad",
            "application/sdp",
            offer("sendonly").replace("a=fingerprint:sha-256", "a=fingerprint:md5"),
            StatusCode::BAD_REQUEST,
            "bad_sdp",
        ),
        (
            "/whip/bad",
            "application/sdp",
            offer("sendonly").replace("a=ice-pwd:abcdefghijklmnopqrstuvwx\r\n", ""),
            StatusCode::BAD_REQUEST,
            "bad_sdp",
        ),
        (
            "/whip/bad",
            "application/sdp",
            "v=0\r\n".repeat(20_000),
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
        ),
        (
            "/whip/b%2Fd",
            "application/sdp",
            offer("sendonly"),
            StatusCode::BAD_REQUEST,
            "bad_room",
        ),
    ];
    for (path, content_type, body, status, code) in cases {
        let response = post(&server, path, Some(&token), content_type, body).await;
        let got = response.status();
        let text = response.text().await.unwrap();
        assert_eq!(got, status, "{path} {content_type}: {text}");
        let json: Value =
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
        assert_eq!(json["error"]["code"], code, "{path}: {text}");
    }
    for path in [
        "/whip/bad/0190c0de-0000-7000-8000-000000000000",
        "/whip/bad/not-a-uuid",
    ] {
        let response = server
            .http
            .delete(server.url(path))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        expect_error(response, StatusCode::NOT_FOUND, "session_not_found").await;
    }
    assert_eq!(server.metric("convene_peers").await, 0.0);
    assert_eq!(
        server
            .http
            .get(server.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn room_capacity_is_enforced() {
    let server = TestServer::start_with(|c| c.max_participants = 1).await;
    let token = server.token("full", "alice", true, true);
    let first = post(
        &server,
        "/whip/full",
        Some(&token),
        "application/sdp",
        offer("sendonly"),
    )
    .await;
    assert_eq!(first.status(), StatusCode::CREATED);
    // The limit counts participants: alice's second connection takes no second place...
    let again = post(
        &server,
        "/whip/full",
        Some(&token),
        "application/sdp",
        offer("sendonly"),
    )
    .await;
    assert_eq!(again.status(), StatusCode::CREATED);
    // ...while another participant finds the room full.
    let bob = server.token("full", "bob", true, true);
    let second = post(
        &server,
        "/whip/full",
        Some(&bob),
        "application/sdp",
        offer("sendonly"),
    )
    .await;
    let message = expect_error(second, StatusCode::SERVICE_UNAVAILABLE, "room_full").await;
    assert!(message.contains("at most 1"), "{message}");
    let elsewhere = post(
        &server,
        "/whip/other",
        Some(&server.token("other", "bob", true, false)),
        "application/sdp",
        offer("sendonly"),
    )
    .await;
    assert_eq!(
        elsewhere.status(),
        StatusCode::CREATED,
        "the limit is per room"
    );
}

#[tokio::test]
async fn peer_that_never_connects_is_reaped() {
    let server = TestServer::start_with(|c| c.connect_timeout = Duration::from_secs(1)).await;
    let token = server.token("reap", "alice", true, false);
    let response = post(
        &server,
        "/whip/reap",
        Some(&token),
        "application/sdp",
        offer("sendonly"),
    )
    .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(server.metric("convene_peers").await, 1.0);
    assert_eq!(
        server
            .wait_metric("convene_peers", 0.0, Duration::from_secs(10))
            .await,
        0.0
    );
    assert_eq!(server.metric("convene_rooms").await, 0.0);
    assert!(server.metric("convene_peers_reaped_total").await >= 1.0);
}

#[tokio::test]
async fn cors_and_options() {
    let server = TestServer::start_with(|c| {
        c.cors_allowed_origins = vec!["https://app.example".into()];
        c.ice_servers = vec![convene::config::IceServer {
            urls: vec!["turn:turn.example:3478".into()],
            username: Some("user".into()),
            credential: Some("pass".into()),
        }];
    })
    .await;
    let preflight = server
        .http
        .request(reqwest::Method::OPTIONS, server.url("/whip/r"))
        .header(header::ORIGIN, "https://app.example")
        .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
        .header(
            header::ACCESS_CONTROL_REQUEST_HEADERS,
            "authorization, content-type",
        )
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success());
    assert_eq!(
        preflight.headers()[header::ACCESS_CONTROL_ALLOW_ORIGIN],
        "https://app.example"
    );

    let options = server
        .http
        .request(reqwest::Method::OPTIONS, server.url("/whip/r"))
        .send()
        .await
        .unwrap();
    assert_eq!(options.status(), StatusCode::NO_CONTENT);
    assert_eq!(options.headers()["accept-post"], "application/sdp");
    let link = options.headers()[header::LINK].to_str().unwrap();
    assert!(
        link.starts_with("<turn:turn.example:3478>; rel=\"ice-server\"")
            && link.contains("username=\"user\""),
        "{link}"
    );

    let token = server.token("r", "alice", true, false);
    let created = server
        .http
        .post(server.url("/whip/r"))
        .header(header::ORIGIN, "https://app.example")
        .header(header::CONTENT_TYPE, "application/sdp")
        .bearer_auth(&token)
        .body(offer("sendonly"))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let exposed = created.headers()[header::ACCESS_CONTROL_EXPOSE_HEADERS]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    for name in ["location", "etag", "link", "accept-patch"] {
        assert!(exposed.contains(name), "{name} not exposed: {exposed}");
    }
    let foreign = server
        .http
        .get(server.url("/healthz"))
        .header(header::ORIGIN, "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(foreign
        .headers()
        .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
        .is_none());
}

#[tokio::test]
async fn token_cli_uses_the_servers_key() {
    let data_dir = common::TempDir::new();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_convene"))
        .args([
            "token",
            "create",
            "--room",
            "cli-room",
            "--identity",
            "carol",
            "--publish",
            "--ttl",
            "2h",
            "--data-dir",
        ])
        .arg(&data_dir.0)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    let token = stdout.lines().last().unwrap();
    let keys = TokenKeys::load_or_create("", &data_dir.0.join("jwt.key")).unwrap();
    let claims = keys.verify(token).unwrap();
    assert_eq!(
        (claims.room.as_str(), claims.sub.as_str()),
        ("cli-room", "carol")
    );
    assert!(claims.grants.publish && !claims.grants.subscribe);
    assert!(claims.exp - claims.nbf >= 7190);
}

#[cfg(unix)]
#[tokio::test]
async fn sigterm_stops_the_server_gracefully() {
    let data_dir = common::TempDir::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_convene"))
        .args([
            "serve",
            "--http",
            &format!("127.0.0.1:{port}"),
            "--media-udp-port",
            "0",
            "--log-format",
            "json",
            "--data-dir",
        ])
        .arg(&data_dir.0)
        // Its own SQLite in the temp dir, never a shared database.
        .env_remove("DATABASE_URL")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let health = format!("http://127.0.0.1:{port}/healthz");
    let mut up = false;
    for _ in 0..100 {
        if client
            .get(&health)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(up, "server did not come up");
    // SAFETY: kill(2) with a pid we spawned and a standard signal number.
    unsafe { libc::kill(child.id().unwrap() as i32, libc::SIGTERM) };
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("exits after SIGTERM")
        .unwrap();
    assert!(status.success(), "{status:?}");
}

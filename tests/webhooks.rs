//! Webhooks, end to end: a local receiver that fails its first attempts still gets every event
//! once acknowledged, each signed per Standard Webhooks (checked here with our own HMAC, the way
//! a customer's library does), and events pending at a `kill -9` arrive after the restart.

mod common;
#[path = "signaling/ws_client.rs"]
mod ws_client;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode as AxumStatus};
use base64::Engine;
use common::process::Process;
use common::{PgSchema, TempDir, TestServer};
use convene::config::WebhookEndpoint;
use hmac::{Hmac, Mac};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sha2::Sha256;
use ws_client::MediaClient;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

#[derive(Default)]
struct Received {
    /// Requests answered so far, accepted or not.
    attempts: usize,
    /// Acknowledged (2xx) deliveries: (webhook-id, event body).
    accepted: Vec<(String, Value)>,
    bad_signatures: Vec<String>,
}

/// A receiver on 127.0.0.1 that answers 500 to its first `fail_first` requests, then 204.
async fn receiver(
    port: u16,
    fail_first: usize,
) -> (Arc<Mutex<Received>>, tokio::task::JoinHandle<()>) {
    let received = Arc::new(Mutex::new(Received::default()));
    let state = received.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: String| {
            let state = state.clone();
            async move {
                let mut r = state.lock().unwrap();
                r.attempts += 1;
                if !verifies(&headers, &body) {
                    r.bad_signatures.push(body);
                    return AxumStatus::BAD_REQUEST;
                }
                if r.attempts <= fail_first {
                    return AxumStatus::INTERNAL_SERVER_ERROR;
                }
                let id = headers["webhook-id"].to_str().unwrap().to_owned();
                r.accepted.push((id, serde_json::from_str(&body).unwrap()));
                AxumStatus::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (received, task)
}

/// The documented check: HMAC-SHA256 over "id.timestamp.body" with the secret's key bytes
/// (base64 after `whsec_`), compared with each `v1,` signature; the timestamp is recent.
fn verifies(headers: &HeaderMap, body: &str) -> bool {
    let (Some(id), Some(timestamp), Some(signatures)) = (
        headers.get("webhook-id").and_then(|v| v.to_str().ok()),
        headers
            .get("webhook-timestamp")
            .and_then(|v| v.to_str().ok()),
        headers
            .get("webhook-signature")
            .and_then(|v| v.to_str().ok()),
    ) else {
        return false;
    };
    let Ok(at) = timestamp.parse::<i64>() else {
        return false;
    };
    if (chrono::Utc::now().timestamp() - at).abs() > 300 {
        return false;
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    let key = b64.decode(SECRET.trim_start_matches("whsec_")).unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
    let expected = b64.encode(mac.finalize().into_bytes());
    signatures
        .split(' ')
        .any(|s| s.strip_prefix("v1,") == Some(expected.as_str()))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn wait_for_types(received: &Arc<Mutex<Received>>, types: &[&str], within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let have: HashSet<String> = received
            .lock()
            .unwrap()
            .accepted
            .iter()
            .map(|(_, e)| e["type"].as_str().unwrap_or("").to_owned())
            .collect();
        let missing: Vec<&&str> = types.iter().filter(|t| !have.contains(**t)).collect();
        if missing.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "never delivered: {missing:?} (have {have:?})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_event_arrives_signed_despite_failing_attempts() {
    let port = free_port();
    let (received, _receiver) = receiver(port, 3).await;
    let server = TestServer::start_with(|c| {
        c.webhooks = vec![WebhookEndpoint {
            url: format!("http://127.0.0.1:{port}/hook"),
            secret: SECRET.into(),
        }];
    })
    .await;
    let host = server.user("host").await;
    let (status, meeting) = server
        .call(
            Method::POST,
            "/meetings",
            Some(&host.token),
            Some(json!({"title": "hooks"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{meeting}");
    let id = meeting["id"].as_str().unwrap().to_owned();
    let code = meeting["code"].as_str().unwrap().to_owned();
    let (status, seat) = server
        .call(
            Method::POST,
            &format!("/meetings/{code}/join"),
            Some(&host.token),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{seat}");
    let mut client =
        MediaClient::join(&server, "host", seat["join_token"].as_str().unwrap(), false).await;
    client.publish(&[("microphone", "mic")]).await;
    client.wait_publisher_connected().await;
    let recordings = format!("/meetings/{id}/recordings");
    let (status, started) = server
        .call(Method::POST, &recordings, Some(&host.token), None)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{started}");
    let (status, _) = server
        .call(
            Method::POST,
            &format!("{recordings}/{}/stop", started["id"].as_str().unwrap()),
            Some(&host.token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    client.ws.send(json!({"type": "leave"}));
    // The leave is written (participant_left) before the socket closes; ending the meeting
    // first would close the seat without it.
    assert_eq!(client.ws.closed().await.0, 1000);
    let (status, _) = server
        .call(
            Method::POST,
            &format!("/meetings/{id}/end"),
            Some(&host.token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    let types = [
        "meeting_started",
        "participant_joined",
        "track_published",
        "recording_started",
        "recording_ready",
        "track_unpublished",
        "participant_left",
        "meeting_ended",
    ];
    wait_for_types(&received, &types, Duration::from_secs(40)).await;
    let accepted = {
        let r = received.lock().unwrap();
        assert!(r.bad_signatures.is_empty(), "{:?}", r.bad_signatures);
        assert!(
            r.attempts > r.accepted.len(),
            "the first attempts failed and were retried"
        );
        r.accepted.clone()
    };
    // Acknowledged once each (the failed attempts were not acknowledged).
    let mut seen = HashMap::new();
    for (webhook_id, event) in &accepted {
        assert_eq!(event["id"], webhook_id.as_str(), "{event}");
        assert_eq!(event["data"]["meeting_id"], id.as_str(), "{event}");
        assert!(event["timestamp"].is_string());
        *seen.entry(webhook_id.clone()).or_insert(0) += 1;
    }
    assert!(seen.values().all(|n| *n == 1), "{seen:?}");
    assert!(
        server
            .metric("convene_webhook_attempts_total{result=\"retried\"}")
            .await
            >= 3.0,
        "failed attempts are counted"
    );
    // Latency from write to acknowledgement of the events delivered at their first attempt.
    let rows = server.server.state.store.webhook_rows().await.unwrap();
    let first_try: Vec<i64> = rows
        .iter()
        .filter(|r| r.attempts == 1)
        .filter_map(|r| r.delivered_at.map(|d| d - r.created_at))
        .collect();
    assert!(rows.iter().all(|r| r.delivered_at.is_some()), "{rows:?}");
    eprintln!("webhook latency at first attempt (ms): {first_try:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_pending_at_a_kill_9_arrive_after_the_restart() {
    let port = free_port();
    let data_dir = TempDir::new();
    let schema = PgSchema::create().await;
    let database_url = schema.as_ref().map(|s| s.url.clone()).unwrap_or_default();
    let hooks = format!("[{{url=\"http://127.0.0.1:{port}/hook\", secret=\"{SECRET}\"}}]");
    let env = [("CONVENE_WEBHOOKS", hooks.as_str())];
    // Nobody listens yet: events wait in the outbox.
    let server = Process::start_with(&data_dir, &database_url, &env).await;
    let host = server.register("hooks").await;
    let (status, meeting) = server
        .call("/meetings", Some(&host), Some(json!({"title": "pending"})))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{meeting}");
    let id = meeting["id"].as_str().unwrap().to_owned();
    let (status, _) = server
        .call(
            &format!("/meetings/{id}/start"),
            Some(&host),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = server
        .call(&format!("/meetings/{id}/end"), Some(&host), Some(json!({})))
        .await;
    assert_eq!(status, StatusCode::OK);
    server.kill_9();

    let (received, _receiver) = receiver(port, 0).await;
    let server = Process::start_with(&data_dir, &database_url, &env).await;
    wait_for_types(
        &received,
        &["meeting_started", "meeting_ended"],
        Duration::from_secs(40),
    )
    .await;
    let r = received.lock().unwrap();
    assert!(r.bad_signatures.is_empty());
    assert!(r
        .accepted
        .iter()
        .all(|(_, e)| e["data"]["meeting_id"] == id.as_str()));
    drop(r);
    server.terminate();
}

//! The real binary, stopped the hard way (`kill -9`) and the polite way (SIGTERM), then started
//! again on the same data: seats the dead process held are free, and a meeting nobody came back
//! to ends by its empty-meeting countdown. Runs on SQLite, and on PostgreSQL when DATABASE_URL
//! is set.

mod common;

use std::time::Duration;

use common::process::Process;
use common::{PgSchema, TempDir};
use reqwest::StatusCode;
use serde_json::{json, Value};

async fn guest_join(server: &Process, meeting: &str, name: &str) -> (StatusCode, Value) {
    server
        .call(
            &format!("/meetings/{meeting}/join"),
            None,
            Some(json!({ "display_name": name })),
        )
        .await
}

async fn seat_status(server: &Process, host: &str, meeting: &str, participant: &str) -> String {
    let (status, list) = server
        .call(
            &format!("/meetings/{meeting}/participants"),
            Some(host),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{list}");
    list["items"]
        .as_array()
        .unwrap_or_else(|| panic!("a participant list: {list}"))
        .iter()
        .find(|p| p["id"] == participant || p["participant_id"] == participant)
        .map(|p| p["status"].as_str().unwrap().to_owned())
        .unwrap_or_else(|| panic!("{participant} in {list}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seats_are_free_after_a_crash_and_after_a_graceful_stop() {
    let data_dir = TempDir::new();
    let schema = PgSchema::create().await;
    let database_url = schema.as_ref().map(|s| s.url.clone()).unwrap_or_default();

    let server = Process::start(&data_dir, &database_url).await;
    let host = server.register("host").await;
    let (status, meeting) = server
        .call(
            "/meetings",
            Some(&host),
            Some(json!({"title": "One seat", "settings": {"max_participants": 1}})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{meeting}");
    let meeting = meeting["id"].as_str().unwrap().to_owned();
    let (status, first) = guest_join(&server, &meeting, "First").await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let (status, _) = guest_join(&server, &meeting, "Second").await;
    assert_eq!(status, StatusCode::CONFLICT, "the one seat is taken");

    server.kill_9();
    let server = Process::start(&data_dir, &database_url).await;
    let (status, second) = guest_join(&server, &meeting, "Second").await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the crashed process's seat is free: {second}"
    );
    let first_id = first["participant_id"].as_str().unwrap();
    assert_eq!(
        seat_status(&server, &host, &meeting, first_id).await,
        "left"
    );

    server.terminate();
    let server = Process::start(&data_dir, &database_url).await;
    let second_id = second["participant_id"].as_str().unwrap();
    assert_eq!(
        seat_status(&server, &host, &meeting, second_id).await,
        "left"
    );
    let (status, third) = guest_join(&server, &meeting, "Third").await;
    assert_eq!(
        status,
        StatusCode::OK,
        "free after a graceful stop: {third}"
    );

    // Nobody connects: the meeting ends by its countdown.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (status, view) = server
            .call(&format!("/meetings/{meeting}"), Some(&host), None)
            .await;
        assert_eq!(status, StatusCode::OK, "{view}");
        if view["status"] == "ended" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still {}",
            view["status"]
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

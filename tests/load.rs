//! `convene load` run as its own process against a real server: it joins, counts and reports,
//! and fails clearly when the server is unreachable or refuses the token.

mod common;

use std::process::{Command, Output};

use common::TestServer;

fn load(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_convene"))
        .arg("load")
        .args(args)
        .output()
        .expect("convene load runs")
}

/// One subscriber for a second with `token`, off the test's runtime.
async fn load_with_token(url: String, token: &'static str) -> Output {
    tokio::task::spawn_blocking(move || {
        load(&[
            "--url",
            &url,
            "--token",
            token,
            "--subscribers",
            "1",
            "--seconds",
            "1",
        ])
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_subscribers_get_every_packet() {
    let server = TestServer::start().await;
    let data_dir = server.server.state.config.data_dir.display().to_string();
    let url = server.base.clone();
    let pid = std::process::id().to_string();
    let output = tokio::task::spawn_blocking(move || {
        load(&[
            "--url",
            &url,
            "--data-dir",
            &data_dir,
            "--room",
            "bench",
            "--subscribers",
            "10",
            "--video-kbps",
            "500",
            "--seconds",
            "3",
            "--warmup",
            "1s",
            "--server-pid",
            &pid,
            "--json",
        ])
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "convene load failed: {stderr}");
    let report: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("a JSON report on stdout");
    assert_eq!(report["subscribers_connected"], 10, "{report:#}");
    assert_eq!(report["subscribers_failed"], 0, "{report:#}");
    assert!(report["packets_sent"].as_u64().unwrap() > 0, "{report:#}");
    // Nothing lost: each subscriber got at least every packet sent in the window, plus at most
    // what was in flight when it opened (a frame's burst).
    let (sent, received) = (
        report["packets_sent"].as_u64().unwrap(),
        report["packets_received"].as_u64().unwrap(),
    );
    assert!(
        (10 * sent..=10 * (sent + 10)).contains(&received),
        "every subscriber got every packet: {report:#}"
    );
    assert_eq!(report["delivery_percent"], 100.0, "{report:#}");
    assert_eq!(report["loss_percent"], 0.0, "{report:#}");
    assert!(report["join_ms_p95"].as_f64().is_some(), "{report:#}");
    assert!(
        report["server_us_per_packet"].as_f64().unwrap() > 0.0,
        "{report:#}"
    );
    assert!(
        stderr.contains("subscribers connected"),
        "a progress line: {stderr}"
    );
}

#[tokio::test]
async fn an_unreachable_server_is_a_clear_failure() {
    // A port nobody listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let output = load_with_token(url, "t").await;
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("unreachable"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_is_a_clear_failure() {
    let server = TestServer::start().await;
    let url = server.base.clone();
    let output = load_with_token(url, "not-a-token").await;
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("refused the token") && stderr.contains("401"),
        "{stderr}"
    );
}

#[tokio::test]
async fn without_a_token_or_a_key_it_says_what_to_pass() {
    let empty = std::env::temp_dir().join(format!("convene-load-nokey-{}", std::process::id()));
    let dir = empty.display().to_string();
    let output = load(&[
        "--url",
        "http://127.0.0.1:9",
        "--data-dir",
        &dir,
        "--seconds",
        "1",
    ]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--data-dir"));
}

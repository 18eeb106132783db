//! Headless Chromium (Debian's, driven by playwright-core) publishes its fake camera and mic via
//! WHIP from the page Convene serves, and a second page plays the room via WHEP; the viewer must
//! decode frames (`framesDecoded > 0` from getStats). Needs `chromium` and
//! `tests/browser/node_modules` (`scripts/test` and `.ci/run` prepare both); fails, with the
//! fix in its message, when they are missing.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::client::{Kind, WhepSubscriber};
use common::TestServer;

/// Runs `tests/browser/whip_whep.mjs` against `server` with `extra` environment.
async fn run_browser_test(server: &TestServer, name: &str, extra: &[(&str, &str)]) {
    let chromium = common::browser::chromium();
    let root = common::browser::root();

    let artifacts = root.join("test-artifacts").join(name);
    let mut command = tokio::process::Command::new("node");
    command.envs(extra.iter().copied());
    let output = command
        .arg(root.join("tests/browser/whip_whep.mjs"))
        .current_dir(&root)
        .env("CONVENE_URL", &server.base)
        .env("ROOM", "browser")
        .env(
            "PUBLISH_TOKEN",
            server.token("browser", "chromium-publisher", true, false),
        )
        .env(
            "WATCH_TOKEN",
            server.token("browser", "chromium-viewer", false, true),
        )
        .env("CHROMIUM", &chromium)
        .env("ARTIFACT_DIR", &artifacts)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(90), output)
        .await
        .expect("browser test finishes")
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}\n{stderr}");
    assert!(
        output.status.success() && stdout.contains("PASS"),
        "browser test failed:\n{stdout}\n{stderr}"
    );
    assert!(
        server.metric("convene_rtp_packets_out_total").await > 0.0,
        "media went through the SFU"
    );
}

/// Chromium publishes camera and mic; a Chromium viewer decodes the video and plays the audio
/// as RED (asked of the publisher, forwarded as is), while a webrtc-rs viewer that does not take
/// RED gets plain Opus out of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_publishes_via_whip_and_another_page_decodes_via_whep() {
    let server = TestServer::start().await;
    // Waits for a publisher (none yet), then watches Chromium's.
    let plain = WhepSubscriber::connect(
        &server,
        "browser",
        &server.token("browser", "plain-viewer", false, true),
        None,
    )
    .await;
    run_browser_test(&server, "whip-whep", &[("EXPECT_AUDIO", "1")]).await;
    let audio = plain.inbox(Kind::Audio).packets;
    assert!(
        audio.len() >= 50,
        "the plain viewer got {} audio packets",
        audio.len()
    );
    assert!(
        audio.iter().all(|p| p.payload_type == 111),
        "a viewer without RED gets Opus only"
    );
    assert!(
        server
            .metric("convene_audio_red_total{sent_as=\"opus\"}")
            .await
            >= audio.len() as f64 * 0.9,
        "its Opus came out of Chromium's RED"
    );
    assert!(
        server
            .metric("convene_audio_red_total{sent_as=\"red\"}")
            .await
            >= 50.0,
        "the Chromium viewer took RED, and played it"
    );
}

/// The WHEP viewer comes first and outlives its publisher: the same session decodes a returning
/// publisher's video without a new POST.
#[tokio::test]
async fn a_chromium_viewer_decodes_a_returning_publisher_without_reposting() {
    let server = TestServer::start().await;
    run_browser_test(&server, "whep-returning", &[("RETURNING_PUBLISHER", "1")]).await;
}

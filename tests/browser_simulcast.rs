//! Simulcast in headless Chromium (tests/browser/simulcast.mjs): a page publishes three
//! encodings via WHIP, three WHEP viewers ask for one each through WHEP's layer resource and
//! decode that encoding's size, and one switches on the fly. Needs `chromium` and
//! `tests/browser/node_modules` (`scripts/test` and `.ci/run` prepare both).

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::TestServer;

#[tokio::test]
async fn chromium_viewers_receive_the_simulcast_layer_they_ask_for() {
    let chromium = common::browser::chromium();
    let root = common::browser::root();
    let server = TestServer::start().await;
    let watchers: Vec<String> = ["q", "h", "f"]
        .iter()
        .map(|rid| server.token("simulcast", &format!("viewer-{rid}"), false, true))
        .collect();
    let output = tokio::process::Command::new("node")
        .arg(root.join("tests/browser/simulcast.mjs"))
        .current_dir(&root)
        .env("CONVENE_URL", &server.base)
        .env("ROOM", "simulcast")
        .env(
            "PUBLISH_TOKEN",
            server.token("simulcast", "publisher", true, false),
        )
        .env("WATCH_TOKENS", watchers.join(","))
        .env("CHROMIUM", &chromium)
        .env("ARTIFACT_DIR", root.join("test-artifacts/simulcast"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(240), output)
        .await
        .expect("browser test finishes")
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}\n{stderr}");
    assert!(
        output.status.success() && stdout.lines().any(|l| l == "PASS"),
        "simulcast browser test failed:\n{stdout}\n{stderr}"
    );
    let switches = server
        .metric("convene_layer_switches_total{reason=\"requested\"}")
        .await;
    assert!(
        switches >= 1.0,
        "the viewers' asks were counted: {switches}"
    );
}

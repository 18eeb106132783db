//! Headless Chromium (Debian's, driven by playwright-core) publishes its fake camera and mic via
//! WHIP from the page Convene serves, and a second page plays the room via WHEP; the viewer must
//! decode frames (`framesDecoded > 0` from getStats). Needs `chromium` and
//! `tests/browser/node_modules` (`scripts/test` and `.ci/run` prepare both); fails, with the
//! fix in its message, when they are missing.

mod common;

use std::time::Duration;

use common::client::{Kind, WhepSubscriber};
use common::TestServer;

/// Runs `tests/browser/whip_whep.mjs` against `server` with `extra` environment.
async fn run_browser_test(server: &TestServer, name: &str, extra: &[(&str, &str)]) {
    let artifacts = common::browser::root().join("test-artifacts").join(name);
    let mut env = vec![
        ("CONVENE_URL", server.base.clone()),
        ("ROOM", "browser".to_owned()),
        (
            "PUBLISH_TOKEN",
            server.token("browser", "chromium-publisher", true, false),
        ),
        (
            "WATCH_TOKEN",
            server.token("browser", "chromium-viewer", false, true),
        ),
        ("ARTIFACT_DIR", artifacts.display().to_string()),
    ];
    env.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    common::browser::run_script("whip_whep.mjs", &env, Duration::from_secs(90)).await;
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

/// Chromium publishes through WHIP with relay candidates only, through the embedded TURN server
/// the answer's `Link` headers name (an ICE restart by PATCH gathers them): over UDP, then over
/// TCP; a Chromium viewer decodes it each time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_publishes_through_the_embedded_turn_over_udp_and_tcp() {
    for transport in ["udp", "tcp"] {
        let server = TestServer::start_with(|c| {
            c.turn.enabled = true;
            c.turn.listen = "127.0.0.1:0".parse().unwrap();
        })
        .await;
        let query = format!("relay=1&turn={transport}");
        run_browser_test(
            &server,
            &format!("whip-relay-{transport}"),
            &[("PUBLISH_QUERY", &query)],
        )
        .await;
        let made = server
            .metric(&format!(
                "convene_turn_allocations_total{{transport=\"{transport}\"}}"
            ))
            .await;
        assert!(made >= 1.0, "no {transport} allocation");
        let relayed = server
            .metric("convene_turn_relayed_packets_total{direction=\"to_peer\"}")
            .await;
        assert!(relayed > 100.0, "{relayed} packets relayed");
    }
}

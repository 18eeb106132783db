//! Media across a lossy link the test makes itself: `convene load` runs in a network namespace
//! (see `common::netns`) joined to the server by a veth pair, and an nftables rule inside it
//! drops a share of the video arriving there at random. Needs root, iproute2 and nftables
//! (`scripts/test` installs nftables as root; CI runs as root).

mod common;

use common::netns::{Link, Way};
use common::TestServer;

/// VP8's payload type on the load tool's viewers (webrtc-rs's default codecs).
const VP8: u8 = 96;

/// A server on the link's host end, and `convene load` (one publisher, two viewers, 1 Mbit/s
/// video) run inside the namespace against it with `way` losing 5% of the video. Returns the
/// report, what the rule dropped and what the server sent again.
async fn load_across(way: Way) -> (serde_json::Value, u64, f64, TestServer) {
    let link = Link::new();
    let server = TestServer::on_link(&link).await;
    link.drop_rtp(way, VP8, 5);
    let token = server.token("lossy", "load", true, true);
    let url = format!("http://{}", server.server.http_addr);
    let output = link.exec(
        env!("CARGO_BIN_EXE_convene"),
        &[
            "load",
            "--url",
            &url,
            "--room",
            "lossy",
            "--token",
            &token,
            "--publishers",
            "1",
            "--subscribers",
            "2",
            "--video-kbps",
            "1000",
            "--seconds",
            "6",
            "--json",
        ],
    );
    assert!(
        output.status.success(),
        "convene load failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("a JSON report");
    let dropped = link.dropped(way);
    let sent_again = server
        .metric("convene_rtp_retransmissions_total{result=\"sent\"}")
        .await;
    println!(
        "5% video loss {way:?}: {dropped} dropped, {sent_again} sent again by the server, {}% \
         delivered, {}% loss seen at the end",
        report["delivery_percent"], report["loss_percent"]
    );
    (report, dropped, sent_again, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_behind_five_percent_loss_recover_every_video_packet_by_nack() {
    let (report, dropped, sent_again, _server) = load_across(Way::In).await;
    // ~110 video packets/s to each of two viewers for 6 s and more: 5% is some 70.
    assert!(dropped >= 20, "the link dropped only {dropped}: {report}");
    assert!(
        sent_again >= dropped as f64 * 0.8,
        "{dropped} dropped, {sent_again} sent again"
    );
    let delivery = report["delivery_percent"].as_f64().expect("delivery");
    assert!(delivery >= 99.0, "{delivery}% delivered: {report}");
}

/// Loss on the publisher's uplink: the server NACKs the publisher, which sends again, and the
/// viewers (whose own link is clean) see nothing missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_behind_five_percent_loss_is_nacked_and_viewers_miss_nothing() {
    let (report, dropped, _, _server) = load_across(Way::Out).await;
    // Each packet lost upstream is lost to both viewers unless the publisher sends it again:
    // ~50 of the ~1000 packets each viewer expects would leave them near 95%.
    assert!(dropped >= 10, "the link dropped only {dropped}: {report}");
    let delivery = report["delivery_percent"].as_f64().expect("delivery");
    assert!(
        delivery >= 99.0,
        "{delivery}% delivered with {dropped} of the publisher's packets dropped: {report}"
    );
}

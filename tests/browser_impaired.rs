//! Chromium across impaired links (tests/browser/impaired.mjs): a 720p simulcast publisher
//! and a WHEP viewer, one of them in a network namespace the test makes (`common::netns`), its
//! link limited with tc tbf and/or made lossy with an nftables rule. Needs root, iproute2,
//! nftables, Chromium and playwright-core (`scripts/test` installs them as root; CI runs as
//! root). The figures (time to downgrade and climb back, worst freeze) are printed as `FIGURES`.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::netns::{Link, Way};
use common::TestServer;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// Which end sits behind the link.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
enum Behind {
    #[default]
    Viewer,
    Publisher,
}

/// What the link does during the `impair` phase, and whether it is lifted after.
#[derive(Default)]
struct Impairment {
    behind: Behind,
    /// tbf rate on the link toward (viewer) or from (publisher) the namespace, kbit/s.
    kbit: Option<u32>,
    /// Random UDP loss in the same direction, %.
    loss: Option<u8>,
    lift: bool,
    expect_downgrade: bool,
    /// Not even the lowest layer fits: expect the video paused for bandwidth and audio on.
    expect_starved: bool,
    /// Redundant audio off (the server's `audio_red = false`).
    no_red: bool,
}

/// One at a time: two Chromium pairs at once on a 2-core machine starve each other's encoders
/// and decoders, which would show as freezes the link did not cause.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn run(name: &str, impairment: Impairment) -> serde_json::Value {
    let _turn = ONE_AT_A_TIME.lock().await;
    let chromium = common::browser::chromium();
    let root = common::browser::root();
    let link = Link::new();
    let no_red = impairment.no_red;
    let server = TestServer::on_link_with(&link, |c| c.audio_red = !no_red).await;
    let inside = link.wrapper(&chromium);
    let inside = inside.to_str().expect("a UTF-8 path");
    let (publisher_chromium, viewer_chromium) = match impairment.behind {
        Behind::Viewer => (chromium.as_str(), inside),
        Behind::Publisher => (inside, chromium.as_str()),
    };
    // Toward the viewer is into the namespace when it is there, out of it when the publisher is.
    let way = match impairment.behind {
        Behind::Viewer => Way::In,
        Behind::Publisher => Way::Out,
    };
    let mut child = tokio::process::Command::new("node")
        .arg(root.join("tests/browser/impaired.mjs"))
        .current_dir(&root)
        .env("CONVENE_URL", format!("http://{}", server.server.http_addr))
        .env("ROOM", name)
        .env(
            "PUBLISH_TOKEN",
            server.token(name, "publisher", true, false),
        )
        .env("WATCH_TOKEN", server.token(name, "viewer", false, true))
        .env("CHROMIUM", publisher_chromium)
        .env("VIEWER_CHROMIUM", viewer_chromium)
        .env("LIFT", if impairment.lift { "1" } else { "0" })
        .env(
            "EXPECT_STARVED",
            if impairment.expect_starved { "1" } else { "0" },
        )
        .env(
            "EXPECT_DOWNGRADE",
            if impairment.expect_downgrade {
                "1"
            } else {
                "0"
            },
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut seen = Vec::new();
    let mut figures = serde_json::Value::Null;
    let drive = async {
        while let Some(line) = stdout.next_line().await.expect("reads the script") {
            println!("{line}");
            match line.as_str() {
                "PHASE impair" => {
                    if let Some(kbit) = impairment.kbit {
                        link.limit_rate(way, Some(kbit));
                    }
                    if let Some(loss) = impairment.loss {
                        link.drop_udp(way, loss);
                    }
                    stdin.write_all(b"impaired\n").await.unwrap();
                }
                "PHASE lift" => {
                    link.limit_rate(way, None);
                    stdin.write_all(b"lifted\n").await.unwrap();
                }
                _ => {}
            }
            if let Some(json) = line.strip_prefix("FIGURES ") {
                figures = serde_json::from_str(json).expect("figures are JSON");
            }
            seen.push(line);
        }
    };
    // CONVENE_TRACE_METRICS=1: the server's send counters every second, to tell a stall of the
    // server from one of the viewer.
    let watch = async {
        if std::env::var_os("CONVENE_TRACE_METRICS").is_none() {
            return std::future::pending::<()>().await;
        }
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let text = server.metrics().await;
            let pick: Vec<&str> = text
                .lines()
                .filter(|l| {
                    l.starts_with("convene_rtp_packets_out_total")
                        || l.starts_with("convene_forward_errors")
                        || l.starts_with("convene_udp_send_dropped")
                        || l.starts_with("convene_retransmissions")
                })
                .collect();
            println!("METRICS {pick:?}");
        }
    };
    let drive = async {
        tokio::select! {
            _ = drive => {}
            _ = watch => {}
        }
    };
    tokio::time::timeout(Duration::from_secs(240), drive)
        .await
        .expect("the browser test finishes");
    let status = child.wait().await.expect("node exits");
    let mut stderr = String::new();
    if let Some(mut err) = child.stderr.take() {
        use tokio::io::AsyncReadExt;
        let _ = err.read_to_string(&mut stderr).await;
    }
    assert!(
        status.success() && seen.iter().any(|l| l == "PASS"),
        "{name} failed:\n{}\n{stderr}",
        seen.join("\n")
    );
    if let Some(loss) = impairment.loss {
        let dropped = link.dropped(way);
        println!("{name}: {loss}% loss dropped {dropped} datagrams");
        assert!(dropped > 0, "the loss rule dropped nothing");
    }
    if impairment.expect_starved {
        let paused = server
            .metric("convene_bandwidth_pauses_total{change=\"paused\"}")
            .await;
        assert!(
            paused >= 1.0,
            "the pause for bandwidth was counted: {paused}"
        );
    }
    let estimate = server
        .metric("convene_subscriber_estimate_bits_count")
        .await;
    println!("{name}: {estimate} estimate samples; {figures}");
    figures
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "flaky at its 1 s freeze bound (an upgrade is not probed before it is made); run by hand as root: cargo test --test browser_impaired -- --include-ignored"]
async fn a_viewer_behind_600_kbits_gets_a_lower_layer_keeps_decoding_and_climbs_back() {
    let figures = run(
        "limited",
        Impairment {
            kbit: Some(600),
            lift: true,
            expect_downgrade: true,
            ..Default::default()
        },
    )
    .await;
    assert!(figures["climbed_after_s"].as_f64().is_some(), "{figures}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_with_5_percent_loss_and_a_limit_near_the_rate_keeps_decoding() {
    run(
        "lossy-viewer",
        Impairment {
            kbit: Some(2500),
            loss: Some(5),
            ..Default::default()
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "flaky: the publisher's Chromium in the namespace sometimes does not reach its top encoding within 30 s on a busy machine; run by hand as root: cargo test --test browser_impaired -- --include-ignored"]
async fn a_publisher_with_5_percent_uplink_loss_keeps_its_viewer_decoding() {
    run(
        "lossy-publisher",
        Impairment {
            behind: Behind::Publisher,
            kbit: Some(3000),
            loss: Some(5),
            ..Default::default()
        },
    )
    .await;
}

/// 120 kbit/s carries audio but not even the `q` layer with it: the viewer keeps its audio and
/// the video is paused for bandwidth (the layer resource says so; WebSocket clients get
/// `track_paused`), and the server counts the pause.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "flaky (passed alone and in one full run, failed in another; cause not yet known); run by hand as root: cargo test --test browser_impaired -- --include-ignored"]
async fn a_viewer_whose_link_cannot_carry_the_lowest_layer_keeps_audio_and_is_told() {
    run(
        "starved",
        Impairment {
            kbit: Some(120),
            expect_downgrade: true,
            expect_starved: true,
            ..Default::default()
        },
    )
    .await;
}

/// A figure, not a CI check: how much of the viewer's audio is concealed when the publisher's
/// uplink loses 10% of its packets, with redundant audio and without. Run by hand as root:
/// `cargo test --test browser_impaired red_ -- --include-ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a figure (RED vs plain Opus under uplink loss), run by hand as root"]
async fn red_keeps_audio_whole_through_publisher_uplink_loss() {
    let mut concealed = Vec::new();
    for no_red in [false, true] {
        let figures = run(
            if no_red { "plain-audio" } else { "red-audio" },
            Impairment {
                behind: Behind::Publisher,
                loss: Some(10),
                no_red,
                ..Default::default()
            },
        )
        .await;
        let percent = figures["audio_concealed_percent"]
            .as_f64()
            .unwrap_or_else(|| panic!("no audio figure: {figures}"));
        println!("AUDIO red={} concealed {percent:.2}%", !no_red);
        concealed.push(percent);
    }
    assert!(
        concealed[0] <= concealed[1],
        "RED conceals no more than plain Opus: {concealed:?}"
    );
}

//! Join latency over WebSocket signaling (issue #4): from a participant opening its socket to
//! the first RTP packet of theirs forwarded to another participant, on loopback.
//!
//! A meeting has one participant, A, connected and receiving (its subscriber connection is up).
//! Each round a participant B joins over REST (not timed), then: t0 just before B opens `/ws`;
//! B joins, declares and offers a microphone and a camera track on its publisher connection,
//! and sends a packet on each every 5 ms from the moment that connection is connected; t1 when
//! A receives B's first packet (either kind). B leaves before the next round. Both ends are
//! webrtc-rs clients (`tests/signaling/ws_client.rs`) in this process, beside the server.
//!
//! `cargo bench --bench join_latency` runs 20 rounds and prints median and p95 of t1 - t0, and
//! of the steps on the way (socket open → `joined`, → publisher answered, → publisher
//! connected); without `--bench` (a plain `cargo test` of bench targets) it runs 2 rounds.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/signaling/ws_client.rs"]
mod ws_client;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::TestServer;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use ws_client::{MediaClient, WAIT};

/// How often B sends a packet on each of its tracks once connected.
const SEND_INTERVAL: Duration = Duration::from_millis(5);

/// When each step of one join was reached, from t0 (B about to open its socket).
struct Round {
    joined: Duration,
    answered: Duration,
    publisher_connected: Duration,
    first_packet: Duration,
    first_kind: &'static str,
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let rounds = if full { 20 } else { 2 };
    // The server's per-request logs (and the clients' ICE chatter) would bury the table.
    if std::env::var_os("RUST_LOG").is_none() {
        std::env::set_var("RUST_LOG", "warn,rtc=error,rtc_ice=error,rtc_dtls=error");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let results = runtime.block_on(run(rounds));
    print_table(&results);
}

async fn run(rounds: usize) -> Vec<Round> {
    let server = TestServer::start().await;
    let host = server.user("alice").await;
    let bob = server.user("bob").await;
    let (status, meeting) = server
        .call(
            Method::POST,
            "/meetings",
            Some(&host.token),
            Some(json!({"title": "Join latency"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{meeting}");

    // A: connected, its subscriber connection answered and up, before any round starts.
    let a_seat = rest_join(&server, &meeting, &host.token).await;
    let mut a = MediaClient::join(&server, "alice", join_token(&a_seat), false).await;
    a.wait_subscriber_connected().await;
    server.wait_metric("convene_peers", 1.0, WAIT).await;

    let mut results = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let b_seat = rest_join(&server, &meeting, &bob.token).await;
        results.push(one_join(&server, &mut a, &b_seat, round).await);
        // B is gone (and A's subscriber renegotiated without its tracks) before the next round.
        assert_eq!(
            server.wait_metric("convene_peers", 1.0, WAIT).await,
            1.0,
            "round {round}: B's connections are closed"
        );
    }
    a.ws.send(json!({"type": "leave"}));
    a.ws.closed().await;
    a.close().await;
    server.server.shutdown().await;
    results
}

/// `POST /meetings/{code}/join` with an access token; the admission (join_token, ...).
async fn rest_join(server: &TestServer, meeting: &Value, access_token: &str) -> Value {
    let path = format!("/meetings/{}/join", meeting["code"].as_str().unwrap());
    let (status, body) = server
        .call(Method::POST, &path, Some(access_token), Some(json!({})))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

fn join_token(seat: &Value) -> &str {
    seat["join_token"].as_str().expect("a join token")
}

/// One timed join of B (whose REST seat is `b_seat`), seen by A; B leaves at the end.
async fn one_join(server: &TestServer, a: &mut MediaClient, b_seat: &Value, round: usize) -> Round {
    let name = format!("b{round:02}");
    let (mic, cam) = (format!("mic-{name}"), format!("cam-{name}"));

    let t0 = Instant::now();
    let mut b = MediaClient::join(server, &name, join_token(b_seat), false).await;
    let joined = b.joined_at - t0;
    b.publish(&[("microphone", mic.as_str()), ("camera", cam.as_str())])
        .await;
    let answered = t0.elapsed();
    let b_pid = b.participant_id();

    let stop = AtomicBool::new(false);
    let sender = async {
        b.wait_publisher_connected().await;
        let connected = t0.elapsed();
        let mut next = tokio::time::Instant::now();
        while !stop.load(Ordering::Relaxed) {
            b.send_round(&[mic.as_str(), cam.as_str()]).await;
            next += SEND_INTERVAL;
            tokio::time::sleep_until(next).await;
        }
        connected
    };
    let receiver = async {
        // A learns B's server track ids from `track_published` (sent when B's offer is
        // answered, before B's connection is up), then waits for a packet on either.
        let mut tracks = HashMap::new();
        while tracks.len() < 2 {
            let message =
                a.ws.expect_where("track_published", |m| m["participant_id"] == b_pid.as_str())
                    .await;
            tracks.insert(
                message["source"].as_str().unwrap().to_owned(),
                message["track_id"].as_str().unwrap().to_owned(),
            );
        }
        let first_kind = tokio::select! {
            _ = a.wait_packets(&tracks["microphone"], &name, &mic, 1, WAIT) => "audio",
            _ = a.wait_packets(&tracks["camera"], &name, &cam, 1, WAIT) => "video",
        };
        let first_packet = t0.elapsed();
        stop.store(true, Ordering::Relaxed);
        let got = a.packets_from(&tracks["microphone"], &name, &mic)
            + a.packets_from(&tracks["camera"], &name, &cam);
        assert!(
            got > 0,
            "round {round}: A received nothing from B within {WAIT:?}"
        );
        (first_packet, first_kind)
    };
    let (publisher_connected, (first_packet, first_kind)) = tokio::join!(sender, receiver);

    b.ws.send(json!({"type": "leave"}));
    let (code, reason) = b.ws.closed().await;
    assert_eq!(code, 1000, "round {round}: B's leave: {reason}");
    b.close().await;
    a.ws.expect_where("participant_left", |m| {
        m["participant_id"] == b_pid.as_str()
    })
    .await;
    Round {
        joined,
        answered,
        publisher_connected,
        first_packet,
        first_kind,
    }
}

/// Nearest-rank percentile (`p` in 0..=100) of sorted milliseconds.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

/// Picks one measured time out of a round.
type Step = fn(&Round) -> Duration;

fn print_table(results: &[Round]) {
    let rows: [(&str, Step); 5] = [
        ("socket open → `joined`", |r| r.joined),
        ("socket open → publisher answered", |r| r.answered),
        ("socket open → publisher connected", |r| {
            r.publisher_connected
        }),
        ("publisher connected → first RTP at A", |r| {
            r.first_packet.saturating_sub(r.publisher_connected)
        }),
        ("**socket open → first RTP at A**", |r| r.first_packet),
    ];
    println!();
    println!(
        "Join latency over {} joins on loopback (ms; p95 nearest-rank):",
        results.len()
    );
    println!();
    println!("| step | median | p95 | min | max |");
    println!("|---|---|---|---|---|");
    for (label, pick) in rows {
        let mut ms: Vec<f64> = results
            .iter()
            .map(|r| pick(r).as_secs_f64() * 1000.0)
            .collect();
        ms.sort_by(f64::total_cmp);
        println!(
            "| {label} | {:.1} | {:.1} | {:.1} | {:.1} |",
            median(&ms),
            percentile(&ms, 95.0),
            ms[0],
            ms[ms.len() - 1]
        );
    }
    let audio_first = results.iter().filter(|r| r.first_kind == "audio").count();
    println!();
    println!(
        "First packet at A: audio in {audio_first} joins, video in {}.",
        results.len() - audio_first
    );
}

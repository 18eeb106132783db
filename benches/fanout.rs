//! Forwarding cost through real peers: one webrtc-rs publisher sends VP8-sized packets at a fixed
//! rate, N webrtc-rs subscribers receive them via WHEP, and we report the server's CPU time per
//! forwarded packet (µs/fwd) and the delivery ratio.
//!
//! The server runs on its own single-threaded tokio runtime (threads named `convene-srv`), so its
//! CPU is read from those threads' schedstat, apart from the clients' CPU in the same process.
//! `cargo bench --bench fanout` runs the full table; under `cargo test` it runs one short round.

mod cpu;

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::client::{Kind, WhepSubscriber, WhipPublisher};
use common::TestServer;

struct Round {
    subscribers: usize,
    packets_per_second: u32,
    seconds: u32,
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let rounds: Vec<Round> = if full {
        [(1, 250), (10, 250), (25, 250), (10, 1000), (25, 1000)]
            .into_iter()
            .map(|(subscribers, packets_per_second)| Round {
                subscribers,
                packets_per_second,
                seconds: 8,
            })
            .collect()
    } else {
        vec![Round {
            subscribers: 2,
            packets_per_second: 200,
            seconds: 1,
        }]
    };

    let server_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("convene-srv")
        .enable_all()
        .build()
        .unwrap();
    let client_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    println!("| subscribers | in pkt/s | fwd/s | server µs/fwd | server CPU % | delivery |");
    println!("|---|---|---|---|---|---|");
    for round in rounds {
        let server = server_runtime.block_on(TestServer::start());
        let result = client_runtime.block_on(run_round(&server, &round));
        println!(
            "| {} | {} | {:.0} | {:.2} | {:.1} | {:.2}% |",
            round.subscribers,
            round.packets_per_second,
            result.forwarded as f64 / result.wall.as_secs_f64(),
            result.server_cpu.as_secs_f64() * 1e6 / result.forwarded.max(1) as f64,
            result.server_cpu.as_secs_f64() * 100.0 / result.wall.as_secs_f64(),
            result.delivery * 100.0,
        );
        assert!(
            result.delivery > 0.9,
            "delivery collapsed: {:.3}",
            result.delivery
        );
        server_runtime.block_on(server.server.shutdown());
    }
}

struct RoundResult {
    forwarded: u64,
    server_cpu: Duration,
    wall: Duration,
    delivery: f64,
}

async fn run_round(server: &TestServer, round: &Round) -> RoundResult {
    let publisher = WhipPublisher::connect(
        server,
        "bench",
        &server.token("bench", "publisher", true, false),
    )
    .await;
    let mut subscribers = Vec::new();
    for i in 0..round.subscribers {
        let token = server.token("bench", &format!("viewer-{i}"), false, true);
        subscribers.push(WhepSubscriber::connect(server, "bench", &token, None).await);
    }
    let total = round.packets_per_second * round.seconds;
    let payload = Bytes::from(vec![0x5A; 1200]);
    let interval = Duration::from_secs(1) / round.packets_per_second;

    let forwarded_before = server.metric("convene_rtp_packets_out_total").await as u64;
    let cpu_before = cpu::threads_cpu("convene-srv");
    let started = Instant::now();
    let mut next = tokio::time::Instant::now();
    for sequence in 0..total {
        publisher
            .send(Kind::Video, sequence as u16, payload.clone())
            .await;
        next += interval;
        tokio::time::sleep_until(next).await;
    }
    // Let the last packets drain before reading the counters.
    let expected = total as usize;
    for subscriber in &subscribers {
        subscriber
            .wait_packets(Kind::Video, expected, Duration::from_secs(2))
            .await;
    }
    let wall = started.elapsed();
    let server_cpu = cpu::threads_cpu("convene-srv") - cpu_before;
    let forwarded = server.metric("convene_rtp_packets_out_total").await as u64 - forwarded_before;
    let received: usize = subscribers
        .iter()
        .map(|s| s.inbox(Kind::Video).packets.len())
        .sum();
    let delivery = received as f64 / (expected * subscribers.len()) as f64;
    let _ = publisher.delete().await;
    RoundResult {
        forwarded,
        server_cpu,
        wall,
        delivery,
    }
}

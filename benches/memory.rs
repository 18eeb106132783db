//! Memory after load: bursts of 2000 WHIP sessions that never connect (reaped after
//! `connect_timeout`), five times, on a server in this process; prints the resident set size
//! (VmRSS) at start, at each burst's peak, and once each burst is released. Whether RSS comes back
//! down tells allocator high-water (freed but kept by malloc) from a leak (still reachable).
//!
//!   cargo bench --bench memory [-- <peers per burst> <bursts> [notrim]]
//!
//! `notrim` sets `memory_trim_after_peers = 0` (freed memory stays with the allocator). Under
//! `cargo test` (no `--bench` argument) it runs one small burst, to keep the path working.

use std::time::{Duration, Instant};

use convene::config::Config;
use convene::domain::token::{Grants, JoinClaims};
use convene::Server;

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

/// A WHIP offer with audio and video; `n` makes its ICE credentials its own.
fn offer(n: usize) -> String {
    let fingerprint = (0..32)
        .map(|i| format!("{:02X}", i * 7 % 256))
        .collect::<Vec<_>>()
        .join(":");
    let section = |kind: &str, mid: u8, pt: u8, rtpmap: &str| {
        format!(
            "m={kind} 9 UDP/TLS/RTP/SAVPF {pt}\r\nc=IN IP4 0.0.0.0\r\na=rtcp:9 IN IP4 0.0.0.0\r\n\
             a=ice-ufrag:u{n:07}\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n\
             a=fingerprint:sha-256 {fingerprint}\r\na=setup:actpass\r\na=mid:{mid}\r\na=sendonly\r\n\
             a=msid:stream {kind}0\r\na=rtcp-mux\r\na=rtpmap:{pt} {rtpmap}\r\n\
             a=ssrc:{ssrc} cname:load\r\n",
            ssrc = 1000 + u32::from(mid)
        )
    };
    format!(
        "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0 1\r\n{}{}",
        section("audio", 0, 111, "opus/48000/2"),
        section("video", 1, 96, "VP8/90000"),
    )
}

async fn peers(http: &reqwest::Client, base: &str) -> f64 {
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("convene_peers "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(-1.0)
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let full = std::env::args().any(|a| a == "--bench");
    let per_burst = args
        .first()
        .copied()
        .unwrap_or(if full { 2000 } else { 50 });
    let bursts = args.get(1).copied().unwrap_or(if full { 5 } else { 1 });
    let trim = !std::env::args().any(|a| a == "notrim");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let data = std::env::temp_dir().join(format!("convene-memory-{}", std::process::id()));
        let config = Config {
            http: "127.0.0.1:0".parse().unwrap(),
            media_udp_port: 0,
            media_bind_ip: "127.0.0.1".parse().unwrap(),
            data_dir: data.clone(),
            connect_timeout: Duration::from_secs(2),
            max_peers: per_burst + 100,
            max_sessions_per_identity: per_burst + 100,
            rate_limit_media_per_minute: 0,
            rate_limit_media_per_identity_per_minute: 0,
            memory_trim_after_peers: if trim { 100 } else { 0 },
            ..Config::default()
        };
        let server = Server::start(config).await.unwrap();
        let base = format!("http://{}", server.http_addr);
        let token = server.state.keys.sign(&JoinClaims::new(
            "burst",
            "loader",
            Grants {
                publish: true,
                ..Default::default()
            },
            Duration::from_secs(3600),
        ));
        let http = reqwest::Client::new();
        println!("memory_trim_after_peers = {}; start: {:.1} MiB", if trim { 100 } else { 0 }, rss_mib());
        for burst in 1..=bursts {
            let started = Instant::now();
            let mut created = 0;
            for chunk in (0..per_burst).collect::<Vec<_>>().chunks(32) {
                let posts = chunk.iter().map(|n| {
                    http.post(format!("{base}/whip/burst"))
                        .bearer_auth(&token)
                        .header("content-type", "application/sdp")
                        .body(offer(burst * 100_000 + n))
                        .send()
                });
                for response in futures_util::future::join_all(posts).await {
                    match response {
                        Ok(r) if r.status().as_u16() == 201 => created += 1,
                        Ok(r) if created == 0 => {
                            let status = r.status();
                            eprintln!("refused: {status} {}", r.text().await.unwrap_or_default());
                        }
                        _ => {}
                    }
                }
            }
            let peak = rss_mib();
            while peers(&http, &base).await > 0.0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            // Upkeep looks every second; give it a few.
            tokio::time::sleep(Duration::from_millis(3_000)).await;
            println!(
                "burst {burst}: {created} sessions in {:.1}s, peak {peak:.1} MiB, released {:.1} MiB",
                started.elapsed().as_secs_f64(),
                rss_mib()
            );
        }
        server.shutdown().await;
        let _ = std::fs::remove_dir_all(data);
    });
}

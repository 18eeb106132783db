//! What the embedded TURN server adds per relayed packet: a client bound to a channel sends one
//! 1,200-byte ChannelData at a time to a UDP echo peer through the server and waits for it to
//! come back (two relayed packets per round trip), then the same exchange goes direct. Reports
//! the round trip both ways (the difference is the latency two relay hops add) and the TURN
//! server's own CPU per relayed packet (its runtime's threads, from schedstat).
//!
//! `cargo bench --bench turn` (loopback; the client, the echo and the server share 2 cores).

mod cpu;

#[path = "../tests/common/turn_client.rs"]
#[allow(dead_code)]
mod turn_client;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use convene::config::Config;
use convene::metrics::Metrics;
use convene::turn::{MediaAddresses, Turn};
use rtc::stun::message::METHOD_CHANNEL_BIND;
use rtc::turn::proto::channum::ChannelNumber;
use rtc::turn::proto::peeraddr::PeerAddress;
use turn_client::{RawClient, Wire};

const SECRET: &str = "bench-turn-secret";
const ROUND_TRIPS: usize = 20_000;
const PAYLOAD: usize = 1_200;
const CHANNEL: u16 = 0x4000;

fn main() {
    // The echo peer: every datagram straight back.
    let echo = UdpSocket::bind("127.0.0.1:0").unwrap();
    let echo_addr = echo.local_addr().unwrap();
    std::thread::Builder::new()
        .name("echo".into())
        .spawn(move || {
            let mut buf = [0u8; 2048];
            while let Ok((n, from)) = echo.recv_from(&mut buf) {
                let _ = echo.send_to(&buf[..n], from);
            }
        })
        .unwrap();

    let server_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("convene-turn")
        .enable_all()
        .build()
        .unwrap();
    let mut config = Config::default();
    config.turn.enabled = true;
    config.turn.listen = "127.0.0.1:0".parse().unwrap();
    // The echo is no Convene media address: allowed for the bench only.
    config.turn.allowed_peer_networks = vec!["127.0.0.0/8".parse().unwrap()];
    let media = MediaAddresses {
        announced: vec!["127.0.0.1".parse().unwrap()],
        ports: Vec::new(),
        bind: "127.0.0.1".parse().unwrap(),
    };
    let turn = server_runtime
        .block_on(Turn::start(
            &config,
            SECRET.as_bytes(),
            &media,
            Metrics::new(),
        ))
        .unwrap();

    let client_runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let socket = client_runtime.block_on(async {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut client = RawClient::new(Wire::Udp(socket, turn.udp));
        client.allocate(None).await;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let c = convene::turn::credentials::issue(SECRET.as_bytes(), "bench", 3600, now);
        let credential = Some((c.username.as_str(), c.password.as_str()));
        let answer = client.allocate(credential).await;
        assert_eq!(answer.code, None, "{}", answer.msg);
        let bind = client.request(
            METHOD_CHANNEL_BIND,
            vec![
                Box::new(ChannelNumber(CHANNEL)),
                Box::new(PeerAddress {
                    ip: echo_addr.ip(),
                    port: echo_addr.port(),
                }),
            ],
            credential,
        );
        assert_eq!(client.exchange(&bind).await.code, None);
        let Wire::Udp(socket, _) = client.wire else {
            unreachable!()
        };
        socket.into_std().unwrap()
    });
    socket.set_nonblocking(false).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();

    let mut frame = Vec::with_capacity(4 + PAYLOAD);
    frame.extend_from_slice(&CHANNEL.to_be_bytes());
    frame.extend_from_slice(&(PAYLOAD as u16).to_be_bytes());
    frame.resize(4 + PAYLOAD, 0xAB);
    let relayed = round_trips(&socket, turn.udp, &frame);
    let direct_socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    direct_socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let direct = round_trips(&direct_socket, echo_addr, &frame[4..]);
    let added = relayed.rtt.saturating_sub(direct.rtt);
    let busy = windowed(&socket, turn.udp, &frame);
    println!(
        "turn: {ROUND_TRIPS} round trips of {PAYLOAD} B: via TURN {:.1} µs, direct {:.1} µs: \
         +{:.1} µs per round trip ({:.1} µs per relay hop); TURN server CPU {:.2} µs per relayed \
         packet ({} relayed, {} lost)",
        micros(relayed.rtt),
        micros(direct.rtt),
        micros(added),
        micros(added) / 2.0,
        micros(relayed.server_cpu) / (2 * relayed.returned) as f64,
        2 * relayed.returned,
        ROUND_TRIPS - relayed.returned,
    );
    println!(
        "turn: {WINDOWED} packets of {PAYLOAD} B with {WINDOW} in flight: {:.0} relayed/s, TURN \
         server CPU {:.2} µs per relayed packet ({} of {} came back)",
        (2 * busy.returned) as f64 / busy.wall.as_secs_f64(),
        micros(busy.server_cpu) / (2 * busy.returned).max(1) as f64,
        busy.returned,
        WINDOWED,
    );
    drop(turn);
}

const WINDOWED: usize = 100_000;
const WINDOW: usize = 32;

struct Busy {
    wall: Duration,
    server_cpu: Duration,
    returned: usize,
}

/// Keeps [`WINDOW`] packets in flight: the steady-state cost, without a wake-up per packet.
fn windowed(socket: &UdpSocket, to: SocketAddr, datagram: &[u8]) -> Busy {
    let mut buf = [0u8; 2048];
    let cpu = cpu::threads_cpu("convene-turn");
    let started = Instant::now();
    let mut returned = 0;
    for sent in 0..WINDOWED {
        socket.send_to(datagram, to).unwrap();
        if sent >= WINDOW && socket.recv_from(&mut buf).is_ok() {
            returned += 1;
        }
    }
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    while socket.recv_from(&mut buf).is_ok() {
        returned += 1;
    }
    Busy {
        wall: started.elapsed(),
        server_cpu: cpu::threads_cpu("convene-turn") - cpu,
        returned,
    }
}

struct Run {
    rtt: Duration,
    server_cpu: Duration,
    returned: usize,
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn round_trips(socket: &UdpSocket, to: SocketAddr, datagram: &[u8]) -> Run {
    let mut buf = [0u8; 2048];
    // Warm up: caches, the server's maps, the scheduler.
    for _ in 0..500 {
        socket.send_to(datagram, to).unwrap();
        let _ = socket.recv_from(&mut buf);
    }
    let cpu = cpu::threads_cpu("convene-turn");
    let started = Instant::now();
    let mut returned = 0;
    for _ in 0..ROUND_TRIPS {
        socket.send_to(datagram, to).unwrap();
        if socket.recv_from(&mut buf).is_ok() {
            returned += 1;
        }
    }
    Run {
        rtt: started.elapsed() / ROUND_TRIPS as u32,
        server_cpu: cpu::threads_cpu("convene-turn") - cpu,
        returned,
    }
}

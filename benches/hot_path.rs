//! Per-packet costs of Convene's own code on the forwarding path: the per-subscriber header
//! rewrite, the datagram demultiplexer, and join-token verification (per request, not packet).
//! End-to-end forwarding cost through real peers is measured by `benches/fanout.rs`.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use convene::domain::token::{Grants, JoinClaims, TokenKeys};
use convene::ids::{PeerId, TrackId};
use convene::sfu::demux::Demux;
use convene::sfu::subscriber::DownTrack;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use rtc::rtp::header::{Extension, Header};
use rtc::rtp::Packet;
use rtc::rtp_transceiver::rtp_sender::{RTCRtpCodec, RtpCodecKind};

fn inbound_packet() -> Packet {
    Packet {
        header: Header {
            version: 2,
            marker: true,
            payload_type: 96,
            sequence_number: 4242,
            timestamp: 90_000,
            ssrc: 0x1234_5678,
            extension: true,
            extension_profile: 0xBEDE,
            extensions: vec![Extension {
                id: 3,
                payload: Bytes::from_static(&[1, 2, 3]),
            }],
            ..Default::default()
        },
        payload: Bytes::from(vec![0xAB; 1200]),
    }
}

fn rewrite(c: &mut Criterion) {
    let packet = inbound_packet();
    let mut down_tracks: Vec<DownTrack> = (0..50)
        .map(|i| {
            // A VP8 leg, as most video legs are: its descriptor is read per packet.
            let mut down = DownTrack::new(
                TrackId(1),
                Default::default(),
                format!("t1-{i}"),
                1000 + i,
                RtpCodecKind::Video,
                &RTCRtpCodec {
                    mime_type: "video/VP8".into(),
                    clock_rate: 90_000,
                    ..Default::default()
                },
            );
            down.payload_type = Some(96);
            down
        })
        .collect();
    let mut group = c.benchmark_group("fanout_rewrite");
    group.throughput(Throughput::Elements(down_tracks.len() as u64));
    group.bench_function("50_subscribers", |b| {
        b.iter(|| {
            let now = std::time::Instant::now();
            for down in &mut down_tracks {
                black_box(down.rewrite(96, black_box(&packet), now));
            }
        })
    });
    group.finish();
}

fn demux(c: &mut Criterion) {
    let mut demux = Demux::default();
    let peers: Vec<(SocketAddr, PeerId)> = (0..1000u16)
        .map(|i| {
            (
                SocketAddr::from(([127, 0, 0, 1], 10_000 + i)),
                PeerId::new(),
            )
        })
        .collect();
    for (i, (addr, peer)) in peers.iter().enumerate() {
        let ufrag = format!("ufrag{i}");
        demux.bind_ufrag(&ufrag, PASSWORD, *peer);
        demux.route(*addr, &stun_request(&ufrag)).expect("bound");
    }
    let srtp = [0x80u8; 1200];
    let target = peers[517].0;
    c.bench_function("demux_media_datagram_1000_peers", |b| {
        b.iter(|| black_box(demux.route(black_box(target), black_box(&srtp))))
    });
    // A connectivity check (consent freshness sends one every few seconds per peer): parse and
    // verify MESSAGE-INTEGRITY (HMAC-SHA1).
    let check = stun_request("ufrag517");
    c.bench_function("demux_verified_stun_check_1000_peers", |b| {
        b.iter(|| black_box(demux.route(black_box(target), black_box(&check))))
    });
}

const PASSWORD: &str = "bench-ice-password-0123456789";

/// A Binding request with USERNAME and MESSAGE-INTEGRITY under [`PASSWORD`].
fn stun_request(ufrag: &str) -> Vec<u8> {
    use hmac::Mac;
    let username = format!("{ufrag}:client");
    let mut attrs = vec![0x00, 0x06];
    attrs.extend_from_slice(&(username.len() as u16).to_be_bytes());
    attrs.extend_from_slice(username.as_bytes());
    while attrs.len() % 4 != 0 {
        attrs.push(0);
    }
    let mut msg = vec![0x00, 0x01];
    msg.extend_from_slice(&((attrs.len() + 24) as u16).to_be_bytes());
    msg.extend_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
    msg.extend_from_slice(&[9; 12]);
    msg.extend_from_slice(&attrs);
    let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(PASSWORD.as_bytes()).unwrap();
    mac.update(&msg);
    let tag = mac.finalize().into_bytes();
    msg.extend_from_slice(&[0x00, 0x08, 0x00, 0x14]);
    msg.extend_from_slice(&tag);
    msg
}

fn token(c: &mut Criterion) {
    let keys = TokenKeys::from_secret(b"bench-secret");
    let grants = Grants {
        publish: true,
        subscribe: true,
        ..Default::default()
    };
    let token = keys.sign(&JoinClaims::new(
        "room",
        "alice",
        grants,
        Duration::from_secs(600),
    ));
    c.bench_function("join_token_verify", |b| {
        b.iter(|| black_box(keys.verify(black_box(&token)).unwrap()))
    });
}

/// One subscriber's allocation (every 250 ms per subscriber): 12 video tracks of three layers
/// and one of one, shared from an estimate that fits some of them.
fn allocation(c: &mut Criterion) {
    use convene::sfu::allocator::{allocate, Demand};
    let demands: Vec<Demand> = (0..13)
        .map(|slot| Demand {
            slot,
            priority: (slot % 3) as u8,
            options: if slot == 12 {
                vec![(0, 900_000)]
            } else {
                vec![(0, 150_000), (1, 500_000), (2, 1_500_000)]
            },
            current: Some(0),
        })
        .collect();
    c.bench_function("allocate_13_tracks", |b| {
        b.iter(|| allocate(black_box(4_000_000), black_box(&demands)))
    });
}

criterion_group!(benches, rewrite, demux, token, allocation);
criterion_main!(benches);

//! Redundant audio (RFC 2198 RED around Opus) through a real server, with webrtc-rs clients:
//! a publisher that offers RED is asked to send it, a viewer that accepts RED receives it as
//! sent, a viewer that does not gets plain Opus, with the frames of packets the publisher's
//! uplink lost rebuilt from the redundancy; malformed RED is dropped, not forwarded.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::client::{Kind, WhepSubscriber, WhipPublisher, RED_PAYLOAD_TYPE};
use common::TestServer;

const OPUS: u8 = 111;
/// 20 ms of 48 kHz audio: the test publisher's timestamp step per packet.
const FRAME_TICKS: u16 = 960;
const FRAMES: u16 = 120;
/// Sequence numbers the publisher never sends, as if its uplink had lost them.
const LOST: [u16; 4] = [30, 61, 62, 90];
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// Frame `n`'s Opus bytes: distinct per frame, so each can be recognised wherever it lands.
fn frame(n: u16) -> Vec<u8> {
    let mut bytes = vec![0xf8, (n >> 8) as u8, n as u8];
    bytes.extend(std::iter::repeat_n(n as u8, 40 + usize::from(n % 7)));
    bytes
}

/// A RED payload as Chromium builds it: `redundant` earlier frames (offset, bytes) oldest
/// first, then the primary.
fn red(redundant: &[(u16, Vec<u8>)], primary: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for (offset, data) in redundant {
        out.push(0x80 | OPUS);
        out.push((offset >> 6) as u8);
        out.push((((offset & 0x3f) << 2) as u8) | ((data.len() >> 8) as u8 & 0x03));
        out.push(data.len() as u8);
    }
    out.push(OPUS);
    for (_, data) in redundant {
        out.extend_from_slice(data);
    }
    out.extend_from_slice(primary);
    out
}

/// Packet `n` of the stream: frame `n`, with frames `n-2` and `n-1` as redundancy.
fn packet(n: u16) -> Vec<u8> {
    let redundant: Vec<(u16, Vec<u8>)> = [2u16, 1]
        .into_iter()
        .filter(|back| n >= *back)
        .map(|back| (back * FRAME_TICKS, frame(n - back)))
        .collect();
    red(&redundant, &frame(n))
}

/// The audio m-line's formats, in order, from an SDP.
fn audio_formats(sdp: &str) -> Vec<u8> {
    sdp.lines()
        .find_map(|line| line.strip_prefix("m=audio "))
        .map(|rest| {
            rest.split_whitespace()
                .skip(2)
                .filter_map(|f| f.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn red_goes_to_those_that_take_it_and_plain_opus_with_losses_rebuilt_to_the_others() {
    let server = TestServer::start().await;
    let publisher =
        WhipPublisher::connect_with_red(&server, "r", &server.token("r", "pub", true, false)).await;
    let answer = publisher.peer.remote_sdp().await;
    assert_eq!(
        audio_formats(&answer).first(),
        Some(&RED_PAYLOAD_TYPE),
        "the answer leads with RED so that the publisher sends it:\n{answer}"
    );

    let viewer = server.token("r", "viewer", false, true);
    let with_red = WhepSubscriber::connect_with_red(&server, "r", &viewer).await;
    let plain = WhepSubscriber::connect(&server, "r", &viewer, None).await;

    let sent: Vec<u16> = (0..FRAMES).filter(|n| !LOST.contains(n)).collect();
    for n in &sent {
        publisher.send_red(*n, packet(*n)).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // The RED viewer: every packet sent, as sent (its numbering of Opus is the publisher's).
    let count = with_red
        .wait_packets(Kind::Audio, sent.len(), DELIVERY_TIMEOUT)
        .await;
    let inbox = with_red.inbox(Kind::Audio);
    assert!(count >= sent.len() * 95 / 100, "RED viewer got {count}");
    assert!(
        inbox
            .packets
            .iter()
            .all(|p| p.payload_type == RED_PAYLOAD_TYPE),
        "RED stays RED"
    );
    let red_payloads: Vec<Bytes> = inbox.packets.iter().map(|p| p.payload.clone()).collect();
    for n in &sent {
        assert!(
            red_payloads.iter().any(|p| p[..] == packet(*n)[..]) || count < sent.len(),
            "RED packet {n} arrived unchanged"
        );
    }

    // The plain viewer: Opus only, every frame, the lost ones rebuilt in their place.
    let wanted = usize::from(FRAMES);
    let count = plain
        .wait_packets(Kind::Audio, wanted, DELIVERY_TIMEOUT)
        .await;
    let inbox = plain.inbox(Kind::Audio);
    assert!(
        inbox.packets.iter().all(|p| p.payload_type == OPUS),
        "a viewer without RED gets Opus only"
    );
    let frames: Vec<&[u8]> = inbox.packets.iter().map(|p| &p.payload[..]).collect();
    for n in LOST {
        assert!(
            frames.contains(&&frame(n)[..]),
            "frame {n}, lost before the SFU, was rebuilt from redundancy ({count} packets)"
        );
    }
    assert!(
        count >= wanted * 95 / 100,
        "plain viewer got {count} of {wanted}"
    );
    // In order and contiguous: each frame in the slot of its sequence number.
    let first = &inbox.packets[0];
    let first_frame = u16::from_be_bytes([first.payload[1], first.payload[2]]);
    for p in &inbox.packets {
        let n = u16::from_be_bytes([p.payload[1], p.payload[2]]);
        assert_eq!(&p.payload[..], &frame(n)[..], "a whole frame, nothing else");
        assert_eq!(
            p.sequence.wrapping_sub(first.sequence),
            n - first_frame,
            "frame {n} in its own sequence slot"
        );
    }
    assert_eq!(
        server
            .metric("convene_audio_red_total{sent_as=\"recovered\"}")
            .await,
        LOST.len() as f64
    );

    // Garbage labelled RED is dropped for both and counted. The next good packet carries the
    // two dropped frames as redundancy, so the plain viewer gets them back as well.
    publisher.send_red(FRAMES, vec![0x80 | OPUS, 0, 0]).await;
    publisher
        .send_red(FRAMES + 1, vec![0x80 | OPUS, 0, 4, 200, OPUS, 1])
        .await;
    publisher.send_red(FRAMES + 2, packet(FRAMES + 2)).await;
    let after = plain
        .wait_packets(Kind::Audio, count + 3, DELIVERY_TIMEOUT)
        .await;
    assert_eq!(after, count + 3, "the stream goes on after malformed RED");
    assert_eq!(
        server
            .metric("convene_forward_errors_total{reason=\"malformed_red\"}")
            .await,
        2.0
    );
    let packets = plain.inbox(Kind::Audio).packets;
    let tail: Vec<&[u8]> = packets[count..].iter().map(|p| &p.payload[..]).collect();
    let expected: Vec<Vec<u8>> = (FRAMES..FRAMES + 3).map(frame).collect();
    assert_eq!(tail, expected.iter().map(Vec::as_slice).collect::<Vec<_>>());
    // An empty payload (Chromium's padding-only packets) is not malformed RED: it goes on.
    publisher.send_red(FRAMES + 3, Bytes::new()).await;
    publisher.send_red(FRAMES + 4, packet(FRAMES + 4)).await;
    plain
        .wait_packets(Kind::Audio, count + 4, DELIVERY_TIMEOUT)
        .await;
    assert_eq!(
        server
            .metric("convene_forward_errors_total{reason=\"malformed_red\"}")
            .await,
        2.0
    );
    let with_red_count = with_red.inbox(Kind::Audio).packets.len();
    assert!(
        with_red
            .inbox(Kind::Audio)
            .packets
            .iter()
            .all(|p| p.payload[..] != [0x80 | OPUS, 0, 0][..]),
        "malformed RED is not forwarded ({with_red_count} packets)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_audio_red_off_the_answer_keeps_opus_first() {
    let server = TestServer::start_with(|config| config.audio_red = false).await;
    let publisher =
        WhipPublisher::connect_with_red(&server, "r", &server.token("r", "pub", true, false)).await;
    let formats = audio_formats(&publisher.peer.remote_sdp().await);
    assert_eq!(formats.first(), Some(&OPUS));
    assert!(!formats.contains(&RED_PAYLOAD_TYPE));
}

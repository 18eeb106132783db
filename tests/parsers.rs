//! Property tests of every parser of network input (the fuzz targets of `fuzz/` run the same
//! functions for longer, by hand): arbitrary and near-valid input never panics, and the few
//! promises each parser makes hold. Crashes the fuzzers find are pinned here as regressions.

use std::net::SocketAddr;

use convene::ids::PeerId;
use convene::sfu::demux::{stun_routing, Demux, Unrouted};
use convene::sfu::ingress::{classify, DatagramKind};
use proptest::prelude::*;
use rtc::shared::marshal::Unmarshal;

/// A STUN-shaped message: header, then attributes of random types and contents.
fn stun_like() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<u16>(),
        prop::collection::vec(
            (any::<u16>(), prop::collection::vec(any::<u8>(), 0..40)),
            0..6,
        ),
        any::<bool>(),
    )
        .prop_map(|(message_type, attributes, lie_about_length)| {
            let mut body = Vec::new();
            for (kind, value) in attributes {
                body.extend_from_slice(&kind.to_be_bytes());
                body.extend_from_slice(&(value.len() as u16).to_be_bytes());
                body.extend_from_slice(&value);
                while body.len() % 4 != 0 {
                    body.push(0);
                }
            }
            let mut message = (message_type & 0x3FFF).to_be_bytes().to_vec();
            let length = if lie_about_length {
                body.len() + 8
            } else {
                body.len()
            };
            message.extend_from_slice(&(length as u16).to_be_bytes());
            message.extend_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
            message.extend_from_slice(&[1u8; 12]);
            message.extend_from_slice(&body);
            message
        })
}

/// SDP-shaped text: lines of the kinds we read, with random values.
fn sdp_like() -> impl Strategy<Value = String> {
    let line = prop_oneof![
        "m=(audio|video|application) [0-9]{1,5} [A-Z/]{0,20}( [0-9]{1,3}){0,4}",
        "a=rtpmap:[0-9]{1,3} [A-Za-z0-9]{0,6}/[0-9]{0,6}(/[0-9])?",
        "a=fmtp:[0-9]{1,3} [ -~]{0,30}",
        "a=fingerprint:[a-z0-9-]{0,8} [0-9A-Fa-f:]{0,100}",
        "a=ice-(ufrag|pwd):[ -~]{0,24}",
        "a=(sendonly|recvonly|sendrecv|inactive)",
        "a=msid:[ -~]{0,20}",
        "a=mid:[ -~]{0,8}",
        "a=candidate:[ -~]{0,80}",
        "[ -~]{0,40}",
    ];
    // Behind a valid session header, so the parser reaches the lines.
    prop::collection::vec(line, 0..30).prop_map(|lines| {
        format!(
            "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n{}",
            lines.join("\r\n")
        )
    })
}

proptest! {
    #[test]
    fn demux_binds_nothing_without_the_password(datagram in prop_oneof![
        stun_like(),
        prop::collection::vec(any::<u8>(), 0..200),
    ]) {
        let _ = stun_routing(&datagram);
        let mut demux = Demux::new(2);
        let peer = PeerId::new();
        demux.bind_ufrag("srv1", "secret-the-test-never-signs-with", peer);
        let source = SocketAddr::from(([127, 0, 0, 1], 4000));
        let routed = demux.route(source, &datagram);
        prop_assert!(routed.is_err(), "routed {:?}", routed);
        prop_assert_eq!(demux.bound_addresses(), 0);
    }

    #[test]
    fn sdp_scanners_take_anything(text in prop_oneof![sdp_like(), "\\PC{0,300}"]) {
        if let Ok(sdp) = convene::sfu::sdp::Sdp::parse(&text) {
            let _ = sdp.check_offer();
            for codec in sdp.offered_codecs().into_iter().filter_map(|(_, c)| c) {
                prop_assert!(codec.mime_type.starts_with("audio/") || codec.mime_type.starts_with("video/"));
            }
            let _ = sdp.sending_tracks();
            let _ = sdp.red_payload_types();
            let _ = sdp.answer_fragment();
            let _ = sdp.restarted("u", "p", &convene::sfu::IceFragment::default());
        }
        if let Ok(fragment) = convene::sfu::sdp::parse_fragment(&text) {
            prop_assert!(fragment.candidates.len() <= convene::sfu::sdp::MAX_FRAGMENT_CANDIDATES);
        }
    }

    #[test]
    fn signaling_messages_parse_or_are_refused_with_a_code(text in prop_oneof![
        r#"\{"type": ?"(join|offer|answer|candidate|publish|unpublish|subscribe|unsubscribe|mute|chat|typing|moderate|leave|ping|raise_hand|lower_hand|nope)"(, ?"[a-z_]{1,12}": ?("[ -~]{0,20}"|[0-9]{1,6}|true|null|\[\]|\{\}))*(, ?"ref": ?"[0-9]{1,3}")?\}"#,
        "\\PC{0,200}",
    ]) {
        match convene::signaling::protocol::parse(&text) {
            Ok(_) => {}
            Err(error) => prop_assert!(!error.code.is_empty()),
        }
    }

    #[test]
    fn media_ingress_classifies_and_parses_anything(datagram in prop::collection::vec(any::<u8>(), 0..300)) {
        match classify(&datagram) {
            DatagramKind::Rtp => {
                let _ = rtc::rtp::Packet::unmarshal(&mut &datagram[..]);
            }
            DatagramKind::Rtcp => {
                if let Ok(packets) = rtc::rtcp::packet::unmarshal(&mut &datagram[..]) {
                    let _ = convene::sfu::rtcp::classify(&packets);
                }
            }
            _ => {}
        }
    }

    #[test]
    fn red_payloads_parse_within_bounds_or_are_refused(payload in prop_oneof![
        prop::collection::vec(any::<u8>(), 0..300),
        // Near-valid: up to five block headers (F bit set) with random lengths, then data.
        (prop::collection::vec((any::<u16>(), 0usize..1100), 0..6), prop::collection::vec(any::<u8>(), 0..300))
            .prop_map(|(blocks, data)| {
                let mut out = Vec::new();
                for (offset, length) in blocks {
                    out.extend_from_slice(&[0x80 | 111, (offset >> 8) as u8, (offset as u8 & 0xfc) | (length >> 8) as u8 & 3, length as u8]);
                }
                out.push(111);
                out.extend_from_slice(&data);
                out
            }),
    ]) {
        use convene::sfu::red::{block, Red, MAX_REDUNDANT};
        if let Some(red) = Red::parse(&payload) {
            let payload = bytes::Bytes::from(payload);
            prop_assert!(red.redundant().len() <= MAX_REDUNDANT);
            let mut end = 0;
            for b in red.redundant().iter().chain([&red.primary]) {
                prop_assert!(b.start >= end && b.start <= b.end && b.end <= payload.len());
                end = b.end;
                let _ = block(&payload, b);
            }
            prop_assert_eq!(red.primary.end, payload.len());
            let retagged = red.retagged(&payload, 109);
            prop_assert_eq!(retagged.len(), payload.len());
            prop_assert_eq!(Red::parse(&retagged).map(|r| r.primary.start), Some(red.primary.start));
        }
    }

    #[test]
    fn vp8_descriptors_parse_or_are_refused(payload in prop::collection::vec(any::<u8>(), 0..12)) {
        if let Some(temporal) = convene::sfu::vp8::temporal_of(&payload) {
            prop_assert!(temporal.tid < 4);
        }
    }

    #[test]
    fn the_text_rule_finds_every_control_character(text in "\\PC{0,20}", control in 0u32..0x20) {
        let bad = format!("{text}{}", char::from_u32(control).unwrap());
        let document = serde_json::json!({"title": bad, "description": text});
        let problems = convene::domain::text::json_problems(&document);
        prop_assert_eq!(problems.len(), 1);
        prop_assert_eq!(problems[0].0.as_str(), "title");
    }
}

#[test]
fn a_truncated_lying_stun_length_is_not_routed() {
    let mut demux = Demux::default();
    demux.bind_ufrag("srv1", "pw", PeerId::new());
    let source = SocketAddr::from(([127, 0, 0, 1], 4000));
    let mut message = vec![0x00, 0x01, 0xFF, 0xFF, 0x21, 0x12, 0xA4, 0x42];
    message.extend_from_slice(&[0; 12]);
    assert_eq!(demux.route(source, &message), Err(Unrouted::UnknownAddress));
}

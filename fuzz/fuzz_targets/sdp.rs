//! The SDP work Convene does itself, on arbitrary text: offer checks, the codec scan a waiting
//! viewer's tracks come from, the sending-track scan of signaling, and WHIP/WHEP sdpfrag bodies.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = convene::sfu::sdp::check_offer(&text);
    for (_, codec) in convene::sfu::sdp::offered_codecs(&text) {
        if let Some(codec) = codec {
            assert!(codec.mime_type.starts_with("audio/") || codec.mime_type.starts_with("video/"));
        }
    }
    let _ = convene::sfu::sdp_attribute(&text, "ice-ufrag");
    let _ = convene::signaling::sdpscan::sending_tracks(&text);
    if let Ok(fragment) = convene::signaling::sdpfrag::parse(&text) {
        assert!(fragment.candidates.len() <= convene::signaling::sdpfrag::MAX_CANDIDATES);
    }
});

//! The codecs a publisher's connection negotiates: webrtc-rs' defaults without RTX.
//!
//! Why no RTX from publishers: a simulcast layer's retransmission stream is named only by the
//! repaired-rid header extension, which webrtc-rs `rtc` 0.21 does not bind (its issue #12), so
//! its packets would be dropped and NACKs from the SFU would never be answered. Without RTX
//! negotiated, browsers retransmit on the layer's own SSRC, which the SFU's NACK generator and
//! history already handle, for every layer alike. One rule for every publisher keeps a later
//! renegotiation (a simulcast section added to a connection that had none) consistent.
//!
//! Subscriber legs keep the defaults: they answer NACKs themselves, on the original SSRC.
//!
//! Both kinds of leg also register redundant audio (`audio/red` around Opus, RFC 2198), after
//! Opus so that an offer of ours still leads with plain Opus. A publisher that offers it is
//! asked to send it ([`prefer_red`]: browsers send RED only when the answer lists it first);
//! subscribers get it when they accepted it, plain Opus otherwise (see `red.rs`).

use rtc::peer_connection::configuration::media_engine::{
    MediaEngine, MIME_TYPE_AV1, MIME_TYPE_G722, MIME_TYPE_H264, MIME_TYPE_HEVC, MIME_TYPE_OPUS,
    MIME_TYPE_PCMA, MIME_TYPE_PCMU, MIME_TYPE_VP8, MIME_TYPE_VP9,
};
use rtc::rtp_transceiver::rtp_sender::{RTCRtpCodec, RTCRtpCodecParameters, RtpCodecKind};

use super::error::SfuError;

/// The default payload types and formats (the same as webrtc-rs' `register_default_codecs`).
const AUDIO: [(&str, u32, u16, &str, u8); 4] = [
    (MIME_TYPE_OPUS, 48_000, 2, "minptime=10;useinbandfec=1", 111),
    (MIME_TYPE_G722, 8_000, 0, "", 9),
    (MIME_TYPE_PCMU, 8_000, 0, "", 0),
    (MIME_TYPE_PCMA, 8_000, 0, "", 8),
];

const VIDEO: [(&str, &str, u8); 10] = [
    (MIME_TYPE_VP8, "", 96),
    (MIME_TYPE_VP9, "profile-id=0", 98),
    (MIME_TYPE_VP9, "profile-id=1", 100),
    (
        MIME_TYPE_H264,
        "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f",
        102,
    ),
    (
        MIME_TYPE_H264,
        "level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=42001f",
        127,
    ),
    (
        MIME_TYPE_H264,
        "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
        125,
    ),
    (
        MIME_TYPE_H264,
        "level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=42e01f",
        108,
    ),
    (
        MIME_TYPE_H264,
        "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=640032",
        123,
    ),
    (MIME_TYPE_AV1, "profile-id=0", 41),
    (MIME_TYPE_HEVC, "", 126),
];

/// Redundant audio as Chromium offers it: RED of Opus (payload type 111) frames.
const RED: (&str, u32, u16, &str, u8) = ("audio/red", 48_000, 2, "111/111", 63);

/// An audio codec of the tables above as webrtc-rs registers it.
fn audio_codec(
    (mime_type, clock_rate, channels, fmtp, payload_type): (&str, u32, u16, &str, u8),
) -> RTCRtpCodecParameters {
    RTCRtpCodecParameters {
        rtp_codec: RTCRtpCodec {
            mime_type: mime_type.to_owned(),
            clock_rate,
            channels,
            sdp_fmtp_line: fmtp.to_owned(),
            rtcp_feedback: vec![],
        },
        payload_type,
    }
}

/// Registers redundant audio (after the audio codecs already registered).
pub fn register_red(media_engine: &mut MediaEngine) -> Result<(), SfuError> {
    media_engine.register_codec(audio_codec(RED), RtpCodecKind::Audio)?;
    Ok(())
}

fn is_red(codec: &RTCRtpCodec) -> bool {
    codec.mime_type.eq_ignore_ascii_case(RED.0)
}

/// The payload type of redundant audio among a publisher m-line's negotiated `codecs`.
pub fn red_payload_type(codecs: &[RTCRtpCodecParameters]) -> Option<u8> {
    codecs
        .iter()
        .find(|c| is_red(&c.rtp_codec))
        .map(|c| c.payload_type)
}

/// Before answering a publisher's offer: every receiving audio section whose offer includes
/// RED lists it first in the answer, which is what makes a browser send it (libwebrtc uses
/// RED only when it precedes the send codec). Sections that did not offer it are left alone.
pub fn prefer_red(pc: &mut rtc::peer_connection::RTCPeerConnection, offer: &super::sdp::Sdp) {
    let offered: Vec<String> = offer
        .red_payload_types()
        .into_iter()
        .map(|(mid, _)| mid)
        .collect();
    if offered.is_empty() {
        return;
    }
    let transceivers: Vec<_> = pc.get_transceivers().collect();
    for id in transceivers {
        let Some(transceiver) = pc.rtp_transceiver(id) else {
            continue;
        };
        let Some(mid) = transceiver.mid().clone() else {
            continue;
        };
        if !offered.contains(&mid) || !transceiver.direction().has_recv() {
            continue;
        }
        let Some(receiver) = transceiver.receiver() else {
            continue;
        };
        let Some(mut receiver) = pc.rtp_receiver(receiver) else {
            continue;
        };
        // Only an audio section has RED among its codecs (the receiver's track kind is not
        // settled before the answer).
        let codecs = receiver.get_parameters().rtp_parameters.codecs.clone();
        let Some(red) = codecs.iter().find(|c| is_red(&c.rtp_codec)).cloned() else {
            continue;
        };
        let ordered: Vec<_> = std::iter::once(red)
            .chain(codecs.into_iter().filter(|c| !is_red(&c.rtp_codec)))
            .collect();
        let Some(mut transceiver) = pc.rtp_transceiver(id) else {
            continue;
        };
        if let Err(e) = transceiver.set_codec_preferences(ordered) {
            tracing::debug!(%mid, error = %e, "could not put RED first");
        }
    }
}

/// Registers a publisher leg's codecs: every default codec, no RTX.
pub fn register_without_rtx(media_engine: &mut MediaEngine) -> Result<(), SfuError> {
    for codec in AUDIO {
        media_engine.register_codec(audio_codec(codec), RtpCodecKind::Audio)?;
    }
    for (mime_type, fmtp, payload_type) in VIDEO {
        media_engine.register_codec(
            RTCRtpCodecParameters {
                rtp_codec: RTCRtpCodec {
                    mime_type: mime_type.to_owned(),
                    clock_rate: 90_000,
                    channels: 0,
                    sdp_fmtp_line: fmtp.to_owned(),
                    // NACK, PLI and FIR are registered by the caller for every video codec.
                    rtcp_feedback: vec![],
                },
                payload_type,
            },
            RtpCodecKind::Video,
        )?;
    }
    Ok(())
}

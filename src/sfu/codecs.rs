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

/// Registers a publisher leg's codecs: every default codec, no RTX.
pub fn register_without_rtx(media_engine: &mut MediaEngine) -> Result<(), SfuError> {
    for (mime_type, clock_rate, channels, fmtp, payload_type) in AUDIO {
        media_engine.register_codec(
            RTCRtpCodecParameters {
                rtp_codec: RTCRtpCodec {
                    mime_type: mime_type.to_owned(),
                    clock_rate,
                    channels,
                    sdp_fmtp_line: fmtp.to_owned(),
                    rtcp_feedback: vec![],
                },
                payload_type,
            },
            RtpCodecKind::Audio,
        )?;
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

//! A down track: one published track as one subscriber receives it.
//!
//! The subscriber's leg negotiated its own SSRC, payload type and header extensions; a forwarded
//! packet must carry those or webrtc-rs drops it silently. So each down track rewrites only the
//! RTP header: SSRC, payload type, and no header extensions (none of the publisher's extension
//! ids are valid on this leg). The payload is the publisher's `Bytes`, shared, never copied.

use rtc::rtp::{Header, Packet};
use rtc::rtp_transceiver::RTCRtpSenderId;

use crate::ids::TrackId;

pub struct DownTrack {
    pub source: TrackId,
    pub sender: RTCRtpSenderId,
    /// The rtc track id of our sender; inbound RTCP about it (PLI, NACK) is tagged with it.
    pub rtc_track_id: String,
    pub ssrc: u32,
    /// Payload type negotiated on this leg for the source's codec; `None` until negotiated, or
    /// when the subscriber did not accept the codec (then nothing is forwarded).
    pub payload_type: Option<u8>,
    pub kind_is_video: bool,
    /// Its source is gone and the sender was removed; the slot stays so indexes stay valid.
    pub removed: bool,
}

impl DownTrack {
    /// The packet as this leg must carry it. Allocation-free: the new header's vectors are
    /// empty and the payload is a reference-counted clone.
    #[inline]
    pub fn rewrite(&self, payload_type: u8, inbound: &Packet) -> Packet {
        let source = &inbound.header;
        Packet {
            header: Header {
                version: 2,
                padding: source.padding,
                extension: false,
                marker: source.marker,
                payload_type,
                sequence_number: source.sequence_number,
                timestamp: source.timestamp,
                ssrc: self.ssrc,
                csrc: Vec::new(),
                extension_profile: 0,
                extensions: Vec::new(),
                extensions_padding: 0,
            },
            payload: inbound.payload.clone(),
        }
    }
}

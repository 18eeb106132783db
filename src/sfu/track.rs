//! A published track: one inbound media stream of a publisher (one m-line of its offer), the
//! subscribers it fans out to, and its keyframe-request throttle.

use std::time::{Duration, Instant};

use rtc::rtp_transceiver::rtp_sender::{RTCRtpCodec, RtpCodecKind};

use crate::ids::{PeerId, TrackId};

/// Where one subscriber receives a track: the subscriber's peer and its down track slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscriberRef {
    pub peer: PeerId,
    pub slot: usize,
}

pub struct PublishedTrack {
    pub id: TrackId,
    pub publisher: PeerId,
    /// The publisher's m-line, stable across renegotiation.
    pub mid: String,
    /// The track id in the publisher's SDP (msid), by which its client names the track.
    pub publisher_track_id: String,
    pub kind: RtpCodecKind,
    /// The codec the publisher negotiated first for this m-line; subscribers are offered it.
    pub codec: RTCRtpCodec,
    /// The payload type of redundant audio (`audio/red`) on the publisher's m-line, when
    /// negotiated: packets carrying it are RED around `codec`.
    pub red_payload_type: Option<u8>,
    /// Its RTP streams: one, or a simulcast publisher's layers (lowest first). Each has its
    /// SSRC (to address PLI/FIR), keyframe throttle, NACK history (video only: audio is not
    /// NACKed, Opus has its own FEC) and measured bitrate.
    pub layers: Vec<super::simulcast::Layer>,
    /// Which payloads a layer switch can read keyframes of.
    pub switchable: super::keyframe::Codec,
    /// The publisher's rtc receiver, to send RTCP upstream.
    pub receiver: Option<rtc::rtp_transceiver::RTCRtpReceiverId>,
    pub subscribers: Vec<SubscriberRef>,
    /// Muted by a moderator: packets are dropped instead of forwarded.
    pub muted: bool,
    /// Allocation order among a subscriber's tracks (higher first): a screen share is raised
    /// by signaling (`Sfu::set_track_priority`); speakers are raised by the allocator.
    pub priority: u8,
    /// Simulcast: which layers the publisher was told to encode.
    pub dynacast: super::simulcast::Dynacast,
    /// Audio: the negotiated id of the audio-level header extension, if any.
    pub audio_level_extension: Option<u8>,
    pub audio_level: crate::sfu::speaker::AudioLevel,
    /// Consumers of a copy of its packets (recorder, RTP forwards), fed its top layer.
    pub taps: Vec<super::tap::Tap>,
}

impl PublishedTrack {
    pub fn is_video(&self) -> bool {
        self.kind == RtpCodecKind::Video
    }

    /// Several layers: down tracks choose among them and switch on keyframes.
    pub fn is_simulcast(&self) -> bool {
        self.layers.len() > 1
    }

    /// The layer a packet with this SSRC belongs to. A track with one layer takes every
    /// packet its m-line delivers (keyframe requests address the first SSRC seen, or the one
    /// its stream opened with); a simulcast layer's SSRC is bound when its stream opens.
    #[inline]
    pub fn layer_of(&mut self, ssrc: u32) -> Option<usize> {
        if let [only] = self.layers.as_mut_slice() {
            only.ssrc.get_or_insert(ssrc);
            return Some(0);
        }
        self.layers.iter().position(|l| l.ssrc == Some(ssrc))
    }

    /// Which keyframe request the publisher understands: PLI unless it only negotiated FIR.
    pub fn keyframe_request_kind(&self) -> KeyframeRequestKind {
        let feedback = &self.codec.rtcp_feedback;
        let has = |typ: &str, parameter: &str| {
            feedback
                .iter()
                .any(|fb| fb.typ == typ && fb.parameter == parameter)
        };
        if !has("nack", "pli") && has("ccm", "fir") {
            KeyframeRequestKind::Fir
        } else {
            KeyframeRequestKind::Pli
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyframeRequestKind {
    Pli,
    Fir,
}

/// At most one keyframe request per interval per track; a request that arrives too early is
/// remembered and sent when the interval has passed, so a late subscriber is never left waiting
/// for the next natural keyframe.
#[derive(Debug, Default)]
pub struct KeyframeThrottle {
    last_sent: Option<Instant>,
    pending: bool,
    fir_sequence: u8,
}

impl KeyframeThrottle {
    /// Records a request. Returns true when one should go out now.
    pub fn request(&mut self, now: Instant, interval: Duration) -> bool {
        match self.last_sent {
            Some(last) if now.duration_since(last) < interval => {
                self.pending = true;
                false
            }
            _ => {
                self.last_sent = Some(now);
                self.pending = false;
                true
            }
        }
    }

    /// When a deferred request is due, if one is pending.
    pub fn pending_due(&self, interval: Duration) -> Option<Instant> {
        match (self.pending, self.last_sent) {
            (true, Some(last)) => Some(last + interval),
            _ => None,
        }
    }

    pub fn next_fir_sequence(&mut self) -> u8 {
        self.fir_sequence = self.fir_sequence.wrapping_add(1);
        self.fir_sequence
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_defers_instead_of_dropping() {
        let interval = Duration::from_millis(500);
        let t0 = Instant::now();
        let mut throttle = KeyframeThrottle::default();
        assert!(throttle.request(t0, interval));
        assert!(!throttle.request(t0 + Duration::from_millis(100), interval));
        assert!(!throttle.request(t0 + Duration::from_millis(200), interval));
        assert_eq!(throttle.pending_due(interval), Some(t0 + interval));
        assert!(throttle.request(t0 + interval, interval));
        assert_eq!(throttle.pending_due(interval), None);
    }
}

//! A down track: one published track as one subscriber receives it.
//!
//! The subscriber's leg negotiated its own SSRC, payload type and header extensions; a forwarded
//! packet must carry those or webrtc-rs drops it silently. So each down track rewrites only the
//! RTP header: SSRC, payload type, and no header extensions (none of the publisher's extension
//! ids are valid on this leg). The payload is the publisher's `Bytes`, shared, never copied.

use std::time::Instant;

use rtc::media_stream::MediaStreamTrack;
use rtc::rtp::{Header, Packet};
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
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
    /// The subscriber asked for none of it for now (a hidden tile): nothing is forwarded.
    pub paused: bool,
    /// Keeps this leg's sequence numbers and timestamps continuous.
    pub munger: Munger,
    /// VP8: keeps its picture ids and TL0PICIDX continuous too (`None` for other codecs).
    pub vp8: Option<super::vp8::Vp8Munger>,
    /// Simulcast: the layer being forwarded (`None` until a keyframe of the target arrives).
    pub layer: Option<u8>,
    /// Simulcast: the layer to move to, on its next keyframe (the current one is forwarded
    /// until then).
    pub target_layer: u8,
    /// What the subscriber asked for (`set_track`, WHEP's layer resource).
    pub wanted: super::simulcast::Wanted,
    /// What its share of the subscriber's bandwidth estimate allows (`allocator`).
    pub allowance: super::allocator::Allowance,
}

/// The VP8 continuity a down track of `codec` needs, if any.
pub fn vp8_munger(codec: &RTCRtpCodec) -> Option<super::vp8::Vp8Munger> {
    codec
        .mime_type
        .eq_ignore_ascii_case("video/VP8")
        .then(Default::default)
}

/// The local track a down track sends on its subscriber's connection: our own SSRC, the
/// source's codec; the client reads `stream_id` as the publisher and `track_id` as the track.
pub fn sending_track(
    stream_id: &str,
    track_id: &str,
    kind: RtpCodecKind,
    codec: RTCRtpCodec,
    ssrc: u32,
) -> MediaStreamTrack {
    MediaStreamTrack::new(
        stream_id.to_owned(),
        track_id.to_owned(),
        format!("{stream_id} {kind}"),
        kind,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters {
                ssrc: Some(ssrc),
                ..Default::default()
            },
            codec,
            ..Default::default()
        }],
    )
}

impl DownTrack {
    pub fn new(
        source: TrackId,
        sender: RTCRtpSenderId,
        rtc_track_id: String,
        ssrc: u32,
        kind: RtpCodecKind,
        codec: &RTCRtpCodec,
    ) -> Self {
        Self {
            source,
            sender,
            rtc_track_id,
            ssrc,
            payload_type: None,
            kind_is_video: kind == RtpCodecKind::Video,
            removed: false,
            paused: false,
            munger: Munger::new(codec.clock_rate),
            vp8: vp8_munger(codec),
            layer: None,
            target_layer: 0,
            wanted: super::simulcast::Wanted::Best,
            allowance: Default::default(),
        }
    }

    /// Nothing goes out on it: its subscriber paused it, or its bandwidth cannot carry it.
    #[inline]
    pub fn held(&self) -> bool {
        self.paused || self.allowance == super::allocator::Allowance::Starved
    }

    /// Forwarding resumes after a pause for bandwidth: as after the subscriber's own pause.
    pub fn resume_from_starvation(&mut self) {
        let paused = self.paused;
        self.resume();
        self.paused = paused;
    }

    /// Simulcast: whether a packet of `layer` goes out on this leg. The current layer flows
    /// until the target's keyframe (`is_keyframe`, asked only when it matters) arrives; then
    /// the leg switches, its sequence, clock and pictures continuous.
    #[inline]
    pub fn gate(&mut self, layer: u8, is_keyframe: impl FnOnce() -> bool) -> bool {
        if self.layer == Some(layer) {
            return true;
        }
        if layer == self.target_layer && is_keyframe() {
            self.layer = Some(layer);
            self.switch_source();
            return true;
        }
        false
    }

    /// The packet as this leg must carry it. Allocation-free: the new header's vectors are
    /// empty and the payload is a reference-counted clone.
    #[inline]
    pub fn rewrite(&mut self, payload_type: u8, inbound: &Packet, now: Instant) -> Packet {
        let source = &inbound.header;
        let (sequence_number, timestamp) =
            self.munger
                .next(source.sequence_number, source.timestamp, now);
        let payload = match &mut self.vp8 {
            Some(vp8) => vp8.rewrite(&inbound.payload),
            None => inbound.payload.clone(),
        };
        self.packet(payload_type, inbound, sequence_number, timestamp, payload)
    }

    /// Forwarding starts again after a pause: the leg's sequence goes on without a gap (the
    /// source's clock is kept) and so do VP8 pictures.
    pub fn resume(&mut self) {
        self.paused = false;
        // Simulcast: nothing until a keyframe of the target layer.
        self.layer = None;
        self.munger.resync();
        if let Some(vp8) = &mut self.vp8 {
            vp8.switch_source();
        }
    }

    /// The next packet comes from another source (its own sequence, clock and pictures).
    pub fn switch_source(&mut self) {
        self.munger.switch_source();
        if let Some(vp8) = &mut self.vp8 {
            vp8.switch_source();
        }
    }

    /// A packet this leg sent before, again (a retransmission): the same sequence number and
    /// timestamp it had, without moving the leg's state.
    pub fn rewrite_again(&self, payload_type: u8, inbound: &Packet) -> Packet {
        let source = &inbound.header;
        let (sequence_number, timestamp) =
            self.munger.map(source.sequence_number, source.timestamp);
        let payload = match &self.vp8 {
            Some(vp8) => vp8.map(&inbound.payload),
            None => inbound.payload.clone(),
        };
        self.packet(payload_type, inbound, sequence_number, timestamp, payload)
    }

    #[inline]
    fn packet(
        &self,
        payload_type: u8,
        inbound: &Packet,
        sequence_number: u16,
        timestamp: u32,
        payload: bytes::Bytes,
    ) -> Packet {
        let source = &inbound.header;
        Packet {
            header: Header {
                version: 2,
                padding: source.padding,
                extension: false,
                marker: source.marker,
                payload_type,
                sequence_number,
                timestamp,
                ssrc: self.ssrc,
                csrc: Vec::new(),
                extension_profile: 0,
                extensions: Vec::new(),
                extensions_padding: 0,
            },
            payload,
        }
    }
}

/// What a subscriber sees of sequence numbers and timestamps: the source's, shifted by offsets
/// that change only when the SFU breaks the source's continuity itself.
///
/// - Packets the SFU drops on purpose (a mute) would leave a gap the subscriber NACKs and
///   counts as loss: after them the sequence resumes at the last one sent + 1 ([`Munger::resync`]).
///   Timestamps keep the source's clock, so the pause shows as time passing.
/// - A new source on the same leg (another publisher) has its own sequence and clock: both
///   resume after the last ones sent, the timestamp advanced by the wall-clock gap
///   ([`Munger::switch_source`]).
///
/// NACKs from the subscriber name outgoing numbers, and the leg's NACK responder caches packets
/// as sent, so retransmissions need no mapping back.
#[derive(Debug, Clone)]
pub struct Munger {
    sequence_offset: u16,
    timestamp_offset: u32,
    /// The first sequence number sent with the current offsets: sequence numbers from it to
    /// the last one sent map back to the source's with them.
    epoch_start: Option<u16>,
    last: Option<Sent>,
    pending: Resync,
    clock_rate: u32,
}

#[derive(Debug, Clone, Copy)]
struct Sent {
    sequence: u16,
    timestamp: u32,
    at: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resync {
    None,
    Sequence,
    SequenceAndTimestamp,
}

impl Munger {
    pub fn new(clock_rate: u32) -> Self {
        Self {
            sequence_offset: 0,
            timestamp_offset: 0,
            epoch_start: None,
            last: None,
            pending: Resync::None,
            clock_rate: clock_rate.max(1),
        }
    }

    /// The next packet continues the sequence after the last one sent.
    pub fn resync(&mut self) {
        if self.pending == Resync::None {
            self.pending = Resync::Sequence;
        }
    }

    /// The next packet comes from another source (its own sequence and clock).
    pub fn switch_source(&mut self) {
        self.pending = Resync::SequenceAndTimestamp;
    }

    #[inline]
    pub fn next(&mut self, sequence: u16, timestamp: u32, now: Instant) -> (u16, u32) {
        if let (Some(last), pending) = (self.last, self.pending) {
            if pending != Resync::None {
                self.sequence_offset = sequence.wrapping_sub(last.sequence.wrapping_add(1));
                if pending == Resync::SequenceAndTimestamp {
                    let elapsed = now.saturating_duration_since(last.at);
                    let ticks = (elapsed.as_micros() as u64 * u64::from(self.clock_rate)
                        / 1_000_000)
                        .max(1) as u32;
                    self.timestamp_offset =
                        timestamp.wrapping_sub(last.timestamp.wrapping_add(ticks));
                }
            }
        }
        let new_epoch = self.epoch_start.is_none() || self.pending != Resync::None;
        self.pending = Resync::None;
        let out = self.map(sequence, timestamp);
        if new_epoch {
            self.epoch_start = Some(out.0);
        }
        // Only a packet ahead of the last one moves it: a late, reordered one must not.
        let ahead = self
            .last
            .is_none_or(|last| out.0.wrapping_sub(last.sequence) < 0x8000);
        if ahead {
            self.last = Some(Sent {
                sequence: out.0,
                timestamp: out.1,
                at: now,
            });
        }
        out
    }

    /// The source's sequence number and timestamp as this leg carries them now.
    #[inline]
    pub fn map(&self, sequence: u16, timestamp: u32) -> (u16, u32) {
        (
            sequence.wrapping_sub(self.sequence_offset),
            timestamp.wrapping_sub(self.timestamp_offset),
        )
    }

    /// The source sequence number this leg sent as `sent`, if it was sent with the current
    /// offsets (a NACK for one sent before a resync or a source switch names another packet of
    /// the source, so it is not answered).
    pub fn source_sequence(&self, sent: u16) -> Option<u16> {
        let (start, last) = (self.epoch_start?, self.last?.sequence);
        (sent.wrapping_sub(start) <= last.wrapping_sub(start))
            .then(|| sent.wrapping_add(self.sequence_offset))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn passes_through_until_told_then_continues_without_a_gap() {
        let t0 = Instant::now();
        let mut munger = Munger::new(90_000);
        assert_eq!(munger.next(100, 5000, t0), (100, 5000));
        assert_eq!(munger.next(101, 8000, t0), (101, 8000));
        // 102..=149 dropped on purpose (muted), then resumed.
        munger.resync();
        assert_eq!(
            munger.next(150, 150_000, t0),
            (102, 150_000),
            "timestamps keep time"
        );
        assert_eq!(munger.next(151, 153_000, t0), (103, 153_000));
        // A late packet from before the resync does not move the sequence back.
        assert_eq!(munger.next(149, 147_000, t0).0, 101);
        assert_eq!(munger.next(152, 156_000, t0), (104, 156_000));
        // Retransmissions map back only within the current offsets.
        assert_eq!(munger.source_sequence(103), Some(151));
        assert_eq!(munger.source_sequence(102), Some(150));
        assert_eq!(munger.source_sequence(104), Some(152));
        assert_eq!(munger.source_sequence(105), None, "not sent yet");
        assert_eq!(munger.source_sequence(100), None, "sent before the resync");
        assert_eq!(munger.map(151, 153_000), (103, 153_000));
    }

    #[test]
    fn a_new_source_continues_sequence_and_clock() {
        let t0 = Instant::now();
        let mut munger = Munger::new(90_000);
        assert_eq!(
            munger.next(65_535, 4_294_967_000, t0),
            (65_535, 4_294_967_000)
        );
        munger.switch_source();
        let later = t0 + Duration::from_millis(100);
        let (sequence, timestamp) = munger.next(7, 123, later);
        assert_eq!(sequence, 0, "wraps to the next number");
        assert_eq!(
            timestamp,
            4_294_967_000u32.wrapping_add(9_000),
            "100 ms at 90 kHz"
        );
        assert_eq!(
            munger.next(8, 3_123, later),
            (1, 4_294_967_000u32.wrapping_add(12_000))
        );
    }
}

#[cfg(test)]
mod layer_tests {
    use super::*;
    use bytes::Bytes;
    use std::time::Duration;

    /// One VP8 packet of a layer: a descriptor with a 15-bit picture id and TL0PICIDX, then a
    /// frame start (keyframe or not) or a continuation.
    fn vp8(picture: u16, tl0: u8, start: bool, key: bool) -> Bytes {
        let mut payload = vec![if start { 0x90 } else { 0x80 }, 0xc0];
        payload.extend_from_slice(&(0x8000 | picture).to_be_bytes());
        payload.push(tl0);
        payload.push(if key { 0x50 } else { 0x51 });
        payload.extend_from_slice(&[0x2a, 0x01, 0x9d, 0x01, 0x2a, 0x40, 0x01, 0xf0, 0x00]);
        Bytes::from(payload)
    }

    fn packet(sequence: u16, timestamp: u32, payload: Bytes) -> Packet {
        Packet {
            header: Header {
                sequence_number: sequence,
                timestamp,
                ..Default::default()
            },
            payload,
        }
    }

    /// Three layers sent interleaved, as a simulcast publisher does: each its own sequence,
    /// clock and pictures. Each frame is two packets; every fifth frame of each is a keyframe.
    fn recorded() -> Vec<(u8, Packet)> {
        let bases = [
            (1000u16, 10_000u32, 100u16),
            (40_000, 900_000, 7000),
            (65_500, 5, 32_700),
        ];
        let mut out = Vec::new();
        for frame in 0..40u16 {
            for (layer, (seq, ts, picture)) in bases.iter().enumerate() {
                let key = frame % 5 == 0;
                let timestamp = ts.wrapping_add(u32::from(frame) * 3000);
                let picture = (picture + frame) & 0x7fff;
                let tl0 = frame as u8;
                for part in 0..2u16 {
                    let sequence = seq.wrapping_add(frame * 2 + part);
                    let payload = vp8(picture, tl0, part == 0, key);
                    out.push((layer as u8, packet(sequence, timestamp, payload)));
                }
            }
        }
        out
    }

    #[test]
    fn layer_switches_keep_sequence_timestamps_and_pictures_continuous() {
        let codec = RTCRtpCodec {
            mime_type: "video/VP8".into(),
            clock_rate: 90_000,
            ..Default::default()
        };
        let mut down = DownTrack::new(
            TrackId(1),
            Default::default(),
            "t".into(),
            1,
            RtpCodecKind::Video,
            &codec,
        );
        down.target_layer = 0;
        let t0 = Instant::now();
        let mut sent: Vec<(u8, u16, u32, u16)> = Vec::new();
        for (i, (layer, inbound)) in recorded().into_iter().enumerate() {
            // The subscriber moves up after frame 7, to the top after frame 18, down after 29.
            let frame = i / 6;
            down.target_layer = match frame {
                0..=7 => 0,
                8..=18 => 1,
                19..=29 => 2,
                _ => 0,
            };
            let forwarded = down.gate(layer, || {
                super::super::keyframe::Codec::Vp8.starts_keyframe(&inbound.payload)
            });
            if !forwarded {
                continue;
            }
            let now = t0 + Duration::from_millis(frame as u64 * 33);
            let out = down.rewrite(96, &inbound, now);
            let (picture, _) = crate::sfu::vp8::picture_and_tl0_of(&out.payload);
            sent.push((
                layer,
                out.header.sequence_number,
                out.header.timestamp,
                picture,
            ));
        }
        let layers: Vec<u8> = sent.iter().map(|s| s.0).collect();
        for layer in [0, 1, 2] {
            assert!(
                layers.contains(&layer),
                "layer {layer} was forwarded: {layers:?}"
            );
        }
        assert_eq!(sent.first().map(|s| s.0), Some(0));
        assert_eq!(sent.last().map(|s| s.0), Some(0), "back down at the end");
        for pair in sent.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            assert_eq!(
                b.1,
                a.1.wrapping_add(1),
                "contiguous sequence: {a:?} → {b:?}"
            );
            let step = b.2.wrapping_sub(a.2);
            assert!(step < 90_000, "timestamps move forward: {a:?} → {b:?}");
            let picture_step = b.3.wrapping_sub(a.3) & 0x7fff;
            assert!(picture_step <= 1, "pictures continue: {a:?} → {b:?}");
        }
        // Each switch happened on a keyframe: the first packet of each run of a layer starts one.
        let switches = layers.windows(2).filter(|w| w[0] != w[1]).count();
        assert_eq!(switches, 3, "{layers:?}");
    }
}

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
    /// Payload type of redundant audio (`audio/red`) on this leg, when the subscriber took it:
    /// RED from the publisher then goes out as RED, else as the plain Opus inside it.
    pub red_payload_type: Option<u8>,
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
    /// The most frames per second the subscriber wants (`set_track`'s `fps`), if it said.
    pub max_fps: Option<u16>,
    /// The highest VP8 temporal layer it asked for by id (WHEP's `temporalLayerId`).
    pub temporal_cap: Option<u8>,
    /// VP8 temporal layers: the highest one to forward ([`ALL_TEMPORAL`]: every one), and the
    /// one forwarded now (a change takes effect at a frame start; going up, at one that does
    /// not refer to a dropped layer).
    pub temporal_target: u8,
    pub temporal: u8,
}

/// No temporal layer is dropped.
pub const ALL_TEMPORAL: u8 = u8::MAX;

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
            red_payload_type: None,
            kind_is_video: kind == RtpCodecKind::Video,
            removed: false,
            paused: false,
            munger: Munger::new(codec.clock_rate),
            vp8: vp8_munger(codec),
            layer: None,
            target_layer: 0,
            wanted: super::simulcast::Wanted::Best,
            allowance: Default::default(),
            max_fps: None,
            temporal_cap: None,
            temporal_target: ALL_TEMPORAL,
            temporal: ALL_TEMPORAL,
        }
    }

    /// VP8 temporal layers: whether a packet of layer `temporal` goes out, or is dropped
    /// because the leg's frame rate is capped below it ([`DownTrack::temporal_target`]).
    /// Dropped packets leave no gap in the leg's sequence numbers or picture ids.
    #[inline]
    pub fn temporal_gate(&mut self, temporal: super::vp8::Temporal, payload: &[u8]) -> bool {
        if temporal.frame_start && self.temporal != self.temporal_target {
            let down = self.temporal_target < self.temporal;
            // Up only where the frame refers to nothing that was dropped.
            let up = temporal.tid == 0 || (temporal.sync && temporal.tid <= self.temporal_target);
            if down || up {
                self.temporal = self.temporal_target;
            }
        }
        if temporal.tid <= self.temporal {
            return true;
        }
        self.munger.skip();
        if let Some(vp8) = &mut self.vp8 {
            vp8.drop_picture(payload);
        }
        false
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
        // The picture ids first: a source switch moves their offset, which the packet's
        // epoch records for retransmissions.
        let payload = match &mut self.vp8 {
            Some(vp8) => {
                let payload = vp8.rewrite(&inbound.payload);
                self.munger.picture_offset = vp8.picture_offset();
                payload
            }
            None => inbound.payload.clone(),
        };
        self.rewrite_payload(payload_type, inbound, payload, now)
    }

    /// A packet whose payload this leg changes (the Opus inside RED, or RED with its block
    /// payload types retagged): the header as [`DownTrack::rewrite`] makes it.
    #[inline]
    pub fn rewrite_payload(
        &mut self,
        payload_type: u8,
        inbound: &Packet,
        payload: bytes::Bytes,
        now: Instant,
    ) -> Packet {
        let source = &inbound.header;
        let (sequence_number, timestamp) =
            self.munger
                .next(source.sequence_number, source.timestamp, now);
        self.packet(
            payload_type,
            &inbound.header,
            sequence_number,
            timestamp,
            payload,
        )
    }

    /// RED to a leg without it: the frames of the source packets lost since the last one this
    /// leg sent, as `(sequence, timestamp, block)` oldest first, taken from the redundant
    /// blocks of `inbound` (which carries `red`). Only within the current sequence (not across
    /// a pause or a source switch), and only a gap the redundancy can cover: the newest
    /// redundant block is the packet just before, the one before it the one before that, as
    /// long as its timestamp is after the last one sent.
    pub fn recoverable(
        &self,
        inbound: &Packet,
        red: &super::red::Red,
    ) -> impl Iterator<Item = (u16, u32, super::red::Block)> {
        let mut found = [None; super::red::MAX_REDUNDANT];
        if let Some((last_sequence, last_timestamp)) = self.munger.last_source() {
            let (sequence, timestamp) = (inbound.header.sequence_number, inbound.header.timestamp);
            let missing = usize::from(sequence.wrapping_sub(last_sequence).wrapping_sub(1));
            if missing <= super::red::MAX_REDUNDANT {
                for (back, block) in red.redundant().iter().rev().take(missing).enumerate() {
                    let block_timestamp = timestamp.wrapping_sub(u32::from(block.timestamp_offset));
                    let after_last = (block_timestamp.wrapping_sub(last_timestamp) as i32) > 0;
                    if block.timestamp_offset == 0 || !after_last {
                        break;
                    }
                    let block_sequence = sequence.wrapping_sub(back as u16 + 1);
                    found[back] = Some((block_sequence, block_timestamp, *block));
                }
            }
        }
        found.into_iter().rev().flatten()
    }

    /// A frame rebuilt from redundancy, as this leg carries it (see [`DownTrack::recoverable`]).
    pub fn rewrite_recovered(
        &mut self,
        payload_type: u8,
        sequence: u16,
        timestamp: u32,
        payload: bytes::Bytes,
        now: Instant,
    ) -> Packet {
        let (sequence_number, timestamp) = self.munger.next(sequence, timestamp, now);
        // No marker and no padding: what the lost packet had is not known.
        let source = Header::default();
        self.packet(payload_type, &source, sequence_number, timestamp, payload)
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
    ///
    /// `sent` is the number it went out with and `picture_offset` the VP8 picture-id offset
    /// then (both from [`Munger::source_sequence`]): packets dropped on purpose since moved
    /// the offsets the leg uses now.
    pub fn rewrite_again(
        &self,
        payload_type: u8,
        inbound: &Packet,
        sent: u16,
        picture_offset: u16,
    ) -> Packet {
        let source = &inbound.header;
        let (_, timestamp) = self.munger.map(source.sequence_number, source.timestamp);
        let payload = match &self.vp8 {
            Some(vp8) => vp8.map_with(&inbound.payload, picture_offset),
            None => inbound.payload.clone(),
        };
        self.packet(payload_type, source, sent, timestamp, payload)
    }

    #[inline]
    fn packet(
        &self,
        payload_type: u8,
        source: &Header,
        sequence_number: u16,
        timestamp: u32,
        payload: bytes::Bytes,
    ) -> Packet {
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
    /// Runs of sequence numbers sent with one offset, oldest first (a packet dropped on
    /// purpose starts the next), so a NACK for any recent one maps back to the source's
    /// number and to the VP8 picture-id offset it went out with. Cleared by a resync or a
    /// source switch: what was sent before names packets of another sequence.
    epochs: std::collections::VecDeque<Epoch>,
    /// A packet was dropped on purpose since the last one sent: the next starts an epoch.
    skipped: bool,
    /// The VP8 picture-id offset the next packet goes out with (set by its down track).
    pub picture_offset: u16,
    last: Option<Sent>,
    pending: Resync,
    clock_rate: u32,
}

/// Epochs kept for NACKs: one per picture dropped, so about a second's worth at 30 fps with
/// two temporal layers of three dropped.
const MAX_EPOCHS: usize = 64;

#[derive(Debug, Clone, Copy)]
struct Epoch {
    /// The first sequence number sent in it.
    start: u16,
    sequence_offset: u16,
    picture_offset: u16,
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
            epochs: Default::default(),
            skipped: false,
            picture_offset: 0,
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
        let resynced = self.pending != Resync::None;
        if resynced {
            self.epochs.clear();
        }
        let new_epoch = self.epochs.is_empty() || resynced || std::mem::take(&mut self.skipped);
        self.pending = Resync::None;
        let out = self.map(sequence, timestamp);
        if new_epoch {
            if self.epochs.len() == MAX_EPOCHS {
                self.epochs.pop_front();
            }
            self.epochs.push_back(Epoch {
                start: out.0,
                sequence_offset: self.sequence_offset,
                picture_offset: self.picture_offset,
            });
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

    /// The source's sequence number and timestamp of the last packet sent, when the next one
    /// continues the same sequence (no resync or source switch pending).
    pub fn last_source(&self) -> Option<(u16, u32)> {
        let last = self.last.filter(|_| self.pending == Resync::None)?;
        Some((
            last.sequence.wrapping_add(self.sequence_offset),
            last.timestamp.wrapping_add(self.timestamp_offset),
        ))
    }

    /// The source's sequence number and timestamp as this leg carries them now.
    #[inline]
    pub fn map(&self, sequence: u16, timestamp: u32) -> (u16, u32) {
        (
            sequence.wrapping_sub(self.sequence_offset),
            timestamp.wrapping_sub(self.timestamp_offset),
        )
    }

    /// The packet this leg sent as `sent`: the source's sequence number and the VP8 picture-id
    /// offset it went out with, if it was sent since the last resync or source switch (a NACK
    /// for one sent before names another packet of the source, so it is not answered).
    pub fn source_sequence(&self, sent: u16) -> Option<(u16, u16)> {
        let last = self.last?.sequence;
        let within = |start: u16| sent.wrapping_sub(start) <= last.wrapping_sub(start);
        // The newest epoch that `sent` is not before.
        let epoch = self.epochs.iter().rev().find(|e| within(e.start))?;
        Some((
            sent.wrapping_add(epoch.sequence_offset),
            epoch.picture_offset,
        ))
    }

    /// A source packet is dropped on purpose (a temporal layer above the leg's limit): the
    /// ones after it go on from the last number sent, without a gap the subscriber would NACK.
    pub fn skip(&mut self) {
        if self.last.is_some() {
            self.sequence_offset = self.sequence_offset.wrapping_add(1);
            self.skipped = true;
        }
    }
}

/// A down track of `mime_type` for unit tests.
#[cfg(test)]
pub(super) fn test_down_track(mime_type: &str, clock_rate: u32) -> DownTrack {
    let codec = RTCRtpCodec {
        mime_type: mime_type.into(),
        clock_rate,
        ..Default::default()
    };
    let kind = if mime_type.starts_with("video/") {
        RtpCodecKind::Video
    } else {
        RtpCodecKind::Audio
    };
    DownTrack::new(TrackId(1), Default::default(), "t".into(), 1, kind, &codec)
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
        assert_eq!(munger.source_sequence(103), Some((151, 0)));
        assert_eq!(munger.source_sequence(102), Some((150, 0)));
        assert_eq!(munger.source_sequence(104), Some((152, 0)));
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
        let mut down = test_down_track("video/VP8", 90_000);
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

#[cfg(test)]
mod red_tests {
    use super::*;
    use crate::sfu::red::Red;
    use bytes::Bytes;

    /// A RED packet `sequence` of 20 ms Opus frames carrying `back` earlier frames.
    fn red_packet(sequence: u16, back: u16) -> (Packet, Red) {
        let mut payload = Vec::new();
        for b in (1..=back).rev() {
            payload.extend_from_slice(&[
                0x80 | 111,
                ((b * 960) >> 6) as u8,
                (((b * 960) & 0x3f) << 2) as u8,
                1,
            ]);
        }
        payload.push(111);
        for b in (1..=back).rev() {
            payload.push(sequence.wrapping_sub(b) as u8);
        }
        payload.push(sequence as u8);
        let payload = Bytes::from(payload);
        let red = Red::parse(&payload).unwrap();
        let packet = Packet {
            header: Header {
                sequence_number: sequence,
                timestamp: timestamp_of(sequence),
                ..Default::default()
            },
            payload,
        };
        (packet, red)
    }

    /// A clock that runs on across the sequence number's wrap.
    fn timestamp_of(sequence: u16) -> u32 {
        u32::from(sequence.wrapping_sub(65_000)) * 960 + 7
    }

    fn opus_down_track() -> DownTrack {
        test_down_track("audio/opus", 48_000)
    }

    fn recovered(down: &DownTrack, sequence: u16, back: u16) -> Vec<u16> {
        let (packet, red) = red_packet(sequence, back);
        down.recoverable(&packet, &red).map(|(s, _, _)| s).collect()
    }

    #[test]
    fn only_gaps_the_redundancy_covers_are_rebuilt() {
        let now = Instant::now();
        let mut down = opus_down_track();
        assert!(
            recovered(&down, 10, 2).is_empty(),
            "nothing sent yet: no gap to fill"
        );
        let (first, _) = red_packet(65_534, 2);
        down.rewrite(111, &first, now);
        assert!(
            recovered(&down, 65_535, 2).is_empty(),
            "the next one: nothing lost"
        );
        assert_eq!(recovered(&down, 0, 2), vec![65_535], "across the wrap");
        assert_eq!(recovered(&down, 1, 2), vec![65_535, 0], "oldest first");
        assert_eq!(
            recovered(&down, 1, 1),
            vec![0],
            "only what the packet carries"
        );
        assert!(recovered(&down, 5, 2).is_empty(), "more lost than carried");
        let (late, red) = red_packet(65_530, 2);
        assert_eq!(down.recoverable(&late, &red).count(), 0, "a late packet");

        // Rebuilt frames carry their own timestamps and take the slots they would have had.
        let (packet, red) = red_packet(1, 2);
        let lost: Vec<_> = down.recoverable(&packet, &red).collect();
        let out: Vec<(u16, u32)> = lost
            .into_iter()
            .map(|(s, t, _)| down.rewrite_recovered(111, s, t, Bytes::new(), now))
            .map(|p| (p.header.sequence_number, p.header.timestamp))
            .collect();
        assert_eq!(
            out,
            vec![(65_535, timestamp_of(65_535)), (0, timestamp_of(0))]
        );
        assert_eq!(
            down.rewrite_payload(111, &packet, Bytes::new(), now)
                .header
                .sequence_number,
            1
        );

        // After a pause the gap was the SFU's own doing: nothing is rebuilt across it.
        down.paused = true;
        down.resume();
        assert!(recovered(&down, 3, 2).is_empty());
    }
}

#[cfg(test)]
mod temporal_tests {
    use super::*;
    use bytes::Bytes;

    /// A VP8 packet of an L1T3 stream: picture id, TL0PICIDX, TID and sync in the descriptor.
    fn vp8(picture: u16, tl0: u8, tid: u8, sync: bool, start: bool) -> Bytes {
        let first = if start { 0x90 } else { 0x80 };
        let tid_byte = (tid << 6) | if sync { 0x20 } else { 0 };
        Bytes::from(vec![
            first,
            0xe0, // I, L, T
            0x80 | (picture >> 8) as u8,
            picture as u8,
            tl0,
            tid_byte,
            0x55,
        ])
    }

    /// Frames of the L1T3 pattern 0 2 1 2 …, two packets each, from source sequence 500.
    fn stream(frames: u16) -> Vec<(u8, Packet)> {
        let mut out = Vec::new();
        let mut sequence = 500u16;
        let mut tl0 = 10u8;
        for frame in 0..frames {
            let tid = [0u8, 2, 1, 2][usize::from(frame % 4)];
            if tid == 0 && frame > 0 {
                tl0 = tl0.wrapping_add(1);
            }
            for part in 0..2 {
                let packet = Packet {
                    header: Header {
                        sequence_number: sequence,
                        timestamp: 3000 * u32::from(frame),
                        marker: part == 1,
                        ..Default::default()
                    },
                    payload: vp8(100 + frame, tl0, tid, tid == 1, part == 0),
                };
                out.push((tid, packet));
                sequence = sequence.wrapping_add(1);
            }
        }
        out
    }

    fn picture_of(payload: &[u8]) -> u16 {
        super::super::vp8::picture_and_tl0_of(payload).0
    }

    #[test]
    fn a_frame_rate_cap_drops_upper_temporal_layers_without_gaps() {
        let mut down = test_down_track("video/VP8", 90_000);
        let now = Instant::now();
        // (source packet, what went out) for every packet sent.
        let mut sent: Vec<(Packet, Packet)> = Vec::new();
        for (i, (tid, packet)) in stream(24).into_iter().enumerate() {
            // Capped to T0+T1 from the middle of frame 4's first packet on, lifted at frame 14.
            if i == 9 {
                down.temporal_target = 1;
            }
            if i == 28 {
                down.temporal_target = ALL_TEMPORAL;
            }
            let temporal = super::super::vp8::temporal_of(&packet.payload).unwrap();
            assert_eq!(temporal.tid, tid);
            if down.temporal_gate(temporal, &packet.payload) {
                let out = down.rewrite(96, &packet, now);
                sent.push((packet, out));
            }
        }
        let tids: Vec<u8> = sent
            .iter()
            .step_by(2)
            .map(|(p, _)| super::super::vp8::temporal_of(&p.payload).unwrap().tid)
            .collect();
        // Frames 0..=4 whole (the cap waits for frame 5's start), then T2 dropped until the
        // lift at frame 14, a T1 sync frame (it refers to T0 only), then everything.
        assert_eq!(
            tids,
            [0, 2, 1, 2, 0, 1, 0, 1, 0, 1, 2, 0, 2, 1, 2, 0, 2, 1, 2],
            "frames forwarded"
        );
        for pair in sent.windows(2) {
            let (a, b) = (&pair[0].1, &pair[1].1);
            assert_eq!(
                b.header.sequence_number,
                a.header.sequence_number.wrapping_add(1),
                "no gap in the sequence"
            );
            let (pa, pb) = (picture_of(&a.payload), picture_of(&b.payload));
            assert!(
                pb == pa || pb == pa + 1,
                "pictures consecutive: {pa} then {pb}"
            );
        }
        // A NACK for any packet sent, even before the drops, is answered with exactly what
        // went out then.
        for (source, out) in &sent {
            let (source_sequence, picture_offset) = down
                .munger
                .source_sequence(out.header.sequence_number)
                .expect("still mapped");
            assert_eq!(source_sequence, source.header.sequence_number);
            let again = down.rewrite_again(96, source, out.header.sequence_number, picture_offset);
            assert_eq!(again.header.sequence_number, out.header.sequence_number);
            assert_eq!(again.header.timestamp, out.header.timestamp);
            assert_eq!(again.payload, out.payload, "the same picture id");
        }
    }
}

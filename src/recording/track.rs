//! One recorded track: RTP packets in, media frames with their times out.
//!
//! Packets are put back in sequence order by a small jitter buffer (a gap waits up to
//! `max_delay` for its retransmission, then counts as lost); video packets of one RTP timestamp
//! are joined into a frame on the marker bit and depacketized (`rtc`'s depacketizers); after a
//! loss a video track drops frames until the next keyframe and says it needs one. A frame's time
//! is its RTP timestamp, from the track's first packet, anchored where that packet arrived in
//! the file's time: a pause in sending (a mute at the SFU, DTX) stays a pause in time.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rtc::rtp::codec::h264::H264Packet;
use rtc::rtp::codec::vp9::Vp9Packet;
use rtc::rtp::packetizer::Depacketizer;

use crate::sfu::tap::TapPacket;

/// Packets held at most, whatever their wait: bounds memory against a sender that skips ahead.
const MAX_BUFFERED: usize = 1_024;
/// A frame of more packets than this is dropped (a 4K keyframe is a few hundred).
const MAX_FRAME_PACKETS: usize = 2_048;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Opus,
    Vp8,
    Vp9,
    H264,
}

impl Codec {
    pub fn of(mime_type: &str) -> Option<Self> {
        let mime = mime_type.to_ascii_lowercase();
        Some(match mime.as_str() {
            "audio/opus" => Codec::Opus,
            "video/vp8" => Codec::Vp8,
            "video/vp9" => Codec::Vp9,
            "video/h264" => Codec::H264,
            _ => return None,
        })
    }

    pub fn is_video(self) -> bool {
        self != Codec::Opus
    }

    /// Its Matroska codec id.
    pub fn codec_id(self) -> &'static str {
        match self {
            Codec::Opus => "A_OPUS",
            Codec::Vp8 => "V_VP8",
            Codec::Vp9 => "V_VP9",
            Codec::H264 => "V_MPEG4/ISO/AVC",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Codec::Opus => "opus",
            Codec::Vp8 => "vp8",
            Codec::Vp9 => "vp9",
            Codec::H264 => "h264",
        }
    }

    fn starts_keyframe(self, payload: &[u8]) -> bool {
        match self {
            Codec::Opus => true,
            Codec::Vp8 => crate::sfu::keyframe::Codec::Vp8.starts_keyframe(payload),
            Codec::H264 => crate::sfu::keyframe::Codec::H264.starts_keyframe(payload),
            // VP9 descriptor (RFC 9628 §4.2): B (start of frame) set, P (inter-predicted) not.
            Codec::Vp9 => payload
                .first()
                .is_some_and(|b| b & 0x08 != 0 && b & 0x40 == 0),
        }
    }
}

/// A whole media frame.
#[derive(Debug, Clone)]
pub struct Frame {
    /// From the file's start.
    pub time_ms: u64,
    /// Audio: its time in 48 kHz samples from the file's start (Ogg's granule).
    pub samples: u64,
    pub keyframe: bool,
    pub data: Bytes,
}

/// Sequence numbers and timestamps, unwrapped to 64 bits around the latest seen.
#[derive(Default)]
struct Unwrap {
    last: Option<i64>,
}

impl Unwrap {
    fn extend(&mut self, value: u32, bits: u32) -> i64 {
        let modulus = 1i64 << bits;
        let Some(last) = self.last else {
            self.last = Some(i64::from(value));
            return i64::from(value);
        };
        let base = last - last.rem_euclid(modulus);
        let mut candidate = base + i64::from(value);
        if candidate - last > modulus / 2 {
            candidate -= modulus;
        } else if last - candidate > modulus / 2 {
            candidate += modulus;
        }
        if candidate > last {
            self.last = Some(candidate);
        }
        candidate
    }
}

pub struct RecordedTrack {
    codec: Codec,
    clock_rate: u32,
    /// RED around Opus: its payload type; the primary block is recorded.
    red_payload_type: Option<u8>,
    max_delay: Duration,
    sequence: Unwrap,
    timestamp: Unwrap,
    /// Extended sequence number → (packet, its extended timestamp).
    buffer: BTreeMap<i64, (TapPacket, i64)>,
    next: Option<i64>,
    /// (ms in the file, extended RTP timestamp) of the first packet.
    anchor: Option<(u64, i64)>,
    /// The frame being joined: its extended timestamp and packets.
    frame: Option<(i64, Vec<TapPacket>)>,
    /// After a loss (or at the start) a video track waits for a keyframe.
    waiting_keyframe: bool,
    /// Set when a keyframe should be asked for; taken by the file.
    pub wants_keyframe: bool,
    pub lost_packets: u64,
    pub frames: u64,
}

impl RecordedTrack {
    pub fn new(
        codec: Codec,
        clock_rate: u32,
        red_payload_type: Option<u8>,
        max_delay: Duration,
    ) -> Self {
        Self {
            codec,
            clock_rate: clock_rate.max(1),
            red_payload_type,
            max_delay,
            sequence: Unwrap::default(),
            timestamp: Unwrap::default(),
            buffer: BTreeMap::new(),
            next: None,
            anchor: None,
            frame: None,
            waiting_keyframe: codec.is_video(),
            wants_keyframe: false,
            lost_packets: 0,
            frames: 0,
        }
    }

    pub fn codec(&self) -> Codec {
        self.codec
    }

    /// Takes one packet; `file_start` is when the file's time is 0. Frames completed by it
    /// (in order) are appended to `out`.
    pub fn push(&mut self, packet: TapPacket, file_start: Instant, out: &mut Vec<Frame>) {
        let sequence = self.sequence.extend(u32::from(packet.sequence), 16);
        let timestamp = self.timestamp.extend(packet.timestamp, 32);
        if self.anchor.is_none() {
            let at = packet.arrival.saturating_duration_since(file_start);
            self.anchor = Some((at.as_millis() as u64, timestamp));
        }
        let next = *self.next.get_or_insert(sequence);
        if sequence < next || self.buffer.contains_key(&sequence) {
            return; // a duplicate, or too late: its gap was given up on
        }
        self.buffer.insert(sequence, (packet, timestamp));
        self.release(None, out);
    }

    /// Gives up on gaps older than `max_delay` at `now`.
    pub fn poll(&mut self, now: Instant, out: &mut Vec<Frame>) {
        self.release(Some(now), out);
    }

    fn release(&mut self, now: Option<Instant>, out: &mut Vec<Frame>) {
        loop {
            let Some((&first, (packet, _))) = self.buffer.first_key_value() else {
                return;
            };
            let Some(next) = self.next else { return };
            if first != next {
                let waited = now
                    .map(|now| now.saturating_duration_since(packet.arrival) >= self.max_delay)
                    .unwrap_or(false);
                if !waited && self.buffer.len() < MAX_BUFFERED {
                    return;
                }
                self.lost(first - next);
            }
            let (sequence, (packet, timestamp)) = self.buffer.pop_first().expect("checked");
            self.next = Some(sequence + 1);
            self.on_packet(packet, timestamp, out);
        }
    }

    fn lost(&mut self, count: i64) {
        tracing::debug!(codec = ?self.codec, count, buffered = self.buffer.len(), "recorded track lost packets");
        self.lost_packets += count.max(0) as u64;
        self.next = None;
        if self.codec.is_video() {
            // The frame being joined lost a piece, and the next frames reference what was lost.
            self.frame = None;
            self.waiting_keyframe = true;
            self.wants_keyframe = true;
        }
        // Resume from the first packet still buffered.
        self.next = self.buffer.first_key_value().map(|(k, _)| *k);
    }

    fn time_of(&self, timestamp: i64) -> (u64, u64) {
        let (anchor_ms, anchor_ts) = self.anchor.unwrap_or((0, timestamp));
        let delta = timestamp - anchor_ts;
        let ms = anchor_ms as i64 + delta * 1000 / i64::from(self.clock_rate);
        let samples = anchor_ms as i64 * 48 + delta * 48_000 / i64::from(self.clock_rate);
        (ms.max(0) as u64, samples.max(0) as u64)
    }

    fn on_packet(&mut self, packet: TapPacket, timestamp: i64, out: &mut Vec<Frame>) {
        if packet.payload.is_empty() {
            return; // padding
        }
        if !self.codec.is_video() {
            let data = match self.red_payload_type {
                Some(pt) if pt == packet.payload_type => {
                    match crate::sfu::red::Red::parse(&packet.payload) {
                        Some(red) => crate::sfu::red::block(&packet.payload, &red.primary),
                        None => return,
                    }
                }
                _ => packet.payload.clone(),
            };
            if data.is_empty() {
                return;
            }
            let (time_ms, samples) = self.time_of(timestamp);
            self.frames += 1;
            out.push(Frame {
                time_ms,
                samples,
                keyframe: true,
                data,
            });
            return;
        }
        match &mut self.frame {
            Some((ts, packets)) if *ts == timestamp => {
                if packets.len() < MAX_FRAME_PACKETS {
                    packets.push(packet.clone());
                } else {
                    self.frame = None;
                    self.waiting_keyframe = true;
                    self.wants_keyframe = true;
                    return;
                }
            }
            _ => {
                // A new timestamp before the last frame's marker: that frame lost its end.
                if let Some((ts, packets)) = self.frame.take() {
                    tracing::debug!(
                        ts,
                        packets = packets.len(),
                        "recorded frame without its end"
                    );
                    self.waiting_keyframe = true;
                    self.wants_keyframe = true;
                }
                self.frame = Some((timestamp, vec![packet.clone()]));
            }
        }
        if packet.marker {
            if let Some((ts, packets)) = self.frame.take() {
                self.finish_frame(ts, packets, out);
            }
        }
    }

    fn finish_frame(&mut self, timestamp: i64, packets: Vec<TapPacket>, out: &mut Vec<Frame>) {
        let keyframe = self.codec.starts_keyframe(&packets[0].payload);
        if self.waiting_keyframe && !keyframe {
            self.wants_keyframe = true;
            return;
        }
        let Some(data) = depacketize(self.codec, &packets) else {
            tracing::debug!(packets = packets.len(), "recorded frame not depacketized");
            self.waiting_keyframe = true;
            self.wants_keyframe = true;
            return;
        };
        self.waiting_keyframe = false;
        let (time_ms, samples) = self.time_of(timestamp);
        self.frames += 1;
        out.push(Frame {
            time_ms,
            samples,
            keyframe,
            data,
        });
    }
}

/// The frame's bitstream: VP8/VP9 frames as they are, H264 as AVCC (4-byte lengths).
fn depacketize(codec: Codec, packets: &[TapPacket]) -> Option<Bytes> {
    let mut frame = BytesMut::new();
    match codec {
        // Our own descriptor reader: rtc's refuses packets under 4 bytes, and a frame's last
        // fragment can be 2.
        Codec::Vp8 => {
            for p in packets {
                let at = crate::sfu::keyframe::vp8_descriptor_len(&p.payload)?;
                frame.extend_from_slice(&p.payload[at..]);
            }
        }
        Codec::Vp9 => {
            let mut d = Vp9Packet::default();
            for p in packets {
                frame.extend_from_slice(&d.depacketize(&p.payload).ok()?);
            }
        }
        Codec::H264 => {
            let mut d = H264Packet::default();
            d.is_avc = true;
            for p in packets {
                frame.extend_from_slice(&d.depacketize(&p.payload).ok()?);
            }
        }
        Codec::Opus => return None,
    }
    (!frame.is_empty()).then(|| frame.freeze())
}

/// H264: the SPS and PPS of an AVCC frame, when it carries them (a WebRTC keyframe does).
pub fn h264_parameter_sets(frame: &[u8]) -> (Option<&[u8]>, Option<&[u8]>) {
    let (mut sps, mut pps) = (None, None);
    let mut at = 0usize;
    while at + 4 <= frame.len() {
        let len = u32::from_be_bytes([frame[at], frame[at + 1], frame[at + 2], frame[at + 3]]);
        let start = at + 4;
        let Some(end) = start
            .checked_add(len as usize)
            .filter(|e| *e <= frame.len())
        else {
            break;
        };
        let nal = &frame[start..end];
        match nal.first().map(|b| b & 0x1F) {
            Some(7) => sps = Some(nal),
            Some(8) => pps = Some(nal),
            _ => {}
        }
        at = end;
    }
    (sps, pps)
}

/// The `avcC` record (ISO 14496-15 §5.2.4.1), the CodecPrivate of an H264 track.
pub fn avc_configuration(sps: &[u8], pps: &[u8]) -> Option<Vec<u8>> {
    if sps.len() < 4 || sps.len() > 0xFFFF || pps.len() > 0xFFFF {
        return None;
    }
    let mut record = vec![1, sps[1], sps[2], sps[3], 0xFF, 0xE1];
    record.extend_from_slice(&(sps.len() as u16).to_be_bytes());
    record.extend_from_slice(sps);
    record.push(1);
    record.extend_from_slice(&(pps.len() as u16).to_be_bytes());
    record.extend_from_slice(pps);
    Some(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(
        sequence: u16,
        timestamp: u32,
        marker: bool,
        payload: &[u8],
        at: Instant,
    ) -> TapPacket {
        TapPacket {
            slot: 0,
            sequence,
            timestamp,
            marker,
            payload_type: 96,
            payload: Bytes::copy_from_slice(payload),
            arrival: at,
        }
    }

    #[test]
    fn reorders_and_times_audio() {
        let start = Instant::now();
        let mut track = RecordedTrack::new(Codec::Opus, 48_000, None, Duration::from_millis(100));
        let mut out = Vec::new();
        track.push(packet(65_535, 1_000, true, b"a", start), start, &mut out);
        track.push(packet(1, 1_000 + 1_920, true, b"c", start), start, &mut out);
        assert_eq!(out.len(), 1, "the packet after the gap waits");
        track.push(packet(0, 1_000 + 960, true, b"b", start), start, &mut out);
        let got: Vec<_> = out.iter().map(|f| (f.data.clone(), f.time_ms)).collect();
        assert_eq!(
            got,
            vec![
                (Bytes::from_static(b"a"), 0),
                (Bytes::from_static(b"b"), 20),
                (Bytes::from_static(b"c"), 40)
            ]
        );
        // A pause in time (10 s without packets) stays a pause.
        track.push(
            packet(2, 1_000 + 2_880 + 480_000, true, b"d", start),
            start,
            &mut out,
        );
        assert_eq!(out.last().unwrap().time_ms, 10_060);
        assert_eq!(out.last().unwrap().samples, 10_060 * 48);
    }

    #[test]
    fn a_lost_video_packet_skips_to_the_next_keyframe() {
        let start = Instant::now();
        let mut track = RecordedTrack::new(Codec::Vp8, 90_000, None, Duration::from_millis(100));
        let mut out = Vec::new();
        // VP8: S bit, partition 0; a keyframe has P=0 in the first byte after the descriptor.
        let key = [0x10, 0x00, 0x9d, 0x01, 0x2a];
        let delta = [0x10, 0x01];
        let more = [0x00, 0x55];
        track.push(packet(10, 0, true, &key, start), start, &mut out);
        assert_eq!(out.len(), 1);
        assert!(out[0].keyframe);
        // Frame 2 in two packets, its first lost; frame 3 a delta: both dropped.
        track.push(packet(12, 3_000, true, &more, start), start, &mut out);
        track.push(packet(13, 6_000, true, &delta, start), start, &mut out);
        track.poll(start + Duration::from_millis(200), &mut out);
        assert_eq!(out.len(), 1);
        assert!(track.wants_keyframe);
        assert_eq!(track.lost_packets, 1);
        track.push(packet(14, 9_000, true, &key, start), start, &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].time_ms, 100);
    }

    #[test]
    fn unwraps_timestamps() {
        let mut u = Unwrap::default();
        assert_eq!(u.extend(u32::MAX - 10, 32), i64::from(u32::MAX - 10));
        assert_eq!(u.extend(5, 32), i64::from(u32::MAX) + 6);
        assert_eq!(u.extend(u32::MAX - 20, 32), i64::from(u32::MAX - 20));
    }

    #[test]
    fn avc_configuration_from_a_keyframe() {
        let frame = [
            0, 0, 0, 4, 0x67, 0x42, 0xC0, 0x1F, 0, 0, 0, 2, 0x68, 0xCE, 0, 0, 0, 2, 0x65, 0x88,
        ];
        let (sps, pps) = h264_parameter_sets(&frame);
        let record = avc_configuration(sps.unwrap(), pps.unwrap()).unwrap();
        assert_eq!(&record[..6], &[1, 0x42, 0xC0, 0x1F, 0xFF, 0xE1]);
        assert_eq!(record.len(), 6 + 2 + 4 + 1 + 2 + 2);
    }
}

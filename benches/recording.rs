//! What recording costs per packet: one second of a 720p-like camera (30 VP8 frames of 4
//! packets, a keyframe first) and its Opus (50 packets), through the recorder's real path —
//! jitter buffer, frame assembly and depacketizing (`RecordedTrack`), the WebM muxer and the
//! file write (`MkvWriter`, to a file in the temp dir). Divide by 80 packets for the per-packet
//! cost; the inverse is the packet rate one recorder core sustains.

use std::time::{Duration, Instant};

use bytes::Bytes;
use convene::recording::track::{Codec, Frame, RecordedTrack};
use convene::recording::webm::{opus_head, Container, MkvWriter, TrackKind, TrackSpec};
use convene::sfu::tap::TapPacket;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const VIDEO_PACKETS_PER_FRAME: usize = 4;

fn second_of_media(start: Instant, second: u32) -> Vec<TapPacket> {
    let mut packets = Vec::new();
    let mut seq_v = (second as usize * 30 * VIDEO_PACKETS_PER_FRAME) as u16;
    let mut seq_a = (second * 50) as u16;
    for frame in 0..30u32 {
        let ts = (second * 30 + frame) * 3_000;
        for i in 0..VIDEO_PACKETS_PER_FRAME {
            // VP8 descriptor: S on the first packet of a frame; a keyframe (P=0) opens each
            // second, the others are delta frames.
            let mut payload = vec![if i == 0 { 0x10 } else { 0x00 }];
            let key = frame == 0 && i == 0;
            payload.push(if key { 0x00 } else { 0x01 });
            payload.resize(1_100, 0x5A);
            packets.push(TapPacket {
                slot: 0,
                sequence: seq_v,
                timestamp: ts,
                marker: i + 1 == VIDEO_PACKETS_PER_FRAME,
                payload_type: 96,
                payload: Bytes::from(payload),
                arrival: start,
            });
            seq_v = seq_v.wrapping_add(1);
        }
        for _ in 0..(if frame % 3 == 2 { 1 } else { 2 }) {
            packets.push(TapPacket {
                slot: 1,
                sequence: seq_a,
                timestamp: u32::from(seq_a) * 960,
                marker: true,
                payload_type: 111,
                payload: Bytes::from(vec![0xFC; 100]),
                arrival: start,
            });
            seq_a = seq_a.wrapping_add(1);
        }
    }
    packets
}

fn record(c: &mut Criterion) {
    let start = Instant::now();
    let seconds: Vec<Vec<TapPacket>> = (0..10).map(|s| second_of_media(start, s)).collect();
    let per_second = seconds[0].len() as u64;
    let mut group = c.benchmark_group("recording");
    group.throughput(Throughput::Elements(per_second));
    group.measurement_time(Duration::from_secs(8));
    group.bench_function("one_second_vp8_opus_to_webm", |b| {
        b.iter_custom(|iterations| {
            let path =
                std::env::temp_dir().join(format!("convene-bench-{}.webm", std::process::id()));
            let file = std::fs::File::create(&path).unwrap();
            let tracks = [
                TrackSpec {
                    number: 1,
                    kind: TrackKind::Video {
                        width: 1280,
                        height: 720,
                    },
                    codec_id: "V_VP8",
                    codec_private: None,
                },
                TrackSpec {
                    number: 2,
                    kind: TrackKind::Audio {
                        sample_rate: 48_000,
                        channels: 2,
                    },
                    codec_id: "A_OPUS",
                    codec_private: Some(opus_head(2, 0)),
                },
            ];
            let mut mkv = MkvWriter::create(file, Container::Webm, &tracks).unwrap();
            let jitter = Duration::from_millis(200);
            let mut video = RecordedTrack::new(Codec::Vp8, 90_000, None, jitter);
            let mut audio = RecordedTrack::new(Codec::Opus, 48_000, None, jitter);
            let mut frames: Vec<Frame> = Vec::new();
            let began = Instant::now();
            for i in 0..iterations {
                let batch = &seconds[(i % 10) as usize];
                for packet in batch {
                    // Past the ten prepared seconds the timeline repeats: a new file each lap
                    // would measure file creation, so the writer just sees time go on.
                    let (track, number) = if packet.slot == 0 {
                        (&mut video, 1)
                    } else {
                        (&mut audio, 2)
                    };
                    let mut p = packet.clone();
                    let lap = (i / 10) as u32;
                    if packet.slot == 0 {
                        p.sequence = p.sequence.wrapping_add((lap * 1_200) as u16);
                        p.timestamp = p.timestamp.wrapping_add(lap * 900_000);
                    } else {
                        p.sequence = p.sequence.wrapping_add((lap * 500) as u16);
                        p.timestamp = p.timestamp.wrapping_add(lap * 480_000);
                    }
                    track.push(p, start, &mut frames);
                    for frame in frames.drain(..) {
                        mkv.write_frame(number, frame.time_ms, frame.keyframe, &frame.data)
                            .unwrap();
                    }
                }
            }
            let elapsed = began.elapsed();
            mkv.finish().unwrap();
            let _ = std::fs::remove_file(&path);
            elapsed
        })
    });
    group.finish();
}

criterion_group!(benches, record);
criterion_main!(benches);

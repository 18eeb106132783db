//! Real media for tests that check what we write: VP8, H264 and Opus encoded once by Debian's
//! ffmpeg from its test sources, read back as frames and packets, sent paced in real time; and
//! ffprobe/ffmpeg run on the files the server wrote.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use rtc::rtp::codec::h264::H264Payloader;
use rtc::rtp::codec::vp8::Vp8Payloader;
use rtc::rtp::packetizer::Payloader;
use serde_json::Value;

pub const FPS: u32 = 30;

/// Whether ffmpeg and ffprobe are installed (scripts/test installs them as root).
pub fn ffmpeg_available() -> bool {
    ["ffmpeg", "ffprobe"].iter().all(|tool| {
        Command::new(tool)
            .arg("-version")
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

fn ffmpeg(args: &[&str]) {
    let out = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y"])
        .args(args)
        .output()
        .expect("ffmpeg runs");
    assert!(
        out.status.success(),
        "ffmpeg {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `seconds` of VP8 at 30 fps, 320x240, a keyframe every 2 s: the frames in order.
pub fn vp8_frames(dir: &Path, seconds: u32) -> Vec<Bytes> {
    let path = dir.join("in.ivf");
    let t = seconds.to_string();
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc=size=320x240:rate=30",
        "-t",
        &t,
        "-c:v",
        "libvpx",
        "-deadline",
        "realtime",
        "-g",
        "60",
        "-b:v",
        "400k",
        path.to_str().unwrap(),
    ]);
    let file = std::fs::File::open(&path).unwrap();
    let (mut reader, _) = rtc::media::io::ivf_reader::IVFReader::new(file).unwrap();
    let mut frames = Vec::new();
    while let Ok((frame, _)) = reader.parse_next_frame() {
        frames.push(frame.freeze());
    }
    frames
}

/// `seconds` of H264 (constrained baseline, Annex B), one access unit per frame.
pub fn h264_frames(dir: &Path, seconds: u32) -> Vec<Bytes> {
    let path = dir.join("in.h264");
    let t = seconds.to_string();
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "testsrc=size=320x240:rate=30",
        "-t",
        &t,
        "-c:v",
        "libx264",
        "-pix_fmt",
        "yuv420p",
        "-profile:v",
        "baseline",
        "-tune",
        "zerolatency",
        "-g",
        "60",
        "-x264-params",
        "aud=1",
        "-f",
        "h264",
        path.to_str().unwrap(),
    ]);
    let data = std::fs::read(&path).unwrap();
    // Access units start at their AUD (NAL type 9).
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 4 < data.len() {
        if data[i..i + 4] == [0, 0, 0, 1] && data[i + 4] & 0x1F == 9 {
            starts.push(i);
        }
        i += 1;
    }
    starts.push(data.len());
    starts
        .windows(2)
        .map(|w| Bytes::copy_from_slice(&data[w[0]..w[1]]))
        .collect()
}

/// `seconds` of a 440 Hz tone as Opus, 20 ms packets.
pub fn opus_packets(dir: &Path, seconds: u32) -> Vec<Bytes> {
    let path = dir.join("in.ogg");
    let t = seconds.to_string();
    ffmpeg(&[
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:sample_rate=48000",
        "-t",
        &t,
        "-c:a",
        "libopus",
        "-frame_duration",
        "20",
        "-b:a",
        "32k",
        path.to_str().unwrap(),
    ]);
    let file = std::fs::File::open(&path).unwrap();
    let mut reader = ogg::reading::PacketReader::new(std::io::BufReader::new(file));
    let mut packets = Vec::new();
    while let Ok(Some(packet)) = reader.read_packet() {
        let data = packet.data;
        if data.starts_with(b"OpusHead") || data.starts_with(b"OpusTags") {
            continue;
        }
        packets.push(Bytes::from(data));
    }
    packets
}

/// RTP payloads of one video frame.
pub fn packetize(h264: bool, frame: &Bytes) -> Vec<Bytes> {
    if h264 {
        H264Payloader::default()
            .payload(1_100, frame)
            .unwrap_or_default()
    } else {
        Vp8Payloader::default()
            .payload(1_100, frame)
            .unwrap_or_default()
    }
}

/// What ffprobe says of a file: its streams and format.
pub fn probe(path: &Path) -> Value {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-print_format",
            "json",
            "-show_streams",
            "-show_format",
        ])
        .arg(path)
        .output()
        .expect("ffprobe runs");
    assert!(
        out.status.success(),
        "ffprobe {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Decodes the whole file: the errors ffmpeg printed (empty when it decoded cleanly).
pub fn decode_errors(path: &Path) -> String {
    // Frames keep the file's timestamps: without passthrough ffmpeg converts them to a frame
    // rate it guesses, and frames closer than its period (a sender that bunched them under CPU
    // load) collide on the null muxer. Repeated timestamps in the file itself still fail here.
    let out = Command::new("ffmpeg")
        .args(["-hide_banner", "-v", "error", "-i"])
        .arg(path)
        .args(["-fps_mode", "passthrough", "-f", "null", "-"])
        .output()
        .expect("ffmpeg runs");
    let mut errors = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        errors.push_str(&format!(" (exit {:?})", out.status.code()));
    }
    errors
}

/// Every decoded frame time (seconds) of one stream (`v:0`, `a:0`), in order.
pub fn frame_times(path: &Path, stream: &str) -> Vec<f64> {
    let out = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", stream])
        .args(["-show_entries", "frame=pts_time", "-of", "csv=p=0"])
        .arg(path)
        .output()
        .expect("ffprobe runs");
    let mut times: Vec<f64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().trim_end_matches(',').parse().ok())
        .collect();
    times.sort_by(f64::total_cmp);
    times
}

/// The last decoded frame's time of a stream: how far it decodes.
pub fn decoded_seconds(path: &Path, stream: &str) -> f64 {
    frame_times(path, stream).last().copied().unwrap_or(0.0)
}

/// A scratch directory removed when dropped.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("convene-{name}-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub const VIDEO_STEP: u32 = 90_000 / FPS;
pub const AUDIO_STEP: u32 = 960;
pub const FRAME_INTERVAL: Duration = Duration::from_millis(1_000 / FPS as u64);

//! One recorded file's task: the tracks of one participant's source (camera and microphone, or
//! a screen share) muxed into one WebM/Matroska file, or Opus into Ogg for audio-only.
//!
//! The header names every track, so it waits until each track added so far has a first frame
//! (a video track: its first keyframe; asked for when the track is added) or
//! [`HEADER_WAIT`] passed, holding frames meanwhile. A track added after the header (a camera
//! turned on mid-recording) ends this file and starts the next one with every track: a file's
//! tracks never change. Frames are written in time order per track as the tracks release them.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::ogg::OggOpusWriter;
use super::track::{avc_configuration, h264_parameter_sets, Codec, Frame, RecordedTrack};
use super::webm::{opus_head, Container, MkvWriter, TrackKind, TrackSpec};
use crate::ids::TrackId;
use crate::sfu::tap::{TapInfo, TapPacket};

/// How long a file waits for each of its tracks' first frame before writing its header.
pub const HEADER_WAIT: Duration = Duration::from_secs(3);
/// The tracks of one source are added one after another (each an SFU round trip): the header
/// waits at least this long after the first, so a fast first track does not start a file alone.
const SETTLE: Duration = Duration::from_millis(500);
/// Frames held while the header waits, at most.
const MAX_HELD_FRAMES: usize = 4_096;
/// Keyframe requests per track, at most one per this.
const KEYFRAME_ASK_EVERY: Duration = Duration::from_millis(500);

/// What the file task is told.
pub enum Control {
    AddTrack {
        slot: u8,
        track: TrackId,
        info: TapInfo,
    },
    /// Finish and report every file written.
    Stop {
        reply: oneshot::Sender<Vec<Outcome>>,
    },
}

/// A finished (or failed) file.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub file_id: String,
    pub path: PathBuf,
    pub content_type: &'static str,
    pub size_bytes: u64,
    pub duration_ms: u64,
    /// `audio`, `video`, or `audio,video`.
    pub kinds: String,
    /// Codec names, in track order (`vp8,opus`).
    pub codecs: String,
    pub started_at: i64,
    pub ended_at: i64,
    pub error: Option<String>,
}

/// A new file of this task was opened (its row is written by whoever listens).
#[derive(Debug, Clone)]
pub struct Opened {
    pub file_id: String,
    pub path: PathBuf,
    pub content_type: &'static str,
    pub started_at: i64,
}

pub struct FileTask {
    pub audio_only: bool,
    /// `<dir>/<stem>`: each file of this task is `<stem>-<n>.<ext>`.
    pub stem: PathBuf,
    pub packets: mpsc::Receiver<TapPacket>,
    pub control: mpsc::UnboundedReceiver<Control>,
    /// New files are told here.
    pub opened: mpsc::UnboundedSender<Opened>,
    pub sfu: crate::sfu::Sfu,
    pub jitter: Duration,
}

struct Slot {
    slot: u8,
    track: TrackId,
    recorded: RecordedTrack,
    info: TapInfo,
    /// Its number in the current file (1-based), once the header names it.
    number: Option<u64>,
    first_frame: Option<Frame>,
    asked_at: Option<Instant>,
}

enum Writer {
    Mkv(MkvWriter),
    Ogg(OggOpusWriter),
}

struct Current {
    file_id: String,
    path: PathBuf,
    container: Option<Container>,
    writer: Writer,
    started_at: i64,
    /// Frames before this (ms in the task's time) belong to an earlier file.
    origin_ms: u64,
    kinds: String,
    codecs: String,
    /// The time of the last block written per track number: a block never goes out at or
    /// before it (a frame the jitter buffer let through twice, say, or two taps of one track
    /// for a moment), which players and ffmpeg take as broken timestamps.
    last_ms: std::collections::HashMap<u64, u64>,
}

struct State {
    task: FileTask,
    start: Instant,
    slots: Vec<Slot>,
    current: Option<Current>,
    /// Frames waiting for the header, in arrival order: (slot index, frame).
    held: Vec<(usize, Frame)>,
    header_deadline: Option<Instant>,
    /// No header before this (see [`SETTLE`]).
    settle_until: Option<Instant>,
    done: Vec<Outcome>,
    index: u32,
    failed: Option<String>,
}

pub async fn run(task: FileTask) {
    let mut state = State {
        task,
        start: Instant::now(),
        slots: Vec::new(),
        current: None,
        held: Vec::new(),
        header_deadline: None,
        settle_until: None,
        done: Vec::new(),
        index: 0,
        failed: None,
    };
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut frames = Vec::new();
    loop {
        tokio::select! {
            packet = state.task.packets.recv() => {
                let Some(packet) = packet else { continue };
                let Some(index) = state.slots.iter().position(|s| s.slot == packet.slot) else {
                    continue;
                };
                state.slots[index].recorded.push(packet, state.start, &mut frames);
                state.take(index, &mut frames);
            }
            control = state.task.control.recv() => match control {
                Some(Control::AddTrack { slot, track, info }) => state.add_track(slot, track, info),
                Some(Control::Stop { reply }) => {
                    state.finish_current();
                    let _ = reply.send(std::mem::take(&mut state.done));
                    return;
                }
                None => {
                    state.finish_current();
                    return;
                }
            },
            _ = tick.tick() => {
                let now = Instant::now();
                for index in 0..state.slots.len() {
                    state.slots[index].recorded.poll(now, &mut frames);
                    state.take(index, &mut frames);
                }
                state.ask_keyframes(now).await;
                if state.current.is_none()
                    && (state.header_deadline.is_some_and(|d| now >= d) || state.all_ready(now))
                {
                    state.open();
                }
            }
        }
    }
}

fn kinds_of(slots: &[&Slot]) -> String {
    let audio = slots.iter().any(|s| !s.recorded.codec().is_video());
    let video = slots.iter().any(|s| s.recorded.codec().is_video());
    match (audio, video) {
        (true, true) => "audio,video",
        (false, true) => "video",
        _ => "audio",
    }
    .to_owned()
}

impl State {
    fn add_track(&mut self, slot: u8, track: TrackId, info: TapInfo) {
        let Some(codec) = Codec::of(&info.mime_type) else {
            tracing::warn!(%track, mime = %info.mime_type, "codec not recordable: skipped");
            return;
        };
        if self.task.audio_only && codec.is_video() {
            return;
        }
        self.slots.push(Slot {
            slot,
            track,
            recorded: RecordedTrack::new(
                codec,
                info.clock_rate,
                info.red_payload_type,
                self.task.jitter,
            ),
            info,
            number: None,
            first_frame: None,
            asked_at: None,
        });
        if codec.is_video() {
            self.slots
                .last_mut()
                .expect("pushed")
                .recorded
                .wants_keyframe = true;
        }
        if self.current.is_some() {
            // The file's tracks are fixed: this one starts the next file.
            self.settle_until = Some(Instant::now() + SETTLE);
            self.header_deadline = Some(Instant::now() + HEADER_WAIT);
            self.finish_current();
            for slot in &mut self.slots {
                slot.number = None;
                slot.first_frame = None;
                if slot.recorded.codec().is_video() {
                    slot.recorded.wants_keyframe = true;
                }
            }
        }
        self.header_deadline
            .get_or_insert_with(|| Instant::now() + HEADER_WAIT);
        self.settle_until
            .get_or_insert_with(|| Instant::now() + SETTLE);
    }

    /// Every track added has its first frame, and the others of its source had time to come.
    fn all_ready(&self, now: Instant) -> bool {
        !self.slots.is_empty()
            && self.settle_until.is_some_and(|at| now >= at)
            && self.slots.iter().all(|s| s.first_frame.is_some())
    }

    fn take(&mut self, index: usize, frames: &mut Vec<Frame>) {
        for frame in frames.drain(..) {
            if self.failed.is_some() {
                continue;
            }
            if self.current.is_none() {
                let slot = &mut self.slots[index];
                let usable = !slot.recorded.codec().is_video() || frame.keyframe;
                if slot.first_frame.is_none() && usable {
                    slot.first_frame = Some(frame.clone());
                }
                if slot.first_frame.is_some() && self.held.len() < MAX_HELD_FRAMES {
                    self.held.push((index, frame));
                }
                if self.all_ready(Instant::now()) {
                    self.open();
                }
                continue;
            }
            let late_video = self.slots[index].number.is_none()
                && self.slots[index].recorded.codec().is_video()
                && frame.keyframe;
            if late_video {
                // A track left out of this file's header (H264 whose parameter sets came late)
                // starts the next file.
                self.finish_current();
                for slot in &mut self.slots {
                    slot.number = None;
                    slot.first_frame = None;
                    if slot.recorded.codec().is_video() {
                        slot.recorded.wants_keyframe = true;
                    }
                }
                self.slots[index].first_frame = Some(frame.clone());
                self.held.push((index, frame));
                self.header_deadline = Some(Instant::now() + HEADER_WAIT);
                continue;
            }
            self.write(index, &frame);
        }
    }

    fn write(&mut self, index: usize, frame: &Frame) {
        let Some(current) = &mut self.current else {
            return;
        };
        let Some(number) = self.slots[index].number else {
            return; // not in this file (no first frame by the header's deadline)
        };
        if frame.time_ms < current.origin_ms {
            return;
        }
        let time = frame.time_ms - current.origin_ms;
        match current.last_ms.get(&number) {
            Some(&last) if time <= last => {
                tracing::debug!(
                    track = number,
                    time,
                    last,
                    "recorded frame not after the last; dropped"
                );
                return;
            }
            _ => {
                current.last_ms.insert(number, time);
            }
        }
        let result = match &mut current.writer {
            Writer::Mkv(mkv) => mkv.write_frame(number, time, frame.keyframe, &frame.data),
            Writer::Ogg(ogg) => {
                let samples = frame.samples.saturating_sub(current.origin_ms * 48);
                ogg.write_packet(samples, opus_samples(&frame.data), &frame.data)
            }
        };
        if let Err(e) = result {
            tracing::warn!(path = %current.path.display(), error = %e, "recording write failed");
            self.failed = Some(format!("write failed: {e}"));
        }
    }

    /// Writes the header with the tracks that have a first frame, then the held frames.
    fn open(&mut self) {
        self.header_deadline = None;
        // A VP8/VP9 track still waiting for its first keyframe (a simulcast layer dynacast is
        // turning back on) is named anyway: its video starts when the keyframe comes. H264
        // needs its parameter sets in the header, so it waits for the next file.
        let ready: Vec<usize> = (0..self.slots.len())
            .filter(|&i| {
                let slot = &self.slots[i];
                slot.first_frame.is_some()
                    || (!self.task.audio_only
                        && matches!(slot.recorded.codec(), Codec::Vp8 | Codec::Vp9))
            })
            .collect();
        if !ready.iter().any(|&i| self.slots[i].first_frame.is_some()) {
            // Nothing arrived yet: wait for the first frame without a deadline.
            return;
        }
        self.index += 1;
        let file_id = uuid::Uuid::now_v7().to_string();
        let origin_ms = ready
            .iter()
            .filter_map(|&i| self.slots[i].first_frame.as_ref().map(|f| f.time_ms))
            .min()
            .unwrap_or(0);
        let result = if self.task.audio_only {
            self.open_ogg(&ready)
        } else {
            self.open_mkv(&ready)
        };
        let (path, container, writer) = match result {
            Ok(opened) => opened,
            Err(e) => {
                tracing::warn!(error = %e, "recording file could not be created");
                self.failed = Some(format!("create failed: {e}"));
                return;
            }
        };
        let started_at = crate::store::now_ms();
        // In the file's track order: video first.
        let mut chosen: Vec<&Slot> = ready.iter().map(|&i| &self.slots[i]).collect();
        chosen.sort_by_key(|s| !s.recorded.codec().is_video());
        let kinds = kinds_of(&chosen);
        let codecs = chosen
            .iter()
            .map(|s| s.recorded.codec().name())
            .collect::<Vec<_>>()
            .join(",");
        let content_type = container.map(|c| c.content_type()).unwrap_or("audio/ogg");
        let _ = self.task.opened.send(Opened {
            file_id: file_id.clone(),
            path: path.clone(),
            content_type,
            started_at,
        });
        self.current = Some(Current {
            file_id,
            path,
            container,
            writer,
            started_at,
            origin_ms,
            kinds,
            codecs,
            last_ms: Default::default(),
        });
        for held in std::mem::take(&mut self.held) {
            self.write(held.0, &held.1);
        }
    }

    fn open_ogg(
        &mut self,
        ready: &[usize],
    ) -> std::io::Result<(PathBuf, Option<Container>, Writer)> {
        let path = self.path("ogg");
        let slot = &mut self.slots[ready[0]];
        slot.number = Some(1);
        let channels = slot.info.channels.clamp(1, 2) as u8;
        let file = create(&path)?;
        let serial = rand::random::<u32>();
        Ok((
            path,
            None,
            Writer::Ogg(OggOpusWriter::create(file, channels, serial)?),
        ))
    }

    fn open_mkv(
        &mut self,
        ready: &[usize],
    ) -> std::io::Result<(PathBuf, Option<Container>, Writer)> {
        let mut container = Container::Webm;
        let mut specs = Vec::new();
        // Video first, then audio: players show the first video track.
        let mut order: Vec<usize> = ready.to_vec();
        order.sort_by_key(|&i| !self.slots[i].recorded.codec().is_video());
        for (n, &i) in order.iter().enumerate() {
            let slot = &mut self.slots[i];
            let number = n as u64 + 1;
            slot.number = Some(number);
            let codec = slot.recorded.codec();
            let first = slot.first_frame.as_ref();
            let (kind, private) = match codec {
                Codec::Opus => (
                    TrackKind::Audio {
                        sample_rate: 48_000,
                        channels: slot.info.channels.clamp(1, 2) as u8,
                    },
                    Some(opus_head(slot.info.channels.clamp(1, 2) as u8, 0)),
                ),
                Codec::H264 => {
                    container = Container::Matroska;
                    let (sps, pps) = first
                        .map(|f| h264_parameter_sets(&f.data))
                        .unwrap_or((None, None));
                    let private = match (sps, pps) {
                        (Some(sps), Some(pps)) => avc_configuration(sps, pps),
                        _ => None,
                    };
                    (
                        TrackKind::Video {
                            width: 0,
                            height: 0,
                        },
                        private,
                    )
                }
                Codec::Vp8 => {
                    let size = first
                        .and_then(|f| crate::sfu::keyframe::vp8_keyframe(&vp8_as_rtp(&f.data)))
                        .flatten()
                        .unwrap_or((0, 0));
                    (
                        TrackKind::Video {
                            width: size.0,
                            height: size.1,
                        },
                        None,
                    )
                }
                Codec::Vp9 => (
                    TrackKind::Video {
                        width: 0,
                        height: 0,
                    },
                    None,
                ),
            };
            specs.push(TrackSpec {
                number,
                kind,
                codec_id: codec.codec_id(),
                codec_private: private,
            });
        }
        let path = self.path(container.extension());
        let file = create(&path)?;
        Ok((
            path,
            Some(container),
            Writer::Mkv(MkvWriter::create(file, container, &specs)?),
        ))
    }

    fn path(&self, extension: &str) -> PathBuf {
        let mut name = self
            .task
            .stem
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        name.push_str(&format!("-{}.{extension}", self.index));
        self.task.stem.with_file_name(name)
    }

    fn finish_current(&mut self) {
        let Some(current) = self.current.take() else {
            return;
        };
        let (duration_ms, result) = match current.writer {
            Writer::Mkv(mkv) => (mkv.duration_ms(), mkv.finish().map(|_| ())),
            Writer::Ogg(ogg) => (ogg.duration_ms(), ogg.finish()),
        };
        let size_bytes = std::fs::metadata(&current.path)
            .map(|m| m.len())
            .unwrap_or(0);
        let error = self
            .failed
            .take()
            .or_else(|| result.err().map(|e| format!("finish failed: {e}")));
        self.done.push(Outcome {
            file_id: current.file_id,
            path: current.path,
            content_type: current
                .container
                .map(|c| c.content_type())
                .unwrap_or("audio/ogg"),
            size_bytes,
            duration_ms,
            kinds: current.kinds,
            codecs: current.codecs,
            started_at: current.started_at,
            ended_at: crate::store::now_ms(),
            error,
        });
    }

    async fn ask_keyframes(&mut self, now: Instant) {
        for slot in &mut self.slots {
            if !slot.recorded.wants_keyframe {
                continue;
            }
            if slot
                .asked_at
                .is_some_and(|at| now.saturating_duration_since(at) < KEYFRAME_ASK_EVERY)
            {
                continue;
            }
            slot.recorded.wants_keyframe = false;
            slot.asked_at = Some(now);
            let _ = self.task.sfu.request_keyframe(slot.track).await;
        }
    }
}

fn create(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
}

/// A VP8 frame behind a minimal payload descriptor, for the keyframe reader that takes RTP
/// payloads.
fn vp8_as_rtp(frame: &[u8]) -> Vec<u8> {
    let mut payload = Vec::with_capacity(frame.len().min(16) + 1);
    payload.push(0x10);
    payload.extend_from_slice(&frame[..frame.len().min(16)]);
    payload
}

/// Samples (48 kHz) in one Opus packet (RFC 6716 §3.1), 960 when it cannot tell.
fn opus_samples(packet: &[u8]) -> u64 {
    let Some(&toc) = packet.first() else {
        return 960;
    };
    let config = toc >> 3;
    let per_frame: u64 = match config {
        0..=11 => [480, 960, 1920, 2880][usize::from(config % 4)],
        12..=15 => [480, 960][usize::from(config % 2)],
        _ => [120, 240, 480, 960][usize::from(config % 4)],
    };
    let frames: u64 = match toc & 0x03 {
        0 => 1,
        1 | 2 => 2,
        _ => packet.get(1).map(|b| u64::from(b & 0x3F)).unwrap_or(1),
    };
    (per_frame * frames).clamp(120, 5_760)
}

//! Matroska and WebM files, written as they grow and readable at every moment.
//!
//! Layout: the EBML header; a Segment of unknown size (so the file ends wherever writing
//! stopped and is still well formed); a reserved Void where the SeekHead goes at close; Info,
//! whose last child is Duration (patched in place at close); Tracks; then Clusters, each written
//! whole when it closes (at every video keyframe and at least every [`CLUSTER_MS`]), so a
//! `kill -9` loses at most the cluster being filled. At close: Cues (one per video keyframe
//! cluster, or per cluster for audio), the SeekHead pointing at them, and the Duration.
//!
//! EBML itself is written by `webm-iterable` (pure Rust, spec-validated element paths, writes to
//! any `Write`): no C++ libwebm to build, and unknown-size masters are first-class there.

use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};

use webm_iterable::matroska_spec::{Master, MatroskaSpec, SimpleBlock};
use webm_iterable::WebmWriter;
use webm_iterable::WriteOptions;

/// A cluster closes after this long even without a keyframe: the most a crash can lose.
pub const CLUSTER_MS: u64 = 1_000;
/// Block times are signed 16-bit offsets from their cluster's: a frame this far before the
/// open cluster (another track's late frame) starts a new one.
const MAX_CLUSTER_SPAN_MS: u64 = 30_000;
/// Room for the SeekHead written at close (a Void until then).
const SEEK_HEAD_ROOM: usize = 48;
/// Segment id (4 bytes) and an 8-byte unknown size.
const SEGMENT_HEADER: usize = 12;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Container {
    /// VP8, VP9, AV1 with Opus.
    Webm,
    /// H264 (with Opus): WebM does not allow it.
    Matroska,
}

impl Container {
    pub fn doc_type(self) -> &'static str {
        match self {
            Container::Webm => "webm",
            Container::Matroska => "matroska",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Container::Webm => "video/webm",
            Container::Matroska => "video/x-matroska",
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            Container::Webm => "webm",
            Container::Matroska => "mkv",
        }
    }
}

#[derive(Debug, Clone)]
pub enum TrackKind {
    Audio { sample_rate: u32, channels: u8 },
    Video { width: u16, height: u16 },
}

#[derive(Debug, Clone)]
pub struct TrackSpec {
    /// 1-based, as blocks name it.
    pub number: u64,
    pub kind: TrackKind,
    /// `V_VP8`, `V_VP9`, `V_AV1`, `V_MPEG4/ISO/AVC`, `A_OPUS`.
    pub codec_id: &'static str,
    pub codec_private: Option<Vec<u8>>,
}

struct Cluster {
    start_ms: u64,
}

pub struct MkvWriter {
    file: File,
    /// EBML goes through here and is drained into the file after each top-level element.
    ebml: WebmWriter<Vec<u8>>,
    /// Bytes written to the file so far.
    written: u64,
    /// Where the segment's data starts (positions in Cues and SeekHead count from it).
    segment_data: u64,
    seek_head_at: u64,
    duration_at: u64,
    cluster: Option<Cluster>,
    /// A cluster's blocks wait here until it closes: written whole, or not at all.
    blocks: Vec<MatroskaSpec>,
    video_track: Option<u64>,
    cues: Vec<(u64, u64, u64)>,
    last_ms: u64,
}

fn ebml_error(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

impl MkvWriter {
    /// Writes the header and tracks to `file` (at its start).
    pub fn create(mut file: File, container: Container, tracks: &[TrackSpec]) -> io::Result<Self> {
        let mut ebml = WebmWriter::new(Vec::new());
        ebml.write(&MatroskaSpec::Ebml(Master::Full(vec![
            MatroskaSpec::EbmlVersion(1),
            MatroskaSpec::EbmlReadVersion(1),
            MatroskaSpec::EbmlMaxIdLength(4),
            MatroskaSpec::EbmlMaxSizeLength(8),
            MatroskaSpec::DocType(container.doc_type().into()),
            MatroskaSpec::DocTypeVersion(4),
            MatroskaSpec::DocTypeReadVersion(2),
        ])))
        .map_err(ebml_error)?;
        ebml.write_advanced(
            &MatroskaSpec::Segment(Master::Start),
            WriteOptions::is_unknown_sized_element(),
        )
        .map_err(ebml_error)?;
        ebml.write_raw(0xEC, &[0u8; SEEK_HEAD_ROOM - 2])
            .map_err(ebml_error)?;
        // The unknown-size start stays in the writer's buffer until an element completes: the
        // Void's end is where positions are known.
        let seek_head_at = ebml.get_ref().len() as u64 - SEEK_HEAD_ROOM as u64;
        let segment_data = seek_head_at;
        ebml.write(&MatroskaSpec::Info(Master::Full(vec![
            MatroskaSpec::TimestampScale(1_000_000),
            MatroskaSpec::MuxingApp("convene".into()),
            MatroskaSpec::WritingApp(format!("convene {}", env!("CARGO_PKG_VERSION"))),
            // Last, so its 8 bytes end the element: patched at close.
            MatroskaSpec::Duration(0.0),
        ])))
        .map_err(ebml_error)?;
        let duration_at = ebml.get_ref().len() as u64 - 8;
        let entries = tracks.iter().map(track_entry).collect();
        ebml.write(&MatroskaSpec::Tracks(Master::Full(entries)))
            .map_err(ebml_error)?;
        let header = std::mem::take(ebml.get_mut());
        file.write_all(&header)?;
        Ok(Self {
            file,
            ebml,
            written: header.len() as u64,
            segment_data,
            seek_head_at,
            duration_at,
            cluster: None,
            blocks: Vec::new(),
            video_track: tracks
                .iter()
                .find(|t| matches!(t.kind, TrackKind::Video { .. }))
                .map(|t| t.number),
            cues: Vec::new(),
            last_ms: 0,
        })
    }

    /// Adds one frame at `time_ms` (from the file's start). A cluster closes at every video
    /// keyframe (those are the Cues, where a player can seek to) and at least every
    /// [`CLUSTER_MS`]: chromium sends keyframes only when asked, so a GOP can last minutes.
    pub fn write_frame(
        &mut self,
        track: u64,
        time_ms: u64,
        keyframe: bool,
        data: &[u8],
    ) -> io::Result<()> {
        let is_video = Some(track) == self.video_track;
        let new_cluster = match &self.cluster {
            None => true,
            Some(c) => {
                let span = time_ms.saturating_sub(c.start_ms);
                (is_video && keyframe)
                    || span >= CLUSTER_MS
                    || time_ms + MAX_CLUSTER_SPAN_MS < c.start_ms
            }
        };
        if new_cluster {
            self.close_cluster()?;
            let position = self.written - self.segment_data;
            if self.video_track.is_none() || (is_video && keyframe) {
                self.cues.push((time_ms, track, position));
            }
            self.cluster = Some(Cluster { start_ms: time_ms });
        }
        let Some(cluster) = &self.cluster else {
            return Ok(());
        };
        let offset = (time_ms as i64 - cluster.start_ms as i64).clamp(-32_768, 32_767) as i16;
        let block = SimpleBlock::new_uncheked(data, track, offset, false, None, false, keyframe);
        self.blocks.push(block.into());
        self.last_ms = self.last_ms.max(time_ms);
        Ok(())
    }

    fn close_cluster(&mut self) -> io::Result<()> {
        let Some(cluster) = self.cluster.take() else {
            return Ok(());
        };
        if self.blocks.is_empty() {
            return Ok(());
        }
        let mut children = Vec::with_capacity(self.blocks.len() + 1);
        children.push(MatroskaSpec::Timestamp(cluster.start_ms));
        children.append(&mut self.blocks);
        self.ebml
            .write(&MatroskaSpec::Cluster(Master::Full(children)))
            .map_err(ebml_error)?;
        self.drain()
    }

    fn drain(&mut self) -> io::Result<()> {
        let bytes = self.ebml.get_mut();
        self.file.write_all(bytes)?;
        self.written += bytes.len() as u64;
        bytes.clear();
        Ok(())
    }

    /// The time covered so far, the file's start to its last frame.
    pub fn duration_ms(&self) -> u64 {
        self.last_ms
    }

    pub fn bytes(&self) -> u64 {
        self.written
    }

    /// Writes what is buffered, the Cues, the SeekHead and the Duration; syncs the file.
    pub fn finish(mut self) -> io::Result<u64> {
        self.close_cluster()?;
        let cues_position = self.written - self.segment_data;
        if !self.cues.is_empty() {
            let points = self
                .cues
                .iter()
                .map(|&(time, track, position)| {
                    MatroskaSpec::CuePoint(Master::Full(vec![
                        MatroskaSpec::CueTime(time),
                        MatroskaSpec::CueTrackPositions(Master::Full(vec![
                            MatroskaSpec::CueTrack(track),
                            MatroskaSpec::CueClusterPosition(position),
                        ])),
                    ]))
                })
                .collect();
            self.ebml
                .write(&MatroskaSpec::Cues(Master::Full(points)))
                .map_err(ebml_error)?;
            self.drain()?;
            let seek_head = seek_head(cues_position)?;
            self.file.seek(SeekFrom::Start(self.seek_head_at))?;
            self.file.write_all(&seek_head)?;
        }
        self.file.seek(SeekFrom::Start(self.duration_at))?;
        self.file.write_all(&(self.last_ms as f64).to_be_bytes())?;
        self.file.seek(SeekFrom::End(0))?;
        self.file.sync_all()?;
        Ok(self.written)
    }
}

fn track_entry(track: &TrackSpec) -> MatroskaSpec {
    let mut children = vec![
        MatroskaSpec::TrackNumber(track.number),
        MatroskaSpec::TrackUID(track.number),
        MatroskaSpec::CodecID(track.codec_id.into()),
    ];
    match track.kind {
        TrackKind::Video { width, height } => {
            children.push(MatroskaSpec::TrackType(1));
            children.push(MatroskaSpec::Video(Master::Full(vec![
                MatroskaSpec::PixelWidth(u64::from(width.max(1))),
                MatroskaSpec::PixelHeight(u64::from(height.max(1))),
            ])));
        }
        TrackKind::Audio {
            sample_rate,
            channels,
        } => {
            children.push(MatroskaSpec::TrackType(2));
            // Opus from RTP starts mid-stream: no pre-skip (no CodecDelay); 80 ms of pre-roll
            // after a seek, as the Matroska Opus mapping asks.
            children.push(MatroskaSpec::SeekPreRoll(80_000_000));
            children.push(MatroskaSpec::Audio(Master::Full(vec![
                MatroskaSpec::SamplingFrequency(f64::from(sample_rate)),
                MatroskaSpec::Channels(u64::from(channels)),
            ])));
        }
    }
    if let Some(private) = &track.codec_private {
        children.push(MatroskaSpec::CodecPrivate(private.clone()));
    }
    MatroskaSpec::TrackEntry(Master::Full(children))
}

/// The SeekHead naming the Cues, padded with a Void to exactly [`SEEK_HEAD_ROOM`] bytes.
fn seek_head(cues_position: u64) -> io::Result<Vec<u8>> {
    let mut ebml = WebmWriter::new(Vec::new());
    // Elements under Segment are only valid with one open: written into a scratch writer.
    ebml.write_advanced(
        &MatroskaSpec::Segment(Master::Start),
        WriteOptions::is_unknown_sized_element(),
    )
    .map_err(ebml_error)?;
    ebml.write(&MatroskaSpec::SeekHead(Master::Full(vec![
        MatroskaSpec::Seek(Master::Full(vec![
            MatroskaSpec::SeekID(vec![0x1C, 0x53, 0xBB, 0x6B]),
            MatroskaSpec::SeekPosition(cues_position),
        ])),
    ])))
    .map_err(ebml_error)?;
    let used = ebml.get_ref().len() - SEGMENT_HEADER;
    let pad = SEEK_HEAD_ROOM
        .checked_sub(used + 2)
        .ok_or_else(|| io::Error::other("seek head larger than its room"))?;
    ebml.write_raw(0xEC, &vec![0u8; pad]).map_err(ebml_error)?;
    let bytes = ebml.get_ref()[SEGMENT_HEADER..].to_vec();
    debug_assert_eq!(bytes.len(), SEEK_HEAD_ROOM);
    Ok(bytes)
}

/// Opus's identification header (RFC 7845 §5.1), the CodecPrivate of an Opus track.
pub fn opus_head(channels: u8, pre_skip: u16) -> Vec<u8> {
    let mut head = b"OpusHead".to_vec();
    head.push(1);
    head.push(channels);
    head.extend_from_slice(&pre_skip.to_le_bytes());
    head.extend_from_slice(&48_000u32.to_le_bytes());
    head.extend_from_slice(&0i16.to_le_bytes());
    head.push(0);
    head
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_file_ffmpeg_reads() {
        let path = std::env::temp_dir().join(format!("webm-{}.webm", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        let tracks = [TrackSpec {
            number: 1,
            kind: TrackKind::Audio {
                sample_rate: 48_000,
                channels: 2,
            },
            codec_id: "A_OPUS",
            codec_private: Some(opus_head(2, 0)),
        }];
        let mut mkv = MkvWriter::create(file, Container::Webm, &tracks).unwrap();
        for i in 0..100 {
            mkv.write_frame(1, i * 20, true, &[0xF8]).unwrap();
        }
        mkv.finish().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        // EBML header, then the Segment (unknown size), then the SeekHead that replaced the Void.
        let segment = bytes
            .windows(4)
            .position(|w| w == [0x18, 0x53, 0x80, 0x67])
            .expect("a segment");
        assert_eq!(
            &bytes[segment + 4..segment + 12],
            &[0x01, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF]
        );
        assert_eq!(
            &bytes[segment + 12..segment + 16],
            &[0x11, 0x4D, 0x9B, 0x74]
        );
        let _ = std::fs::remove_file(&path);
    }
}

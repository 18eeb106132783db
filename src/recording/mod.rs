//! In-process recording: each participant's camera and microphone into one WebM (Matroska for
//! H264) file, a screen share into its own, Opus into Ogg for audio-only recordings. No browser,
//! no ffmpeg at run time.
//!
//! The SFU hands the recorder a copy of each recorded track's packets through a tap (a bounded
//! channel; `sfu::tap`). Files are written by tasks on one recorder thread (its own runtime, so
//! file I/O never blocks the control plane or a media engine): jitter buffer, frame assembly,
//! muxing (`track`, `file`, `webm`, `ogg`). A [`Recording`] is owned by its meeting's room
//! task, which adds the files of participants as they publish; its rows (the recording, one per
//! file) are written by a task on the control plane as files open and close.

pub mod file;
pub mod ogg;
pub mod recover;
pub mod rtp_forward;
pub mod track;
pub mod webm;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::ids::TrackId;
use crate::sfu::Sfu;
use crate::store::recordings::{Recording, RecordingFile};
use crate::store::{now_ms, Store};

/// Packets a tap holds for the recorder before the engine drops them.
const TAP_QUEUE: usize = 2_048;

#[derive(Debug, Clone)]
pub struct RecorderConfig {
    pub dir: PathBuf,
    /// How long a gap waits for its retransmission before it counts as lost.
    pub jitter: Duration,
    /// A recording stops (failed, `disk_full`) when the recordings disk has less free.
    pub min_free_bytes: u64,
}

/// Where recordings are written; cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    inner: Arc<Inner>,
}

struct Inner {
    config: RecorderConfig,
    /// The recorder thread's runtime, where file tasks run.
    runtime: tokio::runtime::Handle,
    store: Store,
    sfu: Sfu,
    metrics: crate::metrics::Metrics,
}

impl Recorder {
    /// Starts the recorder thread.
    pub fn new(
        config: RecorderConfig,
        store: Store,
        sfu: Sfu,
        metrics: crate::metrics::Metrics,
    ) -> std::io::Result<Self> {
        std::fs::create_dir_all(&config.dir)?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("recorder".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("recorder runtime");
                let _ = tx.send(runtime.handle().clone());
                // Lives as long as the process: file tasks end when their recording stops.
                runtime.block_on(std::future::pending::<()>());
            })?;
        let runtime = rx
            .recv()
            .map_err(|_| std::io::Error::other("recorder thread did not start"))?;
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                runtime,
                store,
                sfu,
                metrics,
            }),
        })
    }

    pub fn dir(&self) -> &std::path::Path {
        &self.inner.config.dir
    }

    /// Free bytes on the recordings disk, if the system says.
    pub fn free_bytes(&self) -> Option<u64> {
        let stat = nix::sys::statvfs::statvfs(&self.inner.config.dir).ok()?;
        Some(stat.blocks_available() as u64 * stat.fragment_size() as u64)
    }

    pub fn disk_full(&self) -> bool {
        self.free_bytes()
            .is_some_and(|free| free < self.inner.config.min_free_bytes)
    }

    /// Begins writing `recording` (its row is already `recording`).
    pub fn start(&self, recording: &Recording) -> RecordingHandle {
        let (opened_tx, opened_rx) = mpsc::unbounded_channel();
        let (failure_tx, failure_rx) = mpsc::channel(1);
        let dir = self.inner.config.dir.join(&recording.id);
        let registrar = tokio::spawn(register_files(
            self.clone(),
            recording.id.clone(),
            opened_rx,
            failure_tx,
        ));
        RecordingHandle {
            recorder: self.clone(),
            recording_id: recording.id.clone(),
            audio_only: recording.audio_only,
            dir,
            files: HashMap::new(),
            opened: opened_tx,
            registrar,
            failure: failure_rx,
        }
    }
}

/// Who a file belongs to.
#[derive(Debug, Clone)]
pub struct FileOwner {
    pub participant_id: String,
    pub identity: String,
    pub display_name: String,
    /// `camera` (with the microphone) or `screen`.
    pub source: &'static str,
}

struct OpenFile {
    owner: FileOwner,
    control: mpsc::UnboundedSender<file::Control>,
    packets: mpsc::Sender<crate::sfu::tap::TapPacket>,
    taps: Vec<(TrackId, u64)>,
    next_slot: u8,
}

/// A recording in progress, owned by its room task.
pub struct RecordingHandle {
    recorder: Recorder,
    pub recording_id: String,
    pub audio_only: bool,
    dir: PathBuf,
    /// By (participant id, source).
    files: HashMap<(String, &'static str), OpenFile>,
    opened: mpsc::UnboundedSender<(FileOwner, file::Opened)>,
    registrar: tokio::task::JoinHandle<()>,
    failure: mpsc::Receiver<&'static str>,
}

impl RecordingHandle {
    /// Records `track` into its owner's file for `source`, opening the file if needed.
    pub async fn add_track(&mut self, owner: FileOwner, track: TrackId) {
        let key = (owner.participant_id.clone(), owner.source);
        if !self.files.contains_key(&key) {
            if let Err(e) = std::fs::create_dir_all(&self.dir) {
                tracing::warn!(error = %e, "recordings directory");
                return;
            }
            let (packets_tx, packets_rx) = mpsc::channel(TAP_QUEUE);
            let (control_tx, control_rx) = mpsc::unbounded_channel();
            let (opened_tx, mut opened_rx) = mpsc::unbounded_channel();
            let forward = self.opened.clone();
            let file_owner = owner.clone();
            // Opened files go to the registrar with their owner.
            tokio::spawn(async move {
                while let Some(opened) = opened_rx.recv().await {
                    if forward.send((file_owner.clone(), opened)).is_err() {
                        return;
                    }
                }
            });
            let stem = self
                .dir
                .join(format!("{}-{}", owner.participant_id, owner.source));
            let inner = &self.recorder.inner;
            inner.runtime.spawn(file::run(file::FileTask {
                audio_only: self.audio_only,
                stem,
                packets: packets_rx,
                control: control_rx,
                opened: opened_tx,
                sfu: inner.sfu.clone(),
                jitter: inner.config.jitter,
            }));
            self.files.insert(
                key.clone(),
                OpenFile {
                    owner: owner.clone(),
                    control: control_tx,
                    packets: packets_tx,
                    taps: Vec::new(),
                    next_slot: 0,
                },
            );
        }
        let Some(open) = self.files.get_mut(&key) else {
            return;
        };
        if open.taps.iter().any(|(t, _)| *t == track) {
            return;
        }
        let slot = open.next_slot;
        open.next_slot = open.next_slot.wrapping_add(1);
        match self
            .recorder
            .inner
            .sfu
            .attach_tap(track, slot, open.packets.clone())
            .await
        {
            Ok(info) => {
                open.taps.push((track, info.id));
                let _ = open
                    .control
                    .send(file::Control::AddTrack { slot, track, info });
            }
            Err(e) => tracing::debug!(%track, error = %e, "track not recorded"),
        }
    }

    /// A reason to stop, when the disk guard found the disk full.
    pub async fn failure(&mut self) -> Option<&'static str> {
        self.failure.recv().await
    }

    /// Stops every file and writes the rows: the recording `ready` (or `failed` with
    /// `reason`), each file with its size and duration.
    pub async fn stop(self, reason: Option<&'static str>) -> Recording {
        let inner = &self.recorder.inner;
        // Every file is told first, then their answers are collected: files close side by side.
        let mut closing = Vec::new();
        for (_, open) in self.files {
            for (track, tap) in &open.taps {
                let _ = inner.sfu.detach_tap(*track, *tap).await;
            }
            let (tx, rx) = oneshot::channel();
            if open.control.send(file::Control::Stop { reply: tx }).is_ok() {
                closing.push((open.owner, rx));
            }
        }
        let mut outcomes = Vec::new();
        for (owner, rx) in closing {
            if let Ok(Ok(done)) = tokio::time::timeout(Duration::from_secs(10), rx).await {
                outcomes.extend(done.into_iter().map(|o| (owner.clone(), o)));
            }
        }
        drop(self.opened);
        let _ = self.registrar.await;
        let store = &inner.store;
        let mut failed_files = 0;
        for (owner, outcome) in &outcomes {
            let status = if outcome.error.is_some() {
                failed_files += 1;
                "failed"
            } else {
                "ready"
            };
            // The registrar inserted the row when the file opened; an insert it missed is
            // made here.
            let row = file_row(&self.recording_id, owner, outcome, status);
            if let Err(e) = store.finish_recording_file(&row).await {
                tracing::warn!(error = %e, "recording file row");
            }
        }
        let size: u64 = outcomes.iter().map(|(_, o)| o.size_bytes).sum();
        let duration = outcomes
            .iter()
            .map(|(_, o)| o.duration_ms)
            .max()
            .unwrap_or(0);
        let (status, reason) = match reason {
            Some(reason) => ("failed", Some(reason.to_owned())),
            None if failed_files > 0 && failed_files == outcomes.len() => {
                ("failed", Some("write_failed".to_owned()))
            }
            None => ("ready", None),
        };
        inner.metrics.recordings.with_label_values(&[status]).inc();
        match store
            .finish_recording(
                &self.recording_id,
                status,
                reason.as_deref(),
                size as i64,
                duration as i64,
                now_ms(),
            )
            .await
        {
            Ok(recording) => recording,
            Err(e) => {
                tracing::warn!(error = %e, "recording row");
                let mut recording = Recording::new(String::new(), self.audio_only, None);
                recording.id = self.recording_id.clone();
                recording.status = status.into();
                recording.reason = reason;
                recording
            }
        }
    }
}

fn file_row(
    recording_id: &str,
    owner: &FileOwner,
    outcome: &file::Outcome,
    status: &str,
) -> RecordingFile {
    RecordingFile {
        id: outcome.file_id.clone(),
        recording_id: recording_id.to_owned(),
        participant_id: owner.participant_id.clone(),
        identity: owner.identity.clone(),
        display_name: owner.display_name.clone(),
        source: owner.source.to_owned(),
        content_type: outcome.content_type.to_owned(),
        path: outcome.path.to_string_lossy().into_owned(),
        kinds: Some(outcome.kinds.clone()),
        codecs: Some(outcome.codecs.clone()),
        size_bytes: Some(outcome.size_bytes as i64),
        duration_ms: Some(outcome.duration_ms as i64),
        status: status.to_owned(),
        error: outcome.error.clone(),
        started_at: outcome.started_at,
        ended_at: Some(outcome.ended_at),
    }
}

/// Writes a row for each file as it opens (so a restart after a crash finds it), and checks
/// the disk's free space every second while the recording runs.
async fn register_files(
    recorder: Recorder,
    recording_id: String,
    mut opened: mpsc::UnboundedReceiver<(FileOwner, file::Opened)>,
    failure: mpsc::Sender<&'static str>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut told = false;
    loop {
        tokio::select! {
            next = opened.recv() => {
                let Some((owner, file)) = next else { return };
                let row = RecordingFile {
                    id: file.file_id,
                    recording_id: recording_id.clone(),
                    participant_id: owner.participant_id,
                    identity: owner.identity,
                    display_name: owner.display_name,
                    source: owner.source.to_owned(),
                    content_type: file.content_type.to_owned(),
                    path: file.path.to_string_lossy().into_owned(),
                    kinds: None,
                    codecs: None,
                    size_bytes: None,
                    duration_ms: None,
                    status: "recording".into(),
                    error: None,
                    started_at: file.started_at,
                    ended_at: None,
                };
                if let Err(e) = recorder.inner.store.insert_recording_file(&row).await {
                    tracing::warn!(error = %e, "recording file row");
                }
            }
            _ = tick.tick() => {
                if !told && recorder.disk_full() {
                    told = true;
                    tracing::warn!(recording = %recording_id, "recordings disk full: stopping");
                    let _ = failure.try_send("disk_full");
                }
            }
        }
    }
}

//! After a crash: recordings the last run left `recording` are closed with what their files
//! hold. Each file is read up to where its writing stopped (the last whole cluster of a WebM
//! file, the last whole page of an Ogg file) for its duration; the recording becomes `ready`
//! with reason `interrupted` when any file survived, else `failed`.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use webm_iterable::matroska_spec::{MatroskaSpec, SimpleBlock};
use webm_iterable::WebmIterator;

use crate::store::{now_ms, Store, StoreResult};

/// The time of the last frame a Matroska file holds, in ms.
pub fn mkv_duration_ms(path: &Path) -> Option<u64> {
    let file = BufReader::new(File::open(path).ok()?);
    let mut cluster_ms: Option<u64> = None;
    let mut last: Option<u64> = None;
    for tag in WebmIterator::new(file, &[]) {
        // A cut file ends in the middle of an element: what came before stands.
        let Ok(tag) = tag else { break };
        match &tag {
            MatroskaSpec::Timestamp(ms) => cluster_ms = Some(*ms),
            MatroskaSpec::SimpleBlock(_) => {
                if let (Some(base), Ok(block)) = (cluster_ms, SimpleBlock::try_from(&tag)) {
                    let at = (base as i64 + i64::from(block.timestamp)).max(0) as u64;
                    last = Some(last.map_or(at, |l| l.max(at)));
                }
            }
            _ => {}
        }
    }
    last
}

/// The time an Ogg Opus file's last whole page reaches, in ms.
pub fn ogg_duration_ms(path: &Path) -> Option<u64> {
    let file = BufReader::new(File::open(path).ok()?);
    let mut reader = ogg::reading::PacketReader::new(file);
    let mut granule = None;
    while let Ok(Some(packet)) = reader.read_packet() {
        if packet.last_in_page() {
            granule = Some(packet.absgp_page());
        }
    }
    granule.map(|g| g / 48)
}

/// Closes every recording left `recording`; returns how many.
pub async fn recover(store: &Store) -> StoreResult<usize> {
    let stale = store.recordings_with_status("recording").await?;
    for recording in &stale {
        let files = store.recording_files(&recording.id).await?;
        let (mut size, mut duration, mut survived) = (0i64, 0i64, 0usize);
        for mut file in files {
            if file.status != "recording" {
                continue;
            }
            let path = Path::new(&file.path);
            let bytes = std::fs::metadata(path).map(|m| m.len() as i64).ok();
            let ms = if file.content_type == "audio/ogg" {
                ogg_duration_ms(path)
            } else {
                mkv_duration_ms(path)
            };
            file.size_bytes = bytes;
            file.duration_ms = ms.map(|m| m as i64);
            file.ended_at = Some(now_ms());
            if ms.is_some() {
                file.status = "ready".into();
                file.error = Some("interrupted".into());
                survived += 1;
            } else {
                file.status = "failed".into();
                file.error = Some("interrupted: nothing readable".into());
            }
            size += bytes.unwrap_or(0);
            duration = duration.max(file.duration_ms.unwrap_or(0));
            store.finish_recording_file(&file).await?;
        }
        let status = if survived > 0 { "ready" } else { "failed" };
        store
            .finish_recording(
                &recording.id,
                status,
                Some("interrupted"),
                size,
                duration,
                now_ms(),
            )
            .await?;
        tracing::warn!(recording = %recording.id, status, files = survived, "recording closed after an interrupted run");
    }
    Ok(stale.len())
}

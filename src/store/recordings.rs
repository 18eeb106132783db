//! Recordings of a meeting and their files. A recording row is `recording` while it runs
//! (at most one per meeting: a unique partial index makes a second start a conflict), then
//! `ready` or `failed` with a reason; each file has its own row, written when the file opens
//! so that a restart after a crash finds it.

use sqlx::any::AnyRow;
use sqlx::Row;

use super::webhooks::enqueue_on;
use super::{flag, now_ms, opt, Store, StoreError, StoreResult};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recording {
    pub id: String,
    pub meeting_id: String,
    /// `recording`, `ready` or `failed`.
    pub status: String,
    /// Unused since files have their own rows (kept for rows of earlier versions).
    pub path: Option<String>,
    pub size_bytes: Option<i64>,
    pub duration_ms: Option<i64>,
    pub started_at: Option<i64>,
    pub ended_at: Option<i64>,
    pub created_at: i64,
    pub audio_only: bool,
    /// Why it failed (`disk_full`, `write_failed`) or how it ended (`interrupted`).
    pub reason: Option<String>,
    /// The user or join-token identity that started it; `None` when it started by itself.
    pub started_by: Option<String>,
}

impl Recording {
    /// A new running recording of `meeting_id`.
    pub fn new(meeting_id: String, audio_only: bool, started_by: Option<String>) -> Self {
        let now = now_ms();
        Self {
            id: uuid::Uuid::now_v7().to_string(),
            meeting_id,
            status: "recording".into(),
            path: None,
            size_bytes: None,
            duration_ms: None,
            started_at: Some(now),
            ended_at: None,
            created_at: now,
            audio_only,
            reason: None,
            started_by,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordingFile {
    pub id: String,
    pub recording_id: String,
    pub participant_id: String,
    pub identity: String,
    pub display_name: String,
    /// `camera` (camera and microphone) or `screen`.
    pub source: String,
    pub content_type: String,
    /// Where the file lives; never shown over the API.
    pub path: String,
    pub kinds: Option<String>,
    pub codecs: Option<String>,
    pub size_bytes: Option<i64>,
    pub duration_ms: Option<i64>,
    /// `recording`, `ready` or `failed`.
    pub status: String,
    pub error: Option<String>,
    pub started_at: i64,
    pub ended_at: Option<i64>,
}

const RECORDING_COLUMNS: &str =
    "id, meeting_id, status, path, size_bytes, duration_ms, started_at, \
     ended_at, created_at, audio_only, reason, started_by";

const FILE_COLUMNS: &str = "id, recording_id, participant_id, identity, display_name, source, \
     content_type, path, kinds, codecs, size_bytes, duration_ms, status, error, started_at, ended_at";

fn recording_from_row(row: &AnyRow) -> StoreResult<Recording> {
    Ok(Recording {
        id: row.try_get("id")?,
        meeting_id: row.try_get("meeting_id")?,
        status: row.try_get("status")?,
        path: opt(row, "path")?,
        size_bytes: opt(row, "size_bytes")?,
        duration_ms: opt(row, "duration_ms")?,
        started_at: opt(row, "started_at")?,
        ended_at: opt(row, "ended_at")?,
        created_at: row.try_get("created_at")?,
        audio_only: flag(row, "audio_only")?,
        reason: opt(row, "reason")?,
        started_by: opt(row, "started_by")?,
    })
}

fn file_from_row(row: &AnyRow) -> StoreResult<RecordingFile> {
    Ok(RecordingFile {
        id: row.try_get("id")?,
        recording_id: row.try_get("recording_id")?,
        participant_id: row.try_get("participant_id")?,
        identity: row.try_get("identity")?,
        display_name: row.try_get("display_name")?,
        source: row.try_get("source")?,
        content_type: row.try_get("content_type")?,
        path: row.try_get("path")?,
        kinds: opt(row, "kinds")?,
        codecs: opt(row, "codecs")?,
        size_bytes: opt(row, "size_bytes")?,
        duration_ms: opt(row, "duration_ms")?,
        status: row.try_get("status")?,
        error: opt(row, "error")?,
        started_at: row.try_get("started_at")?,
        ended_at: opt(row, "ended_at")?,
    })
}

impl Store {
    /// Inserts a recording; `Conflict("recording_running")` when one runs in that meeting.
    pub async fn insert_recording(&self, r: &Recording) -> StoreResult<()> {
        let sql = format!(
            "INSERT INTO recordings ({RECORDING_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
        );
        let mut tx = self.pool.begin().await?;
        let result = sqlx::query(&sql)
            .bind(&r.id)
            .bind(&r.meeting_id)
            .bind(&r.status)
            .bind(r.path.as_deref())
            .bind(r.size_bytes)
            .bind(r.duration_ms)
            .bind(r.started_at)
            .bind(r.ended_at)
            .bind(r.created_at)
            .bind(i64::from(r.audio_only))
            .bind(r.reason.as_deref())
            .bind(r.started_by.as_deref())
            .execute(&mut *tx)
            .await;
        match result {
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                return Err(StoreError::Conflict("recording_running".into()))
            }
            other => other.map(|_| ())?,
        }
        if r.status == "recording" {
            let data = serde_json::json!({
                "meeting_id": r.meeting_id, "recording_id": r.id, "audio_only": r.audio_only,
            });
            enqueue_on(&mut *tx, &self.outbox, "recording_started", &data).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// A meeting's recordings, oldest first.
    pub async fn meeting_recordings(&self, meeting_id: &str) -> StoreResult<Vec<Recording>> {
        let sql = format!(
            "SELECT {RECORDING_COLUMNS} FROM recordings WHERE meeting_id = $1 ORDER BY created_at, id"
        );
        let rows = sqlx::query(&sql)
            .bind(meeting_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(recording_from_row).collect()
    }

    /// One recording of a meeting.
    pub async fn recording(&self, meeting_id: &str, id: &str) -> StoreResult<Recording> {
        let sql =
            format!("SELECT {RECORDING_COLUMNS} FROM recordings WHERE meeting_id = $1 AND id = $2");
        let row = sqlx::query(&sql)
            .bind(meeting_id)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::NotFound)?;
        recording_from_row(&row)
    }

    /// The running recording of a meeting, if any.
    pub async fn running_recording(&self, meeting_id: &str) -> StoreResult<Option<Recording>> {
        let sql = format!(
            "SELECT {RECORDING_COLUMNS} FROM recordings WHERE meeting_id = $1 AND status = 'recording'"
        );
        let row = sqlx::query(&sql)
            .bind(meeting_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(recording_from_row).transpose()
    }

    pub async fn recordings_with_status(&self, status: &str) -> StoreResult<Vec<Recording>> {
        let sql = format!("SELECT {RECORDING_COLUMNS} FROM recordings WHERE status = $1");
        let rows = sqlx::query(&sql).bind(status).fetch_all(&self.pool).await?;
        rows.iter().map(recording_from_row).collect()
    }

    /// Ends a recording: its status, reason, totals and end time; returns the row.
    pub async fn finish_recording(
        &self,
        id: &str,
        status: &str,
        reason: Option<&str>,
        size_bytes: i64,
        duration_ms: i64,
        ended_at: i64,
    ) -> StoreResult<Recording> {
        // The files are final before their recording is: read outside the transaction, which
        // (on SQLite) holds the write lock and must not wait for a second connection.
        let files = self.recording_files(id).await?;
        let mut tx = self.pool.begin().await?;
        let changed = sqlx::query(
            "UPDATE recordings SET status = $1, reason = $2, size_bytes = $3, duration_ms = $4, \
             ended_at = $5 WHERE id = $6",
        )
        .bind(status)
        .bind(reason)
        .bind(size_bytes)
        .bind(duration_ms)
        .bind(ended_at)
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let sql = format!("SELECT {RECORDING_COLUMNS} FROM recordings WHERE id = $1");
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(StoreError::NotFound)?;
        let recording = recording_from_row(&row)?;
        if changed > 0 {
            let data = serde_json::json!({
                "meeting_id": recording.meeting_id, "recording_id": recording.id,
                "status": recording.status, "reason": recording.reason,
                "duration_ms": recording.duration_ms, "size_bytes": recording.size_bytes,
                "files": files.iter().map(|f| serde_json::json!({
                    "id": f.id, "participant_id": f.participant_id, "source": f.source,
                    "content_type": f.content_type, "duration_ms": f.duration_ms,
                    "size_bytes": f.size_bytes, "status": f.status,
                    "url": format!("/api/v1/meetings/{}/recordings/{}/files/{}", recording.meeting_id, recording.id, f.id),
                })).collect::<Vec<_>>(),
            });
            let event = if recording.status == "failed" {
                "recording_failed"
            } else {
                "recording_ready"
            };
            enqueue_on(&mut *tx, &self.outbox, event, &data).await?;
        }
        tx.commit().await?;
        Ok(recording)
    }

    pub async fn delete_recording(&self, id: &str) -> StoreResult<()> {
        sqlx::query("DELETE FROM recording_files WHERE recording_id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        let done = sqlx::query("DELETE FROM recordings WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    pub async fn insert_recording_file(&self, f: &RecordingFile) -> StoreResult<()> {
        let sql = format!(
            "INSERT INTO recording_files ({FILE_COLUMNS}) VALUES \
             ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)"
        );
        sqlx::query(&sql)
            .bind(&f.id)
            .bind(&f.recording_id)
            .bind(&f.participant_id)
            .bind(&f.identity)
            .bind(&f.display_name)
            .bind(&f.source)
            .bind(&f.content_type)
            .bind(&f.path)
            .bind(f.kinds.as_deref())
            .bind(f.codecs.as_deref())
            .bind(f.size_bytes)
            .bind(f.duration_ms)
            .bind(&f.status)
            .bind(f.error.as_deref())
            .bind(f.started_at)
            .bind(f.ended_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Writes a file's final state (inserting the row if its opening was never written).
    pub async fn finish_recording_file(&self, f: &RecordingFile) -> StoreResult<()> {
        let done = sqlx::query(
            "UPDATE recording_files SET kinds = $1, codecs = $2, size_bytes = $3, \
             duration_ms = $4, status = $5, error = $6, ended_at = $7 WHERE id = $8",
        )
        .bind(f.kinds.as_deref())
        .bind(f.codecs.as_deref())
        .bind(f.size_bytes)
        .bind(f.duration_ms)
        .bind(&f.status)
        .bind(f.error.as_deref())
        .bind(f.ended_at)
        .bind(&f.id)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            self.insert_recording_file(f).await?;
        }
        Ok(())
    }

    /// A recording's files, in the order they opened.
    pub async fn recording_files(&self, recording_id: &str) -> StoreResult<Vec<RecordingFile>> {
        let sql = format!(
            "SELECT {FILE_COLUMNS} FROM recording_files WHERE recording_id = $1 \
             ORDER BY started_at, id"
        );
        let rows = sqlx::query(&sql)
            .bind(recording_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(file_from_row).collect()
    }
}

//! Recordings of a meeting: metadata only (status, times, size). The recorder that writes the
//! files and fills these rows comes later; today rows are listed as they are.

use sqlx::any::AnyRow;
use sqlx::Row;

use super::{opt, Store, StoreResult};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recording {
    pub id: String,
    pub meeting_id: String,
    /// `recording`, `processing`, `ready` or `failed`.
    pub status: String,
    /// Where the file lives (under the recordings dir); never shown over the API.
    pub path: Option<String>,
    pub size_bytes: Option<i64>,
    pub duration_ms: Option<i64>,
    pub started_at: Option<i64>,
    pub ended_at: Option<i64>,
    pub created_at: i64,
}

const RECORDING_COLUMNS: &str =
    "id, meeting_id, status, path, size_bytes, duration_ms, started_at, ended_at, created_at";

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
    })
}

impl Store {
    pub async fn insert_recording(&self, r: &Recording) -> StoreResult<()> {
        let sql = format!(
            "INSERT INTO recordings ({RECORDING_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
        );
        sqlx::query(&sql)
            .bind(&r.id)
            .bind(&r.meeting_id)
            .bind(&r.status)
            .bind(r.path.as_deref())
            .bind(r.size_bytes)
            .bind(r.duration_ms)
            .bind(r.started_at)
            .bind(r.ended_at)
            .bind(r.created_at)
            .execute(&self.pool)
            .await?;
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
}

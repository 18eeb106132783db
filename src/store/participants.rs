//! Participants: one row per join of a meeting (present and past), with role, status
//! (`waiting`, `joined`, `left`, `kicked`, `denied`), media state and joined/left times.

use sqlx::any::AnyRow;
use sqlx::Row;

use super::{flag, opt, Store, StoreError, StoreResult};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Participant {
    pub id: String,
    pub meeting_id: String,
    pub user_id: Option<String>,
    /// The media identity (join token `sub`): the user id, or `guest-<participant id>`.
    pub identity: String,
    pub display_name: String,
    pub role: String,
    pub status: String,
    pub mic_muted: bool,
    pub camera_off: bool,
    pub joined_at: Option<i64>,
    pub left_at: Option<i64>,
    pub created_at: i64,
}

pub const PARTICIPANT_COLUMNS: &str =
    "id, meeting_id, user_id, identity, display_name, role, status, mic_muted, camera_off, joined_at, left_at, created_at";

pub fn participant_from_row(row: &AnyRow) -> StoreResult<Participant> {
    Ok(Participant {
        id: row.try_get("id")?,
        meeting_id: row.try_get("meeting_id")?,
        user_id: opt(row, "user_id")?,
        identity: row.try_get("identity")?,
        display_name: row.try_get("display_name")?,
        role: row.try_get("role")?,
        status: row.try_get("status")?,
        mic_muted: flag(row, "mic_muted")?,
        camera_off: flag(row, "camera_off")?,
        joined_at: opt(row, "joined_at")?,
        left_at: opt(row, "left_at")?,
        created_at: row.try_get("created_at")?,
    })
}

impl Store {
    pub async fn participant(
        &self,
        meeting_id: &str,
        participant_id: &str,
    ) -> StoreResult<Participant> {
        let sql = format!(
            "SELECT {PARTICIPANT_COLUMNS} FROM participants WHERE meeting_id = $1 AND id = $2"
        );
        let row = sqlx::query(&sql)
            .bind(meeting_id)
            .bind(participant_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref()
            .map(participant_from_row)
            .transpose()?
            .ok_or(StoreError::NotFound)
    }
}

/// Inserts a participant row on any executor (a pool, or the connection of a join transaction).
pub async fn insert_participant<'e, E>(executor: E, p: &Participant) -> StoreResult<()>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let sql = format!(
        "INSERT INTO participants ({PARTICIPANT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
    );
    sqlx::query(&sql)
        .bind(&p.id)
        .bind(&p.meeting_id)
        .bind(p.user_id.as_deref())
        .bind(&p.identity)
        .bind(&p.display_name)
        .bind(&p.role)
        .bind(&p.status)
        .bind(i64::from(p.mic_muted))
        .bind(i64::from(p.camera_off))
        .bind(p.joined_at)
        .bind(p.left_at)
        .bind(p.created_at)
        .execute(executor)
        .await?;
    Ok(())
}

impl Store {
    pub async fn add_participant(&self, p: &Participant) -> StoreResult<()> {
        insert_participant(&self.pool, p).await
    }
}

impl Store {
    /// Whether `identity` (a user id, or `guest-…`) is banned from the meeting.
    pub async fn is_banned(&self, meeting_id: &str, identity: &str) -> StoreResult<bool> {
        let row = sqlx::query("SELECT 1 AS one FROM bans WHERE meeting_id = $1 AND identity = $2")
            .bind(meeting_id)
            .bind(identity)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }
}

/// Participants holding a seat (status `joined`), on any executor.
pub async fn count_joined<'e, E>(executor: E, meeting_id: &str) -> StoreResult<i64>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let row = sqlx::query(
        "SELECT COUNT(*) AS seats FROM participants WHERE meeting_id = $1 AND status = 'joined'",
    )
    .bind(meeting_id)
    .fetch_one(executor)
    .await?;
    Ok(row.try_get("seats")?)
}

/// Whether the user holds a seat (`joined`) in the meeting right now, on any executor.
pub async fn user_is_joined<'e, E>(
    executor: E,
    meeting_id: &str,
    user_id: &str,
) -> StoreResult<bool>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let row = sqlx::query(
        "SELECT 1 AS one FROM participants WHERE meeting_id = $1 AND user_id = $2 \
         AND status = 'joined' LIMIT 1",
    )
    .bind(meeting_id)
    .bind(user_id)
    .fetch_optional(executor)
    .await?;
    Ok(row.is_some())
}

/// Marks the user's joined or waiting rows of the meeting as left: a new join of the same
/// account replaces its earlier session instead of taking a second seat.
pub async fn leave_user_sessions<'e, E>(
    executor: E,
    meeting_id: &str,
    user_id: &str,
    now: i64,
) -> StoreResult<u64>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let result = sqlx::query(
        "UPDATE participants SET status = 'left', left_at = $3 \
         WHERE meeting_id = $1 AND user_id = $2 AND status IN ('joined', 'waiting')",
    )
    .bind(meeting_id)
    .bind(user_id)
    .bind(now)
    .execute(executor)
    .await?;
    Ok(result.rows_affected())
}

//! Meetings: their settings and lifecycle (`scheduled → live → ended`, or `cancelled`).

use sqlx::any::AnyRow;
use sqlx::Row;

use super::{flag, opt, Store, StoreError, StoreResult};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeetingSettings {
    pub allow_guests: bool,
    pub waiting_room: bool,
    pub mute_on_join: bool,
    pub video_on_join: bool,
    pub chat: bool,
    pub screen_share: bool,
    pub recording: bool,
    pub max_participants: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meeting {
    pub id: String,
    pub code: String,
    pub host_id: String,
    pub title: String,
    pub description: String,
    pub scheduled_at: Option<i64>,
    pub duration_minutes: Option<i64>,
    /// `public`, `private` or `invite_only`.
    pub access: String,
    pub passcode: Option<String>,
    pub settings: MeetingSettings,
    /// `scheduled`, `live`, `ended` or `cancelled`.
    pub status: String,
    pub started_at: Option<i64>,
    pub ended_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
}

pub const MEETING_COLUMNS: &str = "id, code, host_id, title, description, scheduled_at, duration_minutes, access, \
     passcode, allow_guests, waiting_room, mute_on_join, video_on_join, chat, screen_share, recording, \
     max_participants, status, started_at, ended_at, created_at, updated_at";

pub fn meeting_from_row(row: &AnyRow) -> StoreResult<Meeting> {
    Ok(Meeting {
        id: row.try_get("id")?,
        code: row.try_get("code")?,
        host_id: row.try_get("host_id")?,
        title: row.try_get("title")?,
        description: row.try_get("description")?,
        scheduled_at: opt(row, "scheduled_at")?,
        duration_minutes: opt(row, "duration_minutes")?,
        access: row.try_get("access")?,
        passcode: opt(row, "passcode")?,
        settings: MeetingSettings {
            allow_guests: flag(row, "allow_guests")?,
            waiting_room: flag(row, "waiting_room")?,
            mute_on_join: flag(row, "mute_on_join")?,
            video_on_join: flag(row, "video_on_join")?,
            chat: flag(row, "chat")?,
            screen_share: flag(row, "screen_share")?,
            recording: flag(row, "recording")?,
            max_participants: row.try_get("max_participants")?,
        },
        status: row.try_get("status")?,
        started_at: opt(row, "started_at")?,
        ended_at: opt(row, "ended_at")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

impl Store {
    /// A meeting by its id or its code (`abc-defg-hij`).
    pub async fn meeting(&self, id_or_code: &str) -> StoreResult<Meeting> {
        let sql = format!("SELECT {MEETING_COLUMNS} FROM meetings WHERE id = $1 OR code = $1");
        let row = sqlx::query(&sql)
            .bind(id_or_code)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref()
            .map(meeting_from_row)
            .transpose()?
            .ok_or(StoreError::NotFound)
    }
}

impl Store {
    /// Inserts a meeting as given. A taken code is [`StoreError::Conflict`]`("code")`.
    pub async fn insert_meeting(&self, m: &Meeting) -> StoreResult<()> {
        let sql = format!(
            "INSERT INTO meetings ({MEETING_COLUMNS}) VALUES \
             ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22)"
        );
        let s = &m.settings;
        sqlx::query(&sql)
            .bind(&m.id)
            .bind(&m.code)
            .bind(&m.host_id)
            .bind(&m.title)
            .bind(&m.description)
            .bind(m.scheduled_at)
            .bind(m.duration_minutes)
            .bind(&m.access)
            .bind(m.passcode.as_deref())
            .bind(i64::from(s.allow_guests))
            .bind(i64::from(s.waiting_room))
            .bind(i64::from(s.mute_on_join))
            .bind(i64::from(s.video_on_join))
            .bind(i64::from(s.chat))
            .bind(i64::from(s.screen_share))
            .bind(i64::from(s.recording))
            .bind(s.max_participants)
            .bind(&m.status)
            .bind(m.started_at)
            .bind(m.ended_at)
            .bind(m.created_at)
            .bind(m.updated_at)
            .execute(&self.pool)
            .await
            .map_err(|e| match super::map_unique(e) {
                StoreError::Conflict(_) => StoreError::Conflict("code".to_owned()),
                other => other,
            })?;
        Ok(())
    }
}

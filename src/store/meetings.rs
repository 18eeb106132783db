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

#[cfg(test)]
impl Meeting {
    /// A live public meeting with every feature on and room for 100, for unit tests.
    pub fn sample(id: &str, host_id: &str) -> Self {
        Self {
            id: id.to_owned(),
            code: "abc-defg-hij".into(),
            host_id: host_id.to_owned(),
            title: "t".into(),
            description: String::new(),
            scheduled_at: None,
            duration_minutes: None,
            access: "public".into(),
            passcode: None,
            settings: MeetingSettings {
                allow_guests: true,
                waiting_room: false,
                mute_on_join: false,
                video_on_join: true,
                chat: true,
                screen_share: true,
                recording: true,
                max_participants: 100,
            },
            status: "live".into(),
            started_at: None,
            ended_at: None,
            created_at: 0,
            updated_at: 0,
        }
    }
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

/// Which of a user's meetings `meetings_for_user` lists.
#[derive(Debug, Clone, Default)]
pub struct MeetingFilter {
    /// Only meetings with this status.
    pub status: Option<String>,
    /// Only meetings still ahead: live ones, and scheduled ones whose time is unset or at or
    /// after `now`; ordered by time (soonest first) instead of newest first.
    pub upcoming: bool,
    pub now: i64,
    pub limit: i64,
    pub offset: i64,
}

/// An invite link (`join_links` row): admits its holder with `role` while uses remain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinLink {
    pub id: String,
    pub meeting_id: String,
    /// SHA-256 (hex) of the token; the token itself is never stored.
    pub token_hash: String,
    pub role: String,
    pub uses_left: i64,
    pub expires_at: i64,
    pub created_by: String,
    pub created_at: i64,
}

/// A parameter of a query whose conditions are assembled at run time.
enum FilterArg {
    Text(String),
    Int(i64),
}

fn bind_all<'q>(
    mut query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    args: &'q [FilterArg],
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    for arg in args {
        query = match arg {
            FilterArg::Text(text) => query.bind(text.as_str()),
            FilterArg::Int(number) => query.bind(*number),
        };
    }
    query
}

/// `MEETING_COLUMNS` qualified with the alias `m`, for queries that join other tables.
fn qualified_meeting_columns() -> String {
    MEETING_COLUMNS
        .split(',')
        .map(|c| format!("m.{}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Store {
    /// Whether the user is on the meeting's invite list, by account or by the account's email.
    pub async fn is_invited(&self, meeting_id: &str, user_id: &str) -> StoreResult<bool> {
        let row = sqlx::query(
            "SELECT 1 AS one FROM meeting_invites WHERE meeting_id = $1 AND (user_id = $2 \
             OR LOWER(email) = (SELECT LOWER(email) FROM users WHERE id = $2)) LIMIT 1",
        )
        .bind(meeting_id)
        .bind(user_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.is_some())
    }

    /// Adds invites; ones already present are skipped. Returns how many were new.
    pub async fn add_invites(
        &self,
        meeting_id: &str,
        user_ids: &[String],
        emails: &[String],
    ) -> StoreResult<u64> {
        let now = super::now_ms();
        let mut tx = self.pool.begin().await?;
        let mut added = 0;
        for user_id in user_ids {
            added += sqlx::query(
                "INSERT INTO meeting_invites (id, meeting_id, user_id, email, created_at) \
                 VALUES ($1, $2, $3, NULL, $4) ON CONFLICT DO NOTHING",
            )
            .bind(super::new_id())
            .bind(meeting_id)
            .bind(user_id)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        for email in emails {
            added += sqlx::query(
                "INSERT INTO meeting_invites (id, meeting_id, user_id, email, created_at) \
                 VALUES ($1, $2, NULL, $3, $4) ON CONFLICT DO NOTHING",
            )
            .bind(super::new_id())
            .bind(meeting_id)
            .bind(email.trim().to_lowercase())
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        tx.commit().await?;
        Ok(added)
    }

    /// The meetings a user hosts or is invited to (by user id or by email), each with its
    /// host's display name, and the total matching `filter` before paging.
    pub async fn meetings_for_user(
        &self,
        user_id: &str,
        email: &str,
        filter: &MeetingFilter,
    ) -> StoreResult<(Vec<(Meeting, String)>, i64)> {
        // Placeholders are numbered as conditions are added, so each query binds exactly the
        // parameters it references (both backends insist on that). Not sqlx::QueryBuilder: over
        // the Any driver it writes `?` placeholders, which PostgreSQL refuses. Only static SQL
        // fragments are pushed; every value is bound.
        let email = email.trim().to_lowercase();
        let mut args: Vec<FilterArg> =
            vec![FilterArg::Text(user_id.to_owned()), FilterArg::Text(email)];
        let mut conditions = String::from(
            "(m.host_id = $1 OR EXISTS (SELECT 1 FROM meeting_invites i WHERE i.meeting_id = m.id \
             AND (i.user_id = $1 OR i.email = $2)))",
        );
        if let Some(status) = &filter.status {
            args.push(FilterArg::Text(status.clone()));
            conditions.push_str(&format!(" AND m.status = ${}", args.len()));
        }
        if filter.upcoming {
            args.push(FilterArg::Int(filter.now));
            conditions.push_str(&format!(
                " AND (m.status = 'live' OR (m.status = 'scheduled' \
                 AND (m.scheduled_at IS NULL OR m.scheduled_at >= ${})))",
                args.len()
            ));
        }
        let order = if filter.upcoming {
            "COALESCE(m.scheduled_at, m.created_at) ASC, m.id ASC"
        } else {
            "m.created_at DESC, m.id DESC"
        };

        let count_sql = format!("SELECT COUNT(*) AS total FROM meetings m WHERE {conditions}");
        let total: i64 = bind_all(sqlx::query(&count_sql), &args)
            .fetch_one(&self.pool)
            .await?
            .try_get("total")?;

        let list_sql = format!(
            "SELECT {}, u.display_name AS host_name FROM meetings m \
             JOIN users u ON u.id = m.host_id WHERE {conditions} ORDER BY {order} \
             LIMIT ${} OFFSET ${}",
            qualified_meeting_columns(),
            args.len() + 1,
            args.len() + 2
        );
        let rows = bind_all(sqlx::query(&list_sql), &args)
            .bind(filter.limit)
            .bind(filter.offset)
            .fetch_all(&self.pool)
            .await?;
        let items = rows
            .iter()
            .map(|row| Ok((meeting_from_row(row)?, row.try_get("host_name")?)))
            .collect::<StoreResult<Vec<_>>>()?;
        Ok((items, total))
    }

    /// Writes the editable fields of `m` (not status or times). Returns false when the meeting
    /// is ended or cancelled by now, so an edit never races a close into reopening it.
    pub async fn update_meeting(&self, m: &Meeting) -> StoreResult<bool> {
        let s = &m.settings;
        let result = sqlx::query(
            "UPDATE meetings SET title = $2, description = $3, scheduled_at = $4, \
             duration_minutes = $5, access = $6, passcode = $7, allow_guests = $8, \
             waiting_room = $9, mute_on_join = $10, video_on_join = $11, chat = $12, \
             screen_share = $13, recording = $14, max_participants = $15, updated_at = $16 \
             WHERE id = $1 AND status IN ('scheduled', 'live')",
        )
        .bind(&m.id)
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
        .bind(m.updated_at)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() == 1)
    }

    /// `scheduled → live`. Returns false when the meeting was not scheduled (already live, or
    /// closed); the caller tells those apart.
    pub async fn start_meeting(&self, meeting_id: &str, now: i64) -> StoreResult<bool> {
        let mut tx = self.pool.begin().await?;
        let started = start_meeting_on(&mut *tx, meeting_id, now).await?;
        if started {
            let data = serde_json::json!({"meeting_id": meeting_id});
            super::webhooks::enqueue_on(&mut *tx, &self.outbox, "meeting_started", &data).await?;
        }
        tx.commit().await?;
        Ok(started)
    }

    /// Closes a scheduled or live meeting as `status` (`ended` or `cancelled`) and marks every
    /// joined or waiting participant as left, in one transaction. False when the meeting was
    /// already closed. (Its media is closed by room, whoever holds it: `Sfu::close_room`.)
    pub async fn close_meeting(
        &self,
        meeting_id: &str,
        status: &str,
        now: i64,
    ) -> StoreResult<bool> {
        let mut tx = self.pool.begin().await?;
        let closed = sqlx::query(
            "UPDATE meetings SET status = $2, ended_at = $3, updated_at = $3 \
             WHERE id = $1 AND status IN ('scheduled', 'live')",
        )
        .bind(meeting_id)
        .bind(status)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if closed == 0 {
            return Ok(false);
        }
        sqlx::query(
            "UPDATE participants SET status = 'left', left_at = $2 \
             WHERE meeting_id = $1 AND status IN ('joined', 'waiting')",
        )
        .bind(meeting_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let data = serde_json::json!({"meeting_id": meeting_id, "status": status});
        super::webhooks::enqueue_on(&mut *tx, &self.outbox, "meeting_ended", &data).await?;
        tx.commit().await?;
        Ok(true)
    }

    pub async fn insert_join_link(&self, link: &JoinLink) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO join_links (id, meeting_id, token_hash, role, uses_left, expires_at, \
             created_by, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&link.id)
        .bind(&link.meeting_id)
        .bind(&link.token_hash)
        .bind(&link.role)
        .bind(link.uses_left)
        .bind(link.expires_at)
        .bind(&link.created_by)
        .bind(link.created_at)
        .execute(&self.pool)
        .await
        .map_err(super::map_unique)?;
        Ok(())
    }

    /// The meeting's invite link with this token hash if it still has uses and has not expired.
    pub async fn usable_join_link(
        &self,
        meeting_id: &str,
        token_hash: &str,
        now: i64,
    ) -> StoreResult<Option<JoinLink>> {
        let row = sqlx::query(
            "SELECT id, meeting_id, token_hash, role, uses_left, expires_at, created_by, created_at \
             FROM join_links WHERE meeting_id = $1 AND token_hash = $2 AND uses_left > 0 \
             AND expires_at > $3",
        )
        .bind(meeting_id)
        .bind(token_hash)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            Ok(JoinLink {
                id: row.try_get("id")?,
                meeting_id: row.try_get("meeting_id")?,
                token_hash: row.try_get("token_hash")?,
                role: row.try_get("role")?,
                uses_left: row.try_get("uses_left")?,
                expires_at: row.try_get("expires_at")?,
                created_by: row.try_get("created_by")?,
                created_at: row.try_get("created_at")?,
            })
        })
        .transpose()
    }
}

/// Re-reads a meeting on any executor (inside a join transaction, after its seat lock).
pub async fn meeting_on<'e, E>(executor: E, meeting_id: &str) -> StoreResult<Meeting>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let sql = format!("SELECT {MEETING_COLUMNS} FROM meetings WHERE id = $1");
    let row = sqlx::query(&sql)
        .bind(meeting_id)
        .fetch_optional(executor)
        .await?;
    row.as_ref()
        .map(meeting_from_row)
        .transpose()?
        .ok_or(StoreError::NotFound)
}

/// `scheduled → live` on any executor; false when the meeting was not scheduled.
pub async fn start_meeting_on<'e, E>(executor: E, meeting_id: &str, now: i64) -> StoreResult<bool>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let result = sqlx::query(
        "UPDATE meetings SET status = 'live', started_at = COALESCE(started_at, $2), updated_at = $2 \
         WHERE id = $1 AND status = 'scheduled'",
    )
    .bind(meeting_id)
    .bind(now)
    .execute(executor)
    .await?;
    Ok(result.rows_affected() == 1)
}

/// The first write of a join transaction: bumping the meeting's `seat_version` takes the
/// meeting's row lock (PostgreSQL) or the database write lock (SQLite), so concurrent joins of
/// one meeting count and insert one after another. False when the meeting is gone.
pub async fn lock_seats<'e, E>(executor: E, meeting_id: &str) -> StoreResult<bool>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let result = sqlx::query("UPDATE meetings SET seat_version = seat_version + 1 WHERE id = $1")
        .bind(meeting_id)
        .execute(executor)
        .await?;
    Ok(result.rows_affected() == 1)
}

/// Uses up one use of an invite link, atomically: false when none is left or it expired.
pub async fn consume_join_link<'e, E>(
    executor: E,
    meeting_id: &str,
    token_hash: &str,
    now: i64,
) -> StoreResult<bool>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let result = sqlx::query(
        "UPDATE join_links SET uses_left = uses_left - 1 WHERE meeting_id = $1 \
         AND token_hash = $2 AND uses_left > 0 AND expires_at > $3",
    )
    .bind(meeting_id)
    .bind(token_hash)
    .bind(now)
    .execute(executor)
    .await?;
    Ok(result.rows_affected() == 1)
}

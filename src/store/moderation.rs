//! Moderation queries: who a user is in a meeting (their seat, their invite), the participant
//! lists moderators see, and the changes they make (kick and ban, mute, role, waiting room).
//!
//! Every update is a single conditional statement (or one transaction), so two moderators acting
//! at once cannot leave a row half-changed; the caller re-reads the row to answer.

use super::participants::{participant_from_row, Participant, PARTICIPANT_COLUMNS};
use super::{Store, StoreResult};

/// Which flag a moderator's mute sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MuteFlag {
    Microphone,
    Camera,
}

impl Store {
    /// The user's current seat in a meeting: their most recent participant row with status
    /// `joined`. `None` when they are not in the meeting now.
    pub async fn joined_seat_of_user(
        &self,
        meeting_id: &str,
        user_id: &str,
    ) -> StoreResult<Option<Participant>> {
        let sql = format!(
            "SELECT {PARTICIPANT_COLUMNS} FROM participants \
             WHERE meeting_id = $1 AND user_id = $2 AND status = 'joined' \
             ORDER BY created_at DESC, id DESC LIMIT 1"
        );
        let row = sqlx::query(&sql)
            .bind(meeting_id)
            .bind(user_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(participant_from_row).transpose()
    }

    /// Every participant row of a meeting (present and past), oldest first, optionally only
    /// those with `status`.
    pub async fn meeting_participants(
        &self,
        meeting_id: &str,
        status: Option<&str>,
    ) -> StoreResult<Vec<Participant>> {
        // Two statements rather than `$2 IS NULL OR ...`: PostgreSQL cannot type an untyped NULL.
        let rows = match status {
            Some(status) => {
                let sql = format!(
                    "SELECT {PARTICIPANT_COLUMNS} FROM participants \
                     WHERE meeting_id = $1 AND status = $2 ORDER BY created_at, id"
                );
                sqlx::query(&sql)
                    .bind(meeting_id)
                    .bind(status)
                    .fetch_all(&self.pool)
                    .await?
            }
            None => {
                let sql = format!(
                    "SELECT {PARTICIPANT_COLUMNS} FROM participants \
                     WHERE meeting_id = $1 ORDER BY created_at, id"
                );
                sqlx::query(&sql)
                    .bind(meeting_id)
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        rows.iter().map(participant_from_row).collect()
    }

    /// Removes a participant: the row becomes `kicked` (left now, unless it had left already),
    /// and so does every other live row (`joined`/`waiting`) of the same identity, since the
    /// media side closes all of that identity's connections. With `ban`, the identity may not
    /// join again (a second ban of the same identity is not an error).
    pub async fn kick_participant(
        &self,
        meeting_id: &str,
        target: &Participant,
        ban: bool,
        now: i64,
    ) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE participants SET status = 'kicked', left_at = COALESCE(left_at, $1) \
             WHERE meeting_id = $2 AND (id = $3 OR (identity = $4 AND status IN ('joined', 'waiting')))",
        )
        .bind(now)
        .bind(meeting_id)
        .bind(&target.id)
        .bind(&target.identity)
        .execute(&mut *tx)
        .await?;
        if ban {
            sqlx::query(
                "INSERT INTO bans (meeting_id, identity, created_at) VALUES ($1, $2, $3) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(meeting_id)
            .bind(&target.identity)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        let data = serde_json::json!({
            "meeting_id": meeting_id, "participant_id": target.id, "identity": target.identity,
            "reason": if ban { "banned" } else { "kicked" }
        });
        super::webhooks::enqueue_on(&mut *tx, &self.outbox, "participant_left", &data).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Sets one of a participant's media flags to muted (off).
    pub async fn mute_participant(
        &self,
        meeting_id: &str,
        participant_id: &str,
        flag: MuteFlag,
    ) -> StoreResult<()> {
        let column = match flag {
            MuteFlag::Microphone => "mic_muted",
            MuteFlag::Camera => "camera_off",
        };
        let sql = format!("UPDATE participants SET {column} = 1 WHERE meeting_id = $1 AND id = $2");
        sqlx::query(&sql)
            .bind(meeting_id)
            .bind(participant_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn set_participant_role(
        &self,
        meeting_id: &str,
        participant_id: &str,
        role: &str,
    ) -> StoreResult<()> {
        sqlx::query("UPDATE participants SET role = $1 WHERE meeting_id = $2 AND id = $3")
            .bind(role)
            .bind(meeting_id)
            .bind(participant_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Admits (`joined`, joined now) or denies (`denied`, left now) a waiting participant. False
    /// when the row was not waiting (any more): someone else decided first.
    pub async fn resolve_waiting(
        &self,
        meeting_id: &str,
        participant_id: &str,
        admit: bool,
        now: i64,
    ) -> StoreResult<bool> {
        let sql = if admit {
            "UPDATE participants SET status = 'joined', joined_at = $1 \
             WHERE meeting_id = $2 AND id = $3 AND status = 'waiting'"
        } else {
            "UPDATE participants SET status = 'denied', left_at = $1 \
             WHERE meeting_id = $2 AND id = $3 AND status = 'waiting'"
        };
        let mut tx = self.pool.begin().await?;
        let result = sqlx::query(sql)
            .bind(now)
            .bind(meeting_id)
            .bind(participant_id)
            .execute(&mut *tx)
            .await?;
        let resolved = result.rows_affected() > 0;
        if resolved && admit {
            let data =
                serde_json::json!({"meeting_id": meeting_id, "participant_id": participant_id});
            super::webhooks::enqueue_on(&mut *tx, &self.outbox, "participant_joined", &data)
                .await?;
        }
        tx.commit().await?;
        Ok(resolved)
    }
}

//! What WebSocket signaling records of a live session beyond the join itself: finding the seat a
//! join token stands for, a participant leaving, and media flags turned back on. Muting reuses
//! [`Store::mute_participant`](super::Store), kicks and role changes the moderation queries.

use super::moderation::MuteFlag;
use super::participants::{participant_from_row, Participant, PARTICIPANT_COLUMNS};
use super::{Store, StoreResult};

impl Store {
    /// The most recent participant row of `identity` (a join token's `sub`) in the meeting.
    pub async fn latest_seat_of_identity(
        &self,
        meeting_id: &str,
        identity: &str,
    ) -> StoreResult<Option<Participant>> {
        let sql = format!(
            "SELECT {PARTICIPANT_COLUMNS} FROM participants \
             WHERE meeting_id = $1 AND identity = $2 \
             ORDER BY created_at DESC, id DESC LIMIT 1"
        );
        let row = sqlx::query(&sql)
            .bind(meeting_id)
            .bind(identity)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(participant_from_row).transpose()
    }

    /// A joined participant left (now). False when the row was no longer joined: a kick, the
    /// end of the meeting or a newer join decided its status first, and that status stays.
    /// In a cluster, `node` is the leaving session's node: a seat that moved to another node
    /// meanwhile (its client resumed there) is not this session's to close.
    pub async fn mark_participant_left(
        &self,
        meeting_id: &str,
        participant_id: &str,
        node: Option<&str>,
        now: i64,
    ) -> StoreResult<bool> {
        let mut tx = self.pool.begin().await?;
        let result = sqlx::query(
            "UPDATE participants SET status = 'left', left_at = $1 \
             WHERE meeting_id = $2 AND id = $3 AND status = 'joined' \
             AND ($4 IS NULL OR node_id IS NULL OR node_id = $4)",
        )
        .bind(now)
        .bind(meeting_id)
        .bind(participant_id)
        .bind(node)
        .execute(&mut *tx)
        .await?;
        let left = result.rows_affected() > 0;
        if left {
            let data = serde_json::json!({
                "meeting_id": meeting_id, "participant_id": participant_id, "reason": "left"
            });
            super::webhooks::enqueue_on(&mut *tx, &self.outbox, "participant_left", &data).await?;
        }
        tx.commit().await?;
        Ok(left)
    }

    /// Closes the seats a previous process left `joined` (its sockets and media died with it):
    /// they become `left` at `now`. Returns how many, and the meetings still `live`, whose
    /// empty-meeting countdown the caller starts. Single-node: every `joined` row is this
    /// server's.
    pub async fn reconcile_seats(&self, now: i64) -> StoreResult<(u64, Vec<String>)> {
        let closed = sqlx::query(
            "UPDATE participants SET status = 'left', left_at = $1 WHERE status = 'joined'",
        )
        .bind(now)
        .execute(&self.pool)
        .await?
        .rows_affected();
        let live = sqlx::query("SELECT id FROM meetings WHERE status = 'live'")
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|row| sqlx::Row::try_get::<String, _>(row, "id"))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((closed, live))
    }

    /// Cluster mode: the seat's session is on `node` now.
    pub async fn set_seat_node(
        &self,
        meeting_id: &str,
        participant_id: &str,
        node: &str,
    ) -> StoreResult<()> {
        sqlx::query("UPDATE participants SET node_id = $1 WHERE meeting_id = $2 AND id = $3")
            .bind(node)
            .bind(meeting_id)
            .bind(participant_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Cluster mode: the nodes named by seats still `joined`.
    pub async fn seat_nodes(&self) -> StoreResult<Vec<String>> {
        sqlx::query(
            "SELECT DISTINCT node_id FROM participants \
             WHERE status = 'joined' AND node_id IS NOT NULL",
        )
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|row| Ok(sqlx::Row::try_get::<String, _>(row, "node_id")?))
        .collect()
    }

    /// Cluster mode: closes the seats `node`'s sessions held (it stopped, or died and its
    /// clients did not come back elsewhere within the resume grace). Returns how many, and the
    /// still-live meetings they were in.
    pub async fn reconcile_seats_of_node(
        &self,
        node: &str,
        now: i64,
    ) -> StoreResult<(u64, Vec<String>)> {
        // One statement (no read-then-write transaction, which SQLite may refuse as busy).
        let closed = sqlx::query(
            "UPDATE participants SET status = 'left', left_at = $1 \
             WHERE status = 'joined' AND node_id = $2 RETURNING meeting_id",
        )
        .bind(now)
        .bind(node)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|row| sqlx::Row::try_get::<String, _>(row, "meeting_id"))
        .collect::<Result<Vec<_>, _>>()?;
        let mut meetings: Vec<String> = Vec::new();
        for id in &closed {
            if meetings.contains(id) {
                continue;
            }
            if self.meeting(id).await.is_ok_and(|m| m.status == "live") {
                meetings.push(id.clone());
            }
        }
        Ok((closed.len() as u64, meetings))
    }

    /// Cluster mode: seats of the meeting still `joined` through another node's sessions.
    /// Cluster mode: seats of the meeting joined through `node`.
    pub async fn seats_on_node(&self, meeting_id: &str, node: &str) -> StoreResult<i64> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM participants \
             WHERE meeting_id = $1 AND status = 'joined' AND node_id = $2",
        )
        .bind(meeting_id)
        .bind(node)
        .fetch_one(&self.pool)
        .await?;
        Ok(sqlx::Row::try_get::<i64, _>(&row, "n")?)
    }

    pub async fn seats_joined_elsewhere(&self, meeting_id: &str, node: &str) -> StoreResult<i64> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM participants \
             WHERE meeting_id = $1 AND status = 'joined' AND node_id IS NOT NULL AND node_id <> $2",
        )
        .bind(meeting_id)
        .bind(node)
        .fetch_one(&self.pool)
        .await?;
        Ok(sqlx::Row::try_get::<i64, _>(&row, "n")?)
    }

    /// Clears one of a participant's media flags (unmuted, camera on).
    pub async fn unmute_participant(
        &self,
        meeting_id: &str,
        participant_id: &str,
        flag: MuteFlag,
    ) -> StoreResult<()> {
        let column = match flag {
            MuteFlag::Microphone => "mic_muted",
            MuteFlag::Camera => "camera_off",
        };
        let sql = format!("UPDATE participants SET {column} = 0 WHERE meeting_id = $1 AND id = $2");
        sqlx::query(&sql)
            .bind(meeting_id)
            .bind(participant_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

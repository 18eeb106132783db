//! Chat messages of a meeting. They outlive the people who wrote them: a message stays after its
//! sender (or everyone) left. Ids are UUIDv7, so ordering by id is ordering by time, and the id
//! of a message is the cursor for the page before it.

use sqlx::any::AnyRow;
use sqlx::Row;

use super::{new_id, opt, Store, StoreResult};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub id: String,
    pub meeting_id: String,
    /// The sender's participant row, when they had one (the host may write without joining).
    pub participant_id: Option<String>,
    /// The sender's account; `None` for guests.
    pub user_id: Option<String>,
    /// The sender's name as shown when they wrote, kept so renames do not rewrite history.
    pub sender_name: String,
    pub body: String,
    pub created_at: i64,
}

/// A message to store; id and time are assigned by [`Store::insert_message`].
#[derive(Debug, Clone)]
pub struct NewMessage<'a> {
    pub meeting_id: &'a str,
    pub participant_id: Option<&'a str>,
    pub user_id: Option<&'a str>,
    pub sender_name: &'a str,
    pub body: &'a str,
}

const MESSAGE_COLUMNS: &str =
    "id, meeting_id, participant_id, user_id, sender_name, body, created_at";

fn message_from_row(row: &AnyRow) -> StoreResult<Message> {
    Ok(Message {
        id: row.try_get("id")?,
        meeting_id: row.try_get("meeting_id")?,
        participant_id: opt(row, "participant_id")?,
        user_id: opt(row, "user_id")?,
        sender_name: row.try_get("sender_name")?,
        body: row.try_get("body")?,
        created_at: row.try_get("created_at")?,
    })
}

impl Store {
    /// Stores a message (REST today, the WebSocket chat later) and returns it as stored.
    pub async fn insert_message(&self, new: NewMessage<'_>) -> StoreResult<Message> {
        let message = Message {
            id: new_id(),
            meeting_id: new.meeting_id.to_owned(),
            participant_id: new.participant_id.map(str::to_owned),
            user_id: new.user_id.map(str::to_owned),
            sender_name: new.sender_name.to_owned(),
            body: new.body.to_owned(),
            created_at: super::now_ms(),
        };
        let sql =
            format!("INSERT INTO messages ({MESSAGE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)");
        sqlx::query(&sql)
            .bind(&message.id)
            .bind(&message.meeting_id)
            .bind(message.participant_id.as_deref())
            .bind(message.user_id.as_deref())
            .bind(&message.sender_name)
            .bind(&message.body)
            .bind(message.created_at)
            .execute(&self.pool)
            .await?;
        Ok(message)
    }

    /// Up to `limit` messages of a meeting, newest first, all older than the message `before`
    /// when given.
    pub async fn messages_page(
        &self,
        meeting_id: &str,
        before: Option<&str>,
        limit: i64,
    ) -> StoreResult<Vec<Message>> {
        // Two statements rather than `$2 IS NULL OR id < $2`: PostgreSQL cannot type an untyped
        // NULL parameter.
        let rows = match before {
            Some(before) => {
                let sql = format!(
                    "SELECT {MESSAGE_COLUMNS} FROM messages WHERE meeting_id = $1 AND id < $2 \
                     ORDER BY id DESC LIMIT $3"
                );
                sqlx::query(&sql)
                    .bind(meeting_id)
                    .bind(before)
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?
            }
            None => {
                let sql = format!(
                    "SELECT {MESSAGE_COLUMNS} FROM messages WHERE meeting_id = $1 \
                     ORDER BY id DESC LIMIT $2"
                );
                sqlx::query(&sql)
                    .bind(meeting_id)
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        rows.iter().map(message_from_row).collect()
    }

    pub async fn count_messages(&self, meeting_id: &str) -> StoreResult<i64> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM messages WHERE meeting_id = $1")
            .bind(meeting_id)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("n")?)
    }
}

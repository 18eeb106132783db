//! The webhook outbox: events waiting for delivery, one row per event and endpoint. Written
//! with the change it reports (same transaction where the change is one), read by the delivery
//! worker (`crate::webhooks`), which leases a row before sending it so two workers (two nodes)
//! do not send it at once; delivery is at-least-once, the event id lets receivers de-duplicate.

use std::sync::Arc;

use sqlx::any::AnyRow;
use sqlx::Row;

use super::{now_ms, opt, Store, StoreResult};

/// The endpoints events go to, fixed at start; none: nothing is written.
#[derive(Debug, Clone, Default)]
pub struct Outbox {
    pub endpoints: Arc<Vec<String>>,
    /// Wakes the delivery worker after a write.
    pub written: Arc<tokio::sync::Notify>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    pub id: String,
    pub endpoint: String,
    pub event_type: String,
    pub body: String,
    pub created_at: i64,
    pub next_attempt_at: i64,
    pub attempts: i64,
    pub delivered_at: Option<i64>,
    pub given_up_at: Option<i64>,
    pub last_error: Option<String>,
}

const COLUMNS: &str = "id, endpoint, event_type, body, created_at, next_attempt_at, attempts, \
     delivered_at, given_up_at, last_error";

fn from_row(row: &AnyRow) -> StoreResult<OutboxRow> {
    Ok(OutboxRow {
        id: row.try_get("id")?,
        endpoint: row.try_get("endpoint")?,
        event_type: row.try_get("event_type")?,
        body: row.try_get("body")?,
        created_at: row.try_get("created_at")?,
        next_attempt_at: row.try_get("next_attempt_at")?,
        attempts: row.try_get("attempts")?,
        delivered_at: opt(row, "delivered_at")?,
        given_up_at: opt(row, "given_up_at")?,
        last_error: opt(row, "last_error")?,
    })
}

/// An event's body: `{"id", "type", "timestamp", "data"}` (the Standard Webhooks shape).
pub fn event_body(id: &str, event_type: &str, at: i64, data: &serde_json::Value) -> String {
    let timestamp = chrono::DateTime::from_timestamp_millis(at)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    serde_json::json!({"id": id, "type": event_type, "timestamp": timestamp, "data": data})
        .to_string()
}

/// Writes one event for every endpoint on `executor` (a transaction's connection, or the
/// pool). Nothing when no endpoint is configured.
pub async fn enqueue_on<'e, E>(
    executor: E,
    outbox: &Outbox,
    event_type: &str,
    data: &serde_json::Value,
) -> StoreResult<()>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    if outbox.endpoints.is_empty() {
        return Ok(());
    }
    let now = now_ms();
    let id = format!("msg_{}", uuid::Uuid::now_v7().simple());
    let body = event_body(&id, event_type, now, data);
    let mut sql = format!("INSERT INTO webhook_outbox ({COLUMNS}) VALUES ");
    // $1..$4: id, type, body, time; $5..: one endpoint per row.
    for n in 0..outbox.endpoints.len() {
        if n > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&format!(
            "($1, ${}, $2, $3, $4, $4, 0, NULL, NULL, NULL)",
            n + 5
        ));
    }
    let mut query = sqlx::query(&sql)
        .bind(id)
        .bind(event_type.to_owned())
        .bind(body)
        .bind(now);
    for endpoint in outbox.endpoints.iter() {
        query = query.bind(endpoint.clone());
    }
    query.execute(executor).await?;
    outbox.written.notify_one();
    Ok(())
}

impl Store {
    /// Writes one event (no change to report it with, or one already committed).
    pub async fn enqueue_event(
        &self,
        event_type: &str,
        data: &serde_json::Value,
    ) -> StoreResult<()> {
        enqueue_on(&self.pool, &self.outbox, event_type, data).await
    }

    /// Rows due for an attempt at `now`, oldest first.
    pub async fn due_webhooks(&self, now: i64, limit: i64) -> StoreResult<Vec<OutboxRow>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM webhook_outbox WHERE delivered_at IS NULL AND given_up_at IS NULL \
             AND next_attempt_at <= $1 ORDER BY created_at, id LIMIT $2"
        );
        let rows = sqlx::query(&sql)
            .bind(now)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(from_row).collect()
    }

    /// Takes `row` for one attempt until `until`; false when another worker took it first.
    pub async fn lease_webhook(&self, row: &OutboxRow, until: i64) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE webhook_outbox SET next_attempt_at = $1 WHERE id = $2 AND endpoint = $3 \
             AND next_attempt_at = $4 AND delivered_at IS NULL AND given_up_at IS NULL",
        )
        .bind(until)
        .bind(&row.id)
        .bind(&row.endpoint)
        .bind(row.next_attempt_at)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn webhook_delivered(&self, row: &OutboxRow, at: i64) -> StoreResult<()> {
        sqlx::query(
            "UPDATE webhook_outbox SET delivered_at = $1, attempts = attempts + 1, last_error = NULL \
             WHERE id = $2 AND endpoint = $3",
        )
        .bind(at)
        .bind(&row.id)
        .bind(&row.endpoint)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A failed attempt: tried again at `next`, or given up (`next` = `None`).
    pub async fn webhook_failed(
        &self,
        row: &OutboxRow,
        error: &str,
        next: Option<i64>,
        now: i64,
    ) -> StoreResult<()> {
        sqlx::query(
            "UPDATE webhook_outbox SET attempts = attempts + 1, last_error = $1, \
             next_attempt_at = $2, given_up_at = $3 WHERE id = $4 AND endpoint = $5",
        )
        .bind(error)
        .bind(next.unwrap_or(now))
        .bind(if next.is_none() { Some(now) } else { None })
        .bind(&row.id)
        .bind(&row.endpoint)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn pending_webhooks(&self) -> StoreResult<i64> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM webhook_outbox WHERE delivered_at IS NULL AND given_up_at IS NULL",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get("n")?)
    }

    /// Every outbox row, oldest first (tests and operators' inspection).
    pub async fn webhook_rows(&self) -> StoreResult<Vec<OutboxRow>> {
        let sql = format!("SELECT {COLUMNS} FROM webhook_outbox ORDER BY created_at, id");
        let rows = sqlx::query(&sql).fetch_all(&self.pool).await?;
        rows.iter().map(from_row).collect()
    }
}

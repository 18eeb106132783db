//! Webhook delivery: the worker that sends the outbox (`store::webhooks`) to each endpoint,
//! signed per Standard Webhooks (`webhook-id`, `webhook-timestamp`, `webhook-signature:
//! v1,<base64 HMAC-SHA256 of "id.timestamp.body">`), until the endpoint answers 2xx or the
//! event is older than `webhook_max_age`. Failed attempts wait an exponential backoff with
//! jitter (1 s, 2 s, 4 s… at most 10 min). Rows live in the database, so what was pending at a
//! crash is sent after the restart (at-least-once: receivers de-duplicate by `webhook-id`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::WebhookEndpoint;
use crate::metrics::Metrics;
use crate::store::webhooks::OutboxRow;
use crate::store::{now_ms, Store};

/// Rows taken per round.
const BATCH: i64 = 64;
/// How often the outbox is read when nothing wakes the worker.
const POLL: Duration = Duration::from_millis(500);
const MAX_BACKOFF_MS: i64 = 10 * 60 * 1000;

/// The key bytes of a secret: `whsec_<base64>` decoded, else the string's bytes.
pub fn signing_key(secret: &str) -> Vec<u8> {
    secret
        .strip_prefix("whsec_")
        .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
        .unwrap_or_else(|| secret.as_bytes().to_vec())
}

/// `v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`.
pub fn signature(key: &[u8], id: &str, timestamp: i64, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body.as_bytes());
    let digest = mac.finalize().into_bytes();
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

/// The wait before attempt `attempts + 1`: 2^attempts seconds, ±25 %, at most 10 min.
pub fn backoff_ms(attempts: i64) -> i64 {
    let base = 1_000i64.saturating_mul(1i64 << attempts.clamp(0, 20));
    let base = base.min(MAX_BACKOFF_MS);
    let jitter = (base / 4).max(1);
    base - jitter + rand::random_range(0..=2 * jitter)
}

pub struct Worker {
    pub store: Store,
    pub endpoints: Vec<WebhookEndpoint>,
    pub max_age: Duration,
    pub timeout: Duration,
    pub metrics: Metrics,
}

impl Worker {
    /// Delivers until the process ends.
    pub async fn run(self) {
        let keys: Arc<HashMap<String, Vec<u8>>> = Arc::new(
            self.endpoints
                .iter()
                .map(|e| (e.url.clone(), signing_key(&e.secret)))
                .collect(),
        );
        let http = match reqwest::Client::builder()
            .timeout(self.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
        {
            Ok(http) => http,
            Err(e) => {
                tracing::error!(error = %e, "webhook client");
                return;
            }
        };
        let woken = self.store.outbox.written.clone();
        loop {
            let now = now_ms();
            match self.store.due_webhooks(now, BATCH).await {
                Ok(rows) => {
                    let sends = rows.into_iter().map(|row| self.attempt(&http, &keys, row));
                    futures_util::future::join_all(sends).await;
                }
                Err(e) => tracing::warn!(error = %e, "reading the webhook outbox"),
            }
            if let Ok(pending) = self.store.pending_webhooks().await {
                self.metrics.webhooks_pending.set(pending);
            }
            tokio::select! {
                _ = woken.notified() => {}
                _ = tokio::time::sleep(POLL) => {}
            }
        }
    }

    async fn attempt(
        &self,
        http: &reqwest::Client,
        keys: &HashMap<String, Vec<u8>>,
        row: OutboxRow,
    ) {
        let now = now_ms();
        // The lease outlasts one attempt: another worker leaves the row alone meanwhile.
        let lease = now + self.timeout.as_millis() as i64 * 2;
        if !self.store.lease_webhook(&row, lease).await.unwrap_or(false) {
            return;
        }
        let Some(key) = keys.get(&row.endpoint) else {
            // An endpoint removed from the config since the event was written.
            let _ = self
                .store
                .webhook_failed(&row, "endpoint no longer configured", None, now)
                .await;
            self.metrics.webhooks.with_label_values(&["given_up"]).inc();
            return;
        };
        let timestamp = now / 1000;
        let result = http
            .post(&row.endpoint)
            .header("content-type", "application/json")
            .header("webhook-id", &row.id)
            .header("webhook-timestamp", timestamp.to_string())
            .header(
                "webhook-signature",
                signature(key, &row.id, timestamp, &row.body),
            )
            .body(row.body.clone())
            .send()
            .await;
        let error = match result {
            Ok(response) if response.status().is_success() => {
                let at = now_ms();
                let _ = self.store.webhook_delivered(&row, at).await;
                self.metrics
                    .webhooks
                    .with_label_values(&["delivered"])
                    .inc();
                self.metrics
                    .webhook_latency
                    .observe((at - row.created_at).max(0) as f64 / 1000.0);
                return;
            }
            Ok(response) => format!("HTTP {}", response.status().as_u16()),
            Err(e) => e.to_string(),
        };
        let age = Duration::from_millis((now - row.created_at).max(0) as u64);
        let next = (age < self.max_age).then(|| now_ms() + backoff_ms(row.attempts));
        let result = if next.is_some() {
            "retried"
        } else {
            "given_up"
        };
        self.metrics.webhooks.with_label_values(&[result]).inc();
        tracing::debug!(id = %row.id, endpoint = %row.endpoint, attempts = row.attempts + 1, %error, result, "webhook attempt failed");
        let _ = self
            .store
            .webhook_failed(&row, &error, next, now_ms())
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_like_the_standard_webhooks_example() {
        // The example of the Standard Webhooks specification.
        let key = signing_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        let body = r#"{"test": 2432232314}"#;
        let sig = signature(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body);
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        for attempts in 0..30 {
            let ms = backoff_ms(attempts);
            let base = (1_000i64 << attempts.min(20)).min(MAX_BACKOFF_MS);
            assert!(
                ms >= base - base / 4 && ms <= base + base / 4,
                "{attempts}: {ms}"
            );
        }
    }
}

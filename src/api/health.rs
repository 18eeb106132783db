//! `/healthz` (the process answers), `/readyz` (it can take new peers), `/metrics` (Prometheus).

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

async fn healthz() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let ready = state.accepting.load(Ordering::Relaxed)
        && state.sfu.is_running()
        && state.store.ping().await;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    // Without Redis a cluster node still serves what it has: degraded, not unready.
    let body = match &state.cluster {
        None => json!({ "ready": ready }),
        Some(cluster) => json!({
            "ready": ready,
            "node": cluster.node_id(),
            "cluster": if cluster.redis_up() { "ok" } else { "degraded" },
        }),
    };
    (status, Json(body))
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

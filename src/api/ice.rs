//! `GET /ice-servers`: the STUN/TURN servers a signed-in client should use, with a TURN
//! credential of its own (coturn's `use-auth-secret` form, valid `turn.credential_ttl`).

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use utoipa::{OpenApi, ToSchema};

use super::extract::AuthUser;
use super::meetings::IceServerView;
use crate::state::AppState;

/// The ICE servers for an `RTCPeerConnection`'s `iceServers`.
#[derive(Debug, Serialize, ToSchema)]
pub struct IceServersResponse {
    pub ice_servers: Vec<IceServerView>,
}

pub fn router() -> Router<AppState> {
    Router::new().route("/ice-servers", get(ice_servers))
}

#[utoipa::path(
    get, path = "/ice-servers", tag = "media",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "STUN/TURN servers, TURN ones with a fresh credential", body = IceServersResponse),
        (status = 401, description = "No, an invalid or an expired access token (`unauthorized`)"),
    )
)]
async fn ice_servers(State(state): State<AppState>, auth: AuthUser) -> Json<IceServersResponse> {
    Json(IceServersResponse {
        ice_servers: state
            .ice
            .for_identity(&auth.user_id)
            .into_iter()
            .map(IceServerView::from)
            .collect(),
    })
}

#[derive(OpenApi)]
#[openapi(
    paths(ice_servers),
    components(schemas(IceServersResponse, IceServerView))
)]
struct Doc;

pub fn openapi() -> utoipa::openapi::OpenApi {
    Doc::openapi()
}
